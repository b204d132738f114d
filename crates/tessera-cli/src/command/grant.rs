//! `tessera grant ls|revoke` (also spelled `grants`): an operator lists live
//! grants, or kills one issued token.

use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use tessera_client::{AdminClient, pb};

use crate::args;
use crate::cli::Global;
use crate::command::channel;
use crate::output::{self, OutputFormat};

/// Grant commands.
#[derive(Debug, Subcommand)]
pub(crate) enum GrantCommand {
    /// List live grants (as an operator), filtered; one page unless --all.
    Ls(LsArgs),
    /// Revoke one grant (token) by its id, the token's `jti` (as an operator).
    Revoke(RevokeArgs),
}

/// `grant revoke`.
#[derive(Debug, Args)]
pub(crate) struct RevokeArgs {
    /// The grant id (the token's `jti`).
    // A grant id is base64url and may start with `-`: taken as the id, not
    // as an option.
    #[arg(allow_hyphen_values = true)]
    grant_id: String,
    /// Why, for the audit trail.
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
}

/// A scope class to filter on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ClassArg {
    Discover,
    Read,
    Write,
    Admin,
}

impl From<ClassArg> for pb::ScopeClass {
    fn from(c: ClassArg) -> Self {
        match c {
            ClassArg::Discover => Self::Discover,
            ClassArg::Read => Self::Read,
            ClassArg::Write => Self::Write,
            ClassArg::Admin => Self::Admin,
        }
    }
}

/// `grant ls`.
#[derive(Debug, Args)]
pub(crate) struct LsArgs {
    /// Only grants of this task.
    #[arg(long, value_name = "ID")]
    task: Option<String>,
    /// Only grants held by this identity (for a delegated grant, the
    /// delegate it was issued to, not its token's `sub`).
    #[arg(long, value_name = "SPIFFE_ID", value_parser = args::parse_spiffe_id)]
    subject: Option<String>,
    /// Only grants of identities with this owner (as registered).
    #[arg(long, value_name = "OWNER")]
    owner: Option<String>,
    /// Only grants for this audience.
    #[arg(long, value_name = "AUDIENCE")]
    audience: Option<String>,
    /// Only grants of this scope class.
    #[arg(long, value_enum, value_name = "CLASS")]
    class: Option<ClassArg>,
    /// Only grants expiring before this RFC 3339 time.
    #[arg(long, value_name = "RFC3339", value_parser = args::parse_deadline)]
    expiring_before: Option<prost_types::Timestamp>,
    /// Only grants carrying a high-impact scope.
    #[arg(long)]
    high_impact: bool,
    /// Grants per page (the broker serves at most 1000; default 100).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    limit: Option<u32>,
    /// Continue from the `next_page_token` of an earlier listing.
    #[arg(long, value_name = "TOKEN", conflicts_with = "all")]
    page_token: Option<String>,
    /// Follow every page and print all live grants.
    #[arg(long)]
    all: bool,
}

/// A grant as printed.
#[derive(Debug, Serialize)]
struct GrantView {
    grant_id: String,
    task_id: String,
    subject: String,
    audience: String,
    scopes: Vec<String>,
    class: String,
    issued_at: Option<String>,
    expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_grant_id: Option<String>,
    key_id: String,
    high_impact: bool,
    blast_radius: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    approval_id: Option<String>,
}

impl From<&pb::Grant> for GrantView {
    fn from(g: &pb::Grant) -> Self {
        Self {
            grant_id: g.grant_id.clone(),
            task_id: g.task_id.clone(),
            subject: g.subject.clone(),
            audience: g.audience.clone(),
            scopes: g.scopes.clone(),
            class: output::scope_class(g.class),
            issued_at: output::timestamp(g.issued_at.as_ref()),
            expires_at: output::timestamp(g.expires_at.as_ref()),
            parent_grant_id: Some(g.parent_grant_id.clone()).filter(|p| !p.is_empty()),
            key_id: g.key_id.clone(),
            high_impact: g.high_impact,
            blast_radius: g.blast_radius,
            approval_id: Some(g.approval_id.clone()).filter(|a| !a.is_empty()),
        }
    }
}

/// A listing as printed in JSON.
#[derive(Debug, Serialize)]
struct ListView {
    grants: Vec<GrantView>,
    /// Pass to `--page-token` for the next page; absent when there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_page_token: Option<String>,
}

/// The outcome as printed in JSON.
#[derive(Debug, Serialize)]
struct RevokedView {
    grant_id: String,
    revoked: bool,
}

/// Runs a grant command.
pub(crate) async fn run(global: &Global, cmd: GrantCommand) -> anyhow::Result<()> {
    let revoke = match cmd {
        GrantCommand::Ls(ls) => return list(global, ls).await,
        GrantCommand::Revoke(revoke) => revoke,
    };
    let client = AdminClient::new(channel(global).await?);
    let request = pb::RevokeGrantRequest {
        grant_id: revoke.grant_id,
        reason: revoke.reason.unwrap_or_default(),
    };
    let done = output::revocation(|| {
        let mut client = client.clone();
        let request = request.clone();
        async move { client.revoke_grant(request).await }
    })
    .await?
    .into_inner();
    match global.output {
        OutputFormat::Json => output::json(&RevokedView {
            grant_id: done.grant_id,
            revoked: done.revoked,
        }),
        OutputFormat::Text if done.revoked => {
            output::line(format_args!("grant {} revoked", done.grant_id))?;
            Ok(())
        }
        OutputFormat::Text => {
            output::line(format_args!(
                "grant {} was already revoked or expired; nothing to do",
                done.grant_id
            ))?;
            Ok(())
        }
    }
}

fn list_request(ls: &LsArgs, page_token: String) -> pb::ListGrantsRequest {
    pb::ListGrantsRequest {
        task_id: ls.task.clone().unwrap_or_default(),
        subject: ls.subject.clone().unwrap_or_default(),
        owner: ls.owner.clone().unwrap_or_default(),
        audience: ls.audience.clone().unwrap_or_default(),
        class: ls.class.map_or(pb::ScopeClass::Unspecified, pb::ScopeClass::from) as i32,
        high_impact_only: ls.high_impact,
        expiring_before: ls.expiring_before,
        page_size: ls.limit.unwrap_or(0),
        page_token,
    }
}

/// Most pages `--all` follows (a million grants at 1000 a page).
const MAX_PAGES: usize = 1000;

async fn list(global: &Global, ls: LsArgs) -> anyhow::Result<()> {
    let mut client = AdminClient::new(channel(global).await?);
    let mut grants = Vec::new();
    let mut token = ls.page_token.clone().unwrap_or_default();
    let mut next = None;
    let progress = ls
        .all
        .then(|| crate::progress::Progress::counter("listing grants", "grants"));
    for _ in 0..MAX_PAGES {
        let page = client.list_grants(list_request(&ls, token)).await?.into_inner();
        grants.extend(page.grants.iter().map(GrantView::from));
        if let Some(p) = &progress {
            p.inc(page.grants.len() as u64);
        }
        next = Some(page.next_page_token).filter(|t| !t.is_empty());
        match (&next, ls.all) {
            (Some(t), true) => token = t.clone(),
            _ => break,
        }
    }
    if let Some(p) = progress {
        p.finish();
    }
    anyhow::ensure!(
        !(ls.all && next.is_some()),
        "stopped after {MAX_PAGES} pages; narrow the filter"
    );
    match global.output {
        OutputFormat::Json => output::json(&ListView {
            grants,
            next_page_token: next,
        }),
        OutputFormat::Text => print_table(&grants, next.as_deref()),
    }
}

fn print_table(grants: &[GrantView], next: Option<&str>) -> anyhow::Result<()> {
    for line in table(grants) {
        output::line(line)?;
    }
    if grants.is_empty() {
        output::line("(no live grants match)")?;
    }
    if let Some(token) = next {
        output::line(format_args!("more: --page-token {token} (or --all)"))?;
    }
    Ok(())
}

/// The header and one line per grant, in aligned columns. The third column
/// is the identity holding the grant (a delegated grant's delegate), which
/// for a delegated token is not its `sub` claim: hence HOLDER, not SUBJECT.
fn table(grants: &[GrantView]) -> Vec<String> {
    let header = ["GRANT", "TASK", "HOLDER", "AUDIENCE", "CLASS", "EXPIRES", "SCOPES"];
    let rows: Vec<[String; 7]> = grants
        .iter()
        .map(|g| {
            [
                g.grant_id.clone(),
                g.task_id.clone(),
                g.subject.clone(),
                g.audience.clone(),
                g.class.clone(),
                g.expires_at.clone().unwrap_or_else(|| "-".into()),
                g.scopes.join(" "),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let render = |cells: &[String]| {
        cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    std::iter::once(render(&header.map(str::to_owned)))
        .chain(rows.iter().map(|row| render(row)))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::indexing_slicing, clippy::panic, reason = "test")]

    use super::*;

    #[test]
    fn a_grant_id_starting_with_a_dash_is_an_id() {
        use clap::Parser as _;

        use crate::cli::{Cli, Command};
        let argv = [
            "tessera",
            "grant",
            "revoke",
            "-MTT9bgSiSz5d-aT8p6mk7KBA3rgsw",
            "--reason",
            "r",
        ];
        match Cli::try_parse_from(argv).map(|cli| cli.command) {
            Ok(Command::Grant(GrantCommand::Revoke(args))) => {
                assert_eq!(args.grant_id, "-MTT9bgSiSz5d-aT8p6mk7KBA3rgsw");
                assert_eq!(args.reason.as_deref(), Some("r"));
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn the_table_names_the_holder() {
        let delegated = GrantView::from(&pb::Grant {
            grant_id: "g2".into(),
            task_id: "t2".into(),
            subject: "spiffe://tessera.local/agent/writer".into(),
            audience: "https://api.example.com/crm".into(),
            scopes: vec!["crm.contacts.read".into()],
            parent_grant_id: "g1".into(),
            ..Default::default()
        });
        let lines = table(&[delegated]);
        let header: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(header[2], "HOLDER", "{}", lines[0]);
        let row: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(row[2], "spiffe://tessera.local/agent/writer");
    }
}
