//! A user's-eye test of the public API from Python: stubs generated from
//! `proto/` with grpcio-tools, and the README's own Python example, run
//! unchanged against the real server. It calls GetModelInfo, Classify, and
//! ClassifyStream with a bad frame in the middle.

use std::process::Command;

use crate::common::{TestServer, canvas_gray, png, root, test_set};

/// The README's Python block after "From Python": what a user copies.
fn readme_python() -> String {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let from = readme
        .find("From Python")
        .expect("README has a Python section");
    let rest = &readme[from..];
    let start = rest.find("```python\n").expect("a ```python block") + "```python\n".len();
    let end = rest[start..].find("```").expect("the block ends");
    rest[start..start + end].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_python_client_works_against_the_server() {
    let py = crate::kserve::python();
    assert!(
        std::path::Path::new(&py).exists(),
        "{py} not found: scripts/test.sh creates .venv-triton with tests/kserve/requirements.txt"
    );
    let dir = tempfile::tempdir().unwrap();
    // The stubs, generated the way the README says.
    let stubs = Command::new(&py)
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(root().join("proto"))
        .arg(format!("--python_out={}", dir.path().display()))
        .arg(format!("--grpc_python_out={}", dir.path().display()))
        .arg(root().join("proto/mnister/v1/classifier.proto"))
        .output()
        .unwrap();
    assert!(
        stubs.status.success(),
        "grpc_tools.protoc: {}",
        String::from_utf8_lossy(&stubs.stderr)
    );
    std::fs::write(dir.path().join("classify.py"), readme_python()).unwrap();

    // Two digits as PNG files a user would have, and a file that is not an
    // image between them.
    let ds = test_set();
    let files: Vec<(String, Vec<u8>, Option<u8>)> = vec![
        (
            "a.png".into(),
            png(&canvas_gray(ds.images.image(0)).into()),
            Some(ds.labels[0]),
        ),
        ("broken.png".into(), b"this is not an image".to_vec(), None),
        (
            "b.png".into(),
            png(&canvas_gray(ds.images.image(1)).into()),
            Some(ds.labels[1]),
        ),
    ];
    for (name, bytes, _) in &files {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }

    let server = TestServer::start(&[]);
    server.wait_serving().await;
    let out = Command::new(&py)
        .current_dir(dir.path())
        .arg("classify.py")
        .arg(server.grpc_addr.to_string())
        .args(files.iter().map(|f| &f.0))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("model ") && lines[0].contains("max batch 16"),
        "{text}"
    );
    let first = format!("first: {} (", ds.labels[0]);
    assert!(lines[1].starts_with(&first), "{text}");
    // The stream: one answer per frame, in order; the bad one is an
    // INVALID_ARGUMENT (3) with the reason, and the next one is read.
    assert_eq!(lines.len(), 2 + files.len(), "{text}");
    for ((name, _, label), line) in files.iter().zip(&lines[2..]) {
        match label {
            Some(l) => assert!(line.starts_with(&format!("{name}: {l} (")), "{text}"),
            None => assert!(
                line.starts_with(&format!("{name}: error 3: ")) && line.contains("format"),
                "{text}"
            ),
        }
    }
}
