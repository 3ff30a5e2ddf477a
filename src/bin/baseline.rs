//! `mnister-baseline`: the raw ONNX Runtime limit for a model, in process,
//! through the same `ort` backend the server uses. Server throughput is
//! reported as a ratio to this number (docs/benchmarks.md).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use mnister_core::backend::Backend;
use mnister_core::backend::ort::{OrtBackend, init_runtime, load_model};
use mnister_core::idx::{Split, load_mnist};
use mnister_core::preprocess::{PIXELS, normalize_mnist};

#[derive(Debug, Parser)]
#[command(
    name = "mnister-baseline",
    about = "Raw in-process ONNX Runtime throughput: batch sizes x session layouts"
)]
struct Args {
    /// The server's default model, so that ratios compare like with like.
    #[arg(
        long,
        env = "MNISTER_MODEL",
        default_value = "models/mnist-cnn.int8.onnx"
    )]
    model: PathBuf,
    #[arg(long, env = "MNISTER_ORT_LIB")]
    ort_lib: Option<PathBuf>,
    /// Batch sizes to sweep.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,2,4,8,16,32,64,128,256"
    )]
    batch: Vec<usize>,
    /// Layouts as SESSIONSxTHREADS.
    #[arg(long, value_delimiter = ',', default_value = "1x2,2x1")]
    layouts: Vec<String>,
    /// Seconds per measurement (after one warm-up second).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// MNIST-format images to feed (IDX); zeros are not representative.
    #[arg(long, default_value = "tests/data/mnist")]
    data_dir: PathBuf,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    json: bool,
    /// Sleep this long after each inference, as a server worker waits for
    /// its next call: shows what an idle CPU costs the next inference,
    /// apart from any server code.
    #[arg(long, default_value_t = 0)]
    idle_us: u64,
    /// Write this many KiB of memory after each inference, as the rest of a
    /// call does between inferences: shows what a cold cache costs.
    #[arg(long, default_value_t = 0)]
    pollute_kib: usize,
}

fn parse_layout(s: &str) -> Result<(usize, usize), String> {
    let (a, b) = s
        .split_once('x')
        .ok_or_else(|| format!("layout {s:?} must look like 2x1 (sessions x threads)"))?;
    let p = |v: &str| {
        v.parse::<usize>()
            .map_err(|_| format!("layout {s:?}: {v:?} is not a number"))
    };
    Ok((p(a)?, p(b)?))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let env = init_runtime(args.ort_lib.as_deref())?;
    let model = load_model(env, &args.model)?;
    let ds = load_mnist(&args.data_dir, Split::Test)?;
    let max_batch = args.batch.iter().copied().max().unwrap_or(1);
    let input: Arc<Vec<f32>> = Arc::new(
        (0..max_batch)
            .flat_map(|i| normalize_mnist(ds.images.image(i % ds.len())).unwrap())
            .collect(),
    );
    if !args.json {
        println!(
            "model {} ({}), {} s per point",
            model.path.display(),
            model.version(),
            args.seconds
        );
        println!(
            "{:>8} {:>6} {:>12} {:>16}",
            "layout", "batch", "img/s", "ms per inference"
        );
    }
    for layout in &args.layouts {
        let (sessions, threads) = parse_layout(layout).map_err(anyhow::Error::msg)?;
        let mut backends: Vec<OrtBackend> = (0..sessions)
            .map(|_| OrtBackend::for_model(env, &model, threads))
            .collect::<Result<_, _>>()?;
        for &batch in &args.batch {
            let done = Arc::new(AtomicU64::new(0));
            let busy_ns = Arc::new(AtomicU64::new(0));
            let runs = Arc::new(AtomicU64::new(0));
            let (idle, pollute_kib) = (Duration::from_micros(args.idle_us), args.pollute_kib);
            let stop = Arc::new(AtomicBool::new(false));
            let counting = Arc::new(AtomicBool::new(false));
            let handles: Vec<_> = backends
                .drain(..)
                .map(|mut b| {
                    let (done, stop, counting, input) =
                        (done.clone(), stop.clone(), counting.clone(), input.clone());
                    let (busy_ns, runs) = (busy_ns.clone(), runs.clone());
                    std::thread::spawn(move || {
                        let mut scratch = vec![0u8; pollute_kib * 1024];
                        let mut round = 0u8;
                        while !stop.load(Ordering::Relaxed) {
                            let t = Instant::now();
                            b.infer(&input[..batch * PIXELS], batch).expect("inference");
                            let took = t.elapsed();
                            if counting.load(Ordering::Relaxed) {
                                done.fetch_add(batch as u64, Ordering::Relaxed);
                                busy_ns.fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
                                runs.fetch_add(1, Ordering::Relaxed);
                            }
                            if !scratch.is_empty() {
                                round = round.wrapping_add(1);
                                scratch.iter_mut().step_by(64).for_each(|x| *x = round);
                                std::hint::black_box(&scratch);
                            }
                            if !idle.is_zero() {
                                std::thread::sleep(idle);
                            }
                        }
                        b
                    })
                })
                .collect();
            std::thread::sleep(Duration::from_secs(1));
            counting.store(true, Ordering::Relaxed);
            let t = Instant::now();
            std::thread::sleep(Duration::from_secs_f64(args.seconds));
            let n = done.load(Ordering::Relaxed);
            let secs = t.elapsed().as_secs_f64();
            stop.store(true, Ordering::Relaxed);
            backends = handles
                .into_iter()
                .map(|h| h.join().expect("bench thread"))
                .collect();
            let rate = n as f64 / secs;
            let ms = busy_ns.load(Ordering::Relaxed) as f64
                / 1e6
                / runs.load(Ordering::Relaxed).max(1) as f64;
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"layout": layout, "sessions": sessions, "threads": threads, "batch": batch, "images_per_second": rate, "ms_per_inference": ms, "idle_us": args.idle_us, "pollute_kib": pollute_kib})
                );
            } else {
                println!("{layout:>8} {batch:>6} {rate:>12.0} {ms:>16.3}");
            }
        }
    }
    Ok(())
}
