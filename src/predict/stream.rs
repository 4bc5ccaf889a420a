//! Chunked bulk scoring: one [`StreamSession`] per BatchPredict stream (or any face's
//! equivalent). The session fixes its task and bundle snapshot on the first chunk and keeps both
//! for its whole life; a bad row gets its own error and the other rows of its chunk are scored.
//!
//! The face owns the stream's transport loop (reading chunks, back-pressure, shutdown); the
//! session owns everything else: the open-streams limit, checks, the model runs on the bulk
//! slots, and the stream's metrics, recorded once when it is finished or dropped.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Instant,
};

use tokio::sync::OwnedSemaphorePermit;

use super::{
    audit::{Entry, Rows},
    call::{Answered, CallContext, KeyOf, Method, Prediction},
    error::{ErrorKind, PredictError},
    predictor::{Predictor, log_rejection, predictions},
};
use crate::{
    bundle::Bundle,
    preprocess::{RowError, RowView},
    registry::LivePolicy,
    telemetry::{GaugeGuard, trace::CallSpan},
};

/// One chunk's answer: the stream's bundle, and per row (in order) its prediction or its error.
#[derive(Debug)]
pub struct ChunkAnswer {
    pub bundle: Arc<Bundle>,
    pub outcomes: Vec<Result<Prediction, RowError>>,
}

/// An open stream. Holds one of the `max_streams` slots until dropped.
pub struct StreamSession {
    predictor: Predictor,
    ctx: CallContext,
    task: String,
    /// Set by the first chunk: the pinned or live version, or (with a split) the version its
    /// first row's key chose.
    bundle: Option<Arc<Bundle>>,
    /// The rollout policy in force when the stream began (never for a pinned stream).
    policy: Option<Arc<LivePolicy>>,
    /// Whether the first chunk fixed the stream's task.
    bound: bool,
    /// How the stream ended, once the face says so; a session dropped without a word was cut
    /// off (the caller went away, or the stream's task was aborted).
    outcome: Option<Result<(), ErrorKind>>,
    /// The stream's number in this process, for its audit records.
    number: u64,
    /// Chunks seen so far.
    chunks: u64,
    /// Scorecards: reason codes per prediction, as the first chunk asked.
    reason_codes: u32,
    /// Rows answered (good or not), for the stream's span.
    rows: AtomicUsize,
    /// The stream's span, when tracing is on.
    span: Option<CallSpan>,
    _open: (OwnedSemaphorePermit, GaugeGuard, GaugeGuard),
}

/// Streams opened by this process: numbers them for audit records.
static STREAMS: AtomicU64 = AtomicU64::new(0);

impl Predictor {
    /// Opens a stream, or refuses it with [`PredictError::TooManyStreams`] (counted like any
    /// failed call) when `max_streams` are open.
    pub fn open_stream(&self, ctx: CallContext) -> Result<StreamSession, PredictError> {
        debug_assert_eq!(ctx.method, Method::BatchPredict);
        let Ok(permit) = self.inner.streams.clone().try_acquire_owned() else {
            self.record(&ctx, "", "", Some(ErrorKind::ResourceExhausted));
            return Err(PredictError::TooManyStreams { limit: self.inner.limits.max_streams });
        };
        let in_flight = GaugeGuard::enter(&self.inner.in_flight[ctx.method as usize]);
        let open = GaugeGuard::enter(&self.inner.metrics.streams_open);
        let span = self.start_span(&ctx);
        Ok(StreamSession {
            span,
            rows: AtomicUsize::new(0),
            predictor: self.clone(),
            ctx,
            task: String::new(),
            bundle: None,
            policy: None,
            bound: false,
            outcome: None,
            number: STREAMS.fetch_add(1, Ordering::Relaxed) + 1,
            chunks: 0,
            reason_codes: 0,
            _open: (permit, in_flight, open),
        })
    }
}

impl StreamSession {
    /// Checks a chunk's task against the stream's. The first chunk must name one; it fixes the
    /// stream's task and its one bundle snapshot: the pinned `version`, the live one, or, when
    /// the task's rollout policy splits, the version its first row's key chooses. The first
    /// chunk's `reason_codes` holds for the stream.
    pub fn bind(&mut self, task: &str, version: &str, reason_codes: u32) -> Result<(), PredictError> {
        self.chunks += 1;
        if self.chunks == 1 {
            self.reason_codes = reason_codes;
        }
        if let Err(e) = self.bind_inner(task, version) {
            let task = if self.task.is_empty() { task } else { &self.task };
            log_rejection(&self.ctx, task, "", &e);
            self.audit(task, Instant::now(), Err(&e), Rows::<Positionless>::None);
            return Err(e);
        }
        Ok(())
    }

    /// Refuses the current chunk with `e`, which the face found before scoring it: logged and
    /// recorded like the core's own refusals. Returns `e` for the face to send.
    pub fn reject<R: RowView>(&self, rows: &[R], e: PredictError) -> PredictError {
        log_rejection(&self.ctx, &self.task, "", &e);
        self.audit(&self.task, Instant::now(), Err(&e), Rows::Unary { rows, versions: &[] });
        e
    }

    /// The current chunk's audit record: always for a failure or a chunk with a row error,
    /// else when sampled. Returns whether it was written.
    fn audit<R: RowView>(
        &self,
        task: &str,
        since: Instant,
        outcome: Result<bool, &PredictError>,
        rows: Rows<'_, R>,
    ) -> bool {
        let Some(audit) = &self.predictor.inner.audit else { return false };
        if matches!(outcome, Ok(false)) && !audit.sampled() {
            return false;
        }
        let bundle = match &self.bundle {
            Some(b) => Some(b.clone()),
            None => self.predictor.inner.registry.get(task).ok(),
        };
        let entry = Entry {
            ctx: &self.ctx,
            task,
            request_id: "",
            stream: Some((self.number, self.chunks.saturating_sub(1))),
            bundle: bundle.as_deref(),
            compare: &[],
            error: outcome.err(),
            latency: since.elapsed(),
        };
        audit.submit(self.predictor.inner.registry.task_name(task).unwrap_or("-"), &entry, rows);
        true
    }

    fn bind_inner(&mut self, task: &str, version: &str) -> Result<(), PredictError> {
        if !self.bound {
            if task.is_empty() {
                return Err(PredictError::MissingStreamTask);
            }
            // Named before any check, so a refused stream is counted under its task.
            task.clone_into(&mut self.task);
            self.predictor.check_task(&self.ctx, task)?;
            // One snapshot for the whole stream: a flip mid-stream does not change its version.
            let registry = &self.predictor.inner.registry;
            let policy = if version.is_empty() { registry.policy(task) } else { None };
            match policy.as_deref() {
                // The split needs the first row's key: the version is chosen with the first rows.
                Some(p) if !p.policy.split.is_empty() => drop(registry.get(task)?),
                _ => self.bundle = Some(self.predictor.snapshot(task, (!version.is_empty()).then_some(version))?),
            }
            self.policy = policy;
            self.bound = true;
        } else if !task.is_empty() && task != self.task {
            return Err(PredictError::TaskChanged { stream: self.task.clone(), chunk: task.to_owned() });
        }
        Ok(())
    }

    /// The stream's task; empty until the first chunk bound it.
    pub fn task(&self) -> &str {
        &self.task
    }

    /// Marks a chunk as received and not yet handed to the transport, for as long as the guard
    /// lives (`modeld_stream_chunks_in_flight`: the server's buffered work).
    pub fn chunk_received(&self) -> GaugeGuard {
        GaugeGuard::enter(&self.predictor.inner.metrics.stream_chunks_in_flight)
    }

    /// Scores one chunk of a bound stream in runs of at most `max_batch_rows` rows. Rows that
    /// cannot be encoded get their own error (`row_index` within the chunk); the rest are scored.
    pub async fn score_chunk<R: RowView + Sync>(&mut self, rows: &[R]) -> Result<ChunkAnswer, PredictError> {
        let since = Instant::now();
        let result = match self.chunk_bundle(rows) {
            Ok(bundle) => self.score_chunk_inner(rows, bundle).await,
            Err(e) => Err(e),
        };
        match &result {
            Ok(answer) => {
                let row_errors = answer.outcomes.iter().any(Result::is_err);
                let audit_rows = Rows::Chunk { rows, bundle: &answer.bundle, outcomes: &answer.outcomes };
                let audited = self.audit(&self.task, since, Ok(row_errors), audit_rows);
                if let Some(policy) = self.policy.as_deref().filter(|p| !p.policy.shadow.is_empty()) {
                    let predictions: Vec<Option<&Prediction>> =
                        answer.outcomes.iter().map(|o| o.as_ref().ok()).collect();
                    let answered = Answered {
                        ctx: &self.ctx,
                        request_id: "",
                        stream: Some((self.number, self.chunks.saturating_sub(1))),
                        rows,
                        bundle: &answer.bundle,
                        predictions: &predictions,
                        audited,
                    };
                    self.predictor.shadow(&self.task, policy, &answered);
                }
            }
            Err(e) => {
                log_rejection(&self.ctx, &self.task, "", e);
                self.audit(&self.task, since, Err(e), Rows::Unary { rows, versions: &[] });
            }
        }
        result
    }

    /// The stream's bundle; with a split, chosen (and fixed) by the first row that arrives.
    fn chunk_bundle<R: RowView>(&mut self, rows: &[R]) -> Result<Arc<Bundle>, PredictError> {
        if let Some(bundle) = &self.bundle {
            return Ok(bundle.clone());
        }
        let Some(policy) = self.policy.clone() else { return Err(PredictError::MissingStreamTask) };
        let bundle = self.predictor.choose(&self.task, &policy, "", rows, KeyOf::Stream)?;
        if !rows.is_empty() {
            self.bundle = Some(bundle.clone());
        }
        Ok(bundle)
    }

    async fn score_chunk_inner<R: RowView + Sync>(
        &self,
        rows: &[R],
        bundle: Arc<Bundle>,
    ) -> Result<ChunkAnswer, PredictError> {
        let inner = &self.predictor.inner;
        let limit = inner.limits.max_rows;
        if rows.len() > limit {
            return Err(PredictError::TooManyRows { rows: rows.len(), limit, unit: "chunk" });
        }
        if self.ctx.past_deadline() {
            return Err(PredictError::Deadline);
        }
        let mut outcomes = Vec::with_capacity(rows.len());
        let mut errors = 0u64;
        for (batch_index, batch) in rows.chunks(inner.limits.max_batch_rows.max(1)).enumerate() {
            let offset = batch_index * inner.limits.max_batch_rows.max(1);
            let (input, encoded) = bundle.prepare_each(batch);
            let scored =
                inner.runner.score_bulk(&bundle, input, self.ctx.deadline, predictions(self.reason_codes)).await?;
            bundle.observe(&scored);
            let mut scored = scored.into_iter();
            for outcome in encoded {
                outcomes.push(match outcome {
                    Ok(_) => Ok(scored.next().expect("one prediction per good row")),
                    Err(mut e) => {
                        errors += 1;
                        e.row_index += offset;
                        Err(e)
                    }
                });
            }
        }
        self.rows.fetch_add(outcomes.len(), Ordering::Relaxed);
        let labels = [self.task.as_str(), bundle.version.as_str()];
        let m = &inner.metrics;
        m.rows.with_label_values(&labels).inc_by(outcomes.len() as u64 - errors);
        m.stream_chunks.with_label_values(&labels).inc();
        if errors > 0 {
            m.stream_row_errors.with_label_values(&labels).inc_by(errors);
        }
        Ok(ChunkAnswer { bundle, outcomes })
    }

    /// Ends the stream: OK when the caller closed its side and every chunk was answered, else
    /// the kind of failure that ended it.
    pub fn finish(mut self, outcome: Result<(), ErrorKind>) {
        self.outcome = Some(outcome);
    }
}

/// The row type of a record without rows.
struct Positionless;

impl RowView for Positionless {
    fn row_id(&self) -> &str {
        ""
    }

    fn features(&self) -> impl Iterator<Item = (&str, Option<crate::schema::Value<'_>>)> {
        std::iter::empty()
    }
}

impl Drop for StreamSession {
    fn drop(&mut self) {
        let failure = self.outcome.unwrap_or(Err(ErrorKind::Cancelled)).err();
        let version = self.bundle.as_ref().map_or("", |b| b.version.as_str());
        self.predictor.record(&self.ctx, &self.task, version, failure);
        if let Some(span) = self.span.take() {
            let failure = failure.map(|kind| (kind, format!("stream ended {}", kind.name())));
            self.predictor.end_span(span, &self.ctx, &self.task, version, *self.rows.get_mut(), failure);
        }
        if let Some(task) = self.predictor.inner.registry.task_name(&self.task) {
            let seconds = Instant::now().duration_since(self.ctx.started).as_secs_f64();
            self.predictor.inner.metrics.stream_seconds.with_label_values(&[task]).observe(seconds);
        }
    }
}
