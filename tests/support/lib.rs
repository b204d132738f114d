//! Harness for end-to-end tests: a fresh dev PKI from the real `tessera dev
//! init`, the real `tesserad` binary on a free loopback port, and clients that
//! speak to it over mTLS. Every process started here is stopped on drop.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test harness"
)]
#![allow(missing_docs, reason = "test harness")]

pub mod attestation;
pub mod proxy;
pub mod redis;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use tessera_client::pb;
use tessera_client::{AdminClient, AgentClient, Channel, Identity, OrchestratorClient, VerifierClient};

/// The demo API from `tessera dev init`.
pub const CRM: &str = "https://api.example.com/crm";
/// The demo trust domain.
pub const TD: &str = "tessera.local";

/// Directory holding the workspace's built binaries.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TESSERA_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // target/<profile>/deps/<test-binary> → target/<profile>
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    for bin in ["tesserad", "tessera"] {
        assert!(
            dir.join(bin).exists(),
            "{} not found: run `cargo build --workspace --bins` first (make test does)",
            dir.join(bin).display()
        );
    }
    dir
}

/// A fresh temporary directory, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tessera-e2e-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `tessera dev init` into a fresh directory.
pub fn dev_init(tag: &str) -> TempDir {
    let dir = TempDir::new(tag);
    let out = Command::new(bin_dir().join("tessera"))
        .args(["dev", "init", "--dir"])
        .arg(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dev init failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// The store end-to-end tests run on: `memory` (default) or `redis`
/// (`TESSERA_TEST_STORE=redis`, which `make test` runs as a second pass).
pub fn test_store() -> String {
    std::env::var("TESSERA_TEST_STORE").unwrap_or_else(|_| "memory".into())
}

/// `TESSERA_*` settings that point a broker at `url`.
pub fn redis_env(url: &str) -> Vec<(String, String)> {
    vec![
        ("TESSERA_STORE__BACKEND".into(), "redis".into()),
        ("TESSERA_STORE__URLS".into(), format!("[\"{url}\"]")),
    ]
}

/// A running `tesserad`.
#[derive(Debug)]
pub struct Broker {
    child: Option<Child>,
    pub dir: std::sync::Arc<TempDir>,
    /// This broker's audit file.
    pub audit: PathBuf,
    pub addr: String,
    /// The plain-HTTP operations address (`/metrics`, `/healthz`, `/readyz`),
    /// when the ready file names one.
    pub http_addr: Option<String>,
    /// The HTTPS OAuth facade address, when the ready file names one.
    pub oauth_addr: Option<String>,
    log: PathBuf,
    env: Vec<(String, String)>,
    /// The Redis this broker (and its replicas) use, when the test store is Redis.
    pub redis: Option<std::sync::Arc<redis::RedisServer>>,
}

impl Broker {
    /// A broker with the dev config.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A broker with the dev config and `TESSERA_*` overrides, on the test store.
    pub fn start_with(env: &[(&str, &str)]) -> Self {
        Self::start_in(dev_init("broker"), env)
    }

    /// A broker on an existing dev directory, on the test store unless `env`
    /// picks one.
    pub fn start_in(dir: TempDir, env: &[(&str, &str)]) -> Self {
        let mut env: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let mut redis = None;
        if test_store() == "redis" && !env.iter().any(|(k, _)| k == "TESSERA_STORE__BACKEND") {
            let server = redis::RedisServer::builder().appendonly(false).start();
            env.extend(redis_env(&server.url()));
            redis = Some(std::sync::Arc::new(server));
        }
        Self::spawn(std::sync::Arc::new(dir), env, redis)
    }

    /// Another `tesserad` on the same dev PKI, configuration and store, with
    /// its own audit file (`audit-<n>.jsonl`): a broker holds its audit
    /// file exclusively, as each real replica has its own.
    pub fn replica(&self) -> Self {
        static N: AtomicU32 = AtomicU32::new(1);
        let audit = self
            .dir
            .path()
            .join(format!("audit-{}.jsonl", N.fetch_add(1, Ordering::SeqCst)));
        let mut env = self.env.clone();
        env.retain(|(k, _)| k != "TESSERA_AUDIT__FILE");
        env.push(("TESSERA_AUDIT__FILE".into(), audit.to_str().unwrap().to_owned()));
        let mut replica = Self::spawn(self.dir.clone(), env, self.redis.clone());
        replica.env = self.env.clone();
        replica.audit = audit;
        replica
    }

    /// [`Broker::replica`] with `overrides` replacing its settings (e.g. the
    /// store's URL through a fault proxy); a restart keeps them.
    pub fn replica_with(&self, overrides: &[(&str, &str)]) -> Self {
        static N: AtomicU32 = AtomicU32::new(1);
        let audit = self
            .dir
            .path()
            .join(format!("audit-with-{}.jsonl", N.fetch_add(1, Ordering::SeqCst)));
        let mut env = self.env.clone();
        env.retain(|(k, _)| k != "TESSERA_AUDIT__FILE" && !overrides.iter().any(|(o, _)| o == k));
        env.extend(overrides.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        env.push(("TESSERA_AUDIT__FILE".into(), audit.to_str().unwrap().to_owned()));
        let mut replica = Self::spawn(self.dir.clone(), env, self.redis.clone());
        replica.audit = audit;
        replica
    }

    fn spawn(
        dir: std::sync::Arc<TempDir>,
        env: Vec<(String, String)>,
        redis: Option<std::sync::Arc<redis::RedisServer>>,
    ) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let ready = dir.path().join(format!("ready-{n}.json"));
        let log = dir.path().join(format!("tesserad-{n}.log"));
        let mut cmd = Command::new(bin_dir().join("tesserad"));
        cmd.arg("--config")
            .arg(dir.path().join("tesserad.toml"))
            .arg("--ready-file")
            .arg(&ready)
            .env("TESSERA_SERVER__LISTEN", "127.0.0.1:0")
            .env("TESSERA_SERVER__HTTP_LISTEN", "127.0.0.1:0")
            .env("TESSERA_OAUTH__LISTEN", "127.0.0.1:0")
            .env("TESSERA_SERVER__INSTANCE_ID", format!("tesserad-test-{n}"))
            .env_remove("TESSERA_LOG")
            // The harness's own switch; tesserad rightly refuses unknown TESSERA_* variables.
            .env_remove("TESSERA_TEST_STORE")
            .env_remove("TESSERA_BIN_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let v = wait_ready(&mut child, &ready, &log);
        let (addr, http_addr, oauth_addr) = (
            v["grpc"].as_str().unwrap().to_owned(),
            v["http"].as_str().map(str::to_owned),
            v["oauth"].as_str().map(str::to_owned),
        );
        let audit = env
            .iter()
            .find(|(k, _)| k == "TESSERA_AUDIT__FILE")
            .map_or_else(|| dir.path().join("audit.jsonl"), |(_, v)| dir.path().join(v));
        Self {
            child: Some(child),
            audit,
            dir,
            addr,
            http_addr,
            oauth_addr,
            log,
            env,
            redis,
        }
    }

    /// `https://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// A plain HTTP/1.1 `GET path` on the operations listener: (status, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        use std::io::{Read as _, Write as _};
        let addr = self.http_addr.as_deref().expect("the ready file names an http address");
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).unwrap();
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status line");
        (status, body.to_owned())
    }

    /// The dev identity `name` (`orchestrator`, `researcher`, `writer`, `alice`, `api-gateway`).
    pub fn identity(&self, name: &str) -> Identity {
        let d = self.dir.path();
        Identity::from_files(
            d.join("ca.pem"),
            d.join(format!("identities/{name}.pem")),
            d.join(format!("identities/{name}.key.pem")),
        )
        .unwrap()
    }

    pub async fn channel(&self, name: &str) -> Channel {
        tessera_client::connect(&self.endpoint(), &self.identity(name))
            .await
            .unwrap()
    }

    pub async fn orchestrator(&self) -> OrchestratorClient {
        OrchestratorClient::new(self.channel("orchestrator").await)
    }

    pub async fn agent(&self, name: &str) -> AgentClient {
        AgentClient::new(self.channel(name).await)
    }

    pub async fn admin(&self, name: &str) -> AdminClient {
        AdminClient::new(self.channel(name).await)
    }

    pub async fn verifier(&self, name: &str) -> VerifierClient {
        VerifierClient::new(self.channel(name).await)
    }

    /// Starts a task as the dev orchestrator; panics on refusal.
    pub async fn start_task(&self, req: pb::StartTaskRequest) -> pb::Task {
        self.orchestrator().await.start_task(req).await.unwrap().into_inner()
    }

    /// Issues a token to the dev agent `agent`; panics on refusal.
    pub async fn issue_as(&self, agent: &str, req: pb::RequestTokenRequest) -> pb::IssuedToken {
        issue(&mut self.agent(agent).await, req).await
    }

    /// The JWKS, as a verifier fetches it.
    pub async fn jwks(&self) -> pb::GetJwksResponse {
        self.verifier("api-gateway")
            .await
            .get_jwks(pb::GetJwksRequest {})
            .await
            .unwrap()
            .into_inner()
    }

    /// Runs the `tessera` CLI against this broker.
    pub fn tessera(&self, args: &[&str]) -> Output {
        self.tessera_stdin(args, "")
    }

    /// Runs the `tessera` CLI with `stdin` as standard input.
    pub fn tessera_stdin(&self, args: &[&str], stdin: &str) -> Output {
        use std::io::Write as _;
        let mut child = Command::new(bin_dir().join("tessera"))
            .arg("--dev-dir")
            .arg(self.dir.path())
            .arg("--endpoint")
            .arg(self.endpoint())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    }

    /// Everything the broker wrote to stderr so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (up to 10 s) until the log holds more than `before` lines with
    /// `needle`: the broker logs some refusals on its accept task, which may
    /// run after the client already saw the refusal.
    #[track_caller]
    pub fn wait_log_count(&self, needle: &str, before: usize) {
        let start = std::time::Instant::now();
        while self.logs().matches(needle).count() <= before {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(10),
                "no new `{needle}` in the broker log within 10 s: {}",
                self.logs()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGKILL and wait: no drain, no final audit write. A no-op when not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the broker if it runs, then starts it again on the same dev
    /// directory, configuration, store and audit file (new ports), and
    /// waits for its ready file.
    pub fn restart(&mut self) {
        self.kill();
        let mut fresh = Self::spawn(self.dir.clone(), self.env.clone(), self.redis.clone());
        // `fresh` is dropped below with no child left to stop.
        self.child = fresh.child.take();
        self.addr = std::mem::take(&mut fresh.addr);
        self.http_addr = fresh.http_addr.take();
        self.oauth_addr = fresh.oauth_addr.take();
        std::mem::swap(&mut self.log, &mut fresh.log);
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let child = self.child.take().unwrap();
        signal(child.id(), "TERM");
        wait_exit(child, Duration::from_secs(20))
    }
}

/// The ready file `tesserad --ready-file` writes once it listens, parsed;
/// panics with the log if tesserad exits first or is not ready within 30 s.
/// Polls the file: tesserad announces readiness by writing it.
pub fn wait_ready(child: &mut Child, ready: &Path, log: &Path) -> serde_json::Value {
    let started = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(ready) {
            return serde_json::from_str(&text).unwrap();
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "tesserad exited with {status}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "tesserad did not become ready in 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for `child` to exit (woken by its exit, not by polling); kills it
/// and panics if it has not exited within `limit`.
pub fn wait_exit(mut child: Child, limit: Duration) -> std::process::ExitStatus {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    match rx.recv_timeout(limit) {
        Ok(status) => status.unwrap(),
        Err(_) => {
            signal(pid, "KILL");
            panic!("process {pid} did not stop within {limit:?}");
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// Where a log leaks a secret: a compact JWS (`eyJ….….`) or a PEM private key.
pub fn find_secret(text: &str) -> Option<String> {
    if let Some(i) = text.find("PRIVATE KEY") {
        return Some(format!("private key PEM near byte {i}"));
    }
    let b64 = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    let mut rest = text;
    while let Some(i) = rest.find("eyJ") {
        let tail = &rest[i..];
        let segs: Vec<&str> = tail.splitn(3, '.').collect();
        if segs.len() == 3
            && segs[0].chars().all(b64)
            && segs[0].len() > 10
            && !segs[1].is_empty()
            && segs[1].chars().all(b64)
        {
            return Some(format!("JWS-like string `{}…`", &tail[..tail.len().min(16)]));
        }
        rest = &tail[3..];
    }
    None
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Logs survive a failing test in its output.
        if std::thread::panicking() {
            eprintln!("--- tesserad log ---\n{}", self.logs());
            return;
        }
        // Every end-to-end test is also a secrets scan of everything the broker
        // printed and of the audit trail it wrote.
        if let Some(leak) = find_secret(&self.logs()) {
            panic!("tesserad's log leaks a secret: {leak}");
        }
        let audit = std::fs::read_to_string(self.dir.path().join("audit.jsonl")).unwrap_or_default();
        if let Some(leak) = find_secret(&audit) {
            panic!("tesserad's audit trail leaks a secret: {leak}");
        }
    }
}

/// Whether `token` is live, as a verifier's Introspect says; the status if the call fails.
pub async fn introspect(v: &mut VerifierClient, token: &str) -> Result<bool, tonic::Status> {
    v.introspect(pb::IntrospectRequest { token: token.into() })
        .await
        .map(|r| r.into_inner().active)
}

/// The next revocation event on `feed` (skipping heartbeats), within 10 s.
pub async fn next_event(feed: &mut tonic::Streaming<pb::WatchRevocationsResponse>) -> pb::RevocationEvent {
    use tokio_stream::StreamExt as _;
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let item = feed.next().await.unwrap().unwrap();
            if let Some(pb::watch_revocations_response::Item::Event(e)) = item.item {
                return e;
            }
        }
    })
    .await
    .expect("a revocation event within 10 s")
}

/// The position in the first message of a fresh feed (a heartbeat).
pub async fn first_position(feed: &mut tonic::Streaming<pb::WatchRevocationsResponse>) -> String {
    use tokio_stream::StreamExt as _;
    match feed.next().await.unwrap().unwrap().item {
        Some(pb::watch_revocations_response::Item::Heartbeat(h)) => h.position,
        other => panic!("expected a heartbeat first, got {other:?}"),
    }
}

/// Polls `check` every 50 ms until it is true; panics naming `what` after
/// `limit`. The way to wait for something the broker does on its own time
/// (a reload, an expiry, a health change): keep `limit` generous, the
/// machine is shared.
#[track_caller]
pub fn eventually<'a>(
    what: &'a str,
    limit: Duration,
    mut check: impl AsyncFnMut() -> bool + 'a,
) -> impl std::future::Future<Output = Duration> + 'a {
    let caller = std::panic::Location::caller();
    async move {
        let started = Instant::now();
        while !check().await {
            assert!(
                started.elapsed() < limit,
                "{what} did not happen within {limit:?} (waiting at {caller})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        started.elapsed()
    }
}

/// Whole seconds of the system clock, as the broker stamps `iat`.
pub fn now_secs() -> i64 {
    use tessera_core::clock::Clock as _;
    tessera_core::clock::SystemClock.now().timestamp()
}

/// Waits until the system clock is past second `secs`: a token minted
/// after this has an `iat` above it (e.g. above a verifier's sync floor).
pub async fn wait_past_second(secs: i64) {
    eventually(
        &format!("the clock to pass second {secs}"),
        Duration::from_secs(10),
        async || now_secs() > secs,
    )
    .await;
}

/// The gRPC status of a failed call.
#[track_caller]
pub fn code<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> tonic::Status {
    match result {
        Ok(v) => panic!("expected an error status, got {v:?}"),
        Err(status) => status,
    }
}

/// A StartTask request: `agents` may act on the CRM with `scopes` for `secs`.
pub fn start_request(task_id: &str, agents: &[&str], scopes: &[&str], secs: u32) -> pb::StartTaskRequest {
    pb::StartTaskRequest {
        authorization_details: String::new(),
        task_id: task_id.into(),
        agents: agents.iter().map(|a| format!("spiffe://{TD}/agent/{a}")).collect(),
        scope_ceiling: [(
            CRM.to_owned(),
            pb::ScopeSet {
                scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            },
        )]
        .into_iter()
        .collect(),
        lifetime: Some(pb::start_task_request::Lifetime::DurationSeconds(secs)),
        labels: Default::default(),
        parent_task_id: String::new(),
    }
}

/// A RequestToken request on the CRM.
pub fn token_request(task_id: &str, scopes: &[&str], ttl: Option<u32>) -> pb::RequestTokenRequest {
    pb::RequestTokenRequest {
        task_id: task_id.into(),
        audience: CRM.into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        ttl_seconds: ttl,
        ..Default::default()
    }
}

/// Requests a token and returns it, panicking on refusal.
pub async fn issue(agent: &mut AgentClient, req: pb::RequestTokenRequest) -> pb::IssuedToken {
    match agent.request_token(req).await.unwrap().into_inner().outcome {
        Some(pb::request_token_response::Outcome::Token(t)) => t,
        other => panic!("expected a token, got {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::find_secret;

    #[test]
    fn the_secret_scan_finds_tokens_and_keys() {
        assert!(find_secret("grant_id=abc kid=2URxwuw8_HeIi71gU7earH").is_none());
        assert!(find_secret("token eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.sig").is_some());
        assert!(find_secret("-----BEGIN PRIVATE KEY-----").is_some());
        assert!(find_secret("eyJ alone is fine").is_none());
    }
}
