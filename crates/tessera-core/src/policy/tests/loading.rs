//! Loading: strict validation, errors with file and line, ids, annotations,
//! the hash; and requests built as the schema says.

use std::str::FromStr as _;

use crate::policy::tests::fixture::{aud, entities, facts, id, now, scope_of, task, who};
use crate::policy::{
    BASELINE, Delegation, Operation, PolicyDecision, PolicyEngine, PolicyError, PolicyFile, PolicyLoadError,
    PolicyQuery, SCHEMA, TaskAction, TokenAction,
};
use crate::task::ScopeClass;

fn load(files: &[(&str, &str)]) -> Result<PolicyEngine, PolicyLoadError> {
    let files: Vec<PolicyFile> = files.iter().map(|(n, t)| PolicyFile::new(*n, *t)).collect();
    PolicyEngine::load(&files)
}

#[track_caller]
fn refused(files: &[(&str, &str)], file: &str, line: usize, contains: &str) {
    match load(files) {
        Err(PolicyLoadError::Invalid {
            file: f,
            line: l,
            message,
        }) => {
            assert_eq!((f.as_str(), l), (file, line), "{message}");
            assert!(message.contains(contains), "{message}");
        }
        other => panic!("expected {file}:{line}, got {other:?}"),
    }
}

const PERMIT_OPERATORS: &str = r#"@id("ops")
permit (principal, action == Action::"ListGrants", resource)
when { principal.roles.contains("operator") };
"#;

#[test]
fn the_shipped_schema_and_baseline_load() {
    let (schema, _) = cedar_policy::Schema::from_cedarschema_str(SCHEMA).unwrap();
    assert!(schema.actions().count() >= crate::policy::Action::ALL.len());
    let engine = PolicyEngine::baseline().unwrap();
    assert!(engine.len() > 20, "{}", engine.len());
    assert!(engine.hash().starts_with("sha256:") && engine.hash().len() == 7 + 64);
    // Every action of the engine is one of the schema's, and the other way round.
    for action in crate::policy::Action::ALL {
        assert!(
            schema.actions().any(|a| a.id().unescaped() == action.as_str()),
            "{action} missing from the schema"
        );
        assert_eq!(crate::policy::Action::parse(action.as_str()), Some(action));
    }
    assert_eq!(schema.actions().count(), crate::policy::Action::ALL.len());
}

#[test]
fn syntax_errors_name_file_and_line() {
    refused(
        &[
            ("good.cedar", PERMIT_OPERATORS),
            (
                "bad.cedar",
                "// one\n\npermit (principal, action, resource)\nwhen { principal.kind == };\n",
            ),
        ],
        "bad.cedar",
        4,
        "",
    );
}

#[test]
fn schema_violations_name_file_and_line() {
    // An attribute the schema does not have.
    refused(
        &[(
            "p.cedar",
            "@id(\"x\")\npermit (principal, action == Action::\"ListGrants\", resource)\nwhen {\n  principal.department == \"x\"\n};\n",
        )],
        "p.cedar",
        4,
        "policy `x`",
    );
    // An unknown action.
    refused(
        &[(
            "p.cedar",
            "\n\npermit (principal, action == Action::\"DropTables\", resource);\n",
        )],
        "p.cedar",
        3,
        "DropTables",
    );
    // A type error: a class is a string.
    refused(
        &[(
            "p.cedar",
            "permit (principal, action == Action::\"RequestToken\", resource)\nwhen { context.class == 3 };\n",
        )],
        "p.cedar",
        2,
        "",
    );
    // An optional attribute read without `has`.
    refused(
        &[(
            "p.cedar",
            "permit (principal, action == Action::\"ApproveRequest\", resource)\nwhen { context.requester == principal };\n",
        )],
        "p.cedar",
        2,
        "",
    );
}

#[test]
fn conventions_are_enforced() {
    refused(
        &[("a.cedar", PERMIT_OPERATORS), ("b.cedar", PERMIT_OPERATORS)],
        "b.cedar",
        1,
        "already used at a.cedar:1",
    );
    refused(
        &[(
            "p.cedar",
            "@approval(\"maybe\")\npermit (principal, action, resource);\n",
        )],
        "p.cedar",
        1,
        "the only value is \"required\"",
    );
    refused(
        &[("p.cedar", "\n@max_ttl(\"0\")\npermit (principal, action, resource);\n")],
        "p.cedar",
        2,
        "whole number above 0",
    );
    refused(
        &[("p.cedar", "@max_ttl(\"300\")\nforbid (principal, action, resource);\n")],
        "p.cedar",
        1,
        "belong on permit policies",
    );
    refused(
        &[("p.cedar", "permit (principal == ?principal, action, resource);\n")],
        "p.cedar",
        1,
        "templates are not supported",
    );
    assert!(matches!(load(&[]), Err(PolicyLoadError::Empty { .. })));
    assert!(matches!(
        load(&[("empty.cedar", "// nothing\n")]),
        Err(PolicyLoadError::Empty { .. })
    ));
}

#[test]
fn ids_default_to_file_and_line() {
    let engine = load(&[(
        "dir/p.cedar",
        "// header\npermit (principal, action == Action::\"ListGrants\", resource);\n\n@id(\"named\")\nforbid (principal, action == Action::\"RevokeAll\", resource);\n",
    )])
    .unwrap();
    let ids: Vec<String> = engine.policy_ids().iter().map(ToString::to_string).collect();
    assert_eq!(ids, ["named", "p.cedar:2"]);
}

#[test]
fn the_hash_follows_the_text_and_not_the_directory() {
    let a = load(&[("/etc/a/p.cedar", PERMIT_OPERATORS)]).unwrap();
    let b = load(&[("/srv/b/p.cedar", PERMIT_OPERATORS)]).unwrap();
    assert_eq!(a.hash(), b.hash());
    let c = load(&[("p.cedar", &format!("{PERMIT_OPERATORS}\n"))]).unwrap();
    assert_ne!(a.hash(), c.hash());
    let d = load(&[("q.cedar", PERMIT_OPERATORS)]).unwrap();
    assert_ne!(a.hash(), d.hash());
    let baseline = load(&[("deploy/policies/baseline.cedar", BASELINE)]).unwrap();
    assert_eq!(baseline.hash(), PolicyEngine::baseline().unwrap().hash());
}

#[test]
fn annotations_take_the_strictest_of_the_matching_permits() {
    let engine = load(&[(
        "p.cedar",
        r#"@id("long") @max_ttl("900") @max_blast_radius("80")
permit (principal, action == Action::"RequestToken", resource);
@id("short") @max_ttl("120")
permit (principal, action == Action::"RequestToken", resource) when { context.class == "write" };
@id("approve") @approval("required") @max_blast_radius("20")
permit (principal, action == Action::"RequestToken", resource) when { context.high_impact };
"#,
    )])
    .unwrap();
    let (audience, task, ents) = (aud(), task(), entities());
    let ask = |class: ScopeClass, high_impact: bool| {
        let scopes = scope_of(class);
        let query = PolicyQuery::Token {
            action: TokenAction::Request,
            task: &task,
            facts: facts(&audience, &scopes, class, high_impact),
        };
        engine.authorize(&ents, &who("agent"), &query, now()).unwrap()
    };
    let PolicyDecision::Allow {
        approval_required,
        max_ttl,
        max_blast_radius,
        ..
    } = ask(ScopeClass::Read, false)
    else {
        panic!()
    };
    assert_eq!(
        (approval_required, max_ttl, max_blast_radius),
        (false, Some(900), Some(80))
    );
    let PolicyDecision::Allow {
        approval_required,
        max_ttl,
        max_blast_radius,
        policy_ids,
        ..
    } = ask(ScopeClass::Write, true)
    else {
        panic!()
    };
    assert_eq!(
        (approval_required, max_ttl, max_blast_radius),
        (true, Some(120), Some(20))
    );
    let mut ids: Vec<String> = policy_ids.iter().map(ToString::to_string).collect();
    ids.sort();
    assert_eq!(ids, ["approve", "long", "short"]);
}

#[test]
fn an_evaluation_error_denies_even_when_a_permit_matches() {
    // `forbid` would error on the unregistered principal's attributes and so
    // not apply; Cedar alone would then allow. Tessera denies.
    let engine = load(&[(
        "p.cedar",
        r#"@id("all") permit (principal, action == Action::"ListGrants", resource);
@id("no-partners") forbid (principal, action == Action::"ListGrants", resource) when { principal.kind == "partner" };
"#,
    )])
    .unwrap();
    let ents = crate::policy::PolicyEntities::new(
        &crate::identity::IdentityRegistry::default(),
        &crate::catalog::ApiCatalog::default(),
    )
    .unwrap();
    let decision = engine
        .authorize(
            &ents,
            &who("partner"),
            &PolicyQuery::Operation(Operation::ListGrants),
            now(),
        )
        .unwrap();
    let PolicyDecision::Deny { reasons, .. } = decision else {
        panic!("{decision:?}")
    };
    assert!(
        reasons.iter().any(|r| r.contains("policy evaluation failed")),
        "{reasons:?}"
    );
}

#[test]
fn built_requests_conform_to_the_schema() {
    let (schema, _) = cedar_policy::Schema::from_cedarschema_str(SCHEMA).unwrap();
    let (audience, task, ents, chain) = (aud(), task(), entities(), [id("agent")]);
    let scopes = scope_of(ScopeClass::Write);
    let mut full = facts(&audience, &scopes, ScopeClass::Write, true);
    full.blast_radius = Some(7);
    full.requester = Some(&chain[0]);
    full.delegation = Some(Delegation {
        depth: 1,
        chain: &chain,
        delegate: &chain[0],
        exchange: false,
        delegate_serves_audience: false,
    });
    let queries = [
        PolicyQuery::Token {
            action: TokenAction::Request,
            task: &task,
            facts: facts(&audience, &scopes, ScopeClass::Write, false),
        },
        PolicyQuery::Token {
            action: TokenAction::Delegate,
            task: &task,
            facts: full,
        },
        PolicyQuery::Token {
            action: TokenAction::Approve,
            task: &task,
            facts: full,
        },
        PolicyQuery::Task {
            action: TaskAction::Start,
            id: &task.id,
            task: Some(&task),
        },
        PolicyQuery::Task {
            action: TaskAction::Revoke,
            id: &task.id,
            task: None,
        },
        PolicyQuery::Operation(Operation::ReloadPolicy),
        PolicyQuery::Operation(Operation::WatchRevocations),
    ];
    let action_type = cedar_policy::EntityTypeName::from_str("Action").unwrap();
    for query in queries {
        let (resource, context) =
            crate::policy::context::build(&ents, &query, crate::identity::AttestationMethod::X509, now()).unwrap();
        let action = cedar_policy::EntityUid::from_type_name_and_id(
            action_type.clone(),
            cedar_policy::EntityId::new(query.action().as_str()),
        );
        let principal = ents.identity_uid(&id("agent"));
        if let Err(e) = cedar_policy::Request::new(principal, action, resource, context, Some(&schema)) {
            panic!("{} does not conform: {e}", query.action());
        }
    }
}

#[test]
fn oversized_contexts_are_refused_before_evaluation() {
    let engine = PolicyEngine::baseline().unwrap();
    let (audience, ents) = (aud(), entities());
    let scopes = scope_of(ScopeClass::Read);
    let mut big = task();
    big.labels
        .insert("k".into(), "v".repeat(crate::policy::MAX_STRING_BYTES + 1));
    let query = PolicyQuery::Token {
        action: TokenAction::Request,
        task: &big,
        facts: facts(&audience, &scopes, ScopeClass::Read, false),
    };
    let e = engine.authorize(&ents, &who("agent"), &query, now()).unwrap_err();
    assert!(
        matches!(
            e,
            PolicyError::ContextTooLarge {
                field: "task.labels",
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
}

/// Tool-level limits are in the token context: a policy can demand them
/// for an API, forbid a tool, or demand a constraint on an argument.
#[test]
fn policies_see_a_tokens_tool_level_limits() {
    let engine = load(&[(
        "tools.cedar",
        r#"@id("agents") permit (principal, action == Action::"RequestToken", resource);
@id("tool-limits-required") @reason("tokens for this API carry tool-level limits")
forbid (principal, action == Action::"RequestToken", resource) unless { context.tool_limited };
@id("no-deletes") @reason("no token may call delete_repo")
forbid (principal, action == Action::"RequestToken", resource) when { context.tools.contains("delete_repo") };
@id("transfers-capped") @reason("transfer needs a constraint on its amount")
forbid (principal, action == Action::"RequestToken", resource)
when { context.tools.contains("transfer") && !context.tool_arguments.contains("transfer.amount") };
"#,
    )])
    .unwrap();
    let (audience, task, ents) = (aud(), task(), entities());
    let scopes = scope_of(ScopeClass::Read);
    let grant = |v: serde_json::Value| crate::authz::ToolGrant::parse(&v).unwrap();
    let ask = |tools: Option<&crate::authz::ToolGrant>| {
        let query = PolicyQuery::Token {
            action: TokenAction::Request,
            task: &task,
            facts: crate::policy::TokenFacts {
                tools,
                ..facts(&audience, &scopes, ScopeClass::Read, false)
            },
        };
        engine.authorize(&ents, &who("agent"), &query, now()).unwrap()
    };
    let denied_by = |d: PolicyDecision| match d {
        PolicyDecision::Deny { policy_ids, .. } => policy_ids.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        PolicyDecision::Allow { .. } => Vec::new(),
    };
    let server = audience.as_str();
    assert_eq!(denied_by(ask(None)), ["tool-limits-required"]);
    let capped = grant(
        serde_json::json!({"type": "mcp_tool", "server": server, "tools": ["list", "transfer"],
        "constraints": {"transfer": {"amount": {"max": 500}}}}),
    );
    assert!(ask(Some(&capped)).is_allow());
    let uncapped = grant(serde_json::json!({"type": "mcp_tool", "server": server, "tools": ["transfer"]}));
    assert_eq!(denied_by(ask(Some(&uncapped))), ["transfers-capped"]);
    let deletes = grant(serde_json::json!({"type": "mcp_tool", "server": server, "tools": ["delete_repo"]}));
    assert_eq!(denied_by(ask(Some(&deletes))), ["no-deletes"]);
}
