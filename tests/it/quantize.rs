//! The quantizer end to end on the committed MNIST sample: it turns the
//! committed fp32 model into a QDQ int8 model calibrated on training images
//! only, and ONNX Runtime's fp32 and int8 outputs agree on ≥ 99.8% of the
//! 2,000 sample test images.

use std::path::PathBuf;

use clap::Parser;
use mnister_train::onnx::{ModelProto, tensor_proto::DataType};
use mnister_train::quantize::{QuantizeArgs, run};
use prost::Message;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn quantized_model_agrees_with_fp32_and_records_its_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.int8.onnx");
    let args = QuantizeArgs::try_parse_from([
        "quantize".to_string(),
        "--model".into(),
        root().join("models/mnist-cnn.onnx").display().to_string(),
        "--data-dir".into(),
        root().join("tests/data/mnist").display().to_string(),
        "--val-size".into(),
        "400".into(),
        "--out".into(),
        out.display().to_string(),
        "--report-dir".into(),
        dir.path().display().to_string(),
        "--no-robustness".into(),
    ])
    .unwrap();
    let report = run(&args).unwrap();
    assert_eq!(report.test_images, 2000);
    assert!(
        report.agreement >= 0.998,
        "fp32 and int8 agree on {:.4} ({} disagree)",
        report.agreement,
        report.disagreements
    );
    assert!(report.int8_test.accuracy >= report.fp32_test.accuracy - 0.005);
    // 1,000 calibration images from the 1,600 training ones, none of the 400
    // validation images, and both methods were measured.
    assert_eq!(report.calibration.images, 1000);
    assert_eq!(report.val_images, 400);
    assert!(report.candidates.iter().any(|c| c.method == "minmax"));
    assert!(
        report
            .candidates
            .iter()
            .any(|c| c.method.starts_with("percentile"))
    );
    assert!(dir.path().join("int8-report.md").is_file());

    // The file: what the server reads, and QDQ with int8 weights inside.
    let file = crate::common::model_file(&out);
    assert_eq!(file.metadata["precision"], "int8");
    assert_eq!(file.metadata["quantization.method"], report.chosen);
    // Every weight layer of the fp32 graph (one network or an ensemble of
    // several) comes out quantized, and nothing else changes kind.
    let fp32 = crate::common::model_file(&root().join("models/mnist-cnn.onnx"));
    let fp32_graph = ModelProto::decode(&fp32.bytes[..]).unwrap().graph.unwrap();
    let fp32_count = |op: &str| fp32_graph.node.iter().filter(|n| n.op_type == op).count();
    let (convs, gemms) = (fp32_count("Conv"), fp32_count("Gemm"));
    assert!(convs >= 5 && gemms >= 2, "{convs} Conv, {gemms} Gemm");
    let q: serde_json::Value = serde_json::from_str(&file.metadata["quantization"]).unwrap();
    assert_eq!(q["weights"].as_array().unwrap().len(), convs + gemms);
    assert!(q["activations"].as_array().unwrap().len() >= convs + gemms);
    let model = ModelProto::decode(&file.bytes[..]).unwrap();
    let g = model.graph.unwrap();
    let count = |op: &str| g.node.iter().filter(|n| n.op_type == op).count();
    assert_eq!(count("Conv"), convs);
    assert_eq!(count("Gemm"), gemms);
    assert_eq!(count("Relu"), 0, "every Relu is folded into a Q");
    assert!(count("QuantizeLinear") >= convs + gemms + 2);
    let int8_weights = g
        .initializer
        .iter()
        .filter(|t| t.data_type == DataType::Int8 as i32 && t.dims.len() >= 2)
        .count();
    assert_eq!(int8_weights, convs + gemms);
    assert!(
        !g.initializer
            .iter()
            .any(|t| t.data_type == DataType::Float as i32 && t.dims.len() >= 2),
        "no float weight matrix is left"
    );
    assert!(file.bytes.len() * 3 < fp32.bytes.len());
}

#[test]
fn training_with_int8_writes_both_models_and_the_comparison() {
    use mnister_train::config::TrainArgs;
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("export/m.onnx");
    let mut argv: Vec<String> = vec!["mnister-train".into(), "--data-dir".into()];
    argv.push(root().join("tests/data/mnist").display().to_string());
    argv.extend(["--out".into(), dir.path().join("run").display().to_string()]);
    argv.extend(["--export".into(), export.display().to_string()]);
    argv.extend(
        [
            "--val-size",
            "400",
            "--epochs",
            "1",
            "--batch-size",
            "25",
            "--train-limit",
            "300",
            "--test-limit",
            "200",
            "--no-augment",
            "--int8",
        ]
        .map(String::from),
    );
    let args = TrainArgs::try_parse_from(argv).unwrap();
    mnister_train::run::run(&args, &std::sync::atomic::AtomicBool::new(false)).unwrap();
    let run = dir.path().join("run");
    for f in [
        "model.onnx",
        "model.int8.onnx",
        "int8-report.json",
        "int8-report.md",
    ] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    let int8 = crate::common::model_file(&dir.path().join("export/m.int8.onnx"));
    assert_eq!(int8.metadata["precision"], "int8");
    assert_eq!(
        int8.metadata["quantization.fp32_sha256"],
        crate::common::model_file(&export).sha256
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("int8-report.json")).unwrap()).unwrap();
    assert_eq!(report["test_images"], 200);
    assert_eq!(report["robustness"].as_array().unwrap().len(), 12);
}
