//! Proof-of-possession on RequestToken through the real `tesserad`: tokens
//! bound to a DPoP key (`cnf.jkt`) or to the client certificate
//! (`cnf.x5t#S256`), write tokens never issued as bearer tokens, and every
//! bad proof refused with its reason — a replayed one also through a second
//! replica sharing the Redis store.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::Value;
use tessera_client::agent::{AgentClient as TypedAgent, TokenRequest};
use tessera_client::{PopKey, REQUEST_TOKEN_HTU};
use tessera_e2e::redis::RedisServer;
use tessera_e2e::*;
use tonic::Code;

const WRITE: &[&str] = &["crm.contacts.write"];

/// Seconds since the epoch, by the host clock (proofs carry wall time).
#[expect(clippy::disallowed_methods, reason = "proofs are dated by the wall clock")]
fn now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

/// The claims of a token (its signature is checked by the other tests).
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

async fn write_task(broker: &Broker, id: &str) {
    broker
        .start_task(start_request(
            id,
            &["researcher"],
            &["crm.contacts.write", "crm.contacts.read"],
            600,
        ))
        .await;
}

fn with_proof(task: &str, proof: String) -> pb::RequestTokenRequest {
    pb::RequestTokenRequest {
        pop_proof: proof,
        ..token_request(task, WRITE, Some(120))
    }
}

#[track_caller]
fn expect(status: tonic::Status, want: Code, reason: &str) {
    assert_eq!(status.code(), want, "{status:?}");
    assert!(
        status.message().contains(reason),
        "`{}` does not say `{reason}`",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_binds_the_token_to_its_key() {
    let broker = Broker::start();
    write_task(&broker, "pop").await;
    let key = PopKey::generate().unwrap();
    let mut agent = TypedAgent::new(broker.channel("researcher").await);
    let token = agent
        .request_bound(TokenRequest::new("pop", CRM, WRITE.iter().copied()), &key)
        .await
        .unwrap()
        .token()
        .unwrap();
    assert_eq!(token.token_type(), "DPoP");
    let c = claims(token.access_token());
    assert_eq!(c["cnf"], serde_json::json!({"jkt": key.thumbprint()}));
    // A read token may still be a bearer token, and carries no cnf.
    let read = agent
        .request(TokenRequest::new("pop", CRM, ["crm.contacts.read"]))
        .await
        .unwrap()
        .token()
        .unwrap();
    assert_eq!(read.token_type(), "Bearer");
    assert!(claims(read.access_token()).get("cnf").is_none());
    // Both verify and are live.
    let mut v = broker.verifier("api-gateway").await;
    assert!(introspect(&mut v, token.access_token()).await.unwrap());
    assert!(introspect(&mut v, read.access_token()).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_binding_binds_the_token_to_the_client_certificate() {
    let broker = Broker::start();
    write_task(&broker, "mtls").await;
    let token = broker
        .issue_as(
            "researcher",
            pb::RequestTokenRequest {
                mtls_binding: true,
                ..token_request("mtls", WRITE, Some(120))
            },
        )
        .await;
    assert_eq!(token.token_type, "Bearer");
    let pem = std::fs::read_to_string(broker.dir.path().join("identities/researcher.pem")).unwrap();
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    let der = STANDARD.decode(body).unwrap();
    let digest = tessera_core::pop::certificate_thumbprint(&der);
    assert_eq!(
        claims(&token.access_token)["cnf"],
        serde_json::json!({"x5t#S256": digest})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_proof_is_refused_with_its_reason() {
    let broker = Broker::start_with(&[("TESSERA_ANOMALY__ENABLED", "false")]);
    write_task(&broker, "bad").await;
    let mut agent = broker.agent("researcher").await;
    let key = PopKey::generate().unwrap();

    // A write token without any binding.
    expect(
        code(agent.request_token(token_request("bad", WRITE, None)).await),
        Code::InvalidArgument,
        "pop_proof: write tokens are never issued as bearer tokens",
    );
    // A proof whose signature is not by the key in its header: key A's
    // header, key B's claims and signature.
    let other = PopKey::generate().unwrap();
    let a = key.proof("POST", REQUEST_TOKEN_HTU, None).unwrap();
    let b = other.proof("POST", REQUEST_TOKEN_HTU, None).unwrap();
    let spliced = format!("{}.{}", a.split('.').next().unwrap(), b.split_once('.').unwrap().1);
    expect(
        code(agent.request_token(with_proof("bad", spliced)).await),
        Code::InvalidArgument,
        "pop_proof: proof signature does not verify with its `jwk`",
    );
    // Stale.
    let stale = key.proof_at("POST", REQUEST_TOKEN_HTU, now() - 600, None).unwrap();
    expect(
        code(agent.request_token(with_proof("bad", stale)).await),
        Code::InvalidArgument,
        "pop_proof: proof `iat` is more than 60 s old",
    );
    // From the future.
    let future = key.proof_at("POST", REQUEST_TOKEN_HTU, now() + 600, None).unwrap();
    expect(
        code(agent.request_token(with_proof("bad", future)).await),
        Code::InvalidArgument,
        "pop_proof: proof `iat` is in the future",
    );
    // Another method, another RPC.
    let get = key.proof("GET", REQUEST_TOKEN_HTU, None).unwrap();
    expect(
        code(agent.request_token(with_proof("bad", get)).await),
        Code::InvalidArgument,
        "pop_proof: proof `htm` is not `POST`",
    );
    let other_rpc = key.proof("POST", tessera_client::REDEEM_DELEGATION_HTU, None).unwrap();
    expect(
        code(agent.request_token(with_proof("bad", other_rpc)).await),
        Code::InvalidArgument,
        "pop_proof: proof `htu` is not `/tessera.v1.AgentService/RequestToken`",
    );
    // Garbage, and both bindings at once.
    expect(
        code(agent.request_token(with_proof("bad", "not.a.proof".into())).await),
        Code::InvalidArgument,
        "pop_proof: proof is malformed",
    );
    let both = pb::RequestTokenRequest {
        mtls_binding: true,
        ..with_proof("bad", key.proof("POST", REQUEST_TOKEN_HTU, None).unwrap())
    };
    expect(
        code(agent.request_token(both).await),
        Code::InvalidArgument,
        "mtls_binding: ask for one binding",
    );
    // Reused: the first use succeeds, the second is refused.
    let proof = key.proof("POST", REQUEST_TOKEN_HTU, None).unwrap();
    issue(&mut agent, with_proof("bad", proof.clone())).await;
    expect(
        code(agent.request_token(with_proof("bad", proof)).await),
        Code::InvalidArgument,
        "pop_proof: proof `jti` was already used",
    );
    // Nothing secret in what the broker wrote (the harness scans on drop).
}

/// A proof used at one replica is refused at another: the replay cache is
/// the shared Redis store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_is_single_use_across_replicas() {
    let redis = RedisServer::builder().appendonly(false).start();
    let env = redis_env(&redis.url());
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let a = Broker::start_with(&env);
    let b = a.replica();
    write_task(&a, "replicas").await;
    let key = PopKey::generate().unwrap();
    let proof = key.proof("POST", REQUEST_TOKEN_HTU, None).unwrap();
    let token = a.issue_as("researcher", with_proof("replicas", proof.clone())).await;
    assert_eq!(token.token_type, "DPoP");
    expect(
        code(
            b.agent("researcher")
                .await
                .request_token(with_proof("replicas", proof))
                .await,
        ),
        Code::InvalidArgument,
        "pop_proof: proof `jti` was already used",
    );
    // A fresh proof works at the second replica.
    let fresh = key.proof("POST", REQUEST_TOKEN_HTU, None).unwrap();
    b.issue_as("researcher", with_proof("replicas", fresh)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_requests_a_bound_token_with_a_key_file() {
    let broker = Broker::start();
    write_task(&broker, "cli").await;
    let key_file = broker.dir.path().join("agent-pop.pem");
    let out = broker.tessera(&[
        "--as",
        "researcher",
        "token",
        "request",
        "--task",
        "cli",
        "--audience",
        CRM,
        "--scope",
        "crm.contacts.write",
        "--pop-key",
        key_file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap();
    let pem = std::fs::read_to_string(&key_file).unwrap();
    let key = PopKey::from_pkcs8_pem(&pem).unwrap();
    assert_eq!(
        claims(token.trim())["cnf"],
        serde_json::json!({"jkt": key.thumbprint()})
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the key file is readable by others: {mode:o}");
    }
    // Without a binding, the CLI gets the broker's refusal.
    let out = broker.tessera(&[
        "--as",
        "researcher",
        "token",
        "request",
        "--task",
        "cli",
        "--audience",
        CRM,
        "--scope",
        "crm.contacts.write",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("never issued as bearer tokens"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
