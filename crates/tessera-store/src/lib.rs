//! Where Tessera keeps its state: tasks, live grants, the revocation feed and
//! the published public keys, behind the [`GrantStore`] trait.
//!
//! [`MemoryStore`] is the embedded default (one broker process, no Redis).
//! Every implementation must pass the same [`conformance`] suite. This crate
//! decides nothing: the rules live in `tessera-core`; a store only applies
//! them atomically.

mod error;
mod feed;
mod memory;
mod record;
mod redis;
mod store;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

pub use error::StoreError;
pub use feed::{FeedBatch, FeedEvent, FeedPosition};
pub use memory::{MemoryLimits, MemoryStore};
pub use redis::{AuditStream, MAX_AUDIT_PAGE, RedisConfig, RedisDeployment, RedisStore, audit_stream_key};
pub use store::{GrantFilter, GrantPage, GrantStore, MAX_GRANT_PAGE, PublishedKey, RevokeOutcome, TaskEnded};
