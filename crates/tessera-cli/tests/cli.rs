//! The `tessera` binary against a stub broker (tonic with mTLS, using the PKI
//! from `tessera dev init`): outputs, exit codes and the JSON error shape.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test"
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use tessera_client::pb;
use tessera_client::pb::agent_service_server::{AgentService, AgentServiceServer};
use tessera_client::pb::verifier_service_server::{VerifierService, VerifierServiceServer};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::{Stream, StreamExt as _};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

const KID: &str = "kid-1";
const AUD: &str = "https://api.example.com/crm";

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "tessera-cli-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn tessera(args: &[&str]) -> Output {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .env_remove("TESSERA_TOKEN")
        .env_remove("TESSERA_AS")
        .env_remove("TESSERA_OUTPUT")
        .env_remove("TESSERA_ENDPOINT")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    Output {
        code: out.status.code().unwrap(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// Signs tokens like the broker: ES256 with ring, `typ: at+jwt`.
struct Signer {
    key: EcdsaKeyPair,
}

impl Signer {
    fn new() -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        Self { key }
    }

    fn jwks(&self) -> String {
        let public = self.key.public_key().as_ref();
        serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": KID,
            "x": URL_SAFE_NO_PAD.encode(&public[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&public[33..65]),
        }]})
        .to_string()
    }

    fn token(&self, sub: &str, scopes: &[String]) -> String {
        let now = i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap();
        let header = serde_json::json!({"alg": "ES256", "typ": "at+jwt", "kid": KID});
        let claims = serde_json::json!({
            "iss": "https://tessera.local", "sub": sub, "aud": AUD,
            "exp": now + 300, "nbf": now, "iat": now, "jti": "grant-1",
            "scope": scopes.join(" "), "task_id": "t1",
        });
        let b64 = |v: &serde_json::Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
        let input = format!("{}.{}", b64(&header), b64(&claims));
        let sig = self.key.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }
}

struct Stub {
    signer: std::sync::Arc<Signer>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl AgentService for Stub {
    async fn request_token(
        &self,
        request: Request<pb::RequestTokenRequest>,
    ) -> Result<Response<pb::RequestTokenResponse>, Status> {
        let req = request.into_inner();
        if req.task_id == "over" {
            return Err(Status::failed_precondition("task `over` is already complete"));
        }
        let outcome = if req.scopes.iter().any(|s| s.starts_with("payments.")) {
            pb::request_token_response::Outcome::Pending(pb::PendingApproval {
                approval_id: "ap-1".into(),
                expires_at: None,
                reason: "high-impact scope".into(),
            })
        } else {
            pb::request_token_response::Outcome::Token(pb::IssuedToken {
                access_token: self
                    .signer
                    .token("spiffe://tessera.local/agent/researcher", &req.scopes),
                token_type: "Bearer".into(),
                grant_id: "grant-1".into(),
                task_id: req.task_id,
                audience: req.audience,
                scopes: req.scopes,
                class: pb::ScopeClass::Read as i32,
                issued_at: None,
                expires_at: None,
                expires_in: 300,
                ..Default::default()
            })
        };
        Ok(Response::new(pb::RequestTokenResponse { outcome: Some(outcome) }))
    }

    type AwaitApprovalStream = BoxStream<pb::AwaitApprovalResponse>;

    async fn await_approval(
        &self,
        _: Request<pb::AwaitApprovalRequest>,
    ) -> Result<Response<Self::AwaitApprovalStream>, Status> {
        Err(Status::unimplemented("stub"))
    }

    async fn delegate_token(&self, _: Request<pb::DelegateTokenRequest>) -> Result<Response<pb::IssuedToken>, Status> {
        Err(Status::unimplemented("stub"))
    }

    async fn offer_delegation(
        &self,
        _: Request<pb::DelegateTokenRequest>,
    ) -> Result<Response<pb::DelegationOffer>, Status> {
        Err(Status::unimplemented("stub"))
    }

    async fn redeem_delegation(
        &self,
        _: Request<pb::RedeemDelegationRequest>,
    ) -> Result<Response<pb::IssuedToken>, Status> {
        Err(Status::unimplemented("stub"))
    }

    async fn release_token(
        &self,
        _: Request<pb::ReleaseTokenRequest>,
    ) -> Result<Response<pb::ReleaseTokenResponse>, Status> {
        Err(Status::unimplemented("stub"))
    }
}

#[tonic::async_trait]
impl VerifierService for Stub {
    async fn get_jwks(&self, _: Request<pb::GetJwksRequest>) -> Result<Response<pb::GetJwksResponse>, Status> {
        Ok(Response::new(pb::GetJwksResponse {
            keys: Vec::new(),
            jwks_json: self.signer.jwks(),
            status: Vec::new(),
        }))
    }

    async fn introspect(
        &self,
        request: Request<pb::IntrospectRequest>,
    ) -> Result<Response<pb::IntrospectResponse>, Status> {
        match request.into_inner().token.as_str() {
            "deny.deny.deny" => Err(Status::permission_denied("policy says no")),
            "dead.dead.dead" => Ok(Response::new(pb::IntrospectResponse::default())),
            _ => Ok(Response::new(pb::IntrospectResponse {
                active: true,
                sub: "spiffe://tessera.local/agent/researcher".into(),
                aud: AUD.into(),
                ..Default::default()
            })),
        }
    }

    async fn report_misuse(
        &self,
        _: Request<pb::ReportMisuseRequest>,
    ) -> Result<Response<pb::ReportMisuseResponse>, Status> {
        Err(Status::unimplemented("stub"))
    }

    type WatchRevocationsStream = BoxStream<pb::WatchRevocationsResponse>;

    async fn watch_revocations(
        &self,
        _: Request<pb::WatchRevocationsRequest>,
    ) -> Result<Response<Self::WatchRevocationsStream>, Status> {
        use pb::watch_revocations_response::Item;
        let event = |position: &str, target| {
            Ok(pb::WatchRevocationsResponse {
                item: Some(Item::Event(pb::RevocationEvent {
                    position: position.into(),
                    revoked_at: None,
                    reason: "done".into(),
                    target: Some(target),
                    not_after: None,
                })),
            })
        };
        let items = vec![
            Ok(pb::WatchRevocationsResponse {
                item: Some(Item::Heartbeat(pb::Heartbeat {
                    position: "1-0".into(),
                    sent_at: None,
                })),
            }),
            event("2-0", pb::revocation_event::Target::GrantId("g1".into())),
            event("3-0", pb::revocation_event::Target::TaskId("t1".into())),
        ];
        // Then stay open, like a live feed.
        let feed = tokio_stream::iter(items).chain(tokio_stream::pending());
        Ok(Response::new(Box::pin(feed)))
    }
}

/// Runs `dev init` into a fresh directory and serves the stub with its broker certificate.
async fn broker() -> (TempDir, SocketAddr) {
    let dir = TempDir::new();
    let init = tessera(&["dev", "init", "--dir", dir.0.to_str().unwrap()]).await;
    assert_eq!(init.code, 0, "{}", init.stderr);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let read = |name: &str| std::fs::read(dir.0.join(name)).unwrap();
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(read("broker.pem"), read("broker.key.pem")))
        .client_ca_root(Certificate::from_pem(read("ca.pem")));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let signer = std::sync::Arc::new(Signer::new());
    let server = Server::builder()
        .tls_config(tls)
        .unwrap()
        .add_service(AgentServiceServer::new(Stub { signer: signer.clone() }))
        .add_service(VerifierServiceServer::new(Stub { signer }))
        .serve_with_incoming(TcpListenerStream::new(listener));
    tokio::spawn(server);
    (dir, addr)
}

fn global<'a>(dir: &'a Path, endpoint: &'a str, who: &'a str) -> Vec<&'a str> {
    vec!["--dev-dir", dir.to_str().unwrap(), "--endpoint", endpoint, "--as", who]
}

async fn run(dir: &Path, endpoint: &str, who: &str, args: &[&str]) -> Output {
    let mut argv = global(dir, endpoint, who);
    argv.extend_from_slice(args);
    tessera(&argv).await
}

#[tokio::test]
async fn token_request_inspect_verify_and_introspect() {
    let (dir, addr) = broker().await;
    let endpoint = format!("https://{addr}");
    let request = [
        "token",
        "request",
        "--task",
        "t1",
        "--audience",
        AUD,
        "--scope",
        "crm.contacts.read",
    ];

    let issued = run(&dir.0, &endpoint, "researcher", &request).await;
    assert_eq!(issued.code, 0, "{}", issued.stderr);
    let token = issued.stdout.trim().to_owned();
    assert_eq!(
        token.split('.').count(),
        3,
        "stdout is the token alone: {}",
        issued.stdout
    );
    assert!(issued.stderr.contains("grant grant-1") && !issued.stderr.contains(&token));

    let json = run(
        &dir.0,
        &endpoint,
        "researcher",
        &[&request[..], &["--output", "json"]].concat(),
    )
    .await;
    let view: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(view["grant_id"], "grant-1");
    assert_eq!(view["class"], "read");

    let inspect = run(
        &dir.0,
        &endpoint,
        "api-gateway",
        &["token", "inspect", "--verify", "--audience", AUD, &token],
    )
    .await;
    assert_eq!(inspect.code, 0, "{}", inspect.stderr);
    assert!(
        inspect
            .stdout
            .contains(&format!("signature: valid (kid {KID}, alg ES256)")),
        "{}",
        inspect.stdout
    );
    assert!(!inspect.stdout.contains(&token));

    let wrong_aud = run(
        &dir.0,
        &endpoint,
        "api-gateway",
        &["token", "inspect", "--verify", "--audience", "https://other", &token],
    )
    .await;
    assert_eq!(wrong_aud.code, 1);
    assert!(wrong_aud.stderr.contains("aud"), "{}", wrong_aud.stderr);

    let live = run(&dir.0, &endpoint, "api-gateway", &["introspect", &token]).await;
    assert_eq!(live.code, 0, "{}", live.stderr);
    assert!(live.stdout.starts_with("active: true"), "{}", live.stdout);

    let dead = run(
        &dir.0,
        &endpoint,
        "api-gateway",
        &["introspect", "--output", "json", "dead.dead.dead"],
    )
    .await;
    let view: serde_json::Value = serde_json::from_str(&dead.stdout).unwrap();
    assert_eq!(view, serde_json::json!({"active": false}));
}

#[tokio::test]
async fn refusals_exit_2_with_the_grpc_code() {
    let (dir, addr) = broker().await;
    let endpoint = format!("https://{addr}");

    let denied = run(&dir.0, &endpoint, "api-gateway", &["introspect", "deny.deny.deny"]).await;
    assert_eq!(denied.code, 2);
    assert_eq!(denied.stderr.trim(), "error: PERMISSION_DENIED: policy says no");
    assert!(denied.stdout.is_empty());

    let json = run(
        &dir.0,
        &endpoint,
        "researcher",
        &[
            "--output",
            "json",
            "token",
            "request",
            "--task",
            "over",
            "--audience",
            AUD,
            "--scope",
            "s",
        ],
    )
    .await;
    assert_eq!(json.code, 2);
    let body: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"error": {"code": "FAILED_PRECONDITION", "message": "task `over` is already complete"}})
    );

    // A pending approval is neither a token nor a refusal: exit 3, no token on stdout.
    let pending = run(
        &dir.0,
        &endpoint,
        "researcher",
        &[
            "token",
            "request",
            "--task",
            "t1",
            "--audience",
            AUD,
            "--scope",
            "payments.transfers.create",
        ],
    )
    .await;
    assert_eq!(pending.code, 3, "{}", pending.stderr);
    assert!(pending.stdout.is_empty());
    assert!(pending.stderr.contains("approval ap-1"), "{}", pending.stderr);
    assert!(
        pending.stderr.contains("tessera token await ap-1"),
        "{}",
        pending.stderr
    );

    // In JSON, stdout is the pending approval, and the exit code is 3 too.
    let json = run(
        &dir.0,
        &endpoint,
        "researcher",
        &[
            "--output",
            "json",
            "token",
            "request",
            "--task",
            "t1",
            "--audience",
            AUD,
            "--scope",
            "payments.transfers.create",
        ],
    )
    .await;
    assert_eq!(json.code, 3, "{}", json.stderr);
    let body: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(body["pending_approval"]["approval_id"], "ap-1");
}

#[tokio::test]
async fn jwks_and_revocation_watch() {
    let (dir, addr) = broker().await;
    let endpoint = format!("https://{addr}");

    let jwks = run(&dir.0, &endpoint, "api-gateway", &["jwks"]).await;
    assert_eq!(jwks.code, 0, "{}", jwks.stderr);
    let set: serde_json::Value = serde_json::from_str(&jwks.stdout).unwrap();
    assert_eq!(set["keys"][0]["kid"], KID);

    let watch = run(
        &dir.0,
        &endpoint,
        "api-gateway",
        &["revocations", "watch", "--count", "2", "--heartbeats"],
    )
    .await;
    assert_eq!(watch.code, 0, "{}", watch.stderr);
    let lines: Vec<&str> = watch.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", watch.stdout);
    assert!(lines[0].contains("heartbeat position 1-0"));
    assert!(lines[1].contains("revoked grant g1"));
    assert!(lines[2].contains("revoked task t1"));

    let json = run(
        &dir.0,
        &endpoint,
        "api-gateway",
        &["--output", "json", "revocations", "watch", "--count", "1"],
    )
    .await;
    let event: serde_json::Value = serde_json::from_str(json.stdout.trim()).unwrap();
    assert_eq!(event["type"], "revocation");
    assert_eq!(event["grant_id"], "g1");
}

#[tokio::test]
async fn local_errors_exit_1() {
    let bad_flag = tessera(&["task", "start", "--agent", "researcher"]).await;
    assert_eq!(bad_flag.code, 1);
    let dir = TempDir::new();
    let no_files = tessera(&["--dev-dir", dir.0.to_str().unwrap(), "--as", "researcher", "jwks"]).await;
    assert_eq!(no_files.code, 1);
    assert!(no_files.stderr.contains("ca.pem"), "{}", no_files.stderr);
}
