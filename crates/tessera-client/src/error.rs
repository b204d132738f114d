//! Errors of loading an identity and connecting to the broker.

use std::path::PathBuf;

/// Why a client identity could not be loaded or a channel not be opened.
///
/// A refusal by the broker is not a `ClientError`: it arrives as a
/// [`tonic::Status`] from the RPC itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A PEM file of the identity could not be read.
    #[error("cannot read {what} `{}`", path.display())]
    Read {
        /// Which file of the identity: "trust bundle", "certificate" or "private key".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file of the identity holds no PEM block.
    #[error("{what} `{}` is not PEM (no `-----BEGIN` line)", path.display())]
    NotPem {
        /// Which file of the identity.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// The endpoint is not a usable `https://host:port` URL.
    #[error("invalid endpoint `{endpoint}`: {reason}")]
    Endpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The TLS configuration was rejected (for example an unparsable key).
    #[error("invalid TLS configuration for `{endpoint}`")]
    Tls {
        /// The endpoint.
        endpoint: String,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
    /// No connection could be established (refused, timed out, TLS handshake failed).
    #[error("cannot connect to `{endpoint}`")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
}
