//! The Prometheus exporter: installs the recorder the core's metrics go to,
//! and serves `/metrics`.

use std::future::Future;

use axum::routing::get;
use axum::serve::ListenerExt;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use mnister_core::metrics::{self as m, BATCH_SIZE, LATENCY_BUCKETS, batch_buckets};
use tokio::net::TcpListener;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("configuring the metrics buckets: {0}")]
    Buckets(#[source] BuildError),
    #[error("installing the metrics recorder: {0}")]
    Install(#[source] BuildError),
}

/// Installs the global recorder and registers every series at zero.
pub fn install(max_batch: usize, max_queue: usize) -> Result<PrometheusHandle, MetricsError> {
    let handle = PrometheusBuilder::new()
        .set_buckets(&LATENCY_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), &batch_buckets(max_batch))
        })
        .map_err(MetricsError::Buckets)?
        .install_recorder()
        .map_err(MetricsError::Install)?;
    m::register(max_queue);
    Ok(handle)
}

/// Serves `/metrics` until `stop` resolves.
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    let router = axum::Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    handle.render(),
                )
            }
        }),
    );
    if let Err(e) = axum::serve(listener.tap_io(|s| crate::server::set_nodelay(s)), router)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!(error = %e, "metrics endpoint failed");
    }
}
