//! Attestation verification: turning evidence a caller presents into the
//! SPIFFE ID it proves, without any I/O. The server's edge gathers the
//! evidence (a TLS peer certificate, an `authorization: Bearer` JWT, the
//! kernel's peer credentials), fetches issuer keys, and consults the replay
//! cache; everything decided about the evidence itself is decided here.
//!
//! - [`jwt`]: compact JWS from a configured OIDC issuer (Kubernetes
//!   projected service-account tokens, CI OIDC tokens, JWT-SVIDs), verified
//!   against that issuer's keys ([`jwks`]) and mapped to a SPIFFE ID by a
//!   [`mapping::ClaimMapping`].
//! - [`unix`]: selectors over a Unix-socket peer's uid, gid and executable.
//!
//! Each attestor yields a SPIFFE ID plus an [`Evidence`] digest (tagged with
//! its [`AttestationMethod`]) for the audit record; the registry then decides
//! whether that identity exists, is enabled, and may use that method
//! ([`crate::identity::VerifiedIdentity::attested`]).

pub mod jwks;
pub mod jwt;
pub mod mapping;
pub mod unix;

#[cfg(test)]
mod tests;

use std::fmt;

pub use crate::identity::AttestationMethod;
pub use jwks::{IssuerKeys, JwksError};
pub use jwt::{IssuerPolicy, JwtAlgorithm, JwtAttestation, JwtError, ParsedJwt};
pub use mapping::{ClaimMapping, MappingError};
pub use unix::{UnixPeer, UnixSelector};

/// A digest of attestation evidence, tagged with how it was obtained. Never
/// the evidence itself (a bearer JWT is a secret; its digest is not).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Evidence {
    method: AttestationMethod,
    digest: String,
}

impl Evidence {
    /// `sha256:<hex>` of `bytes`, from `method`.
    pub fn sha256(method: AttestationMethod, bytes: &[u8]) -> Self {
        Self {
            method,
            digest: sha256_hex(bytes),
        }
    }

    /// Evidence described by `digest` (already a digest or a non-secret
    /// description, e.g. a Unix peer's selectors).
    pub fn described(method: AttestationMethod, digest: String) -> Self {
        Self { method, digest }
    }

    /// How the evidence was obtained.
    pub fn method(&self) -> AttestationMethod {
        self.method
    }

    /// The digest, e.g. `sha256:…`.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The digest, consumed.
    pub fn into_digest(self) -> String {
        self.digest
    }
}

impl fmt::Display for Evidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.method, self.digest)
    }
}

/// `sha256:<lowercase hex>` of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    crate::hex::sha256(bytes)
}

/// Whether `s` is usable as a lookup key: 1..=`max` bytes of printable ASCII
/// other than `/`, `\`, quotes and `..` (so it can never act as a path,
/// break out of a quoted context, or carry control characters).
pub(crate) fn is_safe_key(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && !s.contains("..")
        && s.bytes().all(|b| b.is_ascii_graphic() && !b"/\\'\"`%".contains(&b))
}
