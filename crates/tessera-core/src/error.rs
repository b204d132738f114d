//! The small, transport-free classification of every core error. Only the
//! server's `status.rs` maps an [`ErrorKind`] to a gRPC or HTTP code.

/// What kind of failure an error is, independent of any transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The caller could not be authenticated.
    Unauthenticated,
    /// The caller is known but not allowed; the message says why.
    PermissionDenied,
    /// The request is malformed: a field is missing, too long or out of range.
    InvalidArgument,
    /// The named thing does not exist.
    NotFound,
    /// The named thing already exists.
    AlreadyExists,
    /// The request is valid but the state does not allow it (e.g. task over).
    FailedPrecondition,
    /// A deadline passed before the operation could complete (e.g. an
    /// approval expired while waited on).
    DeadlineExceeded,
    /// A position or value is outside the range the server retains.
    OutOfRange,
    /// A rate limit or capacity bound was hit.
    ResourceExhausted,
    /// A dependency (store, audit sink) is unavailable; retry later.
    Unavailable,
    /// A bug or an unexpected failure; details are logged, never returned.
    Internal,
}
