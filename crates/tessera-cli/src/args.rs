//! Parsers for argument values: `--allow`, `--label`, durations, deadlines,
//! SPIFFE IDs and token input. Each returns a message clap can show.

use std::collections::HashMap;
use std::io::Read;

use tessera_client::pb;

/// One `--allow "AUDIENCE SCOPE [SCOPE...]"`: part of a task's scope ceiling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Allow {
    /// The API (the token `aud`).
    pub(crate) audience: String,
    /// Scopes of that API, at least one.
    pub(crate) scopes: Vec<String>,
}

/// Parses `"AUDIENCE SCOPE [SCOPE...]"`, separated by whitespace (neither an
/// audience nor a scope may contain any).
pub(crate) fn parse_allow(s: &str) -> Result<Allow, String> {
    let mut words = s.split_whitespace();
    let audience = words
        .next()
        .ok_or_else(|| "expected `AUDIENCE SCOPE [SCOPE...]`, got nothing".to_owned())?;
    let scopes: Vec<String> = words.map(str::to_owned).collect();
    if scopes.is_empty() {
        return Err(format!(
            "`{audience}` has no scope: expected `AUDIENCE SCOPE [SCOPE...]` in one argument"
        ));
    }
    Ok(Allow {
        audience: audience.to_owned(),
        scopes,
    })
}

/// Merges repeated `--allow`s into a scope ceiling: scopes of one audience
/// are united, duplicates dropped, first-seen order kept.
pub(crate) fn ceiling(allows: &[Allow]) -> HashMap<String, pb::ScopeSet> {
    let mut ceiling: HashMap<String, pb::ScopeSet> = HashMap::new();
    for allow in allows {
        let set = ceiling.entry(allow.audience.clone()).or_default();
        for scope in &allow.scopes {
            if !set.scopes.contains(scope) {
                set.scopes.push(scope.clone());
            }
        }
    }
    ceiling
}

/// Parses `KEY=VALUE`; the key is non-empty, the value may be empty.
pub(crate) fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => Ok((key.trim().to_owned(), value.to_owned())),
        Some(_) => Err(format!("label `{s}` has an empty key")),
        None => Err(format!("label `{s}` is not KEY=VALUE")),
    }
}

/// Collects labels, refusing a key given twice.
pub(crate) fn labels(pairs: Vec<(String, String)>) -> Result<HashMap<String, String>, String> {
    let mut labels = HashMap::with_capacity(pairs.len());
    for (key, value) in pairs {
        if labels.contains_key(&key) {
            return Err(format!("label `{key}` given twice"));
        }
        labels.insert(key, value);
    }
    Ok(labels)
}

/// Parses a positive duration of whole seconds (`90s`, `15m`, `1h 30m`) into
/// seconds.
pub(crate) fn parse_seconds(s: &str) -> Result<u32, String> {
    let duration =
        humantime::parse_duration(s).map_err(|e| format!("`{s}` is not a duration like `90s`, `15m` or `1h`: {e}"))?;
    if duration.is_zero() {
        return Err(format!("`{s}` is zero"));
    }
    if duration.subsec_nanos() != 0 {
        return Err(format!("`{s}` is not a whole number of seconds"));
    }
    u32::try_from(duration.as_secs()).map_err(|_| format!("`{s}` is too long"))
}

/// Parses an RFC 3339 instant (`2026-05-01T12:00:00Z`) into a protobuf timestamp.
pub(crate) fn parse_deadline(s: &str) -> Result<prost_types::Timestamp, String> {
    let at = chrono::DateTime::parse_from_rfc3339(s)
        .map_err(|e| format!("`{s}` is not an RFC 3339 time like 2026-05-01T12:00:00Z: {e}"))?;
    let nanos =
        i32::try_from(at.timestamp_subsec_nanos()).map_err(|_| format!("`{s}` has out-of-range nanoseconds"))?;
    Ok(prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos,
    })
}

/// A light syntactic check so typos fail before the call; the broker
/// validates SPIFFE IDs fully.
pub(crate) fn parse_spiffe_id(s: &str) -> Result<String, String> {
    match s.strip_prefix("spiffe://") {
        Some(rest) if !rest.is_empty() && !rest.starts_with('/') => Ok(s.to_owned()),
        _ => Err(format!(
            "`{s}` is not a SPIFFE ID like spiffe://tessera.local/agent/researcher"
        )),
    }
}

/// Where a command reads a token from when given `[TOKEN|-]`.
pub(crate) const TOKEN_ENV: &str = "TESSERA_TOKEN";

/// The token: the argument, or stdin for `-`, or `env` (the value of
/// `TESSERA_TOKEN`) when there is no argument. Surrounding whitespace is
/// dropped; a token with whitespace inside is refused.
pub(crate) fn read_token(arg: Option<&str>, env: Option<String>, stdin: impl Read) -> anyhow::Result<String> {
    let raw = match arg {
        Some("-") => {
            let mut text = String::new();
            // A token is a few KiB; more is not a token.
            stdin
                .take(1 << 20)
                .read_to_string(&mut text)
                .map_err(|e| anyhow::anyhow!("cannot read the token from stdin: {e}"))?;
            text
        }
        Some(token) => token.to_owned(),
        None => {
            env.ok_or_else(|| anyhow::anyhow!("no token: pass TOKEN, `-` to read it from stdin, or set {TOKEN_ENV}"))?
        }
    };
    let token = raw.trim();
    if token.is_empty() {
        anyhow::bail!("the token is empty");
    }
    if token.contains(char::is_whitespace) {
        anyhow::bail!("the token contains whitespace");
    }
    Ok(token.to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test")]

    use super::*;

    #[track_caller]
    fn check_allow(input: &str, audience: &str, scopes: &[&str]) {
        let allow = parse_allow(input).unwrap();
        assert_eq!(allow.audience, audience);
        assert_eq!(allow.scopes, scopes);
    }

    #[test]
    fn allow_splits_on_whitespace() {
        check_allow(
            "https://api.example.com/crm crm.contacts.read",
            "https://api.example.com/crm",
            &["crm.contacts.read"],
        );
        check_allow("  aud   a  b\tc ", "aud", &["a", "b", "c"]);
        assert!(parse_allow("https://api.example.com/crm").is_err());
        assert!(parse_allow("   ").is_err());
    }

    #[test]
    fn ceiling_merges_audiences() {
        let allows = [
            parse_allow("crm a b").unwrap(),
            parse_allow("pay x").unwrap(),
            parse_allow("crm b c").unwrap(),
        ];
        let ceiling = ceiling(&allows);
        assert_eq!(ceiling.len(), 2);
        assert_eq!(ceiling["crm"].scopes, ["a", "b", "c"]);
        assert_eq!(ceiling["pay"].scopes, ["x"]);
    }

    #[test]
    fn labels_are_key_value() {
        assert_eq!(
            parse_label("team=research").unwrap(),
            ("team".into(), "research".into())
        );
        assert_eq!(parse_label("ticket=a=b").unwrap(), ("ticket".into(), "a=b".into()));
        assert_eq!(parse_label("empty=").unwrap(), ("empty".into(), String::new()));
        assert!(parse_label("=x").is_err());
        assert!(parse_label("novalue").is_err());
        let dup = vec![("k".into(), "1".into()), ("k".into(), "2".into())];
        assert!(labels(dup).is_err());
        let ok = labels(vec![("a".into(), "1".into()), ("b".into(), "2".into())]).unwrap();
        assert_eq!(ok.len(), 2);
    }

    #[test]
    fn durations_are_whole_positive_seconds() {
        assert_eq!(parse_seconds("15m"), Ok(900));
        assert_eq!(parse_seconds("1h 30m"), Ok(5400));
        assert_eq!(parse_seconds("90s"), Ok(90));
        assert!(parse_seconds("0s").is_err());
        assert!(parse_seconds("1500ms").is_err());
        assert!(parse_seconds("soon").is_err());
        assert!(parse_seconds("200years").is_err());
    }

    #[test]
    fn deadlines_are_rfc3339() {
        let ts = parse_deadline("2026-01-01T01:00:00+01:00").unwrap();
        assert_eq!(ts.seconds, 1_767_225_600);
        assert_eq!(ts.nanos, 0);
        assert!(parse_deadline("2026-01-01").is_err());
    }

    #[test]
    fn spiffe_ids_are_checked_lightly() {
        assert!(parse_spiffe_id("spiffe://tessera.local/agent/researcher").is_ok());
        assert!(parse_spiffe_id("researcher").is_err());
        assert!(parse_spiffe_id("spiffe://").is_err());
        assert!(parse_spiffe_id("spiffe:///x").is_err());
    }

    #[test]
    fn token_from_argument_stdin_or_env() {
        let no_stdin = std::io::empty();
        assert_eq!(read_token(Some("a.b.c"), None, no_stdin).unwrap(), "a.b.c");
        assert_eq!(
            read_token(Some("-"), Some("env".into()), &b"  a.b.c\n"[..]).unwrap(),
            "a.b.c"
        );
        assert_eq!(
            read_token(None, Some("e.n.v".into()), std::io::empty()).unwrap(),
            "e.n.v"
        );
        // The argument wins over the environment.
        assert_eq!(
            read_token(Some("x.y.z"), Some("e.n.v".into()), std::io::empty()).unwrap(),
            "x.y.z"
        );
        assert!(read_token(None, None, std::io::empty()).is_err());
        assert!(read_token(Some("-"), None, &b"\n"[..]).is_err());
        assert!(read_token(Some("a b"), None, std::io::empty()).is_err());
    }
}
