//! What resource servers ask: Introspect, ReportMisuse and
//! WatchRevocations.

use std::time::Duration;

use tessera_core::anomaly::Trigger;
use tessera_core::audit::{AuditKind, Outcome};
use tessera_core::grant::{Grant, GrantId};
use tessera_core::identity::{Role, SpiffeId, VerifiedIdentity};
use tessera_core::policy::Operation;
use tessera_core::task::TaskState;
use tessera_core::token::{AccessClaims, JwsError};
use tessera_store::{FeedBatch, FeedPosition};

use super::record::{Metric, Success, Told};
use super::{Broker, BrokerError};

/// Most misuse reports one reporter may make per [`REPORT_WINDOW`]; more are
/// RESOURCE_EXHAUSTED (a report can revoke a task, so it is never free).
pub(super) const MAX_REPORTS_PER_WINDOW: usize = 20;
/// The window misuse reports are counted and de-duplicated in.
const REPORT_WINDOW: chrono::Duration = chrono::Duration::seconds(60);
/// Most reporters remembered at once (the map is emptied past it: a reporter
/// must be a registered verifier, so this bounds memory, not fairness).
const MAX_REPORTERS: usize = 4096;

/// One reporter's reports in the current window.
#[derive(Debug)]
pub(super) struct ReportWindow {
    since: chrono::DateTime<chrono::Utc>,
    /// (grant, presenter) already reported in this window.
    seen: std::collections::HashSet<(GrantId, SpiffeId)>,
}

/// What a report is, once counted.
enum Counted {
    /// A first report of this (grant, presenter): act on it.
    New,
    /// Reported already in this window: acted on then.
    Duplicate,
}

impl Broker {
    /// Introspect: the claims of a live token, or `None` for any token that
    /// is not live (malformed, forged, expired, revoked or unknown alike),
    /// and for a token whose audience the caller does not serve (a verifier
    /// learns only about its own tokens; operators about every token).
    /// Store failures are errors, never "inactive" and never "active".
    pub async fn introspect(&self, who: &VerifiedIdentity, token: &str) -> Result<Option<AccessClaims>, BrokerError> {
        self.authorize(who, Operation::Introspect).await?;
        let now = self.clock.now();
        if let Some(follower) = &self.follower {
            match follower.answer(token, &self.settings.issuer, self.settings.leeway_secs, now) {
                super::follower::Answer::Live(claims) => {
                    metrics::counter!(crate::telemetry::INTROSPECTIONS, "from" => "memory").increment(1);
                    // The claims are the grant's (signed from it): `aud` is its audience.
                    let learns =
                        tessera_core::task::Audience::parse(&claims.aud).is_ok_and(|aud| self.learns_about(who, &aud));
                    return Ok(learns.then(|| AccessClaims::clone(&claims)));
                }
                super::follower::Answer::NotLive => {
                    metrics::counter!(crate::telemetry::INTROSPECTIONS, "from" => "memory").increment(1);
                    return Ok(None);
                }
                super::follower::Answer::Ask => {}
            }
        }
        metrics::counter!(crate::telemetry::INTROSPECTIONS, "from" => "store").increment(1);
        let generation = self.follower.as_ref().map(|f| f.generation());
        let live = self.live(token, now).await?;
        if let (Some(follower), Some(generation), Some((claims, _))) = (&self.follower, generation, &live) {
            follower.certify(token, claims, generation, now);
        }
        Ok(live
            .filter(|(_, grant)| self.learns_about(who, &grant.audience))
            .map(|(claims, _)| claims))
    }

    /// Whether `who` may learn about tokens of `audience`: an operator, or a
    /// verifier the catalog lists as serving it.
    fn learns_about(&self, who: &VerifiedIdentity, audience: &tessera_core::task::Audience) -> bool {
        who.identity().has_role(Role::Operator) || self.catalog.serves(audience, who.id())
    }

    /// ReportMisuse: a resource server saw `presenter` present `token`. A
    /// live token whose holder (`client_id`) is someone else is misuse:
    /// audited as `token_misuse`, and with anomaly rules on, the token's
    /// task is revoked (every grant of it: the token leaked, so may its
    /// siblings) and the presenter quarantined, unless it holds the operator
    /// role (then it is alerted and audited only). Returns the grants
    /// revoked, or `None` when it was no misuse (the holder itself, a dead
    /// token, a token of an audience the reporter does not serve, or a
    /// report of the same misuse already acted on in this window).
    ///
    /// So a report cannot be turned against anyone: the reporter must serve
    /// the token's audience, `presenter` must be a registered identity, and
    /// each reporter gets [`MAX_REPORTS_PER_WINDOW`] reports a minute.
    pub async fn report_misuse(
        &self,
        who: &VerifiedIdentity,
        token: &str,
        presenter: &SpiffeId,
    ) -> Result<Option<u64>, BrokerError> {
        // An action of its own: a report can revoke a task and quarantine
        // an identity, so policy decides who may make one (verifiers).
        self.authorize(who, Operation::ReportMisuse).await?;
        if self.registry.lookup(presenter).is_err() {
            return Err(crate::status::FieldError::new(
                "presented_by",
                format!("`{presenter}` is not a registered identity"),
            )
            .into());
        }
        let now = self.clock.now();
        match self.live(token, now).await? {
            Some((claims, grant)) if claims.client_id != presenter.as_str() => {
                if !self.learns_about(who, &grant.audience) {
                    tracing::warn!(
                        reporter = %who.id(),
                        audience = %grant.audience,
                        "misuse report refused: the reporter does not serve the token's audience"
                    );
                    return Ok(None);
                }
                match self.count_report(who.id(), &grant.id, presenter, now)? {
                    Counted::Duplicate => Ok(None),
                    Counted::New => self.misused(who, presenter, &grant, now).await.map(Some),
                }
            }
            _ => Ok(None),
        }
    }

    /// Whether `id` holds the operator role or may decide approvals (an
    /// approver, as policy says): never quarantined by a report.
    fn is_protected(&self, id: &SpiffeId) -> bool {
        let Ok(p) = VerifiedIdentity::token_holder(&self.registry, id, "misuse-report") else {
            return false;
        };
        p.identity().has_role(Role::Operator)
            || self
                .ask_policy(
                    &p,
                    &tessera_core::policy::PolicyQuery::Operation(Operation::DecideApproval),
                )
                .is_ok()
    }

    /// Counts a report by `reporter` in its window: a duplicate is not acted
    /// on twice, and past [`MAX_REPORTS_PER_WINDOW`] reports are refused.
    fn count_report(
        &self,
        reporter: &SpiffeId,
        grant: &GrantId,
        presenter: &SpiffeId,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Counted, BrokerError> {
        let mut reports = self
            .misuse_reports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if reports.len() >= MAX_REPORTERS && !reports.contains_key(reporter) {
            reports.retain(|_, w| now - w.since < REPORT_WINDOW);
        }
        let window = reports.entry(reporter.clone()).or_insert_with(|| ReportWindow {
            since: now,
            seen: std::collections::HashSet::new(),
        });
        if now - window.since >= REPORT_WINDOW {
            window.since = now;
            window.seen.clear();
        }
        let key = (grant.clone(), presenter.clone());
        if window.seen.contains(&key) {
            return Ok(Counted::Duplicate);
        }
        if window.seen.len() >= MAX_REPORTS_PER_WINDOW {
            return Err(BrokerError::TooManyReports(reporter.clone()));
        }
        window.seen.insert(key);
        Ok(Counted::New)
    }

    /// The claims and grant of `token` if it verifies and its grant is live.
    async fn live(
        &self,
        token: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<(AccessClaims, Grant)>, BrokerError> {
        // The grant id is read before the signature is checked, so that the
        // keys and the grant come in one read; nothing of the token counts
        // until it verifies, and the verified `jti` must be the one read.
        let Some(id) = unverified_grant_id(token) else {
            return Ok(None);
        };
        let (keys, grant) = self.store.keys_and_grant(&id, now).await?;
        if let Some(follower) = &self.follower {
            follower.learn_keys(&keys);
        }
        let jwks = tessera_core::token::Jwks {
            keys: keys.into_iter().map(|k| k.jwk).collect(),
        };
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
        let Some(grant) = grant.filter(|_| claims.jti == id.as_str()) else {
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
        // Never quarantine a person (or service) who can undo or decide:
        // a false or hostile report must not lock out the operators.
        let protected = self.is_protected(presenter);
        if protected {
            tracing::error!(
                presenter = %presenter,
                task = %grant.task_id,
                reporter = %reporter.id(),
                "anomaly: misuse reported against an operator; not quarantined, investigate"
            );
            event.reason = Some(format!(
                "{what}; `{presenter}` is an operator or approver: not quarantined, nothing revoked (alert)"
            ));
            return self.audit(event).await.map(|()| 0);
        }
        if let Some(anomaly) = &self.anomaly {
            anomaly
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .quarantine(&trigger, now);
            self.policy.forget_decisions();
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

/// The `jti` of `token`, unverified: only where to look.
fn unverified_grant_id(token: &str) -> Option<GrantId> {
    #[derive(serde::Deserialize)]
    struct Jti {
        jti: String,
    }
    let (_, payload) = tessera_core::token::decode_unverified(token).ok()?;
    let Jti { jti } = serde_json::from_slice(&payload).ok()?;
    GrantId::parse(&jti).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::ErrorKind;
    use tessera_core::audit::{AuditKind, Outcome};
    use tessera_core::task::TaskState;

    use crate::broker::testing::{AGENT, AGENT2, Fixture, OPERATOR, VERIFIER, VERIFIER2, id};

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

    #[tokio::test]
    async fn introspection_answers_inactive_to_a_verifier_that_does_not_serve_the_audience() {
        let f = Fixture::new().await;
        f.task("t1").await;
        let issued = f.issue("t1", &["contacts.read"]).await;
        assert!(
            f.broker
                .introspect(&f.who(VERIFIER2), &issued.token)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            f.broker
                .introspect(&f.who(VERIFIER), &issued.token)
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            f.broker
                .introspect(&f.who(OPERATOR), &issued.token)
                .await
                .unwrap()
                .is_some()
        );
    }

    #[tokio::test]
    async fn a_misuse_report_is_ignored_from_a_verifier_that_does_not_serve_the_audience() {
        let f = Fixture::with_anomaly(5).await;
        f.task("t1").await;
        let issued = f.issue("t1", &["contacts.read"]).await;
        let verdict = f
            .broker
            .report_misuse(&f.who(VERIFIER2), &issued.token, &id(AGENT2))
            .await;
        assert_eq!(verdict.unwrap(), None);
        assert!(f.audit.of(AuditKind::TokenMisuse).is_empty());
        assert_eq!(f.live("t1").await, 1);
        assert!(f.broker.admit(&f.who(AGENT2)).await.is_ok());
    }

    #[tokio::test]
    async fn a_misuse_report_must_name_a_registered_presenter() {
        let f = Fixture::with_anomaly(5).await;
        f.task("t1").await;
        let issued = f.issue("t1", &["contacts.read"]).await;
        let refused = f
            .broker
            .report_misuse(&f.who(VERIFIER), &issued.token, &id("spiffe://td/nobody"))
            .await;
        assert_eq!(refused.err().map(|e| e.kind()), Some(ErrorKind::InvalidArgument));
        assert_eq!(f.live("t1").await, 1);
    }

    #[tokio::test]
    async fn a_misuse_report_never_quarantines_an_operator() {
        let f = Fixture::with_anomaly(5).await;
        f.task("t1").await;
        let issued = f.issue("t1", &["contacts.read"]).await;
        let verdict = f
            .broker
            .report_misuse(&f.who(VERIFIER), &issued.token, &id(OPERATOR))
            .await;
        assert_eq!(verdict.unwrap(), Some(0));
        let record = f.audit.last();
        assert_eq!(record.event, AuditKind::TokenMisuse);
        assert!(record.reason.unwrap().contains("not quarantined"));
        assert!(f.broker.admit(&f.who(OPERATOR)).await.is_ok());
        assert_eq!(f.live("t1").await, 1);
    }

    #[tokio::test]
    async fn misuse_reports_are_deduplicated_and_bounded_per_reporter() {
        let f = Fixture::new().await;
        f.task("t1").await;
        let first = f.issue("t1", &["contacts.read"]).await;
        let report = |token: String| {
            let f = &f;
            async move { f.broker.report_misuse(&f.who(VERIFIER), &token, &id(AGENT2)).await }
        };
        assert_eq!(report(first.token.clone()).await.unwrap(), Some(0));
        // The same misuse again: not acted on (or audited) twice.
        let audited = f.audit.of(AuditKind::TokenMisuse).len();
        assert_eq!(report(first.token.clone()).await.unwrap(), None);
        assert_eq!(f.audit.of(AuditKind::TokenMisuse).len(), audited);
        for _ in 1..MAX_REPORTS_PER_WINDOW {
            let next = f.issue("t1", &["contacts.read"]).await;
            assert_eq!(report(next.token).await.unwrap(), Some(0));
        }
        let over = f.issue("t1", &["contacts.read"]).await;
        let refused = report(over.token.clone()).await;
        assert_eq!(refused.err().map(|e| e.kind()), Some(ErrorKind::ResourceExhausted));
        // Another window, another budget.
        f.clock.advance(chrono::Duration::seconds(60));
        assert_eq!(report(over.token).await.unwrap(), Some(0));
    }
}
