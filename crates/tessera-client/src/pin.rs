//! The broker's identity, pinned: its certificate must chain to the trust
//! bundle, be valid for the endpoint's host (as webpki checks), **and** carry
//! exactly one URI SAN, the broker's SPIFFE ID, as the SPIFFE X.509-SVID
//! profile requires of a peer. Another workload of the same trust domain,
//! holding a valid SVID from the same CA and even a certificate for the
//! broker's host name, is refused.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tonic::transport::Uri;

use crate::error::ClientError;
use crate::identity::Identity;

/// The path of the broker's SPIFFE ID when none is configured:
/// `spiffe://<the client's trust domain>/tesserad` (what `tessera dev init`
/// issues).
pub const DEFAULT_BROKER_PATH: &str = "/tesserad";

/// The broker SPIFFE ID `identity` expects: its `broker_id`, or
/// [`DEFAULT_BROKER_PATH`] in the trust domain of its own certificate.
pub fn expected_broker_id(identity: &Identity) -> Result<String, ClientError> {
    if let Some(id) = &identity.broker_id {
        return Ok(id.clone());
    }
    let bad = |reason: String| ClientError::BadIdentity { reason };
    let leaf = CertificateDer::pem_slice_iter(&identity.cert_pem)
        .next()
        .ok_or_else(|| bad("the certificate holds no PEM certificate".into()))?
        .map_err(|e| bad(format!("the certificate: {e}")))?;
    let own = single_uri_san(&leaf).map_err(|e| bad(format!("the client certificate {e}")))?;
    let domain = own
        .strip_prefix("spiffe://")
        .and_then(|rest| rest.split('/').next())
        .filter(|td| !td.is_empty())
        .ok_or_else(|| bad(format!("the client certificate's URI SAN `{own}` is not a SPIFFE ID")))?;
    Ok(format!("spiffe://{domain}{DEFAULT_BROKER_PATH}"))
}

/// The SPIFFE ID of the first certificate in `cert_pem`: its one URI SAN.
pub fn certificate_spiffe_id(cert_pem: &[u8]) -> Result<String, ClientError> {
    let bad = |reason: String| ClientError::BadIdentity { reason };
    let leaf = CertificateDer::pem_slice_iter(cert_pem)
        .next()
        .ok_or_else(|| bad("no PEM certificate".into()))?
        .map_err(|e| bad(format!("the certificate: {e}")))?;
    let id = single_uri_san(&leaf).map_err(|e| bad(format!("the certificate {e}")))?;
    if !id.starts_with("spiffe://") {
        return Err(bad(format!("the certificate's URI SAN `{id}` is not a SPIFFE ID")));
    }
    Ok(id)
}

/// The one URI SAN of `cert`, or why there is not exactly one.
fn single_uri_san(cert: &CertificateDer<'_>) -> Result<String, String> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert).map_err(|_| "is not a valid X.509 certificate".to_owned())?;
    let sans = parsed
        .subject_alternative_name()
        .map_err(|_| "has a malformed subjectAltName".to_owned())?;
    let mut uris = sans
        .into_iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        });
    match (uris.next(), uris.next()) {
        (Some(uri), None) => Ok(uri),
        (None, _) => Err("has no URI SAN".to_owned()),
        (Some(_), Some(_)) => Err("has more than one URI SAN".to_owned()),
    }
}

/// webpki's verdict, then the exact SPIFFE ID.
#[derive(Debug)]
struct SpiffeServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    expected: String,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        match single_uri_san(end_entity) {
            Ok(id) if id == self.expected => Ok(verified),
            Ok(id) => Err(rustls::Error::General(format!(
                "the server is `{id}`, not the broker `{}`",
                self.expected
            ))),
            Err(why) => Err(rustls::Error::General(format!("the server certificate {why}"))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The rustls client configuration of `identity`: its bundle as roots, its
/// SVID as client certificate, the broker's SPIFFE ID pinned, ALPN h2.
pub(crate) fn client_config(identity: &Identity) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let bad = |reason: String| ClientError::BadIdentity { reason };
    let chain = CertificateDer::pem_slice_iter(&identity.cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("the certificate: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(&identity.key_pem)
        .map_err(|_| bad("the private key is not a PEM private key".into()))?;
    pinned_config(&identity.ca_pem, &expected_broker_id(identity)?, Some((chain, key)))
}

/// The rustls client configuration of a client without an SVID (attested by
/// a JWT): `ca_pem` as roots, `broker_id` pinned, ALPN h2.
pub(crate) fn anonymous_config(ca_pem: &[u8], broker_id: &str) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    pinned_config(ca_pem, broker_id, None)
}

type ClientCert = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn pinned_config(
    ca_pem: &[u8],
    broker_id: &str,
    client_cert: Option<ClientCert>,
) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let bad = |reason: String| ClientError::BadIdentity { reason };
    if !broker_id.starts_with("spiffe://") {
        return Err(bad(format!("the broker ID `{broker_id}` is not a SPIFFE ID")));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| bad(format!("the trust bundle: {e}")))?;
        roots.add(cert).map_err(|e| bad(format!("the trust bundle: {e}")))?;
    }
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| bad(format!("the trust bundle: {e}")))?;
    let verifier = Arc::new(SpiffeServerVerifier {
        inner,
        expected: broker_id.to_owned(),
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match client_cert {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| bad(format!("the certificate and key: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Opens TCP + TLS (with the pinned configuration) for every connection of
/// a channel; tonic speaks HTTP/2 over the result.
#[derive(Clone)]
pub(crate) struct PinnedTls {
    pub(crate) config: Arc<rustls::ClientConfig>,
    /// The endpoint's host, the name the certificate must be valid for.
    pub(crate) server_name: ServerName<'static>,
}

impl tower_service::Service<Uri> for PinnedTls {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.config.clone();
        let server_name = self.server_name.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned())
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no host"))?;
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            let _ = tcp.set_nodelay(true);
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(server_name, tcp)
                .await?;
            Ok(TokioIo::new(tls))
        })
    }
}
