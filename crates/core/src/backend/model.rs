//! What we know about a model file: its bytes, checksum, ONNX metadata and
//! declared input/output. The description is read through ONNX Runtime
//! itself, so the core needs no protobuf code of its own and judges the
//! file exactly as the runtime that will serve it does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ort::session::Session;
use ort::value::{TensorElementType, ValueType};
use sha2::{Digest, Sha256};

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
    pub bytes: Arc<[u8]>,
    pub sha256: String,
    pub metadata: BTreeMap<String, String>,
    pub input: TensorSpec,
    pub output: TensorSpec,
}

/// Reads a model file's bytes.
pub fn read(path: &Path) -> Result<Arc<[u8]>, ModelError> {
    std::fs::read(path)
        .map(Arc::from)
        .map_err(|source| ModelError::Read {
            path: path.to_path_buf(),
            source,
        })
}

impl ModelFile {
    /// Describes a model from a session ONNX Runtime built from `bytes`,
    /// and checks that it declares one float input [N,1,28,28] and one float
    /// output [N,10].
    pub fn describe(path: &Path, bytes: Arc<[u8]>, session: &Session) -> Result<Self, ModelError> {
        let invalid = |reason: String| ModelError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let (inputs, outputs) = (session.inputs(), session.outputs());
        if inputs.len() != 1 || outputs.len() != 1 {
            return Err(invalid(format!(
                "it has {} inputs and {} outputs; mnister serves models with one input [N,1,28,28] and one output [N,10]",
                inputs.len(),
                outputs.len()
            )));
        }
        let input = spec(inputs[0].name(), inputs[0].dtype());
        let output = spec(outputs[0].name(), outputs[0].dtype());
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
        let md = session
            .metadata()
            .map_err(|e| invalid(format!("its metadata cannot be read: {e}")))?;
        let keys = md
            .custom_keys()
            .map_err(|e| invalid(format!("its metadata cannot be read: {e}")))?;
        let metadata = keys
            .into_iter()
            .filter_map(|k| md.custom(&k).map(|v| (k, v)))
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
        self.metadata
            .get("precision")
            .map_or("fp32", String::as_str)
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

fn spec(name: &str, t: &ValueType) -> TensorSpec {
    let (dtype, shape) = match t {
        ValueType::Tensor { ty, shape, .. } => (
            match ty {
                TensorElementType::Float32 => "float32",
                TensorElementType::Uint8 => "uint8",
                TensorElementType::Int64 => "int64",
                _ => "other",
            },
            shape.iter().copied().collect(),
        ),
        _ => ("other", vec![]),
    };
    TensorSpec {
        name: name.to_string(),
        dtype: dtype.to_string(),
        shape,
    }
}
