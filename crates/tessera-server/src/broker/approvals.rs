//! Risk at mint and human approval: every allowed plan is assessed
//! (lifetime caps per class and kind, blast-radius score and cap); a request
//! touching a high-impact scope, or one policy marks, becomes a pending
//! approval instead of a token. An approver (operator) approves or denies
//! it; the requester awaits it and receives the one token it yields.
//!
//! Exactly one token per approval: the token is minted only after the store
//! moved the approval `approved → redeemed` atomically (one winner across
//! replicas), from the stored request, after re-checking its binding, the
//! task, the ceiling and the lifetime bounds.

use std::sync::Arc;
use std::time::Duration;

use tessera_core::approval::{self, Approval, ApprovalDecision, ApprovalError, ApprovalId, ApprovalRequest};
use tessera_core::audit::{AuditEvent, AuditKind, Outcome};
use tessera_core::grant::GrantImpact;
use tessera_core::identity::VerifiedIdentity;
use tessera_core::issuance::{self, ClassifiedRequest, GrantPlan, TokenRequest};
use tessera_core::policy::{Operation, PolicyQuery, TokenAction, TokenFacts};
use tessera_core::risk::{self, Assessment, PolicyTerms, RiskError};
use tessera_store::{ApprovalPage, ApprovalStore, Transition};

use super::record::{Denial, DenialLog, Metric, Success, Told};
use super::{Asked, Broker, BrokerError, Issued};

/// How approvals behave (`[approvals]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApprovalSettings {
    /// How long a pending approval waits (never past its task's deadline).
    pub ttl: chrono::Duration,
    /// How often a waiter re-reads the shared store.
    pub poll_interval: Duration,
}

impl Default for ApprovalSettings {
    fn default() -> Self {
        Self {
            ttl: chrono::Duration::minutes(15),
            poll_interval: Duration::from_millis(500),
        }
    }
}

/// The approval store and a local wake-up for waiters on this replica
/// (waiters on other replicas see a decision at their next poll).
pub(crate) struct Approvals {
    store: Arc<dyn ApprovalStore>,
    changed: tokio::sync::Notify,
    /// Tells approvers of new pending approvals (the webhook), if set.
    notifier: Option<Arc<dyn ApprovalNotifier>>,
}

/// Tells approvers that an approval is pending. Must not block: a notifier
/// sends in the background, and its failures never fail the request.
pub trait ApprovalNotifier: Send + Sync {
    /// `approval` was just opened (and audited).
    fn pending(&self, approval: &Approval);
}

impl Approvals {
    pub(crate) fn new(store: Arc<dyn ApprovalStore>) -> Self {
        Self {
            store,
            notifier: None,
            changed: tokio::sync::Notify::new(),
        }
    }
}

/// What RequestToken answers: a token, or a pending approval.
#[derive(Debug)]
pub enum TokenOutcome {
    /// Minted and recorded.
    Issued(Issued),
    /// Waits for a person's approval.
    Pending(Approval),
}

/// One look at an awaited approval.
#[derive(Debug)]
pub enum AwaitStep {
    /// Still waiting for a decision.
    Pending(Approval),
    /// Approved: here is its one token.
    Issued(Issued),
}

impl From<ApprovalError> for BrokerError {
    fn from(e: ApprovalError) -> Self {
        Self::Approval(e)
    }
}

impl From<RiskError> for BrokerError {
    fn from(e: RiskError) -> Self {
        Self::Risk(e)
    }
}

fn request_of(a: &Approval) -> TokenRequest {
    TokenRequest {
        tools: a.request.tools.clone(),
        task_id: a.request.task_id.clone(),
        audience: a.request.audience.clone(),
        scopes: a.request.scopes.clone(),
        ttl: a.request.ttl,
        binding: binding_of_code(&a.request.pop_jkt),
    }
}

/// Prefix of an mTLS binding in [`ApprovalRequest::pop_jkt`] (a bare value is a `jkt`).
const X5T_CODE: &str = "x5t#S256:";

/// The approved request's binding as stored: a DPoP key's `jkt`, or an mTLS
/// certificate hash behind [`X5T_CODE`]; empty for a bearer token.
fn binding_code(binding: Option<&tessera_core::token::Confirmation>) -> String {
    use tessera_core::token::Confirmation;
    match binding {
        None => String::new(),
        Some(Confirmation::Jkt(jkt)) => jkt.clone(),
        Some(Confirmation::X5tS256(hash)) => format!("{X5T_CODE}{hash}"),
    }
}

fn binding_of_code(code: &str) -> Option<tessera_core::token::Confirmation> {
    use tessera_core::token::Confirmation;
    if code.is_empty() {
        None
    } else if let Some(hash) = code.strip_prefix(X5T_CODE) {
        Some(Confirmation::X5tS256(hash.to_owned()))
    } else {
        Some(Confirmation::Jkt(code.to_owned()))
    }
}

impl Broker {
    /// Uses `store` for approvals (the Redis store when the grants are in
    /// Redis, so every replica sees the same approvals).
    #[must_use]
    pub fn with_approval_store(mut self, store: Arc<dyn ApprovalStore>) -> Self {
        let notifier = self.approvals.notifier.take();
        self.approvals = Approvals::new(store);
        self.approvals.notifier = notifier;
        self
    }

    /// Notifies approvers of each new pending approval through `notifier`
    /// (none: approvers look with ListApprovals).
    pub fn with_approval_notifier(mut self, notifier: Option<Arc<dyn ApprovalNotifier>>) -> Self {
        self.approvals.notifier = notifier;
        self
    }

    /// What policy decided about this request beyond allowing it: the
    /// permits' `@approval`, `@max_ttl` and `@max_blast_radius` obligations
    /// (the catalog's high-impact flags ask for approval on their own).
    pub(super) fn policy_terms(allowed: &super::policy::PolicyAllowed) -> PolicyTerms {
        PolicyTerms {
            approval_required: allowed.approval_required(),
            max_ttl: allowed
                .max_ttl()
                .and_then(|secs| tessera_core::ttl::Ttl::from_secs(u64::from(secs)).ok()),
            max_blast_radius: allowed.max_blast_radius(),
        }
    }

    /// Assesses an allowed plan; a refusal (over the blast-radius cap) is
    /// audited as `token_denied` and counted as a denial.
    pub(super) async fn assess_plan(
        &self,
        who: &VerifiedIdentity,
        req: &TokenRequest,
        plan: &GrantPlan,
        approval_id: Option<&ApprovalId>,
        terms: &PolicyTerms,
    ) -> Result<Assessment, BrokerError> {
        match risk::assess(plan, who.identity().kind, &self.catalog, &self.settings.risk, terms, 0) {
            Ok(a) => Ok(a),
            Err(e) => {
                let mut denial = Denial::of(
                    self.token_event(AuditKind::TokenDenied, Outcome::Deny, who, req),
                    Some(who),
                )
                .logged(DenialLog::Token)
                .metric("request_token")
                .counted();
                if let RiskError::BlastRadiusExceeded { score, .. } = &e {
                    denial.event.blast_radius = Some(*score);
                }
                denial.event.approval_id = approval_id.map(ToString::to_string);
                self.deny(denial, e.into()).await
            }
        }
    }

    fn token_event(&self, kind: AuditKind, outcome: Outcome, who: &VerifiedIdentity, req: &TokenRequest) -> AuditEvent {
        let mut event = self.event(kind, outcome, Some(who));
        event.task_id = Some(req.task_id.to_string());
        event.audience = Some(req.audience.to_string());
        event.scopes = req.scopes.iter().map(ToString::to_string).collect();
        event.ttl_secs = req.ttl.map(|t| t.as_secs());
        event.schema_version = self.catalog.api(&req.audience).map(|a| a.schema_version.clone());
        event
    }

    /// Opens a pending approval for `req` (already allowed and assessed).
    pub(super) async fn open_approval(
        &self,
        who: &VerifiedIdentity,
        req: &TokenRequest,
        plan: &GrantPlan,
        assessment: &Assessment,
        why: String,
        task_deadline: chrono::DateTime<chrono::Utc>,
    ) -> Result<Approval, BrokerError> {
        let now = self.clock.now();
        let expires_at = (now + self.settings.approvals.ttl).min(task_deadline);
        let request = ApprovalRequest {
            requester: who.id().clone(),
            task_id: req.task_id.clone(),
            audience: req.audience.clone(),
            scopes: req.scopes.clone(),
            ttl: req.ttl,
            // The binding the token will carry is part of what is approved.
            pop_jkt: binding_code(req.binding.as_ref()),
            // So is the tool-level limit (the ceiling's when none was asked).
            tools: plan.tools.clone(),
        };
        let approval = Approval::open(
            ApprovalId::generate()?,
            request,
            plan.class,
            assessment.high_impact.clone(),
            assessment.blast_radius,
            why,
            now,
            expires_at,
        );
        self.approvals.store.create_approval(&approval, now).await?;
        let mut event = self.token_event(AuditKind::ApprovalPending, Outcome::Allow, who, req);
        event.class = Some(plan.class.to_string());
        event.blast_radius = Some(assessment.blast_radius);
        event.approval_id = Some(approval.id.to_string());
        event.reason = Some(format!("waits for approval until {expires_at}: {}", approval.reason));
        let told = Told::ApprovalPending {
            id: &approval.id,
            subject: who.id(),
            task_id: &req.task_id,
            audience: &req.audience,
            blast_radius: assessment.blast_radius,
            expires_at,
        };
        // Unaudited, it must not be decidable: nobody learns its id.
        self.succeed(Success::new(event, told).metric(Metric::Allowed("request_token")))
            .await?;
        if let Some(notifier) = &self.approvals.notifier {
            notifier.pending(&approval);
        }
        Ok(approval)
    }

    /// ListApprovals (approver): approvals pending now, one page.
    pub async fn list_approvals(
        &self,
        who: &VerifiedIdentity,
        page: Asked<(Option<String>, usize)>,
    ) -> Result<ApprovalPage, BrokerError> {
        self.authorize(who, Operation::ListApprovals).await?;
        let (after, limit) = page?;
        let after = after.as_deref();
        Ok(self
            .approvals
            .store
            .list_pending_approvals(after, limit, self.clock.now())
            .await?)
    }

    /// DecideApproval (approver): approves or denies a pending approval.
    /// The requester can never decide its own request, whatever its roles.
    pub async fn decide_approval(
        &self,
        who: &VerifiedIdentity,
        asked: Asked<(ApprovalId, String)>,
        approve: bool,
    ) -> Result<Approval, BrokerError> {
        self.authorize(who, Operation::DecideApproval).await?;
        let (id, reason) = asked?;
        let (id, reason) = (&id, reason.as_str());
        let now = self.clock.now();
        let current = self
            .approvals
            .store
            .approval(id)
            .await?
            .ok_or_else(|| ApprovalError::NotFound(id.clone()))?;
        let mut event = self.token_event(AuditKind::ApprovalDecided, Outcome::Deny, who, &request_of(&current));
        let denial = |event: &AuditEvent| Denial::of(event.clone(), Some(who));
        event.class = Some(current.class.to_string());
        event.approval_id = Some(id.to_string());
        event.blast_radius = Some(current.blast_radius);
        event.approver = Some(who.id().to_string());
        if let Err(e) = approval::check_decision(&current, who.id(), now) {
            let self_decision = matches!(e, ApprovalError::SelfDecision(_));
            return self.deny(denial(&event).counted_if(self_decision), e.into()).await;
        }
        // Policy decides whether `who` may approve this request
        // (ApproveRequest, with the requester); code has already refused a
        // self-decision whatever policy says.
        if let Err(e) = self.authorize_approval(who, &current).await {
            return self.deny(denial(&event).counted(), e).await;
        }
        let decision = ApprovalDecision {
            approve,
            approver: who.id().clone(),
            reason: reason.to_owned(),
            at: now,
        };
        let decided = match self.approvals.store.decide_approval(id, &decision, now).await? {
            Some(Transition::Applied(a)) => a,
            // Decided (or expired) by someone else in between.
            Some(Transition::Refused(a)) => {
                let e = match approval::check_decision(&a, who.id(), now) {
                    Err(e) => e,
                    Ok(()) => ApprovalError::NotPending {
                        id: id.clone(),
                        state: a.state_at(now),
                    },
                };
                return self.deny(denial(&event), e.into()).await;
            }
            None => return Err(ApprovalError::NotFound(id.clone()).into()),
        };
        self.approvals.changed.notify_waiters();
        event.decision = if approve { Outcome::Allow } else { Outcome::Deny };
        event.reason = Some(format!(
            "{} by {}: {reason}",
            if approve { "approved" } else { "denied" },
            who.id()
        ));
        // A denial stands once stored. An approval is in force only with its
        // record: if the record is lost, the approval is consumed (marked
        // redeemed by a grant id that is never recorded) so no token is ever
        // minted from it, and the call fails so the approver knows.
        let told = Told::ApprovalDecided {
            id,
            approver: who.id(),
            requester: &decided.request.requester,
            approved: approve,
        };
        if let Err(e) = self.succeed(Success::new(event, told)).await {
            if approve {
                self.withdraw_approval(id, now).await;
            }
            return Err(e);
        }
        Ok(decided)
    }

    /// Consumes an approval whose approval record was lost, so that it is
    /// not in force: `approved → redeemed` by a grant id that is never
    /// recorded. A failure is logged: the requester's redeem would then mint
    /// a token whose own record is still required.
    async fn withdraw_approval(&self, id: &ApprovalId, now: chrono::DateTime<chrono::Utc>) {
        let outcome = match tessera_core::grant::GrantId::generate() {
            Ok(never) => self.approvals.store.redeem_approval(id, &never, now).await,
            Err(e) => Err(tessera_store::StoreError::Unavailable(e.to_string())),
        };
        match outcome {
            Ok(_) => {
                tracing::warn!(approval_id = %id, "approval withdrawn: its audit record could not be written");
                self.approvals.changed.notify_waiters();
            }
            Err(e) => {
                tracing::error!(approval_id = %id, error = %e, "could not withdraw an approval whose audit record was lost");
            }
        }
    }

    /// AwaitApproval, one step: the approval while it is pending, its one
    /// token once approved, or why no token will come (denied, expired,
    /// already redeemed, not the requester's).
    pub async fn await_step(&self, who: &VerifiedIdentity, id: &ApprovalId) -> Result<AwaitStep, BrokerError> {
        let now = self.clock.now();
        let current = self
            .approvals
            .store
            .approval(id)
            .await?
            .ok_or_else(|| ApprovalError::NotFound(id.clone()))?;
        match approval::await_outcome(&current, who.id(), now) {
            Ok(None) => Ok(AwaitStep::Pending(current)),
            Ok(Some(())) => self.redeem(who, current).await.map(AwaitStep::Issued),
            Err(e @ ApprovalError::NotRequester(_)) => {
                let event = self.token_event(AuditKind::TokenDenied, Outcome::Deny, who, &request_of(&current));
                let mut denial = Denial::of(event, Some(who)).counted();
                denial.event.approval_id = Some(id.to_string());
                self.deny(denial, e.into()).await
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Asks policy whether `who` may decide `current` (ApproveRequest).
    async fn authorize_approval(&self, who: &VerifiedIdentity, current: &Approval) -> Result<(), BrokerError> {
        let task = self.load_task(&current.request.task_id).await?;
        let req = request_of(current);
        let facts = TokenFacts {
            audience: &req.audience,
            scopes: &req.scopes,
            class: current.class,
            high_impact: self.high_impact(&req.audience, &req.scopes),
            requested_ttl: req.ttl.unwrap_or(self.settings.ttl.default),
            delegation: None,
            blast_radius: Some(current.blast_radius),
            requester: Some(&current.request.requester),
            tools: current.request.tools.as_ref(),
        };
        self.ask_policy(
            who,
            &PolicyQuery::Token {
                action: TokenAction::Approve,
                task: &task,
                facts,
            },
        )
        .map(drop)
    }

    /// Waits until an approval may have changed: a decision on this replica,
    /// or the poll interval (decisions on other replicas).
    pub async fn approval_changed(&self) {
        let _ = tokio::time::timeout(self.settings.approvals.poll_interval, self.approvals.changed.notified()).await;
    }

    /// Mints the one token of an approved approval: re-checks its binding,
    /// the task, the ceiling and every lifetime and risk bound as of now,
    /// then moves it `approved → redeemed` (exactly one caller wins), then
    /// signs and records the grant. If minting fails after the redemption,
    /// the approval is spent and no token exists: the safe direction.
    async fn redeem(&self, who: &VerifiedIdentity, approved: Approval) -> Result<Issued, BrokerError> {
        if !approved.is_bound() {
            tracing::error!(approval_id = %approved.id, "stored approval does not match its binding; refusing");
            return Err(ApprovalError::Unbound(approved.id.clone()).into());
        }
        let req = request_of(&approved);
        let now = self.clock.now();
        let task = self.load_task(&req.task_id).await?;
        // Policy is asked again: a set reloaded since the approval decides.
        // Classified once: policy and the plan see the same class.
        let decided = ClassifiedRequest::new(&self.catalog, &req)
            .map_err(BrokerError::from)
            .and_then(|classified| {
                let allowed = self.authorize_token_request(who, &task, &classified)?;
                let plan = issuance::plan_grant(who, &task, &classified, self.settings.ttl, now)?;
                Ok((allowed, plan))
            });
        let (allowed, plan) = match decided {
            Ok(decided) => decided,
            Err(e) => {
                let event = self.token_event(AuditKind::TokenDenied, Outcome::Deny, who, &req);
                let mut denial = Denial::of(event, Some(who)).metric("request_token");
                denial.event.approval_id = Some(approved.id.to_string());
                return self.deny(denial, e).await;
            }
        };
        let terms = Self::policy_terms(&allowed);
        let assessment = self.assess_plan(who, &req, &plan, Some(&approved.id), &terms).await?;
        let id = self.store.new_grant_id(&plan.task_id).await?;
        match self.approvals.store.redeem_approval(&approved.id, &id, now).await? {
            Some(Transition::Applied(_)) => {}
            Some(Transition::Refused(a)) => {
                return Err(match approval::await_outcome(&a, who.id(), now) {
                    Err(e) => e,
                    Ok(_) => ApprovalError::Redeemed(a.id),
                }
                .into());
            }
            None => return Err(ApprovalError::NotFound(approved.id.clone()).into()),
        }
        self.approvals.changed.notify_waiters();
        let impact = GrantImpact {
            high_impact: !assessment.high_impact.is_empty(),
            blast_radius: assessment.blast_radius,
            approval_id: Some(approved.id.to_string()),
        };
        let plan = GrantPlan {
            lifetime: assessment.lifetime,
            ..plan
        };
        self.mint(who, plan, id, impact, req.binding.clone(), &allowed, now)
            .await
            .map_err(BrokerError::from)
    }
}

#[cfg(test)]
mod tests {
    use tessera_core::ErrorKind;
    use tessera_core::audit::AuditKind;

    use super::*;
    use crate::broker::testing::{AGENT, AGENT2, Fixture, OPERATOR};

    async fn pending(f: &Fixture) -> Approval {
        f.task("t1").await;
        let who = f.who(AGENT);
        let mut ask = f.ask("t1", &["payments.send"]);
        // Write tokens are never bearer tokens: bound to the caller's certificate.
        ask.binding = crate::broker::BindingAsk::ClientCertificate;
        match f.broker.request_token(&who, ask).await.unwrap() {
            TokenOutcome::Pending(approval) => approval,
            TokenOutcome::Issued(_) => panic!("a high-impact scope must wait for approval"),
        }
    }

    #[tokio::test]
    async fn a_high_impact_request_waits_and_an_approval_yields_one_token() {
        let f = Fixture::new().await;
        let approval = pending(&f).await;
        assert_eq!(f.audit.last().event, AuditKind::ApprovalPending);
        assert_eq!(f.live("t1").await, 0, "no token before the approval");
        let page = f.broker.list_approvals(&f.who(OPERATOR), Ok((None, 10))).await.unwrap();
        assert_eq!(page.approvals.len(), 1);
        assert!(matches!(
            f.broker.await_step(&f.who(AGENT), &approval.id).await,
            Ok(AwaitStep::Pending(_))
        ));
        f.broker
            .decide_approval(&f.who(OPERATOR), Ok((approval.id.clone(), "ok".into())), true)
            .await
            .unwrap();
        let Ok(AwaitStep::Issued(issued)) = f.broker.await_step(&f.who(AGENT), &approval.id).await else {
            panic!("an approved request yields its token");
        };
        assert_eq!(issued.grant.impact.approval_id.as_deref(), Some(approval.id.as_str()));
        assert_eq!(f.live("t1").await, 1);
        let again = f.broker.await_step(&f.who(AGENT), &approval.id).await;
        assert!(again.is_err(), "exactly one token per approval");
        assert_eq!(f.live("t1").await, 1);
    }

    /// The approval binds the tool-level limit the token will carry: the
    /// token redeemed carries exactly it.
    #[tokio::test]
    async fn an_approval_binds_the_tool_level_limit() {
        let f = Fixture::new().await;
        let ceiling = tessera_core::authz::ToolGrant::parse(&serde_json::json!({
            "type": "mcp_tool", "server": crate::broker::testing::CRM, "tools": ["pay", "refund"],
            "constraints": {"pay": {"amount": {"max": 500}}}
        }))
        .unwrap();
        let mut start = f.start("t1");
        start.tools = vec![ceiling.clone()];
        f.broker
            .start_task(&f.who(crate::broker::testing::ORCHESTRATOR), start)
            .await
            .unwrap();
        let narrow = tessera_core::authz::ToolGrant::parse(&serde_json::json!({
            "type": "mcp_tool", "server": crate::broker::testing::CRM, "tools": ["pay"],
            "constraints": {"pay": {"amount": {"max": 100}}}
        }))
        .unwrap();
        let mut ask = f.ask("t1", &["payments.send"]);
        ask.binding = crate::broker::BindingAsk::ClientCertificate;
        ask.request.tools = Some(narrow.clone());
        let TokenOutcome::Pending(approval) = f.broker.request_token(&f.who(AGENT), ask).await.unwrap() else {
            panic!("a high-impact scope must wait for approval");
        };
        assert_eq!(approval.request.tools.as_ref(), Some(&narrow));
        assert!(approval.is_bound());
        let mut wider = approval.clone();
        wider.request.tools = Some(ceiling);
        assert!(
            !wider.is_bound(),
            "the approval of one limit is not one of a wider limit"
        );
        f.broker
            .decide_approval(&f.who(OPERATOR), Ok((approval.id.clone(), "ok".into())), true)
            .await
            .unwrap();
        let Ok(AwaitStep::Issued(issued)) = f.broker.await_step(&f.who(AGENT), &approval.id).await else {
            panic!("an approved request yields its token");
        };
        assert_eq!(issued.authorization_details, vec![narrow]);
    }

    #[tokio::test]
    async fn a_denied_request_yields_no_token_and_only_its_requester_awaits_it() {
        let f = Fixture::new().await;
        let approval = pending(&f).await;
        let other = f.broker.await_step(&f.who(AGENT2), &approval.id).await;
        assert!(other.is_err(), "not the requester's");
        let refused = f
            .broker
            .decide_approval(&f.who(AGENT), Ok((approval.id.clone(), "mine".into())), true)
            .await;
        assert_eq!(refused.err().map(|e| e.kind()), Some(ErrorKind::PermissionDenied));
        f.broker
            .decide_approval(&f.who(OPERATOR), Ok((approval.id.clone(), "no".into())), false)
            .await
            .unwrap();
        let denied = f.broker.await_step(&f.who(AGENT), &approval.id).await;
        assert_eq!(denied.err().map(|e| e.kind()), Some(ErrorKind::PermissionDenied));
        assert_eq!(f.live("t1").await, 0);
    }

    #[tokio::test]
    async fn an_approval_whose_audit_record_fails_is_not_in_force() {
        let f = Fixture::new().await;
        let approval = pending(&f).await;
        let operator = f.who(OPERATOR);
        f.audit.fail(true);
        let lost = f
            .broker
            .decide_approval(&operator, Ok((approval.id.clone(), "ok".into())), true)
            .await;
        assert_eq!(lost.err().map(|e| e.kind()), Some(ErrorKind::Unavailable));
        f.audit.fail(false);
        let step = f.broker.await_step(&f.who(AGENT), &approval.id).await;
        assert!(step.is_err(), "no token from an approval without its record");
        assert_eq!(f.live("t1").await, 0);
    }
}
