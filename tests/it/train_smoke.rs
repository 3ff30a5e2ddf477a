//! The trainer end to end on the committed MNIST sample: a short training
//! run must lower the loss, export an ONNX file that ONNX Runtime loads, and
//! agree with burn on ≥ 1,000 test images.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use clap::Parser;
use mnister_train::config::TrainArgs;
use mnister_train::run::run;

/// burn's random generator is process-wide, so two trainings running at
/// once in one test process would draw from each other's stream. Tests that
/// train take this lock.
static TRAINING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn sample_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/mnist")
}

fn args(out: &std::path::Path, extra: &[&str]) -> TrainArgs {
    let mut argv = vec![
        "mnister-train".to_string(),
        "--data-dir".into(),
        sample_dir().display().to_string(),
        "--out".into(),
        out.display().to_string(),
        "--val-size".into(),
        "400".into(),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    TrainArgs::try_parse_from(argv).unwrap()
}

#[test]
fn one_epoch_lowers_the_loss_exports_and_matches_onnx_runtime() {
    let _one_at_a_time = TRAINING.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    // Few steps: augmentation is left out so that one short epoch learns
    // visibly; the other test trains with it.
    let a = args(
        dir.path(),
        &[
            "--epochs",
            "1",
            "--batch-size",
            "25",
            "--train-limit",
            "1000",
            "--no-augment",
        ],
    );
    let report = run(&a, &AtomicBool::new(false)).unwrap();

    let before = report.initial_val_loss.unwrap();
    let after = report.history[0].val_loss;
    assert!(after < before * 0.8, "val loss {before} -> {after}");
    assert_eq!(report.test.images, 2000);
    assert!(
        report.test.accuracy > 0.5,
        "accuracy {}",
        report.test.accuracy
    );

    assert!(report.parity.images >= 1000);
    assert!(
        report.parity.max_abs_diff <= 1e-4,
        "max |Δp| {}",
        report.parity.max_abs_diff
    );
    assert_eq!(report.parity.argmax_agreement, 1.0);

    // The exported file is a valid model with the promised interface and metadata.
    let m = crate::common::model_file(&dir.path().join("model.onnx"));
    assert_eq!(m.input.name, "image");
    assert_eq!(m.input.shape, vec![-1, 1, 28, 28]);
    assert_eq!(m.output.name, "probabilities");
    assert_eq!(m.output.shape, vec![-1, 10]);
    assert_eq!(m.metadata["parameters"], "587402");
    assert_eq!(m.metadata["architecture"], "reference");
    assert_eq!(m.metadata["train.epochs"], "1");
    assert_eq!(m.metadata["train.no_augment"], "true");
    assert!(m.metadata.contains_key("dataset.train_images_sha256"));
    assert!(m.metadata.contains_key("accuracy.test"));
    assert!(m.metadata.contains_key("git_commit"));
    assert_eq!(m.version(), report.version);

    for f in [
        "report.json",
        "curves.png",
        "confusion.png",
        "errors.png",
        "augmentation.png",
    ] {
        let p = dir.path().join(f);
        assert!(
            p.metadata().map(|m| m.len() > 0).unwrap_or(false),
            "{f} missing"
        );
    }
    assert_eq!(report.robustness.len(), 12);
}

#[test]
fn same_seed_gives_the_same_model_and_resume_continues() {
    let _one_at_a_time = TRAINING.lock().unwrap_or_else(|e| e.into_inner());
    let flags = [
        "--epochs",
        "2",
        "--batch-size",
        "50",
        "--train-limit",
        "300",
        "--val-limit",
        "100",
        "--test-limit",
        "100",
        "--arch",
        "reference-bn",
    ];
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let ra = run(&args(a.path(), &flags), &AtomicBool::new(false)).unwrap();
    // The same run in two pieces: stop after one epoch, then resume.
    let mut half = args(b.path(), &flags);
    half.stop_after = Some(1);
    let r1 = run(&half, &AtomicBool::new(false)).unwrap();
    assert!(r1.interrupted && r1.epochs_trained == 1);
    let e1 = b.path().join("e1.bpk");
    std::fs::copy(b.path().join("checkpoint/model.bpk"), &e1).unwrap();
    half.stop_after = None;
    half.resume = true;
    let rb = run(&half, &AtomicBool::new(false)).unwrap();
    assert_eq!(rb.epochs_trained, 2);
    assert_eq!(
        ra.version, rb.version,
        "resumed run differs from the straight one"
    );
    assert_eq!(ra.history[1].val_loss, rb.history[1].val_loss);

    // A soup of the finished run's epochs, batch norm included, exported
    // as a candidate without touching the test set or the run's report.
    let report_before = std::fs::read(b.path().join("report.json")).unwrap();
    let model_before = std::fs::read(b.path().join("model.onnx")).unwrap();
    let mut soup = half.clone();
    soup.no_test = true;
    soup.soup = vec![format!("{}=0.5", e1.display()).parse().unwrap()];
    soup.validate().unwrap();
    let rs = run(&soup, &AtomicBool::new(false)).unwrap();
    assert_eq!(rs.test.images, 0, "--no-test must not score on test");
    assert_ne!(rs.val_accuracy, 0.0);
    assert_eq!(
        std::fs::read(b.path().join("report.json")).unwrap(),
        report_before
    );
    assert_eq!(
        std::fs::read(b.path().join("model.onnx")).unwrap(),
        model_before
    );
    let candidate = b.path().join(mnister_train::run::CANDIDATE);
    let m = crate::common::model_file(&candidate);
    assert!(!m.metadata.contains_key("accuracy.test"));
    assert!(m.metadata["report"].contains("never scored"));
    assert_eq!(
        m.metadata["accuracy.val"],
        format!("{:.6}", rs.val_accuracy)
    );
    assert_ne!(
        std::fs::read(&candidate).unwrap(),
        model_before,
        "the soup moved the weights"
    );
}

#[test]
fn bad_flags_and_missing_data_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = args(dir.path(), &[]);
    a.data_dir = dir.path().join("nowhere");
    let e = run(&a, &AtomicBool::new(false)).unwrap_err().to_string();
    assert!(
        e.contains("train-images-idx3-ubyte") && e.contains("--data-dir"),
        "{e}"
    );
    let a = args(dir.path(), &["--zoom-min", "2", "--zoom-max", "1"]);
    assert!(a.validate().unwrap_err().contains("--zoom-min"));
}
