//! mnister: a gRPC service that reads handwritten digits, and the trainer
//! that makes its model.

pub mod backend;
pub mod idx;
pub mod onnx;
pub mod preprocess;

#[cfg(feature = "train")]
pub mod train;
