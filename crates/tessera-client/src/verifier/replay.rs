//! DPoP (RFC 9449): checking a proof a resource server receives with a
//! `cnf.jkt`-bound token (section 4.3 and 7.1), the bounded `jti` replay
//! cache (section 11.1), and [`DpopKey`], which signs proofs for clients.
//!
//! A proof is hostile input like a token: its size is bounded before
//! decoding, only unpadded base64url is read, the header must be
//! `typ: dpop+jwt` with an asymmetric `alg` we allow and a public `jwk`
//! (never a private one), and `jku`, `x5u`, `x5c`, `kid` and `crit` are
//! refused so that no key is looked up anywhere but in the proof itself.

use std::collections::{HashMap, VecDeque};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use serde::Deserialize;
use serde::de::IgnoredAny;
use tessera_core::token::{Algorithm, Jwk};

use super::error::VerifyError;

/// The `typ` of a DPoP proof.
pub const DPOP_TYP: &str = "dpop+jwt";
/// Longest proof accepted, in bytes.
pub const MAX_PROOF_LEN: usize = 8 * 1024;
/// Longest proof `jti` accepted, in bytes.
const MAX_JTI_LEN: usize = 256;

/// What the proof must match: the request it came with and the token it
/// accompanies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expected<'a> {
    /// The request's HTTP method.
    pub(crate) method: &'a str,
    /// The request's URL (query and fragment are ignored).
    pub(crate) url: &'a str,
    /// The access token the proof accompanies.
    pub(crate) access_token: &'a str,
    /// The token's `cnf.jkt`.
    pub(crate) jkt: &'a str,
    /// Now, on the verifier's clock.
    pub(crate) now: DateTime<Utc>,
    /// Oldest acceptable `iat`, as an age.
    pub(crate) max_age_secs: i64,
    /// Clock skew tolerated for an `iat` in the future.
    pub(crate) leeway_secs: i64,
}

/// A proof that passed every check but the replay check: the key to
/// remember it by and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CheckedProof {
    pub(crate) replay_key: String,
    pub(crate) remember_until: i64,
}

#[derive(Deserialize)]
struct RawHeader {
    typ: Option<String>,
    alg: Option<String>,
    jwk: Option<ProofJwk>,
    #[serde(default, deserialize_with = "present")]
    kid: bool,
    #[serde(default, deserialize_with = "present")]
    jku: bool,
    #[serde(default, deserialize_with = "present")]
    x5u: bool,
    #[serde(default, deserialize_with = "present")]
    x5c: bool,
    #[serde(default, deserialize_with = "present")]
    crit: bool,
}

/// The public key in a proof header.
#[derive(Deserialize)]
struct ProofJwk {
    kty: String,
    crv: String,
    x: String,
    #[serde(default)]
    y: Option<String>,
    /// A private key in a proof is refused outright.
    #[serde(default, deserialize_with = "present")]
    d: bool,
}

#[derive(Deserialize)]
struct RawClaims {
    jti: Option<String>,
    htm: Option<String>,
    htu: Option<String>,
    iat: Option<i64>,
    ath: Option<String>,
    #[serde(default)]
    #[expect(dead_code, reason = "a server-provided nonce is not required by this verifier")]
    nonce: Option<IgnoredAny>,
}

fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    IgnoredAny::deserialize(deserializer).map(|_| true)
}

fn b64(segment: &str, what: &'static str) -> Result<Vec<u8>, VerifyError> {
    if !segment
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(VerifyError::Proof(what));
    }
    URL_SAFE_NO_PAD.decode(segment).map_err(|_| VerifyError::Proof(what))
}

/// Checks `proof` against `expected` (RFC 9449 section 4.3, steps 2 to 12,
/// without a server nonce). The replay check is the caller's, with the
/// returned key, once every other check of the request passed.
pub(crate) fn check(proof: &str, expected: &Expected<'_>) -> Result<CheckedProof, VerifyError> {
    if proof.len() > MAX_PROOF_LEN {
        return Err(VerifyError::Proof("proof is too long"));
    }
    let mut parts = proof.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(VerifyError::Proof("proof is not a compact JWS"));
    };
    let header_json = b64(header_b64, "proof header is not base64url")?;
    if header_json.trim_ascii_start().first() != Some(&b'{') {
        return Err(VerifyError::Proof("proof header is not a json object"));
    }
    let header: RawHeader = serde_json::from_slice(&header_json)
        .map_err(|_| VerifyError::Proof("proof header is not a json object with unique members"))?;
    if header.kid || header.jku || header.x5u || header.x5c || header.crit {
        return Err(VerifyError::Proof("proof header names a key or url other than `jwk`"));
    }
    match header.typ.as_deref() {
        Some(typ) if typ.eq_ignore_ascii_case(DPOP_TYP) || typ.eq_ignore_ascii_case("application/dpop+jwt") => {}
        _ => return Err(VerifyError::Proof("proof `typ` is not `dpop+jwt`")),
    }
    let alg: Algorithm = header
        .alg
        .as_deref()
        .and_then(|a| a.parse().ok())
        .ok_or(VerifyError::Proof("proof `alg` is not ES256 or EdDSA"))?;
    let raw_jwk = header.jwk.ok_or(VerifyError::Proof("proof header has no `jwk`"))?;
    if raw_jwk.d {
        return Err(VerifyError::Proof("proof `jwk` contains a private key"));
    }
    let jwk = Jwk {
        kty: raw_jwk.kty,
        crv: raw_jwk.crv,
        x: raw_jwk.x,
        y: raw_jwk.y,
        kid: String::new(),
        alg,
        key_use: "sig".to_owned(),
    };
    let key = jwk
        .verification_key()
        .map_err(|_| VerifyError::Proof("proof `jwk` is not a key of its `alg`"))?;
    let signature = b64(signature_b64, "proof signature is not base64url")?;
    let signing_input = proof
        .get(..header_b64.len() + 1 + payload_b64.len())
        .ok_or(VerifyError::Proof("proof is not a compact JWS"))?;
    key.verify(signing_input.as_bytes(), &signature)
        .map_err(|_| VerifyError::Proof("proof signature is invalid"))?;

    let payload = b64(payload_b64, "proof payload is not base64url")?;
    if payload.trim_ascii_start().first() != Some(&b'{') {
        return Err(VerifyError::Proof("proof payload is not a json object"));
    }
    let claims: RawClaims =
        serde_json::from_slice(&payload).map_err(|_| VerifyError::Proof("proof claims are malformed"))?;
    let jti = claims.jti.ok_or(VerifyError::Proof("proof has no `jti`"))?;
    if jti.is_empty() || jti.len() > MAX_JTI_LEN {
        return Err(VerifyError::Proof("proof `jti` is empty or too long"));
    }
    if claims.htm.as_deref() != Some(expected.method) {
        return Err(VerifyError::Proof("proof `htm` is not this request's method"));
    }
    let htu = claims.htu.ok_or(VerifyError::Proof("proof has no `htu`"))?;
    match (normalize_htu(&htu), normalize_htu(expected.url)) {
        (Some(got), Some(want)) if got == want => {}
        _ => return Err(VerifyError::Proof("proof `htu` is not this request's url")),
    }
    let iat = claims.iat.ok_or(VerifyError::Proof("proof has no `iat`"))?;
    let now = expected.now.timestamp();
    if iat > now.saturating_add(expected.leeway_secs) {
        return Err(VerifyError::Proof("proof `iat` is in the future"));
    }
    if iat < now.saturating_sub(expected.max_age_secs.saturating_add(expected.leeway_secs)) {
        return Err(VerifyError::Proof("proof `iat` is too old"));
    }
    let ath = claims.ath.ok_or(VerifyError::Proof("proof has no `ath`"))?;
    if ath != access_token_hash(expected.access_token) {
        return Err(VerifyError::Proof("proof `ath` is not the hash of this access token"));
    }
    let thumbprint = jwk.thumbprint();
    if thumbprint != expected.jkt {
        return Err(VerifyError::Proof("proof key is not the key the token is bound to"));
    }
    Ok(CheckedProof {
        replay_key: format!("{thumbprint}.{jti}"),
        // A replay is only possible while `iat` is within the window.
        remember_until: iat
            .saturating_add(expected.max_age_secs)
            .saturating_add(expected.leeway_secs)
            .saturating_add(1),
    })
}

/// `ath`: base64url of the SHA-256 of the access token's ASCII bytes.
pub fn access_token_hash(access_token: &str) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, access_token.as_bytes()))
}

/// RFC 9449 section 4.3 step 9 with RFC 3986 section 6.2.2 and 6.2.3: the
/// URL without query and fragment, scheme and host lowercased, the default
/// port dropped and an empty path made `/`. `None` for anything but an
/// absolute http(s) URL.
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

/// Remembers proof `jti`s (per key) until their `iat` leaves the window;
/// holds at most `capacity` and refuses, failing closed, when full.
#[derive(Debug)]
pub(crate) struct ReplayCache {
    seen: HashMap<String, i64>,
    order: VecDeque<(i64, String)>,
    capacity: usize,
}

impl ReplayCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            seen: HashMap::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    /// Records `proof` as used at `now` (seconds); refuses one seen before.
    pub(crate) fn record(&mut self, proof: CheckedProof, now: i64) -> Result<(), VerifyError> {
        self.prune(now);
        if self.seen.get(&proof.replay_key).is_some_and(|until| *until >= now) {
            return Err(VerifyError::ProofReplayed);
        }
        if self.seen.len() >= self.capacity {
            return Err(VerifyError::Capacity("dpop replay cache"));
        }
        self.order.push_back((proof.remember_until, proof.replay_key.clone()));
        self.seen.insert(proof.replay_key, proof.remember_until);
        Ok(())
    }

    /// Forgets entries whose window has passed. Entries are pushed in
    /// arrival order and their windows have one length, so the front is
    /// nearly always the oldest; a late one only waits a little longer.
    fn prune(&mut self, now: i64) {
        while let Some((until, _)) = self.order.front() {
            if *until >= now {
                break;
            }
            if let Some((until, key)) = self.order.pop_front()
                && self.seen.get(&key) == Some(&until)
            {
                self.seen.remove(&key);
            }
        }
    }

    /// How many proofs are remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.seen.len()
    }
}

/// Why a [`DpopKey`] could not be made or sign.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DpopKeyError {
    /// The system random source or *ring* failed.
    #[error("could not {0} the dpop key")]
    Crypto(&'static str),
}

/// A client's DPoP key (ES256): signs a fresh proof for each request. The
/// private key never leaves the process; `Debug` shows the thumbprint only.
pub struct DpopKey {
    pair: EcdsaKeyPair,
    jwk_json: String,
    thumbprint: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for DpopKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpopKey")
            .field("jkt", &self.thumbprint)
            .finish_non_exhaustive()
    }
}

impl DpopKey {
    /// A fresh random P-256 key.
    pub fn generate() -> Result<Self, DpopKeyError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| DpopKeyError::Crypto("generate"))?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|_| DpopKeyError::Crypto("load"))?;
        let point = pair.public_key().as_ref();
        let (Some(x), Some(y)) = (point.get(1..33), point.get(33..65)) else {
            return Err(DpopKeyError::Crypto("encode"));
        };
        let jwk = Jwk {
            kty: "EC".to_owned(),
            crv: "P-256".to_owned(),
            x: URL_SAFE_NO_PAD.encode(x),
            y: Some(URL_SAFE_NO_PAD.encode(y)),
            kid: String::new(),
            alg: Algorithm::Es256,
            key_use: "sig".to_owned(),
        };
        let thumbprint = jwk.thumbprint();
        let jwk_json = serde_json::json!({"kty": jwk.kty, "crv": jwk.crv, "x": jwk.x, "y": jwk.y}).to_string();
        Ok(Self {
            pair,
            jwk_json,
            thumbprint,
            rng,
        })
    }

    /// The RFC 7638 thumbprint of the public key: a bound token's `cnf.jkt`.
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// The public key as a JWK JSON object (no private member).
    pub fn public_jwk_json(&self) -> &str {
        &self.jwk_json
    }

    /// Signs exactly `input` (tests build hostile proofs with it).
    #[cfg(test)]
    pub(crate) fn sign_raw(&self, input: &[u8]) -> Result<Vec<u8>, DpopKeyError> {
        let signature = self
            .pair
            .sign(&self.rng, input)
            .map_err(|_| DpopKeyError::Crypto("sign with"))?;
        Ok(signature.as_ref().to_vec())
    }

    /// A proof for one request: `method` and `url` of the request,
    /// `access_token` (for `ath`) when the proof accompanies one, `iat` in
    /// seconds since the epoch and a unique `jti`.
    pub fn proof(
        &self,
        method: &str,
        url: &str,
        access_token: Option<&str>,
        iat: i64,
        jti: &str,
    ) -> Result<String, DpopKeyError> {
        let header = format!(r#"{{"typ":"{DPOP_TYP}","alg":"ES256","jwk":{}}}"#, self.jwk_json);
        let mut claims = serde_json::json!({"jti": jti, "htm": method, "htu": url, "iat": iat});
        if let (Some(token), Some(map)) = (access_token, claims.as_object_mut()) {
            map.insert("ath".to_owned(), access_token_hash(token).into());
        }
        let mut jws = URL_SAFE_NO_PAD.encode(header);
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(claims.to_string(), &mut jws);
        let signature = self
            .pair
            .sign(&self.rng, jws.as_bytes())
            .map_err(|_| DpopKeyError::Crypto("sign with"))?;
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut jws);
        Ok(jws)
    }
}
