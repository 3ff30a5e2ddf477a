//! `mnister-train evaluate`: scores any model file on MNIST test, on the
//! field rows, through the serving path (encoded bytes, the server's
//! preprocessing, ONNX Runtime), and on the report's tensor robustness rows,
//! so that two model files compare on every row the bars name. The
//! trainer's report uses the same code.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use mnister_core::backend::ort::{OrtBackend, init_runtime, load_model};
use mnister_core::idx::{Split, load_mnist};
use mnister_core::preprocess::{PIXELS, normalize_mnist};

use crate::calibrate;
use crate::data::stratified_split;
use crate::evaluate::{self, FieldInput, FieldResult, Misclassified};
use crate::robustness::RobustnessRow;
use crate::run::robustness_table;

#[derive(Debug, Clone, clap::Parser, serde::Serialize)]
#[command(
    name = "mnister-train evaluate",
    about = "Scores ONNX models on MNIST test and on the field rows, through the server's preprocessing"
)]
pub struct EvaluateArgs {
    /// ONNX model files to score.
    #[arg(required = true)]
    pub models: Vec<PathBuf>,

    /// Folder with the MNIST IDX files (plain or .gz). Never downloaded.
    #[arg(long, env = "MNIST_DIR", default_value = "data/mnist")]
    pub data_dir: PathBuf,

    /// Score the field rows (on by default; --field=false for MNIST only).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub field: bool,

    /// Score the robustness rows on 28x28 tensors (rotation, zoom, shift,
    /// stroke width; the trainer report's table), besides the served ones.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub robustness: bool,

    /// Only these rows (names as in the table), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub rows: Vec<String>,

    /// Only the first N test images.
    #[arg(long)]
    pub limit: Option<usize>,

    /// Score the trainer's validation split (the 12,000 images a run holds
    /// out of MNIST train, as `--val-size` and `--split-seed` pick them)
    /// instead of MNIST test: for choosing between model files without
    /// looking at the test set. Reviewed label errors are left out, as in
    /// the report's calibration.
    #[arg(long)]
    pub validation: bool,

    /// The validation split's size, as the training run's --val-size.
    #[arg(long, default_value_t = 12_000)]
    pub val_size: usize,

    /// The validation split's seed, as the training run's --split-seed
    /// (or its --seed, when it had none).
    #[arg(long, default_value_t = 42)]
    pub split_seed: u64,

    /// Seed of the field rows' random parameters.
    #[arg(long, default_value_t = 20261130)]
    pub seed: u64,

    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// Draw every misclassified clean image here (PNG), most confident
    /// first: to see whether a set's confident mistakes are the model's or
    /// the labels'. One model only.
    #[arg(long)]
    pub errors_png: Option<PathBuf>,

    #[arg(long, env = "MNISTER_ORT_LIB")]
    pub ort_lib: Option<PathBuf>,
}

/// One model's scores.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ModelScores {
    pub model: String,
    pub version: String,
    /// Accuracy on the 28x28 tensors of the scored set (`set`).
    pub mnist_test: f64,
    /// "MNIST test", or "validation" under --validation.
    #[serde(default)]
    pub set: String,
    pub field: Vec<FieldResult>,
    /// The tensor robustness rows (empty with --robustness=false).
    #[serde(default)]
    pub robustness: Vec<RobustnessRow>,
    /// Every misclassified clean image, most confident first; `index` is
    /// the image's index in its MNIST file (train under --validation).
    #[serde(default)]
    pub errors: Vec<Misclassified>,
    /// For each kept-accuracy target, the threshold this set itself would
    /// choose and what it keeps. Not a threshold to serve with (it is fitted
    /// on the scored set): it separates how well the model ranks its own
    /// answers from how far a threshold chosen elsewhere carries.
    #[serde(default)]
    pub own_thresholds: Vec<OwnThreshold>,
}

/// A threshold chosen on the scored set itself.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct OwnThreshold {
    pub target: f64,
    /// None when no threshold reaches the target.
    pub threshold: Option<f32>,
    pub coverage: f64,
    pub accuracy: f64,
}

/// The kept-accuracy targets of the report's reject option.
const TARGETS: [f64; 3] = [0.99, 0.995, 0.999];

/// Thresholds `probs` itself would choose for each target, and what they keep.
pub fn own_thresholds(probs: &[f32], labels: &[u8]) -> Vec<OwnThreshold> {
    TARGETS
        .iter()
        .map(|&target| {
            let threshold = calibrate::threshold_for(probs, labels, target);
            let (coverage, accuracy) =
                threshold.map_or((0.0, 0.0), |t| calibrate::coverage_at(probs, labels, t));
            OwnThreshold {
                target,
                threshold,
                coverage,
                accuracy,
            }
        })
        .collect()
}

pub fn run(args: &EvaluateArgs) -> Result<Vec<ModelScores>> {
    if args.errors_png.is_some() && args.models.len() > 1 {
        bail!(
            "--errors-png draws one model's mistakes; {} models were given",
            args.models.len()
        );
    }
    let env = init_runtime(args.ort_lib.as_deref())?;
    // As in the report's calibration, validation leaves out the labels a
    // blind review found wrong.
    let mut left_out = 0;
    let (set, indices): (_, Vec<usize>) = if args.validation {
        let train = load_mnist(&args.data_dir, Split::Train)?;
        let split = stratified_split(&train.labels, args.val_size, args.split_seed);
        let (val, dropped) = crate::label_review::without_mislabeled(&split.val);
        left_out = dropped;
        (train, val)
    } else {
        let test = load_mnist(&args.data_dir, Split::Test)?;
        let n = test.len();
        (test, (0..n).collect())
    };
    let n = args.limit.unwrap_or(indices.len()).min(indices.len());
    let digits: Vec<[u8; PIXELS]> = indices[..n]
        .iter()
        .map(|&i| set.images.image(i).try_into().expect("28x28"))
        .collect();
    let labels: Vec<u8> = indices[..n].iter().map(|&i| set.labels[i]).collect();
    let labels = &labels[..];
    let tensors: Vec<_> = digits
        .iter()
        .map(|d| normalize_mnist(d).expect("784 bytes"))
        .collect();
    let inputs: Vec<FieldInput> = FieldInput::all()
        .into_iter()
        .filter(|i| args.field && (args.rows.is_empty() || args.rows.contains(&i.name())))
        .collect();
    let mut out = Vec::new();
    for path in &args.models {
        let model = load_model(env, path).with_context(|| format!("loading {}", path.display()))?;
        let mut backend = OrtBackend::for_model(env, &model, 2)?;
        let probs = evaluate::predict(&mut backend, &tensors)?;
        let mut errors = evaluate::test_metrics(&probs, labels).errors;
        errors.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
        if let Some(png) = &args.errors_png {
            let set = if args.validation {
                "validation"
            } else {
                "test"
            };
            crate::report::errors(png, set, &errors, &tensors)?;
        }
        let right = n - errors.len();
        for e in &mut errors {
            e.index = indices[e.index];
        }
        let mut field = Vec::new();
        for input in &inputs {
            let t = std::time::Instant::now();
            let scores = evaluate::field_row(&mut backend, *input, &digits, labels, args.seed)?;
            tracing::info!(
                row = %scores.result.row,
                accuracy = scores.result.accuracy,
                secs = t.elapsed().as_secs_f32(),
                "scored"
            );
            field.push(scores.result);
        }
        let robustness = if args.robustness {
            robustness_table(&mut backend, &tensors, labels)?.rows
        } else {
            Vec::new()
        };
        out.push(ModelScores {
            model: path.display().to_string(),
            version: model.version(),
            mnist_test: right as f64 / n.max(1) as f64,
            set: if args.validation {
                format!(
                    "validation ({} of MNIST train, seed {}, {left_out} reviewed label errors left out)",
                    n, args.split_seed
                )
            } else {
                "MNIST test".into()
            },
            field,
            robustness,
            own_thresholds: own_thresholds(&probs, labels),
            errors,
        });
    }
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_vec_pretty(&out)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(out)
}

/// The scores as a Markdown table, one column per model.
pub fn markdown(scores: &[ModelScores]) -> String {
    let mut s = String::from("| row |");
    for m in scores {
        s += &format!(" {} |", m.version);
    }
    s += "\n|---|";
    s += &"---|".repeat(scores.len());
    let set = scores
        .first()
        .map(|m| m.set.as_str())
        .unwrap_or("MNIST test");
    // Row ids keep their names; on the validation split a row named for
    // MNIST test is shown as what it measured.
    let label = |row: &str| {
        if set == "MNIST test" {
            row.to_string()
        } else {
            row.replace("(MNIST test)", "(these digits)")
        }
    };
    s += &format!("\n| {set} (tensors) |");
    for m in scores {
        s += &format!(" {:.2}% |", m.mnist_test * 100.0);
    }
    s += "\n";
    let rows = scores.first().map(|m| m.field.len()).unwrap_or(0);
    for r in 0..rows {
        s += &format!("| {} |", label(&scores[0].field[r].row));
        for m in scores {
            let f = &m.field[r];
            s += &format!(" {:.2}%", f.accuracy * 100.0);
            if f.refused > 0 {
                s += &format!(" ({} refused)", f.refused);
            }
            s += " |";
        }
        s += "\n";
    }
    let rows = scores.first().map(|m| m.robustness.len()).unwrap_or(0);
    for r in 0..rows {
        s += &format!("| tensor: {} |", label(&scores[0].robustness[r].variant));
        for m in scores {
            s += &format!(" {:.2}% |", m.robustness[r].accuracy * 100.0);
        }
        s += "\n";
    }
    let rows = scores.first().map(|m| m.own_thresholds.len()).unwrap_or(0);
    for r in 0..rows {
        s += &format!(
            "| {:.1}% kept, threshold fitted on these digits: t / coverage |",
            scores[0].own_thresholds[r].target * 100.0
        );
        for m in scores {
            let o = &m.own_thresholds[r];
            match o.threshold {
                Some(t) => s += &format!(" {t:.4} / {:.2}% |", o.coverage * 100.0),
                None => s += " not reached |",
            }
        }
        s += "\n";
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(set: &str) -> ModelScores {
        ModelScores {
            model: "m.onnx".into(),
            version: "v1".into(),
            mnist_test: 0.99,
            set: set.into(),
            field: Vec::new(),
            robustness: vec![RobustnessRow {
                variant: "clean (MNIST test)".into(),
                accuracy: 0.99,
                refused: 0,
            }],
            errors: Vec::new(),
            own_thresholds: own_thresholds(
                &[0.9, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                &[0],
            ),
        }
    }

    #[test]
    fn a_validation_table_does_not_call_its_rows_mnist_test() {
        let test = markdown(&[scores("MNIST test")]);
        assert!(
            test.contains("| tensor: clean (MNIST test) | 99.00% |"),
            "{test}"
        );
        let val = markdown(&[scores("validation (12000 of MNIST train, seed 42)")]);
        assert!(!val.contains("MNIST test"), "{val}");
        assert!(
            val.contains("| tensor: clean (these digits) | 99.00% |"),
            "{val}"
        );
        assert!(
            val.contains(
                "| 99.9% kept, threshold fitted on these digits: t / coverage | 0.9000 / 100.00% |"
            ),
            "{val}"
        );
    }

    #[test]
    fn own_thresholds_keep_the_most_answers_that_reach_each_target() {
        // 1,000 answers: 990 right at 0.99, then 10 wrong at 0.5.
        let mut probs = Vec::new();
        let mut labels = Vec::new();
        for i in 0..1000 {
            let mut p = [0.0f32; 10];
            if i < 990 {
                p[1] = 0.99;
            } else {
                p[2] = 0.5;
            }
            probs.extend_from_slice(&p);
            labels.push(1);
        }
        let own = own_thresholds(&probs, &labels);
        // 99% is reached with every answer kept, 99.5% and 99.9% only
        // by dropping the ten mistakes.
        assert_eq!(own[0].threshold, Some(0.5));
        assert_eq!(own[0].coverage, 1.0);
        for o in &own[1..] {
            assert_eq!(o.threshold, Some(0.99));
            assert_eq!(o.coverage, 0.99);
            assert_eq!(o.accuracy, 1.0);
        }
    }
}
