//! Where outcomes are recorded: the audit sink, the records every use case
//! writes (with the caller and the policy set in force), and the fail-closed
//! rule: an operation whose record cannot be written does not happen.

use tessera_core::audit::{Actor, AuditEvent, AuditKind, Outcome};
use tessera_core::grant::Grant;
use tessera_core::identity::VerifiedIdentity;
use tessera_core::ttl::Ttl;

use super::{Broker, BrokerError, policy};
use crate::audit::AuditError;

/// Where audit records go: the chained file log in production.
#[async_trait::async_trait]
pub trait AuditSink: Send + Sync {
    /// Writes one record, durably per the sink's policy, within its time
    /// bound; an error means the record may not exist, so the operation
    /// it records must not happen.
    async fn record(&self, event: AuditEvent) -> Result<(), AuditError>;
}

fn actor(who: &VerifiedIdentity) -> Actor {
    let identity = who.identity();
    let mut actor = Actor::new(identity.id.to_string());
    actor.kind = Some(identity.kind.to_string());
    actor.owner = Some(identity.owner.clone());
    actor.attestation = Some(who.method().to_string());
    actor.evidence = Some(who.evidence().to_owned());
    actor
}

impl Broker {
    pub(super) fn event(&self, kind: AuditKind, decision: Outcome, who: Option<&VerifiedIdentity>) -> AuditEvent {
        let mut event = AuditEvent::new(kind, self.clock.now(), decision, self.settings.instance_id.clone());
        event.who = who.map(actor);
        if who.is_some() {
            // The policy set in force when a caller acted; decisions overwrite it with their own.
            event.policy_hash = Some(self.policy_hash().to_string());
        }
        event.request_id = crate::telemetry::current_request_id();
        event
    }

    pub(super) async fn audit(&self, event: AuditEvent) -> Result<(), BrokerError> {
        let written = self.audit.record(event).await.map_err(|e| {
            tracing::error!(error = %e, "audit record not written; failing the operation");
            crate::telemetry::audit_failure();
            BrokerError::Audit(e)
        });
        self.audit_ok
            .store(written.is_ok(), std::sync::atomic::Ordering::Relaxed);
        written
    }

    /// Whether the audit trail takes records: true while the last one was
    /// written; after a failure, a probe record (`audit_recovered`) is
    /// tried, so health can come back without traffic. Called by the
    /// health loop.
    pub async fn audit_healthy(&self) -> bool {
        if self.audit_ok.load(std::sync::atomic::Ordering::Relaxed) {
            return true;
        }
        let mut event = self.event(AuditKind::AuditRecovered, Outcome::Allow, None);
        event.reason = Some("the audit trail takes records again after a failure".into());
        self.audit(event).await.is_ok()
    }

    /// Audits a refusal, then returns it (UNAVAILABLE if it cannot be audited).
    pub(super) async fn refuse<T>(&self, mut event: AuditEvent, err: BrokerError) -> Result<T, BrokerError> {
        event.reason = Some(err.to_string());
        policy::stamp_refusal(&mut event, &err);
        self.audit(event).await?;
        Err(err)
    }

    /// The audit record of a grant just issued to (or delegated by) `who`.
    pub(super) fn grant_event(&self, kind: AuditKind, who: &VerifiedIdentity, grant: &Grant, ttl: Ttl) -> AuditEvent {
        let mut event = self.event(kind, Outcome::Allow, Some(who));
        event.task_id = Some(grant.task_id.to_string());
        event.grant_id = Some(grant.id.to_string());
        event.audience = Some(grant.audience.to_string());
        event.scopes = grant.scopes.iter().map(ToString::to_string).collect();
        event.class = Some(grant.class.to_string());
        event.ttl_secs = Some(ttl.as_secs());
        event.schema_version = self.catalog.api(&grant.audience).map(|a| a.schema_version.clone());
        event
    }
}

#[cfg(test)]
mod tests {
    use tessera_core::audit::AuditKind;

    use crate::broker::testing::{AGENT, Fixture, ORCHESTRATOR};

    #[tokio::test]
    async fn records_name_the_caller_and_the_policy_set_in_force() {
        let f = Fixture::new().await;
        f.task("t1").await;
        let record = f.audit.last();
        let who = record.who.unwrap();
        assert_eq!(who.identity, ORCHESTRATOR);
        assert_eq!(who.attestation.as_deref(), Some("x509"));
        assert_eq!(record.policy_hash.as_deref(), Some(&*f.broker.policy_hash()));
        assert_eq!(record.instance, "test-1");
    }

    #[tokio::test]
    async fn health_follows_the_audit_trail_and_comes_back_by_itself() {
        let f = Fixture::new().await;
        f.task("t1").await;
        assert!(f.broker.audit_healthy().await);
        f.audit.fail(true);
        assert!(
            f.broker
                .request_token(&f.who(AGENT), &f.ask("t1", &["contacts.read"]))
                .await
                .is_err()
        );
        assert!(!f.broker.audit_healthy().await);
        f.audit.fail(false);
        assert!(f.broker.audit_healthy().await, "a probe record brings health back");
        assert_eq!(f.audit.last().event, AuditKind::AuditRecovered);
    }
}
