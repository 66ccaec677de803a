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

/// Largest chunk-size line, chunk extensions included (bytes). An unfinished line is parsed
/// again after each read, so its length bounds that work.
pub const MAX_CHUNK_LINE: usize = 4096;

/// A response that cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("response body above {max} bytes")]
    BodyTooLarge { max: usize },
    #[error("invalid chunked body")]
    Chunked,
    #[error("chunk-size line above {max} bytes, chunk extensions included")]
    ChunkLineTooLong { max: usize },
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

/// Reads the responses of one connection, one at a time. It keeps the progress through a
/// chunked body between calls, so each byte of the body is decoded once however it arrives.
#[derive(Debug)]
pub struct ResponseReader {
    max_body: usize,
    chunked: ChunkedProgress,
}

/// Progress through a chunked body whose end has not arrived yet.
#[derive(Debug, Default)]
struct ChunkedProgress {
    /// Chunk data decoded so far.
    body: BytesMut,
    /// Offset after the head where decoding resumes: the start of a chunk-size line, or of
    /// the trailer section once the last chunk has been read.
    at: usize,
    /// Bytes already searched for the end of the trailer section, counted from the CRLF that
    /// ends the last chunk's line. It is set once the last chunk has been read.
    trailer_scanned: Option<usize>,
}

impl ResponseReader {
    /// Creates a reader for bodies of at most `max_body` bytes.
    pub fn new(max_body: usize) -> Self {
        Self {
            max_body,
            chunked: ChunkedProgress::default(),
        }
    }

    /// Parses one response from the front of `buf`. Returns `Ok(None)` until it is
    /// complete, then removes it from `buf`. Between calls `buf` may only grow at its end.
    /// Bodies above `max_body` bytes fail, and so do heads above [`MAX_RESPONSE_HEAD`]
    /// bytes and chunked bodies that take more than twice `max_body` bytes as sent. Pass
    /// `closed` once the server has closed the connection, so that `buf` contains everything
    /// it sent. That completes a response whose body is delimited by the close.
    pub fn parse(
        &mut self,
        buf: &mut BytesMut,
        closed: bool,
    ) -> Result<Option<Response>, ResponseError> {
        let parsed = parse_response(buf, self.max_body, closed, &mut self.chunked);
        if !matches!(parsed, Ok(None)) {
            self.chunked = ChunkedProgress::default();
        }
        parsed
    }
}

fn parse_response(
    buf: &mut BytesMut,
    max_body: usize,
    closed: bool,
    progress: &mut ChunkedProgress,
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
        let Some((body, consumed)) = decode_chunked(sent, max_body, progress)? else {
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

/// Decodes a chunked body (RFC 9112 §7.1) from where `progress` left it; returns the body and
/// the bytes it took, or `None` when partial.
fn decode_chunked(
    input: &[u8],
    max_body: usize,
    progress: &mut ChunkedProgress,
) -> Result<Option<(Bytes, usize)>, ResponseError> {
    loop {
        let rest = input.get(progress.at..).unwrap_or_default();
        if let Some(scanned) = progress.trailer_scanned {
            // Trailer fields are not used. The body ends at the first CRLF CRLF counted from
            // the CRLF that ends the last chunk's line, so an empty trailer section ends it too.
            let section_at = progress.at.saturating_sub(2);
            let section = input.get(section_at..).unwrap_or_default();
            // The end may straddle what the last call saw, so look 3 bytes back.
            let from = scanned.saturating_sub(3);
            let searched = section.get(from..).unwrap_or_default();
            let Some(end) = searched.windows(4).position(|window| window == b"\r\n\r\n") else {
                progress.trailer_scanned = Some(section.len());
                return Ok(None);
            };
            let body = std::mem::take(&mut progress.body).freeze();
            return Ok(Some((body, section_at + from + end + 4)));
        }

        let (size_len, size) = match httparse::parse_chunk_size(rest) {
            Ok(httparse::Status::Complete(found)) => found,
            // A final CR may be the start of the line's CRLF, which the limit leaves out.
            Ok(httparse::Status::Partial)
                if rest.strip_suffix(b"\r").unwrap_or(rest).len() > MAX_CHUNK_LINE =>
            {
                return Err(ResponseError::ChunkLineTooLong {
                    max: MAX_CHUNK_LINE,
                });
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(ResponseError::Chunked),
        };
        // httparse takes a line that arrived whole at any length, a line without a digit as
        // size 0, and a bare LF inside an extension. RFC 9112 §7.1 allows none of them.
        let line = rest.get(..size_len.saturating_sub(2)).unwrap_or_default();
        if line.len() > MAX_CHUNK_LINE {
            return Err(ResponseError::ChunkLineTooLong {
                max: MAX_CHUNK_LINE,
            });
        }
        if !line.first().is_some_and(u8::is_ascii_hexdigit) || line.contains(&b'\n') {
            return Err(ResponseError::Chunked);
        }
        let size = usize::try_from(size).map_err(|_| ResponseError::Chunked)?;
        if size == 0 {
            progress.at += size_len;
            progress.trailer_scanned = Some(0);
            continue;
        }
        if progress.body.len().saturating_add(size) > max_body {
            return Err(ResponseError::BodyTooLarge { max: max_body });
        }
        // The chunk is taken whole, with its CRLF, so a partial one is only waited for.
        let data = size_len;
        let Some(chunk) = rest.get(data..data.saturating_add(size)) else {
            return Ok(None);
        };
        match rest.get(data + size..data + size + 2) {
            None => return Ok(None),
            Some(b"\r\n") => {}
            Some(_) => return Err(ResponseError::Chunked),
        }
        progress.body.extend_from_slice(chunk);
        progress.at += data + size + 2;
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

    const CHUNKED_HEAD: &str = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";

    fn parse(text: &str) -> Result<Option<Response>, ResponseError> {
        let mut buf = BytesMut::from(text.as_bytes());
        ResponseReader::new(1024).parse(&mut buf, false)
    }

    fn parse_closed(text: &str) -> Result<Option<Response>, ResponseError> {
        let mut buf = BytesMut::from(text.as_bytes());
        ResponseReader::new(1024).parse(&mut buf, true)
    }

    #[test]
    fn parse_content_length_succeeds() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiHTTP"[..]);
        let response = ResponseReader::new(1024)
            .parse(&mut buf, false)
            .unwrap()
            .unwrap();
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
        let mut reader = ResponseReader::new(1024);
        assert!(reader.parse(&mut buf, false).unwrap().is_none());
        buf.extend_from_slice(b"a");
        assert_eq!(
            reader.parse(&mut buf, false).unwrap_err(),
            ResponseError::HeadTooLarge {
                max: MAX_RESPONSE_HEAD
            }
        );
    }

    /// Feeds `text` to one reader in pieces of `step` bytes, as reads would deliver it.
    fn parse_in_pieces(text: &[u8], step: usize) -> Result<Option<Response>, ResponseError> {
        let mut reader = ResponseReader::new(1024);
        let mut buf = BytesMut::new();
        for piece in text.chunks(step) {
            buf.extend_from_slice(piece);
            if let Some(response) = reader.parse(&mut buf, false)? {
                assert!(buf.is_empty(), "bytes left after the response");
                return Ok(Some(response));
            }
        }
        Ok(None)
    }

    #[test]
    fn chunked_resumes_at_every_split() {
        let text = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
            3;name=value\r\nabc\r\na\r\n0123456789\r\n0\r\nX-One: 1\r\nX-Two: 2\r\n\r\n";
        for step in 1..text.len() {
            let response = parse_in_pieces(text, step).unwrap();
            let body = response
                .unwrap_or_else(|| panic!("no response with step {step}"))
                .body;
            assert_eq!(&body[..], b"abc0123456789", "step {step}");
        }
        let no_trailer =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n";
        for step in 1..no_trailer.len() {
            let response = parse_in_pieces(no_trailer, step).unwrap().unwrap();
            assert_eq!(&response.body[..], b"hi", "step {step}");
        }
    }

    #[test]
    fn chunked_decodes_each_chunk_once() {
        let mut reader = ResponseReader::new(1024);
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\nde"[..],
        );
        assert!(reader.parse(&mut buf, false).unwrap().is_none());
        // The first chunk is decoded and not read again; the second waits whole.
        assert_eq!(&reader.chunked.body[..], b"abc");
        assert_eq!(reader.chunked.at, 8);
        buf.extend_from_slice(b"fg\r\n0\r\n\r\nHTTP/1.1");
        let response = reader.parse(&mut buf, false).unwrap().unwrap();
        assert_eq!(&response.body[..], b"abcdefg");
        assert_eq!(&buf[..], b"HTTP/1.1");
        // The next response starts from a clean state.
        assert!(reader.chunked.body.is_empty());
        assert_eq!(reader.chunked.at, 0);
        assert_eq!(reader.chunked.trailer_scanned, None);
    }

    #[test]
    fn chunk_line_length_is_bounded() {
        let mut reader = ResponseReader::new(1 << 20);
        let mut buf = BytesMut::from(CHUNKED_HEAD.as_bytes());
        buf.extend_from_slice(b"1;");
        buf.resize(CHUNKED_HEAD.len() + MAX_CHUNK_LINE, b'x');
        assert!(reader.parse(&mut buf, false).unwrap().is_none());
        buf.extend_from_slice(b"x");
        assert_eq!(
            reader.parse(&mut buf, false).unwrap_err(),
            ResponseError::ChunkLineTooLong {
                max: MAX_CHUNK_LINE
            }
        );
    }

    #[test]
    fn whole_chunk_line_is_bounded() {
        let line = |extension: usize| format!("1;{}\r\na\r\n0\r\n\r\n", "x".repeat(extension));
        // The line without its CRLF is `1;` and the extension.
        let at_limit = format!("{CHUNKED_HEAD}{}", line(MAX_CHUNK_LINE - 2));
        let mut reader = ResponseReader::new(1 << 20);
        let mut buf = BytesMut::from(at_limit.as_bytes());
        let response = reader.parse(&mut buf, false).unwrap().unwrap();
        assert_eq!(&response.body[..], b"a");

        let over = format!("{CHUNKED_HEAD}{}", line(MAX_CHUNK_LINE - 1));
        let mut buf = BytesMut::from(over.as_bytes());
        assert_eq!(
            reader.parse(&mut buf, false).unwrap_err(),
            ResponseError::ChunkLineTooLong {
                max: MAX_CHUNK_LINE
            }
        );
    }

    #[test]
    fn chunk_line_cr_at_limit_waits() {
        let mut reader = ResponseReader::new(1 << 20);
        let mut buf = BytesMut::from(CHUNKED_HEAD.as_bytes());
        buf.extend_from_slice(b"1;");
        buf.resize(CHUNKED_HEAD.len() + MAX_CHUNK_LINE, b'x');
        buf.extend_from_slice(b"\r");
        assert!(reader.parse(&mut buf, false).unwrap().is_none());
        buf.extend_from_slice(b"\na\r\n0\r\n\r\n");
        let response = reader.parse(&mut buf, false).unwrap().unwrap();
        assert_eq!(&response.body[..], b"a");
    }

    #[test]
    fn malformed_chunk_line_fails() {
        for chunks in [
            "\r\n3\r\nabc\r\n0\r\n\r\n",
            ";ext\r\n\r\n",
            " 3\r\nabc\r\n0\r\n\r\n",
            "3;a\nb\r\nabc\r\n0\r\n\r\n",
        ] {
            let text = format!("{CHUNKED_HEAD}{chunks}");
            assert_eq!(
                parse(&text).unwrap_err(),
                ResponseError::Chunked,
                "{chunks:?}"
            );
        }
    }

    #[test]
    fn parse_chunked_framing_is_bounded() {
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
            let text = format!("{CHUNKED_HEAD}{sent}");
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
