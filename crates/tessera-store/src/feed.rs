//! The revocation feed's vocabulary.

use std::fmt;

use tessera_core::revocation::Revocation;

/// An opaque, ordered position in a store's revocation feed. Readers resume
/// after the last position they processed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FeedPosition(String);

impl FeedPosition {
    /// Wraps a position received from a reader; the store validates it on use.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The position as sent to readers.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FeedPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One revocation at its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedEvent {
    /// Where it is in the feed.
    pub position: FeedPosition,
    /// What was revoked.
    pub revocation: Revocation,
}

/// The result of one read of the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedBatch {
    /// Events after the requested position, oldest first.
    pub events: Vec<FeedEvent>,
    /// Resume after this next time: the last event's position, or the
    /// requested position (or the feed's head) when there were none.
    pub head: FeedPosition,
}
