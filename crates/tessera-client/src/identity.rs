//! The client identity: an X.509-SVID, its private key and the trust bundle.

use std::fmt;
use std::path::Path;

use crate::error::ClientError;

/// What a client presents and trusts on the mTLS connection to the broker.
///
/// All three are PEM. `Debug` never shows the private key.
#[derive(Clone)]
pub struct Identity {
    /// Trust bundle: the CA certificate(s) that sign the broker's certificate.
    pub ca_pem: Vec<u8>,
    /// The client's X.509-SVID, optionally followed by its intermediates.
    pub cert_pem: Vec<u8>,
    /// The private key of `cert_pem` (PKCS#8, SEC1 or PKCS#1 PEM). A secret.
    pub key_pem: Vec<u8>,
    /// The broker's SPIFFE ID: its certificate must carry exactly this one
    /// URI SAN. `None`: `spiffe://<trust domain of cert_pem>/tesserad`.
    pub broker_id: Option<String>,
}

impl Identity {
    /// Reads the trust bundle, the certificate and the private key from PEM files.
    ///
    /// The error names the file that could not be read or is not PEM.
    pub fn from_files(
        ca: impl AsRef<Path>,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, ClientError> {
        Ok(Self {
            ca_pem: read_pem("trust bundle", ca.as_ref())?,
            cert_pem: read_pem("certificate", cert.as_ref())?,
            key_pem: read_pem("private key", key.as_ref())?,
            broker_id: None,
        })
    }

    /// Pins the broker's SPIFFE ID to `id` (instead of
    /// `spiffe://<own trust domain>/tesserad`).
    pub fn with_broker_id(mut self, id: impl Into<String>) -> Self {
        self.broker_id = Some(id.into());
        self
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("ca_pem", &format_args!("{} bytes", self.ca_pem.len()))
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .field("broker_id", &self.broker_id)
            .finish()
    }
}

fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, ClientError> {
    let bytes = std::fs::read(path).map_err(|source| ClientError::Read {
        what,
        path: path.to_owned(),
        source,
    })?;
    if !bytes.windows(10).any(|w| w == b"-----BEGIN") {
        return Err(ClientError::NotPem {
            what,
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]

    use super::*;

    #[test]
    fn missing_file_is_named() {
        let err = Identity::from_files("/nonexistent/ca.pem", "/nonexistent/c.pem", "/x")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "cannot read trust bundle `/nonexistent/ca.pem`");
    }

    #[test]
    fn non_pem_file_is_refused() {
        let path = std::env::temp_dir().join(format!("tessera-client-notpem-{}", std::process::id()));
        std::fs::write(&path, b"hello").unwrap();
        let err = Identity::from_files(&path, &path, &path).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(
            matches!(
                err,
                ClientError::NotPem {
                    what: "trust bundle",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn debug_redacts_key() {
        let id = Identity {
            ca_pem: b"ca".to_vec(),
            cert_pem: b"cert".to_vec(),
            key_pem: b"-----BEGIN PRIVATE KEY----- secret".to_vec(),
            broker_id: None,
        };
        let shown = format!("{id:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}
