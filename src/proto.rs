//! Generated gRPC code for the public API: messages, server stubs, and the
//! client stubs the tests use.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("mnister.v1");

    /// Encoded descriptors of the API, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/mnister_descriptor.bin"));
}

/// The Open Inference Protocol (KServe v2) with Triton's extensions.
#[allow(clippy::all, missing_docs)]
pub mod inference {
    tonic::include_proto!("inference");
}
