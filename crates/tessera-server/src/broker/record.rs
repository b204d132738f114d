//! Where outcomes are recorded: the audit sink, the records every use case
//! writes (with the caller and the policy set in force), and the fail-closed
//! rule: an operation whose record cannot be written does not happen.

use tessera_core::audit::{Actor, AuditEvent, AuditKind, Outcome};
use tessera_core::grant::Grant;
use tessera_core::identity::VerifiedIdentity;
use tessera_core::ttl::Ttl;

mod told;

pub(super) use self::told::{DenialLog, Metric, Told};
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
        event.console_session = super::console::current_session();
        if let Some(grant) = super::oauth::current_grant() {
            event.grant_type = Some(grant.grant_type.to_owned());
            event.client_auth = Some(grant.client_auth.to_owned());
        }
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

    /// A refusal of `who` to record as a `kind` record; see [`Broker::deny`].
    pub(super) fn denial<'a>(&self, kind: AuditKind, who: Option<&'a VerifiedIdentity>) -> Denial<'a> {
        Denial::of(self.event(kind, Outcome::Deny, who), who)
    }

    /// Records a refusal, the one way every use case does: its log line,
    /// its decision metric, its audit record (reason and refusing policies
    /// taken from `err` unless the denial names its own reason), then the
    /// denial count toward the anomaly rule; then answers `err`, or
    /// UNAVAILABLE when the record could not be written (the refusal still
    /// counts).
    pub(super) async fn deny<T>(&self, denial: Denial<'_>, err: BrokerError) -> Result<T, BrokerError> {
        let Denial {
            mut event,
            who,
            metric,
            counted,
            log,
            reason,
        } = denial;
        if let (Some(log), Some(who)) = (log, who) {
            log.write(who, &event, &err);
        }
        if let Some(operation) = metric {
            crate::telemetry::decision(operation, false);
        }
        event.reason = Some(reason.unwrap_or_else(|| err.to_string()));
        policy::stamp_refusal(&mut event, &err);
        let audited = self.audit(event).await;
        if counted && let Some(who) = who {
            self.count_denial(who).await;
        }
        audited?;
        Err(err)
    }

    /// Records the success of a grant just recorded in the store (a token
    /// minted or delegated): if its audit record cannot be written, the
    /// grant is revoked again before the error is answered, so no token
    /// exists without its record.
    pub(super) async fn succeed_with_grant(
        &self,
        success: Success<'_>,
        grant: &tessera_core::grant::GrantId,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), BrokerError> {
        let recorded = self.succeed(success).await;
        if recorded.is_err() {
            // INVARIANT: no token without its audit record: take the grant back.
            if let Err(e) = self.store.revoke_grant(grant, "audit trail unavailable", now).await {
                // The token never left the broker; the grant dies at its expiry.
                tracing::error!(grant_id = %grant, error = %e, "unaudited grant not taken back");
            }
        }
        recorded
    }

    /// Records a success whose effect waits for its record (a token, a
    /// task, an approval): the audit record first; only once it is written,
    /// the log line and the metric. A record that cannot be written is
    /// UNAVAILABLE, and the caller takes its effect back.
    pub(super) async fn succeed(&self, success: Success<'_>) -> Result<(), BrokerError> {
        let Success { event, metric, told } = success;
        self.audit(event).await?;
        told.write();
        if let Some(metric) = metric {
            metric.count();
        }
        Ok(())
    }

    /// Records a success whose effect stands whatever the record (a
    /// revocation, a disable): the log line and the metric first, then the
    /// audit record; a record that cannot be written is UNAVAILABLE.
    pub(super) async fn succeeded(&self, success: Success<'_>) -> Result<(), BrokerError> {
        let Success { event, metric, told } = success;
        told.write();
        if let Some(metric) = metric {
            metric.count();
        }
        self.audit(event).await
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

/// A refusal on its way to the record: built by [`Broker::denial`] (or
/// [`Denial::of`] a record already filled in), written by [`Broker::deny`].
#[must_use = "a denial is recorded only by Broker::deny"]
pub(super) struct Denial<'a> {
    /// The audit record; use cases fill in what they know of the request.
    pub(super) event: AuditEvent,
    who: Option<&'a VerifiedIdentity>,
    metric: Option<&'static str>,
    counted: bool,
    log: Option<DenialLog>,
    reason: Option<String>,
}

impl<'a> Denial<'a> {
    /// A denial recorded as `event` (its decision is set to deny).
    pub(super) fn of(mut event: AuditEvent, who: Option<&'a VerifiedIdentity>) -> Self {
        event.decision = Outcome::Deny;
        Self {
            event,
            who,
            metric: None,
            counted: false,
            log: None,
            reason: None,
        }
    }

    /// Counted in `tessera_decisions_total{operation, result="denied"}`.
    pub(super) fn metric(mut self, operation: &'static str) -> Self {
        self.metric = Some(operation);
        self
    }

    /// Counted toward the anomaly rule (a denial the caller could have avoided).
    pub(super) fn counted(mut self) -> Self {
        self.counted = true;
        self
    }

    /// Counted toward the anomaly rule when `yes`.
    pub(super) fn counted_if(mut self, yes: bool) -> Self {
        self.counted = yes;
        self
    }

    /// Logged at info as `log`.
    pub(super) fn logged(mut self, log: DenialLog) -> Self {
        self.log = Some(log);
        self
    }

    /// Recorded with this reason instead of the error's text.
    pub(super) fn reason(mut self, reason: String) -> Self {
        self.reason = Some(reason);
        self
    }
}

/// A success on its way to the record: its audit record, what is logged
/// and what is counted. Written by [`Broker::succeed`] or
/// [`Broker::succeeded`].
#[must_use = "a success is recorded only by Broker::succeed or Broker::succeeded"]
pub(super) struct Success<'a> {
    /// The audit record.
    pub(super) event: AuditEvent,
    metric: Option<Metric>,
    told: Told<'a>,
}

impl<'a> Success<'a> {
    /// `event`, logged as `told`.
    pub(super) fn new(event: AuditEvent, told: Told<'a>) -> Self {
        Self {
            event,
            metric: None,
            told,
        }
    }

    /// Counted as `metric`.
    pub(super) fn metric(mut self, metric: Metric) -> Self {
        self.metric = Some(metric);
        self
    }

    /// Its audit record, and what is logged and counted once the effect
    /// stands: for a use case that writes the record alongside its effect
    /// (see `Broker::mint`) and announces only once both succeeded.
    pub(super) fn split(self) -> (AuditEvent, Announcement<'a>) {
        let Self { event, metric, told } = self;
        (event, Announcement { metric, told })
    }
}

/// The log line and the metric of a success whose record is written
/// (see [`Success::split`]).
#[must_use = "a success is logged and counted only by Announcement::write"]
pub(super) struct Announcement<'a> {
    metric: Option<Metric>,
    told: Told<'a>,
}

impl Announcement<'_> {
    /// Logs and counts the success.
    pub(super) fn write(self) {
        self.told.write();
        if let Some(metric) = self.metric {
            metric.count();
        }
    }
}

#[cfg(test)]
mod tests {
    use tessera_core::audit::AuditKind;

    use super::*;
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
                .request_token(&f.who(AGENT), f.ask("t1", &["contacts.read"]))
                .await
                .is_err()
        );
        assert!(!f.broker.audit_healthy().await);
        f.audit.fail(false);
        assert!(f.broker.audit_healthy().await, "a probe record brings health back");
        assert_eq!(f.audit.last().event, AuditKind::AuditRecovered);
    }

    #[tokio::test]
    async fn a_refusal_is_recorded_with_the_error_as_its_reason_unless_it_names_one() {
        let f = Fixture::new().await;
        let who = f.who(AGENT);
        let denial = f.broker.denial(AuditKind::TokenReleased, Some(&who));
        let answered: Result<(), _> = f.broker.deny(denial, BrokerError::NotLiveToken("token")).await;
        assert!(matches!(answered, Err(BrokerError::NotLiveToken("token"))));
        let record = f.audit.last();
        assert_eq!(record.decision, tessera_core::audit::Outcome::Deny);
        assert_eq!(
            record.reason.as_deref(),
            Some("token: not a live token issued by this broker")
        );
        let denial = f
            .broker
            .denial(AuditKind::AdminDenied, Some(&who))
            .reason("Mine: no".into());
        let _: Result<(), _> = f.broker.deny(denial, BrokerError::NotLiveToken("token")).await;
        assert_eq!(f.audit.last().reason.as_deref(), Some("Mine: no"));
    }

    #[tokio::test]
    async fn a_refusal_that_cannot_be_recorded_is_unavailable_and_still_counts() {
        let f = Fixture::with_anomaly(1).await;
        let who = f.who(AGENT);
        f.audit.fail(true);
        let denial = f.broker.denial(AuditKind::TokenDenied, Some(&who)).counted();
        let answered: Result<(), _> = f.broker.deny(denial, BrokerError::NotLiveToken("token")).await;
        assert_eq!(
            answered.err().map(|e| e.kind()),
            Some(tessera_core::ErrorKind::Unavailable)
        );
        f.audit.fail(false);
        assert!(f.broker.admit(&who).await.is_err(), "the refusal counted: quarantined");
        // An uncounted refusal does not quarantine.
        let f = Fixture::with_anomaly(1).await;
        let who = f.who(AGENT);
        let denial = f.broker.denial(AuditKind::TokenDenied, Some(&who));
        let _: Result<(), _> = f.broker.deny(denial, BrokerError::NotLiveToken("token")).await;
        assert!(f.broker.admit(&who).await.is_ok());
    }
}
