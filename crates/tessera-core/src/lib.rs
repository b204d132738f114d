//! Tessera's domain: identities, tasks, the API catalog, grants, TTL
//! arithmetic, revocations, signed tokens and the Cedar policy engine.
//!
//! Everything here is a pure decision over values or a local computation
//! (signing, verifying). This crate never does network I/O, never talks to a
//! store and never depends on tonic or redis; time comes from a [`clock::Clock`].

pub mod anomaly;
pub mod approval;
pub mod attestation;
pub mod audit;
pub mod authz;
pub mod blast;
pub mod catalog;
pub mod clock;
pub mod delegation;
pub mod error;
pub mod grant;
pub mod hex;
pub mod identity;
pub mod issuance;
pub mod orchestration;
pub mod policy;
pub mod pop;
pub mod revocation;
pub mod risk;
pub mod task;
pub mod token;
pub mod ttl;

pub use error::ErrorKind;
