//! The Redis Stream audit sink through the real `tesserad` and a real
//! `redis-server`: every record reaches the replica's stream in an intact
//! chain that `tessera audit verify --redis` checks (and catches a removed
//! entry in); with the file failing the stream alone keeps the broker going
//! (`require = "any"`), and with `require = "all"` it does not.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

use serde_json::Value;
use tessera_e2e::redis::RedisServer;
use tessera_e2e::*;
use tonic::Code;

const INSTANCE: &str = "audit-stream-1";

fn env<'a>(url: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("TESSERA_STORE__BACKEND", "redis"),
        ("TESSERA_STORE__URLS", url),
        ("TESSERA_SERVER__INSTANCE_ID", INSTANCE),
        ("TESSERA_AUDIT__REDIS_STREAM", "true"),
    ];
    env.extend_from_slice(extra);
    env
}

fn stream_len(redis: &RedisServer) -> u64 {
    redis
        .cli(&["XLEN", &format!("tessera:audit:{INSTANCE}")])
        .trim()
        .parse()
        .unwrap()
}

fn verify_stream(broker: &Broker, redis: &RedisServer) -> std::process::Output {
    broker.tessera(&[
        "--output",
        "json",
        "audit",
        "verify",
        "--redis",
        &redis.url(),
        "--instance",
        INSTANCE,
    ])
}

async fn mint_one(broker: &Broker, task: &str) {
    broker
        .start_task(start_request(task, &["researcher"], &["crm.contacts.read"], 600))
        .await;
    broker
        .issue_as("researcher", token_request(task, &["crm.contacts.read"], Some(60)))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_reaches_the_stream_and_verify_catches_a_removed_entry() {
    let redis = RedisServer::start();
    let urls = format!("[\"{}\"]", redis.url());
    let broker = Broker::start_with(&env(&urls, &[]));
    for i in 0..3 {
        mint_one(&broker, &format!("stream-{i}")).await;
    }

    // The stream holds what the file holds, record for record.
    let file = std::fs::read_to_string(broker.dir.path().join("audit.jsonl")).unwrap();
    let file_records = file.lines().count() as u64;
    assert!(file_records >= 7, "{file}");
    assert_eq!(stream_len(&redis), file_records);

    let out = verify_stream(&broker, &redis);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["intact"], true);
    assert_eq!(report["records"], file_records);
    assert_eq!(report["file"], format!("redis:tessera:audit:{INSTANCE}"));

    // Remove the third entry: verify names the entry where the chain breaks.
    let ids = redis.cli(&["XRANGE", &format!("tessera:audit:{INSTANCE}"), "-", "+", "COUNT", "3"]);
    let third = ids
        .lines()
        .filter(|l| l.contains('-') && l.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .nth(2)
        .unwrap_or_else(|| panic!("no third entry id in {ids}"))
        .trim()
        .to_owned();
    assert_eq!(
        redis
            .cli(&["XDEL", &format!("tessera:audit:{INSTANCE}"), &third])
            .trim(),
        "1"
    );
    let out = verify_stream(&broker, &redis);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["intact"], false);
    assert_eq!(report["line"], 3, "{report}");
    assert_eq!(report["records"], 2, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_file_failing_the_stream_alone_records_under_require_any() {
    let redis = RedisServer::start();
    let urls = format!("[\"{}\"]", redis.url());
    let broker = Broker::start_with(&env(&urls, &[("TESSERA_AUDIT__FILE", "/dev/full")]));
    let before = stream_len(&redis);
    mint_one(&broker, "file-full").await;
    assert!(
        stream_len(&redis) >= before + 2,
        "task start and mint are in the stream"
    );
    let out = verify_stream(&broker, &redis);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_require_all_a_failing_file_fails_the_operation() {
    let redis = RedisServer::start();
    let urls = format!("[\"{}\"]", redis.url());
    let broker = Broker::start_with(&env(
        &urls,
        &[("TESSERA_AUDIT__FILE", "/dev/full"), ("TESSERA_AUDIT__REQUIRE", "all")],
    ));
    let status = code(
        broker
            .orchestrator()
            .await
            .start_task(start_request(
                "all-or-nothing",
                &["researcher"],
                &["crm.contacts.read"],
                600,
            ))
            .await,
    );
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("audit"), "{status:?}");
}
