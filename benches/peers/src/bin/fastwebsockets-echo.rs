//! Echo server on fastwebsockets 0.10 (hyper 1 for the upgrade): every text or binary
//! message goes back to its sender. The library replies to pings and closes.

use bytes::Bytes;
use fastwebsockets::{FragmentCollector, OpCode, WebSocketError};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

async fn echo(upgrade: fastwebsockets::upgrade::UpgradeFut) -> Result<(), WebSocketError> {
    let mut ws = FragmentCollector::new(upgrade.await?);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => return Ok(()),
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            OpCode::Continuation | OpCode::Ping | OpCode::Pong => {}
        }
    }
}

async fn handle(mut request: Request<Incoming>) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    let (response, upgrade) = fastwebsockets::upgrade::upgrade(&mut request)?;
    tokio::spawn(async move {
        let _ = echo(upgrade).await;
    });
    Ok(response)
}

fn main() {
    let addr = framegate_peers::listen_addr();
    framegate_peers::runtime().block_on(async move {
        let listener = match TcpListener::bind(addr).await {
            Ok(listener) => listener,
            Err(err) => {
                eprintln!("cannot bind {addr}: {err}");
                std::process::exit(1);
            }
        };
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let connection = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(handle))
                    .with_upgrades();
                let _ = connection.await;
            });
        }
    });
}
