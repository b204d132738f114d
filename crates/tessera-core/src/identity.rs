//! Who a caller is: SPIFFE IDs, identity kinds and the registry of identities
//! allowed to use the broker.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, PoisonError, RwLock};

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
    /// Registered, but not allowed to attest by this method.
    #[error("identity `{id}` may not attest by `{method}`")]
    MethodNotAllowed {
        /// The identity.
        id: SpiffeId,
        /// The method used.
        method: AttestationMethod,
    },
}

impl IdentityError {
    /// Transport-free classification.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Unauthenticated
    }
}

/// How an identity may attest, beyond what [`Identity`] says: the methods it
/// may use and, for `unix`, the selectors a peer must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestationRules {
    /// Methods the identity may attest by; never empty.
    pub methods: BTreeSet<AttestationMethod>,
    /// Selectors a Unix-socket peer must match to be this identity.
    pub unix: Option<crate::attestation::UnixSelector>,
    /// Where the public keys the identity signs OAuth client assertions
    /// with (`private_key_jwt`) come from; `None` when it has none.
    pub client_keys: Option<ClientKeys>,
}

/// Where an identity's OAuth client assertion keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientKeys {
    /// A JWK Set read with the configuration (`client_jwks_file`).
    Keys(Arc<crate::attestation::IssuerKeys>),
    /// A JWK Set the broker fetches over HTTPS (`client_jwks_url`, the
    /// client's `jwks_uri`), trusting the CA certificates in `ca` (PEM).
    Url {
        /// The `https://` URL.
        url: String,
        /// Roots to verify its server with.
        ca: std::path::PathBuf,
    },
}

impl Default for AttestationRules {
    /// `x509` only, so configurations written before other attestors keep
    /// their meaning.
    fn default() -> Self {
        Self {
            methods: BTreeSet::from([AttestationMethod::X509]),
            unix: None,
            client_keys: None,
        }
    }
}

#[derive(Debug, Default)]
struct Entries {
    by_id: HashMap<SpiffeId, (Identity, AttestationRules)>,
}

/// The identities allowed to talk to the broker.
///
/// A handle: clones share one registry, and [`IdentityRegistry::replace`]
/// swaps its contents for every clone at once (the broker and the reloader
/// hold clones), so a reload or a runtime `disabled` applies to the next
/// attestation without a restart.
#[derive(Debug, Clone)]
pub struct RegistryVersion(Arc<Entries>);

impl PartialEq for RegistryVersion {
    /// The same contents, by address (held, so never reused).
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl RegistryVersion {
    /// Whether `registry` still holds these contents (holding them keeps
    /// their address from being reused, so the comparison is exact).
    pub fn is_current(&self, registry: &IdentityRegistry) -> bool {
        Arc::ptr_eq(&self.0, &registry.current())
    }
}

/// A set of registered identities (see [`IdentityRegistry::version`]).
///
/// Besides the configured `disabled` flags, an operator can disable an
/// identity at runtime (RevokeIdentity with `disable`); those are kept in a
/// set of their own, shared by every clone, which a configuration reload
/// does not touch ([`IdentityRegistry::set_runtime_disabled`]).
#[derive(Debug, Clone, Default)]
pub struct IdentityRegistry {
    entries: Arc<RwLock<Arc<Entries>>>,
    runtime_disabled: Arc<RwLock<RuntimeDisabled>>,
}

/// Identities disabled at runtime, and a generation bumped by every local
/// change, so that a refresh read before a change cannot undo it.
#[derive(Debug, Clone, Default)]
struct RuntimeDisabled {
    ids: Arc<BTreeSet<SpiffeId>>,
    generation: u64,
    /// Bumped by every change of `ids`, local or read from the store.
    changes: u64,
}

impl IdentityRegistry {
    /// A registry of `identities`, each allowed `x509` only; a later
    /// duplicate replaces an earlier one.
    pub fn new(identities: impl IntoIterator<Item = Identity>) -> Self {
        Self::with_rules(identities.into_iter().map(|i| (i, AttestationRules::default())))
    }

    /// A registry of identities with their attestation rules.
    pub fn with_rules(identities: impl IntoIterator<Item = (Identity, AttestationRules)>) -> Self {
        let entries = Entries {
            by_id: identities.into_iter().map(|(i, r)| (i.id.clone(), (i, r))).collect(),
        };
        Self {
            entries: Arc::new(RwLock::new(Arc::new(entries))),
            runtime_disabled: Arc::default(),
        }
    }

    /// The registry's contents as of now, to tell later whether they were
    /// replaced since (by a reload).
    pub fn version(&self) -> RegistryVersion {
        RegistryVersion(self.current())
    }

    fn current(&self) -> Arc<Entries> {
        self.entries.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Replaces the contents of this registry (and of every clone) with
    /// those of `other`.
    pub fn replace(&self, other: &IdentityRegistry) {
        let next = other.current();
        *self.entries.write().unwrap_or_else(PoisonError::into_inner) = next;
    }

    fn runtime(&self) -> Arc<BTreeSet<SpiffeId>> {
        self.runtime_disabled
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .ids
            .clone()
    }

    /// The generation of the runtime-disabled set: read it before reading
    /// the store, and hand it to [`IdentityRegistry::set_runtime_disabled`].
    pub fn runtime_generation(&self) -> u64 {
        self.runtime_disabled
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .generation
    }

    /// A number that changes whenever the set of identities disabled at
    /// runtime does (a local disable or enable, or a refresh from the store).
    pub fn runtime_changes(&self) -> u64 {
        self.runtime_disabled
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .changes
    }

    /// Replaces the identities disabled at runtime (by an operator, read
    /// from the store) for every clone, unless a local disable or enable
    /// happened since `generation` was read (then the store read may predate
    /// it, and the next refresh applies). Ids not registered are kept too,
    /// so an identity added to the configuration later stays disabled.
    /// Returns whether the set was replaced.
    pub fn set_runtime_disabled(&self, ids: BTreeSet<SpiffeId>, generation: u64) -> bool {
        let mut guard = self.runtime_disabled.write().unwrap_or_else(PoisonError::into_inner);
        if guard.generation != generation {
            return false;
        }
        if *guard.ids != ids {
            guard.changes = guard.changes.wrapping_add(1);
            guard.ids = Arc::new(ids);
        }
        true
    }

    /// Disables `id` at runtime on this registry at once (the store carries
    /// it to other replicas); returns whether it was not already.
    pub fn disable_at_runtime(&self, id: &SpiffeId) -> bool {
        let mut guard = self.runtime_disabled.write().unwrap_or_else(PoisonError::into_inner);
        guard.generation = guard.generation.wrapping_add(1);
        if guard.ids.contains(id) {
            return false;
        }
        let mut next = (*guard.ids).clone();
        next.insert(id.clone());
        guard.ids = Arc::new(next);
        guard.changes = guard.changes.wrapping_add(1);
        true
    }

    /// Lifts a runtime disable of `id` on this registry; returns whether
    /// there was one. A `disabled = true` in the configuration stays.
    pub fn enable_at_runtime(&self, id: &SpiffeId) -> bool {
        let mut guard = self.runtime_disabled.write().unwrap_or_else(PoisonError::into_inner);
        guard.generation = guard.generation.wrapping_add(1);
        if !guard.ids.contains(id) {
            return false;
        }
        let mut next = (*guard.ids).clone();
        next.remove(id);
        guard.ids = Arc::new(next);
        guard.changes = guard.changes.wrapping_add(1);
        true
    }

    /// Whether `id` is disabled, by configuration or at runtime.
    pub fn is_disabled(&self, id: &SpiffeId) -> bool {
        self.runtime().contains(id) || self.current().by_id.get(id).is_some_and(|(i, _)| i.disabled)
    }

    /// The enabled identity registered as `id`.
    pub fn lookup(&self, id: &SpiffeId) -> Result<Identity, IdentityError> {
        match self.current().by_id.get(id) {
            None => Err(IdentityError::Unknown(id.clone())),
            Some((identity, _)) if identity.disabled || self.runtime().contains(id) => {
                Err(IdentityError::Disabled(id.clone()))
            }
            Some((identity, _)) => Ok(identity.clone()),
        }
    }

    /// The keys `id` signs OAuth client assertions with, if it is
    /// registered, enabled and has any (`private_key_jwt`).
    pub fn client_keys(&self, id: &SpiffeId) -> Option<ClientKeys> {
        if self.is_disabled(id) {
            return None;
        }
        self.current()
            .by_id
            .get(id)
            .and_then(|(_, rules)| rules.client_keys.clone())
    }

    /// The enabled identity registered as `id`, if it may attest by `method`.
    pub fn lookup_for(&self, id: &SpiffeId, method: AttestationMethod) -> Result<Identity, IdentityError> {
        let entries = self.current();
        match entries.by_id.get(id) {
            None => Err(IdentityError::Unknown(id.clone())),
            Some((identity, _)) if identity.disabled || self.runtime().contains(id) => {
                Err(IdentityError::Disabled(id.clone()))
            }
            Some((_, rules)) if !rules.methods.contains(&method) => {
                Err(IdentityError::MethodNotAllowed { id: id.clone(), method })
            }
            Some((identity, _)) => Ok(identity.clone()),
        }
    }

    /// The identity whose `unix` selectors `peer` matches. Exactly one
    /// registered identity (enabled or not) may match: none is
    /// [`IdentityError::Refused`], several are refused as ambiguous rather
    /// than picking one.
    pub fn match_unix(&self, peer: &crate::attestation::UnixPeer) -> Result<SpiffeId, IdentityError> {
        let entries = self.current();
        let mut matched = entries
            .by_id
            .values()
            .filter(|(_, rules)| rules.unix.as_ref().is_some_and(|sel| sel.matches(peer)))
            .map(|(identity, _)| identity.id.clone());
        let first = matched
            .next()
            .ok_or_else(|| IdentityError::Refused(format!("no identity matches unix peer {}", peer.describe())))?;
        if matched.next().is_some() {
            return Err(IdentityError::Refused(format!(
                "more than one identity matches unix peer {}",
                peer.describe()
            )));
        }
        Ok(first)
    }

    /// Whether `id` is registered (enabled or not).
    pub fn contains(&self, id: &SpiffeId) -> bool {
        self.current().by_id.contains_key(id)
    }

    /// The registered identities (enabled or not) whose owner is `owner`.
    pub fn owned_by(&self, owner: &str) -> BTreeSet<SpiffeId> {
        self.current()
            .by_id
            .values()
            .filter(|(i, _)| i.owner == owner)
            .map(|(i, _)| i.id.clone())
            .collect()
    }

    /// Every registered identity (enabled or not; `disabled` counts runtime
    /// disables too), ordered by id.
    pub fn identities(&self) -> Vec<Identity> {
        let runtime = self.runtime();
        let mut all: Vec<Identity> = self
            .current()
            .by_id
            .values()
            .map(|(i, _)| Identity {
                disabled: i.disabled || runtime.contains(&i.id),
                ..i.clone()
            })
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// Number of registered identities.
    pub fn len(&self) -> usize {
        self.current().by_id.len()
    }

    /// Whether no identity is registered.
    pub fn is_empty(&self) -> bool {
        self.current().by_id.is_empty()
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttestationMethod {
    /// An X.509-SVID presented over mTLS.
    X509,
    /// A JWT from a configured OIDC issuer (Kubernetes, CI, JWT-SVID).
    Jwt,
    /// The kernel's peer credentials on the Unix-socket listener.
    Unix,
    /// An OAuth client assertion (RFC 7523 section 2.2, `private_key_jwt`)
    /// signed by a key registered for the identity (`client_jwks_file`).
    #[serde(rename = "private_key_jwt")]
    PrivateKeyJwt,
}

impl AttestationMethod {
    /// The method's name in config and audit: `x509`, `jwt`, `unix`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::X509 => "x509",
            Self::Jwt => "jwt",
            Self::Unix => "unix",
            Self::PrivateKeyJwt => "private_key_jwt",
        }
    }
}

impl fmt::Display for AttestationMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AttestationMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "x509" => Ok(Self::X509),
            "jwt" => Ok(Self::Jwt),
            "unix" => Ok(Self::Unix),
            "private_key_jwt" => Ok(Self::PrivateKeyJwt),
            other => Err(format!("`{other}` is not one of x509, jwt, unix, private_key_jwt")),
        }
    }
}

impl VerifiedIdentity {
    /// Binds a registry entry to verified evidence. `evidence` is a digest of
    /// the evidence (e.g. `sha256:` of the leaf certificate), never a secret.
    /// Refused when the identity is unknown, disabled, or may not attest by
    /// `method`.
    pub fn attested(
        registry: &IdentityRegistry,
        id: &SpiffeId,
        method: AttestationMethod,
        evidence: String,
    ) -> Result<Self, IdentityError> {
        let identity = registry.lookup_for(id, method)?;
        Ok(Self {
            identity,
            method,
            evidence,
        })
    }

    /// The holder of a live token this broker minted, standing in as the
    /// principal of a decision taken on its behalf: another agent exchanging
    /// the holder's token (RFC 8693), so that policy judges the delegation
    /// exactly as if the holder had asked. `grant_id` names the token (the
    /// evidence); the method is the first its entry allows. Refused when the
    /// identity is unknown or disabled.
    pub fn token_holder(registry: &IdentityRegistry, id: &SpiffeId, grant_id: &str) -> Result<Self, IdentityError> {
        let identity = registry.lookup(id)?;
        let entries = registry.current();
        let method = entries
            .by_id
            .get(id)
            .and_then(|(_, rules)| rules.methods.iter().next().copied())
            .unwrap_or(AttestationMethod::X509);
        Ok(Self {
            identity,
            method,
            evidence: format!("token:{grant_id}"),
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

    #[test]
    fn a_runtime_disable_holds_for_every_clone_and_survives_a_reload() {
        let registry = IdentityRegistry::new([identity("spiffe://td/a", false), identity("spiffe://td/b", true)]);
        let reloader = registry.clone();
        let a = SpiffeId::parse("spiffe://td/a").unwrap();
        let b = SpiffeId::parse("spiffe://td/b").unwrap();
        assert!(registry.disable_at_runtime(&a));
        assert!(!registry.disable_at_runtime(&a), "already disabled");
        assert_eq!(reloader.lookup(&a), Err(IdentityError::Disabled(a.clone())));
        assert!(VerifiedIdentity::attested(&reloader, &a, AttestationMethod::X509, "x".into()).is_err());
        assert!(reloader.identities().iter().all(|i| i.disabled));
        // A configuration reload replaces the entries, not the runtime set.
        reloader.replace(&IdentityRegistry::new([identity("spiffe://td/a", false)]));
        assert!(registry.is_disabled(&a));
        assert!(registry.lookup(&a).is_err());
        // Enabling lifts the runtime disable only; a configured one stays.
        assert!(registry.enable_at_runtime(&a));
        assert!(
            !registry.enable_at_runtime(&b),
            "b was disabled by configuration, not at runtime"
        );
        assert!(registry.lookup(&a).is_ok());
        let generation = registry.runtime_generation();
        assert!(registry.set_runtime_disabled(BTreeSet::from([a.clone()]), generation));
        assert!(reloader.lookup(&a).is_err());
        assert!(registry.set_runtime_disabled(BTreeSet::new(), generation));
        assert!(reloader.lookup(&a).is_ok());
        // A refresh read before a local disable does not undo it.
        let stale = registry.runtime_generation();
        registry.disable_at_runtime(&a);
        assert!(!registry.set_runtime_disabled(BTreeSet::new(), stale));
        assert!(registry.lookup(&a).is_err());
    }

    #[test]
    fn a_method_the_entry_does_not_allow_is_refused() {
        let jwt_only = AttestationRules {
            methods: BTreeSet::from([AttestationMethod::Jwt]),
            unix: None,
            client_keys: None,
        };
        let registry = IdentityRegistry::with_rules([
            (identity("spiffe://td/default", false), AttestationRules::default()),
            (identity("spiffe://td/ci", false), jwt_only),
        ]);
        let default = SpiffeId::parse("spiffe://td/default").unwrap();
        let ci = SpiffeId::parse("spiffe://td/ci").unwrap();
        let ok = VerifiedIdentity::attested(&registry, &default, AttestationMethod::X509, "d".into()).unwrap();
        assert_eq!(ok.method(), AttestationMethod::X509);
        assert_eq!(
            VerifiedIdentity::attested(&registry, &default, AttestationMethod::Jwt, "d".into()).unwrap_err(),
            IdentityError::MethodNotAllowed {
                id: default.clone(),
                method: AttestationMethod::Jwt
            }
        );
        assert!(VerifiedIdentity::attested(&registry, &ci, AttestationMethod::Jwt, "d".into()).is_ok());
        for method in [AttestationMethod::X509, AttestationMethod::Unix] {
            assert!(matches!(
                VerifiedIdentity::attested(&registry, &ci, method, "d".into()),
                Err(IdentityError::MethodNotAllowed { .. })
            ));
        }
    }

    #[test]
    fn replacing_a_registry_is_seen_by_every_clone() {
        let registry = IdentityRegistry::new([identity("spiffe://td/a", false)]);
        let held_by_broker = registry.clone();
        let a = SpiffeId::parse("spiffe://td/a").unwrap();
        assert!(held_by_broker.lookup(&a).is_ok());
        registry.replace(&IdentityRegistry::new([identity("spiffe://td/a", true)]));
        assert_eq!(held_by_broker.lookup(&a), Err(IdentityError::Disabled(a.clone())));
        registry.replace(&IdentityRegistry::default());
        assert_eq!(held_by_broker.lookup(&a), Err(IdentityError::Unknown(a.clone())));
        assert!(held_by_broker.is_empty());
    }

    #[test]
    fn methods_parse_by_their_config_names() {
        for m in [AttestationMethod::X509, AttestationMethod::Jwt, AttestationMethod::Unix] {
            assert_eq!(m.as_str().parse::<AttestationMethod>(), Ok(m));
        }
        assert!("X509".parse::<AttestationMethod>().is_err());
        assert!("mtls".parse::<AttestationMethod>().is_err());
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
