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

/// One RESP value's length at the start of `buf`, if it is all there.
fn resp_len(buf: &[u8]) -> Option<usize> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
    let head = std::str::from_utf8(buf.get(1..line_end)?).ok()?;
    let after = line_end + 2;
    match buf.first()? {
        b'+' | b'-' | b':' | b'_' | b',' | b'#' => Some(after),
        b'$' => {
            let n: i64 = head.parse().ok()?;
            if n < 0 {
                return Some(after);
            }
            let end = after + usize::try_from(n).ok()? + 2;
            (buf.len() >= end).then_some(end)
        }
        b'*' => {
            let n: i64 = head.parse().ok()?;
            let mut at = after;
            for _ in 0..n.max(0) {
                at += resp_len(buf.get(at..)?)?;
            }
            Some(at)
        }
        _ => None,
    }
}

/// How many complete RESP values `buf` holds.
fn resp_count(buf: &[u8]) -> usize {
    let mut at = 0;
    let mut n = 0;
    while let Some(len) = buf.get(at..).and_then(resp_len) {
        at += len;
        n += 1;
    }
    n
}

/// A TCP proxy in front of Redis that stands for a failover the client does
/// not see as a disconnect: once armed, right after it relayed a successful
/// answer to an `EVALSHA`, it sends everything that follows on that client
/// connection to another primary. Requests and answers are relayed in
/// lockstep (a request, or a pipeline sent in one write, then all its answers).
async fn failover_proxy(
    first: u16,
    second: u16,
    armed: Arc<std::sync::atomic::AtomicBool>,
) -> (u16, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let armed = armed.clone();
            tokio::spawn(async move {
                let Ok(mut upstream) = tokio::net::TcpStream::connect(("127.0.0.1", first)).await else {
                    return;
                };
                let mut switched = false;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let mut request = Vec::new();
                    while request.is_empty() || resp_prefix(&request) != request.len() {
                        let Ok(n) = client.read(&mut buf).await else { return };
                        if n == 0 {
                            return;
                        }
                        request.extend_from_slice(&buf[..n]);
                    }
                    let wanted = resp_count(&request);
                    if upstream.write_all(&request).await.is_err() {
                        return;
                    }
                    let mut answer = Vec::new();
                    while resp_count(&answer) < wanted {
                        let Ok(n) = upstream.read(&mut buf).await else { return };
                        if n == 0 {
                            return;
                        }
                        answer.extend_from_slice(&buf[..n]);
                    }
                    if client.write_all(&answer).await.is_err() {
                        return;
                    }
                    let wrote = request.windows(7).any(|w| w.eq_ignore_ascii_case(b"EVALSHA"));
                    if !switched
                        && wrote
                        && !answer.starts_with(b"-")
                        && armed.load(std::sync::atomic::Ordering::SeqCst)
                    {
                        switched = true;
                        let Ok(next) = tokio::net::TcpStream::connect(("127.0.0.1", second)).await else {
                            return;
                        };
                        upstream = next;
                    }
                }
            });
        }
    });
    (port, task)
}

/// The length of the complete RESP values at the start of `buf`.
fn resp_prefix(buf: &[u8]) -> usize {
    let mut at = 0;
    while let Some(len) = buf.get(at..).and_then(resp_len) {
        at += len;
    }
    at
}

/// A durable write and its `WAIT` must go to the same primary. Redis counts
/// a `WAIT` against the writes of the connection it arrives on, so if the
/// connection is re-established between the two (say to a newly promoted
/// primary that never got the write) the `WAIT` confirms what no replica of
/// the primary that took the write holds, and a failover loses an
/// acknowledged revocation. The proxy below moves the store's connection to
/// another primary (whose replica is healthy) right after the write: the
/// write must still be refused as unconfirmed, since its own primary's only
/// replica is stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_write_and_its_wait_reach_the_same_primary() {
    use tessera_store::GrantStore as _;
    let primary = RedisServer::builder()
        .appendonly(false)
        .extra_args(&["--repl-diskless-sync-delay", "0"])
        .start();
    let replica = primary.start_replica();
    let other = RedisServer::builder()
        .appendonly(false)
        .extra_args(&["--repl-diskless-sync-delay", "0"])
        .start();
    let _other_replica = other.start_replica();
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (port, proxy) = failover_proxy(primary.port(), other.port(), armed.clone()).await;

    let mut config = tessera_store::RedisConfig::new(tessera_store::RedisDeployment::Standalone {
        url: format!("redis://127.0.0.1:{port}"),
    });
    config.min_replicas = 1;
    config.replica_timeout = Duration::from_millis(300);
    config.timeout = Duration::from_secs(5);
    let store = tessera_store::RedisStore::connect(config).await.unwrap();
    let subject = tessera_core::identity::SpiffeId::parse("spiffe://example.org/agent/a").unwrap();

    // The primary's only replica stops: nothing written there is confirmed.
    replica.pause();
    armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let answer = store
        .disable_subject(
            &subject,
            "failover test",
            tessera_core::clock::Clock::now(&tessera_core::clock::SystemClock),
        )
        .await;
    replica.resume();
    proxy.abort();
    assert!(
        answer.is_err(),
        "a disable was acknowledged that only a primary whose replica was stopped took: {answer:?}"
    );
    assert!(
        matches!(answer, Err(tessera_store::StoreError::Unavailable(_))),
        "{answer:?}"
    );
    // It did reach the first primary (and only it).
    assert!(
        primary
            .cli(&["HKEYS", "tessera:disabled"])
            .contains("spiffe://example.org/agent/a")
    );
    assert!(
        !other
            .cli(&["HKEYS", "tessera:disabled"])
            .contains("spiffe://example.org/agent/a")
    );
}
