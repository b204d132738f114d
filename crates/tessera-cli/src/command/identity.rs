//! `tessera identity revoke|disable|enable`: offboarding, as an operator:
//! every live grant of an identity, and everything delegated from them, dies
//! at once; `disable` also refuses the identity everything from then on (on
//! every replica, across restarts) until `enable`.

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
    /// Revoke like `revoke`, and disable the identity until `enable` (as an operator).
    Disable(TargetArgs),
    /// Lift a disable made by `disable` or `revoke --disable` (as an operator).
    Enable(TargetArgs),
}

/// `identity disable` and `identity enable`.
#[derive(Debug, Args)]
pub(crate) struct TargetArgs {
    /// The identity's SPIFFE ID.
    #[arg(value_name = "SPIFFE_ID", value_parser = args::parse_spiffe_id)]
    identity: String,
    /// Why, for the audit trail.
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
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
    /// Also disable the identity until `tessera identity enable`.
    #[arg(long)]
    disable: bool,
}

/// The outcome as printed in JSON.
#[derive(Debug, Serialize)]
struct RevokedView {
    identity: String,
    grants_revoked: u64,
    disabled: bool,
}

/// `identity enable`, as printed in JSON.
#[derive(Debug, Serialize)]
struct EnabledView {
    identity: String,
    enabled: bool,
}

/// Runs an identity command.
pub(crate) async fn run(global: &Global, cmd: IdentityCommand) -> anyhow::Result<()> {
    let (identity, reason, disable) = match cmd {
        IdentityCommand::Revoke(r) => (r.identity, r.reason, r.disable),
        IdentityCommand::Disable(t) => (t.identity, t.reason, true),
        IdentityCommand::Enable(t) => return enable(global, t).await,
    };
    let mut client = AdminClient::new(channel(global).await?);
    let done = client
        .revoke_identity(pb::RevokeIdentityRequest {
            identity: identity.clone(),
            reason: reason.unwrap_or_default(),
            disable,
        })
        .await?
        .into_inner();
    match global.output {
        OutputFormat::Json => output::json(&RevokedView {
            identity,
            grants_revoked: done.grants_revoked,
            disabled: done.disabled,
        }),
        OutputFormat::Text => {
            output::line(format_args!(
                "{identity}: {} live grant(s) revoked{}",
                done.grants_revoked,
                if done.disabled {
                    "; disabled until `tessera identity enable`"
                } else {
                    ""
                }
            ))?;
            Ok(())
        }
    }
}

async fn enable(global: &Global, target: TargetArgs) -> anyhow::Result<()> {
    let mut client = AdminClient::new(channel(global).await?);
    let done = client
        .enable_identity(pb::EnableIdentityRequest {
            identity: target.identity.clone(),
            reason: target.reason.unwrap_or_default(),
        })
        .await?
        .into_inner();
    match global.output {
        OutputFormat::Json => output::json(&EnabledView {
            identity: target.identity,
            enabled: done.enabled,
        }),
        OutputFormat::Text => {
            output::line(format_args!(
                "{}: {}",
                target.identity,
                if done.enabled {
                    "enabled"
                } else {
                    "was not disabled by an operator (nothing changed)"
                }
            ))?;
            Ok(())
        }
    }
}
