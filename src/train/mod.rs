//! The trainer: data, augmentation, the network, the fit loop, ONNX export
//! and the evaluation report. Compiled only with the `train` feature, so the
//! server never links the deep-learning library.

pub mod augment;
pub mod config;
pub mod data;
pub mod evaluate;
pub mod export;
pub mod fit;
pub mod model;
pub mod quantize;
pub mod report;
pub mod robustness;
pub mod run;
