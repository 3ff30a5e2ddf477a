//! The batch worker: one bounded queue in front of the ONNX Runtime sessions.
//!
//! Admission is a semaphore of `max_queue` permits, taken before
//! preprocessing and released when the request is answered or dropped, so
//! everything the server holds for requests is bounded by it. Unary calls
//! take a permit or fail at once; streams wait for one.
//!
//! The queue has two lanes. A caller waiting on one answer (unary gRPC, the
//! web page, KServe infer) goes ahead of bulk stream frames, which otherwise
//! keep a deep queue in front of it. The priority is strict, so interactive
//! load at full capacity holds bulk frames back until their deadline: the
//! price of keeping interactive latency flat under a bulk job.
//!
//! Each session runs on its own OS thread, never on the async runtime. A
//! worker takes whatever is waiting, up to `max_batch_size` (continuous
//! batching); with a batch delay it waits that long for more. Requests whose
//! deadline passed or whose caller went away are dropped before inference.
//!
//! Idle workers are woken lowest index first, and only when a job arrives
//! and no worker is free to take it otherwise. Under light load the same
//! worker, on a warm cache, runs every batch; the others join as the load
//! needs them. (Waiting on a shared channel woke idle workers in turn, so
//! each inference started on a cold cache and often a migrated thread.)
//!
//! A worker takes one share of what waits, `1/workers` of it (never under
//! two), up to the cap, and wakes a free worker for the rest. Taking
//! everything up to the cap left the other session running single calls
//! as they trickled in (29% of batches with 16 Python callers), and held
//! every answer of a big batch back until its last image was done; shares
//! keep both sessions and the callers busy at once (docs/benchmarks.md,
//! "Sharing the queue"). A deep queue still fills whole batches, and a
//! batch delay (`--max-batch-delay`) keeps the cap as its target.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Arc, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Select, Sender};
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
    pub policy: QueuePolicy,
    /// How long an idle worker polls the lanes before it parks. A parked
    /// worker's CPU goes idle, and the next inference on it runs slower
    /// (docs/benchmarks.md, "In-server inference cost"); polling keeps the
    /// core busy through a light load's gaps, at the price of that core.
    pub idle_spin: Duration,
}

/// How the two lanes share the sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueuePolicy {
    /// Interactive calls first, in batches of their own; bulk frames when
    /// no call is waiting.
    Priority,
    /// One line, first come first served, whatever the request.
    Fifo,
}

impl QueuePolicy {
    pub const ALL: [QueuePolicy; 2] = [QueuePolicy::Priority, QueuePolicy::Fifo];

    /// The name flags and `GetModelInfo` use.
    pub fn as_str(self) -> &'static str {
        match self {
            QueuePolicy::Priority => "priority",
            QueuePolicy::Fifo => "fifo",
        }
    }
}

impl std::str::FromStr for QueuePolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown queue policy {s:?}; use priority or fifo"))
    }
}

/// Which lane a request waits in, and how it is admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Traffic {
    /// A caller waiting on this answer: admitted at once or refused
    /// (RESOURCE_EXHAUSTED), served before bulk frames.
    Interactive,
    /// Stream frames: wait for room (back-pressure), then for the sessions
    /// to have no interactive call to run.
    Bulk,
}

impl Traffic {
    /// The `lane` label of `mnister_queue_depth`.
    pub fn lane(self) -> &'static str {
        match self {
            Traffic::Interactive => "single",
            Traffic::Bulk => "stream",
        }
    }
}

/// Adds `delta` to a lane's queue-depth gauge. Increments and decrements,
/// never `set`: the submitting thread and the workers both change the depth,
/// and a `set` from one would overwrite the other's newer value.
fn queue_gauge(traffic: Traffic, delta: f64) {
    let g = gauge!(m::QUEUE_DEPTH, "lane" => traffic.lane());
    if delta >= 0.0 {
        g.increment(delta);
    } else {
        g.decrement(-delta);
    }
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
    pub traffic: Traffic,
    /// The request's spans (disabled when it is not traced).
    pub trace: crate::trace::JobTrace,
}

/// Both lanes' senders; dropped together, which is how workers learn to stop.
struct Lanes {
    interactive: Sender<Job>,
    bulk: Sender<Job>,
}

pub struct Batcher {
    tx: Option<Lanes>,
    admission: Arc<Semaphore>,
    depth: Arc<AtomicUsize>,
    idle: Arc<Idle>,
    workers: Vec<JoinHandle<()>>,
    policy: QueuePolicy,
}

/// The workers parked for want of work, one bit each, and their threads to
/// unpark. A submitter claims the lowest set bit and wakes that worker.
struct Idle {
    words: Vec<AtomicU64>,
    threads: OnceLock<Vec<Thread>>,
    /// Set once the lanes are closing, for workers that poll.
    closing: AtomicBool,
    /// Workers between taking a batch's first job and finishing its
    /// inference; the rest are free to share a queue.
    busy: AtomicUsize,
    workers: usize,
}

impl Idle {
    fn new(workers: usize) -> Self {
        Idle {
            words: (0..workers.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            threads: OnceLock::new(),
            closing: AtomicBool::new(false),
            busy: AtomicUsize::new(0),
            workers,
        }
    }

    fn is_set(&self, i: usize) -> bool {
        self.words[i / 64].load(Ordering::SeqCst) & (1 << (i % 64)) != 0
    }

    fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    fn set(&self, i: usize) {
        self.words[i / 64].fetch_or(1 << (i % 64), Ordering::SeqCst);
    }

    fn clear(&self, i: usize) {
        self.words[i / 64].fetch_and(!(1 << (i % 64)), Ordering::SeqCst);
    }

    /// Wakes the lowest-numbered parked worker, if any is parked.
    fn wake_one(&self) {
        for (w, word) in self.words.iter().enumerate() {
            let mut bits = word.load(Ordering::SeqCst);
            while bits != 0 {
                let bit = bits.trailing_zeros() as usize;
                let was = word.fetch_and(!(1 << bit), Ordering::SeqCst);
                if was & (1 << bit) != 0 {
                    if let Some(t) = self.threads.get().and_then(|t| t.get(w * 64 + bit)) {
                        t.unpark();
                    }
                    return;
                }
                bits = was & !(1 << bit);
            }
        }
    }

    /// Wakes every worker, to see the lanes closed.
    fn wake_all(&self) {
        self.closing.store(true, Ordering::SeqCst);
        for t in self.threads.get().into_iter().flatten() {
            t.unpark();
        }
    }
}

impl Batcher {
    /// Starts one worker thread per backend.
    pub fn start(backends: Vec<Box<dyn Backend>>, config: BatcherConfig) -> Self {
        // Each lane can hold every permit, so a send never blocks.
        let (interactive, interactive_rx) = crossbeam_channel::bounded(config.max_queue);
        let (bulk, bulk_rx) = crossbeam_channel::bounded(config.max_queue);
        let depth = Arc::new(AtomicUsize::new(0));
        let idle = Arc::new(Idle::new(backends.len()));
        let workers: Vec<JoinHandle<()>> = backends
            .into_iter()
            .enumerate()
            .map(|(i, backend)| {
                let queue = Queue {
                    interactive: interactive_rx.clone(),
                    bulk: bulk_rx.clone(),
                    me: i,
                    idle: idle.clone(),
                    spin: config.idle_spin,
                };
                let depth = depth.clone();
                std::thread::Builder::new()
                    .name(format!("mnister-batch-{i}"))
                    .spawn(move || worker(backend, queue, depth, config))
                    .expect("spawning a batch worker thread")
            })
            .collect();
        // Before any submit: a worker parks only after its bit is set, and
        // only a submit or a shutdown reads the threads to wake it.
        let _ = idle
            .threads
            .set(workers.iter().map(|w| w.thread().clone()).collect());
        Batcher {
            tx: Some(Lanes { interactive, bulk }),
            admission: Arc::new(Semaphore::new(config.max_queue)),
            depth,
            idle,
            workers,
            policy: config.policy,
        }
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

    /// Queues an admitted job in its lane; never blocks, because each lane
    /// has room for every permit.
    pub fn submit(&self, job: Job) {
        let lanes = self.tx.as_ref().expect("batcher is running");
        let tx = match (job.traffic, self.policy) {
            (Traffic::Bulk, QueuePolicy::Priority) => &lanes.bulk,
            _ => &lanes.interactive,
        };
        let traffic = job.traffic;
        self.depth.fetch_add(1, Ordering::Relaxed);
        queue_gauge(traffic, 1.0);
        if let Err(e) = tx.try_send(job) {
            // Only reachable if the workers are gone; answer instead of hanging.
            self.depth.fetch_sub(1, Ordering::Relaxed);
            queue_gauge(traffic, -1.0);
            let job = e.into_inner();
            let _ = job.reply.send(Err(BatchError::Backend(
                "the batch workers have stopped".into(),
            )));
            return;
        }
        // Pairs with the fence in `Queue::wait`: either that worker sees
        // this job, or this sees its idle bit.
        fence(Ordering::SeqCst);
        self.idle.wake_one();
    }

    pub fn queue_depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// Stops taking work, lets the workers finish what is queued and joins them.
    pub fn shutdown(mut self) {
        self.tx.take();
        self.idle.wake_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.tx.take();
        self.idle.wake_all();
    }
}

/// A worker's end of both lanes.
struct Queue {
    interactive: Receiver<Job>,
    bulk: Receiver<Job>,
    /// This worker's index: its bit in `idle`.
    me: usize,
    idle: Arc<Idle>,
    /// Polling before parking ([`BatcherConfig::idle_spin`]).
    spin: Duration,
}

enum Next {
    Job(Job),
    /// Nothing came before the deadline.
    TimedOut,
    /// The batcher is shutting down and both lanes are empty.
    Closed,
}

impl Queue {
    /// The next job from either lane, interactive first; when both are
    /// empty, parks until a submit picks this worker or the lanes close.
    fn wait(&self) -> Next {
        let take = || match self.interactive.try_recv() {
            Ok(job) => Some(Next::Job(job)),
            Err(a) => match self.bulk.try_recv() {
                Ok(job) => Some(Next::Job(job)),
                Err(b) if a.is_disconnected() && b.is_disconnected() => Some(Next::Closed),
                Err(_) => None,
            },
        };
        loop {
            if let Some(next) = take() {
                self.idle.clear(self.me);
                return next;
            }
            self.idle.set(self.me);
            fence(Ordering::SeqCst);
            if let Some(next) = take() {
                self.idle.clear(self.me);
                return next;
            }
            // Polling instead of parking, with the same hand-off: a submit
            // claims this worker by clearing its bit (and leaves an unpark
            // token, which only makes a later park return at once).
            if !self.spin.is_zero() {
                let until = Instant::now() + self.spin;
                while self.idle.is_set(self.me) && !self.idle.is_closing() {
                    for _ in 0..64 {
                        std::hint::spin_loop();
                    }
                    if Instant::now() >= until {
                        break;
                    }
                }
                if !self.idle.is_set(self.me) || self.idle.is_closing() {
                    continue;
                }
            }
            // Woken by a submit (which cleared the bit), a shutdown, or
            // spuriously: look again either way.
            std::thread::park();
            self.idle.clear(self.me);
        }
    }

    /// How many jobs the batch just started may hold: this worker's share
    /// of what waits (module docs), and a free worker woken if any is left
    /// over. Counts this worker busy until [`Queue::done`].
    /// With a batch delay the caller asked for batches to fill while they
    /// wait, so the cap stands: a share of what waits at the first job
    /// would end the batch before the delay could fill it.
    fn share(&self, cap: usize, with_bulk: bool, delay: Duration) -> usize {
        let others_busy = self.idle.busy.fetch_add(1, Ordering::SeqCst);
        if !delay.is_zero() || self.idle.workers == 1 {
            return cap;
        }
        let free = self.idle.workers.saturating_sub(others_busy + 1);
        let waiting = 1 + self.interactive.len() + if with_bulk { self.bulk.len() } else { 0 };
        let share = waiting.div_ceil(self.idle.workers).max(2).min(cap);
        if waiting > share && free > 0 {
            self.idle.wake_one();
        }
        share
    }

    /// Marks this worker free before it answers a batch: a call that
    /// arrives while it sends the answers waits the few microseconds for it
    /// rather than waking a cold worker. Cleared when it takes a job.
    fn done(&self) {
        self.idle.busy.fetch_sub(1, Ordering::SeqCst);
        self.idle.set(self.me);
    }

    /// The next job, interactive first, waiting for one until `deadline`
    /// (filling a batch). Without `bulk`, only the interactive lane.
    fn next(&self, deadline: Instant, bulk: bool) -> Next {
        if !bulk {
            return match self.interactive.recv_deadline(deadline) {
                Ok(job) => Next::Job(job),
                Err(RecvTimeoutError::Timeout) => Next::TimedOut,
                Err(RecvTimeoutError::Disconnected) => Next::Closed,
            };
        }
        loop {
            let a = match self.interactive.try_recv() {
                Ok(job) => return Next::Job(job),
                Err(e) => e,
            };
            let b = match self.bulk.try_recv() {
                Ok(job) => return Next::Job(job),
                Err(e) => e,
            };
            if a.is_disconnected() && b.is_disconnected() {
                return Next::Closed;
            }
            if deadline <= Instant::now() {
                return Next::TimedOut;
            }
            let mut sel = Select::new();
            let i = sel.recv(&self.interactive);
            sel.recv(&self.bulk);
            let Ok(op) = sel.select_deadline(deadline) else {
                return Next::TimedOut;
            };
            let got = if op.index() == i {
                op.recv(&self.interactive)
            } else {
                op.recv(&self.bulk)
            };
            // A bulk job that won the race against an interactive one is
            // still taken: it is one image, and the batch goes on to fill
            // from the interactive lane first. A disconnect loops back to
            // drain whatever the other lane still holds.
            if let Ok(job) = got {
                return Next::Job(job);
            }
        }
    }
}

fn worker(
    mut backend: Box<dyn Backend>,
    queue: Queue,
    depth: Arc<AtomicUsize>,
    cfg: BatcherConfig,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(cfg.max_batch_size);
    let mut input: Vec<f32> = Vec::with_capacity(cfg.max_batch_size * PIXELS);
    loop {
        match queue.wait() {
            Next::Job(first) => batch.push(first),
            Next::Closed => return,
            Next::TimedOut => continue,
        }
        // A batch that starts with a single call takes no bulk frames: the
        // cost per image is flat from batch 2 on for this model, so filling
        // it would buy no throughput and make the caller wait for the
        // frames' inference too.
        let with_bulk = batch[0].traffic == Traffic::Bulk;
        let limit = queue.share(cfg.max_batch_size, with_bulk, cfg.max_batch_delay);
        let until = Instant::now() + cfg.max_batch_delay;
        while batch.len() < limit {
            match queue.next(until, with_bulk) {
                Next::Job(job) => batch.push(job),
                Next::TimedOut | Next::Closed => break,
            }
        }
        depth.fetch_sub(batch.len(), Ordering::Relaxed);
        let singles = batch
            .iter()
            .filter(|j| j.traffic == Traffic::Interactive)
            .count();
        for (traffic, n) in [
            (Traffic::Interactive, singles),
            (Traffic::Bulk, batch.len() - singles),
        ] {
            if n > 0 {
                queue_gauge(traffic, -(n as f64));
            }
        }

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
            queue.done();
            continue;
        }
        let n = batch.len();
        input.clear();
        for job in &batch {
            input.extend_from_slice(&job.image[..]);
        }
        let _trace = crate::trace::BatchTrace::start(&mut batch);
        let started = Instant::now();
        let result = backend.infer(&input, n);
        let inference_time = started.elapsed();
        queue.done();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendError;
    use std::sync::Mutex;
    use std::sync::mpsc;

    /// Answers each image with its id (pixel 0) and records every batch's
    /// ids; the first call waits for the test to open the gate, so the
    /// test can fill the queue while the worker is busy.
    struct GateBackend {
        entered: mpsc::Sender<()>,
        gate: Option<mpsc::Receiver<()>>,
        batches: Arc<Mutex<Vec<Vec<usize>>>>,
    }

    impl Backend for GateBackend {
        fn infer(&mut self, input: &[f32], n: usize) -> Result<Vec<f32>, BackendError> {
            if let Some(gate) = self.gate.take() {
                let _ = self.entered.send(());
                let _ = gate.recv();
            }
            let ids: Vec<usize> = input.chunks_exact(PIXELS).map(|p| p[0] as usize).collect();
            self.batches.lock().unwrap().push(ids.clone());
            let mut out = vec![0f32; n * CLASSES];
            for (row, id) in out.chunks_exact_mut(CLASSES).zip(ids) {
                row[0] = id as f32;
            }
            Ok(out)
        }
    }

    fn submit(
        b: &Batcher,
        id: usize,
        traffic: Traffic,
    ) -> oneshot::Receiver<Result<Inference, BatchError>> {
        let mut image = Box::new([0f32; PIXELS]);
        image[0] = id as f32;
        let (reply, rx) = oneshot::channel();
        b.submit(Job {
            image,
            deadline: None,
            enqueued: Instant::now(),
            reply,
            permit: b.try_admit(1).expect("room in the queue"),
            traffic,
            trace: crate::trace::JobTrace::none(),
        });
        rx
    }

    /// The batches one worker runs when frame 0 keeps it busy while bulk
    /// frames 1..=10 and then interactive calls 100 and 101 queue up.
    fn batches_after_queueing(policy: QueuePolicy) -> Vec<Vec<usize>> {
        let (entered_tx, entered) = mpsc::channel();
        let (open, gate) = mpsc::channel();
        let batches = Arc::new(Mutex::new(Vec::new()));
        let backend = GateBackend {
            entered: entered_tx,
            gate: Some(gate),
            batches: batches.clone(),
        };
        let b = Batcher::start(
            vec![Box::new(backend)],
            BatcherConfig {
                max_batch_size: 4,
                max_batch_delay: Duration::ZERO,
                idle_spin: Duration::ZERO,
                max_queue: 64,
                policy,
            },
        );
        let mut bulk = vec![submit(&b, 0, Traffic::Bulk)];
        entered.recv().unwrap();
        bulk.extend((1..=10).map(|id| submit(&b, id, Traffic::Bulk)));
        let calls = [
            submit(&b, 100, Traffic::Interactive),
            submit(&b, 101, Traffic::Interactive),
        ];
        open.send(()).unwrap();
        for rx in calls.into_iter().chain(bulk) {
            rx.blocking_recv().unwrap().unwrap();
        }
        b.shutdown();
        batches.lock().unwrap().clone()
    }

    #[test]
    fn interactive_requests_go_ahead_of_queued_bulk_frames() {
        assert_eq!(
            batches_after_queueing(QueuePolicy::Priority),
            vec![
                vec![0],
                vec![100, 101],
                vec![1, 2, 3, 4],
                vec![5, 6, 7, 8],
                vec![9, 10]
            ],
            "interactive calls first and on their own, then bulk in order"
        );
    }

    #[test]
    fn fifo_policy_serves_in_arrival_order() {
        assert_eq!(
            batches_after_queueing(QueuePolicy::Fifo),
            vec![
                vec![0],
                vec![1, 2, 3, 4],
                vec![5, 6, 7, 8],
                vec![9, 10, 100, 101]
            ],
        );
    }

    /// Logs which worker ran each batch; `gate`, when set, holds the
    /// first batch until the test opens it.
    struct WhoBackend {
        worker: usize,
        ran: Arc<Mutex<Vec<usize>>>,
        entered: Option<mpsc::Sender<()>>,
        gate: Option<mpsc::Receiver<()>>,
    }

    impl Backend for WhoBackend {
        fn infer(&mut self, _input: &[f32], n: usize) -> Result<Vec<f32>, BackendError> {
            if let (Some(entered), Some(gate)) = (self.entered.take(), self.gate.take()) {
                let _ = entered.send(());
                let _ = gate.recv();
            }
            self.ran.lock().unwrap().push(self.worker);
            Ok(vec![0f32; n * CLASSES])
        }
    }

    fn config(max_batch_size: usize) -> BatcherConfig {
        BatcherConfig {
            max_batch_size,
            max_batch_delay: Duration::ZERO,
            idle_spin: Duration::ZERO,
            max_queue: 64,
            policy: QueuePolicy::Priority,
        }
    }

    #[test]
    fn light_load_stays_on_the_lowest_idle_worker() {
        let ran = Arc::new(Mutex::new(Vec::new()));
        let backends: Vec<Box<dyn Backend>> = (0..3)
            .map(|worker| {
                Box::new(WhoBackend {
                    worker,
                    ran: ran.clone(),
                    entered: None,
                    gate: None,
                }) as Box<dyn Backend>
            })
            .collect();
        let b = Batcher::start(backends, config(4));
        while b.idle.words[0].load(Ordering::SeqCst) != 0b111 {
            std::thread::sleep(Duration::from_millis(1));
        }
        // One call at a time, each sent the moment the last is answered.
        for id in 0..40 {
            submit(&b, id, Traffic::Interactive)
                .blocking_recv()
                .unwrap()
                .unwrap();
        }
        b.shutdown();
        let ran = ran.lock().unwrap();
        assert_eq!(ran.len(), 40);
        assert!(
            ran.iter().all(|&w| w == 0),
            "sequential calls should all run on worker 0, ran on {ran:?}"
        );
    }

    #[test]
    fn polling_workers_keep_the_hand_off_and_still_shut_down() {
        // Workers that never park (an hour of polling): calls are still
        // handed to the lowest free worker, and shutdown does not wait for
        // the polling to time out.
        let ran = Arc::new(Mutex::new(Vec::new()));
        let backends: Vec<Box<dyn Backend>> = (0..2)
            .map(|worker| {
                Box::new(WhoBackend {
                    worker,
                    ran: ran.clone(),
                    entered: None,
                    gate: None,
                }) as Box<dyn Backend>
            })
            .collect();
        let b = Batcher::start(
            backends,
            BatcherConfig {
                idle_spin: Duration::from_secs(3600),
                ..config(4)
            },
        );
        while b.idle.words[0].load(Ordering::SeqCst) != 0b11 {
            std::thread::sleep(Duration::from_millis(1));
        }
        for id in 0..40 {
            submit(&b, id, Traffic::Interactive)
                .blocking_recv()
                .unwrap()
                .unwrap();
        }
        let (done_tx, done) = mpsc::channel();
        std::thread::spawn(move || {
            b.shutdown();
            let _ = done_tx.send(());
        });
        done.recv_timeout(Duration::from_secs(20))
            .expect("shutdown returned while the workers were polling");
        let ran = ran.lock().unwrap();
        assert_eq!(ran.len(), 40);
        assert!(ran.iter().all(|&w| w == 0), "ran on {ran:?}");
    }

    #[test]
    fn a_busy_worker_wakes_an_idle_one() {
        let ran = Arc::new(Mutex::new(Vec::new()));
        let (entered_tx, entered) = mpsc::channel();
        let (open, gate) = mpsc::channel();
        let mut gate = Some((entered_tx, gate));
        let backends: Vec<Box<dyn Backend>> = (0..2)
            .map(|worker| {
                let (entered, gate) = gate.take().unzip();
                Box::new(WhoBackend {
                    worker,
                    ran: ran.clone(),
                    entered,
                    gate,
                }) as Box<dyn Backend>
            })
            .collect();
        let b = Batcher::start(backends, config(1));
        // Wait until both workers have parked, so the first call goes to 0.
        while b.idle.words[0].load(Ordering::SeqCst) != 0b11 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let first = submit(&b, 0, Traffic::Interactive);
        entered.recv().unwrap();
        // Worker 0 is held inside its first batch: the next call must be
        // run by worker 1, not wait for worker 0.
        let (done_tx, done) = mpsc::channel();
        let second = submit(&b, 1, Traffic::Interactive);
        std::thread::spawn(move || {
            let _ = done_tx.send(second.blocking_recv());
        });
        let answer = done.recv_timeout(Duration::from_secs(20));
        open.send(()).unwrap();
        first.blocking_recv().unwrap().unwrap();
        answer
            .expect("the second call was answered while worker 0 was busy")
            .unwrap()
            .unwrap();
        b.shutdown();
        assert_eq!(*ran.lock().unwrap(), vec![1, 0]);
    }

    #[test]
    fn a_queue_is_taken_in_shares_not_whole() {
        // Both workers are held inside their first batch while eight calls
        // queue up. Worker 0 is let go first: it takes half of what waits
        // (never under two), so worker 1 finds work when it frees instead
        // of worker 0 running all eight alone.
        let batches = Arc::new(Mutex::new(Vec::new()));
        let mut opens = Vec::new();
        let mut entered = Vec::new();
        let backends: Vec<Box<dyn Backend>> = (0..2)
            .map(|_| {
                let (entered_tx, entered_rx) = mpsc::channel();
                let (open, gate) = mpsc::channel();
                opens.push(open);
                entered.push(entered_rx);
                Box::new(GateBackend {
                    entered: entered_tx,
                    gate: Some(gate),
                    batches: batches.clone(),
                }) as Box<dyn Backend>
            })
            .collect();
        let b = Batcher::start(backends, config(16));
        while b.idle.words[0].load(Ordering::SeqCst) != 0b11 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let first = submit(&b, 0, Traffic::Interactive);
        entered[0].recv().unwrap();
        let second = submit(&b, 1, Traffic::Interactive);
        entered[1].recv().unwrap();
        let rest: Vec<_> = (2..=9)
            .map(|id| submit(&b, id, Traffic::Interactive))
            .collect();
        opens[0].send(()).unwrap();
        for rx in std::iter::once(first).chain(rest) {
            rx.blocking_recv().unwrap().unwrap();
        }
        opens[1].send(()).unwrap();
        second.blocking_recv().unwrap().unwrap();
        b.shutdown();
        assert_eq!(
            *batches.lock().unwrap(),
            vec![vec![0], vec![2, 3, 4, 5], vec![6, 7], vec![8, 9], vec![1]],
            "halves of what waits while the other worker is busy"
        );
    }

    #[test]
    fn a_batch_delay_still_fills_to_the_cap() {
        // The first call finds nothing else waiting; with a delay the
        // batch must keep filling to the cap, not stop at a share of one.
        let (entered_tx, _entered) = mpsc::channel();
        let batches = Arc::new(Mutex::new(Vec::new()));
        let backend = GateBackend {
            entered: entered_tx,
            gate: None,
            batches: batches.clone(),
        };
        let b = Batcher::start(
            vec![Box::new(backend)],
            BatcherConfig {
                max_batch_delay: Duration::from_secs(5),
                ..config(4)
            },
        );
        let mut calls = vec![submit(&b, 0, Traffic::Interactive)];
        std::thread::sleep(Duration::from_millis(20));
        calls.extend((1..4).map(|id| submit(&b, id, Traffic::Interactive)));
        for rx in calls {
            rx.blocking_recv().unwrap().unwrap();
        }
        b.shutdown();
        assert_eq!(*batches.lock().unwrap(), vec![vec![0, 1, 2, 3]]);
    }

    #[test]
    fn shutdown_answers_what_both_lanes_hold() {
        let (entered_tx, entered) = mpsc::channel();
        let (open, gate) = mpsc::channel();
        let batches = Arc::new(Mutex::new(Vec::new()));
        let backend = GateBackend {
            entered: entered_tx,
            gate: Some(gate),
            batches: batches.clone(),
        };
        let b = Batcher::start(
            vec![Box::new(backend)],
            BatcherConfig {
                max_batch_size: 2,
                max_batch_delay: Duration::from_millis(1),
                idle_spin: Duration::ZERO,
                max_queue: 64,
                policy: QueuePolicy::Priority,
            },
        );
        let first = submit(&b, 0, Traffic::Interactive);
        entered.recv().unwrap();
        let rest: Vec<_> = (1..=9)
            .map(|id| {
                submit(
                    &b,
                    id,
                    if id % 2 == 0 {
                        Traffic::Bulk
                    } else {
                        Traffic::Interactive
                    },
                )
            })
            .collect();
        // Shutdown closes both lanes while the worker is still busy.
        let stopper = std::thread::spawn(move || b.shutdown());
        open.send(()).unwrap();
        stopper.join().unwrap();
        for (id, rx) in std::iter::once(first).chain(rest).enumerate() {
            let answer = rx
                .blocking_recv()
                .expect("every queued job is answered")
                .unwrap();
            assert_eq!(answer.probabilities[0], id as f32);
        }
        assert_eq!(
            batches.lock().unwrap().iter().map(Vec::len).sum::<usize>(),
            10
        );
    }
}
