//! The broker's signing key: a *ring* key pair, its public JWK and key id.
//!
//! Zeroization: *ring* does not expose the memory of its key pairs, so the
//! private scalar or seed inside an `EcdsaKeyPair` / `Ed25519KeyPair` cannot be
//! wiped by us. What we can wipe, we do: every copy of the PKCS#8 document
//! (DER and PEM text) that passes through this module lives in a
//! [`Zeroizing`] buffer and is dropped as soon as the key pair is loaded.
//! The `pkcs8::Document` that *ring* returns from `generate_pkcs8` is also
//! *ring*'s own memory and is not wiped.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::error::KeyRejected;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};
use serde::Serialize;
use zeroize::Zeroizing;

use super::Algorithm;
use super::jwk::Jwk;
use crate::error::ErrorKind;

const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";

/// Why a signing key could not be made or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The system random source failed.
    #[error("could not generate a {0} key")]
    Generate(Algorithm),
    /// The PKCS#8 document holds a key of the other supported algorithm.
    #[error("pkcs#8 key is an {found} key, expected {expected}")]
    WrongAlgorithm {
        /// What the caller asked for.
        expected: Algorithm,
        /// What the document holds.
        found: Algorithm,
    },
    /// The PKCS#8 document is not a usable key of the algorithm.
    #[error("pkcs#8 document is not a valid {alg} key: {reason}")]
    Rejected {
        /// What the caller asked for.
        alg: Algorithm,
        /// *ring*'s reason; its text is a fixed word such as `InvalidEncoding`.
        reason: KeyRejected,
    },
    /// The PEM text is not one unencrypted PKCS#8 `PRIVATE KEY` block.
    #[error("pem private key: {0}")]
    Pem(&'static str),
    /// *ring* returned a public key in an unexpected encoding.
    #[error("unexpected {0} public key encoding")]
    PublicKey(Algorithm),
    /// Signing failed.
    #[error("could not sign with the {0} key")]
    Sign(Algorithm),
    /// The claims could not be serialized to JSON.
    #[error("could not serialize the token claims")]
    Claims(#[source] serde_json::Error),
}

impl KeyError {
    /// Transport-free classification.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::WrongAlgorithm { .. } | Self::Rejected { .. } | Self::Pem(_) => ErrorKind::InvalidArgument,
            Self::Generate(_) | Self::PublicKey(_) | Self::Sign(_) | Self::Claims(_) => ErrorKind::Internal,
        }
    }
}

enum Pair {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

/// A private signing key with its public [`Jwk`]; the key id is the JWK's
/// RFC 7638 thumbprint.
///
/// `Debug` prints the algorithm and key id only. See the module docs for
/// what is and is not zeroized.
pub struct SigningKey {
    pair: Pair,
    jwk: Jwk,
    rng: SystemRandom,
}

impl SigningKey {
    /// A fresh random key.
    pub fn generate(alg: Algorithm) -> Result<Self, KeyError> {
        let rng = SystemRandom::new();
        let der = generate_pkcs8(alg, &rng)?;
        Self::from_pkcs8(alg, &der)
    }

    /// Loads an unencrypted PKCS#8 DER key of `alg`. Ed25519 accepts both
    /// PKCS#8 v2 (what *ring* writes; the public key is checked against the
    /// seed) and v1 (what `openssl genpkey` writes). P-256 needs the public
    /// key inside the `ECPrivateKey`, which OpenSSL and *ring* both write.
    pub fn from_pkcs8(alg: Algorithm, der: &[u8]) -> Result<Self, KeyError> {
        let rng = SystemRandom::new();
        let pair = match parse_pair(alg, der, &rng) {
            Ok(pair) => pair,
            Err(reason) => {
                // A clear message for the common mix-up of the two algorithms.
                let other = match alg {
                    Algorithm::Es256 => Algorithm::EdDsa,
                    Algorithm::EdDsa => Algorithm::Es256,
                };
                return Err(match parse_pair(other, der, &rng) {
                    Ok(_) => KeyError::WrongAlgorithm {
                        expected: alg,
                        found: other,
                    },
                    Err(_) => KeyError::Rejected { alg, reason },
                });
            }
        };
        let jwk = public_jwk(&pair)?;
        Ok(Self { pair, jwk, rng })
    }

    /// Loads an unencrypted PKCS#8 key of `alg` from PEM
    /// (`-----BEGIN PRIVATE KEY-----`). Text outside the block is ignored;
    /// SEC1 `EC PRIVATE KEY` and `ENCRYPTED PRIVATE KEY` blocks are refused.
    pub fn from_pkcs8_pem(alg: Algorithm, pem: &str) -> Result<Self, KeyError> {
        let der = pem_to_der(pem)?;
        Self::from_pkcs8(alg, &der)
    }

    /// The key id: the RFC 7638 thumbprint of the public JWK.
    pub fn kid(&self) -> &str {
        &self.jwk.kid
    }

    /// The signature algorithm.
    pub fn algorithm(&self) -> Algorithm {
        match self.pair {
            Pair::Es256(_) => Algorithm::Es256,
            Pair::EdDsa(_) => Algorithm::EdDsa,
        }
    }

    /// The public key, for the JWK set.
    pub fn public_jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// A compact JWS over `claims` serialized as JSON, with the protected
    /// header `{"alg":..,"typ":..,"kid":..}` in that order.
    pub fn sign_jws(&self, typ: &str, claims: &impl Serialize) -> Result<String, KeyError> {
        #[derive(Serialize)]
        struct ProtectedHeader<'a> {
            alg: Algorithm,
            typ: &'a str,
            kid: &'a str,
        }
        let header = serde_json::to_vec(&ProtectedHeader {
            alg: self.algorithm(),
            typ,
            kid: self.kid(),
        })
        .map_err(KeyError::Claims)?;
        let payload = serde_json::to_vec(claims).map_err(KeyError::Claims)?;
        self.sign_compact(&header, &payload)
    }

    /// A compact JWS over exactly these header and payload bytes. Tests use
    /// it to sign hostile headers.
    pub(crate) fn sign_compact(&self, header: &[u8], payload: &[u8]) -> Result<String, KeyError> {
        let mut token = URL_SAFE_NO_PAD.encode(header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(payload, &mut token);
        let signature = match &self.pair {
            Pair::Es256(pair) => pair
                .sign(&self.rng, token.as_bytes())
                .map_err(|_| KeyError::Sign(Algorithm::Es256))?,
            Pair::EdDsa(pair) => pair.sign(token.as_bytes()),
        };
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut token);
        Ok(token)
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.algorithm())
            .field("kid", &self.kid())
            .finish_non_exhaustive()
    }
}

/// A fresh random key of `alg` as PKCS#8 PEM, for tooling and tests.
pub fn generate_pkcs8_pem(alg: Algorithm) -> Result<Zeroizing<String>, KeyError> {
    let der = generate_pkcs8(alg, &SystemRandom::new())?;
    Ok(der_to_pem(&der))
}

/// PKCS#8 DER as PEM text (`-----BEGIN PRIVATE KEY-----`).
pub(crate) fn der_to_pem(der: &[u8]) -> Zeroizing<String> {
    let body = Zeroizing::new(STANDARD.encode(der));
    // Sized up front so the buffer never reallocates and leaves a copy behind.
    let lines = body.len().div_ceil(64);
    let mut pem = Zeroizing::new(String::with_capacity(
        PEM_BEGIN.len() + PEM_END.len() + body.len() + lines + 2,
    ));
    pem.push_str(PEM_BEGIN);
    pem.push('\n');
    // Base64 is ASCII, so every 64-byte chunk is a whole line of characters.
    for line in body.as_bytes().chunks(64) {
        pem.extend(line.iter().map(|&b| char::from(b)));
        pem.push('\n');
    }
    pem.push_str(PEM_END);
    pem.push('\n');
    pem
}

pub(crate) fn generate_pkcs8(alg: Algorithm, rng: &SystemRandom) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let document = match alg {
        Algorithm::Es256 => EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, rng),
        Algorithm::EdDsa => Ed25519KeyPair::generate_pkcs8(rng),
    }
    .map_err(|_| KeyError::Generate(alg))?;
    Ok(Zeroizing::new(document.as_ref().to_vec()))
}

fn parse_pair(alg: Algorithm, der: &[u8], rng: &SystemRandom) -> Result<Pair, KeyRejected> {
    match alg {
        Algorithm::Es256 => EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, rng).map(Pair::Es256),
        Algorithm::EdDsa => Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map(Pair::EdDsa),
    }
}

fn public_jwk(pair: &Pair) -> Result<Jwk, KeyError> {
    let jwk = match pair {
        Pair::Es256(pair) => {
            // Uncompressed SEC1 point: 0x04 || x (32 bytes) || y (32 bytes).
            let point = pair.public_key().as_ref();
            let bad = || KeyError::PublicKey(Algorithm::Es256);
            if point.len() != 65 || point.first() != Some(&0x04) {
                return Err(bad());
            }
            let x = point.get(1..33).ok_or_else(bad)?;
            let y = point.get(33..65).ok_or_else(bad)?;
            Jwk::ec_p256(x, y)
        }
        Pair::EdDsa(pair) => {
            let x = pair.public_key().as_ref();
            if x.len() != 32 {
                return Err(KeyError::PublicKey(Algorithm::EdDsa));
            }
            Jwk::ed25519(x)
        }
    };
    Ok(jwk)
}

/// The DER inside the one `PRIVATE KEY` PEM block of `pem`.
pub(crate) fn pem_to_der(pem: &str) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let mut body = Zeroizing::new(String::with_capacity(pem.len()));
    let mut inside = false;
    let mut done = false;
    for line in pem.lines() {
        let line = line.trim();
        if line.starts_with("-----") {
            match (inside, line) {
                (false, PEM_BEGIN) if !done => inside = true,
                (false, PEM_BEGIN) => return Err(KeyError::Pem("more than one key block")),
                (true, PEM_END) => {
                    inside = false;
                    done = true;
                }
                (false, _) if line.starts_with("-----BEGIN") => {
                    return Err(KeyError::Pem("expected an unencrypted pkcs#8 `PRIVATE KEY` block"));
                }
                _ => return Err(KeyError::Pem("unexpected armor line")),
            }
        } else if inside {
            body.push_str(line);
        }
    }
    if inside {
        return Err(KeyError::Pem("missing `-----END PRIVATE KEY-----` line"));
    }
    if !done {
        return Err(KeyError::Pem("missing `-----BEGIN PRIVATE KEY-----` line"));
    }
    // Headers (`Proc-Type:` and the like) only appear in encrypted legacy PEM.
    if body.contains(':') {
        return Err(KeyError::Pem("encrypted or legacy pem headers are not supported"));
    }
    let der = STANDARD
        .decode(body.as_bytes())
        .map_err(|_| KeyError::Pem("body is not valid base64"))?;
    Ok(Zeroizing::new(der))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]
    #![allow(clippy::indexing_slicing, reason = "test")]

    use super::*;
    use crate::token::test_keys::{ED25519_PEM, ED25519_PEM_V2, P256_PEM};

    #[test]
    fn generated_keys_load_and_have_thumbprint_kids() {
        for alg in [Algorithm::Es256, Algorithm::EdDsa] {
            let key = SigningKey::generate(alg).unwrap();
            assert_eq!(key.algorithm(), alg);
            assert_eq!(key.public_jwk().alg, alg);
            assert_eq!(key.kid(), key.public_jwk().thumbprint());
            assert_eq!(key.kid(), key.public_jwk().kid);
            assert_eq!(key.kid().len(), 43, "base64url of 32 bytes");
        }
    }

    #[test]
    fn fixed_keys_have_their_known_public_keys() {
        let ec = SigningKey::from_pkcs8_pem(Algorithm::Es256, P256_PEM).unwrap();
        let jwk = ec.public_jwk();
        assert_eq!((jwk.kty.as_str(), jwk.crv.as_str()), ("EC", "P-256"));
        // `openssl pkey -pubout` of P256_PEM, coordinates base64url-encoded.
        assert_eq!(jwk.x, "Fso4rOvz8HMlRJOYD04JC7NfYC3KYgaKovT0fuMeY_E");
        assert_eq!(jwk.y.as_deref(), Some("azvmxi9_BJC0OaD_6P5vmPa_fg7fI2JjnDD6KIWbUYo"));
        assert_eq!(ec.kid(), "ZsjS0l29S9dfY_schtB3ft2wLMysL2iCN93b0e7A5Ow");

        let ed = SigningKey::from_pkcs8_pem(Algorithm::EdDsa, ED25519_PEM).unwrap();
        let jwk = ed.public_jwk();
        assert_eq!((jwk.kty.as_str(), jwk.crv.as_str()), ("OKP", "Ed25519"));
        assert_eq!(jwk.x, "HeW9DFoPKBYT0_wHN0BbHH0YfB5BXwsU9HD_BVc5o4M");
        assert_eq!(jwk.y, None);
        assert_eq!(ed.kid(), "q1paCXYy6P6C5P1caRxylTNabyq5WF_0rn1NxbKvnRw");

        // The same seed as PKCS#8 v2 (with the public key) gives the same key.
        let ed2 = SigningKey::from_pkcs8_pem(Algorithm::EdDsa, ED25519_PEM_V2).unwrap();
        assert_eq!(ed2.public_jwk(), ed.public_jwk());
    }

    #[test]
    fn pem_round_trip() {
        for alg in [Algorithm::Es256, Algorithm::EdDsa] {
            let pem = generate_pkcs8_pem(alg).unwrap();
            assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
            assert!(pem.ends_with("-----END PRIVATE KEY-----\n"));
            assert!(pem.lines().all(|l| l.len() <= 64));
            let key = SigningKey::from_pkcs8_pem(alg, &pem).unwrap();
            assert_eq!(key.algorithm(), alg);
            // CRLF line endings and surrounding text are fine.
            let crlf = format!("comment\r\n{}\r\ntrailer", pem.replace('\n', "\r\n"));
            let again = SigningKey::from_pkcs8_pem(alg, &crlf).unwrap();
            assert_eq!(again.kid(), key.kid());
        }
    }

    #[test]
    fn wrong_algorithm_is_named() {
        let err = SigningKey::from_pkcs8_pem(Algorithm::EdDsa, P256_PEM).unwrap_err();
        assert!(
            matches!(
                err,
                KeyError::WrongAlgorithm {
                    expected: Algorithm::EdDsa,
                    found: Algorithm::Es256
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "pkcs#8 key is an ES256 key, expected EdDSA");
        let err = SigningKey::from_pkcs8_pem(Algorithm::Es256, ED25519_PEM).unwrap_err();
        assert!(matches!(err, KeyError::WrongAlgorithm { .. }), "{err:?}");
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    }

    #[test]
    fn garbage_der_is_rejected() {
        let err = SigningKey::from_pkcs8(Algorithm::Es256, b"not a key").unwrap_err();
        assert!(
            matches!(
                err,
                KeyError::Rejected {
                    alg: Algorithm::Es256,
                    ..
                }
            ),
            "{err:?}"
        );
        let err = SigningKey::from_pkcs8(Algorithm::EdDsa, &[]).unwrap_err();
        assert!(matches!(err, KeyError::Rejected { .. }), "{err:?}");
    }

    #[test]
    fn bad_pem_is_rejected() {
        let body = P256_PEM.lines().nth(1).unwrap();
        for (pem, why) in [
            ("", "missing `-----BEGIN"),
            ("-----BEGIN PRIVATE KEY-----\nAAAA\n", "missing `-----END"),
            (
                "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
                "unencrypted",
            ),
            (
                "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
                "unencrypted",
            ),
            (
                "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n",
                "base64",
            ),
            (
                "-----BEGIN PRIVATE KEY-----\nProc-Type: 4\n-----END PRIVATE KEY-----\n",
                "headers",
            ),
        ] {
            let err = SigningKey::from_pkcs8_pem(Algorithm::Es256, pem).unwrap_err();
            assert!(matches!(err, KeyError::Pem(_)), "{pem:?}: {err:?}");
            assert!(err.to_string().contains(why), "{pem:?}: {err}");
            assert!(!err.to_string().contains(body));
        }
        let twice = format!("{P256_PEM}{P256_PEM}");
        let err = SigningKey::from_pkcs8_pem(Algorithm::Es256, &twice).unwrap_err();
        assert!(matches!(err, KeyError::Pem("more than one key block")), "{err:?}");
    }

    #[test]
    fn debug_shows_no_key_material() {
        let key = SigningKey::from_pkcs8_pem(Algorithm::Es256, P256_PEM).unwrap();
        let debug = format!("{key:?}");
        assert_eq!(
            debug,
            r#"SigningKey { alg: Es256, kid: "ZsjS0l29S9dfY_schtB3ft2wLMysL2iCN93b0e7A5Ow", .. }"#
        );
        let alt = format!("{key:#?}");
        assert!(!alt.contains("Fso4") && !alt.contains("pair") && !alt.contains("jwk"));
    }

    #[test]
    fn header_is_exactly_alg_typ_kid() {
        let key = SigningKey::from_pkcs8_pem(Algorithm::EdDsa, ED25519_PEM).unwrap();
        let token = key.sign_jws("at+jwt", &serde_json::json!({"a": 1})).unwrap();
        let header = URL_SAFE_NO_PAD.decode(token.split('.').next().unwrap()).unwrap();
        assert_eq!(
            String::from_utf8(header).unwrap(),
            r#"{"alg":"EdDSA","typ":"at+jwt","kid":"q1paCXYy6P6C5P1caRxylTNabyq5WF_0rn1NxbKvnRw"}"#
        );
        let es = SigningKey::from_pkcs8_pem(Algorithm::Es256, P256_PEM).unwrap();
        let token = es.sign_jws("at+jwt", &serde_json::json!({})).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(URL_SAFE_NO_PAD.decode(parts[2]).unwrap().len(), 64, "fixed r||s");
    }

    /// Ed25519 is deterministic, so this is a golden token: any change to
    /// header layout, claim serialization or encoding shows up here.
    #[test]
    fn golden_eddsa_token() {
        // A struct, not `json!`: its field order does not depend on
        // serde_json's `preserve_order` feature.
        #[derive(Serialize)]
        struct Claims {
            iss: &'static str,
            exp: i64,
        }
        let key = SigningKey::from_pkcs8_pem(Algorithm::EdDsa, ED25519_PEM).unwrap();
        let claims = Claims {
            iss: "https://tessera.test",
            exp: 1,
        };
        let token = key.sign_jws("at+jwt", &claims).unwrap();
        assert_eq!(token, crate::token::test_keys::GOLDEN_EDDSA_TOKEN);
    }
}
