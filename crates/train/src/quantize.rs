//! Post-training int8 quantization of an exported fp32 model, in Rust, into
//! ONNX's QDQ form (QuantizeLinear/DequantizeLinear pairs that ONNX Runtime's
//! graph optimizer fuses into QLinearConv / QGemm kernels).
//!
//! Why QDQ rather than QLinear* operators: the file stays a plain opset-13
//! graph that any runtime can execute (the Q/DQ pairs are exact float maths
//! when not fused), while ONNX Runtime turns each `DQ → Conv → Q` group into
//! one integer kernel.
//!
//! The scheme follows ONNX Runtime's own static quantizer, so the numbers
//! compare with its reference measurement:
//! - weights: int8, symmetric (zero point 0), one scale per output channel
//!   (axis 0 of a Conv weight `[Cout,Cin,kh,kw]`; for a Gemm the output axis,
//!   1 with `transB = 0` as our exporter writes `[in,out]`);
//! - biases: int32 with scale `activation scale × weight scale`, which is what
//!   the integer kernels accumulate in;
//! - activations: uint8, asymmetric, one scale per tensor, the range measured
//!   on a seeded sample of *training* images (never validation or test);
//! - a Relu that follows a Conv/Gemm is dropped: the Q after the Conv has
//!   zero point 0, so its saturation at 0 is the Relu (ORT does the same);
//! - MaxPool and Flatten pass quantized values through unchanged, so the Q
//!   after them reuses their input's parameters and ORT runs them on uint8;
//! - the last Gemm (the logits) keeps a float output: the Softmax after it
//!   needs the resolution.
//!
//! Calibration runs the fp32 graph through ONNX Runtime with the tensors we
//! need as extra graph outputs and records min/max or a percentile of each.
//! Which is better is measured, not assumed: every candidate is quantized and
//! scored on the validation split, and the best one is kept.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;
use prost::Message;
use sha2::{Digest, Sha256};

use crate::data;
use crate::evaluate::{self, TestMetrics};
use crate::onnx::{
    AttributeProto, ModelProto, NodeProto, StringStringEntryProto, TensorProto, TypeProto,
    ValueInfoProto, attribute_proto::AttributeType, tensor_proto::DataType, type_proto,
};
use crate::robustness::RobustnessRow;
use mnister_core::backend::argmax;
use mnister_core::backend::ort::{OrtBackend, init_runtime, load_model, open_model};
use mnister_core::idx::{Split, load_mnist};
use mnister_core::preprocess::MnistImage;

/// `--calibration`: how activation ranges are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CalibrationChoice {
    /// Try min/max and every `--percentiles` value; keep the best on validation.
    Auto,
    MinMax,
    Percentile,
}

/// One way of turning observed activations into a range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    MinMax,
    /// Upper end at this percentile of the values (lower end at their min).
    Percentile(f64),
}

impl Method {
    pub fn name(&self) -> String {
        match self {
            Method::MinMax => "minmax".into(),
            Method::Percentile(p) => format!("percentile-{p}"),
        }
    }
}

#[derive(Debug, Clone, clap::Parser, serde::Serialize)]
#[command(
    name = "mnister-train quantize",
    about = "Writes a calibrated int8 (QDQ) copy of an fp32 model and compares the two through ONNX Runtime"
)]
pub struct QuantizeArgs {
    /// The fp32 model to quantize.
    #[arg(
        long,
        env = "MNISTER_QUANTIZE_MODEL",
        default_value = "models/mnist-cnn.onnx"
    )]
    pub model: PathBuf,

    /// Where the int8 model goes (default: beside --model, `.int8.onnx`).
    #[arg(long, env = "MNISTER_QUANTIZE_OUT")]
    pub out: Option<PathBuf>,

    /// Folder with the MNIST IDX files.
    #[arg(long, env = "MNIST_DIR", default_value = "data/mnist")]
    pub data_dir: PathBuf,

    /// Training images the activation ranges are measured on.
    #[arg(
        long,
        env = "MNISTER_QUANTIZE_CALIBRATION_IMAGES",
        default_value_t = 1000
    )]
    pub calibration_images: usize,

    #[arg(long, value_enum, env = "MNISTER_QUANTIZE_CALIBRATION", default_value_t = CalibrationChoice::Auto)]
    pub calibration: CalibrationChoice,

    /// Percentiles tried by `--calibration percentile|auto`.
    #[arg(
        long,
        env = "MNISTER_QUANTIZE_PERCENTILES",
        value_delimiter = ',',
        default_value = "99.99,99.999"
    )]
    pub percentiles: Vec<f64>,

    /// Seed of the train/validation split and of the calibration sample
    /// (default: the model's `train.seed`, else 42).
    #[arg(long, env = "MNISTER_QUANTIZE_SEED")]
    pub seed: Option<u64>,

    /// Validation images held out of MNIST train (default: the model's
    /// `train.val_size`, else 12,000), so calibration never sees them.
    #[arg(long, env = "MNISTER_QUANTIZE_VAL_SIZE")]
    pub val_size: Option<usize>,

    /// Compare on the first this many test images only.
    #[arg(long, env = "MNISTER_QUANTIZE_TEST_LIMIT")]
    pub test_limit: Option<usize>,

    /// Skip the robustness table (faster).
    #[arg(long, env = "MNISTER_QUANTIZE_NO_ROBUSTNESS")]
    pub no_robustness: bool,

    /// Folder for int8-report.json and int8-report.md.
    #[arg(long, env = "MNISTER_QUANTIZE_REPORT_DIR")]
    pub report_dir: Option<PathBuf>,

    /// ONNX Runtime library.
    #[arg(long, env = "MNISTER_ORT_LIB")]
    pub ort_lib: Option<PathBuf>,
}

impl QuantizeArgs {
    pub fn out_path(&self) -> PathBuf {
        self.out.clone().unwrap_or_else(|| int8_path(&self.model))
    }
}

/// `dir/name.onnx` → `dir/name.int8.onnx`.
pub fn int8_path(fp32: &Path) -> PathBuf {
    let stem = fp32
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    fp32.with_file_name(format!("{stem}.int8.onnx"))
}

/// uint8 quantization of one activation tensor.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ActParams {
    pub tensor: String,
    pub min: f32,
    pub max: f32,
    pub scale: f32,
    pub zero_point: u8,
}

/// Asymmetric uint8 parameters for a range; the range is widened to hold 0
/// so that 0 (padding, Relu) is represented exactly.
pub fn uint8_params(tensor: &str, min: f32, max: f32) -> ActParams {
    let (lo, hi) = (min.min(0.0), max.max(0.0));
    let mut scale = (hi - lo) / 255.0;
    if scale.is_nan() || scale <= f32::MIN_POSITIVE {
        scale = 1.0;
    }
    let zero_point = (-lo / scale).round().clamp(0.0, 255.0) as u8;
    ActParams {
        tensor: tensor.into(),
        min,
        max,
        scale,
        zero_point,
    }
}

/// Symmetric int8 quantization along `axis`: one scale per channel, values in
/// −127..=127 (−128 is left out, as ORT does, to keep the range symmetric).
pub fn int8_per_channel(dims: &[i64], w: &[f32], axis: usize) -> (Vec<f32>, Vec<i8>) {
    let channels = dims[axis] as usize;
    let inner: usize = dims[axis + 1..].iter().product::<i64>() as usize;
    let channel = |i: usize| (i / inner) % channels;
    let mut amax = vec![0f32; channels];
    for (i, v) in w.iter().enumerate() {
        let c = channel(i);
        amax[c] = amax[c].max(v.abs());
    }
    let scales: Vec<f32> = amax
        .iter()
        .map(|&a| if a > 0.0 { a / 127.0 } else { 1.0 })
        .collect();
    let q = w
        .iter()
        .enumerate()
        .map(|(i, v)| (v / scales[channel(i)]).round().clamp(-127.0, 127.0) as i8)
        .collect();
    (scales, q)
}

fn floats(t: &TensorProto) -> Result<Vec<f32>> {
    if t.data_type != DataType::Float as i32 {
        bail!("initializer {} is not float32", t.name);
    }
    if !t.raw_data.is_empty() {
        Ok(t.raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    } else {
        Ok(t.float_data.clone())
    }
}

fn raw_tensor(name: &str, dims: &[i64], dtype: DataType, raw: Vec<u8>) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: dtype as i32,
        raw_data: raw,
        ..Default::default()
    }
}

fn f32_tensor(name: &str, dims: &[i64], v: &[f32]) -> TensorProto {
    raw_tensor(
        name,
        dims,
        DataType::Float,
        v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    )
}

fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    output: &str,
    attrs: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute: attrs,
        ..Default::default()
    }
}

fn axis_attr(axis: i64) -> AttributeProto {
    AttributeProto {
        name: "axis".into(),
        r#type: AttributeType::Int as i32,
        i: axis,
        ..Default::default()
    }
}

fn int_attr(n: &NodeProto, name: &str) -> Option<i64> {
    n.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

fn is_weighted(n: &NodeProto) -> bool {
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
    fused_relu: HashMap<String, String>,
    /// Tensors with a Q/DQ pair, each with the tensor whose range it uses.
    quantized: BTreeMap<String, String>,
    /// The tensors calibration must observe.
    pub calibrate: Vec<String>,
}

/// Works out the QDQ placement for a graph (see the module doc).
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

/// Per-tensor statistics from calibration.
#[derive(Debug, Clone)]
pub struct Observed {
    pub min: f32,
    pub max: f32,
    /// Histogram of the values over [min, max].
    pub hist: Vec<u64>,
}

impl Observed {
    /// The range a method picks.
    pub fn range(&self, m: Method) -> (f32, f32) {
        match m {
            Method::MinMax => (self.min, self.max),
            Method::Percentile(p) => {
                let total: u64 = self.hist.iter().sum();
                let want = (total as f64 * p / 100.0).ceil() as u64;
                let mut seen = 0;
                let bins = self.hist.len();
                for (i, &c) in self.hist.iter().enumerate() {
                    seen += c;
                    if seen >= want {
                        let hi = self.min + (self.max - self.min) * (i + 1) as f32 / bins as f32;
                        return (self.min, hi.min(self.max));
                    }
                }
                (self.min, self.max)
            }
        }
    }
}

const HIST_BINS: usize = 4096;
const CALIBRATION_BATCH: usize = 100;

fn float_output(name: &str) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: None,
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Runs `images` through the fp32 graph and records min, max and a
/// histogram of every tensor in `tensors`.
pub fn calibrate(
    env: &'static Environment,
    model: &ModelProto,
    tensors: &[String],
    images: &[MnistImage],
) -> Result<BTreeMap<String, Observed>> {
    let mut probe = model.clone();
    let g = probe
        .graph
        .as_mut()
        .ok_or_else(|| anyhow!("model has no graph"))?;
    let input = g.input[0].name.clone();
    let existing: HashSet<String> = g.output.iter().map(|o| o.name.clone()).collect();
    for t in tensors {
        if !existing.contains(t) && *t != input {
            g.output.push(float_output(t));
        }
    }
    let bytes = probe.encode_to_vec();
    let e = |e: String| anyhow!("calibration session: {e}");
    let mut session = Session::builder(env)
        .map_err(|x| e(x.to_string()))?
        .with_optimization_level(GraphOptimizationLevel::Disable)
        .map_err(|x| e(x.to_string()))?
        .with_intra_threads(2)
        .map_err(|x| e(x.to_string()))?
        .commit_from_memory(&bytes)
        .map_err(|x| e(x.to_string()))?;
    // Two passes: the range first, then a histogram over it.
    let mut obs: BTreeMap<String, Observed> = tensors
        .iter()
        .map(|t| {
            (
                t.clone(),
                Observed {
                    min: f32::INFINITY,
                    max: f32::NEG_INFINITY,
                    hist: vec![0; HIST_BINS],
                },
            )
        })
        .collect();
    for pass in 0..2 {
        for chunk in images.chunks(CALIBRATION_BATCH) {
            let flat: Vec<f32> = chunk.iter().flatten().copied().collect();
            let tensor = TensorRef::from_array_view(([chunk.len(), 1, 28, 28], &flat[..]))
                .map_err(|x| e(x.to_string()))?;
            let outputs = session
                .run(ort::inputs![input.as_str() => tensor])
                .map_err(|x| e(x.to_string()))?;
            for t in tensors {
                let values: &[f32] = if *t == input {
                    &flat
                } else {
                    outputs[t.as_str()]
                        .try_extract_tensor::<f32>()
                        .map_err(|x| e(x.to_string()))?
                        .1
                };
                let o = obs.get_mut(t).expect("every tensor has an entry");
                if pass == 0 {
                    for &v in values {
                        o.min = o.min.min(v);
                        o.max = o.max.max(v);
                    }
                } else {
                    let width = (o.max - o.min).max(f32::MIN_POSITIVE);
                    for &v in values {
                        let b = (((v - o.min) / width) * HIST_BINS as f32) as usize;
                        o.hist[b.min(HIST_BINS - 1)] += 1;
                    }
                }
            }
        }
    }
    Ok(obs)
}

/// What the quantizer did, for the metadata and the report.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct QuantizationParams {
    pub format: String,
    pub method: String,
    pub activations: Vec<ActParams>,
    /// Per-channel scales of every weight tensor, with the channel axis.
    pub weights: Vec<WeightParams>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct WeightParams {
    pub tensor: String,
    pub axis: usize,
    pub scales: Vec<f32>,
}

/// Builds the QDQ model from the fp32 one and the activation ranges.
pub fn quantize_model(
    fp32: &ModelProto,
    plan: &Plan,
    observed: &BTreeMap<String, Observed>,
    method: Method,
) -> Result<(ModelProto, QuantizationParams)> {
    let mut model = fp32.clone();
    let g = model
        .graph
        .as_mut()
        .ok_or_else(|| anyhow!("model has no graph"))?;
    let act: BTreeMap<String, ActParams> = plan
        .quantized
        .iter()
        .map(|(t, src)| {
            let o = observed
                .get(src)
                .ok_or_else(|| anyhow!("no calibration data for {src}"))?;
            let (lo, hi) = o.range(method);
            Ok((t.clone(), uint8_params(t, lo, hi)))
        })
        .collect::<Result<_>>()?;
    let mut inits: Vec<TensorProto> = Vec::new();
    let mut by_name: HashMap<String, TensorProto> = g
        .initializer
        .drain(..)
        .map(|t| (t.name.clone(), t))
        .collect();
    let mut nodes = Vec::new();
    let mut weights = Vec::new();
    let relu_outputs: HashSet<&str> = plan.fused_relu.values().map(String::as_str).collect();

    // Q → DQ of `t` with its parameters; the DQ writes `dq_out`.
    let qdq = |t: &str, dq_out: &str, nodes: &mut Vec<NodeProto>, inits: &mut Vec<TensorProto>| {
        let p = &act[t];
        let (s, z) = (format!("{t}_scale"), format!("{t}_zero_point"));
        inits.push(f32_tensor(&s, &[], &[p.scale]));
        inits.push(raw_tensor(&z, &[], DataType::Uint8, vec![p.zero_point]));
        let q = format!("{t}_quantized");
        nodes.push(node("QuantizeLinear", &q, &[t, &s, &z], &q, vec![]));
        nodes.push(node(
            "DequantizeLinear",
            &format!("{t}_dequantize"),
            &[&q, &s, &z],
            dq_out,
            vec![],
        ));
    };
    let dq_name = |t: &str| {
        if relu_outputs.contains(t) {
            t.to_string()
        } else {
            format!("{t}_dequantized")
        }
    };

    let input = g.input[0].name.clone();
    if act.contains_key(&input) {
        qdq(&input, &dq_name(&input), &mut nodes, &mut inits);
    }
    for n in std::mem::take(&mut g.node) {
        if n.op_type == "Relu" && relu_outputs.contains(n.output[0].as_str()) {
            continue; // absorbed by the Q after its Conv/Gemm
        }
        let mut n = n;
        if is_weighted(&n) {
            let x = n.input[0].clone();
            let xp = act
                .get(&x)
                .ok_or_else(|| anyhow!("input {x} of {} has no quantization", n.name))?
                .clone();
            n.input[0] = dq_name(&x);
            // Weights: per-channel int8 along the output axis.
            let wname = n.input[1].clone();
            let w = by_name
                .remove(&wname)
                .ok_or_else(|| anyhow!("weight {wname} is not an initializer"))?;
            let axis = match n.op_type.as_str() {
                "Conv" => 0,
                _ => {
                    if int_attr(&n, "transB").unwrap_or(0) == 1 {
                        0
                    } else {
                        1
                    }
                }
            };
            let (scales, q) = int8_per_channel(&w.dims, &floats(&w)?, axis);
            let c = scales.len() as i64;
            let (wq, ws, wz, wd) = (
                format!("{wname}_quantized"),
                format!("{wname}_scale"),
                format!("{wname}_zero_point"),
                format!("{wname}_dequantized"),
            );
            inits.push(raw_tensor(
                &wq,
                &w.dims,
                DataType::Int8,
                q.iter().map(|&v| v as u8).collect(),
            ));
            inits.push(f32_tensor(&ws, &[c], &scales));
            inits.push(raw_tensor(&wz, &[c], DataType::Int8, vec![0; c as usize]));
            nodes.push(node(
                "DequantizeLinear",
                &format!("{wname}_dequantize"),
                &[&wq, &ws, &wz],
                &wd,
                vec![axis_attr(axis as i64)],
            ));
            n.input[1] = wd;
            // Bias: int32 at scale x_scale × w_scale, the accumulator's scale.
            if let Some(bname) = n.input.get(2).cloned().filter(|b| !b.is_empty()) {
                let b = by_name
                    .remove(&bname)
                    .ok_or_else(|| anyhow!("bias {bname} is not an initializer"))?;
                let bv = floats(&b)?;
                let bscale: Vec<f32> = scales.iter().map(|s| s * xp.scale).collect();
                let bq: Vec<u8> = bv
                    .iter()
                    .zip(&bscale)
                    .flat_map(|(v, s)| {
                        ((v / s).round().clamp(i32::MIN as f32, i32::MAX as f32) as i32)
                            .to_le_bytes()
                    })
                    .collect();
                let (bqn, bs, bz, bd) = (
                    format!("{bname}_quantized"),
                    format!("{bname}_scale"),
                    format!("{bname}_zero_point"),
                    format!("{bname}_dequantized"),
                );
                inits.push(raw_tensor(&bqn, &b.dims, DataType::Int32, bq));
                inits.push(f32_tensor(&bs, &[c], &bscale));
                inits.push(raw_tensor(
                    &bz,
                    &[c],
                    DataType::Int32,
                    vec![0; 4 * c as usize],
                ));
                nodes.push(node(
                    "DequantizeLinear",
                    &format!("{bname}_dequantize"),
                    &[&bqn, &bs, &bz],
                    &bd,
                    vec![axis_attr(0)],
                ));
                n.input[2] = bd;
            }
            weights.push(WeightParams {
                tensor: wname,
                axis,
                scales,
            });
            let out = n.output[0].clone();
            nodes.push(n);
            if let Some(relu) = plan.fused_relu.get(&out) {
                // Q(conv output) with the Relu output's parameters (zero
                // point 0): the saturation is the Relu.
                let p = &act[relu];
                if p.zero_point != 0 {
                    bail!("{relu}: a Relu output must have zero point 0");
                }
                let (s, z) = (format!("{relu}_scale"), format!("{relu}_zero_point"));
                inits.push(f32_tensor(&s, &[], &[p.scale]));
                inits.push(raw_tensor(&z, &[], DataType::Uint8, vec![0]));
                let q = format!("{relu}_quantized");
                nodes.push(node("QuantizeLinear", &q, &[&out, &s, &z], &q, vec![]));
                nodes.push(node(
                    "DequantizeLinear",
                    &format!("{relu}_dequantize"),
                    &[&q, &s, &z],
                    relu,
                    vec![],
                ));
            }
            continue;
        }
        let outs = n.output.clone();
        nodes.push(n);
        for o in outs {
            if act.contains_key(&o) && !relu_outputs.contains(o.as_str()) {
                qdq(&o, &dq_name(&o), &mut nodes, &mut inits);
            }
        }
    }
    // Untouched initializers keep their order of appearance.
    let mut rest: Vec<TensorProto> = by_name.into_values().collect();
    rest.sort_by(|a, b| a.name.cmp(&b.name));
    g.initializer = rest.into_iter().chain(inits).collect();
    g.node = nodes;
    let params = QuantizationParams {
        format: "QDQ; weights int8 symmetric per-channel; biases int32; activations uint8 asymmetric per-tensor".into(),
        method: method.name(),
        activations: act.into_values().collect(),
        weights,
    };
    Ok((model, params))
}

/// One calibration candidate, scored on the validation images.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Candidate {
    pub method: String,
    pub val_accuracy: f64,
    /// Same argmax as the fp32 model.
    pub val_agreement: f64,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RobustnessPair {
    pub variant: String,
    pub fp32: f64,
    pub int8: f64,
}

/// Everything int8-report.json holds.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct QuantizeReport {
    pub fp32_model: String,
    pub fp32_sha256: String,
    pub fp32_version: String,
    pub int8_model: String,
    pub int8_sha256: String,
    pub int8_version: String,
    pub fp32_bytes: usize,
    pub int8_bytes: usize,
    pub command: String,
    pub git_commit: String,
    pub calibration: Calibration,
    pub candidates: Vec<Candidate>,
    pub chosen: String,
    pub val_images: usize,
    pub fp32_val_accuracy: f64,
    pub test_images: usize,
    pub fp32_test: Summary,
    pub int8_test: Summary,
    /// Share of test images both models give the same digit.
    pub agreement: f64,
    pub disagreements: usize,
    pub max_abs_diff: f32,
    pub robustness: Vec<RobustnessPair>,
    pub params: QuantizationParams,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Calibration {
    pub images: usize,
    pub seed: u64,
    pub val_size: usize,
    pub source: String,
    /// sha256 of the calibration indices (little-endian u32), to compare runs.
    pub indices_sha256: String,
    pub train_images_sha256: String,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub accuracy: f64,
    pub loss: f64,
    pub errors: usize,
}

impl From<&TestMetrics> for Summary {
    fn from(t: &TestMetrics) -> Self {
        Summary {
            accuracy: t.accuracy,
            loss: t.loss,
            errors: t.errors.len(),
        }
    }
}

fn agreement(a: &[f32], b: &[f32]) -> (f64, usize) {
    let n = a.len() / 10;
    let same = a
        .chunks(10)
        .zip(b.chunks(10))
        .filter(|(x, y)| argmax(x) == argmax(y))
        .count();
    (same as f64 / n.max(1) as f64, n - same)
}

fn backend(env: &'static Environment, path: &Path, bytes: Vec<u8>) -> Result<OrtBackend> {
    let (_, backend) =
        open_model(env, path, bytes, 2).context("the quantizer wrote an invalid model")?;
    Ok(backend)
}

/// The seeded, stratified calibration sample: indices into MNIST train,
/// drawn from the training portion of the model's own train/validation split.
pub fn calibration_indices(
    labels: &[u8],
    val_size: usize,
    seed: u64,
    n: usize,
) -> (Vec<usize>, Vec<usize>) {
    let split = data::stratified_split(labels, val_size, seed);
    let calib = data::stratified_subset(&split.train, labels, n, seed ^ 0xca11b);
    (calib, split.val)
}

/// Quantizes `args.model`, writes the int8 file and compares the two models.
pub fn run(args: &QuantizeArgs) -> Result<QuantizeReport> {
    let env = init_runtime(args.ort_lib.as_deref())?;
    let fp32_file = load_model(env, &args.model)?;
    let fp32 = ModelProto::decode(&fp32_file.bytes[..])?;
    if fp32_file
        .metadata
        .get("precision")
        .is_some_and(|p| p != "fp32")
    {
        bail!(
            "{} is already {}",
            args.model.display(),
            fp32_file.metadata["precision"]
        );
    }
    let md = &fp32_file.metadata;
    let seed = args
        .seed
        .or_else(|| md.get("train.seed").and_then(|s| s.parse().ok()))
        .unwrap_or(42);
    let val_size = args
        .val_size
        .or_else(|| md.get("train.val_size").and_then(|s| s.parse().ok()))
        .unwrap_or(12_000);

    let train = load_mnist(&args.data_dir, Split::Train)?;
    let (calib_idx, val_idx) =
        calibration_indices(&train.labels, val_size, seed, args.calibration_images);
    if calib_idx.is_empty() {
        bail!(
            "no training images left for calibration (val size {val_size} of {})",
            train.len()
        );
    }
    let calib: Vec<MnistImage> = calib_idx.iter().map(|&i| data::image(&train, i)).collect();
    let val: Vec<MnistImage> = val_idx.iter().map(|&i| data::image(&train, i)).collect();
    let val_labels: Vec<u8> = val_idx.iter().map(|&i| train.labels[i]).collect();

    let plan = plan(&fp32)?;
    let observed = calibrate(env, &fp32, &plan.calibrate, &calib)?;

    let mut fp32_backend = OrtBackend::for_model(env, &fp32_file, 2)?;
    let fp32_val = evaluate::predict(&mut fp32_backend, &val)?;
    let fp32_val_accuracy = evaluate::test_metrics(&fp32_val, &val_labels).accuracy;

    let mut methods = Vec::new();
    if args.calibration != CalibrationChoice::Percentile {
        methods.push(Method::MinMax);
    }
    if args.calibration != CalibrationChoice::MinMax {
        methods.extend(args.percentiles.iter().map(|&p| Method::Percentile(p)));
    }
    if methods.is_empty() {
        bail!("--calibration percentile needs at least one --percentiles value");
    }
    let out = args.out_path();
    let mut candidates = Vec::new();
    let mut best: Option<(usize, ModelProto, QuantizationParams)> = None;
    for (i, &m) in methods.iter().enumerate() {
        let (q, params) = quantize_model(&fp32, &plan, &observed, m)?;
        let mut b = backend(env, &out, q.encode_to_vec())?;
        let probs = evaluate::predict(&mut b, &val)?;
        let acc = evaluate::test_metrics(&probs, &val_labels).accuracy;
        let (agree, _) = agreement(&probs, &fp32_val);
        eprintln!(
            "calibration {:<20} validation accuracy {:.4}% (fp32 {:.4}%), agreement {:.4}%",
            m.name(),
            acc * 100.0,
            fp32_val_accuracy * 100.0,
            agree * 100.0
        );
        candidates.push(Candidate {
            method: m.name(),
            val_accuracy: acc,
            val_agreement: agree,
        });
        // Best validation accuracy; ties go to the higher agreement, then
        // to the earlier (simpler) method.
        let better = match &best {
            None => true,
            Some((j, _, _)) => {
                let (a, b) = (&candidates[i], &candidates[*j]);
                (a.val_accuracy, a.val_agreement) > (b.val_accuracy, b.val_agreement)
            }
        };
        if better {
            best = Some((i, q, params));
        }
    }
    let (chosen_i, mut int8, params) = best.expect("at least one method");
    let chosen = methods[chosen_i].name();

    // Compare on the test set (read only now, never used to choose).
    let test = load_mnist(&args.data_dir, Split::Test)?;
    let n_test = args.test_limit.unwrap_or(test.len()).min(test.len());
    let test_images: Vec<MnistImage> = (0..n_test).map(|i| data::image(&test, i)).collect();
    let test_labels = &test.labels[..n_test];
    let mut int8_backend = backend(env, &out, int8.encode_to_vec())?;
    let p32 = evaluate::predict(&mut fp32_backend, &test_images)?;
    let p8 = evaluate::predict(&mut int8_backend, &test_images)?;
    let (m32, m8) = (
        evaluate::test_metrics(&p32, test_labels),
        evaluate::test_metrics(&p8, test_labels),
    );
    let (agree, disagreements) = agreement(&p32, &p8);
    let max_abs_diff = p32
        .iter()
        .zip(&p8)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    let mut robustness = Vec::new();
    if !args.no_robustness {
        let r32 = crate::run::robustness_table(&mut fp32_backend, &test_images, test_labels)?.rows;
        let r8 = crate::run::robustness_table(&mut int8_backend, &test_images, test_labels)?.rows;
        robustness = r32
            .iter()
            .zip(&r8)
            .map(|(a, b): (&RobustnessRow, &RobustnessRow)| RobustnessPair {
                variant: a.variant.clone(),
                fp32: a.accuracy,
                int8: b.accuracy,
            })
            .collect();
    }

    let indices_sha256 = hex::encode(Sha256::digest(
        calib_idx
            .iter()
            .flat_map(|&i| (i as u32).to_le_bytes())
            .collect::<Vec<u8>>(),
    ));
    let calibration = Calibration {
        images: calib_idx.len(),
        seed,
        val_size,
        source: format!(
            "stratified seeded sample of the {} training images of MNIST train's {}/{} train/validation split (seed {seed})",
            train.len() - val_idx.len(),
            train.len() - val_idx.len(),
            val_idx.len()
        ),
        indices_sha256,
        train_images_sha256: train.images_sha256.clone(),
    };

    // Metadata: the fp32 model's, with the int8 model's own numbers.
    let version = format!("{}-int8", fp32_file.version());
    let mut meta: BTreeMap<String, String> = md.clone();
    meta.insert("precision".into(), "int8".into());
    meta.insert("version".into(), version.clone());
    meta.insert(
        "accuracy.val".into(),
        format!("{:.6}", candidates[chosen_i].val_accuracy),
    );
    if n_test == test.len() {
        meta.insert("accuracy.test".into(), format!("{:.6}", m8.accuracy));
        meta.insert("loss.test".into(), format!("{:.6}", m8.loss));
        for r in &robustness {
            meta.insert(
                format!("accuracy.robustness.{}", r.variant),
                format!("{:.6}", r.int8),
            );
        }
    } else {
        // Numbers on a subset would be mistaken for the test accuracy.
        meta.retain(|k, _| {
            !k.starts_with("accuracy.test")
                && !k.starts_with("accuracy.robustness")
                && k != "loss.test"
        });
    }
    meta.insert("quantization".into(), serde_json::to_string(&params)?);
    meta.insert(
        "quantization.calibration".into(),
        serde_json::to_string(&calibration)?,
    );
    meta.insert("quantization.method".into(), chosen.clone());
    meta.insert(
        "quantization.candidates".into(),
        serde_json::to_string(&candidates)?,
    );
    meta.insert("quantization.fp32_sha256".into(), fp32_file.sha256.clone());
    meta.insert("quantization.fp32_version".into(), fp32_file.version());
    meta.insert("quantization.agreement.test".into(), format!("{agree:.6}"));
    meta.insert(
        "quantizer".into(),
        format!("mnister-train quantize {}", env!("CARGO_PKG_VERSION")),
    );
    meta.insert("quantization.git_commit".into(), crate::run::git_commit());
    int8.metadata_props = meta
        .into_iter()
        .map(|(key, value)| StringStringEntryProto { key, value })
        .collect();
    int8.doc_string = format!("{} Weights int8, activations uint8 (QDQ).", fp32.doc_string);
    let bytes = int8.encode_to_vec();
    // The written file must load the way the server loads it.
    open_model(env, &out, bytes.clone(), 1).context("the quantizer wrote an invalid model")?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&out, &bytes).with_context(|| format!("writing {}", out.display()))?;

    let report = QuantizeReport {
        fp32_model: args.model.display().to_string(),
        fp32_sha256: fp32_file.sha256.clone(),
        fp32_version: fp32_file.version(),
        int8_model: out.display().to_string(),
        int8_sha256: hex::encode(Sha256::digest(&bytes)),
        int8_version: version,
        fp32_bytes: fp32_file.bytes.len(),
        int8_bytes: bytes.len(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        git_commit: crate::run::git_commit(),
        calibration,
        candidates,
        chosen,
        val_images: val.len(),
        fp32_val_accuracy,
        test_images: n_test,
        fp32_test: (&m32).into(),
        int8_test: (&m8).into(),
        agreement: agree,
        disagreements,
        max_abs_diff,
        robustness,
        params,
    };
    if let Some(dir) = &args.report_dir {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join("int8-report.json"),
            serde_json::to_vec_pretty(&report)?,
        )?;
        std::fs::write(dir.join("int8-report.md"), markdown(&report))?;
    }
    Ok(report)
}

/// fp32 and int8 side by side, as Markdown.
pub fn markdown(r: &QuantizeReport) -> String {
    use std::fmt::Write;
    let pct = |v: f64| format!("{:.2}%", v * 100.0);
    let mut s = String::new();
    let _ = writeln!(s, "| | fp32 | int8 |\n|---|---|---|");
    let _ = writeln!(s, "| file | `{}` | `{}` |", r.fp32_model, r.int8_model);
    let _ = writeln!(
        s,
        "| version | `{}` | `{}` |",
        r.fp32_version, r.int8_version
    );
    let _ = writeln!(s, "| sha256 | `{}` | `{}` |", r.fp32_sha256, r.int8_sha256);
    let _ = writeln!(
        s,
        "| size | {:.0} KiB | {:.0} KiB |",
        r.fp32_bytes as f64 / 1024.0,
        r.int8_bytes as f64 / 1024.0
    );
    let _ = writeln!(
        s,
        "| MNIST test accuracy ({} images) | **{}** ({} errors) | **{}** ({} errors) |",
        r.test_images,
        pct(r.fp32_test.accuracy),
        r.fp32_test.errors,
        pct(r.int8_test.accuracy),
        r.int8_test.errors
    );
    let _ = writeln!(
        s,
        "| MNIST test loss | {:.4} | {:.4} |",
        r.fp32_test.loss, r.int8_test.loss
    );
    let _ = writeln!(
        s,
        "| validation accuracy ({} images) | {} | {} |",
        r.val_images,
        pct(r.fp32_val_accuracy),
        pct(r
            .candidates
            .iter()
            .find(|c| c.method == r.chosen)
            .map_or(0.0, |c| c.val_accuracy))
    );
    let _ = writeln!(
        s,
        "\nSame digit from both models on **{}** of the test images ({} disagree); largest probability difference {:.3}.\n",
        pct(r.agreement),
        r.disagreements,
        r.max_abs_diff
    );
    let _ = writeln!(
        s,
        "Calibration: {} images, {} (indices sha256 `{}`).\n",
        r.calibration.images,
        r.calibration.source,
        &r.calibration.indices_sha256[..16]
    );
    let _ = writeln!(
        s,
        "| calibration method | validation accuracy | agreement with fp32 |\n|---|---|---|"
    );
    for c in &r.candidates {
        let mark = if c.method == r.chosen {
            " (chosen)"
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "| {}{} | {} | {} |",
            c.method,
            mark,
            pct(c.val_accuracy),
            pct(c.val_agreement)
        );
    }
    if !r.robustness.is_empty() {
        let _ = writeln!(
            s,
            "\n| robustness variant | fp32 | int8 | Δ points |\n|---|---|---|---|"
        );
        for row in &r.robustness {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:+.2} |",
                row.variant,
                pct(row.fp32),
                pct(row.int8),
                (row.int8 - row.fp32) * 100.0
            );
        }
    }
    let _ = writeln!(
        s,
        "\n| activation | range | scale | zero point |\n|---|---|---|---|"
    );
    for a in &r.params.activations {
        let _ = writeln!(
            s,
            "| `{}` | {:.4} .. {:.4} | {:.6} | {} |",
            a.tensor, a.min, a.max, a.scale, a.zero_point
        );
    }
    let _ = writeln!(
        s,
        "\nCommand: `{}` (trainer commit `{}`)",
        r.command, r.git_commit
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uint8_params_hold_zero_and_the_range() {
        let p = uint8_params("t", 0.0, 2.55);
        assert_eq!(p.zero_point, 0);
        assert!((p.scale - 0.01).abs() < 1e-7);
        let p = uint8_params("t", -1.0, 1.55);
        assert_eq!(p.zero_point, 100);
        // A range without 0 is widened to it.
        let p = uint8_params("t", 0.5, 1.0);
        assert_eq!(p.zero_point, 0);
        assert!((p.scale - 1.0 / 255.0).abs() < 1e-7);
        // A constant tensor still gets a usable scale.
        assert_eq!(uint8_params("t", 0.0, 0.0).scale, 1.0);
    }

    #[test]
    fn weights_are_symmetric_per_channel_on_the_right_axis() {
        // [2 out channels, 3] on axis 0.
        let w = [1.0, -0.6, 0.25, 0.1, 0.3, -0.4];
        let (s, q) = int8_per_channel(&[2, 3], &w, 0);
        assert_eq!(s, vec![1.0 / 127.0, 0.4 / 127.0]);
        assert_eq!(q, vec![127, -76, 32, 32, 95, -127]);
        // The same values as [3 in, 2 out] with the channel on axis 1.
        let (s, q) = int8_per_channel(&[3, 2], &w, 1);
        assert_eq!(s, vec![1.0 / 127.0, 0.6 / 127.0]);
        assert_eq!((q[0], q[1]), (127, -127));
        for (i, (v, qi)) in w.iter().zip(&q).enumerate() {
            let back = *qi as f32 * s[i % 2];
            assert!((back - v).abs() <= s[i % 2] / 2.0 + 1e-6, "{v} -> {back}");
        }
    }

    #[test]
    fn percentile_range_clips_the_tail() {
        let mut hist = vec![0u64; 100];
        hist[0] = 9_990;
        hist[99] = 10;
        let o = Observed {
            min: 0.0,
            max: 10.0,
            hist,
        };
        assert_eq!(o.range(Method::MinMax), (0.0, 10.0));
        let (_, hi) = o.range(Method::Percentile(99.9));
        assert!((hi - 0.1).abs() < 1e-6, "{hi}");
        assert_eq!(o.range(Method::Percentile(99.95)), (0.0, 10.0));
    }

    #[test]
    fn int8_path_sits_beside_the_model() {
        assert_eq!(
            int8_path(Path::new("models/mnist-cnn.onnx")),
            PathBuf::from("models/mnist-cnn.int8.onnx")
        );
    }
}
