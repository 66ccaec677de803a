//! Reasons to reject a WebSocket upgrade and their HTTP status codes.
//!
//! Every verdict that ends a connection before the 101 response is a [`RejectReason`]:
//! parse errors, the RFC 6455 §4.2.1 checks, and the authentication and admission
//! verdicts that other modules reach. [`RejectReason::status`] is the single mapping to the
//! wire, and `response::write_reject` adds the header fields that each status needs.

#![forbid(unsafe_code)]

use crate::auth::AuthError;
use crate::handshake::HandshakeConfig;
use crate::http::ParseError;

/// Reason for rejecting an upgrade request. The `Display` text is sent to the client as the
/// response body, so it names the failed check and never quotes request values or tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    /// More than one `Host` field line (RFC 9112 §3.2). HTTP 400.
    #[error("request has more than one Host header field")]
    DuplicateHost,
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
    /// `Origin` is missing or not in `allowed_origins` (RFC 6455 §10.2). HTTP 403.
    #[error("origin is not allowed to connect")]
    OriginNotAllowed,
    /// The target's path is not the WebSocket endpoint. HTTP 404.
    #[error("no WebSocket endpoint at this path")]
    PathNotFound,
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
    /// The HTTP version is not 1.1 (RFC 6455 §4.2.1 requires HTTP/1.1 or higher, and this
    /// server speaks only 1.1). HTTP 505.
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
    #[error("too many open connections for this user; retry after {retry_after_secs} s")]
    UserConnectionLimit {
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
            Self::OriginNotAllowed => 403,
            Self::PathNotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::HandshakeTimeout => 408,
            Self::UnsupportedWebSocketVersion => 426,
            Self::IpRateLimited { .. } | Self::UserConnectionLimit { .. } => 429,
            Self::ServerFull { .. } => 503,
            Self::UnsupportedHttpVersion { .. } => 505,
        }
    }

    /// Builds the response body text: the `Display` text, completed from `cfg` where the
    /// configuration names the fix. A missing token lists the enabled token sources.
    pub fn explain(&self, cfg: &HandshakeConfig) -> String {
        match self {
            Self::MissingToken => missing_token_text(cfg),
            _ => self.to_string(),
        }
    }

    /// Returns the seconds for the `Retry-After` field of a 429 or 503 rejection, or `None`
    /// for rejections that a retry cannot fix.
    pub fn retry_after_secs(&self) -> Option<u32> {
        match self {
            Self::IpRateLimited { retry_after_secs }
            | Self::ServerFull { retry_after_secs }
            | Self::UserConnectionLimit { retry_after_secs } => Some(*retry_after_secs),
            _ => None,
        }
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
        let reason = RejectReason::from(AuthError::Expired);
        assert_eq!(reason.to_string(), "token has expired");
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
