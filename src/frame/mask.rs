//! Payload masking (RFC 6455 §5.3): XOR with a 4-byte key, resumable at any payload offset.
//!
//! Byte `i` of a payload is XORed with `key[i % 4]`. Because a payload is unmasked piecewise as
//! it arrives, both functions take `offset`, the number of payload bytes already processed
//! before `buf`. [`apply_mask`] is the fast path: 8 bytes at a time, compiled for AVX2 when the
//! CPU has it. [`apply_mask_plain`] is its byte-at-a-time twin, the reference in tests and the
//! path taken under Miri. This is the only file in `frame/` with `unsafe`: one call into an
//! AVX2-compiled function after a runtime CPU check.

/// XORs `buf` with `key`, starting at key phase `offset % 4`.
///
/// `offset` is the number of payload bytes masked before `buf`, so masking a payload in any
/// number of pieces gives the same result as masking it whole. Applying the mask twice restores
/// the input.
#[inline]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    #[cfg(miri)]
    {
        apply_mask_plain(buf, key, offset);
    }

    #[cfg(all(not(miri), target_arch = "x86_64"))]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: `apply_mask_avx2` only requires the AVX2 target feature, and the runtime
            // check above confirmed that this CPU supports it.
            unsafe { apply_mask_avx2(buf, key, offset) };
        } else {
            apply_mask_words(buf, key, offset);
        }
    }

    #[cfg(all(not(miri), not(target_arch = "x86_64")))]
    {
        apply_mask_words(buf, key, offset);
    }
}

/// XORs `buf` with `key` one byte at a time, starting at key phase `offset % 4`.
///
/// It gives the same result as [`apply_mask`] and serves as the reference in tests and as the
/// path taken under Miri.
pub fn apply_mask_plain(buf: &mut [u8], key: [u8; 4], offset: usize) {
    for (byte, key_byte) in buf.iter_mut().zip(key.iter().cycle().skip(offset % 4)) {
        *byte ^= key_byte;
    }
}

/// Masks `buf` 8 bytes at a time using only the baseline target features.
#[cfg(not(miri))]
fn apply_mask_words(buf: &mut [u8], key: [u8; 4], offset: usize) {
    xor_words(buf, key, offset);
}

/// Masks `buf` with the same loop as [`apply_mask_words`], compiled with AVX2 so that LLVM can
/// use 32-byte vector operations.
#[cfg(all(not(miri), target_arch = "x86_64"))]
#[target_feature(enable = "avx2")]
fn apply_mask_avx2(buf: &mut [u8], key: [u8; 4], offset: usize) {
    xor_words(buf, key, offset);
}

/// XORs `buf` with `key` in 8-byte words, then the last 0-7 bytes one at a time.
#[cfg(not(miri))]
#[inline(always)]
fn xor_words(buf: &mut [u8], key: [u8; 4], offset: usize) {
    // Rotate the key so that its byte 0 applies to buf[0].
    // Byte 0 of a little-endian word is its low byte, so rotating the word right by 8 bits
    // moves each key byte one place towards the start. `<[u8; 4]>::rotate_left` is not inlined.
    let phased = u32::from_le_bytes(key)
        .rotate_right(8 * (offset % 4) as u32)
        .to_le_bytes();
    let [k0, k1, k2, k3] = phased;
    let key_word = u64::from_ne_bytes([k0, k1, k2, k3, k0, k1, k2, k3]);

    let (words, tail) = buf.as_chunks_mut::<8>();
    for word in words {
        *word = (u64::from_ne_bytes(*word) ^ key_word).to_ne_bytes();
    }

    // The tail starts at a multiple of 8 bytes, so it is at key phase 0 of `phased`.
    for (byte, key_byte) in tail.iter_mut().zip(phased.iter().cycle()) {
        *byte ^= key_byte;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 4] = [0x6D, 0xB6, 0xB2, 0x80];

    #[cfg(not(miri))]
    const MAX_ALIGN: usize = 64;
    #[cfg(miri)]
    const MAX_ALIGN: usize = 9;

    #[cfg(not(miri))]
    const MAX_LEN: usize = 300;
    #[cfg(miri)]
    const MAX_LEN: usize = 40;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|index| (index * 7 + 3) as u8).collect()
    }

    /// Checks `fast` against `apply_mask_plain` at every alignment, offset and small length.
    fn check_against_plain(fast: impl Fn(&mut [u8], [u8; 4], usize)) {
        let source = pattern(MAX_LEN + MAX_ALIGN);
        for align in 0..MAX_ALIGN {
            for offset in 0..4 {
                for len in 0..=MAX_LEN {
                    let mut expected = source.clone();
                    let mut actual = source.clone();
                    apply_mask_plain(&mut expected[align..align + len], KEY, offset);
                    fast(&mut actual[align..align + len], KEY, offset);
                    assert_eq!(actual, expected, "align {align} offset {offset} len {len}");
                }
            }
        }
    }

    #[test]
    fn apply_mask_matches_plain_at_every_alignment() {
        check_against_plain(apply_mask);
    }

    #[cfg(not(miri))]
    #[test]
    fn words_path_matches_plain_at_every_alignment() {
        check_against_plain(apply_mask_words);
    }

    #[cfg(all(not(miri), target_arch = "x86_64"))]
    #[test]
    fn avx2_path_matches_plain_at_every_alignment() {
        if !std::is_x86_feature_detected!("avx2") {
            eprintln!("skipped: this CPU has no AVX2");
            return;
        }
        // SAFETY: the check above confirmed that this CPU supports AVX2.
        check_against_plain(|buf, key, offset| unsafe { apply_mask_avx2(buf, key, offset) });
    }

    #[test]
    fn apply_mask_matches_plain_on_large_buffers() {
        let lens: &[usize] = if cfg!(miri) {
            &[1_027]
        } else {
            &[1_024, 4_093, 65_536, 65_539, 1 << 20]
        };
        for &len in lens {
            for (align, offset) in [(0, 0), (1, 3), (7, 2), (13, 1)] {
                let source = pattern(len + align);
                let mut expected = source.clone();
                let mut actual = source;
                apply_mask_plain(&mut expected[align..], KEY, offset);
                apply_mask(&mut actual[align..], KEY, offset);
                assert!(
                    actual == expected,
                    "len {len} align {align} offset {offset}"
                );
            }
        }
    }

    #[test]
    fn apply_mask_in_pieces_equals_whole() {
        let source = pattern(100);
        let mut whole = source.clone();
        apply_mask(&mut whole, KEY, 0);
        for split in 0..=source.len() {
            let mut pieces = source.clone();
            let (left, right) = pieces.split_at_mut(split);
            apply_mask(left, KEY, 0);
            apply_mask(right, KEY, split);
            assert_eq!(pieces, whole, "split {split}");
        }
    }

    #[test]
    fn apply_mask_twice_restores_input() {
        let source = pattern(77);
        let mut buf = source.clone();
        apply_mask(&mut buf, KEY, 1);
        assert_ne!(buf, source);
        apply_mask(&mut buf, KEY, 1);
        assert_eq!(buf, source);
    }

    #[test]
    fn apply_mask_plain_matches_rfc_example() {
        // RFC 6455 §5.7: a masked "Hello" text frame from a client.
        let mut payload = [0x7F, 0x9F, 0x4D, 0x51, 0x58];
        apply_mask_plain(&mut payload, [0x37, 0xFA, 0x21, 0x3D], 0);
        assert_eq!(&payload, b"Hello");
    }
}
