//! What one audit record says: who did what, why, and where.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AuditKind {
    /// A token was minted.
    TokenIssued,
    /// A token request was refused.
    TokenDenied,
    /// An agent handed a token back before it expired.
    TokenReleased,
    /// A grant (one token) was revoked.
    GrantRevoked,
    /// A task began.
    TaskStarted,
    /// A task was completed; its grants died with it.
    TaskCompleted,
    /// A task was revoked with its grants.
    TaskRevoked,
    /// A task could not be started.
    TaskDenied,
    /// A caller's attestation was refused.
    AttestationRefused,
    /// A caller without the operator role called an admin operation.
    AdminDenied,
    /// A signing key was published in the JWKS.
    KeyPublished,
    /// A signing key was retired.
    KeyRetired,
    /// The policy set was reloaded.
    PolicyReloaded,
    /// A token request waits for a person's approval.
    ApprovalPending,
    /// An approver approved or rejected a pending request.
    ApprovalDecided,
    /// A token was delegated to another identity.
    TokenDelegated,
    /// An anomaly rule fired: the identity's grants were revoked and it was quarantined.
    Quarantined,
    /// A quarantined identity was refused.
    QuarantineRefused,
    /// A verifier reported a token presented by another identity than its holder.
    TokenMisuse,
    /// An operator disabled an identity (RevokeIdentity with `disable`).
    IdentityDisabled,
    /// An operator lifted a disable (EnableIdentity).
    IdentityEnabled,
    /// The audit trail took a record again after failing (health recovers).
    AuditRecovered,
    /// An operator exchanged a one-time code for an operator-console session.
    ConsoleSignIn,
    /// An operator-console session ended (sign-out).
    ConsoleSignOut,
}

impl AuditKind {
    /// The name as written in records (`token_issued`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TokenIssued => "token_issued",
            Self::TokenDenied => "token_denied",
            Self::TokenReleased => "token_released",
            Self::GrantRevoked => "grant_revoked",
            Self::TaskStarted => "task_started",
            Self::TaskCompleted => "task_completed",
            Self::TaskRevoked => "task_revoked",
            Self::TaskDenied => "task_denied",
            Self::AttestationRefused => "attestation_refused",
            Self::AdminDenied => "admin_denied",
            Self::KeyPublished => "key_published",
            Self::KeyRetired => "key_retired",
            Self::PolicyReloaded => "policy_reloaded",
            Self::ApprovalPending => "approval_pending",
            Self::ApprovalDecided => "approval_decided",
            Self::TokenDelegated => "token_delegated",
            Self::Quarantined => "quarantined",
            Self::QuarantineRefused => "quarantine_refused",
            Self::TokenMisuse => "token_misuse",
            Self::IdentityDisabled => "identity_disabled",
            Self::IdentityEnabled => "identity_enabled",
            Self::AuditRecovered => "audit_recovered",
            Self::ConsoleSignIn => "console_sign_in",
            Self::ConsoleSignOut => "console_sign_out",
        }
    }
}

impl fmt::Display for AuditKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the decision came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Allowed, or the event happened.
    Allow,
    /// Refused.
    Deny,
    /// Failed; the request was refused because of it.
    Error,
}

impl Outcome {
    /// The name as written in records (`allow`, `deny`, `error`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Error => "error",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who acted: the attested caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The SPIFFE ID (or the claimed one, when attestation was refused).
    pub identity: String,
    /// The identity's kind (`agent`, `orchestrator`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The team or person accountable for the identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// How the identity was attested (`x509_svid`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<String>,
    /// A digest of the attestation evidence, never the evidence itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
}

impl Actor {
    /// An actor known only by its identity.
    pub fn new(identity: impl Into<String>) -> Self {
        Self {
            identity: identity.into(),
            kind: None,
            owner: None,
            attestation: None,
            evidence: None,
        }
    }
}

/// One decision or lifecycle event, before it is sealed into the chain.
///
/// Only ids and hashes go in: a token, a signing key or attestation evidence
/// never does. `grant_id` is the token's `jti`; `who.evidence` a digest.
///
/// Absent (`None`) and empty fields are left out of the JSON.
// INVARIANT: the declaration order is the canonical JSON order, which is
// hashed. Never reorder fields; add new ones as `Option`s (or `Vec`s) left
// out when empty, so that records written before still hash the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// What happened.
    pub event: AuditKind,
    /// When (the broker's clock).
    pub at: DateTime<Utc>,
    /// Who acted, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub who: Option<Actor>,
    /// The task concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// The grant concerned: the token's `jti`, never the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
    /// The audience asked for or granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// The scopes asked for or granted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// The highest scope class concerned (`read`, `write`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// The token's lifetime in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u32>,
    /// The API schema version the request was checked against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<String>,
    /// How the decision came out.
    pub decision: Outcome,
    /// Why, for people (a denial's reasons, a revocation's reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The policies that decided.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_ids: Vec<String>,
    /// The hash of the policy set in force (`sha256:<hex>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_hash: Option<String>,
    /// Who approved or rejected, for approvals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approver: Option<String>,
    /// The broker instance that decided.
    pub instance: String,
    /// The request id, to find the request in the logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// How many things the event concerned (e.g. grants revoked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// The grant's blast-radius score (token issued, approval pending, or a
    /// refusal over the cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blast_radius: Option<u32>,
    /// The approval concerned (pending, decided, or the one a token was minted from).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    /// The operator-console session the caller acted through (`cs_<hex>`, a
    /// digest prefix of the session, never its cookie), when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_session: Option<String>,
    /// The OAuth grant type of a request to the HTTPS token endpoint
    /// (`jwt-bearer`, `client_credentials`, `token-exchange`), when it came
    /// that way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_type: Option<String>,
    /// How that request's client authenticated (`tls_client_auth`,
    /// `private_key_jwt`, `client_assertion` by a trusted issuer, or
    /// `none` for a bare `jwt-bearer` assertion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<String>,
}

impl AuditEvent {
    /// An event with only the required fields; set the others as needed:
    ///
    /// ```
    /// # use chrono::DateTime;
    /// # use tessera_core::audit::{AuditEvent, AuditKind, Outcome};
    /// # let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
    /// let event = AuditEvent {
    ///     task_id: Some("t-1".into()),
    ///     ..AuditEvent::new(AuditKind::TaskStarted, now, Outcome::Allow, "broker-1")
    /// };
    /// ```
    pub fn new(event: AuditKind, at: DateTime<Utc>, decision: Outcome, instance: impl Into<String>) -> Self {
        Self {
            event,
            at,
            who: None,
            task_id: None,
            grant_id: None,
            audience: None,
            scopes: Vec::new(),
            class: None,
            ttl_secs: None,
            schema_version: None,
            decision,
            reason: None,
            policy_ids: Vec::new(),
            policy_hash: None,
            approver: None,
            instance: instance.into(),
            request_id: None,
            count: None,
            blast_radius: None,
            approval_id: None,
            console_session: None,
            grant_type: None,
            client_auth: None,
        }
    }
}
