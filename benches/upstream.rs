//! Forwarded messages per second through one application server. framegate runs
//! in-process with `backend = "http"` on a loopback port. A small hyper server on loopback
//! acknowledges every batch with 204 and counts the NDJSON lines it received. WebSocket
//! clients send a fixed number of messages, and one measurement is the time from the first
//! send until the server has counted every message of the round.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use framegate::auth::{AuthConfig, KeyMaterial, Verifier};
use framegate::config::Config;
use futures_util::SinkExt;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SECRET: &[u8] = b"upstream-bench-secret-of-at-least-32-bytes";
/// Framegate worker threads.
const WORKERS: usize = 1;
/// WebSocket client connections.
const CLIENTS: usize = 8;
/// Messages each client sends per round.
const PER_CLIENT: u64 = 2_000;
/// A typical chat message (about 90 bytes).
const MESSAGE: &str =
    r#"{"id":"m-000001","conversation_id":"c-42","content":"hello from the upstream bench"}"#;

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Starts the application server on `runtime`; returns its address. `received` counts the
/// envelopes (NDJSON lines) of every request.
fn start_app(runtime: &tokio::runtime::Runtime, received: Arc<AtomicU64>) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind application server");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("application address");
    runtime.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("app listener");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let received = Arc::clone(&received);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    acknowledge(request, Arc::clone(&received))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

async fn acknowledge(
    request: Request<Incoming>,
    received: Arc<AtomicU64>,
) -> Result<Response<Empty<Bytes>>, Infallible> {
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let lines = body.iter().filter(|&&byte| byte == b'\n').count();
    received.fetch_add(lines as u64, Ordering::Relaxed);
    let response = Response::builder()
        .status(204)
        .body(Empty::new())
        .expect("response");
    Ok(response)
}

fn framegate_config(app: SocketAddr) -> Config {
    let text = format!(
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"\"\nworkers = {WORKERS}\nbackend = \"http\"\n\
         rate_per_sec = 0\n[upstream]\nurls = [\"http://{app}/ingest\"]\n"
    );
    Config::from_toml(&text, std::path::Path::new("bench.toml")).expect("bench config")
}

fn verifier() -> Verifier {
    let auth = AuthConfig {
        algorithms: vec![jsonwebtoken::Algorithm::HS256],
        key: KeyMaterial::Secret(SECRET.to_vec()),
        issuer: None,
        audience: None,
        leeway_secs: 0,
    };
    Verifier::new(&auth).expect("verifier")
}

fn token(sub: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |now| now.as_secs())
        + 3600;
    let claims = serde_json::json!({ "sub": sub, "exp": exp });
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET).expect("hmac key");
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).expect("token")
}

async fn connect(addr: SocketAddr, user: &str) -> Client {
    let mut request = format!("ws://{addr}/ws")
        .into_client_request()
        .expect("request");
    let bearer = format!("Bearer {}", token(user)).parse().expect("header");
    request.headers_mut().insert("Authorization", bearer);
    let (client, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("upgrade");
    client
}

/// Sends one round from every client and returns the time until the application server has
/// counted `target` envelopes in total.
async fn round(clients: &mut [Client], received: &AtomicU64, target: u64) -> Duration {
    let started = Instant::now();
    for client in clients.iter_mut() {
        for _ in 0..PER_CLIENT {
            client.feed(Message::text(MESSAGE)).await.expect("send");
        }
        client.flush().await.expect("flush");
    }
    let deadline = started + Duration::from_secs(60);
    while received.load(Ordering::Relaxed) < target {
        assert!(
            Instant::now() < deadline,
            "every message reaches the server"
        );
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    started.elapsed()
}

fn bench_upstream(c: &mut Criterion) {
    let app_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("application runtime");
    let received = Arc::new(AtomicU64::new(0));
    let app = start_app(&app_runtime, Arc::clone(&received));
    let server = framegate::runtime::start(framegate_config(app), verifier()).expect("framegate");
    let addr = server.local_addr();

    let client_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let mut clients = client_runtime.block_on(async {
        let mut clients = Vec::with_capacity(CLIENTS);
        for index in 0..CLIENTS {
            clients.push(connect(addr, &format!("bench{index}")).await);
        }
        clients
    });

    let per_round = PER_CLIENT * CLIENTS as u64;
    let mut group = c.benchmark_group("upstream");
    group.throughput(Throughput::Elements(per_round));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("forwarded_messages_one_server", |b| {
        b.iter_custom(|iters| {
            client_runtime.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let target = received.load(Ordering::Relaxed) + per_round;
                    total += round(&mut clients, &received, target).await;
                }
                total
            })
        });
    });
    group.finish();

    server.drain();
}

criterion_group!(benches, bench_upstream);
criterion_main!(benches);
