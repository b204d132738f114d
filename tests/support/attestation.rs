//! Test helpers for workload attestation: a throwaway ES256 OIDC issuer
//! (its JWKS as a file), config snippets appended to a dev directory's
//! `tesserad.toml`, and gRPC clients that attest with a bearer JWT over TLS
//! without a client certificate, or over the Unix socket.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{self, KeyPair as _};
use serde_json::{Value, json};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::{Broker, pb};

/// The issuer URL of [`Issuer`] tokens.
pub const ISSUER: &str = "https://issuer.test.invalid";
/// The audience tesserad expects (the dev config's `tokens.issuer`).
pub const AUDIENCE: &str = "https://tessera.local";

/// A throwaway ES256 issuer: signs test tokens, serves its JWKS as JSON.
pub struct Issuer {
    key: signature::EcdsaKeyPair,
    pub kid: String,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl Default for Issuer {
    fn default() -> Self {
        Self::new("test-key-1")
    }
}

impl Issuer {
    pub fn new(kid: &str) -> Self {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        Self {
            key: signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap(),
            kid: kid.to_owned(),
        }
    }

    pub fn jwk(&self) -> Value {
        let p = self.key.public_key().as_ref();
        json!({"kty": "EC", "crv": "P-256", "x": b64(&p[1..33]), "y": b64(&p[33..65]), "kid": self.kid, "use": "sig", "alg": "ES256"})
    }

    pub fn jwks(&self) -> String {
        json!({"keys": [self.jwk()]}).to_string()
    }

    /// A token with exactly this header and claims.
    pub fn sign_raw(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = self.key.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
        format!("{input}.{}", b64(sig.as_ref()))
    }

    pub fn sign(&self, claims: &Value) -> String {
        self.sign_raw(&json!({"alg": "ES256", "kid": self.kid, "typ": "JWT"}), claims)
    }
}

/// Seconds since the epoch, from the OS clock (tesserad uses the same one).
pub fn now() -> i64 {
    #[allow(clippy::disallowed_methods, reason = "tests compare against tesserad's wall clock")]
    let now = std::time::SystemTime::now();
    now.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Claims of a fresh token for `sub`, with a unique `jti`.
pub fn claims(sub: &str) -> Value {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let t = now();
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": sub,
        "iat": t - 5, "nbf": t - 5, "exp": t + 300,
        "jti": format!("jti-{}-{}", std::process::id(), N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)),
    })
}

/// Appends `toml` to the dev directory's `tesserad.toml`.
pub fn append_config(dir: &Path, toml: &str) {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("tesserad.toml"))
        .unwrap();
    file.write_all(b"\n").unwrap();
    file.write_all(toml.as_bytes()).unwrap();
}

/// The issuer section named `name` for [`Issuer`]-signed tokens with
/// `iss` = `issuer`, keys from `jwks_source` (a `jwks_file = …` or
/// `jwks_url = …` line), mapping `sub` to `spiffe://tessera.local/agent/{sub}`.
pub fn issuer_config(name: &str, issuer: &str, jwks_source: &str, extra: &str) -> String {
    format!(
        r#"
[[attestation.jwt.issuers]]
name = "{name}"
issuer = "{issuer}"
{jwks_source}
algorithms = ["ES256"]
max_age = "10m"
leeway = "5s"
single_use_jti = true
mapping = "spiffe://tessera.local/agent/{{sub}}"
{extra}
"#
    )
}

/// Identities for JWT tests: `agent/ci` (jwt only) and `agent/ci-disabled`
/// (jwt, disabled). The dev identities (`agent/researcher`, ...) stay x509 only.
pub const JWT_IDENTITIES: &str = r#"
[[identities]]
id = "spiffe://tessera.local/agent/ci"
kind = "agent"
owner = "team-research"
roles = ["agent", "verifier"]
max_ttl = "10m"
attestation = ["jwt"]

[[identities]]
id = "spiffe://tessera.local/agent/ci-disabled"
kind = "agent"
owner = "team-research"
roles = ["agent", "verifier"]
max_ttl = "10m"
attestation = ["jwt"]
disabled = true
"#;

/// The test issuer `test` with its JWKS file, plus [`JWT_IDENTITIES`].
pub fn jwt_config(jwks_file: &Path) -> String {
    format!(
        "{}{JWT_IDENTITIES}",
        issuer_config(
            "test",
            ISSUER,
            &format!("jwks_file = {:?}", jwks_file.display().to_string()),
            ""
        )
    )
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// A TLS channel that verifies the broker but presents no client certificate.
pub async fn anonymous_channel(broker: &Broker) -> Channel {
    let ca = Certificate::from_pem(std::fs::read(broker.dir.path().join("ca.pem")).unwrap());
    let tls = ClientTlsConfig::new().ca_certificate(ca).domain_name("127.0.0.1");
    let _ = rustls::crypto::ring::default_provider().install_default();
    Endpoint::from_shared(broker.endpoint())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .unwrap()
}

pub type JwtVerifier = pb::verifier_service_client::VerifierServiceClient<InterceptedService<Channel, Bearer>>;
pub type JwtAgent = pb::agent_service_client::AgentServiceClient<InterceptedService<Channel, Bearer>>;

fn bearer(authorization: &str) -> Bearer {
    Bearer(authorization.parse().unwrap())
}

/// A verifier client attesting with `authorization` (e.g. `Bearer <jwt>`).
pub async fn verifier_with(broker: &Broker, authorization: &str) -> JwtVerifier {
    pb::verifier_service_client::VerifierServiceClient::with_interceptor(
        anonymous_channel(broker).await,
        bearer(authorization),
    )
}

/// An agent client attesting with the bearer `token`.
pub async fn agent_with(broker: &Broker, token: &str) -> JwtAgent {
    pb::agent_service_client::AgentServiceClient::with_interceptor(
        anonymous_channel(broker).await,
        bearer(&format!("Bearer {token}")),
    )
}

/// One attested call (`Introspect` of a token that is not one; GetJwks is
/// public and attests nobody) with the bearer `token`.
pub async fn attested_call(broker: &Broker, token: &str) -> Result<(), tonic::Status> {
    verifier_with(broker, &format!("Bearer {token}"))
        .await
        .introspect(introspect_request())
        .await
        .map(drop)
}

/// An `Introspect` request for a string that is not a token (answers inactive).
pub fn introspect_request() -> pb::IntrospectRequest {
    pb::IntrospectRequest {
        token: "not-a-token".into(),
    }
}

/// Audit records of the broker.
pub fn audit_records(broker: &Broker) -> Vec<Value> {
    let text = std::fs::read_to_string(&broker.audit).unwrap_or_default();
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// Waits (bounded) for an `attestation_refused` record by `method` whose
/// reason contains `reason`.
pub fn wait_refusal_audited(broker: &Broker, method: &str, reason: &str) -> Value {
    wait_refusal(broker, method, reason, None)
}

/// Waits (bounded) for the `attestation_refused` record of one piece of
/// evidence (`sha256:<hex>` of the certificate or token presented), by
/// `method`, whose reason contains `reason`: proves that this very refusal
/// was audited, not just one like it.
pub fn wait_refusal_of(broker: &Broker, method: &str, evidence: &str, reason: &str) -> Value {
    wait_refusal(broker, method, reason, Some(evidence))
}

fn wait_refusal(broker: &Broker, method: &str, reason: &str, evidence: Option<&str>) -> Value {
    let started = std::time::Instant::now();
    loop {
        if let Some(r) = audit_records(broker).into_iter().find(|r| {
            r["event"] == "attestation_refused"
                && r["who"]["attestation"] == method
                && r["reason"].as_str().is_some_and(|s| s.contains(reason))
                && evidence.is_none_or(|e| r["who"]["evidence"] == e)
        }) {
            return r;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no attestation_refused record ({method}, evidence {evidence:?}) with reason containing `{reason}`: {:#?}",
            audit_records(broker)
                .into_iter()
                .filter(|r| r["event"] == "attestation_refused")
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A CA of its own, named `name` (a distinct name per CA, so chain
/// building never mistakes one for another), in no trust bundle until a
/// test adds its certificate: the certificate and an issuer for leaves.
pub fn own_ca(name: &str) -> (rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>) {
    use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair};
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    let cert = params.self_signed(&key).unwrap();
    (cert, Issuer::new(params, key))
}

/// A client identity of `broker` whose SVID for `spiffe` (clientAuth, no
/// subject) is signed by `issuer`.
pub fn identity_signed_by(
    broker: &Broker,
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
    spiffe: &str,
) -> tessera_client::Identity {
    use rcgen::{CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, KeyPair, SanType};
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::default();
    leaf.distinguished_name = DistinguishedName::new();
    leaf.subject_alt_names = vec![SanType::URI(spiffe.try_into().unwrap())];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = leaf.signed_by(&key, issuer).unwrap();
    tessera_client::Identity {
        ca_pem: std::fs::read(broker.dir.path().join("ca.pem")).unwrap(),
        cert_pem: cert.pem().into_bytes(),
        key_pem: key.serialize_pem().into_bytes(),
        broker_id: Some(format!("spiffe://{}/tesserad", crate::TD)),
    }
}

/// A client identity for `spiffe`: an SVID signed by the broker's dev CA
/// (`trusted_ca`) or by a fresh CA outside every trust bundle.
pub fn foreign_identity(broker: &Broker, spiffe: &str, trusted_ca: bool) -> tessera_client::Identity {
    let dir = broker.dir.path();
    if trusted_ca {
        let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.join("ca.key.pem")).unwrap()).unwrap();
        let issuer =
            rcgen::Issuer::from_ca_cert_pem(&std::fs::read_to_string(dir.join("ca.pem")).unwrap(), ca_key).unwrap();
        identity_signed_by(broker, &issuer, spiffe)
    } else {
        identity_signed_by(broker, &own_ca("a stranger's CA").1, spiffe)
    }
}
