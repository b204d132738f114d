//! Attestation configuration: `[attestation]` (JWT issuers, the Unix-socket
//! listener, reloading), the attestation fields of `[[identities]]`, and
//! `[[tls.trust_domains]]`. Raw shapes are read by `config.rs`; everything
//! is validated here, and every error names its key.
//!
//! ```toml
//! [attestation]
//! reload_interval = "1s"          # how often the config file's mtime is polled
//!
//! [[attestation.jwt.issuers]]
//! name = "k8s"
//! issuer = "https://kubernetes.default.svc.cluster.local"
//! audience = "tessera"            # default: tokens.issuer
//! jwks_file = "k8s-jwks.json"     # or jwks_url = "https://…" (+ jwks_ca)
//! algorithms = ["RS256", "ES256"]
//! max_age = "5m"
//! leeway = "30s"
//! single_use_jti = true
//! mapping = "spiffe://prod.example/ns/{kubernetes.io.namespace}/sa/{kubernetes.io.serviceaccount.name}"
//!
//! [attestation.unix]
//! socket = "/run/tessera/agent.sock"
//! mode = "0660"
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use tessera_core::attestation::{ClaimMapping, IssuerPolicy, JwtAlgorithm, UnixSelector};
use tessera_core::identity::{AttestationMethod, AttestationRules, SpiffeId};

use crate::config::ConfigError;

fn key_error(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Key {
        key: key.into(),
        message: message.into(),
    }
}

fn resolve(base: &Path, p: PathBuf) -> PathBuf {
    if p.is_absolute() { p } else { base.join(p) }
}

/// `humantime` durations for serde.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s)
        .map_err(|e| serde::de::Error::custom(format!("`{s}` is not a duration like \"5m\" or \"90s\": {e}")))
}

/// `[attestation]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAttestation {
    #[serde(default)]
    jwt: RawJwt,
    #[serde(default)]
    unix: Option<RawUnix>,
    #[serde(default = "default_reload", deserialize_with = "duration")]
    reload_interval: Duration,
}

impl Default for RawAttestation {
    fn default() -> Self {
        Self {
            jwt: RawJwt::default(),
            unix: None,
            reload_interval: default_reload(),
        }
    }
}

fn default_reload() -> Duration {
    Duration::from_secs(1)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwt {
    #[serde(default)]
    issuers: Vec<RawIssuer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIssuer {
    name: String,
    issuer: String,
    #[serde(default)]
    audience: Option<String>,
    #[serde(default)]
    allow_multiple_audiences: bool,
    #[serde(default)]
    jwks_file: Option<PathBuf>,
    #[serde(default)]
    jwks_url: Option<String>,
    #[serde(default)]
    jwks_ca: Option<PathBuf>,
    #[serde(default = "default_algorithms")]
    algorithms: Vec<String>,
    #[serde(default = "default_max_age", deserialize_with = "duration")]
    max_age: Duration,
    #[serde(default = "default_leeway", deserialize_with = "duration")]
    leeway: Duration,
    #[serde(default = "default_single_use_jti")]
    single_use_jti: bool,
    mapping: String,
    #[serde(default = "default_refresh", deserialize_with = "duration")]
    jwks_refresh: Duration,
    #[serde(default = "default_min_refresh", deserialize_with = "duration")]
    jwks_min_refresh: Duration,
    #[serde(default = "default_max_stale", deserialize_with = "duration")]
    jwks_max_stale: Duration,
    #[serde(default = "default_fetch_timeout", deserialize_with = "duration")]
    jwks_timeout: Duration,
    #[serde(default = "default_max_bytes")]
    jwks_max_bytes: usize,
}

fn default_algorithms() -> Vec<String> {
    vec!["ES256".into(), "RS256".into()]
}
/// Minutes, not an hour: an attestation JWT is no long-lived bearer credential.
fn default_max_age() -> Duration {
    Duration::from_secs(300)
}
/// Single use by default: a JWT attests one connection (see
/// `attest::jwt::JwtSessionSlot`); a copy replayed elsewhere is refused.
fn default_single_use_jti() -> bool {
    true
}
fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
fn default_refresh() -> Duration {
    Duration::from_secs(300)
}
fn default_min_refresh() -> Duration {
    Duration::from_secs(10)
}
fn default_max_stale() -> Duration {
    Duration::from_secs(3600)
}
fn default_fetch_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_max_bytes() -> usize {
    64 * 1024
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUnix {
    socket: PathBuf,
    #[serde(default = "default_mode")]
    mode: String,
}

fn default_mode() -> String {
    "0660".into()
}

/// `[[tls.trust_domains]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTrustDomain {
    name: String,
    #[serde(default)]
    bundle: Option<PathBuf>,
    #[serde(default)]
    spiffe_bundle: Option<PathBuf>,
}

/// `unix = { … }` of an identity, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUnixSelector {
    #[serde(default)]
    uid: Option<u32>,
    #[serde(default)]
    gid: Option<u32>,
    #[serde(default)]
    exe_path: Option<String>,
    #[serde(default)]
    exe_sha256: Option<String>,
}

/// Where an issuer's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// A JWK Set file, re-read when it changes.
    File(PathBuf),
    /// An `https://` URL, fetched without following redirects, trusting
    /// the CA certificates in `ca` (PEM).
    Url {
        /// The URL.
        url: String,
        /// Roots to verify the server with.
        ca: PathBuf,
    },
}

/// One configured JWT issuer.
#[derive(Debug, Clone)]
pub struct JwtIssuerConfig {
    /// What its tokens must satisfy.
    pub policy: IssuerPolicy,
    /// Where its keys come from.
    pub jwks: JwksSource,
    /// Keys older than this are refreshed (when next needed).
    pub refresh: Duration,
    /// At most one fetch per this interval (an unknown `kid` cannot make
    /// the broker hammer the issuer).
    pub min_refresh: Duration,
    /// Last good keys are used for at most this long after they were
    /// fetched while refreshes fail; then every token is refused.
    pub max_stale: Duration,
    /// Total time one fetch may take (connect, TLS, headers, body).
    pub fetch_timeout: Duration,
    /// Largest JWK Set body accepted.
    pub max_bytes: usize,
}

/// The Unix-socket attestation listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixConfig {
    /// The socket's path; its directory is created (0700 for `0600`, 0750
    /// otherwise) if missing.
    pub socket: PathBuf,
    /// The socket's permission bits: `0600` or `0660`.
    pub mode: u32,
}

/// One trust domain's bundle file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleFile {
    /// PEM CA certificates.
    Pem(PathBuf),
    /// A SPIFFE bundle (JWK Set with `x509-svid` keys).
    Spiffe(PathBuf),
}

/// A trust domain whose X.509-SVIDs are accepted, and its bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustDomainConfig {
    /// The trust domain name.
    pub name: String,
    /// Its CA bundle.
    pub bundle: BundleFile,
}

/// `[attestation]`, validated.
#[derive(Debug, Clone, Default)]
pub struct AttestationConfig {
    /// JWT issuers; empty means JWT attestation is off.
    pub jwt: Vec<JwtIssuerConfig>,
    /// The Unix-socket listener, if any.
    pub unix: Option<UnixConfig>,
    /// How often the config file (identities, trust bundles) and JWKS files
    /// are checked for changes.
    pub reload_interval: Duration,
}

impl RawAttestation {
    /// Validates `[attestation]`. `domains` are the trust domains with
    /// X.509 bundles; `default_audience` is `tokens.issuer`.
    pub(crate) fn validate(self, base: &Path, default_audience: &str) -> Result<AttestationConfig, ConfigError> {
        if self.reload_interval < Duration::from_millis(100) || self.reload_interval > Duration::from_secs(3600) {
            return Err(key_error("attestation.reload_interval", "must be between 100ms and 1h"));
        }
        let mut names = BTreeSet::new();
        let mut issuers = BTreeSet::new();
        let mut jwt = Vec::new();
        for (i, raw) in self.jwt.issuers.into_iter().enumerate() {
            let key = |field: &str| format!("attestation.jwt.issuers[{i}].{field}");
            if raw.name.is_empty()
                || raw.name.len() > 32
                || !raw
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(key_error(key("name"), "must be 1-32 characters of [a-z0-9-]"));
            }
            if !names.insert(raw.name.clone()) {
                return Err(key_error(key("name"), format!("`{}` is configured twice", raw.name)));
            }
            if raw.issuer.is_empty() || raw.issuer.len() > 512 || raw.issuer.chars().any(char::is_whitespace) {
                return Err(key_error(key("issuer"), "must be 1-512 characters without spaces"));
            }
            if !issuers.insert(raw.issuer.clone()) {
                return Err(key_error(key("issuer"), "two issuers have the same `iss`"));
            }
            let audience = raw.audience.unwrap_or_else(|| default_audience.to_owned());
            if audience.is_empty() || audience.len() > 256 {
                return Err(key_error(key("audience"), "must be 1-256 characters"));
            }
            let jwks = match (raw.jwks_file, raw.jwks_url) {
                (Some(file), None) => {
                    if raw.jwks_ca.is_some() {
                        return Err(key_error(key("jwks_ca"), "only used with jwks_url"));
                    }
                    JwksSource::File(resolve(base, file))
                }
                (None, Some(url)) => {
                    let parsed: hyper::Uri = url
                        .parse()
                        .map_err(|_| key_error(key("jwks_url"), format!("`{url}` is not a URL")))?;
                    if parsed.scheme_str() != Some("https") || parsed.host().is_none() {
                        return Err(key_error(key("jwks_url"), "must be an https:// URL with a host"));
                    }
                    let ca = raw
                        .jwks_ca
                        .map(|p| resolve(base, p))
                        .unwrap_or_else(|| PathBuf::from("/etc/ssl/certs/ca-certificates.crt"));
                    JwksSource::Url { url, ca }
                }
                _ => {
                    return Err(key_error(key("jwks_file"), "set exactly one of jwks_file and jwks_url"));
                }
            };
            let mut algorithms = BTreeSet::new();
            for a in &raw.algorithms {
                let alg = JwtAlgorithm::from_jose(a).ok_or_else(|| {
                    key_error(
                        key("algorithms"),
                        format!("`{a}` is not one of ES256, ES384, EdDSA, RS256, PS256 (asymmetric only)"),
                    )
                })?;
                algorithms.insert(alg);
            }
            if algorithms.is_empty() {
                return Err(key_error(key("algorithms"), "at least one algorithm"));
            }
            let max_age = chrono::Duration::from_std(raw.max_age).unwrap_or(chrono::Duration::MAX);
            if max_age < chrono::Duration::seconds(1) || max_age > tessera_core::attestation::jwt::MAX_TOKEN_AGE {
                return Err(key_error(key("max_age"), "must be between 1s and 24h"));
            }
            let leeway = chrono::Duration::from_std(raw.leeway).unwrap_or(chrono::Duration::MAX);
            if leeway > tessera_core::attestation::jwt::MAX_LEEWAY {
                return Err(key_error(key("leeway"), "must be at most 5m"));
            }
            let mapping = ClaimMapping::parse(&raw.mapping).map_err(|e| key_error(key("mapping"), e.to_string()))?;
            let trust_domains = BTreeSet::from([mapping.trust_domain().to_owned()]);
            for (field, d, lo, hi) in [
                (
                    "jwks_refresh",
                    raw.jwks_refresh,
                    Duration::from_secs(1),
                    Duration::from_secs(24 * 3600),
                ),
                (
                    "jwks_min_refresh",
                    raw.jwks_min_refresh,
                    Duration::from_millis(100),
                    Duration::from_secs(3600),
                ),
                (
                    "jwks_max_stale",
                    raw.jwks_max_stale,
                    Duration::from_secs(1),
                    Duration::from_secs(7 * 24 * 3600),
                ),
                (
                    "jwks_timeout",
                    raw.jwks_timeout,
                    Duration::from_millis(100),
                    Duration::from_secs(60),
                ),
            ] {
                if d < lo || d > hi {
                    return Err(key_error(
                        key(field),
                        format!(
                            "must be between {} and {}",
                            humantime::format_duration(lo),
                            humantime::format_duration(hi)
                        ),
                    ));
                }
            }
            if !(1024..=tessera_core::attestation::jwks::MAX_JWKS_LEN).contains(&raw.jwks_max_bytes) {
                return Err(key_error(key("jwks_max_bytes"), "must be between 1024 and 262144"));
            }
            jwt.push(JwtIssuerConfig {
                policy: IssuerPolicy {
                    name: raw.name,
                    issuer: raw.issuer,
                    audience,
                    allow_multiple_audiences: raw.allow_multiple_audiences,
                    algorithms,
                    max_age,
                    leeway,
                    single_use_jti: raw.single_use_jti,
                    mapping,
                    trust_domains,
                },
                jwks,
                refresh: raw.jwks_refresh,
                min_refresh: raw.jwks_min_refresh,
                max_stale: raw.jwks_max_stale,
                fetch_timeout: raw.jwks_timeout,
                max_bytes: raw.jwks_max_bytes,
            });
        }
        let unix = match self.unix {
            None => None,
            Some(raw) => {
                let mode = match raw.mode.as_str() {
                    "0600" | "600" => 0o600,
                    "0660" | "660" => 0o660,
                    other => {
                        return Err(key_error(
                            "attestation.unix.mode",
                            format!("`{other}` is not 0600 or 0660"),
                        ));
                    }
                };
                if raw.socket.as_os_str().is_empty() {
                    return Err(key_error("attestation.unix.socket", "must be a path"));
                }
                Some(UnixConfig {
                    socket: resolve(base, raw.socket),
                    mode,
                })
            }
        };
        Ok(AttestationConfig {
            jwt,
            unix,
            reload_interval: self.reload_interval,
        })
    }
}

impl AttestationConfig {
    /// Trust domains JWT issuers may assert identities in.
    pub fn jwt_domains(&self) -> impl Iterator<Item = &str> {
        self.jwt.iter().map(|i| i.policy.mapping.trust_domain())
    }
}

/// Validates `[[tls.trust_domains]]`.
pub(crate) fn trust_domains(
    raw: Vec<RawTrustDomain>,
    base: &Path,
    primary: &str,
) -> Result<Vec<TrustDomainConfig>, ConfigError> {
    let mut out: Vec<TrustDomainConfig> = Vec::new();
    for (i, raw) in raw.into_iter().enumerate() {
        let key = |field: &str| format!("tls.trust_domains[{i}].{field}");
        if SpiffeId::parse(&format!("spiffe://{}", raw.name)).is_err() || raw.name.contains('/') {
            return Err(key_error(
                key("name"),
                format!("`{}` is not a valid SPIFFE trust domain", raw.name),
            ));
        }
        if raw.name == primary || out.iter().any(|d| d.name == raw.name) {
            return Err(key_error(key("name"), format!("`{}` is listed twice", raw.name)));
        }
        let bundle = match (raw.bundle, raw.spiffe_bundle) {
            (Some(p), None) => BundleFile::Pem(resolve(base, p)),
            (None, Some(p)) => BundleFile::Spiffe(resolve(base, p)),
            _ => {
                return Err(key_error(
                    key("bundle"),
                    "set exactly one of bundle (PEM) and spiffe_bundle (JSON)",
                ));
            }
        };
        out.push(TrustDomainConfig { name: raw.name, bundle });
    }
    Ok(out)
}

/// An identity's attestation rules from its `attestation` and `unix` keys.
pub(crate) fn identity_rules(
    key: &dyn Fn(&str) -> String,
    methods: Option<BTreeSet<AttestationMethod>>,
    unix: Option<RawUnixSelector>,
    client_keys: Option<tessera_core::identity::ClientKeys>,
) -> Result<AttestationRules, ConfigError> {
    if methods
        .as_ref()
        .is_some_and(|m| m.contains(&AttestationMethod::PrivateKeyJwt))
        && client_keys.is_none()
    {
        return Err(key_error(
            key("client_jwks_file"),
            "attestation by private_key_jwt needs the client's keys",
        ));
    }
    let mut methods = methods.unwrap_or_else(|| {
        // Default x509; an identity with unix selectors may also use unix.
        let mut m = BTreeSet::from([AttestationMethod::X509]);
        if unix.is_some() {
            m.insert(AttestationMethod::Unix);
        }
        m
    });
    // Registering client keys is the opt-in to `private_key_jwt`.
    if client_keys.is_some() {
        methods.insert(AttestationMethod::PrivateKeyJwt);
    }
    if methods.is_empty() {
        return Err(key_error(key("attestation"), "at least one of x509, jwt, unix"));
    }
    let unix = match unix {
        None => None,
        Some(raw) => {
            if let Some(h) = &raw.exe_sha256 {
                let hex = h.strip_prefix("sha256:").unwrap_or(h);
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(key_error(
                        key("unix.exe_sha256"),
                        "must be 64 hex digits (optionally `sha256:`)",
                    ));
                }
            }
            if let Some(p) = &raw.exe_path
                && !p.starts_with('/')
            {
                return Err(key_error(key("unix.exe_path"), "must be an absolute path"));
            }
            let selector = UnixSelector {
                uid: raw.uid,
                gid: raw.gid,
                exe_path: raw.exe_path,
                exe_sha256: raw.exe_sha256.map(|h| h.to_ascii_lowercase()),
            };
            if !selector.is_specific() {
                return Err(key_error(
                    key("unix"),
                    "needs `uid`: an executable hash alone does not resist code injection by the same user",
                ));
            }
            Some(selector)
        }
    };
    if methods.contains(&AttestationMethod::Unix) && unix.is_none() {
        return Err(key_error(key("unix"), "attestation by unix needs unix selectors"));
    }
    Ok(AttestationRules {
        methods,
        unix,
        client_keys,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

    use std::collections::BTreeMap;

    use tessera_core::identity::SpiffeId;

    use crate::config::{Config, ConfigError};

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

    fn load(extra: &str) -> Result<Config, ConfigError> {
        load_in(MINIMAL, extra)
    }

    fn load_in(base: &str, extra: &str) -> Result<Config, ConfigError> {
        Config::from_toml(
            &format!("{base}{extra}"),
            std::path::Path::new("t.toml"),
            std::path::Path::new("/etc/tessera"),
            &BTreeMap::<String, String>::new(),
        )
    }

    #[track_caller]
    fn key_error(extra: &str, key: &str) {
        match load(extra) {
            Err(ConfigError::Key { key: got, message }) => assert_eq!(got, key, "{message}"),
            other => panic!("expected an error naming `{key}`, got {other:?}"),
        }
    }

    #[test]
    fn the_examples_load() {
        for (name, text) in [
            (
                "kubernetes",
                include_str!("../../../../deploy/examples/attestation-kubernetes.toml"),
            ),
            (
                "ci",
                include_str!("../../../../deploy/examples/attestation-ci-oidc.toml"),
            ),
            (
                "unix",
                include_str!("../../../../deploy/examples/attestation-unix.toml"),
            ),
            (
                "trust domains",
                include_str!("../../../../deploy/examples/trust-domains.toml"),
            ),
        ] {
            // The examples are written for a broker whose [tls] trust domain is prod.example.
            let base = MINIMAL.replace("\"tessera.local\"", "\"prod.example\"");
            let c = load_in(&base, text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!c.identities.is_empty() || !c.tls.trust_domains.is_empty(), "{name}");
        }
        let k8s = load(include_str!("../../../../deploy/examples/attestation-kubernetes.toml")).unwrap();
        assert_eq!(k8s.attestation.jwt[0].policy.audience, "tessera");
        let id = SpiffeId::parse("spiffe://prod.example/ns/payments/sa/reconciler").unwrap();
        assert!(
            k8s.identities
                .lookup_for(&id, tessera_core::identity::AttestationMethod::Jwt)
                .is_ok()
        );
        assert!(
            k8s.identities
                .lookup_for(&id, tessera_core::identity::AttestationMethod::X509)
                .is_err()
        );
    }

    #[test]
    fn identities_default_to_x509_and_bad_attestation_keys_are_named() {
        let c = load(
            "[[identities]]\nid = \"spiffe://tessera.local/a\"\nkind = \"agent\"\nowner = \"t\"\nmax_ttl = \"1m\"\n",
        )
        .unwrap();
        let a = SpiffeId::parse("spiffe://tessera.local/a").unwrap();
        assert!(
            c.identities
                .lookup_for(&a, tessera_core::identity::AttestationMethod::X509)
                .is_ok()
        );
        assert!(
            c.identities
                .lookup_for(&a, tessera_core::identity::AttestationMethod::Jwt)
                .is_err()
        );
        let id =
            "[[identities]]\nid = \"spiffe://tessera.local/a\"\nkind = \"agent\"\nowner = \"t\"\nmax_ttl = \"1m\"\n";
        // Unknown values are refused by serde (its path has no index).
        assert!(matches!(
            load(&format!("{id}attestation = [\"mtls\"]\n")),
            Err(ConfigError::Key { key, .. }) if key.starts_with("identities")
        ));
        key_error(&format!("{id}attestation = []\n"), "identities[0].attestation");
        key_error(&format!("{id}attestation = [\"unix\"]\n"), "identities[0].unix");
        key_error(&format!("{id}unix = {{ gid = 5 }}\n"), "identities[0].unix");
        // Every unix selector needs a uid: a hash alone is refused.
        key_error(
            &format!("{id}unix = {{ exe_sha256 = \"{}\" }}\n", "ab".repeat(32)),
            "identities[0].unix",
        );
        key_error(
            &format!("{id}unix = {{ uid = 5, exe_sha256 = \"xyz\" }}\n"),
            "identities[0].unix.exe_sha256",
        );
        key_error(
            &format!("{id}unix = {{ uid = 5, exe_path = \"bin/x\" }}\n"),
            "identities[0].unix.exe_path",
        );
        key_error(
            "[[identities]]\nid = \"spiffe://elsewhere/a\"\nkind = \"agent\"\nowner = \"t\"\nmax_ttl = \"1m\"\n",
            "identities[0].id",
        );
    }

    #[test]
    fn bad_issuers_are_named() {
        let issuer = |extra: &str| {
            format!(
                "[[attestation.jwt.issuers]]\nname = \"k\"\nissuer = \"https://i\"\njwks_file = \"j.json\"\nmapping = \"spiffe://tessera.local/x/{{sub}}\"\n{extra}"
            )
        };
        assert!(load(&issuer("")).is_ok());
        key_error(
            &issuer("algorithms = [\"HS256\"]\n"),
            "attestation.jwt.issuers[0].algorithms",
        );
        key_error(
            &issuer("algorithms = [\"none\"]\n"),
            "attestation.jwt.issuers[0].algorithms",
        );
        key_error(&issuer("algorithms = []\n"), "attestation.jwt.issuers[0].algorithms");
        key_error(&issuer("leeway = \"10m\"\n"), "attestation.jwt.issuers[0].leeway");
        key_error(&issuer("max_age = \"2days\"\n"), "attestation.jwt.issuers[0].max_age");
        key_error(
            &issuer("jwks_url = \"https://x\"\n"),
            "attestation.jwt.issuers[0].jwks_file",
        );
        key_error(
            &issuer("jwks_max_bytes = 100\n"),
            "attestation.jwt.issuers[0].jwks_max_bytes",
        );
        key_error(&issuer("jku = \"x\"\n"), "attestation.jwt.issuers[0].jku");
        let url = "[[attestation.jwt.issuers]]\nname = \"k\"\nissuer = \"https://i\"\nmapping = \"spiffe://tessera.local/x/{sub}\"\n";
        key_error(
            &format!("{url}jwks_url = \"http://127.0.0.1/jwks\"\n"),
            "attestation.jwt.issuers[0].jwks_url",
        );
        let bad_mapping = "[[attestation.jwt.issuers]]\nname = \"k\"\nissuer = \"https://i\"\njwks_file = \"j\"\nmapping = \"spiffe://{iss}/x/{sub}\"\n";
        key_error(bad_mapping, "attestation.jwt.issuers[0].mapping");
        key_error(
            &format!("{}{}", issuer(""), issuer("")),
            "attestation.jwt.issuers[1].name",
        );
        key_error(
            "[attestation.unix]\nsocket = \"/run/t.sock\"\nmode = \"0666\"\n",
            "attestation.unix.mode",
        );
        key_error(
            "[[tls.trust_domains]]\nname = \"tessera.local\"\nbundle = \"b.pem\"\n",
            "tls.trust_domains[0].name",
        );
        key_error("[[tls.trust_domains]]\nname = \"p\"\n", "tls.trust_domains[0].bundle");
        key_error(
            "[attestation]\nreload_interval = \"1ms\"\n",
            "attestation.reload_interval",
        );
    }
}
