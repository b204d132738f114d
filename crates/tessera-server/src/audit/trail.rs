//! The audit trail as the broker sees it: the file and, when configured, a
//! Redis Stream, written concurrently, each with its own hash chain.
//!
//! Each sink seals the records it accepts into its own chain, so each one
//! verifies on its own (`tessera audit verify FILE`, `tessera audit verify
//! --redis URL`) and a record one sink refused leaves no gap in that sink's
//! chain. Whether an operation may go ahead is [`Require`]'s call: by
//! default one sink accepting the record within the bound is enough (a full
//! disk does not stop the broker while Redis records), and no sink accepting
//! it fails the operation (fail closed).

use serde::Deserialize;
use tessera_core::audit::AuditEvent;

use super::{AuditError, AuditLog};

/// How many sinks must accept a record for its operation to go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Require {
    /// At least one sink.
    #[default]
    Any,
    /// Every configured sink.
    All,
}

/// The broker's audit trail: one or two sinks.
#[derive(Debug)]
pub struct AuditTrail {
    file: AuditLog,
    stream: Option<AuditLog>,
    require: Require,
}

impl AuditTrail {
    /// The trail over the file sink alone.
    pub fn file(file: AuditLog) -> Self {
        Self {
            file,
            stream: None,
            require: Require::All,
        }
    }

    /// The trail over the file and a stream, requiring `require` of them.
    pub fn with_stream(file: AuditLog, stream: AuditLog, require: Require) -> Self {
        Self {
            file,
            stream: Some(stream),
            require,
        }
    }

    /// Records `event` in every sink at once; `Ok` when enough of them
    /// accepted it (each within its own bound). When it fails, the error is
    /// the file's (and the stream's, logged).
    pub async fn record(&self, event: AuditEvent) -> Result<(), AuditError> {
        let Some(stream) = &self.stream else {
            return self.file.record(event).await;
        };
        let (file, stream) = tokio::join!(self.file.record(event.clone()), stream.record(event));
        Self::settle(self.require, file, stream)
    }

    fn settle(
        require: Require,
        file: Result<(), AuditError>,
        stream: Result<(), AuditError>,
    ) -> Result<(), AuditError> {
        match (require, file, stream) {
            (_, Ok(()), Ok(())) | (Require::Any, Ok(()), Err(_)) | (Require::Any, Err(_), Ok(())) => Ok(()),
            (_, Err(e), Ok(())) | (_, Ok(()), Err(e)) => Err(e),
            (_, Err(file), Err(stream)) => {
                tracing::error!(file = %file, stream = %stream, "no audit sink accepted the record");
                Err(file)
            }
        }
    }

    /// Records that failed in any sink since start.
    pub fn failures(&self) -> u64 {
        self.file
            .failures()
            .saturating_add(self.stream.as_ref().map_or(0, AuditLog::failures))
    }
}

#[async_trait::async_trait]
impl crate::broker::AuditSink for AuditTrail {
    async fn record(&self, event: AuditEvent) -> Result<(), AuditError> {
        Self::record(self, event).await
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use crate::audit::Sink;

    fn failed(name: &str) -> Result<(), AuditError> {
        Err(AuditError::Timeout {
            sink: Sink::File(PathBuf::from(name)),
            timeout: Duration::from_millis(1),
        })
    }

    #[test]
    fn any_needs_one_sink_and_all_needs_both() {
        for (require, file_ok, stream_ok, ok) in [
            (Require::Any, true, true, true),
            (Require::Any, true, false, true),
            (Require::Any, false, true, true),
            (Require::Any, false, false, false),
            (Require::All, true, true, true),
            (Require::All, true, false, false),
            (Require::All, false, true, false),
            (Require::All, false, false, false),
        ] {
            let file = if file_ok { Ok(()) } else { failed("file") };
            let stream = if stream_ok { Ok(()) } else { failed("stream") };
            assert_eq!(
                AuditTrail::settle(require, file, stream).is_ok(),
                ok,
                "{require:?} file={file_ok} stream={stream_ok}"
            );
        }
    }

    #[test]
    fn with_both_failing_the_file_error_is_returned() {
        let err = AuditTrail::settle(Require::Any, failed("the-file"), failed("the-stream")).unwrap_err();
        assert!(err.to_string().contains("the-file"), "{err}");
    }
}
