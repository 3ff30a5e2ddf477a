//! Every way a request can fail, mapped once to a gRPC status and once to an
//! HTTP status. The core's errors arrive as `ClassifyError`; the transports
//! add their own (no input, unknown model, not authenticated, not ready).

use axum::http::StatusCode;
use mnister_core::engine::ClassifyError;
use tonic::{Code, Status};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Classify(#[from] ClassifyError),
    #[error(
        "request has no input; set exactly one of image (encoded bytes), pixels (raw grayscale with width and height) or mnist (784 bytes)"
    )]
    NoInput,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    UnknownModel(String),
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error("the model is not loaded yet; wait for the health check to report SERVING")]
    NotReady,
    #[error("the server is shutting down; retry on another instance")]
    ShuttingDown,
}

impl From<mnister_core::preprocess::PreprocessError> for ServiceError {
    fn from(e: mnister_core::preprocess::PreprocessError) -> Self {
        ServiceError::Classify(e.into())
    }
}

impl ServiceError {
    pub fn code(&self) -> Code {
        match self {
            ServiceError::Classify(e) => match e {
                ClassifyError::Preprocess(_)
                | ClassifyError::TooManyImages { .. }
                | ClassifyError::BadMinConfidence(_) => Code::InvalidArgument,
                ClassifyError::QueueFull { .. } => Code::ResourceExhausted,
                ClassifyError::DeadlineExceeded(_) => Code::DeadlineExceeded,
                ClassifyError::ShuttingDown => Code::Unavailable,
                ClassifyError::Internal(_) => Code::Internal,
            },
            ServiceError::NoInput | ServiceError::BadRequest(_) => Code::InvalidArgument,
            ServiceError::UnknownModel(_) => Code::NotFound,
            ServiceError::Unauthenticated(_) => Code::Unauthenticated,
            ServiceError::NotReady | ServiceError::ShuttingDown => Code::Unavailable,
        }
    }

    /// The HTTP status the JSON API answers with.
    pub fn http_status(&self) -> StatusCode {
        http_status(self.code())
    }
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

/// The HTTP status that matches a gRPC code.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::NotFound => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The label value used in `mnister_requests_total{code}`.
pub fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::Cancelled => "CANCELLED",
        Code::Unavailable => "UNAVAILABLE",
        Code::Unauthenticated => "UNAUTHENTICATED",
        Code::NotFound => "NOT_FOUND",
        _ => "INTERNAL",
    }
}

/// tonic reports a request message over `max_decoding_message_size` as
/// OUT_OF_RANGE; gRPC's convention (and grpc-go/grpc-java) is
/// RESOURCE_EXHAUSTED. Returns the status to send instead, or None when
/// `(code, message)` is something else.
pub fn message_too_large(code: Code, message: &str) -> Option<Status> {
    const PREFIX: &str = "Error, decoded message length too large: found ";
    if code != Code::OutOfRange || !message.starts_with(PREFIX) {
        return None;
    }
    let mut nums = message[PREFIX.len()..]
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty());
    let (found, limit) = (nums.next()?, nums.next()?);
    Some(Status::resource_exhausted(format!(
        "the request message is {found} bytes; messages up to {limit} bytes are accepted (--max-message-bytes)"
    )))
}

/// Rewrites a trailers-only gRPC response carrying tonic's message-size
/// error (unary calls fail before any handler runs, so this happens at the
/// HTTP layer).
pub fn rewrite_too_large<B>(mut res: http::Response<B>) -> http::Response<B> {
    let h = res.headers();
    let code = h
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok());
    if code != Some(Code::OutOfRange as i32) {
        return res;
    }
    let message = h
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(|m| m.replace("%20", " "))
        .unwrap_or_default();
    if let Some(s) = message_too_large(Code::OutOfRange, &message) {
        let h = res.headers_mut();
        h.insert("grpc-status", http::HeaderValue::from(s.code() as i32));
        if let Ok(v) = http::HeaderValue::from_str(s.message()) {
            h.insert("grpc-message", v);
        }
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tonic_size_error_becomes_resource_exhausted() {
        let s = message_too_large(
            Code::OutOfRange,
            "Error, decoded message length too large: found 5000 bytes, the limit is: 4096 bytes",
        )
        .unwrap();
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(s.message().contains("5000 bytes") && s.message().contains("4096"));
        assert!(message_too_large(Code::OutOfRange, "something else").is_none());
        assert!(
            message_too_large(
                Code::Internal,
                "Error, decoded message length too large: found 1 bytes, the limit is: 0 bytes"
            )
            .is_none()
        );
    }

    #[test]
    fn every_error_has_the_documented_code() {
        use mnister_core::preprocess::PreprocessError;
        let cases = [
            (
                ServiceError::from(PreprocessError::EmptyImage),
                Code::InvalidArgument,
            ),
            (ServiceError::NoInput, Code::InvalidArgument),
            (
                ClassifyError::QueueFull { max_queue: 1 }.into(),
                Code::ResourceExhausted,
            ),
            (
                ClassifyError::DeadlineExceeded("x".into()).into(),
                Code::DeadlineExceeded,
            ),
            (ClassifyError::ShuttingDown.into(), Code::Unavailable),
            (ServiceError::NotReady, Code::Unavailable),
            (ServiceError::UnknownModel("m".into()), Code::NotFound),
            (ServiceError::Unauthenticated("no"), Code::Unauthenticated),
        ];
        for (e, code) in cases {
            assert_eq!(e.code(), code, "{e}");
            assert_eq!(Status::from(e.clone()).code(), code);
        }
        assert_eq!(
            ServiceError::from(ClassifyError::QueueFull { max_queue: 1 }).http_status(),
            StatusCode::TOO_MANY_REQUESTS
        );
    }
}
