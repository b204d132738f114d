//! Where the broker's time goes: a `perf record` sample (Debian's
//! `linux-perf`; no call graphs, since release builds keep no frame
//! pointers) of `tesserad` and `redis-server` during a 16-in-flight mint
//! load, summarised by process, object and symbol.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;

use crate::load::LoadSpec;
use crate::tessera::Target;

/// Lines of `perf report` kept.
const TOP: usize = 30;

/// Samples `tesserad` and `redis-server` for `secs` while minting; returns
/// the report as Markdown.
pub async fn perf_during(t: &Target, tesserad: u32, redis: u32, secs: Duration, work: &Path) -> anyhow::Result<String> {
    let data = work.join("perf.data");
    let rec = Command::new("perf")
        .args(["record", "-q", "-F", "499", "-p", &format!("{tesserad},{redis}"), "-o"])
        .arg(&data)
        .args(["--", "sleep", &secs.as_secs().max(1).to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run perf (Debian: linux-perf)")?;
    let load = t
        .mint(&LoadSpec::closed("tessera mint under perf", 16).for_duration(secs))
        .await?;
    let out = tokio::task::spawn_blocking(move || rec.wait_with_output()).await??;
    anyhow::ensure!(
        out.status.success(),
        "perf record failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let report = Command::new("perf")
        .args([
            "report",
            "--stdio",
            "--no-children",
            "--sort",
            "comm,dso,symbol",
            "--percent-limit",
            "1",
            "-i",
        ])
        .arg(&data)
        .stderr(Stdio::null())
        .output()
        .context("cannot run perf report")?;
    let _ = std::fs::remove_file(&data);
    anyhow::ensure!(report.status.success(), "perf report failed");
    let text = String::from_utf8_lossy(&report.stdout);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        // perf pads its columns to the terminal width it guesses.
        .map(|l| l.trim_end().trim_end_matches(['-', ' ']))
        .take(TOP)
        .collect();
    anyhow::ensure!(!lines.is_empty(), "perf recorded no samples");
    Ok(format!(
        "`perf record -F 499 -p <tesserad>,<redis-server>` for {} s during a 16-in-flight mint load \
         ({:.0} mints/s, {} server CPU per mint), flat profile (`perf report --sort comm,dso,symbol`, \
         entries ≥ 1%):\n\n```text\n{}\n```",
        secs.as_secs(),
        load.load.rate,
        load.cpu_us_per_op.map_or_else(|| "–".into(), crate::report::dur_us),
        lines.join("\n")
    ))
}
