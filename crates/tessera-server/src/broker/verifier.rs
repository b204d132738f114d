//! What resource servers ask: Introspect, ReportMisuse and
//! WatchRevocations.

use std::time::Duration;

use tessera_core::anomaly::Trigger;
use tessera_core::audit::{AuditKind, Outcome};
use tessera_core::grant::{Grant, GrantId};
use tessera_core::identity::{SpiffeId, VerifiedIdentity};
use tessera_core::policy::Operation;
use tessera_core::task::TaskState;
use tessera_core::token::{AccessClaims, JwsError};
use tessera_store::{FeedBatch, FeedPosition};

use super::record::{Metric, Success, Told};
use super::{Broker, BrokerError};

impl Broker {
    /// Introspect: the claims of a live token, or `None` for any token that
    /// is not live (malformed, forged, expired, revoked or unknown alike).
    /// Store failures are errors, never "inactive" and never "active".
    pub async fn introspect(&self, who: &VerifiedIdentity, token: &str) -> Result<Option<AccessClaims>, BrokerError> {
        self.authorize(who, Operation::Introspect).await?;
        Ok(self.live(token, self.clock.now()).await?.map(|(claims, _)| claims))
    }

    /// ReportMisuse: a resource server saw `presenter` present `token`. A
    /// live token whose holder (`client_id`) is someone else is misuse:
    /// audited as `token_misuse`, and with anomaly rules on, the token's
    /// task is revoked (every grant of it: the token leaked, so may its
    /// siblings) and the presenter quarantined. Returns the grants revoked,
    /// or `None` when it was no misuse (the holder itself, or a dead token).
    pub async fn report_misuse(
        &self,
        who: &VerifiedIdentity,
        token: &str,
        presenter: &SpiffeId,
    ) -> Result<Option<u64>, BrokerError> {
        // An action of its own: a report can revoke a task and quarantine
        // an identity, so policy decides who may make one (verifiers).
        self.authorize(who, Operation::ReportMisuse).await?;
        let now = self.clock.now();
        match self.live(token, now).await? {
            Some((claims, grant)) if claims.client_id != presenter.as_str() => {
                self.misused(who, presenter, &grant, now).await.map(Some)
            }
            _ => Ok(None),
        }
    }

    /// The claims and grant of `token` if it verifies and its grant is live.
    async fn live(
        &self,
        token: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<(AccessClaims, Grant)>, BrokerError> {
        let jwks = self.jwks().await?;
        let claims = match tessera_core::token::verify_access_token(
            token,
            &jwks,
            &self.settings.issuer,
            now,
            self.settings.leeway_secs,
        ) {
            Ok(claims) => claims,
            Err(e) => {
                log_rejected(&e);
                return Ok(None);
            }
        };
        let Ok(id) = GrantId::parse(&claims.jti) else {
            return Ok(None);
        };
        let Some(grant) = self.store.grant(&id).await? else {
            return Ok(None);
        };
        // The holder is `client_id` (a delegated token's `sub` is its chain's root).
        let matches = grant.subject.as_str() == claims.client_id
            && grant.task_id.as_str() == claims.task_id
            && grant.audience.as_str() == claims.aud;
        // Expiry is judged on the grant with no leeway: introspection is authoritative.
        Ok((matches && grant.is_live_at(now)).then_some((claims, grant)))
    }

    /// A verifier caught `presenter` with `grant`'s token: audit it, and
    /// with anomaly rules on, end the grant's task (the token leaked, so may
    /// its siblings) and quarantine the presenter on this replica.
    async fn misused(
        &self,
        reporter: &VerifiedIdentity,
        presenter: &SpiffeId,
        grant: &Grant,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<u64, BrokerError> {
        let mut event = self.event(AuditKind::TokenMisuse, Outcome::Deny, Some(reporter));
        event.task_id = Some(grant.task_id.to_string());
        event.grant_id = Some(grant.id.to_string());
        let what = format!(
            "`{presenter}` presented a token of task `{}` issued to `{}`",
            grant.task_id, grant.subject
        );
        let Some(rule) = self.settings.anomaly else {
            event.reason = Some(format!("{what}; anomaly rules off: nothing revoked"));
            return self.audit(event).await.map(|()| 0);
        };
        let trigger = Trigger::misuse(
            &rule,
            presenter.clone(),
            grant.subject.as_str(),
            grant.task_id.as_str(),
            now,
        );
        if let Some(anomaly) = &self.anomaly {
            anomaly
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .quarantine(&trigger, now);
        }
        self.prune_console_sessions();
        self.share_quarantine(&trigger, now).await;
        let revoked = self
            .store
            .end_task(&grant.task_id, TaskState::Revoked, &format!("anomaly: {what}"), now)
            .await;
        let shown = match &revoked {
            Ok(ended) => ended.grants_revoked.to_string(),
            Err(e) => {
                tracing::error!(task = %grant.task_id, error = %e, "anomaly: revoking the misused token's task failed");
                "failed".to_owned()
            }
        };
        event.reason = Some(format!(
            "{what}; task revoked (grants: {shown}); `{presenter}` quarantined until {}",
            trigger.until
        ));
        let told = Told::TokenMisuse {
            presenter,
            task: &grant.task_id,
            grants_revoked: &shown,
            until: trigger.until,
        };
        let mut success = Success::new(event, told);
        if let Ok(ended) = &revoked {
            success.event.count = Some(ended.grants_revoked);
            success = success.metric(Metric::Revoked("anomaly", ended.grants_revoked));
        }
        // The task is revoked and the presenter quarantined whatever the record.
        self.succeeded(success).await?;
        Ok(revoked?.grants_revoked)
    }

    /// WatchRevocations: one read of the feed.
    pub async fn read_revocations(
        &self,
        who: &VerifiedIdentity,
        after: Option<&FeedPosition>,
        max: usize,
        wait: Duration,
    ) -> Result<FeedBatch, BrokerError> {
        self.authorize(who, Operation::WatchRevocations).await?;
        Ok(self.store.read_revocations(after, max, wait).await?)
    }
}

pub(super) fn log_rejected(e: &JwsError) {
    tracing::debug!(reason = %e, "introspected token rejected");
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::ErrorKind;
    use tessera_core::audit::{AuditKind, Outcome};
    use tessera_core::task::TaskState;

    use crate::broker::testing::{AGENT, AGENT2, Fixture, OPERATOR, VERIFIER, id};

    #[tokio::test]
    async fn introspection_answers_live_tokens_only() {
        let f = Fixture::new().await;
        f.task("t1").await;
        let issued = f.issue("t1", &["contacts.read"]).await;
        let verifier = f.who(VERIFIER);
        let claims = f.broker.introspect(&verifier, &issued.token).await.unwrap().unwrap();
        assert_eq!((claims.client_id.as_str(), claims.task_id.as_str()), (AGENT, "t1"));
        assert!(f.broker.introspect(&verifier, "e30.e30.e30").await.unwrap().is_none());
        f.broker
            .revoke_grant(&f.who(OPERATOR), &issued.grant.id, "x")
            .await
            .unwrap();
        assert!(f.broker.introspect(&verifier, &issued.token).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn only_verifiers_introspect() {
        let f = Fixture::new().await;
        f.task("t1").await;
        let issued = f.issue("t1", &["contacts.read"]).await;
        let refused = f.broker.introspect(&f.who(AGENT2), &issued.token).await;
        assert_eq!(refused.err().map(|e| e.kind()), Some(ErrorKind::PermissionDenied));
        let record = f.audit.last();
        assert_eq!((record.event, record.decision), (AuditKind::AdminDenied, Outcome::Deny));
        assert!(record.reason.unwrap().starts_with("Introspect: "));
    }

    #[tokio::test]
    async fn a_token_presented_by_its_holder_is_no_misuse() {
        let f = Fixture::new().await;
        f.task("t1").await;
        let issued = f.issue("t1", &["contacts.read"]).await;
        let verdict = f
            .broker
            .report_misuse(&f.who(VERIFIER), &issued.token, &id(AGENT))
            .await;
        assert_eq!(verdict.unwrap(), None);
    }

    #[tokio::test]
    async fn misuse_is_audited_and_with_anomaly_rules_ends_the_task() {
        let f = Fixture::new().await;
        f.task("t1").await;
        let issued = f.issue("t1", &["contacts.read"]).await;
        let verdict = f
            .broker
            .report_misuse(&f.who(VERIFIER), &issued.token, &id(AGENT2))
            .await;
        assert_eq!(verdict.unwrap(), Some(0), "anomaly rules off: nothing revoked");
        assert_eq!(f.audit.last().event, AuditKind::TokenMisuse);
        assert_eq!(f.live("t1").await, 1);

        let f = Fixture::with_anomaly(5).await;
        f.task("t1").await;
        let issued = f.issue("t1", &["contacts.read"]).await;
        let verdict = f
            .broker
            .report_misuse(&f.who(VERIFIER), &issued.token, &id(AGENT2))
            .await;
        assert_eq!(verdict.unwrap(), Some(1));
        let task = f
            .broker
            .get_task(&f.who(OPERATOR), &issued.grant.task_id)
            .await
            .unwrap()
            .0;
        assert_eq!(task.state, TaskState::Revoked);
        let refused = f.broker.admit(&f.who(AGENT2)).await;
        assert!(
            matches!(refused, Err(BrokerError::Quarantined { .. })),
            "the presenter is quarantined"
        );
    }
}
