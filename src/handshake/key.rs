//! `Sec-WebSocket-Key` validation and the `Sec-WebSocket-Accept` value (RFC 6455 §4.2.1 and
//! §4.2.2).

#![forbid(unsafe_code)]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha1::{Digest as _, Sha1};

use crate::http::{BASE64, all_in};

/// GUID that RFC 6455 §1.3 appends to the key before hashing.
const WEBSOCKET_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Length of the base64 encoding of a 16-byte nonce: 22 characters and `==`.
const KEY_LEN: usize = 24;

/// Computes `Sec-WebSocket-Accept` for `key`: the base64 encoding of the SHA-1 digest of the
/// key followed by the RFC 6455 GUID (RFC 6455 §4.2.2 step 5.4). The 20-byte digest always
/// encodes to 28 ASCII characters.
pub fn accept_key(key: &str) -> [u8; 28] {
    let mut hasher = Sha1::new();
    hasher.update(key.as_bytes());
    hasher.update(WEBSOCKET_GUID);
    let digest = hasher.finalize();

    let mut accept = [0u8; 28];
    match STANDARD.encode_slice(digest, &mut accept) {
        Ok(28) => accept,
        _ => unreachable!("a 20-byte SHA-1 digest encodes to exactly 28 base64 characters"),
    }
}

/// Returns `key` as text when it is the base64 encoding of exactly 16 bytes (RFC 6455
/// §4.2.1 item 5). That is 22 characters of the standard alphabet and then `==`. The 4
/// unused bits of the last character must be zero, as canonical encoding requires
/// (RFC 4648 §3.5).
pub(crate) fn valid_key(key: &[u8]) -> Option<&str> {
    if key.len() != KEY_LEN {
        return None;
    }
    let (data, padding) = key.split_at(KEY_LEN - 2);
    if padding != b"==" || !all_in(&BASE64, data) {
        return None;
    }

    // The last data character carries 2 bits of the 16th byte in its high bits, so only the
    // characters with value 0, 16, 32 or 48 are canonical.
    if !matches!(data.last(), Some(b'A' | b'Q' | b'g' | b'w')) {
        return None;
    }
    std::str::from_utf8(key).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_sample() {
        let accept = accept_key("dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(&accept, b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn valid_key_accepts_canonical_16_byte_keys() {
        for key in [
            "dGhlIHNhbXBsZSBub25jZQ==",
            "AAAAAAAAAAAAAAAAAAAAAA==",
            "/////////////////////w==",
            "+/+/+/+/+/+/+/+/+/+/+Q==",
        ] {
            assert_eq!(valid_key(key.as_bytes()), Some(key), "{key}");
        }
    }

    #[test]
    fn valid_key_rejects_malformed_keys() {
        let cases: &[&[u8]] = &[
            b"",
            b"dGhlIHNhbXBsZSBub25jZQ=",
            b"dGhlIHNhbXBsZSBub25jZQ===",
            b"dGhlIHNhbXBsZSBub25jZQ",
            b"dGhlIHNhbXBsZSBub25jZQAA",
            b"dGhlIHNhbXBsZSBub25jZR==",
            b"dGhlIHNhbXBsZSBub25jZ===",
            b"dGhlIHNhbXBsZSBub25j-Q==",
            b"dGhlIHNhbXBsZSBub25j_Q==",
            b"dGhlIHNhbXBsZSBub25j Q==",
            b"dGhlIHNhbXBsZSBub25jZQ==\xff",
            b"dGhlIHNhbXBsZSBub2\xc3\xa9Q==",
            b"ZGhlIHNhbXBsZSBub25jZQ==ZGhlIHNhbXBsZSBub25jZQ==",
        ];
        for key in cases {
            assert_eq!(valid_key(key), None, "{}", key.escape_ascii());
        }
    }

    /// Checks the hand-written validator against the base64 crate's strict decoder for
    /// every choice of the final data character and a sample of bytes in other positions.
    #[test]
    fn valid_key_agrees_with_base64_decoder() {
        let template = *b"dGhlIHNhbXBsZSBub25jZQ==";
        for position in [0, 7, 20, 21, 22, 23] {
            for byte in 0..=u8::MAX {
                let mut key = template;
                if let Some(slot) = key.get_mut(position) {
                    *slot = byte;
                }
                let decoded = STANDARD.decode(key);
                let expected = matches!(decoded, Ok(bytes) if bytes.len() == 16);
                let context = key.escape_ascii().to_string();
                assert_eq!(valid_key(&key).is_some(), expected, "{context}");
            }
        }
    }
}
