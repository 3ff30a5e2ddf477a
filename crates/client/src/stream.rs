//! `mnister stream`: bulk recognition over ClassifyStream with a bounded
//! window of frames in flight, a progress bar, a summary (and accuracy plus
//! a confusion matrix when labels are known), and results as CSV or JSON lines.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::proto::v1::{ClassifyRequest, RawPixels, classify_request::Input};
use crate::{CliError, Connection};
use mnister_core::idx;

#[derive(Debug, Clone, clap::Args)]
pub struct StreamArgs {
    /// An IDX image file (e.g. t10k-images-idx3-ubyte.gz).
    #[arg(long, conflicts_with = "dir", required_unless_present = "dir")]
    pub idx: Option<PathBuf>,
    /// IDX labels for --idx; enables accuracy and the confusion matrix.
    #[arg(long, requires = "idx")]
    pub labels: Option<PathBuf>,
    /// A directory of image files, walked recursively.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Frames sent and not yet answered.
    #[arg(long, default_value_t = 128)]
    pub window: usize,
    /// Only the first N inputs.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Write one result per input here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Output format; by default from --out's extension (.csv, else JSON lines).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Answers below this confidence come back marked abstained (for a
    /// person to check); default: the server's --min-confidence.
    #[arg(long)]
    pub min_confidence: Option<f32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Csv,
    Jsonl,
}

/// One answered input.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub id: String,
    pub label: Option<u8>,
    pub digit: Option<u32>,
    pub confidence: Option<f32>,
    /// Below the min_confidence: a person should check it.
    pub abstained: bool,
    pub error: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub count: usize,
    pub errors: usize,
    pub seconds: f64,
    pub frames_per_second: f64,
    pub accuracy: Option<f64>,
    /// Answers marked abstained.
    pub abstained: usize,
    /// Accuracy of the answers not abstained (with labels).
    pub kept_accuracy: Option<f64>,
    pub confusion: Option<[[usize; 10]; 10]>,
}

enum Source {
    Idx {
        images: idx::Images,
        labels: Option<Vec<u8>>,
    },
    Files(Vec<PathBuf>),
}

impl Source {
    fn len(&self) -> usize {
        match self {
            Source::Idx { images, .. } => images.len(),
            Source::Files(f) => f.len(),
        }
    }

    fn label(&self, i: usize) -> Option<u8> {
        match self {
            Source::Idx {
                labels: Some(l), ..
            } => Some(l[i]),
            _ => None,
        }
    }

    fn request(&self, i: usize, min_confidence: Option<f32>) -> Result<ClassifyRequest, String> {
        Ok(match self {
            Source::Idx { images, .. } => {
                let px = images.image(i).to_vec();
                let input = if images.rows == 28 && images.cols == 28 {
                    Input::Mnist(px)
                } else {
                    Input::Pixels(RawPixels {
                        width: images.cols as u32,
                        height: images.rows as u32,
                        data: px,
                    })
                };
                ClassifyRequest {
                    id: i.to_string(),
                    input: Some(input),
                    return_preprocessed: false,
                    min_confidence,
                }
            }
            Source::Files(files) => ClassifyRequest {
                id: files[i].display().to_string(),
                input: Some(Input::Image(
                    std::fs::read(&files[i]).map_err(|e| format!("{}: {e}", files[i].display()))?,
                )),
                return_preprocessed: false,
                min_confidence,
            },
        })
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else if p
            .extension()
            .and_then(|x| x.to_str())
            .map(|x| {
                [
                    "png", "jpg", "jpeg", "bmp", "gif", "webp", "pbm", "pgm", "ppm", "pnm", "pam",
                ]
                .contains(&x.to_ascii_lowercase().as_str())
            })
            .unwrap_or(false)
        {
            out.push(p);
        }
    }
    Ok(())
}

fn load(args: &StreamArgs) -> Result<Source, CliError> {
    let input = |e: idx::IdxError| CliError::Input(e.to_string());
    if let Some(images) = &args.idx {
        let images = idx::read_images(images).map_err(input)?;
        let labels = match &args.labels {
            Some(l) => {
                let l = idx::read_labels(l).map_err(input)?;
                if l.labels.len() != images.len() {
                    return Err(CliError::Input(format!(
                        "{} images but {} labels",
                        images.len(),
                        l.labels.len()
                    )));
                }
                Some(l.labels)
            }
            None => None,
        };
        Ok(Source::Idx { images, labels })
    } else {
        let dir = args.dir.as_ref().expect("clap requires --idx or --dir");
        let mut files = Vec::new();
        walk(dir, &mut files).map_err(|e| CliError::Input(format!("{}: {e}", dir.display())))?;
        if files.is_empty() {
            return Err(CliError::Input(format!(
                "no image files under {}",
                dir.display()
            )));
        }
        Ok(Source::Files(files))
    }
}

pub async fn run(conn: &Connection, args: &StreamArgs) -> Result<Summary, CliError> {
    let source = Arc::new(load(args)?);
    let n = args.limit.unwrap_or(usize::MAX).min(source.len());
    let mut client = conn.client().await?;
    let window = Arc::new(Semaphore::new(args.window.max(1)));
    let (tx, rx) = mpsc::channel(args.window.max(1));
    let (read_errors_tx, mut read_errors_rx) = mpsc::unbounded_channel::<(usize, String)>();
    let min_confidence = args.min_confidence;
    {
        let (source, window) = (source.clone(), window.clone());
        tokio::spawn(async move {
            for i in 0..n {
                let Ok(permit) = window.acquire().await else {
                    return;
                };
                permit.forget();
                match source.request(i, min_confidence) {
                    Ok(req) => {
                        if tx.send(req).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        window.add_permits(1);
                        let _ = read_errors_tx.send((i, e));
                    }
                }
            }
        });
    }
    let pb = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(n as u64)
    };
    pb.set_style(
        ProgressStyle::with_template("[{bar:40}] {pos}/{len} {per_sec} ETA {eta} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let started = Instant::now();
    // Deadline for the whole stream: per-frame timeout times frames, so a
    // long stream is not cut off by the per-call default.
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    conn.authorize(&mut req);
    req.set_timeout(
        conn.timeout
            .saturating_mul(n.max(1) as u32)
            .min(std::time::Duration::from_secs(86_400)),
    );
    let mut responses = client.classify_stream(req).await?.into_inner();
    let mut rows: Vec<Option<Row>> = vec![None; n];
    let mut by_id: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    if let Source::Files(files) = &*source {
        for (i, f) in files.iter().enumerate().take(n) {
            by_id.insert(f.display().to_string(), i);
        }
    }
    let mut answered = 0usize;
    while let Some(r) = responses.message().await? {
        window.add_permits(1);
        let i = match &*source {
            Source::Idx { .. } => r.id.parse().ok(),
            Source::Files(_) => by_id.get(&r.id).copied(),
        };
        let Some(i) = i.filter(|&i| i < n) else {
            return Err(CliError::Input(format!(
                "the server answered an unknown id {:?}",
                r.id
            )));
        };
        rows[i] = Some(match r.error {
            Some(e) => Row {
                id: r.id,
                label: source.label(i),
                digit: None,
                confidence: None,
                abstained: false,
                error: Some(format!("{:?}: {}", tonic::Code::from(e.code), e.message)),
            },
            None => Row {
                id: r.id,
                label: source.label(i),
                digit: Some(r.digit),
                confidence: Some(r.confidence),
                abstained: r.abstained,
                error: None,
            },
        });
        answered += 1;
        pb.inc(1);
    }
    while let Ok((i, e)) = read_errors_rx.try_recv() {
        rows[i] = Some(Row {
            id: i.to_string(),
            label: source.label(i),
            digit: None,
            confidence: None,
            abstained: false,
            error: Some(e),
        });
        pb.inc(1);
    }
    pb.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let rows: Vec<Row> = rows.into_iter().flatten().collect();
    if rows.len() != n {
        return Err(CliError::Input(format!(
            "the stream ended after {answered} of {n} answers"
        )));
    }

    let errors = rows.iter().filter(|r| r.error.is_some()).count();
    let labelled = matches!(
        &*source,
        Source::Idx {
            labels: Some(_),
            ..
        }
    );
    let abstained = rows.iter().filter(|r| r.abstained).count();
    let (accuracy, kept_accuracy, confusion) = if labelled {
        let mut m = [[0usize; 10]; 10];
        let (mut right, mut kept, mut kept_right) = (0, 0, 0);
        for r in &rows {
            if let (Some(l), Some(d)) = (r.label, r.digit) {
                m[l as usize][d as usize] += 1;
                let ok = u32::from(l) == d;
                right += usize::from(ok);
                if !r.abstained {
                    kept += 1;
                    kept_right += usize::from(ok);
                }
            }
        }
        (
            Some(right as f64 / n.max(1) as f64),
            Some(kept_right as f64 / kept.max(1) as f64),
            Some(m),
        )
    } else {
        (None, None, None)
    };
    if let Some(path) = &args.out {
        write_rows(path, args.format, &rows)?;
    }
    Ok(Summary {
        count: n,
        errors,
        seconds,
        frames_per_second: n as f64 / seconds,
        accuracy,
        abstained,
        kept_accuracy,
        confusion,
    })
}

fn write_rows(path: &Path, format: Option<Format>, rows: &[Row]) -> Result<(), CliError> {
    let format = format.unwrap_or(if path.extension().is_some_and(|e| e == "csv") {
        Format::Csv
    } else {
        Format::Jsonl
    });
    let io = |e: std::io::Error| CliError::Input(format!("{}: {e}", path.display()));
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    if format == Format::Csv {
        writeln!(w, "id,label,digit,confidence,abstained,error").map_err(io)?;
    }
    for r in rows {
        match format {
            Format::Csv => {
                let opt = |v: Option<String>| v.unwrap_or_default();
                let err = r.error.as_deref().unwrap_or("").replace('"', "\"\"");
                writeln!(
                    w,
                    "\"{}\",{},{},{},{},\"{}\"",
                    r.id.replace('"', "\"\""),
                    opt(r.label.map(|v| v.to_string())),
                    opt(r.digit.map(|v| v.to_string())),
                    opt(r.confidence.map(|v| format!("{v:.6}"))),
                    r.abstained,
                    err
                )
                .map_err(io)?;
            }
            Format::Jsonl => {
                writeln!(w, "{}", serde_json::to_string(r).expect("rows serialize")).map_err(io)?;
            }
        }
    }
    w.flush().map_err(io)
}

/// The summary as text.
pub fn print_summary(s: &Summary) {
    println!("count       {}", s.count);
    println!("errors      {}", s.errors);
    println!("time        {:.2} s", s.seconds);
    println!("throughput  {:.0} frames/s", s.frames_per_second);
    if let Some(a) = s.accuracy {
        println!("accuracy    {:.4} ({:.2}%)", a, a * 100.0);
    }
    println!(
        "abstained   {} ({:.2}%): below min_confidence, for a person to check",
        s.abstained,
        s.abstained as f64 / s.count.max(1) as f64 * 100.0
    );
    if let Some(a) = s.kept_accuracy {
        println!(
            "kept        {:.4} ({:.2}%) accuracy of the answers not abstained",
            a,
            a * 100.0
        );
    }
    if let Some(m) = &s.confusion {
        println!("confusion matrix (rows = true label, columns = predicted):");
        print!("      ");
        for d in 0..10 {
            print!("{d:>6}");
        }
        println!();
        for (l, row) in m.iter().enumerate() {
            print!("{l:>6}");
            for v in row {
                print!("{v:>6}");
            }
            println!();
        }
    }
}
