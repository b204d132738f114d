//! What a follower of the revocation feed knows: the revoked grants, tasks
//! and withdrawn keys (each kept only until the last token it concerns has
//! expired),
//! whether the feed is synchronised, when it was last heard from, and the
//! *sync floor*: tokens issued at or before it are refused, because a
//! revocation of them may have been missed.
//!
//! The floor is in the broker's clock (a heartbeat's `sent_at`), as `iat`
//! is. It is set when a fresh subscription starts (at start, and after the
//! broker answered OUT_OF_RANGE because our position was lost), and raised
//! when an event must be dropped because the set is full: the dropped
//! revocation concerns tokens issued before it, so refusing every token
//! issued up to it keeps the follower safe with bounded memory.
//!
//! One implementation for both followers: the SDK's `Verifier` (fed by
//! `WatchRevocations`) and `tesserad`'s own (fed by the store, so that
//! Introspect answers without a store read).

use std::collections::HashMap;

use chrono::{DateTime, Utc};

/// Why the feed refuses a token (or every token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FeedRefusal {
    /// No subscription has answered yet (or the position was lost).
    #[error("revocation feed not synchronised")]
    NotSynced,
    /// Nothing heard for longer than the allowed staleness.
    #[error("revocation feed stale")]
    FeedStale,
    /// Issued at or before the sync floor: a revocation may have been missed.
    #[error("token issued before the revocation feed was synchronised")]
    IssuedBeforeSync,
    /// The token, its task, or an ancestor was revoked.
    #[error("token revoked")]
    Revoked,
}

/// What a revocation kills.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The token whose `jti` is this.
    Grant(String),
    /// Every token whose `task_id` is this.
    Task(String),
    /// Every token signed by the key with this `kid` (withdrawn).
    Key(String),
}

/// Feed status and revocation set, behind one lock in its follower.
#[derive(Debug)]
pub struct FeedState {
    synced: bool,
    last_heard: Option<DateTime<Utc>>,
    /// Tokens need `iat > floor` (seconds, broker clock).
    floor: Option<i64>,
    grants: HashMap<String, i64>,
    tasks: HashMap<String, i64>,
    /// Withdrawn keys: dropped from the key cache and never taken back from a JWKS.
    keys: HashMap<String, i64>,
    capacity: usize,
    /// Kept past `not_after` by this much: verifiers accept `exp` + leeway.
    keep_extra_secs: i64,
    /// The earliest `forget_after` in the set, so pruning is usually free.
    next_expiry: i64,
}

impl FeedState {
    /// An unsynchronised state holding at most `capacity` revocations, each
    /// kept `keep_extra_secs` past its `not_after`.
    pub fn new(capacity: usize, keep_extra_secs: i64) -> Self {
        Self {
            synced: false,
            last_heard: None,
            floor: None,
            grants: HashMap::new(),
            tasks: HashMap::new(),
            keys: HashMap::new(),
            capacity,
            keep_extra_secs,
            next_expiry: i64::MAX,
        }
    }

    /// Fails closed unless synchronised and heard from within `max_staleness`.
    pub fn check_fresh(&self, now: DateTime<Utc>, max_staleness: chrono::Duration) -> Result<(), FeedRefusal> {
        if !self.synced {
            return Err(FeedRefusal::NotSynced);
        }
        match self.last_heard {
            Some(heard) if now - heard <= max_staleness => Ok(()),
            _ => Err(FeedRefusal::FeedStale),
        }
    }

    /// Refuses a token issued at or before the floor, or revoked.
    pub fn check_token<'a>(
        &self,
        iat: i64,
        jti: &str,
        task_id: &str,
        ancestors: impl Iterator<Item = &'a str>,
    ) -> Result<(), FeedRefusal> {
        if self.floor.is_some_and(|floor| iat <= floor) {
            return Err(FeedRefusal::IssuedBeforeSync);
        }
        if self.grants.contains_key(jti) || self.tasks.contains_key(task_id) {
            return Err(FeedRefusal::Revoked);
        }
        for ancestor in ancestors {
            if self.grants.contains_key(ancestor) {
                return Err(FeedRefusal::Revoked);
            }
        }
        Ok(())
    }

    /// A fresh subscription answered: synchronised from `broker_now` on.
    pub fn synced(&mut self, broker_now: DateTime<Utc>, now: DateTime<Utc>) {
        self.floor = Some(self.floor.unwrap_or(i64::MIN).max(broker_now.timestamp()));
        self.synced = true;
        self.last_heard = Some(now);
    }

    /// Any message on a synchronised feed.
    pub fn heard(&mut self, now: DateTime<Utc>) {
        if self.synced {
            self.last_heard = Some(now);
        }
    }

    /// The broker no longer has our position: refuse everything until a
    /// fresh subscription answers.
    pub fn lost(&mut self) {
        self.synced = false;
    }

    /// Whether a fresh subscription has answered since the last loss.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// Records a revocation; `revoked_at` is the broker's clock.
    pub fn revoke(&mut self, target: Target, not_after: DateTime<Utc>, revoked_at: DateTime<Utc>, now: DateTime<Utc>) {
        let forget_after = not_after.timestamp().saturating_add(self.keep_extra_secs);
        if forget_after < now.timestamp() {
            return; // every token it concerns has expired everywhere
        }
        self.prune(now);
        let full = self.len() >= self.capacity;
        let (map, key) = match target {
            Target::Grant(jti) => (&mut self.grants, jti),
            Target::Task(task) => (&mut self.tasks, task),
            Target::Key(kid) => (&mut self.keys, kid),
        };
        if let Some(existing) = map.get_mut(&key) {
            *existing = (*existing).max(forget_after);
            return;
        }
        if full {
            // Full of live revocations: drop this one and refuse every token
            // issued up to it instead (see the module docs).
            let floor = self.floor.unwrap_or(i64::MIN).max(revoked_at.timestamp());
            self.floor = Some(floor);
            return;
        }
        map.insert(key, forget_after);
        self.next_expiry = self.next_expiry.min(forget_after);
    }

    /// Forgets revocations whose tokens have all expired.
    pub fn prune(&mut self, now: DateTime<Utc>) {
        let now = now.timestamp();
        if now <= self.next_expiry {
            return;
        }
        self.grants.retain(|_, until| *until >= now);
        self.tasks.retain(|_, until| *until >= now);
        self.keys.retain(|_, until| *until >= now);
        self.next_expiry = self
            .grants
            .values()
            .chain(self.tasks.values())
            .chain(self.keys.values())
            .copied()
            .min()
            .unwrap_or(i64::MAX);
    }

    /// How many revocations are held.
    pub fn len(&self) -> usize {
        self.grants.len() + self.tasks.len() + self.keys.len()
    }

    /// Whether no revocation is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the key `kid` was withdrawn (and its tokens may still live).
    pub fn key_withdrawn(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    /// The sync floor, for tests and status.
    pub fn floor(&self) -> Option<i64> {
        self.floor
    }
}
