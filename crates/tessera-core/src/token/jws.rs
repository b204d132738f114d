//! Compact JWS (RFC 7515) verification, hardened per RFC 8725.
//!
//! Every token is hostile input. In order, [`verify`]:
//! 1. refuses more than [`MAX_TOKEN_LEN`] bytes before decoding anything;
//! 2. requires exactly three segments of the base64url alphabet without
//!    padding (no `=`, `+`, `/` or whitespace), canonically encoded;
//! 3. requires the header to be a JSON object without duplicate members,
//!    `alg` exactly `ES256` or `EdDSA`, a `typ`, and a `kid` of at most
//!    [`MAX_KID_LEN`] bytes, and refuses `crit`, `jku`, `jwk`, `x5u` and
//!    `x5c` (a key or URL in a header is never followed);
//! 4. matches `typ` against the expected type (case-insensitive, optional
//!    `application/` prefix, RFC 8725 section 3.11);
//! 5. looks the `kid` up in the caller's key set (and only there), requires
//!    the key's algorithm to equal `alg`, and checks the 64-byte signature
//!    with *ring*;
//! 6. only then decodes the payload, which must be a JSON object.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};

use super::Algorithm;
use super::chain::ChainError;
use super::jwk::Jwk;
use crate::error::ErrorKind;

/// Longest token accepted, in bytes; longer ones are refused unread.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Longest `kid` accepted, in bytes.
pub const MAX_KID_LEN: usize = 128;
/// ES256 (`r||s`) and Ed25519 signatures are both 64 bytes.
const SIGNATURE_LEN: usize = 64;

/// Where a verifier finds the public key named by a token's `kid`.
pub trait KeyLookup {
    /// The key whose id is `kid`, if the set has one.
    fn key(&self, kid: &str) -> Option<&Jwk>;
}

/// Why a token was refused. The message never contains the token or any
/// part of it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwsError {
    /// Longer than [`MAX_TOKEN_LEN`].
    #[error("token is longer than {MAX_TOKEN_LEN} bytes")]
    TooLong,
    /// Not a well-formed compact JWS, or a header or payload of the wrong
    /// shape.
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    /// `alg` is missing or not one of `ES256`, `EdDSA`.
    #[error("token algorithm is not allowed")]
    Algorithm,
    /// `alg` is one we sign with but not in this verifier's allow-list.
    #[error("token algorithm `{0}` is not allowed by this verifier")]
    AlgorithmNotAllowed(Algorithm),
    /// `alg` differs from the algorithm of the key named by `kid`.
    #[error("token algorithm does not match its key")]
    AlgorithmMismatch,
    /// The header has a member that is never accepted.
    #[error("token header member `{0}` is not accepted")]
    ForbiddenHeader(&'static str),
    /// `typ` is missing or not the expected type.
    #[error("token type is not the expected type")]
    Type,
    /// No key in the set has the token's `kid`.
    #[error("token key id is not in the key set")]
    UnknownKey,
    /// The signature does not verify.
    #[error("token signature is invalid")]
    Signature,
    /// The key in the set is unusable; a configuration problem, not the
    /// caller's.
    #[error("verification key is unusable: {0}")]
    InvalidKey(&'static str),
    /// The payload is not the expected claim set.
    #[error("token claims are not an access token claim set")]
    Claims,
    /// `iss` is not the trusted issuer.
    #[error("token issuer is not trusted")]
    Issuer,
    /// `aud` is not the expected audience.
    #[error("token is not for this audience")]
    Audience,
    /// `exp` has passed.
    #[error("token has expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token is not valid yet")]
    NotYetValid,
    /// `iat` is in the future.
    #[error("token was issued in the future")]
    IssuedInFuture,
    /// The `act` / `tessera_chain` delegation chain is refused.
    #[error("token delegation chain refused: {0}")]
    Chain(#[from] ChainError),
}

impl JwsError {
    /// Transport-free classification: the caller's token is refused, except
    /// for an unusable key of our own.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidKey(_) => ErrorKind::Internal,
            _ => ErrorKind::Unauthenticated,
        }
    }
}

/// The protected header of a token that passed the header checks (step 3
/// in the module docs). From [`decode_unverified`] it is not authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// `alg`.
    pub alg: Algorithm,
    /// `typ`, as written.
    pub typ: String,
    /// `kid`, at most [`MAX_KID_LEN`] bytes.
    pub kid: String,
}

/// Verifies `token` against `keys` and returns its payload, a JSON object.
/// `expected_typ` is e.g. `at+jwt`; `application/at+jwt` and any letter case
/// match it too. Claims (`exp`, `iss`, ...) are the caller's to check; see
/// [`super::verify_access_token`].
pub fn verify(
    token: &str,
    keys: &impl KeyLookup,
    expected_typ: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, JwsError> {
    let payload = verify_payload(token, keys, expected_typ)?;
    serde_json::from_slice(&payload).map_err(|_| JwsError::Malformed(PAYLOAD_NOT_OBJECT))
}

/// Decodes `token` with every structural and header check of [`verify`] but
/// **without checking the signature** or the type. For inspection and
/// tooling only: nothing in the result is authenticated.
pub fn decode_unverified(token: &str) -> Result<(Header, Vec<u8>), JwsError> {
    let parts = split(token)?;
    let payload = decode(parts.payload_b64)?;
    Ok((parts.header, payload))
}

const PAYLOAD_NOT_OBJECT: &str = "payload is not a json object";

/// [`verify`], returning the payload bytes: JSON whose first token is `{`.
pub(super) fn verify_payload(token: &str, keys: &impl KeyLookup, expected_typ: &str) -> Result<Vec<u8>, JwsError> {
    verify_payload_allowing(token, keys, expected_typ, &Algorithm::ALL)
}

/// [`verify_payload`] accepting only the algorithms in `allowed`, checked
/// before the key is looked up.
pub(super) fn verify_payload_allowing(
    token: &str,
    keys: &impl KeyLookup,
    expected_typ: &str,
    allowed: &[Algorithm],
) -> Result<Vec<u8>, JwsError> {
    let parts = split(token)?;
    if !typ_matches(&parts.header.typ, expected_typ) {
        return Err(JwsError::Type);
    }
    if !allowed.contains(&parts.header.alg) {
        return Err(JwsError::AlgorithmNotAllowed(parts.header.alg));
    }
    // The kid is only ever a lookup key in the caller's set.
    let jwk = keys.key(&parts.header.kid).ok_or(JwsError::UnknownKey)?;
    if jwk.alg != parts.header.alg {
        return Err(JwsError::AlgorithmMismatch);
    }
    let key = jwk.verification_key()?;
    let signature = decode(parts.signature_b64)?;
    if signature.len() != SIGNATURE_LEN {
        return Err(JwsError::Signature);
    }
    key.verify(parts.signing_input.as_bytes(), &signature)?;

    let payload = decode(parts.payload_b64)?;
    // serde would also read a derived struct from a JSON array; insist on `{`.
    if payload.trim_ascii_start().first() != Some(&b'{') {
        return Err(JwsError::Malformed(PAYLOAD_NOT_OBJECT));
    }
    Ok(payload)
}

struct Parts<'a> {
    header: Header,
    /// `header_b64 "." payload_b64`, the bytes the signature covers.
    signing_input: &'a str,
    payload_b64: &'a str,
    signature_b64: &'a str,
}

/// Steps 1 to 3 of the module docs.
fn split(token: &str) -> Result<Parts<'_>, JwsError> {
    const SEGMENTS: &str = "expected three dot-separated segments";
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwsError::TooLong);
    }
    let (header_b64, rest) = token.split_once('.').ok_or(JwsError::Malformed(SEGMENTS))?;
    let (payload_b64, signature_b64) = rest.split_once('.').ok_or(JwsError::Malformed(SEGMENTS))?;
    if signature_b64.contains('.') {
        return Err(JwsError::Malformed(SEGMENTS));
    }
    for segment in [header_b64, payload_b64, signature_b64] {
        if !segment.bytes().all(is_base64url) {
            return Err(JwsError::Malformed(NOT_BASE64URL));
        }
    }
    let signing_input = token
        .get(..header_b64.len() + 1 + payload_b64.len())
        .ok_or(JwsError::Malformed(SEGMENTS))?;
    let header = parse_header(&decode(header_b64)?)?;
    Ok(Parts {
        header,
        signing_input,
        payload_b64,
        signature_b64,
    })
}

pub(crate) const NOT_BASE64URL: &str = "segment is not unpadded base64url";

fn is_base64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Decodes one segment. The engine also refuses a length of 1 mod 4 and
/// non-zero trailing bits, so every token has exactly one encoding.
fn decode(segment: &str) -> Result<Vec<u8>, JwsError> {
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| JwsError::Malformed(NOT_BASE64URL))
}

/// The header members we read. serde refuses a duplicate of any of them.
#[derive(Deserialize)]
struct RawHeader {
    alg: Option<String>,
    typ: Option<String>,
    kid: Option<String>,
    #[serde(default, deserialize_with = "present")]
    crit: bool,
    #[serde(default, deserialize_with = "present")]
    jku: bool,
    #[serde(default, deserialize_with = "present")]
    jwk: bool,
    #[serde(default, deserialize_with = "present")]
    x5u: bool,
    #[serde(default, deserialize_with = "present")]
    x5c: bool,
}

/// True for any value, `null` included: presence alone is refused.
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    IgnoredAny::deserialize(deserializer).map(|_| true)
}

fn parse_header(json: &[u8]) -> Result<Header, JwsError> {
    const NOT_OBJECT: &str = "header is not a json object with unique members";
    if json.trim_ascii_start().first() != Some(&b'{') {
        return Err(JwsError::Malformed(NOT_OBJECT));
    }
    let raw: RawHeader = serde_json::from_slice(json).map_err(|_| JwsError::Malformed(NOT_OBJECT))?;
    for (name, is_present) in [
        ("crit", raw.crit),
        ("jku", raw.jku),
        ("jwk", raw.jwk),
        ("x5u", raw.x5u),
        ("x5c", raw.x5c),
    ] {
        if is_present {
            return Err(JwsError::ForbiddenHeader(name));
        }
    }
    let alg = raw
        .alg
        .as_deref()
        .and_then(Algorithm::from_jose)
        .ok_or(JwsError::Algorithm)?;
    let kid = match raw.kid {
        None => return Err(JwsError::Malformed("header has no `kid`")),
        Some(kid) if kid.is_empty() => return Err(JwsError::Malformed("`kid` is empty")),
        Some(kid) if kid.len() > MAX_KID_LEN => {
            return Err(JwsError::Malformed("`kid` is longer than 128 bytes"));
        }
        Some(kid) => kid,
    };
    let typ = raw.typ.ok_or(JwsError::Type)?;
    Ok(Header { alg, typ, kid })
}

/// RFC 8725 section 3.11 with RFC 7515 section 4.1.9: media types compare
/// case-insensitively, and `application/` may be omitted when no other `/`
/// follows.
pub(crate) fn typ_matches(actual: &str, expected: &str) -> bool {
    fn short(typ: &str) -> &str {
        const PREFIX: &str = "application/";
        match (typ.get(..PREFIX.len()), typ.get(PREFIX.len()..)) {
            (Some(prefix), Some(rest)) if prefix.eq_ignore_ascii_case(PREFIX) && !rest.contains('/') => rest,
            _ => typ,
        }
    }
    short(actual).eq_ignore_ascii_case(short(expected))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]
    #![allow(clippy::indexing_slicing, reason = "test")]

    use proptest::prelude::*;

    use super::*;
    use crate::token::test_keys::{ed25519, jwks, p256};
    use crate::token::{Jwks, SigningKey};

    const TYP: &str = "at+jwt";

    fn claims() -> serde_json::Value {
        serde_json::json!({"iss": "https://tessera.test", "sub": "agent", "n": 1})
    }

    /// `key` signs exactly `header` over `payload` (both JSON text).
    fn raw(key: &SigningKey, header: &str, payload: &str) -> String {
        key.sign_compact(header.as_bytes(), payload.as_bytes()).unwrap()
    }

    fn header_with(key: &SigningKey, extra: &str) -> String {
        format!(
            r#"{{"alg":"{}","typ":"at+jwt","kid":"{}"{extra}}}"#,
            key.algorithm(),
            key.kid()
        )
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    #[track_caller]
    fn check(token: &str, keys: &Jwks, expected: JwsError) {
        let err = verify(token, keys, TYP).unwrap_err();
        assert_eq!(err, expected);
        assert_eq!(err.kind(), ErrorKind::Unauthenticated);
        // No part of the token leaks into the message.
        let message = err.to_string();
        for segment in token.split('.').filter(|s| s.len() >= 8) {
            assert!(!message.contains(segment), "{message}");
        }
    }

    #[test]
    fn round_trip_both_algorithms() {
        for key in [p256(), ed25519()] {
            let token = key.sign_jws(TYP, &claims()).unwrap();
            let payload = verify(&token, &jwks(&[&key]), TYP).unwrap();
            assert_eq!(serde_json::Value::Object(payload), claims());
            let (header, payload) = decode_unverified(&token).unwrap();
            assert_eq!(
                header,
                Header {
                    alg: key.algorithm(),
                    typ: TYP.into(),
                    kid: key.kid().into()
                }
            );
            assert_eq!(serde_json::from_slice::<serde_json::Value>(&payload).unwrap(), claims());
        }
    }

    #[test]
    fn verifies_against_the_right_key_in_a_set() {
        let (a, b) = (p256(), ed25519());
        let set = jwks(&[&a, &b]);
        for key in [&a, &b] {
            verify(&key.sign_jws(TYP, &claims()).unwrap(), &set, TYP).unwrap();
        }
    }

    #[test]
    fn typ_compares_as_a_media_type() {
        let key = ed25519();
        let set = jwks(&[&key]);
        for typ in ["at+jwt", "AT+JWT", "application/at+jwt", "Application/At+Jwt"] {
            let token = key.sign_jws(typ, &claims()).unwrap();
            verify(&token, &set, "at+jwt").unwrap();
            verify(&token, &set, "application/at+jwt").unwrap();
        }
        for typ in [
            "jwt",
            "JWT",
            "",
            "at+jwt ",
            "application/at+jwt/x",
            "text/at+jwt",
            "xapplication/at+jwt",
        ] {
            let token = key.sign_jws(typ, &claims()).unwrap();
            check(&token, &set, JwsError::Type);
        }
        let no_typ = format!(r#"{{"alg":"EdDSA","kid":"{}"}}"#, key.kid());
        check(&raw(&key, &no_typ, "{}"), &set, JwsError::Type);
    }

    #[test]
    fn tampered_payload_fails() {
        let key = p256();
        let token = key.sign_jws(TYP, &claims()).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let evil = b64(br#"{"iss":"https://tessera.test","sub":"admin","n":1}"#);
        let forged = format!("{}.{evil}.{}", parts[0], parts[2]);
        check(&forged, &jwks(&[&key]), JwsError::Signature);
    }

    #[test]
    fn tampered_signature_fails() {
        for key in [p256(), ed25519()] {
            let token = key.sign_jws(TYP, &claims()).unwrap();
            let (input, sig) = token.rsplit_once('.').unwrap();
            let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
            sig[10] ^= 1;
            check(&format!("{input}.{}", b64(&sig)), &jwks(&[&key]), JwsError::Signature);
            // Valid base64url, wrong length.
            for len in [0, 63, 65, 128] {
                let forged = format!("{input}.{}", b64(&vec![7; len]));
                check(&forged, &jwks(&[&key]), JwsError::Signature);
            }
        }
    }

    #[test]
    fn unknown_kid_fails() {
        let (signer, other) = (p256(), SigningKey::generate(Algorithm::Es256).unwrap());
        let token = signer.sign_jws(TYP, &claims()).unwrap();
        check(&token, &jwks(&[&other]), JwsError::UnknownKey);
        check(&token, &Jwks::default(), JwsError::UnknownKey);
        // A 128-byte kid is fine as far as the header goes.
        let long = format!(
            r#"{{"alg":"ES256","typ":"at+jwt","kid":"{}"}}"#,
            "k".repeat(MAX_KID_LEN)
        );
        check(&raw(&signer, &long, "{}"), &jwks(&[&signer]), JwsError::UnknownKey);
    }

    #[test]
    fn key_of_another_algorithm_under_the_same_kid_fails() {
        let (es, ed) = (p256(), ed25519());
        let mut impostor = ed.public_jwk().clone();
        impostor.kid = es.kid().to_owned();
        let set = Jwks { keys: vec![impostor] };
        check(&es.sign_jws(TYP, &claims()).unwrap(), &set, JwsError::AlgorithmMismatch);
        // And an EdDSA token naming an ES256 key.
        let mut impostor = es.public_jwk().clone();
        impostor.kid = ed.kid().to_owned();
        let set = Jwks { keys: vec![impostor] };
        check(&ed.sign_jws(TYP, &claims()).unwrap(), &set, JwsError::AlgorithmMismatch);
    }

    #[test]
    fn alg_none_fails() {
        let key = p256();
        let set = jwks(&[&key]);
        let payload = b64(br#"{"iss":"https://tessera.test","sub":"admin"}"#);
        for alg in [
            "none", "None", "noNE", "NONE", "", "es256", "ES384", "RS256", "PS256", "Ed25519", "EDDSA",
        ] {
            let header = format!(r#"{{"alg":"{alg}","typ":"at+jwt","kid":"{}"}}"#, key.kid());
            let token = format!("{}.{payload}.", b64(header.as_bytes()));
            check(&token, &set, JwsError::Algorithm);
        }
        for alg in ["null", "256", "[\"ES256\"]", "{}"] {
            let header = format!(r#"{{"alg":{alg},"typ":"at+jwt","kid":"{}"}}"#, key.kid());
            let token = format!("{}.{payload}.", b64(header.as_bytes()));
            assert!(verify(&token, &set, TYP).is_err(), "{alg}");
        }
        let header = format!(r#"{{"typ":"at+jwt","kid":"{}"}}"#, key.kid());
        check(
            &format!("{}.{payload}.", b64(header.as_bytes())),
            &set,
            JwsError::Algorithm,
        );
    }

    /// The classic key confusion: an HMAC keyed with the public key.
    #[test]
    fn hs256_keyed_with_the_public_key_fails() {
        let key = p256();
        let set = jwks(&[&key]);
        let header = format!(r#"{{"alg":"HS256","typ":"at+jwt","kid":"{}"}}"#, key.kid());
        let input = format!("{}.{}", b64(header.as_bytes()), b64(br#"{"sub":"admin"}"#));
        let jwk_json = serde_json::to_vec(key.public_jwk()).unwrap();
        let mut point = vec![4u8];
        point.extend(URL_SAFE_NO_PAD.decode(&key.public_jwk().x).unwrap());
        point.extend(URL_SAFE_NO_PAD.decode(key.public_jwk().y.as_ref().unwrap()).unwrap());
        for secret in [jwk_json.as_slice(), point.as_slice(), set.to_json().as_bytes()] {
            let mac = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret), input.as_bytes());
            let token = format!("{input}.{}", b64(mac.as_ref()));
            check(&token, &set, JwsError::Algorithm);
        }
    }

    #[test]
    fn segment_count_must_be_three() {
        let key = ed25519();
        let set = jwks(&[&key]);
        let token = key.sign_jws(TYP, &claims()).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let segments = JwsError::Malformed("expected three dot-separated segments");
        for bad in [
            String::new(),
            parts[0].to_owned(),
            format!("{}.{}", parts[0], parts[1]),
            format!("{token}.{}", parts[2]),
            format!("{token}."),
            format!("{}..{}.{}", parts[0], parts[1], parts[2]),
        ] {
            check(&bad, &set, segments.clone());
            assert_eq!(decode_unverified(&bad).unwrap_err(), segments);
        }
    }

    #[test]
    fn only_unpadded_base64url_is_accepted() {
        let key = ed25519();
        let set = jwks(&[&key]);
        let token = key.sign_jws(TYP, &claims()).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let not_b64 = JwsError::Malformed(NOT_BASE64URL);
        let mut bad = vec![
            format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
            format!("{}.{}.{}==", parts[0], parts[1], parts[2]),
            format!("{} .{}.{}", parts[0], parts[1], parts[2]),
            format!("{}.{}\n.{}", parts[0], parts[1], parts[2]),
            format!("{}.{}.{}\t", parts[0], parts[1], parts[2]),
            format!("{}.+{}.{}", parts[0], parts[1], parts[2]),
            format!("{}./{}.{}", parts[0], parts[1], parts[2]),
            format!("{}.{}.é{}", parts[0], parts[1], parts[2]),
            format!("{}.{}.{}\0", parts[0], parts[1], parts[2]),
            // Standard-alphabet re-encoding of the same signature.
            format!(
                "{}.{}.{}",
                parts[0],
                parts[1],
                base64::engine::general_purpose::STANDARD.encode(URL_SAFE_NO_PAD.decode(parts[2]).unwrap())
            ),
        ];
        // The header's last character with different trailing bits: the same
        // bytes under a second spelling, refused as non-canonical.
        let last = parts[0].chars().last().unwrap();
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let index = alphabet.find(last).unwrap();
        if !parts[0].len().is_multiple_of(4) {
            let twin = alphabet.chars().nth(index ^ 1).unwrap();
            let mut header = parts[0].to_owned();
            header.pop();
            header.push(twin);
            bad.push(format!("{header}.{}.{}", parts[1], parts[2]));
        }
        for token in bad {
            check(&token, &set, not_b64.clone());
        }
        // A segment of length 1 mod 4 can't be base64.
        check(&format!("{}.{}.AAAAA", parts[0], parts[1]), &set, not_b64);
    }

    #[test]
    fn oversized_token_fails_before_decoding() {
        let key = ed25519();
        let set = jwks(&[&key]);
        // Not even valid characters: length is checked first.
        let huge = "=".repeat(MAX_TOKEN_LEN + 1);
        check(&huge, &set, JwsError::TooLong);
        assert_eq!(decode_unverified(&huge).unwrap_err(), JwsError::TooLong);
        // A validly signed token just over the limit, and one just under it.
        let overhead = key.sign_jws(TYP, &serde_json::json!({"p": ""})).unwrap().len();
        let filler = |n: usize| serde_json::json!({"p": "a".repeat(n)});
        let mut n = (MAX_TOKEN_LEN - overhead) * 3 / 4;
        let fits = loop {
            let token = key.sign_jws(TYP, &filler(n)).unwrap();
            if token.len() <= MAX_TOKEN_LEN {
                break token;
            }
            n -= 1;
        };
        verify(&fits, &set, TYP).unwrap();
        let over = key.sign_jws(TYP, &filler(n + 4)).unwrap();
        assert!(over.len() > MAX_TOKEN_LEN);
        check(&over, &set, JwsError::TooLong);
    }

    #[test]
    fn header_must_be_a_plain_object() {
        let key = ed25519();
        let set = jwks(&[&key]);
        let kid = key.kid();
        let not_object = JwsError::Malformed("header is not a json object with unique members");
        for header in [
            String::new(),
            "null".to_owned(),
            format!(r#"["EdDSA","at+jwt","{kid}"]"#),
            format!(r#"{{"alg":"EdDSA","typ":"at+jwt","kid":"{kid}"}} x"#),
            format!(r#"{{"alg":"EdDSA","alg":"EdDSA","typ":"at+jwt","kid":"{kid}"}}"#),
            format!(r#"{{"alg":"none","alg":"EdDSA","typ":"at+jwt","kid":"{kid}"}}"#),
            format!(r#"{{"alg":"EdDSA","typ":"at+jwt","kid":"{kid}","kid":"{kid}"}}"#),
            "\u{feff}{}".to_owned(),
        ] {
            check(&raw(&key, &header, "{}"), &set, not_object.clone());
        }
        // Whitespace and unknown members are fine.
        let spaced = format!(" {{ \"alg\" : \"EdDSA\", \"typ\":\"at+jwt\",\"kid\":\"{kid}\",\"x\":[1] }}");
        verify(&raw(&key, &spaced, "{}"), &set, TYP).unwrap();
    }

    #[test]
    fn kid_is_required_and_bounded() {
        let key = ed25519();
        let set = jwks(&[&key]);
        let header = r#"{"alg":"EdDSA","typ":"at+jwt"}"#;
        check(
            &raw(&key, header, "{}"),
            &set,
            JwsError::Malformed("header has no `kid`"),
        );
        let header = r#"{"alg":"EdDSA","typ":"at+jwt","kid":""}"#;
        check(&raw(&key, header, "{}"), &set, JwsError::Malformed("`kid` is empty"));
        let long = format!(
            r#"{{"alg":"EdDSA","typ":"at+jwt","kid":"{}"}}"#,
            "k".repeat(MAX_KID_LEN + 1)
        );
        check(
            &raw(&key, &long, "{}"),
            &set,
            JwsError::Malformed("`kid` is longer than 128 bytes"),
        );
        let header = r#"{"alg":"EdDSA","typ":"at+jwt","kid":7}"#;
        assert!(matches!(
            verify(&raw(&key, header, "{}"), &set, TYP),
            Err(JwsError::Malformed(_))
        ));
    }

    #[test]
    fn key_bearing_headers_are_refused() {
        let key = p256();
        let set = jwks(&[&key]);
        let jwk = serde_json::to_string(key.public_jwk()).unwrap();
        for (name, value) in [
            ("crit", r#"["exp"]"#.to_owned()),
            ("crit", "[]".to_owned()),
            ("jku", r#""https://evil.test/jwks""#.to_owned()),
            ("x5u", r#""https://evil.test/cert""#.to_owned()),
            ("jwk", jwk.clone()),
            ("x5c", r#"["MIIB"]"#.to_owned()),
            ("jku", "null".to_owned()),
        ] {
            let header = header_with(&key, &format!(r#","{name}":{value}"#));
            check(&raw(&key, &header, "{}"), &set, JwsError::ForbiddenHeader(name));
        }
    }

    #[test]
    fn payload_must_be_an_object() {
        let key = ed25519();
        let set = jwks(&[&key]);
        let header = header_with(&key, "");
        for payload in ["[]", "1", "\"s\"", "null", "", "{", "{}x"] {
            let err = verify(&raw(&key, &header, payload), &set, TYP).unwrap_err();
            assert_eq!(err, JwsError::Malformed(PAYLOAD_NOT_OBJECT), "{payload:?}");
        }
        verify(&raw(&key, &header, " {}"), &set, TYP).unwrap();
    }

    #[test]
    fn unusable_key_in_the_set_is_internal() {
        let key = ed25519();
        let mut broken = key.public_jwk().clone();
        broken.x.truncate(10);
        let set = Jwks { keys: vec![broken] };
        let err = verify(&key.sign_jws(TYP, &claims()).unwrap(), &set, TYP).unwrap_err();
        assert!(matches!(err, JwsError::InvalidKey(_)), "{err:?}");
        assert_eq!(err.kind(), ErrorKind::Internal);
    }

    /// A valid ES256 token signed once per process, and its key set.
    fn fixture() -> &'static (String, Jwks) {
        static FIXTURE: std::sync::OnceLock<(String, Jwks)> = std::sync::OnceLock::new();
        FIXTURE.get_or_init(|| {
            let key = p256();
            (key.sign_jws(TYP, &claims()).unwrap(), jwks(&[&key]))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Changing any one byte of a valid token, in any segment, never
        /// yields a verified token and never panics.
        #[test]
        fn one_changed_byte_never_verifies(at in any::<prop::sample::Index>(), to in any::<u8>()) {
            let (token, set) = fixture();
            let mut bytes = token.clone().into_bytes();
            let i = at.index(bytes.len());
            prop_assume!(bytes[i] != to);
            bytes[i] = to;
            let mutated = String::from_utf8_lossy(&bytes);
            prop_assert!(verify(&mutated, set, TYP).is_err());
        }

        /// The same, aimed at the header and signature segments only.
        #[test]
        fn header_or_signature_byte_never_verifies(
            in_header in any::<bool>(),
            at in any::<prop::sample::Index>(),
            to in prop::sample::select(
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/. ".to_vec()
            ),
        ) {
            let (token, set) = fixture();
            let header_len = token.find('.').unwrap();
            let signature_start = token.rfind('.').unwrap() + 1;
            let i = if in_header {
                at.index(header_len)
            } else {
                signature_start + at.index(token.len() - signature_start)
            };
            let mut bytes = token.clone().into_bytes();
            prop_assume!(bytes[i] != to);
            bytes[i] = to;
            let mutated = String::from_utf8(bytes).unwrap();
            prop_assert!(verify(&mutated, set, TYP).is_err());
        }

        /// Arbitrary input never panics the verifier or the decoder.
        #[test]
        fn arbitrary_input_never_panics(input in ".{0,300}") {
            let (_, set) = fixture();
            let _ = verify(&input, set, TYP);
            let _ = decode_unverified(&input);
        }
    }
}
