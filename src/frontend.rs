//! What every front end shares: the current engine, the server-wide limits,
//! readiness, deadlines, and the one path a request takes through them.
//!
//! `ServerState::call` gets the engine, runs the request against it, records
//! the request metrics and leaves the caller a `ServiceError` to map. Unary
//! gRPC, stream frames, KServe and the JSON API all go through it, so none of
//! them repeats that block.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use metrics::{counter, histogram};
use mnister_core::batcher::QueuePolicy;
use mnister_core::engine::Engine;
use mnister_core::metrics as m;
use tonic::Code;

use crate::auth::TokenAuth;
use crate::error::{ServiceError, code_label};

/// Server-wide limits: enforced by the front ends, reported by
/// `GetModelInfo`, KServe's `ModelConfig` and the JSON API.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerLimits {
    pub max_batch_size: usize,
    pub max_queue: usize,
    pub max_image_bytes: usize,
    pub max_pixels: u64,
    pub max_frames_in_flight: usize,
    pub max_message_bytes: usize,
    /// Deadline for calls that bring none.
    pub request_timeout: Duration,
    pub max_concurrent_streams: u32,
    pub queue_policy: QueuePolicy,
    /// The min_confidence of requests that set none.
    pub default_min_confidence: f32,
    /// Connection age, idle and handshake limits of every port.
    pub connections: crate::conn::ConnectionLimits,
    /// One stream frame in this many gets a span.
    pub trace_stream_frames_every: u64,
}

/// The state every front end shares: the engine (None until the model is
/// loaded; swapped whole on reload) and the server-wide limits.
pub struct ServerState {
    pub engine: ArcSwapOption<Engine>,
    pub limits: ServerLimits,
    pub auth: TokenAuth,
    shutting_down: AtomicBool,
}

impl ServerState {
    pub fn new(limits: ServerLimits, auth: TokenAuth) -> Arc<Self> {
        Arc::new(ServerState {
            engine: ArcSwapOption::empty(),
            limits,
            auth,
            shutting_down: AtomicBool::new(false),
        })
    }

    /// The engine to use for a request, or why there is none.
    pub fn engine(&self) -> Result<Arc<Engine>, ServiceError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(ServiceError::ShuttingDown);
        }
        self.engine.load_full().ok_or(ServiceError::NotReady)
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// The one front-end path: runs `f` on the current engine, records the
    /// request under `rpc` (count by code, duration) and returns the result
    /// for the transport to map.
    pub async fn call<T, F, Fut>(&self, rpc: &'static str, f: F) -> Result<T, ServiceError>
    where
        F: FnOnce(Arc<Engine>) -> Fut,
        Fut: Future<Output = Result<T, ServiceError>>,
    {
        let started = Instant::now();
        let result = match self.engine() {
            Ok(engine) => f(engine).await,
            Err(e) => Err(e),
        };
        let code = result
            .as_ref()
            .map_or_else(ServiceError::code, |_| Code::Ok);
        let secs = started.elapsed().as_secs_f64();
        counter!(m::REQUESTS, "rpc" => rpc, "code" => code_label(code)).increment(1);
        histogram!(m::REQUEST_DURATION, "rpc" => rpc).record(secs);
        match &result {
            Ok(_) => tracing::debug!(rpc, ms = secs * 1e3, "answered"),
            Err(e) => tracing::debug!(rpc, code = code_label(code), error = %e, "failed"),
        }
        result
    }

    /// A call's deadline: the client's own (`grpc-timeout`), else the
    /// server default from now.
    pub fn deadline(&self, client: Option<Instant>) -> Instant {
        client.unwrap_or_else(|| Instant::now() + self.limits.request_timeout)
    }

    /// A stream frame's deadline: the default timeout from the frame's
    /// arrival, never past the whole call's deadline. A bulk stream without
    /// grpc-timeout may run for hours; each frame still gets a bound.
    pub fn frame_deadline(&self, call: Option<Instant>) -> Instant {
        let own = Instant::now() + self.limits.request_timeout;
        call.map_or(own, |c| c.min(own))
    }
}

/// The client's own deadline from a `grpc-timeout` header value, a little
/// early: a tenth of it, at most 5 ms, so that our DEADLINE_EXCEEDED reaches
/// the caller before its own timer fires and before the transport would
/// answer CANCELLED.
pub fn client_deadline(grpc_timeout: Option<&str>) -> Option<Instant> {
    let t = parse_grpc_timeout(grpc_timeout?)?;
    Some(Instant::now() + t.saturating_sub((t / 10).min(Duration::from_millis(5))))
}

/// Parses a grpc-timeout header value: up to 8 digits and a unit
/// (H, M, S, m, u, n), per the gRPC over HTTP/2 spec.
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (num, unit) = v.split_at(v.len() - 1);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        assert_eq!(parse_grpc_timeout("10x"), None);
    }

    #[test]
    fn client_deadlines_come_a_little_early() {
        // 100 ms, less a tenth capped at 5 ms: 95 ms from the call.
        let before = Instant::now();
        let d = client_deadline(Some("100m")).unwrap();
        let after = Instant::now();
        assert!(d >= before + Duration::from_millis(95));
        assert!(d <= after + Duration::from_millis(95));
        assert!(client_deadline(None).is_none());
        assert!(client_deadline(Some("soon")).is_none());
    }
}
