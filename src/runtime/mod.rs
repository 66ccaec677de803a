//! The I/O shell: one pinned worker thread per core, each with its own tokio-uring runtime
//! and its own SO_REUSEPORT listener on the public address.
//!
//! A connection is accepted and authenticated on whichever worker the kernel gives it, so
//! JWT work spreads over the cores. The shard ring then names the worker that owns the
//! user; when that is another worker, the socket and the bytes already read move there
//! before the 101 is sent. All per-user state (the user's connections, the per-user cap and
//! rate) therefore lives on one thread and needs no lock.
//!
//! What is shared between workers, and when it is touched:
//! - the open-connection counter (an atomic), once per accepted and once per closed connection;
//! - the per-IP upgrade limiter (a mutex), once per upgrade request;
//! - the connection id counters (atomics, one per worker), once per admitted upgrade;
//! - the workers' inboxes (bounded tokio channels), once per hand-off or cross-core delivery.
//!
//! Nothing shared is touched per frame.

mod admin;
mod conn;
mod uring;
pub(crate) mod wake;
mod worker;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ahash::AHashMap;
use tokio::sync::{Notify, mpsc};

use crate::auth::Verifier;
use crate::config::Config;
use crate::conn::SessionConfig;
use crate::handshake::HandshakeConfig;
use crate::metrics::{self, Snapshot, WorkerMetrics};
use crate::ratelimit::{Decision, TokenBucket};
use crate::shard::Ring;

pub(crate) use uring::send_now;
pub use uring::{explain_setup_error, new_runtime, probe};
pub(crate) use worker::{AdminOp, AdminReply, AdminRequest, ConnState, WorkerMsg};

/// Error that stopped the server from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "cannot bind {addr}: {source}; pick a free port with --listen or stop the other process"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "cannot bind the admin listener on {addr}: {source}; pick a free port with --admin-listen (config key admin_listen, \"\" disables it) or stop the other process"
    )]
    AdminBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    IoUring(String),
    #[error("invalid shard count: {0}")]
    Ring(crate::shard::RingError),
    #[error("worker thread {index} failed: {message}")]
    Worker { index: usize, message: String },
}

/// Everything the workers share, built once before they start.
pub(crate) struct Shared {
    pub config: Config,
    pub session: SessionConfig,
    pub handshake: HandshakeConfig,
    pub verifier: Verifier,
    pub ring: Ring,
    pub inboxes: Vec<mpsc::Sender<WorkerMsg>>,
    /// Connection ids issued so far, per owning worker.
    pub conn_ids: ConnIds,
    pub open_connections: AtomicUsize,
    pub ip_limiter: Mutex<IpLimiter>,
    /// Set once by a drain; never cleared.
    pub draining: AtomicBool,
    /// Workers that finished starting.
    pub workers_ready: AtomicUsize,
    /// Connections accepted and still in the upgrade phase.
    pub pending_upgrades: AtomicUsize,
    /// One per worker: wakes it to drain.
    pub drain_signals: Vec<Arc<Notify>>,
    /// One per worker, written only by that worker, summed when read.
    pub metrics: Vec<WorkerMetrics>,
    /// Bearer key of the push API, read once at start; `None` turns the push API off.
    pub push_key: Option<String>,
}

impl Shared {
    /// Reserves one slot under the process-wide connection cap.
    pub fn try_reserve_connection(&self) -> bool {
        let previous = self.open_connections.fetch_add(1, Ordering::Relaxed);
        if previous < self.config.max_connections {
            return true;
        }
        self.open_connections.fetch_sub(1, Ordering::Relaxed);
        false
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// True when every worker accepts and no drain has started.
    pub fn is_ready(&self) -> bool {
        !self.is_draining() && self.workers_ready.load(Ordering::Relaxed) == self.config.workers
    }

    pub fn release_connection(&self) {
        self.open_connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// Takes one upgrade token for `ip`.
    pub fn check_upgrade_rate(&self, ip: IpAddr, now: Instant) -> Decision {
        if self.config.upgrade_rate_per_ip == 0 {
            return Decision::Allow;
        }
        let mut limiter = match self.ip_limiter.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        limiter.check(
            ip,
            now,
            self.config.upgrade_rate_per_ip,
            self.config.upgrade_burst_per_ip,
        )
    }
}

/// Bits of a connection id below the owning worker's index.
pub(crate) const CONN_ID_WORKER_SHIFT: u32 = 48;
/// Largest per-worker part of a connection id.
const CONN_ID_LOCAL_MAX: u64 = (1 << CONN_ID_WORKER_SHIFT) - 1;
/// Passes over the workers before naming an anonymous connection gives up. One pass fails
/// with probability below 0.37 (every worker's next id names a user another worker owns), so
/// 64 passes fail about once in 10^27.
const ANONYMOUS_ID_PASSES: usize = 64;

/// Issues connection ids: `(owner << 48) | n`, where `owner` is the worker that owns the
/// connection's user and `n` counts from 1 per owner. Ids are issued in order, never twice
/// in one process, so the owner can tell an id it issued (open or not) from one it never
/// issued.
///
/// Any worker may issue an id for any owner (once per admitted upgrade), so each owner's
/// count is an atomic.
pub(crate) struct ConnIds {
    /// Last `n` issued for each owner, by worker index.
    last: Vec<AtomicU64>,
}

impl ConnIds {
    pub(crate) fn new(workers: usize) -> Self {
        Self {
            last: (0..workers).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Issues the next id owned by worker `owner`; `None` when `owner` is out of range or its
    /// 2^48 - 1 ids are spent.
    pub(crate) fn issue(&self, owner: usize) -> Option<u64> {
        let counter = self.last.get(owner)?;
        let n = counter.fetch_add(1, Ordering::Relaxed).checked_add(1)?;
        compose_conn_id(owner, n)
    }

    /// Issues an id for an anonymous connection, whose user id `anon-<id>` must be owned
    /// (by the shard ring) by the worker the id names. Tries each worker's next id, starting
    /// at `first`; when none fits, it skips one id of `first` and tries again. A skipped id
    /// counts as issued, so the push API returns 410 for it. Returns the id and user id, or
    /// `None` when no id fits after [`ANONYMOUS_ID_PASSES`] passes.
    pub(crate) fn issue_anonymous(&self, ring: &Ring, first: usize) -> Option<(u64, String)> {
        let workers = self.last.len();
        if workers == 0 {
            return None;
        }
        for _ in 0..ANONYMOUS_ID_PASSES {
            for step in 0..workers {
                let owner = (first + step) % workers;
                let counter = self.last.get(owner)?;
                let last = counter.load(Ordering::Relaxed);
                let id = compose_conn_id(owner, last.checked_add(1)?)?;
                let user = format!("anon-{id}");
                if ring.owner(user.as_bytes()) != owner {
                    continue;
                }
                // Another worker may have issued the same number meanwhile; then move on.
                if counter
                    .compare_exchange(last, last + 1, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
                {
                    return Some((id, user));
                }
            }
            self.issue(first % workers)?;
        }
        None
    }

    /// Returns the last `n` issued for worker `owner` (0 before the first).
    pub(crate) fn last_issued(&self, owner: usize) -> u64 {
        self.last
            .get(owner)
            .map_or(0, |counter| counter.load(Ordering::Relaxed))
    }
}

fn compose_conn_id(owner: usize, n: u64) -> Option<u64> {
    if n == 0 || n > CONN_ID_LOCAL_MAX {
        return None;
    }
    let owner = u64::try_from(owner).ok()?;
    Some((owner << CONN_ID_WORKER_SHIFT) | n)
}

/// Returns the worker that owns connection `id`; `None` when `id` names no worker of a
/// process with `workers` workers.
pub(crate) fn conn_id_owner(id: u64, workers: usize) -> Option<usize> {
    let owner = usize::try_from(id >> CONN_ID_WORKER_SHIFT).ok()?;
    (owner < workers).then_some(owner)
}

/// Returns the per-worker part of connection `id`.
pub(crate) fn conn_id_local(id: u64) -> u64 {
    id & CONN_ID_LOCAL_MAX
}

/// Per-client-IP upgrade buckets, shared by all workers so the limit is exact per process.
///
/// IPv6 clients are keyed by their /64 prefix, because one host usually holds a whole /64.
/// The table holds at most [`IP_TABLE_MAX`] addresses: once it is full (after dropping
/// buckets idle for [`IP_IDLE`], at most once per [`IP_PRUNE_EVERY`]), new addresses share
/// one overflow bucket with [`OVERFLOW_SCALE`] times the per-IP rate and burst, so a flood of
/// distinct addresses costs constant time per upgrade and bounded memory.
pub(crate) struct IpLimiter {
    buckets: AHashMap<IpAddr, (TokenBucket, Instant)>,
    overflow: Option<TokenBucket>,
    last_prune: Option<Instant>,
}

const IP_TABLE_MAX: usize = 65_536;
const IP_IDLE: Duration = Duration::from_secs(60);
const IP_PRUNE_EVERY: Duration = Duration::from_secs(1);
const OVERFLOW_SCALE: u32 = 64;

impl IpLimiter {
    fn new() -> Self {
        Self {
            buckets: AHashMap::new(),
            overflow: None,
            last_prune: None,
        }
    }

    fn check(&mut self, ip: IpAddr, now: Instant, rate: u32, burst: u32) -> Decision {
        let key = limiter_key(ip);
        if let Some((bucket, last)) = self.buckets.get_mut(&key) {
            *last = now;
            return bucket.try_take(now);
        }
        if self.buckets.len() >= IP_TABLE_MAX {
            let due = self
                .last_prune
                .is_none_or(|last| now.saturating_duration_since(last) >= IP_PRUNE_EVERY);
            if due {
                self.last_prune = Some(now);
                self.buckets
                    .retain(|_, (_, last)| now.saturating_duration_since(*last) < IP_IDLE);
            }
        }
        if self.buckets.len() >= IP_TABLE_MAX {
            let overflow = self.overflow.get_or_insert_with(|| {
                TokenBucket::new(
                    rate.saturating_mul(OVERFLOW_SCALE),
                    burst.saturating_mul(OVERFLOW_SCALE),
                    now,
                )
            });
            return overflow.try_take(now);
        }
        let mut bucket = TokenBucket::new(rate, burst, now);
        let decision = bucket.try_take(now);
        self.buckets.insert(key, (bucket, now));
        decision
    }
}

/// Returns the limiter key of a client address: IPv4 as is (IPv4-mapped IPv6 folded to IPv4), IPv6
/// by its /64 prefix.
fn limiter_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(prefix))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_keys_ipv6_by_prefix_and_folds_mapped_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(limiter_key(a), limiter_key(b));
        assert_ne!(limiter_key(a), limiter_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(limiter_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn conn_ids_name_owner_and_count_from_one() {
        let ids = ConnIds::new(3);
        assert_eq!(ids.issue(2), Some((2 << 48) | 1));
        assert_eq!(ids.issue(2), Some((2 << 48) | 2));
        assert_eq!(ids.issue(0), Some(1));
        assert_eq!(ids.last_issued(2), 2);
        assert_eq!(ids.last_issued(1), 0);
        assert_eq!(ids.issue(3), None);
    }

    #[test]
    fn conn_ids_anonymous_user_matches_owner() {
        let workers = 4;
        let ring = Ring::new(workers).unwrap();
        let ids = ConnIds::new(workers);
        let mut seen = std::collections::HashSet::new();
        for first in (0..workers).cycle().take(200) {
            let (id, user) = ids.issue_anonymous(&ring, first).unwrap();
            assert_eq!(user, format!("anon-{id}"));
            let owner = conn_id_owner(id, workers).unwrap();
            assert_eq!(ring.owner(user.as_bytes()), owner);
            assert!(conn_id_local(id) <= ids.last_issued(owner));
            assert!(seen.insert(id), "id {id} issued twice");
        }
    }

    #[test]
    fn conn_id_owner_beyond_workers_is_none() {
        assert_eq!(conn_id_owner((1 << 48) | 5, 2), Some(1));
        assert_eq!(conn_id_owner((2 << 48) | 5, 2), None);
        assert_eq!(conn_id_owner(u64::MAX, 1024), None);
        assert_eq!(conn_id_local((1 << 48) | 5), 5);
    }

    #[test]
    fn limiter_table_is_bounded_and_overflow_is_shared() {
        let now = Instant::now();
        let mut limiter = IpLimiter::new();
        for i in 0..(IP_TABLE_MAX as u32 + 1000) {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let _ = limiter.check(ip, now, 1, 1);
        }
        assert_eq!(limiter.buckets.len(), IP_TABLE_MAX);
        assert!(limiter.overflow.is_some());
        // A known address keeps its own bucket: its one token is spent.
        let first = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000));
        assert!(matches!(
            limiter.check(first, now, 1, 1),
            Decision::Throttle { .. }
        ));
    }
}

/// Handshake settings derived from the configuration.
pub fn handshake_config(config: &Config) -> HandshakeConfig {
    let non_empty = |value: &str| (!value.is_empty()).then(|| value.to_owned());
    HandshakeConfig {
        path: config.path.clone(),
        bearer_header: config.auth.bearer_header,
        query_param: non_empty(&config.auth.query_param),
        protocol_marker: non_empty(&config.auth.protocol_marker),
        cookie: non_empty(&config.auth.cookie),
        subprotocols: config.subprotocols.clone(),
        allowed_origins: config.allowed_origins.clone(),
    }
}

/// Handle to a running server: the bound address and the worker threads.
pub struct Server {
    local_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<Result<(), String>>>,
}

impl Server {
    /// Returns the address the listeners are bound to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Returns the admin listener's address, when it is enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Per-shard and process figures, summed over the workers.
    pub fn metrics(&self) -> Snapshot {
        snapshot(&self.shared)
    }

    /// Open connections in the whole process.
    pub fn open_connections(&self) -> usize {
        self.shared.open_connections.load(Ordering::Relaxed)
    }

    /// Starts a graceful drain: listeners close, readiness turns false, every connection
    /// gets a close 1001 with a reconnect hint, and each worker stops once its connections
    /// are gone or `drain_timeout` has passed. Calling it again does nothing.
    pub fn drain(&self) {
        drain_shared(&self.shared);
    }

    /// Returns a handle that can start the drain from another thread (a signal handler).
    pub fn drain_handle(&self) -> DrainHandle {
        DrainHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Waits for every worker to stop.
    pub fn join(self) -> Result<(), RunError> {
        for (index, thread) in self.threads.into_iter().enumerate() {
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(message)) => return Err(RunError::Worker { index, message }),
                Err(_) => {
                    return Err(RunError::Worker {
                        index,
                        message: "panicked".to_owned(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Renders the Prometheus text exposition of the process's figures.
pub(crate) fn render_metrics(shared: &Shared) -> String {
    let workers: Vec<&WorkerMetrics> = shared.metrics.iter().collect();
    let mut out = String::with_capacity(8192);
    metrics::render(&workers, shared.is_ready(), &mut out);
    out
}

fn snapshot(shared: &Shared) -> Snapshot {
    let workers: Vec<&WorkerMetrics> = shared.metrics.iter().collect();
    metrics::snapshot(&workers)
}

/// Starts the drain from any thread.
#[derive(Clone)]
pub struct DrainHandle {
    shared: Arc<Shared>,
}

impl DrainHandle {
    pub fn drain(&self) {
        drain_shared(&self.shared);
    }

    /// True when every worker accepts and no drain has started (for `/readyz`).
    pub fn is_ready(&self) -> bool {
        self.shared.is_ready()
    }

    /// Per-shard and process figures, summed over the workers.
    pub fn metrics(&self) -> Snapshot {
        snapshot(&self.shared)
    }
}

fn drain_shared(shared: &Shared) {
    if shared.draining.swap(true, Ordering::Relaxed) {
        return;
    }
    tracing::info!(
        open_connections = shared.open_connections.load(Ordering::Relaxed),
        "draining: closing listeners and connections"
    );
    for signal in &shared.drain_signals {
        signal.notify_one();
    }
}

/// Binds the listeners and starts the workers. Returns once every worker is accepting.
pub fn start(config: Config, verifier: Verifier) -> Result<Server, RunError> {
    probe().map_err(RunError::IoUring)?;

    let workers = config.workers;
    let ring = Ring::new(workers).map_err(RunError::Ring)?;

    // Bind the admin port first, so a clash stops the start before the public port opens.
    let admin_listener = match config.admin_listen {
        Some(addr) => Some(
            std::net::TcpListener::bind(addr)
                .map_err(|source| RunError::AdminBind { addr, source })?,
        ),
        None => None,
    };

    // SO_REUSEPORT would let this process silently share the port with another server that
    // set it too, splitting users between two processes: check that the port is free first.
    if config.listen.port() != 0 {
        let probe =
            std::net::TcpListener::bind(config.listen).map_err(|source| RunError::Bind {
                addr: config.listen,
                source,
            })?;
        drop(probe);
    }

    // Bind the first listener here so port 0 resolves to one port that every worker shares.
    let first = worker::bind_listener(config.listen).map_err(|source| RunError::Bind {
        addr: config.listen,
        source,
    })?;
    let local_addr = first.local_addr().map_err(|source| RunError::Bind {
        addr: config.listen,
        source,
    })?;
    let mut listeners = vec![first];
    for _ in 1..workers {
        let listener = worker::bind_listener(local_addr).map_err(|source| RunError::Bind {
            addr: local_addr,
            source,
        })?;
        listeners.push(listener);
    }

    let mut senders = Vec::with_capacity(workers);
    let mut receivers = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (sender, receiver) = mpsc::channel(config.delivery_queue);
        senders.push(sender);
        receivers.push(receiver);
    }

    let shared = Arc::new(Shared {
        session: SessionConfig::from(&config),
        handshake: handshake_config(&config),
        verifier,
        ring,
        inboxes: senders,
        conn_ids: ConnIds::new(workers),
        open_connections: AtomicUsize::new(0),
        ip_limiter: Mutex::new(IpLimiter::new()),
        draining: AtomicBool::new(false),
        workers_ready: AtomicUsize::new(0),
        pending_upgrades: AtomicUsize::new(0),
        drain_signals: (0..workers).map(|_| Arc::new(Notify::new())).collect(),
        metrics: (0..workers).map(|_| WorkerMetrics::new()).collect(),
        push_key: std::env::var(&config.push_api_key_env)
            .ok()
            .filter(|key| !key.is_empty()),
        config,
    });

    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let mut threads = Vec::with_capacity(workers);
    for (index, (listener, inbox)) in listeners.into_iter().zip(receivers).enumerate() {
        let shared = Arc::clone(&shared);
        let core = (!cores.is_empty()).then(|| cores[index % cores.len()]);
        let ready = ready_tx.clone();
        let thread = std::thread::Builder::new()
            .name(format!("framegate-w{index}"))
            .spawn(move || worker::run(index, core, shared, listener, inbox, ready))
            .map_err(|err| RunError::Worker {
                index,
                message: err.to_string(),
            })?;
        threads.push(thread);
    }
    drop(ready_tx);
    for index in 0..workers {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(message)) => return Err(RunError::Worker { index, message }),
            Err(_) => {
                return Err(RunError::Worker {
                    index,
                    message: "exited before it was ready".to_owned(),
                });
            }
        }
    }
    let admin_addr = match (admin_listener, shared.config.admin_listen) {
        (Some(listener), Some(addr)) => {
            let bound = admin::start(listener, Arc::clone(&shared))
                .map_err(|source| RunError::Bind { addr, source })?;
            tracing::info!(admin_addr = %bound, "admin listener serving /metrics, /healthz, /readyz");
            Some(bound)
        }
        _ => None,
    };
    tracing::info!(%local_addr, workers, "framegate listening");
    Ok(Server {
        local_addr,
        admin_addr,
        shared,
        threads,
    })
}
