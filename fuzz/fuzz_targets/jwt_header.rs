//! Fuzz target for token extraction and JWT verification: arbitrary token bytes placed in each
//! token source of an otherwise valid upgrade request.
//!
//! The verifiers hold an HMAC secret that appears nowhere else and the public halves of the
//! test keys under `tests/data/keys`. No seed is signed with any of their keys, so no input can
//! carry a valid signature. Invariants, for every token source (`Authorization: Bearer`, the
//! `access_token` query parameter, the subprotocol after `framegate.jwt`, the
//! `framegate_token` cookie) and for the raw token:
//! - parsing, the upgrade checks and verification never panic;
//! - no verifier ever accepts the token, and `conn::authenticate` never admits it;
//! - an extracted token is a substring of the bytes the fuzzer supplied.

#![no_main]

use std::sync::OnceLock;

use framegate::auth::{AuthConfig, KeyMaterial, Verifier};
use framegate::conn::authenticate;
use framegate::handshake::{HandshakeConfig, check_request};
use framegate::http::{ParserLimits, RequestParser, Status};
use jsonwebtoken::Algorithm;
use libfuzzer_sys::fuzz_target;

/// Verification time, in seconds since the Unix epoch.
const NOW_UNIX: u64 = 1_700_000_000;

/// HMAC secret of the HS256 verifier. No seed token is signed with it.
const SECRET: &[u8] = b"jwt-fuzz-verifier-secret-never-used-to-sign";

fn verifiers() -> &'static [Verifier] {
    static VERIFIERS: OnceLock<Vec<Verifier>> = OnceLock::new();
    VERIFIERS.get_or_init(|| {
        let public = |file: &[u8]| KeyMaterial::PublicPem(file.to_vec());
        let keys = [
            (
                vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
                KeyMaterial::Secret(SECRET.repeat(2)),
            ),
            (
                vec![Algorithm::RS256, Algorithm::PS256],
                public(include_bytes!("../../tests/data/keys/rsa2048_public.pem")),
            ),
            (
                vec![Algorithm::ES256],
                public(include_bytes!("../../tests/data/keys/ec_p256_public.pem")),
            ),
            (
                vec![Algorithm::EdDSA],
                public(include_bytes!("../../tests/data/keys/ed25519_public.pem")),
            ),
        ];
        keys.into_iter()
            .map(|(algorithms, key)| {
                Verifier::new(&AuthConfig {
                    algorithms,
                    key,
                    issuer: None,
                    audience: None,
                    leeway_secs: 0,
                })
                .expect("fuzz verifier")
            })
            .collect()
    })
}

fn handshake_config() -> &'static HandshakeConfig {
    static CONFIG: OnceLock<HandshakeConfig> = OnceLock::new();
    CONFIG.get_or_init(|| HandshakeConfig {
        query_param: Some("access_token".to_owned()),
        protocol_marker: Some("framegate.jwt".to_owned()),
        cookie: Some("framegate_token".to_owned()),
        ..HandshakeConfig::default()
    })
}

fuzz_target!(|token: &[u8]| {
    for verifier in verifiers() {
        let raw = String::from_utf8_lossy(token);
        assert!(
            verifier.verify(&raw, NOW_UNIX).is_err(),
            "raw token verified"
        );
    }

    for source in 0..4 {
        let request = upgrade_request(source, token);
        let mut parser = RequestParser::new(ParserLimits::default());
        let Ok(Status::Complete(parsed)) = parser.parse(&request) else {
            continue;
        };
        let Ok(upgrade) = check_request(&parsed, handshake_config()) else {
            continue;
        };
        let Some((_, extracted)) = upgrade.token else {
            continue;
        };
        assert!(
            token
                .windows(extracted.len().max(1))
                .any(|window| window == extracted.as_bytes())
                || extracted.is_empty(),
            "extracted token is not part of the supplied bytes"
        );
        for verifier in verifiers() {
            assert!(
                verifier.verify(extracted, NOW_UNIX).is_err(),
                "token verified"
            );
            for required in [true, false] {
                let admitted = authenticate(&upgrade, verifier, required, NOW_UNIX);
                assert!(admitted.is_err(), "token authenticated: {admitted:?}");
            }
        }
    }
});

/// Builds a valid upgrade request with `token` in the source numbered `source`.
fn upgrade_request(source: u8, token: &[u8]) -> Vec<u8> {
    let mut request = Vec::with_capacity(token.len() + 256);
    request.extend_from_slice(b"GET /ws");
    if source == 1 {
        request.extend_from_slice(b"?access_token=");
        request.extend_from_slice(token);
    }
    request.extend_from_slice(
        b" HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
    );
    let prefix: &[u8] = match source {
        0 => b"Authorization: Bearer ",
        2 => b"Sec-WebSocket-Protocol: framegate.jwt, ",
        3 => b"Cookie: framegate_token=",
        _ => b"",
    };
    if !prefix.is_empty() {
        request.extend_from_slice(prefix);
        request.extend_from_slice(token);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"\r\n");
    request
}
