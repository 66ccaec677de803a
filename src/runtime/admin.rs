//! The admin listener: `/metrics`, `/healthz`, `/readyz` and the push API (`/v1/...`) on a
//! separate address (default 127.0.0.1:9090), away from the public port.
//!
//! Admin traffic is a few requests per scrape interval, so plain threads with blocking
//! sockets serve it, one request per connection and one thread per request, and the workers
//! never see it.

use std::collections::HashSet;
use std::hash::Hash;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use super::{AdminOp, AdminReply, AdminRequest, ConnState, Shared, WorkerMsg};
use crate::frame::CloseCode;

/// Largest admin request body (bytes); larger bodies get 413.
const MAX_ADMIN_BODY: usize = 1 << 20;
/// Largest admin request head in bytes. Longer heads get 431.
const MAX_ADMIN_REQUEST: usize = 8192;
/// Maximum header fields in an admin request head. More get 431.
const MAX_ADMIN_HEADERS: usize = 64;
/// Time a client has from connecting to sending its whole request head, or it gets 408.
/// Short, so a connection that sends nothing gives its slot back within a second.
const ADMIN_HEAD_DEADLINE: Duration = Duration::from_secs(1);
/// Time a client has from the end of its request head to sending the whole body, or it
/// gets 408. It is also the write timeout for the response.
const ADMIN_BODY_DEADLINE: Duration = Duration::from_secs(2);
/// Admin requests served at once, one thread each. More get 503, so a probe never waits
/// behind slow clients. Only a client with the push key gets time for a body, so for any
/// other client, with [`ADMIN_HEAD_DEADLINE`], keeping `/healthz` busy takes this many
/// connections reopened every second.
const MAX_ADMIN_CONCURRENT: usize = 128;

/// Serves the bound admin listener on a thread of its own. Returns the bound address.
pub(crate) fn start(listener: TcpListener, shared: Arc<Shared>) -> std::io::Result<SocketAddr> {
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("framegate-admin".to_owned())
        .spawn(move || {
            let active = Arc::new(AtomicUsize::new(0));
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => serve_on_thread(stream, &active, &shared),
                    Err(err) => {
                        tracing::warn!(error = %err, "admin accept failed");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        })?;
    Ok(local)
}

/// One of the [`MAX_ADMIN_CONCURRENT`] request slots. Dropping it frees the slot, also when
/// the request thread panics or cannot be started.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves `stream` on a thread of its own, or sends 503 when every slot is taken.
fn serve_on_thread(mut stream: TcpStream, active: &Arc<AtomicUsize>, shared: &Arc<Shared>) {
    let in_progress = active.fetch_add(1, Ordering::Relaxed);
    let slot = Slot(Arc::clone(active));
    if in_progress >= MAX_ADMIN_CONCURRENT {
        drop(slot);
        let _ = stream.set_write_timeout(Some(ADMIN_BODY_DEADLINE));
        let busy = Reply::text(
            503,
            &format!(
                "admin listener busy: {MAX_ADMIN_CONCURRENT} requests in progress; retry shortly\n"
            ),
        )
        .with_header("Retry-After: 1");
        let _ = respond(&mut stream, &busy);
        return;
    }
    let shared = Arc::clone(shared);
    let spawned = std::thread::Builder::new()
        .name("framegate-admin-req".to_owned())
        .spawn(move || {
            let _slot = slot;
            if let Err(err) = serve(stream, &shared) {
                tracing::debug!(error = %err, "admin request failed");
            }
        });
    if let Err(err) = spawned {
        tracing::warn!(error = %err, "cannot start a thread for an admin request");
    }
}

fn serve(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    stream.set_write_timeout(Some(ADMIN_BODY_DEADLINE))?;
    let mut data = Vec::with_capacity(512);
    let mut chunk = [0u8; 4096];

    let head_deadline = Instant::now() + ADMIN_HEAD_DEADLINE;
    let (head, head_len) = loop {
        let limit = data.len().min(MAX_ADMIN_REQUEST);
        match parse_head(data.get(..limit).unwrap_or_default()) {
            Ok(Some(parsed)) => break parsed,
            Ok(None) if limit == MAX_ADMIN_REQUEST => {
                let message =
                    format!("request head above {MAX_ADMIN_REQUEST} bytes; send a shorter head\n");
                return reject(&mut stream, &data, Reply::text(431, &message));
            }
            Ok(None) => {}
            Err(reply) => return reject(&mut stream, &data, reply),
        }
        match read_some(&mut stream, &mut data, &mut chunk, head_deadline)? {
            ReadOutcome::Data => {}
            ReadOutcome::Closed => return Ok(()),
            ReadOutcome::TimedOut => {
                let message = format!(
                    "request head not received within {} ms of connecting; send the whole head at once\n",
                    ADMIN_HEAD_DEADLINE.as_millis()
                );
                return reject(&mut stream, &data, Reply::text(408, &message));
            }
        }
    };

    let body_len = head.content_length.unwrap_or(0);
    if body_len > MAX_ADMIN_BODY {
        let message = format!("request body above {MAX_ADMIN_BODY} bytes; send a smaller body\n");
        return reject(&mut stream, &data, Reply::text(413, &message));
    }

    // Only the push API reads a body, and only from a client with the key, so a client
    // without it keeps a slot no longer than the head deadline.
    if !head.path.starts_with("/v1/") {
        return respond(&mut stream, &route(shared, &head, None));
    }
    if let Some(reply) = push_auth_error(shared, &head) {
        return respond(&mut stream, &reply);
    }

    let body_end = head_len + body_len;
    if head.expect_continue && data.len() < body_end {
        // RFC 9110 §10.1.1: a client that sent `Expect: 100-continue` may wait for this
        // interim response before it sends the body.
        stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let body_deadline = Instant::now() + ADMIN_BODY_DEADLINE;
    while data.len() < body_end {
        match read_some(&mut stream, &mut data, &mut chunk, body_deadline)? {
            ReadOutcome::Data => {}
            ReadOutcome::Closed => return Ok(()),
            ReadOutcome::TimedOut => {
                let message = format!(
                    "request body not received within {} ms of the head: got {} of {body_len} bytes; send the whole body at once\n",
                    ADMIN_BODY_DEADLINE.as_millis(),
                    data.len() - head_len
                );
                return reject(&mut stream, &data, Reply::text(408, &message));
            }
        }
    }

    let body = head
        .content_length
        .map(|_| data.get(head_len..body_end).unwrap_or_default());
    let reply = route(shared, &head, body);
    respond(&mut stream, &reply)
}

/// Logs a request that fails before routing, with the peer and the reply, and sends the
/// reply. `data` is what the client has sent so far: a request to the push API gets the
/// reply as a JSON error like the API's own, so its clients parse one error form.
fn reject(stream: &mut TcpStream, data: &[u8], reply: Reply) -> std::io::Result<()> {
    let target = data.split(|&byte| byte == b' ').nth(1).unwrap_or_default();
    let reply = if target.starts_with(b"/v1/") {
        reply.into_json_error()
    } else {
        reply
    };
    let reply = &reply;
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "unknown".to_owned(), |peer| peer.to_string());
    tracing::debug!(
        peer,
        status = reply.status,
        message = reply.body.trim_end(),
        "admin request rejected"
    );
    respond(stream, reply)
}

/// Result of one read from an admin connection.
enum ReadOutcome {
    /// Bytes were appended to the buffer.
    Data,
    /// The client closed its side.
    Closed,
    /// The deadline passed first.
    TimedOut,
}

/// Reads once into `data`. The deadline covers the whole head or the whole body, so a
/// byte-at-a-time client cannot hold on.
fn read_some(
    stream: &mut TcpStream,
    data: &mut Vec<u8>,
    chunk: &mut [u8],
    deadline: Instant,
) -> std::io::Result<ReadOutcome> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Ok(ReadOutcome::TimedOut);
    }
    stream.set_read_timeout(Some(left))?;
    let n = match stream.read(chunk) {
        Ok(n) => n,
        // A read timeout shows as WouldBlock on Unix and TimedOut on Windows.
        Err(err)
            if matches!(
                err.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            return Ok(ReadOutcome::TimedOut);
        }
        Err(err) => return Err(err),
    };
    if n == 0 {
        return Ok(ReadOutcome::Closed);
    }
    data.extend_from_slice(chunk.get(..n).unwrap_or_default());
    Ok(ReadOutcome::Data)
}

/// The parts of an admin request head that the routes use.
#[derive(Debug)]
struct Head {
    method: String,
    path: String,
    authorization: Option<Vec<u8>>,
    /// `None` when the request has no Content-Length field, so no body.
    content_length: Option<usize>,
    /// The request carries `Expect: 100-continue`.
    expect_continue: bool,
}

/// Parses the request head at the start of `bytes`. Returns `Ok(None)` while the head is
/// incomplete, the head and its length in bytes once httparse finds its end, and the
/// error reply for a head that cannot be served. httparse accepts bare LF as well as CRLF
/// line endings, which RFC 9112 §2.2 allows a recipient to do.
fn parse_head(bytes: &[u8]) -> Result<Option<(Head, usize)>, Reply> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_ADMIN_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            let message =
                format!("more than {MAX_ADMIN_HEADERS} header fields; send fewer fields\n");
            return Err(Reply::text(431, &message));
        }
        Err(err) => {
            let message = format!("invalid request head: {err}\n");
            return Err(Reply::text(400, &message));
        }
    };
    let (Some(method), Some(target)) = (request.method, request.path) else {
        return Err(Reply::text(400, "invalid request head: no request line\n"));
    };

    // RFC 9112 §6.1: a server SHOULD respond with 501 to a transfer coding it does not
    // implement. This listener reads Content-Length bodies only, so chunked gets 501 too.
    if request
        .headers
        .iter()
        .any(|header| header.name.eq_ignore_ascii_case("transfer-encoding"))
    {
        return Err(Reply::text(
            501,
            "Transfer-Encoding is not supported: chunked request bodies are not read; send the body with Content-Length\n",
        ));
    }

    let mut authorization = None;
    let mut content_length = None;
    let mut expect_continue = false;
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("authorization") {
            authorization = Some(header.value.to_vec());
        } else if header.name.eq_ignore_ascii_case("expect") {
            expect_continue |= header
                .value
                .trim_ascii()
                .eq_ignore_ascii_case(b"100-continue");
        } else if header.name.eq_ignore_ascii_case("content-length") {
            // RFC 9110 §8.6 lets a recipient either reject repeated Content-Length fields or
            // merge identical values. This listener takes the strict choice and rejects any
            // repeat, also of the same value and also as a list in one field line, because
            // framing that two parsers could read differently is the start of request
            // smuggling.
            if content_length.is_some() {
                return Err(Reply::text(
                    400,
                    "Content-Length appears more than once; send one Content-Length field\n",
                ));
            }
            content_length = Some(parse_content_length(header.value)?);
        }
    }

    let path = target.split('?').next().unwrap_or_default().to_owned();
    let head = Head {
        method: method.to_owned(),
        path,
        authorization,
        content_length,
        expect_continue,
    };
    Ok(Some((head, head_len)))
}

/// Parses a Content-Length value, which must be `1*DIGIT` (RFC 9110 §8.6): no sign, no
/// spaces inside and no list. httparse has already removed the spaces around the value. A
/// value too large for `usize` becomes `usize::MAX`, which the body limit rejects with 413.
fn parse_content_length(value: &[u8]) -> Result<usize, Reply> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        let message = format!(
            "Content-Length must be decimal digits, got {:?}; send the body length in bytes\n",
            String::from_utf8_lossy(value)
        );
        return Err(Reply::text(400, &message));
    }
    let length = std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(usize::MAX);
    Ok(length)
}

/// A response to write.
#[derive(Debug)]
struct Reply {
    status: u16,
    content_type: &'static str,
    body: String,
    /// One extra header line, without CRLF.
    extra_header: Option<&'static str>,
}

impl Reply {
    fn text(status: u16, body: &str) -> Self {
        Self {
            status,
            content_type: "text/plain",
            body: body.to_owned(),
            extra_header: None,
        }
    }

    fn json(status: u16, body: String) -> Self {
        Self {
            status,
            content_type: "application/json",
            body,
            extra_header: None,
        }
    }

    fn error(status: u16, message: &str) -> Self {
        Self::json(status, serde_json::json!({ "error": message }).to_string())
    }

    /// Turns a text reply into the JSON error form, `{"error":"<text>"}`.
    fn into_json_error(self) -> Self {
        let mut json = Self::error(self.status, self.body.trim_end());
        json.extra_header = self.extra_header;
        json
    }

    fn with_header(mut self, line: &'static str) -> Self {
        self.extra_header = Some(line);
        self
    }
}

/// Routes a request. `body` is `None` when the request has no Content-Length.
fn route(shared: &Shared, head: &Head, body: Option<&[u8]>) -> Reply {
    if head.path.starts_with("/v1/") {
        return push_route(shared, head, body);
    }
    let known = matches!(head.path.as_str(), "/healthz" | "/readyz" | "/metrics");
    if known && head.method != "GET" {
        return Reply::text(405, "only GET is supported\n").with_header("Allow: GET");
    }
    match head.path.as_str() {
        "/healthz" => Reply::text(200, "ok\n"),
        "/readyz" if shared.is_ready() => Reply::text(200, "ready\n"),
        "/readyz" => Reply::text(503, "not ready\n"),
        "/metrics" => Reply {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: super::render_metrics(shared),
            extra_header: None,
        },
        _ => Reply::text(404, "not found; try /metrics, /healthz or /readyz\n"),
    }
}

/// Time the admin listener waits for every worker to reply to a push API request.
const WORKER_REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// `POST /v1/push` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PushBody<'a> {
    users: Vec<String>,
    /// Borrowed unparsed, so the frame carries the bytes of the value as received: key
    /// order, duplicate keys and number precision are kept.
    #[serde(borrow)]
    message: &'a RawValue,
}

/// `POST /v1/disconnect` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectBody {
    #[serde(default)]
    connection_ids: Vec<u64>,
    #[serde(default)]
    users: Vec<String>,
    code: Option<u16>,
    reason: Option<String>,
}

/// Close code used when a request does not name one (application range, RFC 6455 §7.4.2).
const DEFAULT_DISCONNECT_CODE: u16 = 4000;

/// Returns the error reply for a push API request that may not proceed: 404 while the API
/// is off, 401 without the right bearer key.
fn push_auth_error(shared: &Shared, head: &Head) -> Option<Reply> {
    let Some(key) = &shared.push_key else {
        let variable = &shared.config.push_api_key_env;
        return Some(Reply::error(
            404,
            &format!(
                "not found: the push API is off because {variable} (push_api_key_env) is unset or empty; set it to enable the API"
            ),
        ));
    };
    if !bearer_matches(head.authorization.as_deref(), key.as_bytes()) {
        let mut reply = Reply::error(401, "missing or wrong bearer key for the push API");
        reply.extra_header = Some("WWW-Authenticate: Bearer");
        return Some(reply);
    }
    None
}

/// Routes `/v1/...`: off (404) without a key, 401 without the right bearer key, 411 for a
/// POST without Content-Length.
fn push_route(shared: &Shared, head: &Head, body: Option<&[u8]>) -> Reply {
    if let Some(reply) = push_auth_error(shared, head) {
        return reply;
    }
    let path = head.path.as_str();
    if let Some(id) = path.strip_prefix("/v1/connections/") {
        let Some(id) = parse_conn_id(id) else {
            return Reply::error(400, "connection id must be a decimal integer");
        };
        return match head.method.as_str() {
            "POST" => body.map_or_else(length_required, |body| push_connection(shared, id, body)),
            "DELETE" => close_connection(shared, id),
            _ => Reply::error(
                405,
                "use POST to send to a connection or DELETE to close it",
            )
            .with_header("Allow: POST, DELETE"),
        };
    }
    match (head.method.as_str(), path) {
        ("POST", "/v1/push") => body.map_or_else(length_required, |body| push_users(shared, body)),
        ("POST", "/v1/disconnect") => {
            body.map_or_else(length_required, |body| disconnect(shared, body))
        }
        (_, "/v1/push" | "/v1/disconnect") => {
            Reply::error(405, "use POST").with_header("Allow: POST")
        }
        _ => Reply::error(
            404,
            "not found; try /v1/push, /v1/connections/{id} or /v1/disconnect",
        ),
    }
}

/// 411 for a POST whose JSON body the route reads but that has no Content-Length.
fn length_required() -> Reply {
    Reply::error(
        411,
        "Content-Length is missing; send the JSON body with a Content-Length header (chunked bodies are not supported)",
    )
}

/// Parses a connection id: decimal digits only, so no sign, and at most `u64::MAX`.
fn parse_conn_id(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Compares the bearer token with `key` in time independent of where they differ. The
/// scheme name `Bearer` matches in any case and one or more spaces follow it (RFC 9110
/// §11.1 and §11.4).
fn bearer_matches(authorization: Option<&[u8]>, key: &[u8]) -> bool {
    let Some(value) = authorization else {
        return false;
    };
    let Some(space) = value.iter().position(|&byte| byte == b' ') else {
        return false;
    };
    let (scheme, mut token) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"Bearer") {
        return false;
    }
    while let Some(rest) = token.strip_prefix(b" ") {
        token = rest;
    }
    if token.len() != key.len() {
        return false;
    }
    token
        .iter()
        .zip(key)
        .fold(0u8, |diff, (a, b)| diff | (a ^ b))
        == 0
}

fn push_users(shared: &Shared, body: &[u8]) -> Reply {
    let request: PushBody = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(err) => {
            return Reply::error(
                400,
                &format!("body must be JSON {{\"users\": [...], \"message\": ...}}: {err}"),
            );
        }
    };
    let frame = super::worker::text_frame(request.message.get().as_bytes());
    if let Err(reply) = check_frame_size(shared, &frame) {
        return reply;
    }
    let ops = group_users(shared, unique_in_order(request.users))
        .into_iter()
        .enumerate()
        .filter(|(_, users)| !users.is_empty())
        .map(|(worker, users)| {
            let frame = frame.clone();
            (worker, AdminOp::PushUsers { users, frame })
        })
        .collect();
    let reply = match run_on_workers(shared, ops) {
        Ok(reply) => reply,
        Err(reply) => return reply,
    };
    counts_reply(202, &reply, "none of the users has an open connection")
}

/// Rejects a message whose frame no connection can queue: one frame above
/// `max_outbound_bytes` would close the recipient as a slow consumer.
fn check_frame_size(shared: &Shared, frame: &[u8]) -> Result<(), Reply> {
    let max = shared.config.max_outbound_bytes;
    if frame.len() <= max {
        return Ok(());
    }
    Err(Reply::error(
        413,
        &format!(
            "the message makes a {} byte frame, above max_outbound_bytes ({max}); send a smaller message or raise the limit",
            frame.len()
        ),
    ))
}

fn push_connection(shared: &Shared, id: u64, body: &[u8]) -> Reply {
    let message: &RawValue = match serde_json::from_slice(body) {
        Ok(message) => message,
        Err(err) => {
            return Reply::error(
                400,
                &format!("body must be one JSON value, the message to send: {err}"),
            );
        }
    };
    let Some(owner) = super::conn_id_owner(id, shared.inboxes.len()) else {
        return Reply::error(404, "unknown connection id");
    };
    let frame = super::worker::text_frame(message.get().as_bytes());
    if let Err(reply) = check_frame_size(shared, &frame) {
        return reply;
    }
    let op = AdminOp::PushConns {
        conns: vec![id],
        frame,
    };
    let reply = match run_on_workers(shared, vec![(owner, op)]) {
        Ok(reply) => reply,
        Err(reply) => return reply,
    };
    single_connection_reply(202, &reply)
}

fn close_connection(shared: &Shared, id: u64) -> Reply {
    let Some(owner) = super::conn_id_owner(id, shared.inboxes.len()) else {
        return Reply::error(404, "unknown connection id");
    };
    let op = AdminOp::Close {
        conns: vec![id],
        users: Vec::new(),
        code: CloseCode::NORMAL,
        reason: "closed by the application".to_owned(),
    };
    let reply = match run_on_workers(shared, vec![(owner, op)]) {
        Ok(reply) => reply,
        Err(reply) => return reply,
    };
    single_connection_reply(200, &reply)
}

fn disconnect(shared: &Shared, body: &[u8]) -> Reply {
    let request: DisconnectBody = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(err) => {
            return Reply::error(
                400,
                &format!(
                    "body must be JSON {{\"connection_ids\": [...]}} or {{\"users\": [...]}}, with optional \"code\" and \"reason\": {err}"
                ),
            );
        }
    };
    let code = request.code.unwrap_or(DEFAULT_DISCONNECT_CODE);
    if !(4000..=4999).contains(&code) {
        return Reply::error(400, &format!("invalid close code {code}: use 4000 to 4999"));
    }
    if request.connection_ids.is_empty() && request.users.is_empty() {
        return Reply::error(400, "name at least one connection id or user");
    }
    let reason = request.reason.unwrap_or_default();
    let reason = crate::conn::truncate_reason(&reason).to_owned();
    let users = group_users(shared, unique_in_order(request.users));
    let connection_ids = unique_in_order(request.connection_ids);
    let conns = group_conns(shared.inboxes.len(), &connection_ids);
    let ops = users
        .into_iter()
        .zip(conns)
        .enumerate()
        .filter(|(_, (users, conns))| !users.is_empty() || !conns.is_empty())
        .map(|(worker, (users, conns))| {
            let op = AdminOp::Close {
                conns,
                users,
                code: CloseCode(code),
                reason: reason.clone(),
            };
            (worker, op)
        })
        .collect();
    let reply = match run_on_workers(shared, ops) {
        Ok(reply) => reply,
        Err(reply) => return reply,
    };
    counts_reply(200, &reply, "none of the connections or users is open")
}

/// `status` with the counts, or 404 when nothing was reached.
fn counts_reply(status: u16, reply: &AdminReply, none_message: &str) -> Reply {
    if reply.connections == 0 {
        return Reply::error(404, none_message);
    }
    Reply::json(
        status,
        serde_json::json!({ "users": reply.users, "connections": reply.connections }).to_string(),
    )
}

/// `status` for an open connection, 410 for one that was closed, 404 for an unknown id.
fn single_connection_reply(status: u16, reply: &AdminReply) -> Reply {
    match reply
        .conn_states
        .first()
        .copied()
        .unwrap_or(ConnState::Unknown)
    {
        ConnState::Open => Reply::json(
            status,
            serde_json::json!({ "connections": reply.connections }).to_string(),
        ),
        ConnState::Closed => Reply::error(410, "the connection is closed"),
        ConnState::Unknown => Reply::error(404, "unknown connection id"),
    }
}

/// Drops repeated items and keeps the first of each in place, so a user or connection named
/// twice in one request gets one message or close and is counted once.
///
/// The set contains references, not copies. A 1 MiB body can name over 100,000 users, and a
/// copy of each would add one allocation per user to every request in flight.
fn unique_in_order<T: Eq + Hash>(items: Vec<T>) -> Vec<T> {
    let keep: Vec<bool> = {
        let mut seen = HashSet::with_capacity(items.len());
        items.iter().map(|item| seen.insert(item)).collect()
    };
    items
        .into_iter()
        .zip(keep)
        .filter_map(|(item, keep)| keep.then_some(item))
        .collect()
}

/// Splits `users` by the worker that owns each (the shard ring); index `i` is worker `i`.
fn group_users(shared: &Shared, users: Vec<String>) -> Vec<Vec<String>> {
    let mut groups = vec![Vec::new(); shared.inboxes.len()];
    for user in users {
        if let Some(group) = groups.get_mut(shared.ring.owner(user.as_bytes())) {
            group.push(user);
        }
    }
    groups
}

/// Splits connection ids by the worker each names; index `i` is worker `i`. An id that names
/// no worker is unknown and left out.
fn group_conns(workers: usize, ids: &[u64]) -> Vec<Vec<u64>> {
    let mut groups = vec![Vec::new(); workers];
    for &id in ids {
        if let Some(group) =
            super::conn_id_owner(id, workers).and_then(|owner| groups.get_mut(owner))
        {
            group.push(id);
        }
    }
    groups
}

/// Reserves one slot in each of `inboxes`, or none: when one inbox is full, the permits
/// already taken are dropped, which gives their slots back.
fn reserve_all<'a, T>(
    inboxes: impl IntoIterator<Item = &'a mpsc::Sender<T>>,
) -> Option<Vec<mpsc::Permit<'a, T>>>
where
    T: 'a,
{
    inboxes
        .into_iter()
        .map(|inbox| inbox.try_reserve().ok())
        .collect()
}

/// Sends each `(worker, op)` to that worker and merges the replies. Every target inbox gets
/// its slot reserved before any operation is sent, so a full inbox returns 503 with nothing
/// applied and the client can retry without duplicates.
fn run_on_workers(shared: &Shared, ops: Vec<(usize, AdminOp)>) -> Result<AdminReply, Reply> {
    let busy = || {
        let mut reply = Reply::error(503, "a worker queue is full; retry shortly");
        reply.extra_header = Some("Retry-After: 1");
        reply
    };
    let inboxes: Option<Vec<&mpsc::Sender<WorkerMsg>>> = ops
        .iter()
        .map(|(worker, _)| shared.inboxes.get(*worker))
        .collect();
    let Some(inboxes) = inboxes else {
        return Err(Reply::error(500, "internal error: no such worker"));
    };
    let Some(permits) = reserve_all(inboxes) else {
        return Err(busy());
    };

    let mut receivers = Vec::with_capacity(ops.len());
    for (permit, (_, op)) in permits.into_iter().zip(ops) {
        let (reply, receiver) = std::sync::mpsc::channel();
        permit.send(WorkerMsg::Admin(AdminRequest { op, reply }));
        receivers.push(receiver);
    }

    let deadline = Instant::now() + WORKER_REPLY_TIMEOUT;
    let mut merged = AdminReply::default();
    for receiver in receivers {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(reply) = receiver.recv_timeout(left) else {
            let mut reply = Reply::error(503, "a worker did not answer in time; retry shortly");
            reply.extra_header = Some("Retry-After: 1");
            return Err(reply);
        };
        merged.users += reply.users;
        merged.connections += reply.connections;
        merged.conn_states.extend(reply.conn_states);
    }
    Ok(merged)
}

fn respond(stream: &mut TcpStream, reply: &Reply) -> std::io::Result<()> {
    let reason = match reply.status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        410 => "Gone",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let extra = reply
        .extra_header
        .map(|line| format!("{line}\r\n"))
        .unwrap_or_default();
    let response = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{}",
        reply.status,
        reply.content_type,
        reply.body.len(),
        reply.body
    );
    stream.write_all(response.as_bytes())?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_all_with_full_inbox_sends_nothing() {
        let (first, mut first_rx) = mpsc::channel::<u8>(1);
        let (second, _second_rx) = mpsc::channel::<u8>(1);
        second.try_send(0).unwrap();

        assert!(reserve_all([&first, &second]).is_none());

        assert!(
            first_rx.try_recv().is_err(),
            "nothing reached the first inbox"
        );
        assert!(
            first.try_reserve().is_ok(),
            "the failed call gave back its slot in the first inbox"
        );
    }

    #[test]
    fn reserve_all_with_room_reaches_every_inbox() {
        let (first, mut first_rx) = mpsc::channel::<u8>(1);
        let (second, mut second_rx) = mpsc::channel::<u8>(1);

        let permits = reserve_all([&first, &second]).unwrap();
        for (value, permit) in permits.into_iter().enumerate() {
            permit.send(u8::try_from(value).unwrap());
        }

        assert_eq!(first_rx.try_recv().unwrap(), 0);
        assert_eq!(second_rx.try_recv().unwrap(), 1);
    }

    #[test]
    fn parse_conn_id_takes_decimal_digits_only() {
        assert_eq!(parse_conn_id("7"), Some(7));
        assert_eq!(parse_conn_id("18446744073709551615"), Some(u64::MAX));
        for text in ["", "abc", "+7", "-7", " 7", "0x7", "18446744073709551616"] {
            assert_eq!(parse_conn_id(text), None, "{text:?}");
        }
    }

    /// Parses a complete head, panicking with the reply when it is rejected.
    fn parse_complete(bytes: &[u8]) -> (Head, usize) {
        match parse_head(bytes) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => panic!("head incomplete: {bytes:?}"),
            Err(reply) => panic!("head rejected: {reply:?}"),
        }
    }

    /// Returns the reply for a head that `parse_head` rejects.
    fn parse_rejected(bytes: &[u8]) -> Reply {
        match parse_head(bytes) {
            Err(reply) => reply,
            Ok(parsed) => panic!("head accepted: {parsed:?}"),
        }
    }

    #[test]
    fn parse_head_reads_content_length_and_authorization() {
        let head_text =
            "POST /v1/push?x=1 HTTP/1.1\r\nAuthorization: Bearer k\r\nContent-Length: 12\r\n\r\n";
        let (head, len) = parse_complete(format!("{head_text}body").as_bytes());
        assert_eq!(len, head_text.len());
        assert_eq!(head.method, "POST");
        assert_eq!(head.path, "/v1/push");
        assert_eq!(head.authorization.as_deref(), Some(&b"Bearer k"[..]));
        assert_eq!(head.content_length, Some(12));
    }

    #[test]
    fn parse_head_without_content_length_has_none() {
        let (head, _) = parse_complete(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(head.content_length, None);
    }

    #[test]
    fn parse_head_incomplete_returns_none() {
        for bytes in [
            &b""[..],
            b"GET /healthz HTTP/1.1\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: a\r\n",
        ] {
            assert!(matches!(parse_head(bytes), Ok(None)), "{bytes:?}");
        }
    }

    #[test]
    fn parse_head_accepts_bare_lf_line_endings() {
        let bytes = b"GET /healthz HTTP/1.1\nHost: a\n\n";
        let (head, len) = parse_complete(bytes);
        assert_eq!(head.path, "/healthz");
        assert_eq!(len, bytes.len());
    }

    #[test]
    fn parse_head_rejects_invalid_request_line() {
        let reply = parse_rejected(b"GET /healthz HTTP/1.1 x\r\n\r\n");
        assert_eq!(reply.status, 400);
        assert!(
            reply.body.starts_with("invalid request head: "),
            "{}",
            reply.body
        );
    }

    #[test]
    fn parse_head_rejects_signed_content_length() {
        for value in ["+5", "-5", "5 5", "0x5", "5.0", ""] {
            let head = format!("POST /v1/push HTTP/1.1\r\nContent-Length: {value}\r\n\r\n");
            let reply = parse_rejected(head.as_bytes());
            assert_eq!(reply.status, 400, "{value:?}");
            assert_eq!(
                reply.body,
                format!(
                    "Content-Length must be decimal digits, got {value:?}; send the body length in bytes\n"
                ),
                "{value:?}"
            );
        }
    }

    #[test]
    fn parse_head_rejects_repeated_content_length() {
        let heads = [
            "POST /v1/push HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n",
            "POST /v1/push HTTP/1.1\r\nContent-Length: 7\r\nContent-Length: 5\r\n\r\n",
            "POST /v1/push HTTP/1.1\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n",
        ];
        for head in heads {
            let reply = parse_rejected(head.as_bytes());
            assert_eq!(reply.status, 400, "{head:?}");
            assert_eq!(
                reply.body,
                "Content-Length appears more than once; send one Content-Length field\n",
                "{head:?}"
            );
        }
        let reply = parse_rejected(b"POST /v1/push HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n");
        assert_eq!(
            reply.status, 400,
            "a list of identical values is rejected too"
        );
    }

    #[test]
    fn parse_head_content_length_above_usize_is_max() {
        let (head, _) = parse_complete(
            b"POST /v1/push HTTP/1.1\r\nContent-Length: 99999999999999999999999999\r\n\r\n",
        );
        assert_eq!(head.content_length, Some(usize::MAX));
    }

    #[test]
    fn parse_head_rejects_transfer_encoding() {
        for head in [
            "POST /v1/push HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST /v1/push HTTP/1.1\r\nContent-Length: 5\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
        ] {
            let reply = parse_rejected(head.as_bytes());
            assert_eq!(reply.status, 501, "{head:?}");
            assert!(
                reply.body.contains("send the body with Content-Length"),
                "{}",
                reply.body
            );
        }
    }

    #[test]
    fn parse_head_rejects_too_many_fields() {
        let fields = "X-A: 1\r\n".repeat(MAX_ADMIN_HEADERS + 1);
        let head = format!("GET /healthz HTTP/1.1\r\n{fields}\r\n");
        assert_eq!(parse_rejected(head.as_bytes()).status, 431);
    }

    #[test]
    fn bearer_matches_scheme_in_any_case() {
        for value in [
            "Bearer key",
            "bearer key",
            "BEARER key",
            "bEaReR key",
            "Bearer   key",
        ] {
            assert!(bearer_matches(Some(value.as_bytes()), b"key"), "{value:?}");
        }
    }

    #[test]
    fn bearer_matches_rejects_wrong_scheme_or_key() {
        for value in [
            "Basic key",
            "Bearerkey",
            "Bearer",
            "Bearer ",
            "Bearer kex",
            "Bearer key2",
            "Bearer\tkey",
            "key",
        ] {
            assert!(!bearer_matches(Some(value.as_bytes()), b"key"), "{value:?}");
        }
        assert!(!bearer_matches(None, b"key"));
    }

    #[test]
    fn unique_in_order_keeps_first_of_each() {
        let users = ["b", "a", "b", "c", "a"].map(str::to_owned).to_vec();
        assert_eq!(unique_in_order(users), ["b", "a", "c"]);
        assert_eq!(unique_in_order(vec![7u64, 7, 3, 7]), [7, 3]);
        assert!(unique_in_order(Vec::<u64>::new()).is_empty());
    }

    #[test]
    fn group_conns_splits_by_owner_and_drops_unknown() {
        let ids = [(1 << 48) | 3, 7, (5 << 48) | 1, (1 << 48) | 4];
        let groups = group_conns(2, &ids);
        assert_eq!(groups, vec![vec![7], vec![(1 << 48) | 3, (1 << 48) | 4]]);
    }
}
