//! Store errors.

use tessera_core::ErrorKind;
use tessera_core::identity::SpiffeId;
use tessera_core::task::{TaskId, TaskState};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The task id is taken.
    #[error("task `{0}` already exists")]
    TaskExists(TaskId),
    /// No such task.
    #[error("task `{0}` not found")]
    TaskNotFound(TaskId),
    /// The task is over, so nothing may be issued in it.
    #[error("task `{0}` is {1}")]
    TaskOver(TaskId, TaskState),
    /// The grant would outlive its task.
    #[error("grant would outlive task `{0}`")]
    OutlivesTask(TaskId),
    /// A delegated grant's parent is unknown, revoked, expired, of another
    /// task, or expires before it.
    #[error("parent grant is not live")]
    ParentNotLive,
    /// An operator disabled the grant's subject: nothing is recorded for it.
    #[error("identity `{0}` is disabled")]
    SubjectDisabled(SpiffeId),
    /// A grant with that id exists (a random id collided: retry).
    #[error("grant id already recorded")]
    GrantExists,
    /// An approval with that id exists (a random id collided: retry).
    #[error("approval id already recorded")]
    ApprovalExists,
    /// The position is not one this store produced.
    #[error("feed position `{0}` is malformed")]
    BadPosition(String),
    /// The list cursor (page token) is not one this store produced.
    #[error("page token `{0}` is malformed")]
    BadCursor(String),
    /// Events after the position were dropped while still relevant: the
    /// reader has missed revocations and must treat its view as stale.
    #[error("feed position `{0}` is no longer retained")]
    PositionExpired(String),
    /// A capacity bound was hit.
    #[error("store capacity exhausted: {0}")]
    Full(&'static str),
    /// The backend cannot be reached or answered with an error.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The key was withdrawn by break-glass and may never be published again.
    #[error("signing key `{0}` was withdrawn")]
    KeyWithdrawn(String),
    /// The backend is configured in a way that would break the store's guarantees.
    #[error("store misconfigured: {0}")]
    Misconfigured(String),
    /// A stored record could not be decoded.
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Transport-free classification.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::TaskExists(_) => ErrorKind::AlreadyExists,
            Self::TaskNotFound(_) => ErrorKind::NotFound,
            Self::TaskOver(..) | Self::OutlivesTask(_) => ErrorKind::FailedPrecondition,
            Self::ParentNotLive | Self::SubjectDisabled(_) => ErrorKind::PermissionDenied,
            Self::BadPosition(_) | Self::BadCursor(_) => ErrorKind::InvalidArgument,
            Self::PositionExpired(_) => ErrorKind::OutOfRange,
            Self::Full(_) => ErrorKind::ResourceExhausted,
            Self::Unavailable(_) => ErrorKind::Unavailable,
            Self::Misconfigured(_) | Self::KeyWithdrawn(_) => ErrorKind::FailedPrecondition,
            Self::GrantExists | Self::ApprovalExists | Self::Corrupt(_) => ErrorKind::Internal,
        }
    }
}
