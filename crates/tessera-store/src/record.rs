//! The stored shape of a grant in Redis: compact (short keys, epoch seconds,
//! no state fields, no id — the id is in the key), since every live grant
//! costs memory. State lives beside it (`revoked:` marks, the task's state).

use std::collections::BTreeSet;

use chrono::DateTime;
use serde::{Deserialize, Serialize};
use tessera_core::grant::{Grant, GrantId, GrantImpact, GrantState};
use tessera_core::identity::SpiffeId;
use tessera_core::task::{Audience, Scope, ScopeClass, TaskId};

use crate::error::StoreError;

/// A grant as stored: everything immutable about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredGrant {
    /// Task id (scripts read it as `t`).
    t: TaskId,
    /// Subject.
    s: SpiffeId,
    /// Audience.
    a: Audience,
    /// Scopes.
    sc: BTreeSet<Scope>,
    /// Class.
    c: ScopeClass,
    /// Issued at, epoch seconds.
    i: i64,
    /// Expires at, epoch seconds.
    e: i64,
    /// Parent grant, when delegated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    p: Option<GrantId>,
    /// Signing key id.
    k: String,
    /// High-impact (absent: no).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    h: bool,
    /// Blast-radius score (absent: 0, as recorded before scores existed).
    #[serde(default, skip_serializing_if = "is_zero")]
    b: u32,
    /// The approval it was minted from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ap: Option<String>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl StoredGrant {
    pub(crate) fn from_grant(g: &Grant) -> Self {
        Self {
            t: g.task_id.clone(),
            s: g.subject.clone(),
            a: g.audience.clone(),
            sc: g.scopes.clone(),
            c: g.class,
            i: g.issued_at.timestamp(),
            e: g.expires_at.timestamp(),
            p: g.parent.clone(),
            k: g.key_id.clone(),
            h: g.impact.high_impact,
            b: g.impact.blast_radius,
            ap: g.impact.approval_id.clone(),
        }
    }

    /// The grant `id`, active unless the caller finds otherwise.
    pub(crate) fn into_grant(self, id: GrantId) -> Result<Grant, StoreError> {
        let at = |secs| DateTime::from_timestamp(secs, 0).ok_or_else(|| StoreError::Corrupt("grant time".into()));
        Ok(Grant {
            id,
            task_id: self.t,
            subject: self.s,
            audience: self.a,
            scopes: self.sc,
            class: self.c,
            issued_at: at(self.i)?,
            expires_at: at(self.e)?,
            parent: self.p,
            key_id: self.k,
            state: GrantState::Active,
            revoked_at: None,
            revocation_reason: None,
            impact: GrantImpact {
                high_impact: self.h,
                blast_radius: self.b,
                approval_id: self.ap,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_round_trips_through_its_stored_shape() {
        let g = crate::conformance::grant_with_id(GrantId::generate().unwrap(), "t1", 30, None);
        let json = serde_json::to_string(&StoredGrant::from_grant(&g)).unwrap();
        assert!(json.len() < 200, "{json}");
        let back: StoredGrant = serde_json::from_str(&json).unwrap();
        assert_eq!(back.into_grant(g.id.clone()).unwrap(), g);
        // With an assessment.
        let mut g = g;
        g.impact = GrantImpact {
            high_impact: true,
            blast_radius: 50,
            approval_id: Some("ap_x".into()),
        };
        let json = serde_json::to_string(&StoredGrant::from_grant(&g)).unwrap();
        let back: StoredGrant = serde_json::from_str(&json).unwrap();
        assert_eq!(back.into_grant(g.id.clone()).unwrap(), g);
    }
}
