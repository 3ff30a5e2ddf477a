//! The server end to end: the real binary on ephemeral ports, a real tonic
//! client, the real /metrics.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::{TestServer, canvas_gray, metric, parse_metrics, png, test_set};
use mnister::proto::v1::{
    ClassifyRequest, GetModelInfoRequest, RawPixels, classify_request::Input,
};
use tokio_stream::StreamExt;
use tonic::Code;

fn mnist_req(id: &str, bytes: &[u8]) -> ClassifyRequest {
    ClassifyRequest {
        id: id.into(),
        input: Some(Input::Mnist(bytes.to_vec().into())),
        ..Default::default()
    }
}

fn image_req(bytes: Vec<u8>) -> ClassifyRequest {
    ClassifyRequest {
        input: Some(Input::Image(bytes.into())),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classifies_every_input_kind() {
    let server = TestServer::start(&[]);
    server.wait_serving().await;
    let mut c = server.client().await;
    let ds = test_set();
    let n = 100;
    let mut right = [0usize; 3];
    for i in 0..n {
        let img = ds.images.image(i);
        let label = u32::from(ds.labels[i]);
        // 1. mnist: 784 bytes as they are.
        let r = c
            .classify(mnist_req(&i.to_string(), img))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.id, i.to_string());
        assert_eq!(r.probabilities.len(), 10);
        assert!((r.probabilities.iter().sum::<f32>() - 1.0).abs() < 1e-3);
        assert_eq!(r.confidence, r.probabilities[r.digit as usize]);
        assert!(!r.model_version.is_empty());
        let t = r.timings.unwrap();
        assert!(t.total_us >= t.inference_us && t.total_us > 0);
        right[0] += usize::from(r.digit == label);
        // 2. image: a 280x280 dark-on-light PNG, as a canvas would export.
        let canvas = canvas_gray(img);
        let r = c
            .classify(image_req(png(&image::DynamicImage::ImageLuma8(
                canvas.clone(),
            ))))
            .await
            .unwrap()
            .into_inner();
        right[1] += usize::from(r.digit == label);
        // 3. pixels: the same canvas as raw grayscale.
        let r = c
            .classify(ClassifyRequest {
                input: Some(Input::Pixels(RawPixels {
                    width: 280,
                    height: 280,
                    data: canvas.into_raw().into(),
                })),
                return_preprocessed: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.preprocessed.len(), 784);
        right[2] += usize::from(r.digit == label);
    }
    for (kind, r) in ["mnist", "image", "pixels"].iter().zip(right) {
        assert!(r >= 97, "{kind}: only {r}/{n} right");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_keeps_ids_and_order_and_survives_a_corrupt_frame() {
    let server = TestServer::start(&[]);
    server.wait_serving().await;
    let mut c = server.client().await;
    let ds = test_set();
    let frames: Vec<ClassifyRequest> = (0..1000)
        .map(|i| {
            if i == 500 {
                ClassifyRequest {
                    id: "frame-500".into(),
                    input: Some(Input::Image(
                        b"\x89PNG\r\n\x1a\nthis is not a png".to_vec().into(),
                    )),
                    ..Default::default()
                }
            } else {
                mnist_req(&format!("frame-{i}"), ds.images.image(i))
            }
        })
        .collect();
    let mut responses = c
        .classify_stream(tokio_stream::iter(frames))
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(r) = responses.next().await {
        got.push(r.expect("the stream itself never fails"));
    }
    assert_eq!(got.len(), 1000, "every frame answered, then a clean end");
    let mut right = 0;
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.id, format!("frame-{i}"), "order and ids kept");
        if i == 500 {
            let e = r
                .error
                .as_ref()
                .expect("the corrupt frame carries its own error");
            assert_eq!(e.code, Code::InvalidArgument as i32);
            assert!(e.message.contains("PNG"), "{}", e.message);
        } else {
            assert!(r.error.is_none(), "frame {i}: {:?}", r.error);
            right += usize::from(r.digit == u32::from(ds.labels[i]));
        }
    }
    assert!(right >= 980, "{right}/999 right");
}

/// Stream frames answered between a unary call's send and its answer,
/// while that stream keeps 1,000 frames queued on one session.
async fn frames_served_ahead_of_a_unary_call(policy: &str) -> usize {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let server = TestServer::start(&[
        "--sessions",
        "1",
        "--max-batch-size",
        "1",
        "--max-frames-in-flight",
        "1000",
        "--queue-policy",
        policy,
    ]);
    server.wait_serving().await;
    let ds = test_set();
    let frames: Vec<ClassifyRequest> = (0..3000)
        .map(|i| mnist_req(&i.to_string(), ds.images.image(i % 1000)))
        .collect();
    let mut responses = server
        .client()
        .await
        .classify_stream(tokio_stream::iter(frames))
        .await
        .unwrap()
        .into_inner();
    let answered = Arc::new(AtomicUsize::new(0));
    let counter = answered.clone();
    let reader = tokio::spawn(async move {
        while let Some(r) = responses.next().await {
            assert!(r.unwrap().error.is_none());
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    // Once answers flow, the server holds its full window of frames.
    while answered.load(Ordering::SeqCst) < 50 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut c = server.client().await;
    let before = answered.load(Ordering::SeqCst);
    let r = c
        .classify(mnist_req("call", ds.images.image(0)))
        .await
        .unwrap()
        .into_inner();
    let ahead = answered.load(Ordering::SeqCst) - before;
    assert_eq!(r.digit, u32::from(ds.labels[0]));
    reader.await.unwrap();
    assert_eq!(answered.load(Ordering::SeqCst), 3000, "no frame lost");
    ahead
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_calls_go_ahead_of_a_streams_queued_frames() {
    let priority = frames_served_ahead_of_a_unary_call("priority").await;
    let fifo = frames_served_ahead_of_a_unary_call("fifo").await;
    eprintln!("frames answered ahead of the call: priority {priority}, fifo {fifo}");
    // FIFO shows the queue was really there; priority skips it.
    // The margin on priority allows the call ~100 ms on a slow machine.
    assert!(fifo >= 500, "fifo: only {fifo} frames were ahead");
    assert!(priority <= 100, "priority: {priority} frames went first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_each_get_their_own_answer_in_shared_batches() {
    let server = TestServer::start(&[]);
    server.wait_serving().await;
    let ds = test_set();
    let c = server.client().await;
    // What each image gets on its own.
    let mut alone = Vec::new();
    for i in 0..1000 {
        let r = c
            .clone()
            .classify(mnist_req("", ds.images.image(i)))
            .await
            .unwrap()
            .into_inner();
        alone.push(r.probabilities);
    }
    let before = parse_metrics(&server.scrape());
    let batches_before = metric(&before, "mnister_batch_size_count", &[]);
    // 2,000 at once, each image twice, in a shuffled order.
    let mut tasks = Vec::new();
    for k in 0..2000usize {
        let i = (k * 7919) % 1000;
        let mut c = c.clone();
        let img = ds.images.image(i).to_vec();
        tasks.push(tokio::spawn(async move {
            let r = c
                .classify(mnist_req(&format!("{k}:{i}"), &img))
                .await
                .unwrap()
                .into_inner();
            (k, i, r)
        }));
    }
    for t in tasks {
        let (k, i, r) = t.await.unwrap();
        assert_eq!(r.id, format!("{k}:{i}"));
        let diff = r
            .probabilities
            .iter()
            .zip(&alone[i])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            diff < 1e-4,
            "request {k} (image {i}) got another request's answer: {diff}"
        );
    }
    let after = parse_metrics(&server.scrape());
    let batches = metric(&after, "mnister_batch_size_count", &[]) - batches_before;
    let images = metric(&after, "mnister_batch_size_sum", &[])
        - metric(&before, "mnister_batch_size_sum", &[]);
    assert_eq!(images, 2000.0);
    assert!(
        images / batches > 1.5,
        "no batching under load: {images} images in {batches} batches"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_have_every_series_from_the_first_scrape() {
    let server = TestServer::start(&[]);
    server.wait_serving().await;
    let text = server.scrape();
    let samples = parse_metrics(&text);
    let has = |name: &str| samples.iter().any(|s| s.name == name);
    for name in [
        "mnister_requests_total",
        "mnister_queue_depth",
        "mnister_inflight_requests",
        "mnister_predictions_total",
        "mnister_abstained_total",
        "mnister_model_info",
        "mnister_dropped_requests_total",
    ] {
        assert!(has(name), "{name} missing from:\n{text}");
    }
    for lane in ["single", "stream"] {
        assert!(
            samples.iter().any(|s| s.name == "mnister_queue_depth"
                && s.labels.iter().any(|(k, v)| k == "lane" && v == lane)),
            "mnister_queue_depth{{lane={lane:?}}} missing"
        );
    }
    for h in [
        "mnister_request_duration_seconds",
        "mnister_queue_duration_seconds",
        "mnister_preprocess_duration_seconds",
        "mnister_inference_duration_seconds",
        "mnister_batch_size",
    ] {
        for suffix in ["_bucket", "_sum", "_count"] {
            assert!(
                has(&format!("{h}{suffix}")),
                "{h}{suffix} missing from:\n{text}"
            );
        }
        assert!(
            text.contains(&format!("# TYPE {h} histogram")),
            "{h} is not a histogram"
        );
    }
    for d in 0..10 {
        let d = d.to_string();
        assert!(samples.iter().any(|s| s.name == "mnister_predictions_total"
            && s.labels.contains(&("digit".into(), d.clone()))));
    }
    assert_eq!(
        metric(
            &samples,
            "mnister_requests_total",
            &[("rpc", "Classify"), ("code", "INVALID_ARGUMENT")]
        ),
        0.0
    );
    // Sub-millisecond latency buckets.
    assert!(
        text.contains("mnister_inference_duration_seconds_bucket{le=\"0.0001\"}"),
        "{text}"
    );
    assert!(
        text.contains("mnister_batch_size_bucket{le=\"4\"}"),
        "{text}"
    );
    let info: Vec<_> = samples
        .iter()
        .filter(|s| s.name == "mnister_model_info")
        .collect();
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].value, 1.0);
    assert!(
        info[0]
            .labels
            .iter()
            .any(|(k, v)| k == "sha256" && v.len() == 64)
    );

    // Traffic moves the counters.
    let mut c = server.client().await;
    let ds = test_set();
    let r = c
        .classify(mnist_req("x", ds.images.image(0)))
        .await
        .unwrap()
        .into_inner();
    let _ = c.classify(ClassifyRequest::default()).await.unwrap_err();
    let samples = parse_metrics(&server.scrape());
    assert_eq!(
        metric(
            &samples,
            "mnister_requests_total",
            &[("rpc", "Classify"), ("code", "OK")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &samples,
            "mnister_requests_total",
            &[("rpc", "Classify"), ("code", "INVALID_ARGUMENT")]
        ),
        1.0
    );
    let d = r.digit.to_string();
    assert_eq!(
        metric(&samples, "mnister_predictions_total", &[("digit", &d)]),
        1.0
    );
    assert_eq!(
        metric(
            &samples,
            "mnister_request_duration_seconds_count",
            &[("rpc", "Classify")]
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_goes_from_not_serving_to_serving_and_back_on_sigterm() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    // Many warm-up runs keep the server NOT_SERVING long enough to see it.
    let mut server = TestServer::start(&["--warmup-runs", "100"]);
    let mut h = HealthClient::new(server.channel().await);
    let check = |h: &mut HealthClient<_>| {
        let mut h: HealthClient<tonic::transport::Channel> = h.clone();
        async move {
            h.check(HealthCheckRequest {
                service: "mnister.v1.DigitClassifier".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status
        }
    };
    assert_eq!(check(&mut h).await, ServingStatus::NotServing as i32);
    // Calls before the model is ready are UNAVAILABLE, with a reason.
    let mut c = server.client().await;
    let e = c.get_model_info(GetModelInfoRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains("SERVING"), "{}", e.message());
    server.wait_serving().await;
    assert_eq!(check(&mut h).await, ServingStatus::Serving as i32);

    // A watcher sees NOT_SERVING once shutdown starts.
    let mut watch = h
        .clone()
        .watch(HealthCheckRequest {
            service: "mnister.v1.DigitClassifier".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );
    let status = tokio::task::spawn_blocking(move || server.terminate());
    let next = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .unwrap();
    if let Ok(Some(m)) = next {
        assert_eq!(m.status, ServingStatus::NotServing as i32);
    }
    assert!(status.await.unwrap().success(), "SIGTERM must exit 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_service() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let server = TestServer::start(&[]);
    let mut r = ServerReflectionClient::new(server.channel().await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = r
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let msg = resp.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
        panic!("unexpected reflection answer {msg:?}")
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"mnister.v1.DigitClassifier"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_info_describes_the_model_and_limits() {
    let server = TestServer::start(&["--max-batch-size", "32", "--max-queue", "77"]);
    server.wait_serving().await;
    let info = server
        .client()
        .await
        .get_model_info(GetModelInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.sha256.len(), 64);
    assert!(!info.version.is_empty());
    let input = info.input.unwrap();
    assert_eq!(
        (input.name.as_str(), input.shape),
        ("image", vec![-1, 1, 28, 28])
    );
    assert_eq!(info.output.unwrap().shape, vec![-1, 10]);
    assert_eq!(info.labels.len(), 10);
    assert!(info.accuracy["test"] >= 0.99, "{:?}", info.accuracy);
    let l = info.limits.unwrap();
    assert_eq!((l.max_batch_size, l.max_queue), (32, 77));
    assert_eq!(l.queue_policy, "priority", "the default");
    assert!(l.max_image_bytes > 0 && l.max_pixels > 0 && l.max_frames_in_flight_per_stream > 0);
    assert_eq!(info.precision, "fp32");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_is_resource_exhausted_at_once() {
    let server = TestServer::start(&[
        "--max-queue",
        "2",
        "--sessions",
        "1",
        "--preprocess-threads",
        "1",
    ]);
    server.wait_serving().await;
    let c = server.client().await;
    // Large canvases keep the preprocessing busy while more calls arrive.
    let big = png(&image::DynamicImage::ImageLuma8(image::imageops::resize(
        &canvas_gray(test_set().images.image(0)),
        2000,
        2000,
        image::imageops::FilterType::Nearest,
    )));
    let mut tasks = Vec::new();
    for _ in 0..60 {
        let mut c = c.clone();
        let big = big.clone();
        tasks.push(tokio::spawn(
            async move { c.classify(image_req(big)).await },
        ));
    }
    let mut codes: HashMap<Code, usize> = HashMap::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => *codes.entry(Code::Ok).or_default() += 1,
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                assert!(s.message().contains("capacity"), "{}", s.message());
                *codes.entry(s.code()).or_default() += 1;
            }
        }
    }
    assert!(
        codes.get(&Code::ResourceExhausted).copied().unwrap_or(0) > 0,
        "{codes:?}"
    );
    assert!(codes.get(&Code::Ok).copied().unwrap_or(0) > 0, "{codes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_deadline_never_reaches_the_model() {
    // The worker holds a batch open for 500 ms; the request allows 100 ms.
    let server = TestServer::start(&["--max-batch-delay", "500ms"]);
    server.wait_serving().await;
    let mut c = server.client().await;
    let mut req = tonic::Request::new(mnist_req("late", test_set().images.image(0)));
    req.set_timeout(Duration::from_millis(100));
    let e = c.classify(req).await.unwrap_err();
    // The server answers DEADLINE_EXCEEDED just before the deadline; tonic's
    // client enforces the same deadline itself and, if its timer wins the
    // race, reports CANCELLED "Timeout expired" locally. The server's own
    // answer is checked in its metrics below.
    assert!(
        e.code() == Code::DeadlineExceeded
            || (e.code() == Code::Cancelled && e.message().contains("Timeout")),
        "{e:?}"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    let m = parse_metrics(&server.scrape());
    assert_eq!(
        metric(
            &m,
            "mnister_dropped_requests_total",
            &[("reason", "deadline_exceeded")]
        ),
        1.0
    );
    assert_eq!(
        metric(&m, "mnister_batch_size_count", &[]),
        0.0,
        "the expired request was run"
    );
    assert_eq!(
        metric(
            &m,
            "mnister_requests_total",
            &[("rpc", "Classify"), ("code", "DEADLINE_EXCEEDED")]
        ),
        1.0
    );
}

/// A small, well-formed PNG whose header claims `w`x`h` pixels: a
/// decompression bomb if anyone decoded it.
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    }
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut z, &vec![0u8; 1 << 16]).unwrap();
    let idat = z.finish().unwrap();
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &idat);
    chunk(&mut out, b"IEND", &[]);
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_are_invalid_argument_and_the_server_keeps_serving() {
    let server = TestServer::start(&["--max-image-bytes", "200000"]);
    server.wait_serving().await;
    let mut c = server.client().await;
    let ds = test_set();
    let good_png = png(&image::DynamicImage::ImageLuma8(canvas_gray(
        ds.images.image(0),
    )));
    let mut rng_bytes = vec![0u8; 5000];
    let mut x = 12345u32;
    for b in &mut rng_bytes {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    let blank = png(&image::DynamicImage::ImageLuma8(
        image::GrayImage::from_pixel(100, 100, image::Luma([255])),
    ));
    let cases: Vec<(&str, ClassifyRequest, &str)> = vec![
        ("empty bytes", image_req(vec![]), "empty"),
        (
            "truncated PNG",
            image_req(good_png[..good_png.len() / 2].to_vec()),
            "PNG",
        ),
        ("random bytes", image_req(rng_bytes), "format"),
        (
            "over the byte limit",
            image_req(vec![0u8; 300_000]),
            "limit",
        ),
        (
            "100000x100000 header",
            image_req(png_claiming(100_000, 100_000)),
            "pixels",
        ),
        (
            "pixels size mismatch",
            ClassifyRequest {
                input: Some(Input::Pixels(RawPixels {
                    width: 10,
                    height: 10,
                    data: vec![0; 99].into(),
                })),
                ..Default::default()
            },
            "10x10",
        ),
        ("all-blank image", image_req(blank), "blank"),
        ("mnist with 783 bytes", mnist_req("", &[0u8; 783]), "784"),
        ("no input", ClassifyRequest::default(), "no input"),
    ];
    for (what, req, needle) in cases {
        let started = std::time::Instant::now();
        let e = c.classify(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
        assert!(
            e.message().contains(needle),
            "{what}: message {:?} should mention {needle:?}",
            e.message()
        );
        if what.contains("100000") {
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "the huge header was decoded"
            );
        }
        // And the server still answers.
        let ok = c
            .classify(mnist_req("ok", ds.images.image(0)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ok.digit, u32::from(ds.labels[0]));
    }
}

#[test]
fn missing_or_broken_onnxruntime_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("libonnxruntime.so");
    std::fs::write(&broken, b"this is not a shared library").unwrap();
    for lib in [dir.path().join("nowhere/libonnxruntime.so"), broken] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mnister-server"))
            .args([
                "--grpc-addr",
                "127.0.0.1:0",
                "--metrics-addr",
                "127.0.0.1:0",
                "--http-addr",
                "127.0.0.1:0",
                "--ort-lib",
            ])
            .arg(&lib)
            .arg("--model")
            .arg(crate::common::default_model())
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "started without a usable ONNX Runtime"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&lib.display().to_string()), "{err}");
        assert!(
            err.contains("scripts/setup-onnxruntime.sh"),
            "no fix suggested: {err}"
        );
    }
}

#[test]
fn a_file_that_is_not_a_model_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("model.onnx");
    std::fs::write(&bad, b"\x08\x07garbage").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mnister-server"))
        .args([
            "--grpc-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--model",
        ])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a valid ONNX model") && err.contains("model.onnx"),
        "{err}"
    );
}

/// Waits (bounded) until the server has accepted a connection from each of
/// `clients` (matched by the client's own address), and returns those
/// sockets' TCP_NODELAY, keyed by the server port they arrived on.
pub async fn nodelay_of(server: &TestServer, clients: &[std::net::SocketAddr]) -> Vec<(u16, bool)> {
    for _ in 0..100 {
        let socks = server.accepted_sockets();
        let found: Vec<_> = clients
            .iter()
            .filter_map(|c| {
                socks
                    .iter()
                    .find(|(_, peer, _)| peer == c)
                    .map(|(local, _, nd)| (local.port(), *nd))
            })
            .collect();
        if found.len() == clients.len() {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the server never accepted {clients:?}: {:?}",
        server.accepted_sockets()
    );
}

/// Nagle plus a client's delayed ACK put a 40 ms tail on small responses
/// (seen from Python's grpcio). Every accepted socket of every port must
/// have TCP_NODELAY: read back from the server process's own sockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_socket_has_tcp_nodelay() {
    let server = TestServer::start(&[]);
    server.wait_serving().await;
    // gRPC: a real call on a tonic channel; the page/JSON port and /metrics:
    // plain connections, held open.
    let grpc = std::net::TcpStream::connect(server.grpc_addr).unwrap();
    let http = std::net::TcpStream::connect(server.http_addr).unwrap();
    let metrics = std::net::TcpStream::connect(server.metrics_addr).unwrap();
    let mut c = server.client().await;
    c.classify(ClassifyRequest {
        input: Some(Input::Mnist(test_set().images.image(0).to_vec().into())),
        ..Default::default()
    })
    .await
    .unwrap();
    let clients: Vec<_> = [&grpc, &http, &metrics]
        .iter()
        .map(|s| s.local_addr().unwrap())
        .collect();
    let found = nodelay_of(&server, &clients).await;
    assert_eq!(
        found,
        vec![
            (server.grpc_addr.port(), true),
            (server.http_addr.port(), true),
            (server.metrics_addr.port(), true),
        ]
    );
    // The tonic channel's own connection too.
    let all = server.accepted_sockets();
    let on_grpc: Vec<_> = all
        .iter()
        .filter(|(l, _, _)| l.port() == server.grpc_addr.port())
        .collect();
    assert!(on_grpc.len() >= 2, "{all:?}");
    assert!(all.iter().all(|(_, _, nd)| *nd), "{all:?}");
}
