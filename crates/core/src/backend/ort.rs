//! The ONNX Runtime backend. The runtime is loaded at run time from the
//! library the setup script provisions (`load-dynamic`), so building mnister
//! never downloads anything.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;

use super::model::{self, ModelError, ModelFile};
use super::{Backend, BackendError, CLASSES};
use crate::preprocess::PIXELS;

/// Env var that points at libonnxruntime.so.
pub const ORT_LIB_ENV: &str = "MNISTER_ORT_LIB";
const SETUP_HINT: &str = "run scripts/setup-onnxruntime.sh (it downloads the pinned onnxruntime wheel from PyPI and extracts the library to .onnxruntime/lib), or point MNISTER_ORT_LIB / --ort-lib at an existing libonnxruntime.so";

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("ONNX Runtime library not found (looked in: {searched}); {SETUP_HINT}")]
    NotFound { searched: String },
    #[error("ONNX Runtime library {path} could not be loaded: {reason}; {SETUP_HINT}")]
    Load { path: PathBuf, reason: String },
    #[error("ONNX Runtime could not create a session for {model}: {reason}")]
    Session { model: PathBuf, reason: String },
    #[error("model file {model} is not a valid ONNX model: {reason}")]
    InvalidModel { model: PathBuf, reason: String },
}

static ENV: OnceLock<Environment> = OnceLock::new();

/// Where we look for the library when no path is given.
fn candidates() -> Vec<PathBuf> {
    let mut c = vec![PathBuf::from(".onnxruntime/lib/libonnxruntime.so")];
    if let Ok(exe) = std::env::current_exe() {
        // Next to the binary (container image), and at the repo root when the
        // binary sits in target/<profile>/ or target/<profile>/deps/.
        for anc in exe.ancestors().skip(1).take(4) {
            c.push(anc.join("libonnxruntime.so"));
            c.push(anc.join(".onnxruntime/lib/libonnxruntime.so"));
        }
    }
    // The workspace root, for binaries run from anywhere in a checkout.
    c.push(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.onnxruntime/lib/libonnxruntime.so"),
    );
    c
}

/// Resolves the library path: explicit flag, then env var, then the usual
/// places.
pub fn resolve_library(explicit: Option<&Path>) -> Result<PathBuf, RuntimeError> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os(ORT_LIB_ENV) {
        return Ok(PathBuf::from(p));
    }
    let c = candidates();
    c.iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| RuntimeError::NotFound {
            searched: c
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Loads ONNX Runtime once per process and returns its environment.
pub fn init_runtime(explicit: Option<&Path>) -> Result<&'static Environment, RuntimeError> {
    if let Some(env) = ENV.get() {
        return Ok(env);
    }
    let path = resolve_library(explicit)?;
    if !path.is_file() {
        return Err(RuntimeError::Load {
            reason: "no such file".into(),
            path,
        });
    }
    let load = |reason: String| RuntimeError::Load {
        path: path.clone(),
        reason,
    };
    let env = ort::init_from(&path)
        .map_err(|e| load(e.to_string()))?
        .with_name("mnister")
        .build()
        .map_err(|e| load(e.to_string()))?;
    Ok(ENV.get_or_init(|| env))
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// Reads a model file and describes it through a session of its own: for
/// tools and tests (the engine describes a model from its first worker's
/// session instead).
pub fn load_model(env: &'static Environment, path: &Path) -> Result<ModelFile, LoadError> {
    Ok(open_model(env, path, model::read(path)?, 1)?.0)
}

/// A session over a model's bytes, and the model described from it: the
/// bytes must load the way the server loads them. `path` names the model.
pub fn open_model(
    env: &'static Environment,
    path: &Path,
    bytes: impl Into<std::sync::Arc<[u8]>>,
    intra_threads: usize,
) -> Result<(ModelFile, OrtBackend), LoadError> {
    let bytes = bytes.into();
    let backend = OrtBackend::new(env, path, &bytes, intra_threads)?;
    let model = ModelFile::describe(path, bytes, backend.session())?;
    Ok((model, backend))
}

/// One ONNX Runtime session; one per worker thread.
pub struct OrtBackend {
    session: Session,
    input: String,
}

impl OrtBackend {
    /// Builds a session over a model's bytes. `path` only names the model in
    /// errors.
    pub fn new(
        env: &'static Environment,
        path: &Path,
        bytes: &[u8],
        intra_threads: usize,
    ) -> Result<Self, RuntimeError> {
        let err = |e: &dyn std::fmt::Display| RuntimeError::Session {
            model: path.to_path_buf(),
            reason: e.to_string(),
        };
        let session = Session::builder(env)
            .map_err(|e| err(&e))?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| err(&e))?
            .with_intra_threads(intra_threads.max(1))
            .map_err(|e| err(&e))?
            .with_inter_threads(1)
            .map_err(|e| err(&e))?
            // A spinning pool burns the core the other session needs.
            .with_intra_op_spinning(false)
            .map_err(|e| err(&e))?
            // The options above are ours; a failure here is the file's.
            .commit_from_memory(bytes)
            .map_err(|e| RuntimeError::InvalidModel {
                model: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        let input = session
            .inputs()
            .first()
            .map(|i| i.name().to_string())
            .unwrap_or_default();
        Ok(OrtBackend { session, input })
    }

    /// A session over an already described model.
    pub fn for_model(
        env: &'static Environment,
        model: &ModelFile,
        intra_threads: usize,
    ) -> Result<Self, RuntimeError> {
        Self::new(env, &model.path, &model.bytes, intra_threads)
    }

    /// The session, for describing the model it was built from.
    pub fn session(&self) -> &Session {
        &self.session
    }
}

impl Backend for OrtBackend {
    fn infer(&mut self, input: &[f32], n: usize) -> Result<Vec<f32>, BackendError> {
        debug_assert_eq!(input.len(), n * PIXELS);
        let rt = |e: ort::Error| BackendError::Runtime(e.to_string());
        let tensor = TensorRef::from_array_view(([n, 1, 28, 28], input)).map_err(rt)?;
        let outputs = self
            .session
            .run(ort::inputs![self.input.as_str() => tensor])
            .map_err(rt)?;
        let (_, probs) = outputs[0].try_extract_tensor::<f32>().map_err(rt)?;
        if probs.len() != n * CLASSES {
            return Err(BackendError::OutputShape {
                n,
                got: probs.len(),
                expected: n * CLASSES,
            });
        }
        Ok(probs.to_vec())
    }
}
