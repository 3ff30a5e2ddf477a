//! `mnister-server`: the gRPC digit-recognition service.

use std::time::Instant;

use clap::Parser;
use mnister::config::ServerArgs;

fn main() -> std::process::ExitCode {
    let started = Instant::now();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,ort=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = ServerArgs::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("mnister-rt")
        .build()
        .expect("building the tokio runtime");
    match runtime.block_on(mnister::server::serve(
        args,
        started,
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
