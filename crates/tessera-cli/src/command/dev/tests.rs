//! `dev init` in a temporary directory, checked with x509-parser and toml.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test"
)]

use std::sync::atomic::{AtomicU32, Ordering};

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

use super::*;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "tessera-dev-init-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn options(dir: &Path) -> InitOptions {
    InitOptions {
        dir: dir.to_owned(),
        trust_domain: "tessera.local".to_owned(),
        listen: "127.0.0.1:7443".parse().unwrap(),
        force: false,
        now: OffsetDateTime::now_utc(),
    }
}

fn pem(path: &Path) -> Pem {
    let bytes = fs::read(path).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&bytes).unwrap();
    pem
}

fn uri_sans<'a>(cert: &'a X509Certificate<'_>) -> Vec<&'a str> {
    let san = cert.subject_alternative_name().unwrap().expect("has a SAN");
    assert!(san.critical, "SAN must be critical with an empty subject");
    san.value
        .general_names
        .iter()
        .map(|name| match name {
            GeneralName::URI(uri) => *uri,
            other => panic!("unexpected SAN {other:?}"),
        })
        .collect()
}

#[test]
fn svids_are_spiffe_leaves_signed_by_the_ca() {
    let tmp = TempDir::new();
    let summary = init(&options(&tmp.0)).unwrap();

    let ca_pem = pem(&summary.ca);
    let ca = ca_pem.parse_x509().unwrap();
    assert!(ca.is_ca());
    let cn: Vec<_> = ca.subject().iter_common_name().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(cn, [CA_COMMON_NAME]);

    assert_eq!(summary.identities.len(), 5);
    for id in &summary.identities {
        let svid_pem = pem(&id.cert);
        let svid = svid_pem.parse_x509().unwrap();
        assert_eq!(svid.subject().iter().count(), 0, "{}: subject not empty", id.name);
        assert_eq!(uri_sans(&svid), [id.spiffe_id.as_str()], "{}", id.name);
        assert!(!svid.is_ca(), "{}", id.name);
        let eku = svid.extended_key_usage().unwrap().expect("has EKU").value;
        assert!(eku.client_auth && !eku.server_auth, "{}", id.name);
        svid.verify_signature(Some(ca.public_key()))
            .unwrap_or_else(|e| panic!("{} not signed by the CA: {e}", id.name));
        let lifetime = svid.validity().not_after.timestamp() - svid.validity().not_before.timestamp();
        assert_eq!(lifetime, 3600 + 30 * 24 * 3600, "{}", id.name);
        // The key matches the certificate.
        let key = KeyPair::from_pem(&fs::read_to_string(&id.key).unwrap()).unwrap();
        assert_eq!(key.public_key_raw(), svid.public_key().subject_public_key.data.as_ref());
    }

    let broker_pem = pem(&summary.broker_cert);
    let broker = broker_pem.parse_x509().unwrap();
    assert_eq!(broker.subject().iter().count(), 0);
    broker.verify_signature(Some(ca.public_key())).unwrap();
    assert!(broker.extended_key_usage().unwrap().unwrap().value.server_auth);
}

#[cfg(unix)]
#[test]
fn private_keys_are_owner_only() {
    use std::os::unix::fs::PermissionsExt as _;

    let tmp = TempDir::new();
    let summary = init(&options(&tmp.0)).unwrap();
    let keys = [&summary.ca_key, &summary.broker_key]
        .into_iter()
        .chain(summary.identities.iter().map(|id| &id.key));
    for key in keys {
        let mode = fs::metadata(key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", key.display());
    }
}

#[test]
fn config_parses_with_five_identities() {
    let tmp = TempDir::new();
    let summary = init(&options(&tmp.0)).unwrap();
    let text = fs::read_to_string(&summary.config).unwrap();
    assert!(text.starts_with("# Tessera development configuration"));
    let config: toml::Table = toml::from_str(&text).unwrap();
    assert_eq!(config["server"]["listen"].as_str(), Some("127.0.0.1:7443"));
    assert_eq!(config["tls"]["trust_domain"].as_str(), Some("tessera.local"));
    assert_eq!(config["tokens"]["issuer"].as_str(), Some("https://tessera.local"));
    let identities = config["identities"].as_array().unwrap();
    assert_eq!(identities.len(), 5);
    assert_eq!(
        identities[1]["id"].as_str(),
        Some("spiffe://tessera.local/agent/researcher")
    );
    assert_eq!(identities[3]["roles"].as_array().unwrap()[0].as_str(), Some("operator"));
    let apis = config["apis"].as_array().unwrap();
    assert_eq!(apis.len(), 2);
    assert_eq!(apis[0]["scopes"]["crm.contacts.list"].as_str(), Some("discover"));
    // High-impact scopes take the long form.
    let transfer = &apis[1]["scopes"]["payments.transfers.create"];
    assert_eq!(transfer["class"].as_str(), Some("write"));
    assert_eq!(transfer["high_impact"].as_bool(), Some(true));
    assert_eq!(apis[1]["scopes"]["payments.invoices.read"].as_str(), Some("read"));
}

#[test]
fn refuses_to_overwrite_without_force() {
    let tmp = TempDir::new();
    let mut opts = options(&tmp.0);
    init(&opts).unwrap();
    let err = init(&opts).unwrap_err().to_string();
    assert!(err.contains("already exists") && err.contains("--force"), "{err}");
    opts.force = true;
    init(&opts).unwrap();
}

#[test]
fn quoting_round_trips_through_toml() {
    for s in [
        "plain",
        "with \"quotes\"",
        "back\\slash",
        "tab\tnew\nline",
        "bell\u{7}",
        "é—",
    ] {
        let doc = format!("v = {}", quote(s));
        let table: toml::Table = toml::from_str(&doc).unwrap();
        assert_eq!(table["v"].as_str(), Some(s), "{doc}");
    }
}

#[test]
fn endpoints_and_trust_domains() {
    assert_eq!(endpoint_for("0.0.0.0:7443".parse().unwrap()), "https://127.0.0.1:7443");
    assert_eq!(endpoint_for("[::]:7443".parse().unwrap()), "https://[::1]:7443");
    assert_eq!(endpoint_for("10.0.0.5:9000".parse().unwrap()), "https://10.0.0.5:9000");
    assert!(parse_trust_domain("tessera.local").is_ok());
    assert!(parse_trust_domain("Tessera.Local").is_err());
    assert!(parse_trust_domain("a/b").is_err());
    assert!(parse_trust_domain("").is_err());
}

#[test]
fn the_dev_config_uses_the_baseline_policy() {
    let tmp = TempDir::new();
    let summary = init(&options(&tmp.0)).unwrap();
    let config: toml::Table = toml::from_str(&fs::read_to_string(&summary.config).unwrap()).unwrap();
    assert_eq!(config["policy"]["dir"].as_str(), Some("policies"));
    let dir = tmp.0.join("policies");
    let files = tessera_core::policy::read_policy_files(&dir).unwrap();
    let engine = tessera_core::policy::PolicyEngine::load(&files).unwrap();
    assert_eq!(
        engine.hash(),
        tessera_core::policy::PolicyEngine::baseline().unwrap().hash()
    );
    // The baseline lets an orchestrator assign only its owner's agents: the
    // demo orchestrator and agents share an owner.
    let owner = |name: &str| DEMO_IDENTITIES.iter().find(|d| d.name == name).unwrap().owner;
    assert_eq!(owner("orchestrator"), owner("researcher"));
    assert_eq!(owner("orchestrator"), owner("writer"));
}
