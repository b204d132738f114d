//! `tessera task start|complete|show|revoke`: the orchestrator's tasks, and an
//! operator's revocation of one.

use std::collections::BTreeMap;

use clap::{Args, Subcommand};
use serde::Serialize;
use tessera_client::{AdminClient, OrchestratorClient, pb};

use crate::args::{self, Allow};
use crate::cli::Global;
use crate::command::channel;
use crate::output::{self, OutputFormat};

/// Task commands.
#[derive(Debug, Subcommand)]
pub(crate) enum TaskCommand {
    /// Start a task (as an orchestrator): who may act, with which scopes, until when.
    Start(StartArgs),
    /// Complete a task (as its orchestrator): every grant of it is revoked at once.
    Complete(EndArgs),
    /// Show a task.
    Show(ShowArgs),
    /// Revoke a task (as an operator): every grant of it and of its child tasks dies.
    Revoke(EndArgs),
}

/// `task start`.
#[derive(Debug, Args)]
pub(crate) struct StartArgs {
    /// Task id (1-128 of [A-Za-z0-9._:-]); the broker generates one if omitted.
    #[arg(long)]
    id: Option<String>,
    /// SPIFFE ID of an agent that may request tokens in this task (repeatable).
    #[arg(long = "agent", value_name = "SPIFFE_ID", required = true, value_parser = args::parse_spiffe_id)]
    agents: Vec<String>,
    /// "AUDIENCE SCOPE [SCOPE...]" in one argument: the most any token of the
    /// task may carry for that API (repeatable).
    #[arg(long = "allow", value_name = "AUDIENCE SCOPE...", required = true, value_parser = args::parse_allow)]
    allows: Vec<Allow>,
    /// Lifetime of the task, e.g. 15m or 1h.
    #[arg(long, value_name = "DURATION", value_parser = args::parse_seconds,
          conflicts_with = "deadline", required_unless_present = "deadline")]
    ttl: Option<u32>,
    /// End of the task as an RFC 3339 time, e.g. 2026-05-01T12:00:00Z.
    #[arg(long, value_name = "RFC3339", value_parser = args::parse_deadline)]
    deadline: Option<prost_types::Timestamp>,
    /// A label KEY=VALUE for the audit trail (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = args::parse_label)]
    labels: Vec<(String, String)>,
    /// Parent task; the new task may not outlive it.
    #[arg(long, value_name = "ID")]
    parent: Option<String>,
    /// Tool-level limits: a JSON array of RFC 9396 `mcp_tool` details, e.g.
    /// '[{"type":"mcp_tool","server":"https://mcp.example/mcp","tools":["transfer"],
    /// "constraints":{"transfer":{"amount":{"max":500}}}}]' (see docs/OPERATIONS.md).
    #[arg(long, value_name = "JSON")]
    authorization_details: Option<String>,
}

/// `task complete` and `task revoke`.
#[derive(Debug, Args)]
pub(crate) struct EndArgs {
    /// The task id.
    id: String,
    /// Why, for the audit trail.
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
}

/// `task show`.
#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    /// The task id.
    id: String,
}

/// Runs a task command.
pub(crate) async fn run(global: &Global, cmd: TaskCommand) -> anyhow::Result<()> {
    match cmd {
        TaskCommand::Start(start) => {
            let request = start_request(start)?;
            let mut client = OrchestratorClient::new(channel(global).await?);
            let task = client.start_task(request).await?.into_inner();
            print_task(global.output, &task)
        }
        TaskCommand::Complete(end) => {
            let client = OrchestratorClient::new(channel(global).await?);
            let request = pb::CompleteTaskRequest {
                task_id: end.id,
                reason: end.reason.unwrap_or_default(),
            };
            let done = output::revocation(|| {
                let mut client = client.clone();
                let request = request.clone();
                async move { client.complete_task(request).await }
            })
            .await?
            .into_inner();
            print_ended(
                global.output,
                done.task.as_ref(),
                done.grants_revoked,
                &done.child_tasks_ended,
            )
        }
        TaskCommand::Show(show) => {
            let mut client = OrchestratorClient::new(channel(global).await?);
            let task = client
                .get_task(pb::GetTaskRequest { task_id: show.id })
                .await?
                .into_inner();
            print_task(global.output, &task)
        }
        TaskCommand::Revoke(end) => {
            let client = AdminClient::new(channel(global).await?);
            let request = pb::RevokeTaskRequest {
                task_id: end.id,
                reason: end.reason.unwrap_or_default(),
            };
            let done = output::revocation(|| {
                let mut client = client.clone();
                let request = request.clone();
                async move { client.revoke_task(request).await }
            })
            .await?
            .into_inner();
            print_ended(
                global.output,
                done.task.as_ref(),
                done.grants_revoked,
                &done.child_tasks_ended,
            )
        }
    }
}

fn start_request(start: StartArgs) -> anyhow::Result<pb::StartTaskRequest> {
    let lifetime = match (start.ttl, start.deadline) {
        (Some(seconds), None) => pb::start_task_request::Lifetime::DurationSeconds(seconds),
        (None, Some(deadline)) => pb::start_task_request::Lifetime::Deadline(deadline),
        // clap enforces exactly one of the two.
        _ => anyhow::bail!("give exactly one of --ttl and --deadline"),
    };
    Ok(pb::StartTaskRequest {
        authorization_details: start.authorization_details.unwrap_or_default(),
        task_id: start.id.unwrap_or_default(),
        agents: start.agents,
        scope_ceiling: args::ceiling(&start.allows),
        lifetime: Some(lifetime),
        labels: args::labels(start.labels).map_err(anyhow::Error::msg)?,
        parent_task_id: start.parent.unwrap_or_default(),
    })
}

/// A task as printed.
#[derive(Debug, Serialize)]
struct TaskView {
    task_id: String,
    state: String,
    orchestrator: String,
    agents: Vec<String>,
    /// Audience → scopes, sorted for stable output.
    scope_ceiling: BTreeMap<String, Vec<String>>,
    deadline: Option<String>,
    labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_task_id: Option<String>,
    created_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ended_at: Option<String>,
    live_grants: u64,
}

impl From<&pb::Task> for TaskView {
    fn from(task: &pb::Task) -> Self {
        Self {
            task_id: task.task_id.clone(),
            state: output::task_state(task.state),
            orchestrator: task.orchestrator.clone(),
            agents: task.agents.clone(),
            scope_ceiling: task
                .scope_ceiling
                .iter()
                .map(|(aud, set)| (aud.clone(), set.scopes.clone()))
                .collect(),
            deadline: output::timestamp(task.deadline.as_ref()),
            labels: task.labels.clone().into_iter().collect(),
            parent_task_id: Some(task.parent_task_id.clone()).filter(|p| !p.is_empty()),
            created_at: output::timestamp(task.created_at.as_ref()),
            ended_at: output::timestamp(task.ended_at.as_ref()),
            live_grants: task.live_grants,
        }
    }
}

fn print_task(format: OutputFormat, task: &pb::Task) -> anyhow::Result<()> {
    let view = TaskView::from(task);
    match format {
        OutputFormat::Json => output::json(&view),
        OutputFormat::Text => print_task_text(&view),
    }
}

fn print_task_text(view: &TaskView) -> anyhow::Result<()> {
    output::field("task", &view.task_id)?;
    output::field("state", &view.state)?;
    output::field("deadline", view.deadline.as_deref().unwrap_or("-"))?;
    output::fields("agents", &view.agents)?;
    output::fields(
        "ceiling",
        view.scope_ceiling
            .iter()
            .map(|(aud, scopes)| format!("{aud} {}", scopes.join(" "))),
    )?;
    output::fields("labels", view.labels.iter().map(|(k, v)| format!("{k}={v}")))?;
    output::field("parent", view.parent_task_id.as_deref().unwrap_or_default())?;
    output::field("orchestrator", &view.orchestrator)?;
    output::field("created", view.created_at.as_deref().unwrap_or_default())?;
    output::field("ended", view.ended_at.as_deref().unwrap_or_default())?;
    output::field("live grants", view.live_grants)?;
    Ok(())
}

/// The outcome of completing or revoking a task, as printed.
#[derive(Debug, Serialize)]
struct EndedView {
    task: Option<TaskView>,
    grants_revoked: u64,
    child_tasks_ended: Vec<String>,
}

fn print_ended(
    format: OutputFormat,
    task: Option<&pb::Task>,
    grants_revoked: u64,
    child_tasks_ended: &[String],
) -> anyhow::Result<()> {
    let view = EndedView {
        task: task.map(TaskView::from),
        grants_revoked,
        child_tasks_ended: child_tasks_ended.to_vec(),
    };
    match format {
        OutputFormat::Json => output::json(&view),
        OutputFormat::Text => {
            if let Some(task) = &view.task {
                print_task_text(task)?;
            }
            output::field("revoked now", view.grants_revoked)?;
            output::fields("child tasks", &view.child_tasks_ended)?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test")]

    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    fn start(argv: &[&str]) -> anyhow::Result<pb::StartTaskRequest> {
        let argv = ["tessera", "task", "start"].iter().chain(argv).copied();
        match Cli::try_parse_from(argv)?.command {
            Command::Task(TaskCommand::Start(start)) => start_request(start),
            other => anyhow::bail!("parsed as {other:?}"),
        }
    }

    #[test]
    fn start_builds_the_request() {
        let req = start(&[
            "--id",
            "t-1",
            "--agent",
            "spiffe://tessera.local/agent/researcher",
            "--agent",
            "spiffe://tessera.local/agent/writer",
            "--allow",
            "https://api.example.com/crm crm.contacts.read crm.notes.read",
            "--allow",
            "https://api.example.com/payments payments.invoices.read",
            "--ttl",
            "15m",
            "--label",
            "ticket=SEC-1",
            "--parent",
            "root",
        ])
        .unwrap();
        assert_eq!(req.task_id, "t-1");
        assert_eq!(req.agents.len(), 2);
        assert_eq!(
            req.scope_ceiling["https://api.example.com/crm"].scopes,
            ["crm.contacts.read", "crm.notes.read"]
        );
        assert_eq!(
            req.lifetime,
            Some(pb::start_task_request::Lifetime::DurationSeconds(900))
        );
        assert_eq!(req.labels["ticket"], "SEC-1");
        assert_eq!(req.parent_task_id, "root");
    }

    #[test]
    fn start_refuses_bad_input() {
        let base = ["--agent", "spiffe://td/a", "--ttl", "5m"];
        let with = |extra: &[&str]| start(&[&base[..], extra].concat());
        assert!(with(&["--allow", "aud"]).is_err());
        assert!(with(&["--allow", "aud s", "--label", "k=1", "--label", "k=2"]).is_err());
        assert!(start(&["--agent", "researcher", "--allow", "aud s", "--ttl", "5m"]).is_err());
        assert!(start(&["--allow", "aud s", "--ttl", "5m"]).is_err());
        assert!(with(&["--allow", "aud s"]).is_ok());
    }
}
