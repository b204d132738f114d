//! The Redis store over TLS (`rediss://`) with a client certificate, as the
//! ACL user of `deploy/redis/users.acl`: a real `redis-server` started with
//! `--tls-port` and `--tls-auth-clients yes`, a certificate issued by the
//! broker's CA, and the broker's own CA bundle to verify it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;

use rcgen::{CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
use tessera_e2e::redis::RedisServer;
use tessera_e2e::*;

/// Writes `<name>.pem` and `<name>.key.pem` in `dir`: a certificate from
/// the dev CA in `dir` for 127.0.0.1, for `purpose`.
fn issue_cert(dir: &Path, name: &str, purpose: ExtendedKeyUsagePurpose) {
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(dir.join("ca.key.pem")).unwrap()).unwrap();
    let ca = Issuer::from_ca_cert_pem(&std::fs::read_to_string(dir.join("ca.pem")).unwrap(), ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::IpAddress(Ipv4Addr::LOCALHOST.into())];
    params.extended_key_usages = vec![purpose];
    let cert = params.signed_by(&key, &ca).unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key.pem")), key.serialize_pem()).unwrap();
}

/// The rules of the `tessera` user in `deploy/redis/users.acl`, with the
/// password `password` instead of the shipped hash.
fn tessera_acl_rules(password: &str) -> Vec<String> {
    let acl = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/redis/users.acl")).unwrap();
    let line = acl
        .lines()
        .find(|l| l.starts_with("user tessera "))
        .expect("a tessera user in users.acl");
    line.split_whitespace()
        .skip(2)
        .map(|rule| {
            if rule.starts_with('#') {
                format!(">{password}")
            } else {
                rule.to_owned()
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_uses_redis_over_tls_as_the_example_acl_user() {
    let dir = dev_init("redis-tls");
    issue_cert(dir.path(), "redis", ExtendedKeyUsagePurpose::ServerAuth);
    issue_cert(dir.path(), "redis-client", ExtendedKeyUsagePurpose::ClientAuth);
    let tls_port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let d = |f: &str| dir.path().join(f).display().to_string();
    // The plain port stays for the harness (readiness, redis-cli); the
    // broker reaches Redis only on the TLS port.
    let redis = RedisServer::builder()
        .appendonly(false)
        .extra_args(&[
            "--tls-port",
            &tls_port,
            "--tls-cert-file",
            &d("redis.pem"),
            "--tls-key-file",
            &d("redis.key.pem"),
            "--tls-ca-cert-file",
            &d("ca.pem"),
            "--tls-auth-clients",
            "yes",
        ])
        .start();
    let mut setuser = vec!["ACL", "SETUSER", "tessera"];
    let rules = tessera_acl_rules("s3cret-for-tests");
    setuser.extend(rules.iter().map(String::as_str));
    assert_eq!(redis.cli(&setuser), "OK");

    let urls = format!("[\"rediss://tessera:s3cret-for-tests@127.0.0.1:{tls_port}/0\"]");
    let broker = Broker::start_in(
        dir,
        &[
            ("TESSERA_STORE__BACKEND", "redis"),
            ("TESSERA_STORE__URLS", &urls),
            // The CA bundle defaults to the broker's own (tls.trust_bundle).
            ("TESSERA_STORE__TLS_CERT", "redis-client.pem"),
            ("TESSERA_STORE__TLS_KEY", "redis-client.key.pem"),
        ],
    );

    // The lifecycle, an operator's revocations and a disable, all through
    // the ACL user over TLS.
    broker
        .start_task(start_request("tls-1", &["researcher"], &["crm.contacts.read"], 600))
        .await;
    let mut agent = broker.agent("researcher").await;
    let first = issue_token(&mut agent, "tls-1").await;
    let second = issue_token(&mut agent, "tls-1").await;
    let mut verifier = broker.verifier("api-gateway").await;
    assert!(introspect(&mut verifier, &first.access_token).await.unwrap());
    let mut admin = broker.admin("alice").await;
    admin
        .revoke_grant(pb::RevokeGrantRequest {
            grant_id: first.grant_id.clone(),
            reason: "tls test".into(),
        })
        .await
        .unwrap();
    assert!(!introspect(&mut verifier, &first.access_token).await.unwrap());
    let mut orchestrator = broker.orchestrator().await;
    orchestrator
        .complete_task(pb::CompleteTaskRequest {
            task_id: "tls-1".into(),
            reason: "done".into(),
        })
        .await
        .unwrap();
    assert!(!introspect(&mut verifier, &second.access_token).await.unwrap());
    let writer = format!("spiffe://{TD}/agent/writer");
    admin
        .revoke_identity(pb::RevokeIdentityRequest {
            identity: writer.clone(),
            reason: "tls test".into(),
            disable: true,
        })
        .await
        .unwrap();
    admin
        .enable_identity(pb::EnableIdentityRequest {
            identity: writer,
            reason: "tls test".into(),
        })
        .await
        .unwrap();

    // Nothing the broker did was refused by the ACL but its start-up
    // durability probe (`CONFIG GET appendfsync`, which the example ACL
    // refuses on purpose: CONFIG GET also reads passwords), and the ACL
    // refuses what the broker must never do.
    let log = redis.cli(&["ACL", "LOG"]);
    let lines: Vec<&str> = log.lines().collect();
    let refused: Vec<&str> = lines.windows(2).filter(|w| w[0] == "object").map(|w| w[1]).collect();
    assert!(
        refused.iter().all(|o| *o == "config|get") && lines.iter().filter(|l| **l == "count").count() <= 1,
        "the ACL refused a broker command: {log}"
    );
    let (_, metrics) = broker.http_get("/metrics");
    assert!(
        metrics.contains(r#"appendfsync="unknown""#),
        "a refused probe is reported unknown: {metrics}"
    );
    let port = redis.port().to_string();
    let flush = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &port,
            "--user",
            "tessera",
            "--pass",
            "s3cret-for-tests",
            "--no-auth-warning",
            "FLUSHALL",
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&flush.stdout);
    assert!(said.contains("NOPERM"), "{said}");
    assert!(find_secret(&broker.logs()).is_none());
    assert!(
        !broker.logs().contains("s3cret-for-tests"),
        "the Redis password was logged"
    );
}

async fn issue_token(agent: &mut tessera_client::AgentClient, task: &str) -> pb::IssuedToken {
    issue(agent, token_request(task, &["crm.contacts.read"], None)).await
}
