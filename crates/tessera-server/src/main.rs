//! `tesserad`: load and validate the configuration, bind, serve until SIGTERM.
//!
//! Exit codes: 0 clean stop; 64 bad configuration, key/TLS material, or a
//! path the broker cannot use (the audit file unwritable, held by another
//! broker or with a broken chain; the Unix socket's directory): a restart
//! cannot fix those; 1 any other failure.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use tessera_core::clock::SystemClock;
use tessera_server::config::{Config, ProcessEnv};
use tessera_server::{Listeners, ServeError, prepare, serve};

/// The Tessera credential broker.
#[derive(Debug, Parser)]
#[command(name = "tesserad", version, about)]
struct Args {
    /// Configuration file (TOML). `TESSERA_<SECTION>__<KEY>` variables override it.
    #[arg(long, env = "TESSERA_CONFIG", default_value = "tesserad.toml")]
    config: PathBuf,
    /// Once serving, write `{"grpc":"ADDR","http":"ADDR","oauth":"ADDR","pid":N}` here (for scripts and tests).
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Validate the configuration and key material, and open every path the
    /// broker writes (audit file, Unix socket directory), then exit (64 on error).
    #[arg(long)]
    check: bool,
}

const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load(&args.config, &ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tesserad: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tesserad: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The OTLP exporter (if any) is made inside the runtime it sends from.
    let otel = {
        let _inside = runtime.enter();
        init_logging(&config.log.level)
    };
    let prepared = match prepare(config) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("tesserad: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if args.check {
        if let Err(e) = tessera_server::check_writable(prepared.config()) {
            eprintln!("tesserad: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
        println!("tesserad: configuration `{}` is valid", args.config.display());
        return ExitCode::SUCCESS;
    }
    let code = match runtime.block_on(run(prepared, args.ready_file)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let error = causes(&e);
            tracing::error!(error = %error, "tesserad failed");
            eprintln!("tesserad: {error}");
            if e.downcast_ref::<ServeError>().is_some_and(ServeError::is_configuration) {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    };
    if let Some(provider) = otel {
        // Flush the spans still batched.
        let _inside = runtime.enter();
        if let Err(e) = provider.shutdown() {
            eprintln!("tesserad: OpenTelemetry export did not flush: {e}");
        }
    }
    code
}

async fn run(prepared: tessera_server::Prepared, ready_file: Option<PathBuf>) -> anyhow::Result<()> {
    // Before anything says we are up (the ready file, /readyz): a SIGTERM
    // from then on drains instead of killing the process outright.
    let shutdown = shutdown_signal()?;
    let listen = prepared.config().server.listen;
    let grpc = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot bind {listen}"))?;
    let addr = grpc.local_addr()?;
    let http_listen = prepared.config().server.http_listen;
    let http = tokio::net::TcpListener::bind(http_listen)
        .await
        .with_context(|| format!("cannot bind {http_listen} (server.http_listen)"))?;
    let http_addr = http.local_addr()?;
    let oauth = match prepared.config().oauth.listen {
        Some(listen) => Some(
            tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot bind {listen} (oauth.listen)"))?,
        ),
        None => None,
    };
    let oauth_addr = oauth.as_ref().map(|l| l.local_addr()).transpose()?;
    if let Some(path) = ready_file {
        let tmp = path.with_extension("tmp");
        let body = serde_json::json!({
            "grpc": addr.to_string(),
            "http": http_addr.to_string(),
            "oauth": oauth_addr.map(|a| a.to_string()),
            "pid": std::process::id(),
        });
        std::fs::write(&tmp, body.to_string()).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    }
    serve(
        prepared,
        Listeners {
            grpc,
            http: Some(http),
            oauth,
        },
        Arc::new(SystemClock),
        shutdown,
    )
    .await?;
    tracing::info!("tesserad stopped");
    Ok(())
}

/// `e` and its causes, `: `-separated, each once: our error types name
/// their cause in their message and also keep it as `source()`, which
/// `{e:#}` would print twice.
fn causes(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed on the call,
/// not on the first poll, so no signal after it takes the default action.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// JSON logs on stderr and, when the standard `OTEL_*` variables ask for
/// it, OpenTelemetry trace export; returns the tracer provider to flush at
/// exit.
fn init_logging(level: &str) -> Option<opentelemetry_sdk::trace::SdkTracerProvider> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_env("TESSERA_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .with_writer(std::io::stderr);
    let (otel, provider) = match tessera_server::telemetry::otel_tracer_provider() {
        Ok(Some(provider)) => {
            use opentelemetry::trace::TracerProvider as _;
            let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("tesserad"));
            (Some(layer), Some(provider))
        }
        Ok(None) => (None, None),
        Err(e) => {
            eprintln!("tesserad: OpenTelemetry export is off: {e}");
            (None, None)
        }
    };
    tracing_subscriber::registry().with(filter).with(logs).with(otel).init();
    provider
}
