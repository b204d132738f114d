//! The JWT attestor's I/O half: each issuer's keys (from a file or an HTTPS
//! URL), cached and refreshed at a bounded rate, and single use of `jti`
//! through the shared [`ReplayCache`]. What a token must satisfy is decided
//! by `tessera_core::attestation::jwt`.
//!
//! Key cache, per issuer:
//! - keys are (re)loaded when they are older than `jwks_refresh`, or when a
//!   token names a `kid` they lack, but never more than once per
//!   `jwks_min_refresh` (an attacker minting random `kid`s cannot make the
//!   broker hammer the issuer); one load at a time per issuer, and only a
//!   token whose `kid` the current keys lack waits for it (a routine
//!   refresh never holds up tokens the current keys can check);
//! - a failed load (redirect, oversized or dripping body, invalid JSON,
//!   duplicate `kid`, ...) keeps the last good keys, for at most
//!   `jwks_max_stale` after they were loaded; after that every token of the
//!   issuer is refused until a load succeeds (fail closed).

use std::sync::Arc;
use std::time::SystemTime;

use chrono::{DateTime, Utc};
use tessera_core::attestation::jwt::{self, JwtAttestation, JwtError};
use tessera_core::attestation::{IssuerKeys, IssuerPolicy};
use tessera_core::identity::SpiffeId;
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

pub(crate) struct KeyCache {
    config: JwtIssuerConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    state: std::sync::Mutex<KeyState>,
    /// Held by the one load in flight.
    loading: Arc<tokio::sync::Mutex<()>>,
    /// Loads attempted (for tests).
    attempts: std::sync::atomic::AtomicU64,
}

/// What [`KeyCache::keys_for`] should do, decided under the state lock.
enum Plan {
    /// The current keys do.
    Use,
    /// Load now (the rate bound allows it).
    Load,
    /// The keys lack the `kid` and a load is in flight: wait for it.
    Wait,
}

impl KeyCache {
    /// The key cache of an OAuth client's `jwks_uri` (`client_jwks_url`):
    /// the same bounded refresh, rate and staleness rules as an issuer's,
    /// with fixed settings (refresh 5 min, at most one fetch per 30 s,
    /// last good keys for 1 h, 5 s per fetch, 64 KiB).
    pub(crate) fn for_client(client: &SpiffeId, url: &str, ca: &std::path::Path) -> Result<Self, String> {
        let tls = fetch::client_config(ca).map_err(|e| e.to_string())?;
        let policy = IssuerPolicy {
            name: client.to_string(),
            issuer: client.to_string(),
            audience: String::new(),
            allow_multiple_audiences: false,
            algorithms: tessera_core::attestation::JwtAlgorithm::ALL.into_iter().collect(),
            max_age: jwt::CLIENT_ASSERTION_MAX_AGE,
            leeway: chrono::Duration::seconds(5),
            single_use_jti: true,
            // Only `name` is read by the cache; the assertion's own check
            // pins its subject to the client.
            mapping: tessera_core::attestation::ClaimMapping::pinned(client),
            trust_domains: std::iter::once(client.trust_domain().to_owned()).collect(),
        };
        Ok(Self::new(
            JwtIssuerConfig {
                policy,
                jwks: JwksSource::Url {
                    url: url.to_owned(),
                    ca: ca.to_owned(),
                },
                refresh: std::time::Duration::from_secs(300),
                min_refresh: std::time::Duration::from_secs(30),
                max_stale: std::time::Duration::from_secs(3600),
                fetch_timeout: std::time::Duration::from_secs(5),
                max_bytes: 64 * 1024,
            },
            Some(tls),
        ))
    }

    fn new(config: JwtIssuerConfig, tls: Option<Arc<rustls::ClientConfig>>) -> Self {
        Self {
            config,
            tls,
            state: std::sync::Mutex::new(KeyState::default()),
            loading: Arc::new(tokio::sync::Mutex::new(())),
            attempts: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, KeyState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn load(&self) -> Result<IssuerKeys, String> {
        self.attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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

    /// Decides, and when it says [`Plan::Load`] claims the attempt (so the
    /// rate bound holds however many tokens arrive at once).
    fn plan(&self, kid: &str, loader_busy: bool) -> Plan {
        let mtime = self.file_mtime();
        let mut state = self.state();
        let now = Instant::now();
        let fresh = state
            .loaded_at
            .is_some_and(|t| now.duration_since(t) < self.config.refresh)
            && state.file_mtime == mtime;
        let has_kid = state.keys.as_ref().is_some_and(|k| k.contains(kid));
        let may_try = state
            .last_attempt
            .is_none_or(|t| now.duration_since(t) >= self.config.min_refresh);
        if fresh && has_kid {
            Plan::Use
        } else if loader_busy {
            if has_kid { Plan::Use } else { Plan::Wait }
        } else if may_try {
            state.last_attempt = Some(now);
            Plan::Load
        } else {
            Plan::Use
        }
    }

    /// The issuer's keys, loading them if they are missing, old, changed
    /// on disk, or lack `kid`, within the rate bound.
    pub(crate) async fn keys_for(self: &Arc<Self>, kid: &str) -> Result<Arc<IssuerKeys>, JwtRefusal> {
        loop {
            let guard = self.loading.clone().try_lock_owned();
            match (self.plan(kid, guard.is_err()), guard) {
                (Plan::Use, _) => break,
                (Plan::Load, Ok(loading)) => {
                    // In a task of its own: a caller that gives up (its
                    // deadline, a reset stream) must not cancel a load whose
                    // attempt already counts against the rate bound.
                    let cache = Arc::clone(self);
                    let load = tokio::spawn(async move {
                        cache.refresh().await;
                        drop(loading);
                    });
                    let _ = load.await;
                    break;
                }
                // A load finished meanwhile: decide again with its keys.
                (Plan::Wait | Plan::Load, _) => drop(self.loading.lock().await),
            }
            if self.state().keys.as_ref().is_some_and(|k| k.contains(kid)) {
                break;
            }
            // Still lacking the kid after someone else's load: one more
            // round, within the rate bound (it then answers Use).
        }
        let state = self.state();
        match (&state.keys, state.loaded_at) {
            (Some(keys), Some(at)) if Instant::now().duration_since(at) <= self.config.max_stale => Ok(keys.clone()),
            _ => Err(JwtRefusal::Keys(self.config.policy.name.clone())),
        }
    }

    /// One load, with no lock but `loading` held across the I/O.
    async fn refresh(&self) {
        let name = &self.config.policy.name;
        let mtime = self.file_mtime();
        match self.load().await {
            Ok(keys) => {
                tracing::info!(issuer = %name, keys = keys.len(), "issuer keys loaded");
                metrics::counter!("tessera_jwks_loads_total", "issuer" => name.clone(), "result" => "ok").increment(1);
                let mut state = self.state();
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
}

/// Verifies attestation JWTs from the configured issuers.
pub struct JwtAttestor {
    policies: Vec<IssuerPolicy>,
    caches: Vec<Arc<KeyCache>>,
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
            caches.push(Arc::new(KeyCache::new(config, tls)));
        }
        Ok(Self {
            policies: caches.iter().map(|c| c.config.policy.clone()).collect(),
            caches,
            replay,
        })
    }

    /// Whether `iss` is exactly a configured issuer's.
    pub fn trusts_issuer(&self, iss: &str) -> bool {
        self.policies.iter().any(|p| p.issuer == iss)
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
        self.attest_as(token, now, None).await
    }

    /// The same attestation for a token presented as an OAuth assertion at
    /// the HTTPS token endpoint (RFC 7523): the same issuers, keys,
    /// algorithms, time checks and mapping, but its `aud` must be one of
    /// `audiences` and its `jti` is required and used once, whatever the
    /// issuer's `single_use_jti` (recorded in the same replay namespace as
    /// attestation tokens, so one `jti` serves one of the two, once).
    pub async fn attest_assertion(
        &self,
        token: &str,
        now: DateTime<Utc>,
        audiences: &[&str],
    ) -> Result<JwtAttestation, JwtRefusal> {
        self.attest_as(token, now, Some(audiences)).await
    }

    async fn attest_as(
        &self,
        token: &str,
        now: DateTime<Utc>,
        assertion_audiences: Option<&[&str]>,
    ) -> Result<JwtAttestation, JwtRefusal> {
        let parsed = jwt::parse(token, &self.policies)?;
        let cache = self
            .caches
            .get(parsed.issuer_index())
            .ok_or(JwtRefusal::Token(JwtError::Issuer))?;
        let keys = cache.keys_for(parsed.kid()).await?;
        let attested = match assertion_audiences {
            None => jwt::verify(&parsed, &cache.config.policy, &keys, now)?,
            Some(audiences) => jwt::verify_assertion(&parsed, &cache.config.policy, &keys, now, audiences)?,
        };
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

/// Longest a JWT attests one connection for (cut at the token's `exp` plus
/// leeway): after it the client sends a fresh token.
pub const JWT_SESSION_MAX: chrono::Duration = chrono::Duration::minutes(5);

/// One connection's attestation JWT session: the token that attested it
/// (by digest), whom it attested, and until when. Further calls on the same
/// connection with the same token are attested by the session, so a
/// single-use `jti` is burnt once per connection, not once per call, and a
/// copy of the token replayed on another connection is refused.
#[derive(Debug, Clone, Default)]
pub struct JwtSessionSlot(Arc<std::sync::Mutex<Option<JwtSession>>>);

#[derive(Debug, Clone)]
struct JwtSession {
    evidence: String,
    id: SpiffeId,
    until: DateTime<Utc>,
}

impl JwtSessionSlot {
    /// Whom the session attests for a token of digest `evidence` at `now`,
    /// if this connection was attested by that very token and the session
    /// has not ended.
    pub fn current(&self, evidence: &str, now: DateTime<Utc>) -> Option<SpiffeId> {
        let slot = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        slot.as_ref()
            .filter(|s| s.evidence == evidence && now < s.until)
            .map(|s| s.id.clone())
    }

    /// Starts the session for `attested` (the token of digest `evidence`).
    pub fn start(&self, evidence: &str, attested: &JwtAttestation, now: DateTime<Utc>) {
        let mut slot = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *slot = Some(JwtSession {
            evidence: evidence.to_owned(),
            id: attested.id.clone(),
            until: (now + JWT_SESSION_MAX).min(attested.replay_until),
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]

    use std::path::{Path, PathBuf};
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use base64::Engine as _;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
    use tessera_core::attestation::jwt::JwtAlgorithm;
    use tessera_core::attestation::mapping::ClaimMapping;

    use super::*;

    /// A JWK Set of one fresh P-256 key named `kid`.
    fn jwks(kid: &str) -> String {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        let p = key.public_key().as_ref();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        format!(
            r#"{{"keys":[{{"kty":"EC","crv":"P-256","x":"{}","y":"{}","kid":"{kid}","use":"sig"}}]}}"#,
            b64(&p[1..33]),
            b64(&p[33..65])
        )
    }

    fn cache(file: &Path) -> Arc<KeyCache> {
        let policy = IssuerPolicy {
            name: "ci".into(),
            issuer: "https://ci.example".into(),
            audience: "tessera".into(),
            allow_multiple_audiences: false,
            algorithms: [JwtAlgorithm::Es256].into_iter().collect(),
            max_age: chrono::Duration::minutes(10),
            leeway: chrono::Duration::seconds(5),
            single_use_jti: false,
            mapping: ClaimMapping::parse("spiffe://ci.example/{sub}").unwrap(),
            trust_domains: ["ci.example".to_owned()].into_iter().collect(),
        };
        Arc::new(KeyCache::new(
            JwtIssuerConfig {
                policy,
                jwks: JwksSource::File(file.to_owned()),
                refresh: Duration::from_secs(300),
                min_refresh: Duration::from_secs(30),
                max_stale: Duration::from_secs(3600),
                fetch_timeout: Duration::from_secs(5),
                max_bytes: 64 * 1024,
            },
            None,
        ))
    }

    /// Rewrites the file and gives it a new mtime (a same-second rewrite
    /// can keep the old one on coarse filesystems).
    fn rewrite(file: &Path, text: &str, age: u64) {
        std::fs::write(file, text).unwrap();
        let when = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 - age);
        std::fs::File::options()
            .write(true)
            .open(file)
            .unwrap()
            .set_modified(when)
            .unwrap();
    }

    fn temp(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tessera-jwks-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("jwks.json")
    }

    /// Random unknown `kid`s cost at most one load per `jwks_min_refresh`;
    /// a rotated key is picked up by the first token naming it once that
    /// interval has passed.
    #[tokio::test(start_paused = true)]
    async fn unknown_kids_refresh_at_a_bounded_rate() {
        let file = temp("rate");
        rewrite(&file, &jwks("k1"), 100);
        let cache = cache(&file);
        assert!(cache.keys_for("k1").await.unwrap().contains("k1"));
        assert_eq!(cache.attempts.load(Ordering::Relaxed), 1);
        // The issuer rotates, but keeps the file's mtime (as a URL would
        // give no hint at all): only an unknown kid can trigger a load.
        let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
        std::fs::write(&file, jwks("k2")).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        for i in 0..200 {
            let keys = cache.keys_for(&format!("forged-{i}")).await.unwrap();
            assert!(!keys.contains(&format!("forged-{i}")));
        }
        // Within min_refresh of the first load: not one more load, for
        // forged kids or for the real new one.
        assert_eq!(cache.attempts.load(Ordering::Relaxed), 1);
        assert!(!cache.keys_for("k2").await.unwrap().contains("k2"));
        assert_eq!(cache.attempts.load(Ordering::Relaxed), 1);
        // Once it has passed, the first token naming k2 loads it.
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(cache.keys_for("k2").await.unwrap().contains("k2"));
        assert_eq!(cache.attempts.load(Ordering::Relaxed), 2);
        for i in 0..200 {
            let _ = cache.keys_for(&format!("forged-again-{i}")).await.unwrap();
        }
        assert_eq!(cache.attempts.load(Ordering::Relaxed), 2);
        tokio::time::advance(Duration::from_secs(31)).await;
        let _ = cache.keys_for("forged-later").await.unwrap();
        assert_eq!(cache.attempts.load(Ordering::Relaxed), 3, "one load per min_refresh");
        let _ = std::fs::remove_dir_all(file.parent().unwrap());
    }

    /// A caller that gives up (its deadline, a reset stream) does not
    /// cancel the load it started: its attempt counts against the rate
    /// bound, so a cancelled load would leave the keys stale until the
    /// next allowed one, and a caller resetting every time could keep them
    /// from ever reloading.
    #[tokio::test]
    async fn a_caller_that_gives_up_does_not_cancel_the_load() {
        let file = temp("cancel");
        rewrite(&file, &jwks("k1"), 100);
        let cache = cache(&file);
        let _ = tokio::time::timeout(Duration::ZERO, cache.keys_for("k1")).await;
        // Polled with a generous bound: the machine may be busy.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while cache.state().keys.is_none() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(cache.state().keys.is_some(), "the load finished without its caller");
        assert!(cache.keys_for("k1").await.unwrap().contains("k1"));
        assert_eq!(cache.attempts.load(Ordering::Relaxed), 1);
        let _ = std::fs::remove_dir_all(file.parent().unwrap());
    }

    /// A refresh that fails keeps the last good keys, for `jwks_max_stale`
    /// after they were loaded, then refuses every token of the issuer until
    /// a load succeeds again.
    #[tokio::test(start_paused = true)]
    async fn the_last_good_keys_serve_until_max_stale() {
        let file = temp("stale");
        rewrite(&file, &jwks("k1"), 100);
        let cache = cache(&file);
        cache.keys_for("k1").await.unwrap();
        rewrite(&file, "{not json", 50);
        tokio::time::advance(Duration::from_secs(301)).await;
        // Old enough to refresh; the refresh fails; the keys still serve.
        assert!(cache.keys_for("k1").await.unwrap().contains("k1"));
        assert_eq!(cache.attempts.load(Ordering::Relaxed), 2);
        tokio::time::advance(Duration::from_secs(3300)).await;
        assert!(
            matches!(cache.keys_for("k1").await, Err(JwtRefusal::Keys(_))),
            "past max_stale"
        );
        rewrite(&file, &jwks("k1"), 10);
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(cache.keys_for("k1").await.unwrap().contains("k1"), "recovered");
        let _ = std::fs::remove_dir_all(file.parent().unwrap());
    }
}
