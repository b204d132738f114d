//! RFC 9068 access-token claims and their verification.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::jws::{self, JwsError, KeyLookup};

/// The `typ` of an access token (RFC 9068 section 2.1).
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// The claims of a Tessera access token (RFC 9068 section 2.2). Times are
/// seconds since the Unix epoch. Unknown claims are ignored when reading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Issuer: the broker's URL.
    pub iss: String,
    /// Subject: the agent's SPIFFE ID.
    pub sub: String,
    /// The one resource server the token is for.
    pub aud: String,
    /// Expiry: the token is valid while now < `exp`.
    pub exp: i64,
    /// Not before.
    pub nbf: i64,
    /// Issued at.
    pub iat: i64,
    /// Token id; also the grant id.
    pub jti: String,
    /// Granted scopes, space-separated.
    pub scope: String,
    /// The client the token was issued to.
    pub client_id: String,
    /// The task the token belongs to.
    pub task_id: String,
    /// Confirmation (RFC 7800), e.g. a certificate thumbprint binding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<serde_json::Value>,
    /// Actor (RFC 8693 section 4.1), for delegated tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<serde_json::Value>,
}

impl AccessClaims {
    /// The scopes, in order, without empty entries.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope.split(' ').filter(|scope| !scope.is_empty())
    }

    /// Checks that the token is for `audience` (exact match).
    /// [`verify_access_token`] does not, so a resource server must.
    pub fn check_audience(&self, audience: &str) -> Result<(), JwsError> {
        if self.aud == audience {
            Ok(())
        } else {
            Err(JwsError::Audience)
        }
    }
}

/// Verifies an access token: the JWS (with `typ` [`ACCESS_TOKEN_TYP`])
/// against `keys`, then the claims: `iss` equals `issuer`, and with
/// `leeway_secs` of clock skew (negative counts as 0), `exp > now - leeway`,
/// `nbf <= now + leeway` and `iat <= now + leeway`. The audience and scopes
/// are the caller's to check ([`AccessClaims::check_audience`]).
pub fn verify_access_token(
    token: &str,
    keys: &impl KeyLookup,
    issuer: &str,
    now: DateTime<Utc>,
    leeway_secs: i64,
) -> Result<AccessClaims, JwsError> {
    let payload = jws::verify_payload(token, keys, ACCESS_TOKEN_TYP)?;
    // Not echoing serde's message: it may quote claim values.
    let claims: AccessClaims = serde_json::from_slice(&payload).map_err(|_| JwsError::Claims)?;
    if claims.iss != issuer {
        return Err(JwsError::Issuer);
    }
    let leeway = leeway_secs.max(0);
    // Whole seconds, rounded down: a token with `exp` = t is expired from
    // t.000 on, and valid at t - 0.001.
    let now = now.timestamp();
    if claims.exp <= now.saturating_sub(leeway) {
        return Err(JwsError::Expired);
    }
    if claims.nbf > now.saturating_add(leeway) {
        return Err(JwsError::NotYetValid);
    }
    if claims.iat > now.saturating_add(leeway) {
        return Err(JwsError::IssuedInFuture);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]
    #![allow(clippy::indexing_slicing, reason = "test")]

    use base64::Engine as _;
    use chrono::Duration;

    use super::*;
    use crate::token::test_keys::{GOLDEN_ES256_ACCESS_TOKEN, ed25519, jwks, p256};
    use crate::token::{Algorithm, Jwks, SigningKey};

    const ISSUER: &str = "https://tessera.test";
    const T0: i64 = 1_800_000_000;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    fn claims(iat: i64, nbf: i64, exp: i64) -> AccessClaims {
        AccessClaims {
            iss: ISSUER.to_owned(),
            sub: "spiffe://tessera.test/agent/a".to_owned(),
            aud: "https://api.test".to_owned(),
            exp,
            nbf,
            iat,
            jti: "AAAAAAAAAAAAAAAAAAAAAA".to_owned(),
            scope: "read write".to_owned(),
            client_id: "spiffe://tessera.test/agent/a".to_owned(),
            task_id: "t-1".to_owned(),
            cnf: None,
            act: None,
        }
    }

    fn sign(key: &SigningKey, claims: &AccessClaims) -> String {
        key.sign_jws(ACCESS_TOKEN_TYP, claims).unwrap()
    }

    #[track_caller]
    fn check(token: &str, keys: &Jwks, now: i64, leeway: i64, expected: Result<(), JwsError>) {
        let got = verify_access_token(token, keys, ISSUER, at(now), leeway).map(|_| ());
        assert_eq!(got, expected, "now = T0 + {}, leeway {leeway}", now - T0);
    }

    #[test]
    fn round_trip_both_algorithms() {
        for key in [p256(), ed25519()] {
            let mut original = claims(T0, T0, T0 + 300);
            original.cnf = Some(serde_json::json!({"x5t#S256": "abc"}));
            original.act = Some(serde_json::json!({"sub": "spiffe://tessera.test/orchestrator"}));
            let token = sign(&key, &original);
            let got = verify_access_token(&token, &jwks(&[&key]), ISSUER, at(T0), 0).unwrap();
            assert_eq!(got, original);
            assert_eq!(got.scopes().collect::<Vec<_>>(), ["read", "write"]);
            got.check_audience("https://api.test").unwrap();
            assert_eq!(got.check_audience("https://api.test/"), Err(JwsError::Audience));
        }
    }

    #[test]
    fn optional_claims_are_omitted_when_absent() {
        let json = serde_json::to_value(claims(T0, T0, T0 + 1)).unwrap();
        assert!(json.get("cnf").is_none() && json.get("act").is_none(), "{json}");
    }

    /// Signed by OpenSSL, with `typ: application/at+jwt`, the header
    /// members in another order and an extra claim.
    #[test]
    fn golden_openssl_token_verifies() {
        let got = verify_access_token(GOLDEN_ES256_ACCESS_TOKEN, &jwks(&[&p256()]), ISSUER, at(T0), 0).unwrap();
        assert_eq!(got, claims(T0, T0, T0 + 300));
    }

    #[test]
    fn time_boundaries_with_no_leeway() {
        let key = ed25519();
        let set = jwks(&[&key]);
        let token = sign(&key, &claims(T0, T0, T0 + 300));
        check(&token, &set, T0 - 1, 0, Err(JwsError::NotYetValid));
        check(&token, &set, T0, 0, Ok(()));
        check(&token, &set, T0 + 299, 0, Ok(()));
        check(&token, &set, T0 + 300, 0, Err(JwsError::Expired));
        // Just before `exp`, by a millisecond.
        let almost = at(T0 + 300) - Duration::milliseconds(1);
        verify_access_token(&token, &set, ISSUER, almost, 0).unwrap();

        // `iat` after `nbf`, in the future.
        let token = sign(&key, &claims(T0 + 10, T0, T0 + 300));
        check(&token, &set, T0 + 9, 0, Err(JwsError::IssuedInFuture));
        check(&token, &set, T0 + 10, 0, Ok(()));
    }

    #[test]
    fn time_boundaries_with_leeway() {
        let key = p256();
        let set = jwks(&[&key]);
        let token = sign(&key, &claims(T0, T0, T0 + 300));
        check(&token, &set, T0 - 6, 5, Err(JwsError::NotYetValid));
        check(&token, &set, T0 - 5, 5, Ok(()));
        check(&token, &set, T0 + 304, 5, Ok(()));
        check(&token, &set, T0 + 305, 5, Err(JwsError::Expired));
        // A negative leeway is no leeway.
        check(&token, &set, T0 + 300, -100, Err(JwsError::Expired));
        check(&token, &set, T0 + 299, -100, Ok(()));
        // Extreme values saturate instead of overflowing.
        let token = sign(&key, &claims(i64::MIN, i64::MIN, i64::MAX));
        check(&token, &set, T0, i64::MAX, Ok(()));
        let token = sign(&key, &claims(i64::MAX, i64::MAX, i64::MAX));
        check(&token, &set, T0, i64::MAX, Ok(()));
        check(&token, &set, T0, 0, Err(JwsError::NotYetValid));
    }

    #[test]
    fn issuer_must_match() {
        let key = ed25519();
        let set = jwks(&[&key]);
        for iss in ["https://evil.test", "https://tessera.test/", "HTTPS://TESSERA.TEST", ""] {
            let token = sign(
                &key,
                &AccessClaims {
                    iss: iss.to_owned(),
                    ..claims(T0, T0, T0 + 1)
                },
            );
            check(&token, &set, T0, 0, Err(JwsError::Issuer));
        }
    }

    #[test]
    fn other_token_types_are_refused() {
        let key = ed25519();
        let set = jwks(&[&key]);
        for typ in ["JWT", "id_token+jwt", "dpop+jwt"] {
            let token = key.sign_jws(typ, &claims(T0, T0, T0 + 1)).unwrap();
            check(&token, &set, T0, 0, Err(JwsError::Type));
        }
    }

    #[test]
    fn claims_must_have_the_access_token_shape() {
        let key = ed25519();
        let set = jwks(&[&key]);
        let mut full = serde_json::to_value(claims(T0, T0, T0 + 1)).unwrap();
        let object = full.as_object_mut().unwrap();
        object.remove("jti");
        let missing_jti = key.sign_jws(ACCESS_TOKEN_TYP, &full).unwrap();
        check(&missing_jti, &set, T0, 0, Err(JwsError::Claims));

        let mut array_aud = serde_json::to_value(claims(T0, T0, T0 + 1)).unwrap();
        array_aud["aud"] = serde_json::json!(["https://api.test"]);
        let token = key.sign_jws(ACCESS_TOKEN_TYP, &array_aud).unwrap();
        check(&token, &set, T0, 0, Err(JwsError::Claims));

        let mut string_exp = serde_json::to_value(claims(T0, T0, T0 + 1)).unwrap();
        string_exp["exp"] = serde_json::json!("1800000001");
        let token = key.sign_jws(ACCESS_TOKEN_TYP, &string_exp).unwrap();
        check(&token, &set, T0, 0, Err(JwsError::Claims));

        // Duplicate claims are refused, not resolved.
        let json = serde_json::to_string(&claims(T0, T0, T0 + 1)).unwrap();
        let duplicated = json.replacen('{', r#"{"iss":"https://evil.test","#, 1);
        let header = format!(r#"{{"alg":"EdDSA","typ":"at+jwt","kid":"{}"}}"#, key.kid());
        let token = key.sign_compact(header.as_bytes(), duplicated.as_bytes()).unwrap();
        check(&token, &set, T0, 0, Err(JwsError::Claims));
    }

    fn install_jsonwebtoken_provider() {
        // Err only means a provider is already installed.
        let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
    }

    /// Our tokens and JWKs are accepted by an independent implementation.
    #[test]
    fn jsonwebtoken_verifies_our_tokens() {
        install_jsonwebtoken_provider();
        // jsonwebtoken checks `exp` against the real clock: far in the future.
        let original = claims(1_700_000_000, 1_700_000_000, 4_000_000_000);
        for (key, alg) in [
            (p256(), jsonwebtoken::Algorithm::ES256),
            (ed25519(), jsonwebtoken::Algorithm::EdDSA),
        ] {
            let token = sign(&key, &original);
            let jwk_json = serde_json::to_string(key.public_jwk()).unwrap();
            let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_str(&jwk_json).unwrap();
            let decoding_key = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
            let mut validation = jsonwebtoken::Validation::new(alg);
            validation.set_audience(&["https://api.test"]);
            validation.set_issuer(&[ISSUER]);
            validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
            validation.validate_nbf = true;
            let data = jsonwebtoken::decode::<AccessClaims>(&token, &decoding_key, &validation).unwrap();
            assert_eq!(data.claims, original);
            assert_eq!(data.header.kid.as_deref(), Some(key.kid()));
            assert_eq!(data.header.typ.as_deref(), Some(ACCESS_TOKEN_TYP));

            // And it rejects what we reject.
            let (input, _) = token.rsplit_once('.').unwrap();
            let other = SigningKey::generate(key.algorithm()).unwrap();
            let foreign = sign(&other, &original);
            let (_, foreign_sig) = foreign.rsplit_once('.').unwrap();
            let forged = format!("{input}.{foreign_sig}");
            assert!(jsonwebtoken::decode::<AccessClaims>(&forged, &decoding_key, &validation).is_err());
            let mut wrong_aud = validation.clone();
            wrong_aud.set_audience(&["https://other.test"]);
            assert!(jsonwebtoken::decode::<AccessClaims>(&token, &decoding_key, &wrong_aud).is_err());
        }
    }

    /// Tokens signed by an independent implementation verify with us.
    #[test]
    fn we_verify_jsonwebtoken_tokens() {
        install_jsonwebtoken_provider();
        let original = claims(T0, T0, T0 + 60);
        for (key, pem, alg) in [
            (
                p256(),
                crate::token::test_keys::P256_PEM,
                jsonwebtoken::Algorithm::ES256,
            ),
            (
                ed25519(),
                crate::token::test_keys::ED25519_PEM,
                jsonwebtoken::Algorithm::EdDSA,
            ),
        ] {
            let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
            let der = base64::engine::general_purpose::STANDARD.decode(body).unwrap();
            let encoding_key = match key.algorithm() {
                Algorithm::Es256 => jsonwebtoken::EncodingKey::from_ec_der(&der),
                Algorithm::EdDsa => jsonwebtoken::EncodingKey::from_ed_der(&der),
            };
            let mut header = jsonwebtoken::Header::new(alg);
            header.typ = Some(ACCESS_TOKEN_TYP.to_owned());
            header.kid = Some(key.kid().to_owned());
            let token = jsonwebtoken::encode(&header, &original, &encoding_key).unwrap();
            let got = verify_access_token(&token, &jwks(&[&key]), ISSUER, at(T0), 0).unwrap();
            assert_eq!(got, original);

            // Without our typ it is refused.
            let mut plain = jsonwebtoken::Header::new(alg);
            plain.kid = Some(key.kid().to_owned());
            let token = jsonwebtoken::encode(&plain, &original, &encoding_key).unwrap();
            check(&token, &jwks(&[&key]), T0, 0, Err(JwsError::Type));
        }
    }
}
