//! Envelopes and batch requests: what framegate sends to an application server.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use bytes::{BufMut, Bytes, BytesMut};

/// An upstream URL that failed to parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("invalid upstream URL {0:?}: expected http://IP:PORT/path (https is not supported)")]
    Scheme(String),
    #[error("invalid upstream URL {0:?}: the host must be an IP address or localhost")]
    Host(String),
    #[error("invalid upstream URL {0:?}: the port is missing or not a number from 1 to 65535")]
    Port(String),
}

/// One application server address: `http://IP:PORT/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    pub addr: SocketAddr,
    /// `Host` header value, as written in the URL.
    pub authority: String,
    /// Request target; `/` when the URL has no path.
    pub path: String,
}

impl UpstreamUrl {
    /// Parses `http://host:port/path`. The host is an IP literal (IPv6 in brackets) or
    /// `localhost` (127.0.0.1), so no name lookup is needed at run time.
    pub fn parse(text: &str) -> Result<Self, UrlError> {
        let Some(rest) = text.strip_prefix("http://") else {
            return Err(UrlError::Scheme(text.to_owned()));
        };
        let (authority, path) = match rest.find('/') {
            Some(at) => rest.split_at(at),
            None => (rest, "/"),
        };
        let Some((host, port)) = authority.rsplit_once(':') else {
            return Err(UrlError::Port(text.to_owned()));
        };
        let port: u16 = match port.parse() {
            Ok(port) if port > 0 => port,
            _ => return Err(UrlError::Port(text.to_owned())),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ip = if host == "localhost" {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            host.parse().map_err(|_| UrlError::Host(text.to_owned()))?
        };
        Ok(Self {
            addr: SocketAddr::new(ip, port),
            authority: authority.to_owned(),
            path: path.to_owned(),
        })
    }
}

/// One accepted message waiting for an application server.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// `<worker>-<connection id>-<sequence>`: unique per process run, repeated on a retry.
    pub message_id: String,
    /// The sending connection, which gets the error frame if the batch fails.
    pub conn: u64,
    /// Raw JSON of the client's `id`, echoed in error frames.
    pub client_id: Option<Bytes>,
    /// The NDJSON line, ending in `\n`.
    pub line: Bytes,
}

/// Builds the envelope of one message. `message` is the client's JSON text, already checked
/// to be one JSON object, and is embedded unchanged.
pub fn encode_envelope(
    worker: usize,
    conn: u64,
    seq: u64,
    user: &str,
    received_at_ms: u64,
    message: &[u8],
    client_id: Option<Bytes>,
) -> Envelope {
    let message_id = format!("{worker}-{conn}-{seq}");
    let user_json = serde_json::to_string(user).unwrap_or_else(|_| "\"\"".to_owned());
    let mut line = BytesMut::with_capacity(message.len() + user_json.len() + 128);
    let mut head = String::with_capacity(128);
    let _ = write!(
        head,
        "{{\"message_id\":\"{message_id}\",\"connection_id\":{conn},\"user_id\":{user_json},\"received_at_ms\":{received_at_ms},\"message\":"
    );
    line.put_slice(head.as_bytes());
    line.put_slice(message);
    line.put_slice(b"}\n");
    Envelope {
        message_id,
        conn,
        client_id,
        line: line.freeze(),
    }
}

/// An encoded POST: the head and the body, kept apart so the body is not copied twice.
#[derive(Debug, Clone)]
pub struct Request {
    pub head: Bytes,
    pub body: Bytes,
}

/// Encodes one POST carrying `batch` as an NDJSON body, with the message ids in
/// `X-Framegate-Message-Ids` (comma-separated) so a server can drop a retried duplicate.
pub fn encode_request(url: &UpstreamUrl, batch: &[Envelope]) -> Request {
    let body_len: usize = batch.iter().map(|envelope| envelope.line.len()).sum();
    let mut body = BytesMut::with_capacity(body_len);
    for envelope in batch {
        body.put_slice(&envelope.line);
    }
    let mut ids = String::with_capacity(batch.len() * 24);
    for (index, envelope) in batch.iter().enumerate() {
        if index > 0 {
            ids.push(',');
        }
        ids.push_str(&envelope.message_id);
    }
    let mut head = String::with_capacity(ids.len() + 160);
    let _ = write!(
        head,
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-ndjson\r\n\
         Content-Length: {body_len}\r\nX-Framegate-Message-Ids: {ids}\r\n\r\n",
        url.path, url.authority
    );
    Request {
        head: Bytes::from(head),
        body: body.freeze(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parse_ipv4_with_path_succeeds() {
        let url = UpstreamUrl::parse("http://127.0.0.1:8081/ingest").unwrap();
        assert_eq!(url.addr, "127.0.0.1:8081".parse().unwrap());
        assert_eq!(url.authority, "127.0.0.1:8081");
        assert_eq!(url.path, "/ingest");
    }

    #[test]
    fn url_parse_localhost_and_ipv6_succeed() {
        let url = UpstreamUrl::parse("http://localhost:9000").unwrap();
        assert_eq!(url.addr, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(url.path, "/");
        let url = UpstreamUrl::parse("http://[::1]:9000/x").unwrap();
        assert_eq!(url.addr, "[::1]:9000".parse().unwrap());
    }

    #[test]
    fn url_parse_bad_inputs_fail() {
        assert!(matches!(
            UpstreamUrl::parse("https://127.0.0.1:1/"),
            Err(UrlError::Scheme(_))
        ));
        assert!(matches!(
            UpstreamUrl::parse("http://example.com:80/"),
            Err(UrlError::Host(_))
        ));
        assert!(matches!(
            UpstreamUrl::parse("http://127.0.0.1/"),
            Err(UrlError::Port(_))
        ));
        assert!(matches!(
            UpstreamUrl::parse("http://127.0.0.1:0/"),
            Err(UrlError::Port(_))
        ));
    }

    #[test]
    fn envelope_embeds_message_unchanged() {
        let message = br#"{"id":7,"content":"a\"b"}"#;
        let envelope = encode_envelope(1, 42, 3, "al\"ice", 1000, message, None);
        assert_eq!(envelope.message_id, "1-42-3");
        let text = std::str::from_utf8(&envelope.line).unwrap();
        assert!(text.ends_with('\n'));
        let value: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(value["message_id"], "1-42-3");
        assert_eq!(value["connection_id"], 42);
        assert_eq!(value["user_id"], "al\"ice");
        assert_eq!(value["received_at_ms"], 1000);
        assert_eq!(value["message"]["content"], "a\"b");
        assert!(text.contains(std::str::from_utf8(message).unwrap()));
    }

    #[test]
    fn request_lists_ids_and_length() {
        let url = UpstreamUrl::parse("http://127.0.0.1:8081/in").unwrap();
        let batch = vec![
            encode_envelope(0, 1, 1, "u", 5, b"{}", None),
            encode_envelope(0, 1, 2, "u", 6, b"{}", None),
        ];
        let request = encode_request(&url, &batch);
        let head = std::str::from_utf8(&request.head).unwrap();
        assert!(head.starts_with("POST /in HTTP/1.1\r\nHost: 127.0.0.1:8081\r\n"));
        assert!(head.contains("X-Framegate-Message-Ids: 0-1-1,0-1-2\r\n"));
        assert!(head.contains(&format!("Content-Length: {}\r\n", request.body.len())));
        assert!(head.ends_with("\r\n\r\n"));
        assert_eq!(request.body.iter().filter(|&&b| b == b'\n').count(), 2);
    }
}
