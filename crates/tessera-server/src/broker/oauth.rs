//! The HTTPS token endpoint's grants (RFC 7523 `jwt-bearer` and
//! `client_credentials`, RFC 8693 token exchange): which grant type and
//! client authentication a request used, stamped on every audit record the
//! use cases write while serving it (as a console session is, see
//! `Broker::event`), and the refusals the facade decides itself (a
//! malformed `authorization_details`, a `resource` it cannot have, a DPoP
//! proof without a valid nonce), audited like any other token refusal.
//!
//! The token itself always comes from [`Broker::request_token`]: the same
//! decision, record, audit, caps and revocation as over gRPC.

use tessera_core::audit::AuditKind;
use tessera_core::identity::VerifiedIdentity;

use super::record::DenialLog;
use super::{Broker, BrokerError};
use crate::status::FieldError;

/// How one token-endpoint request was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OAuthGrant {
    /// `jwt-bearer`, `client_credentials` or `token-exchange`.
    pub grant_type: &'static str,
    /// `tls_client_auth`, `private_key_jwt`, `client_assertion` (a JWT of a
    /// trusted attestation issuer as the client assertion) or `none`.
    pub client_auth: &'static str,
}

tokio::task_local! {
    static GRANT: OAuthGrant;
}

/// The grant of the token-endpoint request being served, if any.
pub fn current_grant() -> Option<OAuthGrant> {
    GRANT.try_with(|g| *g).ok()
}

/// Runs `f` (one token-endpoint request) as made by `grant`.
pub async fn in_grant<F: std::future::Future>(grant: OAuthGrant, f: F) -> F::Output {
    GRANT.scope(grant, f).await
}

/// What the facade knows of a refused request, for its audit record.
#[derive(Debug, Clone, Default)]
pub struct RefusedAsk {
    /// The task named, if any.
    pub task_id: Option<String>,
    /// The `resource` asked for, if any.
    pub audience: Option<String>,
    /// The scopes asked for.
    pub scopes: Vec<String>,
}

impl Broker {
    /// Records a token-endpoint request of the authenticated `who` that the
    /// facade refused before the use case (`field` names the parameter,
    /// `message` says why): a `token_denied` record counted toward the
    /// anomaly rule. Returns the error to answer with: `Field` once
    /// recorded, or the audit failure.
    pub async fn oauth_refused(
        &self,
        who: &VerifiedIdentity,
        ask: &RefusedAsk,
        field: &'static str,
        message: String,
    ) -> BrokerError {
        self.oauth_denied(Some(who), ask, field, message, true).await
    }

    /// Records a token-endpoint request answered with a DPoP nonce
    /// challenge (RFC 9449 section 8): a protocol step, not a refusal of
    /// anyone, so it is audited (by whoever authenticated, if anyone yet)
    /// but never counted toward the anomaly rule.
    pub async fn oauth_nonce_challenged(
        &self,
        who: Option<&VerifiedIdentity>,
        ask: &RefusedAsk,
        message: String,
    ) -> BrokerError {
        self.oauth_denied(who, ask, "DPoP", message, false).await
    }

    async fn oauth_denied(
        &self,
        who: Option<&VerifiedIdentity>,
        ask: &RefusedAsk,
        field: &'static str,
        message: String,
        counted: bool,
    ) -> BrokerError {
        let mut denial = self
            .denial(AuditKind::TokenDenied, who)
            .logged(DenialLog::Token)
            .metric("oauth_token")
            .counted_if(counted);
        denial.event.task_id.clone_from(&ask.task_id);
        denial.event.audience.clone_from(&ask.audience);
        denial.event.scopes.clone_from(&ask.scopes);
        match self
            .deny::<()>(denial, BrokerError::Field(FieldError::new(field, message)))
            .await
        {
            Err(e) => e,
            Ok(()) => BrokerError::Field(FieldError::new(field, "refused")),
        }
    }

    /// Records single use of `id` in the shared replay cache until `until`
    /// (see [`tessera_store::ReplayCache::first_use`]): `Ok(true)` the first time.
    pub async fn first_use(
        &self,
        namespace: &'static str,
        id: &str,
        until: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, tessera_store::StoreError> {
        self.replay.first_use(namespace, id, until).await
    }

    /// Whether task `task`'s ceiling names `audience` at all (to tell an
    /// RFC 8707 `invalid_target` from an `invalid_scope` after a refusal).
    /// `false` when the task cannot be read.
    pub async fn task_names_audience(
        &self,
        task: &tessera_core::task::TaskId,
        audience: &tessera_core::task::Audience,
    ) -> bool {
        match self.load_task(task).await {
            Ok(task) => task.ceiling.0.contains_key(audience),
            Err(_) => false,
        }
    }
}
