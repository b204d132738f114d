//! Stopping `tesserad` with streams open: at drain start every open stream
//! ends with `UNAVAILABLE: broker shutting down`, so watchers get a status
//! they can act on (not a cut connection) and the drain does not wait for
//! them.
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
