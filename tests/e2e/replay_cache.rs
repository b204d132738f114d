//! The `ReplayCache` conformance suite on every backend: the in-memory store,
//! a standalone `redis-server` and a 3-master Redis Cluster; and a Redis that
//! is down answers an error, never "first use".
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tessera_e2e::redis::{RedisCluster, RedisServer};
use tessera_store::replay_conformance::run_all;
use tessera_store::{MemoryStore, RedisConfig, RedisDeployment, RedisStore, ReplayCache, StoreError};

fn prefix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("r{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst))
}

async fn redis_store(deployment: RedisDeployment) -> RedisStore {
    let mut config = RedisConfig::new(deployment);
    config.key_prefix = prefix();
    config.timeout = Duration::from_secs(5);
    RedisStore::connect(config).await.unwrap()
}

fn until() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(4_000_000_000, 0).unwrap()
}

#[tokio::test]
async fn memory_store_replay_cache_conforms() {
    run_all(|| async { MemoryStore::default() }).await;
}

#[tokio::test]
async fn redis_standalone_replay_cache_conforms() {
    let server = RedisServer::builder().appendonly(false).start();
    let url = server.url();
    run_all(|| redis_store(RedisDeployment::Standalone { url: url.clone() })).await;
}

#[tokio::test]
async fn redis_cluster_replay_cache_conforms() {
    let cluster = RedisCluster::start();
    let urls = cluster.urls();
    run_all(|| redis_store(RedisDeployment::Cluster { urls: urls.clone() })).await;
}

/// Two stores on one Redis (two replicas) share what was seen; the key expires.
#[tokio::test]
async fn replicas_share_the_replay_cache() {
    let server = RedisServer::builder().appendonly(false).start();
    let mut config = RedisConfig::new(RedisDeployment::Standalone { url: server.url() });
    let prefix = prefix();
    config.key_prefix = prefix.clone();
    let a = RedisStore::connect(config.clone()).await.unwrap();
    let b = RedisStore::connect(config).await.unwrap();
    assert!(a.first_use("jwt", "shared", until()).await.unwrap());
    assert!(!b.first_use("jwt", "shared", until()).await.unwrap());
    let ttl = server.cli(&["PTTL", &format!("{prefix}:replay:jwt:shared")]);
    assert!(ttl.trim().parse::<i64>().unwrap() > 0, "the key expires: {ttl}");
}

/// Redis gone: an error (UNAVAILABLE), never `true`.
#[tokio::test]
async fn a_redis_that_is_down_never_answers_first_use() {
    let mut server = RedisServer::builder().appendonly(false).start();
    let mut config = RedisConfig::new(RedisDeployment::Standalone { url: server.url() });
    config.key_prefix = prefix();
    config.timeout = Duration::from_millis(500);
    let store = RedisStore::connect(config).await.unwrap();
    assert!(store.first_use("jwt", "before", until()).await.unwrap());
    server.kill();
    for i in 0..3 {
        let got = store.first_use("jwt", &format!("after-{i}"), until()).await;
        assert!(matches!(got, Err(StoreError::Unavailable(_))), "{got:?}");
    }
}
