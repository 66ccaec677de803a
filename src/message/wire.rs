//! Error frame payloads sent to clients, and JSON string escaping for text we generate.
#![forbid(unsafe_code)]

use std::fmt::{self, Write as _};
use std::io::Write as _;

use super::{Invalid, MessageRules};

/// Error codes sent in the `code` field of error frames.
pub mod code {
    /// A binary frame arrived where only text messages are accepted.
    pub const BINARY_NOT_ALLOWED: &str = "binary_not_allowed";
    /// The message is not exactly one valid JSON object, nests too deep or repeats a key.
    pub const INVALID_JSON: &str = "invalid_json";
    /// The message is larger than the configured maximum.
    pub const MESSAGE_TOO_BIG: &str = "message_too_big";
    /// A required top-level field is absent.
    pub const MISSING_FIELD: &str = "missing_field";
    /// The server or backend has no capacity for the message right now.
    pub const OVERLOADED: &str = "overloaded";
    /// The client sent faster than its rate limit; the frame carries `retry_after_ms`.
    pub const RATE_LIMITED: &str = "rate_limited";
    /// The relay recipient named in `to` is not connected.
    pub const RECIPIENT_OFFLINE: &str = "recipient_offline";
    /// A field has the wrong JSON type.
    pub const WRONG_TYPE: &str = "wrong_type";
}

/// Appends an error frame payload to `out`, for example
/// `{"type":"error","code":"invalid_json","detail":"expected ':' at byte 17","id":"c42"}`.
///
/// `code` and `detail` are JSON-escaped. `id` must be raw JSON text of a string or number, as
/// returned by [`super::check`] or [`super::client_id`]; it is inserted unchanged and omitted
/// when `None`. `retry_after_ms` adds `"retry_after_ms":N` (for [`code::RATE_LIMITED`]).
pub fn write_error(
    out: &mut Vec<u8>,
    code: &str,
    detail: &str,
    id: Option<&str>,
    retry_after_ms: Option<u64>,
) {
    write_error_with(out, code, id, retry_after_ms, |escaped| {
        escaped.write_str(detail)
    });
}

/// Appends the error frame payload for a failed [`super::check`], with the detail from
/// [`Invalid::detail`] so required fields appear by their configured names.
pub fn write_invalid(out: &mut Vec<u8>, invalid: &Invalid, rules: &MessageRules, id: Option<&str>) {
    let detail = invalid.detail(rules);
    write_error_with(out, invalid.code(), id, None, |escaped| {
        write!(escaped, "{detail}")
    });
}

fn write_error_with<F>(
    out: &mut Vec<u8>,
    code: &str,
    id: Option<&str>,
    retry_after_ms: Option<u64>,
    write_detail: F,
) where
    F: FnOnce(&mut JsonStringBody<'_>) -> fmt::Result,
{
    out.extend_from_slice(b"{\"type\":\"error\",\"code\":");
    push_json_string(out, code);

    out.extend_from_slice(b",\"detail\":\"");
    // Writing into a Vec cannot fail, and the detail formatters only fail when the writer does.
    let _ = write_detail(&mut JsonStringBody(out));
    out.push(b'"');

    if let Some(id) = id {
        out.extend_from_slice(b",\"id\":");
        out.extend_from_slice(id.as_bytes());
    }
    if let Some(retry_after_ms) = retry_after_ms {
        // `u64` renders as plain decimal digits, a valid JSON number. Writing to a Vec cannot fail.
        let _ = write!(out, ",\"retry_after_ms\":{retry_after_ms}");
    }
    out.push(b'}');
}

/// Appends `value` to `out` as a quoted JSON string (RFC 8259 §7).
pub(super) fn push_json_string(out: &mut Vec<u8>, value: &str) {
    out.push(b'"');
    push_escaped(out, value);
    out.push(b'"');
}

/// Appends the body of a JSON string (no quotes): `"`, `\` and control characters escaped,
/// everything else copied as UTF-8.
fn push_escaped(out: &mut Vec<u8>, value: &str) {
    let bytes = value.as_bytes();
    let mut copied = 0;
    for (at, &byte) in bytes.iter().enumerate() {
        let escape: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0C => b"\\f",
            0x00..=0x1F => b"",
            _ => continue,
        };
        out.extend_from_slice(bytes.get(copied..at).unwrap_or_default());
        if escape.is_empty() {
            push_unicode_escape(out, byte);
        } else {
            out.extend_from_slice(escape);
        }
        copied = at + 1;
    }
    out.extend_from_slice(bytes.get(copied..).unwrap_or_default());
}

fn push_unicode_escape(out: &mut Vec<u8>, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(b"\\u00");
    for nibble in [byte >> 4, byte & 0xF] {
        out.push(HEX.get(usize::from(nibble)).copied().unwrap_or(b'0'));
    }
}

/// `fmt::Write` sink that JSON-escapes everything written into a string body.
struct JsonStringBody<'v>(&'v mut Vec<u8>);

impl fmt::Write for JsonStringBody<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        push_escaped(self.0, text);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{FieldKind, check};

    fn error_frame(code: &str, detail: &str, id: Option<&str>, retry: Option<u64>) -> String {
        let mut out = Vec::new();
        write_error(&mut out, code, detail, id, retry);
        String::from_utf8(out).expect("error frame is UTF-8")
    }

    #[test]
    fn write_error_with_id_matches_documented_shape() {
        let frame = error_frame(
            code::INVALID_JSON,
            "expected ',' or '}' at byte 17",
            Some("\"c42\""),
            None,
        );
        assert_eq!(
            frame,
            r#"{"type":"error","code":"invalid_json","detail":"expected ',' or '}' at byte 17","id":"c42"}"#
        );
    }

    #[test]
    fn write_error_rate_limited_adds_retry_after() {
        let frame = error_frame(
            code::RATE_LIMITED,
            "too many messages",
            Some("7"),
            Some(250),
        );
        assert_eq!(
            frame,
            r#"{"type":"error","code":"rate_limited","detail":"too many messages","id":7,"retry_after_ms":250}"#
        );
    }

    #[test]
    fn write_error_without_id_omits_field() {
        let frame = error_frame(code::OVERLOADED, "try again later", None, None);
        assert_eq!(
            frame,
            r#"{"type":"error","code":"overloaded","detail":"try again later"}"#
        );
    }

    #[test]
    fn write_error_appends_to_existing_bytes() {
        let mut out = b"prefix".to_vec();
        write_error(&mut out, code::OVERLOADED, "x", None, None);
        assert!(out.starts_with(b"prefix{\"type\""));
    }

    #[test]
    fn write_error_escapes_detail_to_valid_json() {
        let detail = "quote \" backslash \\ newline \n nul \u{0} unit \u{1f} é 😀";
        let frame = error_frame(code::INVALID_JSON, detail, None, None);
        let parsed: serde_json::Value = serde_json::from_str(&frame).expect("frame is JSON");
        assert_eq!(parsed["detail"], detail);
        assert!(frame.contains(r#"\u0000"#));
        assert!(frame.contains(r#"\u001f"#));
    }

    #[test]
    fn push_json_string_round_trips_every_ascii_byte() {
        let all: String = (0u8..0x80).map(char::from).collect();
        let mut out = Vec::new();
        push_json_string(&mut out, &all);
        let decoded: String = serde_json::from_slice(&out).expect("escaped string is JSON");
        assert_eq!(decoded, all);
    }

    #[test]
    fn write_invalid_names_configured_field() {
        let rules = MessageRules::default();
        let text = br#"{"conversation_id":"c1","content":5,"id":"m9"}"#;
        let invalid = check(text, &rules).expect_err("content is a number");
        let mut out = Vec::new();
        write_invalid(&mut out, &invalid, &rules, Some("\"m9\""));
        assert_eq!(
            String::from_utf8(out).expect("UTF-8"),
            r#"{"type":"error","code":"wrong_type","detail":"wrong type for field \"content\": expected string, found number","id":"m9"}"#
        );
    }

    #[test]
    fn write_invalid_escapes_configured_name() {
        let rules = MessageRules {
            required: vec![crate::message::RequiredField::new("a\"b", FieldKind::Any)],
            ..MessageRules::default()
        };
        let invalid = check(b"{}", &rules).expect_err("field is missing");
        let mut out = Vec::new();
        write_invalid(&mut out, &invalid, &rules, None);
        let parsed: serde_json::Value = serde_json::from_slice(&out).expect("frame is JSON");
        assert_eq!(parsed["detail"], "missing required field \"a\"b\"");
        assert_eq!(parsed["code"], "missing_field");
    }
}
