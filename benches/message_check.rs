//! Per-message JSON check on 128 B, 1 KiB and 10 KiB chat messages. `message::check` runs
//! beside the serde_json and sonic-rs ways to validate one object without building values. The
//! rate limiter's `try_take` is measured too.
//!
//! The sonic-rs candidates get `&str` input, so they skip their own UTF-8 pass as a server would
//! after the frame layer validated the text. They are not equivalent to `check`: none of them
//! enforces depth, duplicate keys or surrogate pairing, and their lazy skip accepts malformed
//! `\u` escapes.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use framegate::message::{MessageRules, check, check_str};
use framegate::ratelimit::TokenBucket;
use serde::de::IgnoredAny;
use sonic_rs::PointerTree;

/// A 128-byte chat message as a browser client sends it.
const CHAT_128: &str = r#"{"type":"message","conversation_id":"c-7f3a9b2e","id":"m-000142","to":"user-4821","content":"Are we still on for lunch today?!"}"#;

/// Prose with the escapes and non-ASCII text that chat content carries.
const PARAGRAPH: &str = r#"Quick update on the release: the \"sync\" fix is merged, café wifi permitting 😀.\nNext: tests, docs, and a look at the retry path. "#;

/// Builds a chat message of exactly `len` bytes: metadata, a mentions array and an attachments
/// array that grow with size, and `content` padded to reach the length.
fn chat_message(len: usize) -> String {
    let attachments: Vec<String> = (0..len / 1_024)
        .map(|i| {
            format!(
                r#"{{"kind":"image","name":"photo-{i}.jpg","bytes":{},"w":640,"h":480}}"#,
                1_000 + i
            )
        })
        .collect();
    let head = format!(
        concat!(
            r#"{{"type":"message","conversation_id":"c-7f3a9b2e","id":"m-000142","to":"user-4821","#,
            r#""meta":{{"client":"web","version":"2.4.1","sent_at":1733337600123}},"#,
            r#""mentions":["user-1","user-2"],"attachments":[{}],"content":""#
        ),
        attachments.join(",")
    );
    let tail = "\"}";
    let mut content = String::new();
    while head.len() + content.len() + tail.len() < len {
        content.push_str(PARAGRAPH);
    }
    // Trim at a point that leaves no split escape or character.
    while head.len() + content.len() + tail.len() > len || content.ends_with('\\') {
        if content.pop().is_none() {
            break;
        }
    }
    while head.len() + content.len() + tail.len() < len {
        content.push('.');
    }
    format!("{head}{content}{tail}")
}

fn fixtures() -> Vec<(&'static str, String)> {
    let fixtures = vec![
        ("128B", CHAT_128.to_owned()),
        ("1KiB", chat_message(1_024)),
        ("10KiB", chat_message(10_240)),
    ];
    let rules = MessageRules::default();
    for (name, text) in &fixtures {
        assert!(
            check(text.as_bytes(), &rules).is_ok(),
            "fixture {name} must pass check"
        );
        assert!(
            serde_json::from_str::<IgnoredAny>(text).is_ok(),
            "fixture {name} is JSON"
        );
    }
    assert_eq!(CHAT_128.len(), 128);
    fixtures
}

fn json_candidates(c: &mut Criterion) {
    let rules = MessageRules::default();
    let mut tree = PointerTree::new();
    for key in ["conversation_id", "content", "id", "to"] {
        tree.add_path([key]);
    }

    for (name, text) in fixtures() {
        let mut group = c.benchmark_group(format!("message_check/{name}"));
        group.throughput(Throughput::Bytes(text.len() as u64));
        let bytes = text.as_bytes();

        group.bench_function(BenchmarkId::from_parameter("framegate_check"), |b| {
            b.iter(|| check(black_box(bytes), &rules).map(|checked| checked.id.is_some()))
        });
        group.bench_function(BenchmarkId::from_parameter("framegate_check_str"), |b| {
            b.iter(|| check_str(black_box(&text), &rules).map(|checked| checked.id.is_some()))
        });
        group.bench_function(BenchmarkId::from_parameter("serde_json_ignored_any"), |b| {
            b.iter(|| serde_json::from_str::<IgnoredAny>(black_box(&text)).is_ok())
        });
        group.bench_function(BenchmarkId::from_parameter("sonic_ignored_any"), |b| {
            b.iter(|| sonic_rs::from_str::<IgnoredAny>(black_box(&text)).is_ok())
        });
        group.bench_function(BenchmarkId::from_parameter("sonic_lazy_value"), |b| {
            b.iter(|| {
                sonic_rs::from_str::<sonic_rs::LazyValue<'_>>(black_box(&text))
                    .map(|value| value.as_raw_str().len())
            })
        });
        group.bench_function(BenchmarkId::from_parameter("sonic_owned_lazy_value"), |b| {
            b.iter(|| sonic_rs::from_str::<sonic_rs::OwnedLazyValue>(black_box(&text)).is_ok())
        });
        group.bench_function(BenchmarkId::from_parameter("sonic_to_object_iter"), |b| {
            b.iter(|| {
                let mut members = 0;
                for member in sonic_rs::to_object_iter(black_box(text.as_str())) {
                    if member.is_err() {
                        return None;
                    }
                    members += 1;
                }
                Some(members)
            })
        });
        group.bench_function(BenchmarkId::from_parameter("sonic_get_many"), |b| {
            b.iter(|| {
                sonic_rs::get_many(black_box(text.as_str()), &tree)
                    .map(|values| values.iter().flatten().count())
            })
        });
        group.finish();
    }
}

fn rate_limit(c: &mut Criterion) {
    let start = Instant::now();
    let mut bucket = TokenBucket::new(1_000, 1_000_000, start);
    let mut now = start;
    c.bench_function("ratelimit/try_take", |b| {
        b.iter(|| {
            now += Duration::from_nanos(1);
            bucket.try_take(black_box(now))
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = json_candidates, rate_limit
}
criterion_main!(benches);
