//! mnister's core, below every transport: what turns an image into a digit.
//!
//! `preprocess` (any image to MNIST form, shared with the trainer) →
//! `engine` (admission, preprocessing pool, deadlines) → `batcher` (two-lane
//! queue, batch workers on their own threads) → `backend` (ONNX Runtime
//! behind a trait). `metrics` names every series the core records.
//!
//! Nothing here knows about gRPC, HTTP, protobuf or command lines: the
//! crate does not depend on tonic, axum, prost or clap, so the compiler
//! keeps the arrows pointing inwards.

pub mod backend;
pub mod batcher;
pub mod duration;
pub mod engine;
pub mod idx;
pub mod jpeg;
pub mod metrics;
pub mod preprocess;
pub mod trace;
