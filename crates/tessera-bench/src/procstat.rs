//! CPU time and memory of server processes, read from `/proc`.
//!
//! CPU per operation is `Δ(utime + stime)` of the server processes (never
//! the load generator) divided by the operations done meanwhile: on a
//! shared, noisy machine it is the figure that holds from run to run.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`, 100 on Linux).
fn ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}

/// CPU time (user + system) a process has used so far, in microseconds.
pub fn cpu_us(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| anyhow::anyhow!("cannot read /proc/{pid}/stat: {e}"))?;
    parse_cpu_ticks(&stat)
        .map(|ticks| ticks * 1_000_000 / ticks_per_second())
        .ok_or_else(|| anyhow::anyhow!("/proc/{pid}/stat has no utime/stime"))
}

/// CPU time (user + system) the threads of `pid` named `name` have used so
/// far (threads that ended are not counted), in microseconds.
pub fn thread_cpu_us(pid: u32, name: &str) -> anyhow::Result<u64> {
    let dir = format!("/proc/{pid}/task");
    let mut ticks = 0;
    for entry in std::fs::read_dir(&dir).map_err(|e| anyhow::anyhow!("cannot read {dir}: {e}"))? {
        let path = entry?.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        if let Some(t) = std::fs::read_to_string(path.join("stat"))
            .ok()
            .and_then(|stat| parse_cpu_ticks(&stat))
        {
            ticks += t;
        }
    }
    Ok(ticks * 1_000_000 / ticks_per_second())
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line, in ticks.
/// The command name (field 2) may contain spaces and parentheses, so fields
/// are counted after its closing parenthesis.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ")": field 3 (state) is index 0, so utime (14) is index 11, stime (15) index 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A `VmXXX:` figure of `/proc/<pid>/status`, in bytes.
pub fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| anyhow::anyhow!("cannot read /proc/{pid}/status: {e}"))?;
    parse_status_kib(&status, field)
        .map(|kib| kib * 1024)
        .ok_or_else(|| anyhow::anyhow!("/proc/{pid}/status has no {field}"))
}

fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        value.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// Peak resident set size (`VmHWM`), in bytes.
pub fn peak_rss(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmHWM")
}

/// Current resident set size (`VmRSS`), in bytes.
pub fn rss(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmRSS")
}

/// CPU of a set of server processes around a measurement.
#[derive(Debug, Clone)]
pub struct CpuMeter {
    pids: Vec<(String, u32)>,
    start: Vec<u64>,
    /// Threads measured apart: (label, pid, thread name).
    threads: Vec<(String, u32, String)>,
    threads_start: Vec<u64>,
}

/// The thread tesserad writes and syncs its audit file on (its
/// `AUDIT_THREAD`): its CPU is the audit fsync's share.
pub const AUDIT_THREAD: &str = "tessera-audit";
/// How the audit thread's CPU is labelled in [`CpuUse::parts`].
pub const AUDIT_PART: &str = "audit write + fsync";

/// CPU used by each server process during a measurement.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuUse {
    /// `(process name, CPU µs)`.
    pub by_process: Vec<(String, u64)>,
    /// `(label, CPU µs)` of threads measured apart, already counted in their
    /// process (the audit thread of tesserad).
    #[serde(default)]
    pub parts: Vec<(String, u64)>,
}

impl CpuUse {
    /// Total CPU µs of all processes.
    pub fn total_us(&self) -> u64 {
        self.by_process.iter().map(|(_, us)| us).sum()
    }

    /// CPU µs of `name`.
    pub fn of(&self, name: &str) -> u64 {
        self.by_process
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, us)| us)
            .sum()
    }

    /// CPU µs of the part `label` (see [`CpuUse::parts`]), if measured.
    pub fn part(&self, label: &str) -> Option<u64> {
        self.parts.iter().find(|(n, _)| n == label).map(|(_, us)| *us)
    }

    /// Total CPU µs per operation (`None` for zero operations).
    pub fn per_op(&self, ops: u64) -> Option<f64> {
        (ops > 0).then(|| self.total_us() as f64 / ops as f64)
    }
}

impl CpuMeter {
    /// Starts measuring the named processes.
    pub fn start(pids: &[(&str, u32)]) -> anyhow::Result<Self> {
        let start = pids
            .iter()
            .map(|(_, p)| cpu_us(*p))
            .collect::<anyhow::Result<Vec<_>>>()?;
        // tesserad's audit thread, measured apart.
        let threads: Vec<(String, u32, String)> = pids
            .iter()
            .filter(|(n, _)| *n == "tesserad")
            .map(|(_, p)| (AUDIT_PART.to_owned(), *p, AUDIT_THREAD.to_owned()))
            .collect();
        let threads_start = threads
            .iter()
            .map(|(_, p, t)| thread_cpu_us(*p, t))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            pids: pids.iter().map(|(n, p)| ((*n).to_owned(), *p)).collect(),
            start,
            threads,
            threads_start,
        })
    }

    /// CPU used since `start`.
    pub fn stop(&self) -> anyhow::Result<CpuUse> {
        let mut by_process = Vec::with_capacity(self.pids.len());
        for ((name, pid), before) in self.pids.iter().zip(&self.start) {
            by_process.push((name.clone(), cpu_us(*pid)?.saturating_sub(*before)));
        }
        let mut parts = Vec::with_capacity(self.threads.len());
        for ((label, pid, thread), before) in self.threads.iter().zip(&self.threads_start) {
            parts.push((label.clone(), thread_cpu_us(*pid, thread)?.saturating_sub(*before)));
        }
        Ok(CpuUse { by_process, parts })
    }
}

/// Whether `/proc` is there to read (Linux).
pub fn available() -> bool {
    Path::new("/proc/self/stat").exists()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]

    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = "1234 (tokio (worker) x) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 8 0 1000 0 0";
        assert_eq!(parse_cpu_ticks(line), Some(325));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn a_named_thread_is_measured_apart() {
        let (spun, done) = (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
        let thread = std::thread::Builder::new()
            .name("cpu-meter-test".into())
            .spawn(move || {
                let t = std::time::Instant::now();
                let mut x = 0u64;
                while t.elapsed() < std::time::Duration::from_millis(50) {
                    x = x.wrapping_add(std::hint::black_box(1));
                }
                spun.0.send(x).unwrap();
                let _ = done.1.recv();
            })
            .unwrap();
        spun.1.recv().unwrap();
        let pid = std::process::id();
        assert!(thread_cpu_us(pid, "cpu-meter-test").unwrap() > 0);
        assert_eq!(thread_cpu_us(pid, "no-such-thread").unwrap(), 0);
        done.0.send(()).unwrap();
        thread.join().unwrap();
    }

    #[test]
    fn status_figures_are_read_in_kib() {
        let status = "Name:\ttesserad\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(20480));
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(10240));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
    }

    #[test]
    fn this_process_uses_cpu() {
        let pid = std::process::id();
        let meter = CpuMeter::start(&[("self", pid)]).unwrap();
        let mut x = 0u64;
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_millis(50) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        let used = meter.stop().unwrap();
        assert!(used.of("self") > 0, "{used:?} {x}");
        assert!(used.parts.is_empty(), "no tesserad measured: no audit part");
        assert!(peak_rss(pid).unwrap() > 0);
        assert!(rss(pid).unwrap() > 0);
    }
}
