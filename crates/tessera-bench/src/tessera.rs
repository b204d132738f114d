//! Scenarios against a running `tesserad`, driven over gRPC with mTLS as
//! the dev identities: mint, introspect, delegate, release, completing a task
//! that holds N grants, and revocation propagation to a subscribed verifier.
//!
//! Tokens stay in memory: they are never printed, logged or written out.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tessera_client::{AgentClient, Channel, OrchestratorClient, VerifierClient, pb};

use crate::load::{self, Latency, LoadResult, LoadSpec, Samples};
use crate::procstat::{CpuMeter, CpuUse};

/// The demo API of `tessera dev init`.
pub const CRM: &str = "https://api.example.com/crm";
/// The read scope every benchmark token carries.
pub const SCOPE: &str = "crm.contacts.read";
/// Token lifetime asked for (the dev agents may hold 10 minutes at most).
pub const TOKEN_TTL_SECS: u32 = 300;

/// A run's outcome: measured, not available in this build, or failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// Adjacently tagged: an internally tagged enum cannot hold a sequence
// (`Outcome<Vec<_>>`), which made a whole run's JSON fail to serialize.
#[serde(tag = "status", content = "value", rename_all = "snake_case")]
pub enum Outcome<T> {
    /// Measured.
    Measured(T),
    /// The feature is not in this build of tesserad or the SDK.
    NotAvailable {
        /// Why.
        reason: String,
    },
    /// The scenario ran and failed.
    Failed {
        /// The error.
        error: String,
    },
}

impl<T> Outcome<T> {
    /// The measurement, if there is one.
    pub fn measured(&self) -> Option<&T> {
        match self {
            Self::Measured(m) => Some(m),
            _ => None,
        }
    }

    /// `Failed` from an error.
    pub fn failed(e: &anyhow::Error) -> Self {
        Self::Failed {
            error: format!("{e:#}"),
        }
    }
}

/// A load run and the server CPU it cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    /// The load run.
    pub load: LoadResult,
    /// CPU of the server processes during it.
    pub cpu: CpuUse,
    /// Server CPU µs per successful operation.
    pub cpu_us_per_op: Option<f64>,
}

/// Runs `op` under `spec`, metering the CPU of `pids`.
pub async fn measure<F, Fut>(pids: &[(&str, u32)], spec: &LoadSpec, quiet: bool, op: F) -> anyhow::Result<Measured>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    let meter = CpuMeter::start(pids)?;
    let load = load::run(spec, quiet, op).await?;
    let cpu = meter.stop()?;
    let cpu_us_per_op = cpu.per_op(load.ok);
    Ok(Measured {
        load,
        cpu,
        cpu_us_per_op,
    })
}

/// Where the broker is and how to reach it.
#[derive(Debug, Clone)]
pub struct Target {
    /// `https://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The dev PKI directory (`tessera dev init`).
    pub dev_dir: std::path::PathBuf,
    /// Server processes whose CPU counts (tesserad, redis-server).
    pub pids: Vec<(String, u32)>,
    /// Hide progress bars.
    pub quiet: bool,
    /// gRPC connections per client pool.
    pub connections: usize,
}

/// A dev identity's mTLS material.
pub fn identity(dev_dir: &Path, name: &str) -> anyhow::Result<tessera_client::Identity> {
    Ok(tessera_client::Identity::from_files(
        dev_dir.join("ca.pem"),
        dev_dir.join(format!("identities/{name}.pem")),
        dev_dir.join(format!("identities/{name}.key.pem")),
    )?)
}

/// `connections` channels to `endpoint` as `name`.
pub async fn channels(endpoint: &str, dev_dir: &Path, name: &str, connections: usize) -> anyhow::Result<Vec<Channel>> {
    let id = identity(dev_dir, name)?;
    let mut out = Vec::with_capacity(connections.max(1));
    for _ in 0..connections.max(1) {
        out.push(tessera_client::connect(endpoint, &id).await?);
    }
    Ok(out)
}

fn pick(pool: &[Channel], n: u64) -> Channel {
    let i = usize::try_from(n).unwrap_or(0) % pool.len().max(1);
    // INVARIANT: pools are built with at least one channel.
    pool.get(i)
        .or_else(|| pool.first())
        .cloned()
        .unwrap_or_else(unreachable_channel)
}

#[expect(clippy::panic, reason = "pools are never empty: `channels` opens at least one")]
fn unreachable_channel() -> Channel {
    panic!("empty channel pool")
}

fn status_text(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// A unique task id for this run.
pub fn task_id(tag: &str) -> String {
    let r = tessera_core::grant::random_id().unwrap_or_else(|_| "norandom".into());
    let r: String = r.chars().filter(char::is_ascii_alphanumeric).take(10).collect();
    format!("bench-{tag}-{r}")
}

impl Target {
    pub(crate) fn pid_refs(&self) -> Vec<(&str, u32)> {
        self.pids.iter().map(|(n, p)| (n.as_str(), *p)).collect()
    }

    /// Starts a task for the dev agents `researcher` and `writer` lasting `secs`.
    pub async fn start_task(&self, tag: &str, secs: u32) -> anyhow::Result<String> {
        let agents: Vec<String> = ["researcher", "writer"]
            .iter()
            .map(|a| format!("spiffe://tessera.local/agent/{a}"))
            .collect();
        self.start_task_for(tag, &agents, secs).await
    }

    /// Starts a task for `agents` (SPIFFE IDs) lasting `secs`.
    pub async fn start_task_for(&self, tag: &str, agents: &[String], secs: u32) -> anyhow::Result<String> {
        let id = task_id(tag);
        let ch = channels(&self.endpoint, &self.dev_dir, "orchestrator", 1).await?;
        let mut orch = OrchestratorClient::new(pick(&ch, 0));
        orch.start_task(pb::StartTaskRequest {
            authorization_details: String::new(),
            task_id: id.clone(),
            agents: agents.to_vec(),
            scope_ceiling: [(
                CRM.to_owned(),
                pb::ScopeSet {
                    scopes: vec![SCOPE.to_owned(), "crm.notes.read".to_owned()],
                },
            )]
            .into_iter()
            .collect(),
            lifetime: Some(pb::start_task_request::Lifetime::DurationSeconds(secs)),
            labels: Default::default(),
            parent_task_id: String::new(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("StartTask: {}", status_text(&s)))?;
        Ok(id)
    }

    /// RequestToken under `spec` in one task, as `researcher`.
    pub async fn mint(&self, spec: &LoadSpec) -> anyhow::Result<Measured> {
        let task = Arc::new(self.start_task("mint", 3600).await?);
        let pool = Arc::new(channels(&self.endpoint, &self.dev_dir, "researcher", self.connections).await?);
        measure(&self.pid_refs(), spec, self.quiet, move |n| {
            let task = task.clone();
            let pool = pool.clone();
            async move { mint_one(&pool, n, &task).await.map(|_| ()) }
        })
        .await
    }

    /// Mints `count` tokens in `task` (concurrently), returning (token, grant id) pairs.
    pub async fn mint_many(&self, task: &str, count: u64) -> anyhow::Result<Vec<(String, String)>> {
        let pool = Arc::new(channels(&self.endpoint, &self.dev_dir, "researcher", self.connections).await?);
        let out = Arc::new(std::sync::Mutex::new(Vec::with_capacity(
            usize::try_from(count).unwrap_or(0),
        )));
        let task = Arc::new(task.to_owned());
        let spec = LoadSpec::closed("preparing tokens", 32).for_count(count);
        let sink = out.clone();
        // Small batches (one per propagation task) would only flash a bar.
        let r = load::run(&spec, self.quiet || count < 1000, move |n| {
            let task = task.clone();
            let pool = pool.clone();
            let sink = sink.clone();
            async move {
                let t = mint_one(&pool, n, &task).await?;
                sink.lock()
                    .map_err(|_| "poisoned".to_owned())?
                    .push((t.access_token, t.grant_id));
                Ok(())
            }
        })
        .await?;
        anyhow::ensure!(
            r.errors == 0,
            "preparing {count} tokens: {} failed: {:?}",
            r.errors,
            r.error_samples
        );
        let tokens = std::mem::take(&mut *out.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
        Ok(tokens)
    }

    /// Introspect under `spec`, as `api-gateway`, over a pool of `pool_size` live tokens.
    pub async fn introspect(&self, spec: &LoadSpec, pool_size: u64) -> anyhow::Result<Measured> {
        let task = self.start_task("introspect", 3600).await?;
        let tokens: Arc<Vec<String>> = Arc::new(
            self.mint_many(&task, pool_size.max(1))
                .await?
                .into_iter()
                .map(|(t, _)| t)
                .collect(),
        );
        let pool = Arc::new(channels(&self.endpoint, &self.dev_dir, "api-gateway", self.connections).await?);
        measure(&self.pid_refs(), spec, self.quiet, move |n| {
            let tokens = tokens.clone();
            let pool = pool.clone();
            async move {
                let i = usize::try_from(n).unwrap_or(0) % tokens.len().max(1);
                let token = tokens.get(i).cloned().unwrap_or_default();
                let mut v = VerifierClient::new(pick(&pool, n));
                let r = v
                    .introspect(pb::IntrospectRequest { token })
                    .await
                    .map_err(|s| status_text(&s))?;
                if r.into_inner().active {
                    Ok(())
                } else {
                    Err("a live token was reported inactive".to_owned())
                }
            }
        })
        .await
    }

    /// ReleaseToken of `count` freshly minted grants, as `researcher`, with `concurrency` in flight.
    pub async fn release(&self, count: u64, concurrency: usize) -> anyhow::Result<Measured> {
        let task = self.start_task("release", 3600).await?;
        let grants: Arc<Vec<String>> = Arc::new(
            self.mint_many(&task, count.max(1))
                .await?
                .into_iter()
                .map(|(_, g)| g)
                .collect(),
        );
        let pool = Arc::new(channels(&self.endpoint, &self.dev_dir, "researcher", self.connections).await?);
        let spec = LoadSpec::closed("tessera release", concurrency).for_count(grants.len() as u64);
        measure(&self.pid_refs(), &spec, self.quiet, move |n| {
            let grants = grants.clone();
            let pool = pool.clone();
            async move {
                let id = grants
                    .get(usize::try_from(n).unwrap_or(usize::MAX))
                    .cloned()
                    .unwrap_or_default();
                let mut a = AgentClient::new(pick(&pool, n));
                let r = a
                    .release_token(pb::ReleaseTokenRequest {
                        target: Some(pb::release_token_request::Target::GrantId(id)),
                    })
                    .await
                    .map_err(|s| status_text(&s))?;
                if r.into_inner().revoked {
                    Ok(())
                } else {
                    Err("release revoked nothing".to_owned())
                }
            }
        })
        .await
    }

    /// DelegateToken under `spec`: `researcher` delegates a read token to `writer`.
    /// `NotAvailable` when this tesserad answers UNIMPLEMENTED.
    pub async fn delegate(&self, spec: &LoadSpec) -> anyhow::Result<Outcome<Measured>> {
        let task = self.start_task("delegate", 3600).await?;
        let parents: Arc<Vec<String>> =
            Arc::new(self.mint_many(&task, 100).await?.into_iter().map(|(t, _)| t).collect());
        let pool = Arc::new(channels(&self.endpoint, &self.dev_dir, "researcher", self.connections).await?);
        // Probe once: a build without delegation answers UNIMPLEMENTED.
        if let Err(s) = delegate_one(&pool, 0, &parents).await {
            if s.code() == tonic::Code::Unimplemented {
                return Ok(Outcome::NotAvailable {
                    reason: format!("DelegateToken answers UNIMPLEMENTED: {}", s.message()),
                });
            }
            return Ok(Outcome::Failed {
                error: format!("DelegateToken: {}", status_text(&s)),
            });
        }
        let m = measure(&self.pid_refs(), spec, self.quiet, move |n| {
            let parents = parents.clone();
            let pool = pool.clone();
            async move { delegate_one(&pool, n, &parents).await.map_err(|s| status_text(&s)) }
        })
        .await?;
        Ok(Outcome::Measured(m))
    }

    /// Completes a task holding `grants` grants while `subscribers` SDK
    /// verifiers follow the broker: the reply time, and the time from the
    /// call until every verifier refuses the task's tokens. The clock stops
    /// when each verifier refuses the last token minted; afterwards (not
    /// timed) every token is checked to be refused by every verifier.
    pub async fn complete_task(&self, grants: u64, subscribers: usize) -> anyhow::Result<CompleteTask> {
        anyhow::ensure!(
            grants > 0,
            "a task of no grants revokes nothing a verifier could refuse"
        );
        let mut verifiers = Vec::with_capacity(subscribers);
        for _ in 0..subscribers.max(1) {
            verifiers.push(crate::sdk::connect(self).await?);
        }
        let task = self.start_task("complete", 3600).await?;
        let tokens: Vec<String> = self
            .mint_many(&task, grants)
            .await?
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        let last = tokens.last().cloned().unwrap_or_default();
        for v in &verifiers {
            v.verify_cached(&tessera_client::Presented::bearer(&last))
                .map_err(|e| anyhow::anyhow!("an SDK verifier refused a live token: {e}"))?;
        }
        let ch = channels(&self.endpoint, &self.dev_dir, "orchestrator", 1).await?;
        let mut orch = OrchestratorClient::new(pick(&ch, 0));
        let meter = CpuMeter::start(&self.pid_refs())?;
        let called = Instant::now();
        let watchers: Vec<_> = verifiers.iter().map(|v| crate::sdk::refused_at(v, &last)).collect();
        let complete = async {
            let r = orch
                .complete_task(pb::CompleteTaskRequest {
                    task_id: task.clone(),
                    reason: "benchmark".into(),
                })
                .await;
            (r, called.elapsed())
        };
        let ((reply, replied), refused) = tokio::join!(complete, futures::future::join_all(watchers));
        let reply = reply
            .map_err(|s| anyhow::anyhow!("CompleteTask: {}", status_text(&s)))?
            .into_inner();
        let mut all_refused = Duration::ZERO;
        for at in refused {
            all_refused = all_refused.max(at?.saturating_duration_since(called));
        }
        let cpu = meter.stop()?;
        anyhow::ensure!(
            reply.grants_revoked == grants,
            "CompleteTask revoked {} grants, expected {grants}",
            reply.grants_revoked
        );
        for v in &verifiers {
            crate::sdk::all_refused(v, &tokens)?;
        }
        Ok(CompleteTask {
            grants,
            subscribers: verifiers.len(),
            reply_us: u64::try_from(replied.as_micros()).unwrap_or(u64::MAX),
            all_refused_us: u64::try_from(all_refused.as_micros()).unwrap_or(u64::MAX),
            cpu_us: cpu.total_us(),
        })
    }

    /// Revocation propagation over `tasks` tasks of one grant each: the time
    /// from the CompleteTask reply until a subscribed SDK verifier refuses
    /// the task's token (zero when it already did before the reply).
    pub async fn propagation(&self, tasks: u64) -> anyhow::Result<Propagation> {
        let verifier = crate::sdk::connect(self).await?;
        let ch = channels(&self.endpoint, &self.dev_dir, "orchestrator", 1).await?;
        let mut orch = OrchestratorClient::new(pick(&ch, 0));
        let mut samples = Samples::default();
        let mut before_reply = 0u64;
        let bar = load::progress_bar("tessera propagation", Some(tasks), self.quiet);
        for _ in 0..tasks {
            let task = self.start_task("propagation", 600).await?;
            let (token, _) = self
                .mint_many(&task, 1)
                .await?
                .pop()
                .ok_or_else(|| anyhow::anyhow!("no token minted"))?;
            verifier
                .verify_cached(&tessera_client::Presented::bearer(&token))
                .map_err(|e| anyhow::anyhow!("the SDK verifier refused a live token: {e}"))?;
            let watcher = crate::sdk::refused_at(&verifier, &token);
            let complete = async {
                let r = orch
                    .complete_task(pb::CompleteTaskRequest {
                        task_id: task.clone(),
                        reason: "benchmark".into(),
                    })
                    .await;
                (r, Instant::now())
            };
            let ((reply, replied), at) = tokio::join!(complete, watcher);
            reply.map_err(|s| anyhow::anyhow!("CompleteTask: {}", status_text(&s)))?;
            let at = at?;
            if at < replied {
                before_reply += 1;
            }
            samples.record(at.saturating_duration_since(replied));
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok(Propagation {
            tasks,
            latency: samples.latency(),
            arrived_before_reply: before_reply,
            verifier: "tessera_client::Verifier (SDK), polled every 100 µs".into(),
        })
    }
}

async fn mint_one(pool: &[Channel], n: u64, task: &str) -> Result<pb::IssuedToken, String> {
    let mut agent = AgentClient::new(pick(pool, n));
    let r = agent
        .request_token(pb::RequestTokenRequest {
            task_id: task.to_owned(),
            audience: CRM.into(),
            scopes: vec![SCOPE.into()],
            ttl_seconds: Some(TOKEN_TTL_SECS),
            ..Default::default()
        })
        .await
        .map_err(|s| status_text(&s))?;
    match r.into_inner().outcome {
        Some(pb::request_token_response::Outcome::Token(t)) if !t.access_token.is_empty() => Ok(t),
        Some(pb::request_token_response::Outcome::Pending(_)) => Err("the request is pending approval".into()),
        _ => Err("no token in the reply".into()),
    }
}

async fn delegate_one(pool: &[Channel], n: u64, parents: &[String]) -> Result<(), tonic::Status> {
    let i = usize::try_from(n).unwrap_or(0) % parents.len().max(1);
    let mut agent = AgentClient::new(pick(pool, n));
    let r = agent
        .delegate_token(pb::DelegateTokenRequest {
            parent_token: parents.get(i).cloned().unwrap_or_default(),
            delegate: "spiffe://tessera.local/agent/writer".into(),
            scopes: vec![SCOPE.into()],
            ttl_seconds: Some(60),
            ..Default::default()
        })
        .await?;
    if r.into_inner().access_token.is_empty() {
        return Err(tonic::Status::internal("no token in the reply"));
    }
    Ok(())
}

/// Completing one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompleteTask {
    /// Grants the task held.
    pub grants: u64,
    /// Verifiers following the feed.
    pub subscribers: usize,
    /// CompleteTask call to reply.
    pub reply_us: u64,
    /// CompleteTask call until the last subscriber had the revocation.
    pub all_refused_us: u64,
    /// Server CPU from the call until every subscriber had it.
    pub cpu_us: u64,
}

/// Revocation propagation over many tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Propagation {
    /// Tasks completed.
    pub tasks: u64,
    /// CompleteTask reply → the verifier has the revocation.
    pub latency: Latency,
    /// Revocations the verifier had before the reply arrived (counted as 0).
    pub arrived_before_reply: u64,
    /// What the verifier was.
    pub verifier: String,
}
