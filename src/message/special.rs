//! Search for the first byte that ends a run of plain JSON string content: `"`, `\` or a control
//! byte below 0x20 (RFC 8259 §7). Every other byte, including each byte of a multi-byte UTF-8
//! character, is plain string content.
//!
//! On x86_64 the search tests 16 bytes per step with SSE2, which every x86_64 CPU has. Elsewhere
//! it tests 8 bytes per step in a general-purpose register (SWAR).

/// Returns the index and value of the first `"`, `\` or control byte (below 0x20) in `bytes`.
#[inline]
pub(super) fn find_string_special(bytes: &[u8]) -> Option<(usize, u8)> {
    let at = find(bytes)?;
    bytes.get(at).map(|&byte| (at, byte))
}

/// Returns the index of the first `"`, `\` or control byte among the first 16 bytes of `bytes`,
/// or `None` when there is none there or `bytes` is shorter than 16 bytes.
#[inline]
pub(super) fn first_special_in_16(bytes: &[u8]) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        let mask = sse2::special_mask(bytes);
        (mask != 0).then(|| mask.trailing_zeros() as usize)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        bytes.get(..16).and_then(swar::find)
    }
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn find(bytes: &[u8]) -> Option<usize> {
    const STEP: usize = 16;

    let mut at = 0;
    while let Some(chunk) = bytes.get(at..at + STEP) {
        let mask = sse2::special_mask(chunk);
        if mask != 0 {
            return Some(at + mask.trailing_zeros() as usize);
        }
        at += STEP;
    }
    if at == bytes.len() {
        return None;
    }

    // Fewer than 16 bytes are left. When the input is at least 16 bytes long, test its last 16
    // bytes and ignore the ones already tested, instead of a byte loop.
    let Some(start) = bytes.len().checked_sub(STEP) else {
        return swar::find(bytes);
    };
    let tested = at - start;
    let mask = sse2::special_mask(bytes.get(start..)?) >> tested;
    (mask != 0).then(|| at + mask.trailing_zeros() as usize)
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn find(bytes: &[u8]) -> Option<usize> {
    swar::find(bytes)
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod sse2 {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };

    /// Returns a mask with bit `i` set when `chunk[i]` is `"`, `\` or below 0x20. Only the first
    /// 16 bytes are tested; a shorter chunk gives 0.
    #[inline]
    pub(super) fn special_mask(chunk: &[u8]) -> u32 {
        if chunk.len() < 16 {
            return 0;
        }
        // SAFETY: SSE2 is part of the x86_64 baseline, so these instructions exist on every CPU
        // this code can run on. `chunk` has at least 16 readable bytes (checked above), and
        // `_mm_loadu_si128` has no alignment requirement.
        let bits = unsafe {
            let bytes = _mm_loadu_si128(chunk.as_ptr().cast());
            let quote = _mm_cmpeq_epi8(bytes, _mm_set1_epi8(b'"' as i8));
            let backslash = _mm_cmpeq_epi8(bytes, _mm_set1_epi8(b'\\' as i8));
            // `min(byte, 0x1F) == byte` is true exactly for bytes 0x00 to 0x1F (unsigned compare).
            let control = _mm_cmpeq_epi8(_mm_min_epu8(bytes, _mm_set1_epi8(0x1F)), bytes);
            _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control))
        };
        // movemask sets only the low 16 bits, so the value is never negative.
        bits.unsigned_abs()
    }
}

/// Eight bytes per step in a `u64`, for targets without SSE2 and for inputs under 16 bytes.
mod swar {
    /// Bytes 0x01 repeated.
    const LSB: u64 = 0x0101_0101_0101_0101;
    /// Bytes 0x80 repeated.
    const MSB: u64 = 0x8080_8080_8080_8080;

    /// Returns the index of the first special byte. Each per-byte test can flag false positives
    /// only in bytes above a true match, because a borrow moves only toward higher bytes, so the
    /// lowest flagged byte is exact.
    pub(super) fn find(bytes: &[u8]) -> Option<usize> {
        let mut at = 0;
        while let Some(chunk) = bytes.get(at..at + 8) {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            let mask = special_byte_mask(u64::from_le_bytes(word));
            if mask != 0 {
                // trailing_zeros() is at most 63, so the division fits any usize.
                return Some(at + (mask.trailing_zeros() / 8) as usize);
            }
            at += 8;
        }
        let tail = bytes.get(at..).unwrap_or_default();
        let index = tail
            .iter()
            .position(|&byte| byte == b'"' || byte == b'\\' || byte < 0x20)?;
        Some(at + index)
    }

    /// Sets bit 7 of each byte of `word` that may be `"`, `\` or below 0x20 (exact for the
    /// lowest).
    #[inline]
    fn special_byte_mask(word: u64) -> u64 {
        let quote = word ^ (LSB * u64::from(b'"'));
        let backslash = word ^ (LSB * u64::from(b'\\'));
        let is_quote = quote.wrapping_sub(LSB) & !quote;
        let is_backslash = backslash.wrapping_sub(LSB) & !backslash;
        let is_control = word.wrapping_sub(LSB * 0x20) & !word;
        (is_quote | is_backslash | is_control) & MSB
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn swar_find_matches_plain_scan() {
            for len in 0..24 {
                for at in 0..len {
                    for special in [b'"', b'\\', 0x00, 0x1F] {
                        let mut bytes = vec![0xC3; len];
                        bytes[at] = special;
                        assert_eq!(find(&bytes), Some(at), "{special:#04x} at {at} of {len}");
                    }
                }
                assert_eq!(find(&vec![0x20; len]), None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find_special_plain(bytes: &[u8]) -> Option<usize> {
        bytes
            .iter()
            .position(|&byte| byte == b'"' || byte == b'\\' || byte < 0x20)
    }

    #[test]
    fn find_string_special_matches_plain_scan() {
        let specials = [b'"', b'\\', 0x00, 0x1F, b'\n'];
        let fillers = [b'a', 0x20, 0x21, 0x5B, 0x5D, 0x7F, 0x80, 0xC3, 0xFF];
        for len in 0..50 {
            for &filler in &fillers {
                let plain = vec![filler; len];
                assert_eq!(
                    find_string_special(&plain).map(|(at, _)| at),
                    find_special_plain(&plain)
                );
                for at in 0..len {
                    for &special in &specials {
                        let mut bytes = plain.clone();
                        bytes[at] = special;
                        assert_eq!(
                            find_string_special(&bytes),
                            Some((at, special)),
                            "special {special:#04x} at {at} in {len} bytes of {filler:#04x}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn find_string_special_two_specials_reports_first() {
        for len in [16, 17, 31, 40] {
            for first in 0..len {
                for second in first + 1..len {
                    let mut bytes = vec![b'x'; len];
                    bytes[first] = 0x01;
                    bytes[second] = b'"';
                    assert_eq!(find_string_special(&bytes), Some((first, 0x01)));
                }
            }
        }
    }

    #[test]
    fn find_string_special_tail_ignores_specials_already_passed() {
        // 20 bytes: the overlapping tail load re-reads bytes 4..16, which hold no special here,
        // and must find the quote at 18 rather than anything before `at`.
        let mut bytes = [b'y'; 20];
        bytes[18] = b'"';
        assert_eq!(find_string_special(&bytes), Some((18, b'"')));
    }
}
