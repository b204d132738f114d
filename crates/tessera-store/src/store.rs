//! The [`GrantStore`] contract.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tessera_core::grant::{Grant, GrantId};
use tessera_core::task::{Task, TaskId, TaskState};
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

/// Durable (or, for [`crate::MemoryStore`], process-lifetime) state shared by
/// every broker replica.
///
/// Contract, checked by [`crate::conformance`]:
/// - `record_grant` is atomic with the task's state: a grant is recorded only
///   while its task is active and not past its deadline, and never with an
///   expiry after the deadline; once `end_task` returns, no grant of that task
///   can be recorded.
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

    /// Publishes (or updates) a public key.
    async fn publish_key(&self, key: &PublishedKey) -> Result<(), StoreError>;

    /// Keys to serve in the JWKS at `now`: those whose `not_after` has not passed.
    async fn published_keys(&self, now: DateTime<Utc>) -> Result<Vec<PublishedKey>, StoreError>;

    /// Checks the backend answers.
    async fn ping(&self) -> Result<(), StoreError>;
}
