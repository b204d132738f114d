//! Approvals: a token request that waits for a person's decision.
//!
//! A request touching a high-impact scope (or one that policy marks) becomes
//! a pending [`Approval`] instead of a token. The approval is **bound** to the
//! exact request: [`ApprovalRequest::binding`] is the SHA-256 of a canonical
//! encoding of task, audience, sorted scopes, requested TTL, requester and
//! proof-of-possession key thumbprint. The token minted on approval is built
//! from the stored request, and only after its binding is re-checked, so an
//! approval can never yield a token for anything else.
//!
//! States: `pending → approved → redeemed`, or `pending → denied`, or
//! `pending → expired` (derived from the expiry). Stores apply the
//! transitions atomically, so an approval yields at most one token.

use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::error::ErrorKind;
use crate::grant::{GrantId, RandomError};
use crate::identity::SpiffeId;
use crate::task::{Audience, Scope, ScopeClass, TaskId};
use crate::ttl::Ttl;

/// Longest approval id accepted from outside, in bytes.
pub const APPROVAL_ID_MAX_LEN: usize = 64;

/// How long after its expiry an approved (not yet redeemed) approval may
/// still be redeemed: an approval given in the last second still reaches
/// the agent waiting on it.
pub const REDEEM_GRACE: Duration = Duration::seconds(60);

/// An approval id: 128 random bits, base64url, prefixed `ap_`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ApprovalId(String);

/// Why a string is not an approval id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("approval id must be 1-{APPROVAL_ID_MAX_LEN} characters of [A-Za-z0-9_-]")]
pub struct ApprovalIdError;

impl ApprovalId {
    /// A fresh, unguessable id.
    pub fn generate() -> Result<Self, RandomError> {
        Ok(Self(format!("ap_{}", crate::grant::random_id()?)))
    }

    /// Parses an id received from outside.
    pub fn parse(s: &str) -> Result<Self, ApprovalIdError> {
        if s.is_empty()
            || s.len() > APPROVAL_ID_MAX_LEN
            || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ApprovalIdError);
        }
        Ok(Self(s.to_owned()))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ApprovalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for ApprovalId {
    type Error = ApprovalIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<ApprovalId> for String {
    fn from(id: ApprovalId) -> Self {
        id.0
    }
}

/// The exact request an approval is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    /// Who asked; the only identity that may receive the token.
    pub requester: SpiffeId,
    /// The task.
    pub task_id: TaskId,
    /// The API.
    pub audience: Audience,
    /// The scopes, sorted.
    pub scopes: BTreeSet<Scope>,
    /// The requested lifetime (`None`: the broker's default).
    pub ttl: Option<Ttl>,
    /// RFC 7638 thumbprint of the requester's proof-of-possession key; empty
    /// while tokens are not bound to a key.
    #[serde(default)]
    pub pop_jkt: String,
    /// The tool-level limit the token will carry (`mcp_tool` detail), if
    /// any: approved as part of the request, so an approval for one
    /// constraint is never redeemed for a wider one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<crate::authz::ToolGrant>,
}

/// Domain separation for [`ApprovalRequest::binding`]; bump on any change of the encoding.
const BINDING_DOMAIN: &[u8] = b"tessera.approval.v1";

impl ApprovalRequest {
    /// The canonical encoding: the domain, then each field as a big-endian
    /// u32 length and its bytes, in this order: task, audience, the number
    /// of scopes (4 bytes) then each scope in sorted order, TTL seconds
    /// (empty when unset), requester, PoP thumbprint, and only when the
    /// request has a tool-level limit, its canonical JSON
    /// ([`crate::authz::ToolGrant::to_value`]; so the bindings of approvals
    /// without one are unchanged). Length prefixes make it unambiguous: no
    /// two requests encode alike.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        fn field(out: &mut Vec<u8>, bytes: &[u8]) {
            let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(bytes);
        }
        let mut out = Vec::with_capacity(256);
        field(&mut out, BINDING_DOMAIN);
        field(&mut out, self.task_id.as_str().as_bytes());
        field(&mut out, self.audience.as_str().as_bytes());
        let count = u32::try_from(self.scopes.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&count.to_be_bytes());
        for scope in &self.scopes {
            field(&mut out, scope.as_str().as_bytes());
        }
        let ttl = self.ttl.map(|t| t.as_secs().to_string()).unwrap_or_default();
        field(&mut out, ttl.as_bytes());
        field(&mut out, self.requester.as_str().as_bytes());
        field(&mut out, self.pop_jkt.as_bytes());
        if let Some(tools) = &self.tools {
            field(&mut out, tools.to_value().to_string().as_bytes());
        }
        out
    }

    /// Lowercase hex SHA-256 of [`ApprovalRequest::canonical_bytes`].
    pub fn binding(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.canonical_bytes());
        crate::hex::lower(digest.as_ref())
    }
}

/// Where an approval stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalState {
    /// Waiting for a person's decision.
    Pending,
    /// Approved; the token is minted when the requester collects it.
    Approved,
    /// Refused by an approver.
    Denied,
    /// Approved and its one token minted.
    Redeemed,
    /// Nobody decided in time (derived, never stored).
    Expired,
}

impl ApprovalState {
    /// The name as stored and shown (`pending`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::Redeemed => "redeemed",
            Self::Expired => "expired",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "approved" => Self::Approved,
            "denied" => Self::Denied,
            "redeemed" => Self::Redeemed,
            "expired" => Self::Expired,
            _ => return None,
        })
    }
}

impl fmt::Display for ApprovalState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A person's decision on an approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalDecision {
    /// Approved (`true`) or denied.
    pub approve: bool,
    /// Who decided.
    pub approver: SpiffeId,
    /// Why, in the approver's words (sent to the requester on denial).
    pub reason: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// One approval: the bound request, what made it need approval, and its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// Its id.
    pub id: ApprovalId,
    /// The exact request.
    pub request: ApprovalRequest,
    /// SHA-256 binding of `request`, fixed at creation.
    pub binding: String,
    /// The scopes' one class.
    pub class: ScopeClass,
    /// The high-impact scopes among them.
    pub high_impact: BTreeSet<Scope>,
    /// The blast-radius score of the token as requested.
    pub blast_radius: u32,
    /// Why it needs approval (for the approver).
    pub reason: String,
    /// When it was opened.
    pub created_at: DateTime<Utc>,
    /// A pending approval expires here.
    pub expires_at: DateTime<Utc>,
    /// Stored state (`Expired` is derived by [`Approval::state_at`]).
    pub state: ApprovalState,
    /// The decision, once made.
    pub decision: Option<ApprovalDecision>,
    /// The grant minted on redemption.
    pub grant_id: Option<GrantId>,
}

impl Approval {
    /// A pending approval for `request`.
    #[allow(clippy::too_many_arguments, reason = "each argument is one field of the new record")]
    pub fn open(
        id: ApprovalId,
        request: ApprovalRequest,
        class: ScopeClass,
        high_impact: BTreeSet<Scope>,
        blast_radius: u32,
        reason: String,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Self {
        let binding = request.binding();
        Self {
            id,
            request,
            binding,
            class,
            high_impact,
            blast_radius,
            reason,
            created_at: now,
            expires_at,
            state: ApprovalState::Pending,
            decision: None,
            grant_id: None,
        }
    }

    /// The state at `now`: pending past its expiry, or approved and not
    /// redeemed past its expiry plus [`REDEEM_GRACE`], is expired.
    pub fn state_at(&self, now: DateTime<Utc>) -> ApprovalState {
        match self.state {
            ApprovalState::Pending if now >= self.expires_at => ApprovalState::Expired,
            ApprovalState::Approved if now >= self.expires_at + REDEEM_GRACE => ApprovalState::Expired,
            state => state,
        }
    }

    /// Whether the stored request still hashes to the binding fixed at creation.
    pub fn is_bound(&self) -> bool {
        // The binding is a hash of non-secret fields: a plain comparison is fine.
        self.request.binding() == self.binding
    }
}

/// Why an approval operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApprovalError {
    /// No such approval (or it is long gone).
    #[error("approval `{0}` not found")]
    NotFound(ApprovalId),
    /// The requester tried to decide its own request.
    #[error("identity `{0}` requested this token and cannot approve or deny its own request")]
    SelfDecision(SpiffeId),
    /// The caller may not decide approvals.
    #[error("identity `{0}` may not decide approvals")]
    NotAnApprover(SpiffeId),
    /// Only the requester may wait for (and receive) the token.
    #[error("identity `{0}` did not make this request; only the requester may await it")]
    NotRequester(SpiffeId),
    /// The approval is not pending, so it cannot be decided.
    #[error("approval `{id}` is {state}, not pending")]
    NotPending {
        /// The approval.
        id: ApprovalId,
        /// Its state.
        state: ApprovalState,
    },
    /// An approver denied it.
    #[error("approval `{id}` was denied by `{approver}`: {reason}")]
    Denied {
        /// The approval.
        id: ApprovalId,
        /// Who denied it.
        approver: SpiffeId,
        /// Their reason.
        reason: String,
    },
    /// Nobody decided before it expired.
    #[error("approval `{0}` expired before anyone decided")]
    Expired(ApprovalId),
    /// Its one token was already delivered.
    #[error("approval `{0}` was already redeemed; its one token was delivered")]
    Redeemed(ApprovalId),
    /// The stored request no longer matches its binding (tampering or corruption).
    #[error("approval `{0}` no longer matches the request it was bound to")]
    Unbound(ApprovalId),
}

impl ApprovalError {
    /// Transport-free classification.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::SelfDecision(_) | Self::NotAnApprover(_) | Self::NotRequester(_) | Self::Denied { .. } => {
                ErrorKind::PermissionDenied
            }
            Self::NotPending { .. } | Self::Redeemed(_) => ErrorKind::FailedPrecondition,
            Self::Expired(_) => ErrorKind::DeadlineExceeded,
            Self::Unbound(_) => ErrorKind::Internal,
        }
    }
}

/// Checks that `approver` may decide `approval` at `now`: it is pending, and
/// the approver is not the requester. Whether the approver may approve at
/// all is policy's question, asked before this.
pub fn check_decision(approval: &Approval, approver: &SpiffeId, now: DateTime<Utc>) -> Result<(), ApprovalError> {
    // INVARIANT: checked in code, whatever policy says: nobody approves their own request.
    if approver == &approval.request.requester {
        return Err(ApprovalError::SelfDecision(approver.clone()));
    }
    match approval.state_at(now) {
        ApprovalState::Pending => Ok(()),
        state => Err(ApprovalError::NotPending {
            id: approval.id.clone(),
            state,
        }),
    }
}

/// What an awaiting requester learns from an approval at `now`: `Ok(None)`
/// while pending, `Ok(Some(()))` once approved (ready to redeem), or why no
/// token will come.
pub fn await_outcome(approval: &Approval, caller: &SpiffeId, now: DateTime<Utc>) -> Result<Option<()>, ApprovalError> {
    if caller != &approval.request.requester {
        return Err(ApprovalError::NotRequester(caller.clone()));
    }
    match approval.state_at(now) {
        ApprovalState::Pending => Ok(None),
        ApprovalState::Approved => Ok(Some(())),
        ApprovalState::Denied => {
            let (approver, reason) = approval
                .decision
                .as_ref()
                .map(|d| (d.approver.clone(), d.reason.clone()))
                .unwrap_or_else(|| (approval.request.requester.clone(), String::new()));
            Err(ApprovalError::Denied {
                id: approval.id.clone(),
                approver,
                reason,
            })
        }
        ApprovalState::Redeemed => Err(ApprovalError::Redeemed(approval.id.clone())),
        ApprovalState::Expired => Err(ApprovalError::Expired(approval.id.clone())),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]

    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn request() -> ApprovalRequest {
        ApprovalRequest {
            tools: None,
            requester: SpiffeId::parse("spiffe://td/agent/a").unwrap(),
            task_id: TaskId::parse("t1").unwrap(),
            audience: Audience::parse("pay").unwrap(),
            scopes: BTreeSet::from([Scope::parse("transfers.create").unwrap()]),
            ttl: Some(Ttl::from_secs(120).unwrap()),
            pop_jkt: String::new(),
        }
    }

    fn approval() -> Approval {
        Approval::open(
            ApprovalId::parse("ap_1").unwrap(),
            request(),
            ScopeClass::Write,
            BTreeSet::from([Scope::parse("transfers.create").unwrap()]),
            25,
            "high-impact scope".into(),
            t0(),
            t0() + Duration::seconds(300),
        )
    }

    #[test]
    fn ids_are_unique_and_parse() {
        let a = ApprovalId::generate().unwrap();
        assert_ne!(a, ApprovalId::generate().unwrap());
        assert!(a.as_str().starts_with("ap_"));
        assert_eq!(ApprovalId::parse(a.as_str()).unwrap(), a);
        assert!(ApprovalId::parse("").is_err());
        assert!(ApprovalId::parse("a/b").is_err());
        assert!(ApprovalId::parse(&"a".repeat(65)).is_err());
    }

    fn tool_limit(max: u32) -> crate::authz::ToolGrant {
        crate::authz::ToolGrant::parse(&serde_json::json!({
            "type": "mcp_tool", "server": "pay", "tools": ["transfer"],
            "constraints": {"transfer": {"amount": {"max": max}}}
        }))
        .unwrap()
    }

    #[test]
    fn the_binding_covers_every_field() {
        let base = request();
        let b = base.binding();
        assert_eq!(b.len(), 64);
        assert_eq!(b, request().binding(), "deterministic");
        let variants = [
            ApprovalRequest {
                requester: SpiffeId::parse("spiffe://td/agent/b").unwrap(),
                ..base.clone()
            },
            ApprovalRequest {
                task_id: TaskId::parse("t2").unwrap(),
                ..base.clone()
            },
            ApprovalRequest {
                audience: Audience::parse("pay2").unwrap(),
                ..base.clone()
            },
            ApprovalRequest {
                scopes: BTreeSet::from([
                    Scope::parse("transfers.create").unwrap(),
                    Scope::parse("transfers.cancel").unwrap(),
                ]),
                ..base.clone()
            },
            ApprovalRequest {
                ttl: Some(Ttl::from_secs(121).unwrap()),
                ..base.clone()
            },
            ApprovalRequest {
                ttl: None,
                ..base.clone()
            },
            ApprovalRequest {
                pop_jkt: "thumb".into(),
                ..base.clone()
            },
            ApprovalRequest {
                tools: Some(tool_limit(500)),
                ..base.clone()
            },
            ApprovalRequest {
                tools: Some(tool_limit(501)),
                ..base.clone()
            },
        ];
        let mut seen = BTreeSet::from([b]);
        for v in variants {
            assert!(seen.insert(v.binding()), "{v:?} collides");
        }
    }

    #[test]
    fn the_encoding_is_unambiguous() {
        // Moving bytes between adjacent fields changes the encoding.
        let a = ApprovalRequest {
            scopes: BTreeSet::from([Scope::parse("ab").unwrap()]),
            ..request()
        };
        let b = ApprovalRequest {
            scopes: BTreeSet::from([Scope::parse("a").unwrap(), Scope::parse("b").unwrap()]),
            ..request()
        };
        assert_ne!(a.canonical_bytes(), b.canonical_bytes());
        let c = ApprovalRequest {
            task_id: TaskId::parse("t1x").unwrap(),
            pop_jkt: String::new(),
            ..request()
        };
        let d = ApprovalRequest {
            task_id: TaskId::parse("t1").unwrap(),
            pop_jkt: "x".into(),
            ..request()
        };
        assert_ne!(c.binding(), d.binding());
    }

    #[test]
    fn a_tampered_request_is_unbound() {
        let mut a = approval();
        assert!(a.is_bound());
        a.request.scopes.insert(Scope::parse("transfers.delete").unwrap());
        assert!(!a.is_bound());
        // An approval of one tool-level limit is not one of a wider limit.
        let mut a = approval();
        a.request.tools = Some(tool_limit(500));
        a.binding = a.request.binding();
        assert!(a.is_bound());
        a.request.tools = Some(tool_limit(5000));
        assert!(!a.is_bound());
        a.request.tools = None;
        assert!(!a.is_bound(), "nor of no limit at all");
    }

    #[test]
    fn states_over_time() {
        let mut a = approval();
        assert_eq!(a.state_at(t0()), ApprovalState::Pending);
        assert_eq!(a.state_at(t0() + Duration::seconds(299)), ApprovalState::Pending);
        assert_eq!(a.state_at(t0() + Duration::seconds(300)), ApprovalState::Expired);
        a.state = ApprovalState::Approved;
        assert_eq!(a.state_at(t0() + Duration::seconds(359)), ApprovalState::Approved);
        assert_eq!(a.state_at(t0() + Duration::seconds(360)), ApprovalState::Expired);
        a.state = ApprovalState::Redeemed;
        assert_eq!(a.state_at(t0() + Duration::days(1)), ApprovalState::Redeemed);
        for s in ["pending", "approved", "denied", "redeemed", "expired"] {
            assert_eq!(ApprovalState::parse(s).unwrap().as_str(), s);
        }
        assert_eq!(ApprovalState::parse("nope"), None);
    }

    #[test]
    fn nobody_decides_their_own_request() {
        let a = approval();
        let requester = a.request.requester.clone();
        let operator = SpiffeId::parse("spiffe://td/operator/alice").unwrap();
        assert_eq!(
            check_decision(&a, &requester, t0()),
            Err(ApprovalError::SelfDecision(requester.clone()))
        );
        assert_eq!(check_decision(&a, &operator, t0()), Ok(()));
        assert!(matches!(
            check_decision(&a, &operator, t0() + Duration::seconds(300)),
            Err(ApprovalError::NotPending {
                state: ApprovalState::Expired,
                ..
            })
        ));
        let mut decided = a.clone();
        decided.state = ApprovalState::Denied;
        assert!(matches!(
            check_decision(&decided, &operator, t0()),
            Err(ApprovalError::NotPending {
                state: ApprovalState::Denied,
                ..
            })
        ));
    }

    #[test]
    fn only_the_requester_awaits_and_learns_the_outcome() {
        let mut a = approval();
        let requester = a.request.requester.clone();
        let other = SpiffeId::parse("spiffe://td/agent/b").unwrap();
        assert_eq!(
            await_outcome(&a, &other, t0()),
            Err(ApprovalError::NotRequester(other.clone()))
        );
        assert_eq!(await_outcome(&a, &requester, t0()), Ok(None));
        assert_eq!(
            await_outcome(&a, &requester, t0() + Duration::seconds(300))
                .unwrap_err()
                .kind(),
            ErrorKind::DeadlineExceeded
        );
        a.state = ApprovalState::Approved;
        assert_eq!(await_outcome(&a, &requester, t0()), Ok(Some(())));
        a.state = ApprovalState::Denied;
        a.decision = Some(ApprovalDecision {
            approve: false,
            approver: SpiffeId::parse("spiffe://td/operator/alice").unwrap(),
            reason: "not today".into(),
            at: t0(),
        });
        let denied = await_outcome(&a, &requester, t0()).unwrap_err();
        assert_eq!(denied.kind(), ErrorKind::PermissionDenied);
        assert!(denied.to_string().contains("not today"), "{denied}");
        a.state = ApprovalState::Redeemed;
        assert_eq!(
            await_outcome(&a, &requester, t0()).unwrap_err().kind(),
            ErrorKind::FailedPrecondition
        );
    }
}
