//! X.509-SVID attestation through the real `tesserad`: bad client
//! certificates (A12), a second trust domain with its own bundle, a bundle
//! emptied at runtime (A15), and the identity registry reloaded without a
//! restart (`disabled = true` applies to the next call).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

use std::time::Duration;

use base64::Engine as _;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType,
};
use tessera_e2e::attestation::{append_config, own_ca, wait_refusal_audited, wait_refusal_of};
use tessera_e2e::{Broker, TD, dev_init};
use tonic::Code;

/// A client certificate, its key, and the evidence digest an audit record
/// names for it.
struct Svid {
    cert: String,
    key: String,
    evidence: String,
}

/// A leaf signed by the dev CA of `dir`.
fn svid(dir: &std::path::Path, sans: &[&str], is_ca: bool, valid_days: (i64, i64)) -> Svid {
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(dir.join("ca.key.pem")).unwrap()).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&std::fs::read_to_string(dir.join("ca.pem")).unwrap(), ca_key).unwrap();
    leaf(&issuer, sans, is_ca, valid_days)
}

fn leaf(issuer: &Issuer<'_, KeyPair>, sans: &[&str], is_ca: bool, (from, to): (i64, i64)) -> Svid {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = sans.iter().map(|s| SanType::URI((*s).try_into().unwrap())).collect();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if is_ca {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    }
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now + time::Duration::days(from);
    params.not_after = now + time::Duration::days(to);
    let cert = params.signed_by(&key, issuer).unwrap();
    Svid {
        cert: cert.pem(),
        key: key.serialize_pem(),
        evidence: tessera_core::attestation::sha256_hex(cert.der()),
    }
}

async fn jwks_as(broker: &Broker, Svid { cert, key, .. }: &Svid) -> Result<(), tonic::Status> {
    let identity = tessera_client::Identity {
        ca_pem: std::fs::read(broker.dir.path().join("ca.pem")).unwrap(),
        cert_pem: cert.clone().into_bytes(),
        key_pem: key.clone().into_bytes(),
        broker_id: Some(format!("spiffe://{TD}/tesserad")),
    };
    introspect_as(broker, &identity).await
}

/// One attested call (Introspect) on a new connection as `identity`.
async fn introspect_as(broker: &Broker, identity: &tessera_client::Identity) -> Result<(), tonic::Status> {
    let channel = match tessera_client::connect(&broker.endpoint(), identity).await {
        Ok(c) => c,
        Err(e) => return Err(tonic::Status::unavailable(format!("connect: {e}"))),
    };
    tessera_client::VerifierClient::new(channel)
        .introspect(tessera_e2e::attestation::introspect_request())
        .await
        .map(drop)
}

#[track_caller]
fn refused_at_edge(result: Result<(), tonic::Status>, mentions: &str) {
    let status = result.expect_err("served");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains(mentions),
        "`{}` lacks `{mentions}`",
        status.message()
    );
}

/// Presents `svid`, expects UNAUTHENTICATED mentioning `mentions`, and the
/// audit record of this very certificate with the same reason.
async fn refused_and_audited(broker: &Broker, svid: &Svid, mentions: &str) {
    refused_at_edge(jwks_as(broker, svid).await, mentions);
    wait_refusal_of(broker, "x509", &svid.evidence, mentions);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a12_bad_client_certificates_are_refused() {
    let broker = Broker::start();
    let d = broker.dir.path().to_owned();
    let gw = "spiffe://tessera.local/service/api-gateway";
    jwks_as(&broker, &svid(&d, &[gw], false, (-1, 30))).await.unwrap();
    // Each is answered UNAUTHENTICATED with its reason, and audited with
    // the digest of the certificate presented.
    refused_and_audited(&broker, &svid(&d, &[], false, (-1, 30)), "exactly one URI SAN").await;
    refused_and_audited(
        &broker,
        &svid(&d, &[gw, "spiffe://tessera.local/agent/x"], false, (-1, 30)),
        "exactly one URI SAN",
    )
    .await;
    refused_and_audited(&broker, &svid(&d, &[gw], true, (-1, 30)), "a CA certificate").await;
    refused_and_audited(
        &broker,
        &svid(&d, &["spiffe://evil.example/service/api-gateway"], false, (-1, 30)),
        "trusted domain",
    )
    .await;
    refused_and_audited(&broker, &svid(&d, &[gw], false, (-30, -1)), "it has expired").await;
    refused_and_audited(&broker, &svid(&d, &[gw], false, (1, 30)), "not valid yet").await;
    // A CA outside every trust bundle.
    let (_, stranger) = own_ca("a stranger's CA");
    refused_and_audited(
        &broker,
        &leaf(&stranger, &[gw], false, (-1, 30)),
        "trust bundle of its trust domain",
    )
    .await;
    // A13 at the edge: malformed SPIFFE IDs in the one URI SAN, from our CA.
    let long = format!("spiffe://tessera.local/{}", "a".repeat(2049));
    for bad in [
        "spiffe://TESSERA.local/service/api-gateway",
        "spiffe://tessera.local/service/../api-gateway",
        "spiffe://tessera.local/service//api-gateway",
        "spiffe://tessera.local/service/api-gateway?x=1",
        long.as_str(),
    ] {
        refused_and_audited(&broker, &svid(&d, &[bad], false, (-1, 30)), "not a valid SPIFFE ID").await;
    }
    // None of them shut the door on a good certificate.
    jwks_as(&broker, &svid(&d, &[gw], false, (-1, 30))).await.unwrap();
}

/// Rewrites the config file in place (the broker polls its mtime).
fn edit_config(dir: &std::path::Path, edit: impl Fn(String) -> String) {
    let path = dir.join("tesserad.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let tmp = dir.join("tesserad.toml.tmp");
    std::fs::write(&tmp, edit(text)).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
}

/// Polls `check` until it is true, for up to 20 s.
async fn eventually(what: &str, check: impl AsyncFnMut() -> bool) {
    tessera_e2e::eventually(what, Duration::from_secs(20), check).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_domains_have_their_own_bundles_and_reload() {
    let dir = dev_init("x509-td");
    // A partner trust domain with its own CA.
    let (partner_cert, partner) = own_ca("partner CA");
    std::fs::write(dir.path().join("partner-ca.pem"), partner_cert.pem()).unwrap();
    // A SPIRE-style domain whose bundle is SPIFFE bundle JSON.
    let (spire_cert, spire) = own_ca("spire CA");
    let x5c = base64::engine::general_purpose::STANDARD.encode(spire_cert.der());
    std::fs::write(
        dir.path().join("spire-bundle.json"),
        format!(r#"{{"spiffe_sequence": 1, "keys": [{{"use": "x509-svid", "kty": "EC", "crv": "P-256", "x5c": ["{x5c}"]}}]}}"#),
    )
    .unwrap();
    append_config(
        dir.path(),
        r#"
[attestation]
reload_interval = "200ms"

[[tls.trust_domains]]
name = "partner.example"
bundle = "partner-ca.pem"

[[tls.trust_domains]]
name = "spire.example"
spiffe_bundle = "spire-bundle.json"

[[identities]]
id = "spiffe://spire.example/agent/s"
kind = "agent"
owner = "platform"
roles = ["verifier"]
max_ttl = "5m"

[[identities]]
id = "spiffe://partner.example/agent/p"
kind = "partner"
owner = "partner-inc"
roles = ["verifier"]
max_ttl = "5m"
"#,
    );
    let broker = Broker::start_in(dir, &[]);
    let d = broker.dir.path().to_owned();
    let p = leaf(&partner, &["spiffe://partner.example/agent/p"], false, (-1, 30));
    jwks_as(&broker, &p).await.unwrap();
    // The SPIFFE bundle's CA vouches for its own domain, and only for it.
    jwks_as(
        &broker,
        &leaf(&spire, &["spiffe://spire.example/agent/s"], false, (-1, 30)),
    )
    .await
    .unwrap();
    refused_and_audited(
        &broker,
        &leaf(&spire, &["spiffe://partner.example/agent/p"], false, (-1, 30)),
        "client certificate refused",
    )
    .await;
    // The partner CA cannot vouch for our domain, nor ours for theirs.
    let forged = leaf(
        &partner,
        &["spiffe://tessera.local/service/api-gateway"],
        false,
        (-1, 30),
    );
    refused_and_audited(&broker, &forged, "trust bundle of its trust domain").await;
    let crossed = svid(&d, &["spiffe://partner.example/agent/p"], false, (-1, 30));
    refused_and_audited(&broker, &crossed, "trust bundle of its trust domain").await;
    // A connection that stays open across the change below.
    let identity = tessera_client::Identity {
        ca_pem: std::fs::read(d.join("ca.pem")).unwrap(),
        cert_pem: p.cert.clone().into_bytes(),
        key_pem: p.key.clone().into_bytes(),
        broker_id: Some(format!("spiffe://{TD}/tesserad")),
    };
    let mut open =
        tessera_client::VerifierClient::new(tessera_client::connect(&broker.endpoint(), &identity).await.unwrap());
    open.introspect(tessera_e2e::attestation::introspect_request())
        .await
        .unwrap();
    // A15: the partner bundle emptied at runtime refuses every partner SVID,
    // on new connections and on the one already open.
    std::fs::write(d.join("partner-ca.pem"), "").unwrap();
    eventually("the emptied bundle to apply", async || {
        jwks_as(&broker, &p).await.is_err()
    })
    .await;
    let status = open
        .introspect(tessera_e2e::attestation::introspect_request())
        .await
        .expect_err("the open connection still attests by a CA that was removed");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    wait_refusal_of(&broker, "x509", &p.evidence, "client certificate refused");
    assert!(broker.logs().contains("trust bundles reloaded"), "{}", broker.logs());
    // Our own domain is unaffected.
    jwks_as(
        &broker,
        &svid(&d, &["spiffe://tessera.local/service/api-gateway"], false, (-1, 30)),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_reload_without_a_restart() {
    let dir = dev_init("x509-reload");
    append_config(dir.path(), "[attestation]\nreload_interval = \"200ms\"\n");
    let broker = Broker::start_in(dir, &[]);
    let d = broker.dir.path().to_owned();
    let gw = broker.identity("api-gateway");
    let call = async || introspect_as(&broker, &gw).await;
    call().await.unwrap();
    let line = "id = \"spiffe://tessera.local/service/api-gateway\"\n";
    edit_config(&d, |t| t.replace(line, &format!("{line}disabled = true\n")));
    eventually("the identity to be disabled", async || {
        matches!(call().await, Err(s) if s.code() == Code::Unauthenticated && s.message().contains("disabled"))
    })
    .await;
    wait_refusal_audited(&broker, "x509", "disabled");
    // A broken file is ignored: the last good registry stays.
    edit_config(&d, |t| format!("{t}\n[[identities]]\nid = 'not a spiffe id'\n"));
    // The reloader read the broken file and said so: only then is the check
    // below about a file it has seen.
    broker.wait_log_count("configuration not reloaded", 0);
    assert!(call().await.is_err());
    // Re-enabled.
    edit_config(&d, |t| {
        t.replace(&format!("{line}disabled = true\n"), line)
            .replace("\n[[identities]]\nid = 'not a spiffe id'\n", "")
    });
    eventually("the identity to be enabled again", async || call().await.is_ok()).await;
}

/// SIGHUP reloads at once, whatever the polling interval: with polling
/// slowed to an hour, a disable written to the file applies only after the
/// signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_identities_at_once() {
    let dir = dev_init("x509-hup");
    append_config(dir.path(), "[attestation]\nreload_interval = \"1h\"\n");
    let broker = Broker::start_in(dir, &[]);
    let d = broker.dir.path().to_owned();
    let gw = broker.identity("api-gateway");
    let call = async || introspect_as(&broker, &gw).await;
    call().await.unwrap();
    let line = "id = \"spiffe://tessera.local/service/api-gateway\"\n";
    edit_config(&d, |t| t.replace(line, &format!("{line}disabled = true\n")));
    call().await.expect("not reloaded before the signal");
    let reloads = || broker.logs().matches("identity registry reloaded").count();
    assert_eq!(reloads(), 0, "reloaded before the signal: {}", broker.logs());
    let pid = rustix::process::Pid::from_raw(i32::try_from(broker.pid()).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    eventually("SIGHUP to disable the identity", async || {
        matches!(call().await, Err(s) if s.code() == Code::Unauthenticated && s.message().contains("disabled"))
    })
    .await;
    // The signal's reload is the only one: had polling read the edit
    // first, the signal would have forced a second.
    broker.wait_log_count("identity registry reloaded", 0);
    assert_eq!(reloads(), 1, "{}", broker.logs());
}

/// The SDK and the CLI pin the broker's SPIFFE ID: a server holding a valid
/// certificate from the same CA, for the broker's host names, but another
/// workload's SPIFFE ID, is refused by both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_and_the_cli_refuse_a_server_with_another_spiffe_id() {
    use rcgen::{CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, KeyPair, SanType};
    let impostor_id = format!("spiffe://{TD}/agent/impostor");
    let d = dev_init("impostor");
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(d.path().join("ca.key.pem")).unwrap()).unwrap();
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(&std::fs::read_to_string(d.path().join("ca.pem")).unwrap(), ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![
        SanType::DnsName("localhost".try_into().unwrap()),
        SanType::IpAddress("127.0.0.1".parse().unwrap()),
        SanType::IpAddress("::1".parse().unwrap()),
        SanType::URI(impostor_id.as_str().try_into().unwrap()),
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(d.path().join("broker.pem"), cert.pem()).unwrap();
    std::fs::write(d.path().join("broker.key.pem"), key.serialize_pem()).unwrap();
    let broker = Broker::start_in(d, &[]);

    let sdk = tessera_client::connect(&broker.endpoint(), &broker.identity("researcher")).await;
    assert!(
        matches!(sdk, Err(tessera_client::ClientError::Connect { .. })),
        "the SDK accepted {impostor_id}"
    );
    let cli = broker.tessera(&["--as", "researcher", "task", "show", "nope"]);
    assert!(!cli.status.success(), "the CLI accepted {impostor_id}");
    assert!(
        String::from_utf8_lossy(&cli.stderr).contains("cannot connect"),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    // A JWT-attested client has no SVID to derive the ID from: it is given
    // one, and pins it just the same (the JWT never reaches the impostor).
    let jwt = broker.dir.path().join("any.jwt");
    std::fs::write(&jwt, "eyJhbGciOiJFUzI1NiJ9.e30.c2ln").unwrap();
    let jwt = jwt.to_str().unwrap();
    let expected = format!("spiffe://{TD}/tesserad");
    let sdk = tessera_client::connect_with_token(
        &broker.endpoint(),
        &std::fs::read(broker.dir.path().join("ca.pem")).unwrap(),
        &expected,
        "eyJhbGciOiJFUzI1NiJ9.e30.c2ln",
    )
    .await;
    assert!(
        matches!(sdk, Err(tessera_client::ClientError::Connect { .. })),
        "the JWT client accepted {impostor_id}"
    );
    let cli = broker.tessera(&["--jwt-file", jwt, "--broker-id", &expected, "task", "show", "nope"]);
    assert!(
        String::from_utf8_lossy(&cli.stderr).contains("cannot connect"),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let ca = broker.dir.path().join("ca.pem");
    let cli = broker.tessera(&["--jwt-file", jwt, "--ca", ca.to_str().unwrap(), "task", "show", "nope"]);
    assert!(
        String::from_utf8_lossy(&cli.stderr).contains("needs --broker-id"),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    // Told to expect that ID, both reach it (the pin, not the server, refused).
    let cli = broker.tessera(&["--jwt-file", jwt, "--broker-id", &impostor_id, "task", "show", "nope"]);
    assert!(
        !String::from_utf8_lossy(&cli.stderr).contains("cannot connect"),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let pinned = broker.identity("researcher").with_broker_id(impostor_id.clone());
    tessera_client::connect(&broker.endpoint(), &pinned).await.unwrap();
    let cli = broker.tessera(&[
        "--as",
        "researcher",
        "--broker-id",
        &impostor_id,
        "task",
        "show",
        "nope",
    ]);
    assert!(
        !String::from_utf8_lossy(&cli.stderr).contains("cannot connect"),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
}
