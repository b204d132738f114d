//! `tessera dev init --jwt` / `--unix-socket`, and `tessera dev jwt`: the
//! development material for the two attestation methods besides mTLS.
//!
//! `--jwt` creates a throwaway ES256 OIDC issuer — its private key
//! `jwt-issuer.THROWAWAY-TEST-KEY.pem` (test material, signs nothing real),
//! its JWKS `jwt-issuer.jwks.json` and `jwt-issuer.json` (issuer URL and
//! audience) — and registers `agent/ci-runner`, which may attest by jwt
//! only. `tessera dev jwt --subject ci-runner` then prints a fresh token.
//!
//! `--unix-socket PATH` adds the Unix-socket listener and `agent/local`,
//! attested by the current uid.

use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, KeyPair as _};

/// The throwaway issuer's private key file.
pub(super) const KEY_FILE: &str = "jwt-issuer.THROWAWAY-TEST-KEY.pem";
/// Its JWKS.
pub(super) const JWKS_FILE: &str = "jwt-issuer.jwks.json";
/// Issuer URL and audience, for `dev jwt`.
pub(super) const META_FILE: &str = "jwt-issuer.json";
const KID: &str = "dev-issuer-1";

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Creates the throwaway issuer in `dir`; returns the config to append.
pub(super) fn jwt_material(dir: &Path, td: &str) -> anyhow::Result<String> {
    let rng = ring::rand::SystemRandom::new();
    let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let pkcs8 =
        signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).map_err(|_| anyhow::anyhow!("key generation failed"))?;
    let key = signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng)
        .map_err(|_| anyhow::anyhow!("key generation failed"))?;
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        base64::engine::general_purpose::STANDARD
            .encode(pkcs8.as_ref())
            .as_bytes()
            .chunks(64)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join("\n")
    );
    super::write_private(&dir.join(KEY_FILE), &pem)?;
    let p = key.public_key().as_ref();
    let (x, y) = (p.get(1..33).unwrap_or_default(), p.get(33..65).unwrap_or_default());
    let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "x": b64(x), "y": b64(y), "kid": KID, "alg": "ES256", "use": "sig"}]});
    super::write_public(&dir.join(JWKS_FILE), &jwks.to_string())?;
    let issuer = format!("https://jwt-issuer.{td}");
    let audience = format!("https://{td}");
    let meta = serde_json::json!({"issuer": issuer, "audience": audience, "kid": KID});
    super::write_public(&dir.join(META_FILE), &meta.to_string())?;
    let mut toml = String::new();
    let q = super::quote;
    let _ = writeln!(
        toml,
        "\n# Throwaway OIDC issuer for development (`tessera dev jwt` signs its tokens)."
    );
    let _ = writeln!(toml, "[[attestation.jwt.issuers]]");
    let _ = writeln!(toml, "name = {}", q("dev"));
    let _ = writeln!(toml, "issuer = {}", q(&issuer));
    let _ = writeln!(toml, "audience = {}", q(&audience));
    let _ = writeln!(toml, "jwks_file = {}", q(JWKS_FILE));
    let _ = writeln!(toml, "algorithms = [{}]", q("ES256"));
    let _ = writeln!(toml, "max_age = {}", q("1h"));
    let _ = writeln!(toml, "mapping = {}", q(&format!("spiffe://{td}/agent/{{sub}}")));
    let _ = writeln!(toml, "\n[[identities]]");
    let _ = writeln!(toml, "id = {}", q(&format!("spiffe://{td}/agent/ci-runner")));
    let _ = writeln!(
        toml,
        "kind = {}\nowner = {}\nroles = [{}]\nmax_ttl = {}",
        q("agent"),
        q("team-research"),
        q("agent"),
        q("10m")
    );
    let _ = writeln!(toml, "attestation = [{}]", q("jwt"));
    Ok(toml)
}

/// The config for the Unix-socket listener at `socket` and `agent/local`.
pub(super) fn unix_config(dir: &Path, socket: &Path, td: &str) -> anyhow::Result<String> {
    let uid = std::fs::metadata(dir)
        .with_context(|| format!("cannot stat `{}`", dir.display()))?
        .uid();
    let q = super::quote;
    let mut toml = String::new();
    let _ = writeln!(toml, "\n[attestation.unix]");
    let _ = writeln!(toml, "socket = {}", q(&socket.display().to_string()));
    let _ = writeln!(toml, "mode = {}", q("0600"));
    let _ = writeln!(toml, "\n[[identities]]");
    let _ = writeln!(toml, "id = {}", q(&format!("spiffe://{td}/agent/local")));
    let _ = writeln!(
        toml,
        "kind = {}\nowner = {}\nroles = [{}]\nmax_ttl = {}",
        q("agent"),
        q("team-research"),
        q("agent"),
        q("10m")
    );
    let _ = writeln!(toml, "attestation = [{}]", q("unix"));
    let _ = writeln!(toml, "unix = {{ uid = {uid} }}");
    Ok(toml)
}

/// A fresh token for `subject` from the throwaway issuer in `dir`, valid
/// for `ttl_secs` from `now`, for `audience` (default: the broker's).
pub(super) fn sign(
    dir: &Path,
    subject: &str,
    audience: Option<&str>,
    now: i64,
    ttl_secs: i64,
) -> anyhow::Result<String> {
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join(META_FILE))
            .with_context(|| format!("no `{META_FILE}` in `{}`: run `tessera dev init --jwt`", dir.display()))?,
    )?;
    let pem = std::fs::read_to_string(dir.join(KEY_FILE)).with_context(|| format!("cannot read `{KEY_FILE}`"))?;
    let der: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(der.trim())?;
    let rng = ring::rand::SystemRandom::new();
    let key = signature::EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng)
        .map_err(|_| anyhow::anyhow!("`{KEY_FILE}` is not an ES256 PKCS#8 key"))?;
    let mut jti = [0u8; 16];
    ring::rand::SecureRandom::fill(&rng, &mut jti).map_err(|_| anyhow::anyhow!("no randomness"))?;
    let field = |name: &str| meta.get(name).cloned().unwrap_or_default();
    let header = serde_json::json!({"alg": "ES256", "kid": field("kid"), "typ": "JWT"});
    let claims = serde_json::json!({
        "iss": field("issuer"), "aud": audience.map_or_else(|| field("audience"), serde_json::Value::from), "sub": subject,
        "iat": now, "nbf": now, "exp": now + ttl_secs, "jti": b64(&jti),
    });
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = key
        .sign(&rng, input.as_bytes())
        .map_err(|_| anyhow::anyhow!("signing failed"))?;
    Ok(format!("{input}.{}", b64(sig.as_ref())))
}
