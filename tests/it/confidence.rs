//! The reject option (issue 16): a per-request `min_confidence` on every
//! front end, answers below it marked `abstained` with their digit and
//! probabilities still there, the server-wide default, the metric, and
//! INVALID_ARGUMENT for a threshold that is not a probability.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use mnister::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use mnister::proto::inference::{InferParameter, infer_parameter::ParameterChoice};
use mnister::proto::v1::{ClassifyRequest, GetModelInfoRequest, classify_request::Input};
use tonic::Code;

use crate::common::{TestServer, http_post, metric, parse_metrics, test_set};
use crate::kserve::{probs, uint8_request};

/// A threshold most answers pass and some do not, on the test sample.
const STRICT: f32 = 0.999_99;

fn req(i: usize, min_confidence: Option<f32>) -> ClassifyRequest {
    ClassifyRequest {
        id: i.to_string(),
        input: Some(Input::Mnist(test_set().images.image(i).to_vec().into())),
        min_confidence,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classify_marks_answers_below_the_threshold_and_keeps_their_probabilities() {
    let server = TestServer::start(&["--min-confidence", "0"]);
    server.wait_serving().await;
    let mut c = server.client().await;
    let mut abstained = 0;
    for i in 0..100 {
        let r = c.classify(req(i, Some(STRICT))).await.unwrap().into_inner();
        assert_eq!(r.abstained, r.confidence < STRICT, "{r:?}");
        assert_eq!(r.probabilities.len(), 10);
        let sum: f32 = r.probabilities.iter().sum();
        assert!((sum - 1.0).abs() < 1e-3, "{sum}");
        assert_eq!(r.probabilities[r.digit as usize], r.confidence);
        abstained += usize::from(r.abstained);
        // Without a threshold the server's default (here 0) applies.
        let d = c.classify(req(i, None)).await.unwrap().into_inner();
        assert!(!d.abstained);
    }
    assert!(
        abstained > 0,
        "no answer below {STRICT}; the test proves nothing"
    );
    let m = parse_metrics(&server.scrape());
    assert_eq!(
        metric(&m, "mnister_abstained_total", &[("rpc", "Classify")]),
        abstained as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_threshold_outside_zero_to_one_is_invalid_argument_everywhere() {
    let server = TestServer::start(&[]);
    server.wait_serving().await;
    let mut c = server.client().await;
    for bad in [-0.1f32, 1.5, f32::NAN] {
        let e = c.classify(req(0, Some(bad))).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad}: {e:?}");
        assert!(e.message().contains("[0, 1]"), "{}", e.message());
    }
    let body = serde_json::json!({
        "mnist": B64.encode(test_set().images.image(0)),
        "min_confidence": 2.0
    });
    let (status, text) = http_post(
        server.http_addr,
        "/v1/classify",
        "application/json",
        body.to_string().as_bytes(),
    );
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("INVALID_ARGUMENT"), "{text}");
    let mut k = GrpcInferenceServiceClient::new(server.channel().await);
    let mut r = uint8_request("k", &[test_set().images.image(0)]);
    r.parameters.insert(
        "min_confidence".into(),
        InferParameter {
            parameter_choice: Some(ParameterChoice::DoubleParam(1.5)),
        },
    );
    let e = k.model_infer(r).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_and_kserve_carry_the_threshold_and_the_mark() {
    // The server default is strict here; requests relax or keep it.
    let server = TestServer::start(&["--min-confidence", &STRICT.to_string()]);
    server.wait_serving().await;
    let info = server
        .client()
        .await
        .get_model_info(GetModelInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.limits.unwrap().default_min_confidence, STRICT);
    let mut k = GrpcInferenceServiceClient::new(server.channel().await);
    let (mut json_abstained, mut kserve_abstained) = (0, 0);
    for i in 0..60 {
        let img = test_set().images.image(i);
        // JSON: the server's default applies.
        let body = serde_json::json!({ "mnist": B64.encode(img) });
        let (status, text) = http_post(
            server.http_addr,
            "/v1/classify",
            "application/json",
            body.to_string().as_bytes(),
        );
        assert_eq!(status, 200, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let conf = v["confidence"].as_f64().unwrap() as f32;
        assert_eq!(v["abstained"].as_bool(), Some(conf < STRICT), "{text}");
        assert_eq!(v["probabilities"].as_array().unwrap().len(), 10);
        json_abstained += usize::from(conf < STRICT);
        // KServe: a request's own threshold of 0 never abstains, and asks
        // for the `abstained` output by setting it.
        let mut r = uint8_request("k", &[img]);
        r.parameters.insert(
            "min_confidence".into(),
            InferParameter {
                parameter_choice: Some(ParameterChoice::DoubleParam(0.0)),
            },
        );
        let out = k.model_infer(r).await.unwrap().into_inner();
        let at = out
            .outputs
            .iter()
            .position(|o| o.name == "abstained")
            .unwrap();
        assert_eq!(out.outputs[at].datatype, "BOOL");
        assert_eq!(out.raw_output_contents[at].as_ref(), &[0u8]);
        assert_eq!(probs(&out).len(), 10);
        // And with the server's strict default, the mark follows it.
        let mut r = uint8_request("k", &[img]);
        r.outputs = ["digit", "abstained", "probabilities"]
            .into_iter()
            .map(
                |n| mnister::proto::inference::model_infer_request::InferRequestedOutputTensor {
                    name: n.into(),
                    ..Default::default()
                },
            )
            .collect();
        let out = k.model_infer(r).await.unwrap().into_inner();
        let p = probs(&out);
        let top = p.iter().cloned().fold(0.0f32, f32::max);
        assert_eq!(
            out.raw_output_contents[1].as_ref(),
            &[u8::from(top < STRICT)]
        );
        kserve_abstained += usize::from(top < STRICT);
    }
    assert!(json_abstained > 0 && kserve_abstained > 0);
    let m = parse_metrics(&server.scrape());
    assert_eq!(
        metric(&m, "mnister_abstained_total", &[("rpc", "HttpClassify")]),
        json_abstained as f64
    );
    assert_eq!(
        metric(&m, "mnister_abstained_total", &[("rpc", "ModelInfer")]),
        kserve_abstained as f64
    );
}

/// Folding the temperature into the exported model divides the last
/// layer's logits by T: the probabilities change, the answer does not. A
/// network exported at T = 1 and at T = 2.5, both run in ONNX Runtime on
/// 10,000 MNIST images (the committed sample's 4,000 and 6,000 rotated,
/// shrunk and shifted copies of them).
#[test]
fn the_folded_temperature_changes_probabilities_and_never_the_digit() {
    use mnister_core::backend::ort::{init_runtime, open_model};
    use mnister_core::backend::{Backend, argmax};
    use mnister_core::idx::{Split, load_mnist};
    use mnister_core::preprocess::normalize_mnist;
    use mnister_train::export::to_bytes_calibrated;
    use mnister_train::model::{Arch, Cnn};
    use mnister_train::robustness::Variant;

    let env = init_runtime(None).unwrap();
    let cnn = Cnn::new(Arch::ReferenceBn, 0.25, &mnister_train::fit::device());
    let meta = std::collections::BTreeMap::new();
    let path = std::path::Path::new("calibrated.onnx");
    let (_, mut plain) = open_model(env, path, to_bytes_calibrated(&cnn, &meta, 1.0), 1).unwrap();
    let (_, mut cooled) = open_model(env, path, to_bytes_calibrated(&cnn, &meta, 2.5), 1).unwrap();

    let dir = crate::common::root().join("tests/data/mnist");
    let mut images = Vec::new();
    for split in [Split::Train, Split::Test] {
        let ds = load_mnist(&dir, split).unwrap();
        images.extend((0..ds.len()).map(|i| normalize_mnist(ds.images.image(i)).unwrap()));
    }
    let originals = images.len();
    let variants = [
        Variant::Rotate(30.0),
        Variant::ZoomOut(0.65),
        Variant::Shift(3.0),
    ];
    let copies: Vec<_> = (0..10_000 - originals)
        .map(|k| variants[k % 3].apply(k, &images[k % originals]).unwrap())
        .collect();
    images.extend(copies);
    assert_eq!(images.len(), 10_000);

    let (mut same, mut changed) = (0, 0);
    for chunk in images.chunks(500) {
        let flat: Vec<f32> = chunk.iter().flatten().copied().collect();
        let a = plain.infer(&flat, chunk.len()).unwrap();
        let b = cooled.infer(&flat, chunk.len()).unwrap();
        for (x, y) in a.chunks(10).zip(b.chunks(10)) {
            same += usize::from(argmax(x) == argmax(y));
            changed += usize::from((x[argmax(x)] - y[argmax(y)]).abs() > 1e-6);
        }
    }
    assert_eq!(
        same,
        10_000,
        "the temperature changed {} answers",
        10_000 - same
    );
    assert!(
        changed > 9_000,
        "the temperature changed only {changed} probabilities"
    );
}
