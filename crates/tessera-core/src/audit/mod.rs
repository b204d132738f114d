//! The audit trail's records and their hash chain.
//!
//! Every decision and lifecycle event becomes one [`AuditEvent`]. A [`Chain`]
//! seals events into [`AuditRecord`]s, each carrying the hash of the one
//! before, so that [`verify`] finds any edited, removed, inserted or reordered
//! record and says on which line.
//!
//! Records hold identities, ids, digests and decisions: tokens, keys and
//! evidence themselves never go in, only their ids and hashes.
//!
//! This module is pure: writing records to a file or stream is the server's.
//!
//! # The chain
//!
//! A record's `hash` is the lowercase hex SHA-256 of its `prev` (the previous
//! record's hash, or [`GENESIS`] for the first record of a file), a newline,
//! and the canonical JSON of `seq`, `prev` and the event: serde_json with no
//! whitespace, fields in declaration order, absent and empty fields left out.
//! A file holds one record per line, each exactly [`AuditRecord::to_line`].
//!
//! A hash chain carries no secret: whoever can rewrite the file can rewrite
//! its tail consistently, or cut it short. Compare the last hash [`verify`]
//! reports with one kept elsewhere (another sink, an operator's notes) to
//! catch that.

mod chain;
mod event;

#[cfg(test)]
mod tests;

pub use chain::{AuditRecord, Chain, ChainError, GENESIS, RecordError, Verifier, VerifyReport, verify};
pub use event::{Actor, AuditEvent, AuditKind, Outcome};
