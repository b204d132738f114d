//! Everything one run measured, as written to `benchmarks.json` and read by
//! the report.

use serde::{Deserialize, Serialize};

use crate::limits::{PerCore, RedisBench, RingLimits};
use crate::openbao::RevokeTree;
use crate::python::PythonSdk;
use crate::scale::Preload;
use crate::tessera::{CompleteTask, Measured, Outcome, Propagation};

/// The machine the run was on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// `lscpu` model name.
    pub cpu_model: String,
    /// Online CPUs.
    pub cores: usize,
    /// Total memory in bytes.
    pub ram_bytes: u64,
    /// `uname -sr`.
    pub kernel: String,
    /// `rustc --version` of the build.
    pub rustc: String,
    /// `redis-server` version.
    pub redis: String,
    /// `bao version`.
    pub openbao: String,
    /// When the run started (UTC).
    pub date: String,
}

/// One point of a latency-versus-offered-load sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepPoint {
    /// Offered operations per second.
    pub offered: f64,
    /// The run at that rate.
    pub run: Measured,
}

/// OpenBao's figures in one storage mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaoResults {
    /// Token creates, 1 in flight.
    pub create_c1: Measured,
    /// Token creates, 16 in flight.
    pub create_c16: Measured,
    /// Token lookups, 16 in flight.
    pub lookup_c16: Measured,
    /// Single revocations, 16 in flight.
    pub revoke_singles: Measured,
    /// Parent tokens with children, revoked (by size).
    pub revoke_tree: Vec<RevokeTree>,
    /// Creates at fixed offered rates.
    pub sweep: Vec<SweepPoint>,
    /// Peak RSS after its runs (`VmHWM`).
    pub peak_rss: Option<u64>,
    /// RSS after its runs.
    pub rss: Option<u64>,
}

/// The live-grant scale scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scale {
    /// Preloading the small population.
    pub small: Preload,
    /// Mint with the small population, 16 in flight.
    pub mint_small: Measured,
    /// Preloading up to the large population (the grants added).
    pub large: Preload,
    /// Live grants in Redis for the large figure (small + large preload).
    pub large_total: u64,
    /// Mint with the large population, 16 in flight.
    pub mint_large: Measured,
    /// Redis's persistence around each mint window (absent in older runs).
    #[serde(default)]
    pub redis: ScaleRedis,
    /// Mint with the large population while Redis rewrites its AOF
    /// (`BGREWRITEAOF` started right before): what a rewrite of a dataset
    /// this size costs the mint (absent in older runs).
    #[serde(default)]
    pub mint_large_rewriting: Option<Measured>,
}

/// Redis's persistence before and after each scale window: a fork (AOF
/// rewrite) inside a window is part of what that window measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ScaleRedis {
    /// Around the small window.
    pub small: [crate::procs::Persistence; 2],
    /// Around the large window.
    pub large: [crate::procs::Persistence; 2],
    /// Around the large window during an AOF rewrite.
    #[serde(default)]
    pub rewriting: [crate::procs::Persistence; 2],
    /// Seconds waited before the large window for the preload's AOF
    /// rewrite and page cache to settle.
    #[serde(default)]
    pub settled_s: f64,
}

/// Everything a run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    /// `full` or `quick`.
    pub profile: String,
    /// The machine.
    pub machine: Machine,
    /// Commands that produced this.
    pub commands: Vec<String>,
    /// Wall time of the whole run, seconds.
    pub wall_s: f64,

    /// Mint, 1 in flight.
    pub mint_c1: Outcome<Measured>,
    /// Mint, 16 in flight.
    pub mint_c16: Outcome<Measured>,
    /// Mint at fixed offered rates.
    pub mint_sweep: Vec<SweepPoint>,
    /// Introspect, 16 in flight.
    pub introspect_c16: Outcome<Measured>,
    /// ReleaseToken (single-grant revocation), 16 in flight.
    pub release_c16: Outcome<Measured>,
    /// DelegateToken, 16 in flight.
    pub delegate_c16: Outcome<Measured>,
    /// Tokens by the RFC 7523 `jwt-bearer` grant over the HTTPS OAuth facade, 16 in flight.
    #[serde(default = "not_measured")]
    pub jwt_bearer_c16: Outcome<Measured>,
    /// Completing tasks of growing size.
    pub complete: Outcome<Vec<CompleteTask>>,
    /// Revocation propagation to a subscribed verifier.
    pub propagation: Outcome<Propagation>,
    /// The SDK's offline verification on one core.
    pub sdk_verify: Outcome<PerCore>,
    /// One Cedar decision of the mint path (baseline policy set) on one core.
    pub policy: Outcome<PerCore>,
    /// tesserad's peak RSS after the mint loads (`VmHWM`).
    pub tesserad_peak_rss: Option<u64>,
    /// Live-grant scale.
    pub scale: Outcome<Scale>,

    /// ring on one core.
    pub ring: Outcome<RingLimits>,
    /// The mTLS echo, 1 in flight.
    pub echo_c1: Outcome<Measured>,
    /// The mTLS echo, 16 in flight.
    pub echo_c16: Outcome<Measured>,
    /// The echo at fixed offered rates.
    pub echo_sweep: Vec<SweepPoint>,
    /// redis-benchmark.
    pub redis_bench: Outcome<Vec<RedisBench>>,

    /// OpenBao dev mode.
    pub bao_dev: Outcome<BaoResults>,
    /// OpenBao with raft storage.
    pub bao_raft: Outcome<BaoResults>,

    /// The Python SDK's verifier (absent from runs made before it was measured).
    #[serde(default = "not_measured")]
    pub python_sdk: Outcome<PythonSdk>,

    /// Where the broker's time goes (a `perf` profile of the mint load), if taken.
    pub profile_report: Option<String>,
    /// Free-form notes the run made (what was skipped and why).
    pub notes: Vec<String>,
}

fn not_measured<T>() -> Outcome<T> {
    Outcome::NotAvailable {
        reason: "not measured by this run".to_owned(),
    }
}
