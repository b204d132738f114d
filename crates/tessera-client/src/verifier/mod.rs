//! The resource server's token verifier.
//!
//! [`Verifier`] checks a Tessera access token offline, in this order:
//!
//! 1. **the feed**: fail closed when the revocation feed was never
//!    synchronised ([`VerifyError::NotSynced`]) or has been silent longer than
//!    `max_staleness` ([`VerifyError::FeedStale`]); heartbeats keep a quiet
//!    feed fresh;
//! 2. **the token**, by `tessera-core`'s one verification
//!    ([`tessera_core::token::check_access_token`], shared with the broker):
//!    size, shape and header (no `jku`, `jwk`, `x5u`, `x5c` or `crit`),
//!    `typ` `at+jwt`, `alg` in the configured allow-list and equal to the
//!    key's, the key looked up by `kid` in the cached JWKS only, the
//!    signature; `iss`, `aud`, `exp` / `nbf` / `iat` with a bounded leeway;
//!    the `act` chain well formed, within `max_act_depth`, and only
//!    narrowing;
//! 3. **revocation**: `iat` after the sync floor (see [`state`] docs),
//!    neither the `jti`, nor the `task_id`, nor a grant named in the `act`
//!    chain revoked;
//! 4. **proof of possession** when the token is bound (`cnf`), by core's
//!    [`tessera_core::pop::check_binding`]: a DPoP proof (RFC 9449) for
//!    `cnf.jkt`, presented with the `DPoP` scheme, for this method and URL,
//!    fresh, with `ath` = the token's hash; or the caller's TLS certificate
//!    for `cnf.x5t#S256` (RFC 8705). Last, the proof's `jti` must never
//!    have been seen (this verifier's replay cache, or the [`ReplayStore`]
//!    its replicas share). Given the request body
//!    ([`Verifier::verify_with_body`]), a proof's `content_digest` claim
//!    must be the body's RFC 9530 digest, and `require_content_digest`
//!    refuses a DPoP proof without one (core's
//!    [`tessera_core::pop::ContentCheck`]).
//!
//! [`Verifier::connect`] keeps the JWKS and the revocation set current from
//! the broker's `VerifierService` (see [`feed`]). Nothing here logs or
//! returns a token or a proof.

mod error;
mod feed;
mod keys;
mod replay;
#[cfg(feature = "redis")]
mod replay_redis;

#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tessera_core::clock::{Clock, SystemClock};
use tessera_core::pop::{Bound, ContentCheck, NonceSource, PROOF_MAX_AGE, Presentation, check_binding_with_content};
use tessera_core::revocation::feed::{FeedState, Target};
use tessera_core::token::{AccessCheck, Algorithm, Jwk, JwsError, MAX_CHAIN_LEN, MAX_LEEWAY_SECS, check_access_token};

pub use error::{RefusalKind, VerifierConfigError, VerifyError};
pub use keys::MAX_KEYS;
pub use replay::{ReplayError, ReplayStore, SpendFuture, SpentProof};
#[cfg(feature = "redis")]
pub use replay_redis::RedisReplayStore;
/// A token's tool-level limit (RFC 9396 `mcp_tool` detail).
pub use tessera_core::authz::{ToolGrant, ToolGrantError};
/// The DPoP proof key and signer are core's, one for the SDK, the CLI and
/// the broker's tests; `DpopKey` is the SDK's `PopKey`.
pub use tessera_core::pop::{
    CONTENT_DIGEST_CLAIM, MAX_PROOF_LEN, PROOF_TYP as DPOP_TYP, ProofKey as DpopKey, access_token_hash, content_digest,
    normalize_htu,
};
/// The claims of a Tessera access token, as core reads them for the broker
/// and this verifier alike.
pub use tessera_core::token::AccessClaims as TokenClaims;
pub use tessera_core::token::ChainHop;
/// Why a [`DpopKey`] could not be made or sign.
pub use tessera_core::token::KeyError as DpopKeyError;

use crate::Channel;
use crate::pb;

/// The largest leeway a verifier may be configured with: core's bound for
/// every verifier.
pub const MAX_LEEWAY: Duration = Duration::from_secs(MAX_LEEWAY_SECS.unsigned_abs());
/// The largest `dpop_max_age`: core's bound for every proof.
pub const MAX_DPOP_AGE: Duration = Duration::from_secs(PROOF_MAX_AGE.num_seconds().unsigned_abs());

/// What a [`Verifier`] accepts. Build with [`VerifierConfig::new`] and
/// adjust the public fields; [`Verifier`] validates them.
#[derive(Debug, Clone)]
pub struct VerifierConfig {
    /// The broker's `iss` (`tokens.issuer`).
    pub issuer: String,
    /// This resource server's audience; tokens for any other are refused.
    pub audience: String,
    /// Signature algorithms accepted (a subset of ES256, EdDSA).
    pub algorithms: Vec<Algorithm>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`; at most [`MAX_LEEWAY`].
    pub leeway: Duration,
    /// Fail closed once the revocation feed has been silent this long.
    /// Keep it above the broker's `server.heartbeat_interval` (5 s).
    pub max_staleness: Duration,
    /// Most hops in an `act` chain (at most core's `MAX_CHAIN_LEN`, 16).
    pub max_act_depth: usize,
    /// Oldest DPoP proof `iat` accepted, as an age (at most [`MAX_DPOP_AGE`]).
    pub dpop_max_age: Duration,
    /// Most DPoP proofs remembered for replay detection.
    pub replay_cache_capacity: usize,
    /// Most DPoP proofs remembered for one key (thumbprint): one client
    /// cannot fill the replay cache and stop DPoP for every other (at most
    /// `replay_cache_capacity`).
    pub replay_cache_per_key: usize,
    /// A replay store the replicas of this resource server share (e.g.
    /// `RedisReplayStore`), instead of this verifier's own memory; the two
    /// capacities above then do not apply (the store bounds itself). Such a
    /// store is asked by [`Verifier::verify`]; [`Verifier::verify_cached`],
    /// which never waits, refuses DPoP proofs with it.
    pub replay_store: Option<Arc<dyn ReplayStore>>,
    /// Require every DPoP proof to carry a current nonce of this source
    /// (RFC 9449 section 9); a proof without one is refused with
    /// `use_dpop_nonce`, and the answer carries [`Verifier::dpop_nonce`] in a
    /// `DPoP-Nonce` header. Replicas sharing the source's key accept each
    /// other's nonces. A nonce bounds how long a proof made in advance stays
    /// usable; the `jti` still makes each proof single use.
    pub dpop_nonce: Option<Arc<NonceSource>>,
    /// Most revocations held (each only until its tokens expired).
    pub max_revocations: usize,
    /// Refuse bearer tokens: every token must carry `cnf`.
    pub require_bound: bool,
    /// Refuse a DPoP proof that does not bind the request body by its
    /// `content_digest` claim (`sha-256=:<base64>:`, RFC 9530); the body
    /// must then be given ([`Verifier::verify_with_body`]). Without this, a
    /// proof carrying the claim is still checked against a given body.
    pub require_content_digest: bool,
    /// An unknown `kid` triggers a JWKS refresh at most this often.
    pub jwks_min_refresh: Duration,
    /// The JWKS is refreshed this often regardless, so withdrawn keys go.
    pub jwks_refresh: Duration,
}

impl VerifierConfig {
    /// Defaults: both algorithms, 5 s leeway, 15 s staleness, 4 hops, 60 s
    /// proof age, 100 000 proofs (10 000 per key), 1 000 000 revocations,
    /// 1 s/60 s JWKS.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            audience: audience.into(),
            algorithms: vec![Algorithm::Es256, Algorithm::EdDsa],
            leeway: Duration::from_secs(5),
            max_staleness: Duration::from_secs(15),
            max_act_depth: 4,
            dpop_max_age: Duration::from_secs(60),
            replay_cache_capacity: 100_000,
            replay_cache_per_key: 10_000,
            replay_store: None,
            dpop_nonce: None,
            max_revocations: 1_000_000,
            require_bound: false,
            require_content_digest: false,
            jwks_min_refresh: Duration::from_secs(1),
            jwks_refresh: Duration::from_secs(60),
        }
    }

    fn validate(&self) -> Result<(), VerifierConfigError> {
        let bad = VerifierConfigError::new;
        if self.issuer.is_empty() {
            return Err(bad("issuer", "must not be empty"));
        }
        if self.audience.is_empty() {
            return Err(bad("audience", "must not be empty"));
        }
        if self.algorithms.is_empty() {
            return Err(bad("algorithms", "must allow at least one algorithm"));
        }
        if self.leeway > MAX_LEEWAY {
            return Err(bad("leeway", "must be at most 300s"));
        }
        if self.max_staleness < Duration::from_millis(100) || self.max_staleness > Duration::from_secs(3600) {
            return Err(bad("max_staleness", "must be between 100ms and 1h"));
        }
        if !(1..=MAX_CHAIN_LEN).contains(&self.max_act_depth) {
            return Err(bad("max_act_depth", "must be between 1 and 16"));
        }
        if self.dpop_max_age < Duration::from_secs(1) || self.dpop_max_age > MAX_DPOP_AGE {
            return Err(bad("dpop_max_age", "must be between 1s and 60s"));
        }
        if !(1..=10_000_000).contains(&self.replay_cache_capacity) {
            return Err(bad("replay_cache_capacity", "must be between 1 and 10000000"));
        }
        if self.replay_cache_per_key == 0 {
            return Err(bad("replay_cache_per_key", "must be at least 1"));
        }
        if !(1..=100_000_000).contains(&self.max_revocations) {
            return Err(bad("max_revocations", "must be between 1 and 100000000"));
        }
        if self.jwks_refresh < self.jwks_min_refresh || self.jwks_refresh.is_zero() {
            return Err(bad("jwks_refresh", "must be positive and at least jwks_min_refresh"));
        }
        Ok(())
    }
}

/// How the token was presented (`Authorization` scheme).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `Authorization: Bearer` (RFC 6750); also the scheme of an
    /// mTLS-bound token (RFC 8705).
    Bearer,
    /// `Authorization: DPoP` (RFC 9449 section 7.1).
    Dpop,
}

/// A token as it arrived with a request, and what proofs came with it.
#[derive(Debug, Clone, Copy)]
pub struct Presented<'a> {
    /// The access token (compact JWS).
    pub token: &'a str,
    /// The `Authorization` scheme it came with.
    pub scheme: Scheme,
    /// The `DPoP` header, if exactly one came (send `None` for none or
    /// several: RFC 9449 allows exactly one).
    pub dpop_proof: Option<&'a str>,
    /// The request's method, for the proof's `htm`.
    pub method: &'a str,
    /// The request's absolute URL as the client addressed it, for `htu`.
    pub url: &'a str,
    /// The DER of the caller's verified TLS client certificate, if any.
    pub client_cert_der: Option<&'a [u8]>,
}

impl<'a> Presented<'a> {
    /// A bearer token without proofs (tests and simple services).
    pub fn bearer(token: &'a str) -> Self {
        Self {
            token,
            scheme: Scheme::Bearer,
            dpop_proof: None,
            method: "GET",
            url: "",
            client_cert_der: None,
        }
    }

    /// Splits an `Authorization` header value into scheme and token. The
    /// scheme is case-insensitive; the token must be one non-empty word.
    pub fn parse_authorization(value: &'a str) -> Result<(Scheme, &'a str), VerifyError> {
        let (scheme, token) = value.trim().split_once(' ').ok_or(VerifyError::Scheme)?;
        let token = token.trim_start();
        if token.is_empty() || token.contains(char::is_whitespace) {
            return Err(VerifyError::Scheme);
        }
        let scheme = if scheme.eq_ignore_ascii_case("bearer") {
            Scheme::Bearer
        } else if scheme.eq_ignore_ascii_case("dpop") {
            Scheme::Dpop
        } else {
            return Err(VerifyError::Scheme);
        };
        Ok((scheme, token))
    }
}

/// How a verified token was bound to its presenter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Binding {
    /// A bearer token: anyone holding it could present it.
    Bearer,
    /// Bound to a DPoP key whose proof came with the request.
    Dpop,
    /// Bound to the caller's TLS client certificate.
    Certificate,
}

/// A token that passed every check.
#[derive(Debug, Clone)]
pub struct Verified {
    claims: TokenClaims,
    actors: Vec<String>,
    binding: Binding,
}

impl Verified {
    /// All claims.
    pub fn claims(&self) -> &TokenClaims {
        &self.claims
    }

    /// The holder (`client_id`): the identity the token was issued to, the
    /// current actor of a delegated token.
    pub fn holder(&self) -> &str {
        &self.claims.client_id
    }

    /// The subject (`sub`): the agent the token (or, delegated, its root) was issued to.
    pub fn subject(&self) -> &str {
        &self.claims.sub
    }

    /// The task the token belongs to.
    pub fn task_id(&self) -> &str {
        &self.claims.task_id
    }

    /// The grant id (`jti`).
    pub fn grant_id(&self) -> &str {
        &self.claims.jti
    }

    /// The scopes granted.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.claims.scopes()
    }

    /// Whether `scope` was granted.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.claims.scopes().any(|s| s == scope)
    }

    /// [`VerifyError::InsufficientScope`] (403) unless `scope` was granted.
    pub fn require_scope(&self, scope: &str) -> Result<(), VerifyError> {
        if self.has_scope(scope) {
            Ok(())
        } else {
            Err(VerifyError::InsufficientScope(scope.chars().take(128).collect()))
        }
    }

    /// The token's tool-level limits: its RFC 9396 `authorization_details`
    /// of type `mcp_tool` ([`ToolGrant`]: `server`, `tools`, argument
    /// `constraints`). Empty: no tool-level limit (scopes still apply).
    pub fn tool_grants(&self) -> &[ToolGrant] {
        &self.claims.authorization_details
    }

    /// Whether the token allows calling MCP tool `tool` with `args` (the
    /// `tools/call` `arguments`, an object or `null`): always when it
    /// carries no `authorization_details`; otherwise only a tool its detail
    /// for this audience lists, with every constrained argument present and
    /// within its constraint ([`ToolGrant::permits`]). Refused:
    /// [`VerifyError::ToolNotAllowed`], answered 403 `insufficient_scope`.
    pub fn check_tool_call(&self, tool: &str, args: &serde_json::Value) -> Result<(), VerifyError> {
        self.claims
            .check_tool_call(tool, args)
            .map_err(|e| VerifyError::ToolNotAllowed(e.to_string()))
    }

    /// The delegation chain's actors, current first; empty for a token
    /// issued directly.
    pub fn actors(&self) -> &[String] {
        &self.actors
    }

    /// How the token was bound.
    pub fn binding(&self) -> Binding {
        self.binding
    }

    /// When the token expires.
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp(self.claims.exp, 0)
    }
}

/// Status of a verifier's inputs, for health endpoints and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifierStatus {
    /// Whether a fresh subscription to the feed has answered since the last loss.
    pub synced: bool,
    /// Whether the feed is synchronised and fresh (tokens can be accepted).
    pub fresh: bool,
    /// Keys cached.
    pub keys: usize,
    /// Revocations held.
    pub revocations: usize,
    /// Tokens need an `iat` after this (seconds, broker clock).
    pub sync_floor: Option<i64>,
}

/// Verifies Tessera access tokens for one audience. Cheap to clone; the
/// background feed (if any) stops when the last clone is dropped.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.inner.shared.config.issuer)
            .field("audience", &self.inner.shared.config.audience)
            .finish_non_exhaustive()
    }
}

struct Inner {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Where spent DPoP proofs are remembered.
enum Replay {
    /// This verifier's memory, spent inside the checks.
    Local(Mutex<replay::ReplayCache>),
    /// A store the replicas share, spent after the checks.
    Shared(Arc<dyn ReplayStore>),
}

/// A token that passed every check, and the DPoP proof still to spend in a
/// shared store.
struct Checked {
    verified: Verified,
    unspent: Option<SpentProof>,
}

/// The state the checks read and the feed writes.
pub(crate) struct Shared {
    config: VerifierConfig,
    clock: Arc<dyn Clock>,
    keys: RwLock<keys::KeyCache>,
    feed: RwLock<FeedState>,
    replay: Replay,
    /// Serialises JWKS refreshes; holds when the last one happened.
    refresh: tokio::sync::Mutex<Option<tokio::time::Instant>>,
    client: Option<crate::VerifierClient>,
    leeway_secs: i64,
    max_staleness: chrono::Duration,
    dpop_max_age: chrono::Duration,
}

impl Verifier {
    /// A verifier fed by nothing yet: it refuses every token (not
    /// synchronised) until [`Verifier::load_jwks`] and
    /// [`Verifier::ingest`] feed it. For custom transports and tests;
    /// services use [`Verifier::connect`].
    pub fn offline(config: VerifierConfig, clock: Arc<dyn Clock>) -> Result<Self, VerifierConfigError> {
        Ok(Self {
            inner: Arc::new(Inner {
                shared: Arc::new(Shared::new(config, clock, None)?),
                tasks: Vec::new(),
            }),
        })
    }

    /// A verifier that follows the broker over `channel` (an mTLS channel of
    /// an identity with the `verifier` role): it loads the JWKS, subscribes
    /// to `WatchRevocations`, resumes after a disconnect with backoff, and
    /// refreshes keys. Must be called within a Tokio runtime.
    pub fn connect(channel: Channel, config: VerifierConfig) -> Result<Self, VerifierConfigError> {
        let client = crate::VerifierClient::new(channel).max_decoding_message_size(feed::MAX_MESSAGE_BYTES);
        let shared = Arc::new(Shared::new(config, Arc::new(SystemClock), Some(client.clone()))?);
        let tasks = vec![
            tokio::spawn(feed::follow(shared.clone(), client)),
            tokio::spawn(feed::refresh_keys_periodically(shared.clone())),
        ];
        Ok(Self {
            inner: Arc::new(Inner { shared, tasks }),
        })
    }

    /// Verifies a presented token. On an unknown `kid` it refreshes the
    /// JWKS once (rate-bounded) and tries again.
    pub async fn verify(&self, presented: &Presented<'_>) -> Result<Verified, VerifyError> {
        self.verify_inner(presented, None).await
    }

    /// [`Verifier::verify`] for a request whose `body` the caller has: a
    /// DPoP proof's `content_digest` must be its digest (and is required
    /// with `require_content_digest`).
    pub async fn verify_with_body(&self, presented: &Presented<'_>, body: &[u8]) -> Result<Verified, VerifyError> {
        self.verify_inner(presented, Some(body)).await
    }

    async fn verify_inner(&self, presented: &Presented<'_>, body: Option<&[u8]>) -> Result<Verified, VerifyError> {
        let shared = &self.inner.shared;
        let checked = match shared.check(presented, body) {
            Err(VerifyError::Token(JwsError::UnknownKey)) if shared.client.is_some() => {
                if shared.refresh_keys_on_demand().await {
                    shared.check(presented, body)
                } else {
                    Err(VerifyError::Token(JwsError::UnknownKey))
                }
            }
            other => other,
        }?;
        // Last: a proof is spent only by a request that passed every check.
        if let (Some(proof), Replay::Shared(store)) = (&checked.unspent, &shared.replay) {
            store.spend(proof).await?;
        }
        Ok(checked.verified)
    }

    /// Verifies a presented token with the keys already cached; never waits
    /// (so with a shared [`ReplayStore`] it refuses DPoP proofs: use
    /// [`Verifier::verify`]).
    pub fn verify_cached(&self, presented: &Presented<'_>) -> Result<Verified, VerifyError> {
        let checked = self.inner.shared.check(presented, None)?;
        if checked.unspent.is_some() {
            return Err(VerifyError::ReplayStoreUnavailable(
                "a shared replay store is asked by Verifier::verify, not verify_cached".into(),
            ));
        }
        Ok(checked.verified)
    }

    /// What this verifier accepts (its audience is the resource it protects).
    pub fn config(&self) -> &VerifierConfig {
        &self.inner.shared.config
    }

    /// The DPoP nonce to send now in a `DPoP-Nonce` header, when
    /// `dpop_nonce` is configured: on every `use_dpop_nonce` refusal, and
    /// on any other answer to keep the client's nonce fresh.
    pub fn dpop_nonce(&self) -> Option<String> {
        let shared = &self.inner.shared;
        shared.config.dpop_nonce.as_ref().map(|n| n.issue(shared.clock.now()))
    }

    /// Replaces the cached keys with the usable keys of `jwks` whose
    /// algorithm is allowed; returns how many were kept.
    pub fn load_jwks(&self, jwks: &[Jwk]) -> usize {
        self.inner.shared.load_keys(jwks)
    }

    /// Applies one message of a `WatchRevocations` stream. `fresh` is true
    /// for the messages of a subscription made without a position (the
    /// first one synchronises the verifier).
    pub fn ingest(&self, message: &pb::WatchRevocationsResponse, fresh: bool) {
        self.inner.shared.ingest(message, fresh);
    }

    /// The feed position was lost (OUT_OF_RANGE): refuse everything until a
    /// fresh subscription answers.
    pub fn position_lost(&self) {
        self.inner.shared.lost();
    }

    /// Inputs' status.
    pub fn status(&self) -> VerifierStatus {
        self.inner.shared.status()
    }

    /// Waits until the verifier is synchronised, fresh and has keys, or
    /// `timeout` passes; returns whether it is ready.
    pub async fn ready(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let status = self.status();
            if status.fresh && status.keys > 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn lock_read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // INVARIANT: writers never panic while holding these locks (plain map
    // and field updates), so a poisoned lock still holds consistent state.
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn lock_write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

impl Shared {
    fn new(
        config: VerifierConfig,
        clock: Arc<dyn Clock>,
        client: Option<crate::VerifierClient>,
    ) -> Result<Self, VerifierConfigError> {
        config.validate()?;
        let leeway_secs = secs(config.leeway);
        let max_staleness = chrono::Duration::from_std(config.max_staleness)
            .map_err(|_| VerifierConfigError::new("max_staleness", "too long"))?;
        Ok(Self {
            keys: RwLock::new(keys::KeyCache::default()),
            feed: RwLock::new(FeedState::new(config.max_revocations, leeway_secs)),
            replay: match &config.replay_store {
                Some(store) => Replay::Shared(store.clone()),
                None => Replay::Local(Mutex::new(replay::ReplayCache::new(
                    config.replay_cache_capacity,
                    config.replay_cache_per_key.min(config.replay_cache_capacity),
                ))),
            },
            refresh: tokio::sync::Mutex::new(None),
            client,
            leeway_secs,
            max_staleness,
            dpop_max_age: chrono::Duration::seconds(secs(config.dpop_max_age)),
            clock,
            config,
        })
    }

    /// Every check; a DPoP proof is spent here in the local cache, or
    /// returned unspent for the shared store.
    fn check(&self, presented: &Presented<'_>, body: Option<&[u8]>) -> Result<Checked, VerifyError> {
        let now = self.clock.now();
        let token = presented.token;
        if token.is_empty() {
            return Err(VerifyError::Missing);
        }
        lock_read(&self.feed).check_fresh(now, self.max_staleness)?;

        // The token: core's one verification, with this verifier's limits.
        let check = AccessCheck {
            issuer: &self.config.issuer,
            audience: Some(&self.config.audience),
            algorithms: &self.config.algorithms,
            now,
            leeway_secs: self.leeway_secs,
            max_chain_len: self.config.max_act_depth,
        };
        let claims = check_access_token(token, &*lock_read(&self.keys), &check)?;

        // Revocation of the token, its task or an ancestor.
        lock_read(&self.feed).check_token(
            claims.iat,
            &claims.jti,
            &claims.task_id,
            claims.tessera_chain.iter().map(|hop| hop.jti.as_str()),
        )?;

        // Proof of possession.
        let (binding, unspent) = self.check_binding(&claims, presented, body, now)?;
        let actors = claims
            .act
            .as_ref()
            .map(|act| act.actors().into_iter().map(str::to_owned).collect())
            .unwrap_or_default();
        Ok(Checked {
            verified: Verified {
                claims,
                actors,
                binding,
            },
            unspent,
        })
    }

    fn check_binding(
        &self,
        claims: &TokenClaims,
        presented: &Presented<'_>,
        body: Option<&[u8]>,
        now: DateTime<Utc>,
    ) -> Result<(Binding, Option<SpentProof>), VerifyError> {
        if claims.cnf.is_none() && self.config.require_bound {
            return Err(VerifyError::BoundTokenRequired);
        }
        let presentation = Presentation {
            access_token: presented.token,
            dpop_scheme: presented.scheme == Scheme::Dpop,
            proof: presented.dpop_proof,
            htm: presented.method,
            htu: presented.url,
            client_cert_der: presented.client_cert_der,
            now,
            max_age: self.dpop_max_age,
            leeway: chrono::Duration::seconds(self.leeway_secs),
        };
        let content = ContentCheck {
            body,
            required: self.config.require_content_digest,
        };
        Ok(
            match check_binding_with_content(claims.cnf.as_ref(), &presentation, &content)? {
                Bound::Bearer => (Binding::Bearer, None),
                Bound::Certificate => (Binding::Certificate, None),
                Bound::Dpop(proof) => {
                    if let Some(nonces) = &self.config.dpop_nonce
                        && !proof.nonce.as_deref().is_some_and(|n| nonces.check(n, now))
                    {
                        return Err(VerifyError::UseDpopNonce);
                    }
                    // Last: a proof is spent only by a request that passed every check.
                    let until = (proof.replay_until(self.dpop_max_age) + presentation.leeway).timestamp();
                    match &self.replay {
                        Replay::Local(cache) => {
                            cache.lock().unwrap_or_else(PoisonError::into_inner).record(
                                proof.replay_id(),
                                until,
                                now.timestamp(),
                            )?;
                            (Binding::Dpop, None)
                        }
                        Replay::Shared(_) => {
                            let spent = SpentProof {
                                jkt: proof.jkt,
                                jti: proof.jti,
                                until,
                                now: now.timestamp(),
                            };
                            (Binding::Dpop, Some(spent))
                        }
                    }
                }
            },
        )
    }

    fn load_keys(&self, jwks: &[Jwk]) -> usize {
        let (mut cache, load) = keys::KeyCache::from_jwks(jwks, &self.config.algorithms);
        // A JWKS fetched before a withdrawal the feed announced must not
        // bring the key back: the feed stays locked until the cache is in
        // place (lock order feed, then keys, as in `ingest`).
        let feed = lock_read(&self.feed);
        cache.drop_withdrawn(|kid| feed.key_withdrawn(kid));
        if load.skipped > 0 {
            tracing::warn!(
                skipped = load.skipped,
                kept = load.kept,
                "jwks: unusable or disallowed keys skipped"
            );
        }
        *lock_write(&self.keys) = cache;
        drop(feed);
        load.kept
    }

    fn ingest(&self, message: &pb::WatchRevocationsResponse, fresh: bool) {
        use pb::watch_revocations_response::Item;
        let now = self.clock.now();
        let mut feed = lock_write(&self.feed);
        match &message.item {
            Some(Item::Heartbeat(heartbeat)) => {
                if fresh && !feed.is_synced() {
                    let sent_at = heartbeat.sent_at.as_ref().and_then(timestamp).unwrap_or(now);
                    feed.synced(sent_at, now);
                }
                feed.prune(now);
            }
            Some(Item::Event(event)) => {
                let revoked_at = event.revoked_at.as_ref().and_then(timestamp).unwrap_or(now);
                // Missing `not_after`: keep it as long as any token could live.
                let not_after = event
                    .not_after
                    .as_ref()
                    .and_then(timestamp)
                    .unwrap_or(now + chrono::Duration::days(1));
                let target = match &event.target {
                    Some(pb::revocation_event::Target::GrantId(jti)) => Some(Target::Grant(jti.clone())),
                    Some(pb::revocation_event::Target::TaskId(task)) => Some(Target::Task(task.clone())),
                    Some(pb::revocation_event::Target::Kid(kid)) => {
                        // Withdrawn (break-glass): no token it signed verifies
                        // from now on, without waiting for a JWKS refresh.
                        // Lock order: feed, then keys (`load_keys` never
                        // holds the keys while taking the feed).
                        lock_write(&self.keys).drop_withdrawn(|k| k == kid);
                        Some(Target::Key(kid.clone()))
                    }
                    None => None,
                };
                match target {
                    Some(target) => feed.revoke(target, not_after, revoked_at, now),
                    None => tracing::warn!("revocation event without a target ignored"),
                }
                if fresh && !feed.is_synced() {
                    feed.synced(revoked_at, now);
                }
            }
            None => {}
        }
        feed.heard(now);
    }

    fn lost(&self) {
        lock_write(&self.feed).lost();
    }

    fn status(&self) -> VerifierStatus {
        let now = self.clock.now();
        let feed = lock_read(&self.feed);
        VerifierStatus {
            synced: feed.is_synced(),
            fresh: feed.check_fresh(now, self.max_staleness).is_ok(),
            keys: lock_read(&self.keys).len(),
            revocations: feed.len(),
            sync_floor: feed.floor(),
        }
    }

    /// Refreshes the JWKS for an unknown `kid`, at most once per
    /// `jwks_min_refresh`; concurrent callers share one refresh. Returns
    /// whether a refresh happened (by this caller or one it waited for).
    async fn refresh_keys_on_demand(&self) -> bool {
        let asked = tokio::time::Instant::now();
        let mut last = self.refresh.lock().await;
        if last.is_some_and(|at| at >= asked) {
            return true; // someone refreshed while we waited
        }
        if last.is_some_and(|at| asked.duration_since(at) < self.config.jwks_min_refresh) {
            return false;
        }
        let refreshed = self.fetch_keys().await;
        *last = Some(tokio::time::Instant::now());
        refreshed
    }

    /// One `GetJwks` call; true if the keys were replaced.
    async fn fetch_keys(&self) -> bool {
        let Some(client) = &self.client else { return false };
        let mut client = client.clone();
        match tokio::time::timeout(feed::CALL_TIMEOUT, client.get_jwks(pb::GetJwksRequest {})).await {
            Ok(Ok(response)) => {
                let jwks = keys::from_proto(&response.into_inner().keys);
                self.load_keys(&jwks);
                true
            }
            Ok(Err(status)) => {
                tracing::warn!(code = ?status.code(), "jwks refresh failed");
                false
            }
            Err(_) => {
                tracing::warn!("jwks refresh timed out");
                false
            }
        }
    }
}

fn timestamp(ts: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(ts.seconds, u32::try_from(ts.nanos).ok()?)
}
