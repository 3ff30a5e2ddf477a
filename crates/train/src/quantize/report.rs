//! What `mnister-train quantize` reports: int8-report.json (these structs,
//! serialized) and its Markdown rendering. Separate from the run so the
//! report's shape can be read, and changed, in one place.

use crate::evaluate::TestMetrics;

use super::rewrite::QuantizationParams;

/// One calibration candidate, scored on the validation images.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Candidate {
    pub method: String,
    pub val_accuracy: f64,
    /// Same argmax as the fp32 model.
    pub val_agreement: f64,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RobustnessPair {
    pub variant: String,
    pub fp32: f64,
    pub int8: f64,
}

/// Everything int8-report.json holds.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct QuantizeReport {
    pub fp32_model: String,
    pub fp32_sha256: String,
    pub fp32_version: String,
    pub int8_model: String,
    pub int8_sha256: String,
    pub int8_version: String,
    pub fp32_bytes: usize,
    pub int8_bytes: usize,
    pub command: String,
    pub git_commit: String,
    pub calibration: Calibration,
    pub candidates: Vec<Candidate>,
    pub chosen: String,
    pub val_images: usize,
    pub fp32_val_accuracy: f64,
    pub test_images: usize,
    pub fp32_test: Summary,
    pub int8_test: Summary,
    /// Share of test images both models give the same digit.
    pub agreement: f64,
    pub disagreements: usize,
    pub max_abs_diff: f32,
    pub robustness: Vec<RobustnessPair>,
    pub params: QuantizationParams,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Calibration {
    pub images: usize,
    pub seed: u64,
    pub val_size: usize,
    pub source: String,
    /// sha256 of the calibration indices (little-endian u32), to compare runs.
    pub indices_sha256: String,
    pub train_images_sha256: String,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub accuracy: f64,
    pub loss: f64,
    pub errors: usize,
}

impl From<&TestMetrics> for Summary {
    fn from(t: &TestMetrics) -> Self {
        Summary {
            accuracy: t.accuracy,
            loss: t.loss,
            errors: t.errors.len(),
        }
    }
}

/// fp32 and int8 side by side, as Markdown.
pub fn markdown(r: &QuantizeReport) -> String {
    use std::fmt::Write;
    let pct = |v: f64| format!("{:.2}%", v * 100.0);
    let mut s = String::new();
    let _ = writeln!(s, "| | fp32 | int8 |\n|---|---|---|");
    let _ = writeln!(s, "| file | `{}` | `{}` |", r.fp32_model, r.int8_model);
    let _ = writeln!(
        s,
        "| version | `{}` | `{}` |",
        r.fp32_version, r.int8_version
    );
    let _ = writeln!(s, "| sha256 | `{}` | `{}` |", r.fp32_sha256, r.int8_sha256);
    let _ = writeln!(
        s,
        "| size | {:.0} KiB | {:.0} KiB |",
        r.fp32_bytes as f64 / 1024.0,
        r.int8_bytes as f64 / 1024.0
    );
    let _ = writeln!(
        s,
        "| MNIST test accuracy ({} images) | **{}** ({} errors) | **{}** ({} errors) |",
        r.test_images,
        pct(r.fp32_test.accuracy),
        r.fp32_test.errors,
        pct(r.int8_test.accuracy),
        r.int8_test.errors
    );
    let _ = writeln!(
        s,
        "| MNIST test loss | {:.4} | {:.4} |",
        r.fp32_test.loss, r.int8_test.loss
    );
    let _ = writeln!(
        s,
        "| validation accuracy ({} images) | {} | {} |",
        r.val_images,
        pct(r.fp32_val_accuracy),
        pct(r
            .candidates
            .iter()
            .find(|c| c.method == r.chosen)
            .map_or(0.0, |c| c.val_accuracy))
    );
    let _ = writeln!(
        s,
        "\nSame digit from both models on **{}** of the test images ({} disagree); largest probability difference {:.3}.\n",
        pct(r.agreement),
        r.disagreements,
        r.max_abs_diff
    );
    let _ = writeln!(
        s,
        "Calibration: {} images, {} (indices sha256 `{}`).\n",
        r.calibration.images,
        r.calibration.source,
        &r.calibration.indices_sha256[..16]
    );
    let _ = writeln!(
        s,
        "| calibration method | validation accuracy | agreement with fp32 |\n|---|---|---|"
    );
    for c in &r.candidates {
        let mark = if c.method == r.chosen {
            " (chosen)"
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "| {}{} | {} | {} |",
            c.method,
            mark,
            pct(c.val_accuracy),
            pct(c.val_agreement)
        );
    }
    if !r.robustness.is_empty() {
        let _ = writeln!(
            s,
            "\n| robustness variant | fp32 | int8 | Δ points |\n|---|---|---|---|"
        );
        for row in &r.robustness {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:+.2} |",
                row.variant,
                pct(row.fp32),
                pct(row.int8),
                (row.int8 - row.fp32) * 100.0
            );
        }
    }
    let _ = writeln!(
        s,
        "\n| activation | range | scale | zero point |\n|---|---|---|---|"
    );
    for a in &r.params.activations {
        let _ = writeln!(
            s,
            "| `{}` | {:.4} .. {:.4} | {:.6} | {} |",
            a.tensor, a.min, a.max, a.scale, a.zero_point
        );
    }
    let _ = writeln!(
        s,
        "\nCommand: `{}` (trainer commit `{}`)",
        r.command, r.git_commit
    );
    s
}
