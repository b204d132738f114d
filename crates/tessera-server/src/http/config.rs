//! `[oauth]`: the HTTPS OAuth facade's listener and limits.
//!
//! ```toml
//! [oauth]
//! listen = "127.0.0.1:7445"          # HTTPS; "off" serves no facade
//! public_url = "https://127.0.0.1:7445"  # how clients reach it (metadata URLs)
//! max_body_bytes = 16384
//! request_timeout = "10s"
//! dpop_nonce = true                  # DPoP proofs at the token endpoint carry a server nonce
//! dpop_nonce_window = "2m"           # a nonce lives one to two windows
//! dpop_nonce_key_file = "nonce.key"  # >= 32 bytes shared by replicas; absent: per replica
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;

/// The validated `[oauth]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthConfig {
    /// HTTPS listen address; `None` when `listen = "off"`.
    pub listen: Option<SocketAddr>,
    /// The facade's base URL as clients reach it, without a trailing `/`;
    /// `None` means `https://<listen address>`.
    pub public_url: Option<String>,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// A request not answered by then gets 503.
    pub request_timeout: Duration,
    /// Require a server nonce in DPoP proofs at the token endpoint (RFC
    /// 9449 section 8).
    pub dpop_nonce: bool,
    /// How long one nonce window lasts.
    pub dpop_nonce_window: Duration,
    /// The nonce key shared by replicas, if configured (else each replica
    /// draws its own at start).
    pub dpop_nonce_key_file: Option<std::path::PathBuf>,
}

/// `[oauth]` as written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOAuth {
    #[serde(default = "default_listen")]
    listen: String,
    #[serde(default)]
    public_url: Option<String>,
    #[serde(default = "default_max_body")]
    max_body_bytes: usize,
    #[serde(default = "default_timeout", with = "crate::config::humantime_serde")]
    request_timeout: Duration,
    #[serde(default = "default_true")]
    dpop_nonce: bool,
    #[serde(default = "default_nonce_window", with = "crate::config::humantime_serde")]
    dpop_nonce_window: Duration,
    #[serde(default)]
    dpop_nonce_key_file: Option<std::path::PathBuf>,
}

impl Default for RawOAuth {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            public_url: None,
            max_body_bytes: default_max_body(),
            request_timeout: default_timeout(),
            dpop_nonce: true,
            dpop_nonce_window: default_nonce_window(),
            dpop_nonce_key_file: None,
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:7445".into()
}
fn default_max_body() -> usize {
    16 * 1024
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_true() -> bool {
    true
}
fn default_nonce_window() -> Duration {
    Duration::from_secs(120)
}

fn key(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Key {
        key: format!("oauth.{key}"),
        message: message.into(),
    }
}

impl RawOAuth {
    /// Checks every key.
    pub(crate) fn validate(self, base: &std::path::Path) -> Result<OAuthConfig, ConfigError> {
        let listen = if self.listen == "off" {
            None
        } else {
            Some(self.listen.parse().map_err(|_| {
                key(
                    "listen",
                    format!("`{}` is not an IP:port address or \"off\"", self.listen),
                )
            })?)
        };
        let public_url = match self.public_url {
            None => None,
            Some(url) => {
                let trimmed = url.trim_end_matches('/');
                let valid = trimmed
                    .strip_prefix("https://")
                    .is_some_and(|rest| !rest.is_empty() && !rest.contains(['?', '#', ' ']));
                if !valid || trimmed.len() > 512 {
                    return Err(key("public_url", format!("`{url}` is not an https:// URL")));
                }
                Some(trimmed.to_owned())
            }
        };
        if !(1024..=1024 * 1024).contains(&self.max_body_bytes) {
            return Err(key("max_body_bytes", "must be between 1024 and 1048576"));
        }
        if self.request_timeout.is_zero() || self.request_timeout > Duration::from_secs(300) {
            return Err(key("request_timeout", "must be between 1ms and 5m"));
        }
        if self.dpop_nonce_window < Duration::from_secs(10) || self.dpop_nonce_window > Duration::from_secs(3600) {
            return Err(key("dpop_nonce_window", "must be between 10s and 1h"));
        }
        let dpop_nonce_key_file = self
            .dpop_nonce_key_file
            .map(|p| if p.is_absolute() { p } else { base.join(p) });
        if let Some(path) = &dpop_nonce_key_file {
            // Read at start by the facade; checked here so `--check` names it.
            match std::fs::metadata(path) {
                Ok(m) if m.len() >= 32 && m.len() <= 4096 => {}
                Ok(_) => {
                    return Err(key(
                        "dpop_nonce_key_file",
                        format!("`{}` must hold 32 to 4096 bytes", path.display()),
                    ));
                }
                Err(e) => return Err(key("dpop_nonce_key_file", format!("`{}`: {e}", path.display()))),
            }
        }
        Ok(OAuthConfig {
            listen,
            public_url,
            max_body_bytes: self.max_body_bytes,
            request_timeout: self.request_timeout,
            dpop_nonce: self.dpop_nonce,
            dpop_nonce_window: self.dpop_nonce_window,
            dpop_nonce_key_file,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]

    use super::*;

    #[test]
    fn defaults_and_errors_name_the_key() {
        let config = RawOAuth::default().validate(std::path::Path::new(".")).unwrap();
        assert_eq!(config.listen.map(|a| a.port()), Some(7445));
        assert_eq!(config.max_body_bytes, 16 * 1024);
        let off = RawOAuth {
            listen: "off".into(),
            ..RawOAuth::default()
        };
        assert_eq!(off.validate(std::path::Path::new(".")).unwrap().listen, None);
        for (raw, bad_key) in [
            (
                RawOAuth {
                    listen: "x".into(),
                    ..RawOAuth::default()
                },
                "oauth.listen",
            ),
            (
                RawOAuth {
                    public_url: Some("http://broker".into()),
                    ..RawOAuth::default()
                },
                "oauth.public_url",
            ),
            (
                RawOAuth {
                    max_body_bytes: 10,
                    ..RawOAuth::default()
                },
                "oauth.max_body_bytes",
            ),
        ] {
            let err = raw.validate(std::path::Path::new(".")).unwrap_err().to_string();
            assert!(err.contains(bad_key), "{err}");
        }
        let url = RawOAuth {
            public_url: Some("https://auth.example.com/".into()),
            ..RawOAuth::default()
        };
        assert_eq!(
            url.validate(std::path::Path::new(".")).unwrap().public_url.as_deref(),
            Some("https://auth.example.com")
        );
    }
}
