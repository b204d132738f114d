#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing, reason = "test")]

use serde_json::{Value, json};

use super::*;

fn vectors() -> Value {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors/tool_grants.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn grant(v: &Value) -> ToolGrant {
    ToolGrant::parse(v).unwrap()
}

/// The shared vectors the Python SDK runs too.
#[test]
fn shared_vectors_parse() {
    let v = vectors();
    for case in v["parse"].as_array().unwrap() {
        let got = ToolGrant::parse(&case["detail"]);
        assert_eq!(got.is_ok(), case["ok"].as_bool().unwrap(), "{}: {got:?}", case["name"]);
        if case["unknown_type"].as_bool() == Some(true) {
            assert!(matches!(got, Err(ToolGrantError::UnknownType(_))), "{}", case["name"]);
        }
        if let Ok(g) = got {
            // The canonical form parses back to the same grant.
            assert_eq!(ToolGrant::parse(&g.to_value()).unwrap(), g, "{}", case["name"]);
        }
    }
}

#[test]
fn shared_vectors_within() {
    let v = vectors();
    for case in v["within"].as_array().unwrap() {
        let got = grant(&case["request"]).is_within(&grant(&case["ceiling"]), "the task's ceiling");
        assert_eq!(
            got.is_ok(),
            case["within"].as_bool().unwrap(),
            "{}: {got:?}",
            case["name"]
        );
    }
}

#[test]
fn shared_vectors_permits() {
    let v = vectors();
    for case in v["permits"].as_array().unwrap() {
        let got = grant(&case["grant"]).permits(case["tool"].as_str().unwrap(), &case["args"]);
        assert_eq!(
            got.is_ok(),
            case["permitted"].as_bool().unwrap(),
            "{}: {got:?}",
            case["name"]
        );
    }
}

/// Everything the parse accepts is within itself, and a request within a
/// ceiling permits no call the ceiling refuses (over the vectors' calls).
#[test]
fn within_is_reflexive_and_sound_on_the_vectors() {
    let v = vectors();
    let grants: Vec<ToolGrant> = v["parse"]
        .as_array()
        .unwrap()
        .iter()
        .chain(
            v["within"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|c| [&c["request"], &c["ceiling"]]),
        )
        .chain(v["permits"].as_array().unwrap().iter().map(|c| &c["grant"]))
        .filter_map(|d| {
            let d = d.get("detail").unwrap_or(d);
            ToolGrant::parse(d).ok()
        })
        .collect();
    let calls: Vec<(&str, &Value)> = v["permits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["tool"].as_str().unwrap(), &c["args"]))
        .collect();
    for g in &grants {
        g.is_within(g, "itself").unwrap();
    }
    for narrow in &grants {
        for wide in &grants {
            if narrow.is_within(wide, "x").is_err() {
                continue;
            }
            for (tool, args) in &calls {
                if narrow.permits(tool, args).is_ok() {
                    assert!(
                        wide.permits(tool, args).is_ok(),
                        "{narrow:?} within {wide:?} but {tool} {args}"
                    );
                }
            }
        }
    }
}

#[test]
fn serde_is_the_strict_parse() {
    let ok: Vec<ToolGrant> =
        serde_json::from_value(json!([{"type": "mcp_tool", "server": "s", "tools": ["b", "a"]}])).unwrap();
    assert_eq!(
        serde_json::to_value(&ok).unwrap(),
        json!([{"type": "mcp_tool", "server": "s", "tools": ["a", "b"]}])
    );
    assert!(serde_json::from_value::<Vec<ToolGrant>>(json!([{"type": "mcp_tool", "server": "s"}])).is_err());
    assert!(serde_json::from_value::<Vec<ToolGrant>>(json!([{"type": "other"}])).is_err());
}

#[test]
fn bounds_are_enforced() {
    let tools: Vec<String> = (0..=MAX_TOOLS).map(|i| format!("t{i}")).collect();
    let too_many = json!({"type": "mcp_tool", "server": "s", "tools": tools});
    assert!(matches!(ToolGrant::parse(&too_many), Err(ToolGrantError::Malformed(_))));
    let one_of: Vec<u32> = (0..=MAX_ONE_OF as u32).collect();
    let long =
        json!({"type": "mcp_tool", "server": "s", "tools": ["a"], "constraints": {"a": {"n": {"one_of": one_of}}}});
    assert!(ToolGrant::parse(&long).is_err());
    let s = "x".repeat(MAX_STRING_BYTES + 1);
    let long = json!({"type": "mcp_tool", "server": "s", "tools": ["a"], "constraints": {"a": {"n": {"eq": s}}}});
    assert!(ToolGrant::parse(&long).is_err());
    let args: serde_json::Map<String, Value> = (0..=MAX_CONSTRAINED_ARGS)
        .map(|i| (format!("a{i}"), json!({"eq": 1})))
        .collect();
    let many = json!({"type": "mcp_tool", "server": "s", "tools": ["a"], "constraints": {"a": args}});
    assert!(ToolGrant::parse(&many).is_err());
    let details: Vec<Value> = (0..=MAX_DETAILS)
        .map(|i| json!({"type": "mcp_tool", "server": format!("s{i}"), "tools": ["a"]}))
        .collect();
    assert!(parse_details(&Value::Array(details)).is_err());
    let twice = json!([{"type": "mcp_tool", "server": "s", "tools": ["a"]}, {"type": "mcp_tool", "server": "s", "tools": ["b"]}]);
    assert!(parse_details(&twice).is_err());
}

#[test]
fn a_token_carries_the_request_or_else_the_ceiling() {
    let ceiling = vec![grant(
        &json!({"type": "mcp_tool", "server": "https://mcp", "tools": ["a", "b"], "constraints": {"a": {"n": {"max": 5}}}}),
    )];
    // Nothing asked: the ceiling's limit, never none.
    assert_eq!(
        narrow(&ceiling, "https://mcp", None, "c").unwrap(),
        Some(ceiling[0].clone())
    );
    assert_eq!(narrow(&ceiling, "https://other", None, "c").unwrap(), None);
    let ok = grant(&json!({"type": "mcp_tool", "server": "https://mcp", "tools": ["b"]}));
    assert_eq!(
        narrow(&ceiling, "https://mcp", Some(&ok), "c").unwrap(),
        Some(ok.clone())
    );
    let wide = grant(&json!({"type": "mcp_tool", "server": "https://mcp", "tools": ["a"]}));
    assert!(matches!(
        narrow(&ceiling, "https://mcp", Some(&wide), "c"),
        Err(ToolGrantError::Wider { .. })
    ));
    // The detail is for the token's audience only.
    assert!(matches!(
        narrow(&ceiling, "https://other", Some(&ok), "c"),
        Err(ToolGrantError::Malformed(_))
    ));
    // No tool-level ceiling for the server: any limit narrows.
    let free = grant(&json!({"type": "mcp_tool", "server": "https://other", "tools": ["x"]}));
    assert_eq!(
        narrow(&ceiling, "https://other", Some(&free), "c").unwrap(),
        Some(free.clone())
    );
}
