//! The Python SDK's verifier (`sdk/python`), measured by its own script
//! (`sdk/python/bench/bench_verifier.py --json`) in the SDK's venv, so the
//! report judges it in the same run as everything else: offline
//! verifications per second on one core against `cryptography`'s raw ES256
//! verify, and the delay from `CompleteTask` to the verifier, following a
//! real `tesserad`'s feed, refusing the task's token.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// Where the Python SDK and its venv are.
#[derive(Debug, Clone)]
pub struct PythonSetup {
    /// The venv's `python` (with the SDK and its test extra installed).
    pub python: PathBuf,
    /// The SDK's folder (`sdk/python`).
    pub sdk_dir: PathBuf,
}

/// The script's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PythonSdk {
    /// `cryptography`'s ES256 verify per second, one core.
    pub raw_verify_per_s: f64,
    /// `Verifier.verify` of a bearer token per second, one core.
    pub verify_per_s: f64,
    /// `CompleteTask` to refusal, median, milliseconds.
    pub refusal_p50_ms: f64,
    /// `CompleteTask` to refusal, 99th percentile, milliseconds.
    pub refusal_p99_ms: f64,
    /// Tasks completed for the refusal figures.
    pub tasks: u64,
}

#[derive(Debug, Deserialize)]
struct Printed {
    offline: Offline,
    revocation: Revocation,
}

#[derive(Debug, Deserialize)]
struct Offline {
    raw_verify_per_s: f64,
    verify_per_s: f64,
}

#[derive(Debug, Deserialize)]
struct Revocation {
    p50_ms: f64,
    p99_ms: f64,
    tasks: f64,
}

/// Runs the script against the `tesserad` in `bin_dir`: `seconds` for the
/// offline rates, then `completions` tasks completed.
pub async fn measure(
    py: &PythonSetup,
    bin_dir: &std::path::Path,
    seconds: Duration,
    completions: u64,
) -> anyhow::Result<PythonSdk> {
    anyhow::ensure!(
        py.python.is_file(),
        "no Python venv at {} (make python-venv makes it)",
        py.python.display()
    );
    let mut cmd = tokio::process::Command::new(&py.python);
    cmd.current_dir(&py.sdk_dir)
        .arg("bench/bench_verifier.py")
        .arg("--seconds")
        .arg(format!("{:.3}", seconds.as_secs_f64()))
        .arg("--completions")
        .arg(completions.to_string())
        .arg("--json")
        // The checkout's sources, not whatever another checkout installed.
        .env("PYTHONPATH", "src:.")
        .env("TESSERA_BIN", bin_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // The script stops the broker it started; this stops the script if
        // the run is dropped (Ctrl-C).
        .kill_on_drop(true);
    let out = cmd
        .output()
        .await
        .with_context(|| format!("cannot run {}", py.python.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "bench_verifier.py failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    parse(&stdout)
}

/// The figures from the script's output: its last line is the JSON.
pub fn parse(stdout: &str) -> anyhow::Result<PythonSdk> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .context("bench_verifier.py printed nothing")?;
    let p: Printed = serde_json::from_str(line).with_context(|| format!("not the script's JSON: {line}"))?;
    anyhow::ensure!(
        p.offline.raw_verify_per_s > 0.0 && p.offline.verify_per_s > 0.0 && p.revocation.tasks >= 1.0,
        "the script measured nothing: {line}"
    );
    Ok(PythonSdk {
        raw_verify_per_s: p.offline.raw_verify_per_s,
        verify_per_s: p.offline.verify_per_s,
        refusal_p50_ms: p.revocation.p50_ms,
        refusal_p99_ms: p.revocation.p99_ms,
        tasks: p.revocation.tasks as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_line_is_read_and_a_run_without_revocations_is_refused() {
        let out = "noise\n{\"offline\": {\"raw_verify_per_s\": 5000.0, \"verify_per_s\": 4000.0}, \
                   \"revocation\": {\"p50_ms\": 2.0, \"p99_ms\": 5.5, \"tasks\": 10.0}}\n";
        let p = parse(out).unwrap();
        assert_eq!(p.tasks, 10);
        assert!((p.refusal_p99_ms - 5.5).abs() < f64::EPSILON);
        assert!(parse("{\"offline\": {\"raw_verify_per_s\": 1.0, \"verify_per_s\": 1.0}}").is_err());
        assert!(parse("").is_err());
    }
}
