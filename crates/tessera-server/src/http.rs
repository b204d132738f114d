//! The plain-HTTP operations listener: `GET /metrics` (Prometheus text),
//! `GET /healthz` (200 while the process serves) and `GET /readyz` (200 while
//! gRPC health is SERVING, i.e. the store answers; else 503).
//!
//! It carries no secrets and no identities, so it is plain HTTP; bind it to
//! loopback or a scrape-only network. One request per connection.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// Most operations connections served at once; more wait in the backlog.
const MAX_CONNECTIONS: usize = 64;
/// A request whose headers have not arrived by then is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// `server.http_listen` when the file does not set it.
pub(crate) fn default_listen() -> String {
    "127.0.0.1:7444".into()
}

/// Parses `server.http_listen`.
pub(crate) fn parse_listen(value: &str) -> Result<std::net::SocketAddr, crate::config::ConfigError> {
    value.parse().map_err(|_| crate::config::ConfigError::Key {
        key: "server.http_listen".into(),
        message: format!("`{value}` is not an IP:port address"),
    })
}

/// Whether the broker is ready: shared between the store watch and `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Records whether gRPC health is SERVING.
    pub fn set(&self, serving: bool) {
        self.0.store(serving, Ordering::Relaxed);
    }

    /// Whether gRPC health is SERVING.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Serves the operations endpoints on `listener` until `stop` resolves; open
/// connections are dropped with it.
pub async fn serve(listener: TcpListener, ready: Readiness, stop: impl std::future::Future<Output = ()>) {
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(http = %addr, "operations endpoint serving /metrics, /healthz, /readyz");
    let mut conns = JoinSet::new();
    tokio::pin!(stop);
    loop {
        while conns.try_join_next().is_some() {}
        if conns.len() >= MAX_CONNECTIONS {
            tokio::select! {
                () = &mut stop => break,
                _ = conns.join_next() => continue,
            }
        }
        let stream = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "operations endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let ready = ready.clone();
        conns.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let ready = ready.clone();
                async move { Ok::<_, Infallible>(route(&req, &ready)) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "operations connection ended with an error");
            }
        });
    }
    conns.abort_all();
}

fn route(req: &Request<Incoming>, ready: &Readiness) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            crate::telemetry::render(),
        ),
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" if ready.get() => reply(StatusCode::OK, "text/plain", "ready\n".into()),
        "/readyz" => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n".into()),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_listen_defaults_to_7444_and_names_its_key() {
        assert_eq!(parse_listen(&default_listen()).map(|a| a.port()).ok(), Some(7444));
        let err = parse_listen("nowhere")
            .map(drop)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("server.http_listen"), "{err}");
    }

    #[test]
    fn readiness_follows_the_store_watch() {
        let ready = Readiness::default();
        assert!(!ready.get());
        ready.set(true);
        assert!(ready.clone().get());
    }
}
