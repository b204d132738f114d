//! The decision to issue a token: pure, over values. The server fetches the
//! task, classifies the request once ([`ClassifiedRequest`]), asks policy
//! about that class, calls [`plan_grant`], signs, and records the grant.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

use crate::authz::{ToolGrant, ToolGrantError};
use crate::catalog::{ApiCatalog, CatalogError};
use crate::error::ErrorKind;
use crate::identity::VerifiedIdentity;
use crate::task::{Audience, Scope, ScopeClass, Task, TaskError, TaskId};
use crate::ttl::{self, Lifetime, Ttl, TtlError, TtlLimits};

/// Most scopes in one request.
pub const MAX_SCOPES_PER_REQUEST: usize = 64;

/// A parsed, well-formed token request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// The task.
    pub task_id: TaskId,
    /// The API.
    pub audience: Audience,
    /// Scopes wanted (non-empty).
    pub scopes: BTreeSet<Scope>,
    /// Requested lifetime; `None` for the default.
    pub ttl: Option<Ttl>,
    /// The key or certificate the token is bound to (`cnf`), already
    /// verified; `None` for a bearer token.
    pub binding: Option<crate::token::Confirmation>,
    /// The tool-level limit asked for (an `mcp_tool` detail for the
    /// audience); `None` for the ceiling's, if any.
    pub tools: Option<ToolGrant>,
}

/// A token request whose scopes the catalog has classified: known for the
/// audience and all of one class. Built only by [`ClassifiedRequest::new`],
/// so policy and [`plan_grant`] see the same class, computed once.
#[derive(Debug, Clone, Copy)]
pub struct ClassifiedRequest<'a> {
    request: &'a TokenRequest,
    class: ScopeClass,
}

impl<'a> ClassifiedRequest<'a> {
    /// Classifies `request`'s scopes: an unknown audience or scope, no scope,
    /// or scopes of more than one class is an error (INVALID_ARGUMENT).
    pub fn new(catalog: &ApiCatalog, request: &'a TokenRequest) -> Result<Self, IssuanceError> {
        let class = catalog.classify(&request.audience, &request.scopes)?;
        Ok(Self { request, class })
    }

    /// The request.
    pub fn request(&self) -> &'a TokenRequest {
        self.request
    }

    /// The one class of its scopes.
    pub fn class(&self) -> ScopeClass {
        self.class
    }
}

/// Everything needed to mint and record a grant, once allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantPlan {
    /// The task.
    pub task_id: TaskId,
    /// The API.
    pub audience: Audience,
    /// The scopes.
    pub scopes: BTreeSet<Scope>,
    /// Their one class.
    pub class: ScopeClass,
    /// The granted lifetime.
    pub lifetime: Lifetime,
    /// The token's tool-level limit, within the task's.
    pub tools: Option<ToolGrant>,
}

/// Why a token request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IssuanceError {
    /// The caller is not one of the task's agents.
    #[error("identity `{identity}` is not assigned to task `{task}`")]
    NotAssigned {
        /// Caller.
        identity: String,
        /// Task.
        task: TaskId,
    },
    /// Scopes beyond what the task allows for the audience.
    #[error("scopes {scopes} are beyond task `{task}`'s ceiling for audience `{audience}`")]
    BeyondCeiling {
        /// Task.
        task: TaskId,
        /// Audience.
        audience: Audience,
        /// Offending scopes, comma separated.
        scopes: String,
    },
    /// Unknown audience or scope, or mixed classes; the message names the
    /// request field.
    #[error("{field}: {0}", field = catalog_field(.0))]
    Catalog(#[from] CatalogError),
    /// The task does not accept requests.
    #[error(transparent)]
    Task(#[from] TaskError),
    /// The lifetime cannot be granted; a malformed one names the request field.
    #[error("{prefix}{0}", prefix = ttl_field(.0))]
    Ttl(#[from] TtlError),
    /// The tool-level limit asked for is malformed, for another audience,
    /// or wider than the task's.
    #[error("authorization_details: {0}")]
    Tools(#[from] ToolGrantError),
}

/// The `RequestTokenRequest` field a catalog refusal is about.
fn catalog_field(e: &CatalogError) -> &'static str {
    match e {
        CatalogError::UnknownAudience(_) => "audience",
        CatalogError::UnknownScope { .. } | CatalogError::NoScopes | CatalogError::MixedClasses(_) => "scopes",
    }
}

/// `ttl_seconds: ` when the requested lifetime itself is malformed; nothing
/// when the task simply has no time left.
fn ttl_field(e: &TtlError) -> &'static str {
    match e {
        TtlError::Zero | TtlError::TooLong | TtlError::AboveMax { .. } => "ttl_seconds: ",
        TtlError::NoTimeLeft => "",
    }
}

impl IssuanceError {
    /// Transport-free classification.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::NotAssigned { .. } | Self::BeyondCeiling { .. } => ErrorKind::PermissionDenied,
            Self::Catalog(e) => e.kind(),
            Self::Task(e) => e.kind(),
            Self::Ttl(e) => e.kind(),
            Self::Tools(e) => e.kind(),
        }
    }
}

/// Decides whether `who` may have a token for `req` in `task` at `now`, and
/// for how long, as far as the task and the catalog say; policy
/// ([`crate::policy`]) decides who may ask at all. The request's scopes were
/// classified by [`ClassifiedRequest::new`]. Checks, in order: the lifetime
/// within the broker's maximum, which depends on no task; assignment; task
/// state; scope ceiling; lifetime. Only an assigned agent learns anything
/// about the task.
pub fn plan_grant(
    who: &VerifiedIdentity,
    task: &Task,
    classified: &ClassifiedRequest<'_>,
    limits: TtlLimits,
    now: DateTime<Utc>,
) -> Result<GrantPlan, IssuanceError> {
    let identity = who.identity();
    let req = classified.request();
    let class = classified.class();
    if let Some(requested) = req.ttl
        && requested > limits.max
    {
        return Err(TtlError::AboveMax {
            requested,
            max: limits.max,
        }
        .into());
    }
    // Assignment before state: a caller outside the task learns nothing of it.
    if !task.agents.contains(&identity.id) {
        return Err(IssuanceError::NotAssigned {
            identity: identity.id.to_string(),
            task: task.id.clone(),
        });
    }
    let state = task.state_at(now);
    if state != crate::task::TaskState::Active {
        return Err(TaskError::Over(task.id.clone(), state).into());
    }
    let excess = task.ceiling.excess(&req.audience, &req.scopes);
    if !excess.is_empty() {
        return Err(IssuanceError::BeyondCeiling {
            task: task.id.clone(),
            audience: req.audience.clone(),
            scopes: excess.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", "),
        });
    }
    let tools = crate::authz::narrow(
        &task.tools,
        req.audience.as_str(),
        req.tools.as_ref(),
        "the task's ceiling",
    )?;
    let lifetime = ttl::lifetime(req.ttl, identity.max_ttl, limits, task.deadline, now)?;
    Ok(GrantPlan {
        task_id: task.id.clone(),
        audience: req.audience.clone(),
        scopes: req.scopes.clone(),
        class,
        lifetime,
        tools,
    })
}

#[cfg(test)]
mod tests;
