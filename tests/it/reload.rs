//! Zero-downtime reload: under continuous unary and stream load, swap in a
//! good model (admin RPC), fail to load a corrupt one (admin RPC), swap in
//! another good one (SIGHUP), and lose no request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::{TestServer, default_model, metric, parse_metrics, test_set};
use mnister::proto::v1::admin_client::AdminClient;
use mnister::proto::v1::{ClassifyRequest, ReloadModelRequest, classify_request::Input};
use prost::Message;
use tokio_stream::StreamExt;

/// The default model with another `version` in its metadata.
fn model_with_version(version: &str) -> Vec<u8> {
    let mut m =
        mnister_train::onnx::ModelProto::decode(&std::fs::read(default_model()).unwrap()[..])
            .unwrap();
    for p in &mut m.metadata_props {
        if p.key == "version" {
            p.value = version.to_string();
        }
    }
    m.encode_to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reloads_under_load_lose_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.onnx");
    std::fs::write(&model, model_with_version("v1")).unwrap();
    let server = TestServer::start_with_model(&model, &["--enable-admin-rpc"]);
    server.wait_serving().await;
    let ds = test_set();
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let versions = Arc::new(std::sync::Mutex::new(
        std::collections::BTreeSet::<String>::new(),
    ));

    let mut tasks = Vec::new();
    for w in 0..4 {
        let (mut c, ds, stop, ok, failed, versions) = (
            server.client().await,
            ds,
            stop.clone(),
            ok.clone(),
            failed.clone(),
            versions.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while !stop.load(Ordering::SeqCst) {
                let req = ClassifyRequest {
                    input: Some(Input::Mnist(ds.images.image(i % 1000).to_vec().into())),
                    ..Default::default()
                };
                match c.classify(req).await {
                    Ok(r) => {
                        let r = r.into_inner();
                        assert!(r.digit < 10 && r.probabilities.len() == 10);
                        versions.lock().unwrap().insert(r.model_version);
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(s) => failed.lock().unwrap().push(format!("unary: {s:?}")),
                }
                i += 4;
            }
        }));
    }
    // One long stream across all the reloads.
    {
        let (mut c, ds, stop, ok, failed) = (
            server.client().await,
            ds,
            stop.clone(),
            ok.clone(),
            failed.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let frames = async_stream_frames(ds, stop);
            let mut resp = c.classify_stream(frames).await.unwrap().into_inner();
            while let Some(r) = resp.next().await {
                match r {
                    Ok(r) if r.error.is_none() => {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(r) => failed.lock().unwrap().push(format!("frame: {:?}", r.error)),
                    Err(s) => failed.lock().unwrap().push(format!("stream: {s:?}")),
                }
            }
        }));
    }

    let mut admin = AdminClient::new(server.channel().await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // 1. A good model, by admin RPC.
    let v2 = dir.path().join("v2.onnx");
    std::fs::write(&v2, model_with_version("v2")).unwrap();
    let r = admin
        .reload_model(ReloadModelRequest {
            path: v2.display().to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.version.as_str(), r.previous_version.as_str()),
        ("v2", "v1")
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    // 2. A corrupt file: refused, v2 keeps serving.
    let corrupt = dir.path().join("corrupt.onnx");
    let mut bytes = model_with_version("v3");
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&corrupt, &bytes).unwrap();
    let e = admin
        .reload_model(ReloadModelRequest {
            path: corrupt.display().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(
        e.message().contains("previous one keeps serving"),
        "{}",
        e.message()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    // 3. SIGHUP reloads --model, rewritten in place with v4.
    std::fs::write(&model, model_with_version("v4")).unwrap();
    server.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !server.scrape().contains("version=\"v4\"") {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP did not reload"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }

    let failed = failed.lock().unwrap();
    assert!(
        failed.is_empty(),
        "{} failed requests, e.g. {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(
        ok.load(Ordering::SeqCst) > 200,
        "too little load: {}",
        ok.load(Ordering::SeqCst)
    );
    let seen = versions.lock().unwrap().clone();
    assert!(
        seen.contains("v1") && seen.contains("v2") && seen.contains("v4"),
        "{seen:?}"
    );
    assert!(!seen.contains("v3"));
    let m = parse_metrics(&server.scrape());
    assert_eq!(
        metric(&m, "mnister_model_reloads_total", &[("result", "success")]),
        2.0
    );
    assert_eq!(
        metric(&m, "mnister_model_reloads_total", &[("result", "failure")]),
        1.0
    );
    assert_eq!(metric(&m, "mnister_model_info", &[("version", "v4")]), 1.0);
    assert_eq!(metric(&m, "mnister_model_info", &[("version", "v1")]), 0.0);
    let log = server.log.lock().unwrap().join("\n");
    assert!(
        log.contains("model reload failed") && log.contains("corrupt.onnx"),
        "{log}"
    );
}

/// Frames until `stop`, paced so the stream spans the whole test.
fn async_stream_frames(
    ds: &'static mnister_core::idx::Dataset,
    stop: Arc<AtomicBool>,
) -> impl tokio_stream::Stream<Item = ClassifyRequest> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let mut i = 0usize;
        while !stop.load(Ordering::SeqCst) {
            let req = ClassifyRequest {
                id: i.to_string(),
                input: Some(Input::Mnist(ds.images.image(i % 1000).to_vec().into())),
                ..Default::default()
            };
            if tx.send(req).await.is_err() {
                return;
            }
            i += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_rpc_is_off_unless_enabled() {
    let server = TestServer::start(&[]);
    server.wait_serving().await;
    let e = AdminClient::new(server.channel().await)
        .reload_model(ReloadModelRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_fails_the_golden_digits_never_serves() {
    // The model of a 1-epoch smoke run would; an untrained one cannot. Make
    // one by zeroing the last layer's weights (every member's, in an
    // ensemble): every answer is the same digit.
    let mut m =
        mnister_train::onnx::ModelProto::decode(&std::fs::read(default_model()).unwrap()[..])
            .unwrap();
    for t in &mut m.graph.as_mut().unwrap().initializer {
        if t.name.ends_with("fc2.weight") {
            t.raw_data.iter_mut().for_each(|b| *b = 0);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("broken.onnx");
    std::fs::write(&p, m.encode_to_vec()).unwrap();
    let mut out = std::process::Command::new(env!("CARGO_BIN_EXE_mnister-server"))
        .args([
            "--grpc-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--model",
        ])
        .arg(&p)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A server that accepted the model would serve until killed: fail
    // instead of hanging.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while out.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            out.kill().unwrap();
            panic!("the server started serving a model that fails the golden digits");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = out.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("golden digits"), "{err}");
}

/// After an fp32 -> int8 reload, `mnister_model_info` shows the int8 model
/// at 1 and the fp32 one at 0: each series is zeroed by its own labels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_across_precisions_retires_the_old_series() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.onnx");
    std::fs::copy(default_model(), &model).unwrap();
    let server = TestServer::start_with_model(&model, &[]);
    server.wait_serving().await;
    let info = |precision: &str| {
        metric(
            &parse_metrics(&server.scrape()),
            "mnister_model_info",
            &[("precision", precision)],
        )
    };
    assert_eq!((info("fp32"), info("int8")), (1.0, 0.0));
    std::fs::copy(
        crate::common::root().join("models/mnist-cnn.int8.onnx"),
        &model,
    )
    .unwrap();
    server.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while info("int8") != 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP did not reload"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(info("fp32"), 0.0, "{}", server.scrape());
    let m = parse_metrics(&server.scrape());
    let live: Vec<_> = m
        .iter()
        .filter(|s| s.name == "mnister_model_info" && s.value == 1.0)
        .collect();
    assert_eq!(live.len(), 1, "one model is loaded: {live:?}");
}
