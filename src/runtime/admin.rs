//! The admin listener: `/metrics`, `/healthz` and `/readyz` on a separate address (default
//! 127.0.0.1:9090), away from the public port.
//!
//! Admin traffic is a few requests per scrape interval, so one plain thread with blocking
//! sockets serves it, one request per connection, and the workers never see it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::Shared;

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
                                respond(&mut stream, 503, "text/plain", "admin listener busy\n");
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
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        if head.len() > MAX_ADMIN_REQUEST {
            return respond(&mut stream, 431, "text/plain", "request head too large\n");
        }
        // The deadline covers the whole request, so a byte-at-a-time client cannot hold on.
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    if method != b"GET" {
        return respond(&mut stream, 405, "text/plain", "only GET is supported\n");
    }
    match path {
        b"/healthz" => respond(&mut stream, 200, "text/plain", "ok\n"),
        b"/readyz" if shared.is_ready() => respond(&mut stream, 200, "text/plain", "ready\n"),
        b"/readyz" => respond(&mut stream, 503, "text/plain", "not ready\n"),
        b"/metrics" => {
            let body = super::render_metrics(shared);
            respond(
                &mut stream,
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                &body,
            )
        }
        _ => respond(
            &mut stream,
            404,
            "text/plain",
            "not found; try /metrics, /healthz or /readyz\n",
        ),
    }
}

fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes())?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    Ok(())
}
