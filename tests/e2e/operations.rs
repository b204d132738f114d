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
        .env_remove("TESSERA_LOG")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_second_broker_on_the_same_audit_file_exits_64_naming_the_first() {
    let broker = Broker::start();
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
