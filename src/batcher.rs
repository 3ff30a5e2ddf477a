//! The batch worker: one bounded queue in front of the ONNX Runtime sessions.
//!
//! Admission is a semaphore of `max_queue` permits, taken before
//! preprocessing and released when the request is answered or dropped, so
//! everything the server holds for requests is bounded by it. Unary calls
//! take a permit or fail at once; streams wait for one.
//!
//! Each session runs on its own OS thread, never on the async runtime. A
//! worker takes whatever is waiting, up to `max_batch_size` (continuous
//! batching); with a batch delay it waits that long for more. Requests whose
//! deadline passed or whose caller went away are dropped before inference.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use metrics::{counter, gauge, histogram};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::backend::{Backend, CLASSES};
use crate::metrics as m;
use crate::preprocess::{MnistImage, PIXELS};

#[derive(Debug, Clone, Copy)]
pub struct BatcherConfig {
    pub max_batch_size: usize,
    pub max_batch_delay: Duration,
    pub max_queue: usize,
}

/// What the model said about one image.
#[derive(Debug, Clone)]
pub struct Inference {
    pub probabilities: [f32; CLASSES],
    pub queue_time: Duration,
    pub inference_time: Duration,
    pub batch_size: usize,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BatchError {
    #[error("deadline exceeded after {waited_ms} ms in the queue")]
    DeadlineExceeded { waited_ms: u64 },
    #[error("inference failed: {0}")]
    Backend(String),
}

/// One queued request. Holding the admission permit here means a request
/// counts against `max_queue` until it is answered or dropped, even if its
/// caller has already gone.
pub struct Job {
    pub image: Box<MnistImage>,
    pub deadline: Option<Instant>,
    pub enqueued: Instant,
    pub reply: oneshot::Sender<Result<Inference, BatchError>>,
    pub permit: OwnedSemaphorePermit,
}

pub struct Batcher {
    tx: Option<Sender<Job>>,
    admission: Arc<Semaphore>,
    depth: Arc<AtomicUsize>,
    workers: Vec<JoinHandle<()>>,
    config: BatcherConfig,
}

impl Batcher {
    /// Starts one worker thread per backend.
    pub fn start(backends: Vec<Box<dyn Backend>>, config: BatcherConfig) -> Self {
        let (tx, rx) = crossbeam_channel::bounded(config.max_queue);
        let depth = Arc::new(AtomicUsize::new(0));
        let workers = backends
            .into_iter()
            .enumerate()
            .map(|(i, backend)| {
                let rx = rx.clone();
                let depth = depth.clone();
                std::thread::Builder::new()
                    .name(format!("mnister-batch-{i}"))
                    .spawn(move || worker(backend, rx, depth, config))
                    .expect("spawning a batch worker thread")
            })
            .collect();
        Batcher {
            tx: Some(tx),
            admission: Arc::new(Semaphore::new(config.max_queue)),
            depth,
            workers,
            config,
        }
    }

    pub fn config(&self) -> BatcherConfig {
        self.config
    }

    /// `n` permits for a unary call, or None when the queue lacks room.
    pub fn try_admit(&self, n: u32) -> Option<OwnedSemaphorePermit> {
        self.admission.clone().try_acquire_many_owned(n).ok()
    }

    /// Waits for `n` permits (streams: back-pressure instead of errors).
    pub async fn admit(&self, n: u32) -> OwnedSemaphorePermit {
        self.admission
            .clone()
            .acquire_many_owned(n)
            .await
            .expect("the admission semaphore is never closed")
    }

    /// A permit for nothing, to take the place of one moved out.
    pub fn empty_permit(&self) -> OwnedSemaphorePermit {
        self.admission
            .clone()
            .try_acquire_many_owned(0)
            .expect("zero permits are always available")
    }

    /// Queues an admitted job; never blocks, because the channel has room
    /// for every permit.
    pub fn submit(&self, job: Job) {
        let tx = self.tx.as_ref().expect("batcher is running");
        let d = self.depth.fetch_add(1, Ordering::Relaxed) + 1;
        gauge!(m::QUEUE_DEPTH).set(d as f64);
        if let Err(e) = tx.try_send(job) {
            // Only reachable if the workers are gone; answer instead of hanging.
            self.depth.fetch_sub(1, Ordering::Relaxed);
            let job = e.into_inner();
            let _ = job.reply.send(Err(BatchError::Backend(
                "the batch workers have stopped".into(),
            )));
        }
    }

    pub fn queue_depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// Stops taking work, lets the workers finish what is queued and joins them.
    pub fn shutdown(mut self) {
        self.tx.take();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.tx.take();
    }
}

fn worker(
    mut backend: Box<dyn Backend>,
    rx: Receiver<Job>,
    depth: Arc<AtomicUsize>,
    cfg: BatcherConfig,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(cfg.max_batch_size);
    let mut input: Vec<f32> = Vec::with_capacity(cfg.max_batch_size * PIXELS);
    loop {
        let Ok(first) = rx.recv() else { return };
        batch.push(first);
        let until = Instant::now() + cfg.max_batch_delay;
        while batch.len() < cfg.max_batch_size {
            let next = if cfg.max_batch_delay.is_zero() {
                rx.try_recv()
            } else {
                rx.recv_deadline(until).map_err(|_| TryRecvError::Empty)
            };
            match next {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let d = depth.fetch_sub(batch.len(), Ordering::Relaxed) - batch.len();
        gauge!(m::QUEUE_DEPTH).set(d as f64);

        // Drop what nobody waits for any more before it costs model time.
        let now = Instant::now();
        let mut i = 0;
        while i < batch.len() {
            let job = &batch[i];
            if job.deadline.is_some_and(|d| d <= now) {
                counter!(m::DROPPED, "reason" => "deadline_exceeded").increment(1);
                let job = batch.swap_remove(i);
                let waited_ms = now.saturating_duration_since(job.enqueued).as_millis() as u64;
                let _ = job
                    .reply
                    .send(Err(BatchError::DeadlineExceeded { waited_ms }));
            } else if job.reply.is_closed() {
                counter!(m::DROPPED, "reason" => "cancelled").increment(1);
                batch.swap_remove(i);
            } else {
                i += 1;
            }
        }
        if batch.is_empty() {
            continue;
        }
        let n = batch.len();
        input.clear();
        for job in &batch {
            input.extend_from_slice(&job.image[..]);
        }
        let started = Instant::now();
        let result = backend.infer(&input, n);
        let inference_time = started.elapsed();
        histogram!(m::INFERENCE_DURATION).record(inference_time.as_secs_f64());
        histogram!(m::BATCH_SIZE).record(n as f64);
        match result {
            Ok(probs) => {
                for (job, row) in batch.drain(..).zip(probs.chunks_exact(CLASSES)) {
                    let queue_time = started.saturating_duration_since(job.enqueued);
                    histogram!(m::QUEUE_DURATION).record(queue_time.as_secs_f64());
                    let mut p = [0f32; CLASSES];
                    p.copy_from_slice(row);
                    let _ = job.reply.send(Ok(Inference {
                        probabilities: p,
                        queue_time,
                        inference_time,
                        batch_size: n,
                    }));
                }
            }
            Err(e) => {
                tracing::error!(batch = n, error = %e, "inference failed");
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(BatchError::Backend(e.to_string())));
                }
            }
        }
    }
}
