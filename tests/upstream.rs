//! The `http` backend against a real HTTP/1.1 application server (hyper) started by each
//! test on loopback: envelopes and batching, replies and deliveries in the response body,
//! failover, error frames, an application restart, and back-pressure from a slow server.

mod util;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use tokio_tungstenite::tungstenite::Message;
use util::*;

/// How the test application responds to a batch.
#[derive(Clone, Copy)]
enum Mode {
    /// 200 with an ack per message to its connection, and a copy to `to` when present.
    Reply,
    /// This status with an empty body.
    Status(u16),
    /// Waits this long, then responds like `Reply`.
    Slow(Duration),
}

/// What the application received: every envelope of every request, in order, and the
/// `X-Framegate-Message-Ids` header of each request.
#[derive(Default)]
struct Received {
    envelopes: Vec<serde_json::Value>,
    id_headers: Vec<String>,
}

/// A test application server on its own tokio runtime; dropping it kills the server and
/// every connection it holds.
struct App {
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for App {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn start_app(addr: SocketAddr, mode: Mode, received: Arc<Mutex<Received>>) -> App {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("app runtime");
    // Bound with std so this also works from inside a test's own runtime.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .expect("app socket");
    socket.set_reuse_address(true).expect("SO_REUSEADDR");
    socket.bind(&addr.into()).expect("bind app server");
    socket.listen(1024).expect("listen");
    socket.set_nonblocking(true).expect("nonblocking");
    let listener: std::net::TcpListener = socket.into();
    let addr = listener.local_addr().expect("app address");
    runtime.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("app listener");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let received = Arc::clone(&received);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    handle(request, mode, Arc::clone(&received))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    App {
        addr,
        runtime: Some(runtime),
    }
}

async fn handle(
    request: Request<Incoming>,
    mode: Mode,
    received: Arc<Mutex<Received>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let ids = request
        .headers()
        .get("x-framegate-message-ids")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let envelopes: Vec<serde_json::Value> = body
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_slice(line).expect("envelope is JSON"))
        .collect();
    let status = match mode {
        Mode::Status(status) => status,
        Mode::Reply => 200,
        Mode::Slow(delay) => {
            tokio::time::sleep(delay).await;
            200
        }
    };
    let mut reply = String::new();
    if status == 200 {
        for envelope in &envelopes {
            let ack = serde_json::json!({
                "connection_id": envelope["connection_id"],
                "message": {"type": "ack", "id": envelope["message"]["id"], "message_id": envelope["message_id"]},
            });
            reply.push_str(&ack.to_string());
            reply.push('\n');
            if let Some(to) = envelope["message"]["to"].as_str() {
                let copy = serde_json::json!({
                    "to": to,
                    "message": {"from": envelope["user_id"], "content": envelope["message"]["content"]},
                });
                reply.push_str(&copy.to_string());
                reply.push('\n');
            }
        }
    }
    {
        let mut received = received.lock().expect("lock");
        received.id_headers.push(ids);
        received.envelopes.extend(envelopes);
    }
    let response = Response::builder()
        .status(status)
        .header("content-type", "application/x-ndjson")
        .body(Full::new(Bytes::from(reply)))
        .expect("response");
    Ok(response)
}

fn loopback_any() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn http_config(workers: usize, urls: &[String], extra: &str) -> framegate::config::Config {
    let urls: Vec<String> = urls.iter().map(|url| format!("{url:?}")).collect();
    config(
        workers,
        &format!(
            "backend = \"http\"\nrate_per_sec = 0\n{extra}\n[upstream]\nurls = [{}]\n",
            urls.join(", ")
        ),
    )
}

fn chat_message(id: usize, to: Option<&str>) -> Message {
    let mut value =
        serde_json::json!({"id": id, "conversation_id": "c1", "content": format!("m{id}")});
    if let Some(to) = to {
        value["to"] = serde_json::json!(to);
    }
    Message::text(value.to_string())
}

#[tokio::test]
async fn http_backend_round_trip_acks_and_delivers() {
    let received = Arc::new(Mutex::new(Received::default()));
    let app = start_app(loopback_any(), Mode::Reply, Arc::clone(&received));
    let workers = 2;
    let addr = start(http_config(
        workers,
        &[format!("http://{}/ingest", app.addr)],
        "",
    ));
    let (alice, bob) = users_on_different_workers(workers);
    let mut a = connect_user(addr, &alice).await;
    let mut b = connect_user(addr, &bob).await;

    for id in 0..5 {
        a.send(chat_message(id, Some(&bob))).await.unwrap();
    }
    for id in 0..5 {
        let ack = next_json(&mut a).await;
        assert_eq!(ack["type"], "ack");
        assert_eq!(ack["id"], id, "acks keep the order of the messages");
        let copy = next_json(&mut b).await;
        assert_eq!(copy["from"], alice.as_str());
        assert_eq!(copy["content"], format!("m{id}"));
    }

    let received = received.lock().unwrap();
    assert_eq!(received.envelopes.len(), 5);
    let first = &received.envelopes[0];
    let message_id = first["message_id"].as_str().unwrap();
    let connection_id = first["connection_id"].as_u64().unwrap();
    let worker = message_id.split('-').next().unwrap();
    assert_eq!(message_id, format!("{worker}-{connection_id}-1"));
    assert_eq!(first["user_id"], alice.as_str());
    assert!(first["received_at_ms"].as_u64().unwrap() > 1_600_000_000_000);
    assert_eq!(first["message"]["content"], "m0");
    assert_eq!(first["message"]["to"], bob.as_str());
    let header_ids: Vec<String> = received
        .id_headers
        .iter()
        .flat_map(|header| header.split(',').map(str::to_owned).collect::<Vec<_>>())
        .collect();
    let body_ids: Vec<String> = received
        .envelopes
        .iter()
        .map(|envelope| envelope["message_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(header_ids, body_ids);
}

/// Variable read by the servers of this test binary for the push API key.
const KEY_VAR: &str = "FRAMEGATE_TEST_UPSTREAM_PUSH_KEY";
const KEY: &str = "upstream-test-key-0123456789";

fn set_push_key() {
    static SET: std::sync::Once = std::sync::Once::new();
    SET.call_once(|| {
        // SAFETY: only this function writes the environment in this test binary, once, before
        // the server that reads it starts. No other thread reads or writes it meanwhile.
        unsafe { std::env::set_var(KEY_VAR, KEY) };
    });
}

/// Sends `body` to `POST /v1/connections/{id}` on the admin listener; returns the status.
fn push_to_connection(admin: SocketAddr, id: u64, body: &str) -> u16 {
    let request = format!(
        "POST /v1/connections/{id} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    status_of(&http_exchange(admin, request.as_bytes()))
}

#[tokio::test]
async fn envelope_connection_id_reaches_push_api() {
    set_push_key();
    let received = Arc::new(Mutex::new(Received::default()));
    let app = start_app(loopback_any(), Mode::Status(204), Arc::clone(&received));
    let workers = 2;
    let started = start_full(http_config(
        workers,
        &[format!("http://{}/ingest", app.addr)],
        &format!("push_api_key_env = {KEY_VAR:?}"),
    ));
    let admin = started.admin.expect("admin listener");
    let ring = framegate::shard::Ring::new(workers).unwrap();

    // Several connections per user, so that some are accepted by the worker that does not
    // own the user and handed off.
    let users = ["erin", "frank", "grace", "heidi"];
    let mut clients = Vec::new();
    for (index, user) in users.iter().cycle().take(12).enumerate() {
        let mut client = connect_user(started.addr, user).await;
        client.send(chat_message(index, None)).await.unwrap();
        clients.push(client);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.lock().unwrap().envelopes.len() < clients.len() {
        assert!(
            Instant::now() < deadline,
            "every message reaches the application"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let envelopes = received.lock().unwrap().envelopes.clone();
    for envelope in &envelopes {
        let index = envelope["message"]["id"].as_u64().unwrap();
        let id = envelope["connection_id"].as_u64().unwrap();
        let user = envelope["user_id"].as_str().unwrap();
        let owner = ring.owner(user.as_bytes()) as u64;
        assert_eq!(id >> 48, owner, "connection {id} names the owner of {user}");
        let worker = envelope["message_id"].as_str().unwrap().split('-').next();
        assert_eq!(worker, Some(owner.to_string().as_str()));

        let status = push_to_connection(admin, id, &format!(r#"{{"for":{index}}}"#));
        assert_eq!(status, 202, "connection {id}");
        let client = &mut clients[usize::try_from(index).unwrap()];
        assert_eq!(next_json(client).await["for"], index);
    }
}

#[tokio::test]
async fn http_backend_failed_upstream_retries_on_next() {
    let failing = Arc::new(Mutex::new(Received::default()));
    let healthy = Arc::new(Mutex::new(Received::default()));
    let bad = start_app(loopback_any(), Mode::Status(503), Arc::clone(&failing));
    let good = start_app(loopback_any(), Mode::Reply, Arc::clone(&healthy));
    let addr = start(http_config(
        1,
        &[
            format!("http://{}/", bad.addr),
            format!("http://{}/", good.addr),
        ],
        "",
    ));
    let mut client = connect_user(addr, "carol").await;
    for id in 0..4 {
        client.send(chat_message(id, None)).await.unwrap();
        let ack = next_json(&mut client).await;
        assert_eq!(ack["type"], "ack", "message {id} answered with {ack}");
        assert_eq!(ack["id"], id);
    }
    assert_eq!(healthy.lock().unwrap().envelopes.len(), 4);
    // The 503 takes the bad server out of rotation for backoff_ms, so it saw one batch.
    assert_eq!(failing.lock().unwrap().id_headers.len(), 1);
}

#[tokio::test]
async fn http_backend_all_down_answers_upstream_unavailable() {
    // A port that was just free: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let failing = Arc::new(Mutex::new(Received::default()));
    let bad = start_app(loopback_any(), Mode::Status(500), Arc::clone(&failing));
    let addr = start(http_config(
        1,
        &[format!("http://{closed}/"), format!("http://{}/", bad.addr)],
        "",
    ));
    let mut client = connect_user(addr, "dave").await;
    client.send(chat_message(1, None)).await.unwrap();
    let error = next_json(&mut client).await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "upstream_unavailable");
    assert_eq!(error["id"], 1);
    // Both are backing off now: the next message gets its error without a request.
    client.send(chat_message(2, None)).await.unwrap();
    let error = next_json(&mut client).await;
    assert_eq!(error["code"], "upstream_unavailable");
    assert_eq!(error["id"], 2);
    assert_eq!(failing.lock().unwrap().id_headers.len(), 1);
}

#[tokio::test]
async fn http_backend_4xx_answers_upstream_rejected_without_retry() {
    let first = Arc::new(Mutex::new(Received::default()));
    let second = Arc::new(Mutex::new(Received::default()));
    let rejecting = start_app(loopback_any(), Mode::Status(422), Arc::clone(&first));
    let other = start_app(loopback_any(), Mode::Status(422), Arc::clone(&second));
    let addr = start(http_config(
        1,
        &[
            format!("http://{}/", rejecting.addr),
            format!("http://{}/", other.addr),
        ],
        "",
    ));
    let mut client = connect_user(addr, "erin").await;
    client.send(chat_message(9, None)).await.unwrap();
    let error = next_json(&mut client).await;
    assert_eq!(error["code"], "upstream_rejected");
    assert_eq!(error["id"], 9);
    let requests = first.lock().unwrap().id_headers.len() + second.lock().unwrap().id_headers.len();
    assert_eq!(requests, 1, "a 4xx is not retried");
}

#[tokio::test]
async fn http_backend_app_restart_answers_every_message() {
    let received = Arc::new(Mutex::new(Received::default()));
    let app = start_app(loopback_any(), Mode::Reply, Arc::clone(&received));
    let app_addr = app.addr;
    // Two URLs on the same server, so a failed batch is retried once before it is answered.
    let addr = start(http_config(
        2,
        &[
            format!("http://{app_addr}/a"),
            format!("http://{app_addr}/b"),
        ],
        "",
    ));
    let users = ["u1", "u2", "u3", "u4"];
    let mut clients = Vec::new();
    for user in users {
        clients.push(connect_user(addr, user).await);
    }

    let total_per_client = 60;
    let mut app = Some(app);
    let mut answers: Vec<HashMap<u64, String>> = vec![HashMap::new(); clients.len()];
    for round in 0..total_per_client {
        if round == 20 {
            // Kill the application server with requests in flight.
            drop(app.take());
        }
        if round == 40 {
            tokio::time::sleep(Duration::from_millis(1100)).await;
            app = Some(start_app(app_addr, Mode::Reply, Arc::clone(&received)));
        }
        for client in clients.iter_mut() {
            client.send(chat_message(round, None)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // After the restart and the back-off, new messages are acknowledged again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for client in clients.iter_mut() {
        client
            .send(chat_message(total_per_client, None))
            .await
            .unwrap();
    }

    for (index, client) in clients.iter_mut().enumerate() {
        while answers[index].len() < total_per_client + 1 {
            let answer = next_json(client).await;
            let id = answer["id"].as_u64().expect("answer carries the client id");
            let kind = if answer["type"] == "ack" {
                "ack".to_owned()
            } else {
                answer["code"].as_str().unwrap_or("other").to_owned()
            };
            assert!(
                kind == "ack" || kind == "upstream_unavailable",
                "unexpected answer {answer}"
            );
            let previous = answers[index].insert(id, kind);
            assert!(previous.is_none(), "message {id} answered twice");
        }
        assert_eq!(
            answers[index]
                .get(&(total_per_client as u64))
                .map(String::as_str),
            Some("ack"),
            "the application takes messages again after its restart"
        );
    }
    drop(app);

    // Every acknowledged message reached the application; duplicates only repeat an id.
    let received = received.lock().unwrap();
    let mut seen: HashMap<String, serde_json::Value> = HashMap::new();
    for envelope in &received.envelopes {
        let message_id = envelope["message_id"].as_str().unwrap().to_owned();
        if let Some(earlier) = seen.get(&message_id) {
            assert_eq!(earlier, envelope, "a retried id carries the same envelope");
        }
        seen.insert(message_id, envelope.clone());
    }
    let delivered: HashSet<(String, u64)> = seen
        .values()
        .map(|envelope| {
            (
                envelope["user_id"].as_str().unwrap().to_owned(),
                envelope["message"]["id"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut acked = 0;
    let mut unavailable = 0;
    for (index, user) in users.iter().enumerate() {
        for (id, kind) in &answers[index] {
            if kind == "ack" {
                acked += 1;
                assert!(
                    delivered.contains(&(user.to_string(), *id)),
                    "acknowledged message {id} of {user} is missing at the application"
                );
            } else {
                unavailable += 1;
            }
        }
    }
    assert!(acked > 0);
    assert!(unavailable > 0, "the kill made some messages fail");
}

/// Connects `user`, sends messages `0..count` one at a time and returns each reply: `ack` or
/// the error code.
async fn send_one_by_one(addr: SocketAddr, user: &str, count: usize) -> Vec<String> {
    let mut client = connect_user(addr, user).await;
    let mut answers = Vec::new();
    for id in 0..count {
        client.send(chat_message(id, None)).await.unwrap();
        let answer = next_json(&mut client).await;
        assert_eq!(answer["id"], id, "{answer}");
        let kind = match answer["type"].as_str() {
            Some("ack") => "ack",
            _ => answer["code"].as_str().unwrap_or("other"),
        };
        answers.push(kind.to_owned());
    }
    answers
}

/// Waits until the worker's pending gauge is back at zero (it is updated after the answers
/// are queued).
async fn wait_pending_zero(server: &framegate::runtime::Server) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.metrics().upstream_pending != [0] {
        assert!(Instant::now() < deadline, "pending messages back to zero");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn upstream_metrics_count_failover_run() {
    let failing = start_app(
        loopback_any(),
        Mode::Status(503),
        Arc::new(Mutex::new(Received::default())),
    );
    let healthy = start_app(
        loopback_any(),
        Mode::Reply,
        Arc::new(Mutex::new(Received::default())),
    );
    // One worker and a long back-off: the first batch fails on server 0 and is retried on
    // server 1, and every later batch goes to server 1 only.
    let server = start_server(config(
        1,
        &format!(
            "backend = \"http\"\nrate_per_sec = 0\n[upstream]\n\
             urls = [\"http://{}/\", \"http://{}/\"]\nbatch_max = 1\nbackoff_ms = 60000\n",
            failing.addr, healthy.addr
        ),
    ));
    let answers = send_one_by_one(server.local_addr(), "ivan", 3).await;
    assert_eq!(answers, ["ack", "ack", "ack"]);
    wait_pending_zero(&server).await;

    let snap = server.metrics();
    assert_eq!(snap.upstream_forwarded, 3);
    assert_eq!(snap.upstream_batches, 3);
    assert_eq!(snap.upstream_acknowledged, 3);
    assert_eq!(snap.upstream_retries, 1);
    assert_eq!(snap.upstream_down(0), 1);
    assert_eq!(snap.upstream_down(1), 0);
    assert_eq!(snap.upstream_rejected, 0);
    assert_eq!(snap.upstream_unavailable, 0);
    assert_eq!(snap.upstream_round_trip.count(), 4, "one 503 and three 200");
    assert_eq!(snap.upstream_reads_paused, 0);
}

#[tokio::test]
async fn upstream_metrics_count_rejected_and_unavailable() {
    let rejecting = start_app(
        loopback_any(),
        Mode::Status(400),
        Arc::new(Mutex::new(Received::default())),
    );
    let server = start_server(http_config(1, &[format!("http://{}/", rejecting.addr)], ""));
    let answers = send_one_by_one(server.local_addr(), "judy", 2).await;
    assert_eq!(answers, ["upstream_rejected", "upstream_rejected"]);
    wait_pending_zero(&server).await;
    let snap = server.metrics();
    assert_eq!(snap.upstream_batches, 2);
    assert_eq!(snap.upstream_rejected, 2);
    assert_eq!(snap.upstream_acknowledged, 0);
    assert_eq!(snap.upstream_retries, 0);
    assert_eq!(snap.upstream_down(0), 0, "a 4xx does not take a server out");
    assert_eq!(snap.upstream_round_trip.count(), 2);

    // Nothing listens on this port: the connect fails and the message is unavailable.
    let closed = format!("http://127.0.0.1:{}/", free_port());
    let server = start_server(http_config(1, &[closed], ""));
    let answers = send_one_by_one(server.local_addr(), "judy", 1).await;
    assert_eq!(answers, ["upstream_unavailable"]);
    wait_pending_zero(&server).await;
    let snap = server.metrics();
    assert_eq!(snap.upstream_batches, 1);
    assert_eq!(snap.upstream_unavailable, 1);
    assert_eq!(snap.upstream_down(0), 1);
    assert_eq!(
        snap.upstream_round_trip.count(),
        0,
        "no response, no round trip"
    );
}

/// Reads until the close frame; returns every text message before it and the close code.
async fn read_until_close(client: &mut Client) -> (Vec<serde_json::Value>, Option<u16>) {
    let mut texts = Vec::new();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), client.next())
            .await
            .expect("frame within 10 s")
            .expect("stream open")
            .expect("valid frame");
        match message {
            Message::Text(text) => texts.push(serde_json::from_str(&text).expect("JSON")),
            Message::Close(frame) => return (texts, frame.map(|frame| u16::from(frame.code))),
            _ => {}
        }
    }
}

#[tokio::test]
async fn drain_answers_pending_messages_before_close() {
    let received = Arc::new(Mutex::new(Received::default()));
    let app = start_app(
        loopback_any(),
        Mode::Slow(Duration::from_millis(300)),
        Arc::clone(&received),
    );
    let started = start_full(http_config(
        1,
        &[format!("http://{}/", app.addr)],
        "drain_timeout_ms = 10000\ndrain_jitter_ms = 0",
    ));
    let mut client = connect_user(started.addr, "kate").await;
    for id in 0..5 {
        client.send(chat_message(id, None)).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.lock().unwrap().envelopes.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the first batch reaches the application"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    started.drain.drain();
    let (texts, code) = read_until_close(&mut client).await;
    assert_eq!(code, Some(1001));
    let acked: Vec<u64> = texts
        .iter()
        .map(|text| {
            assert_eq!(text["type"], "ack", "{text}");
            text["id"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(
        acked,
        [0, 1, 2, 3, 4],
        "every pending message is acknowledged first"
    );
}

#[tokio::test]
async fn drain_timeout_answers_pending_as_unavailable() {
    let received = Arc::new(Mutex::new(Received::default()));
    let app = start_app(
        loopback_any(),
        Mode::Slow(Duration::from_secs(30)),
        Arc::clone(&received),
    );
    let started = start_full(http_config(
        1,
        &[format!("http://{}/", app.addr)],
        "drain_timeout_ms = 500\ndrain_jitter_ms = 0",
    ));
    let mut client = connect_user(started.addr, "liam").await;
    for id in 0..3 {
        client.send(chat_message(id, None)).await.unwrap();
    }
    // Usually the first batch is in flight by now and the rest queued; either way each
    // message is pending when the drain starts.
    tokio::time::sleep(Duration::from_millis(100)).await;

    started.drain.drain();
    let (texts, code) = read_until_close(&mut client).await;
    assert_eq!(code, Some(1001));
    let ids: Vec<u64> = texts
        .iter()
        .map(|text| {
            assert_eq!(text["code"], "upstream_unavailable", "{text}");
            text["id"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(
        ids,
        [0, 1, 2],
        "every pending message is answered before the close"
    );
}

#[test]
fn http_backend_slow_app_blocks_client_writes() {
    let received = Arc::new(Mutex::new(Received::default()));
    let app = start_app(
        loopback_any(),
        Mode::Slow(Duration::from_secs(30)),
        Arc::clone(&received),
    );
    let config = config(
        1,
        &format!(
            "backend = \"http\"\nrate_per_sec = 0\nmax_message_bytes = 65536\n\
             ping_interval_ms = 200\npong_timeout_ms = 200\n\
             [upstream]\nurls = [\"http://{}/\"]\ntimeout_ms = 60000\nmax_pending_messages = 16\n\
             batch_max = 4\n",
            app.addr
        ),
    );
    let server = start_server(config);
    let mut client = open(server.local_addr(), "frank");
    client
        .stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();

    // 64 MiB of valid messages: far more than the socket buffers and the pending limit hold.
    // At about 250 bytes each, one read carries dozens of them, so a reader that took every
    // message of a read would pass the limit.
    let content = "x".repeat(200);
    let text = serde_json::json!({"conversation_id": "c", "content": content}).to_string();
    let frame = client_frame(true, 0x1, text.as_bytes());
    let started = Instant::now();
    let mut sent_bytes = 0usize;
    let mut blocked = false;
    while sent_bytes < 64 << 20 && started.elapsed() < Duration::from_secs(30) {
        match client.stream.write_all(&frame) {
            Ok(()) => sent_bytes += frame.len(),
            Err(err)
                if err.kind() == std::io::ErrorKind::WouldBlock
                    || err.kind() == std::io::ErrorKind::TimedOut =>
            {
                blocked = true;
                break;
            }
            Err(err) => panic!("write failed: {err}"),
        }
    }
    assert!(
        blocked,
        "writes never blocked after {sent_bytes} bytes: the server kept reading"
    );
    assert!(
        sent_bytes < 48 << 20,
        "the server took {sent_bytes} bytes before the client blocked"
    );
    // The application saw at most one batch (it is still sleeping on it).
    assert!(received.lock().unwrap().id_headers.len() <= 1);
    let snap = server.metrics();
    assert!(snap.upstream_reads_paused >= 1, "the reader paused");
    assert_eq!(
        snap.upstream_pending,
        [16],
        "the pending gauge reached max_pending_messages and did not pass it"
    );

    // A connection held back by the server is not closed for missing pongs: for well past
    // ping_interval + pong_timeout, no close frame arrives.
    client
        .stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let watch_until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < watch_until {
        let mut chunk = [0u8; 4096];
        match std::io::Read::read(&mut client.stream, &mut chunk) {
            Ok(0) => panic!("the server closed a connection it was holding back"),
            Ok(n) => client.pending.extend_from_slice(&chunk[..n]),
            Err(err)
                if err.kind() == std::io::ErrorKind::WouldBlock
                    || err.kind() == std::io::ErrorKind::TimedOut => {}
            Err(err) => panic!("read failed: {err}"),
        }
        while let Some((frame, used)) = parse_server_frame(&client.pending) {
            client.pending.drain(..used);
            assert_ne!(frame.opcode, 0x8, "close frame {:?}", frame.close_code());
        }
    }
}

/// Prints the throughput of the whole path (client, framegate, application, acks back).
/// Run by hand: `cargo test --release --test upstream -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "throughput probe; prints a figure and checks nothing about speed"]
async fn http_backend_throughput_probe() {
    let received = Arc::new(Mutex::new(Received::default()));
    let app = start_app(loopback_any(), Mode::Reply, Arc::clone(&received));
    let addr = start(http_config(2, &[format!("http://{}/", app.addr)], ""));
    let clients = 8;
    let per_client = 5_000;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for index in 0..clients {
        tasks.push(tokio::spawn(async move {
            let client = connect_user(addr, &format!("probe{index}")).await;
            let (mut sink, mut stream) = client.split();
            let writer = tokio::spawn(async move {
                for id in 0..per_client {
                    sink.send(chat_message(id, None)).await.unwrap();
                }
                sink
            });
            let mut acks = 0;
            while acks < per_client {
                let message = tokio::time::timeout(Duration::from_secs(30), stream.next())
                    .await
                    .expect("answer within 30 s")
                    .expect("stream open")
                    .expect("valid frame");
                if let Message::Text(text) = message {
                    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
                    assert_eq!(value["type"], "ack", "{value}");
                    acks += 1;
                }
            }
            let _sink = writer.await.unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    let total = clients * per_client;
    let requests = received.lock().unwrap().id_headers.len();
    println!(
        "{total} messages acknowledged in {elapsed:?}: {:.0} messages/s, {requests} POSTs, {:.1} messages per POST",
        total as f64 / elapsed.as_secs_f64(),
        total as f64 / requests as f64
    );
}

/// How the raw application server below departs from a plain keep-alive exchange.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Raw {
    /// Every response has no length and ends when the server closes the connection.
    CloseDelimited,
    /// 100 ms after each response, a second, unrequested response with a delivery to the
    /// same connection follows on the idle connection.
    StrayResponse,
    /// 100 ms after each response, `408 Request Timeout` follows on the idle connection,
    /// which the server closes 2 s later.
    IdleTimeout408,
    /// The second request on a connection gets `408` and a close, unread.
    Reused408,
}

/// Starts an application server written against raw sockets, for the responses a framework
/// would not send. It acknowledges each envelope to its connection, like `Mode::Reply`, and counts
/// the envelopes it processed.
fn start_raw_app(behaviour: Raw) -> (SocketAddr, Arc<Mutex<usize>>) {
    let listener = std::net::TcpListener::bind(loopback_any()).expect("bind raw app");
    let addr = listener.local_addr().expect("raw app address");
    let processed = Arc::new(Mutex::new(0));
    let counter = Arc::clone(&processed);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let counter = Arc::clone(&counter);
            std::thread::spawn(move || serve_raw(stream, behaviour, &counter));
        }
    });
    (addr, processed)
}

fn serve_raw(mut stream: std::net::TcpStream, behaviour: Raw, processed: &Mutex<usize>) {
    use std::io::Read;
    let mut data = Vec::new();
    let mut requests = 0;
    loop {
        let Some(head_end) = data
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|at| at + 4)
        else {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => data.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&data[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .map_or(0, |value| value.trim().parse().expect("request length"));
        if data.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => data.extend_from_slice(&chunk[..n]),
            }
            continue;
        }
        let body: Vec<u8> = data.drain(..head_end + length).skip(head_end).collect();
        requests += 1;
        if behaviour == Raw::Reused408 && requests == 2 {
            let _ = stream.write_all(
                b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            );
            return;
        }
        let mut acks = String::new();
        let mut connection = serde_json::Value::Null;
        for line in body.split(|&b| b == b'\n').filter(|line| !line.is_empty()) {
            let envelope: serde_json::Value = serde_json::from_slice(line).expect("envelope");
            connection = envelope["connection_id"].clone();
            let ack = serde_json::json!({
                "connection_id": envelope["connection_id"],
                "message": {"type": "ack", "id": envelope["message"]["id"]},
            });
            acks.push_str(&format!("{ack}\n"));
            *processed.lock().unwrap() += 1;
        }
        if behaviour == Raw::CloseDelimited {
            let _ = write!(stream, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{acks}");
            return;
        }
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{acks}",
            acks.len()
        );
        std::thread::sleep(Duration::from_millis(100));
        match behaviour {
            Raw::StrayResponse => {
                let stray = serde_json::json!({
                    "connection_id": connection,
                    "message": {"type": "stray"},
                });
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{stray}\n",
                    stray.to_string().len() + 1
                );
            }
            Raw::IdleTimeout408 => {
                let _ = stream.write_all(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
                std::thread::sleep(Duration::from_secs(2));
                return;
            }
            Raw::CloseDelimited | Raw::Reused408 => {}
        }
    }
}

/// Sends messages one at a time, each after the reply to the previous one, with a pause
/// between them so the upstream connection sits idle. Returns each reply's type or code.
async fn answers_with_pauses(addr: SocketAddr, user: &str, count: usize) -> Vec<String> {
    let mut client = connect_user(addr, user).await;
    let mut answers = Vec::new();
    for id in 0..count {
        client.send(chat_message(id, None)).await.unwrap();
        let answer = next_json(&mut client).await;
        assert_eq!(answer["id"], id, "answer for message {id}: {answer}");
        let kind = answer["type"].as_str().or(answer["code"].as_str());
        answers.push(kind.unwrap_or_default().to_owned());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    answers
}

#[tokio::test]
async fn http_backend_reads_close_delimited_response() {
    let (app, processed) = start_raw_app(Raw::CloseDelimited);
    let addr = start(http_config(1, &[format!("http://{app}/")], ""));
    let answers = answers_with_pauses(addr, "fay", 3).await;
    assert_eq!(answers, ["ack", "ack", "ack"]);
    assert_eq!(
        *processed.lock().unwrap(),
        3,
        "each message reached the app once"
    );
}

#[tokio::test]
async fn http_backend_drops_idle_connection_with_stray_bytes() {
    let (app, processed) = start_raw_app(Raw::StrayResponse);
    let addr = start(http_config(1, &[format!("http://{app}/")], ""));
    // A stray response taken as the response to the next batch would ack nothing (its
    // delivery has no id) and leave each later reply one batch behind.
    let answers = answers_with_pauses(addr, "gus", 4).await;
    assert_eq!(answers, ["ack", "ack", "ack", "ack"]);
    assert_eq!(*processed.lock().unwrap(), 4);
}

#[tokio::test]
async fn http_backend_resends_after_idle_timeout_408() {
    let (app, processed) = start_raw_app(Raw::IdleTimeout408);
    let addr = start(http_config(1, &[format!("http://{app}/")], ""));
    let answers = answers_with_pauses(addr, "hal", 3).await;
    assert_eq!(answers, ["ack", "ack", "ack"]);
    assert_eq!(*processed.lock().unwrap(), 3);
}

#[tokio::test]
async fn http_backend_resends_when_reused_connection_gets_408() {
    let (app, processed) = start_raw_app(Raw::Reused408);
    let addr = start(http_config(1, &[format!("http://{app}/")], ""));
    let answers = answers_with_pauses(addr, "ida", 3).await;
    assert_eq!(answers, ["ack", "ack", "ack"]);
    assert_eq!(*processed.lock().unwrap(), 3);
}
