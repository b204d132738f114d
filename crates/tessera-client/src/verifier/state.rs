//! What the verifier knows from the revocation feed: the revoked grants and
//! tasks (each kept only until the last token it concerns has expired),
//! whether the feed is synchronised, when it was last heard from, and the
//! *sync floor*: tokens issued at or before it are refused, because a
//! revocation of them may have been missed.
//!
//! The floor is in the broker's clock (a heartbeat's `sent_at`), as `iat`
//! is. It is set when a fresh subscription starts (at start, and after the
//! broker answered OUT_OF_RANGE because our position was lost), and raised
//! when an event must be dropped because the set is full: the dropped
//! revocation concerns tokens issued before it, so refusing every token
//! issued up to it keeps the verifier safe with bounded memory.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::error::VerifyError;

/// What a revocation kills.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// The token whose `jti` is this.
    Grant(String),
    /// Every token whose `task_id` is this.
    Task(String),
    /// Every token signed by the key with this `kid` (withdrawn).
    Key(String),
}

/// Feed status and revocation set, behind one lock in the verifier.
#[derive(Debug)]
pub(crate) struct FeedState {
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
    pub(crate) fn new(capacity: usize, keep_extra_secs: i64) -> Self {
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
    pub(crate) fn check_fresh(&self, now: DateTime<Utc>, max_staleness: chrono::Duration) -> Result<(), VerifyError> {
        if !self.synced {
            return Err(VerifyError::NotSynced);
        }
        match self.last_heard {
            Some(heard) if now - heard <= max_staleness => Ok(()),
            _ => Err(VerifyError::FeedStale),
        }
    }

    /// Refuses a token issued at or before the floor, or revoked.
    pub(crate) fn check_token<'a>(
        &self,
        iat: i64,
        jti: &str,
        task_id: &str,
        ancestors: impl Iterator<Item = &'a str>,
    ) -> Result<(), VerifyError> {
        if self.floor.is_some_and(|floor| iat <= floor) {
            return Err(VerifyError::IssuedBeforeSync);
        }
        if self.grants.contains_key(jti) || self.tasks.contains_key(task_id) {
            return Err(VerifyError::Revoked);
        }
        for ancestor in ancestors {
            if self.grants.contains_key(ancestor) {
                return Err(VerifyError::Revoked);
            }
        }
        Ok(())
    }

    /// A fresh subscription answered: synchronised from `broker_now` on.
    pub(crate) fn synced(&mut self, broker_now: DateTime<Utc>, now: DateTime<Utc>) {
        self.floor = Some(self.floor.unwrap_or(i64::MIN).max(broker_now.timestamp()));
        self.synced = true;
        self.last_heard = Some(now);
    }

    /// Any message on a synchronised feed.
    pub(crate) fn heard(&mut self, now: DateTime<Utc>) {
        if self.synced {
            self.last_heard = Some(now);
        }
    }

    /// The broker no longer has our position: refuse everything until a
    /// fresh subscription answers.
    pub(crate) fn lost(&mut self) {
        self.synced = false;
    }

    /// Whether a fresh subscription has answered since the last loss.
    pub(crate) fn is_synced(&self) -> bool {
        self.synced
    }

    /// Records a revocation; `revoked_at` is the broker's clock.
    pub(crate) fn revoke(
        &mut self,
        target: Target,
        not_after: DateTime<Utc>,
        revoked_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) {
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
    pub(crate) fn prune(&mut self, now: DateTime<Utc>) {
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
    pub(crate) fn len(&self) -> usize {
        self.grants.len() + self.tasks.len() + self.keys.len()
    }

    /// Whether the key `kid` was withdrawn (and its tokens may still live).
    pub(crate) fn key_withdrawn(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    /// The sync floor, for tests and status.
    pub(crate) fn floor(&self) -> Option<i64> {
        self.floor
    }
}
