//! The resource server's side, through the SDK (`tessera_client::Verifier`):
//! its offline verification rate on one core, and the moment a subscribed
//! verifier starts refusing a revoked token.
//!
//! Every figure here is taken from `Verifier::verify_cached` itself, the
//! call a resource server makes per request, never from the raw feed.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tessera_client::{Presented, Verifier, VerifierConfig, VerifyError};
use tessera_core::clock::{Clock as _, SystemClock};

use crate::limits::{PerCore, per_core};
use crate::tessera::{CRM, Target, channels};

/// How long a verifier may take to synchronise, or a revocation to reach it.
const WAIT: Duration = Duration::from_secs(30);

/// How often a watcher asks its verifier again while waiting for a refusal:
/// the resolution of the propagation figures.
const POLL: Duration = Duration::from_micros(100);

/// The broker's `iss`, from the `tesserad.toml` that `tessera dev init` wrote.
pub fn issuer(dev_dir: &Path) -> anyhow::Result<String> {
    let path = dev_dir.join("tesserad.toml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let doc: toml::Table = toml::from_str(&text).with_context(|| format!("cannot parse {}", path.display()))?;
    doc.get("tokens")
        .and_then(|t| t.get("issuer"))
        .and_then(toml::Value::as_str)
        .map(str::to_owned)
        .with_context(|| format!("{} has no tokens.issuer", path.display()))
}

/// An SDK verifier for the bench's audience, following `t` as `api-gateway`
/// (JWKS and `WatchRevocations`), synchronised and holding keys.
pub async fn connect(t: &Target) -> anyhow::Result<Verifier> {
    let channel = channels(&t.endpoint, &t.dev_dir, "api-gateway", 1)
        .await?
        .pop()
        .context("no channel")?;
    let verifier = Verifier::connect(channel, VerifierConfig::new(issuer(&t.dev_dir)?, CRM))?;
    anyhow::ensure!(
        verifier.ready(WAIT).await,
        "the SDK verifier was not synchronised with keys within {WAIT:?}: {:?}",
        verifier.status()
    );
    // A token issued in the second the verifier synchronised is refused (its
    // sync floor: a revocation of it may have been missed); start after it.
    if let Some(floor) = verifier.status().sync_floor {
        while SystemClock.now().timestamp() <= floor {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(verifier)
}

/// The SDK's offline verifications per second on one core: one real token,
/// checked again and again by `verify_cached` (signature, claims,
/// revocation set) on a thread of its own, for `each`.
pub async fn offline_verify_rate(t: &Target, each: Duration) -> anyhow::Result<PerCore> {
    let verifier = connect(t).await?;
    let task = t.start_task("sdk-verify", 600).await?;
    let (token, _) = t.mint_many(&task, 1).await?.pop().context("no token minted")?;
    verifier
        .verify_cached(&Presented::bearer(&token))
        .context("the SDK verifier refused a live token")?;
    tokio::task::spawn_blocking(move || {
        per_core(each, || {
            verifier
                .verify_cached(&Presented::bearer(&token))
                .map(drop)
                .map_err(anyhow::Error::from)
        })
    })
    .await?
}

/// Waits, on a blocking thread, until `verifier` refuses `token` as revoked;
/// returns when it first did. Between full checks it only watches the
/// verifier's revocation count (cheap), so the watcher itself does not load
/// the machine it measures. Any other refusal (a stale feed, a bad
/// signature) is an error, not a revocation.
pub async fn refused_at(verifier: &Verifier, token: &str) -> anyhow::Result<Instant> {
    let verifier = verifier.clone();
    let token = token.to_owned();
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + WAIT;
        let mut seen = None;
        let mut checked = Instant::now();
        loop {
            let revocations = verifier.status().revocations;
            // A full check when the set changed, and every 5 ms regardless.
            if seen != Some(revocations) || checked.elapsed() >= Duration::from_millis(5) {
                seen = Some(revocations);
                checked = Instant::now();
                match verifier.verify_cached(&Presented::bearer(&token)) {
                    Err(VerifyError::Revoked) => return Ok(Instant::now()),
                    Ok(_) => {}
                    Err(e) => anyhow::bail!("the SDK verifier refused the token for another reason: {e}"),
                }
            }
            if Instant::now() >= deadline {
                anyhow::bail!("the SDK verifier still accepted a revoked token after {WAIT:?}");
            }
            std::thread::sleep(POLL);
        }
    })
    .await?
}

/// Every token of `tokens` is refused as revoked by `verifier`.
pub fn all_refused(verifier: &Verifier, tokens: &[String]) -> anyhow::Result<()> {
    for (i, token) in tokens.iter().enumerate() {
        match verifier.verify_cached(&Presented::bearer(token)) {
            Err(VerifyError::Revoked) => {}
            Ok(_) => anyhow::bail!(
                "token {i} of {} is still accepted after its task completed",
                tokens.len()
            ),
            Err(e) => anyhow::bail!("token {i} of {} refused for another reason: {e}", tokens.len()),
        }
    }
    Ok(())
}
