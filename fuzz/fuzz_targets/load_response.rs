//! Fuzz target for the load generator's reading of an upgrade response:
//! `load::wire::parse_response_head` and `load::wire::check_switch`.
//!
//! Invariants, for any bytes:
//! - no panic;
//! - a parsed head is at most the input long, and the input cut at its end parses to the
//!   same head, while every shorter cut is still incomplete;
//! - only a `101` over HTTP/1.1 with `Upgrade: websocket`, `Connection: upgrade` and the right
//!   accept value passes the handshake checks.

#![no_main]

use framegate::load::wire::{check_switch, parse_response_head};
use libfuzzer_sys::fuzz_target;

/// Key of the request that the response replies to (RFC 6455 §1.3).
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fuzz_target!(|data: &[u8]| {
    let Ok(Some(head)) = parse_response_head(data) else {
        return;
    };
    assert!(head.head_len <= data.len(), "head longer than the input");
    let cut = &data[..head.head_len];
    assert_eq!(
        parse_response_head(cut),
        Ok(Some(head.clone())),
        "the head alone parses differently"
    );
    for end in 0..head.head_len {
        assert_eq!(
            parse_response_head(&data[..end]),
            Ok(None),
            "a cut at {end} is complete"
        );
    }
    if check_switch(&head, KEY, &["bearer"]).is_ok() {
        assert_eq!(head.minor_version, 1);
        assert!(head.upgrade_websocket);
        assert!(head.connection_upgrade);
        assert!(!head.extensions);
        assert!(head.protocols.len() <= 1);
    }
});
