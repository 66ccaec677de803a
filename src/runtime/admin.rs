//! The admin listener: `/metrics`, `/healthz` and `/readyz` on a separate address (default
//! 127.0.0.1:9090), away from the public port.
//!
//! Admin traffic is a few requests per scrape interval, so one plain thread with blocking
//! sockets serves it, one request per connection, and the workers never see it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use super::Shared;

/// Largest admin request head read; longer requests get 431.
const MAX_ADMIN_REQUEST: usize = 8192;
const ADMIN_IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Binds the admin listener and serves it on a thread of its own. Returns the bound address.
pub(crate) fn start(addr: SocketAddr, shared: Arc<Shared>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("framegate-admin".to_owned())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        if let Err(err) = serve(stream, &shared) {
                            tracing::debug!(error = %err, "admin request failed");
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
    stream.set_read_timeout(Some(ADMIN_IO_TIMEOUT))?;
    stream.set_write_timeout(Some(ADMIN_IO_TIMEOUT))?;
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        if head.len() > MAX_ADMIN_REQUEST {
            return respond(&mut stream, 431, "text/plain", "request head too large\n");
        }
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
