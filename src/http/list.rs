//! Comma-separated field values (RFC 9110 §5.6.1).
//!
//! A list field such as `Connection` or `Sec-WebSocket-Protocol` may be split over several
//! field lines of the same name, and its elements are separated by commas with optional
//! whitespace around them. This module splits one field line's value. It does not look inside
//! quoted strings, so it suits lists of tokens and numbers, which is every list the upgrade
//! handshake reads.

#![forbid(unsafe_code)]

use crate::http::chars::{OWS, is};

/// Iterates over the elements of one comma-separated field value, with the whitespace around
/// each element removed. Empty elements (`a, , b`) are skipped, as RFC 9110 §5.6.1 requires
/// of a recipient.
pub fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&byte| byte == b',')
        .map(trim_ows)
        .filter(|element| !element.is_empty())
}

/// Returns whether the comma-separated `value` has an element equal to `token`, ignoring ASCII
/// case. Use it for case-insensitive tokens such as connection options and protocol names.
pub fn list_contains_ignore_case(value: &[u8], token: &[u8]) -> bool {
    list_elements(value).any(|element| element.eq_ignore_ascii_case(token))
}

/// Removes leading and trailing spaces and horizontal tabs.
pub fn trim_ows(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|&byte| !is(&OWS, byte))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|&byte| !is(&OWS, byte))
        .map_or(start, |last| last + 1);
    bytes.get(start..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elements(value: &[u8]) -> Vec<&[u8]> {
        list_elements(value).collect()
    }

    #[test]
    fn list_elements_trims_whitespace_and_skips_empty_elements() {
        let cases: &[(&[u8], &[&[u8]])] = &[
            (b"", &[]),
            (b"a", &[b"a"]),
            (b"keep-alive, Upgrade", &[b"keep-alive", b"Upgrade"]),
            (b" a ,\tb\t, ,,c,", &[b"a", b"b", b"c"]),
            (b" , ,", &[]),
        ];
        for (value, expected) in cases {
            assert_eq!(
                elements(value),
                *expected,
                "value {:?}",
                value.escape_ascii()
            );
        }
    }

    #[test]
    fn list_contains_ignore_case_matches_whole_elements_only() {
        assert!(list_contains_ignore_case(
            b"keep-alive, UPGRADE",
            b"upgrade"
        ));
        assert!(list_contains_ignore_case(b"upgrade", b"upgrade"));
        assert!(!list_contains_ignore_case(b"upgrades", b"upgrade"));
        assert!(!list_contains_ignore_case(
            b"keep-alive upgrade",
            b"upgrade"
        ));
        assert!(!list_contains_ignore_case(b"", b"upgrade"));
    }

    #[test]
    fn trim_ows_handles_all_whitespace_and_empty_input() {
        assert_eq!(trim_ows(b""), b"");
        assert_eq!(trim_ows(b" \t "), b"");
        assert_eq!(trim_ows(b" a b "), b"a b");
        assert_eq!(trim_ows(b"ab"), b"ab");
    }
}
