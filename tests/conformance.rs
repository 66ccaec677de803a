//! RFC 6455 conformance of the echo server over raw TCP, table-driven. The tests cover the
//! ground of the Autobahn fuzzingclient cases 1-7, 9 and 10. They send messages from 0 bytes
//! to 16 MiB in one frame and in fragments with pings between them, reserved bits and
//! opcodes, and control frames that break the rules. They check UTF-8 validity, including
//! fail-fast inside fragmented messages, and the closing handshake with every valid and
//! invalid status code. Every close ends with the server's FIN, never a reset.
//!
//! One server (two workers, echo backend, JSON checks off, 16 MiB messages, no rate limits)
//! serves every test in this file. Each connection uses its own user id, so the per-user
//! connection cap never interferes.

mod util;

use std::io::Read;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use util::{RawClient, ServerFrame, client_frame, client_frame_raw, config, open, start};

const MIB: usize = 1 << 20;

/// Largest message the conformance server accepts, in bytes.
const MAX_MESSAGE_BYTES: usize = 16 * MIB;

/// Server settings for these tests. The outbound bound is raised above the message limit so
/// that a 16 MiB echo is not taken for a slow consumer, and the per-IP upgrade rate is off
/// because every case opens its own connection.
const SERVER_CONFIG: &str = "backend = \"echo\"\njson = false\nmax_message_bytes = 16777216\n\
    rate_per_sec = 0\nupgrade_rate_per_ip = 0\nmax_outbound_bytes = 67108864\n";

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

fn server() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| start(config(2, SERVER_CONFIG)))
}

/// Opens an upgraded connection with a fresh user id.
fn client() -> RawClient {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let user = format!("conformance-{}", NEXT.fetch_add(1, Ordering::Relaxed));
    open(server(), &user)
}

/// Payload of `len` bytes: valid UTF-8 mixing 1- to 4-byte characters for text, every byte
/// value for binary.
fn payload(opcode: u8, len: usize) -> Vec<u8> {
    if opcode == BINARY {
        return (0..len).map(|i| (i * 31 % 251) as u8).collect();
    }
    let pattern = "ab\u{e9}\u{20ac}\u{1d11e}".as_bytes();
    let mut text: Vec<u8> = pattern.iter().copied().cycle().take(len).collect();
    // Pad a code point cut off at the end with ASCII so the text stays valid.
    while std::str::from_utf8(&text).is_err() {
        text.pop();
    }
    text.resize(len, b'z');
    text
}

/// Splits `payload` into frames of `frame_len` bytes (the last one shorter): the first with
/// `opcode`, the rest continuations, FIN on the last.
fn fragments(opcode: u8, payload: &[u8], frame_len: usize) -> Vec<Vec<u8>> {
    let chunks: Vec<&[u8]> = if payload.is_empty() {
        vec![&[]]
    } else {
        payload.chunks(frame_len).collect()
    };
    let last = chunks.len() - 1;
    chunks
        .iter()
        .enumerate()
        .map(|(index, chunk)| {
            let first_opcode = if index == 0 { opcode } else { 0x0 };
            client_frame(index == last, first_opcode, chunk)
        })
        .collect()
}

/// Reads the next frame, failing with `context` if TCP ends first.
fn next_frame(client: &mut RawClient, context: &str) -> ServerFrame {
    match client.read_frame() {
        Some(frame) => frame,
        None => panic!("{context}: connection ended before the expected frame"),
    }
}

/// Reads the echo of a message and checks it is one frame with the same opcode and payload.
fn expect_echo(client: &mut RawClient, opcode: u8, payload: &[u8], context: &str) {
    let echo = next_frame(client, context);
    assert!(echo.fin, "{context}: echo is fragmented");
    assert_eq!(echo.opcode, opcode, "{context}: echo opcode");
    assert_eq!(echo.payload.len(), payload.len(), "{context}: echo length");
    assert!(echo.payload == payload, "{context}: echo payload differs");
}

/// Reads frames up to the server's close frame and returns its status code (1005 for an empty
/// payload). Pongs and echoes before it are skipped.
fn read_close(client: &mut RawClient, context: &str) -> u16 {
    loop {
        let frame = next_frame(client, context);
        if frame.opcode == CLOSE {
            assert!(frame.fin, "{context}: close frame is fragmented");
            return frame.close_code().unwrap_or(1005);
        }
    }
}

/// Checks that the server ends TCP with FIN after its close frame: the stream reaches its end
/// without a reset and carries no further bytes.
fn expect_fin(client: &mut RawClient, context: &str) {
    let mut rest = Vec::new();
    let result = client.stream.read_to_end(&mut rest);
    assert!(
        result.is_ok(),
        "{context}: server reset the connection: {result:?}"
    );
    assert!(
        client.pending.is_empty() && rest.is_empty(),
        "{context}: bytes after the close frame"
    );
}

/// Expects the server to fail the connection with `code`, sends a close frame back as a
/// client does, and checks the server's FIN.
fn expect_failure(client: &mut RawClient, code: u16, context: &str) {
    assert_eq!(read_close(client, context), code, "{context}: close code");
    client.send(&client_frame(true, CLOSE, &code.to_be_bytes()));
    expect_fin(client, context);
}

/// Builds a close frame payload: `code` in network byte order, then `reason`.
fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(reason);
    body
}

// Autobahn 1.x and 9.x: text and binary messages of every length form up to 16 MiB.

#[test]
fn single_frame_messages_echoed_to_16_mib() {
    let sizes = [
        0,
        1,
        125,
        126,
        127,
        65_535,
        65_536,
        65_537,
        MIB,
        MAX_MESSAGE_BYTES,
    ];
    let mut client = client();
    for opcode in [TEXT, BINARY] {
        for size in sizes {
            let context = format!("opcode {opcode:#x}, {size} bytes");
            let message = payload(opcode, size);
            client.send(&client_frame(true, opcode, &message));
            expect_echo(&mut client, opcode, &message, &context);
        }
    }
    client.send(&client_frame(true, CLOSE, &1000u16.to_be_bytes()));
    assert_eq!(read_close(&mut client, "final close"), 1000);
    expect_fin(&mut client, "final close");
}

#[test]
fn message_over_16_mib_closes_1009() {
    for frame_len in [MAX_MESSAGE_BYTES + 1, 4 * MIB] {
        let context = format!("{} bytes in frames of {frame_len}", MAX_MESSAGE_BYTES + 1);
        let mut client = client();
        let message = payload(BINARY, MAX_MESSAGE_BYTES + 1);
        if frame_len > MAX_MESSAGE_BYTES {
            // Only the header: the verdict comes before any payload is buffered.
            let mut header = vec![0x82, 0x80 | 127];
            header.extend_from_slice(&((MAX_MESSAGE_BYTES + 1) as u64).to_be_bytes());
            header.extend_from_slice(&[0x37, 0xFA, 0x21, 0x3D]);
            client.send(&header);
        } else {
            for frame in fragments(BINARY, &message, frame_len) {
                // The server may close before the last fragment; later writes can then fail.
                if std::io::Write::write_all(&mut client.stream, &frame).is_err() {
                    break;
                }
            }
        }
        expect_failure(&mut client, 1009, &context);
    }
}

// Autobahn 5.x and 9.x: fragmentation, control frames between fragments, many small frames.

#[test]
fn fragmented_messages_with_pings_between_fragments_are_echoed() {
    // (message length, fragment length, a ping after every this many fragments; 0 for none)
    let cases = [
        (0, 1, 0),
        (1, 1, 1),
        (10, 1, 1),
        (10, 3, 2),
        (125, 125, 0),
        (1000, 100, 3),
        (65_536, 4096, 4),
        (MIB, 65_536, 2),
        (MAX_MESSAGE_BYTES, MIB, 4),
    ];
    let mut client = client();
    for opcode in [TEXT, BINARY] {
        for (len, frame_len, ping_every) in cases {
            let context = format!("opcode {opcode:#x}, {len} bytes in frames of {frame_len}");
            let message = payload(opcode, len);
            let frames = fragments(opcode, &message, frame_len);
            let last = frames.len() - 1;
            let mut pings = Vec::new();
            for (index, frame) in frames.iter().enumerate() {
                client.send(frame);
                if ping_every > 0 && index % ping_every == 0 && index < last {
                    let ping = format!("ping {index}").into_bytes();
                    client.send(&client_frame(true, PING, &ping));
                    pings.push(ping);
                }
            }
            // RFC 6455 §5.5.2 and §5.5.3: pongs carry their ping's payload, in order, and
            // come before the echo that completes after them. While a write is in flight
            // the server sends a pong for only the newest of several pings, which §5.5.3
            // allows, so the pongs are checked as an ordered subset that includes the last
            // ping.
            let mut pongs = Vec::new();
            while pongs.last() != pings.last() {
                let pong = next_frame(&mut client, &context);
                assert_eq!(
                    pong.opcode, PONG,
                    "{context}: expected a pong before the echo"
                );
                pongs.push(pong.payload);
            }
            let mut unanswered = pings.iter();
            for pong in &pongs {
                assert!(
                    unanswered.any(|ping| ping == pong),
                    "{context}: pong {:?} out of order or unknown",
                    String::from_utf8_lossy(pong)
                );
            }
            expect_echo(&mut client, opcode, &message, &context);
        }
    }
}

#[test]
fn empty_fragments_are_assembled() {
    let mut client = client();
    let frames = [
        client_frame(false, TEXT, b""),
        client_frame(false, 0x0, b"ab"),
        client_frame(false, 0x0, b""),
        client_frame(true, 0x0, b""),
    ];
    for frame in &frames {
        client.send(frame);
    }
    expect_echo(&mut client, TEXT, b"ab", "empty fragments");
}

#[test]
fn large_messages_in_many_small_frames_are_echoed() {
    // (message length, frame length): 1 MiB in 1 KiB frames, 64 KiB in 1-byte frames, and
    // the 64 KiB in 1300-byte frames and 4 MiB in 64-byte frames of Autobahn 9.3 and 10.1.
    let cases = [(MIB, 1024), (65_536, 1), (65_536, 1300), (4 * MIB, 64)];
    for (len, frame_len) in cases {
        let context = format!("{len} bytes in frames of {frame_len}");
        let mut client = client();
        let message = payload(BINARY, len);
        let stream: Vec<u8> = fragments(BINARY, &message, frame_len).concat();
        client.send(&stream);
        expect_echo(&mut client, BINARY, &message, &context);
    }
}

#[test]
fn fragmentation_rule_breaks_close_with_1002() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "continuation with nothing open",
            client_frame(true, 0x0, b"x"),
        ),
        (
            "non-final continuation with nothing open",
            client_frame(false, 0x0, b"x"),
        ),
        ("text inside a fragmented text", {
            let mut bytes = client_frame(false, TEXT, b"a");
            bytes.extend(client_frame(true, TEXT, b"b"));
            bytes
        }),
        ("binary inside a fragmented text", {
            let mut bytes = client_frame(false, TEXT, b"a");
            bytes.extend(client_frame(false, BINARY, b"b"));
            bytes
        }),
        ("continuation after a complete message", {
            let mut bytes = client_frame(true, TEXT, b"a");
            bytes.extend(client_frame(true, 0x0, b"b"));
            bytes
        }),
    ];
    for (name, bytes) in cases {
        let mut client = client();
        client.send(&bytes);
        expect_failure(&mut client, 1002, name);
    }
}

// Autobahn 2.x: pings and pongs.

#[test]
fn control_frames_within_limits_are_answered() {
    let mut client = client();
    let cases: [(&str, Vec<u8>); 4] = [
        ("empty ping", Vec::new()),
        ("text ping", b"Hello, world!".to_vec()),
        (
            "binary ping",
            vec![0x00, 0xFF, 0xFE, 0xFD, 0xFC, 0xFB, 0x00, 0xFF],
        ),
        ("125-byte ping", vec![0xFE; 125]),
    ];
    for (name, ping) in cases {
        client.send(&client_frame(true, PING, &ping));
        let pong = next_frame(&mut client, name);
        assert_eq!((pong.opcode, pong.fin), (PONG, true), "{name}");
        assert_eq!(pong.payload, ping, "{name}");
    }

    // RFC 6455 §5.2 requires senders to use the shortest length form but sets no rule for
    // receivers, and the decoder accepts longer forms: a ping with a 16-bit length of 5
    // gets its pong.
    let mut padded = vec![0x89, 0x80 | 126, 0x00, 0x05, 0, 0, 0, 0];
    padded.extend_from_slice(b"hello");
    client.send(&padded);
    let pong = next_frame(&mut client, "ping with 16-bit length");
    assert_eq!(pong.payload, b"hello", "ping with 16-bit length");

    // Ten pings in one write get ten pongs in order.
    let pings: Vec<u8> = (0..10u8)
        .flat_map(|index| client_frame(true, PING, &[index]))
        .collect();
    client.send(&pings);
    for index in 0..10u8 {
        let pong = next_frame(&mut client, "ping burst");
        assert_eq!(pong.payload, [index], "ping burst pong {index}");
    }

    // RFC 6455 §5.5.3: an unsolicited pong gets no response.
    client.send(&client_frame(true, PONG, b"unsolicited"));
    client.send(&client_frame(true, TEXT, b"after pong"));
    expect_echo(&mut client, TEXT, b"after pong", "after unsolicited pong");
}

#[test]
fn control_frame_rule_breaks_close_with_1002() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("126-byte ping", client_frame(true, PING, &[0; 126])),
        ("126-byte pong", client_frame(true, PONG, &[0; 126])),
        ("126-byte close", client_frame(true, CLOSE, &[0x03; 126])),
        ("fragmented ping", client_frame(false, PING, b"x")),
        ("fragmented pong", client_frame(false, PONG, b"x")),
        (
            "fragmented close",
            client_frame(false, CLOSE, &[0x03, 0xE8]),
        ),
        ("unmasked ping", vec![0x89, 0x00]),
    ];
    for (name, bytes) in cases {
        let mut client = client();
        client.send(&bytes);
        expect_failure(&mut client, 1002, name);
    }
}

// Autobahn 3.x and 4.x: reserved bits and opcodes.

#[test]
fn reserved_bits_close_with_1002() {
    for rsv in [0x40, 0x20, 0x10, 0x70] {
        for (opcode, payload) in [(TEXT, &b"abc"[..]), (BINARY, b"\x01"), (PING, b"")] {
            let context = format!("RSV {rsv:#04x} on opcode {opcode:#x}");
            let mut client = client();
            // A valid message first: its echo arrives before the close.
            client.send(&client_frame(true, TEXT, b"before"));
            client.send(&client_frame_raw(0x80 | rsv | opcode, payload));
            expect_echo(&mut client, TEXT, b"before", &context);
            expect_failure(&mut client, 1002, &context);
        }
    }
}

#[test]
fn reserved_opcodes_close_with_1002() {
    let opcodes = [0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF];
    for opcode in opcodes {
        for payload in [&b""[..], b"reserved"] {
            let context = format!("opcode {opcode:#x}, {} payload bytes", payload.len());
            let mut client = client();
            client.send(&client_frame(true, TEXT, b"before"));
            client.send(&client_frame_raw(0x80 | opcode, payload));
            expect_echo(&mut client, TEXT, b"before", &context);
            expect_failure(&mut client, 1002, &context);
        }
    }
}

// Autobahn 6.x: UTF-8 handling.

/// Valid UTF-8 texts, from the Autobahn 6.x and Markus Kuhn's test samples.
fn valid_texts() -> Vec<Vec<u8>> {
    [
        "Hello-\u{b5}@\u{df}\u{f6}\u{e4}\u{fc}\u{e0}\u{e1}-UTF-8!!",
        "\u{3ba}\u{1f79}\u{3c3}\u{3bc}\u{3b5}",
        "\u{0}\u{80}\u{800}\u{10000}",
        "\u{7f}\u{7ff}\u{ffff}\u{10ffff}",
        "\u{d7ff}\u{e000}\u{fffd}\u{fffe}",
        "\u{feff}byte-order mark as a character",
    ]
    .iter()
    .map(|text| text.as_bytes().to_vec())
    .collect()
}

/// Invalid UTF-8 sequences, named, from the Autobahn 6.x cases.
fn invalid_texts() -> Vec<(&'static str, Vec<u8>)> {
    let mut kappa_then_surrogate = "\u{3ba}\u{1f79}\u{3c3}\u{3bc}\u{3b5}".as_bytes().to_vec();
    kappa_then_surrogate.extend_from_slice(b"\xed\xa0\x80edited");
    vec![
        ("lone continuation byte", b"ab\x80cd".to_vec()),
        ("0xFE", b"ab\xfe".to_vec()),
        ("0xFF", b"\xff".to_vec()),
        ("overlong slash, 2 bytes", b"x\xc0\xaf".to_vec()),
        ("overlong slash, 3 bytes", b"x\xe0\x80\xaf".to_vec()),
        ("overlong slash, 4 bytes", b"x\xf0\x80\x80\xaf".to_vec()),
        ("UTF-16 surrogate D800", b"\xed\xa0\x80".to_vec()),
        ("UTF-16 surrogate DFFF", b"a\xed\xbf\xbf".to_vec()),
        ("above U+10FFFF", b"\xf4\x90\x80\x80".to_vec()),
        ("5-byte form", b"\xf8\x88\x80\x80\x80".to_vec()),
        ("3-byte lead without its last byte", b"\xe2\x82x".to_vec()),
        ("kappa then surrogate", kappa_then_surrogate),
    ]
}

/// Index of the first byte after which no continuation can make `text` valid UTF-8.
fn first_invalid_byte(text: &[u8]) -> usize {
    (0..text.len())
        .find(|&end| {
            let prefix = text.get(..=end).unwrap_or(text);
            std::str::from_utf8(prefix).is_err_and(|error| error.error_len().is_some())
        })
        .unwrap_or_else(|| panic!("{text:02x?} has no invalid byte"))
}

#[test]
fn valid_utf8_echoed_whole_and_split() {
    let mut client = client();
    for text in valid_texts() {
        let context = String::from_utf8_lossy(&text).into_owned();
        client.send(&client_frame(true, TEXT, &text));
        expect_echo(&mut client, TEXT, &text, &context);

        // One fragment per byte, so every code point is split across frames.
        client.send(&fragments(TEXT, &text, 1).concat());
        expect_echo(&mut client, TEXT, &text, &context);
    }
}

#[test]
fn invalid_utf8_closes_with_1007() {
    for (name, text) in invalid_texts() {
        let mut client = client();
        client.send(&client_frame(true, TEXT, &text));
        expect_failure(&mut client, 1007, name);
    }
}

#[test]
fn invalid_utf8_fragment_closes_before_final() {
    for (name, text) in invalid_texts() {
        // The fragments up to and including the invalid byte, then nothing: the final
        // fragment is never sent, so the close must come from the bytes already received.
        let sent = text.get(..=first_invalid_byte(&text)).unwrap_or(&text);
        for frame_len in [1, 2, 3] {
            let context = format!("{name}, frames of {frame_len}");
            let mut client = client();
            for (index, chunk) in sent.chunks(frame_len).enumerate() {
                let opcode = if index == 0 { TEXT } else { 0x0 };
                client.send(&client_frame(false, opcode, chunk));
            }
            expect_failure(&mut client, 1007, &context);
        }
    }
}

#[test]
fn invalid_utf8_partial_frame_closes_1007() {
    // A 100-byte text frame of which only the first 4 payload bytes are sent, the third one
    // invalid: the server checks payload bytes as they arrive.
    let mut client = client();
    let mut text = b"ab\xffd".to_vec();
    text.resize(100, b'x');
    let frame = client_frame(true, TEXT, &text);
    client.send(frame.get(..2 + 4 + 4).unwrap_or(&frame));
    expect_failure(&mut client, 1007, "partial frame");
}

// Autobahn 7.x: the closing handshake.

#[test]
fn close_with_valid_code_is_echoed_then_fin() {
    let codes = [
        1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000,
        4999,
    ];
    let reasons: [&[u8]; 3] = [b"", b"bye", "\u{20ac}\u{1d11e} closing".as_bytes()];
    for code in codes {
        for reason in reasons {
            let context = format!("code {code}, reason of {} bytes", reason.len());
            let mut client = client();
            client.send(&client_frame(true, CLOSE, &close_payload(code, reason)));
            assert_eq!(read_close(&mut client, &context), code, "{context}");
            expect_fin(&mut client, &context);
        }
    }
}

#[test]
fn close_with_123_byte_reason_is_echoed() {
    let mut client = client();
    let reason = vec![b'r'; 123];
    client.send(&client_frame(true, CLOSE, &close_payload(1000, &reason)));
    assert_eq!(read_close(&mut client, "123-byte reason"), 1000);
    expect_fin(&mut client, "123-byte reason");
}

#[test]
fn close_with_invalid_code_closes_with_1002() {
    let codes = [
        0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65_535,
    ];
    for code in codes {
        for reason in [&b""[..], b"reason"] {
            let context = format!("code {code}, reason of {} bytes", reason.len());
            let mut client = client();
            client.send(&client_frame(true, CLOSE, &close_payload(code, reason)));
            assert_eq!(read_close(&mut client, &context), 1002, "{context}");
            expect_fin(&mut client, &context);
        }
    }
}

#[test]
fn close_payload_rule_breaks_are_rejected() {
    let cases: [(&str, Vec<u8>, u16); 3] = [
        ("one-byte payload", vec![0x03], 1002),
        (
            "invalid UTF-8 reason",
            close_payload(1000, b"\xce\xba\xe1\xbd"),
            1007,
        ),
        (
            "surrogate in reason",
            close_payload(1000, b"a\xed\xa0\x80"),
            1007,
        ),
    ];
    for (name, body, code) in cases {
        let mut client = client();
        client.send(&client_frame(true, CLOSE, &body));
        assert_eq!(read_close(&mut client, name), code, "{name}");
        expect_fin(&mut client, name);
    }
}

#[test]
fn empty_close_gets_empty_close() {
    let mut client = client();
    client.send(&client_frame(true, CLOSE, b""));
    let close = next_frame(&mut client, "empty close");
    assert_eq!(close.opcode, CLOSE);
    assert!(
        close.payload.is_empty(),
        "reply to an empty close carries a code"
    );
    expect_fin(&mut client, "empty close");
}

#[test]
fn frames_after_close_are_ignored() {
    let mut client = client();
    let mut bytes = client_frame(true, TEXT, b"before");
    bytes.extend(client_frame(true, CLOSE, &close_payload(1000, b"")));
    bytes.extend(client_frame(true, TEXT, b"after"));
    bytes.extend(client_frame(true, PING, b"after"));
    client.send(&bytes);
    expect_echo(&mut client, TEXT, b"before", "before close");
    let close = next_frame(&mut client, "close reply");
    assert_eq!(close.close_code(), Some(1000));
    expect_fin(&mut client, "after close");
}

#[test]
fn close_inside_fragmented_message_is_echoed() {
    let mut client = client();
    client.send(&client_frame(false, TEXT, b"never"));
    client.send(&client_frame(true, CLOSE, &close_payload(1000, b"")));
    assert_eq!(read_close(&mut client, "close mid-message"), 1000);
    expect_fin(&mut client, "close mid-message");
}
