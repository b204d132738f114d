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
        ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
        _ => Code::Internal,
    }
}

/// A broker error as a status. Internal errors are logged with their source
/// chain and sent as "internal error"; unavailability says only that.
pub fn from_broker(e: BrokerError) -> Status {
    let kind = e.kind();
    if matches!(e, BrokerError::Store(_)) && matches!(kind, ErrorKind::Internal | ErrorKind::Unavailable) {
        crate::telemetry::store_error();
    }
    match kind {
        ErrorKind::Internal => {
            tracing::error!(error = %e, source = ?std::error::Error::source(&e), "internal error");
            Status::internal("internal error")
        }
        ErrorKind::Unavailable => {
            tracing::warn!(error = %e, "dependency unavailable");
            let what = if matches!(e, BrokerError::Audit(_)) {
                "audit trail"
            } else {
                "state store"
            };
            Status::unavailable(format!("{what} unavailable; retry later"))
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

#[cfg(test)]
mod tests {
    use tessera_core::catalog::CatalogError;
    use tessera_core::issuance::IssuanceError;
    use tessera_core::orchestration::OrchestrationError;
    use tessera_core::task::{Audience, Scope};
    use tessera_core::ttl::{Ttl, TtlError};

    use super::*;

    #[track_caller]
    fn check(e: impl Into<BrokerError>, want: Code, message: &str) {
        let status = from_broker(e.into());
        assert_eq!(status.code(), want, "{status:?}");
        assert_eq!(status.message(), message);
    }

    #[test]
    fn bad_token_request_fields_are_named() {
        let aud = Audience::parse("x").unwrap();
        let issuance = |e: CatalogError| IssuanceError::Catalog(e);
        check(
            issuance(CatalogError::UnknownAudience(aud.clone())),
            Code::InvalidArgument,
            "audience: unknown audience `x`",
        );
        check(
            issuance(CatalogError::UnknownScope {
                audience: aud.clone(),
                scope: Scope::parse("nope").unwrap(),
            }),
            Code::InvalidArgument,
            "scopes: unknown scope `nope` for audience `x`",
        );
        check(
            issuance(CatalogError::NoScopes),
            Code::InvalidArgument,
            "scopes: no scopes requested",
        );
        check(
            issuance(CatalogError::MixedClasses("read, write".into())),
            Code::InvalidArgument,
            "scopes: scopes mix the classes read, write; request one token per class",
        );
        check(
            IssuanceError::Ttl(TtlError::AboveMax {
                requested: Ttl::from_secs(7200).unwrap(),
                max: Ttl::from_secs(3600).unwrap(),
            }),
            Code::InvalidArgument,
            "ttl_seconds: ttl of 7200s is above the maximum of 3600s",
        );
        check(
            IssuanceError::Ttl(TtlError::NoTimeLeft),
            Code::FailedPrecondition,
            "no time is left before the task's deadline",
        );
    }

    #[test]
    fn bad_start_task_fields_are_named() {
        check(
            OrchestrationError::Catalog(CatalogError::UnknownAudience(Audience::parse("x").unwrap())),
            Code::InvalidArgument,
            "scope_ceiling: unknown audience `x`",
        );
        check(
            OrchestrationError::SelfAssigned,
            Code::PermissionDenied,
            "an orchestrator may not assign itself to its own task",
        );
    }
}
