//! framegate: a thread-per-core WebSocket tier that authenticates each client once and checks
//! every frame and message before it reaches the application.
//!
//! # Architecture
//!
//! ```text
//!   client ──TCP──▶ worker (one per core, pinned, own io_uring ring and SO_REUSEPORT listener)
//!                     │ http        incremental, zero-copy request-head parser (RFC 9112)
//!                     │ handshake   RFC 6455 §4.2 checks, token extraction, 101 / error responses
//!                     │ auth        JWT verification (jsonwebtoken), allow-listed algorithms
//!                     │ shard       ring: user id → owning worker; socket handed off if needed
//!                     ▼
//!                   owning worker
//!                     │ frame       RFC 6455 §5 decoder/encoder, in-place unmasking
//!                     │ utf8        incremental UTF-8 validation (simdutf8)
//!                     │ message     JSON structure and required fields, one pass
//!                     │ ratelimit   token buckets (per connection, per user, per IP)
//!                     │ conn        per-connection state machine: frames in, replies out
//!                     ▼
//!                   backend: echo, or relay to the users' owning workers
//! ```
//!
//! The modules `http`, `handshake`, `auth`, `frame`, `utf8`, `message`, `ratelimit`,
//! `shard`, `conn` and `config` are pure: no sockets, threads or clock reads (callers pass
//! `now` and buffers). Only `runtime` does I/O.
//!
//! # Unsafe code
//!
//! Only `frame::mask` (word-at-a-time unmasking) and `runtime::uring` (borrowing a raw socket
//! descriptor for a hand-off) contain `unsafe`; every other module forbids it.

#![deny(
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks,
    clippy::missing_safety_doc
)]

pub mod auth;
pub mod config;
pub mod conn;
pub mod demo;
pub mod frame;
pub mod handshake;
pub mod http;
pub mod load;
pub mod message;
pub mod metrics;
pub mod proxy;
pub mod ratelimit;
pub mod runtime;
pub mod shard;
pub mod upstream;
pub mod utf8;
