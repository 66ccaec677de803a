//! The admin listener's HTTP handling: request-head deadlines, many idle connections,
//! bare-LF line endings, `Expect: 100-continue`, and the key check before any body is read.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Once;
use std::time::{Duration, Instant};

use util::*;

/// Variable read by the servers of this test binary for the push API key.
const KEY_VAR: &str = "FRAMEGATE_TEST_ADMIN_PUSH_KEY";
const KEY: &str = "admin-test-key-0123456789";

/// Starts a server whose push API is on, with [`KEY`].
fn push_server() -> Started {
    static SET: Once = Once::new();
    SET.call_once(|| {
        // SAFETY: only this function writes the environment in this test binary, once, and
        // no other thread of the test reads or writes the environment while it runs (the
        // servers read it in `runtime::start`, after this returns).
        unsafe { std::env::set_var(KEY_VAR, KEY) };
    });
    start_full(config(1, &format!("push_api_key_env = {KEY_VAR:?}\n")))
}

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
    let started = push_server();
    let admin = started.admin.expect("admin listener");

    let mut stream = connect(admin);
    let head = format!(
        "POST /v1/push HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {KEY}\r\nContent-Length: 10\r\n\r\n123"
    );
    stream.write_all(head.as_bytes()).expect("write request");
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

#[test]
fn expect_continue_gets_100_before_body() {
    let started = push_server();
    let admin = started.admin.expect("admin listener");
    let _client = open(started.addr, "olga");
    let body = r#"{"users":["olga"],"message":{"n":1}}"#;

    let mut stream = connect(admin);
    let head = format!(
        "POST /v1/push HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {KEY}\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("write head");
    let mut interim = [0u8; 25];
    stream.read_exact(&mut interim).expect("interim response");
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(body.as_bytes()).expect("write body");
    let response = read_response(&mut stream);
    assert_eq!(status_of(&response), 202, "{response}");
}

#[test]
fn body_is_not_awaited_without_key() {
    let started = push_server();
    let admin = started.admin.expect("admin listener");
    let cases = [
        // The push API with a wrong key: 401 before any body byte.
        "POST /v1/push HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer wrong\r\nContent-Length: 100\r\n\r\n",
        // A probe that announces a body it does not send.
        "GET /healthz HTTP/1.1\r\nHost: admin\r\nContent-Length: 100\r\n\r\n",
    ];
    for (head, status) in cases.into_iter().zip([401, 200]) {
        let mut stream = connect(admin);
        let sent = Instant::now();
        stream.write_all(head.as_bytes()).expect("write head");
        let response = read_response(&mut stream);
        assert_eq!(status_of(&response), status, "{response}");
        assert!(
            sent.elapsed() < Duration::from_millis(900),
            "answered at once, not at the body deadline"
        );
    }
}
