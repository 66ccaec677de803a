//! The I/O side of the load generator: one pinned thread per worker, each with its own
//! tokio-uring runtime, running the virtual users assigned to it.
//!
//! A virtual user connects (binding a source address first when `--source-addrs` is given),
//! upgrades, and then runs its role until the deadline. A sender writes messages by schedule
//! (open loop) or by window (closed loop). A relay receiver and an idle user only read. Every
//! connection has a reader task that decodes server frames and matches replies to the
//! messages that caused them. The user's own task is the only writer. At the end each
//! connection drains its outstanding messages, sends a close frame and waits for the server's
//! close and TCP end, each bounded by a timeout.
//!
//! Per-worker state lives in `Rc`/`RefCell` on the worker thread; only the progress counters
//! are shared with the main thread.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ahash::AHashMap;
use bytes::{Buf as _, BytesMut};
use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::sync::Notify;
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;

use super::plan::{Injection, Injector, Pacer};
use super::stats::Stats;
use super::wire::{self, Body, MessageId};
use super::{LoadModel, Progress, RunConfig, Scenario};
use crate::frame::OpCode;
use crate::runtime::wake::LocalNotify;

/// Maximum number of messages written in one batch.
const MAX_BATCH: usize = 256;

/// Read size of connections that only receive now and then.
const IDLE_READ_BYTES: usize = 2048;

/// First wait before reconnecting after a failed connect or upgrade, or after a connection that
/// ended within [`STABLE_CONNECTION`]; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Lifetime after which a connection that ends counts as having worked, so the next
/// reconnect does not wait.
const STABLE_CONNECTION: Duration = Duration::from_secs(1);

/// Interval at which a worker copies its counters to the progress line.
const PUBLISH_INTERVAL: Duration = Duration::from_millis(250);

/// Status code of the close frames the generator sends (RFC 6455 §7.4.1: normal closure).
const NORMAL_CLOSURE: u16 = 1000;

/// Close code recorded, never sent, for a connection that ended without a close frame
/// (RFC 6455 §7.1.5, §7.4.1).
const ABNORMAL_CLOSURE: u16 = 1006;

/// Close code for a peer that broke the protocol (RFC 6455 §7.4.1).
const PROTOCOL_ERROR: u16 = 1002;

/// Close code for a text message or close reason that is not UTF-8 (RFC 6455 §7.4.1, §8.1).
const INVALID_PAYLOAD: u16 = 1007;

/// Close code framegate sends for a message over its size cap (RFC 6455 §7.4.1).
const MESSAGE_TOO_BIG: u16 = 1009;

/// Role of one virtual user after the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Sends messages and matches their replies (echo) or deliveries (relay).
    Sender,
    /// Relay only: receives the messages of user `sender` and stays until that user is done.
    Receiver { sender: u32 },
    /// Holds its connection open without sending (inactive share, or connect scenario).
    Idle,
}

/// The response a sent message is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// The echo (echo scenario) or the delivery to the peer (relay scenario).
    Reply,
    /// A reply, as above, to a message written outside the schedule or window (the valid
    /// part of an over-rate burst). It is matched and counted but adds no latency sample.
    UntimedReply,
    /// An error frame with this code.
    Error(&'static str),
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    intended: Instant,
    expect: Expect,
}

/// Maximum number of slots in a [`PendingSet`] ring before old entries move to its map.
const PENDING_RING_MAX: usize = 4096;

/// Messages awaiting a response, by sequence number.
///
/// A user issues sequence numbers in order and the server handles a connection's messages in
/// order, so entries sit in a ring indexed from the oldest one still pending, and most
/// responses remove the front slot. An entry that gets no response (a message lost with its
/// connection) would hold the ring's front forever, so once the ring reaches
/// [`PENDING_RING_MAX`] slots its oldest entries move to a map. A hash map alone cost about
/// 8 % of the load generator's CPU in a perf profile of a 64-byte echo run.
#[derive(Debug, Default)]
struct PendingSet {
    /// Sequence number of `ring[0]`.
    first_seq: u64,
    ring: VecDeque<Option<Pending>>,
    overflow: AHashMap<u64, Pending>,
    len: usize,
}

impl PendingSet {
    fn len(&self) -> usize {
        self.len
    }

    /// Adds the entry for `seq`. A number above all earlier ones goes to the ring, any other
    /// number to the map.
    fn insert(&mut self, seq: u64, pending: Pending) {
        if self.ring.is_empty() {
            self.first_seq = seq;
        }
        let Some(index) = seq
            .checked_sub(self.first_seq)
            .and_then(|index| usize::try_from(index).ok())
            .filter(|&index| index >= self.ring.len() && index < PENDING_RING_MAX)
        else {
            // Out of order, or far ahead of the front: keep it in the map.
            if self.overflow.insert(seq, pending).is_none() {
                self.len += 1;
            }
            return;
        };
        // Sequence numbers sent without a tracked response leave empty slots.
        self.ring.resize_with(index, || None);
        self.ring.push_back(Some(pending));
        self.len += 1;
        while self.ring.len() >= PENDING_RING_MAX {
            self.spill_front();
        }
    }

    /// Removes and returns the entry for `seq`.
    fn remove(&mut self, seq: u64) -> Option<Pending> {
        let in_ring = seq
            .checked_sub(self.first_seq)
            .and_then(|index| usize::try_from(index).ok())
            .and_then(|index| self.ring.get_mut(index))
            .and_then(Option::take);
        let found = match in_ring {
            Some(pending) => {
                self.pop_empty_front();
                Some(pending)
            }
            None => self.overflow.remove(&seq),
        };
        if found.is_some() {
            self.len -= 1;
        }
        found
    }

    fn clear(&mut self) {
        self.ring.clear();
        self.overflow.clear();
        self.len = 0;
    }

    /// Moves the oldest slot to the overflow map.
    fn spill_front(&mut self) {
        if let Some(slot) = self.ring.pop_front() {
            if let Some(pending) = slot {
                self.overflow.insert(self.first_seq, pending);
            }
            self.first_seq += 1;
        }
        self.pop_empty_front();
    }

    fn pop_empty_front(&mut self) {
        while let Some(None) = self.ring.front() {
            self.ring.pop_front();
            self.first_seq += 1;
        }
    }
}

/// Messages of one user that await a response.
///
/// A message whose connection (or, in the relay scenario, whose recipient's connection)
/// ended may never get its response. Such messages become orphans: they still match a
/// response that arrives late, but they no longer count against the window or hold up the
/// drain, and those still unmatched when the user finishes count as lost.
#[derive(Debug, Default)]
struct Book {
    pending: PendingSet,
    /// Sequence numbers of messages whose error frame carries no id, oldest first. The server
    /// handles one connection's messages in order, so such a frame belongs to the oldest.
    without_id: VecDeque<u64>,
    /// Messages with a lower sequence number are orphans.
    orphan_below: u64,
    /// Entries of `pending` below `orphan_below`.
    orphans: usize,
}

impl Book {
    /// Returns the number of messages that await a response and are not orphans.
    fn outstanding(&self) -> usize {
        self.pending.len() - self.orphans
    }

    /// Removes and returns the entry for `seq`.
    fn remove(&mut self, seq: u64) -> Option<Pending> {
        let found = self.pending.remove(seq);
        if found.is_some() && seq < self.orphan_below {
            self.orphans -= 1;
        }
        found
    }

    /// Makes every message sent so far an orphan. `next_seq` is the user's next sequence
    /// number.
    fn orphan_all(&mut self, next_seq: u64) {
        self.orphan_below = next_seq;
        self.orphans = self.pending.len();
    }

    /// Forgets every pending message and returns how many there were.
    fn clear(&mut self) -> usize {
        let lost = self.pending.len();
        self.pending.clear();
        self.without_id.clear();
        self.orphans = 0;
        lost
    }
}

/// One virtual user; it outlives its connections, so responses that arrive after a reconnect
/// still match.
struct User {
    index: u32,
    id: String,
    /// JSON string literal of the `to` field: the relay peer, or the user itself.
    to_json: String,
    role: Role,
    token: RefCell<Option<Option<String>>>,
    book: RefCell<Book>,
    next_seq: Cell<u64>,
    /// Woken when a response to one of this user's messages arrives.
    answered: LocalNotify,
    /// Woken when `connected` or `finished` changes.
    state: Notify,
    connected: Cell<bool>,
    finished: Cell<bool>,
    /// The server close code that an injected fault asked for.
    expect_close: Cell<Option<u16>>,
    injector: RefCell<Option<Injector>>,
    /// Rank among senders, which offsets its open-loop schedule.
    rank: u32,
}

/// One TCP connection after the upgrade.
struct Conn {
    stream: TcpStream,
    /// Control frames queued by the reader (pongs, the close reply) for the writer.
    control: RefCell<Vec<u8>>,
    /// Wakes the writer: control frames queued, or the connection ended.
    wake: LocalNotify,
    /// Set when the server's close frame arrived, with its code if it had one.
    server_close: Cell<Option<Option<u16>>>,
    close_sent: Cell<bool>,
    /// The server closed TCP.
    eof: Cell<bool>,
    /// A read or write failed; nothing more is written.
    failed: Cell<bool>,
    /// The server broke the protocol. Only the close frame with 1002 that the reader queued
    /// is written after it.
    broken: Cell<bool>,
    /// The reader task has returned.
    reader_done: Cell<bool>,
}

impl Conn {
    fn ended(&self) -> bool {
        self.server_close.get().is_some()
            || self.eof.get()
            || self.failed.get()
            || self.broken.get()
    }

    /// Queues a close frame with `code` (1002 or 1007) for the writer and stops reading, as
    /// RFC 6455 §7.1.7 recommends for an endpoint that received invalid data.
    fn fail_protocol(&self, worker: &Worker, code: u16) {
        if !self.close_sent.get() {
            self.close_sent.set(true);
            let mut control = self.control.borrow_mut();
            wire::encode_close(&mut control, code, worker.mask_key());
        }
        self.broken.set(true);
    }
}

/// End state of a connection's session.
enum Outcome {
    /// The connection ended before the deadline; open a new one.
    Reconnect,
    /// An injected fault sent before the deadline ended the connection. Its replacement opens
    /// even when the deadline has passed since, so every such fault costs one handshake.
    Replace,
    /// The user is done.
    Done,
}

struct Worker {
    config: Arc<RunConfig>,
    users: AHashMap<u32, Rc<User>>,
    stats: RefCell<Stats>,
    rng: RefCell<SmallRng>,
    open: Cell<u64>,
    next_source: Cell<usize>,
}

/// Runs worker `index` with the virtual users `users` until they are done, and returns what
/// it counted.
/// A worker's side of the start of the run: it reports that its users are built, then waits
/// until the clock has started.
pub(super) struct StartGate {
    pub ready: std::sync::mpsc::Sender<()>,
    pub go: std::sync::mpsc::Receiver<()>,
}

impl StartGate {
    fn pass(self) {
        let _ = self.ready.send(());
        drop(self.ready);
        // An error means the main thread is gone, and the run ends anyway.
        let _ = self.go.recv();
    }
}

pub(super) fn run_worker(
    index: usize,
    core: Option<core_affinity::CoreId>,
    config: Arc<RunConfig>,
    users: Vec<u32>,
    gate: StartGate,
    progress: &Arc<Progress>,
) -> Result<Stats, String> {
    if let Some(core) = core
        && !core_affinity::set_for_current(core)
    {
        tracing::warn!(
            worker = index,
            core = core.id,
            "cannot pin load worker to its core"
        );
    }
    let runtime = crate::runtime::new_runtime(Some(1024))
        .map_err(|err| crate::runtime::explain_setup_error(&err))?;
    runtime.block_on(async move {
        let worker = Rc::new(Worker::new(index, config, &users));
        gate.pass();
        let publisher = tokio_uring::spawn(publish(Rc::clone(&worker), Arc::clone(progress)));
        let mut tasks = Vec::with_capacity(users.len());
        for index in users {
            let Some(user) = worker.users.get(&index).cloned() else {
                continue;
            };
            let task = match worker.config.scenario {
                Scenario::Connect => tokio_uring::spawn(connect_loop(Rc::clone(&worker), user)),
                Scenario::Echo | Scenario::Relay => {
                    tokio_uring::spawn(run_user(Rc::clone(&worker), user))
                }
            };
            tasks.push(task);
        }
        for task in tasks {
            let _ = task.await;
        }
        publisher.abort();
        worker.publish_to(progress);
        let stats = worker.stats.borrow().clone();
        Ok(stats)
    })
}

impl Worker {
    fn new(index: usize, config: Arc<RunConfig>, indexes: &[u32]) -> Self {
        let mut users = AHashMap::with_capacity(indexes.len());
        for &user_index in indexes {
            let user = build_user(&config, user_index);
            users.insert(user_index, Rc::new(user));
        }
        Self {
            config,
            users,
            stats: RefCell::new(Stats::new()),
            // Keys and masks come from a generator seeded by the operating system in every
            // run, not from --seed, so they differ between runs as RFC 6455 §5.3 and §4.1
            // ask. It is not a cryptographic generator, which a load test does not need.
            // The seed still fixes which faults are injected and when.
            rng: RefCell::new(SmallRng::from_os_rng()),
            open: Cell::new(0),
            next_source: Cell::new(index),
        }
    }

    fn mask_key(&self) -> [u8; 4] {
        self.rng.borrow_mut().random()
    }

    fn publish_to(&self, progress: &Progress) {
        let stats = self.stats.borrow();
        progress.open.store(self.open.get(), Ordering::Relaxed);
        progress
            .handshakes
            .store(stats.handshakes, Ordering::Relaxed);
        progress.sent.store(stats.messages_sent, Ordering::Relaxed);
        progress
            .received
            .store(stats.messages_received, Ordering::Relaxed);
        progress
            .errors
            .store(stats.errors.total(), Ordering::Relaxed);
    }

    /// Next source address, round robin over `--source-addrs`.
    fn source_addr(&self) -> Option<IpAddr> {
        let addrs = &self.config.source_addrs;
        if addrs.is_empty() {
            return None;
        }
        let slot = self.next_source.get();
        self.next_source.set(slot.wrapping_add(self.config.workers));
        addrs.get(slot % addrs.len()).copied()
    }
}

fn build_user(config: &RunConfig, index: u32) -> User {
    let pair = index / 2;
    let (role, peer, rank) = match config.scenario {
        Scenario::Connect => (Role::Idle, index, 0),
        Scenario::Echo if super::plan::is_active(index, config.active_ratio) => (
            Role::Sender,
            index,
            super::plan::active_rank(index, config.active_ratio),
        ),
        Scenario::Echo => (Role::Idle, index, 0),
        Scenario::Relay if !super::plan::is_active(pair, config.active_ratio) => {
            (Role::Idle, index, 0)
        }
        Scenario::Relay if index.is_multiple_of(2) && index + 1 < config.connections => (
            Role::Sender,
            index + 1,
            super::plan::active_rank(pair, config.active_ratio),
        ),
        Scenario::Relay if !index.is_multiple_of(2) => {
            (Role::Receiver { sender: index - 1 }, index - 1, 0)
        }
        Scenario::Relay => (Role::Idle, index, 0),
    };
    let id = config.tokens.user_id(index, &config.user_prefix);
    // Minted before the clock starts, because RSA signing takes milliseconds that would count
    // as connect latency. After a failure `user_token` retries at the first connect.
    let token = config.tokens.token(index, &id, unix_now()).ok();
    let peer_id = config.tokens.user_id(peer, &config.user_prefix);
    let to_json = serde_json::to_string(&peer_id).unwrap_or_else(|_| "\"\"".to_owned());
    let injector = config.injection.as_ref().map(|injection| {
        Injector::new(
            injection.ratio,
            injection.kinds.clone(),
            config.seed.wrapping_add(u64::from(index)),
            injection.max_violations,
        )
    });
    User {
        index,
        id,
        to_json,
        role,
        token: RefCell::new(token),
        book: RefCell::new(Book::default()),
        next_seq: Cell::new(0),
        answered: LocalNotify::default(),
        state: Notify::new(),
        connected: Cell::new(false),
        finished: Cell::new(false),
        expect_close: Cell::new(None),
        injector: RefCell::new(injector),
        rank,
    }
}

async fn publish(worker: Rc<Worker>, progress: Arc<Progress>) {
    loop {
        worker.publish_to(&progress);
        tokio::time::sleep(PUBLISH_INTERVAL).await;
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// Start time of user `index` during the ramp.
fn ramp_start(config: &RunConfig, index: u32) -> Instant {
    if config.ramp_per_sec <= 0.0 {
        return config.epoch();
    }
    config.epoch() + Duration::from_secs_f64(f64::from(index) / config.ramp_per_sec)
}

/// Sleeps until `until`.
async fn sleep_until(until: Instant) {
    tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await;
}

// ---------------------------------------------------------------------------------------------
// Connecting

/// Opens a non-blocking TCP socket to `addr`, bound to `source` first when given. The connect
/// completes in the background; the first write waits for it.
fn open_socket(addr: SocketAddr, source: Option<IpAddr>) -> std::io::Result<std::net::TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    if let Some(ip) = source {
        socket.bind(&SocketAddr::new(ip, 0).into())?;
    }
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(err) if err.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(err) => return Err(err),
    }
    Ok(socket.into())
}

/// An upgrade attempt failed; the failure is already counted in the worker's stats.
struct ConnectFailure;

/// Connects and upgrades for `user`. `intended` is when the attempt was due, the start of the
/// connect latency. Returns the connection and any frame bytes that followed the response.
async fn connect(
    worker: &Worker,
    user: &User,
    intended: Instant,
) -> Result<(Rc<Conn>, BytesMut), ConnectFailure> {
    let config = &worker.config;
    let socket = match open_socket(config.addr, worker.source_addr()) {
        Ok(socket) => socket,
        Err(err) => {
            tracing::debug!(user = user.index, error = %err, "connect failed");
            let mut stats = worker.stats.borrow_mut();
            stats.errors.connect += 1;
            stats.note_error("connect", &err);
            return Err(ConnectFailure);
        }
    };
    let stream = TcpStream::from_std(socket);

    let token = user_token(worker, user)?;
    let nonce: [u8; 16] = worker.rng.borrow_mut().random();
    let key = wire::websocket_key(nonce);
    let mut request = Vec::with_capacity(512);
    wire::write_upgrade_request(
        &mut request,
        &config.url,
        &key,
        token.as_deref(),
        &config.placement,
    );

    let written = Cell::new(false);
    // The subprotocols offered, one of which the server may select (RFC 6455 §4.1).
    let offered: &[&str] = match (&token, config.placement.kind) {
        (Some(token), super::TokenIn::Protocol) => &[&config.placement.protocol_marker, token],
        _ => &[],
    };
    let exchange = upgrade(&stream, request, &key, offered, &written);
    // An upgrade still waiting when the run ends counts as timed out, so it cannot hold the
    // run past its end.
    let limit = (Instant::now() + config.connect_timeout).min(config.run_end());
    let limit = tokio::time::Instant::from_std(limit);
    let result = match tokio::time::timeout_at(limit, exchange).await {
        Ok(result) => result,
        Err(_) => Err(if written.get() {
            UpgradeError::Timeout
        } else {
            UpgradeError::Connect(std::io::ErrorKind::TimedOut.into())
        }),
    };
    let leftover = match result {
        Ok(leftover) => leftover,
        Err(err) => {
            let mut stats = worker.stats.borrow_mut();
            match err {
                UpgradeError::Connect(err) => {
                    tracing::debug!(user = user.index, error = %err, "connect failed");
                    stats.errors.connect += 1;
                    stats.note_error("connect", &err);
                }
                UpgradeError::Status { status, .. } => {
                    tracing::debug!(user = user.index, error = %err, "upgrade rejected");
                    stats.count_http_status(status);
                    stats.note_error("upgrade", &err);
                }
                UpgradeError::Timeout
                | UpgradeError::Handshake(_)
                | UpgradeError::Head(_)
                | UpgradeError::Io(_) => {
                    tracing::debug!(user = user.index, error = %err, "upgrade failed");
                    stats.errors.handshake += 1;
                    stats.note_error("upgrade", &err);
                }
            }
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return Err(ConnectFailure);
        }
    };

    let now = Instant::now();
    let mut stats = worker.stats.borrow_mut();
    stats.record_connect(now.saturating_duration_since(intended));
    if config.in_steady_window(now) {
        stats.steady_handshakes += 1;
    }
    drop(stats);
    let conn = Conn {
        stream,
        control: RefCell::new(Vec::new()),
        wake: LocalNotify::default(),
        server_close: Cell::new(None),
        close_sent: Cell::new(false),
        eof: Cell::new(false),
        failed: Cell::new(false),
        broken: Cell::new(false),
        reader_done: Cell::new(false),
    };
    Ok((Rc::new(conn), leftover))
}

/// Returns the user's token, minted on first use and kept for reconnects.
fn user_token(worker: &Worker, user: &User) -> Result<Option<String>, ConnectFailure> {
    if let Some(token) = user.token.borrow().as_ref() {
        return Ok(token.clone());
    }
    match worker.config.tokens.token(user.index, &user.id, unix_now()) {
        Ok(token) => {
            *user.token.borrow_mut() = Some(token.clone());
            Ok(token)
        }
        Err(err) => {
            tracing::warn!(user = user.index, error = %err, "cannot mint token");
            let mut stats = worker.stats.borrow_mut();
            stats.errors.handshake += 1;
            stats.note_error("token", &err);
            Err(ConnectFailure)
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum UpgradeError {
    #[error("invalid 101 response: {0}")]
    Handshake(wire::HandshakeError),
    #[error("connect failed: {0}")]
    Connect(std::io::Error),
    #[error("invalid response head: {0}")]
    Head(wire::HeadError),
    #[error("read failed during the upgrade: {0}")]
    Io(std::io::Error),
    #[error("upgrade rejected with HTTP {status}{reason}")]
    Status {
        status: u16,
        /// `: ` and the first line of the response body, if one arrived with the head.
        reason: String,
    },
    #[error("no complete upgrade response within --connect-timeout, or before the run ended")]
    Timeout,
}

/// Sends the upgrade request and reads the response head (RFC 6455 §4.1).
async fn upgrade(
    stream: &TcpStream,
    request: Vec<u8>,
    key: &str,
    offered: &[&str],
    written: &Cell<bool>,
) -> Result<BytesMut, UpgradeError> {
    let (result, _) = stream.write_all(request).await;
    result.map_err(UpgradeError::Connect)?;
    written.set(true);

    let mut buf = BytesMut::with_capacity(1024);
    loop {
        match wire::parse_response_head(&buf) {
            Ok(Some(head)) => {
                if head.status != 101 {
                    let body = buf.get(head.head_len..).unwrap_or_default();
                    return Err(UpgradeError::Status {
                        status: head.status,
                        reason: reason_excerpt(body),
                    });
                }
                wire::check_switch(&head, key, offered).map_err(UpgradeError::Handshake)?;
                return Ok(buf.split_off(head.head_len));
            }
            Ok(None) => {}
            Err(err) => return Err(UpgradeError::Head(err)),
        }
        if buf.capacity() - buf.len() < 256 {
            buf.reserve(1024);
        }
        let len = buf.len();
        let capacity = buf.capacity();
        let (result, slice) = stream.read(buf.slice(len..capacity)).await;
        buf = slice.into_inner();
        match result {
            Ok(0) => {
                return Err(UpgradeError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            Ok(_) => {}
            Err(err) => return Err(UpgradeError::Io(err)),
        }
    }
}

/// Maximum number of characters of a rejection's body quoted in an error.
const REASON_MAX_CHARS: usize = 200;

/// Returns `: ` and the first line of a rejection's body, cut to [`REASON_MAX_CHARS`] with
/// control characters escaped, or nothing when the body is empty. Servers such as framegate
/// put the cause of a rejection there.
fn reason_excerpt(body: &[u8]) -> String {
    let line = body.split(|&byte| byte == b'\n').next().unwrap_or_default();
    let text = String::from_utf8_lossy(line);
    let text = text.trim();
    if text.is_empty() {
        return String::new();
    }
    let mut excerpt: String = text
        .chars()
        .take(REASON_MAX_CHARS)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().count() > REASON_MAX_CHARS {
        excerpt.push_str("...");
    }
    format!(": {excerpt}")
}

// ---------------------------------------------------------------------------------------------
// Echo and relay users

async fn run_user(worker: Rc<Worker>, user: Rc<User>) {
    let config = Arc::clone(&worker.config);
    sleep_until(ramp_start(&config, user.index)).await;

    let mut pacer: Option<Pacer> = None;
    let mut backoff = FIRST_BACKOFF;
    let mut replace = false;
    loop {
        let now = Instant::now();
        if now >= config.deadline() && !replace {
            break;
        }
        replace = false;
        let Ok((conn, leftover)) = connect(&worker, &user, now).await else {
            sleep_until((Instant::now() + backoff).min(config.deadline())).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            continue;
        };
        let opened_at = Instant::now();
        if let Some(injector) = user.injector.borrow_mut().as_mut() {
            injector.reset();
        }

        worker.open.set(worker.open.get() + 1);
        user.connected.set(true);
        user.state.notify_waiters();
        let outcome = session(&worker, &user, &conn, leftover, &mut pacer).await;
        user.connected.set(false);
        user.state.notify_waiters();
        worker.open.set(worker.open.get().saturating_sub(1));
        if !matches!(outcome, Outcome::Done) {
            connection_lost(&worker, &user);
        }

        match outcome {
            Outcome::Done => break,
            // RFC 6455 §7.2.3: a client reconnecting after an abnormal end backs off, so a
            // server that ends every connection at once is not hammered. A connection that
            // lasted resets the wait.
            Outcome::Reconnect if opened_at.elapsed() >= STABLE_CONNECTION => {
                backoff = FIRST_BACKOFF;
            }
            Outcome::Reconnect => {
                sleep_until((Instant::now() + backoff).min(config.deadline())).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Outcome::Replace => replace = true,
        }
    }

    user.finished.set(true);
    user.state.notify_waiters();
    let lost = user.book.borrow_mut().clear();
    worker.stats.borrow_mut().errors.lost += u64::try_from(lost).unwrap_or(u64::MAX);
}

/// Settles the messages that a connection of `user` took with it when it ended before the
/// user was done. Echoes and error frames come back on the sender's connection, so in the
/// echo scenario they are lost at once. In the relay scenario a delivery can still reach
/// the peer, so the sender's messages become orphans. When a relay receiver's connection
/// ends, deliveries in flight to it are gone, so its sender's messages become orphans.
fn connection_lost(worker: &Worker, user: &User) {
    match (worker.config.scenario, user.role) {
        (Scenario::Echo, Role::Sender) => {
            let lost = user.book.borrow_mut().clear();
            worker.stats.borrow_mut().errors.lost += u64::try_from(lost).unwrap_or(u64::MAX);
        }
        (Scenario::Relay, Role::Sender) => {
            let mut book = user.book.borrow_mut();
            book.orphan_all(user.next_seq.get());
            // Error frames without an id come only on the connection that ended.
            book.without_id.clear();
        }
        (_, Role::Receiver { sender }) => {
            if let Some(sender) = worker.users.get(&sender) {
                sender.book.borrow_mut().orphan_all(sender.next_seq.get());
                // The sender's window has room again.
                sender.answered.notify_one();
            }
        }
        _ => {}
    }
}

/// Runs one connection of `user` until it ends or the user is done, then closes it.
async fn session(
    worker: &Rc<Worker>,
    user: &Rc<User>,
    conn: &Rc<Conn>,
    leftover: BytesMut,
    pacer: &mut Option<Pacer>,
) -> Outcome {
    let read_bytes = match user.role {
        Role::Sender | Role::Receiver { .. } => worker.config.read_bytes,
        Role::Idle => IDLE_READ_BYTES,
    };
    let reader = tokio_uring::spawn(read_loop(
        Rc::clone(worker),
        Rc::clone(user),
        Rc::clone(conn),
        leftover,
        read_bytes,
    ));

    let outcome = match user.role {
        Role::Sender => send_loop(worker, user, conn, pacer).await,
        Role::Receiver { sender } => receive_loop(worker, conn, sender).await,
        Role::Idle => hold(worker, conn).await,
    };

    close(worker, conn).await;
    let _ = reader.await;
    outcome
}

/// Reason a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waited {
    Met,
    TimedOut,
    Ended,
}

/// Wake-ups a wait listens to besides the connection's own.
#[derive(Clone, Copy, Default)]
struct Wakers<'a> {
    /// A user's `answered`: only that user's writer may listen to it, because each
    /// notification wakes one waiter.
    answered: Option<&'a LocalNotify>,
    /// A user's `state`, which wakes every waiter.
    state: Option<&'a Notify>,
}

/// Waits for `wait`, or forever when there is none.
async fn wait_or_pending(wait: Option<impl Future<Output = ()>>) {
    match wait {
        Some(wait) => wait.await,
        None => std::future::pending().await,
    }
}

/// Waits until `condition` holds, the connection ends, or `until`. Flushes control frames
/// queued by the reader while it waits.
async fn wait_for(
    worker: &Worker,
    conn: &Conn,
    until: Instant,
    wakers: Wakers<'_>,
    condition: impl Fn() -> bool,
) -> Waited {
    loop {
        flush_control(worker, conn).await;
        if conn.ended() {
            return Waited::Ended;
        }
        if condition() {
            return Waited::Met;
        }
        if Instant::now() >= until {
            return Waited::TimedOut;
        }
        tokio::select! {
            _ = wait_or_pending(wakers.answered.map(LocalNotify::notified)) => {}
            _ = wait_or_pending(wakers.state.map(Notify::notified)) => {}
            _ = conn.wake.notified() => {}
            _ = sleep_until(until) => {}
        }
    }
}

/// Writes control frames queued by the reader.
async fn flush_control(worker: &Worker, conn: &Conn) {
    let queued = std::mem::take(&mut *conn.control.borrow_mut());
    if queued.is_empty() || conn.failed.get() || conn.eof.get() {
        return;
    }
    write(worker, conn, queued).await;
}

/// Writes `buf` whole and gives up at [`RunConfig::run_end`]. A failure marks the connection
/// failed. Returns the buffer for reuse.
///
/// A batch usually fits the socket's send buffer, so it first goes out with one non-blocking
/// `sendmsg`, without an io_uring submission, completion and wake-up. Only what the socket
/// did not take waits for an io_uring write. The user's task is the connection's only writer
/// and never drops a write in flight, so the two kinds of write never overlap.
async fn write(worker: &Worker, conn: &Conn, mut buf: Vec<u8>) -> Vec<u8> {
    let sent = match crate::runtime::send_now(&conn.stream, &[std::io::IoSlice::new(&buf)], false) {
        Ok(sent) => Ok(sent),
        Err(err)
            if matches!(
                err.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
            ) =>
        {
            Ok(0)
        }
        Err(err) => Err(err),
    };
    let result = match sent {
        Ok(sent) if sent == buf.len() => Ok(()),
        Ok(sent) => {
            buf.drain(..sent);
            let limit = tokio::time::Instant::from_std(worker.config.run_end());
            match tokio::time::timeout_at(limit, conn.stream.write_all(buf)).await {
                Ok((result, rest)) => {
                    buf = rest;
                    result
                }
                Err(_) => {
                    // The server stopped reading. Dropping the write leaves its buffer with
                    // the io_uring driver, and the shutdown below completes it, so nothing
                    // writes to this connection again.
                    buf = Vec::new();
                    let _ = conn.stream.shutdown(std::net::Shutdown::Both);
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "timed out: the server stopped reading before the end of the run",
                    ))
                }
            }
        }
        Err(err) => Err(err),
    };
    if let Err(err) = result {
        if !conn.ended() {
            tracing::debug!(error = %err, "write failed");
            let mut stats = worker.stats.borrow_mut();
            stats.errors.io += 1;
            stats.note_error("write", &err);
        }
        conn.failed.set(true);
    }
    buf.clear();
    buf
}

/// Outcome after the connection ended on its own: reconnect unless the run is over.
fn after_end(worker: &Worker) -> Outcome {
    if Instant::now() < worker.config.deadline() {
        Outcome::Reconnect
    } else {
        Outcome::Done
    }
}

/// Idle users: keep the connection open until the deadline.
async fn hold(worker: &Worker, conn: &Conn) -> Outcome {
    let deadline = worker.config.deadline();
    match wait_for(worker, conn, deadline, Wakers::default(), || false).await {
        Waited::Ended => after_end(worker),
        Waited::Met | Waited::TimedOut => Outcome::Done,
    }
}

/// Relay receivers: stay until the sender has drained, so no delivery finds the user offline.
async fn receive_loop(worker: &Worker, conn: &Conn, sender: u32) -> Outcome {
    let config = &worker.config;
    let Some(sender) = worker.users.get(&sender) else {
        return hold(worker, conn).await;
    };
    let until = config.deadline() + config.drain_timeout + config.close_timeout;
    let wakers = Wakers {
        answered: None,
        state: Some(&sender.state),
    };
    match wait_for(worker, conn, until, wakers, || sender.finished.get()).await {
        Waited::Ended => after_end(worker),
        Waited::Met | Waited::TimedOut => Outcome::Done,
    }
}

/// Sends messages until the deadline, then waits for the outstanding ones.
async fn send_loop(
    worker: &Worker,
    user: &User,
    conn: &Conn,
    pacer: &mut Option<Pacer>,
) -> Outcome {
    let config = &worker.config;

    // Relay: a message to a user that is not connected yet would be rejected with
    // recipient_offline, so wait for the peer first.
    if config.scenario == Scenario::Relay
        && let Some(peer) = worker.users.get(&(user.index + 1))
    {
        let wakers = Wakers {
            answered: None,
            state: Some(&peer.state),
        };
        match wait_for(worker, conn, config.deadline(), wakers, || {
            peer.connected.get()
        })
        .await
        {
            Waited::Met => {}
            Waited::Ended => return after_end(worker),
            Waited::TimedOut => return Outcome::Done,
        }
    }

    if let LoadModel::Open { rate } = config.load
        && pacer.is_none()
    {
        let (interval, phase) = super::plan::pacing(rate, config.senders, user.rank);
        *pacer = Some(Pacer::new(Instant::now() + phase, interval));
    }

    let mut out = Vec::with_capacity(config.shape.size.saturating_mul(4).min(1 << 20) + 64);
    // One timer serves the whole loop, because in a closed loop every wait ends at the
    // deadline. A timer set up and removed at each wait took about 1.5 % of the generator's
    // CPU in a perf profile of a 64-byte echo run.
    let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(config.deadline()));
    tokio::pin!(sleep);
    loop {
        flush_control(worker, conn).await;
        if conn.ended() {
            return after_end(worker);
        }
        let now = Instant::now();
        // In an open loop, messages due before the deadline still go out after it when the
        // server stopped reading and held their write back. They count as late, not missing.
        let behind = pacer
            .as_ref()
            .is_some_and(|pacer| pacer.next_due() < config.deadline());
        if now >= config.deadline() && !behind {
            break;
        }

        // Gather what is due now.
        let mut special = None;
        let mut count = 0;
        while count < MAX_BATCH {
            let intended = match (&config.load, pacer.as_mut()) {
                (LoadModel::Closed { window }, _) => {
                    let outstanding = user.book.borrow().outstanding();
                    // The book already contains the messages pushed in this batch.
                    if outstanding >= *window as usize {
                        break;
                    }
                    now
                }
                (LoadModel::Open { .. }, Some(pacer)) if pacer.next_due() >= config.deadline() => {
                    break;
                }
                (LoadModel::Open { .. }, Some(pacer)) => match pacer.pop_due(now) {
                    Some(due) => {
                        worker
                            .stats
                            .borrow_mut()
                            .record_send_lag(now.saturating_duration_since(due));
                        due
                    }
                    None => break,
                },
                (LoadModel::Open { .. }, None) => break,
            };
            // Late messages sent after the deadline are valid ones, because the server's reply
            // to a fault (a reconnect after an oversize one) could come after the run ends.
            let injection = if now < config.deadline() {
                user.injector
                    .borrow_mut()
                    .as_mut()
                    .and_then(Injector::choose)
            } else {
                None
            };
            match injection {
                None => push_message(worker, user, &mut out, intended, Body::Valid),
                Some(Injection::MalformedJson) => push_malformed(worker, user, &mut out, intended),
                Some(kind @ (Injection::Oversize | Injection::OverRate)) => {
                    special = Some(kind);
                    break;
                }
            }
            count += 1;
        }

        if !out.is_empty() {
            out = write(worker, conn, out).await;
        }
        match special {
            Some(Injection::Oversize) => {
                return send_oversize(worker, user, conn).await;
            }
            Some(Injection::OverRate) => {
                if !send_over_rate(worker, user, conn).await {
                    return after_end(worker);
                }
                if let Some(pacer) = pacer.as_mut() {
                    let skipped = pacer.rebase(Instant::now());
                    worker.stats.borrow_mut().injected.skipped_by_pauses += skipped;
                }
                continue;
            }
            Some(Injection::MalformedJson) | None => {}
        }
        if count > 0 {
            continue;
        }

        // Nothing was due: sleep until the next due time, a response, or a control frame.
        let next = match pacer.as_ref() {
            Some(pacer) => pacer.next_due().min(config.deadline()),
            None => config.deadline(),
        };
        let next = tokio::time::Instant::from_std(next);
        if sleep.deadline() != next {
            sleep.as_mut().reset(next);
        }
        tokio::select! {
            biased;
            _ = user.answered.notified() => {}
            _ = conn.wake.notified() => {}
            _ = &mut sleep => {}
        }
    }

    // Drain: wait for the responses to what was sent.
    let drain_until = config.deadline() + config.drain_timeout;
    let answered = Wakers {
        answered: Some(&user.answered),
        state: None,
    };
    match wait_for(worker, conn, drain_until, answered, || {
        user.book.borrow().outstanding() == 0
    })
    .await
    {
        Waited::Met | Waited::TimedOut | Waited::Ended => Outcome::Done,
    }
}

/// Appends one message with its expected response to `out`.
fn push_message(worker: &Worker, user: &User, out: &mut Vec<u8>, intended: Instant, body: Body) {
    let expect = match body {
        Body::Valid => Expect::Reply,
        Body::MalformedSyntax | Body::DuplicateKey => Expect::Error("invalid_json"),
        Body::Oversize { .. } => Expect::Reply,
    };
    push_expecting(worker, user, out, intended, body, Some(expect));
}

fn push_malformed(worker: &Worker, user: &User, out: &mut Vec<u8>, intended: Instant) {
    // Alternate between a syntax error (no id in the error frame) and a duplicate key (id echoed),
    // so both ways of matching error frames are exercised.
    let body = if user.next_seq.get().is_multiple_of(2) {
        Body::MalformedSyntax
    } else {
        Body::DuplicateKey
    };
    worker.stats.borrow_mut().injected.malformed_json += 1;
    push_message(worker, user, out, intended, body);
}

/// Appends one message; `expect` `None` means no response is tracked.
fn push_expecting(
    worker: &Worker,
    user: &User,
    out: &mut Vec<u8>,
    intended: Instant,
    body: Body,
    expect: Option<Expect>,
) {
    let seq = user.next_seq.get();
    user.next_seq.set(seq + 1);
    let id = MessageId {
        conn: user.index,
        seq,
    };
    let shape = &worker.config.shape;
    let len = wire::encode_frame_with(out, OpCode::Text, worker.mask_key(), |out| {
        shape.write(out, id, &user.to_json, body);
    });

    if let Some(expect) = expect {
        let mut book = user.book.borrow_mut();
        book.pending.insert(seq, Pending { intended, expect });
        if body == Body::MalformedSyntax {
            book.without_id.push_back(seq);
        }
    }
    let mut stats = worker.stats.borrow_mut();
    stats.messages_sent += 1;
    stats.bytes_sent += u64::try_from(len).unwrap_or(u64::MAX);
}

/// Sends one message over the server's size cap and waits for the server to close with 1009.
/// The connection is then replaced.
async fn send_oversize(worker: &Worker, user: &User, conn: &Conn) -> Outcome {
    let config = &worker.config;
    let Some(injection) = config.injection.as_ref() else {
        return Outcome::Done;
    };
    let mut out = Vec::with_capacity(injection.oversize_bytes + 16);
    let body = Body::Oversize {
        bytes: injection.oversize_bytes,
    };
    let sent_at = Instant::now();
    push_expecting(worker, user, &mut out, sent_at, body, None);
    worker.stats.borrow_mut().injected.oversize += 1;
    user.expect_close.set(Some(MESSAGE_TOO_BIG));
    let _ = write(worker, conn, out).await;

    // Earlier messages get their replies before the close, because the server handles them in order.
    let until = Instant::now() + config.close_timeout.max(Duration::from_secs(1));
    let _ = wait_for(worker, conn, until, Wakers::default(), || false).await;
    if conn.server_close.get().is_none() {
        // The server did not close: the injected fault got no response.
        user.expect_close.set(None);
        count_mismatch(worker, &"an oversize message got no close frame");
    }
    // The fault was sent before the deadline, so the user replaces the connection even when
    // the close arrives after it: every oversize fault costs exactly one reconnect.
    if sent_at < config.deadline() {
        Outcome::Replace
    } else {
        Outcome::Done
    }
}

/// Drains the connection's rate bucket and sends one message over it: waits until nothing is
/// outstanding, waits for the bucket to refill, then writes `burst` valid messages and one
/// more in a single write, which must be rejected with `rate_limited`. Afterwards it waits for
/// the bucket to refill again, so later messages are not limited. Returns false when the
/// connection ended.
async fn send_over_rate(worker: &Worker, user: &User, conn: &Conn) -> bool {
    let config = &worker.config;
    let Some(injection) = config.injection.as_ref() else {
        return true;
    };
    // Every wait ends at the deadline. A fault whose refill would not end before it is
    // not sent, so the run ends on time whatever the server's rate.
    let deadline = config.deadline();
    let quiet = || user.book.borrow().outstanding() == 0;
    let answered = Wakers {
        answered: Some(&user.answered),
        state: None,
    };

    if wait_for(worker, conn, deadline, answered, quiet).await != Waited::Met {
        return !conn.ended();
    }
    let refilled = Instant::now() + injection.refill;
    if refilled >= deadline {
        // Hold the connection quiet until the deadline instead of sending unlimited messages.
        return wait_for(worker, conn, deadline, Wakers::default(), || false).await
            != Waited::Ended;
    }
    if wait_for(worker, conn, refilled, Wakers::default(), || false).await == Waited::Ended {
        return false;
    }

    let now = Instant::now();
    let mut out = Vec::with_capacity((config.shape.size + 16) * (injection.burst as usize + 1));
    // The bucket has room for `burst` messages, so the one after them is rejected.
    let expected = (0..injection.burst)
        .map(|_| Expect::UntimedReply)
        .chain([Expect::Error("rate_limited")]);
    for expect in expected {
        push_expecting(worker, user, &mut out, now, Body::Valid, Some(expect));
    }
    worker.stats.borrow_mut().injected.over_rate += 1;
    let _ = write(worker, conn, out).await;

    let until = deadline + config.drain_timeout;
    if wait_for(worker, conn, until, answered, quiet).await == Waited::Ended {
        return false;
    }
    let refilled = (Instant::now() + injection.refill).min(deadline);
    wait_for(worker, conn, refilled, Wakers::default(), || false).await != Waited::Ended
}

/// Sends a close frame unless one was already exchanged, waits for the server's close frame
/// and TCP end within the close timeout, then shuts the socket down.
async fn close(worker: &Worker, conn: &Conn) {
    let config = &worker.config;
    flush_control(worker, conn).await;
    let mut started = false;
    if !conn.close_sent.get() && !conn.failed.get() && !conn.eof.get() {
        conn.close_sent.set(true);
        let mut frame = Vec::with_capacity(8);
        wire::encode_close(&mut frame, NORMAL_CLOSURE, worker.mask_key());
        let _ = write(worker, conn, frame).await;
        // A failed write is already counted, and the server may never have seen the frame.
        started = !conn.failed.get();
    }

    let until = Instant::now() + config.close_timeout;
    loop {
        flush_control(worker, conn).await;
        if conn.eof.get() || conn.failed.get() || conn.reader_done.get() {
            // RFC 6455 §7.1.5: a TCP close (or reset) without a close frame after ours is
            // an abnormal closure, recorded as 1006.
            if started && conn.server_close.get().is_none() {
                tracing::debug!("server closed TCP without a close frame in response to ours");
                let mut stats = worker.stats.borrow_mut();
                stats.count_close(ABNORMAL_CLOSURE);
                stats.errors.unexpected_close += 1;
                stats.note_error(
                    "close",
                    &"the server ended TCP without answering the close frame (1006)",
                );
            }
            break;
        }
        if Instant::now() >= until {
            if conn.server_close.get().is_none() {
                worker.stats.borrow_mut().errors.close_timeout += 1;
            }
            break;
        }
        tokio::select! {
            _ = conn.wake.notified() => {}
            _ = sleep_until(until) => {}
        }
    }
    // Completes the read still in flight, so the reader task returns.
    let _ = conn.stream.shutdown(std::net::Shutdown::Both);
}

// ---------------------------------------------------------------------------------------------
// Reading

/// Reads and handles server frames until the server closes TCP, a read fails, or the
/// connection is shut down.
async fn read_loop(
    worker: Rc<Worker>,
    user: Rc<User>,
    conn: Rc<Conn>,
    mut buf: BytesMut,
    read_bytes: usize,
) {
    let max_frame = worker.config.max_frame_bytes;
    let mut fragments: Option<(OpCode, Vec<u8>)> = None;
    loop {
        // A reply's latency ends when the read that carried it completed, so one clock read
        // covers every frame of the read.
        let received_at = Instant::now();
        loop {
            let header = match wire::next_frame(&buf, max_frame) {
                Ok(Some(header)) => header,
                Ok(None) => break,
                Err(err) => {
                    fail_protocol_violation(&worker, &user, &conn, PROTOCOL_ERROR, &err);
                    return;
                }
            };
            // next_frame returned the header only once the whole payload is in `buf`.
            let payload_len = usize::try_from(header.payload_len).unwrap_or(usize::MAX);
            let frame_len = header.header_len.saturating_add(payload_len);
            let frame = Frame {
                opcode: header.opcode,
                fin: header.fin,
                payload: buf.get(header.header_len..frame_len).unwrap_or_default(),
            };
            let handled = on_frame(&worker, &user, &conn, received_at, frame, &mut fragments);
            // `advance` rather than `split_to`, because a split shares the allocation through a
            // reference count that each frame would change twice.
            buf.advance(frame_len.min(buf.len()));
            if let Err(violation) = handled {
                fail_protocol_violation(
                    &worker,
                    &user,
                    &conn,
                    violation.code,
                    &violation.description,
                );
                return;
            }
        }

        if buf.capacity() - buf.len() < read_bytes / 2 {
            buf.reserve(read_bytes);
        }
        let len = buf.len();
        let capacity = buf.capacity();
        let (result, slice) = conn.stream.read(buf.slice(len..capacity)).await;
        buf = slice.into_inner();
        match result {
            Ok(0) => {
                if conn.server_close.get().is_none() && !conn.close_sent.get() {
                    // TCP ended without a close frame (status 1006 on this side).
                    tracing::debug!(user = user.index, "server closed TCP without a close frame");
                    let mut stats = worker.stats.borrow_mut();
                    stats.errors.io += 1;
                    stats.note_error("read", &"the server closed TCP without a close frame");
                }
                conn.eof.set(true);
                finish_reader(&conn);
                return;
            }
            Ok(_) => {}
            Err(err) => {
                if !conn.close_sent.get() && conn.server_close.get().is_none() {
                    tracing::debug!(user = user.index, error = %err, "read failed");
                    let mut stats = worker.stats.borrow_mut();
                    stats.errors.io += 1;
                    stats.note_error("read", &err);
                }
                conn.failed.set(true);
                finish_reader(&conn);
                return;
            }
        }
    }
}

/// Counts a server frame that breaks RFC 6455, keeps it as the run's first error when it is
/// one, and fails the connection with close code `code`.
fn fail_protocol_violation(
    worker: &Worker,
    user: &User,
    conn: &Conn,
    code: u16,
    reason: &dyn std::fmt::Display,
) {
    tracing::debug!(user = user.index, error = %reason, "server broke the protocol");
    let mut stats = worker.stats.borrow_mut();
    stats.errors.protocol += 1;
    stats.note_error("protocol", reason);
    drop(stats);
    conn.fail_protocol(worker, code);
    finish_reader(conn);
}

fn finish_reader(conn: &Conn) {
    conn.reader_done.set(true);
    conn.wake.notify_one();
}

/// One complete frame from the server.
struct Frame<'a> {
    opcode: OpCode,
    fin: bool,
    payload: &'a [u8],
}

/// A server frame that breaks RFC 6455, and the close code that fails the connection for it.
#[derive(Debug, PartialEq, Eq)]
struct Violation {
    code: u16,
    description: &'static str,
}

/// Checks that a complete text message is UTF-8 (RFC 6455 §5.6, §8.1).
fn check_text(opcode: OpCode, payload: &[u8]) -> Result<(), Violation> {
    if opcode == OpCode::Text && simdutf8::basic::from_utf8(payload).is_err() {
        return Err(Violation {
            code: INVALID_PAYLOAD,
            description: "text message is not UTF-8",
        });
    }
    Ok(())
}

/// Checks a close frame's body (RFC 6455 §5.5.1, §7.4): empty, or a code that may be sent
/// followed by a UTF-8 reason.
fn check_close(payload: &[u8]) -> Result<(), Violation> {
    let Some(code) = wire::close_code(payload) else {
        if payload.is_empty() {
            return Ok(());
        }
        return Err(Violation {
            code: PROTOCOL_ERROR,
            description: "close frame body of 1 byte",
        });
    };
    if !crate::frame::CloseCode(code).is_allowed_on_wire() {
        return Err(Violation {
            code: PROTOCOL_ERROR,
            description: "close code that must not be sent",
        });
    }
    if std::str::from_utf8(payload.get(2..).unwrap_or_default()).is_err() {
        return Err(Violation {
            code: INVALID_PAYLOAD,
            description: "close reason is not UTF-8",
        });
    }
    Ok(())
}

/// Handles one complete frame. Returns the violation when the frame breaks RFC 6455: fragments
/// out of order (§5.4), a text message that is not UTF-8, or a malformed close frame.
fn on_frame(
    worker: &Worker,
    user: &User,
    conn: &Conn,
    received_at: Instant,
    frame: Frame<'_>,
    fragments: &mut Option<(OpCode, Vec<u8>)>,
) -> Result<(), Violation> {
    let Frame {
        opcode,
        fin,
        payload,
    } = frame;
    // §5.5.1: nothing follows a close frame, so a later frame is counted and dropped unanswered.
    if conn.server_close.get().is_some() {
        tracing::trace!(
            user = user.index,
            ?opcode,
            "frame after the server's close frame"
        );
        let mut stats = worker.stats.borrow_mut();
        stats.errors.protocol += 1;
        stats.note_error("protocol", &"a frame after the server's close frame");
        return Ok(());
    }
    match (opcode, fin, fragments.is_some()) {
        (OpCode::Text | OpCode::Binary, true, false) => {
            check_text(opcode, payload)?;
            on_message(worker, user, received_at, payload);
        }
        (OpCode::Text | OpCode::Binary, false, false) => {
            *fragments = Some((opcode, payload.to_vec()));
        }
        (OpCode::Continuation, _, true) => {
            if let Some((_, assembled)) = fragments.as_mut() {
                assembled.extend_from_slice(payload);
            }
            if fin && let Some((first, assembled)) = fragments.take() {
                check_text(first, &assembled)?;
                on_message(worker, user, received_at, &assembled);
            }
        }
        // §5.4: a data frame inside a fragmented message, or a continuation outside one.
        (OpCode::Text | OpCode::Binary, _, true) | (OpCode::Continuation, _, false) => {
            return Err(Violation {
                code: PROTOCOL_ERROR,
                description: "fragments out of order",
            });
        }
        (OpCode::Ping, _, _) => {
            // §5.5.2: reply with a pong carrying the same payload.
            let mut control = conn.control.borrow_mut();
            wire::encode_frame(&mut control, OpCode::Pong, payload, worker.mask_key());
            conn.wake.notify_one();
        }
        (OpCode::Pong, _, _) => {}
        (OpCode::Close, _, _) => {
            check_close(payload)?;
            on_close(worker, user, conn, wire::close_code(payload));
        }
    }
    Ok(())
}

/// Records a close frame from the server and queues the reply (RFC 6455 §5.5.1).
fn on_close(worker: &Worker, user: &User, conn: &Conn, code: Option<u16>) {
    if conn.server_close.get().is_some() {
        return;
    }
    conn.server_close.set(Some(code));
    if conn.close_sent.get() {
        // A reply with our code, or none, ends the close normally. Any other code is the
        // server's own reason (its close may have crossed ours), and from 1002 up a failure.
        if let Some(code) = code.filter(|&code| code != NORMAL_CLOSURE) {
            let mut stats = worker.stats.borrow_mut();
            stats.count_close(code);
            if user.expect_close.get() == Some(code) {
                user.expect_close.set(None);
            } else if code >= PROTOCOL_ERROR {
                tracing::debug!(user = user.index, code, "server closed with an error code");
                stats.errors.unexpected_close += 1;
                stats.note_error("close", &format_args!("the server closed with {code}"));
            }
        }
    } else {
        // The server started the close: count its code, and check it was expected.
        let shown = code.unwrap_or(1005);
        let mut stats = worker.stats.borrow_mut();
        stats.count_close(shown);
        if user.expect_close.get() == Some(shown) {
            user.expect_close.set(None);
        } else {
            tracing::debug!(
                user = user.index,
                code = shown,
                "server closed the connection"
            );
            stats.errors.unexpected_close += 1;
        }
        drop(stats);
        conn.close_sent.set(true);
        let mut control = conn.control.borrow_mut();
        match code {
            // §5.5.1: the reply typically echoes the status code received.
            Some(code) if crate::frame::CloseCode(code).is_allowed_on_wire() => {
                wire::encode_close(&mut control, code, worker.mask_key());
            }
            _ => wire::encode_frame(&mut control, OpCode::Close, &[], worker.mask_key()),
        }
    }
    conn.wake.notify_one();
}

/// Matches a data message to the message that caused it and records the latency.
fn on_message(worker: &Worker, user: &User, now: Instant, payload: &[u8]) {
    {
        let mut stats = worker.stats.borrow_mut();
        stats.messages_received += 1;
        stats.bytes_received += u64::try_from(payload.len()).unwrap_or(u64::MAX);
        if worker.config.in_steady_window(now) {
            stats.steady_received += 1;
        }
    }

    if let Some(error) = wire::parse_error_frame(payload) {
        worker.stats.borrow_mut().count_error_frame(&error.code);
        let seq = match error.id {
            Some(id) if id.conn == user.index => Some(id.seq),
            Some(_) => None,
            None => user.book.borrow_mut().without_id.pop_front(),
        };
        let pending = seq.and_then(|seq| user.book.borrow_mut().remove(seq));
        let matched = matches!(pending, Some(Pending { expect: Expect::Error(code), .. }) if code == error.code);
        if !matched {
            tracing::debug!(user = user.index, code = %error.code, "unexpected error frame");
            count_mismatch(
                worker,
                &format_args!("error frame {:?} that no message expected", error.code),
            );
        }
        user.answered.notify_one();
        return;
    }

    let Some(id) = wire::parse_id(payload) else {
        count_mismatch(
            worker,
            &"a message that carries none of the generator's ids",
        );
        return;
    };
    // An echo must come back to its sender, and a relayed copy must reach the sender's peer
    // and only that peer. A server that echoes where it should relay fails here.
    let sender = match (worker.config.scenario, user.role) {
        (Scenario::Relay, Role::Receiver { sender }) if id.conn == sender => {
            let Some(sender) = worker.users.get(&sender) else {
                count_mismatch(worker, &"a delivery from a user this worker does not run");
                return;
            };
            sender.as_ref()
        }
        (Scenario::Relay, _) if id.conn == user.index => {
            count_mismatch(
                worker,
                &"a message came back to its sender instead of reaching its recipient; the server echoes instead of relaying",
            );
            return;
        }
        (Scenario::Relay, _) => {
            count_mismatch(worker, &"a message reached a user other than its recipient");
            return;
        }
        _ if id.conn == user.index => user,
        _ => {
            count_mismatch(worker, &"an echo that carries another user's id");
            return;
        }
    };
    let pending = sender.book.borrow_mut().remove(id.seq);
    match pending {
        Some(Pending {
            intended,
            expect: Expect::Reply,
        }) => {
            worker
                .stats
                .borrow_mut()
                .record_latency(now.saturating_duration_since(intended));
        }
        Some(Pending {
            expect: Expect::UntimedReply,
            ..
        }) => {}
        Some(Pending {
            expect: Expect::Error(code),
            ..
        }) => {
            count_mismatch(
                worker,
                &format_args!(
                    "an injected fault got a normal reply instead of the error {code:?}; check that the --server-* options match the server's limits"
                ),
            );
        }
        None => {
            count_mismatch(worker, &"a reply to a message that is not outstanding");
        }
    }
    sender.answered.notify_one();
}

/// Counts a reply that matches no outstanding message, and keeps the first as the run's
/// first error.
fn count_mismatch(worker: &Worker, reason: &dyn std::fmt::Display) {
    let mut stats = worker.stats.borrow_mut();
    stats.errors.mismatch += 1;
    stats.note_error("mismatch", reason);
}

// ---------------------------------------------------------------------------------------------
// Connect scenario

/// Connect, upgrade, close, repeat, until the deadline; open loop when `--rate` is given.
async fn connect_loop(worker: Rc<Worker>, user: Rc<User>) {
    let config = Arc::clone(&worker.config);
    let start = ramp_start(&config, user.index);
    sleep_until(start).await;
    let mut pacer = match config.load {
        LoadModel::Open { rate } => {
            let (interval, phase) = super::plan::pacing(rate, config.connections, user.index);
            Some(Pacer::new(start + phase, interval))
        }
        LoadModel::Closed { .. } => None,
    };

    loop {
        let intended = match pacer.as_mut() {
            Some(pacer) => {
                let due = pacer.next_due();
                if due >= config.deadline() {
                    break;
                }
                sleep_until(due).await;
                pacer.pop_due(Instant::now()).unwrap_or(due)
            }
            None => Instant::now(),
        };
        if intended >= config.deadline() {
            break;
        }
        let Ok((conn, leftover)) = connect(&worker, &user, intended).await else {
            sleep_until(Instant::now() + Duration::from_millis(10)).await;
            continue;
        };
        worker.open.set(worker.open.get() + 1);
        let reader = tokio_uring::spawn(read_loop(
            Rc::clone(&worker),
            Rc::clone(&user),
            Rc::clone(&conn),
            leftover,
            IDLE_READ_BYTES,
        ));
        close(&worker, &conn).await;
        let _ = reader.await;
        worker.open.set(worker.open.get().saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_get_tokens_before_clock() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            load: super::super::LoadArgs,
        }
        let path = std::env::temp_dir().join(format!("framegate-build-{}", std::process::id()));
        std::fs::write(&path, "token-a\ntoken-b\n").unwrap();
        let argv = ["load", "ws://127.0.0.1:9/ws", "--token-file"];
        let args = <Cli as clap::Parser>::try_parse_from(
            argv.iter().copied().chain([path.to_str().unwrap()]),
        )
        .unwrap()
        .load;
        let setup = super::super::prepare(&args);
        let _ = std::fs::remove_file(&path);
        let config = setup.unwrap().config;

        let first = build_user(&config, 0);
        assert_eq!(*first.token.borrow(), Some(Some("token-a".to_owned())));
        let second = build_user(&config, 1);
        assert_eq!(*second.token.borrow(), Some(Some("token-b".to_owned())));
    }

    #[test]
    fn text_not_utf8_fails_with_1007() {
        assert_eq!(check_text(OpCode::Text, "héllo".as_bytes()), Ok(()));
        assert_eq!(check_text(OpCode::Binary, b"\xff\xfe"), Ok(()));
        assert_eq!(
            check_text(OpCode::Text, b"ok \xff").map_err(|v| v.code),
            Err(INVALID_PAYLOAD)
        );
    }

    #[test]
    fn malformed_close_frame_fails() {
        assert_eq!(check_close(b""), Ok(()));
        assert_eq!(check_close(&[0x03, 0xe8, b'o', b'k']), Ok(()));
        assert_eq!(check_close(&[0x0f, 0xa1]), Ok(()));
        let code = |payload: &[u8]| check_close(payload).map_err(|v| v.code);
        assert_eq!(code(&[0x03]), Err(PROTOCOL_ERROR));
        // 1005 and 1006 must not be sent, and codes below 1000 are not used (RFC 6455 §7.4.1).
        assert_eq!(code(&[0x03, 0xed]), Err(PROTOCOL_ERROR));
        assert_eq!(code(&[0x03, 0xee]), Err(PROTOCOL_ERROR));
        assert_eq!(code(&[0x00, 0x05]), Err(PROTOCOL_ERROR));
        assert_eq!(code(&[0x03, 0xe8, 0xff]), Err(INVALID_PAYLOAD));
    }

    fn entry(code: &'static str) -> Pending {
        Pending {
            intended: Instant::now(),
            expect: Expect::Error(code),
        }
    }

    fn code(pending: Option<Pending>) -> Option<&'static str> {
        match pending?.expect {
            Expect::Error(code) => Some(code),
            Expect::Reply | Expect::UntimedReply => None,
        }
    }

    #[test]
    fn reason_excerpt_quotes_first_line() {
        assert_eq!(
            reason_excerpt(b"no WebSocket endpoint at /x; connect to /ws\n"),
            ": no WebSocket endpoint at /x; connect to /ws"
        );
        assert_eq!(reason_excerpt(b""), "");
        assert_eq!(reason_excerpt(b"  \r\n"), "");
        assert_eq!(reason_excerpt(b"a\x1bb\r\nsecond line"), ": a\\u{1b}b");
        let long = "x".repeat(REASON_MAX_CHARS + 1);
        assert_eq!(
            reason_excerpt(long.as_bytes()),
            format!(": {}...", &long[..REASON_MAX_CHARS])
        );
    }

    #[test]
    fn book_orphans_leave_the_window() {
        let mut book = Book::default();
        for seq in 0..4 {
            book.pending.insert(seq, entry("a"));
        }
        book.orphan_all(4);
        assert_eq!(book.outstanding(), 0);
        book.pending.insert(4, entry("b"));
        book.pending.insert(5, entry("b"));
        assert_eq!(book.outstanding(), 2);

        // A late response still matches an orphan, and the count of orphans follows.
        assert_eq!(code(book.remove(1)), Some("a"));
        assert_eq!(book.orphans, 3);
        assert_eq!(book.outstanding(), 2);
        assert_eq!(code(book.remove(4)), Some("b"));
        assert_eq!(book.outstanding(), 1);
        assert_eq!(book.orphans, 3);

        // A second connection end orphans what the first left and what came since.
        book.orphan_all(6);
        assert_eq!(book.outstanding(), 0);
        assert_eq!(book.orphans, 4);
        assert_eq!(book.clear(), 4, "unmatched orphans are lost");
        assert_eq!(book.outstanding(), 0);
    }

    #[test]
    fn pending_set_in_order() {
        let mut set = PendingSet::default();
        for seq in 10..20 {
            set.insert(seq, entry("a"));
        }
        assert_eq!(set.len(), 10);
        for seq in 10..20 {
            assert_eq!(code(set.remove(seq)), Some("a"));
        }
        assert_eq!(set.len(), 0);
        assert!(set.ring.is_empty());
        assert_eq!(code(set.remove(10)), None, "removed twice");
    }

    #[test]
    fn pending_set_out_of_order_and_gaps() {
        let mut set = PendingSet::default();
        set.insert(1, entry("one"));
        set.insert(4, entry("four"));
        set.insert(5, entry("five"));
        assert_eq!(set.len(), 3);
        assert_eq!(code(set.remove(2)), None, "never added");
        assert_eq!(code(set.remove(5)), Some("five"));
        assert_eq!(code(set.remove(1)), Some("one"));
        // The front moved past the gap to the oldest entry still pending.
        assert_eq!(set.first_seq, 4);
        assert_eq!(code(set.remove(4)), Some("four"));
        assert_eq!(set.len(), 0);

        // A number below the front goes to the map and is still found.
        set.insert(100, entry("hundred"));
        set.insert(50, entry("fifty"));
        assert_eq!(set.len(), 2);
        assert_eq!(code(set.remove(50)), Some("fifty"));
        assert_eq!(code(set.remove(100)), Some("hundred"));
        assert_eq!(set.len(), 0);
    }

    #[test]
    fn pending_set_spills_lost_entry() {
        let mut set = PendingSet::default();
        set.insert(0, entry("lost"));
        let total = 3 * PENDING_RING_MAX as u64;
        for seq in 1..total {
            set.insert(seq, entry("answered"));
            assert_eq!(code(set.remove(seq)), Some("answered"));
            assert!(set.ring.len() < PENDING_RING_MAX, "ring bounded at {seq}");
        }
        assert_eq!(set.len(), 1);
        assert_eq!(code(set.remove(0)), Some("lost"));
        assert_eq!(set.len(), 0);
    }

    #[test]
    fn pending_set_far_ahead_goes_to_map() {
        let mut set = PendingSet::default();
        set.insert(0, entry("near"));
        let far = 10 * PENDING_RING_MAX as u64;
        set.insert(far, entry("far"));
        assert_eq!(set.ring.len(), 1);
        assert_eq!(set.len(), 2);
        assert_eq!(code(set.remove(far)), Some("far"));
        assert_eq!(code(set.remove(0)), Some("near"));
        set.insert(7, entry("again"));
        set.clear();
        assert_eq!(set.len(), 0);
        assert_eq!(code(set.remove(7)), None);
    }
}
