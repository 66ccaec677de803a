//! Application servers ("upstreams") behind the `http` backend.
//!
//! Valid messages are wrapped in JSON envelopes, batched per worker and sent as one HTTP/1.1
//! POST with a newline-delimited JSON body. A 2xx response acknowledges the whole batch and
//! its body may carry deliveries back to users or connections. This module holds the pure
//! parts (envelopes, request and response encoding, upstream health) and the minimal
//! HTTP/1.1 client over `tokio::net::TcpStream` in [`client`]. Queueing, retries and
//! delivery of the results are done by the worker in `runtime`.

#![forbid(unsafe_code)]

pub mod client;
mod envelope;
mod health;
mod response;

pub use envelope::{Envelope, Request, UpstreamUrl, UrlError, encode_envelope, encode_request};
pub use health::Pool;
pub use response::{Delivery, Response, ResponseError, ResponseReader, Target, parse_deliveries};
