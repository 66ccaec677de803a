//! Client side of the wire for the load generator: the upgrade request and response head
//! (RFC 6455 §4.1), masked client frames (§5.2, §5.3), and the chat messages it sends.
//!
//! Everything here is pure: it writes into and reads from caller-owned buffers. Server frames
//! are decoded with [`crate::frame::decode_header`] in the client role, which rejects masked
//! server frames (§5.1). Message ids have the form `<connection>-<sequence>` so a reply, a
//! relayed copy or an error frame can be matched to the message that caused it.
#![forbid(unsafe_code)]

use crate::http::{list_contains_ignore_case, list_elements};
use std::io::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::TokenIn;
use super::url::WsUrl;
use crate::frame::{DecodeError, FrameHeader, HeaderLimits, OpCode, apply_mask, decode_header};

/// Largest response head accepted before the handshake counts as failed.
pub const MAX_RESPONSE_HEAD_BYTES: usize = 16_384;

/// Fixed value of the `conversation_id` field in generated chat messages.
const CONVERSATION_ID: &str = "c";

/// Separator that ends the preceding string and opens the `content` member's string value.
const CONTENT_KEY: &[u8] = b"\",\"content\":\"";

/// Separator that ends the preceding string and starts the `to` member.
const TO_KEY: &[u8] = b"\",\"to\":";

/// Identifies one generated message: the global connection index and the sequence number
/// within that virtual user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageId {
    pub conn: u32,
    pub seq: u64,
}

/// What a generated message is meant to trigger on a framegate server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// Valid text: a JSON chat message, or plain text with `--raw`.
    Valid,
    /// A JSON chat message padded to `bytes`, one byte over the server's message cap.
    Oversize { bytes: usize },
    /// A JSON object without its closing brace: `invalid_json`, and no id can be echoed.
    MalformedSyntax,
    /// A JSON object that repeats the `content` key: `invalid_json` with the id echoed.
    DuplicateKey,
}

/// Writes the HTTP/1.1 upgrade request (RFC 6455 §4.1) for `url` with the given
/// `Sec-WebSocket-Key`, placing `token` as `placement` says.
pub fn write_upgrade_request(
    out: &mut Vec<u8>,
    url: &WsUrl,
    key: &str,
    token: Option<&str>,
    placement: &TokenPlacement,
) {
    let target = match (token, placement) {
        (
            Some(token),
            TokenPlacement {
                kind: TokenIn::Query,
                query_param,
                ..
            },
        ) => url.with_query_param(query_param, token),
        _ => url.path_and_query.clone(),
    };
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "GET {target} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n",
        url.authority
    );
    match (token, placement.kind) {
        (Some(token), TokenIn::Header) => {
            let _ = write!(out, "Authorization: Bearer {token}\r\n");
        }
        (Some(token), TokenIn::Protocol) => {
            let _ = write!(
                out,
                "Sec-WebSocket-Protocol: {}, {token}\r\n",
                placement.protocol_marker
            );
        }
        (Some(_), TokenIn::Query) | (None, _) => {}
    }
    out.extend_from_slice(b"\r\n");
}

/// Where the upgrade request carries the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPlacement {
    pub kind: TokenIn,
    /// Query parameter name for [`TokenIn::Query`].
    pub query_param: String,
    /// Subprotocol offered before the token for [`TokenIn::Protocol`].
    pub protocol_marker: String,
}

/// Encodes a 16-byte nonce as a `Sec-WebSocket-Key` value (RFC 6455 §4.1, item 7).
pub fn websocket_key(nonce: [u8; 16]) -> String {
    STANDARD.encode(nonce)
}

/// The parts of a response head the load generator checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    /// Minor HTTP version: 1 for HTTP/1.1, 0 for HTTP/1.0.
    pub minor_version: u8,
    /// Bytes up to and including the blank line; frame bytes may follow.
    pub head_len: usize,
    /// `Sec-WebSocket-Accept` value, if present.
    pub accept: Option<String>,
    /// Whether `Upgrade` is `websocket`, compared ASCII case-insensitively.
    pub upgrade_websocket: bool,
    /// Whether `Connection` lists the `upgrade` option.
    pub connection_upgrade: bool,
    /// Subprotocols in `Sec-WebSocket-Protocol`, from every field line of that name.
    pub protocols: Vec<String>,
    /// Whether `Sec-WebSocket-Extensions` names any extension.
    pub extensions: bool,
}

/// Why a response head could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("response status line is not `HTTP/1.1 <3-digit code> ...` (or HTTP/1.0)")]
    StatusLine,
    #[error("response head exceeds {max} bytes without a blank line")]
    TooLarge { max: usize },
}

/// Failure of a `101` response to complete the opening handshake (RFC 6455 §4.1, the
/// client's checks of the server's response).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("101 response over HTTP/1.0; an upgrade needs HTTP/1.1")]
    Version,
    #[error("101 response without `Upgrade: websocket`")]
    Upgrade,
    #[error("101 response whose `Connection` does not list `upgrade`")]
    Connection,
    #[error("Sec-WebSocket-Accept is missing or does not match the key")]
    Accept,
    #[error("Sec-WebSocket-Extensions names an extension the client did not offer")]
    Extension,
    #[error("Sec-WebSocket-Protocol is not one of the subprotocols the client offered")]
    Protocol,
}

/// Parses the response head at the start of `buf`. Returns `Ok(None)` until the blank line
/// that ends the head has arrived.
pub fn parse_response_head(buf: &[u8]) -> Result<Option<ResponseHead>, HeadError> {
    let Some((end, head_len)) = head_end(buf) else {
        if buf.len() > MAX_RESPONSE_HEAD_BYTES {
            return Err(HeadError::TooLarge {
                max: MAX_RESPONSE_HEAD_BYTES,
            });
        }
        return Ok(None);
    };
    let head = buf.get(..end).unwrap_or_default();
    let mut lines = head.split(|&byte| byte == b'\n').map(trim_cr);
    let (minor_version, status) =
        parse_status_line(lines.next().unwrap_or_default()).ok_or(HeadError::StatusLine)?;

    let mut parsed = ResponseHead {
        status,
        minor_version,
        head_len,
        ..ResponseHead::default()
    };
    for line in lines {
        let Some(colon) = line.iter().position(|&byte| byte == b':') else {
            continue;
        };
        let (name, value) = line.split_at(colon);
        let value = value.get(1..).unwrap_or_default().trim_ascii();
        if name.eq_ignore_ascii_case(b"sec-websocket-accept") {
            parsed.accept = Some(String::from_utf8_lossy(value).into_owned());
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            parsed.upgrade_websocket = value.eq_ignore_ascii_case(b"websocket");
        } else if name.eq_ignore_ascii_case(b"connection") {
            parsed.connection_upgrade |= list_contains_ignore_case(value, b"upgrade");
        } else if name.eq_ignore_ascii_case(b"sec-websocket-protocol") {
            parsed.protocols.extend(
                list_elements(value).map(|item| String::from_utf8_lossy(item).into_owned()),
            );
        } else if name.eq_ignore_ascii_case(b"sec-websocket-extensions") {
            parsed.extensions |= list_elements(value).next().is_some();
        }
    }
    Ok(Some(parsed))
}

/// Finds the empty line that ends a head. Lines end in CRLF or, as RFC 9112 §2.2 lets a
/// recipient accept, in a bare LF. Returns where the last field line ends and the length
/// of the head with its empty line.
fn head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut line_start = 0;
    for (at, _) in buf.iter().enumerate().filter(|&(_, &byte)| byte == b'\n') {
        let line = buf.get(line_start..at).unwrap_or_default();
        if line_start > 0 && trim_cr(line).is_empty() {
            return Some((line_start.saturating_sub(1), at + 1));
        }
        line_start = at + 1;
    }
    None
}

/// Reads `HTTP/1.<0|1> <3 digits>`, followed by a space and a reason phrase or by nothing
/// (RFC 9112 §4), and returns the minor version and the status code.
fn parse_status_line(line: &[u8]) -> Option<(u8, u16)> {
    let rest = line.strip_prefix(b"HTTP/1.")?;
    let (&minor, rest) = rest.split_first()?;
    let minor_version = match minor {
        b'0' => 0,
        b'1' => 1,
        _ => return None,
    };
    let rest = rest.strip_prefix(b" ")?;
    let (code, after) = rest.split_at_checked(3)?;
    if !code.iter().all(u8::is_ascii_digit) || !(after.is_empty() || after.starts_with(b" ")) {
        return None;
    }
    let status = code
        .iter()
        .fold(0u16, |status, digit| status * 10 + u16::from(digit - b'0'));
    Some((minor_version, status))
}

/// Checks a `101` response against the request it replies to (RFC 6455 §4.1): HTTP/1.1,
/// `Upgrade: websocket`, `Connection: upgrade`, the accept value for `key`, no extension
/// (the client offers none), and at most one subprotocol, one of `offered`.
pub fn check_switch(
    head: &ResponseHead,
    key: &str,
    offered: &[&str],
) -> Result<(), HandshakeError> {
    if head.minor_version != 1 {
        return Err(HandshakeError::Version);
    }
    if !head.upgrade_websocket {
        return Err(HandshakeError::Upgrade);
    }
    if !head.connection_upgrade {
        return Err(HandshakeError::Connection);
    }
    if !accept_matches(key, head.accept.as_deref()) {
        return Err(HandshakeError::Accept);
    }
    if head.extensions {
        return Err(HandshakeError::Extension);
    }
    match head.protocols.as_slice() {
        [] => Ok(()),
        [chosen] if offered.contains(&chosen.as_str()) => Ok(()),
        _ => Err(HandshakeError::Protocol),
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Returns true when `accept` is the `Sec-WebSocket-Accept` value for `key` (RFC 6455
/// §4.1, client requirement 4 on the response).
pub fn accept_matches(key: &str, accept: Option<&str>) -> bool {
    accept.is_some_and(|accept| accept.as_bytes() == crate::handshake::accept_key(key))
}

/// Appends one masked frame with FIN set (RFC 6455 §5.2): a client must mask every frame it
/// sends with a fresh key (§5.3).
pub fn encode_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8], key: [u8; 4]) {
    encode_frame_with(out, opcode, key, |out| out.extend_from_slice(payload));
}

/// Appends one masked frame with FIN set whose payload `write` appends to `out`, and returns
/// the payload length. The payload is written in place, not copied from a buffer of its own.
pub fn encode_frame_with(
    out: &mut Vec<u8>,
    opcode: OpCode,
    key: [u8; 4],
    write: impl FnOnce(&mut Vec<u8>),
) -> usize {
    // The payload goes after room for the shortest masked header (two bytes and the key), and
    // moves right when its length needs the 16- or 64-bit form (§5.2).
    const SHORT_HEADER: usize = 6;
    let start = out.len();
    out.extend_from_slice(&[0; SHORT_HEADER]);
    write(out);
    let len = out.len() - start - SHORT_HEADER;

    let mut header = [0u8; 14];
    header[0] = 0x80 | opcode as u8;
    let length_end = if let Ok(short) = u8::try_from(len)
        && short <= 125
    {
        header[1] = 0x80 | short;
        2
    } else if let Ok(medium) = u16::try_from(len) {
        header[1] = 0x80 | 126;
        header[2..4].copy_from_slice(&medium.to_be_bytes());
        4
    } else {
        header[1] = 0x80 | 127;
        header[2..10].copy_from_slice(&u64::try_from(len).unwrap_or(u64::MAX).to_be_bytes());
        10
    };
    let header_len = length_end + key.len();
    header[length_end..header_len].copy_from_slice(&key);

    let payload_at = start + header_len;
    if header_len > SHORT_HEADER {
        out.resize(payload_at + len, 0);
        out.copy_within(start + SHORT_HEADER..start + SHORT_HEADER + len, payload_at);
    }
    out[start..payload_at].copy_from_slice(&header[..header_len]);
    apply_mask(&mut out[payload_at..], key, 0);
    len
}

/// Appends a masked close frame carrying `code` and no reason (RFC 6455 §5.5.1).
pub fn encode_close(out: &mut Vec<u8>, code: u16, key: [u8; 4]) {
    encode_frame(out, OpCode::Close, &code.to_be_bytes(), key);
}

/// Status code of a close frame payload, or `None` when it carries none (RFC 6455 §7.1.5).
pub fn close_code(payload: &[u8]) -> Option<u16> {
    payload
        .first_chunk::<2>()
        .map(|&code| u16::from_be_bytes(code))
}

/// Decodes the server frame at the start of `buf`. Returns the header once the whole frame,
/// payload included, is in `buf`, and `Ok(None)` before that.
pub fn next_frame(
    buf: &[u8],
    max_payload_bytes: usize,
) -> Result<Option<FrameHeader>, DecodeError> {
    let limits = HeaderLimits {
        role: crate::frame::Role::Client,
        max_payload_bytes,
        allow_binary: true,
    };
    let Some(header) = decode_header(buf, &limits)? else {
        return Ok(None);
    };
    // decode_header caps payload_len at max_payload_bytes, which is a usize.
    let payload_len = usize::try_from(header.payload_len).unwrap_or(usize::MAX);
    let complete = header
        .header_len
        .checked_add(payload_len)
        .is_some_and(|end| end <= buf.len());
    Ok(complete.then_some(header))
}

/// Builds the payloads of generated messages.
#[derive(Debug, Clone)]
pub struct MessageShape {
    /// Target payload size in bytes. A JSON message is never shorter than its fields, so small
    /// targets give slightly larger messages.
    pub size: usize,
    /// Plain text `<conn>-<seq>` padded with `x`, for servers that do not check JSON.
    pub raw: bool,
}

/// Appends `<conn>-<seq>`. It runs once per message sent, and in a perf profile of a 64-byte
/// echo run formatting these ids with `write!` took roughly 7 % of the load generator's CPU.
fn write_id(out: &mut Vec<u8>, id: MessageId) {
    let mut number = itoa::Buffer::new();
    out.extend_from_slice(number.format(id.conn).as_bytes());
    out.push(b'-');
    out.extend_from_slice(number.format(id.seq).as_bytes());
}

impl MessageShape {
    /// Appends the payload of message `id` addressed to `to_json` (a JSON string literal,
    /// quotes included).
    pub fn write(&self, out: &mut Vec<u8>, id: MessageId, to_json: &str, body: Body) {
        if self.raw {
            let start = out.len();
            write_id(out, id);
            out.push(b' ');
            let written = out.len() - start;
            out.resize(start + written.max(self.size), b'x');
            return;
        }

        let target = match body {
            Body::Oversize { bytes } => bytes,
            Body::Valid | Body::MalformedSyntax | Body::DuplicateKey => self.size,
        };
        let start = out.len();
        out.extend_from_slice(b"{\"id\":\"");
        write_id(out, id);
        out.extend_from_slice(b"\",\"conversation_id\":\"");
        out.extend_from_slice(CONVERSATION_ID.as_bytes());
        out.extend_from_slice(CONTENT_KEY);
        // What follows the padding: a second content member for a duplicate key, the `to`
        // member, and the closing brace that a syntax error leaves out.
        let duplicate: &[u8] = if body == Body::DuplicateKey {
            CONTENT_KEY
        } else {
            b""
        };
        let end: &[u8] = if body == Body::MalformedSyntax {
            b""
        } else {
            b"}"
        };
        let tail_len = duplicate.len() + TO_KEY.len() + to_json.len() + end.len();
        let fixed = out.len() - start + tail_len;
        out.resize(out.len() + target.saturating_sub(fixed), b'x');
        out.extend_from_slice(duplicate);
        out.extend_from_slice(TO_KEY);
        out.extend_from_slice(to_json.as_bytes());
        out.extend_from_slice(end);
    }
}

/// Finds the generated id in a reply, an echo or a relayed copy: the `"id":"<conn>-<seq>"`
/// member of a JSON message, or the leading `<conn>-<seq>` of a raw one.
pub fn parse_id(payload: &[u8]) -> Option<MessageId> {
    let start = if payload.first() == Some(&b'{') {
        id_value_start(payload)?
    } else {
        0
    };
    let rest = payload.get(start..)?;
    let (id, len) = leading_id(rest)?;
    // The id ends at a byte that is neither a digit (taken by `leading_id`) nor a dash.
    if rest.get(len) == Some(&b'-') {
        return None;
    }
    Some(id)
}

/// Returns the offset just inside the opening quote of the first `"id"` member's string
/// value, allowing JSON whitespace (RFC 8259 §2) around the colon, as servers that
/// re-serialize a message may add it.
fn id_value_start(payload: &[u8]) -> Option<usize> {
    const KEY: &[u8] = b"\"id\"";
    // Returns the offset of the first byte at or after `at` that is not JSON whitespace.
    let skip_space = |at: usize| {
        let rest = payload.get(at..).unwrap_or_default();
        at + rest
            .iter()
            .take_while(|byte| matches!(byte, b' ' | b'\t' | b'\n' | b'\r'))
            .count()
    };
    let mut from = 0;
    loop {
        let key = from
            + payload
                .get(from..)?
                .windows(KEY.len())
                .position(|w| w == KEY)?;
        let colon = skip_space(key + KEY.len());
        if payload.get(colon) == Some(&b':') {
            let at = skip_space(colon + 1);
            if payload.get(at) == Some(&b'"') {
                return Some(at + 1);
            }
        }
        from = key + 1;
    }
}

/// Parses `<conn>-<seq>`.
pub fn parse_id_text(text: &str) -> Option<MessageId> {
    let bytes = text.as_bytes();
    leading_id(bytes)
        .filter(|&(_, len)| len == bytes.len())
        .map(|(id, _)| id)
}

/// Reads `<conn>-<seq>` at the start of `bytes`, both plain decimal numbers that fit their
/// type, in one pass. Returns the id and how many bytes it takes.
fn leading_id(bytes: &[u8]) -> Option<(MessageId, usize)> {
    let (conn, dash) = leading_decimal(bytes)?;
    if bytes.get(dash) != Some(&b'-') {
        return None;
    }
    let (seq, digits) = leading_decimal(bytes.get(dash + 1..)?)?;
    let id = MessageId {
        conn: u32::try_from(conn).ok()?,
        seq,
    };
    Some((id, dash + 1 + digits))
}

/// Reads the run of ASCII digits at the start of `bytes`. Returns its value and length, or
/// `None` when the run is empty or its value overflows.
fn leading_decimal(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    let mut len = 0;
    for &byte in bytes {
        let digit = byte.wrapping_sub(b'0');
        if digit >= 10 {
            break;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(digit))?;
        len += 1;
    }
    (len > 0).then_some((value, len))
}

/// An error frame from framegate: `{"type":"error","code":...,"id":...}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFrame {
    pub code: String,
    /// The echoed id, when the server could read one from the message.
    pub id: Option<MessageId>,
}

/// Parses `payload` as a framegate error frame, or returns `None` for any other message.
pub fn parse_error_frame(payload: &[u8]) -> Option<ErrorFrame> {
    #[derive(serde::Deserialize)]
    struct Wire {
        #[serde(rename = "type")]
        kind: String,
        code: String,
        id: Option<serde_json::Value>,
    }

    if !payload.starts_with(b"{\"type\":\"error\"") {
        return None;
    }
    let wire: Wire = serde_json::from_slice(payload).ok()?;
    if wire.kind != "error" {
        return None;
    }
    let id = wire
        .id
        .as_ref()
        .and_then(serde_json::Value::as_str)
        .and_then(parse_id_text);
    Some(ErrorFrame {
        code: wire.code,
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::apply_mask_plain;

    const ID: MessageId = MessageId { conn: 12, seq: 345 };

    fn placement(kind: TokenIn) -> TokenPlacement {
        TokenPlacement {
            kind,
            query_param: "access_token".to_owned(),
            protocol_marker: "framegate.jwt".to_owned(),
        }
    }

    fn request(token: Option<&str>, kind: TokenIn) -> String {
        let url = WsUrl::parse("ws://127.0.0.1:8080/ws").unwrap();
        let mut out = Vec::new();
        write_upgrade_request(
            &mut out,
            &url,
            "dGhlIHNhbXBsZSBub25jZQ==",
            token,
            &placement(kind),
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn upgrade_request_places_token_in_header() {
        let text = request(Some("T"), TokenIn::Header);
        assert!(text.starts_with("GET /ws HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"));
        assert!(text.contains("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"));
        assert!(text.contains("Sec-WebSocket-Version: 13\r\n"));
        assert!(text.contains("Authorization: Bearer T\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn upgrade_request_places_token_in_query_and_protocol() {
        let text = request(Some("T"), TokenIn::Query);
        assert!(text.starts_with("GET /ws?access_token=T HTTP/1.1\r\n"));
        assert!(!text.contains("Authorization"));

        let text = request(Some("T"), TokenIn::Protocol);
        assert!(text.contains("Sec-WebSocket-Protocol: framegate.jwt, T\r\n"));
    }

    #[test]
    fn upgrade_request_without_token_has_no_credentials() {
        let text = request(None, TokenIn::Protocol);
        assert!(!text.contains("Authorization"));
        assert!(!text.contains("Sec-WebSocket-Protocol"));
        assert!(!text.contains("access_token"));
    }

    #[test]
    fn response_head_partial_until_blank_line() {
        let head = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: abc\r\n\r\n\x81\x00";
        let blank = head.len() - 2;
        for end in 0..blank {
            assert_eq!(parse_response_head(&head[..end]), Ok(None), "prefix {end}");
        }
        let parsed = parse_response_head(head).unwrap().unwrap();
        assert_eq!(parsed.status, 101);
        assert_eq!(parsed.head_len, blank);
        assert_eq!(parsed.accept.as_deref(), Some("abc"));
    }

    #[test]
    fn response_head_accepts_bare_lf() {
        let head = b"HTTP/1.1 101 Switching Protocols\nSec-WebSocket-Accept: abc\n\n\x81\x00";
        let parsed = parse_response_head(head).unwrap().unwrap();
        assert_eq!(parsed.status, 101);
        assert_eq!(parsed.head_len, head.len() - 2);
        assert_eq!(parsed.accept.as_deref(), Some("abc"));
        let mixed = b"HTTP/1.1 403 Forbidden\r\nA: b\n\r\nbody";
        assert_eq!(
            parse_response_head(mixed).unwrap().unwrap().head_len,
            mixed.len() - 4
        );
    }

    #[test]
    fn response_head_reads_rejection_status() {
        let head = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\n\r\n";
        let parsed = parse_response_head(head).unwrap().unwrap();
        assert_eq!(parsed.status, 429);
        assert_eq!(parsed.accept, None);
    }

    #[test]
    fn response_head_reads_status_line_forms() {
        let status = |line: &str| {
            let head = format!("{line}\r\n\r\n");
            parse_response_head(head.as_bytes())
                .map(|head| head.map(|h| (h.minor_version, h.status)))
        };
        assert_eq!(status("HTTP/1.0 403 Forbidden"), Ok(Some((0, 403))));
        assert_eq!(status("HTTP/1.1 101"), Ok(Some((1, 101))));
        assert_eq!(status("HTTP/1.1 101 "), Ok(Some((1, 101))));
        for bad in [
            "HTTP/1.1 2x0 OK",
            "HTTP/1.1 1010 Weird",
            "HTTP/1.1 10",
            "HTTP/1.2 101 Switching Protocols",
            "HTTP/2 101",
            "HTTP/1.1  101 Switching Protocols",
            "ICY 200 OK",
        ] {
            assert_eq!(status(bad), Err(HeadError::StatusLine), "{bad}");
        }
    }

    /// Parses a valid `101` for [`KEY`] with the field lines `extra` added.
    fn switch(extra: &str) -> ResponseHead {
        let head = format!(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n{extra}\r\n",
            std::str::from_utf8(&crate::handshake::accept_key(KEY)).unwrap()
        );
        parse_response_head(head.as_bytes()).unwrap().unwrap()
    }

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    #[test]
    fn switch_with_required_fields_passes() {
        assert_eq!(check_switch(&switch(""), KEY, &[]), Ok(()));
        let chosen = switch("Sec-WebSocket-Protocol: bearer\r\n");
        assert_eq!(check_switch(&chosen, KEY, &["bearer", "tok"]), Ok(()));
        let empty_extensions = switch("Sec-WebSocket-Extensions: \r\n");
        assert_eq!(check_switch(&empty_extensions, KEY, &[]), Ok(()));
    }

    #[test]
    fn switch_missing_or_unoffered_fails() {
        let mut http10 = switch("");
        http10.minor_version = 0;
        assert_eq!(
            check_switch(&http10, KEY, &[]),
            Err(HandshakeError::Version)
        );

        let mut no_upgrade = switch("");
        no_upgrade.upgrade_websocket = false;
        assert_eq!(
            check_switch(&no_upgrade, KEY, &[]),
            Err(HandshakeError::Upgrade)
        );
        let h2c = switch("Upgrade: h2c\r\n");
        assert_eq!(check_switch(&h2c, KEY, &[]), Err(HandshakeError::Upgrade));

        let mut no_connection = switch("");
        no_connection.connection_upgrade = false;
        assert_eq!(
            check_switch(&no_connection, KEY, &[]),
            Err(HandshakeError::Connection)
        );
        assert_eq!(
            check_switch(&switch(""), "AAAAAAAAAAAAAAAAAAAAAA==", &[]),
            Err(HandshakeError::Accept)
        );

        let deflate = switch("Sec-WebSocket-Extensions: permessage-deflate\r\n");
        assert_eq!(
            check_switch(&deflate, KEY, &[]),
            Err(HandshakeError::Extension)
        );

        let unoffered = switch("Sec-WebSocket-Protocol: chat\r\n");
        assert_eq!(
            check_switch(&unoffered, KEY, &[]),
            Err(HandshakeError::Protocol)
        );
        assert_eq!(
            check_switch(&unoffered, KEY, &["bearer"]),
            Err(HandshakeError::Protocol)
        );
        let two = switch("Sec-WebSocket-Protocol: bearer, tok\r\n");
        assert_eq!(
            check_switch(&two, KEY, &["bearer", "tok"]),
            Err(HandshakeError::Protocol)
        );
    }

    #[test]
    fn response_head_bad_size_fails() {
        let long = vec![b'a'; MAX_RESPONSE_HEAD_BYTES + 1];
        assert_eq!(
            parse_response_head(&long),
            Err(HeadError::TooLarge {
                max: MAX_RESPONSE_HEAD_BYTES
            })
        );
    }

    #[test]
    fn accept_matches_rfc_example() {
        // RFC 6455 §1.3 example key and accept value.
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        assert!(accept_matches(key, Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")));
        assert!(!accept_matches(key, Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOp=")));
        assert!(!accept_matches(key, None));
    }

    #[test]
    fn websocket_key_is_24_base64_chars() {
        let key = websocket_key([7; 16]);
        assert_eq!(key.len(), 24);
        assert!(key.ends_with("=="));
    }

    #[test]
    fn encode_frame_masks_and_server_role_decodes() {
        let key = [1, 2, 3, 4];
        for len in [0usize, 1, 125, 126, 127, 65_535, 65_536] {
            // Distinct bytes, so a payload moved to the wrong offset shows.
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            // The frame goes after what the buffer already holds, which stays intact.
            let mut out = b"earlier".to_vec();
            encode_frame(&mut out, OpCode::Text, &payload, key);
            assert_eq!(&out[..7], b"earlier");
            let frame = &out[7..];
            let limits = HeaderLimits {
                role: crate::frame::Role::Server,
                max_payload_bytes: usize::MAX,
                allow_binary: true,
            };
            let header = decode_header(frame, &limits).unwrap().unwrap();
            assert!(header.fin);
            assert_eq!(header.opcode, OpCode::Text);
            assert_eq!(header.mask, Some(key));
            assert_eq!(header.payload_len, len as u64);
            assert_eq!(frame.len(), header.header_len + len);
            let mut body = frame[header.header_len..].to_vec();
            apply_mask_plain(&mut body, key, 0);
            assert_eq!(body, payload, "length {len}");
        }
    }

    #[test]
    fn encode_close_carries_code() {
        let mut out = Vec::new();
        encode_close(&mut out, 1000, [0; 4]);
        assert_eq!(out, [0x88, 0x82, 0, 0, 0, 0, 0x03, 0xE8]);
    }

    #[test]
    fn close_code_reads_first_two_bytes() {
        assert_eq!(close_code(&[0x03, 0xF1, b'x']), Some(1009));
        assert_eq!(close_code(&[]), None);
    }

    #[test]
    fn next_frame_waits_for_whole_payload() {
        let frame = [0x81, 0x03, b'a', b'b', b'c'];
        for end in 0..frame.len() {
            assert_eq!(next_frame(&frame[..end], 1024), Ok(None), "prefix {end}");
        }
        let header = next_frame(&frame, 1024).unwrap().unwrap();
        assert_eq!(header.header_len, 2);
        assert_eq!(header.payload_len, 3);
    }

    #[test]
    fn next_frame_rejects_masked_server_frame() {
        assert_eq!(
            next_frame(&[0x81, 0x80, 0, 0, 0, 0], 1024),
            Err(DecodeError::MaskedFrame)
        );
    }

    fn shape(size: usize, raw: bool) -> MessageShape {
        MessageShape { size, raw }
    }

    fn message(shape: &MessageShape, body: Body) -> Vec<u8> {
        let mut out = Vec::new();
        shape.write(&mut out, ID, "\"user-13\"", body);
        out
    }

    #[test]
    fn valid_message_is_json_padded_to_size() {
        let out = message(&shape(200, false), Body::Valid);
        assert_eq!(out.len(), 200);
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["id"], "12-345");
        assert_eq!(value["conversation_id"], "c");
        assert_eq!(value["to"], "user-13");
        assert!(value["content"].as_str().unwrap().chars().all(|c| c == 'x'));
    }

    #[test]
    fn small_size_gives_minimal_json() {
        let out = message(&shape(1, false), Body::Valid);
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["content"], "");
    }

    #[test]
    fn oversize_message_has_exact_length() {
        let out = message(&shape(64, false), Body::Oversize { bytes: 10_241 });
        assert_eq!(out.len(), 10_241);
        assert!(serde_json::from_slice::<serde_json::Value>(&out).is_ok());
    }

    #[test]
    fn malformed_bodies_are_invalid_json() {
        let syntax = message(&shape(100, false), Body::MalformedSyntax);
        assert!(serde_json::from_slice::<serde_json::Value>(&syntax).is_err());
        assert_eq!(syntax.len(), 100);

        let duplicate = message(&shape(100, false), Body::DuplicateKey);
        assert_eq!(duplicate.len(), 100);
        let text = String::from_utf8(duplicate).unwrap();
        assert_eq!(text.matches("\"content\":").count(), 2);
        // Still one syntactically valid object, so the server can echo the id.
        assert_eq!(
            crate::message::client_id(text.as_bytes()),
            Some("\"12-345\"")
        );
    }

    #[test]
    fn raw_message_starts_with_id() {
        let out = message(&shape(64, true), Body::Valid);
        assert_eq!(out.len(), 64);
        assert!(out.starts_with(b"12-345 x"));
        assert_eq!(parse_id(&out), Some(ID));
        assert_eq!(message(&shape(1, true), Body::Valid), b"12-345 ");
    }

    #[test]
    fn parse_id_finds_id_after_from() {
        let relayed = br#"{"from":"user-12","id":"12-345","conversation_id":"c"}"#;
        assert_eq!(parse_id(relayed), Some(ID));
        let echoed = message(&shape(80, false), Body::Valid);
        assert_eq!(parse_id(&echoed), Some(ID));
    }

    #[test]
    fn parse_id_allows_whitespace_around_colon() {
        let expected = Some(MessageId { conn: 3, seq: 41 });
        assert_eq!(parse_id(br#"{"id": "3-41", "content": "x"}"#), expected);
        assert_eq!(parse_id(b"{\n  \"id\" :\t\"3-41\"\n}"), expected);
        assert_eq!(
            parse_id(br#"{"note":"the \"id\" field","id":"3-41"}"#),
            expected,
            "a key-like string in a value is skipped"
        );
        assert_eq!(parse_id(br#"{"id": 3}"#), None);
    }

    #[test]
    fn parse_id_rejects_foreign_payloads() {
        assert_eq!(parse_id(b"{\"x\":1}"), None);
        assert_eq!(parse_id(b"hello"), None);
        assert_eq!(parse_id(b"12-"), None);
        assert_eq!(parse_id(b"99999999999-1"), None);
        assert_eq!(parse_id(b"-5"), None);
        assert_eq!(parse_id(b"1-2-3"), None);
        assert_eq!(parse_id(b"1-99999999999999999999"), None);
        assert_eq!(parse_id(b"4294967296-1"), None, "conn is a u32");
        assert_eq!(parse_id(b"7-8 xxxx"), Some(MessageId { conn: 7, seq: 8 }));
    }

    #[test]
    fn parse_id_text_takes_the_whole_string() {
        assert_eq!(parse_id_text("12-345"), Some(ID));
        assert_eq!(parse_id_text("12-345 "), None);
        assert_eq!(parse_id_text("12-345x"), None);
        assert_eq!(parse_id_text("12"), None);
        assert_eq!(parse_id_text(""), None);
    }

    #[test]
    fn parse_error_frame_reads_code_and_id() {
        let frame = br#"{"type":"error","code":"rate_limited","detail":"d","id":"12-345","retry_after_ms":5}"#;
        assert_eq!(
            parse_error_frame(frame),
            Some(ErrorFrame {
                code: "rate_limited".to_owned(),
                id: Some(ID),
            })
        );
        let without_id = br#"{"type":"error","code":"invalid_json","detail":"d"}"#;
        assert_eq!(parse_error_frame(without_id).unwrap().id, None);
        assert_eq!(parse_error_frame(br#"{"id":"12-345"}"#), None);
    }
}
