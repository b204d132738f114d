//! The OCI image (`deploy/image/`), built the way `make image` builds it but
//! from the binaries this test run uses (the debug build `make test` made: a
//! release build would cost CI ten minutes), then checked from the outside
//! and run from the inside:
//!
//! - its config: the non-root user, the entrypoint, the OCI labels and
//!   annotations (version and source);
//! - its root filesystem: no shell or other program besides `tesserad`,
//!   `tessera` and their shared libraries; the CA bundle; the `tessera` user;
//! - `tesserad` started from that root filesystem with `chroot` as the
//!   image's user (containers cannot run on this machine: the runtime cannot
//!   set rlimits), on a loopback `redis-server`, and a token got through it
//!   with the image's own `tessera` CLI.
//!
//! The image lives in a storage directory of the test's own (vfs driver),
//! removed with it. The broker always runs on Redis (the store of a
//! multi-replica deployment), so this file is not in the Makefile's second,
//! Redis-only pass. Where `buildah` cannot run (not installed, not root) the
//! test says so and skips.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test"
)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use tessera_e2e::redis::RedisServer;
use tessera_e2e::{CRM, TD, TempDir, bin_dir, find_secret, wait_exit, wait_ready};

const IMAGE: &str = "localhost/tessera:e2e";
/// The image's user and group (deploy/image/Containerfile).
const USER: &str = "65532:65532";
/// Where the test puts the broker's dev config inside the root filesystem:
/// the one directory the image gives its user.
const DEV: &str = "/var/lib/tessera/dev";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// `buildah` with the test's own storage; removes every container and image
/// it made on drop (the storage directory goes with the `TempDir`).
struct Buildah {
    dir: TempDir,
}

impl Buildah {
    fn global_options(&self) -> Vec<String> {
        let d = self.dir.path();
        vec![
            "--root".into(),
            d.join("root").to_str().unwrap().into(),
            "--runroot".into(),
            d.join("run").to_str().unwrap().into(),
        ]
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("buildah")
            .arg("--storage-driver")
            .arg("vfs")
            .args(self.global_options())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "buildah {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }
}

impl Drop for Buildah {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "--all"]);
        let _ = self.run(&["rmi", "--all", "--force"]);
    }
}

/// A buildah that can build here, or why not.
fn buildah() -> Result<Buildah, String> {
    if !rustix::process::geteuid().is_root() {
        return Err("not root: buildah's vfs storage and chroot need root".into());
    }
    let b = Buildah {
        dir: TempDir::new("image"),
    };
    let probe = match Command::new("buildah")
        .arg("--storage-driver")
        .arg("vfs")
        .args(b.global_options())
        .args(["from", "scratch"])
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => out,
        Err(e) => return Err(format!("buildah not found ({e}): `make test-tools` installs it")),
    };
    if !probe.status.success() {
        return Err(format!(
            "buildah cannot make a container here: {}",
            String::from_utf8_lossy(&probe.stderr).trim()
        ));
    }
    b.ok(&["rm", "--all"]);
    Ok(b)
}

/// Runs a program of the image, as the image's user, rooted in `rootfs`,
/// with nothing of this process's environment.
fn in_image(rootfs: &Path, program: &str) -> Command {
    let mut cmd = Command::new("/usr/sbin/chroot");
    cmd.arg(format!("--userspec={USER}"))
        .arg(rootfs)
        .arg(program)
        .env_clear()
        .current_dir("/");
    cmd
}

fn tessera(rootfs: &Path, endpoint: &str, args: &[&str], stdin: &str) -> String {
    use std::io::Write as _;
    let mut child = in_image(rootfs, "/usr/local/bin/tessera")
        .args(["--dev-dir", DEV, "--endpoint", endpoint])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "tessera {args:?} in the image failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `GET path` on the operations listener: the status code.
fn http_status(addr: &str, path: &str) -> u16 {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    raw.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap()
}

/// Every regular file with an execute bit and every symlink under `root`,
/// relative to it.
fn programs_and_links(root: &Path, dir: &Path, found: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let rel = path.strip_prefix(root).unwrap().to_str().unwrap().to_owned();
        if meta.is_dir() {
            programs_and_links(root, &path, found);
        } else if meta.file_type().is_symlink() || meta.permissions().mode() & 0o111 != 0 {
            found.push(rel);
        }
    }
}

/// The running broker: killed on drop, its log scanned for secrets.
struct ChrootBroker {
    child: Option<Child>,
    log: PathBuf,
}

impl Drop for ChrootBroker {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        if std::thread::panicking() {
            eprintln!("--- tesserad (in the image) log ---\n{log}");
        } else if let Some(leak) = find_secret(&log) {
            panic!("tesserad's log leaks a secret: {leak}");
        }
    }
}

#[test]
fn the_image_runs_tesserad_as_non_root_on_redis_and_issues_a_token() {
    let b = match buildah() {
        Ok(b) => b,
        Err(why) => {
            eprintln!("SKIPPED the image test: {why}");
            return;
        }
    };
    let bin = bin_dir();
    let mut build = Command::new(repo_root().join("deploy/image/build.sh"));
    build.arg(&bin).arg(IMAGE).args(b.global_options());
    let out = build.output().unwrap();
    assert!(
        out.status.success(),
        "deploy/image/build.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The image's config, as a runtime reads it.
    let inspect: serde_json::Value = serde_json::from_str(&b.ok(&["inspect", "--type", "image", IMAGE])).unwrap();
    let config = &inspect["OCIv1"]["config"];
    assert_eq!(config["User"], USER, "{config}");
    assert_eq!(config["Entrypoint"], serde_json::json!(["/usr/local/bin/tesserad"]));
    assert_eq!(
        config["Cmd"],
        serde_json::json!(["--config", "/etc/tessera/config/tesserad.toml"])
    );
    let version = env!("CARGO_PKG_VERSION");
    let labels = &config["Labels"];
    assert_eq!(labels["org.opencontainers.image.version"], version);
    assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0");
    let source = labels["org.opencontainers.image.source"].as_str().unwrap();
    assert!(source.starts_with("https://"), "{labels}");
    let revision = labels["org.opencontainers.image.revision"].as_str().unwrap();
    assert!(!revision.is_empty(), "{labels}");
    let annotations = &inspect["ImageAnnotations"];
    assert_eq!(annotations["org.opencontainers.image.version"], version, "{inspect}");
    assert_eq!(annotations["org.opencontainers.image.source"], source);

    // Its root filesystem.
    b.ok(&["from", "--pull-never", "--name", "tessera-e2e", IMAGE]);
    let rootfs = PathBuf::from(b.ok(&["mount", "tessera-e2e"]));
    let mut found = Vec::new();
    programs_and_links(&rootfs, &rootfs, &mut found);
    found.sort();
    let unexpected: Vec<&String> = found
        .iter()
        .filter(|p| !matches!(p.as_str(), "usr/local/bin/tesserad" | "usr/local/bin/tessera"))
        .filter(|p| !(p.contains(".so") && std::fs::symlink_metadata(rootfs.join(p)).unwrap().is_file()))
        .collect();
    assert!(
        unexpected.is_empty(),
        "the image holds programs or links besides tesserad, tessera and their libraries: {unexpected:?}"
    );
    for shell in ["bin/sh", "usr/bin/sh", "bin/bash", "bin/busybox"] {
        assert!(!rootfs.join(shell).exists(), "the image has {shell}");
    }
    let bundle = std::fs::read_to_string(rootfs.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
    assert!(bundle.matches("BEGIN CERTIFICATE").count() > 10, "no CA bundle");
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(
        passwd.lines().any(|l| l.starts_with("tessera:x:65532:65532:")),
        "{passwd}"
    );

    // A dev PKI and config, made by the image's CLI as the image's user in
    // its one writable directory.
    let out = in_image(&rootfs, "/usr/local/bin/tessera")
        .args(["dev", "init", "--dir", DEV])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let redis = RedisServer::builder().appendonly(false).start();
    let log = b.dir.path().join("tesserad.log");
    let ready = rootfs.join(DEV.trim_start_matches('/')).join("ready.json");
    let child = in_image(&rootfs, "/usr/local/bin/tesserad")
        .args(["--config", &format!("{DEV}/tesserad.toml")])
        .args(["--ready-file", &format!("{DEV}/ready.json")])
        .env("TESSERA_SERVER__LISTEN", "127.0.0.1:0")
        .env("TESSERA_SERVER__HTTP_LISTEN", "127.0.0.1:0")
        .env("TESSERA_OAUTH__LISTEN", "off")
        // The console is served on the facade's listener, which is off here.
        .env("TESSERA_CONSOLE__ENABLED", "false")
        .env("TESSERA_STORE__BACKEND", "redis")
        .env("TESSERA_STORE__URLS", format!("[\"{}\"]", redis.url()))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut broker = ChrootBroker {
        child: Some(child),
        log,
    };
    let ready = wait_ready(broker.child.as_mut().unwrap(), &ready, &broker.log);
    let endpoint = format!("https://{}", ready["grpc"].as_str().unwrap());
    let http = ready["http"].as_str().unwrap();
    assert_eq!(http_status(http, "/readyz"), 200);
    // It runs as the image's user, not as the root that started chroot.
    let status = std::fs::read_to_string(format!("/proc/{}/status", broker.child.as_ref().unwrap().id())).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid.split_whitespace().skip(1).collect::<Vec<_>>(),
        ["65532"; 4],
        "{uid}"
    );

    let agent = format!("spiffe://{TD}/agent/researcher");
    tessera(
        &rootfs,
        &endpoint,
        &[
            "--as",
            "orchestrator",
            "task",
            "start",
            "--id",
            "image-e2e",
            "--agent",
            &agent,
            "--allow",
            &format!("{CRM} crm.contacts.read"),
            "--ttl",
            "15m",
        ],
        "",
    );
    let token = tessera(
        &rootfs,
        &endpoint,
        &[
            "--as",
            "researcher",
            "token",
            "request",
            "--task",
            "image-e2e",
            "--audience",
            CRM,
            "--scope",
            "crm.contacts.read",
            "--ttl",
            "5m",
        ],
        "",
    );
    let token = token.trim();
    assert_eq!(token.split('.').count(), 3, "not a JWS");
    let introspection = tessera(&rootfs, &endpoint, &["--as", "api-gateway", "introspect", "-"], token);
    assert!(
        introspection.lines().any(|l| l.trim() == "active: true"),
        "{introspection}"
    );
    // The grant is in the loopback Redis, not in the broker's memory.
    let keys = redis.cli(&["--scan", "--pattern", "tessera:*"]);
    assert!(!keys.trim().is_empty(), "nothing of the broker's in Redis");

    // A clean stop: SIGTERM drains and exits 0.
    let _ = Command::new("kill")
        .args(["-TERM", &broker.child.as_ref().unwrap().id().to_string()])
        .status();
    let status = wait_exit(broker.child.take().unwrap(), Duration::from_secs(20));
    assert!(status.success(), "tesserad in the image exited with {status}");
    drop(broker);
    b.ok(&["rm", "tessera-e2e"]);
}
