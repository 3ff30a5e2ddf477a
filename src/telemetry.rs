//! Logs and traces. Logs go to stderr, as text for a terminal or one JSON
//! object per line for a log pipeline (`--log-format json`). Traces are
//! OpenTelemetry spans, exported over OTLP/gRPC when `--otlp-endpoint` is
//! set: a span per request, a child of the caller's when the call carries a
//! W3C `traceparent`, with children for admission and queue wait,
//! preprocessing and inference, and one span per batch that every request in
//! it links to (the core makes those with plain `tracing`; this module turns
//! them into OpenTelemetry spans).
//!
//! Export never blocks a request: spans go to a bounded queue that a
//! background thread exports in batches. When the queue is full (the
//! collector is slow or down) a span is dropped and counted in
//! `mnister_trace_spans_dropped_total{reason="queue_full"}`; a batch the
//! collector refuses is counted with `reason="export_failed"`.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::counter;
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, Span, SpanData,
    SpanExporter, SpanProcessor,
};
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Spans dropped before reaching the collector, by reason.
pub const SPANS_DROPPED: &str = "mnister_trace_spans_dropped_total";
/// Spans the collector accepted.
pub const SPANS_EXPORTED: &str = "mnister_trace_spans_exported_total";

/// Spans waiting for export at most; past it they are dropped.
const MAX_QUEUE: usize = 4096;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (the default for a terminal).
    Text,
    /// One JSON object per line: timestamp, level, target, message, fields,
    /// and trace_id / span_id inside a traced request.
    Json,
}

/// What `init` set up, for `start_export` and shutdown.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    late: Option<Arc<OnceLock<Bounded>>>,
}

/// Installs the global subscriber: the log format, and OpenTelemetry
/// spans when anything needs them (JSON logs carry trace ids; an OTLP
/// endpoint exports them). The exporter itself starts later
/// (`start_export`), inside the runtime, once the model is known.
pub fn init(format: LogFormat, traces: Option<f64>) -> Telemetry {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,ort=warn".into());
    // Spans get OpenTelemetry ids (the caller's trace, when it sent one)
    // when traces are exported or logs are JSON; until an exporter is
    // installed they go nowhere.
    let ratio = match (traces, format) {
        (Some(r), _) => Some(r),
        (None, LogFormat::Json) => Some(1.0),
        (None, LogFormat::Text) => None,
    };
    let late = ratio.map(|_| Arc::new(OnceLock::new()));
    let provider = ratio.map(|r| {
        SdkTracerProvider::builder()
            .with_span_processor(Late(late.clone().expect("set with the ratio")))
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                r,
            ))))
            .build()
    });
    // Spans of our own crates only: ONNX Runtime's and hyper's are noise.
    let ours = tracing_subscriber::filter::Targets::new()
        .with_target("mnister", tracing::Level::INFO)
        .with_target("mnister_core", tracing::Level::INFO);
    let otel = provider.as_ref().map(|p| {
        // No per-span source location, thread or busy/idle attributes: the
        // span's name says where it is, and those seven attributes were
        // most of each exported span's bytes and allocations (issue 17's
        // overhead bar).
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("mnister"))
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_filter(ours)
    });
    match otel {
        Some(otel) => tracing_subscriber::registry()
            .with(otel)
            .with((format == LogFormat::Json).then_some(TraceIdsLayer))
            .with(fmt_layer(format).with_filter(filter()))
            .init(),
        // Nothing consumes spans in plain text logs without export: a global
        // filter disables them, so every `info_span!` on the request path is
        // a no-op and the core skips its spans (`mnister_core::trace`).
        None => tracing_subscriber::registry()
            .with(tracing_subscriber::filter::filter_fn(|meta| {
                !meta.is_span()
            }))
            .with(fmt_layer(format).with_filter(filter()))
            .init(),
    }
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    Telemetry { provider, late }
}

/// The log lines' layer, text or JSON, on stderr.
fn fmt_layer<S>(format: LogFormat) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Text => layer
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
        LogFormat::Json => layer.with_ansi(false).event_format(JsonLines).boxed(),
    }
}

/// Where and how to export.
#[derive(Debug, Clone)]
pub struct ExportConfig {
    pub endpoint: String,
    pub service_name: String,
    /// Resource attributes: the model at start-up.
    pub model_version: String,
    pub precision: String,
}

impl Telemetry {
    /// Starts exporting spans over OTLP/gRPC. Must run inside the tokio
    /// runtime (the exporter's channel lives on it), and after `init` was
    /// given a sampling ratio.
    pub fn start_export(&self, cfg: &ExportConfig) -> anyhow::Result<()> {
        use opentelemetry_otlp::WithExportConfig;
        let late = self
            .late
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("traces were not enabled at start-up"))?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(cfg.endpoint.clone())
            .with_timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| anyhow::anyhow!("the OTLP exporter for {}: {e}", cfg.endpoint))?;
        let queued = Arc::new(AtomicUsize::new(0));
        let mut batch = BatchSpanProcessor::builder(CountingExporter {
            inner: exporter,
            queued: queued.clone(),
        })
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(MAX_QUEUE)
                .with_max_export_batch_size(512)
                .with_scheduled_delay(Duration::from_millis(500))
                .build(),
        )
        .build();
        batch.set_resource(
            &Resource::builder()
                .with_service_name(cfg.service_name.clone())
                .with_attributes([
                    KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
                    KeyValue::new("mnister.model.version", cfg.model_version.clone()),
                    KeyValue::new("mnister.model.precision", cfg.precision.clone()),
                ])
                .build(),
        );
        late.set(Bounded {
            inner: batch,
            queued,
        })
        .map_err(|_| anyhow::anyhow!("the trace exporter is already running"))
    }

    /// Exports what is queued, within `timeout`, and stops exporting.
    pub fn shutdown(&self, timeout: Duration) {
        if let Some(p) = &self.provider {
            let _ = p.shutdown_with_timeout(timeout);
        }
    }
}

/// The span processor of the provider made at start-up: nothing until the
/// exporter is installed, then the bounded batch processor.
#[derive(Debug)]
struct Late(Arc<OnceLock<Bounded>>);

impl SpanProcessor for Late {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        if let Some(p) = self.0.get() {
            p.on_start(span, cx);
        }
    }

    fn on_end(&self, span: SpanData) {
        if let Some(p) = self.0.get() {
            p.on_end(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.get().map_or(Ok(()), |p| p.force_flush())
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0
            .get()
            .map_or(Ok(()), |p| p.shutdown_with_timeout(timeout))
    }
}

/// Keeps the batch processor's queue bounded where we can count: a span
/// that would overflow it is dropped here, and counted.
#[derive(Debug)]
struct Bounded {
    inner: BatchSpanProcessor,
    queued: Arc<AtomicUsize>,
}

impl SpanProcessor for Bounded {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        // The exporter subtracts what it takes; at MAX_QUEUE the batch
        // processor would drop the span itself, uncounted.
        if self.queued.fetch_add(1, Ordering::AcqRel) >= MAX_QUEUE {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            counter!(SPANS_DROPPED, "reason" => "queue_full").increment(1);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, counting what it sent and what the collector did not
/// take.
#[derive(Debug)]
struct CountingExporter<E> {
    inner: E,
    queued: Arc<AtomicUsize>,
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        self.queued
            .fetch_sub(n.min(self.queued.load(Ordering::Acquire)), Ordering::AcqRel);
        let r = self.inner.export(batch).await;
        match &r {
            Ok(()) => counter!(SPANS_EXPORTED).increment(n as u64),
            Err(_) => counter!(SPANS_DROPPED, "reason" => "export_failed").increment(n as u64),
        }
        r
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The caller's trace context from W3C `traceparent` / `tracestate`, made
/// the parent of `span`; and the span's own ids recorded on it, so every log
/// line inside the request carries them.
pub fn adopt(span: &tracing::Span, carrier: &dyn Extractor) {
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(carrier));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        span.record("trace_id", tracing::field::display(sc.trace_id()));
        span.record("span_id", tracing::field::display(sc.span_id()));
    }
}

/// HTTP headers as OpenTelemetry's propagators read them.
pub struct Headers<'a>(pub &'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// A request span's trace and span ids, kept where the JSON formatter finds
/// them.
struct TraceIds {
    trace_id: Option<String>,
    span_id: Option<String>,
}

/// Keeps the `trace_id` / `span_id` fields of spans as an extension.
struct TraceIdsLayer;

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for TraceIdsLayer {
    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut v = IdsVisitor::default();
        values.record(&mut v);
        if v.trace_id.is_none() && v.span_id.is_none() {
            return;
        }
        if let Some(span) = ctx.span(id) {
            let mut ext = span.extensions_mut();
            match ext.get_mut::<TraceIds>() {
                Some(ids) => {
                    ids.trace_id = v.trace_id.or(ids.trace_id.take());
                    ids.span_id = v.span_id.or(ids.span_id.take());
                }
                None => ext.insert(TraceIds {
                    trace_id: v.trace_id,
                    span_id: v.span_id,
                }),
            }
        }
    }
}

#[derive(Default)]
struct IdsVisitor {
    trace_id: Option<String>,
    span_id: Option<String>,
}

impl tracing::field::Visit for IdsVisitor {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        match field.name() {
            "trace_id" => self.trace_id = Some(format!("{value:?}")),
            "span_id" => self.span_id = Some(format!("{value:?}")),
            _ => {}
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.record_debug(field, &format_args!("{value}"));
    }
}

/// One JSON object per line.
struct JsonLines;

/// An event's fields as JSON.
#[derive(Default)]
struct JsonVisitor(serde_json::Map<String, serde_json::Value>);

impl tracing::field::Visit for JsonVisitor {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        use tracing_subscriber::fmt::time::FormatTime;
        let mut ts = String::new();
        tracing_subscriber::fmt::time::SystemTime.format_time(&mut Writer::new(&mut ts))?;
        let meta = event.metadata();
        let mut fields = JsonVisitor::default();
        event.record(&mut fields);
        let message = fields.0.remove("message").unwrap_or_default();
        let mut line = serde_json::Map::new();
        line.insert("timestamp".into(), ts.into());
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("target".into(), meta.target().into());
        line.insert("message".into(), message);
        line.insert("fields".into(), serde_json::Value::Object(fields.0));
        if let Some(scope) = ctx.event_scope() {
            let mut names = Vec::new();
            for span in scope.from_root() {
                names.push(serde_json::Value::from(span.name()));
                if let Some(ids) = span.extensions().get::<TraceIds>() {
                    if let Some(t) = &ids.trace_id {
                        line.insert("trace_id".into(), t.clone().into());
                    }
                    if let Some(s) = &ids.span_id {
                        line.insert("span_id".into(), s.clone().into());
                    }
                }
                // The span's own fields, as the text format shows them.
                if let Some(f) = span.extensions().get::<FormattedFields<N>>()
                    && !f.is_empty()
                {
                    line.insert(format!("span.{}", span.name()), f.to_string().into());
                }
            }
            line.insert("spans".into(), names.into());
        }
        writeln!(writer, "{}", serde_json::Value::Object(line))
    }
}
