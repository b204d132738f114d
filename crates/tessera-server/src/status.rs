//! The one place where errors become gRPC status codes.

use tessera_core::ErrorKind;
use tonic::{Code, Status};

use crate::broker::BrokerError;

/// The gRPC code for an error kind.
pub fn code(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::Unauthenticated => Code::Unauthenticated,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::OutOfRange => Code::OutOfRange,
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        ErrorKind::Unavailable => Code::Unavailable,
        _ => Code::Internal,
    }
}

/// A broker error as a status. Internal errors are logged with their source
/// chain and sent as "internal error"; unavailability says only that.
pub fn from_broker(e: BrokerError) -> Status {
    let kind = e.kind();
    match kind {
        ErrorKind::Internal => {
            tracing::error!(error = %e, source = ?std::error::Error::source(&e), "internal error");
            Status::internal("internal error")
        }
        ErrorKind::Unavailable => {
            tracing::warn!(error = %e, "dependency unavailable");
            Status::unavailable("state store unavailable; retry later")
        }
        _ => Status::new(code(kind), e.to_string()),
    }
}

/// A malformed request field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The field, as named in the proto.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

impl FieldError {
    /// A field error.
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

impl From<FieldError> for Status {
    fn from(e: FieldError) -> Self {
        Status::invalid_argument(e.to_string())
    }
}
