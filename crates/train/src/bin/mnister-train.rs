//! `mnister-train`: trains the digit model, exports ONNX, writes the report.
//! `mnister-train quantize`: writes a calibrated int8 copy of an fp32 model.
//! `mnister-train dump-sets`: writes the report's inputs as .npy for study.
//! `mnister-train ensemble`: merges trained models into one and reports it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;
use clap::Parser;
use mnister_train::config::TrainArgs;
use mnister_train::dump::{self, DumpArgs};
use mnister_train::ensemble::{self, EnsembleArgs};
use mnister_train::quantize::{self, QuantizeArgs};
use mnister_train::run;
use mnister_train::score::{self, EvaluateArgs};

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,ort=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if std::env::args().nth(1).as_deref() == Some("quantize") {
        let args = QuantizeArgs::parse_from(
            std::iter::once("mnister-train quantize".to_string()).chain(std::env::args().skip(2)),
        );
        let report = quantize::run(&args)?;
        print!("{}", quantize::markdown(&report));
        return Ok(());
    }
    if std::env::args().nth(1).as_deref() == Some("evaluate") {
        let args = EvaluateArgs::parse_from(
            std::iter::once("mnister-train evaluate".to_string()).chain(std::env::args().skip(2)),
        );
        print!("{}", score::markdown(&score::run(&args)?));
        return Ok(());
    }
    if std::env::args().nth(1).as_deref() == Some("dump-sets") {
        let args = DumpArgs::parse_from(
            std::iter::once("mnister-train dump-sets".to_string()).chain(std::env::args().skip(2)),
        );
        let manifest = dump::run(&args)?;
        println!("{}", serde_json::to_string_pretty(&manifest)?);
        return Ok(());
    }
    if std::env::args().nth(1).as_deref() == Some("ensemble") {
        let args = EnsembleArgs::parse_from(
            std::iter::once("mnister-train ensemble".to_string()).chain(std::env::args().skip(2)),
        );
        let report = ensemble::run(&args)?;
        print!("{}", run::summary(&report));
        println!("report: {}", args.out.join("report.json").display());
        return Ok(());
    }
    let args = TrainArgs::parse();
    args.validate().map_err(anyhow::Error::msg)?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!(
                "\nstopping: the best model so far will be exported and evaluated (Ctrl-C again to abort)"
            );
        })?;
    }
    let report = run::run(&args, &stop)?;
    if args.no_test {
        println!(
            "validation accuracy {:.4}; candidate (not scored on test): {}",
            report.val_accuracy,
            args.out.join(run::CANDIDATE).display()
        );
        return Ok(());
    }
    print!("{}", run::summary(&report));
    println!("report: {}", args.out.join("report.json").display());
    Ok(())
}
