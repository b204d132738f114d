//! `[policy]`: where the Cedar policy set lives.
//!
//! ```toml
//! [policy]
//! dir = "policies"   # a directory of .cedar files, or one .cedar file
//! watch = false      # reload when the files change (a mounted ConfigMap)
//! ```
//!
//! Without `dir`, the baseline compiled into tesserad
//! (`deploy/policies/baseline.cedar`) decides, and reloading has nothing to
//! re-read.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use tessera_core::policy::{PolicyEngine, PolicyLoadError, read_policy_files};

/// `[policy]`, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyConfig {
    /// The policy directory or file; `None`: the compiled-in baseline.
    pub dir: Option<PathBuf>,
    /// Re-read `dir` every `attestation.reload_interval` and reload the set
    /// when a file's name or text changed: a ConfigMap the kubelet updates in
    /// place sends no SIGHUP.
    pub watch: bool,
}

/// `[policy]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    #[serde(default)]
    dir: Option<PathBuf>,
    #[serde(default)]
    watch: bool,
}

impl RawPolicy {
    /// Resolves `dir` against the configuration file's directory.
    pub(super) fn validate(self, base: &Path) -> Result<PolicyConfig, super::ConfigError> {
        match self.dir {
            Some(dir) if dir.as_os_str().is_empty() => Err(super::ConfigError::Key {
                key: "policy.dir".into(),
                message: "must name a directory or a .cedar file".into(),
            }),
            Some(dir) => Ok(PolicyConfig {
                dir: Some(if dir.is_absolute() { dir } else { base.join(dir) }),
                watch: self.watch,
            }),
            None if self.watch => Err(super::ConfigError::Key {
                key: "policy.watch".into(),
                message: "needs `policy.dir`: the compiled-in baseline never changes".into(),
            }),
            None => Ok(PolicyConfig {
                dir: None,
                watch: false,
            }),
        }
    }
}

impl PolicyConfig {
    /// Reads, parses and validates the policy set (or takes the baseline).
    /// Errors name the file and line.
    pub fn load(&self) -> Result<Arc<PolicyEngine>, PolicyLoadError> {
        let engine = match &self.dir {
            Some(dir) => PolicyEngine::load(&read_policy_files(dir)?)?,
            None => PolicyEngine::baseline()?,
        };
        Ok(Arc::new(engine))
    }
}
