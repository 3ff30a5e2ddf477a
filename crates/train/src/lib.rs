//! mnister's trainer: data, augmentation, the network, the fit loop, ONNX
//! export, int8 quantization and the evaluation report. A crate of its own
//! over `mnister-core` (preprocessing, IDX, the ONNX Runtime backend), so
//! the server never links the deep-learning library and nothing in serving
//! can reach into training.

pub mod augment;
pub mod calibrate;
pub mod config;
pub mod data;
pub mod dump;
pub mod ensemble;
pub mod evaluate;
pub mod export;
pub mod field;
pub mod fit;
mod graph;
pub mod import;
pub mod label_review;
pub mod model;
pub mod nondigit;
pub mod onnx;
pub mod quantize;
pub mod report;
pub mod robustness;
pub mod run;
pub mod score;
