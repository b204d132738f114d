//! Prometheus metrics: the process-wide recorder, one helper per signal, and
//! a tower layer that times every gRPC call.
//!
//! INVARIANT: no label carries an identity, token, grant or task id. Labels
//! are drawn from small fixed sets (scope class, operation, cause, gRPC
//! method of a served RPC, gRPC code), so a caller cannot grow the series
//! count.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Instant;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Tokens minted, by scope class.
pub const TOKENS_ISSUED: &str = "tessera_tokens_issued_total";
/// Policy decisions, by result (`allow`/`deny`) and operation.
pub const DECISIONS: &str = "tessera_decisions_total";
/// Grants revoked, by cause.
pub const REVOCATIONS: &str = "tessera_revocations_total";
/// Store calls that failed.
pub const STORE_ERRORS: &str = "tessera_store_errors_total";
/// Audit records that could not be written.
pub const AUDIT_FAILURES: &str = "tessera_audit_failures_total";
/// Approval webhook notices given up on.
pub const WEBHOOK_FAILURES: &str = "tessera_approval_webhook_failures_total";
/// gRPC call latency (to response headers), by method and status code; its
/// `_count` is the request counter.
pub const REQUEST_DURATION: &str = "tessera_request_duration_seconds";
/// Introspect answers, by where they came from (`memory`: the feed
/// follower; `store`: a store read).
pub const INTROSPECTIONS: &str = "tessera_introspections_total";
/// Grants live in the store (sampled).
pub const LIVE_GRANTS: &str = "tessera_live_grants";
/// Always 1, labelled with the version.
pub const BUILD_INFO: &str = "tessera_build_info";
/// Policy reloads, by result (counted in `broker::policy`).
pub const POLICY_RELOADS: &str = "tessera_policy_reloads_total";
/// Attestation refusals, by method and reason (counted in `attest`).
pub const ATTESTATION_REJECTED: &str = "tessera_attestation_rejected_total";
/// Refusals over the per-source audit sample, by method (counted in
/// `broker::attestation`).
pub const ATTESTATION_UNAUDITED: &str = "tessera_attestation_refusals_unaudited_total";
/// JWKS loads of JWT issuers, by issuer and result (counted in `attest::jwt`).
pub const JWKS_LOADS: &str = "tessera_jwks_loads_total";

/// Always 1 with a Redis store, labelled with what a Redis crash can lose
/// (read at start): `appendonly`, `appendfsync` (`unknown` when Redis
/// refused `CONFIG GET`) and `crash_loss` (`none`, `1s`, `os`, `snapshot`,
/// `unknown`).
pub const REDIS_DURABILITY: &str = "tessera_redis_durability";

/// How often [`LIVE_GRANTS`] is sampled from the store.
pub const LIVE_GRANTS_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Latency buckets, in seconds: 1 ms to 10 s (the default request timeout).
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's Prometheus handle, installing the global recorder on first
/// use. If another recorder was installed first (an embedding program), the
/// handle renders only what reaches ours: nothing, rather than a panic.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new();
        let builder = match builder.set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.into()), BUCKETS) {
            Ok(b) => b,
            // Unreachable: BUCKETS is not empty.
            Err(_) => PrometheusBuilder::new(),
        };
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        describe();
        handle
    })
}

fn describe() {
    metrics::describe_counter!(TOKENS_ISSUED, "Access tokens issued, by scope class.");
    metrics::describe_counter!(DECISIONS, "Broker decisions, by result and operation.");
    metrics::describe_counter!(REVOCATIONS, "Grants revoked, by cause.");
    metrics::describe_counter!(STORE_ERRORS, "Requests that failed because the state store failed.");
    metrics::describe_counter!(AUDIT_FAILURES, "Audit records that could not be written.");
    metrics::describe_counter!(
        WEBHOOK_FAILURES,
        "Approval webhook notices given up on after every attempt failed."
    );
    metrics::describe_histogram!(
        REQUEST_DURATION,
        metrics::Unit::Seconds,
        "gRPC request latency to response headers, by method and grpc_code (the status at response headers: \
         a stream counts as OK once open)."
    );
    metrics::describe_gauge!(
        LIVE_GRANTS,
        "Grants live (not expired, not revoked) in the store, sampled every 30 s; store-wide, so every replica \
         reports the same number: aggregate with max, not sum."
    );
    metrics::describe_gauge!(
        REDIS_DURABILITY,
        "Always 1 with a Redis store: its appendonly and appendfsync as read at start, and crash_loss, what a \
         Redis or host crash can lose of acknowledged writes (none, 1s, os, snapshot, unknown)."
    );
    metrics::describe_gauge!(BUILD_INFO, "Always 1; the version label says which tesserad runs.");
    metrics::describe_counter!(
        INTROSPECTIONS,
        "Introspect answers, by where they came from (the feed follower's memory or the store)."
    );
    metrics::describe_counter!(POLICY_RELOADS, "Policy reloads (SIGHUP), by result.");
    metrics::describe_counter!(
        ATTESTATION_REJECTED,
        "Callers refused at attestation, by method and reason."
    );
    metrics::describe_counter!(
        ATTESTATION_UNAUDITED,
        "Attestation refusals past the per-source sample, counted but not audited, by method."
    );
    metrics::describe_counter!(
        JWKS_LOADS,
        "JWKS loads of configured JWT issuers, by issuer and result."
    );
    process::describe();
}

/// Registers every counter at zero, with the label values known at start,
/// so `/metrics` shows "none yet" as 0 rather than an absent series (which
/// alerts cannot tell from "not scraped"); sets [`BUILD_INFO`]. Series with
/// labels known only later (a method, an attestation reason) appear at
/// their first event.
pub fn register(jwt_issuers: &[&str]) {
    let _ = handle();
    for class in ["discover", "read", "write", "admin"] {
        metrics::counter!(TOKENS_ISSUED, "class" => class).increment(0);
    }
    for operation in [
        "request_token",
        "delegate_token",
        "start_task",
        "complete_task",
        "revoke_task",
    ] {
        for result in ["allow", "deny"] {
            metrics::counter!(DECISIONS, "result" => result, "operation" => operation).increment(0);
        }
    }
    for cause in [
        "task_completed",
        "task_revoked",
        "grant_revoked",
        "released",
        "identity",
        "break_glass",
    ] {
        metrics::counter!(REVOCATIONS, "cause" => cause).increment(0);
    }
    metrics::counter!(STORE_ERRORS).increment(0);
    for from in ["memory", "store"] {
        metrics::counter!(INTROSPECTIONS, "from" => from).increment(0);
    }
    metrics::counter!(AUDIT_FAILURES).increment(0);
    metrics::counter!(WEBHOOK_FAILURES).increment(0);
    for result in ["ok", "refused"] {
        metrics::counter!(POLICY_RELOADS, "result" => result).increment(0);
    }
    for method in ["x509", "jwt", "unix"] {
        // "store": the one reason every method shares (the store did not answer).
        metrics::counter!(ATTESTATION_REJECTED, "method" => method, "reason" => "store").increment(0);
        metrics::counter!(ATTESTATION_UNAUDITED, "method" => method).increment(0);
    }
    for issuer in jwt_issuers {
        for result in ["ok", "error"] {
            metrics::counter!(JWKS_LOADS, "issuer" => (*issuer).to_owned(), "result" => result).increment(0);
        }
    }
    metrics::gauge!(LIVE_GRANTS).set(0.0);
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    process::sample();
}

/// Exports [`REDIS_DURABILITY`] and says at start what a Redis crash can
/// lose: a warning when acknowledged revocations could be lost (no
/// `appendfsync always`, and no `[store] min_replicas` to hold them on a
/// replica too), or when Redis would not say.
pub fn redis_durability(d: &tessera_store::RedisDurability, min_replicas: u32) {
    let appendfsync = d.appendfsync.clone().unwrap_or_else(|| "unknown".into());
    let appendonly = if d.appendonly { "yes" } else { "no" };
    let loss = d.crash_loss();
    metrics::gauge!(
        REDIS_DURABILITY,
        "appendonly" => appendonly,
        "appendfsync" => appendfsync.clone(),
        "crash_loss" => loss
    )
    .set(1.0);
    let can_lose = d.crash_loss_text();
    if loss == "none" {
        tracing::info!(
            appendonly,
            appendfsync,
            crash_loss = loss,
            "redis durability: a crash loses {can_lose}"
        );
    } else if min_replicas > 0 {
        tracing::info!(
            appendonly,
            appendfsync,
            crash_loss = loss,
            min_replicas,
            "redis durability: a crash of one node can lose {can_lose}; revocations are acknowledged only once \
             min_replicas replicas hold them"
        );
    } else if let Some(why) = &d.unknown_because {
        tracing::warn!(
            appendonly,
            reason = %why,
            crash_loss = loss,
            "redis durability unknown: acknowledged revocations may be lost on a crash; grant the broker \
             `CONFIG GET appendfsync` or check it yourself (docs/OPERATIONS.md, Durability)"
        );
    } else {
        tracing::warn!(
            appendonly,
            appendfsync,
            crash_loss = loss,
            "acknowledged revocations can be lost on a crash: {can_lose}; set `appendfsync always` or \
             `[store] min_replicas` (docs/OPERATIONS.md, Durability)"
        );
    }
}

/// Samples [`LIVE_GRANTS`] from `store` now and every [`LIVE_GRANTS_EVERY`]:
/// the live grants of every active task. One store call per active task,
/// so it runs rarely; a failed sample keeps the last value.
pub async fn sample_live_grants(
    store: std::sync::Arc<dyn tessera_store::GrantStore>,
    clock: std::sync::Arc<dyn tessera_core::clock::Clock>,
) {
    let mut tick = tokio::time::interval(LIVE_GRANTS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = clock.now();
        let count = async {
            let mut live = 0_u64;
            for task in store.active_task_ids(now).await? {
                live = live.saturating_add(store.live_grants(&task, now).await?);
            }
            Ok::<_, tessera_store::StoreError>(live)
        };
        match count.await {
            // Precision: exact up to 2^53 grants.
            #[expect(clippy::cast_precision_loss, reason = "a grant count is far below 2^53")]
            Ok(live) => metrics::gauge!(LIVE_GRANTS).set(live as f64),
            Err(e) => tracing::debug!(error = %e, "could not count live grants; keeping the last sample"),
        }
    }
}

/// `process_*` metrics in the Prometheus client libraries' names, read from
/// `/proc/self` at each scrape (Linux only; elsewhere they stay absent).
mod process {
    /// CPU time (user and system), seconds. A gauge: the metrics facade's
    /// counters are integers.
    const CPU: &str = "process_cpu_seconds_total";
    const RESIDENT: &str = "process_resident_memory_bytes";
    const VIRTUAL: &str = "process_virtual_memory_bytes";
    const OPEN_FDS: &str = "process_open_fds";
    const MAX_FDS: &str = "process_max_fds";
    const START_TIME: &str = "process_start_time_seconds";

    pub(super) fn describe() {
        metrics::describe_gauge!(
            CPU,
            metrics::Unit::Seconds,
            "Total user and system CPU time spent in seconds."
        );
        metrics::describe_gauge!(RESIDENT, metrics::Unit::Bytes, "Resident memory size in bytes.");
        metrics::describe_gauge!(VIRTUAL, metrics::Unit::Bytes, "Virtual memory size in bytes.");
        metrics::describe_gauge!(OPEN_FDS, "Number of open file descriptors.");
        metrics::describe_gauge!(MAX_FDS, "Maximum number of open file descriptors.");
        metrics::describe_gauge!(
            START_TIME,
            metrics::Unit::Seconds,
            "Start time of the process since unix epoch in seconds."
        );
    }

    /// Reads `/proc/self` into the gauges; a file that cannot be read
    /// leaves its gauges as they were.
    #[expect(clippy::cast_precision_loss, reason = "byte and tick counts are far below 2^53")]
    pub(super) fn sample() {
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        if let Some(stat) = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .as_deref()
            .and_then(stat)
        {
            if ticks > 0.0 {
                metrics::gauge!(CPU).set((stat.utime + stat.stime) as f64 / ticks);
                if let Some(boot) = boot_time() {
                    metrics::gauge!(START_TIME).set(boot as f64 + stat.starttime as f64 / ticks);
                }
            }
            metrics::gauge!(VIRTUAL).set(stat.vsize as f64);
            metrics::gauge!(RESIDENT).set(stat.rss_pages.saturating_mul(rustix::param::page_size() as u64) as f64);
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            metrics::gauge!(OPEN_FDS).set(fds.count() as f64);
        }
        if let Some(max) = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .as_deref()
            .and_then(max_fds)
        {
            metrics::gauge!(MAX_FDS).set(max as f64);
        }
    }

    struct Stat {
        utime: u64,
        stime: u64,
        starttime: u64,
        vsize: u64,
        rss_pages: u64,
    }

    /// `/proc/self/stat`: fields after the command name (which may hold
    /// spaces, so split after its closing parenthesis), from field 3.
    fn stat(text: &str) -> Option<Stat> {
        let (_, rest) = text.rsplit_once(')')?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // proc(5) numbers fields from 1; `rest` starts at field 3.
        let field = |n: usize| fields.get(n.checked_sub(3)?)?.parse::<u64>().ok();
        Some(Stat {
            utime: field(14)?,
            stime: field(15)?,
            starttime: field(22)?,
            vsize: field(23)?,
            rss_pages: field(24)?,
        })
    }

    /// The boot time, seconds since the epoch (`btime` in `/proc/stat`).
    fn boot_time() -> Option<u64> {
        let text = std::fs::read_to_string("/proc/stat").ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse().ok())
    }

    /// The soft limit of `Max open files` in `/proc/self/limits`.
    fn max_fds(text: &str) -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with("Max open files"))?;
        line.trim_start_matches("Max open files")
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn stat_fields_are_read_past_a_command_with_spaces() {
            let text = "42 (tes (x) d) S 1 2 3 4 5 6 7 8 9 10 110 220 13 14 15 16 17 18 3300 4400 55 rest";
            let stat = super::stat(text).unwrap();
            assert_eq!((stat.utime, stat.stime), (110, 220));
            assert_eq!((stat.starttime, stat.vsize, stat.rss_pages), (3300, 4400, 55));
        }

        #[test]
        fn max_fds_is_the_soft_limit() {
            let text = "Limit                     Soft Limit           Hard Limit           Units\n\
                        Max open files            1024                 524288               files\n";
            assert_eq!(super::max_fds(text), Some(1024));
        }
    }
}

/// The Prometheus text exposition of every metric.
pub fn render() -> String {
    let handle = handle();
    process::sample();
    handle.run_upkeep();
    handle.render()
}

/// A token was issued for a scope of `class` (`read`, `write`, …).
pub fn token_issued(class: &impl std::fmt::Display) {
    metrics::counter!(TOKENS_ISSUED, "class" => class.to_string()).increment(1);
}

/// The broker allowed or denied `operation` (`request_token`, `start_task`, …).
pub fn decision(operation: &'static str, allowed: bool) {
    let result = if allowed { "allow" } else { "deny" };
    metrics::counter!(DECISIONS, "result" => result, "operation" => operation).increment(1);
}

/// `grants` grants were revoked for `cause` (`task_completed`, `task_revoked`,
/// `grant_revoked`, `released`, `identity`, `break_glass`). Zero still
/// registers the series.
pub fn revoked(cause: &'static str, grants: u64) {
    metrics::counter!(REVOCATIONS, "cause" => cause).increment(grants);
}

/// A token was issued: an allowed `request_token` decision and a token of `class`.
pub fn issued(class: &impl std::fmt::Display) {
    decision("request_token", true);
    token_issued(class);
}

/// The `operation` label of ending a task in `state`.
pub fn end_task_operation(state: tessera_core::task::TaskState) -> &'static str {
    if state == tessera_core::task::TaskState::Revoked {
        "revoke_task"
    } else {
        "complete_task"
    }
}

/// A task ended in `state`, revoking `grants` grants.
pub fn task_ended(state: tessera_core::task::TaskState, grants: u64) {
    decision(end_task_operation(state), true);
    let cause = if state == tessera_core::task::TaskState::Revoked {
        "task_revoked"
    } else {
        "task_completed"
    };
    revoked(cause, grants);
}

/// One grant (and `grants - 1` descendants) revoked by its holder
/// (`TokenReleased`) or an operator.
pub fn grant_revoked(kind: tessera_core::audit::AuditKind, grants: u64) {
    let cause = if kind == tessera_core::audit::AuditKind::TokenReleased {
        "released"
    } else {
        "grant_revoked"
    };
    revoked(cause, grants);
}

/// A request failed because the store failed.
pub fn store_error() {
    metrics::counter!(STORE_ERRORS).increment(1);
}

/// The OpenTelemetry tracer provider the standard variables ask for:
/// `None` unless `OTEL_EXPORTER_OTLP_ENDPOINT` or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set (and neither
/// `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none`). Spans are sent
/// over OTLP/gRPC in batches (`OTEL_BSP_*`), as service `tesserad` unless
/// `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` say otherwise. Spans
/// carry what the logs carry (method, request id, ids of grants and tasks),
/// never a token. Must be called inside the Tokio runtime.
pub fn otel_tracer_provider() -> Result<Option<opentelemetry_sdk::trace::SdkTracerProvider>, String> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
    {
        return Ok(None);
    }
    if var("OTEL_EXPORTER_OTLP_ENDPOINT").is_none() && var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none() {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| e.to_string())?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if var("OTEL_SERVICE_NAME").is_none()
        && !var("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|v| v.contains("service.name="))
    {
        resource = resource.with_service_name("tesserad");
    }
    Ok(Some(
        opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build(),
    ))
}

/// An audit record could not be written.
pub fn audit_failure() {
    metrics::counter!(AUDIT_FAILURES).increment(1);
}

/// An approval webhook notice was given up on.
pub fn webhook_failure() {
    metrics::counter!(WEBHOOK_FAILURES).increment(1);
}

/// The `method` label of a gRPC path: `Service/Method` for our, health and
/// reflection services, else `unknown`. The caller also folds UNIMPLEMENTED
/// answers into `unknown`, so made-up method names add no series.
fn method_label(path: &str) -> String {
    const SERVICES: &[&str] = &["tessera.v1.", "grpc.health.v1.", "grpc.reflection.v1."];
    let Some(rest) = path.strip_prefix('/') else {
        return "unknown".into();
    };
    let known = SERVICES.iter().any(|s| rest.starts_with(s))
        && rest.len() <= 96
        && rest.split('/').count() == 2
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/'));
    if known { rest.to_owned() } else { "unknown".into() }
}

/// The canonical name of a `grpc-status` value (`UNKNOWN` for anything
/// else, so the label set stays bounded).
fn code_label(status: &[u8]) -> &'static str {
    match status {
        b"0" => "OK",
        b"1" => "CANCELLED",
        b"3" => "INVALID_ARGUMENT",
        b"4" => "DEADLINE_EXCEEDED",
        b"5" => "NOT_FOUND",
        b"6" => "ALREADY_EXISTS",
        b"7" => "PERMISSION_DENIED",
        b"8" => "RESOURCE_EXHAUSTED",
        b"9" => "FAILED_PRECONDITION",
        b"10" => "ABORTED",
        b"11" => "OUT_OF_RANGE",
        b"12" => "UNIMPLEMENTED",
        b"13" => "INTERNAL",
        b"14" => "UNAVAILABLE",
        b"15" => "DATA_LOSS",
        b"16" => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

tokio::task_local! {
    /// The id of the gRPC call being served: in its log lines (the `rpc`
    /// span), in every audit record it writes, and in the `x-request-id`
    /// response header, so a caller's report leads to both.
    static REQUEST_ID: String;
}

/// The id of the call being served, if any.
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// The tower layer around every gRPC call: it assigns the request id (see
/// [`current_request_id`]) and records [`REQUEST_DURATION`].
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricsLayer;

impl<S> tower_layer::Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService { inner }
    }
}

/// See [`MetricsLayer`].
#[derive(Debug, Clone)]
pub struct MetricsService<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> tower_service::Service<hyper::Request<B>> for MetricsService<S>
where
    S: tower_service::Service<hyper::Request<B>, Response = hyper::Response<R>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    R: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: hyper::Request<B>) -> Self::Future {
        use tracing::Instrument as _;
        let method = method_label(req.uri().path());
        let started = Instant::now();
        let request_id: String = tessera_core::grant::random_id()
            .map(|id| id.chars().take(16).collect())
            .unwrap_or_else(|_| "unknown".into());
        let span = tracing::info_span!("rpc", request_id = %request_id, method = %method);
        let fut = REQUEST_ID
            .scope(request_id.clone(), self.inner.call(req))
            .instrument(span);
        Box::pin(async move {
            let mut result = fut.await;
            if let Ok(response) = result.as_mut()
                && let Ok(value) = hyper::header::HeaderValue::from_str(&request_id)
            {
                response.headers_mut().insert("x-request-id", value);
            }
            // A status in the headers is a trailers-only answer (an error the
            // handler returned); none means the call went ahead (OK so far).
            let code = match result.as_ref() {
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .map_or("OK", |v| code_label(v.as_bytes())),
                Err(_) => "UNKNOWN",
            };
            // UNIMPLEMENTED: a made-up method name adds no series.
            let method = if code == "UNIMPLEMENTED" {
                "unknown".into()
            } else {
                method
            };
            metrics::histogram!(REQUEST_DURATION, "method" => method, "grpc_code" => code)
                .record(started.elapsed().as_secs_f64());
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_are_bounded() {
        assert_eq!(
            method_label("/tessera.v1.AgentService/RequestToken"),
            "tessera.v1.AgentService/RequestToken"
        );
        assert_eq!(
            method_label("/grpc.health.v1.Health/Check"),
            "grpc.health.v1.Health/Check"
        );
        assert_eq!(method_label("/evil.Service/x"), "unknown");
        assert_eq!(method_label("/tessera.v1.A/b/c"), "unknown");
        assert_eq!(method_label("/tessera.v1.A/spiffe:x"), "unknown");
        assert_eq!(method_label("no-slash"), "unknown");
        assert_eq!(code_label(b"7"), "PERMISSION_DENIED");
        assert_eq!(code_label(b"99"), "UNKNOWN");
    }

    #[test]
    fn renders_counters_and_histogram_buckets() {
        let _ = handle();
        token_issued(&"read");
        decision("request_token", false);
        revoked("task_completed", 1);
        metrics::histogram!(REQUEST_DURATION, "method" => "tessera.v1.AgentService/RequestToken").record(0.003);
        let text = render();
        assert!(text.contains(r#"tessera_tokens_issued_total{class="read"}"#), "{text}");
        assert!(
            text.contains(r#"tessera_decisions_total{result="deny",operation="request_token"}"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tessera_revocations_total{cause="task_completed"}"#),
            "{text}"
        );
        assert!(text.contains("tessera_request_duration_seconds_bucket{"), "{text}");
    }
}
