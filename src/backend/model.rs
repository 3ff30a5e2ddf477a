//! What we know about a model file before any runtime touches it: its bytes,
//! checksum, ONNX metadata and declared input/output.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use prost::Message;
use sha2::{Digest, Sha256};

use crate::onnx;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model file {path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("model file {path} is not a valid ONNX model: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// A tensor the model declares as input or output.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: String,
    /// -1 for a dynamic dimension.
    pub shape: Vec<i64>,
}

/// A loaded model file.
#[derive(Debug, Clone)]
pub struct ModelFile {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    pub sha256: String,
    pub metadata: BTreeMap<String, String>,
    pub input: TensorSpec,
    pub output: TensorSpec,
}

impl ModelFile {
    /// Reads and checks a model file: it must decode as ONNX and declare one
    /// float input [N,1,28,28] and one float output [N,10].
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let bytes = std::fs::read(path).map_err(|source| ModelError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(path, bytes)
    }

    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self, ModelError> {
        let invalid = |reason: String| ModelError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let model = onnx::ModelProto::decode(&bytes[..])
            .map_err(|e| invalid(format!("protobuf decode failed: {e}")))?;
        let graph = model
            .graph
            .as_ref()
            .ok_or_else(|| invalid("it has no graph".into()))?;
        let initializers: std::collections::HashSet<&str> =
            graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let inputs: Vec<_> = graph
            .input
            .iter()
            .filter(|i| !initializers.contains(i.name.as_str()))
            .collect();
        if inputs.len() != 1 || graph.output.len() != 1 {
            return Err(invalid(format!(
                "it has {} inputs and {} outputs; mnister serves models with one input [N,1,28,28] and one output [N,10]",
                inputs.len(),
                graph.output.len()
            )));
        }
        let input = spec(inputs[0]);
        let output = spec(&graph.output[0]);
        let shape_ok = |s: &[i64], want: &[i64]| {
            s.len() == want.len() && s.iter().zip(want).all(|(a, b)| *b == -1 || a == b)
        };
        if input.dtype != "float32" || !shape_ok(&input.shape, &[-1, 1, 28, 28]) {
            return Err(invalid(format!(
                "input {:?} is {} {:?}; expected float32 [N,1,28,28]",
                input.name, input.dtype, input.shape
            )));
        }
        if output.dtype != "float32" || !shape_ok(&output.shape, &[-1, 10]) {
            return Err(invalid(format!(
                "output {:?} is {} {:?}; expected float32 [N,10]",
                output.name, output.dtype, output.shape
            )));
        }
        let metadata = model
            .metadata_props
            .iter()
            .map(|p| (p.key.clone(), p.value.clone()))
            .collect();
        Ok(ModelFile {
            path: path.to_path_buf(),
            sha256: hex::encode(Sha256::digest(&bytes)),
            bytes,
            metadata,
            input,
            output,
        })
    }

    /// The version callers see: the metadata's `version`, else the first 12
    /// hex digits of the sha256.
    pub fn version(&self) -> String {
        self.metadata
            .get("version")
            .cloned()
            .unwrap_or_else(|| self.sha256[..12].to_string())
    }

    /// `precision` from the metadata; files without it are fp32.
    pub fn precision(&self) -> &str {
        self.metadata.get("precision").map_or("fp32", String::as_str)
    }

    pub fn name(&self) -> String {
        self.metadata.get("name").cloned().unwrap_or_else(|| {
            self.path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into())
        })
    }
}

fn spec(v: &onnx::ValueInfoProto) -> TensorSpec {
    let (dtype, shape) = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(onnx::type_proto::Value::TensorType(t)) => {
            let dtype = match onnx::tensor_proto::DataType::try_from(t.elem_type) {
                Ok(onnx::tensor_proto::DataType::Float) => "float32",
                Ok(onnx::tensor_proto::DataType::Uint8) => "uint8",
                Ok(onnx::tensor_proto::DataType::Int64) => "int64",
                _ => "other",
            };
            let shape = t
                .shape
                .as_ref()
                .map(|s| {
                    s.dim
                        .iter()
                        .map(|d| match d.value {
                            Some(onnx::tensor_shape_proto::dimension::Value::DimValue(v)) => v,
                            _ => -1,
                        })
                        .collect()
                })
                .unwrap_or_default();
            (dtype.to_string(), shape)
        }
        None => ("unknown".to_string(), vec![]),
    };
    TensorSpec {
        name: v.name.clone(),
        dtype,
        shape,
    }
}
