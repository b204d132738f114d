//! Introspect answered from the broker's follower of the revocation feed
//! (`[introspection] max_feed_lag`, 1 s by default) and its verified-token
//! cache: a revocation made on a replica counts there at once; one made on
//! another replica counts within the bound; a cut or lagging feed between a
//! replica and Redis never yields a stale `active` past the bound (the
//! store is read then, and fails closed); a token issued before a replica
//! (re)started is answered from the store. The replica tests always run on
//! real Redis (two `tesserad` on one redis-server, the second through the
//! fault proxy), whatever `TESSERA_TEST_STORE` says.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tessera_client::VerifierClient;
use tessera_e2e::proxy::{Fault, FaultProxy};
use tessera_e2e::redis::RedisServer;
use tessera_e2e::*;
use tonic::Code;

/// Store timeout of the replica behind the proxy: short, so a fault costs little.
const STORE_TIMEOUT: &str = "300ms";
/// Every call's client deadline: only a hang reaches it.
const DEADLINE: Duration = Duration::from_secs(8);

/// `tessera_introspections_total{from="<from>"}` on `broker`'s /metrics.
fn answered(broker: &Broker, from: &str) -> u64 {
    let (status, body) = broker.http_get("/metrics");
    assert_eq!(status, 200);
    let series = format!("tessera_introspections_total{{from=\"{from}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
}

/// Introspect with a client deadline: `Ok(active)` or the status code.
async fn ask(v: &mut VerifierClient, token: &str) -> Result<bool, Code> {
    let mut req = tonic::Request::new(pb::IntrospectRequest { token: token.into() });
    req.set_timeout(DEADLINE);
    v.introspect(req)
        .await
        .map(|r| r.into_inner().active)
        .map_err(|s| s.code())
}

/// Mints for the researcher in `task` on `broker`.
async fn mint(broker: &Broker, task: &str) -> pb::IssuedToken {
    broker
        .issue_as("researcher", token_request(task, &["crm.contacts.read"], None))
        .await
}

/// Waits until `broker`'s follower is synchronised (a malformed token is
/// answered from its memory), then past that second: a token minted after
/// this is above its sync floor.
async fn synced(broker: &Broker, v: &mut VerifierClient) {
    eventually("the follower to synchronise", Duration::from_secs(15), async || {
        let before = answered(broker, "memory");
        ask(v, "e30.e30.e30").await == Ok(false) && answered(broker, "memory") > before
    })
    .await;
    wait_past_second(now_secs()).await;
}

/// Waits until `broker` answers `token` active from its follower's memory
/// (a token issued after its sync floor, with the follower fresh).
async fn wait_from_memory(broker: &Broker, v: &mut VerifierClient, token: &str) {
    let what = "an active answer from the follower's memory";
    eventually(what, Duration::from_secs(15), async || {
        let before = answered(broker, "memory");
        ask(v, token).await == Ok(true) && answered(broker, "memory") > before
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_made_on_this_replica_count_at_once() {
    let broker = Broker::start();
    let mut v = broker.verifier("api-gateway").await;
    broker
        .start_task(start_request("here", &["researcher"], &["crm.contacts.read"], 600))
        .await;
    broker
        .start_task(start_request("here-2", &["researcher"], &["crm.contacts.read"], 600))
        .await;
    synced(&broker, &mut v).await;
    let revoked = mint(&broker, "here").await;
    let released = mint(&broker, "here").await;
    let completed = mint(&broker, "here").await;
    let broken = mint(&broker, "here-2").await;
    for t in [&revoked, &released, &completed, &broken] {
        wait_from_memory(&broker, &mut v, &t.access_token).await;
        // Again: the verified-token cache answers.
        assert_eq!(ask(&mut v, &t.access_token).await, Ok(true));
    }

    broker
        .admin("alice")
        .await
        .revoke_grant(pb::RevokeGrantRequest {
            grant_id: revoked.grant_id.clone(),
            reason: "follower test".into(),
        })
        .await
        .unwrap();
    assert_eq!(ask(&mut v, &revoked.access_token).await, Ok(false), "revoked: at once");

    broker
        .agent("researcher")
        .await
        .release_token(pb::ReleaseTokenRequest {
            target: Some(pb::release_token_request::Target::GrantId(released.grant_id.clone())),
        })
        .await
        .unwrap();
    assert_eq!(
        ask(&mut v, &released.access_token).await,
        Ok(false),
        "released: at once"
    );

    broker
        .orchestrator()
        .await
        .complete_task(pb::CompleteTaskRequest {
            task_id: "here".into(),
            reason: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(
        ask(&mut v, &completed.access_token).await,
        Ok(false),
        "completed: at once"
    );

    broker
        .admin("alice")
        .await
        .revoke_all(pb::RevokeAllRequest {
            confirm: "revoke-all".into(),
            reason: "follower test".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        ask(&mut v, &broken.access_token).await,
        Ok(false),
        "break-glass: at once"
    );
    // And from memory once the follower has read them: still inactive.
    let memory = answered(&broker, "memory");
    eventually("answers from memory again", Duration::from_secs(15), async || {
        let all_inactive = ask(&mut v, &revoked.access_token).await == Ok(false)
            && ask(&mut v, &broken.access_token).await == Ok(false);
        assert!(all_inactive, "a revoked token answered active");
        answered(&broker, "memory") > memory
    })
    .await;
}

/// A on Redis directly, B through `proxy` with a short store timeout.
fn replicas(redis: &RedisServer, proxy: &FaultProxy) -> (Broker, Broker) {
    let a = Broker::start_with(&[
        ("TESSERA_STORE__BACKEND", "redis"),
        ("TESSERA_STORE__URLS", &format!("[\"{}\"]", redis.url())),
    ]);
    let b = a.replica_with(&[
        ("TESSERA_STORE__URLS", &format!("[\"{}\"]", proxy.redis_url())),
        ("TESSERA_STORE__TIMEOUT", STORE_TIMEOUT),
    ]);
    (a, b)
}

fn addr_of(redis: &RedisServer) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, redis.port()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_on_another_replica_counts_within_the_bound() {
    let redis = RedisServer::builder().appendonly(false).start();
    let proxy = FaultProxy::start(addr_of(&redis));
    let (a, b) = replicas(&redis, &proxy);
    a.start_task(start_request("shared", &["researcher"], &["crm.contacts.read"], 600))
        .await;
    let mut vb = b.verifier("api-gateway").await;
    synced(&b, &mut vb).await;
    let token = mint(&a, "shared").await;
    let child_task = mint(&a, "shared").await;
    // Minted by A, signed with A's key: B learns the key from the store once,
    // then answers from memory.
    wait_from_memory(&b, &mut vb, &token.access_token).await;
    wait_from_memory(&b, &mut vb, &child_task.access_token).await;

    a.admin("alice")
        .await
        .revoke_grant(pb::RevokeGrantRequest {
            grant_id: token.grant_id.clone(),
            reason: "on A".into(),
        })
        .await
        .unwrap();
    // Within max_feed_lag (1 s); the deadline leaves room for a busy machine.
    eventually("B to answer A's revocation", Duration::from_secs(10), async || {
        ask(&mut vb, &token.access_token).await == Ok(false)
    })
    .await;
    a.orchestrator()
        .await
        .complete_task(pb::CompleteTaskRequest {
            task_id: "shared".into(),
            reason: String::new(),
        })
        .await
        .unwrap();
    eventually("B to answer A's completion", Duration::from_secs(10), async || {
        ask(&mut vb, &child_task.access_token).await == Ok(false)
    })
    .await;
}

/// While B's link to Redis is `fault`, B never answers `active`: first it
/// leaves its memory (a live token gets UNAVAILABLE: the store is read and
/// fails), then a token revoked on A meanwhile is never active on B; once
/// healed, B answers both correctly (from the store: they predate its
/// resubscription) and new tokens from memory.
async fn never_active_while(fault: Fault) {
    let redis = RedisServer::builder().appendonly(false).start();
    let proxy = FaultProxy::start(addr_of(&redis));
    let (a, b) = replicas(&redis, &proxy);
    a.start_task(start_request("cut", &["researcher"], &["crm.contacts.read"], 600))
        .await;
    let mut vb = b.verifier("api-gateway").await;
    synced(&b, &mut vb).await;
    let live = mint(&a, "cut").await;
    let victim = mint(&a, "cut").await;
    wait_from_memory(&b, &mut vb, &live.access_token).await;
    wait_from_memory(&b, &mut vb, &victim.access_token).await;

    proxy.set(fault.clone());
    // Within the bound B may still answer from memory; past it, it must not.
    eventually(
        &format!("B to fail closed under {fault:?}"),
        Duration::from_secs(20),
        async || match ask(&mut vb, &live.access_token).await {
            Ok(true) => false,
            Err(Code::Unavailable) => true,
            other => panic!("under {fault:?}: {other:?}"),
        },
    )
    .await;
    a.admin("alice")
        .await
        .revoke_grant(pb::RevokeGrantRequest {
            grant_id: victim.grant_id.clone(),
            reason: "during the fault".into(),
        })
        .await
        .unwrap();
    for _ in 0..5 {
        for token in [&victim, &live] {
            let answer = ask(&mut vb, &token.access_token).await;
            assert!(
                matches!(answer, Ok(false) | Err(Code::Unavailable)),
                "under {fault:?}, B answered {answer:?}"
            );
        }
    }

    proxy.set(Fault::Pass);
    eventually(
        "B to answer again after the fault",
        Duration::from_secs(20),
        async || ask(&mut vb, &live.access_token).await == Ok(true),
    )
    .await;
    assert_eq!(ask(&mut vb, &victim.access_token).await, Ok(false));
    // B resubscribed after the failed reads: tokens minted before are read
    // from the store once more (a failover may have lost their records),
    // then from memory; later ones from memory.
    synced(&b, &mut vb).await;
    let fresh = mint(&a, "cut").await;
    wait_from_memory(&b, &mut vb, &fresh.access_token).await;
    wait_from_memory(&b, &mut vb, &live.access_token).await;
    assert_eq!(ask(&mut vb, &victim.access_token).await, Ok(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_feed_fails_closed() {
    never_active_while(Fault::Blackhole).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_feed_fails_closed() {
    // Every byte to and from Redis late by more than the bound (and the
    // store timeout): the follower cannot keep up, so B reads the store.
    never_active_while(Fault::Latency(Duration::from_millis(1500))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_issued_before_a_replica_started_is_checked_in_the_store_first() {
    let redis = RedisServer::builder().appendonly(false).start();
    let proxy = FaultProxy::start(addr_of(&redis));
    let (a, mut b) = replicas(&redis, &proxy);
    a.start_task(start_request("old", &["researcher"], &["crm.contacts.read"], 600))
        .await;
    let token = mint(&a, "old").await;
    let kept = mint(&a, "old").await;
    let gone = mint(&a, "old").await;
    a.admin("alice")
        .await
        .revoke_grant(pb::RevokeGrantRequest {
            grant_id: gone.grant_id.clone(),
            reason: "before B started".into(),
        })
        .await
        .unwrap();
    // B starts again: its follower's sync floor is after every token, and
    // the revocation above is before its feed position.
    b.restart();
    let mut vb = b.verifier("api-gateway").await;
    let store = answered(&b, "store");
    assert_eq!(ask(&mut vb, &token.access_token).await, Ok(true));
    assert_eq!(ask(&mut vb, &gone.access_token).await, Ok(false));
    assert_eq!(answered(&b, "store"), store + 2, "read from the store");
    // Found live by a store read after B synchronised: then from memory,
    // and A's revocation reaches it through the feed within the bound.
    wait_from_memory(&b, &mut vb, &token.access_token).await;
    assert_eq!(ask(&mut vb, &gone.access_token).await, Ok(false), "never from memory");
    a.admin("alice")
        .await
        .revoke_grant(pb::RevokeGrantRequest {
            grant_id: token.grant_id.clone(),
            reason: "after B started".into(),
        })
        .await
        .unwrap();
    eventually("B to answer A's revocation", Duration::from_secs(10), async || {
        ask(&mut vb, &token.access_token).await == Ok(false)
    })
    .await;
    assert_eq!(ask(&mut vb, &kept.access_token).await, Ok(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_break_glass_on_another_replica_counts_within_the_bound() {
    let redis = RedisServer::builder().appendonly(false).start();
    let proxy = FaultProxy::start(addr_of(&redis));
    let (a, b) = replicas(&redis, &proxy);
    a.start_task(start_request("glass", &["researcher"], &["crm.contacts.read"], 600))
        .await;
    let mut vb = b.verifier("api-gateway").await;
    synced(&b, &mut vb).await;
    let token = mint(&a, "glass").await;
    wait_from_memory(&b, &mut vb, &token.access_token).await;
    a.admin("alice")
        .await
        .revoke_all(pb::RevokeAllRequest {
            confirm: "revoke-all".into(),
            reason: "drill".into(),
        })
        .await
        .unwrap();
    eventually(
        "B to refuse the withdrawn key's token",
        Duration::from_secs(10),
        async || ask(&mut vb, &token.access_token).await == Ok(false),
    )
    .await;
}
