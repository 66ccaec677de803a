//! The relay backend driven by an independent client (tokio-tungstenite): delivery between
//! users on different workers, `from` set by the server, offline recipients, and sharding.

mod util;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use util::*;

#[tokio::test]
async fn relay_between_users_on_different_workers() {
    let workers = 3;
    let addr = start(config(workers, ""));
    let (alice, bob) = users_on_different_workers(workers);
    let mut a = connect_user(addr, &alice).await;
    let mut b = connect_user(addr, &bob).await;

    let text = serde_json::json!({
        "id": "m1", "conversation_id": "c1", "to": bob, "content": "hello bob", "from": "mallory"
    });
    a.send(Message::text(text.to_string())).await.unwrap();
    let received = next_json(&mut b).await;
    assert_eq!(received["content"], "hello bob");
    assert_eq!(
        received["from"], alice,
        "the server replaces a client-supplied from"
    );

    let reply = chat("m2", &alice, "hi alice");
    b.send(Message::text(reply)).await.unwrap();
    let received = next_json(&mut a).await;
    assert_eq!(received["content"], "hi alice");
    assert_eq!(received["from"], bob);
}

#[tokio::test]
async fn relay_reaches_every_connection_of_the_user() {
    let addr = start(config(2, ""));
    let mut sender = connect_user(addr, "sender").await;
    let mut phone = connect_user(addr, "multi").await;
    let mut laptop = connect_user(addr, "multi").await;
    sender
        .send(Message::text(chat("m1", "multi", "to all")))
        .await
        .unwrap();
    assert_eq!(next_json(&mut phone).await["content"], "to all");
    assert_eq!(next_json(&mut laptop).await["content"], "to all");
}

#[tokio::test]
async fn relay_to_offline_user_answers_recipient_offline() {
    let workers = 2;
    let addr = start(config(workers, ""));
    let (alice, nobody) = users_on_different_workers(workers);
    let mut a = connect_user(addr, &alice).await;
    a.send(Message::text(chat("m9", &nobody, "anyone?")))
        .await
        .unwrap();
    let error = next_json(&mut a).await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "recipient_offline");
    assert_eq!(error["id"], "m9");
}

#[tokio::test]
async fn relay_requires_to_field() {
    let addr = start(config(1, ""));
    let mut a = connect_user(addr, "alice").await;
    a.send(Message::text(
        r#"{"id":"x","conversation_id":"c","content":"?"}"#,
    ))
    .await
    .unwrap();
    let error = next_json(&mut a).await;
    assert_eq!(error["code"], "missing_field");
}

#[tokio::test]
async fn echo_backend_with_tungstenite_client() {
    let addr = start(config(
        2,
        "backend = \"echo\"\njson = false\nmax_message_bytes = 1048576\nrate_per_sec = 0\n\
         max_outbound_bytes = 2097152\n",
    ));
    let mut client = connect_user(addr, "echoer").await;
    for size in [0usize, 1, 125, 126, 65_535, 65_536, 1_000_000] {
        let payload = vec![b'x'; size];
        client.send(Message::binary(payload.clone())).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(10), client.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed.into_data().len(), size);
    }
    client
        .send(Message::Ping(b"p".to_vec().into()))
        .await
        .unwrap();
    let pong = client.next().await.unwrap().unwrap();
    assert_eq!(pong, Message::Pong(b"p".to_vec().into()));
    client.close(None).await.unwrap();
}
