//! [`RedisStore`]: the production [`GrantStore`], shared by every broker
//! replica. See `keys.rs` for the layout and `scripts.rs` for the scripts.
//!
//! Revocations are **published before they are applied**: the events go to
//! the stream first, then one script flips the state. A failure between the
//! two leaves verifiers refusing a token that introspection still calls live
//! (the caller sees an error and retries; ending and revoking are idempotent)
//! — never the reverse.

mod approvals;
mod audit_stream;
mod conn;
mod keys;
mod replay;
mod scripts;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::{StreamExt as _, TryStreamExt as _};
use redis::{RedisError, Value};
use serde::{Deserialize, Serialize};
use tessera_core::grant::{Grant, GrantId, GrantState, random_id};
use tessera_core::identity::SpiffeId;
use tessera_core::revocation::{Revocation, RevocationTarget};
use tessera_core::task::{Task, TaskId, TaskState};
use tokio::sync::Notify;

pub use self::audit_stream::{AuditStream, MAX_AUDIT_PAGE, audit_stream_key};
use self::conn::Conn;
pub use self::conn::{RedisDeployment, RedisDurability, RedisTls};
use self::keys::Keys;
use crate::error::StoreError;
use crate::feed::{FeedBatch, FeedEvent, FeedPosition};
use crate::store::{
    GrantFilter, GrantPage, GrantStore, KeyWithdrawal, MAX_GRANT_PAGE, PublishedKey, Release, RevokeOutcome, TaskEnded,
};

/// Most rounds a revocation that races new writes (a tree growing while it
/// is revoked) runs before it gives up and says so (UNAVAILABLE, retry):
/// the default of [`RedisConfig::max_rounds`].
const MAX_ROUNDS: usize = 64;

/// How long a durable-write marker (see [`RedisStore::durable_write`]) lives.
const DURABLE_MARK_TTL_MS: u64 = 10_000;

/// A script call that can go inside a pipeline (`EVALSHA`), which the
/// `redis` crate's own invocation cannot.
pub(crate) struct ScriptCall<'a> {
    script: &'a redis::Script,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl<'a> ScriptCall<'a> {
    fn new(script: &'a redis::Script) -> Self {
        Self {
            script,
            keys: Vec::new(),
            args: Vec::new(),
        }
    }

    fn key(&mut self, key: impl redis::ToRedisArgs) -> &mut Self {
        self.keys.extend(key.to_redis_args());
        self
    }

    fn arg(&mut self, arg: impl redis::ToRedisArgs) -> &mut Self {
        self.args.extend(arg.to_redis_args());
        self
    }

    /// The first key, which routes the call (Cluster).
    fn first_key(&self) -> &[u8] {
        self.keys.first().map_or(&[], Vec::as_slice)
    }

    fn evalsha(&self) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.script.get_hash()).arg(self.keys.len());
        for key in &self.keys {
            cmd.arg(key.as_slice());
        }
        for arg in &self.args {
            cmd.arg(arg.as_slice());
        }
        cmd
    }
}

/// How to reach Redis and how to use it.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// Standalone, Sentinel or Cluster, with addresses.
    pub deployment: RedisDeployment,
    /// Prefix of every key (`tessera`).
    pub key_prefix: String,
    /// Bound on every command and script.
    pub timeout: Duration,
    /// Revocation events older than this are trimmed; set it to at least the
    /// longest token lifetime, since no event matters after its tokens expired.
    pub feed_retention: chrono::Duration,
    /// Hard cap on the revocation stream's length (approximate trimming).
    pub feed_max_len: usize,
    /// How long an ended or expired task stays readable.
    pub task_retention: chrono::Duration,
    /// Replicas that must confirm (`WAIT`) every revocation, task end,
    /// quarantine, disable and replay-cache write before it is acknowledged;
    /// 0 waits for none. With fewer confirmations the write is reported
    /// [`StoreError::Unavailable`] (it may have been applied: every such
    /// write is idempotent, so the caller retries).
    pub min_replicas: u32,
    /// How long `WAIT` waits for those confirmations.
    pub replica_timeout: Duration,
    /// Most live grants one identity (grant subject) may hold at once.
    pub max_live_grants_per_identity: u64,
    /// Most live grants one task may hold at once.
    pub max_live_grants_per_task: u64,
    /// TLS for `rediss://` URLs (standalone and Cluster).
    pub tls: Option<RedisTls>,
    /// Most rounds a multi-round revocation (a task tree's end, a grant
    /// tree's or a subject's revocation) runs while new writes race it,
    /// before it gives up with [`StoreError::Unavailable`], never a success
    /// (64; tests lower it to reach the bound).
    pub max_rounds: usize,
}

impl RedisConfig {
    /// Defaults for `deployment`.
    pub fn new(deployment: RedisDeployment) -> Self {
        Self {
            deployment,
            key_prefix: "tessera".into(),
            timeout: Duration::from_millis(1000),
            feed_retention: chrono::Duration::hours(25),
            feed_max_len: 1_000_000,
            task_retention: chrono::Duration::hours(1),
            min_replicas: 0,
            replica_timeout: Duration::from_millis(500),
            max_live_grants_per_identity: crate::DEFAULT_MAX_LIVE_GRANTS_PER_IDENTITY,
            max_live_grants_per_task: crate::DEFAULT_MAX_LIVE_GRANTS_PER_TASK,
            tls: None,
            max_rounds: MAX_ROUNDS,
        }
    }
}

struct Scripts {
    create_task: redis::Script,
    record_grant: redis::Script,
    read_grant: redis::Script,
    revoke_grant_tree: redis::Script,
    revoke_grant_now: redis::Script,
    active_task_tree: redis::Script,
    end_tasks: redis::Script,
    live_grants: redis::Script,
    index_add: redis::Script,
    index_add_capped: redis::Script,
    publish_events: redis::Script,
    disable_subject: redis::Script,
    read_live_grants: redis::Script,
    publish_key: redis::Script,
    withdraw_keys: redis::Script,
    quarantine: redis::Script,
    durable_mark: redis::Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            create_task: scripts::create_task(),
            record_grant: scripts::record_grant(),
            read_grant: scripts::read_grant(),
            revoke_grant_tree: scripts::revoke_grant_tree(),
            revoke_grant_now: scripts::revoke_grant_now(),
            active_task_tree: scripts::active_task_tree(),
            end_tasks: scripts::end_tasks(),
            live_grants: scripts::live_grants(),
            publish_key: scripts::publish_key(),
            withdraw_keys: scripts::withdraw_keys(),
            quarantine: scripts::quarantine(),
            durable_mark: scripts::durable_mark(),
            index_add: scripts::index_add(),
            index_add_capped: scripts::index_add_capped(),
            publish_events: scripts::publish_events(),
            disable_subject: scripts::disable_subject(),
            read_live_grants: scripts::read_live_grants(),
        }
    }
}

/// The Redis-backed [`GrantStore`].
pub struct RedisStore {
    conn: Conn,
    /// The connection revocation-class writes and their `WAIT` go over. `WAIT`
    /// blocks the connection it is sent on and counts the writes made on it,
    /// so with `min_replicas > 0` these writes get a connection of their own
    /// (mints and reads never queue behind a `WAIT`); otherwise `conn`.
    durable: Conn,
    keys: Keys,
    config: RedisConfig,
    scripts: Scripts,
    /// The epoch marker this process last saw; a missing marker means Redis lost its data.
    epoch: Mutex<String>,
    /// Keys this process published, republished if Redis comes back empty.
    own_keys: Mutex<Vec<PublishedKey>>,
    feed_changed: Arc<Notify>,
    tailer: tokio::task::JoinHandle<()>,
    /// Task tags just read by `task`, for the `new_grant_id` that follows it
    /// on the mint path (see [`RECENT_ROOT_TTL`]).
    recent_roots: Mutex<HashMap<TaskId, (String, std::time::Instant)>>,
    /// What a Redis crash can lose, read at connect.
    durability: RedisDurability,
}

/// How long a task's tag read by `task` serves `new_grant_id` without
/// another round trip. A tag changes only when a task id is re-created
/// after its old tree expired; a stale tag then names a tree without the
/// task, and `record_grant`'s script refuses the grant (fail closed). Only
/// the mint path uses it: ending or revoking a task always reads the tag.
/// Longer than the broker remembers a task it read (one second), so a
/// mint on a remembered task does not read the tag again.
const RECENT_ROOT_TTL: Duration = Duration::from_secs(5);
/// Most tags remembered; the map is emptied when full.
const RECENT_ROOTS: usize = 4096;

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("deployment", &self.config.deployment)
            .finish_non_exhaustive()
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.tailer.abort();
    }
}

/// A Redis error as a store error: out of memory is a capacity problem,
/// everything else means Redis is not usable right now.
pub(crate) fn store_error(e: RedisError) -> StoreError {
    if e.code() == Some("OOM") {
        StoreError::Full("redis reached maxmemory (noeviction)")
    } else {
        StoreError::Unavailable(e.to_string())
    }
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_ms(v: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(v)
}

#[derive(Debug, Serialize, Deserialize)]
struct RevokedMark {
    at: i64,
    reason: String,
}

/// A stream id `ms-seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct StreamId(u64, u64);

impl StreamId {
    fn parse(s: &str) -> Option<Self> {
        let (a, b) = s.split_once('-')?;
        Some(Self(a.parse().ok()?, b.parse().ok()?))
    }

    fn render(self) -> String {
        format!("{}-{}", self.0, self.1)
    }
}

impl RedisStore {
    /// Connects, refuses a Redis that may evict keys, and establishes the epoch marker.
    pub async fn connect(config: RedisConfig) -> Result<Self, StoreError> {
        let tls = config.tls.as_ref();
        let conn = Conn::connect(&config.deployment, tls, config.timeout).await?;
        let durable = if config.min_replicas > 0 {
            Conn::connect_durable(&config.deployment, tls, config.timeout, config.replica_timeout).await?
        } else {
            conn.clone()
        };
        let durability = conn::check_eviction_policy(&config.deployment, tls, config.timeout).await?;
        let keys = Keys::new(&config.key_prefix);
        let feed_changed = Arc::new(Notify::new());
        let tailer_conn = Conn::connect_blocking(&config.deployment, tls, config.timeout).await?;
        let tailer = tokio::spawn(tail_feed(tailer_conn, keys.feed(), feed_changed.clone()));
        let store = Self {
            conn,
            durable,
            keys,
            config,
            scripts: Scripts::new(),
            epoch: Mutex::new(String::new()),
            own_keys: Mutex::new(Vec::new()),
            feed_changed,
            tailer,
            recent_roots: Mutex::new(HashMap::new()),
            durability,
        };
        let epoch = store.ensure_epoch().await?;
        tracing::info!(epoch = %epoch, "connected to redis");
        Ok(store)
    }

    /// What a Redis crash can lose, as the primaries said at connect.
    pub fn durability(&self) -> &RedisDurability {
        &self.durability
    }

    /// Runs `fut` within the configured timeout.
    async fn bounded<T>(&self, fut: impl Future<Output = Result<T, RedisError>>) -> Result<T, StoreError> {
        match tokio::time::timeout(self.config.timeout, fut).await {
            Ok(r) => r.map_err(store_error),
            Err(_) => Err(StoreError::Unavailable(format!(
                "redis did not answer within {} ms",
                self.config.timeout.as_millis()
            ))),
        }
    }

    fn conn(&self) -> Conn {
        self.conn.clone()
    }

    /// The connection durable writes go over (see [`RedisStore::durable_write`]).
    fn durable(&self) -> Conn {
        self.durable.clone()
    }

    /// Runs a revocation-class script and, with `min_replicas > 0`, waits
    /// until that many replicas have it before answering; fewer is
    /// `Unavailable` (the write may stand on the primary: every such write is
    /// idempotent, so the caller retries).
    ///
    /// `WAIT` counts the writes made on the connection it is sent on, so the
    /// script, a marker write and the `WAIT` go in one pipeline on one
    /// connection: a reconnect (say, to a newly promoted primary) between a
    /// write and its `WAIT` cannot happen, and the `WAIT` always covers the
    /// write it follows. The marker makes the `WAIT` cover everything the
    /// primary held when the script ran, also when the script wrote nothing
    /// (a retry that finds its revocation already in place, written by an
    /// earlier attempt on a connection since replaced).
    async fn durable_write<T: redis::FromRedisValue>(&self, call: &ScriptCall<'_>) -> Result<T, StoreError> {
        let want = self.config.min_replicas;
        let mark = (want > 0).then(|| self.keys.durable_mark(call.first_key()));
        let mut pipe = redis::pipe();
        pipe.add_command(call.evalsha());
        if let Some(mark) = &mark {
            pipe.add_command(
                ScriptCall::new(&self.scripts.durable_mark)
                    .key(mark)
                    .arg(DURABLE_MARK_TTL_MS)
                    .evalsha(),
            );
        }
        let answer = self
            .durable_pipeline(&pipe, &[call.script, &self.scripts.durable_mark])
            .await?;
        let value = answer.into_iter().next().unwrap_or(Value::Nil);
        T::from_redis_value(value).map_err(|e| StoreError::Corrupt(format!("redis script answer: {e}")))
    }

    /// Sends `pipe` on the durable connection, followed in the same pipeline
    /// by `WAIT min_replicas replica_timeout` when `min_replicas > 0`, and
    /// answers the commands' replies (without the `WAIT`'s) once enough
    /// replicas confirmed. `scripts` are loaded and the pipeline sent again
    /// if Redis did not know one (`NOSCRIPT`, e.g. after a restart or a
    /// failover to a replica that never ran them).
    async fn durable_pipeline(
        &self,
        pipe: &redis::Pipeline,
        scripts: &[&redis::Script],
    ) -> Result<Vec<Value>, StoreError> {
        self.send_pipeline(self.durable(), pipe, scripts, self.config.min_replicas)
            .await
    }

    /// Sends `pipe` on `conn` (loading `scripts` on `NOSCRIPT`), followed by
    /// `WAIT want` when `want > 0`; see [`RedisStore::durable_pipeline`].
    async fn send_pipeline(
        &self,
        mut conn: Conn,
        pipe: &redis::Pipeline,
        scripts: &[&redis::Script],
        want: u32,
    ) -> Result<Vec<Value>, StoreError> {
        let wait_ms = u64::try_from(self.config.replica_timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut pipe = pipe.clone();
        // Every reply as it is: a script error comes back as a value, so a
        // missing script can be told from any other failure.
        pipe.ignore_errors();
        let limit = if want > 0 {
            pipe.cmd("WAIT").arg(want).arg(wait_ms);
            self.config.replica_timeout + self.config.timeout
        } else {
            self.config.timeout
        };
        let mut loaded = false;
        let mut answer = loop {
            let sent: Result<Vec<Value>, RedisError> =
                match tokio::time::timeout(limit, pipe.query_async(&mut conn)).await {
                    Ok(r) => r,
                    Err(_) => {
                        return Err(StoreError::Unavailable(format!(
                            "redis did not answer within {} ms",
                            limit.as_millis()
                        )));
                    }
                };
            let values = sent.map_err(store_error)?;
            let missing = values
                .iter()
                .any(|v| matches!(v, Value::ServerError(e) if e.code() == "NOSCRIPT"));
            if missing && !loaded {
                for script in scripts {
                    let _: String = self.bounded(script.load_async(&mut conn)).await?;
                }
                loaded = true;
                continue;
            }
            if let Some(Value::ServerError(e)) = values.iter().find(|v| matches!(v, Value::ServerError(_))) {
                return Err(store_error(RedisError::from(e.clone())));
            }
            break values;
        };
        if want > 0 {
            let confirmed = match answer.pop() {
                Some(Value::Int(n)) => n,
                other => {
                    return Err(StoreError::Unavailable(format!(
                        "unexpected redis reply to WAIT: {other:?}"
                    )));
                }
            };
            if confirmed < i64::from(want) {
                return Err(StoreError::Unavailable(format!(
                    "{confirmed} of {want} redis replicas confirmed the write within {wait_ms} ms; \
                     not acknowledged (retry: it is idempotent)"
                )));
            }
        }
        Ok(answer)
    }

    /// Reads the epoch marker, creating it on an empty Redis. If it changed
    /// since we last looked, Redis lost its data: say so and republish our keys.
    async fn ensure_epoch(&self) -> Result<String, StoreError> {
        let key = self.keys.epoch();
        let mut conn = self.conn();
        let fresh = random_id().map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let _: Value = self
            .bounded(redis::cmd("SET").arg(&key).arg(&fresh).arg("NX").query_async(&mut conn))
            .await?;
        let current: String = self.bounded(redis::cmd("GET").arg(&key).query_async(&mut conn)).await?;
        let previous = {
            let mut epoch = self.epoch.lock().unwrap_or_else(PoisonError::into_inner);
            std::mem::replace(&mut *epoch, current.clone())
        };
        if !previous.is_empty() && previous != current {
            tracing::error!(
                previous = %previous,
                current = %current,
                "redis epoch changed: redis restarted empty; grants issued before are gone and report inactive; republishing signing keys"
            );
            let own: Vec<PublishedKey> = self.own_keys.lock().unwrap_or_else(PoisonError::into_inner).clone();
            for k in own {
                match self.write_key(&k).await {
                    Ok(()) | Err(StoreError::KeyWithdrawn(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(current)
    }

    /// Writes `grant` as a broker before layout 2 did (see `record.rs`): a
    /// JSON key of its own expiring with the grant, listed in its task's and
    /// subject's indexes. Only for the upgrade test (grants a predecessor
    /// minted must still be read and revoked); no check, no cap.
    #[doc(hidden)]
    pub async fn record_grant_layout_1_for_upgrade_test(&self, grant: &Grant) -> Result<(), StoreError> {
        let root = tag_of(&grant.id).ok_or_else(|| StoreError::TaskNotFound(grant.task_id.clone()))?;
        let json = serde_json::to_string(&crate::record::StoredGrant::layout_1(grant))
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let exp = ms(grant.expires_at);
        let mut conn = self.conn();
        let _: Value = self
            .bounded(
                redis::cmd("SET")
                    .arg(self.keys.grant(&root, grant.id.as_str()))
                    .arg(json)
                    .arg("PXAT")
                    .arg(exp)
                    .query_async(&mut conn),
            )
            .await?;
        let task_index = format!("{}grants:{}", self.keys.base(&root), grant.task_id);
        for index in [task_index, self.keys.subject(&grant.subject)] {
            let _: Value = self
                .bounded(
                    redis::cmd("ZADD")
                        .arg(index)
                        .arg(exp)
                        .arg(grant.id.as_str())
                        .query_async(&mut conn),
                )
                .await?;
        }
        Ok(())
    }

    async fn root_of_task(&self, id: &TaskId) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn();
        self.bounded(redis::cmd("GET").arg(self.keys.task_root(id)).query_async(&mut conn))
            .await
    }

    /// The tag a grant id carries; `None` for an id this store did not make.
    fn root_of_grant(id: &GrantId) -> Option<String> {
        tag_of(id)
    }

    /// Appends revocations to the feed (publish before apply), trimming it
    /// by age in the same script.
    async fn publish(&self, revocations: &[Revocation]) -> Result<(), StoreError> {
        if revocations.is_empty() {
            return Ok(());
        }
        let feed = self.keys.feed();
        // One script, not XADDs: it may write when Redis is at maxmemory.
        let mut call = ScriptCall::new(&self.scripts.publish_events);
        call.key(&feed)
            .arg(self.config.feed_max_len)
            .arg(retention_ms(self.config.feed_retention));
        for r in revocations {
            let json = serde_json::to_string(r).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            call.arg(json);
        }
        let _: Vec<String> = self.durable_write(&call).await?;
        self.feed_changed.notify_waiters();
        Ok(())
    }

    async fn write_key(&self, key: &PublishedKey) -> Result<(), StoreError> {
        let json = serde_json::to_string(key).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut conn = self.conn();
        let written: i64 = self
            .bounded(
                self.scripts
                    .publish_key
                    .key(self.keys.keys())
                    .key(self.keys.withdrawn())
                    .arg(&key.jwk.kid)
                    .arg(json)
                    .invoke_async(&mut conn),
            )
            .await?;
        if written == 0 {
            return Err(StoreError::KeyWithdrawn(key.jwk.kid.clone()));
        }
        Ok(())
    }

    /// What `XINFO STREAM` says of the feed; `None` if it does not exist.
    async fn feed_info(&self) -> Result<Option<FeedInfo>, StoreError> {
        let mut conn = self.conn();
        let info: Result<Value, StoreError> = self
            .bounded(
                redis::cmd("XINFO")
                    .arg("STREAM")
                    .arg(self.keys.feed())
                    .query_async(&mut conn),
            )
            .await;
        let info = match info {
            Ok(v) => v,
            Err(StoreError::Unavailable(msg)) if msg.contains("no such key") => return Ok(None),
            Err(e) => return Err(e),
        };
        let fields = conn::map_of(info);
        let id = |name: &str| {
            fields
                .get(name)
                .and_then(conn::string_of)
                .and_then(|s| StreamId::parse(&s))
                .unwrap_or(StreamId(0, 0))
        };
        let count = |name: &str| {
            fields
                .get(name)
                .and_then(conn::string_of)
                .and_then(|s| s.parse::<u64>().ok())
        };
        let (Some(length), Some(added)) = (count("length"), count("entries-added")) else {
            return Err(StoreError::Corrupt(
                "XINFO STREAM of the feed has no length or entries-added".into(),
            ));
        };
        Ok(Some(FeedInfo {
            last: id("last-generated-id"),
            max_deleted: id("max-deleted-entry-id"),
            first: id("recorded-first-entry-id"),
            trimmed: added > length,
        }))
    }

    async fn xrange_after(&self, epoch: &str, after: StreamId, max: usize) -> Result<Vec<FeedEvent>, StoreError> {
        let mut conn = self.conn();
        let value: Value = self
            .bounded(
                redis::cmd("XRANGE")
                    .arg(self.keys.feed())
                    .arg(format!("({}", after.render()))
                    .arg("+")
                    .arg("COUNT")
                    .arg(max.max(1))
                    .query_async(&mut conn),
            )
            .await?;
        conn::stream_entries(value)
            .into_iter()
            .map(|(id, json)| {
                let revocation: Revocation =
                    serde_json::from_str(&json).map_err(|e| StoreError::Corrupt(format!("revocation event: {e}")))?;
                let id = StreamId::parse(&id).ok_or_else(|| StoreError::Corrupt(format!("stream id `{id}`")))?;
                Ok(FeedEvent {
                    position: position(epoch, id),
                    revocation,
                })
            })
            .collect()
    }

    /// Adds `member` to a lazily pruned index zset (see `scripts::index_add`).
    async fn index_add(&self, index: &str, member: &str, score_ms: i64, now: DateTime<Utc>) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let _: String = self
            .bounded(
                self.scripts
                    .index_add
                    .key(index)
                    .arg(member)
                    .arg(score_ms)
                    .arg(ms(now))
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(())
    }

    /// Lists `grant` in its subject's index, refusing when the subject
    /// already holds `max_live_grants_per_identity` live grants (Cluster
    /// only: elsewhere the grant script does it). A full index is pruned
    /// of grants no longer live (see [`RedisStore::prune_subject_index`]),
    /// then tried once more.
    async fn subject_index_add(&self, grant: &Grant, exp: i64, now: DateTime<Utc>) -> Result<(), StoreError> {
        let index = self.keys.subject(&grant.subject);
        for attempt in 0..2 {
            let mut conn = self.conn();
            let outcome: String = self
                .bounded(
                    self.scripts
                        .index_add_capped
                        .key(&index)
                        .arg(grant.id.as_str())
                        .arg(exp)
                        .arg(ms(now))
                        .arg(self.config.max_live_grants_per_identity)
                        .invoke_async(&mut conn),
                )
                .await?;
            if outcome == "ok" {
                return Ok(());
            }
            if attempt == 0 && !self.prune_subject_index(&grant.subject, now).await? {
                break;
            }
        }
        Err(StoreError::Full(crate::IDENTITY_GRANTS_FULL))
    }

    /// Drops from `subject`'s index the grants no longer live (revoked, or
    /// of an ended task: the index keeps them until they expire). Returns
    /// whether it dropped any.
    async fn prune_subject_index(&self, subject: &SpiffeId, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let index = self.keys.subject(subject);
        let members = self.index_live(&index, now).await?;
        let live: HashSet<String> = self
            .read_live(&members, now)
            .await?
            .into_iter()
            .map(|g| g.id.to_string())
            .collect();
        let dead: Vec<&String> = members.iter().filter(|m| !live.contains(*m)).collect();
        if dead.is_empty() {
            return Ok(false);
        }
        let mut conn = self.conn();
        let _: i64 = self
            .bounded(redis::cmd("ZREM").arg(&index).arg(dead).query_async(&mut conn))
            .await?;
        Ok(true)
    }

    /// Whether a script must keep to the keys of one slot: in a Cluster
    /// (elsewhere keys of different slots may meet in one script).
    fn one_slot_only(&self) -> bool {
        matches!(self.config.deployment, RedisDeployment::Cluster { .. })
    }

    /// Runs the grant script: with the subject's index and the disabled
    /// hash outside Cluster (the whole mint in one round trip), with the
    /// task tree's keys only in Cluster.
    async fn run_record_grant(
        &self,
        grant: &Grant,
        root: &str,
        json: &str,
        now: DateTime<Utc>,
        whole: bool,
    ) -> Result<String, StoreError> {
        let mut conn = self.conn();
        let parent = grant.parent.as_ref().map(ToString::to_string).unwrap_or_default();
        let mut invocation = self
            .scripts
            .record_grant
            .key(self.keys.task(root, grant.task_id.as_str()));
        if whole {
            invocation
                .key(self.keys.subject(&grant.subject))
                .key(self.keys.disabled());
        }
        invocation
            .arg(self.keys.base(root))
            .arg(grant.task_id.as_str())
            .arg(grant.id.as_str())
            .arg(json)
            .arg(ms(grant.expires_at))
            .arg(ms(now))
            .arg(parent)
            .arg(self.config.max_live_grants_per_task)
            .arg(grant.subject.as_str())
            .arg(self.config.max_live_grants_per_identity);
        self.bounded(invocation.invoke_async(&mut conn)).await
    }

    /// Cluster's `record_grant`: the subject's index and the disabled hash
    /// are in other slots than the task tree, so the index is written
    /// before the grant script and the disable is read after it.
    async fn record_grant_across_slots(
        &self,
        grant: &Grant,
        root: &str,
        json: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        // INVARIANT: the subject index is written before the grant exists. An
        // index entry for a grant never recorded is harmless (readers check
        // liveness); a recorded grant missing from it would escape
        // RevokeIdentity.
        self.subject_index_add(grant, ms(grant.expires_at), now).await?;
        let outcome = self.run_record_grant(grant, root, json, now, false).await?;
        grant_outcome(&outcome, grant)?;
        // After the record: a disable either is seen here or comes after
        // the record, and its sweep finds the grant in the index. If the
        // store cannot say, the grant is taken back too (fail closed).
        let refused = match self.subject_disabled(&grant.subject).await {
            Ok(false) => return Ok(()),
            Ok(true) => StoreError::SubjectDisabled(grant.subject.clone()),
            Err(e) => e,
        };
        let why = match refused {
            StoreError::SubjectDisabled(_) => "identity disabled",
            _ => "store unavailable",
        };
        if let Err(e) = self.revoke_grant(&grant.id, why, now).await {
            tracing::error!(grant = %grant.id, error = %e, "could not take back a grant of a disabled identity");
        }
        Err(refused)
    }

    /// Revokes a grant tree in one round trip, outside Cluster (see
    /// `scripts::revoke_grant_now`); with `holder`, only if it holds the grant.
    async fn revoke_now(
        &self,
        id: &GrantId,
        holder: Option<&SpiffeId>,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Release>, StoreError> {
        let Some(root) = tag_of(id) else {
            return Ok(None);
        };
        let tail = event_tail(now, reason)?;
        let mut call = ScriptCall::new(&self.scripts.revoke_grant_now);
        call.key(self.keys.grant(&root, id.as_str()))
            .key(self.keys.feed())
            .arg(self.keys.base(&root))
            .arg(id.as_str())
            .arg(ms(now))
            .arg(reason)
            .arg(holder.map_or("", SpiffeId::as_str))
            .arg(self.config.feed_max_len)
            .arg(tail)
            .arg(retention_ms(self.config.feed_retention));
        // Confirmed by replicas also for a grant that was already revoked
        // (see `durable_write`).
        let answer: Value = self.durable_write(&call).await?;
        let Value::Array(parts) = answer else {
            return Ok(None);
        };
        let head = parts.first().and_then(conn::string_of).unwrap_or_default();
        match (head.as_str(), parts.get(1..)) {
            ("not_holder", Some([rec])) => {
                let rec = conn::string_of(rec).ok_or_else(|| StoreError::Corrupt("grant record".into()))?;
                Ok(Some(Release::NotHolder(crate::record::decode(id.clone(), &rec)?)))
            }
            ("ok", Some([count, root_revoked, grant @ ..])) => {
                self.feed_changed.notify_waiters();
                let count: u64 = conn::string_of(count).and_then(|n| n.parse().ok()).unwrap_or(0);
                let root_revoked = conn::string_of(root_revoked).is_some_and(|r| r == "1");
                Ok(Some(Release::Revoked(RevokeOutcome {
                    grant: grant_of_parts(id, grant)?,
                    revoked: root_revoked,
                    descendants_revoked: count.saturating_sub(u64::from(root_revoked)),
                })))
            }
            _ => Err(StoreError::Corrupt(
                "revoke_grant_now script answered an unexpected shape".into(),
            )),
        }
    }

    /// Revokes a grant tree in a Cluster, in rounds: the tree script
    /// refuses (changing nothing) while a live member's event is not among
    /// `published`; those are published and the script runs again.
    async fn revoke_tree(
        &self,
        id: &GrantId,
        reason: &str,
        now: DateTime<Utc>,
        mut published: Vec<String>,
    ) -> Result<Option<RevokeOutcome>, StoreError> {
        let Some(root) = Self::root_of_grant(id) else {
            return Ok(None);
        };
        let base = self.keys.base(&root);
        let grant_key = self.keys.grant(&root, id.as_str());
        // INVARIANT: events are published before the tree is revoked, and the
        // whole tree is revoked by one script: it refuses (changing nothing)
        // while any live member lacks a published event, so a grant delegated
        // meanwhile is published in the next round and revoked with the rest.
        // `record_grant` refuses a child under a revoked parent.
        let mut revoked_total = 0u64;
        let mut root_revoked = false;
        let mut finished = false;
        for _ in 0..self.config.max_rounds {
            let mut call = ScriptCall::new(&self.scripts.revoke_grant_tree);
            call.key(&grant_key)
                .arg(&base)
                .arg(id.as_str())
                .arg(ms(now))
                .arg(reason);
            for gid in &published {
                call.arg(gid);
            }
            // Confirmed by replicas also for a grant that was already revoked:
            // a retry after an unconfirmed first attempt must not be
            // acknowledged unconfirmed (see `durable_write`).
            let answer: Vec<String> = self.durable_write(&call).await?;
            match answer.split_first() {
                Some((head, rest)) if head == "ok" => {
                    revoked_total = rest.first().and_then(|n| n.parse().ok()).unwrap_or(0);
                    root_revoked = rest.get(1).is_some_and(|r| r == "1");
                    finished = true;
                    break;
                }
                Some((head, rest)) if head == "more" => {
                    let live: Vec<(String, i64)> = rest
                        .chunks(2)
                        .filter_map(|pair| match pair {
                            [gid, exp] => Some((gid.clone(), exp.parse().ok()?)),
                            _ => None,
                        })
                        .collect();
                    let events: Vec<Revocation> = live
                        .iter()
                        .filter_map(|(gid, exp)| {
                            Some(Revocation {
                                target: RevocationTarget::Grant(GrantId::parse(gid).ok()?),
                                revoked_at: now,
                                reason: reason.to_owned(),
                                not_after: from_ms(*exp)?,
                            })
                        })
                        .collect();
                    self.publish(&events).await?;
                    published.extend(live.into_iter().map(|(gid, _)| gid));
                }
                _ => {
                    return Err(StoreError::Corrupt(
                        "revoke_grant_tree script answered an unexpected shape".into(),
                    ));
                }
            }
        }
        if !finished {
            tracing::error!(grant = %id, rounds = self.config.max_rounds, "revoking a grant tree gave up: grants kept being delegated");
            return Err(StoreError::Unavailable(
                "grant tree kept growing while being revoked; retry".into(),
            ));
        }
        let Some(grant) = self.grant(id).await? else {
            return Ok(None);
        };
        Ok(Some(RevokeOutcome {
            grant,
            revoked: root_revoked,
            descendants_revoked: revoked_total.saturating_sub(u64::from(root_revoked)),
        }))
    }

    /// The keys of the JWKS hash `all` still in force at `now`, sorted by
    /// kid; retired ones are dropped from the hash.
    async fn keys_in_force(
        &self,
        all: HashMap<String, String>,
        now: DateTime<Utc>,
    ) -> Result<Vec<PublishedKey>, StoreError> {
        let mut keys = Vec::new();
        let mut retired = Vec::new();
        for (kid, json) in all {
            let key: PublishedKey =
                serde_json::from_str(&json).map_err(|e| StoreError::Corrupt(format!("published key: {e}")))?;
            if key.not_after.is_some_and(|t| t <= now) {
                retired.push(kid);
            } else {
                keys.push(key);
            }
        }
        if !retired.is_empty() {
            let mut conn = self.conn();
            let _: Value = self
                .bounded(
                    redis::cmd("HDEL")
                        .arg(self.keys.keys())
                        .arg(&retired)
                        .query_async(&mut conn),
                )
                .await?;
        }
        keys.sort_by(|a, b| a.jwk.kid.cmp(&b.jwk.kid));
        Ok(keys)
    }

    /// Members of an index zset whose score is still ahead of `now`.
    async fn index_live(&self, index: &str, now: DateTime<Utc>) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn();
        self.bounded(
            redis::cmd("ZRANGE")
                .arg(index)
                .arg(format!("({}", ms(now)))
                .arg("+inf")
                .arg("BYSCORE")
                .query_async(&mut conn),
        )
        .await
    }

    /// Ids of grants that may be live and match `filter`: a superset, read
    /// from the narrowest index the filter allows.
    async fn list_candidates(&self, filter: &GrantFilter, now: DateTime<Utc>) -> Result<Vec<String>, StoreError> {
        if let Some(subjects) = &filter.subjects {
            let mut ids = Vec::new();
            for subject in subjects {
                ids.extend(self.index_live(&self.keys.subject(subject), now).await?);
            }
            return Ok(ids);
        }
        let tasks = match &filter.task_id {
            Some(task) => vec![task.to_string()],
            None => self.index_live(&self.keys.tasks(), now).await?,
        };
        let per_task: Vec<Vec<String>> = futures::stream::iter(tasks)
            .map(|task| async move {
                let Ok(id) = TaskId::parse(&task) else {
                    return Ok(Vec::new());
                };
                let Some(root) = self.root_of_task(&id).await? else {
                    return Ok(Vec::new());
                };
                self.index_live(&format!("{}grants:{task}", self.keys.base(&root)), now)
                    .await
            })
            .buffer_unordered(32)
            .try_collect()
            .await?;
        Ok(per_task.into_iter().flatten().collect())
    }

    /// The live grants among `ids` (any trees), in no particular order.
    async fn read_live(&self, ids: &[String], now: DateTime<Utc>) -> Result<Vec<Grant>, StoreError> {
        let mut by_tree: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for id in ids {
            if let Some(tag) = GrantId::parse(id).ok().as_ref().and_then(tag_of) {
                by_tree.entry(tag).or_default().push(id.clone());
            }
        }
        let parts: Vec<Vec<Grant>> = futures::stream::iter(by_tree)
            .map(|(tag, ids): (String, Vec<String>)| async move {
                let base = self.keys.base(&tag);
                let mut conn = self.conn();
                let first = ids.first().map_or("", |s| s.as_str());
                let mut invocation = self.scripts.read_live_grants.key(self.keys.grant(&tag, first));
                invocation.arg(&base).arg(ms(now));
                for id in &ids {
                    invocation.arg(id.as_str());
                }
                let value: Value = self.bounded(invocation.invoke_async(&mut conn)).await?;
                let items = match value {
                    Value::Array(items) => items,
                    _ => Vec::new(),
                };
                items
                    .chunks(2)
                    .map(|pair| {
                        let (Some(id), Some(json)) = (
                            pair.first().and_then(conn::string_of),
                            pair.get(1).and_then(conn::string_of),
                        ) else {
                            return Err(StoreError::Corrupt("read_live_grants answered an odd list".into()));
                        };
                        let id = GrantId::parse(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                        crate::record::decode(id, &json)
                    })
                    .collect::<Result<Vec<Grant>, StoreError>>()
            })
            .buffer_unordered(16)
            .try_collect()
            .await?;
        Ok(parts.into_iter().flatten().filter(|g| g.is_live_at(now)).collect())
    }

    fn task_from_hash(&self, fields: HashMap<String, String>) -> Result<Option<Task>, StoreError> {
        let Some(json) = fields.get("json") else {
            return Ok(None);
        };
        let mut task: Task = serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("task: {e}")))?;
        task.state = match fields.get("state").map(String::as_str) {
            Some("active") => TaskState::Active,
            Some("completed") => TaskState::Completed,
            Some("revoked") => TaskState::Revoked,
            other => return Err(StoreError::Corrupt(format!("task state {other:?}"))),
        };
        task.ended_at = fields.get("ended").and_then(|v| v.parse().ok()).and_then(from_ms);
        // An ended task without a readable end time would read as running to
        // its deadline: fail closed rather than guess.
        if task.state != TaskState::Active && task.ended_at.is_none() {
            return Err(StoreError::Corrupt(format!(
                "task `{}` ended with no end time",
                task.id
            )));
        }
        Ok(Some(task))
    }
}

/// Follows the feed on a dedicated connection (blocking reads would stall a
/// shared one) and wakes local readers when new events arrive.
async fn tail_feed(mut conn: Conn, feed: String, changed: Arc<Notify>) {
    let mut last = "$".to_owned();
    loop {
        let read: Result<Value, RedisError> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(100)
            .arg("BLOCK")
            .arg(1000)
            .arg("STREAMS")
            .arg(&feed)
            .arg(&last)
            .query_async(&mut conn)
            .await;
        match read {
            Ok(Value::Nil) => {}
            Ok(v) => {
                if let Some((id, _)) = conn::xread_entries(v).pop() {
                    last = id;
                    changed.notify_waiters();
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "revocation feed tail: redis error; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// The feed's state, from `XINFO STREAM`.
#[derive(Debug, Clone, Copy)]
struct FeedInfo {
    /// `last-generated-id`: the newest entry ever added.
    last: StreamId,
    /// `max-deleted-entry-id`: the newest entry removed by XDEL (trimming
    /// does not move it in Redis 7.0).
    max_deleted: StreamId,
    /// `recorded-first-entry-id`: the oldest entry still held (0-0 when
    /// none is).
    first: StreamId,
    /// Entries were removed (`entries-added` > `length`).
    trimmed: bool,
}

/// The members every event of one revocation shares, as serde writes them
/// (`"revoked_at":"…","reason":"…"`), for `revoke_grant_now` to complete
/// with each grant's target and `not_after`: the reason is escaped here,
/// by the same encoder as every other event, never in Lua.
fn event_tail(now: DateTime<Utc>, reason: &str) -> Result<String, StoreError> {
    let at = serde_json::to_string(&now).map_err(|e| StoreError::Corrupt(format!("revocation time: {e}")))?;
    let why = serde_json::to_string(reason).map_err(|e| StoreError::Corrupt(format!("revocation reason: {e}")))?;
    Ok(format!("\"revoked_at\":{at},\"reason\":{why}"))
}

/// A grant and its state from what `read_grant` (and `revoke_grant_now`
/// after its own answer) returns: grant JSON, revocation mark, task state,
/// end and reason.
fn grant_of_parts(id: &GrantId, parts: &[Value]) -> Result<Grant, StoreError> {
    let [json, revoked, task_state, task_ended, task_reason] = parts else {
        return Err(StoreError::Corrupt(
            "read_grant script answered an unexpected shape".into(),
        ));
    };
    let json = conn::string_of(json).ok_or_else(|| StoreError::Corrupt("grant record".into()))?;
    let mut grant = crate::record::decode(id.clone(), &json)?;
    if let Some(mark) = conn::string_of(revoked) {
        let mark: RevokedMark =
            serde_json::from_str(&mark).map_err(|e| StoreError::Corrupt(format!("revoked mark: {e}")))?;
        grant.state = GrantState::Revoked;
        grant.revoked_at = from_ms(mark.at);
        grant.revocation_reason = Some(mark.reason);
    } else {
        let state = conn::string_of(task_state).unwrap_or_default();
        let ended = conn::string_of(task_ended)
            .and_then(|v| v.parse::<i64>().ok())
            .and_then(from_ms);
        // A grant dies with its task (or with the task's record, when Redis lost it).
        match (state.as_str(), ended) {
            ("active", _) => {}
            (_, Some(at)) if at < grant.expires_at => {
                grant.state = GrantState::Revoked;
                grant.revoked_at = Some(at);
                grant.revocation_reason = conn::string_of(task_reason);
            }
            // Ended after the grant expired: it expired first.
            ("completed" | "revoked", Some(_)) => {}
            ("missing", _) => {
                grant.state = GrantState::Revoked;
                grant.revocation_reason = Some("task record missing".into());
            }
            // An ended task whose end time is missing or unreadable, or
            // a state this code does not know: fail closed, the grant is
            // not live.
            _ => {
                grant.state = GrantState::Revoked;
                grant.revocation_reason = Some("task record unreadable".into());
            }
        }
    }
    Ok(grant)
}

/// What the grant script's answer means.
fn grant_outcome(outcome: &str, grant: &Grant) -> Result<(), StoreError> {
    match outcome {
        "ok" => Ok(()),
        "task_full" => Err(StoreError::Full(crate::TASK_GRANTS_FULL)),
        "identity_full" => Err(StoreError::Full(crate::IDENTITY_GRANTS_FULL)),
        "disabled" => Err(StoreError::SubjectDisabled(grant.subject.clone())),
        "task_missing" => Err(StoreError::TaskNotFound(grant.task_id.clone())),
        "outlives" => Err(StoreError::OutlivesTask(grant.task_id.clone())),
        "exists" => Err(StoreError::GrantExists),
        "parent_not_live" => Err(StoreError::ParentNotLive),
        over if over.starts_with("task_over:") => Err(StoreError::TaskOver(
            grant.task_id.clone(),
            parse_state(over.trim_start_matches("task_over:")),
        )),
        other => Err(StoreError::Corrupt(format!("record_grant script answered `{other}`"))),
    }
}

fn parse_pairs(v: Value) -> Vec<(String, i64)> {
    let items = match v {
        Value::Array(items) => items,
        _ => Vec::new(),
    };
    items
        .chunks(2)
        .filter_map(|pair| match pair {
            [a, b] => Some((conn::string_of(a)?, conn::string_of(b)?.parse().ok()?)),
            _ => None,
        })
        .collect()
}

#[async_trait]
impl GrantStore for RedisStore {
    async fn create_task(&self, task: &Task) -> Result<(), StoreError> {
        let root = match &task.parent {
            None => new_tag()?,
            Some(parent) => self
                .root_of_task(parent)
                .await?
                .ok_or_else(|| StoreError::TaskNotFound(parent.clone()))?,
        };
        let expire_at = ms(task.deadline + self.config.task_retention);
        let mapping = self.keys.task_root(&task.id);
        let mut conn = self.conn();
        let claimed: Option<String> = self
            .bounded(
                redis::cmd("SET")
                    .arg(&mapping)
                    .arg(&root)
                    .arg("NX")
                    .arg("PXAT")
                    .arg(expire_at)
                    .query_async(&mut conn),
            )
            .await?;
        if claimed.is_none() {
            // Taken — by a live task, by a create in progress, or by the leftover
            // of an attempt that died half way (it expires with the task's
            // retention). Never overwrite it: two concurrent creates of one id
            // would otherwise both succeed, in different trees.
            return Err(StoreError::TaskExists(task.id.clone()));
        }
        // INVARIANT: the task is listed in `P:tasks` before it exists, so
        // ListGrants without a task or subject filter sees every live task.
        // An entry for a task whose creation then failed is harmless.
        self.index_add(&self.keys.tasks(), task.id.as_str(), ms(task.deadline), task.created_at)
            .await?;
        let json = serde_json::to_string(task).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let parent = task.parent.as_ref().map(ToString::to_string).unwrap_or_default();
        let outcome: String = self
            .bounded(
                self.scripts
                    .create_task
                    .key(self.keys.task(&root, task.id.as_str()))
                    .arg(self.keys.base(&root))
                    .arg(task.id.as_str())
                    .arg(json)
                    .arg(ms(task.deadline))
                    .arg(expire_at)
                    .arg(&parent)
                    .arg(ms(task.created_at))
                    .invoke_async(&mut conn),
            )
            .await?;
        let undo = || async {
            let mut conn = self.conn();
            let _: Result<Value, StoreError> = self
                .bounded(redis::cmd("DEL").arg(&mapping).query_async(&mut conn))
                .await;
        };
        match outcome.as_str() {
            "ok" => Ok(()),
            "exists" => Err(StoreError::TaskExists(task.id.clone())),
            "parent_missing" => {
                undo().await;
                Err(StoreError::TaskNotFound(
                    task.parent.clone().unwrap_or_else(|| task.id.clone()),
                ))
            }
            over if over.starts_with("parent_over:") => {
                undo().await;
                let state = parse_state(over.trim_start_matches("parent_over:"));
                Err(StoreError::TaskOver(
                    task.parent.clone().unwrap_or_else(|| task.id.clone()),
                    state,
                ))
            }
            other => Err(StoreError::Corrupt(format!("create_task script answered `{other}`"))),
        }
    }

    async fn task(&self, id: &TaskId) -> Result<Option<Task>, StoreError> {
        let Some(root) = self.root_of_task(id).await? else {
            return Ok(None);
        };
        {
            let mut recent = self.recent_roots.lock().unwrap_or_else(PoisonError::into_inner);
            if recent.len() >= RECENT_ROOTS {
                recent.clear();
            }
            recent.insert(id.clone(), (root.clone(), std::time::Instant::now()));
        }
        let mut conn = self.conn();
        let fields: HashMap<String, String> = self
            .bounded(
                redis::cmd("HGETALL")
                    .arg(self.keys.task(&root, id.as_str()))
                    .query_async(&mut conn),
            )
            .await?;
        self.task_from_hash(fields)
    }

    async fn live_grants(&self, id: &TaskId, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let Some(root) = self.root_of_task(id).await? else {
            return Ok(0);
        };
        let mut conn = self.conn();
        self.bounded(
            self.scripts
                .live_grants
                .key(self.keys.task(&root, id.as_str()))
                .arg(self.keys.base(&root))
                .arg(id.as_str())
                .arg(ms(now))
                .invoke_async(&mut conn),
        )
        .await
    }

    async fn new_grant_id(&self, task: &TaskId) -> Result<GrantId, StoreError> {
        let recent = self
            .recent_roots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(task)
            .filter(|(_, at)| at.elapsed() < RECENT_ROOT_TTL)
            .map(|(tag, _)| tag.clone());
        let tag = match recent {
            Some(tag) => tag,
            None => self
                .root_of_task(task)
                .await?
                .ok_or_else(|| StoreError::TaskNotFound(task.clone()))?,
        };
        let random = random_id().map_err(|e| StoreError::Unavailable(e.to_string()))?;
        GrantId::parse(&format!("{tag}{random}")).map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    async fn record_grant(&self, grant: &Grant, now: DateTime<Utc>) -> Result<(), StoreError> {
        // The id carries its task tree's tag (see `new_grant_id`): a forged
        // or foreign id routes to a slot where its task does not exist.
        let root = tag_of(&grant.id).ok_or_else(|| StoreError::TaskNotFound(grant.task_id.clone()))?;
        let json = crate::record::encode(grant)?;
        if self.one_slot_only() {
            return self.record_grant_across_slots(grant, &root, &json, now).await;
        }
        // One script, one round trip: task state, caps, disable, grant and
        // both indexes, atomically.
        let outcome = self.run_record_grant(grant, &root, &json, now, true).await?;
        if outcome == "identity_full" && self.prune_subject_index(&grant.subject, now).await? {
            let outcome = self.run_record_grant(grant, &root, &json, now, true).await?;
            return grant_outcome(&outcome, grant);
        }
        grant_outcome(&outcome, grant)
    }

    async fn grant(&self, id: &GrantId) -> Result<Option<Grant>, StoreError> {
        let Some(root) = Self::root_of_grant(id) else {
            return Ok(None);
        };
        let mut conn = self.conn();
        let value: Value = self
            .bounded(
                self.scripts
                    .read_grant
                    .key(self.keys.grant(&root, id.as_str()))
                    .arg(self.keys.base(&root))
                    .arg(id.as_str())
                    .invoke_async(&mut conn),
            )
            .await?;
        let Value::Array(parts) = value else { return Ok(None) };
        grant_of_parts(id, &parts).map(Some)
    }

    async fn revoke_grant(
        &self,
        id: &GrantId,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<RevokeOutcome>, StoreError> {
        if !self.one_slot_only() {
            return match self.revoke_now(id, None, reason, now).await? {
                Some(Release::Revoked(outcome)) => Ok(Some(outcome)),
                Some(Release::NotHolder(_)) => Err(StoreError::Corrupt(
                    "revoke_grant_now refused a revocation that names no holder".into(),
                )),
                None => Ok(None),
            };
        }
        self.revoke_tree(id, reason, now, Vec::new()).await
    }

    async fn release_grant(
        &self,
        id: &GrantId,
        holder: &SpiffeId,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Release>, StoreError> {
        if !self.one_slot_only() {
            return self.revoke_now(id, Some(holder), reason, now).await;
        }
        // Cluster: the feed is in another slot than the tree. Read (and
        // check the holder), publish the grant's own event if it is live,
        // then revoke: the tree script finds it published and finishes in
        // its first round unless grants were delegated from it. An event
        // for a grant revoked meanwhile by someone else is a duplicate,
        // which readers ignore.
        let Some(grant) = self.grant(id).await? else {
            return Ok(None);
        };
        if &grant.subject != holder {
            return Ok(Some(Release::NotHolder(grant)));
        }
        let mut published = Vec::new();
        if grant.is_live_at(now) {
            self.publish(&[Revocation {
                target: RevocationTarget::Grant(id.clone()),
                revoked_at: now,
                reason: reason.to_owned(),
                not_after: grant.expires_at,
            }])
            .await?;
            published.push(id.to_string());
        }
        Ok(self
            .revoke_tree(id, reason, now, published)
            .await?
            .map(Release::Revoked))
    }

    async fn end_task(
        &self,
        id: &TaskId,
        state: TaskState,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<TaskEnded, StoreError> {
        let root = self
            .root_of_task(id)
            .await?
            .ok_or_else(|| StoreError::TaskNotFound(id.clone()))?;
        let base = self.keys.base(&root);
        let task_key = self.keys.task(&root, id.as_str());
        let state_name = match state {
            TaskState::Revoked => "revoked",
            _ => "completed",
        };
        let mut ended: Vec<String> = Vec::new();
        let mut grants_revoked = 0u64;
        // Rounds: a child task started while we end its parent is caught by the next round.
        let mut settled = false;
        for _ in 0..self.config.max_rounds {
            let mut call = ScriptCall::new(&self.scripts.active_task_tree);
            call.key(&task_key).arg(&base).arg(id.as_str()).arg(ms(now));
            for e in &ended {
                call.arg(e);
            }
            // A durable read: the round that finds nothing left to end
            // acknowledges the whole end, so replicas must hold what it saw
            // (a retry finds the ends of an unconfirmed first attempt).
            let value: Value = self.durable_write(&call).await?;
            if value == Value::Nil {
                return Err(StoreError::TaskNotFound(id.clone()));
            }
            let active = parse_pairs(value);
            if active.is_empty() {
                settled = true;
                break;
            }
            let events: Vec<Revocation> = active
                .iter()
                .filter(|(_, deadline)| *deadline > ms(now))
                .filter_map(|(task, deadline)| {
                    Some(Revocation {
                        target: RevocationTarget::Task(TaskId::parse(task).ok()?),
                        revoked_at: now,
                        reason: reason.to_owned(),
                        not_after: from_ms(*deadline)?,
                    })
                })
                .collect();
            self.publish(&events).await?;
            let mut call = ScriptCall::new(&self.scripts.end_tasks);
            call.key(&task_key).arg(&base).arg(ms(now)).arg(state_name).arg(reason);
            for (task, _) in &active {
                call.arg(task);
            }
            let (_count, live): (u64, u64) = self.durable_write(&call).await?;
            grants_revoked += live;
            ended.extend(active.into_iter().map(|(task, _)| task));
        }
        if !settled {
            // Never a success that left a task of the tree running: the
            // caller answers UNAVAILABLE (counted as a store error) and the
            // end is run again (it is idempotent).
            tracing::error!(task = %id, rounds = self.config.max_rounds, "ending a task tree gave up: tasks kept being started");
            return Err(StoreError::Unavailable(format!(
                "task `{id}`: its tree kept growing while being ended; gave up after {} rounds, retry",
                self.config.max_rounds
            )));
        }
        let task = self
            .task(id)
            .await?
            .ok_or_else(|| StoreError::TaskNotFound(id.clone()))?;
        let children_ended = ended
            .into_iter()
            .filter(|t| t != id.as_str())
            .filter_map(|t| TaskId::parse(&t).ok())
            .collect();
        Ok(TaskEnded {
            task,
            grants_revoked,
            children_ended,
        })
    }

    async fn read_revocations(
        &self,
        after: Option<&FeedPosition>,
        max: usize,
        wait: Duration,
    ) -> Result<FeedBatch, StoreError> {
        // Positions are `<epoch>:<stream id>`: a position from before Redis
        // lost its data is refused, not misread against the new stream.
        let epoch = self.ensure_epoch().await?;
        let info = self.feed_info().await?;
        let Some(after_pos) = after else {
            let head = info.map(|i| i.last).unwrap_or(StreamId(0, 0));
            return Ok(FeedBatch {
                events: Vec::new(),
                head: position(&epoch, head),
            });
        };
        let (their_epoch, id) = after_pos
            .as_str()
            .rsplit_once(':')
            .ok_or_else(|| StoreError::BadPosition(after_pos.to_string()))?;
        let after = StreamId::parse(id).ok_or_else(|| StoreError::BadPosition(after_pos.to_string()))?;
        let expired = || StoreError::PositionExpired(after_pos.to_string());
        if their_epoch != epoch {
            return Err(expired());
        }
        match info {
            // No stream: only the very beginning is a position of this Redis's life.
            None if after != StreamId(0, 0) => return Err(expired()),
            None => {}
            Some(info) if after > info.last => return Err(expired()),
            Some(info) => {
                // Entries after `after` that are gone: removed by XDEL
                // (`max-deleted-entry-id`), or trimmed (XADD MAXLEN, XTRIM
                // MINID), which removes the oldest entries and in Redis 7.0
                // moves no `max-deleted-entry-id`: some were trimmed after
                // `after` if it is older than the first entry still held.
                // The newest trimmed one is older than that first entry
                // (the last one when none is left).
                let trimmed_newest = (info.trimmed && after < info.first).then_some(if info.first == StreamId(0, 0) {
                    info.last
                } else {
                    info.first
                });
                let deleted_newest = (info.max_deleted > after).then_some(info.max_deleted);
                // Harmless if every lost entry was older than the retention
                // window (their tokens have expired); the window is measured
                // in the stream's own (Redis) clock.
                let relevant_since = info.last.0.saturating_sub(retention_ms(self.config.feed_retention));
                if trimmed_newest
                    .max(deleted_newest)
                    .is_some_and(|newest| newest.0 >= relevant_since)
                {
                    return Err(expired());
                }
            }
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.feed_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let events = self.xrange_after(&epoch, after, max).await?;
            if !events.is_empty() || tokio::time::Instant::now() >= deadline {
                let head = events
                    .last()
                    .map(|e| e.position.clone())
                    .unwrap_or_else(|| after_pos.clone());
                return Ok(FeedBatch { events, head });
            }
            // Woken by our own publish or the tailer; a timeout re-checks once.
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    async fn list_grants(
        &self,
        filter: &GrantFilter,
        after: Option<&str>,
        limit: usize,
        now: DateTime<Utc>,
    ) -> Result<GrantPage, StoreError> {
        let after = after
            .map(|a| GrantId::parse(a).map_err(|_| StoreError::BadCursor(a.to_owned())))
            .transpose()?;
        let limit = limit.clamp(1, MAX_GRANT_PAGE);
        let candidates: BTreeSet<String> = self
            .list_candidates(filter, now)
            .await?
            .into_iter()
            .filter(|id| after.as_ref().is_none_or(|a| id.as_str() > a.as_str()))
            .collect();
        let candidates: Vec<String> = candidates.into_iter().collect();
        let mut grants = Vec::new();
        let mut consumed = 0;
        // Read in id order, a chunk at a time, until the page is full.
        while grants.len() < limit && consumed < candidates.len() {
            let want = (limit - grants.len()).max(64);
            let end = (consumed + want).min(candidates.len());
            let chunk = candidates.get(consumed..end).unwrap_or_default();
            let mut live: Vec<Grant> = self
                .read_live(chunk, now)
                .await?
                .into_iter()
                .filter(|g| filter.matches(g))
                .collect();
            live.sort_unstable_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
            consumed = end;
            for g in live {
                if grants.len() == limit {
                    // The page filled inside this chunk: resume after the last one taken.
                    consumed = candidates
                        .iter()
                        .position(|c| c.as_str() == g.id.as_str())
                        .unwrap_or(consumed);
                    break;
                }
                grants.push(g);
            }
        }
        let next = (grants.len() == limit && consumed < candidates.len())
            .then(|| grants.last().map(|g| g.id.to_string()))
            .flatten();
        Ok(GrantPage { grants, next })
    }

    async fn revoke_subject(&self, subject: &SpiffeId, reason: &str, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let index = self.keys.subject(subject);
        let mut handled: HashSet<String> = HashSet::new();
        let mut revoked = 0u64;
        // Rounds: a grant recorded while we revoke is caught by the next round.
        let mut settled = false;
        for _ in 0..self.config.max_rounds {
            let fresh: Vec<String> = self
                .index_live(&index, now)
                .await?
                .into_iter()
                .filter(|id| !handled.contains(id))
                .collect();
            if fresh.is_empty() {
                settled = true;
                break;
            }
            let mut live: Vec<Grant> = self
                .read_live(&fresh, now)
                .await?
                .into_iter()
                .filter(|g| &g.subject == subject)
                .collect();
            live.sort_unstable_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
            for g in &live {
                if let Some(outcome) = self.revoke_grant(&g.id, reason, now).await? {
                    revoked += u64::from(outcome.revoked) + outcome.descendants_revoked;
                }
            }
            handled.extend(fresh);
            if live.is_empty() {
                settled = true;
                break;
            }
        }
        if !settled {
            tracing::error!(subject = %subject, rounds = self.config.max_rounds, "revoking a subject gave up: grants kept being recorded");
            return Err(StoreError::Unavailable(format!(
                "`{subject}`: grants kept being recorded while being revoked; gave up after {} rounds, retry",
                self.config.max_rounds
            )));
        }
        Ok(revoked)
    }

    async fn active_task_ids(&self, now: DateTime<Utc>) -> Result<Vec<TaskId>, StoreError> {
        let ids = self.index_live(&self.keys.tasks(), now).await?;
        Ok(ids.iter().filter_map(|id| TaskId::parse(id).ok()).collect())
    }

    async fn withdraw_keys_except(&self, keep: &str, withdrawal: &KeyWithdrawal<'_>) -> Result<u64, StoreError> {
        let event = |kid: &str| Revocation {
            target: RevocationTarget::Key(kid.to_owned()),
            revoked_at: withdrawal.now,
            reason: withdrawal.reason.to_owned(),
            not_after: withdrawal.not_after,
        };
        // Announced before withdrawn (as every revocation here): verifiers
        // drop the keys on these events, before their next JWKS refresh.
        let mut conn = self.conn();
        let before: Vec<String> = self
            .bounded(redis::cmd("HKEYS").arg(self.keys.keys()).query_async(&mut conn))
            .await?;
        let announced: Vec<Revocation> = before
            .iter()
            .filter(|kid| kid.as_str() != keep)
            .map(|k| event(k))
            .collect();
        self.publish(&announced).await?;
        let gone: Vec<String> = self
            .durable_write(
                ScriptCall::new(&self.scripts.withdraw_keys)
                    .key(self.keys.keys())
                    .key(self.keys.withdrawn())
                    .arg(keep),
            )
            .await?;
        // A key published meanwhile was withdrawn too: announce it as well.
        let late: Vec<Revocation> = gone
            .iter()
            .filter(|kid| !before.contains(kid))
            .map(|k| event(k))
            .collect();
        self.publish(&late).await?;
        let n = gone.len() as u64;
        self.own_keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|k| k.jwk.kid == keep);
        Ok(n)
    }

    async fn publish_key(&self, key: &PublishedKey) -> Result<(), StoreError> {
        self.write_key(key).await?;
        let mut own = self.own_keys.lock().unwrap_or_else(PoisonError::into_inner);
        own.retain(|k| k.jwk.kid != key.jwk.kid);
        own.push(key.clone());
        Ok(())
    }

    async fn published_keys(&self, now: DateTime<Utc>) -> Result<Vec<PublishedKey>, StoreError> {
        let mut conn = self.conn();
        let all: HashMap<String, String> = self
            .bounded(redis::cmd("HGETALL").arg(self.keys.keys()).query_async(&mut conn))
            .await?;
        self.keys_in_force(all, now).await
    }

    async fn keys_and_grant(
        &self,
        id: &GrantId,
        now: DateTime<Utc>,
    ) -> Result<(Vec<PublishedKey>, Option<Grant>), StoreError> {
        let Some(root) = tag_of(id).filter(|_| !self.one_slot_only()) else {
            // Cluster (or an id this store did not make): the keys are in
            // another slot than the tree, two reads.
            return Ok((self.published_keys(now).await?, self.grant(id).await?));
        };
        // One round trip: both reads in one pipeline.
        let mut read = ScriptCall::new(&self.scripts.read_grant);
        read.key(self.keys.grant(&root, id.as_str()))
            .arg(self.keys.base(&root))
            .arg(id.as_str());
        let mut pipe = redis::pipe();
        pipe.cmd("HGETALL").arg(self.keys.keys());
        pipe.add_command(read.evalsha());
        let mut answer = self
            .send_pipeline(self.conn(), &pipe, &[&self.scripts.read_grant], 0)
            .await?
            .into_iter();
        let all: HashMap<String, String> = redis::FromRedisValue::from_redis_value(answer.next().unwrap_or(Value::Nil))
            .map_err(|e| StoreError::Corrupt(format!("published keys: {e}")))?;
        let grant = match answer.next() {
            Some(Value::Array(parts)) => Some(grant_of_parts(id, &parts)?),
            _ => None,
        };
        Ok((self.keys_in_force(all, now).await?, grant))
    }

    async fn disable_subject(&self, subject: &SpiffeId, reason: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let mark = serde_json::json!({"reason": reason, "at": now.to_rfc3339()}).to_string();
        let added: i64 = self
            .durable_write(
                ScriptCall::new(&self.scripts.disable_subject)
                    .key(self.keys.disabled())
                    .arg(subject.as_str())
                    .arg(mark),
            )
            .await?;
        Ok(added == 1)
    }

    async fn enable_subject(&self, subject: &SpiffeId) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let removed: i64 = self
            .bounded(
                redis::cmd("HDEL")
                    .arg(self.keys.disabled())
                    .arg(subject.as_str())
                    .query_async(&mut conn),
            )
            .await?;
        Ok(removed == 1)
    }

    async fn disabled_subjects(&self) -> Result<std::collections::BTreeSet<SpiffeId>, StoreError> {
        let mut conn = self.conn();
        let ids: Vec<String> = self
            .bounded(redis::cmd("HKEYS").arg(self.keys.disabled()).query_async(&mut conn))
            .await?;
        // An entry that is not a SPIFFE ID was not written by us and can
        // match no caller: skip it (logged) rather than stop every replica
        // from learning the real disables.
        Ok(ids
            .iter()
            .filter_map(|id| match SpiffeId::parse(id) {
                Ok(id) => Some(id),
                Err(_) => {
                    tracing::warn!(key = %self.keys.disabled(), "ignoring a disabled-identity entry that is not a SPIFFE ID");
                    None
                }
            })
            .collect())
    }

    async fn subject_disabled(&self, subject: &SpiffeId) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let exists: i64 = self
            .bounded(
                redis::cmd("HEXISTS")
                    .arg(self.keys.disabled())
                    .arg(subject.as_str())
                    .query_async(&mut conn),
            )
            .await?;
        Ok(exists == 1)
    }

    async fn quarantine_subject(
        &self,
        subject: &SpiffeId,
        until: DateTime<Utc>,
        why: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let json = serde_json::json!({
            "until_ms": ms(until),
            "why": why,
        })
        .to_string();
        let _: String = self
            .durable_write(
                ScriptCall::new(&self.scripts.quarantine)
                    .key(self.keys.quarantine())
                    .arg(subject.as_str())
                    .arg(ms(until))
                    .arg(json)
                    .arg(ms(now)),
            )
            .await?;
        Ok(())
    }

    async fn quarantined_subjects(&self, now: DateTime<Utc>) -> Result<Vec<crate::Quarantine>, StoreError> {
        #[derive(serde::Deserialize)]
        struct Stored {
            until_ms: i64,
            why: String,
        }
        let mut conn = self.conn();
        let all: Vec<(String, String)> = self
            .bounded(redis::cmd("HGETALL").arg(self.keys.quarantine()).query_async(&mut conn))
            .await?;
        let mut out = Vec::new();
        for (subject, json) in all {
            // Entries we did not write are skipped (logged), as above.
            let parsed = serde_json::from_str::<Stored>(&json).ok().and_then(|stored| {
                Some((
                    SpiffeId::parse(&subject).ok()?,
                    DateTime::from_timestamp_millis(stored.until_ms)?,
                    stored.why,
                ))
            });
            let Some((subject, until, why)) = parsed else {
                tracing::warn!(key = %self.keys.quarantine(), "ignoring a malformed quarantine entry");
                continue;
            };
            if until > now {
                out.push(crate::Quarantine { subject, until, why });
            }
        }
        Ok(out)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let _: String = self.bounded(redis::cmd("PING").query_async(&mut conn)).await?;
        self.ensure_epoch().await?;
        Ok(())
    }
}

/// Length of a task tree's hash tag, the prefix of every grant id in it.
const TAG_LEN: usize = 8;

/// A random hash tag for a new task tree (48 bits: a collision only puts two
/// trees in one Cluster slot; their keys stay distinct).
fn new_tag() -> Result<String, StoreError> {
    let random = random_id().map_err(|e| StoreError::Unavailable(e.to_string()))?;
    Ok(random.chars().take(TAG_LEN).collect())
}

fn tag_of(id: &GrantId) -> Option<String> {
    let s = id.as_str();
    (s.len() == TAG_LEN + 22).then(|| s.chars().take(TAG_LEN).collect())
}

fn position(epoch: &str, id: StreamId) -> FeedPosition {
    FeedPosition::new(format!("{epoch}:{}", id.render()))
}

fn retention_ms(d: chrono::Duration) -> u64 {
    u64::try_from(d.num_milliseconds()).unwrap_or(0)
}

fn parse_state(s: &str) -> TaskState {
    match s {
        "completed" => TaskState::Completed,
        "revoked" => TaskState::Revoked,
        "active" => TaskState::Active,
        _ => TaskState::Expired,
    }
}
