//! The log lines and metrics of outcomes, one variant per kind of outcome,
//! with the fields operators (and the e2e tests) read. Only the recorder
//! (`record.rs`) writes them.

use tessera_core::approval::ApprovalId;
use tessera_core::audit::{AuditEvent, AuditKind};
use tessera_core::grant::{Grant, GrantId};
use tessera_core::identity::{SpiffeId, VerifiedIdentity};
use tessera_core::task::{Audience, ScopeClass, Task, TaskId, TaskState};
use tessera_core::ttl::Ttl;

use crate::broker::BrokerError;

/// The info log line of a refusal, by what was refused.
#[derive(Debug)]
pub(in crate::broker) enum DenialLog {
    /// `token_denied`: a token request.
    Token,
    /// `delegation_denied`: a delegation to this delegate.
    Delegation(tessera_core::identity::SpiffeId),
    /// `binding_refused`: a proof of possession or certificate binding.
    Binding,
}

impl DenialLog {
    pub(super) fn write(&self, who: &VerifiedIdentity, event: &AuditEvent, err: &BrokerError) {
        match self {
            Self::Token => tracing::info!(
                event = "token_denied",
                subject = %who.id(),
                task_id = %event.task_id.as_deref().unwrap_or_default(),
                audience = %event.audience.as_deref().unwrap_or_default(),
                reason = %err,
                "token request denied"
            ),
            Self::Delegation(delegate) => tracing::info!(
                event = "delegation_denied",
                subject = %who.id(),
                delegate = %delegate,
                reason = %err,
                "delegation denied"
            ),
            Self::Binding => {
                tracing::info!(event = "binding_refused", subject = %who.id(), reason = %err, "proof of possession refused");
            }
        }
    }
}

/// What a success counts in the metrics (`telemetry.rs` names them).
#[derive(Debug, Clone, Copy)]
pub(in crate::broker) enum Metric {
    /// `tessera_decisions_total{operation, result="allowed"}`.
    Allowed(&'static str),
    /// A token issued by RequestToken, by class.
    Issued(ScopeClass),
    /// A delegated (or exchanged) token: the DelegateToken decision and the
    /// token, by class.
    Delegated(ScopeClass),
    /// A task ended, with the grants it revoked.
    TaskEnded(TaskState, u64),
    /// Grants revoked by a RevokeGrant or a release (`kind`).
    GrantRevoked(AuditKind, u64),
    /// Grants revoked for `cause` (`identity`, `break_glass`).
    Revoked(&'static str, u64),
}

impl Metric {
    pub(super) fn count(self) {
        match self {
            Self::Allowed(operation) => crate::telemetry::decision(operation, true),
            Self::Issued(class) => crate::telemetry::issued(&class),
            Self::Delegated(class) => {
                crate::telemetry::decision("delegate_token", true);
                crate::telemetry::token_issued(&class);
            }
            Self::TaskEnded(state, grants) => crate::telemetry::task_ended(state, grants),
            Self::GrantRevoked(kind, grants) => crate::telemetry::grant_revoked(kind, grants),
            Self::Revoked(cause, grants) => crate::telemetry::revoked(cause, grants),
        }
    }
}

/// The log line of a success, by what happened; the fields are the ones
/// operators and the e2e tests read.
#[derive(Debug)]
pub(in crate::broker) enum Told<'a> {
    /// `token_misuse`: a verifier caught a token presented by another
    /// identity; its task is revoked and the presenter quarantined.
    TokenMisuse {
        /// Who presented it.
        presenter: &'a SpiffeId,
        /// The token's task.
        task: &'a TaskId,
        /// Grants revoked with the task, or `failed`.
        grants_revoked: &'a str,
        /// The presenter's quarantine ends then.
        until: chrono::DateTime<chrono::Utc>,
    },
    /// `quarantined`: an identity tripped the anomaly rule.
    Quarantined {
        /// The identity.
        identity: &'a SpiffeId,
        /// The rule that fired, for people.
        cause: &'a str,
        /// Its grants revoked, or `failed`.
        grants_revoked: &'a str,
        /// The quarantine ends then.
        until: chrono::DateTime<chrono::Utc>,
    },
    /// `approval_pending`.
    ApprovalPending {
        /// The approval.
        id: &'a ApprovalId,
        /// The requester.
        subject: &'a SpiffeId,
        /// The task.
        task_id: &'a TaskId,
        /// The API.
        audience: &'a Audience,
        /// The grant's blast-radius score.
        blast_radius: u32,
        /// When it expires undecided.
        expires_at: chrono::DateTime<chrono::Utc>,
    },
    /// `approval_decided`.
    ApprovalDecided {
        /// The approval.
        id: &'a ApprovalId,
        /// Who decided.
        approver: &'a SpiffeId,
        /// Who asked.
        requester: &'a SpiffeId,
        /// Approved or denied.
        approved: bool,
    },
    /// `task_started`.
    TaskStarted {
        /// The task.
        task: &'a Task,
        /// Its orchestrator.
        by: &'a SpiffeId,
    },
    /// `task_completed` or `task_revoked`.
    TaskEnded {
        /// The task.
        id: &'a TaskId,
        /// Completed or revoked.
        state: TaskState,
        /// Who ended it.
        by: &'a SpiffeId,
        /// Grants revoked with it.
        grants_revoked: u64,
        /// Child tasks ended with it.
        children_ended: usize,
        /// Why.
        reason: &'a str,
    },
    /// `token_issued`.
    TokenIssued {
        /// The grant recorded.
        grant: &'a Grant,
        /// Its lifetime.
        ttl: Ttl,
    },
    /// `token_delegated`.
    TokenDelegated {
        /// The child grant.
        grant: &'a Grant,
        /// Its parent.
        parent: &'a Grant,
        /// An RFC 8693 exchange rather than a DelegateToken.
        exchange: bool,
        /// The child's depth.
        depth: usize,
        /// Its lifetime.
        ttl: Ttl,
        /// Whether it is bound to a key or certificate.
        bound: bool,
    },
    /// `grant_revoked`.
    GrantRevoked {
        /// The grant.
        id: &'a GrantId,
        /// Who revoked it.
        by: &'a SpiffeId,
        /// Whether it was live until now.
        changed: bool,
        /// Grants delegated from it revoked with it.
        descendants: u64,
        /// Why.
        reason: &'a str,
    },
    /// `identity_disabled`.
    IdentityDisabled {
        /// The identity.
        identity: &'a SpiffeId,
        /// The operator.
        by: &'a SpiffeId,
        /// Why.
        reason: &'a str,
        /// Whether it was not disabled before.
        newly: bool,
    },
    /// `identity_revoked`.
    IdentityRevoked {
        /// The identity.
        identity: &'a SpiffeId,
        /// The operator.
        by: &'a SpiffeId,
        /// Grants revoked.
        grants_revoked: u64,
        /// Why.
        reason: &'a str,
    },
    /// `identity_enabled`.
    IdentityEnabled {
        /// The identity.
        identity: &'a SpiffeId,
        /// The operator.
        by: &'a SpiffeId,
        /// Why.
        reason: &'a str,
        /// Whether there was a disable to lift.
        lifted: bool,
    },
    /// `revoke_all` (break-glass).
    RevokeAll {
        /// Grants revoked.
        grants: u64,
        /// Keys withdrawn.
        withdrawn: u64,
        /// The key signing from now on.
        new_kid: &'a str,
        /// Tasks that could not be ended.
        failed: usize,
    },
}

impl Told<'_> {
    pub(super) fn write(&self) {
        match self {
            Self::TokenMisuse {
                presenter,
                task,
                grants_revoked,
                until,
            } => tracing::warn!(
                event = "token_misuse",
                presenter = %presenter,
                task = %task,
                grants_revoked = %grants_revoked,
                until = %until,
                "anomaly rule fired: token presented by another identity; task revoked, presenter quarantined"
            ),
            Self::Quarantined {
                identity,
                cause,
                grants_revoked,
                until,
            } => tracing::warn!(
                event = "quarantined",
                identity = %identity,
                cause = %cause,
                grants_revoked = %grants_revoked,
                until = %until,
                "anomaly rule fired: identity quarantined"
            ),
            Self::ApprovalPending {
                id,
                subject,
                task_id,
                audience,
                blast_radius,
                expires_at,
            } => tracing::info!(
                event = "approval_pending",
                approval_id = %id,
                subject = %subject,
                task_id = %task_id,
                audience = %audience,
                blast_radius,
                expires_at = %expires_at,
                "token request waits for approval"
            ),
            Self::ApprovalDecided {
                id,
                approver,
                requester,
                approved,
            } => tracing::info!(
                event = "approval_decided",
                approval_id = %id,
                approver = %approver,
                requester = %requester,
                approved,
                "approval decided"
            ),
            Self::TaskStarted { task, by } => tracing::info!(
                event = "task_started",
                task_id = %task.id,
                orchestrator = %by,
                agents = task.agents.len(),
                deadline = %task.deadline,
                "task started"
            ),
            Self::TaskEnded {
                id,
                state,
                by,
                grants_revoked,
                children_ended,
                reason,
            } => tracing::info!(
                event = if *state == TaskState::Revoked { "task_revoked" } else { "task_completed" },
                task_id = %id,
                by = %by,
                grants_revoked,
                children_ended,
                reason,
                "task ended"
            ),
            Self::TokenIssued { grant, ttl } => tracing::info!(
                event = "token_issued",
                grant_id = %grant.id,
                subject = %grant.subject,
                task_id = %grant.task_id,
                audience = %grant.audience,
                class = %grant.class,
                scopes = grant.scopes.len(),
                ttl_secs = ttl.as_secs(),
                kid = %grant.key_id,
                blast_radius = grant.impact.blast_radius,
                approval_id = grant.impact.approval_id.as_deref().unwrap_or(""),
                "token issued"
            ),
            Self::TokenDelegated {
                grant,
                parent,
                exchange,
                depth,
                ttl,
                bound,
            } => tracing::info!(
                event = "token_delegated",
                grant_id = %grant.id,
                parent_grant_id = %parent.id,
                holder = %parent.subject,
                delegate = %grant.subject,
                exchange,
                task_id = %grant.task_id,
                class = %grant.class,
                depth,
                ttl_secs = ttl.as_secs(),
                bound,
                "token delegated"
            ),
            Self::GrantRevoked {
                id,
                by,
                changed,
                descendants,
                reason,
            } => tracing::info!(
                event = "grant_revoked",
                grant_id = %id,
                by = %by,
                changed,
                descendants,
                reason,
                "grant revoked"
            ),
            Self::IdentityDisabled {
                identity,
                by,
                reason,
                newly,
            } => tracing::warn!(
                event = "identity_disabled",
                identity = %identity,
                by = %by,
                reason,
                newly,
                "identity disabled"
            ),
            Self::IdentityRevoked {
                identity,
                by,
                grants_revoked,
                reason,
            } => tracing::info!(
                event = "identity_revoked",
                identity = %identity,
                by = %by,
                grants_revoked,
                reason,
                "identity's grants revoked"
            ),
            Self::IdentityEnabled {
                identity,
                by,
                reason,
                lifted,
            } => tracing::warn!(
                event = "identity_enabled",
                identity = %identity,
                by = %by,
                reason,
                lifted,
                "identity enabled"
            ),
            Self::RevokeAll {
                grants,
                withdrawn,
                new_kid,
                failed,
            } => {
                tracing::warn!(event = "revoke_all", grants, withdrawn, new_kid = %new_kid, failed, "break-glass revocation")
            }
        }
    }
}
