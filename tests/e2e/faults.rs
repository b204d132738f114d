//! Faults in flight (TEST-MATRIX R3, R8, R10): Redis killed, restarted,
//! black-holed, slowed, cut in one direction or reset *while* revocations and
//! mints run, and the broker itself SIGKILLed mid-mint. The network faults
//! go through the fault proxy (`tests/support/proxy.rs`) between `tesserad`
//! and `redis-server`. These tests always run on real Redis, whatever
//! `TESSERA_TEST_STORE` says.
//!
//! Every call carries a client deadline (`grpc-timeout`) well above the
//! store timeout: a broker that hangs shows up as the client's own timeout
//! (`CANCELLED`), which no assertion below accepts.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

use std::collections::{HashSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tessera_e2e::proxy::{Fault, FaultProxy};
use tessera_e2e::redis::RedisServer;
use tessera_e2e::*;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

/// The broker's store timeout in these tests: short, so a fault costs little.
const STORE_TIMEOUT: &str = "300ms";
/// Every call's client deadline: far above what the broker may take
/// (store timeout × its retry rounds), so only a hang reaches it.
const DEADLINE: Duration = Duration::from_secs(8);

fn addr_of(redis: &RedisServer) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, redis.port()))
}

/// A broker on Redis at `url` (a proxy's or Redis's own).
fn broker_on(url: &str) -> Broker {
    let urls = format!("[\"{url}\"]");
    Broker::start_with(&[
        ("TESSERA_STORE__BACKEND", "redis"),
        ("TESSERA_STORE__URLS", &urls),
        ("TESSERA_STORE__TIMEOUT", STORE_TIMEOUT),
    ])
}

fn with_deadline<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.set_timeout(DEADLINE);
    req
}

async fn health(channel: tessera_client::Channel) -> Option<ServingStatus> {
    let mut h = tonic_health::pb::health_client::HealthClient::new(channel);
    let r = h
        .check(with_deadline(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        }))
        .await
        .ok()?;
    Some(r.into_inner().status())
}

async fn wait_health(channel: &tessera_client::Channel, want: ServingStatus) {
    eventually(&format!("health {want:?}"), Duration::from_secs(20), async || {
        health(channel.clone()).await == Some(want)
    })
    .await;
}

/// Whether the broker calls `token` live; panics on an error.
async fn live(verifier: &mut tessera_client::VerifierClient, token: &str) -> bool {
    verifier
        .introspect(with_deadline(pb::IntrospectRequest { token: token.into() }))
        .await
        .unwrap()
        .into_inner()
        .active
}

/// What a revocation burst works through: one grant, or one task (whose
/// completion revokes every grant in it).
#[derive(Debug, Clone)]
enum Revocation {
    Grant { id: String, token: String },
    Task { id: String, tokens: Vec<String> },
}

impl Revocation {
    fn tokens(&self) -> Vec<&str> {
        match self {
            Self::Grant { token, .. } => vec![token.as_str()],
            Self::Task { tokens, .. } => tokens.iter().map(String::as_str).collect(),
        }
    }
}

/// The burst's shared state: what is left to revoke, what was acknowledged,
/// and every refusal's code.
#[derive(Default)]
struct Burst {
    queue: Mutex<VecDeque<Revocation>>,
    acked: Mutex<Vec<Revocation>>,
    refused: Mutex<Vec<(Code, String)>>,
    acks: AtomicUsize,
    refusals: AtomicUsize,
    /// Callers start no call while `acks` is at this cap, so a healthy
    /// phase acknowledges a few revocations, not the whole queue, and every
    /// fault meets calls.
    ack_cap: AtomicUsize,
}

/// One caller of the burst: revokes what is queued; a refused revocation
/// goes back to the end of the queue after a short backoff (a caller that
/// retries, as the SDK and CLI do), until the queue is empty.
async fn revoker(
    burst: Arc<Burst>,
    broker_admin: tessera_client::AdminClient,
    orchestrator: tessera_client::OrchestratorClient,
) {
    let (mut admin, mut orch) = (broker_admin, orchestrator);
    loop {
        while burst.acks.load(Ordering::SeqCst) >= burst.ack_cap.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let Some(item) = burst.queue.lock().unwrap().pop_front() else {
            return;
        };
        let result = match &item {
            Revocation::Grant { id, .. } => admin
                .revoke_grant(with_deadline(pb::RevokeGrantRequest {
                    grant_id: id.clone(),
                    reason: "fault burst".into(),
                }))
                .await
                .map(drop),
            Revocation::Task { id, .. } => orch
                .complete_task(with_deadline(pb::CompleteTaskRequest {
                    task_id: id.clone(),
                    reason: "fault burst".into(),
                }))
                .await
                .map(drop),
        };
        match result {
            Ok(()) => {
                burst.acked.lock().unwrap().push(item);
                burst.acks.fetch_add(1, Ordering::SeqCst);
            }
            Err(status) => {
                burst
                    .refused
                    .lock()
                    .unwrap()
                    .push((status.code(), status.message().to_owned()));
                burst.queue.lock().unwrap().push_back(item);
                burst.refusals.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn until_count(what: &str, counter: &AtomicUsize, at_least: usize) {
    eventually(what, Duration::from_secs(30), async || {
        counter.load(Ordering::SeqCst) >= at_least
    })
    .await;
}

/// R3: Redis is killed and restarted, black-holed and reset while three
/// callers revoke grants and complete tasks. Every revocation is either
/// acknowledged — and then in force, also after Redis is SIGKILLed and
/// restarted from its AOF (`appendfsync always`) — or refused with
/// UNAVAILABLE within its deadline; the refused ones, retried, end
/// acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_in_flight_survive_redis_kills_blackholes_and_resets() {
    let mut redis = RedisServer::start(); // AOF, appendfsync always
    let proxy = FaultProxy::start(addr_of(&redis));
    let broker = broker_on(&proxy.redis_url());
    let health_channel = broker.channel("api-gateway").await;
    let mut verifier = broker.verifier("api-gateway").await;

    // 36 grants in one task, and 8 tasks of 2 grants each.
    let mut items = Vec::new();
    broker
        .start_task(start_request("burst", &["researcher"], &["crm.contacts.read"], 600))
        .await;
    let mut agent = broker.agent("researcher").await;
    for _ in 0..36 {
        let t = issue(&mut agent, token_request("burst", &["crm.contacts.read"], None)).await;
        items.push(Revocation::Grant {
            id: t.grant_id,
            token: t.access_token,
        });
    }
    for i in 0..8 {
        let id = format!("burst-task-{i}");
        broker
            .start_task(start_request(&id, &["researcher"], &["crm.contacts.read"], 600))
            .await;
        let mut tokens = Vec::new();
        for _ in 0..2 {
            tokens.push(
                issue(&mut agent, token_request(&id, &["crm.contacts.read"], None))
                    .await
                    .access_token,
            );
        }
        items.push(Revocation::Task { id, tokens });
    }
    // Tasks interleaved with grants, so every phase sees both.
    items.sort_by_key(|i| match i {
        Revocation::Grant { id, .. } => id.clone(),
        Revocation::Task { id, .. } => id.clone(),
    });
    let total = items.len();
    let burst = Arc::new(Burst {
        queue: Mutex::new(items.into()),
        ack_cap: AtomicUsize::new(4),
        ..Burst::default()
    });
    let cap = |n: usize| burst.ack_cap.store(n, Ordering::SeqCst);
    const LAG: Duration = Duration::from_millis(40);
    proxy.set(Fault::Latency(LAG));
    let mut callers = Vec::new();
    for _ in 0..3 {
        callers.push(tokio::spawn(revoker(
            burst.clone(),
            broker.admin("alice").await,
            broker.orchestrator().await,
        )));
    }

    // Each phase raises the cap, so the callers start calls, and then sets
    // the fault: with 40 ms each way to Redis every call takes longer than
    // that gap, so the fault meets calls in flight. A healthy phase
    // acknowledges a few revocations, not the whole queue.
    until_count("acks before the kill", &burst.acks, 4).await;
    cap(9);
    tokio::task::block_in_place(|| redis.kill());
    until_count("refusals while Redis is dead", &burst.refusals, 3).await;
    tokio::task::block_in_place(|| redis.restart());
    until_count("acks after the restart", &burst.acks, 9).await;
    let refusals = burst.refusals.load(Ordering::SeqCst);
    cap(14);
    proxy.set(Fault::Blackhole);
    until_count("refusals in the black hole", &burst.refusals, refusals + 3).await;
    proxy.set(Fault::Latency(LAG));
    until_count("acks after the black hole", &burst.acks, 14).await;
    let refusals = burst.refusals.load(Ordering::SeqCst);
    cap(19);
    proxy.set(Fault::Reset);
    until_count("refusals while resetting", &burst.refusals, refusals + 3).await;
    proxy.set(Fault::Pass);
    cap(usize::MAX);

    for caller in callers {
        tokio::time::timeout(Duration::from_secs(60), caller)
            .await
            .expect("the burst drains once Redis is back")
            .unwrap();
    }
    let refused = burst.refused.lock().unwrap().clone();
    let acked = burst.acked.lock().unwrap().clone();
    eprintln!(
        "R3: {total} revocations, {} refusals on the way, {} acknowledged",
        refused.len(),
        acked.len()
    );
    // Refused means UNAVAILABLE, answered by the broker: never a hang (the
    // client's deadline, CANCELLED), never INTERNAL or UNKNOWN.
    assert!(refused.iter().all(|(c, _)| *c == Code::Unavailable), "{refused:?}");
    assert!(refused.len() >= 9, "every fault refused something: {refused:?}");
    assert_eq!(acked.len(), total, "every revocation ends acknowledged");

    // Acknowledged means in force now, and after a SIGKILL of Redis.
    wait_health(&health_channel, ServingStatus::Serving).await;
    for item in &acked {
        for token in item.tokens() {
            assert!(!live(&mut verifier, token).await, "acknowledged {item:?} but live");
        }
    }
    tokio::task::block_in_place(|| redis.restart());
    wait_health(&health_channel, ServingStatus::Serving).await;
    for item in &acked {
        for token in item.tokens() {
            let active = loop {
                // The first calls after the restart may still meet the old connection.
                match verifier
                    .introspect(with_deadline(pb::IntrospectRequest { token: token.into() }))
                    .await
                {
                    Ok(r) => break r.into_inner().active,
                    Err(s) => assert_eq!(s.code(), Code::Unavailable, "{s:?}"),
                }
            };
            assert!(!active, "acknowledged {item:?} but live after Redis restarted");
        }
    }
}

/// The value of an unlabelled metric on the broker's `/metrics`.
fn metric(broker: &Broker, name: &str) -> f64 {
    let (status, body) = broker.http_get("/metrics");
    assert_eq!(status, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// R8: a slow, silent, half-open or resetting network to Redis. Every RPC
/// the broker serves from Redis is answered UNAVAILABLE or DEADLINE_EXCEEDED
/// within its deadline; health goes NOT_SERVING and back to SERVING; once
/// healed, the broker holds no more connections to Redis and no more file
/// descriptors than before the faults. Introspect reads the store on every
/// call here (`max_feed_lag = "0s"`): within its bound the feed follower may
/// rightly answer a live token active from memory during a fault
/// (`introspection_follower.rs` tests that it never does past the bound).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_silent_or_resetting_redis_fails_every_rpc_in_time_and_leaks_nothing() {
    let redis = RedisServer::builder().appendonly(false).start();
    let proxy = FaultProxy::start(addr_of(&redis));
    let urls = format!("[\"{}\"]", proxy.redis_url());
    let broker = Broker::start_with(&[
        ("TESSERA_STORE__BACKEND", "redis"),
        ("TESSERA_STORE__URLS", &urls),
        ("TESSERA_STORE__TIMEOUT", STORE_TIMEOUT),
        ("TESSERA_INTROSPECTION__MAX_FEED_LAG", "0s"),
    ]);
    let health_channel = broker.channel("api-gateway").await;
    let mut verifier = broker.verifier("api-gateway").await;
    let mut agent = broker.agent("researcher").await;
    let mut admin = broker.admin("alice").await;
    let mut orch = broker.orchestrator().await;
    broker
        .start_task(start_request("slow", &["researcher"], &["crm.contacts.read"], 600))
        .await;
    let token = issue(&mut agent, token_request("slow", &["crm.contacts.read"], None)).await;
    // Revoked under the faults: a half-open network may apply a revocation
    // whose answer is lost, so its final state is not asserted.
    let victim = issue(&mut agent, token_request("slow", &["crm.contacts.read"], None)).await;
    assert!(live(&mut verifier, &token.access_token).await);

    let fds_before = metric(&broker, "process_open_fds");
    let redis_conns_before = proxy.open();
    let mut answered = 0;
    for fault in [
        Fault::Latency(Duration::from_millis(1500)),
        Fault::Blackhole,
        Fault::CutToClient,
        Fault::Reset,
    ] {
        proxy.set(fault.clone());
        for round in 0..3 {
            let codes = [
                agent
                    .request_token(with_deadline(token_request("slow", &["crm.contacts.read"], None)))
                    .await
                    .map(drop),
                verifier
                    .introspect(with_deadline(pb::IntrospectRequest {
                        token: token.access_token.clone(),
                    }))
                    .await
                    .map(drop),
                orch.start_task(with_deadline(start_request(
                    &format!("slow-{answered}-{round}"),
                    &["researcher"],
                    &["crm.contacts.read"],
                    600,
                )))
                .await
                .map(drop),
                admin
                    .revoke_grant(with_deadline(pb::RevokeGrantRequest {
                        grant_id: victim.grant_id.clone(),
                        reason: "slow".into(),
                    }))
                    .await
                    .map(drop),
            ]
            .map(|r| r.map_err(|s| s.code()));
            for (call, result) in ["mint", "introspect", "start task", "revoke"].iter().zip(codes) {
                assert!(
                    matches!(result, Err(Code::Unavailable | Code::DeadlineExceeded)),
                    "{call} under {fault:?}: {result:?}"
                );
                answered += 1;
            }
        }
        wait_health(&health_channel, ServingStatus::NotServing).await;
        proxy.set(Fault::Pass);
        wait_health(&health_channel, ServingStatus::Serving).await;
        eventually(
            &format!("mints resume after {fault:?}"),
            Duration::from_secs(20),
            async || {
                agent
                    .request_token(with_deadline(token_request("slow", &["crm.contacts.read"], None)))
                    .await
                    .is_ok()
            },
        )
        .await;
    }
    assert!(live(&mut verifier, &token.access_token).await);
    // R1: every mint the store failed left a record of its refusal.
    let refused_mints = std::fs::read_to_string(&broker.audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["event"] == "token_denied" && r["task_id"] == "slow")
        .count();
    assert!(refused_mints >= 12, "{refused_mints} refused mints audited, 12 refused");

    // Nothing left behind: the connections the faults stranded are closed,
    // and the broker's descriptors are back where they were.
    eventually(
        "the stranded Redis connections closed",
        Duration::from_secs(20),
        async || proxy.open() <= redis_conns_before,
    )
    .await;
    eventually("the broker's descriptors back", Duration::from_secs(20), async || {
        metric(&broker, "process_open_fds") <= fds_before
    })
    .await;
    eprintln!(
        "R8: {answered} RPCs answered under faults; Redis connections {redis_conns_before} before, {} after ({} accepted in all); fds {fds_before} before, {} after",
        proxy.open(),
        proxy.accepted(),
        metric(&broker, "process_open_fds"),
    );
}

/// R10: the broker SIGKILLed during a burst of mints, three times. Every
/// token a client received has its grant in Redis, live, and its issuance
/// in the audit trail; the broker restarts on the same audit file each
/// time and the trail verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_mid_mint_never_hands_out_an_unrecorded_token() {
    let redis = RedisServer::start();
    let mut broker = broker_on(&redis.url());
    broker
        .start_task(start_request("chaos", &["researcher"], &["crm.contacts.read"], 600))
        .await;
    let received: Arc<Mutex<Vec<pb::IssuedToken>>> = Arc::default();
    let mut refused: Vec<Code> = Vec::new();
    for round in 0..3 {
        let count = Arc::new(AtomicUsize::new(0));
        let mut minters = Vec::new();
        for _ in 0..3 {
            let mut agent = broker.agent("researcher").await;
            let (received, count) = (received.clone(), count.clone());
            minters.push(tokio::spawn(async move {
                let mut codes = Vec::new();
                // Bounded: ends at the first failure (the kill) or after 200 mints.
                for _ in 0..200 {
                    match agent
                        .request_token(with_deadline(token_request("chaos", &["crm.contacts.read"], None)))
                        .await
                    {
                        Ok(r) => match r.into_inner().outcome {
                            Some(pb::request_token_response::Outcome::Token(t)) => {
                                received.lock().unwrap().push(t);
                                count.fetch_add(1, Ordering::SeqCst);
                            }
                            other => panic!("expected a token, got {other:?}"),
                        },
                        Err(s) => {
                            codes.push(s.code());
                            break;
                        }
                    }
                }
                codes
            }));
        }
        until_count(&format!("mints in round {round}"), &count, 5 + round * 3).await;
        tokio::task::block_in_place(|| broker.kill());
        for m in minters {
            refused.extend(m.await.unwrap());
        }
        tokio::task::block_in_place(|| broker.restart());
    }
    // A killed connection is a transport error: UNAVAILABLE, or UNKNOWN for
    // a stream cut mid-response. Never a token without its record.
    assert!(
        refused
            .iter()
            .all(|c| matches!(c, Code::Unavailable | Code::Unknown | Code::Cancelled)),
        "{refused:?}"
    );
    let received = received.lock().unwrap().clone();
    let audit = std::fs::read_to_string(&broker.audit).unwrap();
    let mut verifier = broker.verifier("api-gateway").await;
    let ids: HashSet<&str> = received.iter().map(|t| t.grant_id.as_str()).collect();
    assert_eq!(ids.len(), received.len(), "grant ids are unique");
    for t in &received {
        let key = format!("tessera:{{{}}}:G", &t.grant_id[..8]);
        assert_eq!(
            redis.cli(&["HEXISTS", &key, &t.grant_id]),
            "1",
            "grant {} not in Redis",
            t.grant_id
        );
        assert!(
            live(&mut verifier, &t.access_token).await,
            "grant {} not live",
            t.grant_id
        );
        assert!(
            audit.contains(&format!("\"grant_id\":\"{}\"", t.grant_id)),
            "grant {} not in the audit trail",
            t.grant_id
        );
    }
    let out = broker.tessera(&["audit", "verify", broker.audit.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "audit verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "R10: 3 kills, {} tokens received, {} calls cut",
        received.len(),
        refused.len()
    );
}

/// The `_count` of the request histogram for `method` (`Service/Method`)
/// answered with `code`, 0 if none yet.
fn requests(broker: &Broker, method: &str, code: &str) -> u64 {
    let (_, body) = broker.http_get("/metrics");
    let labels = format!("method=\"tessera.v1.{method}\"");
    let code = format!("grpc_code=\"{code}\"");
    body.lines()
        .filter(|l| {
            l.starts_with("tessera_request_duration_seconds_count{") && l.contains(&labels) && l.contains(&code)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// R3, the caller's side: a revocation refused with UNAVAILABLE while Redis
/// is unreachable is asked again with backoff by the CLI (`grant revoke`,
/// which says so on stderr) and by the SDK (`OrchestratorClient::complete`),
/// and ends acknowledged and in force once Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_and_the_sdk_retry_a_revocation_refused_while_redis_is_away() {
    use std::io::BufRead as _;

    let redis = RedisServer::start();
    let proxy = FaultProxy::start(addr_of(&redis));
    let broker = broker_on(&proxy.redis_url());
    let mut verifier = broker.verifier("api-gateway").await;
    let mut agent = broker.agent("researcher").await;
    for task in ["cli", "sdk"] {
        broker
            .start_task(start_request(task, &["researcher"], &["crm.contacts.read"], 600))
            .await;
    }
    let by_cli = issue(&mut agent, token_request("cli", &["crm.contacts.read"], None)).await;
    let by_sdk = issue(&mut agent, token_request("sdk", &["crm.contacts.read"], None)).await;

    // The CLI: refused, retrying (stderr says so), acknowledged once healed.
    proxy.set(Fault::Reset);
    let mut cli = std::process::Command::new(bin_dir().join("tessera"))
        .arg("--dev-dir")
        .arg(broker.dir.path())
        .arg("--endpoint")
        .arg(broker.endpoint())
        .args([
            "--as",
            "alice",
            "grant",
            "revoke",
            &by_cli.grant_id,
            "--reason",
            "retry test",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(cli.stderr.take().unwrap());
    let mut first = String::new();
    tokio::task::block_in_place(|| stderr.read_line(&mut first)).unwrap();
    assert!(
        first.starts_with("UNAVAILABLE: ") && first.contains("retrying in") && first.contains("(attempt 1 of 6)"),
        "{first}"
    );
    proxy.set(Fault::Pass);
    let out = tokio::task::block_in_place(|| cli.wait_with_output()).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{first}");
    assert_eq!(stdout.trim(), format!("grant {} revoked", by_cli.grant_id));
    assert!(!live(&mut verifier, &by_cli.access_token).await);

    // The SDK: CompleteTask refused at least once, then acknowledged.
    let refused_before = requests(&broker, "OrchestratorService/CompleteTask", "UNAVAILABLE");
    proxy.set(Fault::Reset);
    let mut orchestrator = tessera_client::orchestrator::OrchestratorClient::new(broker.channel("orchestrator").await);
    let completing = tokio::spawn(async move { orchestrator.complete("sdk", "retry test").await });
    eventually(
        "the broker refuses the SDK's completion",
        Duration::from_secs(20),
        async || requests(&broker, "OrchestratorService/CompleteTask", "UNAVAILABLE") > refused_before,
    )
    .await;
    proxy.set(Fault::Pass);
    let (task, revoked) = completing.await.unwrap().unwrap();
    assert_eq!(task.task_id, "sdk");
    assert_eq!(revoked, 1);
    assert!(!live(&mut verifier, &by_sdk.access_token).await);
}
