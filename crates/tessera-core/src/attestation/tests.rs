//! Attestation verification: golden cases, every refusal of the test matrix
//! (A1-A4, A8, A9, A13) and property tests over header mutations.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

use std::collections::BTreeSet;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;
use ring::rand::SystemRandom;
use ring::signature::{self, KeyPair as _};
use serde_json::json;

use super::jwt::{self, IssuerPolicy, JwtAlgorithm, JwtError};
use super::*;
use crate::identity::{SpiffeId, SpiffeIdError};

const ISS: &str = "https://kubernetes.default.svc";
const AUD: &str = "tessera";
/// A throwaway RSA key (PKCS#1 DER) made for these tests with `openssl genpkey`; it
/// signs nothing else.
const RSA_TEST_KEY: &[u8] = include_bytes!("testdata/rsa2048-throwaway-test-key.der");

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

/// A test signing key of one algorithm, and its public JWK.
enum Signer {
    Ec(signature::EcdsaKeyPair, JwtAlgorithm),
    Ed(signature::Ed25519KeyPair),
    Rsa(signature::RsaKeyPair, JwtAlgorithm),
}

impl Signer {
    fn new(alg: JwtAlgorithm) -> Self {
        let rng = SystemRandom::new();
        match alg {
            JwtAlgorithm::Es256 | JwtAlgorithm::Es384 => {
                let a = if alg == JwtAlgorithm::Es256 {
                    &signature::ECDSA_P256_SHA256_FIXED_SIGNING
                } else {
                    &signature::ECDSA_P384_SHA384_FIXED_SIGNING
                };
                let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(a, &rng).unwrap();
                Self::Ec(
                    signature::EcdsaKeyPair::from_pkcs8(a, pkcs8.as_ref(), &rng).unwrap(),
                    alg,
                )
            }
            JwtAlgorithm::EdDsa => {
                let pkcs8 = signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
                Self::Ed(signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap())
            }
            JwtAlgorithm::Rs256 | JwtAlgorithm::Ps256 => {
                Self::Rsa(signature::RsaKeyPair::from_der(RSA_TEST_KEY).unwrap(), alg)
            }
        }
    }

    fn alg(&self) -> JwtAlgorithm {
        match self {
            Self::Ec(_, a) | Self::Rsa(_, a) => *a,
            Self::Ed(_) => JwtAlgorithm::EdDsa,
        }
    }

    fn public_key_bytes(&self) -> Vec<u8> {
        match self {
            Self::Ec(k, _) => k.public_key().as_ref().to_vec(),
            Self::Ed(k) => k.public_key().as_ref().to_vec(),
            Self::Rsa(k, _) => k.public_key().as_ref().to_vec(),
        }
    }

    fn jwk(&self, kid: &str) -> serde_json::Value {
        match self {
            Self::Ec(k, alg) => {
                let p = k.public_key().as_ref();
                let n = (p.len() - 1) / 2;
                let crv = if *alg == JwtAlgorithm::Es256 { "P-256" } else { "P-384" };
                json!({"kty":"EC","crv":crv,"x":b64(&p[1..=n]),"y":b64(&p[1 + n..]),"kid":kid,"use":"sig"})
            }
            Self::Ed(k) => json!({"kty":"OKP","crv":"Ed25519","x":b64(k.public_key().as_ref()),"kid":kid}),
            Self::Rsa(k, _) => {
                let c = signature::RsaPublicKeyComponents::<Vec<u8>>::from(k.public());
                json!({"kty":"RSA","n":b64(&c.n),"e":b64(&c.e),"kid":kid})
            }
        }
    }

    fn sign(&self, input: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match self {
            Self::Ec(k, _) => k.sign(&rng, input).unwrap().as_ref().to_vec(),
            Self::Ed(k) => k.sign(input).as_ref().to_vec(),
            Self::Rsa(k, alg) => {
                let padding: &dyn signature::RsaEncoding = if *alg == JwtAlgorithm::Rs256 {
                    &signature::RSA_PKCS1_SHA256
                } else {
                    &signature::RSA_PSS_SHA256
                };
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(padding, &rng, input, &mut sig).unwrap();
                sig
            }
        }
    }

    /// A token with exactly this header and payload JSON text.
    fn token_raw(&self, header: &str, payload: &str) -> String {
        let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
        let sig = self.sign(input.as_bytes());
        format!("{input}.{}", b64(&sig))
    }

    fn token(&self, claims: &serde_json::Value) -> String {
        let header = json!({"alg": self.alg().as_jose(), "kid": "k1", "typ": "JWT"});
        self.token_raw(&header.to_string(), &claims.to_string())
    }
}

fn k8s_claims() -> serde_json::Value {
    let t = now().timestamp();
    json!({
        "iss": ISS, "aud": [AUD], "sub": "system:serviceaccount:prod:api",
        "exp": t + 600, "iat": t - 10, "nbf": t - 10, "jti": "4b5c-1",
        "kubernetes.io": {"namespace": "prod", "serviceaccount": {"name": "api", "uid": "u-1"}}
    })
}

fn policy(algs: &[JwtAlgorithm]) -> IssuerPolicy {
    IssuerPolicy {
        name: "k8s".into(),
        issuer: ISS.into(),
        audience: AUD.into(),
        allow_multiple_audiences: false,
        algorithms: algs.iter().copied().collect(),
        max_age: Duration::hours(1),
        leeway: Duration::seconds(5),
        single_use_jti: true,
        mapping: ClaimMapping::parse("spiffe://td/ns/{kubernetes.io.namespace}/sa/{kubernetes.io.serviceaccount.name}")
            .unwrap(),
        trust_domains: BTreeSet::from(["td".to_owned()]),
    }
}

fn keys_of(signer: &Signer) -> IssuerKeys {
    IssuerKeys::from_json(json!({"keys": [signer.jwk("k1")]}).to_string().as_bytes()).unwrap()
}

fn attest(
    token: &str,
    policy: &IssuerPolicy,
    keys: &IssuerKeys,
    at: DateTime<Utc>,
) -> Result<JwtAttestation, JwtError> {
    let parsed = jwt::parse(token, std::slice::from_ref(policy))?;
    jwt::verify(&parsed, policy, keys, at)
}

#[track_caller]
fn refused(token: &str, policy: &IssuerPolicy, keys: &IssuerKeys, expected: JwtError) {
    let err = attest(token, policy, keys, now()).unwrap_err();
    assert_eq!(err, expected);
    assert_eq!(err.kind(), crate::ErrorKind::Unauthenticated);
    let message = err.to_string();
    for segment in token.split('.').filter(|s| s.len() >= 8) {
        assert!(!message.contains(segment), "the refusal leaks the token: {message}");
    }
}

#[test]
fn every_configured_algorithm_attests() {
    for alg in JwtAlgorithm::ALL {
        let signer = Signer::new(alg);
        let got = attest(&signer.token(&k8s_claims()), &policy(&[alg]), &keys_of(&signer), now()).unwrap();
        assert_eq!(got.id.as_str(), "spiffe://td/ns/prod/sa/api", "{alg}");
        assert_eq!(got.issuer, "k8s");
        assert_eq!(got.single_use_jti.as_deref(), Some("4b5c-1"));
        assert_eq!(got.replay_until, now() + Duration::seconds(605));
    }
}

#[test]
fn a1_alg_none_in_any_case_and_symmetric_algs_are_refused() {
    let signer = Signer::new(JwtAlgorithm::Es256);
    let (p, keys) = (policy(&JwtAlgorithm::ALL), keys_of(&signer));
    for alg in [
        "none", "None", "noNE", "NONE", "HS256", "hs256", "HS512", "es256", "Es256", "ES256 ", "", "RS1",
    ] {
        let header = json!({"alg": alg, "kid": "k1"}).to_string();
        let token = signer.token_raw(&header, &k8s_claims().to_string());
        refused(&token, &p, &keys, JwtError::Algorithm);
        // An unsigned token (`alg: none` has an empty signature) is not even well-formed.
        let unsigned = format!(
            "{}.{}.",
            b64(header.as_bytes()),
            b64(k8s_claims().to_string().as_bytes())
        );
        refused(
            &unsigned,
            &p,
            &keys,
            JwtError::Malformed("expected three non-empty dot-separated segments"),
        );
    }
    // An algorithm we know but the issuer does not allow.
    let ed = Signer::new(JwtAlgorithm::EdDsa);
    refused(
        &ed.token(&k8s_claims()),
        &policy(&[JwtAlgorithm::Es256]),
        &keys_of(&ed),
        JwtError::Algorithm,
    );
    assert_eq!(JwtError::Algorithm.reason(), "alg");
}

#[test]
fn a2_hs256_resigned_with_the_public_key_as_secret_is_refused() {
    for alg in [JwtAlgorithm::Es256, JwtAlgorithm::Rs256] {
        let signer = Signer::new(alg);
        let keys = keys_of(&signer);
        let header = json!({"alg": "HS256", "kid": "k1"}).to_string();
        let input = format!(
            "{}.{}",
            b64(header.as_bytes()),
            b64(k8s_claims().to_string().as_bytes())
        );
        // The classic confusion attack: the public key (and its JWK text) as the HMAC secret.
        for secret in [signer.public_key_bytes(), signer.jwk("k1").to_string().into_bytes()] {
            let mac = ring::hmac::sign(
                &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret),
                input.as_bytes(),
            );
            let forged = format!("{input}.{}", b64(mac.as_ref()));
            refused(&forged, &policy(&JwtAlgorithm::ALL), &keys, JwtError::Algorithm);
        }
        // Same MAC under the real alg name: the signature check refuses it.
        let header = json!({"alg": alg.as_jose(), "kid": "k1"}).to_string();
        let input = format!(
            "{}.{}",
            b64(header.as_bytes()),
            b64(k8s_claims().to_string().as_bytes())
        );
        let mac = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &signer.public_key_bytes()),
            input.as_bytes(),
        );
        refused(
            &format!("{input}.{}", b64(mac.as_ref())),
            &policy(&JwtAlgorithm::ALL),
            &keys,
            JwtError::Signature,
        );
    }
}

#[test]
fn a3_malformed_structure_is_refused_before_json() {
    let signer = Signer::new(JwtAlgorithm::Es256);
    let (p, keys) = (policy(&[JwtAlgorithm::Es256]), keys_of(&signer));
    let good = signer.token(&k8s_claims());
    let parts: Vec<&str> = good.split('.').collect();
    let segments = JwtError::Malformed("expected three non-empty dot-separated segments");
    let not_b64 = JwtError::Malformed("segment is not unpadded base64url");
    refused(&format!("{}.{}", parts[0], parts[1]), &p, &keys, segments.clone());
    refused(&format!("{good}.{}", parts[2]), &p, &keys, segments.clone());
    refused("", &p, &keys, segments.clone());
    refused("..", &p, &keys, segments.clone());
    refused(&format!(".{}.{}", parts[1], parts[2]), &p, &keys, segments);
    for bad in ["+", "/", "=", " ", "\n", "%", "é"] {
        refused(
            &format!("{}{bad}.{}.{}", parts[0], parts[1], parts[2]),
            &p,
            &keys,
            not_b64.clone(),
        );
        refused(
            &format!("{}.{}.{}{bad}", parts[0], parts[1], parts[2]),
            &p,
            &keys,
            not_b64.clone(),
        );
    }
    // Padded base64url is a second encoding of the same bytes: refused.
    refused(
        &format!("{}==.{}.{}", parts[0], parts[1], parts[2]),
        &p,
        &keys,
        not_b64.clone(),
    );
    // The JSON serialization of a JWS is not a compact JWS.
    let json_jws = json!({"protected": parts[0], "payload": parts[1], "signature": parts[2]}).to_string();
    refused(
        &json_jws,
        &p,
        &keys,
        JwtError::Malformed("expected three non-empty dot-separated segments"),
    );
    // A megabyte header: refused by length, unread.
    let huge = format!("{}.{}.{}", "A".repeat(1 << 20), parts[1], parts[2]);
    refused(&huge, &p, &keys, JwtError::TooLong);
    // Under the total cap, over the header cap.
    let big_header = json!({"alg":"ES256","kid":"k1","typ":"x".repeat(2000)}).to_string();
    refused(
        &signer.token_raw(&big_header, &k8s_claims().to_string()),
        &p,
        &keys,
        JwtError::Malformed("header is too large"),
    );
    // Headers and payloads that are not objects with unique members.
    for header in [
        r#"["ES256"]"#,
        r#""ES256""#,
        r#"{"alg":"ES256","kid":"k1","alg":"ES256"}"#,
        "{",
    ] {
        let err = attest(&signer.token_raw(header, &k8s_claims().to_string()), &p, &keys, now()).unwrap_err();
        assert!(matches!(err, JwtError::Malformed(_)), "{header}: {err:?}");
    }
    let t = now().timestamp();
    let dup = format!(
        r#"{{"iss":"{ISS}","aud":"{AUD}","sub":"a","sub":"b","exp":{},"iat":{t}}}"#,
        t + 60
    );
    let err = attest(
        &signer.token_raw(r#"{"alg":"ES256","kid":"k1"}"#, &dup),
        &p,
        &keys,
        now(),
    )
    .unwrap_err();
    assert!(matches!(err, JwtError::Malformed(_)), "{err:?}");
}

#[test]
fn a4_kid_is_only_a_map_key() {
    let signer = Signer::new(JwtAlgorithm::Es256);
    let (p, keys) = (policy(&[JwtAlgorithm::Es256]), keys_of(&signer));
    let token = |kid: &serde_json::Value| {
        let header = json!({"alg": "ES256", "kid": kid}).to_string();
        signer.token_raw(&header, &k8s_claims().to_string())
    };
    refused(&token(&json!("k2")), &p, &keys, JwtError::UnknownKey("k8s".into()));
    for kid in [
        json!("../k1"),
        json!("k1/../../etc/passwd"),
        json!("k1'"),
        json!("k1\""),
        json!("k1\u{0}"),
        json!("k1\n"),
        json!("k 1"),
        json!("..\\k1"),
        json!(""),
        json!("k".repeat(257)),
        json!(1),
        json!(null),
    ] {
        let err = attest(&token(&kid), &p, &keys, now()).unwrap_err();
        assert!(
            matches!(err, JwtError::KeyId | JwtError::Malformed(_)),
            "{kid}: {err:?}"
        );
    }
    // 10 KB: refused by size before the header is decoded.
    let err = attest(&token(&json!("k".repeat(10 * 1024))), &p, &keys, now()).unwrap_err();
    assert_eq!(err, JwtError::TooLong);
    let header = json!({"alg": "ES256"}).to_string();
    refused(
        &signer.token_raw(&header, &k8s_claims().to_string()),
        &p,
        &keys,
        JwtError::KeyId,
    );
}

#[test]
fn a5_headers_that_point_elsewhere_are_refused() {
    let signer = Signer::new(JwtAlgorithm::Es256);
    let (p, keys) = (policy(&[JwtAlgorithm::Es256]), keys_of(&signer));
    for (member, value) in [
        ("jku", json!("http://127.0.0.1:1/jwks")),
        ("x5u", json!("http://127.0.0.1:1/cert")),
        ("jwk", signer.jwk("k1")),
        ("x5c", json!(["MIIB"])),
        ("crit", json!(["exp"])),
        ("x5t", json!("abc")),
        ("cty", json!("JWT")),
    ] {
        let mut header = json!({"alg": "ES256", "kid": "k1"});
        header[member] = value;
        let token = signer.token_raw(&header.to_string(), &k8s_claims().to_string());
        refused(&token, &p, &keys, JwtError::ForbiddenHeader(member.into()));
    }
    let header = json!({"alg": "ES256", "kid": "k1", "evil\"": 1}).to_string();
    refused(
        &signer.token_raw(&header, &k8s_claims().to_string()),
        &p,
        &keys,
        JwtError::ForbiddenHeader("(other)".into()),
    );
}

#[test]
fn a6_unconfigured_issuers_are_refused_before_any_key_lookup() {
    let signer = Signer::new(JwtAlgorithm::Es256);
    let p = policy(&[JwtAlgorithm::Es256]);
    for iss in [
        json!("http://127.0.0.1:9/"),
        json!("https://kubernetes.default.svc/"),
        json!(ISS.to_uppercase()),
    ] {
        let mut claims = k8s_claims();
        claims["iss"] = iss;
        assert_eq!(
            jwt::parse(&signer.token(&claims), std::slice::from_ref(&p)).unwrap_err(),
            JwtError::Issuer
        );
    }
    let mut claims = k8s_claims();
    claims.as_object_mut().unwrap().remove("iss");
    assert_eq!(
        jwt::parse(&signer.token(&claims), std::slice::from_ref(&p)).unwrap_err(),
        JwtError::Issuer
    );
    assert_eq!(
        jwt::parse(&signer.token(&k8s_claims()), &[]).unwrap_err(),
        JwtError::Issuer
    );
}

#[test]
fn tampering_is_refused() {
    let signer = Signer::new(JwtAlgorithm::Es256);
    let (p, keys) = (policy(&[JwtAlgorithm::Es256]), keys_of(&signer));
    let good = signer.token(&k8s_claims());
    let parts: Vec<&str> = good.split('.').collect();
    let mut claims = k8s_claims();
    claims["kubernetes.io"]["namespace"] = json!("kube-system");
    let swapped = format!("{}.{}.{}", parts[0], b64(claims.to_string().as_bytes()), parts[2]);
    refused(&swapped, &p, &keys, JwtError::Signature);
    let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    sig[10] ^= 1;
    refused(
        &format!("{}.{}.{}", parts[0], parts[1], b64(&sig)),
        &p,
        &keys,
        JwtError::Signature,
    );
    // Signed by another key with the same kid.
    let other = Signer::new(JwtAlgorithm::Es256);
    refused(&other.token(&k8s_claims()), &p, &keys, JwtError::Signature);
    // A key of another type under the kid: algorithm mismatch, not a verify attempt.
    let ed = Signer::new(JwtAlgorithm::EdDsa);
    refused(
        &ed.token(&k8s_claims()),
        &policy(&JwtAlgorithm::ALL),
        &keys,
        JwtError::AlgorithmMismatch,
    );
}

#[test]
fn a8_audience() {
    let signer = Signer::new(JwtAlgorithm::Es256);
    let (mut p, keys) = (policy(&[JwtAlgorithm::Es256]), keys_of(&signer));
    let with_aud = |aud: Option<serde_json::Value>| {
        let mut c = k8s_claims();
        match aud {
            Some(a) => c["aud"] = a,
            None => drop(c.as_object_mut().unwrap().remove("aud")),
        }
        signer.token(&c)
    };
    refused(&with_aud(None), &p, &keys, JwtError::Audience);
    refused(&with_aud(Some(json!("other"))), &p, &keys, JwtError::Audience);
    refused(&with_aud(Some(json!(["other"]))), &p, &keys, JwtError::Audience);
    refused(&with_aud(Some(json!("TESSERA"))), &p, &keys, JwtError::Audience);
    // Malformed audiences: jsonwebtoken (which checks `aud` right after the
    // signature) refuses them as not ours.
    refused(&with_aud(Some(json!([]))), &p, &keys, JwtError::Audience);
    refused(&with_aud(Some(json!(7))), &p, &keys, JwtError::Audience);
    refused(&with_aud(Some(json!([AUD, 7]))), &p, &keys, JwtError::Audience);
    refused(
        &with_aud(Some(json!(["other", AUD]))),
        &p,
        &keys,
        JwtError::MultipleAudiences("k8s".into()),
    );
    assert!(attest(&with_aud(Some(json!(AUD))), &p, &keys, now()).is_ok());
    p.allow_multiple_audiences = true;
    assert!(attest(&with_aud(Some(json!(["other", AUD]))), &p, &keys, now()).is_ok());
}

#[test]
fn a9_time_claims_at_the_leeway_boundary() {
    let signer = Signer::new(JwtAlgorithm::Es256);
    let (p, keys) = (policy(&[JwtAlgorithm::Es256]), keys_of(&signer));
    let leeway = Duration::seconds(5);
    let t = now().timestamp();
    let token = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = k8s_claims();
        f(&mut c);
        signer.token(&c)
    };
    // exp: valid while now < exp + leeway.
    let expiring = token(&|c| c["exp"] = json!(t));
    assert!(attest(&expiring, &p, &keys, now() + leeway - Duration::seconds(1)).is_ok());
    assert_eq!(
        attest(&expiring, &p, &keys, now() + leeway).unwrap_err(),
        JwtError::Expired
    );
    assert_eq!(
        attest(
            &token(&|c| drop(c.as_object_mut().unwrap().remove("exp"))),
            &p,
            &keys,
            now()
        )
        .unwrap_err(),
        JwtError::Expired
    );
    // Not a NumericDate: jsonwebtoken counts it as no `exp` at all.
    assert_eq!(
        attest(&token(&|c| c["exp"] = json!("soon")), &p, &keys, now()).unwrap_err(),
        JwtError::Expired
    );
    // nbf: refused while now + leeway < nbf.
    let future = token(&|c| c["nbf"] = json!(t + 5));
    assert!(attest(&future, &p, &keys, now()).is_ok());
    let future = token(&|c| c["nbf"] = json!(t + 6));
    assert_eq!(attest(&future, &p, &keys, now()).unwrap_err(), JwtError::NotYetValid);
    // iat: required, not in the future beyond leeway, not older than max_age.
    assert!(attest(&token(&|c| c["iat"] = json!(t + 5)), &p, &keys, now()).is_ok());
    assert_eq!(
        attest(&token(&|c| c["iat"] = json!(t + 6)), &p, &keys, now()).unwrap_err(),
        JwtError::IssuedInFuture
    );
    assert_eq!(
        attest(
            &token(&|c| drop(c.as_object_mut().unwrap().remove("iat"))),
            &p,
            &keys,
            now()
        )
        .unwrap_err(),
        JwtError::IssuedInFuture
    );
    assert!(attest(&token(&|c| c["iat"] = json!(t - 3600)), &p, &keys, now()).is_ok());
    assert_eq!(
        attest(&token(&|c| c["iat"] = json!(t - 3601)), &p, &keys, now()).unwrap_err(),
        JwtError::TooOld("k8s".into())
    );
    // A fractional NumericDate counts too.
    assert!(attest(&token(&|c| c["exp"] = json!(t as f64 + 60.5)), &p, &keys, now()).is_ok());
}

#[test]
fn single_use_requires_a_usable_jti() {
    let signer = Signer::new(JwtAlgorithm::Es256);
    let (mut p, keys) = (policy(&[JwtAlgorithm::Es256]), keys_of(&signer));
    for jti in [
        None,
        Some(json!("")),
        Some(json!(5)),
        Some(json!("a b")),
        Some(json!("j".repeat(257))),
    ] {
        let mut c = k8s_claims();
        match jti {
            Some(j) => c["jti"] = j,
            None => drop(c.as_object_mut().unwrap().remove("jti")),
        }
        refused(&signer.token(&c), &p, &keys, JwtError::Jti("k8s".into()));
        p.single_use_jti = false;
        assert_eq!(
            attest(&signer.token(&c), &p, &keys, now()).unwrap().single_use_jti,
            None
        );
        p.single_use_jti = true;
    }
}

#[test]
fn claims_map_only_to_safe_ids_in_the_issuers_domain() {
    let signer = Signer::new(JwtAlgorithm::Es256);
    let (mut p, keys) = (policy(&[JwtAlgorithm::Es256]), keys_of(&signer));
    for ns in [
        json!("a/b"),
        json!(".."),
        json!("."),
        json!(""),
        json!("a b"),
        json!("%2e%2e"),
        json!(7),
        json!(null),
    ] {
        let mut c = k8s_claims();
        c["kubernetes.io"]["namespace"] = ns.clone();
        let err = attest(&signer.token(&c), &p, &keys, now()).unwrap_err();
        assert!(matches!(err, JwtError::Mapping(_)), "{ns}: {err:?}");
        assert_eq!(err.reason(), "mapping");
    }
    p.trust_domains = BTreeSet::from(["other".to_owned()]);
    refused(
        &signer.token(&k8s_claims()),
        &p,
        &keys,
        JwtError::Mapping(MappingError::TrustDomain),
    );
}

#[test]
fn mapping_templates() {
    let ci = ClaimMapping::parse("spiffe://ci.example/ci/{repository:path}/ref/{ref_type}").unwrap();
    assert_eq!(ci.trust_domain(), "ci.example");
    let claims = json!({"repository": "octo-org/octo-repo", "ref_type": "branch"});
    assert_eq!(
        ci.map(claims.as_object().unwrap()).unwrap().as_str(),
        "spiffe://ci.example/ci/octo-org/octo-repo/ref/branch"
    );
    for bad in ["octo/../x", "octo//x", "/octo", "octo/", "octo/x y"] {
        let claims = json!({"repository": bad, "ref_type": "branch"});
        assert_eq!(
            ci.map(claims.as_object().unwrap()).unwrap_err(),
            MappingError::Segment("repository".into()),
            "{bad}"
        );
    }
    let single = ClaimMapping::parse("spiffe://td/sub/{sub}").unwrap();
    let claims = json!({"sub": "a/b"});
    assert_eq!(
        single.map(claims.as_object().unwrap()).unwrap_err(),
        MappingError::Segment("sub".into())
    );
    for bad in [
        "https://td/{sub}",
        "spiffe://{iss}/x/{sub}",
        "spiffe://td",
        "spiffe://td/fixed",
        "spiffe://td/{sub",
        "spiffe://td/sub}",
        "spiffe://td/{sub:all}",
        "spiffe://td/{a..b}",
        "spiffe://TD/{sub}",
        "spiffe://td//{sub}",
        "spiffe://td/{sub}/",
    ] {
        assert!(ClaimMapping::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn jwks_sets_are_refused_whole_when_dangerous() {
    let es = Signer::new(JwtAlgorithm::Es256);
    let jwks = |keys: serde_json::Value| IssuerKeys::from_json(json!({"keys": keys}).to_string().as_bytes());
    let mut private = es.jwk("k1");
    private["d"] = json!("AAAA");
    assert!(matches!(jwks(json!([private])), Err(JwksError::Key { index: 0, .. })));
    assert!(matches!(
        jwks(json!([{"kty":"oct","k":"c2VjcmV0","kid":"h"}])),
        Err(JwksError::Key { .. })
    ));
    assert_eq!(
        jwks(json!([es.jwk("k1"), es.jwk("k1")])),
        Err(JwksError::DuplicateKid("k1".into()))
    );
    assert_eq!(jwks(json!([])), Err(JwksError::Empty));
    let mut mismatch = es.jwk("k1");
    mismatch["alg"] = json!("EdDSA");
    assert!(matches!(jwks(json!([mismatch])), Err(JwksError::Key { .. })));
    let mut bad_kid = es.jwk("../k");
    bad_kid["use"] = json!("sig");
    assert!(matches!(jwks(json!([bad_kid])), Err(JwksError::Key { .. })));
    assert_eq!(IssuerKeys::from_json(b"[]"), Err(JwksError::Malformed));
    assert_eq!(IssuerKeys::from_json(b"{\"keys\": 5}"), Err(JwksError::Malformed));
    assert_eq!(IssuerKeys::from_json(b"not json"), Err(JwksError::Malformed));
    assert_eq!(IssuerKeys::from_json(&vec![b' '; 300 * 1024]), Err(JwksError::TooLarge));
    // Encryption keys and keys pinned to algorithms we never accept are skipped.
    let mut enc = es.jwk("e");
    enc["use"] = json!("enc");
    let mut hs = es.jwk("h");
    hs["alg"] = json!("HS256");
    let keys = jwks(json!([enc, hs, es.jwk("k1")])).unwrap();
    assert_eq!(keys.len(), 1);
    assert!(keys.contains("k1"));
    // RSA: under 2048 bits refuses the set; over 4096 (more than the
    // verifier takes) is skipped, and the rest of the set serves.
    let rsa = |bits: usize| json!({"kty":"RSA","kid":format!("rsa{bits}"),"n":URL_SAFE_NO_PAD.encode(vec![0xc5u8; bits / 8]),"e":"AQAB"});
    assert!(matches!(
        jwks(json!([rsa(1024), es.jwk("k1")])),
        Err(JwksError::Key { index: 0, .. })
    ));
    let keys = jwks(json!([rsa(8192), es.jwk("k1")])).unwrap();
    assert!(keys.contains("k1") && !keys.contains("rsa8192"));
    assert!(jwks(json!([rsa(4096)])).unwrap().contains("rsa4096"));
    // A key pinned to ES256 refuses a token claiming ES256 only if the type differs.
    let mut pinned = es.jwk("k1");
    pinned["alg"] = json!("ES256");
    let keys = jwks(json!([pinned])).unwrap();
    assert!(attest(&es.token(&k8s_claims()), &policy(&[JwtAlgorithm::Es256]), &keys, now()).is_ok());
}

#[test]
fn a13_spiffe_ids_from_the_test_matrix_are_refused() {
    for bad in [
        "spiffe://Example.org/a",
        "spiffe://example.org/%2e%2e/a",
        "spiffe://example.org//a",
        "spiffe://example.org/a/../b",
        "spiffe://example.org/a/",
        "spiffe://example.org/a?q=1",
        "spiffe://example.org/a#frag",
        "spiffe://example.org:443/a",
    ] {
        assert!(SpiffeId::parse(bad).is_err(), "{bad}");
    }
    let at_limit = format!("spiffe://td/{}", "a".repeat(2048 - "spiffe://td/".len()));
    assert_eq!(at_limit.len(), 2048);
    assert!(SpiffeId::parse(&at_limit).is_ok());
    let over = format!("{at_limit}a");
    assert_eq!(SpiffeId::parse(&over), Err(SpiffeIdError::TooLong));
}

#[test]
fn unix_selectors_match_every_field_set() {
    let peer = UnixPeer {
        uid: 1000,
        gid: 100,
        pid: 42,
        exe_path: "/usr/bin/agent".into(),
        exe_sha256: format!("sha256:{}", "ab".repeat(32)),
    };
    let by_uid = UnixSelector {
        uid: Some(1000),
        ..UnixSelector::default()
    };
    assert!(by_uid.matches(&peer));
    assert!(
        !UnixSelector::default().matches(&peer),
        "an empty selector matches nobody"
    );
    let wrong_uid = UnixSelector {
        uid: Some(0),
        ..by_uid.clone()
    };
    assert!(!wrong_uid.matches(&peer));
    let by_hash = UnixSelector {
        uid: Some(1000),
        exe_sha256: Some("AB".repeat(32)),
        ..UnixSelector::default()
    };
    assert!(by_hash.matches(&peer));
    let wrong_hash = UnixSelector {
        exe_sha256: Some(format!("sha256:{}", "cd".repeat(32))),
        ..by_hash.clone()
    };
    assert!(!wrong_hash.matches(&peer));
    let wrong_path = UnixSelector {
        exe_path: Some("/usr/bin/other".into()),
        ..by_hash
    };
    assert!(!wrong_path.matches(&peer));
}

#[test]
fn an_executable_hash_alone_never_attests_a_unix_peer() {
    let peer = UnixPeer {
        uid: 1000,
        gid: 100,
        pid: 42,
        exe_path: "/usr/bin/agent".into(),
        exe_sha256: format!("sha256:{}", "ab".repeat(32)),
    };
    // Any process of any user running (or pretending to run) that binary
    // would match: without a uid it stands for nobody.
    let hash_only = UnixSelector {
        exe_sha256: Some("ab".repeat(32)),
        exe_path: Some("/usr/bin/agent".into()),
        ..UnixSelector::default()
    };
    assert!(!hash_only.is_specific());
    assert!(!hash_only.matches(&peer));
}

fn mutate_header(base: &serde_json::Value, member: &str, value: serde_json::Value) -> String {
    let mut h = base.clone();
    h[member] = value;
    h.to_string()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any header change keeps the signature from verifying or is refused
    /// outright; nothing panics.
    #[test]
    fn header_mutations_never_verify(
        member in prop_oneof![
            prop::sample::select(vec!["alg", "kid", "typ", "jku", "x5u", "jwk"]).prop_map(str::to_owned),
            "[a-z]{1,6}",
        ],
        value in prop_oneof![
            "\\PC{0,12}".prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            Just(json!(null)),
            Just(json!(["ES256"])),
            prop::sample::select(vec!["none", "None", "HS256", "ES384", "EdDSA", "RS256", "PS256", "es256"]).prop_map(serde_json::Value::from),
        ],
    ) {
        let signer = Signer::new(JwtAlgorithm::Es256);
        let keys = keys_of(&signer);
        let p = policy(&JwtAlgorithm::ALL);
        let original = json!({"alg": "ES256", "kid": "k1"});
        let good = signer.token_raw(&original.to_string(), &k8s_claims().to_string());
        prop_assert!(attest(&good, &p, &keys, now()).is_ok());
        let original_text = original.to_string();
        let mutated = mutate_header(&original, &member, value);
        prop_assume!(mutated != original_text);
        // Keep the payload and the signature of the original token.
        let parts: Vec<&str> = good.split('.').collect();
        let forged = format!("{}.{}.{}", b64(mutated.as_bytes()), parts[1], parts[2]);
        prop_assert!(attest(&forged, &p, &keys, now()).is_err());
    }

    /// Flipping any byte of a valid token is refused; nothing panics.
    #[test]
    fn byte_flips_never_verify(index in any::<prop::sample::Index>(), replacement in any::<u8>()) {
        let signer = Signer::new(JwtAlgorithm::EdDsa);
        let keys = keys_of(&signer);
        let p = policy(&[JwtAlgorithm::EdDsa]);
        let good = signer.token(&k8s_claims());
        let mut bytes = good.clone().into_bytes();
        let i = index.index(bytes.len());
        prop_assume!(bytes[i] != replacement);
        bytes[i] = replacement;
        let Ok(mutated) = String::from_utf8(bytes) else { return Ok(()) };
        // The last base64url character may carry padding bits only; some
        // flips there decode to the same bytes and are refused as non-canonical.
        prop_assert!(attest(&mutated, &p, &keys, now()).is_err());
    }

    /// Arbitrary input never panics the parser.
    #[test]
    fn arbitrary_input_never_panics(s in "\\PC{0,300}") {
        let p = policy(&JwtAlgorithm::ALL);
        let _ = jwt::parse(&s, std::slice::from_ref(&p));
        let dotted = format!("{s}.{s}.{s}");
        let _ = jwt::parse(&dotted, std::slice::from_ref(&p));
    }

    /// SPIFFE ID parsing over near-grammar input never panics, and whatever
    /// it accepts has no empty, `.` or `..` segment and a lowercase domain.
    #[test]
    fn spiffe_parsing_near_the_grammar(s in "spiffe://[a-zA-Z0-9.%_:@-]{0,12}(/[a-zA-Z0-9.%_?#-]{0,6}){0,4}/?") {
        if let Ok(id) = SpiffeId::parse(&s) {
            prop_assert!(id.trust_domain().bytes().all(|b| !b.is_ascii_uppercase()));
            prop_assert!(!id.trust_domain().contains([':', '@', '%']));
            for seg in id.path().split('/').skip(1) {
                prop_assert!(!seg.is_empty() && seg != "." && seg != "..");
                prop_assert!(!seg.contains(['%', '?', '#']));
            }
        }
    }
}

/// RFC 7523 `jwt-bearer`: the issuer's whole policy, but `aud` must be one
/// of the audiences asked for (the token endpoint), never the gRPC
/// attestation audience alone, and a `jti` is required even for an issuer
/// that is not single-use.
#[test]
fn an_oauth_assertion_is_the_issuers_token_for_the_token_endpoint_with_a_jti() {
    const ENDPOINT: &str = "https://tessera.example/oauth/token";
    let signer = Signer::new(JwtAlgorithm::Es256);
    let keys = keys_of(&signer);
    let p = IssuerPolicy {
        single_use_jti: false,
        ..policy(&[JwtAlgorithm::Es256])
    };
    let assert_as = |claims: &serde_json::Value| {
        let token = signer.token(claims);
        let parsed = jwt::parse(&token, std::slice::from_ref(&p))?;
        jwt::verify_assertion(&parsed, &p, &keys, now(), &[ENDPOINT])
    };
    let mut claims = k8s_claims();
    claims["aud"] = json!(ENDPOINT);
    let got = assert_as(&claims).unwrap();
    assert_eq!(got.id.as_str(), "spiffe://td/ns/prod/sa/api");
    assert_eq!(
        got.single_use_jti.as_deref(),
        Some("4b5c-1"),
        "recorded although the issuer is not single-use"
    );
    // The gRPC audience is not the token endpoint.
    assert_eq!(assert_as(&k8s_claims()).unwrap_err(), JwtError::Audience);
    // An assertion for this server and another is refused, even from an
    // issuer whose tokens may name several audiences on the gRPC port.
    let mut shared = claims.clone();
    shared["aud"] = json!([ENDPOINT, "https://other.example"]);
    let lenient = IssuerPolicy {
        allow_multiple_audiences: true,
        ..p.clone()
    };
    let token = signer.token(&shared);
    let parsed = jwt::parse(&token, std::slice::from_ref(&lenient)).unwrap();
    assert_eq!(
        jwt::verify_assertion(&parsed, &lenient, &keys, now(), &[ENDPOINT]).unwrap_err(),
        JwtError::MultipleAudiences("k8s".into())
    );
    shared["aud"] = json!([ENDPOINT]);
    assert!(assert_as(&shared).is_ok(), "a list of one audience is one audience");
    let mut no_jti = claims.clone();
    no_jti.as_object_mut().unwrap().remove("jti");
    assert_eq!(assert_as(&no_jti).unwrap_err(), JwtError::Jti("k8s".into()));
    let mut expired = claims.clone();
    expired["exp"] = json!(now().timestamp() - 60);
    assert_eq!(assert_as(&expired).unwrap_err(), JwtError::Expired);
    // And the same token is still refused by the gRPC check (its `aud`).
    let token = signer.token(&claims);
    let parsed = jwt::parse(&token, std::slice::from_ref(&p)).unwrap();
    assert_eq!(jwt::verify(&parsed, &p, &keys, now()).unwrap_err(), JwtError::Audience);
}

/// RFC 7523 section 2.2 `private_key_jwt`: `iss` and `sub` are the client,
/// signed by one of its registered keys, for the token endpoint, with a
/// `jti` and a recent `iat`; no `none`, no HMAC.
#[test]
fn a_client_assertion_names_the_client_and_is_signed_by_its_registered_key() {
    const ENDPOINT: &str = "https://tessera.example/oauth/token";
    let client = SpiffeId::parse("spiffe://td/agent/mcp").unwrap();
    let signer = Signer::new(JwtAlgorithm::Es256);
    let keys = keys_of(&signer);
    let t = now().timestamp();
    let claims = json!({"iss": client.as_str(), "sub": client.as_str(), "aud": ENDPOINT,
        "iat": t - 5, "exp": t + 60, "jti": "c-1"});
    let check =
        |token: &str| jwt::verify_client_assertion(token, &client, &keys, &[ENDPOINT], now(), Duration::seconds(5));
    let got = check(&signer.token(&claims)).unwrap();
    assert_eq!(got.jti, "c-1");
    assert_eq!(got.replay_until, now() + Duration::seconds(65));
    // An `exp` at the end of time is the sender's word: its `jti` is kept
    // only while `iat` + max age could still accept it, and nothing overflows.
    for far in [253_402_300_799_i64, 8_210_266_876_799] {
        let mut forever = claims.clone();
        forever["exp"] = json!(far);
        let got = check(&signer.token(&forever)).unwrap();
        assert_eq!(
            got.replay_until,
            now() - Duration::seconds(5) + jwt::CLIENT_ASSERTION_MAX_AGE + Duration::seconds(1)
        );
    }
    // A far `exp` is remembered only until the assertion is too old anyway
    // (`iat` + 5 min + 1 s).
    let mut far = claims.clone();
    far["exp"] = json!(t + 86_400 * 365);
    assert_eq!(
        check(&signer.token(&far)).unwrap().replay_until,
        now() - Duration::seconds(5) + Duration::minutes(5) + Duration::seconds(1)
    );
    let with = |name: &str, value: serde_json::Value| {
        let mut c = claims.clone();
        if value.is_null() {
            c.as_object_mut().unwrap().remove(name);
        } else {
            c[name] = value;
        }
        signer.token(&c)
    };
    assert_eq!(
        check(&with("iss", json!("spiffe://td/agent/other"))).unwrap_err(),
        JwtError::Issuer
    );
    assert!(matches!(
        check(&with("sub", json!("spiffe://td/agent/other"))).unwrap_err(),
        JwtError::Mapping(_)
    ));
    assert_eq!(
        check(&with("aud", json!("https://elsewhere"))).unwrap_err(),
        JwtError::Audience
    );
    assert_eq!(
        check(&with("jti", serde_json::Value::Null)).unwrap_err(),
        JwtError::Jti(client.to_string())
    );
    assert!(matches!(
        check(&with("iat", json!(t - 600))).unwrap_err(),
        JwtError::TooOld(_)
    ));
    // Another key under the registered kid: the signature does not verify.
    let other = Signer::new(JwtAlgorithm::Es256);
    assert_eq!(check(&other.token(&claims)).unwrap_err(), JwtError::Signature);
    for alg in ["none", "HS256"] {
        let header = json!({"alg": alg, "kid": "k1"}).to_string();
        assert_eq!(
            check(&signer.token_raw(&header, &claims.to_string())).unwrap_err(),
            JwtError::Algorithm
        );
    }
    // Without a `kid` (as the mcp SDK signs): the one registered key, and
    // only when exactly one is registered.
    let no_kid = signer.token_raw(&json!({"alg": "ES256", "typ": "JWT"}).to_string(), &claims.to_string());
    assert_eq!(check(&no_kid).unwrap().jti, "c-1");
    let two = IssuerKeys::from_json(
        json!({"keys": [signer.jwk("k1"), other.jwk("k2")]})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(
        jwt::verify_client_assertion(&no_kid, &client, &two, &[ENDPOINT], now(), Duration::seconds(5)).unwrap_err(),
        JwtError::KeyId
    );
    // An attestation token still needs its `kid`.
    let p = policy(&[JwtAlgorithm::Es256]);
    let header = json!({"alg": "ES256"}).to_string();
    refused(
        &signer.token_raw(&header, &k8s_claims().to_string()),
        &p,
        &keys,
        JwtError::KeyId,
    );
}
