//! Prometheus metrics: the process-wide recorder, one helper per signal, and
//! a tower layer that times every gRPC call.
//!
//! INVARIANT: no label carries an identity, token, grant or task id. Labels
//! are drawn from small fixed sets (scope class, operation, cause, gRPC
//! method of a served RPC), so a caller cannot grow the series count.

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
/// gRPC call latency (to response headers), by method.
pub const REQUEST_DURATION: &str = "tessera_request_duration_seconds";

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
        "gRPC request latency to response headers, by method."
    );
}

/// The Prometheus text exposition of every metric.
pub fn render() -> String {
    let handle = handle();
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
            // grpc-status 12 in the headers: a trailers-only UNIMPLEMENTED answer.
            let unimplemented = result
                .as_ref()
                .is_ok_and(|r| r.headers().get("grpc-status").is_some_and(|v| v.as_bytes() == b"12"));
            let method = if unimplemented { "unknown".into() } else { method };
            metrics::histogram!(REQUEST_DURATION, "method" => method).record(started.elapsed().as_secs_f64());
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
