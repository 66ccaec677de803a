//! Upgrade requests against the real server over raw TCP: every rejection status, the 101,
//! split and dripped requests, and frames pipelined behind the request head.

mod util;

use std::io::Write;
use std::time::Duration;

use util::*;

fn request(lines: &[&str]) -> Vec<u8> {
    let mut text = String::new();
    for line in lines {
        text.push_str(line);
        text.push_str("\r\n");
    }
    text.push_str("\r\n");
    text.into_bytes()
}

fn valid_lines(token: &str) -> Vec<String> {
    vec![
        "GET /ws HTTP/1.1".to_owned(),
        "Host: localhost".to_owned(),
        "Upgrade: websocket".to_owned(),
        "Connection: Upgrade".to_owned(),
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==".to_owned(),
        "Sec-WebSocket-Version: 13".to_owned(),
        format!("Authorization: Bearer {token}"),
    ]
}

/// Replaces (or with `None` removes) the line starting with `prefix`.
fn with_line(token: &str, prefix: &str, replacement: Option<&str>) -> Vec<u8> {
    let mut lines = valid_lines(token);
    let at = lines
        .iter()
        .position(|line| line.starts_with(prefix))
        .expect("line");
    match replacement {
        Some(line) => lines[at] = line.to_owned(),
        None => {
            lines.remove(at);
        }
    }
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    request(&refs)
}

fn assert_complete_rejection(response: &str, status: u16) {
    assert_eq!(status_of(response), status, "{response}");
    let connection = response
        .lines()
        .find_map(|line| {
            line.to_ascii_lowercase()
                .strip_prefix("connection:")
                .map(str::to_owned)
        })
        .expect("Connection header");
    assert!(
        connection.split(',').any(|token| token.trim() == "close"),
        "{response}"
    );
    let (head, body) = response.split_once("\r\n\r\n").expect("head and body");
    let length: usize = head
        .lines()
        .find_map(|line| {
            line.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("content-length");
    assert_eq!(body.len(), length, "{response}");
    assert!(!body.trim().is_empty(), "a one-line reason is expected");
}

#[test]
fn upgrade_rejections_have_precise_statuses() {
    let addr = start(config(1, "upgrade_rate_per_ip = 0\n"));
    let token = token("alice");
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "post",
            with_line(&token, "GET", Some("POST /ws HTTP/1.1")),
            405,
        ),
        (
            "wrong path",
            with_line(&token, "GET", Some("GET /chat HTTP/1.1")),
            404,
        ),
        (
            "http 1.0",
            with_line(&token, "GET", Some("GET /ws HTTP/1.0")),
            505,
        ),
        ("missing host", with_line(&token, "Host", None), 400),
        (
            "no upgrade token",
            with_line(&token, "Upgrade", Some("Upgrade: h2c")),
            400,
        ),
        (
            "no connection upgrade",
            with_line(&token, "Connection", Some("Connection: keep-alive")),
            400,
        ),
        (
            "version 8",
            with_line(
                &token,
                "Sec-WebSocket-Version",
                Some("Sec-WebSocket-Version: 8"),
            ),
            426,
        ),
        (
            "missing key",
            with_line(&token, "Sec-WebSocket-Key", None),
            400,
        ),
        (
            "short key",
            with_line(&token, "Sec-WebSocket-Key", Some("Sec-WebSocket-Key: AAAA")),
            400,
        ),
        (
            "obs-fold",
            with_line(&token, "Upgrade", Some("Upgrade: websocket\r\n x")),
            400,
        ),
        (
            "space before colon",
            with_line(&token, "Upgrade", Some("Upgrade : websocket")),
            400,
        ),
        (
            "body",
            with_line(
                &token,
                "Upgrade",
                Some("Upgrade: websocket\r\nContent-Length: 5"),
            ),
            400,
        ),
        (
            "chunked",
            with_line(
                &token,
                "Upgrade",
                Some("Upgrade: websocket\r\nTransfer-Encoding: chunked"),
            ),
            400,
        ),
        (
            "nul in value",
            with_line(&token, "Upgrade", Some("Upgrade: web\0socket")),
            400,
        ),
        (
            "missing token",
            with_line(&token, "Authorization", None),
            401,
        ),
    ];
    for (name, bytes, status) in cases {
        let response = http_exchange(addr, &bytes);
        assert_complete_rejection(&response, status);
        eprintln!("{name}: {status} ok");
    }
}

#[test]
fn method_not_allowed_names_get() {
    let addr = start(config(1, ""));
    let response = http_exchange(
        addr,
        &with_line(&token("a"), "GET", Some("PUT /ws HTTP/1.1")),
    );
    assert_eq!(status_of(&response), 405);
    assert!(response.contains("Allow: GET"), "{response}");
}

#[test]
fn unsupported_version_names_13() {
    let addr = start(config(1, ""));
    let bytes = with_line(
        &token("a"),
        "Sec-WebSocket-Version",
        Some("Sec-WebSocket-Version: 7"),
    );
    let response = http_exchange(addr, &bytes);
    assert_eq!(status_of(&response), 426);
    assert!(response.contains("Sec-WebSocket-Version: 13"), "{response}");
}

#[test]
fn oversized_head_gets_431_before_the_end() {
    let addr = start(config(1, "max_request_head_bytes = 1024\n"));
    let mut stream = connect(addr);
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nX-Filler: ")
        .unwrap();
    // Keep sending filler without ever ending the head: the verdict must come anyway.
    let filler = vec![b'a'; 2048];
    let _ = stream.write_all(&filler);
    let (head, _) = read_head(&mut stream);
    assert_eq!(status_of(&head), 431, "{head}");
}

#[test]
fn too_many_headers_gets_431() {
    let addr = start(config(1, "max_headers = 16\n"));
    let mut text = String::from("GET /ws HTTP/1.1\r\nHost: x\r\n");
    for i in 0..20 {
        text.push_str(&format!("X-H{i}: v\r\n"));
    }
    text.push_str("\r\n");
    let response = http_exchange(addr, text.as_bytes());
    assert_complete_rejection(&response, 431);
}

#[test]
fn accept_response_carries_accept_key() {
    let addr = start(config(1, ""));
    let mut stream = connect(addr);
    stream
        .write_all(upgrade_request(&token("alice")).as_bytes())
        .unwrap();
    let (head, _) = read_head(&mut stream);
    assert_eq!(status_of(&head), 101, "{head}");
    // RFC 6455 §1.3 sample key and accept value.
    assert!(
        head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{head}"
    );
    assert!(!head.contains("Sec-WebSocket-Protocol"), "{head}");
}

#[test]
fn upgrade_dripped_one_byte_at_a_time_succeeds() {
    let addr = start(config(1, "backend = \"echo\"\n"));
    let mut stream = connect(addr);
    let mut bytes = upgrade_request(&token("drip")).into_bytes();
    bytes.extend(client_frame(
        true,
        1,
        br#"{"conversation_id":"c","content":"x"}"#,
    ));
    for byte in bytes {
        stream.write_all(&[byte]).unwrap();
    }
    let (head, rest) = read_head(&mut stream);
    assert_eq!(status_of(&head), 101);
    let mut client = RawClient {
        stream,
        pending: rest,
    };
    let echo = client.read_frame().expect("echo");
    assert_eq!(echo.payload, br#"{"conversation_id":"c","content":"x"}"#);
}

#[test]
fn frames_pipelined_with_upgrade_are_not_lost() {
    let addr = start(config(2, "backend = \"echo\"\n"));
    let mut frames = Vec::new();
    for i in 0..5 {
        let text = format!(r#"{{"conversation_id":"c","content":"m{i}"}}"#);
        frames.extend(client_frame(true, 1, text.as_bytes()));
    }
    let mut client = open_pipelined(addr, &token("pipelined"), &frames);
    for i in 0..5 {
        let frame = client.read_frame().expect("echo");
        assert_eq!(frame.json()["content"], format!("m{i}"));
    }
}

#[test]
fn token_in_query_cookie_and_protocol_is_accepted() {
    let addr = start(config(1, ""));
    let token = token("alice");
    let base = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
    let query = format!(
        "GET /ws?access_token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let cookie = format!("{base}Cookie: theme=dark; framegate_token={token}\r\n\r\n");
    let protocol = format!("{base}Sec-WebSocket-Protocol: framegate.jwt, {token}\r\n\r\n");
    for request in [query, cookie] {
        let mut stream = connect(addr);
        stream.write_all(request.as_bytes()).unwrap();
        let (head, _) = read_head(&mut stream);
        assert_eq!(status_of(&head), 101, "{head}");
    }
    let mut stream = connect(addr);
    stream.write_all(protocol.as_bytes()).unwrap();
    let (head, _) = read_head(&mut stream);
    assert_eq!(status_of(&head), 101, "{head}");
    assert!(
        head.contains("Sec-WebSocket-Protocol: framegate.jwt\r\n"),
        "{head}"
    );
    assert!(!head.contains(&token), "the token is never echoed");
}

#[test]
fn per_ip_upgrade_rate_gets_429_with_retry_after() {
    let addr = start(config(
        1,
        "upgrade_rate_per_ip = 1\nupgrade_burst_per_ip = 2\n",
    ));
    let mut statuses = Vec::new();
    let mut last = String::new();
    for _ in 0..4 {
        let mut stream = connect(addr);
        stream
            .write_all(upgrade_request(&token("alice")).as_bytes())
            .unwrap();
        let (head, _) = read_head(&mut stream);
        statuses.push(status_of(&head));
        last = head;
    }
    assert_eq!(&statuses[..2], &[101, 101]);
    assert_eq!(statuses[3], 429, "{statuses:?}");
    assert!(last.contains("Retry-After:"), "{last}");
}

#[test]
fn per_user_cap_gets_429_across_workers() {
    let addr = start(config(
        2,
        "max_connections_per_user = 2\nupgrade_rate_per_ip = 0\n",
    ));
    let _first = open(addr, "capped");
    let _second = open(addr, "capped");
    let response = {
        let mut stream = connect(addr);
        stream
            .write_all(upgrade_request(&token("capped")).as_bytes())
            .unwrap();
        read_head(&mut stream).0
    };
    assert_eq!(status_of(&response), 429, "{response}");
    assert!(response.contains("Retry-After:"), "{response}");
    // Another user is unaffected.
    let _other = open(addr, "someone-else");
}

#[test]
fn process_cap_gets_503() {
    let addr = start(config(2, "max_connections = 2\nupgrade_rate_per_ip = 0\n"));
    let _a = open(addr, "u1");
    let _b = open(addr, "u2");
    let mut stream = connect(addr);
    stream
        .write_all(upgrade_request(&token("u3")).as_bytes())
        .unwrap();
    let (head, _) = read_head(&mut stream);
    assert_eq!(status_of(&head), 503, "{head}");
    assert!(head.contains("Retry-After:"), "{head}");
}

#[test]
fn slow_drip_upgrade_is_closed_at_timeout() {
    let addr = start(config(1, "handshake_timeout_ms = 300\n"));
    let mut stream = connect(addr);
    stream.write_all(b"GET /ws HTTP/1.1\r\nHo").unwrap();
    std::thread::sleep(Duration::from_millis(600));
    let (head, _) = read_head(&mut stream);
    assert_eq!(status_of(&head), 408, "{head}");
}

#[test]
fn silent_connection_times_out_late() {
    let addr = start(config(1, "handshake_timeout_ms = 300\n"));
    let started = std::time::Instant::now();
    let mut stream = connect(addr);
    // Nothing is sent. TCP_DEFER_ACCEPT delays the accept by about a second (the kernel
    // accepts after a retransmitted SYN-ACK), and then the handshake timeout applies.
    let (head, _) = read_head(&mut stream);
    assert_eq!(status_of(&head), 408, "{head}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "answered after {:?}",
        started.elapsed()
    );
}

#[test]
fn pending_upgrade_cap_closes_extra_connections() {
    let addr = start(config(
        1,
        "max_pending_upgrades = 3\nhandshake_timeout_ms = 5000\n",
    ));
    // Three connections that started a request and stalled take every pending slot. (A
    // connection that sends nothing at all is not accepted for about a second: the listener
    // uses TCP_DEFER_ACCEPT.)
    let idle: Vec<std::net::TcpStream> = (0..3)
        .map(|_| {
            let mut stream = connect(addr);
            stream.write_all(b"GET /ws HTTP/1.1\r\n").unwrap();
            stream
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let response = http_exchange(addr, upgrade_request(&token("late")).as_bytes());
    assert!(
        response.is_empty(),
        "expected an immediate close, got {response}"
    );
    drop(idle);
    // Once they are gone, upgrades work again.
    let mut ok = false;
    for _ in 0..50 {
        let mut stream = connect(addr);
        stream
            .write_all(upgrade_request(&token("late")).as_bytes())
            .unwrap();
        let mut first = [0u8; 12];
        if std::io::Read::read_exact(&mut stream, &mut first).is_ok() && &first == b"HTTP/1.1 101" {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        ok,
        "upgrades did not recover after the idle connections closed"
    );
}
