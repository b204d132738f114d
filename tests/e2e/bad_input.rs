//! Every bad input of the walking skeleton's contract, each asserting its status code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

use std::time::Duration;

use tessera_e2e::attestation::foreign_identity;
use tessera_e2e::*;
use tonic::Code;

#[track_caller]
fn expect(status: tonic::Status, want: Code, mentions: &str) {
    assert_eq!(status.code(), want, "{status:?}");
    assert!(
        status.message().contains(mentions),
        "message {:?} should mention {mentions:?}",
        status.message()
    );
}

#[tokio::test]
async fn start_task_fields_are_validated() {
    let broker = Broker::start();
    let mut o = broker.orchestrator().await;
    let base = || start_request("t-bad", &["researcher"], &["crm.contacts.read"], 600);

    let mut r = base();
    r.agents = vec!["spiffe://tessera.local/agent/../alice".into()];
    expect(code(o.start_task(r).await), Code::InvalidArgument, "agents");
    let mut r = base();
    r.agents = vec!["not a spiffe id".into()];
    expect(code(o.start_task(r).await), Code::InvalidArgument, "agents");
    let mut r = base();
    r.agents = vec!["spiffe://tessera.local/agent/unregistered".into()];
    expect(code(o.start_task(r).await), Code::InvalidArgument, "not registered");
    let mut r = base();
    r.agents.clear();
    expect(code(o.start_task(r).await), Code::InvalidArgument, "agents");
    let mut r = base();
    r.task_id = "x".repeat(129);
    expect(code(o.start_task(r).await), Code::InvalidArgument, "task_id");
    let mut r = base();
    r.task_id = "has/slash".into();
    expect(code(o.start_task(r).await), Code::InvalidArgument, "task_id");
    let r = start_request("t-bad", &["researcher"], &["crm.unknown"], 600);
    expect(code(o.start_task(r).await), Code::InvalidArgument, "unknown scope");
    let r = start_request("t-bad", &["researcher"], &[""], 600);
    expect(code(o.start_task(r).await), Code::InvalidArgument, "scope_ceiling");
    let mut r = base();
    r.scope_ceiling.insert(
        "https://unknown.example".into(),
        pb::ScopeSet {
            scopes: vec!["a".into()],
        },
    );
    expect(code(o.start_task(r).await), Code::InvalidArgument, "unknown audience");
    let r = start_request("t-bad", &["researcher"], &["crm.contacts.read"], 0);
    expect(code(o.start_task(r).await), Code::InvalidArgument, "duration_seconds");
    let r = start_request("t-bad", &["researcher"], &["crm.contacts.read"], 48 * 3600);
    expect(code(o.start_task(r).await), Code::InvalidArgument, "deadline");
    let mut r = base();
    r.lifetime = None;
    expect(code(o.start_task(r).await), Code::InvalidArgument, "lifetime");
    let mut r = base();
    r.labels.insert("k".into(), "v".repeat(300));
    expect(code(o.start_task(r).await), Code::InvalidArgument, "labels");
    let mut r = base();
    r.parent_task_id = "no-such-parent".into();
    expect(code(o.start_task(r).await), Code::NotFound, "no-such-parent");

    // Only orchestrators start tasks; ids are unique.
    let mut as_agent = tessera_client::OrchestratorClient::new(broker.channel("researcher").await);
    expect(
        code(as_agent.start_task(base()).await),
        Code::PermissionDenied,
        "orchestrator",
    );
    o.start_task(base()).await.unwrap();
    expect(code(o.start_task(base()).await), Code::AlreadyExists, "t-bad");
    // A broker-generated id when none is given.
    let mut r = base();
    r.task_id.clear();
    assert!(o.start_task(r).await.unwrap().into_inner().task_id.starts_with("task-"));
}

#[tokio::test]
async fn token_request_fields_are_validated() {
    let broker = Broker::start();
    broker
        .start_task(start_request(
            "t1",
            &["researcher"],
            &["crm.contacts.read", "crm.notes.read"],
            // Far longer than the identity's 10m, so the task's remaining time
            // never clamps the TTL checked at the end (a loaded machine may
            // cross a second boundary between start and request).
            3600,
        ))
        .await;
    let mut agent = broker.agent("researcher").await;
    let read = &["crm.contacts.read"];

    expect(
        code(agent.request_token(token_request("t1", read, Some(0))).await),
        Code::InvalidArgument,
        "ttl_seconds",
    );
    expect(
        code(agent.request_token(token_request("t1", read, Some(3601))).await),
        Code::InvalidArgument,
        "ttl_seconds: ",
    );
    expect(
        code(agent.request_token(token_request("t1", &[], None)).await),
        Code::InvalidArgument,
        "scopes",
    );
    expect(
        code(agent.request_token(token_request("t1", &[""], None)).await),
        Code::InvalidArgument,
        "scopes",
    );
    expect(
        code(agent.request_token(token_request("t1", &["crm.nope"], None)).await),
        Code::InvalidArgument,
        "scopes: unknown scope",
    );
    let many: Vec<String> = (0..65).map(|i| format!("s{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    expect(
        code(agent.request_token(token_request("t1", &many, None)).await),
        Code::InvalidArgument,
        "scopes",
    );
    expect(
        code(
            agent
                .request_token(token_request("t1", &["crm.contacts.read", "crm.contacts.write"], None))
                .await,
        ),
        Code::InvalidArgument,
        "scopes: ",
    );
    expect(
        code(
            agent
                .request_token(token_request("t1", &["crm.contacts.read", "crm.contacts.write"], None))
                .await,
        ),
        Code::InvalidArgument,
        "one token per class",
    );
    let mut r = token_request("t1", read, None);
    r.audience = "a".repeat(257);
    expect(code(agent.request_token(r).await), Code::InvalidArgument, "audience");
    let mut r = token_request("t1", read, None);
    r.audience = "https://unknown.example".into();
    expect(
        code(agent.request_token(r).await),
        Code::InvalidArgument,
        "audience: unknown audience",
    );
    let mut r = token_request("t1", read, None);
    r.task_id = "x".repeat(1000);
    expect(code(agent.request_token(r).await), Code::InvalidArgument, "task_id");

    expect(
        code(agent.request_token(token_request("no-such-task", read, None)).await),
        Code::NotFound,
        "no-such-task",
    );
    expect(
        code(
            agent
                .request_token(token_request("t1", &["crm.contacts.write"], None))
                .await,
        ),
        Code::PermissionDenied,
        "beyond task `t1`'s ceiling",
    );
    let mut writer = broker.agent("writer").await;
    expect(
        code(writer.request_token(token_request("t1", read, None)).await),
        Code::PermissionDenied,
        "not assigned",
    );
    let mut as_orchestrator = tessera_client::AgentClient::new(broker.channel("orchestrator").await);
    expect(
        code(as_orchestrator.request_token(token_request("t1", read, None)).await),
        Code::PermissionDenied,
        "agent role",
    );

    // A TTL above the identity's maximum (10m) but within the broker's is clamped, not refused.
    let t = issue(&mut agent, token_request("t1", read, Some(3600))).await;
    assert_eq!(t.expires_in, 600);
}

#[tokio::test]
async fn ended_and_expired_tasks_refuse_tokens() {
    let broker = Broker::start();
    let mut o = broker.orchestrator().await;
    let mut agent = broker.agent("researcher").await;
    let read = &["crm.contacts.read"];
    o.start_task(start_request("done", &["researcher"], read, 600))
        .await
        .unwrap();
    o.complete_task(pb::CompleteTaskRequest {
        task_id: "done".into(),
        reason: String::new(),
    })
    .await
    .unwrap();
    expect(
        code(agent.request_token(token_request("done", read, None)).await),
        Code::FailedPrecondition,
        "completed",
    );

    o.start_task(start_request("short", &["researcher"], read, 1))
        .await
        .unwrap();
    // Wait out its one second by watching the task, not the clock.
    tessera_e2e::eventually("the one-second task to expire", Duration::from_secs(20), async || {
        let shown = o
            .get_task(pb::GetTaskRequest {
                task_id: "short".into(),
            })
            .await
            .unwrap()
            .into_inner();
        shown.state() == pb::TaskState::Expired
    })
    .await;
    expect(
        code(agent.request_token(token_request("short", read, None)).await),
        Code::FailedPrecondition,
        "expired",
    );
    let shown = o
        .get_task(pb::GetTaskRequest {
            task_id: "short".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shown.state(), pb::TaskState::Expired);

    // Another orchestrator may neither complete nor read someone else's task.
    expect(
        code(
            o.get_task(pb::GetTaskRequest {
                task_id: "missing".into(),
            })
            .await,
        ),
        Code::NotFound,
        "missing",
    );
    let mut stranger = tessera_client::OrchestratorClient::new(broker.channel("writer").await);
    expect(
        code(
            stranger
                .complete_task(pb::CompleteTaskRequest {
                    task_id: "short".into(),
                    reason: String::new(),
                })
                .await,
        ),
        Code::PermissionDenied,
        "orchestrator role",
    );
    expect(
        code(
            stranger
                .get_task(pb::GetTaskRequest {
                    task_id: "short".into(),
                })
                .await,
        ),
        Code::PermissionDenied,
        "short",
    );
    let mut o2 = tessera_client::OrchestratorClient::new(broker.channel("orchestrator").await);
    expect(
        code(
            o2.complete_task(pb::CompleteTaskRequest {
                task_id: "short".into(),
                reason: "a\u{0}b".into(),
            })
            .await,
        ),
        Code::InvalidArgument,
        "reason",
    );
}

/// An attested call (Introspect; GetJwks is public and attests nobody).
async fn try_introspect(broker: &Broker, identity: &tessera_client::Identity) -> Result<(), String> {
    let channel = tessera_client::connect(&broker.endpoint(), identity)
        .await
        .map_err(|e| e.to_string())?;
    let mut v = tessera_client::VerifierClient::new(channel);
    v.introspect(tessera_e2e::attestation::introspect_request())
        .await
        .map(drop)
        .map_err(|s| format!("{s:?}"))
}

#[tokio::test]
async fn callers_without_a_trusted_svid_are_refused() {
    let broker = Broker::start();
    // Sanity: a trusted, registered identity works.
    try_introspect(&broker, &broker.identity("api-gateway")).await.unwrap();

    // An SVID from a CA outside the trust bundle: UNAUTHENTICATED, saying why.
    let untrusted = foreign_identity(&broker, "spiffe://tessera.local/service/api-gateway", false);
    let refused = try_introspect(&broker, &untrusted).await.unwrap_err();
    assert!(
        refused.contains("Unauthenticated") && refused.contains("trust bundle"),
        "{refused}"
    );

    // No client certificate at all: without a JWT issuer there is no other
    // way to attest, so the TLS handshake itself refuses it (no slot held).
    let d = broker.dir.path();
    let ca = tonic::transport::Certificate::from_pem(std::fs::read(d.join("ca.pem")).unwrap());
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(ca)
        .domain_name("127.0.0.1");
    // The SDK's connect above installed the ring provider for this process.
    let anonymous = tonic::transport::Endpoint::from_shared(broker.endpoint())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await;
    if let Ok(anonymous) = anonymous {
        let status = code(
            tessera_client::AgentClient::new(anonymous.into())
                .request_token(token_request("t", &["crm.contacts.read"], None))
                .await,
        );
        assert_ne!(
            status.code(),
            Code::Unauthenticated,
            "the call reached a handler: {status:?}"
        );
    }

    // Trusted CA, but an identity that is not registered: UNAUTHENTICATED.
    let stranger = foreign_identity(&broker, "spiffe://tessera.local/agent/stranger", true);
    let channel = tessera_client::connect(&broker.endpoint(), &stranger).await.unwrap();
    let status = code(
        tessera_client::AgentClient::new(channel)
            .request_token(token_request("t", &["crm.contacts.read"], None))
            .await,
    );
    expect(status, Code::Unauthenticated, "not registered");

    // Trusted CA, wrong trust domain: UNAUTHENTICATED.
    let other_td = foreign_identity(&broker, "spiffe://evil.example/agent/researcher", true);
    let channel = tessera_client::connect(&broker.endpoint(), &other_td).await.unwrap();
    let status = code(
        tessera_client::AgentClient::new(channel)
            .request_token(token_request("t", &["crm.contacts.read"], None))
            .await,
    );
    expect(status, Code::Unauthenticated, "trusted domain");
}

#[tokio::test]
async fn oversized_messages_are_refused() {
    let broker = Broker::start();
    let mut v = broker.verifier("api-gateway").await;
    // Just over the configured 64 KiB cap (far below tonic's 4 MB default), and 10 MB:
    // both refused by the cap before any handler runs; the broker lives on.
    for size in [65 * 1024, 10 * 1024 * 1024] {
        let status = code(
            v.introspect(pb::IntrospectRequest {
                token: "a".repeat(size),
            })
            .await,
        );
        assert_eq!(status.code(), Code::OutOfRange, "{size}: {status:?}");
        assert!(
            status.message().contains("65536"),
            "{size}: the message names the cap: {status:?}"
        );
    }
    // Just under the cap but over the token bound: INVALID_ARGUMENT naming the field.
    let status = code(
        v.introspect(pb::IntrospectRequest {
            token: "a".repeat(32 * 1024),
        })
        .await,
    );
    expect(status, Code::InvalidArgument, "token");
    v.get_jwks(pb::GetJwksRequest {}).await.unwrap();
}

#[tokio::test]
async fn every_rpc_is_implemented_and_names_a_missing_field() {
    let broker = Broker::start();
    // DelegateToken is implemented (tests/e2e/delegation.rs): an empty request names its field.
    let mut agent = broker.agent("researcher").await;
    let status = code(agent.delegate_token(pb::DelegateTokenRequest::default()).await);
    expect(status, Code::InvalidArgument, "parent_token");
}

#[tokio::test]
async fn one_identity_bursting_is_limited_and_others_are_not() {
    let broker = Broker::start_with(&[
        ("TESSERA_SERVER__PER_IDENTITY_RPS", "1"),
        ("TESSERA_SERVER__PER_IDENTITY_BURST", "5"),
    ]);
    let mut o = broker.orchestrator().await;
    o.start_task(start_request(
        "burst",
        &["researcher", "writer"],
        &["crm.contacts.read"],
        600,
    ))
    .await
    .unwrap();
    let mut researcher = broker.agent("researcher").await;
    let mut refused = None;
    for _ in 0..20 {
        if let Err(s) = researcher
            .request_token(token_request("burst", &["crm.contacts.read"], None))
            .await
        {
            refused = Some(s);
            break;
        }
    }
    let status = refused.expect("a burst of 20 within a 5-call bucket was never limited");
    expect(
        status,
        Code::ResourceExhausted,
        "rate limit for `spiffe://tessera.local/agent/researcher`",
    );
    // Another identity is unaffected.
    broker
        .issue_as("writer", token_request("burst", &["crm.contacts.read"], None))
        .await;
}

#[tokio::test]
async fn refused_attestations_are_audited_but_cannot_flood_the_trail() {
    let broker = Broker::start();
    let stranger = foreign_identity(&broker, "spiffe://tessera.local/agent/flooder", true);
    let channel = tessera_client::connect(&broker.endpoint(), &stranger).await.unwrap();
    let mut client = tessera_client::AgentClient::new(channel);
    let started = std::time::Instant::now();
    for _ in 0..20 {
        let status = code(
            client
                .request_token(token_request("t", &["crm.contacts.read"], None))
                .await,
        );
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    let elapsed = started.elapsed().as_secs();
    let audit = std::fs::read_to_string(broker.dir.path().join("audit.jsonl")).unwrap();
    let records = audit
        .lines()
        .filter(|l| l.contains("attestation_refused") && l.contains("spiffe://tessera.local/agent/flooder"))
        .count();
    assert!(records >= 1, "the refusal was not audited at all");
    assert!(
        records as u64 <= elapsed + 1,
        "{records} records in {elapsed} s: one per second at most"
    );
}

/// A caller presenting fresh evidence on every attempt (here a different
/// bearer token each call, on one anonymous connection) escapes the
/// per-evidence sampling; the per-address cap still bounds the audit
/// trail, and what it leaves out is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_evidence_for_every_attempt_cannot_flood_the_trail_either() {
    // With a JWT issuer, so a connection without a certificate is served.
    let dir = dev_init("flood");
    let jwks = dir.path().join("issuer-jwks.json");
    std::fs::write(&jwks, tessera_e2e::attestation::Issuer::new("k1").jwks()).unwrap();
    tessera_e2e::attestation::append_config(dir.path(), &tessera_e2e::attestation::jwt_config(&jwks));
    let broker = Broker::start_in(dir, &[]);
    let channel = tessera_e2e::attestation::anonymous_channel(&broker).await;
    let mut verifier = pb::verifier_service_client::VerifierServiceClient::new(channel);
    let attempts: u64 = 400;
    let started = std::time::Instant::now();
    for i in 0..attempts {
        let mut req = tonic::Request::new(tessera_e2e::attestation::introspect_request());
        req.metadata_mut()
            .insert("authorization", format!("Bearer flood{i}.x.y").parse().unwrap());
        let status = verifier.introspect(req).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    let secs = started.elapsed().as_secs();
    let audited = tessera_e2e::attestation::audit_records(&broker)
        .iter()
        .filter(|r| r["event"] == "attestation_refused")
        .count() as u64;
    assert!(audited >= 1, "nothing audited");
    // 50 a second per address, in windows that may straddle two seconds.
    assert!(audited <= 50 * (secs + 2), "{audited} records in {secs} s");
    let (_, metrics) = broker.http_get("/metrics");
    let unaudited: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("tessera_attestation_refusals_unaudited_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum();
    assert_eq!(audited + unaudited, attempts, "every refusal is audited or counted");
}
