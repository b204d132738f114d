//! The verifier's replay cache of DPoP proofs (RFC 9449 section 11.1): a
//! proof's key thumbprint and `jti` ([`tessera_core::pop::VerifiedProof::replay_id`])
//! are remembered until its `iat` leaves the acceptance window. Checking
//! the proof itself is core's ([`tessera_core::pop::check_binding`]).

use std::collections::{HashMap, VecDeque};

use super::error::VerifyError;

/// Remembers proof `jti`s (per key) until their `iat` leaves the window;
/// holds at most `capacity` and refuses, failing closed, when full.
#[derive(Debug)]
pub(crate) struct ReplayCache {
    seen: HashMap<String, i64>,
    order: VecDeque<(i64, String)>,
    capacity: usize,
}

impl ReplayCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            seen: HashMap::new(),
            order: VecDeque::new(),
            capacity,
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
            if let Some((until, key)) = self.order.pop_front()
                && self.seen.get(&key) == Some(&until)
            {
                self.seen.remove(&key);
            }
        }
    }

    /// How many proofs are remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.seen.len()
    }
}
