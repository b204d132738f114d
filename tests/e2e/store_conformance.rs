//! The one store conformance suite, run on every backend: the in-memory
//! store, a standalone `redis-server`, and a 3-master Redis Cluster.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tessera_e2e::redis::{RedisCluster, RedisServer};
use tessera_store::conformance::{
    BOUND_PER_IDENTITY, BOUND_PER_TASK, live_grants_are_bounded_per_task_and_identity,
    revocations_succeed_when_the_store_is_full, run_all, run_approvals,
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
