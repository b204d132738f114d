//! The verifier's replay cache of DPoP proofs (RFC 9449 section 11.1): a
//! proof's key thumbprint and `jti` ([`tessera_core::pop::VerifiedProof::replay_id`])
//! are remembered until its `iat` leaves the acceptance window. Checking
//! the proof itself is core's ([`tessera_core::pop::check_binding`]).

use std::collections::{HashMap, VecDeque};

use super::error::VerifyError;

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
    pub(crate) fn record(&mut self, replay_id: String, until: i64, now: i64) -> Result<(), VerifyError> {
        self.prune(now);
        if self.seen.get(&replay_id).is_some_and(|seen_until| *seen_until >= now) {
            return Err(VerifyError::ProofReplayed);
        }
        if self.seen.len() >= self.capacity {
            return Err(VerifyError::Capacity("dpop replay cache"));
        }
        let key = key_of(&replay_id);
        if self.by_key.get(key).is_some_and(|n| *n >= self.per_key) {
            return Err(VerifyError::Capacity("dpop replay cache of this key"));
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
