//! Sealing events into a hash chain, and checking one.

use ring::digest;
use serde::{Deserialize, Serialize};

use super::event::AuditEvent;
use crate::error::ErrorKind;

/// The `prev` of a file's first record: 64 zeros.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An event sealed into the chain: one line of an audit file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the chain, from 1, without gaps.
    pub seq: u64,
    /// The previous record's `hash` ([`GENESIS`] for the first).
    pub prev: String,
    /// Lowercase hex SHA-256 over `prev` and this record's content.
    pub hash: String,
    /// What the record says.
    #[serde(flatten)]
    pub event: AuditEvent,
}

/// What the hash covers, in this order. Serialized by serde_json, which keeps
/// declaration order and writes no whitespace.
#[derive(Serialize)]
struct Sealed<'a> {
    seq: u64,
    prev: &'a str,
    #[serde(flatten)]
    event: &'a AuditEvent,
}

/// The hash of a record with this `seq`, `prev` and event.
fn digest(seq: u64, prev: &str, event: &AuditEvent) -> String {
    #[expect(
        clippy::expect_used,
        reason = "an AuditEvent holds strings, integers, unit enums and a timestamp: serializing it cannot fail"
    )]
    let body = serde_json::to_vec(&Sealed { seq, prev, event }).expect("audit event serializes");
    let mut context = digest::Context::new(&digest::SHA256);
    context.update(prev.as_bytes());
    context.update(b"\n");
    context.update(&body);
    crate::hex::lower(context.finish().as_ref())
}

impl AuditRecord {
    /// The record as one line of an audit file (no newline): compact JSON,
    /// fields in declaration order.
    pub fn to_line(&self) -> String {
        #[expect(
            clippy::expect_used,
            reason = "an AuditRecord holds strings, integers, unit enums and a timestamp: serializing it cannot fail"
        )]
        serde_json::to_string(self).expect("audit record serializes")
    }

    /// Parses one line and checks the record's own hash (not its place in a
    /// chain: see [`Verifier`]). The line must be exactly [`Self::to_line`]
    /// of the record, so an added field or a changed spelling counts as an
    /// edit.
    pub fn from_line(line: &str) -> Result<Self, RecordError> {
        let (record, canonical) = parse(line).ok_or(RecordError::Malformed)?;
        if canonical && record.is_sealed() {
            Ok(record)
        } else {
            Err(RecordError::Edited { seq: record.seq })
        }
    }

    /// Whether `hash` matches the record's `seq`, `prev` and event.
    pub fn is_sealed(&self) -> bool {
        self.hash == digest(self.seq, &self.prev, &self.event)
    }
}

/// Parses a line; also says whether it is the record's canonical line.
fn parse(line: &str) -> Option<(AuditRecord, bool)> {
    let record: AuditRecord = serde_json::from_str(line).ok()?;
    let canonical = record.to_line() == line;
    Some((record, canonical))
}

/// Why one line is not a sealed record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Not an audit record at all.
    #[error("not an audit record")]
    Malformed,
    /// A record whose hash does not match its content.
    #[error("record {seq} was edited: its hash does not match its content")]
    Edited {
        /// The record's `seq`, as written.
        seq: u64,
    },
}

impl RecordError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Internal
    }
}

/// The writer's end of a chain: the next `seq` and the last hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    next_seq: u64,
    last_hash: String,
}

impl Chain {
    /// The start of a new file: `seq` 1 after [`GENESIS`].
    pub fn genesis() -> Self {
        Self {
            next_seq: 1,
            last_hash: GENESIS.to_owned(),
        }
    }

    /// Continues after `last`, the last record of an existing file, so a
    /// chain survives restarts.
    pub fn resume(last: &AuditRecord) -> Self {
        Self {
            next_seq: last.seq.saturating_add(1),
            last_hash: last.hash.clone(),
        }
    }

    /// The `seq` the next record gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The hash of the last record sealed ([`GENESIS`] if none).
    pub fn last_hash(&self) -> &str {
        &self.last_hash
    }

    /// Seals `event` as the next record and moves the chain past it.
    ///
    /// A writer that fails to store the record must not keep the moved chain:
    /// seal on a clone and keep it only once the record is written.
    pub fn seal(&mut self, event: AuditEvent) -> AuditRecord {
        let seq = self.next_seq;
        let prev = std::mem::take(&mut self.last_hash);
        let hash = digest(seq, &prev, &event);
        self.next_seq = seq.saturating_add(1);
        self.last_hash.clone_from(&hash);
        AuditRecord { seq, prev, hash, event }
    }
}

impl Default for Chain {
    fn default() -> Self {
        Self::genesis()
    }
}

/// A chain that verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// How many records.
    pub records: u64,
    /// The last record's hash ([`GENESIS`] when there is none).
    pub last_hash: String,
}

/// Where and how a chain does not hold. `line` is 1-based.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// The line is not an audit record.
    #[error("line {line}: not an audit record")]
    Malformed {
        /// Where.
        line: u64,
    },
    /// The record's hash does not match its content: it was edited.
    #[error("line {line}: record {seq} was edited: its hash does not match its content")]
    Edited {
        /// Where.
        line: u64,
        /// The record's `seq`, as written.
        seq: u64,
    },
    /// The record's `prev` is not the previous record's hash: a record was
    /// removed, inserted or reordered.
    #[error(
        "line {line}: record {seq} does not follow the record before it (its prev should be `{expected_prev}`): \
         a record was removed, inserted or reordered"
    )]
    Broken {
        /// Where.
        line: u64,
        /// The record's `seq`, as written.
        seq: u64,
        /// The previous record's hash.
        expected_prev: String,
    },
    /// A gap or a repeat in `seq`: a record was removed, inserted or
    /// reordered.
    #[error(
        "line {line}: expected record {expected}, found record {found}: a record was removed, inserted or reordered"
    )]
    Sequence {
        /// Where.
        line: u64,
        /// The `seq` that should be here.
        expected: u64,
        /// The `seq` that is here.
        found: u64,
    },
}

impl ChainError {
    /// The 1-based line where the chain stops holding.
    pub fn line(&self) -> u64 {
        match self {
            Self::Malformed { line }
            | Self::Edited { line, .. }
            | Self::Broken { line, .. }
            | Self::Sequence { line, .. } => *line,
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Internal
    }
}

/// Checks a chain one line at a time, so a file need not fit in memory.
/// Stop at the first error: the verifier does not move past a bad line.
#[derive(Debug, Clone, Default)]
pub struct Verifier {
    expected: Chain,
    records: u64,
}

impl Verifier {
    /// A verifier expecting a file's first record ([`GENESIS`], `seq` 1).
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks the next line (without its newline).
    pub fn push(&mut self, line: &str) -> Result<(), ChainError> {
        let line_no = self.records.saturating_add(1);
        let (record, canonical) = parse(line).ok_or(ChainError::Malformed { line: line_no })?;
        if record.seq != self.expected.next_seq {
            return Err(ChainError::Sequence {
                line: line_no,
                expected: self.expected.next_seq,
                found: record.seq,
            });
        }
        if record.prev != self.expected.last_hash {
            return Err(ChainError::Broken {
                line: line_no,
                seq: record.seq,
                expected_prev: self.expected.last_hash.clone(),
            });
        }
        if !canonical || !record.is_sealed() {
            return Err(ChainError::Edited {
                line: line_no,
                seq: record.seq,
            });
        }
        self.expected = Chain::resume(&record);
        self.records = line_no;
        Ok(())
    }

    /// How many records verified so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The report on the lines pushed so far.
    pub fn finish(self) -> VerifyReport {
        VerifyReport {
            records: self.records,
            last_hash: self.expected.last_hash,
        }
    }
}

/// Checks the lines of an audit file (without newlines) from its first
/// record: each parses, its hash matches its content, its `seq` follows and
/// its `prev` is the hash of the line before.
pub fn verify<'a>(lines: impl IntoIterator<Item = &'a str>) -> Result<VerifyReport, ChainError> {
    let mut verifier = Verifier::new();
    for line in lines {
        verifier.push(line)?;
    }
    Ok(verifier.finish())
}
