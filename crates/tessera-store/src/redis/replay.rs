//! [`ReplayCache`] on Redis: one `SET key 1 NX PXAT until` per id, so the
//! first use is decided atomically by Redis for every replica, and the key
//! disappears when the id stops mattering.
//!
//! | key | type | holds | expires |
//! |---|---|---|---|
//! | `P:replay:<namespace>:<id>` | string | `1` | `until` (`PXAT`) |

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redis::Value;

use super::RedisStore;
use crate::error::StoreError;
use crate::replay::ReplayCache;

#[async_trait]
impl ReplayCache for RedisStore {
    async fn first_use(&self, namespace: &str, id: &str, until: DateTime<Utc>) -> Result<bool, StoreError> {
        crate::replay::check_namespace(namespace)?;
        let at = until.timestamp_millis();
        // Redis refuses PXAT <= 0; such an id is long expired: nothing to remember.
        if at <= 0 {
            return Ok(true);
        }
        // The namespace has no `:` (checked above) and the id ends the key,
        // so no two (namespace, id) pairs share one.
        let key = format!("{}:replay:{namespace}:{id}", self.config.key_prefix);
        // The SET and its WAIT in one pipeline on one connection, so the
        // WAIT covers this SET (see `RedisStore::durable_pipeline`).
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(&key).arg(1).arg("NX").arg("PXAT").arg(at);
        let set = self.durable_pipeline(&pipe, &[]).await?.into_iter().next();
        match set {
            // A first use is acknowledged only once replicas have it: a
            // failover must not let the same id be used again.
            Some(Value::Okay) => Ok(true),
            Some(Value::SimpleString(s)) if s == "OK" => Ok(true),
            Some(Value::Nil) => Ok(false),
            other => Err(StoreError::Unavailable(format!(
                "unexpected redis reply to SET NX: {other:?}"
            ))),
        }
    }
}
