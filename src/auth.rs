//! JWT authentication: verifies the bearer token of an upgrade request and mints test tokens.
//!
//! [`Verifier`] checks a JWS in compact serialization (RFC 7515 §7.1) against one configured
//! key and an explicit algorithm allow-list. It then checks the registered claims `exp`, `nbf`,
//! `sub`, `iss` and `aud` (RFC 7519 §4.1) against a time that the caller passes in. [`Signer`]
//! mints tokens for the `framegate token` command and the load generator. Signatures are
//! computed and checked by `jsonwebtoken` 12 with its RustCrypto provider.
//!
//! This module does no I/O, never reads the clock and logs nothing. It does not read key
//! files, fetch key sets (JWKS), select keys by `kid` or handle encrypted tokens (JWE).

#![forbid(unsafe_code)]

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::crypto::CryptoProvider;
use jsonwebtoken::errors::{Error as JwtError, ErrorKind};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey, Header, Validation};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

/// Maximum length of a token in bytes. [`Verifier::verify`] rejects longer tokens as
/// [`AuthError::Malformed`] before decoding anything, which bounds the base64, JSON and
/// signature work that one request can cause.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Default for [`AuthConfig::leeway_secs`]: no allowance for clock skew.
pub const DEFAULT_LEEWAY_SECS: u64 = 0;

/// Minimum RSA modulus size, from RFC 7518 §3.3 and §3.5.
const MIN_RSA_MODULUS_BITS: usize = 2048;

/// Reason a token was rejected. Every variant means "not authenticated".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The header `alg` is unknown, `none`, or missing from [`AuthConfig::algorithms`].
    #[error("token algorithm is not in the allowed list")]
    AlgorithmNotAllowed,
    /// `exp` plus leeway is at or before the verification time. `exp` is the claim in Unix
    /// seconds, `None` only if `jsonwebtoken` itself reports the expiry.
    #[error("token expired{}; get a new token", expired_at(.exp))]
    Expired {
        /// The token's `exp` claim, in Unix seconds.
        exp: Option<u64>,
    },
    /// An audience is configured and `aud` does not contain it, or no audience is configured
    /// and the token carries `aud`.
    #[error("token audience is not accepted")]
    InvalidAudience,
    /// An issuer is configured and `iss` is missing or different.
    #[error("token issuer is not accepted")]
    InvalidIssuer,
    /// The signature does not match the header and payload under the configured key.
    #[error("token signature is invalid")]
    InvalidSignature,
    /// The token is too long, is not three base64url segments, or a segment or claim does not
    /// decode to the expected JSON type.
    #[error("token is malformed")]
    Malformed,
    /// The payload has no `exp` member.
    #[error("token has no `exp` claim")]
    MissingExp,
    /// The payload has no `sub` member, or `sub` is the empty string.
    #[error("token has no `sub` claim")]
    MissingSub,
    /// `nbf` is later than the verification time plus leeway.
    #[error("token is not valid yet")]
    NotYetValid,
}

/// Formats the ` at <exp> (Unix time)` part of the [`AuthError::Expired`] text.
fn expired_at(exp: &Option<u64>) -> String {
    exp.map(|exp| format!(" at {exp} (Unix time)"))
        .unwrap_or_default()
}

/// Key that [`Verifier`] checks signatures with.
///
/// `Debug` prints only the variant name, never the key bytes.
#[derive(Clone)]
pub enum KeyMaterial {
    /// Raw HMAC secret for HS256, HS384 or HS512.
    Secret(Vec<u8>),
    /// PEM text of a public key: an SPKI `PUBLIC KEY` block (RSA, EC P-256, EC P-384 or
    /// Ed25519) or a PKCS#1 `RSA PUBLIC KEY` block.
    PublicPem(Vec<u8>),
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::Secret(_) => "Secret",
            Self::PublicPem(_) => "PublicPem",
        };
        f.debug_tuple(name).finish_non_exhaustive()
    }
}

/// Settings for [`Verifier::new`].
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Algorithms accepted in the token header. Must be non-empty and all usable with `key`.
    /// RFC 8725 §3.1 requires one algorithm per key. More than one is accepted for issuers
    /// that need it.
    pub algorithms: Vec<Algorithm>,
    /// Key for signature checks.
    pub key: KeyMaterial,
    /// Required `iss` value. `None` ignores `iss`.
    pub issuer: Option<String>,
    /// Required member of `aud`. `None` accepts only tokens without `aud` (RFC 7519 §4.1.3).
    pub audience: Option<String>,
    /// Allowance for clock skew in seconds, applied to `exp` and `nbf`. Default
    /// [`DEFAULT_LEEWAY_SECS`] (0).
    pub leeway_secs: u64,
}

/// Configuration or signing failure. Messages name the problem and the fix, never key bytes.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    /// The key cannot be used with one of the algorithms.
    #[error(
        "algorithm {algorithm:?} needs {expected} but the configured key is {found}; \
         list only algorithms that match the key, or configure a matching key"
    )]
    AlgorithmKeyMismatch {
        algorithm: Algorithm,
        expected: &'static str,
        found: &'static str,
    },
    /// [`AuthConfig::algorithms`] is empty.
    #[error("algorithm allow-list is empty; list at least one algorithm, such as RS256 or HS256")]
    EmptyAlgorithmList,
    /// [`Signer::mint`] was given an empty subject, which [`Verifier`] would reject.
    #[error("token subject is empty; pass a non-empty `sub`")]
    EmptySubject,
    /// `now_unix + ttl_secs` does not fit in `u64`.
    #[error(
        "token expiry overflows: now {now_unix} plus ttl {ttl_secs} s exceeds u64; use a smaller ttl"
    )]
    ExpiryOverflow { now_unix: u64, ttl_secs: u64 },
    /// The private key PEM is not a key this module can sign with.
    #[error(
        "private key PEM is not a supported key; give an unencrypted PKCS#8 `PRIVATE KEY` block \
         (RSA, EC P-256, EC P-384 or Ed25519) or an `RSA PRIVATE KEY` block, for example from \
         `openssl pkcs8 -topk8 -nocrypt`"
    )]
    InvalidPrivateKeyPem,
    /// The public key PEM is not a key this module can verify with.
    #[error(
        "public key PEM is not a supported key; give a `PUBLIC KEY` block (RSA, EC P-256, \
         EC P-384 or Ed25519) or an `RSA PUBLIC KEY` block, for example from `openssl pkey -pubout`"
    )]
    InvalidPublicKeyPem,
    /// `jsonwebtoken` has no crypto provider, so it would panic on first use.
    #[error(
        "jsonwebtoken has no crypto provider; build it with exactly one of the `rust_crypto` \
         and `aws_lc_rs` features"
    )]
    NoCryptoProvider,
    /// A private key was configured where the verifier needs the public key.
    #[error(
        "verifier key PEM is a private key; configure the public key instead, for example from \
         `openssl pkey -pubout`"
    )]
    PrivateKeyInVerifier,
    /// A public key was given where the signer needs the private key.
    #[error("signer key PEM is a public key; give the matching private key")]
    PublicKeyInSigner,
    /// The HMAC secret is shorter than the hash output, which RFC 7518 §3.2 forbids.
    #[error(
        "HMAC secret for {algorithm:?} is {len_bytes} bytes but at least {min_bytes} are \
         required; generate a longer random secret"
    )]
    SecretTooShort {
        algorithm: Algorithm,
        min_bytes: usize,
        len_bytes: usize,
    },
    /// `jsonwebtoken` failed to serialize or sign a token.
    #[error("signing a token with {algorithm:?} failed; check that the private key is intact")]
    SigningFailed { algorithm: Algorithm },
    /// The RSA modulus is shorter than 2048 bits, which RFC 7518 §3.3 forbids.
    #[error("RSA key has {bits} bits but at least 2048 are required; generate a larger key")]
    WeakRsaKey { bits: usize },
}

/// Claims of a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// Subject, non-empty.
    pub sub: String,
    /// Expiry, in seconds since the Unix epoch. Fractional values are rounded up.
    pub exp: u64,
    /// Issue time, in seconds since the Unix epoch, when present. Not checked.
    pub iat: Option<u64>,
}

/// Checks tokens against one key, an algorithm allow-list and the configured claims.
///
/// `Send` and `Sync`, so workers can share one instance behind an `Arc` or each hold a clone.
#[derive(Clone)]
pub struct Verifier {
    /// INVARIANT: non-empty, and every entry works with `key` (checked in [`Verifier::new`]).
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
    /// Description of `key` for `Debug`, such as "an RSA public key".
    key_kind: &'static str,
    /// Settings for the signature check only. The claim checks of `jsonwebtoken` read the
    /// system clock, so they are off, and [`Verifier::check_claims`] runs them on `now_unix`.
    validation: Validation,
    issuer: Option<String>,
    audience: Option<String>,
    leeway_secs: u64,
}

impl Verifier {
    /// Builds a verifier, checking that every listed algorithm works with the key.
    ///
    /// Rejects an empty list, a PEM key with an HMAC algorithm, a secret with any other
    /// algorithm, an EC key on the wrong curve, a private key and an RSA key under 2048 bits.
    /// Also rejects an HMAC secret shorter than the hash output: 32, 48 or 64 bytes for HS256,
    /// HS384 or HS512.
    pub fn new(cfg: &AuthConfig) -> Result<Self, AuthSetupError> {
        let provider = CryptoProvider::try_get_default().ok_or(AuthSetupError::NoCryptoProvider)?;
        let Some(&first) = cfg.algorithms.first() else {
            return Err(AuthSetupError::EmptyAlgorithmList);
        };

        let (key, key_kind) = match &cfg.key {
            KeyMaterial::Secret(secret) => decoding_key_from_secret(&cfg.algorithms, secret)?,
            KeyMaterial::PublicPem(pem) => decoding_key_from_pem(provider, pem)?,
        };

        // The family check keeps an HMAC algorithm away from public key bytes, which is the
        // key-confusion attack of RFC 8725 §2.1. The factory probe catches an EC curve that
        // does not match ES256 or ES384.
        for &algorithm in &cfg.algorithms {
            let mismatch = AuthSetupError::AlgorithmKeyMismatch {
                algorithm,
                expected: key_needed(algorithm, KeyRole::Verify),
                found: key_kind,
            };
            if algorithm.family() != key.family() {
                return Err(mismatch);
            }
            if (provider.verifier_factory)(&algorithm, &key).is_err() {
                return Err(mismatch);
            }
        }

        let mut validation = Validation::new(first);
        validation.algorithms.clone_from(&cfg.algorithms);
        validation.required_spec_claims.clear();
        validation.leeway = 0;
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;

        Ok(Self {
            algorithms: cfg.algorithms.clone(),
            key,
            key_kind,
            validation,
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            leeway_secs: cfg.leeway_secs,
        })
    }

    /// Verifies `token` and returns its claims.
    ///
    /// Pure: `now_unix` (seconds since the Unix epoch) comes from the caller, and this never
    /// reads the clock. Checks run in this order, and the first failure is returned: length,
    /// shape and header, algorithm, signature, payload JSON, then claims (`exp` present, `sub`
    /// present, `exp`, `nbf`, `iss`, `aud`).
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<Claims, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Malformed);
        }

        // RFC 8725 §3.1: the header `alg` must be one that the recipient allows.
        // This runs before `jsonwebtoken` so that `none` and unknown names are reported as
        // AlgorithmNotAllowed instead of a JSON error.
        let algorithm = header_algorithm(compact_header(token)?)?;
        if !self.algorithms.contains(&algorithm) {
            return Err(AuthError::AlgorithmNotAllowed);
        }

        let data = jsonwebtoken::decode::<RawClaims>(token, &self.key, &self.validation)
            .map_err(|error| map_decode_error(&error))?;

        self.check_claims(data.claims, now_unix)
    }

    /// Checks the registered claims of a token whose signature is already verified.
    fn check_claims(&self, claims: RawClaims, now_unix: u64) -> Result<Claims, AuthError> {
        let exp = claims.exp.ok_or(AuthError::MissingExp)?;
        let sub = claims
            .sub
            .filter(|sub| !sub.is_empty())
            .ok_or(AuthError::MissingSub)?;

        // RFC 7519 §4.1.4: the current time must be before `exp`, so a token is expired from
        // second `exp` onwards.
        if now_unix >= exp.0.saturating_add(self.leeway_secs) {
            return Err(AuthError::Expired { exp: Some(exp.0) });
        }

        // RFC 7519 §4.1.5: the current time must be at or after `nbf`.
        if let Some(nbf) = claims.nbf
            && now_unix.saturating_add(self.leeway_secs) < nbf.0
        {
            return Err(AuthError::NotYetValid);
        }

        // RFC 7519 §4.1.1: `iss` is compared as a case-sensitive string.
        if let Some(expected) = &self.issuer
            && claims.iss.as_deref() != Some(expected.as_str())
        {
            return Err(AuthError::InvalidIssuer);
        }

        // RFC 7519 §4.1.3: a recipient that does not find itself in a present `aud` must
        // reject the token, including a recipient with no configured audience.
        let audience_accepted = match (&self.audience, &claims.aud) {
            (None, None) => true,
            (None, Some(_)) | (Some(_), None) => false,
            (Some(expected), Some(aud)) => aud.contains(expected),
        };
        if !audience_accepted {
            return Err(AuthError::InvalidAudience);
        }

        Ok(Claims {
            sub,
            exp: exp.0,
            iat: claims.iat.map(|iat| iat.0),
        })
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithms", &self.algorithms)
            .field("key", &self.key_kind)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_secs", &self.leeway_secs)
            .finish()
    }
}

/// Mints signed tokens with one algorithm and key.
#[derive(Clone)]
pub struct Signer {
    algorithm: Algorithm,
    key: EncodingKey,
    /// Description of `key` for `Debug`, such as "an RSA private key".
    key_kind: &'static str,
}

impl Signer {
    /// Builds an HMAC signer. The secret must be at least as long as the hash output: 32, 48
    /// or 64 bytes for HS256, HS384 or HS512 (RFC 7518 §3.2).
    pub fn from_secret(algorithm: Algorithm, secret: &[u8]) -> Result<Self, AuthSetupError> {
        // `jsonwebtoken::encode` panics without a provider, so fail here instead.
        CryptoProvider::try_get_default().ok_or(AuthSetupError::NoCryptoProvider)?;
        let key_kind = "an HMAC secret";
        if algorithm.family() != AlgorithmFamily::Hmac {
            return Err(AuthSetupError::AlgorithmKeyMismatch {
                algorithm,
                expected: key_needed(algorithm, KeyRole::Sign),
                found: key_kind,
            });
        }

        let too_short = AuthSetupError::SecretTooShort {
            algorithm,
            min_bytes: min_secret_bytes(algorithm),
            len_bytes: secret.len(),
        };
        if secret.len() < min_secret_bytes(algorithm) {
            return Err(too_short);
        }
        // `from_secret` rejects only an empty secret, which the length check above excludes.
        let key = EncodingKey::from_secret(secret).map_err(|_| too_short)?;
        Ok(Self {
            algorithm,
            key,
            key_kind,
        })
    }

    /// Builds a signer from a private key PEM: PKCS#8 `PRIVATE KEY` (RSA, EC P-256, EC P-384,
    /// Ed25519) or PKCS#1 `RSA PRIVATE KEY`. RSA keys must have at least 2048 bits.
    pub fn from_private_pem(algorithm: Algorithm, pem: &[u8]) -> Result<Self, AuthSetupError> {
        let provider = CryptoProvider::try_get_default().ok_or(AuthSetupError::NoCryptoProvider)?;
        let (key, key_kind) = encoding_key_from_pem(provider, pem)?;

        let mismatch = |found| AuthSetupError::AlgorithmKeyMismatch {
            algorithm,
            expected: key_needed(algorithm, KeyRole::Sign),
            found,
        };
        if algorithm.family() != key.family() {
            return Err(mismatch(key_kind));
        }
        // The factory rejects an EC key whose curve does not match ES256 or ES384.
        if (provider.signer_factory)(&algorithm, &key).is_err() {
            let found = match key.family() {
                AlgorithmFamily::Ec => "an EC private key on a different curve",
                _ => key_kind,
            };
            return Err(mismatch(found));
        }
        Ok(Self {
            algorithm,
            key,
            key_kind,
        })
    }

    /// Mints a token for `sub` with `iat = now_unix` and `exp = now_unix + ttl_secs`, adding
    /// `iss` and `aud` when given. With `ttl_secs = 0` the token is already expired at
    /// `now_unix`, because `exp` is exclusive.
    pub fn mint(
        &self,
        sub: &str,
        now_unix: u64,
        ttl_secs: u64,
        issuer: Option<&str>,
        audience: Option<&str>,
    ) -> Result<String, AuthSetupError> {
        if sub.is_empty() {
            return Err(AuthSetupError::EmptySubject);
        }
        let exp = now_unix
            .checked_add(ttl_secs)
            .ok_or(AuthSetupError::ExpiryOverflow { now_unix, ttl_secs })?;

        let claims = MintClaims {
            sub,
            iat: now_unix,
            exp,
            iss: issuer,
            aud: audience,
        };
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, &self.key).map_err(|_| {
            AuthSetupError::SigningFailed {
                algorithm: self.algorithm,
            }
        })
    }
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("algorithm", &self.algorithm)
            .field("key", &self.key_kind)
            .finish()
    }
}

/// Whether a key is wanted for verifying or for signing, which decides the wording of
/// [`key_needed`].
#[derive(Clone, Copy)]
enum KeyRole {
    Sign,
    Verify,
}

/// Describes the key `algorithm` needs, for error messages.
fn key_needed(algorithm: Algorithm, role: KeyRole) -> &'static str {
    match (algorithm.family(), role) {
        (AlgorithmFamily::Hmac, _) => "an HMAC secret",
        (AlgorithmFamily::Rsa, KeyRole::Verify) => "an RSA public key",
        (AlgorithmFamily::Rsa, KeyRole::Sign) => "an RSA private key",
        (AlgorithmFamily::Ed, KeyRole::Verify) => "an Ed25519 public key",
        (AlgorithmFamily::Ed, KeyRole::Sign) => "an Ed25519 private key",
        (AlgorithmFamily::Ec, role) => match (algorithm, role) {
            (Algorithm::ES256, KeyRole::Verify) => "an EC P-256 public key",
            (Algorithm::ES256, KeyRole::Sign) => "an EC P-256 private key",
            (Algorithm::ES384, KeyRole::Verify) => "an EC P-384 public key",
            (Algorithm::ES384, KeyRole::Sign) => "an EC P-384 private key",
            (_, KeyRole::Verify) => "an EC public key",
            (_, KeyRole::Sign) => "an EC private key",
        },
    }
}

/// Returns the minimum HMAC secret length: the hash output size (RFC 7518 §3.2).
fn min_secret_bytes(algorithm: Algorithm) -> usize {
    match algorithm {
        Algorithm::HS256 => 32,
        Algorithm::HS384 => 48,
        _ => 64,
    }
}

/// Builds an HMAC decoding key after checking the secret against every algorithm.
fn decoding_key_from_secret(
    algorithms: &[Algorithm],
    secret: &[u8],
) -> Result<(DecodingKey, &'static str), AuthSetupError> {
    let key_kind = "an HMAC secret";
    for &algorithm in algorithms {
        if algorithm.family() != AlgorithmFamily::Hmac {
            return Err(AuthSetupError::AlgorithmKeyMismatch {
                algorithm,
                expected: key_needed(algorithm, KeyRole::Verify),
                found: key_kind,
            });
        }
        if secret.len() < min_secret_bytes(algorithm) {
            return Err(AuthSetupError::SecretTooShort {
                algorithm,
                min_bytes: min_secret_bytes(algorithm),
                len_bytes: secret.len(),
            });
        }
    }

    // The loop above rejected an empty secret, which is the only input `from_secret` rejects.
    let key = DecodingKey::from_secret(secret).map_err(|_| AuthSetupError::SecretTooShort {
        algorithm: Algorithm::HS256,
        min_bytes: min_secret_bytes(Algorithm::HS256),
        len_bytes: secret.len(),
    })?;
    Ok((key, key_kind))
}

/// Parses a public key PEM into a decoding key of whichever family it belongs to.
fn decoding_key_from_pem(
    provider: &CryptoProvider,
    pem: &[u8],
) -> Result<(DecodingKey, &'static str), AuthSetupError> {
    let label = pem_label(pem).ok_or(AuthSetupError::InvalidPublicKeyPem)?;
    match label {
        b"PUBLIC KEY" | b"RSA PUBLIC KEY" => {}
        b"PRIVATE KEY" | b"RSA PRIVATE KEY" | b"EC PRIVATE KEY" | b"ENCRYPTED PRIVATE KEY" => {
            return Err(AuthSetupError::PrivateKeyInVerifier);
        }
        _ => return Err(AuthSetupError::InvalidPublicKeyPem),
    }

    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        let der = key
            .try_get_as_bytes()
            .map_err(|_| AuthSetupError::InvalidPublicKeyPem)?;
        let (modulus, _exponent) = (provider.key_utils.rsa_pub_components_from_public_key)(der)
            .map_err(|_| AuthSetupError::InvalidPublicKeyPem)?;
        check_rsa_modulus(&modulus)?;
        return Ok((key, "an RSA public key"));
    }

    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        // SEC 1 §2.3.3 point sizes: 1 + 2 * 32 (or 1 + 32 compressed) bytes on P-256, and
        // 1 + 2 * 48 (or 1 + 48) on P-384. The size only names the curve for messages. The
        // factory probe in `Verifier::new` does the real check.
        let key_kind = match key.try_get_as_bytes().map(<[u8]>::len) {
            Ok(33 | 65) => "an EC P-256 public key",
            Ok(49 | 97) => "an EC P-384 public key",
            _ => "an EC public key on a curve other than P-256 and P-384",
        };
        return Ok((key, key_kind));
    }

    if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        // `jsonwebtoken` 12 slices the first 32 bytes when building an EdDSA verifier, which
        // panics on a shorter key, so the length is checked before any verifier is built.
        let is_ed25519 = key.try_get_as_bytes().is_ok_and(|bytes| bytes.len() == 32);
        if !is_ed25519 {
            return Err(AuthSetupError::InvalidPublicKeyPem);
        }
        return Ok((key, "an Ed25519 public key"));
    }

    Err(AuthSetupError::InvalidPublicKeyPem)
}

/// Parses a private key PEM into an encoding key of whichever family it belongs to.
fn encoding_key_from_pem(
    provider: &CryptoProvider,
    pem: &[u8],
) -> Result<(EncodingKey, &'static str), AuthSetupError> {
    let label = pem_label(pem).ok_or(AuthSetupError::InvalidPrivateKeyPem)?;
    match label {
        b"PRIVATE KEY" | b"RSA PRIVATE KEY" => {}
        b"PUBLIC KEY" | b"RSA PUBLIC KEY" => return Err(AuthSetupError::PublicKeyInSigner),
        _ => return Err(AuthSetupError::InvalidPrivateKeyPem),
    }

    // The RSA signer parses its key only when signing, so parse it here to fail early.
    if let Ok(key) = EncodingKey::from_rsa_pem(pem) {
        let (modulus, _exponent) =
            (provider.key_utils.rsa_pub_components_from_private_key)(key.as_bytes())
                .map_err(|_| AuthSetupError::InvalidPrivateKeyPem)?;
        check_rsa_modulus(&modulus)?;
        return Ok((key, "an RSA private key"));
    }
    if let Ok(key) = EncodingKey::from_ec_pem(pem) {
        return Ok((key, "an EC private key"));
    }
    if let Ok(key) = EncodingKey::from_ed_pem(pem) {
        return Ok((key, "an Ed25519 private key"));
    }
    Err(AuthSetupError::InvalidPrivateKeyPem)
}

/// Rejects an RSA modulus (big-endian bytes) shorter than [`MIN_RSA_MODULUS_BITS`].
fn check_rsa_modulus(modulus: &[u8]) -> Result<(), AuthSetupError> {
    let mut significant = modulus.iter().skip_while(|&&byte| byte == 0);
    let bits = match significant.next() {
        Some(&top) => {
            let top_bits = usize::try_from(u8::BITS - top.leading_zeros()).unwrap_or(8);
            top_bits + 8 * significant.count()
        }
        None => 0,
    };
    if bits < MIN_RSA_MODULUS_BITS {
        return Err(AuthSetupError::WeakRsaKey { bits });
    }
    Ok(())
}

/// Returns the label of the first PEM block (RFC 7468 §2), such as `PUBLIC KEY`.
fn pem_label(pem: &[u8]) -> Option<&[u8]> {
    const BEGIN: &[u8] = b"-----BEGIN ";
    const DASHES: &[u8] = b"-----";
    let start = find(pem, BEGIN)? + BEGIN.len();
    let rest = pem.get(start..)?;
    let end = find(rest, DASHES)?;
    rest.get(..end)
}

/// Returns the index of the first occurrence of `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Returns the header segment of a compact JWS, which has exactly three segments
/// (RFC 7515 §7.1). Anything else, including a five-segment JWE, is Malformed.
fn compact_header(token: &str) -> Result<&str, AuthError> {
    let mut segments = token.split('.');
    match (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) {
        (Some(header), Some(_payload), Some(_signature), None) => Ok(header),
        _ => Err(AuthError::Malformed),
    }
}

/// Header members this module reads before `jsonwebtoken` parses the full header.
#[derive(Deserialize)]
struct AlgorithmHeader<'a> {
    #[serde(borrow)]
    alg: Cow<'a, str>,
}

/// Decodes the header segment and returns its `alg`.
///
/// A header that is not base64url JSON with a string `alg` is Malformed. An `alg` that names
/// no supported algorithm, such as `none` in any letter case, is AlgorithmNotAllowed, because
/// the names are case-sensitive (RFC 7515 §4.1.1) and `jsonwebtoken` has no `none`.
fn header_algorithm(header_b64: &str) -> Result<Algorithm, AuthError> {
    let json = URL_SAFE_NO_PAD
        .decode(header_b64)
        .map_err(|_| AuthError::Malformed)?;
    let header: AlgorithmHeader<'_> =
        serde_json::from_slice(&json).map_err(|_| AuthError::Malformed)?;
    Algorithm::from_str(&header.alg).map_err(|_| AuthError::AlgorithmNotAllowed)
}

/// Maps a `jsonwebtoken::decode` failure to the reason reported to the peer.
///
/// Claim checks are switched off in the `Validation` passed to `decode`, so only shape,
/// header, algorithm, signature and payload JSON failures occur. The claim variants are
/// mapped anyway so that a change in `jsonwebtoken` defaults cannot loosen the mapping.
fn map_decode_error(error: &JwtError) -> AuthError {
    match error.kind() {
        // Wrong segment count, a `crit` or `b64` header member it does not support, or a
        // segment that is not base64url, UTF-8 or the expected JSON.
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => AuthError::Malformed,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm
        | ErrorKind::UnsupportedAlgorithm => AuthError::AlgorithmNotAllowed,
        ErrorKind::InvalidSignature => AuthError::InvalidSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired { exp: None },
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidAudience => AuthError::InvalidAudience,
        ErrorKind::InvalidIssuer => AuthError::InvalidIssuer,
        ErrorKind::MissingRequiredClaim(claim) if claim == "exp" => AuthError::MissingExp,
        ErrorKind::MissingRequiredClaim(claim) if claim == "sub" => AuthError::MissingSub,
        ErrorKind::MissingRequiredClaim(_)
        | ErrorKind::InvalidClaimFormat(_)
        | ErrorKind::InvalidSubject => AuthError::Malformed,
        // Key and provider failures. `Verifier::new` built a verifier for every allowed
        // algorithm, so these mean that the token could not be checked against the key, and
        // it is rejected as unverified.
        ErrorKind::InvalidKeyFormat
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::RsaFailedSigning
        | ErrorKind::Signing(_)
        | ErrorKind::Provider(_) => AuthError::InvalidSignature,
        // `ErrorKind` is non-exhaustive. A variant added by a later `jsonwebtoken` is treated
        // as an unverified token.
        _ => AuthError::InvalidSignature,
    }
}

/// Registered claims read from the payload.
///
/// A member that is absent is `None`. A member that is present with the wrong JSON type,
/// including `null`, fails deserialization, which `decode` reports as a JSON error and
/// [`map_decode_error`] maps to Malformed.
#[derive(Deserialize)]
struct RawClaims {
    #[serde(default, deserialize_with = "present")]
    sub: Option<String>,
    #[serde(default, deserialize_with = "present")]
    exp: Option<NumericDate>,
    #[serde(default, deserialize_with = "present")]
    nbf: Option<NumericDate>,
    #[serde(default, deserialize_with = "present")]
    iat: Option<NumericDate>,
    #[serde(default, deserialize_with = "present")]
    iss: Option<String>,
    #[serde(default, deserialize_with = "present")]
    aud: Option<Audience>,
}

/// Deserializes a member that is present, so that `null` is an error instead of `None`.
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// Seconds since the Unix epoch (RFC 7519 §2 "NumericDate").
///
/// JSON integers and non-negative finite floats are accepted. Fractions round up, which is
/// the strict direction for both `exp` and `nbf`. Negative values and values above `u64::MAX`
/// are rejected.
#[derive(Clone, Copy)]
struct NumericDate(u64);

impl<'de> Deserialize<'de> for NumericDate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NumericDateVisitor)
    }
}

struct NumericDateVisitor;

impl Visitor<'_> for NumericDateVisitor {
    type Value = NumericDate;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a non-negative number of seconds since the Unix epoch")
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<NumericDate, E> {
        Ok(NumericDate(value))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<NumericDate, E> {
        u64::try_from(value)
            .map(NumericDate)
            .map_err(|_| E::invalid_value(de::Unexpected::Signed(value), &self))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<NumericDate, E> {
        // 2^64, the first float above `u64::MAX`.
        const U64_LIMIT: f64 = 18_446_744_073_709_551_616.0;
        let seconds = value.ceil();
        if !(0.0..U64_LIMIT).contains(&seconds) {
            return Err(E::invalid_value(de::Unexpected::Float(value), &self));
        }
        // The range check above keeps `seconds` finite and in 0..2^64, and `ceil` made it
        // whole, so the conversion is exact.
        Ok(NumericDate(seconds as u64))
    }
}

/// `aud`: one string or an array of strings (RFC 7519 §4.1.3).
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, expected: &str) -> bool {
        match self {
            Self::One(aud) => aud == expected,
            Self::Many(auds) => auds.iter().any(|aud| aud == expected),
        }
    }
}

/// Payload written by [`Signer::mint`].
#[derive(Serialize)]
struct MintClaims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;
    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const OTHER_SECRET: &[u8] = b"fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

    const RSA_PRIVATE: &[u8] = include_bytes!("../tests/data/keys/rsa2048_private.pem");
    const RSA_PUBLIC: &[u8] = include_bytes!("../tests/data/keys/rsa2048_public.pem");
    const RSA_PUBLIC_PKCS1: &[u8] = include_bytes!("../tests/data/keys/rsa2048_public_pkcs1.pem");
    const RSA_OTHER_PRIVATE: &[u8] = include_bytes!("../tests/data/keys/rsa2048_other_private.pem");
    const RSA_OTHER_PUBLIC: &[u8] = include_bytes!("../tests/data/keys/rsa2048_other_public.pem");
    const RSA1024_PRIVATE: &[u8] = include_bytes!("../tests/data/keys/rsa1024_private.pem");
    const RSA1024_PUBLIC: &[u8] = include_bytes!("../tests/data/keys/rsa1024_public.pem");
    const P256_PRIVATE: &[u8] = include_bytes!("../tests/data/keys/ec_p256_private.pem");
    const P256_PUBLIC: &[u8] = include_bytes!("../tests/data/keys/ec_p256_public.pem");
    const P256_OTHER_PRIVATE: &[u8] =
        include_bytes!("../tests/data/keys/ec_p256_other_private.pem");
    const P384_PRIVATE: &[u8] = include_bytes!("../tests/data/keys/ec_p384_private.pem");
    const P384_PUBLIC: &[u8] = include_bytes!("../tests/data/keys/ec_p384_public.pem");
    const ED25519_PRIVATE: &[u8] = include_bytes!("../tests/data/keys/ed25519_private.pem");
    const ED25519_PUBLIC: &[u8] = include_bytes!("../tests/data/keys/ed25519_public.pem");
    const ED25519_OTHER_PRIVATE: &[u8] =
        include_bytes!("../tests/data/keys/ed25519_other_private.pem");

    fn config(algorithms: &[Algorithm], key: KeyMaterial) -> AuthConfig {
        AuthConfig {
            algorithms: algorithms.to_vec(),
            key,
            issuer: None,
            audience: None,
            leeway_secs: DEFAULT_LEEWAY_SECS,
        }
    }

    fn hs256_verifier() -> Verifier {
        Verifier::new(&config(
            &[Algorithm::HS256],
            KeyMaterial::Secret(SECRET.to_vec()),
        ))
        .expect("HS256 test config is valid")
    }

    fn hs256_verifier_with(edit: impl FnOnce(&mut AuthConfig)) -> Verifier {
        let mut cfg = config(&[Algorithm::HS256], KeyMaterial::Secret(SECRET.to_vec()));
        edit(&mut cfg);
        Verifier::new(&cfg).expect("HS256 test config is valid")
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Builds a compact token from raw header and payload JSON, signed with `key`.
    fn hand_token(header: &str, payload: &str, algorithm: Algorithm, key: &EncodingKey) -> String {
        let message = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
        let signature =
            jsonwebtoken::crypto::sign(message.as_bytes(), key, algorithm).expect("test key signs");
        format!("{message}.{signature}")
    }

    /// Builds an HS256 token over `payload` with the test secret.
    fn hs256_token(payload: &str) -> String {
        let key = EncodingKey::from_secret(SECRET).expect("non-empty secret");
        hand_token(
            r#"{"alg":"HS256","typ":"JWT"}"#,
            payload,
            Algorithm::HS256,
            &key,
        )
    }

    fn expired(exp: u64) -> AuthError {
        AuthError::Expired { exp: Some(exp) }
    }

    fn hs256_signer() -> Signer {
        Signer::from_secret(Algorithm::HS256, SECRET).expect("HS256 test signer is valid")
    }

    #[test]
    fn auth_error_display_matches_agreed_text() {
        let cases = [
            (
                AuthError::AlgorithmNotAllowed,
                "token algorithm is not in the allowed list",
            ),
            (
                AuthError::Expired {
                    exp: Some(1_700_000_000),
                },
                "token expired at 1700000000 (Unix time); get a new token",
            ),
            (
                AuthError::Expired { exp: None },
                "token expired; get a new token",
            ),
            (AuthError::InvalidAudience, "token audience is not accepted"),
            (AuthError::InvalidIssuer, "token issuer is not accepted"),
            (AuthError::InvalidSignature, "token signature is invalid"),
            (AuthError::Malformed, "token is malformed"),
            (AuthError::MissingExp, "token has no `exp` claim"),
            (AuthError::MissingSub, "token has no `sub` claim"),
            (AuthError::NotYetValid, "token is not valid yet"),
        ];
        for (error, text) in cases {
            assert_eq!(error.to_string(), text);
        }
    }

    #[test]
    fn verify_each_algorithm_round_trip_accepts() {
        let cases: [(Algorithm, KeyMaterial, Signer); 13] = [
            (
                Algorithm::HS256,
                KeyMaterial::Secret(SECRET.to_vec()),
                hs256_signer(),
            ),
            (
                Algorithm::HS384,
                KeyMaterial::Secret(SECRET.to_vec()),
                Signer::from_secret(Algorithm::HS384, SECRET).expect("HS384 signer"),
            ),
            (
                Algorithm::HS512,
                KeyMaterial::Secret(SECRET.to_vec()),
                Signer::from_secret(Algorithm::HS512, SECRET).expect("HS512 signer"),
            ),
            (
                Algorithm::RS256,
                KeyMaterial::PublicPem(RSA_PUBLIC.to_vec()),
                Signer::from_private_pem(Algorithm::RS256, RSA_PRIVATE).expect("RS256 signer"),
            ),
            (
                Algorithm::RS256,
                KeyMaterial::PublicPem(RSA_PUBLIC_PKCS1.to_vec()),
                Signer::from_private_pem(Algorithm::RS256, RSA_PRIVATE).expect("RS256 signer"),
            ),
            (
                Algorithm::RS384,
                KeyMaterial::PublicPem(RSA_PUBLIC.to_vec()),
                Signer::from_private_pem(Algorithm::RS384, RSA_PRIVATE).expect("RS384 signer"),
            ),
            (
                Algorithm::RS512,
                KeyMaterial::PublicPem(RSA_PUBLIC.to_vec()),
                Signer::from_private_pem(Algorithm::RS512, RSA_PRIVATE).expect("RS512 signer"),
            ),
            (
                Algorithm::PS256,
                KeyMaterial::PublicPem(RSA_PUBLIC.to_vec()),
                Signer::from_private_pem(Algorithm::PS256, RSA_PRIVATE).expect("PS256 signer"),
            ),
            (
                Algorithm::PS384,
                KeyMaterial::PublicPem(RSA_PUBLIC.to_vec()),
                Signer::from_private_pem(Algorithm::PS384, RSA_PRIVATE).expect("PS384 signer"),
            ),
            (
                Algorithm::PS512,
                KeyMaterial::PublicPem(RSA_PUBLIC.to_vec()),
                Signer::from_private_pem(Algorithm::PS512, RSA_PRIVATE).expect("PS512 signer"),
            ),
            (
                Algorithm::ES256,
                KeyMaterial::PublicPem(P256_PUBLIC.to_vec()),
                Signer::from_private_pem(Algorithm::ES256, P256_PRIVATE).expect("ES256 signer"),
            ),
            (
                Algorithm::ES384,
                KeyMaterial::PublicPem(P384_PUBLIC.to_vec()),
                Signer::from_private_pem(Algorithm::ES384, P384_PRIVATE).expect("ES384 signer"),
            ),
            (
                Algorithm::EdDSA,
                KeyMaterial::PublicPem(ED25519_PUBLIC.to_vec()),
                Signer::from_private_pem(Algorithm::EdDSA, ED25519_PRIVATE).expect("EdDSA signer"),
            ),
        ];
        for (algorithm, key, signer) in cases {
            let verifier = Verifier::new(&config(&[algorithm], key))
                .unwrap_or_else(|error| panic!("{algorithm:?} verifier: {error}"));
            let token = signer.mint("user-1", NOW, 60, None, None).expect("mint");

            let claims = verifier.verify(&token, NOW);

            let expected = Claims {
                sub: "user-1".to_owned(),
                exp: NOW + 60,
                iat: Some(NOW),
            };
            assert_eq!(claims, Ok(expected), "{algorithm:?}");
        }
    }

    #[test]
    fn verify_other_key_is_invalid_signature() {
        let rsa_verifier = Verifier::new(&config(
            &[Algorithm::RS256],
            KeyMaterial::PublicPem(RSA_PUBLIC.to_vec()),
        ))
        .expect("RS256 verifier");
        let cases = [
            (
                rsa_verifier.clone(),
                Signer::from_private_pem(Algorithm::RS256, RSA_OTHER_PRIVATE).expect("signer"),
            ),
            (
                Verifier::new(&config(
                    &[Algorithm::RS256],
                    KeyMaterial::PublicPem(RSA_OTHER_PUBLIC.to_vec()),
                ))
                .expect("RS256 verifier"),
                Signer::from_private_pem(Algorithm::RS256, RSA_PRIVATE).expect("signer"),
            ),
            (
                hs256_verifier(),
                Signer::from_secret(Algorithm::HS256, OTHER_SECRET).expect("signer"),
            ),
            (
                Verifier::new(&config(
                    &[Algorithm::ES256],
                    KeyMaterial::PublicPem(P256_PUBLIC.to_vec()),
                ))
                .expect("ES256 verifier"),
                Signer::from_private_pem(Algorithm::ES256, P256_OTHER_PRIVATE).expect("signer"),
            ),
            (
                Verifier::new(&config(
                    &[Algorithm::EdDSA],
                    KeyMaterial::PublicPem(ED25519_PUBLIC.to_vec()),
                ))
                .expect("EdDSA verifier"),
                Signer::from_private_pem(Algorithm::EdDSA, ED25519_OTHER_PRIVATE).expect("signer"),
            ),
        ];
        for (verifier, signer) in cases {
            let token = signer.mint("user-1", NOW, 60, None, None).expect("mint");
            assert_eq!(
                verifier.verify(&token, NOW),
                Err(AuthError::InvalidSignature),
                "{signer:?}"
            );
        }
    }

    #[test]
    fn verify_tampered_token_is_invalid_signature() {
        let verifier = hs256_verifier();
        let token = hs256_signer()
            .mint("user-1", NOW, 60, None, None)
            .expect("mint");
        let other = hs256_signer()
            .mint("user-2", NOW, 60, None, None)
            .expect("mint");
        let (message, _) = token.rsplit_once('.').expect("three segments");
        let (_, other_signature) = other.rsplit_once('.').expect("three segments");
        let (header, _) = token.split_once('.').expect("three segments");
        let forged_payload = b64(br#"{"sub":"admin","exp":1700000060}"#);
        let (_, signature) = token.rsplit_once('.').expect("three segments");

        let cases = [
            format!("{message}.{other_signature}"),
            format!("{header}.{forged_payload}.{signature}"),
            format!("{message}."),
            format!("{message}.{}", b64(&[0_u8; 32])),
        ];
        for token in cases {
            assert_eq!(
                verifier.verify(&token, NOW),
                Err(AuthError::InvalidSignature),
                "{token}"
            );
        }
    }

    #[test]
    fn verify_exp_boundary_and_leeway() {
        // `exp` is exclusive: a token is valid while now < exp + leeway.
        let cases = [
            (NOW - 1, 0, Err(expired(NOW - 1))),
            (NOW, 0, Err(expired(NOW))),
            (NOW + 1, 0, Ok(())),
            (NOW - 5, 5, Err(expired(NOW - 5))),
            (NOW - 4, 5, Ok(())),
            (0, 0, Err(expired(0))),
            (u64::MAX, u64::MAX, Ok(())),
        ];
        for (exp, leeway_secs, expected) in cases {
            let verifier = hs256_verifier_with(|cfg| cfg.leeway_secs = leeway_secs);
            let token = hs256_token(&format!(r#"{{"sub":"u","exp":{exp}}}"#));

            let result = verifier.verify(&token, NOW).map(|_| ());

            assert_eq!(result, expected, "exp {exp}, leeway {leeway_secs}");
        }
    }

    #[test]
    fn verify_nbf_boundary_and_leeway() {
        // `nbf` is inclusive: a token is valid once now + leeway >= nbf.
        let cases = [
            (NOW + 1, 0, Err(AuthError::NotYetValid)),
            (NOW, 0, Ok(())),
            (NOW - 1, 0, Ok(())),
            (NOW + 5, 5, Ok(())),
            (NOW + 6, 5, Err(AuthError::NotYetValid)),
        ];
        for (nbf, leeway_secs, expected) in cases {
            let verifier = hs256_verifier_with(|cfg| cfg.leeway_secs = leeway_secs);
            let token = hs256_token(&format!(r#"{{"sub":"u","exp":{},"nbf":{nbf}}}"#, NOW + 100));

            let result = verifier.verify(&token, NOW).map(|_| ());

            assert_eq!(result, expected, "nbf {nbf}, leeway {leeway_secs}");
        }
    }

    #[test]
    fn verify_numeric_date_forms() {
        let verifier = hs256_verifier();
        let cases = [
            // Fractions round up: exp now + 0.5 expires at now + 1.
            (format!(r#"{{"sub":"u","exp":{}.5}}"#, NOW), Ok(NOW + 1)),
            (
                format!(r#"{{"sub":"u","exp":{}.5}}"#, NOW - 1),
                Err(expired(NOW)),
            ),
            (
                format!(r#"{{"sub":"u","exp":{}.0}}"#, NOW + 10),
                Ok(NOW + 10),
            ),
            (
                format!(r#"{{"sub":"u","exp":{}e0}}"#, NOW + 10),
                Ok(NOW + 10),
            ),
            (
                format!(r#"{{"sub":"u","exp":{},"nbf":{}.5}}"#, NOW + 10, NOW),
                Err(AuthError::NotYetValid),
            ),
            (
                format!(r#"{{"sub":"u","exp":{},"nbf":{}.5}}"#, NOW + 10, NOW - 1),
                Ok(NOW + 10),
            ),
            (
                r#"{"sub":"u","exp":"1700000100"}"#.to_owned(),
                Err(AuthError::Malformed),
            ),
            (
                r#"{"sub":"u","exp":null}"#.to_owned(),
                Err(AuthError::Malformed),
            ),
            (
                r#"{"sub":"u","exp":true}"#.to_owned(),
                Err(AuthError::Malformed),
            ),
            (
                r#"{"sub":"u","exp":[1700000100]}"#.to_owned(),
                Err(AuthError::Malformed),
            ),
            (
                r#"{"sub":"u","exp":-1}"#.to_owned(),
                Err(AuthError::Malformed),
            ),
            (r#"{"sub":"u","exp":-0.5}"#.to_owned(), Err(expired(0))),
            (
                r#"{"sub":"u","exp":1e300}"#.to_owned(),
                Err(AuthError::Malformed),
            ),
            (
                r#"{"sub":"u","exp":18446744073709551616}"#.to_owned(),
                Err(AuthError::Malformed),
            ),
            (
                r#"{"sub":"u","exp":18446744073709551615}"#.to_owned(),
                Ok(u64::MAX),
            ),
            (
                format!(r#"{{"sub":"u","exp":{},"nbf":"0"}}"#, NOW + 10),
                Err(AuthError::Malformed),
            ),
            (
                format!(r#"{{"sub":"u","exp":{},"iat":"0"}}"#, NOW + 10),
                Err(AuthError::Malformed),
            ),
        ];
        for (payload, expected) in cases {
            let result = verifier
                .verify(&hs256_token(&payload), NOW)
                .map(|claims| claims.exp);
            assert_eq!(result, expected, "{payload}");
        }
    }

    #[test]
    fn verify_required_claims() {
        let verifier = hs256_verifier();
        let exp = NOW + 60;
        let cases = [
            (format!(r#"{{"exp":{exp}}}"#), Err(AuthError::MissingSub)),
            (
                format!(r#"{{"sub":"","exp":{exp}}}"#),
                Err(AuthError::MissingSub),
            ),
            (
                format!(r#"{{"sub":null,"exp":{exp}}}"#),
                Err(AuthError::Malformed),
            ),
            (
                format!(r#"{{"sub":42,"exp":{exp}}}"#),
                Err(AuthError::Malformed),
            ),
            (r#"{"sub":"u"}"#.to_owned(), Err(AuthError::MissingExp)),
            ("{}".to_owned(), Err(AuthError::MissingExp)),
            (
                format!(r#"{{"sub":"u","exp":{exp},"sub":"v"}}"#),
                Err(AuthError::Malformed),
            ),
            (
                format!(r#"{{"sub":"u","exp":{exp},"extra":{{"n":[1,2]}}}}"#),
                Ok("u".to_owned()),
            ),
            (
                format!(r#"{{"sub":"caf\u00e9","exp":{exp}}}"#),
                Ok("café".to_owned()),
            ),
        ];
        for (payload, expected) in cases {
            let result = verifier
                .verify(&hs256_token(&payload), NOW)
                .map(|claims| claims.sub);
            assert_eq!(result, expected, "{payload}");
        }
    }

    #[test]
    fn verify_issuer_rules() {
        let verifier = hs256_verifier_with(|cfg| cfg.issuer = Some("issuer-a".to_owned()));
        let unconfigured = hs256_verifier();
        let exp = NOW + 60;
        let cases = [
            (
                &verifier,
                format!(r#"{{"sub":"u","exp":{exp},"iss":"issuer-a"}}"#),
                Ok(()),
            ),
            (
                &verifier,
                format!(r#"{{"sub":"u","exp":{exp},"iss":"issuer-b"}}"#),
                Err(AuthError::InvalidIssuer),
            ),
            (
                &verifier,
                format!(r#"{{"sub":"u","exp":{exp},"iss":"Issuer-A"}}"#),
                Err(AuthError::InvalidIssuer),
            ),
            (
                &verifier,
                format!(r#"{{"sub":"u","exp":{exp}}}"#),
                Err(AuthError::InvalidIssuer),
            ),
            (
                &verifier,
                format!(r#"{{"sub":"u","exp":{exp},"iss":["issuer-a"]}}"#),
                Err(AuthError::Malformed),
            ),
            (
                &unconfigured,
                format!(r#"{{"sub":"u","exp":{exp},"iss":"anyone"}}"#),
                Ok(()),
            ),
        ];
        for (verifier, payload, expected) in cases {
            let result = verifier.verify(&hs256_token(&payload), NOW).map(|_| ());
            assert_eq!(result, expected, "{payload}");
        }
    }

    #[test]
    fn verify_audience_rules() {
        let verifier = hs256_verifier_with(|cfg| cfg.audience = Some("framegate".to_owned()));
        let unconfigured = hs256_verifier();
        let exp = NOW + 60;
        let cases = [
            (
                &verifier,
                format!(r#"{{"sub":"u","exp":{exp},"aud":"framegate"}}"#),
                Ok(()),
            ),
            (
                &verifier,
                format!(r#"{{"sub":"u","exp":{exp},"aud":["other","framegate"]}}"#),
                Ok(()),
            ),
            (
                &verifier,
                format!(r#"{{"sub":"u","exp":{exp},"aud":"other"}}"#),
                Err(AuthError::InvalidAudience),
            ),
            (
                &verifier,
                format!(r#"{{"sub":"u","exp":{exp},"aud":["other"]}}"#),
                Err(AuthError::InvalidAudience),
            ),
            (
                &verifier,
                format!(r#"{{"sub":"u","exp":{exp},"aud":[]}}"#),
                Err(AuthError::InvalidAudience),
            ),
            (
                &verifier,
                format!(r#"{{"sub":"u","exp":{exp}}}"#),
                Err(AuthError::InvalidAudience),
            ),
            (
                &verifier,
                format!(r#"{{"sub":"u","exp":{exp},"aud":7}}"#),
                Err(AuthError::Malformed),
            ),
            (
                &verifier,
                format!(r#"{{"sub":"u","exp":{exp},"aud":["framegate",7]}}"#),
                Err(AuthError::Malformed),
            ),
            (
                &unconfigured,
                format!(r#"{{"sub":"u","exp":{exp}}}"#),
                Ok(()),
            ),
            (
                &unconfigured,
                format!(r#"{{"sub":"u","exp":{exp},"aud":"framegate"}}"#),
                Err(AuthError::InvalidAudience),
            ),
        ];
        for (verifier, payload, expected) in cases {
            let result = verifier.verify(&hs256_token(&payload), NOW).map(|_| ());
            assert_eq!(result, expected, "{payload}");
        }
    }

    #[test]
    fn verify_alg_none_any_case_is_not_allowed() {
        let verifier = hs256_verifier();
        let payload = b64(format!(r#"{{"sub":"u","exp":{}}}"#, NOW + 60).as_bytes());
        for alg in ["none", "None", "NONE", "nOnE"] {
            let header = b64(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#).as_bytes());
            for signature in ["", "c2ln"] {
                let token = format!("{header}.{payload}.{signature}");
                assert_eq!(
                    verifier.verify(&token, NOW),
                    Err(AuthError::AlgorithmNotAllowed),
                    "{token}"
                );
            }
        }
    }

    #[test]
    fn verify_algorithm_outside_allow_list_is_not_allowed() {
        let verifier = hs256_verifier();
        let key = EncodingKey::from_secret(SECRET).expect("non-empty secret");
        let payload = format!(r#"{{"sub":"u","exp":{}}}"#, NOW + 60);
        let cases = [
            hand_token(r#"{"alg":"HS512"}"#, &payload, Algorithm::HS512, &key),
            hand_token(r#"{"alg":"hs256"}"#, &payload, Algorithm::HS256, &key),
            hand_token(r#"{"alg":"XS256"}"#, &payload, Algorithm::HS256, &key),
            hand_token(r#"{"alg":""}"#, &payload, Algorithm::HS256, &key),
            Signer::from_private_pem(Algorithm::RS256, RSA_PRIVATE)
                .expect("signer")
                .mint("u", NOW, 60, None, None)
                .expect("mint"),
        ];
        for token in cases {
            assert_eq!(
                verifier.verify(&token, NOW),
                Err(AuthError::AlgorithmNotAllowed),
                "{token}"
            );
        }
    }

    #[test]
    fn verify_key_confusion_is_not_allowed() {
        // Key confusion: an attacker uses the server's public PEM as an HMAC secret.
        let verifier = Verifier::new(&config(
            &[Algorithm::RS256, Algorithm::PS256],
            KeyMaterial::PublicPem(RSA_PUBLIC.to_vec()),
        ))
        .expect("RSA verifier");
        let key = EncodingKey::from_secret(RSA_PUBLIC).expect("non-empty secret");
        let payload = format!(r#"{{"sub":"admin","exp":{}}}"#, NOW + 60);
        let token = hand_token(
            r#"{"alg":"HS256","typ":"JWT"}"#,
            &payload,
            Algorithm::HS256,
            &key,
        );

        assert_eq!(
            verifier.verify(&token, NOW),
            Err(AuthError::AlgorithmNotAllowed)
        );
    }

    #[test]
    fn new_hmac_algorithm_with_pem_key_is_rejected() {
        // The configuration that would make key confusion possible never builds.
        let cfg = config(
            &[Algorithm::RS256, Algorithm::HS256],
            KeyMaterial::PublicPem(RSA_PUBLIC.to_vec()),
        );

        let result = Verifier::new(&cfg);

        assert!(
            matches!(
                result,
                Err(AuthSetupError::AlgorithmKeyMismatch {
                    algorithm: Algorithm::HS256,
                    ..
                })
            ),
            "{result:?}"
        );
    }

    #[test]
    fn verify_malformed_input_is_malformed() {
        let verifier = hs256_verifier();
        let key = EncodingKey::from_secret(SECRET).expect("non-empty secret");
        let valid = hs256_signer().mint("u", NOW, 60, None, None).expect("mint");
        let payload = b64(format!(r#"{{"sub":"u","exp":{}}}"#, NOW + 60).as_bytes());
        let signed_raw = |header: &str, payload: &str| {
            let message = format!("{header}.{payload}");
            let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256)
                .expect("sign");
            format!("{message}.{signature}")
        };
        let hs256_header = b64(br#"{"alg":"HS256"}"#);

        let cases = [
            String::new(),
            ".".to_owned(),
            "..".to_owned(),
            "...".to_owned(),
            "a.b".to_owned(),
            "a.b.c".to_owned(),
            "a.b.c.d.e".to_owned(),
            "%%%.%%%.%%%".to_owned(),
            "é.é.é".to_owned(),
            "Bearer x.y.z".to_owned(),
            format!("{valid}.extra"),
            format!(" {valid}"),
            valid.replacen('.', "=.", 1),
            // Header is not JSON, not an object, or lacks a string `alg`.
            format!("{}.{payload}.", b64(b"not json")),
            format!("{}.{payload}.", b64(b"[]")),
            format!("{}.{payload}.", b64(br#"{"typ":"JWT"}"#)),
            format!("{}.{payload}.", b64(br#"{"alg":256}"#)),
            format!("{}.{payload}.", b64(br#"{"alg":null}"#)),
            // Signature is not base64url.
            format!("{hs256_header}.{payload}.!!!"),
            // Signature checks out but the payload is not base64url JSON.
            signed_raw(&hs256_header, "!!!"),
            signed_raw(&hs256_header, &b64(b"not json")),
            signed_raw(&hs256_header, &b64(b"[1,2]")),
            signed_raw(&hs256_header, &b64(b"\xff\xfe")),
            // Headers that `jsonwebtoken` rejects: unsupported `crit`, unencoded payload.
            signed_raw(&b64(br#"{"alg":"HS256","crit":["exp"]}"#), &payload),
            signed_raw(
                &b64(br#"{"alg":"HS256","b64":false,"crit":["b64"]}"#),
                &payload,
            ),
        ];
        for token in cases {
            assert_eq!(
                verifier.verify(&token, NOW),
                Err(AuthError::Malformed),
                "{token:?}"
            );
        }
    }

    #[test]
    fn verify_deeply_nested_payload_does_not_overflow() {
        // `serde_json` skips unknown members without recursion, so a deep unknown claim is
        // ignored. A deep value in a typed claim hits its 128-level limit and is Malformed.
        let verifier = hs256_verifier();
        let depth = 2_000;
        let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let cases = [
            ("extra", Ok("u".to_owned())),
            ("aud", Err(AuthError::Malformed)),
            ("sub", Err(AuthError::Malformed)),
        ];
        for (member, expected) in cases {
            let payload = format!(r#"{{"sub":"u","exp":{},"{member}":{nested}}}"#, NOW + 60);
            let payload = payload.replacen(r#""sub":"u","#, "", usize::from(member == "sub"));
            let token = hs256_token(&payload);
            assert!(token.len() <= MAX_TOKEN_BYTES);

            let result = verifier.verify(&token, NOW).map(|claims| claims.sub);

            assert_eq!(result, expected, "{member}");
        }
    }

    #[test]
    fn verify_token_length_limit() {
        let verifier = hs256_verifier();
        let token_with_filler = |filler_len: usize| {
            let filler = "x".repeat(filler_len);
            hs256_token(&format!(
                r#"{{"sub":"u","exp":{},"pad":"{filler}"}}"#,
                NOW + 60
            ))
        };
        let base_len = token_with_filler(0).len();
        // Each 3 filler bytes add 4 base64 characters.
        let fitting = token_with_filler((MAX_TOKEN_BYTES - base_len) / 4 * 3);
        let over = token_with_filler((MAX_TOKEN_BYTES - base_len) / 4 * 3 + 3);
        assert!(fitting.len() <= MAX_TOKEN_BYTES);
        assert!(over.len() > MAX_TOKEN_BYTES);

        assert!(verifier.verify(&fitting, NOW).is_ok());
        assert_eq!(verifier.verify(&over, NOW), Err(AuthError::Malformed));
        assert_eq!(
            verifier.verify(&"a".repeat(1 << 20), NOW),
            Err(AuthError::Malformed)
        );
    }

    #[test]
    fn verify_arbitrary_bytes_do_not_panic() {
        // Deterministic xorshift input covering random ASCII, dots and base64url text.
        let verifier = hs256_verifier();
        let valid = hs256_signer().mint("u", NOW, 60, None, None).expect("mint");
        let alphabet =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ {}\":";
        let pick = |random: u64| {
            let index = usize::try_from(random % 1024).expect("below 1024") % alphabet.len();
            alphabet.get(index).copied().unwrap_or(b'.')
        };
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..2_000 {
            let len = usize::try_from(next() % 200).expect("small");
            let random: String = (0..len).map(|_| char::from(pick(next()))).collect();
            assert!(
                verifier.verify(&random, NOW).is_err(),
                "round {round}: {random}"
            );

            // Flip one byte of a valid token to another alphabet character.
            let mut bytes = valid.clone().into_bytes();
            let position = usize::try_from(next()).expect("64-bit") % bytes.len();
            let replacement = pick(next());
            let original = bytes.get(position).copied();
            if let Some(byte) = bytes.get_mut(position) {
                *byte = replacement;
            }
            let mutated = String::from_utf8(bytes).expect("ASCII");
            if original != Some(replacement) {
                assert!(
                    verifier.verify(&mutated, NOW).is_err(),
                    "round {round}: {mutated}"
                );
            }
        }
    }

    #[test]
    fn new_rejects_unusable_configs() {
        let secret = |bytes: &[u8]| KeyMaterial::Secret(bytes.to_vec());
        let pem = |bytes: &[u8]| KeyMaterial::PublicPem(bytes.to_vec());
        let cases: Vec<(AuthConfig, &str)> = vec![
            (config(&[], secret(SECRET)), "EmptyAlgorithmList"),
            (
                config(&[Algorithm::HS256], pem(RSA_PUBLIC)),
                "AlgorithmKeyMismatch",
            ),
            (
                config(&[Algorithm::RS256], secret(SECRET)),
                "AlgorithmKeyMismatch",
            ),
            (
                config(&[Algorithm::HS256, Algorithm::ES256], secret(SECRET)),
                "AlgorithmKeyMismatch",
            ),
            (
                config(&[Algorithm::RS256], pem(P256_PUBLIC)),
                "AlgorithmKeyMismatch",
            ),
            (
                config(&[Algorithm::ES256], pem(P384_PUBLIC)),
                "AlgorithmKeyMismatch",
            ),
            (
                config(&[Algorithm::ES384], pem(P256_PUBLIC)),
                "AlgorithmKeyMismatch",
            ),
            (
                config(&[Algorithm::ES256, Algorithm::ES384], pem(P256_PUBLIC)),
                "AlgorithmKeyMismatch",
            ),
            (
                config(&[Algorithm::EdDSA], pem(RSA_PUBLIC)),
                "AlgorithmKeyMismatch",
            ),
            (
                config(&[Algorithm::RS256], pem(ED25519_PUBLIC)),
                "AlgorithmKeyMismatch",
            ),
            (
                config(&[Algorithm::HS256], secret(&SECRET[..31])),
                "SecretTooShort",
            ),
            (
                config(&[Algorithm::HS384], secret(&SECRET[..47])),
                "SecretTooShort",
            ),
            (
                config(&[Algorithm::HS512], secret(&SECRET[..63])),
                "SecretTooShort",
            ),
            (config(&[Algorithm::HS256], secret(b"")), "SecretTooShort"),
            (
                config(&[Algorithm::RS256], pem(RSA_PRIVATE)),
                "PrivateKeyInVerifier",
            ),
            (
                config(&[Algorithm::ES256], pem(P256_PRIVATE)),
                "PrivateKeyInVerifier",
            ),
            (
                config(&[Algorithm::RS256], pem(RSA1024_PUBLIC)),
                "WeakRsaKey",
            ),
            (config(&[Algorithm::RS256], pem(b"")), "InvalidPublicKeyPem"),
            (
                config(&[Algorithm::RS256], pem(b"not a pem")),
                "InvalidPublicKeyPem",
            ),
            (
                config(
                    &[Algorithm::RS256],
                    pem(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"),
                ),
                "InvalidPublicKeyPem",
            ),
            (
                config(
                    &[Algorithm::RS256],
                    pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
                ),
                "InvalidPublicKeyPem",
            ),
        ];
        for (cfg, expected) in cases {
            let result = Verifier::new(&cfg);
            let variant = format!("{result:?}");
            assert!(
                variant.starts_with(&format!("Err({expected}")),
                "{cfg:?}: {variant}"
            );
        }
    }

    #[test]
    fn new_minimum_secret_lengths_accept() {
        let cases = [
            (Algorithm::HS256, 32),
            (Algorithm::HS384, 48),
            (Algorithm::HS512, 64),
        ];
        for (algorithm, len) in cases {
            let cfg = config(&[algorithm], KeyMaterial::Secret(SECRET[..len].to_vec()));
            assert!(
                Verifier::new(&cfg).is_ok(),
                "{algorithm:?} with {len} bytes"
            );
            assert!(
                Signer::from_secret(algorithm, &SECRET[..len]).is_ok(),
                "{algorithm:?}"
            );
        }
    }

    #[test]
    fn signer_rejects_unusable_keys() {
        let cases = [
            (
                Signer::from_secret(Algorithm::RS256, SECRET),
                "AlgorithmKeyMismatch",
            ),
            (
                Signer::from_secret(Algorithm::HS256, &SECRET[..31]),
                "SecretTooShort",
            ),
            (
                Signer::from_private_pem(Algorithm::HS256, RSA_PRIVATE),
                "AlgorithmKeyMismatch",
            ),
            (
                Signer::from_private_pem(Algorithm::ES256, RSA_PRIVATE),
                "AlgorithmKeyMismatch",
            ),
            (
                Signer::from_private_pem(Algorithm::ES256, P384_PRIVATE),
                "AlgorithmKeyMismatch",
            ),
            (
                Signer::from_private_pem(Algorithm::EdDSA, P256_PRIVATE),
                "AlgorithmKeyMismatch",
            ),
            (
                Signer::from_private_pem(Algorithm::RS256, RSA_PUBLIC),
                "PublicKeyInSigner",
            ),
            (
                Signer::from_private_pem(Algorithm::RS256, RSA1024_PRIVATE),
                "WeakRsaKey",
            ),
            (
                Signer::from_private_pem(Algorithm::RS256, b"junk"),
                "InvalidPrivateKeyPem",
            ),
        ];
        for (result, expected) in cases {
            let variant = format!("{result:?}");
            assert!(variant.starts_with(&format!("Err({expected}")), "{variant}");
        }
    }

    #[test]
    fn mint_round_trip_carries_issuer_and_audience() {
        let verifier = hs256_verifier_with(|cfg| {
            cfg.issuer = Some("issuer-a".to_owned());
            cfg.audience = Some("framegate".to_owned());
        });
        let token = hs256_signer()
            .mint("user-7", NOW, 300, Some("issuer-a"), Some("framegate"))
            .expect("mint");

        let claims = verifier.verify(&token, NOW + 299);

        let expected = Claims {
            sub: "user-7".to_owned(),
            exp: NOW + 300,
            iat: Some(NOW),
        };
        assert_eq!(claims, Ok(expected));
        assert_eq!(verifier.verify(&token, NOW + 300), Err(expired(NOW + 300)));
    }

    #[test]
    fn mint_rejects_bad_arguments() {
        let signer = hs256_signer();

        let empty = signer.mint("", NOW, 60, None, None);
        let overflow = signer.mint("u", u64::MAX - 1, 2, None, None);

        assert!(
            matches!(empty, Err(AuthSetupError::EmptySubject)),
            "{empty:?}"
        );
        assert!(
            matches!(
                overflow,
                Err(AuthSetupError::ExpiryOverflow { ttl_secs: 2, .. })
            ),
            "{overflow:?}"
        );
    }

    #[test]
    fn debug_and_errors_hide_key_material() {
        let secret_text = std::str::from_utf8(SECRET).expect("ASCII");
        let pem_body = std::str::from_utf8(RSA_PUBLIC)
            .expect("ASCII")
            .lines()
            .nth(1)
            .expect("PEM body line");
        let secret_cfg = config(&[Algorithm::HS256], KeyMaterial::Secret(SECRET.to_vec()));
        let pem_cfg = config(
            &[Algorithm::RS256],
            KeyMaterial::PublicPem(RSA_PUBLIC.to_vec()),
        );
        let texts = [
            format!("{:?}", KeyMaterial::Secret(SECRET.to_vec())),
            format!("{secret_cfg:?}"),
            format!("{pem_cfg:?}"),
            format!("{:?}", Verifier::new(&secret_cfg).expect("verifier")),
            format!("{:?}", Verifier::new(&pem_cfg).expect("verifier")),
            format!("{:?}", hs256_signer()),
            format!(
                "{:?}",
                Signer::from_private_pem(Algorithm::RS256, RSA_PRIVATE).expect("signer")
            ),
            Signer::from_secret(Algorithm::HS512, &SECRET[..40])
                .err()
                .map(|error| format!("{error} {error:?}"))
                .unwrap_or_default(),
            Verifier::new(&config(
                &[Algorithm::HS512],
                KeyMaterial::Secret(SECRET[..40].to_vec()),
            ))
            .err()
            .map(|error| format!("{error} {error:?}"))
            .unwrap_or_default(),
        ];
        for text in texts {
            assert!(!text.contains(secret_text), "{text}");
            assert!(!text.contains(&secret_text[..16]), "{text}");
            assert!(!text.contains(pem_body), "{text}");
        }
        assert_eq!(
            format!("{:?}", KeyMaterial::Secret(SECRET.to_vec())),
            "Secret(..)"
        );
        assert_eq!(
            format!("{:?}", hs256_signer()),
            r#"Signer { algorithm: HS256, key: "an HMAC secret" }"#
        );
    }

    #[test]
    fn verifier_and_signer_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Verifier>();
        assert_send_sync::<Signer>();
        assert_send_sync::<AuthError>();
        assert_send_sync::<AuthSetupError>();
    }
}
