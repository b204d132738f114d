//! RFC 9068 access-token claims and their verification.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::AccessCheck;
use super::jws::{JwsError, KeyLookup};

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
    /// Confirmation (RFC 7800): the key the token is bound to. `None`: a
    /// bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
    /// Actor (RFC 8693 section 4.1), for delegated tokens: the current
    /// holder outermost, earlier delegates nested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Actor>,
    /// The ancestors of a delegated token, root first (private claim; see
    /// `docs/ARCHITECTURE.md`, "Token claims: act and cnf"). Empty for a
    /// token issued by RequestToken.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tessera_chain: Vec<ChainHop>,
    /// RFC 9396 `authorization_details`: the tool-level limits
    /// ([`crate::authz::ToolGrant`], type `mcp_tool`) for the token's
    /// audience. Absent: no tool-level limit. Present, it is 1 to
    /// [`crate::authz::MAX_DETAILS`] `mcp_tool` details, at most one per
    /// server; any other type or shape makes the claims unreadable (the
    /// token is refused: a limit a verifier cannot read is never ignored).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "authorization_details"
    )]
    pub authorization_details: Vec<crate::authz::ToolGrant>,
}

fn authorization_details<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<crate::authz::ToolGrant>, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    crate::authz::parse_details(&value).map_err(serde::de::Error::custom)
}

/// Longest delegation chain a token may describe (a bound on hostile input;
/// the broker's configured limit is lower).
pub const MAX_CHAIN_LEN: usize = 16;

/// `cnf` (RFC 7800): exactly one confirmation method. Any other member, or
/// two members, makes the claims unreadable (the token is refused).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Confirmation {
    /// RFC 9449: the RFC 7638 thumbprint (SHA-256, base64url) of the public
    /// key whose DPoP proofs must accompany the token.
    #[serde(rename = "jkt")]
    Jkt(String),
    /// RFC 8705: base64url SHA-256 of the DER of the client certificate the
    /// token must be presented over (mTLS).
    #[serde(rename = "x5t#S256")]
    X5tS256(String),
}

impl Confirmation {
    /// The OAuth `token_type` of a token bound this way: `DPoP` for a key
    /// binding (RFC 9449 section 5), `Bearer` for a certificate binding
    /// (RFC 8705 defines no other type).
    pub fn token_type(&self) -> &'static str {
        match self {
            Self::Jkt(_) => "DPoP",
            Self::X5tS256(_) => "Bearer",
        }
    }
}

/// One level of an RFC 8693 `act` claim: an actor and, nested, the actor
/// before it. Only `sub` is carried (section 4.1: no non-identity claims).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Actor {
    /// The actor's SPIFFE ID.
    pub sub: String,
    /// The prior actor, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Box<Actor>>,
}

impl Actor {
    /// The nested claim for `actors` given outermost (current) first;
    /// `None` when there are none.
    pub fn nest<I>(actors: I) -> Option<Self>
    where
        I: IntoIterator<Item = String>,
        I::IntoIter: DoubleEndedIterator,
    {
        actors.into_iter().rev().fold(None, |inner, sub| {
            Some(Self {
                sub,
                act: inner.map(Box::new),
            })
        })
    }

    /// The actors, outermost (current) first.
    pub fn actors(&self) -> Vec<&str> {
        let mut out = Vec::new();
        let mut level = Some(self);
        while let Some(actor) = level {
            out.push(actor.sub.as_str());
            level = actor.act.as_deref();
        }
        out
    }
}

/// One ancestor of a delegated token, as carried in `tessera_chain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainHop {
    /// The ancestor's `jti` (its grant id).
    pub jti: String,
    /// Its holder's SPIFFE ID.
    pub sub: String,
    /// Its scopes, space-separated.
    pub scope: String,
    /// Its expiry, seconds since the epoch.
    pub exp: i64,
}

impl ChainHop {
    /// The scopes, without empty entries.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope.split(' ').filter(|scope| !scope.is_empty())
    }
}

impl AccessClaims {
    /// The identity the token was issued to and the only one who may use it:
    /// `client_id` (for an undelegated token, also its `sub`).
    pub fn holder(&self) -> &str {
        &self.client_id
    }

    /// How many delegations separate the token from its root (0: not delegated).
    pub fn depth(&self) -> usize {
        self.tessera_chain.len()
    }

    /// The scopes, in order, without empty entries.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope.split(' ').filter(|scope| !scope.is_empty())
    }

    /// The tool-level limit for the token's own audience: `None` when the
    /// token carries no `authorization_details` (no tool-level limit).
    /// `Some(Err(_))` when it carries some but none for its audience: the
    /// token allows no tool there (fail closed).
    pub fn tool_grant(&self) -> Option<Result<&crate::authz::ToolGrant, crate::authz::ToolGrantError>> {
        if self.authorization_details.is_empty() {
            return None;
        }
        Some(
            crate::authz::for_server(&self.authorization_details, &self.aud).ok_or_else(|| {
                crate::authz::ToolGrantError::NotPermitted(
                    "the token's `authorization_details` name no tools of its audience".to_owned(),
                )
            }),
        )
    }

    /// Whether the token allows calling `tool` with `args` (the MCP
    /// `tools/call` arguments): always, without `authorization_details`;
    /// otherwise as [`crate::authz::ToolGrant::permits`] says.
    pub fn check_tool_call(&self, tool: &str, args: &serde_json::Value) -> Result<(), crate::authz::ToolGrantError> {
        match self.tool_grant() {
            None => Ok(()),
            Some(grant) => grant?.permits(tool, args),
        }
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

/// Verifies an access token with [`super::check_access_token`]: the JWS
/// (with `typ` [`ACCESS_TOKEN_TYP`], either algorithm) against `keys`, then
/// the claims: `iss` equals `issuer`, and with `leeway_secs` of clock skew
/// (cut to 0..=[`super::MAX_LEEWAY_SECS`]), `exp > now - leeway`,
/// `nbf <= now + leeway` and `iat <= now + leeway`, then the delegation
/// chain. The audience and scopes are the caller's to check
/// ([`AccessClaims::check_audience`]).
pub fn verify_access_token(
    token: &str,
    keys: &impl KeyLookup,
    issuer: &str,
    now: DateTime<Utc>,
    leeway_secs: i64,
) -> Result<AccessClaims, JwsError> {
    super::check_access_token(
        token,
        keys,
        &AccessCheck {
            leeway_secs,
            ..AccessCheck::new(issuer, now)
        },
    )
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
            tessera_chain: Vec::new(),
            authorization_details: Vec::new(),
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
            original.cnf = Some(Confirmation::X5tS256("abc".to_owned()));
            // Delegated by agent/a to agent/b, the holder.
            original.client_id = "spiffe://tessera.test/agent/b".to_owned();
            original.act = Actor::nest(["spiffe://tessera.test/agent/b".to_owned()]);
            original.tessera_chain = vec![ChainHop {
                jti: "root".to_owned(),
                sub: "spiffe://tessera.test/agent/a".to_owned(),
                scope: "read write".to_owned(),
                exp: T0 + 600,
            }];
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
        assert!(json.get("tessera_chain").is_none(), "{json}");
    }

    #[test]
    fn cnf_and_act_have_their_rfc_shapes() {
        let mut c = claims(T0, T0, T0 + 1);
        c.cnf = Some(Confirmation::Jkt(
            "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I".to_owned(),
        ));
        c.act = Actor::nest(["spiffe://td/c".to_owned(), "spiffe://td/b".to_owned()]);
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(
            json["cnf"],
            serde_json::json!({"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"})
        );
        assert_eq!(
            json["act"],
            serde_json::json!({"sub": "spiffe://td/c", "act": {"sub": "spiffe://td/b"}})
        );
        assert_eq!(c.act.as_ref().unwrap().actors(), ["spiffe://td/c", "spiffe://td/b"]);
        assert_eq!(Actor::nest(Vec::<String>::new()), None);
        let x5t: Confirmation = serde_json::from_str(r#"{"x5t#S256":"abc"}"#).unwrap();
        assert_eq!(x5t, Confirmation::X5tS256("abc".to_owned()));
        assert_eq!(x5t.token_type(), "Bearer");
        assert_eq!(c.cnf.as_ref().unwrap().token_type(), "DPoP");
    }

    #[test]
    fn unknown_or_ambiguous_cnf_and_act_are_refused() {
        let key = ed25519();
        let set = jwks(&[&key]);
        for (name, value) in [
            ("cnf", serde_json::json!({"jwk": {"kty": "EC"}})),
            ("cnf", serde_json::json!({"jkt": "a", "x5t#S256": "b"})),
            ("cnf", serde_json::json!({})),
            ("cnf", serde_json::json!("jkt")),
            ("act", serde_json::json!({"sub": "spiffe://td/b", "exp": 1})),
            ("act", serde_json::json!({"act": {"sub": "spiffe://td/b"}})),
            (
                "tessera_chain",
                serde_json::json!([{"jti": "a", "sub": "b", "scope": "c"}]),
            ),
            ("tessera_chain", serde_json::json!({"jti": "a"})),
        ] {
            let mut json = serde_json::to_value(claims(T0, T0, T0 + 1)).unwrap();
            json[name] = value.clone();
            let token = key.sign_jws(ACCESS_TOKEN_TYP, &json).unwrap();
            check(&token, &set, T0, 0, Err(JwsError::Claims));
        }
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
        // A leeway above the bound is cut to it.
        let token = sign(&key, &claims(i64::MAX, i64::MAX, i64::MAX));
        check(&token, &set, T0, i64::MAX, Err(JwsError::NotYetValid));
        check(&token, &set, T0, 0, Err(JwsError::NotYetValid));
        let token = sign(&key, &claims(T0, T0, T0 + 300));
        check(
            &token,
            &set,
            T0 + 300 + crate::token::MAX_LEEWAY_SECS - 1,
            i64::MAX,
            Ok(()),
        );
        check(
            &token,
            &set,
            T0 + 300 + crate::token::MAX_LEEWAY_SECS,
            1_000,
            Err(JwsError::Expired),
        );
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
