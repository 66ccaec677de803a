//! Echo server on tokio-tungstenite 0.28: every text or binary message goes back to its
//! sender. The library replies to pings and closes on the next write or flush.

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

async fn echo(stream: TcpStream) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let mut ws = tokio_tungstenite::accept_async(stream).await?;
    while let Some(message) = ws.next().await {
        match message? {
            message @ (Message::Text(_) | Message::Binary(_)) => ws.send(message).await?,
            // The library queued the close reply; the next poll sends it and then ends the
            // stream.
            Message::Close(_) => {}
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => ws.flush().await?,
        }
    }
    Ok(())
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
                let _ = echo(stream).await;
            });
        }
    });
}
