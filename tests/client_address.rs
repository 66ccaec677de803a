//! The client address behind a load balancer (PROXY protocol, trusted X-Forwarded-For) and
//! the browser demo page on the public port.

mod util;

use std::io::Write;

use util::*;

fn upgrade_status(addr: std::net::SocketAddr, prefix: &[u8], extra_header: &str) -> u16 {
    let mut stream = connect(addr);
    let mut bytes = prefix.to_vec();
    let request = upgrade_request(&token("alice"));
    let request = request.replacen(
        "Host: localhost\r\n",
        &format!("Host: localhost\r\n{extra_header}"),
        1,
    );
    bytes.extend_from_slice(request.as_bytes());
    stream.write_all(&bytes).unwrap();
    status_of(&read_head(&mut stream).0)
}

#[test]
fn proxy_protocol_source_is_the_client_for_ip_limits() {
    let addr = start(config(
        1,
        "proxy_protocol = true\nupgrade_rate_per_ip = 1\nupgrade_burst_per_ip = 1\n",
    ));
    let first = b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 8080\r\n";
    let other = b"PROXY TCP4 203.0.113.8 127.0.0.1 5556 8080\r\n";
    assert_eq!(upgrade_status(addr, first, ""), 101);
    assert_eq!(
        upgrade_status(addr, first, ""),
        429,
        "same client IP is limited"
    );
    assert_eq!(
        upgrade_status(addr, other, ""),
        101,
        "another client IP is not"
    );
}

#[test]
fn proxy_protocol_v2_header_is_accepted() {
    let addr = start(config(1, "proxy_protocol = true\n"));
    let mut header = vec![
        0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
    ];
    header.push(0x21); // version 2, PROXY command
    header.push(0x11); // TCP over IPv4
    header.extend_from_slice(&12u16.to_be_bytes());
    header.extend_from_slice(&[198, 51, 100, 1, 127, 0, 0, 1]);
    header.extend_from_slice(&4000u16.to_be_bytes());
    header.extend_from_slice(&8080u16.to_be_bytes());
    assert_eq!(upgrade_status(addr, &header, ""), 101);
}

#[test]
fn missing_proxy_header_closes_without_response() {
    let addr = start(config(1, "proxy_protocol = true\n"));
    let response = http_exchange(addr, upgrade_request(&token("alice")).as_bytes());
    assert!(response.is_empty(), "{response}");
}

#[test]
fn trusted_forwarded_for_is_the_client_for_ip_limits() {
    let addr = start(config(
        1,
        "trusted_proxies = [\"127.0.0.0/8\"]\nupgrade_rate_per_ip = 1\nupgrade_burst_per_ip = 1\n",
    ));
    let a = "X-Forwarded-For: 192.0.2.10\r\n";
    let b = "X-Forwarded-For: 192.0.2.11, 127.0.0.1\r\n";
    assert_eq!(upgrade_status(addr, b"", a), 101);
    assert_eq!(upgrade_status(addr, b"", a), 429);
    assert_eq!(upgrade_status(addr, b"", b), 101);
}

#[test]
fn forwarded_for_walk_continues_into_earlier_lines() {
    let addr = start(config(
        1,
        "trusted_proxies = [\"127.0.0.0/8\"]\nupgrade_rate_per_ip = 1\nupgrade_burst_per_ip = 1\n",
    ));
    // The nearest proxy added a line of its own naming only a trusted hop.
    let lines =
        |client: &str| format!("X-Forwarded-For: {client}\r\nX-Forwarded-For: 127.0.0.9\r\n");
    assert_eq!(upgrade_status(addr, b"", &lines("192.0.2.20")), 101);
    assert_eq!(upgrade_status(addr, b"", &lines("192.0.2.20")), 429);
    assert_eq!(upgrade_status(addr, b"", &lines("192.0.2.21")), 101);
}

#[test]
fn untrusted_forwarded_for_is_ignored() {
    let addr = start(config(
        1,
        "upgrade_rate_per_ip = 1\nupgrade_burst_per_ip = 1\n",
    ));
    assert_eq!(
        upgrade_status(addr, b"", "X-Forwarded-For: 192.0.2.10\r\n"),
        101
    );
    assert_eq!(
        upgrade_status(addr, b"", "X-Forwarded-For: 192.0.2.99\r\n"),
        429
    );
}

#[test]
fn demo_page_is_served_at_root() {
    let addr = start(config(1, ""));
    let response = http_exchange(addr, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(status_of(&response), 200, "{response}");
    assert!(response.contains("Content-Type: text/html"), "{response}");
    assert!(response.contains("<meta name=\"framegate-path\" content=\"/ws\">"));
    let head = http_exchange(addr, b"HEAD / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(status_of(&head), 200, "{head}");
    let (head_part, body) = head.split_once("\r\n\r\n").expect("complete head");
    assert!(body.is_empty(), "HEAD gets no body: {head}");
    let length = |text: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix("Content-Length: "))
            .map(str::to_owned)
    };
    assert_eq!(
        length(head_part),
        length(&response),
        "same length as for GET"
    );
    let disabled = start(config(1, "demo = false\n"));
    let response = http_exchange(disabled, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(status_of(&response), 404, "{response}");
}

#[test]
fn origin_outside_allowed_list_gets_403() {
    let addr = start(config(
        1,
        "allowed_origins = [\"https://chat.example.com\"]\n",
    ));
    assert_eq!(
        upgrade_status(addr, b"", "Origin: https://chat.example.com\r\n"),
        101
    );
    assert_eq!(
        upgrade_status(addr, b"", "Origin: https://evil.example\r\n"),
        403
    );
    assert_eq!(
        upgrade_status(addr, b"", ""),
        403,
        "a missing Origin is refused too"
    );

    let request = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
                   Authorization: Bearer x\r\n";
    let response = http_exchange(addr, format!("{request}\r\n").as_bytes());
    assert!(
        response.ends_with("\r\n\r\nrequest has no Origin header; allowed_origins is set, so only browser pages on a listed origin may connect\n"),
        "{response}"
    );
    let response = http_exchange(
        addr,
        format!("{request}Origin: https://evil.example\r\n\r\n").as_bytes(),
    );
    assert!(
        response.ends_with(
            "\r\n\r\norigin https://evil.example is not in allowed_origins, so it may not connect\n"
        ),
        "{response}"
    );
}

#[test]
fn proxy_header_from_untrusted_peer_is_refused() {
    let addr = start(config(
        1,
        "proxy_protocol = true\ntrusted_proxies = [\"10.0.0.0/8\"]\n",
    ));
    let mut stream = connect(addr);
    let mut bytes = b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 8080\r\n".to_vec();
    bytes.extend_from_slice(upgrade_request(&token("alice")).as_bytes());
    let _ = stream.write_all(&bytes);
    let mut response = Vec::new();
    let _ = std::io::Read::read_to_end(&mut stream, &mut response);
    assert!(
        response.is_empty(),
        "{}",
        String::from_utf8_lossy(&response)
    );
}

#[test]
fn demo_page_requires_a_well_formed_request() {
    let addr = start(config(1, ""));
    // Not the demo: these go through the upgrade checks, where Host is missing or repeated
    // (400), `/` is not the WebSocket path (404) or the version is wrong (505).
    let cases: [(&[u8], u16); 4] = [
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
            404,
        ),
        (b"GET / HTTP/1.0\r\nHost: a\r\n\r\n", 505),
    ];
    for (request, status) in cases {
        let response = http_exchange(addr, request);
        assert_eq!(status_of(&response), status, "{response}");
    }
}

#[test]
fn second_server_on_same_port_fails_to_start() {
    let port = free_port();
    let mut first = config(1, "");
    first.listen = format!("127.0.0.1:{port}").parse().unwrap();
    let _running = start_server(first.clone());
    let verifier = hs256_verifier(&first);
    let second = framegate::runtime::start(first, verifier);
    assert!(second.is_err(), "a second server shared the port");
}
