//! The broker's use cases: each one attests nothing and parses nothing (the
//! gRPC edge did both), asks core for the decision, applies it to the store,
//! and records the outcome in the audit trail. Tokens and keys never reach a
//! log line or an audit record.
//!
//! Audit fails closed: a success is returned only once its record is written
//! (a token whose record cannot be written is revoked again and never handed
//! out), and a refusal whose record cannot be written becomes UNAVAILABLE.
//!
//! This file holds the [`Broker`] type, its settings and its wiring; each use
//! case lives in a file of its own under `broker/`.

mod anomaly;
mod approvals;
mod attestation;
pub mod console;
mod delegation;
mod error;
mod follower;
mod grants;
mod identities;
mod keys;
pub mod oauth;
pub mod policy;
mod pop;
mod record;
mod tasks;
#[cfg(test)]
mod testing;
mod tokens;
mod verifier;

use std::sync::Arc;

pub use self::approvals::{ApprovalNotifier, ApprovalSettings, AwaitStep, TokenOutcome};
pub use self::delegation::{BindingSettings, Offer};
pub use self::error::BrokerError;
pub use self::grants::GrantQuery;
pub use self::identities::IdentityRevoked;
pub use self::keys::{KeyState, KeyStatus, PublishedKeys};
pub use self::pop::{BindingAsk, REDEEM_DELEGATION_HTU, REQUEST_TOKEN_HTU};
pub use self::record::AuditSink;
pub use self::tokens::{Issued, TokenAsk};

use tessera_core::anomaly::AnomalyRule;
use tessera_core::audit::{AuditKind, Outcome};
use tessera_core::catalog::ApiCatalog;
use tessera_core::clock::Clock;
use tessera_core::identity::IdentityRegistry;
use tessera_core::orchestration::TaskLimits;
use tessera_core::token::SigningKey;
use tessera_core::ttl::TtlLimits;
use tessera_store::{GrantStore, PublishedKey, StoreError};

use self::anomaly::Anomaly;

/// A request field as the edge parsed it, or the field that could not be
/// parsed. Admin use cases take their input this way so that they authorize
/// the caller first: a caller without the right is refused (and audited)
/// whatever it sent, and only an allowed caller hears that a field is
/// malformed.
pub type Asked<T> = Result<T, crate::status::FieldError>;

/// Limits and names the broker runs with.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// `iss` of every token.
    pub issuer: String,
    /// The replica's name in logs.
    pub instance_id: String,
    /// The trust domain attested callers must belong to.
    pub trust_domain: String,
    /// Token lifetime bounds.
    pub ttl: TtlLimits,
    /// Task bounds.
    pub tasks: TaskLimits,
    /// Clock skew tolerated when verifying tokens, in seconds.
    pub leeway_secs: i64,
    /// Anomaly revocation: quarantine an identity denied too often (`None`: off).
    pub anomaly: Option<AnomalyRule>,
    /// The policy set to start with, and where reloads read it.
    pub policy: policy::PolicySetup,
    /// Delegation depth and which classes must be bound (`[delegation]`, `[tokens] bound_classes`).
    pub binding: BindingSettings,
    /// Lifetime caps per class and kind, and the blast-radius cap.
    pub risk: tessera_core::risk::RiskLimits,
    /// How approvals wait.
    pub approvals: ApprovalSettings,
    /// After an identity is disabled, when to sweep its grants again: once
    /// every replica has read the disable and every request attested before
    /// it has ended (`attestation.reload_interval` + the longer of
    /// `server.request_timeout` and `oauth.request_timeout` + 1 s).
    pub disable_settle: std::time::Duration,
}

/// The broker: state, rules and the signing key, shared by every RPC.
pub struct Broker {
    store: Arc<dyn GrantStore>,
    registry: IdentityRegistry,
    catalog: ApiCatalog,
    /// The current signing key; replaced whole by a rotation.
    signer: std::sync::RwLock<Arc<SigningKey>>,
    /// Serializes rotations.
    rotating: tokio::sync::Mutex<()>,
    /// The kid of a key published ahead of a scheduled rotation, until it
    /// signs or is superseded (shown as `next` in GetJwks).
    staged: std::sync::Mutex<Option<String>>,
    clock: Arc<dyn Clock>,
    settings: BrokerSettings,
    audit: Arc<dyn AuditSink>,
    /// Single-use proof `jti`s, shared by every replica when the store is.
    replay: Arc<dyn tessera_store::replay::ReplayCache>,
    /// Anomaly revocation state, `None` when the rule is off. Each replica
    /// counts the denials it answers; a quarantine it imposes is written to
    /// the store and read by every replica within one
    /// `attestation.reload_interval` (and by a restarted one at start), and
    /// the grants it revokes are revoked in the shared store.
    anomaly: Option<std::sync::Mutex<Anomaly>>,
    /// When a refused attestation was last audited, per claimed identity (or
    /// certificate): refusals are audited at most once a second each, so a
    /// client with a valid certificate cannot flood the audit trail.
    refusals_audited: std::sync::Mutex<std::collections::HashMap<String, chrono::DateTime<chrono::Utc>>>,
    /// Refusals audited per source address in the current second: a client
    /// minting a fresh certificate (or token) per attempt gets at most
    /// [`REFUSALS_PER_SOURCE`] records a second however many it makes.
    refusal_sources:
        std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, (chrono::DateTime<chrono::Utc>, u32)>>,
    /// Misuse reports per reporter in the current window (see
    /// `verifier.rs`): bounded and de-duplicated.
    misuse_reports:
        std::sync::Mutex<std::collections::HashMap<tessera_core::identity::SpiffeId, verifier::ReportWindow>>,
    /// Whether the last audit record was written: health reports NOT_SERVING
    /// while it was not (every operation would fail UNAVAILABLE anyway).
    audit_ok: std::sync::atomic::AtomicBool,
    /// The Cedar policy in force and the entities it reads.
    policy: policy::PolicyState,
    /// Pending approvals (memory unless [`Broker::with_approval_store`]).
    approvals: approvals::Approvals,
    /// Operator-console sign-in codes and sessions (`None`: the console is off).
    console: Option<console::Console>,
    /// Tasks RequestToken read lately.
    recent_tasks: tasks::RecentTasks,
    /// The revocation-feed follower Introspect answers from (`None`:
    /// `[introspection] max_feed_lag = 0`, every answer reads the store).
    follower: Option<Arc<follower::Follower>>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("signer", &self.signer())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// A broker over `store`, publishing `signer`'s public key before it is used.
    pub async fn start(
        store: Arc<dyn GrantStore>,
        registry: IdentityRegistry,
        catalog: ApiCatalog,
        signer: SigningKey,
        clock: Arc<dyn Clock>,
        settings: BrokerSettings,
        audit: Arc<dyn AuditSink>,
    ) -> Result<Self, BrokerError> {
        let key = PublishedKey {
            jwk: signer.public_jwk().clone(),
            published_at: clock.now(),
            not_after: None,
        };
        store.publish_key(&key).await?;
        tracing::info!(
            kid = signer.kid(),
            alg = signer.algorithm().as_jose(),
            "signing key published"
        );
        let policy = policy::PolicyState::new(settings.policy.clone(), &registry, &catalog)
            .map_err(policy::PolicyRefusal::from)?;
        let broker = Self {
            policy,
            store,
            registry,
            catalog,
            signer: std::sync::RwLock::new(Arc::new(signer)),
            rotating: tokio::sync::Mutex::new(()),
            staged: std::sync::Mutex::new(None),
            replay: Arc::new(tessera_store::replay::MemoryReplayCache::new(1_000_000, clock.clone())),
            clock,
            anomaly: settings.anomaly.map(|rule| std::sync::Mutex::new(Anomaly::new(rule))),
            settings,
            audit,
            refusals_audited: std::sync::Mutex::new(std::collections::HashMap::new()),
            refusal_sources: std::sync::Mutex::new(std::collections::HashMap::new()),
            misuse_reports: std::sync::Mutex::new(std::collections::HashMap::new()),
            audit_ok: std::sync::atomic::AtomicBool::new(true),
            approvals: approvals::Approvals::new(Arc::new(tessera_store::MemoryApprovalStore::default())),
            console: None,
            recent_tasks: tasks::RecentTasks::default(),
            follower: None,
        };
        let mut event = broker.event(AuditKind::KeyPublished, Outcome::Allow, None);
        let signer = broker.signer();
        event.reason = Some(format!("kid {} ({})", signer.kid(), signer.algorithm().as_jose()));
        // A failing sink must not stop the broker from serving keys and health;
        // every operation that needs a record fails closed on its own.
        if let Err(e) = broker.audit(event).await {
            tracing::error!(error = %e, "audit sink failing at start; mints and revocations will fail until it recovers");
        }
        Ok(broker)
    }

    /// Uses `replay` for single-use proof `jti`s (the store's, so that
    /// every replica shares it); the default is this process's memory.
    pub fn with_replay_cache(mut self, replay: Arc<dyn tessera_store::replay::ReplayCache>) -> Self {
        self.replay = replay;
        self
    }

    /// Answers Introspect from a follower of the revocation feed whenever
    /// it has read the feed within `max_lag` (see `broker/follower.rs`);
    /// zero keeps every answer on the store. Revocations this broker makes
    /// are counted from here on, so call it before the broker is shared.
    /// The follower runs once [`Broker::follow_revocations`] is spawned.
    #[must_use]
    pub fn with_introspection_follower(mut self, max_lag: std::time::Duration) -> Self {
        if max_lag.is_zero() {
            return self;
        }
        let follower = Arc::new(follower::Follower::new(max_lag));
        self.store = Arc::new(follower::Marking::new(self.store, follower.clone()));
        self.follower = Some(follower);
        self
    }

    /// The task that follows the revocation feed for Introspect, if the
    /// follower is on: spawn it; it runs until dropped.
    pub fn follow_revocations(&self) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let follower = self.follower.clone()?;
        Some(follower.run(self.store.clone(), self.clock.clone()))
    }

    /// One step of the follower, waiting for nothing (unit tests step it
    /// by hand instead of spawning [`Broker::follow_revocations`]).
    #[cfg(test)]
    pub(crate) async fn follow_once(
        &self,
        position: &mut Option<tessera_store::FeedPosition>,
    ) -> Result<(), StoreError> {
        let Some(follower) = &self.follower else {
            return Ok(());
        };
        follower
            .step(&*self.store, &*self.clock, position, std::time::Duration::ZERO)
            .await
    }

    /// Answers Introspect gave from the follower's memory.
    #[cfg(test)]
    pub(crate) fn answered_from_memory(&self) -> u64 {
        self.follower.as_ref().map_or(0, |f| f.answered())
    }

    /// The trust domain callers must belong to.
    pub fn trust_domain(&self) -> &str {
        &self.settings.trust_domain
    }

    /// Checks the store answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }

    /// The current time on the broker's clock.
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.clock.now()
    }
}
