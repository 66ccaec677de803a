//! The whole per-message path of a connection: frame decode, unmasking, UTF-8, the JSON and
//! required-field check and the rate limit, through `conn::Session` as the runtime calls it.

use std::hint::black_box;
use std::time::Instant;

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use framegate::config::Config;
use framegate::conn::{Outbox, Session, SessionConfig};

/// A typical 128-byte chat message.
const CHAT_128: &[u8] = br#"{"id":"c-000042","conversation_id":"conv-7f3a9c","to":"user-12345","content":"see you at the standup in ten minutes, ok? bye!!"}"#;

fn masked_frame(payload: &[u8]) -> Vec<u8> {
    let key = [0x5a, 0x17, 0xc3, 0x88];
    let mut frame = vec![0x81];
    if payload.len() < 126 {
        frame.push(0x80 | payload.len() as u8);
    } else {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    frame.extend_from_slice(&key);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    frame
}

fn bench_message_path(c: &mut Criterion) {
    let mut config = SessionConfig::from(&Config::default());
    // Rate checked on every message but never limiting, so each iteration takes the full path.
    config.rate_per_sec = 1_000_000_000;
    config.burst = 1_000_000_000;
    let now = Instant::now();
    let mut session = Session::new(&config, now);
    let frame = masked_frame(CHAT_128);
    assert_eq!(CHAT_128.len(), 128, "fixture is 128 bytes");

    let mut group = c.benchmark_group("message_path");
    group.throughput(Throughput::Bytes(CHAT_128.len() as u64));
    let mut buf = BytesMut::with_capacity(1 << 20);
    let mut out = Outbox::default();
    group.bench_function("chat_128B", |b| {
        b.iter(|| {
            if buf.capacity() - buf.len() < frame.len() {
                buf = BytesMut::with_capacity(1 << 20);
            }
            buf.extend_from_slice(&frame);
            let (flow, accepted) = session.on_read(&mut buf, now, &mut out, None);
            black_box(flow);
            let message = accepted.expect("the message passes");
            black_box(message.payload());
        })
    });
    group.finish();
}

criterion_group!(benches, bench_message_path);
criterion_main!(benches);
