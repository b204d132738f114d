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
