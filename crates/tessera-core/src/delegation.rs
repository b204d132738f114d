//! Delegation: the pure decision to mint a child token from a parent token
//! (DelegateToken), and the checks a verifier runs on a delegated token's
//! chain. The claim formats are specified in `docs/ARCHITECTURE.md`
//! ("Token claims: act and cnf").
//!
//! The invariants, checked here and by property tests: a child's scopes are a
//! subset of its parent's, its expiry is no later than its parent's, its
//! class is never higher, its audience and task are its parent's, and its
//! depth is bounded.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

use crate::catalog::{ApiCatalog, CatalogError};
use crate::error::ErrorKind;
use crate::grant::{Grant, GrantId};
use crate::identity::{Identity, Role, SpiffeId, VerifiedIdentity};
use crate::task::{Audience, Scope, ScopeClass, Task, TaskError, TaskId, TaskState};
use crate::token::{AccessClaims, Actor, ChainHop, Confirmation, MAX_CHAIN_LEN};
/// The chain checks moved to [`crate::token`], where every token check lives;
/// re-exported for existing callers.
pub use crate::token::{ChainError, check_chain};
use crate::ttl::{self, Lifetime, Ttl, TtlError, TtlLimits};

mod offer;
pub use offer::{OFFER_TTL_SECS, OFFER_TYP, OfferClaims, OfferError, verify_offer};

/// The default `[delegation] max_depth`.
pub const DEFAULT_MAX_DEPTH: u32 = 3;

/// The broker's delegation bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DelegationLimits {
    /// Most delegations between a root token and any descendant (0: none).
    pub max_depth: u32,
    /// The broker's token lifetime bounds.
    pub ttl: TtlLimits,
}

/// A parsed DelegateToken request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelegationRequest {
    /// Who receives the child.
    pub delegate: SpiffeId,
    /// Scopes wanted; empty: all of the parent's.
    pub scopes: BTreeSet<Scope>,
    /// Requested lifetime; `None`: the default, cut at the parent's expiry.
    pub ttl: Option<Ttl>,
    /// The audience the caller expects; must be the parent's if set.
    pub audience: Option<Audience>,
    /// The task the caller expects; must be the parent's if set.
    pub task_id: Option<TaskId>,
    /// A narrower tool-level limit (`mcp_tool` detail) than the parent's;
    /// `None`: the parent's, if any.
    pub tools: Option<crate::authz::ToolGrant>,
}

/// A parent token whose signature the broker verified, together with its
/// recorded grant; built only by [`ParentToken::bind`], which checks that
/// the two describe the same token.
#[derive(Debug, Clone)]
pub struct ParentToken {
    claims: AccessClaims,
    grant: Grant,
    class: ScopeClass,
}

impl ParentToken {
    /// Binds verified `claims` to the grant recorded under their `jti`.
    /// Fails unless they agree on holder, task, audience, scopes and expiry.
    pub fn bind(claims: AccessClaims, grant: Grant) -> Result<Self, DelegationError> {
        let scopes: BTreeSet<&str> = claims.scopes().collect();
        let recorded: BTreeSet<&str> = grant.scopes.iter().map(Scope::as_str).collect();
        let agrees = claims.jti == grant.id.as_str()
            && claims.client_id == grant.subject.as_str()
            && claims.task_id == grant.task_id.as_str()
            && claims.aud == grant.audience.as_str()
            && claims.exp == grant.expires_at.timestamp()
            && scopes == recorded
            && claims.depth() <= MAX_CHAIN_LEN;
        if !agrees {
            return Err(DelegationError::ParentNotLive);
        }
        let class = grant.class;
        Ok(Self { claims, grant, class })
    }

    /// The parent's claims.
    pub fn claims(&self) -> &AccessClaims {
        &self.claims
    }

    /// The parent's grant.
    pub fn grant(&self) -> &Grant {
        &self.grant
    }

    /// The parent's depth (0 for a token from RequestToken).
    pub fn depth(&self) -> usize {
        self.claims.depth()
    }
}

/// Everything needed to mint and record a child token, once allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildPlan {
    /// The parent's task.
    pub task_id: TaskId,
    /// The parent's audience.
    pub audience: Audience,
    /// The child's scopes (a subset of the parent's).
    pub scopes: BTreeSet<Scope>,
    /// Their one class (the parent's).
    pub class: ScopeClass,
    /// The child's lifetime; `expires_at` ≤ the parent's.
    pub lifetime: Lifetime,
    /// The child's depth (parent's + 1).
    pub depth: usize,
    /// The child's `sub`: the root holder.
    pub subject: String,
    /// The child's `act`: the delegate outermost.
    pub act: Actor,
    /// The child's `tessera_chain`: the parent's plus the parent itself.
    pub chain: Vec<ChainHop>,
    /// The child's tool-level limits: the parent's, or the narrower one asked.
    pub tools: Vec<crate::authz::ToolGrant>,
}

/// Why a delegation was refused. Messages name the request field at fault
/// and never contain a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DelegationError {
    /// The tool-level limit asked for is malformed or wider than the parent's.
    #[error("authorization_details: {0}")]
    Tools(#[from] crate::authz::ToolGrantError),
    /// `[delegation] max_depth` is 0.
    #[error("delegation is turned off on this broker")]
    Disabled,
    /// The parent token is forged, expired, revoked, unknown or its task is
    /// over: all look the same from outside.
    #[error("parent_token: not a live token issued by this broker")]
    ParentNotLive,
    /// The caller does not hold the parent token.
    #[error("identity `{0}` is not the holder of the parent token")]
    NotHolder(String),
    /// The caller may not request tokens at all.
    #[error("identity `{0}` does not hold the agent role")]
    NotAnAgent(String),
    /// A child for its own holder.
    #[error("delegate: a token cannot be delegated to its own holder")]
    ToSelf,
    /// A token exchange presented a bound (`cnf`) token: only its holder,
    /// proving the binding, may delegate it (DelegateToken).
    #[error("subject_token: a token bound to a key or certificate is delegated by its holder only")]
    BoundParent,
    /// A delegation offer that is forged, expired, already redeemed or whose
    /// parent is gone: all look the same to whoever presents it.
    #[error("offer: not a live delegation offer of this broker")]
    OfferNotLive,
    /// An offer redeemed by another identity than the delegate it names.
    #[error("offer: made to another delegate than `{0}`")]
    NotTheDelegate(String),
    /// The delegate is not a registered, enabled identity.
    #[error("delegate: identity `{0}` is not registered or is disabled")]
    DelegateUnknown(String),
    /// The delegate may not hold tokens.
    #[error("delegate: identity `{0}` does not hold the agent role")]
    DelegateNotAnAgent(String),
    /// The delegate is not one of the task's agents.
    #[error("delegate: identity `{delegate}` is not assigned to task `{task}`")]
    DelegateNotAssigned {
        /// The delegate.
        delegate: String,
        /// The task.
        task: TaskId,
    },
    /// Another audience than the parent's.
    #[error("audience: a child keeps its parent's audience `{parent}`, not `{requested}`")]
    OtherAudience {
        /// Asked for.
        requested: Audience,
        /// The parent's.
        parent: Audience,
    },
    /// Another task than the parent's.
    #[error("task_id: a child stays in its parent's task `{parent}`, not `{requested}`")]
    OtherTask {
        /// Asked for.
        requested: TaskId,
        /// The parent's.
        parent: TaskId,
    },
    /// A scope class above the parent's.
    #[error("scopes: class {requested} is higher than the parent token's class {parent}")]
    HigherClass {
        /// Asked for.
        requested: ScopeClass,
        /// The parent's.
        parent: ScopeClass,
    },
    /// Scopes the parent does not carry.
    #[error("scopes: {0} not in the parent token; a child's scopes are a subset of its parent's")]
    WiderScope(String),
    /// An expiry after the parent's.
    #[error("ttl_seconds: the child would expire at {requested}, after its parent ({parent})")]
    LaterExpiry {
        /// The expiry asked for.
        requested: DateTime<Utc>,
        /// The parent's.
        parent: DateTime<Utc>,
    },
    /// One hop too many.
    #[error("delegation depth {depth} is above the limit of {max}")]
    TooDeep {
        /// The child's depth.
        depth: usize,
        /// `[delegation] max_depth`.
        max: u32,
    },
    /// Unknown scope for the audience.
    #[error("scopes: {0}")]
    Catalog(#[from] CatalogError),
    /// The task does not accept requests.
    #[error(transparent)]
    Task(#[from] TaskError),
    /// The lifetime cannot be granted.
    #[error("{prefix}{0}", prefix = if matches!(.0, TtlError::NoTimeLeft) { "" } else { "ttl_seconds: " })]
    Ttl(#[from] TtlError),
}

impl DelegationError {
    /// Transport-free classification.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::ToSelf => ErrorKind::InvalidArgument,
            Self::Catalog(e) => e.kind(),
            Self::Task(e) => e.kind(),
            Self::Ttl(e) => e.kind(),
            Self::Tools(e) => e.kind(),
            Self::Disabled
            | Self::ParentNotLive
            | Self::NotHolder(_)
            | Self::OfferNotLive
            | Self::NotTheDelegate(_)
            | Self::BoundParent
            | Self::NotAnAgent(_)
            | Self::DelegateUnknown(_)
            | Self::DelegateNotAnAgent(_)
            | Self::DelegateNotAssigned { .. }
            | Self::OtherAudience { .. }
            | Self::OtherTask { .. }
            | Self::HigherClass { .. }
            | Self::WiderScope(_)
            | Self::LaterExpiry { .. }
            | Self::TooDeep { .. } => ErrorKind::PermissionDenied,
        }
    }
}

/// Decides whether `caller` may delegate `parent` to `delegate` in `task`
/// (the parent's) at `now`, and what the child is (DelegateToken). Checks,
/// in order: the feature is on; the caller holds the parent and is an
/// agent; then [`plan_hop`]'s checks.
#[expect(
    clippy::too_many_arguments,
    reason = "a pure decision over every value it depends on"
)]
pub fn plan_delegation(
    caller: &VerifiedIdentity,
    parent: &ParentToken,
    delegate: &Identity,
    task: &Task,
    catalog: &ApiCatalog,
    req: &DelegationRequest,
    limits: DelegationLimits,
    now: DateTime<Utc>,
) -> Result<ChildPlan, DelegationError> {
    if limits.max_depth == 0 {
        return Err(DelegationError::Disabled);
    }
    let grant = parent.grant();
    if &grant.subject != caller.id() || parent.claims().client_id != caller.id().as_str() {
        return Err(DelegationError::NotHolder(caller.id().to_string()));
    }
    plan_hop(caller.identity(), parent, delegate, task, catalog, req, limits, now)
}

/// Decides an RFC 8693 token exchange: `actor` presents `parent`, a bearer
/// token held by `holder` (the registered identity of the parent's `sub`),
/// and asks for a child for itself. Possession of a bearer token is what the
/// holder handed over; a bound token proves nothing in another's hands, so it
/// is refused ([`DelegationError::BoundParent`]). Then [`plan_hop`]'s checks,
/// with `actor` as the delegate (so it must be an agent of the task).
#[expect(
    clippy::too_many_arguments,
    reason = "a pure decision over every value it depends on"
)]
pub fn plan_exchange(
    actor: &VerifiedIdentity,
    holder: &Identity,
    parent: &ParentToken,
    task: &Task,
    catalog: &ApiCatalog,
    req: &DelegationRequest,
    limits: DelegationLimits,
    now: DateTime<Utc>,
) -> Result<ChildPlan, DelegationError> {
    if limits.max_depth == 0 {
        return Err(DelegationError::Disabled);
    }
    if parent.claims().cnf.is_some() {
        return Err(DelegationError::BoundParent);
    }
    let grant = parent.grant();
    if grant.subject != holder.id || parent.claims().client_id != holder.id.as_str() {
        return Err(DelegationError::ParentNotLive);
    }
    plan_hop(holder, parent, actor.identity(), task, catalog, req, limits, now)
}

/// The checks every hop passes, `me` being the parent's holder: `me` is an
/// agent; the parent is live; the request keeps the parent's task and
/// audience; depth; the delegate (not the holder, an agent, assigned to the
/// task); the task is active; class, scopes; expiry.
#[expect(
    clippy::too_many_arguments,
    reason = "a pure decision over every value it depends on"
)]
fn plan_hop(
    me: &Identity,
    parent: &ParentToken,
    delegate: &Identity,
    task: &Task,
    catalog: &ApiCatalog,
    req: &DelegationRequest,
    limits: DelegationLimits,
    now: DateTime<Utc>,
) -> Result<ChildPlan, DelegationError> {
    let grant = parent.grant();
    if !me.has_role(Role::Agent) {
        return Err(DelegationError::NotAnAgent(me.id.to_string()));
    }
    if !grant.is_live_at(now) || grant.task_id != task.id {
        return Err(DelegationError::ParentNotLive);
    }
    if let Some(requested) = &req.task_id
        && requested != &grant.task_id
    {
        return Err(DelegationError::OtherTask {
            requested: requested.clone(),
            parent: grant.task_id.clone(),
        });
    }
    if let Some(requested) = &req.audience
        && requested != &grant.audience
    {
        return Err(DelegationError::OtherAudience {
            requested: requested.clone(),
            parent: grant.audience.clone(),
        });
    }
    let depth = parent.depth().saturating_add(1);
    if depth > usize::try_from(limits.max_depth).unwrap_or(usize::MAX) || depth > MAX_CHAIN_LEN {
        return Err(DelegationError::TooDeep {
            depth,
            max: limits.max_depth,
        });
    }
    if delegate.id == me.id {
        return Err(DelegationError::ToSelf);
    }
    if !delegate.has_role(Role::Agent) {
        return Err(DelegationError::DelegateNotAnAgent(delegate.id.to_string()));
    }
    if !task.agents.contains(&delegate.id) {
        return Err(DelegationError::DelegateNotAssigned {
            delegate: delegate.id.to_string(),
            task: task.id.clone(),
        });
    }
    let state = task.state_at(now);
    if state != TaskState::Active {
        return Err(TaskError::Over(task.id.clone(), state).into());
    }
    let scopes = if req.scopes.is_empty() {
        grant.scopes.clone()
    } else {
        req.scopes.clone()
    };
    let class = catalog.classify(&grant.audience, &scopes)?;
    check_scopes(&scopes, class, &grant.scopes, parent.class)?;
    let lifetime = child_lifetime(req.ttl, delegate.max_ttl, limits.ttl, task, grant.expires_at, now)?;
    let mut chain = parent.claims().tessera_chain.clone();
    chain.push(ChainHop {
        jti: grant.id.to_string(),
        sub: grant.subject.to_string(),
        scope: parent.claims().scope.clone(),
        exp: grant.expires_at.timestamp(),
    });
    let mut actors = vec![delegate.id.to_string()];
    if let Some(act) = &parent.claims().act {
        actors.extend(act.actors().into_iter().map(str::to_owned));
    }
    let act = Actor::nest(actors).ok_or(DelegationError::ParentNotLive)?;
    // Never wider than the parent: without a request the child inherits
    // the parent's limits (all of them, as the parent's claim carries).
    let tools = match &req.tools {
        None => parent.claims().authorization_details.clone(),
        Some(_) => crate::authz::narrow(
            &parent.claims().authorization_details,
            grant.audience.as_str(),
            req.tools.as_ref(),
            "the parent token",
        )?
        .into_iter()
        .collect(),
    };
    Ok(ChildPlan {
        task_id: grant.task_id.clone(),
        audience: grant.audience.clone(),
        scopes,
        class,
        lifetime,
        depth,
        subject: parent.claims().sub.clone(),
        act,
        chain,
        tools,
    })
}

impl ChildPlan {
    /// The child's claims, for the delegate `holder`, with grant id `jti`
    /// and the binding `cnf`.
    pub fn claims(&self, issuer: &str, jti: &GrantId, holder: &SpiffeId, cnf: Option<Confirmation>) -> AccessClaims {
        AccessClaims {
            iss: issuer.to_owned(),
            sub: self.subject.clone(),
            aud: self.audience.to_string(),
            exp: self.lifetime.expires_at.timestamp(),
            nbf: self.lifetime.issued_at.timestamp(),
            iat: self.lifetime.issued_at.timestamp(),
            jti: jti.to_string(),
            scope: self.scopes.iter().map(Scope::as_str).collect::<Vec<_>>().join(" "),
            client_id: holder.to_string(),
            task_id: self.task_id.to_string(),
            cnf,
            act: Some(self.act.clone()),
            tessera_chain: self.chain.clone(),
            authorization_details: self.tools.clone(),
        }
    }
}

/// A child's scopes: of a class no higher than the parent's, and a subset of
/// the parent's scopes.
pub fn check_scopes(
    child: &BTreeSet<Scope>,
    child_class: ScopeClass,
    parent: &BTreeSet<Scope>,
    parent_class: ScopeClass,
) -> Result<(), DelegationError> {
    if child_class > parent_class {
        return Err(DelegationError::HigherClass {
            requested: child_class,
            parent: parent_class,
        });
    }
    let wider: Vec<String> = child.difference(parent).map(|s| format!("`{s}`")).collect();
    if !wider.is_empty() {
        return Err(DelegationError::WiderScope(wider.join(", ")));
    }
    Ok(())
}

/// A child's lifetime: as requested (or the default), cut by the delegate's
/// and the broker's maximum, the task's deadline and the parent's expiry.
/// Asking explicitly for more time than the parent has left is refused,
/// not silently cut.
pub fn child_lifetime(
    requested: Option<Ttl>,
    delegate_max: Ttl,
    limits: TtlLimits,
    task: &Task,
    parent_expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Lifetime, DelegationError> {
    if let Some(requested) = requested {
        if requested > limits.max {
            return Err(TtlError::AboveMax {
                requested,
                max: limits.max,
            }
            .into());
        }
        let wanted = ttl::truncate_to_secs(now) + requested.as_duration();
        if wanted > parent_expires_at {
            return Err(DelegationError::LaterExpiry {
                requested: wanted,
                parent: parent_expires_at,
            });
        }
    }
    let deadline = task.deadline.min(parent_expires_at);
    let lifetime = ttl::lifetime(requested, delegate_max, limits, deadline, now)?;
    // INVARIANT: a child never outlives its parent (ttl::lifetime cuts at `deadline`).
    if lifetime.expires_at > parent_expires_at {
        return Err(DelegationError::LaterExpiry {
            requested: lifetime.expires_at,
            parent: parent_expires_at,
        });
    }
    Ok(lifetime)
}

#[cfg(test)]
mod tests;
