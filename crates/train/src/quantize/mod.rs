//! Post-training int8 quantization of an exported fp32 model, in Rust, into
//! ONNX's QDQ form (QuantizeLinear/DequantizeLinear pairs that ONNX Runtime's
//! graph optimizer fuses into QLinearConv / QGemm kernels).
//!
//! Why QDQ rather than QLinear* operators: the file stays a plain opset-13
//! graph that any runtime can execute (the Q/DQ pairs are exact float maths
//! when not fused), while ONNX Runtime turns each `DQ → Conv → Q` group into
//! one integer kernel.
//!
//! The scheme follows ONNX Runtime's own static quantizer, so the numbers
//! compare with its reference measurement:
//! - weights: int8, symmetric (zero point 0), one scale per output channel
//!   (axis 0 of a Conv weight `[Cout,Cin,kh,kw]`; for a Gemm the output axis,
//!   1 with `transB = 0` as our exporter writes `[in,out]`), by default in a
//!   7-bit range (ORT's `reduce_range`): on an AVX2 CPU without VNNI, full
//!   8-bit weights made 11 of 10,000 test answers differ from fp32 (the
//!   u8×s8 kernel saturates), 7-bit weights 1; `--weight-bits 8`;
//! - biases: int32 with scale `activation scale × weight scale`, which is what
//!   the integer kernels accumulate in;
//! - activations: uint8, asymmetric, one scale per tensor, the range measured
//!   on a seeded sample of *training* images (never validation or test);
//! - a Relu that follows a Conv/Gemm is dropped: the Q after the Conv has
//!   zero point 0, so its saturation at 0 is the Relu (ORT does the same);
//! - MaxPool and Flatten pass quantized values through unchanged, so the Q
//!   after them reuses their input's parameters and ORT runs them on uint8;
//! - the last Gemm (the logits) keeps a float output: the Softmax after it
//!   needs the resolution.
//!
//! Calibration runs the fp32 graph through ONNX Runtime with the tensors we
//! need as extra graph outputs and records min/max or a percentile of each.
//! Which is better is measured, not assumed: every candidate is quantized and
//! scored on the validation split, and the best one is kept.
//!
//! The code is split by stage, so each can be read and tested on its own:
//! `plan.rs` decides where the Q/DQ pairs go, `calibrate.rs` measures the
//! activations, `rewrite.rs` does the quantization arithmetic and builds the
//! int8 graph, `report.rs` describes the outcome; this module holds the
//! command-line arguments and runs the stages in order.

mod calibrate;
mod plan;
mod report;
mod rewrite;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use ort::environment::Environment;
use prost::Message;
use sha2::{Digest, Sha256};

use crate::data;
use crate::evaluate;
use crate::onnx::{ModelProto, StringStringEntryProto};
use crate::robustness::RobustnessRow;
use mnister_core::backend::argmax;
use mnister_core::backend::ort::{OrtBackend, init_runtime, load_model, open_model};
use mnister_core::idx::{Split, load_mnist};
use mnister_core::preprocess::MnistImage;

pub use calibrate::{Method, Observed, calibrate};
pub use plan::{Plan, plan};
pub use report::{Calibration, Candidate, QuantizeReport, RobustnessPair, Summary, markdown};
pub use rewrite::{
    ActParams, QuantizationParams, WeightParams, int8_per_channel, quantize_model, uint8_params,
};

/// `--calibration`: how activation ranges are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CalibrationChoice {
    /// Try min/max and every `--percentiles` value; keep the best on validation.
    Auto,
    MinMax,
    Percentile,
}

#[derive(Debug, Clone, clap::Parser, serde::Serialize)]
#[command(
    name = "mnister-train quantize",
    about = "Writes a calibrated int8 (QDQ) copy of an fp32 model and compares the two through ONNX Runtime"
)]
pub struct QuantizeArgs {
    /// The fp32 model to quantize.
    #[arg(
        long,
        env = "MNISTER_QUANTIZE_MODEL",
        default_value = "models/mnist-cnn.onnx"
    )]
    pub model: PathBuf,

    /// Where the int8 model goes (default: beside --model, `.int8.onnx`).
    #[arg(long, env = "MNISTER_QUANTIZE_OUT")]
    pub out: Option<PathBuf>,

    /// Folder with the MNIST IDX files.
    #[arg(long, env = "MNIST_DIR", default_value = "data/mnist")]
    pub data_dir: PathBuf,

    /// Training images the activation ranges are measured on.
    #[arg(
        long,
        env = "MNISTER_QUANTIZE_CALIBRATION_IMAGES",
        default_value_t = 1000
    )]
    pub calibration_images: usize,

    #[arg(long, value_enum, env = "MNISTER_QUANTIZE_CALIBRATION", default_value_t = CalibrationChoice::Auto)]
    pub calibration: CalibrationChoice,

    /// Percentiles tried by `--calibration percentile|auto`.
    #[arg(
        long,
        env = "MNISTER_QUANTIZE_PERCENTILES",
        value_delimiter = ',',
        default_value = "99.99,99.999"
    )]
    pub percentiles: Vec<f64>,

    /// Seed of the train/validation split and of the calibration sample
    /// (default: the model's `train.seed`, else 42).
    #[arg(long, env = "MNISTER_QUANTIZE_SEED")]
    pub seed: Option<u64>,

    /// Validation images held out of MNIST train (default: the model's
    /// `train.val_size`, else 12,000), so calibration never sees them.
    #[arg(long, env = "MNISTER_QUANTIZE_VAL_SIZE")]
    pub val_size: Option<usize>,

    /// Compare on the first this many test images only.
    #[arg(long, env = "MNISTER_QUANTIZE_TEST_LIMIT")]
    pub test_limit: Option<usize>,

    /// Weight range in bits: 7 (the default) keeps int8 exact on CPUs without
    /// VNNI, whose u8×s8 kernels saturate with full 8-bit weights (ORT's
    /// `reduce_range`); 8 is a little finer where every serving CPU has VNNI.
    #[arg(long, env = "MNISTER_QUANTIZE_WEIGHT_BITS", default_value_t = 7,
          value_parser = clap::value_parser!(u32).range(7..=8))]
    pub weight_bits: u32,

    /// Skip the robustness table (faster).
    #[arg(long, env = "MNISTER_QUANTIZE_NO_ROBUSTNESS")]
    pub no_robustness: bool,

    /// Folder for int8-report.json and int8-report.md.
    #[arg(long, env = "MNISTER_QUANTIZE_REPORT_DIR")]
    pub report_dir: Option<PathBuf>,

    /// ONNX Runtime library.
    #[arg(long, env = "MNISTER_ORT_LIB")]
    pub ort_lib: Option<PathBuf>,
}

impl QuantizeArgs {
    pub fn out_path(&self) -> PathBuf {
        self.out.clone().unwrap_or_else(|| int8_path(&self.model))
    }
}

/// `dir/name.onnx` → `dir/name.int8.onnx`.
pub fn int8_path(fp32: &Path) -> PathBuf {
    let stem = fp32
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    fp32.with_file_name(format!("{stem}.int8.onnx"))
}

fn agreement(a: &[f32], b: &[f32]) -> (f64, usize) {
    let n = a.len() / 10;
    let same = a
        .chunks(10)
        .zip(b.chunks(10))
        .filter(|(x, y)| argmax(x) == argmax(y))
        .count();
    (same as f64 / n.max(1) as f64, n - same)
}

fn backend(env: &'static Environment, path: &Path, bytes: Vec<u8>) -> Result<OrtBackend> {
    let (_, backend) =
        open_model(env, path, bytes, 2).context("the quantizer wrote an invalid model")?;
    Ok(backend)
}

/// The seeded, stratified calibration sample: indices into MNIST train,
/// drawn from the training portion of the model's own train/validation split.
pub fn calibration_indices(
    labels: &[u8],
    val_size: usize,
    seed: u64,
    n: usize,
) -> (Vec<usize>, Vec<usize>) {
    let split = data::stratified_split(labels, val_size, seed);
    let calib = data::stratified_subset(&split.train, labels, n, seed ^ 0xca11b);
    (calib, split.val)
}

/// Quantizes `args.model`, writes the int8 file and compares the two models.
pub fn run(args: &QuantizeArgs) -> Result<QuantizeReport> {
    let env = init_runtime(args.ort_lib.as_deref())?;
    let fp32_file = load_model(env, &args.model)?;
    let fp32 = ModelProto::decode(&fp32_file.bytes[..])?;
    if fp32_file
        .metadata
        .get("precision")
        .is_some_and(|p| p != "fp32")
    {
        bail!(
            "{} is already {}",
            args.model.display(),
            fp32_file.metadata["precision"]
        );
    }
    let md = &fp32_file.metadata;
    let seed = args
        .seed
        .or_else(|| md.get("train.seed").and_then(|s| s.parse().ok()))
        .unwrap_or(42);
    let val_size = args
        .val_size
        .or_else(|| md.get("train.val_size").and_then(|s| s.parse().ok()))
        .unwrap_or(12_000);

    let train = load_mnist(&args.data_dir, Split::Train)?;
    let (calib_idx, val_idx) =
        calibration_indices(&train.labels, val_size, seed, args.calibration_images);
    if calib_idx.is_empty() {
        bail!(
            "no training images left for calibration (val size {val_size} of {})",
            train.len()
        );
    }
    let calib: Vec<MnistImage> = calib_idx.iter().map(|&i| data::image(&train, i)).collect();
    let val: Vec<MnistImage> = val_idx.iter().map(|&i| data::image(&train, i)).collect();
    let val_labels: Vec<u8> = val_idx.iter().map(|&i| train.labels[i]).collect();

    let plan = plan(&fp32)?;
    let observed = calibrate(env, &fp32, &plan.calibrate, &calib)?;

    let mut fp32_backend = OrtBackend::for_model(env, &fp32_file, 2)?;
    let fp32_val = evaluate::predict(&mut fp32_backend, &val)?;
    let fp32_val_accuracy = evaluate::test_metrics(&fp32_val, &val_labels).accuracy;

    let mut methods = Vec::new();
    if args.calibration != CalibrationChoice::Percentile {
        methods.push(Method::MinMax);
    }
    if args.calibration != CalibrationChoice::MinMax {
        methods.extend(args.percentiles.iter().map(|&p| Method::Percentile(p)));
    }
    if methods.is_empty() {
        bail!("--calibration percentile needs at least one --percentiles value");
    }
    let out = args.out_path();
    let mut candidates = Vec::new();
    let mut best: Option<(usize, ModelProto, QuantizationParams)> = None;
    for (i, &m) in methods.iter().enumerate() {
        let (q, params) = quantize_model(&fp32, &plan, &observed, m, args.weight_bits)?;
        let mut b = backend(env, &out, q.encode_to_vec())?;
        let probs = evaluate::predict(&mut b, &val)?;
        let acc = evaluate::test_metrics(&probs, &val_labels).accuracy;
        let (agree, _) = agreement(&probs, &fp32_val);
        eprintln!(
            "calibration {:<20} validation accuracy {:.4}% (fp32 {:.4}%), agreement {:.4}%",
            m.name(),
            acc * 100.0,
            fp32_val_accuracy * 100.0,
            agree * 100.0
        );
        candidates.push(Candidate {
            method: m.name(),
            val_accuracy: acc,
            val_agreement: agree,
        });
        // Best validation accuracy; ties go to the higher agreement, then
        // to the earlier (simpler) method.
        let better = match &best {
            None => true,
            Some((j, _, _)) => {
                let (a, b) = (&candidates[i], &candidates[*j]);
                (a.val_accuracy, a.val_agreement) > (b.val_accuracy, b.val_agreement)
            }
        };
        if better {
            best = Some((i, q, params));
        }
    }
    let (chosen_i, mut int8, params) = best.expect("at least one method");
    let chosen = methods[chosen_i].name();

    // Compare on the test set (read only now, never used to choose).
    let test = load_mnist(&args.data_dir, Split::Test)?;
    let n_test = args.test_limit.unwrap_or(test.len()).min(test.len());
    let test_images: Vec<MnistImage> = (0..n_test).map(|i| data::image(&test, i)).collect();
    let test_labels = &test.labels[..n_test];
    let mut int8_backend = backend(env, &out, int8.encode_to_vec())?;
    let p32 = evaluate::predict(&mut fp32_backend, &test_images)?;
    let p8 = evaluate::predict(&mut int8_backend, &test_images)?;
    let (m32, m8) = (
        evaluate::test_metrics(&p32, test_labels),
        evaluate::test_metrics(&p8, test_labels),
    );
    let (agree, disagreements) = agreement(&p32, &p8);
    let max_abs_diff = p32
        .iter()
        .zip(&p8)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    let mut robustness = Vec::new();
    if !args.no_robustness {
        let r32 = crate::run::robustness_table(&mut fp32_backend, &test_images, test_labels)?.rows;
        let r8 = crate::run::robustness_table(&mut int8_backend, &test_images, test_labels)?.rows;
        robustness = r32
            .iter()
            .zip(&r8)
            .map(|(a, b): (&RobustnessRow, &RobustnessRow)| RobustnessPair {
                variant: a.variant.clone(),
                fp32: a.accuracy,
                int8: b.accuracy,
            })
            .collect();
    }

    let indices_sha256 = hex::encode(Sha256::digest(
        calib_idx
            .iter()
            .flat_map(|&i| (i as u32).to_le_bytes())
            .collect::<Vec<u8>>(),
    ));
    let calibration = Calibration {
        images: calib_idx.len(),
        seed,
        val_size,
        source: format!(
            "stratified seeded sample of the {} training images of MNIST train's {}/{} train/validation split (seed {seed})",
            train.len() - val_idx.len(),
            train.len() - val_idx.len(),
            val_idx.len()
        ),
        indices_sha256,
        train_images_sha256: train.images_sha256.clone(),
    };

    // Metadata: the fp32 model's, with the int8 model's own numbers.
    let version = format!("{}-int8", fp32_file.version());
    let mut meta: BTreeMap<String, String> = md.clone();
    meta.insert("precision".into(), "int8".into());
    meta.insert("version".into(), version.clone());
    meta.insert(
        "accuracy.val".into(),
        format!("{:.6}", candidates[chosen_i].val_accuracy),
    );
    if n_test == test.len() {
        meta.insert("accuracy.test".into(), format!("{:.6}", m8.accuracy));
        meta.insert("loss.test".into(), format!("{:.6}", m8.loss));
        for r in &robustness {
            meta.insert(
                format!("accuracy.robustness.{}", r.variant),
                format!("{:.6}", r.int8),
            );
        }
    } else {
        // Numbers on a subset would be mistaken for the test accuracy.
        meta.retain(|k, _| {
            !k.starts_with("accuracy.test")
                && !k.starts_with("accuracy.robustness")
                && k != "loss.test"
        });
    }
    meta.insert("quantization".into(), serde_json::to_string(&params)?);
    meta.insert(
        "quantization.calibration".into(),
        serde_json::to_string(&calibration)?,
    );
    meta.insert("quantization.method".into(), chosen.clone());
    meta.insert(
        "quantization.weight_bits".into(),
        args.weight_bits.to_string(),
    );
    meta.insert(
        "quantization.candidates".into(),
        serde_json::to_string(&candidates)?,
    );
    meta.insert("quantization.fp32_sha256".into(), fp32_file.sha256.clone());
    meta.insert("quantization.fp32_version".into(), fp32_file.version());
    meta.insert("quantization.agreement.test".into(), format!("{agree:.6}"));
    meta.insert(
        "quantizer".into(),
        format!("mnister-train quantize {}", env!("CARGO_PKG_VERSION")),
    );
    meta.insert("quantization.git_commit".into(), crate::run::git_commit());
    int8.metadata_props = meta
        .into_iter()
        .map(|(key, value)| StringStringEntryProto { key, value })
        .collect();
    int8.doc_string = format!("{} Weights int8, activations uint8 (QDQ).", fp32.doc_string);
    let bytes = int8.encode_to_vec();
    // The written file must load the way the server loads it.
    open_model(env, &out, bytes.clone(), 1).context("the quantizer wrote an invalid model")?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&out, &bytes).with_context(|| format!("writing {}", out.display()))?;

    let report = QuantizeReport {
        fp32_model: args.model.display().to_string(),
        fp32_sha256: fp32_file.sha256.clone(),
        fp32_version: fp32_file.version(),
        int8_model: out.display().to_string(),
        int8_sha256: hex::encode(Sha256::digest(&bytes)),
        int8_version: version,
        fp32_bytes: fp32_file.bytes.len(),
        int8_bytes: bytes.len(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        git_commit: crate::run::git_commit(),
        calibration,
        candidates,
        chosen,
        val_images: val.len(),
        fp32_val_accuracy,
        test_images: n_test,
        fp32_test: (&m32).into(),
        int8_test: (&m8).into(),
        agreement: agree,
        disagreements,
        max_abs_diff,
        robustness,
        params,
    };
    if let Some(dir) = &args.report_dir {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join("int8-report.json"),
            serde_json::to_vec_pretty(&report)?,
        )?;
        std::fs::write(dir.join("int8-report.md"), markdown(&report))?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_path_sits_beside_the_model() {
        assert_eq!(
            int8_path(Path::new("models/mnist-cnn.onnx")),
            PathBuf::from("models/mnist-cnn.int8.onnx")
        );
    }
}
