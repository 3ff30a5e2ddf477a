//! The HTTP front end: the drawing page at `/` and a small JSON API over the
//! same engine as gRPC (`POST /v1/classify`, `GET /v1/model`). One code
//! path: the same admission, limits, preprocessing and batcher, and errors
//! mapped from the same `ServiceError`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use mnister_core::engine::{Classification, Input, Options, Traffic};
use tracing::Instrument;

use crate::auth::RequireToken;
use crate::error::{ServiceError, code_label};
use crate::frontend::ServerState;
use crate::grpc::classifier::model_info;

const PAGE: &str = include_str!("../web/index.html");

/// JSON form of a classify request. Exactly one of `image`, `pixels` or
/// `mnist`, base64-encoded.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifyJson {
    #[serde(default)]
    pub id: String,
    pub image: Option<String>,
    pub pixels: Option<PixelsJson>,
    pub mnist: Option<String>,
    #[serde(default)]
    pub return_preprocessed: bool,
    /// Mark the answer abstained below this confidence (default: the
    /// server's --min-confidence).
    pub min_confidence: Option<f32>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PixelsJson {
    pub width: u64,
    pub height: u64,
    pub data: String,
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct ClassifyQuery {
    /// For raw image bodies: return the preprocessed 28x28 image.
    #[serde(default)]
    pub preprocessed: bool,
    #[serde(default)]
    pub id: Option<String>,
    /// For raw image bodies: the request's min_confidence.
    pub min_confidence: Option<f32>,
}

/// An error as JSON with the HTTP status that matches its gRPC code.
pub struct ApiError(pub ServiceError);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.0.code();
        (
            self.0.http_status(),
            Json(serde_json::json!({"error": {"code": code_label(code), "message": self.0.to_string()}})),
        )
            .into_response()
    }
}

fn b64(field: &str, s: &str) -> Result<Bytes, ServiceError> {
    B64.decode(s.trim())
        .map(Bytes::from)
        .map_err(|e| ServiceError::BadRequest(format!("{field} must be standard base64: {e}")))
}

/// A classify request, whichever body it came in.
struct Parsed {
    id: String,
    input: Input,
    want_preprocessed: bool,
    min_confidence: Option<f32>,
}

fn input_from_json(j: ClassifyJson) -> Result<Parsed, ServiceError> {
    let given = [j.image.is_some(), j.pixels.is_some(), j.mnist.is_some()]
        .iter()
        .filter(|v| **v)
        .count();
    if given > 1 {
        return Err(ServiceError::BadRequest(
            "set exactly one of image, pixels or mnist, not several".into(),
        ));
    }
    let input = if let Some(s) = j.image {
        Input::Image(b64("image", &s)?)
    } else if let Some(p) = j.pixels {
        Input::Pixels {
            width: p.width,
            height: p.height,
            data: b64("pixels.data", &p.data)?,
        }
    } else if let Some(s) = j.mnist {
        Input::Mnist(b64("mnist", &s)?)
    } else {
        return Err(ServiceError::NoInput);
    };
    Ok(Parsed {
        id: j.id,
        input,
        want_preprocessed: j.return_preprocessed,
        min_confidence: j.min_confidence,
    })
}

async fn classify(
    State(state): State<Arc<ServerState>>,
    Query(q): Query<ClassifyQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let deadline = state.deadline(None);
    let span = tracing::info_span!(
        "request",
        otel.name = "HttpClassify",
        otel.kind = "server",
        rpc = "HttpClassify",
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    crate::telemetry::adopt(&span, &crate::telemetry::Headers(&headers));
    let result = state
        .call("HttpClassify", |engine| async move {
            let r = parse_request(q, &headers, body)?;
            let opts = Options {
                want_preprocessed: r.want_preprocessed,
                min_confidence: r.min_confidence,
                ..Options::new(deadline, Traffic::Interactive, "HttpClassify")
            };
            let c = engine.classify(r.input, opts).await?;
            Ok(to_json(r.id, c))
        })
        .instrument(span.clone())
        .await;
    let _response = tracing::info_span!(parent: &span, "response").entered();
    match result {
        Ok(v) => Json(v).into_response(),
        Err(e) => ApiError(e).into_response(),
    }
}

/// The request's input: a JSON body, or any other body as the encoded image
/// itself (curl --data-binary @digit.png). The body is not copied.
fn parse_request(
    q: ClassifyQuery,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Parsed, ServiceError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if content_type.starts_with("application/json") {
        let j: ClassifyJson = serde_json::from_slice(&body).map_err(|e| {
            ServiceError::BadRequest(format!(
                "the JSON body is not a classify request ({e}); expected {{\"image\": base64}} or {{\"mnist\": base64}} or {{\"pixels\": {{\"width\", \"height\", \"data\": base64}}}}"
            ))
        })?;
        input_from_json(j)
    } else {
        Ok(Parsed {
            id: q.id.unwrap_or_default(),
            input: Input::Image(body),
            want_preprocessed: q.preprocessed,
            min_confidence: q.min_confidence,
        })
    }
}

fn to_json(id: String, c: Classification) -> serde_json::Value {
    let us = |d: std::time::Duration| d.as_micros() as u64;
    serde_json::json!({
        "id": id,
        "digit": c.digit,
        "confidence": c.confidence,
        "abstained": c.abstained,
        "probabilities": c.probabilities,
        "model_version": &*c.model_version,
        "timings": {
            "queue_us": us(c.timings.queue),
            "preprocess_us": us(c.timings.preprocess),
            "inference_us": us(c.timings.inference),
            "total_us": us(c.timings.total),
        },
        "preprocessed": c.preprocessed.map(|p| B64.encode(p)),
    })
}

async fn model(State(state): State<Arc<ServerState>>) -> Response {
    match state.engine() {
        Ok(engine) => {
            let info = model_info(&engine, &state.limits);
            Json(serde_json::json!({
                "name": info.name,
                "version": info.version,
                "sha256": info.sha256,
                "precision": info.precision,
                "accuracy": info.accuracy,
                "max_image_bytes": state.limits.max_image_bytes,
                "max_pixels": state.limits.max_pixels,
                "default_min_confidence": state.limits.default_min_confidence,
            }))
            .into_response()
        }
        Err(e) => ApiError(e).into_response(),
    }
}

/// The page and the JSON API. Classification takes the same bearer token as
/// gRPC, through the same layer; the page, the model description and the
/// health check stay open.
pub fn router(state: Arc<ServerState>, max_body: usize) -> Router {
    let auth = RequireToken::new(state.auth.clone());
    Router::new()
        .route(
            "/",
            get(|| async { ([(header::CACHE_CONTROL, "no-cache")], Html(PAGE)) }),
        )
        .route("/v1/classify", post(classify).route_layer(auth))
        .route("/v1/model", get(model))
        .route("/healthz", get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}
