//! One worker: a pinned thread running a tokio-uring runtime with its own listener, the
//! connections and users it owns, and an inbox for hand-offs and deliveries from other
//! workers.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ahash::AHashMap;
use bytes::{Buf, Bytes, BytesMut};
use rand::Rng;
use tokio::sync::{Notify, mpsc};
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::{TcpListener, TcpStream};
use tracing::Instrument;

use super::Shared;
use super::conn::{self, ConnHandle};
use crate::config::BackendKind;
use crate::conn::{Accepted, Handshake, HandshakeStep, authenticate};
use crate::frame::reader::MessageKind;
use crate::frame::{CloseCode, OpCode, encode};
use crate::handshake::{self, RejectReason};
use crate::message;
use crate::ratelimit::{Decision, TokenBucket};
use crate::upstream::client::Connection;
use crate::upstream::{self, Envelope, Pool, Target};

/// Most messages taken from the inbox per wake-up.
const INBOX_BATCH: usize = 256;

/// Messages between workers.
pub(crate) enum WorkerMsg {
    /// An authenticated connection whose user this worker owns. The 101 has not been sent.
    Handoff(Box<Handoff>),
    /// A relayed frame for every connection of `to`.
    Deliver {
        to: String,
        frame: Bytes,
        reply: Option<ReplyTo>,
    },
    /// An error frame for one connection of this worker (for example `recipient_offline`).
    Notify { conn: u64, frame: Bytes },
    /// A push API request for connections and users that this worker owns.
    Admin(AdminRequest),
}

/// A push API operation sent by the admin listener to the workers that own its targets.
pub(crate) struct AdminRequest {
    pub op: AdminOp,
    pub reply: std::sync::mpsc::Sender<AdminReply>,
}

pub(crate) enum AdminOp {
    /// Close these connections, and every connection of these users.
    Close {
        conns: Vec<u64>,
        users: Vec<String>,
        code: CloseCode,
        reason: String,
    },
    /// Queue `frame` on these connections.
    PushConns { conns: Vec<u64>, frame: Bytes },
    /// Queue `frame` on every connection of these users.
    PushUsers { users: Vec<String>, frame: Bytes },
}

/// The state of a connection id as seen by one worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum ConnState {
    /// Never issued.
    Unknown,
    /// Issued, but not open: closed or closing, rejected by the per-user cap, still on its
    /// way to this worker, or skipped while naming an anonymous connection.
    Closed,
    /// Open on this worker.
    Open,
}

/// One worker's reply to an [`AdminRequest`].
#[derive(Debug, Default)]
pub(crate) struct AdminReply {
    /// Users that had at least one connection reached.
    pub users: usize,
    /// Connections reached.
    pub connections: usize,
    /// The state of each requested connection id, in request order.
    pub conn_states: Vec<ConnState>,
}

/// Sender of a relayed message, for reporting a failed delivery.
pub(crate) struct ReplyTo {
    pub worker: usize,
    pub conn: u64,
    pub id: Option<Bytes>,
}

pub(crate) struct Handoff {
    pub fd: OwnedFd,
    pub pending: Pending,
}

/// An authenticated connection waiting for its 101 on the owning worker.
pub(crate) struct Pending {
    /// When the accepting worker accepted the TCP connection.
    pub accepted_at: Instant,
    pub peer: SocketAddr,
    pub conn_id: u64,
    pub user: String,
    /// The token's `exp` (Unix seconds); `None` for anonymous connections.
    pub token_exp: Option<u64>,
    pub accept_response: Vec<u8>,
    /// Frame bytes that arrived behind the request head.
    pub leftover: BytesMut,
}

/// Per-user state on the owning worker.
struct UserEntry {
    conns: Vec<u64>,
    bucket: Option<TokenBucket>,
}

/// At most one repeated warning per [`WARN_INTERVAL`] per worker; the rest are counted and
/// reported with the next one, so a flood cannot flood the logs too.
const WARN_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Default)]
struct WarnGate {
    last: Option<Instant>,
    suppressed: u64,
}

/// Messages waiting for an application server on this worker (`backend = "http"`).
pub(crate) struct Forwarder {
    /// Envelopes in arrival order, with the time each was queued.
    queue: RefCell<VecDeque<(Instant, Envelope)>>,
    /// The batch being sent, if any; it still counts in `pending`.
    in_flight: RefCell<Option<Rc<Vec<Envelope>>>>,
    /// Set when the worker drains: readers take no more messages, so the queue can empty.
    draining: Cell<bool>,
    /// Messages queued or in flight; readers wait while it is at `max_pending`.
    pending: Cell<usize>,
    max_pending: usize,
    /// Wakes the sending task when the queue gains a message.
    wake: Notify,
    /// Wakes readers waiting for room.
    room: Notify,
}

impl Forwarder {
    fn new(max_pending: usize) -> Self {
        Self {
            queue: RefCell::new(VecDeque::new()),
            in_flight: RefCell::new(None),
            draining: Cell::new(false),
            pending: Cell::new(0),
            max_pending,
            wake: Notify::new(),
            room: Notify::new(),
        }
    }

    fn push(&self, envelope: Envelope) {
        self.queue
            .borrow_mut()
            .push_back((Instant::now(), envelope));
        self.pending.set(self.pending.get() + 1);
        self.wake.notify_one();
    }

    /// Marks `count` messages as done (acknowledged or sent an error frame) and wakes the
    /// readers waiting for room.
    fn release(&self, count: usize) {
        self.pending.set(self.pending.get().saturating_sub(count));
        if self.pending.get() < self.max_pending {
            self.room.notify_waiters();
        }
    }
}

pub(crate) struct Worker {
    pub index: usize,
    pub shared: Arc<Shared>,
    forwarder: Option<Rc<Forwarder>>,
    warn_gate: RefCell<WarnGate>,
    conns: RefCell<AHashMap<u64, Rc<ConnHandle>>>,
    users: RefCell<AHashMap<Rc<str>, UserEntry>>,
    /// Nesting depth of [`Worker::hold_sends`]. Sends are held while it is above zero.
    hold_depth: Cell<u32>,
    /// Connections that queued frames while sends were held, each listed once.
    listed_for_send: RefCell<Vec<Rc<ConnHandle>>>,
}

/// A guard that holds the worker's sends until it is dropped (see [`Worker::hold_sends`]).
pub(crate) struct SendHold<'a> {
    worker: &'a Worker,
}

impl Drop for SendHold<'_> {
    fn drop(&mut self) {
        self.worker.send_held();
    }
}

/// Binds one SO_REUSEPORT listener on `addr`.
pub(crate) fn bind_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // Linux copies TCP_NODELAY to every accepted socket, which saves a system call per
    // connection. Replies are written whole, one writev per read, so Nagle would only delay them.
    socket.set_tcp_nodelay(true)?;
    // The accept completes once the upgrade request has arrived, so the read that follows
    // finds it instead of waiting for it: about 5 % less CPU per handshake in a connect storm.
    // A client that connects and sends nothing is accepted after about a second, and its
    // handshake_timeout starts then.
    super::uring::defer_accept(&socket, 1)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Runs worker `index` until the process exits.
pub(crate) fn run(
    index: usize,
    core: Option<core_affinity::CoreId>,
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    inbox: mpsc::Receiver<WorkerMsg>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) -> Result<(), String> {
    if let Some(core) = core
        && !core_affinity::set_for_current(core)
    {
        tracing::warn!(
            worker = index,
            core = core.id,
            "cannot pin worker to its core"
        );
    }
    let runtime = match super::uring::new_runtime(None) {
        Ok(runtime) => runtime,
        Err(err) => {
            let message = super::explain_setup_error(&err);
            let _ = ready.send(Err(message.clone()));
            return Err(message);
        }
    };
    runtime.block_on(async move {
        let listener = Rc::new(TcpListener::from_std(listener));
        let drain_signal = Arc::clone(&shared.drain_signals[index]);
        let forwarder = (shared.config.backend == BackendKind::Http)
            .then(|| Rc::new(Forwarder::new(shared.config.upstream.max_pending_messages)));
        let worker = Rc::new(Worker {
            index,
            forwarder: forwarder.clone(),
            shared,
            conns: RefCell::new(AHashMap::new()),
            users: RefCell::new(AHashMap::new()),
            warn_gate: RefCell::new(WarnGate::default()),
            hold_depth: Cell::new(0),
            listed_for_send: RefCell::new(Vec::new()),
        });
        tokio_uring::spawn(inbox_loop(Rc::clone(&worker), inbox));
        tokio_uring::spawn(sweep_loop(Rc::clone(&worker)));
        if let Some(forwarder) = forwarder {
            tokio_uring::spawn(upstream_loop(Rc::clone(&worker), forwarder));
        }
        let acceptor = tokio_uring::spawn(accept_loop(Rc::clone(&worker), Rc::clone(&listener)));
        worker.shared.workers_ready.fetch_add(1, Ordering::Relaxed);
        let _ = ready.send(Ok(()));

        drain_signal.notified().await;
        if let Err(err) = super::uring::shutdown_listener(&listener) {
            tracing::warn!(worker = index, error = %err, "cannot shut down listener");
        }
        let _ = acceptor.await;
        drop(listener);
        worker.drain().await;
    });
    Ok(())
}

async fn accept_loop(worker: Rc<Worker>, listener: Rc<TcpListener>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let pending = &worker.shared.pending_upgrades;
                if pending.fetch_add(1, Ordering::Relaxed)
                    >= worker.shared.config.max_pending_upgrades
                {
                    pending.fetch_sub(1, Ordering::Relaxed);
                    worker.metrics().upgrades_dropped.inc();
                    if let Some(suppressed) = worker.warn_gate() {
                        tracing::warn!(worker = worker.index, %peer, suppressed, "max_pending_upgrades reached; closing new connection");
                    }
                    drop(stream);
                    continue;
                }
                tokio_uring::spawn(handshake_task(Rc::clone(&worker), stream, peer));
            }
            Err(_) if worker.shared.is_draining() => return,
            Err(err) => {
                // EMFILE and friends: back off briefly instead of spinning.
                if let Some(suppressed) = worker.warn_gate() {
                    tracing::warn!(worker = worker.index, error = %err, suppressed, "accept failed");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Checks every connection's timers: server pings, pong timeout, idle timeout, maximum
/// lifetime and token expiry.
async fn sweep_loop(worker: Rc<Worker>) {
    let config = &worker.shared.config;
    let tick = config
        .ping_interval
        .min(config.pong_timeout)
        .min(Duration::from_secs(2))
        / 2;
    let mut interval = tokio::time::interval(tick.max(Duration::from_millis(50)));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        worker.sweep(Instant::now(), unix_now_millis());
    }
}

/// A user id for a log field. The id comes from the token's `sub` and may contain any
/// character, so everything other than letters, digits and `-_.@:+/` is written as
/// `\u{..}`. A newline, a brace, a space or ` key=value` in it then cannot forge a line or a
/// field in the text log format, and the JSON format gets a plain string without quotes
/// inside it.
struct LogSafe<'a>(&'a str);

impl std::fmt::Display for LogSafe<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        for c in self.0.chars() {
            let plain = c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | ':' | '+' | '/');
            if plain {
                f.write_char(c)?;
            } else {
                write!(f, "\\u{{{:x}}}", u32::from(c))?;
            }
        }
        Ok(())
    }
}

/// Maximum time a draining worker waits, after its connections have closed, for upgrades that were
/// in progress when the drain began, so that they get a 503 instead of a bare TCP close.
const UPGRADE_DRAIN_WAIT: Duration = Duration::from_secs(1);

fn unix_now() -> u64 {
    unix_now_millis() / 1000
}

fn unix_now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

async fn handshake_task(worker: Rc<Worker>, stream: TcpStream, peer: SocketAddr) {
    let accepted_at = Instant::now();
    let timeout = worker.shared.config.handshake_timeout;
    let stream = Rc::new(stream);
    // Boxed so that the upgrade's state is freed once it is over.
    let upgrade = Box::pin(tokio::time::timeout(
        timeout,
        read_upgrade(&worker, &stream, peer, accepted_at),
    ));
    let admitted = match upgrade.await {
        Ok(admitted) => admitted,
        Err(_) => {
            tracing::debug!(worker = worker.index, %peer, "upgrade request timed out");
            worker.metrics().handshake_timeouts.inc();
            worker
                .reject(&stream, &RejectReason::HandshakeTimeout, accepted_at)
                .await;
            None
        }
    };
    // The upgrade phase is over either way; the connection no longer counts as pending.
    worker
        .shared
        .pending_upgrades
        .fetch_sub(1, Ordering::Relaxed);
    let Some(pending) = admitted else {
        return;
    };
    let conn_id = pending.conn_id;

    // The id names the worker that owns the user (see `ConnIds`).
    let owner = worker.shared.ring.owner(pending.user.as_bytes());
    if owner == worker.index {
        worker.admit(stream, pending).await;
        return;
    }

    // The user lives on another worker: move the socket there before the 101.
    let fd = match super::uring::duplicate_socket(&stream) {
        Ok(fd) => fd,
        Err(err) => {
            tracing::warn!(conn = conn_id, %peer, error = %err, "cannot hand off connection");
            worker.shared.release_connection();
            let reason = RejectReason::ServerFull {
                retry_after_secs: 1,
            };
            worker.reject(&stream, &reason, accepted_at).await;
            return;
        }
    };
    drop(stream);
    let handoff = Box::new(Handoff { fd, pending });
    match worker.shared.inboxes[owner].try_send(WorkerMsg::Handoff(handoff)) {
        Ok(()) => worker.metrics().handoffs_out.inc(),
        Err(err) => {
            if let Some(suppressed) = worker.warn_gate() {
                tracing::warn!(conn = conn_id, %peer, owner, suppressed, "owner worker inbox is full; rejecting upgrade");
            }
            worker.metrics().queue_full.inc();
            worker.shared.release_connection();
            let WorkerMsg::Handoff(handoff) = err.into_inner() else {
                return;
            };
            let stream = TcpStream::from_std(std::net::TcpStream::from(handoff.fd));
            let reason = RejectReason::ServerFull {
                retry_after_secs: 1,
            };
            worker.reject(&stream, &reason, accepted_at).await;
        }
    }
}

/// Reads and checks the upgrade request. On success the connection takes one slot under the
/// process-wide cap and has its connection id.
async fn read_upgrade(
    worker: &Worker,
    stream: &TcpStream,
    peer: SocketAddr,
    accepted_at: Instant,
) -> Option<Pending> {
    let shared = &worker.shared;
    let mut parser = Handshake::new(&shared.config);
    let mut buf = BytesMut::with_capacity(1024);
    // With the PROXY protocol on, the client address comes from the header that starts the
    // stream; without it, from the socket (or a trusted X-Forwarded-For, below).
    let mut client = peer;
    let mut expect_proxy_header = shared.config.proxy_protocol;
    let trusted = &shared.config.trusted_proxies;
    if expect_proxy_header
        && !trusted.is_empty()
        && !trusted.iter().any(|network| network.contains(peer.ip()))
    {
        // Only the configured proxies may speak for a client.
        tracing::debug!(worker = worker.index, %peer, "PROXY protocol connection from an untrusted peer");
        let _ = stream.shutdown(std::net::Shutdown::Both);
        return None;
    }
    loop {
        if expect_proxy_header {
            match crate::proxy::parse(&buf) {
                Ok(Some(header)) => {
                    if let Some(addresses) = header.addresses {
                        let source = addresses.source;
                        client = SocketAddr::new(source.ip().to_canonical(), source.port());
                    }
                    buf.advance(header.len);
                    expect_proxy_header = false;
                }
                Ok(None) => {}
                Err(err) => {
                    // No response: the bytes did not come from the configured proxy.
                    tracing::debug!(worker = worker.index, %peer, error = %err, "invalid PROXY protocol header");
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                    return None;
                }
            }
        }

        // Check what has arrived; owned results leave the borrow of `buf` before any await.
        let step = if expect_proxy_header {
            HandshakeStep::Partial
        } else {
            parser.advance(&buf, &shared.handshake, shared.config.demo)
        };
        let verdict = match step {
            HandshakeStep::Partial => None,
            HandshakeStep::DemoPage { head_only } => {
                serve_demo_page(stream, &shared.config.path, head_only).await;
                return None;
            }
            HandshakeStep::Reject(reason) => Some(Err(reason)),
            HandshakeStep::Accept { upgrade, head_len } => Some({
                client = client_address(shared, client, upgrade.forwarded_for.lines());
                check_admission(shared, &upgrade, client, worker.index).map(
                    |(conn_id, user, token_exp)| {
                        let mut response = Vec::with_capacity(160);
                        handshake::write_switching_protocols(
                            upgrade.key,
                            upgrade.protocol,
                            &mut response,
                        );
                        (conn_id, user, token_exp, response, head_len)
                    },
                )
            }),
        };
        match verdict {
            None => {}
            Some(Ok((conn_id, user, token_exp, accept_response, head_len))) => {
                let leftover = buf.split_off(head_len);
                return Some(Pending {
                    accepted_at,
                    peer: client,
                    conn_id,
                    user,
                    token_exp,
                    accept_response,
                    leftover,
                });
            }
            Some(Err(reason)) => {
                tracing::debug!(worker = worker.index, peer = %client, status = reason.status(), reason = %reason, "upgrade rejected");
                worker.reject(stream, &reason, accepted_at).await;
                return None;
            }
        }

        make_room_for_head(&mut buf);
        let len = buf.len();
        let capacity = buf.capacity();
        let (result, slice) = stream.read(buf.slice(len..capacity)).await;
        buf = slice.into_inner();
        match result {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Free bytes below which an upgrade's buffer grows before its next read.
const HEAD_READ_MIN: usize = 512;
/// Bytes an upgrade's buffer grows by.
const HEAD_READ_STEP: usize = 2048;

/// Makes room for the next read of an upgrade request: [`HEAD_READ_STEP`] more bytes when
/// fewer than [`HEAD_READ_MIN`] are free. The room is added exactly, because
/// `BytesMut::reserve` doubles a full buffer, and a head close to `max_request_head_bytes`
/// then took about twice that while its upgrade was pending.
fn make_room_for_head(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < HEAD_READ_MIN {
        super::conn::grow_exact(buf, HEAD_READ_STEP);
    }
}

/// Returns the client address for limits and logs: the first untrusted hop of `X-Forwarded-For`
/// when the connection comes from a trusted proxy, else `peer`.
fn client_address(shared: &Shared, peer: SocketAddr, forwarded_for: &[&[u8]]) -> SocketAddr {
    let trusted = &shared.config.trusted_proxies;
    if forwarded_for.is_empty() || trusted.is_empty() {
        return peer;
    }
    let ip = crate::proxy::client_ip_from_forwarded_for(forwarded_for, peer.ip(), trusted);
    SocketAddr::new(ip, if ip == peer.ip() { peer.port() } else { 0 })
}

/// Serves the browser demo page for a plain `GET /`, then closes.
async fn serve_demo_page(stream: &TcpStream, path: &str, head_only: bool) {
    let body = crate::demo::render_index(path);
    let mut response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Security-Policy: {}\r\n\
         Cache-Control: no-store\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        crate::demo::CONTENT_TYPE,
        crate::demo::CONTENT_SECURITY_POLICY,
        body.len()
    )
    .into_bytes();
    if !head_only {
        response.extend_from_slice(body.as_bytes());
    }
    let (_result, _) = stream.write_all(response).await;
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// Per-IP rate, process cap and token, in that order (cheapest first). An admitted upgrade
/// gets its connection id here, naming the worker that owns its user; returns the id, the
/// user id and the token's `exp`.
fn check_admission(
    shared: &Shared,
    upgrade: &handshake::Upgrade<'_>,
    client: SocketAddr,
    worker_index: usize,
) -> Result<(u64, String, Option<u64>), RejectReason> {
    if shared.is_draining() {
        return Err(RejectReason::ServerFull {
            retry_after_secs: 1,
        });
    }
    if let Decision::Throttle { retry_after } =
        shared.check_upgrade_rate(client.ip(), Instant::now())
    {
        let retry_after_secs = u32::try_from(retry_after.as_secs())
            .unwrap_or(u32::MAX)
            .max(1);
        return Err(RejectReason::IpRateLimited { retry_after_secs });
    }
    let claims = authenticate(
        upgrade,
        &shared.verifier,
        shared.config.auth.required,
        unix_now(),
    )?;
    if !shared.try_reserve_connection() {
        return Err(RejectReason::ServerFull {
            retry_after_secs: 5,
        });
    }
    let issued = match claims {
        Some(claims) => {
            let owner = shared.ring.owner(claims.sub.as_bytes());
            shared
                .conn_ids
                .issue(owner)
                .map(|id| (id, claims.sub, Some(claims.exp)))
        }
        // The user id `anon-<id>` and the id must name the same owner. Trying this worker
        // first avoids a hand-off whenever its next id fits (about one time in N with N workers).
        None => shared
            .conn_ids
            .issue_anonymous(&shared.ring, worker_index)
            .map(|(id, user)| (id, user, None)),
    };
    let Some(issued) = issued else {
        shared.release_connection();
        tracing::warn!(
            worker = worker_index,
            "connection ids of a worker are spent; rejecting upgrade"
        );
        return Err(RejectReason::ServerFull {
            retry_after_secs: 5,
        });
    };
    Ok(issued)
}

async fn inbox_loop(worker: Rc<Worker>, mut inbox: mpsc::Receiver<WorkerMsg>) {
    let mut batch = Vec::with_capacity(INBOX_BATCH);
    while inbox.recv_many(&mut batch, INBOX_BATCH).await > 0 {
        // Deliveries of one batch to one connection leave in one sendmsg.
        let hold = worker.hold_sends();
        for message in batch.drain(..) {
            match message {
                WorkerMsg::Handoff(handoff) => {
                    worker.metrics().handoffs_in.inc();
                    let Handoff { fd, pending } = *handoff;
                    let stream = Rc::new(TcpStream::from_std(std::net::TcpStream::from(fd)));
                    let worker = Rc::clone(&worker);
                    tokio_uring::spawn(async move {
                        worker.admit(stream, pending).await;
                    });
                }
                WorkerMsg::Deliver { to, frame, reply } => {
                    let delivered = worker.deliver_local(&to, &frame);
                    if delivered == 0
                        && let Some(reply) = reply
                    {
                        worker.report_offline(reply, &to);
                    }
                }
                WorkerMsg::Notify { conn, frame } => {
                    if let Some(handle) = worker.conns.borrow().get(&conn) {
                        handle.push_encoded(&frame);
                    }
                }
                WorkerMsg::Admin(request) => {
                    let reply = worker.run_admin(request.op);
                    // The admin listener may have given up waiting; nothing is lost then.
                    let _ = request.reply.send(reply);
                }
            }
        }
        drop(hold);
    }
}

/// Close code for a connection whose token expired (application range, RFC 6455 §7.4.2).
pub(crate) const TOKEN_EXPIRED: CloseCode = CloseCode(4001);

impl Worker {
    /// Holds sends until the returned guard is dropped: a connection that gets several
    /// frames meanwhile (the echoes of one read, the deliveries of one inbox batch) sends
    /// them in one `sendmsg` instead of one each. The guard must not live across an await,
    /// or other tasks' sends would wait too.
    pub(crate) fn hold_sends(&self) -> SendHold<'_> {
        self.hold_depth.set(self.hold_depth.get() + 1);
        SendHold { worker: self }
    }

    /// Ends one hold; the outermost sends what the listed connections queued.
    fn send_held(&self) {
        let depth = self.hold_depth.get().saturating_sub(1);
        self.hold_depth.set(depth);
        if depth > 0 {
            return;
        }
        loop {
            let Some(handle) = self.listed_for_send.borrow_mut().pop() else {
                break;
            };
            handle.unlist_for_send();
            handle.wake_writer();
        }
    }

    /// Returns whether sends are held (see [`Worker::hold_sends`]).
    pub(crate) fn sends_held(&self) -> bool {
        self.hold_depth.get() > 0
    }

    /// Lists `handle` to send when the hold ends.
    pub(crate) fn list_for_send(&self, handle: Rc<ConnHandle>) {
        self.listed_for_send.borrow_mut().push(handle);
    }

    /// Returns `Some(suppressed)` when a repeated warning may be logged now, with the number
    /// of warnings held back since the last one; `None` when it must be held back.
    fn warn_gate(&self) -> Option<u64> {
        let now = Instant::now();
        let mut gate = self.warn_gate.borrow_mut();
        match gate.last {
            Some(last) if now.saturating_duration_since(last) < WARN_INTERVAL => {
                gate.suppressed += 1;
                None
            }
            _ => {
                gate.last = Some(now);
                Some(std::mem::take(&mut gate.suppressed))
            }
        }
    }

    /// This worker's metrics (written only from this thread).
    pub(crate) fn metrics(&self) -> &crate::metrics::WorkerMetrics {
        &self.shared.metrics[self.index]
    }

    /// Writes a rejection response, counts it and shuts the socket down.
    async fn reject(&self, stream: &TcpStream, reason: &RejectReason, accepted_at: Instant) {
        let metrics = self.metrics();
        metrics.upgrade(reason.status());
        metrics.handshake_duration.observe(accepted_at.elapsed());
        let mut response = Vec::with_capacity(256);
        handshake::write_reject_for(reason, &self.shared.handshake, &mut response);
        let (_result, _) = stream.write_all(response).await;
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }

    /// Applies the per-connection timers at `now`.
    fn sweep(&self, now: Instant, unix_millis: u64) {
        let config = &self.shared.config;
        let handles: Vec<Rc<ConnHandle>> = self.conns.borrow().values().cloned().collect();
        let grace_millis = u64::try_from(config.token_expiry_grace.as_millis()).unwrap_or(u64::MAX);
        for handle in handles {
            if handle.is_closing() {
                continue;
            }
            if let Some(exp) = handle.token_exp
                && unix_millis >= exp.saturating_mul(1000).saturating_add(grace_millis)
            {
                handle.close(TOKEN_EXPIRED, "token expired; reconnect with a new token");
                continue;
            }
            if let Some(max) = config.max_lifetime
                && now.saturating_duration_since(handle.opened_at) >= max
            {
                handle.close(CloseCode::GOING_AWAY, "maximum connection lifetime reached");
                continue;
            }
            if let Some(idle) = config.idle_timeout
                && now.saturating_duration_since(handle.last_message_at.get()) >= idle
            {
                handle.close(CloseCode::GOING_AWAY, "idle timeout");
                continue;
            }
            if handle.waiting_for_room.get() {
                continue;
            }
            match handle.ping_sent_at.get() {
                Some(sent) if now.saturating_duration_since(sent) >= config.pong_timeout => {
                    self.metrics().pong_timeouts.inc();
                    handle.close(CloseCode::GOING_AWAY, "no pong within pong_timeout");
                }
                Some(_) => {}
                None => {
                    if now.saturating_duration_since(handle.last_read_at.get())
                        >= config.ping_interval
                    {
                        handle.ping(now);
                        self.metrics().pings_sent.inc();
                    }
                }
            }
        }
    }

    /// Closes every connection with 1001 and a reconnect hint spread over `drain_jitter`,
    /// then waits until they are gone or `drain_timeout` has passed.
    async fn drain(&self) {
        let config = &self.shared.config;
        let started = tokio::time::Instant::now();
        let deadline = started + config.drain_timeout;
        // Every accepted message gets its acknowledgement or error frame before its
        // connection's close frame. The pending messages get at most half the drain time, so
        // those frames and the close frames still have the other half to reach the clients.
        self.drain_upstream(started + config.drain_timeout / 2)
            .await;

        let jitter_millis = u64::try_from(config.drain_jitter.as_millis()).unwrap_or(u64::MAX);
        let handles: Vec<Rc<ConnHandle>> = self.conns.borrow().values().cloned().collect();
        let mut rng = rand::rng();
        for handle in &handles {
            let hint = if jitter_millis == 0 {
                0
            } else {
                rng.random_range(0..=jitter_millis)
            };
            handle.close(
                CloseCode::GOING_AWAY,
                &format!("going away; reconnect after {hint} ms"),
            );
        }
        while !self.conns.borrow().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // An upgrade still in progress gets its 503 (see `check_admission`) before the worker
        // stops, for at most a second more: a complete request needs only its last bytes.
        let upgrades_deadline = deadline.min(tokio::time::Instant::now() + UPGRADE_DRAIN_WAIT);
        while self.shared.pending_upgrades.load(Ordering::Relaxed) > 0
            && tokio::time::Instant::now() < upgrades_deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.conns.borrow().len();
        if left > 0 {
            tracing::warn!(
                worker = self.index,
                connections = left,
                "drain timeout reached; closing the rest"
            );
        }
        tracing::info!(worker = self.index, "worker stopped");
    }

    /// Applies the per-user cap, sends the 101 and runs the connection to its end.
    async fn admit(self: Rc<Self>, stream: Rc<TcpStream>, pending: Pending) {
        let Pending {
            accepted_at,
            peer,
            conn_id,
            user,
            token_exp,
            accept_response,
            leftover,
        } = pending;
        if self.shared.is_draining() {
            self.shared.release_connection();
            let reason = RejectReason::ServerFull {
                retry_after_secs: 1,
            };
            self.reject(&stream, &reason, accepted_at).await;
            return;
        }
        let cap = self.shared.config.max_connections_per_user;
        let user_conns = self
            .users
            .borrow()
            .get(user.as_str())
            .map_or(0, |entry| entry.conns.len());
        if user_conns >= cap {
            tracing::debug!(conn = conn_id, %peer, user = %LogSafe(&user), "per-user connection cap reached");
            self.shared.release_connection();
            let reason = RejectReason::UserConnectionLimit {
                max: u32::try_from(cap).unwrap_or(u32::MAX),
                retry_after_secs: 5,
            };
            self.reject(&stream, &reason, accepted_at).await;
            return;
        }

        let handle = ConnHandle::new(
            conn_id,
            Rc::from(user.as_str()),
            Rc::clone(&stream),
            token_exp,
            &self,
        );
        handle.push_raw(&accept_response);
        let metrics = self.metrics();
        metrics.upgrade(101);
        metrics.handshake_duration.observe(accepted_at.elapsed());
        metrics.connections_open.inc();
        self.register(&handle);
        // One span per connection: every event inside carries its ids. The user id comes from
        // the token and may contain any character (see `LogSafe`).
        let span = tracing::debug_span!("conn", conn = conn_id, worker = self.index, %peer, user = %LogSafe(&user));
        tracing::debug!(parent: &span, "connection open");

        // The connection gets a task of its own, so that it does not keep the state of the
        // upgrade or of this function (an idle connection holds only what its session needs).
        tokio_uring::spawn(conn::run(Rc::clone(&self), handle, leftover).instrument(span));
    }

    fn register(&self, handle: &Rc<ConnHandle>) {
        self.conns.borrow_mut().insert(handle.id, Rc::clone(handle));
        let config = &self.shared.config;
        let metrics = self.metrics();
        let mut users = self.users.borrow_mut();
        let entry = users.entry(handle.user.clone()).or_insert_with(|| {
            metrics.users.inc();
            UserEntry {
                // Most users hold one connection.
                conns: Vec::with_capacity(1),
                bucket: (config.user_rate_per_sec > 0).then(|| {
                    TokenBucket::new(config.user_rate_per_sec, config.user_burst, Instant::now())
                }),
            }
        });
        entry.conns.push(handle.id);
    }

    pub(crate) fn unregister(&self, handle: &ConnHandle) {
        self.conns.borrow_mut().remove(&handle.id);
        let mut users = self.users.borrow_mut();
        if let Some(entry) = users.get_mut(&handle.user) {
            entry.conns.retain(|id| *id != handle.id);
            if entry.conns.is_empty() {
                users.remove(&handle.user);
                self.metrics().users.dec();
            }
        }
    }

    /// Runs `f` with the per-user bucket of `user`, if one is configured.
    pub(crate) fn with_user_bucket<R>(
        &self,
        user: &str,
        f: impl FnOnce(Option<&mut TokenBucket>) -> R,
    ) -> R {
        // Without a per-user rate there is nothing to look up: skip hashing the user id.
        if self.shared.config.user_rate_per_sec == 0 {
            return f(None);
        }
        let mut users = self.users.borrow_mut();
        let bucket = users.get_mut(user).and_then(|entry| entry.bucket.as_mut());
        f(bucket)
    }

    /// Queues `frame` on every open connection of `user` on this worker; returns how many.
    fn deliver_local(&self, user: &str, frame: &Bytes) -> usize {
        let users = self.users.borrow();
        let Some(entry) = users.get(user) else {
            return 0;
        };
        let conns = self.conns.borrow();
        let mut delivered = 0;
        for id in &entry.conns {
            if let Some(handle) = conns.get(id)
                && handle.push_encoded(frame)
            {
                delivered += 1;
            }
        }
        self.metrics().messages_delivered.add(delivered as u64);
        delivered
    }

    fn report_offline(&self, reply: ReplyTo, to: &str) {
        // Counted on the worker that decided the recipient is offline.
        self.metrics().message("recipient_offline");
        let frame = error_frame(
            "recipient_offline",
            &format!("user {to:?} has no open connection"),
            reply.id.as_deref(),
        );
        self.notify(reply.worker, reply.conn, frame);
    }

    /// Queues an encoded frame on connection `conn` of worker `target`; drops it (and counts
    /// `queue_full`) when that worker's inbox is full.
    fn notify(&self, target: usize, conn: u64, frame: Bytes) {
        if target == self.index {
            if let Some(handle) = self.conns.borrow().get(&conn) {
                handle.push_encoded(&frame);
            }
            return;
        }
        if self.shared.inboxes[target]
            .try_send(WorkerMsg::Notify { conn, frame })
            .is_err()
        {
            self.metrics().queue_full.inc();
            if let Some(suppressed) = self.warn_gate() {
                tracing::warn!(
                    worker = self.index,
                    target,
                    suppressed,
                    "inbox full; frame for a connection dropped"
                );
            }
        }
    }

    /// Hands an accepted message to the configured backend.
    pub(crate) fn dispatch(&self, sender: &ConnHandle, message: Accepted<'_>) {
        match self.shared.config.backend {
            BackendKind::Echo => {
                let opcode = match message.kind {
                    MessageKind::Binary => OpCode::Binary,
                    MessageKind::Text => OpCode::Text,
                };
                sender.push_echo(opcode, message);
            }
            BackendKind::Http => self.forward(sender, &message),
            BackendKind::Relay => self.relay(sender, message),
        }
    }

    /// Applies a push API operation to the connections and users of this worker.
    fn run_admin(&self, op: AdminOp) -> AdminReply {
        let mut reply = AdminReply::default();
        match op {
            AdminOp::PushUsers { users, frame } => {
                for user in &users {
                    let delivered = self.deliver_local(user, &frame);
                    if delivered > 0 {
                        reply.users += 1;
                        reply.connections += delivered;
                    }
                }
            }
            AdminOp::PushConns { conns, frame } => {
                for id in conns {
                    let state = self.conn_state(id);
                    if state == ConnState::Open
                        && let Some(handle) = self.conns.borrow().get(&id)
                        && handle.push_encoded(&frame)
                    {
                        reply.connections += 1;
                    }
                    reply.conn_states.push(state);
                }
            }
            AdminOp::Close {
                conns,
                users,
                code,
                reason,
            } => {
                let mut targets: Vec<Rc<ConnHandle>> = Vec::new();
                for id in conns {
                    let state = self.conn_state(id);
                    if state == ConnState::Open
                        && let Some(handle) = self.conns.borrow().get(&id)
                    {
                        targets.push(Rc::clone(handle));
                    }
                    reply.conn_states.push(state);
                }
                {
                    let registry = self.users.borrow();
                    let conns = self.conns.borrow();
                    for user in &users {
                        let Some(entry) = registry.get(user.as_str()) else {
                            continue;
                        };
                        let before = targets.len();
                        targets.extend(
                            entry
                                .conns
                                .iter()
                                .filter_map(|id| conns.get(id))
                                .filter(|handle| !handle.is_closing())
                                .cloned(),
                        );
                        if targets.len() > before {
                            reply.users += 1;
                        }
                    }
                }
                for handle in targets {
                    if !handle.is_closing() {
                        handle.close(code, &reason);
                        reply.connections += 1;
                    }
                }
            }
        }
        reply
    }

    /// Returns the state of connection `id` as seen from this worker. Ids name their owning
    /// worker (`id >> 48`) and are issued in order, so an id of this worker at or below its
    /// last issued one that is not open here is closed.
    fn conn_state(&self, id: u64) -> ConnState {
        if let Some(handle) = self.conns.borrow().get(&id) {
            if handle.is_closing() {
                return ConnState::Closed;
            }
            return ConnState::Open;
        }
        let workers = self.shared.inboxes.len();
        let local = super::conn_id_local(id);
        if super::conn_id_owner(id, workers) == Some(self.index)
            && local > 0
            && local <= self.shared.conn_ids.last_issued(self.index)
        {
            return ConnState::Closed;
        }
        ConnState::Unknown
    }

    /// Queues a message for the application servers.
    fn forward(&self, sender: &ConnHandle, message: &Accepted<'_>) {
        let Some(forwarder) = &self.forwarder else {
            return;
        };
        let envelope = upstream::encode_envelope(
            self.index,
            sender.id,
            sender.next_seq(),
            &sender.user,
            unix_now_millis(),
            message.payload(),
            message.id().map(Bytes::copy_from_slice),
        );
        forwarder.push(envelope);
        let metrics = self.metrics();
        metrics.upstream_forwarded.inc();
        metrics
            .upstream_pending
            .set(i64::try_from(forwarder.pending.get()).unwrap_or(i64::MAX));
    }

    /// True when the queue to the application servers has reached `max_pending_messages`, or
    /// the worker is draining and takes no more messages. Readers check it before each message.
    pub(crate) fn upstream_full(&self) -> bool {
        self.forwarder.as_ref().is_some_and(|forwarder| {
            forwarder.draining.get() || forwarder.pending.get() >= forwarder.max_pending
        })
    }

    /// Resolves at once unless the queue to the application servers is full; then resolves
    /// when it has room again. While the worker drains it never resolves: the drain closes
    /// the connection, which wakes its reader.
    pub(crate) async fn wait_for_upstream_room(&self) {
        let Some(forwarder) = &self.forwarder else {
            return;
        };
        if forwarder.pending.get() >= forwarder.max_pending {
            self.metrics().upstream_reads_paused.inc();
        }
        loop {
            let notified = forwarder.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !forwarder.draining.get() && forwarder.pending.get() < forwarder.max_pending {
                return;
            }
            notified.await;
        }
    }

    /// Stops taking messages for the application servers and waits until every pending one
    /// is acknowledged or rejected with an error frame, or `deadline` passes. Then every
    /// message still queued or in flight gets `upstream_unavailable`, so none is left without
    /// a response when the connections close.
    async fn drain_upstream(&self, deadline: tokio::time::Instant) {
        let Some(forwarder) = &self.forwarder else {
            return;
        };
        forwarder.draining.set(true);
        while forwarder.pending.get() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if forwarder.pending.get() == 0 {
            return;
        }

        let mut left: Vec<Envelope> = forwarder
            .queue
            .borrow_mut()
            .drain(..)
            .map(|(_, envelope)| envelope)
            .collect();
        // The batch in flight may still reach a server, so for it `upstream_unavailable` means
        // the outcome is unknown.
        if let Some(batch) = forwarder.in_flight.borrow_mut().take() {
            left.splice(0..0, batch.iter().cloned());
        }
        tracing::warn!(
            worker = self.index,
            messages = left.len(),
            "half of drain_timeout_ms passed with messages pending; answering upstream_unavailable"
        );
        self.answer_batch(
            &left,
            "upstream_unavailable",
            "the server is shutting down before an application server accepted the message; retry after reconnecting",
        );
        forwarder.release(left.len());
        self.metrics().upstream_pending.set(0);
    }

    /// Sends one batch to the first healthy upstream that takes it, trying each upstream at
    /// most once, and sends each sender an error frame when none does.
    async fn send_batch(
        &self,
        connections: &mut [Connection],
        pool: &mut Pool,
        batch: &[Envelope],
    ) {
        let settings = &self.shared.config.upstream;
        let metrics = self.metrics();
        metrics.upstream_batches.inc();
        let mut tried = vec![false; connections.len()];
        let mut attempts = 0;
        while let Some(index) = pool.pick(Instant::now(), &tried) {
            if let Some(slot) = tried.get_mut(index) {
                *slot = true;
            }
            let Some(connection) = connections.get_mut(index) else {
                break;
            };
            if attempts > 0 {
                metrics.upstream_retries.inc();
            }
            attempts += 1;
            let request = upstream::encode_request(connection.url(), batch);
            let sent_at = Instant::now();
            let outcome = connection.send(&request, settings.timeout).await;
            if outcome.is_ok() {
                metrics.upstream_round_trip.observe(sent_at.elapsed());
            }
            let failure = match outcome {
                Ok(response) if (200..300).contains(&response.status) => {
                    metrics.upstream_acknowledged.add(batch.len() as u64);
                    pool.mark_up(index);
                    self.apply_deliveries(&response.body);
                    return;
                }
                // 408: the server did not read the request, so another one may take it.
                Ok(response) if (400..500).contains(&response.status) && response.status != 408 => {
                    if let Some(suppressed) = self.warn_gate() {
                        tracing::warn!(
                            worker = self.index,
                            upstream = index,
                            status = response.status,
                            messages = batch.len(),
                            suppressed,
                            "application server rejected a batch"
                        );
                    }
                    self.answer_batch(
                        batch,
                        "upstream_rejected",
                        &format!(
                            "the application server rejected the message (HTTP {})",
                            response.status
                        ),
                    );
                    return;
                }
                Ok(response) => format!("HTTP status {}", response.status),
                Err(err) => err.to_string(),
            };
            pool.mark_down(index, Instant::now(), settings.backoff);
            metrics.upstream_down(index);
            if let Some(suppressed) = self.warn_gate() {
                tracing::warn!(worker = self.index, upstream = index, error = %failure, backoff_ms = settings.backoff.as_millis(), suppressed, "application server failed; trying the next one");
            }
        }
        self.answer_batch(
            batch,
            "upstream_unavailable",
            "no application server accepted the message; retry later",
        );
    }

    /// Sends an error frame with `code` for every message of `batch` to its sender.
    fn answer_batch(&self, batch: &[Envelope], code: &str, detail: &str) {
        let metrics = self.metrics();
        match code {
            "upstream_rejected" => metrics.upstream_rejected.add(batch.len() as u64),
            "upstream_unavailable" => metrics.upstream_unavailable.add(batch.len() as u64),
            _ => {}
        }
        let hold = self.hold_sends();
        let conns = self.conns.borrow();
        for envelope in batch {
            if let Some(handle) = conns.get(&envelope.conn) {
                handle.push_encoded(&error_frame(code, detail, envelope.client_id.as_deref()));
            }
        }
        drop(conns);
        drop(hold);
    }

    /// Delivers the messages in a 2xx response body through their owning workers.
    fn apply_deliveries(&self, body: &[u8]) {
        let (deliveries, invalid) = upstream::parse_deliveries(body);
        if invalid > 0
            && let Some(suppressed) = self.warn_gate()
        {
            tracing::warn!(
                worker = self.index,
                lines = invalid,
                suppressed,
                "ignored invalid delivery lines in an application response"
            );
        }
        let max_outbound = self.shared.config.max_outbound_bytes;
        let _hold = self.hold_sends();
        for delivery in deliveries {
            let frame = text_frame(delivery.message.as_bytes());
            if frame.len() > max_outbound {
                // Queuing it would close the recipient as a slow consumer.
                if let Some(suppressed) = self.warn_gate() {
                    tracing::warn!(
                        worker = self.index,
                        frame_bytes = frame.len(),
                        max_outbound_bytes = max_outbound,
                        suppressed,
                        "ignored a delivery larger than max_outbound_bytes; raise the limit or send smaller messages"
                    );
                }
                continue;
            }
            match delivery.target {
                Target::User(user) => {
                    self.deliver_user(user, frame);
                }
                Target::Connection(conn) => self.deliver_conn(conn, &frame),
            }
        }
    }

    /// Delivers `frame` to every connection of `user`, on the worker that owns the user.
    /// Returns false when the owner's inbox is full.
    pub(crate) fn deliver_user(&self, user: String, frame: Bytes) -> bool {
        let owner = self.shared.ring.owner(user.as_bytes());
        if owner == self.index {
            self.deliver_local(&user, &frame);
            return true;
        }
        let delivery = WorkerMsg::Deliver {
            to: user,
            frame,
            reply: None,
        };
        if self.shared.inboxes[owner].try_send(delivery).is_err() {
            self.metrics().queue_full.inc();
            if let Some(suppressed) = self.warn_gate() {
                tracing::warn!(
                    worker = self.index,
                    owner,
                    suppressed,
                    "delivery queue full; application delivery dropped"
                );
            }
            return false;
        }
        true
    }

    /// Delivers `frame` to connection `conn` through the worker its id names.
    fn deliver_conn(&self, conn: u64, frame: &Bytes) {
        let Some(owner) = super::conn_id_owner(conn, self.shared.inboxes.len()) else {
            return;
        };
        self.notify(owner, conn, frame.clone());
    }

    /// Delivers a chat message to every connection of its `to` user, with `from` set to the
    /// sender's authenticated user id.
    fn relay(&self, sender: &ConnHandle, mut message: Accepted<'_>) {
        let Some(to) = message.to.take() else {
            // The relay adds `to` to the required fields, so the JSON check already rejected it.
            return;
        };
        let Some(text) = message.with_from(&sender.user) else {
            // Unreachable after a passed JSON check; answer rather than drop.
            let error = error_frame(
                "invalid_json",
                "message is not one JSON object",
                message.id(),
            );
            sender.push_encoded(&error);
            return;
        };
        let mut frame = BytesMut::with_capacity(text.len() + 10);
        encode::encode_header(&mut frame, true, OpCode::Text, text.len());
        frame.extend_from_slice(&text);
        let frame = frame.freeze();

        let owner = self.shared.ring.owner(to.as_bytes());
        if owner == self.index {
            if self.deliver_local(&to, &frame) == 0 {
                self.metrics().message("recipient_offline");
                let error = error_frame(
                    "recipient_offline",
                    &format!("user {to:?} has no open connection"),
                    message.id(),
                );
                sender.push_encoded(&error);
            }
            return;
        }
        let reply = Some(ReplyTo {
            worker: self.index,
            conn: sender.id,
            id: message.id().map(Bytes::copy_from_slice),
        });
        let delivery = WorkerMsg::Deliver { to, frame, reply };
        if self.shared.inboxes[owner].try_send(delivery).is_err() {
            self.metrics().queue_full.inc();
            self.metrics().message("overloaded");
            if let Some(suppressed) = self.warn_gate() {
                tracing::warn!(
                    worker = self.index,
                    owner,
                    suppressed,
                    "delivery queue full; message answered with overloaded"
                );
            }
            let error = error_frame(
                "overloaded",
                "the server cannot take this message now; retry shortly",
                message.id(),
            );
            sender.push_encoded(&error);
        }
    }
}

/// Sends batches from the worker's queue to the application servers, one batch in flight at
/// a time, so each connection's messages reach the servers in order.
async fn upstream_loop(worker: Rc<Worker>, forwarder: Rc<Forwarder>) {
    let settings = &worker.shared.config.upstream;
    let mut connections: Vec<Connection> = settings
        .urls
        .iter()
        .map(|target| Connection::new(target.url.clone()))
        .collect();
    let mut pool = Pool::new(connections.len());
    loop {
        let first_queued_at = forwarder.queue.borrow().front().map(|(at, _)| *at);
        let Some(first_queued_at) = first_queued_at else {
            forwarder.wake.notified().await;
            continue;
        };
        // A batch that is not full waits up to batch_delay after its first message.
        if forwarder.queue.borrow().len() < settings.batch_max {
            let due = first_queued_at + settings.batch_delay;
            if Instant::now() < due {
                tokio::time::sleep_until(due.into()).await;
            }
        }
        let batch: Rc<Vec<Envelope>> = {
            let mut queue = forwarder.queue.borrow_mut();
            let count = queue.len().min(settings.batch_max);
            Rc::new(queue.drain(..count).map(|(_, envelope)| envelope).collect())
        };
        *forwarder.in_flight.borrow_mut() = Some(Rc::clone(&batch));
        worker.send_batch(&mut connections, &mut pool, &batch).await;
        // A drain that timed out has already sent this batch's error frames and released it.
        if forwarder.in_flight.borrow_mut().take().is_none() {
            continue;
        }
        forwarder.release(batch.len());
        worker
            .metrics()
            .upstream_pending
            .set(i64::try_from(forwarder.pending.get()).unwrap_or(i64::MAX));
    }
}

/// Encodes one unfragmented text frame.
pub(crate) fn text_frame(text: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(text.len() + 10);
    encode::encode_header(&mut frame, true, OpCode::Text, text.len());
    frame.extend_from_slice(text);
    frame.freeze()
}

/// Encodes an error frame for `code`, echoing the client's raw `id`.
fn error_frame(code: &str, detail: &str, id: Option<&[u8]>) -> Bytes {
    let id = id.and_then(|raw| std::str::from_utf8(raw).ok());
    let mut text = Vec::with_capacity(96);
    message::write_error(&mut text, code, detail, id, None);
    let mut frame = BytesMut::with_capacity(text.len() + 4);
    encode::encode_header(&mut frame, true, OpCode::Text, text.len());
    frame.extend_from_slice(&text);
    frame.freeze()
}

#[cfg(test)]
mod tests {
    #[test]
    fn head_buffer_grows_exactly() {
        // An 8,000-byte head whose bytes are always waiting, so every read fills the buffer.
        let mut buf = BytesMut::with_capacity(1024);
        let mut largest = buf.capacity();
        while buf.len() < 8000 {
            make_room_for_head(&mut buf);
            largest = largest.max(buf.capacity());
            let count = (buf.capacity() - buf.len()).min(8000 - buf.len());
            buf.extend_from_slice(&vec![b'a'; count]);
        }
        assert!(
            largest <= 8000 + HEAD_READ_STEP,
            "buffer grew to {largest} bytes for an 8,000-byte head"
        );
    }

    #[test]
    fn log_safe_escapes_field_breakers() {
        use super::LogSafe;
        assert_eq!(LogSafe("alice").to_string(), "alice");
        assert_eq!(LogSafe("a.b-c_d@e:f+g/h").to_string(), "a.b-c_d@e:f+g/h");
        assert_eq!(LogSafe("zoë").to_string(), "zoë");
        assert_eq!(
            LogSafe("bob admin=true").to_string(),
            "bob\\u{20}admin\\u{3d}true"
        );
        assert_eq!(
            LogSafe("x}\n\u{1b}[2J").to_string(),
            "x\\u{7d}\\u{a}\\u{1b}\\u{5b}2J"
        );
        assert_eq!(LogSafe("\"q\"\\").to_string(), "\\u{22}q\\u{22}\\u{5c}");
    }

    use super::*;

    #[test]
    fn accepted_sockets_inherit_nodelay() {
        let listener = bind_listener("127.0.0.1:0".parse().expect("address")).expect("bind");
        let address = listener.local_addr().expect("address");
        let _client = std::net::TcpStream::connect(address).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        assert!(accepted.nodelay().expect("getsockopt"));
    }
}
