//! Times one policy decision on the mint path: the shipped baseline deciding
//! a RequestToken (building the Cedar context included).
//!
//! ```text
//! cargo run --release -p tessera-core --example policy_decision [ITERATIONS]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a measuring tool")]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use tessera_core::catalog::{Api, ApiCatalog};
use tessera_core::identity::{
    AttestationMethod, Identity, IdentityKind, IdentityRegistry, Role, SpiffeId, VerifiedIdentity,
};
use tessera_core::policy::{PolicyEngine, PolicyEntities, PolicyQuery, TokenAction, TokenFacts};
use tessera_core::task::{Audience, Scope, ScopeCeiling, ScopeClass, Task, TaskId, TaskState};
use tessera_core::ttl::Ttl;

fn main() {
    let iterations: u32 = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(20_000);
    let agent = SpiffeId::parse("spiffe://example.org/agent/researcher").unwrap();
    let orchestrator = SpiffeId::parse("spiffe://example.org/orchestrator").unwrap();
    let identity = |id: &SpiffeId, kind, role| Identity {
        id: id.clone(),
        kind,
        owner: "team-research".into(),
        max_ttl: Ttl::from_secs(600).unwrap(),
        roles: BTreeSet::from([role]),
        disabled: false,
    };
    let registry = IdentityRegistry::new([
        identity(&agent, IdentityKind::Agent, Role::Agent),
        identity(&orchestrator, IdentityKind::Service, Role::Orchestrator),
    ]);
    let audience = Audience::parse("https://api.example.com/crm").unwrap();
    let read = Scope::parse("crm.contacts.read").unwrap();
    let catalog = ApiCatalog::new([Api {
        audience: audience.clone(),
        schema_version: "2026-01".into(),
        scopes: BTreeMap::from([(read.clone(), ScopeClass::Read)]),
        high_impact: Default::default(),
        verifiers: BTreeSet::new(),
    }]);
    let now = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    let task = Task {
        tools: Vec::new(),
        id: TaskId::parse("demo").unwrap(),
        orchestrator,
        agents: BTreeSet::from([agent.clone()]),
        ceiling: ScopeCeiling(BTreeMap::from([(audience.clone(), BTreeSet::from([read.clone()]))])),
        deadline: now + chrono::Duration::minutes(15),
        labels: BTreeMap::from([("ticket".into(), "SEC-1".into())]),
        parent: None,
        state: TaskState::Active,
        created_at: now,
        ended_at: None,
    };
    let engine = PolicyEngine::baseline().unwrap();
    let entities = PolicyEntities::new(&registry, &catalog).unwrap();
    let who = VerifiedIdentity::attested(&registry, &agent, AttestationMethod::X509, "sha256:x".into()).unwrap();
    let scopes = BTreeSet::from([read]);
    let query = PolicyQuery::Token {
        action: TokenAction::Request,
        task: &task,
        facts: TokenFacts {
            tools: None,
            audience: &audience,
            scopes: &scopes,
            class: ScopeClass::Read,
            high_impact: false,
            requested_ttl: Ttl::from_secs(300).unwrap(),
            delegation: None,
            blast_radius: None,
            requester: None,
        },
    };
    assert!(engine.authorize(&entities, &who, &query, now).unwrap().is_allow());
    let started = Instant::now();
    for _ in 0..iterations {
        let decision = engine.authorize(&entities, &who, &query, now).unwrap();
        std::hint::black_box(decision);
    }
    let per = started.elapsed() / iterations;
    println!(
        "policy decision (baseline, {} policies, RequestToken): {:.1} µs per decision over {iterations} runs",
        engine.len(),
        per.as_secs_f64() * 1e6
    );
}
