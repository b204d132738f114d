//! A small CRM API protected by Tessera's SDK `Verifier`.
//!
//! ```text
//! make run                                   # terminal 1: the broker
//! cargo run -p tessera-examples --bin resource-server   # terminal 2
//! cargo run -p tessera-examples --bin agent             # terminal 3
//! ```
//!
//! It follows the broker as the dev identity `api-gateway` (role
//! `verifier`): JWKS, and the revocation feed (it refuses every token, 503,
//! while the feed is stale). Routes (audience `https://api.example.com/crm`):
//! `GET /crm/contacts` needs `crm.contacts.read`, `POST /crm/contacts` needs
//! `crm.contacts.write`. Refusals are 401 / 403 with `WWW-Authenticate`
//! (RFC 6750, RFC 9449), or 503 with `Retry-After`. It accepts bearer
//! tokens, DPoP-bound tokens (`Authorization: DPoP` + a `DPoP` proof for
//! this method and URL) and, behind a TLS terminator that passes the client
//! certificate, certificate-bound ones.
//!
//! Environment: `TESSERA_DEV_DIR` (`.tessera-dev`), `TESSERA_ENDPOINT`
//! (`https://127.0.0.1:7443`), `EXAMPLE_LISTEN` (`127.0.0.1:8081`).

use std::convert::Infallible;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::TokioIo;
use tessera_client::verifier::{Presented, VerifierConfig, VerifyError};
use tessera_client::{Identity, Verifier};
use tower_service::Service as _;

const AUDIENCE: &str = "https://api.example.com/crm";
const ISSUER: &str = "https://tessera.local";

#[derive(Clone)]
struct App {
    verifier: Verifier,
    /// How clients address this server, for the DPoP `htu`.
    base_url: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dev = std::env::var("TESSERA_DEV_DIR").unwrap_or_else(|_| ".tessera-dev".into());
    let endpoint = std::env::var("TESSERA_ENDPOINT").unwrap_or_else(|_| "https://127.0.0.1:7443".into());
    let listen = std::env::var("EXAMPLE_LISTEN").unwrap_or_else(|_| "127.0.0.1:8081".into());
    let identity = Identity::from_files(
        format!("{dev}/ca.pem"),
        format!("{dev}/identities/api-gateway.pem"),
        format!("{dev}/identities/api-gateway.key.pem"),
    )
    .context("the dev identity `api-gateway` (run `make run` first)")?;
    let channel = tessera_client::connect_lazy(&endpoint, &identity)?;
    let verifier = Verifier::connect(channel, VerifierConfig::new(ISSUER, AUDIENCE))?;
    if !verifier.ready(Duration::from_secs(10)).await {
        eprintln!("resource-server: the broker's feed is not synchronised yet; refusing tokens until it is");
    }
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot bind {listen}"))?;
    let app = App {
        verifier,
        base_url: format!("http://{}", listener.local_addr()?),
    };
    println!("resource-server: listening on {} (audience {AUDIENCE})", app.base_url);
    let router = Router::new()
        .route("/crm/contacts", get(list_contacts).post(create_contact))
        .with_state(app);
    loop {
        let (stream, _) = listener.accept().await?;
        let router = router.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let mut router = router.clone();
                async move {
                    let response = router.call(req.map(Body::new)).await;
                    Ok::<_, Infallible>(response.unwrap_or_else(|never| match never {}))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Verifies the request's token for `scope`; the refusal is a ready answer.
async fn authorize(
    app: &App,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    scope: &str,
) -> Result<String, Response> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| refuse(&VerifyError::Missing))?;
    let (scheme, token) = Presented::parse_authorization(authorization).map_err(|e| refuse(&e))?;
    // RFC 9449: exactly one DPoP header, or none.
    let mut proofs = headers.get_all("dpop").iter();
    let proof = match (proofs.next(), proofs.next()) {
        (Some(p), None) => p.to_str().ok(),
        _ => None,
    };
    let url = format!("{}{}", app.base_url, uri.path());
    let presented = Presented {
        token,
        scheme,
        dpop_proof: proof,
        method: method.as_str(),
        url: &url,
        client_cert_der: None,
    };
    let verified = app.verifier.verify(&presented).await.map_err(|e| refuse(&e))?;
    verified.require_scope(scope).map_err(|e| refuse(&e))?;
    Ok(verified.holder().to_owned())
}

fn refuse(e: &VerifyError) -> Response {
    let status = StatusCode::from_u16(e.kind().http_status()).unwrap_or(StatusCode::UNAUTHORIZED);
    let mut response = (status, axum::Json(serde_json::json!({"error": e.to_string()}))).into_response();
    if let Some(challenge) = e.www_authenticate("crm").and_then(|c| HeaderValue::from_str(&c).ok()) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    println!("resource-server: {status} {e}");
    response
}

async fn list_contacts(State(app): State<App>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    match authorize(&app, &method, &uri, &headers, "crm.contacts.read").await {
        Ok(holder) => {
            println!("resource-server: 200 GET /crm/contacts for {holder}");
            axum::Json(serde_json::json!({"contacts": [{"name": "Ada Lovelace"}, {"name": "Alan Turing"}]}))
                .into_response()
        }
        Err(refusal) => refusal,
    }
}

async fn create_contact(State(app): State<App>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    match authorize(&app, &method, &uri, &headers, "crm.contacts.write").await {
        Ok(holder) => {
            println!("resource-server: 201 POST /crm/contacts for {holder}");
            (StatusCode::CREATED, axum::Json(serde_json::json!({"created": true}))).into_response()
        }
        Err(refusal) => refusal,
    }
}
