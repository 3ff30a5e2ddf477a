//! The training loop: Adam with a one-cycle learning rate, per-epoch
//! validation, best-epoch selection, checkpoints after every epoch so a killed
//! run resumes where it stopped, and a clean stop on Ctrl-C.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use crate::config::TrainArgs;
use crate::data::{Split, image};
use crate::model::Cnn;
use mnister_core::idx::Dataset;
use mnister_core::preprocess::{MnistImage, PIXELS};

/// One epoch's numbers, as they go into report.json.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct EpochStats {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    pub lr_end: f64,
    pub augment_strength: f32,
    pub seconds: f64,
    pub images_per_second: f64,
}

/// What a checkpoint remembers besides the weights.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct FitState {
    pub epochs_done: usize,
    pub history: Vec<EpochStats>,
    pub best_epoch: Option<usize>,
    pub best_val_accuracy: f64,
    /// Seconds of training across every resumed run.
    pub train_seconds: f64,
    /// The flags of the run that wrote the checkpoint.
    pub args: serde_json::Value,
    /// Validation loss and accuracy of the untrained network, the yardstick
    /// for "the loss went down".
    pub initial_val_loss: Option<f64>,
    pub initial_val_accuracy: Option<f64>,
}

pub struct FitOutcome {
    pub state: FitState,
    /// The weights to export, in inference mode: the best epoch's, or a
    /// weighted mean of it and other networks under `--soup`.
    pub best: Cnn,
    /// Validation accuracy of `best` where it is not the best epoch itself
    /// (a `--soup`).
    pub exported_val_accuracy: Option<f64>,
    pub interrupted: bool,
    pub early_stopped: bool,
}

/// LibTorch under `--features tch` (~1.6x; scripts/setup-torch.sh), else pure-Rust flex as in CI.
pub fn device() -> Device {
    // burn 0.22 deprecates burn-tch, yet it is the fastest CPU backend here.
    #[cfg(feature = "tch")]
    #[allow(deprecated)]
    let device = Device::libtorch();
    #[cfg(not(feature = "tch"))]
    let device = Device::flex();
    device
}

/// Learning rate at `step` of `total`: cosine up from lr/25 over the warm-up,
/// then cosine down to lr/25e4 (PyTorch's OneCycleLR shape).
pub fn one_cycle(lr: f64, warmup: f64, step: usize, total: usize) -> f64 {
    let (start, end) = (lr / 25.0, lr / 25.0 / 1e4);
    let warm = ((total as f64) * warmup).max(1.0);
    let t = step as f64;
    let cos = |from: f64, to: f64, frac: f64| {
        to + (from - to) * (1.0 + (std::f64::consts::PI * frac.clamp(0.0, 1.0)).cos()) / 2.0
    };
    if t < warm {
        cos(start, lr, t / warm)
    } else {
        cos(lr, end, (t - warm) / ((total as f64) - warm).max(1.0))
    }
}

struct Paths {
    dir: PathBuf,
}

impl Paths {
    fn model(&self) -> PathBuf {
        self.dir.join("checkpoint/model.bpk")
    }
    fn optim(&self) -> PathBuf {
        self.dir.join("checkpoint/optim.bpk")
    }
    fn state(&self) -> PathBuf {
        self.dir.join("checkpoint/state.json")
    }
    fn best(&self) -> PathBuf {
        self.dir.join("checkpoint/best.bpk")
    }
}

/// Writes through a temporary file so a kill mid-write never leaves a torn
/// checkpoint.
fn atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = path.with_extension("tmp");
    write(&tmp)?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// Model in inference mode with the given weights file.
pub fn load_model(args: &TrainArgs, path: &Path) -> Result<Cnn> {
    let model = Cnn::new(args.arch, args.dropout, &device());
    model
        .try_load_file(path)
        .map_err(|e| anyhow::anyhow!("loading weights from {}: {e:?}", path.display()))
        .map(|m| m.valid())
}

/// `model` with the `--init-from` weights: an exported `.onnx` or a
/// checkpoint `.bpk`.
fn load_init(model: Cnn, from: &Path, device: &Device) -> Result<Cnn> {
    if from.extension().is_some_and(|e| e == "onnx") {
        crate::import::load_onnx(model, from, device)
            .with_context(|| format!("loading --init-from {}", from.display()))
    } else {
        model
            .try_load_file(from)
            .map_err(|e| anyhow::anyhow!("loading --init-from {}: {e:?}", from.display()))
    }
}

/// A network's weights in inference mode, for `--soup`.
fn load_start(args: &TrainArgs, from: &Path) -> Result<Cnn> {
    let dev = device();
    load_init(Cnn::new(args.arch, args.dropout, &dev), from, &dev).map(|m| m.valid())
}

/// Runs the model over images in batches; returns logits, 10 per image.
pub fn logits(model: &Cnn, images: &[MnistImage]) -> Vec<f32> {
    let dev = device();
    let mut out = Vec::with_capacity(images.len() * 10);
    for chunk in images.chunks(500) {
        let flat: Vec<f32> = chunk.iter().flat_map(|i| i.iter().copied()).collect();
        let x = Tensor::<4>::from_data(TensorData::new(flat, [chunk.len(), 1, 28, 28]), &dev);
        let y = model.forward(x).into_data();
        out.extend_from_slice(y.as_slice::<f32>().expect("f32 logits"));
    }
    out
}

/// Softmax of logits, row by row.
pub fn softmax_rows(logits: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(logits.len());
    for row in logits.chunks(10) {
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = row.iter().map(|v| (v - m).exp()).collect();
        let s: f32 = e.iter().sum();
        out.extend(e.iter().map(|v| v / s));
    }
    out
}

pub use mnister_core::backend::argmax;

/// Mean cross-entropy and accuracy of probabilities against labels.
pub fn loss_and_accuracy(probs: &[f32], labels: &[u8]) -> (f64, f64) {
    let mut loss = 0f64;
    let mut right = 0usize;
    for (row, &l) in probs.chunks(10).zip(labels) {
        loss -= f64::from(row[l as usize].max(1e-12)).ln();
        right += usize::from(argmax(row) == l as usize);
    }
    let n = labels.len().max(1) as f64;
    (loss / n, right as f64 / n)
}

fn progress(len: u64, prefix: String) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} img  {per_sec}  ETA {eta}  {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_prefix(prefix);
    pb
}

pub fn fit(args: &TrainArgs, ds: &Dataset, split: &Split, stop: &AtomicBool) -> Result<FitOutcome> {
    let paths = Paths {
        dir: args.out.clone(),
    };
    std::fs::create_dir_all(paths.dir.join("checkpoint"))?;
    let ad = device().autodiff();
    ad.seed(args.seed);
    let mut model = Cnn::new(args.arch, args.dropout, &ad);
    let mut adam = AdamConfig::new();
    if args.weight_decay > 0.0 {
        adam = adam.with_weight_decay(Some(WeightDecayConfig::new(args.weight_decay)));
    }
    let mut optim = adam.init();
    let mut state = FitState {
        args: serde_json::to_value(args)?,
        ..FitState::default()
    };

    if args.resume && paths.state().is_file() {
        let saved: FitState = serde_json::from_slice(&std::fs::read(paths.state())?)
            .with_context(|| format!("reading {}", paths.state().display()))?;
        for key in [
            "arch",
            "batch_size",
            "seed",
            "val_size",
            "train_limit",
            "no_augment",
        ] {
            if saved.args.get(key) != state.args.get(key) {
                bail!(
                    "cannot resume from {}: --{} was {} there and is {} now; use another --out or the same flags",
                    paths.dir.display(),
                    key.replace('_', "-"),
                    saved.args.get(key).unwrap_or(&serde_json::Value::Null),
                    state.args.get(key).unwrap_or(&serde_json::Value::Null)
                );
            }
        }
        model = model
            .try_load_file(paths.model())
            .map_err(|e| anyhow::anyhow!("loading {}: {e:?}", paths.model().display()))?;
        optim = optim
            .load(paths.optim())
            .map_err(|e| anyhow::anyhow!("loading {}: {e:?}", paths.optim().display()))?;
        tracing::info!(
            epochs_done = saved.epochs_done,
            best_epoch = ?saved.best_epoch,
            "resumed from {}",
            paths.dir.display()
        );
        state = FitState {
            args: state.args,
            ..saved
        };
    }

    if let Some(from) = args.init_from.as_ref().filter(|_| state.epochs_done == 0) {
        model = load_init(model, from, &ad)?;
        tracing::info!("starting from the weights in {}", from.display());
    }

    let train_idx = &split.train;
    let val_images: Vec<MnistImage> = split.val.iter().map(|&i| image(ds, i)).collect();
    let val_labels: Vec<u8> = split.val.iter().map(|&i| ds.labels[i]).collect();
    let augment = args.augment();
    let field = args.field_augment();
    let outliers = args.outliers().map_err(anyhow::Error::msg)?;
    let steps_per_epoch = train_idx.len().div_ceil(args.batch_size);
    let total_steps = steps_per_epoch * args.epochs;
    let loss_fn = CrossEntropyLossConfig::new()
        .with_smoothing((args.label_smoothing > 0.0).then_some(args.label_smoothing))
        .init(&ad);

    if state.epochs_done == 0 {
        let (loss, acc) = loss_and_accuracy(
            &softmax_rows(&logits(&model.valid(), &val_images)),
            &val_labels,
        );
        state.initial_val_loss = Some(loss);
        state.initial_val_accuracy = Some(acc);
    }

    let mut interrupted = false;
    let mut early_stopped = false;
    let first_epoch = state.epochs_done;
    for epoch in state.epochs_done..args.epochs {
        if args.stop_after.is_some_and(|n| epoch >= first_epoch + n) {
            tracing::info!(
                "stopping after {} epochs as asked; continue with --resume",
                epoch - first_epoch
            );
            interrupted = true;
            break;
        }
        if stop.load(Ordering::SeqCst) {
            interrupted = true;
            break;
        }
        // Everything random in an epoch derives from (seed, epoch), so a
        // resumed run repeats exactly what an uninterrupted one would do.
        let mut rng =
            StdRng::seed_from_u64(args.seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64));
        ad.seed(args.seed.wrapping_add(epoch as u64 * 7919));
        let mut order = train_idx.clone();
        order.shuffle(&mut rng);
        let strength = args.augment_strength(epoch);
        let shift_strength = args.augment_shift_strength(epoch);
        let pb = progress(
            order.len() as u64,
            format!("epoch {}/{}", epoch + 1, args.epochs),
        );
        let started = Instant::now();
        let (mut loss_sum, mut right, mut seen) = (0f64, 0usize, 0usize);
        let mut lr = args.lr;
        for (b, batch) in order.chunks(args.batch_size).enumerate() {
            if stop.load(Ordering::SeqCst) {
                interrupted = true;
                break;
            }
            // One seed per image (and per outlier), drawn in order from the
            // epoch's generator; the images are then prepared on every core
            // and come out the same whatever the thread count. Preparing
            // them one by one cost ~11% of a LibTorch epoch.
            let n = batch.len();
            let want = outliers.map_or(0, |oe| (n as f32 * oe.share).round() as usize);
            let seeds: Vec<u64> = (0..n + want).map(|_| rng.random()).collect();
            let digits: Vec<MnistImage> = batch
                .par_iter()
                .zip(&seeds[..n])
                .map(|(&i, &seed)| {
                    let mut r = StdRng::seed_from_u64(seed);
                    let img = image(ds, i);
                    let img = match augment {
                        Some(cfg)
                            if strength.max(shift_strength) > 0.0
                                && r.random::<f32>() < args.augment_prob =>
                        {
                            cfg.sample_with_shift(&mut r, strength, shift_strength)
                                .warp(&img, cfg.fill)
                        }
                        _ => img,
                    };
                    // Then, for a share of them, the field: degraded and
                    // sent through the serving preprocessing, or a stroke
                    // width.
                    match field {
                        Some(f) => f.apply(&img, &mut r),
                        None => img,
                    }
                })
                .collect();
            // Outliers after the digits, when outlier exposure is on.
            let extra: Vec<MnistImage> = match outliers {
                Some(oe) => seeds[n..]
                    .par_iter()
                    .filter_map(|&seed| {
                        let mut r = StdRng::seed_from_u64(seed);
                        let pick = |r: &mut dyn rand::RngCore| {
                            image(ds, train_idx[r.random_range(0..train_idx.len())])
                        };
                        oe.render(&mut r, pick)
                    })
                    .collect(),
                None => Vec::new(),
            };
            let m = extra.len();
            let mut flat = Vec::with_capacity((n + m) * PIXELS);
            for img in digits.iter().chain(&extra) {
                flat.extend_from_slice(img);
            }
            let labels: Vec<i64> = batch.iter().map(|&i| i64::from(ds.labels[i])).collect();
            let x = Tensor::<4>::from_data(TensorData::new(flat, [n + m, 1, 28, 28]), &ad);
            let y = Tensor::<1, Int>::from_data(TensorData::new(labels.clone(), [n]), &ad);
            let all = model.forward(x);
            let out = if m > 0 {
                all.clone().slice([0..n, 0..10])
            } else {
                all.clone()
            };
            let mut loss = loss_fn.forward(out.clone(), y);
            if let (Some(oe), true) = (outliers, m > 0) {
                // Cross-entropy against the uniform distribution, up to a
                // constant: the mean of -log p over outliers and classes.
                let o = all.slice([n..n + m, 0..10]);
                let uniform = burn::tensor::activation::log_softmax(o, 1).mean().neg();
                loss = loss + uniform.mul_scalar(oe.weight);
            }
            let loss_value = f64::from(
                loss.clone()
                    .into_data()
                    .as_slice::<f32>()
                    .expect("f32 loss")[0],
            );
            let logits = out.into_data();
            let logits = logits.as_slice::<f32>().expect("f32 logits");
            right += logits
                .chunks(10)
                .zip(&labels)
                .filter(|(row, l)| argmax(row) == **l as usize)
                .count();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            lr = one_cycle(
                args.lr,
                args.warmup,
                epoch * steps_per_epoch + b,
                total_steps,
            );
            model = optim.step(lr, model, grads);
            loss_sum += loss_value * batch.len() as f64;
            seen += batch.len();
            pb.set_position(seen as u64);
            pb.set_message(format!(
                "loss {:.4} acc {:.4}",
                loss_sum / seen as f64,
                right as f64 / seen as f64
            ));
        }
        pb.finish_and_clear();
        if interrupted {
            tracing::warn!(
                "interrupted in epoch {}; its partial work is discarded",
                epoch + 1
            );
            break;
        }
        let seconds = started.elapsed().as_secs_f64();
        let valid = model.valid();
        let (val_loss, val_acc) =
            loss_and_accuracy(&softmax_rows(&logits(&valid, &val_images)), &val_labels);
        let stats = EpochStats {
            epoch: epoch + 1,
            train_loss: loss_sum / seen as f64,
            train_accuracy: right as f64 / seen as f64,
            val_loss,
            val_accuracy: val_acc,
            lr_end: lr,
            augment_strength: strength,
            seconds,
            images_per_second: seen as f64 / seconds,
        };
        eprintln!(
            "epoch {:>2}/{}  train loss {:.4} acc {:.4}  val loss {:.4} acc {:.4}  aug {:.2}  {:.0} img/s  {:.0}s",
            stats.epoch,
            args.epochs,
            stats.train_loss,
            stats.train_accuracy,
            stats.val_loss,
            stats.val_accuracy,
            strength,
            stats.images_per_second,
            seconds
        );
        state.train_seconds += seconds;
        state.history.push(stats);
        state.epochs_done = epoch + 1;
        if state.best_epoch.is_none() || val_acc > state.best_val_accuracy {
            state.best_epoch = Some(epoch + 1);
            state.best_val_accuracy = val_acc;
            atomically(&paths.best(), |p| {
                valid
                    .clone()
                    .save_file(p)
                    .map_err(|e| anyhow::anyhow!("{e:?}"))
            })?;
        }
        atomically(&paths.model(), |p| {
            model
                .clone()
                .save_file(p)
                .map_err(|e| anyhow::anyhow!("{e:?}"))
        })?;
        atomically(&paths.optim(), |p| {
            optim.save(p).map_err(|e| anyhow::anyhow!("{e:?}"))
        })?;
        atomically(&paths.state(), |p| {
            Ok(std::fs::write(p, serde_json::to_vec_pretty(&state)?)?)
        })?;
        if args.patience > 0
            && let Some(best) = state.best_epoch
            && epoch + 1 - best >= args.patience
        {
            tracing::info!(
                "no better validation accuracy for {} epochs; stopping early",
                args.patience
            );
            early_stopped = true;
            break;
        }
    }

    let best = if paths.best().is_file() {
        load_model(args, &paths.best())?
    } else {
        // Stopped before the first epoch finished: the current weights are
        // all there is.
        model.valid()
    };
    let mut exported_val_accuracy = None;
    let best = if args.soup.is_empty() {
        best
    } else {
        let best_weight = 1.0 - args.soup.iter().map(|p| p.weight).sum::<f32>();
        // A running weighted mean: after each ingredient `acc` is the mean
        // of those so far, weighted; the last step leaves the whole soup.
        let (mut acc, mut total) = (best, best_weight.max(0.0));
        for part in &args.soup {
            let next = total + part.weight;
            if next > 0.0 {
                let m = load_start(args, &part.path)?;
                acc = crate::import::interpolate(acc, &m, part.weight / next)?;
            }
            total = next;
        }
        let (_, acc_val) =
            loss_and_accuracy(&softmax_rows(&logits(&acc, &val_images)), &val_labels);
        eprintln!(
            "exporting the soup ({best_weight:.2} x best epoch{}): val acc {acc_val:.4} (best epoch alone {:.4})",
            args.soup
                .iter()
                .map(|p| format!(" + {:.2} x {}", p.weight, p.path.display()))
                .collect::<String>(),
            state.best_val_accuracy
        );
        exported_val_accuracy = Some(acc_val);
        acc
    };
    Ok(FitOutcome {
        state,
        best,
        exported_val_accuracy,
        interrupted,
        early_stopped,
    })
}
