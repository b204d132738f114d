use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::catalog::Api;
use crate::identity::{AttestationMethod, Identity, IdentityKind, Role};
use crate::task::{Audience, Scope, ScopeClass};
use crate::ttl::Ttl;

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}
fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}
fn aud() -> Audience {
    Audience::parse("crm").unwrap()
}
fn scope(s: &str) -> Scope {
    Scope::parse(s).unwrap()
}

fn identity(path: &str, roles: &[Role]) -> Identity {
    Identity {
        id: id(path),
        kind: IdentityKind::Service,
        owner: "team".into(),
        max_ttl: Ttl::from_secs(600).unwrap(),
        roles: roles.iter().copied().collect(),
        disabled: false,
    }
}

fn registry() -> IdentityRegistry {
    IdentityRegistry::new([
        identity("spiffe://td/orch", &[Role::Orchestrator]),
        identity("spiffe://td/other-orch", &[Role::Orchestrator]),
        identity("spiffe://td/agent", &[Role::Agent]),
        identity("spiffe://td/ops", &[Role::Operator]),
    ])
}

fn who(path: &str) -> VerifiedIdentity {
    VerifiedIdentity::attested(&registry(), &id(path), AttestationMethod::X509, "d".into()).unwrap()
}

fn catalog() -> ApiCatalog {
    ApiCatalog::new([Api {
        audience: aud(),
        schema_version: "1".into(),
        scopes: BTreeMap::from([(scope("read"), ScopeClass::Read), (scope("write"), ScopeClass::Write)]),
        high_impact: BTreeSet::new(),
        verifiers: BTreeSet::new(),
    }])
}

fn req(task: &str, scopes: &[&str], secs: i64) -> StartTask {
    StartTask {
        tools: Vec::new(),
        task_id: TaskId::parse(task).unwrap(),
        agents: BTreeSet::from([id("spiffe://td/agent")]),
        ceiling: ScopeCeiling(BTreeMap::from([(aud(), scopes.iter().map(|s| scope(s)).collect())])),
        lifetime: TaskLifetime::Duration(Duration::seconds(secs)),
        labels: BTreeMap::new(),
        parent: None,
    }
}

#[track_caller]
fn check(who_path: &str, r: StartTask, parent: Option<&Task>, expected: Result<(), ErrorKind>) -> Option<Task> {
    let got = start_task(
        &who(who_path),
        r,
        &registry(),
        &catalog(),
        parent,
        &TaskLimits::default(),
        t0(),
    );
    match (got, expected) {
        (Ok(task), Ok(())) => Some(task),
        (Err(e), Err(kind)) => {
            assert_eq!(e.kind(), kind, "{e}");
            None
        }
        (got, want) => panic!("got {got:?}, want {want:?}"),
    }
}

#[test]
fn an_orchestrator_starts_a_task() {
    let task = check("spiffe://td/orch", req("t1", &["read"], 60), None, Ok(())).unwrap();
    assert_eq!(task.deadline, t0() + Duration::seconds(60));
    assert_eq!(task.orchestrator, id("spiffe://td/orch"));
    assert!(task.is_active_at(t0()));
    assert!(!task.is_active_at(task.deadline));
}

#[test]
fn bad_start_requests_are_refused() {
    check(
        "spiffe://td/orch",
        req("t1", &["nope"], 60),
        None,
        Err(ErrorKind::InvalidArgument),
    );
    check(
        "spiffe://td/orch",
        req("t1", &["read"], 0),
        None,
        Err(ErrorKind::InvalidArgument),
    );
    check(
        "spiffe://td/orch",
        req("t1", &["read"], 25 * 3600),
        None,
        Err(ErrorKind::InvalidArgument),
    );
    let mut r = req("t1", &["read"], 60);
    r.agents = BTreeSet::from([id("spiffe://td/unknown")]);
    check("spiffe://td/orch", r, None, Err(ErrorKind::InvalidArgument));
    let mut r = req("t1", &["read"], 60);
    r.agents.clear();
    check("spiffe://td/orch", r, None, Err(ErrorKind::InvalidArgument));
    let mut r = req("t1", &["read"], 60);
    r.labels.insert("bad key".into(), "v".into());
    check("spiffe://td/orch", r, None, Err(ErrorKind::InvalidArgument));
    let mut r = req("t1", &["read"], 60);
    r.parent = Some(TaskId::parse("missing").unwrap());
    check("spiffe://td/orch", r, None, Err(ErrorKind::NotFound));
}

#[test]
fn a_child_task_stays_inside_its_parent() {
    let parent = check("spiffe://td/orch", req("p", &["read"], 60), None, Ok(())).unwrap();
    let mut child = req("c", &["read"], 30);
    child.parent = Some(parent.id.clone());
    check("spiffe://td/orch", child.clone(), Some(&parent), Ok(()));
    check(
        "spiffe://td/other-orch",
        child.clone(),
        Some(&parent),
        Err(ErrorKind::PermissionDenied),
    );
    let mut wider = req("c", &["read", "write"], 30);
    wider.parent = Some(parent.id.clone());
    check(
        "spiffe://td/orch",
        wider,
        Some(&parent),
        Err(ErrorKind::PermissionDenied),
    );
    let mut longer = req("c", &["read"], 90);
    longer.parent = Some(parent.id.clone());
    check(
        "spiffe://td/orch",
        longer,
        Some(&parent),
        Err(ErrorKind::PermissionDenied),
    );
    let mut ended = parent.clone();
    ended.state = TaskState::Completed;
    check(
        "spiffe://td/orch",
        child,
        Some(&ended),
        Err(ErrorKind::FailedPrecondition),
    );
}

#[test]
fn an_orchestrator_may_not_assign_itself() {
    let both = identity("spiffe://td/both", &[Role::Orchestrator, Role::Agent]);
    let registry = IdentityRegistry::new([both, identity("spiffe://td/agent", &[Role::Agent])]);
    let who =
        VerifiedIdentity::attested(&registry, &id("spiffe://td/both"), AttestationMethod::X509, "d".into()).unwrap();
    let start = |agents: &[&str]| {
        let mut r = req("t1", &["read", "write"], 60);
        r.agents = agents.iter().map(|a| id(a)).collect();
        start_task(&who, r, &registry, &catalog(), None, &TaskLimits::default(), t0())
    };
    for agents in [&["spiffe://td/both"][..], &["spiffe://td/agent", "spiffe://td/both"]] {
        let e = start(agents).unwrap_err();
        assert_eq!(e, OrchestrationError::SelfAssigned);
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        assert_eq!(e.to_string(), "an orchestrator may not assign itself to its own task");
    }
    // Assigning others is still fine.
    assert!(start(&["spiffe://td/agent"]).is_ok());
}
