//! `tessera approvals ls|approve|deny`: an approver (operator) sees the token
//! requests waiting for a person and decides them. A requester can never
//! decide its own request; the broker refuses it whatever the roles.

use clap::{Args, Subcommand};
use serde::Serialize;
use tessera_client::{AdminClient, pb};

use crate::cli::Global;
use crate::command::channel;
use crate::output::{self, OutputFormat};

/// Approval commands.
#[derive(Debug, Subcommand)]
pub(crate) enum ApprovalsCommand {
    /// List pending approvals (as an approver); one page unless --all.
    Ls(LsArgs),
    /// Approve a pending request: its requester receives exactly one token for exactly that request.
    Approve(DecideArgs),
    /// Deny a pending request; the reason reaches the waiting requester.
    Deny(DenyArgs),
}

/// `approvals ls`.
#[derive(Debug, Args)]
pub(crate) struct LsArgs {
    /// Approvals per page (at most 100; default 50).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100))]
    limit: Option<u32>,
    /// Continue from the `next_page_token` of an earlier listing.
    #[arg(long, value_name = "TOKEN", conflicts_with = "all")]
    page_token: Option<String>,
    /// Follow every page.
    #[arg(long)]
    all: bool,
}

/// `approvals approve`.
#[derive(Debug, Args)]
pub(crate) struct DecideArgs {
    /// The approval id (`ap_…`), as `approvals ls` or the requester shows it.
    approval_id: String,
    /// Why, for the audit trail.
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
}

/// `approvals deny`.
#[derive(Debug, Args)]
pub(crate) struct DenyArgs {
    /// The approval id (`ap_…`).
    approval_id: String,
    /// Why; sent to the waiting requester and recorded in the audit trail.
    #[arg(long, value_name = "TEXT", required = true)]
    reason: String,
}

/// An approval as printed.
#[derive(Debug, Serialize)]
struct ApprovalView {
    approval_id: String,
    state: String,
    requester: String,
    task_id: String,
    audience: String,
    scopes: Vec<String>,
    class: String,
    high_impact_scopes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl_seconds: Option<u32>,
    blast_radius: u32,
    reason: String,
    request_hash: String,
    created_at: Option<String>,
    expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    decided_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    decision_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    decided_at: Option<String>,
}

fn approval_state(state: i32) -> String {
    pb::ApprovalState::try_from(state).map_or_else(
        |_| format!("unknown({state})"),
        |s| {
            s.as_str_name()
                .strip_prefix("APPROVAL_STATE_")
                .unwrap_or(s.as_str_name())
                .to_ascii_lowercase()
        },
    )
}

impl From<&pb::Approval> for ApprovalView {
    fn from(a: &pb::Approval) -> Self {
        let some = |s: &str| Some(s.to_owned()).filter(|s| !s.is_empty());
        Self {
            approval_id: a.approval_id.clone(),
            state: approval_state(a.state),
            requester: a.requester.clone(),
            task_id: a.task_id.clone(),
            audience: a.audience.clone(),
            scopes: a.scopes.clone(),
            class: output::scope_class(a.class),
            high_impact_scopes: a.high_impact_scopes.clone(),
            ttl_seconds: (!a.ttl_defaulted).then_some(a.ttl_seconds),
            blast_radius: a.blast_radius,
            reason: a.reason.clone(),
            request_hash: a.request_hash.clone(),
            created_at: output::timestamp(a.created_at.as_ref()),
            expires_at: output::timestamp(a.expires_at.as_ref()),
            decided_by: some(&a.decided_by),
            decision_reason: some(&a.decision_reason),
            decided_at: output::timestamp(a.decided_at.as_ref()),
        }
    }
}

/// A listing as printed in JSON.
#[derive(Debug, Serialize)]
struct ListView {
    approvals: Vec<ApprovalView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_page_token: Option<String>,
}

/// Most pages `--all` follows.
const MAX_PAGES: usize = 200;

/// Runs an approvals command.
pub(crate) async fn run(global: &Global, cmd: ApprovalsCommand) -> anyhow::Result<()> {
    let mut client = AdminClient::new(channel(global).await?);
    let (id, approve, reason) = match cmd {
        ApprovalsCommand::Ls(ls) => return list(global, &mut client, ls).await,
        ApprovalsCommand::Approve(a) => (a.approval_id, true, a.reason.unwrap_or_default()),
        ApprovalsCommand::Deny(d) => (d.approval_id, false, d.reason),
    };
    let done = client
        .decide_approval(pb::DecideApprovalRequest {
            approval_id: id,
            approve,
            reason,
        })
        .await?
        .into_inner();
    let view = done.approval.as_ref().map(ApprovalView::from);
    match global.output {
        OutputFormat::Json => output::json(&view),
        OutputFormat::Text => {
            let Some(v) = view else {
                anyhow::bail!("the broker answered without the approval");
            };
            output::line(format_args!(
                "approval {} {}: {} may {} get one {} token for {} ({})",
                v.approval_id,
                v.state,
                v.requester,
                if done.approved { "now" } else { "not" },
                v.class,
                v.audience,
                v.scopes.join(" "),
            ))?;
            Ok(())
        }
    }
}

async fn list(global: &Global, client: &mut AdminClient, ls: LsArgs) -> anyhow::Result<()> {
    let mut approvals = Vec::new();
    let mut token = ls.page_token.clone().unwrap_or_default();
    let mut next = None;
    for _ in 0..MAX_PAGES {
        let page = client
            .list_approvals(pb::ListApprovalsRequest {
                page_size: ls.limit.unwrap_or(0),
                page_token: token.clone(),
            })
            .await?
            .into_inner();
        approvals.extend(page.approvals.iter().map(ApprovalView::from));
        next = Some(page.next_page_token).filter(|t| !t.is_empty());
        match (&next, ls.all) {
            (Some(t), true) => token = t.clone(),
            _ => break,
        }
    }
    match global.output {
        OutputFormat::Json => output::json(&ListView {
            approvals,
            next_page_token: next,
        }),
        OutputFormat::Text => {
            if approvals.is_empty() {
                output::line("(no pending approvals)")?;
            }
            for a in &approvals {
                output::field("approval", &a.approval_id)?;
                output::field("requester", &a.requester)?;
                output::field("task", &a.task_id)?;
                output::field("audience", &a.audience)?;
                output::field("scopes", format_args!("{} ({})", a.scopes.join(" "), a.class))?;
                output::field("why", &a.reason)?;
                output::field("blast radius", a.blast_radius)?;
                if let Some(ttl) = a.ttl_seconds {
                    output::field("ttl", output::seconds(u64::from(ttl)))?;
                }
                output::field("expires", a.expires_at.as_deref().unwrap_or("-"))?;
                output::field("request hash", &a.request_hash)?;
                output::line("")?;
            }
            if let Some(token) = next {
                output::line(format_args!("more: --page-token {token} (or --all)"))?;
            }
            Ok(())
        }
    }
}
