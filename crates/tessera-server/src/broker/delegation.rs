//! DelegateToken: the holder of a live token mints an attenuated child for
//! another agent of the same task. The decision is core's
//! ([`tessera_core::delegation::plan_delegation`]); this applies it: verify
//! the parent token with the broker's own keys, load its grant, decide, sign,
//! record the child under its parent (the store refuses a child under a dead
//! parent, atomically with the parent's revocation), audit.

use tessera_core::audit::AuditKind;
use tessera_core::delegation::{self, DelegationError, DelegationLimits, DelegationRequest, ParentToken};
use tessera_core::grant::{Grant, GrantId, GrantState};
use tessera_core::identity::{SpiffeId, VerifiedIdentity};
use tessera_core::task::ScopeClass;
use tessera_core::token::{ACCESS_TOKEN_TYP, Confirmation};
use tessera_store::StoreError;

use super::record::{DenialLog, Metric, Success, Told};
use super::{Broker, BrokerError, Issued};

/// `[delegation]` and `[tokens] bound_classes`, as the broker applies them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingSettings {
    /// Most delegations from a root token (0: delegation off).
    pub max_depth: u32,
    /// Scope classes never issued as bearer tokens.
    pub bound_classes: std::collections::BTreeSet<ScopeClass>,
}

impl Default for BindingSettings {
    fn default() -> Self {
        Self {
            max_depth: delegation::DEFAULT_MAX_DEPTH,
            bound_classes: [ScopeClass::Write, ScopeClass::Admin].into_iter().collect(),
        }
    }
}

/// How the caller came by the parent token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hop {
    /// DelegateToken: the caller holds the parent and names the delegate.
    Delegate,
    /// RFC 8693 token exchange: the caller was handed a bearer parent and
    /// asks for a child for itself (it is the delegate).
    Exchange,
}

impl Broker {
    /// DelegateToken: `who` (the parent's holder) mints a child of
    /// `parent_token` for `req.delegate`, bound to the key of
    /// `delegate_proof` (the delegate's proof for DelegateToken) if given.
    /// No token leaves unless its grant is recorded and audited.
    pub async fn delegate_token(
        &self,
        who: &VerifiedIdentity,
        parent_token: &str,
        req: &DelegationRequest,
        delegate_proof: Option<&str>,
    ) -> Result<Issued, BrokerError> {
        let binding = self.delegate_binding(who, delegate_proof).await?;
        self.mint_child(who, parent_token, req, binding, Hop::Delegate).await
    }

    /// RFC 8693 token exchange (the HTTP facade's `/oauth/token`): `actor`
    /// presents `subject_token`, a live bearer token of another agent of the
    /// same task, and gets a child for itself, `act` naming it outermost.
    /// `req.delegate` must be `actor`. The same attenuation, depth, task,
    /// policy, store and audit rules as DelegateToken apply, as if the
    /// holder had delegated to the actor: Cedar's `DelegateToken` is asked
    /// with the holder as principal and the actor as `delegate`, and a
    /// quarantined or disabled holder's token is not exchanged. A bound
    /// subject token is refused.
    pub async fn exchange_token(
        &self,
        actor: &VerifiedIdentity,
        subject_token: &str,
        req: &DelegationRequest,
        binding: Option<Confirmation>,
    ) -> Result<Issued, BrokerError> {
        if &req.delegate != actor.id() {
            return Err(BrokerError::Binding(
                "delegate: a token exchange is for the authenticated caller",
            ));
        }
        self.mint_child(actor, subject_token, req, binding, Hop::Exchange).await
    }

    async fn mint_child(
        &self,
        who: &VerifiedIdentity,
        parent_token: &str,
        req: &DelegationRequest,
        binding: Option<Confirmation>,
        hop: Hop,
    ) -> Result<Issued, BrokerError> {
        let now = self.clock.now();
        let planned = self.plan_child(who, parent_token, req, binding.as_ref(), hop).await;
        let (parent, plan, allowed) = match planned {
            Ok(ok) => ok,
            Err(e)
                if matches!(
                    e.kind(),
                    tessera_core::ErrorKind::Unavailable | tessera_core::ErrorKind::Internal
                ) =>
            {
                return Err(e);
            }
            Err(e) => {
                let mut denial = self
                    .denial(AuditKind::TokenDenied, Some(who))
                    .logged(DenialLog::Delegation(req.delegate.clone()))
                    .metric("delegate_token")
                    .counted()
                    .reason(format!("delegation to {}: {e}", req.delegate));
                denial.event.task_id = req.task_id.as_ref().map(ToString::to_string);
                denial.event.audience = req.audience.as_ref().map(ToString::to_string);
                denial.event.scopes = req.scopes.iter().map(ToString::to_string).collect();
                denial.event.ttl_secs = req.ttl.map(|t| t.as_secs());
                return self.deny(denial, e).await;
            }
        };
        let id = self.store.new_grant_id(&plan.task_id).await?;
        let claims = plan.claims(&self.settings.issuer, &id, &req.delegate, binding.clone());
        let signer = self.signer();
        let token = signer
            .sign_jws(ACCESS_TOKEN_TYP, &claims)
            .map_err(BrokerError::Signing)?;
        let grant = Grant {
            id,
            task_id: plan.task_id.clone(),
            subject: req.delegate.clone(),
            audience: plan.audience.clone(),
            scopes: plan.scopes.clone(),
            class: plan.class,
            issued_at: plan.lifetime.issued_at,
            expires_at: plan.lifetime.expires_at,
            parent: Some(parent.grant().id.clone()),
            key_id: signer.kid().to_owned(),
            state: GrantState::Active,
            revoked_at: None,
            revocation_reason: None,
            // A child is never wider than its parent: its parent's impact
            // (high-impact flag, blast radius, approval) bounds it.
            impact: parent.grant().impact.clone(),
        };
        // INVARIANT: the token is returned only after its grant is recorded,
        // and the store records a child only under a live parent.
        match self.store.record_grant(&grant, now).await {
            Ok(()) => {}
            Err(StoreError::ParentNotLive) => return Err(DelegationError::ParentNotLive.into()),
            Err(e) => return Err(e.into()),
        }
        self.confirm_recorded(who, &grant, now).await?;
        let mut event = self.grant_event(AuditKind::TokenDelegated, who, &grant, plan.lifetime.ttl);
        allowed.stamp(&mut event);
        event.reason = Some(format!(
            "{} from grant {} of {} to {} at depth {}{}",
            match hop {
                Hop::Delegate => "delegated",
                Hop::Exchange => "exchanged (RFC 8693)",
            },
            parent.grant().id,
            parent.grant().subject,
            grant.subject,
            plan.depth,
            binding_note(binding.as_ref())
        ));
        let told = Told::TokenDelegated {
            grant: &grant,
            parent: parent.grant(),
            exchange: hop == Hop::Exchange,
            depth: plan.depth,
            ttl: plan.lifetime.ttl,
            bound: binding.is_some(),
        };
        self.succeed_with_grant(
            Success::new(event, told).metric(Metric::Delegated(grant.class)),
            &grant.id,
            now,
        )
        .await?;
        Ok(Issued {
            token,
            grant,
            token_type: binding.as_ref().map_or("Bearer", |b| b.token_type()),
        })
    }

    /// Verifies the parent, loads what the decision needs, and decides.
    async fn plan_child(
        &self,
        who: &VerifiedIdentity,
        parent_token: &str,
        req: &DelegationRequest,
        binding: Option<&Confirmation>,
        hop: Hop,
    ) -> Result<(ParentToken, delegation::ChildPlan, super::policy::PolicyAllowed), BrokerError> {
        let now = self.clock.now();
        let jwks = self.jwks().await?;
        // Forged, expired, unknown or revoked: one answer, as for introspection.
        let claims = tessera_core::token::verify_access_token(
            parent_token,
            &jwks,
            &self.settings.issuer,
            now,
            self.settings.leeway_secs,
        )
        .map_err(|e| {
            tracing::debug!(reason = %e, "parent token rejected");
            DelegationError::ParentNotLive
        })?;
        let id = GrantId::parse(&claims.jti).map_err(|_| DelegationError::ParentNotLive)?;
        let grant = self.store.grant(&id).await?.ok_or(DelegationError::ParentNotLive)?;
        let parent = ParentToken::bind(claims, grant)?;
        let task = self.load_task(&parent.grant().task_id).await?;
        let limits = DelegationLimits {
            max_depth: self.settings.binding.max_depth,
            ttl: self.settings.ttl,
        };
        // The principal policy judges the hop for: the holder, who delegates.
        let holder;
        let (mut plan, principal) = match hop {
            Hop::Delegate => {
                let delegate = self
                    .registry
                    .lookup(&req.delegate)
                    .map_err(|_| DelegationError::DelegateUnknown(req.delegate.to_string()))?;
                let plan =
                    delegation::plan_delegation(who, &parent, &delegate, &task, &self.catalog, req, limits, now)?;
                (plan, who)
            }
            Hop::Exchange => {
                // A disabled or removed holder's tokens are not exchanged,
                // nor a quarantined one's.
                holder =
                    VerifiedIdentity::token_holder(&self.registry, &parent.grant().subject, parent.grant().id.as_str())
                        .map_err(|_| DelegationError::ParentNotLive)?;
                self.refuse_if_quarantined(holder.id())?;
                let plan =
                    delegation::plan_exchange(who, holder.identity(), &parent, &task, &self.catalog, req, limits, now)?;
                (plan, &holder)
            }
        };
        // Policy decides the hop (DelegateToken); code has already checked
        // attenuation, depth, the task and the parent's liveness.
        let mut chain = Vec::with_capacity(plan.chain.len());
        for hop in &plan.chain {
            chain.push(SpiffeId::parse(&hop.sub).map_err(|_| DelegationError::ParentNotLive)?);
        }
        let facts = tessera_core::policy::TokenFacts {
            audience: &plan.audience,
            scopes: &plan.scopes,
            class: plan.class,
            high_impact: parent.grant().impact.high_impact || self.high_impact(&plan.audience, &plan.scopes),
            requested_ttl: plan.lifetime.ttl,
            delegation: Some(tessera_core::policy::Delegation {
                depth: u32::try_from(plan.depth).unwrap_or(u32::MAX),
                chain: &chain,
                delegate: &req.delegate,
            }),
            blast_radius: Some(parent.grant().impact.blast_radius),
            requester: None,
        };
        let allowed = self.ask_policy(
            principal,
            &tessera_core::policy::PolicyQuery::Token {
                action: tessera_core::policy::TokenAction::Delegate,
                task: &task,
                facts,
            },
        )?;
        if allowed.approval_required() {
            // A delegated token never waits for a person: refuse instead.
            return Err(super::policy::PolicyRefusal::ApprovalRequired {
                action: allowed.action(),
                policy_ids: allowed.policy_ids().to_vec(),
                policy_hash: allowed.policy_hash().into(),
            }
            .into());
        }
        plan.lifetime = allowed.cap(plan.lifetime);
        self.require_binding("delegate_pop_proof", plan.class, binding)?;
        Ok((parent, plan, allowed))
    }

    /// Refuses a bearer token of a class that `[tokens] bound_classes` says
    /// must be bound; `field` is the request field that would bind it.
    pub(crate) fn require_binding(
        &self,
        field: &'static str,
        class: ScopeClass,
        binding: Option<&Confirmation>,
    ) -> Result<(), BrokerError> {
        if binding.is_none() && self.settings.binding.bound_classes.contains(&class) {
            return Err(BrokerError::Unbound { field, class });
        }
        Ok(())
    }
}

fn binding_note(binding: Option<&Confirmation>) -> &'static str {
    match binding {
        Some(Confirmation::Jkt(_)) => ", bound to a proof-of-possession key",
        Some(Confirmation::X5tS256(_)) => ", bound to a client certificate",
        None => "",
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use tessera_core::ErrorKind;
    use tessera_core::audit::AuditKind;

    use super::*;
    use crate::broker::testing::{AGENT, AGENT2, Fixture, id, scope};

    fn to_agent2(scopes: &[&str]) -> DelegationRequest {
        DelegationRequest {
            delegate: id(AGENT2),
            scopes: scopes.iter().map(|s| scope(s)).collect::<BTreeSet<_>>(),
            ttl: None,
            audience: None,
            task_id: None,
        }
    }

    #[tokio::test]
    async fn a_holder_delegates_an_attenuated_child() {
        let f = Fixture::new().await;
        f.task("t1").await;
        let parent = f.issue("t1", &["contacts.read", "notes.read"]).await;
        let child = f
            .broker
            .delegate_token(&f.who(AGENT), &parent.token, &to_agent2(&["contacts.read"]), None)
            .await
            .unwrap();
        assert_eq!(child.grant.parent.as_ref(), Some(&parent.grant.id));
        assert_eq!(child.grant.subject, id(AGENT2));
        assert_eq!(f.audit.last().event, AuditKind::TokenDelegated);
        // The child dies with its parent.
        f.broker.release(&f.who(AGENT), &parent.grant.id).await.unwrap();
        assert_eq!(f.live("t1").await, 0);
    }

    #[tokio::test]
    async fn no_child_without_its_audit_record() {
        let f = Fixture::new().await;
        f.task("t1").await;
        let parent = f.issue("t1", &["contacts.read"]).await;
        f.audit.fail(true);
        let refused = f
            .broker
            .delegate_token(&f.who(AGENT), &parent.token, &to_agent2(&["contacts.read"]), None)
            .await;
        assert_eq!(refused.err().map(|e| e.kind()), Some(ErrorKind::Unavailable));
        // The child was recorded, then taken back: only the parent is live.
        assert_eq!(f.live("t1").await, 1);
    }

    #[tokio::test]
    async fn a_child_wider_than_its_parent_is_refused_and_audited() {
        let f = Fixture::new().await;
        f.task("t1").await;
        let parent = f.issue("t1", &["contacts.read"]).await;
        let refused = f
            .broker
            .delegate_token(&f.who(AGENT), &parent.token, &to_agent2(&["contacts.write"]), None)
            .await;
        assert!(refused.is_err());
        let record = f.audit.last();
        assert_eq!(record.event, AuditKind::TokenDenied);
        assert!(record.reason.unwrap().starts_with("delegation to spiffe://td/agent2: "));
        assert_eq!(f.live("t1").await, 1);
        let forged = f
            .broker
            .delegate_token(&f.who(AGENT), "e30.e30.e30", &to_agent2(&["contacts.read"]), None)
            .await;
        assert!(matches!(
            forged,
            Err(BrokerError::Delegation(DelegationError::ParentNotLive))
        ));
    }

    #[tokio::test]
    async fn a_token_exchange_is_for_the_caller_only() {
        let f = Fixture::new().await;
        f.task("t1").await;
        let parent = f.issue("t1", &["contacts.read"]).await;
        let wrong = f
            .broker
            .exchange_token(&f.who(AGENT), &parent.token, &to_agent2(&["contacts.read"]), None)
            .await;
        assert_eq!(wrong.err().map(|e| e.kind()), Some(ErrorKind::InvalidArgument));
        let child = f
            .broker
            .exchange_token(&f.who(AGENT2), &parent.token, &to_agent2(&["contacts.read"]), None)
            .await
            .unwrap();
        assert_eq!(child.grant.subject, id(AGENT2));
    }
}
