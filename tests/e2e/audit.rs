//! The audit trail through the real `tesserad`: every decision is recorded
//! and chained, refusals by non-operators are audited, and a sink that fails
//! or hangs makes operations fail closed within the bound.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use tessera_e2e::*;
use tonic::Code;

fn records(broker: &Broker) -> Vec<Value> {
    let text = std::fs::read_to_string(broker.dir.path().join("audit.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn verify(broker: &Broker, file: &std::path::Path) -> std::process::Output {
    broker.tessera(&["audit", "verify", file.to_str().unwrap()])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_decision_is_recorded_in_an_intact_chain() {
    let broker = Broker::start();
    let mut o = broker.orchestrator().await;
    o.start_task(start_request("aud-1", &["researcher"], &["crm.contacts.read"], 600))
        .await
        .unwrap();
    let mut agent = broker.agent("researcher").await;
    let response = agent
        .request_token(token_request("aud-1", &["crm.contacts.read"], Some(60)))
        .await
        .unwrap();
    let request_id = response
        .metadata()
        .get("x-request-id")
        .expect("x-request-id header")
        .to_str()
        .unwrap()
        .to_owned();
    let t = match response.into_inner().outcome {
        Some(pb::request_token_response::Outcome::Token(t)) => t,
        other => panic!("{other:?}"),
    };
    let denied = code(
        agent
            .request_token(token_request("aud-1", &["crm.contacts.write"], None))
            .await,
    );
    assert_eq!(denied.code(), Code::PermissionDenied);
    o.complete_task(pb::CompleteTaskRequest {
        task_id: "aud-1".into(),
        reason: "done".into(),
    })
    .await
    .unwrap();

    let recs = records(&broker);
    let find = |event: &str| {
        recs.iter()
            .find(|r| r["event"] == event)
            .unwrap_or_else(|| panic!("no {event} in {recs:#?}"))
    };
    let issued = find("token_issued");
    assert_eq!(issued["grant_id"], t.grant_id.as_str());
    // The caller's request id leads to both the audit record and the log line.
    assert_eq!(issued["request_id"], request_id.as_str());
    assert!(
        broker
            .logs()
            .lines()
            .any(|l| l.contains("token_issued") && l.contains(&request_id)),
        "no log line of the mint carries request id {request_id}"
    );
    assert_eq!(issued["who"]["identity"], format!("spiffe://{TD}/agent/researcher"));
    assert_eq!(issued["who"]["kind"], "agent");
    assert_eq!(issued["who"]["owner"], "team-research");
    assert!(issued["who"]["evidence"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(issued["class"], "read");
    assert_eq!(issued["ttl_secs"], 60);
    assert_eq!(issued["schema_version"], "2026-01");
    let refused = find("token_denied");
    assert_eq!(refused["decision"], "deny");
    assert!(refused["reason"].as_str().unwrap().contains("ceiling"), "{refused}");
    assert_eq!(find("task_completed")["count"], 1);
    find("task_started");
    find("key_published");
    // No token in the trail, only ids.
    let text = std::fs::read_to_string(broker.dir.path().join("audit.jsonl")).unwrap();
    assert!(!text.contains(&t.access_token));
    assert!(find_secret(&text).is_none());

    let out = verify(&broker, &broker.dir.path().join("audit.jsonl"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("intact"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Edit one record: verify names the line.
    let tampered = broker.dir.path().join("tampered.jsonl");
    std::fs::write(&tampered, text.replacen("\"deny\"", "\"allow\"", 1)).unwrap();
    let out = verify(&broker, &tampered);
    assert_eq!(out.status.code(), Some(1));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("line"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_operator_calling_any_admin_rpc_is_refused_and_audited() {
    let broker = Broker::start();
    let mut admin = tessera_client::AdminClient::new(broker.channel("researcher").await);
    let calls: Vec<(&str, Result<(), tonic::Status>)> = vec![
        (
            "ListGrants",
            admin.list_grants(pb::ListGrantsRequest::default()).await.map(drop),
        ),
        (
            "RevokeGrant",
            admin
                .revoke_grant(pb::RevokeGrantRequest {
                    grant_id: "g".into(),
                    reason: String::new(),
                })
                .await
                .map(drop),
        ),
        (
            "RevokeTask",
            admin
                .revoke_task(pb::RevokeTaskRequest {
                    task_id: "t".into(),
                    reason: String::new(),
                })
                .await
                .map(drop),
        ),
        (
            "RevokeIdentity",
            admin
                .revoke_identity(pb::RevokeIdentityRequest::default())
                .await
                .map(drop),
        ),
        (
            "RevokeAll",
            admin.revoke_all(pb::RevokeAllRequest::default()).await.map(drop),
        ),
        (
            "ListApprovals",
            admin
                .list_approvals(pb::ListApprovalsRequest::default())
                .await
                .map(drop),
        ),
        (
            "DecideApproval",
            admin
                .decide_approval(pb::DecideApprovalRequest::default())
                .await
                .map(drop),
        ),
        (
            "BlastRadius",
            admin.blast_radius(pb::BlastRadiusRequest::default()).await.map(drop),
        ),
        (
            "RotateSigningKey",
            admin
                .rotate_signing_key(pb::RotateSigningKeyRequest::default())
                .await
                .map(drop),
        ),
        (
            "ReloadPolicy",
            admin.reload_policy(pb::ReloadPolicyRequest {}).await.map(drop),
        ),
    ];
    let recs = records(&broker);
    for (rpc, result) in calls {
        let status = result.expect_err(rpc);
        assert_eq!(status.code(), Code::PermissionDenied, "{rpc}: {status:?}");
        assert!(
            recs.iter().any(|r| r["event"] == "admin_denied"
                && r["who"]["identity"] == format!("spiffe://{TD}/agent/researcher")
                && r["reason"].as_str().unwrap_or_default().starts_with(rpc)),
            "{rpc} refusal not audited"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_audit_sink_fails_mints_but_keys_and_health_are_served() {
    let broker = Broker::start_with(&[("TESSERA_AUDIT__FILE", "/dev/full")]);
    let mut v = broker.verifier("api-gateway").await;
    assert_eq!(
        v.get_jwks(pb::GetJwksRequest {}).await.unwrap().into_inner().keys.len(),
        1
    );
    let status = code(
        broker
            .orchestrator()
            .await
            .start_task(start_request("nope", &["researcher"], &["crm.contacts.read"], 600))
            .await,
    );
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("audit"), "{status:?}");
    // A revocation by an operator fails the same way: it is not done unrecorded.
    let status = code(
        broker
            .admin("alice")
            .await
            .revoke_identity(pb::RevokeIdentityRequest {
                identity: "spiffe://tessera.local/agent/researcher".into(),
                reason: "audit down".into(),
                disable: false,
            })
            .await,
    );
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("audit"), "{status:?}");
    let (_, metrics) = broker.http_get("/metrics");
    let failures: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tessera_audit_failures_total ")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no tessera_audit_failures_total:\n{metrics}"));
    assert!(failures >= 2.0, "audit failures counted: {failures}");
    // Health still answers, and says NOT_SERVING (so load balancers move
    // away) within a few health rounds; /readyz agrees.
    let mut health = tonic_health::pb::health_client::HealthClient::new(broker.channel("api-gateway").await);
    let not_serving = tonic_health::pb::health_check_response::ServingStatus::NotServing;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
            .await
            .unwrap()
            .into_inner()
            .status();
        if status == not_serving {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still {status:?}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(broker.http_get("/readyz").0, 503);
    assert!(broker.logs().contains("health changed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_audit_sink_fails_operations_within_the_bound() {
    let dir = TempDir::new("fifo");
    let fifo = dir.path().join("audit.fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    // A reader that never reads: writes succeed until the pipe buffer fills, then hang.
    let _reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags_nonblocking()
        .open(&fifo)
        .unwrap();
    let broker = Broker::start_with(&[
        ("TESSERA_AUDIT__FILE", fifo.to_str().unwrap()),
        ("TESSERA_AUDIT__TIMEOUT", "300ms"),
    ]);
    let mut o = broker.orchestrator().await;
    // Fill the pipe with task starts (each ~0.5 KiB of audit); bounded.
    let mut failure = None;
    for i in 0..2000 {
        let started = Instant::now();
        match o
            .start_task(start_request(
                &format!("f{i}"),
                &["researcher"],
                &["crm.contacts.read"],
                600,
            ))
            .await
        {
            Ok(_) => {}
            Err(status) => {
                failure = Some((status, started.elapsed()));
                break;
            }
        }
    }
    let (status, took) = failure.expect("the pipe never filled");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        took < Duration::from_secs(5),
        "the refusal took {took:?}, not bounded by the audit timeout"
    );
}

trait NonBlocking {
    fn custom_flags_nonblocking(&mut self) -> &mut Self;
}

impl NonBlocking for std::fs::OpenOptions {
    fn custom_flags_nonblocking(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt as _;
        // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
        self.custom_flags(0o4000)
    }
}
