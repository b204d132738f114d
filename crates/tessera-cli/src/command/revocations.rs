//! `tessera revocations watch`: follow the broker's revocation feed.

use clap::{Args, Subcommand};
use serde::Serialize;
use tessera_client::{VerifierClient, pb};

use crate::cli::Global;
use crate::command::channel;
use crate::output::{self, OutputFormat};

/// Revocation feed commands.
#[derive(Debug, Subcommand)]
pub(crate) enum RevocationsCommand {
    /// Print revocation events as they happen, one per line (JSON: one object per line).
    Watch(WatchArgs),
}

/// `revocations watch`.
#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    /// Resume after this position (from an earlier event or heartbeat); default: from now.
    #[arg(long, value_name = "POSITION")]
    after: Option<String>,
    /// Stop after this many revocation events (heartbeats don't count).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Also print heartbeats (they carry a position to resume from).
    #[arg(long)]
    heartbeats: bool,
}

/// One item of the feed as printed in JSON.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ItemView {
    Revocation {
        position: String,
        revoked_at: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        grant_id: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        task_id: Option<String>,
        /// A signing key withdrawn by break-glass.
        #[serde(skip_serializing_if = "Option::is_none")]
        kid: Option<String>,
        reason: String,
        not_after: Option<String>,
    },
    Heartbeat {
        position: String,
        sent_at: Option<String>,
    },
}

/// Runs a revocation feed command. Ends when --count events were printed,
/// when the broker closes the feed, or on a status (exit 2; OUT_OF_RANGE
/// means the position is no longer retained; UNAVAILABLE, e.g. `broker
/// shutting down`, comes with the position to resume from).
pub(crate) async fn run(global: &Global, cmd: RevocationsCommand) -> anyhow::Result<()> {
    let RevocationsCommand::Watch(watch) = cmd;
    let mut client = VerifierClient::new(channel(global).await?);
    let mut feed = client
        .watch_revocations(pb::WatchRevocationsRequest {
            after: watch.after.clone().unwrap_or_default(),
        })
        .await?
        .into_inner();
    let mut events = 0_u64;
    let mut last = watch.after;
    loop {
        let message = match feed.message().await {
            Ok(Some(message)) => message,
            Ok(None) => break,
            Err(status) => {
                // A broker shutting down (or a replica lost) ends the feed with
                // UNAVAILABLE: say where to resume so nothing is missed.
                if status.code() == tonic::Code::Unavailable
                    && let Some(position) = &last
                {
                    eprintln!("hint: resume with `tessera revocations watch --after {position}`");
                }
                return Err(status.into());
            }
        };
        let Some(item) = message.item else { continue };
        let view = match item {
            pb::watch_revocations_response::Item::Event(event) => {
                events = events.saturating_add(1);
                last = Some(event.position.clone());
                event_view(event)
            }
            pb::watch_revocations_response::Item::Heartbeat(beat) => {
                last = Some(beat.position.clone());
                if !watch.heartbeats {
                    continue;
                }
                ItemView::Heartbeat {
                    position: beat.position,
                    sent_at: output::timestamp(beat.sent_at.as_ref()),
                }
            }
        };
        match global.output {
            OutputFormat::Json => output::json_line(&view)?,
            OutputFormat::Text => output::line(text_line(&view))?,
        }
        if watch.count.is_some_and(|n| events >= n) {
            break;
        }
    }
    Ok(())
}

fn event_view(event: pb::RevocationEvent) -> ItemView {
    let (grant_id, task_id, kid) = match event.target {
        Some(pb::revocation_event::Target::GrantId(id)) => (Some(id), None, None),
        Some(pb::revocation_event::Target::TaskId(id)) => (None, Some(id), None),
        Some(pb::revocation_event::Target::Kid(kid)) => (None, None, Some(kid)),
        None => (None, None, None),
    };
    ItemView::Revocation {
        position: event.position,
        revoked_at: output::timestamp(event.revoked_at.as_ref()),
        grant_id,
        task_id,
        kid,
        reason: event.reason,
        not_after: output::timestamp(event.not_after.as_ref()),
    }
}

/// `<time> revoked grant|task <id> [reason "<why>"] position <pos>`.
fn text_line(view: &ItemView) -> String {
    match view {
        ItemView::Revocation {
            position,
            revoked_at,
            grant_id,
            task_id,
            kid,
            reason,
            ..
        } => {
            let target = match (grant_id, task_id, kid) {
                (Some(grant), _, _) => format!("grant {grant}"),
                (None, Some(task), _) => format!("task {task}"),
                (None, None, Some(kid)) => format!("key {kid}"),
                (None, None, None) => "unknown target".to_owned(),
            };
            let why = if reason.is_empty() {
                String::new()
            } else {
                format!(" reason {reason:?}")
            };
            format!(
                "{} revoked {target}{why} position {position}",
                revoked_at.as_deref().unwrap_or("-")
            )
        }
        ItemView::Heartbeat { position, sent_at } => {
            format!("{} heartbeat position {position}", sent_at.as_deref().unwrap_or("-"))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]

    use super::*;

    #[test]
    fn events_print_one_line() {
        let view = event_view(pb::RevocationEvent {
            position: "7-0".into(),
            revoked_at: Some(prost_types::Timestamp {
                seconds: 1_767_225_600,
                nanos: 0,
            }),
            reason: "task completed".into(),
            target: Some(pb::revocation_event::Target::TaskId("t1".into())),
            not_after: None,
        });
        assert_eq!(
            text_line(&view),
            r#"2026-01-01T00:00:00Z revoked task t1 reason "task completed" position 7-0"#
        );
        assert_eq!(
            serde_json::to_string(&view).unwrap(),
            r#"{"type":"revocation","position":"7-0","revoked_at":"2026-01-01T00:00:00Z","task_id":"t1","reason":"task completed","not_after":null}"#
        );
    }
}
