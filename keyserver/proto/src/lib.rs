//! The kss gRPC API, generated from `proto/kss/v1/*.proto`.
#![allow(clippy::all, clippy::unwrap_used)]

/// Version 1 of the API (package `kss.v1`).
pub mod v1 {
    tonic::include_proto!("kss.v1");

    /// The encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("kss_descriptor");
}
