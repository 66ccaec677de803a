//! Access-token extraction and subprotocol selection for the upgrade request.
//!
//! A browser cannot set `Authorization` on a WebSocket request, so the token may come from
//! four places. The enabled sources are tried in a fixed order, and the first one present
//! decides:
//!
//! 1. `Authorization: Bearer <token>` (RFC 6750 §2.1);
//! 2. `Sec-WebSocket-Protocol: <marker>, <token>`, where the element right after the
//!    configured marker is the token;
//! 3. the query parameter named in the configuration (RFC 6750 §2.3);
//! 4. the cookie named in the configuration.
//!
//! A source that is present but unusable is an invalid token, not a missing one: the
//! client sent credentials, so falling through to a weaker source would hide the mistake.
//! The exception is an `Authorization` field with another scheme, such as `Basic`: it is
//! not a token source and counts as absent, because browsers resend cached Basic
//! credentials on same-origin upgrade requests.
//! Every token must be a `b64token` (RFC 6750 §2.1), which covers JWTs. This module only
//! finds the token; verifying it is the job of `crate::auth`.

#![forbid(unsafe_code)]

use crate::auth::AuthError;
use crate::handshake::{HandshakeConfig, RejectReason, TokenSource};
use crate::http::{B64TOKEN, Header, TCHAR, all_in, find_byte, list_elements, trim_ows};

/// Subprotocols the client offered, as far as the handshake needs them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Offer<'b> {
    /// The configured marker, when the client offered it.
    pub(crate) marker: Option<&'b str>,
    /// The element right after the marker, which carries the token.
    pub(crate) marker_token: Option<&'b [u8]>,
    /// The first offered protocol that the server supports, the marker and its token aside.
    pub(crate) supported: Option<&'b str>,
}

impl<'b> Offer<'b> {
    /// Returns the protocol for the 101 response. The marker wins over application protocols
    /// because the client that offers it expects it back. The token itself is never
    /// returned, because it is not a protocol and echoing it would copy a credential into
    /// the response.
    pub(crate) fn selected(&self) -> Option<&'b str> {
        self.marker.or(self.supported)
    }
}

/// Reads every `Sec-WebSocket-Protocol` field line, in order, as one list.
///
/// # Errors
///
/// Returns [`RejectReason::InvalidSubprotocol`] when an element is not a token, which
/// RFC 6455 §4.1 requires of every element.
pub(crate) fn scan_protocols<'b>(
    headers: &[Header<'b>],
    cfg: &HandshakeConfig,
) -> Result<Offer<'b>, RejectReason> {
    let marker = cfg.protocol_marker.as_deref().map(str::as_bytes);
    let mut offer = Offer::default();
    let mut token_follows = false;

    let elements = headers
        .iter()
        .filter(|header| header.name.eq_ignore_ascii_case("sec-websocket-protocol"))
        .flat_map(|header| list_elements(header.value));
    for element in elements {
        let Some(protocol) = token_str(element) else {
            return Err(RejectReason::InvalidSubprotocol);
        };
        if token_follows {
            offer.marker_token = Some(element);
            token_follows = false;
        } else if offer.marker.is_none() && marker == Some(element) {
            offer.marker = Some(protocol);
            token_follows = true;
        } else if offer.supported.is_none()
            && cfg.subprotocols.iter().any(|p| p.as_bytes() == element)
        {
            offer.supported = Some(protocol);
        }
    }
    Ok(offer)
}

/// Presence of the token-carrying fields, recorded in the single pass over the fields in
/// `check_request`, so that an absent source costs no second pass.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Present {
    /// At least one `Authorization` field line.
    pub(crate) authorization: bool,
    /// At least one `Cookie` field line.
    pub(crate) cookie: bool,
}

/// Finds the access token in the enabled sources, in the order given in the module docs.
/// Returns `Ok(None)` when no enabled source is present.
///
/// # Errors
///
/// Returns [`RejectReason::InvalidToken`] with [`AuthError::Malformed`] when the first
/// present source is unusable. That is a malformed Bearer credential, an empty token, a
/// token with characters outside `b64token`, a repeated `Authorization` field or query
/// parameter, or a marker with no element after it.
pub(crate) fn extract_token<'b>(
    headers: &[Header<'b>],
    query: &'b str,
    offer: &Offer<'b>,
    present: Present,
    cfg: &HandshakeConfig,
) -> Result<Option<(TokenSource, &'b str)>, RejectReason> {
    if cfg.bearer_header
        && present.authorization
        && let Some(token) = bearer(headers)?
    {
        return Ok(Some((TokenSource::Bearer, token)));
    }
    if offer.marker.is_some() {
        let token = offer.marker_token.and_then(b64token);
        let token = token.ok_or(AuthError::Malformed)?;
        return Ok(Some((TokenSource::Protocol, token)));
    }
    if let Some(name) = &cfg.query_param
        && let Some(token) = query_parameter(query, name)?
    {
        return Ok(Some((TokenSource::Query, token)));
    }
    if let Some(name) = &cfg.cookie
        && present.cookie
        && let Some(token) = cookie(headers, name)?
    {
        return Ok(Some((TokenSource::Cookie, token)));
    }
    Ok(None)
}

/// Reads `Authorization: Bearer <b64token>`. The scheme is case-insensitive (RFC 9110
/// §11.1) and is followed by one or more spaces (RFC 6750 §2.1). Another scheme, such as
/// `Basic`, returns `Ok(None)`. A value that starts with `Bearer` but has no space after it
/// is a malformed Bearer credential, not another scheme.
fn bearer<'b>(headers: &[Header<'b>]) -> Result<Option<&'b str>, AuthError> {
    let mut values = headers
        .iter()
        .filter(|header| header.name.eq_ignore_ascii_case("authorization"))
        .map(|header| header.value);
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(AuthError::Malformed);
    }

    let Some(after_scheme) = value
        .get(..BEARER.len())
        .filter(|scheme| scheme.eq_ignore_ascii_case(BEARER))
        .and_then(|_| value.get(BEARER.len()..))
    else {
        return Ok(None);
    };
    let Some(rest) = after_scheme.strip_prefix(b" ") else {
        return Err(AuthError::Malformed);
    };
    let credentials = trim_ows(rest);
    b64token(credentials).map(Some).ok_or(AuthError::Malformed)
}

/// The Bearer authentication scheme name (RFC 6750 §2.1), compared case-insensitively.
const BEARER: &[u8] = b"bearer";

/// Reads the query parameter `name` from `query` (the target after `?`). Names are compared
/// exactly and nothing is percent-decoded, so a token that needs encoding is rejected by
/// the `b64token` check. A JWT never needs encoding.
fn query_parameter<'b>(query: &'b str, name: &str) -> Result<Option<&'b str>, AuthError> {
    let mut found = None;
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != name {
            continue;
        }
        // Two values would let whichever component reads the query pick a different token.
        if found.is_some() {
            return Err(AuthError::Malformed);
        }
        found = Some(value);
    }
    let Some(value) = found else {
        return Ok(None);
    };
    b64token(value.as_bytes())
        .map(Some)
        .ok_or(AuthError::Malformed)
}

/// Reads the cookie `name` from every `Cookie` field line (`a=b; c=d`, RFC 6265 §4.2.1).
/// A browser may send two cookies of the same name set for different paths, listing the
/// more specific path first (RFC 6265 §5.4), so the first one wins rather than being an
/// error.
// TODO: add an Origin allowlist, because without it a cookie token that is not SameSite
// allows cross-site WebSocket hijacking.
fn cookie<'b>(headers: &[Header<'b>], name: &str) -> Result<Option<&'b str>, AuthError> {
    let lines = headers
        .iter()
        .filter(|header| header.name.eq_ignore_ascii_case("cookie"))
        .map(|header| header.value);
    for line in lines {
        let mut rest = line;
        while !rest.is_empty() {
            let end = find_byte(rest, b';').unwrap_or(rest.len());
            let (pair, after) = rest.split_at(end);
            rest = after.get(1..).unwrap_or_default();

            let value = trim_ows(pair)
                .strip_prefix(name.as_bytes())
                .and_then(|after_name| after_name.strip_prefix(b"="));
            let Some(value) = value else {
                continue;
            };
            let unquoted = value
                .strip_prefix(b"\"")
                .and_then(|inner| inner.strip_suffix(b"\""))
                .unwrap_or(value);
            return b64token(unquoted).map(Some).ok_or(AuthError::Malformed);
        }
    }
    Ok(None)
}

/// Returns `bytes` as text when it is a `b64token` (RFC 6750 §2.1): one or more characters
/// of [`B64TOKEN`] followed by any number of `=`.
fn b64token(bytes: &[u8]) -> Option<&str> {
    let body_len = bytes
        .iter()
        .rposition(|&byte| byte != b'=')
        .map_or(0, |last| last + 1);
    let body = bytes.get(..body_len)?;
    if body.is_empty() || !all_in(&B64TOKEN, body) {
        return None;
    }
    std::str::from_utf8(bytes).ok()
}

/// Returns `bytes` as text when it is a non-empty token (RFC 9110 §5.6.2).
fn token_str(bytes: &[u8]) -> Option<&str> {
    if bytes.is_empty() || !all_in(&TCHAR, bytes) {
        return None;
    }
    std::str::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Outcome of reading one token source.
    type Found = Result<Option<&'static str>, AuthError>;

    fn header<'b>(name: &'b str, value: &'b [u8]) -> Header<'b> {
        Header { name, value }
    }

    fn config_with_protocols(marker: Option<&str>, subprotocols: &[&str]) -> HandshakeConfig {
        HandshakeConfig {
            protocol_marker: marker.map(str::to_owned),
            subprotocols: subprotocols.iter().map(|p| (*p).to_owned()).collect(),
            ..HandshakeConfig::default()
        }
    }

    #[test]
    fn b64token_accepts_jwt_and_padding() {
        let jwt = b"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl";
        assert_eq!(b64token(jwt), std::str::from_utf8(jwt).ok());
        assert_eq!(b64token(b"abc+/=="), Some("abc+/=="));
        assert_eq!(b64token(b"a-._~"), Some("a-._~"));
    }

    #[test]
    fn b64token_rejects_empty_padding_only_and_other_bytes() {
        for bytes in [
            &b""[..],
            b"==",
            b"a=b",
            b"a b",
            b"a,b",
            b"a%3D",
            b"a\"",
            b"\xc3\xa9",
        ] {
            assert_eq!(b64token(bytes), None, "{}", bytes.escape_ascii());
        }
    }

    #[test]
    fn bearer_reads_scheme_case_insensitively() {
        let cases: &[(&[u8], Found)] = &[
            (b"Bearer abc.def", Ok(Some("abc.def"))),
            (b"bearer abc", Ok(Some("abc"))),
            (b"BEARER   abc", Ok(Some("abc"))),
            (b"Basic dXNlcjpwYXNz", Ok(None)),
            (b"Digest username=\"a\"", Ok(None)),
            (b"Negotiate", Ok(None)),
            (b"", Ok(None)),
            (b"Bearer", Err(AuthError::Malformed)),
            (b"Bearer ", Err(AuthError::Malformed)),
            (b"Bearer a b", Err(AuthError::Malformed)),
            (b"Bearerabc", Err(AuthError::Malformed)),
            (b"Bearer\tabc", Err(AuthError::Malformed)),
        ];
        for (value, expected) in cases {
            let headers = [header("Authorization", value)];
            assert_eq!(bearer(&headers), *expected, "{}", value.escape_ascii());
        }
    }

    #[test]
    fn bearer_absent_is_none_and_repeated_is_malformed() {
        assert_eq!(bearer(&[header("Host", b"a")]), Ok(None));
        let repeated = [
            header("Authorization", b"Bearer a"),
            header("authorization", b"Bearer a"),
        ];
        assert_eq!(bearer(&repeated), Err(AuthError::Malformed));
    }

    #[test]
    fn query_parameter_finds_exact_name_only() {
        let cases: &[(&str, Found)] = &[
            ("", Ok(None)),
            ("access_token=abc", Ok(Some("abc"))),
            ("a=1&access_token=abc&b", Ok(Some("abc"))),
            ("x_access_token=abc", Ok(None)),
            ("ACCESS_TOKEN=abc", Ok(None)),
            ("access_token", Err(AuthError::Malformed)),
            ("access_token=", Err(AuthError::Malformed)),
            ("access_token=a%2Eb", Err(AuthError::Malformed)),
            ("access_token=a&access_token=a", Err(AuthError::Malformed)),
        ];
        for (query, expected) in cases {
            assert_eq!(query_parameter(query, "access_token"), *expected, "{query}");
        }
    }

    #[test]
    fn cookie_reads_lists_over_several_lines() {
        let headers = [
            header("Cookie", b"theme=dark; session=1"),
            header(
                "cookie",
                b"other=2;framegate_token=abc.def; framegate_token=later",
            ),
        ];
        assert_eq!(cookie(&headers, "framegate_token"), Ok(Some("abc.def")));
        assert_eq!(cookie(&headers, "theme"), Ok(Some("dark")));
        assert_eq!(cookie(&headers, "missing"), Ok(None));
    }

    #[test]
    fn cookie_strips_quotes_and_rejects_bad_values() {
        let quoted = [header("Cookie", b"t=\"abc\"")];
        assert_eq!(cookie(&quoted, "t"), Ok(Some("abc")));
        let empty = [header("Cookie", b"t=; u=1")];
        assert_eq!(cookie(&empty, "t"), Err(AuthError::Malformed));
        let spaced = [header("Cookie", b"t=a b")];
        assert_eq!(cookie(&spaced, "t"), Err(AuthError::Malformed));
        let nameless = [header("Cookie", b"=abc; t")];
        assert_eq!(cookie(&nameless, "t"), Ok(None));
    }

    #[test]
    fn scan_protocols_takes_element_after_marker_as_token() {
        let cfg = config_with_protocols(Some("framegate.jwt"), &["chat"]);
        let headers = [header(
            "Sec-WebSocket-Protocol",
            b"chat, framegate.jwt, abc.def",
        )];
        let offer = scan_protocols(&headers, &cfg);
        assert_eq!(
            offer,
            Ok(Offer {
                marker: Some("framegate.jwt"),
                marker_token: Some(b"abc.def"),
                supported: Some("chat"),
            })
        );
        assert_eq!(offer.map(|o| o.selected()), Ok(Some("framegate.jwt")));
    }

    #[test]
    fn scan_protocols_never_selects_token() {
        let cfg = config_with_protocols(Some("framegate.jwt"), &["chat", "abc"]);
        let headers = [
            header("Sec-WebSocket-Protocol", b"framegate.jwt"),
            header("sec-websocket-protocol", b"abc"),
        ];
        let offer = scan_protocols(&headers, &cfg);
        assert_eq!(offer.map(|o| o.marker_token), Ok(Some(&b"abc"[..])));
        assert_eq!(offer.map(|o| o.supported), Ok(None));
        assert_eq!(offer.map(|o| o.selected()), Ok(Some("framegate.jwt")));
    }

    #[test]
    fn scan_protocols_selects_first_supported_client_offer() {
        let cfg = config_with_protocols(None, &["v2.chat", "v1.chat"]);
        let headers = [header(
            "Sec-WebSocket-Protocol",
            b"v3.chat, v1.chat, v2.chat",
        )];
        let offer = scan_protocols(&headers, &cfg);
        assert_eq!(offer.map(|o| o.selected()), Ok(Some("v1.chat")));

        let unsupported = [header("Sec-WebSocket-Protocol", b"v3.chat")];
        assert_eq!(
            scan_protocols(&unsupported, &cfg).map(|o| o.selected()),
            Ok(None)
        );
    }

    #[test]
    fn scan_protocols_rejects_non_token_elements() {
        let cfg = config_with_protocols(None, &[]);
        for value in [&b"a b"[..], b"a/b", b"\"chat\"", b"chat, a=b"] {
            let headers = [header("Sec-WebSocket-Protocol", value)];
            assert_eq!(
                scan_protocols(&headers, &cfg),
                Err(RejectReason::InvalidSubprotocol),
                "{}",
                value.escape_ascii()
            );
        }
    }
}
