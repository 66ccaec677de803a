//! Fuzz target for `frame::reader::MessageReader`, `frame::decode_header`, `frame::encode_header`
//! and the masking functions.
//!
//! Invariants, for any bytes in any read pattern:
//! - the reader returns the same events and the same error as with one read, and ends in the
//!   same state (`bytes_wanted`, bytes left in the buffer);
//! - `assembling_bytes` never exceeds `max_message_bytes`;
//! - the events and the error equal those of a reference model written here from RFC 6455
//!   §5.2-§5.5 and §7.4, independent of the reader. The model shares only the order in which
//!   the checks of one header run, which the RFC leaves open;
//! - every header `decode_header` accepts equals the reference decoding, and re-encodes to the
//!   input bytes. The encoder always writes the shortest length form, so a header that uses a
//!   longer form is compared on every field and on the length value instead of byte for byte;
//! - the word-at-a-time unmasking equals the byte-at-a-time one at every offset, and masking
//!   twice gives back the input.

#![no_main]

use bytes::{Bytes, BytesMut};
use framegate::frame::encode::encode_header;
use framegate::frame::{
    CloseCode, DecodeError, Event, FrameHeader, HeaderLimits, MessageKind, MessageReader, OpCode,
    ReaderConfig, Role, apply_mask, apply_mask_plain, decode_header,
};
use framegate_fuzz::{Input, read_ends};
use libfuzzer_sys::fuzz_target;

/// Message size limits the control byte picks from: the edges of each length form, and sizes
/// small enough that fragment totals cross them.
const MAX_MESSAGE_BYTES: [usize; 16] = [
    0,
    1,
    2,
    3,
    7,
    16,
    125,
    126,
    127,
    1000,
    4096,
    65_535,
    65_536,
    65_537,
    1 << 20,
    1 << 24,
];

/// Outcome of a reader run over the whole input.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    events: Vec<Event>,
    error: Option<DecodeError>,
    /// `bytes_wanted` and the bytes left in the buffer when the input ran out without an error.
    pending: Option<(usize, usize)>,
}

fuzz_target!(|input: &[u8]| {
    let input = Input::split(input);
    let [choice, mode, _, _] = input.control;
    let config = ReaderConfig {
        max_message_bytes: MAX_MESSAGE_BYTES
            .get(usize::from(choice & 0x0F))
            .copied()
            .unwrap_or(1000),
        allow_binary: choice & 0x10 == 0,
    };
    let data = input.data;

    let one_read = read_events(config, data, &[data.len()]);
    let ends = read_ends(data.len(), mode, input.seed());
    let chunked = read_events(config, data, &ends);
    assert_eq!(chunked, one_read, "outcome depends on the read pattern");

    let expected = reference::read(config, data, input.seed());
    assert_eq!(
        one_read.events, expected.events,
        "events differ from the model"
    );
    assert_eq!(
        one_read.error, expected.error,
        "error differs from the model"
    );
});

/// Runs a reader over `data` delivered in reads ending at `ends`, draining events after each.
fn read_events(config: ReaderConfig, data: &[u8], ends: &[usize]) -> Outcome {
    let mut reader = MessageReader::new(config);
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    let mut start = 0;
    for &end in ends {
        buf.extend_from_slice(data.get(start..end).unwrap_or_default());
        start = end;
        loop {
            let next = reader.next_event(&mut buf);
            assert!(
                reader.assembling_bytes() <= config.max_message_bytes,
                "assembly holds {} bytes, over the limit of {}",
                reader.assembling_bytes(),
                config.max_message_bytes
            );
            match next {
                Ok(Some(event)) => {
                    check_event(&event, config);
                    events.push(event);
                }
                Ok(None) => {
                    assert!(reader.bytes_wanted() > 0, "no event and no bytes wanted");
                    break;
                }
                Err(error) => {
                    assert!(
                        CloseCode::from(&error).is_allowed_on_wire(),
                        "{error:?} maps to a close code that must not be sent"
                    );
                    return Outcome {
                        events,
                        error: Some(error),
                        pending: None,
                    };
                }
            }
        }
    }
    Outcome {
        events,
        error: None,
        pending: Some((reader.bytes_wanted(), buf.len())),
    }
}

/// Checks the guarantees the reader documents for each event.
fn check_event(event: &Event, config: ReaderConfig) {
    match event {
        Event::Close { code, reason } => {
            if let Some(code) = code {
                assert!(code.is_allowed_on_wire(), "close code {} accepted", code.0);
            }
            assert!(
                std::str::from_utf8(reason).is_ok(),
                "close reason not UTF-8"
            );
            assert!(reason.len() <= 123, "close reason over 123 bytes");
        }
        Event::Message { kind, payload } => {
            assert!(
                payload.len() <= config.max_message_bytes,
                "message over the limit"
            );
            if *kind == MessageKind::Text {
                assert!(std::str::from_utf8(payload).is_ok(), "text not UTF-8");
            }
            if *kind == MessageKind::Binary {
                assert!(config.allow_binary, "binary message with binary disallowed");
            }
        }
        Event::Ping(payload) | Event::Pong(payload) => {
            assert!(payload.len() <= 125, "control payload over 125 bytes");
        }
    }
}

/// A plain model of the reader: decodes each header by hand, cross-checks `decode_header`,
/// the encoder and the masking functions on it, then applies the message rules.
mod reference {
    use super::*;

    /// Outcome of the model; `pending` is not modelled.
    pub(super) struct Expected {
        pub events: Vec<Event>,
        pub error: Option<DecodeError>,
    }

    /// Message being assembled from fragments.
    struct Open {
        kind: MessageKind,
        data: Vec<u8>,
    }

    pub(super) fn read(config: ReaderConfig, data: &[u8], seed: u64) -> Expected {
        let limits = HeaderLimits {
            role: Role::Server,
            max_payload_bytes: config.max_message_bytes,
            allow_binary: config.allow_binary,
        };
        let mut events = Vec::new();
        let mut open: Option<Open> = None;
        let mut pos = 0;
        let fail = |events, error| Expected {
            events,
            error: Some(error),
        };

        loop {
            let rest = data.get(pos..).unwrap_or_default();
            let header = match decode(rest, &limits) {
                Err(error) => return fail(events, error),
                Ok(None) => break,
                Ok(Some(header)) => header,
            };
            check_codec(rest, &header, &limits, seed);

            // Rules that depend on earlier frames (RFC 6455 §5.4).
            let mut starts_message = false;
            match (header.opcode, open.as_mut()) {
                (OpCode::Continuation, None) => {
                    return fail(events, DecodeError::ContinuationUnexpected);
                }
                (OpCode::Continuation, Some(message)) => {
                    let total = len_u64(message.data.len()) + header.payload_len;
                    if total > len_u64(config.max_message_bytes) {
                        let max = config.max_message_bytes;
                        return fail(events, DecodeError::MessageTooBig { size: total, max });
                    }
                }
                (OpCode::Text | OpCode::Binary, Some(_)) => {
                    return fail(events, DecodeError::MessageInterleaved);
                }
                (OpCode::Text | OpCode::Binary, None) => starts_message = true,
                _ => {}
            }

            // Unmask what has arrived of the payload.
            let payload_start = pos + header.header_len;
            let payload_len = usize::try_from(header.payload_len).unwrap_or(usize::MAX);
            let arrived = data.len().saturating_sub(payload_start).min(payload_len);
            let mut payload = data
                .get(payload_start..payload_start + arrived)
                .unwrap_or_default()
                .to_vec();
            let key = header.mask.unwrap_or_default();
            for (index, byte) in payload.iter_mut().enumerate() {
                *byte ^= key.get(index % 4).copied().unwrap_or_default();
            }

            // The message this frame belongs to, with the bytes seen so far.
            let kind = match header.opcode {
                OpCode::Text => Some(MessageKind::Text),
                OpCode::Binary => Some(MessageKind::Binary),
                OpCode::Continuation => open.as_ref().map(|message| message.kind),
                _ => None,
            };
            if starts_message {
                open = Some(Open {
                    kind: kind.unwrap_or(MessageKind::Binary),
                    data: Vec::new(),
                });
            }
            if let (Some(MessageKind::Text), Some(message)) = (kind, open.as_mut()) {
                // §8.1: fail as soon as the text so far cannot be the start of valid UTF-8.
                let mut so_far = message.data.clone();
                so_far.extend_from_slice(&payload);
                if let Err(error) = std::str::from_utf8(&so_far)
                    && error.error_len().is_some()
                {
                    let valid_up_to = error.valid_up_to();
                    return fail(events, DecodeError::TextInvalidUtf8 { valid_up_to });
                }
            }
            if arrived < payload_len {
                break;
            }
            pos = payload_start + payload_len;

            // The frame is complete.
            let event = match header.opcode {
                OpCode::Close | OpCode::Ping | OpCode::Pong => {
                    match control_event(header.opcode, payload) {
                        Ok(event) => event,
                        Err(error) => return fail(events, error),
                    }
                }
                _ => {
                    let Some(message) = open.as_mut() else {
                        unreachable!("a data frame always has an open message here");
                    };
                    message.data.extend_from_slice(&payload);
                    if !header.fin {
                        continue;
                    }
                    let Some(message) = open.take() else {
                        unreachable!("checked just above");
                    };
                    if message.kind == MessageKind::Text
                        && let Err(error) = std::str::from_utf8(&message.data)
                    {
                        let valid_up_to = error.valid_up_to();
                        return fail(events, DecodeError::TextInvalidUtf8 { valid_up_to });
                    }
                    Event::Message {
                        kind: message.kind,
                        payload: Bytes::from(message.data),
                    }
                }
            };
            events.push(event);
        }
        Expected {
            events,
            error: None,
        }
    }

    /// Decodes a client frame header by hand, applying the checks in the order
    /// `decode_header` documents: RSV bits, opcode, mask bit, control fragmentation, binary
    /// allowed, length, control length, message size, masking key.
    fn decode(buf: &[u8], limits: &HeaderLimits) -> Result<Option<FrameHeader>, DecodeError> {
        let Some(&[first, second]) = buf.first_chunk::<2>() else {
            return Ok(None);
        };
        let fin = first & 0b1000_0000 != 0;
        let rsv = (first & 0b0111_0000) >> 4;
        let bits = first & 0b0000_1111;
        let masked = second & 0b1000_0000 != 0;
        let len7 = second & 0b0111_1111;

        if rsv != 0 {
            return Err(DecodeError::ReservedBitsSet { rsv });
        }
        let opcode = match bits {
            0 => OpCode::Continuation,
            1 => OpCode::Text,
            2 => OpCode::Binary,
            8 => OpCode::Close,
            9 => OpCode::Ping,
            10 => OpCode::Pong,
            _ => return Err(DecodeError::OpcodeReserved { opcode: bits }),
        };
        let control = bits >= 8;
        if !masked {
            return Err(DecodeError::UnmaskedFrame);
        }
        if control && !fin {
            return Err(DecodeError::ControlFragmented { opcode });
        }
        if opcode == OpCode::Binary && !limits.allow_binary {
            return Err(DecodeError::BinaryNotAllowed);
        }

        let (payload_len, length_end) = match len7 {
            126 => match buf.get(2..4) {
                Some(&[high, low]) => (u64::from(high) << 8 | u64::from(low), 4),
                _ => return Ok(None),
            },
            127 => {
                let Some(bytes) = buf.get(2..10) else {
                    return Ok(None);
                };
                let len = bytes.iter().fold(0u64, |acc, &b| acc << 8 | u64::from(b));
                if len >= 1 << 63 {
                    return Err(DecodeError::LengthHighBitSet { len });
                }
                (len, 10)
            }
            short => (u64::from(short), 2),
        };
        if control && payload_len > 125 {
            return Err(DecodeError::ControlTooLong {
                opcode,
                len: payload_len,
            });
        }
        if !control && payload_len > len_u64(limits.max_payload_bytes) {
            return Err(DecodeError::MessageTooBig {
                size: payload_len,
                max: limits.max_payload_bytes,
            });
        }
        let Some(key) = buf.get(length_end..length_end + 4) else {
            return Ok(None);
        };
        let mut mask = [0; 4];
        mask.copy_from_slice(key);
        Ok(Some(FrameHeader {
            fin,
            rsv,
            opcode,
            mask: Some(mask),
            payload_len,
            header_len: length_end + 4,
        }))
    }

    /// Cross-checks `decode_header`, `encode_header` and the masking functions on one frame.
    fn check_codec(frame: &[u8], header: &FrameHeader, limits: &HeaderLimits, seed: u64) {
        assert_eq!(
            decode_header(frame, limits),
            Ok(Some(*header)),
            "decode_header differs from the model"
        );

        // The encoder writes server headers: unmasked and with the shortest length form.
        let payload_len = usize::try_from(header.payload_len).unwrap_or(usize::MAX);
        let mut encoded = Vec::new();
        encode_header(&mut encoded, header.fin, header.opcode, payload_len);
        if let Some(second) = encoded.get_mut(1) {
            *second |= 0x80;
        }
        encoded.extend_from_slice(&header.mask.unwrap_or_default());
        let original = frame.get(..header.header_len).unwrap_or_default();
        let len7 = original.get(1).map_or(0, |&byte| byte & 0x7F);
        let minimal = match len7 {
            126 => header.payload_len > 125,
            127 => header.payload_len > 0xFFFF,
            _ => true,
        };
        if minimal {
            assert_eq!(encoded, original, "header does not re-encode to its input");
        } else {
            let reread = decode_header(&encoded, limits);
            let expected_len = encoded.len();
            assert_eq!(
                reread,
                Ok(Some(FrameHeader {
                    header_len: expected_len,
                    ..*header
                })),
                "re-encoded header decodes to other fields"
            );
            assert_eq!(encoded.first(), original.first(), "first byte differs");
        }

        // Masking: the fast path equals the plain one at any split, and is its own inverse.
        let key = header.mask.unwrap_or_default();
        let available = frame.get(header.header_len..).unwrap_or_default();
        let payload = available.get(..payload_len).unwrap_or(available);
        let split = usize::try_from(seed).unwrap_or(0) % (payload.len() + 1);
        let mut fast = payload.to_vec();
        let (head, tail) = fast.split_at_mut(split);
        apply_mask(head, key, 0);
        apply_mask(tail, key, split);
        let mut plain = payload.to_vec();
        apply_mask_plain(&mut plain, key, 0);
        assert_eq!(fast, plain, "fast unmasking differs from the plain one");
        apply_mask(&mut fast, key, 0);
        assert_eq!(fast, payload, "masking twice does not give back the input");
    }

    /// Builds the event for a complete control frame (RFC 6455 §5.5 and §7.4).
    fn control_event(opcode: OpCode, payload: Vec<u8>) -> Result<Event, DecodeError> {
        match opcode {
            OpCode::Ping => return Ok(Event::Ping(Bytes::from(payload))),
            OpCode::Pong => return Ok(Event::Pong(Bytes::from(payload))),
            _ => {}
        }
        let (code, reason) = match payload.as_slice() {
            [] => {
                return Ok(Event::Close {
                    code: None,
                    reason: Bytes::new(),
                });
            }
            [_] => return Err(DecodeError::ClosePayloadOneByte),
            [high, low, reason @ ..] => (u16::from(*high) << 8 | u16::from(*low), reason),
        };

        // §7.4.1 and §7.4.2, plus 1012-1014 from the IANA registry.
        let sendable = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
        if !sendable {
            return Err(DecodeError::CloseCodeInvalid { code });
        }
        if let Err(error) = std::str::from_utf8(reason) {
            let valid_up_to = error.valid_up_to();
            return Err(DecodeError::CloseReasonInvalidUtf8 { valid_up_to });
        }
        Ok(Event::Close {
            code: Some(CloseCode(code)),
            reason: Bytes::copy_from_slice(reason),
        })
    }

    fn len_u64(len: usize) -> u64 {
        u64::try_from(len).unwrap_or(u64::MAX)
    }
}
