//! ONNX export. burn imports ONNX but cannot write it, so we emit the graph
//! ourselves with the prost types generated from onnx.proto: 17 nodes, the
//! weights as initializers, softmax at the end. Batch norm, when the network
//! has it, is folded into the convolutions, so every architecture exports to
//! the reference's graph.

use std::collections::BTreeMap;

use burn::nn::conv::Conv2d;
use burn::nn::{BatchNorm, Linear};
use burn::tensor::Tensor;
use prost::Message;

use crate::graph::{f32_tensor, int, ints, node, value_info};
use crate::model::{Cnn, ConvBlock};
use crate::onnx::{GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto};

/// The ONNX operator set we target.
pub const OPSET: i64 = 13;
/// ONNX IR version 8 (ONNX 1.10+), which every ONNX Runtime since 1.10 reads.
pub(crate) const IR_VERSION: i64 = 8;
pub const INPUT: &str = "image";
pub const OUTPUT: &str = "probabilities";

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .as_slice::<f32>()
        .expect("f32 tensor")
        .to_vec()
}

/// Conv weights and bias with batch norm folded in:
/// w' = w·γ/√(σ²+ε), b' = (b−μ)·γ/√(σ²+ε) + β.
fn conv_params(conv: &Conv2d, bn: Option<&BatchNorm>) -> (Vec<i64>, Vec<f32>, Vec<f32>) {
    let dims: Vec<i64> = conv.weight.val().dims().iter().map(|&d| d as i64).collect();
    let mut w = values(conv.weight.val());
    let cout = dims[0] as usize;
    let mut b = match &conv.bias {
        Some(b) => values(b.val()),
        None => vec![0.0; cout],
    };
    if let Some(bn) = bn {
        let gamma = values(bn.gamma.val());
        let beta = values(bn.beta.val());
        let mean = values(bn.running_mean.value());
        let var = values(bn.running_var.value());
        let per_out = w.len() / cout;
        for o in 0..cout {
            let s = gamma[o] / (var[o] + bn.epsilon as f32).sqrt();
            for v in &mut w[o * per_out..(o + 1) * per_out] {
                *v *= s;
            }
            b[o] = (b[o] - mean[o]) * s + beta[o];
        }
    }
    (dims, w, b)
}

fn linear_params(l: &Linear) -> (Vec<i64>, Vec<f32>, Vec<f32>) {
    // burn stores Linear weights as [in, out], so the Gemm uses transB = 0.
    let dims: Vec<i64> = l.weight.val().dims().iter().map(|&d| d as i64).collect();
    let w = values(l.weight.val());
    let b = match &l.bias {
        Some(b) => values(b.val()),
        None => vec![0.0; dims[1] as usize],
    };
    (dims, w, b)
}

/// Builds the ONNX model. `metadata` lands in `metadata_props`.
pub fn to_onnx(model: &Cnn, metadata: &BTreeMap<String, String>) -> ModelProto {
    to_onnx_calibrated(model, metadata, 1.0)
}

/// The graph with the logits divided by `temperature` before the softmax,
/// folded into the last Gemm's weights and bias (W/T, b/T): the served
/// probabilities are the calibrated ones and the graph keeps its shape.
/// The argmax is unchanged.
pub fn to_onnx_calibrated(
    model: &Cnn,
    metadata: &BTreeMap<String, String>,
    temperature: f32,
) -> ModelProto {
    let mut nodes = Vec::new();
    let mut inits = Vec::new();
    let mut x = INPUT.to_string();
    let mut conv = |block: &ConvBlock, i: usize, x: &str, nodes: &mut Vec<NodeProto>| -> String {
        let (dims, w, b) = conv_params(&block.conv, block.bn.as_ref());
        let (wn, bn) = (format!("conv{i}.weight"), format!("conv{i}.bias"));
        let cout = dims[0];
        inits.push(f32_tensor(&wn, &dims, &w));
        inits.push(f32_tensor(&bn, &[cout], &b));
        let y = format!("conv{i}");
        nodes.push(node(
            "Conv",
            &y,
            &[x, &wn, &bn],
            &y,
            vec![
                ints("kernel_shape", &[3, 3]),
                ints("pads", &[1, 1, 1, 1]),
                ints("strides", &[1, 1]),
                ints("dilations", &[1, 1]),
                int("group", 1),
            ],
        ));
        let r = format!("relu{i}");
        nodes.push(node("Relu", &r, &[&y], &r, vec![]));
        r
    };
    let pool = |i: usize, x: &str, nodes: &mut Vec<NodeProto>| -> String {
        let y = format!("pool{i}");
        nodes.push(node(
            "MaxPool",
            &y,
            &[x],
            &y,
            vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])],
        ));
        y
    };
    x = conv(&model.c1, 1, &x, &mut nodes);
    x = conv(&model.c2, 2, &x, &mut nodes);
    x = pool(1, &x, &mut nodes);
    x = conv(&model.c3, 3, &x, &mut nodes);
    x = conv(&model.c4, 4, &x, &mut nodes);
    x = pool(2, &x, &mut nodes);
    x = conv(&model.c5, 5, &x, &mut nodes);
    nodes.push(node(
        "Flatten",
        "flatten",
        &[&x],
        "flatten",
        vec![int("axis", 1)],
    ));
    for (i, (l, input, out)) in [
        (&model.fc1, "flatten", "fc1"),
        (&model.fc2, "fc1_relu", "logits"),
    ]
    .into_iter()
    .enumerate()
    {
        let (dims, mut w, mut b) = linear_params(l);
        if i == 1 {
            w.iter_mut()
                .chain(b.iter_mut())
                .for_each(|v| *v /= temperature);
        }
        let (wn, bn) = (format!("fc{}.weight", i + 1), format!("fc{}.bias", i + 1));
        inits.push(f32_tensor(&wn, &dims, &w));
        inits.push(f32_tensor(&bn, &[dims[1]], &b));
        nodes.push(node(
            "Gemm",
            out,
            &[input, &wn, &bn],
            out,
            vec![int("transA", 0), int("transB", 0)],
        ));
        if i == 0 {
            nodes.push(node("Relu", "fc1_relu", &["fc1"], "fc1_relu", vec![]));
        }
    }
    nodes.push(node(
        "Softmax",
        "softmax",
        &["logits"],
        OUTPUT,
        vec![int("axis", 1)],
    ));

    ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "mnister-train".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: "Handwritten digit classifier. Input: float32 [N,1,28,28], MNIST form (white ink on black, \
                     0..1, digit centred by mass). Output: float32 [N,10] softmax probabilities."
            .into(),
        graph: Some(GraphProto {
            name: "mnist_cnn".into(),
            node: nodes,
            initializer: inits,
            input: vec![value_info(INPUT, &[None, Some(1), Some(28), Some(28)])],
            output: vec![value_info(OUTPUT, &[None, Some(10)])],
            ..Default::default()
        }),
        metadata_props: metadata
            .iter()
            .map(|(k, v)| StringStringEntryProto {
                key: k.clone(),
                value: v.clone(),
            })
            .collect(),
        ..Default::default()
    }
}

pub fn to_bytes(model: &Cnn, metadata: &BTreeMap<String, String>) -> Vec<u8> {
    to_bytes_calibrated(model, metadata, 1.0)
}

/// `to_bytes` with a temperature folded in (see `to_onnx_calibrated`).
pub fn to_bytes_calibrated(
    model: &Cnn,
    metadata: &BTreeMap<String, String>,
    temperature: f32,
) -> Vec<u8> {
    to_onnx_calibrated(model, metadata, temperature).encode_to_vec()
}
