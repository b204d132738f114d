//! Delegation offers: how a child bound to the delegate's key is minted in
//! the delegate's own call. The holder asks for an offer (OfferDelegation);
//! the broker signs it (`typ: tessera-offer+jwt`, never an access token);
//! only the delegate it names redeems it (RedeemDelegation), once, with a
//! proof made by its own key. So the holder never receives a child bound to
//! a key: the delegate's proof is made in the delegate's attested call.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::task::Scope;
use crate::token::{self, AccessClaims, JwsError, KeyLookup};
use crate::ttl::Ttl;

/// `typ` of an offer. Access-token checks (`at+jwt`) refuse it.
pub const OFFER_TYP: &str = "tessera-offer+jwt";

/// How long an offer can be redeemed, in seconds (cut at the parent's expiry).
pub const OFFER_TTL_SECS: i64 = 120;

/// What an offer says, signed by the broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfferClaims {
    /// The broker.
    pub iss: String,
    /// The offer's id: it is redeemed once.
    pub jti: String,
    /// When it was made (Unix seconds).
    pub iat: i64,
    /// Last moment it can be redeemed (Unix seconds).
    pub exp: i64,
    /// The parent's holder, who made the offer.
    pub delegator: String,
    /// The only identity that can redeem it.
    pub delegate: String,
    /// The parent token's claims, as the broker verified them when the offer
    /// was made (without its signature they are no credential).
    pub parent: AccessClaims,
    /// The child's scopes, space-separated; empty: the parent's.
    pub scope: String,
    /// The requested lifetime in seconds, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
    /// The narrower tool-level limit asked for, if any (none: the parent's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<crate::authz::ToolGrant>,
}

impl OfferClaims {
    /// The scopes asked for (empty: all of the parent's).
    pub fn scopes(&self) -> Result<std::collections::BTreeSet<Scope>, OfferError> {
        self.scope
            .split_ascii_whitespace()
            .map(|s| Scope::parse(s).map_err(|_| OfferError::Claims))
            .collect()
    }

    /// The requested lifetime.
    pub fn ttl(&self) -> Result<Option<Ttl>, OfferError> {
        self.ttl
            .map(|s| Ttl::from_secs(s).map_err(|_| OfferError::Claims))
            .transpose()
    }

    /// When it stops being redeemable.
    pub fn expires_at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp(self.exp, 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
    }
}

/// Why an offer was refused. One message for all: which check failed is
/// not told to whoever holds the offer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OfferError {
    /// Bad signature, wrong type or issuer, unknown key.
    #[error("offer: not a delegation offer of this broker")]
    Signature(#[source] JwsError),
    /// Claims missing or malformed.
    #[error("offer: not a delegation offer of this broker")]
    Claims,
    /// Past its `exp`.
    #[error("offer: expired")]
    Expired,
}

/// Verifies `offer`'s signature against the broker's `keys`, its type and
/// issuer, and that it is still redeemable at `now` (with `leeway_secs`).
/// Who may redeem it and whether it was already redeemed are the broker's.
pub fn verify_offer(
    offer: &str,
    keys: &impl KeyLookup,
    issuer: &str,
    now: DateTime<Utc>,
    leeway_secs: i64,
) -> Result<OfferClaims, OfferError> {
    let payload = token::verify(offer, keys, OFFER_TYP).map_err(OfferError::Signature)?;
    let claims: OfferClaims =
        serde_json::from_value(serde_json::Value::Object(payload)).map_err(|_| OfferError::Claims)?;
    if claims.iss != issuer || claims.jti.is_empty() {
        return Err(OfferError::Claims);
    }
    if claims.exp
        <= now
            .timestamp()
            .saturating_sub(leeway_secs.clamp(0, token::MAX_LEEWAY_SECS))
    {
        return Err(OfferError::Expired);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]

    use super::*;
    use crate::token::test_keys::{jwks, p256};
    use crate::token::{ACCESS_TOKEN_TYP, AccessCheck, check_access_token};

    const ISSUER: &str = "https://tessera.test";
    const T0: i64 = 1_800_000_000;

    fn parent() -> AccessClaims {
        AccessClaims {
            iss: ISSUER.into(),
            sub: "spiffe://td/a".into(),
            aud: "https://api.test".into(),
            exp: T0 + 600,
            nbf: T0,
            iat: T0,
            jti: "g1".into(),
            scope: "r".into(),
            client_id: "spiffe://td/a".into(),
            task_id: "t1".into(),
            cnf: None,
            act: None,
            tessera_chain: Vec::new(),
            authorization_details: Vec::new(),
        }
    }

    fn offer() -> OfferClaims {
        OfferClaims {
            tools: None,
            iss: ISSUER.into(),
            jti: "o1".into(),
            iat: T0,
            exp: T0 + OFFER_TTL_SECS,
            delegator: "spiffe://td/a".into(),
            delegate: "spiffe://td/b".into(),
            parent: parent(),
            scope: String::new(),
            ttl: None,
        }
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    #[test]
    fn an_offer_is_never_an_access_token_nor_an_access_token_an_offer() {
        let key = p256();
        let keys = jwks(&[&key]);
        let signed = key.sign_jws(OFFER_TYP, &offer()).unwrap();
        assert_eq!(verify_offer(&signed, &keys, ISSUER, at(T0), 0).unwrap(), offer());
        assert!(check_access_token(&signed, &keys, &AccessCheck::new(ISSUER, at(T0))).is_err());
        let token = key.sign_jws(ACCESS_TOKEN_TYP, &parent()).unwrap();
        assert!(matches!(
            verify_offer(&token, &keys, ISSUER, at(T0), 0),
            Err(OfferError::Signature(_))
        ));
    }

    #[test]
    fn an_offer_expires_and_names_its_issuer() {
        let key = p256();
        let keys = jwks(&[&key]);
        let signed = key.sign_jws(OFFER_TYP, &offer()).unwrap();
        assert_eq!(
            verify_offer(&signed, &keys, ISSUER, at(T0 + OFFER_TTL_SECS), 0),
            Err(OfferError::Expired)
        );
        assert_eq!(
            verify_offer(&signed, &keys, "https://other.test", at(T0), 0),
            Err(OfferError::Claims)
        );
    }
}
