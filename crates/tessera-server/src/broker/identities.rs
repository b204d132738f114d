//! Identities: RevokeIdentity (and disable), EnableIdentity, and what other
//! replicas decided about identities (`refresh_shared`).

use tessera_core::audit::{AuditEvent, AuditKind, Outcome};
use tessera_core::identity::{SpiffeId, VerifiedIdentity};
use tessera_core::policy::Operation;

use super::record::{Metric, Success, Told};
use super::{Asked, Broker, BrokerError};

/// What RevokeIdentity did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentityRevoked {
    /// Grants revoked, delegated ones included.
    pub grants_revoked: u64,
    /// Whether the identity is now disabled.
    pub disabled: bool,
}

impl Broker {
    /// RevokeIdentity: every live grant of `identity` and all delegated
    /// from them die at once. With `disable`, the identity is first marked
    /// disabled in the store (shared by every replica, kept across
    /// restarts): this replica refuses it at once, the others within one
    /// `attestation.reload_interval` ([`Broker::refresh_shared`]); a
    /// second sweep after `disable_settle` revokes any grant another replica
    /// recorded for a request already past its attestation.
    pub async fn revoke_identity(
        &self,
        who: &VerifiedIdentity,
        asked: Asked<(SpiffeId, String)>,
        disable: bool,
    ) -> Result<IdentityRevoked, BrokerError> {
        let allowed = self.authorize(who, Operation::RevokeIdentity).await?;
        let (identity, reason) = asked?;
        let (identity, reason) = (&identity, reason.as_str());
        if !self.registry.contains(identity) {
            return Err(BrokerError::UnknownIdentity(identity.clone()));
        }
        if disable {
            // INVARIANT: disabled before the sweep, so nothing it misses is
            // minted afterwards on this replica.
            let newly = self.store.disable_subject(identity, reason, self.clock.now()).await?;
            self.registry.disable_at_runtime(identity);
            // Its console sessions end now, not at their next request (a
            // re-enable before then must not revive them).
            self.prune_console_sessions();
            // Scheduled before anything else can fail, so that a failed audit
            // below does not leave grants of a disabled identity alive.
            self.sweep_later(identity, reason);
            let mut event = self.event(AuditKind::IdentityDisabled, Outcome::Allow, Some(who));
            event.reason = Some(format!("identity {identity}: {reason}"));
            allowed.stamp(&mut event);
            let told = Told::IdentityDisabled {
                identity,
                by: who.id(),
                reason,
                newly,
            };
            self.succeeded(Success::new(event, told)).await?;
        }
        let revoked = self.store.revoke_subject(identity, reason, self.clock.now()).await?;
        let mut event = self.event(AuditKind::GrantRevoked, Outcome::Allow, Some(who));
        event.reason = Some(format!("identity {identity}: {reason}"));
        event.count = Some(revoked);
        allowed.stamp(&mut event);
        let told = Told::IdentityRevoked {
            identity,
            by: who.id(),
            grants_revoked: revoked,
            reason,
        };
        let metric = Metric::Revoked("identity", revoked);
        self.succeeded(Success::new(event, told).metric(metric)).await?;
        Ok(IdentityRevoked {
            grants_revoked: revoked,
            disabled: disable,
        })
    }

    /// Revokes `identity`'s grants again once every replica has seen its
    /// disable and every request attested before it has ended, unless it
    /// was enabled again meanwhile; audits what it revoked. (The store also
    /// refuses to record a grant of a disabled subject, see
    /// [`Broker::record_grant`]: this sweep is the second line.)
    fn sweep_later(&self, identity: &SpiffeId, reason: &str) {
        let store = self.store.clone();
        let clock = self.clock.clone();
        let audit = self.audit.clone();
        let instance = self.settings.instance_id.clone();
        let after = self.settings.disable_settle;
        let identity = identity.clone();
        let reason = reason.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            match store.disabled_subjects().await {
                Ok(disabled) if !disabled.contains(&identity) => return,
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(identity = %identity, error = %e, "second sweep of a disabled identity: cannot read the disabled set; sweeping anyway");
                }
            }
            let now = clock.now();
            match store.revoke_subject(&identity, &reason, now).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::warn!(
                        event = "identity_revoked",
                        identity = %identity,
                        grants_revoked = n,
                        "grants recorded while the identity was being disabled revoked"
                    );
                    crate::telemetry::revoked("identity", n);
                    let mut event = AuditEvent::new(AuditKind::GrantRevoked, now, Outcome::Allow, instance);
                    event.reason = Some(format!("identity {identity}: {reason} (second sweep after disabling)"));
                    event.count = Some(n);
                    if let Err(e) = audit.record(event).await {
                        tracing::error!(identity = %identity, error = %e, "second sweep: audit record not written");
                    }
                }
                Err(e) => {
                    tracing::error!(identity = %identity, error = %e, "second sweep of a disabled identity failed");
                }
            }
        });
    }

    /// EnableIdentity: lifts an operator's disable. A `disabled = true` in
    /// the configuration stays. Returns whether there was a disable to lift.
    pub async fn enable_identity(
        &self,
        who: &VerifiedIdentity,
        asked: Asked<(SpiffeId, String)>,
    ) -> Result<bool, BrokerError> {
        let allowed = self.authorize(who, Operation::EnableIdentity).await?;
        let (identity, reason) = asked?;
        let (identity, reason) = (&identity, reason.as_str());
        if !self.registry.contains(identity) {
            return Err(BrokerError::UnknownIdentity(identity.clone()));
        }
        let lifted = self.store.enable_subject(identity).await?;
        self.registry.enable_at_runtime(identity);
        let restore = || async {
            // INVARIANT: no enable without its audit record: put the disable back.
            if lifted {
                let _ = self
                    .store
                    .disable_subject(
                        identity,
                        "re-disabled: the enable could not be audited",
                        self.clock.now(),
                    )
                    .await;
                self.registry.disable_at_runtime(identity);
            }
        };
        let mut event = self.event(AuditKind::IdentityEnabled, Outcome::Allow, Some(who));
        event.reason = Some(format!("identity {identity}: {reason}"));
        allowed.stamp(&mut event);
        let told = Told::IdentityEnabled {
            identity,
            by: who.id(),
            reason,
            lifted,
        };
        if let Err(e) = self.succeeded(Success::new(event, told)).await {
            restore().await;
            return Err(e);
        }
        Ok(lifted)
    }

    /// Reads what other replicas decided about identities from the store:
    /// the identities operators disabled (into the registry) and, with
    /// anomaly rules on, the quarantines in force (into this replica's
    /// list). Every replica, every `attestation.reload_interval`.
    pub async fn refresh_shared(&self) -> Result<(), BrokerError> {
        // Read before the store: a local disable or enable made meanwhile
        // wins over this (older) read.
        let generation = self.registry.runtime_generation();
        let disabled = self.store.disabled_subjects().await?;
        self.registry.set_runtime_disabled(disabled, generation);
        if let Some(anomaly) = &self.anomaly {
            let now = self.clock.now();
            let shared = self.store.quarantined_subjects(now).await?;
            let mut a = anomaly.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for q in shared {
                let known = a.quarantined.is_quarantined(&q.subject, now);
                if known.is_none_or(|until| until < q.until) {
                    a.quarantined.quarantine(&q.subject, q.until);
                    a.why.insert(q.subject.clone(), q.why);
                    self.policy.forget_decisions();
                }
            }
        }
        // Disables and quarantines decided by other replicas end this
        // replica's console sessions too.
        self.prune_console_sessions();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::ErrorKind;
    use tessera_core::audit::AuditKind;
    use tessera_core::identity::AttestationMethod;

    use crate::broker::testing::{AGENT, Fixture, OPERATOR, id};

    #[tokio::test]
    async fn revoking_an_identity_revokes_its_grants_and_disabling_refuses_it() {
        let f = Fixture::new().await;
        f.task("t1").await;
        f.issue("t1", &["contacts.read"]).await;
        let done = f
            .broker
            .revoke_identity(&f.who(OPERATOR), Ok((id(AGENT), "leaked".into())), true)
            .await
            .unwrap();
        assert_eq!(
            done,
            IdentityRevoked {
                grants_revoked: 1,
                disabled: true
            }
        );
        assert_eq!(f.live("t1").await, 0);
        let kinds: Vec<_> = f.audit.records().iter().map(|r| r.event).collect();
        assert!(
            kinds.ends_with(&[AuditKind::IdentityDisabled, AuditKind::GrantRevoked]),
            "{kinds:?}"
        );
        let refused = f
            .broker
            .attest_by(&id(AGENT), AttestationMethod::X509, "sha256:00".into());
        assert!(refused.is_err(), "a disabled identity is refused at attestation");

        assert!(
            f.broker
                .enable_identity(&f.who(OPERATOR), Ok((id(AGENT), "fixed".into())))
                .await
                .unwrap()
        );
        assert_eq!(f.audit.last().event, AuditKind::IdentityEnabled);
        assert!(
            f.broker
                .attest_by(&id(AGENT), AttestationMethod::X509, "sha256:00".into())
                .is_ok()
        );
    }

    #[tokio::test]
    async fn only_operators_revoke_or_enable_identities() {
        let f = Fixture::new().await;
        let refused = f
            .broker
            .revoke_identity(&f.who(AGENT), Ok((id(AGENT), "x".into())), true)
            .await;
        assert_eq!(refused.err().map(|e| e.kind()), Some(ErrorKind::PermissionDenied));
        assert!(!f.broker.registry().is_disabled(&id(AGENT)));
        let refused = f
            .broker
            .enable_identity(&f.who(AGENT), Ok((id(AGENT), "x".into())))
            .await;
        assert_eq!(refused.err().map(|e| e.kind()), Some(ErrorKind::PermissionDenied));
        let unknown = f
            .broker
            .revoke_identity(&f.who(OPERATOR), Ok((id("spiffe://td/nobody"), "x".into())), false)
            .await;
        assert_eq!(unknown.err().map(|e| e.kind()), Some(ErrorKind::NotFound));
    }

    #[tokio::test]
    async fn an_enable_that_cannot_be_audited_puts_the_disable_back() {
        let f = Fixture::new().await;
        f.broker
            .revoke_identity(&f.who(OPERATOR), Ok((id(AGENT), "x".into())), true)
            .await
            .unwrap();
        f.audit.fail(true);
        let failed = f
            .broker
            .enable_identity(&f.who(OPERATOR), Ok((id(AGENT), "x".into())))
            .await;
        assert_eq!(failed.err().map(|e| e.kind()), Some(ErrorKind::Unavailable));
        assert!(f.broker.registry().is_disabled(&id(AGENT)));
    }

    #[tokio::test]
    async fn a_disable_made_by_another_replica_is_read_from_the_store() {
        let f = Fixture::new().await;
        tessera_store::GrantStore::disable_subject(&*f.store, &id(AGENT), "elsewhere", f.broker.now())
            .await
            .unwrap();
        assert!(!f.broker.registry().is_disabled(&id(AGENT)));
        f.broker.refresh_shared().await.unwrap();
        assert!(f.broker.registry().is_disabled(&id(AGENT)));
    }
}
