//! `connect` against a real tonic server with mTLS and rcgen certificates:
//! the SVID reaches the server, and an untrusted CA on either side fails.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test")]

use std::net::SocketAddr;

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType,
};
use tessera_client::pb::verifier_service_server::{VerifierService, VerifierServiceServer};
use tessera_client::{ClientError, Identity, VerifierClient, connect, pb};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

struct Pki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn pki() -> Pki {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Pki {
        ca_pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// Returns (cert PEM, key PEM).
fn leaf(pki: &Pki, sans: Vec<SanType>, eku: ExtendedKeyUsagePurpose) -> (String, String) {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = sans;
    params.extended_key_usages = vec![eku];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &pki.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn svid(pki: &Pki, id: &str) -> (String, String) {
    leaf(
        pki,
        vec![SanType::URI(Ia5String::try_from(id).unwrap())],
        ExtendedKeyUsagePurpose::ClientAuth,
    )
}

/// Answers `GetJwks` with the caller's certificate count and size, proving
/// the server saw a client certificate.
struct Echo;

#[tonic::async_trait]
impl VerifierService for Echo {
    async fn get_jwks(&self, request: Request<pb::GetJwksRequest>) -> Result<Response<pb::GetJwksResponse>, Status> {
        let certs = request.peer_certs().map_or(0, |c| c.len());
        Ok(Response::new(pb::GetJwksResponse {
            keys: Vec::new(),
            jwks_json: format!("peer certs: {certs}"),
            status: Vec::new(),
        }))
    }

    async fn introspect(&self, _: Request<pb::IntrospectRequest>) -> Result<Response<pb::IntrospectResponse>, Status> {
        Err(Status::unimplemented("test"))
    }

    async fn report_misuse(
        &self,
        _: Request<pb::ReportMisuseRequest>,
    ) -> Result<Response<pb::ReportMisuseResponse>, Status> {
        Err(Status::unimplemented("test"))
    }

    type WatchRevocationsStream = tokio_stream::Empty<Result<pb::WatchRevocationsResponse, Status>>;

    async fn watch_revocations(
        &self,
        _: Request<pb::WatchRevocationsRequest>,
    ) -> Result<Response<Self::WatchRevocationsStream>, Status> {
        Ok(Response::new(tokio_stream::empty()))
    }
}

/// The broker every client identity here expects (derived from its SVID's
/// trust domain `td`).
const BROKER: &str = "spiffe://td/tesserad";

async fn serve(pki: &Pki) -> SocketAddr {
    serve_as(pki, BROKER).await
}

/// A server with a certificate from `pki` for localhost and 127.0.0.1,
/// carrying the SPIFFE ID `spiffe_id`.
async fn serve_as(pki: &Pki, spiffe_id: &str) -> SocketAddr {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (cert, key) = leaf(
        pki,
        vec![
            SanType::DnsName(Ia5String::try_from("localhost").unwrap()),
            SanType::IpAddress("127.0.0.1".parse().unwrap()),
            SanType::URI(Ia5String::try_from(spiffe_id).unwrap()),
        ],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let tls = ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(cert, key))
        .client_ca_root(Certificate::from_pem(&pki.ca_pem));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::builder()
        .tls_config(tls)
        .unwrap()
        .add_service(VerifierServiceServer::new(Echo))
        .serve_with_incoming(TcpListenerStream::new(listener));
    tokio::spawn(server);
    addr
}

fn identity(ca_pem: &str, (cert, key): (String, String)) -> Identity {
    Identity {
        ca_pem: ca_pem.as_bytes().to_vec(),
        cert_pem: cert.into_bytes(),
        key_pem: key.into_bytes(),
        broker_id: None,
    }
}

#[tokio::test]
async fn svid_reaches_the_server() {
    let pki = pki();
    let addr = serve(&pki).await;
    let id = identity(&pki.ca_pem, svid(&pki, "spiffe://td/agent/a"));
    for endpoint in [format!("https://{addr}"), format!("https://localhost:{}", addr.port())] {
        let channel = connect(&endpoint, &id).await.unwrap();
        let answer = VerifierClient::new(channel)
            .get_jwks(pb::GetJwksRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.jwks_json, "peer certs: 1", "{endpoint}");
    }
}

#[tokio::test]
async fn client_cert_from_another_ca_is_refused() {
    let pki = pki();
    let addr = serve(&pki).await;
    let other = self::pki();
    let id = identity(&pki.ca_pem, svid(&other, "spiffe://td/agent/a"));
    // TLS 1.3: the refusal may only surface on the first call.
    let refused = match connect(&format!("https://{addr}"), &id).await {
        Err(ClientError::Connect { .. }) => true,
        Err(e) => panic!("unexpected {e}"),
        Ok(channel) => VerifierClient::new(channel)
            .get_jwks(pb::GetJwksRequest {})
            .await
            .is_err(),
    };
    assert!(refused);
}

#[tokio::test]
async fn server_from_another_ca_is_refused() {
    let pki = pki();
    let addr = serve(&pki).await;
    let other = self::pki();
    let id = identity(&other.ca_pem, svid(&pki, "spiffe://td/agent/a"));
    let err = connect(&format!("https://{addr}"), &id).await.unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err}");
}

#[tokio::test]
async fn nothing_listening_is_a_connect_error() {
    let pki = pki();
    let id = identity(&pki.ca_pem, svid(&pki, "spiffe://td/agent/a"));
    // Bind then drop to get a port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = connect(&format!("127.0.0.1:{port}"), &id).await.unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err}");
}

#[tokio::test]
async fn a_server_with_another_spiffe_id_from_the_same_ca_is_refused() {
    let pki = pki();
    // A valid certificate from the same CA, for the broker's host names, but
    // another workload's SPIFFE ID.
    let impostor = serve_as(&pki, "spiffe://td/agent/impostor").await;
    let id = identity(&pki.ca_pem, svid(&pki, "spiffe://td/agent/a"));
    for endpoint in [
        format!("https://{impostor}"),
        format!("https://localhost:{}", impostor.port()),
    ] {
        let err = connect(&endpoint, &id).await.unwrap_err();
        assert!(matches!(err, ClientError::Connect { .. }), "{endpoint}: {err}");
    }
    // Pinned to that ID explicitly, the same server is accepted.
    let pinned = id.clone().with_broker_id("spiffe://td/agent/impostor");
    connect(&format!("https://{impostor}"), &pinned).await.unwrap();
}
