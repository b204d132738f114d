//! Anomaly revocation: denials are counted per identity (by this replica)
//! and an identity denied too often loses its grants and is quarantined.

use tessera_core::anomaly::{AnomalyDetector, AnomalyRule, QuarantineList, Trigger};
use tessera_core::audit::{AuditKind, Outcome};
use tessera_core::identity::{SpiffeId, VerifiedIdentity};

use super::record::{Success, Told};
use super::{Broker, BrokerError};

/// Most quarantine refusals audited per identity: one per this interval.
const QUARANTINE_AUDIT_EVERY: chrono::Duration = chrono::Duration::seconds(1);

/// Denials counted and identities quarantined, by this replica.
#[derive(Debug)]
pub(super) struct Anomaly {
    detector: AnomalyDetector,
    pub(super) quarantined: QuarantineList,
    /// Why each quarantined identity is (kept while it is quarantined).
    pub(super) why: std::collections::HashMap<SpiffeId, String>,
    /// When a refusal of each quarantined identity was last audited.
    last_audited: std::collections::HashMap<SpiffeId, chrono::DateTime<chrono::Utc>>,
}

impl Anomaly {
    pub(super) fn new(rule: AnomalyRule) -> Self {
        Self {
            detector: AnomalyDetector::new(rule),
            quarantined: QuarantineList::default(),
            why: std::collections::HashMap::new(),
            last_audited: std::collections::HashMap::new(),
        }
    }

    pub(super) fn quarantine(&mut self, trigger: &Trigger, now: chrono::DateTime<chrono::Utc>) {
        self.quarantined.quarantine(&trigger.identity, trigger.until);
        self.why.insert(trigger.identity.clone(), trigger.describe());
        self.last_audited.remove(&trigger.identity);
        // The side maps follow the (bounded) list.
        if self.why.len() > self.quarantined.len() {
            let quarantined = &mut self.quarantined;
            self.why.retain(|id, _| quarantined.is_quarantined(id, now).is_some());
            let why = &self.why;
            self.last_audited.retain(|id, _| why.contains_key(id));
        }
    }
}

impl Broker {
    /// Writes a quarantine this replica imposed to the store, for the
    /// others (they read it within one `attestation.reload_interval`). A
    /// failure is logged: this replica's quarantine holds regardless.
    pub(super) async fn share_quarantine(&self, trigger: &Trigger, now: chrono::DateTime<chrono::Utc>) {
        if let Err(e) = self
            .store
            .quarantine_subject(&trigger.identity, trigger.until, &trigger.describe(), now)
            .await
        {
            tracing::error!(identity = %trigger.identity, error = %e, "anomaly: could not share the quarantine with other replicas");
        }
    }

    /// Refuses `id` if it is quarantined (without auditing: for an identity
    /// that is not the caller, e.g. the holder of a token being exchanged).
    pub(crate) fn refuse_if_quarantined(&self, id: &SpiffeId) -> Result<(), BrokerError> {
        let Some(anomaly) = &self.anomaly else {
            return Ok(());
        };
        let now = self.clock.now();
        let mut a = anomaly.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match a.quarantined.is_quarantined(id, now) {
            None => Ok(()),
            Some(until) => Err(BrokerError::Quarantined {
                identity: id.clone(),
                until,
                why: a.why.get(id).cloned().unwrap_or_default(),
            }),
        }
    }

    /// Refuses if any of `ids` is quarantined, on this replica or in the
    /// store's shared list (a quarantine another replica imposed since this
    /// one last read it). The store unreadable: UNAVAILABLE, never a skipped
    /// check.
    pub(crate) async fn refuse_if_quarantined_anywhere(
        &self,
        ids: &[&SpiffeId],
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), BrokerError> {
        if self.anomaly.is_none() {
            return Ok(());
        }
        for id in ids {
            self.refuse_if_quarantined(id)?;
        }
        let shared = self.store.quarantined_subjects(now).await?;
        for q in shared {
            if q.until > now && ids.contains(&&q.subject) {
                return Err(BrokerError::Quarantined {
                    identity: q.subject,
                    until: q.until,
                    why: q.why,
                });
            }
        }
        Ok(())
    }

    /// After `grant` was recorded: if any of `ids` is quarantined by now
    /// (here or shared), the grant is taken back and the call refused.
    pub(crate) async fn confirm_not_quarantined(
        &self,
        ids: &[&SpiffeId],
        grant: &tessera_core::grant::Grant,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), BrokerError> {
        match self.refuse_if_quarantined_anywhere(ids, now).await {
            Ok(()) => Ok(()),
            Err(e) => {
                let why = if matches!(e, BrokerError::Quarantined { .. }) {
                    "identity quarantined"
                } else {
                    "store unavailable"
                };
                if let Err(revoke) = self.store.revoke_grant(&grant.id, why, now).await {
                    tracing::error!(grant = %grant.id, error = %revoke, "could not take back a grant minted for a quarantined identity");
                }
                Err(e)
            }
        }
    }

    /// Admits an attested caller, or refuses a quarantined one (PERMISSION_DENIED).
    /// Every RPC passes here right after attestation. Refusals are audited
    /// as `quarantine_refused`, at most once per identity per second.
    pub async fn admit(&self, who: &VerifiedIdentity) -> Result<(), BrokerError> {
        let Some(anomaly) = &self.anomaly else {
            return Ok(());
        };
        let now = self.clock.now();
        let (until, why, audit) = {
            let mut a = anomaly.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let Some(until) = a.quarantined.is_quarantined(who.id(), now) else {
                if !a.why.is_empty() {
                    a.why.remove(who.id());
                    a.last_audited.remove(who.id());
                }
                return Ok(());
            };
            let why = a.why.get(who.id()).cloned().unwrap_or_default();
            let audit = match a.last_audited.get(who.id()) {
                Some(last) if now - *last < QUARANTINE_AUDIT_EVERY && now >= *last => false,
                _ => {
                    a.last_audited.insert(who.id().clone(), now);
                    true
                }
            };
            (until, why, audit)
        };
        let err = BrokerError::Quarantined {
            identity: who.id().clone(),
            until,
            why,
        };
        tracing::debug!(event = "quarantine_refused", identity = %who.id(), until = %until, "quarantined caller refused");
        if audit {
            return self
                .deny(self.denial(AuditKind::QuarantineRefused, Some(who)), err)
                .await;
        }
        Err(err)
    }

    /// Counts a denial of `who`; if that fires the anomaly rule, quarantines
    /// the identity and revokes its live grants. Failures to revoke or audit
    /// are logged: the denial already answered stands, and so does the quarantine.
    pub(super) async fn count_denial(&self, who: &VerifiedIdentity) {
        let Some(anomaly) = &self.anomaly else {
            return;
        };
        let now = self.clock.now();
        let trigger = {
            let mut a = anomaly.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let trigger = a.detector.observe_denial(who.id(), now);
            if let Some(t) = &trigger {
                // Quarantined before the grants are revoked, so that no new
                // grant can be minted in between.
                a.quarantine(t, now);
            }
            trigger
        };
        if let Some(trigger) = trigger {
            // A quarantine changes what a caller may do: no decision made
            // before it is served after it.
            self.policy.forget_decisions();
            self.quarantine(who, &trigger, now).await;
        }
    }

    async fn quarantine(&self, who: &VerifiedIdentity, trigger: &Trigger, now: chrono::DateTime<chrono::Utc>) {
        let what = trigger.describe();
        // Its console sessions end with the quarantine, not at their next
        // request (the quarantine may be lifted before then).
        self.prune_console_sessions();
        self.share_quarantine(trigger, now).await;
        let revoked = match self
            .store
            .revoke_subject(who.id(), &format!("anomaly: {what}"), now)
            .await
        {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::error!(identity = %who.id(), error = %e, "anomaly: revoking the quarantined identity's grants failed");
                None
            }
        };
        let shown = revoked.map_or_else(|| "failed".to_owned(), |n| n.to_string());
        let mut event = self.event(AuditKind::Quarantined, Outcome::Allow, Some(who));
        event.reason = Some(format!(
            "{what}; grants revoked: {shown}; quarantined until {}",
            trigger.until
        ));
        event.count = revoked;
        let told = Told::Quarantined {
            identity: who.id(),
            cause: &what,
            grants_revoked: &shown,
            until: trigger.until,
        };
        // The quarantine and revocation stand even if this record is lost.
        let _ = self.succeeded(Success::new(event, told)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::ErrorKind;
    use tessera_core::audit::AuditKind;

    use crate::broker::testing::{AGENT, Fixture, ORCHESTRATOR};

    /// Refused: the orchestrator may not request tokens.
    async fn deny(f: &Fixture) {
        let refused = f
            .broker
            .request_token(&f.who(ORCHESTRATOR), f.ask("t1", &["contacts.read"]))
            .await;
        assert_eq!(refused.err().map(|e| e.kind()), Some(ErrorKind::PermissionDenied));
    }

    #[tokio::test]
    async fn too_many_denials_quarantine_until_the_quarantine_ends() {
        let f = Fixture::with_anomaly(2).await;
        f.task("t1").await;
        deny(&f).await;
        assert!(f.broker.admit(&f.who(ORCHESTRATOR)).await.is_ok());
        deny(&f).await;
        assert_eq!(f.audit.of(AuditKind::Quarantined).len(), 1);
        let refused = f.broker.admit(&f.who(ORCHESTRATOR)).await;
        assert!(matches!(refused, Err(BrokerError::Quarantined { .. })));
        assert_eq!(f.audit.last().event, AuditKind::QuarantineRefused);
        // Other identities go on.
        assert!(f.broker.admit(&f.who(AGENT)).await.is_ok());
        f.clock.advance(chrono::Duration::hours(1));
        assert!(
            f.broker.admit(&f.who(ORCHESTRATOR)).await.is_ok(),
            "the quarantine ended"
        );
    }

    #[tokio::test]
    async fn a_quarantine_revokes_the_grants_and_refusals_are_audited_once_a_second() {
        let f = Fixture::with_anomaly(1).await;
        f.task("t1").await;
        f.issue("t1", &["contacts.read"]).await;
        // The agent asks for a scope outside the catalog: denied, then quarantined.
        let refused = f
            .broker
            .request_token(&f.who(AGENT), f.ask("t1", &["contacts.delete"]))
            .await;
        assert!(refused.is_err());
        assert_eq!(f.live("t1").await, 0);
        assert_eq!(f.audit.of(AuditKind::Quarantined).last().unwrap().count, Some(1));
        for _ in 0..3 {
            assert!(f.broker.admit(&f.who(AGENT)).await.is_err());
        }
        assert_eq!(f.audit.of(AuditKind::QuarantineRefused).len(), 1);
        f.clock.advance(chrono::Duration::seconds(1));
        assert!(f.broker.admit(&f.who(AGENT)).await.is_err());
        assert_eq!(f.audit.of(AuditKind::QuarantineRefused).len(), 2);
    }

    #[tokio::test]
    async fn without_anomaly_rules_nobody_is_quarantined() {
        let f = Fixture::new().await;
        f.task("t1").await;
        for _ in 0..30 {
            deny(&f).await;
        }
        assert!(f.broker.admit(&f.who(ORCHESTRATOR)).await.is_ok());
        assert!(f.audit.of(AuditKind::Quarantined).is_empty());
    }
}
