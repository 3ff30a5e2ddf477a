//! Every way a request can fail, mapped to a gRPC status in one place.

use tonic::{Code, Status};

use crate::batcher::BatchError;
use crate::preprocess::PreprocessError;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    Preprocess(#[from] PreprocessError),
    #[error(
        "request has no input; set exactly one of image (encoded bytes), pixels (raw grayscale with width and height) or mnist (784 bytes)"
    )]
    NoInput,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    UnknownModel(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("the server is at capacity ({max_queue} requests admitted); retry with backoff")]
    QueueFull { max_queue: usize },
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    #[error("the request was cancelled by the client")]
    Cancelled,
    #[error("the model is not loaded yet; wait for the health check to report SERVING")]
    NotReady,
    #[error("the server is shutting down; retry on another instance")]
    ShuttingDown,
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServiceError {
    pub fn code(&self) -> Code {
        match self {
            ServiceError::Preprocess(_) | ServiceError::NoInput | ServiceError::BadRequest(_) => {
                Code::InvalidArgument
            }
            ServiceError::QueueFull { .. } => Code::ResourceExhausted,
            ServiceError::UnknownModel(_) => Code::NotFound,
            ServiceError::Unauthenticated(_) => Code::Unauthenticated,
            ServiceError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            ServiceError::Cancelled => Code::Cancelled,
            ServiceError::NotReady | ServiceError::ShuttingDown => Code::Unavailable,
            ServiceError::Internal(_) => Code::Internal,
        }
    }
}

impl From<BatchError> for ServiceError {
    fn from(e: BatchError) -> Self {
        match e {
            BatchError::DeadlineExceeded { .. } => ServiceError::DeadlineExceeded(e.to_string()),
            BatchError::Backend(m) => ServiceError::Internal(m),
        }
    }
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        Status::new(e.code(), e.to_string())
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
}
