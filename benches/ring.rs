//! Cost of mapping one user key to its shard with `framegate::shard::Ring::owner`.
//!
//! Each iteration maps every id of a pool of `POOL_SIZE` generated user ids once, so criterion's
//! time per iteration divided by `POOL_SIZE` is the cost per key. Its throughput line gives
//! keys per second. The pool is large enough that the branch predictor cannot learn the
//! number of jump steps per key, which a handful of repeated ids would let it do.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use framegate::shard::{Ring, key_hash};

/// Number of distinct user ids that each iteration maps.
const POOL_SIZE: usize = 4_096;

/// Shard counts: a small machine, a typical server, and a large one.
const SHARD_COUNTS: [usize; 3] = [2, 16, 64];

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Returns the next output of SplitMix64, so the pool is the same in every run.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn base62(state: &mut u64, len: usize) -> String {
    (0..len)
        .map(|_| {
            let index = usize::try_from(splitmix64(state) % 62).expect("index below 62");
            char::from(BASE62[index])
        })
        .collect()
}

/// Builds JWT `sub` values in the shapes that common identity providers issue: prefixed
/// database ids, long numeric ids, UUIDs, random base62 ids, emails and sequential ids.
fn user_id_pool() -> Vec<String> {
    let mut state = 0x0B5E_55ED;
    (0..POOL_SIZE)
        .map(|index| {
            let draw = splitmix64(&mut state);
            match index % 8 {
                0 => format!(
                    "auth0|{:024x}",
                    u128::from(draw) << 32 | u128::from(draw >> 7)
                ),
                1 => format!("google-oauth2|1{draw:020}"),
                2 => format!(
                    "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
                    draw >> 32,
                    (draw >> 16) & 0xFFFF,
                    draw & 0x0FFF,
                    (draw >> 52) & 0x0FFF,
                    splitmix64(&mut state) & 0xFFFF_FFFF_FFFF,
                ),
                3 => format!("user_{}", base62(&mut state, 27)),
                4 => format!("github|{}", draw % 90_000_000 + 1_000),
                5 => format!("00u{}", base62(&mut state, 17)),
                6 => format!("{}@example.com", base62(&mut state, 10).to_lowercase()),
                _ => format!("user-{}", 1_000_000 + index),
            }
        })
        .collect()
}

fn bench_owner(c: &mut Criterion) {
    let pool = user_id_pool();
    let mut group = c.benchmark_group("ring/owner");
    group.throughput(Throughput::Elements(pool.len() as u64));

    for shards in SHARD_COUNTS {
        let ring = Ring::new(shards).expect("bench shard counts are within 1..=MAX_SHARDS");
        group.bench_with_input(BenchmarkId::from_parameter(shards), &ring, |b, ring| {
            b.iter(|| {
                for id in &pool {
                    black_box(ring.owner(black_box(id.as_bytes())));
                }
            });
        });
    }

    group.finish();
}

/// Splits `owner` into its two steps, to show which one dominates.
fn bench_steps(c: &mut Criterion) {
    let pool = user_id_pool();
    let mut group = c.benchmark_group("ring/steps");
    group.throughput(Throughput::Elements(pool.len() as u64));

    group.bench_function("key_hash", |b| {
        b.iter(|| {
            for id in &pool {
                black_box(key_hash(black_box(id.as_bytes())));
            }
        });
    });

    let hashes: Vec<u64> = pool.iter().map(|id| key_hash(id.as_bytes())).collect();
    for shards in SHARD_COUNTS {
        let ring = Ring::new(shards).expect("bench shard counts are within 1..=MAX_SHARDS");
        group.bench_with_input(
            BenchmarkId::new("owner_of_hash", shards),
            &ring,
            |b, ring| {
                b.iter(|| {
                    for &hash in &hashes {
                        black_box(ring.owner_of_hash(black_box(hash)));
                    }
                });
            },
        );
    }

    group.finish();
}

criterion_group!(benches, bench_owner, bench_steps);
criterion_main!(benches);
