//! OpenTelemetry traces: a server span per call that continues the caller's W3C trace context,
//! with child spans for preprocessing, the wait for a model slot and the model run.
//!
//! Spans are built after the fact from instants the core records anyway (the call's start, when
//! its rows were encoded, when it got a slot, when the run ended), so a call pays for tracing
//! only when it is sampled: an unsampled call allocates nothing and records no step. Finished
//! spans go to a bounded queue that a batch exporter drains on the runtime; when the queue is
//! full (a collector that is down or slow) spans are dropped, never waited for.

use std::{
    borrow::Cow,
    time::{Duration, Instant, SystemTime},
};

use opentelemetry::{
    Context, KeyValue,
    trace::{
        Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
        Tracer as _, TracerProvider as _,
    },
};
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::{
    Resource, runtime,
    trace::{
        BatchConfigBuilder, Sampler, SdkTracer, SdkTracerProvider,
        span_processor_with_async_runtime::BatchSpanProcessor,
    },
};

use crate::config::{RootSampler, TraceConfig, TraceSampler};

/// Spans waiting for export; past it new spans are dropped.
const QUEUE: usize = 4096;

/// Why trace export could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("OTLP trace exporter: {0}")]
    Exporter(String),
    #[error("OTLP header `{0}` is not a valid gRPC metadata entry")]
    Header(String),
}

/// The caller's trace context, read from a `traceparent` header or metadata entry; None when
/// the value is absent or not a valid W3C trace context (`version-traceid-parentid-flags`, lower
/// case hex of exactly 2, 32, 16 and 2 digits, ids not all zero). `tracestate` is not carried.
pub fn parent_from(traceparent: Option<&str>) -> Option<SpanContext> {
    let mut parts = traceparent?.trim().split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    // Version 00 has exactly four parts; a later version may append more, which are ignored.
    let more = parts.next().is_some();
    if !(hex(version, 2) && hex(trace, 32) && hex(span, 16) && hex(flags, 2)) || version == "ff" {
        return None;
    }
    if version == "00" && more {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let context = SpanContext::new(
        TraceId::from_hex(trace).ok()?,
        SpanId::from_hex(span).ok()?,
        TraceFlags::new(flags & TraceFlags::SAMPLED.to_u8()),
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

/// The process's tracer: cheap to clone. Export stops (flushing what it can) on
/// [`Tracer::shutdown`].
#[derive(Clone, Debug)]
pub struct Tracer {
    tracer: SdkTracer,
    provider: SdkTracerProvider,
}

fn sampler(s: TraceSampler) -> Sampler {
    let root = |r: RootSampler| match r {
        RootSampler::AlwaysOn => Sampler::AlwaysOn,
        RootSampler::AlwaysOff => Sampler::AlwaysOff,
        RootSampler::Ratio(r) => Sampler::TraceIdRatioBased(r),
    };
    match s {
        TraceSampler::AlwaysOn => Sampler::AlwaysOn,
        TraceSampler::AlwaysOff => Sampler::AlwaysOff,
        TraceSampler::Ratio(r) => Sampler::TraceIdRatioBased(r),
        TraceSampler::ParentBased(r) => Sampler::ParentBased(Box::new(root(r))),
    }
}

impl Tracer {
    /// Sets up OTLP/gRPC export per `config`. Must run inside the Tokio runtime that will carry
    /// the exports. The connection is made lazily: a collector that is down costs nothing here.
    pub fn start(config: &TraceConfig) -> Result<Tracer, TraceError> {
        let mut metadata = tonic::metadata::MetadataMap::new();
        for (k, v) in &config.headers {
            let key = tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
                .map_err(|_| TraceError::Header(k.clone()))?;
            let value = v.parse().map_err(|_| TraceError::Header(k.clone()))?;
            metadata.insert(key, value);
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(config.endpoint.clone())
            .with_timeout(config.timeout)
            .with_metadata(metadata)
            .build()
            .map_err(|e| TraceError::Exporter(e.to_string()))?;
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(QUEUE)
            .with_scheduled_delay(Duration::from_millis(500))
            .build();
        let processor = BatchSpanProcessor::builder(exporter, runtime::Tokio).with_batch_config(batch).build();
        let resource = Resource::builder()
            .with_service_name(config.service_name.clone())
            .with_attributes(config.resource.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())))
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(sampler(config.sampler))
            .with_resource(resource)
            .build();
        Ok(Tracer { tracer: provider.tracer("modeld"), provider })
    }

    /// Starts a call's server span at `started`, under `parent` when the caller sent one. An
    /// unsampled span still names its trace, for logs and audit records.
    pub fn call(&self, name: &'static str, started: Instant, parent: Option<&SpanContext>) -> CallSpan {
        let cx = match parent {
            Some(p) => Context::new().with_remote_span_context(p.clone()),
            None => Context::new(),
        };
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_start_time(wall(started))
            .start_with_context(&self.tracer, &cx);
        CallSpan { trace_id: span.span_context().trace_id(), sampled: span.is_recording(), span, steps: Vec::new() }
    }

    /// Flushes what is queued (up to `timeout`) and stops exporting.
    pub fn shutdown(&self, timeout: Duration) {
        if let Err(error) = self.provider.shutdown_with_timeout(timeout) {
            tracing::warn!(%error, "trace export did not flush on shutdown");
        }
    }
}

/// The wall-clock time of `at`.
fn wall(at: Instant) -> SystemTime {
    SystemTime::now() - at.elapsed()
}

/// A step of a call, recorded as a child span when the call ends.
struct Step {
    name: &'static str,
    start: Instant,
    end: Instant,
    attributes: Vec<KeyValue>,
}

/// A call's server span and the steps recorded under it.
pub struct CallSpan {
    span: opentelemetry_sdk::trace::Span,
    trace_id: TraceId,
    sampled: bool,
    steps: Vec<Step>,
}

impl std::fmt::Debug for CallSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallSpan").field("trace_id", &self.trace_id).field("sampled", &self.sampled).finish()
    }
}

impl CallSpan {
    /// The trace this call belongs to (the caller's, or a new one).
    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    /// Whether the span is recorded and exported: steps and attributes of an unsampled call
    /// are not worth building.
    pub fn sampled(&self) -> bool {
        self.sampled
    }

    /// Records a step from `start` to `end`, with its attributes.
    pub fn step(&mut self, name: &'static str, start: Instant, end: Instant, attributes: Vec<KeyValue>) {
        if self.sampled {
            self.steps.push(Step { name, start, end, attributes });
        }
    }

    /// Ends the call now, with its attributes and, for a failure, its status message; the
    /// steps become child spans.
    pub fn end(mut self, tracer: &Tracer, attributes: Vec<KeyValue>, error: Option<Cow<'static, str>>) {
        if !self.sampled {
            return;
        }
        let now = Instant::now();
        self.span.set_attributes(attributes);
        if let Some(message) = error {
            self.span.set_status(Status::error(message));
        }
        let cx = Context::new().with_remote_span_context(self.span.span_context().clone());
        for step in self.steps.drain(..) {
            let mut child = tracer
                .tracer
                .span_builder(step.name)
                .with_kind(SpanKind::Internal)
                .with_start_time(wall(step.start))
                .with_attributes(step.attributes)
                .start_with_context(&tracer.tracer, &cx);
            child.end_with_timestamp(wall(step.end));
        }
        self.span.end_with_timestamp(wall(now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_valid_trace_contexts_are_continued() {
        let p = parent_from(Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")).unwrap();
        assert_eq!(format!("{}", p.trace_id()), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(p.is_sampled() && p.is_remote());
        for bad in ["", "garbage", "00-00000000000000000000000000000000-00f067aa0ba902b7-01", "00-4bf92f35-00f067aa-01"]
        {
            assert!(parent_from(Some(bad)).is_none(), "{bad}");
        }
        assert!(parent_from(None).is_none());
    }
}
