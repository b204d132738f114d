//! `tessera identity revoke`: offboarding, as an operator: every live grant
//! of an identity, and everything delegated from them, dies at once.

use clap::{Args, Subcommand};
use serde::Serialize;
use tessera_client::{AdminClient, pb};

use crate::args;
use crate::cli::Global;
use crate::command::channel;
use crate::output::{self, OutputFormat};

/// Identity commands.
#[derive(Debug, Subcommand)]
pub(crate) enum IdentityCommand {
    /// Revoke every live grant of an identity and all delegated from them (as an operator).
    Revoke(RevokeArgs),
}

/// `identity revoke`.
#[derive(Debug, Args)]
pub(crate) struct RevokeArgs {
    /// The identity's SPIFFE ID.
    #[arg(value_name = "SPIFFE_ID", value_parser = args::parse_spiffe_id)]
    identity: String,
    /// Why, for the audit trail.
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
}

/// The outcome as printed in JSON.
#[derive(Debug, Serialize)]
struct RevokedView {
    identity: String,
    grants_revoked: u64,
    disabled: bool,
}

/// Runs an identity command.
pub(crate) async fn run(global: &Global, cmd: IdentityCommand) -> anyhow::Result<()> {
    let IdentityCommand::Revoke(revoke) = cmd;
    let mut client = AdminClient::new(channel(global).await?);
    let done = client
        .revoke_identity(pb::RevokeIdentityRequest {
            identity: revoke.identity.clone(),
            reason: revoke.reason.unwrap_or_default(),
            disable: false,
        })
        .await?
        .into_inner();
    match global.output {
        OutputFormat::Json => output::json(&RevokedView {
            identity: revoke.identity,
            grants_revoked: done.grants_revoked,
            disabled: done.disabled,
        }),
        OutputFormat::Text => {
            output::line(format_args!(
                "{}: {} live grant(s) revoked",
                revoke.identity, done.grants_revoked
            ))?;
            Ok(())
        }
    }
}
