//! Stopping `tesserad` with streams open: at drain start every open stream
//! ends with `UNAVAILABLE: broker shutting down`, so watchers get a status
//! they can act on (not a cut connection) and the drain does not wait for
//! them. Under a mint burst, health turns NOT_SERVING first and no token
//! leaves without its record (TEST-MATRIX D5).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

use std::io::BufRead as _;
use std::process::{Command, Stdio};

use tessera_e2e::*;

fn sigterm(pid: u32) {
    let status = Command::new("kill").arg("-TERM").arg(pid.to_string()).status().unwrap();
    assert!(status.success());
}

/// The JSON log line whose message is `message`.
fn log_line(logs: &str, message: &str) -> Option<serde_json::Value> {
    logs.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_open_streams_with_unavailable_and_the_drain_leaves_none() {
    let mut broker = Broker::start();

    // A watcher over the SDK's raw client, subscribed (its first heartbeat came).
    let mut verifier = broker.verifier("api-gateway").await;
    let mut feed = verifier
        .watch_revocations(pb::WatchRevocationsRequest::default())
        .await
        .unwrap()
        .into_inner();
    first_position(&mut feed).await;

    // And one over the CLI, which prints heartbeats once subscribed.
    let mut cli = Command::new(bin_dir().join("tessera"))
        .arg("--dev-dir")
        .arg(broker.dir.path())
        .arg("--endpoint")
        .arg(broker.endpoint())
        .args(["--as", "api-gateway", "revocations", "watch", "--heartbeats"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut cli_out = std::io::BufReader::new(cli.stdout.take().unwrap());
    let mut first = String::new();
    cli_out.read_line(&mut first).unwrap();
    assert!(first.contains("heartbeat"), "{first}");

    sigterm(broker.pid());

    // The SDK watcher: UNAVAILABLE with the reason, then nothing.
    let status = loop {
        match feed.message().await {
            Ok(Some(_)) => continue, // a heartbeat sent before the signal
            Ok(None) => panic!("the feed ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "broker shutting down");

    // The CLI says so, with where to resume, and exits 2 (refused by the broker).
    let out = cli.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("error: UNAVAILABLE: broker shutting down"), "{stderr}");
    assert!(
        stderr.contains("resume with `tessera revocations watch --after "),
        "{stderr}"
    );

    let exit = broker.terminate();
    assert!(exit.success(), "tesserad exited with {exit}");
    let logs = broker.logs();
    let ending = log_line(&logs, "ending open streams: UNAVAILABLE broker shutting down")
        .unwrap_or_else(|| panic!("no stream-ending line: {logs}"));
    assert_eq!(ending["fields"]["streams"], 2, "{ending}");
    // The drain finished on its own, with no stream left to cut.
    let drained = log_line(&logs, "drain finished").unwrap_or_else(|| panic!("no drain line: {logs}"));
    assert_eq!(drained["fields"]["streams_left"], 0, "{drained}");
    assert!(!logs.contains("drain timed out"), "{logs}");
    assert!(logs.contains("tesserad stopped"), "{logs}");
}

/// D5: SIGTERM during a burst of mints from three agents. Health goes
/// NOT_SERVING first (a watcher sees it, then its stream ends, so it does
/// not hold up the drain), every call
/// either returns a token or fails with a status, the broker exits 0 after
/// a finished drain, and every token a client received has its issuance in
/// the audit trail, and (on Redis, which outlives the broker) its grant live
/// in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_a_mint_burst_reports_not_serving_first_and_returns_no_unrecorded_token() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tonic_health::pb::health_check_response::ServingStatus;

    let mut broker = Broker::start();
    broker
        .start_task(start_request("drain", &["researcher"], &["crm.contacts.read"], 600))
        .await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(broker.channel("api-gateway").await);
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);

    let received: Arc<Mutex<Vec<pb::IssuedToken>>> = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    let mut minters = Vec::new();
    for _ in 0..3 {
        let mut agent = broker.agent("researcher").await;
        let (received, count) = (received.clone(), count.clone());
        minters.push(tokio::spawn(async move {
            // Bounded: ends at the first refusal (the drain) or after 500 mints.
            for _ in 0..500 {
                match agent
                    .request_token(token_request("drain", &["crm.contacts.read"], None))
                    .await
                {
                    Ok(r) => match r.into_inner().outcome {
                        Some(pb::request_token_response::Outcome::Token(t)) => {
                            received.lock().unwrap().push(t);
                            count.fetch_add(1, Ordering::SeqCst);
                        }
                        other => panic!("expected a token, got {other:?}"),
                    },
                    Err(status) => return Some((status.code(), status.message().to_owned())),
                }
            }
            None
        }));
    }
    eventually("mints under way", Duration::from_secs(20), async || {
        count.load(Ordering::SeqCst) >= 10
    })
    .await;
    sigterm(broker.pid());

    // The watcher hears NOT_SERVING before its stream ends.
    let next = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("a health change within 10 s");
    match next {
        Ok(Some(change)) => assert_eq!(change.status(), ServingStatus::NotServing),
        other => panic!("the health watch ended without NOT_SERVING: {other:?}"),
    }
    // Then the watch ends: a health watcher does not hold up the drain.
    match tokio::time::timeout(Duration::from_secs(10), watch.message()).await {
        Ok(Ok(None) | Err(_)) => {}
        other => panic!("the health watch went on after NOT_SERVING: {other:?}"),
    }
    let mut codes = Vec::new();
    for m in minters {
        codes.extend(m.await.unwrap());
    }
    let exit = broker.terminate();
    assert!(exit.success(), "tesserad exited with {exit}");
    let logs = broker.logs();
    let drained = log_line(&logs, "drain finished").unwrap_or_else(|| panic!("no drain line: {logs}"));
    assert_eq!(drained["fields"]["streams_left"], 0, "{drained}");
    // A call after the listener stopped is refused: UNAVAILABLE (the
    // reconnect is refused), or CANCELLED with hyper's "operation was
    // canceled" for a request still queued in the client when the
    // connection closed (never sent). Either way the status comes at once.
    assert!(
        codes
            .iter()
            .all(|(c, m)| *c == tonic::Code::Unavailable
                || (*c == tonic::Code::Cancelled && m == "operation was canceled")),
        "{codes:?}"
    );

    let received = received.lock().unwrap().clone();
    let audit = std::fs::read_to_string(&broker.audit).unwrap();
    for t in &received {
        assert!(
            audit.contains(&format!("\"grant_id\":\"{}\"", t.grant_id)),
            "token {} returned without its audit record",
            t.grant_id
        );
    }
    if test_store() == "redis" {
        broker.restart();
        let mut verifier = broker.verifier("api-gateway").await;
        for t in &received {
            assert!(
                introspect(&mut verifier, &t.access_token).await.unwrap(),
                "token {} returned without its grant",
                t.grant_id
            );
        }
    }
    eprintln!(
        "D5: {} tokens before and during the drain; {} minters refused ({codes:?})",
        received.len(),
        codes.len()
    );
}
