//! Tasks: a unit of work with the agents that may act in it, a scope ceiling
//! and a deadline. No grant outlives its task.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::ErrorKind;
use crate::identity::SpiffeId;

/// Longest task id, in bytes.
pub const TASK_ID_MAX_LEN: usize = 128;
/// Longest audience, in bytes.
pub const AUDIENCE_MAX_LEN: usize = 256;
/// Longest scope, in bytes.
pub const SCOPE_MAX_LEN: usize = 128;

/// Why a name (task id, audience, scope) is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// Empty.
    #[error("is empty")]
    Empty,
    /// Longer than allowed.
    #[error("is longer than {0} bytes")]
    TooLong(usize),
    /// Has a character outside the allowed set.
    #[error("has a character outside {0}")]
    Charset(&'static str),
}

fn check_name(s: &str, max: usize, allowed: fn(u8) -> bool, charset: &'static str) -> Result<(), NameError> {
    if s.is_empty() {
        Err(NameError::Empty)
    } else if s.len() > max {
        Err(NameError::TooLong(max))
    } else if !s.bytes().all(allowed) {
        Err(NameError::Charset(charset))
    } else {
        Ok(())
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $max:expr, $allowed:expr, $charset:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses and validates `s`.
            pub fn parse(s: &str) -> Result<Self, NameError> {
                check_name(s, $max, $allowed, $charset)?;
                Ok(Self(s.to_owned()))
            }

            /// The validated string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                check_name(&s, $max, $allowed, $charset)?;
                Ok(Self(s))
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> Self {
                v.0
            }
        }
    };
}

name_type!(
    /// A task id: 1–128 bytes of `[A-Za-z0-9._:-]`.
    TaskId,
    TASK_ID_MAX_LEN,
    |b| b.is_ascii_alphanumeric() || b"._:-".contains(&b),
    "[A-Za-z0-9._:-]"
);

name_type!(
    /// An audience (the API a token is for, its `aud`): 1–256 visible ASCII
    /// characters, no spaces. Usually a URI.
    Audience,
    AUDIENCE_MAX_LEN,
    |b| (0x21..=0x7e).contains(&b),
    "visible ASCII"
);

name_type!(
    /// A scope: an RFC 6749 `scope-token` (visible ASCII except `"` and `\`), 1–128 bytes.
    Scope,
    SCOPE_MAX_LEN,
    |b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b),
    "RFC 6749 scope characters"
);

/// The class of a scope. One token carries exactly one class; the order is
/// the order of power (discover < read < write < admin).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScopeClass {
    /// Listing what exists, without reading it.
    Discover,
    /// Reading data.
    Read,
    /// Changing data or triggering actions.
    Write,
    /// Changing permissions or configuration.
    Admin,
}

impl fmt::Display for ScopeClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Discover => "discover",
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
        })
    }
}

/// Audience → scopes: the most any token of a task may carry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeCeiling(pub BTreeMap<Audience, BTreeSet<Scope>>);

impl ScopeCeiling {
    /// The scopes of `scopes` that the ceiling does not allow for `audience`.
    pub fn excess<'a>(&self, audience: &Audience, scopes: impl IntoIterator<Item = &'a Scope>) -> Vec<&'a Scope> {
        let allowed = self.0.get(audience);
        scopes
            .into_iter()
            .filter(|s| !allowed.is_some_and(|a| a.contains(*s)))
            .collect()
    }
}

/// Lifecycle state of a task as stored. "Expired" is not stored: it is
/// derived from the deadline by [`Task::state_at`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Open until its deadline.
    Active,
    /// Completed by its orchestrator.
    Completed,
    /// Revoked by an operator.
    Revoked,
    /// Past its deadline (never stored; see [`Task::state_at`]).
    Expired,
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Active => "active",
            Self::Completed => "completed",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
        })
    }
}

/// A unit of work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Its id.
    pub id: TaskId,
    /// Who started it.
    pub orchestrator: SpiffeId,
    /// Who may request tokens in it.
    pub agents: BTreeSet<SpiffeId>,
    /// The most its tokens may carry.
    pub ceiling: ScopeCeiling,
    /// Tool-level limits (RFC 9396 `mcp_tool` details, at most one per
    /// server): every token for one of these servers carries its limit or
    /// a narrower one ([`crate::authz::narrow`]). Empty: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<crate::authz::ToolGrant>,
    /// When it ends at the latest.
    pub deadline: DateTime<Utc>,
    /// Free-form labels.
    pub labels: BTreeMap<String, String>,
    /// The task it belongs to, if any.
    pub parent: Option<TaskId>,
    /// Stored state ([`TaskState::Active`], `Completed` or `Revoked`).
    pub state: TaskState,
    /// When it started.
    pub created_at: DateTime<Utc>,
    /// When it was completed or revoked.
    pub ended_at: Option<DateTime<Utc>>,
}

impl Task {
    /// The state at `now`: an active task past its deadline is expired.
    pub fn state_at(&self, now: DateTime<Utc>) -> TaskState {
        match self.state {
            TaskState::Active if now >= self.deadline => TaskState::Expired,
            state => state,
        }
    }

    /// Whether the task accepts token requests at `now`.
    pub fn is_active_at(&self, now: DateTime<Utc>) -> bool {
        self.state_at(now) == TaskState::Active
    }

    /// When the task ended or will end: `ended_at` or the deadline.
    pub fn end(&self) -> DateTime<Utc> {
        self.ended_at.unwrap_or(self.deadline).min(self.deadline)
    }
}

/// Why a task cannot be acted on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// No task with that id.
    #[error("task `{0}` not found")]
    NotFound(TaskId),
    /// The task is completed, revoked or expired.
    #[error("task `{0}` is {1}")]
    Over(TaskId, TaskState),
}

impl TaskError {
    /// Transport-free classification.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::Over(..) => ErrorKind::FailedPrecondition,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(TaskId::parse("task-1:a.b_C").is_ok());
        assert_eq!(TaskId::parse(""), Err(NameError::Empty));
        assert_eq!(TaskId::parse("a/b"), Err(NameError::Charset("[A-Za-z0-9._:-]")));
        assert_eq!(TaskId::parse(&"a".repeat(129)), Err(NameError::TooLong(128)));
        assert!(Audience::parse("https://api.example.com/crm").is_ok());
        assert!(Audience::parse("has space").is_err());
        assert!(Scope::parse("crm.contacts:read").is_ok());
        assert!(Scope::parse("a\"b").is_err());
        assert!(Scope::parse("a\\b").is_err());
        assert!(Scope::parse("a b").is_err());
        assert!(Scope::parse("é").is_err());
    }

    #[test]
    fn ceiling_reports_excess_scopes() {
        let aud = Audience::parse("crm").unwrap();
        let read = Scope::parse("read").unwrap();
        let write = Scope::parse("write").unwrap();
        let ceiling = ScopeCeiling(BTreeMap::from([(aud.clone(), BTreeSet::from([read.clone()]))]));
        assert!(ceiling.excess(&aud, [&read]).is_empty());
        assert_eq!(ceiling.excess(&aud, [&read, &write]), vec![&write]);
        let other = Audience::parse("billing").unwrap();
        assert_eq!(ceiling.excess(&other, [&read]), vec![&read]);
    }
}
