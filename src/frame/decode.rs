//! Frame header decoding (RFC 6455 §5.2) with every check that needs only the header.
//!
//! [`decode_header`] reads the 2 fixed bytes, the extended length and the masking key, and
//! rejects a frame as soon as the bytes seen so far break a rule, often before the whole header
//! has arrived. Rules that depend on earlier frames (fragment order, accumulated message size,
//! UTF-8) belong to the message reader in `reader.rs`. Payload bytes are never read here.
#![forbid(unsafe_code)]

use super::{DecodeError, FrameHeader, MAX_CONTROL_PAYLOAD, OpCode};

/// The side of the connection that reads the frames, which fixes the masking rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Reads frames sent by a server, which must be unmasked (RFC 6455 §5.1).
    Client,
    /// Reads frames sent by a client, which must be masked (RFC 6455 §5.1).
    Server,
}

/// Header checks that depend on configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderLimits {
    pub role: Role,
    /// Maximum payload length of a text, binary or continuation frame, in bytes. Control
    /// frames are capped at 125 bytes by the RFC instead.
    pub max_payload_bytes: usize,
    /// Whether binary frames are accepted. When false, a binary frame fails with
    /// [`DecodeError::BinaryNotAllowed`] (close code 1003).
    pub allow_binary: bool,
}

/// Decodes the frame header at the start of `buf`.
///
/// Returns `Ok(None)` when `buf` is too short to finish the header or to reach a decision, and
/// `Err` as soon as the bytes present break a rule. Non-minimal length encodings are accepted,
/// because RFC 6455 §5.2 gives no rule for rejecting them.
pub fn decode_header(
    buf: &[u8],
    limits: &HeaderLimits,
) -> Result<Option<FrameHeader>, DecodeError> {
    let Some(&[first, second]) = buf.first_chunk::<2>() else {
        return Ok(None);
    };

    // §5.2: RSV1-3 MUST be 0 unless an extension defines them, and none is ever negotiated.
    let rsv = (first >> 4) & 0x7;
    if rsv != 0 {
        return Err(DecodeError::ReservedBitsSet { rsv });
    }

    // §5.2: an endpoint receiving a reserved opcode MUST fail the connection.
    let opcode_bits = first & 0x0F;
    let opcode = OpCode::from_u8(opcode_bits).ok_or(DecodeError::OpcodeReserved {
        opcode: opcode_bits,
    })?;
    let fin = first & 0x80 != 0;

    // §5.1: a server MUST close on an unmasked frame and a client on a masked one.
    let masked = second & 0x80 != 0;
    match (limits.role, masked) {
        (Role::Server, false) => return Err(DecodeError::UnmaskedFrame),
        (Role::Client, true) => return Err(DecodeError::MaskedFrame),
        (Role::Server, true) | (Role::Client, false) => {}
    }

    // §5.5: control frames MUST NOT be fragmented.
    if opcode.is_control() && !fin {
        return Err(DecodeError::ControlFragmented { opcode });
    }

    if opcode == OpCode::Binary && !limits.allow_binary {
        return Err(DecodeError::BinaryNotAllowed);
    }

    let Some((payload_len, length_end)) = read_payload_len(buf, second & 0x7F)? else {
        return Ok(None);
    };

    // §5.5: control frames MUST have a payload of 125 bytes or less.
    if opcode.is_control() && payload_len > MAX_CONTROL_PAYLOAD as u64 {
        return Err(DecodeError::ControlTooLong {
            opcode,
            len: payload_len,
        });
    }

    // Decided before any payload is buffered, so a peer cannot make us hold more than the cap.
    let max = u64::try_from(limits.max_payload_bytes).unwrap_or(u64::MAX);
    if !opcode.is_control() && payload_len > max {
        return Err(DecodeError::MessageTooBig {
            size: payload_len,
            max: limits.max_payload_bytes,
        });
    }

    let (mask, header_len) = if masked {
        let Some(key) = buf
            .get(length_end..)
            .and_then(|rest| rest.first_chunk::<4>())
        else {
            return Ok(None);
        };
        (Some(*key), length_end + 4)
    } else {
        (None, length_end)
    };

    Ok(Some(FrameHeader {
        fin,
        rsv,
        opcode,
        mask,
        payload_len,
        header_len,
    }))
}

/// Returns how many more bytes the header at the start of `buf` needs, or 0 if it is complete.
///
/// It reads only the length fields and does not validate the rest of `buf`.
pub fn header_bytes_missing(buf: &[u8]) -> usize {
    let Some(&second) = buf.get(1) else {
        return 2 - buf.len();
    };

    let extended_len: usize = match second & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask_len = if second & 0x80 != 0 { 4 } else { 0 };
    (2 + extended_len + mask_len).saturating_sub(buf.len())
}

/// Reads the payload length (§5.2) whose 7-bit field is `len7`, and returns it with the offset
/// where the length fields end, or `None` if the extended length has not fully arrived.
fn read_payload_len(buf: &[u8], len7: u8) -> Result<Option<(u64, usize)>, DecodeError> {
    let rest = buf.get(2..).unwrap_or_default();
    match len7 {
        126 => Ok(rest
            .first_chunk::<2>()
            .map(|bytes| (u64::from(u16::from_be_bytes(*bytes)), 4))),
        127 => {
            let Some(bytes) = rest.first_chunk::<8>() else {
                return Ok(None);
            };

            // §5.2: the most significant bit of a 64-bit length MUST be 0.
            let len = u64::from_be_bytes(*bytes);
            if len >> 63 != 0 {
                return Err(DecodeError::LengthHighBitSet { len });
            }
            Ok(Some((len, 10)))
        }
        short => Ok(Some((u64::from(short), 2))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: HeaderLimits = HeaderLimits {
        role: Role::Server,
        max_payload_bytes: 1 << 20,
        allow_binary: true,
    };

    const KEY: [u8; 4] = [0x37, 0xFA, 0x21, 0x3D];

    /// Builds a masked client header with the given first byte and length field bytes.
    fn masked_header(first: u8, len7: u8, extended: &[u8]) -> Vec<u8> {
        let mut out = vec![first, 0x80 | len7];
        out.extend_from_slice(extended);
        out.extend_from_slice(&KEY);
        out
    }

    #[test]
    fn decode_short_masked_text_returns_header() {
        let buf = masked_header(0x81, 5, &[]);
        let header = decode_header(&buf, &SERVER).unwrap().unwrap();
        assert_eq!(
            header,
            FrameHeader {
                fin: true,
                rsv: 0,
                opcode: OpCode::Text,
                mask: Some(KEY),
                payload_len: 5,
                header_len: 6,
            }
        );
    }

    #[test]
    fn decode_length_encodings_give_payload_len() {
        let cases: [(u8, &[u8], u64, usize); 6] = [
            (0, &[], 0, 6),
            (125, &[], 125, 6),
            (126, &[0x00, 0x7E], 126, 8),
            (126, &[0xFF, 0xFF], 65_535, 8),
            (127, &[0, 0, 0, 0, 0, 1, 0x00, 0x00], 65_536, 14),
            (127, &[0, 0, 0, 0, 0, 0, 0, 5], 5, 14),
        ];
        for (len7, extended, payload_len, header_len) in cases {
            let buf = masked_header(0x82, len7, extended);
            let header = decode_header(&buf, &SERVER).unwrap().unwrap();
            assert_eq!(header.payload_len, payload_len, "len7 {len7}");
            assert_eq!(header.header_len, header_len, "len7 {len7}");
        }
    }

    #[test]
    fn decode_every_header_prefix_needs_more_bytes() {
        for buf in [
            masked_header(0x81, 5, &[]),
            masked_header(0x01, 126, &[0x01, 0x00]),
            masked_header(0x80, 127, &[0, 0, 0, 0, 0, 1, 0, 0]),
            masked_header(0x89, 126, &[0x00, 0x05]),
        ] {
            for end in 0..buf.len() {
                assert_eq!(
                    decode_header(&buf[..end], &SERVER),
                    Ok(None),
                    "prefix {end}"
                );
                // Below 2 bytes the length fields are unknown, so only the fixed part counts.
                let missing = if end < 2 { 2 - end } else { buf.len() - end };
                assert_eq!(header_bytes_missing(&buf[..end]), missing, "prefix {end}");
            }
            assert!(decode_header(&buf, &SERVER).unwrap().is_some());
            assert_eq!(header_bytes_missing(&buf), 0);
        }
    }

    #[test]
    fn decode_rule_breaks_fail_with_expected_error() {
        let limits = HeaderLimits {
            max_payload_bytes: 1000,
            allow_binary: false,
            ..SERVER
        };
        let cases: [(&str, Vec<u8>, DecodeError); 12] = [
            (
                "rsv1",
                masked_header(0xC1, 0, &[]),
                DecodeError::ReservedBitsSet { rsv: 0b100 },
            ),
            (
                "rsv3",
                masked_header(0x91, 0, &[]),
                DecodeError::ReservedBitsSet { rsv: 0b001 },
            ),
            (
                "opcode 3",
                masked_header(0x83, 0, &[]),
                DecodeError::OpcodeReserved { opcode: 0x3 },
            ),
            (
                "opcode 7",
                masked_header(0x87, 0, &[]),
                DecodeError::OpcodeReserved { opcode: 0x7 },
            ),
            (
                "opcode B",
                masked_header(0x8B, 0, &[]),
                DecodeError::OpcodeReserved { opcode: 0xB },
            ),
            (
                "opcode F",
                masked_header(0x8F, 0, &[]),
                DecodeError::OpcodeReserved { opcode: 0xF },
            ),
            ("unmasked", vec![0x81, 0x00], DecodeError::UnmaskedFrame),
            (
                "fragmented ping",
                masked_header(0x09, 0, &[]),
                DecodeError::ControlFragmented {
                    opcode: OpCode::Ping,
                },
            ),
            (
                "long close",
                masked_header(0x88, 126, &[0x00, 0x7E]),
                DecodeError::ControlTooLong {
                    opcode: OpCode::Close,
                    len: 126,
                },
            ),
            (
                "length high bit",
                masked_header(0x81, 127, &[0x80, 0, 0, 0, 0, 0, 0, 0]),
                DecodeError::LengthHighBitSet { len: 1 << 63 },
            ),
            (
                "too big",
                masked_header(0x81, 126, &[0x03, 0xE9]),
                DecodeError::MessageTooBig {
                    size: 1001,
                    max: 1000,
                },
            ),
            (
                "binary",
                masked_header(0x82, 1, &[]),
                DecodeError::BinaryNotAllowed,
            ),
        ];
        for (name, buf, expected) in cases {
            assert_eq!(decode_header(&buf, &limits), Err(expected), "case {name}");
        }
    }

    #[test]
    fn decode_rejects_from_first_two_bytes() {
        // Fail fast: these rules are decided before the rest of the header arrives.
        for first_two in [[0xC1, 0x80], [0x83, 0x80], [0x81, 0x00], [0x09, 0x80]] {
            assert!(
                decode_header(&first_two, &SERVER).is_err(),
                "{first_two:02X?}"
            );
        }
    }

    #[test]
    fn decode_rejects_too_big_before_mask_key() {
        let limits = HeaderLimits {
            max_payload_bytes: 10,
            ..SERVER
        };
        let buf = [0x82, 0x80 | 126, 0x00, 0x0B];
        assert_eq!(
            decode_header(&buf, &limits),
            Err(DecodeError::MessageTooBig { size: 11, max: 10 })
        );
    }

    #[test]
    fn decode_control_payload_125_accepted() {
        let ping = masked_header(0x89, 125, &[]);
        assert_eq!(
            decode_header(&ping, &SERVER).unwrap().unwrap().payload_len,
            125
        );
    }

    #[test]
    fn decode_non_minimal_length_accepted() {
        let padded = masked_header(0x8A, 127, &[0, 0, 0, 0, 0, 0, 0, 3]);
        assert_eq!(
            decode_header(&padded, &SERVER)
                .unwrap()
                .unwrap()
                .payload_len,
            3
        );
    }

    #[test]
    fn decode_control_frames_ignore_message_size_limit() {
        let limits = HeaderLimits {
            max_payload_bytes: 4,
            ..SERVER
        };
        let ping = masked_header(0x89, 100, &[]);
        assert_eq!(
            decode_header(&ping, &limits).unwrap().unwrap().payload_len,
            100
        );
    }

    #[test]
    fn decode_client_role_rejects_masked_and_accepts_unmasked() {
        let limits = HeaderLimits {
            role: Role::Client,
            ..SERVER
        };
        assert_eq!(
            decode_header(&masked_header(0x81, 0, &[]), &limits),
            Err(DecodeError::MaskedFrame)
        );
        let header = decode_header(&[0x81, 0x03], &limits).unwrap().unwrap();
        assert_eq!(header.mask, None);
        assert_eq!(header.header_len, 2);
    }

    proptest::proptest! {
        #[test]
        fn decode_arbitrary_bytes_never_panics(
            buf in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20),
        ) {
            if let Ok(Some(header)) = decode_header(&buf, &SERVER) {
                proptest::prop_assert!(header.header_len <= buf.len());
                proptest::prop_assert!(header.header_len <= crate::frame::MAX_HEADER_LEN);
            }
        }
    }
}
