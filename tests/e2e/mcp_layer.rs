//! The example MCP server (`rmcp`'s streamable HTTP transport behind the
//! SDK's `ResourceLayer`) against a real `tesserad`, over raw HTTP/1.1: the
//! RFC 9728 metadata names the broker; no token is 401 naming the metadata;
//! a token calls the tools its scope allows and is refused the others with
//! 403 `insufficient_scope` and the scope to ask for; a DPoP-bound token
//! needs its proof (for this URL, and binding the body when the server
//! requires `content_digest`); the task's completion by the orchestrator
//! revokes the token at the server. Last, the TypeScript MCP SDK's client
//! (`tests/mcp-js/client.mjs`, Debian's node, the SDK `make node-tools`
//! installs) finds the broker from the server's metadata, gets a token with
//! `client_credentials` and `private_key_jwt`, calls a tool, is refused one
//! outside its task, and is refused after the task is completed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test"
)]

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tessera_client::PopKey;
use tessera_e2e::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const ISSUER: &str = "https://tessera.local";
const AGENT: &str = "researcher";

/// The example MCP server, following `broker`; killed on drop.
struct McpServer {
    child: Child,
    addr: String,
}

impl McpServer {
    fn start(broker: &Broker, listen: &str, require_digest: bool, issuer: &str) -> Self {
        let mut child = Command::new(bin_dir().join("mcp-server"))
            .env("TESSERA_DEV_DIR", broker.dir.path())
            .env("TESSERA_ENDPOINT", broker.endpoint())
            .env("TESSERA_ISSUER", issuer)
            .env("MCP_LISTEN", listen)
            .env("MCP_REQUIRE_CONTENT_DIGEST", if require_digest { "1" } else { "0" })
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = loop {
            let line = lines.next().expect("the MCP server exited before listening").unwrap();
            if let Some(rest) = line.split("listening on http://").nth(1) {
                break rest.split_whitespace().next().unwrap().to_owned();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Self { child, addr }
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn url(&self) -> String {
        format!("{}/mcp", self.base())
    }

    /// One request; the status, the headers (lower-case names) and the body.
    async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
        let mut stream = tokio::net::TcpStream::connect(&self.addr).await.unwrap();
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json, text/event-stream\r\n",
            self.addr
        );
        if !body.is_empty() {
            request.push_str("Content-Type: application/json\r\n");
        }
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ));
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let mut lines = head.lines();
        let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Answer {
            status,
            headers,
            body: body.to_owned(),
        }
    }

    /// A JSON-RPC `tools/call` of `tool`.
    async fn call(&self, tool: &str, arguments: Value, headers: &[(&str, &str)]) -> Answer {
        self.send("POST", "/mcp", headers, &tool_call(tool, &arguments)).await
    }
}

impl Drop for McpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tool_call(tool: &str, arguments: &Value) -> String {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": arguments}})
        .to_string()
}

#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A broker whose catalog has the MCP server's URL as an API, and the
/// server on that (free, loopback) port.
async fn setup(tag: &str, require_digest: bool) -> (Broker, McpServer, String) {
    setup_with(dev_init(tag), require_digest, "", &[]).await
}

/// [`setup`] on `dir`, with `extra` configuration and `env` for the broker.
async fn setup_with(
    dir: TempDir,
    require_digest: bool,
    extra: &str,
    env: &[(&str, &str)],
) -> (Broker, McpServer, String) {
    // The server's URL is the API's audience: pick its port first.
    let port = free_port();
    let audience = format!("http://127.0.0.1:{port}/mcp");
    attestation::append_config(
        dir.path(),
        &format!(
            r#"[[apis]]
audience = "{audience}"
verifiers = ["spiffe://{TD}/service/api-gateway"]
scopes = {{ "crm.read" = "read", "payments.refund" = "write" }}
{extra}"#
        ),
    );
    let issuer = env
        .iter()
        .find(|(k, _)| *k == "TESSERA_TOKENS__ISSUER")
        .map_or(ISSUER, |(_, v)| *v)
        .to_owned();
    let broker = Broker::start_in(dir, env);
    let server = McpServer::start(&broker, &format!("127.0.0.1:{port}"), require_digest, &issuer);
    assert_eq!(server.url(), audience);
    // The server synchronised its feed before it said it listens; a token
    // minted in that second would be below its sync floor.
    wait_past_second(now_secs()).await;
    (broker, server, audience)
}

fn task(id: &str, audience: &str, scopes: &[&str]) -> pb::StartTaskRequest {
    let mut request = start_request(id, &[AGENT], &[], 600);
    request.scope_ceiling = [(
        audience.to_owned(),
        pb::ScopeSet {
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        },
    )]
    .into_iter()
    .collect();
    request
}

fn token_for(task_id: &str, audience: &str, scopes: &[&str]) -> pb::RequestTokenRequest {
    pb::RequestTokenRequest {
        audience: audience.into(),
        ..token_request(task_id, scopes, None)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mcp_server_serves_its_metadata_grants_by_tool_scope_and_follows_revocation() {
    let (broker, server, audience) = setup("mcp-layer", false).await;
    let metadata_url = format!("{}/.well-known/oauth-protected-resource", server.base());

    // The metadata, without a token: the broker is the authorization server.
    let metadata = server
        .send("GET", "/.well-known/oauth-protected-resource", &[], "")
        .await;
    assert_eq!(metadata.status, 200, "{metadata:?}");
    let metadata = metadata.json();
    assert_eq!(metadata["resource"], audience.as_str());
    assert_eq!(metadata["authorization_servers"], json!([ISSUER]));
    assert_eq!(metadata["bearer_methods_supported"], json!(["header"]));
    assert_eq!(metadata["scopes_supported"], json!(["crm.read", "payments.refund"]));
    assert_eq!(metadata["dpop_signing_alg_values_supported"], json!(["ES256", "EdDSA"]));

    // No token: 401, naming the metadata (RFC 9728 section 5.1).
    let refused = server.call("crm.read", json!({}), &[]).await;
    assert_eq!(refused.status, 401, "{refused:?}");
    let challenge = refused.header("www-authenticate");
    assert!(challenge.contains(r#"error="invalid_token""#), "{challenge}");
    assert!(
        challenge.contains(&format!(r#"resource_metadata="{metadata_url}""#)),
        "{challenge}"
    );

    // A read token: tools/list and crm.read are served, payments.refund is 403.
    broker
        .start_task(task("mcp-1", &audience, &["crm.read", "payments.refund"]))
        .await;
    let read = broker
        .issue_as(AGENT, token_for("mcp-1", &audience, &["crm.read"]))
        .await;
    let bearer = format!("Bearer {}", read.access_token);
    let auth = [("Authorization", bearer.as_str())];
    let listed = server
        .send(
            "POST",
            "/mcp",
            &auth,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
        )
        .await;
    assert_eq!(listed.status, 200, "{listed:?}");
    let listed_json = listed.json();
    let names: Vec<&str> = listed_json["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["crm.read", "payments.refund"], "{listed:?}");
    let served = server.call("crm.read", json!({}), &auth).await;
    assert_eq!(served.status, 200, "{served:?}");
    assert!(served.body.contains("Ada Lovelace"), "{served:?}");
    let step_up = server.call("payments.refund", json!({"amount": 40}), &auth).await;
    assert_eq!(step_up.status, 403, "{step_up:?}");
    let challenge = step_up.header("www-authenticate");
    assert!(challenge.contains(r#"error="insufficient_scope""#), "{challenge}");
    assert!(challenge.contains(r#"scope="payments.refund""#), "{challenge}");
    assert_eq!(step_up.json()["error"], "insufficient_scope");
    // A token with the scope is served the refund (write tokens are always
    // bound: a DPoP proof for this URL comes with it).
    let refund_key = PopKey::generate().unwrap();
    let refund = broker
        .issue_as(
            AGENT,
            pb::RequestTokenRequest {
                pop_proof: refund_key
                    .proof("POST", tessera_client::REQUEST_TOKEN_HTU, None)
                    .unwrap(),
                ..token_for("mcp-1", &audience, &["payments.refund"])
            },
        )
        .await;
    let rt = refund.access_token.as_str();
    let refunded = server
        .call(
            "payments.refund",
            json!({"amount": 40}),
            &[
                ("Authorization", &format!("DPoP {rt}")),
                ("DPoP", &refund_key.proof("POST", &server.url(), Some(rt)).unwrap()),
            ],
        )
        .await;
    assert_eq!(refunded.status, 200, "{refunded:?}");
    assert!(refunded.body.contains("refunded 40"), "{refunded:?}");

    // A DPoP-bound token: without a proof, with a proof for another URL or
    // by another key, refused; with its own proof, served.
    let key = PopKey::generate().unwrap();
    let bound = broker
        .issue_as(
            AGENT,
            pb::RequestTokenRequest {
                pop_proof: key.proof("POST", tessera_client::REQUEST_TOKEN_HTU, None).unwrap(),
                ..token_for("mcp-1", &audience, &["crm.read"])
            },
        )
        .await;
    assert_eq!(bound.token_type, "DPoP");
    let t = bound.access_token.as_str();
    let dpop_auth = format!("DPoP {t}");
    let no_proof = server
        .call("crm.read", json!({}), &[("Authorization", &dpop_auth)])
        .await;
    assert_eq!(no_proof.status, 401, "{no_proof:?}");
    assert!(no_proof.header("www-authenticate").starts_with("DPoP "), "{no_proof:?}");
    let elsewhere = key.proof("POST", "http://127.0.0.1:1/mcp", Some(t)).unwrap();
    let other_key = PopKey::generate()
        .unwrap()
        .proof("POST", &server.url(), Some(t))
        .unwrap();
    for proof in [elsewhere, other_key] {
        let refused = server
            .call(
                "crm.read",
                json!({}),
                &[("Authorization", &dpop_auth), ("DPoP", &proof)],
            )
            .await;
        assert_eq!(refused.status, 401, "{refused:?}");
        assert!(
            refused
                .header("www-authenticate")
                .contains(r#"error="invalid_dpop_proof""#),
            "{refused:?}"
        );
    }
    let proof = key.proof("POST", &server.url(), Some(t)).unwrap();
    let served = server
        .call(
            "crm.read",
            json!({}),
            &[("Authorization", &dpop_auth), ("DPoP", &proof)],
        )
        .await;
    assert_eq!(served.status, 200, "{served:?}");

    // The orchestrator completes the task: the server refuses the token.
    broker
        .orchestrator()
        .await
        .complete_task(pb::CompleteTaskRequest {
            task_id: "mcp-1".into(),
            reason: "done".into(),
        })
        .await
        .unwrap();
    eventually(
        "the MCP server refuses the completed task's token",
        Duration::from_secs(20),
        async || server.call("crm.read", json!({}), &auth).await.status == 401,
    )
    .await;
    let revoked = server.call("crm.read", json!({}), &auth).await;
    assert!(revoked.header("www-authenticate").contains("revoked"), "{revoked:?}");
    assert!(find_secret(&revoked.body).is_none(), "{revoked:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_requiring_content_digest_refuses_a_proof_for_another_body() {
    let (broker, server, audience) = setup("mcp-digest", true).await;
    broker.start_task(task("mcp-2", &audience, &["crm.read"])).await;
    let key = PopKey::generate().unwrap();
    let bound = broker
        .issue_as(
            AGENT,
            pb::RequestTokenRequest {
                pop_proof: key.proof("POST", tessera_client::REQUEST_TOKEN_HTU, None).unwrap(),
                ..token_for("mcp-2", &audience, &["crm.read"])
            },
        )
        .await;
    let t = bound.access_token.as_str();
    let dpop_auth = format!("DPoP {t}");
    let body = tool_call("crm.read", &json!({}));
    let url = server.url();
    let send = |proof: String| {
        let (auth, body) = (dpop_auth.clone(), body.clone());
        let server = &server;
        async move {
            server
                .send("POST", "/mcp", &[("Authorization", &auth), ("DPoP", &proof)], &body)
                .await
        }
    };
    // A plain RFC 9449 proof (no digest), and one for another body: refused.
    let plain = key.proof("POST", &url, Some(t)).unwrap();
    let other = key
        .proof_for_body(
            "POST",
            &url,
            tool_call("payments.refund", &json!({})).as_bytes(),
            Some(t),
            None,
        )
        .unwrap();
    for proof in [plain, other] {
        let refused = send(proof).await;
        assert_eq!(refused.status, 401, "{refused:?}");
        assert_eq!(refused.json()["error"], "invalid_dpop_proof", "{refused:?}");
        assert!(
            refused.json()["error_description"]
                .as_str()
                .unwrap()
                .contains("content_digest"),
            "{refused:?}"
        );
    }
    // The proof binding this body: served.
    let bound_proof = key
        .proof_for_body("POST", &url, body.as_bytes(), Some(t), None)
        .unwrap();
    let served = send(bound_proof).await;
    assert_eq!(served.status, 200, "{served:?}");
}

/// Where `make node-tools` installs the TypeScript MCP SDK (tests/mcp-js).
fn mcp_js_dir() -> std::path::PathBuf {
    let dir = std::env::var_os("TESSERA_MCP_JS_DIR").map_or_else(
        || std::path::PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/tessera/mcp-js"),
        std::path::PathBuf::from,
    );
    assert!(
        dir.join("node_modules/@modelcontextprotocol/sdk/package.json").exists(),
        "the TypeScript MCP SDK is not installed in {}: run `make node-tools` (make test does)",
        dir.display()
    );
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_mcp_client_gets_a_token_by_private_key_jwt_and_is_refused_after_the_task() {
    let js = mcp_js_dir();
    // The broker's issuer is its facade's URL: the SDK fetches the RFC 8414
    // metadata from the issuer the MCP server's RFC 9728 metadata names.
    let oauth_port = free_port();
    let issuer = format!("https://127.0.0.1:{oauth_port}");
    let client_id = format!("spiffe://{TD}/agent/mcp-signer");
    let key = PopKey::generate().unwrap();
    let mut jwk = key.public_jwk();
    jwk["kid"] = "signer-1".into();
    jwk["use"] = "sig".into();
    let dir = dev_init("mcp-js");
    std::fs::write(dir.path().join("mcp-signer.jwks"), json!({"keys": [jwk]}).to_string()).unwrap();
    let key_file = dir.path().join("mcp-signer.key.pem");
    std::fs::write(&key_file, key.to_pkcs8_pem().as_bytes()).unwrap();
    let extra = format!(
        r#"
[[identities]]
id = "{client_id}"
kind = "agent"
owner = "team-research"
roles = ["agent"]
max_ttl = "10m"
client_jwks_file = "mcp-signer.jwks"
"#
    );
    let listen = format!("127.0.0.1:{oauth_port}");
    let (broker, server, audience) = setup_with(
        dir,
        false,
        &extra,
        &[
            ("TESSERA_OAUTH__LISTEN", &listen),
            ("TESSERA_OAUTH__PUBLIC_URL", &issuer),
            ("TESSERA_TOKENS__ISSUER", &issuer),
        ],
    )
    .await;
    let mut request = task("mcp-js", &audience, &["crm.read"]);
    request.agents = vec![client_id.clone()];
    broker.start_task(request).await;

    let mut child = Command::new("node")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("mcp-js/client.mjs"))
        .env("MCP_JS_DIR", &js)
        .env("MCP_URL", server.url())
        .env("ISSUER", &issuer)
        .env("CLIENT_ID", &client_id)
        .env("CLIENT_KEY", &key_file)
        .env("TASK_ID", "mcp-js")
        .env("SCOPE", "crm.read")
        .env("NODE_EXTRA_CA_CERTS", broker.dir.path().join("ca.pem"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node (make node-tools installs it)");
    let mut stdin = child.stdin.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    // Each step has a deadline: a client stuck in its OAuth flow fails the test.
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = |want: &str| {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("no {want} from the client: {e}"));
        assert!(line.starts_with(want), "expected {want}, got {line}");
        line
    };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert_eq!(next("TOOLS"), "TOOLS crm.read,payments.refund");
        assert!(next("CALLED").contains("Ada Lovelace"));
        // Outside the task's ceiling: refused (the SDK may try to step up,
        // and the broker refuses the wider scope).
        next("REFUND_REFUSED");
    }));
    if let Err(panic) = outcome {
        let _ = child.kill();
        let _ = child.wait();
        eprintln!("--- node stderr ---\n{}", errors.join().unwrap());
        std::panic::resume_unwind(panic);
    }
    broker
        .orchestrator()
        .await
        .complete_task(pb::CompleteTaskRequest {
            task_id: "mcp-js".into(),
            reason: "done".into(),
        })
        .await
        .unwrap();
    use std::io::Write as _;
    writeln!(stdin, "completed").unwrap();
    // The SDK asked for a new token after the 401, and the broker refused it.
    let revoked = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| next("REVOKED"))) {
        Ok(line) => line,
        Err(panic) => {
            let _ = child.kill();
            let _ = child.wait();
            eprintln!("--- node stderr ---\n{}", errors.join().unwrap());
            std::panic::resume_unwind(panic);
        }
    };
    drop(stdin);
    let status = child.wait().unwrap();
    let stderr = errors.join().unwrap();
    assert!(status.success(), "{status}: {stderr}");
    assert!(revoked.contains("completed"), "{revoked}");
    assert!(find_secret(&revoked).is_none(), "{revoked}");
    // The token endpoint recorded the grant type and client authentication.
    let audit = std::fs::read_to_string(&broker.audit).unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("client_credentials") && l.contains("private_key_jwt")),
        "no audit record of the client_credentials grant"
    );
}
