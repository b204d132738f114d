//! Unix-socket attestation through the real `tesserad`: this test process
//! connects over the socket and is attested by its uid and the SHA-256 of
//! its own executable; a wrong uid or a wrong hash is refused with
//! UNAUTHENTICATED and an audit record; the socket is private.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::PathBuf;

use tessera_e2e::attestation::{append_config, audit_records, wait_refusal_audited};
use tessera_e2e::{Broker, dev_init};
use tonic::Code;

fn own_exe_sha256() -> String {
    let bytes = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    let hash = ring::digest::digest(&ring::digest::SHA256, &bytes);
    hash.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn own_uid() -> u32 {
    std::fs::metadata("/proc/self").unwrap().uid()
}

/// A broker with a Unix listener and one identity `agent/local` whose
/// selectors are `uid` and `exe_sha256`.
fn unix_broker(uid: u32, exe_sha256: &str) -> (Broker, PathBuf) {
    let dir = dev_init("unix");
    let socket = dir.path().join("run").join("agent.sock");
    append_config(
        dir.path(),
        &format!(
            r#"
[attestation.unix]
socket = {socket:?}
mode = "0600"

[[identities]]
id = "spiffe://tessera.local/agent/local"
kind = "agent"
owner = "team-research"
roles = ["agent", "verifier"]
max_ttl = "10m"
attestation = ["unix"]
unix = {{ uid = {uid}, exe_sha256 = "sha256:{exe_sha256}" }}
"#,
            socket = socket.display().to_string()
        ),
    );
    let broker = Broker::start_in(dir, &[]);
    // The ready file is written before the Unix listener is bound: wait for it.
    let started = std::time::Instant::now();
    while !socket.exists() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "no socket: {}",
            broker.logs()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    (broker, socket)
}

async fn jwks_over(socket: &std::path::Path) -> Result<(), tonic::Status> {
    let channel = tessera_client::connect_unix(socket).await.unwrap();
    tessera_client::VerifierClient::new(channel)
        .introspect(tessera_e2e::attestation::introspect_request())
        .await
        .map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn this_process_is_attested_by_uid_and_executable_hash() {
    let (broker, socket) = unix_broker(own_uid(), &own_exe_sha256());
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "the socket is private");
    assert_eq!(
        std::fs::metadata(socket.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    jwks_over(&socket).await.unwrap();
    // The orchestrator (x509) can put agent/local in a task; it gets a token over the socket.
    let mut o = broker.orchestrator().await;
    let mut req = tessera_e2e::start_request("unix-1", &["local"], &["crm.contacts.read"], 600);
    req.agents = vec!["spiffe://tessera.local/agent/local".into()];
    o.start_task(req).await.unwrap();
    let channel = tessera_client::connect_unix(&socket).await.unwrap();
    let mut agent = tessera_client::AgentClient::new(channel);
    tessera_e2e::issue(
        &mut agent,
        tessera_e2e::token_request("unix-1", &["crm.contacts.read"], Some(60)),
    )
    .await;
    let issued = audit_records(&broker)
        .into_iter()
        .find(|r| r["event"] == "token_issued")
        .expect("a token_issued record");
    assert_eq!(issued["who"]["identity"], "spiffe://tessera.local/agent/local");
    assert_eq!(issued["who"]["attestation"], "unix");
    let evidence = issued["who"]["evidence"].as_str().unwrap();
    assert!(evidence.contains(&own_exe_sha256()), "{evidence}");
    assert!(evidence.contains(&format!("uid={}", own_uid())), "{evidence}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_uid_is_refused_and_audited() {
    let (broker, socket) = unix_broker(own_uid().wrapping_add(4242), &own_exe_sha256());
    let status = jwks_over(&socket).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("no identity matches"), "{status:?}");
    wait_refusal_audited(&broker, "unix", "no identity matches");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executable_with_another_hash_is_refused_and_audited() {
    let (broker, socket) = unix_broker(own_uid(), &"0".repeat(64));
    let status = jwks_over(&socket).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    wait_refusal_audited(&broker, "unix", "no identity matches");
    // The identity registered for unix cannot use mTLS either: unix-only.
    assert!(
        audit_records(&broker).iter().all(|r| r["event"] != "token_issued"),
        "nothing was issued"
    );
}

/// The README flow: `tessera dev init --jwt --unix-socket`, then an agent
/// obtains a token through the CLI by JWT (`dev jwt` + `--jwt-file`) and by
/// the Unix socket (`--unix-socket`); the audit trail names each method.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_obtains_tokens_by_jwt_and_by_unix_socket() {
    let dir = tessera_e2e::TempDir::new("cli-attest");
    let socket = dir.path().join("run").join("agent.sock");
    let out = std::process::Command::new(tessera_e2e::bin_dir().join("tessera"))
        .args(["dev", "init", "--jwt", "--unix-socket"])
        .arg(&socket)
        .arg("--dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(dir.path().join("jwt-issuer.THROWAWAY-TEST-KEY.pem").exists());
    let broker = Broker::start_in(dir, &[]);
    let started = std::time::Instant::now();
    while !socket.exists() {
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "no socket");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let ok = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    ok(broker.tessera(&[
        "--as",
        "orchestrator",
        "task",
        "start",
        "--id",
        "cli-attest",
        "--agent",
        "spiffe://tessera.local/agent/ci-runner",
        "--agent",
        "spiffe://tessera.local/agent/local",
        "--allow",
        "https://api.example.com/crm crm.contacts.read",
        "--ttl",
        "15m",
    ]));
    let request = [
        "token",
        "request",
        "--task",
        "cli-attest",
        "--audience",
        tessera_e2e::CRM,
        "--scope",
        "crm.contacts.read",
    ];
    // JWT: a fresh token from the throwaway issuer, presented as a bearer token.
    let jwt = ok(broker.tessera(&["dev", "jwt", "--subject", "ci-runner"])).stdout;
    let jwt_file = broker.dir.path().join("ci.jwt");
    std::fs::write(&jwt_file, &jwt).unwrap();
    let mut args = vec!["--jwt-file", jwt_file.to_str().unwrap()];
    args.extend(request);
    ok(broker.tessera(&args));
    // Unix socket: attested by this uid.
    let mut args = vec!["--unix-socket", socket.to_str().unwrap()];
    args.extend(request);
    ok(broker.tessera(&args));
    let methods: Vec<(String, String)> = audit_records(&broker)
        .into_iter()
        .filter(|r| r["event"] == "token_issued")
        .map(|r| {
            (
                r["who"]["identity"].as_str().unwrap().to_owned(),
                r["who"]["attestation"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        methods.contains(&("spiffe://tessera.local/agent/ci-runner".into(), "jwt".into())),
        "{methods:?}"
    );
    assert!(
        methods.contains(&("spiffe://tessera.local/agent/local".into(), "unix".into())),
        "{methods:?}"
    );
    // A JWT for an identity not allowed to use jwt is refused through the CLI too.
    let jwt = ok(broker.tessera(&["dev", "jwt", "--subject", "researcher"])).stdout;
    std::fs::write(&jwt_file, &jwt).unwrap();
    let mut args = vec!["--jwt-file", jwt_file.to_str().unwrap()];
    args.extend(request);
    let out = broker.tessera(&args);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("may not attest by `jwt`"));
}
