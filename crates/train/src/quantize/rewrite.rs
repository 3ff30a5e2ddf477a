//! The quantization arithmetic and the graph rewrite that applies it. Pure
//! functions of the fp32 model, the plan and the observed ranges, with no
//! ONNX Runtime involved, so each candidate method is cheap to build and the
//! numbers can be unit-tested.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::{Result, anyhow, bail};

use super::calibrate::{Method, Observed};
use super::plan::{Plan, is_weighted};
use crate::graph::{f32_tensor, floats, int, int_attr, node, raw_tensor};
use crate::onnx::{ModelProto, NodeProto, TensorProto, tensor_proto::DataType};

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
/// ±(2^(bits−1) − 1) (−128 is left out, as ORT does, to keep the range
/// symmetric). `bits` 7 is ORT's `reduce_range`: CPUs without VNNI multiply
/// u8×s8 pairs into a saturating i16 (AVX2 `vpmaddubsw`), which 255·127·2
/// overflows and 255·63·2 does not.
pub fn int8_per_channel(dims: &[i64], w: &[f32], axis: usize, bits: u32) -> (Vec<f32>, Vec<i8>) {
    let qmax = ((1i32 << (bits.clamp(2, 8) - 1)) - 1) as f32;
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
        .map(|&a| if a > 0.0 { a / qmax } else { 1.0 })
        .collect();
    let q = w
        .iter()
        .enumerate()
        .map(|(i, v)| (v / scales[channel(i)]).round().clamp(-qmax, qmax) as i8)
        .collect();
    (scales, q)
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
    weight_bits: u32,
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
            let (scales, q) = int8_per_channel(&w.dims, &floats(&w)?, axis, weight_bits);
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
                vec![int("axis", axis as i64)],
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
                    vec![int("axis", 0)],
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
        format: format!(
            "QDQ; weights int8 symmetric per-channel ({weight_bits}-bit range); biases int32; activations uint8 asymmetric per-tensor"
        ),
        method: method.name(),
        activations: act.into_values().collect(),
        weights,
    };
    Ok((model, params))
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
        let (s, q) = int8_per_channel(&[2, 3], &w, 0, 8);
        assert_eq!(s, vec![1.0 / 127.0, 0.4 / 127.0]);
        assert_eq!(q, vec![127, -76, 32, 32, 95, -127]);
        // The same values as [3 in, 2 out] with the channel on axis 1.
        let (s, q) = int8_per_channel(&[3, 2], &w, 1, 8);
        assert_eq!(s, vec![1.0 / 127.0, 0.6 / 127.0]);
        assert_eq!((q[0], q[1]), (127, -127));
        for (i, (v, qi)) in w.iter().zip(&q).enumerate() {
            let back = *qi as f32 * s[i % 2];
            assert!((back - v).abs() <= s[i % 2] / 2.0 + 1e-6, "{v} -> {back}");
        }
    }

    #[test]
    fn seven_bit_weights_stay_within_63_and_round_trip() {
        let w = [1.0, -0.6, 0.25, 0.1, 0.3, -0.4];
        let (s, q) = int8_per_channel(&[2, 3], &w, 0, 7);
        assert_eq!(s, vec![1.0 / 63.0, 0.4 / 63.0]);
        assert!(q.iter().all(|v| (-63..=63).contains(v)), "{q:?}");
        assert_eq!((q[0], q[5]), (63, -63));
        for (i, (v, qi)) in w.iter().zip(&q).enumerate() {
            let back = *qi as f32 * s[i / 3];
            assert!((back - v).abs() <= s[i / 3] / 2.0 + 1e-6, "{v} -> {back}");
        }
    }
}
