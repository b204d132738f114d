//! Proof-of-possession: DPoP-style proof JWTs (RFC 9449 section 4), with
//! `htm`/`htu` adapted to gRPC by the broker (`POST` and the method path)
//! and used as is by HTTP resource servers.
//!
//! [`verify_proof`] treats the proof as hostile: it bounds the input, checks
//! the compact form and alphabet, requires `typ` `dpop+jwt`, `alg` ES256 or
//! EdDSA matching a public `jwk` (EC P-256 or OKP Ed25519, no private or
//! unknown member), verifies the signature with *ring*, and only then reads
//! the claims: `htm` exactly and `htu` as expected (a URL normalised, a
//! gRPC path exactly), `iat` within the window,
//! a bounded `jti`, and `ath` when an access token is presented with it.
//! Single use of `jti` needs shared state and is the caller's (see
//! [`VerifiedProof::replay_until`]).
//!
//! A resource server that has the request's body may also bind the proof to
//! it ([`verify_proof_with_content`], [`ContentCheck`]): the optional claim
//! [`CONTENT_DIGEST_CLAIM`] (`content_digest`) carries the RFC 9530
//! `Content-Digest` value of the body, `sha-256=:<base64>:`; when the
//! verifier is given the body, a proof carrying the claim must name that
//! body's digest, and a verifier configured to require it refuses a proof
//! without one. (The claim was proposed by early drafts of the MCP DPoP
//! profile, SEP-1932, and dropped from its current draft; Tessera keeps it
//! as an opt-in check, see docs/OPERATIONS.md.)

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;

use crate::error::ErrorKind;
use crate::token::{Algorithm, Jwk, KeyError, MAX_LEEWAY_SECS, SigningKey};

mod binding;
mod key;
pub mod nonce;

pub use binding::{BindingError, Bound, Presentation, check_binding, check_binding_with_content};
pub use key::ProofKey;
pub use nonce::NonceSource;

/// The `typ` of a proof (RFC 9449 section 4.2).
pub const PROOF_TYP: &str = "dpop+jwt";
/// Longest proof accepted, in bytes.
pub const MAX_PROOF_LEN: usize = 4096;
/// Longest proof `jti` accepted, in bytes.
pub const MAX_PROOF_JTI_LEN: usize = 128;
/// How old a proof any verifier accepts (by its `iat`); a longer
/// configured age is cut to this.
pub const PROOF_MAX_AGE: Duration = Duration::seconds(60);

/// The optional proof claim binding the request body (see the module docs).
pub const CONTENT_DIGEST_CLAIM: &str = "content_digest";
/// Longest `content_digest` value read, in bytes (one sha-256 member is 53).
const MAX_CONTENT_DIGEST_LEN: usize = 128;

/// What a proof's `content_digest` claim is checked against.
#[derive(Debug, Clone, Copy, Default)]
pub struct ContentCheck<'a> {
    /// The request's body, when the caller has it: a proof carrying
    /// `content_digest` must name its SHA-256. `None`: the claim's form is
    /// checked but not its value (the broker's gRPC calls have no body).
    pub body: Option<&'a [u8]>,
    /// Refuse a proof without `content_digest` (and refuse every proof when
    /// `body` is `None`: what cannot be checked is not accepted).
    pub required: bool,
}

impl ContentCheck<'_> {
    /// No body, nothing required: RFC 9449's proof check alone.
    pub const NONE: ContentCheck<'static> = ContentCheck {
        body: None,
        required: false,
    };
}

/// The RFC 9530 `Content-Digest` field value of `body` with SHA-256 alone,
/// `sha-256=:<base64>:`: the value of a proof's `content_digest` claim.
pub fn content_digest(body: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, body);
    format!(
        "sha-256=:{}:",
        base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
    )
}

/// Checks a proof's `content_digest` claim against `content`.
fn check_content_digest(claim: Option<&str>, content: &ContentCheck<'_>) -> Result<(), ProofError> {
    let Some(claim) = claim else {
        return if content.required {
            Err(ProofError::ContentDigest("the proof has no `content_digest`"))
        } else {
            Ok(())
        };
    };
    // Exactly one sha-256 member with a canonical base64 byte sequence: a
    // value this check cannot read is refused, never skipped.
    let digest = (claim.len() <= MAX_CONTENT_DIGEST_LEN)
        .then(|| claim.strip_prefix("sha-256=:")?.strip_suffix(':'))
        .flatten()
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .filter(|d| d.len() == 32)
        .ok_or(ProofError::ContentDigest(
            "`content_digest` is not `sha-256=:<base64 of 32 bytes>:`",
        ))?;
    match content.body {
        Some(body) => {
            if ring::digest::digest(&ring::digest::SHA256, body).as_ref() == digest.as_slice() {
                Ok(())
            } else {
                Err(ProofError::ContentDigest(
                    "`content_digest` is not the digest of the request body",
                ))
            }
        }
        None if content.required => Err(ProofError::ContentDigest(
            "no request body to check `content_digest` against",
        )),
        None => Ok(()),
    }
}

/// What a proof must be for.
#[derive(Debug, Clone, Copy)]
pub struct ProofCheck<'a> {
    /// The expected `htm`, e.g. `POST`.
    pub htm: &'a str,
    /// The expected `htu`: for the broker, the gRPC method path.
    pub htu: &'a str,
    /// Now.
    pub now: DateTime<Utc>,
    /// Oldest `iat` accepted: `now - max_age` (`max_age` cut to
    /// [`PROOF_MAX_AGE`]).
    pub max_age: Duration,
    /// Clock skew tolerated for an `iat` in the future (cut to
    /// [`MAX_LEEWAY_SECS`]).
    pub leeway: Duration,
    /// The access token presented with the proof, whose hash `ath` must be;
    /// `None` when no token is presented (at the broker).
    pub access_token: Option<&'a str>,
}

/// A proof whose signature, key and claims checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedProof {
    /// RFC 7638 thumbprint of the proof's key: the token's `cnf.jkt`.
    pub jkt: String,
    /// The proof's `jti`, to be accepted once.
    pub jti: String,
    /// The proof's `iat`.
    pub iat: DateTime<Utc>,
    /// The proof's `nonce` (RFC 9449 section 8), for the caller to check
    /// against its [`NonceSource`]; `None` when the proof has none.
    pub nonce: Option<String>,
}

impl VerifiedProof {
    /// Until when the `jti` must be remembered: after that the proof is
    /// too old to be accepted anyway.
    pub fn replay_until(&self, max_age: Duration) -> DateTime<Utc> {
        self.iat + max_age + Duration::seconds(1)
    }

    /// The replay-cache id: the key's thumbprint and the `jti`, so that one
    /// key cannot burn another key's `jti`s.
    pub fn replay_id(&self) -> String {
        format!("{}.{}", self.jkt, self.jti)
    }
}

/// Why a proof was refused. Never contains the proof or part of it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// Longer than [`MAX_PROOF_LEN`].
    #[error("proof is longer than {MAX_PROOF_LEN} bytes")]
    TooLong,
    /// Not a compact JWS of the expected shape.
    #[error("proof is malformed: {0}")]
    Malformed(&'static str),
    /// `typ` is not `dpop+jwt`.
    #[error("proof `typ` is not `dpop+jwt`")]
    Type,
    /// `alg` is not ES256 or EdDSA.
    #[error("proof `alg` must be ES256 or EdDSA")]
    Algorithm,
    /// The `jwk` header is missing, private, or not a key of `alg`.
    #[error("proof `jwk` is not acceptable: {0}")]
    Key(&'static str),
    /// The signature does not verify with the proof's own key.
    #[error("proof signature does not verify with its `jwk`")]
    Signature,
    /// `htm` is not the expected method.
    #[error("proof `htm` is not `{0}`")]
    Method(String),
    /// `htu` is not the expected target.
    #[error("proof `htu` is not `{0}`")]
    Target(String),
    /// `iat` is too old.
    #[error("proof `iat` is more than {0} s old")]
    Stale(i64),
    /// `iat` is in the future.
    #[error("proof `iat` is in the future")]
    Future,
    /// `jti` is missing, empty, too long or not printable.
    #[error("proof `jti` must be 1-{MAX_PROOF_JTI_LEN} printable ASCII characters")]
    Jti,
    /// `ath` does not match the access token presented.
    #[error("proof `ath` does not match the access token")]
    AccessTokenHash,
    /// The proof's `jti` was seen before.
    #[error("proof `jti` was already used")]
    Replayed,
    /// The proof is by another key than the one the token is bound to.
    #[error("proof key is not the key the token is bound to")]
    WrongKey,
    /// `content_digest` is missing where required, malformed, or not the
    /// digest of the request body.
    #[error("proof `content_digest` refused: {0}")]
    ContentDigest(&'static str),
}

impl ProofError {
    /// Transport-free classification: a bad proof is a bad argument
    /// (RFC 9449's `invalid_dpop_proof` is a 400).
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidArgument
    }
}

/// The header members we read; serde refuses duplicates of these. A key
/// is only ever the proof's own `jwk`: a `kid`, a URL or a certificate
/// chain naming another one refuses the proof, as does `crit`.
#[derive(Deserialize)]
struct RawHeader {
    typ: Option<String>,
    alg: Option<String>,
    jwk: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    kid: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    jku: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    x5u: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    x5c: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct RawClaims {
    jti: Option<String>,
    htm: Option<String>,
    htu: Option<String>,
    iat: Option<i64>,
    ath: Option<String>,
    nonce: Option<String>,
    content_digest: Option<String>,
}

/// JWK members a public key may carry; anything else (a private `d`, a
/// symmetric `k`, RSA members) refuses the proof.
const PUBLIC_MEMBERS: [&str; 7] = ["kty", "crv", "x", "y", "alg", "use", "kid"];

/// Verifies `proof` for `check`. See the module docs for the rules.
pub fn verify_proof(proof: &str, check: &ProofCheck<'_>) -> Result<VerifiedProof, ProofError> {
    verify_proof_with_content(proof, check, &ContentCheck::NONE)
}

/// [`verify_proof`], and the proof's `content_digest` against `content`
/// (see [`ContentCheck`]): the one proof check, with or without a body.
pub fn verify_proof_with_content(
    proof: &str,
    check: &ProofCheck<'_>,
    content: &ContentCheck<'_>,
) -> Result<VerifiedProof, ProofError> {
    const SEGMENTS: &str = "expected three dot-separated base64url segments";
    if proof.len() > MAX_PROOF_LEN {
        return Err(ProofError::TooLong);
    }
    let mut parts = proof.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ProofError::Malformed(SEGMENTS));
    };
    let decode = |segment: &str| {
        if segment.is_empty()
            || !segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ProofError::Malformed(SEGMENTS));
        }
        URL_SAFE_NO_PAD
            .decode(segment)
            .map_err(|_| ProofError::Malformed(SEGMENTS))
    };
    let header_json = decode(header_b64)?;
    if header_json.trim_ascii_start().first() != Some(&b'{') {
        return Err(ProofError::Malformed("header is not a json object"));
    }
    let header: RawHeader = serde_json::from_slice(&header_json)
        .map_err(|_| ProofError::Malformed("header is not a json object with unique members"))?;
    for (forbidden, message) in [
        (header.crit.is_some(), "header member `crit` is not accepted"),
        (header.kid.is_some(), "header member `kid` is not accepted"),
        (header.jku.is_some(), "header member `jku` is not accepted"),
        (header.x5u.is_some(), "header member `x5u` is not accepted"),
        (header.x5c.is_some(), "header member `x5c` is not accepted"),
    ] {
        if forbidden {
            return Err(ProofError::Malformed(message));
        }
    }
    // RFC 8725 section 3.11: compare the type case-insensitively.
    if !header.typ.as_deref().is_some_and(|t| t.eq_ignore_ascii_case(PROOF_TYP)) {
        return Err(ProofError::Type);
    }
    let alg = match header.alg.as_deref() {
        Some("ES256") => Algorithm::Es256,
        Some("EdDSA") => Algorithm::EdDsa,
        _ => return Err(ProofError::Algorithm),
    };
    let jwk = public_jwk(header.jwk.as_ref().ok_or(ProofError::Key("missing"))?, alg)?;
    let key = jwk
        .verification_key()
        .map_err(|_| ProofError::Key("not a public key of `alg`"))?;
    let signature = decode(signature_b64)?;
    let signing_input = proof
        .get(..header_b64.len() + 1 + payload_b64.len())
        .ok_or(ProofError::Malformed(SEGMENTS))?;
    if signature.len() != 64 || key.verify(signing_input.as_bytes(), &signature).is_err() {
        return Err(ProofError::Signature);
    }

    let payload = decode(payload_b64)?;
    if payload.trim_ascii_start().first() != Some(&b'{') {
        return Err(ProofError::Malformed("claims are not a json object"));
    }
    let claims: RawClaims = serde_json::from_slice(&payload)
        .map_err(|_| ProofError::Malformed("claims are not a json object with unique members"))?;
    if claims.htm.as_deref() != Some(check.htm) {
        return Err(ProofError::Method(check.htm.to_owned()));
    }
    if !claims.htu.as_deref().is_some_and(|htu| htu_matches(htu, check.htu)) {
        return Err(ProofError::Target(check.htu.to_owned()));
    }
    let jti = claims.jti.ok_or(ProofError::Jti)?;
    if jti.is_empty() || jti.len() > MAX_PROOF_JTI_LEN || !jti.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ProofError::Jti);
    }
    let iat = claims
        .iat
        .and_then(|secs| DateTime::from_timestamp(secs, 0))
        .ok_or(ProofError::Malformed("`iat` is missing or out of range"))?;
    let max_age = check.max_age.clamp(Duration::zero(), PROOF_MAX_AGE);
    if iat < check.now - max_age {
        return Err(ProofError::Stale(max_age.num_seconds()));
    }
    if iat > check.now + bounded_leeway(check.leeway) {
        return Err(ProofError::Future);
    }
    if let Some(token) = check.access_token {
        let expected = access_token_hash(token);
        if claims.ath.as_deref() != Some(expected.as_str()) {
            return Err(ProofError::AccessTokenHash);
        }
    }
    // A nonce is at most what this crate's sources issue, with some room
    // for another server's; longer is refused rather than carried.
    if claims.nonce.as_ref().is_some_and(|n| n.is_empty() || n.len() > 256) {
        return Err(ProofError::Malformed("`nonce` is empty or longer than 256 bytes"));
    }
    check_content_digest(claims.content_digest.as_deref(), content)?;
    Ok(VerifiedProof {
        jkt: jwk.thumbprint(),
        jti,
        iat,
        nonce: claims.nonce,
    })
}

/// `leeway` within 0 and [`MAX_LEEWAY_SECS`].
fn bounded_leeway(leeway: Duration) -> Duration {
    leeway.clamp(Duration::zero(), Duration::seconds(MAX_LEEWAY_SECS))
}

/// Whether a proof's `htu` is the expected one. An absolute http(s) target
/// (a resource server's request URL) compares normalised (RFC 9449 section
/// 4.3 step 9, [`normalize_htu`]), the proof's own `htu` without a query or
/// fragment (section 4.2); any other target (the broker's gRPC method path)
/// compares exactly.
fn htu_matches(htu: &str, expected: &str) -> bool {
    match normalize_htu(expected) {
        Some(want) => !htu.contains(['?', '#']) && normalize_htu(htu).is_some_and(|got| got == want),
        None => htu == expected,
    }
}

/// RFC 9449 section 4.3 step 9 with RFC 3986 section 6.2.2 and 6.2.3: the
/// URL without query and fragment, scheme and host lowercased, the default
/// port dropped and an empty path made `/`. `None` for anything but an
/// absolute http(s) URL without user info.
pub fn normalize_htu(url: &str) -> Option<String> {
    let url = url.split(['?', '#']).next().unwrap_or_default();
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => ":443",
        "http" => ":80",
        _ => return None,
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') || authority.chars().any(char::is_whitespace) {
        return None;
    }
    let authority = authority.to_ascii_lowercase();
    let authority = authority.strip_suffix(default_port).unwrap_or(&authority);
    Some(format!("{scheme}://{authority}{path}"))
}

/// A proof signed by `key` for `htm` `htu` at `iat`, with `jti` and, when
/// presenting `access_token`, its `ath`. The header carries the public JWK
/// (`kty`, `crv`, `x`, `y`) and nothing private.
pub fn sign_proof(
    key: &SigningKey,
    htm: &str,
    htu: &str,
    jti: &str,
    iat: DateTime<Utc>,
    access_token: Option<&str>,
) -> Result<String, KeyError> {
    sign_proof_with_nonce(key, htm, htu, jti, iat, access_token, None)
}

/// [`sign_proof`] with the server-provided `nonce` (RFC 9449 section 8).
pub fn sign_proof_with_nonce(
    key: &SigningKey,
    htm: &str,
    htu: &str,
    jti: &str,
    iat: DateTime<Utc>,
    access_token: Option<&str>,
    nonce: Option<&str>,
) -> Result<String, KeyError> {
    sign_proof_claims(
        key,
        &ProofClaims {
            htm,
            htu,
            jti,
            iat,
            access_token,
            nonce,
            body: None,
        },
    )
}

/// The claims of a proof to sign with [`sign_proof_claims`].
#[derive(Debug, Clone, Copy)]
pub struct ProofClaims<'a> {
    /// `htm`.
    pub htm: &'a str,
    /// `htu`.
    pub htu: &'a str,
    /// `jti`.
    pub jti: &'a str,
    /// `iat`.
    pub iat: DateTime<Utc>,
    /// The access token presented with the proof: its hash is `ath`.
    pub access_token: Option<&'a str>,
    /// The server-provided `nonce` (RFC 9449 section 8).
    pub nonce: Option<&'a str>,
    /// The request body, whose [`content_digest`] the proof then carries.
    pub body: Option<&'a [u8]>,
}

/// A proof of exactly `claims`, signed by `key`.
pub fn sign_proof_claims(key: &SigningKey, claims: &ProofClaims<'_>) -> Result<String, KeyError> {
    let ProofClaims {
        htm,
        htu,
        jti,
        iat,
        access_token,
        nonce,
        body,
    } = *claims;
    let header = serde_json::json!({ "typ": PROOF_TYP, "alg": key.algorithm().as_jose(), "jwk": public_members(key) });
    let mut claims = serde_json::json!({ "jti": jti, "htm": htm, "htu": htu, "iat": iat.timestamp() });
    if let (Some(token), Some(map)) = (access_token, claims.as_object_mut()) {
        map.insert("ath".into(), access_token_hash(token).into());
    }
    if let (Some(nonce), Some(map)) = (nonce, claims.as_object_mut()) {
        map.insert("nonce".into(), nonce.into());
    }
    if let (Some(body), Some(map)) = (body, claims.as_object_mut()) {
        map.insert(CONTENT_DIGEST_CLAIM.into(), content_digest(body).into());
    }
    let header = serde_json::to_vec(&header).map_err(KeyError::Claims)?;
    let claims = serde_json::to_vec(&claims).map_err(KeyError::Claims)?;
    key.sign_compact(&header, &claims)
}

/// The public JWK members of `key` a proof header carries: `kty`, `crv`,
/// `x`, and `y` for P-256.
fn public_members(key: &SigningKey) -> serde_json::Value {
    let jwk = key.public_jwk();
    let mut public = serde_json::Map::new();
    public.insert("kty".into(), jwk.kty.clone().into());
    public.insert("crv".into(), jwk.crv.clone().into());
    public.insert("x".into(), jwk.x.clone().into());
    if let Some(y) = &jwk.y {
        public.insert("y".into(), y.clone().into());
    }
    serde_json::Value::Object(public)
}

/// A resource server's check of a `cnf.jkt`-bound token presented with
/// `proof`: the proof verifies for `check` (whose `access_token` must be the
/// presented token, so `ath` is required) and its key's thumbprint is `jkt`.
/// The `jti`'s single use is the caller's (see [`VerifiedProof::replay_id`]).
pub fn check_key_binding(jkt: &str, proof: &str, check: &ProofCheck<'_>) -> Result<VerifiedProof, ProofError> {
    check_key_binding_with_content(jkt, proof, check, &ContentCheck::NONE)
}

/// [`check_key_binding`] with the proof's `content_digest` checked against
/// `content`.
pub fn check_key_binding_with_content(
    jkt: &str,
    proof: &str,
    check: &ProofCheck<'_>,
    content: &ContentCheck<'_>,
) -> Result<VerifiedProof, ProofError> {
    if check.access_token.is_none() {
        return Err(ProofError::AccessTokenHash);
    }
    let verified = verify_proof_with_content(proof, check, content)?;
    // Thumbprints are public; a plain comparison leaks nothing secret.
    if verified.jkt != jkt {
        return Err(ProofError::WrongKey);
    }
    Ok(verified)
}

/// Whether a `cnf.x5t#S256`-bound token is presented over mTLS with the
/// certificate it is bound to (`der`, the client leaf).
pub fn certificate_matches(x5t_s256: &str, der: &[u8]) -> bool {
    certificate_thumbprint(der) == x5t_s256
}

/// `ath` (RFC 9449 section 4.2): base64url SHA-256 of the access token.
pub fn access_token_hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()))
}

/// `x5t#S256` (RFC 8705 section 3.1) of a certificate: base64url SHA-256
/// of its DER.
pub fn certificate_thumbprint(der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, der))
}

/// The header's `jwk` as a public key of `alg`, refusing private and
/// unknown members.
fn public_jwk(members: &serde_json::Map<String, serde_json::Value>, alg: Algorithm) -> Result<Jwk, ProofError> {
    if members.keys().any(|k| !PUBLIC_MEMBERS.contains(&k.as_str())) {
        return Err(ProofError::Key("it has a private or unknown member"));
    }
    let text = |name: &str| match members.get(name) {
        None => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ProofError::Key("a member is not a string")),
    };
    if let Some(declared) = text("alg")?
        && declared != alg.as_jose()
    {
        return Err(ProofError::Key("its `alg` is not the header's"));
    }
    if text("use")?.is_some_and(|u| u != "sig") {
        return Err(ProofError::Key("its `use` is not `sig`"));
    }
    Ok(Jwk {
        kty: text("kty")?.ok_or(ProofError::Key("no `kty`"))?,
        crv: text("crv")?.ok_or(ProofError::Key("no `crv`"))?,
        x: text("x")?.ok_or(ProofError::Key("no `x`"))?,
        y: text("y")?,
        kid: String::new(),
        alg,
        key_use: "sig".to_owned(),
    })
}

#[cfg(test)]
mod tests;
