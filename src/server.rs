//! Wires the server together: listeners, gRPC services (classifier, health,
//! reflection), the /metrics endpoint, model loading, and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tower::Layer;

use mnister_core::engine::Engine;

use crate::auth::{RequireToken, TokenAuth};
use crate::config::ServerArgs;
use crate::conn::{self, Protocol};
use crate::frontend::ServerState;
use crate::grpc::admin::AdminService;
use crate::grpc::classifier::ClassifierService;
use crate::grpc::kserve::KServeService;
use crate::proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use crate::proto::v1 as pb;
use crate::proto::v1::admin_server::AdminServer;
use crate::proto::v1::digit_classifier_server::DigitClassifierServer;
use crate::reload::Reloader;

/// The gRPC service name health checks report on.
pub const SERVICE_NAME: &str = "mnister.v1.DigitClassifier";

/// Every accepted socket of every port gets TCP_NODELAY. Without it a small
/// response waits for the client's delayed ACK (Nagle): a 40 ms tail that
/// Python's grpcio saw and our own Rust client never did. tonic's
/// `tcp_nodelay` only reaches listeners tonic binds itself, and axum sets
/// nothing, so the option is set on our own accept path (`conn`), before
/// TLS.
pub(crate) fn set_nodelay(stream: &TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::warn!(error = %e, "cannot set TCP_NODELAY on an accepted socket");
    }
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen for {what} on {addr}; pick another address with its flag")
    })
}

/// The gRPC port's TLS (h2 by ALPN), with mutual TLS when a client CA is
/// given; None without --tls-cert/--tls-key.
fn tls_acceptor(args: &ServerArgs) -> Result<Option<TlsAcceptor>> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::{RootCertStore, ServerConfig, server::WebPkiClientVerifier};

    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let read = |p: &std::path::PathBuf, what: &str| {
        std::fs::read(p).with_context(|| format!("reading the TLS {what} {}", p.display()))
    };
    let pem_certs = |p: &std::path::PathBuf, what: &str| -> Result<Vec<CertificateDer<'static>>> {
        let certs = CertificateDer::pem_slice_iter(&read(p, what)?)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("the TLS {what} {} is not PEM", p.display()))?;
        anyhow::ensure!(
            !certs.is_empty(),
            "the TLS {what} {} holds no certificate",
            p.display()
        );
        Ok(certs)
    };
    let certs = pem_certs(cert, "certificate")?;
    let key = PrivateKeyDer::from_pem_slice(&read(key, "key")?)
        .with_context(|| format!("the TLS key {} holds no PEM private key", key.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("configuring TLS")?;
    let builder = match &args.tls_client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in pem_certs(ca, "client CA")? {
                roots.add(c).context("adding the TLS client CA")?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .context("configuring mutual TLS")?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not match")?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

/// Runs the server until `shutdown` resolves, then drains within the grace.
pub async fn serve(
    args: ServerArgs,
    process_start: Instant,
    telemetry: &crate::telemetry::Telemetry,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    args.validate()?;
    let handle = crate::metrics::install(args.max_batch_size, args.max_queue)?;
    let grpc_listener = bind(args.grpc_addr, "gRPC").await?;
    let http_listener = bind(args.metrics_addr, "metrics").await?;
    let web_listener = bind(args.http_addr, "HTTP (page and JSON API)").await?;
    let grpc_addr = grpc_listener.local_addr()?;
    let metrics_addr = http_listener.local_addr()?;
    let http_addr = web_listener.local_addr()?;

    let auth = match &args.auth_token_file {
        Some(p) => TokenAuth::from_file(p)?,
        None => TokenAuth::default(),
    };
    let tls = tls_acceptor(&args)?;
    let state = ServerState::new(args.limits(), auth.clone());
    let require_token = RequireToken::new(auth);
    let (health, health_service) = tonic_health::server::health_reporter();
    for name in ["", SERVICE_NAME] {
        health
            .set_service_status(name, ServingStatus::NotServing)
            .await;
    }
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;
    // The inference services sit behind the token check; health and
    // reflection do not.
    let classifier = require_token.layer(
        DigitClassifierServer::new(ClassifierService::new(state.clone()))
            .max_decoding_message_size(args.max_message_bytes)
            .max_encoding_message_size(args.max_message_bytes),
    );
    let kserve = require_token.layer(
        GrpcInferenceServiceServer::new(KServeService::new(
            state.clone(),
            args.kserve_model_name.clone(),
        ))
        .max_decoding_message_size(args.max_message_bytes)
        .max_encoding_message_size(args.max_message_bytes),
    );

    let reloader = Reloader::new(
        state.clone(),
        args.engine_config(),
        args.model.clone(),
        args.ort_lib.clone(),
    );
    let admin = args
        .enable_admin_rpc
        .then(|| require_token.layer(AdminServer::new(AdminService::new(reloader.clone()))));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let conn_limits = args.connection_limits();
    let routes = Routes::new(health_service)
        .add_service(reflection)
        .add_service(classifier)
        .add_service(kserve);
    let routes = match admin {
        Some(admin) => routes.add_service(admin),
        None => routes,
    };
    let grpc = tower::ServiceBuilder::new()
        .layer(tower::util::MapResponseLayer::new(
            crate::error::rewrite_too_large,
        ))
        .service(routes);
    let mut grpc_task = tokio::spawn(conn::serve(
        "grpc",
        grpc_listener,
        tls,
        Protocol::Http2,
        conn_limits,
        grpc,
        stop_rx.clone(),
    ));
    let upkeep = {
        let handle = handle.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        })
    };
    let http_task = tokio::spawn(crate::metrics::serve(
        http_listener,
        handle,
        conn_limits,
        stop_rx.clone(),
    ));
    let web = crate::http::router(state.clone(), args.max_image_bytes / 3 * 4 + (64 << 10));
    let web_task = tokio::spawn(conn::serve(
        "http",
        web_listener,
        None,
        Protocol::Auto,
        conn_limits,
        web,
        stop_rx.clone(),
    ));
    tracing::info!(%grpc_addr, %http_addr, %metrics_addr, "listening; loading the model");

    let cfg = args.engine_config();
    let (model_path, ort_lib) = (args.model.clone(), args.ort_lib.clone());
    let engine =
        tokio::task::spawn_blocking(move || Engine::load(&model_path, ort_lib.as_deref(), cfg))
            .await
            .context("the model loader panicked")??;
    mnister_core::metrics::set_model(None, engine.model_labels());
    tracing::info!(
        model = %engine.model.path.display(),
        version = %engine.version,
        sha256 = %engine.model.sha256,
        %grpc_addr,
        %http_addr,
        %metrics_addr,
        sessions = args.sessions,
        intra_threads = args.intra_threads,
        max_batch_size = args.max_batch_size,
        max_batch_delay_us = args.max_batch_delay.as_micros() as u64,
        worker_spin_us = args.worker_spin.as_micros() as u64,
        max_queue = args.max_queue,
        max_image_bytes = args.max_image_bytes,
        max_pixels = args.max_pixels,
        max_frames_in_flight = args.max_frames_in_flight,
        tls = args.tls_cert.is_some(),
        mtls = args.tls_client_ca.is_some(),
        auth = state.auth.enabled(),
        startup_ms = process_start.elapsed().as_millis() as u64,
        "serving"
    );
    // An empty value (compose's default) is off, like no value.
    if let Some(endpoint) = args.otlp_endpoint.as_ref().filter(|e| !e.is_empty()) {
        telemetry.start_export(&crate::telemetry::ExportConfig {
            endpoint: endpoint.clone(),
            service_name: args.otlp_service_name.clone(),
            model_version: engine.version.to_string(),
            precision: engine.model_labels().precision.to_string(),
        })?;
        tracing::info!(%endpoint, ratio = args.trace_sample_ratio, "exporting traces over OTLP");
    }
    state.engine.store(Some(Arc::new(engine)));
    reloader.on_sighup();
    if args.watch_model {
        reloader.watch(args.watch_interval);
    }
    for name in ["", SERVICE_NAME] {
        health
            .set_service_status(name, ServingStatus::Serving)
            .await;
    }

    tokio::select! {
        _ = shutdown => {}
        r = &mut grpc_task => {
            upkeep.abort();
            return Err(match r {
                Ok(()) => anyhow::anyhow!("the gRPC server stopped unexpectedly"),
                Err(e) => anyhow::Error::new(e).context("the gRPC server panicked"),
            });
        }
    }

    tracing::info!(
        grace_ms = args.shutdown_grace.as_millis() as u64,
        "shutting down: NOT_SERVING, finishing in-flight requests"
    );
    for name in ["", SERVICE_NAME] {
        health
            .set_service_status(name, ServingStatus::NotServing)
            .await;
    }
    state.begin_shutdown();
    let _ = stop_tx.send(true);
    match tokio::time::timeout(args.shutdown_grace, &mut grpc_task).await {
        Ok(_) => tracing::info!("all in-flight requests finished"),
        Err(_) => {
            tracing::warn!("shutdown grace elapsed; abandoning the requests still in flight");
            grpc_task.abort();
        }
    }
    upkeep.abort();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), http_task).await;
    let _ = tokio::time::timeout(args.shutdown_grace, web_task).await;
    // Join the batch workers: once no request holds the engine, they finish
    // what is queued and exit.
    if let Some(engine) = state.engine.swap(None).and_then(Arc::into_inner) {
        let _ = tokio::task::spawn_blocking(move || Engine::shutdown(engine)).await;
    }
    // The spans of the last requests, if a collector takes them.
    telemetry.shutdown(std::time::Duration::from_secs(2));
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn termination_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
