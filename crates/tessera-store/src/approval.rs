//! The [`ApprovalStore`] contract: pending approvals, shared by every broker
//! replica, and their state transitions, each applied atomically.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tessera_core::approval::{Approval, ApprovalDecision, ApprovalId};
use tessera_core::grant::GrantId;

use crate::error::StoreError;

/// Most approvals one [`ApprovalStore::list_pending_approvals`] call returns.
pub const MAX_APPROVAL_PAGE: usize = 100;

/// Most approvals pending at once; opening another is [`StoreError::Full`].
pub const MAX_PENDING_APPROVALS: usize = 10_000;

/// Most approvals one requester may have pending at once, so that one agent
/// cannot crowd everyone else out of [`MAX_PENDING_APPROVALS`].
pub const MAX_PENDING_PER_REQUESTER: usize = 16;

/// How long an approval stays readable after its expiry (plus the redeem
/// grace), so that a late `AwaitApproval` learns what happened to it instead
/// of NOT_FOUND. Its state is judged on its expiry, never on this.
pub const APPROVAL_RETENTION: chrono::Duration = chrono::Duration::minutes(10);

/// The outcome of a state transition on an existing approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// This call moved it; here is the approval as it now stands.
    Applied(Approval),
    /// It was not in the state the transition needs (already decided,
    /// redeemed, expired, or the decider is the requester); unchanged.
    Refused(Approval),
}

/// One page of pending approvals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApprovalPage {
    /// Pending approvals, ordered by id.
    pub approvals: Vec<Approval>,
    /// Pass as `after` for the next page; `None` when nothing follows.
    pub next: Option<String>,
}

/// Where approvals live.
///
/// Contract, checked by [`crate::conformance::run_approvals`]:
/// - `pending → approved | denied` only while pending and before the
///   expiry, and never by the requester itself;
/// - `approved → redeemed` exactly once (concurrent callers: one wins), only
///   before expiry plus [`tessera_core::approval::REDEEM_GRACE`];
/// - every transition is atomic across broker replicas;
/// - an approval is readable until [`APPROVAL_RETENTION`] after it expired;
/// - any failure to reach the backend is [`StoreError::Unavailable`].
#[async_trait]
pub trait ApprovalStore: Send + Sync + 'static {
    /// Records a new pending approval. [`StoreError::ApprovalExists`] if the
    /// id is taken, [`StoreError::Full`] past [`MAX_PENDING_APPROVALS`] or
    /// [`MAX_PENDING_PER_REQUESTER`].
    async fn create_approval(&self, approval: &Approval, now: DateTime<Utc>) -> Result<(), StoreError>;

    /// The approval, if still retained.
    async fn approval(&self, id: &ApprovalId) -> Result<Option<Approval>, StoreError>;

    /// Applies a person's decision: `pending → approved` or `denied`.
    /// `Ok(None)` if unknown.
    async fn decide_approval(
        &self,
        id: &ApprovalId,
        decision: &ApprovalDecision,
        now: DateTime<Utc>,
    ) -> Result<Option<Transition>, StoreError>;

    /// Marks an approved approval redeemed by `grant`: `approved → redeemed`.
    /// `Ok(None)` if unknown.
    async fn redeem_approval(
        &self,
        id: &ApprovalId,
        grant: &GrantId,
        now: DateTime<Utc>,
    ) -> Result<Option<Transition>, StoreError>;

    /// Approvals pending at `now`, ordered by id, at most `limit` (clamped to
    /// 1..=[`MAX_APPROVAL_PAGE`]), after the cursor `after`.
    async fn list_pending_approvals(
        &self,
        after: Option<&str>,
        limit: usize,
        now: DateTime<Utc>,
    ) -> Result<ApprovalPage, StoreError>;
}
