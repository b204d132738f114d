//! The one store conformance suite, run on every backend: the in-memory
//! store, a standalone `redis-server`, and a 3-master Redis Cluster.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tessera_e2e::redis::{RedisCluster, RedisServer};
use tessera_store::conformance::{
    BOUND_PER_IDENTITY, BOUND_PER_TASK, a_trimmed_feed_refuses_only_the_readers_it_lost,
    live_grants_are_bounded_per_task_and_identity, revocations_succeed_when_the_store_is_full, run_all, run_approvals,
};
use tessera_store::{MemoryLimits, MemoryStore, RedisConfig, RedisDeployment, RedisStore};

/// A fresh key prefix per store, so every check starts from an empty store.
fn prefix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("t{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst))
}

async fn redis_store(deployment: RedisDeployment) -> RedisStore {
    let mut config = RedisConfig::new(deployment);
    config.key_prefix = prefix();
    config.timeout = Duration::from_secs(5);
    RedisStore::connect(config).await.unwrap()
}

#[tokio::test]
async fn memory_store_conforms() {
    run_all(|| async { MemoryStore::default() }).await;
}

#[tokio::test]
async fn redis_standalone_conforms() {
    let server = RedisServer::builder().appendonly(false).start();
    let url = server.url();
    run_all(|| redis_store(RedisDeployment::Standalone { url: url.clone() })).await;
}

#[tokio::test]
async fn redis_cluster_conforms() {
    let cluster = RedisCluster::start();
    let urls = cluster.urls();
    run_all(|| redis_store(RedisDeployment::Cluster { urls: urls.clone() })).await;
}

/// A store whose feed is bounded to 4 events, on Redis nodes whose stream
/// nodes hold 2 entries: approximate trimming (`~`) drops whole nodes, so
/// only this makes a few revocations trim anything.
async fn short_feed_store(deployment: RedisDeployment) -> RedisStore {
    let mut config = RedisConfig::new(deployment);
    config.key_prefix = prefix();
    config.timeout = Duration::from_secs(5);
    config.feed_max_len = 4;
    RedisStore::connect(config).await.unwrap()
}

const SMALL_STREAM_NODES: &[&str] = &["--stream-node-max-entries", "2"];

#[tokio::test]
async fn redis_standalone_feed_trimmed_while_relevant_is_refused_never_a_gap() {
    let server = RedisServer::builder()
        .appendonly(false)
        .extra_args(SMALL_STREAM_NODES)
        .start();
    let store = short_feed_store(RedisDeployment::Standalone { url: server.url() }).await;
    a_trimmed_feed_refuses_only_the_readers_it_lost(store).await;
}

#[tokio::test]
async fn redis_cluster_feed_trimmed_while_relevant_is_refused_never_a_gap() {
    let cluster = RedisCluster::start_with(RedisServer::builder().extra_args(SMALL_STREAM_NODES));
    let store = short_feed_store(RedisDeployment::Cluster { urls: cluster.urls() }).await;
    a_trimmed_feed_refuses_only_the_readers_it_lost(store).await;
}

async fn bounded_redis_store(deployment: RedisDeployment) -> RedisStore {
    let mut config = RedisConfig::new(deployment);
    config.key_prefix = prefix();
    config.timeout = Duration::from_secs(5);
    config.max_live_grants_per_task = BOUND_PER_TASK;
    config.max_live_grants_per_identity = BOUND_PER_IDENTITY;
    RedisStore::connect(config).await.unwrap()
}

#[tokio::test]
async fn memory_live_grants_are_bounded_per_task_and_identity() {
    let store = MemoryStore::new(MemoryLimits {
        max_live_grants_per_task: BOUND_PER_TASK,
        max_live_grants_per_identity: BOUND_PER_IDENTITY,
        ..MemoryLimits::default()
    });
    live_grants_are_bounded_per_task_and_identity(store).await;
}

#[tokio::test]
async fn redis_live_grants_are_bounded_per_task_and_identity() {
    let server = RedisServer::builder().appendonly(false).start();
    let store = bounded_redis_store(RedisDeployment::Standalone { url: server.url() }).await;
    live_grants_are_bounded_per_task_and_identity(store).await;
    let cluster = RedisCluster::start();
    let store = bounded_redis_store(RedisDeployment::Cluster { urls: cluster.urls() }).await;
    live_grants_are_bounded_per_task_and_identity(store).await;
}

#[tokio::test]
async fn a_full_memory_store_still_takes_revocations() {
    let store = MemoryStore::new(MemoryLimits {
        max_grants: 50,
        ..MemoryLimits::default()
    });
    revocations_succeed_when_the_store_is_full(store, 50).await;
}

#[tokio::test]
async fn a_redis_at_maxmemory_still_takes_revocations() {
    let server = RedisServer::builder().appendonly(false).start();
    let store = redis_store(RedisDeployment::Standalone { url: server.url() }).await;
    // Room above what Redis uses now: the scripts' first load, then grants.
    let info = server.cli(&["INFO", "memory"]);
    let used: u64 = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("used_memory:"))
        .unwrap()
        .parse()
        .unwrap();
    let limit = (used + 1024 * 1024).to_string();
    assert_eq!(server.cli(&["CONFIG", "SET", "maxmemory", &limit]), "OK");
    revocations_succeed_when_the_store_is_full(store, 20_000).await;
}

#[tokio::test]
async fn memory_approvals_conform() {
    run_approvals(|| async { tessera_store::MemoryApprovalStore::default() }).await;
}

#[tokio::test]
async fn redis_standalone_approvals_conform() {
    let server = RedisServer::builder().appendonly(false).start();
    let url = server.url();
    run_approvals(|| redis_store(RedisDeployment::Standalone { url: url.clone() })).await;
}

#[tokio::test]
async fn redis_cluster_approvals_conform() {
    let cluster = RedisCluster::start();
    let urls = cluster.urls();
    run_approvals(|| redis_store(RedisDeployment::Cluster { urls: urls.clone() })).await;
}

#[tokio::test]
async fn a_redis_that_may_evict_is_refused() {
    let server = RedisServer::builder()
        .appendonly(false)
        .maxmemory_policy("allkeys-lru")
        .start();
    let err = RedisStore::connect(RedisConfig::new(RedisDeployment::Standalone { url: server.url() }))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("allkeys-lru") && msg.contains("noeviction"), "{msg}");
}

#[tokio::test]
async fn a_task_read_that_finds_ended_missing_fails_closed() {
    use tessera_core::task::TaskState;
    use tessera_store::GrantStore;
    use tessera_store::conformance::{grant, t0, task};

    let server = RedisServer::builder().appendonly(false).start();
    let store = redis_store(RedisDeployment::Standalone { url: server.url() }).await;
    store.create_task(&task("t1", 600, None)).await.unwrap();
    let g = grant(&store, "t1", 300, None).await;
    store.record_grant(&g, t0()).await.unwrap();
    store
        .end_task(&g.task_id, TaskState::Revoked, "stolen", t0())
        .await
        .unwrap();
    // A task hash that lost its `ended` field (a partial write, a hand edit).
    let cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &server.port().to_string()])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let keys = cli(&["--scan", "--pattern", "*:task:t1"]);
    let key = keys.lines().next().expect("the task's hash");
    assert_eq!(cli(&["HDEL", key, "ended"]).trim(), "1");
    let read = store.grant(&g.id).await.unwrap().unwrap();
    assert!(!read.is_live_at(t0()), "a grant of an ended task is live: {read:?}");
    assert!(
        store.task(&g.task_id).await.is_err(),
        "an ended task without an end time reads"
    );
}

/// A broker upgraded over live grants in the layout before the grant hash
/// (one JSON key per grant, see `tessera-store`'s `record.rs`) reads them,
/// lists them, delegates from them and revokes them by grant, holder,
/// subject and task, with their revocation events: written here as the
/// earlier broker wrote them, then handled by this code.
async fn layout_1_grants_survive_an_upgrade(store: RedisStore) {
    use tessera_core::grant::GrantState;
    use tessera_core::identity::SpiffeId;
    use tessera_core::revocation::RevocationTarget;
    use tessera_core::task::{TaskId, TaskState};
    use tessera_store::conformance::{grant, t0, task};
    use tessera_store::{GrantFilter, GrantStore as _, Release};

    let secs = chrono::Duration::seconds;
    for t in ["up", "up2"] {
        store.create_task(&task(t, 600, None)).await.unwrap();
    }
    let old = |task_name: &'static str, subject: &'static str| {
        let store = &store;
        async move {
            let mut g = grant(store, task_name, 300, None).await;
            g.subject = SpiffeId::parse(subject).unwrap();
            store.record_grant_layout_1_for_upgrade_test(&g).await.unwrap();
            g
        }
    };
    let by_id = old("up", "spiffe://td/agent/a").await;
    let by_holder = old("up", "spiffe://td/agent/b").await;
    let by_subject = old("up", "spiffe://td/agent/c").await;
    let by_task = old("up2", "spiffe://td/agent/d").await;
    let now = t0() + secs(1);

    // Read and listed as live, as the earlier broker had them.
    let read = store.grant(&by_id.id).await.unwrap().unwrap();
    assert_eq!(
        (read.state, &read.subject, &read.task_id),
        (GrantState::Active, &by_id.subject, &by_id.task_id)
    );
    assert!(read.is_live_at(now));
    let page = store
        .list_grants(
            &GrantFilter {
                task_id: Some(TaskId::parse("up").unwrap()),
                ..Default::default()
            },
            None,
            100,
            now,
        )
        .await
        .unwrap();
    assert_eq!(page.grants.len(), 3, "{page:?}");
    assert_eq!(store.live_grants(&TaskId::parse("up").unwrap(), now).await.unwrap(), 3);

    // A grant of this code delegated from an old one goes with it.
    let mut child = grant(&store, "up", 200, Some(&by_id.id)).await;
    child.subject = SpiffeId::parse("spiffe://td/agent/e").unwrap();
    store.record_grant(&child, now).await.unwrap();
    let head = store
        .read_revocations(None, 10, std::time::Duration::ZERO)
        .await
        .unwrap()
        .head;
    let outcome = store.revoke_grant(&by_id.id, "by id", now).await.unwrap().unwrap();
    assert!(outcome.revoked);
    assert_eq!(outcome.descendants_revoked, 1);
    assert_eq!(outcome.grant.state, GrantState::Revoked);
    let child_read = store.grant(&child.id).await.unwrap().unwrap();
    assert_eq!(child_read.state, GrantState::Revoked);
    assert_eq!(child_read.parent.as_ref(), Some(&by_id.id));

    // Released by its holder only.
    let other = SpiffeId::parse("spiffe://td/agent/z").unwrap();
    let refused = store
        .release_grant(&by_holder.id, &other, "not mine", now)
        .await
        .unwrap();
    assert!(
        matches!(&refused, Some(Release::NotHolder(g)) if g.subject == by_holder.subject),
        "{refused:?}"
    );
    let released = store
        .release_grant(&by_holder.id, &by_holder.subject, "released", now)
        .await
        .unwrap();
    assert!(
        matches!(&released, Some(Release::Revoked(o)) if o.revoked),
        "{released:?}"
    );

    // By subject, and by ending its task.
    assert_eq!(
        store
            .revoke_subject(&by_subject.subject, "by subject", now)
            .await
            .unwrap(),
        1
    );
    store
        .end_task(&TaskId::parse("up2").unwrap(), TaskState::Revoked, "by task", now)
        .await
        .unwrap();

    for (g, reason) in [
        (&by_id, "by id"),
        (&by_holder, "released"),
        (&by_subject, "by subject"),
        (&by_task, "by task"),
    ] {
        let read = store.grant(&g.id).await.unwrap().unwrap();
        assert_eq!(read.state, GrantState::Revoked, "{reason}");
        assert_eq!(read.revocation_reason.as_deref(), Some(reason));
        assert!(!read.is_live_at(now), "{reason}");
    }
    assert_eq!(store.live_grants(&TaskId::parse("up").unwrap(), now).await.unwrap(), 0);
    let batch = store
        .read_revocations(Some(&head), 100, std::time::Duration::ZERO)
        .await
        .unwrap();
    let targets: std::collections::BTreeSet<_> = batch.events.iter().map(|e| e.revocation.target.clone()).collect();
    for g in [&by_id, &child, &by_holder, &by_subject] {
        assert!(targets.contains(&RevocationTarget::Grant(g.id.clone())), "{targets:?}");
    }
    // Revoking again changes nothing.
    let again = store.revoke_grant(&by_id.id, "again", now).await.unwrap().unwrap();
    assert!(!again.revoked && again.descendants_revoked == 0);
}

#[tokio::test]
async fn redis_standalone_layout_1_grants_survive_an_upgrade() {
    let server = RedisServer::builder().appendonly(false).start();
    layout_1_grants_survive_an_upgrade(redis_store(RedisDeployment::Standalone { url: server.url() }).await).await;
}

#[tokio::test]
async fn redis_cluster_layout_1_grants_survive_an_upgrade() {
    let cluster = RedisCluster::start();
    layout_1_grants_survive_an_upgrade(redis_store(RedisDeployment::Cluster { urls: cluster.urls() }).await).await;
}

/// Redis 7.0 has no per-field expiry: an expired grant's record leaves its
/// tree's hash with the task's index on the task's next grant, and a
/// revoked one moves into its revocation mark, so the hash holds only
/// grants that may still be live.
#[tokio::test]
async fn redis_expired_and_revoked_records_leave_the_grant_hash() {
    use tessera_store::GrantStore as _;
    use tessera_store::conformance::{grant, t0, task};
    let server = RedisServer::builder().appendonly(false).start();
    let mut config = RedisConfig::new(RedisDeployment::Standalone { url: server.url() });
    config.key_prefix = prefix();
    let key_prefix = config.key_prefix.clone();
    let store = RedisStore::connect(config).await.unwrap();
    store.create_task(&task("t1", 600, None)).await.unwrap();
    let mut short = Vec::new();
    for _ in 0..3 {
        let g = grant(&store, "t1", 5, None).await;
        store.record_grant(&g, t0()).await.unwrap();
        short.push(g);
    }
    let long = grant(&store, "t1", 300, None).await;
    store.record_grant(&long, t0()).await.unwrap();
    let hash = format!("{key_prefix}:{{{}}}:G", &long.id.as_str()[..8]);
    assert_eq!(server.cli(&["HLEN", &hash]), "4");
    // Revoked: out of the hash, still read back as revoked.
    store.revoke_grant(&long.id, "gone", t0()).await.unwrap().unwrap();
    assert_eq!(server.cli(&["HLEN", &hash]), "3");
    let read = store.grant(&long.id).await.unwrap().unwrap();
    assert_eq!(read.revocation_reason.as_deref(), Some("gone"));
    assert_eq!((read.subject, read.expires_at), (long.subject.clone(), long.expires_at));
    // Expired: pruned by the task's next grant.
    let later = t0() + chrono::Duration::seconds(6);
    let next = grant(&store, "t1", 60, None).await;
    store.record_grant(&next, later).await.unwrap();
    assert_eq!(server.cli(&["HLEN", &hash]), "1");
    assert_eq!(server.cli(&["HEXISTS", &hash, next.id.as_str()]), "1");
    assert!(store.grant(&short[0].id).await.unwrap().is_none());
}
