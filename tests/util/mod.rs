//! Shared helpers for integration tests: start a real server on an ephemeral loopback port,
//! mint tokens with jsonwebtoken directly (independent of framegate's signer), and speak
//! raw HTTP and WebSocket frames over plain TCP.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use framegate::auth::{AuthConfig, KeyMaterial, Verifier};
use framegate::config::Config;

pub const SECRET: &[u8] = b"integration-test-secret-of-at-least-32-bytes";
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A configuration for tests: loopback, ephemeral port, the given worker count and TOML
/// overrides.
pub fn config(workers: usize, toml: &str) -> Config {
    let text = format!(
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nworkers = {workers}\n{toml}"
    );
    match Config::from_toml(&text, std::path::Path::new("test.toml")) {
        Ok(config) => config,
        Err(err) => panic!("test config does not parse: {err}"),
    }
}

pub fn hs256_verifier(config: &Config) -> Verifier {
    let auth = AuthConfig {
        algorithms: vec![jsonwebtoken::Algorithm::HS256],
        key: KeyMaterial::Secret(SECRET.to_vec()),
        issuer: config.auth.issuer.clone(),
        audience: config.auth.audience.clone(),
        leeway_secs: 0,
    };
    Verifier::new(&auth).expect("verifier")
}

/// Starts a server with an HS256 verifier over [`SECRET`]; returns its address. The server
/// runs until the test process exits.
pub fn start(config: Config) -> SocketAddr {
    let verifier = hs256_verifier(&config);
    start_with(config, verifier)
}

pub fn start_with(config: Config, verifier: Verifier) -> SocketAddr {
    let server = framegate::runtime::start(config, verifier).expect("server starts");
    let addr = server.local_addr();
    std::thread::spawn(move || server.join());
    addr
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Signs `claims` with HS256 over [`SECRET`].
pub fn sign(claims: serde_json::Value) -> String {
    sign_with(jsonwebtoken::Algorithm::HS256, SECRET, claims)
}

pub fn sign_with(alg: jsonwebtoken::Algorithm, secret: &[u8], claims: serde_json::Value) -> String {
    let header = jsonwebtoken::Header::new(alg);
    let key = jsonwebtoken::EncodingKey::from_secret(secret).expect("hmac key");
    jsonwebtoken::encode(&header, &claims, &key).expect("token")
}

/// A valid token for `sub`, one hour long.
pub fn token(sub: &str) -> String {
    sign(serde_json::json!({ "sub": sub, "exp": unix_now() + 3600 }))
}

/// A raw upgrade request for `/ws` carrying `token` in the Authorization header.
pub fn upgrade_request(token: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: Bearer {token}\r\n\r\n"
    )
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

/// Sends `request` and reads the whole response (the server closes after a rejection).
pub fn http_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = connect(addr);
    stream.write_all(request).expect("write request");
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    String::from_utf8_lossy(&response).into_owned()
}

/// Status code of an HTTP response text.
pub fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
}

/// Reads up to the end of the response head; returns the head and any bytes after it.
pub fn read_head(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut data = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = data.split_off(at + 4);
            return (String::from_utf8_lossy(&data).into_owned(), rest);
        }
        let n = stream.read(&mut chunk).expect("read head");
        assert!(
            n > 0,
            "connection closed before the response head: {data:?}"
        );
        data.extend_from_slice(&chunk[..n]);
    }
}

/// Opens an upgraded connection for `sub` over raw TCP.
pub fn open(addr: SocketAddr, sub: &str) -> RawClient {
    open_with_token(addr, &token(sub))
}

/// Builds a masked client frame.
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    client_frame_raw((u8::from(fin) << 7) | opcode, payload)
}

/// Builds a masked client frame with an arbitrary first byte (RSV bits, reserved opcodes).
pub fn client_frame_raw(first: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![first];
    match payload.len() {
        len @ 0..=125 => frame.push(0x80 | len as u8),
        len @ 126..=65_535 => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&key);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    frame
}

/// A server frame as read back: (FIN, opcode, payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFrame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl ServerFrame {
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == 0x8 && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).expect("server text frame is JSON")
    }
}

pub struct RawClient {
    pub stream: TcpStream,
    pub pending: Vec<u8>,
}

impl RawClient {
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write frame");
    }

    pub fn send_text(&mut self, text: &str) {
        self.send(&client_frame(true, 0x1, text.as_bytes()));
    }

    /// Reads one server frame; None when the server closed TCP.
    pub fn read_frame(&mut self) -> Option<ServerFrame> {
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.pending) {
                self.pending.drain(..used);
                return Some(frame);
            }
            let mut chunk = [0u8; 65_536];
            let n = match self.stream.read(&mut chunk) {
                Ok(n) => n,
                Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => 0,
                Err(err) => panic!("read failed: {err}"),
            };
            if n == 0 {
                return None;
            }
            self.pending.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads frames until a close frame; returns its code. Panics if TCP closes first.
    pub fn expect_close(&mut self) -> u16 {
        loop {
            let frame = self.read_frame().expect("close frame before TCP close");
            if frame.opcode == 0x8 {
                return frame.close_code().unwrap_or(1005);
            }
        }
    }

    /// Completes the close handshake from the client side and checks the server's FIN
    /// arrives (no reset).
    pub fn finish_close(&mut self, code: u16) {
        self.send(&client_frame(true, 0x8, &code.to_be_bytes()));
        let mut rest = Vec::new();
        let result = self.stream.read_to_end(&mut rest);
        assert!(result.is_ok(), "server reset the connection: {result:?}");
    }
}

/// Parses one unmasked server frame from the front of `data`.
pub fn parse_server_frame(data: &[u8]) -> Option<(ServerFrame, usize)> {
    if data.len() < 2 {
        return None;
    }
    assert_eq!(data[1] & 0x80, 0, "server frames must not be masked");
    let (len, header) = match data[1] & 0x7f {
        126 => {
            if data.len() < 4 {
                return None;
            }
            (u16::from_be_bytes([data[2], data[3]]) as usize, 4)
        }
        127 => {
            if data.len() < 10 {
                return None;
            }
            let mut raw = [0u8; 8];
            raw.copy_from_slice(&data[2..10]);
            (u64::from_be_bytes(raw) as usize, 10)
        }
        len => (len as usize, 2),
    };
    if data.len() < header + len {
        return None;
    }
    let frame = ServerFrame {
        fin: data[0] & 0x80 != 0,
        opcode: data[0] & 0x0f,
        payload: data[header..header + len].to_vec(),
    };
    Some((frame, header + len))
}

/// A chat message with the default required fields.
pub fn chat(id: &str, to: &str, content: &str) -> String {
    serde_json::json!({ "id": id, "conversation_id": "c1", "to": to, "content": content })
        .to_string()
}

/// Finds two user ids owned by different workers of a `shards`-worker server.
pub fn users_on_different_workers(shards: usize) -> (String, String) {
    let ring = framegate::shard::Ring::new(shards).expect("ring");
    let first = "alice".to_owned();
    let owner = ring.owner(first.as_bytes());
    for i in 0..10_000 {
        let candidate = format!("bob{i}");
        if ring.owner(candidate.as_bytes()) != owner {
            return (first, candidate);
        }
    }
    panic!("no user on another worker");
}

/// A started server with its admin address and a drain handle.
pub struct Started {
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub drain: framegate::runtime::DrainHandle,
}

/// Starts a server and keeps its admin address and drain handle.
pub fn start_full(config: Config) -> Started {
    let verifier = hs256_verifier(&config);
    let server = framegate::runtime::start(config, verifier).expect("server starts");
    let started = Started {
        addr: server.local_addr(),
        admin: server.admin_addr(),
        drain: server.drain_handle(),
    };
    std::thread::spawn(move || server.join());
    started
}

/// Sends a GET to the admin listener; returns (status, body).
pub fn admin_get(admin: SocketAddr, path: &str) -> (u16, String) {
    let response = http_exchange(
        admin,
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").as_bytes(),
    );
    status_and_body(&response)
}

/// Splits an HTTP response into its status code and its body.
pub fn status_and_body(response: &str) -> (u16, String) {
    let status = status_of(response);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Opens an upgraded connection with an explicit token.
pub fn open_with_token(addr: SocketAddr, token: &str) -> RawClient {
    open_pipelined(addr, token, &[])
}

/// Opens an upgraded connection with `token`, sending `frames` in the same write as the
/// upgrade request, so they reach the server before its `101` does.
pub fn open_pipelined(addr: SocketAddr, token: &str, frames: &[u8]) -> RawClient {
    let mut stream = connect(addr);
    let mut bytes = upgrade_request(token).into_bytes();
    bytes.extend_from_slice(frames);
    stream.write_all(&bytes).expect("write upgrade");
    let (head, rest) = read_head(&mut stream);
    assert_eq!(status_of(&head), 101, "upgrade failed: {head}");
    RawClient {
        stream,
        pending: rest,
    }
}

/// A free loopback port (bound and released; a small race is acceptable in tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("free port")
}

/// Starts a server and keeps the whole handle (metrics, drain) alive for the test.
pub fn start_server(config: Config) -> framegate::runtime::Server {
    let verifier = hs256_verifier(&config);
    framegate::runtime::start(config, verifier).expect("server starts")
}

/// Waits until `condition` holds, polling every 10 ms for up to 10 s.
pub fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A tokio-tungstenite client, the independent client of the relay and upstream tests.
pub type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects to `addr` with tokio-tungstenite as `user`, the token in the `Authorization`
/// header, and checks for `101 Switching Protocols`.
pub async fn connect_user(addr: SocketAddr, user: &str) -> Client {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    request.headers_mut().insert(
        "Authorization",
        format!("Bearer {}", token(user)).parse().unwrap(),
    );
    let (client, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("upgrade");
    assert_eq!(response.status(), 101);
    client
}

/// Returns the next text message as JSON and skips other frames. Fails after 10 s.
pub async fn next_json(client: &mut Client) -> serde_json::Value {
    use futures_util::StreamExt;
    loop {
        let message = tokio::time::timeout(IO_TIMEOUT, client.next())
            .await
            .expect("message within 10 s")
            .expect("stream open")
            .expect("valid frame");
        if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
            return serde_json::from_str(&text).expect("JSON");
        }
    }
}
