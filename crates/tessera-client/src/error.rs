//! Errors of loading an identity and connecting to the broker.

use std::path::PathBuf;

/// Why a client identity could not be loaded, a channel not be opened, or a
/// call of the typed clients ([`crate::agent`], [`crate::orchestrator`])
/// failed. The raw generated clients return the broker's [`tonic::Status`]
/// directly; the typed ones wrap it in [`ClientError::Refused`].
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
    /// The identity's PEM data cannot be used for TLS (unparsable bundle,
    /// certificate or key; no SPIFFE ID to derive the broker's from).
    #[error("unusable identity: {reason}")]
    BadIdentity {
        /// What is wrong with it.
        reason: String,
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
    /// The broker refused the call (its status names the reason).
    #[error("broker refused: {}: {}", .0.code(), .0.message())]
    Refused(#[from] tonic::Status),
    /// The request waits for a human approval (its id).
    #[error("the request waits for approval `{0}`")]
    Pending(String),
    /// The broker answered with something the contract does not allow.
    #[error("unexpected answer: {0}")]
    Unexpected(&'static str),
    /// A proof-of-possession key could not be made, read or used.
    #[error("proof-of-possession key: {0}")]
    PopKey(String),
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

impl From<tessera_core::token::KeyError> for ClientError {
    /// A proof-of-possession key could not be made, read or sign.
    fn from(e: tessera_core::token::KeyError) -> Self {
        Self::PopKey(e.to_string())
    }
}
