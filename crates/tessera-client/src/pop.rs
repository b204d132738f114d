//! Proof-of-possession keys: an ES256 key pair generated with *ring* that
//! signs DPoP-style proofs (RFC 9449 section 4.2). The broker binds a token
//! to the key's thumbprint (`cnf.jkt`); a resource server then accepts the
//! token only with a fresh proof from the same key.
//!
//! The private key never leaves the value: `Debug` shows only the
//! thumbprint, and the PKCS#8 bytes are zeroized on drop.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::{SecureRandom as _, SystemRandom};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use zeroize::Zeroizing;

use crate::error::ClientError;

/// `htu` of a proof for RequestToken.
pub const REQUEST_TOKEN_HTU: &str = "/tessera.v1.AgentService/RequestToken";
/// `htu` of a proof for DelegateToken (made by the delegate's key).
pub const DELEGATE_TOKEN_HTU: &str = "/tessera.v1.AgentService/DelegateToken";

/// An ES256 proof-of-possession key.
pub struct PopKey {
    pair: EcdsaKeyPair,
    pkcs8: Zeroizing<Vec<u8>>,
    rng: SystemRandom,
    /// Public JWK members, base64url: x and y.
    x: String,
    y: String,
}

impl fmt::Debug for PopKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PopKey")
            .field("jkt", &self.thumbprint())
            .finish_non_exhaustive()
    }
}

impl PopKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self, ClientError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| ClientError::PopKey("cannot generate a P-256 key".into()))?;
        Self::from_pkcs8(pkcs8.as_ref())
    }

    /// The key in PKCS#8 DER.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, ClientError> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|_| ClientError::PopKey("not a PKCS#8 P-256 private key".into()))?;
        // Uncompressed SEC1 point: 0x04 || x || y.
        let point = pair.public_key().as_ref();
        let (x, y) = match (point.get(1..33), point.get(33..65)) {
            (Some(x), Some(y)) if point.len() == 65 => (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y)),
            _ => return Err(ClientError::PopKey("unexpected public key shape".into())),
        };
        Ok(Self {
            pair,
            pkcs8: Zeroizing::new(der.to_vec()),
            rng,
            x,
            y,
        })
    }

    /// The key from PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, ClientError> {
        let body: Zeroizing<String> =
            Zeroizing::new(pem.lines().map(str::trim).filter(|l| !l.starts_with("-----")).collect());
        if !pem.contains("-----BEGIN PRIVATE KEY-----") {
            return Err(ClientError::PopKey("not a PKCS#8 PEM private key".into()));
        }
        let der = Zeroizing::new(
            STANDARD
                .decode(body.as_bytes())
                .map_err(|_| ClientError::PopKey("PEM body is not base64".into()))?,
        );
        Self::from_pkcs8(&der)
    }

    /// The key as PKCS#8 PEM, to keep it in a file only its owner can read.
    pub fn to_pkcs8_pem(&self) -> Zeroizing<String> {
        let b64 = Zeroizing::new(STANDARD.encode(self.pkcs8.as_slice()));
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(chunk).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        Zeroizing::new(pem)
    }

    /// The public key as a JWK: `{"crv":"P-256","kty":"EC","x":..,"y":..}`.
    pub fn public_jwk(&self) -> serde_json::Value {
        serde_json::json!({"crv": "P-256", "kty": "EC", "x": self.x, "y": self.y})
    }

    /// The RFC 7638 thumbprint of the public key: what a bound token's
    /// `cnf.jkt` holds.
    pub fn thumbprint(&self) -> String {
        // The required members in lexicographic order, no whitespace.
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#, self.x, self.y);
        URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes()))
    }

    /// A proof for `htm` `htu` issued at `iat` (seconds since the epoch),
    /// with a fresh random `jti`, and `ath` when presenting `access_token`.
    pub fn proof_at(&self, htm: &str, htu: &str, iat: i64, access_token: Option<&str>) -> Result<String, ClientError> {
        let mut jti = [0u8; 16];
        self.rng
            .fill(&mut jti)
            .map_err(|_| ClientError::PopKey("random source failed".into()))?;
        let header = serde_json::json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": self.public_jwk()});
        let mut claims = serde_json::json!({
            "jti": URL_SAFE_NO_PAD.encode(jti),
            "htm": htm,
            "htu": htu,
            "iat": iat,
        });
        if let (Some(token), Some(map)) = (access_token, claims.as_object_mut()) {
            let ath = URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()));
            map.insert("ath".into(), ath.into());
        }
        let mut out = URL_SAFE_NO_PAD.encode(header.to_string());
        out.push('.');
        out.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
        let signature = self
            .pair
            .sign(&self.rng, out.as_bytes())
            .map_err(|_| ClientError::PopKey("signing failed".into()))?;
        out.push('.');
        out.push_str(&URL_SAFE_NO_PAD.encode(signature.as_ref()));
        Ok(out)
    }

    /// [`PopKey::proof_at`] now, by the system clock.
    pub fn proof(&self, htm: &str, htu: &str, access_token: Option<&str>) -> Result<String, ClientError> {
        self.proof_at(htm, htu, unix_now(), access_token)
    }
}

/// Seconds since the epoch by the system clock (proofs carry wall time).
#[expect(
    clippy::disallowed_methods,
    reason = "an SDK signs proofs with the host's wall clock"
)]
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test")]

    use super::*;

    #[test]
    fn a_key_round_trips_through_pem_and_signs_verifiable_proofs() {
        let key = PopKey::generate().unwrap();
        let again = PopKey::from_pkcs8_pem(&key.to_pkcs8_pem()).unwrap();
        assert_eq!(key.thumbprint(), again.thumbprint());
        assert!(!format!("{key:?}").contains("PRIVATE"));
        let proof = key
            .proof_at("POST", REQUEST_TOKEN_HTU, 1_800_000_000, Some("tok"))
            .unwrap();
        let parts: Vec<&str> = proof.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["typ"], "dpop+jwt");
        assert_eq!(header["jwk"], key.public_jwk());
        assert!(header["jwk"].get("d").is_none());
        let claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["htu"], REQUEST_TOKEN_HTU);
        assert_eq!(claims["iat"], 1_800_000_000);
        // The signature verifies with the public key alone.
        let mut point = vec![4u8];
        point.extend(URL_SAFE_NO_PAD.decode(&key.x).unwrap());
        point.extend(URL_SAFE_NO_PAD.decode(&key.y).unwrap());
        let public = ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, point);
        let signed = format!("{}.{}", parts[0], parts[1]);
        public
            .verify(signed.as_bytes(), &URL_SAFE_NO_PAD.decode(parts[2]).unwrap())
            .unwrap();
        // Every proof has its own jti.
        let other = key.proof_at("POST", REQUEST_TOKEN_HTU, 1_800_000_000, None).unwrap();
        assert_ne!(proof.split('.').nth(1), other.split('.').nth(1));
        assert!(PopKey::from_pkcs8_pem("garbage").is_err());
    }
}
