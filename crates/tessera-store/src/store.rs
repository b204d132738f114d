//! The [`GrantStore`] contract.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

use tessera_core::grant::{Grant, GrantId};
use tessera_core::identity::SpiffeId;
use tessera_core::task::{Audience, ScopeClass, Task, TaskId, TaskState};
use tessera_core::token::Jwk;

use crate::error::StoreError;
use crate::feed::{FeedBatch, FeedPosition};

/// A public key as published for verifiers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedKey {
    /// The public key; `jwk.kid` identifies it.
    pub jwk: Jwk,
    /// When it was published.
    pub published_at: DateTime<Utc>,
    /// When it may be dropped from the JWKS (after its last token expires);
    /// `None` while it still signs.
    pub not_after: Option<DateTime<Utc>>,
}

/// The outcome of revoking one grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokeOutcome {
    /// The grant as it now stands.
    pub grant: Grant,
    /// False when it was already revoked or expired (nothing changed).
    pub revoked: bool,
    /// Grants delegated from it (at any depth) revoked with it.
    pub descendants_revoked: u64,
}

/// The outcome of [`GrantStore::release_grant`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release {
    /// The holder released it.
    Revoked(RevokeOutcome),
    /// The caller does not hold it: nothing changed.
    NotHolder(Grant),
}

/// The outcome of ending a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskEnded {
    /// The task as it now stands.
    pub task: Task,
    /// Live grants revoked, in the task and its descendants.
    pub grants_revoked: u64,
    /// Descendant tasks ended with it.
    pub children_ended: Vec<TaskId>,
}

/// Which live grants [`GrantStore::list_grants`] returns. Every field is
/// optional; the ones set must all match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrantFilter {
    /// Grants of this task (not of its child tasks).
    pub task_id: Option<TaskId>,
    /// Grants whose subject is one of these (an empty set matches nothing;
    /// `None` matches every subject).
    pub subjects: Option<BTreeSet<SpiffeId>>,
    /// Grants for this audience.
    pub audience: Option<Audience>,
    /// Grants of this scope class.
    pub class: Option<ScopeClass>,
    /// Grants expiring strictly before this time.
    pub expiring_before: Option<DateTime<Utc>>,
    /// Only grants carrying a high-impact scope.
    pub high_impact_only: bool,
}

impl GrantFilter {
    /// Whether `grant` matches (liveness is checked separately).
    pub fn matches(&self, grant: &Grant) -> bool {
        self.task_id.as_ref().is_none_or(|t| &grant.task_id == t)
            && self.subjects.as_ref().is_none_or(|s| s.contains(&grant.subject))
            && self.audience.as_ref().is_none_or(|a| &grant.audience == a)
            && self.class.is_none_or(|c| grant.class == c)
            && self.expiring_before.is_none_or(|t| grant.expires_at < t)
            && (!self.high_impact_only || grant.impact.high_impact)
    }
}

/// One page of [`GrantStore::list_grants`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrantPage {
    /// Live grants, ordered by grant id.
    pub grants: Vec<Grant>,
    /// Where the next page starts (opaque; pass it as `after`); `None` when
    /// nothing follows. The next page may turn out empty if the remaining
    /// grants died meanwhile.
    pub next: Option<String>,
}

/// Most grants one [`GrantStore::list_grants`] call returns.
pub const MAX_GRANT_PAGE: usize = 1000;

/// Default bound on the live grants one identity holds at once: one agent
/// cannot fill the store and stop minting for everyone.
pub const DEFAULT_MAX_LIVE_GRANTS_PER_IDENTITY: u64 = 100_000;
/// Default bound on the live grants one task holds at once.
pub const DEFAULT_MAX_LIVE_GRANTS_PER_TASK: u64 = 100_000;
/// The [`StoreError::Full`] of a grant over its task's bound.
pub const TASK_GRANTS_FULL: &str = "live grants of the task";
/// The [`StoreError::Full`] of a grant over its subject's bound.
pub const IDENTITY_GRANTS_FULL: &str = "live grants of the identity";

/// How a key withdrawal is announced on the revocation feed: one
/// [`RevocationTarget::Key`](tessera_core::revocation::RevocationTarget::Key)
/// event per withdrawn key, published before the key leaves the JWKS.
#[derive(Debug, Clone, Copy)]
pub struct KeyWithdrawal<'a> {
    /// Why (free text for people).
    pub reason: &'a str,
    /// When.
    pub now: DateTime<Utc>,
    /// No token the withdrawn keys signed expires after this.
    pub not_after: DateTime<Utc>,
}

/// Durable (or, for [`crate::MemoryStore`], process-lifetime) state shared by
/// every broker replica.
///
/// Contract, checked by [`crate::conformance`]:
/// - `record_grant` is atomic with the task's state: a grant is recorded only
///   while its task is active and not past its deadline, and never with an
///   expiry after the deadline; once `end_task` returns, no grant of that task
///   can be recorded. It refuses with [`StoreError::Full`] a grant whose task
///   or subject already holds its bound of live grants, and with
///   [`StoreError::SubjectDisabled`] a grant whose subject an operator
///   disabled ([`GrantStore::disable_subject`]) before it answers: a disable
///   either is seen by the record, or comes after it and its sweep
///   ([`GrantStore::revoke_subject`]) finds the grant.
/// - A grant is live until its expiry, its revocation, or its task's end,
///   whichever comes first; no sweeper is needed for expiry.
/// - Every revocation is appended to the feed before the call returns, and the
///   feed is totally ordered; readers resume after any position they were given.
/// - Ending a task ends its descendant tasks; repeating it changes nothing.
/// - Any failure to reach the backend is [`StoreError::Unavailable`]: callers
///   fail closed.
#[async_trait]
pub trait GrantStore: Send + Sync + 'static {
    /// Records a new, active task. Fails with `TaskExists` if the id is taken.
    async fn create_task(&self, task: &Task) -> Result<(), StoreError>;

    /// The task, if known.
    async fn task(&self, id: &TaskId) -> Result<Option<Task>, StoreError>;

    /// Number of live grants of the task at `now`.
    async fn live_grants(&self, id: &TaskId, now: DateTime<Utc>) -> Result<u64, StoreError>;

    /// A fresh, unguessable id for a grant about to be issued in `task`
    /// (it becomes the token's `jti`). Stores may encode routing in it; a
    /// grant must be recorded with an id from here. `TaskNotFound` if unknown.
    async fn new_grant_id(&self, task: &TaskId) -> Result<GrantId, StoreError>;

    /// Records a newly issued grant, atomically checking that its task exists,
    /// is active at `now`, and ends no earlier than the grant.
    async fn record_grant(&self, grant: &Grant, now: DateTime<Utc>) -> Result<(), StoreError>;

    /// The grant, if still known (expired grants may be forgotten).
    async fn grant(&self, id: &GrantId) -> Result<Option<Grant>, StoreError>;

    /// Revokes a grant and every grant delegated from it. `Ok(None)` if unknown.
    async fn revoke_grant(
        &self,
        id: &GrantId,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<RevokeOutcome>, StoreError>;

    /// ReleaseToken: revokes `id` as [`GrantStore::revoke_grant`] does, if
    /// `holder` is its subject; refuses (changing nothing) otherwise.
    /// `Ok(None)` if unknown. A store that can, checks and revokes in one
    /// step; this default reads, then revokes.
    async fn release_grant(
        &self,
        id: &GrantId,
        holder: &SpiffeId,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Release>, StoreError> {
        release_by_reading(self, id, holder, reason, now).await
    }

    /// Ends a task and its descendant tasks with `state` (`Completed` or
    /// `Revoked`), revoking every live grant in them and appending one
    /// task revocation per task to the feed. Ending an ended task succeeds and
    /// changes nothing.
    async fn end_task(
        &self,
        id: &TaskId,
        state: TaskState,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<TaskEnded, StoreError>;

    /// Revocations after `after` (or, for `None`, none: only the head), at
    /// most `max`, waiting up to `wait` for the first one.
    async fn read_revocations(
        &self,
        after: Option<&FeedPosition>,
        max: usize,
        wait: Duration,
    ) -> Result<FeedBatch, StoreError>;

    /// Live grants (not expired, not revoked, task active at `now`) matching
    /// `filter`, ordered by grant id, at most `limit` (clamped to
    /// 1..=[`MAX_GRANT_PAGE`]), starting after the cursor `after` (a `next`
    /// from an earlier page). A cursor this store did not produce is
    /// [`StoreError::BadPosition`].
    async fn list_grants(
        &self,
        filter: &GrantFilter,
        after: Option<&str>,
        limit: usize,
        now: DateTime<Utc>,
    ) -> Result<GrantPage, StoreError>;

    /// Revokes every grant of `subject` live at `now`, and every grant
    /// delegated from them (whoever holds it), one revocation event per grant
    /// revoked. Returns how many grants were revoked; repeating it revokes none.
    async fn revoke_subject(&self, subject: &SpiffeId, reason: &str, now: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Ids of tasks that may still be active at `now` (a superset is fine:
    /// ending an ended task changes nothing). For break-glass revocation.
    async fn active_task_ids(&self, now: DateTime<Utc>) -> Result<Vec<TaskId>, StoreError>;

    /// Withdraws every published key but `keep` (break-glass): tokens signed
    /// by them no longer verify anywhere, offline or not.
    async fn withdraw_keys_except(&self, keep: &str, withdrawal: &KeyWithdrawal<'_>) -> Result<u64, StoreError>;

    /// Publishes (or updates) a public key; `KeyWithdrawn` for a key that
    /// break-glass withdrew, which never comes back.
    async fn publish_key(&self, key: &PublishedKey) -> Result<(), StoreError>;

    /// Keys to serve in the JWKS at `now`: those whose `not_after` has not passed.
    async fn published_keys(&self, now: DateTime<Utc>) -> Result<Vec<PublishedKey>, StoreError>;

    /// [`GrantStore::published_keys`] at `now` and [`GrantStore::grant`]
    /// `id`, read together: what introspecting one token needs. A store
    /// that can, reads both in one round trip; this default reads one, then
    /// the other.
    async fn keys_and_grant(
        &self,
        id: &GrantId,
        now: DateTime<Utc>,
    ) -> Result<(Vec<PublishedKey>, Option<Grant>), StoreError> {
        Ok((self.published_keys(now).await?, self.grant(id).await?))
    }

    /// Marks `subject` disabled by an operator (RevokeIdentity with
    /// `disable`), with `reason`: shared by every replica and kept across
    /// restarts until [`GrantStore::enable_subject`]. Returns whether it
    /// was not disabled already.
    async fn disable_subject(&self, subject: &SpiffeId, reason: &str, now: DateTime<Utc>) -> Result<bool, StoreError>;

    /// Lifts an operator's disable of `subject`; returns whether there was one.
    async fn enable_subject(&self, subject: &SpiffeId) -> Result<bool, StoreError>;

    /// The subjects an operator disabled.
    async fn disabled_subjects(&self) -> Result<std::collections::BTreeSet<SpiffeId>, StoreError>;

    /// Whether an operator disabled `subject` (one lookup, for the check
    /// after every grant is recorded).
    async fn subject_disabled(&self, subject: &SpiffeId) -> Result<bool, StoreError>;

    /// Quarantines `subject` until `until` (an anomaly rule fired), with
    /// `why`, for every replica; a later, longer quarantine extends it.
    async fn quarantine_subject(
        &self,
        subject: &SpiffeId,
        until: DateTime<Utc>,
        why: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Quarantines still in force at `now`: subject, until, why.
    async fn quarantined_subjects(&self, now: DateTime<Utc>) -> Result<Vec<Quarantine>, StoreError>;

    /// Checks the backend answers.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// [`GrantStore::release_grant`] in two steps: read the grant, then revoke it.
pub(crate) async fn release_by_reading<S: GrantStore + ?Sized>(
    store: &S,
    id: &GrantId,
    holder: &SpiffeId,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<Option<Release>, StoreError> {
    let Some(grant) = store.grant(id).await? else {
        return Ok(None);
    };
    if &grant.subject != holder {
        return Ok(Some(Release::NotHolder(grant)));
    }
    Ok(store.revoke_grant(id, reason, now).await?.map(Release::Revoked))
}

/// A quarantine an anomaly rule imposed, shared by every replica.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Quarantine {
    /// Who.
    pub subject: SpiffeId,
    /// Until when.
    pub until: DateTime<Utc>,
    /// The rule that fired, for people.
    pub why: String,
}
