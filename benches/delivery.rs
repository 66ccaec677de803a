//! Cross-core delivery: messages per second from one worker thread to another through the
//! same kind of bounded queue the runtime uses (tokio mpsc, `try_send` on the sender, batched
//! `recv_many` on the receiver, which runs a current-thread runtime like a worker).

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio::sync::mpsc;

/// Capacity of a worker inbox with the default `delivery_queue`.
const QUEUE: usize = 4096;
/// Messages taken per wake-up, as in the runtime.
const BATCH: usize = 256;

/// Sends `count` relayed frames to a receiver thread; returns the elapsed time once the
/// receiver has taken all of them.
fn deliver(count: u64, frame: &Bytes) -> Duration {
    let (sender, mut receiver) = mpsc::channel::<(u64, Bytes)>(QUEUE);
    let consumer = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let mut batch = Vec::with_capacity(BATCH);
            let mut received = 0u64;
            let mut wakeups = 0u64;
            while receiver.recv_many(&mut batch, BATCH).await > 0 {
                wakeups += 1;
                received += batch.len() as u64;
                batch.clear();
            }
            (received, wakeups)
        })
    });
    let started = Instant::now();
    for seq in 0..count {
        let mut message = (seq, frame.clone());
        loop {
            match sender.try_send(message) {
                Ok(()) => break,
                Err(mpsc::error::TrySendError::Full(back)) => {
                    message = back;
                    std::thread::yield_now();
                }
                Err(mpsc::error::TrySendError::Closed(_)) => panic!("receiver gone"),
            }
        }
    }
    drop(sender);
    let (received, _wakeups) = consumer.join().expect("consumer");
    assert_eq!(received, count);
    started.elapsed()
}

fn bench_delivery(c: &mut Criterion) {
    let frame = Bytes::from(vec![b'x'; 128]);
    let mut group = c.benchmark_group("cross_core_delivery");
    let count = 100_000u64;
    group.throughput(Throughput::Elements(count));
    group.sample_size(10);
    group.bench_function("128B_frames_batched", |b| {
        b.iter_custom(|iterations| (0..iterations).map(|_| deliver(count, &frame)).sum())
    });
    group.finish();
}

criterion_group!(benches, bench_delivery);
criterion_main!(benches);
