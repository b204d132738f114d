#![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test")]

use std::collections::{BTreeMap, BTreeSet};

use chrono::Duration;
use proptest::prelude::*;

use super::*;
use crate::catalog::Api;
use crate::grant::GrantState;
use crate::identity::{AttestationMethod, IdentityKind, IdentityRegistry};
use crate::task::ScopeCeiling;

const ISS: &str = "https://tessera.test";

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}
fn id(name: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://td/agent/{name}")).unwrap()
}
fn scope(s: &str) -> Scope {
    Scope::parse(s).unwrap()
}
fn scopes(list: &[&str]) -> BTreeSet<Scope> {
    list.iter().map(|s| scope(s)).collect()
}
fn aud() -> Audience {
    Audience::parse("crm").unwrap()
}

/// Read scopes r0..r7, write scopes w0, w1.
fn catalog() -> ApiCatalog {
    let mut map = BTreeMap::new();
    for i in 0..8 {
        map.insert(scope(&format!("r{i}")), ScopeClass::Read);
    }
    map.insert(scope("w0"), ScopeClass::Write);
    map.insert(scope("w1"), ScopeClass::Write);
    ApiCatalog::new([
        Api {
            audience: aud(),
            schema_version: "1".into(),
            scopes: map,
            high_impact: std::collections::BTreeSet::new(),
            verifiers: std::collections::BTreeSet::new(),
        },
        Api {
            audience: Audience::parse("billing").unwrap(),
            schema_version: "1".into(),
            scopes: BTreeMap::from([(scope("r0"), ScopeClass::Read)]),
            high_impact: std::collections::BTreeSet::new(),
            verifiers: std::collections::BTreeSet::new(),
        },
    ])
}

fn identity(name: &str, roles: &[Role]) -> Identity {
    Identity {
        id: id(name),
        kind: IdentityKind::Agent,
        owner: "team".into(),
        max_ttl: Ttl::from_secs(3600).unwrap(),
        roles: roles.iter().copied().collect(),
        disabled: false,
    }
}

fn registry() -> IdentityRegistry {
    IdentityRegistry::new([
        identity("a", &[Role::Agent]),
        identity("b", &[Role::Agent]),
        identity("c", &[Role::Agent]),
        identity("d", &[Role::Agent]),
        identity("e", &[Role::Agent]),
        identity("outsider", &[Role::Agent]),
        identity("verifier", &[Role::Verifier]),
    ])
}

fn who(name: &str) -> VerifiedIdentity {
    VerifiedIdentity::attested(&registry(), &id(name), AttestationMethod::X509, "sha256:x".into()).unwrap()
}

fn delegate(name: &str) -> Identity {
    registry().lookup(&id(name)).unwrap().clone()
}

fn task() -> Task {
    let all: BTreeSet<Scope> = (0..8)
        .map(|i| scope(&format!("r{i}")))
        .chain([scope("w0"), scope("w1")])
        .collect();
    Task {
        tools: Vec::new(),
        id: TaskId::parse("t1").unwrap(),
        orchestrator: SpiffeId::parse("spiffe://td/orch").unwrap(),
        agents: ["a", "b", "c", "d", "e", "verifier"].iter().map(|n| id(n)).collect(),
        ceiling: ScopeCeiling(BTreeMap::from([(aud(), all)])),
        deadline: t0() + Duration::seconds(3600),
        labels: BTreeMap::new(),
        parent: None,
        state: TaskState::Active,
        created_at: t0(),
        ended_at: None,
    }
}

fn limits(max_depth: u32) -> DelegationLimits {
    DelegationLimits {
        max_depth,
        ttl: TtlLimits {
            default: Ttl::from_secs(300).unwrap(),
            max: Ttl::from_secs(3600).unwrap(),
        },
    }
}

fn grant_of(claims: &AccessClaims, class: ScopeClass) -> Grant {
    Grant {
        id: GrantId::parse(&claims.jti).unwrap(),
        task_id: TaskId::parse(&claims.task_id).unwrap(),
        subject: SpiffeId::parse(&claims.client_id).unwrap(),
        audience: Audience::parse(&claims.aud).unwrap(),
        scopes: claims.scopes().map(scope).collect(),
        class,
        issued_at: DateTime::from_timestamp(claims.iat, 0).unwrap(),
        expires_at: DateTime::from_timestamp(claims.exp, 0).unwrap(),
        parent: None,
        key_id: "k".into(),
        state: GrantState::Active,
        revoked_at: None,
        revocation_reason: None,
        impact: crate::grant::GrantImpact::default(),
    }
}

/// A root token of `holder` with `list` scopes, expiring `secs` after t0.
fn root(holder: &str, list: &[&str], secs: i64) -> ParentToken {
    let claims = AccessClaims {
        iss: ISS.into(),
        sub: id(holder).to_string(),
        aud: "crm".into(),
        exp: (t0() + Duration::seconds(secs)).timestamp(),
        nbf: t0().timestamp(),
        iat: t0().timestamp(),
        jti: format!("root-{holder}"),
        scope: list.join(" "),
        client_id: id(holder).to_string(),
        task_id: "t1".into(),
        cnf: None,
        act: None,
        tessera_chain: Vec::new(),
        authorization_details: Vec::new(),
    };
    let class = catalog().classify(&aud(), &scopes(list)).unwrap();
    let grant = grant_of(&claims, class);
    ParentToken::bind(claims, grant).unwrap()
}

fn request(to: &str, list: &[&str], ttl: Option<u64>) -> DelegationRequest {
    DelegationRequest {
        tools: None,
        delegate: id(to),
        scopes: scopes(list),
        ttl: ttl.map(|t| Ttl::from_secs(t).unwrap()),
        audience: None,
        task_id: None,
    }
}

/// Plans and "mints" the child: the parent token of the next hop.
fn child(
    parent: &ParentToken,
    caller: &str,
    req: &DelegationRequest,
    max_depth: u32,
) -> Result<ParentToken, DelegationError> {
    let plan = plan_delegation(
        &who(caller),
        parent,
        &delegate(req.delegate.as_str().trim_start_matches("spiffe://td/agent/")),
        &task(),
        &catalog(),
        req,
        limits(max_depth),
        t0(),
    )?;
    let jti = GrantId::parse(&format!("g{}", plan.depth)).unwrap();
    let claims = plan.claims(ISS, &jti, &req.delegate, None);
    let grant = grant_of(&claims, plan.class);
    Ok(ParentToken::bind(claims, grant).unwrap())
}

#[track_caller]
fn refused(parent: &ParentToken, caller: &str, req: &DelegationRequest, expected: &DelegationError) {
    let got = child(parent, caller, req, 3).map(|c| c.claims().clone());
    assert_eq!(got.as_ref().err(), Some(expected), "{got:?}");
}

fn exchange(parent: &ParentToken, actor: &str, req: &DelegationRequest) -> Result<ChildPlan, DelegationError> {
    let holder = delegate(parent.claims().sub.trim_start_matches("spiffe://td/agent/"));
    plan_exchange(&who(actor), &holder, parent, &task(), &catalog(), req, limits(3), t0())
}

#[test]
fn an_exchange_makes_the_actor_the_delegate_under_every_hop_rule() {
    let a = root("a", &["r0", "r1"], 600);
    let plan = exchange(&a, "b", &request("b", &["r0"], None)).unwrap();
    assert_eq!(plan.act.actors(), vec![id("b").as_str()], "the actor is outermost");
    assert_eq!(plan.subject, id("a").to_string(), "the subject stays the holder");
    assert_eq!(plan.depth, 1);

    // The same attenuation and assignment rules as DelegateToken.
    assert!(matches!(
        exchange(&a, "b", &request("b", &["w0"], None)),
        Err(DelegationError::HigherClass { .. })
    ));
    assert!(matches!(
        exchange(&a, "b", &request("b", &["r5"], None)),
        Err(DelegationError::WiderScope(_))
    ));
    assert!(matches!(
        exchange(&a, "outsider", &request("outsider", &["r0"], None)),
        Err(DelegationError::DelegateNotAssigned { .. })
    ));
    assert_eq!(
        exchange(&a, "a", &request("a", &["r0"], None)).err(),
        Some(DelegationError::ToSelf)
    );

    // A bound token proves nothing in another's hands.
    let mut bound = a.claims().clone();
    bound.cnf = Some(Confirmation::Jkt("thumbprint".into()));
    let bound = ParentToken::bind(bound.clone(), grant_of(&bound, ScopeClass::Read)).unwrap();
    assert_eq!(
        exchange(&bound, "b", &request("b", &["r0"], None)).err(),
        Some(DelegationError::BoundParent)
    );

    // The holder the broker looked up must be the parent's.
    let c = delegate("c");
    assert_eq!(
        plan_exchange(
            &who("b"),
            &c,
            &a,
            &task(),
            &catalog(),
            &request("b", &["r0"], None),
            limits(3),
            t0()
        )
        .err(),
        Some(DelegationError::ParentNotLive)
    );
    assert_eq!(exchange(&a, "b", &request("b", &["r0"], None)).map(|_| ()).err(), None);
    assert_eq!(
        plan_exchange(
            &who("b"),
            &delegate("a"),
            &a,
            &task(),
            &catalog(),
            &request("b", &["r0"], None),
            limits(0),
            t0()
        )
        .err(),
        Some(DelegationError::Disabled)
    );
}

#[test]
fn a_three_hop_chain_carries_act_and_the_chain() {
    let a = root("a", &["r0", "r1", "r2"], 600);
    let b = child(&a, "a", &request("b", &["r0", "r1"], Some(500)), 3).unwrap();
    let c = child(&b, "b", &request("c", &["r0"], None), 3).unwrap();
    let d = child(&c, "c", &request("d", &[], Some(10)), 3).unwrap();
    let claims = d.claims();
    assert_eq!(claims.sub, id("a").to_string());
    assert_eq!(claims.client_id, id("d").to_string());
    assert_eq!(claims.scope, "r0");
    assert_eq!(claims.depth(), 3);
    assert_eq!(
        claims.act.as_ref().unwrap().actors(),
        [id("d").to_string(), id("c").to_string(), id("b").to_string()]
    );
    let holders: Vec<&str> = claims.tessera_chain.iter().map(|h| h.sub.as_str()).collect();
    assert_eq!(holders, [id("a").to_string(), id("b").to_string(), id("c").to_string()]);
    assert_eq!(claims.tessera_chain[0].jti, "root-a");
    assert_eq!(claims.tessera_chain[0].scope, "r0 r1 r2");
    // Default lifetime (300 s) fits under B's 500 s; D asked for 10 s.
    assert_eq!(c.claims().exp, (t0() + Duration::seconds(300)).timestamp());
    assert_eq!(claims.exp, (t0() + Duration::seconds(10)).timestamp());
    check_chain(claims).unwrap();
    check_chain(a.claims()).unwrap();

    // One hop too many.
    refused(
        &d,
        "d",
        &request("e", &[], None),
        &DelegationError::TooDeep { depth: 4, max: 3 },
    );
}

#[test]
fn the_default_lifetime_is_cut_at_the_parents_expiry() {
    let a = root("a", &["r0"], 60);
    let b = child(&a, "a", &request("b", &[], None), 3).unwrap();
    assert_eq!(b.claims().exp, a.claims().exp);
    assert_eq!(b.claims().scope, "r0");
}

#[test]
fn every_widening_or_foreign_request_is_refused_with_its_reason() {
    let a = root("a", &["r0", "r1"], 600);
    refused(
        &a,
        "a",
        &request("b", &["r0", "r2"], None),
        &DelegationError::WiderScope("`r2`".into()),
    );
    refused(
        &a,
        "a",
        &request("b", &["w0"], None),
        &DelegationError::HigherClass {
            requested: ScopeClass::Write,
            parent: ScopeClass::Read,
        },
    );
    refused(
        &a,
        "a",
        &request("b", &["r0"], Some(601)),
        &DelegationError::LaterExpiry {
            requested: t0() + Duration::seconds(601),
            parent: t0() + Duration::seconds(600),
        },
    );
    let mut other_aud = request("b", &["r0"], None);
    other_aud.audience = Some(Audience::parse("billing").unwrap());
    refused(
        &a,
        "a",
        &other_aud,
        &DelegationError::OtherAudience {
            requested: Audience::parse("billing").unwrap(),
            parent: aud(),
        },
    );
    let mut other_task = request("b", &["r0"], None);
    other_task.task_id = Some(TaskId::parse("t2").unwrap());
    refused(
        &a,
        "a",
        &other_task,
        &DelegationError::OtherTask {
            requested: TaskId::parse("t2").unwrap(),
            parent: TaskId::parse("t1").unwrap(),
        },
    );
    // Naming the parent's own task and audience is fine.
    let mut same = request("b", &["r0"], None);
    same.task_id = Some(TaskId::parse("t1").unwrap());
    same.audience = Some(aud());
    child(&a, "a", &same, 3).unwrap();

    refused(
        &a,
        "b",
        &request("c", &["r0"], None),
        &DelegationError::NotHolder(id("b").to_string()),
    );
    refused(&a, "a", &request("a", &["r0"], None), &DelegationError::ToSelf);
    refused(
        &a,
        "a",
        &request("outsider", &["r0"], None),
        &DelegationError::DelegateNotAssigned {
            delegate: id("outsider").to_string(),
            task: TaskId::parse("t1").unwrap(),
        },
    );
    refused(
        &a,
        "a",
        &request("verifier", &["r0"], None),
        &DelegationError::DelegateNotAnAgent(id("verifier").to_string()),
    );
    let got = child(&a, "a", &request("b", &["nope"], None), 3);
    assert!(matches!(got, Err(DelegationError::Catalog(_))), "{got:?}");
    assert_eq!(got.unwrap_err().kind(), ErrorKind::InvalidArgument);
    let got = child(&a, "a", &request("b", &[], None), 0);
    assert_eq!(got.err(), Some(DelegationError::Disabled));
}

#[test]
fn a_dead_parent_or_task_delegates_nothing() {
    let a = root("a", &["r0"], 600);
    let mut revoked = a.grant().clone();
    revoked.state = GrantState::Revoked;
    let dead = ParentToken::bind(a.claims().clone(), revoked).unwrap();
    refused(&dead, "a", &request("b", &[], None), &DelegationError::ParentNotLive);

    let mut over = task();
    over.state = TaskState::Completed;
    let got = plan_delegation(
        &who("a"),
        &a,
        &delegate("b"),
        &over,
        &catalog(),
        &request("b", &[], None),
        limits(3),
        t0(),
    );
    assert_eq!(got.unwrap_err().kind(), ErrorKind::FailedPrecondition);

    // Claims that do not match their grant are not a parent.
    let mut edited = a.claims().clone();
    edited.scope = "r0 r1".into();
    assert_eq!(
        ParentToken::bind(edited, a.grant().clone()).err(),
        Some(DelegationError::ParentNotLive)
    );
}

#[test]
fn an_edited_chain_is_refused() {
    let a = root("a", &["r0", "r1"], 600);
    let b = child(&a, "a", &request("b", &["r0", "r1"], None), 3).unwrap();
    let c = child(&b, "b", &request("c", &["r0"], None), 3).unwrap();
    let good = c.claims().clone();
    check_chain(&good).unwrap();

    let mut e = good.clone();
    e.act = Actor::nest([id("c").to_string(), id("x").to_string()]);
    assert_eq!(check_chain(&e), Err(ChainError::Actors));
    let mut e = good.clone();
    e.act = Actor::nest([id("c").to_string()]);
    assert_eq!(check_chain(&e), Err(ChainError::Shape));
    let mut e = good.clone();
    e.act = None;
    assert_eq!(check_chain(&e), Err(ChainError::Shape));
    let mut e = good.clone();
    e.sub = id("b").to_string();
    assert_eq!(check_chain(&e), Err(ChainError::Subject));
    let mut e = good.clone();
    e.client_id = id("d").to_string();
    assert_eq!(check_chain(&e), Err(ChainError::Actors));
    let mut e = good.clone();
    e.tessera_chain[1].scope = "r0 r1 r2".into();
    assert_eq!(check_chain(&e), Err(ChainError::WiderScope { hop: 0 }));
    let mut e = good.clone();
    e.scope = "r0 r2".into();
    assert_eq!(check_chain(&e), Err(ChainError::WiderScope { hop: 1 }));
    let mut e = good.clone();
    e.exp += 1_000;
    assert_eq!(check_chain(&e), Err(ChainError::LaterExpiry { hop: 1 }));
    let mut e = good;
    e.act = None;
    e.tessera_chain.clear();
    e.sub = e.client_id.clone();
    check_chain(&e).unwrap();
}

/// A random subset of r0..r7 (never empty).
fn subset() -> impl Strategy<Value = BTreeSet<String>> {
    proptest::collection::btree_set(0u8..8, 1..=8).prop_map(|s| s.into_iter().map(|i| format!("r{i}")).collect())
}

proptest! {
    /// Random delegation chains: every narrowing hop is minted, every
    /// widening or lengthening one is refused, and every minted token's
    /// chain passes the verifier's check.
    #[test]
    fn no_widening_chain_is_minted_and_every_narrowing_one_is(
        root_scopes in subset(),
        root_secs in 1i64..3600,
        hops in proptest::collection::vec((subset(), proptest::option::of(1u64..4000)), 1..6),
    ) {
        let names = ["a", "b", "c", "d", "e"];
        let list: Vec<&str> = root_scopes.iter().map(String::as_str).collect();
        let mut parent = root("a", &list, root_secs);
        for (i, (wanted, ttl)) in hops.iter().enumerate() {
            let caller = names[i % names.len()];
            let to = names[(i + 1) % names.len()];
            let list: Vec<&str> = wanted.iter().map(String::as_str).collect();
            let req = request(to, &list, *ttl);
            let parent_scopes: BTreeSet<&str> = parent.claims().scopes().collect();
            let narrows = wanted.iter().all(|s| parent_scopes.contains(s.as_str()));
            let fits = ttl.is_none_or(|t| t0().timestamp() + i64::try_from(t).unwrap() <= parent.claims().exp);
            let deep_enough = i < 3;
            match child(&parent, caller, &req, 3) {
                Ok(next) => {
                    prop_assert!(narrows && fits && deep_enough, "minted a widening child at hop {i}");
                    let c = next.claims();
                    let p = parent.claims();
                    prop_assert!(c.scopes().all(|s| parent_scopes.contains(s)));
                    prop_assert!(c.exp <= p.exp);
                    prop_assert_eq!(&c.aud, &p.aud);
                    prop_assert_eq!(&c.task_id, &p.task_id);
                    prop_assert_eq!(c.depth(), p.depth() + 1);
                    prop_assert_eq!(check_chain(c), Ok(()));
                    parent = next;
                }
                Err(e) => {
                    prop_assert!(!(narrows && fits && deep_enough), "refused a narrowing child at hop {i}: {e}");
                    break;
                }
            }
        }
    }

    /// Random chains of hops: the verifier's check accepts exactly those
    /// where no hop widens its parent's scopes or outlives it.
    #[test]
    fn the_chain_check_accepts_exactly_the_narrowing_chains(
        hops in proptest::collection::vec((subset(), 0i64..1000), 2..8),
    ) {
        let holder = |i: usize| id(&format!("h{i}")).to_string();
        let n = hops.len() - 1;
        let chain: Vec<ChainHop> = hops[..n]
            .iter()
            .enumerate()
            .map(|(i, (s, exp))| ChainHop {
                jti: format!("j{i}"),
                sub: holder(i),
                scope: s.iter().cloned().collect::<Vec<_>>().join(" "),
                exp: *exp,
            })
            .collect();
        let (own_scopes, own_exp) = &hops[n];
        let claims = AccessClaims {
            iss: ISS.into(),
            sub: holder(0),
            aud: "crm".into(),
            exp: *own_exp,
            nbf: 0,
            iat: 0,
            jti: "own".into(),
            scope: own_scopes.iter().cloned().collect::<Vec<_>>().join(" "),
            client_id: holder(n),
            task_id: "t1".into(),
            cnf: None,
            act: Actor::nest((1..=n).rev().map(holder)),
            tessera_chain: chain,
            authorization_details: Vec::new(),
        };
        let narrowing = hops.windows(2).all(|w| w[1].0.is_subset(&w[0].0) && w[1].1 <= w[0].1);
        prop_assert_eq!(check_chain(&claims).is_ok(), narrowing);
    }
}
