//! Token checks at the upgrade, against the real server: each bad token gets 401 with
//! `WWW-Authenticate: Bearer error="invalid_token"` and a body that never repeats the token.

mod util;

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use framegate::auth::{AuthConfig, KeyMaterial, Verifier};
use jsonwebtoken::Algorithm;
use serde_json::json;
use util::*;

fn key_file(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/keys")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

fn assert_invalid_token(addr: std::net::SocketAddr, token: &str, what: &str) {
    let response = http_exchange(addr, upgrade_request(token).as_bytes());
    assert_eq!(status_of(&response), 401, "{what}: {response}");
    assert!(
        response.contains("WWW-Authenticate: Bearer error=\"invalid_token\""),
        "{what}: {response}"
    );
    assert!(
        !response.contains(token),
        "{what}: token leaked into the response"
    );
}

#[test]
fn bad_hs256_tokens_get_401_invalid_token() {
    let addr = start(config(
        1,
        "upgrade_rate_per_ip = 0\n[auth]\naudience = \"chat\"\n",
    ));
    let now = unix_now();
    let expired = sign(json!({"sub": "a", "exp": now - 10, "aud": "chat"}));
    let wrong_secret = sign_with(
        Algorithm::HS256,
        b"another-secret-that-is-32-bytes-long!!",
        json!({"sub": "a", "exp": now + 60, "aud": "chat"}),
    );
    let wrong_audience = sign(json!({"sub": "a", "exp": now + 60, "aud": "billing"}));
    let missing_sub = sign(json!({"exp": now + 60, "aud": "chat"}));
    let missing_exp = sign(json!({"sub": "a", "aud": "chat"}));
    let not_yet_valid =
        sign(json!({"sub": "a", "exp": now + 600, "nbf": now + 300, "aud": "chat"}));
    let hs512 = sign_with(
        Algorithm::HS512,
        SECRET,
        json!({"sub": "a", "exp": now + 60, "aud": "chat"}),
    );
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let claims =
        URL_SAFE_NO_PAD.encode(json!({"sub": "a", "exp": now + 60, "aud": "chat"}).to_string());
    let alg_none = format!("{header}.{claims}.");
    let cases = [
        (expired, "expired"),
        (wrong_secret, "wrong signature"),
        (wrong_audience, "wrong audience"),
        (missing_sub, "missing sub"),
        (missing_exp, "missing exp"),
        (not_yet_valid, "nbf in the future"),
        (hs512, "algorithm outside the allow-list"),
        (alg_none, "alg none"),
        ("garbage".to_owned(), "garbage"),
    ];
    for (token, what) in cases {
        assert_invalid_token(addr, &token, what);
    }
    // The same server accepts a good token.
    let good = sign(json!({"sub": "a", "exp": now + 60, "aud": "chat"}));
    let mut stream = connect(addr);
    std::io::Write::write_all(&mut stream, upgrade_request(&good).as_bytes()).unwrap();
    assert_eq!(status_of(&read_head(&mut stream).0), 101);
}

#[test]
fn rs256_server_rejects_hs256_signed_with_public_key() {
    let public = key_file("rsa2048_public.pem");
    let private = key_file("rsa2048_private.pem");
    let config = config(1, "upgrade_rate_per_ip = 0\n");
    let verifier = Verifier::new(&AuthConfig {
        algorithms: vec![Algorithm::RS256],
        key: KeyMaterial::PublicPem(public.clone()),
        issuer: None,
        audience: None,
        leeway_secs: 0,
    })
    .expect("rsa verifier");
    let addr = start_with(config, verifier);
    let claims = json!({"sub": "rsa-user", "exp": unix_now() + 60});

    // Key confusion: HS256 with the public key PEM as the HMAC secret.
    let confused = sign_with(Algorithm::HS256, &public, claims.clone());
    assert_invalid_token(addr, &confused, "hs256 signed with the rsa public key");

    let good = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::RS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(&private).expect("private key"),
    )
    .expect("rs256 token");
    let mut stream = connect(addr);
    std::io::Write::write_all(&mut stream, upgrade_request(&good).as_bytes()).unwrap();
    assert_eq!(status_of(&read_head(&mut stream).0), 101);
}

#[test]
fn optional_auth_admits_anonymous_but_checks_present_tokens() {
    let addr = start(config(1, "backend = \"echo\"\n[auth]\nrequired = false\n"));
    let request = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let mut stream = connect(addr);
    std::io::Write::write_all(&mut stream, request.as_bytes()).unwrap();
    assert_eq!(status_of(&read_head(&mut stream).0), 101);
    assert_invalid_token(addr, "not.a.token", "invalid token with optional auth");
}

/// Returns an upgrade request for `target` with the extra header `lines`.
fn request_with(target: &str, lines: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{lines}\r\n"
    )
}

#[test]
fn basic_authorization_does_not_hide_query_token() {
    let addr = start(config(1, "upgrade_rate_per_ip = 0\n"));
    let basic = "Authorization: Basic dXNlcjpwYXNz\r\n";

    let request = request_with(&format!("/ws?access_token={}", token("basic-user")), basic);
    let mut stream = connect(addr);
    std::io::Write::write_all(&mut stream, request.as_bytes()).unwrap();
    assert_eq!(status_of(&read_head(&mut stream).0), 101);

    let response = http_exchange(addr, request_with("/ws", basic).as_bytes());
    assert_eq!(status_of(&response), 401, "{response}");
    assert!(
        response.contains("\r\nWWW-Authenticate: Bearer\r\n"),
        "{response}"
    );
    assert!(
        response.ends_with(
            "\r\n\r\nno access token: send `Authorization: Bearer <token>`, \
             `Sec-WebSocket-Protocol: framegate.jwt, <token>`, the `access_token` query \
             parameter or the `framegate_token` cookie\n"
        ),
        "{response}"
    );
}

#[test]
fn rejection_texts_name_value_and_fix() {
    let addr = start(config(1, "upgrade_rate_per_ip = 0\n"));
    let exp = unix_now() - 10;
    let expired = sign(json!({"sub": "a", "exp": exp}));
    let lines = format!("Authorization: Bearer {expired}\r\n");

    let response = http_exchange(addr, request_with("/ws", &lines).as_bytes());
    assert_eq!(status_of(&response), 401, "{response}");
    assert!(
        response.ends_with(&format!(
            "\r\n\r\ntoken expired at {exp} (Unix time); get a new token\n"
        )),
        "{response}"
    );

    let response = http_exchange(addr, request_with("/chat?x=1", &lines).as_bytes());
    assert_eq!(status_of(&response), 404, "{response}");
    assert!(
        response.ends_with("\r\n\r\nno WebSocket endpoint at /chat; connect to /ws\n"),
        "{response}"
    );
}
