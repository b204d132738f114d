//! Human approval of high-impact requests, end to end through `tesserad` and
//! the `tessera` CLI: an agent asks for a high-impact scope and waits; an
//! operator approves (or denies); the agent receives exactly one token for
//! exactly that request. Also the scope-class rule and the blast-radius cap.
//! Runs on the memory store, and on Redis with `TESSERA_TEST_STORE=redis`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;
use tessera_e2e::*;
use tokio_stream::StreamExt as _;
use tonic::Code;

/// The demo payments API; `payments.transfers.create` is high-impact in the dev catalog.
const PAYMENTS: &str = "https://api.example.com/payments";
const TRANSFER: &str = "payments.transfers.create";
const INVOICES: &str = "payments.invoices.read";

fn agent_id(name: &str) -> String {
    format!("spiffe://{TD}/agent/{name}")
}

/// A task on the payments API for `agents` (dev agent names).
fn pay_task(task_id: &str, agents: &[&str]) -> pb::StartTaskRequest {
    pb::StartTaskRequest {
        authorization_details: String::new(),
        task_id: task_id.into(),
        agents: agents.iter().map(|a| agent_id(a)).collect(),
        scope_ceiling: [(
            PAYMENTS.to_owned(),
            pb::ScopeSet {
                scopes: vec![TRANSFER.into(), INVOICES.into()],
            },
        )]
        .into_iter()
        .collect(),
        lifetime: Some(pb::start_task_request::Lifetime::DurationSeconds(600)),
        labels: Default::default(),
        parent_task_id: String::new(),
    }
}

fn pay_request(task_id: &str, scopes: &[&str], ttl: Option<u32>) -> pb::RequestTokenRequest {
    pb::RequestTokenRequest {
        authorization_details: String::new(),
        task_id: task_id.into(),
        audience: PAYMENTS.into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        ttl_seconds: ttl,
        pop_proof: String::new(),
        // Payment scopes are writes: never bearer tokens; bind to our mTLS certificate.
        mtls_binding: true,
    }
}

/// Requests a token that must wait for approval; returns the pending approval.
async fn pending(agent: &mut tessera_client::AgentClient, req: pb::RequestTokenRequest) -> pb::PendingApproval {
    match agent.request_token(req).await.unwrap().into_inner().outcome {
        Some(pb::request_token_response::Outcome::Pending(p)) => p,
        other => panic!("expected a pending approval, got {other:?}"),
    }
}

/// The claims of a compact JWS (not verified here; introspection does that).
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

fn records(broker: &Broker) -> Vec<Value> {
    let text = std::fs::read_to_string(broker.dir.path().join("audit.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The next message of an AwaitApproval stream, within 20 s.
async fn next(
    stream: &mut tonic::Streaming<pb::AwaitApprovalResponse>,
) -> Option<Result<pb::AwaitApprovalResponse, tonic::Status>> {
    tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("the await stream answers within 20 s")
}

/// Reads the stream until it yields a token or an error, skipping `still_pending`.
async fn outcome(stream: &mut tonic::Streaming<pb::AwaitApprovalResponse>) -> Result<pb::IssuedToken, tonic::Status> {
    for _ in 0..100 {
        match next(stream).await {
            Some(Ok(pb::AwaitApprovalResponse {
                event: Some(pb::await_approval_response::Event::Token(t)),
            })) => return Ok(t),
            Some(Ok(_)) => {}
            Some(Err(status)) => return Err(status),
            None => panic!("the await stream ended without an outcome"),
        }
    }
    panic!("no outcome after 100 messages");
}

async fn await_approval(
    agent: &mut tessera_client::AgentClient,
    id: &str,
) -> Result<tonic::Streaming<pb::AwaitApprovalResponse>, tonic::Status> {
    agent
        .await_approval(pb::AwaitApprovalRequest { approval_id: id.into() })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_approves_with_the_cli_and_the_agent_receives_the_token() {
    let broker = Broker::start();
    broker.start_task(pay_task("pay-cli", &["researcher"])).await;
    let mut verifier = broker.verifier("api-gateway").await;

    let (waited, id) = std::thread::scope(|s| {
        // The agent asks with the CLI and waits.
        let agent = s.spawn(|| {
            broker.tessera(&[
                "--as",
                "researcher",
                "token",
                "request",
                "--task",
                "pay-cli",
                "--audience",
                PAYMENTS,
                "--scope",
                TRANSFER,
                "--ttl",
                "2m",
                "--mtls-binding",
                "--wait",
            ])
        });
        // The operator finds the request with the CLI …
        let started = Instant::now();
        let approval = loop {
            let out = broker.tessera(&["--as", "alice", "approvals", "ls", "--output", "json"]);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
            if let Some(a) = listed["approvals"].as_array().and_then(|a| a.first()) {
                break a.clone();
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no approval listed in 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(approval["requester"], agent_id("researcher"));
        assert_eq!(approval["task_id"], "pay-cli");
        assert_eq!(approval["audience"], PAYMENTS);
        assert_eq!(approval["scopes"], serde_json::json!([TRANSFER]));
        assert_eq!(approval["class"], "write");
        assert_eq!(approval["state"], "pending");
        assert_eq!(approval["ttl_seconds"], 120);
        assert_eq!(approval["high_impact_scopes"], serde_json::json!([TRANSFER]));
        assert_eq!(approval["request_hash"].as_str().unwrap().len(), 64);
        // write 5 × (1 scope + 4 × 1 high-impact) × 1 five-minute period
        assert_eq!(approval["blast_radius"], 25);
        let id = approval["approval_id"].as_str().unwrap().to_owned();
        // … and approves it.
        let out = broker.tessera(&["--as", "alice", "approvals", "approve", &id, "--reason", "invoice 42"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("approved"));
        (agent.join().unwrap(), id)
    });
    assert!(waited.status.success(), "{}", String::from_utf8_lossy(&waited.stderr));
    let stderr = String::from_utf8_lossy(&waited.stderr);
    assert!(stderr.contains(&id), "the pending approval was shown: {stderr}");
    let token = String::from_utf8(waited.stdout).unwrap().trim().to_owned();
    assert!(
        introspect(&mut verifier, &token).await.unwrap(),
        "the approved token is live"
    );
    let c = claims(&token);
    assert_eq!(c["sub"], agent_id("researcher"));
    assert_eq!(c["aud"], PAYMENTS);
    assert_eq!(c["scope"], TRANSFER);
    assert_eq!(c["task_id"], "pay-cli");
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 120);
    // The token verifies offline against the JWKS too.
    let out = broker.tessera_stdin(
        &[
            "--as",
            "api-gateway",
            "token",
            "inspect",
            "-",
            "--verify",
            "--audience",
            PAYMENTS,
        ],
        &token,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // The grant records its approval; ListGrants filters on high impact.
    let mut admin = broker.admin("alice").await;
    let grants = admin
        .list_grants(pb::ListGrantsRequest {
            high_impact_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .grants;
    assert_eq!(grants.len(), 1, "{grants:?}");
    assert_eq!(grants[0].grant_id, c["jti"]);
    assert!(grants[0].high_impact);
    assert_eq!(grants[0].approval_id, id);
    assert_eq!(grants[0].blast_radius, 25);

    // Collecting it again yields nothing.
    let mut agent = broker.agent("researcher").await;
    let again = code(await_approval(&mut agent, &id).await);
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
    assert!(again.message().contains("already redeemed"), "{again:?}");
    // Nothing is pending any more.
    let out = broker.tessera(&["--as", "alice", "approvals", "ls", "--output", "json"]);
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["approvals"], serde_json::json!([]));

    // Audited: pending, approved by alice, issued from the approval.
    let records = records(&broker);
    let find = |event: &str| {
        records
            .iter()
            .find(|r| r["event"] == event && r["approval_id"] == id.as_str())
            .unwrap_or_else(|| panic!("no {event} record for {id}"))
    };
    assert_eq!(find("approval_pending")["blast_radius"], 25);
    let decided = find("approval_decided");
    assert_eq!(decided["decision"], "allow");
    assert_eq!(decided["approver"], format!("spiffe://{TD}/operator/alice"));
    assert!(decided["reason"].as_str().unwrap().contains("invoice 42"));
    let issued = find("token_issued");
    assert_eq!(issued["grant_id"], c["jti"]);
    assert_eq!(issued["blast_radius"], 25);
}

/// A second registered identity that is both an agent and an operator,
/// with a certificate from the dev CA, so that it can try to approve its own request.
fn add_agent_operator(dir: &TempDir, name: &str) {
    use rcgen::{CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
    let d = dir.path();
    let id = format!("spiffe://{TD}/agent/{name}");
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(d.join("ca.key.pem")).unwrap()).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&std::fs::read_to_string(d.join("ca.pem")).unwrap(), ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::default();
    leaf.distinguished_name = DistinguishedName::new();
    leaf.subject_alt_names = vec![SanType::URI(id.as_str().try_into().unwrap())];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    std::fs::write(d.join(format!("identities/{name}.pem")), cert.pem()).unwrap();
    std::fs::write(d.join(format!("identities/{name}.key.pem")), key.serialize_pem()).unwrap();
    let config = d.join("tesserad.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    // `[[identities]]` tables may come in any order; insert before the first API.
    let at = text.find("[[apis]]").unwrap();
    text.insert_str(
        at,
        &format!(
            "[[identities]]\nid = \"{id}\"\nkind = \"agent\"\nowner = \"team-research\"\nroles = [\"agent\", \"operator\"]\nmax_ttl = \"10m\"\n\n"
        ),
    );
    std::fs::write(config, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_approves_their_own_request() {
    let dir = dev_init("approvals-self");
    add_agent_operator(&dir, "ops-bot");
    let broker = Broker::start_in(dir, &[]);
    broker.start_task(pay_task("pay-self", &["ops-bot", "writer"])).await;
    let mut bot = broker.agent("ops-bot").await;
    let p = pending(&mut bot, pay_request("pay-self", &[TRANSFER], Some(60))).await;

    // Its operator role does not let it decide its own request: not by RPC …
    let mut bot_admin = broker.admin("ops-bot").await;
    let refused = code(
        bot_admin
            .decide_approval(pb::DecideApprovalRequest {
                approval_id: p.approval_id.clone(),
                approve: true,
                reason: "looks fine to me".into(),
            })
            .await,
    );
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("its own request"), "{refused:?}");
    // … nor with the CLI (exit 2: the broker refused).
    let out = broker.tessera(&["--as", "ops-bot", "approvals", "approve", &p.approval_id]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PERMISSION_DENIED"));

    // A non-operator cannot decide it either, and another agent cannot collect it.
    let mut writer_admin = broker.admin("writer").await;
    let refused = code(
        writer_admin
            .decide_approval(pb::DecideApprovalRequest {
                approval_id: p.approval_id.clone(),
                approve: true,
                reason: String::new(),
            })
            .await,
    );
    assert_eq!(refused.code(), Code::PermissionDenied);
    let mut writer = broker.agent("writer").await;
    let refused = code(await_approval(&mut writer, &p.approval_id).await);
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    // Still pending: an operator who is not the requester decides it.
    let mut alice = broker.admin("alice").await;
    let listed = alice
        .list_approvals(pb::ListApprovalsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.approvals.len(), 1);
    assert_eq!(listed.approvals[0].state(), pb::ApprovalState::Pending);
    let decided = alice
        .decide_approval(pb::DecideApprovalRequest {
            approval_id: p.approval_id.clone(),
            approve: true,
            reason: "second pair of eyes".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(decided.approved);
    let mut stream = await_approval(&mut bot, &p.approval_id).await.unwrap();
    let token = outcome(&mut stream).await.unwrap();
    assert_eq!(token.scopes, [TRANSFER]);
    assert_eq!(token.approval_id, p.approval_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_yields_one_token_for_exactly_its_request() {
    let broker = Broker::start();
    // Another replica on the same store when the store is shared (Redis).
    let replica = (test_store() == "redis").then(|| broker.replica());
    let other = replica.as_ref().unwrap_or(&broker);
    broker.start_task(pay_task("pay-once", &["researcher"])).await;
    let mut agent = broker.agent("researcher").await;
    let p = pending(&mut agent, pay_request("pay-once", &[TRANSFER], Some(90))).await;
    assert!(p.approval_id.starts_with("ap_"));
    assert!(p.reason.contains(TRANSFER), "{p:?}");

    // Waiting: the first message says it is still pending.
    let mut stream = await_approval(&mut agent, &p.approval_id).await.unwrap();
    match next(&mut stream).await {
        Some(Ok(pb::AwaitApprovalResponse {
            event: Some(pb::await_approval_response::Event::StillPending(sp)),
        })) => assert_eq!(sp.approval_id, p.approval_id),
        other => panic!("expected still_pending first, got {other:?}"),
    }
    // A second waiter on the other replica races the first for the one token.
    let mut agent2 = other.agent("researcher").await;
    let mut stream2 = await_approval(&mut agent2, &p.approval_id).await.unwrap();

    let mut alice = broker.admin("alice").await;
    alice
        .decide_approval(pb::DecideApprovalRequest {
            approval_id: p.approval_id.clone(),
            approve: true,
            reason: "ok".into(),
        })
        .await
        .unwrap();
    // Deciding twice changes nothing.
    let twice = code(
        alice
            .decide_approval(pb::DecideApprovalRequest {
                approval_id: p.approval_id.clone(),
                approve: false,
                reason: "changed my mind".into(),
            })
            .await,
    );
    assert_eq!(twice.code(), Code::FailedPrecondition, "{twice:?}");

    let (a, b) = tokio::join!(outcome(&mut stream), outcome(&mut stream2));
    let (token, loser) = match (a, b) {
        (Ok(t), Err(s)) | (Err(s), Ok(t)) => (t, s),
        other => panic!("expected exactly one token, got {other:?}"),
    };
    assert_eq!(loser.code(), Code::FailedPrecondition, "{loser:?}");
    // Exactly the request that was approved: audience, scopes, lifetime, subject.
    assert_eq!(token.audience, PAYMENTS);
    assert_eq!(token.scopes, [TRANSFER]);
    assert_eq!(token.class(), pb::ScopeClass::Write);
    assert_eq!(token.expires_in, 90);
    assert_eq!(token.task_id, "pay-once");
    let c = claims(&token.access_token);
    assert_eq!(c["sub"], agent_id("researcher"));
    assert_eq!(c["scope"], TRANSFER);
    let mut verifier = broker.verifier("api-gateway").await;
    assert!(introspect(&mut verifier, &token.access_token).await.unwrap());
    // And never a second one.
    let again = code(await_approval(&mut agent, &p.approval_id).await);
    assert_eq!(again.code(), Code::FailedPrecondition);
    let mut admin = broker.admin("alice").await;
    let grants = admin
        .list_grants(pb::ListGrantsRequest {
            task_id: "pay-once".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .grants;
    assert_eq!(grants.len(), 1, "one approval, one grant: {grants:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denial_reaches_the_waiter_with_the_reason() {
    let broker = Broker::start();
    broker.start_task(pay_task("pay-deny", &["researcher"])).await;
    let mut agent = broker.agent("researcher").await;
    let p = pending(&mut agent, pay_request("pay-deny", &[TRANSFER], None)).await;
    let mut stream = await_approval(&mut agent, &p.approval_id).await.unwrap();
    let out = broker.tessera(&[
        "--as",
        "alice",
        "approvals",
        "deny",
        &p.approval_id,
        "--reason",
        "payment freeze until Monday",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let denied = outcome(&mut stream).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("payment freeze until Monday"), "{denied:?}");
    assert!(denied.message().contains("alice"), "{denied:?}");
    // Later waits learn the same (also through the CLI: exit 2); nothing was minted.
    let again = code(await_approval(&mut agent, &p.approval_id).await);
    assert_eq!(again.code(), Code::PermissionDenied);
    let out = broker.tessera(&["--as", "researcher", "token", "await", &p.approval_id]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("payment freeze until Monday"));
    let mut admin = broker.admin("alice").await;
    let grants = admin
        .list_grants(pb::ListGrantsRequest {
            task_id: "pay-deny".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .grants;
    assert!(grants.is_empty());
    let decided = records(&broker)
        .into_iter()
        .find(|r| r["event"] == "approval_decided")
        .unwrap();
    assert_eq!(decided["decision"], "deny");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_approval_yields_nothing() {
    let broker = Broker::start_with(&[
        ("TESSERA_APPROVALS__TTL", "2s"),
        ("TESSERA_APPROVALS__POLL_INTERVAL", "100ms"),
    ]);
    broker.start_task(pay_task("pay-late", &["researcher"])).await;
    let mut agent = broker.agent("researcher").await;
    let p = pending(&mut agent, pay_request("pay-late", &[TRANSFER], Some(60))).await;
    let mut stream = await_approval(&mut agent, &p.approval_id).await.unwrap();
    let expired = outcome(&mut stream).await.unwrap_err();
    assert_eq!(expired.code(), Code::DeadlineExceeded, "{expired:?}");
    // Approving it now is refused, and waiting again still yields nothing.
    let mut alice = broker.admin("alice").await;
    let late = code(
        alice
            .decide_approval(pb::DecideApprovalRequest {
                approval_id: p.approval_id.clone(),
                approve: true,
                reason: "sorry, late".into(),
            })
            .await,
    );
    assert_eq!(late.code(), Code::FailedPrecondition, "{late:?}");
    assert!(late.message().contains("expired"), "{late:?}");
    let again = code(await_approval(&mut agent, &p.approval_id).await);
    assert_eq!(again.code(), Code::DeadlineExceeded);
    // An approval id nobody issued is simply not found.
    let unknown = code(await_approval(&mut agent, "ap_nope").await);
    assert_eq!(unknown.code(), Code::NotFound);
    let bad = code(await_approval(&mut agent, "../x").await);
    assert_eq!(bad.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_class_per_token_and_the_blast_radius_cap() {
    let broker = Broker::start_with(&[("TESSERA_TOKENS__MAX_BLAST_RADIUS", "10")]);
    broker.start_task(pay_task("pay-cap", &["researcher"])).await;
    let mut agent = broker.agent("researcher").await;
    // read 2 × 1 scope × 1 period = 2; × 2 periods = 4: under the cap of 10.
    let t = issue(&mut agent, pay_request("pay-cap", &[INVOICES], Some(300))).await;
    assert_eq!(t.blast_radius, 2);
    assert!(t.approval_id.is_empty());
    let t = issue(&mut agent, pay_request("pay-cap", &[INVOICES], Some(600))).await;
    assert_eq!(t.blast_radius, 4);
    // A high-impact write scores 25: refused before any approval is opened.
    let over = code(agent.request_token(pay_request("pay-cap", &[TRANSFER], Some(60))).await);
    assert_eq!(over.code(), Code::PermissionDenied, "{over:?}");
    assert!(over.message().starts_with("blast_radius_exceeded"), "{over:?}");
    // Mixing classes is malformed, and says to ask separately.
    let mixed = code(
        agent
            .request_token(pay_request("pay-cap", &[INVOICES, TRANSFER], None))
            .await,
    );
    assert_eq!(mixed.code(), Code::InvalidArgument, "{mixed:?}");
    assert!(mixed.message().contains("one token per class"), "{mixed:?}");
    let mut alice = broker.admin("alice").await;
    let listed = alice
        .list_approvals(pb::ListApprovalsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.approvals.is_empty());
    let denied = records(&broker)
        .into_iter()
        .find(|r| r["event"] == "token_denied")
        .unwrap();
    assert_eq!(denied["blast_radius"], 25);
    assert!(denied["reason"].as_str().unwrap().contains("blast_radius_exceeded"));
}

/// A loopback HTTP server that records one request: its head and body.
async fn one_request(listener: tokio::net::TcpListener) -> (String, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (mut stream, _) = listener.accept().await.unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "the webhook closed before its body was complete");
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                stream
                    .write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                    .await
                    .unwrap();
                return (head.to_owned(), body.to_owned());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvers_are_notified_by_a_signed_webhook() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/tessera", listener.local_addr().unwrap());
    let received = tokio::spawn(one_request(listener));
    let dir = dev_init("webhook");
    let secret = "throwaway-test-webhook-secret-0123456789";
    let secret_file = dir.path().join("webhook-secret.txt");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    let broker = Broker::start_in(
        dir,
        &[
            ("TESSERA_APPROVALS__WEBHOOK", url.as_str()),
            ("TESSERA_APPROVALS__WEBHOOK_SECRET_FILE", secret_file.to_str().unwrap()),
        ],
    );
    broker.start_task(pay_task("pay-hook", &["researcher"])).await;
    let mut researcher = broker.agent("researcher").await;
    let waiting = pending(&mut researcher, pay_request("pay-hook", &[TRANSFER], Some(60))).await;

    let (head, body) = tokio::time::timeout(Duration::from_secs(20), received)
        .await
        .expect("no webhook within 20 s")
        .unwrap();
    assert!(head.starts_with("POST /hooks/tessera HTTP/1.1"), "{head}");
    let notice: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(notice["type"], "tessera.approval.pending");
    assert_eq!(notice["approval_id"], waiting.approval_id.as_str());
    assert_eq!(notice["requester"], agent_id("researcher"));
    assert_eq!(notice["task_id"], "pay-hook");
    assert_eq!(notice["audience"], PAYMENTS);
    assert_eq!(notice["scopes"], serde_json::json!([TRANSFER]));
    assert_eq!(notice["high_impact"], serde_json::json!([TRANSFER]));
    assert!(find_secret(&body).is_none(), "a secret in the notice: {body}");
    // The signature is HMAC-SHA256 of the body with the shared secret.
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag: String = ring::hmac::sign(&key, body.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let signature = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-tessera-signature:")
                .map(|v| v.trim().to_owned())
        })
        .expect("a signature header");
    assert_eq!(signature, format!("sha256={tag}"));
    // Logged once the answer is read, which may be after we answered.
    broker.wait_log_count("approval_webhook_sent", 0);
}
