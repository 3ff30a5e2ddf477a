//! The server's flags. Each one is also an env var, and the defaults run on a
//! laptop without further thought.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use mnister_core::batcher::{BatcherConfig, QueuePolicy};
use mnister_core::duration::parse_duration;
use mnister_core::engine::EngineConfig;
use mnister_core::preprocess::Limits;

use crate::frontend::ServerLimits;
use crate::telemetry::LogFormat;

/// Flags that contradict each other or are out of range, all of them at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid flags: {}", .0.join("; "))]
pub struct FlagsError(pub Vec<String>);

/// `parse_duration` for clap, whose value parsers want a displayable error.
pub fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

fn queue_policy(s: &str) -> Result<QueuePolicy, String> {
    s.parse()
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
    /// batch 4–8 on for the default model, so a small cap loses little
    /// throughput and bounds how long a call waits behind another's batch;
    /// 8 suits interactive calls beside bulk streams (docs/operations.md).
    #[arg(long, env = "MNISTER_MAX_BATCH_SIZE", default_value_t = 16)]
    pub max_batch_size: usize,

    /// How long a worker waits for more requests after the first one of a
    /// batch. 0 is continuous batching: whatever is waiting goes now.
    #[arg(long, env = "MNISTER_MAX_BATCH_DELAY", default_value = "0ms", value_parser = duration)]
    pub max_batch_delay: Duration,

    /// How long an idle batch worker polls for work before it sleeps. A
    /// sleeping core wakes slower for the next inference; polling keeps it
    /// warm through a light load's gaps and spends that core meanwhile
    /// (docs/benchmarks.md, "In-server inference cost").
    #[arg(long, env = "MNISTER_WORKER_SPIN", default_value = "0ms", value_parser = duration)]
    pub worker_spin: Duration,

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
    #[arg(
        long,
        env = "MNISTER_QUEUE_POLICY",
        default_value = "priority",
        value_parser = queue_policy
    )]
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
    #[arg(long, env = "MNISTER_REQUEST_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub request_timeout: Duration,

    /// Answers below this confidence are marked `abstained` (digit and
    /// probabilities still returned) unless a request sets its own
    /// `min_confidence`; counted in mnister_abstained_total. The model card
    /// lists thresholds with the accuracy they keep. (Was --low-confidence,
    /// which only counted such answers; the old name still works.)
    #[arg(
        long,
        alias = "low-confidence",
        env = "MNISTER_MIN_CONFIDENCE",
        default_value_t = 0.6
    )]
    pub min_confidence: f32,

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

    #[arg(long, env = "MNISTER_WATCH_INTERVAL", default_value = "2s", value_parser = duration)]
    pub watch_interval: Duration,

    /// Serve mnister.v1.Admin (ReloadModel). Off by default.
    #[arg(long, env = "MNISTER_ENABLE_ADMIN_RPC")]
    pub enable_admin_rpc: bool,

    /// Time in-flight work gets to finish after SIGTERM/SIGINT.
    #[arg(long, env = "MNISTER_SHUTDOWN_GRACE", default_value = "10s", value_parser = duration)]
    pub shutdown_grace: Duration,

    /// End each connection this long after it opened, ±10% (gRFC A9's
    /// MAX_CONNECTION_AGE), with a graceful GOAWAY: clients reconnect and
    /// re-resolve, so new replicas get traffic. 0 = never. The default, 5
    /// minutes, lets a scale-up spread within minutes at the cost of one
    /// reconnect per client every 5 minutes.
    #[arg(long, env = "MNISTER_MAX_CONNECTION_AGE", default_value = "5m", value_parser = duration)]
    pub max_connection_age: Duration,

    /// After the age's GOAWAY, how long the connection's calls in flight
    /// may still run before it is closed (MAX_CONNECTION_AGE_GRACE): long
    /// enough for a bulk stream of about 100,000 frames.
    #[arg(long, env = "MNISTER_MAX_CONNECTION_AGE_GRACE", default_value = "1m", value_parser = duration)]
    pub max_connection_age_grace: Duration,

    /// End a connection with no call in flight for this long
    /// (MAX_CONNECTION_IDLE), gracefully. 0 = never.
    #[arg(long, env = "MNISTER_MAX_CONNECTION_IDLE", default_value = "10m", value_parser = duration)]
    pub max_connection_idle: Duration,

    /// Log lines as text (for a terminal) or as one JSON object per line
    /// (for a log pipeline; inside a traced request each line carries its
    /// trace_id and span_id).
    #[arg(long, value_enum, env = "MNISTER_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Export traces over OTLP/gRPC to this collector, e.g.
    /// http://127.0.0.1:4317. Off when unset.
    #[arg(long, env = "MNISTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// The traces' service.name.
    #[arg(long, env = "MNISTER_OTLP_SERVICE_NAME", default_value = "mnister")]
    pub otlp_service_name: String,

    /// Share of traces kept when the caller has not decided; a caller's W3C
    /// sampled flag is always followed (parent-based sampling).
    #[arg(long, env = "MNISTER_TRACE_SAMPLE_RATIO", default_value_t = 1.0)]
    pub trace_sample_ratio: f64,

    /// In a stream, one frame in this many gets its own span under the
    /// stream's (the first frame always does), so that a bulk job of
    /// 100,000 frames exports about 1,000 frame spans, not 100,000.
    #[arg(long, env = "MNISTER_TRACE_STREAM_FRAMES_EVERY", default_value_t = 100)]
    pub trace_stream_frames_every: u64,

    /// Close a connection whose TLS handshake, HTTP/2 preface or first
    /// HTTP/1 request has not arrived within this.
    #[arg(long, env = "MNISTER_HANDSHAKE_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub handshake_timeout: Duration,
}

impl ServerArgs {
    /// Checks flags against each other before anything starts.
    pub fn validate(&self) -> Result<(), FlagsError> {
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
        if !(0.0..=1.0).contains(&self.trace_sample_ratio) {
            p.push(format!(
                "--trace-sample-ratio must be in [0, 1], got {}",
                self.trace_sample_ratio
            ));
        }
        if self.trace_stream_frames_every == 0 {
            p.push("--trace-stream-frames-every must be at least 1".into());
        }
        if self.handshake_timeout.is_zero() {
            p.push("--handshake-timeout must be above 0 (e.g. 5s)".into());
        }
        if !self.max_connection_age.is_zero() && self.max_connection_age < Duration::from_secs(1) {
            p.push(format!(
                "--max-connection-age must be 0 (never) or at least 1s, got {:?}",
                self.max_connection_age
            ));
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
        if !(0.0..=1.0).contains(&self.min_confidence) {
            p.push(format!(
                "--min-confidence must be in [0, 1], got {}",
                self.min_confidence
            ));
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(FlagsError(p))
        }
    }

    /// The engine these flags ask for.
    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            batcher: BatcherConfig {
                max_batch_size: self.max_batch_size,
                max_batch_delay: self.max_batch_delay,
                idle_spin: self.worker_spin,
                max_queue: self.max_queue,
                policy: self.queue_policy,
            },
            sessions: self.sessions,
            intra_threads: self.intra_threads,
            preprocess_threads: self.preprocess_threads,
            limits: Limits {
                max_image_bytes: self.max_image_bytes,
                max_pixels: self.max_pixels,
            },
            min_confidence: self.min_confidence,
            warmup_runs: self.warmup_runs,
            golden_min_accuracy: (self.golden_min_accuracy > 0.0)
                .then_some(self.golden_min_accuracy),
        }
    }

    /// The limits the front ends enforce and report.
    /// Every port's connection limits (`conn`).
    pub fn connection_limits(&self) -> crate::conn::ConnectionLimits {
        let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
        crate::conn::ConnectionLimits {
            max_age: nonzero(self.max_connection_age),
            age_grace: self.max_connection_age_grace,
            max_idle: nonzero(self.max_connection_idle),
            handshake_timeout: self.handshake_timeout,
            max_concurrent_streams: self.max_concurrent_streams,
        }
    }

    pub fn limits(&self) -> ServerLimits {
        ServerLimits {
            max_batch_size: self.max_batch_size,
            max_queue: self.max_queue,
            max_image_bytes: self.max_image_bytes,
            max_pixels: self.max_pixels,
            max_frames_in_flight: self.max_frames_in_flight,
            max_message_bytes: self.max_message_bytes,
            request_timeout: self.request_timeout,
            max_concurrent_streams: self.max_concurrent_streams,
            queue_policy: self.queue_policy,
            default_min_confidence: self.min_confidence,
            connections: self.connection_limits(),
            trace_stream_frames_every: self.trace_stream_frames_every,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn defaults_are_valid_and_flags_parse() {
        let args = ServerArgs::parse_from(["mnister-server"]);
        args.validate().unwrap();
        assert_eq!(args.queue_policy, QueuePolicy::Priority);
        let args = ServerArgs::parse_from([
            "mnister-server",
            "--queue-policy",
            "fifo",
            "--max-batch-delay",
            "2ms",
        ]);
        assert_eq!(args.queue_policy, QueuePolicy::Fifo);
        assert_eq!(args.max_batch_delay, Duration::from_millis(2));
        assert!(ServerArgs::try_parse_from(["mnister-server", "--queue-policy", "lifo"]).is_err());
    }

    #[test]
    fn contradictions_are_all_reported() {
        let mut args = ServerArgs::parse_from(["mnister-server"]);
        args.max_batch_size = 0;
        args.min_confidence = 2.0;
        let e = args.validate().unwrap_err();
        assert_eq!(e.0.len(), 2, "{e}");
        assert!(
            e.to_string().contains("--max-batch-size")
                && e.to_string().contains("--min-confidence")
        );
    }
}
