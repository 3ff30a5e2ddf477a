//! `mnister-train ensemble` end to end on the committed MNIST sample: the
//! merged file must compute what its members compute, mixed as documented,
//! with the fitted temperature folded in, and go through the same report
//! stage (calibration, int8 twin) as a training run.

use std::path::{Path, PathBuf};

use clap::Parser;
use mnister_core::backend::ort::{OrtBackend, init_runtime};
use mnister_core::backend::{Backend, ModelFile};
use mnister_core::preprocess::normalize_mnist;
use mnister_train::ensemble::{EnsembleArgs, run};
use mnister_train::onnx::ModelProto;
use prost::Message;

use crate::common::{model_file, root, single_network_model, test_set};

/// A committed fp32 network, its metadata saying it held out `val_size`
/// images, and its logits multiplied by `scale` (the last Gemm's weights
/// and bias): a second member that is the first one, `scale` times as sure.
fn member(dir: &Path, name: &str, val_size: usize, scale: f32) -> PathBuf {
    let bytes = std::fs::read(single_network_model()).unwrap();
    let mut m = ModelProto::decode(&bytes[..]).unwrap();
    for p in &mut m.metadata_props {
        if p.key == "train.val_size" {
            p.value = val_size.to_string();
        }
    }
    let g = m.graph.as_mut().unwrap();
    for t in g
        .initializer
        .iter_mut()
        .filter(|t| t.name == "fc2.weight" || t.name == "fc2.bias")
    {
        let v: Vec<u8> = t
            .raw_data
            .chunks_exact(4)
            .flat_map(|b| (f32::from_le_bytes(b.try_into().unwrap()) * scale).to_le_bytes())
            .collect();
        t.raw_data = v;
    }
    let path = dir.join(name);
    std::fs::write(&path, m.encode_to_vec()).unwrap();
    path
}

fn args(out: &Path, members: &[&Path], extra: &[&str]) -> EnsembleArgs {
    let mut argv = vec![
        "ensemble".to_string(),
        "--data-dir".into(),
        root().join("tests/data/mnist").display().to_string(),
        "--out".into(),
        out.display().to_string(),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    argv.extend(members.iter().map(|p| p.display().to_string()));
    EnsembleArgs::try_parse_from(argv).unwrap()
}

fn probabilities(file: &ModelFile, flat: &[f32]) -> Vec<f32> {
    let env = init_runtime(None).expect("ONNX Runtime (scripts/setup-onnxruntime.sh)");
    let mut b = OrtBackend::for_model(env, file, 2).unwrap();
    flat.chunks(256 * 784)
        .flat_map(|c| b.infer(c, c.len() / 784).unwrap())
        .collect()
}

#[test]
fn an_ensemble_computes_its_members_mix_with_the_fitted_temperature_folded_in() {
    let dir = tempfile::tempdir().unwrap();
    let a = member(dir.path(), "a.onnx", 400, 1.0);
    let b = member(dir.path(), "b.onnx", 400, 2.0);
    let out = dir.path().join("ens");
    // Shares 1:3 → logits 0.25·z + 0.75·2z = 1.75·z.
    let report = run(&args(
        &out,
        &[&a, &b],
        &["--weights", "1,3", "--test-limit", "400", "--int8"],
    ))
    .unwrap();

    // The report stage ran as for a training run.
    assert_eq!(report.test.images, 400);
    assert_eq!(report.val_images, 400);
    assert!(
        report.version.starts_with("ensemble-"),
        "{}",
        report.version
    );
    assert!(report.architecture.starts_with("ensemble of 2"));
    assert!(!report.field.is_empty() && !report.robustness.is_empty());
    assert_eq!(report.parity.argmax_agreement, 1.0);
    assert!(report.parity.max_abs_diff < 1e-4, "{:?}", report.parity);
    let cal = report.calibration.as_ref().unwrap();
    let t = cal.temperature;
    assert!(t.is_finite() && t > 0.0);
    for f in ["report.json", "report.md", "model.int8.onnx"] {
        assert!(out.join(f).is_file(), "{f}");
    }

    // The file: what the server reads.
    let file = model_file(&out.join("model.onnx"));
    assert_eq!(file.metadata["version"], report.version);
    assert_eq!(file.metadata["train.val_size"], "400");
    let g = ModelProto::decode(&file.bytes[..]).unwrap().graph.unwrap();
    let count = |op: &str| g.node.iter().filter(|n| n.op_type == op).count();
    assert_eq!((count("Conv"), count("Gemm")), (10, 4));
    assert_eq!((count("Sum"), count("Softmax")), (1, 1));

    // Its probabilities are softmax(1.75 · ln p_a / T), p_a the member's.
    let ds = test_set();
    let flat: Vec<f32> = (0..300)
        .flat_map(|i| normalize_mnist(ds.images.image(i)).unwrap())
        .collect();
    let pa = probabilities(&model_file(&a), &flat);
    let got = probabilities(&file, &flat);
    let mut worst = 0f32;
    for (p, q) in pa.chunks(10).zip(got.chunks(10)) {
        let z: Vec<f32> = p.iter().map(|v| 1.75 * v.max(1e-30).ln() / t).collect();
        let max = z.iter().cloned().fold(f32::MIN, f32::max);
        let e: Vec<f32> = z.iter().map(|v| (v - max).exp()).collect();
        let s: f32 = e.iter().sum();
        for (want, have) in e.iter().map(|v| v / s).zip(q) {
            worst = worst.max((want - have).abs());
        }
    }
    assert!(worst < 1e-4, "largest difference {worst}");
}

#[test]
fn members_must_share_their_validation_split_and_be_fp32() {
    let dir = tempfile::tempdir().unwrap();
    let a = member(dir.path(), "a.onnx", 400, 1.0);
    let b = member(dir.path(), "b.onnx", 500, 1.0);
    let out = dir.path().join("ens");
    let err = run(&args(&out, &[&a, &b], &[])).unwrap_err().to_string();
    assert!(err.contains("validation split"), "{err}");
    assert!(!out.join("model.onnx").exists());

    let int8 = root().join("models/mnist-cnn.int8.onnx");
    let err = run(&args(&out, &[&a, &int8], &[])).unwrap_err().to_string();
    assert!(err.contains("quantized"), "{err}");

    let err = run(&args(&out, &[&a, &a], &["--weights", "1,0"]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("positive"), "{err}");
}

#[test]
fn a_gate_member_flattens_what_it_is_unsure_of_and_never_changes_the_argmax() {
    let dir = tempfile::tempdir().unwrap();
    let a = member(dir.path(), "a.onnx", 400, 1.0);
    // The gate: the same network, five times less sure, so its entropy
    // varies over the digits.
    let b = member(dir.path(), "b.onnx", 400, 0.2);
    let out = dir.path().join("ens");
    // Half the clean validation digits pass the gate more than half open.
    let report = run(&args(
        &out,
        &[&a, &b],
        &[
            "--gate",
            "2",
            "--gate-keep",
            "0.5",
            "--test-limit",
            "400",
            "--int8",
        ],
    ))
    .unwrap();
    assert_eq!(report.parity.argmax_agreement, 1.0);
    assert!(report.parity.max_abs_diff < 1e-4, "{:?}", report.parity);
    assert!(out.join("model.int8.onnx").is_file());
    let gate = &report.args["gate"];
    assert_eq!(gate["member"], 2);
    let (h0, k) = (
        gate["entropy"].as_f64().unwrap() as f32,
        gate["steepness"].as_f64().unwrap() as f32,
    );
    assert!(h0 > 0.0 && h0 < 10f32.ln(), "{gate}");
    let t = report.calibration.as_ref().unwrap().temperature;

    // Served: softmax(ln(open · (softmax(0.6 z) − 0.1) + 0.1) / T), where
    // z = ln p_a, shares 1:1 give 0.5 · z + 0.5 · 0.2 z = 0.6 z, and open is
    // sigmoid(k · (h0 − H(softmax(0.2 z)))).
    let file = model_file(&out.join("model.onnx"));
    assert_eq!(file.metadata["train.gate"], gate.to_string());
    let ds = test_set();
    let flat: Vec<f32> = (0..300)
        .flat_map(|i| normalize_mnist(ds.images.image(i)).unwrap())
        .collect();
    let pa = probabilities(&model_file(&a), &flat);
    let got = probabilities(&file, &flat);
    let softmax = |z: Vec<f32>| {
        let max = z.iter().cloned().fold(f32::MIN, f32::max);
        let e: Vec<f32> = z.iter().map(|v| (v - max).exp()).collect();
        let s: f32 = e.iter().sum();
        e.into_iter().map(|v| v / s).collect::<Vec<f32>>()
    };
    let (mut worst, mut flattened) = (0f32, 0);
    for (p, served) in pa.chunks(10).zip(got.chunks(10)) {
        let z: Vec<f32> = p.iter().map(|v| v.max(1e-30).ln()).collect();
        let pooled = softmax(z.iter().map(|v| 0.6 * v).collect());
        let q = softmax(z.iter().map(|v| 0.2 * v).collect());
        let h: f32 = -q.iter().map(|v| v * v.max(1e-30).ln()).sum::<f32>();
        let open = 1.0 / (1.0 + (-k * (h0 - h)).exp());
        let want = softmax(
            pooled
                .iter()
                .map(|v| (open * (v - 0.1) + 0.1).max(1e-30).ln() / t)
                .collect(),
        );
        for (w, s) in want.iter().zip(served) {
            worst = worst.max((w - s).abs());
        }
        let top = |v: &[f32]| mnister_core::backend::argmax(v);
        assert_eq!(top(served), top(p), "the gate never changes the answer");
        flattened += usize::from(open < 0.5);
    }
    assert!(worst < 1e-4, "largest difference {worst}");
    assert!(
        (30..=270).contains(&flattened),
        "the gate closes on some digits and not on others: {flattened} of 300"
    );

    for (extra, says) in [
        (&["--gate", "3"][..], "position in the member list, 1 to 2"),
        (
            &["--gate", "1", "--gate-keep", "1.0"][..],
            "--gate-keep must be in",
        ),
    ] {
        let err = run(&args(&dir.path().join("bad"), &[&a, &b], extra))
            .unwrap_err()
            .to_string();
        assert!(err.contains(says), "{extra:?}: {err}");
    }
}
