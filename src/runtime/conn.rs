//! One open connection on its owning worker: the reader task that runs the protocol
//! [`Session`] over each read, and the sending of what the session queues.
//!
//! Sending: whatever one read (or one delivery) queues leaves at once in one non-blocking
//! `sendmsg`. Only when the socket's send buffer is full does a writer task start, which sends
//! the rest with io_uring writes (they wait for the peer to read) and ends once the outbox is
//! empty. So a connection has a writer task only while its peer is behind.
//!
//! Ending a connection: after a close frame is queued it is sent and the write side is shut
//! down (RFC 6455 §7.1.1: the server closes TCP first), and the reader keeps reading and
//! discarding until the peer's FIN or `close_timeout`, so the kernel never sends a reset
//! for unread data.

use std::cell::{Cell, RefCell};
use std::io::IoSlice;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;

use super::wake::LocalNotify;
use super::worker::Worker;
use crate::conn::{Accepted, Flow, Outbox, Session, Tally};
use crate::frame::{CloseCode, OpCode};

/// Most iovecs passed to one `writev` (Linux IOV_MAX).
const IOV_MAX: usize = 1024;

/// Maximum number of iovecs passed to one immediate `sendmsg`. One read's echoes fit in a
/// few, because small frames are gathered into one segment and only payloads over
/// [`crate::conn::INLINE_PAYLOAD_MAX`] get their own.
const SEND_NOW_IOVECS: usize = 32;

/// Read buffer offered to a quiet connection (see [`ReadSizing`]).
const QUIET_READ_BYTES: usize = 128;

/// Consecutive short reads after which a connection counts as quiet.
const QUIET_AFTER_READS: u8 = 4;

/// A read that waited this long for data starts a sparse burst (see [`ReadSizing`]).
const SPARSE_WAIT: Duration = Duration::from_millis(100);

/// Reads after a long wait that still count as one sparse burst.
const SPARSE_BURST_READS: u8 = 4;

/// Maximum size of a read buffer, in multiples of `read_buffer_bytes`, after the non-blocking
/// recv that follows a read that filled the buffer (see [`reserve_waiting`]).
const MAX_READS_BUFFERED: usize = 4;

/// Maximum number of non-blocking reads that discard what a peer sent after its close frame
/// before the socket closes. The cap bounds the work that a peer still sending can cause.
const CLOSE_DRAIN_READS: usize = 4;

/// Chooses between a small and a full-size read buffer.
///
/// With tokio-uring 0.5 every posted read keeps its buffer until data arrives, so an idle
/// connection would keep a full `read_buffer_bytes` buffer (and the heap pages its allocation
/// touches) for as long as it stays idle. A connection is quiet from the upgrade on, after
/// [`QUIET_AFTER_READS`] reads of at most half of [`QUIET_READ_BYTES`] (pongs, short messages),
/// and for [`SPARSE_BURST_READS`] reads after a read that waited [`SPARSE_WAIT`] or longer (an
/// occasional message, even a long one). While quiet and with no partial frame buffered, it
/// reads into a [`QUIET_READ_BYTES`] buffer. A busy connection, whose reads find data waiting,
/// keeps full-size reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ReadSizing {
    short_reads: u8,
    /// Reads left in the current sparse burst.
    sparse_reads: u8,
}

impl ReadSizing {
    fn new() -> Self {
        Self {
            short_reads: QUIET_AFTER_READS,
            sparse_reads: 0,
        }
    }

    fn quiet(self) -> bool {
        self.short_reads >= QUIET_AFTER_READS || self.sparse_reads > 0
    }

    /// Records a read that returned `read` bytes into `offered` bytes of space after waiting
    /// `waited` for them.
    fn record(&mut self, read: usize, offered: usize, waited: Duration) {
        if read < offered && read <= QUIET_READ_BYTES / 2 {
            self.short_reads = self.short_reads.saturating_add(1);
        } else {
            self.short_reads = 0;
        }
        if waited >= SPARSE_WAIT {
            self.sparse_reads = SPARSE_BURST_READS;
        } else {
            self.sparse_reads = self.sparse_reads.saturating_sub(1);
        }
    }

    /// Prepares `buf` for the next read: a fresh small buffer when quiet and empty. Otherwise
    /// the free space is at least half of the larger of two sizes: the rest of the frame in
    /// progress (`wanted`) and one full read (`read_size`).
    ///
    /// The free space is kept large because a read shorter than what the peer wrote splits
    /// the peer's batch in two. The echoes then leave in two writes, a closed-loop peer replies
    /// to each with its own write, and every later round stays split: twice the reads, writes and
    /// TCP segments for the same messages.
    fn prepare(self, buf: &mut BytesMut, wanted: usize, read_size: usize) {
        if self.quiet() && buf.is_empty() {
            let capacity = buf.capacity();
            if !(QUIET_READ_BYTES / 2..=2 * QUIET_READ_BYTES).contains(&capacity) {
                *buf = BytesMut::with_capacity(QUIET_READ_BYTES);
            }
            return;
        }
        let wanted = wanted.max(read_size);
        if buf.is_empty() {
            crate::conn::rewind(buf);
        }
        if buf.capacity() - buf.len() < wanted / 2 {
            buf.reserve(wanted);
        }
    }
}

/// Makes room in `buf`, which the last read filled, for at least `read_size` more bytes that
/// a non-blocking recv takes from the socket. Returns false, leaving `buf` unchanged, when
/// `buf` would then hold more than [`MAX_READS_BUFFERED`] reads. The rest then waits in the
/// socket until the frames already buffered are handled.
///
/// The room is added exactly, because `BytesMut::reserve` on a full buffer doubles its
/// allocation and the recv fills all the room there is. With `reserve`, a peer that writes
/// faster than the worker handles its frames would double the buffer on every read, up to
/// the size of the socket's receive buffer (the third value of `net.ipv4.tcp_rmem`).
fn reserve_waiting(buf: &mut BytesMut, read_size: usize) -> bool {
    let needed = buf.len() + read_size;
    if needed > MAX_READS_BUFFERED * read_size {
        return false;
    }
    grow_exact(buf, read_size);
    true
}

/// Makes room in `buf` for `additional` more bytes without the doubling of
/// `BytesMut::reserve`. The current allocation is reused when its free space is enough, and
/// otherwise the bytes move to a new allocation of exactly the size needed.
pub(super) fn grow_exact(buf: &mut BytesMut, additional: usize) {
    if buf.try_reclaim(additional) {
        return;
    }
    let mut grown = BytesMut::with_capacity(buf.len() + additional);
    grown.extend_from_slice(buf);
    *buf = grown;
}

/// The parts of a connection that other tasks of the worker touch: its outbox and wake-ups.
pub(crate) struct ConnHandle {
    pub id: u64,
    /// The user id, shared with the worker's map of users.
    pub user: Rc<str>,
    stream: Rc<TcpStream>,
    outbox: RefCell<Outbox>,
    /// Whether a writer task runs. One starts when the socket does not take everything queued
    /// and ends once the outbox is empty. While it runs, new frames wait for it.
    writer_running: Cell<bool>,
    /// Whether the connection is on the worker's list of connections that send once the
    /// current hold ends (see [`Worker::hold_sends`]).
    listed_for_send: Cell<bool>,
    /// Wakes the reader when the writer task ends.
    writer_done: LocalNotify,
    /// Whether the reader saw no busy traffic lately (see `ReadSizing`), so an emptied outbox
    /// frees its buffers.
    quiet: Cell<bool>,
    /// This handle, so that a method called through `&self` can start the writer task.
    this: Weak<ConnHandle>,
    worker: Weak<Worker>,
    /// Wakes the reader when someone else decides to end the connection.
    reader_wake: LocalNotify,
    /// A close frame is queued: the writer shuts down the write side once the outbox is empty.
    close_after_flush: Cell<bool>,
    /// The socket failed or the connection ended: nothing more is written.
    dead: Cell<bool>,
    max_outbound_bytes: Cell<usize>,
    /// When the 101 was queued.
    pub opened_at: Instant,
    /// When the last bytes arrived from the peer (any frame counts as a sign of life).
    pub last_read_at: Cell<Instant>,
    /// When the last data message was accepted (for `idle_timeout`).
    pub last_message_at: Cell<Instant>,
    /// When the server sent a ping that has not been answered by any frame yet.
    pub ping_sent_at: Cell<Option<Instant>>,
    /// The token's `exp` (Unix seconds); `None` for anonymous connections.
    pub token_exp: Option<u64>,
    /// Code of the close frame the server sent; `None` until one is queued.
    close_code: Cell<Option<u16>>,
    /// The connection was closed for exceeding `max_outbound_bytes`.
    slow_consumer: Cell<bool>,
    /// Sequence number of the last message forwarded to an application server.
    last_seq: Cell<u64>,
    /// The reader is waiting for room in the queue to the application servers, so the peer's
    /// frames (pongs included) stay unread and the pong timeout must not apply.
    pub waiting_for_room: Cell<bool>,
}

impl ConnHandle {
    /// Creates the handle of an admitted connection.
    pub(crate) fn new(
        id: u64,
        user: Rc<str>,
        stream: Rc<TcpStream>,
        token_exp: Option<u64>,
        worker: &Rc<Worker>,
    ) -> Rc<Self> {
        let now = Instant::now();
        Rc::new_cyclic(|this| Self {
            opened_at: now,
            last_read_at: Cell::new(now),
            last_message_at: Cell::new(now),
            ping_sent_at: Cell::new(None),
            token_exp,
            close_code: Cell::new(None),
            slow_consumer: Cell::new(false),
            last_seq: Cell::new(0),
            waiting_for_room: Cell::new(false),
            id,
            user,
            stream,
            outbox: RefCell::new(Outbox::default()),
            writer_running: Cell::new(false),
            listed_for_send: Cell::new(false),
            writer_done: LocalNotify::default(),
            quiet: Cell::new(true),
            this: this.clone(),
            worker: Rc::downgrade(worker),
            reader_wake: LocalNotify::default(),
            close_after_flush: Cell::new(false),
            dead: Cell::new(false),
            max_outbound_bytes: Cell::new(usize::MAX),
        })
    }

    /// Sends what is queued: at once when no writer task runs, and through a new writer task
    /// for what the socket does not take. While a writer task runs it sends new frames too.
    /// While the worker holds sends, the connection is listed and sends when they are released.
    pub(crate) fn wake_writer(&self) {
        // A listed connection is woken again when the worker's hold ends.
        if self.writer_running.get() || self.dead.get() || self.listed_for_send.get() {
            return;
        }
        let Some(worker) = self.worker.upgrade() else {
            return;
        };
        if worker.sends_held() {
            if !self.listed_for_send.replace(true)
                && let Some(this) = self.this.upgrade()
            {
                worker.list_for_send(this);
            }
            return;
        }
        let Some(rest) = self.send_now(&worker) else {
            return;
        };
        let Some(this) = self.this.upgrade() else {
            return;
        };
        self.writer_running.set(true);
        tokio_uring::spawn(write_loop(this, worker, rest));
    }

    /// Offers the queued bytes to the socket in one non-blocking `sendmsg`. Returns `None`
    /// when nothing is left to send: the outbox is empty (and, after a close frame, the write
    /// side is shut down) or the socket failed. Otherwise returns what the socket did not
    /// take, moved out of the outbox for a writer task. A frame may have partly left by then,
    /// and a slow-consumer close clears the outbox, so its rest must not stay there.
    fn send_now(&self, worker: &Worker) -> Option<Vec<Bytes>> {
        let mut outbox = self.outbox.borrow_mut();
        let closing = self.close_after_flush.get();
        if !outbox.is_empty() {
            let mut slices = [IoSlice::new(&[]); SEND_NOW_IOVECS];
            let filled = outbox.io_slices(&mut slices);
            // After a close frame nothing follows, so MSG_MORE lets the FIN of the shutdown
            // below leave in the same TCP segment as the frame.
            let result = super::uring::send_now(&self.stream, &slices[..filled], closing);
            let metrics = worker.metrics();
            metrics.frames_out.add(outbox.take_frame_count());
            match result {
                Ok(sent) => {
                    metrics.bytes_out.add(sent as u64);
                    outbox.consume(sent);
                }
                Err(err)
                    if matches!(
                        err.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(err) => {
                    drop(outbox);
                    self.fail_write(&err);
                    return None;
                }
            }
        }
        if !outbox.is_empty() {
            let mut rest = Vec::new();
            outbox.take_into(&mut rest);
            // The rest waits for the peer, so it must not keep whole read buffers alive
            // through payload slices (see `Outbox::push_frame`). Frames queued from now on
            // are copied as they come, until the writer finds the socket drained.
            for segment in &mut rest {
                *segment = Bytes::copy_from_slice(segment);
            }
            outbox.set_backed_up(true);
            let bytes: usize = rest.iter().map(Bytes::len).sum();
            worker.metrics().bytes_out.add(bytes as u64);
            return Some(rest);
        }
        self.finish_sending(&mut outbox);
        None
    }

    /// Ends a round of sending once everything queued has left: after a close frame the write
    /// side is shut down, and a quiet connection frees the outbox's buffers.
    fn finish_sending(&self, outbox: &mut Outbox) {
        if self.close_after_flush.get() {
            // RFC 6455 §7.1.1: the server closes the TCP connection first.
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        } else if self.quiet.get() {
            outbox.release_buffers();
        }
    }

    /// Marks the connection as off the worker's list of connections to send.
    pub(crate) fn unlist_for_send(&self) {
        self.listed_for_send.set(false);
    }

    /// Ends sending after a write failed: nothing more is written and the reader stops.
    fn fail_write(&self, err: &std::io::Error) {
        tracing::debug!(conn = self.id, error = %err, "write failed");
        self.dead.set(true);
        self.outbox.borrow_mut().clear();
        self.reader_wake.notify_one();
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    /// Waits until no writer task runs.
    async fn writer_finished(&self) {
        while self.writer_running.get() {
            self.writer_done.notified().await;
        }
    }

    /// Allocates the next message sequence number of this connection (from 1).
    pub(crate) fn next_seq(&self) -> u64 {
        let seq = self.last_seq.get() + 1;
        self.last_seq.set(seq);
        seq
    }

    /// True once the connection is closing or gone.
    pub(crate) fn is_closing(&self) -> bool {
        self.close_after_flush.get() || self.dead.get()
    }

    /// Closes the connection from outside its reader (timeouts, drain): queues a close frame
    /// after what is already queued and makes the reader stop.
    pub(crate) fn close(&self, code: CloseCode, reason: &str) {
        if self.is_closing() {
            return;
        }
        self.outbox
            .borrow_mut()
            .push_close(code, crate::conn::truncate_reason(reason));
        self.close_code.set(Some(code.0));
        self.close_after_flush.set(true);
        self.reader_wake.notify_one();
        self.wake_writer();
        tracing::debug!(conn = self.id, code = code.0, reason, "closing connection");
    }

    /// Sends a ping with an empty payload.
    pub(crate) fn ping(&self, now: Instant) {
        if self.is_closing() {
            return;
        }
        self.outbox
            .borrow_mut()
            .push_frame(OpCode::Ping, &Bytes::new());
        self.ping_sent_at.set(Some(now));
        self.wake_writer();
    }

    /// Queues raw bytes (the 101 response).
    pub(crate) fn push_raw(&self, bytes: &[u8]) {
        self.outbox.borrow_mut().push_raw(bytes);
        self.wake_writer();
    }

    /// Queues an encoded frame; false when the connection is closing and takes no more.
    pub(crate) fn push_encoded(&self, frame: &Bytes) -> bool {
        if self.close_after_flush.get() || self.dead.get() {
            return false;
        }
        self.outbox.borrow_mut().push_encoded(frame);
        self.after_push();
        true
    }

    /// Queues one frame with the payload of `message`, copied when it is small and shared
    /// with the read buffer when it is not.
    pub(crate) fn push_echo(&self, opcode: OpCode, message: Accepted<'_>) {
        if self.close_after_flush.get() || self.dead.get() {
            return;
        }
        {
            let mut outbox = self.outbox.borrow_mut();
            if outbox.copies(message.payload().len()) {
                outbox.push_frame_copy(opcode, message.payload());
            } else {
                outbox.push_frame(opcode, &message.into_payload());
            }
        }
        self.after_push();
    }

    /// Enforces the outbound bound, then wakes the writer.
    fn after_push(&self) {
        let mut outbox = self.outbox.borrow_mut();
        if outbox.queued_bytes() > self.max_outbound_bytes.get() {
            // A peer that does not read would otherwise make the server buffer without
            // limit. What is queued is dropped; the close frame goes out if the peer reads.
            outbox.clear();
            outbox.push_close(CloseCode::POLICY_VIOLATION, "slow consumer");
            self.close_code.set(Some(CloseCode::POLICY_VIOLATION.0));
            self.slow_consumer.set(true);
            self.close_after_flush.set(true);
            self.reader_wake.notify_one();
            tracing::debug!(conn = self.id, "closing slow consumer");
        }
        drop(outbox);
        self.wake_writer();
    }
}

/// Runs the connection until it ends, then removes it from the worker. `leftover` contains
/// the frame bytes that arrived with the upgrade request.
pub(crate) async fn run(worker: Rc<Worker>, handle: Rc<ConnHandle>, leftover: BytesMut) {
    read_loop(&worker, &handle, leftover).await;

    let metrics = worker.metrics();
    // 1006: the peer went away without a close handshake (RFC 6455 §7.1.5).
    metrics.close(handle.close_code.get().unwrap_or(1006));
    if handle.slow_consumer.get() {
        metrics.slow_consumer_closes.inc();
    }
    worker.unregister(&handle);
    metrics.connections_open.dec();
    worker.shared.release_connection();
    tracing::debug!("connection closed");
}

/// Reads and handles frames until the connection ends. `buf` starts with the frame bytes that
/// arrived with the upgrade request. The loop reads into it directly, because an async fn keeps
/// every parameter for its whole life, and a second buffer would add 32 bytes to each task.
async fn read_loop(worker: &Rc<Worker>, handle: &Rc<ConnHandle>, mut buf: BytesMut) {
    let shared = &worker.shared;
    handle
        .max_outbound_bytes
        .set(shared.config.max_outbound_bytes);

    let read_size = shared.config.read_buffer_bytes;
    let mut session = Session::new(&shared.session, Instant::now());
    let mut closing = false;
    let mut closed_by_peer = false;
    let mut sizing = ReadSizing::new();
    // Time at which handling of the bytes in `buf` starts. It is the completion time of
    // their read, which saves one clock read per read.
    let mut now = Instant::now();

    loop {
        // Back-pressure: while the worker's queue to the application servers is full, this
        // connection's bytes stay unread, so TCP flow control slows the client.
        if !buf.is_empty() && worker.upstream_full() {
            handle.waiting_for_room.set(true);
            tokio::select! {
                biased;
                _ = handle.reader_wake.notified() => {}
                _ = Box::pin(worker.wait_for_upstream_room()) => {}
            }
            handle.waiting_for_room.set(false);
            // The wait was the server's doing: the peer gets a full ping interval again.
            now = Instant::now();
            handle.last_read_at.set(now);
            handle.ping_sent_at.set(None);
            if handle.close_after_flush.get() {
                break;
            }
        }
        let mut dispatched_count = 0u64;
        // Frames queued while handling this read, for this connection and any other, leave
        // together: one sendmsg per connection. Nothing awaits until the hold ends below.
        let hold = worker.hold_sends();
        while !buf.is_empty() && !closing {
            let (flow, accepted) = {
                let mut out = handle.outbox.borrow_mut();
                let (buf, session) = (&mut buf, &mut session);
                worker.with_user_bucket(&handle.user, move |bucket| {
                    session.on_read(buf, now, &mut out, bucket)
                })
            };
            let dispatched = accepted.is_some();
            if let Some(message) = accepted {
                handle.last_message_at.set(now);
                dispatched_count += 1;
                // Dropping the message removes it from `buf`.
                worker.dispatch(handle, message);
            }
            if let Flow::Close { code, by_peer } = flow {
                handle.close_code.set(Some(code.0));
                handle.close_after_flush.set(true);
                closing = true;
                closed_by_peer = by_peer;
            }
            // Messages after the one that filled the queue wait in `buf` until there is room,
            // so the queue never contains more than `max_pending_messages`.
            if !dispatched || worker.upstream_full() {
                break;
            }
        }
        if dispatched_count > 0 {
            // `now` was read when this read's processing started.
            let each = now.elapsed() / u32::try_from(dispatched_count).unwrap_or(u32::MAX);
            worker
                .metrics()
                .message_processing
                .observe_each(each, dispatched_count);
        }
        record_tally(worker, session.take_tally());
        handle.after_push();
        drop(hold);
        if closing || handle.close_after_flush.get() {
            break;
        }
        if !buf.is_empty() && worker.upstream_full() {
            // Wait for room (at the top of the loop) before handling the rest or reading more.
            continue;
        }

        sizing.prepare(&mut buf, session.bytes_wanted(), read_size);
        let len = buf.len();
        let capacity = buf.capacity();
        let read = handle.stream.read(buf.slice(len..capacity));
        let outcome = tokio::select! {
            biased;
            _ = handle.reader_wake.notified() => None,
            done = read => Some(done),
        };
        let Some((result, slice)) = outcome else {
            // The read stays in flight and keeps its buffer until the socket is shut down.
            buf = BytesMut::new();
            break;
        };
        buf = slice.into_inner();
        let completed = Instant::now();
        if let Ok(n) = result {
            sizing.record(n, capacity - len, completed.saturating_duration_since(now));
            handle.quiet.set(sizing.quiet());
        }
        now = completed;
        if let Ok(n) = result
            && n > 0
        {
            let mut n = n;
            // The read filled its buffer, so more is probably waiting. Taking it now keeps
            // the peer's batch whole (see `ReadSizing::prepare`).
            if n == capacity - len && reserve_waiting(&mut buf, read_size) {
                n += super::uring::recv_waiting(&handle.stream, &mut buf);
            }
            handle.last_read_at.set(completed);
            handle.ping_sent_at.set(None);
            worker.metrics().bytes_in.add(n as u64);
        }
        match result {
            Ok(0) => {
                // Peer closed TCP without a close frame (status 1006 on its side).
                end_after_peer_left(handle, &shared.config).await;
                return;
            }
            Ok(_) => {}
            Err(err) => {
                tracing::debug!(conn = handle.id, error = %err, "read failed");
                end_after_peer_left(handle, &shared.config).await;
                return;
            }
        }
    }

    // Boxed: a closing connection is rare, and the read loop's state stays small without it.
    if closed_by_peer {
        Box::pin(send_close_reply(handle, &shared.config, buf)).await;
    } else {
        Box::pin(linger(handle, &shared.config, buf)).await;
    }
    handle.dead.set(true);
    handle.writer_finished().await;
}

/// Ends a connection whose peer started the close handshake, once the reply has left. After
/// both close frames the server must close TCP at once (RFC 6455 §5.5.1). When every byte has
/// been transmitted, the socket closes without waiting for the peer's FIN. A peer that does
/// not read gets `close_timeout`, then the socket is shut down.
async fn send_close_reply(handle: &ConnHandle, config: &crate::config::Config, mut buf: BytesMut) {
    let flushed = tokio::time::timeout(config.close_timeout, handle.writer_finished()).await;
    if flushed.is_err() {
        let _ = handle.stream.shutdown(std::net::Shutdown::Both);
        return;
    }
    // Linux sends a reset when bytes arrive after the close, and the reset discards what has
    // not been transmitted yet. A peer that is behind in reading (replies still wait for its
    // receive window) keeps the connection until its FIN, so it gets every reply.
    if super::uring::unsent_bytes(&handle.stream).map_or(true, |unsent| unsent > 0) {
        linger(handle, config, buf).await;
        return;
    }
    // Closing a socket with unread bytes also sends a reset, after the bytes already sent.
    // Frames the peer sent after its close are discarded first.
    for _ in 0..CLOSE_DRAIN_READS {
        buf.clear();
        if super::uring::recv_waiting(&handle.stream, &mut buf) == 0 {
            break;
        }
    }
}

/// Ends a connection whose peer sent FIN or whose socket failed. A writer blocked on a peer
/// that no longer reads gets `close_timeout` to finish. After that the socket is shut down,
/// which fails the write, so the connection outlives its peer by at most `close_timeout`.
async fn end_after_peer_left(handle: &ConnHandle, config: &crate::config::Config) {
    handle.dead.set(true);
    let finished = tokio::time::timeout(config.close_timeout, handle.writer_finished()).await;
    if finished.is_err() {
        let _ = handle.stream.shutdown(std::net::Shutdown::Both);
        handle.writer_finished().await;
    }
}

/// Adds a session's counts to the worker's metrics.
fn record_tally(worker: &Worker, tally: Tally) {
    if tally == Tally::default() {
        return;
    }
    let metrics = worker.metrics();
    metrics.frames_in.add(tally.frames_in);
    metrics.rate_limit_hits.add(tally.rate_limited);
    for (verdict, count) in tally.verdicts() {
        for _ in 0..count {
            metrics.message(verdict);
        }
    }
}

/// After a close frame that this side started: read and discard until the peer's FIN or the
/// close timeout. Then the socket is shut down when a read is still in flight (shutting down
/// completes it) or the writer still runs (a peer that does not read would block it forever).
async fn linger(handle: &ConnHandle, config: &crate::config::Config, mut buf: BytesMut) {
    let deadline = tokio::time::Instant::now() + config.close_timeout;
    buf.clear();
    if buf.capacity() < 4096 {
        buf.reserve(4096);
    }
    let mut read_in_flight = false;
    loop {
        let capacity = buf.capacity();
        let read = handle.stream.read(buf.slice(0..capacity));
        let outcome = tokio::time::timeout_at(deadline, read).await;
        let Ok((result, slice)) = outcome else {
            read_in_flight = true;
            break;
        };
        buf = slice.into_inner();
        buf.clear();
        match result {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    if read_in_flight || handle.writer_running.get() {
        let _ = handle.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// Runs the writer task: sends `segments`, then whatever is queued, one `writev` per batch,
/// until the connection ends or the outbox is empty.
async fn write_loop(handle: Rc<ConnHandle>, worker: Rc<Worker>, segments: Vec<Bytes>) {
    write_until_idle(&handle, &worker, segments).await;
    handle.writer_running.set(false);
    handle.writer_done.notify_one();
}

async fn write_until_idle(handle: &ConnHandle, worker: &Worker, mut segments: Vec<Bytes>) {
    loop {
        if handle.dead.get() {
            return;
        }
        if segments.is_empty() {
            let frames = {
                let mut outbox = handle.outbox.borrow_mut();
                if outbox.is_empty() {
                    handle.finish_sending(&mut outbox);
                    // The next queued bytes are sent at once again (see `wake_writer`).
                    return;
                }
                outbox.take_into(&mut segments);
                outbox.take_frame_count()
            };
            let bytes: usize = segments.iter().map(Bytes::len).sum();
            let metrics = worker.metrics();
            metrics.frames_out.add(frames);
            metrics.bytes_out.add(bytes as u64);
        }
        // While this write is in flight the peer may not be reading: coalesce pongs and copy
        // payloads.
        handle.outbox.borrow_mut().set_backed_up(true);
        let written = write_all(&handle.stream, &mut segments).await;
        handle.outbox.borrow_mut().set_backed_up(false);
        if let Err(err) = written {
            handle.fail_write(&err);
            return;
        }
    }
}

/// Writes every segment, in order, resuming after partial writes.
async fn write_all(stream: &TcpStream, segments: &mut Vec<Bytes>) -> std::io::Result<()> {
    while !segments.is_empty() {
        let count = segments.len().min(IOV_MAX);
        let batch: Vec<Bytes> = segments.drain(..count).collect();
        let (result, mut batch) = if batch.len() == 1 {
            let mut single = batch;
            let only = single.pop().unwrap_or_default();
            let (result, only) = stream.write(only).submit().await;
            (result, vec![only])
        } else {
            stream.writev(batch).await
        };
        let mut written = result?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        // Put back what the kernel did not take, in order, ahead of the rest.
        let mut rest = Vec::new();
        for mut segment in batch.drain(..) {
            if written >= segment.len() {
                written -= segment.len();
                continue;
            }
            segment.advance(written);
            written = 0;
            rest.push(segment);
        }
        if !rest.is_empty() {
            rest.append(segments);
            *segments = rest;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_sizing_new_connection_reads_small() {
        let sizing = ReadSizing::new();
        assert!(sizing.quiet());
        let mut buf = BytesMut::with_capacity(1024);
        sizing.prepare(&mut buf, 0, 16 * 1024);
        assert_eq!(buf.capacity(), QUIET_READ_BYTES);
    }

    #[test]
    fn read_sizing_full_read_ends_quiet() {
        let mut sizing = ReadSizing::new();
        sizing.record(QUIET_READ_BYTES, QUIET_READ_BYTES, Duration::ZERO);
        assert!(!sizing.quiet());
        let mut buf = BytesMut::with_capacity(QUIET_READ_BYTES);
        sizing.prepare(&mut buf, 0, 16 * 1024);
        assert!(buf.capacity() >= 16 * 1024);
    }

    #[test]
    fn read_sizing_long_read_ends_quiet_state() {
        let mut sizing = ReadSizing::new();
        sizing.record(QUIET_READ_BYTES / 2 + 1, 16 * 1024, Duration::ZERO);
        assert!(!sizing.quiet());
    }

    #[test]
    fn read_sizing_short_reads_make_connection_quiet_again() {
        let mut sizing = busy_sizing();
        for read in 1..QUIET_AFTER_READS {
            sizing.record(6, 16 * 1024, Duration::ZERO);
            assert!(!sizing.quiet(), "after {read} short reads");
        }
        sizing.record(6, 16 * 1024, Duration::ZERO);
        assert!(sizing.quiet());
    }

    #[test]
    fn read_sizing_partial_frame_gets_room() {
        let sizing = ReadSizing::new();
        let mut buf = BytesMut::with_capacity(QUIET_READ_BYTES);
        buf.extend_from_slice(&[0x81, 0x7E, 0x10, 0x00]);
        sizing.prepare(&mut buf, 4096, 16 * 1024);
        assert!(buf.capacity() - buf.len() >= 16 * 1024);
        assert_eq!(&buf[..], &[0x81, 0x7E, 0x10, 0x00]);
    }

    /// Sizing with no short or sparse reads counted, the state of a busy connection.
    fn busy_sizing() -> ReadSizing {
        ReadSizing {
            short_reads: 0,
            sparse_reads: 0,
        }
    }

    #[test]
    fn read_sizing_busy_keeps_half_free() {
        let busy = busy_sizing();
        // 15,680 of 16,384 bytes consumed: a read into the 704 left would split a peer's
        // 1,120-byte batch.
        let mut buf = BytesMut::with_capacity(16 * 1024);
        buf.resize(15_680, 0);
        let _ = buf.split();
        assert_eq!(buf.capacity(), 704);
        busy.prepare(&mut buf, 0, 16 * 1024);
        assert!(buf.capacity() >= 8 * 1024, "capacity {}", buf.capacity());

        // Bytes left unhandled and half a buffer or more free: no new allocation.
        let mut buf = BytesMut::with_capacity(16 * 1024);
        buf.resize(4096, 0);
        let _ = buf.split_to(4000);
        busy.prepare(&mut buf, 0, 16 * 1024);
        assert_eq!((buf.len(), buf.capacity()), (96, 12 * 1024 + 96));
    }

    #[test]
    fn read_sizing_rewinds_empty_buffer() {
        let busy = busy_sizing();
        let mut buf = BytesMut::with_capacity(16 * 1024);
        let start = buf.as_ptr();
        buf.resize(1120, 0);
        buf.advance(1120);
        busy.prepare(&mut buf, 0, 16 * 1024);
        assert_eq!(buf.as_ptr(), start);
        assert_eq!(buf.capacity(), 16 * 1024);
    }

    #[test]
    fn read_sizing_zero_byte_read_counts_as_short() {
        let mut sizing = busy_sizing();
        sizing.record(0, QUIET_READ_BYTES, Duration::ZERO);
        assert_eq!(sizing.short_reads, 1);
    }

    #[test]
    fn read_sizing_wait_then_long_read_stays_quiet() {
        let mut sizing = busy_sizing();
        // A 10 KB message after four seconds of silence: a full read that waited.
        sizing.record(10_000, 16 * 1024, Duration::from_secs(4));
        assert!(sizing.quiet());
        let mut buf = BytesMut::with_capacity(16 * 1024);
        sizing.prepare(&mut buf, 0, 16 * 1024);
        assert_eq!(buf.capacity(), QUIET_READ_BYTES);
    }

    /// Appends to `buf` the bytes of `stream` that its spare capacity takes, up to `queued`,
    /// the way a read or recv takes what waits on a socket, and returns how many it took.
    fn fill(buf: &mut BytesMut, stream: &mut impl Iterator<Item = u8>, queued: usize) -> usize {
        let count = (buf.capacity() - buf.len()).min(queued);
        buf.extend(stream.take(count));
        count
    }

    #[test]
    fn flood_keeps_read_buffer_bounded() {
        use crate::frame::reader::{Event, MessageReader, ReaderConfig};

        // A peer that sends 10,000-byte text messages faster than the worker handles them:
        // its socket's receive queue (1 MiB here) is full again at every read.
        let read_size = 16 * 1024;
        let receive_queue = 1 << 20;
        let mut frame = Vec::new();
        crate::load::wire::encode_frame(&mut frame, OpCode::Text, &[b'x'; 10_000], [1, 2, 3, 4]);
        let mut stream = frame.iter().copied().cycle();
        let mut reader = MessageReader::new(ReaderConfig {
            max_message_bytes: 10_240,
            allow_binary: false,
        });
        let busy = busy_sizing();
        let mut buf = BytesMut::new();
        let mut messages = 0;
        let mut largest = 0;
        for _ in 0..32 {
            // The same steps as `read_loop`: prepare, read, recv what waits, handle frames.
            busy.prepare(&mut buf, reader.bytes_wanted(), read_size);
            largest = largest.max(buf.capacity());
            let read = fill(&mut buf, &mut stream, receive_queue);
            if reserve_waiting(&mut buf, read_size) {
                largest = largest.max(buf.capacity());
                fill(&mut buf, &mut stream, receive_queue - read);
            }
            while let Some(event) = reader.next_event(&mut buf).expect("valid frames") {
                assert!(matches!(event, Event::Message { .. }));
                messages += 1;
            }
        }
        assert!(messages >= 32, "only {messages} messages handled");
        assert!(
            largest <= MAX_READS_BUFFERED * read_size,
            "read buffer grew to {largest} bytes"
        );
    }

    #[test]
    fn reserve_waiting_stops_at_bound() {
        let read_size = 1024;
        let mut buf = BytesMut::with_capacity(read_size);
        buf.resize(read_size, 0);
        assert!(reserve_waiting(&mut buf, read_size));
        assert!(buf.capacity() - buf.len() >= read_size);
        assert_eq!(buf.len(), read_size);

        // Filling up to the bound is allowed, one byte more is not.
        buf.resize(MAX_READS_BUFFERED * read_size - read_size, 7);
        assert!(reserve_waiting(&mut buf, read_size));
        buf.resize(buf.len() + 1, 7);
        let before = buf.capacity();
        assert!(!reserve_waiting(&mut buf, read_size));
        assert_eq!(buf.capacity(), before);
    }

    #[test]
    fn read_sizing_busy_reads_end_sparse_burst() {
        let mut sizing = busy_sizing();
        sizing.record(1_000, 16 * 1024, SPARSE_WAIT);
        for _ in 0..SPARSE_BURST_READS {
            assert!(sizing.quiet());
            sizing.record(1_000, 16 * 1024, Duration::from_millis(1));
        }
        assert!(!sizing.quiet());
    }
}
