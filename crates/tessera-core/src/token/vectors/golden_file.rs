//! `tests/vectors/golden.json`: the golden table exported for verifiers in
//! other languages (the Python SDK's `tests/test_golden.py` runs it).
//!
//! `TESSERA_WRITE_GOLDEN=1 cargo test -p tessera-core --lib golden_file`
//! rewrites the file from the table. Without that variable the test loads the
//! committed file and requires core's own verification (the checks the broker
//! and the Rust SDK run) to give every recorded vector exactly its recorded
//! verdict and reason, and the file to hold the verdicts the table builds
//! today, so it cannot drift from Rust's behaviour. ECDSA signatures are
//! randomised: a rewrite changes the bytes, never a verdict.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, reason = "test")]

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::{ProofTarget, Verdict, proof_vectors, token_vectors};
use crate::pop::{Bound, PROOF_MAX_AGE, Presentation, ProofError, ProofKey, check_binding};
use crate::token::test_keys::{ed25519, p256};
use crate::token::{
    AccessCheck, AccessClaims, Algorithm, Confirmation, Jwks, MAX_CHAIN_LEN, MAX_LEEWAY_SECS, SigningKey,
    check_access_token,
};

const NOW: i64 = 1_800_000_000;
const ISS: &str = "https://tessera.test";
const AUD: &str = "https://api.test";
const HTM: &str = "GET";
const HTU: &str = "https://api.test/crm";
/// Every verdict holds for any leeway in `0..=MAX_LEEWAY_SECS`; the tests
/// run both ends.
const LEEWAYS: [i64; 2] = [0, MAX_LEEWAY_SECS];

#[derive(Debug, Serialize, Deserialize)]
struct File {
    about: String,
    /// The issuer's public keys: test_keys' throwaway keys, which protect nothing.
    jwks: Jwks,
    settings: Settings,
    tokens: Vec<TokenCase>,
    proofs: Vec<ProofCase>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Settings {
    issuer: String,
    audience: String,
    algorithms: Vec<String>,
    leeway_secs: Vec<i64>,
    now: i64,
    max_chain_len: usize,
    proof_max_age_secs: i64,
    revoked: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct TokenCase {
    name: String,
    /// The algorithm of the issuer key the case was built from.
    issuer_key: String,
    token: String,
    expected: String,
    reason: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ProofCase {
    name: String,
    /// The algorithm of the DPoP key the token is bound to.
    proof_key: String,
    htm: String,
    htu: String,
    /// The DPoP-bound access token presented with the `DPoP` scheme.
    token: String,
    /// `None`: the token comes without a proof.
    proof: Option<String>,
    expected: String,
    reason: Option<String>,
}

fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors/golden.json")
}

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(NOW, 0).unwrap()
}

fn base() -> AccessClaims {
    AccessClaims {
        iss: ISS.into(),
        sub: "spiffe://tessera.test/agent/a".into(),
        aud: AUD.into(),
        exp: NOW + 300,
        nbf: NOW,
        iat: NOW,
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

fn expected(v: &Verdict) -> (String, Option<String>) {
    let word = if *v == Verdict::Accept { "accept" } else { "refuse" };
    (word.to_owned(), v.reason().map(str::to_owned))
}

fn issuer_keys() -> [SigningKey; 2] {
    [p256(), ed25519()]
}

/// The table as it is built today, in the file's shape.
fn build() -> File {
    let keys = issuer_keys();
    let mut tokens = Vec::new();
    for key in &keys {
        for v in token_vectors(key, &base(), now()).unwrap() {
            let (expected, reason) = expected(&v.expected);
            tokens.push(TokenCase {
                name: format!("{} issuer: {}", key.algorithm(), v.name),
                issuer_key: key.algorithm().to_string(),
                token: v.token,
                expected,
                reason,
            });
        }
    }
    let mut proofs = Vec::new();
    for alg in Algorithm::ALL {
        let dpop = ProofKey::generate_for(alg).unwrap();
        let bound = AccessClaims {
            cnf: Some(Confirmation::Jkt(dpop.thumbprint().to_owned())),
            jti: format!("golden-bound-{alg}"),
            ..base()
        };
        let token = keys[0].sign_jws("at+jwt", &bound).unwrap();
        let target = ProofTarget {
            htm: HTM,
            htu: HTU,
            access_token: Some(&token),
        };
        for v in proof_vectors(&dpop, &target, now()).unwrap() {
            let (expected, reason) = expected(&v.expected);
            proofs.push(ProofCase {
                name: format!("{alg} proof key: {}", v.name),
                proof_key: alg.to_string(),
                htm: HTM.into(),
                htu: HTU.into(),
                token: token.clone(),
                proof: v.proof,
                expected,
                reason,
            });
        }
    }
    File {
        about: "Tessera's golden token and proof vectors (tessera-core token::vectors), exported by \
                crates/tessera-core/src/token/vectors/golden_file.rs (TESSERA_WRITE_GOLDEN=1 rewrites it). \
                A verifier configured with `settings` and `jwks`, at the fixed `now`, with nothing revoked, \
                must give every token its `expected` verdict and run the proofs in order through ONE \
                replay cache. The keys are throwaway test keys that protect nothing."
            .into(),
        jwks: Jwks {
            keys: keys.iter().map(|k| k.public_jwk().clone()).collect(),
        },
        settings: Settings {
            issuer: ISS.into(),
            audience: AUD.into(),
            algorithms: Algorithm::ALL.iter().map(ToString::to_string).collect(),
            leeway_secs: LEEWAYS.to_vec(),
            now: NOW,
            max_chain_len: MAX_CHAIN_LEN,
            proof_max_age_secs: PROOF_MAX_AGE.num_seconds(),
            revoked: Vec::new(),
        },
        tokens,
        proofs,
    }
}

/// Core's verdict on a token: the broker's and the Rust SDK's check.
fn token_verdict(token: &str, jwks: &Jwks, s: &Settings, leeway: i64) -> Verdict {
    let algorithms: Vec<Algorithm> = s.algorithms.iter().map(|a| a.parse().unwrap()).collect();
    let check = AccessCheck {
        audience: Some(&s.audience),
        algorithms: &algorithms,
        leeway_secs: leeway,
        max_chain_len: s.max_chain_len,
        ..AccessCheck::new(&s.issuer, DateTime::from_timestamp(s.now, 0).unwrap())
    };
    match check_access_token(token, jwks, &check) {
        Ok(_) => Verdict::Accept,
        Err(e) => e.into(),
    }
}

/// Core's verdicts on the proof cases, in order through one replay set:
/// the token, then its binding, then the proof's `jti` spent.
fn proof_verdicts(file: &File, leeway: i64) -> Vec<Verdict> {
    let s = &file.settings;
    let at = DateTime::from_timestamp(s.now, 0).unwrap();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for case in &file.proofs {
        let algorithms: Vec<Algorithm> = s.algorithms.iter().map(|a| a.parse().unwrap()).collect();
        let check = AccessCheck {
            audience: Some(&s.audience),
            algorithms: &algorithms,
            leeway_secs: leeway,
            max_chain_len: s.max_chain_len,
            ..AccessCheck::new(&s.issuer, at)
        };
        let verdict = match check_access_token(&case.token, &file.jwks, &check) {
            Err(e) => e.into(),
            Ok(claims) => {
                let presented = Presentation {
                    access_token: &case.token,
                    dpop_scheme: true,
                    proof: case.proof.as_deref(),
                    htm: &case.htm,
                    htu: &case.htu,
                    client_cert_der: None,
                    now: at,
                    max_age: Duration::seconds(s.proof_max_age_secs),
                    leeway: Duration::seconds(leeway),
                };
                match check_binding(claims.cnf.as_ref(), &presented) {
                    Ok(Bound::Dpop(p)) if seen.insert(p.replay_id()) => Verdict::Accept,
                    Ok(Bound::Dpop(_)) => ProofError::Replayed.into(),
                    Ok(other) => panic!("{}: bound as {other:?}", case.name),
                    Err(e) => Verdict::Refuse(super::Refusal::Binding(e)),
                }
            }
        };
        out.push(verdict);
    }
    out
}

fn write(file: &File) {
    let mut text = serde_json::to_string_pretty(file).unwrap();
    text.push('\n');
    let path = path();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
}

/// Names and verdicts, in order: what must not drift.
fn summary(file: &File) -> Vec<(String, String, Option<String>)> {
    let tokens = file
        .tokens
        .iter()
        .map(|c| (c.name.clone(), c.expected.clone(), c.reason.clone()));
    let proofs = file
        .proofs
        .iter()
        .map(|c| (c.name.clone(), c.expected.clone(), c.reason.clone()));
    tokens.chain(proofs).collect()
}

#[test]
fn the_committed_golden_file_gives_core_its_verdicts() {
    if std::env::var_os("TESSERA_WRITE_GOLDEN").is_some_and(|v| v == "1") {
        write(&build());
    }
    let text = std::fs::read_to_string(path()).expect("tests/vectors/golden.json: TESSERA_WRITE_GOLDEN=1 writes it");
    let file: File = serde_json::from_str(&text).unwrap();

    // The file is today's table: same cases, same order, same verdicts.
    assert_eq!(
        summary(&file),
        summary(&build()),
        "tests/vectors/golden.json is not the table: rewrite it with TESSERA_WRITE_GOLDEN=1"
    );
    // The settings core is checked with are the file's own, and are the table's.
    let fresh = build();
    assert_eq!(
        serde_json::to_value(&file.settings).unwrap(),
        serde_json::to_value(&fresh.settings).unwrap()
    );
    assert_eq!(file.jwks, fresh.jwks);
    assert!(
        file.settings.revoked.is_empty(),
        "nothing is revoked: the table assumes so"
    );

    // Both verdicts occur, every reason is set exactly on a refusal, and the
    // names are unique (the Python test reports by name).
    let mut names = HashSet::new();
    let mut reasons = BTreeMap::new();
    for (name, expected, reason) in summary(&file) {
        assert!(names.insert(name.clone()), "duplicate name {name}");
        assert_eq!(expected == "refuse", reason.is_some(), "{name}");
        assert!(expected == "accept" || expected == "refuse", "{name}");
        if let Some(r) = reason {
            *reasons.entry(r).or_insert(0) += 1;
        }
    }
    assert!(file.tokens.iter().any(|c| c.expected == "accept"));
    assert!(file.proofs.iter().any(|c| c.expected == "accept"));
    assert!(reasons.len() >= 20, "{reasons:?}");

    // Core's verdict on every recorded token and proof is the recorded one.
    for &leeway in &file.settings.leeway_secs {
        for case in &file.tokens {
            let got = token_verdict(&case.token, &file.jwks, &file.settings, leeway);
            assert_eq!(
                expected(&got),
                (case.expected.clone(), case.reason.clone()),
                "{} (leeway {leeway})",
                case.name
            );
        }
        for (case, got) in file.proofs.iter().zip(proof_verdicts(&file, leeway)) {
            assert_eq!(
                expected(&got),
                (case.expected.clone(), case.reason.clone()),
                "{} (leeway {leeway})",
                case.name
            );
        }
    }
}
