//! `deploy/tesserad.example.toml` is the one complete reference of tesserad's
//! configuration, checked against the loader so it cannot drift:
//!
//! - it loads with the real loader;
//! - every section and key the loader accepts is in it, active or commented
//!   out (`# key = value` in its section, `# [section]` for a section shown
//!   commented), and it names none the loader refuses. The accepted keys are
//!   read from the loader itself: each section is probed with an unknown key,
//!   and serde's refusal lists the fields it expects;
//! - every active key that is not required shows the real default: removing
//!   it changes nothing in the loaded configuration. Example values (paths,
//!   names, alternatives) are commented out or sit in required keys and in the
//!   `[[identities]]` and `[[apis]]` examples.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::*;

const EXAMPLE: &str = include_str!("../../../../../deploy/tesserad.example.toml");

/// A key never accepted, to make the loader list the keys it accepts.
const PROBE: &str = "zz_probe";

/// Sections (dotted paths, "" for the top level) and the keys the file
/// documents in each, active or commented out.
#[derive(Debug, Default)]
struct Documented {
    sections: BTreeMap<String, BTreeSet<String>>,
    /// Sections written `[[name]]`.
    arrays: BTreeSet<String>,
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Reads the sections and keys of `text`, commented out or not. Prose
/// comments are told apart by their shape: a commented key is `#`, at most
/// one space, then `name =` in lowercase.
fn documented(text: &str) -> Documented {
    let mut doc = Documented::default();
    doc.sections.insert(String::new(), BTreeSet::new());
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        let body = match line.strip_prefix('#') {
            Some(rest) => match rest.strip_prefix(' ') {
                Some(rest) if !rest.starts_with(char::is_whitespace) => rest,
                None if !rest.starts_with(char::is_whitespace) => rest,
                _ => continue,
            },
            None => line,
        };
        let body = body.split(" #").next().unwrap_or_default().trim();
        let header = body
            .strip_prefix("[[")
            .and_then(|h| h.strip_suffix("]]"))
            .map(|h| (h, true))
            .or_else(|| {
                body.strip_prefix('[')
                    .and_then(|h| h.strip_suffix(']'))
                    .map(|h| (h, false))
            });
        if let Some((name, array)) = header {
            if !name.split('.').all(is_name) {
                continue;
            }
            current = name.to_owned();
            if array {
                doc.arrays.insert(current.clone());
            }
            // `[a.b.c]` documents `c` in `a.b`, `b` in `a` and `a` at the top.
            let mut path = name;
            while !path.is_empty() {
                let (parent, child) = path.rsplit_once('.').unwrap_or(("", path));
                doc.sections
                    .entry(parent.to_owned())
                    .or_default()
                    .insert(child.to_owned());
                doc.sections.entry(path.to_owned()).or_default();
                path = parent;
            }
            continue;
        }
        if let Some((key, _)) = body.split_once('=') {
            let key = key.trim();
            if is_name(key) {
                doc.sections.entry(current.clone()).or_default().insert(key.to_owned());
            }
        }
    }
    doc
}

fn load_table(table: &toml::Table) -> Result<Config, ConfigError> {
    let text = toml::to_string(table).unwrap();
    Config::from_toml(
        &text,
        Path::new("tesserad.example.toml"),
        Path::new("/etc/tessera"),
        &BTreeMap::<String, String>::new(),
    )
}

/// The table at `path` in `root` (the first element of an array of
/// tables), created empty when absent.
fn table_at<'a>(root: &'a mut toml::Table, path: &str, arrays: &BTreeSet<String>) -> &'a mut toml::Table {
    let mut current = root;
    let mut prefix = String::new();
    for segment in path.split('.').filter(|s| !s.is_empty()) {
        if !prefix.is_empty() {
            prefix.push('.');
        }
        prefix.push_str(segment);
        let array = arrays.contains(&prefix);
        let entry = current.entry(segment).or_insert_with(|| {
            if array {
                toml::Value::Array(vec![toml::Value::Table(toml::Table::new())])
            } else {
                toml::Value::Table(toml::Table::new())
            }
        });
        current = match entry {
            toml::Value::Table(t) => t,
            toml::Value::Array(items) => {
                if items.is_empty() {
                    items.push(toml::Value::Table(toml::Table::new()));
                }
                match items.first_mut() {
                    Some(toml::Value::Table(t)) => t,
                    other => panic!("`{prefix}` is not an array of tables: {other:?}"),
                }
            }
            other => panic!("`{prefix}` is not a table: {other:?}"),
        };
    }
    current
}

/// The keys the loader accepts in section `path`, or `None` when the section
/// is a map of free names (`[tokens.class_max_ttl]`, `[apis.scopes]`).
fn accepted(example: &toml::Table, path: &str, arrays: &BTreeSet<String>) -> Option<BTreeSet<String>> {
    let mut table = example.clone();
    table_at(&mut table, path, arrays).insert(PROBE.to_owned(), toml::Value::Integer(0));
    let message = match load_table(&table) {
        Err(ConfigError::Key { message, .. }) => message,
        _ => return None,
    };
    // "unknown field `zz_probe`, expected one of `a`, `b`\nin `section`"
    let first_line = message.lines().next().unwrap_or_default();
    let expected = first_line.strip_prefix(&format!("unknown field `{PROBE}`"))?;
    Some(expected.split('`').skip(1).step_by(2).map(str::to_owned).collect())
}

/// A printable view of the loaded configuration, to compare two loads. The
/// identities and the catalog come from the examples' arrays, left intact.
fn fingerprint(c: &Config) -> String {
    // A HashMap prints in a different order each time: print it sorted.
    let mut tokens = c.tokens.clone();
    let mut kinds: Vec<String> = tokens
        .risk
        .kind_max_ttl
        .drain()
        .map(|(kind, ttl)| format!("{kind:?}={ttl:?}"))
        .collect();
    kinds.sort();
    format!(
        "{:?}\n{:?}\n{:?} {kinds:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}",
        c.server,
        c.tls,
        tokens,
        c.tasks,
        c.store,
        c.log,
        c.audit,
        c.anomaly,
        c.policy,
        c.binding,
        c.oauth,
        c.approvals,
        c.attestation
    )
}

fn example_table() -> toml::Table {
    EXAMPLE.parse().unwrap()
}

#[test]
fn the_example_config_loads() {
    if let Err(e) = load_table(&example_table()) {
        panic!("deploy/tesserad.example.toml does not load: {e}");
    }
}

#[test]
fn the_example_config_documents_every_key_the_loader_accepts_and_no_other() {
    let example = example_table();
    let doc = documented(EXAMPLE);
    let mut problems = Vec::new();
    for (section, keys) in &doc.sections {
        let Some(accepted) = accepted(&example, section, &doc.arrays) else {
            continue;
        };
        let name = if section.is_empty() { "(top level)" } else { section };
        for missing in accepted.difference(keys) {
            problems.push(format!("[{name}] `{missing}` is accepted but not in the example"));
        }
        for unknown in keys.difference(&accepted) {
            problems.push(format!(
                "[{name}] `{unknown}` is in the example but the loader refuses it"
            ));
        }
    }
    // Each section the loader accepts is a key of its parent, so a section
    // missing from the file is reported by its parent's probe.
    assert!(
        problems.is_empty(),
        "deploy/tesserad.example.toml:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_example_config_shows_real_defaults() {
    let example = example_table();
    let full = fingerprint(&load_table(&example).unwrap());
    assert_eq!(
        full,
        fingerprint(&load_table(&example).unwrap()),
        "two loads of one file differ: the fingerprint is not deterministic"
    );
    let mut problems = Vec::new();
    let mut checked = 0;
    // Every active key of every section (not of the example arrays of tables).
    let mut stack: Vec<(String, toml::Table)> = vec![(String::new(), example.clone())];
    while let Some((path, table)) = stack.pop() {
        for (key, value) in &table {
            let dotted = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            if let toml::Value::Table(inner) = value {
                stack.push((dotted, inner.clone()));
                continue;
            }
            if path.is_empty() || matches!(value, toml::Value::Array(items) if items.iter().all(toml::Value::is_table))
            {
                continue;
            }
            let mut without = example.clone();
            let arrays = BTreeSet::new();
            table_at(&mut without, &path, &arrays).remove(key);
            // A required key has no default to show.
            let Ok(config) = load_table(&without) else {
                continue;
            };
            checked += 1;
            if fingerprint(&config) != full {
                problems.push(format!("`{dotted} = {value}` is not the default"));
            }
        }
    }
    assert!(checked > 40, "only {checked} keys checked");
    assert!(
        problems.is_empty(),
        "deploy/tesserad.example.toml:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_scanner_reads_sections_and_commented_keys() {
    let doc = documented(
        "# Prose: x = 1\n#   TESSERA_A__B=1\n[a]\nk = 1  # why\n# opt = \"x\"\n#                # score = 2\n[[a.b]]\n# [a.c]\n# m = 1\n# [[d.e.f]]\n",
    );
    let keys = |s: &str| doc.sections[s].iter().cloned().collect::<Vec<_>>();
    assert_eq!(keys(""), ["a", "d"]);
    assert_eq!(keys("a"), ["b", "c", "k", "opt"]);
    assert_eq!(keys("a.c"), ["m"]);
    assert_eq!(keys("d"), ["e"]);
    assert_eq!(keys("d.e"), ["f"]);
    assert!(doc.arrays.contains("a.b"));
    assert!(doc.arrays.contains("d.e.f"));
}
