//! Printing: the output format, JSON, aligned text and timestamps.
//!
//! prost messages don't derive `Serialize`, so commands print their own small
//! view structs. Timestamps are RFC 3339 in UTC.

use std::fmt::Display;
use std::io::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use tessera_client::pb;

/// How results are printed on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum OutputFormat {
    /// For people: aligned lines.
    Text,
    /// For scripts: JSON on stdout (one object per line for streams).
    Json,
}

/// Width of the key column of aligned text output.
const KEY_WIDTH: usize = 13;

/// Writes one line to stdout. Unlike `println!`, a closed pipe is an error
/// the caller can return instead of a panic.
pub(crate) fn line(text: impl Display) -> std::io::Result<()> {
    writeln!(std::io::stdout().lock(), "{text}")
}

/// Writes `key   value` with the keys aligned; an empty value prints nothing.
pub(crate) fn field(key: &str, value: impl Display) -> std::io::Result<()> {
    let value = value.to_string();
    if value.is_empty() {
        return Ok(());
    }
    line(format_args!("{key:<KEY_WIDTH$}{value}"))
}

/// Writes `key   first`, then the other values aligned under the first.
pub(crate) fn fields<I, T>(key: &str, values: I) -> std::io::Result<()>
where
    I: IntoIterator<Item = T>,
    T: Display,
{
    let mut key = key;
    for value in values {
        line(format_args!("{key:<KEY_WIDTH$}{value}"))?;
        key = "";
    }
    Ok(())
}

/// Writes `value` as pretty JSON.
pub(crate) fn json(value: &impl Serialize) -> anyhow::Result<()> {
    line(serde_json::to_string_pretty(value)?)?;
    Ok(())
}

/// Writes `value` as JSON on one line (for streams).
pub(crate) fn json_line(value: &impl Serialize) -> anyhow::Result<()> {
    line(serde_json::to_string(value)?)?;
    Ok(())
}

/// A protobuf timestamp as RFC 3339 UTC; `None` when unset or out of range.
pub(crate) fn timestamp(ts: Option<&prost_types::Timestamp>) -> Option<String> {
    let ts = ts?;
    let nanos = u32::try_from(ts.nanos).ok()?;
    let at: DateTime<Utc> = DateTime::from_timestamp(ts.seconds, nanos)?;
    Some(at.to_rfc3339_opts(SecondsFormat::Secs, true))
}

/// Unix seconds (a JWT `exp`, `iat`, `nbf`) as RFC 3339 UTC.
pub(crate) fn unix_time(seconds: i64) -> Option<String> {
    DateTime::from_timestamp(seconds, 0).map(|at| at.to_rfc3339_opts(SecondsFormat::Secs, true))
}

/// `ScopeClass` as its lowercase short name (`read`, `write`, ...).
pub(crate) fn scope_class(class: i32) -> String {
    pb::ScopeClass::try_from(class).map_or_else(
        |_| format!("unknown({class})"),
        |c| short_name(c.as_str_name(), "SCOPE_CLASS_"),
    )
}

/// `TaskState` as its lowercase short name (`active`, `completed`, ...).
pub(crate) fn task_state(state: i32) -> String {
    pb::TaskState::try_from(state).map_or_else(
        |_| format!("unknown({state})"),
        |s| short_name(s.as_str_name(), "TASK_STATE_"),
    )
}

fn short_name(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix).unwrap_or(name).to_ascii_lowercase()
}

/// `1h 5m 3s` for a number of seconds.
pub(crate) fn seconds(secs: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

/// Runs a revocation (`grant revoke`, `task complete`, `task revoke`): one
/// the broker refused with `UNAVAILABLE` (its store away; the revocation
/// may or may not be in) is asked again with bounded backoff, saying so on
/// stderr. Revocations are idempotent, so asking again is safe.
pub(crate) async fn revocation<T, F, Fut>(call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let policy = tessera_client::retry::RetryPolicy::default();
    tessera_client::retry::retry_unavailable(
        policy,
        |attempt, status, wait| {
            // stderr only: stdout stays the result a script parses.
            let _ = writeln!(
                std::io::stderr().lock(),
                "UNAVAILABLE: {}; retrying in {} ms (attempt {attempt} of {})",
                status.message(),
                wait.as_millis(),
                policy.attempts
            );
        },
        call,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let ts = prost_types::Timestamp {
            seconds: 1_767_225_600,
            nanos: 0,
        };
        assert_eq!(timestamp(Some(&ts)).as_deref(), Some("2026-01-01T00:00:00Z"));
        let ts = prost_types::Timestamp {
            seconds: 1_767_225_600,
            nanos: 500_000_000,
        };
        assert_eq!(timestamp(Some(&ts)).as_deref(), Some("2026-01-01T00:00:00Z"));
        assert_eq!(timestamp(None), None);
        assert_eq!(unix_time(0).as_deref(), Some("1970-01-01T00:00:00Z"));
    }

    #[test]
    fn enum_names_are_short() {
        assert_eq!(scope_class(pb::ScopeClass::Write as i32), "write");
        assert_eq!(task_state(pb::TaskState::Completed as i32), "completed");
        assert_eq!(task_state(99), "unknown(99)");
    }
}
