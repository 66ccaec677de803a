//! Hostile but well-formed input: each case has the outcome the modules document, and costs
//! bounded CPU and memory. Cases run against the real server over raw TCP. Where a limit is a
//! number (bytes examined, bytes held), the parser is also checked directly.
//!
//! - a request head dripped one byte at a time gets 431 at `max_request_head_bytes`;
//! - 10,000 header fields get 431 once `max_headers` is crossed, without the head ending;
//! - a 64-bit frame length with the top bit set closes with 1002, any other over the limit
//!   with 1009, before any payload;
//! - a message in 100,000 one-byte fragments is echoed intact;
//! - 1 MB of `[`, duplicate keys, lone surrogates, a byte-order mark and two JSON values in
//!   one message each get an `invalid_json` error frame and the connection stays open.

mod util;

use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use framegate::frame::{Event, MessageKind, MessageReader, ReaderConfig};
use framegate::http::{ParseError, ParserLimits, RequestParser, Status};
use framegate::message::{self, Field, Invalid, MessageRules};
use util::{RawClient, client_frame, config, connect, open, read_head, start, status_of};

/// Head size limit of the upgrade-limit server, the smallest the configuration allows.
const MAX_HEAD_BYTES: usize = 1024;

/// Header field limit (the default).
const MAX_HEADERS: usize = 64;

/// Message size limit of the echo servers: room for 1 MB of JSON and 100,000 fragments.
const MAX_MESSAGE_BYTES: usize = 2 * 1024 * 1024;

/// How long a read waits to show that the server has not responded yet.
const QUIET: Duration = Duration::from_millis(300);

fn server(name: &'static str, toml: &'static str) -> SocketAddr {
    static SERVERS: OnceLock<std::sync::Mutex<Vec<(&'static str, SocketAddr)>>> = OnceLock::new();
    let servers = SERVERS.get_or_init(Default::default);
    let mut servers = servers
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(&(_, addr)) = servers.iter().find(|(known, _)| *known == name) {
        return addr;
    }
    let addr = start(config(1, toml));
    servers.push((name, addr));
    addr
}

/// Returns a server with a 1024-byte head limit.
fn small_head_server() -> SocketAddr {
    server(
        "small head",
        "max_request_head_bytes = 1024\nupgrade_rate_per_ip = 0\n",
    )
}

/// Returns a server whose head limit (1 MiB) is far above what 64 header fields need, so that
/// only the field count can reject a head.
fn many_fields_server() -> SocketAddr {
    server(
        "many fields",
        "max_request_head_bytes = 1048576\nmax_headers = 64\nupgrade_rate_per_ip = 0\n",
    )
}

/// Returns an echo server without JSON checks.
fn raw_echo_server() -> SocketAddr {
    server(
        "raw echo",
        "backend = \"echo\"\njson = false\nmax_message_bytes = 2097152\nrate_per_sec = 0\n\
         upgrade_rate_per_ip = 0\nmax_outbound_bytes = 4194304\n",
    )
}

/// Returns an echo server with the default JSON rules (an object with string `conversation_id` and
/// `content`, depth 32).
fn json_echo_server() -> SocketAddr {
    server(
        "json echo",
        "backend = \"echo\"\nmax_message_bytes = 2097152\nrate_per_sec = 0\n\
         max_violations = 1000\nupgrade_rate_per_ip = 0\nmax_outbound_bytes = 4194304\n",
    )
}

fn client(addr: SocketAddr) -> RawClient {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    open(
        addr,
        &format!("hostile-{}", NEXT.fetch_add(1, Ordering::Relaxed)),
    )
}

/// Returns true when the server has sent nothing within [`QUIET`].
fn server_is_quiet(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(QUIET)).expect("read timeout");
    let mut byte = [0u8; 1];
    let quiet = match stream.peek(&mut byte) {
        Err(error) => matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        Ok(_) => false,
    };
    stream
        .set_read_timeout(Some(util::IO_TIMEOUT))
        .expect("read timeout");
    quiet
}

// Upgrade limits.

#[test]
fn dripped_head_gets_431_at_limit() {
    let mut stream = connect(small_head_server());
    let mut head = b"GET /ws HTTP/1.1\r\nHost: x\r\nX-Drip: ".to_vec();
    head.resize(MAX_HEAD_BYTES, b'a');

    // One byte short of the limit the server still waits for the end of the head.
    let (before_limit, last) = head.split_at(MAX_HEAD_BYTES - 1);
    for byte in before_limit {
        stream.write_all(&[*byte]).expect("drip");
    }
    assert!(
        server_is_quiet(&mut stream),
        "answered before {MAX_HEAD_BYTES} bytes"
    );

    stream.write_all(last).expect("last byte");
    let (response, _) = read_head(&mut stream);
    assert_eq!(status_of(&response), 431, "{response}");
}

#[test]
fn head_parser_drip_reaches_verdict_at_the_limit() {
    // The same rule, counted exactly: the verdict comes with byte 1024, not later.
    let limits = ParserLimits {
        max_head_bytes: MAX_HEAD_BYTES,
        max_headers: MAX_HEADERS,
    };
    let mut head = b"GET /ws HTTP/1.1\r\nX-Drip: ".to_vec();
    head.resize(4 * MAX_HEAD_BYTES, b'a');
    let mut parser = RequestParser::new(limits);
    let verdict_at = (0..=head.len()).find(|&end| {
        let result = parser.parse(head.get(..end).unwrap_or_default());
        !matches!(result, Ok(Status::Partial))
    });
    assert_eq!(verdict_at, Some(MAX_HEAD_BYTES));
    assert_eq!(
        parser.parse(&head),
        Err(ParseError::HeadTooLarge {
            max_head_bytes: MAX_HEAD_BYTES
        })
    );
}

#[test]
fn ten_thousand_fields_get_431_early() {
    let mut stream = connect(many_fields_server());
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        .expect("request line");

    // Ten fields per write, stopping as soon as the server responds. The empty line that
    // would end the head is never sent.
    let fields_per_write = 10;
    let mut fields_sent = 1;
    while fields_sent < 10_000 {
        let chunk = "A: b\r\n".repeat(fields_per_write);
        stream.write_all(chunk.as_bytes()).expect("fields");
        fields_sent += fields_per_write;
        if !server_is_quiet(&mut stream) {
            break;
        }
    }
    let (response, _) = read_head(&mut stream);
    assert_eq!(status_of(&response), 431, "{response}");
    assert!(
        fields_sent <= MAX_HEADERS + 1 + fields_per_write,
        "answered only after {fields_sent} fields"
    );
}

#[test]
fn head_parser_stops_at_field_65_of_10000() {
    let mut head = b"GET / HTTP/1.1\r\n".to_vec();
    for _ in 0..10_000 {
        head.extend_from_slice(b"A: b\r\n");
    }
    head.extend_from_slice(b"\r\n");
    let limits = ParserLimits {
        max_head_bytes: head.len(),
        max_headers: MAX_HEADERS,
    };
    let mut parser = RequestParser::new(limits);
    // Every prefix up to the start of field 65 is partial; the field after that rejects.
    let field_65_starts = 16 + MAX_HEADERS * 6;
    let prefix = head.get(..field_65_starts).unwrap_or_default();
    assert_eq!(parser.parse(prefix), Ok(Status::Partial));
    let with_field_65 = head.get(..field_65_starts + 1).unwrap_or_default();
    assert_eq!(
        parser.parse(with_field_65),
        Err(ParseError::TooManyHeaders {
            max_headers: MAX_HEADERS
        })
    );
}

// Frame lengths.

#[test]
fn length_near_2_pow_63_closes_early() {
    // RFC 6455 §5.2: the most significant bit of a 64-bit length must be 0 (1002); any other
    // length above max_message_bytes is too big (1009).
    let cases: [(u64, u16); 5] = [
        (1 << 63, 1002),
        ((1 << 63) + 5, 1002),
        (u64::MAX, 1002),
        ((1 << 63) - 1, 1009),
        (1 << 62, 1009),
    ];
    for (len, code) in cases {
        let mut client = client(raw_echo_server());
        let mut header = vec![0x82, 0x80 | 127];
        header.extend_from_slice(&len.to_be_bytes());
        header.extend_from_slice(&[0x01, 0x02, 0x03, 0x04]);
        client.send(&header);
        assert_eq!(client.expect_close(), code, "length {len:#x}");
        client.finish_close(code);
    }
}

// Fragmentation.

#[test]
fn hundred_thousand_fragments_echoed_intact() {
    let message: Vec<u8> = (0..100_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut stream = Vec::with_capacity(message.len() * 7);
    for (index, byte) in message.iter().enumerate() {
        let opcode = if index == 0 { 0x1 } else { 0x0 };
        stream.extend(client_frame(index + 1 == message.len(), opcode, &[*byte]));
    }

    let mut client = client(raw_echo_server());
    client.send(&stream);
    let echo = client.read_frame().expect("echo");
    assert_eq!(echo.opcode, 0x1);
    assert!(echo.payload == message, "echo differs from the message");
}

#[test]
fn reader_holds_bounded_memory_for_100000_fragments() {
    let config = ReaderConfig {
        max_message_bytes: MAX_MESSAGE_BYTES,
        allow_binary: true,
    };
    let mut reader = MessageReader::new(config);
    let mut buf = BytesMut::new();
    let mut max_held = 0;
    let mut events = Vec::new();
    for index in 0..100_000usize {
        let opcode = if index == 0 { 0x2 } else { 0x0 };
        buf.extend_from_slice(&client_frame(index + 1 == 100_000, opcode, &[index as u8]));
        while let Some(event) = reader.next_event(&mut buf).expect("valid fragments") {
            events.push(event);
        }
        max_held = max_held.max(reader.assembling_bytes());
    }

    // The assembly buffer grows by doubling, so it never exceeds twice the message size.
    assert!(max_held <= 2 * 100_000, "held {max_held} bytes");
    assert!(max_held <= MAX_MESSAGE_BYTES);
    assert_eq!(reader.assembling_bytes(), 0);
    let [Event::Message { kind, payload }] = events.as_slice() else {
        panic!("expected one message, got {events:?}");
    };
    assert_eq!(*kind, MessageKind::Binary);
    assert_eq!(payload.len(), 100_000);
}

// JSON.

/// Sends `text` and returns the error frame's `code` and `detail`, then checks the connection
/// still echoes a valid message.
fn rejection(text: &[u8]) -> (String, String) {
    let mut client = client(json_echo_server());
    client.send(&client_frame(true, 0x1, text));
    let error = client.read_frame().expect("error frame").json();
    assert_eq!(error["type"], "error");

    let valid = br#"{"conversation_id":"c1","content":"still open"}"#;
    client.send(&client_frame(true, 0x1, valid));
    let echo = client.read_frame().expect("echo after the error");
    assert_eq!(echo.payload, valid, "connection did not stay open");

    let field = |name: &str| error[name].as_str().unwrap_or_default().to_owned();
    (field("code"), field("detail"))
}

#[test]
fn megabyte_of_brackets_is_invalid_json() {
    let brackets = vec![b'['; 1_000_000];
    let (code, detail) = rejection(&brackets);
    assert_eq!(code, "invalid_json");
    assert!(detail.starts_with("expected a JSON object"), "{detail}");

    // Inside an object the scanner meets the depth limit first (depth 32 by default).
    let mut nested = br#"{"conversation_id":"c1","content":"x","deep":"#.to_vec();
    nested.extend(std::iter::repeat_n(b'[', 1_000_000));
    let (code, detail) = rejection(&nested);
    assert_eq!(code, "invalid_json");
    assert!(detail.starts_with("nesting deeper than 32"), "{detail}");
}

#[test]
fn megabyte_of_brackets_needs_no_recursion() {
    // A recursive parser would overflow the 2 MiB test thread stack long before this depth.
    let mut nested = br#"{"a":"#.to_vec();
    nested.extend(std::iter::repeat_n(b'[', 1_000_000));
    nested.extend(std::iter::repeat_n(b']', 1_000_000));
    nested.push(b'}');
    let unlimited = MessageRules {
        max_json_depth: usize::MAX,
        required: Vec::new(),
        ..MessageRules::default()
    };
    assert!(message::check(&nested, &unlimited).is_ok());
    assert!(matches!(
        message::check(&nested, &MessageRules::default()),
        Err(Invalid::TooDeep { max_depth: 32, .. })
    ));
    assert_eq!(message::client_id(&nested), None);
}

#[test]
fn duplicate_keys_are_invalid_json() {
    // The module rejects duplicate top-level keys, compared after decoding escapes.
    let cases: [&[u8]; 2] = [
        br#"{"conversation_id":"c1","content":"x","content":"y"}"#,
        br#"{"conversation_id":"c1","content":"x","\u0063ontent":"y"}"#,
    ];
    for text in cases {
        let (code, detail) = rejection(text);
        assert_eq!(code, "invalid_json");
        // The detail may name the field ("duplicate key \"content\" at byte 38").
        assert!(detail.starts_with("duplicate key"), "{detail}");
        assert!(detail.ends_with("at byte 38"), "{detail}");

        let verdict = message::check(text, &MessageRules::default());
        assert_eq!(
            verdict,
            Err(Invalid::DuplicateKey {
                offset: 38,
                field: Some(Field::Required(1))
            })
        );
    }

    // Nested objects may repeat keys: only the top level is compared.
    let nested = br#"{"conversation_id":"c1","content":"x","n":{"a":1,"a":2}}"#;
    assert!(message::check(nested, &MessageRules::default()).is_ok());
}

#[test]
fn lone_surrogate_escapes_are_invalid_json() {
    let cases: [&[u8]; 3] = [
        br#"{"conversation_id":"c1","content":"\ud800"}"#,
        br#"{"conversation_id":"c1","content":"\udc00\ud800"}"#,
        br#"{"conversation_id":"c1","content":"x","n":["\ud83dx"]}"#,
    ];
    for text in cases {
        let (code, detail) = rejection(text);
        assert_eq!(code, "invalid_json");
        assert!(
            detail.starts_with("lone surrogate in \\u escape"),
            "{detail}"
        );
    }

    // A high/low pair is one character and passes.
    let pair = br#"{"conversation_id":"c1","content":"\ud83d\ude00"}"#;
    let mut client = client(json_echo_server());
    client.send(&client_frame(true, 0x1, pair));
    assert_eq!(client.read_frame().expect("echo").payload, pair);
}

#[test]
fn byte_order_mark_is_invalid_json() {
    let mut text = "\u{feff}".as_bytes().to_vec();
    text.extend_from_slice(br#"{"conversation_id":"c1","content":"x"}"#);
    let (code, detail) = rejection(&text);
    assert_eq!(code, "invalid_json");
    assert!(
        detail.starts_with("byte order mark is not allowed at byte 0"),
        "{detail}"
    );
}

#[test]
fn two_json_values_are_invalid_json() {
    let cases: [&[u8]; 3] = [
        br#"{"conversation_id":"c1","content":"x"}{"conversation_id":"c1","content":"y"}"#,
        br#"{"conversation_id":"c1","content":"x"} 1"#,
        br#"{"conversation_id":"c1","content":"x"}]"#,
    ];
    for text in cases {
        let (code, detail) = rejection(text);
        assert_eq!(code, "invalid_json");
        assert!(
            detail.starts_with("unexpected data after the object"),
            "{detail}"
        );
    }
}

#[test]
fn huge_numbers_pass_unconverted() {
    // Numbers are checked against the grammar only, so these pass and are echoed unchanged.
    let text = br#"{"conversation_id":"c1","content":"x","n":1e999999,"m":-0.0E-999999,"big":123456789012345678901234567890123456789012345678901234567890}"#;
    let mut client = client(json_echo_server());
    client.send(&client_frame(true, 0x1, text));
    assert_eq!(client.read_frame().expect("echo").payload, text);
}
