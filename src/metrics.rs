//! Per-worker counters, gauges and histograms, and the Prometheus text exposition of their sum.
//!
//! Each worker owns one [`WorkerMetrics`] and is the only thread that writes it. The admin
//! endpoint reads every worker's metrics from its own thread, sums them with [`snapshot`] and
//! writes the text with [`render`] (Prometheus text exposition format, version 0.0.4). Nothing
//! here touches a lock or a shared atomic read-modify-write, so counting costs the worker a
//! plain load and store per update.
//!
//! The module is pure: it reads no clock (callers pass durations to [`Histogram::observe`])
//! and does no I/O. Serving the text over HTTP is the runtime's job, with [`CONTENT_TYPE`].
#![forbid(unsafe_code)]

use std::fmt::{self, Display, Write as _};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// `Content-Type` of the text that [`render`] writes.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Maximum number of buckets in a [`Histogram`], counting the implicit `+Inf` bucket.
pub const MAX_BUCKETS: usize = 16;

/// Bucket upper bounds of [`WorkerMetrics::handshake_duration`], in nanoseconds: 100 µs to
/// 10 s. The handshake includes waiting for a slow client's request head, so the range is wide.
pub const HANDSHAKE_BOUNDS_NANOS: &[u64] = &[
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    10_000_000_000,
];

/// Bucket upper bounds of [`WorkerMetrics::message_processing`], in nanoseconds: 1 µs to 10 ms.
pub const MESSAGE_BOUNDS_NANOS: &[u64] = &[
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    10_000_000,
];

/// Bucket upper bounds of [`WorkerMetrics::upstream_round_trip`], in nanoseconds: 250 µs to
/// 10 s. Round trips above 10 s (possible with `upstream.timeout_ms` above 10000) fall in
/// the `+Inf` bucket.
pub const UPSTREAM_BOUNDS_NANOS: &[u64] = &[
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Application servers counted one by one in [`WorkerMetrics::upstream_down`], by their
/// index in `upstream.urls`; servers at higher indexes count as `other`.
pub const UPSTREAM_SLOTS: usize = 16;

/// Upgrade response statuses counted one by one; any other status counts as `other`.
const UPGRADE_STATUSES: [u16; 12] = [101, 400, 401, 403, 404, 405, 408, 426, 429, 431, 503, 505];

/// Message verdicts counted one by one: `accepted` and the error frame codes. Any other verdict
/// counts as `other`.
const VERDICTS: [&str; 8] = [
    "accepted",
    "invalid_json",
    "missing_field",
    "wrong_type",
    "rate_limited",
    "binary_not_allowed",
    "recipient_offline",
    "overloaded",
];

/// Close codes counted one by one (RFC 6455 §7.4.1, plus the application codes framegate
/// uses); any other code counts as `other`. 1005 and 1006 never go on the wire: they record a
/// close frame without a code and a TCP close without a close frame.
const CLOSE_CODES: [u16; 12] = [
    1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1011, 4000, 4001,
];

/// Index of `value` in the series table `known`, or `known.len()` (the `other` slot) when it
/// has no series of its own.
#[inline]
fn slot_of<T: PartialEq>(known: &[T], value: T) -> usize {
    known
        .iter()
        .position(|entry| *entry == value)
        .unwrap_or(known.len())
}

/// Label value of the catch-all series in each labelled family.
const OTHER: &str = "other";

const UPGRADE_SLOTS: usize = UPGRADE_STATUSES.len() + 1;
const VERDICT_SLOTS: usize = VERDICTS.len() + 1;
const CLOSE_SLOTS: usize = CLOSE_CODES.len() + 1;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// A count that only goes up, written by one thread.
///
/// Single-writer contract: only the worker that owns the counter calls [`Counter::inc`] and
/// [`Counter::add`]. An update is a relaxed load followed by a relaxed store, not a locked
/// read-modify-write, so it never stalls on the cache line. Readers on other threads may see
/// a value a moment old but never a torn one. A second concurrent writer would lose updates;
/// it cannot cause undefined behaviour. The count wraps at 2^64.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Creates a counter at zero.
    pub const fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    /// Adds one. Only the owning worker may call this.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`. Only the owning worker may call this.
    #[inline]
    pub fn add(&self, n: u64) {
        let value = self.0.load(Ordering::Relaxed);
        self.0.store(value.wrapping_add(n), Ordering::Relaxed);
    }

    /// Returns the current count; any thread may call this.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down, written by one thread under the same contract as
/// [`Counter`]. Arithmetic wraps, so a `dec` below `i64::MIN` cannot panic.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Creates a gauge at zero.
    pub const fn new() -> Self {
        Self(AtomicI64::new(0))
    }

    /// Sets the value. Only the owning worker may call this.
    #[inline]
    pub fn set(&self, value: i64) {
        self.0.store(value, Ordering::Relaxed);
    }

    /// Adds one. Only the owning worker may call this.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Subtracts one. Only the owning worker may call this.
    #[inline]
    pub fn dec(&self) {
        self.add(-1);
    }

    /// Adds `delta`, which may be negative. Only the owning worker may call this.
    #[inline]
    pub fn add(&self, delta: i64) {
        let value = self.0.load(Ordering::Relaxed);
        self.0.store(value.wrapping_add(delta), Ordering::Relaxed);
    }

    /// Returns the current value; any thread may call this.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A distribution of durations over fixed buckets, written by one thread under the same
/// contract as [`Counter`].
///
/// The observation count is the sum of the buckets, so the exposition's `_count` always equals
/// its `+Inf` bucket even when a scrape runs while the worker observes.
#[derive(Debug)]
pub struct Histogram {
    /// Bucket upper bounds in nanoseconds, strictly ascending. INVARIANT: fewer than
    /// [`MAX_BUCKETS`] entries, so the `+Inf` bucket has a slot.
    bounds_nanos: &'static [u64],
    /// Observations per bucket, not cumulative. Slot `i` counts values in
    /// `(bounds[i - 1], bounds[i]]`, and slot `bounds.len()` counts values above the last bound.
    buckets: [Counter; MAX_BUCKETS],
    /// Sum of all observations in nanoseconds (wraps after about 584 years of total time).
    sum_nanos: Counter,
}

impl Histogram {
    /// Creates an empty histogram with the given bucket upper bounds in nanoseconds.
    ///
    /// # Panics
    ///
    /// Panics (at compile time in a `const` context) when `bounds_nanos` has
    /// [`MAX_BUCKETS`] or more entries or is not strictly ascending.
    pub const fn new(bounds_nanos: &'static [u64]) -> Self {
        assert!(
            bounds_nanos.len() < MAX_BUCKETS,
            "a histogram has at most MAX_BUCKETS - 1 bounds"
        );
        let mut i = 1;
        while i < bounds_nanos.len() {
            assert!(
                bounds_nanos[i - 1] < bounds_nanos[i],
                "histogram bounds must be strictly ascending"
            );
            i += 1;
        }
        Self {
            bounds_nanos,
            buckets: [const { Counter::new() }; MAX_BUCKETS],
            sum_nanos: Counter::new(),
        }
    }

    /// Records one observation. Only the owning worker may call this. Durations above
    /// `u64::MAX` nanoseconds (about 584 years) count as `u64::MAX`.
    #[inline]
    pub fn observe(&self, duration: Duration) {
        self.observe_each(duration, 1);
    }

    /// Records `count` observations of `each` at once, for a batch whose items were timed
    /// together. Only the owning worker may call this.
    #[inline]
    pub fn observe_each(&self, each: Duration, count: u64) {
        let nanos = u64::try_from(each.as_nanos()).unwrap_or(u64::MAX);
        // The first bound >= nanos names the bucket, because "le" buckets include their bound.
        let slot = self.bounds_nanos.partition_point(|&bound| bound < nanos);
        if let Some(bucket) = self.buckets.get(slot) {
            bucket.add(count);
        }
        self.sum_nanos.add(nanos.saturating_mul(count));
    }

    /// Returns the number of observations; any thread may call this.
    pub fn count(&self) -> u64 {
        self.buckets
            .iter()
            .fold(0, |total, bucket| total.wrapping_add(bucket.get()))
    }

    /// Returns the sum of all observations in nanoseconds; any thread may call this.
    pub fn sum_nanos(&self) -> u64 {
        self.sum_nanos.get()
    }

    /// Adds this histogram's buckets and sum into `into`.
    fn accumulate(&self, into: &mut HistogramSnapshot) {
        let slots = self.bounds_nanos.len() + 1;
        for (total, bucket) in into.buckets.iter_mut().zip(&self.buckets[..slots]) {
            *total = total.wrapping_add(bucket.get());
        }
        into.sum_nanos = into.sum_nanos.wrapping_add(self.sum_nanos.get());
    }
}

/// The metrics of one worker. Only that worker writes them; the admin endpoint reads them.
///
/// Aligned to 128 bytes so that two workers' metrics never share a cache line (or the pair
/// of lines that x86 prefetches together).
#[derive(Debug)]
#[repr(align(128))]
pub struct WorkerMetrics {
    /// Open WebSocket connections on this worker.
    pub connections_open: Gauge,
    /// Users with at least one open connection on this worker.
    pub users: Gauge,
    /// Upgrade responses by status; see [`WorkerMetrics::upgrade`].
    upgrades: [Counter; UPGRADE_SLOTS],
    /// Messages by verdict; see [`WorkerMetrics::message`].
    messages: [Counter; VERDICT_SLOTS],
    /// Frames read from clients, control frames included.
    pub frames_in: Counter,
    /// Frames written to clients, control frames included.
    pub frames_out: Counter,
    /// Bytes read from client sockets after the upgrade.
    pub bytes_in: Counter,
    /// Bytes written to client sockets, the 101 response included.
    pub bytes_out: Counter,
    /// Connection ends by close code; see [`WorkerMetrics::close`].
    closes: [Counter; CLOSE_SLOTS],
    /// Time from accepting a connection to queuing its 101 or rejection.
    pub handshake_duration: Histogram,
    /// Time to check and dispatch one complete message: the time spent on the messages of one
    /// read, divided by the number accepted, so the clock is read twice per read.
    pub message_processing: Histogram,
    /// Messages rejected by a per-connection or per-user rate limit.
    pub rate_limit_hits: Counter,
    /// Connections closed because their outbound queue passed `max_outbound_bytes`.
    pub slow_consumer_closes: Counter,
    /// Hand-offs or deliveries dropped because a worker inbox was full.
    pub queue_full: Counter,
    /// Authenticated connections this worker sent to the worker that owns their user.
    pub handoffs_out: Counter,
    /// Connections this worker received from other workers.
    pub handoffs_in: Counter,
    /// Relayed messages queued on a recipient connection of this worker.
    pub messages_delivered: Counter,
    /// Connections that sent no complete request head within `handshake_timeout_ms`.
    pub handshake_timeouts: Counter,
    /// Connections closed at accept, without a response, because `max_pending_upgrades`
    /// upgrades were in progress.
    pub upgrades_dropped: Counter,
    /// Pings the server sent to quiet connections.
    pub pings_sent: Counter,
    /// Connections closed because nothing arrived within `pong_timeout_ms` after a ping.
    pub pong_timeouts: Counter,
    /// Messages queued or in flight to the application servers (`backend = "http"`).
    pub upstream_pending: Gauge,
    /// Messages queued for the application servers.
    pub upstream_forwarded: Counter,
    /// Batches taken from the queue and sent, counted once however many servers are tried.
    pub upstream_batches: Counter,
    /// Messages of batches that a server acknowledged with a 2xx response.
    pub upstream_acknowledged: Counter,
    /// Batches sent again to the next server after a server failed.
    pub upstream_retries: Counter,
    /// Messages whose sender got an `upstream_rejected` error frame (a 4xx response).
    pub upstream_rejected: Counter,
    /// Messages whose sender got an `upstream_unavailable` error frame (no server took the
    /// batch).
    pub upstream_unavailable: Counter,
    /// Times each server was taken out of rotation after a failure; see
    /// [`WorkerMetrics::upstream_down`].
    upstream_down: [Counter; UPSTREAM_SLOTS + 1],
    /// Times a connection stopped reading because `max_pending_messages` was reached.
    pub upstream_reads_paused: Counter,
    /// Time from sending a batch's POST to its complete response, for each POST that got a
    /// response (any status).
    pub upstream_round_trip: Histogram,
}

impl WorkerMetrics {
    /// Creates metrics with every value at zero.
    pub const fn new() -> Self {
        Self {
            connections_open: Gauge::new(),
            users: Gauge::new(),
            upgrades: [const { Counter::new() }; UPGRADE_SLOTS],
            messages: [const { Counter::new() }; VERDICT_SLOTS],
            frames_in: Counter::new(),
            frames_out: Counter::new(),
            bytes_in: Counter::new(),
            bytes_out: Counter::new(),
            closes: [const { Counter::new() }; CLOSE_SLOTS],
            handshake_duration: Histogram::new(HANDSHAKE_BOUNDS_NANOS),
            message_processing: Histogram::new(MESSAGE_BOUNDS_NANOS),
            rate_limit_hits: Counter::new(),
            slow_consumer_closes: Counter::new(),
            queue_full: Counter::new(),
            handoffs_out: Counter::new(),
            handoffs_in: Counter::new(),
            messages_delivered: Counter::new(),
            handshake_timeouts: Counter::new(),
            upgrades_dropped: Counter::new(),
            pings_sent: Counter::new(),
            pong_timeouts: Counter::new(),
            upstream_pending: Gauge::new(),
            upstream_forwarded: Counter::new(),
            upstream_batches: Counter::new(),
            upstream_acknowledged: Counter::new(),
            upstream_retries: Counter::new(),
            upstream_rejected: Counter::new(),
            upstream_unavailable: Counter::new(),
            upstream_down: [const { Counter::new() }; UPSTREAM_SLOTS + 1],
            upstream_reads_paused: Counter::new(),
            upstream_round_trip: Histogram::new(UPSTREAM_BOUNDS_NANOS),
        }
    }

    /// Counts application server `index` (its place in `upstream.urls`) being taken out of
    /// rotation. Indexes from [`UPSTREAM_SLOTS`] up count as `other`.
    #[inline]
    pub fn upstream_down(&self, index: usize) {
        let slot = index.min(UPSTREAM_SLOTS);
        if let Some(counter) = self.upstream_down.get(slot) {
            counter.inc();
        }
    }

    /// Counts one upgrade response with HTTP `status` (101 or a rejection status). Statuses
    /// without their own series count as `other`.
    #[inline]
    pub fn upgrade(&self, status: u16) {
        let slot = slot_of(&UPGRADE_STATUSES, status);
        if let Some(counter) = self.upgrades.get(slot) {
            counter.inc();
        }
    }

    /// Counts one complete message by `verdict`: `"accepted"` or the `code` of the error
    /// frame it got (`"invalid_json"`, `"rate_limited"`, ...). Unknown verdicts count as
    /// `other`.
    #[inline]
    pub fn message(&self, verdict: &str) {
        let slot = slot_of(&VERDICTS, verdict);
        if let Some(counter) = self.messages.get(slot) {
            counter.inc();
        }
    }

    /// Counts one connection end with close `code`: the code the server sent, the code it
    /// echoed, 1005 for a close frame without a code, or 1006 for a TCP close without a close
    /// frame. Codes without their own series count as `other`.
    #[inline]
    pub fn close(&self, code: u16) {
        let slot = slot_of(&CLOSE_CODES, code);
        if let Some(counter) = self.closes.get(slot) {
            counter.inc();
        }
    }
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Summed buckets of one histogram over several workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Bucket upper bounds in nanoseconds.
    pub bounds_nanos: &'static [u64],
    /// Observations per bucket, not cumulative; `bounds_nanos.len() + 1` entries, the last
    /// one for values above the last bound.
    pub buckets: Vec<u64>,
    /// Sum of all observations in nanoseconds.
    pub sum_nanos: u64,
}

impl HistogramSnapshot {
    fn empty(bounds_nanos: &'static [u64]) -> Self {
        Self {
            bounds_nanos,
            buckets: vec![0; bounds_nanos.len() + 1],
            sum_nanos: 0,
        }
    }

    /// Returns the number of observations.
    pub fn count(&self) -> u64 {
        self.buckets
            .iter()
            .fold(0, |total, &bucket| total.wrapping_add(bucket))
    }
}

/// Plain values of several workers' metrics: counters summed, gauges kept per worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Open connections per worker, by worker index.
    pub connections_open: Vec<i64>,
    /// Users per worker, by worker index.
    pub users: Vec<i64>,
    upgrades: [u64; UPGRADE_SLOTS],
    messages: [u64; VERDICT_SLOTS],
    closes: [u64; CLOSE_SLOTS],
    pub frames_in: u64,
    pub frames_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub handshake_duration: HistogramSnapshot,
    pub message_processing: HistogramSnapshot,
    pub rate_limit_hits: u64,
    pub slow_consumer_closes: u64,
    pub queue_full: u64,
    pub handoffs_out: u64,
    pub handoffs_in: u64,
    pub messages_delivered: u64,
    pub handshake_timeouts: u64,
    pub upgrades_dropped: u64,
    pub pings_sent: u64,
    pub pong_timeouts: u64,
    /// Messages queued or in flight to the application servers, per worker.
    pub upstream_pending: Vec<i64>,
    pub upstream_forwarded: u64,
    pub upstream_batches: u64,
    pub upstream_acknowledged: u64,
    pub upstream_retries: u64,
    pub upstream_rejected: u64,
    pub upstream_unavailable: u64,
    upstream_down: [u64; UPSTREAM_SLOTS + 1],
    pub upstream_reads_paused: u64,
    pub upstream_round_trip: HistogramSnapshot,
}

impl Snapshot {
    /// Returns the upgrade responses with `status`; a status without its own series returns
    /// the `other` total.
    pub fn upgrades(&self, status: u16) -> u64 {
        let slot = slot_of(&UPGRADE_STATUSES, status);
        self.upgrades.get(slot).copied().unwrap_or(0)
    }

    /// Returns the messages with `verdict`; an unknown verdict returns the `other` total.
    pub fn messages(&self, verdict: &str) -> u64 {
        let slot = slot_of(&VERDICTS, verdict);
        self.messages.get(slot).copied().unwrap_or(0)
    }

    /// Returns the connection ends with close `code`; a code without its own series returns
    /// the `other` total.
    pub fn closes(&self, code: u16) -> u64 {
        let slot = slot_of(&CLOSE_CODES, code);
        self.closes.get(slot).copied().unwrap_or(0)
    }

    /// Returns how often application server `index` was taken out of rotation; an index from
    /// [`UPSTREAM_SLOTS`] up returns the `other` total.
    pub fn upstream_down(&self, index: usize) -> u64 {
        self.upstream_down
            .get(index.min(UPSTREAM_SLOTS))
            .copied()
            .unwrap_or(0)
    }

    /// Returns the open connections over all workers.
    pub fn connections_open_total(&self) -> i64 {
        self.connections_open
            .iter()
            .fold(0, |total, &open| total.wrapping_add(open))
    }
}

/// Reads every worker's metrics once and sums them. `workers[i]` is worker `i`.
pub fn snapshot(workers: &[&WorkerMetrics]) -> Snapshot {
    let mut snap = Snapshot {
        connections_open: workers.iter().map(|w| w.connections_open.get()).collect(),
        users: workers.iter().map(|w| w.users.get()).collect(),
        upgrades: [0; UPGRADE_SLOTS],
        messages: [0; VERDICT_SLOTS],
        closes: [0; CLOSE_SLOTS],
        frames_in: 0,
        frames_out: 0,
        bytes_in: 0,
        bytes_out: 0,
        handshake_duration: HistogramSnapshot::empty(HANDSHAKE_BOUNDS_NANOS),
        message_processing: HistogramSnapshot::empty(MESSAGE_BOUNDS_NANOS),
        rate_limit_hits: 0,
        slow_consumer_closes: 0,
        queue_full: 0,
        handoffs_out: 0,
        handoffs_in: 0,
        messages_delivered: 0,
        handshake_timeouts: 0,
        upgrades_dropped: 0,
        pings_sent: 0,
        pong_timeouts: 0,
        upstream_pending: workers.iter().map(|w| w.upstream_pending.get()).collect(),
        upstream_forwarded: 0,
        upstream_batches: 0,
        upstream_acknowledged: 0,
        upstream_retries: 0,
        upstream_rejected: 0,
        upstream_unavailable: 0,
        upstream_down: [0; UPSTREAM_SLOTS + 1],
        upstream_reads_paused: 0,
        upstream_round_trip: HistogramSnapshot::empty(UPSTREAM_BOUNDS_NANOS),
    };
    for worker in workers {
        add_counters(&mut snap.upgrades, &worker.upgrades);
        add_counters(&mut snap.messages, &worker.messages);
        add_counters(&mut snap.closes, &worker.closes);
        add(&mut snap.frames_in, &worker.frames_in);
        add(&mut snap.frames_out, &worker.frames_out);
        add(&mut snap.bytes_in, &worker.bytes_in);
        add(&mut snap.bytes_out, &worker.bytes_out);
        worker
            .handshake_duration
            .accumulate(&mut snap.handshake_duration);
        worker
            .message_processing
            .accumulate(&mut snap.message_processing);
        add(&mut snap.rate_limit_hits, &worker.rate_limit_hits);
        add(&mut snap.slow_consumer_closes, &worker.slow_consumer_closes);
        add(&mut snap.queue_full, &worker.queue_full);
        add(&mut snap.handoffs_out, &worker.handoffs_out);
        add(&mut snap.handoffs_in, &worker.handoffs_in);
        add(&mut snap.messages_delivered, &worker.messages_delivered);
        add(&mut snap.handshake_timeouts, &worker.handshake_timeouts);
        add(&mut snap.upgrades_dropped, &worker.upgrades_dropped);
        add(&mut snap.pings_sent, &worker.pings_sent);
        add(&mut snap.pong_timeouts, &worker.pong_timeouts);
        add(&mut snap.upstream_forwarded, &worker.upstream_forwarded);
        add(&mut snap.upstream_batches, &worker.upstream_batches);
        add(
            &mut snap.upstream_acknowledged,
            &worker.upstream_acknowledged,
        );
        add(&mut snap.upstream_retries, &worker.upstream_retries);
        add(&mut snap.upstream_rejected, &worker.upstream_rejected);
        add(&mut snap.upstream_unavailable, &worker.upstream_unavailable);
        add_counters(&mut snap.upstream_down, &worker.upstream_down);
        add(
            &mut snap.upstream_reads_paused,
            &worker.upstream_reads_paused,
        );
        worker
            .upstream_round_trip
            .accumulate(&mut snap.upstream_round_trip);
    }
    snap
}

fn add(total: &mut u64, counter: &Counter) {
    *total = total.wrapping_add(counter.get());
}

fn add_counters(totals: &mut [u64], counters: &[Counter]) {
    for (total, counter) in totals.iter_mut().zip(counters) {
        add(total, counter);
    }
}

/// Appends the Prometheus text exposition (format 0.0.4) of the workers' summed metrics to
/// `out`. `workers[i]` is worker `i`; the per-worker gauges carry the label `worker="i"`.
/// `ready` becomes `framegate_ready` (1 or 0).
pub fn render(workers: &[&WorkerMetrics], ready: bool, out: &mut String) {
    write_snapshot(&snapshot(workers), ready, out);
}

fn write_snapshot(snap: &Snapshot, ready: bool, out: &mut String) {
    let mut text = Exposition { out };

    text.family(
        "framegate_ready",
        "gauge",
        "1 when the server accepts new connections, 0 while starting or draining.",
    );
    text.sample("framegate_ready", &[], u8::from(ready));

    text.family(
        "framegate_connections_open",
        "gauge",
        "Open WebSocket connections, per worker.",
    );
    for (worker, open) in snap.connections_open.iter().enumerate() {
        let worker = worker.to_string();
        text.sample("framegate_connections_open", &[("worker", &worker)], open);
    }

    text.family(
        "framegate_users",
        "gauge",
        "Users with at least one open connection, per worker.",
    );
    for (worker, users) in snap.users.iter().enumerate() {
        let worker = worker.to_string();
        text.sample("framegate_users", &[("worker", &worker)], users);
    }

    text.family(
        "framegate_upgrades_total",
        "counter",
        "Upgrade responses sent, by HTTP status.",
    );
    let statuses = UPGRADE_STATUSES.iter().map(u16::to_string);
    for (status, value) in statuses.chain([OTHER.to_owned()]).zip(snap.upgrades) {
        text.sample("framegate_upgrades_total", &[("status", &status)], value);
    }

    text.family(
        "framegate_messages_total",
        "counter",
        "Complete client messages, by verdict (accepted or the error frame code).",
    );
    for (verdict, value) in VERDICTS.iter().chain(&[OTHER]).zip(snap.messages) {
        text.sample("framegate_messages_total", &[("verdict", verdict)], value);
    }

    text.family(
        "framegate_closes_total",
        "counter",
        "Connection ends, by close code (1005: close frame without a code, 1006: no close frame).",
    );
    let codes = CLOSE_CODES.iter().map(u16::to_string);
    for (code, value) in codes.chain([OTHER.to_owned()]).zip(snap.closes) {
        text.sample("framegate_closes_total", &[("code", &code)], value);
    }

    let counters = [
        (
            "framegate_frames_received_total",
            "Frames read from clients, control frames included.",
            snap.frames_in,
        ),
        (
            "framegate_frames_sent_total",
            "Frames written to clients, control frames included.",
            snap.frames_out,
        ),
        (
            "framegate_received_bytes_total",
            "Bytes read from client sockets after the upgrade.",
            snap.bytes_in,
        ),
        (
            "framegate_sent_bytes_total",
            "Bytes written to client sockets, upgrade responses included.",
            snap.bytes_out,
        ),
        (
            "framegate_rate_limit_hits_total",
            "Messages rejected by a per-connection or per-user rate limit.",
            snap.rate_limit_hits,
        ),
        (
            "framegate_slow_consumer_closes_total",
            "Connections closed because their outbound queue exceeded max_outbound_bytes.",
            snap.slow_consumer_closes,
        ),
        (
            "framegate_queue_full_total",
            "Hand-offs or deliveries dropped because a worker inbox was full.",
            snap.queue_full,
        ),
        (
            "framegate_handoffs_sent_total",
            "Authenticated connections sent to the worker that owns their user.",
            snap.handoffs_out,
        ),
        (
            "framegate_handoffs_received_total",
            "Connections received from other workers.",
            snap.handoffs_in,
        ),
        (
            "framegate_messages_delivered_total",
            "Relayed messages queued on a recipient connection.",
            snap.messages_delivered,
        ),
        (
            "framegate_handshake_timeouts_total",
            "Connections without a complete request head within handshake_timeout_ms.",
            snap.handshake_timeouts,
        ),
        (
            "framegate_upgrades_dropped_total",
            "Connections closed at accept without a response because max_pending_upgrades upgrades were in progress.",
            snap.upgrades_dropped,
        ),
        (
            "framegate_pings_sent_total",
            "Pings sent to quiet connections.",
            snap.pings_sent,
        ),
        (
            "framegate_pong_timeouts_total",
            "Connections closed because nothing arrived within pong_timeout_ms after a ping.",
            snap.pong_timeouts,
        ),
    ];
    for (name, help, value) in counters {
        text.family(name, "counter", help);
        text.sample(name, &[], value);
    }

    write_upstream(snap, &mut text);

    text.histogram(
        "framegate_handshake_duration_seconds",
        "Time from accepting a connection to queuing its upgrade response.",
        &snap.handshake_duration,
    );
    text.histogram(
        "framegate_message_processing_seconds",
        "Time to check and dispatch one complete client message (the time spent on one read divided by the messages it accepted).",
        &snap.message_processing,
    );
}

/// Writes the families of the `http` backend.
fn write_upstream(snap: &Snapshot, text: &mut Exposition<'_>) {
    text.family(
        "framegate_upstream_pending_messages",
        "gauge",
        "Messages queued or in flight to the application servers, per worker.",
    );
    for (worker, pending) in snap.upstream_pending.iter().enumerate() {
        let worker = worker.to_string();
        text.sample(
            "framegate_upstream_pending_messages",
            &[("worker", &worker)],
            pending,
        );
    }

    let counters = [
        (
            "framegate_upstream_forwarded_messages_total",
            "Messages queued for the application servers.",
            snap.upstream_forwarded,
        ),
        (
            "framegate_upstream_batches_total",
            "Batches sent to the application servers, counted once however many servers were tried.",
            snap.upstream_batches,
        ),
        (
            "framegate_upstream_acknowledged_messages_total",
            "Messages acknowledged by a 2xx response.",
            snap.upstream_acknowledged,
        ),
        (
            "framegate_upstream_retries_total",
            "Batches sent again to the next application server after one failed.",
            snap.upstream_retries,
        ),
        (
            "framegate_upstream_rejected_messages_total",
            "Messages answered with upstream_rejected (4xx response).",
            snap.upstream_rejected,
        ),
        (
            "framegate_upstream_unavailable_messages_total",
            "Messages answered with upstream_unavailable (no application server took the batch).",
            snap.upstream_unavailable,
        ),
        (
            "framegate_upstream_reads_paused_total",
            "Times a connection stopped reading because max_pending_messages was reached.",
            snap.upstream_reads_paused,
        ),
    ];
    for (name, help, value) in counters {
        text.family(name, "counter", help);
        text.sample(name, &[], value);
    }

    text.family(
        "framegate_upstream_down_total",
        "counter",
        "Times an application server was taken out of rotation, by its index in upstream.urls.",
    );
    let indexes = (0..UPSTREAM_SLOTS).map(|index| index.to_string());
    for (index, value) in indexes.chain([OTHER.to_owned()]).zip(snap.upstream_down) {
        text.sample(
            "framegate_upstream_down_total",
            &[("upstream", &index)],
            value,
        );
    }

    text.histogram(
        "framegate_upstream_round_trip_seconds",
        "Time from sending a batch to an application server to its complete response.",
        &snap.upstream_round_trip,
    );
}

/// Writer of exposition lines into a `String`.
struct Exposition<'a> {
    out: &'a mut String,
}

impl Exposition<'_> {
    /// Writes the `# HELP` and `# TYPE` lines of one metric family.
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        self.out.push_str("# HELP ");
        self.out.push_str(name);
        self.out.push(' ');
        escape_help(help, self.out);
        self.out.push_str("\n# TYPE ");
        self.out.push_str(name);
        self.out.push(' ');
        self.out.push_str(kind);
        self.out.push('\n');
    }

    /// Writes one sample line: `name{label="value",...} value`.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (label, label_value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(label);
                self.out.push_str("=\"");
                escape_label_value(label_value, self.out);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        push_display(self.out, value);
        self.out.push('\n');
    }

    /// Writes a histogram family: cumulative `_bucket` lines, `_sum` (seconds) and `_count`.
    fn histogram(&mut self, name: &str, help: &str, snap: &HistogramSnapshot) {
        self.family(name, "histogram", help);
        let bucket_name = format!("{name}_bucket");
        let mut cumulative: u64 = 0;
        for (slot, &count) in snap.buckets.iter().enumerate() {
            cumulative = cumulative.wrapping_add(count);
            let le = match snap.bounds_nanos.get(slot) {
                Some(&bound) => Seconds(bound).to_string(),
                None => "+Inf".to_owned(),
            };
            self.sample(&bucket_name, &[("le", &le)], cumulative);
        }
        self.sample(&format!("{name}_sum"), &[], Seconds(snap.sum_nanos));
        self.sample(&format!("{name}_count"), &[], cumulative);
    }
}

/// Appends `value` to `out`.
fn push_display(out: &mut String, value: impl Display) {
    // Writing into a String cannot fail.
    let _ = write!(out, "{value}");
}

/// Escapes a `# HELP` text: backslash and line feed (text format 0.0.4).
fn escape_help(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Escapes a label value: backslash, double quote and line feed (text format 0.0.4).
fn escape_label_value(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A duration in nanoseconds, displayed as exact decimal seconds (`0.0025`, `1`, `12.5`).
struct Seconds(u64);

impl Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / NANOS_PER_SEC;
        let fraction = self.0 % NANOS_PER_SEC;
        if fraction == 0 {
            return write!(f, "{whole}");
        }
        let digits = format!("{fraction:09}");
        write!(f, "{whole}.{}", digits.trim_end_matches('0'))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// One sample line of a parsed exposition.
    #[derive(Debug, Clone, PartialEq)]
    struct Sample {
        name: String,
        labels: Vec<(String, String)>,
        value: f64,
    }

    /// A parsed exposition: samples in order, and each family's HELP text and TYPE.
    #[derive(Debug, Default)]
    struct Parsed {
        samples: Vec<Sample>,
        help: HashMap<String, String>,
        types: HashMap<String, String>,
    }

    impl Parsed {
        /// Value of the one sample with `name` and exactly `labels`.
        fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
            let found: Vec<&Sample> = self
                .samples
                .iter()
                .filter(|sample| {
                    sample.name == name
                        && sample.labels.len() == labels.len()
                        && labels.iter().all(|(label, value)| {
                            sample
                                .labels
                                .iter()
                                .any(|(l, v)| l.as_str() == *label && v.as_str() == *value)
                        })
                })
                .collect();
            assert_eq!(found.len(), 1, "samples {name} {labels:?}: {found:?}");
            found[0].value
        }
    }

    /// Parses exposition text strictly. Every line must be a HELP, TYPE or sample line, and
    /// every sample's family must have HELP and TYPE before it. A family's samples must be
    /// contiguous, and label values may only use the escapes `\\`, `\"` and `\n`.
    fn parse(text: &str) -> Result<Parsed, String> {
        let mut parsed = Parsed::default();
        let mut finished_families: Vec<String> = Vec::new();
        let mut current_family: Option<String> = None;

        let Some(body) = text.strip_suffix('\n') else {
            return Err("exposition does not end with a line feed".to_owned());
        };
        for (number, line) in body.split('\n').enumerate() {
            let number = number + 1;
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest
                    .split_once(' ')
                    .ok_or(format!("line {number}: HELP without text"))?;
                check_metric_name(name).map_err(|e| format!("line {number}: {e}"))?;
                let help = unescape(help, false).map_err(|e| format!("line {number}: {e}"))?;
                if parsed.help.insert(name.to_owned(), help).is_some() {
                    return Err(format!("line {number}: second HELP for {name}"));
                }
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest
                    .split_once(' ')
                    .ok_or(format!("line {number}: TYPE without a type"))?;
                check_metric_name(name).map_err(|e| format!("line {number}: {e}"))?;
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                    return Err(format!("line {number}: unknown type {kind:?}"));
                }
                if parsed
                    .types
                    .insert(name.to_owned(), kind.to_owned())
                    .is_some()
                {
                    return Err(format!("line {number}: second TYPE for {name}"));
                }
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                return Err(format!("line {number}: unexpected line {line:?}"));
            }

            let sample = parse_sample(line).map_err(|e| format!("line {number}: {e}"))?;
            let family = family_of(&sample.name, &parsed.types)
                .ok_or(format!("line {number}: no TYPE for {}", sample.name))?;
            if !parsed.help.contains_key(&family) {
                return Err(format!("line {number}: no HELP for {family}"));
            }
            if current_family.as_deref() != Some(family.as_str()) {
                if finished_families.contains(&family) {
                    return Err(format!("line {number}: samples of {family} are split"));
                }
                if let Some(previous) = current_family.replace(family.clone()) {
                    finished_families.push(previous);
                }
            }
            parsed.samples.push(sample);
        }
        Ok(parsed)
    }

    fn check_metric_name(name: &str) -> Result<(), String> {
        let mut chars = name.chars();
        let valid_first = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
        if valid_first && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            Ok(())
        } else {
            Err(format!("invalid metric name {name:?}"))
        }
    }

    /// Finds the family a sample belongs to: its own name, or a histogram's base name.
    fn family_of(name: &str, types: &HashMap<String, String>) -> Option<String> {
        if types.contains_key(name) {
            return Some(name.to_owned());
        }
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix)
                && types.get(base).map(String::as_str) == Some("histogram")
            {
                return Some(base.to_owned());
            }
        }
        None
    }

    fn parse_sample(line: &str) -> Result<Sample, String> {
        let name_end = line
            .find(['{', ' '])
            .ok_or(format!("sample without a value: {line:?}"))?;
        let name = &line[..name_end];
        check_metric_name(name)?;
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();

        if let Some(after_brace) = rest.strip_prefix('{') {
            rest = after_brace;
            loop {
                let (label, after_eq) = rest
                    .split_once("=\"")
                    .ok_or(format!("label without =\": {line:?}"))?;
                check_metric_name(label)?;
                let (value, after_value) = split_quoted(after_eq)?;
                labels.push((label.to_owned(), value));
                if let Some(next) = after_value.strip_prefix(',') {
                    rest = next;
                    continue;
                }
                rest = after_value
                    .strip_prefix('}')
                    .ok_or(format!("label set not closed: {line:?}"))?;
                break;
            }
        }

        let value_text = rest
            .strip_prefix(' ')
            .ok_or(format!("no space before the value: {line:?}"))?;
        let value = match value_text {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            text => text
                .parse::<f64>()
                .map_err(|_| format!("invalid value {text:?}"))?,
        };
        Ok(Sample {
            name: name.to_owned(),
            labels,
            value,
        })
    }

    /// Splits `text` at the closing quote of a label value, returning the unescaped value and
    /// what follows the quote.
    fn split_quoted(text: &str) -> Result<(String, &str), String> {
        let mut escaped = false;
        for (at, c) in text.char_indices() {
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, '"') => return Ok((unescape(&text[..at], true)?, &text[at + 1..])),
                (false, '\n') => return Err("raw line feed in a label value".to_owned()),
                _ => escaped = false,
            }
        }
        Err(format!("label value not closed: {text:?}"))
    }

    /// Decodes the escapes of a HELP text (`\\`, `\n`) or label value (also `\"`).
    fn unescape(text: &str, label_value: bool) -> Result<String, String> {
        let mut out = String::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('\\') => out.push('\\'),
                Some('n') => out.push('\n'),
                Some('"') if label_value => out.push('"'),
                other => return Err(format!("invalid escape \\{other:?} in {text:?}")),
            }
        }
        Ok(out)
    }

    fn rendered(workers: &[&WorkerMetrics], ready: bool) -> Parsed {
        let mut text = String::new();
        render(workers, ready, &mut text);
        match parse(&text) {
            Ok(parsed) => parsed,
            Err(err) => panic!("invalid exposition: {err}\n{text}"),
        }
    }

    /// Two workers with a scripted set of updates.
    fn scripted() -> (WorkerMetrics, WorkerMetrics) {
        let first = WorkerMetrics::new();
        let second = WorkerMetrics::new();

        first.connections_open.set(3);
        first.users.set(2);
        second.connections_open.inc();
        second.connections_open.inc();
        second.connections_open.dec();
        second.users.inc();

        first.upgrade(101);
        first.upgrade(101);
        second.upgrade(101);
        first.upgrade(401);
        second.upgrade(429);
        second.upgrade(418);

        for _ in 0..5 {
            first.message("accepted");
        }
        second.message("accepted");
        first.message("invalid_json");
        second.message("rate_limited");
        second.message("rate_limited");
        first.message("no_such_verdict");

        first.close(1000);
        second.close(1000);
        second.close(1008);
        first.close(1006);
        first.close(3000);

        first.frames_in.add(10);
        second.frames_in.add(4);
        first.frames_out.add(7);
        first.bytes_in.add(1_000);
        second.bytes_in.add(24);
        second.bytes_out.add(4_096);
        first.rate_limit_hits.add(2);
        second.slow_consumer_closes.inc();
        first.queue_full.inc();
        first.handoffs_out.add(3);
        second.handoffs_in.add(3);
        second.messages_delivered.add(6);
        first.handshake_timeouts.inc();
        second.upgrades_dropped.add(4);
        second.pings_sent.add(8);
        second.pong_timeouts.inc();
        first.upstream_pending.set(5);
        first.upstream_forwarded.add(9);
        second.upstream_forwarded.add(2);
        first.upstream_batches.add(3);
        first.upstream_acknowledged.add(6);
        first.upstream_retries.inc();
        second.upstream_rejected.add(2);
        second.upstream_unavailable.inc();
        first.upstream_down(1);
        second.upstream_down(1);
        second.upstream_down(40);
        second.upstream_reads_paused.add(4);
        first.upstream_round_trip.observe(Duration::from_millis(3));

        first.handshake_duration.observe(Duration::from_micros(300));
        second.handshake_duration.observe(Duration::from_millis(1));
        second.handshake_duration.observe(Duration::from_secs(60));
        first.message_processing.observe(Duration::from_nanos(800));
        first.message_processing.observe(Duration::from_micros(3));

        (first, second)
    }

    #[test]
    fn counter_add_and_inc_accumulate() {
        let counter = Counter::new();
        counter.inc();
        counter.add(41);
        assert_eq!(counter.get(), 42);
    }

    #[test]
    fn counter_add_wraps_at_u64_max() {
        let counter = Counter::new();
        counter.add(u64::MAX);
        counter.add(2);
        assert_eq!(counter.get(), 1);
    }

    #[test]
    fn gauge_set_inc_dec_track_value() {
        let gauge = Gauge::new();
        gauge.set(5);
        gauge.inc();
        gauge.dec();
        gauge.dec();
        assert_eq!(gauge.get(), 4);
        gauge.set(0);
        gauge.dec();
        assert_eq!(gauge.get(), -1);
    }

    #[test]
    fn gauge_dec_at_min_wraps_without_panic() {
        let gauge = Gauge::new();
        gauge.set(i64::MIN);
        gauge.dec();
        assert_eq!(gauge.get(), i64::MAX);
    }

    #[test]
    fn histogram_bound_value_lands_in_its_bucket() {
        let histogram = Histogram::new(&[1_000, 2_000]);
        histogram.observe(Duration::from_nanos(1_000));
        histogram.observe(Duration::from_nanos(1_001));
        histogram.observe(Duration::from_nanos(2_001));
        histogram.observe(Duration::ZERO);
        let mut snap = HistogramSnapshot::empty(&[1_000, 2_000]);
        histogram.accumulate(&mut snap);
        assert_eq!(snap.buckets, vec![2, 1, 1]);
        assert_eq!(snap.sum_nanos, 4_002);
        assert_eq!(histogram.count(), 4);
    }

    #[test]
    fn histogram_observe_each_matches_repeated_observe() {
        let batched = Histogram::new(&[1_000, 2_000]);
        let single = Histogram::new(&[1_000, 2_000]);
        batched.observe_each(Duration::from_nanos(1_500), 16);
        for _ in 0..16 {
            single.observe(Duration::from_nanos(1_500));
        }
        let mut batched_snap = HistogramSnapshot::empty(&[1_000, 2_000]);
        let mut single_snap = HistogramSnapshot::empty(&[1_000, 2_000]);
        batched.accumulate(&mut batched_snap);
        single.accumulate(&mut single_snap);
        assert_eq!(batched_snap.buckets, vec![0, 16, 0]);
        assert_eq!(batched_snap.buckets, single_snap.buckets);
        assert_eq!(batched_snap.sum_nanos, 24_000);
        assert_eq!(batched_snap.sum_nanos, single_snap.sum_nanos);
    }

    #[test]
    fn histogram_huge_duration_saturates_sum() {
        let histogram = Histogram::new(MESSAGE_BOUNDS_NANOS);
        histogram.observe(Duration::MAX);
        assert_eq!(histogram.sum_nanos(), u64::MAX);
        assert_eq!(histogram.count(), 1);
    }

    #[test]
    #[should_panic(expected = "strictly ascending")]
    fn histogram_unsorted_bounds_panic() {
        let _ = Histogram::new(&[2, 1]);
    }

    #[test]
    #[should_panic(expected = "at most MAX_BUCKETS - 1 bounds")]
    fn histogram_too_many_bounds_panic() {
        const BOUNDS: [u64; MAX_BUCKETS] = {
            let mut bounds = [0; MAX_BUCKETS];
            let mut i = 0;
            while i < MAX_BUCKETS {
                bounds[i] = i as u64 + 1;
                i += 1;
            }
            bounds
        };
        let _ = Histogram::new(&BOUNDS);
    }

    #[test]
    fn snapshot_sums_counters_and_keeps_gauges_per_worker() {
        let (first, second) = scripted();
        let snap = snapshot(&[&first, &second]);

        assert_eq!(snap.connections_open, vec![3, 1]);
        assert_eq!(snap.connections_open_total(), 4);
        assert_eq!(snap.users, vec![2, 1]);
        assert_eq!(snap.upgrades(101), 3);
        assert_eq!(snap.upgrades(401), 1);
        assert_eq!(snap.upgrades(429), 1);
        assert_eq!(snap.upgrades(418), 1, "unknown status counts as other");
        assert_eq!(snap.upgrades(503), 0);
        assert_eq!(snap.messages("accepted"), 6);
        assert_eq!(snap.messages("rate_limited"), 2);
        assert_eq!(snap.messages("other"), 1);
        assert_eq!(snap.closes(1000), 2);
        assert_eq!(snap.closes(1006), 1);
        assert_eq!(snap.closes(3000), 1, "unknown code counts as other");
        assert_eq!(snap.frames_in, 14);
        assert_eq!(snap.bytes_in, 1_024);
        assert_eq!(snap.handoffs_out, 3);
        assert_eq!(snap.handoffs_in, 3);
        assert_eq!(snap.handshake_duration.count(), 3);
        assert_eq!(snap.message_processing.count(), 2);
    }

    #[test]
    fn render_scripted_updates_parse_with_expected_values() {
        let (first, second) = scripted();
        let parsed = rendered(&[&first, &second], true);

        assert_eq!(parsed.value("framegate_ready", &[]), 1.0);
        assert_eq!(
            parsed.value("framegate_connections_open", &[("worker", "0")]),
            3.0
        );
        assert_eq!(
            parsed.value("framegate_connections_open", &[("worker", "1")]),
            1.0
        );
        assert_eq!(parsed.value("framegate_users", &[("worker", "0")]), 2.0);
        assert_eq!(parsed.value("framegate_users", &[("worker", "1")]), 1.0);

        let upgrades = "framegate_upgrades_total";
        assert_eq!(parsed.value(upgrades, &[("status", "101")]), 3.0);
        assert_eq!(parsed.value(upgrades, &[("status", "401")]), 1.0);
        assert_eq!(parsed.value(upgrades, &[("status", "429")]), 1.0);
        assert_eq!(parsed.value(upgrades, &[("status", "other")]), 1.0);
        assert_eq!(parsed.value(upgrades, &[("status", "505")]), 0.0);

        let messages = "framegate_messages_total";
        assert_eq!(parsed.value(messages, &[("verdict", "accepted")]), 6.0);
        assert_eq!(parsed.value(messages, &[("verdict", "invalid_json")]), 1.0);
        assert_eq!(parsed.value(messages, &[("verdict", "rate_limited")]), 2.0);
        assert_eq!(parsed.value(messages, &[("verdict", "other")]), 1.0);
        assert_eq!(parsed.value(messages, &[("verdict", "overloaded")]), 0.0);

        let closes = "framegate_closes_total";
        assert_eq!(parsed.value(closes, &[("code", "1000")]), 2.0);
        assert_eq!(parsed.value(closes, &[("code", "1006")]), 1.0);
        assert_eq!(parsed.value(closes, &[("code", "1008")]), 1.0);
        assert_eq!(parsed.value(closes, &[("code", "other")]), 1.0);
        assert_eq!(parsed.value(closes, &[("code", "4001")]), 0.0);

        let plain = [
            ("framegate_frames_received_total", 14.0),
            ("framegate_frames_sent_total", 7.0),
            ("framegate_received_bytes_total", 1_024.0),
            ("framegate_sent_bytes_total", 4_096.0),
            ("framegate_rate_limit_hits_total", 2.0),
            ("framegate_slow_consumer_closes_total", 1.0),
            ("framegate_queue_full_total", 1.0),
            ("framegate_handoffs_sent_total", 3.0),
            ("framegate_handoffs_received_total", 3.0),
            ("framegate_messages_delivered_total", 6.0),
            ("framegate_handshake_timeouts_total", 1.0),
            ("framegate_upgrades_dropped_total", 4.0),
            ("framegate_pings_sent_total", 8.0),
            ("framegate_pong_timeouts_total", 1.0),
            ("framegate_upstream_forwarded_messages_total", 11.0),
            ("framegate_upstream_batches_total", 3.0),
            ("framegate_upstream_acknowledged_messages_total", 6.0),
            ("framegate_upstream_retries_total", 1.0),
            ("framegate_upstream_rejected_messages_total", 2.0),
            ("framegate_upstream_unavailable_messages_total", 1.0),
            ("framegate_upstream_reads_paused_total", 4.0),
            ("framegate_upstream_round_trip_seconds_count", 1.0),
        ];
        for (name, expected) in plain {
            assert_eq!(parsed.value(name, &[]), expected, "{name}");
        }

        let pending = "framegate_upstream_pending_messages";
        assert_eq!(parsed.value(pending, &[("worker", "0")]), 5.0);
        assert_eq!(parsed.value(pending, &[("worker", "1")]), 0.0);
        let down = "framegate_upstream_down_total";
        assert_eq!(parsed.value(down, &[("upstream", "0")]), 0.0);
        assert_eq!(parsed.value(down, &[("upstream", "1")]), 2.0);
        assert_eq!(parsed.value(down, &[("upstream", "other")]), 1.0);
    }

    #[test]
    fn render_histogram_buckets_are_cumulative() {
        let (first, second) = scripted();
        let parsed = rendered(&[&first, &second], true);
        let bucket = "framegate_handshake_duration_seconds_bucket";

        // Observations: 300 µs, 1 ms and 60 s.
        assert_eq!(parsed.value(bucket, &[("le", "0.00025")]), 0.0);
        assert_eq!(parsed.value(bucket, &[("le", "0.0005")]), 1.0);
        assert_eq!(parsed.value(bucket, &[("le", "0.001")]), 2.0);
        assert_eq!(parsed.value(bucket, &[("le", "10")]), 2.0);
        assert_eq!(parsed.value(bucket, &[("le", "+Inf")]), 3.0);
        assert_eq!(
            parsed.value("framegate_handshake_duration_seconds_count", &[]),
            3.0
        );
        assert_eq!(
            parsed.value("framegate_handshake_duration_seconds_sum", &[]),
            60.0013
        );

        let bucket = "framegate_message_processing_seconds_bucket";
        assert_eq!(parsed.value(bucket, &[("le", "0.000001")]), 1.0);
        assert_eq!(parsed.value(bucket, &[("le", "0.0000025")]), 1.0);
        assert_eq!(parsed.value(bucket, &[("le", "0.000005")]), 2.0);
        assert_eq!(
            parsed.value("framegate_message_processing_seconds_sum", &[]),
            0.0000038
        );

        for name in [
            "framegate_handshake_duration_seconds_bucket",
            "framegate_message_processing_seconds_bucket",
        ] {
            let values: Vec<f64> = parsed
                .samples
                .iter()
                .filter(|s| s.name == name)
                .map(|s| s.value)
                .collect();
            assert!(
                values.windows(2).all(|pair| pair[0] <= pair[1]),
                "{name}: {values:?}"
            );
        }
    }

    #[test]
    fn render_every_family_has_help_and_type() {
        let (first, second) = scripted();
        let parsed = rendered(&[&first, &second], false);
        assert_eq!(parsed.value("framegate_ready", &[]), 0.0);

        for sample in &parsed.samples {
            let family = family_of(&sample.name, &parsed.types)
                .unwrap_or_else(|| panic!("no family for {}", sample.name));
            assert!(family.starts_with("framegate_"), "{family}");
            assert!(
                parsed.help.get(&family).is_some_and(|h| !h.is_empty()),
                "{family}"
            );
        }
        for (family, kind) in &parsed.types {
            assert!(
                parsed.help.contains_key(family),
                "TYPE without HELP: {family}"
            );
            assert_eq!(
                kind == "counter",
                family.ends_with("_total"),
                "{family} is a {kind}"
            );
        }
    }

    #[test]
    fn render_no_workers_is_valid() {
        let parsed = rendered(&[], true);
        assert!(
            parsed
                .samples
                .iter()
                .all(|s| s.name != "framegate_connections_open")
        );
        assert_eq!(parsed.value("framegate_frames_received_total", &[]), 0.0);
        assert!(parsed.types.contains_key("framegate_connections_open"));
    }

    #[test]
    fn escape_label_value_escapes_quote_backslash_newline() {
        let mut out = String::new();
        escape_label_value("a\"b\\c\nd", &mut out);
        assert_eq!(out, r#"a\"b\\c\nd"#);

        let mut text = Exposition {
            out: &mut String::new(),
        };
        text.family("x_total", "counter", "help with \\ and\nnewline");
        text.sample("x_total", &[("label", "a\"b\\c\nd,}=")], 1);
        let written = text.out.clone();
        let parsed = parse(&written).unwrap_or_else(|e| panic!("{e}\n{written}"));
        assert_eq!(parsed.value("x_total", &[("label", "a\"b\\c\nd,}=")]), 1.0);
        assert_eq!(parsed.help["x_total"], "help with \\ and\nnewline");
    }

    #[test]
    fn parser_rejects_sample_without_help_or_type() {
        assert!(parse("a_total 1\n").is_err());
        assert!(parse("# TYPE a_total counter\na_total 1\n").is_err());
        assert!(parse("# HELP a_total h\n# TYPE a_total counter\na_total 1\n").is_ok());
        assert!(parse("# HELP a h\n# TYPE a gauge\na{l=\"\\x\"} 1\n").is_err());
        assert!(parse("# HELP a h\n# TYPE a gauge\na 1").is_err());
    }

    #[test]
    fn seconds_display_is_exact_decimal() {
        let cases = [
            (0, "0"),
            (1, "0.000000001"),
            (2_500_000, "0.0025"),
            (1_000_000_000, "1"),
            (12_500_000_000, "12.5"),
            (u64::MAX, "18446744073.709551615"),
        ];
        for (nanos, expected) in cases {
            assert_eq!(Seconds(nanos).to_string(), expected, "{nanos} ns");
        }
    }

    #[test]
    fn worker_metrics_aligned_send_sync() {
        const fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<WorkerMetrics>();
        assert_eq!(std::mem::align_of::<WorkerMetrics>(), 128);
    }

    #[test]
    fn counter_one_writer_one_reader_sees_final_value() {
        let metrics = std::sync::Arc::new(WorkerMetrics::new());
        let writer = {
            let metrics = std::sync::Arc::clone(&metrics);
            std::thread::spawn(move || {
                for _ in 0..10_000 {
                    metrics.frames_in.inc();
                    metrics.message("accepted");
                }
            })
        };
        // Reads while the writer runs never see a value above the final one.
        for _ in 0..100 {
            assert!(metrics.frames_in.get() <= 10_000);
        }
        writer.join().expect("writer thread");
        let snap = snapshot(&[&metrics]);
        assert_eq!(snap.frames_in, 10_000);
        assert_eq!(snap.messages("accepted"), 10_000);
    }
}
