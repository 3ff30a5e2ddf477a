//! Generated gRPC code for the public API.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("mnister.v1");

    /// Encoded descriptors of the API, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/mnister_descriptor.bin"));
}
