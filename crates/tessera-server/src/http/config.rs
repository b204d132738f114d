//! `[oauth]`: the HTTPS OAuth facade's listener and limits.
//!
//! ```toml
//! [oauth]
//! listen = "127.0.0.1:7445"          # HTTPS; "off" serves no facade
//! public_url = "https://127.0.0.1:7445"  # how clients reach it (metadata URLs)
//! max_body_bytes = 16384
//! request_timeout = "10s"
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
}

impl Default for RawOAuth {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            public_url: None,
            max_body_bytes: default_max_body(),
            request_timeout: default_timeout(),
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

fn key(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Key {
        key: format!("oauth.{key}"),
        message: message.into(),
    }
}

impl RawOAuth {
    /// Checks every key.
    pub(crate) fn validate(self) -> Result<OAuthConfig, ConfigError> {
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
        Ok(OAuthConfig {
            listen,
            public_url,
            max_body_bytes: self.max_body_bytes,
            request_timeout: self.request_timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]

    use super::*;

    #[test]
    fn defaults_and_errors_name_the_key() {
        let config = RawOAuth::default().validate().unwrap();
        assert_eq!(config.listen.map(|a| a.port()), Some(7445));
        assert_eq!(config.max_body_bytes, 16 * 1024);
        let off = RawOAuth {
            listen: "off".into(),
            ..RawOAuth::default()
        };
        assert_eq!(off.validate().unwrap().listen, None);
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
            let err = raw.validate().unwrap_err().to_string();
            assert!(err.contains(bad_key), "{err}");
        }
        let url = RawOAuth {
            public_url: Some("https://auth.example.com/".into()),
            ..RawOAuth::default()
        };
        assert_eq!(
            url.validate().unwrap().public_url.as_deref(),
            Some("https://auth.example.com")
        );
    }
}
