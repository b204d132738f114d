//! An OIDC issuer's public keys (RFC 7517 JWK Set), parsed and checked once
//! (curve, lengths, RSA size), then handed to `jsonwebtoken` per token. Only public signature keys are accepted: a set that
//! carries private or symmetric key material, or two keys with one `kid`, is
//! refused whole (it is either misconfigured or an attack, and guessing which
//! key was meant is how confusion bugs start).

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

use super::jwt::JwtAlgorithm;
use crate::error::ErrorKind;

/// Largest JWK Set accepted, in bytes.
pub const MAX_JWKS_LEN: usize = 256 * 1024;
/// Most keys in one set.
pub const MAX_JWKS_KEYS: usize = 64;
/// Longest `kid` accepted, in bytes (in a set and in a token header).
pub const MAX_KID_LEN: usize = 256;

/// Why a JWK Set was refused. Messages name the key by position or `kid`,
/// never by key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwksError {
    /// Larger than [`MAX_JWKS_LEN`].
    #[error("jwks is larger than {MAX_JWKS_LEN} bytes")]
    TooLarge,
    /// Not a JSON object with a `keys` array.
    #[error("jwks is not a json object with a `keys` array")]
    Malformed,
    /// More than [`MAX_JWKS_KEYS`] keys.
    #[error("jwks has more than {MAX_JWKS_KEYS} keys")]
    TooManyKeys,
    /// One key is unusable.
    #[error("jwks key {index}: {reason}")]
    Key {
        /// Position in `keys`.
        index: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// Two keys share a `kid`.
    #[error("jwks has two keys with kid `{0}`")]
    DuplicateKid(String),
    /// No usable signature key.
    #[error("jwks has no usable signature key")]
    Empty,
}

impl JwksError {
    /// Transport-free classification: issuer keys are configuration or a
    /// dependency, never the caller's fault.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Unavailable
    }
}

/// A public key an issuer signs attestation tokens with.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum KeyMaterial {
    /// Uncompressed SEC1 point (`04 || x || y`) on P-256.
    P256(Vec<u8>),
    /// Uncompressed SEC1 point on P-384.
    P384(Vec<u8>),
    /// Ed25519 public key.
    Ed25519(Vec<u8>),
    /// RSA modulus and exponent, big-endian.
    Rsa { n: Vec<u8>, e: Vec<u8> },
}

/// One verification key and the algorithm it is pinned to, if the JWK says.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct IssuerKey {
    pub(crate) alg: Option<JwtAlgorithm>,
    pub(crate) material: KeyMaterial,
}

impl IssuerKey {
    /// Whether a token signed with `alg` may be verified by this key.
    pub(crate) fn permits(&self, alg: JwtAlgorithm) -> bool {
        let family = matches!(
            (&self.material, alg),
            (KeyMaterial::P256(_), JwtAlgorithm::Es256)
                | (KeyMaterial::P384(_), JwtAlgorithm::Es384)
                | (KeyMaterial::Ed25519(_), JwtAlgorithm::EdDsa)
                | (KeyMaterial::Rsa { .. }, JwtAlgorithm::Rs256 | JwtAlgorithm::Ps256)
        );
        family && self.alg.is_none_or(|pinned| pinned == alg)
    }

    /// The key as `jsonwebtoken` takes it (the same public material: a
    /// SEC1 point, the Ed25519 key, or the RSA modulus and exponent).
    pub(crate) fn decoding_key(&self) -> jsonwebtoken::DecodingKey {
        match &self.material {
            KeyMaterial::P256(point) | KeyMaterial::P384(point) => jsonwebtoken::DecodingKey::from_ec_der(point),
            KeyMaterial::Ed25519(key) => jsonwebtoken::DecodingKey::from_ed_der(key),
            KeyMaterial::Rsa { n, e } => jsonwebtoken::DecodingKey::from_rsa_raw_components(n, e),
        }
    }
}

/// An issuer's verification keys by `kid`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct IssuerKeys {
    by_kid: HashMap<String, IssuerKey>,
}

impl std::fmt::Debug for IssuerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kids: Vec<&String> = self.by_kid.keys().collect();
        kids.sort();
        f.debug_struct("IssuerKeys").field("kids", &kids).finish()
    }
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// Members whose presence means private or symmetric key material.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

impl IssuerKeys {
    /// Parses a JWK Set. Keys for encryption (`use: enc`) and key types this
    /// broker does not verify with are skipped; anything else wrong refuses
    /// the whole set.
    pub fn from_json(bytes: &[u8]) -> Result<Self, JwksError> {
        if bytes.len() > MAX_JWKS_LEN {
            return Err(JwksError::TooLarge);
        }
        if bytes.trim_ascii_start().first() != Some(&b'{') {
            return Err(JwksError::Malformed);
        }
        let raw: RawJwks = serde_json::from_slice(bytes).map_err(|_| JwksError::Malformed)?;
        if raw.keys.len() > MAX_JWKS_KEYS {
            return Err(JwksError::TooManyKeys);
        }
        let mut by_kid = HashMap::new();
        for (index, jwk) in raw.keys.iter().enumerate() {
            let bad = |reason| JwksError::Key { index, reason };
            if PRIVATE_MEMBERS.iter().any(|m| jwk.contains_key(*m)) {
                return Err(bad("carries private or symmetric key material"));
            }
            match jwk.get("use") {
                None => {}
                Some(serde_json::Value::String(u)) if u == "sig" => {}
                Some(serde_json::Value::String(u)) if u == "enc" => continue,
                Some(_) => return Err(bad("`use` is not `sig` or `enc`")),
            }
            if let Some(ops) = jwk.get("key_ops") {
                let verify = ops
                    .as_array()
                    .is_some_and(|ops| ops.iter().any(|o| o.as_str() == Some("verify")));
                if !verify {
                    continue;
                }
            }
            let kid = match jwk.get("kid") {
                Some(serde_json::Value::String(kid)) if super::is_safe_key(kid, MAX_KID_LEN) => kid.clone(),
                Some(_) => return Err(bad("`kid` is not 1-256 printable characters without quotes or slashes")),
                None => return Err(bad("has no `kid`")),
            };
            let alg = match jwk.get("alg") {
                None => None,
                Some(serde_json::Value::String(a)) => match JwtAlgorithm::from_jose(a) {
                    Some(a) => Some(a),
                    // A key pinned to an algorithm we never accept (HS256,
                    // RSA1_5, ...) is never usable.
                    None => continue,
                },
                Some(_) => return Err(bad("`alg` is not a string")),
            };
            let Some(material) = material(jwk).map_err(bad)? else {
                continue;
            };
            let key = IssuerKey { alg, material };
            if let Some(alg) = alg
                && !key.permits(alg)
            {
                return Err(bad("`alg` does not fit the key type"));
            }
            if by_kid.insert(kid.clone(), key).is_some() {
                return Err(JwksError::DuplicateKid(kid));
            }
        }
        if by_kid.is_empty() {
            return Err(JwksError::Empty);
        }
        Ok(Self { by_kid })
    }

    /// The key named `kid`.
    pub(crate) fn get(&self, kid: &str) -> Option<&IssuerKey> {
        self.by_kid.get(kid)
    }

    /// Whether the set has a key named `kid`.
    pub fn contains(&self, kid: &str) -> bool {
        self.by_kid.contains_key(kid)
    }

    /// The `kid` of the set's only key; `None` unless it holds exactly one.
    pub fn sole_kid(&self) -> Option<&str> {
        match self.by_kid.len() {
            1 => self.by_kid.keys().next().map(String::as_str),
            _ => None,
        }
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.by_kid.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.by_kid.is_empty()
    }
}

fn b64(jwk: &serde_json::Map<String, serde_json::Value>, member: &str) -> Result<Vec<u8>, &'static str> {
    let value = jwk
        .get(member)
        .and_then(serde_json::Value::as_str)
        .ok_or("a required key parameter is missing")?;
    URL_SAFE_NO_PAD
        .decode(value)
        .map_err(|_| "a key parameter is not unpadded base64url")
}

/// The key's material; `None` for a key type or curve this broker does not use.
fn material(jwk: &serde_json::Map<String, serde_json::Value>) -> Result<Option<KeyMaterial>, &'static str> {
    let kty = jwk
        .get("kty")
        .and_then(serde_json::Value::as_str)
        .ok_or("has no `kty`")?;
    let crv = jwk.get("crv").and_then(serde_json::Value::as_str);
    let point = |len: usize| -> Result<Vec<u8>, &'static str> {
        let (x, y) = (b64(jwk, "x")?, b64(jwk, "y")?);
        if x.len() != len || y.len() != len {
            return Err("EC coordinates have the wrong length for the curve");
        }
        let mut point = Vec::with_capacity(1 + 2 * len);
        point.push(0x04);
        point.extend_from_slice(&x);
        point.extend_from_slice(&y);
        Ok(point)
    };
    Ok(Some(match (kty, crv) {
        ("EC", Some("P-256")) => KeyMaterial::P256(point(32)?),
        ("EC", Some("P-384")) => KeyMaterial::P384(point(48)?),
        ("OKP", Some("Ed25519")) => {
            let x = b64(jwk, "x")?;
            if x.len() != 32 {
                return Err("Ed25519 key is not 32 bytes");
            }
            KeyMaterial::Ed25519(x)
        }
        ("RSA", _) => {
            let (n, e) = (b64(jwk, "n")?, b64(jwk, "e")?);
            // Below 2048 bits is too weak: the set is refused. Above 4096,
            // jsonwebtoken's RSA backend cannot verify: the key is left out
            // (like a key type we do not use) so the rest of the set serves.
            let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
            if bits < 2048 {
                return Err("RSA modulus is shorter than 2048 bits");
            }
            if bits > 4096 {
                return Ok(None);
            }
            KeyMaterial::Rsa { n, e }
        }
        ("oct", _) => return Err("symmetric keys are never accepted"),
        _ => return Ok(None),
    }))
}
