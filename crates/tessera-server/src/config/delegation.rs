//! `[delegation]` and `[tokens] bound_classes`: how deep delegation chains
//! may go, and which scope classes are never issued as bearer tokens.

use serde::Deserialize;
use tessera_core::delegation::DEFAULT_MAX_DEPTH;
use tessera_core::task::ScopeClass;

use super::{ConfigError, key_error};
use crate::broker::BindingSettings;

/// Deepest `[delegation] max_depth` accepted (a token carries its chain).
const MAX_MAX_DEPTH: u32 = 8;

/// `[delegation]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDelegation {
    /// Most delegations between a root token and any descendant; 0 turns
    /// DelegateToken off.
    #[serde(default = "default_max_depth")]
    max_depth: u32,
}

impl Default for RawDelegation {
    fn default() -> Self {
        Self {
            max_depth: default_max_depth(),
        }
    }
}

fn default_max_depth() -> u32 {
    DEFAULT_MAX_DEPTH
}

/// `[tokens] bound_classes` default: `["write", "admin"]`.
pub(super) fn default_bound_classes() -> Vec<ScopeClass> {
    vec![ScopeClass::Write, ScopeClass::Admin]
}

/// Validates both settings.
pub(super) fn settings(raw: RawDelegation, bound_classes: Vec<ScopeClass>) -> Result<BindingSettings, ConfigError> {
    if raw.max_depth > MAX_MAX_DEPTH {
        return Err(key_error(
            "delegation.max_depth",
            format!("must be between 0 (off) and {MAX_MAX_DEPTH}"),
        ));
    }
    Ok(BindingSettings {
        max_depth: raw.max_depth,
        bound_classes: bound_classes.into_iter().collect(),
    })
}
