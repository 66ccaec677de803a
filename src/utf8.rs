//! Incremental UTF-8 validation for text that arrives in pieces.
//!
//! A WebSocket text message can be split across fragments and each fragment across reads, so a
//! code point may straddle two chunks. [`Utf8Validator`] checks each chunk with `simdutf8` and
//! carries at most 3 bytes of an unfinished code point over to the next chunk. It fails as soon
//! as the bytes seen so far cannot be the start of valid UTF-8 (RFC 6455 §8.1: an endpoint that
//! receives invalid UTF-8 in a text message MUST fail the connection; RFC 3629 §3–4 defines valid
//! sequences). It neither copies nor keeps the text, and it does not parse frames.
#![forbid(unsafe_code)]

use simdutf8::compat;

/// Chunks up to this length are first checked for plain ASCII. Longer chunks go straight to
/// simdutf8, so a long text with a late non-ASCII byte is not scanned twice.
const SHORT_CHUNK_BYTES: usize = 256;

/// Text that is not valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid UTF-8 after {valid_up_to} valid bytes")]
pub struct Utf8Error {
    /// Length of the longest valid prefix of all bytes fed since the validator was created or
    /// reset, counted across chunks. It equals `std::str::Utf8Error::valid_up_to` for the same
    /// bytes joined into one slice.
    pub valid_up_to: usize,
}

/// Streaming UTF-8 validator that accepts a code point split across chunks.
#[derive(Debug, Clone, Default)]
pub struct Utf8Validator {
    /// Leading bytes of a code point that the last chunk ended inside of.
    /// INVARIANT: `pending[..pending_len]` is a valid, incomplete UTF-8 prefix and
    /// `pending_len <= 3`.
    pending: [u8; 4],
    pending_len: usize,
    /// Bytes known to be valid, not counting `pending`.
    valid_len: usize,
}

impl Utf8Validator {
    /// Creates a validator at the start of a text.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets all state so the validator can check a new text.
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Validates the next chunk of the text.
    ///
    /// Returns `Err` as soon as the bytes seen so far cannot be the start of valid UTF-8, for
    /// example at a 0xC0 or 0xF5 byte, an overlong form, a surrogate (ED A0..BF) or a value
    /// above U+10FFFF. A chunk that ends inside a code point is accepted and the code point is
    /// completed from the next chunk. After an error the validator's state is unspecified until
    /// [`reset`](Self::reset).
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), Utf8Error> {
        let rest = self.complete_pending(chunk)?;
        if rest.is_empty() {
            return Ok(());
        }
        // ASCII is valid UTF-8, and for a short chunk a plain ASCII scan costs less than
        // simdutf8's call and set-up.
        if rest.len() <= SHORT_CHUNK_BYTES && rest.is_ascii() {
            self.valid_len = self.valid_len.saturating_add(rest.len());
            return Ok(());
        }

        match compat::from_utf8(rest) {
            Ok(_) => {
                self.valid_len = self.valid_len.saturating_add(rest.len());
                Ok(())
            }
            Err(err) => {
                let valid_up_to = self.valid_len.saturating_add(err.valid_up_to());
                if err.error_len().is_some() {
                    return Err(Utf8Error { valid_up_to });
                }

                // The chunk ends inside a code point whose bytes so far are valid: keep them.
                let tail = rest.get(err.valid_up_to()..).unwrap_or_default();
                self.store_pending(tail);
                self.valid_len = valid_up_to;
                Ok(())
            }
        }
    }

    /// Checks that the text ended on a code point boundary.
    ///
    /// Returns `Err` if the last chunk ended inside a code point.
    pub fn finish(&mut self) -> Result<(), Utf8Error> {
        if self.pending_len == 0 {
            return Ok(());
        }
        Err(Utf8Error {
            valid_up_to: self.valid_len,
        })
    }

    /// Finishes a code point carried over from the previous chunk with the first bytes of
    /// `chunk`, and returns the part of `chunk` that follows it.
    fn complete_pending<'a>(&mut self, chunk: &'a [u8]) -> Result<&'a [u8], Utf8Error> {
        if self.pending_len == 0 {
            return Ok(chunk);
        }

        // The pending lead byte was accepted by simdutf8, so it announces 2, 3 or 4 bytes.
        let width = self.pending.first().map_or(0, |&lead| sequence_width(lead));
        let missing = width.saturating_sub(self.pending_len);
        let taken = missing.min(chunk.len());
        let (head, rest) = chunk.split_at(taken);
        let filled = self.pending_len + taken;
        if let Some(slot) = self.pending.get_mut(self.pending_len..filled) {
            slot.copy_from_slice(head);
        }
        let candidate = self.pending.get(..filled).unwrap_or_default();

        match compat::from_utf8(candidate) {
            Ok(_) => {
                self.valid_len = self.valid_len.saturating_add(filled);
                self.pending_len = 0;
                Ok(rest)
            }
            Err(err) if err.error_len().is_none() => {
                // Still a valid prefix, and `chunk` was too short to finish it.
                self.pending_len = filled;
                Ok(rest)
            }
            Err(_) => Err(Utf8Error {
                valid_up_to: self.valid_len,
            }),
        }
    }

    fn store_pending(&mut self, tail: &[u8]) {
        let len = tail.len().min(3);
        if let (Some(slot), Some(src)) = (self.pending.get_mut(..len), tail.get(..len)) {
            slot.copy_from_slice(src);
        }
        self.pending_len = len;
    }
}

/// Length of the UTF-8 sequence that `lead` starts (RFC 3629 §3), or 0 for a byte that cannot
/// start a multi-byte sequence.
fn sequence_width(lead: u8) -> usize {
    match lead {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs covering ASCII, every sequence width and the RFC 3629 edge cases.
    const CASES: &[&[u8]] = &[
        b"",
        b"hello",
        "κόσμε".as_bytes(),
        "a€b𝄞c".as_bytes(),
        "\u{7F}\u{80}\u{7FF}\u{800}\u{FFFF}\u{10000}\u{10FFFF}".as_bytes(),
        &[0xED, 0x9F, 0xBF],       // U+D7FF, last before the surrogates
        &[0xEE, 0x80, 0x80],       // U+E000, first after the surrogates
        &[0xC0, 0x80],             // overlong NUL
        &[0xC1, 0xBF],             // overlong U+007F
        &[0xE0, 0x80, 0xAF],       // overlong '/'
        &[0xE0, 0x9F, 0xBF],       // overlong U+07FF
        &[0xF0, 0x8F, 0xBF, 0xBF], // overlong U+FFFF
        &[0xED, 0xA0, 0x80],       // U+D800, surrogate
        &[0xED, 0xBF, 0xBF],       // U+DFFF, surrogate
        &[0xF4, 0x90, 0x80, 0x80], // U+110000
        &[0xF5, 0x80, 0x80, 0x80], // lead byte above F4
        &[0xFF],
        &[0x80],             // lone continuation byte
        &[b'a', 0xC3],       // truncated 2-byte sequence
        &[b'a', 0xE2, 0x82], // truncated 3-byte sequence
        &[0xF0, 0x9D, 0x84], // truncated 4-byte sequence
        &[0xE2, 0x82, b'a'], // continuation byte missing
        &[
            0xCE, 0xBA, 0xE1, 0xBD, 0xB9, 0xCF, 0x83, 0xCE, 0xBC, 0xCE, 0xB5, 0xED, 0xA0, 0x80,
        ],
        &[b'x', b'y', 0xF4, 0x8F, 0xBF, 0xBF, b'z'], // U+10FFFF in the middle
    ];

    fn expected(input: &[u8]) -> Result<(), usize> {
        std::str::from_utf8(input)
            .map(drop)
            .map_err(|err| err.valid_up_to())
    }

    fn run(chunks: &[&[u8]]) -> Result<(), usize> {
        let mut validator = Utf8Validator::new();
        for chunk in chunks {
            validator.feed(chunk).map_err(|err| err.valid_up_to)?;
        }
        validator.finish().map_err(|err| err.valid_up_to)
    }

    #[test]
    fn validator_whole_input_agrees_with_std() {
        for input in CASES {
            assert_eq!(run(&[input]), expected(input), "input {input:02X?}");
        }
    }

    #[test]
    fn validator_every_two_way_split_agrees_with_std() {
        for input in CASES {
            for split in 0..=input.len() {
                let (left, right) = input.split_at(split);
                assert_eq!(
                    run(&[left, right]),
                    expected(input),
                    "input {input:02X?} split at {split}"
                );
            }
        }
    }

    #[test]
    fn validator_counts_short_ascii_chunks() {
        let mut long = vec![b'a'; SHORT_CHUNK_BYTES + 1];
        long.push(0xFF);
        let short_then_long: [&[u8]; 2] = [b"abc", &long];
        let mut joined = b"abc".to_vec();
        joined.extend_from_slice(&long);
        assert_eq!(run(&short_then_long), expected(&joined));
        assert_eq!(run(&[b"abc", b"\xE2", b"\x82\xACde", b"\xFF"]), Err(8));
    }

    #[test]
    fn validator_every_three_way_split_agrees_with_std() {
        for input in CASES {
            for first in 0..=input.len() {
                for second in first..=input.len() {
                    let chunks = [&input[..first], &input[first..second], &input[second..]];
                    assert_eq!(
                        run(&chunks),
                        expected(input),
                        "input {input:02X?} split at {first} and {second}"
                    );
                }
            }
        }
    }

    #[test]
    fn validator_one_byte_chunks_agree_with_std() {
        for input in CASES {
            let chunks: Vec<&[u8]> = input.chunks(1).collect();
            assert_eq!(run(&chunks), expected(input), "input {input:02X?}");
        }
    }

    #[test]
    fn validator_long_text_split_agrees_with_std() {
        // Long enough for simdutf8's vector path, with the error after a split code point.
        let mut input = "é".repeat(100).into_bytes();
        input.extend_from_slice("𝄞".as_bytes());
        input.extend_from_slice(&[b'a'; 70]);
        let valid_len = input.len();
        input.extend_from_slice(&[0xED, 0xA0, 0x80]);
        for split in [1, 63, 64, 65, 201, 202, 203, valid_len + 1] {
            let (left, right) = input.split_at(split);
            assert_eq!(run(&[left, right]), Err(valid_len), "split at {split}");
        }
    }

    #[test]
    fn validator_bad_lead_byte_fails_at_once() {
        for lead in [0xC0, 0xC1, 0xF5, 0xFF, 0x80] {
            let mut validator = Utf8Validator::new();
            assert_eq!(validator.feed(b"ab"), Ok(()));
            assert_eq!(
                validator.feed(&[lead]),
                Err(Utf8Error { valid_up_to: 2 }),
                "lead {lead:#04X}"
            );
        }
    }

    #[test]
    fn validator_impossible_second_byte_fails_at_once() {
        // Each pair cannot begin any valid sequence, so the error comes before more bytes.
        let pairs: &[[u8; 2]] = &[
            [0xE0, 0x80], // overlong
            [0xED, 0xA0], // surrogate
            [0xF0, 0x80], // overlong
            [0xF4, 0x90], // above U+10FFFF
            [0xC3, 0x41], // missing continuation
        ];
        for pair in pairs {
            let mut validator = Utf8Validator::new();
            assert_eq!(validator.feed(b"x"), Ok(()));
            assert_eq!(validator.feed(&pair[..1]), Ok(()), "lead of {pair:02X?}");
            assert_eq!(
                validator.feed(&pair[1..]),
                Err(Utf8Error { valid_up_to: 1 }),
                "pair {pair:02X?}"
            );
        }
    }

    #[test]
    fn validator_split_code_point_is_accepted() {
        let mut validator = Utf8Validator::new();
        assert_eq!(validator.feed(&[0xF0]), Ok(()));
        assert_eq!(validator.feed(&[0x9D]), Ok(()));
        assert_eq!(validator.feed(&[0x84, 0x9E, b'!']), Ok(()));
        assert_eq!(validator.finish(), Ok(()));
    }

    #[test]
    fn validator_truncated_end_fails_on_finish() {
        let mut validator = Utf8Validator::new();
        assert_eq!(validator.feed(&[b'a', b'b', 0xE2, 0x82]), Ok(()));
        assert_eq!(validator.finish(), Err(Utf8Error { valid_up_to: 2 }));
    }

    #[test]
    fn validator_reset_clears_pending_bytes() {
        let mut validator = Utf8Validator::new();
        assert_eq!(validator.feed(&[0xE2]), Ok(()));
        validator.reset();
        assert_eq!(validator.feed(b"ok"), Ok(()));
        assert_eq!(validator.finish(), Ok(()));
    }

    proptest::proptest! {
        #[test]
        fn validator_random_bytes_split_agree_with_std(
            input in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::prelude::any::<u8>(),
                    0x80u8..0xC0,
                    0xC0u8..0xF8,
                ],
                0..40,
            ),
            split in 0usize..41,
        ) {
            let split = split.min(input.len());
            let (left, right) = input.split_at(split);
            proptest::prop_assert_eq!(run(&[left, right]), expected(&input));
        }
    }
}
