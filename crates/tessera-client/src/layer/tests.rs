//! The layer over an echo service, with an offline verifier at a fixed
//! clock: metadata, every refusal and its headers, tool scopes and the hook.
//! The end-to-end test (tests/e2e/mcp_layer.rs) runs it against tesserad.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, reason = "test")]

use std::sync::Mutex;

use chrono::DateTime;
use serde_json::json;
use tessera_core::clock::FixedClock;
use tessera_core::pop::{ProofClaims, ProofKey, sign_proof_claims};
use tessera_core::token::{Algorithm, SigningKey};
use tower_layer::Layer as _;
use tower_service::Service as _;

use super::*;
use crate::pb;
use crate::verifier::VerifierConfig;

const ISS: &str = "https://tessera.test";
const AUD: &str = "https://mcp.test/mcp";
const BASE: &str = "https://mcp.test";
const T0: i64 = 1_800_000_000;

/// What the inner service saw.
#[derive(Clone, Default)]
struct Echo {
    seen: Arc<Mutex<Vec<(String, Bytes)>>>,
}

impl tower_service::Service<Request<Full<Bytes>>> for Echo {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Full<Bytes>>) -> Self::Future {
        let seen = self.seen.clone();
        Box::pin(async move {
            let holder = request.extensions().get::<Verified>().unwrap().holder().to_owned();
            let body = request.into_body().collect().await.unwrap().to_bytes();
            seen.lock().unwrap().push((holder, body));
            Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
        })
    }
}

struct Fixture {
    key: SigningKey,
    layer: ResourceLayer,
    echo: Echo,
}

fn fixture(adjust: impl FnOnce(&mut VerifierConfig), build: impl FnOnce(ResourceLayer) -> ResourceLayer) -> Fixture {
    let key = SigningKey::generate(Algorithm::Es256).unwrap();
    let clock = Arc::new(FixedClock::at(DateTime::from_timestamp(T0, 0).unwrap()));
    let mut config = VerifierConfig::new(ISS, AUD);
    adjust(&mut config);
    let verifier = Verifier::offline(config, clock).unwrap();
    verifier.load_jwks(&[key.public_jwk().clone()]);
    verifier.ingest(
        &pb::WatchRevocationsResponse {
            item: Some(pb::watch_revocations_response::Item::Heartbeat(pb::Heartbeat {
                position: "e:1".into(),
                sent_at: Some(prost_types::Timestamp {
                    seconds: T0 - 10,
                    nanos: 0,
                }),
            })),
        },
        true,
    );
    let layer = build(
        ResourceLayer::new(verifier, format!("{BASE}/"), ISS)
            .tool_scope("crm.read", "crm.read")
            .tool_scope("payments.refund", "payments.refund"),
    );
    Fixture {
        key,
        layer,
        echo: Echo::default(),
    }
}

fn plain() -> Fixture {
    fixture(|_| {}, |l| l)
}

impl Fixture {
    fn token(&self, scope: &str, jkt: Option<&str>) -> String {
        let mut claims = json!({
            "iss": ISS, "sub": "spiffe://tessera.test/agent/a", "aud": AUD,
            "exp": T0 + 300, "nbf": T0, "iat": T0, "jti": "grant-1", "scope": scope,
            "client_id": "spiffe://tessera.test/agent/a", "task_id": "task-1",
        });
        if let Some(jkt) = jkt {
            claims["cnf"] = json!({ "jkt": jkt });
        }
        self.key.sign_jws("at+jwt", &claims).unwrap()
    }

    async fn send(&self, request: Request<Full<Bytes>>) -> (StatusCode, http::HeaderMap, Value) {
        let mut service = self.layer.layer(self.echo.clone());
        let response = service.call(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (parts.status, parts.headers, value)
    }
}

fn post(authorization: Option<&str>, proof: Option<&str>, body: &str) -> Request<Full<Bytes>> {
    let mut builder = Request::post(format!("{BASE}/mcp")).header(CONTENT_TYPE, "application/json");
    if let Some(a) = authorization {
        builder = builder.header(AUTHORIZATION, a);
    }
    if let Some(p) = proof {
        builder = builder.header("dpop", p);
    }
    builder.body(Full::new(Bytes::from(body.to_owned()))).unwrap()
}

fn call(tool: &str, arguments: Value) -> String {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": arguments}})
        .to_string()
}

fn challenge(headers: &http::HeaderMap) -> &str {
    headers.get(WWW_AUTHENTICATE).unwrap().to_str().unwrap()
}

const METADATA_URL: &str = "https://mcp.test/.well-known/oauth-protected-resource";

#[tokio::test]
async fn metadata_is_served_without_a_token_and_lists_every_scope() {
    let f = fixture(|c| c.require_bound = true, |l| l.scopes_supported(["extra"]));
    let (status, headers, body) = f
        .send(
            Request::get(format!("{BASE}{METADATA_PATH}"))
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[CONTENT_TYPE], "application/json");
    assert_eq!(body["resource"], AUD);
    assert_eq!(body["authorization_servers"], json!([ISS]));
    assert_eq!(body["bearer_methods_supported"], json!(["header"]));
    assert_eq!(
        body["scopes_supported"],
        json!(["crm.read", "extra", "payments.refund"])
    );
    assert_eq!(body["dpop_signing_alg_values_supported"], json!(["ES256", "EdDSA"]));
    assert_eq!(body["dpop_bound_access_tokens_required"], true);
    assert_eq!(f.layer.metadata_url(), METADATA_URL);
    // Below the well-known path too (RFC 9728 section 3.1), and only for GET.
    let (status, _, _) = f
        .send(
            Request::get(format!("{BASE}{METADATA_PATH}/mcp"))
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, headers, _) = f
        .send(
            Request::post(format!("{BASE}{METADATA_PATH}"))
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers[http::header::ALLOW], "GET, HEAD");
    // A look-alike path is not the metadata: it needs a token.
    let (status, _, _) = f
        .send(
            Request::get(format!("{BASE}{METADATA_PATH}x"))
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Without require_bound the member is absent.
    assert!(
        plain()
            .layer
            .metadata()
            .get("dpop_bound_access_tokens_required")
            .is_none()
    );
}

#[tokio::test]
async fn no_token_or_a_bad_header_is_401_naming_the_metadata() {
    let f = plain();
    for authorization in [None, Some("Basic abc"), Some("Bearer"), Some("Bearer a b")] {
        let (status, headers, body) = f.send(post(authorization, None, "{}")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{authorization:?}");
        let challenge = challenge(&headers);
        assert!(challenge.starts_with("Bearer "), "{challenge}");
        assert!(challenge.contains(r#"error="invalid_token""#), "{challenge}");
        // In both challenges (RFC 9728 section 5.1).
        assert_eq!(
            challenge
                .matches(&format!(r#"resource_metadata="{METADATA_URL}""#))
                .count(),
            2,
            "{challenge}"
        );
        assert_eq!(body["error"], "invalid_token");
    }
    // Two Authorization headers are refused, not one picked.
    let token = f.token("crm.read", None);
    let mut request = post(Some(&format!("Bearer {token}")), None, &call("crm.read", json!({})));
    request.headers_mut().append(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    assert_eq!(f.send(request).await.0, StatusCode::UNAUTHORIZED);
    assert!(f.echo.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_granted_tool_call_reaches_the_service_with_the_grant_and_the_body() {
    let f = plain();
    let token = f.token("crm.read", None);
    let body = call("crm.read", json!({"id": 7}));
    let (status, _, _) = f.send(post(Some(&format!("Bearer {token}")), None, &body)).await;
    assert_eq!(status, StatusCode::OK);
    // Other MCP messages need only a valid token.
    let list = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
    assert_eq!(
        f.send(post(Some(&format!("bearer {token}")), None, list)).await.0,
        StatusCode::OK
    );
    let seen = f.echo.seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].0, "spiffe://tessera.test/agent/a");
    assert_eq!(seen[0].1, body.as_bytes());
}

#[tokio::test]
async fn a_tool_outside_the_scope_is_403_with_the_scope_to_step_up_to() {
    let f = plain();
    let token = f.token("crm.read", None);
    let auth = format!("Bearer {token}");
    let (status, headers, body) = f
        .send(post(Some(&auth), None, &call("payments.refund", json!({"amount": 5}))))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let challenge = challenge(&headers);
    assert!(challenge.contains(r#"error="insufficient_scope""#), "{challenge}");
    assert!(challenge.contains(r#"scope="payments.refund""#), "{challenge}");
    assert!(challenge.contains(METADATA_URL), "{challenge}");
    assert_eq!(body["error"], "insufficient_scope");
    // An unmapped tool needs `tool:<name>`; in a batch, every call counts.
    let batch = format!("[{}, {}]", call("crm.read", json!({})), call("shell.exec", json!({})));
    let (status, headers, _) = f.send(post(Some(&auth), None, &batch)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(challenge_of(&headers).contains(r#"scope="tool:shell.exec""#));
    // ...unless a default scope is configured.
    let g = fixture(|_| {}, |l| l.default_tool_scope("crm.read"));
    let token = g.token("crm.read", None);
    let (status, _, _) = g
        .send(post(
            Some(&format!("Bearer {token}")),
            None,
            &call("shell.exec", json!({})),
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(f.echo.seen.lock().unwrap().is_empty());
}

fn challenge_of(headers: &http::HeaderMap) -> String {
    challenge(headers).to_owned()
}

#[tokio::test]
async fn bodies_the_layer_cannot_read_are_refused() {
    let f = fixture(|_| {}, |l| l.max_body(256));
    let token = f.token("crm.read payments.refund", None);
    let auth = format!("Bearer {token}");
    let duplicate =
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"crm.read","name":"payments.refund"}}"#;
    for (body, status) in [
        ("not json", StatusCode::BAD_REQUEST),
        (duplicate, StatusCode::BAD_REQUEST),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":7}}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"crm.read","arguments":[1]}}"#,
            StatusCode::BAD_REQUEST,
        ),
        (&"x".repeat(257), StatusCode::PAYLOAD_TOO_LARGE),
    ] {
        assert_eq!(f.send(post(Some(&auth), None, body)).await.0, status, "{body}");
    }
    assert!(f.echo.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn route_scopes_and_the_tool_hook_refuse_with_their_error() {
    let f = fixture(
        |_| {},
        |l| {
            l.route_scope(Some(Method::POST), "/admin", "admin")
                .tool_check(|call, _verified| {
                    let amount = call.arguments.and_then(|a| a.get("amount")).and_then(Value::as_u64);
                    if call.name == "payments.refund" && amount.is_none_or(|a| a > 500) {
                        return Err(VerifyError::InsufficientScope("payments.refund:amount<=500".into()));
                    }
                    Ok(())
                })
        },
    );
    let token = f.token("crm.read payments.refund", None);
    let auth = format!("Bearer {token}");
    let send = |tool: &str, args: Value| f.send(post(Some(&auth), None, &call(tool, args)));
    assert_eq!(send("payments.refund", json!({"amount": 40})).await.0, StatusCode::OK);
    let (status, headers, _) = send("payments.refund", json!({"amount": 4000})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(challenge(&headers).contains(r#"scope="payments.refund:amount<=500""#));
    let mut admin = post(Some(&auth), None, "{}");
    *admin.uri_mut() = format!("{BASE}/admin").parse().unwrap();
    let (status, headers, _) = f.send(admin).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(challenge(&headers).contains(r#"scope="admin""#));
}

#[tokio::test]
async fn a_dpop_bound_token_needs_a_proof_for_this_url_and_body() {
    let f = fixture(|c| c.require_content_digest = true, |l| l);
    let key = ProofKey::generate().unwrap();
    let token = f.token("crm.read", Some(key.thumbprint()));
    let auth = format!("DPoP {token}");
    let body = call("crm.read", json!({}));
    let url = format!("{BASE}/mcp");
    let proof_for = |htu: &str, signed_body: Option<&[u8]>| {
        // Signed at the fixed clock's time, with a jti of its own.
        sign_proof_claims(
            &SigningKey::from_pkcs8_pem(Algorithm::Es256, &key.to_pkcs8_pem()).unwrap(),
            &ProofClaims {
                htm: "POST",
                htu,
                jti: &format!("j-{htu}-{}", signed_body.map_or(0, <[u8]>::len)),
                iat: DateTime::from_timestamp(T0, 0).unwrap(),
                access_token: Some(&token),
                nonce: None,
                body: signed_body,
            },
        )
        .unwrap()
    };
    // No proof: the token is refused (a DPoP challenge), the service never called.
    let (status, headers, _) = f.send(post(Some(&auth), None, &body)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(challenge(&headers).starts_with("DPoP "));
    // A proof for another URL, or for another body, or with no digest.
    for proof in [
        proof_for("https://evil.test/mcp", Some(body.as_bytes())),
        proof_for(&url, Some(b"{}")),
        proof_for(&url, None),
    ] {
        let (status, headers, body_json) = f.send(post(Some(&auth), Some(&proof), &body)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(challenge(&headers).contains(r#"error="invalid_dpop_proof""#));
        assert_eq!(body_json["error"], "invalid_dpop_proof");
    }
    assert!(f.echo.seen.lock().unwrap().is_empty());
    // The right proof passes once; its replay is refused.
    let good = proof_for(&url, Some(body.as_bytes()));
    assert_eq!(f.send(post(Some(&auth), Some(&good), &body)).await.0, StatusCode::OK);
    let (status, headers, _) = f.send(post(Some(&auth), Some(&good), &body)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(challenge(&headers).contains(r#"error="invalid_dpop_proof""#));
}
