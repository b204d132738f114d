//! Connection slots cannot be exhausted anonymously: a connection with no
//! attested call is closed after `server.unattested_timeout`, one source
//! address holds at most `server.max_connections_per_address`, and without a
//! JWT issuer a client certificate is required in the TLS handshake; one
//! connection carries at most `server.max_concurrent_streams` streams; a
//! stalled TLS handshake is closed after `server.handshake_timeout`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use tessera_e2e::attestation::{Issuer, append_config, jwt_config};
use tessera_e2e::*;
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpSocket;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A dev directory whose broker also accepts attestation JWTs, so a client
/// certificate is optional in the handshake.
fn jwt_dir() -> TempDir {
    let dir = dev_init("conn");
    let jwks = dir.path().join("issuer-jwks.json");
    std::fs::write(&jwks, Issuer::new("k1").jwks()).unwrap();
    append_config(dir.path(), &jwt_config(&jwks));
    dir
}

/// A TLS client that trusts the broker's CA and presents no certificate.
fn anonymous_tls(broker: &Broker) -> TlsConnector {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(broker.dir.path().join("ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// A TLS connection from `source` to the broker, handshake done, nothing
/// sent; `None` if the broker closed it at accept or refused the handshake.
async fn idle_connection(
    tls: &TlsConnector,
    broker: &Broker,
    source: Ipv4Addr,
) -> Option<TlsStream<tokio::net::TcpStream>> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0)).unwrap();
    let tcp = socket.connect(broker.addr.parse().unwrap()).await.ok()?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    tokio::time::timeout(Duration::from_secs(10), tls.connect(name, tcp))
        .await
        .ok()?
        .ok()
}

/// Reads until the broker closes `conn`; the bytes read (its HTTP/2
/// settings, if it served the connection at all).
async fn read_to_close(conn: &mut TlsStream<tokio::net::TcpStream>, limit: Duration) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => panic!("the broker kept an idle unauthenticated connection open past {limit:?}"),
            Ok(Ok(0) | Err(_)) => return seen,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_unauthenticated_connections_do_not_keep_an_attested_agent_out() {
    const IDLE: usize = 1000;
    const SOURCES: u8 = 20;
    let broker = Broker::start_in(
        jwt_dir(),
        &[
            ("TESSERA_SERVER__MAX_CONNECTIONS", "256"),
            ("TESSERA_SERVER__MAX_CONNECTIONS_PER_ADDRESS", "64"),
            ("TESSERA_SERVER__UNATTESTED_TIMEOUT", "2s"),
        ],
    );
    broker
        .start_task(start_request("crowded", &["researcher"], &["crm.contacts.read"], 600))
        .await;
    let tls = anonymous_tls(&broker);

    // A thousand connections from 20 addresses (127.0.0.2-21), 50 each:
    // under the per-address cap, over the global one.
    let started = Instant::now();
    let attempts = (0..IDLE).map(|i| {
        let source = Ipv4Addr::new(127, 0, 0, 2 + (i % usize::from(SOURCES)) as u8);
        let (tls, broker) = (&tls, &broker);
        async move { idle_connection(tls, broker, source).await }
    });
    let opened: Vec<_> = futures::stream::iter(attempts)
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .flatten()
        .collect();
    eprintln!(
        "{} of {IDLE} idle TLS connections handshaken in {:?}",
        opened.len(),
        started.elapsed()
    );

    // An attested agent gets its token all the same: at once if a slot is
    // free, else once the idle connections lose theirs.
    let waited = Instant::now();
    let token = loop {
        assert!(
            waited.elapsed() < Duration::from_secs(30),
            "the attested agent could not get in"
        );
        // Refused at accept while the slots are taken: connect again.
        let attempt = async {
            let channel = tessera_client::connect(&broker.endpoint(), &broker.identity("researcher"))
                .await
                .ok()?;
            tessera_client::AgentClient::new(channel)
                .request_token(token_request("crowded", &["crm.contacts.read"], None))
                .await
                .ok()
        };
        if let Ok(Some(r)) = tokio::time::timeout(Duration::from_secs(5), attempt).await {
            break r.into_inner();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(token.outcome.is_some());
    eprintln!("the attested agent got its token after {:?}", waited.elapsed());

    // Every idle connection that got a slot is closed by the broker.
    let closing = Instant::now();
    let mut closes = futures::stream::iter(opened.into_iter().map(|mut c| async move {
        read_to_close(&mut c, Duration::from_secs(30)).await;
    }))
    .buffer_unordered(256);
    while closes.next().await.is_some() {}
    eprintln!("idle connections closed within {:?}", closing.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_at_most_its_cap_of_connections() {
    let broker = Broker::start_in(
        jwt_dir(),
        &[
            ("TESSERA_SERVER__MAX_CONNECTIONS_PER_ADDRESS", "8"),
            ("TESSERA_SERVER__UNATTESTED_TIMEOUT", "30s"),
        ],
    );
    let tls = anonymous_tls(&broker);
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(
            idle_connection(&tls, &broker, Ipv4Addr::new(127, 0, 0, 3))
                .await
                .expect("a connection under the cap"),
        );
    }
    // The ninth from the same address is closed at accept.
    let ninth = idle_connection(&tls, &broker, Ipv4Addr::new(127, 0, 0, 3)).await;
    if let Some(mut c) = ninth {
        let served = read_to_close(&mut c, Duration::from_secs(10)).await;
        assert!(served.is_empty(), "the ninth connection was served");
    }
    // Another address is not affected.
    let mut other = idle_connection(&tls, &broker, Ipv4Addr::new(127, 0, 0, 4))
        .await
        .expect("another address gets in");
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), other.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(n > 0, "the broker sends its HTTP/2 settings to a served connection");
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_jwt_issuer_a_client_certificate_is_required_in_the_handshake() {
    let broker = Broker::start();
    let tls = anonymous_tls(&broker);
    // TLS 1.3: the client's side of the handshake completes before the
    // broker judges its (missing) certificate; the refusal arrives as an
    // alert instead of the HTTP/2 settings a served connection gets.
    if let Some(mut conn) = idle_connection(&tls, &broker, Ipv4Addr::LOCALHOST).await {
        let served = read_to_close(&mut conn, Duration::from_secs(10)).await;
        assert!(served.is_empty(), "a connection without a certificate was served");
    }
    // With a JWT issuer, the same client is served (and must attest by JWT).
    let jwt_broker = Broker::start_in(jwt_dir(), &[]);
    let tls = anonymous_tls(&jwt_broker);
    let mut conn = idle_connection(&tls, &jwt_broker, Ipv4Addr::LOCALHOST)
        .await
        .expect("handshake without a certificate");
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(n > 0, "the broker sends its HTTP/2 settings");
}

/// D3: one connection carries at most `server.max_concurrent_streams`
/// streams at once. With a cap of 2 and two revocation feeds open, a third
/// call on that connection gets no stream until a feed closes (it runs into
/// its own deadline), while a call on another connection is served at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_holds_at_most_its_cap_of_concurrent_streams() {
    let broker = Broker::start_with(&[("TESSERA_SERVER__MAX_CONCURRENT_STREAMS", "2")]);
    // One channel is one HTTP/2 connection.
    let channel = broker.channel("api-gateway").await;
    let mut verifier = tessera_client::VerifierClient::new(channel.clone());
    let mut feeds = Vec::new();
    for _ in 0..2 {
        let mut feed = verifier
            .watch_revocations(pb::WatchRevocationsRequest::default())
            .await
            .unwrap()
            .into_inner();
        first_position(&mut feed).await;
        feeds.push(feed);
    }
    let jwks = |v: &mut tessera_client::VerifierClient| {
        let mut v = v.clone();
        async move {
            let mut req = tonic::Request::new(pb::GetJwksRequest {});
            req.set_timeout(Duration::from_secs(1));
            v.get_jwks(req).await.map(drop)
        }
    };
    let third = jwks(&mut verifier).await;
    assert!(third.is_err(), "a third stream on a connection capped at 2 was served");
    // Another connection is not affected.
    let mut other = broker.verifier("api-gateway").await;
    jwks(&mut other).await.unwrap();
    // A slot freed is a slot served.
    feeds.pop();
    eventually("a call once a feed closed", Duration::from_secs(10), async || {
        jwks(&mut verifier).await.is_ok()
    })
    .await;
}

/// D2, the stalled handshake: TCP connections that send nothing, or half a
/// TLS record, are closed by the broker once `server.handshake_timeout`
/// has passed, and an attested agent is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_tls_handshakes_are_closed_after_the_handshake_timeout() {
    let broker = Broker::start_with(&[("TESSERA_SERVER__HANDSHAKE_TIMEOUT", "1s")]);
    let mut stalled = Vec::new();
    for i in 0..20 {
        let mut tcp = tokio::net::TcpStream::connect(&broker.addr).await.unwrap();
        if i % 2 == 1 {
            // The first bytes of a TLS handshake record, then silence.
            use tokio::io::AsyncWriteExt as _;
            tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).await.unwrap();
        }
        stalled.push(tcp);
    }
    broker
        .start_task(start_request("stalled", &["researcher"], &["crm.contacts.read"], 600))
        .await;
    issue(
        &mut broker.agent("researcher").await,
        token_request("stalled", &["crm.contacts.read"], None),
    )
    .await;
    for (i, mut tcp) in stalled.into_iter().enumerate() {
        let mut buf = [0u8; 64];
        // Bounded well above the 1 s timeout: a connection still open after
        // it is the failure.
        match tokio::time::timeout(Duration::from_secs(15), tcp.read(&mut buf)).await {
            Err(_) => panic!("stalled connection {i} still open after 15 s"),
            Ok(Ok(0) | Err(_)) => {}
            // An alert before the close is fine; the close must follow.
            Ok(Ok(_)) => {
                let rest = tokio::time::timeout(Duration::from_secs(15), tcp.read(&mut buf)).await;
                assert!(matches!(rest, Ok(Ok(0) | Err(_))), "connection {i}: {rest:?}");
            }
        }
    }
}
