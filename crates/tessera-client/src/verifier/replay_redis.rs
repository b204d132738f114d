//! [`RedisReplayStore`]: the DPoP replay store the replicas of one resource
//! server share, in Redis (feature `redis`).
//!
//! One sorted set per key thumbprint, `<prefix>{<jkt>}`, holds that key's
//! spent `jti`s scored by the instant they may be forgotten. One script
//! forgets the expired members, refuses a member already there, refuses a
//! key whose share is full, and adds the proof — atomically, so two replicas
//! presented the same proof at once accept it once. The set expires with
//! its last member. The hash tag keeps each set in one Cluster slot.

use std::time::Duration;

use redis::aio::ConnectionManager;

use super::replay::{ReplayError, ReplayStore, SpendFuture, SpentProof};

/// How long one spend may take before the request is refused (fail closed).
const CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// KEYS[1]: the key's set. ARGV: jti, until, now, per_key.
/// Returns 1 (spent now), 0 (spent before) or -1 (this key's share is full).
const SPEND: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return -1 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('EXPIREAT', KEYS[1], tonumber(last[2]) + 1)
return 1
";

/// DPoP proofs spent by any replica, remembered in Redis.
#[derive(Clone)]
pub struct RedisReplayStore {
    conn: ConnectionManager,
    script: redis::Script,
    prefix: String,
    per_key: usize,
}

impl std::fmt::Debug for RedisReplayStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisReplayStore")
            .field("prefix", &self.prefix)
            .field("per_key", &self.per_key)
            .finish_non_exhaustive()
    }
}

impl RedisReplayStore {
    /// A store on `conn` (a connection manager reconnects by itself), its
    /// keys named `<prefix>{<thumbprint>}`, at most `per_key` live proofs
    /// per key thumbprint (at least 1).
    pub fn new(conn: ConnectionManager, prefix: impl Into<String>, per_key: usize) -> Self {
        Self {
            conn,
            script: redis::Script::new(SPEND),
            prefix: prefix.into(),
            per_key: per_key.max(1),
        }
    }

    /// Connects to the Redis at `url` (`redis://` or `rediss://`).
    pub async fn connect(url: &str, prefix: impl Into<String>, per_key: usize) -> Result<Self, ReplayError> {
        let client = redis::Client::open(url).map_err(|e| ReplayError::Unavailable(e.to_string()))?;
        let conn = tokio::time::timeout(CALL_TIMEOUT * 5, ConnectionManager::new(client))
            .await
            .map_err(|_| ReplayError::Unavailable("connecting timed out".into()))?
            .map_err(|e| ReplayError::Unavailable(e.to_string()))?;
        Ok(Self::new(conn, prefix, per_key))
    }
}

impl ReplayStore for RedisReplayStore {
    fn spend<'a>(&'a self, proof: &'a SpentProof) -> SpendFuture<'a> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let key = format!("{}{{{}}}", self.prefix, proof.jkt);
            let mut call = self.script.key(key);
            call.arg(&proof.jti).arg(proof.until).arg(proof.now).arg(self.per_key);
            let answer: i64 = tokio::time::timeout(CALL_TIMEOUT, call.invoke_async(&mut conn))
                .await
                .map_err(|_| ReplayError::Unavailable("no answer within 1 s".into()))?
                .map_err(|e| ReplayError::Unavailable(e.to_string()))?;
            match answer {
                1 => Ok(()),
                0 => Err(ReplayError::Replayed),
                _ => Err(ReplayError::Full("dpop replay store of this key")),
            }
        })
    }
}
