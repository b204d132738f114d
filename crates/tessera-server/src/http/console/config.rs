//! `[console]`: the operator console, served on the OAuth facade's HTTPS
//! listener.
//!
//! ```toml
//! [console]
//! enabled = false              # true serves /console/ on oauth.listen
//! public_url = "https://tessera.example.org"  # as browsers reach it; default oauth.public_url or https://<oauth.listen>
//! code_ttl = "2m"              # a sign-in code from `tessera console` works once, within this
//! session_ttl = "30m"          # a session ends this long after sign-in (or at sign-out)
//! ```

use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;

/// The validated `[console]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleConfig {
    /// Whether the console is served.
    pub enabled: bool,
    /// Its base URL as browsers reach it, without a trailing `/`; `None`:
    /// the OAuth facade's.
    pub public_url: Option<String>,
    /// How long a sign-in code waits to be used.
    pub code_ttl: Duration,
    /// How long a session lasts.
    pub session_ttl: Duration,
}

/// `[console]` as written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConsole {
    #[serde(default)]
    enabled: bool,
    #[serde(default)]
    public_url: Option<String>,
    #[serde(default = "default_code_ttl", with = "crate::config::humantime_serde")]
    code_ttl: Duration,
    #[serde(default = "default_session_ttl", with = "crate::config::humantime_serde")]
    session_ttl: Duration,
}

impl Default for RawConsole {
    fn default() -> Self {
        Self {
            enabled: false,
            public_url: None,
            code_ttl: default_code_ttl(),
            session_ttl: default_session_ttl(),
        }
    }
}

fn default_code_ttl() -> Duration {
    Duration::from_secs(120)
}
fn default_session_ttl() -> Duration {
    Duration::from_secs(30 * 60)
}

fn key(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Key {
        key: format!("console.{key}"),
        message: message.into(),
    }
}

impl RawConsole {
    /// Checks every key; `facade_on` says whether `oauth.listen` serves.
    pub(crate) fn validate(self, facade_on: bool) -> Result<ConsoleConfig, ConfigError> {
        if self.enabled && !facade_on {
            return Err(key(
                "enabled",
                "the console is served on the OAuth facade's listener: set oauth.listen, or enabled = false",
            ));
        }
        let public_url = match self.public_url {
            None => None,
            Some(url) => {
                let trimmed = url.trim_end_matches('/');
                // An origin only: the console lives under /console/ of it.
                let valid = trimmed
                    .strip_prefix("https://")
                    .is_some_and(|rest| !rest.is_empty() && !rest.contains(['/', '?', '#', ' ', '@']));
                if !valid || trimmed.len() > 512 {
                    return Err(key(
                        "public_url",
                        format!("`{url}` is not an https:// origin (scheme, host and port only)"),
                    ));
                }
                Some(trimmed.to_owned())
            }
        };
        if !(Duration::from_secs(10)..=Duration::from_secs(600)).contains(&self.code_ttl) {
            return Err(key("code_ttl", "must be between 10s and 10m"));
        }
        if !(Duration::from_secs(60)..=Duration::from_secs(12 * 3600)).contains(&self.session_ttl) {
            return Err(key("session_ttl", "must be between 1m and 12h"));
        }
        Ok(ConsoleConfig {
            enabled: self.enabled,
            public_url,
            code_ttl: self.code_ttl,
            session_ttl: self.session_ttl,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]

    use super::*;

    #[test]
    fn off_by_default_and_errors_name_the_key() {
        let config = RawConsole::default().validate(true).unwrap();
        assert!(!config.enabled);
        assert_eq!(config.session_ttl, Duration::from_secs(1800));
        let on_without_facade = RawConsole {
            enabled: true,
            ..RawConsole::default()
        };
        let err = on_without_facade.validate(false).unwrap_err().to_string();
        assert!(err.contains("console.enabled"), "{err}");
        for (raw, bad_key) in [
            (
                RawConsole {
                    public_url: Some("https://x.example/console".into()),
                    ..RawConsole::default()
                },
                "console.public_url",
            ),
            (
                RawConsole {
                    public_url: Some("http://x.example".into()),
                    ..RawConsole::default()
                },
                "console.public_url",
            ),
            (
                RawConsole {
                    code_ttl: Duration::from_secs(3600),
                    ..RawConsole::default()
                },
                "console.code_ttl",
            ),
        ] {
            let err = raw.validate(true).unwrap_err().to_string();
            assert!(err.contains(bad_key), "{err}");
        }
    }
}
