//! Connection ownership by the shard ring, against the real server: every connection of a
//! user ends on the worker the ring names, hand-offs lose no bytes, and per-user limits hold
//! across accepting workers.

mod util;

use std::io::Write;

use util::*;

/// A user owned by `worker` in a `shards`-worker ring.
fn user_owned_by(worker: usize, shards: usize) -> String {
    let ring = framegate::shard::Ring::new(shards).expect("ring");
    (0..100_000)
        .map(|i| format!("user{i}"))
        .find(|user| ring.owner(user.as_bytes()) == worker)
        .expect("a user for every worker")
}

#[test]
fn user_connections_end_on_owning_worker() {
    let workers = 3;
    let server = start_server(config(workers, "upgrade_rate_per_ip = 0\n"));
    let owner = 1;
    let user = user_owned_by(owner, workers);
    // Enough connections that the kernel's SO_REUSEPORT hash gives some to other workers.
    let clients: Vec<RawClient> = (0..12).map(|_| open(server.local_addr(), &user)).collect();
    eventually("all connections registered", || {
        server.metrics().connections_open_total() == 12
    });
    let metrics = server.metrics();
    let expected: Vec<i64> = (0..workers)
        .map(|w| if w == owner { 12 } else { 0 })
        .collect();
    assert_eq!(metrics.connections_open, expected);
    assert_eq!(metrics.users.iter().sum::<i64>(), 1);
    assert!(
        metrics.handoffs_out > 0,
        "no connection was handed off: {metrics:?}"
    );
    assert_eq!(metrics.handoffs_in, metrics.handoffs_out);
    drop(clients);
}

#[test]
fn handoff_while_client_sends_loses_nothing() {
    let workers = 2;
    let server = start_server(config(
        workers,
        "backend = \"echo\"\nrate_per_sec = 0\nupgrade_rate_per_ip = 0\n",
    ));
    let user = user_owned_by(1, workers);
    for connection in 0..10 {
        // Upgrade and 20 messages in one write: the frames are already buffered on the
        // accepting worker when the socket moves to the owner.
        let mut frames = Vec::new();
        for seq in 0..20 {
            let text = format!(r#"{{"conversation_id":"c","content":"{connection}-{seq}"}}"#);
            frames.extend(client_frame(true, 0x1, text.as_bytes()));
        }
        let mut client = open_pipelined(server.local_addr(), &token(&user), &frames);
        for seq in 0..20 {
            let frame = client.read_frame().expect("echo");
            assert_eq!(frame.json()["content"], format!("{connection}-{seq}"));
        }
    }
    assert!(server.metrics().handoffs_in > 0);
}

#[test]
fn per_user_cap_holds_across_accepting_workers() {
    let server = start_server(config(
        3,
        "max_connections_per_user = 3\nupgrade_rate_per_ip = 0\n",
    ));
    let mut open_clients = Vec::new();
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let mut stream = connect(server.local_addr());
        stream
            .write_all(upgrade_request(&token("capped")).as_bytes())
            .unwrap();
        let (head, _) = read_head(&mut stream);
        statuses.push(status_of(&head));
        open_clients.push(stream);
    }
    assert_eq!(
        statuses.iter().filter(|&&s| s == 101).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 429).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(server.metrics().upgrades(429), 5);
}

#[test]
fn per_user_rate_is_shared_by_the_users_connections() {
    let server = start_server(config(
        2,
        "backend = \"echo\"\nrate_per_sec = 0\nuser_rate_per_sec = 1\nuser_burst = 4\nupgrade_rate_per_ip = 0\n",
    ));
    let mut a = open(server.local_addr(), "shared-rate");
    let mut b = open(server.local_addr(), "shared-rate");
    let message = r#"{"conversation_id":"c","content":"x"}"#;
    for _ in 0..2 {
        a.send_text(message);
        assert_eq!(a.read_frame().unwrap().json()["content"], "x");
        b.send_text(message);
        assert_eq!(b.read_frame().unwrap().json()["content"], "x");
    }
    // Four messages used the user's burst; the fifth, on either connection, is limited.
    b.send_text(message);
    assert_eq!(b.read_frame().unwrap().json()["code"], "rate_limited");
}
