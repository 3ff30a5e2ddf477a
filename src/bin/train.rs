use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;
use clap::Parser;
use mnister::idx::{Split, load_mnist};
use mnister::train::config::TrainArgs;
use mnister::train::{data, fit};

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = TrainArgs::parse();
    args.validate().map_err(anyhow::Error::msg)?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!("\nstopping after this batch; the best model so far will be exported (Ctrl-C again to abort)");
        })?;
    }
    let train = load_mnist(&args.data_dir, Split::Train)?;
    let mut split = data::stratified_split(&train.labels, args.val_size, args.seed);
    if let Some(n) = args.train_limit {
        split.train = data::stratified_subset(&split.train, &train.labels, n, args.seed);
    }
    if let Some(n) = args.val_limit {
        split.val = data::stratified_subset(&split.val, &train.labels, n, args.seed);
    }
    let model = mnister::train::model::Cnn::new(args.arch, args.dropout, &fit::device());
    eprintln!(
        "{} network: {} parameters ({} at inference); {} train / {} validation images",
        args.arch.name(),
        burn::module::Module::num_params(&model),
        model.inference_params(),
        split.train.len(),
        split.val.len()
    );
    let out = fit::fit(&args, &train, &split, &stop)?;
    eprintln!("best epoch {:?}, val acc {:.4}", out.state.best_epoch, out.state.best_val_accuracy);
    Ok(())
}
