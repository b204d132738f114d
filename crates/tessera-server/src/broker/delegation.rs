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
    /// DelegateToken: the caller holds the parent, names the delegate and
    /// receives a bearer child.
    Delegate,
    /// OfferDelegation: as DelegateToken, but nothing is minted; the caller
    /// receives an offer only the delegate can redeem.
    Offer,
    /// RedeemDelegation: the caller is the delegate an offer names; the
    /// child is bound to the key the caller proved in this call.
    Redeem,
    /// RFC 8693 token exchange: the caller was handed a bearer parent and
    /// asks for a child for itself (it is the delegate).
    Exchange,
}

/// Where the parent's claims come from.
enum ParentSource<'a> {
    /// A parent token, verified with the broker's keys.
    Token(&'a str),
    /// The claims of a parent token the broker verified when it signed an
    /// offer (the offer's signature vouches for them).
    Offered(Box<tessera_core::token::AccessClaims>),
}

/// A delegation offer (OfferDelegation): only `delegate` can redeem it.
#[derive(Debug, Clone)]
pub struct Offer {
    /// The signed offer (`typ: tessera-offer+jwt`).
    pub offer: String,
    /// The only identity that can redeem it.
    pub delegate: SpiffeId,
    /// Last moment it can be redeemed.
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

/// Replay-cache namespace of redeemed offers.
const OFFER_REPLAY_NAMESPACE: &str = "offer";

impl Broker {
    /// DelegateToken: `who` (the parent's holder) mints a bearer child of
    /// `parent_token` for `req.delegate` and receives it. Its `client_id`
    /// names the delegate but proves nothing about who holds it: the caller
    /// may keep it. Classes that must be bound are refused: they go through
    /// [`Broker::offer_delegation`]. No token leaves unless its grant is
    /// recorded and audited.
    pub async fn delegate_token(
        &self,
        who: &VerifiedIdentity,
        parent_token: &str,
        req: &DelegationRequest,
    ) -> Result<Issued, BrokerError> {
        self.mint_child(who, ParentSource::Token(parent_token), req, None, Hop::Delegate)
            .await
    }

    /// OfferDelegation: every check of DelegateToken (policy asked with the
    /// holder as principal), but the answer is an offer signed by the
    /// broker, which only `req.delegate` can redeem, once, within
    /// [`delegation::OFFER_TTL_SECS`]. Nothing is recorded: the redeem
    /// re-checks everything.
    pub async fn offer_delegation(
        &self,
        who: &VerifiedIdentity,
        parent_token: &str,
        req: &DelegationRequest,
    ) -> Result<Offer, BrokerError> {
        let now = self.clock.now();
        let (parent, _plan, _allowed) = self
            .plan_or_deny(who, ParentSource::Token(parent_token), req, None, Hop::Offer)
            .await?;
        let exp = (now + chrono::Duration::seconds(delegation::OFFER_TTL_SECS)).min(parent.grant().expires_at);
        let jti = GrantId::generate().map_err(|e| BrokerError::Store(StoreError::Unavailable(e.to_string())))?;
        let claims = delegation::OfferClaims {
            iss: self.settings.issuer.clone(),
            jti: jti.to_string(),
            iat: now.timestamp(),
            exp: exp.timestamp(),
            delegator: who.id().to_string(),
            delegate: req.delegate.to_string(),
            parent: parent.claims().clone(),
            scope: req.scopes.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "),
            ttl: req.ttl.map(|t| u64::from(t.as_secs())),
            tools: req.tools.clone(),
        };
        let offer = self
            .signer()
            .sign_jws(delegation::OFFER_TYP, &claims)
            .map_err(BrokerError::Signing)?;
        tracing::info!(
            delegator = %who.id(),
            delegate = %req.delegate,
            parent_grant = %parent.grant().id,
            "delegation offered"
        );
        Ok(Offer {
            offer,
            delegate: req.delegate.clone(),
            expires_at: claims.expires_at(),
        })
    }

    /// RedeemDelegation: `who`, the delegate an offer names, receives the
    /// child, bound to the key of `pop_proof` (its own proof, made for this
    /// call) if given. The offer is good once; the parent must still be
    /// live and every DelegateToken rule holds again now, with the holder
    /// as policy's principal.
    pub async fn redeem_delegation(
        &self,
        who: &VerifiedIdentity,
        offer: &str,
        pop_proof: Option<&str>,
    ) -> Result<Issued, BrokerError> {
        let now = self.clock.now();
        let jwks = self.jwks().await?;
        let claims = match delegation::verify_offer(offer, &jwks, &self.settings.issuer, now, self.settings.leeway_secs)
        {
            Ok(claims) => claims,
            Err(e) => {
                tracing::debug!(reason = %e, "delegation offer rejected");
                return self.deny_redeem(who, None, DelegationError::OfferNotLive.into()).await;
            }
        };
        let parsed = (|| {
            Ok::<_, delegation::OfferError>(DelegationRequest {
                tools: claims.tools.clone(),
                delegate: SpiffeId::parse(&claims.delegate).map_err(|_| delegation::OfferError::Claims)?,
                scopes: claims.scopes()?,
                ttl: claims.ttl()?,
                audience: None,
                task_id: None,
            })
        })();
        let Ok(req) = parsed else {
            return self.deny_redeem(who, None, DelegationError::OfferNotLive.into()).await;
        };
        if &req.delegate != who.id() {
            let e = DelegationError::NotTheDelegate(who.id().to_string());
            return self.deny_redeem(who, Some(&req), e.into()).await;
        }
        let binding = self.redeem_binding(who, pop_proof).await?;
        // Once: a second redeem (a copy of the offer, a retry) is refused.
        let until = claims.expires_at() + chrono::Duration::seconds(self.settings.leeway_secs.max(0));
        if !self
            .replay
            .first_use(OFFER_REPLAY_NAMESPACE, &claims.jti, until)
            .await?
        {
            return self
                .deny_redeem(who, Some(&req), DelegationError::OfferNotLive.into())
                .await;
        }
        self.mint_child(
            who,
            ParentSource::Offered(Box::new(claims.parent)),
            &req,
            binding,
            Hop::Redeem,
        )
        .await
    }

    /// Audits and counts a refused redeem, then returns `e`.
    async fn deny_redeem<T>(
        &self,
        who: &VerifiedIdentity,
        req: Option<&DelegationRequest>,
        e: BrokerError,
    ) -> Result<T, BrokerError> {
        let delegate = req.map_or_else(|| who.id().clone(), |r| r.delegate.clone());
        let denial = self
            .denial(AuditKind::TokenDenied, Some(who))
            .logged(DenialLog::Delegation(delegate.clone()))
            .metric("redeem_delegation")
            .counted()
            .reason(format!("delegation offer redeemed by {}: {e}", who.id()));
        self.deny(denial, e).await
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
        self.mint_child(actor, ParentSource::Token(subject_token), req, binding, Hop::Exchange)
            .await
    }

    /// [`Broker::plan_child`], with a refusal audited and counted.
    async fn plan_or_deny(
        &self,
        who: &VerifiedIdentity,
        source: ParentSource<'_>,
        req: &DelegationRequest,
        binding: Option<&Confirmation>,
        hop: Hop,
    ) -> Result<(ParentToken, delegation::ChildPlan, super::policy::PolicyAllowed), BrokerError> {
        match self.plan_child(who, source, req, binding, hop).await {
            Ok(ok) => Ok(ok),
            Err(e)
                if matches!(
                    e.kind(),
                    tessera_core::ErrorKind::Unavailable | tessera_core::ErrorKind::Internal
                ) =>
            {
                Err(e)
            }
            Err(e) => {
                let mut denial = self
                    .denial(AuditKind::TokenDenied, Some(who))
                    .logged(DenialLog::Delegation(req.delegate.clone()))
                    .metric(match hop {
                        Hop::Delegate | Hop::Exchange => "delegate_token",
                        Hop::Offer => "offer_delegation",
                        Hop::Redeem => "redeem_delegation",
                    })
                    .counted()
                    .reason(format!("delegation to {}: {e}", req.delegate));
                denial.event.task_id = req.task_id.as_ref().map(ToString::to_string);
                denial.event.audience = req.audience.as_ref().map(ToString::to_string);
                denial.event.scopes = req.scopes.iter().map(ToString::to_string).collect();
                denial.event.ttl_secs = req.ttl.map(|t| t.as_secs());
                self.deny(denial, e).await
            }
        }
    }

    async fn mint_child(
        &self,
        who: &VerifiedIdentity,
        source: ParentSource<'_>,
        req: &DelegationRequest,
        binding: Option<Confirmation>,
        hop: Hop,
    ) -> Result<Issued, BrokerError> {
        let now = self.clock.now();
        let (parent, plan, allowed) = self.plan_or_deny(who, source, req, binding.as_ref(), hop).await?;
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
        match self.record_grant(&grant, now).await {
            Ok(()) => {}
            Err(BrokerError::Store(StoreError::ParentNotLive)) => return Err(DelegationError::ParentNotLive.into()),
            Err(e) => return Err(e),
        }
        self.confirm_recorded(who, &grant, now).await?;
        // A token exchanged by the API it was presented to: the classic way
        // to launder a stolen bearer token. Allowed if policy allows it, but
        // flagged: counted toward the actor's anomaly rule and audited.
        let laundering = hop == Hop::Exchange && self.catalog.serves(&grant.audience, who.id());
        if laundering {
            tracing::warn!(
                actor = %who.id(),
                audience = %grant.audience,
                parent_grant = %parent.grant().id,
                "token exchange by a verifier of the token's own audience: flagged to the anomaly rules"
            );
            self.count_denial(who).await;
        }
        // A quarantine imposed (on any replica) while this child was being
        // minted: neither the delegate nor the holder keeps a token.
        self.confirm_not_quarantined(&[&grant.subject, &parent.grant().subject], &grant, now)
            .await?;
        let mut event = self.grant_event(AuditKind::TokenDelegated, who, &grant, plan.lifetime.ttl);
        allowed.stamp(&mut event);
        event.reason = Some(format!(
            "{} from grant {} of {} to {} at depth {}{}",
            match hop {
                Hop::Delegate | Hop::Offer => "delegated",
                Hop::Redeem => "delegated (offer redeemed by the delegate)",
                Hop::Exchange => "exchanged (RFC 8693)",
            },
            parent.grant().id,
            parent.grant().subject,
            grant.subject,
            plan.depth,
            binding_note(binding.as_ref())
        ));
        if laundering && let Some(reason) = event.reason.as_mut() {
            reason.push_str("; flagged: the actor serves the token's audience");
        }
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
            authorization_details: claims.authorization_details,
        })
    }

    /// Verifies the parent, loads what the decision needs, and decides.
    async fn plan_child(
        &self,
        who: &VerifiedIdentity,
        source: ParentSource<'_>,
        req: &DelegationRequest,
        binding: Option<&Confirmation>,
        hop: Hop,
    ) -> Result<(ParentToken, delegation::ChildPlan, super::policy::PolicyAllowed), BrokerError> {
        let now = self.clock.now();
        let claims = match source {
            ParentSource::Token(parent_token) => {
                let jwks = self.jwks().await?;
                // Forged, expired, unknown or revoked: one answer, as for introspection.
                tessera_core::token::verify_access_token(
                    parent_token,
                    &jwks,
                    &self.settings.issuer,
                    now,
                    self.settings.leeway_secs,
                )
                .map_err(|e| {
                    tracing::debug!(reason = %e, "parent token rejected");
                    DelegationError::ParentNotLive
                })?
            }
            ParentSource::Offered(claims) => *claims,
        };
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
            Hop::Delegate | Hop::Offer => {
                let delegate = self
                    .registry
                    .lookup(&req.delegate)
                    .map_err(|_| DelegationError::DelegateUnknown(req.delegate.to_string()))?;
                let plan =
                    delegation::plan_delegation(who, &parent, &delegate, &task, &self.catalog, req, limits, now)?;
                (plan, who)
            }
            Hop::Redeem | Hop::Exchange => {
                // A disabled or removed holder's tokens are not passed on,
                // nor a quarantined one's.
                holder =
                    VerifiedIdentity::token_holder(&self.registry, &parent.grant().subject, parent.grant().id.as_str())
                        .map_err(|_| DelegationError::ParentNotLive)?;
                let plan = if hop == Hop::Redeem {
                    // The holder delegated (it made the offer); the caller is the delegate.
                    delegation::plan_delegation(
                        &holder,
                        &parent,
                        who.identity(),
                        &task,
                        &self.catalog,
                        req,
                        limits,
                        now,
                    )?
                } else {
                    delegation::plan_exchange(who, holder.identity(), &parent, &task, &self.catalog, req, limits, now)?
                };
                (plan, &holder)
            }
        };
        // No quarantined identity receives a token by delegation: neither the
        // delegate nor (by a hop it did not make itself) the holder. Checked
        // against this replica's list and the store's shared one.
        self.refuse_if_quarantined_anywhere(&[&req.delegate, principal.id()], now)
            .await?;
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
                exchange: hop == Hop::Exchange,
                delegate_serves_audience: self.catalog.serves(&plan.audience, &req.delegate),
            }),
            blast_radius: Some(parent.grant().impact.blast_radius),
            requester: None,
            tools: tessera_core::authz::for_server(&plan.tools, plan.audience.as_str()),
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
        self.cap_child(&mut plan, &req.delegate, &allowed)?;
        match hop {
            // The binding is the delegate's to make, when it redeems.
            Hop::Offer => {}
            Hop::Delegate => {
                if self.settings.binding.bound_classes.contains(&plan.class) {
                    return Err(BrokerError::Binding(
                        "parent_token: a child of a class in [tokens] bound_classes is bound to the delegate's key; offer it (OfferDelegation) for the delegate to redeem",
                    ));
                }
            }
            Hop::Redeem => self.require_binding("pop_proof", plan.class, binding)?,
            Hop::Exchange => self.require_binding("delegate_pop_proof", plan.class, binding)?,
        }
        Ok((parent, plan, allowed))
    }

    /// The caps every grant obeys, applied to a child as to any grant: its
    /// lifetime shortened to the class cap and the cap of the delegate's
    /// identity kind (`[tokens.class_max_ttl]`, `[tokens.kind_max_ttl]`),
    /// and its blast radius refused above `[tokens] max_blast_radius` or
    /// what policy allows for this hop.
    fn cap_child(
        &self,
        plan: &mut delegation::ChildPlan,
        delegate: &SpiffeId,
        allowed: &super::policy::PolicyAllowed,
    ) -> Result<(), BrokerError> {
        let limits = &self.settings.risk;
        let kind = self
            .registry
            .lookup(delegate)
            .map_err(|_| DelegationError::DelegateUnknown(delegate.to_string()))?
            .kind;
        let caps = tessera_core::ttl::TtlCaps {
            identity: None,
            policy: None,
            class: limits.class_max_ttl.get(&plan.class).copied(),
            kind: limits.kind_max_ttl.get(&kind).copied(),
        };
        plan.lifetime = plan.lifetime.capped(caps.smallest());
        let high_impact = self.catalog.high_impact_scopes(&plan.audience, &plan.scopes);
        let score = tessera_core::blast::grant_score(&tessera_core::blast::GrantExposure {
            class: plan.class,
            scopes: u32::try_from(plan.scopes.len()).unwrap_or(u32::MAX),
            high_impact_scopes: u32::try_from(high_impact.len()).unwrap_or(u32::MAX),
            ttl_secs: plan.lifetime.ttl.as_secs(),
            delegation_allowance: 0,
        });
        let cap = [limits.max_blast_radius, allowed.max_blast_radius()]
            .into_iter()
            .flatten()
            .min();
        if let Some(cap) = cap
            && score > cap
        {
            return Err(BrokerError::Risk(tessera_core::risk::RiskError::BlastRadiusExceeded {
                score,
                cap,
            }));
        }
        Ok(())
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
            tools: None,
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
            .delegate_token(&f.who(AGENT), &parent.token, &to_agent2(&["contacts.read"]))
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
            .delegate_token(&f.who(AGENT), &parent.token, &to_agent2(&["contacts.read"]))
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
            .delegate_token(&f.who(AGENT), &parent.token, &to_agent2(&["contacts.write"]))
            .await;
        assert!(refused.is_err());
        let record = f.audit.last();
        assert_eq!(record.event, AuditKind::TokenDenied);
        assert!(record.reason.unwrap().starts_with("delegation to spiffe://td/agent2: "));
        assert_eq!(f.live("t1").await, 1);
        let forged = f
            .broker
            .delegate_token(&f.who(AGENT), "e30.e30.e30", &to_agent2(&["contacts.read"]))
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

    fn proof(f: &Fixture, key: &tessera_core::pop::ProofKey) -> String {
        key.proof_at(
            "POST",
            super::super::REDEEM_DELEGATION_HTU,
            f.broker.now().timestamp(),
            None,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_bound_child_is_minted_only_for_the_delegate_in_its_own_call() {
        let f = Fixture::new().await;
        f.task("t1").await;
        let key = tessera_core::pop::ProofKey::generate().unwrap();
        let parent = match f
            .broker
            .request_token(
                &f.who(AGENT),
                crate::broker::TokenAsk {
                    binding: crate::broker::BindingAsk::ClientCertificate,
                    ..f.ask("t1", &["contacts.write"])
                },
            )
            .await
            .unwrap()
        {
            crate::broker::TokenOutcome::Issued(i) => i,
            crate::broker::TokenOutcome::Pending(_) => panic!("pending"),
        };
        // The holder cannot get a write child for itself to keep.
        let kept = f
            .broker
            .delegate_token(&f.who(AGENT), &parent.token, &to_agent2(&["contacts.write"]))
            .await;
        assert_eq!(kept.err().map(|e| e.kind()), Some(ErrorKind::InvalidArgument));
        // It gets an offer, which is no token and which it cannot redeem.
        let offer = f
            .broker
            .offer_delegation(&f.who(AGENT), &parent.token, &to_agent2(&["contacts.write"]))
            .await
            .unwrap();
        assert_eq!(offer.delegate, id(AGENT2));
        assert_eq!(f.live("t1").await, 1);
        let by_holder = f
            .broker
            .redeem_delegation(&f.who(AGENT), &offer.offer, Some(&proof(&f, &key)))
            .await;
        assert!(
            matches!(
                by_holder,
                Err(BrokerError::Delegation(DelegationError::NotTheDelegate(_)))
            ),
            "{by_holder:?}"
        );
        // The delegate redeems it with its own proof: the child is bound to
        // the delegate's key and names it as holder.
        let child = f
            .broker
            .redeem_delegation(&f.who(AGENT2), &offer.offer, Some(&proof(&f, &key)))
            .await
            .unwrap();
        assert_eq!(child.grant.subject, id(AGENT2));
        assert_eq!(child.token_type, "DPoP");
        let (_, payload) = tessera_core::token::decode_unverified(&child.token).unwrap();
        let claims: tessera_core::token::AccessClaims = serde_json::from_slice(&payload).unwrap();
        assert_eq!(claims.client_id, AGENT2);
        assert_eq!(claims.cnf, Some(Confirmation::Jkt(key.thumbprint().to_owned())));
        // Once only.
        let again = f
            .broker
            .redeem_delegation(&f.who(AGENT2), &offer.offer, Some(&proof(&f, &key)))
            .await;
        assert!(matches!(
            again,
            Err(BrokerError::Delegation(DelegationError::OfferNotLive))
        ));
        assert_eq!(f.live("t1").await, 2);
        // An offer is refused where a token is expected, and a token where an offer is.
        let as_parent = f
            .broker
            .delegate_token(&f.who(AGENT), &offer.offer, &to_agent2(&["contacts.write"]))
            .await;
        assert!(matches!(
            as_parent,
            Err(BrokerError::Delegation(DelegationError::ParentNotLive))
        ));
        let as_offer = f
            .broker
            .redeem_delegation(&f.who(AGENT2), &parent.token, Some(&proof(&f, &key)))
            .await;
        assert!(matches!(
            as_offer,
            Err(BrokerError::Delegation(DelegationError::OfferNotLive))
        ));
    }

    #[tokio::test]
    async fn an_offer_dies_with_its_parent_and_its_time() {
        let f = Fixture::new().await;
        f.task("t1").await;
        let parent = f.issue("t1", &["contacts.read"]).await;
        let offer = f
            .broker
            .offer_delegation(&f.who(AGENT), &parent.token, &to_agent2(&["contacts.read"]))
            .await
            .unwrap();
        let late = f
            .broker
            .offer_delegation(&f.who(AGENT), &parent.token, &to_agent2(&["contacts.read"]))
            .await
            .unwrap();
        f.broker.release(&f.who(AGENT), &parent.grant.id).await.unwrap();
        let orphan = f.broker.redeem_delegation(&f.who(AGENT2), &offer.offer, None).await;
        assert!(matches!(
            orphan,
            Err(BrokerError::Delegation(DelegationError::ParentNotLive))
        ));
        f.clock.advance(chrono::Duration::seconds(delegation::OFFER_TTL_SECS));
        let expired = f.broker.redeem_delegation(&f.who(AGENT2), &late.offer, None).await;
        assert!(matches!(
            expired,
            Err(BrokerError::Delegation(DelegationError::OfferNotLive))
        ));
        assert_eq!(f.live("t1").await, 0);
    }

    #[tokio::test]
    async fn a_delegated_child_obeys_the_kind_ttl_cap_like_any_grant() {
        use crate::broker::testing::SERVICE_AGENT;
        use tessera_core::identity::IdentityKind;
        let mut settings = crate::broker::testing::settings();
        // Agents' tokens live at most two minutes; services' an hour.
        settings.risk.kind_max_ttl = [
            (IdentityKind::Agent, tessera_core::ttl::Ttl::from_secs(120).unwrap()),
            (IdentityKind::Service, tessera_core::ttl::Ttl::from_secs(3600).unwrap()),
        ]
        .into_iter()
        .collect();
        let f = Fixture::with(settings).await;
        let mut start = f.start("t1");
        start.agents.insert(id(SERVICE_AGENT));
        f.broker
            .start_task(&f.who(crate::broker::testing::ORCHESTRATOR), start)
            .await
            .unwrap();
        // A service (kind cap 1 h) holds a 30-minute read token...
        let mut ask = f.ask("t1", &["contacts.read"]);
        ask.request.ttl = Some(tessera_core::ttl::Ttl::from_secs(1800).unwrap());
        let parent = match f.broker.request_token(&f.who(SERVICE_AGENT), ask).await.unwrap() {
            crate::broker::TokenOutcome::Issued(i) => i,
            crate::broker::TokenOutcome::Pending(_) => panic!("pending"),
        };
        assert_eq!(
            parent.grant.expires_at - parent.grant.issued_at,
            chrono::Duration::seconds(1800)
        );
        // ...and delegates 30 minutes to an agent, whose kind is capped at 2.
        let mut req = to_agent2(&["contacts.read"]);
        req.ttl = Some(tessera_core::ttl::Ttl::from_secs(1800).unwrap());
        let child = f
            .broker
            .delegate_token(&f.who(SERVICE_AGENT), &parent.token, &req)
            .await
            .unwrap();
        assert_eq!(
            child.grant.expires_at - child.grant.issued_at,
            chrono::Duration::seconds(120)
        );
    }

    #[tokio::test]
    async fn no_quarantined_identity_receives_a_token_by_delegation_or_exchange() {
        use tessera_store::GrantStore as _;
        let f = Fixture::with_anomaly(5).await;
        f.task("t1").await;
        let parent = f.issue("t1", &["contacts.read"]).await;
        // Quarantined by another replica: only the shared list knows.
        let until = f.broker.now() + chrono::Duration::hours(1);
        f.store
            .quarantine_subject(&id(AGENT2), until, "test", f.broker.now())
            .await
            .unwrap();
        let quarantined = |r: &Result<(), BrokerError>| matches!(r, Err(BrokerError::Quarantined { .. }));
        let delegated = f
            .broker
            .delegate_token(&f.who(AGENT), &parent.token, &to_agent2(&["contacts.read"]))
            .await
            .map(|_| ());
        assert!(quarantined(&delegated), "{:?}", delegated.err());
        let offered = f
            .broker
            .offer_delegation(&f.who(AGENT), &parent.token, &to_agent2(&["contacts.read"]))
            .await
            .map(|_| ());
        assert!(quarantined(&offered), "{:?}", offered.err());
        let exchanged = f
            .broker
            .exchange_token(&f.who(AGENT2), &parent.token, &to_agent2(&["contacts.read"]), None)
            .await
            .map(|_| ());
        assert!(quarantined(&exchanged), "{:?}", exchanged.err());
        assert_eq!(f.live("t1").await, 1);
    }

    #[tokio::test]
    async fn no_token_is_exchanged_or_redeemed_from_a_quarantined_holder() {
        use tessera_store::GrantStore as _;
        let f = Fixture::with_anomaly(5).await;
        f.task("t1").await;
        let parent = f.issue("t1", &["contacts.read"]).await;
        let offer = f
            .broker
            .offer_delegation(&f.who(AGENT), &parent.token, &to_agent2(&["contacts.read"]))
            .await
            .unwrap();
        let until = f.broker.now() + chrono::Duration::hours(1);
        f.store
            .quarantine_subject(&id(AGENT), until, "test", f.broker.now())
            .await
            .unwrap();
        let redeemed = f.broker.redeem_delegation(&f.who(AGENT2), &offer.offer, None).await;
        assert!(
            matches!(redeemed, Err(BrokerError::Quarantined { .. })),
            "{:?}",
            redeemed.err()
        );
        let exchanged = f
            .broker
            .exchange_token(&f.who(AGENT2), &parent.token, &to_agent2(&["contacts.read"]), None)
            .await;
        assert!(
            matches!(exchanged, Err(BrokerError::Quarantined { .. })),
            "{:?}",
            exchanged.err()
        );
        assert_eq!(f.live("t1").await, 1);
    }

    fn consent_policy() -> crate::broker::policy::PolicySetup {
        use tessera_core::policy::{BASELINE, BASELINE_NAME, PolicyEngine, PolicyFile};
        let consent = r#"
@id("exchange-needs-consent")
@reason("a token is exchanged only by an API its holder sent it to")
forbid (principal, action == Action::"DelegateToken", resource)
when {
  context has exchange && context.exchange &&
  !(context has delegate_serves_audience && context.delegate_serves_audience)
};
"#;
        let engine = PolicyEngine::load(&[
            PolicyFile::new(BASELINE_NAME, BASELINE),
            PolicyFile::new("consent.cedar", consent),
        ])
        .unwrap();
        crate::broker::policy::PolicySetup {
            engine: std::sync::Arc::new(engine),
            source: None,
        }
    }

    #[tokio::test]
    async fn policy_can_require_the_holders_consent_for_an_exchange() {
        use crate::broker::testing::AGENT_SERVING_CRM;
        let mut settings = crate::broker::testing::settings();
        settings.policy = consent_policy();
        let f = Fixture::with(settings).await;
        let mut start = f.start("t1");
        start.agents.insert(id(AGENT_SERVING_CRM));
        f.broker
            .start_task(&f.who(crate::broker::testing::ORCHESTRATOR), start)
            .await
            .unwrap();
        let parent = f.issue("t1", &["contacts.read"]).await;
        // A stolen bearer token, exchanged by an agent it was never sent to.
        let stolen = f
            .broker
            .exchange_token(&f.who(AGENT2), &parent.token, &to_agent2(&["contacts.read"]), None)
            .await;
        assert_eq!(stolen.err().map(|e| e.kind()), Some(ErrorKind::PermissionDenied));
        // The API the holder sent it to may.
        let mut req = to_agent2(&["contacts.read"]);
        req.delegate = id(AGENT_SERVING_CRM);
        let child = f
            .broker
            .exchange_token(&f.who(AGENT_SERVING_CRM), &parent.token, &req, None)
            .await
            .unwrap();
        assert_eq!(child.grant.subject, id(AGENT_SERVING_CRM));
    }

    #[tokio::test]
    async fn an_exchange_by_the_tokens_own_audience_is_flagged_to_the_anomaly_rules() {
        use crate::broker::testing::AGENT_SERVING_CRM;
        let f = Fixture::with_anomaly(2).await;
        let mut start = f.start("t1");
        start.agents.insert(id(AGENT_SERVING_CRM));
        f.broker
            .start_task(&f.who(crate::broker::testing::ORCHESTRATOR), start)
            .await
            .unwrap();
        let mut req = to_agent2(&["contacts.read"]);
        req.delegate = id(AGENT_SERVING_CRM);
        let parent = f.issue("t1", &["contacts.read"]).await;
        f.broker
            .exchange_token(&f.who(AGENT_SERVING_CRM), &parent.token, &req, None)
            .await
            .unwrap();
        let record = f.audit.of(AuditKind::TokenDelegated).pop().unwrap();
        assert!(record.reason.unwrap().contains("flagged"));
        assert!(f.broker.admit(&f.who(AGENT_SERVING_CRM)).await.is_ok());
        // Each flag is a strike: the second trips the two-denial rule, and
        // the child it was minting is taken back.
        let parent = f.issue("t1", &["contacts.read"]).await;
        let second = f
            .broker
            .exchange_token(&f.who(AGENT_SERVING_CRM), &parent.token, &req, None)
            .await;
        assert!(
            matches!(second, Err(BrokerError::Quarantined { .. })),
            "{:?}",
            second.err()
        );
        assert!(f.broker.admit(&f.who(AGENT_SERVING_CRM)).await.is_err());
        // An exchange by an agent that does not serve the audience is no strike.
        let f = Fixture::with_anomaly(1).await;
        f.task("t1").await;
        let parent = f.issue("t1", &["contacts.read"]).await;
        f.broker
            .exchange_token(&f.who(AGENT2), &parent.token, &to_agent2(&["contacts.read"]), None)
            .await
            .unwrap();
        assert!(f.broker.admit(&f.who(AGENT2)).await.is_ok());
    }

    /// The memory store, but recording a delegated grant also quarantines
    /// `subject` in the shared list: a quarantine another replica imposes
    /// while the child is being minted.
    struct QuarantineOnRecord {
        inner: std::sync::Arc<tessera_store::MemoryStore>,
        subject: SpiffeId,
    }

    #[async_trait::async_trait]
    impl tessera_store::GrantStore for QuarantineOnRecord {
        async fn create_task(&self, t: &tessera_core::task::Task) -> Result<(), StoreError> {
            self.inner.create_task(t).await
        }
        async fn task(&self, id: &tessera_core::task::TaskId) -> Result<Option<tessera_core::task::Task>, StoreError> {
            self.inner.task(id).await
        }
        async fn live_grants(&self, id: &tessera_core::task::TaskId, now: Now) -> Result<u64, StoreError> {
            self.inner.live_grants(id, now).await
        }
        async fn new_grant_id(&self, task: &tessera_core::task::TaskId) -> Result<GrantId, StoreError> {
            self.inner.new_grant_id(task).await
        }
        async fn record_grant(&self, grant: &Grant, now: Now) -> Result<(), StoreError> {
            self.inner.record_grant(grant, now).await?;
            if grant.parent.is_some() {
                let until = now + chrono::Duration::hours(1);
                self.inner
                    .quarantine_subject(&self.subject, until, "elsewhere", now)
                    .await?;
            }
            Ok(())
        }
        async fn grant(&self, id: &GrantId) -> Result<Option<Grant>, StoreError> {
            self.inner.grant(id).await
        }
        async fn revoke_grant(
            &self,
            id: &GrantId,
            reason: &str,
            now: Now,
        ) -> Result<Option<tessera_store::RevokeOutcome>, StoreError> {
            self.inner.revoke_grant(id, reason, now).await
        }
        async fn end_task(
            &self,
            id: &tessera_core::task::TaskId,
            state: tessera_core::task::TaskState,
            reason: &str,
            now: Now,
        ) -> Result<tessera_store::TaskEnded, StoreError> {
            self.inner.end_task(id, state, reason, now).await
        }
        async fn read_revocations(
            &self,
            after: Option<&tessera_store::FeedPosition>,
            max: usize,
            wait: std::time::Duration,
        ) -> Result<tessera_store::FeedBatch, StoreError> {
            self.inner.read_revocations(after, max, wait).await
        }
        async fn list_grants(
            &self,
            filter: &tessera_store::GrantFilter,
            after: Option<&str>,
            limit: usize,
            now: Now,
        ) -> Result<tessera_store::GrantPage, StoreError> {
            self.inner.list_grants(filter, after, limit, now).await
        }
        async fn revoke_subject(&self, subject: &SpiffeId, reason: &str, now: Now) -> Result<u64, StoreError> {
            self.inner.revoke_subject(subject, reason, now).await
        }
        async fn active_task_ids(&self, now: Now) -> Result<Vec<tessera_core::task::TaskId>, StoreError> {
            self.inner.active_task_ids(now).await
        }
        async fn withdraw_keys_except(
            &self,
            keep: &str,
            withdrawal: &tessera_store::KeyWithdrawal<'_>,
        ) -> Result<u64, StoreError> {
            self.inner.withdraw_keys_except(keep, withdrawal).await
        }
        async fn publish_key(&self, key: &tessera_store::PublishedKey) -> Result<(), StoreError> {
            self.inner.publish_key(key).await
        }
        async fn published_keys(&self, now: Now) -> Result<Vec<tessera_store::PublishedKey>, StoreError> {
            self.inner.published_keys(now).await
        }
        async fn disable_subject(&self, subject: &SpiffeId, reason: &str, now: Now) -> Result<bool, StoreError> {
            self.inner.disable_subject(subject, reason, now).await
        }
        async fn enable_subject(&self, subject: &SpiffeId) -> Result<bool, StoreError> {
            self.inner.enable_subject(subject).await
        }
        async fn disabled_subjects(&self) -> Result<BTreeSet<SpiffeId>, StoreError> {
            self.inner.disabled_subjects().await
        }
        async fn subject_disabled(&self, subject: &SpiffeId) -> Result<bool, StoreError> {
            self.inner.subject_disabled(subject).await
        }
        async fn quarantine_subject(
            &self,
            subject: &SpiffeId,
            until: Now,
            why: &str,
            now: Now,
        ) -> Result<(), StoreError> {
            self.inner.quarantine_subject(subject, until, why, now).await
        }
        async fn quarantined_subjects(&self, now: Now) -> Result<Vec<tessera_store::Quarantine>, StoreError> {
            self.inner.quarantined_subjects(now).await
        }
        async fn ping(&self) -> Result<(), StoreError> {
            self.inner.ping().await
        }
    }

    type Now = chrono::DateTime<chrono::Utc>;

    #[tokio::test]
    async fn a_delegate_quarantined_while_its_child_is_recorded_keeps_no_token() {
        let mut settings = crate::broker::testing::settings();
        settings.anomaly = Some(tessera_core::anomaly::AnomalyRule {
            denials: 5,
            within: chrono::Duration::seconds(60),
            quarantine: chrono::Duration::hours(1),
        });
        let f = Fixture::with_store(settings, |inner| {
            std::sync::Arc::new(QuarantineOnRecord {
                inner,
                subject: id(AGENT2),
            })
        })
        .await;
        f.task("t1").await;
        let parent = f.issue("t1", &["contacts.read"]).await;
        let refused = f
            .broker
            .delegate_token(&f.who(AGENT), &parent.token, &to_agent2(&["contacts.read"]))
            .await;
        assert!(
            matches!(refused, Err(BrokerError::Quarantined { .. })),
            "{:?}",
            refused.err()
        );
        // The child was recorded, then taken back: only the parent is live.
        assert_eq!(f.live("t1").await, 1);
    }
}
