//! Identities of every kind, a catalog with every class, one task.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, Utc};

use crate::catalog::{Api, ApiCatalog};
use crate::identity::{AttestationMethod, Identity, IdentityKind, IdentityRegistry, Role, SpiffeId, VerifiedIdentity};
use crate::policy::{PolicyEntities, TokenFacts};
use crate::task::{Audience, Scope, ScopeCeiling, ScopeClass, Task, TaskId, TaskState};
use crate::ttl::Ttl;

pub(super) const TD: &str = "spiffe://td";

/// (name, kind, owner, roles)
pub(super) const PEOPLE: &[(&str, IdentityKind, &str, &[Role])] = &[
    ("agent", IdentityKind::Agent, "team-a", &[Role::Agent]),
    ("agent2", IdentityKind::Agent, "team-a", &[Role::Agent]),
    ("service", IdentityKind::Service, "team-a", &[Role::Agent]),
    ("partner", IdentityKind::Partner, "team-a", &[Role::Agent]),
    ("human", IdentityKind::Human, "team-a", &[Role::Agent]),
    ("norole", IdentityKind::Agent, "team-a", &[]),
    ("orchestrator", IdentityKind::Service, "team-a", &[Role::Orchestrator]),
    (
        "other-orchestrator",
        IdentityKind::Service,
        "team-b",
        &[Role::Orchestrator],
    ),
    ("operator", IdentityKind::Human, "security", &[Role::Operator]),
    ("operator2", IdentityKind::Human, "security", &[Role::Operator]),
    ("agent-operator", IdentityKind::Agent, "security", &[Role::Operator]),
    ("verifier", IdentityKind::Service, "team-a", &[Role::Verifier]),
];

pub(super) fn id(name: &str) -> SpiffeId {
    SpiffeId::parse(&format!("{TD}/{name}")).unwrap()
}

pub(super) fn registry() -> IdentityRegistry {
    IdentityRegistry::new(PEOPLE.iter().map(|(name, kind, owner, roles)| Identity {
        id: id(name),
        kind: *kind,
        owner: (*owner).to_owned(),
        max_ttl: Ttl::from_secs(3600).unwrap(),
        roles: roles.iter().copied().collect(),
        disabled: false,
    }))
}

pub(super) fn who(name: &str) -> VerifiedIdentity {
    VerifiedIdentity::attested(&registry(), &id(name), AttestationMethod::X509, "sha256:x".into()).unwrap()
}

pub(super) fn aud() -> Audience {
    Audience::parse("crm").unwrap()
}

pub(super) fn catalog() -> ApiCatalog {
    ApiCatalog::new([Api {
        audience: aud(),
        schema_version: "1".into(),
        scopes: BTreeMap::from([
            (Scope::parse("list").unwrap(), ScopeClass::Discover),
            (Scope::parse("read").unwrap(), ScopeClass::Read),
            (Scope::parse("write").unwrap(), ScopeClass::Write),
            (Scope::parse("admin").unwrap(), ScopeClass::Admin),
        ]),
        high_impact: Default::default(),
        verifiers: BTreeSet::new(),
    }])
}

pub(super) fn entities() -> PolicyEntities {
    PolicyEntities::new(&registry(), &catalog()).unwrap()
}

pub(super) fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

/// A task of `orchestrator` for the token-holding identities.
pub(super) fn task() -> Task {
    Task {
        tools: Vec::new(),
        id: TaskId::parse("t1").unwrap(),
        orchestrator: id("orchestrator"),
        agents: ["agent", "agent2", "service", "partner", "human", "norole"]
            .iter()
            .map(|n| id(n))
            .collect(),
        ceiling: ScopeCeiling::default(),
        deadline: now() + Duration::hours(1),
        labels: BTreeMap::from([("env".into(), "prod".into())]),
        parent: None,
        state: TaskState::Active,
        created_at: now(),
        ended_at: None,
    }
}

pub(super) fn scope_of(class: ScopeClass) -> BTreeSet<Scope> {
    let name = match class {
        ScopeClass::Discover => "list",
        ScopeClass::Read => "read",
        ScopeClass::Write => "write",
        ScopeClass::Admin => "admin",
    };
    BTreeSet::from([Scope::parse(name).unwrap()])
}

/// Facts of a plain token request (no delegation, no requester).
pub(super) fn facts<'a>(
    audience: &'a Audience,
    scopes: &'a BTreeSet<Scope>,
    class: ScopeClass,
    high_impact: bool,
) -> TokenFacts<'a> {
    TokenFacts {
        tools: None,
        audience,
        scopes,
        class,
        high_impact,
        requested_ttl: Ttl::from_secs(300).unwrap(),
        delegation: None,
        blast_radius: None,
        requester: None,
    }
}
