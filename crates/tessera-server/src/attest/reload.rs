//! Reloading identities and trust bundles without a restart.
//!
//! Every `attestation.reload_interval` (default 1 s), and at once on
//! `SIGHUP`, the broker checks the mtime and size of its configuration file
//! and of every trust bundle file:
//! - a changed trust bundle is re-read and swapped in whole (an emptied one
//!   refuses every SVID of its domain from then on);
//! - a changed configuration file is parsed and validated again, and its
//!   `[[identities]]` replace the registry (so `disabled = true`, a new
//!   identity, or a removed one applies to the next call on every
//!   connection), and console sessions of identities removed or changed
//!   end at once. Other sections are not re-applied: they need a restart.
//!
//! A file that fails to load or validate is logged and ignored; the last
//! good state stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tessera_core::identity::IdentityRegistry;

use super::trust::TrustStore;
use crate::config::{Config, ProcessEnv};

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// What the reloader watches.
#[derive(Debug)]
pub struct Reloader {
    /// The configuration file (`None`: identities are not reloaded).
    pub config_file: Option<PathBuf>,
    /// The registry to update (a clone of the broker's).
    pub registry: IdentityRegistry,
    /// The broker whose console sessions end when their identity is
    /// removed or changed by a reload (`None`: no console to tell).
    pub console: Option<Arc<crate::broker::Broker>>,
    /// The trust bundles.
    pub trust: Arc<TrustStore>,
    /// How often to look.
    pub every: Duration,
}

impl Reloader {
    /// Runs until the task is aborted.
    pub async fn run(self) {
        let mut last = self.config_file.as_deref().and_then(stamp);
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let forced = tokio::select! {
                _ = tick.tick() => false,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            };
            match self.trust.reload_if_changed() {
                Ok(true) => tracing::info!(domains = ?self.trust.domains(), "trust bundles reloaded"),
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, "trust bundles not reloaded; keeping the previous ones"),
            }
            let Some(path) = &self.config_file else {
                continue;
            };
            let now = stamp(path);
            if now == last && !forced {
                continue;
            }
            last = now;
            match Config::load(path, &ProcessEnv) {
                Ok(config) => {
                    self.registry.replace(&config.identities);
                    // A removed identity, or one given other roles, keeps no
                    // console session (an edit back later revives none).
                    if let Some(broker) = &self.console {
                        broker.prune_console_sessions();
                    }
                    tracing::info!(
                        event = "identities_reloaded",
                        identities = config.identities.len(),
                        file = %path.display(),
                        "identity registry reloaded"
                    );
                }
                Err(e) => tracing::error!(error = %e, "configuration not reloaded; keeping the previous identities"),
            }
        }
    }
}
