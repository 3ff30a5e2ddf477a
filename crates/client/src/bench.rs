//! `mnister bench`: a load generator. Closed loop (a fixed number of callers
//! or streams, each sending as fast as answers come) or open loop (`--rps`:
//! requests start on a fixed schedule, and latency is measured from the
//! scheduled start, so a slow server cannot hide its queueing delay:
//! no coordinated omission). Latencies go into an HdrHistogram.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::proto::v1::digit_classifier_client::DigitClassifierClient;
use crate::proto::v1::{ClassifyRequest, classify_request::Input};
use crate::{CliError, Connection};
use mnister_core::duration::parse_duration;
use mnister_core::idx::{Split, load_mnist};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Mode {
    Unary,
    Stream,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum InputKind {
    /// 784 raw bytes, no preprocessing.
    Mnist,
    /// 28x28 PNG files: decoded and preprocessed by the server.
    Png,
}

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value_t = Mode::Unary)]
    pub mode: Mode,
    /// Unary: concurrent callers (closed loop) or the cap on outstanding
    /// calls (open loop). Stream: concurrent streams.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Stream mode: frames in flight per stream.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// HTTP/2 connections the load is spread over.
    #[arg(long, default_value_t = 2)]
    pub connections: usize,
    /// Measured time.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Unmeasured time before it.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Open loop at this many requests per second (unary only).
    #[arg(long)]
    pub rps: Option<f64>,
    #[arg(long, value_enum, default_value_t = InputKind::Mnist)]
    pub input: InputKind,
    /// MNIST IDX files to send (cycled).
    #[arg(long, env = "MNIST_DIR", default_value = "tests/data/mnist")]
    pub data_dir: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Latency {
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub mode: Mode,
    pub input: InputKind,
    pub concurrency: usize,
    pub window: Option<usize>,
    pub target_rps: Option<f64>,
    pub seconds: f64,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    pub throughput: f64,
    pub latency: Latency,
}

/// Per-worker tallies, merged at the end so workers never share a lock.
struct Tally {
    hist: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn new() -> Self {
        Tally {
            hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"),
            ok: 0,
            errors: BTreeMap::new(),
        }
    }

    fn record(&mut self, latency: Duration, result: Result<(), tonic::Code>) {
        let _ = self.hist.record((latency.as_micros() as u64).max(1));
        match result {
            Ok(()) => self.ok += 1,
            Err(code) => *self.errors.entry(format!("{code:?}")).or_default() += 1,
        }
    }

    fn merge(&mut self, other: Tally) {
        let _ = self.hist.add(&other.hist);
        self.ok += other.ok;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }
}

fn inputs(args: &BenchArgs) -> Result<Arc<Vec<Input>>, CliError> {
    let ds = load_mnist(&args.data_dir, Split::Test).map_err(|e| CliError::Input(e.to_string()))?;
    let n = ds.len().min(1000);
    Ok(Arc::new(
        (0..n)
            .map(|i| {
                let px = ds.images.image(i).to_vec();
                match args.input {
                    InputKind::Mnist => Input::Mnist(px),
                    InputKind::Png => {
                        let img = image::GrayImage::from_raw(28, 28, px).expect("28x28");
                        let mut out = Vec::new();
                        img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
                            .expect("PNG encoding");
                        Input::Image(out)
                    }
                }
            })
            .collect(),
    ))
}

fn request(inputs: &[Input], k: usize) -> ClassifyRequest {
    ClassifyRequest {
        id: String::new(),
        input: Some(inputs[k % inputs.len()].clone()),
        return_preprocessed: false,
        min_confidence: None,
    }
}

pub async fn run(conn: &Connection, args: &BenchArgs) -> Result<Report, CliError> {
    if args.rps.is_some() && args.mode == Mode::Stream {
        return Err(CliError::Input(
            "--rps (open loop) is for --mode unary".into(),
        ));
    }
    if args.concurrency == 0 || args.connections == 0 {
        return Err(CliError::Input(
            "--concurrency and --connections must be at least 1".into(),
        ));
    }
    let inputs = inputs(args)?;
    let mut clients = Vec::new();
    for _ in 0..args.connections {
        clients.push(conn.client().await?);
    }
    let start = Instant::now();
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    let tally = match (args.mode, args.rps) {
        (Mode::Unary, None) => closed_unary(conn, args, &clients, inputs, measure_from, end).await,
        (Mode::Unary, Some(rps)) => {
            open_unary(conn, args, &clients, inputs, rps, measure_from, end).await?
        }
        (Mode::Stream, _) => closed_stream(conn, args, &clients, inputs, measure_from, end).await,
    };
    let seconds = args.duration.as_secs_f64();
    let h = &tally.hist;
    let total = tally.ok + tally.errors.values().sum::<u64>();
    Ok(Report {
        mode: args.mode,
        input: args.input,
        concurrency: args.concurrency,
        window: (args.mode == Mode::Stream).then_some(args.window),
        target_rps: args.rps,
        seconds,
        ok: tally.ok,
        errors: tally.errors,
        throughput: total as f64 / seconds,
        latency: Latency {
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            mean_us: h.mean(),
        },
    })
}

async fn closed_unary(
    conn: &Connection,
    args: &BenchArgs,
    clients: &[DigitClassifierClient<Channel>],
    inputs: Arc<Vec<Input>>,
    measure_from: Instant,
    end: Instant,
) -> Tally {
    let mut tasks = Vec::new();
    for w in 0..args.concurrency {
        let mut client = clients[w % clients.len()].clone();
        let (inputs, conn) = (inputs.clone(), conn.clone());
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::new();
            let mut k = w * 7919;
            loop {
                let sent = Instant::now();
                if sent >= end {
                    return t;
                }
                let r = client.classify(conn.request(request(&inputs, k))).await;
                k += 1;
                if sent >= measure_from {
                    t.record(sent.elapsed(), r.map(|_| ()).map_err(|s| s.code()));
                }
            }
        }));
    }
    let mut all = Tally::new();
    for t in tasks {
        all.merge(t.await.expect("bench worker"));
    }
    all
}

async fn open_unary(
    conn: &Connection,
    args: &BenchArgs,
    clients: &[DigitClassifierClient<Channel>],
    inputs: Arc<Vec<Input>>,
    rps: f64,
    measure_from: Instant,
    end: Instant,
) -> Result<Tally, CliError> {
    if rps.is_nan() || rps <= 0.0 {
        return Err(CliError::Input(format!(
            "--rps must be positive, got {rps}"
        )));
    }
    let interval = Duration::from_secs_f64(1.0 / rps);
    let outstanding = Arc::new(Semaphore::new(args.concurrency));
    let tally = Arc::new(Mutex::new(Tally::new()));
    let start = Instant::now();
    let (clients, conn) = (clients.to_vec(), conn.clone());
    let runtime = tokio::runtime::Handle::current();
    // The schedule runs on its own thread with the OS sleep: tokio's timer
    // ticks in whole milliseconds, which at 1,000 req/s would add up to a
    // millisecond of the client's own lateness to every measured latency.
    let tasks = {
        let tally = tally.clone();
        tokio::task::spawn_blocking(move || {
            let mut tasks = Vec::new();
            for k in 0usize.. {
                // Each request has its slot on the schedule whatever the server does.
                let scheduled = start + interval.mul_f64(k as f64);
                if scheduled >= end {
                    break;
                }
                if let Some(wait) = scheduled.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let permit = runtime
                    .block_on(outstanding.clone().acquire_owned())
                    .expect("never closed");
                let mut client = clients[k % clients.len()].clone();
                let (inputs, conn, tally) = (inputs.clone(), conn.clone(), tally.clone());
                tasks.push(runtime.spawn(async move {
                    let r = client.classify(conn.request(request(&inputs, k))).await;
                    drop(permit);
                    if scheduled >= measure_from {
                        // Measured from the scheduled start, not the actual send.
                        tally
                            .lock()
                            .expect("tally lock")
                            .record(scheduled.elapsed(), r.map(|_| ()).map_err(|s| s.code()));
                    }
                }));
            }
            tasks
        })
        .await
        .expect("the request scheduler")
    };
    for t in tasks {
        let _ = t.await;
    }
    Ok(Arc::try_unwrap(tally)
        .ok()
        .expect("all tasks joined")
        .into_inner()
        .expect("tally lock"))
}

async fn closed_stream(
    conn: &Connection,
    args: &BenchArgs,
    clients: &[DigitClassifierClient<Channel>],
    inputs: Arc<Vec<Input>>,
    measure_from: Instant,
    end: Instant,
) -> Tally {
    let mut tasks = Vec::new();
    for s in 0..args.concurrency {
        let mut client = clients[s % clients.len()].clone();
        let (inputs, conn) = (inputs.clone(), conn.clone());
        let window = args.window.max(1);
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::new();
            let (tx, rx) = mpsc::channel(window);
            let permits = Arc::new(Semaphore::new(window));
            // Send times, in order: responses come back in request order.
            let sent: Arc<Mutex<VecDeque<Instant>>> = Arc::new(Mutex::new(VecDeque::new()));
            {
                let (permits, sent) = (permits.clone(), sent.clone());
                tokio::spawn(async move {
                    let mut k = s * 7919;
                    while Instant::now() < end {
                        let Ok(p) = permits.acquire().await else {
                            return;
                        };
                        p.forget();
                        sent.lock().expect("sent lock").push_back(Instant::now());
                        if tx.send(request(&inputs, k)).await.is_err() {
                            return;
                        }
                        k += 1;
                    }
                });
            }
            let mut req = tonic::Request::new(ReceiverStream::new(rx));
            conn.authorize(&mut req);
            req.set_timeout(
                end.saturating_duration_since(Instant::now()) + Duration::from_secs(30),
            );
            let mut responses = match client.classify_stream(req).await {
                Ok(r) => r.into_inner(),
                Err(s) => {
                    t.record(Duration::ZERO, Err(s.code()));
                    return t;
                }
            };
            loop {
                match responses.message().await {
                    Ok(Some(r)) => {
                        permits.add_permits(1);
                        let at = sent
                            .lock()
                            .expect("sent lock")
                            .pop_front()
                            .expect("a send per answer");
                        if at >= measure_from {
                            let res = match r.error {
                                None => Ok(()),
                                Some(e) => Err(tonic::Code::from(e.code)),
                            };
                            t.record(at.elapsed(), res);
                        }
                    }
                    Ok(None) => return t,
                    Err(s) => {
                        t.record(Duration::ZERO, Err(s.code()));
                        return t;
                    }
                }
            }
        }));
    }
    let mut all = Tally::new();
    for t in tasks {
        all.merge(t.await.expect("bench stream"));
    }
    all
}

pub fn print_report(r: &Report) {
    let mode = match (r.mode, r.target_rps) {
        (Mode::Stream, _) => format!(
            "stream, {} streams × window {}",
            r.concurrency,
            r.window.unwrap_or(0)
        ),
        (Mode::Unary, Some(rps)) => format!(
            "unary open loop at {rps:.0} req/s (≤ {} outstanding)",
            r.concurrency
        ),
        (Mode::Unary, None) => format!("unary closed loop, concurrency {}", r.concurrency),
    };
    println!("mode        {mode}, input {:?}", r.input);
    println!("duration    {:.1} s", r.seconds);
    println!(
        "requests    {} ok, {} errors",
        r.ok,
        r.errors.values().sum::<u64>()
    );
    for (code, n) in &r.errors {
        println!("  {code:<20} {n}");
    }
    println!("throughput  {:.0} req/s", r.throughput);
    let l = &r.latency;
    println!(
        "latency µs  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {:.0}",
        l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us, l.mean_us
    );
}
