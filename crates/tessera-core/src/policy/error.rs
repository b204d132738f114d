//! Why a policy set could not be loaded, or a question could not be asked.

use crate::error::ErrorKind;

/// A policy set that cannot be loaded. `Display` names the file and, when the
/// problem has a place, its line: `policies/x.cedar:12: ...`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyLoadError {
    /// A file or directory could not be read.
    #[error("{path}: {message}")]
    Read {
        /// The file or directory.
        path: String,
        /// Why.
        message: String,
    },
    /// No `.cedar` file was found: everything would be denied.
    #[error("{path}: no .cedar policy files (every request would be denied)")]
    Empty {
        /// The directory.
        path: String,
    },
    /// Too many files, or a file too large.
    #[error("{path}: {message}")]
    TooLarge {
        /// The file or directory.
        path: String,
        /// Which limit.
        message: String,
    },
    /// A policy does not parse, does not validate against the schema, or
    /// breaks a convention (duplicate id, malformed annotation, template).
    #[error("{file}:{line}: {message}")]
    Invalid {
        /// The file.
        file: String,
        /// Its 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The compiled-in schema does not parse (a build defect).
    #[error("the compiled-in policy schema is invalid: {0}")]
    Schema(String),
}

impl PolicyLoadError {
    /// Transport-free classification: a bad policy is the caller's input.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Schema(_) => ErrorKind::Internal,
            _ => ErrorKind::InvalidArgument,
        }
    }
}

/// A question policy refuses to evaluate, or entities that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The context would exceed a bound; refused before evaluation.
    #[error("policy context: {field} exceeds {limit}")]
    ContextTooLarge {
        /// The context attribute.
        field: &'static str,
        /// The bound, for people.
        limit: String,
    },
    /// The registry or catalog cannot be expressed as Cedar entities.
    #[error("policy entities: {0}")]
    Entities(String),
}

impl PolicyError {
    /// Transport-free classification.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::ContextTooLarge { .. } => ErrorKind::InvalidArgument,
            Self::Entities(_) => ErrorKind::Internal,
        }
    }
}
