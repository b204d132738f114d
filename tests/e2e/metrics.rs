//! The operations listener of the real `tesserad`: Prometheus `/metrics`
//! after a token, a denial and a completed task; `/healthz` and `/readyz`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

use tessera_e2e::*;

/// The value of the first sample line starting with `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_count_issuance_denials_and_revocations_without_identities() {
    let broker = Broker::start();
    broker
        .start_task(start_request("metrics-1", &["researcher"], &["crm.contacts.read"], 600))
        .await;
    let issued = broker
        .issue_as("researcher", token_request("metrics-1", &["crm.contacts.read"], None))
        .await;
    let mut agent = broker.agent("researcher").await;
    let denied = code(
        agent
            .request_token(token_request("metrics-1", &["crm.contacts.write"], None))
            .await,
    );
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    let done = broker
        .orchestrator()
        .await
        .complete_task(pb::CompleteTaskRequest {
            task_id: "metrics-1".into(),
            reason: "done".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.grants_revoked, 1);

    let (status, text) = broker.http_get("/metrics");
    assert_eq!(status, 200, "{text}");
    let read = sample(&text, r#"tessera_tokens_issued_total{class="read"}"#);
    assert!(read.is_some_and(|n| n >= 1.0), "{text}");
    let deny = sample(
        &text,
        r#"tessera_decisions_total{result="deny",operation="request_token"}"#,
    );
    assert!(deny.is_some_and(|n| n >= 1.0), "{text}");
    let allow = sample(
        &text,
        r#"tessera_decisions_total{result="allow",operation="request_token"}"#,
    );
    assert!(allow.is_some_and(|n| n >= 1.0), "{text}");
    let completed = sample(&text, r#"tessera_revocations_total{cause="task_completed"}"#);
    assert!(completed.is_some_and(|n| n >= 1.0), "{text}");
    assert!(
        text.contains(r#"tessera_request_duration_seconds_bucket{method="tessera.v1.AgentService/RequestToken",grpc_code="OK",le="#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"tessera_request_duration_seconds_count{method="tessera.v1.OrchestratorService/CompleteTask",grpc_code="OK"}"#
        ),
        "{text}"
    );
    // No identity, token or grant id as a label or anywhere else.
    assert!(!text.contains("spiffe://"), "{text}");
    assert!(!text.contains("eyJ"), "{text}");
    assert!(!text.contains(&issued.access_token), "{text}");
    assert!(!text.contains(&issued.grant_id), "{text}");
    assert!(!text.contains("metrics-1"), "a task id reached /metrics: {text}");

    let (status, body) = broker.http_get("/healthz");
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, body) = broker.http_get("/readyz");
    assert_eq!(status, 200, "{body}");
    let (status, _) = broker.http_get("/nope");
    assert_eq!(status, 404);
}

/// Polls `GET path` until it answers `want`, for up to `secs` seconds.
async fn eventually_status(broker: &Broker, path: &str, want: u16, secs: u64) {
    let start = std::time::Instant::now();
    loop {
        let (status, body) = broker.http_get(path);
        if status == want {
            return;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(secs),
            "{path} still answers {status} ({body}), want {want}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn readyz_follows_the_store_and_store_errors_are_counted() {
    let mut redis = tessera_e2e::redis::RedisServer::builder().appendonly(false).start();
    let env = redis_env(&redis.url());
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let broker = Broker::start_with(&env);
    broker
        .start_task(start_request("ready-1", &["researcher"], &["crm.contacts.read"], 600))
        .await;
    assert_eq!(broker.http_get("/readyz").0, 200);

    redis.kill();
    let mut agent = broker.agent("researcher").await;
    let refused = code(
        agent
            .request_token(token_request("ready-1", &["crm.contacts.read"], None))
            .await,
    );
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    eventually_status(&broker, "/readyz", 503, 15).await;
    let (status, body) = broker.http_get("/healthz");
    assert_eq!((status, body.trim()), (200, "ok"), "liveness does not follow the store");
    let (_, text) = broker.http_get("/metrics");
    let errors = sample(&text, "tessera_store_errors_total ");
    assert!(errors.is_some_and(|n| n >= 1.0), "{text}");

    redis.restart();
    eventually_status(&broker, "/readyz", 200, 20).await;
}

/// With the standard `OTEL_*` variables, spans go out over OTLP/gRPC. The
/// collector here is a bare HTTP/2 peer on loopback: it answers the
/// connection preface with its settings and reads what the exporter sends,
/// which must name the service and the RPC that was served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_otlp_when_the_otel_variables_ask() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let collector = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", collector.local_addr().unwrap());
    let received = tokio::spawn(async move {
        let (mut stream, _) = collector.accept().await.unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        let mut answered = false;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let n = match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => n,
                _ => return seen,
            };
            seen.extend_from_slice(&buf[..n]);
            if !answered && seen.starts_with(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") {
                // Our SETTINGS (empty), then the ACK of the client's.
                stream
                    .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0])
                    .await
                    .unwrap();
                answered = true;
            }
            let text = String::from_utf8_lossy(&seen);
            if text.contains("OrchestratorService/StartTask") && text.contains("tesserad") {
                return seen;
            }
        }
    });
    let broker = Broker::start_with(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ]);
    broker
        .start_task(start_request("otel-1", &["researcher"], &["crm.contacts.read"], 600))
        .await;
    let token = broker
        .issue_as("researcher", token_request("otel-1", &["crm.contacts.read"], None))
        .await;
    let seen = received.await.unwrap();
    assert!(
        seen.starts_with(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        "no HTTP/2 (OTLP/gRPC) connection from tesserad"
    );
    let text = String::from_utf8_lossy(&seen);
    assert!(
        text.contains("OrchestratorService/StartTask") && text.contains("tesserad"),
        "the export names neither the service nor the RPC ({} bytes)",
        seen.len()
    );
    assert!(!text.contains(&token.access_token), "a token was exported");
}
