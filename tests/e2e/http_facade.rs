//! The HTTP facade of the real `tesserad`, checked with raw HTTP/1.1
//! requests (over TLS with or without a client certificate): the JWKS and
//! RFC 8414 metadata, RFC 7662 introspection, RFC 7009 revocation and the
//! RFC 8693 token exchange (its delegations and its error answers). Tokens are also verified by an
//! independent JOSE implementation (Python's PyJWT with `cryptography`,
//! installed into a venv under the target directory) from the JWKS fetched
//! over HTTPS.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test"
)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tessera_client::Identity;
use tessera_e2e::{Broker, CRM, bin_dir, start_request, token_request};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const ISSUER: &str = "https://tessera.local";

#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    #[track_caller]
    fn assert_no_store(&self) {
        assert_eq!(self.header("cache-control"), Some("no-store"), "{self:?}");
        assert_eq!(self.header("pragma"), Some("no-cache"), "{self:?}");
    }
}

fn tls_config(ca_pem: &[u8], client: Option<&Identity>) -> rustls::ClientConfig {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(id) => {
            let chain = CertificateDer::pem_slice_iter(&id.cert_pem)
                .map(Result::unwrap)
                .collect();
            let key = PrivateKeyDer::from_pem_slice(&id.key_pem).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// One raw HTTPS/1.1 request to the facade as `client` (None: no certificate).
async fn https(broker: &Broker, client: Option<&str>, method: &str, path: &str, form: Option<&str>) -> Answer {
    let identity = client.map(|name| broker.identity(name));
    https_as(broker, identity.as_ref(), method, path, form).await
}

/// [`https`] with any client identity.
async fn https_as(
    broker: &Broker,
    identity: Option<&Identity>,
    method: &str,
    path: &str,
    form: Option<&str>,
) -> Answer {
    let addr = broker
        .oauth_addr
        .clone()
        .expect("the ready file names an oauth address");
    let ca = std::fs::read(broker.dir.path().join("ca.pem")).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config(&ca, identity)));
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(body) = form {
        request.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    } else {
        request.push_str("\r\n");
    }
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), tls.read_to_end(&mut raw)).await;
    parse(&raw)
}

fn parse(raw: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP answer: {text}"));
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_owned(),
    }
}

fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn live_token(broker: &Broker, task: &str) -> tessera_e2e::pb::IssuedToken {
    broker
        .start_task(start_request(task, &["researcher"], &["crm.contacts.read"], 600))
        .await;
    broker
        .issue_as("researcher", token_request(task, &["crm.contacts.read"], None))
        .await
}

#[tokio::test]
async fn public_documents_are_served_with_cache_headers() {
    let broker = Broker::start();
    let jwks = https(&broker, None, "GET", "/.well-known/jwks.json", None).await;
    assert_eq!(jwks.status, 200, "{jwks:?}");
    assert_eq!(jwks.header("content-type"), Some("application/jwk-set+json"));
    assert_eq!(jwks.header("cache-control"), Some("public, max-age=60"));
    let keys = jwks.json()["keys"].as_array().unwrap().clone();
    assert!(!keys.is_empty());
    for key in &keys {
        assert!(key.get("d").is_none(), "a private member in the JWKS");
    }
    // The same set on the plain operations port, as gRPC GetJwks gives it.
    let (status, body) = broker.http_get("/.well-known/jwks.json");
    assert_eq!(status, 200);
    let grpc: Value = serde_json::from_str(&broker.jwks().await.jwks_json).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), grpc);

    let meta = https(&broker, None, "GET", "/.well-known/oauth-authorization-server", None).await;
    assert_eq!(meta.status, 200);
    assert_eq!(meta.header("content-type"), Some("application/json"));
    let m = meta.json();
    let base = format!("https://{}", broker.oauth_addr.as_ref().unwrap());
    assert_eq!(m["issuer"], ISSUER);
    assert_eq!(m["jwks_uri"], format!("{base}/.well-known/jwks.json"));
    assert_eq!(m["introspection_endpoint"], format!("{base}/oauth/introspect"));
    assert_eq!(m["revocation_endpoint"], format!("{base}/oauth/revoke"));
    assert_eq!(m["token_endpoint"], format!("{base}/oauth/token"));
    assert!(
        m["grant_types_supported"]
            .as_array()
            .unwrap()
            .contains(&Value::from("urn:ietf:params:oauth:grant-type:token-exchange"))
    );
    // No JWT issuer is configured: no assertion could be trusted, so the
    // jwt-bearer grant is not offered (client_credentials is, by mTLS or
    // private_key_jwt).
    assert_eq!(
        m["grant_types_supported"],
        serde_json::json!(["urn:ietf:params:oauth:grant-type:token-exchange", "client_credentials"])
    );
    assert_eq!(
        m["dpop_signing_alg_values_supported"],
        serde_json::json!(["ES256", "EdDSA"])
    );
    assert_eq!(m["tls_client_certificate_bound_access_tokens"], true);

    // Health on both listeners; metrics only on the operations port.
    assert_eq!(https(&broker, None, "GET", "/readyz", None).await.status, 200);
    assert_eq!(https(&broker, None, "GET", "/metrics", None).await.status, 404);
    assert_eq!(broker.http_get("/metrics").0, 200);
}

#[tokio::test]
async fn introspection_needs_an_authenticated_verifier_and_answers_as_rfc_7662_says() {
    let broker = Broker::start();
    let token = live_token(&broker, "introspect-1").await;
    let body = form(&[("token", &token.access_token)]);

    // No client certificate: 401 with a challenge, nothing about the token.
    let anonymous = https(&broker, None, "POST", "/oauth/introspect", Some(&body)).await;
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
    assert!(
        anonymous
            .header("www-authenticate")
            .unwrap()
            .contains("realm=\"tessera\"")
    );
    assert_eq!(anonymous.json()["error"], "invalid_client");
    assert!(anonymous.json().get("active").is_none());
    anonymous.assert_no_store();
    // An agent is authenticated but not a verifier.
    let agent = https(&broker, Some("researcher"), "POST", "/oauth/introspect", Some(&body)).await;
    assert_eq!(agent.status, 403, "{agent:?}");
    assert!(agent.json().get("active").is_none());

    let live = https(&broker, Some("api-gateway"), "POST", "/oauth/introspect", Some(&body)).await;
    assert_eq!(live.status, 200, "{live:?}");
    assert_eq!(live.header("content-type"), Some("application/json"));
    live.assert_no_store();
    let claims = live.json();
    assert_eq!(claims["active"], true);
    assert_eq!(claims["jti"], token.grant_id.as_str());
    assert_eq!(claims["aud"], CRM);
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["scope"], "crm.contacts.read");
    assert_eq!(claims["sub"], "spiffe://tessera.local/agent/researcher");
    assert_eq!(claims["token_type"], "Bearer");
    assert!(claims["exp"].as_i64().unwrap() > claims["iat"].as_i64().unwrap());

    // Garbage, forged and unknown tokens: exactly {"active":false}.
    let mut forged = token.access_token.clone();
    forged.pop();
    forged.push(if token.access_token.ends_with('A') { 'B' } else { 'A' });
    for bad in ["garbage", "a.b.c", forged.as_str(), &"x".repeat(10_000)] {
        let answer = https(
            &broker,
            Some("api-gateway"),
            "POST",
            "/oauth/introspect",
            Some(&form(&[("token", bad)])),
        )
        .await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.body, r#"{"active":false}"#);
        answer.assert_no_store();
    }
    let huge = https(
        &broker,
        Some("api-gateway"),
        "POST",
        "/oauth/introspect",
        Some(&form(&[("token", &"x".repeat(20_000))])),
    )
    .await;
    assert_eq!(huge.status, 413, "{huge:?}");

    // Malformed requests: RFC 6749 section 5.2 errors.
    for body in ["", "token=", "tok=x", "token=a&token=b"] {
        let answer = https(&broker, Some("api-gateway"), "POST", "/oauth/introspect", Some(body)).await;
        assert_eq!(answer.status, 400, "{body}: {answer:?}");
        assert_eq!(answer.json()["error"], "invalid_request");
        answer.assert_no_store();
    }
    let get = https(&broker, Some("api-gateway"), "GET", "/oauth/introspect", None).await;
    assert_eq!(get.status, 405);

    // Revoked (released by its holder over RFC 7009): inactive.
    let released = https(&broker, Some("researcher"), "POST", "/oauth/revoke", Some(&body)).await;
    assert_eq!(released.status, 200, "{released:?}");
    released.assert_no_store();
    let dead = https(&broker, Some("api-gateway"), "POST", "/oauth/introspect", Some(&body)).await;
    assert_eq!(dead.body, r#"{"active":false}"#);
}

#[tokio::test]
async fn revocation_answers_the_same_for_every_token_and_revokes_for_the_holder_or_an_operator_only() {
    let broker = Broker::start();
    let token = live_token(&broker, "revoke-1").await;
    let body = form(&[("token", &token.access_token), ("token_type_hint", "access_token")]);
    let introspect = || async {
        https(
            &broker,
            Some("api-gateway"),
            "POST",
            "/oauth/introspect",
            Some(&form(&[("token", &token.access_token)])),
        )
        .await
        .json()["active"]
            .as_bool()
            .unwrap()
    };

    let anonymous = https(&broker, None, "POST", "/oauth/revoke", Some(&body)).await;
    assert_eq!(anonymous.status, 401);
    assert!(anonymous.header("www-authenticate").is_some());
    // Another agent may not revoke it, and learns nothing from trying: the
    // answer is the one an unknown or invalid token gets (RFC 7009 section
    // 2.2), so the endpoint is no validity oracle.
    let stranger = https(&broker, Some("writer"), "POST", "/oauth/revoke", Some(&body)).await;
    assert_eq!(stranger.status, 200, "{stranger:?}");
    stranger.assert_no_store();
    assert!(introspect().await);
    for junk in ["junk", "a.b.c"] {
        let answer = https(
            &broker,
            Some("writer"),
            "POST",
            "/oauth/revoke",
            Some(&form(&[("token", junk)])),
        )
        .await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (stranger.status, stranger.body.as_str())
        );
    }
    // An operator may.
    let operator = https(&broker, Some("alice"), "POST", "/oauth/revoke", Some(&body)).await;
    assert_eq!(operator.status, 200, "{operator:?}");
    assert!(!introspect().await);
    // Revoking it again is fine.
    let again = https(&broker, Some("researcher"), "POST", "/oauth/revoke", Some(&body)).await;
    assert_eq!(again.status, 200, "{again:?}");
}

#[tokio::test]
async fn the_token_endpoint_answers_rfc_6749_errors() {
    let broker = Broker::start();
    let token = live_token(&broker, "exchange-1").await;
    let anonymous = https(
        &broker,
        None,
        "POST",
        "/oauth/token",
        Some("grant_type=client_credentials"),
    )
    .await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.json()["error"], "invalid_client");
    // Without a JWT issuer no assertion is trusted: invalid_grant, audited.
    let assertion = form(&[
        ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
        ("assertion", "eyJhbGciOiJFUzI1NiJ9.e30.c2ln"),
        ("resource", CRM),
        ("scope", "crm.contacts.read"),
        ("task_id", "exchange-1"),
    ]);
    let untrusted = https(&broker, None, "POST", "/oauth/token", Some(&assertion)).await;
    assert_eq!(untrusted.status, 400, "{untrusted:?}");
    assert_eq!(untrusted.json()["error"], "invalid_grant");
    tessera_e2e::attestation::wait_refusal_audited(&broker, "jwt", "no JWT issuer is trusted");
    for (body, error) in [
        (form(&[("grant_type", "password")]), "unsupported_grant_type"),
        (form(&[("scope", "x")]), "invalid_request"),
        (
            form(&[("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange")]),
            "invalid_request",
        ),
        (
            form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
                ("subject_token", &token.access_token),
                ("subject_token_type", "urn:ietf:params:oauth:token-type:saml2"),
            ]),
            "invalid_request",
        ),
        (
            form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
                ("subject_token", &token.access_token),
                ("subject_token_type", "urn:ietf:params:oauth:token-type:access_token"),
                ("resource", CRM),
                ("audience", "https://api.example.com/payments"),
            ]),
            "invalid_target",
        ),
        (
            form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
                ("subject_token", &token.access_token),
                ("subject_token_type", "urn:ietf:params:oauth:token-type:access_token"),
                ("actor_token", "x"),
                ("actor_token_type", "urn:ietf:params:oauth:token-type:jwt"),
            ]),
            "invalid_request",
        ),
    ] {
        let answer = https(&broker, Some("writer"), "POST", "/oauth/token", Some(&body)).await;
        assert_eq!(answer.status, 400, "{answer:?}");
        assert_eq!(answer.json()["error"], error, "{answer:?}");
        answer.assert_no_store();
    }
}

const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

fn claims(token: &str) -> Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

fn exchange(subject_token: &str, extra: &[(&str, &str)]) -> String {
    let mut pairs = vec![
        ("grant_type", EXCHANGE),
        ("subject_token", subject_token),
        ("subject_token_type", ACCESS_TOKEN),
    ];
    pairs.extend_from_slice(extra);
    form(&pairs)
}

#[tokio::test]
async fn token_exchange_delegates_to_the_authenticated_client_as_rfc_8693_says() {
    let broker = Broker::start();
    broker
        .start_task(start_request(
            "exchange-2",
            &["researcher", "writer"],
            &["crm.contacts.read", "crm.notes.read"],
            600,
        ))
        .await;
    let parent = broker
        .issue_as(
            "researcher",
            token_request("exchange-2", &["crm.contacts.read", "crm.notes.read"], None),
        )
        .await;

    // The writer, handed the researcher's bearer token, exchanges it for a
    // narrower child of its own.
    let body = exchange(
        &parent.access_token,
        &[
            ("resource", CRM),
            ("scope", "crm.contacts.read"),
            ("task_id", "exchange-2"),
        ],
    );
    let answer = https(&broker, Some("writer"), "POST", "/oauth/token", Some(&body)).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    answer.assert_no_store();
    let issued = answer.json();
    assert_eq!(issued["issued_token_type"], ACCESS_TOKEN);
    assert_eq!(issued["token_type"], "Bearer");
    assert_eq!(issued["scope"], "crm.contacts.read");
    let expires_in = issued["expires_in"].as_i64().unwrap();
    assert!(expires_in > 0 && expires_in <= 600, "{issued}");
    let child = issued["access_token"].as_str().unwrap().to_owned();
    let c = claims(&child);
    let p = claims(&parent.access_token);
    assert_eq!(c["sub"], p["sub"], "the subject stays the root holder");
    assert_eq!(
        c["act"]["sub"], "spiffe://tessera.local/agent/writer",
        "the actor is outermost: {c}"
    );
    assert_eq!(c["client_id"], "spiffe://tessera.local/agent/writer");
    assert_eq!(c["aud"], CRM);
    assert!(c["exp"].as_i64().unwrap() <= p["exp"].as_i64().unwrap());
    assert!(
        c["cnf"]["x5t#S256"].is_string(),
        "bound to the client's certificate (RFC 8705): {c}"
    );

    // Live, and introspected with its chain.
    let introspect = |token: String| {
        let broker = &broker;
        async move {
            https(
                broker,
                Some("api-gateway"),
                "POST",
                "/oauth/introspect",
                Some(&form(&[("token", &token)])),
            )
            .await
            .json()
        }
    };
    let live = introspect(child.clone()).await;
    assert_eq!(live["active"], true, "{live}");
    assert_eq!(live["act"]["sub"], "spiffe://tessera.local/agent/writer");

    // Refusals, each with its RFC 8693 section 2.2.2 code.
    let bound = broker
        .issue_as(
            "researcher",
            tessera_e2e::pb::RequestTokenRequest {
                mtls_binding: true,
                ..token_request("exchange-2", &["crm.contacts.read"], None)
            },
        )
        .await;
    for (who, body, code, says) in [
        (
            "writer",
            exchange(&parent.access_token, &[("scope", "crm.contacts.write")]),
            "invalid_scope",
            "scope",
        ),
        (
            "writer",
            exchange(
                &parent.access_token,
                &[("audience", "https://api.example.com/payments")],
            ),
            "invalid_target",
            "audience",
        ),
        (
            "writer",
            exchange(&parent.access_token, &[("task_id", "another-task")]),
            "invalid_request",
            "task",
        ),
        (
            "researcher",
            exchange(&parent.access_token, &[]),
            "invalid_request",
            "own holder",
        ),
        ("writer", exchange(&bound.access_token, &[]), "invalid_request", "bound"),
        (
            "writer",
            exchange("not.a.token", &[]),
            "invalid_request",
            "subject_token",
        ),
        // The child is bound to the writer's certificate: not exchangeable.
        ("writer", exchange(&child, &[]), "invalid_request", "bound"),
    ] {
        let answer = https(&broker, Some(who), "POST", "/oauth/token", Some(&body)).await;
        assert_eq!(answer.status, 400, "{who}: {answer:?}");
        let json = answer.json();
        assert_eq!(json["error"], code, "{who}: {json}");
        assert!(
            json["error_description"].as_str().unwrap().contains(says),
            "{who}: {json}"
        );
        assert!(json.get("access_token").is_none());
        answer.assert_no_store();
    }

    // The client revokes the token it got (RFC 7009: it is the holder,
    // `client_id`, though `sub` names the root).
    let body = exchange(&parent.access_token, &[("scope", "crm.notes.read")]);
    let second = https(&broker, Some("writer"), "POST", "/oauth/token", Some(&body)).await;
    assert_eq!(second.status, 200, "{second:?}");
    let second = second.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(introspect(second.clone()).await["active"], true);
    let revoked = https(
        &broker,
        Some("writer"),
        "POST",
        "/oauth/revoke",
        Some(&form(&[("token", &second)])),
    )
    .await;
    assert_eq!(revoked.status, 200, "{revoked:?}");
    assert_eq!(introspect(second).await, serde_json::json!({"active": false}));
    assert_eq!(introspect(child.clone()).await["active"], true, "a sibling lives");

    // Revoking the parent (RFC 7009, by its holder) revokes the child.
    let revoked = https(
        &broker,
        Some("researcher"),
        "POST",
        "/oauth/revoke",
        Some(&form(&[("token", &parent.access_token)])),
    )
    .await;
    assert_eq!(revoked.status, 200, "{revoked:?}");
    assert_eq!(introspect(child.clone()).await, serde_json::json!({"active": false}));
    let again = https(
        &broker,
        Some("writer"),
        "POST",
        "/oauth/token",
        Some(&exchange(&parent.access_token, &[])),
    )
    .await;
    assert_eq!(again.status, 400, "{again:?}");
    assert_eq!(again.json()["error"], "invalid_request");
}

/// A venv with PyJWT and cryptography under the target directory, made once.
fn python() -> Option<PathBuf> {
    let venv = bin_dir().parent().unwrap().join("pyjose-venv");
    let python = venv.join("bin/python");
    let ready = |p: &PathBuf| {
        Command::new(p)
            .args(["-c", "import jwt, cryptography"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if ready(&python) {
        return Some(python);
    }
    let made = Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success());
    let installed = made
        && Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "pyjwt", "cryptography"])
            .status()
            .is_ok_and(|s| s.success());
    (installed && ready(&python)).then_some(python)
}

const PYJWT_CHECK: &str = r#"
import json, ssl, sys, urllib.request
import jwt
url, ca, token, audience, issuer = sys.argv[1:6]
ctx = ssl.create_default_context(cafile=ca)
with urllib.request.urlopen(url, context=ctx) as r:
    jwks = json.load(r)
kid = jwt.get_unverified_header(token)["kid"]
keys = {k.key_id: k for k in jwt.PyJWKSet.from_dict(jwks).keys}
key = keys[kid]
claims = jwt.decode(token, key.key, algorithms=["ES256", "EdDSA"], audience=audience, issuer=issuer,
                    options={"require": ["exp", "iat", "nbf", "jti", "sub", "iss", "aud"]})
print(json.dumps({"sub": claims["sub"], "jti": claims["jti"], "alg": jwt.get_unverified_header(token)["alg"]}))
"#;

#[tokio::test]
async fn tokens_verify_with_pyjwt_from_the_jwks_served_over_https() {
    let python = python().expect("python3 with venv and pip (PyPI) is needed for the independent JOSE check");
    for alg in ["ES256", "EdDSA"] {
        let broker = Broker::start_with(&[("TESSERA_TOKENS__ALGORITHM", alg)]);
        let token = live_token(&broker, "pyjwt-1").await;
        let url = format!("https://{}/.well-known/jwks.json", broker.oauth_addr.as_ref().unwrap());
        let ca = broker.dir.path().join("ca.pem");
        let run = |token: &str| {
            Command::new(&python)
                .args(["-c", PYJWT_CHECK, &url])
                .arg(&ca)
                .args([token, CRM, ISSUER])
                .output()
                .unwrap()
        };
        let out = run(&token.access_token);
        assert!(
            out.status.success(),
            "PyJWT refused a {alg} token: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let verified: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(verified["jti"], token.grant_id.as_str());
        assert_eq!(verified["alg"], alg);
        // And it refuses a tampered one (the check can fail).
        let (input, _) = token.access_token.rsplit_once('.').unwrap();
        let other = live_token(&broker, "pyjwt-2").await;
        let (_, other_signature) = other.access_token.rsplit_once('.').unwrap();
        let tampered = format!("{input}.{other_signature}");
        assert!(
            !run(&tampered).status.success(),
            "PyJWT accepted a tampered {alg} token"
        );
    }
}

/// The facade trusts exactly what the gRPC port trusts: every configured
/// trust domain, bundles reloaded without a restart, and a certificate
/// from no trusted CA refused with `invalid_client` and an audit record.
#[tokio::test]
async fn the_facade_trusts_what_the_grpc_port_trusts() {
    let dir = tessera_e2e::dev_init("facade-td");
    let (partner_cert, partner) = tessera_e2e::attestation::own_ca("partner CA");
    std::fs::write(dir.path().join("partner-ca.pem"), partner_cert.pem()).unwrap();
    tessera_e2e::attestation::append_config(
        dir.path(),
        r#"
[attestation]
reload_interval = "200ms"

[[tls.trust_domains]]
name = "partner.example"
bundle = "partner-ca.pem"

[[identities]]
id = "spiffe://partner.example/service/gateway"
kind = "partner"
owner = "partner-inc"
roles = ["verifier"]
max_ttl = "5m"
"#,
    );
    let broker = Broker::start_in(dir, &[]);
    let token = live_token(&broker, "facade-td").await;
    let body = form(&[("token", &token.access_token)]);
    let gateway =
        tessera_e2e::attestation::identity_signed_by(&broker, &partner, "spiffe://partner.example/service/gateway");
    // A verifier of another trust domain is authenticated over HTTPS, and
    // learns nothing of a live token of an API it does not serve (the CRM
    // lists only the api-gateway in `verifiers`): the inactive answer.
    let answer = https_as(&broker, Some(&gateway), "POST", "/oauth/introspect", Some(&body)).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body, r#"{"active":false}"#);
    let served = https(&broker, Some("api-gateway"), "POST", "/oauth/introspect", Some(&body)).await;
    assert_eq!(served.json()["active"], true);
    // A certificate from no trusted CA: invalid_client, saying why, audited.
    let stranger =
        tessera_e2e::attestation::foreign_identity(&broker, "spiffe://tessera.local/service/api-gateway", false);
    let answer = https_as(&broker, Some(&stranger), "POST", "/oauth/introspect", Some(&body)).await;
    assert_eq!(answer.status, 401, "{answer:?}");
    assert_eq!(answer.json()["error"], "invalid_client");
    assert!(answer.json().get("active").is_none());
    tessera_e2e::attestation::wait_refusal_audited(&broker, "x509", "trust bundle of its trust domain");
    // The partner bundle emptied: refused without a restart.
    std::fs::write(broker.dir.path().join("partner-ca.pem"), "").unwrap();
    let started = std::time::Instant::now();
    loop {
        let answer = https_as(&broker, Some(&gateway), "POST", "/oauth/introspect", Some(&body)).await;
        if answer.status == 401 {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "still served: {answer:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// V1: a real token reaches its `exp` with nothing revoked (leeway 0 at the
/// broker and in the SDK verifier). Broker introspection, the HTTP facade's
/// RFC 7662 introspection and the SDK verifier all refuse it, the SDK for
/// expiry (not revocation), and on Redis the grant's key is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refused_everywhere_without_any_revocation() {
    use std::time::Duration;

    use tessera_client::verifier::{Presented, VerifierConfig, VerifyError};
    use tessera_core::token::JwsError;

    let broker = Broker::start_with(&[("TESSERA_TOKENS__LEEWAY", "0s")]);
    broker
        .start_task(start_request("expiry", &["researcher"], &["crm.contacts.read"], 600))
        .await;
    let mut config = VerifierConfig::new(ISSUER, CRM);
    config.leeway = Duration::ZERO;
    let channel = tessera_client::connect_lazy(&broker.endpoint(), &broker.identity("api-gateway")).unwrap();
    let verifier = tessera_client::Verifier::connect(channel, config).unwrap();
    assert!(verifier.ready(Duration::from_secs(20)).await, "{:?}", verifier.status());
    tessera_e2e::wait_past_second(verifier.status().sync_floor.unwrap()).await;

    let mut agent = broker.agent("researcher").await;
    let token = tessera_e2e::issue(&mut agent, token_request("expiry", &["crm.contacts.read"], Some(3))).await;
    let mut introspection = broker.verifier("api-gateway").await;
    assert!(
        tessera_e2e::introspect(&mut introspection, &token.access_token)
            .await
            .unwrap()
    );
    verifier.verify(&Presented::bearer(&token.access_token)).await.unwrap();

    tessera_e2e::eventually("the token expires at the broker", Duration::from_secs(20), async || {
        !tessera_e2e::introspect(&mut introspection, &token.access_token)
            .await
            .unwrap()
    })
    .await;
    let refused = verifier
        .verify(&Presented::bearer(&token.access_token))
        .await
        .unwrap_err();
    assert!(matches!(refused, VerifyError::Token(JwsError::Expired)), "{refused:?}");
    let body = form(&[("token", &token.access_token)]);
    let answer = https(&broker, Some("api-gateway"), "POST", "/oauth/introspect", Some(&body)).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json(), serde_json::json!({ "active": false }));
    if let Some(redis) = &broker.redis {
        // The tree's grant hash expires with its latest grant: this one.
        let key = format!("tessera:{{{}}}:G", &token.grant_id[..8]);
        tessera_e2e::eventually("Redis drops the grant at exp", Duration::from_secs(10), async || {
            redis.cli(&["HEXISTS", &key, &token.grant_id]) == "0"
        })
        .await;
    }
}

/// A TLS connection to the facade as `identity` (None: no certificate).
async fn tls_connect(
    broker: &Broker,
    identity: Option<&Identity>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let addr = broker
        .oauth_addr
        .clone()
        .expect("the ready file names an oauth address");
    let ca = std::fs::read(broker.dir.path().join("ca.pem")).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config(&ca, identity)));
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    connector
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap()
}

/// Sends one keep-alive request on `tls` and reads its one answer (by its
/// Content-Length), leaving the connection open.
async fn keep_alive_request(
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    method: &str,
    path: &str,
    form: Option<&str>,
) -> Answer {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: tessera\r\n");
    match form {
        Some(body) => request.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )),
        None => request.push_str("\r\n"),
    }
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if raw.len() >= end + 4 + length {
                return parse(&raw);
            }
        }
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), tls.read(&mut chunk))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        assert!(n > 0, "the facade closed the connection before answering: {raw:?}");
        raw.extend_from_slice(&chunk[..n]);
    }
}

/// Reads until the facade closes `tls`; panics if it is still open after `limit`.
async fn closed_within(tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>, limit: std::time::Duration) {
    let mut sink = Vec::new();
    match tokio::time::timeout(limit, tls.read_to_end(&mut sink)).await {
        Ok(_) => assert!(sink.is_empty(), "unexpected bytes on an idle connection: {sink:?}"),
        Err(_) => panic!("the facade kept an idle connection open past {limit:?}"),
    }
}

#[tokio::test]
async fn a_second_request_on_the_same_tls_connection_is_served() {
    let broker = Broker::start();
    let token = live_token(&broker, "keep-alive-1").await;
    let verifier = broker.identity("api-gateway");
    let mut tls = tls_connect(&broker, Some(&verifier)).await;
    let jwks = keep_alive_request(&mut tls, "GET", "/.well-known/jwks.json", None).await;
    assert_eq!(jwks.status, 200, "{jwks:?}");
    assert_ne!(jwks.header("connection"), Some("close"), "{jwks:?}");
    // The client certificate of the handshake still authenticates the next
    // request on the same connection.
    let body = form(&[("token", &token.access_token)]);
    for _ in 0..2 {
        let live = keep_alive_request(&mut tls, "POST", "/oauth/introspect", Some(&body)).await;
        assert_eq!(live.status, 200, "{live:?}");
        assert_eq!(live.json()["active"], true, "{live:?}");
    }
}

#[tokio::test]
async fn idle_kept_alive_connections_are_closed_and_give_their_slots_back() {
    // As many connections as the facade has slots (MAX_CONNECTIONS in
    // tessera-server's http module), each served once and then left idle.
    const SLOTS: usize = 256;
    let broker = Broker::start();
    let mut idle = Vec::with_capacity(SLOTS);
    for _ in 0..SLOTS {
        let mut tls = tls_connect(&broker, None).await;
        let answer = keep_alive_request(&mut tls, "GET", "/healthz", None).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_ne!(answer.header("connection"), Some("close"), "{answer:?}");
        idle.push(tls);
    }
    // One more client: its handshake waits in the backlog until an idle
    // connection gives its slot back.
    let late = tokio::spawn({
        let addr = broker.oauth_addr.clone().unwrap();
        let ca = std::fs::read(broker.dir.path().join("ca.pem")).unwrap();
        async move {
            let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config(&ca, None)));
            let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let mut tls = connector
                .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
                .await
                .unwrap();
            keep_alive_request(&mut tls, "GET", "/healthz", None).await.status
        }
    });
    // Every idle connection is closed by the facade (idle timeout 5 s; the
    // limit only bounds a broken run).
    for tls in &mut idle {
        closed_within(tls, std::time::Duration::from_secs(60)).await;
    }
    let status = tokio::time::timeout(std::time::Duration::from_secs(60), late)
        .await
        .expect("the late client is served once the slots are free")
        .unwrap();
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_connection_closes_after_its_thousandth_request() {
    // MAX_REQUESTS_PER_CONNECTION in tessera-server's http module: a busy
    // client cannot keep its slot for good.
    const CAP: usize = 1000;
    let broker = Broker::start();
    let mut tls = tls_connect(&broker, None).await;
    for n in 1..=CAP {
        let answer = keep_alive_request(&mut tls, "GET", "/healthz", None).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        let closing = answer.header("connection") == Some("close");
        assert_eq!(closing, n == CAP, "request {n}: {answer:?}");
    }
    closed_within(&mut tls, std::time::Duration::from_secs(10)).await;
}
