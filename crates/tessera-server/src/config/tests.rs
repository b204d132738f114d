use std::collections::BTreeMap;
use std::path::Path;

use super::*;

const GOOD: &str = r#"
[server]
listen = "127.0.0.1:0"

[tls]
cert = "broker.pem"
key = "broker.key.pem"
trust_bundle = "ca.pem"
trust_domain = "tessera.local"

[tokens]
issuer = "https://tessera.local"
default_ttl = "5m"
max_ttl = "1h"

[[identities]]
id = "spiffe://tessera.local/agent/a"
kind = "agent"
owner = "team"
roles = ["agent"]
max_ttl = "10m"

[[apis]]
audience = "crm"
[apis.scopes]
"crm.read" = "read"
"#;

fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env: BTreeMap<String, String> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    Config::from_toml(text, Path::new("t.toml"), Path::new("/etc/tessera"), &env)
}

#[track_caller]
fn check_key_error(text: &str, env: &[(&str, &str)], key: &str) {
    match load(text, env) {
        Err(ConfigError::Key { key: got, message }) => assert_eq!(got, key, "{message}"),
        other => panic!("expected an error naming `{key}`, got {other:?}"),
    }
}

#[test]
fn a_good_file_loads_with_defaults() {
    let c = load(GOOD, &[]).unwrap();
    assert_eq!(c.server.listen.port(), 0);
    assert_eq!(c.server.max_message_bytes, 64 * 1024);
    assert_eq!(c.tokens.ttl.default.as_secs(), 300);
    assert_eq!(c.tokens.algorithm, Algorithm::Es256);
    assert_eq!(c.tls.cert, Path::new("/etc/tessera/broker.pem"));
    assert_eq!(c.identities.len(), 1);
    assert!(matches!(c.store, StoreConfig::Memory(_)));
}

#[test]
fn env_overrides_win() {
    let c = load(
        GOOD,
        &[
            ("TESSERA_SERVER__LISTEN", "127.0.0.1:9999"),
            ("TESSERA_TOKENS__DEFAULT_TTL", "1m"),
            ("TESSERA_SERVER__MAX_CONNECTIONS", "7"),
            ("TESSERA_TOKENS__ALGORITHM", "EdDSA"),
            ("TESSERA_CONFIG", "ignored"),
            ("OTHER", "ignored"),
        ],
    )
    .unwrap();
    assert_eq!(c.server.listen.port(), 9999);
    assert_eq!(c.tokens.ttl.default.as_secs(), 60);
    assert_eq!(c.server.max_connections, 7);
    assert_eq!(c.tokens.algorithm, Algorithm::EdDsa);
}

#[test]
fn bad_keys_are_named() {
    check_key_error(GOOD, &[("TESSERA_TOKENS__DEFAULT_TTL", "2h")], "tokens.default_ttl");
    check_key_error(GOOD, &[("TESSERA_TOKENS__DEFAULT_TTL", "soon")], "tokens.default_ttl");
    check_key_error(GOOD, &[("TESSERA_TOKENS__MAX_TTL", "0s")], "tokens.max_ttl");
    check_key_error(GOOD, &[("TESSERA_SERVER__LISTEN", "nowhere")], "server.listen");
    check_key_error(GOOD, &[("TESSERA_SERVER__BOGUS", "1")], "server.bogus");
    check_key_error(GOOD, &[("TESSERA_TOKENS__ALGORITHM", "HS256")], "tokens.algorithm");
    check_key_error(GOOD, &[("TESSERA_TLS__TRUST_DOMAIN", "Bad Domain")], "tls.trust_domain");
    check_key_error(GOOD, &[("TESSERA_STORE__BACKEND", "etcd")], "store.backend");
    check_key_error(GOOD, &[("TESSERA_STORE__BACKEND", "redis")], "store.urls");
    check_key_error(
        GOOD,
        &[
            ("TESSERA_STORE__BACKEND", "redis"),
            ("TESSERA_STORE__URLS", r#"["http://x"]"#),
        ],
        "store.urls",
    );
    check_key_error(
        GOOD,
        &[
            ("TESSERA_STORE__BACKEND", "redis"),
            ("TESSERA_STORE__URLS", r#"["redis://a", "redis://b"]"#),
        ],
        "store.urls",
    );
    check_key_error(
        GOOD,
        &[
            ("TESSERA_STORE__BACKEND", "redis"),
            ("TESSERA_STORE__URLS", r#"["redis://a"]"#),
            ("TESSERA_STORE__MODE", "mesh"),
        ],
        "store.mode",
    );
    check_key_error(
        GOOD,
        &[("TESSERA_SERVER__MAX_MESSAGE_BYTES", "10")],
        "server.max_message_bytes",
    );
    check_key_error(
        &GOOD.replace("spiffe://tessera.local/agent/a", "spiffe://other/agent/a"),
        &[],
        "identities[0].id",
    );
    check_key_error(
        &GOOD.replace("spiffe://tessera.local/agent/a", "not-spiffe"),
        &[],
        "identities[0].id",
    );
    check_key_error(
        &GOOD.replace("kind = \"agent\"", "kind = \"robot\""),
        &[],
        "identities[0].kind",
    );
    check_key_error(
        &GOOD.replace("\"crm.read\" = \"read\"", "\"crm.read\" = \"delete\""),
        &[],
        "apis[0].scopes.crm.read",
    );
    check_key_error(
        &GOOD.replace("[server]\n", "[server]\nlisten_port = 3\n"),
        &[],
        "server.listen_port",
    );
}

#[test]
fn redis_store_settings_load() {
    let c = load(
        GOOD,
        &[
            ("TESSERA_STORE__BACKEND", "redis"),
            (
                "TESSERA_STORE__URLS",
                r#"["redis://127.0.0.1:1", "redis://127.0.0.1:2"]"#,
            ),
            ("TESSERA_STORE__MODE", "cluster"),
            ("TESSERA_STORE__TIMEOUT", "250ms"),
        ],
    )
    .unwrap();
    let StoreConfig::Redis(r) = c.store else {
        panic!("expected redis")
    };
    assert_eq!(r.timeout, std::time::Duration::from_millis(250));
    assert!(matches!(r.deployment, tessera_store::RedisDeployment::Cluster { ref urls } if urls.len() == 2));
    assert!(r.feed_retention >= chrono::Duration::hours(1));
}

#[test]
fn replica_confirmation_settings_load_and_are_checked() {
    let base = [
        ("TESSERA_STORE__BACKEND", "redis"),
        ("TESSERA_STORE__URLS", r#"["redis://127.0.0.1:1"]"#),
    ];
    let StoreConfig::Redis(r) = load(GOOD, &base).unwrap().store else {
        panic!("expected redis")
    };
    assert_eq!(r.min_replicas, 0, "no WAIT unless asked for");
    let mut with = base.to_vec();
    with.extend([
        ("TESSERA_STORE__MIN_REPLICAS", "1"),
        ("TESSERA_STORE__REPLICA_TIMEOUT", "200ms"),
    ]);
    let StoreConfig::Redis(r) = load(GOOD, &with).unwrap().store else {
        panic!("expected redis")
    };
    assert_eq!(r.min_replicas, 1);
    assert_eq!(r.replica_timeout, std::time::Duration::from_millis(200));
    let mut too_many = base.to_vec();
    too_many.push(("TESSERA_STORE__MIN_REPLICAS", "17"));
    check_key_error(GOOD, &too_many, "store.min_replicas");
    let mut zero = base.to_vec();
    zero.push(("TESSERA_STORE__REPLICA_TIMEOUT", "0s"));
    check_key_error(GOOD, &zero, "store.replica_timeout");
    check_key_error(GOOD, &[("TESSERA_STORE__MIN_REPLICAS", "1")], "store.min_replicas");
}

#[test]
fn live_grant_bounds_reach_both_stores() {
    let bounds = [
        ("TESSERA_STORE__MAX_LIVE_GRANTS_PER_IDENTITY", "7"),
        ("TESSERA_STORE__MAX_LIVE_GRANTS_PER_TASK", "9"),
    ];
    let StoreConfig::Memory(m) = load(GOOD, &bounds).unwrap().store else {
        panic!("expected memory")
    };
    assert_eq!((m.max_live_grants_per_identity, m.max_live_grants_per_task), (7, 9));
    let mut redis = bounds.to_vec();
    redis.extend([
        ("TESSERA_STORE__BACKEND", "redis"),
        ("TESSERA_STORE__URLS", r#"["redis://127.0.0.1:1"]"#),
    ]);
    let StoreConfig::Redis(r) = load(GOOD, &redis).unwrap().store else {
        panic!("expected redis")
    };
    assert_eq!((r.max_live_grants_per_identity, r.max_live_grants_per_task), (7, 9));
    check_key_error(
        GOOD,
        &[("TESSERA_STORE__MAX_LIVE_GRANTS_PER_TASK", "0")],
        "store.max_live_grants_per_task",
    );
}

#[test]
fn connection_bounds_load_and_are_checked() {
    let c = load(
        GOOD,
        &[
            ("TESSERA_SERVER__MAX_CONNECTIONS_PER_ADDRESS", "16"),
            ("TESSERA_SERVER__UNATTESTED_TIMEOUT", "3s"),
            ("TESSERA_SERVER__IDLE_TIMEOUT", "1m"),
        ],
    )
    .unwrap();
    assert_eq!(c.server.max_connections_per_address, 16);
    assert_eq!(c.server.unattested_timeout, std::time::Duration::from_secs(3));
    assert_eq!(c.server.idle_timeout, std::time::Duration::from_secs(60));
    let d = load(GOOD, &[]).unwrap();
    assert_eq!(d.server.unattested_timeout, std::time::Duration::from_secs(5));
    check_key_error(
        GOOD,
        &[("TESSERA_SERVER__MAX_CONNECTIONS_PER_ADDRESS", "0")],
        "server.max_connections_per_address",
    );
    check_key_error(
        GOOD,
        &[("TESSERA_SERVER__UNATTESTED_TIMEOUT", "0s")],
        "server.unattested_timeout",
    );
}

#[test]
fn redis_tls_settings_default_to_the_trust_bundle() {
    let base = [
        ("TESSERA_STORE__BACKEND", "redis"),
        ("TESSERA_STORE__URLS", r#"["rediss://u:p@127.0.0.1:6380/0"]"#),
    ];
    let c = load(GOOD, &base).unwrap();
    let StoreConfig::Redis(r) = c.store else {
        panic!("expected redis")
    };
    let tls = r.tls.expect("tls for rediss://");
    assert_eq!(tls.ca, c.tls.trust_bundle);
    assert!(tls.client.is_none());
    let mut half = base.to_vec();
    half.push(("TESSERA_STORE__TLS_CERT", "client.pem"));
    check_key_error(GOOD, &half, "store.tls_key");
    check_key_error(
        GOOD,
        &[
            ("TESSERA_STORE__BACKEND", "redis"),
            ("TESSERA_STORE__URLS", r#"["redis://127.0.0.1:6379"]"#),
            ("TESSERA_STORE__TLS_CA", "ca.pem"),
        ],
        "store.tls_ca",
    );
}

#[test]
fn sentinel_mode_needs_the_primary_name() {
    let base = [
        ("TESSERA_STORE__BACKEND", "redis"),
        (
            "TESSERA_STORE__URLS",
            r#"["redis://127.0.0.1:26379", "redis://127.0.0.1:26380"]"#,
        ),
        ("TESSERA_STORE__MODE", "sentinel"),
    ];
    check_key_error(GOOD, &base, "store.sentinel_master");
    let mut with_name = base.to_vec();
    with_name.push(("TESSERA_STORE__SENTINEL_MASTER", "tessera"));
    let StoreConfig::Redis(r) = load(GOOD, &with_name).unwrap().store else {
        panic!("expected redis")
    };
    assert!(matches!(r.deployment, tessera_store::RedisDeployment::Sentinel { ref master, .. } if master == "tessera"));
}

#[test]
fn malformed_env_and_toml_are_reported() {
    assert!(matches!(
        load(GOOD, &[("TESSERA_LISTEN", "x")]),
        Err(ConfigError::Env { .. })
    ));
    assert!(matches!(load("[server", &[]), Err(ConfigError::Syntax { .. })));
}

#[test]
fn policy_watch_needs_a_directory_to_watch() {
    check_key_error(GOOD, &[("TESSERA_POLICY__WATCH", "true")], "policy.watch");
    let c = load(
        GOOD,
        &[("TESSERA_POLICY__WATCH", "true"), ("TESSERA_POLICY__DIR", "policies")],
    )
    .unwrap();
    assert_eq!(
        c.policy,
        policy::PolicyConfig {
            dir: Some("/etc/tessera/policies".into()),
            watch: true
        }
    );
    assert!(!load(GOOD, &[]).unwrap().policy.watch);
}

// The shipped example config: `example.rs` (it loads, is complete, shows real defaults).

mod example;

// The Kubernetes overlays' configs: `kubernetes.rs` (they load with the pod's environment).
mod kubernetes;
