//! Tokens: RequestToken (decide, assess, sign, record, audit), the mint
//! every token passes, and ReleaseToken / RevokeGrant.

use tessera_core::audit::{AuditKind, Outcome};
use tessera_core::grant::{Grant, GrantId, GrantImpact, GrantState};
use tessera_core::identity::VerifiedIdentity;
use tessera_core::issuance::{self, ClassifiedRequest, TokenRequest};
use tessera_core::policy::Operation;
use tessera_core::task::Task;
use tessera_core::token::{ACCESS_TOKEN_TYP, AccessClaims};
use tessera_store::{Release, RevokeOutcome, StoreError};

use super::record::{DenialLog, Metric, Success, Told};
use super::verifier::log_rejected;
use super::{BindingAsk, Broker, BrokerError, TokenOutcome, policy};

/// A minted token and its record. `token` is a secret: `Debug` redacts it.
pub struct Issued {
    /// The compact JWS.
    pub token: String,
    /// Its recorded grant.
    pub grant: Grant,
    /// Its OAuth `token_type`: `DPoP` for a key-bound token, else `Bearer`.
    pub token_type: &'static str,
    /// Its tool-level limits (the JWT's `authorization_details`).
    pub authorization_details: Vec<tessera_core::authz::ToolGrant>,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("token", &"<redacted>")
            .field("grant", &self.grant)
            .finish()
    }
}

/// A RequestToken as the edge parsed it: the request (its `binding` not
/// yet set) and the binding it asks for, which the use case resolves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenAsk {
    /// Task, audience, scopes and lifetime.
    pub request: TokenRequest,
    /// The binding asked for.
    pub binding: BindingAsk,
}

/// A RequestToken (or a redeemed approval's mint) that issued nothing:
/// why, and whether the trail already says so (see `Broker::withdraw`).
#[derive(Debug)]
pub(super) struct Unminted {
    /// What the caller is answered.
    pub(super) error: BrokerError,
    /// A `token_denied` record naming the grant is written: the caller
    /// records no second refusal.
    pub(super) recorded: bool,
}

impl From<BrokerError> for Unminted {
    fn from(error: BrokerError) -> Self {
        Self { error, recorded: false }
    }
}

impl From<Unminted> for BrokerError {
    fn from(unminted: Unminted) -> Self {
        unminted.error
    }
}

impl Broker {
    /// RequestToken: resolve the binding asked for, decide, assess, then
    /// sign and record — or, for a high-impact (or policy-marked) request,
    /// open a pending approval. No token leaves unless its grant is recorded.
    pub async fn request_token(&self, who: &VerifiedIdentity, ask: TokenAsk) -> Result<TokenOutcome, BrokerError> {
        let TokenAsk { mut request, binding } = ask;
        request.binding = self.request_binding(who, &binding).await?;
        match self.request_bound_token(who, &request).await {
            Ok(outcome) => Ok(outcome),
            // The store failed (down, or full): no token, and the refusal is
            // recorded like any other (TEST-MATRIX R1), unless the mint
            // already recorded it. Not counted toward quarantine: the caller
            // could not have avoided it.
            Err(Unminted {
                error: e @ BrokerError::Store(_),
                recorded: false,
            }) if matches!(
                e.kind(),
                tessera_core::ErrorKind::Unavailable | tessera_core::ErrorKind::ResourceExhausted
            ) =>
            {
                let mut denial = self.denial(AuditKind::TokenDenied, Some(who));
                denial.event.task_id = Some(request.task_id.to_string());
                denial.event.audience = Some(request.audience.to_string());
                self.deny(denial, e).await
            }
            Err(unminted) => Err(unminted.error),
        }
    }

    /// RequestToken once its binding is resolved, on the task as read
    /// lately; if the store then finds the task ended (here or on another
    /// replica), decided again on the task read afresh, which refuses it
    /// as any request in an ended task is refused (audited).
    async fn request_bound_token(&self, who: &VerifiedIdentity, req: &TokenRequest) -> Result<TokenOutcome, Unminted> {
        let (task, fresh) = self.task_for_token(&req.task_id).await?;
        match self.request_in_task(who, req, &task).await {
            Err(Unminted {
                error: BrokerError::Store(StoreError::TaskOver(..) | StoreError::TaskNotFound(_)),
                ..
            }) if !fresh => {
                self.recent_tasks.forget(&req.task_id);
                let (task, _) = self.task_for_token(&req.task_id).await?;
                self.request_in_task(who, req, &task).await
            }
            outcome => outcome,
        }
    }

    /// RequestToken in `task`.
    async fn request_in_task(
        &self,
        who: &VerifiedIdentity,
        req: &TokenRequest,
        task: &Task,
    ) -> Result<TokenOutcome, Unminted> {
        let now = self.clock.now();
        // Classified once: policy and the plan see the same class.
        let decided = ClassifiedRequest::new(&self.catalog, req)
            .map_err(BrokerError::from)
            .and_then(|classified| {
                let allowed = self.authorize_token_request(who, task, &classified)?;
                let plan = issuance::plan_grant(who, task, &classified, self.settings.ttl, now)?;
                Ok((allowed, plan))
            });
        let (allowed, plan) = match decided {
            Ok(decided) => decided,
            Err(e) => {
                let mut denial = self
                    .denial(AuditKind::TokenDenied, Some(who))
                    .logged(DenialLog::Token)
                    .metric("request_token")
                    .counted();
                denial.event.task_id = Some(req.task_id.to_string());
                denial.event.audience = Some(req.audience.to_string());
                denial.event.scopes = req.scopes.iter().map(ToString::to_string).collect();
                denial.event.ttl_secs = req.ttl.map(|t| t.as_secs());
                return Ok(self.deny(denial, e).await?);
            }
        };
        if let Err(e) = self.require_binding("pop_proof", plan.class, req.binding.as_ref()) {
            let mut denial = self
                .denial(AuditKind::TokenDenied, Some(who))
                .metric("request_token")
                .counted();
            denial.event.task_id = Some(req.task_id.to_string());
            denial.event.audience = Some(req.audience.to_string());
            denial.event.class = Some(plan.class.to_string());
            return Ok(self.deny(denial, e).await?);
        }
        // Policy's obligations (approval, max TTL, blast-radius cap) go to
        // the same assessment as the catalog's and the configuration's.
        let terms = Self::policy_terms(&allowed);
        let assessment = self.assess_plan(who, req, &plan, None, &terms).await?;
        if let Some(why) = assessment.approval.clone() {
            return self
                .open_approval(who, req, &plan, &assessment, why, task.deadline)
                .await
                .map(TokenOutcome::Pending)
                .map_err(Unminted::from);
        }
        let impact = GrantImpact {
            high_impact: !assessment.high_impact.is_empty(),
            blast_radius: assessment.blast_radius,
            approval_id: None,
        };
        let plan = issuance::GrantPlan {
            lifetime: assessment.lifetime,
            ..plan
        };
        let id = self
            .store
            .new_grant_id(&plan.task_id)
            .await
            .map_err(BrokerError::from)?;
        self.mint(who, plan, id, impact, req.binding.clone(), &allowed, now)
            .await
            .map(TokenOutcome::Issued)
    }

    /// Signs and records a token for an allowed, assessed `plan` under the
    /// grant id `id` (from [`GrantStore::new_grant_id`]), then audits it.
    #[expect(
        clippy::too_many_arguments,
        reason = "each is one decided part of the grant; a struct would only rename them"
    )]
    pub(super) async fn mint(
        &self,
        who: &VerifiedIdentity,
        plan: issuance::GrantPlan,
        id: GrantId,
        impact: GrantImpact,
        cnf: Option<tessera_core::token::Confirmation>,
        allowed: &policy::PolicyAllowed,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Issued, Unminted> {
        let token_type = cnf
            .as_ref()
            .map_or("Bearer", tessera_core::token::Confirmation::token_type);
        let scope = plan.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ");
        let claims = AccessClaims {
            iss: self.settings.issuer.clone(),
            sub: who.id().to_string(),
            aud: plan.audience.to_string(),
            exp: plan.lifetime.expires_at.timestamp(),
            nbf: plan.lifetime.issued_at.timestamp(),
            iat: plan.lifetime.issued_at.timestamp(),
            jti: id.to_string(),
            scope,
            client_id: who.id().to_string(),
            task_id: plan.task_id.to_string(),
            cnf,
            act: None,
            tessera_chain: Vec::new(),
            authorization_details: plan.tools.clone().into_iter().collect(),
        };
        let signer = self.signer();
        let token = signer
            .sign_jws(ACCESS_TOKEN_TYP, &claims)
            .map_err(BrokerError::Signing)?;
        let grant = Grant {
            id,
            task_id: plan.task_id,
            subject: who.id().clone(),
            audience: plan.audience,
            scopes: plan.scopes,
            class: plan.class,
            issued_at: plan.lifetime.issued_at,
            expires_at: plan.lifetime.expires_at,
            parent: None,
            key_id: signer.kid().to_owned(),
            state: GrantState::Active,
            revoked_at: None,
            revocation_reason: None,
            impact,
        };
        let mut event = self.grant_event(AuditKind::TokenIssued, who, &grant, plan.lifetime.ttl);
        allowed.stamp(&mut event);
        event.blast_radius = Some(grant.impact.blast_radius);
        event.approval_id = grant.impact.approval_id.clone();
        let told = Told::TokenIssued {
            grant: &grant,
            ttl: plan.lifetime.ttl,
        };
        let (event, announcement) = Success::new(event, told).metric(Metric::Issued(grant.class)).split();
        // INVARIANT: the token is returned only once BOTH its grant is
        // recorded and its `token_issued` record is durable. The two are
        // written at once (the store's round trip and the trail's fsync
        // overlap instead of adding up); if either fails the signed token is
        // dropped here, unseen: a grant whose record failed is taken back,
        // and a record whose grant failed (or was taken back below) is
        // followed by a `token_denied` record naming the same grant.
        let (recorded, audited) = tokio::join!(self.record_grant(&grant, now), self.audit(event));
        let confirmed = match (recorded, audited) {
            (Ok(()), Ok(())) => self.confirm_recorded(who, &grant, now).await,
            (Ok(()), Err(e)) => {
                if let Err(revoke) = self.store.revoke_grant(&grant.id, "audit trail unavailable", now).await {
                    // The token never left the broker; the grant dies at its expiry.
                    tracing::error!(grant_id = %grant.id, error = %revoke, "unaudited grant not taken back");
                }
                return Err(e.into());
            }
            (Err(e), Ok(())) => Err(e),
            // Neither exists (or the record's fate is unknown): the refusal
            // is recorded like any store failure, by the caller.
            (Err(e), Err(_)) => return Err(e.into()),
        };
        if let Err(e) = confirmed {
            return Err(self.withdraw(who, &grant, e).await);
        }
        announcement.write();
        Ok(Issued {
            token,
            grant,
            token_type,
            authorization_details: claims.authorization_details,
        })
    }

    /// A mint that failed after its `token_issued` record was durable (its
    /// grant was not recorded, or was taken back): a `token_denied` record
    /// naming the same grant follows, so the trail says the token never
    /// left. Answers `err`, or UNAVAILABLE if that record cannot be written.
    async fn withdraw(&self, who: &VerifiedIdentity, grant: &Grant, err: BrokerError) -> Unminted {
        let reason = format!("token withdrawn before it left: {err}");
        let mut denial = self
            .denial(AuditKind::TokenDenied, Some(who))
            .logged(DenialLog::Token)
            .reason(reason);
        denial.event.task_id = Some(grant.task_id.to_string());
        denial.event.grant_id = Some(grant.id.to_string());
        denial.event.audience = Some(grant.audience.to_string());
        denial.event.class = Some(grant.class.to_string());
        denial.event.approval_id = grant.impact.approval_id.clone();
        let Err(error) = self.deny::<std::convert::Infallible>(denial, err).await;
        Unminted { error, recorded: true }
    }

    /// Records a grant about to leave as a token. The store refuses one
    /// whose subject an operator disabled, on any replica (atomically with
    /// the record, see [`tessera_store::GrantStore::record_grant`]); such a
    /// disable, not read here yet, is learnt at once.
    pub(super) async fn record_grant(
        &self,
        grant: &Grant,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), BrokerError> {
        match self.store.record_grant(grant, now).await {
            Ok(()) => Ok(()),
            Err(StoreError::SubjectDisabled(subject)) => {
                self.registry.disable_at_runtime(&subject);
                self.prune_console_sessions();
                Err(BrokerError::Identity(tessera_core::identity::IdentityError::Disabled(
                    subject,
                )))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// After a grant is recorded, before its token leaves. The caller `who`
    /// must still be admitted: a quarantine that began while this mint was
    /// in flight has already swept its grants, and this one must not slip
    /// past it. And the grant's holder must not be disabled here (the
    /// store refused it if disabled there, see [`Broker::record_grant`]).
    /// Otherwise the grant is taken back.
    pub(super) async fn confirm_recorded(
        &self,
        who: &VerifiedIdentity,
        grant: &Grant,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), BrokerError> {
        if let Err(e) = self.admit(who).await {
            let _ = self.store.revoke_grant(&grant.id, "identity quarantined", now).await;
            return Err(e);
        }
        if self.registry.is_disabled(&grant.subject) {
            let _ = self.store.revoke_grant(&grant.id, "identity disabled", now).await;
            return Err(BrokerError::Identity(tessera_core::identity::IdentityError::Disabled(
                grant.subject.clone(),
            )));
        }
        Ok(())
    }

    /// ReleaseToken naming the token itself: its signature and expiry are
    /// checked with this broker's keys, then [`Broker::release`] of its grant.
    pub async fn release_token(
        &self,
        who: &VerifiedIdentity,
        token: &str,
    ) -> Result<(GrantId, RevokeOutcome), BrokerError> {
        let jwks = self.jwks().await?;
        let claims = tessera_core::token::verify_access_token(
            token,
            &jwks,
            &self.settings.issuer,
            self.clock.now(),
            self.settings.leeway_secs,
        )
        .map_err(|e| {
            log_rejected(&e);
            BrokerError::NotLiveToken("token")
        })?;
        let id = GrantId::parse(&claims.jti).map_err(|_| BrokerError::NotLiveToken("token"))?;
        let outcome = self.release(who, &id).await?;
        Ok((id, outcome))
    }

    /// ReleaseToken: the holder gives its grant back (checked and revoked
    /// in one step by the store).
    pub async fn release(&self, who: &VerifiedIdentity, id: &GrantId) -> Result<RevokeOutcome, BrokerError> {
        let reason = "released by holder";
        let released = self
            .store
            .release_grant(id, who.id(), reason, self.clock.now())
            .await?
            .ok_or_else(|| BrokerError::GrantNotFound(id.clone()))?;
        match released {
            Release::Revoked(outcome) => {
                self.revoked(who, id, reason, AuditKind::TokenReleased, None, &outcome)
                    .await?;
                Ok(outcome)
            }
            Release::NotHolder(grant) => {
                let mut denial = self.denial(AuditKind::TokenReleased, Some(who));
                denial.event.grant_id = Some(id.to_string());
                denial.event.task_id = Some(grant.task_id.to_string());
                self.deny(denial, BrokerError::NotHolder(who.id().to_string())).await
            }
        }
    }

    /// RevokeGrant (operator).
    pub async fn revoke_grant(
        &self,
        who: &VerifiedIdentity,
        id: &GrantId,
        reason: &str,
    ) -> Result<RevokeOutcome, BrokerError> {
        let allowed = self.authorize(who, Operation::RevokeGrant).await?;
        let outcome = self
            .store
            .revoke_grant(id, reason, self.clock.now())
            .await?
            .ok_or_else(|| BrokerError::GrantNotFound(id.clone()))?;
        self.revoked(who, id, reason, AuditKind::GrantRevoked, Some(&allowed), &outcome)
            .await?;
        Ok(outcome)
    }

    /// Records a revocation that stands (see [`Broker::succeeded`]).
    async fn revoked(
        &self,
        who: &VerifiedIdentity,
        id: &GrantId,
        reason: &str,
        kind: AuditKind,
        allowed: Option<&policy::PolicyAllowed>,
        outcome: &RevokeOutcome,
    ) -> Result<(), BrokerError> {
        let mut event = self.event(kind, Outcome::Allow, Some(who));
        event.grant_id = Some(id.to_string());
        event.task_id = Some(outcome.grant.task_id.to_string());
        event.reason = Some(reason.to_owned());
        event.count = Some(u64::from(outcome.revoked) + outcome.descendants_revoked);
        if let Some(allowed) = allowed {
            allowed.stamp(&mut event);
        }
        let told = Told::GrantRevoked {
            id,
            by: who.id(),
            changed: outcome.revoked,
            descendants: outcome.descendants_revoked,
            reason,
        };
        let metric = Metric::GrantRevoked(kind, u64::from(outcome.revoked) + outcome.descendants_revoked);
        self.succeeded(Success::new(event, told).metric(metric)).await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use tessera_core::identity::SpiffeId;
    use tessera_core::task::{Audience, Scope, ScopeClass, TaskId};

    use super::*;

    #[test]
    fn issued_debug_redacts_the_token() {
        let at = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let issued = Issued {
            authorization_details: Vec::new(),
            token: "eyJhbGciOiJFUzI1NiJ9.secret-claims.secret-signature".into(),
            grant: Grant {
                id: GrantId::parse("g1").unwrap(),
                task_id: TaskId::parse("t1").unwrap(),
                subject: SpiffeId::parse("spiffe://td/agent").unwrap(),
                audience: Audience::parse("crm").unwrap(),
                scopes: BTreeSet::from([Scope::parse("contacts.read").unwrap()]),
                class: ScopeClass::Read,
                issued_at: at,
                expires_at: at + chrono::Duration::seconds(60),
                parent: None,
                key_id: "k1".into(),
                state: GrantState::Active,
                revoked_at: None,
                revocation_reason: None,
                impact: GrantImpact::default(),
            },
            token_type: "Bearer",
        };
        let shown = format!("{issued:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains(r#"token: "<redacted>""#), "{shown}");
        assert!(shown.contains("g1") && shown.contains("spiffe://td/agent"), "{shown}");
    }

    use tessera_core::ErrorKind;
    use tessera_core::audit::{AuditKind, Outcome};
    use tessera_store::GrantStore as _;

    use crate::broker::testing::{AGENT, AGENT2, Fixture, OPERATOR, ORCHESTRATOR};

    #[tokio::test]
    async fn a_token_leaves_with_its_grant_recorded_and_audited() {
        let f = Fixture::new().await;
        f.task("t1").await;
        let issued = f.issue("t1", &["contacts.read"]).await;
        assert_eq!(issued.token_type, "Bearer");
        let stored = f.store.grant(&issued.grant.id).await.unwrap().unwrap();
        assert!(stored.is_live_at(f.broker.now()));
        let record = f.audit.last();
        assert_eq!(record.event, AuditKind::TokenIssued);
        assert_eq!(record.decision, Outcome::Allow);
        assert_eq!(record.grant_id.as_deref(), Some(issued.grant.id.as_str()));
        assert_eq!(record.scopes, vec!["contacts.read".to_owned()]);
        assert_eq!(record.ttl_secs, Some(300));
    }

    /// A task limited at tool level: the token carries its limit (or a
    /// narrower one asked for); a wider one is refused, audited, no grant.
    #[tokio::test]
    async fn a_tool_limited_task_never_issues_a_wider_token() {
        let f = Fixture::new().await;
        let grant = |v: serde_json::Value| tessera_core::authz::ToolGrant::parse(&v).unwrap();
        let ceiling = grant(
            serde_json::json!({"type": "mcp_tool", "server": crate::broker::testing::CRM,
            "tools": ["lookup", "update"], "constraints": {"update": {"id": {"prefix": "c-"}}}}),
        );
        let mut start = f.start("t1");
        start.tools = vec![ceiling.clone()];
        f.broker
            .start_task(&f.who(crate::broker::testing::ORCHESTRATOR), start)
            .await
            .unwrap();
        let issued = f.issue("t1", &["contacts.read"]).await;
        assert_eq!(issued.authorization_details, vec![ceiling]);
        let mut ask = f.ask("t1", &["contacts.read"]);
        let narrow =
            grant(serde_json::json!({"type": "mcp_tool", "server": crate::broker::testing::CRM, "tools": ["lookup"]}));
        ask.request.tools = Some(narrow.clone());
        let Ok(TokenOutcome::Issued(issued)) = f.broker.request_token(&f.who(AGENT), ask).await else {
            panic!("a narrower limit is granted");
        };
        assert_eq!(issued.authorization_details, vec![narrow]);
        let live = f.live("t1").await;
        let mut ask = f.ask("t1", &["contacts.read"]);
        ask.request.tools = Some(grant(
            serde_json::json!({"type": "mcp_tool", "server": crate::broker::testing::CRM,
            "tools": ["update"]}),
        ));
        let err = f.broker.request_token(&f.who(AGENT), ask).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
        assert!(err.to_string().contains("wider than the task's ceiling"), "{err}");
        let record = f.audit.last();
        assert_eq!((record.event, record.decision), (AuditKind::TokenDenied, Outcome::Deny));
        assert_eq!(f.live("t1").await, live, "no grant for a refused request");
    }

    #[tokio::test]
    async fn no_token_without_its_audit_record() {
        let f = Fixture::new().await;
        f.task("t1").await;
        f.audit.fail(true);
        let refused = f
            .broker
            .request_token(&f.who(AGENT), f.ask("t1", &["contacts.read"]))
            .await;
        let err = refused.expect_err("no token may leave without its record");
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert!(matches!(err, BrokerError::Audit(_)), "{err}");
        assert_eq!(f.live("t1").await, 0, "the recorded grant is taken back");
    }

    #[tokio::test]
    async fn a_task_ended_elsewhere_is_refused_though_this_replica_read_it_lately() {
        let f = Fixture::new().await;
        f.task("t1").await;
        f.issue("t1", &["contacts.read"]).await;
        // Ended by another replica: this one remembers the task as active.
        f.store
            .end_task(
                &TaskId::parse("t1").unwrap(),
                tessera_core::task::TaskState::Completed,
                "done",
                f.broker.now(),
            )
            .await
            .unwrap();
        let refused = f
            .broker
            .request_token(&f.who(AGENT), f.ask("t1", &["contacts.read"]))
            .await;
        assert_eq!(refused.err().map(|e| e.kind()), Some(ErrorKind::FailedPrecondition));
        let record = f.audit.last();
        assert_eq!((record.event, record.decision), (AuditKind::TokenDenied, Outcome::Deny));
        assert_eq!(f.live("t1").await, 0);
        assert_withdrawn(&f.audit.records());
    }

    /// The last `token_issued` record (written alongside its grant, which
    /// the store refused) is followed by a `token_denied` one naming its grant.
    fn assert_withdrawn(records: &[tessera_core::audit::AuditEvent]) {
        let at = records
            .iter()
            .rposition(|r| r.event == AuditKind::TokenIssued)
            .expect("a token_issued record");
        let grant = records[at].grant_id.clone();
        let withdrawn = records[at + 1..]
            .iter()
            .find(|r| r.grant_id == grant)
            .expect("a record follows naming the grant");
        assert_eq!(
            (withdrawn.event, withdrawn.decision),
            (AuditKind::TokenDenied, Outcome::Deny)
        );
        assert!(
            withdrawn
                .reason
                .as_deref()
                .is_some_and(|r| r.starts_with("token withdrawn before it left")),
            "{withdrawn:?}"
        );
    }

    #[tokio::test]
    async fn a_holder_disabled_elsewhere_gets_no_token_and_is_refused_here_from_now_on() {
        let f = Fixture::new().await;
        f.task("t1").await;
        let agent = SpiffeId::parse(AGENT).unwrap();
        // Disabled by another replica: only the store knows.
        f.store
            .disable_subject(&agent, "offboarded", f.broker.now())
            .await
            .unwrap();
        let refused = f
            .broker
            .request_token(&f.who(AGENT), f.ask("t1", &["contacts.read"]))
            .await;
        assert!(
            matches!(
                refused,
                Err(BrokerError::Identity(tessera_core::identity::IdentityError::Disabled(
                    _
                )))
            ),
            "{refused:?}"
        );
        assert_eq!(f.live("t1").await, 0);
        assert!(f.broker.registry().is_disabled(&agent), "learnt at once");
        assert_withdrawn(&f.audit.records());
        assert_eq!(f.audit.last().event, AuditKind::TokenDenied);
    }

    #[tokio::test]
    async fn a_caller_that_is_no_agent_of_the_task_is_refused_and_audited() {
        let f = Fixture::new().await;
        f.task("t1").await;
        let refused = f
            .broker
            .request_token(&f.who(ORCHESTRATOR), f.ask("t1", &["contacts.read"]))
            .await;
        assert_eq!(refused.err().map(|e| e.kind()), Some(ErrorKind::PermissionDenied));
        let record = f.audit.last();
        assert_eq!((record.event, record.decision), (AuditKind::TokenDenied, Outcome::Deny));
        assert_eq!(record.task_id.as_deref(), Some("t1"));
        assert_eq!(f.live("t1").await, 0);
    }

    #[tokio::test]
    async fn only_the_holder_releases_its_grant() {
        let f = Fixture::new().await;
        f.task("t1").await;
        let issued = f.issue("t1", &["contacts.read"]).await;
        let other = f.broker.release(&f.who(AGENT2), &issued.grant.id).await;
        assert!(matches!(other, Err(BrokerError::NotHolder(_))));
        assert_eq!(f.live("t1").await, 1);
        let (id, outcome) = f.broker.release_token(&f.who(AGENT), &issued.token).await.unwrap();
        assert_eq!(id, issued.grant.id);
        assert!(outcome.revoked);
        assert_eq!(f.live("t1").await, 0);
        assert_eq!(f.audit.last().event, AuditKind::TokenReleased);
        let forged = f.broker.release_token(&f.who(AGENT), "e30.e30.e30").await;
        assert!(matches!(forged, Err(BrokerError::NotLiveToken("token"))));
    }

    #[tokio::test]
    async fn only_an_operator_revokes_a_grant() {
        let f = Fixture::new().await;
        f.task("t1").await;
        let issued = f.issue("t1", &["contacts.read"]).await;
        let refused = f.broker.revoke_grant(&f.who(AGENT), &issued.grant.id, "no").await;
        assert_eq!(refused.err().map(|e| e.kind()), Some(ErrorKind::PermissionDenied));
        assert_eq!(f.audit.last().event, AuditKind::AdminDenied);
        assert_eq!(f.live("t1").await, 1);
        let outcome = f
            .broker
            .revoke_grant(&f.who(OPERATOR), &issued.grant.id, "yes")
            .await
            .unwrap();
        assert!(outcome.revoked);
        assert_eq!(f.live("t1").await, 0);
        let record = f.audit.last();
        assert_eq!(
            (record.event, record.reason.as_deref()),
            (AuditKind::GrantRevoked, Some("yes"))
        );
    }

    #[tokio::test]
    async fn a_token_dies_with_its_lifetime_on_the_broker_clock() {
        let f = Fixture::new().await;
        f.task("t1").await;
        f.issue("t1", &["contacts.read"]).await;
        f.clock.advance(chrono::Duration::seconds(299));
        assert_eq!(f.live("t1").await, 1);
        f.clock.advance(chrono::Duration::seconds(1));
        assert_eq!(f.live("t1").await, 0);
    }

    #[tokio::test]
    async fn the_use_case_resolves_the_binding_the_request_asks_for() {
        let f = Fixture::new().await;
        f.task("t1").await;
        let who = f.who(AGENT);
        let unbound = f.broker.request_token(&who, f.ask("t1", &["contacts.write"])).await;
        assert!(matches!(unbound, Err(BrokerError::Unbound { field: "pop_proof", .. })));
        assert_eq!(f.audit.last().event, AuditKind::TokenDenied);
        let mut ask = f.ask("t1", &["contacts.write"]);
        ask.binding = BindingAsk::ClientCertificate;
        let Ok(TokenOutcome::Issued(issued)) = f.broker.request_token(&who, ask).await else {
            panic!("a certificate-bound write token is issued");
        };
        assert_eq!(f.audit.last().grant_id.as_deref(), Some(issued.grant.id.as_str()));
        let mut both = f.ask("t1", &["contacts.read"]);
        both.binding = BindingAsk::ProofAndCertificate;
        let refused = f.broker.request_token(&who, both).await;
        assert!(matches!(refused, Err(BrokerError::Binding(_))));
        assert_eq!(f.audit.last().event, AuditKind::TokenDenied);
        assert_eq!(f.live("t1").await, 1);
    }

    #[tokio::test]
    async fn a_revocation_stands_even_when_its_record_cannot_be_written() {
        let f = Fixture::new().await;
        f.task("t1").await;
        let issued = f.issue("t1", &["contacts.read"]).await;
        f.audit.fail(true);
        let answered = f.broker.revoke_grant(&f.who(OPERATOR), &issued.grant.id, "x").await;
        assert_eq!(answered.err().map(|e| e.kind()), Some(ErrorKind::Unavailable));
        assert_eq!(
            f.live("t1").await,
            0,
            "revoked: the operator retries, the grant stays dead"
        );
    }
}
