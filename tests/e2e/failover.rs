//! No acknowledged revocation is lost when Redis fails over: with
//! `store.min_replicas`, every revocation waits for replicas (`WAIT`) before
//! it is acknowledged, and one no replica confirmed is UNAVAILABLE. These
//! tests always run on real Redis (a replicated pair, and a Sentinel
//! deployment), whatever `TESSERA_TEST_STORE` says.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tessera_client::{AdminClient, AgentClient};
use tessera_e2e::redis::{RedisSentinels, RedisServer};
use tessera_e2e::*;
use tonic::Code;

/// A broker on the standalone `primary`, confirming revocations with one replica.
fn broker_on(primary: &RedisServer) -> Broker {
    let urls = format!("[\"{}\"]", primary.url());
    Broker::start_with(&[
        ("TESSERA_STORE__BACKEND", "redis"),
        ("TESSERA_STORE__URLS", &urls),
        ("TESSERA_STORE__MIN_REPLICAS", "1"),
        // Generous: the machine is shared, and a WAIT that times out while
        // the replica is up would fail the acknowledged revocation below.
        ("TESSERA_STORE__REPLICA_TIMEOUT", "2s"),
    ])
}

async fn revoke(admin: &mut AdminClient, grant_id: &str) -> Result<(), tonic::Status> {
    admin
        .revoke_grant(pb::RevokeGrantRequest {
            grant_id: grant_id.into(),
            reason: "failover test".into(),
        })
        .await
        .map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_no_replica_confirmed_is_unavailable_until_one_does() {
    let primary = RedisServer::builder()
        .appendonly(false)
        .extra_args(&["--repl-diskless-sync-delay", "0"])
        .start();
    let replica = primary.start_replica();
    let broker = broker_on(&primary);
    broker
        .start_task(start_request("wait", &["researcher"], &["crm.contacts.read"], 600))
        .await;
    let mut agent = broker.agent("researcher").await;
    let first = issue(&mut agent, token_request("wait", &["crm.contacts.read"], None)).await;
    let second = issue(&mut agent, token_request("wait", &["crm.contacts.read"], None)).await;
    let mut admin = broker.admin("alice").await;
    let mut orchestrator = broker.orchestrator().await;

    // With the replica answering, a revocation is confirmed and acknowledged.
    revoke(&mut admin, &first.grant_id).await.unwrap();

    // A stopped replica confirms nothing: the revocation (applied on the
    // primary, which a failover could lose) is not acknowledged.
    replica.pause();
    let refused = code(revoke(&mut admin, &second.grant_id).await);
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    let refused = code(
        orchestrator
            .complete_task(pb::CompleteTaskRequest {
                task_id: "wait".into(),
                reason: "done".into(),
            })
            .await,
    );
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    replica.resume();

    // The caller retries (the operations are idempotent) and is acknowledged
    // once the replica confirms.
    eventually(
        "the retried revocation to be acknowledged",
        Duration::from_secs(20),
        async || revoke(&mut admin, &second.grant_id).await.is_ok(),
    )
    .await;
    eventually(
        "the retried completion to be acknowledged",
        Duration::from_secs(20),
        async || {
            orchestrator
                .complete_task(pb::CompleteTaskRequest {
                    task_id: "wait".into(),
                    reason: "done".into(),
                })
                .await
                .is_ok()
        },
    )
    .await;
    let mut verifier = broker.verifier("api-gateway").await;
    for t in [&first, &second] {
        assert!(!introspect(&mut verifier, &t.access_token).await.unwrap());
    }
}

/// What the revocation workers saw.
#[derive(Default)]
struct History {
    /// Tokens whose revocation the broker acknowledged, with when.
    acknowledged: Vec<(pb::IssuedToken, Instant)>,
    /// When an operation was answered UNAVAILABLE.
    unavailable: Vec<Instant>,
    /// Tokens minted whose grant was gone when revoked (a mint is not
    /// confirmed by replicas: a failover may lose it, which fails closed).
    lost_mints: usize,
}

/// Workers that mint a token and revoke it, over and over, until `stop`;
/// UNAVAILABLE answers are retried.
async fn worker(
    mut agent: AgentClient,
    mut admin: AdminClient,
    history: Arc<Mutex<History>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: &'static str,
    deadline: Instant,
) {
    use std::sync::atomic::Ordering;
    while !stop.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the failover test ran out of time");
        let token = match agent
            .request_token(token_request(task, &["crm.contacts.read"], None))
            .await
        {
            Ok(r) => match r.into_inner().outcome {
                Some(pb::request_token_response::Outcome::Token(t)) => t,
                other => panic!("expected a token, got {other:?}"),
            },
            Err(s) if s.code() == Code::Unavailable => {
                history.lock().unwrap().unavailable.push(Instant::now());
                // Pace retries while Redis is away (the broker answers at once).
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            Err(s) => panic!("mint failed: {s:?}"),
        };
        loop {
            assert!(Instant::now() < deadline, "the failover test ran out of time");
            match revoke(&mut admin, &token.grant_id).await {
                Ok(()) => {
                    history.lock().unwrap().acknowledged.push((token, Instant::now()));
                    break;
                }
                Err(s) if s.code() == Code::Unavailable => {
                    history.lock().unwrap().unavailable.push(Instant::now());
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(s) if s.code() == Code::NotFound => {
                    history.lock().unwrap().lost_mints += 1;
                    break;
                }
                Err(s) => panic!("revocation failed: {s:?}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_revocation_is_lost_when_sentinel_promotes_the_replica() {
    const WORKERS: usize = 3;
    // Revocations acknowledged before the kill, and after the old primary rejoined.
    const BEFORE: usize = 30;
    const AFTER: usize = 30;
    let deadline = Instant::now() + Duration::from_secs(120);
    let sentinels = RedisSentinels::start();
    let urls = format!(
        "[{}]",
        sentinels
            .sentinel_urls()
            .iter()
            .map(|u| format!("\"{u}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let env = [
        ("TESSERA_STORE__BACKEND", "redis"),
        ("TESSERA_STORE__MODE", "sentinel"),
        ("TESSERA_STORE__SENTINEL_MASTER", sentinels.master_name()),
        ("TESSERA_STORE__URLS", urls.as_str()),
        ("TESSERA_STORE__TIMEOUT", "500ms"),
        ("TESSERA_STORE__MIN_REPLICAS", "1"),
        ("TESSERA_STORE__REPLICA_TIMEOUT", "250ms"),
    ];
    let broker = Broker::start_with(&env);
    broker
        .start_task(start_request("failover", &["researcher"], &["crm.contacts.read"], 600))
        .await;

    let history = Arc::new(Mutex::new(History::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        workers.push(tokio::spawn(worker(
            broker.agent("researcher").await,
            broker.admin("alice").await,
            history.clone(),
            stop.clone(),
            "failover",
            deadline,
        )));
    }
    let acknowledged = || history.lock().unwrap().acknowledged.len();
    eventually("revocations before the kill", Duration::from_secs(30), async || {
        acknowledged() >= BEFORE
    })
    .await;

    // Kill the primary mid-run, let the sentinels promote the replica, then
    // bring the old primary back (as a supervisor would): the sentinels make
    // it a replica of the new primary, which is what lets `WAIT 1` succeed
    // again. The harness blocks, so it runs on a thread of its own.
    let (killed_at, promoted_at, rejoined_at, sentinels) = tokio::task::spawn_blocking(move || {
        let mut sentinels = sentinels;
        let killed_at = Instant::now();
        let old = sentinels.kill_primary();
        let new = sentinels.wait_for_failover(old);
        assert_ne!(old, new);
        let promoted_at = Instant::now();
        sentinels.restart_old_primary();
        (killed_at, promoted_at, Instant::now(), sentinels)
    })
    .await
    .unwrap();
    let at_kill = history
        .lock()
        .unwrap()
        .acknowledged
        .iter()
        .filter(|(_, at)| *at < killed_at)
        .count();
    eventually(
        "revocations after the old primary rejoined",
        Duration::from_secs(60),
        async || {
            history
                .lock()
                .unwrap()
                .acknowledged
                .iter()
                .filter(|(_, at)| *at > rejoined_at)
                .count()
                >= AFTER
        },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }

    let history = Arc::try_unwrap(history).ok().unwrap().into_inner().unwrap();
    // The broker was unavailable from its first UNAVAILABLE answer after the
    // kill until the first revocation acknowledged after that.
    let refused_during = history.unavailable.iter().filter(|at| **at > killed_at).count();
    let first_refusal = history
        .unavailable
        .iter()
        .copied()
        .filter(|at| *at > killed_at)
        .min()
        .expect("the failover was not noticed");
    let resumed = history
        .acknowledged
        .iter()
        .map(|(_, at)| *at)
        .filter(|at| *at > first_refusal)
        .min()
        .expect("revocations resumed");
    eprintln!(
        "failover: {} revocations acknowledged ({at_kill} before the kill), {refused_during} UNAVAILABLE answers, \
         {} mints lost; sentinels promoted the replica {:?} after the kill, the old primary rejoined as a replica \
         {:?} after that; revocations were unavailable for {:?} (first UNAVAILABLE to the next acknowledgement, \
         {:?} after the kill)",
        history.acknowledged.len(),
        history.lost_mints,
        promoted_at - killed_at,
        rejoined_at - promoted_at,
        resumed - first_refusal,
        resumed - killed_at,
    );
    assert!(at_kill >= BEFORE, "the kill came mid-run");

    // The history: every acknowledged revocation is in force on the broker
    // that followed the promotion (no restart), and on a broker that starts
    // now and knows only what Redis holds.
    let fresh = broker.replica();
    let mut lost = Vec::new();
    for b in [&broker, &fresh] {
        let mut verifier = b.verifier("api-gateway").await;
        for (t, _) in &history.acknowledged {
            if introspect(&mut verifier, &t.access_token).await.unwrap() {
                lost.push(t.grant_id.clone());
            }
        }
        // Introspection can still say "active": a token minted now is.
        let mut agent = b.agent("researcher").await;
        let live = issue(&mut agent, token_request("failover", &["crm.contacts.read"], None)).await;
        assert!(introspect(&mut verifier, &live.access_token).await.unwrap());
    }
    eprintln!("acknowledged revocations lost: {}", lost.len());
    assert!(
        lost.is_empty(),
        "acknowledged revocations lost in the failover: {lost:?}"
    );
    drop(fresh);
    drop(broker);
    drop(sentinels);
}
