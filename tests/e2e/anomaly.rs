//! Anomaly revocation end to end: an identity denied too often within the
//! window loses its live grants and is quarantined (every call refused)
//! until the quarantine ends; others in the same task are unaffected.
//! Runs on the memory store, and on Redis with `TESSERA_TEST_STORE=redis`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

use std::time::{Duration, Instant};

use serde_json::Value;
use tessera_e2e::*;
use tonic::Code;

fn records(broker: &Broker) -> Vec<Value> {
    let text = std::fs::read_to_string(broker.dir.path().join("audit.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

async fn active(verifier: &mut tessera_client::VerifierClient, token: &pb::IssuedToken) -> bool {
    introspect(verifier, &token.access_token).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_denials_revoke_and_quarantine_the_identity() {
    let broker = Broker::start_with(&[
        ("TESSERA_ANOMALY__DENIALS", "3"),
        ("TESSERA_ANOMALY__WITHIN", "60s"),
        ("TESSERA_ANOMALY__QUARANTINE", "2s"),
    ]);
    let mut orchestrator = broker.orchestrator().await;
    let mut researcher = broker.agent("researcher").await;
    let mut writer = broker.agent("writer").await;
    let mut verifier = broker.verifier("api-gateway").await;
    orchestrator
        .start_task(start_request(
            "anomaly",
            &["researcher", "writer"],
            &["crm.contacts.read", "crm.notes.read"],
            600,
        ))
        .await
        .unwrap();
    let held = issue(
        &mut researcher,
        token_request("anomaly", &["crm.contacts.read"], Some(300)),
    )
    .await;
    let bystander = issue(&mut writer, token_request("anomaly", &["crm.notes.read"], Some(300))).await;
    assert!(active(&mut verifier, &held).await);

    // Three asks beyond the ceiling: each refused; the third fires the rule.
    for i in 0..3 {
        let status = code(
            researcher
                .request_token(token_request("anomaly", &["crm.contacts.write"], Some(60)))
                .await,
        );
        assert_eq!(status.code(), Code::PermissionDenied, "denial {i}: {status:?}");
        assert!(!status.message().contains("quarantined"), "denial {i}: {status:?}");
    }

    // The researcher's live token died; the writer's lives.
    assert!(
        !active(&mut verifier, &held).await,
        "the quarantined identity's token is still live"
    );
    assert!(active(&mut verifier, &bystander).await, "a bystander's token died");

    // Even a valid call is refused while quarantined.
    let status = code(
        researcher
            .request_token(token_request("anomaly", &["crm.contacts.read"], Some(60)))
            .await,
    );
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("quarantined"), "{status:?}");
    assert!(status.message().contains("3 denials within 60s"), "{status:?}");

    // The writer is unaffected.
    let fresh = issue(&mut writer, token_request("anomaly", &["crm.contacts.read"], Some(60))).await;
    assert!(active(&mut verifier, &fresh).await);

    // The audit trail says what happened.
    let audit = records(&broker);
    let researcher_id = format!("spiffe://{TD}/agent/researcher");
    let quarantined: Vec<&Value> = audit.iter().filter(|r| r["event"] == "quarantined").collect();
    assert_eq!(quarantined.len(), 1, "{audit:#?}");
    let q = quarantined[0];
    assert_eq!(q["who"]["identity"], researcher_id.as_str(), "{q}");
    assert_eq!(q["count"], 1, "{q}");
    let reason = q["reason"].as_str().unwrap();
    assert!(reason.contains("3 denials within 60s"), "{reason}");
    assert!(reason.contains("grants revoked: 1"), "{reason}");
    assert!(reason.contains("quarantined until"), "{reason}");
    assert!(
        audit
            .iter()
            .any(|r| r["event"] == "quarantine_refused" && r["who"]["identity"] == researcher_id.as_str()),
        "{audit:#?}"
    );

    // Once the quarantine ends, the researcher may work again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match researcher
            .request_token(token_request("anomaly", &["crm.contacts.read"], Some(60)))
            .await
        {
            Ok(_) => break,
            Err(status) => {
                assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
                assert!(status.message().contains("quarantined"), "{status:?}");
                assert!(Instant::now() < deadline, "still quarantined after 10s: {status:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let again = issue(
        &mut researcher,
        token_request("anomaly", &["crm.contacts.read"], Some(60)),
    )
    .await;
    assert!(active(&mut verifier, &again).await);

    // Refusals during the quarantine were audited at most once a second.
    let refusals = records(&broker)
        .into_iter()
        .filter(|r| r["event"] == "quarantine_refused")
        .count();
    assert!((1..=4).contains(&refusals), "{refusals} quarantine refusals audited");
}

/// On a shared store a quarantine one replica imposes holds on the others
/// (within one `attestation.reload_interval`, here 200 ms), and on a replica
/// started afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantine_holds_on_every_replica() {
    let broker = Broker::start_with(&[
        ("TESSERA_ANOMALY__DENIALS", "2"),
        ("TESSERA_ANOMALY__WITHIN", "60s"),
        ("TESSERA_ANOMALY__QUARANTINE", "60s"),
        ("TESSERA_ATTESTATION__RELOAD_INTERVAL", "200ms"),
    ]);
    if broker.redis.is_none() {
        eprintln!("SKIPPED: replicas share quarantines through Redis (TESSERA_TEST_STORE=redis)");
        return;
    }
    let other = broker.replica();
    broker
        .start_task(start_request(
            "shared-q",
            &["researcher", "writer"],
            &["crm.contacts.read"],
            600,
        ))
        .await;
    let mut researcher = broker.agent("researcher").await;
    for _ in 0..2 {
        let status = code(
            researcher
                .request_token(token_request("shared-q", &["crm.contacts.write"], Some(60)))
                .await,
        );
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    }
    let mut elsewhere = other.agent("researcher").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match elsewhere
            .request_token(token_request("shared-q", &["crm.contacts.read"], Some(60)))
            .await
        {
            Err(status) if status.message().contains("quarantined") => {
                assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
                assert!(status.message().contains("2 denials within 60s"), "{status:?}");
                break;
            }
            answer => {
                assert!(
                    Instant::now() < deadline,
                    "the other replica still serves it: {answer:?}\n{}\n---\n{}",
                    other.logs(),
                    broker.logs()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let late = broker.replica();
    let status = code(
        late.agent("researcher")
            .await
            .request_token(token_request("shared-q", &["crm.contacts.read"], Some(60)))
            .await,
    );
    assert!(status.message().contains("quarantined"), "{status:?}");
    // The writer is served everywhere.
    other
        .issue_as("writer", token_request("shared-q", &["crm.contacts.read"], Some(60)))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_rule_off_denials_quarantine_nobody() {
    let broker = Broker::start_with(&[("TESSERA_ANOMALY__DENIALS", "2"), ("TESSERA_ANOMALY__ENABLED", "false")]);
    let mut orchestrator = broker.orchestrator().await;
    let mut researcher = broker.agent("researcher").await;
    orchestrator
        .start_task(start_request("calm", &["researcher"], &["crm.contacts.read"], 600))
        .await
        .unwrap();
    for _ in 0..3 {
        let status = code(
            researcher
                .request_token(token_request("calm", &["crm.contacts.write"], Some(60)))
                .await,
        );
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    }
    issue(&mut researcher, token_request("calm", &["crm.contacts.read"], Some(60))).await;
    assert!(!records(&broker).iter().any(|r| r["event"] == "quarantined"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_presented_by_another_identity_revokes_its_task_and_quarantines_the_presenter() {
    let broker = Broker::start_with(&[("TESSERA_ANOMALY__QUARANTINE", "60s")]);
    let mut orchestrator = broker.orchestrator().await;
    for (task, agents) in [
        ("leaked", &["researcher"][..]),
        ("elsewhere", &["researcher", "writer"][..]),
    ] {
        orchestrator
            .start_task(start_request(task, agents, &["crm.contacts.read"], 600))
            .await
            .unwrap();
    }
    let mut researcher = broker.agent("researcher").await;
    let stolen = issue(
        &mut researcher,
        token_request("leaked", &["crm.contacts.read"], Some(300)),
    )
    .await;
    let sibling = issue(
        &mut researcher,
        token_request("leaked", &["crm.contacts.read"], Some(300)),
    )
    .await;
    let unrelated = issue(
        &mut researcher,
        token_request("elsewhere", &["crm.contacts.read"], Some(300)),
    )
    .await;
    let mut verifier = broker.verifier("api-gateway").await;
    let report = |token: &pb::IssuedToken, presenter: &str| pb::ReportMisuseRequest {
        token: token.access_token.clone(),
        presented_by: format!("spiffe://{TD}/agent/{presenter}"),
    };

    // The holder presenting its own token is no misuse.
    let own = verifier
        .report_misuse(report(&stolen, "researcher"))
        .await
        .unwrap()
        .into_inner();
    assert!(!own.misuse);
    assert!(active(&mut verifier, &stolen).await);

    // Someone else presenting it: the task dies, the presenter is quarantined.
    let caught = verifier
        .report_misuse(report(&stolen, "writer"))
        .await
        .unwrap()
        .into_inner();
    assert!(caught.misuse);
    assert_eq!(caught.grants_revoked, 2, "{caught:?}");
    assert!(!active(&mut verifier, &stolen).await);
    assert!(!active(&mut verifier, &sibling).await);
    assert!(active(&mut verifier, &unrelated).await, "another task's grant lives");
    let status = code(
        broker
            .agent("writer")
            .await
            .request_token(token_request("elsewhere", &["crm.contacts.read"], Some(60)))
            .await,
    );
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("quarantined"), "{status:?}");
    // The holder is not punished for being robbed.
    issue(
        &mut researcher,
        token_request("elsewhere", &["crm.contacts.read"], Some(60)),
    )
    .await;

    let misuse: Vec<Value> = records(&broker)
        .into_iter()
        .filter(|r| r["event"] == "token_misuse")
        .collect();
    assert_eq!(misuse.len(), 1, "{misuse:#?}");
    assert_eq!(misuse[0]["grant_id"], stolen.grant_id.as_str());
    assert_eq!(
        misuse[0]["who"]["identity"],
        format!("spiffe://{TD}/service/api-gateway")
    );

    // Only verifiers and operators may report; a dead token is no misuse.
    let status = code(
        tessera_client::VerifierClient::new(broker.channel("researcher").await)
            .report_misuse(report(&unrelated, "writer"))
            .await,
    );
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let again = verifier
        .report_misuse(report(&stolen, "writer"))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.misuse);
    let empty = code(
        verifier
            .report_misuse(pb::ReportMisuseRequest {
                token: unrelated.access_token.clone(),
                presented_by: String::new(),
            })
            .await,
    );
    assert_eq!(empty.code(), Code::InvalidArgument);
    assert!(empty.message().contains("presented_by"), "{empty:?}");
}
