//! Metric names, buckets and registration, through the `metrics` facade:
//! the core records, the server decides how to export. Every series is
//! registered at zero on start-up, so dashboards and alerts see it from the
//! first scrape instead of "no data".

use metrics::{counter, gauge, histogram};

pub const REQUESTS: &str = "mnister_requests_total";
pub const REQUEST_DURATION: &str = "mnister_request_duration_seconds";
pub const QUEUE_DURATION: &str = "mnister_queue_duration_seconds";
pub const PREPROCESS_DURATION: &str = "mnister_preprocess_duration_seconds";
pub const INFERENCE_DURATION: &str = "mnister_inference_duration_seconds";
pub const BATCH_SIZE: &str = "mnister_batch_size";
pub const PREDICTIONS: &str = "mnister_predictions_total";
/// Answers below the request's (or the server's) min_confidence, by RPC.
pub const ABSTAINED: &str = "mnister_abstained_total";
pub const QUEUE_DEPTH: &str = "mnister_queue_depth";
pub const INFLIGHT: &str = "mnister_inflight_requests";
/// `--max-queue`: the most requests admitted at once.
pub const QUEUE_CAPACITY: &str = "mnister_queue_capacity";
pub const MODEL_INFO: &str = "mnister_model_info";
/// Calls refused for a missing or wrong bearer token.
pub const UNAUTHENTICATED: &str = "mnister_unauthenticated_total";
/// Model reloads, by result (success, failure).
pub const RELOADS: &str = "mnister_model_reloads_total";
/// Requests dropped before reaching the model, by reason.
pub const DROPPED: &str = "mnister_dropped_requests_total";

/// The RPCs we label requests with (HttpClassify is the JSON API;
/// ModelInfer and ModelStreamInfer the KServe v2 endpoint).
pub const RPCS: [&str; 6] = [
    "Classify",
    "ClassifyStream",
    "GetModelInfo",
    "HttpClassify",
    "ModelInfer",
    "ModelStreamInfer",
];
/// The gRPC codes our handlers can answer with.
pub const CODES: [&str; 9] = [
    "OK",
    "INVALID_ARGUMENT",
    "RESOURCE_EXHAUSTED",
    "DEADLINE_EXCEEDED",
    "CANCELLED",
    "UNAVAILABLE",
    "INTERNAL",
    "UNAUTHENTICATED",
    "NOT_FOUND",
];
pub const DROP_REASONS: [&str; 2] = ["deadline_exceeded", "cancelled"];

/// Latency buckets in seconds: fine below a millisecond, where a batch of
/// this model runs, and up to 10 s for the slowest decodes.
pub const LATENCY_BUCKETS: [f64; 20] = [
    0.000_05, 0.000_1, 0.000_2, 0.000_3, 0.000_5, 0.000_75, 0.001, 0.001_5, 0.002, 0.003, 0.005,
    0.007_5, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0,
];

/// Batch-size buckets: powers of two up to the largest batch.
pub fn batch_buckets(max_batch: usize) -> Vec<f64> {
    let mut b = vec![];
    let mut v = 1usize;
    while v < max_batch {
        b.push(v as f64);
        v *= 2;
    }
    b.push(max_batch as f64);
    b
}

/// Registers every series at zero and describes it, on whatever recorder
/// is installed.
pub fn register(max_queue: usize) {
    for rpc in RPCS {
        for code in CODES {
            counter!(REQUESTS, "rpc" => rpc, "code" => code).increment(0);
        }
        let _ = histogram!(REQUEST_DURATION, "rpc" => rpc);
    }
    let _ = histogram!(QUEUE_DURATION);
    let _ = histogram!(PREPROCESS_DURATION);
    let _ = histogram!(INFERENCE_DURATION);
    let _ = histogram!(BATCH_SIZE);
    for d in 0..10 {
        counter!(PREDICTIONS, "digit" => d.to_string()).increment(0);
    }
    for rpc in RPCS {
        counter!(ABSTAINED, "rpc" => rpc).increment(0);
    }
    counter!(UNAUTHENTICATED).increment(0);
    metrics::describe_counter!(
        UNAUTHENTICATED,
        "Calls refused for a missing or wrong bearer token."
    );
    for r in ["success", "failure"] {
        counter!(RELOADS, "result" => r).increment(0);
    }
    metrics::describe_counter!(
        RELOADS,
        "Model reloads, by result; a failure leaves the previous model serving."
    );
    for r in DROP_REASONS {
        counter!(DROPPED, "reason" => r).increment(0);
    }
    for lane in ["single", "stream"] {
        gauge!(QUEUE_DEPTH, "lane" => lane).set(0.0);
    }
    gauge!(INFLIGHT).set(0.0);
    gauge!(QUEUE_CAPACITY).set(max_queue as f64);
    metrics::describe_counter!(
        REQUESTS,
        "Requests (stream frames count one each), by RPC and gRPC status code."
    );
    metrics::describe_histogram!(
        REQUEST_DURATION,
        metrics::Unit::Seconds,
        "End-to-end server time per request."
    );
    metrics::describe_histogram!(
        QUEUE_DURATION,
        metrics::Unit::Seconds,
        "Time a request waited for a batch."
    );
    metrics::describe_histogram!(
        PREPROCESS_DURATION,
        metrics::Unit::Seconds,
        "Decode and preprocessing time per request."
    );
    metrics::describe_histogram!(
        INFERENCE_DURATION,
        metrics::Unit::Seconds,
        "ONNX Runtime time per batch."
    );
    metrics::describe_histogram!(BATCH_SIZE, "Images per batch handed to ONNX Runtime.");
    metrics::describe_counter!(PREDICTIONS, "Predictions, by predicted digit.");
    metrics::describe_counter!(
        ABSTAINED,
        "Answers marked abstained: confidence below the request's min_confidence (default --min-confidence), by RPC."
    );
    metrics::describe_counter!(
        DROPPED,
        "Requests dropped before reaching the model, by reason."
    );
    metrics::describe_gauge!(
        QUEUE_DEPTH,
        "Requests waiting for a batch worker, by lane (single calls, stream frames)."
    );
    metrics::describe_gauge!(
        INFLIGHT,
        "Requests admitted (preprocessing, queued or in a batch) and not yet answered."
    );
    metrics::describe_gauge!(
        QUEUE_CAPACITY,
        "The most requests admitted at once (--max-queue)."
    );
    metrics::describe_gauge!(
        MODEL_INFO,
        "The loaded model (value 1), by version and sha256."
    );
}

/// The labels of one `mnister_model_info` series.
#[derive(Debug, Clone, Copy)]
pub struct ModelLabels<'a> {
    pub version: &'a str,
    pub sha256: &'a str,
    pub precision: &'a str,
}

impl ModelLabels<'_> {
    fn gauge(&self) -> metrics::Gauge {
        gauge!(MODEL_INFO, "version" => self.version.to_string(), "sha256" => self.sha256.to_string(), "precision" => self.precision.to_string())
    }
}

/// Marks `current` as the loaded model, and the previous one as gone. Each
/// series is named by its own labels, so an fp32 -> int8 reload zeroes the
/// fp32 series rather than a series that never existed.
pub fn set_model(previous: Option<ModelLabels<'_>>, current: ModelLabels<'_>) {
    if let Some(p) = previous {
        p.gauge().set(0.0);
    }
    current.gauge().set(1.0);
}
