//! The KServe v2 / Triton endpoint: Triton's own Python client unchanged,
//! and the checks that need a raw protobuf client (typed contents, data
//! isolation inside shared batches, validation before batching).

use std::process::Command;

use crate::common::{TestServer, root, test_set};
use mnister::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use mnister::proto::inference::model_infer_request::{
    InferInputTensor, InferRequestedOutputTensor,
};
use mnister::proto::inference::{InferTensorContents, ModelInferRequest, ModelInferResponse};
use tonic::Code;

pub fn python() -> String {
    std::env::var("KSERVE_PYTHON")
        .unwrap_or_else(|_| root().join(".venv-triton/bin/python").display().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_works_unchanged() {
    let py = python();
    assert!(
        std::path::Path::new(&py).exists(),
        "{py} not found: scripts/test.sh creates .venv-triton with tests/kserve/requirements.txt (or set KSERVE_PYTHON)"
    );
    let server = TestServer::start(&[]);
    server.wait_serving().await;
    let out = Command::new(&py)
        .arg(root().join("tests/kserve/check_tritonclient.py"))
        .arg(server.grpc_addr.to_string())
        .arg(root().join("tests/data/mnist"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("all tritonclient checks passed"), "{text}");
}

pub fn uint8_request(id: &str, images: &[&[u8]]) -> ModelInferRequest {
    ModelInferRequest {
        model_name: "mnist".into(),
        id: id.into(),
        inputs: vec![InferInputTensor {
            name: "image".into(),
            datatype: "UINT8".into(),
            shape: vec![images.len() as i64, 28, 28],
            contents: Some(InferTensorContents {
                uint_contents: images
                    .iter()
                    .flat_map(|i| i.iter().map(|&b| u32::from(b)))
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub fn probs(r: &ModelInferResponse) -> Vec<f32> {
    let i = r
        .outputs
        .iter()
        .position(|o| o.name == "probabilities")
        .unwrap();
    r.raw_output_contents[i]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_data_crosses_between_requests_in_a_batch() {
    let server = TestServer::start(&[]);
    server.wait_serving().await;
    let ds = test_set();
    let c = GrpcInferenceServiceClient::new(server.channel().await);
    // Each image alone first.
    let mut alone = Vec::new();
    for i in 0..100 {
        let r = c
            .clone()
            .model_infer(uint8_request("", &[ds.images.image(i)]))
            .await
            .unwrap()
            .into_inner();
        alone.push(probs(&r));
    }
    // Then 300 concurrent requests of 1 to 4 images each, typed contents.
    let mut tasks = Vec::new();
    for k in 0..300usize {
        let n = 1 + k % 4;
        let idx: Vec<usize> = (0..n).map(|j| (k * 37 + j * 11) % 100).collect();
        let imgs: Vec<Vec<u8>> = idx.iter().map(|&i| ds.images.image(i).to_vec()).collect();
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            let refs: Vec<&[u8]> = imgs.iter().map(|v| v.as_slice()).collect();
            let r = c
                .model_infer(uint8_request(&k.to_string(), &refs))
                .await
                .unwrap()
                .into_inner();
            (k, idx, r)
        }));
    }
    for t in tasks {
        let (k, idx, r) = t.await.unwrap();
        assert_eq!(r.id, k.to_string());
        let p = probs(&r);
        assert_eq!(p.len(), idx.len() * 10);
        for (j, &i) in idx.iter().enumerate() {
            let diff = p[j * 10..(j + 1) * 10]
                .iter()
                .zip(&alone[i])
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                diff < 1e-4,
                "request {k} image {j} got another image's answer ({diff})"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_contents_and_validation_before_batching() {
    let server = TestServer::start(&[]);
    server.wait_serving().await;
    let ds = test_set();
    let mut c = GrpcInferenceServiceClient::new(server.channel().await);

    // FP32 as fp32_contents, only the digit requested.
    let mut req = ModelInferRequest {
        model_name: "mnist".into(),
        inputs: vec![InferInputTensor {
            name: "image".into(),
            datatype: "FP32".into(),
            shape: vec![2, 1, 28, 28],
            contents: Some(InferTensorContents {
                fp32_contents: (0..2)
                    .flat_map(|i| ds.images.image(i).iter().map(|&b| f32::from(b) / 255.0))
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        outputs: vec![InferRequestedOutputTensor {
            name: "digit".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let r = c.model_infer(req.clone()).await.unwrap().into_inner();
    assert_eq!(r.outputs.len(), 1);
    assert_eq!(
        (r.outputs[0].name.as_str(), r.outputs[0].shape.clone()),
        ("digit", vec![2])
    );
    let digits: Vec<i64> = r.raw_output_contents[0]
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(
        digits,
        vec![i64::from(ds.labels[0]), i64::from(ds.labels[1])]
    );

    let m = crate::common::parse_metrics(&server.scrape());
    let batched_before = crate::common::metric(&m, "mnister_batch_size_sum", &[]);
    // Invalid requests: each gets INVALID_ARGUMENT naming the tensor, and none reaches the model.
    let mut cases: Vec<(ModelInferRequest, &str)> = Vec::new();
    let mut both = req.clone();
    both.raw_input_contents = vec![vec![0u8; 2 * 784 * 4].into()];
    cases.push((both, "both"));
    let mut short = req.clone();
    short.inputs[0]
        .contents
        .as_mut()
        .unwrap()
        .fp32_contents
        .pop();
    cases.push((short, "1568 fp32_contents"));
    let mut nan = req.clone();
    nan.inputs[0].contents.as_mut().unwrap().fp32_contents[5] = f32::NAN;
    cases.push((nan, "finite"));
    let mut wrong_name = req.clone();
    wrong_name.inputs[0].name = "pixels".into();
    cases.push((wrong_name, "\"image\""));
    let mut bad_out = req.clone();
    bad_out.outputs[0].name = "logits".into();
    cases.push((bad_out, "unknown output"));
    let mut big = uint8_request("", &[ds.images.image(0)]);
    big.inputs[0].contents.as_mut().unwrap().uint_contents[3] = 300;
    cases.push((big, "8 bits"));
    let mut two_raw = uint8_request("", &[ds.images.image(0)]);
    two_raw.inputs[0].contents = None;
    two_raw.raw_input_contents = vec![vec![0; 784].into(), vec![0; 784].into()];
    cases.push((two_raw, "2 entries"));
    for (r, needle) in cases {
        let e = c.model_infer(r).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(
            e.message().contains(needle),
            "{:?} should mention {needle:?}",
            e.message()
        );
    }
    let m = crate::common::parse_metrics(&server.scrape());
    assert_eq!(
        crate::common::metric(&m, "mnister_batch_size_sum", &[]),
        batched_before,
        "an invalid request was batched"
    );

    // Unknown model or version: NOT_FOUND.
    req.model_name = "resnet".into();
    assert_eq!(
        c.model_infer(req.clone()).await.unwrap_err().code(),
        Code::NotFound
    );
    req.model_name = "mnist".into();
    req.model_version = "999".into();
    let e = c.model_infer(req).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("loaded version"), "{}", e.message());
}
