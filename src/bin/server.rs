//! `mnister-server`: the gRPC digit-recognition service.

use std::time::Instant;

use clap::Parser;
use mnister::config::ServerArgs;

fn main() -> std::process::ExitCode {
    let started = Instant::now();
    let args = ServerArgs::parse();
    let traces = args
        .otlp_endpoint
        .as_ref()
        .filter(|e| !e.is_empty())
        .map(|_| args.trace_sample_ratio);
    let telemetry = mnister::telemetry::init(args.log_format, traces);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("mnister-rt")
        .build()
        .expect("building the tokio runtime");
    match runtime.block_on(mnister::server::serve(
        args,
        started,
        &telemetry,
        mnister::server::termination_signal(),
    )) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("mnister-server: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
