//! The shipped baseline (`deploy/policies/baseline.cedar`) over a matrix of
//! principals (every identity kind), scopes (every class, high-impact or
//! not) and contexts: allow (with its TTL cap), approval, or deny with reason.

use crate::identity::SpiffeId;
use crate::policy::tests::fixture::{aud, entities, facts, id, now, scope_of, task, who};
use crate::policy::{
    Delegation, Operation, PolicyDecision, PolicyEngine, PolicyEntities, PolicyQuery, TaskAction, TokenAction,
};
use crate::task::{ScopeClass, TaskId};

/// What a row expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Allowed outright, tokens capped at this many seconds (if any).
    Allow(Option<u32>),
    /// Allowed once a person approves, capped at this many seconds.
    Approval(u32),
    /// Denied; a reason contains this.
    Deny(&'static str),
}
use Expect::{Allow, Approval, Deny};

const NO_PERMIT: &str = "no policy permits";

struct Table {
    engine: PolicyEngine,
    entities: PolicyEntities,
}

impl Table {
    fn new() -> Self {
        Self {
            engine: PolicyEngine::baseline().unwrap(),
            entities: entities(),
        }
    }

    #[track_caller]
    fn check(&self, name: &str, query: &PolicyQuery<'_>, expected: Expect) {
        let decision = self.engine.authorize(&self.entities, &who(name), query, now()).unwrap();
        assert_eq!(decision.policy_hash(), self.engine.hash());
        let ok = match (&decision, expected) {
            (
                PolicyDecision::Allow {
                    approval_required,
                    max_ttl,
                    policy_ids,
                    ..
                },
                Allow(ttl),
            ) => !approval_required && *max_ttl == ttl && !policy_ids.is_empty(),
            (
                PolicyDecision::Allow {
                    approval_required,
                    max_ttl,
                    ..
                },
                Approval(ttl),
            ) => *approval_required && *max_ttl == Some(ttl),
            (PolicyDecision::Deny { reasons, .. }, Deny(why)) => reasons.iter().any(|r| r.contains(why)),
            _ => false,
        };
        assert!(
            ok,
            "{name} {} {}: expected {expected:?}, got {decision:?}",
            query.action(),
            query.describe_resource()
        );
    }

    #[track_caller]
    fn token(&self, name: &str, class: ScopeClass, high_impact: bool, expected: Expect) {
        let (audience, scopes, task) = (aud(), scope_of(class), task());
        let query = PolicyQuery::Token {
            action: TokenAction::Request,
            task: &task,
            facts: facts(&audience, &scopes, class, high_impact),
        };
        self.check(name, &query, expected);
    }
}

const DISCOVER: ScopeClass = ScopeClass::Discover;
const READ: ScopeClass = ScopeClass::Read;
const WRITE: ScopeClass = ScopeClass::Write;
const ADMIN: ScopeClass = ScopeClass::Admin;

#[test]
fn token_requests_by_kind_class_and_impact() {
    let t = Table::new();
    let humans = "humans never hold write or admin tokens";
    let partners_admin = "partners never hold admin-class tokens";
    let agent_role = "does not hold the agent role";
    #[rustfmt::skip]
    let rows: &[(&str, ScopeClass, bool, Expect)] = &[
        // Agents read for minutes, write shorter, admin only approved.
        ("agent", DISCOVER, false, Allow(Some(600))),
        ("agent", READ, false, Allow(Some(600))),
        ("agent", WRITE, false, Allow(Some(300))),
        ("agent", ADMIN, false, Approval(300)),
        ("agent", READ, true, Approval(300)),
        ("agent", WRITE, true, Approval(300)),
        ("agent", ADMIN, true, Approval(300)),
        // Services read longer than agents, write shorter than they read.
        ("service", DISCOVER, false, Allow(Some(1800))),
        ("service", READ, false, Allow(Some(1800))),
        ("service", WRITE, false, Allow(Some(600))),
        ("service", ADMIN, false, Approval(300)),
        ("service", READ, true, Approval(300)),
        ("service", WRITE, true, Approval(300)),
        // Partners read briefly, never write unapproved, never admin.
        ("partner", DISCOVER, false, Allow(Some(300))),
        ("partner", READ, false, Allow(Some(300))),
        ("partner", WRITE, false, Approval(300)),
        ("partner", ADMIN, false, Deny(partners_admin)),
        ("partner", READ, true, Approval(300)),
        ("partner", WRITE, true, Approval(300)),
        ("partner", ADMIN, true, Deny(partners_admin)),
        // Humans get no tokens from the baseline, and never write ones.
        ("human", DISCOVER, false, Deny(NO_PERMIT)),
        ("human", READ, false, Deny(NO_PERMIT)),
        ("human", WRITE, false, Deny(humans)),
        ("human", ADMIN, false, Deny(humans)),
        ("human", READ, true, Deny(NO_PERMIT)),
        ("human", WRITE, true, Deny(humans)),
        // Without the agent role nobody asks for tokens.
        ("norole", READ, false, Deny(agent_role)),
        ("norole", WRITE, true, Deny(agent_role)),
        ("orchestrator", READ, false, Deny(agent_role)),
        ("operator", READ, false, Deny(agent_role)),
        ("verifier", DISCOVER, false, Deny(agent_role)),
    ];
    for (name, class, high_impact, expected) in rows {
        t.token(name, *class, *high_impact, *expected);
    }
}

#[test]
fn delegation_stays_within_the_task_and_three_hops() {
    let t = Table::new();
    let (audience, task) = (aud(), task());
    let chain = [id("agent")];
    let delegate = |to: &SpiffeId, depth: u32, class: ScopeClass, high_impact: bool, expected: Expect| {
        let scopes = scope_of(class);
        let mut f = facts(&audience, &scopes, class, high_impact);
        f.delegation = Some(Delegation {
            depth,
            chain: &chain,
            delegate: to,
            exchange: false,
            delegate_serves_audience: false,
        });
        let query = PolicyQuery::Token {
            action: TokenAction::Delegate,
            task: &task,
            facts: f,
        };
        t.check("agent", &query, expected);
    };
    delegate(&id("agent2"), 1, READ, false, Allow(Some(300)));
    delegate(&id("agent2"), 2, WRITE, false, Allow(Some(300)));
    delegate(&id("agent2"), 3, READ, false, Allow(Some(300)));
    delegate(&id("agent2"), 4, READ, false, Deny(NO_PERMIT));
    delegate(&id("agent2"), 1, ADMIN, false, Deny(NO_PERMIT));
    delegate(
        &id("agent2"),
        1,
        READ,
        true,
        Deny("high-impact tokens are never delegated"),
    );
    // Not an agent, or not in the task.
    delegate(&id("service"), 1, READ, false, Deny(NO_PERMIT));
    delegate(&id("verifier"), 1, READ, false, Deny(NO_PERMIT));
    // An unregistered delegate cannot be evaluated: denied.
    delegate(&id("ghost"), 1, READ, false, Deny("policy evaluation failed"));
}

#[test]
fn approvers_are_operators_and_never_the_requester() {
    let t = Table::new();
    let (audience, task, scopes) = (aud(), task(), scope_of(WRITE));
    let approve = |approver: &str, requester: Option<&SpiffeId>, expected: Expect| {
        let mut f = facts(&audience, &scopes, WRITE, true);
        f.requester = requester;
        let query = PolicyQuery::Token {
            action: TokenAction::Approve,
            task: &task,
            facts: f,
        };
        t.check(approver, &query, expected);
    };
    approve("operator", Some(&id("agent")), Allow(None));
    approve("operator2", Some(&id("operator")), Allow(None));
    approve(
        "operator",
        Some(&id("operator")),
        Deny("the requester can never approve its own request"),
    );
    approve(
        "operator",
        None,
        Deny("the requester can never approve its own request"),
    );
    approve(
        "agent-operator",
        Some(&id("agent")),
        Deny("agents never approve requests"),
    );
    approve("agent", Some(&id("agent2")), Deny("agents never approve requests"));
    approve("human", Some(&id("agent")), Deny(NO_PERMIT));
    approve("orchestrator", Some(&id("agent")), Deny(NO_PERMIT));
}

#[test]
fn tasks_start_for_the_orchestrators_own_agents() {
    let t = Table::new();
    let task = task();
    let mut foreign = task.clone();
    foreign.agents.insert(id("operator"));
    let mut unregistered = task.clone();
    unregistered.agents.insert(id("ghost"));
    let owners = "an orchestrator starts tasks only for agents its owner owns";
    let role = "does not hold the orchestrator role";
    let start = |name: &str, task: &crate::task::Task, expected: Expect| {
        let query = PolicyQuery::Task {
            action: TaskAction::Start,
            id: &task.id,
            task: Some(task),
        };
        t.check(name, &query, expected);
    };
    start("orchestrator", &task, Allow(None));
    start("orchestrator", &foreign, Deny(owners));
    start("orchestrator", &unregistered, Deny(owners));
    start("other-orchestrator", &task, Deny(owners));
    start("agent", &task, Deny(role));
    start("operator", &task, Deny(role));
}

#[test]
fn tasks_are_ended_and_read_by_their_orchestrator_agents_and_operators() {
    let t = Table::new();
    let task = task();
    let missing = TaskId::parse("missing").unwrap();
    let ask = |name: &str, action: TaskAction, present: bool, expected: Expect| {
        let query = PolicyQuery::Task {
            action,
            id: if present { &task.id } else { &missing },
            task: present.then_some(&task),
        };
        t.check(name, &query, expected);
    };
    let orchestrator_role = "does not hold the orchestrator role";
    let operator_role = "does not hold the operator role";
    #[rustfmt::skip]
    let rows: &[(&str, TaskAction, bool, Expect)] = &[
        ("orchestrator", TaskAction::Complete, true, Allow(None)),
        ("other-orchestrator", TaskAction::Complete, true, Deny(NO_PERMIT)),
        ("operator", TaskAction::Complete, true, Allow(None)),
        ("agent", TaskAction::Complete, true, Deny(orchestrator_role)),
        ("orchestrator", TaskAction::Get, true, Allow(None)),
        ("agent", TaskAction::Get, true, Allow(None)),
        ("norole", TaskAction::Get, true, Allow(None)),
        ("operator", TaskAction::Get, true, Allow(None)),
        ("other-orchestrator", TaskAction::Get, true, Deny(NO_PERMIT)),
        ("verifier", TaskAction::Get, true, Deny(NO_PERMIT)),
        ("operator", TaskAction::Revoke, true, Allow(None)),
        ("operator", TaskAction::Revoke, false, Allow(None)),
        ("orchestrator", TaskAction::Revoke, true, Deny(operator_role)),
        ("agent", TaskAction::Revoke, false, Deny(operator_role)),
        // Without the task's facts only operators pass.
        ("orchestrator", TaskAction::Get, false, Deny(NO_PERMIT)),
        ("operator", TaskAction::Get, false, Allow(None)),
    ];
    for (name, action, present, expected) in rows {
        ask(name, *action, *present, *expected);
    }
}

#[test]
fn only_operators_use_the_admin_api_and_verifiers_check_tokens() {
    let t = Table::new();
    let admin = [
        Operation::ListGrants,
        Operation::RevokeGrant,
        Operation::RevokeIdentity,
        Operation::EnableIdentity,
        Operation::RevokeAll,
        Operation::ListApprovals,
        Operation::DecideApproval,
        Operation::BlastRadius,
        Operation::RotateSigningKey,
        Operation::ReloadPolicy,
    ];
    let operator_role = "does not hold the operator role";
    for op in admin {
        let query = PolicyQuery::Operation(op);
        t.check("operator", &query, Allow(None));
        t.check("agent-operator", &query, Allow(None));
        for name in ["agent", "service", "partner", "orchestrator", "verifier", "human"] {
            t.check(name, &query, Deny(operator_role));
        }
    }
    for op in [Operation::Introspect, Operation::WatchRevocations] {
        let query = PolicyQuery::Operation(op);
        t.check("verifier", &query, Allow(None));
        t.check("operator", &query, Allow(None));
        for name in ["agent", "orchestrator", "partner"] {
            t.check(name, &query, Deny("does not hold the verifier role"));
        }
    }
    let report = PolicyQuery::Operation(Operation::ReportMisuse);
    t.check("verifier", &report, Allow(None));
    for name in ["operator", "agent", "orchestrator", "partner"] {
        t.check(name, &report, Deny("does not hold the verifier role"));
    }
}

#[test]
fn denials_name_the_forbids_and_allows_the_permits() {
    let t = Table::new();
    let (audience, scopes, task) = (aud(), scope_of(WRITE), task());
    let query = PolicyQuery::Token {
        action: TokenAction::Request,
        task: &task,
        facts: facts(&audience, &scopes, WRITE, false),
    };
    let allowed = t.engine.authorize(&t.entities, &who("agent"), &query, now()).unwrap();
    assert_eq!(allowed.policy_ids(), [std::sync::Arc::from("agents-write")]);
    let denied = t.engine.authorize(&t.entities, &who("human"), &query, now()).unwrap();
    assert_eq!(denied.policy_ids(), [std::sync::Arc::from("humans-never-write")]);
    let no_permit = t
        .engine
        .authorize(
            &t.entities,
            &who("orchestrator"),
            &PolicyQuery::Operation(Operation::ListGrants),
            now(),
        )
        .unwrap();
    assert_eq!(
        no_permit.policy_ids(),
        [std::sync::Arc::from("admin-api-needs-operator-role")]
    );
}
