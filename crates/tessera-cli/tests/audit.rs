//! `tessera audit verify|tail` on small audit files, intact and tampered:
//! outputs and exit codes.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test")]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use chrono::DateTime;
use tessera_core::audit::{Actor, AuditEvent, AuditKind, Chain, Outcome};

/// A temporary file removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn with_lines(lines: &[String]) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "tessera-cli-audit-{}-{}.jsonl",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(&path, text).unwrap();
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

fn tessera(args: &[&str]) -> Output {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .env_remove("TESSERA_OUTPUT")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    Output {
        code: out.status.code().unwrap(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// Five records: tasks started, then tokens issued.
fn chain() -> (Vec<String>, String) {
    let mut chain = Chain::genesis();
    let lines = (1..=5)
        .map(|i| {
            let kind = if i % 2 == 1 {
                AuditKind::TaskStarted
            } else {
                AuditKind::TokenIssued
            };
            let event = AuditEvent {
                who: Some(Actor::new("spiffe://td/agent/researcher")),
                task_id: Some(format!("task-{i}")),
                ..AuditEvent::new(
                    kind,
                    DateTime::from_timestamp(1_800_000_000 + i, 0).unwrap(),
                    Outcome::Allow,
                    "broker-1",
                )
            };
            chain.seal(event).to_line()
        })
        .collect();
    (lines, chain.last_hash().to_owned())
}

#[test]
fn an_intact_file_verifies() {
    let (lines, last) = chain();
    let file = TempFile::with_lines(&lines);
    let out = tessera(&["audit", "verify", file.path()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, format!("5 records, chain intact, last hash {last}\n"));

    let out = tessera(&["audit", "verify", file.path(), "--output", "json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(json["intact"], true);
    assert_eq!(json["records"], 5);
    assert_eq!(json["last_hash"], last.as_str());
}

#[test]
fn each_kind_of_tampering_is_named_with_its_line() {
    let (lines, _) = chain();
    let edited = {
        let mut l = lines.clone();
        l[2] = l[2].replace("task-3", "task-9");
        l
    };
    let removed = {
        let mut l = lines.clone();
        l.remove(1);
        l
    };
    let reordered = {
        let mut l = lines.clone();
        l.swap(3, 4);
        l
    };
    let garbled = {
        let mut l = lines.clone();
        l[4] = "{\"seq\":5".into();
        l
    };
    for (tampered, line, problem) in [
        (edited, 3, "edited"),
        (removed, 2, "sequence"),
        (reordered, 4, "sequence"),
        (garbled, 5, "malformed"),
    ] {
        let file = TempFile::with_lines(&tampered);
        let out = tessera(&["audit", "verify", file.path()]);
        assert_eq!(out.code, 1, "{problem}: {}", out.stdout);
        assert!(out.stdout.is_empty(), "{}", out.stdout);
        assert!(
            out.stderr.contains(&format!("line {line}:")),
            "{problem}: {}",
            out.stderr
        );
        assert!(out.stderr.contains(file.path()), "{}", out.stderr);

        let out = tessera(&["audit", "verify", file.path(), "--output", "json"]);
        assert_eq!(out.code, 1);
        let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(json["intact"], false);
        assert_eq!(json["line"], line);
        assert_eq!(json["problem"], problem);
        assert_eq!(json["records"], line - 1);
    }
}

#[test]
fn a_missing_file_is_a_local_error() {
    let out = tessera(&["audit", "verify", "/nonexistent/audit.jsonl"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("cannot read `/nonexistent/audit.jsonl`"),
        "{}",
        out.stderr
    );
}

#[test]
fn tail_prints_the_last_records() {
    let (lines, _) = chain();
    let file = TempFile::with_lines(&lines);
    let out = tessera(&["audit", "tail", file.path(), "-n", "2"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let printed: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(printed.len(), 2);
    assert!(
        printed[0].starts_with("     4  2027-01-15T08:00:04Z  token_issued  allow"),
        "{}",
        printed[0]
    );
    assert!(printed[1].contains("task=task-5"), "{}", printed[1]);

    let out = tessera(&["audit", "tail", file.path(), "--output", "json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let printed: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(printed, lines.iter().map(String::as_str).collect::<Vec<_>>());
}
