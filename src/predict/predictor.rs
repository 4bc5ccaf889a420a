//! [`Predictor`]: the unary path, and what unary calls and streams share (snapshots, metrics).

use std::{sync::Arc, time::Instant};

use opentelemetry::KeyValue;

use prometheus::IntGauge;
use tokio::sync::Semaphore;

use super::{
    audit::{Auditor, Entry, Rows},
    call::{Answer, Answered, CallContext, Comparison, KeyOf, Limits, Method, Prediction, Request},
    error::{ErrorKind, PredictError},
};
use crate::{
    access::Access,
    bundle::{Bundle, Scored},
    preprocess::RowView,
    registry::{LivePolicy, Registry},
    rollout::ShadowQueue,
    runner::Runner,
    telemetry::{
        GaugeGuard, Metrics,
        trace::{CallSpan, Tracer},
    },
};

const _: () =
    assert!(Method::ALL.len() <= crate::telemetry::SeriesCache::METHODS, "a bundle caches every method's series");

/// The core. Cloning is shallow: every clone shares the registry, the runner, the limits and the
/// stream slots.
#[derive(Clone)]
pub struct Predictor {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) registry: Registry,
    pub(super) runner: Runner,
    pub(super) metrics: Metrics,
    pub(super) limits: Limits,
    /// `modeld_requests_in_flight` per [`Method`], resolved once.
    pub(super) in_flight: [IntGauge; Method::ALL.len()],
    pub(super) streams: Arc<Semaphore>,
    pub(super) audit: Option<Auditor>,
    pub(super) access: Access,
    pub(super) shadow: Option<ShadowQueue>,
    pub(super) tracer: Option<Tracer>,
}

impl Predictor {
    /// The core over `registry`'s bundles, running models through `runner` within `limits`.
    pub fn new(registry: Registry, runner: Runner, metrics: Metrics, limits: Limits) -> Predictor {
        let in_flight = Method::ALL.map(|m| metrics.in_flight.with_label_values(&[m.name()]));
        let streams = Arc::new(Semaphore::new(limits.max_streams));
        Predictor {
            inner: Arc::new(Inner {
                registry,
                runner,
                metrics,
                limits,
                in_flight,
                streams,
                audit: None,
                access: Access::open(),
                shadow: None,
                tracer: None,
            }),
        }
    }

    /// The core checking callers against `access`. Call before the first clone.
    pub fn with_access(mut self, access: Access) -> Predictor {
        Arc::get_mut(&mut self.inner).expect("access is set up before the core is shared").access = access;
        self
    }

    /// Lets a call in, or refuses it: `authorization` is the caller's `authorization` header
    /// and `identities` its verified client certificate's. Sets the context's caller; a refusal
    /// is counted, logged and recorded like any failed call.
    pub fn authenticate(
        &self,
        ctx: &mut CallContext,
        authorization: Option<&str>,
        identities: &[String],
    ) -> Result<(), PredictError> {
        match self.inner.access.authenticate(authorization, identities) {
            Ok(caller) => {
                ctx.caller = caller;
                Ok(())
            }
            Err(reason) => {
                let e = PredictError::Unauthenticated(reason);
                self.record(ctx, "", "", Some(e.kind()));
                log_rejection(ctx, "", "", &e);
                if let Some(audit) = &self.inner.audit {
                    let entry = Entry {
                        ctx,
                        task: "",
                        request_id: "",
                        stream: None,
                        bundle: None,
                        compare: &[],
                        error: Some(&e),
                        latency: ctx.started.elapsed(),
                    };
                    audit.submit("-", &entry, Rows::<crate::preprocess::OwnedRow>::None);
                }
                Err(e)
            }
        }
    }

    /// Records a call the face refused before the core could score it (its tensors did not fit
    /// the model, say): counted, logged and audited like any failed call. Returns the error for
    /// the face to send.
    pub fn refuse(&self, ctx: &CallContext, task: &str, request_id: &str, e: PredictError) -> PredictError {
        let live = self.inner.registry.get(task).ok();
        self.record(ctx, task, live.as_ref().map_or("", |b| b.version.as_str()), Some(e.kind()));
        log_rejection(ctx, task, request_id, &e);
        if let Some(audit) = &self.inner.audit {
            let entry = Entry {
                ctx,
                task,
                request_id,
                stream: None,
                bundle: live.as_deref(),
                compare: &[],
                error: Some(&e),
                latency: ctx.started.elapsed(),
            };
            let task_label = self.inner.registry.task_name(task).unwrap_or("-");
            audit.submit(task_label, &entry, Rows::<crate::preprocess::OwnedRow>::None);
        }
        e
    }

    /// The caller presenting these credentials, for calls that score nothing (task listings,
    /// version queries): not counted as predictions. None when callers are not checked.
    pub fn caller(
        &self,
        authorization: Option<&str>,
        identities: &[String],
    ) -> Result<Option<Arc<crate::access::Caller>>, PredictError> {
        Ok(self.inner.access.authenticate(authorization, identities)?)
    }

    /// Whether the call's caller may use `task` (always, when callers are not checked).
    pub fn check_task(&self, ctx: &CallContext, task: &str) -> Result<(), PredictError> {
        permit(ctx.caller.as_deref(), task)
    }

    /// [`Predictor::caller`] and [`Predictor::check_task`] at once, for calls that read about
    /// one task without scoring (GetVersion, `GET /v1/tasks/{task}`).
    pub fn check_reader(
        &self,
        authorization: Option<&str>,
        identities: &[String],
        task: &str,
    ) -> Result<(), PredictError> {
        permit(self.caller(authorization, identities)?.as_deref(), task)
    }

    /// The core handing shadow jobs (rollout policies' `shadow` versions) to `queue`. Call
    /// before the first clone; without it shadow versions are not scored.
    pub fn with_shadow(mut self, queue: ShadowQueue) -> Predictor {
        Arc::get_mut(&mut self.inner).expect("shadowing is set up before the core is shared").shadow = Some(queue);
        self
    }

    /// The core exporting a span per call through `tracer`. Call before the first clone.
    pub fn traced(mut self, tracer: Tracer) -> Predictor {
        Arc::get_mut(&mut self.inner).expect("tracing is set up before the core is shared").tracer = Some(tracer);
        self
    }

    /// Starts the call's span, when tracing is on, and notes its trace in `ctx`.
    pub(super) fn start_span(&self, ctx: &CallContext) -> Option<CallSpan> {
        let span = self.inner.tracer.as_ref()?.call(ctx.method.span_name(), ctx.started, ctx.parent.as_ref());
        let _ = ctx.trace_id.set(span.trace_id());
        Some(span)
    }

    /// Ends the call's span with the RPC conventions' attributes and modeld's own.
    pub(super) fn end_span(
        &self,
        span: CallSpan,
        ctx: &CallContext,
        task: &str,
        version: &str,
        rows: usize,
        failure: Option<(ErrorKind, String)>,
    ) {
        let Some(tracer) = &self.inner.tracer else { return };
        if !span.sampled() {
            return;
        }
        let mut attributes = Vec::with_capacity(8);
        match ctx.method.rpc() {
            Some((service, method)) => {
                let code = failure.as_ref().map_or(0, |(kind, _)| kind.code());
                attributes.extend([
                    KeyValue::new("rpc.system", "grpc"),
                    KeyValue::new("rpc.service", service),
                    KeyValue::new("rpc.method", method),
                    KeyValue::new("rpc.grpc.status_code", code),
                ]);
            }
            None => attributes
                .extend([KeyValue::new("http.request.method", "POST"), KeyValue::new("http.route", ctx.method.name())]),
        }
        let task = self.inner.registry.task_name(task).unwrap_or("-");
        attributes.extend([
            KeyValue::new("modeld.task", task.to_owned()),
            KeyValue::new("modeld.version", version.to_owned()),
            KeyValue::new("modeld.rows", rows as i64),
        ]);
        if let Some((kind, _)) = &failure {
            attributes.push(KeyValue::new("error.type", kind.name()));
        }
        let error = failure.filter(|(kind, _)| kind.server_fault()).map(|(_, message)| message.into());
        span.end(tracer, attributes, error);
    }

    /// The core recording every call through `auditor`. Call before the first clone.
    pub fn audited(mut self, auditor: Auditor) -> Predictor {
        Arc::get_mut(&mut self.inner).expect("auditing is set up before the core is shared").audit = Some(auditor);
        self
    }

    /// Scores `request`'s rows with the live (or pinned) version and each compare version, and
    /// records the call's metrics.
    pub async fn predict<R: RowView + Sync>(
        &self,
        ctx: &CallContext,
        request: Request<'_, R>,
    ) -> Result<Answer, PredictError> {
        let _in_flight = GaugeGuard::enter(&self.inner.in_flight[ctx.method as usize]);
        let mut span = self.start_span(ctx);
        // A pinned call ignores the rollout policy: it asked for one version.
        let policy = match request.version {
            None => self.inner.registry.policy(request.task),
            Some(_) => None,
        };
        let result = self.score_request(ctx, &request, policy.as_deref(), span.as_mut()).await;
        match &result {
            Ok(answer) => {
                self.record_answer(ctx, request.task, &answer.bundle, request.rows.len());
                if let Some(span) = span {
                    self.end_span(span, ctx, request.task, &answer.bundle.version, request.rows.len(), None);
                }
            }
            Err(e) => {
                let version = self.inner.registry.get(request.task).map(|b| b.version.clone()).unwrap_or_default();
                self.record(ctx, request.task, &version, Some(e.kind()));
                log_rejection(ctx, request.task, request.request_id, e);
                // The message is formatted for a recorded span only.
                if let Some(span) = span.filter(CallSpan::sampled) {
                    let failure = Some((e.kind(), e.to_string()));
                    self.end_span(span, ctx, request.task, &version, request.rows.len(), failure);
                }
            }
        }
        let mut audited = false;
        if let Some(audit) = &self.inner.audit {
            if result.is_err() || audit.sampled() {
                self.audit_call(audit, ctx, &request, &result);
                audited = true;
            }
        }
        if let (Some(policy), Ok(answer)) = (policy.as_deref(), &result) {
            if !policy.policy.shadow.is_empty() {
                let predictions: Vec<Option<&Prediction>> = answer.predictions.iter().map(Some).collect();
                let answered = Answered {
                    ctx,
                    request_id: request.request_id,
                    stream: None,
                    rows: request.rows,
                    bundle: &answer.bundle,
                    predictions: &predictions,
                    audited,
                };
                self.shadow(request.task, policy, &answered);
            }
        }
        result
    }

    /// The call's audit record: every version's answers, or the error.
    fn audit_call<R: RowView>(
        &self,
        audit: &Auditor,
        ctx: &CallContext,
        request: &Request<'_, R>,
        result: &Result<Answer, PredictError>,
    ) {
        let task_label = self.inner.registry.task_name(request.task).unwrap_or("-");
        let mut entry = Entry {
            ctx,
            task: request.task,
            request_id: request.request_id,
            stream: None,
            bundle: None,
            compare: &[],
            error: None,
            latency: ctx.started.elapsed(),
        };
        match result {
            Ok(answer) => {
                let versions: Vec<(&Bundle, &[Prediction])> =
                    std::iter::once((&*answer.bundle, &answer.predictions[..]))
                        .chain(answer.comparisons.iter().map(|c| (&*c.bundle, &c.predictions[..])))
                        .collect();
                let compare: Vec<&Bundle> = answer.comparisons.iter().map(|c| &*c.bundle).collect();
                entry.bundle = Some(&answer.bundle);
                entry.compare = &compare;
                audit.submit(task_label, &entry, Rows::Unary { rows: request.rows, versions: &versions });
            }
            Err(e) => {
                let live = self.inner.registry.get(request.task).ok();
                entry.bundle = live.as_deref();
                entry.error = Some(e);
                audit.submit(task_label, &entry, Rows::Unary { rows: request.rows, versions: &[] });
            }
        }
    }

    async fn score_request<R: RowView + Sync>(
        &self,
        ctx: &CallContext,
        req: &Request<'_, R>,
        policy: Option<&LivePolicy>,
        mut span: Option<&mut CallSpan>,
    ) -> Result<Answer, PredictError> {
        if req.task.is_empty() {
            return Err(PredictError::MissingTask);
        }
        self.check_task(ctx, req.task)?;
        if req.rows.is_empty() {
            return Err(PredictError::NoRows);
        }
        let limit = self.inner.limits.max_rows;
        if req.rows.len() > limit {
            return Err(PredictError::TooManyRows { rows: req.rows.len(), limit, unit: "request" });
        }
        if let Some(row) = req.rows.iter().position(RowView::has_positional_values) {
            return Err(PredictError::PositionalValues { row });
        }
        // Every snapshot is taken before any scoring: a swap mid-request changes nothing here.
        let bundle = match policy {
            Some(policy) => self.choose(req.task, policy, req.request_id, req.rows, KeyOf::Call)?,
            None => self.snapshot(req.task, req.version)?,
        };
        let others = req
            .compare_versions
            .iter()
            .map(|v| self.inner.registry.get_version(req.task, v))
            .collect::<Result<Vec<_>, _>>()?;
        if ctx.past_deadline() {
            return Err(PredictError::Deadline);
        }

        let mut comparisons = Vec::with_capacity(others.len());
        for other in others {
            let predictions =
                self.score(ctx, req.task, &other, req.rows, req.reason_codes, span.as_deref_mut()).await?;
            comparisons.push(Comparison { bundle: other, predictions });
        }
        let predictions = self.score(ctx, req.task, &bundle, req.rows, req.reason_codes, span).await?;
        Ok(Answer { bundle, predictions, comparisons })
    }

    /// Encodes `rows` (the first bad row fails the call) and runs them through `bundle`.
    async fn score<R: RowView>(
        &self,
        ctx: &CallContext,
        task: &str,
        bundle: &Arc<Bundle>,
        rows: &[R],
        reason_codes: u32,
        span: Option<&mut CallSpan>,
    ) -> Result<Vec<Prediction>, PredictError> {
        // The clock is read for a sampled span only.
        let span = span.filter(|s| s.sampled());
        let started = span.is_some().then(Instant::now);
        let input = bundle.prepare(rows)?;
        let encoded = span.is_some().then(Instant::now);
        let (predictions, slot_at) =
            self.inner.runner.score(bundle, input, ctx.deadline, predictions(reason_codes)).await?;
        if let (Some(span), Some(started), Some(encoded)) = (span, started, encoded) {
            let ran = Instant::now();
            let attributes = || {
                vec![
                    KeyValue::new("modeld.task", task.to_owned()),
                    KeyValue::new("modeld.version", bundle.version.clone()),
                    KeyValue::new("modeld.rows", rows.len() as i64),
                ]
            };
            span.step("preprocess", started, encoded, attributes());
            span.step("wait for model slot", encoded, slot_at, attributes());
            span.step("model run", slot_at, ran, attributes());
        }
        bundle.observe(&predictions);
        Ok(predictions)
    }

    /// The bundle a call uses: the pinned version, or the live one.
    pub(super) fn snapshot(&self, task: &str, version: Option<&str>) -> Result<Arc<Bundle>, PredictError> {
        let registry = &self.inner.registry;
        Ok(match version {
            Some(v) => registry.get_version(task, v)?,
            None => registry.get(task)?,
        })
    }

    /// Counts an answered call: `modeld_requests_total`, `modeld_request_duration_seconds` and
    /// `modeld_rows_total`, through the version's resolved series.
    pub(super) fn record_answer(&self, ctx: &CallContext, task: &str, bundle: &Bundle, rows: usize) {
        let series = bundle.series.get(&self.inner.metrics, ctx.method as usize, || {
            let task = self.inner.registry.task_name(task).unwrap_or("-");
            [task.to_owned(), bundle.version.clone(), ctx.method.name().to_owned()]
        });
        series.ok.inc();
        series.latency.observe(ctx.started.elapsed().as_secs_f64());
        series.rows.inc_by(rows as u64);
        if let Some(caller) = &ctx.caller {
            let task = self.inner.registry.task_name(task).unwrap_or("-");
            self.inner.metrics.caller_requests.with_label_values(&[caller.name.as_str(), task, "OK"]).inc();
        }
    }

    /// Counts a finished call: `modeld_requests_total` and `modeld_request_duration_seconds`.
    pub(super) fn record(&self, ctx: &CallContext, task: &str, version: &str, failure: Option<ErrorKind>) {
        // Task names come from callers: unknown ones share one label value, so typos and
        // probes cannot grow the metric series without bound.
        let task = self.inner.registry.task_name(task).unwrap_or("-");
        let code = failure.map_or("OK", ErrorKind::name);
        let (m, method) = (&self.inner.metrics, ctx.method.name());
        m.requests.with_label_values(&[task, version, method, code]).inc();
        m.latency.with_label_values(&[task, method]).observe(ctx.started.elapsed().as_secs_f64());
        if let Some(caller) = &ctx.caller {
            m.caller_requests.with_label_values(&[caller.name.as_str(), task, code]).inc();
        }
    }
}

/// The one rule: a caller may use the tasks its entry lists; no caller (no callers file) may
/// use every task.
fn permit(caller: Option<&crate::access::Caller>, task: &str) -> Result<(), PredictError> {
    match caller {
        Some(caller) if !caller.may_call(task) => {
            Err(PredictError::PermissionDenied { caller: caller.name.clone(), task: task.to_owned() })
        }
        _ => Ok(()),
    }
}

/// How scored rows become the core's predictions: with up to `reason_codes` reason codes each.
pub(super) fn predictions(reason_codes: u32) -> impl FnMut(usize, Scored<'_>) -> Prediction + Send + 'static {
    let n = reason_codes as usize;
    move |_, scored| Prediction::with_reasons(scored, n)
}

/// Rejections are the caller's business (debug); failures of our own are errors.
pub(super) fn log_rejection(ctx: &CallContext, task: &str, request_id: &str, e: &PredictError) {
    let method = ctx.method.name();
    let caller = ctx.caller.as_ref().map_or("", |c| c.name.as_str());
    let trace_id = ctx.trace_id().map(tracing::field::display);
    if e.kind() == ErrorKind::Internal {
        tracing::error!(method, task, request_id, caller, trace_id, error = %e, "prediction failed");
    } else {
        tracing::debug!(method, task, request_id, caller, trace_id, error = %e, "prediction rejected");
    }
}
