//! Signing-key rotation through the real `tesserad`: the next key is in the
//! JWKS before it signs, the retired key stays until its tokens expire, and
//! only operators may rotate.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

use std::time::{Duration, Instant};

use jsonwebtoken::{DecodingKey, Validation, decode, decode_header, jwk::JwkSet};
use serde_json::Value;
use tessera_e2e::*;
use tonic::Code;

/// Verifies `token` with `jsonwebtoken` against the broker's current JWKS.
async fn verifies(broker: &Broker, token: &str) -> bool {
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
    let jwks = broker
        .verifier("api-gateway")
        .await
        .get_jwks(pb::GetJwksRequest {})
        .await
        .unwrap()
        .into_inner();
    let set: JwkSet = serde_json::from_str(&jwks.jwks_json).unwrap();
    let kid = decode_header(token).unwrap().kid.unwrap();
    let Some(jwk) = set.find(&kid) else { return false };
    let mut v = Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_audience(&[CRM]);
    decode::<Value>(token, &DecodingKey::from_jwk(jwk).unwrap(), &v).is_ok()
}

fn kid(token: &str) -> String {
    decode_header(token).unwrap().kid.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_rotates_and_old_tokens_keep_verifying() {
    let broker = Broker::start();
    broker
        .orchestrator()
        .await
        .start_task(start_request("rot", &["researcher"], &["crm.contacts.read"], 600))
        .await
        .unwrap();
    let mut agent = broker.agent("researcher").await;
    let before = issue(&mut agent, token_request("rot", &["crm.contacts.read"], None)).await;

    let denied = broker
        .admin("researcher")
        .await
        .rotate_signing_key(pb::RotateSigningKeyRequest { reason: String::new() })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    let rotated = broker
        .admin("alice")
        .await
        .rotate_signing_key(pb::RotateSigningKeyRequest {
            reason: "quarterly".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rotated.retired_key_id, kid(&before.access_token));
    assert_ne!(rotated.new_key_id, rotated.retired_key_id);

    let after = issue(&mut agent, token_request("rot", &["crm.contacts.read"], None)).await;
    assert_eq!(kid(&after.access_token), rotated.new_key_id);
    let jwks = broker
        .verifier("api-gateway")
        .await
        .get_jwks(pb::GetJwksRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(jwks.keys.len(), 2, "the retired key stays until its tokens expire");
    assert!(verifies(&broker, &before.access_token).await);
    assert!(verifies(&broker, &after.access_token).await);
    let mut v = broker.verifier("api-gateway").await;
    for t in [&before, &after] {
        assert!(
            v.introspect(pb::IntrospectRequest {
                token: t.access_token.clone()
            })
            .await
            .unwrap()
            .into_inner()
            .active
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_on_a_schedule() {
    let broker = Broker::start_with(&[("TESSERA_TOKENS__ROTATE_EVERY", "1s")]);
    let mut v = broker.verifier("api-gateway").await;
    let start = Instant::now();
    loop {
        let keys = v.get_jwks(pb::GetJwksRequest {}).await.unwrap().into_inner().keys.len();
        if keys >= 3 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "only {keys} keys after 15 s of 1 s rotations"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Tokens minted now verify against the JWKS.
    broker
        .orchestrator()
        .await
        .start_task(start_request("sched", &["researcher"], &["crm.contacts.read"], 600))
        .await
        .unwrap();
    let t = issue(
        &mut broker.agent("researcher").await,
        token_request("sched", &["crm.contacts.read"], None),
    )
    .await;
    assert!(verifies(&broker, &t.access_token).await);
}
