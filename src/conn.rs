//! Connection management for every port, after gRFC A9: the accept loop,
//! TCP_NODELAY, TLS, and the limits that end a connection. Long-lived
//! HTTP/2 connections only re-resolve (and so find new replicas) when the
//! server ends them, and a socket that never becomes useful would hold a
//! file descriptor forever; tonic's own server has neither an idle limit
//! nor a handshake deadline, and its age limit sends no GOAWAY when a grace
//! is set, so connections are served here, with hyper, instead.
//!
//! - **handshake**: the TLS handshake, and then the HTTP/2 client preface
//!   (or, on the HTTP/1 ports, the first request) must arrive within
//!   `handshake_timeout`, else the socket is closed;
//! - **age**: after `max_age` ±10% (jitter, so that connections opened
//!   together do not all reconnect together), a graceful GOAWAY (HTTP/2) or
//!   `Connection: close` (HTTP/1): calls in flight finish, new ones go to a
//!   new connection; after `age_grace` more, the connection is closed;
//! - **idle**: a connection with no call in flight for `max_idle` is ended
//!   the same graceful way;
//! - **shutdown**: every connection gets its GOAWAY at once.
//!
//! `mnister_connections_accepted_total{port}`, `mnister_connections_open{port}`
//! and `mnister_connections_closed_total{port, reason}` count what happens.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use metrics::{counter, gauge};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::Service;

/// Bytes of the HTTP/2 client connection preface (RFC 9113, 3.4).
const H2_PREFACE_LEN: u64 = 24;

/// The limits of one port's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// End a connection this long after it opened (±10%); None: never.
    pub max_age: Option<Duration>,
    /// After the age's GOAWAY, how long calls in flight may take.
    pub age_grace: Duration,
    /// End a connection with no call in flight for this long; None: never.
    pub max_idle: Option<Duration>,
    /// The TLS handshake and the client preface (first request) must be
    /// done within this.
    pub handshake_timeout: Duration,
    /// HTTP/2 streams one connection may have open at once.
    pub max_concurrent_streams: u32,
}

/// What a port speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// gRPC: HTTP/2 with prior knowledge (or ALPN h2 under TLS).
    Http2,
    /// The page, the JSON API and /metrics: HTTP/1.1, and HTTP/2 for
    /// clients that ask for it.
    Auto,
}

/// Why the server ended a connection (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    Handshake,
    Age,
    AgeGrace,
    Idle,
    Shutdown,
}

/// Every `reason` label, for registering the series at zero.
pub const CLOSE_REASONS: [&str; 5] = [
    "handshake_timeout",
    "max_age",
    "max_age_grace",
    "max_idle",
    "shutdown",
];

/// Counts a close the server chose. Called while the socket is still open,
/// so that whoever sees it close also sees it counted.
fn count_close(port: &'static str, reason: Reason) {
    counter!(crate::metrics::CONNECTIONS_CLOSED, "port" => port, "reason" => reason.label())
        .increment(1);
}

impl Reason {
    fn label(self) -> &'static str {
        match self {
            Reason::Handshake => "handshake_timeout",
            Reason::Age => "max_age",
            Reason::AgeGrace => "max_age_grace",
            Reason::Idle => "max_idle",
            Reason::Shutdown => "shutdown",
        }
    }
}

/// Accepts on `listener` until `stop` turns true, then sends every open
/// connection its GOAWAY and returns once they have all closed (the caller
/// bounds that wait with the shutdown grace).
pub async fn serve<S, B>(
    port: &'static str,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    protocol: Protocol,
    limits: ConnectionLimits,
    service: S,
    mut stop: watch::Receiver<bool>,
) where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Ours (below) fires first and is counted; hyper's bounds the
        // headers of later requests on a kept-alive connection.
        .header_read_timeout(limits.handshake_timeout + Duration::from_secs(1));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams);
    if protocol == Protocol::Http2 {
        builder = builder.http2_only();
    }
    // Every connection task holds a receiver; the sender learns when the
    // last one is gone.
    let (closed_tx, closed_rx) = watch::channel(());
    let jitter = RandomState::new();
    let mut seq = 0u64;
    loop {
        let stream = tokio::select! {
            _ = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors and the like: back off, keep serving.
                    tracing::warn!(port, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        crate::server::set_nodelay(&stream);
        counter!(crate::metrics::CONNECTIONS_ACCEPTED, "port" => port).increment(1);
        seq += 1;
        let max_age = limits.max_age.map(|a| jittered(a, &jitter, seq));
        let (tls, builder, service, stop, closed) = (
            tls.clone(),
            builder.clone(),
            service.clone(),
            stop.clone(),
            closed_rx.clone(),
        );
        tokio::spawn(async move {
            gauge!(crate::metrics::CONNECTIONS_OPEN, "port" => port).increment(1.0);
            let deadline = tokio::time::Instant::now() + limits.handshake_timeout;
            let conn = Conn {
                port,
                protocol,
                limits,
                max_age,
                handshake_deadline: deadline,
                stop,
                activity: Arc::new(Activity {
                    in_flight: AtomicUsize::new(0),
                    started: AtomicU64::new(0),
                    read: AtomicU64::new(0),
                    last_done_ms: AtomicU64::new(0),
                    origin: Instant::now(),
                }),
            };
            match tls {
                None => conn.run(stream, &builder, service).await,
                Some(tls) => {
                    // Pinned here, so that the socket outlives the count.
                    let accept = tls.accept(stream);
                    tokio::pin!(accept);
                    match tokio::time::timeout_at(deadline, accept.as_mut()).await {
                        Ok(Ok(stream)) => conn.run(stream, &builder, service).await,
                        Ok(Err(e)) => {
                            tracing::debug!(port, error = %e, "TLS handshake failed");
                        }
                        Err(_) => count_close(port, Reason::Handshake),
                    }
                }
            };
            gauge!(crate::metrics::CONNECTIONS_OPEN, "port" => port).decrement(1.0);
            drop(closed);
        });
    }
    // Stop accepting at once: the listening socket closes here.
    drop(listener);
    drop(closed_rx);
    closed_tx.closed().await;
}

/// Resolves once `stop` turns true (its guard is not held across awaits).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// `d` ±10%, different for every connection.
fn jittered(d: Duration, state: &RandomState, seq: u64) -> Duration {
    let mut h = state.build_hasher();
    h.write_u64(seq);
    let unit = (h.finish() >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
    d.mul_f64(0.9 + 0.2 * unit)
}

/// One connection's state, shared by its task, its IO and its service.
struct Conn {
    port: &'static str,
    protocol: Protocol,
    limits: ConnectionLimits,
    max_age: Option<Duration>,
    handshake_deadline: tokio::time::Instant,
    stop: watch::Receiver<bool>,
    activity: Arc<Activity>,
}

/// What the connection's calls are doing.
struct Activity {
    /// Calls whose response has not finished.
    in_flight: AtomicUsize,
    /// Calls started, ever.
    started: AtomicU64,
    /// Bytes read from the client.
    read: AtomicU64,
    /// When the last call finished (ms since `origin`).
    last_done_ms: AtomicU64,
    origin: Instant,
}

impl Activity {
    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_done_ms.load(Ordering::Acquire));
        Some(self.origin.elapsed().saturating_sub(last))
    }

    fn done(&self) {
        let now = self.origin.elapsed().as_millis() as u64;
        self.last_done_ms.store(now, Ordering::Release);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Conn {
    /// The client has shown it speaks the protocol: the HTTP/2 preface
    /// read, or a first request.
    fn established(&self) -> bool {
        let a = &self.activity;
        a.started.load(Ordering::Acquire) > 0
            || (self.protocol == Protocol::Http2
                && a.read.load(Ordering::Acquire) >= H2_PREFACE_LEN)
    }

    /// Serves the connection to its end, and counts why when the server
    /// ended it (not when the client did, or the connection failed).
    async fn run<IO, S, B>(self, io: IO, builder: &auto::Builder<TokioExecutor>, service: S)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let io = CountingIo {
            inner: io,
            activity: self.activity.clone(),
        };
        let service = TowerToHyperService::new(Tracked {
            inner: service,
            activity: self.activity.clone(),
        });
        let conn = builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);

        let now = tokio::time::Instant::now();
        let age_at = self.max_age.map(|a| now + a);
        let idle_check = self
            .limits
            .max_idle
            .map(|i| (i / 4).clamp(Duration::from_millis(50), Duration::from_secs(1)));
        let mut tick = tokio::time::interval(idle_check.unwrap_or(Duration::from_secs(3600)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Set once the GOAWAY is sent: (why, when to stop waiting).
        let mut draining: Option<(Reason, Option<tokio::time::Instant>)> = None;
        let far = now + Duration::from_secs(86_400 * 365);
        let mut stop = self.stop.clone();
        let reason = loop {
            let established = self.established();
            let force_at = draining.and_then(|(_, f)| f).unwrap_or(far);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(port = self.port, error = %e, "connection ended with an error");
                    }
                    break draining.map(|(r, _)| r);
                }
                _ = tokio::time::sleep_until(self.handshake_deadline), if !established && draining.is_none() => {
                    if !self.established() {
                        break Some(Reason::Handshake);
                    }
                }
                _ = tokio::time::sleep_until(age_at.unwrap_or(far)), if age_at.is_some() && draining.is_none() => {
                    conn.as_mut().graceful_shutdown();
                    draining = Some((Reason::Age, Some(tokio::time::Instant::now() + self.limits.age_grace)));
                }
                _ = tokio::time::sleep_until(force_at), if draining.is_some_and(|(_, f)| f.is_some()) => {
                    tracing::debug!(port = self.port, "calls outlived the connection's grace; closing it");
                    break Some(Reason::AgeGrace);
                }
                _ = tick.tick(), if idle_check.is_some() && draining.is_none() => {
                    let max_idle = self.limits.max_idle.unwrap_or(Duration::MAX);
                    if self.activity.idle_for().is_some_and(|i| i >= max_idle) {
                        conn.as_mut().graceful_shutdown();
                        draining = Some((Reason::Idle, Some(tokio::time::Instant::now() + self.limits.age_grace)));
                    }
                }
                _ = stopped(&mut stop), if draining.is_none() => {
                    // The caller bounds the drain with the shutdown grace.
                    conn.as_mut().graceful_shutdown();
                    draining = Some((Reason::Shutdown, None));
                }
            }
        };
        // `conn`, and with it the socket, is dropped after the count.
        if let Some(r) = reason {
            count_close(self.port, r);
        }
    }
}

/// The transport, counting what the client sends (the preface check).
struct CountingIo<IO> {
    inner: IO,
    activity: Arc<Activity>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for CountingIo<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.activity.read.fetch_add(n, Ordering::AcqRel);
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for CountingIo<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The port's service, counting the calls in flight on this connection: a
/// call is in flight until its response body has been sent (a stream's
/// lasts as long as the stream).
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S, B> Service<Request<Incoming>> for Tracked<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    B: Body<Data = Bytes>,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        self.activity.started.fetch_add(1, Ordering::AcqRel);
        self.activity.in_flight.fetch_add(1, Ordering::AcqRel);
        let guard = CallGuard(self.activity.clone());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            Ok(resp.map(|body| TrackedBody {
                body,
                _guard: guard,
            }))
        })
    }
}

/// Marks the call finished when dropped: with its response body, or with
/// the future when the call failed or was cancelled.
struct CallGuard(Arc<Activity>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0.done();
    }
}

/// A response body that keeps its call counted until it is dropped.
struct TrackedBody<B> {
    body: B,
    _guard: CallGuard,
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_ten_percent_and_varies() {
        let s = RandomState::new();
        let d = Duration::from_secs(100);
        let all: Vec<Duration> = (0..1000).map(|i| jittered(d, &s, i)).collect();
        assert!(
            all.iter()
                .all(|j| *j >= d.mul_f64(0.9) && *j < d.mul_f64(1.1))
        );
        let (lo, hi) = (all.iter().min().unwrap(), all.iter().max().unwrap());
        assert!(*hi - *lo > Duration::from_secs(15), "{lo:?}..{hi:?}");
    }
}
