//! A broker for unit tests, with no network and no `tesserad`: the
//! in-memory store, a fixed clock, the baseline policy, and an audit sink
//! that keeps its records in memory (or refuses them, to show that nothing
//! happens without its record).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test fixture")]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tessera_core::anomaly::AnomalyRule;
use tessera_core::audit::{AuditEvent, AuditKind};
use tessera_core::catalog::{Api, ApiCatalog};
use tessera_core::clock::FixedClock;
use tessera_core::identity::{
    AttestationMethod, Identity, IdentityKind, IdentityRegistry, Role, SpiffeId, VerifiedIdentity,
};
use tessera_core::issuance::TokenRequest;
use tessera_core::orchestration::{StartTask, TaskLifetime, TaskLimits};
use tessera_core::task::{Audience, Scope, ScopeCeiling, ScopeClass, Task, TaskId};
use tessera_core::token::{Algorithm, SigningKey};
use tessera_core::ttl::{Ttl, TtlLimits};
use tessera_store::{GrantStore, MemoryStore};

use super::{AuditSink, BindingAsk, Broker, BrokerSettings, Issued, TokenAsk, TokenOutcome};
use crate::audit::{AuditError, Sink};

/// The agent every fixture task names.
pub(crate) const AGENT: &str = "spiffe://td/agent";
/// A second agent of the same tasks.
pub(crate) const AGENT2: &str = "spiffe://td/agent2";
/// An agent of kind `service` (longer kind cap than agents); in no task
/// unless a test adds it.
pub(crate) const SERVICE_AGENT: &str = "spiffe://td/svc-agent";
/// An agent that also serves `crm` (listed in its `verifiers`); in no task
/// unless a test adds it.
pub(crate) const AGENT_SERVING_CRM: &str = "spiffe://td/agent-crm";
/// Starts tasks.
pub(crate) const ORCHESTRATOR: &str = "spiffe://td/orchestrator";
/// Revokes, lists and decides.
pub(crate) const OPERATOR: &str = "spiffe://td/operator";
/// Introspects and reports misuse; serves `crm`.
pub(crate) const VERIFIER: &str = "spiffe://td/verifier";
/// A verifier that serves no API of the fixture.
pub(crate) const VERIFIER2: &str = "spiffe://td/verifier2";
/// The fixture API.
pub(crate) const CRM: &str = "crm";

/// An audit sink in memory; [`MemoryAudit::fail`] makes it refuse records.
#[derive(Debug, Default)]
pub(crate) struct MemoryAudit {
    records: std::sync::Mutex<Vec<AuditEvent>>,
    failing: AtomicBool,
}

impl MemoryAudit {
    /// From now on, every record is refused (`fail(false)` heals it).
    pub(crate) fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// Every record written so far.
    pub(crate) fn records(&self) -> Vec<AuditEvent> {
        self.records.lock().unwrap().clone()
    }

    /// The records of `kind`.
    pub(crate) fn of(&self, kind: AuditKind) -> Vec<AuditEvent> {
        self.records().into_iter().filter(|e| e.event == kind).collect()
    }

    /// The last record written.
    pub(crate) fn last(&self) -> AuditEvent {
        self.records().pop().expect("no audit record written")
    }
}

#[async_trait::async_trait]
impl AuditSink for MemoryAudit {
    async fn record(&self, event: AuditEvent) -> Result<(), AuditError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(AuditError::Stopped {
                sink: Sink::Stream("test".into()),
            });
        }
        self.records.lock().unwrap().push(event);
        Ok(())
    }
}

/// A broker and the handles a test looks through.
pub(crate) struct Fixture {
    pub(crate) broker: Broker,
    pub(crate) store: Arc<MemoryStore>,
    pub(crate) clock: Arc<FixedClock>,
    pub(crate) audit: Arc<MemoryAudit>,
}

/// 2026-01-01T00:00:00Z: every fixture starts there.
pub(crate) fn start_time() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(1_767_225_600, 0).unwrap()
}

pub(crate) fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

pub(crate) fn scope(s: &str) -> Scope {
    Scope::parse(s).unwrap()
}

fn identity(s: &str, kind: IdentityKind, role: Role) -> Identity {
    Identity {
        id: id(s),
        kind,
        owner: "team".into(),
        max_ttl: Ttl::from_secs(3600).unwrap(),
        roles: BTreeSet::from([role]),
        disabled: false,
    }
}

/// The settings every fixture runs with; `anomaly` is off.
pub(crate) fn settings() -> BrokerSettings {
    BrokerSettings {
        issuer: "https://tessera.test".into(),
        instance_id: "test-1".into(),
        trust_domain: "td".into(),
        ttl: TtlLimits {
            default: Ttl::from_secs(300).unwrap(),
            max: Ttl::from_secs(3600).unwrap(),
        },
        tasks: TaskLimits::default(),
        leeway_secs: 0,
        anomaly: None,
        policy: super::policy::PolicySetup::baseline().unwrap(),
        binding: super::BindingSettings::default(),
        risk: tessera_core::risk::RiskLimits::default(),
        approvals: super::ApprovalSettings::default(),
        disable_settle: std::time::Duration::from_secs(3600),
    }
}

impl Fixture {
    /// The default fixture.
    pub(crate) async fn new() -> Self {
        Self::with(settings()).await
    }

    /// A fixture with anomaly rules: `denials` within a minute quarantine
    /// for an hour.
    pub(crate) async fn with_anomaly(denials: u32) -> Self {
        let mut s = settings();
        s.anomaly = Some(AnomalyRule {
            denials,
            within: chrono::Duration::seconds(60),
            quarantine: chrono::Duration::hours(1),
        });
        Self::with(s).await
    }

    /// A fixture whose broker serves the operator console.
    pub(crate) async fn with_console(console: crate::broker::console::ConsoleSettings) -> Self {
        let mut f = Self::with(settings()).await;
        f.broker = f.broker.with_console(Some(console));
        f
    }

    /// A fixture whose broker answers Introspect from its revocation-feed
    /// follower (bound one second), stepped by hand: [`Fixture::follow`].
    pub(crate) async fn with_follower() -> Self {
        let mut f = Self::with(settings()).await;
        f.broker = f.broker.with_introspection_follower(std::time::Duration::from_secs(1));
        f
    }

    /// One step of the broker's feed follower (no waiting).
    pub(crate) async fn follow(&self, position: &mut Option<tessera_store::FeedPosition>) {
        self.broker.follow_once(position).await.unwrap();
    }

    /// A fixture with `settings`.
    pub(crate) async fn with(settings: BrokerSettings) -> Self {
        Self::with_store(settings, |store| store).await
    }

    /// A fixture whose broker sees the memory store through `wrap` (e.g. a
    /// store that does something else at the same time as a write);
    /// [`Fixture::store`] is the memory store underneath.
    pub(crate) async fn with_store(
        settings: BrokerSettings,
        wrap: impl FnOnce(Arc<MemoryStore>) -> Arc<dyn GrantStore>,
    ) -> Self {
        let registry = IdentityRegistry::new([
            identity(AGENT, IdentityKind::Agent, Role::Agent),
            identity(AGENT2, IdentityKind::Agent, Role::Agent),
            identity(SERVICE_AGENT, IdentityKind::Service, Role::Agent),
            identity(AGENT_SERVING_CRM, IdentityKind::Agent, Role::Agent),
            identity(ORCHESTRATOR, IdentityKind::Service, Role::Orchestrator),
            identity(OPERATOR, IdentityKind::Human, Role::Operator),
            identity(VERIFIER, IdentityKind::Service, Role::Verifier),
            identity(VERIFIER2, IdentityKind::Service, Role::Verifier),
        ]);
        let catalog = ApiCatalog::new([Api {
            audience: Audience::parse(CRM).unwrap(),
            schema_version: "1".into(),
            scopes: BTreeMap::from([
                (scope("contacts.read"), ScopeClass::Read),
                (scope("notes.read"), ScopeClass::Read),
                (scope("contacts.write"), ScopeClass::Write),
                (scope("payments.send"), ScopeClass::Write),
            ]),
            high_impact: BTreeSet::from([scope("payments.send")]),
            verifiers: BTreeSet::from([id(VERIFIER), id(AGENT_SERVING_CRM)]),
        }]);
        let store = Arc::new(MemoryStore::default());
        let clock = Arc::new(FixedClock::at(start_time()));
        let audit = Arc::new(MemoryAudit::default());
        let broker = Broker::start(
            wrap(store.clone()),
            registry,
            catalog,
            SigningKey::generate(Algorithm::Es256).unwrap(),
            clock.clone(),
            settings,
            audit.clone(),
        )
        .await
        .unwrap();
        Self {
            broker,
            store,
            clock,
            audit,
        }
    }

    /// `s` attested by an X.509-SVID.
    pub(crate) fn who(&self, s: &str) -> VerifiedIdentity {
        let evidence = tessera_core::hex::sha256(s.as_bytes());
        self.broker
            .attest_by(&id(s), AttestationMethod::X509, evidence)
            .unwrap()
    }

    /// Starts task `task` as the orchestrator (see [`Fixture::start`]).
    pub(crate) async fn task(&self, task: &str) -> Task {
        self.broker
            .start_task(&self.who(ORCHESTRATOR), self.start(task))
            .await
            .unwrap()
    }

    /// A StartTask for `task`: one hour, both agents, every `crm` scope.
    pub(crate) fn start(&self, task: &str) -> StartTask {
        StartTask {
            tools: Vec::new(),
            task_id: TaskId::parse(task).unwrap(),
            agents: BTreeSet::from([id(AGENT), id(AGENT2)]),
            ceiling: ScopeCeiling(BTreeMap::from([(
                Audience::parse(CRM).unwrap(),
                BTreeSet::from([
                    scope("contacts.read"),
                    scope("notes.read"),
                    scope("contacts.write"),
                    scope("payments.send"),
                ]),
            )])),
            lifetime: TaskLifetime::Duration(chrono::Duration::hours(1)),
            labels: BTreeMap::new(),
            parent: None,
        }
    }

    /// A bearer request for `scopes` of `crm` in `task`.
    pub(crate) fn ask(&self, task: &str, scopes: &[&str]) -> TokenAsk {
        TokenAsk {
            request: TokenRequest {
                tools: None,
                task_id: TaskId::parse(task).unwrap(),
                audience: Audience::parse(CRM).unwrap(),
                scopes: scopes.iter().map(|s| scope(s)).collect(),
                ttl: None,
                binding: None,
            },
            binding: BindingAsk::Bearer,
        }
    }

    /// A token for `AGENT` (bearer, default lifetime) for `scopes` of `crm`.
    pub(crate) async fn issue(&self, task: &str, scopes: &[&str]) -> Issued {
        match self
            .broker
            .request_token(&self.who(AGENT), self.ask(task, scopes))
            .await
            .unwrap()
        {
            TokenOutcome::Issued(issued) => issued,
            TokenOutcome::Pending(approval) => panic!("approval {} pending, a token expected", approval.id),
        }
    }

    /// Live grants of `task` now.
    pub(crate) async fn live(&self, task: &str) -> u64 {
        self.store
            .live_grants(&TaskId::parse(task).unwrap(), self.broker.now())
            .await
            .unwrap()
    }
}
