//! Word-at-a-time scans for the two long runs of a request head: field values and the
//! request target.
//!
//! Each scan tests 8 bytes at once with integer arithmetic on a `u64` (SWAR: SIMD within a
//! register). Both return the same offset as the plain table scan (`chars::skip`), which
//! the tests check byte for byte. The code is portable safe Rust, so it also runs under
//! Miri.
//!
//! Tokens (methods and field names) keep the plain table scan: they are short, and an
//! 8-byte table lookup without branches measured slower than the plain loop.

#![forbid(unsafe_code)]

use crate::http::chars::{FIELD_VALUE, TARGET, is, skip};

/// Width of one word in bytes.
const WORD: usize = 8;

/// `0x01` in every byte of a word.
const ONES: u64 = u64::from_le_bytes([0x01; WORD]);

/// `0x80` in every byte of a word.
const HIGH_BITS: u64 = u64::from_le_bytes([0x80; WORD]);

/// Returns the offset of the first byte at or after `from` that cannot be part of a field
/// value, or `bytes.len()`. Same result as `skip(bytes, from, &FIELD_VALUE)`.
#[inline]
pub(crate) fn skip_field_value(bytes: &[u8], from: usize) -> usize {
    // Field values exclude the bytes below 0x20 and DEL (0x7F). HTAB is below 0x20 but
    // allowed, so `skip_words` checks each flagged byte against the table.
    skip_words(bytes, from, &FIELD_VALUE, |word| {
        bytes_below(word, 0x20) | bytes_equal(word, 0x7F)
    })
}

/// Returns the offset of the first byte at or after `from` that cannot be part of a request
/// target, or `bytes.len()`. Same result as `skip(bytes, from, &TARGET)`.
#[inline]
pub(crate) fn skip_target(bytes: &[u8], from: usize) -> usize {
    // Target bytes are 0x21 to 0x7E without `#`, so bytes below 0x21, `#`, DEL and bytes
    // with the high bit set end the run.
    skip_words(bytes, from, &TARGET, |word| {
        bytes_below(word, 0x21)
            | bytes_equal(word, b'#')
            | bytes_equal(word, 0x7F)
            | (word & HIGH_BITS)
    })
}

/// Returns the offset of the first `needle` in `bytes`. Same result as
/// `bytes.iter().position(|&byte| byte == needle)`.
#[inline]
pub(crate) fn find_byte(bytes: &[u8], needle: u8) -> Option<usize> {
    let (words, tail) = bytes.as_chunks::<WORD>();
    for (index, word) in words.iter().enumerate() {
        let flags = bytes_equal(u64::from_le_bytes(*word), needle);
        if flags != 0 {
            return Some(index * WORD + first_set(flags) / 8);
        }
    }
    let offset = tail.iter().position(|&byte| byte == needle)?;
    Some(words.len() * WORD + offset)
}

/// Scans whole words until `flagged` marks a byte, then checks that byte against `class`.
/// A byte outside the class ends the run. A byte inside it is a false alarm, such as HTAB
/// in a value, so the scan goes on after it. The tail shorter than a word is scanned byte
/// by byte.
///
/// `flagged` returns a word with the high bit of each flagged byte set. Only its lowest set
/// bit is used, and it must belong to the first byte in the flagged set. The helpers below
/// may also set higher bits spuriously, which does no harm.
#[inline(always)]
fn skip_words(
    bytes: &[u8],
    from: usize,
    class: &[bool; 256],
    flagged: impl Fn(u64) -> u64,
) -> usize {
    let mut pos = from;
    'scan: loop {
        let rest = bytes.get(pos..).unwrap_or_default();
        let (words, _) = rest.as_chunks::<WORD>();
        for (index, word) in words.iter().enumerate() {
            let flags = flagged(u64::from_le_bytes(*word));
            if flags == 0 {
                continue;
            }
            // `from_le_bytes` puts the first byte in the lowest bits.
            let stop = pos + index * WORD + first_set(flags) / 8;
            match bytes.get(stop) {
                Some(&byte) if is(class, byte) => {
                    pos = stop + 1;
                    continue 'scan;
                }
                _ => return stop,
            }
        }
        return skip(bytes, pos + words.len() * WORD, class);
    }
}

/// Returns the index of the lowest set bit of a nonzero `bits`.
#[inline(always)]
fn first_set(bits: u64) -> usize {
    // A u64 has at most 64 trailing zeros, which every usize can hold.
    usize::try_from(bits.trailing_zeros()).unwrap_or(usize::MAX)
}

/// Flags the bytes of `word` below `limit`, for `limit <= 0x80`. Subtracting `limit` from a
/// byte below it sets the byte's high bit, and `!word` drops bytes whose high bit was set
/// already. The borrow can also flag the byte above a flagged one, so only the lowest flag
/// is exact.
#[inline(always)]
fn bytes_below(word: u64, limit: u8) -> u64 {
    word.wrapping_sub(ONES * u64::from(limit)) & !word & HIGH_BITS
}

/// Flags the bytes of `word` equal to `byte`, with the same exact lowest flag as
/// [`bytes_below`].
#[inline(always)]
fn bytes_equal(word: u64, byte: u8) -> u64 {
    bytes_below(word ^ (ONES * u64::from(byte)), 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks both scans against the plain table scan for `bytes` from every start offset.
    fn assert_twins_agree(bytes: &[u8]) {
        for from in 0..=bytes.len() + 1 {
            let context = bytes.escape_ascii().to_string();
            assert_eq!(
                skip_field_value(bytes, from),
                skip(bytes, from, &FIELD_VALUE),
                "field value from {from}: {context}"
            );
            assert_eq!(
                skip_target(bytes, from),
                skip(bytes, from, &TARGET),
                "target from {from}: {context}"
            );
        }
    }

    #[test]
    fn find_byte_agrees_with_position() {
        for len in 0..20 {
            for position in 0..=len {
                for needle in [b';', 0x00, 0xFF, 0x3A] {
                    let mut bytes = vec![b'a'; len];
                    if let Some(slot) = bytes.get_mut(position) {
                        *slot = needle;
                    }
                    // A second needle after the first must not change the result.
                    if let Some(slot) = bytes.get_mut(position + 3) {
                        *slot = needle;
                    }
                    let expected = bytes.iter().position(|&byte| byte == needle);
                    assert_eq!(
                        find_byte(&bytes, needle),
                        expected,
                        "{len} {position} {needle}"
                    );
                }
            }
        }
    }

    #[test]
    fn scans_match_tables_for_every_byte() {
        // A 20-byte run puts the probe in the first word, the second word and the tail, at
        // every offset within a word.
        for byte in 0..=u8::MAX {
            for position in 0..20 {
                let mut bytes = [b'a'; 20];
                if let Some(slot) = bytes.get_mut(position) {
                    *slot = byte;
                }
                assert_twins_agree(&bytes);
            }
        }
    }

    #[test]
    fn scans_agree_with_tables_on_mixed_inputs() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let alphabet = [
            b'a', b' ', b'\t', b'\r', b'\n', b':', b'"', 0x00, 0x1F, 0x21, 0x7E, 0x7F, 0x80, 0xFF,
        ];
        for len in 0..40 {
            for _ in 0..50 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        // A cheap xorshift keeps the inputs deterministic.
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        // Mostly plain bytes, so that runs reach past a word.
                        let pick = usize::try_from(seed % 64).unwrap_or(0);
                        alphabet.get(pick).copied().unwrap_or(b'x')
                    })
                    .collect();
                assert_twins_agree(&bytes);
            }
        }
    }

    #[test]
    fn bytes_below_lowest_flag_is_first_matching_byte() {
        for position in 0..WORD {
            // Bytes equal to the limit sit above the match, where a borrow could flag them.
            let mut bytes = [0x20u8; WORD];
            if let Some(slot) = bytes.get_mut(position) {
                *slot = 0x1F;
            }
            let flags = bytes_below(u64::from_le_bytes(bytes), 0x20);
            assert_eq!(first_set(flags) / 8, position);
        }
        assert_eq!(bytes_below(u64::from_le_bytes([0x20; WORD]), 0x20), 0);
        assert_eq!(bytes_below(u64::from_le_bytes([0xFF; WORD]), 0x20), 0);
    }

    #[test]
    fn bytes_equal_lowest_flag_is_first_matching_byte() {
        for position in 0..WORD {
            let mut bytes = [0x80u8; WORD];
            if let Some(slot) = bytes.get_mut(position) {
                *slot = 0x7F;
            }
            let flags = bytes_equal(u64::from_le_bytes(bytes), 0x7F);
            assert_eq!(first_set(flags) / 8, position);
        }
        assert_eq!(bytes_equal(u64::from_le_bytes([0x7E; WORD]), 0x7F), 0);
    }
}
