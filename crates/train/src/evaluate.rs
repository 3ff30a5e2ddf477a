//! Evaluation of the exported model through ONNX Runtime, the same path the
//! server uses: test metrics, the robustness table and the parity check
//! against the training library.

use rayon::prelude::*;

use crate::fit::{argmax, loss_and_accuracy, softmax_rows};
use crate::model::Cnn;
use mnister_core::backend::{Backend, BackendError};
use mnister_core::preprocess::MnistImage;

/// Batch size for evaluation runs.
const EVAL_BATCH: usize = 256;

/// Probabilities for every image, 10 per image.
pub fn predict(backend: &mut dyn Backend, images: &[MnistImage]) -> Result<Vec<f32>, BackendError> {
    let mut out = Vec::with_capacity(images.len() * 10);
    let mut flat = Vec::with_capacity(EVAL_BATCH * 784);
    for chunk in images.chunks(EVAL_BATCH) {
        flat.clear();
        for img in chunk {
            flat.extend_from_slice(img);
        }
        out.extend(backend.infer(&flat, chunk.len())?);
    }
    Ok(out)
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ClassMetrics {
    pub digit: usize,
    pub support: usize,
    pub precision: f64,
    pub recall: f64,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Misclassified {
    pub index: usize,
    pub label: u8,
    pub predicted: u8,
    pub confidence: f32,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TestMetrics {
    pub images: usize,
    pub accuracy: f64,
    pub loss: f64,
    /// rows = true label, columns = predicted.
    pub confusion: [[usize; 10]; 10],
    pub per_class: Vec<ClassMetrics>,
    pub errors: Vec<Misclassified>,
}

pub fn test_metrics(probs: &[f32], labels: &[u8]) -> TestMetrics {
    let (loss, accuracy) = loss_and_accuracy(probs, labels);
    let mut confusion = [[0usize; 10]; 10];
    let mut errors = Vec::new();
    for (i, (row, &l)) in probs.chunks(10).zip(labels).enumerate() {
        let p = argmax(row);
        confusion[l as usize][p] += 1;
        if p != l as usize {
            errors.push(Misclassified {
                index: i,
                label: l,
                predicted: p as u8,
                confidence: row[p],
            });
        }
    }
    let per_class = (0..10)
        .map(|d| {
            let tp = confusion[d][d] as f64;
            let support: usize = confusion[d].iter().sum();
            let predicted: usize = (0..10).map(|r| confusion[r][d]).sum();
            ClassMetrics {
                digit: d,
                support,
                precision: if predicted > 0 {
                    tp / predicted as f64
                } else {
                    0.0
                },
                recall: if support > 0 {
                    tp / support as f64
                } else {
                    0.0
                },
            }
        })
        .collect();
    TestMetrics {
        images: labels.len(),
        accuracy,
        loss,
        confusion,
        per_class,
        errors,
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Parity {
    pub images: usize,
    pub max_abs_diff: f32,
    pub argmax_agreement: f64,
}

/// Compares ONNX Runtime's probabilities with burn's on the same images.
pub fn parity(model: &Cnn, ort_probs: &[f32], images: &[MnistImage]) -> Parity {
    let burn_probs: Vec<f32> = images
        .par_chunks(250)
        .map(|c| softmax_rows(&crate::fit::logits(model, c)))
        .collect::<Vec<_>>()
        .concat();
    let max_abs_diff = burn_probs
        .iter()
        .zip(ort_probs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    let agree = burn_probs
        .chunks(10)
        .zip(ort_probs.chunks(10))
        .filter(|(a, b)| argmax(a) == argmax(b))
        .count();
    Parity {
        images: images.len(),
        max_abs_diff,
        argmax_agreement: agree as f64 / images.len().max(1) as f64,
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RobustnessTable {
    pub rows: Vec<crate::robustness::RobustnessRow>,
}
