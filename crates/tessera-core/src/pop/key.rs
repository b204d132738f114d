//! [`ProofKey`]: the one proof-of-possession key type, used by agents (the
//! SDK's `PopKey`, the CLI) to bind tokens and sign proofs, by resource
//! server clients to sign DPoP proofs, and by tests. It signs through
//! [`super::sign_proof`], the one proof signer.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use ring::rand::{SecureRandom as _, SystemRandom};
use zeroize::Zeroizing;

use crate::clock::{Clock as _, SystemClock};
use crate::token::{Algorithm, KeyError, SigningKey};

/// A private proof-of-possession key (ES256 by default, or EdDSA). A token
/// bound to it carries its RFC 7638 thumbprint as `cnf.jkt`.
///
/// The private key never leaves the value: `Debug` shows the thumbprint
/// only, and the PKCS#8 bytes are zeroized on drop (see
/// [`crate::token::SigningKey`] for what *ring* keeps).
pub struct ProofKey {
    key: SigningKey,
    pkcs8: Zeroizing<Vec<u8>>,
    rng: SystemRandom,
}

impl fmt::Debug for ProofKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProofKey")
            .field("alg", &self.key.algorithm())
            .field("jkt", &self.thumbprint())
            .finish_non_exhaustive()
    }
}

impl ProofKey {
    /// A fresh random ES256 key.
    pub fn generate() -> Result<Self, KeyError> {
        Self::generate_for(Algorithm::Es256)
    }

    /// A fresh random key of `alg`.
    pub fn generate_for(alg: Algorithm) -> Result<Self, KeyError> {
        let der = crate::token::key_der::generate_pkcs8(alg, &SystemRandom::new())?;
        Self::from_pkcs8(&der)
    }

    /// The key in unencrypted PKCS#8 DER, P-256 or Ed25519.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, KeyError> {
        let key = match SigningKey::from_pkcs8(Algorithm::Es256, der) {
            Err(KeyError::WrongAlgorithm { found, .. }) => SigningKey::from_pkcs8(found, der)?,
            other => other?,
        };
        Ok(Self {
            key,
            pkcs8: Zeroizing::new(der.to_vec()),
            rng: SystemRandom::new(),
        })
    }

    /// The key from PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, KeyError> {
        let der = crate::token::key_der::pem_to_der(pem)?;
        Self::from_pkcs8(&der)
    }

    /// The key as PKCS#8 PEM, to keep in a file only its owner can read.
    pub fn to_pkcs8_pem(&self) -> Zeroizing<String> {
        crate::token::key_der::der_to_pem(&self.pkcs8)
    }

    /// The signature algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.key.algorithm()
    }

    /// The RFC 7638 thumbprint of the public key: a bound token's `cnf.jkt`.
    pub fn thumbprint(&self) -> &str {
        // The signing key's id is its public JWK's thumbprint.
        self.key.kid()
    }

    /// The public key as a JWK JSON object, the members a proof header
    /// carries (`kty`, `crv`, `x`, and `y` for P-256); nothing private.
    pub fn public_jwk(&self) -> serde_json::Value {
        super::public_members(&self.key)
    }

    /// A proof for `htm` `htu` with exactly this `jti` and `iat`, and `ath`
    /// when presenting `access_token`.
    pub fn sign(
        &self,
        htm: &str,
        htu: &str,
        jti: &str,
        iat: DateTime<Utc>,
        access_token: Option<&str>,
    ) -> Result<String, KeyError> {
        super::sign_proof(&self.key, htm, htu, jti, iat, access_token)
    }

    /// A proof for `htm` `htu` issued at `iat` (seconds since the epoch),
    /// with a fresh random `jti`, and `ath` when presenting `access_token`.
    pub fn proof_at(&self, htm: &str, htu: &str, iat: i64, access_token: Option<&str>) -> Result<String, KeyError> {
        let iat = DateTime::from_timestamp(iat, 0).ok_or(KeyError::Sign(self.algorithm()))?;
        self.sign(htm, htu, &self.random_jti()?, iat, access_token)
    }

    /// [`ProofKey::proof_at`] now, by the host's clock (proofs carry wall time).
    pub fn proof(&self, htm: &str, htu: &str, access_token: Option<&str>) -> Result<String, KeyError> {
        self.proof_at(htm, htu, SystemClock.now().timestamp(), access_token)
    }

    /// [`ProofKey::proof`] carrying the server-provided `nonce` (RFC 9449
    /// section 8), as asked for by a `DPoP-Nonce` header.
    pub fn proof_with_nonce(
        &self,
        htm: &str,
        htu: &str,
        nonce: &str,
        access_token: Option<&str>,
    ) -> Result<String, KeyError> {
        let iat = SystemClock.now();
        super::sign_proof_with_nonce(&self.key, htm, htu, &self.random_jti()?, iat, access_token, Some(nonce))
    }

    /// A proof for `htm` `htu` now, bound to the request `body` by its
    /// `content_digest` (see [`super::ContentCheck`]), with `ath` when
    /// presenting `access_token` and the server's `nonce` when it asked.
    pub fn proof_for_body(
        &self,
        htm: &str,
        htu: &str,
        body: &[u8],
        access_token: Option<&str>,
        nonce: Option<&str>,
    ) -> Result<String, KeyError> {
        let claims = super::ProofClaims {
            htm,
            htu,
            jti: &self.random_jti()?,
            iat: SystemClock.now(),
            access_token,
            nonce,
            body: Some(body),
        };
        super::sign_proof_claims(&self.key, &claims)
    }

    /// 128 random bits, base64url: a `jti` no other proof has.
    fn random_jti(&self) -> Result<String, KeyError> {
        let mut jti = [0u8; 16];
        self.rng
            .fill(&mut jti)
            .map_err(|_| KeyError::Generate(self.algorithm()))?;
        Ok(URL_SAFE_NO_PAD.encode(jti))
    }

    /// The key as a signing key, for tests that sign hostile proofs.
    #[cfg(any(test, feature = "golden-vectors"))]
    pub(crate) fn signing_key(&self) -> &SigningKey {
        &self.key
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test")]

    use super::*;
    use crate::pop::{ProofCheck, verify_proof};

    #[test]
    fn a_key_round_trips_through_pem_and_signs_verifiable_proofs() {
        for alg in Algorithm::ALL {
            let key = ProofKey::generate_for(alg).unwrap();
            let again = ProofKey::from_pkcs8_pem(&key.to_pkcs8_pem()).unwrap();
            assert_eq!(key.thumbprint(), again.thumbprint());
            assert_eq!(again.algorithm(), alg);
            assert!(!format!("{key:?}").contains("PRIVATE"));
            assert!(key.public_jwk().get("d").is_none());
            let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
            let proof = key.proof_at("POST", "/x", now.timestamp(), Some("tok")).unwrap();
            let check = ProofCheck {
                htm: "POST",
                htu: "/x",
                now,
                max_age: crate::pop::PROOF_MAX_AGE,
                leeway: chrono::Duration::zero(),
                access_token: Some("tok"),
            };
            let verified = verify_proof(&proof, &check).unwrap();
            assert_eq!(verified.jkt, key.thumbprint());
            // Every proof has its own jti.
            let other = key.proof_at("POST", "/x", now.timestamp(), Some("tok")).unwrap();
            assert_ne!(verify_proof(&other, &check).unwrap().jti, verified.jti);
        }
        assert!(ProofKey::from_pkcs8_pem("garbage").is_err());
    }
}
