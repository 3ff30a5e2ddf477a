//! Inference backends. The batcher only knows this trait, so the ONNX Runtime
//! backend can be swapped (another runtime, a fake in tests) without touching
//! the queue or the transport.

pub mod model;
pub mod ort;

pub use model::{ModelError, ModelFile};

/// Number of classes the model scores.
pub const CLASSES: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{0}")]
    Runtime(String),
    #[error("model output has {got} values for a batch of {n}; expected {expected}")]
    OutputShape {
        n: usize,
        got: usize,
        expected: usize,
    },
}

/// One inference engine instance. `infer` takes `&mut self` because one
/// instance runs on one worker thread at a time.
pub trait Backend: Send {
    /// Scores `n` images of 784 floats each (`input.len() == n * 784`) and
    /// returns `n * 10` probabilities, row-major.
    fn infer(&mut self, input: &[f32], n: usize) -> Result<Vec<f32>, BackendError>;
}

/// Index of the largest value (the predicted class).
pub fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap_or(0)
}
