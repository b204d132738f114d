//! Generated protobuf messages and gRPC stubs for `tessera.v1`, the public contract
//! in `proto/tessera/v1/`. Nothing here is written by hand; conversions to the
//! domain live in the server's `convert.rs`.

#![allow(missing_docs, reason = "generated code")]
#![allow(unreachable_pub, reason = "generated code")]
#![allow(clippy::all, reason = "generated code")]

/// `tessera.v1`: messages and services.
pub mod v1 {
    tonic::include_proto!("tessera.v1");

    /// Encoded `FileDescriptorSet` of the contract, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tessera_v1_descriptor.bin"));
}
