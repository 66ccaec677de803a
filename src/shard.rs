//! Consistent hashing that maps a user key to the worker shard that owns it.
//!
//! framegate runs one worker per core, and every connection of one user must land on the same
//! worker so that per-user state needs no locks. This module owns that mapping and nothing else.
//! It does no I/O, reads no clock and logs nothing. It hashes the key as the exact bytes it is
//! given (the UTF-8 of the JWT `sub` claim), with no Unicode normalization, case folding or
//! trimming, so `"é"` (U+00E9) and `"e\u{301}"` can map to different shards.
//!
//! # Scheme
//!
//! `owner(key) = jump(xxh3_64(key), shards)`:
//!
//! 1. [`key_hash`] hashes the key bytes with XXH3-64: `XXH3_64bits` of the reference xxHash
//!    library, seed 0, default secret. XXH3 is described in the xxHash specification (version
//!    0.2.0) and its output has been fixed since xxHash release v0.8.0.
//! 2. Jump consistent hash (John Lamping and Eric Veach, "A Fast, Minimal Memory, Consistent
//!    Hash Algorithm", 2014, arXiv:1406.2294) turns that 64-bit hash into a shard index in
//!    `0..shards`.
//!
//! Jump hash needs no table and does O(ln shards) steps per key, and its only parameter is the
//! shard count. A ring of virtual nodes needs about a thousand points per shard before the
//! fullest shard stays within 10 % of the mean at 64 shards, which is a 64,000-entry table and
//! a binary search per key.
//!
//! Jump hash has no virtual nodes and no weights. Shards can only be added or removed at the
//! end: going from `n` to `n + 1` shards moves about `1 / (n + 1)` of the keys, all of them to
//! the new shard `n`. Removing any shard other than the last one renumbers the shards above it
//! and moves far more keys. Workers are numbered `0..shards`, which fits this constraint.

#![forbid(unsafe_code)]

use xxhash_rust::xxh3::xxh3_64;

/// Largest shard count that [`Ring::new`] accepts.
///
/// One shard is one worker thread pinned to a core, so a larger count is a configuration error.
/// The bound also keeps every intermediate value of the jump step below 2^41, far inside the
/// range where an `f64` represents integers exactly.
pub const MAX_SHARDS: usize = 1024;

/// Multiplier of the 64-bit linear congruential generator in jump consistent hash.
const JUMP_LCG_MULTIPLIER: u64 = 2_862_933_555_777_941_757;

/// 2^31, the numerator of the jump step.
const JUMP_STEP_NUMERATOR: f64 = 2_147_483_648.0;

/// Invalid shard count passed to [`Ring::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// More shards than [`MAX_SHARDS`].
    #[error("{shards} shards requested, but at most {max_shards} are supported")]
    TooManyShards {
        /// Requested shard count.
        shards: usize,
        /// The limit, [`MAX_SHARDS`].
        max_shards: usize,
    },

    /// A shard count of zero.
    #[error("0 shards requested, but at least 1 is required")]
    ZeroShards,
}

/// Consistent-hash mapping from user keys to shard indexes `0..shards`.
///
/// The ring stores only the shard count. Two rings with the same count map every key to the
/// same shard in any process. The mapping uses only integer and IEEE-754 binary64 arithmetic,
/// so it is the same on every target whose `f64` follows IEEE-754, which excludes only 32-bit
/// x86 targets without SSE2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ring {
    /// INVARIANT: `1 <= shards <= MAX_SHARDS`.
    shards: u16,
}

impl Ring {
    /// Creates a ring over `shards` shards, numbered `0..shards`.
    ///
    /// # Errors
    ///
    /// [`RingError::ZeroShards`] for 0 and [`RingError::TooManyShards`] above [`MAX_SHARDS`].
    pub fn new(shards: usize) -> Result<Self, RingError> {
        if shards == 0 {
            return Err(RingError::ZeroShards);
        }
        let count = match u16::try_from(shards) {
            Ok(count) if shards <= MAX_SHARDS => count,
            _ => {
                return Err(RingError::TooManyShards {
                    shards,
                    max_shards: MAX_SHARDS,
                });
            }
        };

        Ok(Self { shards: count })
    }

    /// Number of shards, between 1 and [`MAX_SHARDS`].
    #[must_use]
    pub fn shards(&self) -> usize {
        usize::from(self.shards)
    }

    /// Returns the index in `0..self.shards()` of the shard that owns `key`.
    #[must_use = "the owner is the shard that must serve this key"]
    pub fn owner(&self, key: &[u8]) -> usize {
        self.owner_of_hash(key_hash(key))
    }

    /// Maps a hash from [`key_hash`] to its shard, for callers that already hashed the key.
    #[must_use = "the owner is the shard that must serve this key"]
    pub fn owner_of_hash(&self, hash: u64) -> usize {
        usize::from(jump_consistent_hash(hash, self.shards))
    }
}

/// Hashes a key with XXH3-64 (seed 0, default secret), the first step of [`Ring::owner`].
#[must_use]
pub fn key_hash(key: &[u8]) -> u64 {
    xxh3_64(key)
}

/// Runs jump consistent hash on `hash` and returns a bucket in `0..buckets`.
///
/// Each step draws the next value of a 64-bit linear congruential generator and jumps to the
/// next bucket count at which the key would move. The function returns the last jump target
/// below `buckets`. Other languages must reproduce the result bit for bit, so the arithmetic
/// matches the published C++ version operation for operation. The generator wraps modulo
/// 2^64. The step divides 2^31 by `(state >> 33) + 1` in IEEE-754 binary64, multiplies the
/// quotient by `bucket + 1`, and truncates toward zero. `tests::jump_reference` is that C++
/// loop in signed 64-bit integers, and a property test checks that both agree.
///
/// This version compares the product with `buckets` before truncating, which gives the same
/// loop exit because `buckets` is an integer, and keeps every integer in `u16`. Both changes
/// avoid the slower conversions between `f64` and 64-bit unsigned integers.
///
/// `buckets` must be at least 1, as every ring's shard count is.
fn jump_consistent_hash(hash: u64, buckets: u16) -> u16 {
    let limit = f64::from(buckets);
    let mut state = hash;
    let mut bucket: u16 = 0;
    let mut next = 0.0;

    while next < limit {
        // `next` lies in `0.0..limit` and `limit` is at most MAX_SHARDS, so this cast
        // truncates toward zero and never saturates.
        bucket = next as u16;
        state = state.wrapping_mul(JUMP_LCG_MULTIPLIER).wrapping_add(1);

        // `(state >> 33) + 1` is at most 2^31, so the conversion to `f64` is exact, and
        // `bucket + 1` is at most MAX_SHARDS, so it cannot overflow `u16`.
        let step = JUMP_STEP_NUMERATOR / ((state >> 33) + 1) as f64;
        next = f64::from(bucket + 1) * step;
    }

    bucket
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Keys per sweep. At 64 shards the expected count per shard is 3125 with a standard
    /// deviation near 56, so the 1.10 balance bound is more than 5 standard deviations above it.
    const SWEEP_KEYS: usize = 200_000;

    /// Largest shard count in the sweep. Growth is checked from every `n` up to this count to `n + 1`.
    const SWEEP_MAX_SHARDS: usize = 64;

    /// Largest allowed ratio of the fullest shard's key count to the mean count.
    const MAX_LOAD_RATIO: f64 = 1.10;

    /// Largest allowed moved fraction when growing to `n + 1` shards, as a multiple of `1 / (n + 1)`.
    const MAX_MOVED_FACTOR: f64 = 1.15;

    /// Returns the next output of SplitMix64, a small seeded generator for reproducible keys.
    fn splitmix64(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Builds `count` keys from `seed` in three shapes that identity providers use for `sub`:
    /// sequential ids (`user-<n>`), UUIDs in lowercase hex, and random alphanumeric strings.
    fn sweep_keys(seed: u64, count: usize) -> Vec<Vec<u8>> {
        const ALPHANUMERIC: &[u8] =
            b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

        let mut state = seed;
        let first_id = splitmix64(&mut state) % 1_000_000_000;
        let mut keys = Vec::with_capacity(count);
        for index in 0..count {
            let draw = splitmix64(&mut state);
            let key = match index % 3 {
                0 => format!("user-{}", first_id + index as u64).into_bytes(),
                1 => {
                    let low = splitmix64(&mut state);
                    format!(
                        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
                        draw >> 32,
                        (draw >> 16) & 0xFFFF,
                        draw & 0x0FFF,
                        0x8000 | (low >> 48) & 0x3FFF,
                        low & 0xFFFF_FFFF_FFFF,
                    )
                    .into_bytes()
                }
                _ => {
                    let len = 1 + (draw % 40) as usize;
                    (0..len)
                        .map(|_| {
                            let pick =
                                (splitmix64(&mut state) % ALPHANUMERIC.len() as u64) as usize;
                            ALPHANUMERIC[pick]
                        })
                        .collect()
                }
            };
            keys.push(key);
        }
        keys
    }

    /// Checks balance for every shard count `1..=SWEEP_MAX_SHARDS` and key movement for every
    /// growth from `n` to `n + 1` shards, hashing each key once and reusing the hash.
    fn assert_sweep_properties(seed: u64) {
        let hashes: Vec<u64> = sweep_keys(seed, SWEEP_KEYS)
            .iter()
            .map(|key| key_hash(key))
            .collect();
        let mut previous = vec![0_usize; hashes.len()];

        for shards in 1..=SWEEP_MAX_SHARDS + 1 {
            let ring = Ring::new(shards).unwrap();
            let owners: Vec<usize> = hashes
                .iter()
                .map(|&hash| ring.owner_of_hash(hash))
                .collect();

            if shards <= SWEEP_MAX_SHARDS {
                let mut counts = vec![0_usize; shards];
                for &owner in &owners {
                    counts[owner] += 1;
                }
                let max_count = *counts.iter().max().unwrap();
                let mean_count = SWEEP_KEYS as f64 / shards as f64;
                let ratio = max_count as f64 / mean_count;
                assert!(
                    ratio <= MAX_LOAD_RATIO,
                    "seed {seed:#x}, {shards} shards: max/mean is {ratio:.4}, above {MAX_LOAD_RATIO}"
                );
            }

            if shards > 1 {
                let new_shard = shards - 1;
                let mut moved = 0_usize;
                for (&before, &after) in previous.iter().zip(&owners) {
                    if before == after {
                        continue;
                    }
                    moved += 1;
                    assert_eq!(
                        after, new_shard,
                        "seed {seed:#x}: a key moved from shard {before} to {after} when growing to {shards} shards"
                    );
                }
                let limit = MAX_MOVED_FACTOR * SWEEP_KEYS as f64 / shards as f64;
                assert!(
                    moved as f64 <= limit,
                    "seed {seed:#x}: growing to {shards} shards moved {moved} keys, above {limit:.0}"
                );
            }

            previous = owners;
        }
    }

    /// Jump consistent hash as published in C++, in signed 64-bit integers: the plain twin of
    /// [`jump_consistent_hash`].
    fn jump_reference(hash: u64, buckets: i64) -> i64 {
        let mut key = hash;
        let mut bucket: i64 = -1;
        let mut next: i64 = 0;
        while next < buckets {
            bucket = next;
            key = key.wrapping_mul(JUMP_LCG_MULTIPLIER).wrapping_add(1);
            next = ((bucket + 1) as f64 * (JUMP_STEP_NUMERATOR / ((key >> 33) + 1) as f64)) as i64;
        }
        bucket
    }

    #[test]
    fn ring_new_rejects_zero_shards() {
        assert_eq!(Ring::new(0), Err(RingError::ZeroShards));
    }

    #[test]
    fn ring_new_rejects_more_than_max_shards() {
        assert_eq!(
            Ring::new(MAX_SHARDS + 1),
            Err(RingError::TooManyShards {
                shards: MAX_SHARDS + 1,
                max_shards: MAX_SHARDS,
            })
        );
        assert!(Ring::new(usize::MAX).is_err());
    }

    #[test]
    fn ring_new_accepts_one_and_max_shards() {
        assert_eq!(Ring::new(1).map(|ring| ring.shards()), Ok(1));
        assert_eq!(
            Ring::new(MAX_SHARDS).map(|ring| ring.shards()),
            Ok(MAX_SHARDS)
        );
    }

    #[test]
    fn ring_error_display_names_value_and_limit() {
        let too_many = RingError::TooManyShards {
            shards: 2000,
            max_shards: MAX_SHARDS,
        };
        assert_eq!(
            too_many.to_string(),
            "2000 shards requested, but at most 1024 are supported"
        );
        assert_eq!(
            RingError::ZeroShards.to_string(),
            "0 shards requested, but at least 1 is required"
        );
    }

    /// Values from the reference C library (xxHash 0.8.4, through the Python `xxhash` 4.1.0
    /// package). The lengths cover each XXH3 input-size path: 0, 1-3, 4-8, 9-16, 17-128,
    /// 129-240 and above 240 bytes.
    #[test]
    fn key_hash_matches_xxh3_reference_values() {
        let cases: [(Vec<u8>, u64); 9] = [
            (b"".to_vec(), 0x2D06_8005_38D3_94C2),
            (b"a".to_vec(), 0xE6C6_32B6_1E96_4E1F),
            (b"abc".to_vec(), 0x78AF_5F94_892F_3950),
            (b"user-42".to_vec(), 0x50FE_4B21_CF7B_09CD),
            (b"auth0|5f7c8ec7".to_vec(), 0xED4F_7544_6717_6894),
            (
                b"3f2504e0-4f89-41d3-9a0c-0305e82c3301".to_vec(),
                0x5B95_0C50_BF78_737F,
            ),
            (vec![b'x'; 200], 0x50EF_124F_B1E4_DE53),
            (vec![b'x'; 241], 0x14DA_9E5C_301A_6A1D),
            (vec![b'x'; 1500], 0x2E4E_1215_B7AD_E75E),
        ];
        for (key, expected) in cases {
            assert_eq!(
                key_hash(&key),
                expected,
                "xxh3_64 of a {}-byte key",
                key.len()
            );
        }
    }

    /// Values published with another implementation of the same algorithm, the ClickHouse
    /// test `tests/queries/0_stateless/00580_consistent_hashing_functions` of `jumpConsistentHash`.
    #[test]
    fn jump_matches_published_reference_values() {
        let cases: [(u64, u16, u16); 6] = [
            (1, 1, 0),
            (42, 57, 43),
            (256, 1_024, 520),
            (0xDEAD_10CC, 1, 0),
            (0xDEAD_10CC, 666, 361),
            (16_045_690_984_833_335_023, 255, 237),
        ];
        for (hash, buckets, expected) in cases {
            assert_eq!(
                jump_consistent_hash(hash, buckets),
                expected,
                "jump({hash}, {buckets})"
            );
        }
    }

    #[test]
    fn owner_with_one_shard_is_zero() {
        let ring = Ring::new(1).unwrap();
        for key in [&b""[..], b"user-1", "ユーザー".as_bytes(), &[0xFF; 300]] {
            assert_eq!(ring.owner(key), 0);
        }
    }

    #[test]
    fn owner_with_max_shards_stays_in_range() {
        let ring = Ring::new(MAX_SHARDS).unwrap();
        for hash in [0, 1, u64::MAX, u64::MAX - 1, 1 << 63, 0x2D06_8005_38D3_94C2] {
            assert!(ring.owner_of_hash(hash) < MAX_SHARDS, "hash {hash:#x}");
        }
    }

    /// Runs the full sweep once with a fixed seed, so the check also runs when proptest
    /// generates no new case.
    #[test]
    fn ring_sweep_fixed_seed_meets_bounds() {
        assert_sweep_properties(0x5EED_0FF1_2A3E_60A7);
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            // Each case hashes 200,000 keys and maps them 65 times. Debug builds run one
            // random case, release builds run four.
            cases: if cfg!(debug_assertions) { 1 } else { 4 },
            ..ProptestConfig::default()
        })]

        #[test]
        fn ring_sweep_random_seed_meets_bounds(seed in any::<u64>()) {
            assert_sweep_properties(seed);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

        #[test]
        fn jump_matches_reference_twin(hash in any::<u64>(), buckets in 1..=1_024_u16) {
            prop_assert_eq!(
                i64::from(jump_consistent_hash(hash, buckets)),
                jump_reference(hash, i64::from(buckets))
            );
        }
    }

    proptest! {
        #[test]
        fn owner_equals_owner_of_key_hash(
            key in proptest::collection::vec(any::<u8>(), 0..300),
            shards in 1..=MAX_SHARDS,
        ) {
            let ring = Ring::new(shards).unwrap();
            prop_assert_eq!(ring.owner(&key), ring.owner_of_hash(key_hash(&key)));
        }

        #[test]
        fn owner_moves_only_to_new_shard(
            key in proptest::collection::vec(any::<u8>(), 0..300),
            shards in 1..MAX_SHARDS,
        ) {
            let before = Ring::new(shards).unwrap().owner(&key);
            let after = Ring::new(shards + 1).unwrap().owner(&key);
            prop_assert!(before < shards);
            prop_assert!(after == before || after == shards, "moved from {} to {}", before, after);
        }

        #[test]
        fn owner_of_any_hash_is_below_shard_count(hash in any::<u64>(), shards in 1..=MAX_SHARDS) {
            prop_assert!(Ring::new(shards).unwrap().owner_of_hash(hash) < shards);
        }
    }
}
