//! Running `tesserad` as an operator does: one broker per audit file, and a
//! broken chain or an unusable path stops it with the configuration exit
//! code (64), which the systemd unit does not restart on.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

use std::process::{Command, Stdio};

use tessera_e2e::*;

/// Runs `tesserad` on `dir`'s config with `args` and `env`, expecting it to
/// exit on its own; returns (code, stderr).
fn run_to_exit(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(bin_dir().join("tesserad"));
    cmd.arg("--config")
        .arg(dir.join("tesserad.toml"))
        .args(args)
        .env("TESSERA_SERVER__LISTEN", "127.0.0.1:0")
        .env("TESSERA_SERVER__HTTP_LISTEN", "127.0.0.1:0")
        .env("TESSERA_OAUTH__LISTEN", "127.0.0.1:0")
        .env_remove("TESSERA_TEST_STORE")
        .env_remove("TESSERA_BIN_DIR")
        .env_remove("TESSERA_LOG")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let stderr = TempDir::new("stderr");
    let log = stderr.path().join("tesserad.log");
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // Bounded so that a broker which starts when it should not fails the
    // test instead of hanging it.
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > std::time::Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "tesserad kept running instead of exiting: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    (
        status.code().unwrap_or(-1),
        std::fs::read_to_string(&log).unwrap_or_default(),
    )
}

#[test]
fn a_second_broker_on_the_same_audit_file_exits_64_naming_the_first() {
    let broker = Broker::start();
    // The ready file says the ports are bound; the audit file is opened (and
    // locked) after that. An answer on the operations port comes once the
    // broker serves, with its audit file held: only then start the second.
    assert_eq!(broker.http_get("/healthz").0, 200);
    let (code, stderr) = run_to_exit(broker.dir.path(), &[], &[]);
    assert_eq!(code, 64, "{stderr}");
    let audit = broker.dir.path().join("audit.jsonl");
    assert!(
        stderr.contains(&format!(
            "audit file `{}` in use by pid {}",
            audit.display(),
            broker.pid()
        )),
        "{stderr}"
    );
    // The first broker's chain is whole.
    let out = broker.tessera(&["audit", "verify", audit.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_broken_chain_at_the_end_of_the_audit_file_stops_the_start_with_64() {
    let mut broker = Broker::start();
    assert!(broker.terminate().success());
    let audit = broker.dir.path().join("audit.jsonl");
    // A second writer's record: the last one again, as a broker that read
    // the same tail would have sealed it.
    let text = std::fs::read_to_string(&audit).unwrap();
    let last = text.lines().last().unwrap().to_owned();
    std::fs::write(&audit, format!("{text}{last}\n")).unwrap();
    let (code, stderr) = run_to_exit(broker.dir.path(), &[], &[]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("its last records do not form one chain"), "{stderr}");
    assert!(stderr.contains("tessera audit verify"), "{stderr}");
}

/// The unit file, as shipped.
fn unit() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/systemd/tesserad.service"
    ))
    .unwrap()
}

/// The unit's `Key=` values, in order.
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    let prefix = format!("{key}=");
    unit.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_systemd_unit_verifies() {
    let Some(analyze) = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        println!("SKIPPED the systemd-analyze assertion: systemd-analyze is not installed here");
        return;
    };
    // The unit as installed, but running the binary under test.
    let dir = TempDir::new("unit");
    let path = dir.path().join("tesserad.service");
    let tesserad = bin_dir().join("tesserad");
    std::fs::write(
        &path,
        unit().replace("/usr/local/bin/tesserad", tesserad.to_str().unwrap()),
    )
    .unwrap();
    let out = Command::new(analyze).arg("verify").arg(&path).output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "systemd-analyze verify: {said}");
    assert!(
        !said.contains("tesserad.service"),
        "systemd-analyze verify warned: {said}"
    );
}

/// Runs `script` with `sh` in a private mount namespace where every mount
/// but the kernel's API file systems is read-only, as `ProtectSystem=strict`
/// leaves them, except `writable` (the unit's State/RuntimeDirectory).
fn sandboxed(writable: &[&std::path::Path], script: &str) -> Command {
    let mut setup = String::from(
        "set -e\n\
         for m in $(findmnt -rn -o TARGET); do\n\
           case \"$m\" in /proc*|/sys*|/dev*|/mnt/*) ;; *) mount -o remount,bind,ro \"$m\" ;; esac\n\
         done\n",
    );
    for dir in writable {
        let d = dir.display();
        setup.push_str(&format!("mount --bind '{d}' '{d}'\nmount -o remount,bind,rw '{d}'\n"));
    }
    setup.push_str(script);
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &setup]);
    cmd.env_remove("TESSERA_TEST_STORE")
        .env_remove("TESSERA_BIN_DIR")
        .env_remove("TESSERA_LOG");
    cmd
}

#[test]
fn the_broker_starts_under_the_units_read_only_file_system() {
    let unit = unit();
    for setting in [
        "ProtectSystem=strict",
        "StateDirectory=tessera",
        "RuntimeDirectory=tessera",
        "RestartPreventExitStatus=64",
    ] {
        assert!(unit.lines().any(|l| l == setting), "the unit lacks {setting}");
    }
    let dev = dev_init("sandbox");
    // systemd's %S and %t, each holding the unit's `tessera` directory.
    let state_root = dev.path().join("var-lib");
    let runtime_root = dev.path().join("run");
    let (state, runtime) = (state_root.join("tessera"), runtime_root.join("tessera"));
    std::fs::create_dir_all(&state).unwrap();
    std::fs::create_dir_all(&runtime).unwrap();
    let env: Vec<(String, String)> = unit_values(&unit, "Environment")
        .iter()
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            let v = v
                .replace("%S", state_root.to_str().unwrap())
                .replace("%t", runtime_root.to_str().unwrap());
            (k.to_owned(), v)
        })
        .collect();
    assert!(
        env.iter()
            .any(|(k, v)| k == "TESSERA_AUDIT__FILE" && v.starts_with(state.to_str().unwrap())),
        "the unit puts the audit file in its StateDirectory: {env:?}"
    );
    // The Unix attestation socket in the RuntimeDirectory, as the example
    // configuration suggests.
    let socket = runtime.join("agent.sock");
    let config = dev.path().join("tesserad.toml");
    let mut toml = std::fs::read_to_string(&config).unwrap();
    toml.push_str(&format!("\n[attestation.unix]\nsocket = \"{}\"\n", socket.display()));
    std::fs::write(&config, toml).unwrap();
    let tesserad = bin_dir().join("tesserad");
    let ports =
        "TESSERA_SERVER__LISTEN=127.0.0.1:0 TESSERA_SERVER__HTTP_LISTEN=127.0.0.1:0 TESSERA_OAUTH__LISTEN=127.0.0.1:0";

    // Without the unit's audit path, the default (next to the read-only
    // configuration) fails the check with 64, as ExecStartPre would.
    let out = sandboxed(
        &[&state, &runtime],
        &format!(
            "exec env {ports} '{}' --config '{}' --check",
            tesserad.display(),
            config.display()
        ),
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("audit.file"), "{stderr}");
    assert!(stderr.contains("Read-only file system"), "{stderr}");

    // With the unit's environment: ExecStartPre's check passes, then ExecStart serves.
    let ready = runtime.join("ready.json");
    let assignments: String = env.iter().map(|(k, v)| format!("{k}='{v}' ")).collect();
    let mut child = sandboxed(
        &[&state, &runtime],
        &format!(
            "export {assignments}{ports}\n\
             '{bin}' --config '{config}' --check >&2\n\
             exec '{bin}' --config '{config}' --ready-file '{ready}'",
            bin = tesserad.display(),
            config = config.display(),
            ready = ready.display(),
        ),
    )
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(dev.path().join("sandboxed.log")).unwrap())
    .spawn()
    .unwrap();
    let log = || std::fs::read_to_string(dev.path().join("sandboxed.log")).unwrap_or_default();
    let http = loop {
        if let Ok(text) = std::fs::read_to_string(&ready) {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            break v["http"].as_str().unwrap().to_owned();
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("tesserad exited under the sandbox with {status}: {}", log());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let (status, body) = http_get(&http, "/readyz");
    assert_eq!(status, 200, "{body}\n{}", log());
    assert!(socket.exists(), "the Unix socket is in the RuntimeDirectory: {}", log());
    // The audit trail is in the StateDirectory, and nothing next to the configuration.
    assert!(state.join("audit.jsonl").metadata().unwrap().len() > 0, "{}", log());
    assert!(!dev.path().join("audit.jsonl").exists());

    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let exit = child.wait().unwrap();
    assert!(exit.success(), "tesserad exited with {exit}: {}", log());
}

/// A plain HTTP/1.1 `GET path` on `addr`: (status, body).
fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.split(' ').nth(1).unwrap().parse().unwrap(), body.to_owned())
}

/// The metric names in OPERATIONS.md's metrics table, with their type.
fn documented_metrics() -> Vec<(String, String)> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/OPERATIONS.md")).unwrap();
    let section = doc
        .split("### Metrics")
        .nth(1)
        .expect("OPERATIONS.md has a Metrics section");
    // Up to the next heading: later sections have tables of their own.
    let table = section.split("\n#").next().unwrap_or_default();
    table
        .lines()
        .filter_map(|l| {
            let mut cells = l.split('|').map(str::trim).skip(1);
            let name = cells.next()?.strip_prefix('`')?.strip_suffix('`')?.to_owned();
            let kind = cells.next()?.to_owned();
            Some((name, kind))
        })
        .collect()
}

#[tokio::test]
async fn every_documented_metric_is_on_metrics_at_start_with_help() {
    let documented = documented_metrics();
    assert!(documented.len() >= 15, "{documented:?}");
    let broker = Broker::start();
    let (status, text) = broker.http_get("/metrics");
    assert_eq!(status, 200, "{text}");
    for (name, kind) in &documented {
        if name == "tessera_request_duration_seconds" {
            continue; // starts with the first request (documented), checked below
        }
        assert!(text.contains(&format!("# HELP {name} ")), "no HELP for {name}: {text}");
        assert!(
            text.contains(&format!("# TYPE {name} {kind}")),
            "no TYPE {kind} for {name}: {text}"
        );
        let samples: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
            .collect();
        assert!(!samples.is_empty(), "no sample of {name}: {text}");
        if kind == "counter" {
            for sample in samples {
                assert!(sample.ends_with(" 0"), "{name} is not at zero at start: {sample}");
            }
        }
    }
    // Failure counters at zero, the version, live grants.
    assert!(text.contains("tessera_store_errors_total 0"), "{text}");
    assert!(text.contains("tessera_audit_failures_total 0"), "{text}");
    assert!(
        text.contains(&format!(
            "tessera_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    assert!(text.contains("tessera_live_grants 0"), "{text}");
    assert!(text.contains("process_resident_memory_bytes "), "{text}");

    // Every metric line has HELP: nothing undocumented slipped in.
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split(' ').nth(2).unwrap();
        assert!(text.contains(&format!("# HELP {name} ")), "{name} has no HELP: {text}");
    }

    // A request counts under its method and code.
    let mut admin = broker.admin("researcher").await;
    let denied = code(admin.list_grants(pb::ListGrantsRequest::default()).await);
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    let (_, text) = broker.http_get("/metrics");
    assert!(
        text.contains(
            r#"tessera_request_duration_seconds_count{method="tessera.v1.AdminService/ListGrants",grpc_code="PERMISSION_DENIED"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains("# HELP tessera_request_duration_seconds "), "{text}");
}

#[test]
fn the_example_alert_rules_use_only_documented_metrics() {
    let documented: Vec<String> = documented_metrics().into_iter().map(|(name, _)| name).collect();
    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/prometheus/tessera-alerts.yml"
    ))
    .unwrap();
    let mut used = 0;
    for word in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if !(word.starts_with("tessera_") || word.starts_with("process_")) {
            continue;
        }
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| word.strip_suffix(s))
            .unwrap_or(word);
        assert!(
            documented.iter().any(|d| d == word || d == base),
            "the alert rules use `{word}`, which OPERATIONS.md does not list"
        );
        used += 1;
    }
    assert!(used >= 10, "{rules}");
}

/// The test matrix's row ids (`../shared/TEST-MATRIX.md`, kept outside the
/// repository): the copy `docs/TEST-MATRIX-COVERAGE.md` is checked against.
const MATRIX_ROWS: &[&str] = &[
    "A1", "A2", "A3", "A4", "A5", "A6", "A7", "A8", "A9", "A10", "A11", "A12", "A13", "A14", "A15", "P1", "P2", "P3",
    "M1", "M2", "M3", "M4", "R1", "R2", "R3", "R4", "R5", "R6", "R7", "R8", "R9", "R10", "V1", "V2", "V3", "V4", "U1",
    "U2", "D1", "D2", "D3", "D4", "D5", "S1", "S2",
];

/// The row id of a markdown table line `| A1 | ...`, if it is one.
fn row_id(line: &str) -> Option<&str> {
    let id = line.strip_prefix('|')?.split('|').next()?.trim();
    let (letter, number) = id.split_at_checked(1)?;
    (letter.chars().all(|c| c.is_ascii_uppercase()) && !number.is_empty() && number.chars().all(|c| c.is_ascii_digit()))
        .then_some(id)
}

/// Every row of the test matrix is in docs/TEST-MATRIX-COVERAGE.md once,
/// names at least one test, and every test it names is a function of the
/// file it names. Where the matrix itself is at hand (the development
/// machine's `../shared`), its rows must be the ones copied here.
#[test]
fn every_test_matrix_row_names_tests_that_exist() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let doc = std::fs::read_to_string(root.join("docs/TEST-MATRIX-COVERAGE.md")).unwrap();
    let mut seen: Vec<&str> = Vec::new();
    let mut named = 0;
    for line in doc.lines() {
        let Some(id) = row_id(line) else { continue };
        assert!(!seen.contains(&id), "row {id} is in the coverage table twice");
        seen.push(id);
        let tests_cell = line.split('|').nth(2).unwrap_or_default();
        let tests: Vec<&str> = tests_cell
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|t| t.contains(".rs::"))
            .collect();
        assert!(!tests.is_empty(), "row {id} names no test: {line}");
        for test in tests {
            let (file, function) = test.split_once("::").unwrap();
            let text = std::fs::read_to_string(root.join(file))
                .unwrap_or_else(|e| panic!("row {id}: `{file}` cannot be read: {e}"));
            assert!(
                text.contains(&format!("fn {function}(")),
                "row {id}: `{file}` has no test `{function}`"
            );
            named += 1;
        }
    }
    let missing: Vec<&&str> = MATRIX_ROWS.iter().filter(|r| !seen.contains(*r)).collect();
    let extra: Vec<&&str> = seen.iter().filter(|r| !MATRIX_ROWS.contains(*r)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing rows {missing:?}, unknown rows {extra:?}"
    );

    let matrix = root.join("../shared/TEST-MATRIX.md");
    if let Ok(text) = std::fs::read_to_string(&matrix) {
        let ids: Vec<&str> = text.lines().filter_map(row_id).collect();
        assert_eq!(ids, MATRIX_ROWS, "{} has other rows than MATRIX_ROWS", matrix.display());
    }
    eprintln!("{} rows, {named} named tests", seen.len());
}
