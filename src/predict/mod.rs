//! The prediction core: every face (gRPC today; HTTP/JSON and the Open Inference Protocol
//! later) converts its wire request into a [`Request`] and calls [`Predictor::predict`], or
//! opens a [`StreamSession`] for chunked bulk scoring. Version choice, limits, preprocessing,
//! the model run, errors ([`PredictError`]) and metrics happen here, once.
//!
//! Rows stay in the face's own decoded form: the core reads them through
//! [`RowView`](crate::preprocess::RowView), so a face hands over its wire rows without copying
//! them into a neutral structure first. Results are owned and protocol-neutral: per row the
//! served class index and the probabilities, for the face to put in its own shape.
//!
//! A call takes its bundle snapshot(s) at entry and uses only those to the end; a stream takes
//! one snapshot on its first chunk for its whole life. A swap mid-call changes nothing.

mod error;
mod stream;

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use prometheus::IntGauge;
use tokio::sync::Semaphore;

pub use self::{
    error::{ErrorKind, PredictError},
    stream::{ChunkAnswer, StreamSession},
};
use crate::{
    bundle::{Bundle, Scored},
    preprocess::RowView,
    registry::Registry,
    runner::Runner,
    telemetry::{GaugeGuard, Metrics},
};

/// Request limits enforced before any model work.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most rows in one request or stream chunk.
    pub max_rows: usize,
    /// Most rows per model run of a stream chunk.
    pub max_batch_rows: usize,
    /// Most streams open at once.
    pub max_streams: usize,
}

/// The operation a call performs, as metrics name it (`method` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Predict,
    BatchPredict,
}

impl Method {
    const ALL: [Method; 2] = [Method::Predict, Method::BatchPredict];

    /// The `method` label value: the RPC's name.
    pub const fn name(self) -> &'static str {
        match self {
            Method::Predict => "Predict",
            Method::BatchPredict => "BatchPredict",
        }
    }
}

/// What the core knows about a call besides its rows.
#[derive(Debug, Clone)]
pub struct CallContext {
    pub method: Method,
    /// When the face received the call: latency is measured from here.
    pub started: Instant,
    /// The caller's address, when the transport knows it.
    pub peer: Option<SocketAddr>,
    /// When the caller stops waiting. Work that has not reached the model by then is dropped
    /// with [`PredictError::Deadline`].
    pub deadline: Option<Instant>,
    /// The authenticated caller; None until authentication exists.
    pub caller: Option<String>,
    /// The caller's W3C trace context (`traceparent`); None until tracing exists.
    pub trace_parent: Option<String>,
}

impl CallContext {
    /// A call of `method` received now.
    pub fn new(method: Method) -> CallContext {
        CallContext { method, started: Instant::now(), peer: None, deadline: None, caller: None, trace_parent: None }
    }

    /// Sets the deadline `timeout` after the call was received.
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> CallContext {
        self.deadline = timeout.map(|t| self.started + t);
        self
    }

    pub fn with_peer(mut self, peer: Option<SocketAddr>) -> CallContext {
        self.peer = peer;
        self
    }

    fn past_deadline(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

/// A unary prediction request, borrowed from the face's decoded message.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a, R> {
    pub task: &'a str,
    pub rows: &'a [R],
    /// The caller's id for the request, for logs; may be empty.
    pub request_id: &'a str,
    /// A version pin; None means the live version.
    pub version: Option<&'a str>,
    /// Further loaded versions to score the same rows with.
    pub compare_versions: &'a [String],
}

/// One row's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Index of the served class in the bundle's `class_labels`.
    pub class: usize,
    /// One probability per class, in `class_labels` order.
    pub probabilities: Vec<f32>,
}

/// The same rows scored by another loaded version.
#[derive(Debug)]
pub struct Comparison {
    pub bundle: Arc<Bundle>,
    pub predictions: Vec<Prediction>,
}

/// A successful prediction: the version that answered, one prediction per row in request
/// order, and one comparison per requested compare version, in that order.
#[derive(Debug)]
pub struct Answer {
    pub bundle: Arc<Bundle>,
    pub predictions: Vec<Prediction>,
    pub comparisons: Vec<Comparison>,
}

/// The core. Cloning is shallow: every clone shares the registry, the runner, the limits and the
/// stream slots.
#[derive(Clone)]
pub struct Predictor {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    runner: Runner,
    metrics: Metrics,
    limits: Limits,
    /// `modeld_requests_in_flight` per [`Method`], resolved once.
    in_flight: [IntGauge; Method::ALL.len()],
    streams: Arc<Semaphore>,
}

impl Predictor {
    pub fn new(registry: Registry, runner: Runner, metrics: Metrics, limits: Limits) -> Predictor {
        let in_flight = Method::ALL.map(|m| metrics.in_flight.with_label_values(&[m.name()]));
        let streams = Arc::new(Semaphore::new(limits.max_streams));
        Predictor { inner: Arc::new(Inner { registry, runner, metrics, limits, in_flight, streams }) }
    }

    /// Scores `request`'s rows with the live (or pinned) version and each compare version, and
    /// records the call's metrics.
    pub async fn predict<R: RowView + Sync>(
        &self,
        ctx: &CallContext,
        request: Request<'_, R>,
    ) -> Result<Answer, PredictError> {
        let _in_flight = GaugeGuard::enter(&self.inner.in_flight[ctx.method as usize]);
        let result = self.score_request(ctx, &request).await;
        match &result {
            Ok(answer) => {
                self.record(ctx, request.task, &answer.bundle.version, None);
                let m = &self.inner.metrics;
                m.rows.with_label_values(&[request.task, &answer.bundle.version]).inc_by(request.rows.len() as u64);
            }
            Err(e) => {
                let version = self.inner.registry.get(request.task).map(|b| b.version.clone()).unwrap_or_default();
                self.record(ctx, request.task, &version, Some(e.kind()));
                log_rejection(ctx, request.task, request.request_id, e);
            }
        }
        result
    }

    async fn score_request<R: RowView + Sync>(
        &self,
        ctx: &CallContext,
        req: &Request<'_, R>,
    ) -> Result<Answer, PredictError> {
        if req.task.is_empty() {
            return Err(PredictError::MissingTask);
        }
        if req.rows.is_empty() {
            return Err(PredictError::NoRows);
        }
        let limit = self.inner.limits.max_rows;
        if req.rows.len() > limit {
            return Err(PredictError::TooManyRows { rows: req.rows.len(), limit, unit: "request" });
        }
        // Every snapshot is taken before any scoring: a swap mid-request changes nothing here.
        let bundle = self.snapshot(req.task, req.version)?;
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
            let predictions = self.score(ctx, &other, req.rows).await?;
            comparisons.push(Comparison { bundle: other, predictions });
        }
        let predictions = self.score(ctx, &bundle, req.rows).await?;
        Ok(Answer { bundle, predictions, comparisons })
    }

    /// Encodes `rows` (the first bad row fails the call) and runs them through `bundle`.
    async fn score<R: RowView>(
        &self,
        ctx: &CallContext,
        bundle: &Arc<Bundle>,
        rows: &[R],
    ) -> Result<Vec<Prediction>, PredictError> {
        let input = bundle.prepare(rows)?;
        Ok(self.inner.runner.score(bundle, input, ctx.deadline, prediction).await?)
    }

    /// The bundle a call uses: the pinned version, or the live one.
    fn snapshot(&self, task: &str, version: Option<&str>) -> Result<Arc<Bundle>, PredictError> {
        let registry = &self.inner.registry;
        Ok(match version {
            Some(v) => registry.get_version(task, v)?,
            None => registry.get(task)?,
        })
    }

    /// Counts a finished call: `modeld_requests_total` and `modeld_request_duration_seconds`.
    fn record(&self, ctx: &CallContext, task: &str, version: &str, failure: Option<ErrorKind>) {
        // Task names come from callers: unknown ones share one label value, so typos and
        // probes cannot grow the metric series without bound.
        let task = self.inner.registry.task_name(task).unwrap_or("-");
        let code = failure.map_or("OK", ErrorKind::name);
        let (m, method) = (&self.inner.metrics, ctx.method.name());
        m.requests.with_label_values(&[task, version, method, code]).inc();
        m.latency.with_label_values(&[task, method]).observe(ctx.started.elapsed().as_secs_f64());
    }
}

/// A scored row as the core returns it.
fn prediction(_: usize, scored: Scored<'_>) -> Prediction {
    Prediction { class: scored.class, probabilities: scored.probabilities.to_vec() }
}

/// Rejections are the caller's business (debug); failures of our own are errors.
fn log_rejection(ctx: &CallContext, task: &str, request_id: &str, e: &PredictError) {
    let method = ctx.method.name();
    if e.kind() == ErrorKind::Internal {
        tracing::error!(method, task, request_id, error = %e, "prediction failed");
    } else {
        tracing::debug!(method, task, request_id, error = %e, "prediction rejected");
    }
}
