//! Golden vectors: one table of tokens and proofs, each with the verdict
//! every Tessera verifier must give it. The SDK verifier's unit tests run
//! it (fixed clock, fixed keys) and the end-to-end test `golden` runs it
//! against the real broker's introspection and proof checks and the SDK
//! verifier connected to that broker, requiring the same verdict from both.
//!
//! The table is built, not stored: from the issuer's signing key, a valid
//! base claim set and "now", so the same cases apply to tokens minted by a
//! real broker. Compiled for this crate's tests and with the
//! `golden-vectors` feature (tests only; never in a release build).
//!
//! Token vectors expect a verifier for the base claims' `iss` and `aud`,
//! with both algorithms allowed, any leeway up to
//! [`super::MAX_LEEWAY_SECS`], and a revocation set that revokes nothing.
//! Proof vectors are for one [`ProofTarget`]; run them in order through one
//! replay cache (the `reused jti` case presents the `valid` case's proof
//! again).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};

use super::chain::ChainError;
use super::claims::{ACCESS_TOKEN_TYP, AccessClaims, Actor, ChainHop, MAX_CHAIN_LEN};
use super::jws::{JwsError, MAX_TOKEN_LEN, NOT_BASE64URL};
use super::{Algorithm, KeyError, MAX_LEEWAY_SECS, SigningKey};
use crate::pop::{BindingError, MAX_PROOF_LEN, PROOF_MAX_AGE, PROOF_TYP, ProofError, ProofKey, access_token_hash};

/// What a verifier must answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The token (and its proof) is accepted.
    Accept,
    /// Refused, for this reason.
    Refuse(Refusal),
}

/// Why a vector is refused: the core error a verifier reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The token itself ([`super::check_access_token`]).
    Token(JwsError),
    /// Its binding or proof ([`crate::pop::check_binding`]), a reused proof
    /// being [`ProofError::Replayed`].
    Binding(BindingError),
}

impl Verdict {
    /// The stable, language-neutral reason code of a refusal (`None` for
    /// [`Verdict::Accept`]): what `tests/vectors/golden.json` records, so
    /// verifiers in other languages can be held to the same reason.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            Self::Accept => None,
            Self::Refuse(refusal) => Some(refusal.code()),
        }
    }
}

impl Refusal {
    /// One code per core error variant (not per message: a variant's
    /// payload, such as a hop index, is not part of the code). The match is
    /// exhaustive so a new variant cannot go without a code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Token(e) => token_code(e),
            Self::Binding(e) => binding_code(e),
        }
    }
}

fn token_code(e: &JwsError) -> &'static str {
    match e {
        JwsError::TooLong => "too_long",
        JwsError::Malformed(_) => "malformed",
        JwsError::Algorithm => "alg_not_allowed",
        JwsError::AlgorithmNotAllowed(_) => "alg_not_in_allow_list",
        JwsError::AlgorithmMismatch => "alg_key_mismatch",
        JwsError::ForbiddenHeader(_) => "forbidden_header",
        JwsError::Type => "wrong_typ",
        JwsError::UnknownKey => "unknown_kid",
        JwsError::Signature => "bad_signature",
        JwsError::InvalidKey(_) => "invalid_key",
        JwsError::Claims => "bad_claims",
        JwsError::Issuer => "wrong_issuer",
        JwsError::Audience => "wrong_audience",
        JwsError::Expired => "expired",
        JwsError::NotYetValid => "not_yet_valid",
        JwsError::IssuedInFuture => "issued_in_future",
        JwsError::Chain(c) => match c {
            ChainError::Shape => "chain_shape",
            ChainError::TooLong => "chain_too_long",
            ChainError::Entry => "chain_entry",
            ChainError::Subject => "chain_subject",
            ChainError::Actors => "chain_actors",
            ChainError::WiderScope { .. } => "chain_widening",
            ChainError::LaterExpiry { .. } => "chain_later_expiry",
        },
    }
}

fn binding_code(e: &BindingError) -> &'static str {
    match e {
        BindingError::DpopSchemeWithoutKey => "dpop_scheme_without_key",
        BindingError::ProofRequired => "proof_required",
        BindingError::CertificateRequired => "certificate_required",
        BindingError::CertificateMismatch => "certificate_mismatch",
        BindingError::Proof(p) => match p {
            ProofError::TooLong => "proof_too_long",
            ProofError::Malformed(_) => "proof_malformed",
            ProofError::Type => "proof_wrong_typ",
            ProofError::Algorithm => "proof_alg_not_allowed",
            ProofError::Key(_) => "proof_bad_jwk",
            ProofError::Signature => "proof_bad_signature",
            ProofError::Method(_) => "proof_wrong_htm",
            ProofError::Target(_) => "proof_wrong_htu",
            ProofError::Stale(_) => "proof_stale",
            ProofError::Future => "proof_future",
            ProofError::Jti => "proof_bad_jti",
            ProofError::AccessTokenHash => "proof_wrong_ath",
            ProofError::Replayed => "proof_replayed",
            ProofError::WrongKey => "proof_wrong_key",
            ProofError::ContentDigest(_) => "proof_content_digest",
        },
    }
}

impl From<JwsError> for Verdict {
    fn from(e: JwsError) -> Self {
        Self::Refuse(Refusal::Token(e))
    }
}

impl From<ChainError> for Verdict {
    fn from(e: ChainError) -> Self {
        Self::Refuse(Refusal::Token(JwsError::Chain(e)))
    }
}

impl From<ProofError> for Verdict {
    fn from(e: ProofError) -> Self {
        Self::Refuse(Refusal::Binding(BindingError::Proof(e)))
    }
}

/// One token and its verdict.
#[derive(Debug, Clone)]
pub struct TokenVector {
    /// What the case is, e.g. `alg none`.
    pub name: &'static str,
    /// The compact JWS.
    pub token: String,
    /// The verdict.
    pub expected: Verdict,
}

/// The token cases, derived from `base` (a valid bearer claim set at `now`
/// whose `iss` and `aud` the verifier expects) and signed by `key`, the
/// issuer's key, unless the case is about the signature or the key.
pub fn token_vectors(key: &SigningKey, base: &AccessClaims, now: DateTime<Utc>) -> Result<Vec<TokenVector>, KeyError> {
    let base = AccessClaims {
        cnf: None,
        act: None,
        tessera_chain: Vec::new(),
        authorization_details: Vec::new(),
        ..base.clone()
    };
    let sign = |claims: &AccessClaims| key.sign_jws(ACCESS_TOKEN_TYP, claims);
    let with = |edit: &dyn Fn(&mut AccessClaims)| {
        let mut claims = base.clone();
        edit(&mut claims);
        sign(&claims)
    };
    let json = |claims: &AccessClaims| serde_json::to_vec(claims).map_err(KeyError::Claims);
    let header = |extra: &str| {
        format!(
            r#"{{"alg":"{}","typ":"at+jwt","kid":"{}"{extra}}}"#,
            key.algorithm(),
            key.kid()
        )
    };
    let beyond = MAX_LEEWAY_SECS + 60;
    let now = now.timestamp();
    let valid = sign(&base)?;
    let (valid_input, valid_sig) = valid.rsplit_once('.').ok_or(KeyError::Sign(key.algorithm()))?;
    let valid_payload = valid_input.split_once('.').map_or("", |(_, p)| p);

    let mut out = vec![TokenVector {
        name: "valid bearer token",
        token: valid.clone(),
        expected: Verdict::Accept,
    }];
    let mut push = |name, token, expected: Verdict| {
        out.push(TokenVector { name, token, expected });
    };

    // The algorithm and the key.
    let unsigned = |alg: &str| {
        let header = format!(r#"{{"alg":"{alg}","typ":"at+jwt","kid":"{}"}}"#, key.kid());
        format!("{}.{valid_payload}", b64(header.as_bytes()))
    };
    push("alg none", format!("{}.", unsigned("none")), JwsError::Algorithm.into());
    let hs256_input = unsigned("HS256");
    let secret = serde_json::to_vec(key.public_jwk()).map_err(KeyError::Claims)?;
    let mac = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret),
        hs256_input.as_bytes(),
    );
    push(
        "HS256 keyed with the public key",
        format!("{hs256_input}.{}", b64(mac.as_ref())),
        JwsError::Algorithm.into(),
    );
    let other_alg = match key.algorithm() {
        Algorithm::Es256 => Algorithm::EdDsa,
        Algorithm::EdDsa => Algorithm::Es256,
    };
    let impostor = SigningKey::generate(other_alg)?;
    let confused = format!(r#"{{"alg":"{other_alg}","typ":"at+jwt","kid":"{}"}}"#, key.kid());
    push(
        "alg differs from the key's",
        impostor.sign_compact(confused.as_bytes(), &json(&base)?)?,
        JwsError::AlgorithmMismatch.into(),
    );
    let stranger = SigningKey::generate(key.algorithm())?;
    push(
        "unknown kid",
        stranger.sign_jws(ACCESS_TOKEN_TYP, &base)?,
        JwsError::UnknownKey.into(),
    );

    // The bytes.
    let mut tampered = base.clone();
    tampered.scope = format!("{} admin", base.scope);
    push(
        "tampered payload",
        format!(
            "{}.{}.{valid_sig}",
            valid_input.split('.').next().unwrap_or_default(),
            b64(&json(&tampered)?)
        ),
        JwsError::Signature.into(),
    );
    let mut signature = URL_SAFE_NO_PAD
        .decode(valid_sig)
        .map_err(|_| KeyError::Sign(key.algorithm()))?;
    if let Some(byte) = signature.get_mut(7) {
        *byte ^= 0x01;
    }
    push(
        "tampered signature",
        format!("{valid_input}.{}", b64(&signature)),
        JwsError::Signature.into(),
    );
    push(
        "bad base64",
        format!("{valid_input}+.{valid_sig}"),
        JwsError::Malformed(NOT_BASE64URL).into(),
    );
    let mut padded = serde_json::to_value(&base).map_err(KeyError::Claims)?;
    if let Some(map) = padded.as_object_mut() {
        map.insert("pad".into(), "a".repeat(MAX_TOKEN_LEN).into());
    }
    push(
        "oversized",
        key.sign_jws(ACCESS_TOKEN_TYP, &padded)?,
        JwsError::TooLong.into(),
    );
    let text = String::from_utf8(json(&base)?).map_err(|_| KeyError::Sign(key.algorithm()))?;
    let duplicated = text.replacen('{', r#"{"iss":"https://evil.test","#, 1);
    push(
        "duplicate JSON members",
        key.sign_compact(header("").as_bytes(), duplicated.as_bytes())?,
        JwsError::Claims.into(),
    );

    // The header.
    push("wrong typ", key.sign_jws("JWT", &base)?, JwsError::Type.into());
    let jwk = serde_json::to_string(key.public_jwk()).map_err(KeyError::Claims)?;
    for (name, member, value) in [
        ("jku header", "jku", r#""https://evil.test/jwks""#.to_owned()),
        ("jwk header", "jwk", jwk),
        ("x5u header", "x5u", r#""https://evil.test/cert""#.to_owned()),
        ("x5c header", "x5c", r#"["MIIB"]"#.to_owned()),
        ("crit header", "crit", r#"["exp"]"#.to_owned()),
    ] {
        push(
            name,
            key.sign_compact(header(&format!(r#","{member}":{value}"#)).as_bytes(), &json(&base)?)?,
            JwsError::ForbiddenHeader(member).into(),
        );
    }

    // The claims.
    push(
        "wrong iss",
        with(&|c| c.iss = format!("{}.evil", c.iss))?,
        JwsError::Issuer.into(),
    );
    push(
        "wrong aud",
        with(&|c| c.aud = format!("{}/other", c.aud))?,
        JwsError::Audience.into(),
    );
    push(
        "expired beyond leeway",
        with(&|c| {
            c.iat = now - 2 * beyond;
            c.nbf = c.iat;
            c.exp = now - beyond;
        })?,
        JwsError::Expired.into(),
    );
    push(
        "nbf in the future",
        with(&|c| {
            c.nbf = now + beyond;
            c.exp = c.exp.max(now + 2 * beyond);
        })?,
        JwsError::NotYetValid.into(),
    );
    push(
        "iat in the future",
        with(&|c| {
            c.iat = now + beyond;
            c.exp = c.exp.max(now + 2 * beyond);
        })?,
        JwsError::IssuedInFuture.into(),
    );

    // Tool-level limits (RFC 9396 `mcp_tool`): read strictly; a limit a
    // verifier cannot read refuses the token, never is ignored.
    let limit = crate::authz::ToolGrant::parse(&serde_json::json!({
        "type": "mcp_tool", "server": base.aud, "tools": ["transfer"],
        "constraints": {"transfer": {"amount": {"max": 500}}}
    }))
    .map_err(|e| KeyError::Claims(serde::de::Error::custom(e)))?;
    push(
        "tool-level limits for its audience",
        with(&|c| c.authorization_details = vec![limit.clone()])?,
        Verdict::Accept,
    );
    let raw_details = |details: serde_json::Value| {
        let mut claims = serde_json::to_value(&base).map_err(KeyError::Claims)?;
        if let Some(map) = claims.as_object_mut() {
            map.insert("authorization_details".to_owned(), details);
        }
        key.sign_jws(ACCESS_TOKEN_TYP, &claims)
    };
    push(
        "authorization_details of an unknown type",
        raw_details(serde_json::json!([{"type": "payment_initiation", "instructedAmount": 1}]))?,
        JwsError::Claims.into(),
    );
    push(
        "authorization_details with an unknown operator",
        raw_details(serde_json::json!([{
            "type": "mcp_tool", "server": base.aud, "tools": ["transfer"],
            "constraints": {"transfer": {"amount": {"regex": ".*"}}}
        }]))?,
        JwsError::Claims.into(),
    );
    push(
        "authorization_details not an array",
        raw_details(serde_json::json!({"type": "mcp_tool", "server": base.aud, "tools": ["transfer"]}))?,
        JwsError::Claims.into(),
    );

    // The delegation chain. The root is an identity the broker never saw:
    // the chain is the token's own signed claim, checked for consistency.
    let root = format!("{}-root", base.client_id);
    let delegated = |hops: usize, edit: &dyn Fn(&mut AccessClaims)| {
        let mut claims = base.clone();
        claims.sub = root.clone();
        let holders: Vec<String> = (0..hops)
            .map(|i| {
                if i == 0 {
                    root.clone()
                } else {
                    format!("{root}/hop-{i}")
                }
            })
            .collect();
        claims.tessera_chain = holders
            .iter()
            .enumerate()
            .map(|(i, sub)| ChainHop {
                jti: format!("golden-ancestor-{i}"),
                sub: sub.clone(),
                scope: base.scope.clone(),
                exp: base.exp,
            })
            .collect();
        let actors = std::iter::once(base.client_id.clone()).chain(holders.iter().skip(1).rev().cloned());
        claims.act = Actor::nest(actors.collect::<Vec<_>>());
        edit(&mut claims);
        sign(&claims)
    };
    push("delegated, well formed", delegated(1, &|_| {})?, Verdict::Accept);
    push(
        "act without tessera_chain",
        delegated(1, &|c| c.tessera_chain.clear())?,
        ChainError::Shape.into(),
    );
    push(
        "act names another holder",
        delegated(1, &|c| c.act = Actor::nest([format!("{root}/someone")]))?,
        ChainError::Actors.into(),
    );
    push(
        "act chain too deep",
        delegated(MAX_CHAIN_LEN + 1, &|_| {})?,
        ChainError::TooLong.into(),
    );
    push(
        "act chain widens the scopes",
        delegated(1, &|c| {
            if let Some(hop) = c.tessera_chain.first_mut() {
                hop.scope = "golden.narrower".into();
            }
        })?,
        ChainError::WiderScope { hop: 0 }.into(),
    );
    push(
        "act chain extends the expiry",
        delegated(1, &|c| {
            if let Some(hop) = c.tessera_chain.first_mut() {
                hop.exp = c.exp - 1;
            }
        })?,
        ChainError::LaterExpiry { hop: 0 }.into(),
    );
    Ok(out)
}

/// What the proofs are for: the request they accompany.
#[derive(Debug, Clone, Copy)]
pub struct ProofTarget<'a> {
    /// The request's method.
    pub htm: &'a str,
    /// The request's URL, or the broker's gRPC method path.
    pub htu: &'a str,
    /// The `cnf.jkt`-bound token the proof accompanies (a resource server);
    /// `None` at the broker, where a proof asks for a binding. The cases
    /// about the token (`missing`, `wrong ath`, `key not matching cnf.jkt`)
    /// exist only with a token.
    pub access_token: Option<&'a str>,
}

/// One proof and its verdict; `proof: None` presents the token without one.
#[derive(Debug, Clone)]
pub struct ProofVector {
    /// What the case is, e.g. `stale iat`.
    pub name: &'static str,
    /// The proof sent with the request.
    pub proof: Option<String>,
    /// The verdict.
    pub expected: Verdict,
}

/// The proof cases for `target`, signed by `key` (whose thumbprint the
/// token's `cnf.jkt` is) at `now`, in the order they must be run.
pub fn proof_vectors(
    key: &ProofKey,
    target: &ProofTarget<'_>,
    now: DateTime<Utc>,
) -> Result<Vec<ProofVector>, KeyError> {
    let sign = |jti: &str, htm: &str, htu: &str, iat: DateTime<Utc>| key.sign(htm, htu, jti, iat, target.access_token);
    let signer = key.signing_key();
    let raw = |header: serde_json::Value, claims: serde_json::Value| {
        let header = serde_json::to_vec(&header).map_err(KeyError::Claims)?;
        let claims = serde_json::to_vec(&claims).map_err(KeyError::Claims)?;
        signer.sign_compact(&header, &claims)
    };
    let claims = |jti: &str| {
        let mut claims = serde_json::json!({"jti": jti, "htm": target.htm, "htu": target.htu, "iat": now.timestamp()});
        if let (Some(token), Some(map)) = (target.access_token, claims.as_object_mut()) {
            map.insert("ath".into(), access_token_hash(token).into());
        }
        claims
    };
    let jwk = key.public_jwk();
    let alg = key.algorithm().as_jose();
    let valid = sign("golden-valid", target.htm, target.htu, now)?;
    let wrong_htm = if target.htm == "POST" { "PUT" } else { "POST" };

    let mut out = vec![
        ProofVector {
            name: "valid proof-bound token with a valid proof",
            proof: Some(valid.clone()),
            expected: Verdict::Accept,
        },
        ProofVector {
            name: "reused jti",
            proof: Some(valid),
            expected: ProofError::Replayed.into(),
        },
    ];
    let mut push = |name, proof: String, expected: Verdict| {
        out.push(ProofVector {
            name,
            proof: Some(proof),
            expected,
        });
    };
    push(
        "wrong typ",
        raw(
            serde_json::json!({"typ": "jwt", "alg": alg, "jwk": jwk}),
            claims("golden-typ"),
        )?,
        ProofError::Type.into(),
    );
    let header = serde_json::json!({"typ": PROOF_TYP, "alg": "none", "jwk": jwk});
    let unsigned = format!(
        "{}.{}.",
        b64(&serde_json::to_vec(&header).map_err(KeyError::Claims)?),
        b64(&serde_json::to_vec(&claims("golden-none")).map_err(KeyError::Claims)?)
    );
    push("alg none", unsigned, ProofError::Algorithm.into());
    push(
        "jku header",
        raw(
            serde_json::json!({"typ": PROOF_TYP, "alg": alg, "jwk": jwk, "jku": "https://evil.test/jwks"}),
            claims("golden-jku"),
        )?,
        ProofError::Malformed("header member `jku` is not accepted").into(),
    );
    let mut private = jwk.clone();
    if let Some(map) = private.as_object_mut() {
        map.insert("d".into(), "AAAA".into());
    }
    push(
        "private key in jwk",
        raw(
            serde_json::json!({"typ": PROOF_TYP, "alg": alg, "jwk": private}),
            claims("golden-private"),
        )?,
        ProofError::Key("it has a private or unknown member").into(),
    );
    push(
        "wrong htm",
        sign("golden-htm", wrong_htm, target.htu, now)?,
        ProofError::Method(target.htm.to_owned()).into(),
    );
    push(
        "wrong htu",
        sign("golden-htu", target.htm, &format!("{}/other", target.htu), now)?,
        ProofError::Target(target.htu.to_owned()).into(),
    );
    push(
        "stale iat",
        sign(
            "golden-stale",
            target.htm,
            target.htu,
            now - PROOF_MAX_AGE - Duration::seconds(30),
        )?,
        ProofError::Stale(PROOF_MAX_AGE.num_seconds()).into(),
    );
    push(
        "future iat",
        sign(
            "golden-future",
            target.htm,
            target.htu,
            now + Duration::seconds(MAX_LEEWAY_SECS + 60),
        )?,
        ProofError::Future.into(),
    );
    let mut padded = claims("golden-oversized");
    if let Some(map) = padded.as_object_mut() {
        map.insert("pad".into(), "a".repeat(MAX_PROOF_LEN).into());
    }
    push(
        "oversized",
        raw(serde_json::json!({"typ": PROOF_TYP, "alg": alg, "jwk": jwk}), padded)?,
        ProofError::TooLong.into(),
    );
    if target.access_token.is_some() {
        out.push(ProofVector {
            name: "missing",
            proof: None,
            expected: Verdict::Refuse(Refusal::Binding(BindingError::ProofRequired)),
        });
        let mut wrong_ath = claims("golden-ath");
        if let Some(map) = wrong_ath.as_object_mut() {
            map.insert("ath".into(), access_token_hash("another token").into());
        }
        out.push(ProofVector {
            name: "wrong ath",
            proof: Some(raw(
                serde_json::json!({"typ": PROOF_TYP, "alg": alg, "jwk": jwk}),
                wrong_ath,
            )?),
            expected: ProofError::AccessTokenHash.into(),
        });
        let thief = ProofKey::generate_for(key.algorithm())?;
        out.push(ProofVector {
            name: "key not matching cnf.jkt",
            proof: Some(thief.sign(target.htm, target.htu, "golden-thief", now, target.access_token)?),
            expected: ProofError::WrongKey.into(),
        });
    }
    Ok(out)
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The committed export of this table, `tests/vectors/golden.json`: its
/// generator and the test holding it to core's verdicts.
#[cfg(test)]
mod golden_file;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]

    use super::*;
    use crate::pop::{Bound, Presentation, check_binding};
    use crate::token::test_keys::{ed25519, jwks, p256};
    use crate::token::{AccessCheck, Confirmation, check_access_token};

    const T0: i64 = 1_800_000_000;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(T0, 0).unwrap()
    }

    fn base() -> AccessClaims {
        AccessClaims {
            iss: "https://tessera.test".into(),
            sub: "spiffe://tessera.test/agent/a".into(),
            aud: "https://api.test".into(),
            exp: T0 + 300,
            nbf: T0,
            iat: T0,
            jti: "AAAAAAAAAAAAAAAAAAAAAA".into(),
            scope: "read write".into(),
            client_id: "spiffe://tessera.test/agent/a".into(),
            task_id: "t-1".into(),
            cnf: None,
            act: None,
            tessera_chain: Vec::new(),
            authorization_details: Vec::new(),
        }
    }

    fn check(leeway_secs: i64) -> AccessCheck<'static> {
        AccessCheck {
            audience: Some("https://api.test"),
            leeway_secs,
            ..AccessCheck::new("https://tessera.test", now())
        }
    }

    /// Core's own verification gives every token vector its verdict, for
    /// both algorithms and the smallest and largest leeway.
    #[test]
    fn core_agrees_with_every_token_vector() {
        for key in [p256(), ed25519()] {
            let set = jwks(&[&key]);
            for vector in token_vectors(&key, &base(), now()).unwrap() {
                for leeway in [0, MAX_LEEWAY_SECS] {
                    let got = match check_access_token(&vector.token, &set, &check(leeway)) {
                        Ok(_) => Verdict::Accept,
                        Err(e) => e.into(),
                    };
                    assert_eq!(got, vector.expected, "{} (leeway {leeway})", vector.name);
                }
            }
        }
    }

    /// And every proof vector, with a token and at the broker (no token),
    /// spending each accepted proof's `jti` in a replay set.
    #[test]
    fn core_agrees_with_every_proof_vector() {
        for alg in Algorithm::ALL {
            let key = ProofKey::generate_for(alg).unwrap();
            let cnf = Confirmation::Jkt(key.thumbprint().to_owned());
            for token in [Some("the-token"), None] {
                let target = ProofTarget {
                    htm: "GET",
                    htu: "https://api.test/crm",
                    access_token: token,
                };
                let mut seen = std::collections::HashSet::new();
                for vector in proof_vectors(&key, &target, now()).unwrap() {
                    let presented = Presentation {
                        access_token: token.unwrap_or_default(),
                        dpop_scheme: true,
                        proof: vector.proof.as_deref(),
                        htm: target.htm,
                        htu: target.htu,
                        client_cert_der: None,
                        now: now(),
                        max_age: PROOF_MAX_AGE,
                        leeway: Duration::seconds(5),
                    };
                    let got = match (token, &vector.proof) {
                        (Some(_), _) => check_binding(Some(&cnf), &presented).map(|b| match b {
                            Bound::Dpop(p) => p,
                            other => panic!("{other:?}"),
                        }),
                        (None, Some(proof)) => crate::pop::verify_proof(
                            proof,
                            &crate::pop::ProofCheck {
                                htm: target.htm,
                                htu: target.htu,
                                now: now(),
                                max_age: PROOF_MAX_AGE,
                                leeway: Duration::seconds(5),
                                access_token: None,
                            },
                        )
                        .map_err(BindingError::Proof),
                        (None, None) => panic!("a proof case without a proof at the broker"),
                    };
                    let got = match got {
                        Ok(p) if seen.insert(p.replay_id()) => Verdict::Accept,
                        Ok(_) => ProofError::Replayed.into(),
                        Err(e) => Verdict::Refuse(Refusal::Binding(e)),
                    };
                    assert_eq!(got, vector.expected, "{} ({alg}, token {token:?})", vector.name);
                }
            }
        }
    }
}
