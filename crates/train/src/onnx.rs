//! Generated types for the subset of onnx.proto the exporter and the
//! quantizer read and write.
#![allow(clippy::all, missing_docs)]
include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
