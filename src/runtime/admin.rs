//! The admin listener: `/metrics`, `/healthz`, `/readyz` and the push API (`/v1/...`) on a
//! separate address (default 127.0.0.1:9090), away from the public port.
//!
//! Admin traffic is a few requests per scrape interval, so one plain thread with blocking
//! sockets serves it, one request per connection, and the workers never see it.

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
/// Largest admin request head read; longer requests get 431.
const MAX_ADMIN_REQUEST: usize = 8192;
/// Time a client has to send its whole request and read the response.
const ADMIN_REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// Admin requests served at once; more get 503 so a probe never waits behind slow clients.
const MAX_ADMIN_CONCURRENT: usize = 16;

/// Serves the bound admin listener on a thread of its own. Returns the bound address.
pub(crate) fn start(listener: TcpListener, shared: Arc<Shared>) -> std::io::Result<SocketAddr> {
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("framegate-admin".to_owned())
        .spawn(move || {
            let active = Arc::new(AtomicUsize::new(0));
            for stream in listener.incoming() {
                match stream {
                    Ok(mut stream) => {
                        if active.fetch_add(1, Ordering::Relaxed) >= MAX_ADMIN_CONCURRENT {
                            active.fetch_sub(1, Ordering::Relaxed);
                            let _ = stream.set_write_timeout(Some(ADMIN_REQUEST_DEADLINE));
                            let _ =
                                respond(&mut stream, &Reply::text(503, "admin listener busy\n"));
                            continue;
                        }
                        let shared = Arc::clone(&shared);
                        let active = Arc::clone(&active);
                        let spawned = std::thread::Builder::new()
                            .name("framegate-admin-req".to_owned())
                            .spawn(move || {
                                if let Err(err) = serve(stream, &shared) {
                                    tracing::debug!(error = %err, "admin request failed");
                                }
                                active.fetch_sub(1, Ordering::Relaxed);
                            });
                        if spawned.is_err() {
                            tracing::warn!("cannot start a thread for an admin request");
                        }
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "admin accept failed");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        })?;
    Ok(local)
}

fn serve(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let deadline = Instant::now() + ADMIN_REQUEST_DEADLINE;
    stream.set_write_timeout(Some(ADMIN_REQUEST_DEADLINE))?;
    let mut data = Vec::with_capacity(512);
    let mut chunk = [0u8; 4096];
    let head_len = loop {
        if let Some(at) = data.windows(4).position(|window| window == b"\r\n\r\n") {
            break at + 4;
        }
        if data.len() > MAX_ADMIN_REQUEST {
            return respond(&mut stream, &Reply::text(431, "request head too large\n"));
        }
        if !read_some(&mut stream, &mut data, &mut chunk, deadline)? {
            return Ok(());
        }
    };

    let Some(head) = parse_head(data.get(..head_len).unwrap_or_default()) else {
        return respond(&mut stream, &Reply::text(400, "invalid request head\n"));
    };
    if head.content_length > MAX_ADMIN_BODY {
        return respond(
            &mut stream,
            &Reply::text(413, "request body above 1048576 bytes\n"),
        );
    }

    let body_end = head_len + head.content_length;
    while data.len() < body_end {
        if !read_some(&mut stream, &mut data, &mut chunk, deadline)? {
            return Ok(());
        }
    }

    let body = data.get(head_len..body_end).unwrap_or_default();
    let reply = route(shared, &head, body);
    respond(&mut stream, &reply)
}

/// Reads once into `data`; false at end of stream or when the deadline has passed. The
/// deadline covers the whole request, so a byte-at-a-time client cannot hold on.
fn read_some(
    stream: &mut TcpStream,
    data: &mut Vec<u8>,
    chunk: &mut [u8],
    deadline: Instant,
) -> std::io::Result<bool> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Ok(false);
    }
    stream.set_read_timeout(Some(left))?;
    let n = stream.read(chunk)?;
    if n == 0 {
        return Ok(false);
    }
    data.extend_from_slice(chunk.get(..n).unwrap_or_default());
    Ok(true)
}

/// The parts of an admin request head that the routes use.
struct Head {
    method: String,
    path: String,
    authorization: Option<Vec<u8>>,
    content_length: usize,
}

fn parse_head(bytes: &[u8]) -> Option<Head> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return None,
    }
    let method = request.method?.to_owned();
    let target = request.path?;
    let path = target.split('?').next().unwrap_or_default().to_owned();
    let mut authorization = None;
    let mut content_length = 0;
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("authorization") {
            authorization = Some(header.value.to_vec());
        } else if header.name.eq_ignore_ascii_case("content-length") {
            content_length = std::str::from_utf8(header.value)
                .ok()?
                .trim()
                .parse()
                .ok()?;
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            // Only Content-Length bodies are read.
            return None;
        }
    }
    Some(Head {
        method,
        path,
        authorization,
        content_length,
    })
}

/// A response to write.
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

    fn with_header(mut self, line: &'static str) -> Self {
        self.extra_header = Some(line);
        self
    }
}

fn route(shared: &Shared, head: &Head, body: &[u8]) -> Reply {
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

/// Routes `/v1/...`: off (404) without a key, 401 without the right bearer key.
fn push_route(shared: &Shared, head: &Head, body: &[u8]) -> Reply {
    let Some(key) = &shared.push_key else {
        let variable = &shared.config.push_api_key_env;
        return Reply::error(
            404,
            &format!(
                "not found: the push API is off because {variable} (push_api_key_env) is unset or empty; set it to enable the API"
            ),
        );
    };
    if !bearer_matches(head.authorization.as_deref(), key.as_bytes()) {
        let mut reply = Reply::error(401, "missing or wrong bearer key for the push API");
        reply.extra_header = Some("WWW-Authenticate: Bearer");
        return reply;
    }
    let path = head.path.as_str();
    if let Some(id) = path.strip_prefix("/v1/connections/") {
        let Some(id) = parse_conn_id(id) else {
            return Reply::error(400, "connection id must be a decimal integer");
        };
        return match head.method.as_str() {
            "POST" => push_connection(shared, id, body),
            "DELETE" => close_connection(shared, id),
            _ => Reply::error(
                405,
                "use POST to send to a connection or DELETE to close it",
            )
            .with_header("Allow: POST, DELETE"),
        };
    }
    match (head.method.as_str(), path) {
        ("POST", "/v1/push") => push_users(shared, body),
        ("POST", "/v1/disconnect") => disconnect(shared, body),
        (_, "/v1/push" | "/v1/disconnect") => {
            Reply::error(405, "use POST").with_header("Allow: POST")
        }
        _ => Reply::error(
            404,
            "not found; try /v1/push, /v1/connections/{id} or /v1/disconnect",
        ),
    }
}

/// Parses a connection id: decimal digits only, so no sign, and at most `u64::MAX`.
fn parse_conn_id(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Compares the bearer token with `key` in time independent of where they differ.
fn bearer_matches(authorization: Option<&[u8]>, key: &[u8]) -> bool {
    let Some(token) = authorization.and_then(|value| value.strip_prefix(b"Bearer ")) else {
        return false;
    };
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
    let ops = group_users(shared, request.users)
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
    let users = group_users(shared, request.users);
    let conns = group_conns(shared.inboxes.len(), &request.connection_ids);
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
        410 => "Gone",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
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

    #[test]
    fn group_conns_splits_by_owner_and_drops_unknown() {
        let ids = [(1 << 48) | 3, 7, (5 << 48) | 1, (1 << 48) | 4];
        let groups = group_conns(2, &ids);
        assert_eq!(groups, vec![vec![7], vec![(1 << 48) | 3, (1 << 48) | 4]]);
    }
}
