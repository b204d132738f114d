//! The delegation chain of a token (`docs/ARCHITECTURE.md`, "Token claims:
//! act and cnf"): the RFC 8693 `act` claim (current actor outermost, each
//! level exactly `sub` plus the nested `act`) and the private, signed
//! `tessera_chain` (the ancestors, root first, each `{jti, sub, scope,
//! exp}`). A delegated token is accepted only if:
//!
//! 1. both claims are present or both absent, with the same length, at most
//!    the configured depth;
//! 2. `tessera_chain[0].sub` = `sub` (the root holder);
//! 3. walking `act` outermost inwards gives `client_id`, then the chain's
//!    holders from the newest ancestor back to the second;
//! 4. scopes never widen and 5. expiry never extends, hop after hop and
//!    from the last ancestor to the token;
//! 6. no ancestor `jti` is revoked (the caller checks the returned ids).

use std::collections::BTreeSet;

use serde::Deserialize;
use serde_json::Value;

use super::error::VerifyError;

/// Longest `sub` accepted in a hop, in bytes.
const MAX_SUB_LEN: usize = 2048;

/// One ancestor of a delegated token, from `tessera_chain`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainHop {
    /// The ancestor's `jti` (its grant id).
    pub jti: String,
    /// Its holder.
    pub sub: String,
    /// Its scopes, space-separated.
    pub scope: String,
    /// Its expiry, seconds since the epoch.
    pub exp: i64,
}

/// The claims the chain checks read.
pub(crate) struct Delegated<'a> {
    pub(crate) sub: &'a str,
    pub(crate) client_id: &'a str,
    pub(crate) scope: &'a str,
    pub(crate) exp: i64,
    pub(crate) act: Option<&'a Value>,
    pub(crate) chain: Option<&'a [ChainHop]>,
}

fn scopes(scope: &str) -> BTreeSet<&str> {
    scope.split(' ').filter(|s| !s.is_empty()).collect()
}

/// Checks rules 1 to 5 and returns the actors, outermost (current) first.
pub(crate) fn check(token: &Delegated<'_>, max_depth: usize) -> Result<Vec<String>, VerifyError> {
    let chain = token.chain.unwrap_or_default();
    let actors = actors(token.act, max_depth)?;
    if actors.len() != chain.len() {
        return Err(VerifyError::Delegation("`act` and `tessera_chain` differ in length"));
    }
    let Some(root) = chain.first() else {
        return Ok(actors); // not delegated
    };
    if root.sub != token.sub {
        return Err(VerifyError::Delegation("the chain's root is not the token's `sub`"));
    }
    // Outermost actor = the holder; then the ancestors' holders, newest
    // first, down to the second.
    let expected = std::iter::once(token.client_id).chain(chain.iter().skip(1).rev().map(|hop| hop.sub.as_str()));
    if !actors.iter().map(String::as_str).eq(expected) {
        return Err(VerifyError::Delegation("`act` does not match the chain's holders"));
    }
    for pair in chain.windows(2) {
        if let [before, after] = pair {
            if !scopes(&after.scope).is_subset(&scopes(&before.scope)) {
                return Err(VerifyError::Delegation("a hop holds a scope the hop before it did not"));
            }
            if after.exp > before.exp {
                return Err(VerifyError::Delegation("a hop outlives the hop before it"));
            }
        }
    }
    if let Some(last) = chain.last() {
        if !scopes(token.scope).is_subset(&scopes(&last.scope)) {
            return Err(VerifyError::Delegation("the token holds a scope its parent did not"));
        }
        if token.exp > last.exp {
            return Err(VerifyError::Delegation("the token outlives its parent"));
        }
    }
    for hop in chain {
        if hop.jti.is_empty() || hop.jti.len() > 128 || hop.sub.is_empty() || hop.sub.len() > MAX_SUB_LEN {
            return Err(VerifyError::Delegation("a chain entry has a malformed `jti` or `sub`"));
        }
    }
    Ok(actors)
}

/// The `act` levels' `sub`, outermost first; each level exactly `sub` and
/// an optional nested `act`.
fn actors(act: Option<&Value>, max_depth: usize) -> Result<Vec<String>, VerifyError> {
    let mut out = Vec::new();
    let mut next = act;
    while let Some(value) = next {
        if out.len() >= max_depth {
            return Err(VerifyError::Delegation("the chain is deeper than allowed"));
        }
        let Value::Object(level) = value else {
            return Err(VerifyError::Delegation("an `act` is not an object"));
        };
        if level.keys().any(|k| k != "sub" && k != "act") {
            return Err(VerifyError::Delegation(
                "an `act` has a member other than `sub` and `act`",
            ));
        }
        match level.get("sub") {
            Some(Value::String(sub)) if !sub.is_empty() && sub.len() <= MAX_SUB_LEN => out.push(sub.clone()),
            _ => return Err(VerifyError::Delegation("an `act` has no valid `sub`")),
        }
        next = level.get("act");
    }
    Ok(out)
}
