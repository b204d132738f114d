//! `tessera blast-radius`: what an identity, an owner's identities or a task
//! could reach right now, from their live grants (as an operator).

use std::collections::BTreeMap;

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
    let view = BlastView::from(radius);
    match global.output {
        OutputFormat::Json => output::json(&view),
        OutputFormat::Text => print_text(&view),
    }
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

    use clap::Parser as _;

    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(["tessera", "blast-radius"].iter().chain(args).copied())
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
