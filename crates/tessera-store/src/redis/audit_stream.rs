//! The audit trail's Redis Stream: one stream per broker replica
//! (`P:audit:<instance>`), one entry per sealed record (field `r` = the
//! record's JSON line, exactly as the file sink writes it).
//!
//! A replica's records form one hash chain, so each replica has its own
//! stream: two replicas appending to one stream would interleave two chains.
//! The stream is never trimmed by the broker; retention is the operator's
//! call (export, then `XTRIM`), and a trimmed head shows as a chain that
//! starts past record 0 when verified.

use std::time::Duration;

use redis::{RedisError, Value};

use super::conn::{self, Conn};
use super::{RedisConfig, store_error};
use crate::error::StoreError;

/// Appends records in order and atomically: all of a batch or none of it.
const APPEND: &str = r"
for i = 1, #ARGV do
  redis.call('XADD', KEYS[1], '*', 'r', ARGV[i])
end
return #ARGV
";

/// Most entries one [`AuditStream::read`] returns.
pub const MAX_AUDIT_PAGE: usize = 10_000;

/// One replica's audit stream.
pub struct AuditStream {
    conn: Conn,
    key: String,
    timeout: Duration,
    append: redis::Script,
}

impl std::fmt::Debug for AuditStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditStream")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// The stream key of `instance`'s audit records under `prefix`.
pub fn audit_stream_key(prefix: &str, instance: &str) -> String {
    format!("{prefix}:audit:{instance}")
}

impl AuditStream {
    /// Connects to the deployment `config` names, for `instance`'s stream.
    pub async fn connect(config: &RedisConfig, instance: &str) -> Result<Self, StoreError> {
        let conn = Conn::connect(&config.deployment, config.tls.as_ref(), config.timeout).await?;
        Ok(Self {
            conn,
            key: audit_stream_key(&config.key_prefix, instance),
            timeout: config.timeout,
            append: redis::Script::new(APPEND),
        })
    }

    /// The stream's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    async fn bounded<T>(&self, fut: impl Future<Output = Result<T, RedisError>>) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r.map_err(store_error),
            Err(_) => Err(StoreError::Unavailable(format!(
                "redis did not answer within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }

    /// The last record's line, `None` for an empty (or missing) stream.
    pub async fn last(&self) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn.clone();
        let v: Value = self
            .bounded(
                redis::cmd("XREVRANGE")
                    .arg(&self.key)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut conn),
            )
            .await?;
        Ok(conn::stream_entries(v).into_iter().next().map(|(_, line)| line))
    }

    /// Appends `lines` in order, all or none.
    pub async fn append(&self, lines: &[String]) -> Result<(), StoreError> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let mut invocation = self.append.key(&self.key);
        for line in lines {
            invocation.arg(line);
        }
        let _: i64 = self.bounded(invocation.invoke_async(&mut conn)).await?;
        Ok(())
    }

    /// Up to `count` (capped at [`MAX_AUDIT_PAGE`]) entries after stream id
    /// `after` (from the start when `None`), as `(id, line)` in order.
    pub async fn read(&self, after: Option<&str>, count: usize) -> Result<Vec<(String, String)>, StoreError> {
        let start = after.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
        let mut conn = self.conn.clone();
        let v: Value = self
            .bounded(
                redis::cmd("XRANGE")
                    .arg(&self.key)
                    .arg(start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(count.clamp(1, MAX_AUDIT_PAGE))
                    .query_async(&mut conn),
            )
            .await?;
        Ok(conn::stream_entries(v))
    }
}
