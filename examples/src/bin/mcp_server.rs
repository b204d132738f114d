//! An MCP server (the `rmcp` SDK's streamable HTTP transport) protected by
//! Tessera's SDK `ResourceLayer`.
//!
//! ```text
//! make run                # terminal 1: the broker
//! make example-mcp-server # terminal 2 (MCP_LISTEN, default 127.0.0.1:8090)
//! ```
//!
//! It follows the broker as the dev identity `api-gateway` (role
//! `verifier`) and serves MCP at `/mcp`, statelessly (each request stands
//! alone, as each carries its token). The layer verifies every request —
//! bearer tokens and DPoP-bound tokens, whose proof names this server's
//! public URL — and answers refusals itself with `WWW-Authenticate` naming
//! the RFC 9728 metadata it serves at `/.well-known/oauth-protected-resource`
//! (the broker is the authorization server). Tools and the scope each needs:
//! `crm.read` (`crm.read`) and `payments.refund` with an `amount`
//! (`payments.refund`); a tool call outside the token's scope is answered
//! 403 `insufficient_scope` with the scope to ask for.
//!
//! Environment: `TESSERA_DEV_DIR` (`.tessera-dev`), `TESSERA_ENDPOINT`
//! (`https://127.0.0.1:7443`), `TESSERA_ISSUER` (`https://tessera.local`,
//! the broker's `tokens.issuer`), `TESSERA_AUTHORIZATION_SERVER` (the
//! issuer), `MCP_LISTEN` (`127.0.0.1:8090`), `MCP_PUBLIC_URL` (how clients
//! address it: `http://<listen address>`), `MCP_AUDIENCE` (the API's
//! audience in the broker's catalog: `<public URL>/mcp`),
//! `MCP_REQUIRE_CONTENT_DIGEST=1` (DPoP proofs must bind the body).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hyper_util::rt::TokioIo;
use rmcp::handler::server::tool::Extension;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{schemars, tool, tool_router};
use tessera_client::layer::ResourceLayer;
use tessera_client::verifier::VerifierConfig;
use tessera_client::{Identity, Verified, Verifier};
use tower_layer::Layer as _;
use tower_service::Service as _;

/// The tools. Stateless: a new one per request.
#[derive(Clone, Default)]
struct Tools;

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Refund {
    /// The amount to refund, in cents.
    amount: u64,
}

/// The token's holder, as the layer verified it.
fn holder(parts: &http::request::Parts) -> String {
    parts
        .extensions
        .get::<Verified>()
        .map(|v| v.holder().to_owned())
        .unwrap_or_default()
}

#[tool_router(server_handler)]
impl Tools {
    #[tool(name = "crm.read", description = "The CRM's contacts")]
    fn crm_read(&self, Extension(parts): Extension<http::request::Parts>) -> String {
        println!("mcp-server: crm.read for {}", holder(&parts));
        "Ada Lovelace, Alan Turing".to_owned()
    }

    #[tool(name = "payments.refund", description = "Refund an amount (cents)")]
    fn payments_refund(
        &self,
        Extension(parts): Extension<http::request::Parts>,
        Parameters(Refund { amount }): Parameters<Refund>,
    ) -> String {
        println!("mcp-server: payments.refund {amount} for {}", holder(&parts));
        format!("refunded {amount}")
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
    let dev = env("TESSERA_DEV_DIR", ".tessera-dev");
    let endpoint = env("TESSERA_ENDPOINT", "https://127.0.0.1:7443");
    let issuer = env("TESSERA_ISSUER", "https://tessera.local");
    let authorization_server = env("TESSERA_AUTHORIZATION_SERVER", &issuer);
    let listen = env("MCP_LISTEN", "127.0.0.1:8090");

    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot bind {listen}"))?;
    let public_url = env("MCP_PUBLIC_URL", &format!("http://{}", listener.local_addr()?));
    let audience = env("MCP_AUDIENCE", &format!("{}/mcp", public_url.trim_end_matches('/')));

    let identity = Identity::from_files(
        format!("{dev}/ca.pem"),
        format!("{dev}/identities/api-gateway.pem"),
        format!("{dev}/identities/api-gateway.key.pem"),
    )
    .context("the dev identity `api-gateway` (run `make run` first)")?;
    let channel = tessera_client::connect_lazy(&endpoint, &identity)?;
    let mut config = VerifierConfig::new(&issuer, &audience);
    config.require_content_digest = std::env::var("MCP_REQUIRE_CONTENT_DIGEST").is_ok_and(|v| v == "1");
    let verifier = Verifier::connect(channel, config)?;
    if !verifier.ready(Duration::from_secs(10)).await {
        eprintln!("mcp-server: the broker's feed is not synchronised yet; refusing tokens until it is");
    }

    // Stateless streamable HTTP with JSON answers: no session to pin a
    // client to one replica, and every request is verified on its own.
    let mcp = StreamableHttpService::new(
        || Ok(Tools),
        Arc::new(NeverSessionManager::default()),
        StreamableHttpServerConfig::default()
            .with_legacy_session_mode(false)
            .with_json_response(true)
            .with_sse_keep_alive(None),
    );
    let router = axum::Router::new().route_service("/mcp", mcp);
    let service = ResourceLayer::new(verifier, &public_url, authorization_server)
        .realm("mcp")
        .tool_scope("crm.read", "crm.read")
        .tool_scope("payments.refund", "payments.refund")
        .layer(router);

    println!("mcp-server: listening on {public_url} (audience {audience})");
    loop {
        let (stream, _) = listener.accept().await?;
        let service = service.clone();
        tokio::spawn(async move {
            let handler = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let mut service = service.clone();
                async move {
                    let response = service.call(req).await;
                    Ok::<_, Infallible>(response.unwrap_or_else(|never| match never {}))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), handler)
                .await;
        });
    }
}
