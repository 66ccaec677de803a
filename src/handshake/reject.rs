//! Reasons to reject a WebSocket upgrade and their HTTP status codes.
//!
//! Every verdict that ends a connection before the 101 response is a [`RejectReason`]:
//! parse errors, the RFC 6455 §4.2.1 checks, and the authentication and admission
//! verdicts that other modules reach. [`RejectReason::status`] is the single mapping to the
//! wire, and `response::write_reject` adds the header fields that each status needs.

#![forbid(unsafe_code)]

use std::fmt::{self, Write as _};

use crate::auth::AuthError;
use crate::handshake::HandshakeConfig;
use crate::http::ParseError;

/// Reason for rejecting an upgrade request. The `Display` text is sent to the client as the
/// response body, so it names the failed check. It never quotes tokens, and quotes a request
/// value (the path or the origin) only as an [`Excerpt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    /// More than one `Host` field line (RFC 9112 §3.2). HTTP 400.
    #[error("request has more than one Host header field")]
    DuplicateHost,
    /// More than one `Origin` field line while `allowed_origins` is set. HTTP 403.
    #[error("request has more than one Origin header field; send one")]
    DuplicateOrigin,
    /// More than one `Sec-WebSocket-Key` field line (RFC 6455 §11.3.1). HTTP 400.
    #[error("request has more than one Sec-WebSocket-Key header field")]
    DuplicateKey,
    /// The request head did not arrive within the handshake deadline. HTTP 408.
    #[error("request head was not received in time")]
    HandshakeTimeout,
    /// `Content-Length` is not a decimal number, or its field lines disagree
    /// (RFC 9112 §6.3). HTTP 400.
    #[error("Content-Length is not a single decimal number")]
    InvalidContentLength,
    /// `Host`, or the authority of an absolute-form target, is empty or has a byte that a
    /// host and port cannot contain (RFC 9112 §3.2). HTTP 400.
    #[error("Host header field is empty or is not a valid host and port")]
    InvalidHost,
    /// `Sec-WebSocket-Key` is not the base64 encoding of 16 bytes (RFC 6455 §4.2.1). HTTP 400.
    #[error("Sec-WebSocket-Key is not the base64 encoding of 16 bytes")]
    InvalidKey,
    /// `Sec-WebSocket-Protocol` has an element that is not a token (RFC 6455 §4.1). HTTP 400.
    #[error("Sec-WebSocket-Protocol contains an element that is not a token")]
    InvalidSubprotocol,
    /// The access token is malformed, or the verifier rejected it. HTTP 401 with
    /// `WWW-Authenticate: Bearer error="invalid_token"` (RFC 6750 §3.1).
    #[error(transparent)]
    InvalidToken(#[from] AuthError),
    /// Too many recent connection attempts from the client's address. HTTP 429 with
    /// `Retry-After`.
    #[error("too many connection attempts from this address; retry after {retry_after_secs} s")]
    IpRateLimited {
        /// Seconds the client should wait before it retries.
        retry_after_secs: u32,
    },
    /// The method is not `GET` (RFC 6455 §4.2.1 item 1). HTTP 405 with `Allow: GET`.
    #[error("method is not allowed; a WebSocket upgrade uses GET")]
    MethodNotAllowed,
    /// `Connection` has no `upgrade` option (RFC 6455 §4.2.1 item 4). HTTP 400.
    #[error("Connection header field does not contain the upgrade option")]
    MissingConnectionUpgrade,
    /// No `Host` field line (RFC 9112 §3.2). HTTP 400.
    #[error("request has no Host header field")]
    MissingHost,
    /// No `Origin` field line while `allowed_origins` is set. Browsers always send one on a
    /// WebSocket upgrade (RFC 6455 §4.1), so the client is not a browser page. HTTP 403.
    #[error(
        "request has no Origin header; allowed_origins is set, so only browser pages on a listed origin may connect"
    )]
    MissingOrigin,
    /// No `Sec-WebSocket-Key` field line (RFC 6455 §4.2.1 item 5). HTTP 400.
    #[error("request has no Sec-WebSocket-Key header field")]
    MissingKey,
    /// No access token in any enabled source. HTTP 401 with `WWW-Authenticate: Bearer`
    /// (RFC 6750 §3). [`RejectReason::explain`] lists the enabled sources.
    #[error("no access token")]
    MissingToken,
    /// `Upgrade` has no `websocket` protocol (RFC 6455 §4.2.1 item 3). HTTP 400.
    #[error("Upgrade header field does not contain websocket")]
    MissingUpgradeWebsocket,
    /// The request head could not be parsed. HTTP 431 for the size limits, 400 otherwise.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// `Origin` is not in `allowed_origins` (RFC 6455 §10.2). HTTP 403.
    #[error("origin {origin} is not in allowed_origins, so it may not connect")]
    OriginNotAllowed {
        /// The `Origin` field value received.
        origin: Excerpt,
    },
    /// The target's path is not the WebSocket endpoint. HTTP 404.
    /// [`RejectReason::explain`] adds the configured path.
    #[error("no WebSocket endpoint at {path}")]
    PathNotFound {
        /// The path received, without the query.
        path: Excerpt,
    },
    /// The server has no room for another connection. HTTP 503 with `Retry-After`.
    #[error("server is at its connection limit; retry after {retry_after_secs} s")]
    ServerFull {
        /// Seconds the client should wait before it retries.
        retry_after_secs: u32,
    },
    /// The request announces a body with `Content-Length` above 0 or any
    /// `Transfer-Encoding`. An upgrade request has no body, and bytes after the head are
    /// WebSocket frames. HTTP 400.
    #[error("upgrade request must not have a body; remove Content-Length and Transfer-Encoding")]
    UnexpectedBody,
    /// The HTTP version is not 1.1 or a higher 1.x (RFC 6455 §4.2.1 requires HTTP/1.1 or
    /// higher, and this server speaks only 1.1). HTTP 505.
    #[error("HTTP/{major}.{minor} is not supported; send the upgrade request over HTTP/1.1")]
    UnsupportedHttpVersion {
        /// Major digit of the version received.
        major: u8,
        /// Minor digit of the version received.
        minor: u8,
    },
    /// `Sec-WebSocket-Version` is missing, repeated or not `13` (RFC 6455 §4.2.1 item 6).
    /// HTTP 426 with `Sec-WebSocket-Version: 13` (RFC 6455 §4.4).
    #[error("Sec-WebSocket-Version must appear once with the value 13")]
    UnsupportedWebSocketVersion,
    /// The authenticated user has too many open connections. HTTP 429 with `Retry-After`.
    #[error(
        "user already has {max} open connections (max_connections_per_user); close one or retry after {retry_after_secs} s"
    )]
    UserConnectionLimit {
        /// The per-user limit, `max_connections_per_user`.
        max: u32,
        /// Seconds the client should wait before it retries.
        retry_after_secs: u32,
    },
}

impl RejectReason {
    /// Returns the HTTP status code of the rejection response.
    pub fn status(&self) -> u16 {
        match self {
            Self::Parse(error) if error.is_limit() => 431,
            Self::DuplicateHost
            | Self::DuplicateKey
            | Self::InvalidContentLength
            | Self::InvalidHost
            | Self::InvalidKey
            | Self::InvalidSubprotocol
            | Self::MissingConnectionUpgrade
            | Self::MissingHost
            | Self::MissingKey
            | Self::MissingUpgradeWebsocket
            | Self::Parse(_)
            | Self::UnexpectedBody => 400,
            Self::InvalidToken(_) | Self::MissingToken => 401,
            Self::DuplicateOrigin | Self::MissingOrigin | Self::OriginNotAllowed { .. } => 403,
            Self::PathNotFound { .. } => 404,
            Self::MethodNotAllowed => 405,
            Self::HandshakeTimeout => 408,
            Self::UnsupportedWebSocketVersion => 426,
            Self::IpRateLimited { .. } | Self::UserConnectionLimit { .. } => 429,
            Self::ServerFull { .. } => 503,
            Self::UnsupportedHttpVersion { .. } => 505,
        }
    }

    /// Builds the response body text: the `Display` text, completed from `cfg` where the
    /// configuration names the fix. A missing token lists the enabled token sources, and a
    /// wrong path names the configured one.
    pub fn explain(&self, cfg: &HandshakeConfig) -> String {
        match self {
            Self::MissingToken => missing_token_text(cfg),
            Self::PathNotFound { .. } => format!("{self}; connect to {}", cfg.path),
            _ => self.to_string(),
        }
    }

    /// Returns the seconds for the `Retry-After` field of a 429 or 503 rejection, or `None`
    /// for rejections that a retry cannot fix.
    pub fn retry_after_secs(&self) -> Option<u32> {
        match self {
            Self::IpRateLimited { retry_after_secs }
            | Self::ServerFull { retry_after_secs }
            | Self::UserConnectionLimit {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ => None,
        }
    }
}

/// Maximum number of bytes of a request value that an [`Excerpt`] keeps.
pub const EXCERPT_MAX_BYTES: usize = 100;

/// The first [`EXCERPT_MAX_BYTES`] bytes of a request value, for quoting it in an error text
/// without allocating. `Display` writes printable ASCII as is, `\\` for a backslash, `\xNN`
/// for every other byte (control bytes and non-ASCII), and `...` after a truncated value.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Excerpt {
    bytes: [u8; EXCERPT_MAX_BYTES],
    /// INVARIANT: `len <= EXCERPT_MAX_BYTES`.
    len: u8,
    truncated: bool,
}

impl Excerpt {
    /// Copies up to [`EXCERPT_MAX_BYTES`] bytes of `value`.
    pub fn new(value: &[u8]) -> Self {
        let kept = value.get(..EXCERPT_MAX_BYTES).unwrap_or(value);
        let mut bytes = [0; EXCERPT_MAX_BYTES];
        if let Some(slot) = bytes.get_mut(..kept.len()) {
            slot.copy_from_slice(kept);
        }
        Self {
            bytes,
            len: u8::try_from(kept.len()).unwrap_or(u8::MAX),
            truncated: value.len() > kept.len(),
        }
    }

    /// Copies the part of a request path that can be shown: up to the first `;`, `%`, `=` or
    /// `.`. A client that puts its token in the path (`/ws;access_token=...`,
    /// `/ws%3Faccess_token=...`, `/<JWT>`) does not get it back in the 404 text or the log,
    /// because a token parameter needs `=` and every JWT contains `.`.
    pub fn path(path: &[u8]) -> Self {
        let end = path
            .iter()
            .position(|byte| matches!(byte, b';' | b'%' | b'=' | b'.'))
            .unwrap_or(path.len());
        let mut excerpt = Self::new(path.get(..end).unwrap_or(path));
        excerpt.truncated |= end < path.len();
        excerpt
    }

    /// Returns the bytes kept, at most [`EXCERPT_MAX_BYTES`].
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or_default()
    }
}

impl fmt::Display for Excerpt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &byte in self.as_bytes() {
            match byte {
                b'\\' => f.write_str("\\\\")?,
                b' '..=b'~' => f.write_char(char::from(byte))?,
                _ => write!(f, "\\x{byte:02x}")?,
            }
        }
        if self.truncated {
            f.write_str("...")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Excerpt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// Builds the missing-token text, which lists the enabled token sources in the order
/// `check_request` reads them.
fn missing_token_text(cfg: &HandshakeConfig) -> String {
    let mut sources = Vec::with_capacity(4);
    if cfg.bearer_header {
        sources.push("`Authorization: Bearer <token>`".to_owned());
    }
    if let Some(marker) = &cfg.protocol_marker {
        sources.push(format!("`Sec-WebSocket-Protocol: {marker}, <token>`"));
    }
    if let Some(name) = &cfg.query_param {
        sources.push(format!("the `{name}` query parameter"));
    }
    if let Some(name) = &cfg.cookie {
        sources.push(format!("the `{name}` cookie"));
    }

    let Some((last, first)) = sources.split_last() else {
        return "no access token, and the server has every token source disabled".to_owned();
    };
    if first.is_empty() {
        return format!("no access token: send {last}");
    }
    format!("no access token: send {} or {last}", first.join(", "))
}

/// Returns the reason phrase of each status that [`RejectReason::status`] can return
/// (RFC 9110 §15).
pub(crate) fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_parse_limits_are_431_and_syntax_400() {
        let too_large = RejectReason::from(ParseError::HeadTooLarge { max_head_bytes: 8 });
        let too_many = RejectReason::from(ParseError::TooManyHeaders { max_headers: 8 });
        let syntax = RejectReason::from(ParseError::BareLineFeed);
        assert_eq!(too_large.status(), 431);
        assert_eq!(too_many.status(), 431);
        assert_eq!(syntax.status(), 400);
    }

    #[test]
    fn status_admission_verdicts_carry_retry_after() {
        let cases = [
            (
                RejectReason::IpRateLimited {
                    retry_after_secs: 3,
                },
                429,
                Some(3),
            ),
            (
                RejectReason::UserConnectionLimit {
                    max: 32,
                    retry_after_secs: 4,
                },
                429,
                Some(4),
            ),
            (
                RejectReason::ServerFull {
                    retry_after_secs: 5,
                },
                503,
                Some(5),
            ),
            (RejectReason::HandshakeTimeout, 408, None),
            (RejectReason::MissingToken, 401, None),
        ];
        for (reason, status, retry) in cases {
            assert_eq!(reason.status(), status, "{reason:?}");
            assert_eq!(reason.retry_after_secs(), retry, "{reason:?}");
        }
    }

    #[test]
    fn invalid_token_display_is_the_auth_error_text() {
        let reason = RejectReason::from(AuthError::Expired { exp: Some(1) });
        assert_eq!(
            reason.to_string(),
            "token expired at 1 (Unix time); get a new token"
        );
        assert_eq!(reason.status(), 401);
    }

    #[test]
    fn explain_missing_token_lists_enabled_sources() {
        let all = HandshakeConfig {
            query_param: Some("access_token".to_owned()),
            protocol_marker: Some("framegate.jwt".to_owned()),
            cookie: Some("framegate_token".to_owned()),
            ..HandshakeConfig::default()
        };
        assert_eq!(
            RejectReason::MissingToken.explain(&all),
            "no access token: send `Authorization: Bearer <token>`, \
             `Sec-WebSocket-Protocol: framegate.jwt, <token>`, the `access_token` query \
             parameter or the `framegate_token` cookie"
        );

        let bearer_only = HandshakeConfig::default();
        assert_eq!(
            RejectReason::MissingToken.explain(&bearer_only),
            "no access token: send `Authorization: Bearer <token>`"
        );

        let none = HandshakeConfig {
            bearer_header: false,
            ..HandshakeConfig::default()
        };
        assert_eq!(
            RejectReason::MissingToken.explain(&none),
            "no access token, and the server has every token source disabled"
        );
    }

    #[test]
    fn explain_wrong_path_names_configured_path() {
        let reason = RejectReason::PathNotFound {
            path: Excerpt::new(b"/x\x1b"),
        };
        assert_eq!(reason.to_string(), "no WebSocket endpoint at /x\\x1b");
        for (path, shown) in [
            ("/wss", "/wss"),
            ("/ws;access_token=eyJh.eyJz.c2ln", "/ws..."),
            ("/ws%3Faccess_token=eyJh.eyJz.c2ln", "/ws..."),
            (
                "/eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln",
                "/eyJhbGciOiJIUzI1NiJ9...",
            ),
            ("/chat/access_token=abc", "/chat/access_token..."),
        ] {
            assert_eq!(Excerpt::path(path.as_bytes()).to_string(), shown, "{path}");
        }
        assert_eq!(
            reason.explain(&HandshakeConfig::default()),
            "no WebSocket endpoint at /x\\x1b; connect to /ws"
        );
    }

    #[test]
    fn user_limit_text_names_the_limit() {
        let reason = RejectReason::UserConnectionLimit {
            max: 32,
            retry_after_secs: 5,
        };
        assert_eq!(
            reason.to_string(),
            "user already has 32 open connections (max_connections_per_user); close one or \
             retry after 5 s"
        );
    }

    #[test]
    fn excerpt_escapes_and_truncates() {
        assert_eq!(
            Excerpt::new(b"https://a.example").to_string(),
            "https://a.example"
        );
        assert_eq!(
            Excerpt::new(b"a\r\nb\\c\x7f\xc3\xa9").to_string(),
            "a\\x0d\\x0ab\\\\c\\x7f\\xc3\\xa9"
        );
        let long = [b'x'; 150];
        let excerpt = Excerpt::new(&long);
        assert_eq!(excerpt.as_bytes().len(), EXCERPT_MAX_BYTES);
        assert_eq!(excerpt.to_string(), format!("{}...", "x".repeat(100)));
        assert_eq!(Excerpt::new(&long[..100]).to_string(), "x".repeat(100));
    }

    #[test]
    fn origin_texts_name_the_problem() {
        let origin = Excerpt::new(b"https://evil.example\n");
        assert_eq!(
            RejectReason::OriginNotAllowed { origin }.to_string(),
            "origin https://evil.example\\x0a is not in allowed_origins, so it may not connect"
        );
        assert!(
            RejectReason::MissingOrigin
                .to_string()
                .starts_with("request has no Origin header; allowed_origins is set, so ")
        );
        for reason in [
            RejectReason::MissingOrigin,
            RejectReason::DuplicateOrigin,
            RejectReason::OriginNotAllowed { origin },
        ] {
            assert_eq!(reason.status(), 403, "{reason:?}");
        }
    }

    #[test]
    fn every_display_text_is_one_line() {
        let reasons = [
            RejectReason::DuplicateHost,
            RejectReason::Parse(ParseError::HeadTooLarge {
                max_head_bytes: 8192,
            }),
            RejectReason::UnsupportedHttpVersion { major: 2, minor: 0 },
            RejectReason::UnexpectedBody,
            RejectReason::ServerFull {
                retry_after_secs: 1,
            },
        ];
        for reason in reasons {
            let text = reason.to_string();
            assert!(!text.is_empty());
            assert!(!text.contains(['\r', '\n']), "{text}");
            assert!(!reason_phrase(reason.status()).is_empty(), "{reason:?}");
        }
    }
}
