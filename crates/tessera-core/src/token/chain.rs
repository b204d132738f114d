//! The delegation chain of a token (`docs/ARCHITECTURE.md`, "Token claims:
//! act and cnf"): the RFC 8693 `act` claim (current actor outermost, each
//! level exactly `sub` plus the nested `act`) and the private, signed
//! `tessera_chain` (the ancestors, root first, each `{jti, sub, scope,
//! exp}`). A delegated token is accepted only if:
//!
//! 1. both claims are present or both absent, with the same length, at most
//!    the verifier's depth (never more than [`MAX_CHAIN_LEN`]);
//! 2. `tessera_chain[0].sub` = `sub` (the root holder);
//! 3. walking `act` outermost inwards gives `client_id`, then the chain's
//!    holders from the newest ancestor back to the second;
//! 4. scopes never widen and 5. expiry never extends, hop after hop and
//!    from the last ancestor to the token;
//! 6. every actor and hop has a `sub` of 1 to [`MAX_SUB_LEN`] bytes and
//!    every hop a `jti` of 1 to [`MAX_HOP_JTI_LEN`] bytes.
//!
//! Revocation of the ancestors' `jti`s is the caller's to check.

use std::collections::BTreeSet;

use super::claims::{AccessClaims, ChainHop, MAX_CHAIN_LEN};
use crate::error::ErrorKind;

/// Longest `sub` of an actor or a hop, in bytes.
pub const MAX_SUB_LEN: usize = 2048;
/// Longest `jti` of a hop, in bytes.
pub const MAX_HOP_JTI_LEN: usize = 128;

/// Why a delegated token's chain is refused by [`check_chain`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// `act` and `tessera_chain` are not both present with the same length.
    #[error("act and tessera_chain do not describe the same delegation chain")]
    Shape,
    /// More hops than this verifier accepts (at most [`MAX_CHAIN_LEN`]).
    #[error("delegation chain is deeper than allowed")]
    TooLong,
    /// An actor or a hop has an empty or overlong `sub` or `jti`.
    #[error("a delegation chain entry has a malformed `sub` or `jti`")]
    Entry,
    /// `sub` is not the root holder.
    #[error("sub is not the holder of the chain's root")]
    Subject,
    /// The actors are not the chain's holders.
    #[error("act does not name the chain's holders")]
    Actors,
    /// A hop carries a scope its parent lacks (`hop` 0 is the root's child).
    #[error("hop {hop} widens the scopes of its parent")]
    WiderScope {
        /// Index of the offending hop (the token itself is the last).
        hop: usize,
    },
    /// A hop expires after its parent.
    #[error("hop {hop} expires after its parent")]
    LaterExpiry {
        /// Index of the offending hop (the token itself is the last).
        hop: usize,
    },
}

impl ChainError {
    /// Transport-free classification: the token is refused.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Unauthenticated
    }
}

/// Checks a (signature-verified) token's delegation chain with the
/// largest depth any token may have ([`MAX_CHAIN_LEN`]). An undelegated
/// token (no `act`, no `tessera_chain`) passes.
pub fn check_chain(claims: &AccessClaims) -> Result<(), ChainError> {
    check_chain_within(claims, MAX_CHAIN_LEN)
}

/// [`check_chain`] with at most `max_depth` hops (cut to [`MAX_CHAIN_LEN`]).
pub fn check_chain_within(claims: &AccessClaims, max_depth: usize) -> Result<(), ChainError> {
    let chain = &claims.tessera_chain;
    let Some(act) = &claims.act else {
        return if chain.is_empty() {
            Ok(())
        } else {
            Err(ChainError::Shape)
        };
    };
    let actors = act.actors();
    let max_depth = max_depth.min(MAX_CHAIN_LEN);
    if chain.len() > max_depth || actors.len() > max_depth {
        return Err(ChainError::TooLong);
    }
    if chain.is_empty() || actors.len() != chain.len() {
        return Err(ChainError::Shape);
    }
    let well_formed = |s: &str, max: usize| !s.is_empty() && s.len() <= max;
    if !actors.iter().all(|sub| well_formed(sub, MAX_SUB_LEN))
        || !chain
            .iter()
            .all(|hop| well_formed(&hop.sub, MAX_SUB_LEN) && well_formed(&hop.jti, MAX_HOP_JTI_LEN))
    {
        return Err(ChainError::Entry);
    }
    if chain.first().map(|root| root.sub.as_str()) != Some(claims.sub.as_str()) {
        return Err(ChainError::Subject);
    }
    // Outermost first: the holder, then the holders of chain[n-1] .. chain[1].
    let expected = std::iter::once(claims.client_id.as_str()).chain(chain.iter().skip(1).rev().map(|h| h.sub.as_str()));
    if !actors.iter().copied().eq(expected) {
        return Err(ChainError::Actors);
    }
    let own = ChainHop {
        jti: claims.jti.clone(),
        sub: claims.client_id.clone(),
        scope: claims.scope.clone(),
        exp: claims.exp,
    };
    let hops: Vec<&ChainHop> = chain.iter().chain(std::iter::once(&own)).collect();
    for (hop, pair) in hops.windows(2).enumerate() {
        let [parent, child] = pair else { continue };
        let parent_scopes: BTreeSet<&str> = parent.scopes().collect();
        if !child.scopes().all(|s| parent_scopes.contains(s)) {
            return Err(ChainError::WiderScope { hop });
        }
        if child.exp > parent.exp {
            return Err(ChainError::LaterExpiry { hop });
        }
    }
    Ok(())
}
