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
    let jwks = broker.jwks().await;
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
        .start_task(start_request("rot", &["researcher"], &["crm.contacts.read"], 600))
        .await;
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
    let jwks = broker.jwks().await;
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
        .start_task(start_request("sched", &["researcher"], &["crm.contacts.read"], 600))
        .await;
    let t = broker
        .issue_as("researcher", token_request("sched", &["crm.contacts.read"], None))
        .await;
    assert!(verifies(&broker, &t.access_token).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_key_is_in_the_jwks_before_any_token_carries_it() {
    // Rotating every 3 s, each key published 1.5 s before it signs.
    let broker = Broker::start_with(&[
        ("TESSERA_TOKENS__ROTATE_EVERY", "3s"),
        ("TESSERA_TOKENS__ROTATE_PREPUBLISH", "1500ms"),
    ]);
    broker
        .start_task(start_request("staged", &["researcher"], &["crm.contacts.read"], 600))
        .await;
    let mut v = broker.verifier("api-gateway").await;
    let mut agent = broker.agent("researcher").await;
    // Round by round: fetch the JWKS, then mint. A kid's first round in a
    // token must come strictly after its first round in the JWKS.
    let mut first_in_jwks: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut first_in_token: Vec<(String, usize)> = Vec::new();
    let start = Instant::now();
    let mut round = 0;
    while first_in_token.len() < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "saw only {first_in_token:?} in 30 s of 3 s rotations"
        );
        for k in v.get_jwks(pb::GetJwksRequest {}).await.unwrap().into_inner().keys {
            first_in_jwks.entry(k.kid).or_insert(round);
        }
        let t = issue(&mut agent, token_request("staged", &["crm.contacts.read"], Some(60))).await;
        let signed_by = kid(&t.access_token);
        if !first_in_token.iter().any(|(k, _)| *k == signed_by) {
            first_in_token.push((signed_by, round));
        }
        round += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The first key was published at start; every later one ahead of use.
    for (kid, used) in first_in_token.iter().skip(1) {
        let published = first_in_jwks
            .get(kid)
            .unwrap_or_else(|| panic!("kid {kid} signed a token but was never in the JWKS"));
        assert!(
            published < used,
            "kid {kid} was first in the JWKS in round {published} but signed in round {used}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_all_leaves_no_token_that_verifies_offline() {
    let broker = Broker::start();
    let mut o = broker.orchestrator().await;
    for task in ["bg-1", "bg-2"] {
        o.start_task(start_request(
            task,
            &["researcher", "writer"],
            &["crm.contacts.read"],
            600,
        ))
        .await
        .unwrap();
    }
    let mut researcher = broker.agent("researcher").await;
    let mut writer = broker.agent("writer").await;
    let old = vec![
        issue(&mut researcher, token_request("bg-1", &["crm.contacts.read"], None)).await,
        issue(&mut writer, token_request("bg-2", &["crm.contacts.read"], None)).await,
    ];
    for t in &old {
        assert!(verifies(&broker, &t.access_token).await);
    }

    let mut alice = broker.admin("alice").await;
    let unconfirmed = alice
        .revoke_all(pb::RevokeAllRequest {
            confirm: String::new(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(unconfirmed.code(), Code::InvalidArgument, "{unconfirmed:?}");
    let denied = broker
        .admin("researcher")
        .await
        .revoke_all(pb::RevokeAllRequest {
            confirm: "revoke-all".into(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    // Nothing happened yet.
    assert!(verifies(&broker, &old[0].access_token).await);

    let done = alice
        .revoke_all(pb::RevokeAllRequest {
            confirm: "revoke-all".into(),
            reason: "key compromise".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.grants_revoked, 2);
    let jwks = broker.jwks().await;
    assert_eq!(
        jwks.keys.iter().map(|k| k.kid.clone()).collect::<Vec<_>>(),
        vec![done.new_key_id.clone()]
    );
    let mut v = broker.verifier("api-gateway").await;
    for t in &old {
        assert!(
            !verifies(&broker, &t.access_token).await,
            "a pre-break-glass token still verifies offline"
        );
        assert!(
            !v.introspect(pb::IntrospectRequest {
                token: t.access_token.clone()
            })
            .await
            .unwrap()
            .into_inner()
            .active
        );
    }
    // The broker keeps working with its new key.
    o.start_task(start_request("bg-3", &["researcher"], &["crm.contacts.read"], 600))
        .await
        .unwrap();
    let fresh = issue(&mut researcher, token_request("bg-3", &["crm.contacts.read"], None)).await;
    assert_eq!(kid(&fresh.access_token), done.new_key_id);
    assert!(verifies(&broker, &fresh.access_token).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_revoke_all_other_replicas_move_to_fresh_keys() {
    let redis = tessera_e2e::redis::RedisServer::builder().appendonly(false).start();
    let env = redis_env(&redis.url());
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let a = Broker::start_with(&env);
    let b = a.replica();
    b.start_task(start_request("rep", &["researcher"], &["crm.contacts.read"], 600))
        .await;
    let before = b
        .issue_as("researcher", token_request("rep", &["crm.contacts.read"], None))
        .await;

    a.admin("alice")
        .await
        .revoke_all(pb::RevokeAllRequest {
            confirm: "revoke-all".into(),
            reason: "drill".into(),
        })
        .await
        .unwrap();
    assert!(!verifies(&a, &before.access_token).await);

    // B notices its key was withdrawn and publishes a fresh one (never the old).
    let start = Instant::now();
    loop {
        let keys = a.jwks().await.keys;
        if keys.len() == 2 {
            assert!(keys.iter().all(|k| k.kid != kid(&before.access_token)));
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "replica B did not move to a fresh key"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    b.start_task(start_request("rep-2", &["researcher"], &["crm.contacts.read"], 600))
        .await;
    let after = b
        .issue_as("researcher", token_request("rep-2", &["crm.contacts.read"], None))
        .await;
    assert!(verifies(&a, &after.access_token).await);
}
