//! Connections: one handle over standalone and Cluster deployments, with
//! timeouts on connect and on every response, plus small RESP helpers.

use std::collections::HashMap;
use std::time::Duration;

use std::sync::{Arc, PoisonError};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Cmd, IntoConnectionInfo as _, Pipeline, RedisError, RedisFuture, Value};

use crate::error::StoreError;

/// Where Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisDeployment {
    /// One server (`redis://host:port/db`); reconnects automatically.
    Standalone {
        /// Its URL.
        url: String,
    },
    /// A Redis Cluster, reached through any of these seed nodes.
    Cluster {
        /// Seed URLs; list every primary so each one's eviction policy is checked.
        urls: Vec<String>,
    },
    /// A primary watched by Redis Sentinel: the primary is looked up through
    /// the sentinels, and looked up again after a connection error or a
    /// `READONLY` answer (a failover). The data nodes are reached with the
    /// credentials and database of the first sentinel URL.
    Sentinel {
        /// Sentinel URLs.
        urls: Vec<String>,
        /// The monitored primary's name (`sentinel monitor <name> ...`).
        master: String,
    },
}

/// TLS for `rediss://` URLs: the CA bundle that signs the Redis servers'
/// certificates and, for `tls-auth-clients yes`, the broker's client
/// certificate. Files are read when connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisTls {
    /// CA certificates (PEM) that sign the Redis servers' certificates;
    /// the system roots are not used.
    pub ca: std::path::PathBuf,
    /// The client certificate chain and its key (PEM), if Redis asks for one.
    pub client: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl RedisTls {
    fn certificates(&self) -> Result<redis::TlsCertificates, StoreError> {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| StoreError::Misconfigured(format!("redis tls: `{}`: {e}", p.display())))
        };
        let client_tls = match &self.client {
            Some((cert, key)) => Some(redis::ClientTlsConfig {
                client_cert: read(cert)?,
                client_key: read(key)?,
            }),
            None => None,
        };
        Ok(redis::TlsCertificates {
            client_tls,
            root_cert: Some(read(&self.ca)?),
        })
    }
}

/// A client for `url`: over TLS with `tls` for `rediss://`.
fn client_for(url: &str, tls: Option<&RedisTls>) -> Result<redis::Client, StoreError> {
    match tls {
        Some(tls) if url.starts_with("rediss://") => {
            redis::Client::build_with_tls(url, tls.certificates()?).map_err(|e| unavailable("redis url", e))
        }
        _ => redis::Client::open(url).map_err(|e| unavailable("redis url", e)),
    }
}

#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(SentinelConn),
}

/// A connection to whichever node the sentinels say is the primary.
#[derive(Clone)]
pub(crate) struct SentinelConn {
    sentinel: Arc<tokio::sync::Mutex<SentinelClient>>,
    current: Arc<std::sync::Mutex<Option<ConnectionManager>>>,
    connect: Duration,
    response: Duration,
}

impl SentinelConn {
    fn new(urls: &[String], master: &str, connect: Duration, response: Duration) -> Result<Self, StoreError> {
        let node_info = match urls.first().map(|u| u.as_str().into_connection_info()) {
            Some(Ok(info)) => {
                SentinelNodeConnectionInfo::default().set_redis_connection_info(info.redis_settings().clone())
            }
            Some(Err(e)) => return Err(unavailable("redis sentinel url", e)),
            None => return Err(unavailable("redis sentinel", "no sentinel URL")),
        };
        let client = SentinelClient::build(
            urls.iter().map(String::as_str).collect(),
            master,
            Some(node_info),
            SentinelServerType::Master,
        )
        .map_err(|e| unavailable("redis sentinel", e))?;
        Ok(Self {
            sentinel: Arc::new(tokio::sync::Mutex::new(client)),
            current: Arc::new(std::sync::Mutex::new(None)),
            connect,
            response,
        })
    }

    /// The current primary's client, asked of the sentinels.
    async fn primary_client(&self) -> Result<redis::Client, StoreError> {
        let mut sentinel = self.sentinel.lock().await;
        tokio::time::timeout(self.connect * 3, sentinel.async_get_client())
            .await
            .map_err(|_| unavailable("redis sentinel", "timed out asking for the primary"))?
            .map_err(|e| unavailable("redis sentinel", e))
    }

    async fn manager(&self) -> Result<ConnectionManager, RedisError> {
        if let Some(m) = self.current.lock().unwrap_or_else(PoisonError::into_inner).clone() {
            return Ok(m);
        }
        let client = self
            .primary_client()
            .await
            .map_err(|e| RedisError::from((redis::ErrorKind::Io, "sentinel lookup failed", e.to_string())))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect))
            .set_response_timeout(Some(self.response))
            .set_number_of_retries(1);
        let manager = ConnectionManager::new_with_config(client, config).await?;
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(manager.clone());
        Ok(manager)
    }

    /// After an error that may mean a failover, forget the primary: the next
    /// command asks the sentinels again.
    fn check(&self, e: &RedisError) {
        if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.code() == Some("READONLY") {
            tracing::warn!(error = %e, "redis primary unreachable or demoted; asking the sentinels again");
            *self.current.lock().unwrap_or_else(PoisonError::into_inner) = None;
        }
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{what}: {e}"))
}

impl Conn {
    /// A multiplexed connection for ordinary commands.
    pub(crate) async fn connect(
        deployment: &RedisDeployment,
        tls: Option<&RedisTls>,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        Self::open(deployment, tls, timeout, timeout).await
    }

    /// A connection of its own for blocking reads (`XREAD BLOCK`), which
    /// would stall everyone else on a shared one.
    pub(crate) async fn connect_blocking(
        deployment: &RedisDeployment,
        tls: Option<&RedisTls>,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        Self::open(deployment, tls, timeout, timeout + Duration::from_secs(2)).await
    }

    /// A connection of its own for writes followed by `WAIT`, which blocks
    /// the connection it is sent on for up to `wait`.
    pub(crate) async fn connect_durable(
        deployment: &RedisDeployment,
        tls: Option<&RedisTls>,
        timeout: Duration,
        wait: Duration,
    ) -> Result<Self, StoreError> {
        Self::open(deployment, tls, timeout, timeout + wait).await
    }

    async fn open(
        deployment: &RedisDeployment,
        tls: Option<&RedisTls>,
        connect: Duration,
        response: Duration,
    ) -> Result<Self, StoreError> {
        match deployment {
            RedisDeployment::Standalone { url } => {
                let client = client_for(url, tls)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(connect))
                    .set_response_timeout(Some(response))
                    .set_number_of_retries(2);
                let manager = tokio::time::timeout(connect * 3, ConnectionManager::new_with_config(client, config))
                    .await
                    .map_err(|_| unavailable("redis connect", "timed out"))?
                    .map_err(|e| unavailable("redis connect", e))?;
                Ok(Self::Single(manager))
            }
            RedisDeployment::Cluster { urls } => {
                let mut builder = redis::cluster::ClusterClientBuilder::new(urls.iter().map(String::as_str));
                if let Some(tls) = tls {
                    builder = builder.certs(tls.certificates()?);
                }
                let client = builder
                    .connection_timeout(connect)
                    .response_timeout(response)
                    .retries(2)
                    .build()
                    .map_err(|e| unavailable("redis cluster", e))?;
                let conn = tokio::time::timeout(connect * 3, client.get_async_connection())
                    .await
                    .map_err(|_| unavailable("redis cluster connect", "timed out"))?
                    .map_err(|e| unavailable("redis cluster connect", e))?;
                Ok(Self::Cluster(conn))
            }
            RedisDeployment::Sentinel { urls, master } => {
                let conn = SentinelConn::new(urls, master, connect, response)?;
                conn.manager()
                    .await
                    .map_err(|e| unavailable("redis primary via sentinel", e))?;
                Ok(Self::Sentinel(conn))
            }
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
            Self::Sentinel(s) => Box::pin(async move {
                let mut m = s.manager().await?;
                let r = m.req_packed_command(cmd).await;
                if let Err(e) = &r {
                    s.check(e);
                }
                r
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Sentinel(s) => Box::pin(async move {
                let mut m = s.manager().await?;
                let r = m.req_packed_commands(pipeline, offset, count).await;
                if let Err(e) = &r {
                    s.check(e);
                }
                r
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
            Self::Sentinel(s) => s
                .current
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .map_or(0, |m| m.get_db()),
        }
    }
}

/// What a crash of Redis (or its host) can lose of the writes Redis
/// acknowledged, revocations among them, as read from every primary at
/// connect: the weakest node's `appendonly` (from `INFO persistence`, which
/// any client may read) and `appendfsync` (`CONFIG GET`, which an ACL or a
/// managed Redis may refuse: then it is unknown, and says why).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisDurability {
    /// `appendonly yes` on every node checked.
    pub appendonly: bool,
    /// The weakest `appendfsync` of the nodes checked (`always`, then
    /// `everysec`, then `no`); `None` when a node refused to say.
    pub appendfsync: Option<String>,
    /// Why `appendfsync` is unknown (the refusal), when it is.
    pub unknown_because: Option<String>,
}

impl RedisDurability {
    /// The `crash_loss` label: `none` (AOF, `always`), `1s` (AOF,
    /// `everysec`: about the last second, up to two while the disk is slow,
    /// on a host crash), `os` (AOF, `no`: what the OS had not flushed),
    /// `snapshot` (no AOF: everything since the last RDB snapshot, or all),
    /// `unknown`.
    pub fn crash_loss(&self) -> &'static str {
        if !self.appendonly {
            return "snapshot";
        }
        match self.appendfsync.as_deref() {
            Some("always") => "none",
            Some("everysec") => "1s",
            Some(_) => "os",
            None => "unknown",
        }
    }

    /// The same, in words for a log line.
    pub fn crash_loss_text(&self) -> &'static str {
        match self.crash_loss() {
            "none" => "nothing Redis acknowledged",
            "1s" => "about the last second of acknowledged writes (up to two while the disk is slow) on a host crash",
            "os" => "whatever the OS had not flushed to disk (tens of seconds) on a host crash",
            "snapshot" => "every write since the last RDB snapshot (or all of them) when Redis restarts",
            _ => "unknown: Redis did not say its appendfsync",
        }
    }

    /// Folds in another node's settings: the weaker of the two.
    fn weakest(self, other: Self) -> Self {
        let rank = |fsync: &Option<String>| match fsync.as_deref() {
            Some("always") => 0,
            Some("everysec") => 1,
            Some(_) => 2,
            None => 3,
        };
        let fsync = if rank(&other.appendfsync) > rank(&self.appendfsync) {
            other.appendfsync
        } else {
            self.appendfsync
        };
        Self {
            appendonly: self.appendonly && other.appendonly,
            appendfsync: fsync,
            unknown_because: self.unknown_because.or(other.unknown_because),
        }
    }
}

/// Refuses a Redis whose `maxmemory-policy` could evict keys: an evicted
/// grant, task or revocation would be a silent security failure. Returns
/// what the checked nodes say about their durability.
pub(crate) async fn check_eviction_policy(
    deployment: &RedisDeployment,
    tls: Option<&RedisTls>,
    timeout: Duration,
) -> Result<RedisDurability, StoreError> {
    let clients: Vec<(String, redis::Client)> = match deployment {
        RedisDeployment::Standalone { url } => vec![(url.clone(), client_for(url, tls)?)],
        RedisDeployment::Cluster { urls } => urls
            .iter()
            .map(|u| Ok((u.clone(), client_for(u, tls)?)))
            .collect::<Result<_, StoreError>>()?,
        RedisDeployment::Sentinel { urls, master } => {
            let client = SentinelConn::new(urls, master, timeout, timeout)?
                .primary_client()
                .await?;
            vec![(format!("primary `{master}`"), client)]
        }
    };
    let mut durability: Option<RedisDurability> = None;
    for (url, client) in clients {
        let (info, fsync) = tokio::time::timeout(timeout * 3, async {
            let mut conn = client.get_multiplexed_async_connection().await?;
            // One section per INFO: several in one call need Redis 7.
            let mut info = redis::cmd("INFO")
                .arg("memory")
                .query_async::<String>(&mut conn)
                .await?;
            info.push_str(
                &redis::cmd("INFO")
                    .arg("persistence")
                    .query_async::<String>(&mut conn)
                    .await?,
            );
            // A refusal (NOPERM, an unknown or renamed CONFIG) is an answer:
            // durability unknown, not a failed start.
            let fsync = redis::cmd("CONFIG")
                .arg("GET")
                .arg("appendfsync")
                .query_async::<Value>(&mut conn)
                .await
                .map_err(|e| e.to_string());
            Ok::<_, RedisError>((info, fsync))
        })
        .await
        .map_err(|_| unavailable("redis eviction check", "timed out"))?
        .map_err(|e| unavailable("redis eviction check", e))?;
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        let policy = field("maxmemory_policy").unwrap_or("unknown").to_owned();
        if policy != "noeviction" {
            return Err(StoreError::Misconfigured(format!(
                "redis at `{}` has maxmemory-policy `{policy}`: it could evict grants or revocations, \
                 a silent security failure; set `maxmemory-policy noeviction`",
                redact(&url)
            )));
        }
        let (appendfsync, unknown_because) = match fsync {
            Ok(v) => match map_of(v).get("appendfsync").and_then(string_of) {
                Some(mode) => (Some(mode), None),
                None => (None, Some("CONFIG GET appendfsync answered nothing".to_owned())),
            },
            Err(e) => (None, Some(format!("CONFIG GET appendfsync refused: {e}"))),
        };
        let node = RedisDurability {
            appendonly: field("aof_enabled") == Some("1"),
            appendfsync,
            unknown_because,
        };
        durability = Some(match durability {
            Some(d) => d.weakest(node),
            None => node,
        });
    }
    durability.ok_or_else(|| unavailable("redis eviction check", "no redis node to check"))
}

/// A URL without its password, for messages.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!(
            "{}://***@{}",
            url.get(..scheme).unwrap_or(""),
            url.get(at + 1..).unwrap_or("")
        ),
        _ => url.to_owned(),
    }
}

pub(crate) fn string_of(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::Okay => Some("OK".into()),
        _ => None,
    }
}

/// A RESP map, or a flat RESP2 array of key/value pairs, as a map.
pub(crate) fn map_of(v: Value) -> HashMap<String, Value> {
    match v {
        Value::Map(pairs) => pairs
            .into_iter()
            .filter_map(|(k, v)| Some((string_of(&k)?, v)))
            .collect(),
        Value::Array(items) => {
            let mut out = HashMap::new();
            let mut it = items.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                if let Some(k) = string_of(&k) {
                    out.insert(k, v);
                }
            }
            out
        }
        _ => HashMap::new(),
    }
}

/// XRANGE entries `[[id, [field, value, ...]], ...]` as `(id, value of field "r")`.
pub(crate) fn stream_entries(v: Value) -> Vec<(String, String)> {
    let Value::Array(entries) = v else { return Vec::new() };
    entries
        .into_iter()
        .filter_map(|entry| {
            let Value::Array(parts) = entry else { return None };
            let mut parts = parts.into_iter();
            let id = string_of(&parts.next()?)?;
            let fields = map_of(parts.next()?);
            Some((id, string_of(fields.get("r")?)?))
        })
        .collect()
}

/// XREAD's reply for one stream as its entries.
pub(crate) fn xread_entries(v: Value) -> Vec<(String, String)> {
    let streams: Vec<Value> = match v {
        Value::Array(items) => items
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(mut kv) if kv.len() == 2 => kv.pop(),
                _ => None,
            })
            .collect(),
        Value::Map(pairs) => pairs.into_iter().map(|(_, v)| v).collect(),
        _ => Vec::new(),
    };
    streams.into_iter().flat_map(stream_entries).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("redis://user:secret@host:6379/0"), "redis://***@host:6379/0");
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
    }
}

#[cfg(test)]
mod durability_tests {
    use super::RedisDurability;

    fn node(appendonly: bool, fsync: Option<&str>) -> RedisDurability {
        RedisDurability {
            appendonly,
            appendfsync: fsync.map(str::to_owned),
            unknown_because: fsync.is_none().then(|| "NOPERM".to_owned()),
        }
    }

    #[test]
    fn crash_loss_follows_the_settings() {
        assert_eq!(node(true, Some("always")).crash_loss(), "none");
        assert_eq!(node(true, Some("everysec")).crash_loss(), "1s");
        assert_eq!(node(true, Some("no")).crash_loss(), "os");
        assert_eq!(node(false, Some("always")).crash_loss(), "snapshot");
        assert_eq!(node(true, None).crash_loss(), "unknown");
    }

    #[test]
    fn a_deployment_is_as_durable_as_its_weakest_node() {
        let always = node(true, Some("always"));
        assert_eq!(always.clone().weakest(node(true, Some("everysec"))).crash_loss(), "1s");
        assert_eq!(node(true, Some("everysec")).weakest(always.clone()).crash_loss(), "1s");
        assert_eq!(
            always.clone().weakest(node(false, Some("always"))).crash_loss(),
            "snapshot"
        );
        let unknown = always.weakest(node(true, None));
        assert_eq!(unknown.crash_loss(), "unknown");
        assert_eq!(unknown.unknown_because.as_deref(), Some("NOPERM"));
    }
}
