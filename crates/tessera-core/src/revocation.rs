//! Revocations: what a verifier must stop accepting, and until when it matters.

pub mod feed;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::grant::GrantId;
use crate::task::TaskId;

/// What a revocation kills.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationTarget {
    /// The one token whose `jti` is this.
    Grant(GrantId),
    /// Every token whose `task_id` claim is this. One event per task, however
    /// many grants it held: verifiers match on the claim.
    Task(TaskId),
    /// Every token signed by the key with this `kid` (withdrawn by
    /// break-glass): verifiers drop the key at once.
    Key(String),
}

/// One revocation, as published on the feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// What is revoked.
    pub target: RevocationTarget,
    /// When.
    pub revoked_at: DateTime<Utc>,
    /// Why (free text for people; never a secret).
    pub reason: String,
    /// No token matching the target expires after this; verifiers may forget
    /// the revocation once it has passed.
    pub not_after: DateTime<Utc>,
}
