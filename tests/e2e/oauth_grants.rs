//! The HTTPS token endpoint's grants for agents that speak OAuth (issue
//! 21), checked with raw HTTP/1.1 over TLS against the real `tesserad`: the
//! RFC 7523 `jwt-bearer` grant, `client_credentials` with `private_key_jwt`
//! and with mTLS, `resource` / `task_id` / `authorization_details`, DPoP with
//! server nonces, every refusal's RFC error code and audit record, the RFC
//! 8414 metadata, and that the token is the task's grant (revoked when the
//! orchestrator completes the task). On Redis, single use of an assertion
//! and of a proof holds across two replicas.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test"
)]

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use tessera_client::{Identity, PopKey};
use tessera_e2e::attestation::{self, Issuer};
use tessera_e2e::{Broker, CRM, TempDir, dev_init, introspect, pb, start_request, test_store};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const CLIENT_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const BROKER_ISSUER: &str = "https://tessera.local";
const CI: &str = "spiffe://tessera.local/agent/ci";
const CLIENT: &str = "spiffe://tessera.local/agent/mcp-client";
const READ: &str = "crm.contacts.read";
const PUBLIC_URL: &str = "https://oauth.tessera.test";

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
    fn error(&self) -> String {
        assert!(
            self.header("cache-control") == Some("no-store"),
            "error answers are not cached: {self:?}"
        );
        assert!(
            self.json().get("access_token").is_none(),
            "a token with an error: {self:?}"
        );
        self.json()["error"].as_str().unwrap_or_default().to_owned()
    }

    #[track_caller]
    fn token(&self) -> Value {
        assert_eq!(self.status, 200, "{self:?}");
        assert_eq!(self.header("cache-control"), Some("no-store"), "{self:?}");
        self.json()
    }
}

/// The broker's test setup: the dev PKI, a test JWT issuer (its keys in a
/// file), `agent/ci` (jwt only), and `agent/mcp-client` whose client keys
/// are registered (`private_key_jwt`); the DPoP nonce key shared by replicas.
struct Setup {
    broker: Broker,
    issuer: Issuer,
    client_key: Issuer,
}

impl Setup {
    fn start(tag: &str) -> Self {
        Self::start_with(dev_init(tag), "")
    }

    /// [`Setup::start`] on `dir`, with `extra` appended to its configuration.
    fn start_with(dir: TempDir, extra: &str) -> Self {
        let issuer = Issuer::new("issuer-key-1");
        let client_key = Issuer::new("client-key-1");
        std::fs::write(dir.path().join("issuer.jwks"), issuer.jwks()).unwrap();
        std::fs::write(dir.path().join("client.jwks"), client_key.jwks()).unwrap();
        std::fs::write(dir.path().join("nonce.key"), [42u8; 32]).unwrap();
        let jwks = dir.path().join("issuer.jwks");
        attestation::append_config(
            dir.path(),
            &format!(
                r#"{}
[[identities]]
id = "{CLIENT}"
kind = "agent"
owner = "team-research"
roles = ["agent"]
max_ttl = "10m"
client_jwks_file = "client.jwks"
{extra}"#,
                attestation::jwt_config(&jwks)
            ),
        );
        // Replicas share the public URL (the `aud` of assertions, the `htu`
        // of proofs) and the nonce key, as behind one load balancer.
        let broker = Broker::start_in(
            dir,
            &[
                ("TESSERA_OAUTH__DPOP_NONCE_KEY_FILE", "nonce.key"),
                ("TESSERA_OAUTH__PUBLIC_URL", PUBLIC_URL),
            ],
        );
        Self {
            broker,
            issuer,
            client_key,
        }
    }

    fn endpoint(&self) -> String {
        format!("{PUBLIC_URL}/oauth/token")
    }

    /// An assertion of the test issuer for `sub`, with `aud` the token endpoint.
    fn assertion(&self, sub: &str) -> String {
        let mut claims = attestation::claims(sub);
        claims["aud"] = Value::from(self.endpoint());
        self.issuer.sign(&claims)
    }

    /// A fresh `private_key_jwt` client assertion of `agent/mcp-client`.
    fn client_assertion(&self, key: &Issuer) -> String {
        let mut claims = attestation::claims("unused");
        claims["iss"] = Value::from(CLIENT);
        claims["sub"] = Value::from(CLIENT);
        claims["aud"] = Value::from(self.endpoint());
        key.sign(&claims)
    }

    async fn task(&self, id: &str, agents: &[&str]) {
        self.broker.start_task(start_request(id, agents, &[READ], 600)).await;
    }

    async fn post(&self, client: Option<&str>, form: &[(&str, &str)], dpop: Option<&str>) -> Answer {
        post_to(
            &self.broker,
            client.map(|n| self.broker.identity(n)).as_ref(),
            form,
            dpop,
        )
        .await
    }

    /// A `jwt-bearer` request of `agent/ci` for task `task`.
    async fn jwt_bearer(&self, task: &str, extra: &[(&str, &str)], dpop: Option<&str>) -> Answer {
        let assertion = self.assertion("ci");
        let mut form = vec![
            ("grant_type", JWT_BEARER),
            ("assertion", assertion.as_str()),
            ("resource", CRM),
            ("scope", READ),
            ("task_id", task),
        ];
        form.extend_from_slice(extra);
        self.post(None, &form, dpop).await
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

/// One raw HTTPS/1.1 request: GET without `form`, else a form POST to the
/// token endpoint, with a `DPoP` header when given.
async fn request(
    broker: &Broker,
    identity: Option<&Identity>,
    path: &str,
    form: Option<&str>,
    dpop: Option<&str>,
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
    let method = if form.is_some() { "POST" } else { "GET" };
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(proof) = dpop {
        head.push_str(&format!("DPoP: {proof}\r\n"));
    }
    match form {
        Some(body) => head.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )),
        None => head.push_str("\r\n"),
    }
    tls.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw);
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

async fn post_to(broker: &Broker, identity: Option<&Identity>, form: &[(&str, &str)], dpop: Option<&str>) -> Answer {
    let body = form
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    request(broker, identity, "/oauth/token", Some(&body), dpop).await
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// The audit record matching `pred`. No waiting: the broker writes a
/// request's records before it answers (a failed audit write fails the
/// request), so the record is in the trail once the client has its answer.
#[track_caller]
fn audited(broker: &Broker, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let records = attestation::audit_records(broker);
    match records.iter().find(|r| pred(r)) {
        Some(r) => r.clone(),
        None => panic!(
            "no audit record: {what}; the last ones: {:#?}",
            records.iter().rev().take(5).collect::<Vec<_>>()
        ),
    }
}

/// A `token_denied` record of the token endpoint whose reason has `reason`.
#[track_caller]
fn audited_denial(broker: &Broker, grant: &str, reason: &str) -> Value {
    audited(broker, &format!("token_denied ({grant}) with `{reason}`"), |r| {
        r["event"] == "token_denied"
            && r["grant_type"] == grant
            && r["reason"].as_str().is_some_and(|s| s.contains(reason))
    })
}

#[tokio::test]
async fn the_metadata_lists_exactly_what_the_token_endpoint_accepts() {
    let setup = Setup::start("oauth-meta");
    let meta = request(
        &setup.broker,
        None,
        "/.well-known/oauth-authorization-server",
        None,
        None,
    )
    .await;
    assert_eq!(meta.status, 200, "{meta:?}");
    let m = meta.json();
    assert_eq!(m["issuer"], BROKER_ISSUER);
    assert_eq!(m["token_endpoint"], setup.endpoint());
    assert_eq!(
        m["grant_types_supported"],
        json!([
            "urn:ietf:params:oauth:grant-type:token-exchange",
            "client_credentials",
            JWT_BEARER
        ])
    );
    assert_eq!(
        m["token_endpoint_auth_methods_supported"],
        json!(["tls_client_auth", "private_key_jwt"])
    );
    let algs = m["token_endpoint_auth_signing_alg_values_supported"]
        .as_array()
        .unwrap();
    assert!(algs.contains(&Value::from("ES256")));
    assert!(
        !algs
            .iter()
            .any(|a| a == "none" || a.as_str().unwrap().starts_with("HS"))
    );
    assert_eq!(
        m["authorization_details_types_supported"],
        json!(["tessera_task", "mcp_tool"])
    );
    assert_eq!(m["dpop_signing_alg_values_supported"], json!(["ES256", "EdDSA"]));
    assert_eq!(m["resource_indicators_supported"], true);
    // An authorization endpoint is listed (MCP clients require one) and
    // refuses everything: no response type is supported.
    assert_eq!(m["authorization_endpoint"], format!("{PUBLIC_URL}/oauth/authorize"));
    assert_eq!(m["response_types_supported"], json!([]));
    let authorize = request(
        &setup.broker,
        None,
        "/oauth/authorize?response_type=code&client_id=x&redirect_uri=https://evil.example/",
        None,
        None,
    )
    .await;
    assert_eq!(
        (authorize.status, authorize.error().as_str()),
        (400, "unsupported_response_type")
    );
    assert!(authorize.header("location").is_none(), "never a redirect");
}

/// `jwt-bearer` with a workload JWT: the task's grant, recorded and
/// audited with its grant type, revoked when the task completes; every bad
/// assertion or request refused with its RFC code and an audit record.
#[tokio::test]
async fn the_jwt_bearer_grant_gives_the_task_bound_grant_and_refuses_bad_input() {
    let setup = Setup::start("oauth-jwt-bearer");
    let broker = &setup.broker;
    setup.task("jb-1", &["ci"]).await;

    // By `task_id`, with the broker's issuer identifier as `aud` (what MCP
    // clients send, draft-ietf-oauth-rfc7523bis).
    let mut claims = attestation::claims("ci");
    claims["aud"] = Value::from(BROKER_ISSUER);
    let assertion = setup.issuer.sign(&claims);
    let form = [
        ("grant_type", JWT_BEARER),
        ("assertion", assertion.as_str()),
        ("resource", CRM),
        ("scope", READ),
        ("task_id", "jb-1"),
    ];
    let answer = setup.post(None, &form, None).await;
    let body = answer.token();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], READ);
    assert_eq!(
        body["authorization_details"],
        json!([{"type": "tessera_task", "task_id": "jb-1", "locations": [CRM]}])
    );
    let token = body["access_token"].as_str().unwrap().to_owned();
    let c = claims_of(&token);
    assert_eq!(c["sub"], CI);
    assert_eq!(c["aud"], CRM);
    assert_eq!(c["task_id"], "jb-1");
    let issued = audited(broker, "token_issued by jwt-bearer", |r| {
        r["event"] == "token_issued" && r["grant_id"] == c["jti"]
    });
    assert_eq!(issued["grant_type"], "jwt-bearer");
    assert_eq!(issued["client_auth"], "none");
    assert_eq!(issued["who"]["attestation"], "jwt");

    // The same assertion again: its `jti` is burnt.
    let replayed = setup.post(None, &form, None).await;
    assert_eq!(
        (replayed.status, replayed.error().as_str()),
        (400, "invalid_grant"),
        "{replayed:?}"
    );
    attestation::wait_refusal_audited(broker, "jwt", "already used");

    // By `authorization_details` of type `tessera_task`, `aud` the token endpoint.
    let details = json!([{"type": "tessera_task", "task_id": "jb-1", "locations": [CRM]}]).to_string();
    let by_details = setup
        .post(
            None,
            &[
                ("grant_type", JWT_BEARER),
                ("assertion", &setup.assertion("ci")),
                ("resource", CRM),
                ("scope", READ),
                ("authorization_details", &details),
            ],
            None,
        )
        .await;
    let second = by_details.token()["access_token"].as_str().unwrap().to_owned();

    // Bad assertions: invalid_grant, each audited as an attestation refusal.
    let t = attestation::now();
    let mut other_audience = attestation::claims("ci");
    other_audience["aud"] = Value::from("https://other.example/token");
    let mut expired = attestation::claims("ci");
    expired["aud"] = Value::from(setup.endpoint());
    expired["iat"] = Value::from(t - 600);
    expired["exp"] = Value::from(t - 60);
    let mut fresh = attestation::claims("ci");
    fresh["aud"] = Value::from(setup.endpoint());
    let stranger = Issuer::new("issuer-key-1");
    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let unsigned = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&fresh));
    let none_with_sig = format!("{unsigned}c2ln");
    let hmac = setup
        .issuer
        .sign_raw(&json!({"alg": "HS256", "kid": "issuer-key-1", "typ": "JWT"}), &fresh);
    let mut unknown_issuer = fresh.clone();
    unknown_issuer["iss"] = Value::from("https://unknown.example");
    for (assertion, reason) in [
        (setup.issuer.sign(&other_audience), "`aud`"),
        (setup.issuer.sign(&unknown_issuer), "issuer is not configured"),
        (none_with_sig, "algorithm is not allowed"),
        (hmac, "algorithm is not allowed"),
        (setup.issuer.sign(&expired), "expired"),
        (stranger.sign(&fresh), "signature is invalid"),
    ] {
        let evidence = tessera_core::hex::sha256(assertion.as_bytes());
        let answer = setup
            .post(
                None,
                &[
                    ("grant_type", JWT_BEARER),
                    ("assertion", &assertion),
                    ("resource", CRM),
                    ("scope", READ),
                    ("task_id", "jb-1"),
                ],
                None,
            )
            .await;
        assert_eq!(
            (answer.status, answer.error().as_str()),
            (400, "invalid_grant"),
            "{reason}: {answer:?}"
        );
        attestation::wait_refusal_of(broker, "jwt", &evidence, reason);
    }
    // A certificate client with an assertion naming another agent: the
    // grant is not the client's.
    let assertion = setup.assertion("ci");
    let other = setup
        .post(
            Some("researcher"),
            &[
                ("grant_type", JWT_BEARER),
                ("assertion", &assertion),
                ("resource", CRM),
                ("scope", READ),
                ("task_id", "jb-1"),
            ],
            None,
        )
        .await;
    assert_eq!(
        (other.status, other.error().as_str()),
        (400, "invalid_grant"),
        "{other:?}"
    );
    audited_denial(broker, "jwt-bearer", "not the authenticated client");
    let missing = setup
        .post(
            None,
            &[("grant_type", JWT_BEARER), ("resource", CRM), ("task_id", "jb-1")],
            None,
        )
        .await;
    assert_eq!((missing.status, missing.error().as_str()), (400, "invalid_request"));

    // Bad requests of an attested agent: token_denied records.
    let payments = "https://api.example.com/payments";
    let unknown_type = json!([{"type": "payment_initiation", "task_id": "jb-1"}]).to_string();
    let other_task = json!([{"type": "tessera_task", "task_id": "jb-2"}]).to_string();
    let wrong_location = json!([{"type": "tessera_task", "task_id": "jb-1", "locations": [payments]}]).to_string();
    type Case<'a> = (Vec<(&'a str, &'a str)>, &'a str, &'a str);
    let cases: Vec<Case<'_>> = vec![
        // A resource the task's ceiling does not name (told only to the task's agent).
        (
            vec![("resource", payments), ("scope", "payments.transfers.create")],
            "invalid_target",
            "",
        ),
        // A scope of another API: the catalog refuses it before any task is read.
        (vec![("resource", payments)], "invalid_scope", "unknown scope"),
        (vec![("audience", payments)], "invalid_target", "different APIs"),
        (vec![("scope", "crm.contacts.write")], "invalid_scope", "ceiling"),
        (
            vec![("authorization_details", &unknown_type)],
            "invalid_authorization_details",
            "unknown authorization details type",
        ),
        (
            vec![("authorization_details", "{not json")],
            "invalid_authorization_details",
            "not a JSON array",
        ),
        (
            vec![("authorization_details", &other_task)],
            "invalid_authorization_details",
            "different tasks",
        ),
        (
            vec![("authorization_details", &wrong_location)],
            "invalid_authorization_details",
            "`locations`",
        ),
    ];
    for (overrides, code, reason) in cases {
        let assertion = setup.assertion("ci");
        let mut form: Vec<(&str, &str)> = vec![("grant_type", JWT_BEARER), ("assertion", &assertion)];
        for (name, default) in [("resource", CRM), ("scope", READ), ("task_id", "jb-1")] {
            let value = overrides.iter().find(|(k, _)| *k == name).map_or(default, |(_, v)| *v);
            form.push((name, value));
        }
        form.extend(
            overrides
                .iter()
                .filter(|(k, _)| !["resource", "scope", "task_id"].contains(k)),
        );
        let answer = setup.post(None, &form, None).await;
        assert_eq!(
            (answer.status, answer.error().as_str()),
            (400, code),
            "{overrides:?}: {answer:?}"
        );
        let denied = if reason.is_empty() {
            audited(broker, "token_denied for the payments API", |r| {
                r["event"] == "token_denied" && r["grant_type"] == "jwt-bearer" && r["audience"] == payments
            })
        } else {
            audited_denial(broker, "jwt-bearer", reason)
        };
        assert_eq!(denied["who"]["identity"], CI);
    }

    // The grants are the task's: completing it revokes both.
    let mut verifier = broker.verifier("api-gateway").await;
    assert!(introspect(&mut verifier, &token).await.unwrap());
    assert!(introspect(&mut verifier, &second).await.unwrap());
    broker
        .orchestrator()
        .await
        .complete_task(pb::CompleteTaskRequest {
            task_id: "jb-1".into(),
            reason: String::new(),
        })
        .await
        .unwrap();
    assert!(!introspect(&mut verifier, &token).await.unwrap());
    assert!(!introspect(&mut verifier, &second).await.unwrap());
    // And the task, over, grants nothing more.
    let after = setup.jwt_bearer("jb-1", &[], None).await;
    assert_eq!(
        (after.status, after.error().as_str()),
        (400, "invalid_grant"),
        "{after:?}"
    );

    // On Redis, a used assertion is refused by another replica too.
    if test_store() == "redis" {
        setup.task("jb-3", &["ci"]).await;
        let replica = broker.replica();
        let assertion = setup.assertion("ci");
        let form = [
            ("grant_type", JWT_BEARER),
            ("assertion", assertion.as_str()),
            ("resource", CRM),
            ("scope", READ),
            ("task_id", "jb-3"),
        ];
        setup.post(None, &form, None).await.token();
        let again = post_to(&replica, None, &form, None).await;
        assert_eq!(
            (again.status, again.error().as_str()),
            (400, "invalid_grant"),
            "{again:?}"
        );
    }
}

/// `client_credentials` with `private_key_jwt` (keys registered for the
/// identity) and with mTLS; refusals are `invalid_client` and audited.
#[tokio::test]
async fn client_credentials_authenticates_by_private_key_jwt_or_mtls() {
    let setup = Setup::start("oauth-client-credentials");
    let broker = &setup.broker;
    setup.task("cc-1", &["mcp-client", "researcher"]).await;
    let assertion = setup.client_assertion(&setup.client_key);
    let form = [
        ("grant_type", "client_credentials"),
        ("client_assertion_type", CLIENT_ASSERTION),
        ("client_assertion", assertion.as_str()),
        ("client_id", CLIENT),
        ("resource", CRM),
        ("scope", READ),
        ("task_id", "cc-1"),
    ];
    let body = setup.post(None, &form, None).await.token();
    let c = claims_of(body["access_token"].as_str().unwrap());
    assert_eq!((c["sub"].as_str(), c["task_id"].as_str()), (Some(CLIENT), Some("cc-1")));
    let issued = audited(broker, "token_issued by private_key_jwt", |r| {
        r["event"] == "token_issued" && r["grant_id"] == c["jti"]
    });
    assert_eq!(issued["grant_type"], "client_credentials");
    assert_eq!(issued["client_auth"], "private_key_jwt");
    assert_eq!(issued["who"]["attestation"], "private_key_jwt");

    // The same client assertion again, one signed by a key not registered,
    // one for another audience, a client_id that is not the client, and no
    // client authentication at all: invalid_client (401).
    let replay = setup.post(None, &form, None).await;
    assert_eq!(
        (replay.status, replay.error().as_str()),
        (401, "invalid_client"),
        "{replay:?}"
    );
    attestation::wait_refusal_audited(broker, "private_key_jwt", "already used");
    // Refusals naming one client are audited at most once a second (so a
    // caller cannot flood the trail): each case below waits for a new second.
    tessera_e2e::wait_past_second(tessera_e2e::now_secs() + 1).await;
    let unregistered = Issuer::new("client-key-1");
    let mut other_audience = attestation::claims("unused");
    other_audience["iss"] = Value::from(CLIENT);
    other_audience["sub"] = Value::from(CLIENT);
    other_audience["aud"] = Value::from("https://other.example/token");
    for (assertion, client_id, reason) in [
        (setup.client_assertion(&unregistered), CLIENT, "signature is invalid"),
        (setup.client_key.sign(&other_audience), CLIENT, "`aud`"),
        (setup.client_assertion(&setup.client_key), CI, ""),
    ] {
        let answer = setup
            .post(
                None,
                &[
                    ("grant_type", "client_credentials"),
                    ("client_assertion_type", CLIENT_ASSERTION),
                    ("client_assertion", &assertion),
                    ("client_id", client_id),
                    ("resource", CRM),
                    ("scope", READ),
                    ("task_id", "cc-1"),
                ],
                None,
            )
            .await;
        assert_eq!(
            (answer.status, answer.error().as_str()),
            (401, "invalid_client"),
            "{answer:?}"
        );
        assert!(answer.header("www-authenticate").is_some());
        if !reason.is_empty() {
            let evidence = tessera_core::hex::sha256(assertion.as_bytes());
            attestation::wait_refusal_of(broker, "private_key_jwt", &evidence, reason);
            tessera_e2e::wait_past_second(tessera_e2e::now_secs() + 1).await;
        }
    }
    audited_denial(
        broker,
        "client_credentials",
        "`client_id` is not the authenticated client",
    );
    let anonymous = setup
        .post(
            None,
            &[
                ("grant_type", "client_credentials"),
                ("resource", CRM),
                ("scope", READ),
                ("task_id", "cc-1"),
            ],
            None,
        )
        .await;
    assert_eq!((anonymous.status, anonymous.error().as_str()), (401, "invalid_client"));
    attestation::wait_refusal_audited(broker, "private_key_jwt", "needs client authentication");

    // mTLS: the researcher's X.509-SVID; the token is bound to it.
    let mtls = setup
        .post(
            Some("researcher"),
            &[
                ("grant_type", "client_credentials"),
                ("resource", CRM),
                ("scope", READ),
                ("task_id", "cc-1"),
            ],
            None,
        )
        .await
        .token();
    let c = claims_of(mtls["access_token"].as_str().unwrap());
    assert_eq!(c["sub"], "spiffe://tessera.local/agent/researcher");
    assert!(c["cnf"]["x5t#S256"].is_string(), "{c}");
    let issued = audited(broker, "token_issued by tls_client_auth", |r| {
        r["event"] == "token_issued" && r["grant_id"] == c["jti"]
    });
    assert_eq!(
        (issued["grant_type"].as_str(), issued["client_auth"].as_str()),
        (Some("client_credentials"), Some("tls_client_auth"))
    );
    // A certificate and an assertion at once: one method per request.
    let both = setup
        .post(
            Some("researcher"),
            &[
                ("grant_type", "client_credentials"),
                ("client_assertion_type", CLIENT_ASSERTION),
                ("client_assertion", &setup.client_assertion(&setup.client_key)),
                ("resource", CRM),
                ("scope", READ),
                ("task_id", "cc-1"),
            ],
            None,
        )
        .await;
    assert_eq!((both.status, both.error().as_str()), (400, "invalid_request"));
    // An agent not in the task: invalid_grant, audited.
    setup.task("cc-2", &["researcher"]).await;
    let outsider = setup
        .post(
            None,
            &[
                ("grant_type", "client_credentials"),
                ("client_assertion_type", CLIENT_ASSERTION),
                ("client_assertion", &setup.client_assertion(&setup.client_key)),
                ("resource", CRM),
                ("scope", READ),
                ("task_id", "cc-2"),
            ],
            None,
        )
        .await;
    assert_eq!((outsider.status, outsider.error().as_str()), (400, "invalid_grant"));
    audited_denial(broker, "client_credentials", "not assigned");
}

/// DPoP at the token endpoint: a nonce is required (`use_dpop_nonce` with a
/// `DPoP-Nonce` header), the token is bound to the proof's key, and a proof
/// with the wrong method, URL, an old `iat` or a used `jti` is refused.
#[tokio::test]
async fn dpop_at_the_token_endpoint_needs_a_nonce_and_binds_the_key() {
    let setup = Setup::start("oauth-dpop");
    let broker = &setup.broker;
    setup.task("dp-1", &["ci"]).await;
    let key = PopKey::generate().unwrap();
    let url = setup.endpoint();

    // RFC 9449 section 8: the client sends the very same request again with
    // the nonce, so the challenge spends no `jti` of the assertion's; it is
    // a protocol step, so however many a client meets (a load balancer, many
    // workers) none counts toward the anomaly rule's quarantine (20).
    let assertion = setup.assertion("ci");
    let form = [
        ("grant_type", JWT_BEARER),
        ("assertion", assertion.as_str()),
        ("resource", CRM),
        ("scope", READ),
        ("task_id", "dp-1"),
    ];
    let mut nonce = String::new();
    for _ in 0..25 {
        let first = setup
            .post(None, &form, Some(&key.proof("POST", &url, None).unwrap()))
            .await;
        assert_eq!(
            (first.status, first.error().as_str()),
            (400, "use_dpop_nonce"),
            "{first:?}"
        );
        nonce = first.header("dpop-nonce").expect("a DPoP-Nonce header").to_owned();
    }
    audited_denial(broker, "jwt-bearer", "nonce");

    let proof = key.proof_with_nonce("POST", &url, &nonce, None).unwrap();
    let answer = setup.post(None, &form, Some(&proof)).await;
    let body = answer.token();
    assert_eq!(body["token_type"], "DPoP");
    assert!(answer.header("dpop-nonce").is_some());
    let c = claims_of(body["access_token"].as_str().unwrap());
    assert_eq!(c["cnf"]["jkt"], key.thumbprint());

    // The same proof again (a fresh assertion): its `jti` is burnt.
    let replayed = setup.jwt_bearer("dp-1", &[], Some(&proof)).await;
    assert_eq!(
        (replayed.status, replayed.error().as_str()),
        (400, "invalid_dpop_proof"),
        "{replayed:?}"
    );
    let stale = key.proof_at("POST", &url, attestation::now() - 600, None).unwrap();
    for (proof, code) in [
        (
            key.proof_with_nonce("GET", &url, &nonce, None).unwrap(),
            "invalid_dpop_proof",
        ),
        (
            key.proof_with_nonce("POST", "https://127.0.0.1:1/oauth/token", &nonce, None)
                .unwrap(),
            "invalid_dpop_proof",
        ),
        (stale, "invalid_dpop_proof"),
        ("not.a.proof".to_owned(), "invalid_dpop_proof"),
        (
            key.proof_with_nonce("POST", &url, "AAAA", None).unwrap(),
            "use_dpop_nonce",
        ),
    ] {
        let answer = setup.jwt_bearer("dp-1", &[], Some(&proof)).await;
        assert_eq!((answer.status, answer.error().as_str()), (400, code), "{answer:?}");
    }
    audited_denial(broker, "jwt-bearer", "DPoP: proof `htm`");
    audited_denial(broker, "jwt-bearer", "DPoP: proof `htu`");
    audited_denial(broker, "jwt-bearer", "already used");

    // On Redis, a replica with the same nonce key accepts the nonce, and a
    // proof used on one replica is refused by the other.
    if test_store() == "redis" {
        let replica = broker.replica();
        let proof = key.proof_with_nonce("POST", &url, &nonce, None).unwrap();
        let assertion = setup.assertion("ci");
        let form = [
            ("grant_type", JWT_BEARER),
            ("assertion", assertion.as_str()),
            ("resource", CRM),
            ("scope", READ),
            ("task_id", "dp-1"),
        ];
        post_to(&replica, None, &form, Some(&proof)).await.token();
        let again = setup.jwt_bearer("dp-1", &[], Some(&proof)).await;
        assert_eq!(again.error(), "invalid_dpop_proof");
    }
}

/// A JWK Set served over HTTPS by a CA of its own: the certificate of the
/// CA (PEM), the address, and how many requests it answered.
async fn jwks_server(jwks: String) -> (String, String, Arc<std::sync::atomic::AtomicUsize>) {
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
            PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, jwks, counted) = (acceptor.clone(), jwks.clone(), counted.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                if tls.read(&mut buf).await.is_err() {
                    return;
                }
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{jwks}",
                    jwks.len()
                );
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (ca_cert.pem(), addr, hits)
}

/// `private_key_jwt` with the client's keys at its `jwks_uri`
/// (`client_jwks_url`): fetched over HTTPS (verified with the configured
/// CA), cached; a key the set does not hold is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_key_jwt_keys_come_from_the_clients_jwks_uri() {
    const URI_CLIENT: &str = "spiffe://tessera.local/agent/uri-client";
    let key = Issuer::new("uri-key-1");
    let (ca, addr, hits) = jwks_server(key.jwks()).await;
    let dir = dev_init("oauth-jwks-uri");
    std::fs::write(dir.path().join("client-jwks-ca.pem"), ca).unwrap();
    let setup = Setup::start_with(
        dir,
        &format!(
            r#"
[[identities]]
id = "{URI_CLIENT}"
kind = "agent"
owner = "team-research"
roles = ["agent"]
max_ttl = "10m"
client_jwks_url = "https://{addr}/jwks.json"
client_jwks_ca = "client-jwks-ca.pem"
"#
        ),
    );
    setup.task("uri-1", &["uri-client"]).await;
    let assertion = |signer: &Issuer| {
        let mut claims = attestation::claims("unused");
        claims["iss"] = Value::from(URI_CLIENT);
        claims["sub"] = Value::from(URI_CLIENT);
        claims["aud"] = Value::from(setup.endpoint());
        signer.sign(&claims)
    };
    let setup = &setup;
    let request = |assertion: String| async move {
        setup
            .post(
                None,
                &[
                    ("grant_type", "client_credentials"),
                    ("client_assertion_type", CLIENT_ASSERTION),
                    ("client_assertion", &assertion),
                    ("resource", CRM),
                    ("scope", READ),
                    ("task_id", "uri-1"),
                ],
                None,
            )
            .await
    };
    let body = request(assertion(&key)).await.token();
    assert_eq!(claims_of(body["access_token"].as_str().unwrap())["sub"], URI_CLIENT);
    request(assertion(&key)).await.token();
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1, "the keys are cached");
    let stranger = Issuer::new("not-served");
    let refused = request(assertion(&stranger)).await;
    assert_eq!(
        (refused.status, refused.error().as_str()),
        (401, "invalid_client"),
        "{refused:?}"
    );
    attestation::wait_refusal_audited(&setup.broker, "private_key_jwt", "key id is not among");
}

/// A high-impact request over OAuth waits for a person: the answer is
/// `authorization_pending` naming the approval; the client polls the token
/// endpoint with `approval_id` (RFC 8628 section 3.5 answers) and receives
/// the one token once an operator approved, bound as the request was.
/// Nobody else can collect it, it is delivered once, and a denied
/// approval answers `access_denied`; each refusal is audited.
#[tokio::test]
async fn an_approval_is_polled_for_at_the_token_endpoint() {
    const PAYMENTS: &str = "https://api.example.com/payments";
    const TRANSFER: &str = "payments.transfers.create";
    let setup = Setup::start("oauth-approval");
    let broker = &setup.broker;
    let mut task = start_request("ap-1", &["researcher", "writer"], &[], 600);
    task.scope_ceiling = [(
        PAYMENTS.to_owned(),
        pb::ScopeSet {
            scopes: vec![TRANSFER.into()],
        },
    )]
    .into_iter()
    .collect();
    broker.start_task(task).await;
    let ask = |agent: &'static str, approval: Option<String>| {
        let setup = &setup;
        async move {
            let mut form = vec![
                ("grant_type", "client_credentials".to_owned()),
                ("resource", PAYMENTS.to_owned()),
                ("scope", TRANSFER.to_owned()),
                ("task_id", "ap-1".to_owned()),
            ];
            if let Some(id) = approval {
                form.push(("approval_id", id));
            }
            let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
            setup.post(Some(agent), &form, None).await
        }
    };

    let first = ask("researcher", None).await;
    assert_eq!((first.status, first.error().as_str()), (400, "authorization_pending"));
    let id = first.json()["approval_id"]
        .as_str()
        .expect("the approval's id")
        .to_owned();
    let waiting = ask("researcher", Some(id.clone())).await;
    assert_eq!(waiting.error(), "authorization_pending", "{waiting:?}");
    assert_eq!(waiting.json()["approval_id"], id.as_str());

    let out = broker.tessera(&["--as", "alice", "approvals", "approve", &id, "--reason", "invoice 42"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Another agent of the task cannot collect it (audited, counted).
    let thief = ask("writer", Some(id.clone())).await;
    assert_eq!(
        (thief.status, thief.error().as_str()),
        (400, "invalid_grant"),
        "{thief:?}"
    );
    audited_denial(broker, "client_credentials", "did not make this request");

    let token = ask("researcher", Some(id.clone())).await.token();
    let c = claims_of(token["access_token"].as_str().unwrap());
    assert_eq!(c["sub"], "spiffe://tessera.local/agent/researcher");
    assert_eq!(c["scope"], TRANSFER);
    assert!(
        c["cnf"]["x5t#S256"].is_string(),
        "bound to the certificate, as asked: {c}"
    );
    audited(broker, "token_issued from the approval", |r| {
        r["event"] == "token_issued" && r["grant_id"] == c["jti"] && r["approval_id"] == id.as_str()
    });

    // Delivered once.
    let again = ask("researcher", Some(id.clone())).await;
    assert_eq!(
        (again.status, again.error().as_str()),
        (400, "invalid_grant"),
        "{again:?}"
    );
    audited_denial(broker, "client_credentials", "already redeemed");
    // Not an approval id at all.
    let bad = ask("researcher", Some("../x".to_owned())).await;
    assert_eq!((bad.status, bad.error().as_str()), (400, "invalid_request"), "{bad:?}");

    // A denied request answers `access_denied`.
    let second = ask("researcher", None).await;
    let denied_id = second.json()["approval_id"].as_str().unwrap().to_owned();
    let out = broker.tessera(&["--as", "alice", "approvals", "deny", &denied_id, "--reason", "no"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let denied = ask("researcher", Some(denied_id)).await;
    assert_eq!(
        (denied.status, denied.error().as_str()),
        (400, "access_denied"),
        "{denied:?}"
    );
    audited_denial(broker, "client_credentials", "was denied by");
}

/// Tool-level limits (RFC 9396 `mcp_tool` details) in the task's ceiling,
/// asked over HTTP and gRPC and across a delegation hop: the token carries
/// the task's limit or a narrower one, never a wider one; a wider, unknown or
/// malformed detail is refused with its code and audited, and no token leaves.
#[tokio::test]
async fn tool_level_limits_are_carried_and_never_widened() {
    let setup = Setup::start("oauth-tool-limits");
    let broker = &setup.broker;
    let ceiling = json!({
        "type": "mcp_tool", "server": CRM, "tools": ["lookup", "transfer"],
        "constraints": {"transfer": {"amount": {"max": 500}, "repo": {"eq": "acme/site"}}}
    });
    let mut orch = broker.orchestrator().await;
    // A limit for a server outside the ceiling, or malformed: no task.
    for bad in [
        json!([{"type": "mcp_tool", "server": "https://other.example", "tools": ["a"]}]).to_string(),
        json!([{"type": "mcp_tool", "server": CRM, "tools": []}]).to_string(),
        "{".to_owned(),
    ] {
        let mut req = start_request("tl-bad", &["researcher"], &[READ], 600);
        req.authorization_details = bad;
        let status = tessera_e2e::code(orch.start_task(req).await);
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("authorization_details"), "{status:?}");
    }
    let mut req = start_request("tl-1", &["researcher", "writer"], &[READ], 600);
    req.authorization_details = json!([ceiling]).to_string();
    let task = broker.start_task(req).await;
    assert_eq!(
        serde_json::from_str::<Value>(&task.authorization_details).unwrap(),
        json!([ceiling])
    );

    let http = async |details: Option<Value>| {
        let details = details.map(|d| json!([{"type": "tessera_task", "task_id": "tl-1"}, d]).to_string());
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("resource", CRM),
            ("scope", READ),
            ("task_id", "tl-1"),
        ];
        if let Some(d) = &details {
            form.push(("authorization_details", d.as_str()));
        }
        setup.post(Some("researcher"), &form, None).await
    };
    // Nothing asked: the task's limit, in the JWT and the answer.
    let body = http(None).await.token();
    let c = claims_of(body["access_token"].as_str().unwrap());
    assert_eq!(c["authorization_details"], json!([ceiling]), "{c}");
    assert_eq!(body["authorization_details"][1], ceiling, "{body}");
    // Narrower: carried as asked.
    let narrow = json!({"type": "mcp_tool", "server": CRM, "tools": ["transfer"],
        "constraints": {"transfer": {"amount": {"max": 100}, "repo": {"eq": "acme/site"}}}});
    let body = http(Some(narrow.clone())).await.token();
    assert_eq!(
        claims_of(body["access_token"].as_str().unwrap())["authorization_details"],
        json!([narrow])
    );
    // Wider (a tool, a dropped constraint, a looser one), unknown, malformed,
    // for another server: invalid_authorization_details, audited.
    for (detail, reason) in [
        (
            json!({"type": "mcp_tool", "server": CRM, "tools": ["lookup", "transfer", "delete"]}),
            "tool `delete` is not allowed",
        ),
        (
            json!({"type": "mcp_tool", "server": CRM, "tools": ["transfer"]}),
            "argument `amount` of tool `transfer` is less constrained",
        ),
        (
            json!({"type": "mcp_tool", "server": CRM, "tools": ["transfer"],
                "constraints": {"transfer": {"amount": {"max": 100}, "repo": {"one_of": ["acme/site", "acme/other"]}}}}),
            "argument `repo` of tool `transfer` is less constrained",
        ),
        (
            json!({"type": "payment_initiation", "instructedAmount": 1}),
            "unknown authorization details type",
        ),
        (
            json!({"type": "mcp_tool", "server": CRM, "tools": ["transfer"], "constraints": {"transfer": {"amount": {"regex": "."}}}}),
            "unknown operator",
        ),
        (
            json!({"type": "mcp_tool", "server": "https://other.example", "tools": ["transfer"]}),
            "must be the `resource`",
        ),
    ] {
        let answer = http(Some(detail.clone())).await;
        assert_eq!(
            (answer.status, answer.error().as_str()),
            (400, "invalid_authorization_details"),
            "{detail}: {answer:?}"
        );
        audited_denial(broker, "client_credentials", reason);
    }

    // gRPC: the same rules (wider: PERMISSION_DENIED; malformed: INVALID_ARGUMENT).
    let mut agent = broker.agent("researcher").await;
    let grpc = |details: Value| pb::RequestTokenRequest {
        authorization_details: details.to_string(),
        ..tessera_e2e::token_request("tl-1", &[READ], None)
    };
    let wide = json!([{"type": "mcp_tool", "server": CRM, "tools": ["transfer", "delete"]}]);
    let status = tessera_e2e::code(agent.request_token(grpc(wide)).await);
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("wider than the task's ceiling"), "{status:?}");
    let bad = json!([{"type": "mcp_tool", "server": CRM, "tools": ["transfer"], "constraints": {"transfer": {}}}]);
    let status = tessera_e2e::code(agent.request_token(grpc(bad)).await);
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let parent = tessera_e2e::issue(&mut agent, grpc(json!([narrow]))).await;
    assert_eq!(
        claims_of(&parent.access_token)["authorization_details"],
        json!([narrow])
    );

    // Delegation: the child inherits the parent's limit, and may narrow it, never widen it.
    let delegate = |details: &str| pb::DelegateTokenRequest {
        parent_token: parent.access_token.clone(),
        delegate: "spiffe://tessera.local/agent/writer".to_owned(),
        authorization_details: details.to_owned(),
        ..Default::default()
    };
    let child = agent.delegate_token(delegate("")).await.unwrap().into_inner();
    assert_eq!(claims_of(&child.access_token)["authorization_details"], json!([narrow]));
    let status = tessera_e2e::code(agent.delegate_token(delegate(&json!([ceiling]).to_string())).await);
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("wider than the parent token"), "{status:?}");
    let narrower = json!({"type": "mcp_tool", "server": CRM, "tools": ["transfer"],
        "constraints": {"transfer": {"amount": {"max": 10}, "repo": {"eq": "acme/site"}}}});
    let child = agent
        .delegate_token(delegate(&json!([narrower]).to_string()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        claims_of(&child.access_token)["authorization_details"],
        json!([narrower])
    );

    // The typed SDK asks for a limit, and an offer carries a narrower one to
    // the delegate's redemption.
    let grant = |v: &Value| tessera_core::authz::ToolGrant::parse(v).unwrap();
    let mut typed = tessera_client::agent::AgentClient::new(broker.channel("researcher").await);
    let root = typed
        .request(tessera_client::agent::TokenRequest::new("tl-1", CRM, [READ]).tool_limit(grant(&narrow)))
        .await
        .unwrap()
        .token()
        .unwrap();
    assert_eq!(claims_of(root.access_token())["authorization_details"], json!([narrow]));
    let offer = typed
        .offer(
            &root,
            tessera_client::agent::Delegation::to("spiffe://tessera.local/agent/writer").tool_limit(grant(&narrower)),
        )
        .await
        .unwrap();
    let mut writer = tessera_client::agent::AgentClient::new(broker.channel("writer").await);
    let redeemed = writer.redeem(&offer, Some(&PopKey::generate().unwrap())).await.unwrap();
    assert_eq!(
        claims_of(redeemed.access_token())["authorization_details"],
        json!([narrower])
    );
    let wider_offer = typed
        .offer(
            &root,
            tessera_client::agent::Delegation::to("spiffe://tessera.local/agent/writer").tool_limit(grant(&ceiling)),
        )
        .await;
    assert!(wider_offer.is_err(), "no offer wider than its parent");

    // The CLI passes limits through: a task started with one, a token within
    // it, and a wider one refused.
    let limit = json!([narrow]).to_string();
    let out = broker.tessera(&[
        "--as",
        "orchestrator",
        "task",
        "start",
        "--id",
        "tl-cli",
        "--agent",
        "spiffe://tessera.local/agent/researcher",
        "--allow",
        &format!("{CRM} {READ}"),
        "--ttl",
        "10m",
        "--authorization-details",
        &limit,
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = broker.tessera(&[
        "--as",
        "researcher",
        "--output",
        "json",
        "token",
        "request",
        "--task",
        "tl-cli",
        "--audience",
        CRM,
        "--scope",
        READ,
        "--authorization-details",
        &json!([narrower]).to_string(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let issued: Value = serde_json::from_slice(&out.stdout).unwrap();
    let token = issued["access_token"].as_str().unwrap();
    assert_eq!(claims_of(token)["authorization_details"], json!([narrower]));
    let out = broker.tessera(&[
        "--as",
        "researcher",
        "token",
        "request",
        "--task",
        "tl-cli",
        "--audience",
        CRM,
        "--scope",
        READ,
        "--authorization-details",
        &json!([ceiling]).to_string(),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("wider than the task's ceiling"),
        "{out:?}"
    );
}
