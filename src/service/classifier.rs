//! `mnister.v1.DigitClassifier` over the engine.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use metrics::{counter, histogram};
use tokio_stream::Stream;
use tonic::{Code, Request, Response, Status, Streaming};

use super::ServerState;
use super::error::{ServiceError, code_label};
use crate::engine::{Classification, Engine, Input, Traffic};
use crate::metrics as m;
use crate::proto::v1 as pb;
use crate::proto::v1::digit_classifier_server::DigitClassifier;

pub struct ClassifierService {
    state: Arc<ServerState>,
}

impl ClassifierService {
    pub fn new(state: Arc<ServerState>) -> Self {
        ClassifierService { state }
    }
}

fn record(rpc: &'static str, code: Code, started: Instant) {
    counter!(m::REQUESTS, "rpc" => rpc, "code" => code_label(code)).increment(1);
    histogram!(m::REQUEST_DURATION, "rpc" => rpc).record(started.elapsed().as_secs_f64());
}

/// Takes the input out of a request without copying its bytes.
pub fn take_input(req: &mut pb::ClassifyRequest) -> Result<Input, ServiceError> {
    use pb::classify_request::Input as I;
    match req.input.take() {
        Some(I::Image(b)) => Ok(Input::Image(b)),
        Some(I::Pixels(p)) => Ok(Input::Pixels {
            width: p.width.into(),
            height: p.height.into(),
            data: p.data,
        }),
        Some(I::Mnist(b)) => Ok(Input::Mnist(b)),
        None => Err(ServiceError::NoInput),
    }
}

pub fn to_response(id: String, c: Classification) -> pb::ClassifyResponse {
    let us = |d: std::time::Duration| d.as_micros() as u64;
    pb::ClassifyResponse {
        id,
        digit: c.digit as u32,
        confidence: c.confidence,
        probabilities: c.probabilities.to_vec(),
        model_version: c.model_version.to_string(),
        timings: Some(pb::Timings {
            queue_us: us(c.timings.queue),
            preprocess_us: us(c.timings.preprocess),
            inference_us: us(c.timings.inference),
            total_us: us(c.timings.total),
        }),
        preprocessed: c.preprocessed.unwrap_or_default(),
        error: None,
    }
}

async fn classify(
    engine: &Engine,
    mut req: pb::ClassifyRequest,
    deadline: Instant,
    traffic: Traffic,
) -> Result<pb::ClassifyResponse, ServiceError> {
    let input = take_input(&mut req)?;
    let c = engine
        .classify(input, Some(deadline), traffic, req.return_preprocessed)
        .await?;
    Ok(to_response(req.id, c))
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<pb::ClassifyResponse, Status>> + Send>>;

#[tonic::async_trait]
impl DigitClassifier for ClassifierService {
    async fn classify(
        &self,
        request: Request<pb::ClassifyRequest>,
    ) -> Result<Response<pb::ClassifyResponse>, Status> {
        let started = Instant::now();
        let deadline = self.state.deadline(request.metadata());
        let result = match self.state.engine() {
            Ok(engine) => {
                classify(
                    &engine,
                    request.into_inner(),
                    deadline,
                    Traffic::Interactive,
                )
                .await
            }
            Err(e) => Err(e),
        };
        let code = result.as_ref().map_or_else(|e| e.code(), |_| Code::Ok);
        record("Classify", code, started);
        result.map(Response::new).map_err(Status::from)
    }

    type ClassifyStreamStream = ResponseStream;

    /// Frames flow through `ordered_stream`: bounded window, request order.
    async fn classify_stream(
        &self,
        request: Request<Streaming<pb::ClassifyRequest>>,
    ) -> Result<Response<Self::ClassifyStreamStream>, Status> {
        // Fail the call itself when nothing can be served; after that each
        // frame takes the engine current at its arrival, so a reload applies
        // to long-lived streams too.
        self.state.engine().map_err(Status::from)?;
        let call_deadline = self.state.call_deadline(request.metadata());
        let state = self.state.clone();
        let inbound = request.into_inner();
        let out = super::ordered_stream(
            inbound,
            self.state.max_frames_in_flight,
            move |frame: pb::ClassifyRequest| {
                let state = state.clone();
                async move {
                    let started = Instant::now();
                    let deadline = state.frame_deadline(call_deadline);
                    let id = frame.id.clone();
                    let engine = state.engine();
                    let version = engine
                        .as_ref()
                        .map(|e| e.version.to_string())
                        .unwrap_or_default();
                    let result = match engine {
                        Ok(engine) => classify(&engine, frame, deadline, Traffic::Bulk).await,
                        Err(e) => Err(e),
                    };
                    let code = result.as_ref().map_or_else(|e| e.code(), |_| Code::Ok);
                    record("ClassifyStream", code, started);
                    result.unwrap_or_else(|e| pb::ClassifyResponse {
                        id,
                        model_version: version,
                        error: Some(pb::FrameError {
                            code: e.code() as i32,
                            message: e.to_string(),
                        }),
                        ..Default::default()
                    })
                }
            },
        );
        Ok(Response::new(Box::pin(out)))
    }

    async fn get_model_info(
        &self,
        _request: Request<pb::GetModelInfoRequest>,
    ) -> Result<Response<pb::ModelInfo>, Status> {
        let started = Instant::now();
        let result = self
            .state
            .engine()
            .map(|e| model_info(&e, &self.state.limits));
        let code = result.as_ref().map_or_else(|e| e.code(), |_| Code::Ok);
        record("GetModelInfo", code, started);
        result.map(Response::new).map_err(Status::from)
    }
}

/// The model's description as GetModelInfo returns it.
pub fn model_info(engine: &Engine, limits: &pb::Limits) -> pb::ModelInfo {
    let md = &engine.model.metadata;
    let tensor = |t: &crate::backend::model::TensorSpec, description: &str| pb::TensorInfo {
        name: t.name.clone(),
        dtype: t.dtype.clone(),
        shape: t.shape.clone(),
        description: description.to_string(),
    };
    pb::ModelInfo {
        name: engine.model.name(),
        version: engine.version.to_string(),
        sha256: engine.model.sha256.clone(),
        input: Some(tensor(
            &engine.model.input,
            md.get("input")
                .map(String::as_str)
                .unwrap_or("28x28 grayscale in MNIST form, 0..1"),
        )),
        output: Some(tensor(
            &engine.model.output,
            md.get("output")
                .map(String::as_str)
                .unwrap_or("softmax probabilities per digit"),
        )),
        labels: (0..10).map(|d| d.to_string()).collect(),
        accuracy: md
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("accuracy.")?.to_string(), v.parse().ok()?)))
            .collect(),
        limits: Some(limits.clone()),
        metadata: md.clone().into_iter().collect(),
        precision: md
            .get("precision")
            .cloned()
            .unwrap_or_else(|| "fp32".into()),
    }
}
