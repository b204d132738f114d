//! TLS on the gRPC port: rustls (ring provider) asking for a client
//! certificate, an accept loop that bounds connections and handshake time
//! and checks each presented chain once against the trust bundles
//! (`attest::trust`), and the SPIFFE ID of a verified leaf. The HTTPS
//! OAuth facade's configuration is here too, with the same verifier.

use std::collections::HashMap;
use std::future::Future as _;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tessera_core::identity::SpiffeId;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;
use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};

use crate::attest::trust::{ClientCert, TrustStore};

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file is missing, unreadable or holds nothing usable.
    #[error("config key `{key}`: {message}")]
    Material {
        /// The config key naming the file.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the assembled configuration.
    #[error("tls configuration rejected: {0}")]
    Rustls(String),
}

fn material(key: &'static str, path: &Path, what: impl std::fmt::Display) -> TlsError {
    TlsError::Material {
        key,
        message: format!("`{}`: {what}", path.display()),
    }
}

/// Builds the server's rustls configuration: our certificate, and client
/// certificates checked by `verifier` (e.g. the per-trust-domain verifier
/// of `attest::trust`, which also decides whether one is required).
pub fn server_config_with(
    cert: &Path,
    key: &Path,
    verifier: Arc<dyn ClientCertVerifier>,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| material("tls.cert", cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| material("tls.cert", cert, e))?;
    if chain.is_empty() {
        return Err(material("tls.cert", cert, "no certificate found"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| material("tls.key", key, e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key_der)
        .map_err(|e| material("tls.key", key, e))?;
    // gRPC needs HTTP/2; without ALPN clients fail with H2NotNegotiated.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The HTTPS OAuth facade's rustls configuration: the broker's certificate,
/// HTTP/1.1, and the gRPC port's client verifier (`verifier`, from
/// `attest::trust`): a client certificate is optional (the public
/// documents need none) and its chain is judged after the handshake, by
/// the same trust bundles as on the gRPC port; handlers decide who must
/// present one.
pub fn facade_server_config(
    cert: &Path,
    key: &Path,
    verifier: Arc<dyn ClientCertVerifier>,
) -> Result<rustls::ServerConfig, TlsError> {
    let mut config = server_config_with(cert, key, verifier)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The client certificate verifier `attest::trust` builds per bundle: a
/// chain to `roots`, and, by webpki, an ExtendedKeyUsage that includes
/// clientAuth when the leaf has one. Key usage is not checked here (webpki
/// ignores it); [`peer_svid`] does.
pub(crate) fn client_verifier(
    roots: RootCertStore,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| TlsError::Rustls(e.to_string()))
}

/// What a request's handler may know of its connection (in the request's
/// extensions): where it came from and the client certificate it
/// presented, checked once after the handshake.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The peer's address.
    pub remote: Option<SocketAddr>,
    /// The client certificate chain and its verdict; `None` when the client
    /// presented none.
    pub client_cert: Option<ClientCert>,
    /// The attestation JWT session of this connection (shared by every
    /// request on it): a JWT attests once per connection.
    pub jwt_session: crate::attest::jwt::JwtSessionSlot,
    /// What the connection has done so far, for closing it when it holds a
    /// slot without using it (see [`ConnLimits`]).
    pub activity: Arc<Activity>,
}

/// Bounds on what a connection may do with its slot: closed when it made no
/// attested call within `unattested`, or when no call was open or started
/// for `idle`; at most `per_address` open at once from one source address.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Most open connections.
    pub max_connections: usize,
    /// Most open connections from one source address.
    pub per_address: usize,
    /// A TLS handshake not done by then is dropped.
    pub handshake: Duration,
    /// A connection with no attested call by then is closed.
    pub unattested: Duration,
    /// A connection with no call open or started for this long is closed.
    pub idle: Duration,
}

/// A connection's use, shared by the connection and the requests on it
/// (through [`PeerInfo`]): whether a call on it was attested, how many
/// calls are open, and when the last one started or ended.
#[derive(Debug)]
pub struct Activity {
    started: tokio::time::Instant,
    attested: AtomicBool,
    open: AtomicUsize,
    /// Milliseconds after `started` of the last call's start or end.
    last_ms: AtomicU64,
}

/// Why [`Activity::verdict`] closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Keep(tokio::time::Instant),
    Unattested,
    Idle,
}

impl Activity {
    fn new() -> Self {
        Self {
            started: tokio::time::Instant::now(),
            attested: AtomicBool::new(false),
            open: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
        }
    }

    /// A call on this connection was attested.
    pub fn attested(&self) {
        self.attested.store(true, Ordering::Relaxed);
    }

    /// A call started; the guard ends it when dropped.
    pub fn call(self: &Arc<Self>) -> CallGuard {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.touch();
        CallGuard(self.clone())
    }

    fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Whether the connection may stay open at `now`, and until when it
    /// may without another look.
    fn verdict(&self, now: tokio::time::Instant, limits: &ConnLimits) -> Verdict {
        let unattested_end = self.started + limits.unattested;
        if !self.attested.load(Ordering::Relaxed) {
            if now >= unattested_end {
                return Verdict::Unattested;
            }
            return Verdict::Keep(unattested_end.min(now + limits.idle));
        }
        if self.open.load(Ordering::Relaxed) > 0 {
            return Verdict::Keep(now + limits.idle);
        }
        let idle_end = self.started + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + limits.idle;
        if now >= idle_end {
            Verdict::Idle
        } else {
            Verdict::Keep(idle_end)
        }
    }
}

/// One open call of a connection (see [`Activity::call`]).
#[derive(Debug)]
pub struct CallGuard(Arc<Activity>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Open connections per source address; each [`AddressSlot`] gives its
/// place back when dropped.
#[derive(Debug, Default)]
struct PerAddress(std::sync::Mutex<HashMap<IpAddr, usize>>);

#[derive(Debug)]
struct AddressSlot(Arc<PerAddress>, IpAddr);

impl PerAddress {
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<AddressSlot> {
        let mut open = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(AddressSlot(self.clone(), ip))
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.0.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.1) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.1);
            }
        }
    }
}

/// One accepted, handshaken connection. Holds its slot of the connection cap
/// until it closes.
pub struct Conn {
    stream: TlsStream<TcpStream>,
    info: PeerInfo,
    limits: ConnLimits,
    /// When to look at the connection's [`Activity`] next.
    check: Pin<Box<tokio::time::Sleep>>,
    /// Set once the connection was closed for not using its slot.
    closed: bool,
    _permit: OwnedSemaphorePermit,
    _address: AddressSlot,
}

impl Conn {
    /// Whether the connection must close now (no attested call in time, or
    /// idle); re-arms the timer otherwise.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.closed {
            return true;
        }
        while self.check.as_mut().poll(cx).is_ready() {
            match self.info.activity.verdict(tokio::time::Instant::now(), &self.limits) {
                Verdict::Keep(next) => self.check.as_mut().reset(next),
                verdict => {
                    tracing::info!(
                        peer = ?self.info.remote,
                        reason = if verdict == Verdict::Idle { "idle" } else { "no attested call" },
                        "closing connection"
                    );
                    self.closed = true;
                    return true;
                }
            }
        }
        false
    }
}

impl Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        // The server always has a read pending, so this is where a
        // connection that does not use its slot is noticed: end of stream
        // makes the server close it.
        if self.expired(cx) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Accepts TCP connections on `listener`, completes TLS handshakes within
/// `limits.handshake`, checks each client certificate chain against
/// `trust` once, and yields at most `limits.max_connections` open
/// connections at once, at most `limits.per_address` from one source
/// address; connections beyond either cap are closed at accept. A
/// connection is closed when it makes no attested call within
/// `limits.unattested`, or has no call for `limits.idle`.
pub fn accept_loop(
    listener: TcpListener,
    config: rustls::ServerConfig,
    trust: Arc<TrustStore>,
    limits: ConnLimits,
) -> mpsc::Receiver<Result<Conn, io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let max_connections = limits.max_connections;
    let handshake_timeout = limits.handshake;
    let slots = Arc::new(Semaphore::new(max_connections));
    let per_address = Arc::new(PerAddress::default());
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                () = tx.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Some(address) = per_address.take(peer.ip(), limits.per_address) else {
                tracing::warn!(%peer, per_address = limits.per_address, "connection cap of this address reached; closing new connection");
                drop(tcp);
                continue;
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                tracing::warn!(%peer, max_connections, "connection cap reached; closing new connection");
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let trust = trust.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let client_cert = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .filter(|chain| !chain.is_empty())
                            .map(|chain| trust.check_presented(chain.iter().map(|c| c.clone().into_owned()).collect()));
                        let activity = Arc::new(Activity::new());
                        // A chain the trust bundles accept is not anonymous: such a
                        // connection keeps its slot until it is idle, calls or not.
                        if client_cert.as_ref().is_some_and(|c| trust.trusted_leaf(c).is_ok()) {
                            activity.attested();
                        }
                        let first_check = activity.started + limits.unattested;
                        let info = PeerInfo {
                            remote: Some(peer),
                            client_cert,
                            jwt_session: crate::attest::jwt::JwtSessionSlot::default(),
                            activity,
                        };
                        let _ = tx
                            .send(Ok(Conn {
                                stream,
                                info,
                                limits,
                                check: Box::pin(tokio::time::sleep_until(first_check)),
                                closed: false,
                                _permit: permit,
                                _address: address,
                            }))
                            .await;
                    }
                    Ok(Err(e)) => tracing::info!(%peer, error = %e, "tls handshake refused"),
                    Err(_) => tracing::info!(%peer, "tls handshake timed out"),
                }
            });
        }
    });
    rx
}

/// Why a verified peer certificate does not name a usable SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SvidError {
    /// No client certificate reached the handler.
    #[error("no client certificate")]
    NoCertificate,
    /// The leaf is not parseable X.509.
    #[error("client certificate is not valid X.509")]
    Malformed,
    /// The leaf is a CA certificate.
    #[error("client certificate is a CA certificate, not an SVID")]
    CaLeaf,
    /// The leaf's KeyUsage lets it sign certificates or CRLs.
    #[error("client certificate may sign certificates or CRLs; an SVID may not")]
    SigningLeaf,
    /// Not exactly one URI SAN.
    #[error("an X.509-SVID has exactly one URI SAN; this certificate has {0}")]
    UriSanCount(usize),
    /// The URI SAN is not a valid SPIFFE ID.
    #[error("URI SAN is not a valid SPIFFE ID: {0}")]
    SpiffeId(String),
    /// The SPIFFE ID is from another trust domain.
    #[error("SPIFFE ID `{0}` is not in the trusted domain")]
    TrustDomain(String),
    /// The SPIFFE ID's trust domain is not trusted now (unknown, or its
    /// bundle is empty); the message says which.
    #[error("SPIFFE ID `{id}`: {reason}")]
    Untrusted {
        /// The SPIFFE ID.
        id: String,
        /// Why its domain is refused.
        reason: String,
    },
}

/// A verified peer's SPIFFE ID, and the evidence digest for audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSvid {
    /// The SPIFFE ID from the single URI SAN.
    pub id: SpiffeId,
    /// `sha256:<hex>` of the leaf certificate's DER.
    pub evidence: String,
}

/// Reads the SPIFFE ID of a leaf certificate that rustls already verified
/// against the trust bundle (which also enforced clientAuth in an
/// ExtendedKeyUsage, when present). Refuses a CA leaf and a leaf whose
/// KeyUsage asserts keyCertSign or cRLSign.
pub fn peer_svid(leaf: &[u8], trust_domain: &str) -> Result<PeerSvid, SvidError> {
    peer_svid_in(leaf, |domain| {
        if domain == trust_domain {
            Ok(())
        } else {
            Err(String::new())
        }
    })
    .map_err(|e| match e {
        SvidError::Untrusted { id, .. } => SvidError::TrustDomain(id),
        other => other,
    })
}

/// Like [`peer_svid`], with the trust domain accepted when `trusted`
/// answers `Ok` (it says why not otherwise).
pub fn peer_svid_in(leaf: &[u8], trusted: impl Fn(&str) -> Result<(), String>) -> Result<PeerSvid, SvidError> {
    let (_, cert) = X509Certificate::from_der(leaf).map_err(|_| SvidError::Malformed)?;
    if cert.is_ca() {
        return Err(SvidError::CaLeaf);
    }
    match cert.key_usage() {
        Ok(Some(ku)) if ku.value.key_cert_sign() || ku.value.crl_sign() => return Err(SvidError::SigningLeaf),
        Ok(_) => {}
        Err(_) => return Err(SvidError::Malformed),
    }
    let uris: Vec<&str> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(_) => return Err(SvidError::Malformed),
    };
    let [uri] = uris.as_slice() else {
        return Err(SvidError::UriSanCount(uris.len()));
    };
    let id = SpiffeId::parse(uri).map_err(|e| SvidError::SpiffeId(e.to_string()))?;
    if let Err(reason) = trusted(id.trust_domain()) {
        return Err(SvidError::Untrusted {
            id: id.to_string(),
            reason,
        });
    }
    Ok(PeerSvid {
        id,
        evidence: tessera_core::hex::sha256(leaf),
    })
}

#[cfg(test)]
mod tests {
    use rcgen::{
        CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    };
    use rustls_pki_types::UnixTime;

    use super::*;

    fn svid_params(key_usages: Vec<KeyUsagePurpose>, ekus: Vec<ExtendedKeyUsagePurpose>) -> CertificateParams {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![uri("spiffe://td/agent/a")];
        params.key_usages = key_usages;
        params.extended_key_usages = ekus;
        params
    }

    fn leaf(sans: Vec<SanType>, ca: bool) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = sans;
        if ca {
            params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().unwrap())
    }

    #[test]
    fn exactly_one_spiffe_uri_in_our_domain() {
        let ok = peer_svid(&leaf(vec![uri("spiffe://td/agent/a")], false), "td").unwrap();
        assert_eq!(ok.id.as_str(), "spiffe://td/agent/a");
        assert!(ok.evidence.starts_with("sha256:") && ok.evidence.len() == 7 + 64);
        assert_eq!(peer_svid(&leaf(vec![], false), "td"), Err(SvidError::UriSanCount(0)));
        assert_eq!(
            peer_svid(&leaf(vec![uri("spiffe://td/a"), uri("spiffe://td/b")], false), "td"),
            Err(SvidError::UriSanCount(2))
        );
        assert!(matches!(
            peer_svid(&leaf(vec![uri("https://td/a")], false), "td"),
            Err(SvidError::SpiffeId(_))
        ));
        assert!(matches!(
            peer_svid(&leaf(vec![uri("spiffe://other/a")], false), "td"),
            Err(SvidError::TrustDomain(_))
        ));
        assert_eq!(
            peer_svid(&leaf(vec![uri("spiffe://td/a")], true), "td"),
            Err(SvidError::CaLeaf)
        );
        assert_eq!(peer_svid(b"not a cert", "td"), Err(SvidError::Malformed));
    }

    #[test]
    fn a_leaf_that_may_sign_certificates_is_refused() {
        let key = KeyPair::generate().unwrap();
        for usage in [KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign] {
            let der = svid_params(vec![KeyUsagePurpose::DigitalSignature, usage], vec![])
                .self_signed(&key)
                .unwrap();
            assert_eq!(peer_svid(der.der(), "td"), Err(SvidError::SigningLeaf));
        }
        let der = svid_params(
            vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        )
        .self_signed(&key)
        .unwrap();
        assert!(peer_svid(der.der(), "td").is_ok());
    }

    /// ExtendedKeyUsage is webpki's to enforce during the handshake; this
    /// pins that the verifier we build does.
    #[test]
    fn the_client_verifier_requires_client_auth_when_eku_is_present() {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let mut roots = RootCertStore::empty();
        roots.add(ca_cert.der().clone()).unwrap();
        let verifier = client_verifier(roots, provider).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let verify = |ekus: Vec<ExtendedKeyUsagePurpose>| {
            let cert = svid_params(vec![KeyUsagePurpose::DigitalSignature], ekus)
                .signed_by(&leaf_key, &issuer)
                .unwrap();
            verifier.verify_client_cert(cert.der(), &[], UnixTime::now()).map(drop)
        };
        verify(vec![ExtendedKeyUsagePurpose::ClientAuth]).unwrap();
        verify(vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ])
        .unwrap();
        verify(vec![]).unwrap();
        assert!(verify(vec![ExtendedKeyUsagePurpose::ServerAuth]).is_err());
        assert!(verify(vec![ExtendedKeyUsagePurpose::CodeSigning]).is_err());
    }
}
