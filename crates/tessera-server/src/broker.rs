//! The broker's use cases: each one attests nothing and parses nothing (the
//! gRPC edge did both), asks core for the decision, applies it to the store,
//! and logs the outcome. Tokens and keys never reach a log line.

use std::sync::Arc;
use std::time::Duration;

use tessera_core::ErrorKind;
use tessera_core::catalog::ApiCatalog;
use tessera_core::clock::Clock;
use tessera_core::grant::{Grant, GrantId, GrantState, RandomError};
use tessera_core::identity::{AttestationMethod, IdentityError, IdentityRegistry, Role, SpiffeId, VerifiedIdentity};
use tessera_core::issuance::{self, IssuanceError, TokenRequest};
use tessera_core::orchestration::{self, OrchestrationError, StartTask, TaskLimits};
use tessera_core::task::{Task, TaskError, TaskId, TaskState};
use tessera_core::token::{ACCESS_TOKEN_TYP, AccessClaims, Jwks, JwsError, KeyError, SigningKey};
use tessera_core::ttl::TtlLimits;
use tessera_store::{FeedBatch, FeedPosition, GrantStore, PublishedKey, RevokeOutcome, StoreError, TaskEnded};

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
}

impl BrokerError {
    /// Transport-free classification.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Identity(e) => e.kind(),
            Self::Issuance(e) => e.kind(),
            Self::Orchestration(e) => e.kind(),
            Self::Task(e) => e.kind(),
            Self::Store(e) => e.kind(),
            Self::GrantNotFound(_) => ErrorKind::NotFound,
            Self::NotHolder(_) => ErrorKind::PermissionDenied,
            Self::Signing(_) | Self::Random(_) => ErrorKind::Internal,
        }
    }
}

/// A minted token and its record. `token` is a secret: `Debug` redacts it.
pub struct Issued {
    /// The compact JWS.
    pub token: String,
    /// Its recorded grant.
    pub grant: Grant,
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
}

/// The broker: state, rules and the signing key, shared by every RPC.
pub struct Broker {
    store: Arc<dyn GrantStore>,
    registry: IdentityRegistry,
    catalog: ApiCatalog,
    signer: SigningKey,
    clock: Arc<dyn Clock>,
    settings: BrokerSettings,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("signer", &self.signer)
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
    ) -> Result<Self, StoreError> {
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
        Ok(Self {
            store,
            registry,
            catalog,
            signer,
            clock,
            settings,
        })
    }

    /// Marks this replica's key as retiring: it stays in the JWKS until the
    /// last token it could have signed has expired.
    pub async fn retire_key(&self) -> Result<(), StoreError> {
        let now = self.clock.now();
        let keep = self.settings.ttl.max.as_duration() + chrono::Duration::seconds(self.settings.leeway_secs);
        let key = PublishedKey {
            jwk: self.signer.public_jwk().clone(),
            published_at: now,
            not_after: Some(now + keep),
        };
        self.store.publish_key(&key).await
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
        let task = orchestration::start_task(
            who,
            req,
            &self.registry,
            &self.catalog,
            parent.as_ref(),
            &self.settings.tasks,
            now,
        )?;
        self.store.create_task(&task).await?;
        tracing::info!(
            event = "task_started",
            task_id = %task.id,
            orchestrator = %who.id(),
            agents = task.agents.len(),
            deadline = %task.deadline,
            "task started"
        );
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
        orchestration::may_read_task(who, &task)?;
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
        let task = self.load_task(id).await?;
        match state {
            TaskState::Revoked => orchestration::require_role(who, Role::Operator)?,
            _ => orchestration::may_end_task(who, &task)?,
        }
        let ended = self.store.end_task(id, state, reason, self.clock.now()).await?;
        tracing::info!(
            event = if state == TaskState::Revoked { "task_revoked" } else { "task_completed" },
            task_id = %id,
            by = %who.id(),
            grants_revoked = ended.grants_revoked,
            children_ended = ended.children_ended.len(),
            reason,
            "task ended"
        );
        Ok(ended)
    }

    /// RequestToken: decide, sign, record. No token leaves unless its grant is recorded.
    pub async fn request_token(&self, who: &VerifiedIdentity, req: &TokenRequest) -> Result<Issued, BrokerError> {
        let now = self.clock.now();
        let task = self.load_task(&req.task_id).await?;
        let plan = match issuance::plan_grant(who, &task, &self.catalog, req, self.settings.ttl, now) {
            Ok(plan) => plan,
            Err(e) => {
                tracing::info!(
                    event = "token_denied",
                    subject = %who.id(),
                    task_id = %req.task_id,
                    audience = %req.audience,
                    reason = %e,
                    "token request denied"
                );
                return Err(e.into());
            }
        };
        let id = self.store.new_grant_id(&plan.task_id).await?;
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
            cnf: None,
            act: None,
        };
        let token = self
            .signer
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
            key_id: self.signer.kid().to_owned(),
            state: GrantState::Active,
            revoked_at: None,
            revocation_reason: None,
        };
        // INVARIANT: the token is returned only after its grant is recorded;
        // if recording fails the signed token is dropped here, unseen.
        self.store.record_grant(&grant, now).await?;
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
            "token issued"
        );
        Ok(Issued { token, grant })
    }

    /// ReleaseToken: the holder gives its grant back.
    pub async fn release(&self, who: &VerifiedIdentity, id: &GrantId) -> Result<RevokeOutcome, BrokerError> {
        let grant = self
            .store
            .grant(id)
            .await?
            .ok_or_else(|| BrokerError::GrantNotFound(id.clone()))?;
        if &grant.subject != who.id() {
            return Err(BrokerError::NotHolder(who.id().to_string()));
        }
        self.revoke(who, id, "released by holder").await
    }

    /// RevokeGrant (operator).
    pub async fn revoke_grant(
        &self,
        who: &VerifiedIdentity,
        id: &GrantId,
        reason: &str,
    ) -> Result<RevokeOutcome, BrokerError> {
        orchestration::require_role(who, Role::Operator)?;
        self.revoke(who, id, reason).await
    }

    async fn revoke(&self, who: &VerifiedIdentity, id: &GrantId, reason: &str) -> Result<RevokeOutcome, BrokerError> {
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
        require_any_role(who, &[Role::Verifier, Role::Operator])?;
        let now = self.clock.now();
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
        let matches = grant.subject.as_str() == claims.sub
            && grant.task_id.as_str() == claims.task_id
            && grant.audience.as_str() == claims.aud;
        // Expiry is judged on the grant with no leeway: introspection is authoritative.
        Ok((matches && grant.is_live_at(now)).then_some(claims))
    }

    /// WatchRevocations: one read of the feed.
    pub async fn read_revocations(
        &self,
        who: &VerifiedIdentity,
        after: Option<&FeedPosition>,
        max: usize,
        wait: Duration,
    ) -> Result<FeedBatch, BrokerError> {
        require_any_role(who, &[Role::Verifier, Role::Operator])?;
        Ok(self.store.read_revocations(after, max, wait).await?)
    }

    /// The current time on the broker's clock.
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.clock.now()
    }
}

fn require_any_role(who: &VerifiedIdentity, roles: &[Role]) -> Result<(), OrchestrationError> {
    match roles.iter().find(|r| who.identity().has_role(**r)) {
        Some(_) => Ok(()),
        None => orchestration::require_role(who, roles.first().copied().unwrap_or(Role::Operator)),
    }
}

fn log_rejected(e: &JwsError) {
    tracing::debug!(reason = %e, "introspected token rejected");
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
            },
        };
        let shown = format!("{issued:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains(r#"token: "<redacted>""#), "{shown}");
        assert!(shown.contains("g1") && shown.contains("spiffe://td/agent"), "{shown}");
    }
}
