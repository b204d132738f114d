//! `tessera keys ls|rotate`: the broker's published signing keys, and a
//! rotation on demand (as an operator).

use clap::{Args, Subcommand};
use serde::Serialize;
use tessera_client::{AdminClient, VerifierClient, pb};
use tessera_core::clock::Clock as _;

use crate::cli::Global;
use crate::command::channel;
use crate::output::{self, OutputFormat};

/// Key commands.
#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// List the keys in the JWKS: kid, alg, kty, and each key's state as
    /// the answering broker sees it (current: it signs with it; next:
    /// published ahead of its scheduled rotation; active: another replica's;
    /// retiring: signs no more) with the time it has left in the JWKS.
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
    /// `current`, `next`, `active` or `retiring`.
    state: String,
    /// RFC 3339.
    published_at: Option<String>,
    /// When it leaves the JWKS (RFC 3339); `None` while it may sign.
    leaves_jwks_at: Option<String>,
    /// Seconds until then, from this machine's clock.
    #[serde(skip_serializing_if = "Option::is_none")]
    leaves_jwks_in_secs: Option<u64>,
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

/// The keys of `jwks` with their status (matched by kid), at `now` (Unix
/// seconds).
fn views(jwks: &pb::GetJwksResponse, now: i64) -> Vec<KeyView> {
    jwks.keys
        .iter()
        .map(|k| {
            let status = jwks.status.iter().find(|s| s.kid == k.kid);
            let state = status.map_or_else(|| "unknown".to_owned(), |s| key_state(s.state));
            let remove_at = status.and_then(|s| s.remove_at.as_ref());
            KeyView {
                kid: k.kid.clone(),
                alg: k.alg.clone(),
                kty: k.kty.clone(),
                state,
                published_at: output::timestamp(status.and_then(|s| s.published_at.as_ref())),
                leaves_jwks_at: output::timestamp(remove_at),
                leaves_jwks_in_secs: remove_at.map(|at| u64::try_from(at.seconds.saturating_sub(now)).unwrap_or(0)),
            }
        })
        .collect()
}

/// `KeyState` as its lowercase short name.
fn key_state(state: i32) -> String {
    pb::KeyState::try_from(state).map_or_else(
        |_| format!("unknown({state})"),
        |s| s.as_str_name().trim_start_matches("KEY_STATE_").to_ascii_lowercase(),
    )
}

async fn list(global: &Global) -> anyhow::Result<()> {
    let mut client = VerifierClient::new(channel(global).await?);
    let jwks = client.get_jwks(pb::GetJwksRequest {}).await?.into_inner();
    let now = tessera_core::clock::SystemClock.now().timestamp();
    let keys = views(&jwks, now);
    match global.output {
        OutputFormat::Json => output::json(&KeysView { keys }),
        OutputFormat::Text => {
            if keys.is_empty() {
                output::line("(no published keys)")?;
            }
            for k in &keys {
                let left = k
                    .leaves_jwks_in_secs
                    .map(|secs| format!("  leaves the JWKS in {}", output::seconds(secs)))
                    .unwrap_or_default();
                output::line(format_args!("{}  {}  {}  {}{left}", k.kid, k.alg, k.kty, k.state))?;
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
    fn keys_show_kid_alg_kty_state_and_time_left() {
        let jwk = |kid: &str| pb::Jwk {
            kty: "EC".into(),
            crv: "P-256".into(),
            kid: kid.into(),
            alg: "ES256".into(),
            ..Default::default()
        };
        let at = |seconds| prost_types::Timestamp { seconds, nanos: 0 };
        let jwks = pb::GetJwksResponse {
            keys: vec![jwk("k1"), jwk("k0"), jwk("k9")],
            status: vec![
                pb::KeyStatus {
                    kid: "k0".into(),
                    state: pb::KeyState::Retiring.into(),
                    published_at: Some(at(1_800_000_000)),
                    remove_at: Some(at(1_800_000_900)),
                },
                pb::KeyStatus {
                    kid: "k1".into(),
                    state: pb::KeyState::Current.into(),
                    published_at: Some(at(1_800_000_600)),
                    remove_at: None,
                },
            ],
            ..Default::default()
        };
        let keys = views(&jwks, 1_800_000_700);
        assert_eq!(
            keys[0],
            KeyView {
                kid: "k1".into(),
                alg: "ES256".into(),
                kty: "EC".into(),
                state: "current".into(),
                published_at: Some("2027-01-15T08:10:00Z".into()),
                leaves_jwks_at: None,
                leaves_jwks_in_secs: None,
            }
        );
        assert_eq!(keys[1].state, "retiring");
        assert_eq!(keys[1].leaves_jwks_in_secs, Some(200));
        // A broker that sends no status (older) leaves the state unknown.
        assert_eq!(keys[2].state, "unknown");
    }
}
