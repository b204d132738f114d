//! [`ReplayCache`] on Redis: one `SET key 1 NX PXAT until` per id, so every
//! replica shares the answer. Key: `<prefix>:replay:<namespace>:<id>`, in
//! its own slot (nothing else needs to be atomic with it).

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::RedisStore;
use crate::error::StoreError;
use crate::replay::{ReplayCache, check_id};

#[async_trait]
impl ReplayCache for RedisStore {
    async fn first_use(&self, namespace: &str, id: &str, until: DateTime<Utc>) -> Result<bool, StoreError> {
        check_id(namespace, id)?;
        let key = format!("{}:replay:{namespace}:{id}", self.config.key_prefix);
        let mut conn = self.conn();
        // Nil when the key exists: a replay.
        let set: Option<String> = self
            .bounded(
                redis::cmd("SET")
                    .arg(&key)
                    .arg(1)
                    .arg("NX")
                    .arg("PXAT")
                    .arg(until.timestamp_millis().max(1))
                    .query_async(&mut conn),
            )
            .await?;
        Ok(set.is_some())
    }
}
