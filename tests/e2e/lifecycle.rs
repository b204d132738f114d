//! The whole token lifecycle through the real `tesserad`, over gRPC with mTLS.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header, jwk::JwkSet};
use serde_json::Value;
use tessera_e2e::*;
use tokio_stream::StreamExt as _;

fn install_jose() {
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
}

/// Verifies `token` with the independent `jsonwebtoken` crate against the JWKS
/// served by GetJwks, and returns its claims.
async fn verify_with_jsonwebtoken(broker: &Broker, token: &str, alg: Algorithm) -> Value {
    install_jose();
    let jwks = broker.jwks().await;
    let set: JwkSet = serde_json::from_str(&jwks.jwks_json).unwrap();
    let header = decode_header(token).unwrap();
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    assert_eq!(header.alg, alg);
    let kid = header.kid.expect("kid in header");
    let jwk = set.find(&kid).expect("kid is in the JWKS");
    let mut validation = Validation::new(alg);
    validation.set_audience(&[CRM]);
    validation.set_issuer(&["https://tessera.local"]);
    validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub", "jti"]);
    validation.leeway = 0;
    let data = decode::<Value>(token, &DecodingKey::from_jwk(jwk).unwrap(), &validation).unwrap();
    // A different audience must be refused by the same library.
    let mut wrong = validation.clone();
    wrong.set_audience(&["https://api.example.com/payments"]);
    assert!(decode::<Value>(token, &DecodingKey::from_jwk(jwk).unwrap(), &wrong).is_err());
    data.claims
}

#[tokio::test]
async fn a_task_lifecycle_end_to_end() {
    let broker = Broker::start();
    let mut orchestrator = broker.orchestrator().await;
    let mut agent = broker.agent("researcher").await;
    let mut verifier = broker.verifier("api-gateway").await;

    let task = orchestrator
        .start_task(start_request(
            "lifecycle-1",
            &["researcher"],
            &["crm.contacts.read", "crm.notes.read"],
            600,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(task.state(), pb::TaskState::Active);
    assert_eq!(task.orchestrator, format!("spiffe://{TD}/orchestrator"));

    // A verifier subscribes before anything is revoked.
    let mut feed = verifier
        .watch_revocations(pb::WatchRevocationsRequest { after: String::new() })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), feed.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(first.item, Some(pb::watch_revocations_response::Item::Heartbeat(_))),
        "{first:?}"
    );

    let issued = issue(
        &mut agent,
        token_request("lifecycle-1", &["crm.contacts.read"], Some(120)),
    )
    .await;
    assert_eq!(issued.token_type, "Bearer");
    assert_eq!(issued.expires_in, 120);
    assert_eq!(issued.class(), pb::ScopeClass::Read);

    let claims = verify_with_jsonwebtoken(&broker, &issued.access_token, Algorithm::ES256).await;
    let agent_id = format!("spiffe://{TD}/agent/researcher");
    assert_eq!(claims["iss"], "https://tessera.local");
    assert_eq!(claims["sub"], agent_id.as_str());
    assert_eq!(claims["client_id"], agent_id.as_str());
    assert_eq!(claims["aud"], CRM);
    assert_eq!(claims["scope"], "crm.contacts.read");
    assert_eq!(claims["task_id"], "lifecycle-1");
    assert_eq!(claims["jti"], issued.grant_id.as_str());
    let (iat, nbf, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["nbf"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert_eq!(exp - iat, 120);
    assert_eq!(nbf, iat);
    assert_eq!(issued.expires_at.as_ref().unwrap().seconds, exp);

    let live = verifier
        .introspect(pb::IntrospectRequest {
            token: issued.access_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(live.active);
    assert_eq!(live.jti, issued.grant_id);
    assert_eq!(live.task_id, "lifecycle-1");

    let shown = orchestrator
        .get_task(pb::GetTaskRequest {
            task_id: "lifecycle-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shown.live_grants, 1);

    let done = orchestrator
        .complete_task(pb::CompleteTaskRequest {
            task_id: "lifecycle-1".into(),
            reason: "report written".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.grants_revoked, 1);
    assert_eq!(done.task.unwrap().state(), pb::TaskState::Completed);

    let dead = verifier
        .introspect(pb::IntrospectRequest {
            token: issued.access_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        dead,
        pb::IntrospectResponse {
            active: false,
            ..Default::default()
        }
    );

    // The subscriber receives the task's revocation (heartbeats may come first).
    let event = next_event(&mut feed).await;
    assert_eq!(
        event.target,
        Some(pb::revocation_event::Target::TaskId("lifecycle-1".into()))
    );
    assert_eq!(event.reason, "report written");
    assert!(event.not_after.unwrap().seconds >= exp);

    // Completing again is idempotent; asking for a token now is refused.
    let again = orchestrator
        .complete_task(pb::CompleteTaskRequest {
            task_id: "lifecycle-1".into(),
            reason: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.grants_revoked, 0);
    let refused = code(
        agent
            .request_token(token_request("lifecycle-1", &["crm.contacts.read"], None))
            .await,
    );
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");

    // Nothing secret reached the log.
    let logs = broker.logs();
    assert!(logs.contains("token_issued"), "{logs}");
    assert!(!logs.contains(&issued.access_token));
    assert!(!logs.contains("eyJ"), "a JWS-looking string reached the log");
    assert!(!logs.contains("PRIVATE KEY"));
}

#[tokio::test]
async fn ed25519_tokens_verify_with_an_independent_library() {
    let broker = Broker::start_with(&[("TESSERA_TOKENS__ALGORITHM", "EdDSA")]);
    let mut orchestrator = broker.orchestrator().await;
    orchestrator
        .start_task(start_request("ed-1", &["researcher"], &["crm.contacts.read"], 600))
        .await
        .unwrap();
    let issued = broker
        .issue_as("researcher", token_request("ed-1", &["crm.contacts.read"], None))
        .await;
    let claims = verify_with_jsonwebtoken(&broker, &issued.access_token, Algorithm::EdDSA).await;
    assert_eq!(claims["jti"], issued.grant_id.as_str());
    // Default TTL (5m) bounded by the agent's 10m maximum.
    assert_eq!(issued.expires_in, 300);
    let jwks = broker.jwks().await;
    assert_eq!(jwks.keys.len(), 1);
    assert_eq!(jwks.keys[0].kty, "OKP");
    assert_eq!(jwks.keys[0].alg, "EdDSA");
}

#[tokio::test]
async fn operator_revocation_kills_one_grant_and_verifiers_resume_without_loss() {
    let broker = Broker::start();
    let mut orchestrator = broker.orchestrator().await;
    let mut verifier = broker.verifier("api-gateway").await;
    orchestrator
        .start_task(start_request("rv-1", &["researcher"], &["crm.contacts.read"], 600))
        .await
        .unwrap();
    let mut agent = broker.agent("researcher").await;

    // Learn the feed's current position, then disconnect.
    let mut feed = verifier
        .watch_revocations(pb::WatchRevocationsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let position = first_position(&mut feed).await;
    drop(feed);

    let a = issue(&mut agent, token_request("rv-1", &["crm.contacts.read"], None)).await;
    let b = issue(&mut agent, token_request("rv-1", &["crm.contacts.read"], None)).await;
    let c = issue(&mut agent, token_request("rv-1", &["crm.contacts.read"], None)).await;

    // Only an operator may revoke.
    let denied = code(
        broker
            .admin("researcher")
            .await
            .revoke_grant(pb::RevokeGrantRequest {
                grant_id: a.grant_id.clone(),
                reason: String::new(),
            })
            .await,
    );
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");

    let mut admin = broker.admin("alice").await;
    for g in [&a, &b] {
        let r = admin
            .revoke_grant(pb::RevokeGrantRequest {
                grant_id: g.grant_id.clone(),
                reason: "suspicious".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.revoked);
    }
    let twice = admin
        .revoke_grant(pb::RevokeGrantRequest {
            grant_id: a.grant_id.clone(),
            reason: String::new(),
        })
        .await
        .unwrap();
    assert!(!twice.into_inner().revoked);

    let active = |t: &pb::IssuedToken| {
        let mut v = verifier.clone();
        let token = t.access_token.clone();
        async move {
            v.introspect(pb::IntrospectRequest { token })
                .await
                .unwrap()
                .into_inner()
                .active
        }
    };
    assert!(!active(&a).await);
    assert!(!active(&b).await);
    assert!(active(&c).await);

    // A verifier that reconnects from its last position misses nothing.
    let resumed_from = position.clone();
    let mut resumed = verifier
        .watch_revocations(pb::WatchRevocationsRequest { after: position })
        .await
        .unwrap()
        .into_inner();
    let mut revoked = Vec::new();
    while revoked.len() < 2 {
        match next_event(&mut resumed).await.target {
            Some(pb::revocation_event::Target::GrantId(id)) => revoked.push(id),
            other => panic!("unexpected target {other:?}"),
        }
    }
    assert_eq!(revoked, vec![a.grant_id.clone(), b.grant_id.clone()]);

    // A position from another life of the store (another epoch) is refused, so
    // the verifier knows it may have missed events; garbage is malformed.
    let foreign = format!("another-life{}", resumed_from);
    let lost = code(
        verifier
            .watch_revocations(pb::WatchRevocationsRequest { after: foreign })
            .await,
    );
    assert_eq!(lost.code(), tonic::Code::OutOfRange, "{lost:?}");
    let garbage = code(
        verifier
            .watch_revocations(pb::WatchRevocationsRequest { after: "999999".into() })
            .await,
    );
    assert_eq!(garbage.code(), tonic::Code::InvalidArgument, "{garbage:?}");
}

#[tokio::test]
async fn an_agent_releases_its_own_token_only() {
    let broker = Broker::start();
    broker
        .start_task(start_request(
            "rel-1",
            &["researcher", "writer"],
            &["crm.contacts.read"],
            600,
        ))
        .await;
    let mut researcher = broker.agent("researcher").await;
    let t = issue(&mut researcher, token_request("rel-1", &["crm.contacts.read"], None)).await;
    let mut writer = broker.agent("writer").await;
    let release = |id: &str| pb::ReleaseTokenRequest {
        target: Some(pb::release_token_request::Target::GrantId(id.into())),
    };
    let stolen = code(writer.release_token(release(&t.grant_id)).await);
    assert_eq!(stolen.code(), tonic::Code::PermissionDenied);
    assert!(
        researcher
            .release_token(release(&t.grant_id))
            .await
            .unwrap()
            .into_inner()
            .revoked
    );
    let active = broker
        .verifier("api-gateway")
        .await
        .introspect(pb::IntrospectRequest { token: t.access_token })
        .await
        .unwrap();
    assert!(!active.into_inner().active);

    // By the token itself: only its holder, only a token of this broker.
    let by_token = |token: &str| pb::ReleaseTokenRequest {
        target: Some(pb::release_token_request::Target::Token(token.into())),
    };
    let t2 = issue(&mut researcher, token_request("rel-1", &["crm.contacts.read"], None)).await;
    let stolen = code(writer.release_token(by_token(&t2.access_token)).await);
    assert_eq!(stolen.code(), tonic::Code::PermissionDenied);
    let forged = code(researcher.release_token(by_token("eyJhbGciOiJub25lIn0.e30.")).await);
    assert_eq!(forged.code(), tonic::Code::InvalidArgument, "{forged:?}");
    assert!(forged.message().starts_with("token: "), "{forged:?}");
    let released = researcher
        .release_token(by_token(&t2.access_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(released.grant_id, t2.grant_id);
    assert!(released.revoked);
    let again = researcher
        .release_token(by_token(&t2.access_token))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.revoked, "releasing twice succeeds and revokes nothing");
}

#[tokio::test]
async fn revoking_a_task_ends_its_child_tasks() {
    let broker = Broker::start();
    let mut orchestrator = broker.orchestrator().await;
    orchestrator
        .start_task(start_request("parent", &["researcher"], &["crm.contacts.read"], 600))
        .await
        .unwrap();
    let mut child = start_request("child", &["researcher"], &["crm.contacts.read"], 300);
    child.parent_task_id = "parent".into();
    orchestrator.start_task(child).await.unwrap();
    let mut agent = broker.agent("researcher").await;
    let t = issue(&mut agent, token_request("child", &["crm.contacts.read"], None)).await;
    let in_parent = issue(&mut agent, token_request("parent", &["crm.contacts.read"], None)).await;
    // A bystander task, and a bystander grant of the same agent: both must live.
    broker
        .start_task(start_request("bystander", &["researcher"], &["crm.contacts.read"], 600))
        .await;
    let bystander = broker
        .issue_as("researcher", token_request("bystander", &["crm.contacts.read"], None))
        .await;
    let mut not_operator = broker.admin("orchestrator").await;
    let denied = code(
        not_operator
            .revoke_task(pb::RevokeTaskRequest {
                task_id: "parent".into(),
                reason: String::new(),
            })
            .await,
    );
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    let r = broker
        .admin("alice")
        .await
        .revoke_task(pb::RevokeTaskRequest {
            task_id: "parent".into(),
            reason: "incident 42".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.grants_revoked, 2);
    assert_eq!(r.child_tasks_ended, vec!["child".to_owned()]);
    assert_eq!(r.task.unwrap().state(), pb::TaskState::Revoked);
    let v = broker.verifier("api-gateway").await;
    let active = |token: &pb::IssuedToken| {
        let mut v = v.clone();
        let token = token.access_token.clone();
        async move {
            v.introspect(pb::IntrospectRequest { token })
                .await
                .unwrap()
                .into_inner()
                .active
        }
    };
    assert!(!active(&t).await, "the child task's grant died");
    assert!(!active(&in_parent).await, "the task's own grant died");
    assert!(active(&bystander).await, "a grant of another task lives");
}

#[tokio::test]
async fn forged_and_tampered_tokens_are_inactive() {
    let broker = Broker::start();
    broker
        .start_task(start_request("forge", &["researcher"], &["crm.contacts.read"], 600))
        .await;
    let t = broker
        .issue_as("researcher", token_request("forge", &["crm.contacts.read"], None))
        .await;
    let mut verifier = broker.verifier("api-gateway").await;
    let parts: Vec<&str> = t.access_token.split('.').collect();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    claims["scope"] = "crm.contacts.write".into();
    let tampered = format!("{}.{}.{}", parts[0], b64.encode(claims.to_string()), parts[2]);
    let none = format!("{}.{}.", b64.encode(r#"{"alg":"none","typ":"at+jwt"}"#), parts[1]);
    for token in [
        tampered,
        none,
        "garbage".to_owned(),
        format!("{}.{}", parts[0], parts[1]),
    ] {
        let r = verifier
            .introspect(pb::IntrospectRequest { token })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r,
            pb::IntrospectResponse {
                active: false,
                ..Default::default()
            }
        );
    }
    // Agents may not introspect: it is a verifier's call.
    let mut as_agent = tessera_client::VerifierClient::new(broker.channel("researcher").await);
    let denied = code(
        as_agent
            .introspect(pb::IntrospectRequest {
                token: t.access_token.clone(),
            })
            .await,
    );
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
}

#[tokio::test]
async fn the_demo_script_runs_against_a_live_broker() {
    let broker = Broker::start();
    let out = std::process::Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/demo.sh"))
        .env("BIN", bin_dir())
        .env("DEV_DIR", broker.dir.path())
        .env("TESSERA_ENDPOINT", broker.endpoint())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("signature: valid"), "{stdout}");
    assert!(stderr.contains("PERMISSION_DENIED"), "{stderr}");
    let active_true = stdout.find("active: true").expect("introspection said active");
    let active_false = stdout.find("active: false").expect("introspection said inactive");
    assert!(active_true < active_false);
}
