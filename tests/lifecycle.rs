//! Liveness, resource bounds and drain against the real server: server pings, pong
//! timeout, idle and lifetime limits, token expiry, slow consumers, SIGTERM, admin endpoints.

mod util;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use util::*;

fn close_frame(client: &mut RawClient) -> ServerFrame {
    loop {
        let frame = client.read_frame().expect("close frame before TCP close");
        if frame.opcode == 0x8 {
            return frame;
        }
    }
}

fn reason(frame: &ServerFrame) -> String {
    String::from_utf8_lossy(&frame.payload[2..]).into_owned()
}

#[test]
fn silent_client_is_pinged_then_closed() {
    let addr = start(config(1, "ping_interval_ms = 200\npong_timeout_ms = 300\n"));
    let mut client = open(addr, "silent");
    let ping = client.read_frame().expect("ping");
    assert_eq!(ping.opcode, 0x9, "server pings an idle connection");
    let started = Instant::now();
    let close = close_frame(&mut client);
    assert_eq!(close.close_code(), Some(1001));
    assert!(reason(&close).contains("pong"), "{}", reason(&close));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn answering_pings_keeps_connection_open() {
    let addr = start(config(1, "ping_interval_ms = 150\npong_timeout_ms = 300\n"));
    let mut client = open(addr, "lively");
    for _ in 0..4 {
        let ping = client.read_frame().expect("ping");
        assert_eq!(ping.opcode, 0x9);
        client.send(&client_frame(true, 0xA, &ping.payload));
    }
}

#[test]
fn idle_timeout_closes_with_1001() {
    let addr = start(config(
        1,
        "backend = \"echo\"\nidle_timeout_ms = 300\nping_interval_ms = 100\npong_timeout_ms = 5000\n",
    ));
    let mut client = open(addr, "idle");
    let close = loop {
        let frame = client.read_frame().expect("frame");
        match frame.opcode {
            0x9 => client.send(&client_frame(true, 0xA, &frame.payload)),
            0x8 => break frame,
            other => panic!("unexpected opcode {other}"),
        }
    };
    assert_eq!(close.close_code(), Some(1001));
    assert_eq!(reason(&close), "idle timeout");
}

#[test]
fn max_lifetime_closes_with_1001() {
    let addr = start(config(1, "max_lifetime_ms = 300\n"));
    let mut client = open(addr, "mortal");
    let close = close_frame(&mut client);
    assert_eq!(close.close_code(), Some(1001));
    assert!(reason(&close).contains("lifetime"), "{}", reason(&close));
}

#[test]
fn expired_token_closes_live_connection_with_4001() {
    let addr = start(config(1, ""));
    let token = sign(serde_json::json!({"sub": "short", "exp": unix_now() + 2}));
    let mut client = open_with_token(addr, &token);
    let started = Instant::now();
    let close = close_frame(&mut client);
    assert_eq!(close.close_code(), Some(4001));
    assert!(started.elapsed() <= Duration::from_secs(4));
}

#[test]
fn drain_sends_1001_with_reconnect_hint_and_turns_unready() {
    let server = start_full(config(2, "drain_jitter_ms = 2000\n"));
    let admin = server.admin.expect("admin listener");
    assert_eq!(admin_get(admin, "/readyz").0, 200);
    assert_eq!(admin_get(admin, "/healthz").0, 200);
    let mut clients: Vec<RawClient> = (0..4)
        .map(|i| open(server.addr, &format!("d{i}")))
        .collect();
    server.drain.drain();
    for client in &mut clients {
        let close = close_frame(client);
        assert_eq!(close.close_code(), Some(1001));
        let text = reason(&close);
        let hint: u64 = text
            .strip_prefix("going away; reconnect after ")
            .and_then(|rest| rest.strip_suffix(" ms"))
            .and_then(|ms| ms.parse().ok())
            .unwrap_or_else(|| panic!("reconnect hint missing: {text}"));
        assert!(hint <= 2000);
        client.finish_close(1001);
    }
    assert_eq!(admin_get(admin, "/readyz").0, 503);
    // New connections are refused once the listeners are closed.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(server.addr).is_ok() {
        assert!(
            Instant::now() < deadline,
            "listener still accepting after drain"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn upgrade_in_progress_at_drain_gets_503() {
    use std::io::{Read, Write};
    let server = start_full(config(1, ""));
    let request = upgrade_request(&token("late-upgrade"));
    let (first, rest) = request.as_bytes().split_at(20);
    let mut stream = connect(server.addr);
    stream.write_all(first).expect("first part");
    std::thread::sleep(Duration::from_millis(100));
    server.drain.drain();
    std::thread::sleep(Duration::from_millis(200));
    stream.write_all(rest).expect("rest of the request");
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response);
    assert_eq!(status_of(&response), 503, "{response}");
    assert!(response.contains("Retry-After"), "{response}");
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_framegate"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--workers",
            "2",
        ])
        .args(["--admin-listen", ""])
        .env("FRAMEGATE_JWT_SECRET", std::str::from_utf8(SECRET).unwrap())
        .env("FRAMEGATE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn framegate");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    eventually("the server to listen", || {
        std::net::TcpStream::connect(addr).is_ok()
    });
    let mut client = open(addr, "sigterm");
    // SAFETY: sending a signal to our own child process, whose pid we hold.
    let result = unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(result, 0);
    let close = close_frame(&mut client);
    assert_eq!(close.close_code(), Some(1001));
    client.finish_close(1001);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit after drain");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "exit status {status:?}: {stderr}");
}

/// Resident memory of a process in KiB, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches(" kB").trim().parse().ok())
        .expect("VmRSS")
}

#[test]
fn slow_consumer_is_closed_and_memory_stays_bounded() {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("framegate-slow-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let config_path = dir.join("slow.toml");
    std::fs::write(
        &config_path,
        format!(
            "listen = \"127.0.0.1:{port}\"\nadmin_listen = \"\"\nworkers = 1\nbackend = \"echo\"\njson = false\n\
             max_message_bytes = 65536\nrate_per_sec = 0\nmax_outbound_bytes = 262144\n\
             close_timeout_ms = 20000\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_framegate"))
        .args(["serve", "--config", config_path.to_str().unwrap()])
        .env("FRAMEGATE_JWT_SECRET", std::str::from_utf8(SECRET).unwrap())
        .env("FRAMEGATE_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn framegate");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    eventually("the server to listen", || {
        std::net::TcpStream::connect(addr).is_ok()
    });
    let mut client = open(addr, "slow");
    let baseline = rss_kib(child.id());
    // Send 64 MiB of echo requests and never read the echoes.
    let frame = client_frame(true, 0x2, &vec![7u8; 65_536]);
    client
        .stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut sent = 0usize;
    for _ in 0..1024 {
        if std::io::Write::write_all(&mut client.stream, &frame).is_err() {
            break;
        }
        sent += 1;
    }
    let peak = rss_kib(child.id());
    // Reading now drains what was in flight, then the close frame.
    let close = close_frame(&mut client);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(close.close_code(), Some(1008));
    assert_eq!(reason(&close), "slow consumer");
    assert!(
        sent > 4,
        "the server stopped reading too early ({sent} frames)"
    );
    // The echo queue is capped at 256 KiB plus one write in flight and one read buffer.
    assert!(
        peak < baseline + 16 * 1024,
        "server memory grew from {baseline} KiB to {peak} KiB"
    );
}

#[test]
fn busy_admin_port_names_admin_listen_flag() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let admin = taken.local_addr().expect("local address");
    let output = Command::new(env!("CARGO_BIN_EXE_framegate"))
        .args(["serve", "--listen", "127.0.0.1:0", "--workers", "1"])
        .args(["--admin-listen", &admin.to_string()])
        .env("FRAMEGATE_JWT_SECRET", std::str::from_utf8(SECRET).unwrap())
        .env("FRAMEGATE_LOG", "warn")
        .stdout(Stdio::null())
        .output()
        .expect("run framegate");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot bind the admin listener on {admin}")),
        "{stderr}"
    );
    assert!(stderr.contains("--admin-listen"), "{stderr}");
    assert!(!stderr.contains("--listen "), "{stderr}");
}

#[test]
fn peer_fin_during_blocked_write_ends_connection() {
    let server = start_server(config(
        1,
        "backend = \"echo\"\njson = false\nrate_per_sec = 0\nmax_message_bytes = 1048576\n\
         max_outbound_bytes = 4194304\nclose_timeout_ms = 500\n",
    ));
    let mut client = open(server.local_addr(), "half-closer");

    // Echo requests that the client never reads: the server's write blocks once the socket
    // buffers are full.
    let frame = client_frame(true, 0x2, &vec![7u8; 900_000]);
    client
        .stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    for _ in 0..6 {
        if std::io::Write::write_all(&mut client.stream, &frame).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    // FIN without a close frame, and the socket stays open without reading.
    client.stream.shutdown(std::net::Shutdown::Write).unwrap();
    let shut_at = Instant::now();

    eventually("the server to end the connection", || {
        server.metrics().connections_open.iter().sum::<i64>() == 0
    });
    assert!(
        shut_at.elapsed() < Duration::from_millis(500 + 1_500),
        "the connection outlived its peer by {:?}",
        shut_at.elapsed()
    );
    drop(client);
}

#[test]
fn client_close_ends_connection_without_client_fin() {
    // RFC 6455 §5.5.1: once both close frames are exchanged the server closes TCP at once,
    // and it does not wait for the client's FIN. The close timeout is far longer than the
    // wait below, so a server that waited for the FIN would fail here.
    let server = start_server(config(1, "close_timeout_ms = 30000\n"));
    let mut client = open(server.local_addr(), "closer");
    client.send(&client_frame(true, 0x8, &1000u16.to_be_bytes()));
    assert_eq!(client.expect_close(), 1000);
    assert!(
        client.read_frame().is_none(),
        "the server's FIN follows its close frame"
    );
    let replied_at = Instant::now();

    eventually("the server to end the connection", || {
        server.metrics().connections_open.iter().sum::<i64>() == 0
    });
    assert!(
        replied_at.elapsed() < Duration::from_secs(5),
        "the connection outlived the close handshake by {:?}",
        replied_at.elapsed()
    );
    drop(client);
}

#[test]
fn slow_reader_close_gets_every_reply() {
    // A client that reads slowly sends 30 messages and its close in one write, then a ping
    // (RFC 6455 allows control frames after a close). The echoes still wait for its receive
    // window, so the server must not close the socket: the ping would then draw a reset that
    // discards the untransmitted echoes and the close reply.
    let server = start_server(config(
        1,
        "backend = \"echo\"\njson = false\nrate_per_sec = 0\nclose_timeout_ms = 5000\n",
    ));
    let mut client = open_small_window(server.local_addr(), "slow-closer", 4096);
    let payload = vec![b'm'; 10_000];
    let mut bytes = Vec::new();
    for _ in 0..30 {
        bytes.extend(client_frame(true, 0x2, &payload));
    }
    bytes.extend(client_frame(true, 0x8, &1000u16.to_be_bytes()));
    client.send(&bytes);
    std::thread::sleep(Duration::from_millis(10));
    client.send(&client_frame(true, 0x9, b"late"));
    std::thread::sleep(Duration::from_millis(300));

    for index in 0..30 {
        let frame = client.read_frame().expect("an echo before TCP close");
        assert_eq!(frame.opcode, 0x2, "echo {index}");
        assert_eq!(frame.payload.len(), payload.len(), "echo {index}");
    }
    let close = client
        .read_frame()
        .expect("the close reply before TCP close");
    assert_eq!(close.opcode, 0x8);
    assert_eq!(close.close_code(), Some(1000));
    let mut rest = Vec::new();
    let end = client.stream.read_to_end(&mut rest);
    assert!(end.is_ok(), "the server reset the connection: {end:?}");
    assert!(rest.is_empty(), "bytes after the close reply");
}

/// Opens an upgraded connection for `sub` with a `recv_buffer`-byte receive buffer. It is set
/// before connecting, so the server gets a small TCP window.
fn open_small_window(addr: std::net::SocketAddr, sub: &str, recv_buffer: usize) -> RawClient {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(recv_buffer).expect("SO_RCVBUF");
    socket.connect(&addr.into()).expect("connect");
    let mut stream: std::net::TcpStream = socket.into();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    std::io::Write::write_all(&mut stream, upgrade_request(&token(sub)).as_bytes()).unwrap();
    let (head, rest) = read_head(&mut stream);
    assert_eq!(status_of(&head), 101, "upgrade failed: {head}");
    RawClient {
        stream,
        pending: rest,
    }
}

/// Several senders on another worker relay 40 KB messages to a recipient that does not
/// read. Its sends stop partway through a frame, and a later delivery takes its queue over
/// `max_outbound_bytes`. The close that follows must not cut that frame: the recipient reads
/// whole JSON frames, then close 1008, then the TCP close.
#[test]
fn slow_consumer_close_keeps_frames_whole() {
    let ring = framegate::shard::Ring::new(2).expect("ring");
    let addr = start(config(
        2,
        "backend = \"relay\"\njson = true\nrate_per_sec = 0\nupgrade_rate_per_ip = 0\n\
         max_message_bytes = 65536\nmax_outbound_bytes = 81920\nclose_timeout_ms = 15000\n",
    ));
    for round in 0..3 {
        let recipient = format!("recipient{round}");
        let owner = ring.owner(recipient.as_bytes());
        let mut reader = open_small_window(addr, &recipient, 4096);
        let mut senders: Vec<RawClient> = (0..1000)
            .map(|i| format!("sender{round}-{i}"))
            .filter(|user| ring.owner(user.as_bytes()) != owner)
            .take(6)
            .map(|user| open(addr, &user))
            .collect();
        assert_eq!(senders.len(), 6);
        let threads: Vec<_> = senders
            .iter_mut()
            .enumerate()
            .map(|(i, sender)| {
                let mut burst = Vec::new();
                for k in 0..40 {
                    let content = format!("{i}-{k}:{}", "x".repeat(40_000));
                    let text = chat(&format!("m{k}"), &recipient, &content);
                    burst.extend_from_slice(&client_frame(true, 0x1, text.as_bytes()));
                }
                let mut stream = sender.stream.try_clone().unwrap();
                std::thread::spawn(move || {
                    // The server may close the sender's socket first; that is fine here.
                    let _ = std::io::Write::write_all(&mut stream, &burst);
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        std::thread::sleep(Duration::from_millis(300));

        let mut whole = 0;
        let close = loop {
            let frame = reader
                .read_frame()
                .unwrap_or_else(|| panic!("round {round}: TCP closed before the close frame"));
            if frame.opcode == 0x8 {
                break frame;
            }
            assert_eq!(
                frame.opcode, 0x1,
                "round {round}: frame {whole} is not text"
            );
            let message: serde_json::Value = serde_json::from_slice(&frame.payload)
                .unwrap_or_else(|err| panic!("round {round}: frame {whole} is cut: {err}"));
            let content = message["content"].as_str().unwrap_or_default();
            assert!(
                content.len() > 40_000,
                "round {round}: frame {whole} has {} bytes of content",
                content.len()
            );
            whole += 1;
        };
        assert_eq!(close.close_code(), Some(1008), "round {round}");
        assert_eq!(reason(&close), "slow consumer", "round {round}");
        assert!(
            reader.read_frame().is_none(),
            "round {round}: bytes after the close frame"
        );
        assert!(
            reader.pending.is_empty(),
            "round {round}: partial frame left"
        );
    }
}
