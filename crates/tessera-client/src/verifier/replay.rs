//! Where a verifier remembers the DPoP proofs it accepted (RFC 9449
//! section 11.1): a proof's key thumbprint and `jti`
//! ([`tessera_core::pop::VerifiedProof::replay_id`]) are remembered until its
//! `iat` leaves the acceptance window. Checking the proof itself is core's
//! ([`tessera_core::pop::check_binding`]).
//!
//! By default each verifier remembers in its own memory ([`ReplayCache`]).
//! Replicas of one resource server behind a load balancer share a
//! [`ReplayStore`] instead (e.g. `RedisReplayStore`, feature `redis`): a proof
//! one replica accepted is refused by every other.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;

use super::error::VerifyError;

/// A DPoP proof to spend: its key's thumbprint, its `jti`, and until when
/// (Unix seconds) it must be remembered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpentProof {
    /// RFC 7638 thumbprint of the proof's key (`cnf.jkt`).
    pub jkt: String,
    /// The proof's `jti`.
    pub jti: String,
    /// Remember it until this instant (Unix seconds).
    pub until: i64,
    /// Now, on the verifier's clock (Unix seconds).
    pub now: i64,
}

/// Why a store did not record a proof as spent. Every one refuses the request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// The proof was spent before.
    #[error("dpop proof has been used before")]
    Replayed,
    /// The store, or this key's share of it, is full of live entries.
    #[error("dpop replay store is full ({0})")]
    Full(&'static str),
    /// The store could not be asked (fail closed).
    #[error("dpop replay store unavailable: {0}")]
    Unavailable(String),
}

impl From<ReplayError> for VerifyError {
    fn from(e: ReplayError) -> Self {
        match e {
            ReplayError::Replayed => Self::ProofReplayed,
            ReplayError::Full(what) => Self::Capacity(what),
            ReplayError::Unavailable(why) => Self::ReplayStoreUnavailable(why),
        }
    }
}

/// The future a [`ReplayStore`] answers with.
pub type SpendFuture<'a> = Pin<Box<dyn Future<Output = Result<(), ReplayError>> + Send + 'a>>;

/// A replay store shared by the replicas of one resource server.
///
/// `spend` records the proof atomically — check and insert in one step, so
/// two replicas presented the same proof at once accept it once — and
/// bounds the entries of one key thumbprint, so one client cannot fill the
/// store for every other. It fails closed: an unreachable store refuses.
pub trait ReplayStore: Send + Sync + std::fmt::Debug {
    /// Records `proof` as spent, or says why not.
    fn spend<'a>(&'a self, proof: &'a SpentProof) -> SpendFuture<'a>;
}

/// Remembers proof `jti`s (per key) until their `iat` leaves the window;
/// holds at most `capacity`, at most `per_key` for one key thumbprint, and
/// refuses, failing closed, when either is full: a client spending proofs
/// fast fills only its own share.
#[derive(Debug)]
pub(crate) struct ReplayCache {
    seen: HashMap<String, i64>,
    order: VecDeque<(i64, String)>,
    capacity: usize,
    /// Entries per key thumbprint (the part of a replay id before its `.`).
    by_key: HashMap<String, usize>,
    per_key: usize,
}

/// The key thumbprint of a replay id `<jkt>.<jti>` (a thumbprint is
/// base64url, so it has no `.`).
fn key_of(replay_id: &str) -> &str {
    replay_id.split_once('.').map_or(replay_id, |(jkt, _)| jkt)
}

impl ReplayCache {
    pub(crate) fn new(capacity: usize, per_key: usize) -> Self {
        Self {
            seen: HashMap::new(),
            order: VecDeque::new(),
            capacity,
            by_key: HashMap::new(),
            per_key,
        }
    }

    /// Records the proof `replay_id` as used at `now`, to be remembered
    /// until `until` (seconds); refuses one seen before.
    pub(crate) fn record(&mut self, replay_id: String, until: i64, now: i64) -> Result<(), ReplayError> {
        self.prune(now);
        if self.seen.get(&replay_id).is_some_and(|seen_until| *seen_until >= now) {
            return Err(ReplayError::Replayed);
        }
        if self.seen.len() >= self.capacity {
            return Err(ReplayError::Full("dpop replay cache"));
        }
        let key = key_of(&replay_id);
        if self.by_key.get(key).is_some_and(|n| *n >= self.per_key) {
            return Err(ReplayError::Full("dpop replay cache of this key"));
        }
        *self.by_key.entry(key.to_owned()).or_insert(0) += 1;
        self.order.push_back((until, replay_id.clone()));
        self.seen.insert(replay_id, until);
        Ok(())
    }

    /// Forgets entries whose window has passed. Entries are pushed in
    /// arrival order and their windows have one length, so the front is
    /// nearly always the oldest; a late one only waits a little longer.
    fn prune(&mut self, now: i64) {
        while let Some((until, _)) = self.order.front() {
            if *until >= now {
                break;
            }
            if let Some((until, id)) = self.order.pop_front()
                && self.seen.get(&id) == Some(&until)
            {
                self.seen.remove(&id);
                let key = key_of(&id);
                if let Some(n) = self.by_key.get_mut(key) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.by_key.remove(key);
                    }
                }
            }
        }
    }

    /// How many proofs are remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.seen.len()
    }
}
