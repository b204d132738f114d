//! Attestation at the broker: binding verified evidence to a registered
//! identity, and auditing refusals.

use tessera_core::audit::{Actor, AuditKind, Outcome};
use tessera_core::identity::{AttestationMethod, IdentityError, IdentityRegistry, SpiffeId, VerifiedIdentity};

use super::{Broker, BrokerError};

impl Broker {
    /// The identity registry (a handle: reloads replace its contents).
    pub fn registry(&self) -> &IdentityRegistry {
        &self.registry
    }

    /// Binds `id`, proven by `method`, to its registered identity: refused
    /// if unknown, disabled, or not allowed to attest by `method`.
    pub fn attest_by(
        &self,
        id: &SpiffeId,
        method: AttestationMethod,
        evidence: String,
    ) -> Result<VerifiedIdentity, BrokerError> {
        Ok(VerifiedIdentity::attested(&self.registry, id, method, evidence)?)
    }

    /// Records a caller refused at attestation by `method`; returns the
    /// error to answer with. Refusals are audited at most once a second per
    /// claimed identity (or evidence), and at most [`REFUSALS_PER_SOURCE`] a
    /// second per `source` address, so a caller cannot flood the trail, not
    /// even with fresh evidence for every attempt.
    pub async fn attestation_refused_by(
        &self,
        method: AttestationMethod,
        claimed: Option<&SpiffeId>,
        evidence: Option<&str>,
        reason: &str,
        source: Option<std::net::IpAddr>,
    ) -> BrokerError {
        let mut event = self.event(AuditKind::AttestationRefused, Outcome::Deny, None);
        crate::telemetry::decision("attest", false);
        let mut actor = Actor::new(claimed.map_or_else(|| "(unattested)".to_owned(), ToString::to_string));
        actor.attestation = Some(method.to_string());
        actor.evidence = evidence.map(str::to_owned);
        event.who = Some(actor);
        event.reason = Some(reason.to_owned());
        let refused = BrokerError::Identity(IdentityError::Refused(reason.to_owned()));
        let key = format!(
            "{method}|{}",
            claimed
                .map(ToString::to_string)
                .or_else(|| evidence.map(str::to_owned))
                .unwrap_or_default()
        );
        let now = self.clock.now();
        {
            let mut seen = self
                .refusals_audited
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if seen
                .get(&key)
                .is_some_and(|at| now - *at < chrono::Duration::seconds(1))
            {
                tracing::debug!(caller = %key, "attestation refusal not audited again within a second");
                return refused;
            }
            if let Some(ip) = source {
                let mut sources = self
                    .refusal_sources
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if sources.len() >= REFUSAL_SAMPLES && !sources.contains_key(&ip) {
                    sources.clear();
                }
                let (since, count) = sources.entry(ip).or_insert((now, 0));
                if now - *since >= chrono::Duration::seconds(1) {
                    (*since, *count) = (now, 0);
                }
                if *count >= REFUSALS_PER_SOURCE {
                    metrics::counter!("tessera_attestation_refusals_unaudited_total", "method" => method.as_str())
                        .increment(1);
                    return refused;
                }
                *count += 1;
            }
            if seen.len() >= REFUSAL_SAMPLES {
                seen.clear();
            }
            seen.insert(key, now);
        }
        match self.audit(event).await {
            Ok(()) => refused,
            Err(e) => e,
        }
    }
}

/// Most distinct refused callers remembered for audit sampling.
const REFUSAL_SAMPLES: usize = 10_000;

/// Most attestation refusals audited per source address per second; the
/// rest are counted (`tessera_attestation_refusals_unaudited_total`).
const REFUSALS_PER_SOURCE: u32 = 50;

impl Broker {
    /// Records a caller refused at mTLS attestation; returns the error to
    /// answer with. See [`Broker::attestation_refused_by`].
    pub async fn attestation_refused(
        &self,
        claimed: Option<&SpiffeId>,
        evidence: Option<&str>,
        reason: &str,
        source: Option<std::net::IpAddr>,
    ) -> BrokerError {
        self.attestation_refused_by(AttestationMethod::X509, claimed, evidence, reason, source)
            .await
    }

    /// Binds a verified SVID to its registered identity.
    pub fn attest(&self, id: &SpiffeId, evidence: String) -> Result<VerifiedIdentity, BrokerError> {
        Ok(VerifiedIdentity::attested(
            &self.registry,
            id,
            AttestationMethod::X509,
            evidence,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::ErrorKind;
    use tessera_core::audit::AuditKind;

    use crate::broker::testing::{AGENT, Fixture, id};

    #[tokio::test]
    async fn an_unregistered_identity_is_refused() {
        let f = Fixture::new().await;
        assert!(f.broker.attest(&id(AGENT), "sha256:00".into()).is_ok());
        let refused = f.broker.attest(&id("spiffe://td/nobody"), "sha256:00".into());
        assert_eq!(refused.err().map(|e| e.kind()), Some(ErrorKind::Unauthenticated));
    }

    #[tokio::test]
    async fn refusals_are_audited_once_a_second_per_caller() {
        let f = Fixture::new().await;
        let nobody = id("spiffe://td/nobody");
        for _ in 0..3 {
            let err = f.broker.attestation_refused(Some(&nobody), None, "unknown", None).await;
            assert_eq!(err.kind(), ErrorKind::Unauthenticated);
        }
        assert_eq!(f.audit.of(AuditKind::AttestationRefused).len(), 1);
        f.clock.advance(chrono::Duration::seconds(1));
        f.broker.attestation_refused(Some(&nobody), None, "unknown", None).await;
        assert_eq!(f.audit.of(AuditKind::AttestationRefused).len(), 2);
    }

    #[tokio::test]
    async fn refusals_per_source_address_are_capped() {
        let f = Fixture::new().await;
        let source = Some(std::net::IpAddr::from([192, 0, 2, 1]));
        for n in 0..(REFUSALS_PER_SOURCE + 10) {
            let claimed = id(&format!("spiffe://td/fresh-{n}"));
            f.broker
                .attestation_refused(Some(&claimed), None, "unknown", source)
                .await;
        }
        let audited = f.audit.of(AuditKind::AttestationRefused).len();
        assert_eq!(audited, REFUSALS_PER_SOURCE as usize);
    }

    #[tokio::test]
    async fn a_refusal_that_cannot_be_audited_is_unavailable() {
        let f = Fixture::new().await;
        f.audit.fail(true);
        let err = f.broker.attestation_refused(None, Some("sha256:00"), "bad", None).await;
        assert_eq!(err.kind(), ErrorKind::Unavailable);
    }
}
