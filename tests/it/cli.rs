//! The `mnister` command-line client against the real server.

use std::process::Command;

use crate::common::{TestServer, canvas_gray, png, root, test_set};

fn cli(server: &TestServer, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(crate::common::bin("mnister"))
        .arg("--addr")
        .arg(server.url())
        .args(args)
        .output()
        .expect("running mnister");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classify_png_files_prints_the_right_digits() {
    let server = TestServer::start(&[]);
    server.wait_serving().await;
    let dir = tempfile::tempdir().unwrap();
    let ds = test_set();
    let mut files = Vec::new();
    for i in 0..10 {
        let p = dir.path().join(format!("digit-{i}.png"));
        std::fs::write(
            &p,
            png(&image::DynamicImage::ImageLuma8(canvas_gray(
                ds.images.image(i),
            ))),
        )
        .unwrap();
        files.push(p);
    }
    let args: Vec<String> = ["classify", "--json"]
        .iter()
        .map(|s| s.to_string())
        .chain(files.iter().map(|p| p.display().to_string()))
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out, err) = cli(&server, &args);
    assert!(ok, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 10);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["digit"], u64::from(ds.labels[i]), "{l}");
    }
    // The table form names each file.
    let (ok, out, _) = cli(&server, &["classify", files[0].to_str().unwrap()]);
    assert!(ok && out.contains("digit-0.png"), "{out}");
    // A file that is not an image: its own error line, non-zero exit.
    let bad = dir.path().join("notes.png");
    std::fs::write(&bad, b"not an image").unwrap();
    let (ok, out, _) = cli(&server, &["classify", bad.to_str().unwrap()]);
    assert!(!ok && out.contains("error"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_over_2000_test_images_matches_the_model_card() {
    let server = TestServer::start(&[]);
    server.wait_serving().await;
    let data = root().join("tests/data/mnist");
    let out_file = tempfile::tempdir().unwrap().keep().join("results.csv");
    let (ok, out, err) = cli(
        &server,
        &[
            "stream",
            "--idx",
            data.join("t10k-images-idx3-ubyte.gz").to_str().unwrap(),
            "--labels",
            data.join("t10k-labels-idx1-ubyte.gz").to_str().unwrap(),
            "--out",
            out_file.to_str().unwrap(),
            "--quiet",
        ],
    );
    assert!(ok, "{out}\n{err}");
    // The model card's report lists every misclassified test image.
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root().join("docs/model/report.json")).unwrap())
            .unwrap();
    let wrong = report["test"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["index"].as_u64().unwrap() < 2000)
        .count();
    let expected = 1.0 - wrong as f64 / 2000.0;
    let line = out
        .lines()
        .find(|l| l.starts_with("accuracy"))
        .expect("an accuracy line");
    let got: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(
        (got - expected).abs() < 1e-9,
        "stream accuracy {got}, model card {expected}"
    );
    assert!(
        out.contains("count       2000") && out.contains("errors      0"),
        "{out}"
    );
    assert!(out.contains("confusion matrix"), "{out}");
    let csv = std::fs::read_to_string(&out_file).unwrap();
    assert_eq!(csv.lines().count(), 2001);
    assert!(csv.starts_with("id,label,digit,confidence,abstained,error"));
    // The reject option's summary: how many abstained, and the accuracy of
    // the rest (at the server's default threshold).
    assert!(
        out.contains("abstained   ") && out.contains("kept        "),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_runs_two_seconds_without_errors() {
    let server = TestServer::start(&[]);
    server.wait_serving().await;
    for mode in [
        vec![
            "bench",
            "--duration",
            "2s",
            "--warmup",
            "0s",
            "--concurrency",
            "8",
            "--json",
        ],
        vec![
            "bench",
            "--mode",
            "stream",
            "--duration",
            "2s",
            "--warmup",
            "0s",
            "--concurrency",
            "2",
            "--json",
        ],
        vec![
            "bench",
            "--rps",
            "200",
            "--duration",
            "2s",
            "--warmup",
            "0s",
            "--input",
            "png",
            "--json",
        ],
    ] {
        let (ok, out, err) = cli(&server, &mode);
        assert!(ok, "{mode:?}: {out}\n{err}");
        let r: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert!(r["ok"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(r["errors"], serde_json::json!({}), "{r}");
        assert!(
            r["latency"]["p99_us"].as_u64().unwrap() >= r["latency"]["p50_us"].as_u64().unwrap()
        );
    }
}

#[test]
fn unreachable_server_is_a_clear_error() {
    let out = Command::new(crate::common::bin("mnister"))
        .args([
            "--addr",
            "http://127.0.0.1:1",
            "--connect-timeout",
            "2s",
            "health",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot connect") && err.contains("refused"),
        "{err}"
    );
}
