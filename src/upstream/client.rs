//! A minimal HTTP/1.1 client for the application servers: one keep-alive connection per
//! upstream per worker, one request in flight on it, over `tokio::net::TcpStream` (the
//! tokio IO driver runs inside each tokio-uring worker).

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Request, Response, ResponseError, ResponseReader, UpstreamUrl};

/// Largest response body read (bytes); a larger one fails the request.
pub const MAX_RESPONSE_BODY: usize = 8 << 20;

/// Largest read buffer kept between requests (bytes). A buffer that grew for a larger
/// response is freed once the response has been handled.
const MAX_KEPT_BUFFER: usize = 64 * 1024;

/// A request that got no usable response.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect failed: {0}")]
    Connect(std::io::Error),
    #[error("connection closed before a complete response")]
    Closed,
    #[error("invalid response: {0}")]
    Response(#[from] ResponseError),
    #[error("read or write failed: {0}")]
    Io(std::io::Error),
    #[error("no response within {0:?}")]
    Timeout(Duration),
}

/// One upstream and its kept-alive connection.
pub struct Connection {
    url: UpstreamUrl,
    stream: Option<TcpStream>,
    buf: BytesMut,
    /// Whether any byte of a response to the request in flight has arrived, 1xx included.
    answered: bool,
}

impl Connection {
    pub fn new(url: UpstreamUrl) -> Self {
        Self {
            url,
            stream: None,
            buf: BytesMut::new(),
            answered: false,
        }
    }

    pub fn url(&self) -> &UpstreamUrl {
        &self.url
    }

    /// Sends `request` and reads the response, all within `timeout`. A kept-alive
    /// connection that the server closed while idle is reopened once before the request
    /// counts as failed.
    pub async fn send(
        &mut self,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        let result = tokio::time::timeout(timeout, self.send_inner(request)).await;
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(_) => Err(ClientError::Timeout(timeout)),
        };
        match &outcome {
            Ok(response) if response.keep_alive => {}
            _ => self.reset(),
        }
        // `clear` keeps the allocation, which would otherwise stay at the size of the
        // largest response for the life of the worker.
        if self.buf.capacity() > MAX_KEPT_BUFFER {
            self.buf = BytesMut::new();
        }
        outcome
    }

    async fn send_inner(&mut self, request: &Request) -> Result<Response, ClientError> {
        if self.stream.is_some() && !self.idle_and_clean() {
            self.reset();
        }
        if self.stream.is_some() {
            match self.exchange(request).await {
                // Nothing came back on a reused connection: the server most likely closed
                // it while idle, so try once on a fresh one. After an interim 1xx response
                // the server has read the request, so it is not sent again.
                Err(ClientError::Closed | ClientError::Io(_)) if !self.answered => {
                    self.reset();
                }
                // A server that times out an idle connection may send 408 before closing it.
                // It never read this request, so the request may be sent again (RFC 9110
                // §15.5.9).
                Ok(response) if response.status == 408 => self.reset(),
                other => return other,
            }
        }
        let stream = TcpStream::connect(self.url.addr)
            .await
            .map_err(ClientError::Connect)?;
        let _ = stream.set_nodelay(true);
        self.stream = Some(stream);
        self.exchange(request).await
    }

    /// Returns whether the kept-alive connection is still open with nothing waiting to be
    /// read. Bytes that arrived while no request was in flight belong to no request of ours,
    /// such as a 408 before an idle close or a faulty server's extra response. Read as the
    /// next response, they would pair every later request with the wrong response.
    fn idle_and_clean(&self) -> bool {
        let Some(stream) = &self.stream else {
            return false;
        };
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        // The socket is non-blocking, so the peek returns at once.
        match socket2::SockRef::from(stream).peek(&mut probe) {
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => true,
            Ok(0) | Err(_) => false,
            Ok(_) => {
                tracing::debug!(upstream = %self.url.addr, "dropping a kept-alive application-server connection that sent bytes while idle");
                false
            }
        }
    }

    async fn exchange(&mut self, request: &Request) -> Result<Response, ClientError> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(ClientError::Closed);
        };
        self.buf.clear();
        self.answered = false;
        stream
            .write_all(&request.head)
            .await
            .map_err(ClientError::Io)?;
        stream
            .write_all(&request.body)
            .await
            .map_err(ClientError::Io)?;
        let mut closed = false;
        let mut reader = ResponseReader::new(MAX_RESPONSE_BODY);
        loop {
            if let Some(response) = reader.parse(&mut self.buf, closed)? {
                // 1xx interim responses come before the final one.
                if response.status >= 200 {
                    return Ok(response);
                }
                continue;
            }
            if closed {
                return Err(ClientError::Closed);
            }
            self.buf.reserve(16 * 1024);
            let read = stream
                .read_buf(&mut self.buf)
                .await
                .map_err(ClientError::Io)?;
            // A body without a length ends at the close, so parse once more before failing.
            closed = read == 0;
            self.answered |= read > 0;
        }
    }

    /// Drops the connection; the next request opens a new one.
    pub fn reset(&mut self) {
        self.stream = None;
        self.buf.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use bytes::Bytes;

    use super::*;

    /// Serves one connection: reads a request head and body, then writes `response`.
    fn serve_once(response: Vec<u8>) -> std::net::SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut request = Vec::new();
            let mut chunk = [0u8; 4096];
            while !request.ends_with(b"\r\n\r\n{}\n") {
                let n = stream.read(&mut chunk).expect("read");
                if n == 0 {
                    return;
                }
                request.extend_from_slice(&chunk[..n]);
            }
            let _ = stream.write_all(&response);
        });
        addr
    }

    fn request() -> Request {
        Request {
            head: Bytes::from_static(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n"),
            body: Bytes::from_static(b"{}\n"),
        }
    }

    /// Returns a connection to `addr` and a runtime to drive it.
    fn client(addr: std::net::SocketAddr) -> (Connection, tokio::runtime::Runtime) {
        let url = UpstreamUrl::parse(&format!("http://{addr}/")).expect("url");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        (Connection::new(url), runtime)
    }

    fn send(
        addr: std::net::SocketAddr,
        request: &Request,
    ) -> (Result<Response, ClientError>, usize) {
        let (mut connection, runtime) = client(addr);
        let outcome = runtime.block_on(connection.send(request, Duration::from_secs(5)));
        (outcome, connection.buf.capacity())
    }

    #[test]
    fn large_response_buffer_not_kept() {
        let body = vec![b'\n'; 1 << 20];
        let mut response =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        response.extend_from_slice(&body);
        let (outcome, capacity) = send(serve_once(response), &request());
        let response = outcome.expect("response");
        assert_eq!(response.body.len(), 1 << 20);
        assert!(response.keep_alive);
        assert!(capacity <= MAX_KEPT_BUFFER, "kept a {capacity}-byte buffer");
    }

    #[test]
    fn interim_response_then_close_is_not_resent() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};

        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                counter.fetch_add(1, Ordering::SeqCst);
                // The first request gets a kept-alive 200, the second a 100 and the close.
                let mut replies = [
                    &b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"[..],
                    &b"HTTP/1.1 100 Continue\r\n\r\n"[..],
                ]
                .into_iter();
                let mut request = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = find(&request, b"\r\n\r\n{}\n") {
                        request.drain(..end + 7);
                        let Some(reply) = replies.next() else { return };
                        let _ = stream.write_all(reply);
                        if replies.len() == 0 {
                            return;
                        }
                    }
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&chunk[..n]),
                    }
                }
            }
        });

        let (mut connection, runtime) = client(addr);
        let first = runtime.block_on(connection.send(&request(), Duration::from_secs(5)));
        assert_eq!(first.expect("first response").status, 200);
        let second = runtime.block_on(connection.send(&request(), Duration::from_secs(5)));
        assert!(matches!(second, Err(ClientError::Closed)), "{second:?}");
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "the request was sent again"
        );
    }

    fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
        haystack
            .windows(needle.len())
            .position(|window| window == needle)
    }

    #[test]
    fn endless_response_head_fails_at_limit() {
        // A head line that never ends, larger than the limit.
        let mut response = b"HTTP/1.1 200 OK\r\nX-Long: ".to_vec();
        response.resize(4 * super::super::response::MAX_RESPONSE_HEAD, b'a');
        let (outcome, capacity) = send(serve_once(response), &request());
        assert!(
            matches!(
                outcome,
                Err(ClientError::Response(ResponseError::HeadTooLarge { .. }))
            ),
            "{outcome:?}"
        );
        assert!(capacity <= MAX_KEPT_BUFFER, "kept a {capacity}-byte buffer");
    }
}
