//! The broker's use cases: each one attests nothing and parses nothing (the
//! gRPC edge did both), asks core for the decision, applies it to the store,
//! and records the outcome in the audit trail. Tokens and keys never reach a
//! log line or an audit record.
//!
//! Audit fails closed: a success is returned only once its record is written
//! (a token whose record cannot be written is revoked again and never handed
//! out), and a refusal whose record cannot be written becomes UNAVAILABLE.

mod approvals;
mod attestation;
pub mod policy;

use std::sync::Arc;
use std::time::Duration;

pub use self::approvals::{ApprovalNotifier, ApprovalSettings, AwaitStep, TokenOutcome};

use tessera_core::ErrorKind;
use tessera_core::anomaly::{AnomalyDetector, AnomalyRule, QuarantineList, Trigger};
use tessera_core::audit::{Actor, AuditEvent, AuditKind, Outcome};
use tessera_core::catalog::ApiCatalog;
use tessera_core::clock::Clock;
use tessera_core::grant::{Grant, GrantId, GrantImpact, GrantState, RandomError};
use tessera_core::identity::{AttestationMethod, IdentityError, IdentityRegistry, SpiffeId, VerifiedIdentity};
use tessera_core::issuance::{self, IssuanceError, TokenRequest};
use tessera_core::orchestration::{self, OrchestrationError, StartTask, TaskLimits};
use tessera_core::policy::{Operation, PolicyQuery, TaskAction};
use tessera_core::task::{Task, TaskError, TaskId, TaskState};
use tessera_core::token::{ACCESS_TOKEN_TYP, AccessClaims, Jwks, JwsError, KeyError, SigningKey};
use tessera_core::ttl::{Ttl, TtlLimits};
use tessera_store::{
    FeedBatch, FeedPosition, GrantFilter, GrantPage, GrantStore, PublishedKey, RevokeOutcome, StoreError, TaskEnded,
};

mod delegation;
mod pop;

pub use delegation::BindingSettings;
pub use pop::{DELEGATE_TOKEN_HTU, REQUEST_TOKEN_HTU};

/// Why a broker operation failed. [`BrokerError::kind`] decides the status code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The caller is not a registered, enabled identity.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// A token request was refused.
    #[error(transparent)]
    Issuance(#[from] IssuanceError),
    /// A task operation was refused.
    #[error(transparent)]
    Orchestration(#[from] OrchestrationError),
    /// The task cannot be acted on.
    #[error(transparent)]
    Task(#[from] TaskError),
    /// The store failed or refused.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No such grant.
    #[error("grant `{0}` not found")]
    GrantNotFound(GrantId),
    /// The caller may not touch this grant.
    #[error("identity `{0}` is not the holder of this grant")]
    NotHolder(String),
    /// Signing failed.
    #[error("signing failed")]
    Signing(#[source] KeyError),
    /// The random source failed.
    #[error(transparent)]
    Random(#[from] RandomError),
    /// The identity named by an operator is not registered.
    #[error("identity `{0}` is not registered")]
    UnknownIdentity(SpiffeId),
    /// No audit record could be written, so the operation does not happen.
    #[error("audit trail unavailable: {0}")]
    Audit(String),
    /// Policy refused, or could not be asked.
    #[error(transparent)]
    Policy(#[from] policy::PolicyRefusal),
    /// A delegation was refused.
    #[error(transparent)]
    Delegation(#[from] tessera_core::delegation::DelegationError),
    /// A proof-of-possession was refused; `field` is the request field.
    #[error("{field}: {source}")]
    Proof {
        /// The request field holding the proof.
        field: &'static str,
        /// Why.
        #[source]
        source: tessera_core::pop::ProofError,
    },
    /// A token of a class that must be bound was asked for without a binding.
    #[error(
        "{field}: {class} tokens are never issued as bearer tokens; send a proof of possession (pop_proof) or, over mTLS, set mtls_binding"
    )]
    Unbound {
        /// The request field that would bind it.
        field: &'static str,
        /// The token's class.
        class: tessera_core::task::ScopeClass,
    },
    /// The binding asked for cannot be made; the message names the field.
    #[error("{0}")]
    Binding(&'static str),
    /// A token in a request field is not a live token of this broker.
    #[error("{0}: not a live token issued by this broker")]
    NotLiveToken(&'static str),
    /// An approval operation was refused (self-approval, not pending,
    /// denied, expired, already redeemed, not the requester's).
    #[error(transparent)]
    Approval(tessera_core::approval::ApprovalError),
    /// The grant's risk is above a cap (`blast_radius_exceeded`).
    #[error(transparent)]
    Risk(tessera_core::risk::RiskError),
    /// The identity tripped an anomaly rule and is refused until `until`.
    #[error("identity `{identity}` is quarantined until {until} (anomaly: {why})")]
    Quarantined {
        /// The identity.
        identity: SpiffeId,
        /// When the quarantine ends.
        until: chrono::DateTime<chrono::Utc>,
        /// The rule that fired, for people.
        why: String,
    },
}

/// Where audit records go: the chained file log in production.
#[async_trait::async_trait]
pub trait AuditSink: Send + Sync {
    /// Writes one record, durably per the sink's policy, within its time bound.
    async fn record(&self, event: AuditEvent) -> Result<(), String>;
}

#[async_trait::async_trait]
impl AuditSink for crate::audit::AuditLog {
    async fn record(&self, event: AuditEvent) -> Result<(), String> {
        crate::audit::AuditLog::record(self, event)
            .await
            .map_err(|e| e.to_string())
    }
}

impl BrokerError {
    /// Transport-free classification.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Identity(e) => e.kind(),
            Self::Issuance(e) => e.kind(),
            Self::Orchestration(e) => e.kind(),
            Self::Task(e) => e.kind(),
            Self::Approval(e) => e.kind(),
            Self::Risk(e) => e.kind(),
            Self::Store(e) => e.kind(),
            Self::Policy(e) => e.kind(),
            Self::GrantNotFound(_) | Self::UnknownIdentity(_) => ErrorKind::NotFound,
            Self::NotHolder(_) | Self::Quarantined { .. } => ErrorKind::PermissionDenied,
            Self::Signing(_) | Self::Random(_) => ErrorKind::Internal,
            Self::Audit(_) => ErrorKind::Unavailable,
            Self::Delegation(e) => e.kind(),
            Self::Proof { source, .. } => source.kind(),
            Self::Unbound { .. } | Self::Binding(_) | Self::NotLiveToken(_) => ErrorKind::InvalidArgument,
        }
    }
}

/// A ListGrants query, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrantQuery {
    /// Filters the store applies.
    pub filter: GrantFilter,
    /// Only grants of identities whose registry owner is this.
    pub owner: Option<String>,
    /// Continue after this cursor (a `next_page_token`).
    pub page_token: Option<String>,
    /// Most grants to return (1..=1000).
    pub page_size: usize,
}

/// A minted token and its record. `token` is a secret: `Debug` redacts it.
pub struct Issued {
    /// The compact JWS.
    pub token: String,
    /// Its recorded grant.
    pub grant: Grant,
    /// Its OAuth `token_type`: `DPoP` for a key-bound token, else `Bearer`.
    pub token_type: &'static str,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("token", &"<redacted>")
            .field("grant", &self.grant)
            .finish()
    }
}

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
    /// Whether the last audit record was written: health reports NOT_SERVING
    /// while it was not (every operation would fail UNAVAILABLE anyway).
    audit_ok: std::sync::atomic::AtomicBool,
    /// The Cedar policy in force and the entities it reads.
    policy: policy::PolicyState,
    /// Pending approvals (memory unless [`Broker::with_approval_store`]).
    approvals: approvals::Approvals,
}

/// Most distinct refused callers remembered for audit sampling.
const REFUSAL_SAMPLES: usize = 10_000;

/// Most attestation refusals audited per source address per second; the
/// rest are counted (`tessera_attestation_refusals_unaudited_total`).
const REFUSALS_PER_SOURCE: u32 = 50;

/// Most quarantine refusals audited per identity: one per this interval.
const QUARANTINE_AUDIT_EVERY: chrono::Duration = chrono::Duration::seconds(1);

/// Denials counted and identities quarantined, by this replica.
#[derive(Debug)]
struct Anomaly {
    detector: AnomalyDetector,
    quarantined: QuarantineList,
    /// Why each quarantined identity is (kept while it is quarantined).
    why: std::collections::HashMap<SpiffeId, String>,
    /// When a refusal of each quarantined identity was last audited.
    last_audited: std::collections::HashMap<SpiffeId, chrono::DateTime<chrono::Utc>>,
}

impl Anomaly {
    fn new(rule: AnomalyRule) -> Self {
        Self {
            detector: AnomalyDetector::new(rule),
            quarantined: QuarantineList::default(),
            why: std::collections::HashMap::new(),
            last_audited: std::collections::HashMap::new(),
        }
    }

    fn quarantine(&mut self, trigger: &Trigger, now: chrono::DateTime<chrono::Utc>) {
        self.quarantined.quarantine(&trigger.identity, trigger.until);
        self.why.insert(trigger.identity.clone(), trigger.describe());
        self.last_audited.remove(&trigger.identity);
        // The side maps follow the (bounded) list.
        if self.why.len() > self.quarantined.len() {
            let quarantined = &mut self.quarantined;
            self.why.retain(|id, _| quarantined.is_quarantined(id, now).is_some());
            let why = &self.why;
            self.last_audited.retain(|id, _| why.contains_key(id));
        }
    }
}

fn actor(who: &VerifiedIdentity) -> Actor {
    let identity = who.identity();
    let mut actor = Actor::new(identity.id.to_string());
    actor.kind = Some(identity.kind.to_string());
    actor.owner = Some(identity.owner.clone());
    actor.attestation = Some(who.method().to_string());
    actor.evidence = Some(who.evidence().to_owned());
    actor
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
            replay: Arc::new(tessera_store::replay::MemoryReplayCache::new(1_000_000, clock.clone())),
            clock,
            anomaly: settings.anomaly.map(|rule| std::sync::Mutex::new(Anomaly::new(rule))),
            settings,
            audit,
            refusals_audited: std::sync::Mutex::new(std::collections::HashMap::new()),
            refusal_sources: std::sync::Mutex::new(std::collections::HashMap::new()),
            audit_ok: std::sync::atomic::AtomicBool::new(true),
            approvals: approvals::Approvals::new(Arc::new(tessera_store::MemoryApprovalStore::default())),
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

    fn event(&self, kind: AuditKind, decision: Outcome, who: Option<&VerifiedIdentity>) -> AuditEvent {
        let mut event = AuditEvent::new(kind, self.clock.now(), decision, self.settings.instance_id.clone());
        event.who = who.map(actor);
        if who.is_some() {
            // The policy set in force when a caller acted; decisions overwrite it with their own.
            event.policy_hash = Some(self.policy_hash().to_string());
        }
        event.request_id = crate::telemetry::current_request_id();
        event
    }

    async fn audit(&self, event: AuditEvent) -> Result<(), BrokerError> {
        let written = self.audit.record(event).await.map_err(|e| {
            tracing::error!(error = %e, "audit record not written; failing the operation");
            crate::telemetry::audit_failure();
            BrokerError::Audit(e)
        });
        self.audit_ok
            .store(written.is_ok(), std::sync::atomic::Ordering::Relaxed);
        written
    }

    /// Whether the audit trail takes records: true while the last one was
    /// written; after a failure, a probe record (`audit_recovered`) is
    /// tried, so health can come back without traffic. Called by the
    /// health loop.
    pub async fn audit_healthy(&self) -> bool {
        if self.audit_ok.load(std::sync::atomic::Ordering::Relaxed) {
            return true;
        }
        let mut event = self.event(AuditKind::AuditRecovered, Outcome::Allow, None);
        event.reason = Some("the audit trail takes records again after a failure".into());
        self.audit(event).await.is_ok()
    }

    /// Audits a refusal, then returns it (UNAVAILABLE if it cannot be audited).
    async fn refuse<T>(&self, mut event: AuditEvent, err: BrokerError) -> Result<T, BrokerError> {
        event.reason = Some(err.to_string());
        policy::stamp_refusal(&mut event, &err);
        self.audit(event).await?;
        Err(err)
    }

    /// Records a caller refused at mTLS attestation; returns the error to
    /// answer with. See [`Broker::attestation_refused_by`].
    pub async fn attestation_refused(
        &self,
        claimed: Option<&SpiffeId>,
        evidence: Option<&str>,
        reason: &str,
        source: Option<std::net::IpAddr>,
    ) -> BrokerError {
        self.attestation_refused_by(AttestationMethod::X509, claimed, evidence, reason, source)
            .await
    }

    /// Fails unless policy lets `who` make the admin call `rpc` (the baseline:
    /// operators only); a refusal is audited as `admin_denied`.
    pub async fn require_operator(
        &self,
        who: &VerifiedIdentity,
        rpc: &str,
    ) -> Result<policy::PolicyAllowed, BrokerError> {
        self.authorize_call(who, rpc).await
    }

    /// Marks this replica's key as retiring: it stays in the JWKS until the
    /// last token it could have signed has expired.
    pub async fn retire_key(&self) -> Result<(), BrokerError> {
        let signer = self.signer();
        self.retire(&signer, None, "retired at shutdown").await
    }

    /// The key signing now.
    fn signer(&self) -> Arc<SigningKey> {
        self.signer
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Keeps `key` in the JWKS until the last token it could have signed has
    /// expired (max TTL plus leeway), then lets it go.
    async fn retire(&self, key: &SigningKey, who: Option<&VerifiedIdentity>, why: &str) -> Result<(), BrokerError> {
        let now = self.clock.now();
        let keep = self.settings.ttl.max.as_duration() + chrono::Duration::seconds(self.settings.leeway_secs);
        let retired = PublishedKey {
            jwk: key.public_jwk().clone(),
            published_at: now,
            not_after: Some(now + keep),
        };
        match self.store.publish_key(&retired).await {
            // Withdrawn by break-glass: it stays out of the JWKS.
            Ok(()) | Err(StoreError::KeyWithdrawn(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let mut event = self.event(AuditKind::KeyRetired, Outcome::Allow, who);
        event.reason = Some(format!("kid {}: {why}; in the JWKS until {}", key.kid(), now + keep));
        self.audit(event).await
    }

    /// Rotates the signing key: the new key is published before it signs
    /// anything, and the old one stays in the JWKS until its last token has
    /// expired. Returns (new kid, retired kid).
    pub async fn rotate_key(&self, who: Option<&VerifiedIdentity>, why: &str) -> Result<(String, String), BrokerError> {
        self.replace_key(who, why, true).await
    }

    /// A scheduled rotation: the next key is published `lead` before it
    /// signs, so verifiers that cache the JWKS hold it before they meet its
    /// tokens; then it signs and the old key is retired. A rotation or a
    /// withdrawal in between supersedes this one (the staged key is retired
    /// unused). Returns (new kid, retired kid), or `None` when superseded.
    pub async fn rotate_key_staged(&self, lead: Duration) -> Result<Option<(String, String)>, BrokerError> {
        let (old_kid, next) = {
            let _one_at_a_time = self.rotating.lock().await;
            let old = self.signer();
            let next = Arc::new(SigningKey::generate(old.algorithm()).map_err(BrokerError::Signing)?);
            let why = format!("next key, signs in {}", humantime::format_duration(lead));
            self.publish_new(&next, None, &why).await?;
            (old.kid().to_owned(), next)
        };
        tokio::time::sleep(lead).await;
        let _one_at_a_time = self.rotating.lock().await;
        let old = self.signer();
        let still_published = self
            .store
            .published_keys(self.clock.now())
            .await?
            .iter()
            .any(|k| k.jwk.kid == next.kid());
        if old.kid() != old_kid || !still_published {
            tracing::warn!(kid = next.kid(), "staged key superseded before it signed");
            if still_published {
                self.retire(&next, None, "staged key superseded before it signed")
                    .await?;
            }
            return Ok(None);
        }
        self.switch_to(next, None, "scheduled rotation", true).await.map(Some)
    }

    /// Publishes a fresh key, then signs with it; the old one is retired
    /// (kept until its tokens expire) or, after a withdrawal, left out.
    async fn replace_key(
        &self,
        who: Option<&VerifiedIdentity>,
        why: &str,
        retire_old: bool,
    ) -> Result<(String, String), BrokerError> {
        let _one_at_a_time = self.rotating.lock().await;
        let new = Arc::new(SigningKey::generate(self.signer().algorithm()).map_err(BrokerError::Signing)?);
        // INVARIANT: published before first use, so no verifier sees a kid it cannot find.
        self.publish_new(&new, who, why).await?;
        self.switch_to(new, who, why, retire_old).await
    }

    /// Publishes `key` (not signing yet) and audits it.
    async fn publish_new(
        &self,
        key: &SigningKey,
        who: Option<&VerifiedIdentity>,
        why: &str,
    ) -> Result<(), BrokerError> {
        let published = PublishedKey {
            jwk: key.public_jwk().clone(),
            published_at: self.clock.now(),
            not_after: None,
        };
        self.store.publish_key(&published).await?;
        let mut event = self.event(AuditKind::KeyPublished, Outcome::Allow, who);
        event.reason = Some(format!("kid {} ({}): {why}", key.kid(), key.algorithm().as_jose()));
        self.audit(event).await
    }

    /// Signs with the already published `new` from now on; retires the old
    /// key unless `retire_old` is false (it was withdrawn). Callers hold
    /// `rotating`.
    async fn switch_to(
        &self,
        new: Arc<SigningKey>,
        who: Option<&VerifiedIdentity>,
        why: &str,
        retire_old: bool,
    ) -> Result<(String, String), BrokerError> {
        let old = self.signer();
        *self.signer.write().unwrap_or_else(std::sync::PoisonError::into_inner) = new.clone();
        if retire_old {
            self.retire(&old, who, why).await?;
        }
        tracing::info!(
            event = "key_rotated",
            new_kid = new.kid(),
            old_kid = old.kid(),
            reason = why,
            "signing key rotated"
        );
        Ok((new.kid().to_owned(), old.kid().to_owned()))
    }

    /// Break-glass: ends every live task (so every live grant dies), rotates
    /// the key, and withdraws every other key from the JWKS, so no token
    /// minted before verifies anywhere, even offline. Other replicas notice
    /// their key is gone and move to a fresh one (`ensure_own_key`).
    pub async fn revoke_all(&self, who: &VerifiedIdentity, reason: &str) -> Result<(u64, String), BrokerError> {
        let allowed = self.require_operator(who, "RevokeAll").await?;
        let why = format!("break-glass: {reason}");
        // Keys first: from here on no earlier token verifies anywhere, even if
        // ending the tasks below is interrupted (the operator can run it again).
        let (new_kid, _) = self.replace_key(Some(who), &why, false).await?;
        let withdrawn = self.store.withdraw_keys_except(&new_kid).await?;
        let mut grants = 0;
        let mut failed = Vec::new();
        // Rounds: a task started while we work is caught by the next one.
        for _ in 0..8 {
            let now = self.clock.now();
            let tasks = self.store.active_task_ids(now).await?;
            if tasks.is_empty() {
                break;
            }
            let mut progressed = false;
            for task in tasks {
                match self.store.end_task(&task, TaskState::Revoked, &why, now).await {
                    Ok(ended) => {
                        grants += ended.grants_revoked;
                        progressed = true;
                    }
                    // Listed but never created (a create that failed half way): nothing to end.
                    Err(StoreError::TaskNotFound(_)) => {}
                    Err(e) => failed.push(format!("{task}: {e}")),
                }
            }
            if !progressed {
                break;
            }
        }
        let mut event = self.event(AuditKind::TaskRevoked, Outcome::Allow, Some(who));
        event.reason = Some(format!(
            "{why}; {withdrawn} keys withdrawn; new kid {new_kid}; {} tasks failed",
            failed.len()
        ));
        event.count = Some(grants);
        allowed.stamp(&mut event);
        self.audit(event).await?;
        tracing::warn!(event = "revoke_all", grants, withdrawn, new_kid = %new_kid, failed = failed.len(), "break-glass revocation");
        if let Some(first) = failed.first() {
            return Err(BrokerError::Store(StoreError::Unavailable(format!(
                "break-glass: keys withdrawn, but {} tasks could not be ended (first: {first}); run it again",
                failed.len()
            ))));
        }
        crate::telemetry::revoked("break_glass", grants);
        Ok((grants, new_kid))
    }

    /// If this replica's key was withdrawn (break-glass elsewhere), moves to
    /// a fresh key without re-publishing the withdrawn one.
    pub async fn ensure_own_key(&self) -> Result<(), BrokerError> {
        let kid = self.signer().kid().to_owned();
        let published = self.store.published_keys(self.clock.now()).await?;
        if published.iter().any(|k| k.jwk.kid == kid) {
            return Ok(());
        }
        tracing::warn!(kid = %kid, "this replica's signing key was withdrawn; moving to a fresh key");
        self.replace_key(None, "own key withdrawn", false).await.map(drop)
    }

    /// The trust domain callers must belong to.
    pub fn trust_domain(&self) -> &str {
        &self.settings.trust_domain
    }

    /// Binds a verified SVID to its registered identity.
    pub fn attest(&self, id: &SpiffeId, evidence: String) -> Result<VerifiedIdentity, BrokerError> {
        Ok(VerifiedIdentity::attested(
            &self.registry,
            id,
            AttestationMethod::X509,
            evidence,
        )?)
    }

    /// Checks the store answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }

    /// StartTask.
    pub async fn start_task(&self, who: &VerifiedIdentity, req: StartTask) -> Result<Task, BrokerError> {
        let now = self.clock.now();
        let parent = match &req.parent {
            Some(id) => self.store.task(id).await?,
            None => None,
        };
        let requested = req.task_id.to_string();
        // Validated first, so that policy judges a well-formed task.
        let decided = orchestration::start_task(
            who,
            req,
            &self.registry,
            &self.catalog,
            parent.as_ref(),
            &self.settings.tasks,
            now,
        )
        .map_err(BrokerError::from)
        .and_then(|task| {
            let query = PolicyQuery::Task {
                action: TaskAction::Start,
                id: &task.id,
                task: Some(&task),
            };
            let allowed = self.authorize(who, &query)?;
            Ok((task, allowed))
        });
        let (task, allowed) = match decided {
            Ok(decided) => decided,
            Err(e) if e.kind() == ErrorKind::PermissionDenied => {
                crate::telemetry::decision("start_task", false);
                let mut event = self.event(AuditKind::TaskDenied, Outcome::Deny, Some(who));
                event.task_id = Some(requested);
                let refused = self.refuse(event, e).await;
                self.count_denial(who).await;
                return refused;
            }
            Err(e) => return Err(e),
        };
        self.store.create_task(&task).await?;
        let mut event = self.event(AuditKind::TaskStarted, Outcome::Allow, Some(who));
        event.task_id = Some(task.id.to_string());
        event.scopes = task
            .ceiling
            .0
            .iter()
            .flat_map(|(aud, s)| s.iter().map(move |s| format!("{aud} {s}")))
            .collect();
        event.count = Some(task.agents.len() as u64);
        allowed.stamp(&mut event);
        if let Err(e) = self.audit(event).await {
            // Unaudited, so it must not stand.
            let _ = self
                .store
                .end_task(&task.id, TaskState::Revoked, "audit trail unavailable", now)
                .await;
            return Err(e);
        }
        tracing::info!(
            event = "task_started",
            task_id = %task.id,
            orchestrator = %who.id(),
            agents = task.agents.len(),
            deadline = %task.deadline,
            "task started"
        );
        crate::telemetry::decision("start_task", true);
        Ok(task)
    }

    async fn load_task(&self, id: &TaskId) -> Result<Task, BrokerError> {
        self.store
            .task(id)
            .await?
            .ok_or_else(|| TaskError::NotFound(id.clone()).into())
    }

    /// GetTask: the task and its number of live grants.
    pub async fn get_task(&self, who: &VerifiedIdentity, id: &TaskId) -> Result<(Task, u64), BrokerError> {
        let task = self.load_task(id).await?;
        self.authorize(
            who,
            &PolicyQuery::Task {
                action: TaskAction::Get,
                id,
                task: Some(&task),
            },
        )?;
        let live = self.store.live_grants(id, self.clock.now()).await?;
        Ok((task, live))
    }

    /// CompleteTask (orchestrator) or RevokeTask (operator).
    pub async fn end_task(
        &self,
        who: &VerifiedIdentity,
        id: &TaskId,
        state: TaskState,
        reason: &str,
    ) -> Result<TaskEnded, BrokerError> {
        // RevokeTask is an admin call: asked before the task is looked up, so
        // a refused caller learns nothing of it. CompleteTask of an unknown
        // task is NOT_FOUND.
        let revoking = state == TaskState::Revoked;
        let task = if revoking {
            self.store.task(id).await?
        } else {
            Some(self.load_task(id).await?)
        };
        let action = if revoking {
            TaskAction::Revoke
        } else {
            TaskAction::Complete
        };
        let query = PolicyQuery::Task {
            action,
            id,
            task: task.as_ref(),
        };
        let allowed = match self.authorize(who, &query) {
            Ok(allowed) => allowed,
            Err(e) => {
                crate::telemetry::decision(crate::telemetry::end_task_operation(state), false);
                let (kind, reason) = if revoking {
                    (AuditKind::AdminDenied, format!("RevokeTask: {e}"))
                } else {
                    (AuditKind::TaskDenied, e.to_string())
                };
                let mut event = self.event(kind, Outcome::Deny, Some(who));
                event.task_id = Some(id.to_string());
                event.reason = Some(reason);
                policy::stamp_refusal(&mut event, &e);
                let audited = self.audit(event).await;
                self.count_denial(who).await;
                audited?;
                return Err(e);
            }
        };
        if task.is_none() {
            return Err(TaskError::NotFound(id.clone()).into());
        }
        let ended = self.store.end_task(id, state, reason, self.clock.now()).await?;
        let kind = if state == TaskState::Revoked {
            AuditKind::TaskRevoked
        } else {
            AuditKind::TaskCompleted
        };
        let mut event = self.event(kind, Outcome::Allow, Some(who));
        event.task_id = Some(id.to_string());
        event.reason = Some(reason.to_owned());
        event.count = Some(ended.grants_revoked);
        allowed.stamp(&mut event);
        self.audit(event).await?;
        tracing::info!(
            event = if state == TaskState::Revoked { "task_revoked" } else { "task_completed" },
            task_id = %id,
            by = %who.id(),
            grants_revoked = ended.grants_revoked,
            children_ended = ended.children_ended.len(),
            reason,
            "task ended"
        );
        crate::telemetry::task_ended(state, ended.grants_revoked);
        Ok(ended)
    }

    /// RequestToken: decide, assess, then sign and record — or, for a
    /// high-impact (or policy-marked) request, open a pending approval. No
    /// token leaves unless its grant is recorded.
    pub async fn request_token(&self, who: &VerifiedIdentity, req: &TokenRequest) -> Result<TokenOutcome, BrokerError> {
        let now = self.clock.now();
        let task = self.load_task(&req.task_id).await?;
        let decided = self.authorize_token_request(who, &task, req).and_then(|allowed| {
            let plan = issuance::plan_grant(who, &task, &self.catalog, req, self.settings.ttl, now)?;
            Ok((allowed, plan))
        });
        let (allowed, plan) = match decided {
            Ok(decided) => decided,
            Err(e) => {
                tracing::info!(
                    event = "token_denied",
                    subject = %who.id(),
                    task_id = %req.task_id,
                    audience = %req.audience,
                    reason = %e,
                    "token request denied"
                );
                crate::telemetry::decision("request_token", false);
                let mut event = self.event(AuditKind::TokenDenied, Outcome::Deny, Some(who));
                event.task_id = Some(req.task_id.to_string());
                event.audience = Some(req.audience.to_string());
                event.scopes = req.scopes.iter().map(ToString::to_string).collect();
                event.ttl_secs = req.ttl.map(|t| t.as_secs());
                let refused = self.refuse(event, e).await;
                self.count_denial(who).await;
                return refused;
            }
        };
        if let Err(e) = self.require_binding("pop_proof", plan.class, req.binding.as_ref()) {
            crate::telemetry::decision("request_token", false);
            let mut event = self.event(AuditKind::TokenDenied, Outcome::Deny, Some(who));
            event.task_id = Some(req.task_id.to_string());
            event.audience = Some(req.audience.to_string());
            event.class = Some(plan.class.to_string());
            let refused = self.refuse(event, e).await;
            self.count_denial(who).await;
            return refused;
        }
        // Policy's obligations (approval, max TTL, blast-radius cap) go to
        // the same assessment as the catalog's and the configuration's.
        let terms = Self::policy_terms(&allowed);
        let assessment = self.assess_plan(who, req, &plan, None, &terms).await?;
        if let Some(why) = assessment.approval.clone() {
            return self
                .open_approval(who, req, &plan, &assessment, why, task.deadline)
                .await
                .map(TokenOutcome::Pending);
        }
        let impact = GrantImpact {
            high_impact: !assessment.high_impact.is_empty(),
            blast_radius: assessment.blast_radius,
            approval_id: None,
        };
        let plan = issuance::GrantPlan {
            lifetime: assessment.lifetime,
            ..plan
        };
        let id = self.store.new_grant_id(&plan.task_id).await?;
        self.mint(who, plan, id, impact, req.binding.clone(), &allowed, now)
            .await
            .map(TokenOutcome::Issued)
    }

    /// Signs and records a token for an allowed, assessed `plan` under the
    /// grant id `id` (from [`GrantStore::new_grant_id`]), then audits it.
    #[expect(
        clippy::too_many_arguments,
        reason = "each is one decided part of the grant; a struct would only rename them"
    )]
    async fn mint(
        &self,
        who: &VerifiedIdentity,
        plan: issuance::GrantPlan,
        id: GrantId,
        impact: GrantImpact,
        cnf: Option<tessera_core::token::Confirmation>,
        allowed: &policy::PolicyAllowed,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Issued, BrokerError> {
        let token_type = cnf
            .as_ref()
            .map_or("Bearer", tessera_core::token::Confirmation::token_type);
        let scope = plan.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ");
        let claims = AccessClaims {
            iss: self.settings.issuer.clone(),
            sub: who.id().to_string(),
            aud: plan.audience.to_string(),
            exp: plan.lifetime.expires_at.timestamp(),
            nbf: plan.lifetime.issued_at.timestamp(),
            iat: plan.lifetime.issued_at.timestamp(),
            jti: id.to_string(),
            scope,
            client_id: who.id().to_string(),
            task_id: plan.task_id.to_string(),
            cnf,
            act: None,
            tessera_chain: Vec::new(),
        };
        let signer = self.signer();
        let token = signer
            .sign_jws(ACCESS_TOKEN_TYP, &claims)
            .map_err(BrokerError::Signing)?;
        let grant = Grant {
            id,
            task_id: plan.task_id,
            subject: who.id().clone(),
            audience: plan.audience,
            scopes: plan.scopes,
            class: plan.class,
            issued_at: plan.lifetime.issued_at,
            expires_at: plan.lifetime.expires_at,
            parent: None,
            key_id: signer.kid().to_owned(),
            state: GrantState::Active,
            revoked_at: None,
            revocation_reason: None,
            impact,
        };
        // INVARIANT: the token is returned only after its grant is recorded;
        // if recording fails the signed token is dropped here, unseen.
        self.store.record_grant(&grant, now).await?;
        self.confirm_recorded(who, &grant, now).await?;
        let mut event = self.grant_event(AuditKind::TokenIssued, who, &grant, plan.lifetime.ttl);
        allowed.stamp(&mut event);
        event.blast_radius = Some(grant.impact.blast_radius);
        event.approval_id = grant.impact.approval_id.clone();
        if let Err(e) = self.audit(event).await {
            // INVARIANT: no token without its audit record: take the grant back.
            let _ = self.store.revoke_grant(&grant.id, "audit trail unavailable", now).await;
            return Err(e);
        }
        tracing::info!(
            event = "token_issued",
            grant_id = %grant.id,
            subject = %grant.subject,
            task_id = %grant.task_id,
            audience = %grant.audience,
            class = %grant.class,
            scopes = grant.scopes.len(),
            ttl_secs = plan.lifetime.ttl.as_secs(),
            kid = %grant.key_id,
            blast_radius = grant.impact.blast_radius,
            approval_id = grant.impact.approval_id.as_deref().unwrap_or(""),
            "token issued"
        );
        crate::telemetry::issued(&grant.class);
        Ok(Issued {
            token,
            grant,
            token_type,
        })
    }

    /// ReleaseToken naming the token itself: its signature and expiry are
    /// checked with this broker's keys, then [`Broker::release`] of its grant.
    pub async fn release_token(
        &self,
        who: &VerifiedIdentity,
        token: &str,
    ) -> Result<(GrantId, RevokeOutcome), BrokerError> {
        let jwks = self.jwks().await?;
        let claims = tessera_core::token::verify_access_token(
            token,
            &jwks,
            &self.settings.issuer,
            self.clock.now(),
            self.settings.leeway_secs,
        )
        .map_err(|e| {
            log_rejected(&e);
            BrokerError::NotLiveToken("token")
        })?;
        let id = GrantId::parse(&claims.jti).map_err(|_| BrokerError::NotLiveToken("token"))?;
        let outcome = self.release(who, &id).await?;
        Ok((id, outcome))
    }

    /// ReleaseToken: the holder gives its grant back.
    pub async fn release(&self, who: &VerifiedIdentity, id: &GrantId) -> Result<RevokeOutcome, BrokerError> {
        let grant = self
            .store
            .grant(id)
            .await?
            .ok_or_else(|| BrokerError::GrantNotFound(id.clone()))?;
        if &grant.subject != who.id() {
            let mut event = self.event(AuditKind::TokenReleased, Outcome::Deny, Some(who));
            event.grant_id = Some(id.to_string());
            event.task_id = Some(grant.task_id.to_string());
            return self.refuse(event, BrokerError::NotHolder(who.id().to_string())).await;
        }
        self.revoke(who, id, "released by holder", AuditKind::TokenReleased, None)
            .await
    }

    /// RevokeGrant (operator).
    pub async fn revoke_grant(
        &self,
        who: &VerifiedIdentity,
        id: &GrantId,
        reason: &str,
    ) -> Result<RevokeOutcome, BrokerError> {
        let allowed = self.require_operator(who, "RevokeGrant").await?;
        self.revoke(who, id, reason, AuditKind::GrantRevoked, Some(&allowed))
            .await
    }

    async fn revoke(
        &self,
        who: &VerifiedIdentity,
        id: &GrantId,
        reason: &str,
        kind: AuditKind,
        allowed: Option<&policy::PolicyAllowed>,
    ) -> Result<RevokeOutcome, BrokerError> {
        let outcome = self
            .store
            .revoke_grant(id, reason, self.clock.now())
            .await?
            .ok_or_else(|| BrokerError::GrantNotFound(id.clone()))?;
        tracing::info!(
            event = "grant_revoked",
            grant_id = %id,
            by = %who.id(),
            changed = outcome.revoked,
            descendants = outcome.descendants_revoked,
            reason,
            "grant revoked"
        );
        crate::telemetry::grant_revoked(kind, u64::from(outcome.revoked) + outcome.descendants_revoked);
        let mut event = self.event(kind, Outcome::Allow, Some(who));
        event.grant_id = Some(id.to_string());
        event.task_id = Some(outcome.grant.task_id.to_string());
        event.reason = Some(reason.to_owned());
        event.count = Some(u64::from(outcome.revoked) + outcome.descendants_revoked);
        if let Some(allowed) = allowed {
            allowed.stamp(&mut event);
        }
        self.audit(event).await?;
        Ok(outcome)
    }

    /// The JWKS: every published key still needed.
    pub async fn jwks(&self) -> Result<Jwks, BrokerError> {
        let keys = self.store.published_keys(self.clock.now()).await?;
        Ok(Jwks {
            keys: keys.into_iter().map(|k| k.jwk).collect(),
        })
    }

    /// Introspect: the claims of a live token, or `None` for any token that
    /// is not live (malformed, forged, expired, revoked or unknown alike).
    /// Store failures are errors, never "inactive" and never "active".
    pub async fn introspect(&self, who: &VerifiedIdentity, token: &str) -> Result<Option<AccessClaims>, BrokerError> {
        self.require_verifier(who, "Introspect").await?;
        Ok(self.live(token, self.clock.now()).await?.map(|(claims, _)| claims))
    }

    /// ReportMisuse: a resource server saw `presenter` present `token`. A
    /// live token whose holder (`client_id`) is someone else is misuse:
    /// audited as `token_misuse`, and with anomaly rules on, the token's
    /// task is revoked (every grant of it: the token leaked, so may its
    /// siblings) and the presenter quarantined. Returns the grants revoked,
    /// or `None` when it was no misuse (the holder itself, or a dead token).
    pub async fn report_misuse(
        &self,
        who: &VerifiedIdentity,
        token: &str,
        presenter: &SpiffeId,
    ) -> Result<Option<u64>, BrokerError> {
        // An action of its own: a report can revoke a task and quarantine
        // an identity, so policy decides who may make one (verifiers).
        self.require_verifier(who, "ReportMisuse").await?;
        let now = self.clock.now();
        match self.live(token, now).await? {
            Some((claims, grant)) if claims.client_id != presenter.as_str() => {
                self.misused(who, presenter, &grant, now).await.map(Some)
            }
            _ => Ok(None),
        }
    }

    /// The claims and grant of `token` if it verifies and its grant is live.
    async fn live(
        &self,
        token: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<(AccessClaims, Grant)>, BrokerError> {
        let jwks = self.jwks().await?;
        let claims = match tessera_core::token::verify_access_token(
            token,
            &jwks,
            &self.settings.issuer,
            now,
            self.settings.leeway_secs,
        ) {
            Ok(claims) => claims,
            Err(e) => {
                log_rejected(&e);
                return Ok(None);
            }
        };
        let Ok(id) = GrantId::parse(&claims.jti) else {
            return Ok(None);
        };
        let Some(grant) = self.store.grant(&id).await? else {
            return Ok(None);
        };
        // The holder is `client_id` (a delegated token's `sub` is its chain's root).
        let matches = grant.subject.as_str() == claims.client_id
            && grant.task_id.as_str() == claims.task_id
            && grant.audience.as_str() == claims.aud;
        // Expiry is judged on the grant with no leeway: introspection is authoritative.
        Ok((matches && grant.is_live_at(now)).then_some((claims, grant)))
    }

    /// A verifier caught `presenter` with `grant`'s token: audit it, and
    /// with anomaly rules on, end the grant's task (the token leaked, so may
    /// its siblings) and quarantine the presenter on this replica.
    async fn misused(
        &self,
        reporter: &VerifiedIdentity,
        presenter: &SpiffeId,
        grant: &Grant,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<u64, BrokerError> {
        let mut event = self.event(AuditKind::TokenMisuse, Outcome::Deny, Some(reporter));
        event.task_id = Some(grant.task_id.to_string());
        event.grant_id = Some(grant.id.to_string());
        let what = format!(
            "`{presenter}` presented a token of task `{}` issued to `{}`",
            grant.task_id, grant.subject
        );
        let Some(rule) = self.settings.anomaly else {
            event.reason = Some(format!("{what}; anomaly rules off: nothing revoked"));
            return self.audit(event).await.map(|()| 0);
        };
        let trigger = Trigger::misuse(
            &rule,
            presenter.clone(),
            grant.subject.as_str(),
            grant.task_id.as_str(),
            now,
        );
        if let Some(anomaly) = &self.anomaly {
            anomaly
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .quarantine(&trigger, now);
        }
        self.share_quarantine(&trigger, now).await;
        let revoked = self
            .store
            .end_task(&grant.task_id, TaskState::Revoked, &format!("anomaly: {what}"), now)
            .await;
        let shown = match &revoked {
            Ok(ended) => ended.grants_revoked.to_string(),
            Err(e) => {
                tracing::error!(task = %grant.task_id, error = %e, "anomaly: revoking the misused token's task failed");
                "failed".to_owned()
            }
        };
        tracing::warn!(
            event = "token_misuse",
            presenter = %presenter,
            task = %grant.task_id,
            grants_revoked = %shown,
            until = %trigger.until,
            "anomaly rule fired: token presented by another identity; task revoked, presenter quarantined"
        );
        event.reason = Some(format!(
            "{what}; task revoked (grants: {shown}); `{presenter}` quarantined until {}",
            trigger.until
        ));
        if let Ok(ended) = &revoked {
            event.count = Some(ended.grants_revoked);
            crate::telemetry::revoked("anomaly", ended.grants_revoked);
        }
        self.audit(event).await?;
        Ok(revoked?.grants_revoked)
    }

    /// WatchRevocations: one read of the feed.
    pub async fn read_revocations(
        &self,
        who: &VerifiedIdentity,
        after: Option<&FeedPosition>,
        max: usize,
        wait: Duration,
    ) -> Result<FeedBatch, BrokerError> {
        self.require_verifier(who, "WatchRevocations").await?;
        Ok(self.store.read_revocations(after, max, wait).await?)
    }

    async fn require_verifier(&self, who: &VerifiedIdentity, rpc: &str) -> Result<(), BrokerError> {
        self.authorize_call(who, rpc).await.map(drop)
    }

    /// The current time on the broker's clock.
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.clock.now()
    }
}

/// Operator use cases over many grants at once.
impl Broker {
    /// ListGrants (operator): live grants matching `query`, one page.
    pub async fn list_grants(&self, who: &VerifiedIdentity, query: GrantQuery) -> Result<GrantPage, BrokerError> {
        // The gRPC edge asked policy and audited a refusal; this only guards other callers.
        self.authorize(who, &PolicyQuery::Operation(Operation::ListGrants))?;
        let mut filter = query.filter;
        if let Some(owner) = &query.owner {
            let owned = self.registry.owned_by(owner);
            filter.subjects = Some(match filter.subjects.take() {
                Some(subjects) => subjects.intersection(&owned).cloned().collect(),
                None => owned,
            });
        }
        let page = self
            .store
            .list_grants(&filter, query.page_token.as_deref(), query.page_size, self.clock.now())
            .await?;
        tracing::debug!(
            event = "grants_listed",
            by = %who.id(),
            grants = page.grants.len(),
            more = page.next.is_some(),
            "grants listed"
        );
        Ok(page)
    }

    /// RevokeIdentity: every live grant of `identity` and all delegated
    /// from them die at once. With `disable`, the identity is first marked
    /// disabled in the store (shared by every replica, kept across
    /// restarts): this replica refuses it at once, the others within one
    /// `attestation.reload_interval` ([`Broker::refresh_shared`]); a
    /// second sweep after `disable_settle` revokes any grant another replica
    /// recorded for a request already past its attestation.
    pub async fn revoke_identity(
        &self,
        who: &VerifiedIdentity,
        identity: &SpiffeId,
        reason: &str,
        disable: bool,
    ) -> Result<IdentityRevoked, BrokerError> {
        // The gRPC edge asked policy and audited a refusal; this asks again for
        // other callers, and for the ids its record carries.
        let allowed = self.authorize(who, &PolicyQuery::Operation(Operation::RevokeIdentity))?;
        if !self.registry.contains(identity) {
            return Err(BrokerError::UnknownIdentity(identity.clone()));
        }
        if disable {
            // INVARIANT: disabled before the sweep, so nothing it misses is
            // minted afterwards on this replica.
            let newly = self.store.disable_subject(identity, reason, self.clock.now()).await?;
            self.registry.disable_at_runtime(identity);
            // Scheduled before anything else can fail, so that a failed audit
            // below does not leave grants of a disabled identity alive.
            self.sweep_later(identity, reason);
            tracing::warn!(
                event = "identity_disabled",
                identity = %identity,
                by = %who.id(),
                reason,
                newly,
                "identity disabled"
            );
            let mut event = self.event(AuditKind::IdentityDisabled, Outcome::Allow, Some(who));
            event.reason = Some(format!("identity {identity}: {reason}"));
            allowed.stamp(&mut event);
            self.audit(event).await?;
        }
        let revoked = self.store.revoke_subject(identity, reason, self.clock.now()).await?;
        tracing::info!(
            event = "identity_revoked",
            identity = %identity,
            by = %who.id(),
            grants_revoked = revoked,
            reason,
            "identity's grants revoked"
        );
        crate::telemetry::revoked("identity", revoked);
        let mut event = self.event(AuditKind::GrantRevoked, Outcome::Allow, Some(who));
        event.reason = Some(format!("identity {identity}: {reason}"));
        event.count = Some(revoked);
        allowed.stamp(&mut event);
        self.audit(event).await?;
        Ok(IdentityRevoked {
            grants_revoked: revoked,
            disabled: disable,
        })
    }

    /// Revokes `identity`'s grants again once every replica has seen its
    /// disable and every request attested before it has ended, unless it
    /// was enabled again meanwhile; audits what it revoked. (Grants are also
    /// checked against the store's disabled set right after they are
    /// recorded, see [`Broker::confirm_recorded`]: this sweep is the second
    /// line.)
    fn sweep_later(&self, identity: &SpiffeId, reason: &str) {
        let store = self.store.clone();
        let clock = self.clock.clone();
        let audit = self.audit.clone();
        let instance = self.settings.instance_id.clone();
        let after = self.settings.disable_settle;
        let identity = identity.clone();
        let reason = reason.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            match store.disabled_subjects().await {
                Ok(disabled) if !disabled.contains(&identity) => return,
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(identity = %identity, error = %e, "second sweep of a disabled identity: cannot read the disabled set; sweeping anyway");
                }
            }
            let now = clock.now();
            match store.revoke_subject(&identity, &reason, now).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::warn!(
                        event = "identity_revoked",
                        identity = %identity,
                        grants_revoked = n,
                        "grants recorded while the identity was being disabled revoked"
                    );
                    crate::telemetry::revoked("identity", n);
                    let mut event = AuditEvent::new(AuditKind::GrantRevoked, now, Outcome::Allow, instance);
                    event.reason = Some(format!("identity {identity}: {reason} (second sweep after disabling)"));
                    event.count = Some(n);
                    if let Err(e) = audit.record(event).await {
                        tracing::error!(identity = %identity, error = %e, "second sweep: audit record not written");
                    }
                }
                Err(e) => {
                    tracing::error!(identity = %identity, error = %e, "second sweep of a disabled identity failed");
                }
            }
        });
    }

    /// The audit record of a grant just issued to (or delegated by) `who`.
    fn grant_event(&self, kind: AuditKind, who: &VerifiedIdentity, grant: &Grant, ttl: Ttl) -> AuditEvent {
        let mut event = self.event(kind, Outcome::Allow, Some(who));
        event.task_id = Some(grant.task_id.to_string());
        event.grant_id = Some(grant.id.to_string());
        event.audience = Some(grant.audience.to_string());
        event.scopes = grant.scopes.iter().map(ToString::to_string).collect();
        event.class = Some(grant.class.to_string());
        event.ttl_secs = Some(ttl.as_secs());
        event.schema_version = self.catalog.api(&grant.audience).map(|a| a.schema_version.clone());
        event
    }

    /// After a grant is recorded, before its token leaves. The caller `who`
    /// must still be admitted: a quarantine that began while this mint was
    /// in flight has already swept its grants, and this one must not slip
    /// past it. And the grant's holder must not be disabled, neither here
    /// nor in the store (a disable made on another replica that this one has
    /// not read yet): the store check is after the record, so a disable
    /// either is seen here or comes after the record, and its sweep finds
    /// the grant. Otherwise the grant is taken back; if the store cannot
    /// say, too (fail closed).
    async fn confirm_recorded(
        &self,
        who: &VerifiedIdentity,
        grant: &Grant,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), BrokerError> {
        if let Err(e) = self.admit(who).await {
            let _ = self.store.revoke_grant(&grant.id, "identity quarantined", now).await;
            return Err(e);
        }
        let disabled = if self.registry.is_disabled(&grant.subject) {
            Ok(true)
        } else {
            let stored = self.store.subject_disabled(&grant.subject).await;
            if matches!(stored, Ok(true)) {
                // Learnt before the next refresh: refuse it here from now on.
                self.registry.disable_at_runtime(&grant.subject);
            }
            stored
        };
        match disabled {
            Ok(false) => Ok(()),
            Ok(true) => {
                let _ = self.store.revoke_grant(&grant.id, "identity disabled", now).await;
                Err(BrokerError::Identity(tessera_core::identity::IdentityError::Disabled(
                    grant.subject.clone(),
                )))
            }
            Err(e) => {
                let _ = self.store.revoke_grant(&grant.id, "store unavailable", now).await;
                Err(e.into())
            }
        }
    }

    /// EnableIdentity: lifts an operator's disable. A `disabled = true` in
    /// the configuration stays. Returns whether there was a disable to lift.
    pub async fn enable_identity(
        &self,
        who: &VerifiedIdentity,
        identity: &SpiffeId,
        reason: &str,
    ) -> Result<bool, BrokerError> {
        let allowed = self.authorize(who, &PolicyQuery::Operation(Operation::EnableIdentity))?;
        if !self.registry.contains(identity) {
            return Err(BrokerError::UnknownIdentity(identity.clone()));
        }
        let lifted = self.store.enable_subject(identity).await?;
        self.registry.enable_at_runtime(identity);
        let restore = || async {
            // INVARIANT: no enable without its audit record: put the disable back.
            if lifted {
                let _ = self
                    .store
                    .disable_subject(
                        identity,
                        "re-disabled: the enable could not be audited",
                        self.clock.now(),
                    )
                    .await;
                self.registry.disable_at_runtime(identity);
            }
        };
        tracing::warn!(
            event = "identity_enabled",
            identity = %identity,
            by = %who.id(),
            reason,
            lifted,
            "identity enabled"
        );
        let mut event = self.event(AuditKind::IdentityEnabled, Outcome::Allow, Some(who));
        event.reason = Some(format!("identity {identity}: {reason}"));
        allowed.stamp(&mut event);
        if let Err(e) = self.audit(event).await {
            restore().await;
            return Err(e);
        }
        Ok(lifted)
    }

    /// Reads what other replicas decided about identities from the store:
    /// the identities operators disabled (into the registry) and, with
    /// anomaly rules on, the quarantines in force (into this replica's
    /// list). Every replica, every `attestation.reload_interval`.
    pub async fn refresh_shared(&self) -> Result<(), BrokerError> {
        // Read before the store: a local disable or enable made meanwhile
        // wins over this (older) read.
        let generation = self.registry.runtime_generation();
        let disabled = self.store.disabled_subjects().await?;
        self.registry.set_runtime_disabled(disabled, generation);
        if let Some(anomaly) = &self.anomaly {
            let now = self.clock.now();
            let shared = self.store.quarantined_subjects(now).await?;
            let mut a = anomaly.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for q in shared {
                let known = a.quarantined.is_quarantined(&q.subject, now);
                if known.is_none_or(|until| until < q.until) {
                    a.quarantined.quarantine(&q.subject, q.until);
                    a.why.insert(q.subject.clone(), q.why);
                }
            }
        }
        Ok(())
    }
}

impl Broker {
    /// Writes a quarantine this replica imposed to the store, for the
    /// others (they read it within one `attestation.reload_interval`). A
    /// failure is logged: this replica's quarantine holds regardless.
    async fn share_quarantine(&self, trigger: &Trigger, now: chrono::DateTime<chrono::Utc>) {
        if let Err(e) = self
            .store
            .quarantine_subject(&trigger.identity, trigger.until, &trigger.describe(), now)
            .await
        {
            tracing::error!(identity = %trigger.identity, error = %e, "anomaly: could not share the quarantine with other replicas");
        }
    }
}

/// What RevokeIdentity did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentityRevoked {
    /// Grants revoked, delegated ones included.
    pub grants_revoked: u64,
    /// Whether the identity is now disabled.
    pub disabled: bool,
}

/// Anomaly revocation: denials are counted per identity (by this replica)
/// and an identity denied too often loses its grants and is quarantined.
impl Broker {
    /// Refuses `id` if it is quarantined (without auditing: for an identity
    /// that is not the caller, e.g. the holder of a token being exchanged).
    pub(crate) fn refuse_if_quarantined(&self, id: &SpiffeId) -> Result<(), BrokerError> {
        let Some(anomaly) = &self.anomaly else {
            return Ok(());
        };
        let now = self.clock.now();
        let mut a = anomaly.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match a.quarantined.is_quarantined(id, now) {
            None => Ok(()),
            Some(until) => Err(BrokerError::Quarantined {
                identity: id.clone(),
                until,
                why: a.why.get(id).cloned().unwrap_or_default(),
            }),
        }
    }

    /// Admits an attested caller, or refuses a quarantined one (PERMISSION_DENIED).
    /// Every RPC passes here right after attestation. Refusals are audited
    /// as `quarantine_refused`, at most once per identity per second.
    pub async fn admit(&self, who: &VerifiedIdentity) -> Result<(), BrokerError> {
        let Some(anomaly) = &self.anomaly else {
            return Ok(());
        };
        let now = self.clock.now();
        let (until, why, audit) = {
            let mut a = anomaly.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let Some(until) = a.quarantined.is_quarantined(who.id(), now) else {
                if !a.why.is_empty() {
                    a.why.remove(who.id());
                    a.last_audited.remove(who.id());
                }
                return Ok(());
            };
            let why = a.why.get(who.id()).cloned().unwrap_or_default();
            let audit = match a.last_audited.get(who.id()) {
                Some(last) if now - *last < QUARANTINE_AUDIT_EVERY && now >= *last => false,
                _ => {
                    a.last_audited.insert(who.id().clone(), now);
                    true
                }
            };
            (until, why, audit)
        };
        let err = BrokerError::Quarantined {
            identity: who.id().clone(),
            until,
            why,
        };
        tracing::debug!(event = "quarantine_refused", identity = %who.id(), until = %until, "quarantined caller refused");
        if audit {
            let event = self.event(AuditKind::QuarantineRefused, Outcome::Deny, Some(who));
            return self.refuse(event, err).await;
        }
        Err(err)
    }

    /// Counts a denial of `who`; if that fires the anomaly rule, quarantines
    /// the identity and revokes its live grants. Failures to revoke or audit
    /// are logged: the denial already answered stands, and so does the quarantine.
    async fn count_denial(&self, who: &VerifiedIdentity) {
        let Some(anomaly) = &self.anomaly else {
            return;
        };
        let now = self.clock.now();
        let trigger = {
            let mut a = anomaly.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let trigger = a.detector.observe_denial(who.id(), now);
            if let Some(t) = &trigger {
                // Quarantined before the grants are revoked, so that no new
                // grant can be minted in between.
                a.quarantine(t, now);
            }
            trigger
        };
        if let Some(trigger) = trigger {
            self.quarantine(who, &trigger, now).await;
        }
    }

    async fn quarantine(&self, who: &VerifiedIdentity, trigger: &Trigger, now: chrono::DateTime<chrono::Utc>) {
        let what = trigger.describe();
        self.share_quarantine(trigger, now).await;
        let revoked = match self
            .store
            .revoke_subject(who.id(), &format!("anomaly: {what}"), now)
            .await
        {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::error!(identity = %who.id(), error = %e, "anomaly: revoking the quarantined identity's grants failed");
                None
            }
        };
        let shown = revoked.map_or_else(|| "failed".to_owned(), |n| n.to_string());
        tracing::warn!(
            event = "quarantined",
            identity = %who.id(),
            cause = %what,
            grants_revoked = %shown,
            until = %trigger.until,
            "anomaly rule fired: identity quarantined"
        );
        let mut event = self.event(AuditKind::Quarantined, Outcome::Allow, Some(who));
        event.reason = Some(format!(
            "{what}; grants revoked: {shown}; quarantined until {}",
            trigger.until
        ));
        event.count = revoked;
        // The quarantine and revocation stand even if this record is lost.
        let _ = self.audit(event).await;
    }
}

fn log_rejected(e: &JwsError) {
    tracing::debug!(reason = %e, "introspected token rejected");
}

/// Operator views computed over many grants.
impl Broker {
    /// BlastRadius (operator): what the live grants of an identity, an
    /// owner's identities or a task reach now. Read-only, so not audited
    /// (a refused caller is, by [`Broker::require_operator`]). An identity
    /// must be registered and a task must exist; a target with more than
    /// [`tessera_core::blast::MAX_BLAST_GRANTS`] live grants is refused
    /// (RESOURCE_EXHAUSTED) rather than summarised from a partial view.
    pub async fn blast_radius(
        &self,
        who: &VerifiedIdentity,
        target: &tessera_core::blast::BlastTarget,
    ) -> Result<tessera_core::blast::BlastRadius, BrokerError> {
        use tessera_core::blast::{self, BlastTarget, MAX_BLAST_GRANTS};
        use tessera_store::MAX_GRANT_PAGE;

        // The gRPC edge asked policy and audited a refusal; this only guards other callers.
        self.authorize(who, &PolicyQuery::Operation(Operation::BlastRadius))?;
        let mut filter = GrantFilter::default();
        match target {
            BlastTarget::Identity(id) => {
                if !self.registry.contains(id) {
                    return Err(BrokerError::UnknownIdentity(id.clone()));
                }
                filter.subjects = Some(std::collections::BTreeSet::from([id.clone()]));
            }
            BlastTarget::Owner(owner) => filter.subjects = Some(self.registry.owned_by(owner)),
            BlastTarget::Task(id) => {
                if self.store.task(id).await?.is_none() {
                    return Err(StoreError::TaskNotFound(id.clone()).into());
                }
                filter.task_id = Some(id.clone());
            }
        }
        let now = self.clock.now();
        let mut grants = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .list_grants(&filter, after.as_deref(), MAX_GRANT_PAGE, now)
                .await?;
            grants.extend(page.grants);
            if grants.len() > MAX_BLAST_GRANTS {
                return Err(
                    StoreError::Full("blast radius: the target has more than 100000 live grants; narrow it").into(),
                );
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let owner_of = |id: &SpiffeId| self.registry.lookup(id).ok().map(|i| i.owner.clone());
        let radius = blast::blast_radius(&grants, owner_of, now);
        tracing::debug!(
            event = "blast_radius",
            by = %who.id(),
            target = ?target,
            live_grants = radius.live_grants,
            "blast radius computed"
        );
        Ok(radius)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use tessera_core::task::{Audience, Scope, ScopeClass};

    use super::*;

    #[test]
    fn issued_debug_redacts_the_token() {
        let at = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let issued = Issued {
            token: "eyJhbGciOiJFUzI1NiJ9.secret-claims.secret-signature".into(),
            grant: Grant {
                id: GrantId::parse("g1").unwrap(),
                task_id: TaskId::parse("t1").unwrap(),
                subject: SpiffeId::parse("spiffe://td/agent").unwrap(),
                audience: Audience::parse("crm").unwrap(),
                scopes: BTreeSet::from([Scope::parse("contacts.read").unwrap()]),
                class: ScopeClass::Read,
                issued_at: at,
                expires_at: at + chrono::Duration::seconds(60),
                parent: None,
                key_id: "k1".into(),
                state: GrantState::Active,
                revoked_at: None,
                revocation_reason: None,
                impact: GrantImpact::default(),
            },
            token_type: "Bearer",
        };
        let shown = format!("{issued:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains(r#"token: "<redacted>""#), "{shown}");
        assert!(shown.contains("g1") && shown.contains("spiffe://td/agent"), "{shown}");
    }
}
