//! Frame encoding for frames that this server sends (RFC 6455 §5.2, §5.5.1).
//!
//! Server frames are never masked (§5.1), so a header is 2, 4 or 10 bytes. The payload is
//! written by the caller after the header. Only the close frame, whose payload has a fixed
//! layout, is encoded whole here.
#![forbid(unsafe_code)]

use bytes::BufMut;

use super::{CloseCode, MAX_CONTROL_PAYLOAD, OpCode};

/// Largest close reason in bytes: the 125-byte control payload less the 2-byte status code.
pub const MAX_CLOSE_REASON: usize = MAX_CONTROL_PAYLOAD - 2;

/// Returns the length of the unmasked header that [`encode_header`] writes for `payload_len`.
pub fn header_len(payload_len: usize) -> usize {
    match payload_len {
        0..=125 => 2,
        126..=0xFFFF => 4,
        _ => 10,
    }
}

/// Writes an unmasked frame header with RSV bits clear and the shortest length encoding.
///
/// The caller writes the `payload_len` payload bytes next. A control frame must have `fin` set
/// and at most 125 payload bytes (RFC 6455 §5.5), which debug builds assert.
pub fn encode_header(out: &mut impl BufMut, fin: bool, opcode: OpCode, payload_len: usize) {
    debug_assert!(
        !opcode.is_control() || (fin && payload_len <= MAX_CONTROL_PAYLOAD),
        "control frame must have FIN set and at most 125 payload bytes"
    );

    let fin_bit = if fin { 0x80 } else { 0x00 };
    out.put_u8(fin_bit | opcode as u8);

    // §5.2: 7-bit lengths up to 125, then 126 + u16, then 127 + u64 (network byte order).
    if let Ok(short) = u8::try_from(payload_len)
        && usize::from(short) <= MAX_CONTROL_PAYLOAD
    {
        out.put_u8(short);
    } else if let Ok(medium) = u16::try_from(payload_len) {
        out.put_u8(126);
        out.put_u16(medium);
    } else {
        out.put_u8(127);
        // usize is at most 64 bits on every target Rust supports, so this never saturates.
        out.put_u64(u64::try_from(payload_len).unwrap_or(u64::MAX));
    }
}

/// Writes a whole close frame with `code` and `reason` (RFC 6455 §5.5.1).
///
/// A reason longer than 123 bytes is cut at the last UTF-8 character boundary at or before
/// byte 123, so the payload fits the 125-byte control frame limit and stays valid UTF-8.
/// `code` must be one that may be sent ([`CloseCode::is_allowed_on_wire`]), which debug builds
/// assert: 1005, 1006 and 1015 in particular are for local use only.
pub fn encode_close(out: &mut impl BufMut, code: CloseCode, reason: &str) {
    debug_assert!(
        code.is_allowed_on_wire(),
        "close code {} must not be sent",
        code.0
    );

    let reason = truncate_to_char_boundary(reason, MAX_CLOSE_REASON);
    encode_header(out, true, OpCode::Close, 2 + reason.len());
    out.put_u16(code.0);
    out.put_slice(reason.as_bytes());
}

/// Returns the longest prefix of `text` that is at most `max_len` bytes and ends on a
/// character boundary.
fn truncate_to_char_boundary(text: &str, max_len: usize) -> &str {
    if text.len() <= max_len {
        return text;
    }
    let end = (0..=max_len)
        .rev()
        .find(|&index| text.is_char_boundary(index))
        .unwrap_or(0);
    text.get(..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{FrameHeader, HeaderLimits, Role, decode_header};

    const CLIENT: HeaderLimits = HeaderLimits {
        role: Role::Client,
        max_payload_bytes: usize::MAX,
        allow_binary: true,
    };

    fn encoded_header(fin: bool, opcode: OpCode, payload_len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        encode_header(&mut out, fin, opcode, payload_len);
        out
    }

    #[test]
    fn encode_header_uses_shortest_length_form() {
        let cases: [(usize, &[u8]); 6] = [
            (0, &[0x82, 0x00]),
            (125, &[0x82, 0x7D]),
            (126, &[0x82, 0x7E, 0x00, 0x7E]),
            (65_535, &[0x82, 0x7E, 0xFF, 0xFF]),
            (65_536, &[0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0]),
            (1 << 40, &[0x82, 0x7F, 0, 0, 1, 0, 0, 0, 0, 0]),
        ];
        for (payload_len, expected) in cases {
            let out = encoded_header(true, OpCode::Binary, payload_len);
            assert_eq!(out, expected, "payload_len {payload_len}");
            assert_eq!(
                header_len(payload_len),
                expected.len(),
                "payload_len {payload_len}"
            );
        }
    }

    #[test]
    fn encode_header_sets_fin_and_opcode() {
        assert_eq!(encoded_header(false, OpCode::Text, 1), [0x01, 0x01]);
        assert_eq!(encoded_header(true, OpCode::Continuation, 1), [0x80, 0x01]);
        assert_eq!(encoded_header(true, OpCode::Pong, 0), [0x8A, 0x00]);
    }

    #[test]
    fn encode_close_writes_code_and_reason() {
        let mut out = Vec::new();
        encode_close(&mut out, CloseCode::GOING_AWAY, "bye");
        assert_eq!(out, [0x88, 0x05, 0x03, 0xE9, b'b', b'y', b'e']);
    }

    #[test]
    fn encode_close_truncates_long_reason_on_char_boundary() {
        // 61 two-byte characters are 122 bytes, and one more would cross byte 123.
        let reason = "é".repeat(70);
        let mut out = Vec::new();
        encode_close(&mut out, CloseCode::POLICY_VIOLATION, &reason);
        assert_eq!(out[1], 2 + 122);
        assert!(std::str::from_utf8(&out[4..]).is_ok());

        let ascii = "x".repeat(200);
        let mut out = Vec::new();
        encode_close(&mut out, CloseCode::NORMAL, &ascii);
        assert_eq!(out.len(), 2 + 125);
    }

    #[test]
    fn truncate_keeps_short_text_whole() {
        assert_eq!(truncate_to_char_boundary("abc", 123), "abc");
        assert_eq!(truncate_to_char_boundary("a€", 3), "a");
        assert_eq!(truncate_to_char_boundary("€", 0), "");
    }

    fn any_opcode() -> impl proptest::strategy::Strategy<Value = OpCode> {
        proptest::sample::select(vec![
            OpCode::Continuation,
            OpCode::Text,
            OpCode::Binary,
            OpCode::Close,
            OpCode::Ping,
            OpCode::Pong,
        ])
    }

    proptest::proptest! {
        #[test]
        fn encode_then_decode_returns_same_header(
            opcode in any_opcode(),
            fin in proptest::prelude::any::<bool>(),
            payload_len in proptest::prop_oneof![
                0usize..=300,
                65_000usize..=70_000,
                0usize..=(1usize << 40),
            ],
        ) {
            let (fin, payload_len) = if opcode.is_control() {
                (true, payload_len % 126)
            } else {
                (fin, payload_len)
            };
            let out = encoded_header(fin, opcode, payload_len);
            let header = decode_header(&out, &CLIENT).unwrap().unwrap();
            proptest::prop_assert_eq!(header, FrameHeader {
                fin,
                rsv: 0,
                opcode,
                mask: None,
                payload_len: payload_len as u64,
                header_len: out.len(),
            });
        }
    }
}
