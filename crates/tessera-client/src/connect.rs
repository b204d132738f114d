//! Opening the mTLS gRPC channel to `tesserad`.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tonic::transport::Endpoint;

use crate::channel::Channel;
use crate::pin::{PinnedTls, client_config};

use crate::error::ClientError;
use crate::identity::Identity;

/// How long establishing the TCP + TLS connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a call may wait for the broker's response headers.
///
/// tonic applies the channel timeout to the response future only, which
/// resolves when the headers arrive: the messages of a server stream
/// (`WatchRevocations`, `AwaitApproval`) are not cut off by it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Opens a channel to the broker at `endpoint`, authenticated with `identity`.
///
/// `endpoint` is `https://host:port` (a bare `host:port` means https). The
/// broker's certificate must be issued by `identity.ca_pem` for `host` and
/// carry exactly one URI SAN, the broker's SPIFFE ID
/// ([`crate::expected_broker_id`]), and the client presents
/// `identity.cert_pem`. Connects eagerly, so an
/// unreachable broker fails here within [`CONNECT_TIMEOUT`]. With TLS 1.3 a
/// client certificate the broker rejects only shows up on the first call.
pub async fn connect(endpoint: &str, identity: &Identity) -> Result<Channel, ClientError> {
    connect_pinned(endpoint, || client_config(identity)).await
}

/// Connects eagerly to `endpoint` over TCP + the TLS of `config` (which pins
/// the broker's SPIFFE ID).
pub(crate) async fn connect_pinned(
    endpoint: &str,
    config: impl FnOnce() -> Result<Arc<rustls::ClientConfig>, ClientError>,
) -> Result<Channel, ClientError> {
    let (configured, tls, url) = configure(endpoint, config)?;
    configured
        .connect_with_connector(tls)
        .await
        .map(Channel::from)
        .map_err(|source| ClientError::Connect { endpoint: url, source })
}

/// Like [`connect`], but the connection is made at the first call (and
/// re-made after it drops); connection errors then arrive as the call's status.
pub fn connect_lazy(endpoint: &str, identity: &Identity) -> Result<Channel, ClientError> {
    let (configured, tls, _) = configure(endpoint, || client_config(identity))?;
    Ok(configured.connect_with_connector_lazy(tls).into())
}

fn configure(
    endpoint: &str,
    config: impl FnOnce() -> Result<Arc<rustls::ClientConfig>, ClientError>,
) -> Result<(Endpoint, PinnedTls, String), ClientError> {
    install_crypto_provider();
    let url = normalize(endpoint)?;
    let invalid = |reason: String| ClientError::Endpoint {
        endpoint: endpoint.to_owned(),
        reason,
    };
    let parsed = Endpoint::from_shared(url.clone()).map_err(|e| invalid(e.to_string()))?;
    let host = parsed.uri().host().ok_or_else(|| invalid("no host".to_owned()))?;
    // `Uri::host` keeps the brackets of an IPv6 literal; the TLS server name has none.
    let domain = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let server_name = ServerName::try_from(domain).map_err(|e| invalid(e.to_string()))?;
    // TLS is ours (crate::pin: the broker's SPIFFE ID is pinned), so tonic
    // speaks HTTP/2 over the stream the connector returns.
    let plain = format!(
        "http://{}",
        url.trim_start_matches("https://").trim_start_matches("HTTPS://")
    );
    let builder = Endpoint::from_shared(plain).map_err(|e| invalid(e.to_string()))?;
    let configured = builder
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        // A long-lived revocation watch notices a dead broker.
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let tls = PinnedTls {
        config: config()?,
        server_name,
    };
    Ok((configured, tls, url))
}

/// Adds `https://` to a bare `host:port` and refuses any scheme but https.
pub(crate) fn normalize(endpoint: &str) -> Result<String, ClientError> {
    let invalid = |reason: &str| ClientError::Endpoint {
        endpoint: endpoint.to_owned(),
        reason: reason.to_owned(),
    };
    let endpoint = endpoint.trim();
    if endpoint.is_empty() {
        return Err(invalid("empty"));
    }
    match endpoint.split_once("://") {
        None => Ok(format!("https://{endpoint}")),
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => Ok(endpoint.to_owned()),
        Some(_) => Err(invalid("the broker only speaks https (mTLS)")),
    }
}

/// tonic needs a process-wide rustls provider; ring is the one this workspace
/// builds. Another one installed first (by the application) is kept.
fn install_crypto_provider() {
    // Err means a provider is already installed, which is all we need.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]

    use super::*;

    #[test]
    fn bare_host_port_means_https() {
        assert_eq!(normalize("127.0.0.1:7443").unwrap(), "https://127.0.0.1:7443");
        assert_eq!(normalize("https://broker:7443").unwrap(), "https://broker:7443");
        assert!(normalize("http://broker:7443").is_err());
        assert!(normalize("  ").is_err());
    }

    #[test]
    fn ipv6_host_is_accepted() {
        let cert = rcgen::generate_simple_self_signed(vec!["::1".to_owned()]).unwrap();
        let id = Identity {
            ca_pem: cert.cert.pem().into_bytes(),
            cert_pem: cert.cert.pem().into_bytes(),
            key_pem: cert.signing_key.serialize_pem().into_bytes(),
            broker_id: Some("spiffe://td/tesserad".into()),
        };
        let (ep, _, url) = configure("https://[::1]:7443", || client_config(&id)).unwrap();
        assert_eq!(url, "https://[::1]:7443");
        assert_eq!(ep.uri().host(), Some("[::1]"));
    }
}
