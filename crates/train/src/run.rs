//! The trainer from start to finish: data, split, fit, export, evaluation
//! through ONNX Runtime, report. The binary is a thin wrapper over `run`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{Context, Result};
use rand::SeedableRng;
use rand::rngs::StdRng;
use sha2::{Digest, Sha256};

use crate::augment::AugmentConfig;
use crate::calibrate::{self, Calibration};
use crate::config::TrainArgs;
use crate::evaluate::{self, FieldResult, Parity, RobustnessTable, TestMetrics};
use crate::fit::{self, EpochStats};
use crate::nondigit::{self, NonDigit, NonDigitRow};
use crate::robustness::{self, RobustnessRow, Variant};
use crate::{data, export, label_review, model::Cnn, report};
use mnister_core::backend::Backend;
use mnister_core::backend::ort::{init_runtime, open_model};
use mnister_core::idx::{Dataset, Split, load_mnist};
use mnister_core::preprocess::{self, MnistImage, PIXELS};
use ort::environment::Environment;

/// Images compared between burn and ONNX Runtime (the bar asks for ≥ 1,000).
const PARITY_IMAGES: usize = 2000;
/// The field rows' seed: fixed, so every report renders the same images.
pub const FIELD_SEED: u64 = 20261130;

/// Everything report.json holds.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub model: String,
    pub version: String,
    pub architecture: String,
    pub parameters: usize,
    pub args: serde_json::Value,
    pub git_commit: String,
    /// The command line that produced this report.
    pub command: String,
    pub dataset: BTreeMap<String, String>,
    pub train_images: usize,
    pub val_images: usize,
    pub epochs_trained: usize,
    pub best_epoch: Option<usize>,
    pub interrupted: bool,
    pub early_stopped: bool,
    pub train_seconds: f64,
    pub train_images_per_second: f64,
    pub initial_val_loss: Option<f64>,
    pub history: Vec<EpochStats>,
    pub val_accuracy: f64,
    pub test: TestMetrics,
    pub robustness: Vec<RobustnessRow>,
    /// Field rows, through the serving path (`evaluate::field_table`).
    #[serde(default)]
    pub field: Vec<FieldResult>,
    /// The temperature folded into the model, calibration error and the
    /// reject option's thresholds.
    #[serde(default)]
    pub calibration: Option<Calibration>,
    /// What the reject thresholds catch of inputs that are not digits.
    #[serde(default)]
    pub nondigit: Vec<NonDigitRow>,
    pub parity: Parity,
    pub onnx_sha256: String,
    pub wall_seconds: f64,
}

/// The commit the binary was built from (and whether the tree was dirty).
pub fn git_commit() -> String {
    let at_run = std::process::Command::new("git")
        .args(["describe", "--always", "--dirty", "--abbrev=12"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let built = env!("MNISTER_GIT_COMMIT");
    match at_run {
        Some(r) if r != built => format!("{built} (run in a checkout at {r})"),
        _ => built.to_string(),
    }
}

fn metadata(r: &Report) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("name".into(), "mnist-cnn".into());
    m.insert("precision".into(), "fp32".into());
    m.insert("architecture".into(), r.architecture.clone());
    m.insert("parameters".into(), r.parameters.to_string());
    m.insert(
        "input".into(),
        "image: float32 [N,1,28,28], MNIST form, 0..1".into(),
    );
    m.insert(
        "output".into(),
        "probabilities: float32 [N,10], softmax".into(),
    );
    m.insert("labels".into(), "0,1,2,3,4,5,6,7,8,9".into());
    m.insert(
        "trainer".into(),
        format!("mnister-train {}", env!("CARGO_PKG_VERSION")),
    );
    m.insert("git_commit".into(), r.git_commit.clone());
    m.insert("epochs_trained".into(), r.epochs_trained.to_string());
    m.insert(
        "best_epoch".into(),
        r.best_epoch.map(|e| e.to_string()).unwrap_or_default(),
    );
    m.insert("train_images".into(), r.train_images.to_string());
    m.insert("val_images".into(), r.val_images.to_string());
    m.insert("accuracy.val".into(), format!("{:.6}", r.val_accuracy));
    m.insert("accuracy.test".into(), format!("{:.6}", r.test.accuracy));
    m.insert("loss.test".into(), format!("{:.6}", r.test.loss));
    for row in &r.robustness {
        m.insert(
            format!("accuracy.robustness.{}", row.variant),
            format!("{:.6}", row.accuracy),
        );
    }
    for row in &r.field {
        m.insert(
            format!("accuracy.field.{}", row.row),
            format!("{:.6}", row.accuracy),
        );
    }
    if let Some(c) = &r.calibration {
        m.insert(
            "calibration.temperature".into(),
            format!("{:.6}", c.temperature),
        );
        for (target, th) in c.targets.iter().zip(&c.thresholds) {
            if let Some(th) = th {
                m.insert(
                    format!("calibration.threshold.{}", target * 100.0),
                    format!("{th:.6}"),
                );
            }
        }
        for set in &c.sets {
            m.insert(
                format!("calibration.ece.{}", set.set),
                format!("{:.6} -> {:.6}", set.ece_before, set.ece_after),
            );
        }
    }
    for (k, v) in &r.dataset {
        m.insert(format!("dataset.{k}"), v.clone());
    }
    if let serde_json::Value::Object(flags) = &r.args {
        for (k, v) in flags {
            let v = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            m.insert(format!("train.{k}"), v);
        }
    }
    m
}

pub fn dataset_checksums(train: &Dataset, test: &Dataset) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("train_images_sha256".into(), train.images_sha256.clone()),
        ("train_labels_sha256".into(), train.labels_sha256.clone()),
        ("test_images_sha256".into(), test.images_sha256.clone()),
        ("test_labels_sha256".into(), test.labels_sha256.clone()),
    ])
}

/// Draws augmentation.png from the first training image of each class.
fn augmentation_preview(
    args: &TrainArgs,
    ds: &Dataset,
    split: &data::Split,
    path: &Path,
) -> Result<()> {
    let cfg = args.augment().unwrap_or(AugmentConfig::REFERENCE);
    let mut rng = StdRng::seed_from_u64(args.seed);
    let rows: Vec<(MnistImage, Vec<MnistImage>)> = (0..10u8)
        .filter_map(|d| split.train.iter().find(|&&i| ds.labels[i] == d))
        .map(|&i| {
            let img = data::image(ds, i);
            let samples = (0..args.augment_preview)
                .map(|_| cfg.sample(&mut rng, 1.0).warp(&img, cfg.fill))
                .collect();
            (img, samples)
        })
        .collect();
    report::augmentation(path, &rows)
}

pub fn run(args: &TrainArgs, stop: &AtomicBool) -> Result<Report> {
    let started = Instant::now();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    // Fail before hours of training if the runtime the report needs is missing.
    let env = init_runtime(args.ort_lib.as_deref())?;

    let train = load_mnist(&args.data_dir, Split::Train)?;
    let mut split = data::stratified_split(&train.labels, args.val_size, args.split_seed());
    if let Some(n) = args.train_limit {
        split.train = data::stratified_subset(&split.train, &train.labels, n, args.split_seed());
    }
    if let Some(n) = args.val_limit {
        split.val = data::stratified_subset(&split.val, &train.labels, n, args.split_seed());
    }
    let probe = Cnn::new(args.arch, args.dropout, &fit::device());
    let parameters = probe.inference_params();
    eprintln!(
        "{} network: {} parameters ({} trainable incl. batch norm); {} train / {} validation images; augmentation {}",
        args.arch.name(),
        parameters,
        burn::module::Module::num_params(&probe),
        split.train.len(),
        split.val.len(),
        if args.no_augment { "off" } else { "on" }
    );
    augmentation_preview(args, &train, &split, &args.out.join("augmentation.png"))?;

    let outcome = fit::fit(args, &train, &split, stop)?;

    let mut report = Report {
        model: "mnist-cnn".into(),
        version: String::new(),
        architecture: args.arch.name().into(),
        parameters,
        args: serde_json::to_value(args)?,
        git_commit: git_commit(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        dataset: BTreeMap::new(),
        train_images: split.train.len(),
        val_images: split.val.len(),
        epochs_trained: outcome.state.epochs_done,
        best_epoch: outcome.state.best_epoch,
        interrupted: outcome.interrupted,
        early_stopped: outcome.early_stopped,
        train_seconds: outcome.state.train_seconds,
        train_images_per_second: {
            let h = &outcome.state.history;
            let secs: f64 = h.iter().map(|e| e.seconds).sum();
            let imgs: f64 = h.iter().map(|e| e.images_per_second * e.seconds).sum();
            if secs > 0.0 { imgs / secs } else { 0.0 }
        },
        initial_val_loss: outcome.state.initial_val_loss,
        val_accuracy: outcome
            .exported_val_accuracy
            .unwrap_or(outcome.state.best_val_accuracy),
        history: outcome.state.history.clone(),
        test: evaluate::test_metrics(&[], &[]),
        robustness: Vec::new(),
        field: Vec::new(),
        calibration: None,
        nondigit: Vec::new(),
        parity: Parity {
            images: 0,
            max_abs_diff: 0.0,
            argmax_agreement: 0.0,
        },
        onnx_sha256: String::new(),
        wall_seconds: 0.0,
    };
    if args.no_test {
        export_candidate(args, &outcome, &report)?;
        return Ok(report);
    }

    // The test set is read only now, for the final evaluation.
    let test = load_mnist(&args.data_dir, Split::Test)?;
    report.dataset = dataset_checksums(&train, &test);
    let n_test = args.test_limit.unwrap_or(test.len()).min(test.len());
    let test_images: Vec<MnistImage> = (0..n_test).map(|i| data::image(&test, i)).collect();
    let test_labels = &test.labels[..n_test];

    let stage = Stage {
        out: &args.out,
        data_dir: &args.data_dir,
        export: args.export.as_deref(),
        int8: args.int8,
        split_seed: args.split_seed(),
        val_size: args.val_size,
        test_limit: args.test_limit,
        ort_lib: args.ort_lib.as_deref(),
        version_prefix: args.arch.name(),
    };
    finish(
        &stage,
        env,
        &train,
        &split.val,
        &test_images,
        test_labels,
        &mut report,
        &|meta, t| export::to_bytes_calibrated(&outcome.best, meta, t),
        &|probs, images| evaluate::parity(&outcome.best, probs, images),
    )?;
    report.wall_seconds = started.elapsed().as_secs_f64();
    write_report(&args.out, &report)?;
    Ok(report)
}

/// report.json and report.md in `out`.
pub fn write_report(out: &Path, report: &Report) -> Result<()> {
    std::fs::write(out.join("report.json"), serde_json::to_vec_pretty(report)?)?;
    std::fs::write(out.join("report.md"), markdown(report))?;
    Ok(())
}

/// Where the report stage writes and what it reads besides the model.
pub struct Stage<'a> {
    pub out: &'a Path,
    pub data_dir: &'a Path,
    /// Also copy the final model (and its int8 twin) here.
    pub export: Option<&'a Path>,
    pub int8: bool,
    /// The validation split the model held out, as `--split-seed` (or
    /// `--seed`) and `--val-size` chose it: the calibration set comes from it.
    pub split_seed: u64,
    pub val_size: usize,
    pub test_limit: Option<usize>,
    pub ort_lib: Option<&'a Path>,
    /// The model version is this, a dash, and the weights' hash.
    pub version_prefix: &'a str,
}

/// The model file, from metadata and a temperature to fold in.
pub type Exporter<'a> = dyn Fn(&BTreeMap<String, String>, f32) -> Vec<u8> + 'a;
/// Compares ONNX Runtime's probabilities with the model's own reference.
pub type ParityCheck<'a> = dyn Fn(&[f32], &[MnistImage]) -> Parity + 'a;

/// The report stage, shared by a training run and an ensemble: scores the
/// model through ONNX Runtime on test, robustness, field and non-digit
/// sets, fits the temperature and thresholds on the validation split, and
/// writes the final model (and int8 twin) with every number in its
/// metadata.
#[allow(clippy::too_many_arguments)]
pub fn finish(
    stage: &Stage,
    env: &'static Environment,
    train: &Dataset,
    val: &[usize],
    test_images: &[MnistImage],
    test_labels: &[u8],
    report: &mut Report,
    export: &Exporter,
    parity: &ParityCheck,
) -> Result<()> {
    let n_test = test_images.len();
    // Evaluate a first export (metadata without the test numbers), then
    // write the final file with every number in its metadata. The weights,
    // and so the predictions, are identical.
    let onnx_path = stage.out.join("model.onnx");
    let bytes = export(&metadata(report), 1.0);
    let (_, mut backend) =
        open_model(env, &onnx_path, bytes, 2).context("the exporter wrote an invalid model")?;
    let probs = evaluate::predict(&mut backend, test_images)?;
    let n_parity = PARITY_IMAGES.min(n_test);
    report.parity = parity(&probs[..n_parity * 10], &test_images[..n_parity]);
    report.robustness = robustness_table(&mut backend, test_images, test_labels)?.rows;
    let digits: Vec<[u8; PIXELS]> = test_images
        .iter()
        .map(|img| preprocess::to_bytes(img).try_into().expect("784 values"))
        .collect();
    let field = evaluate::field_table(&mut backend, &digits, test_labels, FIELD_SEED)?;

    // Confidence: one temperature and the reject thresholds, fitted on the
    // validation digits as they are and as the field rows render them.
    let (val_probs, val_labels, clean, per_form) = calibration_set(&mut backend, train, val)?;
    let mut sets = vec![(
        "MNIST test".to_string(),
        probs.clone(),
        test_labels.to_vec(),
    )];
    sets.extend(
        field
            .iter()
            .map(|f| (f.result.row.clone(), f.probs.clone(), test_labels.to_vec())),
    );
    let forms: Vec<&str> = crate::field::FieldRow::ALL
        .iter()
        .map(|r| r.name())
        .collect();
    let mut cal = calibrate::calibrate(
        &calibrate::Validation {
            name: "validation (clean + field renderings)",
            probs: &val_probs,
            labels: &val_labels,
            clean,
            per_form,
            forms: &forms,
        },
        &sets,
    );
    cal.label_errors_left_out = Some(val.len() - clean);
    let t = cal.temperature;
    calibrate::reliability_diagram(
        &stage.out.join("reliability-validation.png"),
        "validation (clean + field renderings)",
        &val_probs,
        &val_labels,
        t,
    )?;
    calibrate::reliability_diagram(
        &stage.out.join("reliability-test.png"),
        "MNIST test",
        &probs,
        test_labels,
        t,
    )?;
    let (field_probs, field_labels): (Vec<f32>, Vec<u8>) = field
        .iter()
        .filter(|f| !f.result.row.starts_with("served:"))
        .fold((Vec::new(), Vec::new()), |(mut p, mut l), f| {
            p.extend_from_slice(&f.probs);
            l.extend_from_slice(test_labels);
            (p, l)
        });
    calibrate::reliability_diagram(
        &stage.out.join("reliability-field.png"),
        "the field rows, pooled",
        &field_probs,
        &field_labels,
        t,
    )?;
    report.nondigit = nondigit_table(&mut backend, &digits, &cal)?;
    // The report describes the model as shipped, with the temperature.
    report.test = evaluate::test_metrics(&calibrate::with_temperature(&probs, t), test_labels);
    report.field = field.into_iter().map(|f| f.result).collect();
    report.calibration = Some(cal);

    let mut meta = metadata(report);
    let weights_hash = hex::encode(Sha256::digest(export(&BTreeMap::new(), t)));
    report.version = format!("{}-{}", stage.version_prefix, &weights_hash[..10]);
    meta.insert("version".into(), report.version.clone());
    let bytes = export(&meta, t);
    report.onnx_sha256 = hex::encode(Sha256::digest(&bytes));
    std::fs::write(&onnx_path, &bytes)
        .with_context(|| format!("writing {}", onnx_path.display()))?;
    if let Some(dest) = stage.export {
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(dest, &bytes).with_context(|| format!("writing {}", dest.display()))?;
    }
    if stage.int8 {
        let q = crate::quantize::QuantizeArgs {
            model: onnx_path.clone(),
            out: Some(stage.out.join("model.int8.onnx")),
            data_dir: stage.data_dir.to_path_buf(),
            calibration_images: 1000,
            calibration: crate::quantize::CalibrationChoice::Auto,
            percentiles: vec![99.99, 99.999],
            seed: Some(stage.split_seed),
            val_size: Some(stage.val_size),
            test_limit: stage.test_limit,
            weight_bits: 7,
            no_robustness: false,
            report_dir: Some(stage.out.to_path_buf()),
            ort_lib: stage.ort_lib.map(Path::to_path_buf),
        };
        crate::quantize::run(&q)?;
        if let Some(dest) = stage.export {
            std::fs::copy(q.out_path(), crate::quantize::int8_path(dest))?;
        }
    }

    if !report.history.is_empty() {
        report::curves(&stage.out.join("curves.png"), &report.history)?;
    }
    report::confusion(&stage.out.join("confusion.png"), &report.test)?;
    report::errors(
        &stage.out.join("errors.png"),
        "test",
        &report.test.errors,
        test_images,
    )?;
    Ok(())
}

/// `--no-test`: the candidate's weights and what is known without the test
/// set, so that nothing in the file looks measured on it.
fn export_candidate(args: &TrainArgs, outcome: &fit::FitOutcome, report: &Report) -> Result<()> {
    let mut meta = metadata(report);
    meta.remove("accuracy.test");
    meta.remove("loss.test");
    meta.insert(
        "report".into(),
        "none: a --no-test candidate, never scored on MNIST test".into(),
    );
    let path = args.out.join(CANDIDATE);
    std::fs::write(&path, export::to_bytes(&outcome.best, &meta))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// What `--no-test` writes in --out.
pub const CANDIDATE: &str = "candidate.onnx";

/// The calibration set: the validation digits as they are, and each field
/// row's rendering of a stratified sample of them (seeded apart from the
/// test renderings). Returns (probabilities, labels, images per field
/// form), the clean digits first.
pub fn calibration_set(
    backend: &mut dyn Backend,
    train: &Dataset,
    val: &[usize],
) -> Result<(Vec<f32>, Vec<u8>, usize, usize)> {
    // The sample is drawn before the reviewed label errors are left out,
    // so the review changes nothing but those images.
    let sample = data::stratified_subset(val, &train.labels, 2000.min(val.len()), FIELD_SEED);
    let (val, _) = label_review::without_mislabeled(val);
    let (sample, _) = label_review::without_mislabeled(&sample);
    let images: Vec<MnistImage> = val.iter().map(|&i| data::image(train, i)).collect();
    let labels: Vec<u8> = val.iter().map(|&i| train.labels[i]).collect();
    let mut probs = evaluate::predict(backend, &images)?;
    let mut all_labels = labels.clone();
    let digits: Vec<[u8; PIXELS]> = sample
        .iter()
        .map(|&i| train.images.image(i).try_into().expect("784 values"))
        .collect();
    let sample_labels: Vec<u8> = sample.iter().map(|&i| train.labels[i]).collect();
    for row in crate::field::FieldRow::ALL {
        let s = evaluate::field_row(
            backend,
            evaluate::FieldInput::Field(row),
            &digits,
            &sample_labels,
            FIELD_SEED + 1,
        )?;
        probs.extend(s.probs);
        all_labels.extend_from_slice(&sample_labels);
    }
    Ok((probs, all_labels, val.len(), sample.len()))
}

/// Images per non-digit set.
pub const NONDIGIT_IMAGES: usize = 1000;

/// Each non-digit set through the serving path: the share each threshold of
/// `cal` keeps from being answered as a digit.
pub fn nondigit_table(
    backend: &mut dyn Backend,
    digits: &[[u8; PIXELS]],
    cal: &Calibration,
) -> Result<Vec<NonDigitRow>> {
    use rayon::prelude::*;
    let limits = preprocess::Limits::default();
    let mut rows = Vec::new();
    for kind in NonDigit::ALL {
        let images = nondigit::render(kind, NONDIGIT_IMAGES, FIELD_SEED, digits);
        let pre: Vec<Option<MnistImage>> = images
            .par_iter()
            .map(|b| preprocess::preprocess_encoded(b, &limits).ok())
            .collect();
        let kept: Vec<MnistImage> = pre.iter().flatten().copied().collect();
        let probs =
            calibrate::with_temperature(&evaluate::predict(backend, &kept)?, cal.temperature);
        let conf: Vec<f32> = probs
            .chunks_exact(10)
            .map(|p| p.iter().cloned().fold(0.0, f32::max))
            .collect();
        let n = images.len();
        let refused = n - kept.len();
        let caught = cal
            .thresholds
            .iter()
            .map(|t| {
                let below = t.map_or(0, |t| conf.iter().filter(|&&c| c < t).count());
                (refused + below) as f64 / n.max(1) as f64
            })
            .collect();
        rows.push(NonDigitRow {
            set: kind.name().to_string(),
            images: n,
            refused,
            caught,
        });
    }
    Ok(rows)
}

/// Scores every robustness variant through the backend.
pub fn robustness_table(
    backend: &mut dyn Backend,
    images: &[MnistImage],
    labels: &[u8],
) -> Result<RobustnessTable> {
    let mut rows = Vec::new();
    for v in Variant::all() {
        let transformed = robustness::transform(v, images);
        let kept: Vec<(usize, MnistImage)> = transformed
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.map(|t| (i, t)))
            .collect();
        let imgs: Vec<MnistImage> = kept.iter().map(|k| k.1).collect();
        let probs = evaluate::predict(backend, &imgs)?;
        let right = probs
            .chunks(10)
            .zip(&kept)
            .filter(|(p, (i, _))| fit::argmax(p) == labels[*i] as usize)
            .count();
        rows.push(RobustnessRow {
            variant: v.name(),
            accuracy: right as f64 / labels.len().max(1) as f64,
            refused: labels.len() - kept.len(),
        });
    }
    Ok(RobustnessTable { rows })
}

/// Human-readable summary printed at the end of a run.
pub fn summary(r: &Report) -> String {
    let mut s = String::new();
    use std::fmt::Write;
    let _ = writeln!(
        s,
        "model {} ({}), {} parameters",
        r.version, r.architecture, r.parameters
    );
    let _ = writeln!(
        s,
        "trained {} epochs (best {:?}) on {} images in {:.0}s at {:.0} img/s{}",
        r.epochs_trained,
        r.best_epoch,
        r.train_images,
        r.train_seconds,
        r.train_images_per_second,
        if r.interrupted { ", interrupted" } else { "" }
    );
    let _ = writeln!(
        s,
        "validation accuracy {:.4} ({} images)",
        r.val_accuracy, r.val_images
    );
    let _ = writeln!(
        s,
        "TEST accuracy {:.4}  loss {:.4}  ({} images, {} errors)",
        r.test.accuracy,
        r.test.loss,
        r.test.images,
        r.test.errors.len()
    );
    let _ = writeln!(s, "per class   precision  recall");
    for c in &r.test.per_class {
        let _ = writeln!(
            s,
            "  {}         {:.4}     {:.4}",
            c.digit, c.precision, c.recall
        );
    }
    let _ = writeln!(s, "robustness (accuracy on transformed test images):");
    for row in &r.robustness {
        let _ = writeln!(s, "  {:<58} {:.4}", row.variant, row.accuracy);
    }
    let _ = writeln!(s, "field rows (through the serving path):");
    for row in &r.field {
        let _ = writeln!(s, "  {:<58} {:.4}", row.row, row.accuracy);
    }
    let _ = writeln!(
        s,
        "parity burn vs ONNX Runtime on {} images: max |Δp| {:.2e}, argmax agreement {:.4}",
        r.parity.images, r.parity.max_abs_diff, r.parity.argmax_agreement
    );
    s
}

/// The report as Markdown tables, for model cards and reviews.
pub fn markdown(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let pct = |v: f64| format!("{:.2}%", v * 100.0);
    let _ = writeln!(s, "| | |\n|---|---|");
    let _ = writeln!(s, "| model version | `{}` |", r.version);
    let _ = writeln!(
        s,
        "| architecture | {} ({} parameters at inference) |",
        r.architecture, r.parameters
    );
    let _ = writeln!(
        s,
        "| MNIST test accuracy | **{}** ({} images, {} errors) |",
        pct(r.test.accuracy),
        r.test.images,
        r.test.errors.len()
    );
    let _ = writeln!(s, "| MNIST test loss | {:.4} |", r.test.loss);
    // An ensemble was not trained: its members were, each with its own report.
    let ensemble = r.architecture.starts_with("ensemble");
    if ensemble {
        let _ = writeln!(
            s,
            "| validation accuracy | {} ({} images) |",
            pct(r.val_accuracy),
            r.val_images
        );
    } else {
        let _ = writeln!(
            s,
            "| validation accuracy (best epoch {}) | {} ({} images) |",
            r.best_epoch.map(|e| e.to_string()).unwrap_or_default(),
            pct(r.val_accuracy),
            r.val_images
        );
        let _ = writeln!(
            s,
            "| epochs trained | {}{} |",
            r.epochs_trained,
            if r.interrupted { " (interrupted)" } else { "" }
        );
        let _ = writeln!(
            s,
            "| training time | {:.1} min at {:.0} img/s |",
            r.train_seconds / 60.0,
            r.train_images_per_second
        );
    }
    let _ = writeln!(
        s,
        "| ORT vs {} parity | max abs diff {:.2e}, argmax agreement {} on {} images |",
        // An ensemble's reference is its members, run one by one.
        if ensemble { "members" } else { "burn" },
        r.parity.max_abs_diff,
        pct(r.parity.argmax_agreement),
        r.parity.images
    );
    let _ = writeln!(s, "| ONNX sha256 | `{}` |", r.onnx_sha256);
    let _ = writeln!(s, "| trainer commit | `{}` |", r.git_commit);
    let _ = writeln!(s, "\nCommand: `{}`\n", r.command);
    let _ = writeln!(
        s,
        "### Robustness (accuracy on transformed MNIST test images)\n\n| variant | accuracy |\n|---|---|"
    );
    for row in &r.robustness {
        let _ = writeln!(s, "| {} | {} |", row.variant, pct(row.accuracy));
    }
    let _ = writeln!(
        s,
        "\n### Field rows (MNIST test digits as users send them: encoded bytes, the server's preprocessing, ONNX Runtime)\n\n| row | accuracy | refused | what it is |\n|---|---|---|---|"
    );
    for row in &r.field {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            row.row,
            pct(row.accuracy),
            row.refused,
            row.description
        );
    }
    if let Some(c) = &r.calibration {
        let _ = writeln!(
            s,
            "\n### Confidence\n\nTemperature **{:.3}**, fitted on the validation digits and their field renderings, folded into the exported model (the last layer's weights and bias divided by it). Expected calibration error (15 bins) before and after, and the reject option: for each kept-accuracy target, the confidence threshold chosen on validation{}, and the share of answers it keeps (coverage) and their accuracy on each set.\n",
            c.temperature,
            c.field_risk_factor.map_or(String::new(), |k| format!(
                " (the lowest at which the clean validation digits keep the target and each field rendering of them keeps 1 − {k}×(1 − target): 99.5% for 99.9%)"
            ))
        );
        if let Some(n) = c.label_errors_left_out {
            let _ = writeln!(
                s,
                "Left out of the validation digits: {n} whose label a blind review by eye found wrong (`crates/train/data/label-review.csv`, `docs/model/label-review/`).\n"
            );
        }
        let mut head = String::from("| set | ECE before | ECE after |");
        let mut line = String::from("|---|---|---|");
        for (target, th) in c.targets.iter().zip(&c.thresholds) {
            let th = th.map_or("none".to_string(), |t| format!("{t:.4}"));
            head += &format!(
                " {}% kept (t = {th}): coverage / accuracy |",
                target * 100.0
            );
            line += "---|";
        }
        let _ = writeln!(s, "{head}\n{line}");
        for set in &c.sets {
            let mut row = format!(
                "| {} | {:.2}% | {:.2}% |",
                set.set,
                set.ece_before * 100.0,
                set.ece_after * 100.0
            );
            for (cov, acc) in &set.kept {
                row += &format!(" {:.1}% / {:.2}% |", cov * 100.0, acc * 100.0);
            }
            let _ = writeln!(s, "{row}");
        }
        if !c.needs.is_empty() {
            let _ = writeln!(
                s,
                "\nWhat sets each threshold: every validation group alone, the threshold its own bar would need (0: it meets its bar with every answer kept; none: no threshold meets it). The highest need, in bold, sets the threshold; the threshold may sit a little lower, at the next confidence another group has, where it keeps the same answers of that group.\n"
            );
            let mut head = String::from("| validation group |");
            let mut line = String::from("|---|");
            for target in &c.targets {
                head += &format!(" {}% |", target * 100.0);
                line += "---|";
            }
            let _ = writeln!(s, "{head}\n{line}");
            for need in &c.needs {
                let mut row = format!("| {} |", need.group);
                for (i, th) in need.thresholds.iter().enumerate() {
                    let sets =
                        calibrate::set_by(&c.needs, i).is_some_and(|b| b.group == need.group);
                    let th = th.map_or("none".to_string(), |t| format!("{t:.4}"));
                    row += &if sets {
                        format!(" **{th}** |")
                    } else {
                        format!(" {th} |")
                    };
                }
                let _ = writeln!(s, "{row}");
            }
        }
        let _ = writeln!(
            s,
            "\nNot a digit: the share of each set the thresholds above keep from being answered as a digit (refused as blank, or below the threshold). Digit-like letters are reported apart and are not misses.\n"
        );
        let mut head = String::from("| set | images | refused |");
        let mut line = String::from("|---|---|---|");
        for target in &c.targets {
            head += &format!(" caught at {}% |", target * 100.0);
            line += "---|";
        }
        let _ = writeln!(s, "{head}\n{line}");
        for r in &r.nondigit {
            let mut row = format!("| {} | {} | {} |", r.set, r.images, r.refused);
            for c in &r.caught {
                row += &format!(" {:.1}% |", c * 100.0);
            }
            let _ = writeln!(s, "{row}");
        }
    }
    let _ = writeln!(
        s,
        "\n### Per class\n\n| digit | support | precision | recall |\n|---|---|---|---|"
    );
    for c in &r.test.per_class {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            c.digit,
            c.support,
            pct(c.precision),
            pct(c.recall)
        );
    }
    let _ = writeln!(
        s,
        "\n### Epochs\n\n| epoch | aug strength | train loss | train acc | val loss | val acc | img/s | s |\n|---|---|---|---|---|---|---|---|"
    );
    for e in &r.history {
        let _ = writeln!(
            s,
            "| {} | {:.2} | {:.4} | {} | {:.4} | {} | {:.0} | {:.0} |",
            e.epoch,
            e.augment_strength,
            e.train_loss,
            pct(e.train_accuracy),
            e.val_loss,
            pct(e.val_accuracy),
            e.images_per_second,
            e.seconds
        );
    }
    s
}
