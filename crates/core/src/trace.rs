//! A request's spans inside the core, with plain `tracing` (the server turns
//! them into OpenTelemetry spans when it exports). Spans exist only under a
//! traced request: untraced work, such as the unsampled frames of a bulk
//! stream, creates none, so a 100,000-frame job costs no span per frame.
//!
//! Under a request span: `admission` (waiting for queue capacity),
//! `preprocess`, `queue` (from submission to the batch that takes it) and
//! `inference` (its batch's run). Each batch that serves a traced request
//! is one `inference batch` span, with `batch_size`, and every request
//! span in it, and its `inference` child, link to it (`follows_from`).

use tracing::Span;

/// A child of the current span named `name`, or a disabled span when the
/// current one is (no request is being traced).
pub fn child(name: &'static str) -> Span {
    if Span::current().is_disabled() {
        return Span::none();
    }
    match name {
        "admission" => tracing::info_span!("admission"),
        "preprocess" => tracing::info_span!("preprocess"),
        _ => tracing::info_span!("step", step = name),
    }
}

/// What a queued job carries for tracing: its request's span and its
/// `queue` span, which ends when a batch takes the job.
#[derive(Debug)]
pub struct JobTrace {
    pub request: Span,
    pub queue: Span,
}

impl JobTrace {
    /// The current request's span and a new `queue` span under it; both
    /// disabled when nothing is traced.
    pub fn current() -> JobTrace {
        let request = Span::current();
        if request.is_disabled() {
            return JobTrace::none();
        }
        let queue = tracing::info_span!(parent: &request, "queue");
        JobTrace { request, queue }
    }

    pub fn none() -> JobTrace {
        JobTrace {
            request: Span::none(),
            queue: Span::none(),
        }
    }
}

/// The spans of one batch: the `inference batch` span and an `inference`
/// child per traced request, which end when this is dropped.
pub struct BatchTrace {
    _batch: Span,
    _each: Vec<Span>,
}

impl BatchTrace {
    /// Ends each job's `queue` span, and starts the batch's spans when any
    /// of its jobs is traced.
    pub fn start(jobs: &mut [crate::batcher::Job]) -> BatchTrace {
        let n = jobs.len();
        if jobs.iter().all(|j| j.trace.request.is_disabled()) {
            return BatchTrace {
                _batch: Span::none(),
                _each: Vec::new(),
            };
        }
        let batch = tracing::info_span!(parent: None, "inference batch", batch_size = n);
        let mut each = Vec::with_capacity(n);
        for job in jobs.iter_mut().map(|j| &mut j.trace) {
            job.queue = Span::none();
            if job.request.is_disabled() {
                continue;
            }
            job.request.follows_from(&batch);
            let inference = tracing::info_span!(parent: &job.request, "inference", batch_size = n);
            inference.follows_from(&batch);
            each.push(inference);
        }
        BatchTrace {
            _batch: batch,
            _each: each,
        }
    }
}
