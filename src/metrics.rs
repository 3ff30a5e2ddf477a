//! The Prometheus exporter: installs the recorder the core's metrics go to,
//! and serves `/metrics`.

use axum::routing::get;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use mnister_core::metrics::{self as m, BATCH_SIZE, LATENCY_BUCKETS, batch_buckets};
use tokio::net::TcpListener;

use crate::conn::{ConnectionLimits, Protocol};

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
    for port in ["grpc", "http", "metrics"] {
        metrics::gauge!(CONNECTIONS_OPEN, "port" => port).set(0.0);
        metrics::counter!(CONNECTIONS_ACCEPTED, "port" => port).absolute(0);
        for reason in crate::conn::CLOSE_REASONS {
            metrics::counter!(CONNECTIONS_CLOSED, "port" => port, "reason" => reason).absolute(0);
        }
    }
    Ok(handle)
}

/// Connections accepted, by port (`conn`).
pub const CONNECTIONS_ACCEPTED: &str = "mnister_connections_accepted_total";
/// Connections open now, by port (`conn`).
pub const CONNECTIONS_OPEN: &str = "mnister_connections_open";
/// Connections the server ended, by port and reason (`conn`).
pub const CONNECTIONS_CLOSED: &str = "mnister_connections_closed_total";

/// Serves `/metrics` until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    limits: ConnectionLimits,
    stop: tokio::sync::watch::Receiver<bool>,
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
    crate::conn::serve(
        "metrics",
        listener,
        None,
        Protocol::Auto,
        limits,
        router,
        stop,
    )
    .await;
}
