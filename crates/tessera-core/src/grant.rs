//! Grants: the broker's record of one issued token.

use std::collections::BTreeSet;
use std::fmt;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use ring::rand::SecureRandom as _;
use serde::{Deserialize, Serialize};

use crate::identity::SpiffeId;
use crate::task::{Audience, Scope, ScopeClass, TaskId};

/// Longest grant id accepted from outside, in bytes.
pub const GRANT_ID_MAX_LEN: usize = 64;

/// A grant id, equal to the token's `jti`: 128 random bits, base64url.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GrantId(String);

/// Why a string is not a grant id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("grant id must be 1-{GRANT_ID_MAX_LEN} characters of [A-Za-z0-9_-]")]
pub struct GrantIdError;

/// The random source failed; nothing may be issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("system random source failed")]
pub struct RandomError;

impl GrantId {
    /// A fresh, unguessable id.
    pub fn generate() -> Result<Self, RandomError> {
        Ok(Self(random_id()?))
    }

    /// Parses an id received from outside.
    pub fn parse(s: &str) -> Result<Self, GrantIdError> {
        if s.is_empty()
            || s.len() > GRANT_ID_MAX_LEN
            || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(GrantIdError);
        }
        Ok(Self(s.to_owned()))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// 128 random bits as 22 base64url characters.
pub fn random_id() -> Result<String, RandomError> {
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| RandomError)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

impl fmt::Display for GrantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for GrantId {
    type Error = GrantIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<GrantId> for String {
    fn from(id: GrantId) -> Self {
        id.0
    }
}

/// Lifecycle state of a grant. Only `Active` and `Revoked` are stored;
/// `Expired` is derived from the expiry by [`Grant::state_at`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GrantState {
    /// Live until its expiry.
    Active,
    /// Revoked (released, task ended, or operator).
    Revoked,
    /// Past its expiry.
    Expired,
}

impl fmt::Display for GrantState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Active => "active",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
        })
    }
}

/// One issued token, as recorded. Never holds the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Its id (the token's `jti`).
    pub id: GrantId,
    /// The task it was issued in.
    pub task_id: TaskId,
    /// Who it was issued to.
    pub subject: SpiffeId,
    /// The token's `aud`.
    pub audience: Audience,
    /// The token's scopes.
    pub scopes: BTreeSet<Scope>,
    /// The scopes' one class.
    pub class: ScopeClass,
    /// `iat`.
    pub issued_at: DateTime<Utc>,
    /// `exp`.
    pub expires_at: DateTime<Utc>,
    /// The grant it was delegated from, if any.
    pub parent: Option<GrantId>,
    /// `kid` of the signing key.
    pub key_id: String,
    /// Stored state.
    pub state: GrantState,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Why it was revoked.
    pub revocation_reason: Option<String>,
    /// What the broker assessed at mint: high-impact, blast radius, approval.
    #[serde(default)]
    pub impact: GrantImpact,
}

/// What the broker assessed about a grant when it minted it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantImpact {
    /// Whether any of its scopes is high-impact in the API catalog.
    #[serde(default)]
    pub high_impact: bool,
    /// Its blast-radius score ([`crate::blast::grant_score`]).
    #[serde(default)]
    pub blast_radius: u32,
    /// The approval it was minted from, when a person approved it.
    #[serde(default)]
    pub approval_id: Option<String>,
}

impl Grant {
    /// The state at `now`: an active grant past its expiry is expired.
    pub fn state_at(&self, now: DateTime<Utc>) -> GrantState {
        match self.state {
            GrantState::Active if now >= self.expires_at => GrantState::Expired,
            state => state,
        }
    }

    /// Whether the token is live at `now`.
    pub fn is_live_at(&self, now: DateTime<Utc>) -> bool {
        self.state_at(now) == GrantState::Active
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_unique_and_parse() {
        let a = GrantId::generate().unwrap();
        let b = GrantId::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 22);
        assert_eq!(GrantId::parse(a.as_str()).unwrap(), a);
        assert!(GrantId::parse("").is_err());
        assert!(GrantId::parse("a.b").is_err());
        assert!(GrantId::parse(&"a".repeat(65)).is_err());
    }
}
