//! `mnister-train ensemble`: one ONNX model from several trained ones, their
//! logits averaged before one softmax.
//!
//! Why: separate runs of this network land at 99.49–99.62% on MNIST test and
//! trade clean accuracy against shift and field rows from run to run, while
//! weight averages of separate runs fall into the barrier between their
//! basins (docs/model/retrain-run/). Averaging their *outputs* has no such
//! barrier, and it ranks answers better, which is what a reject threshold
//! needs. The price is inference: N networks per image.
//!
//! Each member's graph is copied in whole under a prefix, its softmax
//! dropped; its logits (already divided by its own temperature) are scaled
//! by weight/T and summed, and one softmax follows. The ensemble then goes
//! through the trainer's own report stage (`run::finish`): the temperature T
//! and the reject thresholds are fitted on the validation split every
//! member held out, and the int8 twin is quantized from the merged graph.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use prost::Message;
use sha2::{Digest, Sha256};

use crate::evaluate::{self, Parity};
use crate::export::{INPUT, IR_VERSION, OPSET, OUTPUT};
use crate::fit::{argmax, softmax_rows};
use crate::graph::{f32_tensor, int, node, value_info};
use crate::onnx::{GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto};
use crate::run::{self, Report, Stage};
use crate::{data, evaluate::test_metrics};
use mnister_core::backend::ort::{init_runtime, open_model};
use mnister_core::idx::{Split, load_mnist};
use mnister_core::preprocess::MnistImage;

#[derive(Debug, Clone, clap::Parser, serde::Serialize)]
#[command(
    name = "mnister-train ensemble",
    about = "Merges trained ONNX models into one (mean of their logits), then calibrates and reports it like a training run"
)]
pub struct EnsembleArgs {
    /// fp32 ONNX files written by mnister-train, each holding out the same
    /// validation split (the same --seed and --val-size).
    #[arg(required = true, num_args = 2..)]
    pub members: Vec<PathBuf>,

    /// Folder for model.onnx, report.json, report.md and the plots.
    #[arg(long, env = "MNISTER_ENSEMBLE_OUT")]
    pub out: PathBuf,

    /// Each member's share of the averaged logits, in member order
    /// (normalised to sum to 1). Default: equal shares.
    #[arg(long, value_delimiter = ',')]
    pub weights: Vec<f32>,

    /// Folder with the MNIST IDX files (plain or .gz). Never downloaded.
    #[arg(long, env = "MNIST_DIR", default_value = "data/mnist")]
    pub data_dir: PathBuf,

    /// Gate the answer by one member's entropy (its 1-based position in the
    /// member list; a member trained with outlier exposure): where that
    /// member is flat, the answer is mixed towards the uniform distribution,
    /// so a non-digit gets a low confidence even when the other members are
    /// sure of it. A log-linear pool cannot do that: a flat member adds the
    /// same constant to every class.
    #[arg(long)]
    pub gate: Option<usize>,

    /// Share of the clean validation digits the gate lets through: it is
    /// half open at their `gate_keep` quantile of the gate member's entropy.
    #[arg(long, default_value_t = 0.999)]
    pub gate_keep: f64,

    /// How sharply the gate closes, per nat of entropy.
    #[arg(long, default_value_t = 8.0)]
    pub gate_steepness: f32,

    /// Also write an int8 twin (model.int8.onnx), as the trainer's --int8.
    #[arg(long)]
    pub int8: bool,

    /// Also copy the final model (and the int8 twin) to this path.
    #[arg(long)]
    pub export: Option<PathBuf>,

    /// Only the first N test images (smoke runs).
    #[arg(long)]
    pub test_limit: Option<usize>,

    #[arg(long, env = "MNISTER_ORT_LIB")]
    pub ort_lib: Option<PathBuf>,
}

/// A member as the merge needs it.
#[derive(Debug, Clone)]
pub struct Member {
    pub path: PathBuf,
    pub proto: ModelProto,
    pub version: String,
    pub sha256: String,
    /// The tensor its softmax reads: its (temperature-scaled) logits.
    logits: String,
}

impl Member {
    fn meta(&self, key: &str) -> Option<&str> {
        self.proto
            .metadata_props
            .iter()
            .find(|p| p.key == key)
            .map(|p| p.value.as_str())
    }
}

/// Reads and checks one member: an fp32 mnister model with one image input,
/// ten probabilities out, and a softmax as its last step.
pub fn load_member(path: &Path) -> Result<Member> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let proto = ModelProto::decode(&bytes[..])
        .with_context(|| format!("{} is not an ONNX model", path.display()))?;
    let m = member_from(path, proto)?;
    Ok(Member {
        sha256: hex::encode(Sha256::digest(&bytes)),
        ..m
    })
}

fn member_from(path: &Path, proto: ModelProto) -> Result<Member> {
    let p = path.display();
    let g = proto
        .graph
        .as_ref()
        .with_context(|| format!("{p} has no graph"))?;
    ensure!(
        g.input.len() == 1 && g.input[0].name == INPUT,
        "{p}: expected one input named {INPUT:?} (a model written by mnister-train)"
    );
    ensure!(
        g.output.len() == 1 && g.output[0].name == OUTPUT,
        "{p}: expected one output named {OUTPUT:?} (a model written by mnister-train)"
    );
    let last = g
        .node
        .last()
        .filter(|n| n.op_type == "Softmax" && n.output.first().map(String::as_str) == Some(OUTPUT))
        .with_context(|| format!("{p}: its last node is not the softmax that writes {OUTPUT:?}"))?;
    if g.node.iter().any(|n| {
        matches!(
            n.op_type.as_str(),
            "QuantizeLinear" | "DequantizeLinear" | "QLinearConv" | "QGemm"
        )
    }) {
        bail!("{p} is quantized: merge the fp32 models and quantize the ensemble (--int8)");
    }
    let member = Member {
        path: path.to_path_buf(),
        version: String::new(),
        sha256: String::new(),
        logits: last.input[0].clone(),
        proto,
    };
    let version = member.meta("version").unwrap_or("unversioned").to_string();
    Ok(Member { version, ..member })
}

/// The members' held-out split, (seed, size): they must agree, or the
/// calibration set would hold images some member trained on.
pub fn common_split(members: &[Member]) -> Result<(u64, usize)> {
    let split = |m: &Member| -> Result<(u64, usize)> {
        let get = |k: &str| {
            m.meta(k).with_context(|| {
                format!(
                    "{}: no {k:?} in its metadata, so its validation split is unknown",
                    m.path.display()
                )
            })
        };
        // A run with --split-seed records it; before that flag, --seed
        // picked the split.
        let seed = match m.meta("train.split_seed") {
            Some(s) if s != "null" => s,
            _ => get("train.seed")?,
        };
        Ok((
            seed.parse().context("train.seed")?,
            get("train.val_size")?.parse().context("train.val_size")?,
        ))
    };
    let first = split(&members[0])?;
    for m in &members[1..] {
        let s = split(m)?;
        ensure!(
            s == first,
            "{} held out validation split (seed {}, {} images) but {} held out (seed {}, {} images): \
             members must share one, or the calibration set would hold images a member trained on",
            members[0].path.display(),
            first.0,
            first.1,
            m.path.display(),
            s.0,
            s.1
        );
    }
    Ok(first)
}

/// Shares that sum to 1: equal when `weights` is empty.
pub fn shares(weights: &[f32], n: usize) -> Result<Vec<f32>> {
    if weights.is_empty() {
        return Ok(vec![1.0 / n as f32; n]);
    }
    ensure!(
        weights.len() == n,
        "--weights has {} values for {n} members; give one per member, in member order",
        weights.len()
    );
    ensure!(
        weights.iter().all(|w| w.is_finite() && *w > 0.0),
        "--weights must be positive numbers, got {weights:?}"
    );
    let sum: f32 = weights.iter().sum();
    Ok(weights.iter().map(|w| w / sum).collect())
}

/// The not-a-digit gate (`--gate`): the answer becomes
/// `open · p + (1 − open) / 10`, with `open = sigmoid(steepness · (entropy −
/// H))` and H the gate member's entropy. The argmax never changes; only
/// how sure the answer is.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Gate {
    /// Index into the members (0-based).
    pub member: usize,
    /// The entropy, in nats, at which the gate is half open.
    pub entropy: f32,
    /// Per nat.
    pub steepness: f32,
}

impl Gate {
    /// How open the gate is for a gate-member answer `q`.
    pub fn open(&self, q: &[f32]) -> f32 {
        let h: f32 = -q.iter().map(|&v| v * v.max(1e-30).ln()).sum::<f32>();
        1.0 / (1.0 + (-self.steepness * (self.entropy - h)).exp())
    }

    /// `p` mixed towards uniform by `open`.
    pub fn apply(open: f32, p: &mut [f32]) {
        for v in p {
            *v = open * (*v - 0.1) + 0.1;
        }
    }
}

/// The entropy at which the gate is half open: the `keep` quantile of the
/// gate member's entropy over `probs` (clean validation digits).
pub fn gate_entropy(probs: &[f32], keep: f64) -> Result<f32> {
    ensure!(
        (0.5..1.0).contains(&keep),
        "--gate-keep must be in [0.5, 1), the share of clean digits the gate lets through; got {keep}"
    );
    let mut h: Vec<f32> = probs
        .chunks_exact(10)
        .map(|q| -q.iter().map(|&v| v * v.max(1e-30).ln()).sum::<f32>())
        .collect();
    ensure!(!h.is_empty(), "no validation digits to place the gate on");
    h.sort_by(f32::total_cmp);
    let i = ((keep * h.len() as f64).ceil() as usize).clamp(1, h.len()) - 1;
    Ok(h[i])
}

/// The merged graph: every member under the prefix `m{i}/`, its logits
/// times `share / temperature`, summed, one softmax. With a gate, the
/// temperature moves after it: logits times share, softmax, the gate's mix,
/// then log / temperature and a last softmax, so that the served answer is
/// what the report's calibration computed (`calibrate::with_temperature`).
pub fn merge(
    members: &[Member],
    shares: &[f32],
    temperature: f32,
    metadata: &BTreeMap<String, String>,
    gate: Option<&Gate>,
) -> ModelProto {
    let scale = if gate.is_some() { 1.0 } else { temperature };
    let mut nodes: Vec<NodeProto> = Vec::new();
    let mut inits = Vec::new();
    let mut scaled = Vec::new();
    for (i, (m, share)) in members.iter().zip(shares).enumerate() {
        let g = m.proto.graph.as_ref().expect("checked by load_member");
        let name = |t: &str| {
            if t == INPUT || t.is_empty() {
                t.to_string()
            } else {
                format!("m{i}/{t}")
            }
        };
        inits.extend(g.initializer.iter().map(|t| {
            let mut t = t.clone();
            t.name = name(&t.name);
            t
        }));
        nodes.extend(g.node[..g.node.len() - 1].iter().map(|n| {
            let mut n = n.clone();
            n.name = name(&n.name);
            n.input = n.input.iter().map(|t| name(t)).collect();
            n.output = n.output.iter().map(|t| name(t)).collect();
            n
        }));
        let (k, out) = (format!("m{i}/share"), format!("m{i}/scaled"));
        inits.push(f32_tensor(&k, &[], &[share / scale]));
        nodes.push(node("Mul", &out, &[&name(&m.logits), &k], &out, vec![]));
        scaled.push(out);
    }
    let refs: Vec<&str> = scaled.iter().map(String::as_str).collect();
    nodes.push(node("Sum", "logits", &refs, "logits", vec![]));
    if let Some(g) = gate {
        gate_nodes(
            &mut nodes,
            &mut inits,
            g,
            &format!("m{}/{}", g.member, members[g.member].logits),
            temperature,
        );
    } else {
        nodes.push(node(
            "Softmax",
            "softmax",
            &["logits"],
            OUTPUT,
            vec![int("axis", 1)],
        ));
    }
    ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "mnister-train".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: format!(
            "Handwritten digit classifier: an ensemble of {} networks, their logits averaged. \
             Input: float32 [N,1,28,28], MNIST form (white ink on black, 0..1, digit centred by mass). \
             Output: float32 [N,10] softmax probabilities.",
            members.len()
        ),
        graph: Some(GraphProto {
            name: "mnist_cnn_ensemble".into(),
            node: nodes,
            initializer: inits,
            input: vec![value_info(INPUT, &[None, Some(1), Some(28), Some(28)])],
            output: vec![value_info(OUTPUT, &[None, Some(10)])],
            ..Default::default()
        }),
        metadata_props: metadata
            .iter()
            .map(|(k, v)| StringStringEntryProto {
                key: k.clone(),
                value: v.clone(),
            })
            .collect(),
        ..Default::default()
    }
}

/// The gate's nodes after the summed `logits`: the pooled softmax, the
/// gate member's entropy from its own `gate_logits`, the mix towards
/// uniform, then log / temperature and the output softmax.
fn gate_nodes(
    nodes: &mut Vec<NodeProto>,
    inits: &mut Vec<crate::onnx::TensorProto>,
    g: &Gate,
    gate_logits: &str,
    temperature: f32,
) {
    let c = |inits: &mut Vec<crate::onnx::TensorProto>, name: &str, v: f32| {
        inits.push(f32_tensor(name, &[], &[v]));
    };
    c(inits, "gate/steepness", g.steepness);
    c(inits, "gate/offset", g.steepness * g.entropy);
    c(inits, "gate/uniform", 0.1);
    c(inits, "gate/floor", 1e-30);
    c(inits, "gate/inv_temperature", 1.0 / temperature);
    inits.push(crate::graph::raw_tensor(
        "gate/axes",
        &[1],
        crate::onnx::tensor_proto::DataType::Int64,
        1i64.to_le_bytes().to_vec(),
    ));
    let axis = || vec![int("axis", 1)];
    let mut n =
        |op: &str, out: &str, ins: &[&str], attrs| nodes.push(node(op, out, ins, out, attrs));
    n("Softmax", "pooled", &["logits"], axis());
    n("Softmax", "gate/q", &[gate_logits], axis());
    n("LogSoftmax", "gate/log_q", &[gate_logits], axis());
    n("Mul", "gate/q_log_q", &["gate/q", "gate/log_q"], vec![]);
    // Sum of q log q: minus the entropy, one per image ([N,1]).
    n(
        "ReduceSum",
        "gate/neg_entropy",
        &["gate/q_log_q", "gate/axes"],
        vec![int("keepdims", 1)],
    );
    n(
        "Mul",
        "gate/k_neg_entropy",
        &["gate/neg_entropy", "gate/steepness"],
        vec![],
    );
    n(
        "Add",
        "gate/z",
        &["gate/k_neg_entropy", "gate/offset"],
        vec![],
    );
    n("Sigmoid", "gate/open", &["gate/z"], vec![]);
    n("Sub", "gate/centred", &["pooled", "gate/uniform"], vec![]);
    n("Mul", "gate/shrunk", &["gate/centred", "gate/open"], vec![]);
    n("Add", "gated", &["gate/shrunk", "gate/uniform"], vec![]);
    n("Max", "gated_floor", &["gated", "gate/floor"], vec![]);
    n("Log", "log_gated", &["gated_floor"], vec![]);
    n(
        "Mul",
        "calibrated",
        &["log_gated", "gate/inv_temperature"],
        vec![],
    );
    nodes.push(node("Softmax", "softmax", &["calibrated"], OUTPUT, axis()));
}

/// The ensemble's probabilities computed apart from its graph: each member
/// through ONNX Runtime on its own, log-probabilities mixed by share, one
/// softmax. The merged graph must agree (the report's parity row).
fn reference_probs(
    env: &'static ort::environment::Environment,
    members: &[Member],
    shares: &[f32],
    gate: Option<&Gate>,
    images: &[MnistImage],
) -> Result<Vec<f32>> {
    let mut mixed = vec![0f32; images.len() * 10];
    let mut gate_probs = Vec::new();
    for (i, (m, share)) in members.iter().zip(shares).enumerate() {
        let (_, mut b) = open_model(env, &m.path, m.proto.encode_to_vec(), 2)?;
        let probs = evaluate::predict(&mut b, images)?;
        for (acc, p) in mixed.iter_mut().zip(&probs) {
            // Log-probabilities differ from logits by one constant per image,
            // which the softmax drops because the shares sum to 1.
            *acc += share * p.max(f32::MIN_POSITIVE).ln();
        }
        if gate.is_some_and(|g| g.member == i) {
            gate_probs = probs;
        }
    }
    let mut out = softmax_rows(&mixed);
    if let Some(g) = gate {
        for (p, q) in out.chunks_exact_mut(10).zip(gate_probs.chunks_exact(10)) {
            Gate::apply(g.open(q), p);
        }
    }
    Ok(out)
}

pub fn run(args: &EnsembleArgs) -> Result<Report> {
    let started = Instant::now();
    let members: Vec<Member> = args
        .members
        .iter()
        .map(|p| load_member(p))
        .collect::<Result<_>>()?;
    let shares = shares(&args.weights, members.len())?;
    let (split_seed, val_size) = common_split(&members)?;
    if let Some(k) = args.gate {
        ensure!(
            (1..=members.len()).contains(&k),
            "--gate {k}: give the gate member's position in the member list, 1 to {}",
            members.len()
        );
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let env = init_runtime(args.ort_lib.as_deref())?;

    let train = load_mnist(&args.data_dir, Split::Train)?;
    let split = data::stratified_split(&train.labels, val_size, split_seed);
    let test = load_mnist(&args.data_dir, Split::Test)?;
    let n_test = args.test_limit.unwrap_or(test.len()).min(test.len());
    let test_images: Vec<MnistImage> = (0..n_test).map(|i| data::image(&test, i)).collect();
    let test_labels = &test.labels[..n_test];

    // Clean validation accuracy, as a training run reports its best epoch's.
    let val_images: Vec<MnistImage> = split.val.iter().map(|&i| data::image(&train, i)).collect();
    let val_labels: Vec<u8> = split.val.iter().map(|&i| train.labels[i]).collect();
    // The gate is placed on the clean validation digits the calibration
    // uses (reviewed label errors left out).
    let gate = match args.gate {
        Some(k) => {
            let (clean, _) = crate::label_review::without_mislabeled(&split.val);
            let images: Vec<MnistImage> = clean.iter().map(|&i| data::image(&train, i)).collect();
            let m = &members[k - 1];
            let (_, mut b) = open_model(env, &m.path, m.proto.encode_to_vec(), 2)?;
            let g = Gate {
                member: k - 1,
                entropy: gate_entropy(&evaluate::predict(&mut b, &images)?, args.gate_keep)?,
                steepness: args.gate_steepness,
            };
            tracing::info!(member = k, entropy = g.entropy, "gate placed");
            Some(g)
        }
        None => None,
    };
    let (_, mut b) = open_model(
        env,
        &args.out.join("model.onnx"),
        merge(&members, &shares, 1.0, &BTreeMap::new(), gate.as_ref()).encode_to_vec(),
        2,
    )?;
    let val_probs = evaluate::predict(&mut b, &val_images)?;
    let val_accuracy = val_probs
        .chunks_exact(10)
        .zip(&val_labels)
        .filter(|(p, l)| argmax(p) == **l as usize)
        .count() as f64
        / val_labels.len().max(1) as f64;
    drop(b);

    let architecture = {
        let archs: Vec<&str> = members
            .iter()
            .map(|m| m.meta("architecture").unwrap_or("unknown"))
            .collect();
        format!("ensemble of {} ({})", members.len(), archs.join(" + "))
    };
    let parameters = members
        .iter()
        .map(|m| {
            m.meta("parameters")
                .and_then(|p| p.parse::<usize>().ok())
                .unwrap_or(0)
        })
        .sum();
    let mut report = Report {
        model: "mnist-cnn".into(),
        version: String::new(),
        architecture,
        parameters,
        args: serde_json::json!({
            "members": members.iter().zip(&shares).map(|(m, s)| serde_json::json!({
                "path": m.path.display().to_string(),
                "version": m.version,
                "sha256": m.sha256,
                "share": s,
            })).collect::<Vec<_>>(),
            "seed": split_seed,
            "split_seed": split_seed,
            "val_size": val_size,
        }),
        git_commit: run::git_commit(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        dataset: run::dataset_checksums(&train, &test),
        train_images: train.len() - split.val.len(),
        val_images: split.val.len(),
        epochs_trained: 0,
        best_epoch: None,
        interrupted: false,
        early_stopped: false,
        train_seconds: 0.0,
        train_images_per_second: 0.0,
        initial_val_loss: None,
        history: Vec::new(),
        val_accuracy,
        test: test_metrics(&[], &[]),
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
    if let (Some(g), Some(a)) = (gate, report.args.as_object_mut()) {
        a.insert(
            "gate".into(),
            serde_json::json!({
                "member": g.member + 1,
                "entropy": g.entropy,
                "steepness": g.steepness,
                "keep": args.gate_keep,
            }),
        );
    }
    let stage = Stage {
        out: &args.out,
        data_dir: &args.data_dir,
        export: args.export.as_deref(),
        int8: args.int8,
        split_seed,
        val_size,
        test_limit: args.test_limit,
        ort_lib: args.ort_lib.as_deref(),
        version_prefix: "ensemble",
    };
    let parity = |probs: &[f32], images: &[MnistImage]| -> Parity {
        match reference_probs(env, &members, &shares, gate.as_ref(), images) {
            Ok(reference) => evaluate::compare(&reference, probs),
            Err(e) => {
                tracing::warn!(error = %e, "parity: a member could not be run on its own");
                Parity {
                    images: 0,
                    max_abs_diff: f32::NAN,
                    argmax_agreement: 0.0,
                }
            }
        }
    };
    run::finish(
        &stage,
        env,
        &train,
        &split.val,
        &test_images,
        test_labels,
        &mut report,
        &|meta, t| merge(&members, &shares, t, meta, gate.as_ref()).encode_to_vec(),
        &parity,
    )?;
    report.wall_seconds = started.elapsed().as_secs_f64();
    run::write_report(&args.out, &report)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_equal_by_default_and_normalised_otherwise() {
        assert_eq!(shares(&[], 4).unwrap(), vec![0.25; 4]);
        assert_eq!(shares(&[1.0, 3.0], 2).unwrap(), vec![0.25, 0.75]);
        let e = shares(&[1.0], 2).unwrap_err().to_string();
        assert!(e.contains("1 values for 2 members"), "{e}");
        for bad in [[1.0, 0.0], [1.0, -1.0], [1.0, f32::NAN]] {
            assert!(shares(&bad, 2).is_err(), "{bad:?}");
        }
    }

    fn tiny(meta: &[(&str, &str)]) -> Member {
        let model =
            crate::model::Cnn::new(crate::model::Arch::Reference, 0.0, &crate::fit::device());
        let meta: BTreeMap<String, String> = meta
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        member_from(Path::new("m.onnx"), crate::export::to_onnx(&model, &meta)).unwrap()
    }

    #[test]
    fn the_merge_keeps_every_member_apart_and_ends_in_one_softmax() {
        let m = [tiny(&[]), tiny(&[])];
        let g = merge(&m, &[0.5, 0.5], 2.0, &BTreeMap::new(), None)
            .graph
            .unwrap();
        let one = m[0].proto.graph.as_ref().unwrap();
        // Every member node but its softmax, a Mul per member, Sum, Softmax.
        assert_eq!(g.node.len(), 2 * (one.node.len() - 1) + 2 + 2);
        assert_eq!(g.initializer.len(), 2 * one.initializer.len() + 2);
        let mut outputs: Vec<&str> = g
            .node
            .iter()
            .flat_map(|n| &n.output)
            .map(String::as_str)
            .collect();
        let n = outputs.len();
        outputs.sort();
        outputs.dedup();
        assert_eq!(outputs.len(), n, "every tensor is written once");
        assert!(
            g.node
                .iter()
                .filter(|n| n.op_type == "Conv")
                .all(|n| n.input[1].starts_with("m0/") || n.input[1].starts_with("m1/"))
        );
        // Both members read the one image input.
        assert_eq!(
            g.node
                .iter()
                .filter(|n| n.input.iter().any(|i| i == INPUT))
                .count(),
            2
        );
        let share = g.initializer.iter().find(|t| t.name == "m1/share").unwrap();
        assert_eq!(crate::graph::floats(share).unwrap(), vec![0.25]);
        assert_eq!(g.node.last().unwrap().op_type, "Softmax");
    }

    #[test]
    fn the_gate_opens_for_sure_answers_and_closes_on_flat_ones() {
        let g = Gate {
            member: 0,
            entropy: 1.0,
            steepness: 8.0,
        };
        let sure = [
            0.991, 0.001, 0.001, 0.001, 0.001, 0.001, 0.001, 0.001, 0.001, 0.001,
        ];
        assert!(g.open(&sure) > 0.99);
        assert!(
            g.open(&[0.1; 10]) < 0.001,
            "uniform: entropy ln 10 = 2.3 nats"
        );
        let mut p = [0.0, 0.9, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        Gate::apply(0.5, &mut p);
        assert!(
            (p.iter().sum::<f32>() - 1.0).abs() < 1e-6,
            "still a distribution"
        );
        assert!((p[1] - 0.5).abs() < 1e-6 && (p[0] - 0.05).abs() < 1e-6);
        // The half-open entropy is the keep quantile of the digits' entropies.
        let probs: Vec<f32> = (0..100)
            .flat_map(|i| {
                let top = 1.0 - i as f32 / 200.0;
                let mut q = [(1.0 - top) / 9.0; 10];
                q[0] = top;
                q
            })
            .collect();
        let h90 = gate_entropy(&probs, 0.9).unwrap();
        let h50 = gate_entropy(&probs, 0.5).unwrap();
        assert!(h50 < h90 && h90 < 10f32.ln(), "{h50} {h90}");
        for bad in [0.2, 1.0, f64::NAN] {
            assert!(gate_entropy(&probs, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_gated_merge_moves_the_temperature_after_the_gate() {
        let m = [tiny(&[]), tiny(&[])];
        let gate = Gate {
            member: 1,
            entropy: 0.7,
            steepness: 8.0,
        };
        let g = merge(&m, &[0.5, 0.5], 2.0, &BTreeMap::new(), Some(&gate))
            .graph
            .unwrap();
        let share = g.initializer.iter().find(|t| t.name == "m1/share").unwrap();
        assert_eq!(
            crate::graph::floats(share).unwrap(),
            vec![0.5],
            "no T inside"
        );
        let inv_t = g
            .initializer
            .iter()
            .find(|t| t.name == "gate/inv_temperature")
            .unwrap();
        assert_eq!(crate::graph::floats(inv_t).unwrap(), vec![0.5]);
        // The gate reads member 1's logits, and the output is one softmax.
        let q = g.node.iter().find(|n| n.output[0] == "gate/q").unwrap();
        assert!(q.input[0].starts_with("m1/"), "{:?}", q.input);
        let last = g.node.last().unwrap();
        assert_eq!(
            (last.op_type.as_str(), last.output[0].as_str()),
            ("Softmax", OUTPUT)
        );
        let mut outputs: Vec<&str> = g
            .node
            .iter()
            .flat_map(|n| &n.output)
            .map(String::as_str)
            .collect();
        let n = outputs.len();
        outputs.sort();
        outputs.dedup();
        assert_eq!(outputs.len(), n, "every tensor is written once");
    }

    #[test]
    fn members_name_their_split_or_are_refused() {
        let with = |seed: &str, size: &str| tiny(&[("train.seed", seed), ("train.val_size", size)]);
        assert_eq!(
            common_split(&[with("42", "12000"), with("42", "12000")]).unwrap(),
            (42, 12000)
        );
        let e = common_split(&[with("42", "12000"), with("7", "12000")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("members must share one"), "{e}");
        // A member trained with its own --seed but --split-seed 42 holds
        // out the same images.
        let own_seed = tiny(&[
            ("train.seed", "7"),
            ("train.split_seed", "42"),
            ("train.val_size", "12000"),
        ]);
        assert_eq!(
            common_split(&[with("42", "12000"), own_seed]).unwrap(),
            (42, 12000)
        );
        let e = common_split(&[with("42", "12000"), tiny(&[])])
            .unwrap_err()
            .to_string();
        assert!(e.contains("validation split is unknown"), "{e}");
    }
}
