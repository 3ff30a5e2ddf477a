//! Traces and structured logs against real parts: an OTLP/gRPC receiver
//! built from the official OpenTelemetry protocol definitions (the
//! `opentelemetry-proto` crate, served with tonic) receives what the real
//! server exports; the server's JSON log lines are parsed one by one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use tonic::{Request, Response, Status};

use crate::common::{TestServer, metric, parse_metrics, test_set};
use mnister::proto::v1::{ClassifyRequest, classify_request::Input};

/// What the receiver got: every span, and the resource attributes.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
    resource: Arc<Mutex<Vec<KeyValue>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        for rs in req.into_inner().resource_spans {
            if let Some(r) = rs.resource {
                *self.resource.lock().unwrap() = r.attributes;
            }
            let mut spans = self.spans.lock().unwrap();
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// A receiver on an ephemeral port; dropping the sender stops it.
async fn receiver() -> (SocketAddr, Receiver, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let r = Receiver::default();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let svc = TraceServiceServer::new(r.clone());
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = rx.await;
                },
            )
            .await;
    });
    (addr, r, tx)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
        .map(|v| match v {
            Value::StringValue(s) => s.clone(),
            Value::IntValue(i) => i.to_string(),
            Value::BoolValue(b) => b.to_string(),
            Value::DoubleValue(d) => d.to_string(),
            other => format!("{other:?}"),
        })
}

fn req(i: usize) -> ClassifyRequest {
    let ds = test_set();
    ClassifyRequest {
        id: i.to_string(),
        input: Some(Input::Mnist(ds.images.image(i).to_vec().into())),
        ..Default::default()
    }
}

/// A traced call: the caller's trace and span ids in `traceparent`.
fn traced(i: usize, trace: &str, parent: &str) -> tonic::Request<ClassifyRequest> {
    let mut r = tonic::Request::new(req(i));
    r.metadata_mut().insert(
        "traceparent",
        format!("00-{trace}-{parent}-01").parse().unwrap(),
    );
    r
}

/// Waits (bounded) until `done` holds for the received spans.
async fn wait_for(r: &Receiver, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let spans = r.spans.lock().unwrap().clone();
        if done(&spans) || Instant::now() > end {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traced_call_is_one_server_span_under_the_callers_with_its_phases() {
    let (addr, rx, _stop) = receiver().await;
    let server = TestServer::start(&["--otlp-endpoint", &format!("http://{addr}")]);
    server.wait_serving().await;
    let mut client = server.client().await;
    let (trace, parent) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    client.classify(traced(0, trace, parent)).await.unwrap();

    let spans = wait_for(&rx, |s| {
        s.iter().any(|x| x.name == "inference batch")
            && s.iter().filter(|x| hex(&x.trace_id) == trace).count() >= 6
    })
    .await;
    let ours: Vec<&Span> = spans.iter().filter(|s| hex(&s.trace_id) == trace).collect();
    let server_spans: Vec<&&Span> = ours
        .iter()
        .filter(|s| hex(&s.parent_span_id) == parent)
        .collect();
    assert_eq!(server_spans.len(), 1, "spans under the caller's: {ours:#?}");
    let call = server_spans[0];
    assert_eq!(call.name, "Classify");
    assert_eq!(call.kind, 2, "SPAN_KIND_SERVER");
    let children: HashMap<&str, &&Span> = ours
        .iter()
        .filter(|s| s.parent_span_id == call.span_id)
        .map(|s| (s.name.as_str(), s))
        .collect();
    for phase in ["admission", "preprocess", "queue", "inference", "response"] {
        assert!(
            children.contains_key(phase),
            "no {phase} span: {:?}",
            children.keys()
        );
    }
    // The batch is its own span, and the call and its inference link to it.
    let batch = spans
        .iter()
        .find(|s| s.name == "inference batch" && call.links.iter().any(|l| l.span_id == s.span_id))
        .expect("the call links to its batch");
    assert_eq!(attr(&batch.attributes, "batch_size").as_deref(), Some("1"));
    assert!(
        children["inference"]
            .links
            .iter()
            .any(|l| l.span_id == batch.span_id)
    );
    // No per-span location, thread or busy/idle attributes: they were most
    // of each exported span's bytes (docs/benchmarks.md, tracing overhead).
    for span in &ours {
        for key in [
            "code.file.path",
            "code.line.number",
            "thread.id",
            "busy_ns",
            "idle_ns",
        ] {
            assert!(
                attr(&span.attributes, key).is_none(),
                "{} carries {key}",
                span.name
            );
        }
    }
    // The resource names the service and the model that was loaded.
    let info = client
        .get_model_info(mnister::proto::v1::GetModelInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let resource = rx.resource.lock().unwrap().clone();
    assert_eq!(attr(&resource, "service.name").as_deref(), Some("mnister"));
    assert_eq!(
        attr(&resource, "mnister.model.version"),
        Some(info.version),
        "{resource:?}"
    );
    assert_eq!(
        attr(&resource, "mnister.model.precision"),
        Some(info.precision)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_sixteen_is_one_inference_span_linked_from_sixteen_calls() {
    let (addr, rx, _stop) = receiver().await;
    // One worker that waits for a full batch: 16 calls sent together are
    // one batch.
    let server = TestServer::start(&[
        "--otlp-endpoint",
        &format!("http://{addr}"),
        "--sessions",
        "1",
        "--max-batch-size",
        "16",
        "--max-batch-delay",
        "500ms",
    ]);
    server.wait_serving().await;
    let channel = server.channel().await;
    let trace = |i: usize| format!("{:032x}", 0xabc0_0000u64 + i as u64);
    let calls = (0..16).map(|i| {
        let mut c = mnister::proto::v1::digit_classifier_client::DigitClassifierClient::new(
            channel.clone(),
        );
        async move { c.classify(traced(i, &trace(i), "00f067aa0ba902b7")).await }
    });
    for r in futures_util::future::join_all(calls).await {
        r.unwrap();
    }
    let spans = wait_for(&rx, |s| {
        s.iter().filter(|x| x.name == "Classify").count() >= 16
    })
    .await;
    let calls: Vec<&Span> = spans.iter().filter(|s| s.name == "Classify").collect();
    assert_eq!(calls.len(), 16);
    let batches: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "inference batch")
        .collect();
    assert_eq!(batches.len(), 1, "{batches:#?}");
    let batch = batches[0];
    assert_eq!(attr(&batch.attributes, "batch_size").as_deref(), Some("16"));
    for c in &calls {
        assert!(
            c.links
                .iter()
                .any(|l| l.span_id == batch.span_id && l.trace_id == batch.trace_id),
            "call {} does not link to the batch",
            hex(&c.trace_id)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_going_down_under_load_fails_no_call_and_drops_are_counted() {
    let (addr, rx, stop) = receiver().await;
    let server = TestServer::start(&["--otlp-endpoint", &format!("http://{addr}")]);
    server.wait_serving().await;
    let channel = server.channel().await;
    let load = |secs: u64| {
        let channel = channel.clone();
        async move {
            let end = Instant::now() + Duration::from_secs(secs);
            let mut tasks = Vec::new();
            for t in 0..4 {
                let mut c = mnister::proto::v1::digit_classifier_client::DigitClassifierClient::new(
                    channel.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    let (mut ok, mut failed) = (0usize, 0usize);
                    let mut i = t;
                    while Instant::now() < end {
                        match c
                            .classify(traced(
                                i % 100,
                                &format!("{:032x}", i + 1),
                                "00f067aa0ba902b7",
                            ))
                            .await
                        {
                            Ok(_) => ok += 1,
                            Err(_) => failed += 1,
                        }
                        i += 4;
                    }
                    (ok, failed)
                }));
            }
            let mut total = (0, 0);
            for t in tasks {
                let (o, f) = t.await.unwrap();
                total = (total.0 + o, total.1 + f);
            }
            total
        }
    };
    let (ok1, failed1) = load(2).await;
    let received = rx.spans.lock().unwrap().len();
    drop(stop);
    let (ok2, failed2) = load(4).await;
    assert_eq!(
        (failed1, failed2),
        (0, 0),
        "calls failed while the collector was up/down"
    );
    assert!(ok1 > 50 && ok2 > 50, "{ok1} / {ok2} calls");
    assert!(
        received > 0,
        "nothing was exported while the collector was up"
    );
    // Wait for the exporter to try (bounded) and count what it lost.
    let end = Instant::now() + Duration::from_secs(15);
    let dropped = loop {
        let m = parse_metrics(&server.scrape());
        let d = metric(
            &m,
            "mnister_trace_spans_dropped_total",
            &[("reason", "export_failed")],
        ) + metric(
            &m,
            "mnister_trace_spans_dropped_total",
            &[("reason", "queue_full")],
        );
        if d > 0.0 || Instant::now() > end {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        dropped > 0.0,
        "spans exported to a dead collector were not counted as dropped"
    );
    // And serving is unaffected after it.
    let mut c = server.client().await;
    assert!(c.classify(req(1)).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_json_log_line_parses_and_lines_inside_a_request_carry_its_trace() {
    let server = TestServer::start_with_env(
        &[("RUST_LOG", "info,mnister=debug,ort=warn")],
        &["--log-format", "json"],
    );
    server.wait_serving().await;
    let mut client = server.client().await;
    let trace = "0af7651916cd43dd8448eb211c80319c";
    client
        .classify(traced(0, trace, "b7ad6b7169203331"))
        .await
        .unwrap();
    // A bad request logs inside its span too.
    let mut bad = traced(0, trace, "b7ad6b7169203331");
    bad.get_mut().input = Some(Input::Mnist(vec![1u8; 3].into()));
    assert!(client.classify(bad).await.is_err());
    let mut server = server;
    server.terminate();
    let lines = server.log.lock().unwrap().clone();
    assert!(lines.len() > 3, "{lines:?}");
    let mut in_request = 0;
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for key in ["timestamp", "level", "target", "message", "fields"] {
            assert!(v.get(key).is_some(), "no {key}: {line}");
        }
        let inside = v["spans"]
            .as_array()
            .is_some_and(|s| s.iter().any(|n| n == "request"));
        if inside {
            in_request += 1;
            assert_eq!(
                v["trace_id"], trace,
                "a line inside the request lacks its trace: {line}"
            );
            assert_eq!(v["span_id"].as_str().map(str::len), Some(16), "{line}");
        }
    }
    assert!(in_request >= 2, "no log line inside a request: {lines:#?}");
}
