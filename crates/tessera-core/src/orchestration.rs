//! Orchestrator decisions: validating the task an orchestrator asks to start.
//! Pure functions over values; who may start, end or read a task is policy's
//! call ([`crate::policy`]).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, Utc};

use crate::catalog::{ApiCatalog, CatalogError};
use crate::error::ErrorKind;
use crate::identity::{IdentityRegistry, SpiffeId, VerifiedIdentity};
use crate::task::{ScopeCeiling, Task, TaskError, TaskId, TaskState};

/// Bounds on what one task may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskLimits {
    /// Longest time from start to deadline.
    pub max_duration: Duration,
    /// Most agents assigned to one task.
    pub max_agents: usize,
    /// Most audiences in a ceiling.
    pub max_audiences: usize,
    /// Most scopes per audience in a ceiling.
    pub max_scopes_per_audience: usize,
    /// Most labels.
    pub max_labels: usize,
    /// Longest label key, in bytes.
    pub max_label_key_len: usize,
    /// Longest label value, in bytes.
    pub max_label_value_len: usize,
}

impl Default for TaskLimits {
    fn default() -> Self {
        Self {
            max_duration: Duration::hours(24),
            max_agents: 256,
            max_audiences: 32,
            max_scopes_per_audience: 64,
            max_labels: 32,
            max_label_key_len: 63,
            max_label_value_len: 256,
        }
    }
}

/// When a new task ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskLifetime {
    /// At this instant.
    Deadline(DateTime<Utc>),
    /// This long after it starts.
    Duration(Duration),
}

/// A parsed request to start a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartTask {
    /// The id chosen by the orchestrator.
    pub task_id: TaskId,
    /// Agents that may act in it.
    pub agents: BTreeSet<SpiffeId>,
    /// The most its tokens may carry.
    pub ceiling: ScopeCeiling,
    /// When it ends.
    pub lifetime: TaskLifetime,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Parent task id.
    pub parent: Option<TaskId>,
    /// Tool-level limits (`mcp_tool` details), each for an audience of the
    /// ceiling, at most one per server.
    pub tools: Vec<crate::authz::ToolGrant>,
}

/// Why an orchestration request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OrchestrationError {
    /// The caller did not start the parent task.
    #[error("identity `{identity}` did not start task `{task}`")]
    NotTaskOwner {
        /// Caller.
        identity: String,
        /// Task.
        task: TaskId,
    },
    /// The orchestrator named itself among the task's agents: it would grant
    /// itself whatever the catalog holds. Refused until policy-as-code can
    /// decide who may.
    #[error("an orchestrator may not assign itself to its own task")]
    SelfAssigned,
    /// A field is malformed or out of bounds; the message names it.
    #[error("{field}: {reason}")]
    Invalid {
        /// The request field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A child task may not reach beyond its parent.
    #[error("child task exceeds parent task `{parent}`: {reason}")]
    BeyondParent {
        /// Parent task.
        parent: TaskId,
        /// How.
        reason: String,
    },
    /// Unknown audience or scope in the ceiling.
    #[error("scope_ceiling: {0}")]
    Catalog(#[from] CatalogError),
    /// The parent task cannot take children.
    #[error(transparent)]
    Task(#[from] TaskError),
}

impl OrchestrationError {
    /// Transport-free classification.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::NotTaskOwner { .. } | Self::SelfAssigned | Self::BeyondParent { .. } => ErrorKind::PermissionDenied,
            Self::Invalid { .. } | Self::Catalog(_) => ErrorKind::InvalidArgument,
            Self::Task(e) => e.kind(),
        }
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> OrchestrationError {
    OrchestrationError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Builds the task `who` asks to start at `now`, or says why not. `parent`
/// is the stored parent task when the request names one.
pub fn start_task(
    who: &VerifiedIdentity,
    req: StartTask,
    registry: &IdentityRegistry,
    catalog: &ApiCatalog,
    parent: Option<&Task>,
    limits: &TaskLimits,
    now: DateTime<Utc>,
) -> Result<Task, OrchestrationError> {
    if req.agents.is_empty() {
        return Err(invalid("agents", "at least one agent is required"));
    }
    if req.agents.len() > limits.max_agents {
        return Err(invalid("agents", format!("more than {} agents", limits.max_agents)));
    }
    if let Some(unknown) = req.agents.iter().find(|a| !registry.contains(a)) {
        return Err(invalid("agents", format!("identity `{unknown}` is not registered")));
    }
    if req.agents.contains(who.id()) {
        return Err(OrchestrationError::SelfAssigned);
    }
    if req.ceiling.0.is_empty() {
        return Err(invalid("scope_ceiling", "at least one audience is required"));
    }
    if req.ceiling.0.len() > limits.max_audiences {
        return Err(invalid(
            "scope_ceiling",
            format!("more than {} audiences", limits.max_audiences),
        ));
    }
    if req.ceiling.0.values().any(|s| s.len() > limits.max_scopes_per_audience) {
        return Err(invalid(
            "scope_ceiling",
            format!("more than {} scopes for one audience", limits.max_scopes_per_audience),
        ));
    }
    catalog.check_ceiling(&req.ceiling)?;
    crate::authz::check_one_per_server(&req.tools).map_err(|e| invalid("authorization_details", e.to_string()))?;
    if let Some(g) = req
        .tools
        .iter()
        .find(|g| !req.ceiling.0.keys().any(|a| a.as_str() == g.server))
    {
        return Err(invalid(
            "authorization_details",
            format!("`mcp_tool` server `{}` is not an audience of the ceiling", g.server),
        ));
    }
    check_labels(&req.labels, limits)?;
    let deadline = match req.lifetime {
        TaskLifetime::Deadline(at) => at,
        TaskLifetime::Duration(d) => now + d,
    };
    if deadline <= now {
        return Err(invalid("deadline", "must be in the future"));
    }
    if deadline - now > limits.max_duration {
        return Err(invalid(
            "deadline",
            format!("task may last at most {} seconds", limits.max_duration.num_seconds()),
        ));
    }
    match (&req.parent, parent) {
        (None, _) => {}
        (Some(id), None) => return Err(TaskError::NotFound(id.clone()).into()),
        (Some(_), Some(parent)) => {
            check_child(who, parent, &req.ceiling, deadline, now)?;
            check_child_tools(parent, &req.ceiling, &req.tools)?;
        }
    }
    Ok(Task {
        id: req.task_id,
        orchestrator: who.id().clone(),
        agents: req.agents,
        ceiling: req.ceiling,
        tools: req.tools,
        deadline,
        labels: req.labels,
        parent: req.parent,
        state: TaskState::Active,
        created_at: now,
        ended_at: None,
    })
}

fn check_labels(labels: &BTreeMap<String, String>, limits: &TaskLimits) -> Result<(), OrchestrationError> {
    if labels.len() > limits.max_labels {
        return Err(invalid("labels", format!("more than {} labels", limits.max_labels)));
    }
    for (key, value) in labels {
        let key_ok = !key.is_empty()
            && key.len() <= limits.max_label_key_len
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b));
        if !key_ok {
            return Err(invalid(
                "labels",
                format!(
                    "a key must be 1-{} characters of [A-Za-z0-9._/-]",
                    limits.max_label_key_len
                ),
            ));
        }
        if value.len() > limits.max_label_value_len || value.chars().any(char::is_control) {
            return Err(invalid(
                "labels",
                format!(
                    "value of `{key}` must be at most {} bytes without control characters",
                    limits.max_label_value_len
                ),
            ));
        }
    }
    Ok(())
}

/// A child task's tool-level limits: for every audience of its ceiling the
/// parent limits at tool level, a limit within the parent's (none would be
/// wider).
fn check_child_tools(
    parent: &Task,
    ceiling: &ScopeCeiling,
    tools: &[crate::authz::ToolGrant],
) -> Result<(), OrchestrationError> {
    for audience in ceiling.0.keys() {
        let mine = crate::authz::for_server(tools, audience.as_str());
        if crate::authz::narrow(&parent.tools, audience.as_str(), mine, "the parent task's limit").is_err()
            || (mine.is_none() && crate::authz::for_server(&parent.tools, audience.as_str()).is_some())
        {
            return Err(OrchestrationError::BeyondParent {
                parent: parent.id.clone(),
                reason: format!("the tool-level limit for audience `{audience}` is wider than the parent's"),
            });
        }
    }
    Ok(())
}

fn check_child(
    who: &VerifiedIdentity,
    parent: &Task,
    ceiling: &ScopeCeiling,
    deadline: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), OrchestrationError> {
    let state = parent.state_at(now);
    if state != TaskState::Active {
        return Err(TaskError::Over(parent.id.clone(), state).into());
    }
    if &parent.orchestrator != who.id() {
        return Err(OrchestrationError::NotTaskOwner {
            identity: who.id().to_string(),
            task: parent.id.clone(),
        });
    }
    if deadline > parent.deadline {
        return Err(OrchestrationError::BeyondParent {
            parent: parent.id.clone(),
            reason: "deadline is after the parent's deadline".into(),
        });
    }
    for (audience, scopes) in &ceiling.0 {
        let excess = parent.ceiling.excess(audience, scopes);
        if let Some(scope) = excess.first() {
            return Err(OrchestrationError::BeyondParent {
                parent: parent.id.clone(),
                reason: format!("scope `{scope}` for audience `{audience}` is beyond the parent's ceiling"),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
