//! The int8 model (issue 9) as the server and ONNX Runtime see it: the
//! committed `models/mnist-cnn.int8.onnx` says it is int8 everywhere a
//! client or an operator looks, classifies like the fp32 model, and the two
//! agree on ≥ 99.8% of the committed test sample.

use crate::common::{TestServer, parse_metrics, root, test_set};
use mnister::proto::v1::{ClassifyRequest, GetModelInfoRequest, classify_request::Input};
use mnister_core::backend::ort::{OrtBackend, init_runtime};
use mnister_core::backend::{Backend, ModelFile, argmax};
use mnister_core::preprocess::normalize_mnist;

fn int8_model() -> std::path::PathBuf {
    root().join("models/mnist-cnn.int8.onnx")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_serves_the_int8_model_and_says_so() {
    let server = TestServer::start_with_model(&int8_model(), &[]);
    server.wait_serving().await;
    let mut c = server.client().await;
    let info = c
        .get_model_info(GetModelInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.precision, "int8");
    assert!(info.version.ends_with("-int8"), "{}", info.version);
    assert!(info.accuracy["test"] >= 0.99, "{:?}", info.accuracy);
    assert!(info.metadata.contains_key("quantization"));

    let samples = parse_metrics(&server.scrape());
    let model_info: Vec<_> = samples
        .iter()
        .filter(|s| s.name == "mnister_model_info" && s.value == 1.0)
        .collect();
    assert_eq!(model_info.len(), 1);
    assert!(
        model_info[0]
            .labels
            .contains(&("precision".into(), "int8".into())),
        "{:?}",
        model_info[0].labels
    );

    let ds = test_set();
    let n = 200;
    let mut right = 0;
    for i in 0..n {
        let r = c
            .classify(ClassifyRequest {
                id: i.to_string(),
                input: Some(Input::Mnist(ds.images.image(i).to_vec().into())),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.probabilities.len(), 10);
        assert!((r.probabilities.iter().sum::<f32>() - 1.0).abs() < 1e-3);
        assert_eq!(r.model_version, info.version);
        right += usize::from(r.digit == u32::from(ds.labels[i]));
    }
    assert!(right >= n * 97 / 100, "{right}/{n}");
}

#[test]
fn committed_int8_model_agrees_with_fp32_on_the_test_sample() {
    let env = init_runtime(None).expect("ONNX Runtime (scripts/setup-onnxruntime.sh)");
    let fp32 = crate::common::model_file(&crate::common::default_model());
    let int8 = crate::common::model_file(&int8_model());
    assert_eq!(int8.metadata["precision"], "int8");
    assert_eq!(int8.metadata["quantization.fp32_sha256"], fp32.sha256);
    let ds = test_set();
    let flat: Vec<f32> = (0..ds.len())
        .flat_map(|i| normalize_mnist(ds.images.image(i)).unwrap())
        .collect();
    let run = |m: &ModelFile| {
        let mut b = OrtBackend::for_model(env, m, 2).unwrap();
        flat.chunks(256 * 784)
            .flat_map(|c| b.infer(c, c.len() / 784).unwrap())
            .collect::<Vec<f32>>()
    };
    let (a, b) = (run(&fp32), run(&int8));
    let same = a
        .chunks(10)
        .zip(b.chunks(10))
        .filter(|(x, y)| argmax(x) == argmax(y))
        .count();
    let agreement = same as f64 / ds.len() as f64;
    assert!(
        agreement >= 0.998,
        "fp32 and int8 agree on {same}/{} images",
        ds.len()
    );
}
