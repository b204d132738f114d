#![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test")]

use super::*;
use crate::token::Confirmation;
use crate::token::test_keys::{ed25519, p256};

const HTU: &str = "/tessera.v1.AgentService/RequestToken";

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

fn check_at(now: DateTime<Utc>) -> ProofCheck<'static> {
    ProofCheck {
        htm: "POST",
        htu: HTU,
        now,
        max_age: PROOF_MAX_AGE,
        leeway: Duration::seconds(5),
        access_token: None,
    }
}

#[track_caller]
fn refused(proof: &str, check: &ProofCheck<'_>, expected: ProofError) {
    assert_eq!(verify_proof(proof, check), Err(expected));
}

/// A proof with exactly these header and claims, signed by `key`.
fn raw(key: &SigningKey, header: &serde_json::Value, claims: &serde_json::Value) -> String {
    key.sign_compact(
        &serde_json::to_vec(header).unwrap(),
        &serde_json::to_vec(claims).unwrap(),
    )
    .unwrap()
}

fn public(key: &SigningKey) -> serde_json::Value {
    let jwk = key.public_jwk();
    let mut v = serde_json::json!({"kty": jwk.kty, "crv": jwk.crv, "x": jwk.x});
    if let Some(y) = &jwk.y {
        v["y"] = y.clone().into();
    }
    v
}

#[test]
fn a_fresh_proof_verifies_for_both_algorithms() {
    for key in [p256(), ed25519()] {
        let proof = sign_proof(&key, "POST", HTU, "j1", t0(), None).unwrap();
        let ok = verify_proof(&proof, &check_at(t0())).unwrap();
        // The thumbprint is the key's RFC 7638 thumbprint (= our kid).
        assert_eq!(ok.jkt, key.kid());
        assert_eq!(ok.jti, "j1");
        assert_eq!(ok.iat, t0());
        assert_eq!(ok.replay_until(PROOF_MAX_AGE), t0() + Duration::seconds(61));
        assert_eq!(ok.replay_id(), format!("{}.j1", key.kid()));
    }
}

#[test]
fn rfc_7638_thumbprint_example() {
    // RFC 7638 section 3.1 is RSA; for EC, the RFC 9449 section 6.1 example
    // value is checked through the same code path (`Jwk::thumbprint`).
    let jwk = Jwk {
        kty: "EC".into(),
        crv: "P-256".into(),
        x: "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs".into(),
        y: Some("9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA".into()),
        kid: String::new(),
        alg: Algorithm::Es256,
        key_use: "sig".into(),
    };
    assert_eq!(jwk.thumbprint(), "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I");
}

#[test]
fn the_window_is_bounded_both_ways() {
    let key = p256();
    let proof = sign_proof(&key, "POST", HTU, "j", t0(), None).unwrap();
    verify_proof(&proof, &check_at(t0() + Duration::seconds(60))).unwrap();
    refused(&proof, &check_at(t0() + Duration::seconds(61)), ProofError::Stale(60));
    verify_proof(&proof, &check_at(t0() - Duration::seconds(5))).unwrap();
    refused(&proof, &check_at(t0() - Duration::seconds(6)), ProofError::Future);
}

#[test]
fn another_method_or_target_is_refused() {
    let key = ed25519();
    let get = sign_proof(&key, "GET", HTU, "j", t0(), None).unwrap();
    refused(&get, &check_at(t0()), ProofError::Method("POST".into()));
    let post = sign_proof(&key, "post", HTU, "j", t0(), None).unwrap();
    refused(&post, &check_at(t0()), ProofError::Method("POST".into()));
    let other = sign_proof(&key, "POST", "/tessera.v1.AgentService/DelegateToken", "j", t0(), None).unwrap();
    refused(&other, &check_at(t0()), ProofError::Target(HTU.into()));
}

#[test]
fn a_proof_signed_by_another_key_than_its_jwk_is_refused() {
    let (signer, claimed) = (p256(), SigningKey::generate(Algorithm::Es256).unwrap());
    let header = serde_json::json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": public(&claimed)});
    let claims = serde_json::json!({"jti": "j", "htm": "POST", "htu": HTU, "iat": t0().timestamp()});
    refused(&raw(&signer, &header, &claims), &check_at(t0()), ProofError::Signature);
    // A tampered payload, too.
    let good = sign_proof(&signer, "POST", HTU, "j", t0(), None).unwrap();
    let forged_claims = serde_json::json!({"jti": "j2", "htm": "POST", "htu": HTU, "iat": t0().timestamp()});
    let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged_claims).unwrap());
    let mut parts: Vec<&str> = good.split('.').collect();
    parts[1] = &forged_payload;
    refused(&parts.join("."), &check_at(t0()), ProofError::Signature);
}

#[test]
fn hostile_headers_are_refused() {
    let key = p256();
    let claims = serde_json::json!({"jti": "j", "htm": "POST", "htu": HTU, "iat": t0().timestamp()});
    let mut private = public(&key);
    private["d"] = "AAAA".into();
    let ed_key = ed25519();
    for (header, expected) in [
        (
            serde_json::json!({"typ": "at+jwt", "alg": "ES256", "jwk": public(&key)}),
            ProofError::Type,
        ),
        (
            serde_json::json!({"alg": "ES256", "jwk": public(&key)}),
            ProofError::Type,
        ),
        (
            serde_json::json!({"typ": "dpop+jwt", "alg": "HS256", "jwk": public(&key)}),
            ProofError::Algorithm,
        ),
        (
            serde_json::json!({"typ": "dpop+jwt", "alg": "none", "jwk": public(&key)}),
            ProofError::Algorithm,
        ),
        (
            serde_json::json!({"typ": "dpop+jwt", "alg": "ES256"}),
            ProofError::Key("missing"),
        ),
        (
            serde_json::json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": private}),
            ProofError::Key("it has a private or unknown member"),
        ),
        (
            serde_json::json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": public(&ed_key)}),
            ProofError::Key("not a public key of `alg`"),
        ),
        (
            serde_json::json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": {"kty": "oct", "k": "AAAA"}}),
            ProofError::Key("it has a private or unknown member"),
        ),
        (
            serde_json::json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": public(&key), "crit": ["x"]}),
            ProofError::Malformed("header member `crit` is not accepted"),
        ),
        // No key is looked up anywhere but in the proof's own `jwk`.
        (
            serde_json::json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": public(&key), "kid": "k"}),
            ProofError::Malformed("header member `kid` is not accepted"),
        ),
        (
            serde_json::json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": public(&key), "jku": "https://evil.test"}),
            ProofError::Malformed("header member `jku` is not accepted"),
        ),
        (
            serde_json::json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": public(&key), "x5u": "https://evil.test"}),
            ProofError::Malformed("header member `x5u` is not accepted"),
        ),
        (
            serde_json::json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": public(&key), "x5c": ["MIIB"]}),
            ProofError::Malformed("header member `x5c` is not accepted"),
        ),
        (
            serde_json::json!({"typ": "application/dpop+jwt", "alg": "ES256", "jwk": public(&key)}),
            ProofError::Type,
        ),
    ] {
        refused(&raw(&key, &header, &claims), &check_at(t0()), expected);
    }
    // Any letter case is the same type.
    let header = serde_json::json!({"typ": "DPoP+JWT", "alg": "ES256", "jwk": public(&key)});
    verify_proof(&raw(&key, &header, &claims), &check_at(t0())).unwrap();
}

#[test]
fn claims_must_be_complete_and_bounded() {
    let key = ed25519();
    let header = serde_json::json!({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": public(&key)});
    let iat = t0().timestamp();
    for (claims, expected) in [
        (
            serde_json::json!({"htm": "POST", "htu": HTU, "iat": iat}),
            ProofError::Jti,
        ),
        (
            serde_json::json!({"jti": "", "htm": "POST", "htu": HTU, "iat": iat}),
            ProofError::Jti,
        ),
        (
            serde_json::json!({"jti": "a b", "htm": "POST", "htu": HTU, "iat": iat}),
            ProofError::Jti,
        ),
        (
            serde_json::json!({"jti": "x".repeat(129), "htm": "POST", "htu": HTU, "iat": iat}),
            ProofError::Jti,
        ),
        (
            serde_json::json!({"jti": "j", "htm": "POST", "htu": HTU}),
            ProofError::Malformed("`iat` is missing or out of range"),
        ),
        (
            serde_json::json!({"jti": "j", "htm": "POST", "htu": HTU, "iat": "1800000000"}),
            ProofError::Malformed("claims are not a json object with unique members"),
        ),
        (
            serde_json::json!({"jti": "j", "htu": HTU, "iat": iat}),
            ProofError::Method("POST".into()),
        ),
        (
            serde_json::json!({"jti": "j", "htm": "POST", "iat": iat}),
            ProofError::Target(HTU.into()),
        ),
    ] {
        refused(&raw(&key, &header, &claims), &check_at(t0()), expected);
    }
    // Duplicate claims are refused, not resolved.
    let dup = format!(r#"{{"jti":"j","htm":"POST","htu":"{HTU}","iat":{iat},"htu":"/x"}}"#);
    let proof = key
        .sign_compact(&serde_json::to_vec(&header).unwrap(), dup.as_bytes())
        .unwrap();
    refused(
        &proof,
        &check_at(t0()),
        ProofError::Malformed("claims are not a json object with unique members"),
    );
}

#[test]
fn ath_binds_the_proof_to_the_presented_token() {
    let key = p256();
    let proof = sign_proof(&key, "POST", HTU, "j", t0(), Some("token-a")).unwrap();
    let mut check = check_at(t0());
    check.access_token = Some("token-a");
    verify_proof(&proof, &check).unwrap();
    check.access_token = Some("token-b");
    refused(&proof, &check, ProofError::AccessTokenHash);
    let without = sign_proof(&key, "POST", HTU, "j", t0(), None).unwrap();
    refused(&without, &check, ProofError::AccessTokenHash);
}

#[test]
fn malformed_input_is_refused_before_anything_else() {
    let check = check_at(t0());
    refused(&"a".repeat(MAX_PROOF_LEN + 1), &check, ProofError::TooLong);
    for bad in ["", "a.b", "a.b.c.d", "a..c", "a+b.c.d", "!.!.!"] {
        assert!(
            matches!(verify_proof(bad, &check), Err(ProofError::Malformed(_))),
            "{bad:?}"
        );
    }
    assert_eq!(
        certificate_thumbprint(b"abc"),
        "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0"
    );
    assert_eq!(access_token_hash("abc"), certificate_thumbprint(b"abc"));
}

#[test]
fn a_bound_token_needs_a_proof_by_its_own_key() {
    let (holder, thief) = (p256(), ed25519());
    let token = "the-access-token";
    let mut check = check_at(t0());
    check.access_token = Some(token);
    let good = sign_proof(&holder, "POST", HTU, "j", t0(), Some(token)).unwrap();
    assert_eq!(
        check_key_binding(holder.kid(), &good, &check).unwrap().jkt,
        holder.kid()
    );
    // The thief has the token but not the key: its own proof is refused.
    let stolen = sign_proof(&thief, "POST", HTU, "j", t0(), Some(token)).unwrap();
    assert_eq!(
        check_key_binding(holder.kid(), &stolen, &check),
        Err(ProofError::WrongKey)
    );
    // A proof for another token, or no token to hash, is refused.
    let other = sign_proof(&holder, "POST", HTU, "j", t0(), Some("another")).unwrap();
    assert_eq!(
        check_key_binding(holder.kid(), &other, &check),
        Err(ProofError::AccessTokenHash)
    );
    assert_eq!(
        check_key_binding(holder.kid(), &good, &check_at(t0())),
        Err(ProofError::AccessTokenHash)
    );
    assert!(certificate_matches(&certificate_thumbprint(b"leaf"), b"leaf"));
    assert!(!certificate_matches(&certificate_thumbprint(b"leaf"), b"other leaf"));
}

#[test]
fn htu_normalization() {
    for (a, b) in [
        ("https://Api.Test/x?y#z", "https://api.test/x"),
        ("https://api.test:443/x", "https://api.test/x"),
        ("http://api.test:80", "http://api.test/"),
        ("https://api.test:8443/x", "https://api.test:8443/x"),
    ] {
        assert_eq!(normalize_htu(a).as_deref(), Some(b), "{a}");
    }
    for bad in ["/x", "ftp://a/b", "https://", "https://user@host/x", "api.test/x"] {
        assert_eq!(normalize_htu(bad), None, "{bad}");
    }
}

/// A URL target compares normalised, the request's query ignored, but the
/// proof's own `htu` carries none; a gRPC path compares exactly.
#[test]
fn htu_of_a_url_compares_normalised_and_of_a_path_exactly() {
    let key = p256();
    let url_check = |htu| ProofCheck { htu, ..check_at(t0()) };
    let proof = |htu: &str| sign_proof(&key, "POST", htu, "j", t0(), None).unwrap();
    let target = "https://api.test/crm/contacts?page=2";
    for htu in ["https://api.test/crm/contacts", "HTTPS://API.TEST:443/crm/contacts"] {
        verify_proof(&proof(htu), &url_check(target)).unwrap();
    }
    for htu in [
        "https://api.test/crm/contacts?page=2",
        "https://api.test/crm/contacts#x",
        "https://api.test/crm/notes",
        "http://api.test/crm/contacts",
        "/crm/contacts",
    ] {
        refused(&proof(htu), &url_check(target), ProofError::Target(target.to_owned()));
    }
    for htu in [
        "/tessera.v1.AgentService/RequestToken/",
        "/TESSERA.v1.AgentService/RequestToken",
        "https://broker/tessera.v1.AgentService/RequestToken",
    ] {
        refused(&proof(htu), &check_at(t0()), ProofError::Target(HTU.to_owned()));
    }
}

/// One set of limits: a longer age or leeway than core's is cut.
#[test]
fn max_age_and_leeway_are_bounded() {
    let key = p256();
    let lax = ProofCheck {
        max_age: Duration::hours(1),
        leeway: Duration::hours(1),
        ..check_at(t0())
    };
    let old = sign_proof(
        &key,
        "POST",
        HTU,
        "j",
        t0() - PROOF_MAX_AGE - Duration::seconds(1),
        None,
    )
    .unwrap();
    refused(&old, &lax, ProofError::Stale(PROOF_MAX_AGE.num_seconds()));
    let ahead = Duration::seconds(MAX_LEEWAY_SECS + 1);
    let future = sign_proof(&key, "POST", HTU, "j", t0() + ahead, None).unwrap();
    refused(&future, &lax, ProofError::Future);
}

#[test]
fn check_binding_matches_the_confirmation() {
    let key = ProofKey::generate().unwrap();
    let cnf = Confirmation::Jkt(key.thumbprint().to_owned());
    let url = "https://api.test/crm";
    let proof = key.sign("GET", url, "b1", t0(), Some("tok")).unwrap();
    let presented = Presentation {
        access_token: "tok",
        dpop_scheme: true,
        proof: Some(&proof),
        htm: "GET",
        htu: url,
        client_cert_der: None,
        now: t0(),
        max_age: PROOF_MAX_AGE,
        leeway: Duration::seconds(5),
    };
    assert!(matches!(check_binding(Some(&cnf), &presented), Ok(Bound::Dpop(p)) if p.jti == "b1"));
    let bearer_scheme = Presentation {
        dpop_scheme: false,
        ..presented
    };
    assert_eq!(
        check_binding(Some(&cnf), &bearer_scheme),
        Err(BindingError::ProofRequired)
    );
    let no_proof = Presentation {
        proof: None,
        ..presented
    };
    assert_eq!(check_binding(Some(&cnf), &no_proof), Err(BindingError::ProofRequired));
    let other = Confirmation::Jkt(ProofKey::generate().unwrap().thumbprint().to_owned());
    assert_eq!(
        check_binding(Some(&other), &presented),
        Err(BindingError::Proof(ProofError::WrongKey))
    );
    // A bearer token: fine as `Bearer`, refused with the DPoP scheme.
    assert_eq!(check_binding(None, &bearer_scheme), Ok(Bound::Bearer));
    assert_eq!(check_binding(None, &presented), Err(BindingError::DpopSchemeWithoutKey));
    // A certificate binding.
    let der = b"the agent's certificate";
    let x5t = Confirmation::X5tS256(certificate_thumbprint(der));
    let over = |cert: Option<&'static [u8]>| Presentation {
        client_cert_der: cert,
        ..bearer_scheme
    };
    assert_eq!(check_binding(Some(&x5t), &over(Some(der))), Ok(Bound::Certificate));
    assert_eq!(
        check_binding(Some(&x5t), &over(Some(b"another"))),
        Err(BindingError::CertificateMismatch)
    );
    assert_eq!(
        check_binding(Some(&x5t), &over(None)),
        Err(BindingError::CertificateRequired)
    );
}

/// `tests/vectors/content_digest.json`: the `content_digest` cases every
/// verifier (this crate, the Python SDK's `dpop.check_proof`) must decide
/// alike. Ed25519 signatures are deterministic, so the file is exactly what
/// this table signs; `TESSERA_WRITE_GOLDEN=1` rewrites it.
mod content_digest_vectors {
    use super::*;

    const HTU: &str = "https://mcp.test/mcp";
    const TOKEN: &str = "an-access-token-for-the-vectors";
    const BODY: &[u8] = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"payments.refund","arguments":{"amount":40}}}"#;
    const OTHER: &[u8] = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"payments.refund","arguments":{"amount":4000}}}"#;

    fn path() -> std::path::PathBuf {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors/content_digest.json")
    }

    /// (name, `content_digest` claim or none, body given, required, accepted)
    type Case = (&'static str, Option<String>, Option<&'static [u8]>, bool, bool);

    fn cases() -> Vec<Case> {
        let digest = content_digest(BODY);
        let sha512 = format!(
            "sha-512=:{}:",
            base64::engine::general_purpose::STANDARD.encode([7u8; 64])
        );
        vec![
            (
                "digest of the body, body given",
                Some(digest.clone()),
                Some(BODY),
                false,
                true,
            ),
            (
                "digest of the body, required",
                Some(digest.clone()),
                Some(BODY),
                true,
                true,
            ),
            (
                "digest of another body",
                Some(content_digest(OTHER)),
                Some(BODY),
                false,
                false,
            ),
            (
                "digest of another body, required",
                Some(content_digest(OTHER)),
                Some(BODY),
                true,
                false,
            ),
            (
                "digest, no body to check, not required",
                Some(digest.clone()),
                None,
                false,
                true,
            ),
            (
                "digest, no body to check, required",
                Some(digest.clone()),
                None,
                true,
                false,
            ),
            ("no digest, not required", None, Some(BODY), false, true),
            ("no digest, required", None, Some(BODY), true, false),
            (
                "digest of the empty body",
                Some(content_digest(b"")),
                Some(b""),
                true,
                true,
            ),
            (
                "empty body, digest of another",
                Some(digest.clone()),
                Some(b""),
                false,
                false,
            ),
            ("sha-512 only", Some(sha512.clone()), Some(BODY), false, false),
            (
                "two members",
                Some(format!("{digest}, {sha512}")),
                Some(BODY),
                false,
                false,
            ),
            (
                "malformed even without a body",
                Some("sha-256=:not base64:".into()),
                None,
                false,
                false,
            ),
            ("short digest", Some("sha-256=:AAAA:".into()), Some(BODY), false, false),
            (
                "unpadded base64",
                Some(digest.trim_end_matches(':').trim_end_matches('=').to_owned() + ":"),
                Some(BODY),
                false,
                false,
            ),
            (
                "upper-case algorithm",
                Some(digest.replacen("sha-256", "SHA-256", 1)),
                Some(BODY),
                false,
                false,
            ),
            (
                "hex instead of base64",
                Some(format!("sha-256=:{}:", "ab".repeat(32))),
                Some(BODY),
                false,
                false,
            ),
        ]
    }

    fn table() -> serde_json::Value {
        let key = ed25519();
        let cases: Vec<serde_json::Value> = cases()
            .into_iter()
            .enumerate()
            .map(|(i, (name, digest, body, required, accepted))| {
                let mut claims = serde_json::json!({
                    "jti": format!("vector-{i}"), "htm": "POST", "htu": HTU,
                    "iat": t0().timestamp(), "ath": access_token_hash(TOKEN),
                });
                if let Some(digest) = digest {
                    claims[CONTENT_DIGEST_CLAIM] = digest.into();
                }
                let header = serde_json::json!({"typ": PROOF_TYP, "alg": "EdDSA", "jwk": public(&key)});
                serde_json::json!({
                    "name": name,
                    "proof": raw(&key, &header, &claims),
                    "body": body.map(|b| String::from_utf8(b.to_vec()).unwrap()),
                    "required": required,
                    "expected": if accepted { "accept" } else { "reject" },
                })
            })
            .collect();
        serde_json::json!({
            "about": "Tessera's DPoP `content_digest` vectors (crates/tessera-core/src/pop/tests.rs, TESSERA_WRITE_GOLDEN=1 rewrites it). Check each proof on its own (no replay cache) for `htm` POST, `htu`, the `access_token` (its `ath`), key thumbprint `jkt`, at `now` with `max_age_secs` and `leeway_secs`, against the request `body` (UTF-8; null: the verifier has no body) and `required`; it must get `expected`. The key is a throwaway test key.",
            "htm": "POST",
            "htu": HTU,
            "access_token": TOKEN,
            "jkt": key.kid(),
            "now": t0().timestamp(),
            "max_age_secs": 60,
            "leeway_secs": 5,
            "cases": cases,
        })
    }

    #[test]
    fn the_committed_file_is_this_table_and_every_case_gets_its_verdict() {
        let table = table();
        let text = serde_json::to_string_pretty(&table).unwrap() + "\n";
        if std::env::var_os("TESSERA_WRITE_GOLDEN").is_some() {
            std::fs::write(path(), &text).unwrap();
        }
        let committed = std::fs::read_to_string(path()).expect("TESSERA_WRITE_GOLDEN=1 writes it");
        assert_eq!(committed, text, "tests/vectors/content_digest.json is not the table");
        let check = ProofCheck {
            htm: "POST",
            htu: HTU,
            now: t0(),
            max_age: PROOF_MAX_AGE,
            leeway: Duration::seconds(5),
            access_token: Some(TOKEN),
        };
        let jkt = table["jkt"].as_str().unwrap();
        let (mut accepted, mut refused) = (0, 0);
        for case in table["cases"].as_array().unwrap() {
            let body = case["body"].as_str().map(str::as_bytes);
            let content = ContentCheck {
                body,
                required: case["required"].as_bool().unwrap(),
            };
            let verdict = check_key_binding_with_content(jkt, case["proof"].as_str().unwrap(), &check, &content);
            match case["expected"].as_str().unwrap() {
                "accept" => {
                    assert!(verdict.is_ok(), "{}: {verdict:?}", case["name"]);
                    accepted += 1;
                }
                _ => {
                    assert!(
                        matches!(verdict, Err(ProofError::ContentDigest(_))),
                        "{}: {verdict:?}",
                        case["name"]
                    );
                    refused += 1;
                }
            }
        }
        assert!(accepted >= 5 && refused >= 10);
    }

    #[test]
    fn a_signed_body_proof_verifies_and_the_plain_check_ignores_its_digest() {
        let key = ProofKey::generate().unwrap();
        let proof = key.proof_for_body("POST", HTU, BODY, Some(TOKEN), None).unwrap();
        let check = ProofCheck {
            htm: "POST",
            htu: HTU,
            now: crate::clock::Clock::now(&crate::clock::SystemClock),
            max_age: PROOF_MAX_AGE,
            leeway: Duration::seconds(5),
            access_token: Some(TOKEN),
        };
        let with = |body: &'static [u8]| ContentCheck {
            body: Some(body),
            required: true,
        };
        assert!(verify_proof_with_content(&proof, &check, &with(BODY)).is_ok());
        assert!(matches!(
            verify_proof_with_content(&proof, &check, &with(OTHER)),
            Err(ProofError::ContentDigest(_))
        ));
        // The broker (no body) reads the claim's form only.
        assert!(verify_proof(&proof, &check).is_ok());
        // Through the binding check, as the SDK verifier calls it.
        let presented = Presentation {
            access_token: TOKEN,
            dpop_scheme: true,
            proof: Some(&proof),
            htm: "POST",
            htu: HTU,
            client_cert_der: None,
            now: check.now,
            max_age: PROOF_MAX_AGE,
            leeway: Duration::seconds(5),
        };
        let cnf = Confirmation::Jkt(key.thumbprint().to_owned());
        assert!(check_binding_with_content(Some(&cnf), &presented, &with(BODY)).is_ok());
        assert!(matches!(
            check_binding_with_content(Some(&cnf), &presented, &with(OTHER)),
            Err(BindingError::Proof(ProofError::ContentDigest(_)))
        ));
    }
}
