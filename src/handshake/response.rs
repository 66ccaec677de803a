//! Bytes of the handshake responses: 101 Switching Protocols and the rejections.
//!
//! The writers append to a caller-owned buffer and never fail. The caller sends the bytes
//! and must close the connection after a rejection, which the `Connection: close` field
//! announces to the client.

#![forbid(unsafe_code)]

use crate::handshake::HandshakeConfig;
use crate::handshake::key::accept_key;
use crate::handshake::reject::{RejectReason, reason_phrase};
use crate::http::{TCHAR, is};

/// Appends the 101 response that completes the upgrade (RFC 6455 §4.2.2 step 5).
///
/// `protocol` is written as `Sec-WebSocket-Protocol` when it is `Some`. Pass
/// `Upgrade::protocol`, which is always one of the client's offered tokens. A value that is
/// not a token is left out rather than written, because it could split the header.
pub fn write_switching_protocols(key: &str, protocol: Option<&str>, out: &mut Vec<u8>) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\n\
          Upgrade: websocket\r\n\
          Connection: Upgrade\r\n\
          Sec-WebSocket-Accept: ",
    );
    out.extend_from_slice(&accept_key(key));
    out.extend_from_slice(b"\r\n");

    let protocol = protocol.filter(|p| !p.is_empty() && p.bytes().all(|b| is(&TCHAR, b)));
    if let Some(protocol) = protocol {
        out.extend_from_slice(b"Sec-WebSocket-Protocol: ");
        out.extend_from_slice(protocol.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends a complete rejection response for `reason`: the status line, `Content-Type`,
/// `Content-Length`, `Connection: close`, the fields that the status needs, and the reason
/// text as a one-line body.
///
/// The fields that depend on the status:
/// - 401: `WWW-Authenticate: Bearer`, with `error="invalid_token"` when a token was sent but
///   is invalid (RFC 6750 §3);
/// - 405: `Allow: GET` (RFC 9110 §15.5.6);
/// - 426: `Sec-WebSocket-Version: 13` (RFC 6455 §4.4), and `Upgrade: websocket` with the
///   `upgrade` option in `Connection`, which RFC 9110 §15.5.22 and §7.8 require of a 426;
/// - 429 and 503: `Retry-After` in seconds (RFC 9110 §10.2.3).
// TODO: add the `Date` field that RFC 9110 §6.6.1 requires in 4xx responses from a server
// with a clock, which needs the caller to pass in the time.
pub fn write_reject(reason: &RejectReason, out: &mut Vec<u8>) {
    write_reject_with_body(reason, &reason.to_string(), out);
}

/// Appends the rejection response of [`write_reject`], with the body text of
/// [`RejectReason::explain`], which names the fix that `cfg` allows (such as the enabled
/// token sources).
pub fn write_reject_for(reason: &RejectReason, cfg: &HandshakeConfig, out: &mut Vec<u8>) {
    write_reject_with_body(reason, &reason.explain(cfg), out);
}

/// Appends the rejection response for `reason` with `text` and a line feed as the body.
fn write_reject_with_body(reason: &RejectReason, text: &str, out: &mut Vec<u8>) {
    let status = reason.status();
    let body = format!("{text}\n");

    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, status.into());
    out.push(b' ');
    out.extend_from_slice(reason_phrase(status).as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ");
    push_decimal(out, u64::try_from(body.len()).unwrap_or(u64::MAX));
    out.extend_from_slice(b"\r\n");

    match reason {
        RejectReason::UnsupportedWebSocketVersion => out.extend_from_slice(
            b"Connection: Upgrade, close\r\n\
              Upgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\n",
        ),
        _ => out.extend_from_slice(b"Connection: close\r\n"),
    }
    match reason {
        RejectReason::MissingToken => out.extend_from_slice(b"WWW-Authenticate: Bearer\r\n"),
        RejectReason::InvalidToken(_) => {
            out.extend_from_slice(b"WWW-Authenticate: Bearer error=\"invalid_token\"\r\n");
        }
        RejectReason::MethodNotAllowed => out.extend_from_slice(b"Allow: GET\r\n"),
        _ => {}
    }
    if let Some(seconds) = reason.retry_after_secs() {
        out.extend_from_slice(b"Retry-After: ");
        push_decimal(out, seconds.into());
        out.extend_from_slice(b"\r\n");
    }

    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
}

/// Appends the decimal digits of `value`.
fn push_decimal(out: &mut Vec<u8>, value: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    let mut rest = value;
    for slot in digits.iter_mut().rev() {
        // `rest % 10` is below 10, so the narrowing keeps every bit.
        *slot = b'0' + (rest % 10) as u8;
        start -= 1;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(digits.get(start..).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthError;
    use crate::handshake::Excerpt;
    use crate::http::{ParseError, list_contains_ignore_case};

    /// A parsed response: status code, header fields and body.
    struct Response {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Response {
        fn field(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }

        fn count(&self, name: &str) -> usize {
            self.headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .count()
        }
    }

    /// Parses `bytes` as one HTTP/1.1 response with the RFC 9112 grammar and panics with a
    /// description of the first violation.
    fn parse_response(bytes: &[u8]) -> Response {
        let text = std::str::from_utf8(bytes).expect("response is UTF-8");
        let (head, body) = text
            .split_once("\r\n\r\n")
            .expect("head ends with an empty line");
        let mut lines = head.split("\r\n");

        let status_line = lines.next().expect("status line");
        let mut parts = status_line.splitn(3, ' ');
        assert_eq!(parts.next(), Some("HTTP/1.1"), "{status_line}");
        let code = parts.next().expect("status code");
        assert_eq!(code.len(), 3, "{status_line}");
        let status: u16 = code.parse().expect("numeric status code");
        let phrase = parts.next().unwrap_or_default();
        assert!(!phrase.is_empty(), "{status_line}");

        let mut headers = Vec::new();
        for line in lines {
            let (name, value) = line.split_once(':').expect("field line has a colon");
            assert!(!name.is_empty(), "{line}");
            assert!(name.bytes().all(|b| is(&TCHAR, b)), "{line}");
            assert!(!value.contains(['\r', '\n']), "{line}");
            headers.push((name.to_owned(), value.trim().to_owned()));
        }
        let response = Response {
            status,
            headers,
            body: body.as_bytes().to_vec(),
        };
        if let Some(length) = response.field("Content-Length") {
            assert_eq!(length.parse::<usize>().ok(), Some(response.body.len()));
        }
        response
    }

    #[test]
    fn switching_protocols_has_required_fields() {
        let mut out = Vec::new();
        write_switching_protocols("dGhlIHNhbXBsZSBub25jZQ==", None, &mut out);
        let expected: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\n\
            Upgrade: websocket\r\n\
            Connection: Upgrade\r\n\
            Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
            \r\n";
        assert_eq!(out, expected);

        let response = parse_response(&out);
        assert_eq!(response.status, 101);
        assert_eq!(response.count("Sec-WebSocket-Protocol"), 0);
        assert!(response.body.is_empty());
    }

    #[test]
    fn switching_protocols_writes_one_protocol_field() {
        let mut out = Vec::new();
        write_switching_protocols("dGhlIHNhbXBsZSBub25jZQ==", Some("framegate.jwt"), &mut out);
        let response = parse_response(&out);
        assert_eq!(response.count("Sec-WebSocket-Protocol"), 1);
        assert_eq!(
            response.field("Sec-WebSocket-Protocol"),
            Some("framegate.jwt")
        );
    }

    #[test]
    fn switching_protocols_drops_non_token_protocol() {
        for protocol in ["", "a b", "a\r\nSet-Cookie: x=y"] {
            let mut out = Vec::new();
            write_switching_protocols("dGhlIHNhbXBsZSBub25jZQ==", Some(protocol), &mut out);
            let response = parse_response(&out);
            assert_eq!(response.count("Sec-WebSocket-Protocol"), 0, "{protocol:?}");
            assert_eq!(response.count("Set-Cookie"), 0, "{protocol:?}");
        }
    }

    #[test]
    fn reject_responses_parse_and_carry_status_fields() {
        let cases = [
            (RejectReason::Parse(ParseError::BareLineFeed), 400),
            (
                RejectReason::Parse(ParseError::HeadTooLarge {
                    max_head_bytes: 8192,
                }),
                431,
            ),
            (RejectReason::MissingToken, 401),
            (
                RejectReason::InvalidToken(AuthError::Expired { exp: Some(1) }),
                401,
            ),
            (
                RejectReason::PathNotFound {
                    path: Excerpt::new(b"/x"),
                },
                404,
            ),
            (RejectReason::MethodNotAllowed, 405),
            (RejectReason::HandshakeTimeout, 408),
            (RejectReason::UnsupportedWebSocketVersion, 426),
            (
                RejectReason::IpRateLimited {
                    retry_after_secs: 7,
                },
                429,
            ),
            (
                RejectReason::UserConnectionLimit {
                    max: 1,
                    retry_after_secs: 60,
                },
                429,
            ),
            (
                RejectReason::ServerFull {
                    retry_after_secs: 0,
                },
                503,
            ),
            (
                RejectReason::UnsupportedHttpVersion { major: 1, minor: 0 },
                505,
            ),
        ];
        for (reason, status) in cases {
            let mut out = Vec::new();
            write_reject(&reason, &mut out);
            let response = parse_response(&out);

            assert_eq!(response.status, status, "{reason:?}");
            assert_eq!(
                response.body,
                format!("{reason}\n").into_bytes(),
                "{reason:?}"
            );
            assert_eq!(
                response.field("Content-Type"),
                Some("text/plain; charset=utf-8"),
                "{reason:?}"
            );
            let connection = response.field("Connection").unwrap_or_default();
            assert!(
                list_contains_ignore_case(connection.as_bytes(), b"close"),
                "{reason:?}"
            );
            assert_eq!(response.count("Content-Length"), 1, "{reason:?}");
        }
    }

    #[test]
    fn reject_status_specific_fields_are_present() {
        let fields = |reason: RejectReason| {
            let mut out = Vec::new();
            write_reject(&reason, &mut out);
            parse_response(&out).headers
        };
        let has = |headers: &[(String, String)], name: &str, value: &str| {
            headers.iter().any(|(n, v)| n == name && v == value)
        };

        assert!(has(
            &fields(RejectReason::MissingToken),
            "WWW-Authenticate",
            "Bearer"
        ));
        let invalid = fields(RejectReason::InvalidToken(AuthError::Malformed));
        assert!(has(
            &invalid,
            "WWW-Authenticate",
            "Bearer error=\"invalid_token\""
        ));
        assert!(has(&fields(RejectReason::MethodNotAllowed), "Allow", "GET"));
        let upgrade_required = fields(RejectReason::UnsupportedWebSocketVersion);
        assert!(has(&upgrade_required, "Sec-WebSocket-Version", "13"));
        assert!(has(&upgrade_required, "Upgrade", "websocket"));
        assert!(has(&upgrade_required, "Connection", "Upgrade, close"));
        let limited = fields(RejectReason::IpRateLimited {
            retry_after_secs: 7,
        });
        assert!(has(&limited, "Retry-After", "7"));
        let full = fields(RejectReason::ServerFull {
            retry_after_secs: u32::MAX,
        });
        assert!(has(&full, "Retry-After", "4294967295"));
        assert!(
            !fields(RejectReason::PathNotFound {
                path: Excerpt::new(b"/x")
            })
            .iter()
            .any(|(n, _)| n == "Retry-After")
        );
    }

    #[test]
    fn reject_invalid_token_body_is_auth_error_text() {
        let mut out = Vec::new();
        write_reject(
            &RejectReason::InvalidToken(AuthError::InvalidSignature),
            &mut out,
        );
        assert!(out.ends_with(b"\r\n\r\ntoken signature is invalid\n"));
    }

    #[test]
    fn reject_for_missing_token_names_sources() {
        let cfg = HandshakeConfig {
            query_param: Some("access_token".to_owned()),
            ..HandshakeConfig::default()
        };
        let mut out = Vec::new();
        write_reject_for(&RejectReason::MissingToken, &cfg, &mut out);
        let response = parse_response(&out);
        assert_eq!(response.status, 401);
        assert_eq!(
            response.body,
            b"no access token: send `Authorization: Bearer <token>` or the `access_token` \
              query parameter\n"
        );
    }

    #[test]
    fn push_decimal_writes_all_digits() {
        for (value, text) in [
            (0, "0"),
            (7, "7"),
            (10, "10"),
            (431, "431"),
            (u64::MAX, "18446744073709551615"),
        ] {
            let mut out = Vec::new();
            push_decimal(&mut out, value);
            assert_eq!(out, text.as_bytes());
        }
    }
}
