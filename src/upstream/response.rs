//! Parsing an application server's HTTP/1.1 response and the deliveries in its body.
//!
//! Bodies are framed by `Content-Length` or `Transfer-Encoding: chunked` (RFC 9112 §6). A
//! response with neither ends when the server closes the connection (RFC 9112 §6.3), so the
//! caller says whether the connection has closed. Other transfer codings are rejected,
//! because the body could not be read without decoding them.

use bytes::{Buf, Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Most response header fields read.
const MAX_HEADERS: usize = 64;

/// Largest response head read (bytes). A server that sends more without ending its head
/// fails the request, so it cannot make the client buffer without limit until the timeout.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// A response that cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("response body above {max} bytes")]
    BodyTooLarge { max: usize },
    #[error("invalid chunked body")]
    Chunked,
    #[error(
        "chunked body above {max} bytes as sent, chunk sizes, extensions and trailers included"
    )]
    ChunkedTooLarge { max: usize },
    #[error("invalid Content-Length; it must be decimal digits, the same in every field line")]
    ContentLength,
    #[error("invalid response head")]
    Head,
    #[error("response head above {max} bytes")]
    HeadTooLarge { max: usize },
    #[error("unsupported Transfer-Encoding; send Content-Length or `chunked` alone")]
    TransferCoding,
}

/// A complete response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: Bytes,
    /// False when the server sent `Connection: close` or ended the body by closing.
    pub keep_alive: bool,
}

/// Parses one response from the front of `buf`. Returns `Ok(None)` until it is complete,
/// then removes it from `buf`. Bodies above `max_body` bytes fail, and so do heads above
/// [`MAX_RESPONSE_HEAD`] bytes and chunked bodies that take more than twice `max_body` bytes
/// as sent. Pass `closed` once the server has closed the connection, so that `buf` contains
/// everything it sent. That completes a response whose body is delimited by the close.
pub fn parse_response(
    buf: &mut BytesMut,
    max_body: usize,
    closed: bool,
) -> Result<Option<Response>, ResponseError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut headers);
    let head_len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_RESPONSE_HEAD => {
            return Err(ResponseError::HeadTooLarge {
                max: MAX_RESPONSE_HEAD,
            });
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(ResponseError::Head),
    };
    let status = parsed.code.ok_or(ResponseError::Head)?;
    let mut content_length = None;
    let mut keep_alive = parsed.version == Some(1);
    let mut codings = 0usize;
    for header in parsed.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            // RFC 9110 §8.6: Content-Length = 1*DIGIT. A sign, a list or a different value
            // in a second field line makes the body's end ambiguous (RFC 9112 §6.3).
            let length = parse_length(header.value).ok_or(ResponseError::ContentLength)?;
            if content_length.is_some_and(|known| known != length) {
                return Err(ResponseError::ContentLength);
            }
            content_length = Some(length);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            // RFC 9110 §5.3: the field lines form one list. Only `chunked` alone can be read
            // here: with another coding the dechunked body is still encoded, and without
            // `chunked` last the body would run to the close (RFC 9112 §6.3).
            for coding in header.value.split(|&b| b == b',') {
                let coding = coding.trim_ascii();
                if coding.is_empty() {
                    continue;
                }
                if !coding.eq_ignore_ascii_case(b"chunked") {
                    return Err(ResponseError::TransferCoding);
                }
                codings += 1;
            }
        } else if header.name.eq_ignore_ascii_case("connection")
            && header
                .value
                .split(|&b| b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"))
        {
            keep_alive = false;
        }
    }
    // RFC 9112 §7: a sender applies chunked at most once, so a second one is an error.
    if codings > 1 {
        return Err(ResponseError::TransferCoding);
    }
    let chunked = codings == 1;

    // 1xx, 204 and 304 responses have no body (RFC 9112 §6.3).
    let bodiless = status < 200 || status == 204 || status == 304;
    if bodiless {
        buf.advance(head_len);
        return Ok(Some(Response {
            status,
            body: Bytes::new(),
            keep_alive,
        }));
    }
    // Transfer-Encoding overrides Content-Length (RFC 9112 §6.3).
    if chunked {
        let sent = buf.get(head_len..).unwrap_or_default();
        let Some((body, consumed)) = decode_chunked(sent, max_body)? else {
            // Chunk extensions and trailer fields have no length limit of their own, and
            // one-byte chunks take six bytes each.
            let max_sent = max_body.saturating_mul(2);
            if sent.len() > max_sent {
                return Err(ResponseError::ChunkedTooLarge { max: max_sent });
            }
            return Ok(None);
        };
        buf.advance(head_len + consumed);
        return Ok(Some(Response {
            status,
            body,
            keep_alive,
        }));
    }
    let Some(length) = content_length else {
        // RFC 9112 §6.3: without either field the body is everything until the close.
        let body_len = buf.len() - head_len;
        if body_len > max_body {
            return Err(ResponseError::BodyTooLarge { max: max_body });
        }
        if !closed {
            return Ok(None);
        }
        buf.advance(head_len);
        let body = buf.split_to(body_len).freeze();
        return Ok(Some(Response {
            status,
            body,
            keep_alive: false,
        }));
    };
    if length > max_body {
        return Err(ResponseError::BodyTooLarge { max: max_body });
    }
    let Some(end) = head_len.checked_add(length) else {
        return Err(ResponseError::ContentLength);
    };
    if buf.len() < end {
        return Ok(None);
    }
    buf.advance(head_len);
    let body = buf.split_to(length).freeze();
    Ok(Some(Response {
        status,
        body,
        keep_alive,
    }))
}

/// Parses a Content-Length value: decimal digits between optional whitespace.
fn parse_length(value: &[u8]) -> Option<usize> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Decodes a chunked body; returns the body and the bytes it took, or `None` when partial.
fn decode_chunked(input: &[u8], max_body: usize) -> Result<Option<(Bytes, usize)>, ResponseError> {
    let mut body = BytesMut::new();
    let mut at = 0;
    loop {
        let rest = input.get(at..).unwrap_or_default();
        let (size_len, size) = match httparse::parse_chunk_size(rest) {
            Ok(httparse::Status::Complete(found)) => found,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(ResponseError::Chunked),
        };
        at += size_len;
        let size = usize::try_from(size).map_err(|_| ResponseError::Chunked)?;
        if size == 0 {
            // Trailer fields are not used; the body ends at the empty line after them.
            let tail = input.get(at..).unwrap_or_default();
            if tail.starts_with(b"\r\n") {
                return Ok(Some((body.freeze(), at + 2)));
            }
            return match tail.windows(4).position(|window| window == b"\r\n\r\n") {
                Some(end) => Ok(Some((body.freeze(), at + end + 4))),
                None => Ok(None),
            };
        }
        if body.len().saturating_add(size) > max_body {
            return Err(ResponseError::BodyTooLarge { max: max_body });
        }
        let Some(chunk) = input.get(at..at.saturating_add(size)) else {
            return Ok(None);
        };
        body.extend_from_slice(chunk);
        at += size;
        match input.get(at..at + 2) {
            None => return Ok(None),
            Some(b"\r\n") => at += 2,
            Some(_) => return Err(ResponseError::Chunked),
        }
    }
}

/// Destination of a delivery from a response body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One connection, by id.
    Connection(u64),
    /// Every open connection of a user.
    User(String),
}

/// One delivery from a response body: a JSON text for a user or a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub target: Target,
    /// The `message` value exactly as written in the line, without the whitespace around it.
    pub message: String,
}

#[derive(Deserialize)]
struct DeliveryLine<'a> {
    to: Option<String>,
    connection_id: Option<u64>,
    /// Borrowed unparsed, so key order, duplicate keys and number precision reach the client
    /// as the application server wrote them.
    #[serde(borrow)]
    message: &'a RawValue,
}

/// Parses NDJSON delivery lines: `{"to":"<user>","message":{...}}` or
/// `{"connection_id":N,"message":{...}}`. Blank lines are skipped. Each message is kept as
/// the bytes of its JSON value, not re-serialized. Returns the deliveries and the number of
/// lines that are neither form.
pub fn parse_deliveries(body: &[u8]) -> (Vec<Delivery>, usize) {
    let mut deliveries = Vec::new();
    let mut invalid = 0;
    for line in body.split(|&b| b == b'\n') {
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        let Ok(parsed) = serde_json::from_slice::<DeliveryLine>(line) else {
            invalid += 1;
            continue;
        };
        let target = match (parsed.to, parsed.connection_id) {
            (Some(user), None) => Target::User(user),
            (None, Some(conn)) => Target::Connection(conn),
            _ => {
                invalid += 1;
                continue;
            }
        };
        deliveries.push(Delivery {
            target,
            message: parsed.message.get().to_owned(),
        });
    }
    (deliveries, invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<Response>, ResponseError> {
        let mut buf = BytesMut::from(text.as_bytes());
        parse_response(&mut buf, 1024, false)
    }

    fn parse_closed(text: &str) -> Result<Option<Response>, ResponseError> {
        let mut buf = BytesMut::from(text.as_bytes());
        parse_response(&mut buf, 1024, true)
    }

    #[test]
    fn parse_content_length_succeeds() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiHTTP"[..]);
        let response = parse_response(&mut buf, 1024, false).unwrap().unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(&response.body[..], b"hi");
        assert!(response.keep_alive);
        assert_eq!(&buf[..], b"HTTP");
    }

    #[test]
    fn parse_every_prefix_is_partial() {
        let text = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        for end in 0..text.len() {
            assert!(parse(&text[..end]).unwrap().is_none(), "prefix {end}");
        }
        assert!(parse(text).unwrap().is_some());
    }

    #[test]
    fn parse_chunked_succeeds() {
        let text =
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        for end in 0..text.len() {
            assert!(parse(&text[..end]).unwrap().is_none(), "prefix {end}");
        }
        let response = parse(text).unwrap().unwrap();
        assert_eq!(&response.body[..], b"abcde");
    }

    #[test]
    fn parse_connection_close_clears_keep_alive() {
        let response = parse("HTTP/1.1 503 Busy\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(response.status, 503);
        assert!(!response.keep_alive);
    }

    #[test]
    fn parse_body_without_length_ends_at_close() {
        let text = "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n\r\n{\"to\":\"a\"}\n";
        assert!(
            parse(text).unwrap().is_none(),
            "open connection: more may come"
        );
        let response = parse_closed(text).unwrap().unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(&response.body[..], b"{\"to\":\"a\"}\n");
        assert!(!response.keep_alive);

        let empty = parse_closed("HTTP/1.1 202 Accepted\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(empty.body.is_empty());
        let too_large = format!("HTTP/1.1 200 OK\r\n\r\n{}", "x".repeat(1025));
        assert_eq!(
            parse(&too_large).unwrap_err(),
            ResponseError::BodyTooLarge { max: 1024 }
        );
    }

    #[test]
    fn parse_closed_before_length_is_partial() {
        let text = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel";
        assert!(parse_closed(text).unwrap().is_none());
        assert!(
            parse_closed("HTTP/1.1 200 OK\r\nContent-")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn parse_transfer_codings_other_than_chunked_fail() {
        let cases = [
            "Transfer-Encoding: gzip, chunked\r\n",
            "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding: chunked, chunked\r\n",
            "Transfer-Encoding: identity\r\n",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n",
        ];
        for fields in cases {
            let text = format!("HTTP/1.1 200 OK\r\n{fields}\r\n0\r\n\r\n");
            assert_eq!(
                parse(&text).unwrap_err(),
                ResponseError::TransferCoding,
                "{fields}"
            );
        }
        let split =
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: \r\nTransfer-Encoding: Chunked\r\n\r\n0\r\n\r\n";
        assert!(parse(split).unwrap().is_some());
    }

    #[test]
    fn parse_content_length_accepts_digits_only() {
        for value in [
            "+5",
            "-5",
            "5, 5",
            "0x5",
            "",
            " ",
            "5 5",
            "99999999999999999999999",
        ] {
            let text = format!("HTTP/1.1 200 OK\r\nContent-Length: {value}\r\n\r\nhello");
            assert_eq!(
                parse(&text).unwrap_err(),
                ResponseError::ContentLength,
                "Content-Length: {value}"
            );
        }
        let padded = parse("HTTP/1.1 200 OK\r\nContent-Length:  5 \r\n\r\nhello");
        assert_eq!(&padded.unwrap().unwrap().body[..], b"hello");
        let repeated =
            parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello");
        assert_eq!(&repeated.unwrap().unwrap().body[..], b"hello");
    }

    #[test]
    fn parse_bad_responses_fail() {
        assert_eq!(
            parse("HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n").unwrap_err(),
            ResponseError::BodyTooLarge { max: 1024 }
        );
        assert_eq!(
            parse("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n").unwrap_err(),
            ResponseError::ContentLength
        );
        assert_eq!(parse("garbage\r\n\r\n").unwrap_err(), ResponseError::Head);
        assert_eq!(
            parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").unwrap_err(),
            ResponseError::Chunked
        );
    }

    #[test]
    fn parse_endless_head_fails_at_limit() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nX-Long: "[..]);
        buf.resize(MAX_RESPONSE_HEAD, b'a');
        assert!(parse_response(&mut buf, 1024, false).unwrap().is_none());
        buf.extend_from_slice(b"a");
        assert_eq!(
            parse_response(&mut buf, 1024, false).unwrap_err(),
            ResponseError::HeadTooLarge {
                max: MAX_RESPONSE_HEAD
            }
        );
    }

    #[test]
    fn parse_chunked_framing_is_bounded() {
        let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        let max_sent = 2 * 1024;
        // Each case is exactly `max_sent` bytes after the head and not yet complete.
        let extension = format!("1;{}", "x".repeat(max_sent - 2));
        let trailer = format!("0\r\nX-T: {}", "b".repeat(max_sent - 8));
        // 341 one-byte chunks, then the start of a chunk size.
        let tiny_chunks = format!("{}10", "1\r\na\r\n".repeat(341));
        for (name, sent) in [
            ("extension", extension),
            ("trailer", trailer),
            ("tiny chunks", tiny_chunks),
        ] {
            assert_eq!(sent.len(), max_sent, "{name}");
            let text = format!("{head}{sent}");
            assert!(parse(&text).unwrap().is_none(), "{name} at the limit");
            let over = format!("{text}a");
            assert_eq!(
                parse(&over).unwrap_err(),
                ResponseError::ChunkedTooLarge { max: max_sent },
                "{name} above the limit"
            );
        }
    }

    #[test]
    fn deliveries_parse_both_forms_and_count_invalid() {
        let body = b"{\"to\":\"bob\",\"message\":{\"a\":1}}\n\n{\"connection_id\":7,\"message\":{\"b\":2}}\nnot json\n{\"message\":{}}\n";
        let (deliveries, invalid) = parse_deliveries(body);
        assert_eq!(invalid, 2);
        assert_eq!(
            deliveries,
            vec![
                Delivery {
                    target: Target::User("bob".to_owned()),
                    message: "{\"a\":1}".to_owned(),
                },
                Delivery {
                    target: Target::Connection(7),
                    message: "{\"b\":2}".to_owned(),
                },
            ]
        );
    }

    #[test]
    fn deliveries_keep_message_bytes_as_sent() {
        let message = r#"{"z":1,"a":12345678901234567890123,"a":"dup","s":"caf\u00e9"}"#;
        let body = format!(
            "{{\"to\":\"bob\",\"message\": {message} }}\n{{\"connection_id\":7,\"message\":\"hi\"}}"
        );
        let (deliveries, invalid) = parse_deliveries(body.as_bytes());
        assert_eq!(invalid, 0);
        assert_eq!(deliveries.len(), 2);
        assert_eq!(deliveries[0].message, message);
        assert_eq!(deliveries[1].message, "\"hi\"");
    }
}
