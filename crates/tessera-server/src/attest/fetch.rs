//! Fetching a JWK Set over HTTPS, defensively: rustls with the ring provider
//! and the configured roots, HTTP/1.1 via hyper, one GET, **no redirect
//! followed** (a 3xx is an error), a body cap enforced while reading, and
//! one deadline over the whole exchange (connect, handshake, headers, body),
//! so a server that drips bytes cannot hold a fetch open.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

/// Why a fetch failed. Never carries the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The URL cannot be fetched (scheme, host).
    #[error("jwks url is unusable: {0}")]
    Url(&'static str),
    /// The roots file could not be read.
    #[error("jwks_ca: {0}")]
    Roots(String),
    /// Connecting, the TLS handshake or HTTP failed.
    #[error("jwks fetch failed: {0}")]
    Transport(String),
    /// The whole fetch took longer than allowed.
    #[error("jwks fetch took longer than {0:?}")]
    Timeout(Duration),
    /// The server answered with a redirect, which is never followed.
    #[error("jwks server answered with a redirect ({0}); redirects are not followed")]
    Redirect(u16),
    /// The server answered with another non-200 status.
    #[error("jwks server answered with status {0}")]
    Status(u16),
    /// The body is larger than allowed.
    #[error("jwks body is larger than {0} bytes")]
    TooLarge(usize),
}

/// Client TLS configuration trusting the PEM roots in `ca`.
pub fn client_config(ca: &std::path::Path) -> Result<Arc<rustls::ClientConfig>, FetchError> {
    let mut roots = RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
        .map_err(|e| FetchError::Roots(format!("`{}`: {e}", ca.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| FetchError::Roots(format!("`{}`: {e}", ca.display())))?;
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(FetchError::Roots(format!("`{}`: no CA certificate", ca.display())));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| FetchError::Roots(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// GETs `url` (https) within `timeout`, returning at most `max_bytes`.
pub async fn fetch(
    url: &str,
    tls: Arc<rustls::ClientConfig>,
    max_bytes: usize,
    timeout: Duration,
) -> Result<Vec<u8>, FetchError> {
    match tokio::time::timeout(timeout, fetch_unbounded(url, tls, max_bytes)).await {
        Ok(result) => result,
        Err(_) => Err(FetchError::Timeout(timeout)),
    }
}

async fn fetch_unbounded(url: &str, tls: Arc<rustls::ClientConfig>, max_bytes: usize) -> Result<Vec<u8>, FetchError> {
    let uri: hyper::Uri = url.parse().map_err(|_| FetchError::Url("not a URL"))?;
    if uri.scheme_str() != Some("https") {
        return Err(FetchError::Url("not https"));
    }
    let host = uri.host().ok_or(FetchError::Url("no host"))?.to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let bare_host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let server_name = ServerName::try_from(bare_host.clone()).map_err(|_| FetchError::Url("bad host"))?;
    let tcp = TcpStream::connect((bare_host.as_str(), port))
        .await
        .map_err(|e| FetchError::Transport(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(server_name, tcp)
        .await
        .map_err(|e| FetchError::Transport(format!("tls: {e}")))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| FetchError::Transport(e.to_string()))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = uri.authority().map_or(host.as_str(), |a| a.as_str()).to_owned();
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::ACCEPT, "application/json, application/jwk-set+json")
        .header(hyper::header::USER_AGENT, "tesserad")
        .body(Empty::<Bytes>::new())
        .map_err(|e| FetchError::Transport(e.to_string()))?;
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| FetchError::Transport(e.to_string()))?;
        let status = response.status();
        if status.is_redirection() {
            return Err(FetchError::Redirect(status.as_u16()));
        }
        if status != hyper::StatusCode::OK {
            return Err(FetchError::Status(status.as_u16()));
        }
        if let Some(len) = response
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            && len > max_bytes as u64
        {
            return Err(FetchError::TooLarge(max_bytes));
        }
        let body = Limited::new(response.into_body(), max_bytes)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                    FetchError::TooLarge(max_bytes)
                } else {
                    FetchError::Transport(e.to_string())
                }
            })?;
        Ok(body.to_bytes().to_vec())
    }
    .await;
    driver.abort();
    result
}
