//! [`MemoryApprovalStore`]: approvals for the embedded, single-process broker.
//! One mutex makes every transition atomic; nothing is held across an `.await`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tessera_core::approval::{Approval, ApprovalDecision, ApprovalId, ApprovalState, REDEEM_GRACE};
use tessera_core::grant::GrantId;

use crate::approval::{
    APPROVAL_RETENTION, ApprovalPage, ApprovalStore, MAX_APPROVAL_PAGE, MAX_PENDING_APPROVALS,
    MAX_PENDING_PER_REQUESTER, Transition,
};
use crate::error::StoreError;

/// The in-process [`ApprovalStore`].
#[derive(Debug, Default)]
pub struct MemoryApprovalStore {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    approvals: BTreeMap<ApprovalId, Approval>,
    /// (forget at, id), for the sweep.
    forget_at: BTreeSet<(DateTime<Utc>, ApprovalId)>,
}

fn forget_at(a: &Approval) -> DateTime<Utc> {
    a.expires_at + REDEEM_GRACE + APPROVAL_RETENTION
}

impl State {
    fn sweep(&mut self, now: DateTime<Utc>) {
        while let Some((at, id)) = self.forget_at.first().cloned() {
            if at > now {
                break;
            }
            self.forget_at.remove(&(at, id.clone()));
            self.approvals.remove(&id);
        }
    }
}

impl MemoryApprovalStore {
    fn lock(&self) -> MutexGuard<'_, State> {
        // INVARIANT: no mutation below can panic half way, so a poisoned lock holds consistent state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl ApprovalStore for MemoryApprovalStore {
    async fn create_approval(&self, approval: &Approval, now: DateTime<Utc>) -> Result<(), StoreError> {
        let mut state = self.lock();
        state.sweep(now);
        if state.approvals.contains_key(&approval.id) {
            return Err(StoreError::ApprovalExists);
        }
        let pending: Vec<&Approval> = state
            .approvals
            .values()
            .filter(|a| a.state_at(now) == ApprovalState::Pending)
            .collect();
        if pending.len() >= MAX_PENDING_APPROVALS {
            return Err(StoreError::Full("pending approvals"));
        }
        let requester = &approval.request.requester;
        if pending.iter().filter(|a| &a.request.requester == requester).count() >= MAX_PENDING_PER_REQUESTER {
            return Err(StoreError::Full("pending approvals of one requester"));
        }
        state.forget_at.insert((forget_at(approval), approval.id.clone()));
        state.approvals.insert(approval.id.clone(), approval.clone());
        Ok(())
    }

    async fn approval(&self, id: &ApprovalId) -> Result<Option<Approval>, StoreError> {
        Ok(self.lock().approvals.get(id).cloned())
    }

    async fn decide_approval(
        &self,
        id: &ApprovalId,
        decision: &ApprovalDecision,
        now: DateTime<Utc>,
    ) -> Result<Option<Transition>, StoreError> {
        let mut state = self.lock();
        let Some(approval) = state.approvals.get_mut(id) else {
            return Ok(None);
        };
        if approval.state_at(now) != ApprovalState::Pending || decision.approver == approval.request.requester {
            return Ok(Some(Transition::Refused(approval.clone())));
        }
        approval.state = if decision.approve {
            ApprovalState::Approved
        } else {
            ApprovalState::Denied
        };
        approval.decision = Some(decision.clone());
        Ok(Some(Transition::Applied(approval.clone())))
    }

    async fn redeem_approval(
        &self,
        id: &ApprovalId,
        grant: &GrantId,
        now: DateTime<Utc>,
    ) -> Result<Option<Transition>, StoreError> {
        let mut state = self.lock();
        let Some(approval) = state.approvals.get_mut(id) else {
            return Ok(None);
        };
        if approval.state_at(now) != ApprovalState::Approved {
            return Ok(Some(Transition::Refused(approval.clone())));
        }
        approval.state = ApprovalState::Redeemed;
        approval.grant_id = Some(grant.clone());
        Ok(Some(Transition::Applied(approval.clone())))
    }

    async fn list_pending_approvals(
        &self,
        after: Option<&str>,
        limit: usize,
        now: DateTime<Utc>,
    ) -> Result<ApprovalPage, StoreError> {
        let after = after
            .map(|a| ApprovalId::parse(a).map_err(|_| StoreError::BadCursor(a.to_owned())))
            .transpose()?;
        let limit = limit.clamp(1, MAX_APPROVAL_PAGE);
        let state = self.lock();
        let mut pending = state
            .approvals
            .values()
            .filter(|a| after.as_ref().is_none_or(|after| &a.id > after))
            .filter(|a| a.state_at(now) == ApprovalState::Pending);
        let approvals: Vec<Approval> = pending.by_ref().take(limit).cloned().collect();
        let next = if pending.next().is_some() {
            approvals.last().map(|a| a.id.to_string())
        } else {
            None
        };
        Ok(ApprovalPage { approvals, next })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_approval_store_passes_the_conformance_suite() {
        crate::conformance::run_approvals(|| async { MemoryApprovalStore::default() }).await;
    }
}
