//! Client stubs for the public API, generated from `proto/` by this crate's
//! build script.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("mnister.v1");
}
