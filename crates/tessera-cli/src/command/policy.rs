//! `tessera policy validate|reload`: check a Cedar policy set offline with
//! the broker's own engine and schema, or make the broker reload its policy.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::Serialize;
use tessera_client::{AdminClient, pb};
use tessera_core::policy::{PolicyEngine, read_policy_files};

use crate::cli::Global;
use crate::command::channel;
use crate::output::{self, OutputFormat};

/// Policy commands.
#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCommand {
    /// Parse and validate a .cedar file, or every .cedar file of a directory,
    /// against tesserad's schema (strict), offline. Exit 1 with FILE:LINE on
    /// the first problem.
    Validate(ValidateArgs),
    /// Make the broker re-read its policy directory (as an operator). A set
    /// that does not validate is refused and the policy in force stays.
    Reload,
}

/// `policy validate`.
#[derive(Debug, Args)]
pub(crate) struct ValidateArgs {
    /// A .cedar file or a directory of them.
    #[arg(value_name = "FILE|DIR")]
    path: PathBuf,
}

/// A valid policy set, as printed in JSON.
#[derive(Debug, Serialize)]
struct ValidView {
    valid: bool,
    policy_set_hash: String,
    policies: usize,
    files: Vec<String>,
    policy_ids: Vec<String>,
}

/// A reload, as printed in JSON.
#[derive(Debug, Serialize)]
struct ReloadedView {
    policy_set_hash: String,
    policies: u32,
}

/// Runs a policy command.
pub(crate) async fn run(global: &Global, cmd: PolicyCommand) -> anyhow::Result<()> {
    match cmd {
        PolicyCommand::Validate(args) => validate(global, &args),
        PolicyCommand::Reload => reload(global).await,
    }
}

fn validate(global: &Global, args: &ValidateArgs) -> anyhow::Result<()> {
    let files = read_policy_files(&args.path)?;
    let engine = PolicyEngine::load(&files)?;
    let view = ValidView {
        valid: true,
        policy_set_hash: engine.hash().to_string(),
        policies: engine.len(),
        files: engine.files().to_vec(),
        policy_ids: engine.policy_ids().iter().map(ToString::to_string).collect(),
    };
    match global.output {
        OutputFormat::Json => output::json(&view),
        OutputFormat::Text => {
            output::line(format_args!(
                "valid: {} policies in {} files, {}",
                view.policies,
                view.files.len(),
                view.policy_set_hash
            ))?;
            Ok(())
        }
    }
}

async fn reload(global: &Global) -> anyhow::Result<()> {
    let mut client = AdminClient::new(channel(global).await?);
    let done = client.reload_policy(pb::ReloadPolicyRequest {}).await?.into_inner();
    match global.output {
        OutputFormat::Json => output::json(&ReloadedView {
            policy_set_hash: done.policy_set_hash,
            policies: done.policies,
        }),
        OutputFormat::Text => {
            output::line(format_args!(
                "policy reloaded: {} policies, {}",
                done.policies, done.policy_set_hash
            ))?;
            Ok(())
        }
    }
}
