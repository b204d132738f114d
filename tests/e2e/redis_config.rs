//! What Redis is configured to keep, through the real `tesserad` (TEST-MATRIX
//! R4, R6, R7): its durability mode read at start, exported and warned
//! about; a full `noeviction` Redis that refuses mints and still takes
//! revocations; an evicting Redis the broker refuses to start on. These
//! tests always run on real Redis, whatever `TESSERA_TEST_STORE` says.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

use std::process::{Command, Stdio};

use tessera_e2e::redis::RedisServer;
use tessera_e2e::*;
use tonic::Code;

fn broker_on_url(url: &str) -> Broker {
    let urls = format!("[\"{url}\"]");
    Broker::start_with(&[("TESSERA_STORE__BACKEND", "redis"), ("TESSERA_STORE__URLS", &urls)])
}

/// The `tessera_redis_durability` line of the broker's `/metrics`.
fn durability_metric(broker: &Broker) -> String {
    let (status, body) = broker.http_get("/metrics");
    assert_eq!(status, 200);
    body.lines()
        .find(|l| l.starts_with("tessera_redis_durability{"))
        .unwrap_or_else(|| panic!("no tessera_redis_durability in /metrics:\n{body}"))
        .to_owned()
}

/// The JSON log lines at `level` whose message contains `needle`.
fn log_lines(broker: &Broker, level: &str, needle: &str) -> Vec<serde_json::Value> {
    broker
        .logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["level"] == level && v["fields"]["message"].as_str().is_some_and(|m| m.contains(needle)))
        .collect()
}

/// R4: the broker reads `appendonly`/`appendfsync` at start, exports them,
/// and warns when a crash can lose acknowledged revocations; the bound it
/// states is the one docs/OPERATIONS.md states. Under `everysec`, a killed
/// Redis *process* still loses no acknowledged revocation (the write reached
/// the kernel before the reply); the ~1 s host-crash window cannot be
/// produced on one machine without cutting its power.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_durability_mode_is_exported_and_everysec_is_warned_about() {
    let mut redis = RedisServer::builder().appendfsync("everysec").start();
    let broker = broker_on_url(&redis.url());
    let line = durability_metric(&broker);
    assert!(
        line.contains(r#"appendonly="yes""#)
            && line.contains(r#"appendfsync="everysec""#)
            && line.contains(r#"crash_loss="1s""#)
            && line.ends_with(" 1"),
        "{line}"
    );
    let warned = log_lines(&broker, "WARN", "acknowledged revocations can be lost on a crash");
    assert_eq!(warned.len(), 1, "{}", broker.logs());
    let message = warned[0]["fields"]["message"].as_str().unwrap();
    assert!(message.contains("about the last second"), "{message}");
    let ops = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/OPERATIONS.md")).unwrap();
    assert!(
        ops.contains("tessera_redis_durability") && ops.contains("about the last second of acknowledged writes"),
        "docs/OPERATIONS.md states the everysec bound and the metric"
    );

    // A Redis process killed under everysec keeps every acknowledged revocation.
    broker
        .start_task(start_request("everysec", &["researcher"], &["crm.contacts.read"], 600))
        .await;
    let mut agent = broker.agent("researcher").await;
    let mut admin = broker.admin("alice").await;
    let mut tokens = Vec::new();
    for _ in 0..20 {
        let t = issue(&mut agent, token_request("everysec", &["crm.contacts.read"], None)).await;
        admin
            .revoke_grant(pb::RevokeGrantRequest {
                grant_id: t.grant_id.clone(),
                reason: "durability".into(),
            })
            .await
            .unwrap();
        tokens.push(t);
    }
    tokio::task::block_in_place(|| redis.restart());
    let mut verifier = broker.verifier("api-gateway").await;
    for t in &tokens {
        let active = loop {
            match introspect(&mut verifier, &t.access_token).await {
                Ok(active) => break active,
                // The first calls may meet the connection the kill cut.
                Err(s) => assert_eq!(s.code(), Code::Unavailable, "{s:?}"),
            }
        };
        assert!(
            !active,
            "revocation of {} lost by a Redis kill under everysec",
            t.grant_id
        );
    }
}

/// R4: `always` is exported without a warning; AOF off is warned about; a
/// Redis whose ACL refuses `CONFIG GET` gives `unknown`, said in the metric
/// and in a warning naming the refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_is_quiet_no_aof_warns_and_a_refused_config_get_is_unknown() {
    let always = RedisServer::start();
    let broker = broker_on_url(&always.url());
    assert!(durability_metric(&broker).contains(r#"crash_loss="none""#));
    assert!(log_lines(&broker, "WARN", "redis").is_empty(), "{}", broker.logs());
    assert_eq!(
        log_lines(&broker, "INFO", "redis durability: a crash loses nothing").len(),
        1
    );
    drop(broker);

    let no_aof = RedisServer::builder().appendonly(false).start();
    let broker = broker_on_url(&no_aof.url());
    let line = durability_metric(&broker);
    assert!(
        line.contains(r#"appendonly="no""#) && line.contains(r#"crash_loss="snapshot""#),
        "{line}"
    );
    assert_eq!(
        log_lines(&broker, "WARN", "acknowledged revocations can be lost on a crash").len(),
        1
    );
    drop(broker);

    // A broker user allowed everything but CONFIG.
    let acl = RedisServer::builder()
        .appendfsync("everysec")
        .extra_args(&["--user", "broker", "on", ">broker-pw", "~*", "&*", "+@all", "-config"])
        .start();
    let broker = broker_on_url(&format!("redis://broker:broker-pw@127.0.0.1:{}/", acl.port()));
    let line = durability_metric(&broker);
    assert!(
        line.contains(r#"appendfsync="unknown""#) && line.contains(r#"crash_loss="unknown""#),
        "{line}"
    );
    let warned = log_lines(&broker, "WARN", "redis durability unknown");
    assert_eq!(warned.len(), 1, "{}", broker.logs());
    let reason = warned[0]["fields"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("CONFIG GET appendfsync refused") && reason.contains("no permissions"),
        "{reason}"
    );
    assert!(
        !broker.logs().contains("broker-pw"),
        "the password stays out of the log"
    );
}

/// R6: a `noeviction` Redis at its `maxmemory`. Mints fail closed with
/// RESOURCE_EXHAUSTED and a message that says why; revocations and task
/// completion still succeed; reads still work; nothing was evicted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_noeviction_redis_refuses_mints_and_still_takes_revocations() {
    let redis = RedisServer::builder().appendonly(false).start();
    let broker = broker_on_url(&redis.url());
    broker
        .start_task(start_request("full", &["researcher"], &["crm.contacts.read"], 600))
        .await;
    let mut agent = broker.agent("researcher").await;
    let mut verifier = broker.verifier("api-gateway").await;
    let used: u64 = redis
        .cli(&["INFO", "memory"])
        .lines()
        .find_map(|l| l.trim().strip_prefix("used_memory:"))
        .unwrap()
        .parse()
        .unwrap();
    let limit = (used + 128 * 1024).to_string();
    assert_eq!(redis.cli(&["CONFIG", "SET", "maxmemory", &limit]), "OK");

    // Bounded: 128 KB holds a few hundred grants at most.
    let mut minted = Vec::new();
    let refusal = loop {
        assert!(
            minted.len() < 5_000,
            "Redis never filled up: {} keys, {}",
            redis.cli(&["DBSIZE"]),
            redis.cli(&["INFO", "memory"])
        );
        match agent
            .request_token(token_request("full", &["crm.contacts.read"], None))
            .await
        {
            Ok(r) => match r.into_inner().outcome {
                Some(pb::request_token_response::Outcome::Token(t)) => minted.push(t),
                other => panic!("expected a token, got {other:?}"),
            },
            Err(status) => break status,
        }
    };
    assert_eq!(refusal.code(), Code::ResourceExhausted, "{refusal:?}");
    assert!(
        refusal.message().contains("full") || refusal.message().contains("memory"),
        "{refusal:?}"
    );
    let keys_when_full = redis.cli(&["DBSIZE"]);
    // Still full: a second mint is refused the same way.
    let again = code(
        agent
            .request_token(token_request("full", &["crm.contacts.read"], None))
            .await,
    );
    assert_eq!(again.code(), Code::ResourceExhausted, "{again:?}");

    // Reads work, and every minted grant is still there (nothing evicted).
    for t in &minted {
        assert!(introspect(&mut verifier, &t.access_token).await.unwrap());
    }
    // Revocations go through at maxmemory.
    let mut admin = broker.admin("alice").await;
    let revoked = admin
        .revoke_grant(pb::RevokeGrantRequest {
            grant_id: minted[0].grant_id.clone(),
            reason: "full".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(revoked.revoked);
    assert!(!introspect(&mut verifier, &minted[0].access_token).await.unwrap());
    let done = broker
        .orchestrator()
        .await
        .complete_task(pb::CompleteTaskRequest {
            task_id: "full".into(),
            reason: "full".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.grants_revoked, minted.len() as u64 - 1);
    for t in &minted {
        assert!(!introspect(&mut verifier, &t.access_token).await.unwrap());
    }
    let keys_after: u64 = redis.cli(&["DBSIZE"]).parse().unwrap();
    assert!(keys_after >= keys_when_full.parse().unwrap(), "keys went away");
    eprintln!(
        "R6: {} mints fit in 128 KB, then RESOURCE_EXHAUSTED: {}",
        minted.len(),
        refusal.message()
    );
}

/// R7: `tesserad` refuses to start on a Redis whose `maxmemory-policy` could
/// evict keys, naming the policy and the fix, with a non-zero exit before it
/// serves a single call (the ready file, written once the ports are bound,
/// only names addresses).
#[test]
fn tesserad_refuses_to_start_on_an_evicting_redis() {
    for policy in ["allkeys-lru", "volatile-lru"] {
        let redis = RedisServer::builder()
            .appendonly(false)
            .maxmemory_policy(policy)
            .start();
        let dir = dev_init("evict");
        let ready = dir.path().join("ready.json");
        let log = dir.path().join("tesserad.log");
        let urls = format!("[\"{}\"]", redis.url());
        let child = Command::new(bin_dir().join("tesserad"))
            .arg("--config")
            .arg(dir.path().join("tesserad.toml"))
            .arg("--ready-file")
            .arg(&ready)
            .env("TESSERA_SERVER__LISTEN", "127.0.0.1:0")
            .env("TESSERA_SERVER__HTTP_LISTEN", "127.0.0.1:0")
            .env("TESSERA_OAUTH__LISTEN", "127.0.0.1:0")
            .env("TESSERA_STORE__BACKEND", "redis")
            .env("TESSERA_STORE__URLS", &urls)
            .env_remove("TESSERA_TEST_STORE")
            .env_remove("TESSERA_BIN_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        // Bounded: a broker that started anyway is killed and the test fails.
        let status = wait_exit(child, std::time::Duration::from_secs(30));
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(!status.success(), "tesserad started on {policy}: {text}");
        assert!(
            text.contains(&format!("maxmemory-policy `{policy}`"))
                && text.contains("set `maxmemory-policy noeviction`"),
            "{text}"
        );
    }
}
