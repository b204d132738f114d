//! The broker configuration each Kubernetes overlay ships in its ConfigMap
//! (`deploy/kubernetes/overlays/*/tesserad.toml`), loaded by the real loader
//! with the environment the Deployment gives it (the pod's name, and on Redis
//! the store URLs from the Secret): every key is one the broker accepts, and
//! the values are the ones the manifests rely on. The manifests themselves
//! are rendered and checked by `deploy/kubernetes/tests`.

use std::collections::BTreeMap;
use std::path::Path;

use tessera_core::identity::{AttestationMethod, SpiffeId};
use tessera_store::RedisDeployment;

use super::*;

const SINGLE: &str = include_str!("../../../../../deploy/kubernetes/overlays/single/tesserad.toml");
const HA: &str = include_str!("../../../../../deploy/kubernetes/overlays/ha/tesserad.toml");
const SPIRE: &str = include_str!("../../../../../deploy/kubernetes/overlays/spire/tesserad.toml");

/// The Secret's `store-urls`, as docs/OPERATIONS.md tells the operator to write it.
const STORE_URLS: &str = r#"["redis://tessera:PASSWORD@redis-sentinel-0.redis-sentinel:26379/0", "redis://tessera:PASSWORD@redis-sentinel-1.redis-sentinel:26379/0", "redis://tessera:PASSWORD@redis-sentinel-2.redis-sentinel:26379/0"]"#;

/// Loads `text` as the pod does: mounted at /etc/tessera/config/tesserad.toml,
/// with the Deployment's `TESSERA_*` variables.
#[track_caller]
fn load_in_pod(text: &str, redis: bool) -> Config {
    let mut env = BTreeMap::new();
    env.insert(
        "TESSERA_SERVER__INSTANCE_ID".to_owned(),
        "tesserad-5d8f7c9b4-x2x7q".to_owned(),
    );
    if redis {
        env.insert("TESSERA_STORE__URLS".to_owned(), STORE_URLS.to_owned());
    }
    Config::from_toml(
        text,
        Path::new("/etc/tessera/config/tesserad.toml"),
        Path::new("/etc/tessera/config"),
        &env,
    )
    .unwrap_or_else(|e| panic!("the overlay's tesserad.toml does not load: {e}"))
}

/// What every overlay shares: the ports the Services and probes use, the
/// mounted paths, the pod's name as the instance id.
#[track_caller]
fn check_common(c: &Config) {
    assert_eq!(c.server.listen, "0.0.0.0:7443".parse().unwrap());
    assert_eq!(c.server.http_listen, "0.0.0.0:7444".parse().unwrap());
    assert_eq!(c.oauth.listen, Some("0.0.0.0:7445".parse().unwrap()));
    assert_eq!(c.server.instance_id, "tesserad-5d8f7c9b4-x2x7q");
    assert_eq!(c.tls.cert, Path::new("/etc/tessera/tls/tls.crt"));
    assert_eq!(c.tls.key, Path::new("/etc/tessera/tls/tls.key"));
    assert_eq!(c.audit.file, Path::new("/var/lib/tessera/audit.jsonl"));
    assert_eq!(c.policy.dir.as_deref(), Some(Path::new("/etc/tessera/policies")));
    // The ConfigMap's policies reload when the kubelet updates them.
    assert!(c.policy.watch);
    assert!(!c.identities.is_empty());
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

#[test]
fn the_single_replica_overlay_loads_on_the_embedded_store() {
    let c = load_in_pod(SINGLE, false);
    check_common(&c);
    assert!(matches!(c.store, StoreConfig::Memory(_)));
    assert_eq!(c.tls.trust_bundle, Path::new("/etc/tessera/tls/ca.crt"));
}

#[test]
fn the_ha_overlay_loads_on_sentinel_with_jwt_attestation() {
    let c = load_in_pod(HA, true);
    check_common(&c);
    let StoreConfig::Redis(redis) = &c.store else {
        panic!("not the Redis store: {:?}", c.store)
    };
    match &redis.deployment {
        RedisDeployment::Sentinel { urls, master } => {
            assert_eq!(urls.len(), 3);
            assert_eq!(master, "tessera");
        }
        other => panic!("not Sentinel: {other:?}"),
    }
    assert_eq!(redis.key_prefix, "tessera");
    assert!(c.audit.redis_stream);
    assert_eq!(c.attestation.jwt.len(), 1);
    // The example agent (deploy/kubernetes/examples/agent.yaml) attests by
    // its projected token: namespace agents, service account researcher.
    let researcher = id("spiffe://example.org/ns/agents/sa/researcher");
    assert!(c.identities.lookup_for(&researcher, AttestationMethod::Jwt).is_ok());
    assert!(c.identities.lookup_for(&researcher, AttestationMethod::X509).is_err());
}

#[test]
fn the_ha_overlay_needs_the_store_urls_from_the_secret() {
    let env = BTreeMap::from([("TESSERA_SERVER__INSTANCE_ID".to_owned(), "tesserad-0".to_owned())]);
    let refused = Config::from_toml(
        HA,
        Path::new("/etc/tessera/config/tesserad.toml"),
        Path::new("/etc/tessera/config"),
        &env,
    );
    assert!(refused.is_err(), "a Redis store without URLs must not load");
}

#[test]
fn the_spire_overlay_loads_with_spire_bundle_and_x509_identities() {
    let c = load_in_pod(SPIRE, true);
    check_common(&c);
    assert_eq!(c.tls.trust_bundle, Path::new("/run/spire/certs/bundle.pem"));
    assert!(c.attestation.jwt.is_empty());
    let researcher = id("spiffe://example.org/ns/agents/sa/researcher");
    assert!(c.identities.lookup_for(&researcher, AttestationMethod::X509).is_ok());
    assert!(c.identities.lookup_for(&researcher, AttestationMethod::Jwt).is_err());
}
