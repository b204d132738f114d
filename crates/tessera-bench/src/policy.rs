//! The cost of the Cedar decision on the mint path: the shipped baseline
//! policy set (what `tesserad` runs unless `[policy] dir` says otherwise),
//! asked the question a RequestToken asks, on one core.
//!
//! The decision is what `Broker::authorize` calls per mint (`entities` are
//! built once per registry and catalog version, so they are built once
//! here too); the figure is reported beside the CPU per mint.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use tessera_core::catalog::{Api, ApiCatalog};
use tessera_core::identity::{
    AttestationMethod, Identity, IdentityKind, IdentityRegistry, Role, SpiffeId, VerifiedIdentity,
};
use tessera_core::policy::{PolicyDecision, PolicyEngine, PolicyEntities, PolicyQuery, TokenAction, TokenFacts};
use tessera_core::task::{Audience, Scope, ScopeCeiling, ScopeClass, Task, TaskId, TaskState};
use tessera_core::ttl::Ttl;

use crate::limits::{PerCore, per_core};

const TD: &str = "spiffe://tessera.local";

fn id(path: &str) -> anyhow::Result<SpiffeId> {
    SpiffeId::parse(&format!("{TD}/{path}")).map_err(|e| anyhow::anyhow!("{path}: {e}"))
}

fn identity(path: &str, kind: IdentityKind, role: Role) -> anyhow::Result<Identity> {
    Ok(Identity {
        id: id(path)?,
        kind,
        owner: "research".into(),
        max_ttl: Ttl::from_secs(600).map_err(|e| anyhow::anyhow!("{e}"))?,
        roles: BTreeSet::from([role]),
        disabled: false,
    })
}

/// Baseline decisions per second on one core, each a RequestToken for a
/// read scope by an agent of the task (an allow, as on the mint load).
pub fn decision_rate(each: Duration) -> anyhow::Result<PerCore> {
    let engine = PolicyEngine::baseline().context("the baseline policy set does not load")?;
    let registry = IdentityRegistry::new([
        identity("agent/researcher", IdentityKind::Agent, Role::Agent)?,
        identity("agent/writer", IdentityKind::Agent, Role::Agent)?,
        identity("service/orchestrator", IdentityKind::Service, Role::Orchestrator)?,
        identity("human/alice", IdentityKind::Human, Role::Operator)?,
    ]);
    let audience = Audience::parse(crate::tessera::CRM).map_err(|e| anyhow::anyhow!("{e}"))?;
    let scope = |s: &str| Scope::parse(s).map_err(|e| anyhow::anyhow!("{s}: {e}"));
    let read = scope(crate::tessera::SCOPE)?;
    let catalog = ApiCatalog::new([Api {
        audience: audience.clone(),
        schema_version: "1".into(),
        scopes: BTreeMap::from([
            (scope("crm.contacts.list")?, ScopeClass::Discover),
            (read.clone(), ScopeClass::Read),
            (scope("crm.notes.read")?, ScopeClass::Read),
            (scope("crm.contacts.write")?, ScopeClass::Write),
        ]),
        high_impact: BTreeSet::new(),
        verifiers: BTreeSet::new(),
    }]);
    let entities = PolicyEntities::new(&registry, &catalog).map_err(|e| anyhow::anyhow!("entities: {e}"))?;
    let researcher = id("agent/researcher")?;
    let who = VerifiedIdentity::attested(&registry, &researcher, AttestationMethod::X509, "sha256:bench".into())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let now: DateTime<Utc> = DateTime::from_timestamp(1_800_000_000, 0).context("time")?;
    let task = Task {
        tools: Vec::new(),
        id: TaskId::parse("bench").map_err(|e| anyhow::anyhow!("{e}"))?,
        orchestrator: id("service/orchestrator")?,
        agents: BTreeSet::from([researcher, id("agent/writer")?]),
        ceiling: ScopeCeiling(BTreeMap::from([(audience.clone(), BTreeSet::from([read.clone()]))])),
        deadline: now + chrono::Duration::hours(1),
        labels: BTreeMap::new(),
        parent: None,
        state: TaskState::Active,
        created_at: now,
        ended_at: None,
    };
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
            requested_ttl: Ttl::from_secs(300).map_err(|e| anyhow::anyhow!("{e}"))?,
            delegation: None,
            blast_radius: Some(10),
            requester: None,
        },
    };
    match engine.authorize(&entities, &who, &query, now) {
        Ok(PolicyDecision::Allow { .. }) => {}
        other => anyhow::bail!("the baseline does not allow the mint load's request: {other:?}"),
    }
    per_core(each, || match engine.authorize(&entities, &who, &query, now) {
        Ok(PolicyDecision::Allow { .. }) => Ok(()),
        other => anyhow::bail!("the decision changed: {other:?}"),
    })
}
