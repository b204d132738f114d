//! Real `redis-server` processes for end-to-end and store conformance tests:
//! a standalone server ([`RedisServer`]), a 3-master Cluster
//! ([`RedisCluster`]) and a Sentinel-managed primary and replica
//! ([`RedisSentinels`]), each on free loopback ports in a fresh temporary
//! directory. Every process started here is killed on drop and its directory
//! removed, also when the test fails.
//!
//! The harness talks to Redis with `redis-cli` and a raw RESP `PING` over TCP,
//! so it does not depend on the `redis` crate. If `redis-server` is missing the
//! harness panics with how to install it: no test is skipped for lack of Redis.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test harness"
)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::TempDir;

/// How long a server gets to answer `PING` after it was spawned.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a cluster gets to report `cluster_state:ok` everywhere.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(10);
/// How many fresh ports a first start tries before giving up.
const PORT_ATTEMPTS: usize = 5;
/// How long a Sentinel deployment gets to be replicated and fully discovered.
const SENTINEL_READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the sentinels get to agree on a new primary after a kill.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a restarted old primary gets to be turned into a replica.
const REJOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The Sentinel master name of a [`RedisSentinels`] deployment.
const MASTER_NAME: &str = "tessera";

const INSTALL_HINT: &str = "run `make test` (it installs redis-server, redis-sentinel and redis-tools from Debian's packages) \
     or `apt-get install -y redis-server redis-sentinel redis-tools`";

/// Panics with install instructions unless `program --version` runs.
fn require(program: &str) {
    match Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("`{program}` is not on PATH: {INSTALL_HINT}")
        }
        Err(e) => panic!("cannot run `{program}`: {e}"),
    }
}

/// `n` distinct loopback ports that were free a moment ago (all bound at once,
/// then released).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap())
        .collect();
    listeners.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// Sends `sig` (`STOP`, `CONT`, ...) to `pid` with kill(1): the workspace
/// forbids `unsafe`, so no libc.
fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{sig} {pid} failed");
}

/// One RESP `PING`; `Some(reply line)` when the server answered at all.
fn ping(port: u16) -> Option<String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    stream.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    stream.set_write_timeout(Some(Duration::from_millis(500))).ok()?;
    stream.write_all(b"*1\r\n$4\r\nPING\r\n").ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    Some(line.trim_end().to_owned())
}

/// Options of a [`RedisServer`]; start it with [`RedisServerBuilder::start`].
#[derive(Debug, Clone)]
pub struct RedisServerBuilder {
    appendonly: bool,
    appendfsync: String,
    maxmemory: Option<String>,
    maxmemory_policy: String,
    extra_args: Vec<String>,
    cluster: bool,
    /// `Some(primary port)`: a sentinel monitoring `127.0.0.1:port` as
    /// [`MASTER_NAME`], run as `redis-server sentinel.conf --sentinel`; the
    /// data-node options above are then unused.
    sentinel_of: Option<u16>,
}

impl Default for RedisServerBuilder {
    fn default() -> Self {
        Self {
            appendonly: true,
            appendfsync: "always".into(),
            maxmemory: None,
            maxmemory_policy: "noeviction".into(),
            extra_args: Vec::new(),
            cluster: false,
            sentinel_of: None,
        }
    }
}

impl RedisServerBuilder {
    /// `--appendonly yes|no` (default yes: with `appendfsync always`, kill -9
    /// and restart keep every acknowledged write).
    pub fn appendonly(mut self, on: bool) -> Self {
        self.appendonly = on;
        self
    }

    /// `--appendfsync always|everysec|no` (default `always`).
    pub fn appendfsync(mut self, mode: &str) -> Self {
        mode.clone_into(&mut self.appendfsync);
        self
    }

    /// `--maxmemory` (e.g. `"2mb"`); unlimited by default.
    pub fn maxmemory(mut self, limit: &str) -> Self {
        self.maxmemory = Some(limit.to_owned());
        self
    }

    /// `--maxmemory-policy` (default `noeviction`).
    pub fn maxmemory_policy(mut self, policy: &str) -> Self {
        policy.clone_into(&mut self.maxmemory_policy);
        self
    }

    /// More `redis-server` arguments, appended last (so they override the
    /// defaults), e.g. `&["--enable-debug-command", "yes"]`.
    pub fn extra_args(mut self, args: &[&str]) -> Self {
        self.extra_args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// Spawns the server and waits (≤ 10 s) until it answers `PING`.
    pub fn start(self) -> RedisServer {
        RedisServer::spawn(self)
    }

    fn args(&self, port: u16, bus_port: Option<u16>, dir: &Path) -> Vec<String> {
        let yes_no = |b: bool| if b { "yes" } else { "no" }.to_owned();
        let mut args: Vec<String> = [
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--dir",
            &dir.display().to_string(),
            "--save",
            "",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
            "--logfile",
            &dir.join("redis.log").display().to_string(),
            "--maxmemory-policy",
            &self.maxmemory_policy,
            "--appendonly",
            &yes_no(self.appendonly),
            "--appendfsync",
            &self.appendfsync,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        if let Some(limit) = &self.maxmemory {
            args.extend(["--maxmemory".to_owned(), limit.clone()]);
        }
        if let Some(bus) = bus_port {
            // The default bus port (port + 10000) may be above 65535 for an
            // ephemeral port, so the bus gets a free port of its own.
            args.extend(
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus.to_string(),
                    "--cluster-config-file",
                    &dir.join("nodes.conf").display().to_string(),
                    "--cluster-node-timeout",
                    "2000",
                ]
                .iter()
                .map(|s| (*s).to_owned()),
            );
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }

    /// A sentinel's arguments. Its config file is written here only when
    /// missing: Sentinel rewrites it (its id, epochs, known replicas and peers)
    /// and a restarted sentinel must find that state again.
    fn sentinel_args(&self, primary: u16, port: u16, dir: &Path) -> Vec<String> {
        let conf = dir.join("sentinel.conf");
        if !conf.exists() {
            let quote = |p: &Path| {
                format!(
                    "\"{}\"",
                    p.display().to_string().replace('\\', "\\\\").replace('"', "\\\"")
                )
            };
            let text = format!(
                "port {port}\n\
                 bind 127.0.0.1\n\
                 daemonize no\n\
                 dir {dir}\n\
                 logfile {log}\n\
                 sentinel resolve-hostnames no\n\
                 sentinel monitor {MASTER_NAME} 127.0.0.1 {primary} 2\n\
                 sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                 sentinel failover-timeout {MASTER_NAME} 5000\n\
                 sentinel parallel-syncs {MASTER_NAME} 1\n",
                dir = quote(dir),
                log = quote(&dir.join("redis.log")),
            );
            std::fs::write(&conf, text).unwrap();
        }
        let mut args = vec![conf.display().to_string(), "--sentinel".to_owned()];
        args.extend(self.extra_args.iter().cloned());
        args
    }
}

/// Why a launch did not produce a ready server.
#[derive(Debug)]
enum LaunchError {
    /// The port (or cluster bus port) was taken between choosing and binding it.
    PortInUse,
    /// Anything else, with the server's output.
    Failed(String),
}

/// A `redis-server` child process on `127.0.0.1:port`, in its own temporary
/// directory. Killed (SIGKILL) and its directory removed on drop. The
/// sentinels of a [`RedisSentinels`] are `RedisServer`s too (in sentinel mode).
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    bus_port: Option<u16>,
    options: RedisServerBuilder,
    // Declared last: removed after the process is killed.
    dir: TempDir,
}

impl RedisServer {
    /// Options: `RedisServer::builder().appendonly(false).maxmemory_policy("allkeys-lru").start()`.
    pub fn builder() -> RedisServerBuilder {
        RedisServerBuilder::default()
    }

    /// A server with the defaults: AOF on with `appendfsync always`, no RDB
    /// snapshots, `maxmemory-policy noeviction`.
    pub fn start() -> Self {
        Self::builder().start()
    }

    fn spawn(options: RedisServerBuilder) -> Self {
        require("redis-server");
        require("redis-cli");
        if options.sentinel_of.is_some() {
            require("redis-sentinel");
        }
        let ports_needed = if options.cluster { 2 } else { 1 };
        let ports = free_ports(ports_needed);
        let mut server = Self {
            child: None,
            port: ports[0],
            bus_port: ports.get(1).copied(),
            options,
            dir: TempDir::new("redis"),
        };
        for attempt in 1..=PORT_ATTEMPTS {
            match server.launch() {
                Ok(()) => return server,
                Err(LaunchError::PortInUse) if attempt < PORT_ATTEMPTS => {
                    // A sentinel's config names its port: write a new one.
                    let _ = std::fs::remove_file(server.dir.path().join("sentinel.conf"));
                    let ports = free_ports(ports_needed);
                    server.port = ports[0];
                    server.bus_port = ports.get(1).copied();
                }
                Err(LaunchError::PortInUse) => panic!(
                    "redis-server found its port taken {PORT_ATTEMPTS} times:\n{}",
                    server.log()
                ),
                Err(LaunchError::Failed(out)) => panic!("redis-server did not start:\n{out}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Spawns the process on `self.port` and waits until it answers `PING`.
    fn launch(&mut self) -> Result<(), LaunchError> {
        assert!(self.child.is_none(), "redis-server is already running");
        let log = self.dir.path().join("redis.log");
        let log_start = std::fs::metadata(&log).map_or(0, |m| m.len());
        let out_path = self.dir.path().join("redis.out");
        let out = std::fs::File::create(&out_path).unwrap();
        // Sentinels run as Debian's `redis-sentinel` (the redis-sentinel
        // package, which `make redis` installs), data nodes as `redis-server`.
        let (program, args) = match self.options.sentinel_of {
            Some(primary) => (
                "redis-sentinel",
                self.options.sentinel_args(primary, self.port, self.dir.path()),
            ),
            None => (
                "redis-server",
                self.options.args(self.port, self.bus_port, self.dir.path()),
            ),
        };
        // redis-server chdirs to `dir` itself; starting there too keeps every
        // process in its directory from the first instant, which is what
        // `make redis-reap` looks at.
        let mut child = Command::new(program)
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {program} ({e}): {INSTALL_HINT}"));
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                // Only what this launch wrote: the log file is appended to.
                let log_text = std::fs::read(&log)
                    .map(|b| String::from_utf8_lossy(b.get(log_start as usize..).unwrap_or_default()).into_owned())
                    .unwrap_or_default();
                let output = format!(
                    "exit status {status}\n{}{log_text}",
                    std::fs::read_to_string(&out_path).unwrap_or_default()
                );
                return Err(if output.contains("Address already in use") {
                    LaunchError::PortInUse
                } else {
                    LaunchError::Failed(output)
                });
            }
            // `-LOADING` while the AOF is replayed: not ready yet.
            if ping(self.port).as_deref() == Some("+PONG") {
                self.child = Some(child);
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                return Err(LaunchError::Failed(format!(
                    "no PONG within {READY_TIMEOUT:?}\n{}",
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The server's directory (AOF, `nodes.conf`, `redis.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is alive (a paused process is alive).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => child.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// Everything the server logged so far, over all its restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// SIGKILL and wait: no shutdown, no final fsync. A no-op when not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server if it runs, then starts it again on the same port and
    /// directory: with AOF on, the data survives (with `appendfsync always`,
    /// every acknowledged write). Waits (≤ 10 s) for `PING`.
    pub fn restart(&mut self) {
        self.kill();
        let started = Instant::now();
        loop {
            match self.launch() {
                Ok(()) => return,
                // Someone else grabbed the port meanwhile: wait for it, bounded.
                Err(LaunchError::PortInUse) if started.elapsed() < READY_TIMEOUT => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(LaunchError::PortInUse) => {
                    panic!("port {} stayed taken for {READY_TIMEOUT:?} after the kill", self.port)
                }
                Err(LaunchError::Failed(out)) => panic!("redis-server did not restart:\n{out}"),
            }
        }
    }

    /// Kills the server, deletes its persistence files (AOF directory, any
    /// RDB), and starts it again on the same port: a Redis that restarted
    /// empty. A cluster node keeps its `nodes.conf`, so its slots.
    pub fn flushall_restart_empty(&mut self) {
        self.kill();
        for entry in std::fs::read_dir(self.dir.path()).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name == "appendonlydir" {
                std::fs::remove_dir_all(&path).unwrap();
            } else if name.ends_with(".aof") || name.ends_with(".rdb") {
                std::fs::remove_file(&path).unwrap();
            }
        }
        self.restart();
    }

    /// SIGSTOP: the process keeps its sockets but answers nothing.
    pub fn pause(&self) {
        signal(self.pid().expect("redis-server is not running"), "STOP");
    }

    /// A replica of this server (the defaults, AOF off), started and waited
    /// for (≤ 15 s) until it is in sync.
    pub fn start_replica(&self) -> RedisServer {
        let replica = RedisServer::builder()
            .appendonly(false)
            .extra_args(&["--replicaof", "127.0.0.1", &self.port.to_string()])
            .start();
        poll(SENTINEL_READY_TIMEOUT, "the replica did not sync", || {
            let info = replica.cli(&["INFO", "replication"]);
            if info.lines().any(|l| l.trim() == "master_link_status:up") {
                Ok(())
            } else {
                Err(info)
            }
        });
        replica
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub fn resume(&self) {
        signal(self.pid().expect("redis-server is not running"), "CONT");
    }

    /// `redis-cli -h 127.0.0.1 -p PORT args…`: its stdout without the trailing
    /// newline. Error replies come back as text (`ERR …`), as redis-cli exits 0
    /// on them. Panics if redis-cli fails or takes over 10 s (e.g. paused).
    pub fn cli(&self, args: &[&str]) -> String {
        run_cli(self.port, false, args)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        // The server's log survives a failing test in its output.
        if std::thread::panicking() {
            let log = self.log();
            let tail = log.get(log.len().saturating_sub(4000)..).unwrap_or(&log);
            let what = if self.options.sentinel_of.is_some() {
                "redis-sentinel"
            } else {
                "redis-server"
            };
            eprintln!("--- {what} :{} log (tail) ---\n{tail}", self.port);
        }
    }
}

/// Runs redis-cli against `port` (`-c`: follow cluster redirections), bounded
/// by 10 s.
fn run_cli(port: u16, cluster: bool, args: &[&str]) -> String {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    if cluster {
        cmd.arg("-c");
    }
    let output = run_bounded(cmd.args(args), Duration::from_secs(10));
    assert!(
        output.status.success(),
        "redis-cli -p {port} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim_end().to_owned()
}

/// Like [`run_cli`] without `-c`, but `None` instead of a panic when redis-cli
/// fails (e.g. the server is down).
fn try_cli(port: u16, args: &[&str]) -> Option<String> {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()]).args(args);
    let output = run_bounded(&mut cmd, Duration::from_secs(10));
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim_end().to_owned())
}

/// Runs `cmd` to completion, killing it and panicking after `limit`.
fn run_bounded(cmd: &mut Command, limit: Duration) -> std::process::Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} ({e}): {INSTALL_HINT}"));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            signal(pid, "KILL");
            panic!("{cmd:?} did not finish within {limit:?}");
        }
    }
}

/// A Redis Cluster of 3 masters and no replicas, each node a [`RedisServer`]
/// on its own free client and bus ports. Every node is killed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// A 3-master cluster without persistence (AOF off): it is for
    /// conformance tests, which want speed, not crash durability.
    pub fn start() -> Self {
        Self::start_with(RedisServer::builder().appendonly(false))
    }

    /// A 3-master cluster whose nodes use `options` (plus the cluster flags).
    pub fn start_with(options: RedisServerBuilder) -> Self {
        let options = RedisServerBuilder {
            cluster: true,
            ..options
        };
        let nodes: Vec<RedisServer> = (0..3).map(|_| options.clone().start()).collect();
        let addrs: Vec<String> = nodes.iter().map(RedisServer::addr).collect();
        let mut create = Command::new("redis-cli");
        create
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"]);
        let output = run_bounded(&mut create, CLUSTER_TIMEOUT);
        let cluster = Self { nodes };
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        cluster.wait_ok();
        cluster
    }

    /// Waits (≤ 10 s) until every node reports `cluster_state:ok`, all 16384
    /// slots assigned and all nodes known.
    pub fn wait_ok(&self) {
        let started = Instant::now();
        loop {
            let infos: Vec<String> = self.nodes.iter().map(|n| n.cli(&["CLUSTER", "INFO"])).collect();
            let known = format!("cluster_known_nodes:{}", self.nodes.len());
            if infos.iter().all(|info| {
                let lines: Vec<&str> = info.lines().map(str::trim).collect();
                ["cluster_state:ok", "cluster_slots_assigned:16384", &known]
                    .iter()
                    .all(|want| lines.contains(want))
            }) {
                return;
            }
            assert!(
                started.elapsed() < CLUSTER_TIMEOUT,
                "the cluster was not ok within {CLUSTER_TIMEOUT:?}:\n{}",
                infos.join("\n---\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The nodes' URLs, `redis://127.0.0.1:PORT/`, for a cluster client.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The nodes, e.g. to kill or pause one.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// One node, mutably (to [`RedisServer::kill`] or
    /// [`RedisServer::restart`] it).
    pub fn node_mut(&mut self, i: usize) -> &mut RedisServer {
        &mut self.nodes[i]
    }

    /// `redis-cli -c` against the first node: follows `MOVED` redirections.
    pub fn cli(&self, args: &[&str]) -> String {
        run_cli(self.nodes[0].port, true, args)
    }
}

/// Polls `check` every 100 ms until it returns `Ok`, panicking after `limit`
/// with `what` and the last `Err` (the state that was still wrong).
fn poll<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let started = Instant::now();
    loop {
        match check() {
            Ok(value) => return value,
            Err(state) => assert!(
                started.elapsed() < limit,
                "{what}: not within {limit:?}; last state:\n{state}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `SENTINEL replicas|sentinels` reply as redis-cli prints it (every
/// element of every map on its own line), split into one field list per
/// instance. Each map starts with its `name` field.
fn instances(reply: &str) -> Vec<Vec<(&str, &str)>> {
    let lines: Vec<&str> = reply.lines().collect();
    let mut instances: Vec<Vec<(&str, &str)>> = Vec::new();
    for pair in lines.chunks(2) {
        if let [key, value] = pair {
            if *key == "name" || instances.is_empty() {
                instances.push(Vec::new());
            }
            instances.last_mut().unwrap().push((key, value));
        }
    }
    instances
}

/// The value of `key` in one instance of [`instances`].
fn field<'a>(instance: &[(&str, &'a str)], key: &str) -> Option<&'a str> {
    instance.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// The port of `SENTINEL get-master-addr-by-name` from the sentinel on
/// `port`, `None` if it does not answer or knows no primary.
fn sentinel_primary(port: u16) -> Option<u16> {
    let reply = try_cli(port, &["SENTINEL", "get-master-addr-by-name", MASTER_NAME])?;
    match reply.lines().collect::<Vec<_>>().as_slice() {
        ["127.0.0.1", primary] => primary.parse().ok(),
        _ => None,
    }
}

/// A Sentinel deployment on loopback for failover tests: a primary and one
/// replica (both [`RedisServer`]s with the defaults: AOF with `appendfsync
/// always`, `noeviction`) watched by three sentinels (quorum 2) under the
/// master name `tessera`, which declare a silent primary down after 1 s.
/// Every process is a `redis-server` in its own `tessera-e2e-redis-*`
/// directory, so `make redis-reap` finds leftovers; all are killed on drop.
///
/// ```ignore
/// let mut redis = RedisSentinels::start();
/// let old = redis.kill_primary();
/// let new = redis.wait_for_failover(old);
/// redis.restart_old_primary(); // comes back as a replica of `new`
/// ```
#[derive(Debug)]
pub struct RedisSentinels {
    // Sentinels first: they stop before the data nodes they watch.
    sentinels: Vec<RedisServer>,
    /// `[0]` started as the primary, `[1]` as its replica.
    nodes: Vec<RedisServer>,
    /// The node [`RedisSentinels::kill_primary`] killed last.
    killed: Option<usize>,
}

impl RedisSentinels {
    /// Starts the primary, the replica and three sentinels, and waits
    /// (≤ 15 s) until the replica is in sync and every sentinel knows the
    /// primary, the replica and both other sentinels.
    pub fn start() -> Self {
        let started = Instant::now();
        // A primary waits `repl-diskless-sync-delay` (5 s by default) for
        // more replicas before it starts a full sync; nothing to wait for here.
        let data_node = RedisServer::builder().extra_args(&["--repl-diskless-sync-delay", "0"]);
        let primary = data_node.clone().start();
        let replica = data_node
            .extra_args(&["--replicaof", "127.0.0.1", &primary.port().to_string()])
            .start();
        // Before the sentinels start: a sentinel that asks the primary for its
        // replicas too early asks again only 10 s later.
        poll(SENTINEL_READY_TIMEOUT, "the replica did not sync", || {
            let info = replica.cli(&["INFO", "replication"]);
            if info.lines().any(|l| l.trim() == "master_link_status:up") {
                Ok(())
            } else {
                Err(info)
            }
        });
        let options = RedisServerBuilder {
            sentinel_of: Some(primary.port()),
            ..RedisServer::builder()
        };
        let sentinels = (0..3).map(|_| options.clone().start()).collect();
        let deployment = Self {
            sentinels,
            nodes: vec![primary, replica],
            killed: None,
        };
        let limit = SENTINEL_READY_TIMEOUT.saturating_sub(started.elapsed());
        poll(limit, "the sentinels did not discover the deployment", || {
            deployment
                .sentinels
                .iter()
                .try_for_each(|s| deployment.sentinel_ready(s))
        });
        deployment
    }

    /// `Ok` if `sentinel` reports the original primary, the replica (not
    /// down) and the two other sentinels; else what it reported.
    fn sentinel_ready(&self, sentinel: &RedisServer) -> Result<(), String> {
        let primary = sentinel_primary(sentinel.port());
        let replicas = sentinel.cli(&["SENTINEL", "replicas", MASTER_NAME]);
        let peers = sentinel.cli(&["SENTINEL", "sentinels", MASTER_NAME]);
        let replica_port = self.nodes[1].port().to_string();
        let replica_ok = instances(&replicas)
            .iter()
            .any(|r| field(r, "port") == Some(replica_port.as_str()) && field(r, "flags") == Some("slave"));
        if primary == Some(self.nodes[0].port()) && replica_ok && instances(&peers).len() == 2 {
            Ok(())
        } else {
            Err(format!(
                "sentinel :{} primary {primary:?}\nreplicas:\n{replicas}\nsentinels:\n{peers}",
                sentinel.port()
            ))
        }
    }

    /// The Sentinel master name, `tessera`.
    pub fn master_name(&self) -> &str {
        MASTER_NAME
    }

    /// The sentinels' URLs, `redis://127.0.0.1:PORT/`.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(RedisServer::url).collect()
    }

    /// The port of the current primary as sentinel 0 reports it.
    pub fn primary_port(&self) -> u16 {
        let sentinel = &self.sentinels[0];
        sentinel_primary(sentinel.port()).unwrap_or_else(|| {
            let reply = sentinel.cli(&["SENTINEL", "get-master-addr-by-name", MASTER_NAME]);
            panic!("sentinel 0 reports no primary: {reply:?}")
        })
    }

    /// SIGKILLs the current primary (as sentinel 0 reports it) and returns
    /// its port, for [`RedisSentinels::wait_for_failover`].
    pub fn kill_primary(&mut self) -> u16 {
        let port = self.primary_port();
        let i = self
            .nodes
            .iter()
            .position(|n| n.port() == port)
            .unwrap_or_else(|| panic!("sentinel 0 reports primary :{port}, not one of the data nodes"));
        self.nodes[i].kill();
        self.killed = Some(i);
        port
    }

    /// Waits (≤ 20 s) until every sentinel reports the same primary, on
    /// another port than `old_primary_port`, and that node answers `ROLE` as
    /// a master. Returns its port.
    pub fn wait_for_failover(&self, old_primary_port: u16) -> u16 {
        poll(FAILOVER_TIMEOUT, "no failover", || {
            let reported: Vec<Option<u16>> = self.sentinels.iter().map(|s| sentinel_primary(s.port())).collect();
            let state = || format!("sentinels report primaries {reported:?} (old :{old_primary_port})");
            let Some(Some(new)) = reported.first().copied() else {
                return Err(state());
            };
            if new == old_primary_port || reported.iter().any(|p| *p != Some(new)) {
                return Err(state());
            }
            match try_cli(new, &["ROLE"]) {
                Some(role) if role.lines().next() == Some("master") => Ok(new),
                role => Err(format!("{}; ROLE on :{new}: {role:?}", state())),
            }
        })
    }

    /// Restarts the node [`RedisSentinels::kill_primary`] killed (same port
    /// and directory, so its AOF) and waits (≤ 30 s) until the sentinels have
    /// made it a replica of the current primary and it is in sync. The old
    /// primary comes back believing it is a master, with the data it had
    /// when killed, and serves writes as one until Sentinel demotes it: a
    /// sentinel converts a returning old primary only after it has reported
    /// itself a master for 8 s, so this takes about 11 s.
    pub fn restart_old_primary(&mut self) {
        let i = self.killed.take().expect("kill_primary was not called");
        self.nodes[i].restart();
        let primary = self.primary_port();
        let node = &self.nodes[i];
        poll(REJOIN_TIMEOUT, "the old primary was not made a replica", || {
            let info = node.cli(&["INFO", "replication"]);
            let lines: Vec<&str> = info.lines().map(str::trim).collect();
            let want = ["role:slave", "master_link_status:up", &format!("master_port:{primary}")];
            if want.iter().all(|w| lines.contains(w)) {
                Ok(())
            } else {
                Err(info)
            }
        });
    }

    /// The data nodes: `[0]` started as the primary, `[1]` as its replica.
    /// A killed node stays in the list, not running.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The three sentinels (`cli` talks to a sentinel).
    pub fn sentinels(&self) -> &[RedisServer] {
        &self.sentinels
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_answers_set_and_get() {
        let redis = RedisServer::start();
        assert_eq!(redis.url(), format!("redis://127.0.0.1:{}/", redis.port()));
        assert_eq!(redis.cli(&["SET", "k", "v"]), "OK");
        assert_eq!(redis.cli(&["GET", "k"]), "v");
        assert_eq!(redis.cli(&["CONFIG", "GET", "appendfsync"]), "appendfsync\nalways");
        assert_eq!(
            redis.cli(&["CONFIG", "GET", "maxmemory-policy"]),
            "maxmemory-policy\nnoeviction"
        );
        assert_eq!(redis.cli(&["CONFIG", "GET", "save"]), "save");
    }

    #[test]
    fn kill_and_restart_keep_acknowledged_writes() {
        let mut redis = RedisServer::start();
        let port = redis.port();
        for i in 0..50 {
            assert_eq!(redis.cli(&["SET", &format!("k{i}"), &i.to_string()]), "OK");
        }
        redis.kill();
        assert!(!redis.is_running());
        redis.restart();
        assert_eq!(redis.port(), port);
        assert_eq!(redis.cli(&["DBSIZE"]), "50");
        assert_eq!(redis.cli(&["GET", "k49"]), "49");
    }

    #[test]
    fn flushall_restart_empty_loses_everything() {
        let mut redis = RedisServer::start();
        assert_eq!(redis.cli(&["SET", "k", "v"]), "OK");
        redis.flushall_restart_empty();
        assert_eq!(redis.cli(&["DBSIZE"]), "0");
        assert_eq!(redis.cli(&["GET", "k"]), "");
    }

    #[test]
    fn builder_options_reach_the_server() {
        let mut redis = RedisServer::builder()
            .appendonly(false)
            .maxmemory("2mb")
            .maxmemory_policy("allkeys-lru")
            .extra_args(&["--hz", "20"])
            .start();
        assert_eq!(
            redis.cli(&["CONFIG", "GET", "maxmemory-policy"]),
            "maxmemory-policy\nallkeys-lru"
        );
        assert_eq!(redis.cli(&["CONFIG", "GET", "maxmemory"]), "maxmemory\n2097152");
        assert_eq!(redis.cli(&["CONFIG", "GET", "hz"]), "hz\n20");
        // Without persistence a restart comes back empty.
        assert_eq!(redis.cli(&["SET", "k", "v"]), "OK");
        redis.restart();
        assert_eq!(redis.cli(&["DBSIZE"]), "0");
    }

    #[test]
    fn pause_stops_answers_until_resume() {
        let redis = RedisServer::builder().appendonly(false).start();
        redis.pause();
        assert!(ping(redis.port()).is_none(), "a paused server answered");
        redis.resume();
        assert_eq!(ping(redis.port()).as_deref(), Some("+PONG"));
    }

    #[test]
    fn cluster_serves_keys_in_different_slots() {
        let cluster = RedisCluster::start();
        assert_eq!(cluster.urls().len(), 3);
        assert_eq!(cluster.cli(&["SET", "{a}x", "1"]), "OK");
        assert_eq!(cluster.cli(&["SET", "{b}y", "1"]), "OK");
        assert_eq!(cluster.cli(&["GET", "{a}x"]), "1");
        assert_eq!(cluster.cli(&["GET", "{b}y"]), "1");
        // {a} and {b} hash to slots owned by different masters.
        let sizes: Vec<String> = cluster.nodes().iter().map(|n| n.cli(&["DBSIZE"])).collect();
        assert_eq!(sizes.iter().filter(|s| *s == "1").count(), 2, "{sizes:?}");
    }

    #[test]
    fn sentinels_fail_over_to_the_replica() {
        let started = Instant::now();
        let mut redis = RedisSentinels::start();
        assert_eq!(redis.master_name(), "tessera");
        assert_eq!(redis.sentinel_urls().len(), 3);
        let old = redis.primary_port();
        assert_eq!(old, redis.nodes()[0].port());
        assert_eq!(redis.nodes()[0].cli(&["SET", "before", "1"]), "OK");
        // Replication is asynchronous: wait until the replica has the write.
        assert_eq!(redis.nodes()[0].cli(&["WAIT", "1", "5000"]), "1");
        let ready = started.elapsed();
        assert_eq!(redis.kill_primary(), old);
        let new = redis.wait_for_failover(old);
        let failover = started.elapsed() - ready;
        assert_eq!(new, redis.nodes()[1].port());
        assert_eq!(redis.primary_port(), new);
        assert_eq!(run_cli(new, false, &["SET", "after", "1"]), "OK");
        assert_eq!(run_cli(new, false, &["GET", "before"]), "1");
        eprintln!("sentinels ready in {ready:?}, failover in {failover:?}");
    }
}
