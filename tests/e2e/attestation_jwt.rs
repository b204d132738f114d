//! JWT (OIDC) attestation through the real `tesserad`: a positive path, and
//! every bad token of the issue refused with UNAUTHENTICATED and an audit
//! record; header URLs never followed (a loopback listener sees zero
//! connections); single-use `jti` across two replicas on one Redis; Redis
//! down → UNAVAILABLE; misbehaving JWKS servers (redirect, 5 MB, drip,
//! invalid JSON) refused within bounded time; last good keys kept only up
//! to the staleness bound.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;
use tessera_core::attestation::sha256_hex;
use tessera_e2e::attestation::{
    Issuer, JWT_IDENTITIES, agent_with, append_config, attested_call, audit_records, claims, issuer_config, jwt_config,
    now, verifier_with, wait_refusal_audited, wait_refusal_of,
};
use tessera_e2e::redis::RedisServer;
use tessera_e2e::{Broker, TempDir, dev_init, pb, redis_env, start_request, token_request};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::Code;

/// A dev directory with the test issuer's JWKS file and config.
fn jwt_dir(issuer: &Issuer) -> TempDir {
    let dir = dev_init("jwt");
    let jwks = dir.path().join("issuer-jwks.json");
    std::fs::write(&jwks, issuer.jwks()).unwrap();
    append_config(dir.path(), &jwt_config(&jwks));
    dir
}

#[track_caller]
fn unauthenticated(result: Result<(), tonic::Status>, mentions: &str) {
    let status = result.expect_err("the call was served");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains(mentions),
        "`{}` does not mention `{mentions}`",
        status.message()
    );
    assert!(
        !status.message().contains("eyJ"),
        "the refusal leaks a token: {}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_attested_agent_gets_a_token() {
    let issuer = Issuer::default();
    let broker = Broker::start_in(jwt_dir(&issuer), &[]);
    let mut o = broker.orchestrator().await;
    let mut req = start_request("jwt-1", &["ci"], &["crm.contacts.read"], 600);
    req.agents = vec!["spiffe://tessera.local/agent/ci".into()];
    o.start_task(req).await.unwrap();
    let token = issuer.sign(&claims("ci"));
    let mut agent = agent_with(&broker, &token).await;
    let issued = agent
        .request_token(token_request("jwt-1", &["crm.contacts.read"], Some(60)))
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        issued.outcome,
        Some(pb::request_token_response::Outcome::Token(_))
    ));
    let record = audit_records(&broker)
        .into_iter()
        .find(|r| r["event"] == "token_issued")
        .expect("a token_issued record");
    assert_eq!(record["who"]["identity"], "spiffe://tessera.local/agent/ci");
    assert_eq!(record["who"]["attestation"], "jwt");
    assert!(record["who"]["evidence"].as_str().unwrap().starts_with("sha256:"));
    // The same connection, second call: its JWT session stands.
    agent
        .request_token(token_request("jwt-1", &["crm.contacts.read"], Some(60)))
        .await
        .unwrap();
    // x509 callers are unaffected, and still audited as x509.
    broker.jwks().await;
    let mut o = broker.orchestrator().await;
    o.get_task(pb::GetTaskRequest {
        task_id: "jwt-1".into(),
    })
    .await
    .unwrap();
    assert!(
        audit_records(&broker)
            .iter()
            .any(|r| r["who"]["attestation"] == "x509" && r["who"]["identity"] == "spiffe://tessera.local/orchestrator")
    );
}

fn b64(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(s.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_token_is_refused_and_audited() {
    let issuer = Issuer::default();
    let broker = Broker::start_in(jwt_dir(&issuer), &[]);
    let t = now();
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = claims("ci");
        f(&mut c);
        c
    };
    let good = issuer.sign(&claims("ci"));
    let parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    let other_key = Issuer::new(&issuer.kid);
    let header = |extra: serde_json::Value| {
        let mut h = json!({"alg": "ES256", "kid": issuer.kid});
        for (k, v) in extra.as_object().unwrap() {
            h[k] = v.clone();
        }
        h
    };
    // HS256 re-signed with the public key (its JWK text) as the secret.
    let hs_input = format!(
        "{}.{}",
        b64(&json!({"alg":"HS256","kid":issuer.kid}).to_string()),
        parts[1]
    );
    let mac = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, issuer.jwk().to_string().as_bytes()),
        hs_input.as_bytes(),
    );
    let hs256 = format!("{hs_input}.{}", URL_SAFE_NO_PAD.encode(mac.as_ref()));
    let mut tampered_sig = URL_SAFE_NO_PAD.decode(&parts[2]).unwrap();
    tampered_sig[5] ^= 0x01;

    let cases: Vec<(&str, String, &str, &str)> = vec![
        // (what, token, status mentions, audit reason mentions)
        (
            "alg none",
            issuer.sign_raw(&json!({"alg": "none", "kid": issuer.kid}), &claims("ci")),
            "algorithm",
            "algorithm",
        ),
        (
            "alg None",
            issuer.sign_raw(&json!({"alg": "None", "kid": issuer.kid}), &claims("ci")),
            "algorithm",
            "algorithm",
        ),
        (
            "alg noNE",
            issuer.sign_raw(&json!({"alg": "noNE", "kid": issuer.kid}), &claims("ci")),
            "algorithm",
            "algorithm",
        ),
        (
            "unsigned",
            format!("{}.{}.", b64(r#"{"alg":"none"}"#), parts[1]),
            "malformed",
            "malformed",
        ),
        ("hs256 with public key", hs256, "algorithm", "algorithm"),
        (
            "unknown kid",
            issuer.sign_raw(&header(json!({"kid": "nope"})), &claims("ci")),
            "key id",
            "key id",
        ),
        (
            "kid path",
            issuer.sign_raw(&header(json!({"kid": "../../etc/passwd"})), &claims("ci")),
            "key id",
            "key id",
        ),
        (
            "kid quote",
            issuer.sign_raw(&header(json!({"kid": "k'1\""})), &claims("ci")),
            "key id",
            "key id",
        ),
        (
            "tampered signature",
            format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(&tampered_sig)),
            "signature",
            "signature",
        ),
        ("other key", other_key.sign(&claims("ci")), "signature", "signature"),
        (
            "wrong iss",
            issuer.sign(&with(&|c| c["iss"] = json!("https://evil.example"))),
            "issuer",
            "issuer",
        ),
        (
            "wrong aud",
            issuer.sign(&with(&|c| c["aud"] = json!("https://other.example"))),
            "aud",
            "aud",
        ),
        (
            "expired",
            issuer.sign(&with(&|c| c["exp"] = json!(t - 60))),
            "expired",
            "expired",
        ),
        (
            "future nbf",
            issuer.sign(&with(&|c| c["nbf"] = json!(t + 600))),
            "not valid yet",
            "not valid yet",
        ),
        (
            "future iat",
            issuer.sign(&with(&|c| c["iat"] = json!(t + 600))),
            "issued in the future",
            "issued in the future",
        ),
        (
            "too old",
            issuer.sign(&with(&|c| c["iat"] = json!(t - 3600))),
            "older than",
            "older than",
        ),
        (
            "two segments",
            format!("{}.{}", parts[0], parts[1]),
            "malformed",
            "malformed",
        ),
        (
            "four segments",
            format!("{good}.{}", parts[2]),
            "malformed",
            "malformed",
        ),
        (
            "non-base64url",
            format!("{}+.{}.{}", parts[0], parts[1], parts[2]),
            "malformed",
            "malformed",
        ),
        (
            "12 KB header",
            format!("{}.{}.{}", "A".repeat(12 * 1024), parts[1], parts[2]),
            "longer than",
            "longer than",
        ),
        (
            "jwk header",
            issuer.sign_raw(&header(json!({"jwk": issuer.jwk()})), &claims("ci")),
            "`jwk`",
            "`jwk`",
        ),
        (
            "x5c header",
            issuer.sign_raw(&header(json!({"x5c": ["MIIB"]})), &claims("ci")),
            "`x5c`",
            "`x5c`",
        ),
        (
            "unregistered",
            issuer.sign(&claims("stranger")),
            "not registered",
            "not registered",
        ),
        ("disabled", issuer.sign(&claims("ci-disabled")), "disabled", "disabled"),
        (
            "x509-only identity",
            issuer.sign(&claims("researcher")),
            "may not attest by `jwt`",
            "may not attest by `jwt`",
        ),
        (
            "claim escapes its segment",
            issuer.sign(&claims("ci/../orchestrator")),
            "identity",
            "identity",
        ),
    ];
    for (what, token, mentions, reason) in &cases {
        let result = attested_call(&broker, token).await;
        let status = result.expect_err(what);
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
        assert!(
            status.message().contains(mentions),
            "{what}: `{}` lacks `{mentions}`",
            status.message()
        );
        // This very token's refusal is in the trail (by its digest).
        wait_refusal_of(&broker, "jwt", &sha256_hex(token.as_bytes()), reason);
    }
    // A megabyte JWS header never reaches the JWT parser: HTTP/2 refuses
    // metadata over 16 KiB first. The caller is refused (the code is the
    // transport's) and the broker serves on.
    let huge = format!("{}.{}.{}", "A".repeat(1024 * 1024), parts[1], parts[2]);
    let status = attested_call(&broker, &huge).await.expect_err("a megabyte header");
    assert_ne!(status.code(), Code::Ok);
    // Refusals are counted by method and reason, never by identity.
    let (code, metrics) = broker.http_get("/metrics");
    assert_eq!(code, 200);
    for reason in [
        "alg",
        "kid",
        "signature",
        "iss",
        "aud",
        "exp",
        "nbf",
        "iat",
        "malformed",
        "header",
    ] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("tessera_attestation_rejected_total")
                    && l.contains("method=\"jwt\"")
                    && l.contains(&format!("reason=\"{reason}\""))),
            "no jwt refusal counted as `{reason}`"
        );
    }
    assert!(!metrics.contains("spiffe://"), "metrics name no identity");
    // Not a bearer token, or no evidence at all.
    let mut basic = verifier_with(&broker, "Basic dXNlcjpwYXNz").await;
    unauthenticated(
        basic
            .introspect(tessera_e2e::attestation::introspect_request())
            .await
            .map(drop),
        "Bearer",
    );
    let mut none = pb::verifier_service_client::VerifierServiceClient::new(
        tessera_e2e::attestation::anonymous_channel(&broker).await,
    );
    unauthenticated(
        none.introspect(tessera_e2e::attestation::introspect_request())
            .await
            .map(drop),
        "no client certificate",
    );
    wait_refusal_audited(&broker, "x509", "no client certificate");
    // Public keys stay public: GetJwks attests nobody.
    none.get_jwks(pb::GetJwksRequest {}).await.unwrap();
    // The good token still works (nothing above used its jti).
    attested_call(&broker, &good).await.unwrap();
}

/// A TCP listener that records who connected, in accept order, and never
/// answers.
async fn recording_listener() -> (String, Arc<std::sync::Mutex<Vec<std::net::SocketAddr>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let peers = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = peers.clone();
    tokio::spawn(async move {
        while let Ok((_conn, peer)) = listener.accept().await {
            seen.lock().unwrap().push(peer);
        }
    });
    (addr, peers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_urls_and_unknown_issuers_are_never_fetched() {
    let issuer = Issuer::default();
    let broker = Broker::start_in(jwt_dir(&issuer), &[]);
    let (addr, peers) = recording_listener().await;
    for member in ["jku", "x5u"] {
        let header = json!({"alg": "ES256", "kid": issuer.kid, member: format!("https://{addr}/keys")});
        unauthenticated(
            attested_call(&broker, &issuer.sign_raw(&header, &claims("ci"))).await,
            member,
        );
        // Also with a kid the broker does not know, the most tempting case to "go fetch".
        let header = json!({"alg": "ES256", "kid": "fresh", member: format!("http://{addr}/keys")});
        unauthenticated(
            attested_call(&broker, &issuer.sign_raw(&header, &claims("ci"))).await,
            member,
        );
    }
    // A6: an issuer URL that is not configured, pointing at the listener.
    let mut c = claims("ci");
    c["iss"] = json!(format!("http://{addr}"));
    unauthenticated(attested_call(&broker, &issuer.sign(&c)).await, "issuer");
    wait_refusal_audited(&broker, "jwt", "`jku`");
    wait_refusal_audited(&broker, "jwt", "`x5u`");
    // A connection of our own, made after every refusal was audited: the
    // listener accepts in arrival order, so once it has seen ours it has
    // seen any the broker made while refusing.
    let marker = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let ours = marker.local_addr().unwrap();
    tessera_e2e::eventually(
        "the listener to accept our connection",
        Duration::from_secs(20),
        async || peers.lock().unwrap().contains(&ours),
    )
    .await;
    let theirs: Vec<_> = peers.lock().unwrap().iter().filter(|p| **p != ours).copied().collect();
    assert_eq!(
        theirs.len(),
        0,
        "the broker connected to a URL from a token: {theirs:?}"
    );
}

/// Two replicas on one Redis: a token used on one is refused on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_jti_is_refused_by_a_second_replica() {
    let issuer = Issuer::default();
    let server = RedisServer::builder().appendonly(false).start();
    let env: Vec<(String, String)> = redis_env(&server.url());
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let a = Broker::start_in(jwt_dir(&issuer), &env);
    let b = a.replica();
    let token = issuer.sign(&claims("ci"));
    attested_call(&a, &token).await.unwrap();
    unauthenticated(attested_call(&b, &token).await, "already used");
    unauthenticated(attested_call(&a, &token).await, "already used");
    wait_refusal_audited(&b, "jwt", "already used");
    // A fresh token works on either.
    attested_call(&b, &issuer.sign(&claims("ci"))).await.unwrap();
}

/// A JWT attests one connection: a copy replayed on another connection (to
/// the same broker) is refused, and issuers are single-use by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attestation_jwt_attests_one_connection_and_is_not_replayable() {
    let issuer = Issuer::default();
    // Single use not configured: the default applies.
    let dir = dev_init("jwt-session");
    let jwks = dir.path().join("test-issuer-jwks.json");
    std::fs::write(&jwks, issuer.jwks()).unwrap();
    append_config(
        dir.path(),
        &format!(
            r#"
[[attestation.jwt.issuers]]
name = "test"
issuer = "{issuer_url}"
jwks_file = "{}"
algorithms = ["ES256"]
mapping = "spiffe://tessera.local/agent/{{sub}}"
{JWT_IDENTITIES}"#,
            jwks.display(),
            issuer_url = tessera_e2e::attestation::ISSUER,
        ),
    );
    let broker = Broker::start_in(dir, &[]);
    let token = issuer.sign(&claims("ci"));
    let mut verifier = verifier_with(&broker, &format!("Bearer {token}")).await;
    for _ in 0..3 {
        verifier
            .introspect(tessera_e2e::attestation::introspect_request())
            .await
            .unwrap();
    }
    unauthenticated(attested_call(&broker, &token).await, "already used");
    attested_call(&broker, &issuer.sign(&claims("ci"))).await.unwrap();
}

/// A11: the replay cache down → UNAVAILABLE, never accepted unchecked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_cache_down_answers_unavailable() {
    let issuer = Issuer::default();
    let mut server = RedisServer::builder().appendonly(false).start();
    let env: Vec<(String, String)> = redis_env(&server.url());
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.push(("TESSERA_STORE__TIMEOUT", "300ms"));
    let broker = Broker::start_in(jwt_dir(&issuer), &env);
    attested_call(&broker, &issuer.sign(&claims("ci"))).await.unwrap();
    server.kill();
    for _ in 0..3 {
        let status = attested_call(&broker, &issuer.sign(&claims("ci"))).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
}

/// What the fake JWKS server does for a path.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Script {
    Good,
    Redirect,
    Huge,
    Drip,
    Invalid,
    DuplicateKid,
}

struct FakeJwks {
    addr: String,
    ca_pem: String,
    hits: Arc<std::sync::Mutex<Vec<String>>>,
    /// `/flaky` serves good keys while true, invalid JSON after.
    flaky_good: Arc<AtomicBool>,
}

async fn fake_jwks(jwks: String) -> FakeJwks {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer as CaIssuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let ca_issuer = CaIssuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::default();
    leaf.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().unwrap())];
    let cert = leaf.signed_by(&key, &ca_issuer).unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let hits = Arc::new(std::sync::Mutex::new(Vec::new()));
    let flaky_good = Arc::new(AtomicBool::new(true));
    let (h, f, a) = (hits.clone(), flaky_good.clone(), addr.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, hits, flaky, jwks, addr) = (acceptor.clone(), h.clone(), f.clone(), jwks.clone(), a.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let Ok(n) = tls.read(&mut buf).await else { return };
                let request = String::from_utf8_lossy(&buf[..n]).to_string();
                let path = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
                hits.lock().unwrap().push(path.clone());
                let script = match path.as_str() {
                    "/redirect" => Script::Redirect,
                    "/huge" => Script::Huge,
                    "/drip" => Script::Drip,
                    "/invalid" => Script::Invalid,
                    "/dup" => Script::DuplicateKid,
                    "/flaky" if !flaky.load(Ordering::SeqCst) => Script::Invalid,
                    _ => Script::Good,
                };
                let ok = |body: &str| {
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                };
                match script {
                    Script::Good => {
                        let _ = tls.write_all(ok(&jwks).as_bytes()).await;
                    }
                    Script::Invalid => {
                        let _ = tls.write_all(ok("{\"keys\": [ not json").as_bytes()).await;
                    }
                    Script::DuplicateKid => {
                        let v: serde_json::Value = serde_json::from_str(&jwks).unwrap();
                        let k = v["keys"][0].clone();
                        let body = json!({"keys": [k.clone(), k]}).to_string();
                        let _ = tls.write_all(ok(&body).as_bytes()).await;
                    }
                    Script::Redirect => {
                        let r = format!(
                            "HTTP/1.1 302 Found\r\nLocation: https://{addr}/redirect-target\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        );
                        let _ = tls.write_all(r.as_bytes()).await;
                    }
                    Script::Huge => {
                        let _ = tls
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
                            .await;
                        let chunk = vec![b' '; 64 * 1024];
                        for _ in 0..80 {
                            let head = format!("{:x}\r\n", chunk.len());
                            if tls.write_all(head.as_bytes()).await.is_err()
                                || tls.write_all(&chunk).await.is_err()
                                || tls.write_all(b"\r\n").await.is_err()
                            {
                                return;
                            }
                        }
                        let _ = tls.write_all(b"0\r\n\r\n").await;
                    }
                    Script::Drip => {
                        let _ = tls
                            .write_all(
                                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n",
                            )
                            .await;
                        for _ in 0..60 {
                            if tls.write_all(b" ").await.is_err() || tls.flush().await.is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
                let _ = tls.shutdown().await;
            });
        }
    });
    FakeJwks {
        addr,
        ca_pem: ca_cert.pem(),
        hits,
        flaky_good,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_jwks_servers_fail_closed_within_bounds() {
    let issuer = Issuer::default();
    let fake = fake_jwks(issuer.jwks()).await;
    let dir = dev_init("jwks-url");
    let ca = dir.path().join("jwks-ca.pem");
    std::fs::write(&ca, &fake.ca_pem).unwrap();
    let source = |path: &str| {
        format!(
            "jwks_url = \"https://{}{path}\"\njwks_ca = {:?}",
            fake.addr,
            ca.display().to_string()
        )
    };
    let fast = "jwks_timeout = \"2s\"\njwks_min_refresh = \"200ms\"\njwks_refresh = \"1s\"\njwks_max_stale = \"4s\"";
    let mut config = String::new();
    for (name, path) in [
        ("good", "/good"),
        ("redirect", "/redirect"),
        ("huge", "/huge"),
        ("drip", "/drip"),
        ("invalid", "/invalid"),
        ("dup", "/dup"),
        ("flaky", "/flaky"),
    ] {
        config.push_str(&issuer_config(
            name,
            &format!("https://{name}.issuer.test"),
            &source(path),
            fast,
        ));
    }
    config.push_str(JWT_IDENTITIES);
    append_config(dir.path(), &config);
    let broker = Broker::start_in(dir, &[]);
    let token_from = |name: &str| {
        let mut c = claims("ci");
        c["iss"] = json!(format!("https://{name}.issuer.test"));
        issuer.sign(&c)
    };
    // The good URL serves keys: attested.
    attested_call(&broker, &token_from("good")).await.unwrap();
    attested_call(&broker, &token_from("flaky")).await.unwrap();
    for name in ["redirect", "huge", "drip", "invalid", "dup"] {
        let started = Instant::now();
        unauthenticated(attested_call(&broker, &token_from(name)).await, "unavailable");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{name}: the fetch was not bounded"
        );
        wait_refusal_audited(&broker, "jwt", &format!("issuer `{name}`"));
    }
    // The redirect was not followed: its target (which would serve keys) was never requested.
    let hits = fake.hits.lock().unwrap().clone();
    assert!(hits.contains(&"/redirect".to_owned()), "{hits:?}");
    assert!(
        !hits.contains(&"/redirect-target".to_owned()),
        "the redirect was followed: {hits:?}"
    );
    // Last good keys: the flaky server turns bad; tokens are accepted while
    // the keys are younger than jwks_max_stale, then refused.
    fake.flaky_good.store(false, Ordering::SeqCst);
    attested_call(&broker, &token_from("flaky")).await.unwrap();
    let started = Instant::now();
    loop {
        match attested_call(&broker, &token_from("flaky")).await {
            Ok(()) => {}
            Err(status) => {
                assert_eq!(status.code(), Code::Unauthenticated);
                assert!(status.message().contains("unavailable"), "{status:?}");
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "stale keys were used forever"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        fake.hits.lock().unwrap().iter().filter(|p| *p == "/flaky").count() >= 2,
        "the broker refreshed the flaky keys"
    );
    // Every failed load is counted per issuer; the good issuer's loads are ok.
    let (_, metrics) = broker.http_get("/metrics");
    let loads = |issuer: &str, result: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("tessera_jwks_loads_total{")
                    && l.contains(&format!("issuer=\"{issuer}\""))
                    && l.contains(&format!("result=\"{result}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    for name in ["redirect", "huge", "drip", "invalid", "dup", "flaky"] {
        assert!(
            loads(name, "error") >= 1.0,
            "{name}: no failed load counted:\n{metrics}"
        );
    }
    assert!(loads("good", "ok") >= 1.0, "{metrics}");
    assert_eq!(loads("good", "error"), 0.0, "{metrics}");
}
