//! Pins the shard of fixed keys so that any change that moves users between workers fails.
//!
//! `data/ring_vectors.txt` contains `N<TAB>key<TAB>shard` lines computed by an implementation
//! outside this crate: XXH3-64 from the reference C library and jump consistent hash in
//! another language. Every line must match `framegate::shard::Ring::owner`.

use std::collections::BTreeSet;

use framegate::shard::Ring;

const VECTORS: &str = include_str!("data/ring_vectors.txt");

/// Shard counts that the vectors file must cover.
const EXPECTED_SHARD_COUNTS: [usize; 8] = [1, 2, 3, 4, 7, 8, 16, 64];

/// One parsed line of the vectors file.
struct Vector<'a> {
    line_number: usize,
    shards: usize,
    key: &'a str,
    shard: usize,
}

/// Parses every non-comment line, panicking with the line number on a malformed one.
fn parse_vectors() -> Vec<Vector<'static>> {
    let mut vectors = Vec::new();
    for (index, line) in VECTORS.lines().enumerate() {
        let line_number = index + 1;
        if line.is_empty() || line.starts_with('#') {
            continue;
        }

        let fields: Vec<&str> = line.split('\t').collect();
        let [shards, key, shard] = fields[..] else {
            panic!(
                "line {line_number}: expected 3 tab-separated fields, found {}",
                fields.len()
            );
        };
        let shards = shards
            .parse()
            .unwrap_or_else(|error| panic!("line {line_number}: invalid N {shards:?}: {error}"));
        let shard = shard
            .parse()
            .unwrap_or_else(|error| panic!("line {line_number}: invalid shard {shard:?}: {error}"));

        vectors.push(Vector {
            line_number,
            shards,
            key,
            shard,
        });
    }
    vectors
}

#[test]
fn ring_vectors_cover_every_shard_count() {
    let vectors = parse_vectors();
    let shard_counts: BTreeSet<usize> = vectors.iter().map(|vector| vector.shards).collect();

    assert_eq!(
        shard_counts,
        BTreeSet::from(EXPECTED_SHARD_COUNTS),
        "shard counts in the vectors file"
    );
    for shards in EXPECTED_SHARD_COUNTS {
        let keys = vectors
            .iter()
            .filter(|vector| vector.shards == shards)
            .count();
        assert!(keys >= 30, "only {keys} vectors for {shards} shards");
    }
}

#[test]
fn ring_vectors_cover_special_keys() {
    let vectors = parse_vectors();

    assert!(
        vectors.iter().any(|vector| vector.key.is_empty()),
        "no empty key"
    );
    assert!(
        vectors.iter().any(|vector| !vector.key.is_ascii()),
        "no non-ASCII key"
    );
    assert!(
        vectors.iter().any(|vector| vector.key.len() > 1_024),
        "no key longer than 1024 bytes"
    );
}

#[test]
fn ring_owner_matches_every_vector() {
    for vector in parse_vectors() {
        let ring = Ring::new(vector.shards).unwrap_or_else(|error| {
            panic!("line {}: {error}", vector.line_number);
        });

        assert_eq!(
            ring.owner(vector.key.as_bytes()),
            vector.shard,
            "line {}: owner of {:?} on {} shards",
            vector.line_number,
            vector.key,
            vector.shards
        );
    }
}
