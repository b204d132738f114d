//! The load generator: closed loop (a fixed number of operations in flight)
//! or open loop (operations started at a fixed rate whatever the replies do),
//! bounded by a duration and/or a count, with an HDR histogram of latencies.
//!
//! Open-loop latencies are measured from the moment each operation was *due*,
//! not from when it actually started, so a stalled server shows up as latency
//! instead of silently lowering the offered load (coordinated omission).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

/// Longest latency the histograms hold, in microseconds (longer ones are clamped).
const MAX_LATENCY_US: u64 = 120_000_000;
/// How many distinct error messages a run keeps.
const ERROR_SAMPLES: usize = 5;

/// How operations are offered.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Mode {
    /// `concurrency` workers, each starting its next operation when the last one ends.
    Closed {
        /// Operations in flight.
        concurrency: usize,
    },
    /// Operations due at `rate` per second; at most `max_in_flight` at once
    /// (a due operation beyond that is counted as `dropped`, never silently skipped).
    Open {
        /// Offered operations per second.
        rate: f64,
        /// Cap on operations in flight.
        max_in_flight: usize,
    },
}

/// What to run and for how long. At least one bound must be set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadSpec {
    /// Scenario name shown on the progress bar.
    pub name: String,
    /// Closed or open loop.
    pub mode: Mode,
    /// Stop starting operations after this long.
    pub duration: Option<Duration>,
    /// Stop after this many operations were started.
    pub count: Option<u64>,
}

impl LoadSpec {
    /// A closed loop of `concurrency` in flight.
    pub fn closed(name: &str, concurrency: usize) -> Self {
        Self {
            name: name.to_owned(),
            mode: Mode::Closed {
                concurrency: concurrency.max(1),
            },
            duration: None,
            count: None,
        }
    }

    /// An open loop at `rate` per second.
    pub fn open(name: &str, rate: f64, max_in_flight: usize) -> Self {
        Self {
            name: name.to_owned(),
            mode: Mode::Open {
                rate,
                max_in_flight: max_in_flight.max(1),
            },
            duration: None,
            count: None,
        }
    }

    /// Bounds the run by time.
    pub fn for_duration(mut self, d: Duration) -> Self {
        self.duration = Some(d);
        self
    }

    /// Bounds the run by operations started.
    pub fn for_count(mut self, n: u64) -> Self {
        self.count = Some(n);
        self
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Largest.
    pub max_us: u64,
    /// Mean.
    pub mean_us: f64,
    /// Samples.
    pub samples: u64,
}

impl Latency {
    /// The summary of `h` (all zero for an empty histogram).
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
            mean_us: h.mean(),
            samples: h.len(),
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadResult {
    /// The spec it ran.
    pub spec: LoadSpec,
    /// Operations that succeeded.
    pub ok: u64,
    /// Operations that failed.
    pub errors: u64,
    /// Open loop only: operations due while `max_in_flight` were busy (not started).
    pub dropped: u64,
    /// Wall time from the first start to the last completion, in seconds.
    pub elapsed_s: f64,
    /// Successful operations per second of `elapsed_s`.
    pub rate: f64,
    /// Latency of successful operations.
    pub latency: Latency,
    /// A few distinct error messages.
    pub error_samples: Vec<String>,
}

impl LoadResult {
    /// Fails unless the run measured something: at least one success, a
    /// non-empty histogram and fewer errors than successes.
    pub fn check_measured(&self) -> anyhow::Result<()> {
        if self.ok == 0 || self.latency.samples == 0 {
            anyhow::bail!(
                "{}: measured nothing ({} ok, {} errors: {:?})",
                self.spec.name,
                self.ok,
                self.errors,
                self.error_samples
            );
        }
        if self.errors >= self.ok {
            anyhow::bail!(
                "{}: mostly errors ({} ok, {} errors: {:?})",
                self.spec.name,
                self.ok,
                self.errors,
                self.error_samples
            );
        }
        Ok(())
    }
}

fn histogram() -> Histogram<u64> {
    #[expect(clippy::expect_used, reason = "constant, valid bounds")]
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// A progress bar on stderr, hidden when stderr is not a terminal or `quiet`.
pub fn progress_bar(name: &str, len: Option<u64>, quiet: bool) -> ProgressBar {
    let bar = match len {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    if quiet {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let template = if len.is_some() {
        "{prefix:>28} [{bar:30}] {pos}/{len} {msg}"
    } else {
        "{prefix:>28} {spinner} {pos} {msg}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(name.to_owned());
    bar
}

struct Shared {
    started: AtomicU64,
    bar: ProgressBar,
    deadline: Option<Instant>,
    count: Option<u64>,
}

impl Shared {
    /// Claims the next operation number, or `None` when a bound is reached.
    fn claim(&self) -> Option<u64> {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        let n = self.started.fetch_add(1, Ordering::Relaxed);
        if self.count.is_some_and(|c| n >= c) {
            return None;
        }
        Some(n)
    }
}

#[derive(Default)]
struct Tally {
    ok: u64,
    errors: u64,
    samples: Vec<String>,
}

impl Tally {
    fn error(&mut self, e: String) {
        self.errors += 1;
        if self.samples.len() < ERROR_SAMPLES && !self.samples.contains(&e) {
            self.samples.push(e);
        }
    }

    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        for e in other.samples {
            if self.samples.len() < ERROR_SAMPLES && !self.samples.contains(&e) {
                self.samples.push(e);
            }
        }
        self.errors += other.errors;
    }
}

/// Runs `op(n)` for operation numbers `n = 0, 1, …` as `spec` says and
/// measures it. `op` returns `Err(message)` on failure; the message must not
/// carry a secret (it may be printed).
pub async fn run<F, Fut>(spec: &LoadSpec, quiet: bool, op: F) -> anyhow::Result<LoadResult>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    anyhow::ensure!(
        spec.duration.is_some() || spec.count.is_some(),
        "{}: a load needs a duration or a count",
        spec.name
    );
    let start = Instant::now();
    let bar = progress_bar(&spec.name, spec.count, quiet);
    let shared = Arc::new(Shared {
        started: AtomicU64::new(0),
        bar: bar.clone(),
        deadline: spec.duration.map(|d| start + d),
        count: spec.count,
    });
    let op = Arc::new(op);
    let (hist, tally, dropped) = match spec.mode {
        Mode::Closed { concurrency } => closed(concurrency, shared, op).await?,
        Mode::Open { rate, max_in_flight } => open(rate, max_in_flight, start, shared, op).await?,
    };
    let elapsed = start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    Ok(LoadResult {
        spec: spec.clone(),
        ok: tally.ok,
        errors: tally.errors,
        dropped,
        elapsed_s: elapsed,
        rate: if elapsed > 0.0 { tally.ok as f64 / elapsed } else { 0.0 },
        latency: Latency::of(&hist),
        error_samples: tally.samples,
    })
}

async fn closed<F, Fut>(
    concurrency: usize,
    shared: Arc<Shared>,
    op: Arc<F>,
) -> anyhow::Result<(Histogram<u64>, Tally, u64)>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let shared = shared.clone();
        let op = op.clone();
        workers.push(tokio::spawn(async move {
            let mut hist = histogram();
            let mut tally = Tally::default();
            while let Some(n) = shared.claim() {
                let t = Instant::now();
                match op(n).await {
                    Ok(()) => {
                        record(&mut hist, t.elapsed());
                        tally.ok += 1;
                    }
                    Err(e) => tally.error(e),
                }
                shared.bar.inc(1);
            }
            (hist, tally)
        }));
    }
    let mut hist = histogram();
    let mut tally = Tally::default();
    for w in workers {
        let (h, t) = w.await?;
        hist.add(&h)?;
        tally.merge(t);
    }
    Ok((hist, tally, 0))
}

async fn open<F, Fut>(
    rate: f64,
    max_in_flight: usize,
    start: Instant,
    shared: Arc<Shared>,
    op: Arc<F>,
) -> anyhow::Result<(Histogram<u64>, Tally, u64)>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    anyhow::ensure!(rate > 0.0 && rate.is_finite(), "an open loop needs a positive rate");
    let slots = Arc::new(tokio::sync::Semaphore::new(max_in_flight));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Option<Duration>, Option<String>)>();
    let mut dropped = 0u64;
    let mut in_flight = tokio::task::JoinSet::new();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut due = start;
    while let Some(n) = shared.claim() {
        tokio::time::sleep_until(due.into()).await;
        let intended = due;
        due += interval;
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            dropped += 1;
            shared.bar.inc(1);
            continue;
        };
        let op = op.clone();
        let tx = tx.clone();
        let bar = shared.bar.clone();
        in_flight.spawn(async move {
            let outcome = op(n).await;
            drop(permit);
            let msg = match outcome {
                Ok(()) => (Some(intended.elapsed()), None),
                Err(e) => (None, Some(e)),
            };
            let _ = tx.send(msg);
            bar.inc(1);
        });
        // Reap finished tasks so the set does not grow with the run.
        while in_flight.try_join_next().is_some() {}
    }
    drop(tx);
    while in_flight.join_next().await.is_some() {}
    let mut hist = histogram();
    let mut tally = Tally::default();
    while let Some((lat, err)) = rx.recv().await {
        match (lat, err) {
            (Some(l), _) => {
                record(&mut hist, l);
                tally.ok += 1;
            }
            (None, Some(e)) => tally.error(e),
            (None, None) => {}
        }
    }
    Ok((hist, tally, dropped))
}

fn record(hist: &mut Histogram<u64>, d: Duration) {
    let us = u64::try_from(d.as_micros())
        .unwrap_or(MAX_LATENCY_US)
        .clamp(1, MAX_LATENCY_US);
    hist.saturating_record(us);
}

/// A histogram of explicitly measured durations (for scenarios that time
/// something other than one call, e.g. revocation propagation).
#[derive(Debug)]
pub struct Samples {
    hist: Histogram<u64>,
}

impl Default for Samples {
    fn default() -> Self {
        Self { hist: histogram() }
    }
}

impl Samples {
    /// Records one duration.
    pub fn record(&mut self, d: Duration) {
        record(&mut self.hist, d);
    }

    /// The percentiles.
    pub fn latency(&self) -> Latency {
        Latency::of(&self.hist)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]

    use super::*;

    #[tokio::test]
    async fn a_closed_loop_runs_exactly_its_count() {
        let spec = LoadSpec::closed("t", 4).for_count(100);
        let r = run(&spec, true, |_| async { Ok(()) }).await.unwrap();
        assert_eq!(r.ok, 100);
        assert_eq!(r.errors, 0);
        assert_eq!(r.latency.samples, 100);
        r.check_measured().unwrap();
    }

    #[tokio::test]
    async fn errors_are_counted_and_sampled() {
        let spec = LoadSpec::closed("t", 2).for_count(10);
        let r = run(&spec, true, |n| async move {
            if n % 2 == 0 {
                Err(format!("bad {}", n % 4))
            } else {
                Ok(())
            }
        })
        .await
        .unwrap();
        assert_eq!(r.ok, 5);
        assert_eq!(r.errors, 5);
        assert_eq!(r.error_samples.len(), 2);
        assert!(
            r.check_measured().is_err(),
            "as many errors as successes is not a measurement"
        );
    }

    #[tokio::test]
    async fn an_all_error_run_measured_nothing() {
        let spec = LoadSpec::closed("t", 2).for_count(5);
        let r = run(&spec, true, |_| async { Err("no".to_owned()) }).await.unwrap();
        assert_eq!(r.ok, 0);
        assert!(r.check_measured().is_err());
    }

    #[tokio::test]
    async fn an_open_loop_offers_its_rate_and_counts_latency_from_due_time() {
        let spec = LoadSpec::open("t", 200.0, 8).for_count(40);
        let r = run(&spec, true, |_| async {
            tokio::time::sleep(Duration::from_millis(2)).await;
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(r.ok + r.dropped, 40);
        assert!(
            r.elapsed_s >= 0.19,
            "40 operations at 200/s take about 0.2 s: {}",
            r.elapsed_s
        );
        assert!(r.latency.p50_us >= 2000, "{:?}", r.latency);
    }

    #[tokio::test]
    async fn an_open_loop_drops_what_exceeds_its_in_flight_cap() {
        let spec = LoadSpec::open("t", 1000.0, 1).for_count(20);
        let r = run(&spec, true, |_| async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(())
        })
        .await
        .unwrap();
        assert!(r.dropped > 0, "{r:?}");
        assert_eq!(r.ok + r.dropped, 20);
    }

    #[tokio::test]
    async fn a_duration_bounds_the_run() {
        let spec = LoadSpec::closed("t", 1).for_duration(Duration::from_millis(100));
        let t = Instant::now();
        let r = run(&spec, true, |_| async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok(())
        })
        .await
        .unwrap();
        assert!(t.elapsed() < Duration::from_secs(2));
        assert!(r.ok > 0);
    }

    #[tokio::test]
    async fn an_unbounded_spec_is_refused() {
        let spec = LoadSpec::closed("t", 1);
        assert!(run(&spec, true, |_| async { Ok(()) }).await.is_err());
    }
}
