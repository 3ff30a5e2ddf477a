//! `inference.GRPCInferenceService`: the Open Inference Protocol (KServe v2)
//! with Triton's streaming and model-configuration extensions, over the same
//! engine (admission, limits, preprocessing, batcher) as DigitClassifier.
//!
//! The model takes one input, `image`, in one of three forms:
//! FP32 `[N,1,28,28]` or UINT8 `[N,28,28]` already in MNIST form, or BYTES
//! `[N]` of encoded images that go through the shared preprocessing. It
//! answers `probabilities` FP32 `[N,10]` and `digit` INT64 `[N]`. Shape,
//! datatype and byte length are checked against each other before anything
//! is batched.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use mnister_core::engine::{Classification, Engine, Input, Options, Traffic};
use mnister_core::preprocess::PIXELS;
use tonic::{Request, Response, Status, Streaming};

use super::FrameStream;
use crate::error::{ServiceError, code_label};
use crate::frontend::ServerState;
use crate::proto::inference as pb;
use crate::proto::inference::grpc_inference_service_server::GrpcInferenceService;
use crate::proto::inference::model_infer_request::InferInputTensor;
use crate::proto::inference::model_infer_response::InferOutputTensor;

pub const INPUT: &str = "image";
pub const OUT_PROBS: &str = "probabilities";
pub const OUT_DIGIT: &str = "digit";
pub const OUT_ABSTAINED: &str = "abstained";
/// The request parameter that sets the reject threshold.
pub const MIN_CONFIDENCE: &str = "min_confidence";
const ACCEPTED: &str =
    "FP32 [N,1,28,28] or UINT8 [N,28,28] (MNIST form), or BYTES [N] (encoded images)";

pub struct KServeService {
    state: Arc<ServerState>,
    model_name: String,
}

impl KServeService {
    pub fn new(state: Arc<ServerState>, model_name: String) -> Self {
        KServeService { state, model_name }
    }

    fn check_model(&self, engine: &Engine, name: &str, version: &str) -> Result<(), ServiceError> {
        check_model(&self.model_name, engine, name, version)
    }

    /// The engine, when the request names the model it serves.
    fn named_engine(&self, name: &str, version: &str) -> Result<Arc<Engine>, Status> {
        let engine = self.state.engine()?;
        self.check_model(&engine, name, version)?;
        Ok(engine)
    }
}

/// The request names the served model (and, if it names one, its version).
fn check_model(
    served: &str,
    engine: &Engine,
    name: &str,
    version: &str,
) -> Result<(), ServiceError> {
    if name != served {
        return Err(ServiceError::UnknownModel(format!(
            "unknown model {name:?}; this server serves {served:?}"
        )));
    }
    if !version.is_empty() && version != &*engine.version {
        return Err(ServiceError::UnknownModel(format!(
            "model {name:?} has no version {version:?}; the loaded version is {:?}",
            &*engine.version
        )));
    }
    Ok(())
}

fn bad(msg: String) -> ServiceError {
    ServiceError::BadRequest(msg)
}

/// The batch size a shape declares, if the shape has the expected form.
fn batch_of(shape: &[i64], tail: &[i64]) -> Option<usize> {
    (shape.len() == tail.len() + 1 && shape[1..] == *tail && shape[0] >= 1)
        .then(|| shape[0] as usize)
}

/// Which outputs to return, in the order asked.
fn requested_outputs(req: &pb::ModelInferRequest) -> Result<Vec<&'static str>, ServiceError> {
    if req.outputs.is_empty() {
        return Ok(vec![OUT_PROBS, OUT_DIGIT]);
    }
    req.outputs
        .iter()
        .map(|o| match o.name.as_str() {
            OUT_PROBS => Ok(OUT_PROBS),
            OUT_DIGIT => Ok(OUT_DIGIT),
            OUT_ABSTAINED => Ok(OUT_ABSTAINED),
            other => Err(bad(format!(
                "unknown output {other:?}; the model's outputs are {OUT_PROBS:?} (FP32 [N,10]), {OUT_DIGIT:?} (INT64 [N]) and {OUT_ABSTAINED:?} (BOOL [N])"
            ))),
        })
        .collect()
}

/// The request's `min_confidence` parameter (a double, or a number in a
/// string), if it sets one. With it, the default outputs include
/// `abstained`.
fn min_confidence(req: &pb::ModelInferRequest) -> Result<Option<f32>, ServiceError> {
    use pb::infer_parameter::ParameterChoice as P;
    let Some(p) = req.parameters.get(MIN_CONFIDENCE) else {
        return Ok(None);
    };
    let v = match &p.parameter_choice {
        Some(P::DoubleParam(v)) => Some(*v),
        Some(P::StringParam(s)) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .ok_or_else(|| {
        bad(format!(
            "parameter {MIN_CONFIDENCE:?} must be a double (or a number as a string) in [0, 1]"
        ))
    })?;
    Ok(Some(mnister_core::engine::check_min_confidence(v as f32)?))
}

/// Splits Triton's serialized BYTES tensor: each element is a 4-byte
/// little-endian length followed by that many bytes.
fn split_bytes_tensor(raw: &Bytes, n: usize) -> Result<Vec<Bytes>, ServiceError> {
    let mut out = Vec::with_capacity(n);
    let mut at = 0usize;
    while at < raw.len() {
        let Some(len) = raw.get(at..at + 4) else {
            return Err(bad(format!(
                "input {INPUT:?} (BYTES): raw_input_contents ends inside an element's 4-byte length prefix at byte {at}"
            )));
        };
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        let Some(elem) = raw.get(at + 4..at + 4 + len) else {
            return Err(bad(format!(
                "input {INPUT:?} (BYTES): element {} claims {len} bytes but only {} remain in raw_input_contents",
                out.len(),
                raw.len() - at - 4
            )));
        };
        debug_assert_eq!(elem.len(), len);
        out.push(raw.slice(at + 4..at + 4 + len));
        at += 4 + len;
    }
    if out.len() != n {
        return Err(bad(format!(
            "input {INPUT:?} (BYTES) has shape [{n}] but raw_input_contents holds {} elements",
            out.len()
        )));
    }
    Ok(out)
}

/// Checks one request's tensor against itself and turns it into engine
/// inputs. Nothing reaches the batcher unless this passes.
pub fn decode_inputs(req: &mut pb::ModelInferRequest) -> Result<Vec<Input>, ServiceError> {
    if req.inputs.len() != 1 {
        let names: Vec<_> = req.inputs.iter().map(|t| t.name.as_str()).collect();
        return Err(bad(format!(
            "expected exactly one input tensor, {INPUT:?}, got {}: {names:?}",
            req.inputs.len()
        )));
    }
    let t: InferInputTensor = req.inputs.remove(0);
    if t.name != INPUT {
        return Err(bad(format!(
            "unknown input tensor {:?}; the model's input is {INPUT:?}: {ACCEPTED}",
            t.name
        )));
    }
    let raw = match req.raw_input_contents.len() {
        0 => None,
        1 => Some(std::mem::take(&mut req.raw_input_contents[0])),
        k => {
            return Err(bad(format!(
                "raw_input_contents has {k} entries for 1 input tensor; send one per input"
            )));
        }
    };
    let contents = t.contents.unwrap_or_default();
    let has_typed = !(contents.fp32_contents.is_empty()
        && contents.uint_contents.is_empty()
        && contents.bytes_contents.is_empty()
        && contents.int_contents.is_empty()
        && contents.int64_contents.is_empty());
    if raw.is_some() && has_typed {
        return Err(bad(format!(
            "input {INPUT:?} carries both raw_input_contents and typed contents; send one of them"
        )));
    }
    let shape = &t.shape;
    let shape_err = |want: &str| {
        bad(format!(
            "input {INPUT:?} ({}) has shape {shape:?}; {} input must be {want} with N >= 1",
            t.datatype, t.datatype
        ))
    };
    match t.datatype.as_str() {
        "FP32" => {
            let n = batch_of(shape, &[1, 28, 28]).ok_or_else(|| shape_err("[N,1,28,28]"))?;
            match raw {
                // Each image is a slice of the request's own buffer.
                Some(bytes) => {
                    let want = n * PIXELS * 4;
                    if bytes.len() != want {
                        return Err(bad(format!(
                            "input {INPUT:?} (FP32) has shape {shape:?}, so raw_input_contents must be {want} bytes (4 per value), got {}",
                            bytes.len()
                        )));
                    }
                    Ok((0..n)
                        .map(|i| Input::FloatsLe(bytes.slice(i * PIXELS * 4..(i + 1) * PIXELS * 4)))
                        .collect())
                }
                None => {
                    let v = contents.fp32_contents;
                    if v.len() != n * PIXELS {
                        return Err(bad(format!(
                            "input {INPUT:?} (FP32) has shape {shape:?}, so it needs {} fp32_contents values, got {}",
                            n * PIXELS,
                            v.len()
                        )));
                    }
                    let values = Arc::new(v);
                    Ok((0..n)
                        .map(|i| Input::Floats {
                            values: values.clone(),
                            offset: i * PIXELS,
                        })
                        .collect())
                }
            }
        }
        "UINT8" => {
            let n = batch_of(shape, &[28, 28]).ok_or_else(|| shape_err("[N,28,28]"))?;
            let bytes: Bytes = match raw {
                Some(bytes) => {
                    if bytes.len() != n * PIXELS {
                        return Err(bad(format!(
                            "input {INPUT:?} (UINT8) has shape {shape:?}, so raw_input_contents must be {} bytes, got {}",
                            n * PIXELS,
                            bytes.len()
                        )));
                    }
                    bytes
                }
                None => {
                    let v = contents.uint_contents;
                    if v.len() != n * PIXELS {
                        return Err(bad(format!(
                            "input {INPUT:?} (UINT8) has shape {shape:?}, so it needs {} uint_contents values, got {}",
                            n * PIXELS,
                            v.len()
                        )));
                    }
                    if let Some(i) = v.iter().position(|&x| x > 255) {
                        return Err(bad(format!(
                            "input {INPUT:?} (UINT8): uint_contents[{i}] = {} does not fit in 8 bits",
                            v[i]
                        )));
                    }
                    v.into_iter().map(|x| x as u8).collect::<Vec<u8>>().into()
                }
            };
            Ok((0..n)
                .map(|i| Input::Mnist(bytes.slice(i * PIXELS..(i + 1) * PIXELS)))
                .collect())
        }
        "BYTES" => {
            let n = batch_of(shape, &[]).ok_or_else(|| shape_err("[N]"))?;
            let elems = match raw {
                Some(bytes) => split_bytes_tensor(&bytes, n)?,
                None => {
                    if contents.bytes_contents.len() != n {
                        return Err(bad(format!(
                            "input {INPUT:?} (BYTES) has shape {shape:?}, so it needs {n} bytes_contents elements, got {}",
                            contents.bytes_contents.len()
                        )));
                    }
                    contents.bytes_contents
                }
            };
            Ok(elems.into_iter().map(Input::Image).collect())
        }
        other => Err(bad(format!(
            "input {INPUT:?} has datatype {other:?}; accepted: {ACCEPTED}"
        ))),
    }
}

fn encode_response(
    model_name: &str,
    engine: &Engine,
    id: String,
    outputs: &[&'static str],
    results: &[Classification],
) -> pb::ModelInferResponse {
    let n = results.len() as i64;
    let mut tensors = Vec::new();
    let mut raw = Vec::new();
    for &name in outputs {
        if name == OUT_PROBS {
            tensors.push(InferOutputTensor {
                name: OUT_PROBS.into(),
                datatype: "FP32".into(),
                shape: vec![n, 10],
                ..Default::default()
            });
            raw.push(
                results
                    .iter()
                    .flat_map(|c| c.probabilities.iter().flat_map(|p| p.to_le_bytes()))
                    .collect(),
            );
        } else if name == OUT_ABSTAINED {
            tensors.push(InferOutputTensor {
                name: OUT_ABSTAINED.into(),
                datatype: "BOOL".into(),
                shape: vec![n],
                ..Default::default()
            });
            raw.push(results.iter().map(|c| u8::from(c.abstained)).collect());
        } else {
            tensors.push(InferOutputTensor {
                name: OUT_DIGIT.into(),
                datatype: "INT64".into(),
                shape: vec![n],
                ..Default::default()
            });
            raw.push(
                results
                    .iter()
                    .flat_map(|c| (c.digit as i64).to_le_bytes())
                    .collect(),
            );
        }
    }
    pb::ModelInferResponse {
        model_name: model_name.to_string(),
        model_version: engine.version.to_string(),
        id,
        outputs: tensors,
        raw_output_contents: raw,
        ..Default::default()
    }
}

impl super::HasId for pb::ModelInferRequest {
    fn id(&self) -> &str {
        &self.id
    }
}

/// One inference request against `engine`, checked against the served
/// model's name and version first.
async fn infer(
    svc_model: &str,
    engine: Arc<Engine>,
    mut req: pb::ModelInferRequest,
    deadline: Instant,
    traffic: Traffic,
) -> Result<pb::ModelInferResponse, ServiceError> {
    check_model(svc_model, &engine, &req.model_name, &req.model_version)?;
    let min_confidence = min_confidence(&req)?;
    let mut outputs = requested_outputs(&req)?;
    if req.outputs.is_empty() && min_confidence.is_some() {
        outputs.push(OUT_ABSTAINED);
    }
    let inputs = decode_inputs(&mut req)?;
    let opts = Options {
        min_confidence,
        ..Options::new(
            deadline,
            traffic,
            match traffic {
                Traffic::Interactive => "ModelInfer",
                Traffic::Bulk => "ModelStreamInfer",
            },
        )
    };
    let results = engine.classify_many(inputs, opts).await?;
    Ok(encode_response(
        svc_model, &engine, req.id, &outputs, &results,
    ))
}

#[tonic::async_trait]
impl GrpcInferenceService for KServeService {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse {
            ready: self.state.engine().is_ok(),
        }))
    }

    async fn model_ready(
        &self,
        r: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let r = r.into_inner();
        let ready = self
            .state
            .engine()
            .is_ok_and(|e| self.check_model(&e, &r.name, &r.version).is_ok());
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "mnister".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: vec!["model_configuration".into(), "binary_tensor_data".into()],
        }))
    }

    async fn model_metadata(
        &self,
        r: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let r = r.into_inner();
        let engine = self.named_engine(&r.name, &r.version)?;
        use pb::model_metadata_response::TensorMetadata as T;
        let t = |name: &str, dt: &str, shape: &[i64]| T {
            name: name.into(),
            datatype: dt.into(),
            shape: shape.to_vec(),
        };
        Ok(Response::new(pb::ModelMetadataResponse {
            name: self.model_name.clone(),
            versions: vec![engine.version.to_string()],
            platform: "onnxruntime_onnx".into(),
            // One input, three accepted forms; each is listed.
            inputs: vec![
                t(INPUT, "FP32", &[-1, 1, 28, 28]),
                t(INPUT, "UINT8", &[-1, 28, 28]),
                t(INPUT, "BYTES", &[-1]),
            ],
            outputs: vec![
                t(OUT_PROBS, "FP32", &[-1, 10]),
                t(OUT_DIGIT, "INT64", &[-1]),
                t(OUT_ABSTAINED, "BOOL", &[-1]),
            ],
        }))
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        super::unary(
            &self.state,
            "ModelInfer",
            request,
            |engine, req, deadline| {
                infer(
                    &self.model_name,
                    engine,
                    req,
                    deadline,
                    Traffic::Interactive,
                )
            },
        )
        .await
    }

    type ModelStreamInferStream = FrameStream<pb::ModelStreamInferResponse>;

    /// Triton's streaming extension: a failed request is an `error_message`
    /// in its answer, and the stream goes on.
    async fn model_stream_infer(
        &self,
        request: Request<Streaming<pb::ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let model_name: Arc<str> = self.model_name.as_str().into();
        super::frames(
            &self.state,
            "ModelStreamInfer",
            request,
            move |engine, req, deadline| {
                let model_name = model_name.clone();
                async move { infer(&model_name, engine, req, deadline, Traffic::Bulk).await }
            },
            |result, _| match result {
                Ok(r) => pb::ModelStreamInferResponse {
                    error_message: String::new(),
                    infer_response: Some(r),
                },
                Err(e) => pb::ModelStreamInferResponse {
                    error_message: format!("{}: {e}", code_label(e.code())),
                    infer_response: None,
                },
            },
        )
    }

    async fn model_config(
        &self,
        r: Request<pb::ModelConfigRequest>,
    ) -> Result<Response<pb::ModelConfigResponse>, Status> {
        let r = r.into_inner();
        self.named_engine(&r.name, &r.version)?;
        Ok(Response::new(pb::ModelConfigResponse {
            config: Some(pb::ModelConfig {
                name: self.model_name.clone(),
                platform: "onnxruntime_onnx".into(),
                backend: "onnxruntime".into(),
                max_batch_size: self.state.limits.max_batch_size as i32,
                input: vec![pb::ModelInput {
                    name: INPUT.into(),
                    data_type: pb::DataType::TypeFp32 as i32,
                    format: pb::model_input::Format::Nchw as i32,
                    dims: vec![1, 28, 28],
                }],
                output: vec![
                    pb::ModelOutput {
                        name: OUT_PROBS.into(),
                        data_type: pb::DataType::TypeFp32 as i32,
                        dims: vec![10],
                        label_filename: String::new(),
                    },
                    pb::ModelOutput {
                        name: OUT_DIGIT.into(),
                        data_type: pb::DataType::TypeInt64 as i32,
                        dims: vec![1],
                        label_filename: String::new(),
                    },
                ],
            }),
        }))
    }
}
