//! The HTTP edge (axum), on two listeners:
//!
//! - **operations** (`server.http_listen`, plain HTTP): `GET /metrics`
//!   (Prometheus text), `/healthz` (200 while the process serves),
//!   `/readyz` (200 while gRPC health is SERVING, else 503), and the public
//!   `/.well-known/jwks.json` and `/.well-known/oauth-authorization-server`.
//!   It carries no secrets and authenticates no one: bind it to loopback or a
//!   scrape-only network.
//! - **OAuth facade** (`oauth.listen`, HTTPS; see [`oauth`]): the same public
//!   documents, `/healthz`, `/readyz`, and the authenticated RFC 7662
//!   introspection, RFC 7009 revocation and RFC 8693 token exchange. TLS with
//!   an *optional* client certificate: anyone may read the public documents;
//!   the POST endpoints need an X.509-SVID of a registered identity, the same
//!   attestation as on the gRPC port.
//!
//! - **operator console** (`[console] enabled = true`, on the facade's
//!   listener; see [`console`]): server-rendered pages under `/console/`.
//!
//! Both serve HTTP/1.1 keep-alive and bound open connections, header read
//! and idle time, requests and age per connection, request time and body
//! size; nothing logs a request body (which may hold a token).

pub mod config;
pub mod console;
pub mod grants;
pub mod oauth;
pub mod webhook;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower_service::Service as _;

/// Most connections served at once per listener; more wait in the backlog.
const MAX_CONNECTIONS: usize = 256;
/// A request whose headers have not arrived by then is dropped. On a
/// kept-alive connection the clock starts when the previous answer is
/// written, so this is also the idle timeout: an idle connection gives its
/// slot back after at most this long.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests served on one connection; the last answer carries
/// `Connection: close`. With [`MAX_CONNECTION_AGE`] it keeps a busy client
/// from holding a slot for good.
const MAX_REQUESTS_PER_CONNECTION: u64 = 1000;
/// After this long a connection takes no new request: the one in progress
/// (bounded by the request timeout) is answered, then it is closed.
const MAX_CONNECTION_AGE: Duration = Duration::from_secs(60);
/// A TLS handshake not done by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

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

/// The TLS client certificate of the connection a request came on, checked
/// once after the handshake (`None` on plain HTTP or when the client sent
/// none; a handler gets its leaf only through `TrustStore::trusted_leaf`),
/// and the client's address.
#[derive(Debug, Clone, Default)]
pub struct PeerCertificate {
    /// The presented chain and its verdict.
    pub cert: Option<crate::attest::trust::ClientCert>,
    /// Where the connection came from.
    pub remote: Option<std::net::SocketAddr>,
}

/// The operations router: metrics, health and the public documents.
pub fn ops_router(ready: Readiness, facade: Option<Arc<oauth::Facade>>) -> Router {
    let health = health_routes(ready);
    let router = Router::new().route("/metrics", get(metrics)).merge(health);
    match facade {
        Some(facade) => router.merge(oauth::public_routes(facade)),
        None => router,
    }
    .fallback(not_found)
}

/// `/healthz` and `/readyz`.
fn health_routes(ready: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { text(StatusCode::OK, "ok\n") }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    if ready.get() {
                        text(StatusCode::OK, "ready\n")
                    } else {
                        text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    }
                }
            }),
        )
}

/// The OAuth facade's router, with the operator console when it is on.
pub fn oauth_router(ready: Readiness, facade: Arc<oauth::Facade>, console: Option<Arc<console::Console>>) -> Router {
    let router = health_routes(ready)
        .merge(oauth::public_routes(facade.clone()))
        .merge(oauth::authenticated_routes(facade));
    match console {
        Some(console) => router.merge(console::routes(console)),
        None => router,
    }
    .fallback(not_found)
}

async fn metrics() -> Response {
    let mut response = text(StatusCode::OK, crate::telemetry::render());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

async fn not_found(method: Method) -> Response {
    if method == Method::GET || method == Method::HEAD {
        text(StatusCode::NOT_FOUND, "not found\n")
    } else {
        text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    let mut response = (status, body.into()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// Serves `router` on `listener` until `stop` resolves, over TLS when
/// `tls` is given; open connections are dropped with it. Each request must
/// complete within `request_timeout`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<(Arc<rustls::ServerConfig>, Arc<crate::attest::trust::TrustStore>)>,
    request_timeout: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let acceptor = tls.map(|(config, trust)| (TlsAcceptor::from(config), trust));
    tracing::info!(http = %addr, tls = acceptor.is_some(), "http endpoint serving");
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
        let (stream, remote) = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "http endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let acceptor = acceptor.clone();
        conns.spawn(async move {
            let plain = PeerCertificate {
                cert: None,
                remote: Some(remote),
            };
            match acceptor {
                None => serve_connection(TokioIo::new(stream), router, plain, request_timeout).await,
                Some((acceptor, trust)) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                {
                    Ok(Ok(tls)) => {
                        let cert = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .filter(|chain| !chain.is_empty())
                            .map(|chain| trust.check_presented(chain.iter().map(|c| c.clone().into_owned()).collect()));
                        let peer = PeerCertificate { cert, ..plain };
                        serve_connection(TokioIo::new(tls), router, peer, request_timeout).await;
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "https handshake refused"),
                    Err(_) => tracing::debug!("https handshake timed out"),
                },
            }
        });
    }
    conns.abort_all();
}

/// Serves HTTP/1.1 keep-alive on one connection, so an OAuth client pays
/// one TLS handshake per connection rather than per request; bounded so a
/// connection cannot keep its slot: idle or a slow header for at most
/// [`HEADER_TIMEOUT`], each request within `request_timeout`, at most
/// [`MAX_REQUESTS_PER_CONNECTION`] requests and no new request after
/// [`MAX_CONNECTION_AGE`].
async fn serve_connection<I>(io: TokioIo<I>, router: Router, peer: PeerCertificate, request_timeout: Duration)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let served = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(peer.clone());
        let mut router = router.clone();
        let last = served.fetch_add(1, Ordering::Relaxed) + 1 >= MAX_REQUESTS_PER_CONNECTION;
        async move {
            let mut response = match tokio::time::timeout(request_timeout, router.call(req.map(Body::new))).await {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
                Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "request timed out\n"),
            };
            if last {
                // hyper closes the connection after an answer that says so.
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(response)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 * 1024)
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let served = tokio::select! {
        served = conn.as_mut() => served,
        () = tokio::time::sleep(MAX_CONNECTION_AGE) => {
            // No new request; the one in progress is answered first.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = served {
        tracing::debug!(error = %e, "http connection ended with an error");
    }
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
