//! Generated types for the subset of onnx.proto we read and write.
#![allow(clippy::all, missing_docs)]
include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
