//! The one conformance suite every [`GrantStore`] must pass. Each check takes a
//! fresh, empty store. Run it with [`run_all`].
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test suite"
)]
#![allow(missing_docs, reason = "test suite: each function is one named check")]

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tessera_core::grant::{Grant, GrantId, GrantState};
use tessera_core::identity::SpiffeId;
use tessera_core::revocation::RevocationTarget;
use tessera_core::task::{Audience, Scope, ScopeCeiling, ScopeClass, Task, TaskId, TaskState};

use crate::{FeedPosition, GrantFilter, GrantStore, PublishedKey, Release, StoreError};

/// Runs every check, each on a fresh store from `make`.
pub async fn run_all<S, F, Fut>(make: F)
where
    S: GrantStore,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    tasks_are_created_once(make().await).await;
    grants_are_recorded_only_in_live_tasks(make().await).await;
    grants_expire_without_a_sweeper(make().await).await;
    revoking_a_grant_revokes_its_delegates(make().await).await;
    ending_a_task_revokes_everything_under_it(make().await).await;
    feed_resumes_from_any_position(make().await).await;
    feed_readers_wake_on_new_events(make().await).await;
    keys_are_published_until_not_after(make().await).await;
    break_glass_primitives(make().await).await;
    positions_do_not_cross_stores(make().await, make().await).await;
    ending_an_expired_task_changes_nothing(make().await).await;
    listing_filters_and_pages_live_grants(make().await).await;
    revoking_a_subject_revokes_its_grants_and_delegates(make().await).await;
    a_delegated_grant_needs_a_live_parent(make().await).await;
    revoking_a_parent_revokes_exactly_its_descendants(make().await).await;
    ending_a_task_revokes_every_hop(make().await).await;
    disabled_subjects_are_kept_until_enabled(make().await).await;
    quarantines_are_shared_until_they_end(make().await).await;
    a_disabled_subject_gets_no_grant(make().await).await;
    only_the_holder_releases_a_grant(make().await).await;
    revocation_events_carry_any_reason_verbatim(make().await).await;
    releasing_a_grant_of_an_ended_task_revokes_nothing(make().await).await;
    keys_and_a_grant_read_together_as_apart(make().await).await;
}

pub fn t0() -> DateTime<Utc> {
    // Far in the future: Redis expires keys at their absolute `PXAT` time.
    DateTime::from_timestamp(4_000_000_000, 0).unwrap()
}

fn secs(s: i64) -> chrono::Duration {
    chrono::Duration::seconds(s)
}

pub fn task(id: &str, deadline_in: i64, parent: Option<&str>) -> Task {
    let aud = Audience::parse("crm").unwrap();
    Task {
        tools: Vec::new(),
        id: TaskId::parse(id).unwrap(),
        orchestrator: SpiffeId::parse("spiffe://td/orch").unwrap(),
        agents: BTreeSet::from([SpiffeId::parse("spiffe://td/agent").unwrap()]),
        ceiling: ScopeCeiling(BTreeMap::from([(aud, BTreeSet::from([Scope::parse("read").unwrap()]))])),
        deadline: t0() + secs(deadline_in),
        labels: BTreeMap::from([("team".to_owned(), "a".to_owned())]),
        parent: parent.map(|p| TaskId::parse(p).unwrap()),
        state: TaskState::Active,
        created_at: t0(),
        ended_at: None,
    }
}

/// A grant of `task` with an id from `store`.
pub async fn grant(store: &impl GrantStore, task: &str, ttl: i64, parent: Option<&GrantId>) -> Grant {
    let id = store.new_grant_id(&TaskId::parse(task).unwrap()).await.unwrap();
    grant_with_id(id, task, ttl, parent)
}

/// A grant of `task` with the given id.
pub fn grant_with_id(id: GrantId, task: &str, ttl: i64, parent: Option<&GrantId>) -> Grant {
    Grant {
        id,
        task_id: TaskId::parse(task).unwrap(),
        subject: SpiffeId::parse("spiffe://td/agent").unwrap(),
        audience: Audience::parse("crm").unwrap(),
        scopes: BTreeSet::from([Scope::parse("read").unwrap()]),
        class: ScopeClass::Read,
        issued_at: t0(),
        expires_at: t0() + secs(ttl),
        parent: parent.cloned(),
        key_id: "kid-1".into(),
        state: GrantState::Active,
        revoked_at: None,
        revocation_reason: None,
        impact: tessera_core::grant::GrantImpact::default(),
    }
}

fn tid(s: &str) -> TaskId {
    TaskId::parse(s).unwrap()
}

pub async fn tasks_are_created_once(store: impl GrantStore) {
    let t = task("t1", 60, None);
    store.create_task(&t).await.unwrap();
    assert_eq!(store.task(&t.id).await.unwrap(), Some(t.clone()));
    assert!(matches!(store.create_task(&t).await, Err(StoreError::TaskExists(_))));
    assert_eq!(store.task(&tid("nope")).await.unwrap(), None);
    // A child of an unknown parent is refused.
    let orphan = task("child", 30, Some("missing"));
    assert!(matches!(
        store.create_task(&orphan).await,
        Err(StoreError::TaskNotFound(_))
    ));
}

pub async fn grants_are_recorded_only_in_live_tasks(store: impl GrantStore) {
    store.create_task(&task("t1", 60, None)).await.unwrap();
    let g = grant(&store, "t1", 30, None).await;
    store.record_grant(&g, t0()).await.unwrap();
    assert_eq!(store.grant(&g.id).await.unwrap(), Some(g.clone()));
    assert_eq!(store.live_grants(&tid("t1"), t0()).await.unwrap(), 1);
    assert!(matches!(
        store.record_grant(&g, t0()).await,
        Err(StoreError::GrantExists)
    ));
    // Outliving the task, unknown task, past deadline.
    let long = grant(&store, "t1", 61, None).await;
    assert!(matches!(
        store.record_grant(&long, t0()).await,
        Err(StoreError::OutlivesTask(_))
    ));
    let mut unknown = grant(&store, "t1", 10, None).await;
    unknown.task_id = tid("nope");
    assert!(matches!(
        store.record_grant(&unknown, t0()).await,
        Err(StoreError::TaskNotFound(_))
    ));
    let late = grant(&store, "t1", 10, None).await;
    assert!(matches!(
        store.record_grant(&late, t0() + secs(60)).await,
        Err(StoreError::TaskOver(..))
    ));
    // Once ended, nothing more is recorded.
    store
        .end_task(&tid("t1"), TaskState::Completed, "done", t0())
        .await
        .unwrap();
    let after = grant(&store, "t1", 10, None).await;
    assert!(matches!(
        store.record_grant(&after, t0()).await,
        Err(StoreError::TaskOver(_, TaskState::Completed))
    ));
}

pub async fn grants_expire_without_a_sweeper(store: impl GrantStore) {
    store.create_task(&task("t1", 60, None)).await.unwrap();
    let g = grant(&store, "t1", 5, None).await;
    store.record_grant(&g, t0()).await.unwrap();
    let live = |at| {
        let store = &store;
        let id = g.id.clone();
        async move { store.grant(&id).await.unwrap().is_some_and(|g| g.is_live_at(at)) }
    };
    assert!(live(t0() + secs(4)).await);
    assert!(!live(t0() + secs(5)).await);
    assert_eq!(store.live_grants(&tid("t1"), t0() + secs(5)).await.unwrap(), 0);
}

pub async fn revoking_a_grant_revokes_its_delegates(store: impl GrantStore) {
    store.create_task(&task("t1", 60, None)).await.unwrap();
    let parent = grant(&store, "t1", 30, None).await;
    let child = grant(&store, "t1", 20, Some(&parent.id)).await;
    let grandchild = grant(&store, "t1", 10, Some(&child.id)).await;
    let sibling = grant(&store, "t1", 30, None).await;
    for g in [&parent, &child, &grandchild, &sibling] {
        store.record_grant(g, t0()).await.unwrap();
    }
    let head = store.read_revocations(None, 10, Duration::ZERO).await.unwrap().head;
    let outcome = store
        .revoke_grant(&parent.id, "stolen", t0() + secs(1))
        .await
        .unwrap()
        .unwrap();
    assert!(outcome.revoked);
    assert_eq!(outcome.descendants_revoked, 2);
    assert_eq!(outcome.grant.state, GrantState::Revoked);
    assert_eq!(outcome.grant.revocation_reason.as_deref(), Some("stolen"));
    for g in [&parent, &child, &grandchild] {
        assert!(!store.grant(&g.id).await.unwrap().unwrap().is_live_at(t0() + secs(1)));
    }
    assert!(
        store
            .grant(&sibling.id)
            .await
            .unwrap()
            .unwrap()
            .is_live_at(t0() + secs(1))
    );
    let batch = store.read_revocations(Some(&head), 10, Duration::ZERO).await.unwrap();
    let events: BTreeMap<_, _> = batch
        .events
        .iter()
        .map(|e| (e.revocation.target.clone(), e.revocation.clone()))
        .collect();
    // Each event says when its grant expires, and when and why it was revoked.
    for g in [&parent, &child, &grandchild] {
        let event = &events[&RevocationTarget::Grant(g.id.clone())];
        assert_eq!(event.not_after, g.expires_at, "{event:?}");
        assert_eq!(event.revoked_at, t0() + secs(1));
        assert_eq!(event.reason, "stolen");
    }
    assert_eq!(events.len(), 3);
    // Again: nothing changes, nothing is appended.
    let again = store
        .revoke_grant(&parent.id, "again", t0() + secs(2))
        .await
        .unwrap()
        .unwrap();
    assert!(!again.revoked);
    assert_eq!(again.descendants_revoked, 0);
    let batch2 = store
        .read_revocations(Some(&batch.head), 10, Duration::ZERO)
        .await
        .unwrap();
    assert!(batch2.events.is_empty());
    assert!(
        store
            .revoke_grant(&GrantId::generate().unwrap(), "x", t0())
            .await
            .unwrap()
            .is_none()
    );
}

pub async fn ending_a_task_revokes_everything_under_it(store: impl GrantStore) {
    store.create_task(&task("root", 60, None)).await.unwrap();
    store.create_task(&task("child", 50, Some("root"))).await.unwrap();
    store.create_task(&task("grandchild", 40, Some("child"))).await.unwrap();
    store.create_task(&task("other", 60, None)).await.unwrap();
    let mut live = Vec::new();
    for t in ["root", "child", "grandchild"] {
        for _ in 0..3 {
            let g = grant(&store, t, 30, None).await;
            store.record_grant(&g, t0()).await.unwrap();
            live.push(g);
        }
    }
    let expired = grant(&store, "root", 1, None).await;
    store.record_grant(&expired, t0()).await.unwrap();
    let bystander = grant(&store, "other", 30, None).await;
    store.record_grant(&bystander, t0()).await.unwrap();
    let head = store.read_revocations(None, 10, Duration::ZERO).await.unwrap().head;

    let now = t0() + secs(2);
    let ended = store
        .end_task(&tid("root"), TaskState::Completed, "task done", now)
        .await
        .unwrap();
    assert_eq!(ended.grants_revoked, 9);
    assert_eq!(ended.task.state, TaskState::Completed);
    assert_eq!(ended.task.ended_at, Some(now));
    let children: BTreeSet<_> = ended.children_ended.iter().cloned().collect();
    assert_eq!(children, BTreeSet::from([tid("child"), tid("grandchild")]));
    for g in &live {
        let stored = store.grant(&g.id).await.unwrap().unwrap();
        assert_eq!(stored.state_at(now), GrantState::Revoked);
    }
    assert!(store.grant(&bystander.id).await.unwrap().unwrap().is_live_at(now));
    assert_eq!(
        store.task(&tid("grandchild")).await.unwrap().unwrap().state,
        TaskState::Completed
    );
    assert_eq!(
        store.task(&tid("other")).await.unwrap().unwrap().state,
        TaskState::Active
    );

    // One task event per ended task.
    let batch = store.read_revocations(Some(&head), 100, Duration::ZERO).await.unwrap();
    let targets: BTreeSet<_> = batch.events.iter().map(|e| e.revocation.target.clone()).collect();
    assert_eq!(
        targets,
        BTreeSet::from([
            RevocationTarget::Task(tid("root")),
            RevocationTarget::Task(tid("child")),
            RevocationTarget::Task(tid("grandchild")),
        ])
    );
    assert!(
        batch
            .events
            .iter()
            .all(|e| e.revocation.reason == "task done" && e.revocation.revoked_at == now)
    );

    // Idempotent.
    let again = store
        .end_task(&tid("root"), TaskState::Revoked, "again", now)
        .await
        .unwrap();
    assert_eq!(again.grants_revoked, 0);
    assert!(again.children_ended.is_empty());
    assert_eq!(again.task.state, TaskState::Completed);
    let batch2 = store
        .read_revocations(Some(&batch.head), 100, Duration::ZERO)
        .await
        .unwrap();
    assert!(batch2.events.is_empty());
    assert!(matches!(
        store.end_task(&tid("nope"), TaskState::Completed, "x", now).await,
        Err(StoreError::TaskNotFound(_))
    ));
    // A child of an ended task cannot be started.
    let late_child = task("late", 30, Some("root"));
    assert!(matches!(
        store.create_task(&late_child).await,
        Err(StoreError::TaskOver(..))
    ));
}

pub async fn feed_resumes_from_any_position(store: impl GrantStore) {
    store.create_task(&task("t1", 60, None)).await.unwrap();
    let start = store.read_revocations(None, 10, Duration::ZERO).await.unwrap();
    assert!(start.events.is_empty());
    let mut grants = Vec::new();
    for _ in 0..5 {
        let g = grant(&store, "t1", 30, None).await;
        store.record_grant(&g, t0()).await.unwrap();
        store.revoke_grant(&g.id, "r", t0()).await.unwrap();
        grants.push(g.id);
    }
    // Read two at a time from the start; then resume from each position.
    let mut seen = Vec::new();
    let mut pos = start.head.clone();
    loop {
        let batch = store.read_revocations(Some(&pos), 2, Duration::ZERO).await.unwrap();
        if batch.events.is_empty() {
            assert_eq!(batch.head, pos);
            break;
        }
        assert!(batch.events.len() <= 2);
        seen.extend(batch.events.iter().map(|e| e.revocation.target.clone()));
        pos = batch.head;
    }
    let want: Vec<_> = grants.iter().cloned().map(RevocationTarget::Grant).collect();
    assert_eq!(seen, want);
    let all = store
        .read_revocations(Some(&start.head), 100, Duration::ZERO)
        .await
        .unwrap();
    let third = &all.events[2].position;
    let rest = store.read_revocations(Some(third), 100, Duration::ZERO).await.unwrap();
    assert_eq!(rest.events, all.events[3..].to_vec());
    let garbage = FeedPosition::new("not a position");
    assert!(matches!(
        store.read_revocations(Some(&garbage), 1, Duration::ZERO).await,
        Err(StoreError::BadPosition(_))
    ));
}

pub async fn feed_readers_wake_on_new_events(store: impl GrantStore) {
    let store = std::sync::Arc::new(store);
    store.create_task(&task("t1", 60, None)).await.unwrap();
    let g = grant(store.as_ref(), "t1", 30, None).await;
    store.record_grant(&g, t0()).await.unwrap();
    let head = store.read_revocations(None, 10, Duration::ZERO).await.unwrap().head;
    // Nothing yet: a bounded wait returns empty.
    let empty = store
        .read_revocations(Some(&head), 10, Duration::from_millis(50))
        .await
        .unwrap();
    assert!(empty.events.is_empty());
    // Polled once, the reader has registered for wake-ups and is waiting:
    // the event appended next must wake it, well before its 10 s wait ends.
    let mut reader = std::pin::pin!(store.read_revocations(Some(&head), 10, Duration::from_secs(10)));
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(reader.as_mut().poll(cx))).await;
    assert!(first.is_pending(), "nothing was appended yet, the reader must wait");
    store
        .end_task(&tid("t1"), TaskState::Completed, "done", t0())
        .await
        .unwrap();
    let batch = tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(batch.events.len(), 1);
    assert_eq!(batch.events[0].revocation.target, RevocationTarget::Task(tid("t1")));
}

pub async fn keys_are_published_until_not_after(store: impl GrantStore) {
    let jwk = |kid: &str| -> tessera_core::token::Jwk {
        serde_json::from_value(serde_json::json!({
            "kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
            "kid": kid, "alg": "EdDSA", "use": "sig"
        }))
        .unwrap()
    };
    let current = PublishedKey {
        jwk: jwk("a"),
        published_at: t0(),
        not_after: None,
    };
    let retired = PublishedKey {
        jwk: jwk("b"),
        published_at: t0(),
        not_after: Some(t0() + secs(10)),
    };
    store.publish_key(&current).await.unwrap();
    store.publish_key(&retired).await.unwrap();
    let kids = |keys: Vec<PublishedKey>| keys.into_iter().map(|k| k.jwk.kid).collect::<BTreeSet<_>>();
    assert_eq!(
        kids(store.published_keys(t0()).await.unwrap()),
        BTreeSet::from(["a".into(), "b".into()])
    );
    assert_eq!(
        kids(store.published_keys(t0() + secs(10)).await.unwrap()),
        BTreeSet::from(["a".into()])
    );
    store.ping().await.unwrap();
}

/// For stores with a small feed bound: a reader whose position fell out of
/// the retained window while its events still mattered is told so.
pub async fn feed_overflow_is_reported(store: impl GrantStore) {
    store.create_task(&task("t1", 60, None)).await.unwrap();
    let head = store.read_revocations(None, 10, Duration::ZERO).await.unwrap().head;
    for _ in 0..5 {
        let g = grant(&store, "t1", 30, None).await;
        store.record_grant(&g, t0()).await.unwrap();
        store.revoke_grant(&g.id, "r", t0()).await.unwrap();
    }
    assert!(matches!(
        store.read_revocations(Some(&head), 10, Duration::ZERO).await,
        Err(StoreError::PositionExpired(_))
    ));
}

/// A feed bounded to a few events (the store's bound set that low by the
/// caller): every position a reader could hold is either refused with
/// `PositionExpired` (events after it were trimmed while still relevant)
/// or answered with exactly the events after it, in order: never a silent
/// gap. Revocations alternate between `revoke_grant` and `release_grant`
/// (on Redis outside Cluster the one-script path, inside the publish
/// script), so both trims are held to it.
pub async fn a_trimmed_feed_refuses_only_the_readers_it_lost(store: impl GrantStore) {
    store.create_task(&task("t1", 60, None)).await.unwrap();
    let mut positions = vec![store.read_revocations(None, 10, Duration::ZERO).await.unwrap().head];
    let mut revoked = Vec::new();
    for i in 0..40 {
        let g = grant(&store, "t1", 30, None).await;
        store.record_grant(&g, t0()).await.unwrap();
        if i % 2 == 0 {
            store.revoke_grant(&g.id, "r", t0()).await.unwrap().unwrap();
        } else {
            store
                .release_grant(&g.id, &g.subject, "r", t0())
                .await
                .unwrap()
                .unwrap();
        }
        revoked.push(RevocationTarget::Grant(g.id));
        positions.push(store.read_revocations(None, 10, Duration::ZERO).await.unwrap().head);
    }
    let mut refused = 0;
    for (i, pos) in positions.iter().enumerate() {
        match store.read_revocations(Some(pos), 100, Duration::ZERO).await {
            Err(StoreError::PositionExpired(_)) => refused += 1,
            Ok(batch) => {
                let got: Vec<_> = batch.events.iter().map(|e| e.revocation.target.clone()).collect();
                assert_eq!(got, revoked[i..].to_vec(), "reading after revocation {i}");
            }
            Err(e) => panic!("reading after revocation {i}: {e}"),
        }
    }
    // The bound trimmed something: the oldest positions were lost.
    assert!(refused > 0, "nothing was trimmed; the test proves nothing");
    assert!(matches!(
        store.read_revocations(positions.first(), 100, Duration::ZERO).await,
        Err(StoreError::PositionExpired(_))
    ));
}

/// A position from another store (or the same store before it lost its
/// state) is refused: its reader may have missed events.
pub async fn positions_do_not_cross_stores(a: impl GrantStore, b: impl GrantStore) {
    a.create_task(&task("t1", 60, None)).await.unwrap();
    let g = grant(&a, "t1", 30, None).await;
    a.record_grant(&g, t0()).await.unwrap();
    a.revoke_grant(&g.id, "r", t0()).await.unwrap();
    let head_a = a.read_revocations(None, 10, Duration::ZERO).await.unwrap().head;
    let head_b = b.read_revocations(None, 10, Duration::ZERO).await.unwrap().head;
    assert_ne!(head_a, head_b);
    assert!(matches!(
        b.read_revocations(Some(&head_a), 10, Duration::ZERO).await,
        Err(StoreError::PositionExpired(_))
    ));
    assert!(
        b.read_revocations(Some(&head_b), 10, Duration::ZERO)
            .await
            .unwrap()
            .events
            .is_empty()
    );
}

/// A task past its deadline is expired; completing it later neither relabels
/// it nor publishes anything.
pub async fn ending_an_expired_task_changes_nothing(store: impl GrantStore) {
    store.create_task(&task("old", 10, None)).await.unwrap();
    let head = store.read_revocations(None, 10, Duration::ZERO).await.unwrap().head;
    let later = t0() + secs(11);
    let ended = store
        .end_task(&tid("old"), TaskState::Completed, "late", later)
        .await
        .unwrap();
    assert_eq!(ended.grants_revoked, 0);
    assert_eq!(ended.task.state_at(later), TaskState::Expired);
    assert!(
        store
            .read_revocations(Some(&head), 10, Duration::ZERO)
            .await
            .unwrap()
            .events
            .is_empty()
    );
}

fn sid(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

/// Records a grant of `task` for `subject` with `ttl`, adjusted by `edit`.
async fn recorded(
    store: &impl GrantStore,
    task: &str,
    subject: &str,
    ttl: i64,
    parent: Option<&GrantId>,
    edit: impl FnOnce(&mut Grant),
) -> Grant {
    let mut g = grant(store, task, ttl, parent).await;
    g.subject = sid(subject);
    edit(&mut g);
    store.record_grant(&g, t0()).await.unwrap();
    g
}

async fn list_all(store: &impl GrantStore, filter: &GrantFilter, limit: usize, now: DateTime<Utc>) -> Vec<GrantId> {
    let mut ids = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..100 {
        let page = store.list_grants(filter, after.as_deref(), limit, now).await.unwrap();
        assert!(page.grants.len() <= limit.max(1));
        assert!(page.grants.iter().all(|g| g.is_live_at(now)));
        ids.extend(page.grants.into_iter().map(|g| g.id));
        match page.next {
            Some(next) => after = Some(next),
            None => return ids,
        }
    }
    panic!("pagination did not end");
}

fn sorted(ids: &[&Grant]) -> Vec<GrantId> {
    let mut ids: Vec<GrantId> = ids.iter().map(|g| g.id.clone()).collect();
    ids.sort();
    ids
}

/// ListGrants: only live grants, every filter, stable order, cursors that
/// visit each grant once.
pub async fn listing_filters_and_pages_live_grants(store: impl GrantStore) {
    const A: &str = "spiffe://td/agent/a";
    const B: &str = "spiffe://td/agent/b";
    for t in ["t1", "t2", "t3"] {
        store.create_task(&task(t, 60, None)).await.unwrap();
    }
    let a1 = recorded(&store, "t1", A, 30, None, |_| {}).await;
    let a2 = recorded(&store, "t1", A, 10, None, |g| g.class = ScopeClass::Write).await;
    let b1 = recorded(&store, "t1", B, 30, None, |_| {}).await;
    let a3 = recorded(&store, "t2", A, 30, None, |g| {
        g.audience = Audience::parse("mail").unwrap()
    })
    .await;
    let b2 = recorded(&store, "t2", B, 30, None, |g| {
        g.impact = tessera_core::grant::GrantImpact {
            high_impact: true,
            blast_radius: 25,
            approval_id: Some("ap_1".into()),
        };
    })
    .await;
    // The assessment is recorded with the grant.
    assert_eq!(store.grant(&b2.id).await.unwrap().unwrap().impact, b2.impact);
    let expired = recorded(&store, "t1", A, 1, None, |_| {}).await;
    let revoked = recorded(&store, "t2", A, 30, None, |_| {}).await;
    let ended = recorded(&store, "t3", A, 30, None, |_| {}).await;
    let now = t0() + secs(2);
    store.revoke_grant(&revoked.id, "r", now).await.unwrap();
    store
        .end_task(&tid("t3"), TaskState::Completed, "done", now)
        .await
        .unwrap();
    let dead = [&expired.id, &revoked.id, &ended.id];

    let all = list_all(&store, &GrantFilter::default(), 1000, now).await;
    assert_eq!(all, sorted(&[&a1, &a2, &b1, &a3, &b2]));
    assert!(dead.iter().all(|d| !all.contains(d)));
    // Pages of 2 (and of 1) visit each live grant exactly once, in the same order.
    assert_eq!(list_all(&store, &GrantFilter::default(), 2, now).await, all);
    assert_eq!(list_all(&store, &GrantFilter::default(), 1, now).await, all);

    let by = |f: GrantFilter| {
        let store = &store;
        async move { list_all(store, &f, 1000, now).await }
    };
    let subjects = |s: &[&str]| Some(s.iter().map(|s| sid(s)).collect::<BTreeSet<_>>());
    assert_eq!(
        by(GrantFilter {
            task_id: Some(tid("t1")),
            ..GrantFilter::default()
        })
        .await,
        sorted(&[&a1, &a2, &b1])
    );
    assert_eq!(
        by(GrantFilter {
            subjects: subjects(&[A]),
            ..GrantFilter::default()
        })
        .await,
        sorted(&[&a1, &a2, &a3])
    );
    assert_eq!(
        list_all(
            &store,
            &GrantFilter {
                subjects: subjects(&[A]),
                ..GrantFilter::default()
            },
            2,
            now
        )
        .await,
        sorted(&[&a1, &a2, &a3])
    );
    assert_eq!(
        by(GrantFilter {
            subjects: subjects(&[A, B]),
            task_id: Some(tid("t2")),
            ..GrantFilter::default()
        })
        .await,
        sorted(&[&a3, &b2])
    );
    assert!(
        by(GrantFilter {
            subjects: subjects(&[]),
            ..GrantFilter::default()
        })
        .await
        .is_empty()
    );
    assert_eq!(
        by(GrantFilter {
            audience: Some(Audience::parse("mail").unwrap()),
            ..GrantFilter::default()
        })
        .await,
        sorted(&[&a3])
    );
    assert_eq!(
        by(GrantFilter {
            class: Some(ScopeClass::Write),
            ..GrantFilter::default()
        })
        .await,
        sorted(&[&a2])
    );
    assert_eq!(
        by(GrantFilter {
            high_impact_only: true,
            ..GrantFilter::default()
        })
        .await,
        sorted(&[&b2])
    );
    assert_eq!(
        by(GrantFilter {
            expiring_before: Some(t0() + secs(15)),
            ..GrantFilter::default()
        })
        .await,
        sorted(&[&a2])
    );
    assert!(
        by(GrantFilter {
            task_id: Some(tid("t3")),
            ..GrantFilter::default()
        })
        .await
        .is_empty()
    );
    // Everything expires.
    assert!(
        list_all(&store, &GrantFilter::default(), 10, t0() + secs(31))
            .await
            .is_empty()
    );
    assert!(matches!(
        store
            .list_grants(&GrantFilter::default(), Some("not a cursor!"), 10, now)
            .await,
        Err(StoreError::BadCursor(_))
    ));
}

/// RevokeIdentity: every live grant of the subject and everything delegated
/// from them dies, one event each; others live; repeating changes nothing.
pub async fn revoking_a_subject_revokes_its_grants_and_delegates(store: impl GrantStore) {
    const A: &str = "spiffe://td/agent/a";
    const B: &str = "spiffe://td/agent/b";
    store.create_task(&task("t1", 60, None)).await.unwrap();
    store.create_task(&task("t2", 60, None)).await.unwrap();
    let a1 = recorded(&store, "t1", A, 30, None, |_| {}).await;
    let a2 = recorded(&store, "t2", A, 30, None, |_| {}).await;
    let delegated = recorded(&store, "t1", B, 20, Some(&a1.id), |_| {}).await;
    let b1 = recorded(&store, "t1", B, 30, None, |_| {}).await;
    let b2 = recorded(&store, "t2", B, 30, None, |g| {
        g.impact = tessera_core::grant::GrantImpact {
            high_impact: true,
            blast_radius: 25,
            approval_id: Some("ap_1".into()),
        };
    })
    .await;
    // The assessment is recorded with the grant.
    assert_eq!(store.grant(&b2.id).await.unwrap().unwrap().impact, b2.impact);
    let expired = recorded(&store, "t1", A, 1, None, |_| {}).await;
    let now = t0() + secs(2);
    let head = store.read_revocations(None, 10, Duration::ZERO).await.unwrap().head;

    let n = store.revoke_subject(&sid(A), "offboarded", now).await.unwrap();
    assert_eq!(n, 3);
    for g in [&a1, &a2, &delegated] {
        let stored = store.grant(&g.id).await.unwrap().unwrap();
        assert_eq!(stored.state_at(now), GrantState::Revoked);
        assert_eq!(stored.revocation_reason.as_deref(), Some("offboarded"));
    }
    for g in [&b1, &b2] {
        assert!(store.grant(&g.id).await.unwrap().unwrap().is_live_at(now));
    }
    let batch = store.read_revocations(Some(&head), 100, Duration::ZERO).await.unwrap();
    let targets: Vec<_> = batch.events.iter().map(|e| e.revocation.target.clone()).collect();
    assert_eq!(targets.len(), 3, "{targets:?}");
    assert_eq!(
        targets.into_iter().collect::<BTreeSet<_>>(),
        BTreeSet::from([
            RevocationTarget::Grant(a1.id.clone()),
            RevocationTarget::Grant(a2.id.clone()),
            RevocationTarget::Grant(delegated.id.clone()),
        ])
    );
    assert!(
        !batch
            .events
            .iter()
            .any(|e| e.revocation.target == RevocationTarget::Grant(expired.id.clone()))
    );

    // Again: nothing to do, nothing appended. An unknown subject: nothing.
    assert_eq!(store.revoke_subject(&sid(A), "again", now).await.unwrap(), 0);
    assert_eq!(
        store
            .revoke_subject(&sid("spiffe://td/nobody"), "x", now)
            .await
            .unwrap(),
        0
    );
    assert!(
        store
            .read_revocations(Some(&batch.head), 100, Duration::ZERO)
            .await
            .unwrap()
            .events
            .is_empty()
    );
    let left = list_all(&store, &GrantFilter::default(), 100, now).await;
    assert_eq!(left, sorted(&[&b1, &b2]));
}

/// What break-glass revocation needs: the tasks that may be active, and
/// withdrawing every key but one.
pub async fn break_glass_primitives(store: impl GrantStore) {
    store.create_task(&task("live", 60, None)).await.unwrap();
    store.create_task(&task("gone", 60, None)).await.unwrap();
    store
        .end_task(&tid("gone"), TaskState::Completed, "done", t0())
        .await
        .unwrap();
    store.create_task(&task("late", 5, None)).await.unwrap();
    let ids: BTreeSet<TaskId> = store
        .active_task_ids(t0() + secs(10))
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert!(ids.contains(&tid("live")));
    assert!(!ids.contains(&tid("late")), "past its deadline");
    for id in ids {
        store
            .end_task(&id, TaskState::Revoked, "break-glass", t0() + secs(10))
            .await
            .unwrap();
    }
    assert_eq!(
        store.task(&tid("live")).await.unwrap().unwrap().state,
        TaskState::Revoked
    );
    assert_eq!(
        store.task(&tid("gone")).await.unwrap().unwrap().state,
        TaskState::Completed
    );

    let jwk = |kid: &str| -> tessera_core::token::Jwk {
        serde_json::from_value(serde_json::json!({
            "kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
            "kid": kid, "alg": "EdDSA", "use": "sig"
        }))
        .unwrap()
    };
    for kid in ["a", "b", "c"] {
        store
            .publish_key(&PublishedKey {
                jwk: jwk(kid),
                published_at: t0(),
                not_after: None,
            })
            .await
            .unwrap();
    }
    let withdrawal = crate::KeyWithdrawal {
        reason: "break-glass",
        now: t0(),
        not_after: t0() + chrono::Duration::hours(1),
    };
    assert_eq!(store.withdraw_keys_except("b", &withdrawal).await.unwrap(), 2);
    let kids: Vec<String> = store
        .published_keys(t0())
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.jwk.kid)
        .collect();
    assert_eq!(kids, vec!["b".to_owned()]);
}

/// A delegated grant is recorded only under a live parent of its task that
/// outlives it: never under an unknown, revoked or expired parent.
pub async fn a_delegated_grant_needs_a_live_parent(store: impl GrantStore) {
    store.create_task(&task("t1", 60, None)).await.unwrap();
    store.create_task(&task("t2", 60, Some("t1"))).await.unwrap();
    let parent = grant(&store, "t1", 30, None).await;
    store.record_grant(&parent, t0()).await.unwrap();

    let unknown = GrantId::parse(&format!("{}x", parent.id)).unwrap();
    let orphan = grant(&store, "t1", 10, Some(&unknown)).await;
    assert!(matches!(
        store.record_grant(&orphan, t0()).await,
        Err(StoreError::ParentNotLive)
    ));
    let longer = grant(&store, "t1", 31, Some(&parent.id)).await;
    assert!(matches!(
        store.record_grant(&longer, t0()).await,
        Err(StoreError::ParentNotLive)
    ));
    // A grant of a child task cannot hang under a grant of its parent task.
    let other_task = grant(&store, "t2", 10, Some(&parent.id)).await;
    assert!(matches!(
        store.record_grant(&other_task, t0()).await,
        Err(StoreError::ParentNotLive)
    ));
    let same_expiry = grant(&store, "t1", 30, Some(&parent.id)).await;
    store.record_grant(&same_expiry, t0()).await.unwrap();

    store.revoke_grant(&parent.id, "stolen", t0() + secs(1)).await.unwrap();
    let late = grant(&store, "t1", 10, Some(&parent.id)).await;
    assert!(matches!(
        store.record_grant(&late, t0() + secs(2)).await,
        Err(StoreError::ParentNotLive)
    ));
    // Expired parent.
    let short = grant(&store, "t1", 5, None).await;
    store.record_grant(&short, t0()).await.unwrap();
    let mut after = grant(&store, "t1", 10, Some(&short.id)).await;
    after.issued_at = t0() + secs(5);
    after.expires_at = t0() + secs(5);
    assert!(matches!(
        store.record_grant(&after, t0() + secs(5)).await,
        Err(StoreError::ParentNotLive)
    ));
}

/// A chain root → a → b → c with siblings: revoking `a` revokes a, b and c
/// in one call, one feed event each, and leaves the root, a's sibling and
/// b's sibling's... nothing else: grants of other parents live on.
pub async fn revoking_a_parent_revokes_exactly_its_descendants(store: impl GrantStore) {
    store.create_task(&task("t1", 60, None)).await.unwrap();
    let root = grant(&store, "t1", 50, None).await;
    store.record_grant(&root, t0()).await.unwrap();
    let a = grant(&store, "t1", 40, Some(&root.id)).await;
    store.record_grant(&a, t0()).await.unwrap();
    let sibling = grant(&store, "t1", 40, Some(&root.id)).await;
    store.record_grant(&sibling, t0()).await.unwrap();
    let b = grant(&store, "t1", 30, Some(&a.id)).await;
    store.record_grant(&b, t0()).await.unwrap();
    let c = grant(&store, "t1", 20, Some(&b.id)).await;
    store.record_grant(&c, t0()).await.unwrap();
    let b2 = grant(&store, "t1", 30, Some(&a.id)).await;
    store.record_grant(&b2, t0()).await.unwrap();
    let nephew = grant(&store, "t1", 30, Some(&sibling.id)).await;
    store.record_grant(&nephew, t0()).await.unwrap();
    // Already revoked before: not counted again, no second event.
    store.revoke_grant(&b2.id, "released", t0()).await.unwrap();

    let now = t0() + secs(1);
    let head = store.read_revocations(None, 10, Duration::ZERO).await.unwrap().head;
    let outcome = store.revoke_grant(&a.id, "compromised", now).await.unwrap().unwrap();
    assert!(outcome.revoked);
    assert_eq!(outcome.descendants_revoked, 2);
    for g in [&a, &b, &c, &b2] {
        let stored = store.grant(&g.id).await.unwrap().unwrap();
        assert_eq!(stored.state_at(now), GrantState::Revoked, "{}", g.id);
    }
    for g in [&root, &sibling, &nephew] {
        assert!(store.grant(&g.id).await.unwrap().unwrap().is_live_at(now), "{}", g.id);
    }
    let batch = store.read_revocations(Some(&head), 100, Duration::ZERO).await.unwrap();
    let mut targets: Vec<_> = batch.events.iter().map(|e| e.revocation.target.clone()).collect();
    targets.sort_by_key(|t| format!("{t:?}"));
    let mut expected = vec![
        RevocationTarget::Grant(a.id.clone()),
        RevocationTarget::Grant(b.id.clone()),
        RevocationTarget::Grant(c.id.clone()),
    ];
    expected.sort_by_key(|t| format!("{t:?}"));
    assert_eq!(targets, expected);
    assert!(batch.events.iter().all(|e| e.revocation.reason == "compromised"));
    assert_eq!(store.live_grants(&tid("t1"), now).await.unwrap(), 3);
}

/// Completing a task revokes every hop of every chain in it.
pub async fn ending_a_task_revokes_every_hop(store: impl GrantStore) {
    store.create_task(&task("t1", 60, None)).await.unwrap();
    store.create_task(&task("t2", 60, None)).await.unwrap();
    let root = grant(&store, "t1", 50, None).await;
    store.record_grant(&root, t0()).await.unwrap();
    let mut chain = vec![root];
    for ttl in [40, 30, 20] {
        let parent = chain.last().unwrap().id.clone();
        let g = grant(&store, "t1", ttl, Some(&parent)).await;
        store.record_grant(&g, t0()).await.unwrap();
        chain.push(g);
    }
    let elsewhere = grant(&store, "t2", 50, None).await;
    store.record_grant(&elsewhere, t0()).await.unwrap();
    let now = t0() + secs(1);
    let ended = store
        .end_task(&tid("t1"), TaskState::Completed, "done", now)
        .await
        .unwrap();
    assert_eq!(ended.grants_revoked, 4);
    for g in &chain {
        assert!(!store.grant(&g.id).await.unwrap().unwrap().is_live_at(now), "{}", g.id);
    }
    assert!(store.grant(&elsewhere.id).await.unwrap().unwrap().is_live_at(now));
    // No hop can be added afterwards.
    let late = grant(&store, "t1", 10, Some(&chain[1].id)).await;
    assert!(store.record_grant(&late, now).await.is_err());
}

// ---- approvals ----

use tessera_core::approval::{Approval, ApprovalDecision, ApprovalId, ApprovalRequest, ApprovalState, REDEEM_GRACE};

use crate::{ApprovalStore, Transition};

/// Runs every approval check, each on a fresh store from `make`.
pub async fn run_approvals<S, F, Fut>(make: F)
where
    S: ApprovalStore,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    approvals_are_created_once_and_read_back(make().await).await;
    deciding_moves_a_pending_approval_once(make().await).await;
    nobody_decides_their_own_request_in_the_store(make().await).await;
    an_approval_is_redeemed_exactly_once(make().await).await;
    expired_approvals_yield_nothing(make().await).await;
    listing_pages_pending_approvals(make().await).await;
    one_requester_cannot_crowd_out_the_others(make().await).await;
}

const REQUESTER: &str = "spiffe://td/agent/requester";
const APPROVER: &str = "spiffe://td/operator/alice";

/// A pending approval opened at `t0`, expiring `expires_in` seconds later.
pub fn approval(expires_in: i64) -> Approval {
    let request = ApprovalRequest {
        tools: None,
        requester: sid(REQUESTER),
        task_id: tid("t1"),
        audience: Audience::parse("pay").unwrap(),
        scopes: BTreeSet::from([Scope::parse("transfers.create").unwrap()]),
        ttl: Some(tessera_core::ttl::Ttl::from_secs(120).unwrap()),
        pop_jkt: String::new(),
    };
    Approval::open(
        ApprovalId::generate().unwrap(),
        request,
        ScopeClass::Write,
        BTreeSet::from([Scope::parse("transfers.create").unwrap()]),
        25,
        "high-impact scope `transfers.create`".into(),
        t0(),
        t0() + secs(expires_in),
    )
}

fn decision(approve: bool, approver: &str, at: DateTime<Utc>) -> ApprovalDecision {
    ApprovalDecision {
        approve,
        approver: sid(approver),
        reason: if approve { "ok".into() } else { "too risky".into() },
        at,
    }
}

fn applied(t: Option<Transition>) -> Approval {
    match t {
        Some(Transition::Applied(a)) => a,
        other => panic!("expected the transition to apply, got {other:?}"),
    }
}

fn refused(t: Option<Transition>) -> Approval {
    match t {
        Some(Transition::Refused(a)) => a,
        other => panic!("expected the transition to be refused, got {other:?}"),
    }
}

pub async fn approvals_are_created_once_and_read_back(store: impl ApprovalStore) {
    let a = approval(300);
    store.create_approval(&a, t0()).await.unwrap();
    let back = store.approval(&a.id).await.unwrap().unwrap();
    assert_eq!(back, a);
    assert!(back.is_bound());
    assert_eq!(back.state, ApprovalState::Pending);
    assert!(matches!(
        store.create_approval(&a, t0()).await,
        Err(StoreError::ApprovalExists)
    ));
    let unknown = ApprovalId::generate().unwrap();
    assert_eq!(store.approval(&unknown).await.unwrap(), None);
    assert_eq!(
        store
            .decide_approval(&unknown, &decision(true, APPROVER, t0()), t0())
            .await
            .unwrap(),
        None
    );
    let g = GrantId::generate().unwrap();
    assert_eq!(store.redeem_approval(&unknown, &g, t0()).await.unwrap(), None);
}

pub async fn deciding_moves_a_pending_approval_once(store: impl ApprovalStore) {
    let now = t0() + secs(10);
    // Approve.
    let a = approval(300);
    store.create_approval(&a, t0()).await.unwrap();
    let approved = applied(
        store
            .decide_approval(&a.id, &decision(true, APPROVER, now), now)
            .await
            .unwrap(),
    );
    assert_eq!(approved.state, ApprovalState::Approved);
    assert_eq!(approved.decision, Some(decision(true, APPROVER, now)));
    assert!(approved.is_bound());
    // A second decision, either way, changes nothing.
    let again = refused(
        store
            .decide_approval(&a.id, &decision(false, APPROVER, now), now)
            .await
            .unwrap(),
    );
    assert_eq!(again.state, ApprovalState::Approved);
    assert_eq!(store.approval(&a.id).await.unwrap().unwrap(), approved);
    // Deny.
    let b = approval(300);
    store.create_approval(&b, t0()).await.unwrap();
    let denied = applied(
        store
            .decide_approval(&b.id, &decision(false, APPROVER, now), now)
            .await
            .unwrap(),
    );
    assert_eq!(denied.state, ApprovalState::Denied);
    assert_eq!(denied.decision.as_ref().unwrap().reason, "too risky");
    refused(
        store
            .decide_approval(&b.id, &decision(true, APPROVER, now), now)
            .await
            .unwrap(),
    );
    // A denied approval is never redeemed.
    let g = GrantId::generate().unwrap();
    assert_eq!(
        refused(store.redeem_approval(&b.id, &g, now).await.unwrap()).state,
        ApprovalState::Denied
    );
}

pub async fn nobody_decides_their_own_request_in_the_store(store: impl ApprovalStore) {
    let a = approval(300);
    store.create_approval(&a, t0()).await.unwrap();
    let mine = refused(
        store
            .decide_approval(&a.id, &decision(true, REQUESTER, t0()), t0())
            .await
            .unwrap(),
    );
    assert_eq!(mine.state, ApprovalState::Pending);
    assert_eq!(mine.decision, None);
}

pub async fn an_approval_is_redeemed_exactly_once(store: impl ApprovalStore) {
    let a = approval(300);
    store.create_approval(&a, t0()).await.unwrap();
    let now = t0() + secs(5);
    // Not before it is approved.
    let g0 = GrantId::generate().unwrap();
    assert_eq!(
        refused(store.redeem_approval(&a.id, &g0, now).await.unwrap()).state,
        ApprovalState::Pending
    );
    applied(
        store
            .decide_approval(&a.id, &decision(true, APPROVER, now), now)
            .await
            .unwrap(),
    );
    // Many concurrent redeemers: exactly one wins.
    let grants: Vec<GrantId> = (0..8).map(|_| GrantId::generate().unwrap()).collect();
    let outcomes = futures::future::join_all(grants.iter().map(|g| store.redeem_approval(&a.id, g, now))).await;
    let winners: Vec<Approval> = outcomes
        .into_iter()
        .filter_map(|o| match o.unwrap() {
            Some(Transition::Applied(a)) => Some(a),
            Some(Transition::Refused(a)) => {
                assert_eq!(a.state, ApprovalState::Redeemed);
                None
            }
            None => panic!("approval vanished"),
        })
        .collect();
    assert_eq!(winners.len(), 1, "exactly one redemption");
    let won = &winners[0];
    assert_eq!(won.state, ApprovalState::Redeemed);
    assert!(grants.contains(won.grant_id.as_ref().unwrap()));
    assert_eq!(store.approval(&a.id).await.unwrap().unwrap().grant_id, won.grant_id);
    // And never again.
    refused(store.redeem_approval(&a.id, &g0, now).await.unwrap());
}

pub async fn expired_approvals_yield_nothing(store: impl ApprovalStore) {
    // Nobody decided in time.
    let a = approval(60);
    store.create_approval(&a, t0()).await.unwrap();
    let late = t0() + secs(60);
    let r = refused(
        store
            .decide_approval(&a.id, &decision(true, APPROVER, late), late)
            .await
            .unwrap(),
    );
    assert_eq!(r.state_at(late), ApprovalState::Expired);
    let g = GrantId::generate().unwrap();
    refused(store.redeem_approval(&a.id, &g, late).await.unwrap());
    // Approved at the last second: redeemable within the grace, not after.
    let b = approval(60);
    store.create_approval(&b, t0()).await.unwrap();
    let last = t0() + secs(59);
    applied(
        store
            .decide_approval(&b.id, &decision(true, APPROVER, last), last)
            .await
            .unwrap(),
    );
    let too_late = t0() + secs(60) + REDEEM_GRACE;
    refused(store.redeem_approval(&b.id, &g, too_late).await.unwrap());
    let within = t0() + secs(61);
    applied(store.redeem_approval(&b.id, &g, within).await.unwrap());
}

pub async fn listing_pages_pending_approvals(store: impl ApprovalStore) {
    let mut pending = Vec::new();
    for _ in 0..5 {
        let a = approval(300);
        store.create_approval(&a, t0()).await.unwrap();
        pending.push(a.id);
    }
    let short = approval(30);
    store.create_approval(&short, t0()).await.unwrap();
    let decided = approval(300);
    store.create_approval(&decided, t0()).await.unwrap();
    let now = t0() + secs(40);
    applied(
        store
            .decide_approval(&decided.id, &decision(false, APPROVER, now), now)
            .await
            .unwrap(),
    );
    pending.sort();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..20 {
        let page = store.list_pending_approvals(after.as_deref(), 2, now).await.unwrap();
        assert!(page.approvals.len() <= 2);
        assert!(page.approvals.iter().all(|a| a.state_at(now) == ApprovalState::Pending));
        seen.extend(page.approvals.into_iter().map(|a| a.id));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(
        seen, pending,
        "each pending approval once, in id order; expired and decided ones left out"
    );
    let all = store.list_pending_approvals(None, 100, now).await.unwrap();
    assert_eq!(all.approvals.len(), 5);
    assert_eq!(all.next, None);
    assert!(matches!(
        store.list_pending_approvals(Some("not a cursor!"), 10, now).await,
        Err(StoreError::BadCursor(_))
    ));
}

pub async fn one_requester_cannot_crowd_out_the_others(store: impl ApprovalStore) {
    for _ in 0..crate::MAX_PENDING_PER_REQUESTER {
        store.create_approval(&approval(300), t0()).await.unwrap();
    }
    assert!(matches!(
        store.create_approval(&approval(300), t0()).await,
        Err(StoreError::Full(_))
    ));
    // Another requester is unaffected.
    let mut other = approval(300);
    other.request.requester = sid("spiffe://td/agent/other");
    other.binding = other.request.binding();
    store.create_approval(&other, t0()).await.unwrap();
    // Once they expire, the requester may ask again.
    store.create_approval(&approval(600), t0() + secs(300)).await.unwrap();
}

/// An operator's disable is recorded once, listed, and lifted once.
pub async fn disabled_subjects_are_kept_until_enabled(store: impl GrantStore) {
    let a = SpiffeId::parse("spiffe://td/agent/a").unwrap();
    let b = SpiffeId::parse("spiffe://td/agent/b").unwrap();
    assert!(store.disabled_subjects().await.unwrap().is_empty());
    assert!(store.disable_subject(&a, "offboarded", t0()).await.unwrap());
    assert!(
        !store.disable_subject(&a, "again", t0()).await.unwrap(),
        "already disabled"
    );
    assert!(store.disable_subject(&b, "offboarded", t0()).await.unwrap());
    assert_eq!(
        store.disabled_subjects().await.unwrap(),
        BTreeSet::from([a.clone(), b.clone()])
    );
    assert!(store.subject_disabled(&a).await.unwrap());
    assert!(store.enable_subject(&a).await.unwrap());
    assert!(!store.enable_subject(&a).await.unwrap(), "not disabled any more");
    assert!(!store.subject_disabled(&a).await.unwrap());
    assert_eq!(store.disabled_subjects().await.unwrap(), BTreeSet::from([b]));
}

/// A grant whose subject an operator disabled is refused, atomically with
/// the record: nothing of it is left; once enabled, grants are recorded again.
pub async fn a_disabled_subject_gets_no_grant(store: impl GrantStore) {
    store.create_task(&task("t1", 60, None)).await.unwrap();
    let g = grant(&store, "t1", 30, None).await;
    assert!(store.disable_subject(&g.subject, "offboarded", t0()).await.unwrap());
    let refused = store.record_grant(&g, t0()).await;
    assert!(
        matches!(&refused, Err(StoreError::SubjectDisabled(s)) if s == &g.subject),
        "{refused:?}"
    );
    assert_eq!(store.live_grants(&tid("t1"), t0()).await.unwrap(), 0);
    assert!(store.grant(&g.id).await.unwrap().is_none_or(|g| !g.is_live_at(t0())));
    assert!(store.enable_subject(&g.subject).await.unwrap());
    let again = grant(&store, "t1", 30, None).await;
    store.record_grant(&again, t0()).await.unwrap();
    assert_eq!(store.live_grants(&tid("t1"), t0()).await.unwrap(), 1);
}

/// ReleaseToken: only the grant's subject releases it (the tree with it),
/// anyone else changes nothing; releasing again revokes nothing.
pub async fn only_the_holder_releases_a_grant(store: impl GrantStore) {
    store.create_task(&task("t1", 60, None)).await.unwrap();
    let g = grant(&store, "t1", 30, None).await;
    let child = grant(&store, "t1", 20, Some(&g.id)).await;
    for x in [&g, &child] {
        store.record_grant(x, t0()).await.unwrap();
    }
    let head = store.read_revocations(None, 10, Duration::ZERO).await.unwrap().head;
    let other = SpiffeId::parse("spiffe://td/agent/other").unwrap();
    let refused = store.release_grant(&g.id, &other, "mine", t0()).await.unwrap();
    assert!(
        matches!(&refused, Some(Release::NotHolder(held)) if held.task_id == g.task_id),
        "{refused:?}"
    );
    assert_eq!(store.live_grants(&tid("t1"), t0()).await.unwrap(), 2);
    let released = store
        .release_grant(&g.id, &g.subject, "released by holder", t0() + secs(1))
        .await
        .unwrap();
    let Some(Release::Revoked(outcome)) = released else {
        panic!("the holder releases its grant: {released:?}");
    };
    assert!(outcome.revoked);
    assert_eq!(outcome.descendants_revoked, 1);
    assert_eq!(outcome.grant.state, GrantState::Revoked);
    assert_eq!(outcome.grant.revocation_reason.as_deref(), Some("released by holder"));
    assert_eq!(store.live_grants(&tid("t1"), t0() + secs(1)).await.unwrap(), 0);
    let batch = store.read_revocations(Some(&head), 10, Duration::ZERO).await.unwrap();
    let targets: BTreeSet<_> = batch.events.iter().map(|e| e.revocation.target.clone()).collect();
    assert_eq!(
        targets,
        BTreeSet::from([
            RevocationTarget::Grant(g.id.clone()),
            RevocationTarget::Grant(child.id.clone())
        ])
    );
    let again = store
        .release_grant(&g.id, &g.subject, "again", t0() + secs(2))
        .await
        .unwrap();
    assert!(matches!(again, Some(Release::Revoked(o)) if !o.revoked && o.descendants_revoked == 0));
    let unknown = GrantId::generate().unwrap();
    assert!(
        store
            .release_grant(&unknown, &g.subject, "x", t0())
            .await
            .unwrap()
            .is_none()
    );
}

/// A revocation's reason reaches the feed and the grant exactly as given,
/// whatever it holds: JSON's special characters cannot change an event's
/// target or add members (the Redis store builds events from JSON the
/// broker encoded).
pub async fn revocation_events_carry_any_reason_verbatim(store: impl GrantStore) {
    store.create_task(&task("t1", 60, None)).await.unwrap();
    let g = grant(&store, "t1", 30, None).await;
    let child = grant(&store, "t1", 20, Some(&g.id)).await;
    for x in [&g, &child] {
        store.record_grant(x, t0()).await.unwrap();
    }
    let head = store.read_revocations(None, 10, Duration::ZERO).await.unwrap().head;
    let reason = "he said \"stop\"\\\n\t\u{7f}\u{1} ünï 🔑 \"},\"target\":{\"grant\":\"x\"},\"reason\":\"";
    let released = store
        .release_grant(&g.id, &g.subject, reason, t0() + secs(1))
        .await
        .unwrap();
    let Some(Release::Revoked(outcome)) = released else {
        panic!("the holder releases its grant: {released:?}");
    };
    assert_eq!(outcome.grant.revocation_reason.as_deref(), Some(reason));
    assert_eq!(outcome.grant.revoked_at, Some(t0() + secs(1)));
    let batch = store.read_revocations(Some(&head), 10, Duration::ZERO).await.unwrap();
    let events: BTreeMap<_, _> = batch
        .events
        .iter()
        .map(|e| (e.revocation.target.clone(), e.revocation.clone()))
        .collect();
    assert_eq!(events.len(), 2, "{events:?}");
    for x in [&g, &child] {
        let event = &events[&RevocationTarget::Grant(x.id.clone())];
        assert_eq!(event.reason, reason);
        assert_eq!(event.revoked_at, t0() + secs(1));
        assert_eq!(event.not_after, x.expires_at);
    }
    let read = store.grant(&child.id).await.unwrap().unwrap();
    assert_eq!(read.revocation_reason.as_deref(), Some(reason));
}

/// Releasing a grant that its task's end already revoked changes nothing
/// and publishes nothing; the answer says how the grant ended.
pub async fn releasing_a_grant_of_an_ended_task_revokes_nothing(store: impl GrantStore) {
    store.create_task(&task("t1", 60, None)).await.unwrap();
    let g = grant(&store, "t1", 30, None).await;
    store.record_grant(&g, t0()).await.unwrap();
    store
        .end_task(&tid("t1"), TaskState::Completed, "done", t0() + secs(1))
        .await
        .unwrap();
    let head = store.read_revocations(None, 10, Duration::ZERO).await.unwrap().head;
    let released = store
        .release_grant(&g.id, &g.subject, "released by holder", t0() + secs(2))
        .await
        .unwrap();
    let Some(Release::Revoked(outcome)) = released else {
        panic!("the holder's release answers: {released:?}");
    };
    assert!(!outcome.revoked);
    assert_eq!(outcome.descendants_revoked, 0);
    assert_eq!(outcome.grant.state, GrantState::Revoked);
    assert_eq!(outcome.grant.revoked_at, Some(t0() + secs(1)));
    assert_eq!(outcome.grant.revocation_reason.as_deref(), Some("done"));
    let batch = store.read_revocations(Some(&head), 10, Duration::ZERO).await.unwrap();
    assert!(batch.events.is_empty(), "{:?}", batch.events);
}

/// `keys_and_grant` answers what `published_keys` and `grant` answer.
pub async fn keys_and_a_grant_read_together_as_apart(store: impl GrantStore) {
    store.create_task(&task("t1", 60, None)).await.unwrap();
    let key = PublishedKey {
        jwk: serde_json::from_value(serde_json::json!({
            "kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
            "kid": "k1", "alg": "EdDSA", "use": "sig"
        }))
        .unwrap(),
        published_at: t0(),
        not_after: None,
    };
    store.publish_key(&key).await.unwrap();
    let g = grant(&store, "t1", 30, None).await;
    store.record_grant(&g, t0()).await.unwrap();
    let (keys, read) = store.keys_and_grant(&g.id, t0()).await.unwrap();
    assert_eq!(keys, store.published_keys(t0()).await.unwrap());
    assert_eq!(read, store.grant(&g.id).await.unwrap());
    assert!(read.is_some_and(|r| r.is_live_at(t0())));
    store.revoke_grant(&g.id, "x", t0()).await.unwrap();
    let (_, read) = store.keys_and_grant(&g.id, t0()).await.unwrap();
    assert_eq!(read.map(|r| r.state), Some(GrantState::Revoked));
    let (_, none) = store.keys_and_grant(&GrantId::generate().unwrap(), t0()).await.unwrap();
    assert!(none.is_none());
}

/// A quarantine is listed until it ends; a longer one extends, a shorter one does not shorten.
pub async fn quarantines_are_shared_until_they_end(store: impl GrantStore) {
    let a = SpiffeId::parse("spiffe://td/agent/a").unwrap();
    let b = SpiffeId::parse("spiffe://td/agent/b").unwrap();
    let at = |s: i64| t0() + chrono::Duration::seconds(s);
    assert!(store.quarantined_subjects(t0()).await.unwrap().is_empty());
    store
        .quarantine_subject(&a, at(60), "5 denials in 10s", t0())
        .await
        .unwrap();
    store.quarantine_subject(&a, at(30), "shorter", t0()).await.unwrap();
    store.quarantine_subject(&b, at(10), "misuse", t0()).await.unwrap();
    let mut now = store.quarantined_subjects(t0()).await.unwrap();
    now.sort_by(|x, y| x.subject.cmp(&y.subject));
    assert_eq!(now.len(), 2, "{now:?}");
    assert_eq!(
        (now[0].subject.clone(), now[0].until, now[0].why.as_str()),
        (a.clone(), at(60), "5 denials in 10s")
    );
    assert_eq!(now[1].until, at(10));
    let later = store.quarantined_subjects(at(20)).await.unwrap();
    assert_eq!(
        later.iter().map(|q| q.subject.clone()).collect::<Vec<_>>(),
        vec![a.clone()]
    );
    store.quarantine_subject(&a, at(120), "again", at(20)).await.unwrap();
    assert_eq!(store.quarantined_subjects(at(90)).await.unwrap()[0].until, at(120));
    assert!(store.quarantined_subjects(at(120)).await.unwrap().is_empty());
}

/// The live-grant bound per task that [`live_grants_are_bounded_per_task_and_identity`] expects.
pub const BOUND_PER_TASK: u64 = 3;
/// The live-grant bound per identity that [`live_grants_are_bounded_per_task_and_identity`] expects.
pub const BOUND_PER_IDENTITY: u64 = 5;

fn subject_grant(id: GrantId, task: &str, subject: &str, ttl: i64) -> Grant {
    let mut g = grant_with_id(id, task, ttl, None);
    g.subject = SpiffeId::parse(subject).unwrap();
    g
}

/// Needs a store bounded at [`BOUND_PER_TASK`] live grants per task and
/// [`BOUND_PER_IDENTITY`] per identity. Grants beyond either bound are
/// refused when recorded; revoked, expired and ended grants do not count.
pub async fn live_grants_are_bounded_per_task_and_identity(store: impl GrantStore) {
    let now = t0();
    let agent = "spiffe://td/agent";
    for t in ["bound-a", "bound-b", "bound-c", "bound-d"] {
        store.create_task(&task(t, 600, None)).await.unwrap();
    }
    let record = async |t: &str, subject: &str, ttl: i64, at| {
        let id = store.new_grant_id(&tid(t)).await.unwrap();
        let g = subject_grant(id, t, subject, ttl);
        store.record_grant(&g, at).await.map(|()| g)
    };
    let full = |r: Result<Grant, StoreError>, what: &str| match r {
        Err(StoreError::Full(m)) => assert_eq!(m, what),
        other => panic!("expected Full({what}), got {other:?}"),
    };

    // Per task: the fourth live grant of bound-a is refused, whoever holds it.
    let mut a = Vec::new();
    for _ in 0..BOUND_PER_TASK {
        a.push(record("bound-a", agent, 300, now).await.unwrap());
    }
    full(
        record("bound-a", "spiffe://td/other", 300, now).await,
        crate::TASK_GRANTS_FULL,
    );
    // A revoked grant frees its place.
    store.revoke_grant(&a[0].id, "test", now).await.unwrap();
    a.push(record("bound-a", agent, 10, now).await.unwrap());
    full(record("bound-a", agent, 300, now).await, crate::TASK_GRANTS_FULL);
    // So does an expired one (the last one lives 10 s).
    let later = now + secs(20);
    record("bound-a", agent, 300, later).await.unwrap();

    // Per identity, across tasks: `agent` now holds 3 live grants in bound-a.
    record("bound-b", agent, 300, later).await.unwrap();
    record("bound-b", agent, 300, later).await.unwrap();
    full(record("bound-b", agent, 300, later).await, crate::IDENTITY_GRANTS_FULL);
    // Another identity is not affected.
    record("bound-b", "spiffe://td/other", 300, later).await.unwrap();
    // Ending a task frees its grants' places for their holders.
    store
        .end_task(&tid("bound-a"), TaskState::Completed, "done", later)
        .await
        .unwrap();
    for _ in 0..3 {
        record("bound-c", agent, 300, later).await.unwrap();
    }
    full(
        record("bound-c", "spiffe://td/third", 300, later).await,
        crate::TASK_GRANTS_FULL,
    );
    // `agent` holds 2 in bound-b and 3 in bound-c.
    full(record("bound-d", agent, 300, later).await, crate::IDENTITY_GRANTS_FULL);
}

/// Needs a store that refuses new grants as full after `fill` grants or
/// fewer ([`StoreError::Full`]): revoking, ending a task, quarantining and
/// disabling still succeed then, so a store filled by mints can still take
/// revocations.
pub async fn revocations_succeed_when_the_store_is_full(store: impl GrantStore, fill: usize) {
    let now = t0();
    let mut grants = Vec::new();
    let mut tasks = 0;
    loop {
        assert!(grants.len() <= fill, "the store took more than {fill} grants");
        if grants.len() % 1000 == 0 {
            tasks += 1;
            let t = format!("full-{tasks}");
            match store.create_task(&task(&t, 600, None)).await {
                Ok(()) => {}
                Err(StoreError::Full(_)) => break,
                Err(e) => panic!("{e}"),
            }
        }
        let t = format!("full-{tasks}");
        let id = store.new_grant_id(&tid(&t)).await.unwrap();
        let g = grant_with_id(id, &t, 300, None);
        match store.record_grant(&g, now).await {
            Ok(()) => grants.push(g),
            Err(StoreError::Full(_)) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(grants.len() > 2, "filled after {} grants", grants.len());
    let outcome = store.revoke_grant(&grants[0].id, "full", now).await.unwrap().unwrap();
    assert!(outcome.revoked);
    let ended = store
        .end_task(&grants[1].task_id, TaskState::Revoked, "full", now)
        .await
        .unwrap();
    assert_eq!(ended.task.state, TaskState::Revoked);
    let who = SpiffeId::parse("spiffe://td/agent").unwrap();
    store
        .quarantine_subject(&who, now + secs(60), "full", now)
        .await
        .unwrap();
    assert!(store.disable_subject(&who, "full", now).await.unwrap());
    assert!(!store.grant(&grants[1].id).await.unwrap().unwrap().is_live_at(now));
}
