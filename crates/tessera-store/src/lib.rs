//! Where Tessera keeps its state: tasks, live grants, the revocation feed and
//! the published public keys, behind the [`GrantStore`] trait; pending
//! approvals behind the [`ApprovalStore`] trait.
//!
//! [`MemoryStore`] is the embedded default (one broker process, no Redis).
//! Every implementation must pass the same [`conformance`] suite. This crate
//! decides nothing: the rules live in `tessera-core`; a store only applies
//! them atomically.

mod approval;
mod error;
mod feed;
mod memory;
mod memory_approvals;
mod record;
mod redis;
pub mod replay;
mod store;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

pub use approval::{
    APPROVAL_RETENTION, ApprovalPage, ApprovalStore, MAX_APPROVAL_PAGE, MAX_PENDING_APPROVALS,
    MAX_PENDING_PER_REQUESTER, Transition,
};
pub use error::StoreError;
pub use feed::{FeedBatch, FeedEvent, FeedPosition};
pub use memory::{MemoryLimits, MemoryStore};
pub use memory_approvals::MemoryApprovalStore;
pub use redis::{
    AuditStream, MAX_AUDIT_PAGE, RedisConfig, RedisDeployment, RedisDurability, RedisStore, RedisTls, audit_stream_key,
};
#[cfg(any(test, feature = "conformance"))]
pub use replay::conformance as replay_conformance;
pub use replay::{MEMORY_REPLAY_CAPACITY, MemoryReplayCache, ReplayCache};
pub use store::{
    DEFAULT_MAX_LIVE_GRANTS_PER_IDENTITY, DEFAULT_MAX_LIVE_GRANTS_PER_TASK, GrantFilter, GrantPage, GrantStore,
    IDENTITY_GRANTS_FULL, KeyWithdrawal, MAX_GRANT_PAGE, PublishedKey, Quarantine, Release, RevokeOutcome,
    TASK_GRANTS_FULL, TaskEnded,
};
