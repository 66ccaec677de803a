//! Incremental, zero-copy parser for the head of an HTTP/1.1 request (RFC 9112 §2 to §5).
//!
//! [`RequestParser`] reads the request line and the header field lines of the one request
//! that opens a WebSocket connection. The caller keeps every byte received so far in one
//! buffer and calls [`RequestParser::parse`] after each read. The parser resumes where it
//! stopped, so the total work is linear in the head size however the bytes arrive, and the
//! finished [`Request`] borrows its fields from that buffer without copying.
//!
//! The parser enforces [`ParserLimits`] as soon as a limit is crossed. It never examines
//! more than `max_head_bytes` bytes and never stores more than `max_headers` field
//! positions, so a peer that drips bytes or sends thousands of fields costs bounded CPU and
//! memory.
//!
//! It does not read message bodies, decode percent-encoding, or interpret any field. The
//! upgrade rules of RFC 6455 live in `crate::handshake`. This module does no I/O, reads no
//! clock and logs nothing.
//!
//! The grammar is the strict one of RFC 9112. It has no leniency options:
//! - lines end in CRLF, and a bare LF is rejected although RFC 9112 §2.2 lets a recipient
//!   accept it, so there is only one line grammar to reason about;
//! - the request line has exactly one space between its three parts (RFC 9112 §3);
//! - the leading empty lines that RFC 9112 §2.2 lets a server skip are rejected as an
//!   invalid method, because they are only expected after a previous message, and the
//!   upgrade request is the first message on its connection;
//! - obsolete line folding, whitespace before the colon, control bytes and bare CR are all
//!   rejected (RFC 9112 §2.2, §5.1 and §5.2).

#![forbid(unsafe_code)]

use std::fmt;

mod chars;
mod list;
mod parser;
mod scan;

pub(crate) use chars::{B64TOKEN, BASE64, HOST, TCHAR, all_in, is};
pub use list::{list_contains_ignore_case, list_elements, trim_ows};
pub use parser::RequestParser;
pub(crate) use scan::find_byte;

/// Limits on one request head. Both exist to bound what a peer can make the parser do
/// before the request is accepted or rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParserLimits {
    /// Maximum size of the request head in bytes, from the first byte of the request line
    /// through the CRLF of the empty line that ends the head. Default 8192. The parser
    /// examines at most this many bytes, which caps the CPU spent on a peer that never ends
    /// its head. Crossing it gives [`ParseError::HeadTooLarge`] (HTTP 431).
    pub max_head_bytes: usize,
    /// Maximum number of header field lines. Default 64. Each stored field costs a few words
    /// of memory, so this caps per-connection memory. Crossing it gives
    /// [`ParseError::TooManyHeaders`] (HTTP 431).
    pub max_headers: usize,
}

impl Default for ParserLimits {
    fn default() -> Self {
        Self {
            max_head_bytes: 8192,
            max_headers: 64,
        }
    }
}

/// Outcome of a parse step that did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status<T> {
    /// The value is complete.
    Complete(T),
    /// More bytes are needed. This is not an error: read more and call the parser again.
    Partial,
}

/// A complete request head, borrowed from the caller's buffer.
#[derive(Clone, PartialEq, Eq)]
pub struct Request<'b> {
    /// Method token, such as `GET`. Methods are case-sensitive (RFC 9110 §9.1).
    pub method: &'b str,
    /// Request target exactly as sent: printable ASCII, never empty, not percent-decoded.
    pub target: &'b str,
    /// Major digit of the HTTP version (`1` in `HTTP/1.1`).
    pub major_version: u8,
    /// Minor digit of the HTTP version (`1` in `HTTP/1.1`).
    pub minor_version: u8,
    /// Header field lines in the order received, repeated names included.
    pub headers: Vec<Header<'b>>,
    /// Length of the head in bytes, through the CRLF of the empty line. The bytes after it
    /// belong to the WebSocket frame stream, and the parser has not examined them.
    pub head_len: usize,
}

/// One header field line.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Header<'b> {
    /// Field name as sent. Compare it with `eq_ignore_ascii_case`, because field names are
    /// case-insensitive (RFC 9110 §5.1).
    pub name: &'b str,
    /// Field value without the optional whitespace around it. It may contain obs-text bytes
    /// (0x80 to 0xFF), so it is bytes rather than `str`.
    pub value: &'b [u8],
}

/// Reasons a request head is rejected. [`ParseError::HeadTooLarge`] and
/// [`ParseError::TooManyHeaders`] map to HTTP 431, and every other variant to HTTP 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A CR is followed by a byte other than LF (RFC 9112 §2.2).
    #[error("request head contains a CR that is not followed by LF")]
    BareCarriageReturn,
    /// A line ends in LF without the CR before it (RFC 9112 §2.2).
    #[error("request head contains a line ending in LF without CR; end every line with CRLF")]
    BareLineFeed,
    /// A field line starts with a colon (RFC 9110 §5.1: a field name is a non-empty token).
    #[error("header field line has an empty field name")]
    EmptyHeaderName,
    /// More than `max_head_bytes` bytes arrived without the empty line that ends the head.
    #[error(
        "request head is larger than {max_head_bytes} bytes; send fewer or shorter header fields"
    )]
    HeadTooLarge {
        /// The limit that was crossed.
        max_head_bytes: usize,
    },
    /// A field name contains a byte that is not a token character (RFC 9110 §5.1).
    #[error("header field name contains a byte that is not a token character")]
    InvalidHeaderName,
    /// A field value contains NUL, DEL or a control byte other than horizontal tab
    /// (RFC 9110 §5.5).
    #[error("header field value contains a control character")]
    InvalidHeaderValue,
    /// The method is empty or contains a byte that is not a token character (RFC 9110 §9.1).
    #[error("request method is empty or is not a token")]
    InvalidMethod,
    /// The request target is empty or contains a space, control, `#` or non-ASCII byte
    /// (RFC 9112 §3.2).
    #[error("request target is empty or contains a space, control, `#` or non-ASCII byte")]
    InvalidTarget,
    /// The HTTP version is missing or is not `HTTP/` DIGIT `.` DIGIT (RFC 9112 §2.3).
    #[error("HTTP version in the request line is missing or malformed; send HTTP/1.1")]
    InvalidVersion,
    /// A field line ends before any colon (RFC 9112 §5).
    #[error("header field line has no colon after the field name")]
    MissingColon,
    /// A field line starts with a space or tab: obsolete line folding, or whitespace before
    /// the first field line (RFC 9112 §2.2 and §5.2).
    #[error("header field line starts with whitespace; obsolete line folding is not accepted")]
    ObsoleteLineFolding,
    /// More than `max_headers` header field lines arrived.
    #[error("request has more than {max_headers} header fields; send fewer header fields")]
    TooManyHeaders {
        /// The limit that was crossed.
        max_headers: usize,
    },
    /// Whitespace separates a field name from its colon (RFC 9112 §5.1).
    #[error("header field name is followed by whitespace before the colon")]
    WhitespaceBeforeColon,
}

impl ParseError {
    /// Returns whether the error is a size limit (HTTP 431) rather than a syntax error
    /// (HTTP 400).
    pub fn is_limit(&self) -> bool {
        matches!(
            self,
            Self::HeadTooLarge { .. } | Self::TooManyHeaders { .. }
        )
    }
}

impl<'b> Request<'b> {
    /// Iterates over the values of every field line named `name`, ignoring ASCII case, in
    /// the order received.
    pub fn header_values<'r>(&'r self, name: &'r str) -> impl Iterator<Item = &'b [u8]> + 'r {
        self.headers
            .iter()
            .filter(move |header| header.name.eq_ignore_ascii_case(name))
            .map(|header| header.value)
    }
}

/// Prints the method, the target's path, the version, the field names and the head size.
/// Field values and the query string are left out because they may carry access tokens.
impl fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.target.split('?').next().unwrap_or_default();
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("path", &path)
            .field("major_version", &self.major_version)
            .field("minor_version", &self.minor_version)
            .field("headers", &self.headers)
            .field("head_len", &self.head_len)
            .finish()
    }
}

/// Prints the field name and the value's length only, because values may carry credentials.
impl fmt::Debug for Header<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Header")
            .field("name", &self.name)
            .field("value_len", &self.value.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_error_limit_kinds_are_limits() {
        assert!(ParseError::HeadTooLarge { max_head_bytes: 1 }.is_limit());
        assert!(ParseError::TooManyHeaders { max_headers: 1 }.is_limit());
        assert!(!ParseError::InvalidMethod.is_limit());
        assert!(!ParseError::BareLineFeed.is_limit());
    }

    #[test]
    fn request_debug_omits_values_and_query() {
        let request = Request {
            method: "GET",
            target: "/ws?access_token=secret-query",
            major_version: 1,
            minor_version: 1,
            headers: vec![Header {
                name: "Authorization",
                value: b"Bearer secret-header",
            }],
            head_len: 10,
        };
        let printed = format!("{request:?}");
        assert!(printed.contains("/ws"), "{printed}");
        assert!(printed.contains("Authorization"), "{printed}");
        assert!(!printed.contains("secret"), "{printed}");
    }

    #[test]
    fn header_values_matches_names_ignoring_case() {
        let request = Request {
            method: "GET",
            target: "/",
            major_version: 1,
            minor_version: 1,
            headers: vec![
                Header {
                    name: "Connection",
                    value: b"keep-alive",
                },
                Header {
                    name: "Host",
                    value: b"a",
                },
                Header {
                    name: "connection",
                    value: b"Upgrade",
                },
            ],
            head_len: 0,
        };
        let values: Vec<&[u8]> = request.header_values("CONNECTION").collect();
        assert_eq!(values, [&b"keep-alive"[..], &b"Upgrade"[..]]);
    }
}
