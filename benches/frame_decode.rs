//! Throughput of the frame decode path: whole masked frames through `MessageReader`, masking
//! alone and incremental UTF-8 validation.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use framegate::frame::{Event, MessageReader, ReaderConfig, apply_mask, apply_mask_plain};
use framegate::utf8::Utf8Validator;

const KEY: [u8; 4] = [0x5B, 0x21, 0xC7, 0x9E];

const SIZES: [(&str, usize); 3] = [("125B", 125), ("1KiB", 1_024), ("64KiB", 65_536)];

/// Builds one masked client frame with FIN set, the given opcode and payload.
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x80 | opcode];
    let len = payload.len();
    if let Ok(short) = u8::try_from(len)
        && short <= 125
    {
        frame.push(0x80 | short);
    } else if let Ok(medium) = u16::try_from(len) {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&medium.to_be_bytes());
    } else {
        frame.push(0x80 | 127);
        frame.extend_from_slice(&(len as u64).to_be_bytes());
    }
    frame.extend_from_slice(&KEY);
    let start = frame.len();
    frame.extend_from_slice(payload);
    apply_mask_plain(&mut frame[start..], KEY, 0);
    frame
}

/// ASCII-heavy JSON-like text with some multi-byte characters, `len` bytes long.
fn sample_text(len: usize) -> Vec<u8> {
    let unit = "{\"id\":42,\"name\":\"zoë\",\"tags\":[\"α\",\"β\"],\"ok\":true}\n".as_bytes();
    let mut text: Vec<u8> = unit.iter().copied().cycle().take(len).collect();
    // Pad the end with ASCII so no code point is cut off.
    while std::str::from_utf8(&text).is_err() {
        text.pop();
        text.push(b' ');
    }
    text
}

fn reader_config() -> ReaderConfig {
    ReaderConfig {
        max_message_bytes: 1 << 20,
        allow_binary: true,
    }
}

fn bench_reader(c: &mut Criterion) {
    let mut group = c.benchmark_group("reader");
    for (name, size) in SIZES {
        group.throughput(Throughput::Bytes(size as u64));

        let binary = client_frame(0x2, &vec![0xAB; size]);
        group.bench_function(format!("binary_{name}"), |b| {
            b.iter_batched(
                || {
                    (
                        MessageReader::new(reader_config()),
                        BytesMut::from(&binary[..]),
                    )
                },
                |(mut reader, mut buf)| match reader.next_event(&mut buf) {
                    Ok(Some(Event::Message { payload, .. })) => black_box(payload),
                    other => panic!("unexpected result {other:?}"),
                },
                BatchSize::SmallInput,
            );
        });

        let text = client_frame(0x1, &sample_text(size));
        group.bench_function(format!("text_{name}"), |b| {
            b.iter_batched(
                || {
                    (
                        MessageReader::new(reader_config()),
                        BytesMut::from(&text[..]),
                    )
                },
                |(mut reader, mut buf)| match reader.next_event(&mut buf) {
                    Ok(Some(Event::Message { payload, .. })) => black_box(payload),
                    other => panic!("unexpected result {other:?}"),
                },
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

fn bench_mask(c: &mut Criterion) {
    let mut group = c.benchmark_group("mask");
    let size = 65_536;
    group.throughput(Throughput::Bytes(size as u64));
    let mut buf = vec![0x42; size];
    group.bench_function("apply_mask_64KiB", |b| {
        b.iter(|| apply_mask(black_box(&mut buf), KEY, 1));
    });
    group.bench_function("apply_mask_plain_64KiB", |b| {
        b.iter(|| apply_mask_plain(black_box(&mut buf), KEY, 1));
    });
    group.finish();
}

fn bench_utf8(c: &mut Criterion) {
    let mut group = c.benchmark_group("utf8");
    for (name, size) in [("1KiB", 1_024), ("64KiB", 65_536)] {
        group.throughput(Throughput::Bytes(size as u64));
        let text = sample_text(size);
        group.bench_function(format!("validator_{name}"), |b| {
            b.iter(|| {
                let mut validator = Utf8Validator::new();
                let fed = validator.feed(black_box(&text));
                black_box((fed, validator.finish()))
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench_reader, bench_mask, bench_utf8);
criterion_main!(benches);
