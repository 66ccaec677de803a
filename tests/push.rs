//! The push API on the admin listener: bearer-key authentication, pushes to users owned by
//! different workers, pushes to and closes of single connections (404 for unknown ids, 410
//! for closed ones), disconnects with an application close code, users and ids named twice,
//! and request framing (Content-Length, Transfer-Encoding).

mod util;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Once;

use util::*;

/// Variable read by the servers of this test binary for the push API key.
const KEY_VAR: &str = "FRAMEGATE_TEST_PUSH_KEY";
const KEY: &str = "push-test-key-0123456789";

fn set_key() {
    static SET: Once = Once::new();
    SET.call_once(|| {
        // SAFETY: only this function writes the environment in this test binary, once, and
        // no other thread of the test reads or writes the environment while it runs (the
        // servers read it in `runtime::start`, after this returns).
        unsafe { std::env::set_var(KEY_VAR, KEY) };
    });
}

fn push_server(workers: usize) -> Started {
    set_key();
    start_full(config(
        workers,
        &format!("push_api_key_env = {KEY_VAR:?}\nrate_per_sec = 0\n"),
    ))
}

/// Sends an admin request with `key` as bearer key; returns (status, body).
fn admin_request(
    admin: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: &str,
) -> (u16, String) {
    let authorization = key
        .map(|key| format!("Authorization: Bearer {key}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\n{authorization}Content-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = connect(admin);
    stream.write_all(request.as_bytes()).expect("write request");
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).into_owned();
    status_and_body(&response)
}

fn next_text(client: &mut RawClient) -> serde_json::Value {
    loop {
        let frame = client.read_frame().expect("frame before close");
        if frame.opcode == 0x1 {
            return frame.json();
        }
    }
}

#[test]
fn push_api_without_key_variable_returns_404() {
    let started = start_full(config(
        1,
        "push_api_key_env = \"FRAMEGATE_TEST_PUSH_KEY_NEVER_SET\"\n",
    ));
    let admin = started.admin.expect("admin listener");
    let (status, _) = admin_request(admin, "POST", "/v1/push", Some(KEY), "{}");
    assert_eq!(status, 404);
}

#[test]
fn push_api_off_names_key_variable() {
    let started = start_full(config(
        1,
        "push_api_key_env = \"FRAMEGATE_TEST_PUSH_KEY_NEVER_SET\"\n",
    ));
    let admin = started.admin.expect("admin listener");
    let (status, reply) = admin_request(admin, "POST", "/v1/push", Some(KEY), "{}");
    assert_eq!(status, 404);
    assert!(
        reply.contains("FRAMEGATE_TEST_PUSH_KEY_NEVER_SET (push_api_key_env) is unset or empty"),
        "{reply}"
    );
}

#[test]
fn admin_wrong_method_gets_405_with_allow() {
    let started = push_server(1);
    let admin = started.admin.expect("admin listener");
    let cases = [
        ("POST", "/metrics", "GET"),
        ("GET", "/v1/push", "POST"),
        ("GET", "/v1/disconnect", "POST"),
        ("PUT", "/v1/connections/1", "POST, DELETE"),
    ];
    for (method, path, allow) in cases {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {KEY}\r\n\
             Content-Length: 0\r\n\r\n"
        );
        let response = http_exchange(admin, request.as_bytes());
        assert_eq!(status_of(&response), 405, "{method} {path}: {response}");
        assert!(
            response.contains(&format!("\r\nAllow: {allow}\r\n")),
            "{method} {path}: {response}"
        );
    }
}

#[test]
fn push_body_error_names_expected_form() {
    let started = push_server(1);
    let admin = started.admin.expect("admin listener");
    let (status, reply) = admin_request(admin, "POST", "/v1/push", Some(KEY), "{x}");
    assert_eq!(status, 400);
    let error: serde_json::Value = serde_json::from_str(&reply).expect("JSON error body");
    assert_eq!(
        error["error"],
        "body must be JSON {\"users\": [...], \"message\": ...}: key must be a string at line 1 column 2"
    );
}

#[test]
fn push_api_wrong_or_missing_key_returns_401() {
    let started = push_server(1);
    let admin = started.admin.expect("admin listener");
    let body = r#"{"users":["a"],"message":{}}"#;
    let (status, _) = admin_request(admin, "POST", "/v1/push", Some("wrong-key"), body);
    assert_eq!(status, 401);
    let (status, _) = admin_request(admin, "POST", "/v1/push", None, body);
    assert_eq!(status, 401);
}

#[test]
fn push_users_on_different_workers_delivers_to_each() {
    let workers = 3;
    let started = push_server(workers);
    let admin = started.admin.expect("admin listener");
    let (alice, bob) = users_on_different_workers(workers);
    let mut a1 = open(started.addr, &alice);
    let mut a2 = open(started.addr, &alice);
    let mut b = open(started.addr, &bob);

    let body = serde_json::json!({
        "users": [alice, bob, "nobody"],
        "message": {"type": "notice", "text": "maintenance at noon"},
    })
    .to_string();
    let (status, reply) = admin_request(admin, "POST", "/v1/push", Some(KEY), &body);
    assert_eq!(status, 202, "{reply}");
    let counts: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(counts["users"], 2);
    assert_eq!(counts["connections"], 3);
    for client in [&mut a1, &mut a2, &mut b] {
        let message = next_text(client);
        assert_eq!(message["type"], "notice");
        assert_eq!(message["text"], "maintenance at noon");
    }

    let body = r#"{"users":["nobody"],"message":{"x":1}}"#;
    let (status, _) = admin_request(admin, "POST", "/v1/push", Some(KEY), body);
    assert_eq!(status, 404);
    let (status, _) = admin_request(admin, "POST", "/v1/push", Some(KEY), "{\"users\":");
    assert_eq!(status, 400);
}

#[test]
fn push_connection_by_id_then_delete_then_410() {
    // With one worker, ids are 1, 2, ... in accept order.
    let started = push_server(1);
    let admin = started.admin.expect("admin listener");
    let mut first = open(started.addr, "carol");
    let _second = open(started.addr, "carol");

    let (status, reply) = admin_request(
        admin,
        "POST",
        "/v1/connections/1",
        Some(KEY),
        r#"{"only":"you"}"#,
    );
    assert_eq!(status, 202, "{reply}");
    assert_eq!(next_text(&mut first)["only"], "you");

    let (status, _) = admin_request(admin, "DELETE", "/v1/connections/1", Some(KEY), "");
    assert_eq!(status, 200);
    assert_eq!(first.expect_close(), 1000);
    first.finish_close(1000);

    let (status, _) = admin_request(admin, "POST", "/v1/connections/1", Some(KEY), "{}");
    assert_eq!(status, 410);
    let (status, _) = admin_request(admin, "DELETE", "/v1/connections/1", Some(KEY), "");
    assert_eq!(status, 410);
    let (status, _) = admin_request(admin, "POST", "/v1/connections/99", Some(KEY), "{}");
    assert_eq!(status, 404);
    let other_worker = (1u64 << 48) | 1;
    let path = format!("/v1/connections/{other_worker}");
    let (status, _) = admin_request(admin, "POST", &path, Some(KEY), "{}");
    assert_eq!(status, 404);
    let (status, reply) = admin_request(admin, "POST", "/v1/connections/abc", Some(KEY), "{}");
    assert_eq!(status, 400);
    assert!(
        reply.contains("connection id must be a decimal integer"),
        "{reply}"
    );
}

/// Returns a user id that the shard ring gives to worker `owner` of `workers`.
fn user_owned_by(owner: usize, workers: usize) -> String {
    let ring = framegate::shard::Ring::new(workers).expect("ring");
    (0..10_000)
        .map(|i| format!("user{i}"))
        .find(|user| ring.owner(user.as_bytes()) == owner)
        .expect("a user for every worker")
}

/// Reads `framegate_handoffs_received_total` from the admin listener.
fn handoffs_received(admin: SocketAddr) -> u64 {
    let (_, text) = admin_get(admin, "/metrics");
    text.lines()
        .find_map(|line| line.strip_prefix("framegate_handoffs_received_total "))
        .and_then(|value| value.trim().parse().ok())
        .expect("handoffs counter in /metrics")
}

#[test]
fn push_connection_handed_off_is_reachable_by_id() {
    let started = push_server(2);
    let admin = started.admin.expect("admin listener");
    let user = user_owned_by(1, 2);

    // The kernel spreads accepts over both workers, so some of these connections are
    // accepted by worker 0 and handed off to worker 1, which owns the user. Ids of worker 1
    // are (1 << 48) | n, with n counting admitted upgrades in order.
    let mut clients = Vec::new();
    while handoffs_received(admin) == 0 {
        assert!(clients.len() < 32, "no connection was handed off");
        clients.push(open(started.addr, &user));
    }

    for (n, client) in (1u64..).zip(clients.iter_mut()) {
        let id = (1u64 << 48) | n;
        let body = format!(r#"{{"to":{n}}}"#);
        let path = format!("/v1/connections/{id}");
        let (status, reply) = admin_request(admin, "POST", &path, Some(KEY), &body);
        assert_eq!(status, 202, "connection {id}: {reply}");
        assert_eq!(next_text(client)["to"], n);
    }

    let next = (1u64 << 48) | (clients.len() as u64 + 1);
    let path = format!("/v1/connections/{next}");
    let (status, _) = admin_request(admin, "POST", &path, Some(KEY), "{}");
    assert_eq!(status, 404, "an id not yet issued is unknown");
    let (status, _) = admin_request(admin, "POST", "/v1/connections/1", Some(KEY), "{}");
    assert_eq!(status, 404, "worker 0 owns no connection");

    let first = (1u64 << 48) | 1;
    let path = format!("/v1/connections/{first}");
    let (status, _) = admin_request(admin, "DELETE", &path, Some(KEY), "");
    assert_eq!(status, 200);
    let (status, _) = admin_request(admin, "POST", &path, Some(KEY), "{}");
    assert_eq!(status, 410);
}

#[test]
fn disconnect_users_closes_with_code() {
    let started = push_server(2);
    let admin = started.admin.expect("admin listener");
    let mut client = open(started.addr, "dave");

    let body = r#"{"users":["dave"],"code":3000}"#;
    let (status, _) = admin_request(admin, "POST", "/v1/disconnect", Some(KEY), body);
    assert_eq!(status, 400, "codes outside 4000-4999 are rejected");

    let body = r#"{"users":["dave"],"code":4321,"reason":"account suspended"}"#;
    let (status, reply) = admin_request(admin, "POST", "/v1/disconnect", Some(KEY), body);
    assert_eq!(status, 200, "{reply}");
    let frame = loop {
        let frame = client.read_frame().expect("close frame");
        if frame.opcode == 0x8 {
            break frame;
        }
    };
    assert_eq!(frame.close_code(), Some(4321));
    assert_eq!(&frame.payload[2..], b"account suspended");

    let body = r#"{"users":["dave"]}"#;
    eventually("dave's connection to close", || {
        admin_request(admin, "POST", "/v1/disconnect", Some(KEY), body).0 == 404
    });
}

#[test]
fn admin_body_above_limit_returns_413() {
    let started = push_server(1);
    let admin = started.admin.expect("admin listener");
    let request = format!(
        "POST /v1/push HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Length: {}\r\n\r\n",
        2 << 20
    );
    let response = http_exchange(admin, request.as_bytes());
    assert_eq!(status_of(&response), 413);
}

#[test]
fn push_message_reaches_client_byte_for_byte() {
    let started = push_server(1);
    let admin = started.admin.expect("admin listener");
    let mut client = open(started.addr, "erin");
    let message = r#"{"z":1,"a":12345678901234567890123,"a":"dup","s":"caf\u00e9"}"#;

    let body = format!(r#"{{"users":["erin"],"message":{message}}}"#);
    let (status, reply) = admin_request(admin, "POST", "/v1/push", Some(KEY), &body);
    assert_eq!(status, 202, "{reply}");
    assert_eq!(next_payload(&mut client), message);

    let body = format!(" \n{message}\n");
    let (status, reply) = admin_request(admin, "POST", "/v1/connections/1", Some(KEY), &body);
    assert_eq!(status, 202, "{reply}");
    assert_eq!(next_payload(&mut client), message);

    let body = r#"{"users":["erin"],"message":"plain \"text\""}"#;
    let (status, reply) = admin_request(admin, "POST", "/v1/push", Some(KEY), body);
    assert_eq!(status, 202, "{reply}");
    assert_eq!(
        next_payload(&mut client),
        r#""plain \"text\"""#,
        "a string message is sent as its JSON text"
    );
}

/// Returns the payload of the next text frame as text.
fn next_payload(client: &mut RawClient) -> String {
    loop {
        let frame = client.read_frame().expect("frame before close");
        if frame.opcode == 0x1 {
            return String::from_utf8(frame.payload).expect("text frame is UTF-8");
        }
    }
}

#[test]
fn push_above_max_outbound_bytes_gets_413() {
    set_key();
    let started = start_full(config(
        1,
        &format!("push_api_key_env = {KEY_VAR:?}\nrate_per_sec = 0\nmax_outbound_bytes = 65536\n"),
    ));
    let admin = started.admin.expect("admin listener");
    let mut client = open(started.addr, "gail");
    // The frame of a 65,602-byte message is above max_outbound_bytes.
    let message = format!("\"{}\"", "x".repeat(65_600));
    let (status, reply) = admin_request(admin, "POST", "/v1/connections/1", Some(KEY), &message);
    assert_eq!(status, 413, "{reply}");
    assert!(reply.contains("max_outbound_bytes"), "{reply}");

    let body = format!(r#"{{"users":["gail"],"message":{message}}}"#);
    let (status, reply) = admin_request(admin, "POST", "/v1/push", Some(KEY), &body);
    assert_eq!(status, 413, "{reply}");

    // The connection is still open and takes the next message.
    let (status, reply) = admin_request(admin, "POST", "/v1/connections/1", Some(KEY), "{}");
    assert_eq!(status, 202, "{reply}");
    assert_eq!(next_payload(&mut client), "{}");
}

/// Sends a push API request with a raw head, `fields` being whole field lines, and returns
/// (status, body).
fn admin_raw(admin: SocketAddr, request_line: &str, fields: &str, body: &str) -> (u16, String) {
    let request = format!("{request_line}\r\nHost: admin\r\n{fields}\r\n{body}");
    let response = http_exchange(admin, request.as_bytes());
    status_and_body(&response)
}

#[test]
fn push_to_repeated_user_delivers_once() {
    let started = push_server(2);
    let admin = started.admin.expect("admin listener");
    let mut client = open(started.addr, "hana");

    let body = r#"{"users":["hana","hana","hana"],"message":{"n":1}}"#;
    let (status, reply) = admin_request(admin, "POST", "/v1/push", Some(KEY), body);
    assert_eq!(status, 202, "{reply}");
    let counts: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(counts["users"], 1);
    assert_eq!(counts["connections"], 1);

    let body = r#"{"users":["hana"],"message":{"n":2}}"#;
    let (status, reply) = admin_request(admin, "POST", "/v1/push", Some(KEY), body);
    assert_eq!(status, 202, "{reply}");
    assert_eq!(next_text(&mut client)["n"], 1);
    assert_eq!(
        next_text(&mut client)["n"],
        2,
        "the repeated user got the first message once"
    );
}

#[test]
fn disconnect_repeated_names_counts_once() {
    let started = push_server(1);
    let admin = started.admin.expect("admin listener");
    let mut first = open(started.addr, "ivan");
    let mut second = open(started.addr, "jade");

    let body = r#"{"users":["ivan","ivan"]}"#;
    let (status, reply) = admin_request(admin, "POST", "/v1/disconnect", Some(KEY), body);
    assert_eq!(status, 200, "{reply}");
    let counts: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(counts["users"], 1);
    assert_eq!(counts["connections"], 1);
    assert_eq!(first.expect_close(), 4000);

    // With one worker, jade's connection is the second one accepted: id 2.
    let body = r#"{"connection_ids":[2,2]}"#;
    let (status, reply) = admin_request(admin, "POST", "/v1/disconnect", Some(KEY), body);
    assert_eq!(status, 200, "{reply}");
    let counts: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(counts["users"], 0);
    assert_eq!(counts["connections"], 1);
    assert_eq!(second.expect_close(), 4000);
}

#[test]
fn push_api_bearer_scheme_any_case() {
    let started = push_server(1);
    let admin = started.admin.expect("admin listener");
    let _client = open(started.addr, "kira");
    let body = r#"{"users":["kira"],"message":{}}"#;
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let fields = format!(
            "Authorization: {scheme} {KEY}\r\nContent-Length: {}\r\n",
            body.len()
        );
        let (status, reply) = admin_raw(admin, "POST /v1/push HTTP/1.1", &fields, body);
        assert_eq!(status, 202, "{scheme}: {reply}");
    }
}

#[test]
fn push_content_length_framing_errors_get_400() {
    let started = push_server(1);
    let admin = started.admin.expect("admin listener");
    let body = r#"{"users":["lena"],"message":{}}"#;
    let n = body.len();
    let cases = [
        (
            format!("Content-Length: +{n}\r\n"),
            "must be decimal digits",
        ),
        (
            format!("Content-Length: {n}, {n}\r\n"),
            "must be decimal digits",
        ),
        (
            format!("Content-Length: {n}\r\nContent-Length: 5\r\n"),
            "appears more than once",
        ),
        (
            format!("Content-Length: 5\r\nContent-Length: {n}\r\n"),
            "appears more than once",
        ),
        (
            format!("Content-Length: {n}\r\nContent-Length: {n}\r\n"),
            "appears more than once",
        ),
    ];
    for (length_fields, expected) in cases {
        let fields = format!("Authorization: Bearer {KEY}\r\n{length_fields}");
        let (status, reply) = admin_raw(admin, "POST /v1/push HTTP/1.1", &fields, body);
        assert_eq!(status, 400, "{length_fields:?}: {reply}");
        assert!(reply.contains(expected), "{length_fields:?}: {reply}");
    }
}

#[test]
fn push_without_content_length_gets_411() {
    let started = push_server(1);
    let admin = started.admin.expect("admin listener");
    let body = r#"{"users":["mona"],"message":{}}"#;
    let fields = format!("Authorization: Bearer {KEY}\r\n");
    for request_line in [
        "POST /v1/push HTTP/1.1",
        "POST /v1/disconnect HTTP/1.1",
        "POST /v1/connections/1 HTTP/1.1",
    ] {
        let (status, reply) = admin_raw(admin, request_line, &fields, body);
        assert_eq!(status, 411, "{request_line}: {reply}");
        assert!(reply.contains("Content-Length is missing"), "{reply}");
    }

    let (status, _) = admin_raw(admin, "POST /v1/push HTTP/1.1", "", body);
    assert_eq!(status, 401, "the key is checked before the body");
}

#[test]
fn push_with_transfer_encoding_gets_501() {
    let started = push_server(1);
    let admin = started.admin.expect("admin listener");
    let body = r#"{"users":["nina"],"message":{}}"#;
    let chunked = format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
    let fields = format!("Authorization: Bearer {KEY}\r\nTransfer-Encoding: chunked\r\n");
    let (status, reply) = admin_raw(admin, "POST /v1/push HTTP/1.1", &fields, &chunked);
    assert_eq!(status, 501, "{reply}");
    // Errors found before routing have the push API's JSON form too.
    let error: serde_json::Value = serde_json::from_str(&reply).expect("JSON error body");
    let message = error["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("chunked request bodies are not read; send the body with Content-Length"),
        "{reply}"
    );
}
