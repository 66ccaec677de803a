//! Shared start-up for the peer echo servers: the listen address and the tokio runtime.
//!
//! Each server takes the address as its first argument (default `127.0.0.1:9001`) and runs
//! one tokio worker thread per core the process may use, so `taskset` decides how many.

use std::net::SocketAddr;

/// Reads the listen address from the first argument.
pub fn listen_addr() -> SocketAddr {
    let text = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".to_owned());
    match text.parse() {
        Ok(addr) => addr,
        Err(err) => {
            eprintln!("invalid listen address {text:?}: {err}; expected host:port");
            std::process::exit(2);
        }
    }
}

/// Builds a multi-thread runtime with one worker per available core.
pub fn runtime() -> tokio::runtime::Runtime {
    let threads = std::thread::available_parallelism().map_or(1, |count| count.get());
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cannot start the tokio runtime: {err}");
            std::process::exit(1);
        }
    }
}
