//! The one verification of an access token, run by the broker
//! (introspection, delegation, exchange, release) and by the SDK verifier:
//! the JWS ([`super::jws`]: shape, header, `typ` `at+jwt`, the algorithm
//! allow-list, the key by `kid`, the signature), then the claims (`iss`,
//! `aud` when the verifier has one, `exp` / `nbf` / `iat` with a bounded
//! leeway, a non-empty `jti` and `task_id`), then the delegation chain
//! ([`super::chain`]). Proof of possession is [`crate::pop`]'s.

use chrono::{DateTime, Utc};

use super::Algorithm;
use super::chain::check_chain_within;
use super::claims::{ACCESS_TOKEN_TYP, AccessClaims, MAX_CHAIN_LEN};
use super::jws::{self, JwsError, KeyLookup};

/// The largest clock skew any verifier tolerates on `exp`, `nbf` and `iat`
/// (and on a proof's `iat`); a larger configured leeway is cut to this.
pub const MAX_LEEWAY_SECS: i64 = 300;

/// What a token must be for one verifier.
#[derive(Debug, Clone, Copy)]
pub struct AccessCheck<'a> {
    /// The trusted `iss`.
    pub issuer: &'a str,
    /// The verifier's audience; `None` at the broker, which introspects
    /// tokens of every audience and compares `aud` with the grant.
    pub audience: Option<&'a str>,
    /// The algorithms accepted (a subset of [`Algorithm::ALL`]).
    pub algorithms: &'a [Algorithm],
    /// Now.
    pub now: DateTime<Utc>,
    /// Clock skew tolerated, in seconds: negative counts as 0, more than
    /// [`MAX_LEEWAY_SECS`] as that.
    pub leeway_secs: i64,
    /// Most delegation hops accepted (cut to [`MAX_CHAIN_LEN`]).
    pub max_chain_len: usize,
}

impl<'a> AccessCheck<'a> {
    /// A check for tokens of `issuer` at `now`: any audience, both
    /// algorithms, no leeway, chains up to [`MAX_CHAIN_LEN`].
    pub fn new(issuer: &'a str, now: DateTime<Utc>) -> Self {
        Self {
            issuer,
            audience: None,
            algorithms: &Algorithm::ALL,
            now,
            leeway_secs: 0,
            max_chain_len: MAX_CHAIN_LEN,
        }
    }

    /// The leeway actually applied: `leeway_secs` within 0 and
    /// [`MAX_LEEWAY_SECS`].
    pub fn leeway(&self) -> i64 {
        self.leeway_secs.clamp(0, MAX_LEEWAY_SECS)
    }
}

/// Verifies `token` against `keys` for `check`; see the module docs for
/// the order. Errors never contain the token or part of it.
pub fn check_access_token(
    token: &str,
    keys: &impl KeyLookup,
    check: &AccessCheck<'_>,
) -> Result<AccessClaims, JwsError> {
    let payload = jws::verify_payload_allowing(token, keys, ACCESS_TOKEN_TYP, check.algorithms)?;
    // Not echoing serde's message: it may quote claim values.
    let claims: AccessClaims = serde_json::from_slice(&payload).map_err(|_| JwsError::Claims)?;
    if claims.iss != check.issuer {
        return Err(JwsError::Issuer);
    }
    if let Some(audience) = check.audience {
        claims.check_audience(audience)?;
    }
    let leeway = check.leeway();
    // Whole seconds, rounded down: a token with `exp` = t is expired from
    // t.000 on, and valid at t - 0.001.
    let now = check.now.timestamp();
    if claims.exp <= now.saturating_sub(leeway) {
        return Err(JwsError::Expired);
    }
    if claims.nbf > now.saturating_add(leeway) {
        return Err(JwsError::NotYetValid);
    }
    if claims.iat > now.saturating_add(leeway) {
        return Err(JwsError::IssuedInFuture);
    }
    // The grant id and the task name the token in revocations: a token
    // without them could never be revoked.
    if claims.jti.is_empty() || claims.task_id.is_empty() {
        return Err(JwsError::Claims);
    }
    check_chain_within(&claims, check.max_chain_len)?;
    Ok(claims)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test")]

    use super::*;
    use crate::token::test_keys::{ed25519, jwks, p256};
    use crate::token::{Actor, ChainError, ChainHop};

    const ISSUER: &str = "https://tessera.test";
    const T0: i64 = 1_800_000_000;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(T0, 0).unwrap()
    }

    fn claims() -> AccessClaims {
        AccessClaims {
            iss: ISSUER.into(),
            sub: "spiffe://td/a".into(),
            aud: "https://api.test".into(),
            exp: T0 + 60,
            nbf: T0,
            iat: T0,
            jti: "g1".into(),
            scope: "read".into(),
            client_id: "spiffe://td/a".into(),
            task_id: "t1".into(),
            cnf: None,
            act: None,
            tessera_chain: Vec::new(),
            authorization_details: Vec::new(),
        }
    }

    /// `a` delegated to b, c, ... (`hops` delegations): the token of the last.
    fn delegated(hops: usize) -> AccessClaims {
        let holders: Vec<String> = (0..=hops).map(|i| format!("spiffe://td/{i}")).collect();
        AccessClaims {
            sub: holders[0].clone(),
            client_id: holders[hops].clone(),
            act: Actor::nest(holders.iter().skip(1).rev().cloned().collect::<Vec<_>>()),
            tessera_chain: holders[..hops]
                .iter()
                .map(|sub| ChainHop {
                    jti: format!("{sub}-jti"),
                    sub: sub.clone(),
                    scope: "read".into(),
                    exp: T0 + 60,
                })
                .collect(),
            ..claims()
        }
    }

    #[test]
    fn the_allow_list_and_the_audience_are_the_verifiers() {
        let (es, ed) = (p256(), ed25519());
        let set = jwks(&[&es, &ed]);
        let only_es = AccessCheck {
            algorithms: &[Algorithm::Es256],
            audience: Some("https://api.test"),
            ..AccessCheck::new(ISSUER, now())
        };
        check_access_token(&es.sign_jws(ACCESS_TOKEN_TYP, &claims()).unwrap(), &set, &only_es).unwrap();
        let token = ed.sign_jws(ACCESS_TOKEN_TYP, &claims()).unwrap();
        assert_eq!(
            check_access_token(&token, &set, &only_es).unwrap_err(),
            JwsError::AlgorithmNotAllowed(Algorithm::EdDsa)
        );
        let elsewhere = AccessCheck {
            audience: Some("https://other.test"),
            ..AccessCheck::new(ISSUER, now())
        };
        assert_eq!(
            check_access_token(&token, &set, &elsewhere).unwrap_err(),
            JwsError::Audience
        );
        // No audience: the broker's check, which compares `aud` with the grant.
        check_access_token(&token, &set, &AccessCheck::new(ISSUER, now())).unwrap();
    }

    #[test]
    fn a_token_that_could_not_be_revoked_is_refused() {
        let key = p256();
        let set = jwks(&[&key]);
        let check = AccessCheck::new(ISSUER, now());
        for edit in [
            |c: &mut AccessClaims| c.jti.clear(),
            |c: &mut AccessClaims| c.task_id.clear(),
        ] {
            let mut c = claims();
            edit(&mut c);
            let token = key.sign_jws(ACCESS_TOKEN_TYP, &c).unwrap();
            assert_eq!(check_access_token(&token, &set, &check).unwrap_err(), JwsError::Claims);
        }
    }

    #[test]
    fn the_chain_is_checked_within_the_verifiers_depth() {
        let key = ed25519();
        let set = jwks(&[&key]);
        let within = |max_chain_len| AccessCheck {
            max_chain_len,
            ..AccessCheck::new(ISSUER, now())
        };
        let token = key.sign_jws(ACCESS_TOKEN_TYP, &delegated(3)).unwrap();
        check_access_token(&token, &set, &within(3)).unwrap();
        assert_eq!(
            check_access_token(&token, &set, &within(2)).unwrap_err(),
            JwsError::Chain(ChainError::TooLong)
        );
        // A configured depth above the bound is the bound.
        let deepest = key.sign_jws(ACCESS_TOKEN_TYP, &delegated(MAX_CHAIN_LEN)).unwrap();
        check_access_token(&deepest, &set, &within(usize::MAX)).unwrap();
        let deeper = key.sign_jws(ACCESS_TOKEN_TYP, &delegated(MAX_CHAIN_LEN + 1)).unwrap();
        assert_eq!(
            check_access_token(&deeper, &set, &within(usize::MAX)).unwrap_err(),
            JwsError::Chain(ChainError::TooLong)
        );
        // Entries are bounded: an empty or overlong `sub` or hop `jti`.
        for edit in [
            |c: &mut AccessClaims| c.tessera_chain[0].jti.clear(),
            |c: &mut AccessClaims| c.tessera_chain[1].jti = "j".repeat(crate::token::MAX_HOP_JTI_LEN + 1),
            |c: &mut AccessClaims| c.tessera_chain[1].sub = "s".repeat(crate::token::MAX_SUB_LEN + 1),
        ] {
            let mut c = delegated(2);
            edit(&mut c);
            let token = key.sign_jws(ACCESS_TOKEN_TYP, &c).unwrap();
            assert_eq!(
                check_access_token(&token, &set, &within(4)).unwrap_err(),
                JwsError::Chain(ChainError::Entry)
            );
        }
    }
}
