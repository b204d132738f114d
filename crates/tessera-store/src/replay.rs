//! [`ReplayCache`]: "have we seen this id before?", shared by every broker
//! replica. Attestation uses it for the `jti` of single-use attestation JWTs;
//! proof-of-possession uses it for DPoP proof `jti`s.
//!
//! An id is remembered until its `until` (the time after which the thing it
//! names is worthless anyway, e.g. the token's `exp` plus leeway), so memory
//! stays proportional to the ids still worth remembering. A cache that cannot
//! answer returns an error: callers must refuse, never accept unchecked.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tessera_core::clock::{Clock, SystemClock};

use crate::error::StoreError;

/// Single-use ids, across replicas.
#[async_trait]
pub trait ReplayCache: Send + Sync + 'static {
    /// Records `id` in `namespace` until `until`. `Ok(true)` the first time
    /// the pair is seen (within its `until`), `Ok(false)` on every later
    /// call before `until`. Atomic: of concurrent first uses exactly one gets
    /// `true`. An `until` already past is never remembered (`Ok(true)`): the
    /// caller refuses what it names on its own. `namespace` is a short
    /// constant chosen by the caller (`attestation-jwt`, `dpop`); the caller
    /// bounds `id`'s length.
    async fn first_use(&self, namespace: &str, id: &str, until: DateTime<Utc>) -> Result<bool, StoreError>;
}

/// Refuses a namespace that is not 1-32 characters of `[a-z0-9-]`: it is a
/// caller constant, and a `:` in it could make two pairs share a Redis key.
pub(crate) fn check_namespace(namespace: &str) -> Result<(), StoreError> {
    if namespace.is_empty()
        || namespace.len() > 32
        || !namespace
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(StoreError::Misconfigured(format!(
            "replay namespace `{namespace}` is not 1-32 characters of [a-z0-9-]"
        )));
    }
    Ok(())
}

/// Most ids a [`MemoryReplayCache`] holds by default.
pub const MEMORY_REPLAY_CAPACITY: usize = 1_000_000;

/// The in-process [`ReplayCache`]: a bounded map with expiry. Full (every
/// remembered id still unexpired) fails closed with [`StoreError::Full`]
/// instead of forgetting an id that could then be replayed.
pub struct MemoryReplayCache {
    state: Mutex<ReplayState>,
    capacity: usize,
    clock: Arc<dyn Clock>,
}

#[derive(Debug, Default)]
struct ReplayState {
    until: HashMap<(String, String), DateTime<Utc>>,
    /// The same entries by expiry, for the sweep.
    by_expiry: BTreeSet<(DateTime<Utc>, String, String)>,
}

impl std::fmt::Debug for MemoryReplayCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryReplayCache")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl Default for MemoryReplayCache {
    fn default() -> Self {
        Self::new(MEMORY_REPLAY_CAPACITY, Arc::new(SystemClock))
    }
}

impl MemoryReplayCache {
    /// An empty cache of at most `capacity` ids, expiring them by `clock`.
    pub fn new(capacity: usize, clock: Arc<dyn Clock>) -> Self {
        Self {
            state: Mutex::new(ReplayState::default()),
            capacity,
            clock,
        }
    }

    /// Number of ids remembered (expired ones may linger until the next sweep).
    pub fn len(&self) -> usize {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).until.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn check(&self, namespace: &str, id: &str, until: DateTime<Utc>) -> Result<bool, StoreError> {
        check_namespace(namespace)?;
        let now = self.clock.now();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        // Sweep what expired, oldest first.
        while let Some(first) = state.by_expiry.first() {
            if first.0 > now {
                break;
            }
            if let Some((_, ns, i)) = state.by_expiry.pop_first() {
                state.until.remove(&(ns, i));
            }
        }
        let key = (namespace.to_owned(), id.to_owned());
        if state.until.contains_key(&key) {
            return Ok(false);
        }
        if until <= now {
            return Ok(true);
        }
        if state.until.len() >= self.capacity {
            return Err(StoreError::Full("replay cache"));
        }
        state.by_expiry.insert((until, key.0.clone(), key.1.clone()));
        state.until.insert(key, until);
        Ok(true)
    }
}

#[async_trait]
impl ReplayCache for MemoryReplayCache {
    async fn first_use(&self, namespace: &str, id: &str, until: DateTime<Utc>) -> Result<bool, StoreError> {
        self.check(namespace, id, until)
    }
}

#[async_trait]
impl ReplayCache for crate::MemoryStore {
    async fn first_use(&self, namespace: &str, id: &str, until: DateTime<Utc>) -> Result<bool, StoreError> {
        self.replay_cache().first_use(namespace, id, until).await
    }
}

#[async_trait]
impl<T: ReplayCache + ?Sized> ReplayCache for Arc<T> {
    async fn first_use(&self, namespace: &str, id: &str, until: DateTime<Utc>) -> Result<bool, StoreError> {
        (**self).first_use(namespace, id, until).await
    }
}

/// The conformance checks every [`ReplayCache`] must pass; each takes a
/// fresh, empty cache.
#[cfg(any(test, feature = "conformance"))]
pub mod conformance {
    #![allow(clippy::unwrap_used, clippy::panic, reason = "test suite")]

    use std::future::Future;
    use std::sync::Arc;

    use chrono::{DateTime, Utc};

    use super::ReplayCache;

    /// Far in the future, like the grant conformance suite (Redis expires
    /// keys at their absolute time).
    fn later(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(4_000_000_000 + secs, 0).unwrap()
    }

    /// Runs every check, each on a fresh cache from `make`.
    pub async fn run_all<C, F, Fut>(make: F)
    where
        C: ReplayCache,
        F: Fn() -> Fut,
        Fut: Future<Output = C>,
    {
        an_id_is_used_once(make().await).await;
        namespaces_are_separate(make().await).await;
        a_past_until_is_not_remembered(make().await).await;
        concurrent_first_uses_have_one_winner(make().await).await;
    }

    /// The second use of an id is refused; other ids are not affected.
    pub async fn an_id_is_used_once(cache: impl ReplayCache) {
        assert!(cache.first_use("test", "a", later(60)).await.unwrap());
        assert!(!cache.first_use("test", "a", later(60)).await.unwrap());
        assert!(!cache.first_use("test", "a", later(3600)).await.unwrap());
        assert!(cache.first_use("test", "b", later(60)).await.unwrap());
        // Ids are opaque: no normalisation, separators are data.
        assert!(cache.first_use("test", "A", later(60)).await.unwrap());
        assert!(cache.first_use("test", "a:b", later(60)).await.unwrap());
        // Namespaces are caller constants: one that could collide is refused.
        assert!(cache.first_use("test:a", "b", later(60)).await.is_err());
        assert!(cache.first_use("", "b", later(60)).await.is_err());
    }

    /// The same id in two namespaces is two ids.
    pub async fn namespaces_are_separate(cache: impl ReplayCache) {
        assert!(cache.first_use("jwt", "x", later(60)).await.unwrap());
        assert!(cache.first_use("dpop", "x", later(60)).await.unwrap());
        assert!(!cache.first_use("jwt", "x", later(60)).await.unwrap());
        assert!(!cache.first_use("dpop", "x", later(60)).await.unwrap());
    }

    /// An `until` already past is not remembered.
    pub async fn a_past_until_is_not_remembered(cache: impl ReplayCache) {
        let past = DateTime::from_timestamp(1_000_000_000, 0).unwrap();
        assert!(cache.first_use("test", "old", past).await.unwrap());
        assert!(cache.first_use("test", "old", later(60)).await.unwrap());
        assert!(!cache.first_use("test", "old", later(60)).await.unwrap());
    }

    /// Of many concurrent first uses of one id, exactly one wins.
    pub async fn concurrent_first_uses_have_one_winner(cache: impl ReplayCache) {
        let cache = Arc::new(cache);
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let cache = cache.clone();
            tasks.push(tokio::spawn(async move {
                cache.first_use("test", "race", later(60)).await.unwrap()
            }));
        }
        let mut winners = 0;
        for t in tasks {
            if t.await.unwrap() {
                winners += 1;
            }
        }
        assert_eq!(winners, 1);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use tessera_core::clock::FixedClock;

    use super::*;

    #[tokio::test]
    async fn memory_cache_conforms() {
        conformance::run_all(|| async { MemoryReplayCache::default() }).await;
        conformance::run_all(|| async { crate::MemoryStore::default() }).await;
    }

    #[test]
    fn expired_ids_are_forgotten_and_capacity_fails_closed() {
        let t0 = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let clock = Arc::new(FixedClock::at(t0));
        let cache = MemoryReplayCache::new(2, clock.clone());
        let s = chrono::Duration::seconds;
        assert!(cache.check("n", "a", t0 + s(10)).unwrap());
        assert!(cache.check("n", "b", t0 + s(20)).unwrap());
        assert!(matches!(cache.check("n", "c", t0 + s(20)), Err(StoreError::Full(_))));
        assert!(!cache.check("n", "a", t0 + s(10)).unwrap());
        // `a` expires at t0+10: gone, and its slot is free again.
        clock.advance(s(10));
        assert!(cache.check("n", "c", t0 + s(30)).unwrap());
        assert_eq!(cache.len(), 2);
        assert!(!cache.check("n", "b", t0 + s(20)).unwrap());
        clock.advance(s(100));
        assert!(cache.check("n", "b", t0 + s(200)).unwrap());
        assert_eq!(cache.len(), 1);
    }
}
