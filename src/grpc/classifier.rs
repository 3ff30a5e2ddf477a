//! `mnister.v1.DigitClassifier` over the engine.

use std::sync::Arc;
use std::time::Instant;

use mnister_core::engine::{Classification, Engine, Input, Options, Traffic};
use tonic::{Request, Response, Status, Streaming};

use super::FrameStream;
use crate::error::ServiceError;
use crate::frontend::{ServerLimits, ServerState};
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
        preprocessed: c.preprocessed.unwrap_or_default().into(),
        error: None,
        abstained: c.abstained,
    }
}

async fn classify(
    engine: Arc<Engine>,
    mut req: pb::ClassifyRequest,
    deadline: Instant,
    traffic: Traffic,
    rpc: &'static str,
) -> Result<pb::ClassifyResponse, ServiceError> {
    let input = take_input(&mut req)?;
    let opts = Options {
        want_preprocessed: req.return_preprocessed,
        min_confidence: req.min_confidence,
        ..Options::new(deadline, traffic, rpc)
    };
    let c = engine.classify(input, opts).await?;
    Ok(to_response(req.id, c))
}

impl super::HasId for pb::ClassifyRequest {
    fn id(&self) -> &str {
        &self.id
    }
}

#[tonic::async_trait]
impl DigitClassifier for ClassifierService {
    async fn classify(
        &self,
        request: Request<pb::ClassifyRequest>,
    ) -> Result<Response<pb::ClassifyResponse>, Status> {
        super::unary(&self.state, "Classify", request, |engine, req, deadline| {
            classify(engine, req, deadline, Traffic::Interactive, "Classify")
        })
        .await
    }

    type ClassifyStreamStream = FrameStream<pb::ClassifyResponse>;

    /// A bad frame gets its own error in its answer and the stream goes on.
    async fn classify_stream(
        &self,
        request: Request<Streaming<pb::ClassifyRequest>>,
    ) -> Result<Response<Self::ClassifyStreamStream>, Status> {
        super::frames(
            &self.state,
            "ClassifyStream",
            request,
            |engine, frame, deadline| {
                classify(engine, frame, deadline, Traffic::Bulk, "ClassifyStream")
            },
            |result, meta| {
                result.unwrap_or_else(|e| pb::ClassifyResponse {
                    id: meta.id,
                    model_version: meta.model_version,
                    error: Some(pb::FrameError {
                        code: e.code() as i32,
                        message: e.to_string(),
                    }),
                    ..Default::default()
                })
            },
        )
    }

    async fn get_model_info(
        &self,
        _request: Request<pb::GetModelInfoRequest>,
    ) -> Result<Response<pb::ModelInfo>, Status> {
        let limits = &self.state.limits;
        self.state
            .call("GetModelInfo", |engine| async move {
                Ok(model_info(&engine, limits))
            })
            .await
            .map(Response::new)
            .map_err(Status::from)
    }
}

/// The server's limits as the API reports them.
pub fn limits(l: &ServerLimits) -> pb::Limits {
    pb::Limits {
        max_batch_size: l.max_batch_size as u32,
        max_queue: l.max_queue as u32,
        max_image_bytes: l.max_image_bytes as u64,
        max_pixels: l.max_pixels,
        max_frames_in_flight_per_stream: l.max_frames_in_flight as u32,
        max_message_bytes: l.max_message_bytes as u64,
        default_timeout_ms: l.request_timeout.as_millis() as u64,
        max_concurrent_streams_per_connection: l.max_concurrent_streams,
        queue_policy: l.queue_policy.as_str().into(),
        default_min_confidence: l.default_min_confidence,
        max_connection_age_ms: ms(l.connections.max_age),
        max_connection_age_grace_ms: l.connections.age_grace.as_millis() as u64,
        max_connection_idle_ms: ms(l.connections.max_idle),
        handshake_timeout_ms: l.connections.handshake_timeout.as_millis() as u64,
    }
}

/// A limit in milliseconds, 0 when off.
fn ms(d: Option<std::time::Duration>) -> u64 {
    d.map_or(0, |d| d.as_millis() as u64)
}

/// The model's description as GetModelInfo returns it.
pub fn model_info(engine: &Engine, server: &ServerLimits) -> pb::ModelInfo {
    let md = &engine.model.metadata;
    let tensor = |t: &mnister_core::backend::model::TensorSpec, description: &str| pb::TensorInfo {
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
        limits: Some(limits(server)),
        metadata: md.clone().into_iter().collect(),
        precision: engine.model.precision().to_string(),
    }
}
