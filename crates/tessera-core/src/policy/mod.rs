//! Policy-as-code: Cedar decides every operation.
//!
//! The model (entity types, actions, context) is the schema in
//! `deploy/policies/tessera.cedarschema`, compiled in as [`SCHEMA`]: every
//! policy set is validated against it in strict mode when it is loaded, so a
//! policy that names an unknown attribute or compares values of different
//! types is refused with its file and line, never discovered at request time.
//!
//! A [`PolicyEngine`] is an immutable, validated policy set and its SHA-256
//! hash; [`PolicyEngine::authorize`] turns a typed [`PolicyQuery`] into a
//! [`PolicyDecision`]. Default deny, a forbid always wins, and an evaluation
//! error denies. The determining permits' annotations carry obligations:
//! `@approval("required")`, `@max_ttl("SECONDS")`, `@max_blast_radius("N")`
//! (the strictest of each applies); a forbid's `@reason("...")` is what the
//! refused caller is told.
//!
//! Nothing here does network I/O; [`read_policy_files`] reads local files
//! only, so that the broker and `tessera policy validate` agree on which files
//! make a policy set.

mod cache;
mod context;
mod engine;
mod entities;
mod error;
mod files;

#[cfg(test)]
mod tests;

use std::sync::Arc;

pub use cache::{DECISION_CACHE_ENTRIES, DecisionCache, DecisionKey, DecisionStamp};
pub use context::{
    Delegation, MAX_CONTEXT_BYTES, MAX_DELEGATION_CHAIN, MAX_SET_ITEMS, MAX_STRING_BYTES, Operation, PolicyQuery,
    TaskAction, TokenAction, TokenFacts,
};
pub use engine::{MAX_POLICIES, PolicyEngine};
pub use entities::PolicyEntities;
pub use error::{PolicyError, PolicyLoadError};
pub use files::{MAX_POLICY_FILE_BYTES, MAX_POLICY_FILES, PolicyFile, read_policy_files};

/// The Cedar schema every policy set is validated against.
pub const SCHEMA: &str = include_str!("../../../../deploy/policies/tessera.cedarschema");

/// The shipped baseline policy set (`deploy/policies/baseline.cedar`).
pub const BASELINE: &str = include_str!("../../../../deploy/policies/baseline.cedar");

/// File name the baseline is known by when it is used as compiled in.
pub const BASELINE_NAME: &str = "baseline.cedar";

/// Every operation policy decides: the Cedar actions of the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Action {
    /// AgentService.RequestToken.
    RequestToken,
    /// AgentService.DelegateToken (one hop).
    DelegateToken,
    /// An approver approving one pending request.
    ApproveRequest,
    /// OrchestratorService.StartTask.
    StartTask,
    /// OrchestratorService.CompleteTask.
    CompleteTask,
    /// OrchestratorService.GetTask.
    GetTask,
    /// AdminService.RevokeTask.
    RevokeTask,
    /// AdminService.ListGrants.
    ListGrants,
    /// AdminService.RevokeGrant.
    RevokeGrant,
    /// AdminService.RevokeIdentity.
    RevokeIdentity,
    /// AdminService.EnableIdentity (lifts a runtime disable).
    EnableIdentity,
    /// AdminService.RevokeAll (break-glass).
    RevokeAll,
    /// AdminService.ListApprovals.
    ListApprovals,
    /// AdminService.DecideApproval.
    DecideApproval,
    /// AdminService.BlastRadius.
    BlastRadius,
    /// AdminService.RotateSigningKey.
    RotateSigningKey,
    /// AdminService.ReloadPolicy.
    ReloadPolicy,
    /// VerifierService.Introspect.
    Introspect,
    /// VerifierService.WatchRevocations.
    WatchRevocations,
    /// VerifierService.ReportMisuse: a verifier accuses a presenter, which
    /// can revoke a task and quarantine an identity.
    ReportMisuse,
}

impl Action {
    /// Every action, in schema order.
    pub const ALL: [Self; 20] = [
        Self::RequestToken,
        Self::DelegateToken,
        Self::ApproveRequest,
        Self::StartTask,
        Self::CompleteTask,
        Self::GetTask,
        Self::RevokeTask,
        Self::ListGrants,
        Self::RevokeGrant,
        Self::RevokeIdentity,
        Self::EnableIdentity,
        Self::RevokeAll,
        Self::ListApprovals,
        Self::DecideApproval,
        Self::BlastRadius,
        Self::RotateSigningKey,
        Self::ReloadPolicy,
        Self::Introspect,
        Self::WatchRevocations,
        Self::ReportMisuse,
    ];

    /// The Cedar action id (`Action::"RequestToken"`), also the RPC name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RequestToken => "RequestToken",
            Self::DelegateToken => "DelegateToken",
            Self::ApproveRequest => "ApproveRequest",
            Self::StartTask => "StartTask",
            Self::CompleteTask => "CompleteTask",
            Self::GetTask => "GetTask",
            Self::RevokeTask => "RevokeTask",
            Self::ListGrants => "ListGrants",
            Self::RevokeGrant => "RevokeGrant",
            Self::RevokeIdentity => "RevokeIdentity",
            Self::EnableIdentity => "EnableIdentity",
            Self::RevokeAll => "RevokeAll",
            Self::ListApprovals => "ListApprovals",
            Self::DecideApproval => "DecideApproval",
            Self::BlastRadius => "BlastRadius",
            Self::RotateSigningKey => "RotateSigningKey",
            Self::ReloadPolicy => "ReloadPolicy",
            Self::Introspect => "Introspect",
            Self::WatchRevocations => "WatchRevocations",
            Self::ReportMisuse => "ReportMisuse",
        }
    }

    /// The action named `name` (an RPC or Cedar action name).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == name)
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What policy decided about one request. Both outcomes carry the hash of
/// the policy set that decided and the ids of the determining policies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyDecision {
    /// At least one permit matched and no forbid did.
    Allow {
        /// The permits that matched.
        policy_ids: Vec<Arc<str>>,
        /// A matching permit says a person must approve first.
        approval_required: bool,
        /// The smallest `@max_ttl` of the matching permits, in seconds.
        max_ttl: Option<u32>,
        /// The smallest `@max_blast_radius` of the matching permits.
        max_blast_radius: Option<u32>,
        /// The policy set's hash (`sha256:<hex>`).
        policy_hash: Arc<str>,
    },
    /// No permit matched, a forbid matched, or evaluation failed.
    Deny {
        /// The forbids that matched (empty when no permit matched).
        policy_ids: Vec<Arc<str>>,
        /// Why, for the caller and the audit trail.
        reasons: Vec<String>,
        /// The policy set's hash (`sha256:<hex>`).
        policy_hash: Arc<str>,
    },
}

impl PolicyDecision {
    /// Whether the request is allowed (possibly pending approval).
    pub fn is_allow(&self) -> bool {
        matches!(self, Self::Allow { .. })
    }

    /// The determining policies.
    pub fn policy_ids(&self) -> &[Arc<str>] {
        match self {
            Self::Allow { policy_ids, .. } | Self::Deny { policy_ids, .. } => policy_ids,
        }
    }

    /// The hash of the policy set that decided.
    pub fn policy_hash(&self) -> &Arc<str> {
        match self {
            Self::Allow { policy_hash, .. } | Self::Deny { policy_hash, .. } => policy_hash,
        }
    }
}
