//! The server's flags. Each one is also an env var, and the defaults run on a
//! laptop without further thought.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::batcher::QueuePolicy;

/// Parses "250ms", "2s", "500us", "1m" or a bare number of milliseconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration; use e.g. 500us, 2ms, 1.5s or 1m"))?;
    let secs = match unit.trim() {
        "" | "ms" => v / 1e3,
        "us" | "µs" => v / 1e6,
        "ns" => v / 1e9,
        "s" => v,
        "m" => v * 60.0,
        other => {
            return Err(format!(
                "unknown duration unit {other:?} in {s:?}; use ns, us, ms, s or m"
            ));
        }
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?} is not a valid duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "mnister-server",
    version,
    about = "gRPC service that reads handwritten digits: Classify, ClassifyStream and GetModelInfo over a dynamic batcher into ONNX Runtime"
)]
pub struct ServerArgs {
    /// ONNX model to serve: the int8 model by default (models/mnist-cnn.md
    /// says why); models/mnist-cnn.onnx is the fp32 original.
    #[arg(
        long,
        env = "MNISTER_MODEL",
        default_value = "models/mnist-cnn.int8.onnx"
    )]
    pub model: PathBuf,

    /// libonnxruntime.so to load (default: .onnxruntime/lib, next to the binary).
    #[arg(long, env = "MNISTER_ORT_LIB")]
    pub ort_lib: Option<PathBuf>,

    /// gRPC listen address; port 0 picks a free port.
    #[arg(long, env = "MNISTER_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,

    /// HTTP address for the drawing page (/) and the JSON API (/v1/classify).
    #[arg(long, env = "MNISTER_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    /// HTTP address for Prometheus' /metrics.
    #[arg(long, env = "MNISTER_METRICS_ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_addr: SocketAddr,

    /// Model name on the KServe v2 / Triton endpoint (inference.GRPCInferenceService).
    #[arg(long, env = "MNISTER_KSERVE_MODEL_NAME", default_value = "mnist")]
    pub kserve_model_name: String,

    /// TLS certificate chain (PEM) for the gRPC port; with --tls-key turns TLS on.
    #[arg(long, env = "MNISTER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM).
    #[arg(long, env = "MNISTER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// CA bundle (PEM) that client certificates must chain to: mutual TLS.
    #[arg(long, env = "MNISTER_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// File holding a bearer token that inference calls (gRPC and the JSON
    /// API) must present; health and reflection stay open.
    #[arg(long, env = "MNISTER_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,

    /// Largest batch handed to ONNX Runtime. Per-image cost is flat from
    /// batch 2 on for this model, so a small cap loses no throughput and
    /// bounds how long a call waits behind another's batch
    /// (docs/benchmarks.md, "Flags").
    #[arg(long, env = "MNISTER_MAX_BATCH_SIZE", default_value_t = 16)]
    pub max_batch_size: usize,

    /// How long a worker waits for more requests after the first one of a
    /// batch. 0 is continuous batching: whatever is waiting goes now.
    #[arg(long, env = "MNISTER_MAX_BATCH_DELAY", default_value = "0ms", value_parser = parse_duration)]
    pub max_batch_delay: Duration,

    /// ONNX Runtime sessions, each on its own worker thread.
    #[arg(long, env = "MNISTER_SESSIONS", default_value_t = cores())]
    pub sessions: usize,

    /// Intra-op threads per session.
    #[arg(long, env = "MNISTER_INTRA_THREADS", default_value_t = 1)]
    pub intra_threads: usize,

    /// Threads that decode and preprocess images.
    #[arg(long, env = "MNISTER_PREPROCESS_THREADS", default_value_t = cores())]
    pub preprocess_threads: usize,

    /// Requests admitted at once (being preprocessed or waiting for the
    /// model). Past it, unary calls get RESOURCE_EXHAUSTED and streams wait.
    #[arg(long, env = "MNISTER_MAX_QUEUE", default_value_t = 1024)]
    pub max_queue: usize,

    /// `priority`: single calls (unary gRPC, HTTP, KServe infer) go ahead
    /// of stream frames, so a bulk job does not add its queue to an
    /// interactive caller's latency; `fifo`: first come, first served.
    #[arg(long, env = "MNISTER_QUEUE_POLICY", value_enum, default_value_t = QueuePolicy::Priority)]
    pub queue_policy: QueuePolicy,

    /// Largest encoded image accepted, in bytes.
    #[arg(long, env = "MNISTER_MAX_IMAGE_BYTES", default_value_t = 8 << 20)]
    pub max_image_bytes: usize,

    /// Largest image accepted, in pixels (width x height), checked from the
    /// header before decoding.
    #[arg(long, env = "MNISTER_MAX_PIXELS", default_value_t = 16_000_000)]
    pub max_pixels: u64,

    /// Largest decoded gRPC message, in bytes.
    #[arg(long, env = "MNISTER_MAX_MESSAGE_BYTES", default_value_t = 9 << 20)]
    pub max_message_bytes: usize,

    /// Frames of one ClassifyStream being worked on at once; past it the
    /// server stops reading the stream and HTTP/2 flow control pushes back.
    #[arg(long, env = "MNISTER_MAX_FRAMES_IN_FLIGHT", default_value_t = 128)]
    pub max_frames_in_flight: usize,

    /// Concurrent HTTP/2 streams per connection.
    #[arg(long, env = "MNISTER_MAX_CONCURRENT_STREAMS", default_value_t = 256)]
    pub max_concurrent_streams: u32,

    /// Deadline for calls that bring none (grpc-timeout).
    #[arg(long, env = "MNISTER_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Predictions below this confidence count as low-confidence.
    #[arg(long, env = "MNISTER_LOW_CONFIDENCE", default_value_t = 0.6)]
    pub low_confidence: f32,

    /// Warm-up batches of --max-batch-size run through each session before
    /// the server reports SERVING.
    #[arg(long, env = "MNISTER_WARMUP_RUNS", default_value_t = 1)]
    pub warmup_runs: usize,

    /// Before serving a model (at start and on reload), require it to read at
    /// least this fraction of 200 built-in MNIST test digits; 0 turns the
    /// check off.
    #[arg(long, env = "MNISTER_GOLDEN_MIN_ACCURACY", default_value_t = 0.95)]
    pub golden_min_accuracy: f32,

    /// Reload the model when the --model file changes (checked every
    /// --watch-interval). SIGHUP always reloads.
    #[arg(long, env = "MNISTER_WATCH_MODEL")]
    pub watch_model: bool,

    #[arg(long, env = "MNISTER_WATCH_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub watch_interval: Duration,

    /// Serve mnister.v1.Admin (ReloadModel). Off by default.
    #[arg(long, env = "MNISTER_ENABLE_ADMIN_RPC")]
    pub enable_admin_rpc: bool,

    /// Time in-flight work gets to finish after SIGTERM/SIGINT.
    #[arg(long, env = "MNISTER_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

impl ServerArgs {
    /// Checks flags against each other before anything starts.
    pub fn validate(&self) -> Result<(), String> {
        let mut p = Vec::new();
        if self.max_batch_size == 0 || self.max_batch_size > 4096 {
            p.push(format!(
                "--max-batch-size must be in 1..=4096, got {}",
                self.max_batch_size
            ));
        }
        if self.sessions == 0 || self.sessions > 256 {
            p.push(format!(
                "--sessions must be in 1..=256, got {}",
                self.sessions
            ));
        }
        if self.intra_threads == 0 {
            p.push("--intra-threads must be at least 1".into());
        }
        if self.preprocess_threads == 0 {
            p.push("--preprocess-threads must be at least 1".into());
        }
        if self.max_queue == 0 {
            p.push("--max-queue must be at least 1".into());
        }
        if self.max_frames_in_flight == 0 {
            p.push("--max-frames-in-flight must be at least 1".into());
        }
        if self.max_message_bytes < self.max_image_bytes {
            p.push(format!(
                "--max-message-bytes ({}) must be at least --max-image-bytes ({})",
                self.max_message_bytes, self.max_image_bytes
            ));
        }
        if !(0.0..=1.0).contains(&self.golden_min_accuracy) {
            p.push(format!(
                "--golden-min-accuracy must be in [0, 1], got {}",
                self.golden_min_accuracy
            ));
        }
        if !(0.0..=1.0).contains(&self.low_confidence) {
            p.push(format!(
                "--low-confidence must be in [0, 1], got {}",
                self.low_confidence
            ));
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(p.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("500us").unwrap(), Duration::from_micros(500));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3h").unwrap_err().contains("unit"));
    }
}
