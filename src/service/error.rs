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
