//! The gRPC transport: the DigitClassifier service, its error mapping, and
//! the state it shares with the server (the current engine, limits,
//! readiness).

pub mod admin;
pub mod classifier;
pub mod error;
pub mod kserve;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use crate::engine::Engine;
use crate::proto::v1 as pb;
use error::ServiceError;

/// What every front end shares: the engine (None until the model is loaded;
/// swapped whole on reload) and the server-wide limits.
pub struct ServerState {
    pub engine: ArcSwapOption<Engine>,
    pub limits: pb::Limits,
    pub request_timeout: Duration,
    pub max_frames_in_flight: usize,
    pub auth: crate::auth::TokenAuth,
    shutting_down: AtomicBool,
}

impl ServerState {
    pub fn new(
        limits: pb::Limits,
        request_timeout: Duration,
        max_frames_in_flight: usize,
        auth: crate::auth::TokenAuth,
    ) -> Arc<Self> {
        Arc::new(ServerState {
            engine: ArcSwapOption::empty(),
            limits,
            request_timeout,
            max_frames_in_flight,
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

    /// The request's deadline: its grpc-timeout, else the server default.
    ///
    /// A caller's deadline is answered a moment early (a tenth of it, at most
    /// 5 ms), so that our DEADLINE_EXCEEDED reaches the caller before its own
    /// timer fires and before tonic's transport would answer CANCELLED.
    pub fn deadline(&self, meta: &tonic::metadata::MetadataMap) -> Instant {
        self.call_deadline(meta)
            .unwrap_or_else(|| Instant::now() + self.request_timeout)
    }

    /// The client's own deadline (grpc-timeout), a little early so that our
    /// DEADLINE_EXCEEDED reaches it before its timer fires.
    pub fn call_deadline(&self, meta: &tonic::metadata::MetadataMap) -> Option<Instant> {
        let t = meta
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)?;
        Some(Instant::now() + t.saturating_sub((t / 10).min(Duration::from_millis(5))))
    }

    /// A stream frame's deadline: the default timeout from the frame's
    /// arrival, never past the whole call's deadline. A bulk stream without
    /// grpc-timeout may run for hours; each frame still gets a bound.
    pub fn frame_deadline(&self, call: Option<Instant>) -> Instant {
        let own = Instant::now() + self.request_timeout;
        call.map_or(own, |c| c.min(own))
    }
}

/// Runs `handle` on every message of a bidirectional stream and answers in
/// request order. At most `window` messages are read and not yet answered:
/// when the window is full the reader stops, and HTTP/2 flow control pushes
/// back on the client. A client that never reads its answers stalls the same
/// window, so memory stays bounded either way. The answer stream ends after
/// the client half-closes and the last answer is sent.
pub fn ordered_stream<Req, Resp, F, Fut>(
    mut inbound: Streaming<Req>,
    window: usize,
    handle: F,
) -> ReceiverStream<Result<Resp, Status>>
where
    Req: Send + 'static,
    Resp: Send + 'static,
    F: Fn(Req) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Resp> + Send + 'static,
{
    let (out_tx, out_rx) = mpsc::channel::<Result<Resp, Status>>(window);
    let (pending_tx, mut pending_rx) = mpsc::unbounded_channel::<Pending<Resp>>();
    let places = Arc::new(Semaphore::new(window));
    // Only to notice the client going away (tonic drops the receiver). The
    // reader and the frame tasks hold clones, which all drop by the time the
    // writer is done, so the response stream still ends on time.
    let gone = out_tx.clone();

    // Writer: forwards answers in arrival order, and only then frees the
    // message's place in the window.
    tokio::spawn(async move {
        while let Some(p) = pending_rx.recv().await {
            let (rx, place) = match p {
                Pending::Frame(rx, place) => (rx, place),
                // After every answer before it, as the call's final status.
                Pending::Failed(status) => {
                    let _ = out_tx.send(Err(status)).await;
                    return;
                }
            };
            let Ok(resp) = rx.await else { return };
            if out_tx.send(Ok(resp)).await.is_err() {
                return; // the client went away
            }
            drop(place);
        }
    });

    // Reader: takes a place in the window before reading each message.
    tokio::spawn(async move {
        loop {
            let Ok(place) = places.clone().acquire_owned().await else {
                break;
            };
            let msg = match inbound.message().await {
                Ok(Some(m)) => m,
                Ok(None) => break, // half-closed: the writer drains and ends the stream
                Err(status) => {
                    tracing::debug!(%status, "stream read ended");
                    // A frame too large to decode ends the call with a status
                    // that says so; a reset or disconnect just ends it.
                    if let Some(s) = error::message_too_large(status.code(), status.message()) {
                        let _ = pending_tx.send(Pending::Failed(s));
                    }
                    break;
                }
            };
            let (tx, rx) = oneshot::channel();
            if pending_tx.send(Pending::Frame(rx, place)).is_err() {
                break;
            }
            let fut = handle(msg);
            let gone = gone.clone();
            tokio::spawn(async move {
                // A client that left takes its queued frames with it: the
                // dropped future releases the job, and the batch worker skips
                // it instead of spending model time on an answer nobody reads.
                tokio::select! {
                    r = fut => { let _ = tx.send(r); }
                    _ = gone.closed() => {}
                }
            });
        }
    });
    ReceiverStream::new(out_rx)
}

/// Parses a grpc-timeout header value: up to 8 digits and a unit
/// (H, M, S, m, u, n), per the gRPC over HTTP/2 spec.
/// What the stream writer waits on next: a frame's answer (holding its
/// place in the window), or the status that ends the call.
enum Pending<Resp> {
    Frame(oneshot::Receiver<Resp>, OwnedSemaphorePermit),
    Failed(Status),
}

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
}
