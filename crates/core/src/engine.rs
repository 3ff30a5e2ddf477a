//! The transport-independent core: admission, preprocessing off the async
//! workers, the batcher, and the result. Every front end (gRPC, KServe, the
//! JSON API) is a thin layer over `Engine::classify`, so limits and
//! validation are the same whichever way a request arrives.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::try_join_all;
use metrics::{counter, gauge, histogram};
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tracing::Instrument;

use crate::backend::model::{self, ModelError};
use crate::backend::ort::{OrtBackend, RuntimeError, init_runtime};
use crate::backend::{Backend, CLASSES, ModelFile};
use crate::batcher::{BatchError, Batcher, BatcherConfig, Job};
use crate::metrics as m;
use crate::preprocess::{self, Limits, MnistImage, PIXELS, PreprocessError};
use crate::trace;

pub use crate::batcher::Traffic;

/// A request's image, in one of the accepted forms. Byte inputs are
/// `Bytes`, so a slice of the request's own buffer travels here uncopied.
#[derive(Debug, Clone)]
pub enum Input {
    /// Encoded bytes (PNG, JPEG, ...): decoded and preprocessed.
    Image(Bytes),
    /// Raw 8-bit grayscale: preprocessed.
    Pixels {
        width: u64,
        height: u64,
        data: Bytes,
    },
    /// 784 bytes already in MNIST form: used as is.
    Mnist(Bytes),
    /// 784 little-endian f32 already in MNIST form (0..1), e.g. one image's
    /// slice of a KServe FP32 tensor: used as is.
    FloatsLe(Bytes),
    /// 784 floats already in MNIST form, at `offset` in a shared buffer.
    Floats {
        values: Arc<Vec<f32>>,
        offset: usize,
    },
}

/// Every way a classification can fail. The transports map each variant to
/// their own status codes, in one place each.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClassifyError {
    #[error("{0}")]
    Preprocess(#[from] PreprocessError),
    #[error("{count} images in one request; at most {max_queue} (--max-queue) are accepted")]
    TooManyImages { count: usize, max_queue: usize },
    #[error("the server is at capacity ({max_queue} requests admitted); retry with backoff")]
    QueueFull { max_queue: usize },
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    #[error("the server is shutting down; retry on another instance")]
    ShuttingDown,
    #[error("min_confidence is {0}; it must be a probability in [0, 1] (0 never abstains)")]
    BadMinConfidence(f32),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<BatchError> for ClassifyError {
    fn from(e: BatchError) -> Self {
        match e {
            BatchError::DeadlineExceeded { .. } => ClassifyError::DeadlineExceeded(e.to_string()),
            BatchError::Backend(m) => ClassifyError::Internal(m),
        }
    }
}

/// How one request is served.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// When the whole request must be answered by.
    pub deadline: Option<Instant>,
    pub traffic: Traffic,
    /// Return the 28x28 image the model saw.
    pub want_preprocessed: bool,
    /// Answers below this confidence are marked abstained; None takes the
    /// server's default.
    pub min_confidence: Option<f32>,
    /// Who asked: the `rpc` label of `mnister_abstained_total`.
    pub source: &'static str,
}

impl Options {
    pub fn new(deadline: Instant, traffic: Traffic, source: &'static str) -> Self {
        Options {
            deadline: Some(deadline),
            traffic,
            want_preprocessed: false,
            min_confidence: None,
            source,
        }
    }
}

/// A per-request confidence threshold must be a probability.
pub fn check_min_confidence(v: f32) -> Result<f32, ClassifyError> {
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(ClassifyError::BadMinConfidence(v))
    }
}

#[derive(Debug, Clone)]
pub struct Timings {
    pub queue: Duration,
    pub preprocess: Duration,
    pub inference: Duration,
    pub total: Duration,
}

#[derive(Debug, Clone)]
pub struct Classification {
    pub digit: usize,
    pub confidence: f32,
    pub probabilities: [f32; CLASSES],
    /// The confidence was below the request's threshold: the digit is the
    /// model's best guess, and a person should check it.
    pub abstained: bool,
    pub timings: Timings,
    /// The 28x28 image the model saw, when asked for.
    pub preprocessed: Option<Vec<u8>>,
    pub model_version: Arc<str>,
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub batcher: BatcherConfig,
    pub sessions: usize,
    pub intra_threads: usize,
    pub preprocess_threads: usize,
    pub limits: Limits,
    /// Answers below this confidence are marked abstained unless a request
    /// sets its own threshold.
    pub min_confidence: f32,
    pub warmup_runs: usize,
    /// Refuse a model that reads fewer of the built-in golden digits.
    pub golden_min_accuracy: Option<f32>,
}

/// A loaded model with its sessions, batcher and preprocessing pool.
pub struct Engine {
    pub model: ModelFile,
    pub version: Arc<str>,
    pub config: EngineConfig,
    batcher: Batcher,
    pool: rayon::ThreadPool,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("warm-up batch failed on {model}: {reason}")]
    WarmUp { model: String, reason: String },
    #[error(
        "{model} read {right} of {total} golden digits ({accuracy:.1}%), below the required {required:.1}%"
    )]
    Golden {
        model: String,
        right: usize,
        total: usize,
        accuracy: f32,
        required: f32,
    },
}

/// An admitted request's place in the queue and its bounds in time.
struct Ticket {
    permit: OwnedSemaphorePermit,
    deadline: Option<Instant>,
    traffic: Traffic,
    started: Instant,
}

/// Counts a request as in flight for as long as it lives.
struct InflightGuard;

impl InflightGuard {
    fn new() -> Self {
        gauge!(m::INFLIGHT).increment(1.0);
        InflightGuard
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        gauge!(m::INFLIGHT).decrement(1.0);
    }
}

impl Engine {
    /// Loads the model into `sessions` ONNX Runtime sessions, runs a warm-up
    /// batch of the largest size through each, and starts the workers.
    pub fn load(
        model_path: &std::path::Path,
        ort_lib: Option<&std::path::Path>,
        config: EngineConfig,
    ) -> Result<Engine, EngineError> {
        let env = init_runtime(ort_lib)?;
        let bytes = model::read(model_path)?;
        let mut sessions = Vec::with_capacity(config.sessions);
        for _ in 0..config.sessions.max(1) {
            sessions.push(OrtBackend::new(
                env,
                model_path,
                &bytes,
                config.intra_threads,
            )?);
        }
        // The runtime that will serve the model also describes it.
        let model = ModelFile::describe(model_path, bytes, sessions[0].session())?;
        let warm = vec![0f32; config.batcher.max_batch_size * PIXELS];
        let mut backends: Vec<Box<dyn Backend>> = Vec::with_capacity(sessions.len());
        for mut b in sessions {
            let full =
                std::iter::repeat_n(config.batcher.max_batch_size, config.warmup_runs.max(1));
            for n in std::iter::once(1).chain(full) {
                b.infer(&warm[..n * PIXELS], n)
                    .map_err(|e| EngineError::WarmUp {
                        model: model.path.display().to_string(),
                        reason: e.to_string(),
                    })?;
            }
            backends.push(Box::new(b));
        }
        if let Some(required) = config.golden_min_accuracy {
            golden_check(&mut *backends[0], &model, required)?;
        }
        Ok(Self::with_backends(model, backends, config))
    }

    /// Builds an engine over ready backends (tests use fakes here).
    pub fn with_backends(
        model: ModelFile,
        backends: Vec<Box<dyn Backend>>,
        config: EngineConfig,
    ) -> Engine {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(config.preprocess_threads)
            .thread_name(|i| format!("mnister-preprocess-{i}"))
            .build()
            .expect("building the preprocessing pool");
        Engine {
            version: model.version().into(),
            batcher: Batcher::start(backends, config.batcher),
            model,
            config,
            pool,
        }
    }

    /// The labels of this engine's `mnister_model_info` series.
    pub fn model_labels(&self) -> m::ModelLabels<'_> {
        m::ModelLabels {
            version: &self.version,
            sha256: &self.model.sha256,
            precision: self.model.precision(),
        }
    }

    /// Stops the workers after they finish what is queued, and joins them.
    /// Blocks: call it off the async workers.
    pub fn shutdown(self) {
        self.batcher.shutdown();
    }

    /// Classifies one image. `deadline` bounds the whole request.
    pub async fn classify(
        &self,
        input: Input,
        opts: Options,
    ) -> Result<Classification, ClassifyError> {
        let started = Instant::now();
        let min_confidence = self.min_confidence(opts)?;
        let ticket = Ticket {
            permit: self
                .admit(1, opts.deadline, opts.traffic)
                .instrument(trace::child("admission"))
                .await?,
            deadline: opts.deadline,
            traffic: opts.traffic,
            started,
        };
        let _inflight = InflightGuard::new();
        let (image, preprocess_time) = self
            .timed_preprocess(input)
            .instrument(trace::child("preprocess"))
            .await?;
        let c = self
            .infer_preprocessed(image, preprocess_time, ticket, opts.want_preprocessed)
            .await?;
        Ok(self.judge(c, min_confidence, opts.source))
    }

    /// The threshold a request is judged by.
    fn min_confidence(&self, opts: Options) -> Result<f32, ClassifyError> {
        opts.min_confidence
            .map_or(Ok(self.config.min_confidence), check_min_confidence)
    }

    /// Marks an answer below `min_confidence` as abstained, and counts it.
    fn judge(
        &self,
        mut c: Classification,
        min_confidence: f32,
        source: &'static str,
    ) -> Classification {
        c.abstained = c.confidence < min_confidence;
        if c.abstained {
            counter!(m::ABSTAINED, "rpc" => source).increment(1);
        }
        c
    }

    /// Classifies several images of one request (a KServe batch). They are
    /// admitted together, all or none, then flow through the shared
    /// batcher like any other requests; answers keep the input order. The
    /// images are awaited together on the caller's task: the first failure
    /// drops (cancels) the rest.
    pub async fn classify_many(
        &self,
        inputs: Vec<Input>,
        opts: Options,
    ) -> Result<Vec<Classification>, ClassifyError> {
        let started = Instant::now();
        let min_confidence = self.min_confidence(opts)?;
        let Options {
            deadline, traffic, ..
        } = opts;
        let n = inputs.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        if n > self.config.batcher.max_queue {
            return Err(ClassifyError::TooManyImages {
                count: n,
                max_queue: self.config.batcher.max_queue,
            });
        }
        let mut permit = self
            .admit(n as u32, deadline, traffic)
            .instrument(trace::child("admission"))
            .await?;
        let _inflight: Vec<InflightGuard> = (0..n).map(|_| InflightGuard::new()).collect();
        // Decode every image first, so that one bad image fails the request
        // before any of its siblings costs model time.
        let images = try_join_all(inputs.into_iter().map(|i| self.timed_preprocess(i)))
            .instrument(trace::child("preprocess"))
            .await?;
        let answers = images.into_iter().map(|(image, preprocess_time)| {
            let one = if permit.num_permits() > 1 {
                permit.split(1).expect("a permit per image")
            } else {
                std::mem::replace(&mut permit, self.batcher.empty_permit())
            };
            let ticket = Ticket {
                permit: one,
                deadline,
                traffic,
                started,
            };
            self.infer_preprocessed(image, preprocess_time, ticket, false)
        });
        Ok(try_join_all(answers)
            .await?
            .into_iter()
            .map(|c| self.judge(c, min_confidence, opts.source))
            .collect())
    }

    /// Admission: `n` permits at once, or why not.
    async fn admit(
        &self,
        n: u32,
        deadline: Option<Instant>,
        traffic: Traffic,
    ) -> Result<OwnedSemaphorePermit, ClassifyError> {
        match traffic {
            Traffic::Interactive => self.batcher.try_admit(n).ok_or(ClassifyError::QueueFull {
                max_queue: self.config.batcher.max_queue,
            }),
            Traffic::Bulk => {
                let wait = self.batcher.admit(n);
                match deadline {
                    Some(d) => tokio::time::timeout_at(d.into(), wait).await.map_err(|_| {
                        ClassifyError::DeadlineExceeded(
                            "the deadline passed while waiting for queue capacity".into(),
                        )
                    }),
                    None => Ok(wait.await),
                }
            }
        }
    }

    async fn timed_preprocess(
        &self,
        input: Input,
    ) -> Result<(Box<MnistImage>, Duration), ClassifyError> {
        let t = Instant::now();
        let image = self.preprocess(input).await?;
        let preprocess_time = t.elapsed();
        histogram!(m::PREPROCESS_DURATION).record(preprocess_time.as_secs_f64());
        Ok((image, preprocess_time))
    }

    /// Hands a decoded image to the batcher and waits for its answer.
    async fn infer_preprocessed(
        &self,
        image: Box<MnistImage>,
        preprocess_time: Duration,
        ticket: Ticket,
        want_preprocessed: bool,
    ) -> Result<Classification, ClassifyError> {
        let Ticket {
            permit,
            deadline,
            traffic,
            started,
        } = ticket;
        if deadline.is_some_and(|d| d <= Instant::now()) {
            counter!(m::DROPPED, "reason" => "deadline_exceeded").increment(1);
            return Err(ClassifyError::DeadlineExceeded(format!(
                "the deadline passed after {} ms, before the request reached the model",
                started.elapsed().as_millis()
            )));
        }
        let preprocessed = want_preprocessed.then(|| preprocess::to_bytes(&image));

        let (tx, rx) = oneshot::channel();
        self.batcher.submit(Job {
            image,
            deadline,
            enqueued: Instant::now(),
            reply: tx,
            permit,
            traffic,
            trace: trace::JobTrace::current(),
        });
        let answer = match deadline {
            Some(d) => tokio::time::timeout_at(d.into(), rx).await.map_err(|_| {
                ClassifyError::DeadlineExceeded(format!(
                    "no result within the deadline ({} ms)",
                    started.elapsed().as_millis()
                ))
            })?,
            None => rx.await,
        };
        let inference = answer.map_err(|_| ClassifyError::ShuttingDown)??;
        let p = inference.probabilities;
        let digit = crate::backend::argmax(&p);
        let confidence = p[digit];
        counter!(m::PREDICTIONS, "digit" => DIGITS[digit]).increment(1);
        Ok(Classification {
            digit,
            confidence,
            probabilities: p,
            abstained: false,
            timings: Timings {
                queue: inference.queue_time,
                preprocess: preprocess_time,
                inference: inference.inference_time,
                total: started.elapsed(),
            },
            preprocessed,
            model_version: self.version.clone(),
        })
    }

    async fn preprocess(&self, input: Input) -> Result<Box<MnistImage>, ClassifyError> {
        match input {
            // Cheap enough to do inline: a copy and a scale.
            Input::Mnist(_) | Input::FloatsLe(_) | Input::Floats { .. } => {
                Ok(Box::new(preprocess_input(input, &self.config.limits)?))
            }
            other => {
                let limits = self.config.limits;
                let (tx, rx) = oneshot::channel();
                self.pool.spawn(move || {
                    // A panic in a decoder must fail this request, not abort
                    // the process (rayon aborts on an unhandled panic).
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        preprocess_input(other, &limits)
                    }));
                    let _ = tx.send(r.map(|r| r.map(Box::new)));
                });
                match rx.await {
                    Ok(Ok(r)) => r.map_err(ClassifyError::from),
                    Ok(Err(_)) => {
                        tracing::error!(
                            "a decoder panicked; the request fails, the server goes on"
                        );
                        Err(ClassifyError::Internal(
                            "decoding this image failed unexpectedly; please report it with the image".into(),
                        ))
                    }
                    Err(_) => Err(ClassifyError::Internal(
                        "the preprocessing worker stopped".into(),
                    )),
                }
            }
        }
    }
}

/// Any request input to MNIST form: the one entry point the engine and the
/// fuzz targets share.
pub fn preprocess_input(input: Input, limits: &Limits) -> Result<MnistImage, PreprocessError> {
    match input {
        Input::Image(bytes) => preprocess::preprocess_encoded(&bytes, limits),
        Input::Pixels {
            width,
            height,
            data,
        } => preprocess::preprocess_pixels(width, height, &data, limits),
        Input::Mnist(bytes) => preprocess::normalize_mnist(&bytes),
        Input::FloatsLe(bytes) => preprocess::mnist_floats_le(&bytes),
        Input::Floats { values, offset } => {
            preprocess::check_mnist_floats(values.get(offset..offset + PIXELS).unwrap_or(&[]))
        }
    }
}

/// 200 MNIST test digits with labels, built in, for checking a model before
/// it serves (the first 1,000 test images are the tests' own).
const GOLDEN_IMAGES: &[u8] = include_bytes!("../../../models/golden-images-idx3-ubyte.gz");
const GOLDEN_LABELS: &[u8] = include_bytes!("../../../models/golden-labels-idx1-ubyte.gz");

fn golden_check(
    backend: &mut dyn Backend,
    model: &ModelFile,
    required: f32,
) -> Result<(), EngineError> {
    let gunzip = |b: &[u8]| {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(b), &mut out).map(|_| out)
    };
    let images = gunzip(GOLDEN_IMAGES)
        .ok()
        .and_then(|b| crate::idx::parse_images(&b).ok());
    let labels = gunzip(GOLDEN_LABELS)
        .ok()
        .and_then(|b| crate::idx::parse_labels(&b).ok());
    let (Some(images), Some(labels)) = (images, labels) else {
        unreachable!("the built-in golden digits are valid IDX files");
    };
    let total = labels.labels.len();
    let mut right = 0;
    for start in (0..total).step_by(50) {
        let n = (total - start).min(50);
        let input: Vec<f32> = images.pixels[start * PIXELS..(start + n) * PIXELS]
            .iter()
            .map(|&b| f32::from(b) / 255.0)
            .collect();
        let probs = backend.infer(&input, n).map_err(|e| EngineError::WarmUp {
            model: model.path.display().to_string(),
            reason: e.to_string(),
        })?;
        right += probs
            .chunks(CLASSES)
            .zip(&labels.labels[start..start + n])
            .filter(|(p, l)| crate::backend::argmax(p) == **l as usize)
            .count();
    }
    let accuracy = right as f32 / total as f32 * 100.0;
    if accuracy < required * 100.0 {
        return Err(EngineError::Golden {
            model: model.path.display().to_string(),
            right,
            total,
            accuracy,
            required: required * 100.0,
        });
    }
    Ok(())
}

const DIGITS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
