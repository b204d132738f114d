//! Unit tests of the verifier, with a fixed clock and no network: the
//! golden vectors of `tessera-core` (every way a token or proof can be
//! wrong, with the verdict the broker gives too), then what is the SDK's
//! own: the feed, revocation, replay, presentation and configuration.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, reason = "test")]

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::DateTime;
use serde_json::{Value, json};
use tessera_core::clock::FixedClock;
use tessera_core::pop::{BindingError, ProofError};
use tessera_core::token::vectors::{ProofTarget, Refusal, Verdict, proof_vectors, token_vectors};
use tessera_core::token::{AccessClaims, Algorithm, ChainError, JwsError, SigningKey};

use super::*;

const ISS: &str = "https://tessera.test";
const AUD: &str = "https://api.test/crm";
const URL: &str = "https://api.test/crm/contacts";
const T0: i64 = 1_800_000_000;

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap()
}

fn heartbeat(sent_at: i64) -> pb::WatchRevocationsResponse {
    pb::WatchRevocationsResponse {
        item: Some(pb::watch_revocations_response::Item::Heartbeat(pb::Heartbeat {
            position: "e:1".into(),
            sent_at: Some(prost_types::Timestamp {
                seconds: sent_at,
                nanos: 0,
            }),
        })),
    }
}

fn event(target: pb::revocation_event::Target, revoked_at: i64, not_after: i64) -> pb::WatchRevocationsResponse {
    let ts = |s| prost_types::Timestamp { seconds: s, nanos: 0 };
    pb::WatchRevocationsResponse {
        item: Some(pb::watch_revocations_response::Item::Event(pb::RevocationEvent {
            position: "e:2".into(),
            revoked_at: Some(ts(revoked_at)),
            reason: "test".into(),
            target: Some(target),
            not_after: Some(ts(not_after)),
        })),
    }
}

struct Fixture {
    clock: Arc<FixedClock>,
    verifier: Verifier,
    key: SigningKey,
}

impl Fixture {
    fn new() -> Self {
        Self::with(|_| {})
    }

    fn with(adjust: impl FnOnce(&mut VerifierConfig)) -> Self {
        Self::with_key(SigningKey::generate(Algorithm::Es256).unwrap(), adjust)
    }

    fn with_key(key: SigningKey, adjust: impl FnOnce(&mut VerifierConfig)) -> Self {
        let clock = Arc::new(FixedClock::at(at(T0)));
        let mut config = VerifierConfig::new(ISS, AUD);
        adjust(&mut config);
        let verifier = Verifier::offline(config, clock.clone()).unwrap();
        assert_eq!(verifier.load_jwks(&[key.public_jwk().clone()]), 1);
        // Synchronised ten seconds before T0: tokens issued at T0 are after the floor.
        verifier.ingest(&heartbeat(T0 - 10), true);
        Self { clock, verifier, key }
    }

    fn token(&self, claims: &Value) -> String {
        self.key.sign_jws("at+jwt", claims).unwrap()
    }

    fn verify(&self, token: &str) -> Result<Verified, VerifyError> {
        self.verifier.verify_cached(&Presented::bearer(token))
    }

    /// Advances the clock, keeping the feed fresh with a heartbeat.
    fn advance(&self, secs: i64) {
        self.clock.advance(chrono::Duration::seconds(secs));
        self.verifier.ingest(&heartbeat(T0 + secs), false);
    }
}

fn claims() -> Value {
    json!({
        "iss": ISS,
        "sub": "spiffe://tessera.test/agent/researcher",
        "aud": AUD,
        "exp": T0 + 300,
        "nbf": T0,
        "iat": T0,
        "jti": "grant-1",
        "scope": "contacts.read notes.read",
        "client_id": "spiffe://tessera.test/agent/researcher",
        "task_id": "task-1",
    })
}

fn with(mut value: Value, key: &str, v: Value) -> Value {
    value.as_object_mut().unwrap().insert(key.to_owned(), v);
    value
}

fn without(mut value: Value, key: &str) -> Value {
    value.as_object_mut().unwrap().remove(key);
    value
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

#[track_caller]
fn refused(result: Result<Verified, VerifyError>, expected: VerifyError, token: &str) {
    let err = result.map(|v| v.claims().jti.clone()).unwrap_err();
    assert_eq!(err, expected);
    let message = err.to_string();
    for segment in token.split('.').filter(|s| s.len() >= 8) {
        assert!(!message.contains(segment), "the error leaks the token: {message}");
    }
}

#[test]
fn a_good_token_verifies_with_both_algorithms() {
    let f = Fixture::new();
    let verified = f.verify(&f.token(&claims())).unwrap();
    assert_eq!(verified.subject(), "spiffe://tessera.test/agent/researcher");
    assert_eq!(verified.task_id(), "task-1");
    assert_eq!(verified.grant_id(), "grant-1");
    assert!(verified.has_scope("contacts.read") && !verified.has_scope("contacts.write"));
    assert_eq!(verified.binding(), Binding::Bearer);
    assert!(verified.actors().is_empty());
    assert_eq!(verified.expires_at(), Some(at(T0 + 300)));

    let ed = SigningKey::generate(Algorithm::EdDsa).unwrap();
    f.verifier
        .load_jwks(&[f.key.public_jwk().clone(), ed.public_jwk().clone()]);
    f.verify(&ed.sign_jws("at+jwt", &claims()).unwrap()).unwrap();
    // `application/at+jwt` in any case is the same type (RFC 8725 section 3.11).
    f.verify(&f.key.sign_jws("Application/AT+JWT", &claims()).unwrap())
        .unwrap();
}

#[test]
fn a_missing_token_and_bad_authorization_headers_are_refused() {
    let f = Fixture::new();
    refused(f.verify(""), VerifyError::Missing, "");
    for bad in [
        "",
        "Bearer",
        "Bearer ",
        "Basic abc",
        "Bearer a b",
        "Token abc",
        "bearerabc",
    ] {
        assert_eq!(
            Presented::parse_authorization(bad).unwrap_err(),
            VerifyError::Scheme,
            "{bad:?}"
        );
    }
    assert_eq!(
        Presented::parse_authorization("bearer  abc.def.ghi").unwrap(),
        (Scheme::Bearer, "abc.def.ghi")
    );
    assert_eq!(Presented::parse_authorization("DPoP x").unwrap(), (Scheme::Dpop, "x"));
}

#[test]
fn wrong_typ_is_refused() {
    let f = Fixture::new();
    for typ in ["jwt", "JWT", "dpop+jwt", "at+jwt ", "application/jwt", ""] {
        let token = f.key.sign_jws(typ, &claims()).unwrap();
        refused(f.verify(&token), VerifyError::Token(JwsError::Type), &token);
    }
}

#[test]
fn alg_none_and_hs256_are_refused() {
    let f = Fixture::new();
    let payload = b64(claims().to_string().as_bytes());
    for alg in ["none", "None", "HS256", "RS256", "ES384", ""] {
        let header = format!(r#"{{"alg":"{alg}","typ":"at+jwt","kid":"{}"}}"#, f.key.kid());
        let unsigned = format!("{}.{payload}.", b64(header.as_bytes()));
        refused(f.verify(&unsigned), VerifyError::Token(JwsError::Algorithm), &unsigned);
        // HS256 keyed with the public JWK, the classic confusion.
        let input = format!("{}.{payload}", b64(header.as_bytes()));
        let secret = serde_json::to_vec(f.key.public_jwk()).unwrap();
        let mac = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret),
            input.as_bytes(),
        );
        let forged = format!("{input}.{}", b64(mac.as_ref()));
        refused(f.verify(&forged), VerifyError::Token(JwsError::Algorithm), &forged);
    }
}

#[test]
fn an_algorithm_outside_the_allow_list_is_refused() {
    let f = Fixture::with(|c| c.algorithms = vec![Algorithm::Es256]);
    let ed = SigningKey::generate(Algorithm::EdDsa).unwrap();
    // The EdDSA key is not even cached, and the token's alg is refused first.
    assert_eq!(f.verifier.load_jwks(&[ed.public_jwk().clone()]), 0);
    let token = ed.sign_jws("at+jwt", &claims()).unwrap();
    refused(
        f.verify(&token),
        VerifyError::AlgorithmNotAllowed(Algorithm::EdDsa),
        &token,
    );
}

#[test]
fn unknown_keys_and_bad_signatures_are_refused() {
    let f = Fixture::new();
    let stranger = SigningKey::generate(Algorithm::Es256).unwrap();
    let token = stranger.sign_jws("at+jwt", &claims()).unwrap();
    refused(f.verify(&token), VerifyError::Token(JwsError::UnknownKey), &token);

    // A token whose payload was edited after signing.
    let good = f.token(&claims());
    let parts: Vec<&str> = good.split('.').collect();
    let evil = b64(with(claims(), "scope", json!("contacts.read contacts.write admin"))
        .to_string()
        .as_bytes());
    let forged = format!("{}.{evil}.{}", parts[0], parts[2]);
    refused(f.verify(&forged), VerifyError::Token(JwsError::Signature), &forged);
    // A truncated or padded signature.
    for sig in [&parts[2][..40], "AAAA", ""] {
        let forged = format!("{}.{}.{sig}", parts[0], parts[1]);
        refused(f.verify(&forged), VerifyError::Token(JwsError::Signature), &forged);
    }
    // A key-bearing header is never followed.
    let header = format!(
        r#"{{"alg":"ES256","typ":"at+jwt","kid":"{}","jku":"https://evil.test/jwks"}}"#,
        f.key.kid()
    );
    let forged = format!("{}.{}.{}", b64(header.as_bytes()), parts[1], parts[2]);
    refused(
        f.verify(&forged),
        VerifyError::Token(JwsError::ForbiddenHeader("jku")),
        &forged,
    );
}

#[test]
fn time_claims_are_checked_with_leeway() {
    let f = Fixture::new(); // 5 s leeway
    let token = f.token(&claims());
    f.advance(304);
    f.verify(&token).unwrap();
    f.advance(1);
    refused(f.verify(&token), VerifyError::Token(JwsError::Expired), &token);

    let f = Fixture::new();
    let early = f.token(&with(with(claims(), "nbf", json!(T0 + 6)), "iat", json!(T0 + 6)));
    refused(f.verify(&early), VerifyError::Token(JwsError::NotYetValid), &early);
    let early = f.token(&with(claims(), "iat", json!(T0 + 6)));
    refused(f.verify(&early), VerifyError::Token(JwsError::IssuedInFuture), &early);
    f.verify(&f.token(&with(claims(), "nbf", json!(T0 + 5)))).unwrap();
}

#[test]
fn wrong_audience_and_issuer_are_refused() {
    let f = Fixture::new();
    for aud in ["https://api.test/crm/", "https://api.test/billing", ""] {
        let token = f.token(&with(claims(), "aud", json!(aud)));
        refused(f.verify(&token), VerifyError::Token(JwsError::Audience), &token);
    }
    let token = f.token(&with(claims(), "aud", json!([AUD])));
    refused(f.verify(&token), VerifyError::Token(JwsError::Claims), &token);
    for iss in ["https://evil.test", "https://tessera.test/", ""] {
        let token = f.token(&with(claims(), "iss", json!(iss)));
        refused(f.verify(&token), VerifyError::Token(JwsError::Issuer), &token);
    }
}

#[test]
fn malformed_claim_sets_are_refused() {
    let f = Fixture::new();
    for claim in ["exp", "iat", "jti", "sub", "task_id", "scope"] {
        let token = f.token(&without(claims(), claim));
        refused(f.verify(&token), VerifyError::Token(JwsError::Claims), &token);
    }
    let token = f.token(&with(claims(), "exp", json!("tomorrow")));
    refused(f.verify(&token), VerifyError::Token(JwsError::Claims), &token);
    let token = f.token(&with(claims(), "jti", json!("")));
    refused(f.verify(&token), VerifyError::Token(JwsError::Claims), &token);
    // A claim set that is an array would fill a struct positionally: refused.
    let token = f.key.sign_jws("at+jwt", &json!([ISS, "sub"])).unwrap();
    refused(
        f.verify(&token),
        VerifyError::Token(JwsError::Malformed("payload is not a json object")),
        &token,
    );
    let token = f.token(&with(claims(), "task_id", json!("")));
    refused(f.verify(&token), VerifyError::Token(JwsError::Claims), &token);
}

#[test]
fn the_verifier_fails_closed_until_synchronised_and_when_stale() {
    let key = SigningKey::generate(Algorithm::Es256).unwrap();
    let clock = Arc::new(FixedClock::at(at(T0)));
    let verifier = Verifier::offline(VerifierConfig::new(ISS, AUD), clock.clone()).unwrap();
    verifier.load_jwks(&[key.public_jwk().clone()]);
    let token = key.sign_jws("at+jwt", &claims()).unwrap();
    refused(
        verifier.verify_cached(&Presented::bearer(&token)),
        VerifyError::NotSynced,
        &token,
    );
    // A resumed (not fresh) subscription never synchronises a verifier.
    verifier.ingest(&heartbeat(T0 - 1), false);
    refused(
        verifier.verify_cached(&Presented::bearer(&token)),
        VerifyError::NotSynced,
        &token,
    );
    verifier.ingest(&heartbeat(T0 - 1), true);
    verifier.verify_cached(&Presented::bearer(&token)).unwrap();
    assert_eq!(verifier.status().sync_floor, Some(T0 - 1));

    // 15 s of silence is fine, one more is not; the next heartbeat recovers.
    clock.advance(chrono::Duration::seconds(15));
    verifier.verify_cached(&Presented::bearer(&token)).unwrap();
    clock.advance(chrono::Duration::milliseconds(1));
    refused(
        verifier.verify_cached(&Presented::bearer(&token)),
        VerifyError::FeedStale,
        &token,
    );
    assert!(!verifier.status().fresh);
    assert_eq!(VerifyError::FeedStale.kind().http_status(), 503);
    verifier.ingest(&heartbeat(T0 + 16), false);
    verifier.verify_cached(&Presented::bearer(&token)).unwrap();
}

#[test]
fn revoked_grants_and_tasks_are_refused_and_forgotten_after_expiry() {
    use pb::revocation_event::Target;
    let f = Fixture::new();
    let token = f.token(&claims());
    let sibling = f.token(&with(claims(), "jti", json!("grant-2")));
    let other_task = f.token(&with(
        with(claims(), "jti", json!("grant-3")),
        "task_id",
        json!("task-2"),
    ));
    f.verifier
        .ingest(&event(Target::GrantId("grant-1".into()), T0, T0 + 300), false);
    refused(f.verify(&token), VerifyError::Revoked, &token);
    f.verify(&sibling).unwrap();
    f.verifier
        .ingest(&event(Target::TaskId("task-1".into()), T0, T0 + 300), false);
    refused(f.verify(&sibling), VerifyError::Revoked, &sibling);
    f.verify(&other_task).unwrap();
    assert_eq!(f.verifier.status().revocations, 2);

    // Kept until not_after + leeway, then forgotten: memory is bounded by time.
    f.advance(305);
    assert_eq!(f.verifier.status().revocations, 2);
    f.advance(306);
    assert_eq!(f.verifier.status().revocations, 0);
    // An event about tokens long expired is not even stored.
    f.verifier.ingest(&event(Target::GrantId("old".into()), T0, T0), false);
    assert_eq!(f.verifier.status().revocations, 0);
}

#[test]
fn a_lost_position_refuses_everything_then_tokens_issued_before_the_resync() {
    let f = Fixture::new();
    let before = f.token(&claims());
    f.verify(&before).unwrap();
    f.verifier.position_lost();
    refused(f.verify(&before), VerifyError::NotSynced, &before);
    // The fresh subscription answers at T0 + 2 (broker clock).
    f.clock.advance(chrono::Duration::seconds(3));
    f.verifier.ingest(&heartbeat(T0 + 2), true);
    refused(f.verify(&before), VerifyError::IssuedBeforeSync, &before);
    let same_second = f.token(&with(claims(), "iat", json!(T0 + 2)));
    refused(f.verify(&same_second), VerifyError::IssuedBeforeSync, &same_second);
    let after = f.token(&with(claims(), "iat", json!(T0 + 3)));
    f.verify(&after).unwrap();
}

#[test]
fn a_full_revocation_set_raises_the_floor_instead_of_growing() {
    use pb::revocation_event::Target;
    let f = Fixture::with(|c| c.max_revocations = 2);
    for i in 0..2 {
        f.verifier
            .ingest(&event(Target::GrantId(format!("g{i}")), T0 - 5, T0 + 300), false);
    }
    let token = f.token(&claims());
    f.verify(&token).unwrap();
    // The third cannot be stored: every token issued up to it is refused.
    f.verifier
        .ingest(&event(Target::GrantId("g3".into()), T0 + 1, T0 + 300), false);
    assert_eq!(f.verifier.status().revocations, 2);
    assert_eq!(f.verifier.status().sync_floor, Some(T0 + 1));
    refused(f.verify(&token), VerifyError::IssuedBeforeSync, &token);
    f.verify(&f.token(&with(claims(), "iat", json!(T0 + 2)))).unwrap();
}

const A: &str = "spiffe://tessera.test/agent/a";
const B: &str = "spiffe://tessera.test/agent/b";
const C: &str = "spiffe://tessera.test/agent/c";

/// C's token in a chain A -> B -> C (docs/ARCHITECTURE.md, "Token claims").
fn delegated() -> Value {
    let mut v = claims();
    let map = v.as_object_mut().unwrap();
    map.insert("sub".into(), json!(A));
    map.insert("client_id".into(), json!(C));
    map.insert("scope".into(), json!("contacts.read"));
    map.insert("exp".into(), json!(T0 + 100));
    map.insert("act".into(), json!({"sub": C, "act": {"sub": B}}));
    map.insert(
        "tessera_chain".into(),
        json!([
            {"jti": "grant-a", "sub": A, "scope": "contacts.read notes.read", "exp": T0 + 300},
            {"jti": "grant-b", "sub": B, "scope": "contacts.read notes.read", "exp": T0 + 200},
        ]),
    );
    v
}

fn edit(mut v: Value, f: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
    f(v.as_object_mut().unwrap());
    v
}

#[test]
fn delegation_chains_must_be_consistent_bounded_and_narrowing() {
    use pb::revocation_event::Target;
    let f = Fixture::new();
    let token = f.token(&delegated());
    let verified = f.verify(&token).unwrap();
    assert_eq!(verified.actors(), [C, B]);
    assert_eq!(verified.holder(), C);
    assert_eq!(verified.subject(), A);

    let chain =
        |f: &mut serde_json::Map<String, Value>| f.get_mut("tessera_chain").unwrap().as_array_mut().unwrap().clone();
    let cases: Vec<(Value, VerifyError)> = vec![
        (
            edit(delegated(), |m| {
                m.remove("tessera_chain");
            }),
            VerifyError::Delegation(ChainError::Shape),
        ),
        (
            edit(delegated(), |m| {
                m.remove("act");
            }),
            VerifyError::Delegation(ChainError::Shape),
        ),
        (
            edit(delegated(), |m| {
                m.insert("act".into(), json!({"sub": C}));
            }),
            VerifyError::Delegation(ChainError::Shape),
        ),
        (
            edit(delegated(), |m| {
                m.insert("act".into(), json!("spiffe://x"));
            }),
            VerifyError::Token(JwsError::Claims),
        ),
        (
            edit(delegated(), |m| {
                m.insert("act".into(), json!({"sub": C, "scope": "x", "act": {"sub": B}}));
            }),
            VerifyError::Token(JwsError::Claims),
        ),
        (
            edit(delegated(), |m| {
                m.insert("act".into(), json!({"sub": "", "act": {"sub": B}}));
            }),
            VerifyError::Delegation(ChainError::Entry),
        ),
        // An edited (re-signed) chain: actors swapped, the root replaced.
        (
            edit(delegated(), |m| {
                m.insert("act".into(), json!({"sub": B, "act": {"sub": C}}));
            }),
            VerifyError::Delegation(ChainError::Actors),
        ),
        (
            edit(delegated(), |m| {
                m.insert("client_id".into(), json!(B));
            }),
            VerifyError::Delegation(ChainError::Actors),
        ),
        (
            edit(delegated(), |m| {
                m.insert("sub".into(), json!(B));
            }),
            VerifyError::Delegation(ChainError::Subject),
        ),
        // Widening: the token or a hop holds more than its parent.
        (
            edit(delegated(), |m| {
                m.insert("scope".into(), json!("contacts.read contacts.write"));
            }),
            VerifyError::Delegation(ChainError::WiderScope { hop: 1 }),
        ),
        (
            edit(delegated(), |m| {
                m.insert("exp".into(), json!(T0 + 201));
            }),
            VerifyError::Delegation(ChainError::LaterExpiry { hop: 1 }),
        ),
        (
            edit(delegated(), |m| {
                let mut c = chain(m);
                c[1]["scope"] = json!("contacts.read notes.read admin");
                m.insert("tessera_chain".into(), json!(c));
            }),
            VerifyError::Delegation(ChainError::WiderScope { hop: 0 }),
        ),
        (
            edit(delegated(), |m| {
                let mut c = chain(m);
                c[1]["exp"] = json!(T0 + 301);
                m.insert("tessera_chain".into(), json!(c));
            }),
            VerifyError::Delegation(ChainError::LaterExpiry { hop: 0 }),
        ),
    ];
    for (claims, why) in cases {
        let token = f.token(&claims);
        refused(f.verify(&token), why, &token);
    }
    // A chain entry with an unknown member or a missing one is not a claim set we read.
    let token = f.token(&edit(delegated(), |m| {
        let mut c = chain(m);
        c[0]["extra"] = json!(1);
        m.insert("tessera_chain".into(), json!(c));
    }));
    refused(f.verify(&token), VerifyError::Token(JwsError::Claims), &token);
    // Deeper than allowed.
    let shallow = Fixture::with(|c| c.max_act_depth = 1);
    let token = shallow.token(&delegated());
    refused(
        shallow.verify(&token),
        VerifyError::Delegation(ChainError::TooLong),
        &token,
    );

    // An `act` chain edited after signing (an actor removed) breaks the signature.
    let token = f.token(&delegated());
    let parts: Vec<&str> = token.split('.').collect();
    let edited = b64(edit(delegated(), |m| {
        m.insert("act".into(), json!({"sub": C}));
    })
    .to_string()
    .as_bytes());
    let forged = format!("{}.{edited}.{}", parts[0], parts[2]);
    refused(f.verify(&forged), VerifyError::Token(JwsError::Signature), &forged);

    // Revoking an ancestor's grant kills the descendant too.
    let token = f.token(&delegated());
    f.verify(&token).unwrap();
    f.verifier
        .ingest(&event(Target::GrantId("grant-a".into()), T0, T0 + 600), false);
    refused(f.verify(&token), VerifyError::Revoked, &token);
}

struct Dpop {
    f: Fixture,
    key: DpopKey,
    token: String,
}

impl Dpop {
    fn new() -> Self {
        let f = Fixture::new();
        let key = DpopKey::generate().unwrap();
        let token = f.token(&with(claims(), "cnf", json!({"jkt": key.thumbprint()})));
        Self { f, key, token }
    }

    fn proof_at(&self, htm: &str, url: &str, iat: i64, jti: &str) -> String {
        self.key.sign(htm, url, jti, at(iat), Some(&self.token)).unwrap()
    }

    fn proof(&self, jti: &str) -> String {
        self.proof_at("GET", URL, T0, jti)
    }

    fn present<'a>(&'a self, proof: Option<&'a str>) -> Presented<'a> {
        Presented {
            token: &self.token,
            scheme: Scheme::Dpop,
            dpop_proof: proof,
            method: "GET",
            url: URL,
            client_cert_der: None,
        }
    }

    #[track_caller]
    fn refused(&self, presented: Presented<'_>, expected: VerifyError) {
        let err = self.f.verifier.verify_cached(&presented).unwrap_err();
        assert_eq!(err, expected);
        if let Some(proof) = presented.dpop_proof {
            for segment in proof.split('.').filter(|s| s.len() >= 8) {
                assert!(!err.to_string().contains(segment));
            }
        }
    }
}

#[test]
fn a_dpop_bound_token_needs_a_fresh_proof_of_its_key_for_this_request() {
    let d = Dpop::new();
    let proof = d.proof("p1");
    let verified = d.f.verifier.verify_cached(&d.present(Some(&proof))).unwrap();
    assert_eq!(verified.binding(), Binding::Dpop);
    // Case and the default port do not matter, nor the request's query (RFC 9449 4.3).
    let proof = d.proof_at("GET", "HTTPS://API.test:443/crm/contacts", T0, "p2");
    let with_query = Presented {
        url: "https://api.test/crm/contacts?page=2",
        ..d.present(Some(&proof))
    };
    d.f.verifier.verify_cached(&with_query).unwrap();

    // Stolen bound token: presented as bearer, or without a proof.
    d.refused(Presented::bearer(&d.token), VerifyError::ProofRequired);
    let mut as_bearer = d.present(Some(&proof));
    as_bearer.scheme = Scheme::Bearer;
    d.refused(as_bearer, VerifyError::ProofRequired);
    d.refused(d.present(None), VerifyError::ProofRequired);

    // Replayed.
    let once = d.proof("p3");
    d.f.verifier.verify_cached(&d.present(Some(&once))).unwrap();
    d.refused(d.present(Some(&once)), VerifyError::ProofReplayed);
    assert_eq!(VerifyError::ProofReplayed.kind(), RefusalKind::InvalidProof);

    // Another URL; a proof's own `htu` carries no query (RFC 9449 4.2).
    for url in [
        "https://api.test/crm/notes",
        "http://api.test/crm/contacts",
        "https://evil.test/crm/contacts",
        "/crm/contacts",
        "https://api.test/crm/contacts?page=2",
    ] {
        let proof = d.proof_at("GET", url, T0, "p5");
        d.refused(
            d.present(Some(&proof)),
            VerifyError::Proof(ProofError::Target(URL.to_owned())),
        );
    }
    // No `ath`.
    let no_ath = d.key.sign("GET", URL, "p6", at(T0), None).unwrap();
    d.refused(
        d.present(Some(&no_ath)),
        VerifyError::Proof(ProofError::AccessTokenHash),
    );
    assert_eq!(
        VerifyError::Proof(ProofError::Stale(60)).kind(),
        RefusalKind::InvalidProof
    );
}

#[test]
fn dpop_proof_iat_must_be_fresh() {
    let d = Dpop::new(); // 60 s max age, 5 s leeway
    let old = d.proof_at("GET", URL, T0 - 61, "old");
    d.refused(d.present(Some(&old)), VerifyError::Proof(ProofError::Stale(60)));
    let oldest_ok = d.proof_at("GET", URL, T0 - 60, "ok1");
    d.f.verifier.verify_cached(&d.present(Some(&oldest_ok))).unwrap();
    let latest_ok = d.proof_at("GET", URL, T0 + 5, "ok2");
    d.f.verifier.verify_cached(&d.present(Some(&latest_ok))).unwrap();
    let future = d.proof_at("GET", URL, T0 + 6, "future");
    d.refused(d.present(Some(&future)), VerifyError::Proof(ProofError::Future));
}

/// What the table calls `error`.
fn verdict(result: Result<Verified, VerifyError>) -> Verdict {
    let refusal = match result {
        Ok(_) => return Verdict::Accept,
        Err(VerifyError::Token(e)) => Refusal::Token(e),
        Err(VerifyError::AlgorithmNotAllowed(alg)) => Refusal::Token(JwsError::AlgorithmNotAllowed(alg)),
        Err(VerifyError::Delegation(e)) => Refusal::Token(JwsError::Chain(e)),
        Err(VerifyError::Proof(e)) => Refusal::Binding(BindingError::Proof(e)),
        Err(VerifyError::ProofReplayed) => Refusal::Binding(BindingError::Proof(ProofError::Replayed)),
        Err(VerifyError::ProofRequired) => Refusal::Binding(BindingError::ProofRequired),
        Err(VerifyError::DpopSchemeWithoutKey) => Refusal::Binding(BindingError::DpopSchemeWithoutKey),
        Err(VerifyError::CertificateRequired) => Refusal::Binding(BindingError::CertificateRequired),
        Err(VerifyError::CertificateMismatch) => Refusal::Binding(BindingError::CertificateMismatch),
        Err(other) => panic!("a refusal outside the table: {other}"),
    };
    Verdict::Refuse(refusal)
}

fn base_claims() -> AccessClaims {
    serde_json::from_value(claims()).unwrap()
}

/// The golden token vectors, for both algorithms and the smallest and
/// largest leeway: each gets the table's verdict.
#[test]
fn golden_token_vectors() {
    for alg in Algorithm::ALL {
        for leeway in [Duration::ZERO, MAX_LEEWAY] {
            let f = Fixture::with_key(SigningKey::generate(alg).unwrap(), |c| c.leeway = leeway);
            let vectors = token_vectors(&f.key, &base_claims(), at(T0)).unwrap();
            assert!(vectors.len() >= 25, "{}", vectors.len());
            for vector in vectors {
                let got = verdict(f.verify(&vector.token));
                assert_eq!(got, vector.expected, "{} ({alg}, leeway {leeway:?})", vector.name);
            }
        }
    }
}

/// The golden proof vectors with a DPoP-bound token, in order through the
/// verifier's replay cache.
#[test]
fn golden_proof_vectors() {
    for alg in Algorithm::ALL {
        let f = Fixture::new();
        let key = DpopKey::generate_for(alg).unwrap();
        let mut bound = base_claims();
        bound.cnf = Some(tessera_core::token::Confirmation::Jkt(key.thumbprint().to_owned()));
        let token = f.key.sign_jws("at+jwt", &bound).unwrap();
        let target = ProofTarget {
            htm: "GET",
            htu: URL,
            access_token: Some(&token),
        };
        for vector in proof_vectors(&key, &target, at(T0)).unwrap() {
            let presented = Presented {
                token: &token,
                scheme: Scheme::Dpop,
                dpop_proof: vector.proof.as_deref(),
                method: "GET",
                url: URL,
                client_cert_der: None,
            };
            let got = verdict(f.verifier.verify_cached(&presented));
            assert_eq!(got, vector.expected, "{} ({alg})", vector.name);
        }
    }
}

#[test]
fn the_dpop_scheme_with_a_bearer_token_is_refused() {
    let f = Fixture::new();
    let token = f.token(&claims());
    let presented = Presented {
        scheme: Scheme::Dpop,
        ..Presented::bearer(&token)
    };
    assert_eq!(
        f.verifier.verify_cached(&presented).unwrap_err(),
        VerifyError::DpopSchemeWithoutKey
    );
    assert_eq!(VerifyError::DpopSchemeWithoutKey.kind(), RefusalKind::InvalidProof);
}

#[test]
fn the_replay_cache_is_bounded_in_size_and_time() {
    let mut cache = replay::ReplayCache::new(2, 2);
    cache.record("a".into(), T0 + 10, T0).unwrap();
    cache.record("b".into(), T0 + 10, T0).unwrap();
    assert_eq!(
        cache.record("a".into(), T0 + 10, T0),
        Err(replay::ReplayError::Replayed)
    );
    assert_eq!(
        cache.record("c".into(), T0 + 10, T0),
        Err(replay::ReplayError::Full("dpop replay cache"))
    );
    // Once their window has passed, the entries go and room returns.
    cache.record("c".into(), T0 + 30, T0 + 11).unwrap();
    assert_eq!(cache.len(), 1);
}

#[test]
fn one_key_cannot_fill_the_replay_cache_for_everyone() {
    let mut cache = replay::ReplayCache::new(10, 3);
    for jti in ["1", "2", "3"] {
        cache.record(format!("keyA.{jti}"), T0 + 10, T0).unwrap();
    }
    assert_eq!(
        cache.record("keyA.4".into(), T0 + 10, T0),
        Err(replay::ReplayError::Full("dpop replay cache of this key"))
    );
    // Another key still has room, and a replay is still a replay.
    cache.record("keyB.1".into(), T0 + 10, T0).unwrap();
    assert_eq!(
        cache.record("keyA.1".into(), T0 + 10, T0),
        Err(replay::ReplayError::Replayed)
    );
    // Once keyA's proofs leave the window, its share comes back.
    cache.record("keyA.5".into(), T0 + 30, T0 + 11).unwrap();
    assert_eq!(cache.len(), 1);
}

#[test]
fn a_certificate_bound_token_needs_that_client_certificate() {
    let f = Fixture::new();
    let cert = b"the DER of the agent's certificate".to_vec();
    let x5t = b64(ring::digest::digest(&ring::digest::SHA256, &cert).as_ref());
    let token = f.token(&with(claims(), "cnf", json!({"x5t#S256": x5t})));
    let presented = |der: Option<&'static [u8]>| Presented {
        client_cert_der: der,
        ..Presented::bearer(&token)
    };
    let leaked: &'static [u8] = cert.leak();
    let verified = f.verifier.verify_cached(&presented(Some(leaked))).unwrap();
    assert_eq!(verified.binding(), Binding::Certificate);
    refused(
        f.verifier.verify_cached(&presented(None)),
        VerifyError::CertificateRequired,
        &token,
    );
    refused(
        f.verifier.verify_cached(&presented(Some(b"another certificate"))),
        VerifyError::CertificateMismatch,
        &token,
    );
}

#[test]
fn unknown_confirmations_and_required_binding() {
    let f = Fixture::new();
    // Exactly one known confirmation method, or the claims are unreadable.
    for cnf in [
        json!({"jwk": {"kty": "EC"}}),
        json!({}),
        json!({"jkt": "x", "kid": "y"}),
        json!({"jkt": "x", "x5t#S256": "y"}),
        json!("jkt"),
        json!({"jkt": 5}),
    ] {
        let token = f.token(&with(claims(), "cnf", cnf));
        refused(f.verify(&token), VerifyError::Token(JwsError::Claims), &token);
    }

    let strict = Fixture::with(|c| c.require_bound = true);
    let bearer = strict.token(&claims());
    refused(strict.verify(&bearer), VerifyError::BoundTokenRequired, &bearer);
}

#[test]
fn scopes_map_to_403_and_refusals_to_www_authenticate() {
    let f = Fixture::new();
    let verified = f.verify(&f.token(&claims())).unwrap();
    verified.require_scope("contacts.read").unwrap();
    let err = verified.require_scope("contacts.write").unwrap_err();
    assert_eq!(err.kind().http_status(), 403);
    let header = err.www_authenticate("crm").unwrap();
    assert!(
        header.starts_with(r#"Bearer realm="crm", error="insufficient_scope""#),
        "{header}"
    );
    assert!(header.contains(r#"scope="contacts.write""#), "{header}");

    let header = VerifyError::Revoked.www_authenticate("crm").unwrap();
    assert!(
        header.contains(r#"error="invalid_token""#) && header.contains("DPoP"),
        "{header}"
    );
    assert_eq!(VerifyError::Revoked.kind().http_status(), 401);
    let header = VerifyError::ProofReplayed.www_authenticate("crm").unwrap();
    assert!(
        header.starts_with("DPoP ") && header.contains("invalid_dpop_proof"),
        "{header}"
    );
    assert!(VerifyError::NotSynced.www_authenticate("crm").is_none());
}

#[test]
fn config_is_validated_and_names_the_field() {
    let clock = Arc::new(FixedClock::at(at(T0)));
    for (adjust, field) in [
        (
            Box::new(|c: &mut VerifierConfig| c.leeway = Duration::from_secs(301)) as Box<dyn Fn(&mut VerifierConfig)>,
            "leeway",
        ),
        (Box::new(|c: &mut VerifierConfig| c.issuer.clear()), "issuer"),
        (Box::new(|c: &mut VerifierConfig| c.audience.clear()), "audience"),
        (Box::new(|c: &mut VerifierConfig| c.algorithms.clear()), "algorithms"),
        (
            Box::new(|c: &mut VerifierConfig| c.max_staleness = Duration::ZERO),
            "max_staleness",
        ),
        (Box::new(|c: &mut VerifierConfig| c.max_act_depth = 0), "max_act_depth"),
        (Box::new(|c: &mut VerifierConfig| c.max_act_depth = 17), "max_act_depth"),
        (
            Box::new(|c: &mut VerifierConfig| c.dpop_max_age = Duration::from_secs(61)),
            "dpop_max_age",
        ),
        (
            Box::new(|c: &mut VerifierConfig| c.replay_cache_capacity = 0),
            "replay_cache_capacity",
        ),
    ] {
        let mut config = VerifierConfig::new(ISS, AUD);
        adjust(&mut config);
        let err = Verifier::offline(config, clock.clone()).unwrap_err();
        assert_eq!(err.field, field);
    }
}

/// Tool-level limits: the verifier exposes the token's `mcp_tool` details
/// and answers a call they do not allow with 403 `insufficient_scope`; a
/// detail it cannot read refuses the whole token.
#[test]
fn tool_level_limits_are_exposed_and_enforced() {
    let f = Fixture::new();
    let detail = json!([{
        "type": "mcp_tool", "server": AUD, "tools": ["transfer", "list"],
        "constraints": {"transfer": {"amount": {"max": 500}, "repo": {"eq": "acme/site"}}}
    }]);
    let token = f.token(&with(claims(), "authorization_details", detail));
    let v = f.verify(&token).unwrap();
    assert_eq!(v.tool_grants().len(), 1);
    assert_eq!(v.tool_grants()[0].server, AUD);
    v.check_tool_call("transfer", &json!({"amount": 500, "repo": "acme/site"}))
        .unwrap();
    v.check_tool_call("list", &Value::Null).unwrap();
    for (tool, args) in [
        ("transfer", json!({"amount": 501, "repo": "acme/site"})),
        ("transfer", json!({"amount": 5, "repo": "acme/other"})),
        ("transfer", json!({"repo": "acme/site"})),
        ("delete", json!({})),
    ] {
        let err = v.check_tool_call(tool, &args).unwrap_err();
        assert!(matches!(err, VerifyError::ToolNotAllowed(_)), "{tool} {args}");
        assert_eq!(err.kind().http_status(), 403);
        let header = err.www_authenticate("mcp").unwrap();
        assert!(
            header.starts_with("Bearer ") && header.contains(r#"error="insufficient_scope""#),
            "{header}"
        );
        assert!(!err.to_string().contains("acme/other"), "the refusal names no value");
    }
    // No detail: no tool-level limit.
    let plain = f.verify(&f.token(&claims())).unwrap();
    assert!(plain.tool_grants().is_empty());
    plain
        .check_tool_call("anything", &json!({"amount": 1_000_000}))
        .unwrap();
    // Details for another server only: no tool of this audience is allowed.
    let other = json!([{"type": "mcp_tool", "server": "https://other.test", "tools": ["transfer"]}]);
    let v = f
        .verify(&f.token(&with(claims(), "authorization_details", other)))
        .unwrap();
    assert!(v.check_tool_call("transfer", &json!({})).is_err());
    // Unreadable limits refuse the token.
    for bad in [
        json!([{"type": "payment_initiation"}]),
        json!([{"type": "mcp_tool", "server": AUD, "tools": ["a"], "constraints": {"a": {"n": {"regex": "."}}}}]),
        json!([]),
        json!({"type": "mcp_tool", "server": AUD, "tools": ["a"]}),
    ] {
        let token = f.token(&with(claims(), "authorization_details", bad));
        refused(f.verify(&token), VerifyError::Token(JwsError::Claims), &token);
    }
}
