//! Fuzz target for `utf8::Utf8Validator`.
//!
//! Invariants, for any bytes split into any chunks (empty chunks included):
//! - after each chunk the validator fails exactly when the bytes fed so far contain a byte that
//!   no continuation can make valid. So it fails in that byte's chunk, never later or earlier,
//!   and `valid_up_to` equals the one `std::str::from_utf8` reports for the same bytes;
//! - `finish` agrees with `std::str::from_utf8` on the whole input;
//! - after `reset`, feeding the whole input in one chunk gives the same verdict.

#![no_main]

use framegate::utf8::{Utf8Error, Utf8Validator};
use framegate_fuzz::{Input, read_ends};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let input = Input::split(input);
    let [_, mode, _, _] = input.control;
    let data = input.data;
    let expected = std::str::from_utf8(data)
        .map(drop)
        .map_err(|error| error.valid_up_to());

    let mut validator = Utf8Validator::new();
    let verdict = feed_in_chunks(
        &mut validator,
        data,
        &read_ends(data.len(), mode, input.seed()),
    );
    assert_eq!(verdict, expected, "chunked verdict differs from std");

    validator.reset();
    let whole = feed_in_chunks(&mut validator, data, &[data.len()]);
    assert_eq!(whole, expected, "verdict after reset differs from std");
});

/// Feeds `data` in chunks ending at `ends`, checking the fail-fast rule after each chunk, and
/// returns the verdict as `Err(valid_up_to)` or `Ok(())`.
fn feed_in_chunks(validator: &mut Utf8Validator, data: &[u8], ends: &[usize]) -> Result<(), usize> {
    let mut start = 0;
    for &end in ends {
        let chunk = data.get(start..end).unwrap_or_default();
        let fed = data.get(..end).unwrap_or_default();
        start = end;

        // A prefix is definitely invalid when std reports an error length: the error is not
        // just a code point cut off at the end.
        let definite = std::str::from_utf8(fed)
            .err()
            .filter(|error| error.error_len().is_some());
        match (validator.feed(chunk), definite) {
            (Ok(()), None) => {}
            (Err(Utf8Error { valid_up_to }), Some(error)) => {
                assert_eq!(
                    valid_up_to,
                    error.valid_up_to(),
                    "valid_up_to differs from std"
                );
                return Err(valid_up_to);
            }
            (Ok(()), Some(error)) => panic!(
                "accepted {} bytes although byte {} makes them invalid",
                fed.len(),
                error.valid_up_to()
            ),
            (Err(error), None) => panic!(
                "rejected {} bytes that are a valid prefix: {error}",
                fed.len()
            ),
        }
    }
    validator.finish().map_err(|error| error.valid_up_to)
}
