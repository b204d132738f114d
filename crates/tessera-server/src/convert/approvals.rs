//! Approvals ↔ protobuf.

use chrono::{DateTime, Utc};
use tessera_core::approval::{Approval, ApprovalId, ApprovalState};
use tessera_proto::v1 as pb;

use super::{class, timestamp};
use crate::status::FieldError;

/// Parses an approval id field.
pub fn approval_id(field: &'static str, s: &str) -> Result<ApprovalId, FieldError> {
    if s.is_empty() {
        return Err(FieldError::new(field, "is required (an approval id)"));
    }
    ApprovalId::parse(s).map_err(|e| FieldError::new(field, e.to_string()))
}

/// An approval's state for the wire.
pub fn approval_state(s: ApprovalState) -> pb::ApprovalState {
    match s {
        ApprovalState::Pending => pb::ApprovalState::Pending,
        ApprovalState::Approved => pb::ApprovalState::Approved,
        ApprovalState::Denied => pb::ApprovalState::Denied,
        ApprovalState::Redeemed => pb::ApprovalState::Redeemed,
        ApprovalState::Expired => pb::ApprovalState::Expired,
    }
}

/// An approval for approvers (never a token: none exists before redemption,
/// and the redeemed one is only ever sent to the requester).
pub fn approval(a: &Approval, now: DateTime<Utc>) -> pb::Approval {
    let decision = a.decision.as_ref();
    pb::Approval {
        approval_id: a.id.to_string(),
        requester: a.request.requester.to_string(),
        task_id: a.request.task_id.to_string(),
        audience: a.request.audience.to_string(),
        scopes: a.request.scopes.iter().map(ToString::to_string).collect(),
        class: class(a.class).into(),
        ttl_seconds: a.request.ttl.map_or(0, |t| t.as_secs()),
        created_at: Some(timestamp(a.created_at)),
        expires_at: Some(timestamp(a.expires_at)),
        reason: a.reason.clone(),
        state: approval_state(a.state_at(now)).into(),
        request_hash: a.binding.clone(),
        blast_radius: a.blast_radius,
        high_impact_scopes: a.high_impact.iter().map(ToString::to_string).collect(),
        decided_by: decision.map(|d| d.approver.to_string()).unwrap_or_default(),
        decision_reason: decision.map(|d| d.reason.clone()).unwrap_or_default(),
        decided_at: decision.map(|d| timestamp(d.at)),
        ttl_defaulted: a.request.ttl.is_none(),
    }
}

/// A pending approval as RequestToken and AwaitApproval answer it.
pub fn pending(a: &Approval) -> pb::PendingApproval {
    pb::PendingApproval {
        approval_id: a.id.to_string(),
        expires_at: Some(timestamp(a.expires_at)),
        reason: a.reason.clone(),
    }
}
