//! mnister: a gRPC service that reads handwritten digits, and the trainer
//! that makes its model.
//!
//! Layers, from the wire inwards: `service` (gRPC) → `engine` (admission,
//! preprocessing, results) → `batcher` (queue and batch workers) →
//! `backend` (ONNX Runtime behind a trait).

pub mod auth;
pub mod backend;
pub mod batcher;
pub mod cli;
pub mod config;
pub mod engine;
pub mod http;
pub mod idx;
pub mod metrics;
pub mod onnx;
pub mod preprocess;
pub mod proto;
pub mod reload;
pub mod server;
pub mod service;

#[cfg(feature = "train")]
pub mod train;
