//! `tesserad`'s configuration: one TOML file plus `TESSERA_*` environment
//! overrides, parsed into typed values once at start. Every error names the
//! offending key (`tokens.default_ttl`) or variable.
//!
//! Overrides: `TESSERA_<SECTION>__<KEY>=value` sets `<section>.<key>`
//! (lowercased; `__` separates levels), e.g. `TESSERA_SERVER__LISTEN=127.0.0.1:0`.
//! The value is read as a TOML value when it parses as one (`10`, `true`,
//! `"x"`), else as a string. Tables of arrays (`identities`, `apis`) come
//! from the file only.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tessera_core::catalog::{Api, ApiCatalog};
use tessera_core::identity::{Identity, IdentityKind, IdentityRegistry, Role, SpiffeId};
use tessera_core::task::{Audience, Scope, ScopeClass};
use tessera_core::token::Algorithm;
use tessera_core::ttl::{Ttl, TtlLimits};

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "TESSERA_";

/// Where override variables come from. Tests pass a map; `main` passes the process environment.
pub trait EnvSource {
    /// Every `(name, value)` pair.
    fn vars(&self) -> Vec<(String, String)>;
}

/// The process environment.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn vars(&self) -> Vec<(String, String)> {
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect()
    }
}

impl EnvSource for BTreeMap<String, String> {
    fn vars(&self) -> Vec<(String, String)> {
        self.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file `{path}`: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config file `{path}` is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A key is unknown, missing, or has the wrong type or value.
    #[error("config key `{key}`: {message}")]
    Key {
        /// Dotted path of the key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// An environment override is malformed.
    #[error("environment variable `{var}`: {message}")]
    Env {
        /// The variable.
        var: String,
        /// What is wrong.
        message: String,
    },
}

fn key_error(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Key {
        key: key.into(),
        message: message.into(),
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listener and transport limits.
    pub server: ServerConfig,
    /// mTLS material and trust.
    pub tls: TlsConfig,
    /// Token issuance.
    pub tokens: TokensConfig,
    /// Task bounds.
    pub tasks: TasksConfig,
    /// State backend.
    pub store: StoreConfig,
    /// Logging.
    pub log: LogConfig,
    /// The audit trail.
    pub audit: crate::audit::AuditConfig,
    /// Anomaly revocation.
    pub anomaly: AnomalyConfig,
    /// How Introspect answers.
    pub introspection: IntrospectionConfig,
    /// The Cedar policy set.
    pub policy: policy::PolicyConfig,
    /// `[delegation] max_depth` and `[tokens] bound_classes`.
    pub binding: crate::broker::BindingSettings,
    /// The HTTPS OAuth facade.
    pub oauth: crate::http::config::OAuthConfig,
    /// The operator console (on the facade's listener).
    pub console: crate::http::console::config::ConsoleConfig,
    /// Registered identities.
    pub identities: IdentityRegistry,
    /// Known APIs.
    pub catalog: ApiCatalog,
    /// How requests needing approval wait.
    pub approvals: risk::ApprovalsConfig,
    /// Attestation methods beyond mTLS, and reloading.
    pub attestation: crate::attest::config::AttestationConfig,
    /// The file this was loaded from (reloaded for identities).
    pub source: Option<PathBuf>,
}

/// `[server]`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// gRPC (mTLS) listen address; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Plain-HTTP `/metrics`, `/healthz`, `/readyz` listen address.
    pub http_listen: SocketAddr,
    /// Name of this broker replica in logs and audit.
    pub instance_id: String,
    /// Largest gRPC message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Most concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Most open connections; more are closed at accept.
    pub max_connections: usize,
    /// Most open connections from one source address; more are closed at accept.
    pub max_connections_per_address: usize,
    /// A TLS handshake not done by then is dropped.
    pub handshake_timeout: Duration,
    /// A connection with no attested call by then is closed.
    pub unattested_timeout: Duration,
    /// A connection with no call open or started for this long is closed.
    pub idle_timeout: Duration,
    /// A unary request not answered by then fails.
    pub request_timeout: Duration,
    /// How often a quiet revocation feed sends a heartbeat.
    pub heartbeat_interval: Duration,
    /// Sustained calls per second allowed to one identity (0: no limit).
    pub per_identity_rps: u32,
    /// Burst of calls allowed to one identity.
    pub per_identity_burst: u32,
}

/// `[tls]`.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Server private key (PEM).
    pub key: PathBuf,
    /// CA certificates that issue client SVIDs (PEM).
    pub trust_bundle: PathBuf,
    /// The trust domain of `trust_bundle`.
    pub trust_domain: String,
    /// More trust domains, each with its own bundle (`[[tls.trust_domains]]`).
    pub trust_domains: Vec<crate::attest::config::TrustDomainConfig>,
}

/// `[tokens]`.
#[derive(Debug, Clone)]
pub struct TokensConfig {
    /// The tokens' `iss`.
    pub issuer: String,
    /// Signing algorithm.
    pub algorithm: Algorithm,
    /// PKCS#8 PEM private key; when absent a key is generated at start.
    pub signing_key: Option<PathBuf>,
    /// Lifetime bounds.
    pub ttl: TtlLimits,
    /// Clock skew tolerated when checking `exp`/`nbf`, in seconds.
    pub leeway_secs: i64,
    /// How often the signing key is rotated.
    pub rotate_every: Duration,
    /// Lifetime caps per class and kind, and the blast-radius cap.
    pub risk: tessera_core::risk::RiskLimits,
    /// How long a scheduled rotation's next key is in the JWKS before it signs.
    pub rotate_prepublish: Duration,
}

/// `[tasks]`.
#[derive(Debug, Clone)]
pub struct TasksConfig {
    /// Longest task.
    pub max_duration: chrono::Duration,
}

/// `[store]`.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// The embedded in-process store, with its bounds.
    Memory(tessera_store::MemoryLimits),
    /// Redis, shared by every replica.
    Redis(tessera_store::RedisConfig),
}

/// `[anomaly]`: an identity refused `denials` times within `within` has its
/// grants revoked and is quarantined for `quarantine`. Counted per replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnomalyConfig {
    /// Whether the rule applies.
    pub enabled: bool,
    /// The rule.
    pub rule: tessera_core::anomaly::AnomalyRule,
}

impl AnomalyConfig {
    /// The rule to apply, if enabled.
    pub fn rule(&self) -> Option<tessera_core::anomaly::AnomalyRule> {
        self.enabled.then_some(self.rule)
    }
}

/// `[introspection]`: Introspect answers from this replica's follower of
/// the revocation feed when it has read the feed within `max_feed_lag`
/// (then an answer lags a revocation made on another replica by at most
/// that), and reads the store otherwise; `0s` reads the store every time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntrospectionConfig {
    /// The oldest feed read an answer from memory may rest on.
    pub max_feed_lag: Duration,
}

/// `[log]`.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// `tracing` filter directive, e.g. `info` or `tessera_server=debug`.
    pub level: String,
}

// ---- raw (file) shapes ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: RawServer,
    tls: RawTls,
    tokens: RawTokens,
    #[serde(default)]
    tasks: RawTasks,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    anomaly: RawAnomaly,
    #[serde(default)]
    introspection: RawIntrospection,
    #[serde(default)]
    policy: policy::RawPolicy,
    #[serde(default)]
    delegation: delegation::RawDelegation,
    #[serde(default)]
    oauth: crate::http::config::RawOAuth,
    #[serde(default)]
    console: crate::http::console::config::RawConsole,
    #[serde(default)]
    identities: Vec<RawIdentity>,
    #[serde(default)]
    apis: Vec<RawApi>,
    #[serde(default)]
    approvals: risk::RawApprovals,
    #[serde(default)]
    attestation: crate::attest::config::RawAttestation,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: String,
    #[serde(default = "crate::http::default_listen")]
    http_listen: String,
    #[serde(default = "default_instance_id")]
    instance_id: String,
    #[serde(default = "default_max_message_bytes")]
    max_message_bytes: usize,
    #[serde(default = "default_max_concurrent_streams")]
    max_concurrent_streams: u32,
    #[serde(default = "default_max_connections")]
    max_connections: usize,
    #[serde(default = "default_max_connections_per_address")]
    max_connections_per_address: usize,
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    handshake_timeout: Duration,
    #[serde(default = "default_unattested_timeout", with = "humantime_serde")]
    unattested_timeout: Duration,
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    idle_timeout: Duration,
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    request_timeout: Duration,
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    heartbeat_interval: Duration,
    #[serde(default = "default_rps")]
    per_identity_rps: u32,
    #[serde(default = "default_burst")]
    per_identity_burst: u32,
}

fn default_rps() -> u32 {
    1000
}
fn default_burst() -> u32 {
    2000
}

fn default_instance_id() -> String {
    "tesserad".into()
}
fn default_max_message_bytes() -> usize {
    64 * 1024
}
fn default_max_concurrent_streams() -> u32 {
    64
}
fn default_max_connections() -> usize {
    1024
}
fn default_max_connections_per_address() -> usize {
    128
}
fn default_unattested_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_handshake_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_heartbeat() -> Duration {
    Duration::from_secs(5)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
    trust_bundle: PathBuf,
    trust_domain: String,
    #[serde(default)]
    trust_domains: Vec<crate::attest::config::RawTrustDomain>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTokens {
    issuer: String,
    #[serde(default)]
    algorithm: Option<String>,
    #[serde(default)]
    signing_key: Option<PathBuf>,
    #[serde(default = "default_ttl", with = "humantime_serde")]
    default_ttl: Duration,
    #[serde(default = "max_ttl", with = "humantime_serde")]
    max_ttl: Duration,
    #[serde(default = "default_leeway", with = "humantime_serde")]
    leeway: Duration,
    #[serde(default = "default_rotate_every", with = "humantime_serde")]
    rotate_every: Duration,
    #[serde(default)]
    class_max_ttl: BTreeMap<String, String>,
    #[serde(default)]
    kind_max_ttl: BTreeMap<String, String>,
    #[serde(default)]
    max_blast_radius: Option<u32>,
    /// Unset: a quarter of `rotate_every`, at most 10 minutes.
    #[serde(default, with = "humantime_serde::option")]
    rotate_prepublish: Option<Duration>,
    #[serde(default = "delegation::default_bound_classes")]
    bound_classes: Vec<ScopeClass>,
}

fn default_rotate_every() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn default_ttl() -> Duration {
    Duration::from_secs(300)
}
fn max_ttl() -> Duration {
    Duration::from_secs(3600)
}
fn default_leeway() -> Duration {
    Duration::from_secs(5)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTasks {
    #[serde(default = "default_max_task", with = "humantime_serde")]
    max_duration: Duration,
}

impl Default for RawTasks {
    fn default() -> Self {
        Self {
            max_duration: default_max_task(),
        }
    }
}

fn default_max_task() -> Duration {
    Duration::from_secs(24 * 3600)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    #[serde(default = "default_backend")]
    backend: String,
    /// Redis URLs: one for standalone, the primaries for a cluster.
    #[serde(default)]
    urls: Vec<String>,
    /// `standalone`, `cluster` or `sentinel`.
    #[serde(default)]
    mode: Option<String>,
    /// With `mode = "sentinel"`: the monitored primary's name.
    #[serde(default)]
    sentinel_master: Option<String>,
    #[serde(default = "default_prefix")]
    key_prefix: String,
    #[serde(default = "default_store_timeout", with = "humantime_serde")]
    timeout: Duration,
    /// Replicas that must confirm (`WAIT`) each revocation-class write.
    #[serde(default)]
    min_replicas: u32,
    /// How long to wait for them.
    #[serde(default = "default_replica_timeout", with = "humantime_serde")]
    replica_timeout: Duration,
    /// Most live grants one identity holds at once.
    #[serde(default = "default_max_live_grants")]
    max_live_grants_per_identity: u64,
    /// Most live grants one task holds at once.
    #[serde(default = "default_max_live_grants")]
    max_live_grants_per_task: u64,
    /// With `rediss://`: the CA bundle for Redis's certificate (default: `tls.trust_bundle`).
    #[serde(default)]
    tls_ca: Option<PathBuf>,
    /// With `rediss://`: the client certificate Redis may ask for, and its key.
    #[serde(default)]
    tls_cert: Option<PathBuf>,
    #[serde(default)]
    tls_key: Option<PathBuf>,
}

impl Default for RawStore {
    fn default() -> Self {
        Self {
            backend: default_backend(),
            urls: Vec::new(),
            mode: None,
            sentinel_master: None,
            key_prefix: default_prefix(),
            timeout: default_store_timeout(),
            min_replicas: 0,
            replica_timeout: default_replica_timeout(),
            max_live_grants_per_identity: default_max_live_grants(),
            max_live_grants_per_task: default_max_live_grants(),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

fn default_max_live_grants() -> u64 {
    tessera_store::DEFAULT_MAX_LIVE_GRANTS_PER_IDENTITY
}

fn default_replica_timeout() -> Duration {
    Duration::from_millis(500)
}

fn default_prefix() -> String {
    "tessera".into()
}

fn default_store_timeout() -> Duration {
    Duration::from_secs(1)
}

fn default_backend() -> String {
    "memory".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    #[serde(default = "default_level")]
    level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        Self { level: default_level() }
    }
}

fn default_level() -> String {
    "info".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    /// JSON-lines audit file; relative paths resolve against the config file.
    #[serde(default = "default_audit_file")]
    file: PathBuf,
    #[serde(default)]
    fsync: crate::audit::FsyncPolicy,
    #[serde(default = "default_audit_timeout", with = "humantime_serde")]
    timeout: Duration,
    /// Also write every record to a Redis Stream (needs the redis store).
    #[serde(default)]
    redis_stream: bool,
    /// How many sinks must accept a record: `any` (default) or `all`.
    #[serde(default)]
    require: crate::audit::Require,
}

impl Default for RawAudit {
    fn default() -> Self {
        Self {
            file: default_audit_file(),
            fsync: crate::audit::FsyncPolicy::default(),
            timeout: default_audit_timeout(),
            redis_stream: false,
            require: crate::audit::Require::default(),
        }
    }
}

fn default_audit_file() -> PathBuf {
    PathBuf::from("audit.jsonl")
}

fn default_audit_timeout() -> Duration {
    Duration::from_secs(2)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntrospection {
    #[serde(default = "default_max_feed_lag", with = "humantime_serde")]
    max_feed_lag: Duration,
}

impl Default for RawIntrospection {
    fn default() -> Self {
        Self {
            max_feed_lag: default_max_feed_lag(),
        }
    }
}

/// One second: far below any token's lifetime and below how long a
/// revocation takes to reach SDK verifiers (their `max_staleness` is 15 s
/// by default), while the follower's idle reads (every 250 ms) cost a few
/// Redis commands a second.
fn default_max_feed_lag() -> Duration {
    Duration::from_secs(1)
}

impl RawIntrospection {
    fn validate(self) -> Result<IntrospectionConfig, ConfigError> {
        let lag = self.max_feed_lag;
        if !lag.is_zero() && (lag < Duration::from_millis(100) || lag > Duration::from_secs(60)) {
            return Err(key_error(
                "introspection.max_feed_lag",
                "must be 0s (always read the store) or between 100ms and 60s",
            ));
        }
        Ok(IntrospectionConfig { max_feed_lag: lag })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAnomaly {
    #[serde(default = "default_anomaly_enabled")]
    enabled: bool,
    #[serde(default = "default_anomaly_denials")]
    denials: u32,
    #[serde(default = "default_anomaly_within", with = "humantime_serde")]
    within: Duration,
    #[serde(default = "default_anomaly_quarantine", with = "humantime_serde")]
    quarantine: Duration,
}

impl Default for RawAnomaly {
    fn default() -> Self {
        Self {
            enabled: default_anomaly_enabled(),
            denials: default_anomaly_denials(),
            within: default_anomaly_within(),
            quarantine: default_anomaly_quarantine(),
        }
    }
}

fn default_anomaly_enabled() -> bool {
    true
}
fn default_anomaly_denials() -> u32 {
    20
}
fn default_anomaly_within() -> Duration {
    Duration::from_secs(60)
}
fn default_anomaly_quarantine() -> Duration {
    Duration::from_secs(15 * 60)
}

impl RawAnomaly {
    fn validate(self) -> Result<AnomalyConfig, ConfigError> {
        if !(1..=10_000).contains(&self.denials) {
            return Err(key_error("anomaly.denials", "must be between 1 and 10000"));
        }
        let within = chrono::Duration::from_std(self.within).unwrap_or(chrono::Duration::MAX);
        if within < chrono::Duration::seconds(1) || within > chrono::Duration::hours(24) {
            return Err(key_error("anomaly.within", "must be between 1s and 24h"));
        }
        let quarantine = chrono::Duration::from_std(self.quarantine).unwrap_or(chrono::Duration::MAX);
        if quarantine < chrono::Duration::seconds(1) || quarantine > chrono::Duration::days(30) {
            return Err(key_error("anomaly.quarantine", "must be between 1s and 30 days"));
        }
        Ok(AnomalyConfig {
            enabled: self.enabled,
            rule: tessera_core::anomaly::AnomalyRule {
                denials: self.denials,
                within,
                quarantine,
            },
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    id: String,
    kind: IdentityKind,
    owner: String,
    #[serde(default)]
    roles: BTreeSet<Role>,
    #[serde(with = "humantime_serde")]
    max_ttl: Duration,
    #[serde(default)]
    disabled: bool,
    /// Methods it may attest by (default `["x509"]`, plus `unix` with `unix` selectors).
    #[serde(default)]
    attestation: Option<BTreeSet<tessera_core::identity::AttestationMethod>>,
    /// Unix-socket selectors.
    #[serde(default)]
    unix: Option<crate::attest::config::RawUnixSelector>,
    /// A JWK Set of the public keys the identity signs OAuth client
    /// assertions with (`private_key_jwt` at the HTTPS token endpoint).
    #[serde(default)]
    client_jwks_file: Option<PathBuf>,
    /// Or the `https://` URL the broker fetches them from (the client's
    /// `jwks_uri`), with the CA certificates that verify its server.
    #[serde(default)]
    client_jwks_url: Option<String>,
    #[serde(default)]
    client_jwks_ca: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    audience: String,
    #[serde(default)]
    schema_version: String,
    scopes: BTreeMap<String, risk::RawScope>,
    /// SPIFFE IDs of the verifiers that serve this audience.
    #[serde(default)]
    verifiers: Vec<String>,
}

/// `humantime` durations ("5m", "1h 30m") for serde.
pub(crate) mod humantime_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map_err(|e| serde::de::Error::custom(format!("`{s}` is not a duration like \"5m\" or \"90s\": {e}")))
    }

    /// The same for an optional key.
    pub(super) mod option {
        use std::time::Duration;

        use serde::Deserializer;

        pub(in super::super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            super::deserialize(d).map(Some)
        }
    }
}

impl Config {
    /// Reads `path`, applies overrides from `env`, and validates everything
    /// that can be checked without binding a port. Relative paths in the file
    /// resolve against the file's directory.
    pub fn load(path: &Path, env: &dyn EnvSource) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml(&text, path, base, env)
    }

    /// Like [`Config::load`], from text already read.
    pub fn from_toml(text: &str, path: &Path, base: &Path, env: &dyn EnvSource) -> Result<Self, ConfigError> {
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        apply_env(&mut table, env)?;
        let raw: RawConfig = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let key = e.path().to_string();
            let message = e.into_inner().to_string();
            key_error(if key == "." { "(top level)".to_owned() } else { key }, message)
        })?;
        let mut config = raw.validate(base)?;
        config.source = Some(path.to_owned());
        Ok(config)
    }
}

fn apply_env(table: &mut toml::Table, env: &dyn EnvSource) -> Result<(), ConfigError> {
    let mut vars = env.vars();
    vars.sort();
    for (var, value) in vars {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        // Variables the CLI and tooling read; not config keys.
        if matches!(
            rest,
            "CONFIG"
                | "LOG"
                | "ENDPOINT"
                | "CA"
                | "CERT"
                | "KEY"
                | "AS"
                | "DEV_DIR"
                | "OUTPUT"
                | "TOKEN"
                | "JWT_FILE"
                | "UNIX_SOCKET"
        ) {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if path.len() != 2 || path.iter().any(String::is_empty) {
            return Err(ConfigError::Env {
                var,
                message: "expected TESSERA_<SECTION>__<KEY>, e.g. TESSERA_SERVER__LISTEN".into(),
            });
        }
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.clone()));
        let (section, key) = match path.as_slice() {
            [section, key] => (section, key),
            _ => continue,
        };
        let entry = table
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(section_table) = entry else {
            return Err(ConfigError::Env {
                var,
                message: format!("`{section}` is not a section"),
            });
        };
        section_table.insert(key.clone(), parsed);
    }
    Ok(())
}

impl RawStore {
    fn validate(
        self,
        max_ttl: Ttl,
        leeway: Duration,
        max_task: chrono::Duration,
        base: &Path,
        trust_bundle: PathBuf,
    ) -> Result<StoreConfig, ConfigError> {
        use tessera_store::{RedisConfig, RedisDeployment};
        for (key, value) in [
            ("store.max_live_grants_per_identity", self.max_live_grants_per_identity),
            ("store.max_live_grants_per_task", self.max_live_grants_per_task),
        ] {
            if !(1..=10_000_000).contains(&value) {
                return Err(key_error(key, "must be between 1 and 10000000"));
            }
        }
        match self.backend.as_str() {
            "memory" => {
                if !self.urls.is_empty() {
                    return Err(key_error("store.urls", "only used with backend = \"redis\""));
                }
                if self.min_replicas != 0 {
                    return Err(key_error("store.min_replicas", "only used with backend = \"redis\""));
                }
                Ok(StoreConfig::Memory(tessera_store::MemoryLimits {
                    max_live_grants_per_identity: self.max_live_grants_per_identity,
                    max_live_grants_per_task: self.max_live_grants_per_task,
                    ..tessera_store::MemoryLimits::default()
                }))
            }
            "redis" => {
                if self.urls.is_empty() {
                    return Err(key_error(
                        "store.urls",
                        "backend = \"redis\" needs at least one redis:// URL",
                    ));
                }
                if let Some(bad) = self
                    .urls
                    .iter()
                    .find(|u| !(u.starts_with("redis://") || u.starts_with("rediss://")))
                {
                    let shown = bad.split('@').next_back().unwrap_or_default();
                    return Err(key_error(
                        "store.urls",
                        format!("`…{shown}` is not a redis:// or rediss:// URL"),
                    ));
                }
                let wants_tls = self.urls.iter().any(|u| u.starts_with("rediss://"));
                let deployment = match self.mode.as_deref().unwrap_or("standalone") {
                    "standalone" => match self.urls.as_slice() {
                        [url] => RedisDeployment::Standalone { url: url.clone() },
                        _ => return Err(key_error("store.urls", "standalone mode takes exactly one URL")),
                    },
                    "cluster" => RedisDeployment::Cluster { urls: self.urls },
                    "sentinel" => match self.sentinel_master {
                        Some(master) if !master.is_empty() => RedisDeployment::Sentinel {
                            urls: self.urls,
                            master,
                        },
                        _ => {
                            return Err(key_error(
                                "store.sentinel_master",
                                "mode = \"sentinel\" needs the monitored primary's name",
                            ));
                        }
                    },
                    other => {
                        return Err(key_error(
                            "store.mode",
                            format!("`{other}` is not one of standalone, cluster, sentinel"),
                        ));
                    }
                };
                if self.key_prefix.is_empty()
                    || self.key_prefix.len() > 32
                    || !self
                        .key_prefix
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                {
                    return Err(key_error(
                        "store.key_prefix",
                        "must be 1-32 characters of [A-Za-z0-9._-]",
                    ));
                }
                if self.timeout.is_zero() || self.timeout > Duration::from_secs(30) {
                    return Err(key_error("store.timeout", "must be between 1ms and 30s"));
                }
                if self.min_replicas > 16 {
                    return Err(key_error("store.min_replicas", "must be between 0 and 16"));
                }
                if self.replica_timeout.is_zero() || self.replica_timeout > Duration::from_secs(30) {
                    return Err(key_error("store.replica_timeout", "must be between 1ms and 30s"));
                }
                let mut config = RedisConfig::new(deployment);
                config.key_prefix = self.key_prefix;
                config.timeout = self.timeout;
                config.min_replicas = self.min_replicas;
                config.replica_timeout = self.replica_timeout;
                config.max_live_grants_per_identity = self.max_live_grants_per_identity;
                config.max_live_grants_per_task = self.max_live_grants_per_task;
                if self.tls_cert.is_some() != self.tls_key.is_some() {
                    return Err(key_error("store.tls_key", "tls_cert and tls_key go together"));
                }
                if !wants_tls && (self.tls_ca.is_some() || self.tls_cert.is_some()) {
                    return Err(key_error("store.tls_ca", "only used with rediss:// URLs"));
                }
                if wants_tls && matches!(config.deployment, RedisDeployment::Sentinel { .. }) {
                    return Err(key_error(
                        "store.urls",
                        "rediss:// is supported in standalone and cluster mode, not with mode = \"sentinel\"",
                    ));
                }
                config.tls = wants_tls.then(|| tessera_store::RedisTls {
                    ca: self.tls_ca.map_or(trust_bundle, |p| resolve(base, p)),
                    client: self
                        .tls_cert
                        .zip(self.tls_key)
                        .map(|(c, k)| (resolve(base, c), resolve(base, k))),
                });
                // An event matters until every token it concerns has expired,
                // and verifiers accept a token until exp + leeway.
                config.feed_retention = max_ttl.as_duration()
                    + chrono::Duration::from_std(leeway).unwrap_or_default()
                    + chrono::Duration::minutes(5);
                config.task_retention = chrono::Duration::hours(1).max(max_ttl.as_duration());
                let _ = max_task;
                Ok(StoreConfig::Redis(config))
            }
            other => Err(key_error(
                "store.backend",
                format!("`{other}` is not one of memory, redis"),
            )),
        }
    }
}

fn ttl(key: &str, d: Duration) -> Result<Ttl, ConfigError> {
    Ttl::from_secs(d.as_secs()).map_err(|e| key_error(key, e.to_string()))
}

fn resolve(base: &Path, p: PathBuf) -> PathBuf {
    if p.is_absolute() { p } else { base.join(p) }
}

impl RawConfig {
    fn validate(self, base: &Path) -> Result<Config, ConfigError> {
        let s = self.server;
        let listen: SocketAddr = s
            .listen
            .parse()
            .map_err(|_| key_error("server.listen", format!("`{}` is not an IP:port address", s.listen)))?;
        let http_listen = crate::http::parse_listen(&s.http_listen)?;
        if s.instance_id.is_empty() || s.instance_id.len() > 64 {
            return Err(key_error("server.instance_id", "must be 1-64 characters"));
        }
        if !(1024..=16 * 1024 * 1024).contains(&s.max_message_bytes) {
            return Err(key_error(
                "server.max_message_bytes",
                "must be between 1024 and 16777216",
            ));
        }
        if !(1..=10_000).contains(&s.max_concurrent_streams) {
            return Err(key_error(
                "server.max_concurrent_streams",
                "must be between 1 and 10000",
            ));
        }
        if !(1..=1_000_000).contains(&s.max_connections) {
            return Err(key_error("server.max_connections", "must be between 1 and 1000000"));
        }
        if !(1..=1_000_000).contains(&s.max_connections_per_address) {
            return Err(key_error(
                "server.max_connections_per_address",
                "must be between 1 and 1000000",
            ));
        }
        for (key, d) in [
            ("server.unattested_timeout", s.unattested_timeout),
            ("server.idle_timeout", s.idle_timeout),
            ("server.handshake_timeout", s.handshake_timeout),
            ("server.request_timeout", s.request_timeout),
            ("server.heartbeat_interval", s.heartbeat_interval),
        ] {
            if d.is_zero() || d > Duration::from_secs(3600) {
                return Err(key_error(key, "must be between 1ms and 1h"));
            }
        }

        if s.per_identity_burst > 0 && s.per_identity_burst < s.per_identity_rps {
            return Err(key_error(
                "server.per_identity_burst",
                "must be at least server.per_identity_rps",
            ));
        }
        let td = &self.tls.trust_domain;
        if SpiffeId::parse(&format!("spiffe://{td}")).is_err() {
            return Err(key_error(
                "tls.trust_domain",
                format!("`{td}` is not a valid SPIFFE trust domain"),
            ));
        }

        let t = self.tokens;
        if t.issuer.is_empty() || t.issuer.len() > 256 || t.issuer.chars().any(char::is_whitespace) {
            return Err(key_error(
                "tokens.issuer",
                "must be 1-256 characters without spaces (a URL)",
            ));
        }
        let algorithm = match t.algorithm.as_deref() {
            None => Algorithm::Es256,
            Some(a) => a
                .parse()
                .map_err(|_| key_error("tokens.algorithm", format!("`{a}` is not one of ES256, EdDSA")))?,
        };
        let default = ttl("tokens.default_ttl", t.default_ttl)?;
        let max = ttl("tokens.max_ttl", t.max_ttl)?;
        if max.as_secs() > 24 * 3600 {
            return Err(key_error(
                "tokens.max_ttl",
                "must be at most 24h: tokens are short-lived",
            ));
        }
        if default > max {
            return Err(key_error(
                "tokens.default_ttl",
                format!("{default} is above tokens.max_ttl ({max})"),
            ));
        }
        if t.rotate_every < Duration::from_secs(1) || t.rotate_every > Duration::from_secs(90 * 24 * 3600) {
            return Err(key_error("tokens.rotate_every", "must be between 1s and 90 days"));
        }
        let rotate_prepublish = t
            .rotate_prepublish
            .unwrap_or_else(|| (t.rotate_every / 4).min(Duration::from_secs(600)));
        if rotate_prepublish >= t.rotate_every {
            return Err(key_error(
                "tokens.rotate_prepublish",
                format!(
                    "must be shorter than tokens.rotate_every ({})",
                    humantime::format_duration(t.rotate_every)
                ),
            ));
        }
        if t.leeway > Duration::from_secs(300) {
            return Err(key_error("tokens.leeway", "must be at most 5m"));
        }

        let risk = risk::risk_limits(t.class_max_ttl, t.kind_max_ttl, t.max_blast_radius, max)?;
        let approvals = self.approvals.validate(base)?;

        let max_task = chrono::Duration::from_std(self.tasks.max_duration)
            .map_err(|_| key_error("tasks.max_duration", "too long"))?;
        if max_task <= chrono::Duration::zero() || max_task > chrono::Duration::days(30) {
            return Err(key_error("tasks.max_duration", "must be between 1s and 30 days"));
        }

        let store = self.store.validate(
            max,
            t.leeway,
            max_task,
            base,
            resolve(base, self.tls.trust_bundle.clone()),
        )?;
        if self.audit.timeout.is_zero() || self.audit.timeout > Duration::from_secs(60) {
            return Err(key_error("audit.timeout", "must be between 1ms and 60s"));
        }
        if self.audit.redis_stream && !matches!(store, StoreConfig::Redis(_)) {
            return Err(key_error(
                "audit.redis_stream",
                "needs the redis store ([store] backend = \"redis\"): the stream lives there",
            ));
        }
        let anomaly = self.anomaly.validate()?;
        let introspection = self.introspection.validate()?;
        let oauth = self.oauth.validate(base)?;
        let console = self.console.validate(oauth.listen.is_some())?;

        let trust_domains = crate::attest::config::trust_domains(self.tls.trust_domains, base, td)?;
        let attestation = self.attestation.validate(base, &t.issuer)?;
        // Identities may be in any domain we can attest: the [tls] one,
        // [[tls.trust_domains]], or a JWT issuer's mapping.
        let known: BTreeSet<&str> = std::iter::once(td.as_str())
            .chain(trust_domains.iter().map(|d| d.name.as_str()))
            .chain(attestation.jwt_domains())
            .collect();
        let mut identities = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, raw) in self.identities.into_iter().enumerate() {
            let key = |field: &str| format!("identities[{i}].{field}");
            let id = SpiffeId::parse(&raw.id).map_err(|e| key_error(key("id"), format!("`{}`: {e}", raw.id)))?;
            if !known.contains(id.trust_domain()) {
                return Err(key_error(key("id"), format!("`{id}` is not in trust domain `{td}`")));
            }
            let client_keys = match (raw.client_jwks_file, raw.client_jwks_url, raw.client_jwks_ca) {
                (None, None, None) => None,
                (None, Some(url), Some(ca)) => {
                    let valid = url
                        .strip_prefix("https://")
                        .is_some_and(|rest| !rest.is_empty() && !rest.contains(['#', ' ', '@']));
                    if !valid || url.len() > 1024 {
                        return Err(key_error(
                            key("client_jwks_url"),
                            format!("`{url}` is not an https:// URL"),
                        ));
                    }
                    let ca = resolve(base, ca);
                    crate::attest::fetch::client_config(&ca)
                        .map_err(|e| key_error(key("client_jwks_ca"), e.to_string()))?;
                    Some(tessera_core::identity::ClientKeys::Url { url, ca })
                }
                (None, Some(_), None) | (None, None, Some(_)) => {
                    return Err(key_error(
                        key("client_jwks_url"),
                        "set client_jwks_url and client_jwks_ca together",
                    ));
                }
                (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                    return Err(key_error(
                        key("client_jwks_file"),
                        "set one of client_jwks_file and client_jwks_url",
                    ));
                }
                (Some(path), None, None) => {
                    let path = resolve(base, path);
                    let bytes = std::fs::read(&path)
                        .map_err(|e| key_error(key("client_jwks_file"), format!("`{}`: {e}", path.display())))?;
                    let keys = tessera_core::attestation::IssuerKeys::from_json(&bytes)
                        .map_err(|e| key_error(key("client_jwks_file"), format!("`{}`: {e}", path.display())))?;
                    if keys.is_empty() {
                        return Err(key_error(
                            key("client_jwks_file"),
                            format!("`{}` holds no signing key", path.display()),
                        ));
                    }
                    Some(tessera_core::identity::ClientKeys::Keys(std::sync::Arc::new(keys)))
                }
            };
            let rules = crate::attest::config::identity_rules(&key, raw.attestation, raw.unix, client_keys)?;
            if !seen.insert(id.clone()) {
                return Err(key_error(key("id"), format!("`{id}` is registered twice")));
            }
            if raw.owner.trim().is_empty() {
                return Err(key_error(key("owner"), "every identity needs an accountable owner"));
            }
            identities.push((
                Identity {
                    id,
                    kind: raw.kind,
                    owner: raw.owner,
                    max_ttl: ttl(&key("max_ttl"), raw.max_ttl)?,
                    roles: raw.roles,
                    disabled: raw.disabled,
                },
                rules,
            ));
        }

        let mut apis = Vec::new();
        let mut audiences = BTreeSet::new();
        for (i, raw) in self.apis.into_iter().enumerate() {
            let key = |field: &str| format!("apis[{i}].{field}");
            let audience = Audience::parse(&raw.audience)
                .map_err(|e| key_error(key("audience"), format!("`{}` {e}", raw.audience)))?;
            if !audiences.insert(audience.clone()) {
                return Err(key_error(key("audience"), format!("`{audience}` is listed twice")));
            }
            if raw.scopes.is_empty() {
                return Err(key_error(key("scopes"), "an API needs at least one scope"));
            }
            let mut scopes = BTreeMap::new();
            let mut high_impact = BTreeSet::new();
            for (name, spec) in raw.scopes {
                let scope = Scope::parse(&name).map_err(|e| key_error(key("scopes"), format!("`{name}` {e}")))?;
                if spec.high_impact {
                    high_impact.insert(scope.clone());
                }
                scopes.insert(scope, spec.class);
            }
            let mut verifiers = BTreeSet::new();
            for v in &raw.verifiers {
                let id = SpiffeId::parse(v).map_err(|e| key_error(key("verifiers"), format!("`{v}` {e}")))?;
                verifiers.insert(id);
            }
            apis.push(Api {
                audience,
                schema_version: raw.schema_version,
                scopes,
                high_impact,
                verifiers,
            });
        }

        let binding = delegation::settings(self.delegation, t.bound_classes)?;
        Ok(Config {
            server: ServerConfig {
                listen,
                http_listen,
                instance_id: s.instance_id,
                max_message_bytes: s.max_message_bytes,
                max_concurrent_streams: s.max_concurrent_streams,
                max_connections: s.max_connections,
                max_connections_per_address: s.max_connections_per_address,
                handshake_timeout: s.handshake_timeout,
                unattested_timeout: s.unattested_timeout,
                idle_timeout: s.idle_timeout,
                request_timeout: s.request_timeout,
                heartbeat_interval: s.heartbeat_interval,
                per_identity_rps: s.per_identity_rps,
                per_identity_burst: s.per_identity_burst,
            },
            tls: TlsConfig {
                cert: resolve(base, self.tls.cert),
                key: resolve(base, self.tls.key),
                trust_bundle: resolve(base, self.tls.trust_bundle),
                trust_domain: self.tls.trust_domain,
                trust_domains,
            },
            tokens: TokensConfig {
                issuer: t.issuer,
                algorithm,
                signing_key: t.signing_key.map(|p| resolve(base, p)),
                ttl: TtlLimits { default, max },
                leeway_secs: i64::try_from(t.leeway.as_secs()).unwrap_or(0),
                rotate_every: t.rotate_every,
                risk,
                rotate_prepublish,
            },
            tasks: TasksConfig { max_duration: max_task },
            store,
            log: LogConfig { level: self.log.level },
            audit: crate::audit::AuditConfig {
                file: resolve(base, self.audit.file),
                fsync: self.audit.fsync,
                timeout: self.audit.timeout,
                redis_stream: self.audit.redis_stream,
                require: self.audit.require,
            },
            anomaly,
            introspection,
            policy: self.policy.validate(base)?,
            binding,
            oauth,
            console,
            identities: IdentityRegistry::with_rules(identities),
            catalog: ApiCatalog::new(apis),
            approvals,
            attestation,
            source: None,
        })
    }
}

mod delegation;
pub mod policy;
mod risk;
pub use risk::ApprovalsConfig;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod anomaly_tests {
    #![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

    use super::*;

    const MINIMAL: &str = r#"
[server]
listen = "127.0.0.1:0"
[tls]
cert = "c.pem"
key = "k.pem"
trust_bundle = "ca.pem"
trust_domain = "tessera.local"
[tokens]
issuer = "https://tessera.local"
"#;

    fn load(extra: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: BTreeMap<String, String> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Config::from_toml(
            &format!("{MINIMAL}{extra}"),
            Path::new("t.toml"),
            Path::new("/etc"),
            &env,
        )
    }

    #[test]
    fn anomaly_defaults_and_overrides() {
        let c = load("", &[]).unwrap();
        assert!(c.anomaly.enabled);
        assert_eq!(c.anomaly.rule(), Some(tessera_core::anomaly::AnomalyRule::default()));
        assert_eq!(c.anomaly.rule.denials, 20);
        assert_eq!(c.anomaly.rule.within, chrono::Duration::seconds(60));
        assert_eq!(c.anomaly.rule.quarantine, chrono::Duration::minutes(15));
        let c = load(
            "[anomaly]\ndenials = 3\nwithin = \"10s\"\n",
            &[("TESSERA_ANOMALY__QUARANTINE", "2s")],
        )
        .unwrap();
        assert_eq!(c.anomaly.rule.denials, 3);
        assert_eq!(c.anomaly.rule.within, chrono::Duration::seconds(10));
        assert_eq!(c.anomaly.rule.quarantine, chrono::Duration::seconds(2));
        let off = load("", &[("TESSERA_ANOMALY__ENABLED", "false")]).unwrap();
        assert_eq!(off.anomaly.rule(), None);
    }

    #[test]
    fn bad_anomaly_values_name_their_key() {
        for (extra, key) in [
            ("[anomaly]\ndenials = 0\n", "anomaly.denials"),
            ("[anomaly]\ndenials = 10001\n", "anomaly.denials"),
            ("[anomaly]\nwithin = \"0s\"\n", "anomaly.within"),
            ("[anomaly]\nwithin = \"25h\"\n", "anomaly.within"),
            ("[anomaly]\nquarantine = \"500ms\"\n", "anomaly.quarantine"),
            ("[anomaly]\nquarantine = \"31days\"\n", "anomaly.quarantine"),
            ("[anomaly]\nwithin = \"soon\"\n", "anomaly.within"),
            ("[anomaly]\nenabled = \"yes\"\n", "anomaly.enabled"),
            ("[anomaly]\nrate = 1\n", "anomaly.rate"),
        ] {
            match load(extra, &[]) {
                Err(ConfigError::Key { key: got, message }) => assert_eq!(got, key, "{extra}: {message}"),
                other => panic!("{extra}: expected an error naming `{key}`, got {other:?}"),
            }
        }
    }
}
