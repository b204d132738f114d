//! DelegateToken through the real `tesserad`: chains that verify with an
//! independent JOSE library and carry the RFC 8693 `act` chain, every bad
//! delegation refused with its reason, and revocation that follows the
//! chain (revoking a parent, completing the task).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header, jwk::JwkSet};
use serde_json::Value;
use tessera_client::PopKey;
use tessera_client::agent::AgentClient as TypedAgent;
use tessera_e2e::*;
use tonic::Code;

const READS: [&str; 2] = ["crm.contacts.read", "crm.notes.read"];

fn agent_id(name: &str) -> String {
    format!("spiffe://{TD}/agent/{name}")
}

/// Verifies `token` with `jsonwebtoken` against the JWKS and returns its claims.
async fn verify_jose(broker: &Broker, token: &str) -> Value {
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
    let jwks = broker.jwks().await;
    let set: JwkSet = serde_json::from_str(&jwks.jwks_json).unwrap();
    let header = decode_header(token).unwrap();
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    let jwk = set.find(header.kid.as_deref().unwrap()).unwrap();
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&[CRM]);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    decode::<Value>(token, &DecodingKey::from_jwk(jwk).unwrap(), &validation)
        .unwrap()
        .claims
}

fn delegate_request(parent: &pb::IssuedToken, to: &str, scopes: &[&str], ttl: Option<u32>) -> pb::DelegateTokenRequest {
    pb::DelegateTokenRequest {
        parent_token: parent.access_token.clone(),
        delegate: agent_id(to),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        ttl_seconds: ttl,
        ..Default::default()
    }
}

async fn delegate(broker: &Broker, holder: &str, req: pb::DelegateTokenRequest) -> pb::IssuedToken {
    broker
        .agent(holder)
        .await
        .delegate_token(req)
        .await
        .unwrap()
        .into_inner()
}

/// root (researcher) → writer → researcher → writer, narrowing each hop.
async fn chain(broker: &Broker, task: &str) -> Vec<pb::IssuedToken> {
    let root = broker
        .issue_as("researcher", token_request(task, &READS, Some(300)))
        .await;
    let h1 = delegate(
        broker,
        "researcher",
        delegate_request(&root, "writer", &READS, Some(250)),
    )
    .await;
    let h2 = delegate(
        broker,
        "writer",
        delegate_request(&h1, "researcher", &["crm.contacts.read"], Some(200)),
    )
    .await;
    let h3 = delegate(broker, "researcher", delegate_request(&h2, "writer", &[], None)).await;
    vec![root, h1, h2, h3]
}

async fn live(broker: &Broker, tokens: &[&pb::IssuedToken]) -> Vec<bool> {
    let mut v = broker.verifier("api-gateway").await;
    let mut out = Vec::new();
    for t in tokens {
        out.push(introspect(&mut v, &t.access_token).await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_hop_chain_verifies_with_jose_and_carries_act() {
    let broker = Broker::start();
    broker
        .start_task(start_request("chain", &["researcher", "writer"], &READS, 600))
        .await;
    let tokens = chain(&broker, "chain").await;
    let [root, h1, h2, h3] = tokens.as_slice() else {
        unreachable!()
    };
    let root_claims = verify_jose(&broker, &root.access_token).await;
    assert!(root_claims.get("act").is_none() && root_claims.get("tessera_chain").is_none());

    let c3 = verify_jose(&broker, &h3.access_token).await;
    assert_eq!(c3["sub"], agent_id("researcher"), "sub stays the root holder");
    assert_eq!(c3["client_id"], agent_id("writer"));
    assert_eq!(
        c3["act"],
        serde_json::json!({
            "sub": agent_id("writer"),
            "act": {"sub": agent_id("researcher"), "act": {"sub": agent_id("writer")}}
        })
    );
    let chain = c3["tessera_chain"].as_array().unwrap();
    let jtis: Vec<&str> = chain.iter().map(|h| h["jti"].as_str().unwrap()).collect();
    assert_eq!(jtis, [&root.grant_id, &h1.grant_id, &h2.grant_id]);
    assert_eq!(chain[0]["scope"], "crm.contacts.read crm.notes.read");
    assert_eq!(chain[2]["scope"], "crm.contacts.read");
    assert_eq!(c3["scope"], "crm.contacts.read");
    // Expiry never extends: each hop ends no later than its parent.
    let exps: Vec<i64> = [root, h1, h2, h3]
        .iter()
        .map(|t| t.expires_at.as_ref().unwrap().seconds)
        .collect();
    assert!(exps.windows(2).all(|w| w[1] <= w[0]), "{exps:?}");
    // The broker's own chain check agrees, and the grants record their parents.
    let claims: tessera_core::token::AccessClaims = serde_json::from_value(c3.clone()).unwrap();
    tessera_core::delegation::check_chain(&claims).unwrap();
    assert_eq!(live(&broker, &[root, h1, h2, h3]).await, [true; 4]);
    let grants = broker
        .admin("alice")
        .await
        .list_grants(pb::ListGrantsRequest {
            task_id: "chain".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .grants;
    let parent_of = |id: &str| {
        grants
            .iter()
            .find(|g| g.grant_id == id)
            .unwrap()
            .parent_grant_id
            .clone()
    };
    assert_eq!(parent_of(&h3.grant_id), h2.grant_id);
    assert_eq!(parent_of(&h1.grant_id), root.grant_id);
    assert_eq!(parent_of(&root.grant_id), "");

    // One hop too many (max_depth 3 by default).
    let status = code(
        broker
            .agent("writer")
            .await
            .delegate_token(delegate_request(h3, "researcher", &[], None))
            .await,
    );
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("delegation depth 4 is above the limit of 3"),
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_delegation_is_refused_with_its_reason() {
    let broker = Broker::start_with(&[("TESSERA_ANOMALY__ENABLED", "false")]);
    broker
        .start_task(start_request(
            "bad",
            &["researcher", "writer"],
            &["crm.contacts.read", "crm.notes.read", "crm.contacts.write"],
            600,
        ))
        .await;
    broker
        .start_task(start_request("solo", &["researcher"], &READS, 600))
        .await;
    let root = broker
        .issue_as("researcher", token_request("bad", &["crm.contacts.read"], Some(120)))
        .await;
    let solo = broker
        .issue_as("researcher", token_request("solo", &["crm.contacts.read"], Some(120)))
        .await;
    let mut researcher = broker.agent("researcher").await;

    #[track_caller]
    fn expect(status: tonic::Status, want: Code, reason: &str) {
        assert_eq!(status.code(), want, "{status:?}");
        assert!(
            status.message().contains(reason),
            "`{}` does not say `{reason}`",
            status.message()
        );
        assert!(!status.message().contains("eyJ"), "a token in a status message");
    }

    let wider = delegate_request(&root, "writer", &["crm.contacts.read", "crm.notes.read"], None);
    expect(
        code(researcher.delegate_token(wider).await),
        Code::PermissionDenied,
        "scopes: `crm.notes.read` not in the parent token",
    );
    let higher = delegate_request(&root, "writer", &["crm.contacts.write"], None);
    expect(
        code(researcher.delegate_token(higher).await),
        Code::PermissionDenied,
        "scopes: class write is higher than the parent token's class read",
    );
    let other_audience = pb::DelegateTokenRequest {
        audience: "https://api.example.com/payments".into(),
        ..delegate_request(&root, "writer", &[], None)
    };
    expect(
        code(researcher.delegate_token(other_audience).await),
        Code::PermissionDenied,
        "audience: a child keeps its parent's audience",
    );
    let later = delegate_request(&root, "writer", &[], Some(600));
    expect(
        code(researcher.delegate_token(later).await),
        Code::PermissionDenied,
        "after its parent",
    );
    let other_task = pb::DelegateTokenRequest {
        task_id: "solo".into(),
        ..delegate_request(&root, "writer", &[], None)
    };
    expect(
        code(researcher.delegate_token(other_task).await),
        Code::PermissionDenied,
        "task_id: a child stays in its parent's task `bad`, not `solo`",
    );
    // The delegate must be assigned to the parent's task.
    expect(
        code(
            researcher
                .delegate_token(delegate_request(&solo, "writer", &[], None))
                .await,
        ),
        Code::PermissionDenied,
        "is not assigned to task `solo`",
    );
    // Only the holder may delegate: the writer presents the researcher's token.
    expect(
        code(
            broker
                .agent("writer")
                .await
                .delegate_token(delegate_request(&root, "researcher", &[], None))
                .await,
        ),
        Code::PermissionDenied,
        &format!(
            "identity `{}` is not the holder of the parent token",
            agent_id("writer")
        ),
    );
    expect(
        code(
            researcher
                .delegate_token(delegate_request(&root, "researcher", &[], None))
                .await,
        ),
        Code::InvalidArgument,
        "delegate: a token cannot be delegated to its own holder",
    );
    // A forged parent (signature cut) and a released one: not live.
    let mut forged = root.clone();
    forged.access_token = format!("{}AAAA", root.access_token.rsplit_once('.').unwrap().0);
    forged.access_token.push_str(".AAAA");
    expect(
        code(
            researcher
                .delegate_token(delegate_request(&forged, "writer", &[], None))
                .await,
        ),
        Code::PermissionDenied,
        "parent_token: not a live token issued by this broker",
    );
    researcher
        .release_token(pb::ReleaseTokenRequest {
            target: Some(pb::release_token_request::Target::GrantId(root.grant_id.clone())),
        })
        .await
        .unwrap();
    expect(
        code(
            researcher
                .delegate_token(delegate_request(&root, "writer", &[], None))
                .await,
        ),
        Code::PermissionDenied,
        "parent_token: not a live token issued by this broker",
    );
    expect(
        code(researcher.delegate_token(pb::DelegateTokenRequest::default()).await),
        Code::InvalidArgument,
        "parent_token: is empty",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_parent_revokes_every_descendant_and_spares_other_chains() {
    let broker = Broker::start();
    broker
        .start_task(start_request("cascade", &["researcher", "writer"], &READS, 600))
        .await;
    let tokens = chain(&broker, "cascade").await;
    let [root, h1, h2, h3] = tokens.as_slice() else {
        unreachable!()
    };
    // Another chain of the same task: another root and its child.
    let other_root = broker
        .issue_as("researcher", token_request("cascade", &READS, Some(300)))
        .await;
    let other_child = delegate(
        &broker,
        "researcher",
        delegate_request(&other_root, "writer", &["crm.notes.read"], None),
    )
    .await;
    let mut verifier = broker.verifier("api-gateway").await;
    let mut feed = verifier
        .watch_revocations(pb::WatchRevocationsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let _ = first_position(&mut feed).await;

    // Revoking h1 (an operator) revokes h1, h2, h3 in one call.
    let outcome = broker
        .admin("alice")
        .await
        .revoke_grant(pb::RevokeGrantRequest {
            grant_id: h1.grant_id.clone(),
            reason: "compromised".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(outcome.revoked);
    assert_eq!(
        live(&broker, &[root, h1, h2, h3, &other_root, &other_child]).await,
        [true, false, false, false, true, true]
    );
    // One revocation event per hop.
    let mut revoked = std::collections::BTreeSet::new();
    for _ in 0..3 {
        match next_event(&mut feed).await.target {
            Some(pb::revocation_event::Target::GrantId(id)) => {
                revoked.insert(id);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        revoked,
        [&h1.grant_id, &h2.grant_id, &h3.grant_id]
            .into_iter()
            .cloned()
            .collect()
    );
    // A revoked hop delegates nothing more.
    let status = code(
        broker
            .agent("researcher")
            .await
            .delegate_token(delegate_request(h2, "writer", &[], None))
            .await,
    );
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // The root holder releasing the other root takes its child with it.
    let released = broker
        .agent("researcher")
        .await
        .release_token(pb::ReleaseTokenRequest {
            target: Some(pb::release_token_request::Target::GrantId(other_root.grant_id.clone())),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(released.revoked);
    assert_eq!(
        live(&broker, &[root, &other_root, &other_child]).await,
        [true, false, false]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completing_the_task_revokes_every_hop() {
    let broker = Broker::start();
    broker
        .start_task(start_request("done", &["researcher", "writer"], &READS, 600))
        .await;
    broker
        .start_task(start_request("elsewhere", &["researcher", "writer"], &READS, 600))
        .await;
    let tokens = chain(&broker, "done").await;
    let bystander = chain(&broker, "elsewhere").await;
    let ended = broker
        .orchestrator()
        .await
        .complete_task(pb::CompleteTaskRequest {
            task_id: "done".into(),
            reason: "finished".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ended.grants_revoked, 4);
    let all: Vec<&pb::IssuedToken> = tokens.iter().collect();
    assert_eq!(live(&broker, &all).await, [false; 4]);
    let others: Vec<&pb::IssuedToken> = bystander.iter().collect();
    assert_eq!(live(&broker, &others).await, [true; 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_child_is_minted_only_in_the_delegates_own_call() {
    let broker = Broker::start();
    broker
        .start_task(start_request(
            "bound",
            &["researcher", "writer"],
            &["crm.contacts.write"],
            600,
        ))
        .await;
    // The root: write, so bound (here to the researcher's certificate).
    let root = broker
        .issue_as(
            "researcher",
            pb::RequestTokenRequest {
                mtls_binding: true,
                ..token_request("bound", &["crm.contacts.write"], Some(300))
            },
        )
        .await;
    // The holder gets no write child for itself: no bearer one...
    let status = code(
        broker
            .agent("researcher")
            .await
            .delegate_token(delegate_request(&root, "writer", &[], None))
            .await,
    );
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("OfferDelegation"), "{status:?}");
    // ...and no bound one made from a proof the delegate handed over.
    let writer_key = PopKey::generate().unwrap();
    let handed_over = writer_key
        .proof("POST", "/tessera.v1.AgentService/DelegateToken", None)
        .unwrap();
    let status = code(
        broker
            .agent("researcher")
            .await
            .delegate_token(pb::DelegateTokenRequest {
                delegate_pop_proof: handed_over,
                ..delegate_request(&root, "writer", &[], None)
            })
            .await,
    );
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with("delegate_pop_proof: "), "{status:?}");

    // It gets an offer, which it cannot redeem itself.
    let mut holder = TypedAgent::new(broker.channel("researcher").await);
    let offer = holder
        .offer(
            &root.clone().into(),
            tessera_client::agent::Delegation::to(agent_id("writer")),
        )
        .await
        .unwrap();
    assert_eq!(offer.delegate(), agent_id("writer"));
    match holder
        .redeem(&offer, Some(&PopKey::generate().unwrap()))
        .await
        .unwrap_err()
    {
        tessera_client::ClientError::Refused(status) => {
            assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        }
        other => panic!("{other:?}"),
    }
    // The writer redeems it in its own call, with its own key.
    let mut writer = TypedAgent::new(broker.channel("writer").await);
    let child = writer.redeem(&offer, Some(&writer_key)).await.unwrap();
    assert_eq!(child.token_type(), "DPoP");
    let claims = verify_jose(&broker, child.access_token()).await;
    assert_eq!(claims["cnf"], serde_json::json!({"jkt": writer_key.thumbprint()}));
    assert_eq!(claims["client_id"], agent_id("writer"));
    // An offer is good once.
    match writer.redeem(&offer, Some(&writer_key)).await.unwrap_err() {
        tessera_client::ClientError::Refused(status) => {
            assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
            assert!(status.message().starts_with("offer: "), "{status:?}");
        }
        other => panic!("{other:?}"),
    }
    // Without a proof, a write child would be a bearer token.
    let second = holder
        .offer(
            &root.clone().into(),
            tessera_client::agent::Delegation::to(agent_id("writer")),
        )
        .await
        .unwrap();
    match writer.redeem(&second, None).await.unwrap_err() {
        tessera_client::ClientError::Refused(status) => {
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
            assert!(
                status
                    .message()
                    .contains("pop_proof: write tokens are never issued as bearer tokens"),
                "{status:?}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_delegates_a_token() {
    let broker = Broker::start();
    broker
        .start_task(start_request("cli", &["researcher", "writer"], &READS, 600))
        .await;
    let root = broker
        .issue_as("researcher", token_request("cli", &READS, Some(300)))
        .await;
    let out = broker.tessera_stdin(
        &[
            "--as",
            "researcher",
            "token",
            "delegate",
            "-",
            "--to",
            &agent_id("writer"),
            "--scope",
            "crm.notes.read",
            "--ttl",
            "1m",
        ],
        &root.access_token,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let child = String::from_utf8(out.stdout).unwrap();
    let claims = verify_jose(&broker, child.trim()).await;
    assert_eq!(claims["scope"], "crm.notes.read");
    assert_eq!(claims["act"], serde_json::json!({"sub": agent_id("writer")}));
    // --offer prints an offer; the writer redeems it with its own key.
    let out = broker.tessera_stdin(
        &[
            "--as",
            "researcher",
            "token",
            "delegate",
            "-",
            "--to",
            &agent_id("writer"),
            "--offer",
        ],
        &root.access_token,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let offer = String::from_utf8(out.stdout).unwrap();
    let keys = TempDir::new("cli-redeem");
    let key_file = keys.path().join("writer-pop.pem");
    let key_arg = key_file.to_str().unwrap();
    let out = broker.tessera_stdin(
        &["--as", "writer", "token", "redeem", "-", "--pop-key", key_arg],
        offer.trim(),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let child = String::from_utf8(out.stdout).unwrap();
    let claims = verify_jose(&broker, child.trim()).await;
    let key = PopKey::from_pkcs8_pem(&std::fs::read_to_string(&key_file).unwrap()).unwrap();
    assert_eq!(claims["cnf"], serde_json::json!({"jkt": key.thumbprint()}));
    assert_eq!(claims["client_id"], agent_id("writer"));
    // A wider child is refused with the broker's reason and a failing exit code.
    let out = broker.tessera_stdin(
        &[
            "--as",
            "researcher",
            "token",
            "delegate",
            "-",
            "--to",
            &agent_id("writer"),
            "--scope",
            "crm.contacts.write",
        ],
        &root.access_token,
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("higher than the parent token's class"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
