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
        (agent_id("nobody"), true, Code::NotFound),
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

    // A revocation of our own after it closes the batch: the feed is
    // ordered, so every event of the RevokeIdentity above comes before it.
    orchestrator
        .start_task(start_request("admin-marker", &["writer"], &scopes, 600))
        .await
        .unwrap();
    orchestrator
        .complete_task(pb::CompleteTaskRequest {
            task_id: "admin-marker".into(),
            reason: String::new(),
        })
        .await
        .unwrap();
    let mut events = Vec::new();
    loop {
        let e = next_event(&mut feed).await;
        match e.target {
            Some(pb::revocation_event::Target::TaskId(id)) if id == "admin-marker" => break,
            Some(pb::revocation_event::Target::GrantId(id)) => {
                assert_eq!(e.reason, "offboarded");
                events.push(id);
            }
            other => panic!("unexpected target {other:?}"),
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

#[tokio::test]
async fn a_disabled_identity_is_refused_everywhere_until_enabled() {
    let broker = Broker::start();
    broker
        .start_task(start_request(
            "disable-1",
            &["researcher", "writer"],
            &["crm.contacts.read"],
            600,
        ))
        .await;
    let read = || token_request("disable-1", &["crm.contacts.read"], None);
    let researchers = broker.issue_as("researcher", read()).await;
    let writers = broker.issue_as("writer", read()).await;
    let mut verifier = broker.verifier("api-gateway").await;
    let mut researcher = broker.agent("researcher").await;

    // The operator disables the researcher with the CLI.
    let out = broker.tessera(&[
        "--as",
        "alice",
        "--output",
        "json",
        "identity",
        "disable",
        &agent_id("researcher"),
        "--reason",
        "offboarded",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["grants_revoked"], 1, "{json}");
    assert_eq!(json["disabled"], true, "{json}");

    // Its token is dead, the writer's lives, and it gets nothing more, on
    // an open channel and on a new one.
    assert!(!introspect(&mut verifier, &researchers.access_token).await.unwrap());
    assert!(introspect(&mut verifier, &writers.access_token).await.unwrap());
    let refused = code(researcher.request_token(read()).await);
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    let refused = code(broker.agent("researcher").await.request_token(read()).await);
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    broker.issue_as("writer", read()).await;

    // Another replica on the same store refuses it too, from its start.
    if broker.redis.is_some() {
        let other = broker.replica();
        let refused = code(other.agent("researcher").await.request_token(read()).await);
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    }

    // Disabling again revokes nothing and stays disabled; enabling lifts it once.
    let mut admin = broker.admin("alice").await;
    let again = admin
        .revoke_identity(pb::RevokeIdentityRequest {
            identity: agent_id("researcher"),
            reason: "again".into(),
            disable: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.grants_revoked, again.disabled), (0, true));
    let out = broker.tessera(&["--as", "alice", "identity", "enable", &agent_id("researcher")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("enabled"));
    broker.issue_as("researcher", read()).await;
    let twice = admin
        .enable_identity(pb::EnableIdentityRequest {
            identity: agent_id("researcher"),
            reason: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!twice.enabled, "nothing to lift");

    // Only operators disable or enable.
    let mut writer_admin = broker.admin("writer").await;
    let denied = code(
        writer_admin
            .revoke_identity(pb::RevokeIdentityRequest {
                identity: agent_id("researcher"),
                reason: String::new(),
                disable: true,
            })
            .await,
    );
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let denied = code(
        writer_admin
            .enable_identity(pb::EnableIdentityRequest {
                identity: agent_id("researcher"),
                reason: String::new(),
            })
            .await,
    );
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    broker.issue_as("researcher", read()).await;
    let logs = broker.logs();
    assert!(logs.contains("identity_disabled") && logs.contains("identity_enabled"));
}

const PAYMENTS: &str = "https://api.example.com/payments";

/// A task on the CRM (`crm`) and the payments API (`payments`).
fn two_api_task(task_id: &str, agents: &[&str], crm: &[&str], payments: &[&str]) -> pb::StartTaskRequest {
    let mut req = start_request(task_id, agents, crm, 600);
    if !payments.is_empty() {
        req.scope_ceiling.insert(
            PAYMENTS.to_owned(),
            pb::ScopeSet {
                scopes: payments.iter().map(|s| (*s).to_owned()).collect(),
            },
        );
    }
    req
}

fn blast(target: pb::blast_radius_request::Target) -> pb::BlastRadiusRequest {
    pb::BlastRadiusRequest { target: Some(target) }
}

fn by_class(r: &pb::BlastRadiusResponse) -> Vec<(pb::ScopeClass, u64)> {
    r.scopes_by_class.iter().map(|c| (c.class(), c.scopes)).collect()
}

#[tokio::test]
async fn blast_radius_of_an_identity_a_task_and_an_owner() {
    use pb::blast_radius_request::Target;

    let broker = Broker::start();
    let mut orchestrator = broker.orchestrator().await;
    let mut researcher = broker.agent("researcher").await;
    let mut writer = broker.agent("writer").await;
    let mut admin = broker.admin("alice").await;
    let crm = [
        "crm.contacts.read",
        "crm.notes.read",
        "crm.contacts.list",
        "crm.contacts.write",
    ];
    orchestrator
        .start_task(two_api_task(
            "blast-a",
            &["researcher", "writer"],
            &crm,
            &["payments.invoices.read"],
        ))
        .await
        .unwrap();
    let mut child = start_request(
        "blast-b",
        &["researcher"],
        &["crm.contacts.read", "crm.notes.read"],
        500,
    );
    child.parent_task_id = "blast-a".into();
    orchestrator.start_task(child).await.unwrap();

    // The researcher: three grants in blast-a, one in its child task, one revoked.
    issue(
        &mut researcher,
        token_request("blast-a", &["crm.contacts.read", "crm.notes.read"], Some(300)),
    )
    .await;
    let mut pay = token_request("blast-a", &["payments.invoices.read"], Some(120));
    pay.audience = PAYMENTS.into();
    issue(&mut researcher, pay).await;
    issue(
        &mut researcher,
        token_request("blast-a", &["crm.contacts.list"], Some(60)),
    )
    .await;
    issue(
        &mut researcher,
        token_request("blast-b", &["crm.contacts.read"], Some(200)),
    )
    .await;
    let dead = issue(
        &mut researcher,
        token_request("blast-b", &["crm.notes.read"], Some(300)),
    )
    .await;
    admin
        .revoke_grant(pb::RevokeGrantRequest {
            grant_id: dead.grant_id.clone(),
            reason: "not counted".into(),
        })
        .await
        .unwrap();
    // The writer: one write grant in blast-a.
    // Write tokens are never bearer tokens: bound to the writer's certificate.
    issue(
        &mut writer,
        pb::RequestTokenRequest {
            mtls_binding: true,
            ..token_request("blast-a", &["crm.contacts.write"], Some(300))
        },
    )
    .await;

    // The researcher's identity: exactly its four live grants.
    let r = admin
        .blast_radius(blast(Target::Identity(agent_id("researcher"))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.live_grants, 4, "{r:?}");
    assert_eq!(r.audiences, [CRM, PAYMENTS]);
    assert_eq!(by_class(&r), [(pb::ScopeClass::Discover, 1), (pb::ScopeClass::Read, 4)]);
    assert_eq!(r.high_impact_grants, 0);
    assert!((200..=300).contains(&r.longest_remaining_ttl_seconds), "{r:?}");
    assert_eq!((r.max_delegation_depth, r.delegation_fan_out), (0, 0));
    assert_eq!(r.owners, ["team-research"]);

    // A task: its own grants (both identities), not its child task's.
    let t = admin
        .blast_radius(blast(Target::TaskId("blast-a".into())))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.live_grants, 4, "{t:?}");
    assert_eq!(t.audiences, [CRM, PAYMENTS]);
    assert_eq!(
        by_class(&t),
        [
            (pb::ScopeClass::Discover, 1),
            (pb::ScopeClass::Read, 3),
            (pb::ScopeClass::Write, 1)
        ]
    );
    assert!((200..=300).contains(&t.longest_remaining_ttl_seconds), "{t:?}");
    let child = admin
        .blast_radius(blast(Target::TaskId("blast-b".into())))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(child.live_grants, 1, "{child:?}");
    assert!(child.longest_remaining_ttl_seconds <= 200, "{child:?}");

    // An owner: every identity it owns; an owner with no grants reaches nothing.
    let o = admin
        .blast_radius(blast(Target::Owner("team-research".into())))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(o.live_grants, 5, "{o:?}");
    assert_eq!(o.owners, ["team-research"]);
    let none = admin
        .blast_radius(blast(Target::Owner("team-platform".into())))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(none, pb::BlastRadiusResponse::default());

    // Refusals: not an operator, no target, unknown identity or task.
    let mut not_operator = broker.admin("researcher").await;
    let refused = code(
        not_operator
            .blast_radius(blast(Target::Identity(agent_id("writer"))))
            .await,
    );
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let missing = code(admin.blast_radius(pb::BlastRadiusRequest { target: None }).await);
    assert_eq!(missing.code(), Code::InvalidArgument, "{missing:?}");
    assert!(missing.message().starts_with("target"), "{missing:?}");
    let unknown = code(admin.blast_radius(blast(Target::Identity(agent_id("nobody")))).await);
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    let no_task = code(admin.blast_radius(blast(Target::TaskId("no-such-task".into()))).await);
    assert_eq!(no_task.code(), Code::NotFound, "{no_task:?}");

    // The CLI prints the same figures.
    let researcher_id = agent_id("researcher");
    let out = broker.tessera(&[
        "--as",
        "alice",
        "--output",
        "json",
        "blast-radius",
        "--identity",
        &researcher_id,
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["live_grants"], 4, "{json}");
    assert_eq!(json["audiences"], serde_json::json!([CRM, PAYMENTS]));
    assert_eq!(json["scopes_by_class"], serde_json::json!({"discover": 1, "read": 4}));
    assert_eq!(json["owners"], serde_json::json!(["team-research"]));
    assert!(json["longest_remaining_ttl_seconds"].as_u64().unwrap() <= 300, "{json}");
    let out = broker.tessera(&["--as", "alice", "blast-radius", "--task", "blast-b"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("live grants  1"),
        "{out:?}"
    );
    // Refused by the broker: exit 2; no target: a usage error, exit 1.
    let out = broker.tessera(&["--as", "researcher", "blast-radius", "--owner", "team-research"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = broker.tessera(&["--as", "alice", "blast-radius"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}

#[tokio::test]
async fn keys_ls_prints_the_published_keys() {
    let broker = Broker::start();
    let jwks = broker.jwks().await;
    let out = broker.tessera(&["--as", "api-gateway", "--output", "json", "keys", "ls"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys = json["keys"].as_array().unwrap();
    assert_eq!(keys.len(), jwks.keys.len(), "{json}");
    assert!(!keys.is_empty());
    for (printed, key) in keys.iter().zip(&jwks.keys) {
        assert_eq!(printed["kid"], key.kid.as_str());
        assert_eq!(printed["alg"], key.alg.as_str());
        assert_eq!(printed["kty"], key.kty.as_str());
        // One broker: its key is the current one, and it stays while it signs.
        assert_eq!(printed["state"], "current", "{json}");
        assert!(printed["leaves_jwks_at"].is_null(), "{json}");
    }

    // A rotation adds the new key; the old one stays until its tokens expire.
    let out = broker.tessera(&[
        "--as", "alice", "--output", "json", "keys", "rotate", "--reason", "test",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rotated: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rotated["retired_key_id"], jwks.keys[0].kid.as_str(), "{rotated}");
    let out = broker.tessera(&["--as", "api-gateway", "keys", "ls"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let new_kid = rotated["new_key_id"].as_str().unwrap();
    let line = |kid: &str| text.lines().find(|l| l.starts_with(kid)).unwrap_or_default().to_owned();
    assert!(line(new_kid).ends_with(" current"), "{text}");
    assert!(
        line(&jwks.keys[0].kid).contains(" retiring  leaves the JWKS in "),
        "{text}"
    );
}
