//! Byte classes of the HTTP grammar as 256-entry lookup tables.
//!
//! One load from a table gives whether a byte may appear at a point of the grammar, so the
//! parser's inner loops do a single indexed read per byte. The grammar each table encodes is restated in its doc
//! comment, with the RFC section that defines it.

#![forbid(unsafe_code)]

/// Token characters (RFC 9110 §5.6.2): a token is one or more of the letters, the digits and
/// ``! # $ % & ' * + - . ^ _ ` | ~``. Methods, field names and most list elements are tokens.
pub(crate) static TCHAR: [bool; 256] = table(b"!#$%&'*+-.^_`|~", true);

/// Request-target bytes: the visible ASCII characters 0x21 to 0x7E except `#`. RFC 9112 §3.2
/// builds the target from URI syntax (RFC 3986), which has no spaces, controls or raw
/// non-ASCII bytes, and its forms have no fragment, so a `#` cannot appear.
pub(crate) static TARGET: [bool; 256] = target();

/// Field-value bytes (RFC 9110 §5.5): visible ASCII, obs-text (0x80 to 0xFF), space and
/// horizontal tab. CR, LF, NUL, the other controls and DEL (0x7F) are excluded.
pub(crate) static FIELD_VALUE: [bool; 256] = field_value();

/// Optional whitespace (RFC 9110 §5.6.3): space or horizontal tab.
pub(crate) static OWS: [bool; 256] = table(b" \t", false);

/// Bytes of a `Host` value or URI authority without userinfo (RFC 3986 §3.2.2 and §3.2.3):
/// letters, digits, the unreserved marks ``- . _ ~``, the sub-delims ``! $ & ' ( ) * + , ; =``,
/// `%` of a percent-encoding, `:` before the port and the brackets of an IP literal.
pub(crate) static HOST: [bool; 256] = table(b"-._~!$&'()*+,;=%:[]", true);

/// Characters of a bearer token before its trailing `=` padding (RFC 6750 §2.1, `b64token`):
/// letters, digits and ``- . _ ~ + /``. A JWT (base64url parts joined by dots) fits this set.
pub(crate) static B64TOKEN: [bool; 256] = table(b"-._~+/", true);

/// Characters of the standard base64 alphabet (RFC 4648 §4) without the `=` pad: letters,
/// digits, `+` and `/`.
pub(crate) static BASE64: [bool; 256] = table(b"+/", true);

/// Returns whether `byte` is marked in `class`.
#[inline(always)]
pub(crate) fn is(class: &[bool; 256], byte: u8) -> bool {
    // A u8 index is at most 255, so it is always inside a 256-entry table.
    class[usize::from(byte)]
}

/// Returns whether every byte of `bytes` is in `class`. The loop has no branch per byte, which
/// makes it cheaper than `iter().all` for the tokens, keys and hosts it checks, because
/// those are nearly always valid and so are read to the end anyway.
#[inline]
pub(crate) fn all_in(class: &[bool; 256], bytes: &[u8]) -> bool {
    bytes.iter().fold(true, |all, &byte| all & is(class, byte))
}

/// Returns the offset of the first byte at or after `from` that is not in `class`, or
/// `bytes.len()` when every byte from there on is in it.
#[inline(always)]
pub(crate) fn skip(bytes: &[u8], from: usize, class: &[bool; 256]) -> usize {
    let rest = bytes.get(from..).unwrap_or_default();
    match rest.iter().position(|&byte| !is(class, byte)) {
        Some(offset) => from + offset,
        None => from + rest.len(),
    }
}

/// Builds a table that marks the bytes of `extra`, and the ASCII letters and digits when
/// `alphanumeric` is set.
const fn table(extra: &[u8], alphanumeric: bool) -> [bool; 256] {
    let mut class = [false; 256];
    if alphanumeric {
        let mut byte = 0usize;
        while byte < 256 {
            class[byte] = (byte >= b'0' as usize && byte <= b'9' as usize)
                || (byte >= b'A' as usize && byte <= b'Z' as usize)
                || (byte >= b'a' as usize && byte <= b'z' as usize);
            byte += 1;
        }
    }
    let mut i = 0;
    while i < extra.len() {
        class[extra[i] as usize] = true;
        i += 1;
    }
    class
}

/// Builds a table that marks the bytes from `first` to `last`, both included.
const fn range(first: u8, last: u8) -> [bool; 256] {
    let mut class = [false; 256];
    let mut byte = first as usize;
    while byte <= last as usize {
        class[byte] = true;
        byte += 1;
    }
    class
}

const fn target() -> [bool; 256] {
    let mut class = range(0x21, 0x7E);
    class[b'#' as usize] = false;
    class
}

const fn field_value() -> [bool; 256] {
    let mut class = range(0x21, 0xFF);
    class[0x7F] = false;
    class[b' ' as usize] = true;
    class[b'\t' as usize] = true;
    class
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference definitions written as plain predicates, to check the tables against.
    fn tchar_reference(byte: u8) -> bool {
        byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
    }

    #[test]
    fn tchar_table_matches_rfc_grammar() {
        for byte in 0..=u8::MAX {
            assert_eq!(is(&TCHAR, byte), tchar_reference(byte), "byte {byte:#04x}");
        }
    }

    #[test]
    fn target_table_marks_visible_ascii_but_hash() {
        for byte in 0..=u8::MAX {
            let expected = byte.is_ascii_graphic() && byte != b'#';
            assert_eq!(is(&TARGET, byte), expected, "byte {byte:#04x}");
        }
    }

    #[test]
    fn field_value_table_excludes_controls_only() {
        for byte in 0..=u8::MAX {
            let expected = byte == b'\t' || byte == b' ' || byte.is_ascii_graphic() || byte >= 0x80;
            assert_eq!(is(&FIELD_VALUE, byte), expected, "byte {byte:#04x}");
        }
        assert!(!is(&FIELD_VALUE, 0x00));
        assert!(!is(&FIELD_VALUE, b'\r'));
        assert!(!is(&FIELD_VALUE, b'\n'));
        assert!(!is(&FIELD_VALUE, 0x7F));
    }

    #[test]
    fn base64_table_matches_alphabet() {
        for byte in 0..=u8::MAX {
            let expected = byte.is_ascii_alphanumeric() || byte == b'+' || byte == b'/';
            assert_eq!(is(&BASE64, byte), expected, "byte {byte:#04x}");
        }
    }

    #[test]
    fn host_table_excludes_delimiters_of_other_uri_parts() {
        for byte in b"/?#@\"<> \t\r\n\0".iter().copied() {
            assert!(!is(&HOST, byte), "byte {byte:#04x}");
        }
        for byte in b"example.com:443[::1]%41".iter().copied() {
            assert!(is(&HOST, byte), "byte {byte:#04x}");
        }
    }

    #[test]
    fn all_in_matches_iterator_all() {
        let cases: [&[u8]; 5] = [b"", b"abc", b"a c", b"abc\xff", b"\x00"];
        for bytes in cases {
            let expected = bytes.iter().all(|&byte| is(&TCHAR, byte));
            assert_eq!(all_in(&TCHAR, bytes), expected, "{}", bytes.escape_ascii());
        }
    }

    #[test]
    fn skip_stops_at_first_byte_outside_class() {
        assert_eq!(skip(b"GET /", 0, &TCHAR), 3);
        assert_eq!(skip(b"GET", 1, &TCHAR), 3);
        assert_eq!(skip(b"GET", 5, &TCHAR), 5);
        assert_eq!(skip(b"  x", 0, &OWS), 2);
    }
}
