//! The admin listener's HTTP handling: request-head deadlines, many idle connections, and
//! bare-LF line endings.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use util::*;

/// Reads until the server closes and returns the response text.
fn read_response(stream: &mut TcpStream) -> String {
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    String::from_utf8_lossy(&response).into_owned()
}

#[test]
fn idle_connections_do_not_starve_probes() {
    let started = start_full(config(1, ""));
    let admin = started.admin.expect("admin listener");

    // Connected and silent, as a slow or hostile client would be.
    let idle: Vec<TcpStream> = (0..32).map(|_| connect(admin)).collect();
    std::thread::sleep(Duration::from_millis(100));

    let (status, body) = admin_get(admin, "/healthz");
    assert_eq!(status, 200, "{body}");
    let (status, body) = admin_get(admin, "/metrics");
    assert_eq!(status, 200, "{body}");
    drop(idle);
}

#[test]
fn silent_connection_gets_408_within_a_second() {
    let started = start_full(config(1, ""));
    let admin = started.admin.expect("admin listener");

    let mut stream = connect(admin);
    let sent = Instant::now();
    let response = read_response(&mut stream);
    let elapsed = sent.elapsed();
    assert_eq!(status_of(&response), 408, "{response}");
    assert!(
        response.contains("request head not received within 1000 ms"),
        "{response}"
    );
    assert!(
        elapsed < Duration::from_millis(1800),
        "the slot was held for {elapsed:?}"
    );
}

#[test]
fn partial_body_gets_408() {
    let started = start_full(config(1, ""));
    let admin = started.admin.expect("admin listener");

    let mut stream = connect(admin);
    stream
        .write_all(b"POST /v1/push HTTP/1.1\r\nHost: admin\r\nContent-Length: 10\r\n\r\n123")
        .expect("write request");
    let response = read_response(&mut stream);
    assert_eq!(status_of(&response), 408, "{response}");
    assert!(response.contains("got 3 of 10 bytes"), "{response}");
}

#[test]
fn bare_lf_request_head_gets_response() {
    let started = start_full(config(1, ""));
    let admin = started.admin.expect("admin listener");

    let sent = Instant::now();
    let response = http_exchange(admin, b"GET /healthz HTTP/1.1\nHost: admin\n\n");
    assert_eq!(status_of(&response), 200, "{response}");
    assert!(response.ends_with("\r\n\r\nok\n"), "{response}");
    assert!(
        sent.elapsed() < Duration::from_millis(900),
        "answered at once, not at the head deadline"
    );
}

#[test]
fn oversized_request_head_gets_431() {
    let started = start_full(config(1, ""));
    let admin = started.admin.expect("admin listener");

    let mut stream = connect(admin);
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: admin\r\nX-Padding: {}\r\n",
        "a".repeat(9000)
    );
    let sent = Instant::now();
    stream.write_all(head.as_bytes()).expect("write request");
    let response = read_response(&mut stream);
    assert_eq!(status_of(&response), 431, "{response}");
    assert!(
        sent.elapsed() < Duration::from_millis(900),
        "answered at once, not at the head deadline"
    );
}
