//! `tessera-bench`: Tessera measured against the physical limits and against
//! OpenBao, on the same machine, in the same run (`make bench`).
//!
//! It starts every server it measures (`redis-server` with AOF `everysec`,
//! `tesserad` from `tessera dev init` material, OpenBao in dev and raft mode,
//! and an mTLS echo server that is the transport floor), drives them with one
//! load generator ([`load`]: closed or open loop, HDR histograms), meters the
//! servers' CPU from `/proc` ([`procstat`]), and writes `docs/benchmarks.md`
//! with a table of every figure beside its limit, its peer and its target,
//! and PNG plots ([`report`], [`plot`]).
//!
//! It never asserts a timing (the report says met or missed), never prints a
//! token, and kills every process it started when it ends, also on error.

pub mod echo;
pub mod limits;
pub mod load;
pub mod oauth;
pub mod openbao;
pub mod plot;
pub mod policy;
pub mod procs;
pub mod procstat;
pub mod profile;
pub mod python;
pub mod report;
pub mod results;
pub mod run;
pub mod scale;
pub mod sdk;
pub mod tessera;
