use std::collections::{BTreeMap, BTreeSet};

use chrono::Duration;

use super::*;
use crate::catalog::Api;
use crate::identity::{AttestationMethod, Identity, IdentityKind, IdentityRegistry, Role, SpiffeId};
use crate::task::{ScopeCeiling, TaskState};

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}
fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}
fn scope(s: &str) -> Scope {
    Scope::parse(s).unwrap()
}
fn aud() -> Audience {
    Audience::parse("crm").unwrap()
}

fn who(path: &str, roles: &[Role]) -> VerifiedIdentity {
    let identity = Identity {
        id: id(path),
        kind: IdentityKind::Agent,
        owner: "team".into(),
        max_ttl: Ttl::from_secs(600).unwrap(),
        roles: roles.iter().copied().collect(),
        disabled: false,
    };
    let registry = IdentityRegistry::new([identity]);
    VerifiedIdentity::attested(&registry, &id(path), AttestationMethod::X509, "sha256:x".into()).unwrap()
}

fn catalog() -> ApiCatalog {
    ApiCatalog::new([Api {
        audience: aud(),
        schema_version: "1".into(),
        scopes: BTreeMap::from([
            (scope("contacts.read"), ScopeClass::Read),
            (scope("notes.read"), ScopeClass::Read),
            (scope("contacts.write"), ScopeClass::Write),
        ]),
        high_impact: BTreeSet::new(),
        verifiers: BTreeSet::new(),
    }])
}

fn task() -> Task {
    Task {
        tools: Vec::new(),
        id: TaskId::parse("t1").unwrap(),
        orchestrator: id("spiffe://td/orch"),
        agents: BTreeSet::from([id("spiffe://td/agent")]),
        ceiling: ScopeCeiling(BTreeMap::from([(
            aud(),
            BTreeSet::from([scope("contacts.read"), scope("contacts.write")]),
        )])),
        deadline: t0() + Duration::seconds(120),
        labels: BTreeMap::new(),
        parent: None,
        state: TaskState::Active,
        created_at: t0(),
        ended_at: None,
    }
}

fn request(scopes: &[&str], ttl: Option<u64>) -> TokenRequest {
    TokenRequest {
        tools: None,
        task_id: TaskId::parse("t1").unwrap(),
        audience: aud(),
        scopes: scopes.iter().map(|s| scope(s)).collect(),
        ttl: ttl.map(|t| Ttl::from_secs(t).unwrap()),
        binding: None,
    }
}

fn limits() -> TtlLimits {
    TtlLimits {
        default: Ttl::from_secs(300).unwrap(),
        max: Ttl::from_secs(3600).unwrap(),
    }
}

/// Classifies, then plans: what the broker does for every request.
fn plan(
    who: &VerifiedIdentity,
    task: &Task,
    catalog: &ApiCatalog,
    req: &TokenRequest,
    limits: TtlLimits,
    now: DateTime<Utc>,
) -> Result<GrantPlan, IssuanceError> {
    let classified = ClassifiedRequest::new(catalog, req)?;
    plan_grant(who, task, &classified, limits, now)
}

#[track_caller]
fn check(who: &VerifiedIdentity, task: &Task, req: &TokenRequest, expected: Result<u32, ErrorKind>) {
    let got = plan(who, task, &catalog(), req, limits(), t0());
    match (got, expected) {
        (Ok(plan), Ok(ttl)) => assert_eq!(plan.lifetime.ttl.as_secs(), ttl),
        (Err(e), Err(kind)) => assert_eq!(e.kind(), kind, "{e}"),
        (got, want) => panic!("got {got:?}, want {want:?}"),
    }
}

#[test]
fn an_assigned_agent_within_the_ceiling_gets_a_bounded_ttl() {
    let agent = who("spiffe://td/agent", &[Role::Agent]);
    // Task has 120 s left; identity max 600; request 900 is within broker max.
    check(&agent, &task(), &request(&["contacts.read"], Some(900)), Ok(120));
    check(&agent, &task(), &request(&["contacts.read"], Some(30)), Ok(30));
    let plan = plan(
        &agent,
        &task(),
        &catalog(),
        &request(&["contacts.write"], None),
        limits(),
        t0(),
    )
    .unwrap();
    assert_eq!(plan.class, ScopeClass::Write);
    assert_eq!(plan.lifetime.expires_at, task().deadline);
}

#[test]
fn refusals_have_the_right_kind() {
    let agent = who("spiffe://td/agent", &[Role::Agent]);
    let stranger = who("spiffe://td/stranger", &[Role::Agent]);
    check(
        &stranger,
        &task(),
        &request(&["contacts.read"], None),
        Err(ErrorKind::PermissionDenied),
    );
    check(
        &agent,
        &task(),
        &request(&["notes.read"], None),
        Err(ErrorKind::PermissionDenied),
    );
    check(
        &agent,
        &task(),
        &request(&["nope"], None),
        Err(ErrorKind::InvalidArgument),
    );
    check(
        &agent,
        &task(),
        &request(&["contacts.read", "contacts.write"], None),
        Err(ErrorKind::InvalidArgument),
    );
    check(
        &agent,
        &task(),
        &request(&["contacts.read"], Some(3601)),
        Err(ErrorKind::InvalidArgument),
    );

    let mut done = task();
    done.state = TaskState::Completed;
    check(
        &agent,
        &done,
        &request(&["contacts.read"], None),
        Err(ErrorKind::FailedPrecondition),
    );
    let mut late = task();
    late.deadline = t0();
    check(
        &agent,
        &late,
        &request(&["contacts.read"], None),
        Err(ErrorKind::FailedPrecondition),
    );
}

#[test]
fn a_stranger_learns_nothing_of_the_task() {
    let stranger = who("spiffe://td/stranger", &[Role::Agent]);
    let mut done = task();
    done.state = TaskState::Completed;
    let mut late = task();
    late.deadline = t0();
    for t in [done, late] {
        let e = plan(
            &stranger,
            &t,
            &catalog(),
            &request(&["contacts.read"], None),
            limits(),
            t0(),
        )
        .unwrap_err();
        assert!(matches!(e, IssuanceError::NotAssigned { .. }), "{e}");
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
    }
}

#[test]
fn malformed_requests_name_their_field() {
    let agent = who("spiffe://td/agent", &[Role::Agent]);
    let message = |req: &TokenRequest| {
        plan(&agent, &task(), &catalog(), req, limits(), t0())
            .unwrap_err()
            .to_string()
    };
    let mut other = request(&["contacts.read"], None);
    other.audience = Audience::parse("billing").unwrap();
    assert_eq!(message(&other), "audience: unknown audience `billing`");
    assert_eq!(
        message(&request(&["nope"], None)),
        "scopes: unknown scope `nope` for audience `crm`"
    );
    assert_eq!(message(&request(&[], None)), "scopes: no scopes requested");
    assert!(
        message(&request(&["contacts.read", "contacts.write"], None)).starts_with("scopes: scopes mix the classes")
    );
    assert_eq!(
        message(&request(&["contacts.read"], Some(3601))),
        "ttl_seconds: ttl of 3601s is above the maximum of 3600s"
    );
    // No time left is the task's state, not a bad field.
    let mut late = task();
    late.deadline = t0() + Duration::milliseconds(500);
    let e = plan(
        &agent,
        &late,
        &catalog(),
        &request(&["contacts.read"], None),
        limits(),
        t0(),
    )
    .unwrap_err();
    assert_eq!(e, IssuanceError::Ttl(TtlError::NoTimeLeft));
    assert_eq!(e.to_string(), "no time is left before the task's deadline");
}
