//! Properties of the engine over generated policy sets and questions:
//! adding a forbid never turns a deny into an allow, adding a permit never
//! turns an allow into a deny (TEST-MATRIX P2), and oversized questions are
//! refused before evaluation while bounded ones are evaluated (P3).

use proptest::prelude::*;

use crate::policy::tests::fixture::{PEOPLE, aud, entities, facts, id, now, scope_of, task, who};
use crate::policy::{
    Delegation, MAX_DELEGATION_CHAIN, MAX_SET_ITEMS, Operation, PolicyEngine, PolicyEntities, PolicyError, PolicyFile,
    PolicyQuery, TaskAction, TokenAction,
};
use crate::task::ScopeClass;

/// Action scopes a generated policy may have, and conditions valid for each
/// (strict validation refuses a token condition on a task action).
const ANY_ACTION: &str = "action";
const TOKEN_ACTION: &str = "action == Action::\"RequestToken\"";
const TASK_ACTIONS: &str = "action in [Action::\"StartTask\", Action::\"GetTask\", Action::\"CompleteTask\"]";
const ADMIN_ACTIONS: &str = "action in [Action::\"ListGrants\", Action::\"RevokeAll\", Action::\"Introspect\"]";

const PRINCIPAL_CONDITIONS: &[&str] = &[
    "true",
    "principal.kind == \"agent\"",
    "principal.kind == \"service\"",
    "principal.kind == \"partner\"",
    "principal.kind == \"human\"",
    "principal.owner == \"team-a\"",
    "principal.roles.contains(\"operator\")",
    "principal.roles.contains(\"agent\")",
    "principal.roles.contains(\"orchestrator\")",
    "principal == Identity::\"spiffe://td/agent\"",
];

const TOKEN_CONDITIONS: &[&str] = &[
    "context.class == \"read\"",
    "context.class == \"write\"",
    "context.high_impact",
    "context.requested_ttl > 300",
    "context.hour < 12",
    "context.task.remaining_secs > 1800",
    "context.task.labels.contains(\"env=prod\")",
    "context.task.agents.contains(principal)",
    "context.scopes.contains(\"write\")",
    "context.delegation_depth > 0",
    "resource == Api::\"crm\"",
];

const TASK_CONDITIONS: &[&str] = &[
    "context has task && context.task.orchestrator == principal",
    "context has task && context.task.remaining_secs > 60",
    "context has task && context.task.agent_owners.contains(principal.owner)",
    "context.hour >= 6",
];

/// One generated policy's text.
fn policy() -> impl Strategy<Value = String> {
    let effect = prop_oneof![Just("permit"), Just("forbid")];
    let scoped = prop_oneof![
        (Just(ANY_ACTION), proptest::sample::select(PRINCIPAL_CONDITIONS)),
        (
            Just(TOKEN_ACTION),
            prop_oneof![
                proptest::sample::select(PRINCIPAL_CONDITIONS),
                proptest::sample::select(TOKEN_CONDITIONS)
            ]
        ),
        (
            Just(TASK_ACTIONS),
            prop_oneof![
                proptest::sample::select(PRINCIPAL_CONDITIONS),
                proptest::sample::select(TASK_CONDITIONS)
            ]
        ),
        (Just(ADMIN_ACTIONS), proptest::sample::select(PRINCIPAL_CONDITIONS)),
    ];
    let negate = any::<bool>();
    let annotate = prop_oneof![
        Just(""),
        Just("@approval(\"required\") "),
        Just("@max_ttl(\"120\") "),
        Just("@max_blast_radius(\"10\") ")
    ];
    (effect, scoped, negate, annotate).prop_map(|(effect, (action, cond), negate, annotate)| {
        let annotate = if effect == "permit" { annotate } else { "" };
        let clause = if negate { "unless" } else { "when" };
        format!("{annotate}{effect} (principal, {action}, resource) {clause} {{ {cond} }};\n")
    })
}

fn engine(policies: &[String]) -> PolicyEngine {
    PolicyEngine::load(&[PolicyFile::new("gen.cedar", policies.concat())]).unwrap()
}

/// A question: (principal, which query).
fn question() -> impl Strategy<Value = (usize, usize, ScopeClass, bool)> {
    (
        0..PEOPLE.len(),
        0..8usize,
        prop_oneof![
            Just(ScopeClass::Discover),
            Just(ScopeClass::Read),
            Just(ScopeClass::Write),
            Just(ScopeClass::Admin)
        ],
        any::<bool>(),
    )
}

fn allowed(engine: &PolicyEngine, entities: &PolicyEntities, q: (usize, usize, ScopeClass, bool)) -> bool {
    decide(engine, entities, q).is_allow()
}

/// The whole decision (ids of the deciding policies, reasons, limits).
fn decide(
    engine: &PolicyEngine,
    entities: &PolicyEntities,
    q: (usize, usize, ScopeClass, bool),
) -> crate::policy::PolicyDecision {
    ask(q, |who, query| engine.authorize(entities, who, query, now()).unwrap())
}

/// Calls `f` with the question `q` names.
fn ask<T>(
    (person, which, class, high_impact): (usize, usize, ScopeClass, bool),
    f: impl FnOnce(&crate::identity::VerifiedIdentity, &PolicyQuery<'_>) -> T,
) -> T {
    let (audience, task, scopes) = (aud(), task(), scope_of(class));
    let chain = [id("agent")];
    let delegate = id("agent2");
    let mut delegated = facts(&audience, &scopes, class, high_impact);
    delegated.delegation = Some(Delegation {
        depth: 1,
        chain: &chain,
        delegate: &delegate,
        exchange: false,
        delegate_serves_audience: false,
    });
    let query = match which {
        0 => PolicyQuery::Token {
            action: TokenAction::Request,
            task: &task,
            facts: facts(&audience, &scopes, class, high_impact),
        },
        1 => PolicyQuery::Token {
            action: TokenAction::Delegate,
            task: &task,
            facts: delegated,
        },
        2 => PolicyQuery::Task {
            action: TaskAction::Start,
            id: &task.id,
            task: Some(&task),
        },
        3 => PolicyQuery::Task {
            action: TaskAction::Get,
            id: &task.id,
            task: Some(&task),
        },
        4 => PolicyQuery::Task {
            action: TaskAction::Complete,
            id: &task.id,
            task: None,
        },
        5 => PolicyQuery::Operation(Operation::ListGrants),
        6 => PolicyQuery::Operation(Operation::RevokeAll),
        _ => PolicyQuery::Operation(Operation::Introspect),
    };
    f(&who(PEOPLE[person].0), &query)
}

/// Seconds after `now()` a question may be asked at: other hours of the
/// day, and more or less than half an hour left of the task (its deadline
/// is an hour after `now()`).
const MOMENTS: [i64; 5] = [0, 1799, 1801, 7 * 3600, 13 * 3600];

/// Every question of the generator's domain.
fn every_question() -> Vec<(usize, usize, ScopeClass, bool)> {
    let mut all = Vec::new();
    for person in 0..PEOPLE.len() {
        for which in 0..8 {
            for class in [
                ScopeClass::Discover,
                ScopeClass::Read,
                ScopeClass::Write,
                ScopeClass::Admin,
            ] {
                for high_impact in [false, true] {
                    all.push((person, which, class, high_impact));
                }
            }
        }
    }
    all
}

/// Evaluating only the policies whose action scope can match decides
/// exactly as evaluating the whole set: on the shipped baseline, every
/// question, the same decision, deciding policies and reasons.
#[test]
fn the_per_action_slices_decide_as_the_whole_baseline() {
    let ents = entities();
    let sliced = PolicyEngine::baseline().unwrap();
    let whole = sliced.unsliced();
    for q in every_question() {
        assert_eq!(
            format!("{:?}", decide(&sliced, &ents, q)),
            format!("{:?}", decide(&whole, &ents, q)),
            "{q:?}"
        );
    }
}

/// A set that reads no clock gets one key at any time; one that reads the
/// hour or the task's time left gets a key per value of it. Delegations
/// and task actions are not kept.
#[test]
fn a_key_holds_the_hour_and_the_time_left_only_for_a_set_that_reads_them() {
    let read = (0, 0, ScopeClass::Read, false);
    let key = |engine: &PolicyEngine, offset: i64| {
        let at = now() + chrono::Duration::seconds(offset);
        ask(read, |who, query| engine.decision_key(who, query, at)).unwrap()
    };
    let timeless = engine(&["permit (principal, action, resource);\n".into()]);
    assert_eq!(key(&timeless, 0), key(&timeless, 13 * 3600));
    let by_hour = engine(&["permit (principal, action, resource) when { context.hour < 12 };\n".into()]);
    assert_eq!(key(&by_hour, 0), key(&by_hour, 60));
    assert_ne!(key(&by_hour, 0), key(&by_hour, 13 * 3600));
    let by_time_left = engine(&[
        "permit (principal, action == Action::\"RequestToken\", resource) when { context.task.remaining_secs > 60 };\n"
            .into(),
    ]);
    assert_ne!(key(&by_time_left, 0), key(&by_time_left, 1));
    assert_ne!(
        key(&timeless, 0),
        ask((1, 0, ScopeClass::Read, false), |w, q| timeless.decision_key(
            w,
            q,
            now()
        ))
        .unwrap()
    );
    assert_ne!(
        key(&timeless, 0),
        ask((0, 0, ScopeClass::Write, false), |w, q| timeless.decision_key(
            w,
            q,
            now()
        ))
        .unwrap()
    );
    assert_ne!(
        key(&timeless, 0),
        ask((0, 0, ScopeClass::Read, true), |w, q| timeless.decision_key(
            w,
            q,
            now()
        ))
        .unwrap()
    );
    for which in 1..=4 {
        let kept = ask((0, which, ScopeClass::Read, false), |w, q| {
            timeless.decision_key(w, q, now())
        });
        assert!(kept.is_none(), "question {which} is not kept");
    }
}

fn with_ids(policies: &[String], extra: &str) -> Vec<String> {
    let mut all = policies.to_vec();
    all.push(extra.to_owned());
    all
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn the_per_action_slices_decide_as_the_whole_set(
        base in proptest::collection::vec(policy(), 1..12),
        questions in proptest::collection::vec(question(), 1..16),
    ) {
        let ents = entities();
        let sliced = engine(&base);
        let whole = sliced.unsliced();
        for q in questions {
            prop_assert_eq!(
                format!("{:?}", decide(&sliced, &ents, q)),
                format!("{:?}", decide(&whole, &ents, q)),
                "{:?}", q
            );
        }
    }

    /// The decision cache's key holds the whole question: two questions
    /// with one key, asked at any two moments, get one decision, also from
    /// sets reading `context.hour` and `context.task.remaining_secs`.
    #[test]
    fn one_decision_key_names_one_decision(
        base in proptest::collection::vec(policy(), 1..10),
        questions in proptest::collection::vec(question(), 1..12),
    ) {
        let ents = entities();
        let engine = engine(&base);
        let mut seen: std::collections::HashMap<crate::policy::DecisionKey, String> = Default::default();
        for q in questions {
            for offset in MOMENTS {
                let at = now() + chrono::Duration::seconds(offset);
                let (key, decision) = ask(q, |who, query| {
                    (engine.decision_key(who, query, at), engine.authorize(&ents, who, query, at).unwrap())
                });
                let Some(key) = key else { continue };
                let decision = format!("{decision:?}");
                match seen.get(&key) {
                    Some(first) => prop_assert_eq!(first, &decision, "{:?} at +{}s", q, offset),
                    None => { seen.insert(key, decision); }
                }
            }
        }
    }

    #[test]
    fn adding_a_forbid_never_allows_more(
        base in proptest::collection::vec(policy(), 1..8),
        extra in policy().prop_filter("a forbid", |p| p.starts_with("forbid")),
        questions in proptest::collection::vec(question(), 1..12),
    ) {
        let ents = entities();
        let before = engine(&base);
        let after = engine(&with_ids(&base, &extra));
        for q in questions {
            if !allowed(&before, &ents, q) {
                prop_assert!(!allowed(&after, &ents, q), "{extra} turned a deny into an allow for {q:?}");
            }
        }
    }

    #[test]
    fn adding_a_permit_never_allows_less(
        base in proptest::collection::vec(policy(), 1..8),
        extra in policy().prop_filter("a permit", |p| !p.starts_with("forbid")),
        questions in proptest::collection::vec(question(), 1..12),
    ) {
        let ents = entities();
        let before = engine(&base);
        let after = engine(&with_ids(&base, &extra));
        for q in questions {
            if allowed(&before, &ents, q) {
                prop_assert!(allowed(&after, &ents, q), "{extra} turned an allow into a deny for {q:?}");
            }
        }
    }

    #[test]
    fn bounded_questions_are_evaluated_and_oversized_ones_refused(
        labels in 0..(MAX_SET_ITEMS + 64),
        label_len in 0..5000usize,
        hops in 0..(MAX_DELEGATION_CHAIN + 8),
    ) {
        let (engine, ents, audience) = (PolicyEngine::baseline().unwrap(), entities(), aud());
        let scopes = scope_of(ScopeClass::Read);
        let mut big = task();
        for i in 0..labels {
            big.labels.insert(format!("k{i}"), "v".repeat(label_len.min(64)));
        }
        big.labels.insert("long".into(), "x".repeat(label_len));
        let chain: Vec<_> = (0..hops).map(|i| id(&format!("hop{i}"))).collect();
        let delegate = id("agent2");
        let mut f = facts(&audience, &scopes, ScopeClass::Read, false);
        f.delegation = Some(Delegation {
            depth: 1,
            chain: &chain,
            delegate: &delegate,
            exchange: false,
            delegate_serves_audience: false,
        });
        let query = PolicyQuery::Token { action: TokenAction::Delegate, task: &big, facts: f };
        let oversized = big.labels.len() > MAX_SET_ITEMS
            || label_len > crate::policy::MAX_STRING_BYTES
            || hops > MAX_DELEGATION_CHAIN;
        match engine.authorize(&ents, &who("agent"), &query, now()) {
            Err(PolicyError::ContextTooLarge { .. }) => prop_assert!(oversized),
            Err(e) => prop_assert!(false, "{e}"),
            Ok(_) => prop_assert!(!oversized),
        }
    }
}
