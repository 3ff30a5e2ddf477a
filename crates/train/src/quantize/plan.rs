//! Where the Q/DQ pairs go, worked out from the graph's shape alone, before
//! any data is seen: calibration needs to know which tensors to observe, and
//! the rewrite which nodes to touch, and both must agree.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::{Result, anyhow};

use crate::onnx::{ModelProto, NodeProto};

pub(super) fn is_weighted(n: &NodeProto) -> bool {
    n.op_type == "Conv" || n.op_type == "Gemm"
}

/// Ops whose output takes the quantization of their input unchanged.
fn is_passthrough(n: &NodeProto) -> bool {
    matches!(n.op_type.as_str(), "MaxPool" | "Flatten" | "Reshape")
}

/// Which tensors get a Q/DQ pair, and where their ranges come from.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Conv/Gemm output → the Relu output it absorbs (the Relu is dropped).
    pub(super) fused_relu: HashMap<String, String>,
    /// Tensors with a Q/DQ pair, each with the tensor whose range it uses.
    pub(super) quantized: BTreeMap<String, String>,
    /// The tensors calibration must observe.
    pub calibrate: Vec<String>,
}

/// Works out the QDQ placement for a graph (see the `quantize` module doc).
pub fn plan(model: &ModelProto) -> Result<Plan> {
    let g = model
        .graph
        .as_ref()
        .ok_or_else(|| anyhow!("model has no graph"))?;
    let mut consumers: HashMap<&str, Vec<&NodeProto>> = HashMap::new();
    let mut producer: HashMap<&str, &NodeProto> = HashMap::new();
    for n in &g.node {
        for i in &n.input {
            consumers.entry(i.as_str()).or_default().push(n);
        }
        for o in &n.output {
            producer.insert(o.as_str(), n);
        }
    }
    let outputs: HashSet<&str> = g.output.iter().map(|o| o.name.as_str()).collect();
    let mut fused_relu = HashMap::new();
    for n in g.node.iter().filter(|n| is_weighted(n)) {
        let out = n.output[0].as_str();
        if let Some([r]) = consumers.get(out).map(Vec::as_slice)
            && r.op_type == "Relu"
            && !outputs.contains(out)
        {
            fused_relu.insert(out.to_string(), r.output[0].clone());
        }
    }
    let relu_outputs: HashSet<&str> = fused_relu.values().map(String::as_str).collect();
    // The source of a tensor's range: walk back through pass-through ops.
    let source = |t: &str| -> String {
        let mut t = t.to_string();
        loop {
            match producer.get(t.as_str()) {
                Some(p) if is_passthrough(p) => t = p.input[0].clone(),
                _ => return t,
            }
        }
    };
    let mut quantized = BTreeMap::new();
    for r in &relu_outputs {
        quantized.insert(r.to_string(), r.to_string());
    }
    for n in g.node.iter().filter(|n| is_weighted(n)) {
        let x = n.input[0].clone();
        let s = source(&x);
        quantized.insert(x, s);
    }
    let mut calibrate: Vec<String> = quantized.values().cloned().collect();
    calibrate.sort();
    calibrate.dedup();
    Ok(Plan {
        fused_relu,
        quantized,
        calibrate,
    })
}
