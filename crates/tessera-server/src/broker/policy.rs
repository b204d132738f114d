//! Policy in the broker: the Cedar policy set in force (swapped whole on
//! reload), the entities it reads, and the one question every use case asks,
//! [`Broker::authorize`]. Its answer, [`PolicyAllowed`], is the proof a use
//! case needs to go on; a denial is a [`PolicyRefusal`].

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use tessera_core::ErrorKind;
use tessera_core::audit::{AuditEvent, AuditKind, Outcome};
use tessera_core::catalog::ApiCatalog;
use tessera_core::identity::{IdentityRegistry, VerifiedIdentity};
use tessera_core::issuance::ClassifiedRequest;
use tessera_core::policy::{
    Action, DecisionCache, DecisionStamp, Operation, PolicyDecision, PolicyEngine, PolicyEntities, PolicyError,
    PolicyLoadError, PolicyQuery, TokenAction, TokenFacts, read_policy_files,
};
use tessera_core::task::{Audience, Scope, Task};
use tessera_core::ttl::{Lifetime, Ttl};

use super::{Broker, BrokerError};

/// Policy reloads, by result (`ok`, `refused`).
pub const POLICY_RELOADS: &str = "tessera_policy_reloads_total";

/// The policy set a broker starts with, and where reloads read it from.
#[derive(Debug, Clone)]
pub struct PolicySetup {
    /// The validated policy set.
    pub engine: Arc<PolicyEngine>,
    /// The directory or file it came from; `None`: the compiled-in baseline
    /// (nothing to reload).
    pub source: Option<PathBuf>,
}

impl PolicySetup {
    /// The compiled-in baseline.
    pub fn baseline() -> Result<Self, PolicyLoadError> {
        Ok(Self {
            engine: Arc::new(PolicyEngine::baseline()?),
            source: None,
        })
    }
}

/// The broker's policy state.
pub(super) struct PolicyState {
    /// The set in force: readers clone the `Arc`, a reload replaces it whole.
    engine: RwLock<Arc<PolicyEngine>>,
    /// The identity and API entities, rebuilt when the registry is
    /// replaced (identities reload without a restart).
    entities: RwLock<(tessera_core::identity::RegistryVersion, Arc<PolicyEntities>)>,
    source: Option<PathBuf>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
    /// Decisions of repeated questions, stamped with the policy set and the
    /// registry version they were made under (see [`DecisionCache`]).
    decisions: DecisionCache,
}

impl PolicyState {
    pub(super) fn new(
        setup: PolicySetup,
        registry: &IdentityRegistry,
        catalog: &ApiCatalog,
    ) -> Result<Self, PolicyError> {
        Ok(Self {
            engine: RwLock::new(setup.engine),
            entities: RwLock::new((registry.version(), Arc::new(PolicyEntities::new(registry, catalog)?))),
            source: setup.source,
            reloading: tokio::sync::Mutex::new(()),
            decisions: DecisionCache::default(),
        })
    }

    /// The entities of the registry as it is now.
    fn entities(&self, registry: &IdentityRegistry, catalog: &ApiCatalog) -> Result<Arc<PolicyEntities>, PolicyError> {
        {
            let cached = self.entities.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            if cached.0.is_current(registry) {
                return Ok(cached.1.clone());
            }
        }
        let version = registry.version();
        let fresh = Arc::new(PolicyEntities::new(registry, catalog)?);
        *self.entities.write().unwrap_or_else(std::sync::PoisonError::into_inner) = (version, fresh.clone());
        Ok(fresh)
    }

    /// Forgets every cached decision (a policy reload, a quarantine).
    pub(super) fn forget_decisions(&self) {
        self.decisions.clear();
    }

    fn engine(&self) -> Arc<PolicyEngine> {
        self.engine
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Proof that policy allowed one request: built only by [`Broker::authorize`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyAllowed {
    action: Action,
    policy_ids: Vec<Arc<str>>,
    policy_hash: Arc<str>,
    approval_required: bool,
    max_ttl: Option<u32>,
    max_blast_radius: Option<u32>,
}

impl PolicyAllowed {
    /// The action allowed.
    pub fn action(&self) -> Action {
        self.action
    }

    /// The permits that allowed it.
    pub fn policy_ids(&self) -> &[Arc<str>] {
        &self.policy_ids
    }

    /// The hash of the policy set that allowed it.
    pub fn policy_hash(&self) -> &str {
        &self.policy_hash
    }

    /// A permit says a person must approve first (`@approval("required")`).
    pub fn approval_required(&self) -> bool {
        self.approval_required
    }

    /// The smallest `@max_ttl` of the permits, in seconds.
    pub fn max_ttl(&self) -> Option<u32> {
        self.max_ttl
    }

    /// The smallest `@max_blast_radius` of the permits.
    pub fn max_blast_radius(&self) -> Option<u32> {
        self.max_blast_radius
    }

    /// Writes the deciding policies and the set's hash into `event`.
    pub fn stamp(&self, event: &mut AuditEvent) {
        event.policy_ids = self.policy_ids.iter().map(ToString::to_string).collect();
        event.policy_hash = Some(self.policy_hash.to_string());
    }

    /// `lifetime` shortened to the policy's `@max_ttl`, if that is shorter.
    pub fn cap(&self, lifetime: Lifetime) -> Lifetime {
        match self.max_ttl.and_then(|max| Ttl::from_secs(u64::from(max)).ok()) {
            Some(max) if max < lifetime.ttl => Lifetime {
                ttl: max,
                issued_at: lifetime.issued_at,
                expires_at: lifetime.issued_at + max.as_duration(),
            },
            _ => lifetime,
        }
    }
}

/// Why policy did not allow a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyRefusal {
    /// Policy denied it.
    #[error("{action} denied by policy: {}", .reasons.join("; "))]
    Denied {
        /// The action.
        action: Action,
        /// Why (a forbid's `@reason`, or that no permit matched).
        reasons: Vec<String>,
        /// The forbids that matched.
        policy_ids: Vec<Arc<str>>,
        /// The set that decided.
        policy_hash: Arc<str>,
    },
    /// Policy allows it only once a person approves, and this broker cannot
    /// hold requests for approval.
    #[error("{action} needs a person's approval (policies: {}), and approvals are not available", ids(.policy_ids))]
    ApprovalRequired {
        /// The action.
        action: Action,
        /// The permits asking for approval.
        policy_ids: Vec<Arc<str>>,
        /// The set that decided.
        policy_hash: Arc<str>,
    },
    /// The question is too large to evaluate.
    #[error(transparent)]
    Context(#[from] PolicyError),
    /// A reload was refused; the policy in force stays.
    #[error("policy reload refused, the policy in force stays: {0}")]
    Reload(PolicyLoadError),
    /// Nothing to reload from.
    #[error("policy reload: no [policy] dir is configured; the compiled-in baseline is in force")]
    NoSource,
}

fn ids(ids: &[Arc<str>]) -> String {
    ids.iter().map(|i| format!("`{i}`")).collect::<Vec<_>>().join(", ")
}

impl PolicyRefusal {
    /// Transport-free classification.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Denied { .. } | Self::ApprovalRequired { .. } => ErrorKind::PermissionDenied,
            Self::Context(e) => e.kind(),
            Self::Reload(_) | Self::NoSource => ErrorKind::FailedPrecondition,
        }
    }

    /// Writes the deciding policies and the set's hash into `event`.
    pub fn stamp(&self, event: &mut AuditEvent) {
        if let Self::Denied {
            policy_ids,
            policy_hash,
            ..
        }
        | Self::ApprovalRequired {
            policy_ids,
            policy_hash,
            ..
        } = self
        {
            event.policy_ids = policy_ids.iter().map(ToString::to_string).collect();
            event.policy_hash = Some(policy_hash.to_string());
        }
    }
}

/// Stamps `event` with the policies behind `err`, when policy refused.
pub(super) fn stamp_refusal(event: &mut AuditEvent, err: &BrokerError) {
    if let BrokerError::Policy(refusal) = err {
        refusal.stamp(event);
    }
}

impl Broker {
    /// Asks policy about `query` for `who`. Neither audits nor counts the
    /// denial: the caller records it with what it knows of the request
    /// (admin and verifier calls use [`Broker::authorize`], which does).
    pub fn ask_policy(&self, who: &VerifiedIdentity, query: &PolicyQuery<'_>) -> Result<PolicyAllowed, BrokerError> {
        let engine = self.policy.engine();
        let action = query.action();
        let now = self.clock.now();
        // Stamped before the entities are read: a registry change in between
        // makes a stamp no later read matches, never a stale hit.
        let stamp = DecisionStamp::new(engine.hash(), &self.registry);
        let key = engine.decision_key(who, query, now);
        let cached = key.as_ref().and_then(|key| self.policy.decisions.get(&stamp, key));
        let decided = match cached {
            Some(decision) => Ok(decision),
            None => {
                let entities = self
                    .policy
                    .entities(&self.registry, &self.catalog)
                    .map_err(PolicyRefusal::from)?;
                let decided = engine.authorize(&entities, who, query, now);
                if let (Some(key), Ok(decision)) = (key, &decided) {
                    self.policy.decisions.put(stamp, key, decision.clone());
                }
                decided
            }
        };
        match decided {
            Ok(PolicyDecision::Allow {
                policy_ids,
                approval_required,
                max_ttl,
                max_blast_radius,
                policy_hash,
            }) => Ok(PolicyAllowed {
                action,
                policy_ids,
                policy_hash,
                approval_required,
                max_ttl,
                max_blast_radius,
            }),
            Ok(PolicyDecision::Deny {
                policy_ids,
                reasons,
                policy_hash,
            }) => {
                tracing::debug!(
                    event = "policy_denied",
                    identity = %who.id(),
                    action = %action,
                    policies = ?policy_ids,
                    reasons = ?reasons,
                    "policy denied"
                );
                Err(PolicyRefusal::Denied {
                    action,
                    reasons,
                    policy_ids,
                    policy_hash,
                }
                .into())
            }
            Err(e) => Err(PolicyRefusal::Context(e).into()),
        }
    }

    /// Asks policy whether `who` may make the admin or verifier call `op`,
    /// once, inside the use case. A refusal is recorded here: audited as
    /// `admin_denied` (reason `"<Operation>: ..."`), counted in
    /// `tessera_decisions_total{operation="operator_rpc"}` and toward the
    /// anomaly rule.
    pub async fn authorize(&self, who: &VerifiedIdentity, op: Operation) -> Result<PolicyAllowed, BrokerError> {
        match self.ask_policy(who, &PolicyQuery::Operation(op)) {
            Ok(allowed) => Ok(allowed),
            Err(e) => {
                let denial = self
                    .denial(AuditKind::AdminDenied, Some(who))
                    .metric("operator_rpc")
                    .counted()
                    .reason(format!("{}: {e}", op.action()));
                self.deny(denial, e).await
            }
        }
    }

    /// Asks policy about a classified RequestToken in `task`: the class
    /// policy sees is the one [`tessera_core::issuance::plan_grant`] plans with.
    pub fn authorize_token_request(
        &self,
        who: &VerifiedIdentity,
        task: &Task,
        classified: &ClassifiedRequest<'_>,
    ) -> Result<PolicyAllowed, BrokerError> {
        let req = classified.request();
        let facts = TokenFacts {
            audience: &req.audience,
            scopes: &req.scopes,
            class: classified.class(),
            high_impact: self.high_impact(&req.audience, &req.scopes),
            requested_ttl: req.ttl.unwrap_or(self.settings.ttl.default),
            delegation: None,
            blast_radius: None,
            requester: None,
            // What the token will carry: the limit asked, else the task's
            // for the audience (a wider one is refused by the plan).
            tools: req
                .tools
                .as_ref()
                .or_else(|| tessera_core::authz::for_server(&task.tools, req.audience.as_str())),
        };
        self.ask_policy(
            who,
            &PolicyQuery::Token {
                action: TokenAction::Request,
                task,
                facts,
            },
        )
    }

    /// Whether any of `scopes` is high-impact (payments, deletions,
    /// permission changes), by the catalog's `high_impact` flags.
    pub fn high_impact(&self, audience: &Audience, scopes: &BTreeSet<Scope>) -> bool {
        !self.catalog.high_impact_scopes(audience, scopes).is_empty()
    }

    /// Whether a decision of `query` for `who` is cached now (tests).
    #[cfg(test)]
    pub(crate) fn decision_cached(&self, who: &VerifiedIdentity, query: &PolicyQuery<'_>) -> bool {
        let engine = self.policy.engine();
        let stamp = DecisionStamp::new(engine.hash(), &self.registry);
        engine
            .decision_key(who, query, self.clock.now())
            .is_some_and(|key| self.policy.decisions.get(&stamp, &key).is_some())
    }

    /// The hash of the policy set in force.
    pub fn policy_hash(&self) -> Arc<str> {
        self.policy.engine().hash().clone()
    }

    /// ReloadPolicy (operator; `who` is `None` for SIGHUP): reads the policy
    /// directory again, validates it, and swaps it in whole. A file that does
    /// not parse or validate is refused with its file and line, and the set
    /// in force stays. Audited as `policy_reloaded`, allowed or denied.
    /// Returns the new set's hash and number of policies.
    pub async fn reload_policy(&self, who: Option<&VerifiedIdentity>) -> Result<(Arc<str>, usize), BrokerError> {
        let allowed = match who {
            Some(who) => Some(self.authorize(who, Operation::ReloadPolicy).await?),
            None => None,
        };
        let _one_at_a_time = self.policy.reloading.lock().await;
        let old = self.policy.engine();
        let loaded = match &self.policy.source {
            None => Err(PolicyRefusal::NoSource),
            Some(dir) => {
                let dir = dir.clone();
                // Reading and validating is CPU and file work: off the async workers.
                match tokio::task::spawn_blocking(move || read_policy_files(&dir).and_then(|f| PolicyEngine::load(&f)))
                    .await
                {
                    Ok(Ok(engine)) => Ok(Arc::new(engine)),
                    Ok(Err(e)) => Err(PolicyRefusal::Reload(e)),
                    Err(e) => Err(PolicyRefusal::Reload(PolicyLoadError::Read {
                        path: "policy".into(),
                        message: format!("reload task failed: {e}"),
                    })),
                }
            }
        };
        let mut event = self.event(AuditKind::PolicyReloaded, Outcome::Allow, who);
        if let Some(allowed) = &allowed {
            allowed.stamp(&mut event);
        }
        match loaded {
            Ok(engine) => {
                let (hash, count) = (engine.hash().clone(), engine.len());
                event.reason = Some(format!(
                    "{} policies from {}; was {}",
                    count,
                    engine.files().join(", "),
                    old.hash()
                ));
                event.policy_hash = Some(hash.to_string());
                event.count = Some(count as u64);
                // Audited before it takes effect: an unrecorded policy never decides.
                self.audit(event).await?;
                *self
                    .policy
                    .engine
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = engine;
                self.policy.forget_decisions();
                metrics::counter!(POLICY_RELOADS, "result" => "ok").increment(1);
                tracing::info!(event = "policy_reloaded", policy_hash = %hash, policies = count, old_hash = %old.hash(), "policy reloaded");
                Ok((hash, count))
            }
            Err(refusal) => {
                metrics::counter!(POLICY_RELOADS, "result" => "refused").increment(1);
                tracing::error!(event = "policy_reload_refused", error = %refusal, policy_hash = %old.hash(), "policy reload refused; the policy in force stays");
                event.policy_hash = Some(old.hash().to_string());
                self.deny(super::record::Denial::of(event, who), refusal.into()).await
            }
        }
    }
}

/// Reloads the policy on every SIGHUP until dropped. A refused reload is
/// logged, audited and counted; the policy in force stays.
#[derive(Debug)]
pub struct ReloadOnSighup(Option<tokio::task::JoinHandle<()>>);

impl Drop for ReloadOnSighup {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// Starts reloading `broker`'s policy on SIGHUP.
pub fn reload_on_sighup(broker: Arc<Broker>) -> ReloadOnSighup {
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reload the policy with `tessera policy reload`");
            return ReloadOnSighup(None);
        }
    };
    ReloadOnSighup(Some(tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the policy");
            // Errors were logged and audited by reload_policy.
            let _ = broker.reload_policy(None).await;
        }
    })))
}

/// Reloads the policy when its files change, until dropped.
#[derive(Debug)]
pub struct ReloadOnChange(Option<tokio::task::JoinHandle<()>>);

impl Drop for ReloadOnChange {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// Starts re-reading `broker`'s policy directory every `every` and reloading
/// the set when a file's name or text differs from the last look (`[policy]
/// watch`). Texts, not mtimes, are compared: a rewrite within the same
/// second is seen, and the kubelet's swap of a ConfigMap volume (a new
/// directory behind a symlink) is seen once, whatever its timestamps. A
/// change that does not validate is refused, logged and audited once, like a
/// SIGHUP reload; the set in force stays until the files change again. A
/// directory that cannot be read is looked at again next time.
pub fn reload_on_change(broker: Arc<Broker>, every: std::time::Duration) -> ReloadOnChange {
    let Some(dir) = broker.policy.source.clone() else {
        return ReloadOnChange(None);
    };
    ReloadOnChange(Some(tokio::spawn(async move {
        // INVARIANT: the set in force was loaded from these files at start;
        // a change between that load and this first look is missed until the
        // next change (SIGHUP or `tessera policy reload` pick it up).
        let mut seen = fingerprint(&dir).await;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let now = fingerprint(&dir).await;
            if now.is_some() && now != seen {
                seen = now;
                tracing::info!("policy files changed: reloading the policy");
                // Errors were logged and audited by reload_policy.
                let _ = broker.reload_policy(None).await;
            }
        }
    })))
}

/// A digest of the policy files' names and texts; `None` if they cannot be read.
async fn fingerprint(dir: &std::path::Path) -> Option<[u8; 32]> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let files = read_policy_files(&dir).ok()?;
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        for file in &files {
            // Length-prefixed, so no two different sets hash alike.
            for part in [file.name.as_bytes(), file.text.as_bytes()] {
                digest.update(&(part.len() as u64).to_be_bytes());
                digest.update(part);
            }
        }
        digest.finish().as_ref().try_into().ok()
    })
    .await
    .ok()
    .flatten()
}

#[cfg(test)]
mod tests {
    use tessera_core::audit::AuditKind;

    use tessera_core::identity::SpiffeId;

    use super::*;
    use crate::broker::testing::{AGENT, Fixture, OPERATOR};

    #[tokio::test]
    async fn a_reload_without_a_policy_directory_is_refused_and_audited() {
        let f = Fixture::new().await;
        let before = f.broker.policy_hash();
        let refused = f.broker.reload_policy(Some(&f.who(OPERATOR))).await;
        assert_eq!(refused.err().map(|e| e.kind()), Some(ErrorKind::FailedPrecondition));
        let record = f.audit.last();
        assert_eq!(
            (record.event, record.decision),
            (AuditKind::PolicyReloaded, Outcome::Deny)
        );
        assert_eq!(f.broker.policy_hash(), before);
        let refused = f.broker.reload_policy(Some(&f.who(AGENT))).await;
        assert_eq!(refused.err().map(|e| e.kind()), Some(ErrorKind::PermissionDenied));
        assert_eq!(f.audit.last().event, AuditKind::AdminDenied);
    }

    #[tokio::test]
    async fn a_cached_decision_is_gone_after_any_registry_change() {
        use tessera_core::identity::{Identity, IdentityKind, IdentityRegistry};

        let f = Fixture::new().await;
        let who = f.who(OPERATOR);
        let query = PolicyQuery::Operation(Operation::ListGrants);
        let registry = |kind: IdentityKind, owner: &str| {
            IdentityRegistry::new(f.broker.registry().identities().into_iter().map(|mut i: Identity| {
                if i.id.as_str() == AGENT {
                    i.kind = kind;
                    i.owner = owner.to_owned();
                }
                i
            }))
        };
        let agent = SpiffeId::parse(AGENT).unwrap();
        let changes: [(&str, &dyn Fn()); 4] = [
            ("disable", &|| {
                f.broker.registry().disable_at_runtime(&agent);
            }),
            ("enable", &|| {
                f.broker.registry().enable_at_runtime(&agent);
            }),
            ("kind", &|| {
                f.broker.registry().replace(&registry(IdentityKind::Service, "team"))
            }),
            ("owner", &|| {
                f.broker
                    .registry()
                    .replace(&registry(IdentityKind::Service, "elsewhere"))
            }),
        ];
        assert!(!f.broker.decision_cached(&who, &query));
        for (change, apply) in changes {
            f.broker.ask_policy(&who, &query).unwrap();
            assert!(
                f.broker.decision_cached(&who, &query),
                "asked again: served from the cache"
            );
            apply();
            assert!(!f.broker.decision_cached(&who, &query), "still cached after a {change}");
        }
    }

    #[tokio::test]
    async fn a_cached_decision_is_gone_after_a_policy_reload() {
        let dir = std::env::temp_dir().join(format!(
            "tessera-policy-cache-{}-{}",
            std::process::id(),
            tessera_core::grant::random_id().unwrap()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("baseline.cedar"), tessera_core::policy::BASELINE).unwrap();
        let mut settings = crate::broker::testing::settings();
        settings.policy = PolicySetup {
            engine: Arc::new(read_policy_files(&dir).and_then(|f| PolicyEngine::load(&f)).unwrap()),
            source: Some(dir.clone()),
        };
        let f = Fixture::with(settings).await;
        let who = f.who(OPERATOR);
        let query = PolicyQuery::Operation(Operation::ListGrants);
        f.broker.ask_policy(&who, &query).unwrap();
        assert!(f.broker.decision_cached(&who, &query));
        // The same files again: still every decision is dropped.
        f.broker.reload_policy(Some(&who)).await.unwrap();
        assert!(!f.broker.decision_cached(&who, &query));
        f.broker.ask_policy(&who, &query).unwrap();
        // A set that forbids it now: the allow cached before is not served.
        std::fs::write(
            dir.join("deny.cedar"),
            "@id(\"no-listing\") forbid (principal, action == Action::\"ListGrants\", resource);\n",
        )
        .unwrap();
        f.broker.reload_policy(Some(&who)).await.unwrap();
        let denied = f.broker.ask_policy(&who, &query);
        assert!(
            matches!(denied, Err(BrokerError::Policy(PolicyRefusal::Denied { .. }))),
            "{denied:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn policy_allows_by_role_and_stamps_its_decision() {
        let f = Fixture::new().await;
        let allowed = f
            .broker
            .ask_policy(&f.who(OPERATOR), &PolicyQuery::Operation(Operation::ListGrants))
            .unwrap();
        assert_eq!(allowed.action(), Action::ListGrants);
        assert!(!allowed.policy_ids().is_empty());
        let denied = f
            .broker
            .ask_policy(&f.who(AGENT), &PolicyQuery::Operation(Operation::ListGrants));
        assert!(matches!(denied, Err(BrokerError::Policy(PolicyRefusal::Denied { .. }))));
    }
}
