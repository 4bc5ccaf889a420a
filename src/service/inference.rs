//! The `modeld.v1.Inference` gRPC service: wire types in, domain calls, wire types out.
//!
//! Each call takes one bundle snapshot from the registry at entry and uses only that snapshot,
//! so every prediction of a response (or of a whole stream) comes from the version it names.

use std::{pin::Pin, sync::Arc, time::Instant};

use prometheus::IntGauge;
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tonic::{Code, Request, Response, Status, Streaming};

use super::{
    health::Readiness,
    pb::{self, value::Kind},
    status::ServeError,
};
use crate::{
    bundle::{Bundle, Scored},
    preprocess::{self, RowView},
    registry::Registry,
    runner::Runner,
    schema::Value,
    telemetry::{GaugeGuard, Metrics},
};

/// Request limits the service enforces before any model work.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most rows in one request or stream chunk.
    pub max_rows: usize,
    /// Most rows per model run of a stream chunk.
    pub max_batch_rows: usize,
    /// Most streams open at once.
    pub max_streams: usize,
}

/// Handler state. Cloning is shallow.
#[derive(Clone)]
pub struct InferenceService {
    registry: Registry,
    runner: Runner,
    readiness: Readiness,
    metrics: Metrics,
    limits: Limits,
    in_flight: [IntGauge; 2],
    streams: Arc<tokio::sync::Semaphore>,
    /// Where streams do their work (decode, preprocess, model, encode).
    bulk: tokio::runtime::Handle,
}

const PREDICT: &str = "Predict";
const BATCH_PREDICT: &str = "BatchPredict";
/// Chunks answered but not yet taken by the transport, per stream. With the one chunk being
/// worked on, a stream holds at most `STREAM_BUFFER + 1` chunks: a slow reader stalls its own
/// stream here, the server stops reading its chunks, and HTTP/2 flow control stalls its writer.
pub const STREAM_BUFFER: usize = 2;

impl InferenceService {
    pub fn new(registry: Registry, runner: Runner, readiness: Readiness, metrics: Metrics, limits: Limits) -> Self {
        let in_flight = [PREDICT, BATCH_PREDICT].map(|m| metrics.in_flight.with_label_values(&[m]));
        let streams = Arc::new(tokio::sync::Semaphore::new(limits.max_streams));
        let bulk = tokio::runtime::Handle::current();
        InferenceService { registry, runner, readiness, metrics, limits, in_flight, streams, bulk }
    }

    /// Runs streams on `bulk` instead of the runtime that serves unary calls. Tokio does not
    /// preempt: a worker decoding and scoring a 1,000-row chunk delays every unary call queued
    /// behind it, while separate threads let the OS share the CPU between the two.
    pub fn with_bulk_runtime(mut self, bulk: tokio::runtime::Handle) -> Self {
        self.bulk = bulk;
        self
    }

    fn check_rows(&self, rows: &[pb::Row]) -> Result<(), ServeError> {
        if rows.len() > self.limits.max_rows {
            return Err(ServeError::invalid(
                "rows",
                format!("{} rows exceed the limit of {} per request", rows.len(), self.limits.max_rows),
            ));
        }
        Ok(())
    }

    async fn predict_inner(&self, req: &mut pb::PredictRequest) -> Result<Answer, ServeError> {
        if req.task.is_empty() {
            return Err(ServeError::invalid("task", "must name a task"));
        }
        if req.rows.is_empty() {
            return Err(ServeError::invalid("rows", "at least one row is required"));
        }
        self.check_rows(&req.rows)?;
        // Every snapshot is taken before any scoring: a swap mid-request changes nothing here.
        let bundle = self.bundle(&req.task, &req.version)?;
        let others = req
            .compare_versions
            .iter()
            .map(|v| self.registry.get_version(&req.task, v))
            .collect::<Result<Vec<_>, _>>()?;

        let mut comparisons = Vec::with_capacity(others.len());
        for other in &others {
            let input = other.prepare(&req.rows)?;
            let mut predictions = self.runner.score(other, input, to_prediction).await?;
            for (prediction, row) in predictions.iter_mut().zip(&req.rows) {
                prediction.row_id.clone_from(&row.row_id);
            }
            comparisons.push(pb::Comparison { version: other.version.clone(), predictions });
        }
        let input = bundle.prepare(&req.rows)?;
        let mut predictions = self.runner.score(&bundle, input, to_prediction).await?;
        for (prediction, row) in predictions.iter_mut().zip(req.rows.iter_mut()) {
            prediction.row_id = std::mem::take(&mut row.row_id);
        }
        Ok(Answer { bundle, predictions, comparisons })
    }

    fn bundle(&self, task: &str, version: &str) -> Result<Arc<Bundle>, ServeError> {
        Ok(if version.is_empty() { self.registry.get(task)? } else { self.registry.get_version(task, version)? })
    }

    fn record(&self, task: &str, version: &str, method: &str, code: Code, started: Instant) {
        // Task names come from callers: unknown ones share one label value, so typos and
        // probes cannot grow the metric series without bound.
        let task = if self.registry.tasks().any(|t| t == task) { task } else { "-" };
        let m = &self.metrics;
        m.requests.with_label_values(&[task, version, method, code_name(code)]).inc();
        m.latency.with_label_values(&[task, method]).observe(started.elapsed().as_secs_f64());
    }
}

/// A Predict call's result: the version that answered, its predictions, and comparisons.
struct Answer {
    bundle: Arc<Bundle>,
    predictions: Vec<pb::Prediction>,
    comparisons: Vec<pb::Comparison>,
}

fn to_prediction(_: usize, scored: Scored<'_>) -> pb::Prediction {
    pb::Prediction {
        row_id: String::new(),
        label: scored.label.to_owned(),
        probabilities: scored.probabilities.to_vec(),
    }
}

#[tonic::async_trait]
impl pb::inference_server::Inference for InferenceService {
    async fn predict(&self, request: Request<pb::PredictRequest>) -> Result<Response<pb::PredictResponse>, Status> {
        let started = Instant::now();
        let _in_flight = GaugeGuard::enter(&self.in_flight[0]);
        let mut req = request.into_inner();
        match self.predict_inner(&mut req).await {
            Ok(Answer { bundle, predictions, comparisons }) => {
                self.record(&req.task, &bundle.version, PREDICT, Code::Ok, started);
                self.metrics.rows.with_label_values(&[&req.task, &bundle.version]).inc_by(predictions.len() as u64);
                Ok(Response::new(pb::PredictResponse {
                    task: req.task,
                    version: bundle.version.clone(),
                    request_id: req.request_id,
                    class_names: bundle.class_labels().to_vec(),
                    predictions,
                    comparisons,
                }))
            }
            Err(e) => {
                let version = self.registry.get(&req.task).map(|b| b.version.clone()).unwrap_or_default();
                self.record(&req.task, &version, PREDICT, e.code(), started);
                tracing::debug!(task = %req.task, request_id = %req.request_id, error = %e, "predict rejected");
                Err(e.into())
            }
        }
    }

    type BatchPredictStream = Pin<Box<dyn Stream<Item = Result<pb::BatchPredictResponse, Status>> + Send + 'static>>;

    async fn batch_predict(
        &self,
        request: Request<Streaming<pb::BatchPredictRequest>>,
    ) -> Result<Response<Self::BatchPredictStream>, Status> {
        let permit = self.streams.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "too many open streams (limit {}), retry later",
                self.limits.max_streams
            ))
        })?;
        let mut inbound = request.into_inner();
        let (out_tx, out_rx) = mpsc::channel::<(GaugeGuard, Result<pb::BatchPredictResponse, Status>)>(STREAM_BUFFER);
        let service = self.clone();
        self.bulk.spawn(async move {
            let _open =
                (permit, GaugeGuard::enter(&service.in_flight[1]), GaugeGuard::enter(&service.metrics.streams_open));
            let started = Instant::now();
            let (task, version, code) = service.run_stream(&mut inbound, &out_tx).await;
            service.record(&task, &version, BATCH_PREDICT, code, started);
            if service.registry.tasks().any(|t| t == task) {
                service.metrics.stream_seconds.with_label_values(&[&task]).observe(started.elapsed().as_secs_f64());
            }
        });
        // Each response carries its chunk's in-flight mark until the transport takes it.
        let outbound = ReceiverStream::new(out_rx).map(|(_in_flight, response)| response);
        Ok(Response::new(Box::pin(outbound)))
    }

    async fn get_version(
        &self,
        request: Request<pb::GetVersionRequest>,
    ) -> Result<Response<pb::GetVersionResponse>, Status> {
        let task = request.into_inner().task;
        if task.is_empty() {
            return Err(ServeError::invalid("task", "must name a task").into());
        }
        let bundle = self.registry.get(&task).map_err(ServeError::from)?;
        let report = self.registry.report(&task);
        Ok(Response::new(pb::GetVersionResponse {
            last_reload_error: report
                .as_ref()
                .and_then(|r| r.last_error.as_ref())
                .map(|e| e.to_string())
                .unwrap_or_default(),
            loaded_versions: report.map(|r| r.loaded_versions()).unwrap_or_default(),
            task,
            version: bundle.version.clone(),
            bundle_path: bundle.path.display().to_string(),
            manifest_sha256: bundle.manifest_sha256.clone(),
            loaded_at: Some(bundle.loaded_at.into()),
            model_type: bundle.config.model_type.clone(),
            class_names: bundle.class_labels().to_vec(),
            evaluation: bundle.evaluation.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            evaluation_json: bundle.evaluation_json.clone(),
        }))
    }

    async fn health(&self, _: Request<pb::HealthRequest>) -> Result<Response<pb::HealthResponse>, Status> {
        let draining = self.readiness.is_draining();
        let tasks = self
            .registry
            .reports()
            .into_iter()
            .map(|r| pb::TaskHealth {
                loaded_versions: r.loaded_versions(),
                serving: r.live.is_some() && !draining,
                version: r.live.map(|b| b.version.clone()).unwrap_or_default(),
                last_error: r.last_error.map(|e| e.to_string()).unwrap_or_default(),
                task: r.task,
            })
            .collect();
        Ok(Response::new(pb::HealthResponse { serving: self.readiness.is_ready(), tasks }))
    }
}

impl InferenceService {
    /// Answers chunks in order until the client closes its side, the client goes away, or
    /// shutdown begins. Returns what to record.
    async fn run_stream(
        &self,
        inbound: &mut Streaming<pb::BatchPredictRequest>,
        out_tx: &mpsc::Sender<(GaugeGuard, Result<pb::BatchPredictResponse, Status>)>,
    ) -> (String, String, Code) {
        let mut stream = StreamState::default();
        let mut chunk_index = 0u64;
        loop {
            let next = tokio::select! {
                // Shutdown: the chunk in hand was answered; stop taking new ones.
                _ = self.readiness.drained() => {
                    let status = Status::unavailable("server shutting down: send the remaining chunks again elsewhere");
                    let _ = out_tx.send((GaugeGuard::enter(&self.metrics.stream_chunks_in_flight), Err(status))).await;
                    return (stream.task, version_of(&stream.bundle), Code::Unavailable);
                }
                // The client stopping its reads also ends up here: no read until the answer is queued.
                next = inbound.message() => next,
                // The client went away: stop working for it.
                _ = out_tx.closed() => return (stream.task, version_of(&stream.bundle), Code::Cancelled),
            };
            let chunk = match next {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(status) => return (stream.task, version_of(&stream.bundle), status.code()),
            };
            let in_flight = GaugeGuard::enter(&self.metrics.stream_chunks_in_flight);
            let result = self.answer_chunk(&mut stream, chunk, chunk_index).await;
            let failed = result.as_ref().err().map(ServeError::code);
            let sent = out_tx.send((in_flight, result.map_err(Status::from))).await;
            if let Some(code) = failed {
                return (stream.task, version_of(&stream.bundle), code);
            }
            if sent.is_err() {
                return (stream.task, version_of(&stream.bundle), Code::Cancelled);
            }
            chunk_index += 1;
        }
        (stream.task, version_of(&stream.bundle), Code::Ok)
    }

    async fn answer_chunk(
        &self,
        stream: &mut StreamState,
        chunk: pb::BatchPredictRequest,
        chunk_index: u64,
    ) -> Result<pb::BatchPredictResponse, ServeError> {
        let bundle = match &stream.bundle {
            Some(b) => {
                if !chunk.task.is_empty() && chunk.task != stream.task {
                    return Err(ServeError::invalid(
                        "task",
                        format!("`{}` differs from the stream's task `{}`", chunk.task, stream.task),
                    ));
                }
                b.clone()
            }
            None => {
                if chunk.task.is_empty() {
                    return Err(ServeError::invalid("task", "the first chunk must name a task"));
                }
                // One snapshot for the whole stream: a flip mid-stream does not change its version.
                let b = self.bundle(&chunk.task, &chunk.version)?;
                stream.task.clone_from(&chunk.task);
                stream.bundle = Some(b.clone());
                b
            }
        };
        if !chunk.columns.is_empty() {
            stream.columns = chunk.columns;
        }
        if let Some((i, row)) =
            chunk.rows.iter().enumerate().find(|(_, r)| !r.values.is_empty() && r.values.len() != stream.columns.len())
        {
            return Err(ServeError::invalid(
                "values",
                format!("row {i} has {} values for {} columns", row.values.len(), stream.columns.len()),
            ));
        }
        if chunk.rows.len() > self.limits.max_rows {
            return Err(ServeError::TooLarge(format!(
                "rows: {} rows exceed the limit of {} per chunk",
                chunk.rows.len(),
                self.limits.max_rows
            )));
        }
        let mut results = Vec::with_capacity(chunk.rows.len());
        let mut errors = 0u64;
        let mut rows = chunk.rows;
        let mut offset = 0;
        while !rows.is_empty() {
            let rest = rows.split_off(rows.len().min(self.limits.max_batch_rows));
            let batch = std::mem::replace(&mut rows, rest);
            let views: Vec<_> = batch.iter().map(|row| Positional { columns: &stream.columns, row }).collect();
            let (input, outcomes) = preprocess::encode_each(&bundle.schema, &views);
            drop(views);
            let mut scored = self.runner.score_bulk(&bundle, input, to_prediction).await?.into_iter();
            for (outcome, row) in outcomes.into_iter().zip(batch) {
                let outcome = match outcome {
                    Ok(_) => {
                        let mut p = scored.next().expect("one prediction per good row");
                        p.row_id = row.row_id;
                        pb::row_result::Outcome::Prediction(p)
                    }
                    Err(e) => {
                        errors += 1;
                        pb::row_result::Outcome::Error(pb::RowError {
                            row_id: e.row_id,
                            row_index: (offset + e.row_index) as u32,
                            field: e.field,
                            reason: e.reason.to_string(),
                        })
                    }
                };
                results.push(pb::RowResult { outcome: Some(outcome) });
            }
            offset = results.len();
        }
        let labels = [stream.task.as_str(), bundle.version.as_str()];
        self.metrics.rows.with_label_values(&labels).inc_by(results.len() as u64 - errors);
        self.metrics.stream_chunks.with_label_values(&labels).inc();
        if errors > 0 {
            self.metrics.stream_row_errors.with_label_values(&labels).inc_by(errors);
        }
        Ok(pb::BatchPredictResponse {
            task: stream.task.clone(),
            version: bundle.version.clone(),
            chunk_index,
            class_names: bundle.class_labels().to_vec(),
            results,
        })
    }
}

/// What a stream fixes on its first chunk, and the column names its positional rows use.
#[derive(Default)]
struct StreamState {
    task: String,
    bundle: Option<Arc<Bundle>>,
    columns: Vec<String>,
}

/// A stream row read through its stream's column names.
struct Positional<'a> {
    columns: &'a [String],
    row: &'a pb::Row,
}

impl RowView for Positional<'_> {
    fn row_id(&self) -> &str {
        &self.row.row_id
    }

    fn features(&self) -> impl Iterator<Item = (&str, Option<Value<'_>>)> {
        let positional =
            self.columns.iter().zip(&self.row.values).map(|(name, value)| (name.as_str(), value_of(value)));
        self.row.features().chain(positional)
    }
}

fn version_of(bundle: &Option<Arc<Bundle>>) -> String {
    bundle.as_ref().map(|b| b.version.clone()).unwrap_or_default()
}

/// gRPC code names as grpc-status documentation spells them, for metric labels.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

impl RowView for pb::Row {
    fn row_id(&self) -> &str {
        &self.row_id
    }

    fn features(&self) -> impl Iterator<Item = (&str, Option<Value<'_>>)> {
        self.features.iter().map(|(name, value)| (name.as_str(), value_of(value)))
    }
}

/// A wire value as preprocessing reads it; an unset kind is a missing value.
fn value_of(value: &pb::Value) -> Option<Value<'_>> {
    value.kind.as_ref().map(|kind| match kind {
        Kind::Number(x) => Value::Number(*x),
        Kind::Integer(i) => Value::Integer(*i),
        Kind::Text(s) => Value::Text(s),
        Kind::Flag(b) => Value::Bool(*b),
    })
}

/// Wire form of an owned row (golden files, clients, benchmarks).
impl From<&crate::preprocess::OwnedRow> for pb::Row {
    fn from(row: &crate::preprocess::OwnedRow) -> pb::Row {
        use crate::schema::OwnedValue;
        let features = row
            .features
            .iter()
            .map(|(name, value)| {
                let kind = match value {
                    OwnedValue::Bool(b) => Kind::Flag(*b),
                    OwnedValue::Integer(i) => Kind::Integer(*i),
                    OwnedValue::Number(x) => Kind::Number(*x),
                    OwnedValue::Text(s) => Kind::Text(s.clone()),
                };
                (name.clone(), pb::Value { kind: Some(kind) })
            })
            .collect();
        pb::Row { row_id: row.row_id.clone(), features, values: Vec::new() }
    }
}
