//! The questions the broker asks policy, typed: which action, on what, with
//! which facts. [`PolicyQuery`] is turned into a Cedar request here; its size
//! is checked first, so an oversized question is refused before evaluation.
//!
//! Nesting is fixed by construction (the context is at most two records
//! deep, as the schema says), so only sizes need bounds.

use std::collections::BTreeSet;

use cedar_policy::{Context, EntityUid, RestrictedExpression};
use chrono::{DateTime, Timelike, Utc};

use super::cache::DecisionKey;
use super::entities::PolicyEntities;
use super::{Action, PolicyError};
use crate::identity::{AttestationMethod, SpiffeId, VerifiedIdentity};
use crate::task::{Audience, Scope, ScopeClass, Task, TaskId};
use crate::ttl::Ttl;

/// Most elements in any one set of the context (agents, scopes, labels, chain).
pub const MAX_SET_ITEMS: usize = 1024;
/// Longest string in the context, in bytes.
pub const MAX_STRING_BYTES: usize = 4096;
/// Most hops in a delegation chain.
pub const MAX_DELEGATION_CHAIN: usize = 32;
/// Most bytes of strings in one context, all together.
pub const MAX_CONTEXT_BYTES: usize = 1024 * 1024;

/// The token actions: their resource is an API, their context a token request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenAction {
    /// RequestToken.
    Request,
    /// DelegateToken: `facts.delegation` says to whom and how deep.
    Delegate,
    /// ApproveRequest: the principal is the approver, `facts.requester` the requester.
    Approve,
}

/// The task actions: their resource is a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskAction {
    /// StartTask (the task as it would be created).
    Start,
    /// CompleteTask.
    Complete,
    /// GetTask.
    Get,
    /// RevokeTask.
    Revoke,
}

/// The admin and verifier calls: their resource is the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// ListGrants.
    ListGrants,
    /// RevokeGrant.
    RevokeGrant,
    /// RevokeIdentity.
    RevokeIdentity,
    /// EnableIdentity.
    EnableIdentity,
    /// RevokeAll.
    RevokeAll,
    /// ListApprovals.
    ListApprovals,
    /// DecideApproval.
    DecideApproval,
    /// BlastRadius.
    BlastRadius,
    /// RotateSigningKey.
    RotateSigningKey,
    /// ReloadPolicy.
    ReloadPolicy,
    /// Introspect.
    Introspect,
    /// WatchRevocations.
    WatchRevocations,
    /// ReportMisuse.
    ReportMisuse,
}

impl Operation {
    /// The operation of `action`, if it is one.
    pub fn of(action: Action) -> Option<Self> {
        Some(match action {
            Action::ListGrants => Self::ListGrants,
            Action::RevokeGrant => Self::RevokeGrant,
            Action::RevokeIdentity => Self::RevokeIdentity,
            Action::EnableIdentity => Self::EnableIdentity,
            Action::RevokeAll => Self::RevokeAll,
            Action::ListApprovals => Self::ListApprovals,
            Action::DecideApproval => Self::DecideApproval,
            Action::BlastRadius => Self::BlastRadius,
            Action::RotateSigningKey => Self::RotateSigningKey,
            Action::ReloadPolicy => Self::ReloadPolicy,
            Action::Introspect => Self::Introspect,
            Action::WatchRevocations => Self::WatchRevocations,
            Action::ReportMisuse => Self::ReportMisuse,
            _ => return None,
        })
    }

    /// The action.
    pub fn action(self) -> Action {
        match self {
            Self::ListGrants => Action::ListGrants,
            Self::RevokeGrant => Action::RevokeGrant,
            Self::RevokeIdentity => Action::RevokeIdentity,
            Self::EnableIdentity => Action::EnableIdentity,
            Self::RevokeAll => Action::RevokeAll,
            Self::ListApprovals => Action::ListApprovals,
            Self::DecideApproval => Action::DecideApproval,
            Self::BlastRadius => Action::BlastRadius,
            Self::RotateSigningKey => Action::RotateSigningKey,
            Self::ReloadPolicy => Action::ReloadPolicy,
            Self::Introspect => Action::Introspect,
            Self::WatchRevocations => Action::WatchRevocations,
            Self::ReportMisuse => Action::ReportMisuse,
        }
    }
}

/// One hop of delegation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delegation<'a> {
    /// The hop number of the token being minted (1 for the first delegation).
    pub depth: u32,
    /// The holders before this hop, root first.
    pub chain: &'a [SpiffeId],
    /// Who receives the delegated token.
    pub delegate: &'a SpiffeId,
    /// An RFC 8693 exchange: the delegate presented the holder's bearer
    /// token itself (the holder did not ask for this hop).
    pub exchange: bool,
    /// The delegate is one of the verifiers that serve the token's audience
    /// (`[[apis]] verifiers`): the holder sent the token to it.
    pub delegate_serves_audience: bool,
}

/// What a token request asks for, once parsed and classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenFacts<'a> {
    /// The API.
    pub audience: &'a Audience,
    /// The scopes.
    pub scopes: &'a BTreeSet<Scope>,
    /// Their one class.
    pub class: ScopeClass,
    /// Whether any scope is high-impact (payments, deletions, permission changes).
    pub high_impact: bool,
    /// The lifetime asked for (the broker's default when none was named).
    pub requested_ttl: Ttl,
    /// For DelegateToken.
    pub delegation: Option<Delegation<'a>>,
    /// The grant's blast-radius score, when computed before the decision.
    pub blast_radius: Option<u32>,
    /// For ApproveRequest: whose request it is.
    pub requester: Option<&'a SpiffeId>,
    /// The tool-level limit the token will carry (`mcp_tool` detail), if any.
    pub tools: Option<&'a crate::authz::ToolGrant>,
}

/// The tools of a limit, and its constrained arguments as `tool.argument`.
fn tool_names(tools: Option<&crate::authz::ToolGrant>) -> (Vec<&str>, Vec<String>) {
    tools.map_or_else(Default::default, |g| {
        let names = g.tools.iter().map(String::as_str).collect();
        let args = g
            .constraints
            .iter()
            .flat_map(|(tool, args)| args.keys().map(move |a| format!("{tool}.{a}")))
            .collect();
        (names, args)
    })
}

/// One question for policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyQuery<'a> {
    /// A token action on `facts.audience` within `task`.
    Token {
        /// Which.
        action: TokenAction,
        /// The task the token is for.
        task: &'a Task,
        /// The request.
        facts: TokenFacts<'a>,
    },
    /// A task action on task `id`; `task` is `None` when no such task exists.
    Task {
        /// Which.
        action: TaskAction,
        /// The task id named.
        id: &'a TaskId,
        /// The task (for StartTask: as it would be created).
        task: Option<&'a Task>,
    },
    /// An admin or verifier call.
    Operation(Operation),
}

impl PolicyQuery<'_> {
    /// The Cedar action.
    pub fn action(&self) -> Action {
        match self {
            Self::Token { action, .. } => match action {
                TokenAction::Request => Action::RequestToken,
                TokenAction::Delegate => Action::DelegateToken,
                TokenAction::Approve => Action::ApproveRequest,
            },
            Self::Task { action, .. } => match action {
                TaskAction::Start => Action::StartTask,
                TaskAction::Complete => Action::CompleteTask,
                TaskAction::Get => Action::GetTask,
                TaskAction::Revoke => Action::RevokeTask,
            },
            Self::Operation(op) => op.action(),
        }
    }

    /// The resource, for people: `task `t1``, `audience `crm``, or `the broker`.
    pub fn describe_resource(&self) -> String {
        match self {
            Self::Token { facts, .. } => format!("audience `{}`", facts.audience),
            Self::Task { id, .. } => format!("task `{id}`"),
            Self::Operation(_) => "the broker".to_owned(),
        }
    }

    /// Refuses a question whose context would exceed the bounds.
    pub fn check_bounds(&self) -> Result<(), PolicyError> {
        let mut budget = Budget::default();
        match self {
            Self::Token { task, facts, .. } => {
                budget.task(task)?;
                budget.set("scopes", facts.scopes.len())?;
                for s in facts.scopes {
                    budget.string("scopes", s.as_str())?;
                }
                budget.string("resource", facts.audience.as_str())?;
                let (names, args) = tool_names(facts.tools);
                budget.set("tools", names.len())?;
                for t in names {
                    budget.string("tools", t)?;
                }
                budget.set("tool_arguments", args.len())?;
                for a in &args {
                    budget.string("tool_arguments", a)?;
                }
                if let Some(d) = &facts.delegation {
                    if d.chain.len() > MAX_DELEGATION_CHAIN {
                        return Err(too_large("delegation_chain", format!("{MAX_DELEGATION_CHAIN} hops")));
                    }
                    for id in d.chain {
                        budget.string("delegation_chain", id.as_str())?;
                    }
                }
            }
            Self::Task { id, task, .. } => {
                budget.string("task.id", id.as_str())?;
                if let Some(task) = task {
                    budget.task(task)?;
                }
            }
            Self::Operation(_) => {}
        }
        Ok(())
    }
}

fn too_large(field: &'static str, limit: String) -> PolicyError {
    PolicyError::ContextTooLarge { field, limit }
}

/// Counts the bytes a context will hold.
#[derive(Debug, Default)]
struct Budget {
    bytes: usize,
}

impl Budget {
    fn string(&mut self, field: &'static str, s: &str) -> Result<(), PolicyError> {
        if s.len() > MAX_STRING_BYTES {
            return Err(too_large(field, format!("{MAX_STRING_BYTES} bytes per string")));
        }
        self.bytes = self.bytes.saturating_add(s.len());
        if self.bytes > MAX_CONTEXT_BYTES {
            return Err(too_large(field, format!("{MAX_CONTEXT_BYTES} bytes in all")));
        }
        Ok(())
    }

    fn set(&mut self, field: &'static str, len: usize) -> Result<(), PolicyError> {
        if len > MAX_SET_ITEMS {
            return Err(too_large(field, format!("{MAX_SET_ITEMS} items")));
        }
        Ok(())
    }

    fn task(&mut self, task: &Task) -> Result<(), PolicyError> {
        self.string("task.id", task.id.as_str())?;
        self.string("task.orchestrator", task.orchestrator.as_str())?;
        self.set("task.agents", task.agents.len())?;
        for a in &task.agents {
            self.string("task.agents", a.as_str())?;
        }
        self.set("task.labels", task.labels.len())?;
        for (k, v) in &task.labels {
            self.string("task.labels", k)?;
            self.string("task.labels", v)?;
        }
        Ok(())
    }
}

/// The Cedar name of an attestation method.
pub(super) fn attestation_name(method: AttestationMethod) -> &'static str {
    method.as_str()
}

fn string(s: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(s.to_owned())
}

fn long(n: i64) -> RestrictedExpression {
    RestrictedExpression::new_long(n)
}

fn uid(u: EntityUid) -> RestrictedExpression {
    RestrictedExpression::new_entity_uid(u)
}

fn record(pairs: Vec<(String, RestrictedExpression)>) -> Result<RestrictedExpression, String> {
    RestrictedExpression::new_record(pairs).map_err(|e| e.to_string())
}

/// `context.task`.
fn task_info(entities: &PolicyEntities, task: &Task, now: DateTime<Utc>) -> Result<RestrictedExpression, String> {
    let agent_owners: BTreeSet<&str> = task.agents.iter().map(|a| entities.owner_of(a)).collect();
    record(vec![
        ("id".into(), string(task.id.as_str())),
        ("orchestrator".into(), uid(entities.identity_uid(&task.orchestrator))),
        ("owner".into(), string(entities.owner_of(&task.orchestrator))),
        (
            "agents".into(),
            RestrictedExpression::new_set(task.agents.iter().map(|a| uid(entities.identity_uid(a)))),
        ),
        (
            "agent_owners".into(),
            RestrictedExpression::new_set(agent_owners.into_iter().map(string)),
        ),
        (
            "labels".into(),
            RestrictedExpression::new_set(
                task.labels
                    .iter()
                    .map(|(k, v)| RestrictedExpression::new_string(format!("{k}={v}"))),
            ),
        ),
        ("remaining_secs".into(), long((task.deadline - now).num_seconds())),
    ])
}

/// The Cedar resource and context of `query`, asked by a caller attested by
/// `attestation` at `now`.
pub(super) fn build(
    entities: &PolicyEntities,
    query: &PolicyQuery<'_>,
    attestation: AttestationMethod,
    now: DateTime<Utc>,
) -> Result<(EntityUid, Context), String> {
    let mut pairs: Vec<(String, RestrictedExpression)> = Vec::with_capacity(14);
    pairs.push(("attestation".into(), string(attestation_name(attestation))));
    pairs.push(("hour".into(), long(i64::from(now.hour()))));
    let resource = match query {
        PolicyQuery::Token { task, facts, .. } => {
            pairs.push(("task".into(), task_info(entities, task, now)?));
            pairs.push((
                "scopes".into(),
                RestrictedExpression::new_set(facts.scopes.iter().map(|s| string(s.as_str()))),
            ));
            pairs.push(("class".into(), string(&facts.class.to_string())));
            pairs.push(("high_impact".into(), RestrictedExpression::new_bool(facts.high_impact)));
            pairs.push(("requested_ttl".into(), long(i64::from(facts.requested_ttl.as_secs()))));
            // Tool-level limits (RFC 9396 `mcp_tool`): whether the token has
            // any, its tools, and its constrained arguments (`tool.argument`).
            let (names, args) = tool_names(facts.tools);
            pairs.push((
                "tool_limited".into(),
                RestrictedExpression::new_bool(facts.tools.is_some()),
            ));
            pairs.push((
                "tools".into(),
                RestrictedExpression::new_set(names.into_iter().map(string)),
            ));
            pairs.push((
                "tool_arguments".into(),
                RestrictedExpression::new_set(args.iter().map(|a| string(a))),
            ));
            let (depth, chain) = match &facts.delegation {
                Some(d) => (i64::from(d.depth), d.chain),
                None => (0, &[][..]),
            };
            pairs.push(("delegation_depth".into(), long(depth)));
            pairs.push((
                "delegation_chain".into(),
                RestrictedExpression::new_set(chain.iter().map(|id| string(id.as_str()))),
            ));
            if let Some(score) = facts.blast_radius {
                pairs.push(("blast_radius".into(), long(i64::from(score))));
            }
            if let Some(d) = &facts.delegation {
                pairs.push(("delegate".into(), uid(entities.identity_uid(d.delegate))));
                pairs.push(("exchange".into(), RestrictedExpression::new_bool(d.exchange)));
                pairs.push((
                    "delegate_serves_audience".into(),
                    RestrictedExpression::new_bool(d.delegate_serves_audience),
                ));
            }
            if let Some(requester) = facts.requester {
                pairs.push(("requester".into(), uid(entities.identity_uid(requester))));
            }
            entities.api_uid(facts.audience)
        }
        PolicyQuery::Task { id, task, .. } => {
            if let Some(task) = task {
                pairs.push(("task".into(), task_info(entities, task, now)?));
            }
            entities.task_uid(id)
        }
        PolicyQuery::Operation(_) => entities.broker_uid(),
    };
    let context = Context::from_pairs(pairs).map_err(|e| e.to_string())?;
    Ok((resource, context))
}

/// Which context values that change with time a policy set reads: a
/// decision cached for a set that reads neither holds at any time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct TimeReads {
    /// `context.hour`.
    pub(super) hour: bool,
    /// `context.task.remaining_secs`.
    pub(super) remaining_secs: bool,
}

impl TimeReads {
    /// Both, for a set that cannot be inspected (fail safe: every value keyed).
    pub(super) const ALL: Self = Self {
        hour: true,
        remaining_secs: true,
    };
}

/// Feeds length-prefixed parts to SHA-256, so no two questions digest alike.
struct KeyDigest(ring::digest::Context);

impl KeyDigest {
    fn new() -> Self {
        Self(ring::digest::Context::new(&ring::digest::SHA256))
    }

    fn str(&mut self, s: &str) {
        self.0.update(&(s.len() as u64).to_be_bytes());
        self.0.update(s.as_bytes());
    }

    fn num(&mut self, n: i64) {
        self.0.update(&n.to_be_bytes());
    }

    fn finish(self) -> DecisionKey {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.0.finish().as_ref());
        DecisionKey(out)
    }
}

/// The digest of the whole question [`build`] makes of `query` asked by
/// `who` at `now`: principal, action, resource and every context value,
/// `hour` and `task.remaining_secs` only when `reads` says the policy set
/// reads them. The entities (the registry's identities with their kind,
/// owner and roles; the catalog's APIs) are not in it: a cached decision is
/// stamped with the registry's version instead.
///
/// `None` for questions not kept: task actions, delegations and approvals
/// (rare, and with per-request context).
///
/// INVARIANT: every value `build` puts in a kept question's context is
/// digested here; a value added there must be added here.
pub(super) fn decision_key(
    who: &VerifiedIdentity,
    query: &PolicyQuery<'_>,
    reads: TimeReads,
    now: DateTime<Utc>,
) -> Option<DecisionKey> {
    let mut d = KeyDigest::new();
    d.str(query.action().as_str());
    d.str(who.id().as_str());
    d.str(attestation_name(who.method()));
    d.num(if reads.hour { i64::from(now.hour()) } else { -1 });
    match query {
        PolicyQuery::Operation(_) => d.str("broker"),
        PolicyQuery::Token {
            action: TokenAction::Request,
            task,
            facts,
        } if facts.delegation.is_none() && facts.requester.is_none() => {
            d.str(task.id.as_str());
            d.str(task.orchestrator.as_str());
            d.num(task.agents.len() as i64);
            for agent in &task.agents {
                d.str(agent.as_str());
            }
            d.num(task.labels.len() as i64);
            for (k, v) in &task.labels {
                d.str(k);
                d.str(v);
            }
            d.num(if reads.remaining_secs {
                (task.deadline - now).num_seconds()
            } else {
                -1
            });
            d.str(facts.audience.as_str());
            d.num(facts.scopes.len() as i64);
            for scope in facts.scopes {
                d.str(scope.as_str());
            }
            d.str(&facts.class.to_string());
            d.num(i64::from(facts.high_impact));
            d.num(i64::from(facts.requested_ttl.as_secs()));
            d.num(facts.blast_radius.map_or(-1, i64::from));
            d.num(i64::from(facts.tools.is_some()));
            let (names, args) = tool_names(facts.tools);
            d.num(names.len() as i64);
            for t in names {
                d.str(t);
            }
            d.num(args.len() as i64);
            for a in &args {
                d.str(a);
            }
        }
        PolicyQuery::Token { .. } | PolicyQuery::Task { .. } => return None,
    }
    Some(d.finish())
}
