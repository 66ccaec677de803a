//! Server side of the WebSocket opening handshake (RFC 6455 §4.2).
//!
//! [`check_request`] applies the checks of RFC 6455 §4.2.1 to a parsed [`Request`], finds
//! the access token and picks the subprotocol for the response. [`write_switching_protocols`]
//! and [`write_reject`] produce the response bytes, and [`RejectReason`] is the one place
//! where every handshake verdict, including the authentication and admission verdicts that
//! other modules reach, maps to an HTTP status.
//!
//! This module does not verify tokens (`crate::auth` does), count connections or read the
//! clock. It does no I/O and logs nothing.
//!
//! The checks run in this order, and the first failure decides the response:
//!
//! 1. parse errors, mapped by `From<ParseError>`: 431 for the size limits, 400 otherwise;
//! 2. HTTP version other than 1.1 (a higher 1.x counts as 1.1): 505. The version comes
//!    first because the meaning of everything after the request line depends on it;
//! 3. method other than `GET`: 405 with `Allow: GET`;
//! 4. `Host` missing, repeated or invalid: 400 (RFC 9112 §3.2);
//! 5. path of the target other than the configured path: 404. The query is ignored;
//! 6. a body (`Content-Length` above 0, or any `Transfer-Encoding`), or a malformed or
//!    conflicting `Content-Length`: 400;
//! 7. no `websocket` in `Upgrade`, or no `upgrade` in `Connection`: 400;
//! 8. `Sec-WebSocket-Version` missing, repeated or not `13`: 426. A missing version also
//!    gets 426 rather than 400, because the response carries
//!    `Sec-WebSocket-Version: 13`, which names the fix;
//! 9. `Sec-WebSocket-Key` missing, repeated or not the base64 encoding of 16 bytes: 400;
//! 10. `Sec-WebSocket-Protocol` elements that are not tokens: 400;
//! 11. a token source that is present but unusable: 401 with `invalid_token`.
//!
//! A request with no token passes with `token: None`; the caller decides whether that is
//! a [`RejectReason::MissingToken`].

#![forbid(unsafe_code)]

use std::fmt;

use crate::http::{HOST, Header, Request, all_in, list_contains_ignore_case, list_elements};

mod key;
mod reject;
mod response;
mod token;

pub use key::accept_key;
pub use reject::{EXCERPT_MAX_BYTES, Excerpt, RejectReason};
pub use response::{write_reject, write_reject_for, write_switching_protocols};

/// Handshake settings: the endpoint path, the token sources and the supported subprotocols.
/// `crate::config` builds them once from the configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeConfig {
    /// Path of the WebSocket endpoint, compared byte for byte with the path part of the
    /// request target (no percent-decoding, query ignored). Default `/ws`.
    pub path: String,
    /// Whether to read the token from `Authorization: Bearer <token>`. Default `true`.
    pub bearer_header: bool,
    /// Query parameter that carries the token, such as `access_token`. Default `None`.
    pub query_param: Option<String>,
    /// Subprotocol that marks the next offered subprotocol as the token, such as
    /// `framegate.jwt` in `Sec-WebSocket-Protocol: framegate.jwt, <token>`. It must be a
    /// token (RFC 9110 §5.6.2). Default `None`.
    pub protocol_marker: Option<String>,
    /// Cookie that carries the token, such as `framegate_token`. Default `None`.
    pub cookie: Option<String>,
    /// Application subprotocols the server supports, each a token. Default empty.
    pub subprotocols: Vec<String>,
    /// Browser origins allowed to connect (for example `https://chat.example.com`). When
    /// non-empty, a request whose `Origin` is missing or not in the list gets 403, which
    /// stops cross-site pages from riding on a token cookie. Default empty: any origin.
    pub allowed_origins: Vec<String>,
}

impl Default for HandshakeConfig {
    fn default() -> Self {
        Self {
            path: "/ws".to_owned(),
            bearer_header: true,
            query_param: None,
            protocol_marker: None,
            cookie: None,
            subprotocols: Vec::new(),
            allowed_origins: Vec::new(),
        }
    }
}

/// Source of the access token in the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// The configured cookie.
    Cookie,
    /// The `Sec-WebSocket-Protocol` element after the configured marker.
    Protocol,
    /// The configured query parameter.
    Query,
}

/// An upgrade request that passed every check, borrowed from the request buffer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Upgrade<'b> {
    /// Validated `Sec-WebSocket-Key`, for [`write_switching_protocols`].
    pub key: &'b str,
    /// Access token and its source, or `None` when no enabled source is present.
    pub token: Option<(TokenSource, &'b str)>,
    /// The one subprotocol for the 101 response, if any. It is always one the client offered.
    pub protocol: Option<&'b str>,
    /// `Host`, or the authority of an absolute-form target (RFC 9112 §3.2.2).
    pub host: &'b str,
    /// Raw values of the last `X-Forwarded-For` field lines, in order. A proxy either appends
    /// its hop to the last line or adds a line, so the nearest hops are at the end.
    pub forwarded_for: ForwardedFor<'b>,
}

/// The last [`ForwardedFor::MAX_LINES`] `X-Forwarded-For` field lines of a request, in order,
/// without copying or allocating. RFC 9110 §5.3 joins repeated field lines into one list with
/// commas, so together they are the hop list, nearest hop last. Older lines only name hops
/// further away, and a walk from the right that needs them ends at the nearest trusted hop.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct ForwardedFor<'b> {
    lines: [&'b [u8]; ForwardedFor::MAX_LINES],
    len: usize,
}

impl<'b> ForwardedFor<'b> {
    /// Lines kept; a request with more keeps the last ones.
    pub const MAX_LINES: usize = 4;

    fn push(&mut self, value: &'b [u8]) {
        if self.len == Self::MAX_LINES {
            self.lines.rotate_left(1);
            self.len -= 1;
        }
        self.lines[self.len] = value;
        self.len += 1;
    }

    /// Returns the kept lines, oldest first, or an empty slice when the request has none.
    pub fn lines(&self) -> &[&'b [u8]] {
        &self.lines[..self.len]
    }
}

impl fmt::Debug for ForwardedFor<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(
                self.lines()
                    .iter()
                    .map(|line| line.escape_ascii().to_string()),
            )
            .finish()
    }
}

/// Checks that the request has exactly one `Origin` and that it matches an allowed origin
/// (ASCII case-insensitive, as origins serialize scheme and host in lowercase).
fn check_origin(req: &Request<'_>, allowed: &[String]) -> Result<(), RejectReason> {
    let mut origins = req
        .headers
        .iter()
        .filter(|header| header.name.eq_ignore_ascii_case("origin"));
    let origin = match (origins.next(), origins.next()) {
        (None, _) => return Err(RejectReason::MissingOrigin),
        (Some(_), Some(_)) => return Err(RejectReason::DuplicateOrigin),
        (Some(origin), None) => origin.value,
    };
    let listed = allowed
        .iter()
        .any(|candidate| origin.eq_ignore_ascii_case(candidate.as_bytes()));
    if !listed {
        return Err(RejectReason::OriginNotAllowed {
            origin: Excerpt::new(origin),
        });
    }
    Ok(())
}

/// Prints the token's source and length but never the token itself.
impl fmt::Debug for Upgrade<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let token = self.token.map(|(source, token)| (source, token.len()));
        f.debug_struct("Upgrade")
            .field("key", &self.key)
            .field("token_source_and_len", &token)
            .field("protocol", &self.protocol)
            .field("host", &self.host)
            .field("forwarded_for", &self.forwarded_for)
            .finish()
    }
}

/// Checks that `req` is a valid WebSocket upgrade for `cfg`, in the order listed in the
/// module docs, and returns what the 101 response and the authentication step need.
///
/// # Errors
///
/// Returns the [`RejectReason`] of the first failed check. Pass it to [`write_reject`].
pub fn check_request<'b>(
    req: &Request<'b>,
    cfg: &HandshakeConfig,
) -> Result<Upgrade<'b>, RejectReason> {
    // RFC 9110 §2.5: a higher minor version of HTTP/1 is handled as HTTP/1.1, the highest
    // this server implements. HTTP/1.0 has no upgrade (RFC 6455 §4.1 requires 1.1 or higher).
    if req.major_version != 1 || req.minor_version == 0 {
        return Err(RejectReason::UnsupportedHttpVersion {
            major: req.major_version,
            minor: req.minor_version,
        });
    }
    // RFC 6455 §4.2.1 item 1: the method must be GET. Methods are case-sensitive.
    if req.method != "GET" {
        return Err(RejectReason::MethodNotAllowed);
    }
    let target = TargetParts::split(req.target);
    // RFC 9112 §3.2: a request without exactly one valid Host gets 400, whatever its path.
    let fields = Fields::collect(&req.headers);
    let host = fields.host(target.authority)?;
    if target.path != cfg.path {
        return Err(RejectReason::PathNotFound {
            path: Excerpt::path(target.path.as_bytes()),
        });
    }
    fields.check_no_body()?;

    // RFC 6455 §4.2.1 items 3 and 4: `Upgrade` contains `websocket` and `Connection`
    // contains `upgrade`, both case-insensitive.
    if !fields.upgrade_websocket {
        return Err(RejectReason::MissingUpgradeWebsocket);
    }
    if !fields.connection_upgrade {
        return Err(RejectReason::MissingConnectionUpgrade);
    }

    // RFC 6455 §4.2.1 item 6 and §4.4: only version 13 is spoken.
    if !matches!(fields.version, Single::Once(b"13")) {
        return Err(RejectReason::UnsupportedWebSocketVersion);
    }

    // RFC 6455 §10.2: the server may use Origin to refuse connections from other sites.
    if !cfg.allowed_origins.is_empty() {
        check_origin(req, &cfg.allowed_origins)?;
    }

    // RFC 6455 §4.2.1 item 5: the key is a base64-encoded 16-byte nonce, sent once.
    let key = match fields.key {
        Single::Absent => return Err(RejectReason::MissingKey),
        Single::Repeated => return Err(RejectReason::DuplicateKey),
        Single::Once(key) => key::valid_key(key).ok_or(RejectReason::InvalidKey)?,
    };

    let offer = if fields.protocol {
        token::scan_protocols(&req.headers, cfg)?
    } else {
        token::Offer::default()
    };
    let token = token::extract_token(&req.headers, target.query, &offer, fields.present, cfg)?;

    Ok(Upgrade {
        key,
        token,
        protocol: offer.selected(),
        host,
        forwarded_for: fields.forwarded_for,
    })
}

/// Parses `data` as an upgrade request in one read and in two, checks it with two
/// configurations and writes the response. It asserts the invariants a fuzzer should keep:
/// no panic, the same verdict whatever the read pattern, a head no longer than the input,
/// and a response whose head ends. A panic here is a bug in this module. The unit tests run
/// it over sample inputs; the `upgrade_request` fuzz target checks the same invariants.
#[cfg(test)]
fn fuzz_upgrade_request(data: &[u8]) {
    use crate::http::{ParserLimits, RequestParser, Status};

    let limits = ParserLimits::default();
    let one_read = RequestParser::new(limits).parse(data);
    let split = data.len() / 2;
    let mut parser = RequestParser::new(limits);
    let two_reads = match parser.parse(data.get(..split).unwrap_or_default()) {
        Ok(Status::Partial) => parser.parse(data),
        other => other,
    };
    assert_eq!(one_read, two_reads, "verdict depends on the read pattern");

    let verdicts = [HandshakeConfig::default(), fuzz_config()].map(|cfg| match &one_read {
        Ok(Status::Complete(request)) => {
            assert!(
                request.head_len <= data.len(),
                "head is longer than the input"
            );
            check_request(request, &cfg).map(|upgrade| upgrade.key)
        }
        Ok(Status::Partial) => Ok(""),
        Err(error) => Err(RejectReason::from(*error)),
    });
    for verdict in verdicts {
        let mut out = Vec::new();
        match verdict {
            Ok(key) => write_switching_protocols(key, None, &mut out),
            Err(reason) => write_reject(&reason, &mut out),
        }
        assert!(
            out.windows(4).any(|w| w == b"\r\n\r\n"),
            "response head does not end"
        );
    }
}

/// Returns a configuration with every token source and a subprotocol enabled, for the fuzz
/// entry.
#[cfg(test)]
fn fuzz_config() -> HandshakeConfig {
    HandshakeConfig {
        query_param: Some("access_token".to_owned()),
        protocol_marker: Some("framegate.jwt".to_owned()),
        cookie: Some("framegate_token".to_owned()),
        subprotocols: vec!["chat".to_owned()],
        ..HandshakeConfig::default()
    }
}

/// The parts of a request target that the handshake compares (RFC 9112 §3.2).
struct TargetParts<'b> {
    /// Authority of an absolute-form target, which replaces `Host` (RFC 9112 §3.2.2).
    authority: Option<&'b str>,
    /// Path, without the query.
    path: &'b str,
    /// Query after the first `?`, or empty.
    query: &'b str,
}

impl<'b> TargetParts<'b> {
    /// Splits an origin-form target (`/path?query`) or an absolute-form target, which RFC
    /// 9112 §3.2.2 requires a server to accept, with the scheme `http`, `https`, `ws` or
    /// `wss` (some WebSocket clients send the URI they were given). Any other target keeps
    /// its text as the path, so it fails the path comparison.
    fn split(target: &'b str) -> Self {
        let (before_query, query) = target.split_once('?').unwrap_or((target, ""));
        // An origin-form target, the usual case, starts with `/` and names no scheme.
        let rest = if before_query.starts_with('/') {
            None
        } else {
            ["http://", "https://", "ws://", "wss://"]
                .iter()
                .find_map(|scheme| strip_prefix_ignore_case(before_query, scheme))
        };
        let Some(rest) = rest else {
            return Self {
                authority: None,
                path: before_query,
                query,
            };
        };

        let (authority, path) = match rest.find('/') {
            Some(slash) => rest.split_at(slash),
            None => (rest, "/"),
        };
        Self {
            authority: Some(authority),
            path,
            query,
        }
    }
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    text.get(prefix.len()..)
}

/// How often a field that must appear once was seen.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Single<'b> {
    #[default]
    Absent,
    Once(&'b [u8]),
    Repeated,
}

impl<'b> Single<'b> {
    fn add(&mut self, value: &'b [u8]) {
        *self = match self {
            Self::Absent => Self::Once(value),
            Self::Once(_) | Self::Repeated => Self::Repeated,
        };
    }
}

/// Findings of one pass over the header fields, for the checks that follow it.
#[derive(Debug, Default)]
struct Fields<'b> {
    host: Single<'b>,
    key: Single<'b>,
    version: Single<'b>,
    upgrade_websocket: bool,
    connection_upgrade: bool,
    /// First `Content-Length` element with leading zeros removed; empty means zero.
    content_length: Option<&'b [u8]>,
    content_length_invalid: bool,
    transfer_encoding: bool,
    forwarded_for: ForwardedFor<'b>,
    /// Whether any `Sec-WebSocket-Protocol` field line is present.
    protocol: bool,
    present: token::Present,
}

impl<'b> Fields<'b> {
    fn collect(headers: &[Header<'b>]) -> Self {
        let mut fields = Self::default();
        for header in headers {
            let name = header.name;
            let value = header.value;
            // Matching the length first keeps most names to one comparison.
            match name.len() {
                4 if name.eq_ignore_ascii_case("host") => fields.host.add(value),
                6 if name.eq_ignore_ascii_case("cookie") => fields.present.cookie = true,
                7 if name.eq_ignore_ascii_case("upgrade") => {
                    fields.upgrade_websocket |= list_contains_ignore_case(value, b"websocket");
                }
                10 if name.eq_ignore_ascii_case("connection") => {
                    fields.connection_upgrade |= list_contains_ignore_case(value, b"upgrade");
                }
                13 if name.eq_ignore_ascii_case("authorization") => {
                    fields.present.authorization = true;
                }
                14 if name.eq_ignore_ascii_case("content-length") => fields.add_length(value),
                15 if name.eq_ignore_ascii_case("x-forwarded-for") => {
                    fields.forwarded_for.push(value);
                }
                17 if name.eq_ignore_ascii_case("transfer-encoding") => {
                    fields.transfer_encoding = true;
                }
                17 if name.eq_ignore_ascii_case("sec-websocket-key") => fields.key.add(value),
                21 if name.eq_ignore_ascii_case("sec-websocket-version") => {
                    fields.version.add(value);
                }
                22 if name.eq_ignore_ascii_case("sec-websocket-protocol") => {
                    fields.protocol = true;
                }
                _ => {}
            }
        }
        fields
    }

    /// Records one `Content-Length` field line. RFC 9110 §8.6 defines it as `1*DIGIT`, and
    /// RFC 9112 §6.3 lets a recipient accept a list or repeated lines of one value.
    fn add_length(&mut self, value: &'b [u8]) {
        let mut elements = list_elements(value).peekable();
        if elements.peek().is_none() {
            self.content_length_invalid = true;
        }
        for element in elements {
            if !element.iter().all(u8::is_ascii_digit) {
                self.content_length_invalid = true;
                continue;
            }
            let start = element
                .iter()
                .position(|&digit| digit != b'0')
                .unwrap_or(element.len());
            let digits = element.get(start..).unwrap_or_default();
            match self.content_length {
                None => self.content_length = Some(digits),
                Some(first) if first != digits => self.content_length_invalid = true,
                Some(_) => {}
            }
        }
    }

    /// Returns the host for [`Upgrade::host`]. RFC 9112 §3.2 requires exactly one valid
    /// `Host` field line even when an absolute-form target supplies the authority.
    fn host(&self, authority: Option<&'b str>) -> Result<&'b str, RejectReason> {
        let host = match self.host {
            Single::Absent => return Err(RejectReason::MissingHost),
            Single::Repeated => return Err(RejectReason::DuplicateHost),
            Single::Once(host) => host_str(host).ok_or(RejectReason::InvalidHost)?,
        };
        match authority {
            Some(authority) => host_str(authority.as_bytes()).ok_or(RejectReason::InvalidHost),
            None => Ok(host),
        }
    }

    /// Rejects a request that announces a body: the bytes after the head of an upgrade
    /// request are WebSocket frames, so a body would be read as frames, or frames as a body.
    fn check_no_body(&self) -> Result<(), RejectReason> {
        if self.content_length_invalid {
            return Err(RejectReason::InvalidContentLength);
        }
        let nonzero_length = self.content_length.is_some_and(|digits| !digits.is_empty());
        if nonzero_length || self.transfer_encoding {
            return Err(RejectReason::UnexpectedBody);
        }
        Ok(())
    }
}

/// Returns `bytes` as text when it is a non-empty host and optional port.
/// Checks `Host` against RFC 9112 §3.2 (`uri-host [ ":" port ]`, RFC 3986 §3.2.2): an IP
/// literal in brackets (IPv6 or IPvFuture), or an IPv4 address or reg-name without colons,
/// then an optional port of digits no larger than 65535.
fn host_str(bytes: &[u8]) -> Option<&str> {
    if bytes.is_empty() || !all_in(&HOST, bytes) {
        return None;
    }
    let text = std::str::from_utf8(bytes).ok()?;
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (literal, after) = rest.split_once(']')?;
        let literal_ok = literal.parse::<std::net::Ipv6Addr>().is_ok()
            || literal.starts_with(['v', 'V']) && literal.contains('.');
        if !literal_ok {
            return None;
        }
        let port = match after.strip_prefix(':') {
            Some(port) => Some(port),
            None if after.is_empty() => None,
            None => return None,
        };
        (literal, port)
    } else {
        match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.is_empty() || host.contains(['[', ']']) || port.is_some_and(|p| p.contains(':')) {
        return None;
    }
    // An empty port is allowed by the grammar (`port = *DIGIT`).
    if let Some(port) = port
        && !port.is_empty()
        && (!port.bytes().all(|b| b.is_ascii_digit()) || port.parse::<u16>().is_err())
    {
        return None;
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthError;
    use crate::http::{ParseError, ParserLimits, RequestParser, Status};

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    /// Builds a request from a request line and field lines, with CRLF endings.
    fn raw(request_line: &str, fields: &[&str]) -> Vec<u8> {
        let mut bytes = format!("{request_line}\r\n").into_bytes();
        for field in fields {
            bytes.extend_from_slice(field.as_bytes());
            bytes.extend_from_slice(b"\r\n");
        }
        bytes.extend_from_slice(b"\r\n");
        bytes
    }

    /// Returns the field lines of a valid upgrade, with `replace` swapped in for the field of the same
    /// name (or dropped, when the replacement is only a name) and `extra` appended.
    fn fields_with(replace: &[&str], extra: &[&str]) -> Vec<String> {
        let base = [
            "Host: example.com",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
        ];
        let mut fields = Vec::new();
        for line in base {
            let name = line.split(':').next().unwrap_or_default();
            match replace.iter().find(|r| r.split(':').next() == Some(name)) {
                Some(replacement) if replacement.contains(':') => {
                    fields.push((*replacement).to_owned());
                }
                Some(_) => {}
                None => fields.push(line.to_owned()),
            }
        }
        fields.extend(extra.iter().map(|line| (*line).to_owned()));
        fields
    }

    /// Parses `bytes` and checks it with `cfg`, returning the status code (101 on success).
    fn status_of(bytes: &[u8], cfg: &HandshakeConfig) -> u16 {
        match verdict(bytes, cfg) {
            Ok(_) => 101,
            Err(reason) => reason.status(),
        }
    }

    fn verdict(bytes: &[u8], cfg: &HandshakeConfig) -> Result<String, RejectReason> {
        let parsed = RequestParser::new(ParserLimits::default()).parse(bytes)?;
        let Status::Complete(request) = parsed else {
            panic!("request is incomplete: {}", bytes.escape_ascii());
        };
        check_request(&request, cfg).map(|upgrade| format!("{upgrade:?}"))
    }

    fn upgrade_request(target: &str, replace: &[&str], extra: &[&str]) -> Vec<u8> {
        let fields = fields_with(replace, extra);
        let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
        raw(&format!("GET {target} HTTP/1.1"), &fields)
    }

    fn check<'b>(request: &'b [u8], cfg: &HandshakeConfig) -> (Request<'b>, Upgrade<'b>) {
        let parsed = RequestParser::new(ParserLimits::default()).parse(request);
        let Ok(Status::Complete(request)) = parsed else {
            panic!("request did not parse: {parsed:?}");
        };
        let upgrade = check_request(&request, cfg);
        let Ok(upgrade) = upgrade else {
            panic!("request was rejected: {upgrade:?}");
        };
        (request, upgrade)
    }

    fn all_sources() -> HandshakeConfig {
        HandshakeConfig {
            query_param: Some("access_token".to_owned()),
            protocol_marker: Some("framegate.jwt".to_owned()),
            cookie: Some("framegate_token".to_owned()),
            subprotocols: vec!["chat".to_owned()],
            ..HandshakeConfig::default()
        }
    }

    #[test]
    fn check_statuses_table() {
        let cfg = HandshakeConfig::default();
        let long_field = format!("X-Long: {}", "a".repeat(9000));
        let many_fields: Vec<String> = (0..65).map(|i| format!("X-{i}: 1")).collect();
        let many_fields: Vec<&str> = many_fields.iter().map(String::as_str).collect();

        let cases: Vec<(&str, Vec<u8>, u16)> = vec![
            ("valid", upgrade_request("/ws", &[], &[]), 101),
            (
                "valid with query",
                upgrade_request("/ws?a=1", &[], &[]),
                101,
            ),
            (
                "valid absolute-form",
                upgrade_request("http://example.com:80/ws", &[], &[]),
                101,
            ),
            (
                "ws absolute-form",
                upgrade_request("WS://example.com/ws?a=1", &[], &[]),
                101,
            ),
            (
                "wss absolute-form",
                upgrade_request("wss://example.com/ws", &[], &[]),
                101,
            ),
            (
                "HTTP/1.2 as 1.1",
                {
                    let fields = fields_with(&[], &[]);
                    let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
                    raw("GET /ws HTTP/1.2", &fields)
                },
                101,
            ),
            (
                "content-length zero",
                upgrade_request("/ws", &[], &["Content-Length: 0"]),
                101,
            ),
            (
                "repeated zero lengths",
                upgrade_request("/ws", &[], &["Content-Length: 0, 00", "Content-Length: 0"]),
                101,
            ),
            // 1. Parse errors.
            ("bare LF", b"GET /ws HTTP/1.1\nHost: a\n\n".to_vec(), 400),
            (
                "obs-fold",
                upgrade_request("/ws", &[], &["X-A: a", " b"]),
                400,
            ),
            (
                "head too large",
                upgrade_request("/ws", &[], &[&long_field]),
                431,
            ),
            (
                "too many headers",
                upgrade_request("/ws", &[], &many_fields),
                431,
            ),
            // 2. Version, method, path.
            ("HTTP/1.0", raw("GET /ws HTTP/1.0", &["Host: a"]), 505),
            ("HTTP/2.0", raw("GET /ws HTTP/2.0", &["Host: a"]), 505),
            ("fragment", upgrade_request("/ws?a=1#frag", &[], &[]), 400),
            ("HTTP/1.0 POST", raw("POST /ws HTTP/1.0", &["Host: a"]), 505),
            ("POST", raw("POST /ws HTTP/1.1", &["Host: a"]), 405),
            ("lowercase get", raw("get /ws HTTP/1.1", &["Host: a"]), 405),
            (
                "POST wrong path",
                raw("POST /other HTTP/1.1", &["Host: a"]),
                405,
            ),
            ("wrong path", upgrade_request("/other", &[], &[]), 404),
            ("path prefix", upgrade_request("/wss", &[], &[]), 404),
            ("trailing slash", upgrade_request("/ws/", &[], &[]), 404),
            ("asterisk", upgrade_request("*", &[], &[]), 404),
            (
                "ftp scheme",
                upgrade_request("ftp://example.com/ws", &[], &[]),
                404,
            ),
            // 3. Host and body.
            ("no host", upgrade_request("/ws", &["Host"], &[]), 400),
            (
                "two hosts",
                upgrade_request("/ws", &[], &["Host: example.com"]),
                400,
            ),
            ("empty host", upgrade_request("/ws", &["Host:"], &[]), 400),
            (
                "host with path",
                upgrade_request("/ws", &["Host: a/b"], &[]),
                400,
            ),
            (
                "host with userinfo",
                upgrade_request("/ws", &["Host: u@a"], &[]),
                400,
            ),
            (
                "absolute empty authority",
                upgrade_request("http:///ws", &[], &[]),
                400,
            ),
            (
                "body length",
                upgrade_request("/ws", &[], &["Content-Length: 5"]),
                400,
            ),
            (
                "chunked",
                upgrade_request("/ws", &[], &["Transfer-Encoding: chunked"]),
                400,
            ),
            (
                "empty TE",
                upgrade_request("/ws", &[], &["Transfer-Encoding:"]),
                400,
            ),
            (
                "bad length",
                upgrade_request("/ws", &[], &["Content-Length: -1"]),
                400,
            ),
            (
                "empty length",
                upgrade_request("/ws", &[], &["Content-Length:"]),
                400,
            ),
            (
                "hex length",
                upgrade_request("/ws", &[], &["Content-Length: 0x0"]),
                400,
            ),
            (
                "conflicting lengths",
                upgrade_request("/ws", &[], &["Content-Length: 0", "Content-Length: 1"]),
                400,
            ),
            // 4. Upgrade and Connection.
            ("no upgrade", upgrade_request("/ws", &["Upgrade"], &[]), 400),
            (
                "upgrade h2c",
                upgrade_request("/ws", &["Upgrade: h2c"], &[]),
                400,
            ),
            (
                "no connection",
                upgrade_request("/ws", &["Connection"], &[]),
                400,
            ),
            (
                "connection keep-alive",
                upgrade_request("/ws", &["Connection: keep-alive"], &[]),
                400,
            ),
            (
                "connection not a list",
                upgrade_request("/ws", &["Connection: keep-alive upgrade"], &[]),
                400,
            ),
            // 5. Version.
            (
                "no version",
                upgrade_request("/ws", &["Sec-WebSocket-Version"], &[]),
                426,
            ),
            (
                "version 8",
                upgrade_request("/ws", &["Sec-WebSocket-Version: 8"], &[]),
                426,
            ),
            (
                "version list",
                upgrade_request("/ws", &["Sec-WebSocket-Version: 13, 8"], &[]),
                426,
            ),
            (
                "version twice",
                upgrade_request("/ws", &[], &["Sec-WebSocket-Version: 13"]),
                426,
            ),
            // 6. Key.
            (
                "no key",
                upgrade_request("/ws", &["Sec-WebSocket-Key"], &[]),
                400,
            ),
            (
                "two keys",
                upgrade_request("/ws", &[], &[&format!("Sec-WebSocket-Key: {KEY}")]),
                400,
            ),
            (
                "short key",
                upgrade_request("/ws", &["Sec-WebSocket-Key: dGhlIHNhbXBsZQ=="], &[]),
                400,
            ),
            (
                "non-canonical key",
                upgrade_request("/ws", &["Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZR=="], &[]),
                400,
            ),
            // 7. Tokens and subprotocols.
            (
                "bad protocol element",
                upgrade_request("/ws", &[], &["Sec-WebSocket-Protocol: a b"]),
                400,
            ),
            (
                "bearer with two words",
                upgrade_request("/ws", &[], &["Authorization: Bearer a b"]),
                401,
            ),
            (
                "empty bearer",
                upgrade_request("/ws", &[], &["Authorization: Bearer"]),
                401,
            ),
            ("no token", upgrade_request("/ws", &[], &[]), 101),
        ];
        for (name, request, expected) in &cases {
            assert_eq!(status_of(request, &cfg), *expected, "{name}");
        }
    }

    #[test]
    fn check_rejects_each_reason_in_documented_order() {
        let cfg = HandshakeConfig::default();
        let cases: Vec<(Vec<u8>, RejectReason)> = vec![
            (
                raw("POST /x HTTP/1.0", &[]),
                RejectReason::UnsupportedHttpVersion { major: 1, minor: 0 },
            ),
            (raw("POST /x HTTP/1.1", &[]), RejectReason::MethodNotAllowed),
            (raw("GET /x HTTP/1.1", &[]), RejectReason::MissingHost),
            (
                raw("GET /x HTTP/1.1", &["Host: a"]),
                RejectReason::PathNotFound {
                    path: Excerpt::new(b"/x"),
                },
            ),
            (
                raw("GET /ws HTTP/1.1", &["Content-Length: 1"]),
                RejectReason::MissingHost,
            ),
            (
                raw("GET /ws HTTP/1.1", &["Host: a", "Host: a"]),
                RejectReason::DuplicateHost,
            ),
            (
                raw("GET /ws HTTP/1.1", &["Host: a", "Content-Length: x"]),
                RejectReason::InvalidContentLength,
            ),
            (
                raw("GET /ws HTTP/1.1", &["Host: a", "Content-Length: 1"]),
                RejectReason::UnexpectedBody,
            ),
            (
                raw("GET /ws HTTP/1.1", &["Host: a", "Connection: upgrade"]),
                RejectReason::MissingUpgradeWebsocket,
            ),
            (
                raw("GET /ws HTTP/1.1", &["Host: a", "Upgrade: websocket"]),
                RejectReason::MissingConnectionUpgrade,
            ),
            (
                raw(
                    "GET /ws HTTP/1.1",
                    &["Host: a", "Upgrade: websocket", "Connection: upgrade"],
                ),
                RejectReason::UnsupportedWebSocketVersion,
            ),
            (
                upgrade_request(
                    "/ws",
                    &["Sec-WebSocket-Key"],
                    &["Authorization: Bearer a b"],
                ),
                RejectReason::MissingKey,
            ),
            (
                upgrade_request("/ws", &[], &[&format!("Sec-WebSocket-Key: {KEY}")]),
                RejectReason::DuplicateKey,
            ),
            (
                upgrade_request("/ws", &["Sec-WebSocket-Key: x"], &[]),
                RejectReason::InvalidKey,
            ),
            (
                upgrade_request("/ws", &[], &["Sec-WebSocket-Protocol: ,,a/b"]),
                RejectReason::InvalidSubprotocol,
            ),
            (
                upgrade_request("/ws", &[], &["Authorization: Bearer a b"]),
                RejectReason::InvalidToken(AuthError::Malformed),
            ),
        ];
        for (request, expected) in cases {
            assert_eq!(
                verdict(&request, &cfg),
                Err(expected),
                "{}",
                request.escape_ascii()
            );
        }
    }

    #[test]
    fn check_parse_errors_map_through_from() {
        let cfg = HandshakeConfig::default();
        let error = verdict(b"GET /ws HTTP/1.1\r\nHost : a\r\n\r\n", &cfg);
        assert_eq!(
            error,
            Err(RejectReason::Parse(ParseError::WhitespaceBeforeColon))
        );
    }

    #[test]
    fn check_returns_upgrade_fields() {
        let cfg = all_sources();
        let request = upgrade_request(
            "/ws?x=1",
            &["Host: example.com:8443"],
            &[
                "X-Forwarded-For: 10.0.0.1",
                "x-forwarded-for: 192.0.2.7, 198.51.100.2",
                "Sec-WebSocket-Protocol: other, chat",
            ],
        );
        let (_, upgrade) = check(&request, &cfg);
        assert_eq!(upgrade.key, KEY);
        assert_eq!(upgrade.token, None);
        assert_eq!(upgrade.protocol, Some("chat"));
        assert_eq!(upgrade.host, "example.com:8443");
        assert_eq!(
            upgrade.forwarded_for.lines(),
            [&b"10.0.0.1"[..], &b"192.0.2.7, 198.51.100.2"[..]]
        );
    }

    #[test]
    fn forwarded_for_keeps_the_last_lines() {
        let mut forwarded = ForwardedFor::default();
        let values: [&[u8]; 6] = [b"1", b"2", b"3", b"4", b"5", b"6"];
        for value in values {
            forwarded.push(value);
        }
        assert_eq!(forwarded.lines(), &values[6 - ForwardedFor::MAX_LINES..]);
        assert_eq!(format!("{forwarded:?}"), r#"["3", "4", "5", "6"]"#);
    }

    #[test]
    fn check_absolute_form_uses_target_authority() {
        let cfg = HandshakeConfig::default();
        let request = upgrade_request("HTTPS://Upstream.example:8443/ws?x", &[], &[]);
        let (_, upgrade) = check(&request, &cfg);
        assert_eq!(upgrade.host, "Upstream.example:8443");

        let root = HandshakeConfig {
            path: "/".to_owned(),
            ..HandshakeConfig::default()
        };
        let request = upgrade_request("http://a.example", &[], &[]);
        assert_eq!(check(&request, &root).1.host, "a.example");
    }

    #[test]
    fn check_joins_list_field_lines() {
        let cfg = HandshakeConfig::default();
        let request = upgrade_request(
            "/ws",
            &["Connection: keep-alive", "Upgrade: h2c"],
            &["connection: , UPGRADE", "UPGRADE: foo/2,\tWebSocket "],
        );
        assert_eq!(status_of(&request, &cfg), 101);
    }

    #[test]
    fn check_token_precedence_bearer_protocol_query_cookie() {
        let cfg = all_sources();
        let bearer = "Authorization: Bearer from.bearer";
        let protocol = "Sec-WebSocket-Protocol: framegate.jwt, from.protocol";
        let cookie = "Cookie: framegate_token=from.cookie";
        let query = "/ws?access_token=from.query";
        let cases = [
            (
                query,
                vec![bearer, protocol, cookie],
                TokenSource::Bearer,
                "from.bearer",
            ),
            (
                query,
                vec![protocol, cookie],
                TokenSource::Protocol,
                "from.protocol",
            ),
            (query, vec![cookie], TokenSource::Query, "from.query"),
            ("/ws", vec![cookie], TokenSource::Cookie, "from.cookie"),
        ];
        for (target, extra, source, token) in cases {
            let request = upgrade_request(target, &[], &extra);
            let (_, upgrade) = check(&request, &cfg);
            assert_eq!(upgrade.token, Some((source, token)), "{extra:?}");
        }
    }

    #[test]
    fn check_disabled_sources_are_ignored() {
        let cfg = HandshakeConfig {
            bearer_header: false,
            ..HandshakeConfig::default()
        };
        let request = upgrade_request(
            "/ws?access_token=q",
            &[],
            &[
                "Authorization: Basic x",
                "Cookie: framegate_token=c",
                "Sec-WebSocket-Protocol: framegate.jwt, p",
            ],
        );
        let (_, upgrade) = check(&request, &cfg);
        assert_eq!(upgrade.token, None);
        assert_eq!(upgrade.protocol, None);
    }

    #[test]
    fn check_invalid_source_stops_search() {
        let cfg = all_sources();
        let cases: &[(&str, &[&str])] = &[
            ("/ws?access_token=ok", &["Authorization: Bearer "]),
            ("/ws?access_token=ok", &["Authorization: Bearerok"]),
            (
                "/ws?access_token=ok",
                &["Sec-WebSocket-Protocol: framegate.jwt"],
            ),
            ("/ws?access_token=", &["Cookie: framegate_token=ok"]),
            ("/ws?access_token=a&access_token=b", &[]),
            ("/ws", &["Cookie: framegate_token=a b"]),
        ];
        for (target, extra) in cases {
            let request = upgrade_request(target, &[], extra);
            assert_eq!(
                verdict(&request, &cfg),
                Err(RejectReason::InvalidToken(AuthError::Malformed)),
                "{target} {extra:?}"
            );
        }
    }

    #[test]
    fn check_origin_verdicts_name_the_problem() {
        let cfg = HandshakeConfig {
            allowed_origins: vec!["https://chat.example.com".to_owned()],
            ..HandshakeConfig::default()
        };
        let long = format!("https://{}.example", "a".repeat(200));
        let long_line = format!("Origin: {long}");
        let cases: [(&[&str], _); 5] = [
            (&["Origin: HTTPS://Chat.Example.com"], Ok(())),
            (&[], Err(RejectReason::MissingOrigin)),
            (
                &["Origin: https://chat.example.com", "Origin: https://x"],
                Err(RejectReason::DuplicateOrigin),
            ),
            (
                &["Origin: https://evil.example"],
                Err(RejectReason::OriginNotAllowed {
                    origin: Excerpt::new(b"https://evil.example"),
                }),
            ),
            (
                &[&long_line],
                Err(RejectReason::OriginNotAllowed {
                    origin: Excerpt::new(long.as_bytes()),
                }),
            ),
        ];
        for (extra, expected) in cases {
            let request = upgrade_request("/ws", &[], extra);
            assert_eq!(verdict(&request, &cfg).map(|_| ()), expected, "{extra:?}");
        }
    }

    #[test]
    fn check_other_authorization_scheme_falls_through() {
        let cfg = all_sources();
        let basic = "Authorization: Basic dXNlcjpwYXNz";
        type Case<'a> = (&'a str, &'a [&'a str], Option<(TokenSource, &'a str)>);
        let cases: &[Case<'_>] = &[
            (
                "/ws?access_token=q",
                &[basic],
                Some((TokenSource::Query, "q")),
            ),
            (
                "/ws",
                &[basic, "Cookie: framegate_token=c"],
                Some((TokenSource::Cookie, "c")),
            ),
            (
                "/ws",
                &[basic, "Sec-WebSocket-Protocol: framegate.jwt, p"],
                Some((TokenSource::Protocol, "p")),
            ),
            ("/ws", &[basic], None),
        ];
        for (target, extra, token) in cases {
            let request = upgrade_request(target, &[], extra);
            let (_, upgrade) = check(&request, &cfg);
            assert_eq!(upgrade.token, *token, "{target} {extra:?}");
        }
    }

    #[test]
    fn check_marker_answers_marker_and_never_the_token() {
        let cfg = all_sources();
        let token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1In0.c2ln";
        let request = upgrade_request(
            "/ws",
            &[],
            &[&format!(
                "Sec-WebSocket-Protocol: chat, framegate.jwt, {token}"
            )],
        );
        let (_, upgrade) = check(&request, &cfg);
        assert_eq!(upgrade.token, Some((TokenSource::Protocol, token)));
        assert_eq!(upgrade.protocol, Some("framegate.jwt"));

        let mut out = Vec::new();
        write_switching_protocols(upgrade.key, upgrade.protocol, &mut out);
        let response = String::from_utf8_lossy(&out);
        assert!(
            response.contains("Sec-WebSocket-Protocol: framegate.jwt\r\n"),
            "{response}"
        );
        assert!(!response.contains(token), "{response}");
        assert!(!format!("{upgrade:?}").contains(token));
    }

    #[test]
    fn check_marker_with_bearer_still_answers_marker() {
        let cfg = all_sources();
        let request = upgrade_request(
            "/ws",
            &[],
            &[
                "Authorization: Bearer b",
                "Sec-WebSocket-Protocol: framegate.jwt",
            ],
        );
        let (_, upgrade) = check(&request, &cfg);
        assert_eq!(upgrade.token, Some((TokenSource::Bearer, "b")));
        assert_eq!(upgrade.protocol, Some("framegate.jwt"));
    }

    #[test]
    fn check_accepted_request_gets_valid_switching_response() {
        let cfg = all_sources();
        let request = upgrade_request("/ws", &[], &["Sec-WebSocket-Protocol: chat"]);
        let (parsed, upgrade) = check(&request, &cfg);
        let mut out = Vec::new();
        write_switching_protocols(upgrade.key, upgrade.protocol, &mut out);

        // The response head is valid HTTP/1.1; reuse the request parser on a request line
        // built from its field lines to check their syntax.
        let text = String::from_utf8(out).unwrap_or_default();
        let (status_line, fields) = text.split_once("\r\n").unwrap_or_default();
        assert_eq!(status_line, "HTTP/1.1 101 Switching Protocols");
        let as_request = format!("GET / HTTP/1.1\r\n{fields}");
        let reparsed = RequestParser::new(ParserLimits::default()).parse(as_request.as_bytes());
        let Ok(Status::Complete(head)) = reparsed else {
            panic!("response fields do not parse: {reparsed:?}");
        };
        let field = |name| head.header_values(name).collect::<Vec<_>>();
        assert_eq!(field("Upgrade"), [b"websocket"]);
        assert_eq!(field("Connection"), [b"Upgrade"]);
        assert_eq!(
            field("Sec-WebSocket-Accept"),
            [b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="]
        );
        assert_eq!(field("Sec-WebSocket-Protocol"), [b"chat"]);
        assert_eq!(head.head_len, as_request.len());
        assert_eq!(parsed.head_len, request.len());
    }

    #[test]
    fn check_rejected_requests_get_parseable_responses() {
        let cfg = HandshakeConfig::default();
        let requests = [
            raw("GET /ws HTTP/1.0", &[]),
            raw("PUT /ws HTTP/1.1", &[]),
            upgrade_request("/ws", &["Sec-WebSocket-Version: 7"], &[]),
            upgrade_request("/ws", &[], &["Authorization: Bearer a b"]),
        ];
        for request in requests {
            let Err(reason) = verdict(&request, &cfg) else {
                panic!("request was accepted: {}", request.escape_ascii());
            };
            let mut out = Vec::new();
            write_reject(&reason, &mut out);
            let text = String::from_utf8(out).unwrap_or_default();
            let (head, body) = text.split_once("\r\n\r\n").unwrap_or_default();
            let (status_line, fields) = head.split_once("\r\n").unwrap_or_default();
            assert!(status_line.starts_with(&format!("HTTP/1.1 {} ", reason.status())));
            let as_request = format!("GET / HTTP/1.1\r\n{fields}\r\n\r\n");
            let reparsed = RequestParser::new(ParserLimits::default()).parse(as_request.as_bytes());
            let Ok(Status::Complete(head)) = reparsed else {
                panic!("response fields do not parse: {reparsed:?}");
            };
            let length = head
                .header_values("Content-Length")
                .next()
                .unwrap_or_default();
            assert_eq!(length, body.len().to_string().as_bytes(), "{reason:?}");
            assert!(
                body.ends_with('\n') && body.lines().count() == 1,
                "{reason:?}"
            );
        }
    }

    #[test]
    fn fuzz_upgrade_request_accepts_sample_inputs() {
        let mut inputs = vec![
            Vec::new(),
            b"GET".to_vec(),
            b"\x00\xff\r\n\r\n".to_vec(),
            upgrade_request("/ws", &[], &[]),
            upgrade_request(
                "/ws?access_token=a",
                &[],
                &["Sec-WebSocket-Protocol: framegate.jwt"],
            ),
        ];
        let valid = upgrade_request("/ws", &[], &["Cookie: framegate_token=x"]);
        for cut in [1, 17, 40, valid.len() - 1] {
            inputs.push(valid.get(..cut).unwrap_or_default().to_vec());
        }
        inputs.push(valid);
        for input in inputs {
            fuzz_upgrade_request(&input);
        }
    }

    #[test]
    fn host_syntax_follows_rfc_9112() {
        for host in [
            "example.com",
            "example.com:8080",
            "x:",
            "127.0.0.1:1",
            "[::1]",
            "[::1]:443",
            "[v1.x]",
        ] {
            assert!(host_str(host.as_bytes()).is_some(), "{host} is valid");
        }
        for host in [
            "::1", "[::1", "x:abc", "x:99999", "a:1:2", "[::1]x", "[nope]", ":80",
        ] {
            assert!(host_str(host.as_bytes()).is_none(), "{host} is invalid");
        }
    }
}
