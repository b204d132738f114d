//! Live grants at scale: preloading Redis with grants in the store's own
//! format, through `tessera-store`'s `RedisStore` (the very code tesserad
//! writes with), so the keys, indexes and expiries are exactly the real ones.
//!
//! Grants are spread over tasks of 1,000 grants and 1,000 synthetic
//! subjects (an agent fleet), live for an hour: long enough that none
//! expires during the run.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tessera_core::clock::{Clock as _, SystemClock};
use tessera_core::grant::{Grant, GrantState};
use tessera_core::identity::SpiffeId;
use tessera_core::task::{Audience, Scope, ScopeCeiling, ScopeClass, Task, TaskId, TaskState};
use tessera_store::{GrantStore as _, RedisConfig, RedisDeployment, RedisStore};

use crate::procstat::CpuMeter;

/// Grants per preloaded task.
pub const GRANTS_PER_TASK: u64 = 1000;
/// Distinct preloaded subjects.
pub const SUBJECTS: u64 = 1000;
/// Writes in flight while preloading.
const IN_FLIGHT: usize = 256;

/// What a preload did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preload {
    /// Grants written.
    pub grants: u64,
    /// Wall time.
    pub elapsed_s: f64,
    /// redis-server CPU µs per grant written through the store (both the
    /// subject index and the grant script).
    pub redis_cpu_us_per_grant: Option<f64>,
    /// `used_memory` before.
    pub used_memory_before: u64,
    /// `used_memory` after.
    pub used_memory_after: u64,
}

impl Preload {
    /// Redis memory per live grant, indexes included.
    pub fn bytes_per_grant(&self) -> Option<f64> {
        (self.grants > 0)
            .then(|| self.used_memory_after.saturating_sub(self.used_memory_before) as f64 / self.grants as f64)
    }
}

fn parse<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> anyhow::Result<T> {
    r.map_err(|e| anyhow::anyhow!("{what}: {e}"))
}

fn task(id: &TaskId, now: DateTime<Utc>) -> anyhow::Result<Task> {
    let aud = parse(Audience::parse(crate::tessera::CRM), "audience")?;
    Ok(Task {
        tools: Vec::new(),
        id: id.clone(),
        orchestrator: parse(SpiffeId::parse("spiffe://tessera.local/orchestrator"), "orchestrator")?,
        agents: BTreeSet::from([parse(
            SpiffeId::parse("spiffe://tessera.local/agent/researcher"),
            "agent",
        )?]),
        ceiling: ScopeCeiling(BTreeMap::from([(
            aud,
            BTreeSet::from([parse(Scope::parse(crate::tessera::SCOPE), "scope")?]),
        )])),
        deadline: now + chrono::Duration::hours(2),
        labels: BTreeMap::new(),
        parent: None,
        state: TaskState::Active,
        created_at: now,
        ended_at: None,
    })
}

/// Writes `grants` live grants into the Redis at `url`, measuring Redis's
/// CPU (`redis_pid`) and memory around it.
pub async fn preload(url: &str, redis_pid: u32, grants: u64, tag: &str, quiet: bool) -> anyhow::Result<Preload> {
    let store = Arc::new(
        RedisStore::connect(RedisConfig::new(RedisDeployment::Standalone { url: url.to_owned() }))
            .await
            .map_err(|e| anyhow::anyhow!("connecting the store: {e}"))?,
    );
    let clock = SystemClock;
    let now = clock.now();
    let tasks = grants.div_ceil(GRANTS_PER_TASK);
    let mut task_ids = Vec::new();
    for i in 0..tasks {
        let id = parse(TaskId::parse(&format!("preload-{tag}-{i}")), "task id")?;
        store
            .create_task(&task(&id, now)?)
            .await
            .map_err(|e| anyhow::anyhow!("creating a preload task: {e}"))?;
        task_ids.push(id);
    }
    let task_ids = Arc::new(task_ids);
    let subjects: Arc<Vec<SpiffeId>> = Arc::new(
        (0..SUBJECTS)
            .map(|i| {
                parse(
                    SpiffeId::parse(&format!("spiffe://tessera.local/agent/fleet-{i}")),
                    "subject",
                )
            })
            .collect::<anyhow::Result<_>>()?,
    );
    let before = crate::procs::Redis::used_memory_at(url)?;
    let meter = CpuMeter::start(&[("redis-server", redis_pid)])?;
    let started = Instant::now();
    let spec = crate::load::LoadSpec::closed(&format!("preloading {grants} grants"), IN_FLIGHT).for_count(grants);
    let r = crate::load::run(&spec, quiet, move |n| {
        let store = store.clone();
        let task_ids = task_ids.clone();
        let subjects = subjects.clone();
        async move {
            let t = task_ids
                .get(usize::try_from(n / GRANTS_PER_TASK).unwrap_or(usize::MAX))
                .ok_or("no task")?;
            let s = subjects
                .get(usize::try_from(n % SUBJECTS).unwrap_or(usize::MAX))
                .ok_or("no subject")?;
            let id = store.new_grant_id(t).await.map_err(|e| e.to_string())?;
            let grant = Grant {
                id,
                task_id: t.clone(),
                subject: s.clone(),
                audience: Audience::parse(crate::tessera::CRM).map_err(|e| e.to_string())?,
                scopes: BTreeSet::from([Scope::parse(crate::tessera::SCOPE).map_err(|e| e.to_string())?]),
                class: ScopeClass::Read,
                issued_at: now,
                expires_at: now + chrono::Duration::hours(1),
                parent: None,
                key_id: "bench-preload-key-0000000000".into(),
                state: GrantState::Active,
                revoked_at: None,
                revocation_reason: None,
                impact: tessera_core::grant::GrantImpact::default(),
            };
            store.record_grant(&grant, now).await.map_err(|e| e.to_string())
        }
    })
    .await?;
    let cpu = meter.stop()?;
    anyhow::ensure!(
        r.errors == 0,
        "preloading: {} of {grants} writes failed: {:?}",
        r.errors,
        r.error_samples
    );
    let after = crate::procs::Redis::used_memory_at(url)?;
    Ok(Preload {
        grants: r.ok,
        elapsed_s: started.elapsed().as_secs_f64(),
        redis_cpu_us_per_grant: cpu.per_op(r.ok),
        used_memory_before: before,
        used_memory_after: after,
    })
}
