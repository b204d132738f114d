//! `tessera revoke-all --confirm`: break-glass, as an operator. Every live
//! grant dies, the signing key is rotated, and every older key leaves the
//! JWKS, so no token minted before survives even offline verification.

use clap::Args;
use serde::Serialize;
use tessera_client::{AdminClient, pb};

use crate::cli::Global;
use crate::command::channel;
use crate::output::{self, OutputFormat};

/// The confirmation the broker requires (RevokeAllRequest.confirm).
const CONFIRM: &str = "revoke-all";

/// `revoke-all`.
#[derive(Debug, Args)]
pub(crate) struct RevokeAllArgs {
    /// Required: yes, revoke every live grant and replace the signing key.
    #[arg(long)]
    confirm: bool,
    /// Why, for the audit trail.
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
}

/// The outcome as printed in JSON.
#[derive(Debug, Serialize)]
struct RevokedAllView {
    grants_revoked: u64,
    new_key_id: String,
}

/// Runs `revoke-all`; without `--confirm`, explains and exits 1 before connecting.
pub(crate) async fn run(global: &Global, args: RevokeAllArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.confirm,
        "revoke-all is break-glass: it revokes EVERY live grant of every task and identity, \
         rotates the signing key and removes every older key from the JWKS, so every token \
         issued so far stops working, even for offline verifiers; \
         run `tessera revoke-all --confirm` to do it"
    );
    let mut client = AdminClient::new(channel(global).await?);
    let done = client
        .revoke_all(pb::RevokeAllRequest {
            confirm: CONFIRM.to_owned(),
            reason: args.reason.unwrap_or_default(),
        })
        .await?
        .into_inner();
    match global.output {
        OutputFormat::Json => output::json(&RevokedAllView {
            grants_revoked: done.grants_revoked,
            new_key_id: done.new_key_id,
        }),
        OutputFormat::Text => {
            output::line(format_args!(
                "{} live grant(s) revoked; now signing with {} (every older key removed from the JWKS)",
                done.grants_revoked, done.new_key_id
            ))?;
            Ok(())
        }
    }
}
