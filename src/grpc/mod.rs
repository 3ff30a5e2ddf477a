//! The gRPC transport: `mnister.v1.DigitClassifier`, KServe v2's
//! `inference.GRPCInferenceService`, and `mnister.v1.Admin`, each a thin
//! layer over `ServerState::call`.

pub mod admin;
pub mod classifier;
pub mod kserve;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use mnister_core::engine::Engine;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::error::ServiceError;
use crate::frontend::ServerState;

/// The answer stream of a bidirectional RPC.
pub type FrameStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// A unary RPC on the one front-end path: the client's deadline, then
/// `ServerState::call`, then the status.
pub async fn unary<Req, Resp, F, Fut>(
    state: &ServerState,
    rpc: &'static str,
    request: Request<Req>,
    f: F,
) -> Result<Response<Resp>, Status>
where
    F: FnOnce(Arc<Engine>, Req, Instant) -> Fut,
    Fut: Future<Output = Result<Resp, ServiceError>>,
{
    let deadline = state.deadline(client_deadline(request.metadata()));
    let span = request_span(rpc, request.metadata());
    let req = request.into_inner();
    let result = state
        .call(rpc, |engine| f(engine, req, deadline))
        .instrument(span.clone())
        .await;
    let _response = tracing::info_span!(parent: &span, "response").entered();
    result.map(Response::new).map_err(Status::from)
}

/// A call's server span: a child of the caller's span when its metadata
/// carries a W3C `traceparent`.
fn request_span(rpc: &'static str, meta: &tonic::metadata::MetadataMap) -> tracing::Span {
    let span = tracing::info_span!(
        "request",
        otel.name = rpc,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc = rpc,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    crate::telemetry::adopt(&span, &Metadata(meta));
    span
}

/// gRPC metadata as OpenTelemetry's propagators read it.
struct Metadata<'a>(&'a tonic::metadata::MetadataMap);

impl opentelemetry::propagation::Extractor for Metadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// What a frame's answer may need besides its result.
pub struct FrameMeta {
    /// The request's own id.
    pub id: String,
    /// The model that answered, when one was reached.
    pub model_version: String,
}

/// A request message that carries an id.
pub trait HasId {
    fn id(&self) -> &str;
}

/// A bidirectional stream on the one front-end path. The call fails at once
/// when nothing can be served; after that each frame is a call of its own,
/// recorded under `rpc`, on the engine current at its arrival (so a reload
/// applies to long-lived streams), bounded by the frame's deadline. `answer`
/// turns each frame's result into the message sent back, in request order.
pub fn frames<Req, Resp, Out, F, Fut, A>(
    state: &Arc<ServerState>,
    rpc: &'static str,
    request: Request<Streaming<Req>>,
    handle: F,
    answer: A,
) -> Result<Response<FrameStream<Out>>, Status>
where
    Req: HasId + Send + 'static,
    Out: Send + 'static,
    F: Fn(Arc<Engine>, Req, Instant) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, ServiceError>> + Send + 'static,
    A: Fn(Result<Resp, ServiceError>, FrameMeta) -> Out + Send + Sync + 'static,
{
    state.engine().map_err(Status::from)?;
    let call_deadline = client_deadline(request.metadata());
    let stream_span = request_span(rpc, request.metadata());
    let every = state.limits.trace_stream_frames_every.max(1);
    let seq = std::sync::atomic::AtomicU64::new(0);
    let (state, handle, answer) = (state.clone(), Arc::new(handle), Arc::new(answer));
    let window = state.limits.max_frames_in_flight;
    let out = ordered_stream(request.into_inner(), window, move |frame: Req| {
        let (state, handle, answer) = (state.clone(), handle.clone(), answer.clone());
        // One frame in `every` is traced, under the stream's span; the
        // others create no span at all.
        let n = seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let span = if n.is_multiple_of(every) {
            tracing::info_span!(parent: &stream_span, "frame", frame = n, id = frame.id())
        } else {
            tracing::Span::none()
        };
        async move {
            let deadline = state.frame_deadline(call_deadline);
            let mut meta = FrameMeta {
                id: frame.id().to_string(),
                model_version: String::new(),
            };
            let result = state
                .call(rpc, |engine| {
                    meta.model_version = engine.version.to_string();
                    handle(engine, frame, deadline)
                })
                .await;
            answer(result, meta)
        }
        .instrument(span)
    });
    Ok(Response::new(Box::pin(out)))
}

/// The client's deadline from a call's `grpc-timeout` metadata.
pub fn client_deadline(meta: &tonic::metadata::MetadataMap) -> Option<Instant> {
    crate::frontend::client_deadline(meta.get("grpc-timeout").and_then(|v| v.to_str().ok()))
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
                    if let Some(s) =
                        crate::error::message_too_large(status.code(), status.message())
                    {
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

/// What the stream writer waits on next: a frame's answer (holding its
/// place in the window), or the status that ends the call.
enum Pending<Resp> {
    Frame(oneshot::Receiver<Resp>, OwnedSemaphorePermit),
    Failed(Status),
}
