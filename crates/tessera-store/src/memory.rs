//! The in-memory store: the embedded default for a single broker process.
//!
//! One mutex guards all state, so every operation is atomic; no lock is held
//! across an `.await`. Expired grants and long-ended tasks are swept lazily,
//! a bounded amount per write, so memory stays proportional to live state.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tessera_core::grant::{Grant, GrantId, GrantState};
use tessera_core::revocation::{Revocation, RevocationTarget};
use tessera_core::task::{Task, TaskId, TaskState};
use tokio::sync::Notify;

use crate::KeyWithdrawal;
use crate::error::StoreError;
use crate::feed::{FeedBatch, FeedEvent, FeedPosition};
use crate::store::{GrantFilter, GrantPage, GrantStore, MAX_GRANT_PAGE, PublishedKey, RevokeOutcome, TaskEnded};
use tessera_core::identity::SpiffeId;

/// Capacity bounds of a [`MemoryStore`]. Hitting one fails the write with
/// [`StoreError::Full`] instead of growing without bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimits {
    /// Most grants held (live or awaiting sweep).
    pub max_grants: usize,
    /// Most tasks held.
    pub max_tasks: usize,
    /// Most revocation events retained.
    pub max_feed_events: usize,
    /// How long a task is kept after its deadline (for `GetTask`, and so
    /// its id cannot be reused while its revocation still matters).
    pub ended_task_retention: chrono::Duration,
    /// How long a revocation event is kept after its `not_after`: verifiers
    /// accept tokens until `exp` plus their leeway.
    pub feed_grace: chrono::Duration,
    /// Most live grants one identity (grant subject) holds at once.
    pub max_live_grants_per_identity: u64,
    /// Most live grants one task holds at once.
    pub max_live_grants_per_task: u64,
}

impl Default for MemoryLimits {
    fn default() -> Self {
        Self {
            max_grants: 1_000_000,
            max_tasks: 100_000,
            max_feed_events: 1_000_000,
            ended_task_retention: chrono::Duration::hours(1),
            feed_grace: chrono::Duration::minutes(5),
            max_live_grants_per_identity: crate::DEFAULT_MAX_LIVE_GRANTS_PER_IDENTITY,
            max_live_grants_per_task: crate::DEFAULT_MAX_LIVE_GRANTS_PER_TASK,
        }
    }
}

/// The embedded, in-process [`GrantStore`].
#[derive(Debug)]
pub struct MemoryStore {
    state: Mutex<State>,
    feed_changed: Notify,
    limits: MemoryLimits,
    /// Random per store instance: positions from another instance (e.g.
    /// before a restart) are refused instead of silently misread.
    epoch: String,
    /// Single-use ids (`ReplayCache`), separate from the grant state.
    replay: crate::replay::MemoryReplayCache,
}

#[derive(Debug, Default)]
struct State {
    tasks: HashMap<TaskId, Task>,
    /// Tasks by the time they may be forgotten (deadline + retention).
    forget_at: BTreeMap<(DateTime<Utc>, TaskId), ()>,
    children: HashMap<TaskId, HashSet<TaskId>>,
    grants: HashMap<GrantId, Grant>,
    grants_by_task: HashMap<TaskId, HashSet<GrantId>>,
    /// Grants by subject (live or awaiting sweep), for the per-identity bound.
    grants_by_subject: HashMap<SpiffeId, HashSet<GrantId>>,
    delegated: HashMap<GrantId, HashSet<GrantId>>,
    /// Grants by expiry, for the lazy sweep.
    expiries: BTreeMap<(DateTime<Utc>, GrantId), ()>,
    feed: VecDeque<(u64, Revocation)>,
    /// Subjects an operator disabled: why and when.
    disabled: HashMap<SpiffeId, (String, DateTime<Utc>)>,
    /// Anomaly quarantines (expired ones are dropped on the next write).
    quarantined: HashMap<SpiffeId, crate::Quarantine>,
    /// Sequence number of the next event (the first is 1).
    next_seq: u64,
    /// Highest sequence dropped while still relevant (its `not_after` ahead).
    lost_upto: u64,
    keys: BTreeMap<String, PublishedKey>,
    /// Kids withdrawn by break-glass: never published again.
    withdrawn: HashSet<String>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(MemoryLimits::default())
    }
}

impl MemoryStore {
    /// An empty store with `limits`.
    pub fn new(limits: MemoryLimits) -> Self {
        Self {
            state: Mutex::new(State {
                next_seq: 1,
                ..State::default()
            }),
            feed_changed: Notify::new(),
            limits,
            epoch: tessera_core::grant::random_id().unwrap_or_else(|_| "memory".into()),
            replay: crate::replay::MemoryReplayCache::default(),
        }
    }

    /// This store's replay cache.
    pub(crate) fn replay_cache(&self) -> &crate::replay::MemoryReplayCache {
        &self.replay
    }

    fn position(&self, seq: u64) -> FeedPosition {
        FeedPosition::new(format!("{}:{seq}", self.epoch))
    }

    /// The sequence number in a position of this store; a position of
    /// another instance is expired (its reader may have missed events).
    fn parse_position(&self, p: &FeedPosition) -> Result<u64, StoreError> {
        let (epoch, seq) = p
            .as_str()
            .rsplit_once(':')
            .ok_or_else(|| StoreError::BadPosition(p.to_string()))?;
        let seq = seq.parse().map_err(|_| StoreError::BadPosition(p.to_string()))?;
        if epoch != self.epoch {
            return Err(StoreError::PositionExpired(p.to_string()));
        }
        Ok(seq)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // INVARIANT: every mutation below completes without panicking before
        // the guard drops, so a poisoned lock still holds consistent state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// How many expired entries one write may sweep.
const SWEEP_BATCH: usize = 64;

impl State {
    /// Whether at least `cap` of `ids` are live at `now`. The sets keep
    /// revoked and ended grants until they are swept, so only a set that
    /// large is counted.
    fn live_reach(&self, ids: Option<&HashSet<GrantId>>, cap: u64, now: DateTime<Utc>) -> bool {
        let cap = usize::try_from(cap).unwrap_or(usize::MAX);
        let Some(ids) = ids else { return cap == 0 };
        ids.len() >= cap
            && ids
                .iter()
                .filter(|id| self.grants.get(*id).is_some_and(|g| g.is_live_at(now)))
                .take(cap)
                .count()
                >= cap
    }

    fn sweep(&mut self, now: DateTime<Utc>) {
        for _ in 0..SWEEP_BATCH {
            let Some((&(expires_at, ref id), ())) = self.expiries.first_key_value() else {
                break;
            };
            if expires_at > now {
                break;
            }
            let id = id.clone();
            self.expiries.remove(&(expires_at, id.clone()));
            if let Some(grant) = self.grants.remove(&id) {
                if let Some(set) = self.grants_by_task.get_mut(&grant.task_id) {
                    set.remove(&id);
                }
                if let Some(set) = self.grants_by_subject.get_mut(&grant.subject) {
                    set.remove(&id);
                    if set.is_empty() {
                        self.grants_by_subject.remove(&grant.subject);
                    }
                }
                if let Some(parent) = &grant.parent
                    && let Some(set) = self.delegated.get_mut(parent)
                {
                    set.remove(&id);
                }
                self.delegated.remove(&id);
            }
        }
        for _ in 0..SWEEP_BATCH {
            let Some((&(at, ref id), ())) = self.forget_at.first_key_value() else {
                break;
            };
            if at > now {
                break;
            }
            let id = id.clone();
            self.forget_at.remove(&(at, id.clone()));
            if self.grants_by_task.get(&id).is_some_and(|g| !g.is_empty()) {
                // Grants still recorded (swept later): keep the task a little longer.
                self.forget_at.insert((now + chrono::Duration::minutes(1), id), ());
                continue;
            }
            if let Some(task) = self.tasks.remove(&id)
                && let Some(parent) = &task.parent
                && let Some(set) = self.children.get_mut(parent)
            {
                set.remove(&id);
            }
            self.grants_by_task.remove(&id);
            self.children.remove(&id);
        }
    }

    fn append(&mut self, revocation: Revocation, now: DateTime<Utc>, limits: &MemoryLimits) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.feed.push_back((seq, revocation));
        while let Some((first_seq, first)) = self.feed.front() {
            let irrelevant = first.not_after + limits.feed_grace <= now;
            if !irrelevant && self.feed.len() <= limits.max_feed_events {
                break;
            }
            if !irrelevant {
                self.lost_upto = self.lost_upto.max(*first_seq);
            }
            self.feed.pop_front();
        }
    }

    /// Marks a grant and everything delegated from it revoked. Returns how
    /// many were live.
    fn revoke_tree(&mut self, root: &GrantId, reason: &str, now: DateTime<Utc>) -> (u64, Vec<Revocation>) {
        let mut stack = vec![root.clone()];
        let mut revoked = 0;
        let mut events = Vec::new();
        let mut seen = HashSet::new();
        while let Some(id) = stack.pop() {
            if !seen.insert(id.clone()) {
                continue;
            }
            if let Some(children) = self.delegated.get(&id) {
                stack.extend(children.iter().cloned());
            }
            let Some(grant) = self.grants.get_mut(&id) else {
                continue;
            };
            if grant.is_live_at(now) {
                grant.state = GrantState::Revoked;
                grant.revoked_at = Some(now);
                grant.revocation_reason = Some(reason.to_owned());
                revoked += 1;
                events.push(Revocation {
                    target: RevocationTarget::Grant(id.clone()),
                    revoked_at: now,
                    reason: reason.to_owned(),
                    not_after: grant.expires_at,
                });
            }
        }
        (revoked, events)
    }
}

#[async_trait]
impl GrantStore for MemoryStore {
    async fn create_task(&self, task: &Task) -> Result<(), StoreError> {
        let mut state = self.lock();
        state.sweep(task.created_at);
        if state.tasks.contains_key(&task.id) {
            return Err(StoreError::TaskExists(task.id.clone()));
        }
        if state.tasks.len() >= self.limits.max_tasks {
            return Err(StoreError::Full("tasks"));
        }
        if let Some(parent) = &task.parent {
            match state.tasks.get(parent) {
                None => return Err(StoreError::TaskNotFound(parent.clone())),
                Some(p) if !p.is_active_at(task.created_at) => {
                    return Err(StoreError::TaskOver(parent.clone(), p.state_at(task.created_at)));
                }
                Some(_) => {}
            }
            state
                .children
                .entry(parent.clone())
                .or_default()
                .insert(task.id.clone());
        }
        state
            .forget_at
            .insert((task.deadline + self.limits.ended_task_retention, task.id.clone()), ());
        state.tasks.insert(task.id.clone(), task.clone());
        Ok(())
    }

    async fn task(&self, id: &TaskId) -> Result<Option<Task>, StoreError> {
        Ok(self.lock().tasks.get(id).cloned())
    }

    async fn live_grants(&self, id: &TaskId, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let state = self.lock();
        let count = state
            .grants_by_task
            .get(id)
            .map(|ids| {
                ids.iter()
                    .filter(|g| state.grants.get(*g).is_some_and(|g| g.is_live_at(now)))
                    .count()
            })
            .unwrap_or(0);
        Ok(count as u64)
    }

    async fn new_grant_id(&self, task: &TaskId) -> Result<GrantId, StoreError> {
        if !self.lock().tasks.contains_key(task) {
            return Err(StoreError::TaskNotFound(task.clone()));
        }
        GrantId::generate().map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    async fn record_grant(&self, grant: &Grant, now: DateTime<Utc>) -> Result<(), StoreError> {
        let mut state = self.lock();
        state.sweep(now);
        let task = state
            .tasks
            .get(&grant.task_id)
            .ok_or_else(|| StoreError::TaskNotFound(grant.task_id.clone()))?;
        if !task.is_active_at(now) {
            return Err(StoreError::TaskOver(task.id.clone(), task.state_at(now)));
        }
        if grant.expires_at > task.deadline {
            return Err(StoreError::OutlivesTask(task.id.clone()));
        }
        if state.grants.contains_key(&grant.id) {
            return Err(StoreError::GrantExists);
        }
        if state.disabled.contains_key(&grant.subject) {
            return Err(StoreError::SubjectDisabled(grant.subject.clone()));
        }
        if state.grants.len() >= self.limits.max_grants {
            return Err(StoreError::Full("grants"));
        }
        if state.live_reach(
            state.grants_by_task.get(&grant.task_id),
            self.limits.max_live_grants_per_task,
            now,
        ) {
            return Err(StoreError::Full(crate::TASK_GRANTS_FULL));
        }
        if state.live_reach(
            state.grants_by_subject.get(&grant.subject),
            self.limits.max_live_grants_per_identity,
            now,
        ) {
            return Err(StoreError::Full(crate::IDENTITY_GRANTS_FULL));
        }
        // INVARIANT: a child is recorded only under a live parent of its task
        // that outlives it; revocation takes the same lock, so no child
        // escapes its parent's revocation.
        if let Some(parent) = &grant.parent
            && !state
                .grants
                .get(parent)
                .is_some_and(|p| p.is_live_at(now) && p.task_id == grant.task_id && grant.expires_at <= p.expires_at)
        {
            return Err(StoreError::ParentNotLive);
        }
        if let Some(parent) = &grant.parent {
            state
                .delegated
                .entry(parent.clone())
                .or_default()
                .insert(grant.id.clone());
        }
        state
            .grants_by_task
            .entry(grant.task_id.clone())
            .or_default()
            .insert(grant.id.clone());
        state
            .grants_by_subject
            .entry(grant.subject.clone())
            .or_default()
            .insert(grant.id.clone());
        state.expiries.insert((grant.expires_at, grant.id.clone()), ());
        state.grants.insert(grant.id.clone(), grant.clone());
        Ok(())
    }

    async fn grant(&self, id: &GrantId) -> Result<Option<Grant>, StoreError> {
        Ok(self.lock().grants.get(id).cloned())
    }

    async fn revoke_grant(
        &self,
        id: &GrantId,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<RevokeOutcome>, StoreError> {
        let outcome = {
            let mut state = self.lock();
            if !state.grants.contains_key(id) {
                return Ok(None);
            }
            let was_live = state.grants.get(id).is_some_and(|g| g.is_live_at(now));
            let (revoked, events) = state.revoke_tree(id, reason, now);
            for event in events {
                state.append(event, now, &self.limits);
            }
            let Some(grant) = state.grants.get(id).cloned() else {
                return Ok(None);
            };
            RevokeOutcome {
                grant,
                revoked: was_live,
                descendants_revoked: revoked.saturating_sub(u64::from(was_live)),
            }
        };
        self.feed_changed.notify_waiters();
        Ok(Some(outcome))
    }

    async fn end_task(
        &self,
        id: &TaskId,
        end_state: TaskState,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<TaskEnded, StoreError> {
        let ended = {
            let mut state = self.lock();
            if !state.tasks.contains_key(id) {
                return Err(StoreError::TaskNotFound(id.clone()));
            }
            // The task and its descendants, parents before children.
            let mut order = Vec::new();
            let mut queue = VecDeque::from([id.clone()]);
            let mut seen = HashSet::new();
            while let Some(t) = queue.pop_front() {
                if !seen.insert(t.clone()) {
                    continue;
                }
                if let Some(children) = state.children.get(&t) {
                    queue.extend(children.iter().cloned());
                }
                order.push(t);
            }
            let mut grants_revoked = 0;
            let mut children_ended = Vec::new();
            for task_id in &order {
                let Some(task) = state.tasks.get_mut(task_id) else {
                    continue;
                };
                if !task.is_active_at(now) {
                    continue; // already ended, or past its deadline: idempotent
                }
                task.state = end_state;
                task.ended_at = Some(now);
                let deadline = task.deadline;
                if task_id != id {
                    children_ended.push(task_id.clone());
                }
                let grant_ids: Vec<GrantId> = state
                    .grants_by_task
                    .get(task_id)
                    .map(|s| s.iter().cloned().collect())
                    .unwrap_or_default();
                for gid in grant_ids {
                    if let Some(grant) = state.grants.get_mut(&gid)
                        && grant.is_live_at(now)
                    {
                        grant.state = GrantState::Revoked;
                        grant.revoked_at = Some(now);
                        grant.revocation_reason = Some(reason.to_owned());
                        grants_revoked += 1;
                    }
                }
                {
                    let revocation = Revocation {
                        target: RevocationTarget::Task(task_id.clone()),
                        revoked_at: now,
                        reason: reason.to_owned(),
                        not_after: deadline,
                    };
                    state.append(revocation, now, &self.limits);
                }
            }
            let task = state
                .tasks
                .get(id)
                .cloned()
                .ok_or_else(|| StoreError::TaskNotFound(id.clone()))?;
            TaskEnded {
                task,
                grants_revoked,
                children_ended,
            }
        };
        self.feed_changed.notify_waiters();
        Ok(ended)
    }

    async fn read_revocations(
        &self,
        after: Option<&FeedPosition>,
        max: usize,
        wait: Duration,
    ) -> Result<FeedBatch, StoreError> {
        let after = after.map(|p| self.parse_position(p)).transpose()?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Register for wake-ups before looking, so no append is missed.
            let notified = self.feed_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let state = self.lock();
                let head = state.next_seq - 1;
                let Some(after) = after else {
                    return Ok(FeedBatch {
                        events: Vec::new(),
                        head: self.position(head),
                    });
                };
                // A position ahead of the head cannot come from this instance.
                if after > head || after < state.lost_upto {
                    return Err(StoreError::PositionExpired(self.position(after).to_string()));
                }
                // INVARIANT: sequence numbers in the feed are contiguous, so the
                // first event after `after` sits at a computable index.
                let skip = state
                    .feed
                    .front()
                    .map_or(0, |(first, _)| (after + 1).saturating_sub(*first));
                let events: Vec<FeedEvent> = state
                    .feed
                    .iter()
                    .skip(usize::try_from(skip).unwrap_or(usize::MAX))
                    .take(max.max(1))
                    .map(|(seq, revocation)| FeedEvent {
                        position: self.position(*seq),
                        revocation: revocation.clone(),
                    })
                    .collect();
                if !events.is_empty() || tokio::time::Instant::now() >= deadline {
                    let head = events
                        .last()
                        .map(|e| e.position.clone())
                        .unwrap_or_else(|| self.position(after));
                    return Ok(FeedBatch { events, head });
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                // Timed out: one last look happens at the top of the loop.
                continue;
            }
        }
    }

    async fn list_grants(
        &self,
        filter: &GrantFilter,
        after: Option<&str>,
        limit: usize,
        now: DateTime<Utc>,
    ) -> Result<GrantPage, StoreError> {
        let after = after.map(parse_cursor).transpose()?;
        let limit = limit.clamp(1, MAX_GRANT_PAGE);
        let state = self.lock();
        let mut matching: Vec<&Grant> = state
            .grants
            .values()
            .filter(|g| after.as_ref().is_none_or(|a| g.id.as_str() > a.as_str()))
            .filter(|g| g.is_live_at(now) && filter.matches(g))
            .collect();
        matching.sort_unstable_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
        let more = matching.len() > limit;
        matching.truncate(limit);
        let grants: Vec<Grant> = matching.into_iter().cloned().collect();
        let next = if more {
            grants.last().map(|g| g.id.to_string())
        } else {
            None
        };
        Ok(GrantPage { grants, next })
    }

    async fn revoke_subject(&self, subject: &SpiffeId, reason: &str, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let revoked = {
            let mut state = self.lock();
            let mut ids: Vec<GrantId> = state
                .grants
                .values()
                .filter(|g| &g.subject == subject && g.is_live_at(now))
                .map(|g| g.id.clone())
                .collect();
            ids.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
            let mut revoked = 0;
            for id in ids {
                let (n, events) = state.revoke_tree(&id, reason, now);
                revoked += n;
                for event in events {
                    state.append(event, now, &self.limits);
                }
            }
            revoked
        };
        if revoked > 0 {
            self.feed_changed.notify_waiters();
        }
        Ok(revoked)
    }

    async fn active_task_ids(&self, now: DateTime<Utc>) -> Result<Vec<TaskId>, StoreError> {
        Ok(self
            .lock()
            .tasks
            .values()
            .filter(|t| t.is_active_at(now))
            .map(|t| t.id.clone())
            .collect())
    }

    async fn withdraw_keys_except(&self, keep: &str, withdrawal: &KeyWithdrawal<'_>) -> Result<u64, StoreError> {
        let gone = {
            let mut state = self.lock();
            let gone: Vec<String> = state.keys.keys().filter(|kid| kid.as_str() != keep).cloned().collect();
            for kid in &gone {
                state.keys.remove(kid);
                state.withdrawn.insert(kid.clone());
                // Verifiers drop the key on this event, before their next JWKS refresh.
                let revocation = Revocation {
                    target: RevocationTarget::Key(kid.clone()),
                    revoked_at: withdrawal.now,
                    reason: withdrawal.reason.to_owned(),
                    not_after: withdrawal.not_after,
                };
                state.append(revocation, withdrawal.now, &self.limits);
            }
            gone.len() as u64
        };
        self.feed_changed.notify_waiters();
        Ok(gone)
    }

    async fn publish_key(&self, key: &PublishedKey) -> Result<(), StoreError> {
        let mut state = self.lock();
        if state.withdrawn.contains(&key.jwk.kid) {
            return Err(StoreError::KeyWithdrawn(key.jwk.kid.clone()));
        }
        state.keys.insert(key.jwk.kid.clone(), key.clone());
        Ok(())
    }

    async fn published_keys(&self, now: DateTime<Utc>) -> Result<Vec<PublishedKey>, StoreError> {
        let mut state = self.lock();
        state.keys.retain(|_, k| k.not_after.is_none_or(|t| t > now));
        Ok(state.keys.values().cloned().collect())
    }

    async fn disable_subject(&self, subject: &SpiffeId, reason: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let mut state = self.lock();
        if state.disabled.contains_key(subject) {
            return Ok(false);
        }
        state.disabled.insert(subject.clone(), (reason.to_owned(), now));
        Ok(true)
    }

    async fn enable_subject(&self, subject: &SpiffeId) -> Result<bool, StoreError> {
        Ok(self.lock().disabled.remove(subject).is_some())
    }

    async fn disabled_subjects(&self) -> Result<std::collections::BTreeSet<SpiffeId>, StoreError> {
        Ok(self.lock().disabled.keys().cloned().collect())
    }

    async fn subject_disabled(&self, subject: &SpiffeId) -> Result<bool, StoreError> {
        Ok(self.lock().disabled.contains_key(subject))
    }

    async fn quarantine_subject(
        &self,
        subject: &SpiffeId,
        until: DateTime<Utc>,
        why: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut state = self.lock();
        state.quarantined.retain(|_, q| q.until > now);
        match state.quarantined.get(subject) {
            Some(q) if q.until >= until => {}
            _ => {
                state.quarantined.insert(
                    subject.clone(),
                    crate::Quarantine {
                        subject: subject.clone(),
                        until,
                        why: why.to_owned(),
                    },
                );
            }
        }
        Ok(())
    }

    async fn quarantined_subjects(&self, now: DateTime<Utc>) -> Result<Vec<crate::Quarantine>, StoreError> {
        Ok(self
            .lock()
            .quarantined
            .values()
            .filter(|q| q.until > now)
            .cloned()
            .collect())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A list cursor is the last grant id of the previous page.
fn parse_cursor(s: &str) -> Result<GrantId, StoreError> {
    GrantId::parse(s).map_err(|_| StoreError::BadCursor(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_passes_the_conformance_suite() {
        crate::conformance::run_all(|| async { MemoryStore::default() }).await;
    }

    #[tokio::test]
    async fn a_full_feed_reports_lost_positions() {
        let limits = MemoryLimits {
            max_feed_events: 2,
            ..MemoryLimits::default()
        };
        crate::conformance::feed_overflow_is_reported(MemoryStore::new(limits)).await;
    }

    #[tokio::test]
    async fn a_trimmed_feed_refuses_only_the_readers_it_lost() {
        let limits = MemoryLimits {
            max_feed_events: 4,
            ..MemoryLimits::default()
        };
        crate::conformance::a_trimmed_feed_refuses_only_the_readers_it_lost(MemoryStore::new(limits)).await;
    }
}
