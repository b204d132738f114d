//! Who a caller is: SPIFFE IDs, identity kinds and the registry of identities
//! allowed to use the broker.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::ErrorKind;
use crate::ttl::Ttl;

/// Longest SPIFFE ID accepted, in bytes (the SPIFFE spec's URI limit).
pub const SPIFFE_ID_MAX_LEN: usize = 2048;
/// Longest trust domain name accepted, in bytes.
pub const TRUST_DOMAIN_MAX_LEN: usize = 255;

/// Why a string is not a SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpiffeIdError {
    /// Empty input.
    #[error("SPIFFE ID is empty")]
    Empty,
    /// Longer than [`SPIFFE_ID_MAX_LEN`].
    #[error("SPIFFE ID is longer than {SPIFFE_ID_MAX_LEN} bytes")]
    TooLong,
    /// Does not start with `spiffe://`.
    #[error("SPIFFE ID must start with `spiffe://`")]
    Scheme,
    /// Trust domain is empty, too long or has a character outside `[a-z0-9.-_]`.
    #[error("SPIFFE ID has an invalid trust domain")]
    TrustDomain,
    /// A path segment is empty, `.`, `..`, or has a character outside `[A-Za-z0-9.-_]`.
    #[error("SPIFFE ID has an invalid path")]
    Path,
}

/// A SPIFFE ID (`spiffe://trust-domain/path`), valid by construction per the
/// SPIFFE ID specification: lowercase trust domain, no port, userinfo, query,
/// fragment, percent-encoding, empty, `.` or `..` segments, or trailing slash.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SpiffeId {
    id: String,
    /// Byte offset where the path starts (== id.len() when there is no path).
    path_start: usize,
}

impl SpiffeId {
    /// Parses and validates `s`.
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        if s.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if s.len() > SPIFFE_ID_MAX_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = s.strip_prefix("spiffe://").ok_or(SpiffeIdError::Scheme)?;
        let (domain, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if domain.is_empty()
            || domain.len() > TRUST_DOMAIN_MAX_LEN
            || !domain
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
        {
            return Err(SpiffeIdError::TrustDomain);
        }
        if !path.is_empty() {
            // `path` starts with '/': every segment after it must be valid.
            for segment in path.split('/').skip(1) {
                let valid = !segment.is_empty()
                    && segment != "."
                    && segment != ".."
                    && segment
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
                if !valid {
                    return Err(SpiffeIdError::Path);
                }
            }
        }
        Ok(Self {
            id: s.to_owned(),
            path_start: "spiffe://".len() + domain.len(),
        })
    }

    /// The whole ID.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// The trust domain, e.g. `example.org`.
    pub fn trust_domain(&self) -> &str {
        self.id.get("spiffe://".len()..self.path_start).unwrap_or_default()
    }

    /// The path, e.g. `/agent/researcher`; empty for a trust domain's own ID.
    pub fn path(&self) -> &str {
        self.id.get(self.path_start..).unwrap_or_default()
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for SpiffeId {
    type Error = SpiffeIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<SpiffeId> for String {
    fn from(id: SpiffeId) -> Self {
        id.id
    }
}

/// What sort of non-human (or human) identity a caller is. Policy treats kinds
/// differently: agents get shorter TTLs than services, partners are held back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentityKind {
    /// An autonomous agent (AI or automation) acting inside tasks.
    Agent,
    /// A first-party service account.
    Service,
    /// A third party's workload.
    Partner,
    /// A person (operators, approvers).
    Human,
}

impl fmt::Display for IdentityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Agent => "agent",
            Self::Service => "service",
            Self::Partner => "partner",
            Self::Human => "human",
        })
    }
}

/// What an identity may do with the broker. Until policy-as-code lands these
/// are the broker's whole authorization model for non-agent operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Requests tokens in tasks it is assigned to.
    Agent,
    /// Starts tasks, and completes the tasks it started.
    Orchestrator,
    /// Revokes any grant or task, completes any task.
    Operator,
    /// Introspects tokens and watches the revocation feed.
    Verifier,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Agent => "agent",
            Self::Orchestrator => "orchestrator",
            Self::Operator => "operator",
            Self::Verifier => "verifier",
        })
    }
}

/// A registered identity: who it is, what it is, who answers for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Its SPIFFE ID.
    pub id: SpiffeId,
    /// Its kind.
    pub kind: IdentityKind,
    /// The accountable team or person.
    pub owner: String,
    /// Longest lifetime of any token issued to it.
    pub max_ttl: Ttl,
    /// What it may do.
    pub roles: BTreeSet<Role>,
    /// A disabled identity gets nothing.
    pub disabled: bool,
}

impl Identity {
    /// Whether the identity holds `role`.
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// Why a caller could not be identified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Not in the registry.
    #[error("identity `{0}` is not registered")]
    Unknown(SpiffeId),
    /// In the registry but disabled.
    #[error("identity `{0}` is disabled")]
    Disabled(SpiffeId),
    /// The attestation evidence itself was refused (the message says why).
    #[error("{0}")]
    Refused(String),
}

impl IdentityError {
    /// Transport-free classification.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Unauthenticated
    }
}

/// The identities allowed to talk to the broker.
#[derive(Debug, Clone, Default)]
pub struct IdentityRegistry {
    by_id: HashMap<SpiffeId, Identity>,
}

impl IdentityRegistry {
    /// A registry of `identities`; a later duplicate replaces an earlier one.
    pub fn new(identities: impl IntoIterator<Item = Identity>) -> Self {
        Self {
            by_id: identities.into_iter().map(|i| (i.id.clone(), i)).collect(),
        }
    }

    /// The enabled identity registered as `id`.
    pub fn lookup(&self, id: &SpiffeId) -> Result<&Identity, IdentityError> {
        match self.by_id.get(id) {
            None => Err(IdentityError::Unknown(id.clone())),
            Some(identity) if identity.disabled => Err(IdentityError::Disabled(id.clone())),
            Some(identity) => Ok(identity),
        }
    }

    /// Whether `id` is registered (enabled or not).
    pub fn contains(&self, id: &SpiffeId) -> bool {
        self.by_id.contains_key(id)
    }

    /// The registered identities (enabled or not) whose owner is `owner`.
    pub fn owned_by(&self, owner: &str) -> BTreeSet<SpiffeId> {
        self.by_id
            .values()
            .filter(|i| i.owner == owner)
            .map(|i| i.id.clone())
            .collect()
    }

    /// Every registered identity (enabled or not), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Identity> {
        self.by_id.values()
    }

    /// Number of registered identities.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether no identity is registered.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// A caller whose attestation was verified and whose identity is registered
/// and enabled. Built only by [`VerifiedIdentity::attested`], which the
/// attestation edge calls after verifying evidence.
#[derive(Debug, Clone)]
pub struct VerifiedIdentity {
    identity: Identity,
    method: AttestationMethod,
    evidence: String,
}

/// How a caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttestationMethod {
    /// An X.509-SVID presented over mTLS.
    X509,
}

impl VerifiedIdentity {
    /// Binds a registry entry to verified evidence. `evidence` is a digest of
    /// the evidence (e.g. `sha256:` of the leaf certificate), never a secret.
    pub fn attested(
        registry: &IdentityRegistry,
        id: &SpiffeId,
        method: AttestationMethod,
        evidence: String,
    ) -> Result<Self, IdentityError> {
        let identity = registry.lookup(id)?.clone();
        Ok(Self {
            identity,
            method,
            evidence,
        })
    }

    /// The registered identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Its SPIFFE ID.
    pub fn id(&self) -> &SpiffeId {
        &self.identity.id
    }

    /// How it was attested.
    pub fn method(&self) -> AttestationMethod {
        self.method
    }

    /// Digest of the attestation evidence, for audit.
    pub fn evidence(&self) -> &str {
        &self.evidence
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(input: &str, expected: Result<(&str, &str), SpiffeIdError>) {
        let got = SpiffeId::parse(input);
        match (got, expected) {
            (Ok(id), Ok((td, path))) => {
                assert_eq!(id.trust_domain(), td, "{input}");
                assert_eq!(id.path(), path, "{input}");
                assert_eq!(id.as_str(), input);
            }
            (Err(e), Err(want)) => assert_eq!(e, want, "{input}"),
            (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn spiffe_ids_follow_the_spec() {
        check("spiffe://example.org", Ok(("example.org", "")));
        check(
            "spiffe://example.org/agent/a-1_b.c",
            Ok(("example.org", "/agent/a-1_b.c")),
        );
        check("spiffe://td/ns/prod/sa/API", Ok(("td", "/ns/prod/sa/API")));
        check("", Err(SpiffeIdError::Empty));
        check("https://example.org/a", Err(SpiffeIdError::Scheme));
        check("SPIFFE://example.org/a", Err(SpiffeIdError::Scheme));
        check("spiffe://Example.org/a", Err(SpiffeIdError::TrustDomain));
        check("spiffe:///a", Err(SpiffeIdError::TrustDomain));
        check("spiffe://example.org:8080/a", Err(SpiffeIdError::TrustDomain));
        check("spiffe://user@example.org/a", Err(SpiffeIdError::TrustDomain));
        check("spiffe://example.org/a/", Err(SpiffeIdError::Path));
        check("spiffe://example.org/", Err(SpiffeIdError::Path));
        check("spiffe://example.org//a", Err(SpiffeIdError::Path));
        check("spiffe://example.org/a/../b", Err(SpiffeIdError::Path));
        check("spiffe://example.org/./b", Err(SpiffeIdError::Path));
        check("spiffe://example.org/%2e%2e/b", Err(SpiffeIdError::Path));
        check("spiffe://example.org/a?x=1", Err(SpiffeIdError::Path));
        check("spiffe://example.org/a#f", Err(SpiffeIdError::Path));
        check("spiffe://example.org/a b", Err(SpiffeIdError::Path));
        let long = format!("spiffe://example.org/{}", "a".repeat(2049));
        check(&long, Err(SpiffeIdError::TooLong));
    }

    fn identity(id: &str, disabled: bool) -> Identity {
        Identity {
            id: SpiffeId::parse(id).unwrap(),
            kind: IdentityKind::Agent,
            owner: "team".into(),
            max_ttl: Ttl::from_secs(60).unwrap(),
            roles: BTreeSet::from([Role::Agent]),
            disabled,
        }
    }

    #[test]
    fn registry_refuses_unknown_and_disabled() {
        let registry = IdentityRegistry::new([identity("spiffe://td/a", false), identity("spiffe://td/b", true)]);
        let a = SpiffeId::parse("spiffe://td/a").unwrap();
        let b = SpiffeId::parse("spiffe://td/b").unwrap();
        let c = SpiffeId::parse("spiffe://td/c").unwrap();
        assert!(registry.lookup(&a).is_ok());
        assert_eq!(registry.lookup(&b), Err(IdentityError::Disabled(b.clone())));
        assert_eq!(registry.lookup(&c), Err(IdentityError::Unknown(c.clone())));
        assert!(VerifiedIdentity::attested(&registry, &c, AttestationMethod::X509, "x".into()).is_err());
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics_and_round_trips(s in "\\PC{0,64}") {
            if let Ok(id) = SpiffeId::parse(&s) {
                proptest::prop_assert_eq!(id.as_str(), s.as_str());
                let again = SpiffeId::parse(id.as_str()).unwrap();
                proptest::prop_assert_eq!(again, id);
            }
        }

        #[test]
        fn valid_grammar_is_accepted(td in "[a-z0-9.\\-_]{1,20}", segs in proptest::collection::vec("[A-Za-z0-9\\-_][A-Za-z0-9.\\-_]{0,8}", 0..4)) {
            let path: String = segs.iter().filter(|s| *s != "." && *s != "..").map(|s| format!("/{s}")).collect();
            let s = format!("spiffe://{td}{path}");
            let id = SpiffeId::parse(&s).unwrap();
            proptest::prop_assert_eq!(id.trust_domain(), td.as_str());
            proptest::prop_assert_eq!(id.path(), path.as_str());
        }
    }
}
