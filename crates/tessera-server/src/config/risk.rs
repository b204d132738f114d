//! Risk configuration: the long form of `[[apis]]` scopes (class and
//! high-impact flag), the `[tokens]` caps (`class_max_ttl`, `kind_max_ttl`,
//! `max_blast_radius`) and the `[approvals]` section.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use tessera_core::identity::IdentityKind;
use tessera_core::risk::RiskLimits;
use tessera_core::task::ScopeClass;
use tessera_core::ttl::Ttl;

use super::{ConfigError, key_error};

/// One scope of an `[[apis]]` entry: the short form `"orders.read" = "read"`
/// or the long form `"payments.send" = { class = "write", high_impact = true }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RawScope {
    pub(super) class: ScopeClass,
    pub(super) high_impact: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScopeTable {
    class: ScopeClass,
    #[serde(default)]
    high_impact: bool,
}

const SCOPE_FORMS: &str =
    "expected a class (\"discover\", \"read\", \"write\" or \"admin\") or { class = \"write\", high_impact = true }";

impl<'de> Deserialize<'de> for RawScope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        match toml::Value::deserialize(d)? {
            toml::Value::String(s) => {
                let class = ScopeClass::deserialize(toml::Value::String(s.clone()))
                    .map_err(|_| D::Error::custom(format!("`{s}` is not a scope class; {SCOPE_FORMS}")))?;
                Ok(Self {
                    class,
                    high_impact: false,
                })
            }
            toml::Value::Table(t) => {
                let raw = RawScopeTable::deserialize(toml::Value::Table(t))
                    .map_err(|e| D::Error::custom(format!("{}; {SCOPE_FORMS}", e.message().trim())))?;
                Ok(Self {
                    class: raw.class,
                    high_impact: raw.high_impact,
                })
            }
            _ => Err(D::Error::custom(SCOPE_FORMS)),
        }
    }
}

fn parse_ttl(key: &str, value: &str, max: Ttl) -> Result<Ttl, ConfigError> {
    let d = humantime::parse_duration(value)
        .map_err(|e| key_error(key, format!("`{value}` is not a duration like \"5m\": {e}")))?;
    let ttl = Ttl::from_secs(d.as_secs()).map_err(|e| key_error(key, e.to_string()))?;
    if ttl > max {
        return Err(key_error(key, format!("{ttl} is above tokens.max_ttl ({max})")));
    }
    Ok(ttl)
}

/// `[tokens] class_max_ttl` (scope class → duration), `kind_max_ttl`
/// (identity kind → duration) and `max_blast_radius`, validated against the
/// broker's maximum lifetime: defaults above `max` are lowered to it;
/// explicit values above it are errors naming the key.
pub(super) fn risk_limits(
    class_max_ttl: BTreeMap<String, String>,
    kind_max_ttl: BTreeMap<String, String>,
    max_blast_radius: Option<u32>,
    max: Ttl,
) -> Result<RiskLimits, ConfigError> {
    let mut limits = RiskLimits::default();
    for ttl in limits
        .class_max_ttl
        .values_mut()
        .chain(limits.kind_max_ttl.values_mut())
    {
        *ttl = (*ttl).min(max);
    }
    for (name, value) in &class_max_ttl {
        let key = format!("tokens.class_max_ttl.{name}");
        let class = ScopeClass::deserialize(toml::Value::String(name.clone()))
            .map_err(|_| key_error(&key, "not a scope class: one of discover, read, write, admin"))?;
        limits.class_max_ttl.insert(class, parse_ttl(&key, value, max)?);
    }
    let mut kinds: HashMap<IdentityKind, Ttl> = limits.kind_max_ttl;
    for (name, value) in &kind_max_ttl {
        let key = format!("tokens.kind_max_ttl.{name}");
        let kind = IdentityKind::deserialize(toml::Value::String(name.clone()))
            .map_err(|_| key_error(&key, "not an identity kind: one of agent, service, partner, human"))?;
        kinds.insert(kind, parse_ttl(&key, value, max)?);
    }
    limits.kind_max_ttl = kinds;
    if max_blast_radius == Some(0) {
        return Err(key_error("tokens.max_blast_radius", "must be at least 1"));
    }
    limits.max_blast_radius = max_blast_radius;
    Ok(limits)
}

/// `[approvals]`: how requests that need a person's approval wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalsConfig {
    /// How long a pending approval waits for a decision (never past its task's deadline).
    pub ttl: Duration,
    /// How often a waiting `AwaitApproval` re-reads the shared store (a
    /// decision on another replica is seen within this).
    pub poll_interval: Duration,
    /// Where to POST a notice of each new pending approval (optional).
    pub webhook: Option<String>,
    /// PEM roots for an https webhook.
    pub webhook_ca: Option<std::path::PathBuf>,
    /// A file holding the HMAC-SHA256 key the notices are signed with.
    pub webhook_secret_file: Option<std::path::PathBuf>,
    /// The deadline of each attempt.
    pub webhook_timeout: Duration,
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(15 * 60),
            poll_interval: Duration::from_millis(500),
            webhook: None,
            webhook_ca: None,
            webhook_secret_file: None,
            webhook_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApprovals {
    #[serde(default = "default_approval_ttl", with = "super::humantime_serde")]
    ttl: Duration,
    #[serde(default = "default_poll", with = "super::humantime_serde")]
    poll_interval: Duration,
    #[serde(default)]
    webhook: Option<String>,
    #[serde(default)]
    webhook_ca: Option<std::path::PathBuf>,
    #[serde(default)]
    webhook_secret_file: Option<std::path::PathBuf>,
    #[serde(default = "default_webhook_timeout", with = "super::humantime_serde")]
    webhook_timeout: Duration,
}

fn default_webhook_timeout() -> Duration {
    ApprovalsConfig::default().webhook_timeout
}

fn default_approval_ttl() -> Duration {
    ApprovalsConfig::default().ttl
}

fn default_poll() -> Duration {
    ApprovalsConfig::default().poll_interval
}

impl Default for RawApprovals {
    fn default() -> Self {
        Self {
            ttl: default_approval_ttl(),
            poll_interval: default_poll(),
            webhook: None,
            webhook_ca: None,
            webhook_secret_file: None,
            webhook_timeout: default_webhook_timeout(),
        }
    }
}

impl RawApprovals {
    pub(super) fn validate(self, base: &std::path::Path) -> Result<ApprovalsConfig, ConfigError> {
        if self.ttl < Duration::from_secs(1) || self.ttl > Duration::from_secs(24 * 3600) {
            return Err(key_error("approvals.ttl", "must be between 1s and 24h"));
        }
        if self.poll_interval < Duration::from_millis(50) || self.poll_interval > Duration::from_secs(10) {
            return Err(key_error("approvals.poll_interval", "must be between 50ms and 10s"));
        }
        if self.webhook_timeout < Duration::from_millis(100) || self.webhook_timeout > Duration::from_secs(60) {
            return Err(key_error("approvals.webhook_timeout", "must be between 100ms and 60s"));
        }
        let resolve = |p: std::path::PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let webhook = self.webhook.filter(|w| !w.is_empty());
        if let Some(url) = &webhook {
            crate::http::webhook::check_url(url, self.webhook_ca.is_some())
                .map_err(|e| key_error("approvals.webhook", e))?;
        }
        if webhook.is_none() && (self.webhook_ca.is_some() || self.webhook_secret_file.is_some()) {
            return Err(key_error(
                "approvals.webhook",
                "webhook_ca or webhook_secret_file is set but no webhook URL",
            ));
        }
        Ok(ApprovalsConfig {
            ttl: self.ttl,
            poll_interval: self.poll_interval,
            webhook,
            webhook_ca: self.webhook_ca.map(resolve),
            webhook_secret_file: self.webhook_secret_file.map(resolve),
            webhook_timeout: self.webhook_timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

    use std::path::Path;

    use tessera_core::task::{Audience, Scope};

    use super::super::{Config, ConfigError};
    use super::*;

    const BASE: &str = r#"
[server]
listen = "127.0.0.1:0"
[tls]
cert = "c.pem"
key = "k.pem"
trust_bundle = "ca.pem"
trust_domain = "tessera.local"
"#;

    fn load(tokens: &str, rest: &str) -> Result<Config, ConfigError> {
        let text = format!("{BASE}[tokens]\nissuer = \"https://tessera.local\"\n{tokens}\n{rest}");
        Config::from_toml(
            &text,
            Path::new("t.toml"),
            Path::new("/etc"),
            &BTreeMap::<String, String>::new(),
        )
    }

    #[track_caller]
    fn check_key(tokens: &str, rest: &str, key: &str) {
        match load(tokens, rest) {
            Err(ConfigError::Key { key: got, message }) => assert_eq!(got, key, "{message}"),
            other => panic!("expected an error naming `{key}`, got {other:?}"),
        }
    }

    const APIS: &str = r#"
[[apis]]
audience = "pay"
schema_version = "3"
[apis.scopes]
"invoices.read" = "read"
"payments.send" = { class = "write", high_impact = true }
"notes.write" = { class = "write" }
"#;

    #[test]
    fn scopes_take_the_short_and_the_long_form() {
        let c = load("", APIS).unwrap();
        let aud = Audience::parse("pay").unwrap();
        let api = c.catalog.api(&aud).unwrap();
        let s = |x: &str| Scope::parse(x).unwrap();
        assert_eq!(api.scopes[&s("invoices.read")], ScopeClass::Read);
        assert_eq!(api.scopes[&s("payments.send")], ScopeClass::Write);
        assert_eq!(api.scopes[&s("notes.write")], ScopeClass::Write);
        assert!(c.catalog.is_high_impact(&aud, &s("payments.send")));
        assert!(!c.catalog.is_high_impact(&aud, &s("notes.write")));
        assert!(!c.catalog.is_high_impact(&aud, &s("invoices.read")));
        assert_eq!(api.schema_version, "3");
    }

    #[test]
    fn bad_scopes_name_their_key() {
        for (scopes, key) in [
            (r#""a.b" = "delete""#, "apis[0].scopes.a.b"),
            (r#""a.b" = { class = "nope" }"#, "apis[0].scopes.a.b"),
            (
                r#""a.b" = { class = "read", high_impact = "yes" }"#,
                "apis[0].scopes.a.b",
            ),
            (r#""a.b" = { class = "read", risky = true }"#, "apis[0].scopes.a.b"),
            (r#""a.b" = { high_impact = true }"#, "apis[0].scopes.a.b"),
            (r#""a.b" = 3"#, "apis[0].scopes.a.b"),
        ] {
            let rest = format!("[[apis]]\naudience = \"x\"\n[apis.scopes]\n{scopes}\n");
            match load("", &rest) {
                Err(ConfigError::Key { key: got, message }) => {
                    assert!(got.starts_with("apis[0].scopes"), "{scopes}: {got}: {message}");
                    let _ = key;
                }
                other => panic!("{scopes}: expected a key error, got {other:?}"),
            }
        }
    }

    #[test]
    fn ttl_caps_have_safe_defaults_and_overrides() {
        let c = load("", "").unwrap();
        let r = &c.tokens.risk;
        assert!(r.class_max_ttl[&ScopeClass::Write] < r.class_max_ttl[&ScopeClass::Read]);
        assert!(r.kind_max_ttl[&IdentityKind::Agent] < r.kind_max_ttl[&IdentityKind::Service]);
        assert_eq!(r.max_blast_radius, None);
        // Defaults never exceed the broker's maximum.
        let c = load("max_ttl = \"10m\"\ndefault_ttl = \"1m\"", "").unwrap();
        assert!(c.tokens.risk.class_max_ttl.values().all(|t| t.as_secs() <= 600));
        let c = load(
            "max_blast_radius = 40\n[tokens.class_max_ttl]\nwrite = \"2m\"\n[tokens.kind_max_ttl]\nagent = \"90s\"",
            "",
        )
        .unwrap();
        assert_eq!(c.tokens.risk.class_max_ttl[&ScopeClass::Write].as_secs(), 120);
        assert_eq!(c.tokens.risk.class_max_ttl[&ScopeClass::Read].as_secs(), 3600);
        assert_eq!(c.tokens.risk.kind_max_ttl[&IdentityKind::Agent].as_secs(), 90);
        assert_eq!(c.tokens.risk.max_blast_radius, Some(40));
    }

    #[test]
    fn bad_caps_name_their_key() {
        check_key(
            "[tokens.class_max_ttl]\nexecute = \"1m\"",
            "",
            "tokens.class_max_ttl.execute",
        );
        check_key(
            "[tokens.class_max_ttl]\nwrite = \"soon\"",
            "",
            "tokens.class_max_ttl.write",
        );
        check_key(
            "[tokens.class_max_ttl]\nwrite = \"2h\"",
            "",
            "tokens.class_max_ttl.write",
        );
        check_key(
            "[tokens.class_max_ttl]\nwrite = \"0s\"",
            "",
            "tokens.class_max_ttl.write",
        );
        check_key("[tokens.kind_max_ttl]\nrobot = \"1m\"", "", "tokens.kind_max_ttl.robot");
        check_key("max_blast_radius = 0", "", "tokens.max_blast_radius");
        check_key("max_blast_radius = -1", "", "tokens.max_blast_radius");
    }

    #[test]
    fn approvals_section() {
        let c = load("", "").unwrap();
        assert_eq!(c.approvals, ApprovalsConfig::default());
        let c = load("", "[approvals]\nttl = \"2s\"\npoll_interval = \"100ms\"").unwrap();
        assert_eq!(c.approvals.ttl, Duration::from_secs(2));
        assert_eq!(c.approvals.poll_interval, Duration::from_millis(100));
        check_key("", "[approvals]\nttl = \"0s\"", "approvals.ttl");
        check_key("", "[approvals]\nttl = \"2d\"", "approvals.ttl");
        check_key("", "[approvals]\npoll_interval = \"1ms\"", "approvals.poll_interval");
        check_key("", "[approvals]\nwebhook = \"x\"", "approvals.webhook");
        check_key(
            "",
            "[approvals]\nwebhook = \"http://hooks.example.org/x\"",
            "approvals.webhook",
        );
        check_key(
            "",
            "[approvals]\nwebhook = \"https://hooks.example.org/x\"",
            "approvals.webhook",
        );
        check_key("", "[approvals]\nwebhook_ca = \"ca.pem\"", "approvals.webhook");
        let c = load(
            "",
            "[approvals]\nwebhook = \"http://127.0.0.1:9/hook\"\nwebhook_timeout = \"2s\"",
        )
        .unwrap();
        assert_eq!(c.approvals.webhook.as_deref(), Some("http://127.0.0.1:9/hook"));
        assert_eq!(c.approvals.webhook_timeout, Duration::from_secs(2));
        check_key(
            "",
            "[approvals]\nwebhook = \"http://127.0.0.1:9/\"\nwebhook_timeout = \"1ms\"",
            "approvals.webhook_timeout",
        );
    }
}
