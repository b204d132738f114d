use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;

use super::*;

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

fn event(i: i64) -> AuditEvent {
    AuditEvent {
        who: Some(Actor {
            kind: Some("agent".into()),
            owner: Some("team-crm".into()),
            attestation: Some("x509_svid".into()),
            evidence: Some("sha256:ab12".into()),
            ..Actor::new("spiffe://td/agent/researcher")
        }),
        task_id: Some(format!("task-{i}")),
        grant_id: Some(format!("grant-{i}")),
        audience: Some("https://api.example.com/crm".into()),
        scopes: vec!["contacts:read".into(), "notes:write".into()],
        class: Some("write".into()),
        ttl_secs: Some(300),
        schema_version: Some("v3".into()),
        reason: Some("within the task's ceiling".into()),
        policy_ids: vec!["p-default".into()],
        request_id: Some(format!("req-{i}")),
        ..AuditEvent::new(
            AuditKind::TokenIssued,
            t0() + Duration::seconds(i),
            Outcome::Allow,
            "broker-1",
        )
    }
}

/// The lines of a clean chain of `n` records.
fn chain(n: i64) -> Vec<String> {
    let mut chain = Chain::genesis();
    (1..=n).map(|i| chain.seal(event(i)).to_line()).collect()
}

fn check(lines: &[String]) -> Result<VerifyReport, ChainError> {
    verify(lines.iter().map(String::as_str))
}

/// Rewrites one JSON field of a line, keeping its hash.
fn edit(line: &str, field: &str, value: serde_json::Value) -> String {
    let mut json: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line).unwrap();
    json.insert(field.into(), value);
    // Back in the canonical field order, so only the content differs.
    let reordered: AuditRecord = serde_json::from_value(serde_json::Value::Object(json.clone())).unwrap();
    let line = reordered.to_line();
    if json.keys().any(|k| !line.contains(&format!("\"{k}\":"))) {
        // An unknown field: serde drops it, so append it by hand.
        let mut raw: String = line.trim_end_matches('}').into();
        raw.push_str(&format!(",\"{field}\":{}}}", json[field]));
        return raw;
    }
    line
}

#[test]
fn golden_record() {
    let mut chain = Chain::genesis();
    let record = chain.seal(AuditEvent::new(
        AuditKind::TaskStarted,
        t0(),
        Outcome::Allow,
        "broker-1",
    ));
    assert_eq!(
        record.to_line(),
        format!(
            r#"{{"seq":1,"prev":"{GENESIS}","hash":"{}","event":"task_started","at":"2027-01-15T08:00:00Z","decision":"allow","instance":"broker-1"}}"#,
            record.hash
        )
    );
    // sha256(GENESIS "\n" {"seq":1,"prev":GENESIS,"event":...}), computed with sha256sum.
    assert_eq!(
        record.hash,
        "7b5f1223e0cbefd1cd591a4ab080b3e65097dd087fe19c3ee641a314bac44c2b"
    );
    assert_eq!(chain.next_seq(), 2);
    assert_eq!(chain.last_hash(), record.hash);
}

#[test]
fn absent_and_empty_fields_are_left_out() {
    let line = chain(1).remove(0);
    assert!(
        line.contains(r#""who":{"identity":"spiffe://td/agent/researcher","kind":"agent""#),
        "{line}"
    );
    assert!(!line.contains("approver"), "{line}");
    assert!(!line.contains("count"), "{line}");
    let bare = Chain::genesis()
        .seal(AuditEvent::new(AuditKind::KeyPublished, t0(), Outcome::Allow, "b"))
        .to_line();
    for absent in ["who", "scopes", "policy_ids", "reason", "null", "[]"] {
        assert!(!bare.contains(absent), "{absent} in {bare}");
    }
}

#[test]
fn kind_and_outcome_names_are_the_serde_names() {
    use AuditKind::*;
    for kind in [
        TokenIssued,
        TokenDenied,
        TokenReleased,
        GrantRevoked,
        TaskStarted,
        TaskCompleted,
        TaskRevoked,
        TaskDenied,
        AttestationRefused,
        AdminDenied,
        KeyPublished,
        KeyRetired,
        PolicyReloaded,
        ApprovalPending,
        ApprovalDecided,
        TokenDelegated,
        ConsoleSignIn,
        ConsoleSignOut,
    ] {
        assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str(), "{kind:?}");
    }
    for outcome in [Outcome::Allow, Outcome::Deny, Outcome::Error] {
        assert_eq!(serde_json::to_value(outcome).unwrap(), outcome.as_str());
    }
}

#[test]
fn a_clean_chain_verifies() {
    let lines = chain(5);
    let report = check(&lines).unwrap();
    assert_eq!(report.records, 5);
    let last = AuditRecord::from_line(&lines[4]).unwrap();
    assert_eq!(report.last_hash, last.hash);
    assert_eq!(
        check(&[]).unwrap(),
        VerifyReport {
            records: 0,
            last_hash: GENESIS.into()
        }
    );
}

#[test]
fn a_resumed_chain_verifies_across_both_parts() {
    let mut lines = chain(3);
    let last = AuditRecord::from_line(&lines[2]).unwrap();
    let mut chain = Chain::resume(&last);
    assert_eq!(chain.next_seq(), 4);
    lines.push(chain.seal(event(4)).to_line());
    lines.push(chain.seal(event(5)).to_line());
    assert_eq!(check(&lines).unwrap().records, 5);
}

#[test]
fn editing_any_field_of_any_record_is_caught_on_its_line() {
    let edits: Vec<(&str, serde_json::Value)> = vec![
        ("event", "token_denied".into()),
        ("at", "2027-01-15T08:00:09Z".into()),
        ("who", serde_json::json!({"identity": "spiffe://td/agent/mallory"})),
        ("task_id", "task-x".into()),
        ("grant_id", "grant-x".into()),
        ("audience", "https://evil.example".into()),
        ("scopes", serde_json::json!(["contacts:read"])),
        ("class", "read".into()),
        ("ttl_secs", 30.into()),
        ("schema_version", "v2".into()),
        ("decision", "deny".into()),
        ("reason", "edited".into()),
        ("policy_ids", serde_json::json!(["p-allow-all"])),
        ("approver", "spiffe://td/human/bob".into()),
        ("instance", "broker-2".into()),
        ("request_id", "req-x".into()),
        ("count", 7.into()),
        ("hash", "ab".repeat(32).into()),
        ("note", "an added field".into()),
    ];
    for i in 0..4 {
        for (field, value) in &edits {
            let mut lines = chain(4);
            lines[i] = edit(&lines[i], field, value.clone());
            let err = check(&lines).unwrap_err();
            assert_eq!(
                err,
                ChainError::Edited {
                    line: i as u64 + 1,
                    seq: i as u64 + 1
                },
                "edit of {field} in record {i}"
            );
            assert!(AuditRecord::from_line(&lines[i]).is_err());
        }
    }
}

#[test]
fn editing_seq_or_prev_is_caught_on_its_line() {
    let mut lines = chain(3);
    lines[1] = edit(&lines[1], "seq", 9.into());
    assert_eq!(
        check(&lines).unwrap_err(),
        ChainError::Sequence {
            line: 2,
            expected: 2,
            found: 9
        }
    );

    let mut lines = chain(3);
    let expected_prev = AuditRecord::from_line(&lines[0]).unwrap().hash;
    lines[1] = edit(&lines[1], "prev", GENESIS.into());
    assert_eq!(
        check(&lines).unwrap_err(),
        ChainError::Broken {
            line: 2,
            seq: 2,
            expected_prev
        }
    );
}

#[test]
fn deleting_a_record_is_caught_where_it_was() {
    for i in 0..4 {
        let mut lines = chain(5);
        lines.remove(i);
        assert_eq!(
            check(&lines).unwrap_err(),
            ChainError::Sequence {
                line: i as u64 + 1,
                expected: i as u64 + 1,
                found: i as u64 + 2
            },
            "record {i} deleted"
        );
    }
}

#[test]
fn cutting_the_middle_is_caught() {
    let mut lines = chain(8);
    lines.drain(2..6);
    let err = check(&lines).unwrap_err();
    assert_eq!(
        err,
        ChainError::Sequence {
            line: 3,
            expected: 3,
            found: 7
        }
    );
    assert_eq!(err.line(), 3);
}

#[test]
fn cutting_the_tail_leaves_a_shorter_chain_with_another_last_hash() {
    // A hash chain cannot see its own end cut off: the last hash, compared
    // with one kept elsewhere, does.
    let lines = chain(5);
    let whole = check(&lines).unwrap();
    let cut = check(&lines[..3]).unwrap();
    assert_eq!(cut.records, 3);
    assert_ne!(cut.last_hash, whole.last_hash);
}

#[test]
fn a_forged_record_is_caught_even_with_a_consistent_hash() {
    for at in 0..4 {
        let mut lines = chain(4);
        // The forger seals a record that follows the one before perfectly.
        let mut forger = match at {
            0 => Chain::genesis(),
            _ => Chain::resume(&AuditRecord::from_line(&lines[at - 1]).unwrap()),
        };
        let forged = forger.seal(AuditEvent::new(
            AuditKind::TokenIssued,
            t0(),
            Outcome::Allow,
            "broker-1",
        ));
        assert!(forged.is_sealed());
        lines.insert(at, forged.to_line());
        // The genuine record after it no longer follows.
        assert_eq!(
            check(&lines).unwrap_err(),
            ChainError::Sequence {
                line: at as u64 + 2,
                expected: at as u64 + 2,
                found: at as u64 + 1
            },
            "forged record at {at}"
        );
    }
}

#[test]
fn a_record_from_another_chain_is_caught() {
    let mut lines = chain(4);
    let mut other = Chain::genesis();
    other.seal(event(100));
    lines[1] = other.seal(event(101)).to_line();
    assert!(matches!(
        check(&lines).unwrap_err(),
        ChainError::Broken { line: 2, seq: 2, .. }
    ));
}

#[test]
fn swapping_or_repeating_records_is_caught() {
    let mut lines = chain(5);
    lines.swap(1, 3);
    assert_eq!(
        check(&lines).unwrap_err(),
        ChainError::Sequence {
            line: 2,
            expected: 2,
            found: 4
        }
    );

    let mut lines = chain(5);
    let copy = lines[2].clone();
    lines.insert(3, copy);
    assert_eq!(
        check(&lines).unwrap_err(),
        ChainError::Sequence {
            line: 4,
            expected: 4,
            found: 3
        }
    );
}

#[test]
fn malformed_lines_are_named() {
    let mut lines = chain(3);
    lines[2] = "{\"seq\":3".into();
    assert_eq!(check(&lines).unwrap_err(), ChainError::Malformed { line: 3 });
    let mut lines = chain(3);
    lines.insert(1, String::new());
    assert_eq!(check(&lines).unwrap_err(), ChainError::Malformed { line: 2 });
    assert_eq!(AuditRecord::from_line("[]"), Err(RecordError::Malformed));
}

#[test]
fn whitespace_or_escapes_are_edits() {
    let line = chain(1).remove(0);
    let spaced = line.replacen("\"seq\":1", "\"seq\": 1", 1);
    assert_eq!(check(&[spaced]).unwrap_err(), ChainError::Edited { line: 1, seq: 1 });
    let escaped = line.replacen("broker-1", "broker\\u002d1", 1);
    assert_eq!(check(&[escaped]).unwrap_err(), ChainError::Edited { line: 1, seq: 1 });
}

#[test]
fn the_verifier_streams() {
    let lines = chain(3);
    let mut verifier = Verifier::new();
    for line in &lines {
        verifier.push(line).unwrap();
    }
    assert_eq!(verifier.records(), 3);
    assert_eq!(verifier.finish(), check(&lines).unwrap());
}

fn text() -> impl Strategy<Value = String> {
    // Any Unicode, including quotes, backslashes and control characters.
    "\\PC{0,12}|[\"\\\\\u{0}-\u{1f}é€😀]{0,6}"
}

fn kind() -> impl Strategy<Value = AuditKind> {
    use AuditKind::*;
    prop::sample::select(vec![
        TokenIssued,
        TokenDenied,
        TokenReleased,
        GrantRevoked,
        TaskStarted,
        TaskCompleted,
        TaskRevoked,
        TaskDenied,
        AttestationRefused,
        AdminDenied,
        KeyPublished,
        KeyRetired,
        PolicyReloaded,
        ApprovalPending,
        ApprovalDecided,
        TokenDelegated,
        ConsoleSignIn,
        ConsoleSignOut,
    ])
}

fn actor() -> impl Strategy<Value = Actor> {
    (
        text(),
        proptest::option::of(text()),
        proptest::option::of(text()),
        proptest::option::of(text()),
        proptest::option::of(text()),
    )
        .prop_map(|(identity, kind, owner, attestation, evidence)| Actor {
            identity,
            kind,
            owner,
            attestation,
            evidence,
        })
}

fn any_event() -> impl Strategy<Value = AuditEvent> {
    let at = (0i64..8_000_000_000, 0u32..1_000_000_000)
        .prop_map(|(secs, nanos)| DateTime::from_timestamp(secs, nanos).unwrap());
    let outcome = prop::sample::select(vec![Outcome::Allow, Outcome::Deny, Outcome::Error]);
    let what = (
        kind(),
        at,
        proptest::option::of(actor()),
        proptest::option::of(text()),
        proptest::option::of(text()),
        proptest::option::of(text()),
        proptest::collection::vec(text(), 0..3),
        proptest::option::of(text()),
        proptest::option::of(any::<u32>()),
    );
    let why = (
        proptest::option::of(text()),
        outcome,
        proptest::option::of(text()),
        proptest::collection::vec(text(), 0..3),
        proptest::option::of(text()),
        text(),
        proptest::option::of(text()),
        proptest::option::of(any::<u64>()),
        proptest::option::of(any::<u32>()),
        proptest::option::of(text()),
        proptest::option::of(text()),
    );
    (what, why).prop_map(
        |(
            (event, at, who, task_id, grant_id, audience, scopes, class, ttl_secs),
            (
                schema_version,
                decision,
                reason,
                policy_ids,
                approver,
                instance,
                request_id,
                count,
                blast_radius,
                approval_id,
                console_session,
            ),
        )| AuditEvent {
            event,
            at,
            who,
            task_id,
            grant_id,
            audience,
            scopes,
            class,
            ttl_secs,
            schema_version,
            decision,
            reason,
            policy_ids,
            // Any optional string will do: it round-trips like the others.
            policy_hash: approver.clone(),
            approver,
            instance,
            request_id,
            count,
            blast_radius,
            approval_id,
            grant_type: console_session.clone(),
            client_auth: console_session.clone(),
            console_session,
        },
    )
}

fn seal_all(events: Vec<AuditEvent>) -> Vec<String> {
    let mut chain = Chain::genesis();
    events.into_iter().map(|e| chain.seal(e).to_line()).collect()
}

proptest! {
    #[test]
    fn random_chains_verify_and_round_trip(events in proptest::collection::vec(any_event(), 0..8)) {
        let lines = seal_all(events.clone());
        let report = check(&lines).unwrap();
        prop_assert_eq!(report.records, events.len() as u64);
        for (line, event) in lines.iter().zip(events) {
            prop_assert!(!line.contains('\n'));
            prop_assert_eq!(AuditRecord::from_line(line).unwrap().event, event);
        }
    }

    #[test]
    fn any_single_byte_change_is_caught_on_its_line(
        events in proptest::collection::vec(any_event(), 1..5),
        pick in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let lines = seal_all(events);
        let i = pick.index(lines.len());
        let mut bytes = lines[i].clone().into_bytes();
        let pos = at.index(bytes.len());
        prop_assume!(bytes[pos] != byte);
        bytes[pos] = byte;
        // Not UTF-8: not even a line of text, so malformed.
        let Ok(changed) = String::from_utf8(bytes) else { return Ok(()) };
        let mut text = lines.clone();
        text[i] = changed;
        // Joined and split as a file would be, so a new line break counts.
        let file = text.join("\n");
        let err = verify(file.lines()).unwrap_err();
        prop_assert_eq!(err.line(), i as u64 + 1, "{}", err);
    }
}
