//! `tessera keys ls|rotate`: the broker's published signing keys, and a
//! rotation on demand (as an operator).

use clap::{Args, Subcommand};
use serde::Serialize;
use tessera_client::{AdminClient, VerifierClient, pb};

use crate::cli::Global;
use crate::command::channel;
use crate::output::{self, OutputFormat};

/// Key commands.
#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// List the keys in the JWKS: kid, alg, kty. Which one signs now and
    /// which is next or retiring is not in the broker's API (GetJwks).
    Ls,
    /// Rotate the signing key now (as an operator); the old key stays in the
    /// JWKS until the last token it signed has expired.
    Rotate(RotateArgs),
}

/// `keys rotate`.
#[derive(Debug, Args)]
pub(crate) struct RotateArgs {
    /// Why, for the audit trail.
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
}

/// One key as printed.
#[derive(Debug, Serialize, PartialEq, Eq)]
struct KeyView {
    kid: String,
    alg: String,
    kty: String,
}

/// A listing as printed in JSON.
#[derive(Debug, Serialize)]
struct KeysView {
    keys: Vec<KeyView>,
}

/// A rotation as printed in JSON.
#[derive(Debug, Serialize)]
struct RotatedView {
    new_key_id: String,
    retired_key_id: String,
}

/// Runs a keys command.
pub(crate) async fn run(global: &Global, cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Ls => list(global).await,
        KeysCommand::Rotate(rotate) => self::rotate(global, rotate).await,
    }
}

fn views(keys: &[pb::Jwk]) -> Vec<KeyView> {
    keys.iter()
        .map(|k| KeyView {
            kid: k.kid.clone(),
            alg: k.alg.clone(),
            kty: k.kty.clone(),
        })
        .collect()
}

async fn list(global: &Global) -> anyhow::Result<()> {
    let mut client = VerifierClient::new(channel(global).await?);
    let jwks = client.get_jwks(pb::GetJwksRequest {}).await?.into_inner();
    let keys = views(&jwks.keys);
    match global.output {
        OutputFormat::Json => output::json(&KeysView { keys }),
        OutputFormat::Text => {
            if keys.is_empty() {
                output::line("(no published keys)")?;
            }
            for k in &keys {
                output::line(format_args!("{}  {}  {}", k.kid, k.alg, k.kty))?;
            }
            Ok(())
        }
    }
}

async fn rotate(global: &Global, rotate: RotateArgs) -> anyhow::Result<()> {
    let mut client = AdminClient::new(channel(global).await?);
    let done = client
        .rotate_signing_key(pb::RotateSigningKeyRequest {
            reason: rotate.reason.unwrap_or_default(),
        })
        .await?
        .into_inner();
    match global.output {
        OutputFormat::Json => output::json(&RotatedView {
            new_key_id: done.new_key_id,
            retired_key_id: done.retired_key_id,
        }),
        OutputFormat::Text => {
            output::line(format_args!(
                "signing with {} now; {} stays in the JWKS until its last token expires",
                done.new_key_id, done.retired_key_id
            ))?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_show_kid_alg_kty() {
        let keys = views(&[pb::Jwk {
            kty: "EC".into(),
            crv: "P-256".into(),
            kid: "k1".into(),
            alg: "ES256".into(),
            ..Default::default()
        }]);
        assert_eq!(
            keys,
            [KeyView {
                kid: "k1".into(),
                alg: "ES256".into(),
                kty: "EC".into()
            }]
        );
    }
}
