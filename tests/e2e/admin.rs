//! Operator RPCs end to end: ListGrants (filters, pages) and RevokeIdentity
//! (exactly that identity's grants die, in every task; one event per grant).
//! Runs on the memory store, and on Redis with `TESSERA_TEST_STORE=redis`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

use std::collections::BTreeSet;
use std::time::Duration;

use tessera_e2e::*;
use tokio_stream::StreamExt as _;
use tonic::Code;

fn agent_id(name: &str) -> String {
    format!("spiffe://{TD}/agent/{name}")
}

fn ids<'a>(grants: impl IntoIterator<Item = &'a pb::IssuedToken>) -> BTreeSet<String> {
    grants.into_iter().map(|t| t.grant_id.clone()).collect()
}

/// Every grant id a filter lists, following pages of `page_size`; checks
/// that no page is larger and no grant is visited twice.
async fn list(admin: &mut tessera_client::AdminClient, mut req: pb::ListGrantsRequest, page_size: u32) -> Vec<String> {
    req.page_size = page_size;
    let mut seen = Vec::new();
    for _ in 0..100 {
        let page = admin.list_grants(req.clone()).await.unwrap().into_inner();
        assert!(page.grants.len() <= page_size as usize, "{page:?}");
        assert!(page.grants.iter().all(|g| g.state() == pb::GrantState::Active));
        seen.extend(page.grants.into_iter().map(|g| g.grant_id));
        if page.next_page_token.is_empty() {
            let unique: BTreeSet<_> = seen.iter().collect();
            assert_eq!(unique.len(), seen.len(), "a grant was listed twice: {seen:?}");
            return seen;
        }
        req.page_token = page.next_page_token;
    }
    panic!("pagination did not end");
}

async fn listed(admin: &mut tessera_client::AdminClient, req: pb::ListGrantsRequest) -> BTreeSet<String> {
    list(admin, req, 1000).await.into_iter().collect()
}

#[tokio::test]
async fn operators_list_grants_and_revoke_an_identity() {
    let broker = Broker::start();
    let mut orchestrator = broker.orchestrator().await;
    let mut researcher = broker.agent("researcher").await;
    let mut writer = broker.agent("writer").await;
    let mut admin = broker.admin("alice").await;
    let mut verifier = broker.verifier("api-gateway").await;
    let scopes = ["crm.contacts.read", "crm.notes.read", "crm.contacts.list"];
    for task in ["admin-a", "admin-b"] {
        orchestrator
            .start_task(start_request(task, &["researcher", "writer"], &scopes, 600))
            .await
            .unwrap();
    }
    let r_a1 = issue(
        &mut researcher,
        token_request("admin-a", &["crm.contacts.read"], Some(300)),
    )
    .await;
    let r_a2 = issue(
        &mut researcher,
        token_request("admin-a", &["crm.contacts.list"], Some(60)),
    )
    .await;
    let r_b1 = issue(
        &mut researcher,
        token_request("admin-b", &["crm.contacts.read"], Some(300)),
    )
    .await;
    let w_a1 = issue(&mut writer, token_request("admin-a", &["crm.notes.read"], Some(300))).await;
    let w_b1 = issue(&mut writer, token_request("admin-b", &["crm.contacts.read"], Some(300))).await;
    let w_b2 = issue(&mut writer, token_request("admin-b", &["crm.notes.read"], Some(300))).await;
    let researchers = [&r_a1, &r_a2, &r_b1];
    let writers = [&w_a1, &w_b1, &w_b2];
    let everything = ids(researchers.into_iter().chain(writers));

    // Filters return exactly the expected grants.
    let all = pb::ListGrantsRequest::default();
    assert_eq!(listed(&mut admin, all.clone()).await, everything);
    let by_task = pb::ListGrantsRequest {
        task_id: "admin-a".into(),
        ..Default::default()
    };
    assert_eq!(listed(&mut admin, by_task).await, ids([&r_a1, &r_a2, &w_a1]));
    let by_subject = pb::ListGrantsRequest {
        subject: agent_id("researcher"),
        ..Default::default()
    };
    assert_eq!(listed(&mut admin, by_subject.clone()).await, ids(researchers));
    let subject_and_task = pb::ListGrantsRequest {
        subject: agent_id("researcher"),
        task_id: "admin-b".into(),
        ..Default::default()
    };
    assert_eq!(listed(&mut admin, subject_and_task).await, ids([&r_b1]));
    let by_class = pb::ListGrantsRequest {
        class: pb::ScopeClass::Discover as i32,
        ..Default::default()
    };
    assert_eq!(listed(&mut admin, by_class).await, ids([&r_a2]));
    let by_audience = pb::ListGrantsRequest {
        audience: CRM.into(),
        ..Default::default()
    };
    assert_eq!(listed(&mut admin, by_audience).await, everything);
    let soon = pb::ListGrantsRequest {
        expiring_before: Some(prost_types::Timestamp {
            seconds: r_a2.expires_at.as_ref().unwrap().seconds + 1,
            nanos: 0,
        }),
        ..Default::default()
    };
    assert_eq!(listed(&mut admin, soon).await, ids([&r_a2]));
    let by_owner = |owner: &str| pb::ListGrantsRequest {
        owner: owner.into(),
        ..Default::default()
    };
    assert_eq!(listed(&mut admin, by_owner("team-research")).await, everything);
    assert!(listed(&mut admin, by_owner("team-platform")).await.is_empty());

    // Pages of 2 visit each grant once, in the same order as one big page.
    let paged = list(&mut admin, all.clone(), 2).await;
    assert_eq!(paged.len(), 6);
    assert_eq!(paged, list(&mut admin, all.clone(), 1000).await);
    assert_eq!(paged.iter().cloned().collect::<BTreeSet<_>>(), everything);

    // Malformed filters name the field.
    for (req, field) in [
        (
            pb::ListGrantsRequest {
                subject: "not-a-spiffe-id".into(),
                ..Default::default()
            },
            "subject",
        ),
        (
            pb::ListGrantsRequest {
                high_impact_only: true,
                ..Default::default()
            },
            "high_impact_only",
        ),
        (
            pb::ListGrantsRequest {
                page_token: "not a token!".into(),
                ..Default::default()
            },
            "page_token",
        ),
        (
            pb::ListGrantsRequest {
                class: 42,
                ..Default::default()
            },
            "class",
        ),
    ] {
        let status = code(admin.list_grants(req).await);
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().starts_with(field), "{status:?}");
    }

    // Non-operators are refused.
    let mut not_admin = broker.admin("researcher").await;
    assert_eq!(
        code(not_admin.list_grants(all.clone()).await).code(),
        Code::PermissionDenied
    );
    assert_eq!(
        code(
            not_admin
                .revoke_identity(pb::RevokeIdentityRequest {
                    identity: agent_id("writer"),
                    ..Default::default()
                })
                .await
        )
        .code(),
        Code::PermissionDenied
    );

    // The CLI lists the same grants as JSON.
    let out = broker.tessera(&["--as", "alice", "--output", "json", "grants", "ls", "--task", "admin-a"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let from_cli: BTreeSet<String> = json["grants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["grant_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(from_cli, ids([&r_a1, &r_a2, &w_a1]));
    let out = broker.tessera(&["--as", "alice", "grants", "ls", "--all", "--limit", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("GRANT"), "{table}");
    assert!(everything.iter().all(|id| table.contains(id.as_str())), "{table}");

    // Bad RevokeIdentity requests change nothing.
    for (identity, disable, want) in [
        (String::new(), false, Code::InvalidArgument),
        ("not a spiffe id".to_owned(), false, Code::InvalidArgument),
        (agent_id("nobody"), false, Code::NotFound),
        (agent_id("researcher"), true, Code::FailedPrecondition),
    ] {
        let status = code(
            admin
                .revoke_identity(pb::RevokeIdentityRequest {
                    identity,
                    reason: String::new(),
                    disable,
                })
                .await,
        );
        assert_eq!(status.code(), want, "{status:?}");
    }
    assert_eq!(listed(&mut admin, all.clone()).await, everything);

    // A verifier subscribed before the revocation sees one event per grant.
    let mut feed = verifier
        .watch_revocations(pb::WatchRevocationsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), feed.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(
        first.item,
        Some(pb::watch_revocations_response::Item::Heartbeat(_))
    ));

    let done = admin
        .revoke_identity(pb::RevokeIdentityRequest {
            identity: agent_id("researcher"),
            reason: "offboarded".into(),
            disable: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.grants_revoked, 3);
    assert!(!done.disabled);

    let mut events = Vec::new();
    loop {
        let wait = if events.len() < 3 { 10 } else { 1 };
        let Ok(item) = tokio::time::timeout(Duration::from_secs(wait), feed.next()).await else {
            break;
        };
        if let Some(pb::watch_revocations_response::Item::Event(e)) = item.unwrap().unwrap().item {
            assert_eq!(e.reason, "offboarded");
            match e.target {
                Some(pb::revocation_event::Target::GrantId(id)) => events.push(id),
                other => panic!("unexpected target {other:?}"),
            }
        }
        if events.len() > 3 {
            break;
        }
    }
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events.iter().cloned().collect::<BTreeSet<_>>(), ids(researchers));

    // Exactly the researcher's tokens are dead, in both tasks.
    for t in researchers.into_iter().chain(writers) {
        let active = verifier
            .introspect(pb::IntrospectRequest {
                token: t.access_token.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .active;
        assert_eq!(
            active,
            writers.iter().any(|w| w.grant_id == t.grant_id),
            "{}",
            t.grant_id
        );
    }
    assert_eq!(listed(&mut admin, all.clone()).await, ids(writers));
    assert!(listed(&mut admin, by_subject).await.is_empty());

    // Again: nothing left to revoke. The CLI revokes the writer's.
    let again = admin
        .revoke_identity(pb::RevokeIdentityRequest {
            identity: agent_id("researcher"),
            reason: "again".into(),
            disable: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.grants_revoked, 0);
    let writer_id = agent_id("writer");
    let out = broker.tessera(&["--as", "alice", "--output", "json", "identity", "revoke", &writer_id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["grants_revoked"], 3);
    assert!(listed(&mut admin, all).await.is_empty());
}
