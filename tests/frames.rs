//! Frames and messages against the real server over raw TCP: each close code, fragmentation
//! with interleaved pings, 1-byte TCP writes, the size boundary, message checks and rates.

mod util;

use util::*;

const ECHO: &str = "backend = \"echo\"\n";

fn ok_message(content: &str) -> String {
    serde_json::json!({ "conversation_id": "c1", "content": content }).to_string()
}

#[test]
fn protocol_violations_close_with_1002() {
    let addr = start(config(1, ECHO));
    let mut unmasked = vec![0x81, 0x02];
    unmasked.extend_from_slice(b"hi");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unmasked frame", unmasked),
        ("rsv1 set", client_frame_raw(0x80 | 0x40 | 0x1, b"x")),
        ("reserved opcode 3", client_frame_raw(0x80 | 0x3, b"")),
        ("reserved opcode 0xb", client_frame_raw(0x80 | 0xb, b"")),
        ("ping over 125", client_frame(true, 0x9, &[0u8; 126])),
        ("fragmented ping", client_frame(false, 0x9, b"x")),
        ("continuation without start", client_frame(true, 0x0, b"x")),
        ("close with 1 byte", client_frame(true, 0x8, &[0x03])),
        (
            "close code 1005",
            client_frame(true, 0x8, &1005u16.to_be_bytes()),
        ),
        (
            "close code 999",
            client_frame(true, 0x8, &999u16.to_be_bytes()),
        ),
        (
            "close code 1016",
            client_frame(true, 0x8, &1016u16.to_be_bytes()),
        ),
        (
            "close code 5000",
            client_frame(true, 0x8, &5000u16.to_be_bytes()),
        ),
        ("64-bit length top bit", {
            let mut frame = vec![0x81, 0x80 | 127];
            frame.extend_from_slice(&(1u64 << 63).to_be_bytes());
            frame.extend_from_slice(&[1, 2, 3, 4]);
            frame
        }),
        ("new data frame inside fragmented message", {
            let mut bytes = client_frame(false, 0x1, b"{\"a\":");
            bytes.extend(client_frame(true, 0x1, b"1}"));
            bytes
        }),
    ];
    for (name, bytes) in cases {
        let mut client = open(addr, "violator");
        client.send(&bytes);
        let code = client.expect_close();
        assert_eq!(code, 1002, "{name}");
        client.finish_close(1002);
    }
}

#[test]
fn invalid_utf8_closes_with_1007() {
    let addr = start(config(1, ECHO));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("invalid text", client_frame(true, 0x1, b"\xff\xfe")),
        ("invalid close reason", {
            let mut payload = 1000u16.to_be_bytes().to_vec();
            payload.extend_from_slice(b"\xc0\xaf");
            client_frame(true, 0x8, &payload)
        }),
        ("invalid in second fragment", {
            let mut bytes = client_frame(false, 0x1, b"abc");
            bytes.extend(client_frame(true, 0x0, b"\xed\xa0\x80"));
            bytes
        }),
    ];
    for (name, bytes) in cases {
        let mut client = open(addr, "utf8");
        client.send(&bytes);
        assert_eq!(client.expect_close(), 1007, "{name}");
    }
}

#[test]
fn invalid_utf8_fails_fast_inside_fragmented_message() {
    let addr = start(config(1, ECHO));
    let mut client = open(addr, "failfast");
    // The first fragment already makes the prefix invalid; the message is never finished.
    client.send(&client_frame(false, 0x1, b"ok\xf8"));
    assert_eq!(client.expect_close(), 1007);
}

#[test]
fn code_point_split_across_fragments_is_valid() {
    let addr = start(config(1, "backend = \"echo\"\njson = false\n"));
    let mut client = open(addr, "split");
    let text = "héllo €";
    let bytes = text.as_bytes();
    // Split inside the 3-byte euro sign.
    let cut = bytes.len() - 1;
    client.send(&client_frame(false, 0x1, &bytes[..cut]));
    client.send(&client_frame(true, 0x0, &bytes[cut..]));
    let frame = client.read_frame().expect("echo");
    assert_eq!(frame.payload, bytes);
}

#[test]
fn message_size_boundary_is_10240() {
    let addr = start(config(
        1,
        "backend = \"echo\"\njson = false\nrate_per_sec = 0\n",
    ));
    let mut client = open(addr, "sizes");
    let exact = vec![b'a'; 10_240];
    client.send(&client_frame(true, 0x1, &exact));
    assert_eq!(client.read_frame().expect("echo").payload.len(), 10_240);
    // Fragmented to exactly the limit also passes.
    client.send(&client_frame(false, 0x1, &exact[..5000]));
    client.send(&client_frame(true, 0x0, &exact[5000..]));
    assert_eq!(client.read_frame().expect("echo").payload.len(), 10_240);
    client.send(&client_frame(true, 0x1, &[b'a'; 10_241]));
    assert_eq!(client.expect_close(), 1009);
}

#[test]
fn fragmented_message_over_limit_closes_with_1009() {
    let addr = start(config(1, "backend = \"echo\"\njson = false\n"));
    let mut client = open(addr, "fragments");
    client.send(&client_frame(false, 0x1, &[b'a'; 8000]));
    client.send(&client_frame(false, 0x0, &[b'a'; 2240]));
    client.send(&client_frame(true, 0x0, b"b"));
    assert_eq!(client.expect_close(), 1009);
}

#[test]
fn declared_huge_length_closes_with_1009_before_payload() {
    let addr = start(config(1, ECHO));
    let mut client = open(addr, "huge");
    // Only the header is sent: the verdict cannot wait for 1 GiB of payload.
    let mut header = vec![0x81, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 30).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    client.send(&header);
    assert_eq!(client.expect_close(), 1009);
}

#[test]
fn binary_is_rejected_with_error_and_1003() {
    let addr = start(config(1, ECHO));
    let mut client = open(addr, "binary");
    client.send(&client_frame(true, 0x2, b"\x00\x01"));
    let error = client.read_frame().expect("error frame");
    assert_eq!(error.json()["code"], "binary_not_allowed");
    assert_eq!(client.expect_close(), 1003);
}

#[test]
fn fragmented_message_with_interleaved_pings_is_echoed() {
    let addr = start(config(1, ECHO));
    let mut client = open(addr, "frag");
    let text = ok_message("fragmented");
    let bytes = text.as_bytes();
    client.send(&client_frame(false, 0x1, &bytes[..5]));
    client.send(&client_frame(true, 0x9, b"p1"));
    client.send(&client_frame(false, 0x0, &bytes[5..12]));
    client.send(&client_frame(true, 0x9, b"p2"));
    client.send(&client_frame(true, 0x0, &bytes[12..]));
    let pong1 = client.read_frame().unwrap();
    assert_eq!((pong1.opcode, pong1.payload.as_slice()), (0xA, &b"p1"[..]));
    let pong2 = client.read_frame().unwrap();
    assert_eq!((pong2.opcode, pong2.payload.as_slice()), (0xA, &b"p2"[..]));
    let echo = client.read_frame().unwrap();
    assert_eq!(echo.opcode, 0x1);
    assert_eq!(echo.payload, bytes);
}

#[test]
fn one_byte_tcp_writes_are_reassembled() {
    let addr = start(config(1, ECHO));
    let mut client = open(addr, "bytewise");
    let mut bytes = client_frame(true, 0x1, ok_message("one").as_bytes());
    bytes.extend(client_frame(true, 0x9, b"ping"));
    bytes.extend(client_frame(false, 0x1, b"{\"conversation_id\":\"c1\","));
    bytes.extend(client_frame(true, 0x0, b"\"content\":\"two\"}"));
    for byte in &bytes {
        client.send(&[*byte]);
    }
    assert_eq!(client.read_frame().unwrap().json()["content"], "one");
    assert_eq!(client.read_frame().unwrap().opcode, 0xA);
    assert_eq!(client.read_frame().unwrap().json()["content"], "two");
}

#[test]
fn message_checks_answer_with_error_frames() {
    let addr = start(config(1, "backend = \"echo\"\nrate_per_sec = 0\n"));
    let mut client = open(addr, "checks");
    let cases = [
        (
            r#"{"id":"c42","conversation_id":"c1","content":"x""#,
            "invalid_json",
        ),
        (r#"{"id":"c43","conversation_id":"c1"}"#, "missing_field"),
        (
            r#"{"id":"c44","conversation_id":"c1","content":5}"#,
            "wrong_type",
        ),
        (
            r#"{"id":"c45","conversation_id":"c1","content":"x"} {}"#,
            "invalid_json",
        ),
        (r#"[1,2]"#, "invalid_json"),
    ];
    for (text, code) in cases {
        client.send_text(text);
        let error = client.read_frame().expect("error frame").json();
        assert_eq!(error["type"], "error", "{text}");
        assert_eq!(error["code"], code, "{text}");
        assert!(
            error["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{text}"
        );
    }
    // Details name the field, not an internal index.
    client.send_text(r#"{"conversation_id":"c1"}"#);
    let detail = client.read_frame().unwrap().json()["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(detail.contains("\"content\""), "{detail}");
    client.send_text(r#"{"conversation_id":"c1","content":[]}"#);
    let detail = client.read_frame().unwrap().json()["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        detail.contains("content") && detail.contains("string"),
        "{detail}"
    );

    // The connection stays open and valid messages still pass.
    client.send_text(&ok_message("still here"));
    assert_eq!(client.read_frame().unwrap().json()["content"], "still here");
}

#[test]
fn error_frame_echoes_client_id() {
    let addr = start(config(1, ECHO));
    let mut client = open(addr, "ids");
    client.send_text(r#"{"id":"c42","conversation_id":"c1"}"#);
    assert_eq!(client.read_frame().unwrap().json()["id"], "c42");
    client.send_text(r#"{"id":7,"conversation_id":"c1"}"#);
    assert_eq!(client.read_frame().unwrap().json()["id"], 7);
}

#[test]
fn rate_limit_rejects_with_retry_after() {
    let addr = start(config(
        1,
        "backend = \"echo\"\nrate_per_sec = 1\nburst = 3\n",
    ));
    let mut client = open(addr, "rate");
    for i in 0..4 {
        let text =
            serde_json::json!({"id": format!("m{i}"), "conversation_id": "c", "content": "x"});
        client.send_text(&text.to_string());
    }
    for _ in 0..3 {
        assert_eq!(client.read_frame().unwrap().json()["content"], "x");
    }
    let error = client.read_frame().unwrap().json();
    assert_eq!(error["code"], "rate_limited");
    assert_eq!(error["id"], "m3");
    assert!(error["retry_after_ms"].as_u64().unwrap() >= 1);
}

#[test]
fn repeated_violations_close_with_1008() {
    let addr = start(config(1, "backend = \"echo\"\nmax_violations = 3\n"));
    let mut client = open(addr, "bad");
    for _ in 0..3 {
        client.send_text("nope");
    }
    assert_eq!(client.expect_close(), 1008);
    client.finish_close(1008);
}

#[test]
fn close_handshake_echoes_code_and_ends_cleanly() {
    let addr = start(config(1, ECHO));
    let mut client = open(addr, "closer");
    let mut payload = 4001u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"done");
    client.send(&client_frame(true, 0x8, &payload));
    let frame = client.read_frame().expect("close reply");
    assert_eq!(frame.close_code(), Some(4001));
    // The server then closes TCP: end of stream, not a reset.
    assert!(client.read_frame().is_none());
}

#[test]
fn empty_close_is_answered_with_empty_close() {
    let addr = start(config(1, ECHO));
    let mut client = open(addr, "closer");
    client.send(&client_frame(true, 0x8, b""));
    let frame = client.read_frame().expect("close reply");
    assert_eq!(frame.opcode, 0x8);
    assert!(frame.payload.is_empty());
    assert!(client.read_frame().is_none());
}

#[test]
fn unsolicited_pong_is_ignored() {
    let addr = start(config(1, ECHO));
    let mut client = open(addr, "pong");
    client.send(&client_frame(true, 0xA, b"x"));
    client.send_text(&ok_message("after pong"));
    assert_eq!(client.read_frame().unwrap().json()["content"], "after pong");
}
