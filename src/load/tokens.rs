//! Where each virtual user's token and user id come from: minted with a signing key, read
//! from a file (one token per line), or none at all.
//!
//! Pure apart from the clock value passed in: the caller reads key files and the environment.
//! Tokens are secrets, so nothing here logs them or puts them in error text.
#![forbid(unsafe_code)]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::auth::{AuthSetupError, Signer};

/// Source of upgrade tokens for the virtual users.
#[derive(Debug, Clone)]
pub enum TokenSource {
    /// Send no token (`--no-auth`).
    None,
    /// Mint a token per user with `sub` = the user id, valid for `ttl_secs`.
    Mint { signer: Signer, ttl_secs: u64 },
    /// Use the tokens of a file in turn: user `i` gets line `i` modulo the line count.
    File { tokens: Vec<String> },
}

impl TokenSource {
    /// User id of virtual user `index`: the `sub` claim of its token from a file, or
    /// `<prefix><index>` otherwise.
    pub fn user_id(&self, index: u32, prefix: &str) -> String {
        if let Self::File { tokens } = self
            && let Some(sub) = file_token(tokens, index).and_then(unverified_sub)
        {
            return sub;
        }
        format!("{prefix}{index}")
    }

    /// Token for virtual user `index` whose id is `user`, minted at `now_unix` if minting.
    pub fn token(
        &self,
        index: u32,
        user: &str,
        now_unix: u64,
    ) -> Result<Option<String>, AuthSetupError> {
        match self {
            Self::None => Ok(None),
            Self::Mint { signer, ttl_secs } => {
                signer.mint(user, now_unix, *ttl_secs, None, None).map(Some)
            }
            Self::File { tokens } => Ok(file_token(tokens, index).map(str::to_owned)),
        }
    }
}

fn file_token(tokens: &[String], index: u32) -> Option<&str> {
    let count = tokens.len().max(1);
    let slot = usize::try_from(index).unwrap_or(0) % count;
    tokens.get(slot).map(String::as_str)
}

/// Reads tokens from the text of a token file: one per line, blank lines and lines starting
/// with `#` skipped.
pub fn parse_token_file(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// Reads the `sub` claim of a JWT without checking its signature, so relay messages can name
/// a peer whose token came from a file. Returns `None` when the token is not a JWT with a
/// string `sub`.
pub fn unverified_sub(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("sub")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_with_payload(payload: &str) -> String {
        format!("e30.{}.sig", URL_SAFE_NO_PAD.encode(payload))
    }

    #[test]
    fn token_file_skips_blank_and_comment_lines() {
        let tokens = parse_token_file("a.b.c\n\n# note\n  d.e.f  \n");
        assert_eq!(tokens, ["a.b.c", "d.e.f"]);
    }

    #[test]
    fn unverified_sub_reads_claim() {
        assert_eq!(
            unverified_sub(&token_with_payload(r#"{"sub":"alice","exp":1}"#)).as_deref(),
            Some("alice")
        );
        assert_eq!(unverified_sub(&token_with_payload(r#"{"sub":5}"#)), None);
        assert_eq!(unverified_sub("not-a-jwt"), None);
        assert_eq!(unverified_sub("a.!!!.c"), None);
    }

    #[test]
    fn file_source_cycles_tokens_and_uses_sub_as_user() {
        let source = TokenSource::File {
            tokens: vec![
                token_with_payload(r#"{"sub":"alice"}"#),
                "opaque".to_owned(),
            ],
        };
        assert_eq!(source.user_id(0, "user-"), "alice");
        assert_eq!(source.user_id(1, "user-"), "user-1");
        assert_eq!(source.user_id(2, "user-"), "alice");
        assert_eq!(source.token(3, "x", 0).unwrap().as_deref(), Some("opaque"));
    }

    #[test]
    fn none_source_has_no_token() {
        assert_eq!(TokenSource::None.token(0, "user-0", 0).unwrap(), None);
        assert_eq!(TokenSource::None.user_id(4, "u"), "u4");
    }

    #[test]
    fn mint_source_signs_token_for_user() {
        let signer = Signer::from_secret(
            jsonwebtoken::Algorithm::HS256,
            b"load-test-secret-of-at-least-32-bytes!!",
        )
        .unwrap();
        let source = TokenSource::Mint {
            signer,
            ttl_secs: 60,
        };
        let token = source.token(0, "user-0", 1_000).unwrap().unwrap();
        assert_eq!(unverified_sub(&token).as_deref(), Some("user-0"));
    }
}
