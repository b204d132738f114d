//! The golden vectors of `tessera-core` (`token::vectors`) against the real
//! `tesserad` and the SDK `Verifier` following it: the broker signs with a
//! key this test generated (`tokens.signing_key`), mints the base tokens
//! through the real RequestToken, and each vector derived from them gets
//! the same verdict from the broker and from the SDK, equal to the table's.
//!
//! Tokens: the broker's verdict is Introspect's `active` (a refused call,
//! e.g. an oversized token, counts as refused); the SDK's is
//! `Verifier::verify` with the token as a bearer token. Proofs: the broker
//! checks a proof where it receives one, on RequestToken (`pop_proof`, no
//! access token: the cases about a token's `ath` and `cnf.jkt` exist only at
//! the SDK); the SDK checks the same cases made for a resource request with
//! a token bound by RequestToken.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use std::time::Duration;

use tessera_client::verifier::{Presented, Scheme, VerifierConfig, VerifyError};
use tessera_client::{REQUEST_TOKEN_HTU, Verifier};
use tessera_core::clock::{Clock as _, SystemClock};
use tessera_core::pop::{BindingError, ProofError, ProofKey};
use tessera_core::token::vectors::{ProofTarget, Refusal, Verdict, proof_vectors, token_vectors};
use tessera_core::token::{AccessClaims, Algorithm, JwsError, SigningKey, decode_unverified};
use tessera_e2e::{Broker, CRM, dev_init, introspect, pb, start_request, token_request};

const ISSUER: &str = "https://tessera.local";
/// The resource request the SDK's proofs are for.
const URL: &str = "https://api.example.com/crm/contacts";

/// A broker signing with a fresh key of `alg` written for it as PKCS#8 PEM,
/// with a task `golden` for `researcher`, and that key.
async fn broker_with_own_key(alg: Algorithm) -> (Broker, SigningKey) {
    let dir = dev_init("golden");
    let pem = tessera_core::token::generate_pkcs8_pem(alg).unwrap();
    let path = dir.path().join("golden-signing.key.pem");
    std::fs::write(&path, pem.as_bytes()).unwrap();
    let key = SigningKey::from_pkcs8_pem(alg, &pem).unwrap();
    let broker = Broker::start_in(
        dir,
        &[
            ("TESSERA_TOKENS__SIGNING_KEY", path.to_str().unwrap()),
            ("TESSERA_TOKENS__ALGORITHM", alg.as_jose()),
            // Refused proofs count as denials; no quarantine mid-table.
            ("TESSERA_ANOMALY__ENABLED", "false"),
            ("TESSERA_SERVER__HEARTBEAT_INTERVAL", "500ms"),
        ],
    );
    let jwks = broker.jwks().await;
    assert!(
        jwks.keys.iter().any(|k| k.kid == key.kid()),
        "the broker does not sign with the key it was given"
    );
    broker
        .start_task(start_request("golden", &["researcher"], &["crm.contacts.read"], 600))
        .await;
    (broker, key)
}

/// The SDK verifier for the CRM, following `broker`, ready, and past its
/// sync floor (tokens must be issued strictly after it, in whole seconds).
async fn sdk_verifier(broker: &Broker) -> Verifier {
    let channel = tessera_client::connect_lazy(&broker.endpoint(), &broker.identity("api-gateway")).unwrap();
    let verifier = Verifier::connect(channel, VerifierConfig::new(ISSUER, CRM)).unwrap();
    assert!(verifier.ready(Duration::from_secs(20)).await, "{:?}", verifier.status());
    let floor = verifier.status().sync_floor.unwrap();
    while SystemClock.now().timestamp() <= floor {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    verifier
}

/// The table's name for an SDK refusal.
fn sdk_verdict(result: Result<tessera_client::Verified, VerifyError>) -> Verdict {
    let refusal = match result {
        Ok(_) => return Verdict::Accept,
        Err(VerifyError::Token(e)) => Refusal::Token(e),
        Err(VerifyError::AlgorithmNotAllowed(alg)) => Refusal::Token(JwsError::AlgorithmNotAllowed(alg)),
        Err(VerifyError::Delegation(e)) => Refusal::Token(JwsError::Chain(e)),
        Err(VerifyError::Proof(e)) => Refusal::Binding(BindingError::Proof(e)),
        Err(VerifyError::ProofReplayed) => Refusal::Binding(BindingError::Proof(ProofError::Replayed)),
        Err(VerifyError::ProofRequired) => Refusal::Binding(BindingError::ProofRequired),
        Err(other) => panic!("a refusal outside the table: {other}"),
    };
    Verdict::Refuse(refusal)
}

/// A verdict without its target: `htm`/`htu` refusals name the method or
/// target expected, which differs between the broker and the SDK.
fn same_case(verdict: &Verdict) -> Option<std::mem::Discriminant<ProofError>> {
    match verdict {
        Verdict::Accept => None,
        Verdict::Refuse(Refusal::Binding(BindingError::Proof(e))) => Some(std::mem::discriminant(e)),
        Verdict::Refuse(other) => panic!("not a proof refusal: {other:?}"),
    }
}

fn claims_of(token: &str) -> AccessClaims {
    let (_, payload) = decode_unverified(token).unwrap();
    serde_json::from_slice(&payload).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_introspection_and_the_sdk_verifier_agree_on_every_token_vector() {
    for alg in Algorithm::ALL {
        let (broker, key) = broker_with_own_key(alg).await;
        let sdk = sdk_verifier(&broker).await;
        let base = broker
            .issue_as("researcher", token_request("golden", &["crm.contacts.read"], Some(600)))
            .await;
        let mut introspector = broker.verifier("api-gateway").await;
        let vectors = token_vectors(&key, &claims_of(&base.access_token), SystemClock.now()).unwrap();
        assert!(vectors.len() >= 25);
        let mut accepted = 0;
        for vector in vectors {
            let by_sdk = sdk_verdict(sdk.verify(&Presented::bearer(&vector.token)).await);
            assert_eq!(by_sdk, vector.expected, "SDK, {alg}: {}", vector.name);
            let active = introspect(&mut introspector, &vector.token).await.unwrap_or(false);
            assert_eq!(
                active,
                vector.expected == Verdict::Accept,
                "broker introspection, {alg}: {}",
                vector.name
            );
            accepted += usize::from(active);
        }
        // The valid bearer token, the one with tool-level limits, and the
        // well-formed delegated one.
        assert_eq!(accepted, 3, "{alg}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_proof_check_and_the_sdk_verifier_agree_on_every_proof_vector() {
    let (broker, _) = broker_with_own_key(Algorithm::Es256).await;
    let sdk = sdk_verifier(&broker).await;
    let mut agent = broker.agent("researcher").await;
    for alg in Algorithm::ALL {
        let key = ProofKey::generate_for(alg).unwrap();
        // A token bound to `key` through the real RequestToken.
        let bound = broker
            .issue_as(
                "researcher",
                pb::RequestTokenRequest {
                    pop_proof: key.proof("POST", REQUEST_TOKEN_HTU, None).unwrap(),
                    ..token_request("golden", &["crm.contacts.read"], Some(600))
                },
            )
            .await;
        assert_eq!(bound.token_type, "DPoP");
        let now = SystemClock.now();

        // The SDK: each case for a resource request with the bound token.
        let at_sdk = ProofTarget {
            htm: "GET",
            htu: URL,
            access_token: Some(&bound.access_token),
        };
        let mut sdk_verdicts = Vec::new();
        for vector in proof_vectors(&key, &at_sdk, now).unwrap() {
            let presented = Presented {
                token: &bound.access_token,
                scheme: Scheme::Dpop,
                dpop_proof: vector.proof.as_deref(),
                method: "GET",
                url: URL,
                client_cert_der: None,
            };
            let got = sdk_verdict(sdk.verify(&presented).await);
            assert_eq!(got, vector.expected, "SDK, {alg}: {}", vector.name);
            sdk_verdicts.push((vector.name, got));
        }

        // The broker: each case as RequestToken's `pop_proof`.
        let at_broker = ProofTarget {
            htm: "POST",
            htu: REQUEST_TOKEN_HTU,
            access_token: None,
        };
        for vector in proof_vectors(&key, &at_broker, now).unwrap() {
            let request = pb::RequestTokenRequest {
                pop_proof: vector.proof.clone().unwrap(),
                ..token_request("golden", &["crm.contacts.read"], Some(600))
            };
            let answer = agent.request_token(request).await;
            match (&vector.expected, answer) {
                (Verdict::Accept, Ok(_)) => {}
                (Verdict::Refuse(Refusal::Binding(BindingError::Proof(reason))), Err(status)) => {
                    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{alg}: {}", vector.name);
                    // The edge refuses an oversized proof before core sees it.
                    let said = match reason {
                        ProofError::TooLong => "longer than".to_owned(),
                        other => other.to_string(),
                    };
                    assert!(
                        status.message().contains(&said),
                        "broker, {alg}: {}: `{}` does not say `{said}`",
                        vector.name,
                        status.message()
                    );
                }
                (expected, answer) => panic!("broker, {alg}: {}: expected {expected:?}, got {answer:?}", vector.name),
            }
            let (_, by_sdk) = sdk_verdicts
                .iter()
                .find(|(name, _)| *name == vector.name)
                .expect("every broker case is an SDK case");
            assert_eq!(
                same_case(by_sdk),
                same_case(&vector.expected),
                "SDK and broker, {alg}: {}",
                vector.name
            );
        }
    }
}
