//! OIDC/JWT attestation: a compact JWS from a configured issuer, hardened per
//! RFC 8725. Every token is hostile input; in order:
//!
//! 1. at most [`MAX_JWT_LEN`] bytes, exactly three segments, each non-empty
//!    unpadded base64url, checked before anything is decoded;
//! 2. the header (at most [`MAX_HEADER_LEN`] bytes decoded) is a JSON object
//!    with unique members drawn only from `alg`, `kid`, `typ`: `jku`,
//!    `x5u`, `jwk`, `x5c`, `crit` and every other member are refused, so no
//!    header can point the broker at a key or a URL;
//! 3. `alg` is compared case-sensitively against the asymmetric algorithms
//!    ([`JwtAlgorithm`]): `none`, `None`, `HS256` and friends never match,
//!    and no HMAC code path exists; `kid` is required and only ever used as a
//!    map key (no `/`, `\`, quotes, `..`, controls; at most 256 bytes);
//! 4. the payload (at most [`MAX_PAYLOAD_LEN`] bytes) is a JSON object with
//!    unique top-level members, and its `iss` must equal a configured
//!    issuer exactly: an unknown issuer is refused before any key is looked
//!    up or fetched ([`parse`] ends here, with no I/O and nothing trusted);
//! 5. the issuer's algorithm allow-list, then its key by `kid` (whose type,
//!    and `alg` if pinned, must fit), then `jsonwebtoken` (its pure-Rust
//!    backend only) with a [`jsonwebtoken::Validation`] set explicitly: that
//!    one algorithm, the signature, `iss`, `aud`, and `exp`, `iss`, `aud`
//!    required (`iat` is required by step 6: the crate cannot require it);
//! 6. only then the time claims, against the broker's injectable clock
//!    (`jsonwebtoken` reads the wall clock, so its own `exp`/`nbf` checks
//!    are switched off, explicitly): `exp`, `nbf` and `iat` with the
//!    issuer's bounded leeway and a maximum token age; then several
//!    audiences are refused unless the issuer allows them, a `jti` is
//!    required when the issuer is single-use, and the mapping rule must
//!    yield a SPIFFE ID in one of the issuer's trust domains.
//!
//! Single use of `jti` is the caller's (it needs the shared store):
//! [`JwtAttestation::replay_until`] says how long to remember it.

use std::collections::BTreeSet;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use serde::de::{IgnoredAny, MapAccess, Visitor};

use super::jwks::{IssuerKeys, MAX_KID_LEN};
use super::mapping::{ClaimMapping, MappingError};
use crate::error::ErrorKind;
use crate::identity::SpiffeId;

/// Longest attestation token accepted, in bytes; longer ones are refused unread.
pub const MAX_JWT_LEN: usize = 8 * 1024;
/// Longest decoded header, in bytes.
pub const MAX_HEADER_LEN: usize = 1024;
/// Longest decoded payload, in bytes.
pub const MAX_PAYLOAD_LEN: usize = 6 * 1024;
/// Longest `jti` accepted, in bytes.
pub const MAX_JTI_LEN: usize = 256;
/// Largest leeway an issuer may be configured with.
pub const MAX_LEEWAY: Duration = Duration::minutes(5);
/// Longest maximum token age an issuer may be configured with.
pub const MAX_TOKEN_AGE: Duration = Duration::hours(24);
/// Most audiences in one token's `aud`.
const MAX_AUDIENCES: usize = 16;

/// The asymmetric JWS algorithms an issuer may be configured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum JwtAlgorithm {
    /// ECDSA P-256 with SHA-256.
    Es256,
    /// ECDSA P-384 with SHA-384.
    Es384,
    /// Ed25519.
    EdDsa,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PSS with SHA-256.
    Ps256,
}

impl JwtAlgorithm {
    /// Every algorithm, in allow-list order.
    pub const ALL: [Self; 5] = [Self::Es256, Self::Es384, Self::EdDsa, Self::Rs256, Self::Ps256];

    /// The algorithm named exactly `alg` (case-sensitive, RFC 7518).
    pub fn from_jose(alg: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_jose() == alg)
    }

    /// The JOSE name.
    pub fn as_jose(self) -> &'static str {
        match self {
            Self::Es256 => "ES256",
            Self::Es384 => "ES384",
            Self::EdDsa => "EdDSA",
            Self::Rs256 => "RS256",
            Self::Ps256 => "PS256",
        }
    }
}

impl fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_jose())
    }
}

/// One configured issuer and what its tokens must satisfy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerPolicy {
    /// The issuer's name in config, logs and audit.
    pub name: String,
    /// The exact `iss` its tokens carry.
    pub issuer: String,
    /// The audience this broker expects in `aud`.
    pub audience: String,
    /// Accept an `aud` that lists other audiences besides ours.
    pub allow_multiple_audiences: bool,
    /// Algorithms accepted from this issuer; never empty.
    pub algorithms: BTreeSet<JwtAlgorithm>,
    /// A token whose `iat` is older than this is refused.
    pub max_age: Duration,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`; at most [`MAX_LEEWAY`].
    pub leeway: Duration,
    /// Require a `jti` and let the caller refuse its second use.
    pub single_use_jti: bool,
    /// Claims to SPIFFE ID.
    pub mapping: ClaimMapping,
    /// Trust domains the mapped ID may be in.
    pub trust_domains: BTreeSet<String>,
}

/// Why an attestation token was refused. The message never contains the
/// token, any part of it, or a claim value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    /// Longer than [`MAX_JWT_LEN`].
    #[error("attestation token is longer than {MAX_JWT_LEN} bytes")]
    TooLong,
    /// Not three non-empty base64url segments, or a header or payload of the
    /// wrong shape or size.
    #[error("attestation token is malformed: {0}")]
    Malformed(&'static str),
    /// A header member that is never accepted.
    #[error("attestation token header member `{0}` is not accepted")]
    ForbiddenHeader(String),
    /// `alg` is missing, not an asymmetric algorithm we know, or not allowed
    /// for the issuer.
    #[error("attestation token algorithm is not allowed")]
    Algorithm,
    /// `kid` is missing, too long, or has characters a key id never has.
    #[error("attestation token key id is missing or not acceptable")]
    KeyId,
    /// `iss` is missing or not a configured issuer.
    #[error("attestation token issuer is not configured")]
    Issuer,
    /// No key of the issuer has the token's `kid`.
    #[error("attestation token key id is not among issuer `{0}`'s keys")]
    UnknownKey(String),
    /// The key named by `kid` does not fit `alg`.
    #[error("attestation token algorithm does not match its key")]
    AlgorithmMismatch,
    /// The signature does not verify.
    #[error("attestation token signature is invalid")]
    Signature,
    /// `aud` is missing or does not name this broker.
    #[error("attestation token is not for this broker (`aud`)")]
    Audience,
    /// `aud` names other audiences too, and the issuer does not allow that.
    #[error("attestation token names several audiences; issuer `{0}` allows one")]
    MultipleAudiences(String),
    /// `exp` is missing, or has passed (beyond the leeway).
    #[error("attestation token has expired or has no `exp`")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("attestation token is not valid yet (`nbf`)")]
    NotYetValid,
    /// `iat` is missing or in the future (beyond the leeway).
    #[error("attestation token has no `iat` or was issued in the future")]
    IssuedInFuture,
    /// `iat` is older than the issuer's maximum age.
    #[error("attestation token is older than issuer `{0}` allows")]
    TooOld(String),
    /// Single use is on and `jti` is missing or unusable.
    #[error("attestation token has no usable `jti` (issuer `{0}` requires one)")]
    Jti(String),
    /// A claim has the wrong type.
    #[error("attestation token claim `{0}` has the wrong type")]
    Claim(&'static str),
    /// The claims do not map to a SPIFFE ID we trust.
    #[error("attestation token claims do not map to an identity: {0}")]
    Mapping(#[from] MappingError),
}

impl JwtError {
    /// Transport-free classification: always the caller's evidence.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Unauthenticated
    }

    /// A short, stable label for metrics (`..._rejected_total{reason=…}`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLong | Self::Malformed(_) => "malformed",
            Self::ForbiddenHeader(_) => "header",
            Self::Algorithm | Self::AlgorithmMismatch => "alg",
            Self::KeyId | Self::UnknownKey(_) => "kid",
            Self::Issuer => "iss",
            Self::Signature => "signature",
            Self::Audience | Self::MultipleAudiences(_) => "aud",
            Self::Expired => "exp",
            Self::NotYetValid => "nbf",
            Self::IssuedInFuture | Self::TooOld(_) => "iat",
            Self::Jti(_) => "jti",
            Self::Claim(_) => "claims",
            Self::Mapping(_) => "mapping",
        }
    }
}

/// A token that passed steps 1 to 4 (module docs): well-formed, an accepted
/// header, and a configured issuer. **Nothing in it is authenticated yet.**
#[derive(Clone)]
pub struct ParsedJwt {
    issuer: usize,
    alg: JwtAlgorithm,
    kid: String,
    /// The compact token as received (never logged: `Debug` omits it).
    token: String,
    claims: serde_json::Map<String, serde_json::Value>,
}

impl fmt::Debug for ParsedJwt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedJwt")
            .field("issuer", &self.issuer)
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl ParsedJwt {
    /// Index of the configured issuer (in the slice given to [`parse`]).
    pub fn issuer_index(&self) -> usize {
        self.issuer
    }

    /// The header's `kid` (checked to be a safe map key).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The header's `alg`.
    pub fn alg(&self) -> JwtAlgorithm {
        self.alg
    }
}

/// A verified attestation token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtAttestation {
    /// The SPIFFE ID the claims map to.
    pub id: SpiffeId,
    /// The issuer's configured name.
    pub issuer: String,
    /// The `jti`, when the issuer is single-use: the caller must check it
    /// was not used before, remembering it until [`Self::replay_until`].
    pub single_use_jti: Option<String>,
    /// `exp` plus leeway: after it, the token is refused anyway.
    pub replay_until: DateTime<Utc>,
}

/// Steps 1 to 4 of the module docs: structure, header, and which configured
/// issuer (by exact `iss`) the token claims to come from.
pub fn parse(token: &str, issuers: &[IssuerPolicy]) -> Result<ParsedJwt, JwtError> {
    parse_with(token, issuers, None)
}

/// [`parse`], but a token without `kid` names `sole_kid` (for a client
/// whose registered key set holds one key: RFC 7523 client assertions are
/// often signed without a `kid`). A `kid` that is present is checked and
/// used as always.
fn parse_with(token: &str, issuers: &[IssuerPolicy], sole_kid: Option<&str>) -> Result<ParsedJwt, JwtError> {
    const SEGMENTS: &str = "expected three non-empty dot-separated segments";
    if token.len() > MAX_JWT_LEN {
        return Err(JwtError::TooLong);
    }
    let mut segments = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (segments.next(), segments.next(), segments.next(), segments.next())
    else {
        return Err(JwtError::Malformed(SEGMENTS));
    };
    for segment in [header_b64, payload_b64, signature_b64] {
        if segment.is_empty() {
            return Err(JwtError::Malformed(SEGMENTS));
        }
        if !segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(JwtError::Malformed("segment is not unpadded base64url"));
        }
    }
    // Bound the decoded sizes from the encoded ones before decoding.
    if header_b64.len() > MAX_HEADER_LEN.div_ceil(3) * 4 {
        return Err(JwtError::Malformed("header is too large"));
    }
    if payload_b64.len() > MAX_PAYLOAD_LEN.div_ceil(3) * 4 {
        return Err(JwtError::Malformed("payload is too large"));
    }
    let header_json = decode(header_b64)?;
    let (alg, kid) = parse_header(&header_json, sole_kid)?;
    let payload = decode(payload_b64)?;
    let claims = json_object(&payload, "payload")?;
    let iss = match claims.get("iss") {
        Some(serde_json::Value::String(iss)) => iss,
        Some(_) => return Err(JwtError::Claim("iss")),
        None => return Err(JwtError::Issuer),
    };
    let issuer = issuers.iter().position(|p| &p.issuer == iss).ok_or(JwtError::Issuer)?;
    decode(signature_b64)?;
    Ok(ParsedJwt {
        issuer,
        alg,
        kid,
        token: token.to_owned(),
        claims,
    })
}

/// Steps 5 and 6 of the module docs, for a token from [`parse`] against
/// its issuer's `policy` and `keys`, at `now`.
pub fn verify(
    parsed: &ParsedJwt,
    policy: &IssuerPolicy,
    keys: &IssuerKeys,
    now: DateTime<Utc>,
) -> Result<JwtAttestation, JwtError> {
    let audiences = [policy.audience.as_str()];
    let checked = check_signed(parsed, policy, keys, now, &audiences, policy.single_use_jti)?;
    let id = policy.mapping.map(&parsed.claims)?;
    if !policy.trust_domains.contains(id.trust_domain()) {
        return Err(JwtError::Mapping(MappingError::TrustDomain));
    }
    Ok(JwtAttestation {
        id,
        issuer: policy.name.clone(),
        single_use_jti: checked.jti,
        replay_until: checked.replay_until,
    })
}

/// The same checks as [`verify`], for a token presented as an OAuth
/// assertion (RFC 7523: the `jwt-bearer` grant): its `aud` must name one of
/// `audiences` (the token endpoint URL or the broker's issuer identifier,
/// never the issuer's gRPC attestation audience) and no other audience,
/// and it must carry a `jti`,
/// whatever the issuer's `single_use_jti` says (RFC 7523 section 3 item 7:
/// an assertion is used once). Everything else, the mapping to a SPIFFE ID
/// included, is the issuer's policy, exactly as on the gRPC port.
pub fn verify_assertion(
    parsed: &ParsedJwt,
    policy: &IssuerPolicy,
    keys: &IssuerKeys,
    now: DateTime<Utc>,
    audiences: &[&str],
) -> Result<JwtAttestation, JwtError> {
    let checked = check_signed(parsed, policy, keys, now, audiences, true)?;
    // Here an assertion names this server alone, whatever the issuer's
    // `allow_multiple_audiences` (the gRPC port's opt-in): a JWT-SVID for
    // several audiences is also a credential held by each of the others,
    // any of which could redeem it here for a token of its subject.
    if matches!(parsed.claims.get("aud"), Some(serde_json::Value::Array(list)) if list.len() > 1) {
        return Err(JwtError::MultipleAudiences(policy.name.clone()));
    }
    let id = policy.mapping.map(&parsed.claims)?;
    if !policy.trust_domains.contains(id.trust_domain()) {
        return Err(JwtError::Mapping(MappingError::TrustDomain));
    }
    Ok(JwtAttestation {
        id,
        issuer: policy.name.clone(),
        replay_until: checked.assertion_replay_until(),
        single_use_jti: checked.jti,
    })
}

/// Longest age of a `private_key_jwt` client assertion (RFC 7523 section
/// 2.2): a client signs a fresh one for every request.
pub const CLIENT_ASSERTION_MAX_AGE: Duration = Duration::minutes(5);

/// A verified `private_key_jwt` client assertion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAssertion {
    /// Its `jti`: the caller records it as used until [`Self::replay_until`].
    pub jti: String,
    /// `exp` plus leeway.
    pub replay_until: DateTime<Utc>,
}

/// RFC 7523 section 3 for client authentication (`private_key_jwt`, RFC
/// 7523 section 2.2): `iss` and `sub` are both exactly `client` (the
/// registered identity), the signature is by one of `keys` (the keys
/// registered for that identity, by `kid`, which may be left out when one
/// key is registered), `aud` names one of `audiences`,
/// `exp`, `iat` (at most [`CLIENT_ASSERTION_MAX_AGE`] old) and `jti` are
/// required. The same hardened parse and signature check as attestation
/// tokens (module docs, steps 1 to 6): no `none`, no HMAC, no header keys.
pub fn verify_client_assertion(
    token: &str,
    client: &SpiffeId,
    keys: &IssuerKeys,
    audiences: &[&str],
    now: DateTime<Utc>,
    leeway: Duration,
) -> Result<ClientAssertion, JwtError> {
    let policy = IssuerPolicy {
        name: client.to_string(),
        issuer: client.to_string(),
        audience: audiences.first().copied().unwrap_or_default().to_owned(),
        allow_multiple_audiences: false,
        algorithms: JwtAlgorithm::ALL.into_iter().collect(),
        max_age: CLIENT_ASSERTION_MAX_AGE,
        leeway,
        single_use_jti: true,
        // The subject is pinned to `client` below; no claim is mapped.
        mapping: ClaimMapping::pinned(client),
        trust_domains: BTreeSet::from([client.trust_domain().to_owned()]),
    };
    let parsed = parse_with(token, std::slice::from_ref(&policy), keys.sole_kid())?;
    let checked = check_signed(&parsed, &policy, keys, now, audiences, true)?;
    match parsed.claims.get("sub") {
        Some(serde_json::Value::String(sub)) if sub == client.as_str() => {}
        _ => return Err(JwtError::Mapping(MappingError::Missing("sub".to_owned()))),
    }
    let replay_until = checked.assertion_replay_until();
    let jti = checked.jti.ok_or_else(|| JwtError::Jti(policy.name.clone()))?;
    Ok(ClientAssertion { jti, replay_until })
}

/// What [`check_signed`] found.
struct Checked {
    jti: Option<String>,
    replay_until: DateTime<Utc>,
    /// After this the token is refused as too old, whatever its `exp`.
    too_old_after: DateTime<Utc>,
}

impl Checked {
    /// How long a single-use assertion's `jti` must be remembered: until
    /// it would be refused anyway, by `exp` or by its age. A far `exp`
    /// cannot make the replay cache keep it for longer.
    fn assertion_replay_until(&self) -> DateTime<Utc> {
        self.replay_until.min(self.too_old_after)
    }
}

/// Steps 5 and 6 of the module docs but the mapping: the signature, `iss`,
/// `aud` (one of `audiences`), the time claims and, when `require_jti`, a
/// usable `jti`.
fn check_signed(
    parsed: &ParsedJwt,
    policy: &IssuerPolicy,
    keys: &IssuerKeys,
    now: DateTime<Utc>,
    expected_audiences: &[&str],
    require_jti: bool,
) -> Result<Checked, JwtError> {
    if expected_audiences.is_empty() {
        return Err(JwtError::Audience);
    }
    if !policy.algorithms.contains(&parsed.alg) {
        return Err(JwtError::Algorithm);
    }
    let key = keys
        .get(&parsed.kid)
        .ok_or_else(|| JwtError::UnknownKey(policy.name.clone()))?;
    if !key.permits(parsed.alg) {
        return Err(JwtError::AlgorithmMismatch);
    }
    let leeway = policy.leeway.min(MAX_LEEWAY);
    jsonwebtoken::decode::<IgnoredAny>(
        &parsed.token,
        &key.decoding_key(),
        &validation(parsed.alg, policy, leeway, expected_audiences),
    )
    .map_err(|e| refused_by_jose(&e))?;
    let claims = &parsed.claims;

    // aud: a string, or an array of strings.
    let audiences: Vec<&str> = match claims.get("aud") {
        Some(serde_json::Value::String(a)) => vec![a.as_str()],
        Some(serde_json::Value::Array(list)) if !list.is_empty() && list.len() <= MAX_AUDIENCES => list
            .iter()
            .map(|a| a.as_str().ok_or(JwtError::Claim("aud")))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(JwtError::Claim("aud")),
        None => return Err(JwtError::Audience),
    };
    if !audiences.iter().any(|a| expected_audiences.contains(a)) {
        return Err(JwtError::Audience);
    }
    if audiences.len() > 1 && !policy.allow_multiple_audiences {
        return Err(JwtError::MultipleAudiences(policy.name.clone()));
    }

    let exp = time_claim(claims, "exp")?.ok_or(JwtError::Expired)?;
    // Valid while now < exp (RFC 7519 4.1.4), stretched by the leeway; an
    // `exp` at the end of time saturates rather than overflows.
    let valid_until = exp.checked_add_signed(leeway).unwrap_or(DateTime::<Utc>::MAX_UTC);
    if now >= valid_until {
        return Err(JwtError::Expired);
    }
    if let Some(nbf) = time_claim(claims, "nbf")?
        && now + leeway < nbf
    {
        return Err(JwtError::NotYetValid);
    }
    let iat = time_claim(claims, "iat")?.ok_or(JwtError::IssuedInFuture)?;
    if now + leeway < iat {
        return Err(JwtError::IssuedInFuture);
    }
    let max_age = policy.max_age.min(MAX_TOKEN_AGE);
    if now - iat > max_age {
        return Err(JwtError::TooOld(policy.name.clone()));
    }

    let single_use_jti = if require_jti {
        match claims.get("jti") {
            Some(serde_json::Value::String(jti))
                if !jti.is_empty() && jti.len() <= MAX_JTI_LEN && jti.bytes().all(|b| b.is_ascii_graphic()) =>
            {
                Some(jti.clone())
            }
            _ => return Err(JwtError::Jti(policy.name.clone())),
        }
    } else {
        None
    };
    Ok(Checked {
        jti: single_use_jti,
        replay_until: valid_until,
        too_old_after: iat + max_age + Duration::seconds(1),
    })
}

/// What `jsonwebtoken` checks, every field set here rather than left to
/// the crate's defaults.
fn validation(
    alg: JwtAlgorithm,
    policy: &IssuerPolicy,
    leeway: Duration,
    audiences: &[&str],
) -> jsonwebtoken::Validation {
    let alg = match alg {
        JwtAlgorithm::Es256 => jsonwebtoken::Algorithm::ES256,
        JwtAlgorithm::Es384 => jsonwebtoken::Algorithm::ES384,
        JwtAlgorithm::EdDsa => jsonwebtoken::Algorithm::EdDSA,
        JwtAlgorithm::Rs256 => jsonwebtoken::Algorithm::RS256,
        JwtAlgorithm::Ps256 => jsonwebtoken::Algorithm::PS256,
    };
    let mut v = jsonwebtoken::Validation::new(alg);
    v.algorithms = vec![alg];
    // (jsonwebtoken has no way to require `iat`; step 6 does.)
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    v.set_issuer(&[policy.issuer.as_str()]);
    v.set_audience(audiences);
    v.validate_aud = true;
    v.leeway = u64::try_from(leeway.num_seconds()).unwrap_or(0);
    v.reject_tokens_expiring_in_less_than = 0;
    // Step 6 checks exp, nbf and iat against the broker's clock with this
    // same leeway; jsonwebtoken could only use the wall clock.
    v.validate_exp = false;
    v.validate_nbf = false;
    v
}

/// The refusal for what `jsonwebtoken` refused.
fn refused_by_jose(e: &jsonwebtoken::errors::Error) -> JwtError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidAlgorithm | K::MissingAlgorithm | K::InvalidAlgorithmName => JwtError::Algorithm,
        K::InvalidIssuer => JwtError::Issuer,
        K::InvalidAudience => JwtError::Audience,
        K::ExpiredSignature => JwtError::Expired,
        K::ImmatureSignature => JwtError::NotYetValid,
        K::MissingRequiredClaim(claim) => match claim.as_str() {
            "exp" => JwtError::Expired,
            "aud" => JwtError::Audience,
            "iss" => JwtError::Issuer,
            _ => JwtError::Claim("a required claim"),
        },
        K::InvalidClaimFormat(_) | K::InvalidSubject => JwtError::Claim("a registered claim"),
        K::Json(_) | K::Utf8(_) | K::Base64(_) | K::InvalidToken => JwtError::Malformed("rejected by the JOSE parser"),
        // InvalidSignature, a key the backend cannot use, anything newer.
        _ => JwtError::Signature,
    }
}

fn decode(segment: &str) -> Result<Vec<u8>, JwtError> {
    // The engine also refuses a length of 1 mod 4 and non-zero trailing
    // bits, so every token has exactly one encoding.
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| JwtError::Malformed("segment is not unpadded base64url"))
}

/// The header members we accept; anything else is refused by name.
const HEADER_MEMBERS: [&str; 3] = ["alg", "kid", "typ"];

#[derive(Deserialize)]
struct RawHeader {
    alg: Option<String>,
    kid: Option<String>,
    typ: Option<serde_json::Value>,
}

fn parse_header(json: &[u8], sole_kid: Option<&str>) -> Result<(JwtAlgorithm, String), JwtError> {
    if json.len() > MAX_HEADER_LEN {
        return Err(JwtError::Malformed("header is too large"));
    }
    let names = member_names(json, "header")?;
    if let Some(forbidden) = names.iter().find(|n| !HEADER_MEMBERS.contains(&n.as_str())) {
        // The member name comes from the token: show it only when it is one
        // we name ourselves, else a neutral placeholder.
        let shown = [
            "jku", "x5u", "jwk", "x5c", "crit", "x5t", "x5t#S256", "b64", "zip", "cty", "enc",
        ]
        .into_iter()
        .find(|known| known == forbidden)
        .unwrap_or("(other)");
        return Err(JwtError::ForbiddenHeader(shown.to_owned()));
    }
    let raw: RawHeader =
        serde_json::from_slice(json).map_err(|_| JwtError::Malformed("header is not a json object"))?;
    let alg = raw
        .alg
        .as_deref()
        .and_then(JwtAlgorithm::from_jose)
        .ok_or(JwtError::Algorithm)?;
    match raw.typ {
        None => {}
        Some(serde_json::Value::String(t)) if t.len() <= 64 => {}
        Some(_) => return Err(JwtError::Malformed("`typ` is not a short string")),
    }
    let kid = raw.kid.or_else(|| sole_kid.map(str::to_owned)).ok_or(JwtError::KeyId)?;
    if !super::is_safe_key(&kid, MAX_KID_LEN) {
        return Err(JwtError::KeyId);
    }
    Ok((alg, kid))
}

fn json_object(json: &[u8], what: &'static str) -> Result<serde_json::Map<String, serde_json::Value>, JwtError> {
    if json.len() > MAX_PAYLOAD_LEN {
        return Err(JwtError::Malformed("payload is too large"));
    }
    member_names(json, what)?;
    serde_json::from_slice(json).map_err(|_| JwtError::Malformed("payload is not a json object"))
}

/// The top-level member names of a JSON object, refusing anything that is
/// not an object and any duplicate member (parsers disagree on which of two
/// duplicates wins; we accept neither).
fn member_names(json: &[u8], what: &'static str) -> Result<Vec<String>, JwtError> {
    struct Names;
    impl<'de> Visitor<'de> for Names {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a json object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut names: Vec<String> = Vec::new();
            while let Some(name) = map.next_key::<String>()? {
                if names.contains(&name) {
                    return Err(serde::de::Error::custom("duplicate member"));
                }
                names.push(name);
                map.next_value::<IgnoredAny>()?;
            }
            Ok(names)
        }
    }
    let malformed = match what {
        "header" => "header is not a json object with unique members",
        _ => "payload is not a json object with unique members",
    };
    let mut de = serde_json::Deserializer::from_slice(json);
    let names = serde::Deserializer::deserialize_map(&mut de, Names).map_err(|_| JwtError::Malformed(malformed))?;
    de.end().map_err(|_| JwtError::Malformed(malformed))?;
    Ok(names)
}

/// A NumericDate claim (seconds, integer or fraction); `None` when absent.
fn time_claim(
    claims: &serde_json::Map<String, serde_json::Value>,
    name: &'static str,
) -> Result<Option<DateTime<Utc>>, JwtError> {
    let Some(value) = claims.get(name) else {
        return Ok(None);
    };
    let secs = match value.as_i64() {
        Some(s) => s,
        None => match value.as_f64() {
            #[expect(clippy::cast_possible_truncation, reason = "range checked just before")]
            Some(f) if f.is_finite() && f.abs() < 1e12 => f.floor() as i64,
            _ => return Err(JwtError::Claim(name)),
        },
    };
    DateTime::from_timestamp(secs, 0).map(Some).ok_or(JwtError::Claim(name))
}
