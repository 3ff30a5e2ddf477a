//! Every limit at its edge: the value itself is accepted, one past it is
//! refused with a status that names the limit, and GetModelInfo reports it.

use std::time::Duration;

use crate::common::{TestServer, canvas_gray, metric, parse_metrics, png, test_set};
use mnister::proto::v1::{
    ClassifyRequest, GetModelInfoRequest, RawPixels, classify_request::Input,
};
use tokio_stream::StreamExt;
use tonic::Code;

fn image_req(bytes: Vec<u8>) -> ClassifyRequest {
    ClassifyRequest {
        input: Some(Input::Image(bytes.into())),
        ..Default::default()
    }
}

fn mnist_req(id: &str, i: usize) -> ClassifyRequest {
    ClassifyRequest {
        id: id.into(),
        input: Some(Input::Mnist(test_set().images.image(i).to_vec().into())),
        ..Default::default()
    }
}

/// A digit drawn on a `w`x`h` white canvas.
fn digit_png(w: u32, h: u32) -> Vec<u8> {
    let g = image::imageops::resize(
        &canvas_gray(test_set().images.image(0)),
        w,
        h,
        image::imageops::FilterType::Triangle,
    );
    png(&image::DynamicImage::ImageLuma8(g))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_model_info_reports_every_limit() {
    let server = TestServer::start(&[
        "--max-image-bytes",
        "123456",
        "--max-pixels",
        "654321",
        "--max-message-bytes",
        "222222",
        "--max-frames-in-flight",
        "7",
        "--max-concurrent-streams",
        "9",
        "--request-timeout",
        "1500ms",
        "--max-batch-size",
        "16",
        "--max-queue",
        "99",
        "--queue-policy",
        "fifo",
    ]);
    server.wait_serving().await;
    let l = server
        .client()
        .await
        .get_model_info(GetModelInfoRequest {})
        .await
        .unwrap()
        .into_inner()
        .limits
        .unwrap();
    assert_eq!(l.max_image_bytes, 123_456);
    assert_eq!(l.max_pixels, 654_321);
    assert_eq!(l.max_message_bytes, 222_222);
    assert_eq!(l.max_frames_in_flight_per_stream, 7);
    assert_eq!(l.max_concurrent_streams_per_connection, 9);
    assert_eq!(l.default_timeout_ms, 1500);
    assert_eq!((l.max_batch_size, l.max_queue), (16, 99));
    assert_eq!(l.queue_policy, "fifo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_bytes_and_pixels_at_the_edge() {
    let exact = digit_png(200, 200);
    let bytes = exact.len().to_string();
    // 200x200 = 40,000 pixels is the limit.
    let server = TestServer::start(&["--max-image-bytes", &bytes, "--max-pixels", "40000"]);
    server.wait_serving().await;
    let mut c = server.client().await;
    let label = u32::from(test_set().labels[0]);

    // Exactly the byte limit: accepted.
    let r = c.classify(image_req(exact.clone())).await.unwrap();
    assert_eq!(r.into_inner().digit, label);
    // One byte more (trailing data after IEND decodes fine): refused.
    let mut over = exact.clone();
    over.push(0);
    let e = c.classify(image_req(over)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains(&bytes) && e.message().contains("limit"),
        "{}",
        e.message()
    );

    // Pixels: 200x200 accepted, 200x201 refused from the header, whether the
    // image is encoded or raw.
    let server = TestServer::start(&["--max-pixels", "40000"]);
    server.wait_serving().await;
    let mut c = server.client().await;
    assert!(c.classify(image_req(digit_png(200, 200))).await.is_ok());
    let e = c
        .classify(image_req(digit_png(200, 201)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("40200") && e.message().contains("40000"),
        "{}",
        e.message()
    );
    let raw = |w: u32, h: u32| ClassifyRequest {
        input: Some(Input::Pixels(RawPixels {
            width: w,
            height: h,
            data: canvas_gray(test_set().images.image(0))
                .pixels()
                .map(|p| p.0[0])
                .cycle()
                .take((w * h) as usize)
                .collect(),
        })),
        ..Default::default()
    };
    // Content aside, the size decides: 200x200 passes the limit check.
    let ok = c.classify(raw(200, 200)).await;
    assert!(
        ok.as_ref()
            .map_or_else(|e| !e.message().contains("pixels"), |_| true),
        "{ok:?}"
    );
    let e = c.classify(raw(201, 200)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("40000"), "{}", e.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_size_over_the_limit_is_resource_exhausted() {
    let server = TestServer::start(&["--max-message-bytes", "4096", "--max-image-bytes", "4000"]);
    server.wait_serving().await;
    let mut c = server.client().await;
    // A message of exactly 4096 bytes: 1 tag byte + 2 length bytes + data.
    let fits = image_req(vec![0u8; 4093]);
    assert_eq!(prost::Message::encoded_len(&fits), 4096);
    let e = c.classify(fits).await.unwrap_err();
    // Decoded fine; refused by the image limit, not the message limit.
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let too_big = image_req(vec![0u8; 4094]);
    let e = c.classify(too_big.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("4097 bytes") && e.message().contains("4096"),
        "{}",
        e.message()
    );
    // In a stream: the frames before it are answered, then the call ends
    // with the same status.
    let frames = vec![mnist_req("a", 0), mnist_req("b", 1), too_big];
    let mut out = c
        .classify_stream(tokio_stream::iter(frames))
        .await
        .unwrap()
        .into_inner();
    let mut ids = Vec::new();
    let end = loop {
        match out.next().await {
            Some(Ok(r)) => ids.push(r.id),
            Some(Err(s)) => break Some(s),
            None => break None,
        }
    };
    assert_eq!(ids, ["a", "b"]);
    let s = end.expect("the stream should end with an error");
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    // The server is fine.
    assert!(c.classify(mnist_req("after", 0)).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_per_connection_are_capped() {
    let server = TestServer::start(&["--max-concurrent-streams", "2"]);
    server.wait_serving().await;
    // One channel is one HTTP/2 connection.
    let c = server.client().await;
    let mut held = Vec::new();
    for k in 0..2 {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(mnist_req(&format!("s{k}"), k)).await.unwrap();
        let mut out = c
            .clone()
            .classify_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        assert!(out.next().await.unwrap().is_ok());
        held.push((tx, out));
    }
    // A third call on the same connection waits for a free stream.
    let mut third = c.clone();
    let waiting = tokio::spawn(async move { third.classify(mnist_req("third", 2)).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "a third stream ran on a connection capped at 2"
    );
    let m = parse_metrics(&server.scrape());
    assert_eq!(
        metric(
            &m,
            "mnister_requests_total",
            &[("rpc", "Classify"), ("code", "OK")]
        ),
        0.0
    );
    // Closing one stream lets it through.
    let (tx, mut out) = held.pop().unwrap();
    drop(tx);
    while out.next().await.is_some() {}
    let r = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting call never ran")
        .unwrap()
        .unwrap();
    assert_eq!(r.into_inner().digit, u32::from(test_set().labels[2]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_in_flight_bound_a_stream_that_is_not_read() {
    let server = TestServer::start(&["--max-frames-in-flight", "4"]);
    server.wait_serving().await;
    // HTTP/2's smallest stream window (64 KiB), so that what a stalled
    // reader's client buffers is small and the server's own bound shows. The
    // connection window stays large: h2 sizes its budget of buffered small
    // DATA frames from it, and below ~200 frames it would tear down its own
    // connection (ENHANCE_YOUR_CALM) before the test could look.
    let ch = tonic::transport::Endpoint::from_shared(server.url())
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(4 << 20)
        .connect()
        .await
        .unwrap();
    let mut c = mnister::proto::v1::digit_classifier_client::DigitClassifierClient::new(ch);
    let n = 3_000usize;
    let frames = tokio_stream::iter((0..n).map(|k| mnist_req(&k.to_string(), k % 1000)));
    let mut out = c.classify_stream(frames).await.unwrap().into_inner();
    // Read one answer, then stop reading.
    assert!(out.next().await.unwrap().is_ok());
    let answered = || {
        metric(
            &parse_metrics(&server.scrape()),
            "mnister_requests_total",
            &[("rpc", "ClassifyStream"), ("code", "OK")],
        )
    };
    // Wait until the server stops (the count holds still for a second).
    let mut inflight_max = 0f64;
    let mut last = -1.0;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let m = parse_metrics(&server.scrape());
        inflight_max = inflight_max.max(metric(&m, "mnister_inflight_requests", &[]));
        let now = answered();
        if now == last {
            break;
        }
        last = now;
    }
    // What it answered is bounded by the window plus what HTTP/2 lets sit in
    // the client's 64 KiB receive window (several hundred small responses),
    // far short of the n sent.
    assert!(inflight_max <= 4.0, "inflight {inflight_max}");
    assert!(
        last < (n / 2) as f64,
        "{last} of {n} answered to a reader that stopped"
    );
    // Reading again drains everything, in order.
    let mut next = 1usize;
    while let Some(r) = out.next().await {
        assert_eq!(r.unwrap().id, next.to_string());
        next += 1;
    }
    assert_eq!(next, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_timeout_applies_without_a_client_deadline() {
    // The worker holds each batch open for 1 s; the default timeout is 200 ms.
    let server = TestServer::start(&["--request-timeout", "200ms", "--max-batch-delay", "1s"]);
    server.wait_serving().await;
    let mut c = server.client().await;
    // Had the default not applied, the call would wait out the batch and pass.
    let e = c.classify(mnist_req("x", 0)).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    // A client deadline longer than the default wins over it.
    let mut req = tonic::Request::new(mnist_req("y", 0));
    req.set_timeout(Duration::from_secs(5));
    assert!(c.classify(req).await.is_ok());
    // Stream frames each get the default from their own arrival: a stream
    // older than the default still has its later frames served.
    let server = TestServer::start(&["--request-timeout", "300ms"]);
    server.wait_serving().await;
    let mut c = server.client().await;
    let frames = async_stream_of_spaced_frames();
    let responses: Vec<_> = c
        .classify_stream(frames)
        .await
        .unwrap()
        .into_inner()
        .collect()
        .await;
    assert_eq!(responses.len(), 4);
    for r in responses {
        let r = r.unwrap();
        assert!(r.error.is_none(), "frame {} failed: {:?}", r.id, r.error);
    }
}

/// Four frames, 150 ms apart: the stream lives 450 ms, past a 300 ms default.
fn async_stream_of_spaced_frames() -> impl tokio_stream::Stream<Item = ClassifyRequest> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        for k in 0..4 {
            if k > 0 {
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            if tx.send(mnist_req(&k.to_string(), k)).await.is_err() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
