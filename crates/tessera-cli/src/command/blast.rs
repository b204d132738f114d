//! `tessera blast-radius`: what an identity, an owner's identities or a task
//! could reach right now, from their live grants (as an operator).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use clap::{ArgGroup, Args};
use serde::Serialize;
use tessera_client::{AdminClient, pb};

use crate::args;
use crate::cli::Global;
use crate::command::channel;
use crate::output::{self, OutputFormat};

/// `blast-radius`: exactly one target.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["identity", "owner", "task"])))]
pub(crate) struct BlastArgs {
    /// The live grants of this identity.
    #[arg(long, value_name = "SPIFFE_ID", value_parser = args::parse_spiffe_id)]
    identity: Option<String>,
    /// The live grants of every identity registered with this owner.
    #[arg(long, value_name = "OWNER")]
    owner: Option<String>,
    /// The live grants of this task (not of its child tasks).
    #[arg(long, value_name = "ID")]
    task: Option<String>,
}

impl BlastArgs {
    fn target(&self) -> Option<pb::blast_radius_request::Target> {
        use pb::blast_radius_request::Target;
        self.identity
            .clone()
            .map(Target::Identity)
            .or_else(|| self.owner.clone().map(Target::Owner))
            .or_else(|| self.task.clone().map(Target::TaskId))
    }
}

/// The blast radius as printed in JSON.
#[derive(Debug, Serialize)]
struct BlastView {
    live_grants: u64,
    audiences: Vec<String>,
    /// Scope entries per class (`read`, `write`, ...), over the live grants.
    scopes_by_class: BTreeMap<String, u64>,
    high_impact_grants: u64,
    longest_remaining_ttl_seconds: u32,
    max_delegation_depth: u32,
    delegation_fan_out: u64,
    owners: Vec<String>,
    /// Sum of the live grants' blast-radius scores.
    total_score: u64,
}

impl From<pb::BlastRadiusResponse> for BlastView {
    fn from(r: pb::BlastRadiusResponse) -> Self {
        Self {
            live_grants: r.live_grants,
            audiences: r.audiences,
            scopes_by_class: r
                .scopes_by_class
                .iter()
                .map(|c| (output::scope_class(c.class), c.scopes))
                .collect(),
            high_impact_grants: r.high_impact_grants,
            longest_remaining_ttl_seconds: r.longest_remaining_ttl_seconds,
            max_delegation_depth: r.max_delegation_depth,
            delegation_fan_out: r.delegation_fan_out,
            owners: r.owners,
            total_score: r.total_score,
        }
    }
}

/// Runs `blast-radius`.
pub(crate) async fn run(global: &Global, blast: BlastArgs) -> anyhow::Result<()> {
    let mut client = AdminClient::new(channel(global).await?);
    let radius = client
        .blast_radius(pb::BlastRadiusRequest { target: blast.target() })
        .await?
        .into_inner();
    let mut view = BlastView::from(radius);
    // A delegated grant is at least one hop deep: a depth of 0 beside
    // delegated grants means the broker counted hops only among the
    // target's own grants (a delegate's parents are held by someone else).
    if view.delegation_fan_out > 0 && view.max_delegation_depth == 0 {
        view.max_delegation_depth = delegation_depth(&mut client, &blast).await?;
    }
    match global.output {
        OutputFormat::Json => output::json(&view),
        OutputFormat::Text => print_text(&view),
    }
}

/// Most pages followed per listing (a million grants at 1000 a page).
const MAX_PAGES: usize = 1000;

/// Every live grant matching `filter`, all pages.
async fn list_all(client: &mut AdminClient, filter: pb::ListGrantsRequest) -> anyhow::Result<Vec<pb::Grant>> {
    let mut grants = Vec::new();
    let mut page_token = String::new();
    for _ in 0..MAX_PAGES {
        let page = client
            .list_grants(pb::ListGrantsRequest {
                page_token,
                ..filter.clone()
            })
            .await?
            .into_inner();
        grants.extend(page.grants);
        if page.next_page_token.is_empty() {
            return Ok(grants);
        }
        page_token = page.next_page_token;
    }
    anyhow::bail!("stopped after {MAX_PAGES} pages of grants; narrow the target")
}

/// The deepest delegation among the target's live grants, following each
/// parent through every live grant of its task. Parents of live grants are
/// live (a child never outlives its parent, and revoking a parent revokes
/// its children), so the listing holds the whole chain.
async fn delegation_depth(client: &mut AdminClient, blast: &BlastArgs) -> anyhow::Result<u32> {
    let filter = pb::ListGrantsRequest {
        subject: blast.identity.clone().unwrap_or_default(),
        owner: blast.owner.clone().unwrap_or_default(),
        task_id: blast.task.clone().unwrap_or_default(),
        ..Default::default()
    };
    let targets = list_all(client, filter).await?;
    let tasks: BTreeSet<&str> = targets
        .iter()
        .filter(|g| !g.parent_grant_id.is_empty())
        .map(|g| g.task_id.as_str())
        .collect();
    let mut parents = HashMap::new();
    for task in tasks {
        let of_task = list_all(
            client,
            pb::ListGrantsRequest {
                task_id: task.to_owned(),
                ..Default::default()
            },
        )
        .await?;
        parents.extend(of_task.into_iter().map(|g| (g.grant_id, g.parent_grant_id)));
    }
    Ok(max_depth(targets.iter().map(|g| g.grant_id.as_str()), &parents))
}

/// The most parent hops from any of `grants` through `parents` (grant id →
/// parent id, empty for a root). A parent missing from `parents` (expired
/// while listing) still counts as one hop. Bounded by the map's size, so a
/// corrupt cycle cannot loop forever.
fn max_depth<'a>(grants: impl Iterator<Item = &'a str>, parents: &HashMap<String, String>) -> u32 {
    grants
        .map(|id| {
            let mut hops = 0u32;
            let mut at = id;
            while let Some(parent) = parents.get(at).filter(|p| !p.is_empty()) {
                hops = hops.saturating_add(1);
                if hops as usize > parents.len() {
                    break;
                }
                at = parent;
            }
            hops
        })
        .max()
        .unwrap_or(0)
}

fn print_text(v: &BlastView) -> anyhow::Result<()> {
    let or_none = |items: &[String]| {
        if items.is_empty() {
            "-".to_owned()
        } else {
            items.join(", ")
        }
    };
    output::field("live grants", v.live_grants)?;
    output::field("audiences", or_none(&v.audiences))?;
    let classes: Vec<String> = v.scopes_by_class.iter().map(|(c, n)| format!("{c} {n}")).collect();
    output::field("scopes", or_none(&classes))?;
    output::field("high impact", v.high_impact_grants)?;
    output::field("total score", v.total_score)?;
    output::field(
        "longest ttl",
        output::seconds(u64::from(v.longest_remaining_ttl_seconds)),
    )?;
    output::field(
        "delegation",
        format_args!(
            "{} delegated grant(s), depth {}",
            v.delegation_fan_out, v.max_delegation_depth
        ),
    )?;
    output::field("owners", or_none(&v.owners))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]

    use std::collections::HashMap;

    use clap::Parser as _;

    use super::max_depth;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(["tessera", "blast-radius"].iter().chain(args).copied())
    }

    #[test]
    fn depth_follows_parents_held_by_others() {
        let parents: HashMap<String, String> = [
            ("root", ""),
            ("child", "root"),
            ("grandchild", "child"),
            ("lone", "gone"),
        ]
        .into_iter()
        .map(|(id, parent)| (id.to_owned(), parent.to_owned()))
        .collect();
        // The target holds only the leaf; its parents belong to others.
        assert_eq!(max_depth(["grandchild"].into_iter(), &parents), 2);
        assert_eq!(max_depth(["root", "child"].into_iter(), &parents), 1);
        assert_eq!(max_depth(["root"].into_iter(), &parents), 0);
        // A parent that expired while listing still counts as a hop.
        assert_eq!(max_depth(["lone"].into_iter(), &parents), 1);
        assert_eq!(max_depth(std::iter::empty(), &parents), 0);
        // A corrupt cycle ends.
        let cycle: HashMap<String, String> = [("a", "b"), ("b", "a")]
            .into_iter()
            .map(|(id, parent)| (id.to_owned(), parent.to_owned()))
            .collect();
        assert!(max_depth(["a"].into_iter(), &cycle) <= 3);
    }

    #[test]
    fn exactly_one_target() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["--owner", "a", "--task", "t"]).is_err());
        let Command::BlastRadius(args) = parse(&["--task", "t1"]).unwrap().command else {
            panic!("not blast-radius");
        };
        assert_eq!(
            args.target(),
            Some(tessera_client::pb::blast_radius_request::Target::TaskId("t1".into()))
        );
        assert!(parse(&["--identity", "not-a-spiffe-id"]).is_err());
    }
}
