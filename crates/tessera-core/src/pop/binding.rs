//! A resource server's check that a verified token is presented by the
//! party it is bound to (`cnf`): a DPoP proof of the `cnf.jkt` key for this
//! request (RFC 9449 section 7), or the TLS client certificate of
//! `cnf.x5t#S256` (RFC 8705 section 3). The `jti`'s single use is the
//! caller's, with [`super::VerifiedProof::replay_id`], once every other
//! check of the request passed.

use chrono::{DateTime, Duration, Utc};

use super::{ContentCheck, ProofCheck, ProofError, VerifiedProof, certificate_matches, check_key_binding_with_content};
use crate::error::ErrorKind;
use crate::token::Confirmation;

/// How a token arrived with a request, and what came with it.
#[derive(Debug, Clone, Copy)]
pub struct Presentation<'a> {
    /// The access token presented (its hash is the proof's `ath`).
    pub access_token: &'a str,
    /// Whether it came with the `DPoP` scheme (RFC 9449 section 7.1)
    /// rather than `Bearer`.
    pub dpop_scheme: bool,
    /// The one DPoP proof that came with it, if any.
    pub proof: Option<&'a str>,
    /// The request's method: the proof's `htm`.
    pub htm: &'a str,
    /// The request's URL as the client addressed it: the proof's `htu`.
    pub htu: &'a str,
    /// The DER of the caller's verified TLS client certificate, if any.
    pub client_cert_der: Option<&'a [u8]>,
    /// Now.
    pub now: DateTime<Utc>,
    /// Oldest proof `iat` accepted, as an age (cut to [`super::PROOF_MAX_AGE`]).
    pub max_age: Duration,
    /// Clock skew tolerated for a proof `iat` in the future.
    pub leeway: Duration,
}

/// How a token was bound to its presenter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bound {
    /// No `cnf`: anyone holding the token could present it.
    Bearer,
    /// `cnf.jkt`, with this proof (its `jti` still to be spent).
    Dpop(VerifiedProof),
    /// `cnf.x5t#S256`, presented over that client certificate.
    Certificate,
}

/// Why a presentation does not prove the token's binding. Never contains
/// the token, the proof or part of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BindingError {
    /// A bearer token (no `cnf.jkt`) sent with the `DPoP` scheme.
    #[error("the DPoP scheme needs a DPoP-bound token")]
    DpopSchemeWithoutKey,
    /// A `cnf.jkt` token without the `DPoP` scheme or without a proof.
    #[error("token is bound to a key: a proof of possession is required")]
    ProofRequired,
    /// The proof failed a check.
    #[error("dpop proof refused: {0}")]
    Proof(#[from] ProofError),
    /// A `cnf.x5t#S256` token without a client certificate.
    #[error("token is bound to a client certificate and none was presented")]
    CertificateRequired,
    /// A `cnf.x5t#S256` token over another client certificate.
    #[error("client certificate does not match the token's binding")]
    CertificateMismatch,
}

impl BindingError {
    /// Transport-free classification: the request is not authenticated.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Unauthenticated
    }
}

/// Checks that `presented` proves `cnf` (the verified token's); `None` is a
/// bearer token, which must not come with the `DPoP` scheme.
pub fn check_binding(cnf: Option<&Confirmation>, presented: &Presentation<'_>) -> Result<Bound, BindingError> {
    check_binding_with_content(cnf, presented, &ContentCheck::NONE)
}

/// [`check_binding`], with a DPoP proof's `content_digest` checked against
/// `content` (a certificate or bearer token has no proof to carry it).
pub fn check_binding_with_content(
    cnf: Option<&Confirmation>,
    presented: &Presentation<'_>,
    content: &ContentCheck<'_>,
) -> Result<Bound, BindingError> {
    match cnf {
        None if presented.dpop_scheme => Err(BindingError::DpopSchemeWithoutKey),
        None => Ok(Bound::Bearer),
        Some(Confirmation::X5tS256(x5t)) => {
            let der = presented.client_cert_der.ok_or(BindingError::CertificateRequired)?;
            if certificate_matches(x5t, der) {
                Ok(Bound::Certificate)
            } else {
                Err(BindingError::CertificateMismatch)
            }
        }
        Some(Confirmation::Jkt(jkt)) => {
            // RFC 9449 section 7.1: a DPoP-bound token comes with the DPoP scheme.
            if !presented.dpop_scheme {
                return Err(BindingError::ProofRequired);
            }
            let proof = presented.proof.ok_or(BindingError::ProofRequired)?;
            let check = ProofCheck {
                htm: presented.htm,
                htu: presented.htu,
                now: presented.now,
                max_age: presented.max_age,
                leeway: presented.leeway,
                access_token: Some(presented.access_token),
            };
            Ok(Bound::Dpop(check_key_binding_with_content(
                jkt, proof, &check, content,
            )?))
        }
    }
}
