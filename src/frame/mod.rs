//! RFC 6455 wire format: frame headers, masking, close codes and the message reader.
//!
//! This module owns the frame layout (RFC 6455 §5.2), the opcode and close code tables (§5.2,
//! §7.4), the masking transform (§5.3) and the one mapping from a decode error to the close code
//! sent to the peer. It is pure: it reads and writes caller-owned buffers and does no I/O, no
//! clock reads and no logging. Message-level checks beyond UTF-8 (JSON, rate limits) live
//! elsewhere. `mask.rs` is the only file under `frame/` that contains `unsafe`; every other
//! submodule forbids it.

pub mod decode;
pub mod encode;
pub mod mask;
pub mod reader;

pub use decode::{HeaderLimits, Role, decode_header};
pub use encode::{encode_close, encode_header};
pub use mask::{apply_mask, apply_mask_plain};
pub use reader::{Event, InPlace, MessageKind, MessageReader, ReaderConfig};

/// Largest payload of a close, ping or pong frame (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Largest frame header: 2 fixed bytes, an 8-byte extended length and a 4-byte masking key.
pub const MAX_HEADER_LEN: usize = 14;

/// Frame opcode (RFC 6455 §5.2). Values 0x3-0x7 and 0xB-0xF are reserved and have no variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OpCode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl OpCode {
    /// Parses the 4-bit opcode field, or returns `None` for a reserved value.
    pub fn from_u8(bits: u8) -> Option<Self> {
        match bits {
            0x0 => Some(Self::Continuation),
            0x1 => Some(Self::Text),
            0x2 => Some(Self::Binary),
            0x8 => Some(Self::Close),
            0x9 => Some(Self::Ping),
            0xA => Some(Self::Pong),
            _ => None,
        }
    }

    /// Returns true for the control opcodes (close, ping, pong), which have the high opcode bit
    /// set (RFC 6455 §5.5).
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// Status code of a close frame (RFC 6455 §7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    pub const NORMAL: Self = Self(1000);
    pub const GOING_AWAY: Self = Self(1001);
    pub const PROTOCOL_ERROR: Self = Self(1002);
    pub const UNSUPPORTED_DATA: Self = Self(1003);
    /// Reserved for reporting locally that a close frame carried no status code (§7.4.1).
    /// It must never be sent on the wire.
    pub const NO_STATUS: Self = Self(1005);
    pub const INVALID_PAYLOAD: Self = Self(1007);
    pub const POLICY_VIOLATION: Self = Self(1008);
    pub const MESSAGE_TOO_BIG: Self = Self(1009);
    pub const INTERNAL: Self = Self(1011);

    /// Returns true if an endpoint may put this code in a close frame.
    ///
    /// Allowed: 1000-1003 and 1007-1011 (RFC 6455 §7.4.1), 1012-1014 (registered later in the
    /// IANA WebSocket Close Code Number Registry) and 3000-4999 (§7.4.2, for libraries and
    /// applications). Rejected: codes below 1000, 1004 (reserved), 1005, 1006 and 1015 (for
    /// local use only, never sent), the rest of 1016-2999 and 5000 and up.
    pub fn is_allowed_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

/// Decoded frame header (RFC 6455 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// FIN bit: this frame ends its message.
    pub fin: bool,
    /// RSV1-RSV3 in the low 3 bits. Always 0 in a decoded header because no extension is ever
    /// negotiated.
    pub rsv: u8,
    pub opcode: OpCode,
    /// Masking key, present on every client-to-server frame (RFC 6455 §5.3).
    pub mask: Option<[u8; 4]>,
    /// Payload length in bytes, from the 7-bit field or the 16/64-bit extended length.
    pub payload_len: u64,
    /// Header length in bytes (2 to 14), so the payload starts at this offset.
    pub header_len: usize,
}

/// A frame or message that breaks RFC 6455 or a configured limit.
///
/// Each variant maps to one close code through `CloseCode::from(&DecodeError)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("binary message received but binary messages are not allowed")]
    BinaryNotAllowed,
    #[error("close frame carries status code {code}, which must not be sent on the wire")]
    CloseCodeInvalid { code: u16 },
    #[error("close frame payload is 1 byte, too short for a status code")]
    ClosePayloadOneByte,
    #[error("close frame reason is invalid UTF-8 after {valid_up_to} valid bytes")]
    CloseReasonInvalidUtf8 { valid_up_to: usize },
    #[error("continuation frame received with no fragmented message open")]
    ContinuationUnexpected,
    #[error("control frame {opcode:?} has FIN clear, but control frames must not be fragmented")]
    ControlFragmented { opcode: OpCode },
    #[error("control frame {opcode:?} payload is {len} bytes, over the maximum of 125")]
    ControlTooLong { opcode: OpCode, len: u64 },
    #[error("64-bit payload length {len:#x} has the most significant bit set")]
    LengthHighBitSet { len: u64 },
    #[error("masked frame received from a server")]
    MaskedFrame,
    #[error("new data frame received while a fragmented message is still open")]
    MessageInterleaved,
    #[error("message size {size} bytes exceeds the maximum of {max} bytes")]
    MessageTooBig { size: u64, max: usize },
    #[error("reserved opcode {opcode:#x} received")]
    OpcodeReserved { opcode: u8 },
    #[error("reserved bits {rsv:#05b} set but no extension was negotiated")]
    ReservedBitsSet { rsv: u8 },
    #[error("text message is invalid UTF-8 after {valid_up_to} valid bytes")]
    TextInvalidUtf8 { valid_up_to: usize },
    #[error("unmasked frame received from a client")]
    UnmaskedFrame,
}

impl From<&DecodeError> for CloseCode {
    fn from(err: &DecodeError) -> Self {
        match err {
            DecodeError::BinaryNotAllowed => Self::UNSUPPORTED_DATA,
            DecodeError::CloseReasonInvalidUtf8 { .. } | DecodeError::TextInvalidUtf8 { .. } => {
                Self::INVALID_PAYLOAD
            }
            DecodeError::MessageTooBig { .. } => Self::MESSAGE_TOO_BIG,
            DecodeError::CloseCodeInvalid { .. }
            | DecodeError::ClosePayloadOneByte
            | DecodeError::ContinuationUnexpected
            | DecodeError::ControlFragmented { .. }
            | DecodeError::ControlTooLong { .. }
            | DecodeError::LengthHighBitSet { .. }
            | DecodeError::MaskedFrame
            | DecodeError::MessageInterleaved
            | DecodeError::OpcodeReserved { .. }
            | DecodeError::ReservedBitsSet { .. }
            | DecodeError::UnmaskedFrame => Self::PROTOCOL_ERROR,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcode_from_u8_round_trips_defined_values() {
        for opcode in [
            OpCode::Continuation,
            OpCode::Text,
            OpCode::Binary,
            OpCode::Close,
            OpCode::Ping,
            OpCode::Pong,
        ] {
            assert_eq!(OpCode::from_u8(opcode as u8), Some(opcode));
        }
    }

    #[test]
    fn opcode_from_u8_rejects_reserved_values() {
        for bits in (0x3..=0x7).chain(0xB..=0xF) {
            assert_eq!(OpCode::from_u8(bits), None, "opcode {bits:#x}");
        }
    }

    #[test]
    fn opcode_is_control_only_for_close_ping_pong() {
        assert!(OpCode::Close.is_control());
        assert!(OpCode::Ping.is_control());
        assert!(OpCode::Pong.is_control());
        assert!(!OpCode::Continuation.is_control());
        assert!(!OpCode::Text.is_control());
        assert!(!OpCode::Binary.is_control());
    }

    #[test]
    fn close_code_allowed_on_wire_matches_rfc_ranges() {
        let allowed = [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999,
        ];
        let rejected = [
            0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65_535,
        ];
        for code in allowed {
            assert!(CloseCode(code).is_allowed_on_wire(), "code {code}");
        }
        for code in rejected {
            assert!(!CloseCode(code).is_allowed_on_wire(), "code {code}");
        }
        assert!(!CloseCode::NO_STATUS.is_allowed_on_wire());
    }

    #[test]
    fn decode_error_maps_to_expected_close_code() {
        let cases = [
            (DecodeError::BinaryNotAllowed, 1003),
            (DecodeError::CloseCodeInvalid { code: 1005 }, 1002),
            (DecodeError::ClosePayloadOneByte, 1002),
            (DecodeError::CloseReasonInvalidUtf8 { valid_up_to: 0 }, 1007),
            (DecodeError::ContinuationUnexpected, 1002),
            (
                DecodeError::ControlFragmented {
                    opcode: OpCode::Ping,
                },
                1002,
            ),
            (
                DecodeError::ControlTooLong {
                    opcode: OpCode::Ping,
                    len: 126,
                },
                1002,
            ),
            (DecodeError::LengthHighBitSet { len: u64::MAX }, 1002),
            (DecodeError::MaskedFrame, 1002),
            (DecodeError::MessageInterleaved, 1002),
            (DecodeError::MessageTooBig { size: 2, max: 1 }, 1009),
            (DecodeError::OpcodeReserved { opcode: 0x3 }, 1002),
            (DecodeError::ReservedBitsSet { rsv: 0b100 }, 1002),
            (DecodeError::TextInvalidUtf8 { valid_up_to: 3 }, 1007),
            (DecodeError::UnmaskedFrame, 1002),
        ];
        for (err, code) in cases {
            assert_eq!(CloseCode::from(&err), CloseCode(code), "{err:?}");
        }
    }

    #[test]
    fn decode_error_display_is_lowercase_without_period() {
        let text = DecodeError::MessageTooBig { size: 10, max: 5 }.to_string();
        assert_eq!(text, "message size 10 bytes exceeds the maximum of 5 bytes");
    }
}
