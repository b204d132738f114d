//! An agent that gets a Tessera token and calls the example resource server.
//!
//! As the dev orchestrator it starts a task for the agent `researcher`; as
//! `researcher` it requests a `crm.contacts.read` token, then calls the
//! resource server: the read succeeds (200), a write with the same token is
//! refused (403, insufficient scope), a call without a token is refused
//! (401). Finally the orchestrator completes the task and the same read is
//! refused (401, revoked) as soon as the server's verifier hears of it.
//!
//! Environment: `TESSERA_DEV_DIR` (`.tessera-dev`), `TESSERA_ENDPOINT`
//! (`https://127.0.0.1:7443`), `EXAMPLE_SERVER` (`127.0.0.1:8081`).
//! The token is never printed.

use std::time::Duration;

use anyhow::{Context as _, bail};
use tessera_client::{AgentClient, Identity, OrchestratorClient, pb};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const AUDIENCE: &str = "https://api.example.com/crm";

fn identity(dev: &str, name: &str) -> anyhow::Result<Identity> {
    Identity::from_files(
        format!("{dev}/ca.pem"),
        format!("{dev}/identities/{name}.pem"),
        format!("{dev}/identities/{name}.key.pem"),
    )
    .with_context(|| format!("the dev identity `{name}` (run `make run` first)"))
}

/// One HTTP/1.1 request; returns the status line and body.
async fn call(server: &str, method: &str, token: Option<&str>) -> anyhow::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(server).await.with_context(|| {
        format!("the resource server on {server} (cargo run -p tessera-examples --bin resource-server)")
    })?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} /crm/contacts HTTP/1.1\r\nHost: {server}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("not an HTTP answer")?;
    Ok((status, body.to_owned()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dev = std::env::var("TESSERA_DEV_DIR").unwrap_or_else(|_| ".tessera-dev".into());
    let endpoint = std::env::var("TESSERA_ENDPOINT").unwrap_or_else(|_| "https://127.0.0.1:7443".into());
    let server = std::env::var("EXAMPLE_SERVER").unwrap_or_else(|_| "127.0.0.1:8081".into());

    let mut orchestrator =
        OrchestratorClient::new(tessera_client::connect(&endpoint, &identity(&dev, "orchestrator")?).await?);
    let task_id = format!("example-{}", std::process::id());
    orchestrator
        .start_task(pb::StartTaskRequest {
            authorization_details: String::new(),
            task_id: task_id.clone(),
            agents: vec!["spiffe://tessera.local/agent/researcher".into()],
            scope_ceiling: [(
                AUDIENCE.to_owned(),
                pb::ScopeSet {
                    scopes: vec!["crm.contacts.read".into()],
                },
            )]
            .into_iter()
            .collect(),
            lifetime: Some(pb::start_task_request::Lifetime::DurationSeconds(600)),
            labels: Default::default(),
            parent_task_id: String::new(),
        })
        .await?;
    println!("agent: task `{task_id}` started");

    // The server refuses tokens issued in the second its feed synchronised;
    // a fresh server needs a moment.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut agent = AgentClient::new(tessera_client::connect(&endpoint, &identity(&dev, "researcher")?).await?);
    let issued = match agent
        .request_token(pb::RequestTokenRequest {
            task_id: task_id.clone(),
            audience: AUDIENCE.into(),
            scopes: vec!["crm.contacts.read".into()],
            ttl_seconds: Some(300),
            ..Default::default()
        })
        .await?
        .into_inner()
        .outcome
    {
        Some(pb::request_token_response::Outcome::Token(token)) => token,
        other => bail!("no token: {other:?}"),
    };
    println!("agent: got grant {} ({} s)", issued.grant_id, issued.expires_in);
    let token = issued.access_token.as_str();

    let (status, body) = call(&server, "GET", Some(token)).await?;
    println!("agent: GET  /crm/contacts with the token     -> {status} {body}");
    let (status, _) = call(&server, "POST", Some(token)).await?;
    println!("agent: POST /crm/contacts with a read token  -> {status} (insufficient scope)");
    let (status, _) = call(&server, "GET", None).await?;
    println!("agent: GET  /crm/contacts without a token    -> {status}");

    orchestrator
        .complete_task(pb::CompleteTaskRequest {
            task_id: task_id.clone(),
            reason: "example done".into(),
        })
        .await?;
    let started = std::time::Instant::now();
    loop {
        let (status, _) = call(&server, "GET", Some(token)).await?;
        if status == 401 || started.elapsed() > Duration::from_secs(10) {
            println!(
                "agent: task completed; GET with the same token -> {status} after {:?}",
                started.elapsed()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}
