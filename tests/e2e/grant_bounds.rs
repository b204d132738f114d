//! Live grants are bounded per task and per identity through the real
//! `tesserad`, on the test store (`TESSERA_TEST_STORE`): one agent cannot
//! fill the store and stop minting for everyone.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use tessera_e2e::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_grants_beyond_the_task_or_identity_bound_are_refused() {
    let broker = Broker::start_with(&[
        ("TESSERA_STORE__MAX_LIVE_GRANTS_PER_TASK", "2"),
        ("TESSERA_STORE__MAX_LIVE_GRANTS_PER_IDENTITY", "3"),
    ]);
    let read = ["crm.contacts.read"];
    broker
        .start_task(start_request("bound-a", &["researcher"], &read, 600))
        .await;
    broker
        .start_task(start_request("bound-b", &["researcher", "writer"], &read, 600))
        .await;
    let mut researcher = broker.agent("researcher").await;
    let mut writer = broker.agent("writer").await;
    let mut admin = broker.admin("alice").await;

    // Per task.
    let first = issue(&mut researcher, token_request("bound-a", &read, None)).await;
    issue(&mut researcher, token_request("bound-a", &read, None)).await;
    let refused = code(researcher.request_token(token_request("bound-a", &read, None)).await);
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    // A revoked grant frees its place.
    admin
        .revoke_grant(pb::RevokeGrantRequest {
            grant_id: first.grant_id.clone(),
            reason: "make room".into(),
        })
        .await
        .unwrap();
    issue(&mut researcher, token_request("bound-a", &read, None)).await;

    // Per identity, across tasks: the researcher holds 2 in bound-a.
    issue(&mut researcher, token_request("bound-b", &read, None)).await;
    let refused = code(researcher.request_token(token_request("bound-b", &read, None)).await);
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    // Another agent of the same task still gets its token.
    issue(&mut writer, token_request("bound-b", &read, None)).await;
    assert!(find_secret(&broker.logs()).is_none());
}
