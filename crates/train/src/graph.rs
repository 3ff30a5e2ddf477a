//! Builders for the ONNX protobuf pieces (tensors, attributes, nodes, value
//! infos) and the one reader the quantizer needs. The exporter writes a graph
//! and the quantizer rewrites one; both must spell these pieces the same way,
//! so they share one copy rather than two that could drift apart.

use anyhow::{Result, bail};

use crate::onnx::{
    AttributeProto, NodeProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto::Dimension,
    tensor_shape_proto::dimension, type_proto,
};

/// A tensor of `dtype` whose little-endian bytes are already laid out.
pub(crate) fn raw_tensor(name: &str, dims: &[i64], dtype: DataType, raw: Vec<u8>) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: dtype as i32,
        raw_data: raw,
        ..Default::default()
    }
}

/// A float32 tensor, stored as `raw_data` (little-endian).
pub(crate) fn f32_tensor(name: &str, dims: &[i64], v: &[f32]) -> TensorProto {
    debug_assert_eq!(dims.iter().product::<i64>() as usize, v.len());
    raw_tensor(
        name,
        dims,
        DataType::Float,
        v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    )
}

/// The values of a float32 tensor, from `raw_data` or `float_data`,
/// whichever the writer used.
pub(crate) fn floats(t: &TensorProto) -> Result<Vec<f32>> {
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

pub(crate) fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

pub(crate) fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

/// The integer attribute `name` of `n`, if it has one.
pub(crate) fn int_attr(n: &NodeProto, name: &str) -> Option<i64> {
    n.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

/// A node with one output.
pub(crate) fn node(
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

fn float_value_info(name: &str, shape: Option<TensorShapeProto>) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape,
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A float32 graph input or output of shape `dims`; a `None` dimension is
/// the batch, named `N`.
pub(crate) fn value_info(name: &str, dims: &[Option<i64>]) -> ValueInfoProto {
    float_value_info(
        name,
        Some(TensorShapeProto {
            dim: dims
                .iter()
                .map(|d| Dimension {
                    value: Some(match d {
                        Some(v) => dimension::Value::DimValue(*v),
                        None => dimension::Value::DimParam("N".into()),
                    }),
                    ..Default::default()
                })
                .collect(),
        }),
    )
}

/// A float32 graph output with no declared shape (not even a rank): the
/// quantizer exposes intermediate tensors this way for calibration.
pub(crate) fn unshaped_value_info(name: &str) -> ValueInfoProto {
    float_value_info(name, None)
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn f32_tensor_round_trips_through_floats() {
        let v = [0.0, -1.5, 3.25, f32::MIN_POSITIVE, f32::MAX, -0.0];
        let t = f32_tensor("w", &[2, 3], &v);
        assert_eq!(t.data_type, DataType::Float as i32);
        assert_eq!(t.dims, vec![2, 3]);
        assert_eq!(t.raw_data.len(), 4 * v.len());
        // Little-endian, as ONNX requires.
        assert_eq!(&t.raw_data[4..8], &(-1.5f32).to_le_bytes());
        let back = floats(&t).unwrap();
        assert_eq!(
            back.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            v.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
        // The same through an encode/decode, as a model file carries it.
        let decoded = TensorProto::decode(&t.encode_to_vec()[..]).unwrap();
        assert_eq!(floats(&decoded).unwrap(), back);
        // A scalar has no dims.
        assert_eq!(floats(&f32_tensor("s", &[], &[0.5])).unwrap(), vec![0.5]);
    }

    #[test]
    fn floats_reads_float_data_and_rejects_other_types() {
        let t = TensorProto {
            name: "f".into(),
            dims: vec![2],
            data_type: DataType::Float as i32,
            float_data: vec![1.0, 2.0],
            ..Default::default()
        };
        assert_eq!(floats(&t).unwrap(), vec![1.0, 2.0]);
        let q = raw_tensor("q", &[2], DataType::Int8, vec![1, 0xff]);
        assert_eq!(q.data_type, DataType::Int8 as i32);
        assert_eq!(q.raw_data, vec![1, 0xff]);
        let err = floats(&q).unwrap_err().to_string();
        assert!(err.contains("q is not float32"), "{err}");
    }

    #[test]
    fn attributes_and_nodes() {
        let n = node(
            "Conv",
            "c",
            &["x", "w"],
            "y",
            vec![int("group", 1), ints("pads", &[1, 1, 1, 1])],
        );
        assert_eq!((n.op_type.as_str(), n.name.as_str()), ("Conv", "c"));
        assert_eq!(n.input, vec!["x", "w"]);
        assert_eq!(n.output, vec!["y"]);
        assert_eq!(n.attribute[0].r#type, AttributeType::Int as i32);
        assert_eq!(n.attribute[1].r#type, AttributeType::Ints as i32);
        assert_eq!(n.attribute[1].ints, vec![1, 1, 1, 1]);
        assert_eq!(int_attr(&n, "group"), Some(1));
        assert_eq!(int_attr(&n, "transB"), None);
    }

    #[test]
    fn value_infos_name_the_batch_or_leave_the_shape_out() {
        let tensor = |v: &ValueInfoProto| {
            let type_proto::Value::TensorType(t) =
                v.r#type.as_ref().unwrap().value.as_ref().unwrap();
            t.clone()
        };
        let v = value_info("image", &[None, Some(1)]);
        let t = tensor(&v);
        assert_eq!(t.elem_type, DataType::Float as i32);
        let dims: Vec<_> = t.shape.unwrap().dim.into_iter().map(|d| d.value).collect();
        assert_eq!(
            dims,
            vec![
                Some(dimension::Value::DimParam("N".into())),
                Some(dimension::Value::DimValue(1))
            ]
        );
        // No shape is not the same as a scalar's empty shape.
        let u = tensor(&unshaped_value_info("conv1"));
        assert_eq!(u.elem_type, DataType::Float as i32);
        assert!(u.shape.is_none());
        assert!(tensor(&value_info("s", &[])).shape.is_some());
    }
}
