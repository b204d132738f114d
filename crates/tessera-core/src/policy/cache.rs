//! A bounded cache of policy decisions for questions asked again and again
//! (a RequestToken of the same agent for the same API and scopes, an
//! Introspect by the same verifier).
//!
//! A decision is a pure function of the question, the policy set and the
//! entities (the identity registry and the API catalog): Cedar reads no
//! clock and no randomness. So a decision is kept under a digest of the
//! whole question ([`PolicyEngine::decision_key`]: every context value the
//! policy set can read, including `hour` and `task.remaining_secs` when a
//! policy mentions them) and stamped with what it also depended on: the
//! policy set's hash and the registry's version. A different stamp empties
//! the cache before it answers; so does [`DecisionCache::clear`], which the
//! broker calls on a policy reload and on every registry change.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::PolicyDecision;
use crate::identity::{IdentityRegistry, RegistryVersion};

/// Most decisions kept; when full, the cache is emptied and starts over
/// (a bound, not a policy: repeated questions come back at once).
pub const DECISION_CACHE_ENTRIES: usize = 4096;

/// A digest of one whole question (see [`PolicyEngine::decision_key`]).
///
/// [`PolicyEngine::decision_key`]: super::PolicyEngine::decision_key
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DecisionKey(pub(super) [u8; 32]);

/// What a cached decision depended on besides its question.
#[derive(Debug, Clone)]
pub struct DecisionStamp {
    policy_hash: Arc<str>,
    registry: RegistryVersion,
    runtime_changes: u64,
}

impl DecisionStamp {
    /// The stamp of decisions made now by the set `policy_hash` over `registry`.
    pub fn new(policy_hash: &Arc<str>, registry: &IdentityRegistry) -> Self {
        Self {
            policy_hash: policy_hash.clone(),
            registry: registry.version(),
            runtime_changes: registry.runtime_changes(),
        }
    }
}

impl PartialEq for DecisionStamp {
    fn eq(&self, other: &Self) -> bool {
        self.policy_hash == other.policy_hash
            && self.registry == other.registry
            && self.runtime_changes == other.runtime_changes
    }
}

#[derive(Debug, Default)]
struct Entries {
    stamp: Option<DecisionStamp>,
    decisions: HashMap<DecisionKey, PolicyDecision>,
}

/// The cache. Cheap to share (`Arc`); every method takes one short lock.
#[derive(Debug)]
pub struct DecisionCache {
    entries: Mutex<Entries>,
    capacity: usize,
}

impl Default for DecisionCache {
    fn default() -> Self {
        Self::with_capacity(DECISION_CACHE_ENTRIES)
    }
}

impl DecisionCache {
    /// An empty cache holding at most `capacity` decisions.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(Entries::default()),
            capacity: capacity.max(1),
        }
    }

    /// The decision kept for `key` under `stamp`, if any. A stamp other
    /// than the one the kept decisions were made under empties the cache.
    pub fn get(&self, stamp: &DecisionStamp, key: &DecisionKey) -> Option<PolicyDecision> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.stamp.as_ref() != Some(stamp) {
            entries.decisions.clear();
            entries.stamp = None;
            return None;
        }
        entries.decisions.get(key).cloned()
    }

    /// Keeps `decision` for `key`, made under `stamp`.
    pub fn put(&self, stamp: DecisionStamp, key: DecisionKey, decision: PolicyDecision) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.stamp.as_ref() != Some(&stamp) || entries.decisions.len() >= self.capacity {
            entries.decisions.clear();
        }
        entries.stamp = Some(stamp);
        entries.decisions.insert(key, decision);
    }

    /// Forgets every decision (a policy reload, a registry change).
    pub fn clear(&self) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.decisions.clear();
        entries.stamp = None;
    }

    /// Decisions kept.
    pub fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .decisions
            .len()
    }

    /// Whether no decision is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]

    use std::collections::BTreeSet;

    use super::*;
    use crate::identity::{Identity, IdentityKind, Role, SpiffeId};
    use crate::ttl::Ttl;

    fn registry() -> IdentityRegistry {
        IdentityRegistry::new([Identity {
            id: SpiffeId::parse("spiffe://td/agent").unwrap(),
            kind: IdentityKind::Agent,
            owner: "team-a".into(),
            max_ttl: Ttl::from_secs(3600).unwrap(),
            roles: BTreeSet::from([Role::Agent]),
            disabled: false,
        }])
    }

    fn allow() -> PolicyDecision {
        PolicyDecision::Allow {
            policy_ids: vec!["p1".into()],
            approval_required: false,
            max_ttl: None,
            max_blast_radius: None,
            policy_hash: "sha256:a".into(),
        }
    }

    fn key(n: u8) -> DecisionKey {
        DecisionKey([n; 32])
    }

    #[test]
    fn a_decision_is_served_again_under_its_own_stamp_only() {
        let registry = registry();
        let hash: Arc<str> = "sha256:a".into();
        let cache = DecisionCache::default();
        let stamp = DecisionStamp::new(&hash, &registry);
        assert_eq!(cache.get(&stamp, &key(1)), None);
        cache.put(stamp.clone(), key(1), allow());
        assert_eq!(cache.get(&stamp, &key(1)), Some(allow()));
        assert_eq!(cache.get(&stamp, &key(2)), None, "another question");
        // Another policy set: every decision is gone, also for the old stamp.
        let reloaded = DecisionStamp::new(&"sha256:b".into(), &registry);
        assert_eq!(cache.get(&reloaded, &key(1)), None);
        assert!(cache.is_empty());
        assert_eq!(cache.get(&stamp, &key(1)), None);
    }

    #[test]
    fn every_registry_change_empties_the_cache() {
        let registry = registry();
        let hash: Arc<str> = "sha256:a".into();
        let cache = DecisionCache::default();
        let agent = SpiffeId::parse("spiffe://td/agent").unwrap();
        let changes: [&dyn Fn(); 4] = [
            // A reload (kind, owner, roles, a configured disable).
            &|| registry.replace(&self::registry()),
            &|| {
                registry.disable_at_runtime(&agent);
            },
            &|| {
                registry.enable_at_runtime(&agent);
            },
            // Another replica's disable, read from the store.
            &|| {
                let generation = registry.runtime_generation();
                registry.set_runtime_disabled(BTreeSet::from([agent.clone()]), generation);
            },
        ];
        for change in changes {
            let stamp = DecisionStamp::new(&hash, &registry);
            cache.put(stamp.clone(), key(1), allow());
            assert_eq!(cache.get(&stamp, &key(1)), Some(allow()));
            change();
            let after = DecisionStamp::new(&hash, &registry);
            assert_eq!(cache.get(&after, &key(1)), None);
            assert!(cache.is_empty());
        }
    }

    #[test]
    fn the_cache_is_bounded_and_clears() {
        let registry = registry();
        let stamp = DecisionStamp::new(&"sha256:a".into(), &registry);
        let cache = DecisionCache::with_capacity(3);
        for n in 0..10 {
            cache.put(stamp.clone(), key(n), allow());
            assert!(cache.len() <= 3);
        }
        assert_eq!(cache.get(&stamp, &key(9)), Some(allow()), "the newest is kept");
        cache.clear();
        assert!(cache.is_empty());
        assert_eq!(cache.get(&stamp, &key(9)), None);
    }
}
