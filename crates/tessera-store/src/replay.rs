//! Single-use ids shared by every broker replica: proof-of-possession `jti`s
//! (namespace `dpop`) and other one-time values. [`ReplayCache::first_use`]
//! answers `true` exactly once per `(namespace, id)` until `until`.
//!
//! [`MemoryReplayCache`] serves one process (the embedded default);
//! [`RedisStore`](crate::RedisStore) implements it with one
//! `SET key 1 NX PXAT until`, so the answer is shared by every replica.
//! Any failure is an error, never "first use": callers fail closed.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tessera_core::clock::Clock;

use crate::error::StoreError;

/// Longest namespace or id accepted, in bytes.
pub const MAX_REPLAY_ID_LEN: usize = 256;

/// Remembers ids until they no longer matter.
#[async_trait]
pub trait ReplayCache: Send + Sync + 'static {
    /// Records `id` in `namespace` until `until`: `Ok(true)` the first time,
    /// `Ok(false)` if it was recorded before and `until` has not passed.
    async fn first_use(&self, namespace: &str, id: &str, until: DateTime<Utc>) -> Result<bool, StoreError>;
}

/// The in-process replay cache: bounded, expired ids swept on write.
pub struct MemoryReplayCache {
    state: Mutex<Seen>,
    clock: Arc<dyn Clock>,
    max: usize,
}

impl std::fmt::Debug for MemoryReplayCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryReplayCache")
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct Seen {
    until: HashMap<(String, String), DateTime<Utc>>,
    by_expiry: BTreeSet<(DateTime<Utc>, String, String)>,
}

impl Seen {
    fn sweep(&mut self, now: DateTime<Utc>) {
        while let Some(first) = self.by_expiry.first().cloned() {
            if first.0 > now {
                break;
            }
            self.by_expiry.remove(&first);
            let key = (first.1, first.2);
            if self.until.get(&key) == Some(&first.0) {
                self.until.remove(&key);
            }
        }
    }
}

impl MemoryReplayCache {
    /// A cache judging expiry by `clock`, holding at most `max` live ids;
    /// when full, `first_use` fails (closed) until some expire.
    pub fn new(clock: Arc<dyn Clock>, max: usize) -> Self {
        Self {
            state: Mutex::new(Seen::default()),
            clock,
            max,
        }
    }
}

#[async_trait]
impl ReplayCache for MemoryReplayCache {
    async fn first_use(&self, namespace: &str, id: &str, until: DateTime<Utc>) -> Result<bool, StoreError> {
        check_id(namespace, id)?;
        let now = self.clock.now();
        let mut seen = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        seen.sweep(now);
        let key = (namespace.to_owned(), id.to_owned());
        if seen.until.contains_key(&key) {
            return Ok(false);
        }
        if until <= now {
            // Already irrelevant: nothing to remember, and the caller's own
            // window check refuses it anyway.
            return Ok(true);
        }
        if seen.until.len() >= self.max {
            return Err(StoreError::Full("replay cache"));
        }
        seen.until.insert(key.clone(), until);
        seen.by_expiry.insert((until, key.0, key.1));
        Ok(true)
    }
}

pub(crate) fn check_id(namespace: &str, id: &str) -> Result<(), StoreError> {
    if namespace.is_empty()
        || id.is_empty()
        || namespace.len() > MAX_REPLAY_ID_LEN
        || id.len() > MAX_REPLAY_ID_LEN
        || namespace.contains(':')
    {
        return Err(StoreError::Corrupt("replay id out of bounds".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]

    use super::*;
    use tessera_core::clock::FixedClock;

    #[tokio::test]
    async fn an_id_is_used_once_until_it_expires() {
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let clock = Arc::new(FixedClock::at(t0));
        let cache = MemoryReplayCache::new(clock.clone(), 2);
        let until = t0 + chrono::Duration::seconds(60);
        assert!(cache.first_use("dpop", "a", until).await.unwrap());
        assert!(!cache.first_use("dpop", "a", until).await.unwrap());
        assert!(cache.first_use("other", "a", until).await.unwrap());
        // Full: fails closed.
        assert!(matches!(
            cache.first_use("dpop", "b", until).await,
            Err(StoreError::Full(_))
        ));
        clock.set(until);
        assert!(
            cache
                .first_use("dpop", "a", until + chrono::Duration::seconds(60))
                .await
                .unwrap()
        );
        assert!(cache.first_use("dpop", "", until).await.is_err());
    }
}
