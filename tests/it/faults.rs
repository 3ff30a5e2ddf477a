//! The fast cases of the fault suite (the long ones, a 5-minute soak among
//! them, are in `scripts/faults.py`): clients that vanish, corrupt frames in
//! bulk, a model that fails on some batches, SIGTERM under load.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::{TestServer, default_model, metric, parse_metrics, test_set};
use mnister::proto::v1::{ClassifyRequest, classify_request::Input};
use prost::Message;
use tokio_stream::StreamExt;
use tonic::Code;

fn mnist_req(id: &str, i: usize) -> ClassifyRequest {
    ClassifyRequest {
        id: id.into(),
        input: Some(Input::Mnist(test_set().images.image(i).to_vec().into())),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_vanish_mid_stream_leave_nothing_behind() {
    let server = TestServer::start(&[]);
    server.wait_serving().await;
    // 16 clients, each on its own connection: send 200 frames, read 3
    // answers, then drop the call (RST_STREAM) or the whole connection.
    let mut tasks = Vec::new();
    for k in 0..16 {
        let c = server.client().await;
        tasks.push(tokio::spawn(async move {
            let mut c = c;
            let frames =
                tokio_stream::iter((0..200).map(move |i| mnist_req(&format!("{k}-{i}"), i)));
            let mut out = c.classify_stream(frames).await.unwrap().into_inner();
            for _ in 0..3 {
                assert!(out.next().await.unwrap().is_ok());
            }
            if k % 2 == 0 {
                drop(out);
            } else {
                drop((out, c));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let m = crate::common::wait_idle(&server).await;
    // Whatever was left queued for them was dropped or finished; none of it
    // hangs around, and the server answers as before.
    assert_eq!(metric(&m, "mnister_inflight_requests", &[]), 0.0);
    // Their queued frames were skipped, not run for nobody.
    assert!(
        metric(
            &m,
            "mnister_dropped_requests_total",
            &[("reason", "cancelled")]
        ) > 0.0
    );
    let mut c = server.client().await;
    let r = c
        .classify(mnist_req("after", 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.digit, u32::from(test_set().labels[0]));

    // Half-close: the client stops sending and still gets every answer,
    // then a clean end of stream.
    let frames = tokio_stream::iter((0..25).map(|i| mnist_req(&i.to_string(), i)));
    let answers: Vec<_> = c
        .classify_stream(frames)
        .await
        .unwrap()
        .into_inner()
        .collect()
        .await;
    let ids: Vec<String> = answers.into_iter().map(|r| r.unwrap().id).collect();
    assert_eq!(ids, (0..25).map(|i| i.to_string()).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_frames_one_percent_corrupt_exactly_those_fail() {
    let server = TestServer::start(&[]);
    server.wait_serving().await;
    let ds = test_set();
    let n = 10_000usize;
    let corrupt = |i: usize| i % 100 == 37;
    let frames = tokio_stream::iter((0..n).map(move |i| {
        let mut r = mnist_req(&i.to_string(), i % 2000);
        if corrupt(i) {
            // Alternate the ways a frame can be broken.
            r.input = Some(match i % 300 {
                37 => Input::Image(vec![0x89, b'P', b'N', b'G', 1, 2, 3].into()),
                137 => Input::Mnist(vec![0; 783].into()),
                _ => Input::Image(Vec::new().into()),
            });
        }
        r
    }));
    let mut c = server.client().await;
    let mut out = c.classify_stream(frames).await.unwrap().into_inner();
    let (mut next, mut failed, mut right) = (0usize, 0usize, 0usize);
    while let Some(r) = out.next().await {
        let r = r.unwrap();
        assert_eq!(r.id, next.to_string(), "answers out of order");
        match &r.error {
            Some(e) => {
                assert!(corrupt(next), "good frame {next} failed: {e:?}");
                assert_eq!(e.code, Code::InvalidArgument as i32);
                failed += 1;
            }
            None => {
                assert!(!corrupt(next), "corrupt frame {next} got an answer");
                right += usize::from(r.digit == u32::from(ds.labels[next % 2000]));
            }
        }
        next += 1;
    }
    assert_eq!((next, failed), (n, n / 100));
    // The model's accuracy on these frames, not a perfect score.
    assert!(right as f64 / (n - failed) as f64 > 0.98, "{right}");
}

/// The default model with a side branch that makes ONNX Runtime fail a
/// whole batch whenever one image has more than 500 of 784 pixels lit
/// (a Gather out of bounds); ordinary digits pass through unchanged.
fn failing_model(dir: &std::path::Path) -> std::path::PathBuf {
    use mnister_train::onnx::{
        AttributeProto, NodeProto, TensorProto, attribute_proto::AttributeType,
        tensor_proto::DataType,
    };
    let mut m =
        mnister_train::onnx::ModelProto::decode(&std::fs::read(default_model()).unwrap()[..])
            .unwrap();
    let g = m.graph.as_mut().unwrap();
    let out = g.output[0].name.clone();
    for n in &mut g.node {
        for o in &mut n.output {
            if *o == out {
                *o = "probs_clean".into();
            }
        }
    }
    let node = |op: &str, inputs: &[&str], output: &str, attrs: Vec<AttributeProto>| NodeProto {
        op_type: op.into(),
        name: format!("fault_{output}"),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute: attrs,
        ..Default::default()
    };
    let int = |name: &str, v: i64| AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: v,
        ..Default::default()
    };
    let i64s = |name: &str, v: &[i64]| TensorProto {
        name: name.into(),
        dims: vec![v.len() as i64],
        data_type: DataType::Int64 as i32,
        raw_data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ..Default::default()
    };
    g.initializer.push(TensorProto {
        name: "fault_table".into(),
        dims: vec![500],
        data_type: DataType::Float as i32,
        raw_data: vec![0; 500 * 4],
        ..Default::default()
    });
    g.initializer.push(i64s("fault_axis1", &[1]));
    let input = g.input[0].name.clone();
    g.node.extend([
        node("Flatten", &[&input], "fault_flat", vec![int("axis", 1)]),
        node(
            "ReduceSum",
            &["fault_flat", "fault_axis1"],
            "fault_sum",
            vec![int("keepdims", 0)],
        ),
        node(
            "Cast",
            &["fault_sum"],
            "fault_index",
            vec![int("to", DataType::Int64 as i64)],
        ),
        node(
            "Gather",
            &["fault_table", "fault_index"],
            "fault_zero",
            vec![int("axis", 0)],
        ),
        node(
            "Unsqueeze",
            &["fault_zero", "fault_axis1"],
            "fault_col",
            vec![],
        ),
        node("Add", &["probs_clean", "fault_col"], &out, vec![]),
    ]);
    let path = dir.join("failing.onnx");
    std::fs::write(&path, m.encode_to_vec()).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_batch_fails_only_its_requests_and_the_service_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let model = failing_model(dir.path());
    let server = TestServer::start_with_model(&model, &[]);
    server.wait_serving().await;
    let mut c = server.client().await;
    let ds = test_set();
    let poison = ClassifyRequest {
        id: "poison".into(),
        input: Some(Input::Mnist(vec![255; 784].into())),
        ..Default::default()
    };
    let e = c.classify(poison.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::Internal, "{e:?}");
    assert!(
        e.message().contains("inference failed") || e.message().contains("Gather"),
        "{}",
        e.message()
    );
    // The next batch is fine.
    let r = c.classify(mnist_req("good", 0)).await.unwrap().into_inner();
    assert_eq!(r.digit, u32::from(ds.labels[0]));

    // Under load: good requests interleaved with poison. Only requests that
    // shared a batch with poison may fail, and only with INTERNAL; the rest
    // are right.
    let mut tasks = Vec::new();
    for k in 0..200usize {
        let mut c = c.clone();
        let req = if k % 20 == 0 {
            poison.clone()
        } else {
            mnist_req(&k.to_string(), k)
        };
        tasks.push(tokio::spawn(async move { (k, c.classify(req).await) }));
    }
    let mut codes: HashMap<Code, usize> = HashMap::new();
    for t in tasks {
        let (k, r) = t.await.unwrap();
        match r {
            Ok(r) => {
                assert_ne!(k % 20, 0, "poison got an answer");
                assert_eq!(r.into_inner().id, k.to_string());
                *codes.entry(Code::Ok).or_default() += 1;
            }
            Err(s) => {
                assert_eq!(s.code(), Code::Internal, "{s:?}");
                *codes.entry(s.code()).or_default() += 1;
            }
        }
    }
    assert!(codes[&Code::Internal] >= 10, "{codes:?}");
    assert!(codes[&Code::Ok] > 0, "{codes:?}");
    let r = c
        .classify(mnist_req("after", 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.digit, u32::from(ds.labels[1]));
    let m = parse_metrics(&server.scrape());
    assert!(
        metric(
            &m,
            "mnister_requests_total",
            &[("rpc", "Classify"), ("code", "INTERNAL")]
        ) >= 11.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_finishes_in_flight_work_and_exits_zero() {
    // A 30 ms batch delay keeps requests in flight when the signal lands.
    let mut server = TestServer::start(&["--max-batch-delay", "30ms"]);
    server.wait_serving().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..8 {
        let c = server.client().await;
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = c;
            let mut codes: Vec<Outcome> = Vec::new();
            let mut k = w;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let r = c.classify(mnist_req(&k.to_string(), k % 1000)).await;
                codes.push(match r {
                    Ok(_) => Outcome::Ok,
                    Err(s) if s.code() == Code::Unavailable => Outcome::Unavailable,
                    // hyper's "connection closed" before the request left the
                    // client: the server never saw it (safe to retry).
                    Err(s) if format!("{s:?}").contains("connection closed") => Outcome::NeverSent,
                    Err(s) => Outcome::Other(format!("{s:?}")),
                });
                if codes.last() != Some(&Outcome::Ok) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                k += 8;
            }
            codes
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let log = server.log.clone();
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut tally: HashMap<Outcome, usize> = HashMap::new();
    for t in tasks {
        for o in t.await.unwrap() {
            *tally.entry(o).or_default() += 1;
        }
    }
    assert!(status.success(), "exit status {status:?}");
    // Everything admitted before the signal was answered (the server says
    // so, rather than "grace elapsed"); afterwards calls are refused as
    // UNAVAILABLE, by the server while it drains and then by the closed
    // port. Nothing the server received was cut off half-way.
    let log = log.lock().unwrap().join("\n");
    assert!(log.contains("all in-flight requests finished"), "{log}");
    assert!(
        tally.get(&Outcome::Ok).copied().unwrap_or(0) > 0,
        "{tally:?}"
    );
    assert!(
        tally.get(&Outcome::Unavailable).copied().unwrap_or(0) > 0,
        "{tally:?}"
    );
    for o in tally.keys() {
        assert!(
            !matches!(o, Outcome::Other(_)),
            "unexpected outcome during shutdown: {tally:?}"
        );
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Outcome {
    Ok,
    Unavailable,
    NeverSent,
    Other(String),
}
