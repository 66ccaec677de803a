//! `framegate load` run as a subprocess against an in-process echo server: every message is
//! echoed, and injected faults get exactly the expected close codes and error frames.
//! The assertions are on counts only, never on speed.

mod util;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use util::*;

/// Longest a load subprocess may run before the test kills it and fails.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// A JSON summary file in the system temp directory, removed when dropped.
struct SummaryFile(PathBuf);

impl SummaryFile {
    fn new(name: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("framegate-load-{name}-{}.json", std::process::id()));
        let _ = std::fs::remove_file(&path);
        Self(path)
    }

    fn read(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(&self.0).expect("load wrote its --json summary");
        serde_json::from_str(&text).expect("summary is JSON")
    }
}

impl Drop for SummaryFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs `framegate load` with `args` plus `--json summary`, and returns the summary.
fn run_load(args: &[String], summary: &SummaryFile) -> serde_json::Value {
    let mut child = Command::new(env!("CARGO_BIN_EXE_framegate"))
        .arg("load")
        .args(args)
        .arg("--json")
        .arg(&summary.0)
        .arg("--quiet")
        .env("FRAMEGATE_JWT_SECRET", std::str::from_utf8(SECRET).unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start framegate load");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for framegate load") {
            break status;
        }
        if started.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            panic!("framegate load ran longer than {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = child.wait_with_output().expect("collect output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        status.success(),
        "framegate load failed with {status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        Path::new(&summary.0).exists(),
        "no summary; stdout:\n{stdout}"
    );
    summary.read()
}

fn count(value: &serde_json::Value) -> u64 {
    value.as_u64().unwrap_or(0)
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|item| (*item).to_owned()).collect()
}

/// Runs `framegate load` against the WebSocket endpoint at `addr` with `args`, its summary
/// in a file named after `name`, and returns the summary.
fn load_at(addr: std::net::SocketAddr, name: &str, args: &[&str]) -> serde_json::Value {
    let summary_file = SummaryFile::new(name);
    let mut all = vec![format!("ws://{addr}/ws")];
    all.extend(strings(args));
    run_load(&all, &summary_file)
}

/// Checks that messages were sent and every one got its reply, with a latency sample each,
/// and that no error was counted.
fn assert_every_message_answered(summary: &serde_json::Value) {
    let sent = count(&summary["sent"]["messages"]);
    assert!(sent > 0, "no message sent: {summary:#}");
    assert_eq!(count(&summary["received"]["messages"]), sent, "{summary:#}");
    assert_eq!(count(&summary["latency_us"]["count"]), sent, "{summary:#}");
    assert_eq!(count(&summary["error_total"]), 0, "{summary:#}");
}

#[test]
fn load_echo_every_message_answered() {
    let addr = start(config(2, "backend = \"echo\"\nrate_per_sec = 0"));
    let args = [
        "--connections",
        "20",
        "--window",
        "4",
        "--size",
        "128",
        "--duration",
        "2",
        "--fail-on-error",
    ];
    let summary = load_at(addr, "echo", &args);

    assert_every_message_answered(&summary);
    assert_eq!(count(&summary["handshakes"]), 20, "{summary:#}");
    assert_eq!(
        summary["error_frames"],
        serde_json::json!({}),
        "{summary:#}"
    );
    assert_eq!(summary["close_codes"], serde_json::json!({}), "{summary:#}");
}

#[test]
fn load_injected_faults_get_expected_answers() {
    let addr = start(config(
        2,
        "backend = \"echo\"\nrate_per_sec = 100\nburst = 5\nmax_message_bytes = 10240",
    ));
    let args = [
        "--connections",
        "8",
        "--rate",
        "160",
        "--duration",
        "2",
        "--invalid-ratio",
        "0.2",
        "--server-rate-per-sec",
        "100",
        "--server-burst",
        "5",
        "--server-max-message-bytes",
        "10240",
        "--seed",
        "7",
    ];
    let summary = load_at(addr, "invalid", &args);

    let injected = &summary["injected"];
    let oversize = count(&injected["oversize"]);
    let malformed = count(&injected["malformed_json"]);
    let over_rate = count(&injected["over_rate"]);
    assert!(oversize > 0, "no oversize fault injected: {summary:#}");
    assert!(malformed > 0, "no malformed fault injected: {summary:#}");
    assert!(over_rate > 0, "no over-rate fault injected: {summary:#}");

    assert_eq!(
        count(&summary["close_codes"]["1009"]),
        oversize,
        "{summary:#}"
    );
    assert_eq!(
        count(&summary["error_frames"]["invalid_json"]),
        malformed,
        "{summary:#}"
    );
    assert_eq!(
        count(&summary["error_frames"]["rate_limited"]),
        over_rate,
        "{summary:#}"
    );
    let codes = summary["error_frames"].as_object().expect("map").len();
    assert_eq!(
        codes, 2,
        "only the injected error codes appear: {summary:#}"
    );
    let closes = summary["close_codes"].as_object().expect("map").len();
    assert_eq!(closes, 1, "only close code 1009 appears: {summary:#}");
    assert_eq!(count(&summary["errors"]["mismatch"]), 0, "{summary:#}");
    assert_eq!(count(&summary["errors"]["lost"]), 0, "{summary:#}");
    assert_eq!(count(&summary["error_total"]), 0, "{summary:#}");
    // Each oversize fault ends its connection, which the user replaces.
    assert_eq!(count(&summary["handshakes"]), 8 + oversize, "{summary:#}");
}

#[test]
fn load_without_server_exits_one_naming_error() {
    // A port that was free a moment ago: nothing listens, so every connect is refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
        .port();
    let output = Command::new(env!("CARGO_BIN_EXE_framegate"))
        .args(["load", &format!("ws://127.0.0.1:{port}/ws")])
        .args([
            "--duration",
            "1",
            "--connections",
            "2",
            "--no-auth",
            "--quiet",
        ])
        .output()
        .expect("run framegate load");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("first error  connect: "),
        "stdout:\n{stdout}"
    );
    assert!(stdout.contains("refused"), "stdout:\n{stdout}");
    assert!(stderr.contains("no connection to"), "stderr:\n{stderr}");
}

/// Messages a recycling server echoes on one connection before it closes it with 1001.
const RECYCLE_AFTER: usize = 20;

/// Starts a WebSocket echo server on raw sockets that closes every connection with 1001
/// (going away) after [`RECYCLE_AFTER`] echoes, as a server does in a rolling restart. It
/// records how many messages each connection carried.
fn start_recycling_server() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
) {
    let carried = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = std::sync::Arc::clone(&carried);
    let addr = serve_each(move |stream| {
        let echoed = serve_recycling(stream);
        record.lock().unwrap().push(echoed);
    });
    (addr, carried)
}

/// Starts a loopback server that runs `serve` on a thread of its own for each connection.
fn serve_each(serve: impl Fn(std::net::TcpStream) + Send + Sync + 'static) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind test server");
    let addr = listener.local_addr().expect("server address");
    let serve = std::sync::Arc::new(serve);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let serve = std::sync::Arc::clone(&serve);
            std::thread::spawn(move || serve(stream));
        }
    });
    addr
}

/// Reads an upgrade request from `stream` and replies with 101. Returns the bytes that
/// followed the request, or `None` when the client left first.
fn accept_upgrade(stream: &mut std::net::TcpStream) -> Option<Vec<u8>> {
    use std::io::{Read, Write};

    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut data = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => data.extend_from_slice(&chunk[..n]),
        }
    };

    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let key = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim().to_owned())
        })
        .expect("Sec-WebSocket-Key");

    let accept = framegate::handshake::accept_key(&key);
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        std::str::from_utf8(&accept).unwrap()
    );
    stream.write_all(response.as_bytes()).expect("write 101");
    data.drain(..head_end);
    Some(data)
}

/// Upgrades one connection, echoes [`RECYCLE_AFTER`] messages, then closes with 1001.
/// Returns the number of messages echoed.
fn serve_recycling(mut stream: std::net::TcpStream) -> usize {
    use std::io::{Read, Write};
    let Some(mut data) = accept_upgrade(&mut stream) else {
        return 0;
    };
    let mut chunk = [0u8; 16 * 1024];
    let mut echoed = 0;
    loop {
        // Client frames are masked (RFC 6455 §5.3); echo each data frame unmasked.
        while let Some((opcode, payload, used)) = client_frame_at(&data) {
            data.drain(..used);
            if opcode == 0x8 {
                return echoed;
            }
            let mut frame = vec![0x80 | opcode];
            match payload.len() {
                len @ 0..=125 => frame.push(len as u8),
                len => {
                    frame.push(126);
                    frame.extend_from_slice(&(len as u16).to_be_bytes());
                }
            }
            frame.extend_from_slice(&payload);
            if stream.write_all(&frame).is_err() {
                return echoed;
            }
            echoed += 1;
            if echoed == RECYCLE_AFTER {
                let _ = stream.write_all(&[0x88, 2, 0x03, 0xe9]);
                // Wait for the client's close frame or TCP end, then close.
                let _ = stream.read(&mut chunk);
                return echoed;
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return echoed,
            Ok(n) => data.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Decodes one complete masked client frame at the start of `data`: opcode, unmasked payload
/// and the bytes it took.
fn client_frame_at(data: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    let opcode = data.first()? & 0x0f;
    let (len, mut at) = match data.get(1)? & 0x7f {
        126 => (
            usize::from(u16::from_be_bytes([*data.get(2)?, *data.get(3)?])),
            4,
        ),
        127 => (
            usize::try_from(u64::from_be_bytes(*data.get(2..10)?.first_chunk::<8>()?)).ok()?,
            10,
        ),
        len => (usize::from(len), 2),
    };
    let mask = data.get(at..at + 4)?.to_vec();
    at += 4;
    let payload = data.get(at..at + len)?;
    let unmasked = payload
        .iter()
        .enumerate()
        .map(|(index, byte)| byte ^ mask[index % 4])
        .collect();
    Some((opcode, unmasked, at + len))
}

#[test]
fn load_keeps_sending_after_server_recycles_connections() {
    let (addr, carried) = start_recycling_server();
    let summary_file = SummaryFile::new("recycle");
    let started = Instant::now();
    let summary = run_load(
        &strings(&[
            &format!("ws://{addr}/"),
            "--no-auth",
            "--raw",
            "--connections",
            "2",
            "--window",
            "8",
            "--duration",
            "2",
        ]),
        &summary_file,
    );
    let took = started.elapsed();

    // Each connection ends after RECYCLE_AFTER echoes with messages still in flight. A
    // reconnected user must use its whole window again, so every connection carries messages.
    let carried = carried.lock().unwrap().clone();
    let handshakes = count(&summary["handshakes"]);
    assert!(handshakes >= 4, "too few reconnects: {summary:#}");
    let idle = carried.iter().filter(|&&echoed| echoed == 0).count();
    assert!(
        idle <= 2,
        "connections that carried no message (at most the last of each user): {carried:?}"
    );
    // Every connection but the last of each user ended with the server's 1001.
    assert!(
        count(&summary["close_codes"]["1001"]) >= handshakes - 2,
        "{summary:#}"
    );
    // Messages in flight at each close are lost, at most one window per connection.
    let lost = count(&summary["errors"]["lost"]);
    assert!(lost <= 8 * handshakes, "{summary:#}");
    assert_eq!(
        count(&summary["received"]["messages"]) + lost,
        count(&summary["sent"]["messages"]),
        "every message was echoed or counted as lost: {summary:#}"
    );
    // The run ends at its deadline: no drain waits for messages of closed connections.
    assert!(
        took < Duration::from_secs(4),
        "ran {took:?}, the drain timeout is 5 s"
    );
}

/// Runs one connection of `framegate load` against a server that upgrades it and then sends
/// `frame`. Returns the payload of the close frame the client sent back (empty when none came)
/// and the run's summary.
fn close_after_server_frame(frame: &'static [u8], name: &str) -> (Vec<u8>, serde_json::Value) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        let mut data = accept_upgrade(&mut stream).expect("upgrade");
        stream.write_all(frame).expect("write frame");
        let mut chunk = [0u8; 4096];
        loop {
            // The client's messages come first; skip them.
            while let Some((opcode, payload, used)) = client_frame_at(&data) {
                if opcode == 0x8 {
                    return payload;
                }
                data.drain(..used);
            }
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return Vec::new(),
                Ok(n) => data.extend_from_slice(&chunk[..n]),
            }
        }
    });
    let summary_file = SummaryFile::new(name);
    let summary = run_load(
        &strings(&[
            &format!("ws://{addr}/"),
            "--no-auth",
            "--raw",
            "--connections",
            "1",
            "--duration",
            "1",
            "--connect-timeout",
            "1",
        ]),
        &summary_file,
    );
    (server.join().expect("server thread"), summary)
}

#[test]
fn load_fails_broken_server_with_1002() {
    // RSV1 set although no extension was agreed: RFC 6455 §5.2 makes it a protocol error.
    let (close, summary) = close_after_server_frame(&[0xc1, 2, b'h', b'i'], "broken");
    assert_eq!(close.get(..2), Some(&[0x03, 0xea][..]), "close code 1002");
    assert!(count(&summary["errors"]["protocol"]) >= 1, "{summary:#}");
}

#[test]
fn load_fails_invalid_utf8_with_1007() {
    // A text frame whose payload is not UTF-8: RFC 6455 §8.1 makes the client fail it.
    let (close, summary) = close_after_server_frame(&[0x81, 3, b'h', 0xff, 0xfe], "utf8");
    assert_eq!(close.get(..2), Some(&[0x03, 0xef][..]), "close code 1007");
    assert!(count(&summary["errors"]["protocol"]) >= 1, "{summary:#}");
    assert_eq!(count(&summary["errors"]["mismatch"]), 0, "{summary:#}");
    assert!(
        summary["first_error"]
            .as_str()
            .is_some_and(|text| text.contains("UTF-8")),
        "{summary:#}"
    );
}

#[test]
fn load_open_loop_sends_stalled_messages() {
    use std::io::{Read, Write};
    // A small receive buffer, so a server that stops reading soon blocks the client's writes.
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(64 * 1024).expect("SO_RCVBUF");
    socket
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    socket.listen(8).expect("listen");
    let listener: std::net::TcpListener = socket.into();
    let addr = listener.local_addr().expect("address");

    // Echoes every data frame, but stops reading for 1.2 s from 0.3 s after the first frame,
    // so the writes of the messages due until the deadline (1 s) wait past it.
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        let mut data = accept_upgrade(&mut stream).expect("upgrade");
        let mut chunk = vec![0u8; 256 * 1024];
        let mut stall_at = None;
        loop {
            while let Some((opcode, payload, used)) = client_frame_at(&data) {
                data.drain(..used);
                if opcode == 0x8 {
                    let _ = stream.write_all(&[0x88, 2, 0x03, 0xe8]);
                    return;
                }
                let mut frame = vec![0x80 | opcode, 127];
                frame.extend_from_slice(&(payload.len() as u64).to_be_bytes());
                frame.extend_from_slice(&payload);
                if stream.write_all(&frame).is_err() {
                    return;
                }
                stall_at.get_or_insert_with(|| Instant::now() + Duration::from_millis(300));
            }
            if stall_at.is_some_and(|at| Instant::now() >= at) {
                std::thread::sleep(Duration::from_millis(1200));
                stall_at = Some(Instant::now() + Duration::from_secs(3600));
            }
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => data.extend_from_slice(&chunk[..n]),
            }
        }
    });

    let summary_file = SummaryFile::new("stall");
    let summary = run_load(
        &strings(&[
            &format!("ws://{addr}/"),
            "--no-auth",
            "--raw",
            "--connections",
            "1",
            "--size",
            "1000000",
            "--rate",
            "20",
            "--duration",
            "1",
        ]),
        &summary_file,
    );
    // Every message due in the run is sent and echoed, and the stall shows up as latency.
    assert_eq!(count(&summary["sent"]["messages"]), 20, "{summary:#}");
    assert_eq!(count(&summary["received"]["messages"]), 20, "{summary:#}");
    assert_eq!(count(&summary["error_total"]), 0, "{summary:#}");
    assert!(
        count(&summary["latency_us"]["max"]) >= 500_000,
        "{summary:#}"
    );
}

#[test]
fn load_relay_delivers_to_peer() {
    let addr = start(config(2, "backend = \"relay\"\nrate_per_sec = 0"));
    let args = [
        "--scenario",
        "relay",
        "--connections",
        "8",
        "--window",
        "4",
        "--duration",
        "1",
        "--fail-on-error",
    ];
    let summary = load_at(addr, "relay", &args);

    assert_every_message_answered(&summary);
}

#[test]
fn load_relay_rejects_echoed_copies() {
    // An echo server returns each message to its sender, which is not a delivery.
    let addr = start(config(1, "backend = \"echo\"\nrate_per_sec = 0"));
    let args = [
        "--scenario",
        "relay",
        "--connections",
        "4",
        "--duration",
        "1",
    ];
    let summary = load_at(addr, "relay-echo", &args);

    assert!(count(&summary["sent"]["messages"]) > 0, "{summary:#}");
    assert!(count(&summary["errors"]["mismatch"]) > 0, "{summary:#}");
    assert_eq!(count(&summary["latency_us"]["count"]), 0, "{summary:#}");
    let first = summary["first_error"].as_str().unwrap_or_default();
    assert!(first.contains("came back to its sender"), "{summary:#}");
}

#[test]
fn load_ends_when_server_stops_reading() {
    // The server upgrades each connection and then never reads, so the client's writes stall
    // once the socket buffers are full. The run must still end by itself.
    let addr = serve_each(|mut stream| {
        if accept_upgrade(&mut stream).is_some() {
            // Holds the connection open, unread, for longer than the run.
            std::thread::sleep(RUN_LIMIT);
        }
    });
    let args = [
        "--no-auth",
        "--raw",
        "--connections",
        "2",
        "--size",
        "1000000",
        "--window",
        "16",
        "--duration",
        "1",
        "--drain-timeout",
        "1",
        "--close-timeout",
        "1",
    ];
    let started = Instant::now();
    let summary = load_at(addr, "no-read", &args);

    // Duration, drain and close, with room for a slow machine.
    assert!(started.elapsed() < Duration::from_secs(20), "{summary:#}");
    assert_eq!(count(&summary["received"]["messages"]), 0, "{summary:#}");
    assert!(count(&summary["error_total"]) > 0, "{summary:#}");
}

/// Starts a server that upgrades every connection and meets the client's close frame with
/// `reply`: bytes to write before closing TCP (empty for no close frame at all).
fn start_close_replying_server(reply: &'static [u8]) -> std::net::SocketAddr {
    use std::io::{Read, Write};

    serve_each(move |mut stream| {
        let Some(mut data) = accept_upgrade(&mut stream) else {
            return;
        };
        let mut chunk = [0u8; 4096];
        loop {
            while let Some((opcode, _, used)) = client_frame_at(&data) {
                data.drain(..used);
                if opcode == 0x8 {
                    let _ = stream.write_all(reply);
                    return;
                }
            }
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => data.extend_from_slice(&chunk[..n]),
            }
        }
    })
}

#[test]
fn load_counts_abnormal_close_replies() {
    // No close frame before the TCP close is recorded as 1006. A reply with 1011 reports a
    // server error.
    for (reply, code) in [(&[][..], "1006"), (&[0x88, 2, 0x03, 0xf3][..], "1011")] {
        let addr = start_close_replying_server(reply);
        let args = [
            "--no-auth",
            "--scenario",
            "connect",
            "--connections",
            "1",
            "--rate",
            "20",
            "--duration",
            "0.5",
        ];
        let summary = load_at(addr, &format!("close-{code}"), &args);

        let handshakes = count(&summary["handshakes"]);
        assert!(handshakes > 0, "{summary:#}");
        assert_eq!(
            count(&summary["close_codes"][code]),
            handshakes,
            "{summary:#}"
        );
        assert_eq!(
            count(&summary["errors"]["unexpected_close"]),
            handshakes,
            "{summary:#}"
        );
    }
}
