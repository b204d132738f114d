//! The processes a run starts: `redis-server`, `tesserad`, OpenBao and the
//! echo server. Every one is held by a [`Managed`] guard that kills it when
//! dropped (also when a scenario fails), and its pid is appended to a pid
//! file so the Makefile's `trap` can kill it if this process itself is killed.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// How long any process may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A child process killed on drop.
#[derive(Debug)]
pub struct Managed {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Managed {
    /// Spawns `cmd` with stdout and stderr to `log`, registering its pid in `pid_file`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path, pid_file: Option<&Path>) -> anyhow::Result<Self> {
        let out = std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd.spawn().with_context(|| format!("cannot start {name} ({cmd:?})"))?;
        if let Some(pid_file) = pid_file {
            let mut f = OpenOptions::new().create(true).append(true).open(pid_file)?;
            writeln!(f, "{}", child.id())?;
        }
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
            log: log.to_owned(),
        })
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Fails if it has exited, with the tail of its log.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            anyhow::bail!("{} exited with {status}:\n{}", self.name, self.log_tail());
        }
        Ok(())
    }

    /// The last 2 KiB of its log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(2048);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(text.len());
        text.get(start..).unwrap_or_default().to_owned()
    }

    /// Waits (bounded) until `ready()` returns `Some`, failing if the process exits.
    pub fn wait_ready<T>(&mut self, mut ready: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
        let started = Instant::now();
        loop {
            if let Some(v) = ready() {
                return Ok(v);
            }
            self.check_alive()?;
            if started.elapsed() > READY_TIMEOUT {
                anyhow::bail!("{} not ready within {READY_TIMEOUT:?}:\n{}", self.name, self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Kills it and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A free loopback port (bound and released; another process may take it
/// meanwhile, which only makes a start fail loudly).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Whether something accepts TCP connections on `127.0.0.1:port`.
pub fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

/// A `redis-server` on loopback with AOF `everysec`, as deployed.
#[derive(Debug)]
pub struct Redis {
    /// The process.
    pub proc: Managed,
    /// Its port.
    pub port: u16,
}

impl Redis {
    /// Starts it in `dir` (its data and log live there).
    pub fn start(dir: &Path, pid_file: Option<&Path>) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let port = free_port()?;
        let mut cmd = Command::new("redis-server");
        cmd.current_dir(dir).args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--maxmemory-policy",
            "noeviction",
            "--daemonize",
            "no",
        ]);
        cmd.arg("--dir").arg(dir);
        let mut proc = Managed::spawn("redis-server", cmd, &dir.join("redis.log"), pid_file)?;
        let url = format!("redis://127.0.0.1:{port}");
        proc.wait_ready(|| redis_cmd(&url, &["PING"]).ok())?;
        Ok(Self { proc, port })
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `INFO memory`'s `used_memory`, in bytes.
    pub fn used_memory(&self) -> anyhow::Result<u64> {
        Self::used_memory_at(&self.url())
    }

    /// `INFO memory`'s `used_memory` of the Redis at `url`, in bytes.
    pub fn used_memory_at(url: &str) -> anyhow::Result<u64> {
        let info = redis_cmd(url, &["INFO", "memory"])?;
        info_field(&info, "used_memory")
            .and_then(|v| v.parse().ok())
            .context("INFO memory has no used_memory")
    }

    /// `redis-server --version`, e.g. `7.0.15`.
    pub fn version() -> String {
        tool_version("redis-server", &["--version"])
            .split_whitespace()
            .find_map(|w| w.strip_prefix("v="))
            .unwrap_or("unknown")
            .to_owned()
    }
}

/// One Redis command, answered as text (bulk string, status or integer).
pub fn redis_cmd(url: &str, args: &[&str]) -> anyhow::Result<String> {
    let client = redis::Client::open(url)?;
    let mut con = client.get_connection_with_timeout(Duration::from_secs(2))?;
    let Some((name, rest)) = args.split_first() else {
        anyhow::bail!("empty Redis command");
    };
    let mut cmd = redis::cmd(name);
    for a in rest {
        cmd.arg(*a);
    }
    let value: redis::Value = cmd.query(&mut con)?;
    Ok(match value {
        redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        redis::Value::SimpleString(s) => s,
        redis::Value::Int(i) => i.to_string(),
        redis::Value::VerbatimString { text, .. } => text,
        other => format!("{other:?}"),
    })
}

/// `cmdstat_<command>:calls=N,...` of `INFO commandstats`: calls so far by
/// command (a script counts as `evalsha`, plus the commands it ran).
pub fn command_calls(url: &str) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
    let info = redis_cmd(url, &["INFO", "commandstats"])?;
    Ok(info
        .lines()
        .filter_map(|l| {
            let (name, stats) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats.split(',').find_map(|f| f.strip_prefix("calls="))?.parse().ok()?;
            Some((name.to_owned(), calls))
        })
        .collect())
}

/// What Redis's persistence was doing, from `INFO persistence` and
/// `INFO stats`: a fork (AOF rewrite) copies page tables and its child
/// competes for the same cores, so a window it overlaps measures it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Persistence {
    /// `total_forks`.
    pub forks: u64,
    /// `aof_rewrite_in_progress` or `aof_rewrite_scheduled` is set.
    pub rewriting: bool,
    /// `latest_fork_usec`.
    pub latest_fork_us: u64,
    /// The machine's page cache not yet on disk (`Dirty` + `Writeback` of
    /// `/proc/meminfo`), KiB: what a write burst (a preload's AOF) leaves
    /// for the disk to absorb while later fsyncs (the audit trail's, the
    /// AOF's) wait behind it.
    #[serde(default)]
    pub dirty_kib: u64,
}

impl Persistence {
    /// A snapshot of the Redis at `url`.
    pub fn at(url: &str) -> anyhow::Result<Self> {
        let info = redis_cmd(url, &["INFO", "all"])?;
        let num = |f: &str| {
            info_field(&info, f)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok(Self {
            forks: num("total_forks"),
            rewriting: num("aof_rewrite_in_progress") == 1 || num("aof_rewrite_scheduled") == 1,
            latest_fork_us: num("latest_fork_usec"),
            dirty_kib: dirty_kib(),
        })
    }
}

/// Leaves the Redis at `url` as a store that reached its size at its own
/// pace would be between two AOF rewrites: waits (at most `bound`) for a
/// rewrite in progress, rewrites the AOF once more (`BGREWRITEAOF`, waited
/// for), then writes the machine's dirty page cache out (`sync`). What a
/// write burst such as a preload leaves behind (a rewrite its growth
/// triggered or is about to trigger, hundreds of MiB of AOF not yet on
/// disk) is then not inside the next measured window: Redis rewrites again
/// only once the AOF doubled. Answers how long it took.
pub fn settle(url: &str, bound: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let wait_rewrites = || -> anyhow::Result<()> {
        while Persistence::at(url)?.rewriting {
            anyhow::ensure!(start.elapsed() < bound, "redis still rewriting its AOF after {bound:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    };
    wait_rewrites()?;
    start_rewrite(url, bound)?;
    wait_rewrites()?;
    let status = Command::new("sync").status().context("running sync")?;
    anyhow::ensure!(status.success(), "sync failed: {status}");
    Ok(start.elapsed())
}

/// Starts an AOF rewrite on the Redis at `url` and waits (at most `bound`)
/// until it runs or already ran (a small dataset's is over at once): until
/// Redis forked for it or says it is rewriting.
pub fn start_rewrite(url: &str, bound: Duration) -> anyhow::Result<()> {
    let forks = Persistence::at(url)?.forks;
    redis_cmd(url, &["BGREWRITEAOF"])?;
    let start = Instant::now();
    loop {
        let now = Persistence::at(url)?;
        if now.rewriting || now.forks > forks {
            return Ok(());
        }
        anyhow::ensure!(start.elapsed() < bound, "redis did not start rewriting its AOF");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `Dirty` + `Writeback` of `/proc/meminfo`, KiB (0 where unreadable).
pub fn dirty_kib() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    ["Dirty:", "Writeback:"]
        .iter()
        .filter_map(|f| {
            meminfo
                .lines()
                .find_map(|l| l.strip_prefix(f))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .sum()
}

/// `field:value` of an `INFO` answer.
pub fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim)
}

/// The first line a tool prints for `args` (its version), or `unknown`.
pub fn tool_version(tool: &str, args: &[&str]) -> String {
    Command::new(tool)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() { o.stderr } else { o.stdout };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The files `tessera dev init` wrote.
#[derive(Debug, Clone)]
pub struct DevPki {
    /// The directory.
    pub dir: PathBuf,
}

impl DevPki {
    /// Runs `tessera dev init --dir DIR`.
    pub fn init(tessera: &Path, dir: &Path) -> anyhow::Result<Self> {
        let out = Command::new(tessera)
            .args(["dev", "init", "--force", "--dir"])
            .arg(dir)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {}", tessera.display()))?;
        anyhow::ensure!(
            out.status.success(),
            "tessera dev init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Self { dir: dir.to_owned() })
    }

    /// The client identity `name` (`orchestrator`, `researcher`, `writer`, `alice`, `api-gateway`).
    pub fn identity(&self, name: &str) -> anyhow::Result<tessera_client::Identity> {
        Ok(tessera_client::Identity::from_files(
            self.dir.join("ca.pem"),
            self.dir.join(format!("identities/{name}.pem")),
            self.dir.join(format!("identities/{name}.key.pem")),
        )?)
    }
}

/// A `tesserad` on loopback.
#[derive(Debug)]
pub struct Tesserad {
    /// The process.
    pub proc: Managed,
    /// `127.0.0.1:PORT` of its gRPC listener.
    pub addr: String,
    /// `127.0.0.1:PORT` of its HTTPS OAuth facade, when it serves one.
    pub oauth_addr: Option<String>,
}

impl Tesserad {
    /// Starts `tesserad` on the dev configuration with `env` overrides.
    pub fn start(
        bin: &Path,
        pki: &DevPki,
        env: &[(String, String)],
        tag: &str,
        pid_file: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let ready = pki.dir.join(format!("ready-{tag}.json"));
        let _ = std::fs::remove_file(&ready);
        let mut cmd = Command::new(bin);
        cmd.arg("--config")
            .arg(pki.dir.join("tesserad.toml"))
            .arg("--ready-file")
            .arg(&ready);
        // Only our own settings reach it: tesserad refuses unknown TESSERA_* variables.
        for (k, _) in std::env::vars() {
            if k.starts_with("TESSERA_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("TESSERA_SERVER__LISTEN", "127.0.0.1:0")
            .env("TESSERA_SERVER__HTTP_LISTEN", "127.0.0.1:0")
            .env("TESSERA_SERVER__INSTANCE_ID", format!("tesserad-bench-{tag}"))
            // Its own audit file: a broker holds its file exclusively, and
            // brokers of several tags may run at once.
            .env("TESSERA_AUDIT__FILE", pki.dir.join(format!("audit-{tag}.jsonl")));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut proc = Managed::spawn("tesserad", cmd, &pki.dir.join(format!("tesserad-{tag}.log")), pid_file)?;
        let (addr, oauth_addr) = proc.wait_ready(|| {
            let text = std::fs::read_to_string(&ready).ok()?;
            let v: serde_json::Value = serde_json::from_str(&text).ok()?;
            let grpc = v.get("grpc").and_then(|g| g.as_str()).map(str::to_owned)?;
            Some((grpc, v.get("oauth").and_then(|g| g.as_str()).map(str::to_owned)))
        })?;
        Ok(Self { proc, addr, oauth_addr })
    }

    /// `https://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("https://{}", self.addr)
    }
}

/// `TESSERA_*` settings for a broker on Redis at `url`, as deployed, plus
/// [`free_ports_env`].
pub fn broker_env(redis_url: &str) -> Vec<(String, String)> {
    let mut env = vec![
        ("TESSERA_STORE__BACKEND".into(), "redis".into()),
        ("TESSERA_STORE__URLS".into(), format!("[\"{redis_url}\"]")),
    ];
    env.extend(free_ports_env());
    env
}

/// What every broker the bench starts gets: no per-identity rate limit and
/// live-grant caps far above what a run mints (the whole load comes from two
/// identities in a few tasks: a 30 s run at 16 in flight mints beyond the
/// default 100,000 live grants of one task, and the refusals past the cap
/// would count toward the anomaly rule and measure that instead of the
/// mint), and the OAuth facade that `tessera dev init` turns on on a free
/// port, not its fixed one (which another broker on the machine may hold).
pub fn free_ports_env() -> Vec<(String, String)> {
    vec![
        ("TESSERA_SERVER__PER_IDENTITY_RPS".into(), "0".into()),
        ("TESSERA_STORE__MAX_LIVE_GRANTS_PER_IDENTITY".into(), "10000000".into()),
        ("TESSERA_STORE__MAX_LIVE_GRANTS_PER_TASK".into(), "10000000".into()),
        ("TESSERA_OAUTH__LISTEN".into(), "127.0.0.1:0".into()),
    ]
}

/// The echo server (the transport floor): this crate's own binary run as
/// `tessera-bench echo-server`.
#[derive(Debug)]
pub struct EchoServer {
    /// The process.
    pub proc: Managed,
    /// `127.0.0.1:PORT`.
    pub addr: String,
}

impl EchoServer {
    /// Starts `bench_bin echo-server` with the broker's certificate and the dev CA.
    pub fn start(bench_bin: &Path, pki: &DevPki, pid_file: Option<&Path>) -> anyhow::Result<Self> {
        let ready = pki.dir.join("ready-echo.txt");
        let _ = std::fs::remove_file(&ready);
        let mut cmd = Command::new(bench_bin);
        cmd.arg("echo-server")
            .arg("--dev-dir")
            .arg(&pki.dir)
            .arg("--ready-file")
            .arg(&ready);
        let mut proc = Managed::spawn("echo-server", cmd, &pki.dir.join("echo.log"), pid_file)?;
        let addr = proc.wait_ready(|| {
            std::fs::read_to_string(&ready)
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        })?;
        Ok(Self { proc, addr })
    }

    /// `https://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("https://{}", self.addr)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]

    use super::*;

    #[test]
    fn info_fields_are_found() {
        let info = "# Memory\r\nused_memory:1024\r\nused_memory_human:1.00K\r\n";
        assert_eq!(info_field(info, "used_memory"), Some("1024"));
        assert_eq!(info_field(info, "used_memory_peak"), None);
    }

    #[test]
    fn a_managed_process_dies_with_its_guard() {
        let dir = std::env::temp_dir().join(format!("tessera-bench-procs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let pids = dir.join("pids");
        let p = Managed::spawn("sleep", cmd, &dir.join("sleep.log"), Some(&pids)).unwrap();
        let pid = p.pid();
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        assert_eq!(std::fs::read_to_string(&pids).unwrap().trim(), pid.to_string());
        drop(p);
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "reaped and gone");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
