//! Signed tokens: the broker's signing key, its public JWK set, compact JWS
//! signing and a hardened verifier, and RFC 9068 access-token claims.
//!
//! Only two algorithms exist here, ES256 and EdDSA (Ed25519), both through
//! *ring*. The verifier treats every token as hostile: it bounds the input,
//! checks the shape and alphabet before decoding, allows only those two
//! algorithms, pins the algorithm to the key's and never follows a key or
//! URL named in a header.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::ErrorKind;

mod chain;
mod check;
mod claims;
mod jwk;
mod jws;
mod key;
#[cfg(any(test, feature = "golden-vectors"))]
pub mod vectors;

#[cfg(test)]
pub(crate) mod test_keys;

pub use chain::{ChainError, MAX_HOP_JTI_LEN, MAX_SUB_LEN, check_chain, check_chain_within};
pub use check::{AccessCheck, MAX_LEEWAY_SECS, check_access_token};
pub use claims::{ACCESS_TOKEN_TYP, AccessClaims, Actor, ChainHop, Confirmation, MAX_CHAIN_LEN, verify_access_token};
pub use jwk::{Jwk, Jwks, VerificationKey};
pub use jws::{Header, JwsError, KeyLookup, MAX_KID_LEN, MAX_TOKEN_LEN, decode_unverified, verify};
pub use key::{KeyError, SigningKey, generate_pkcs8_pem};

/// PKCS#8 helpers shared with [`crate::pop::ProofKey`].
pub(crate) mod key_der {
    pub(crate) use super::key::{der_to_pem, generate_pkcs8, pem_to_der};
}

/// A JWS signature algorithm Tessera signs and verifies with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Algorithm {
    /// ECDSA over P-256 with SHA-256; the signature is the 64-byte `r||s`.
    #[default]
    #[serde(rename = "ES256")]
    Es256,
    /// Ed25519 (RFC 8037).
    #[serde(rename = "EdDSA")]
    EdDsa,
}

impl Algorithm {
    /// Every algorithm Tessera signs and verifies with.
    pub const ALL: [Self; 2] = [Self::Es256, Self::EdDsa];

    /// The JOSE name: `ES256` or `EdDSA`.
    pub fn as_jose(self) -> &'static str {
        match self {
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
        }
    }

    /// The algorithm whose JOSE name is exactly `name` (case-sensitive).
    pub(crate) fn from_jose(name: &str) -> Option<Self> {
        match name {
            "ES256" => Some(Self::Es256),
            "EdDSA" => Some(Self::EdDsa),
            _ => None,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_jose())
    }
}

impl FromStr for Algorithm {
    type Err = AlgorithmError;

    /// Accepts exactly `ES256` or `EdDSA`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_jose(s).ok_or_else(|| AlgorithmError(truncated(s, 32)))
    }
}

/// An algorithm name other than `ES256` or `EdDSA`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("algorithm `{0}` is not supported; expected `ES256` or `EdDSA`")]
pub struct AlgorithmError(String);

impl AlgorithmError {
    /// Transport-free classification.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidArgument
    }
}

/// At most `max` bytes of `s`, cut on a character boundary, so an error never
/// carries an unbounded input.
fn truncated(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    s.get(..end).unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]

    use super::*;

    #[test]
    fn algorithm_names_are_exact() {
        assert_eq!("ES256".parse::<Algorithm>().unwrap(), Algorithm::Es256);
        assert_eq!("EdDSA".parse::<Algorithm>().unwrap(), Algorithm::EdDsa);
        for bad in ["es256", "EDDSA", "eddsa", "Ed25519", "ES256 ", "none", "HS256", ""] {
            assert!(bad.parse::<Algorithm>().is_err(), "{bad:?} accepted");
        }
        assert_eq!(Algorithm::default(), Algorithm::Es256);
        assert_eq!(Algorithm::EdDsa.as_jose(), "EdDSA");
        assert_eq!(Algorithm::Es256.to_string(), "ES256");
    }

    #[test]
    fn algorithm_serde_uses_jose_names() {
        assert_eq!(serde_json::to_string(&Algorithm::Es256).unwrap(), r#""ES256""#);
        assert_eq!(serde_json::to_string(&Algorithm::EdDsa).unwrap(), r#""EdDSA""#);
        let alg: Algorithm = serde_json::from_str(r#""EdDSA""#).unwrap();
        assert_eq!(alg, Algorithm::EdDsa);
        assert!(serde_json::from_str::<Algorithm>(r#""Es256""#).is_err());
        assert!(serde_json::from_str::<Algorithm>(r#""none""#).is_err());
    }

    #[test]
    fn algorithm_error_is_bounded() {
        let long = "é".repeat(100);
        let err = long.parse::<Algorithm>().unwrap_err();
        assert!(err.to_string().len() < 100);
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    }
}
