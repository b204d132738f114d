//! The JWT attestor's I/O half: each issuer's keys (from a file or an HTTPS
//! URL), cached and refreshed at a bounded rate, and single use of `jti`
//! through the shared [`ReplayCache`]. What a token must satisfy is decided
//! by `tessera_core::attestation::jwt`.
//!
//! Key cache, per issuer:
//! - keys are (re)loaded when they are older than `jwks_refresh`, or when a
//!   token names a `kid` they lack, but never more than once per
//!   `jwks_min_refresh` (an attacker minting random `kid`s cannot make the
//!   broker hammer the issuer); one load at a time per issuer;
//! - a failed load (redirect, oversized or dripping body, invalid JSON,
//!   duplicate `kid`, ...) keeps the last good keys, for at most
//!   `jwks_max_stale` after they were loaded; after that every token of the
//!   issuer is refused until a load succeeds (fail closed).

use std::sync::Arc;
use std::time::SystemTime;

use chrono::{DateTime, Utc};
use tessera_core::attestation::jwt::{self, JwtAttestation, JwtError};
use tessera_core::attestation::{IssuerKeys, IssuerPolicy};
use tessera_store::{ReplayCache, StoreError};
use tokio::time::Instant;

use super::config::{JwksSource, JwtIssuerConfig};
use super::fetch;

/// Replay-cache namespace of attestation JWT `jti`s.
pub const REPLAY_NAMESPACE: &str = "attestation-jwt";

/// Why a JWT caller was not attested.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwtRefusal {
    /// The token itself was refused.
    #[error(transparent)]
    Token(#[from] JwtError),
    /// The issuer's keys are unavailable (never loaded, or stale beyond the bound).
    #[error("keys of issuer `{0}` are unavailable")]
    Keys(String),
    /// The `jti` was used before.
    #[error("attestation token was already used (`jti` of issuer `{0}`)")]
    Replayed(String),
    /// The replay cache could not answer: refused as UNAVAILABLE, never accepted unchecked.
    #[error("replay cache unavailable: {0}")]
    Store(StoreError),
}

impl JwtRefusal {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Token(e) => e.reason(),
            Self::Keys(_) => "jwks",
            Self::Replayed(_) => "replay",
            Self::Store(_) => "store",
        }
    }
}

/// Why an issuer's keys could not be loaded at start.
#[derive(Debug, thiserror::Error)]
#[error("config key `attestation.jwt.issuers[{index}]`: {message}")]
pub struct IssuerError {
    index: usize,
    message: String,
}

#[derive(Default)]
struct KeyState {
    keys: Option<Arc<IssuerKeys>>,
    loaded_at: Option<Instant>,
    last_attempt: Option<Instant>,
    /// mtime of a JWKS file when last loaded.
    file_mtime: Option<SystemTime>,
}

struct KeyCache {
    config: JwtIssuerConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    state: tokio::sync::Mutex<KeyState>,
}

impl KeyCache {
    async fn load(&self) -> Result<IssuerKeys, String> {
        let bytes = match &self.config.jwks {
            JwksSource::File(path) => {
                let meta = tokio::fs::metadata(path)
                    .await
                    .map_err(|e| format!("`{}`: {e}", path.display()))?;
                if meta.len() > self.config.max_bytes as u64 {
                    return Err(format!(
                        "`{}` is larger than {} bytes",
                        path.display(),
                        self.config.max_bytes
                    ));
                }
                tokio::fs::read(path)
                    .await
                    .map_err(|e| format!("`{}`: {e}", path.display()))?
            }
            JwksSource::Url { url, .. } => {
                let tls = self.tls.clone().ok_or("no TLS roots for the jwks url")?;
                fetch::fetch(url, tls, self.config.max_bytes, self.config.fetch_timeout)
                    .await
                    .map_err(|e| e.to_string())?
            }
        };
        IssuerKeys::from_json(&bytes).map_err(|e| e.to_string())
    }

    fn file_mtime(&self) -> Option<SystemTime> {
        match &self.config.jwks {
            JwksSource::File(path) => std::fs::metadata(path).and_then(|m| m.modified()).ok(),
            JwksSource::Url { .. } => None,
        }
    }

    /// The issuer's keys, loading them if they are missing, old, changed
    /// on disk, or lack `kid`, within the rate bound.
    async fn keys_for(&self, kid: &str) -> Result<Arc<IssuerKeys>, JwtRefusal> {
        let name = &self.config.policy.name;
        let mut state = self.state.lock().await;
        let now = Instant::now();
        let fresh = state
            .loaded_at
            .is_some_and(|t| now.duration_since(t) < self.config.refresh)
            && state.file_mtime == self.file_mtime();
        let has_kid = state.keys.as_ref().is_some_and(|k| k.contains(kid));
        let may_try = state
            .last_attempt
            .is_none_or(|t| now.duration_since(t) >= self.config.min_refresh);
        if !(fresh && has_kid) && may_try {
            state.last_attempt = Some(now);
            let mtime = self.file_mtime();
            match self.load().await {
                Ok(keys) => {
                    tracing::info!(issuer = %name, keys = keys.len(), "issuer keys loaded");
                    metrics::counter!("tessera_jwks_loads_total", "issuer" => name.clone(), "result" => "ok")
                        .increment(1);
                    state.keys = Some(Arc::new(keys));
                    state.loaded_at = Some(Instant::now());
                    state.file_mtime = mtime;
                }
                Err(e) => {
                    tracing::warn!(issuer = %name, error = %e, "issuer keys could not be loaded; keeping the last good keys within jwks_max_stale");
                    metrics::counter!("tessera_jwks_loads_total", "issuer" => name.clone(), "result" => "error")
                        .increment(1);
                }
            }
        }
        match (&state.keys, state.loaded_at) {
            (Some(keys), Some(at)) if now.duration_since(at) <= self.config.max_stale => Ok(keys.clone()),
            _ => Err(JwtRefusal::Keys(name.clone())),
        }
    }
}

/// Verifies attestation JWTs from the configured issuers.
pub struct JwtAttestor {
    policies: Vec<IssuerPolicy>,
    caches: Vec<KeyCache>,
    replay: Arc<dyn ReplayCache>,
}

impl std::fmt::Debug for JwtAttestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAttestor")
            .field("issuers", &self.policies.iter().map(|p| &p.name).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Checks what can be checked before serving: roots of URL issuers, and
/// that a JWKS file holds a usable key set.
pub fn check(issuers: &[JwtIssuerConfig]) -> Result<(), IssuerError> {
    for (index, issuer) in issuers.iter().enumerate() {
        let err = |message: String| IssuerError { index, message };
        match &issuer.jwks {
            JwksSource::File(path) => {
                let bytes = std::fs::read(path).map_err(|e| err(format!("jwks_file `{}`: {e}", path.display())))?;
                IssuerKeys::from_json(&bytes).map_err(|e| err(format!("jwks_file `{}`: {e}", path.display())))?;
            }
            JwksSource::Url { ca, .. } => {
                fetch::client_config(ca).map_err(|e| err(e.to_string()))?;
            }
        }
    }
    Ok(())
}

impl JwtAttestor {
    /// An attestor for `issuers`, checking `jti`s in `replay`.
    pub fn new(issuers: Vec<JwtIssuerConfig>, replay: Arc<dyn ReplayCache>) -> Result<Self, IssuerError> {
        check(&issuers)?;
        let mut caches = Vec::new();
        for (index, config) in issuers.into_iter().enumerate() {
            let tls = match &config.jwks {
                JwksSource::Url { ca, .. } => Some(fetch::client_config(ca).map_err(|e| IssuerError {
                    index,
                    message: e.to_string(),
                })?),
                JwksSource::File(_) => None,
            };
            caches.push(KeyCache {
                config,
                tls,
                state: tokio::sync::Mutex::new(KeyState::default()),
            });
        }
        Ok(Self {
            policies: caches.iter().map(|c| c.config.policy.clone()).collect(),
            caches,
            replay,
        })
    }

    /// Loads every issuer's keys once (at start; failures are logged and
    /// retried when a token needs them).
    pub async fn prefetch(&self) {
        for cache in &self.caches {
            let _ = cache.keys_for("").await;
        }
    }

    /// Verifies `token` at `now` and, for a single-use issuer, records its `jti`.
    pub async fn attest(&self, token: &str, now: DateTime<Utc>) -> Result<JwtAttestation, JwtRefusal> {
        let parsed = jwt::parse(token, &self.policies)?;
        let cache = self
            .caches
            .get(parsed.issuer_index())
            .ok_or(JwtRefusal::Token(JwtError::Issuer))?;
        let keys = cache.keys_for(parsed.kid()).await?;
        let attested = jwt::verify(&parsed, &cache.config.policy, &keys, now)?;
        if let Some(jti) = &attested.single_use_jti {
            let id = format!("{}:{jti}", attested.issuer);
            match self
                .replay
                .first_use(REPLAY_NAMESPACE, &id, attested.replay_until)
                .await
            {
                Ok(true) => {}
                Ok(false) => return Err(JwtRefusal::Replayed(attested.issuer.clone())),
                Err(e) => return Err(JwtRefusal::Store(e)),
            }
        }
        Ok(attested)
    }
}
