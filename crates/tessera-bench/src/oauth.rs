//! Tokens over the HTTPS OAuth facade: the RFC 7523 `jwt-bearer` grant, as
//! a headless MCP client asks for them, beside the gRPC mint of the same run.
//!
//! [`JwtBearer::configure`] adds a throwaway ES256 workload-JWT issuer (its
//! JWKS as a file in the dev directory) and a JWT-attested agent to the
//! dev `tesserad.toml` before the broker starts. Each request then signs a
//! fresh assertion (unique `jti`: the broker spends it in its replay cache,
//! as in production) and posts the grant over a pool of keep-alive
//! HTTPS/1.1 connections: one connection per request in flight, since
//! HTTP/1.1 answers one request at a time per connection.
//!
//! The assertion is signed by the load generator, never by a server process,
//! so its cost is not in the server CPU per token. Tokens are never printed.

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tessera_core::clock::{Clock as _, SystemClock};
use tokio::sync::Mutex;

use crate::load::LoadSpec;
use crate::tessera::{CRM, Measured, SCOPE, Target};

/// The issuer URL of the bench's workload JWTs.
const ISSUER: &str = "https://workload-issuer.bench.invalid";
/// The JWT-attested agent: `sub` of every assertion.
const SUBJECT: &str = "bench-oauth";
/// The RFC 7523 grant type.
const GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// The bench's workload-JWT issuer and the agent it attests.
pub struct JwtBearer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    jti: AtomicU64,
    run: String,
}

impl std::fmt::Debug for JwtBearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtBearer")
            .field("run", &self.run)
            .finish_non_exhaustive()
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The agent's SPIFFE ID (the issuer section maps `sub` onto it).
pub fn agent() -> String {
    format!("spiffe://tessera.local/agent/{SUBJECT}")
}

impl JwtBearer {
    /// A fresh issuer key; its JWKS, the issuer and the agent appended to
    /// `dev_dir`'s `tesserad.toml`. Call before the broker starts.
    pub fn configure(dev_dir: &Path) -> anyhow::Result<Self> {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).map_err(|_| anyhow::anyhow!("no ES256 key"))?;
        let key = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).map_err(|_| anyhow::anyhow!("bad ES256 key"))?;
        let p = key.public_key().as_ref();
        let (x, y) = (p.get(1..33).context("short key")?, p.get(33..65).context("short key")?);
        let jwks = json!({"keys": [{
            "kty": "EC", "crv": "P-256", "x": b64(x), "y": b64(y),
            "kid": "bench-1", "use": "sig", "alg": "ES256",
        }]});
        let jwks_file = dev_dir.join("bench-issuer.jwks");
        std::fs::write(&jwks_file, jwks.to_string())
            .with_context(|| format!("cannot write {}", jwks_file.display()))?;
        let config = format!(
            r#"
[[attestation.jwt.issuers]]
name = "bench"
issuer = "{ISSUER}"
jwks_file = {jwks:?}
algorithms = ["ES256"]
max_age = "10m"
leeway = "5s"
single_use_jti = true
mapping = "spiffe://tessera.local/agent/{{sub}}"

[[identities]]
id = "{agent}"
kind = "agent"
owner = "team-research"
roles = ["agent"]
max_ttl = "10m"
attestation = ["jwt"]
"#,
            jwks = jwks_file.display().to_string(),
            agent = agent(),
        );
        let path = dev_dir.join("tesserad.toml");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        file.write_all(config.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Self {
            key,
            rng,
            jti: AtomicU64::new(0),
            run: crate::tessera::task_id("jti"),
        })
    }

    /// A fresh assertion for the token endpoint `aud`, valid for a minute.
    fn assertion(&self, aud: &str) -> Result<String, String> {
        let now = SystemClock.now().timestamp();
        let n = self.jti.fetch_add(1, Ordering::Relaxed);
        let header = json!({"alg": "ES256", "kid": "bench-1", "typ": "JWT"});
        let claims = json!({
            "iss": ISSUER, "sub": SUBJECT, "aud": aud,
            "iat": now, "exp": now + 60, "jti": format!("{}-{n}", self.run),
        });
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = self
            .key
            .sign(&self.rng, input.as_bytes())
            .map_err(|_| "signing failed".to_owned())?;
        Ok(format!("{input}.{}", b64(sig.as_ref())))
    }
}

/// Keep-alive HTTPS/1.1 connections to the facade, each used by one request at a time.
struct Pool {
    addr: String,
    tls: tokio_rustls::TlsConnector,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl Pool {
    fn new(addr: &str, dev_dir: &Path) -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = dev_dir.join("ca.pem");
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&ca).with_context(|| format!("cannot read {}", ca.display()))? {
            roots.add(cert.with_context(|| format!("bad certificate in {}", ca.display()))?)?;
        }
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            addr: addr.to_owned(),
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            idle: Mutex::new(Vec::new()),
        })
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let tcp = tokio::net::TcpStream::connect(&self.addr)
            .await
            .map_err(|e| format!("connect {}: {e}", self.addr))?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
        let tls = self.tls.connect(name, tcp).await.map_err(|e| format!("TLS: {e}"))?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
        tokio::spawn(conn);
        Ok(send)
    }

    /// `method path` with `body` (a form when given); the status and the body.
    async fn call(&self, path: &str, form: Option<String>) -> Result<(u16, Bytes), String> {
        let idle = self.idle.lock().await.pop();
        let mut send = match idle {
            Some(s) if !s.is_closed() => s,
            _ => self.connect().await?,
        };
        send.ready().await.map_err(|e| format!("connection: {e}"))?;
        let builder = hyper::Request::builder().uri(path).header("host", &self.addr);
        let req = match form {
            Some(body) => builder
                .method("POST")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Full::new(Bytes::from(body))),
            None => builder.method("GET").body(Full::new(Bytes::new())),
        }
        .map_err(|e| e.to_string())?;
        let resp = send.send_request(req).await.map_err(|e| format!("request: {e}"))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        self.idle.lock().await.push(send);
        Ok((status, body))
    }
}

/// `application/x-www-form-urlencoded` of `pairs`.
fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", percent(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Target {
    /// `jwt-bearer` grants under `spec` in one task of the bench agent, over
    /// the facade at `oauth_addr`; each answer must carry a token.
    pub async fn jwt_bearer(
        &self,
        spec: &LoadSpec,
        oauth_addr: &str,
        issuer: Arc<JwtBearer>,
    ) -> anyhow::Result<Measured> {
        let task = Arc::new(self.start_task_for("oauth", &[agent()], 3600).await?);
        let pool = Arc::new(Pool::new(oauth_addr, &self.dev_dir)?);
        // The token endpoint, read as a client reads it (RFC 8414): it is
        // the `aud` the broker expects of an assertion.
        let (status, body) = pool
            .call("/.well-known/oauth-authorization-server", None)
            .await
            .map_err(|e| anyhow::anyhow!("metadata: {e}"))?;
        anyhow::ensure!(status == 200, "metadata answered {status}");
        let meta: Value = serde_json::from_slice(&body).context("metadata is not JSON")?;
        let endpoint = Arc::new(
            meta.get("token_endpoint")
                .and_then(Value::as_str)
                .context("metadata names no token_endpoint")?
                .to_owned(),
        );
        let path = Arc::new(
            endpoint
                .splitn(4, '/')
                .nth(3)
                .map_or_else(|| "/oauth/token".to_owned(), |p| format!("/{p}")),
        );
        crate::tessera::measure(&self.pid_refs(), spec, self.quiet, move |_| {
            let (task, pool, issuer, endpoint, path) = (
                task.clone(),
                pool.clone(),
                issuer.clone(),
                endpoint.clone(),
                path.clone(),
            );
            async move {
                let assertion = issuer.assertion(&endpoint)?;
                let body = form(&[
                    ("grant_type", GRANT),
                    ("assertion", &assertion),
                    ("resource", CRM),
                    ("scope", SCOPE),
                    ("task_id", &task),
                ]);
                let (status, body) = pool.call(&path, Some(body)).await?;
                let answer: Value = serde_json::from_slice(&body).map_err(|e| format!("answer {status}: {e}"))?;
                if status == 200 && answer.get("access_token").and_then(Value::as_str).is_some() {
                    Ok(())
                } else {
                    // The error code and description only: never a token.
                    Err(format!(
                        "{status} {} {}",
                        answer.get("error").and_then(Value::as_str).unwrap_or("-"),
                        answer.get("error_description").and_then(Value::as_str).unwrap_or("")
                    ))
                }
            }
        })
        .await
    }
}
