//! `tessera grant revoke`: an operator kills one issued token.

use clap::{Args, Subcommand};
use serde::Serialize;
use tessera_client::{AdminClient, pb};

use crate::cli::Global;
use crate::command::channel;
use crate::output::{self, OutputFormat};

/// Grant commands.
#[derive(Debug, Subcommand)]
pub(crate) enum GrantCommand {
    /// Revoke one grant (token) by its id, the token's `jti` (as an operator).
    Revoke(RevokeArgs),
}

/// `grant revoke`.
#[derive(Debug, Args)]
pub(crate) struct RevokeArgs {
    /// The grant id (the token's `jti`).
    grant_id: String,
    /// Why, for the audit trail.
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
}

/// The outcome as printed in JSON.
#[derive(Debug, Serialize)]
struct RevokedView {
    grant_id: String,
    revoked: bool,
}

/// Runs a grant command.
pub(crate) async fn run(global: &Global, cmd: GrantCommand) -> anyhow::Result<()> {
    let GrantCommand::Revoke(revoke) = cmd;
    let mut client = AdminClient::new(channel(global).await?);
    let done = client
        .revoke_grant(pb::RevokeGrantRequest {
            grant_id: revoke.grant_id,
            reason: revoke.reason.unwrap_or_default(),
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
