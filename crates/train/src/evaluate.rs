//! Evaluation of the exported model through ONNX Runtime, the same path the
//! server uses: test metrics, the robustness table and the parity check
//! against the training library.

use rayon::prelude::*;

use crate::field::FieldRow;
use crate::fit::{argmax, loss_and_accuracy, softmax_rows};
use crate::model::Cnn;
use crate::robustness::Variant;
use mnister_core::backend::{Backend, BackendError};
use mnister_core::preprocess::{self, Limits, MnistImage, PIXELS, SIDE};

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
    compare(&burn_probs, ort_probs)
}

/// How far ONNX Runtime's probabilities are from a reference computed
/// another way, 10 per image.
pub fn compare(reference: &[f32], ort_probs: &[f32]) -> Parity {
    let images = reference.len() / 10;
    let max_abs_diff = reference
        .iter()
        .zip(ort_probs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    let agree = reference
        .chunks(10)
        .zip(ort_probs.chunks(10))
        .filter(|(a, b)| argmax(a) == argmax(b))
        .count();
    Parity {
        images,
        max_abs_diff,
        argmax_agreement: agree as f64 / images.max(1) as f64,
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RobustnessTable {
    pub rows: Vec<crate::robustness::RobustnessRow>,
}

/// One row of the field table: a kind of input users send, measured
/// through the serving path (encoded bytes, `preprocess_encoded`, ONNX
/// Runtime), the way a served request is.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FieldResult {
    /// Stable id: a field row's name, or `served:` and a robustness variant.
    pub row: String,
    /// One line saying what the row does.
    pub description: String,
    pub images: usize,
    /// Right answers over all images; a refused image counts as wrong.
    pub accuracy: f64,
    /// Images the preprocessing refused (blank, undecodable).
    pub refused: usize,
}

/// A field row's images and what the model said about each: `probs` has 10
/// values per image, NaN for an image the preprocessing refused.
pub struct FieldScores {
    pub result: FieldResult,
    pub probs: Vec<f32>,
}

/// What each row turns an MNIST test digit into.
#[derive(Debug, Clone, Copy)]
pub enum FieldInput {
    /// A field row: the encoded bytes a user would send.
    Field(FieldRow),
    /// A robustness variant (rotation, zoom, shift, stroke width) of the
    /// 28x28 digit, encoded as PNG: the existing rows, through the server.
    Served(Variant),
}

impl FieldInput {
    /// The field rows, then the robustness variants through the server.
    pub fn all() -> Vec<FieldInput> {
        FieldRow::ALL
            .into_iter()
            .map(FieldInput::Field)
            .chain(
                Variant::all()
                    .into_iter()
                    .filter(|v| !matches!(v, Variant::Canvas))
                    .map(FieldInput::Served),
            )
            .collect()
    }

    pub fn name(&self) -> String {
        match self {
            FieldInput::Field(r) => r.name().to_string(),
            FieldInput::Served(v) => format!("served: {}", v.name()),
        }
    }

    pub fn description(&self) -> String {
        match self {
            FieldInput::Field(r) => r.description().to_string(),
            FieldInput::Served(v) => format!(
                "{} of the 28x28 digit, encoded as PNG, through the server's preprocessing",
                v.name()
            ),
        }
    }

    /// The encoded bytes for test digit `index`, deterministic in `seed`.
    pub fn render(&self, digit: &[u8; PIXELS], index: usize, seed: u64) -> Vec<u8> {
        match self {
            FieldInput::Field(r) => r.render(digit, index, seed),
            FieldInput::Served(v) => {
                let img = preprocess::normalize_mnist(digit).expect("784 bytes");
                let out = v.apply(index, &img).unwrap_or(img);
                png_gray(&preprocess::to_bytes(&out))
            }
        }
    }
}

/// A 28x28 grey image as PNG bytes.
pub fn png_gray(pixels: &[u8]) -> Vec<u8> {
    let img = image::GrayImage::from_raw(SIDE as u32, SIDE as u32, pixels.to_vec())
        .expect("28x28 pixels");
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .expect("PNG encoding to memory");
    out
}

/// Scores one row over `digits` (784 bytes each) through the serving path.
pub fn field_row(
    backend: &mut dyn Backend,
    input: FieldInput,
    digits: &[[u8; PIXELS]],
    labels: &[u8],
    seed: u64,
) -> Result<FieldScores, BackendError> {
    let limits = Limits::default();
    let preprocessed: Vec<Option<MnistImage>> = digits
        .par_iter()
        .enumerate()
        .map(|(i, d)| preprocess::preprocess_encoded(&input.render(d, i, seed), &limits).ok())
        .collect();
    let kept: Vec<MnistImage> = preprocessed.iter().flatten().copied().collect();
    let kept_probs = predict(backend, &kept)?;
    let mut probs = Vec::with_capacity(digits.len() * 10);
    let mut rows = kept_probs.chunks(10);
    let mut right = 0;
    for (p, &label) in preprocessed.iter().zip(labels) {
        match p {
            Some(_) => {
                let row = rows.next().expect("one answer per kept image");
                right += usize::from(argmax(row) == label as usize);
                probs.extend_from_slice(row);
            }
            None => probs.extend([f32::NAN; 10]),
        }
    }
    let n = digits.len();
    Ok(FieldScores {
        result: FieldResult {
            row: input.name(),
            description: input.description(),
            images: n,
            accuracy: right as f64 / n.max(1) as f64,
            refused: n - kept.len(),
        },
        probs,
    })
}

/// Every row of the field table.
pub fn field_table(
    backend: &mut dyn Backend,
    digits: &[[u8; PIXELS]],
    labels: &[u8],
    seed: u64,
) -> Result<Vec<FieldScores>, BackendError> {
    FieldInput::all()
        .into_iter()
        .map(|input| field_row(backend, input, digits, labels, seed))
        .collect()
}
