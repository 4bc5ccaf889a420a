//! Admission and placement of model runs.
//!
//! Two semaphores bound the work: `slots` (one permit per ONNX session, = inference threads)
//! and `admitted` (slots plus a bounded queue). A run that finds the queue full is refused at
//! once with [`RunError::Overloaded`] instead of waiting without bound.
//!
//! Small runs (at most `inline_max_rows` rows) execute on the async worker that received them:
//! a German Credit row takes a few microseconds, less than a hand-off to another thread would
//! cost. Larger runs move to tokio's blocking pool so they never hold an async worker.
//!
//! Bulk work (BatchPredict streams) runs on its own low-priority runtime, [`BulkRuntime`], and
//! may hold only some of the slots, so unary calls always find one.

use std::{sync::Arc, time::Instant};

use tokio::sync::Semaphore;

use crate::{
    bundle::{Bundle, Scored},
    engine::EngineError,
    preprocess::Input,
    telemetry::{GaugeGuard, Metrics},
};

/// Why a run did not produce outputs.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("server overloaded: too many model runs queued, retry later")]
    Overloaded,
    /// The caller's deadline passed while the run waited for a slot.
    #[error("deadline exceeded while waiting for a model slot")]
    Deadline,
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("model run aborted: {0}")]
    Aborted(#[from] tokio::task::JoinError),
}

/// Bounds for [`Runner`].
#[derive(Debug, Clone, Copy)]
pub struct RunnerLimits {
    /// Model runs at once; must not exceed the sessions per bundle.
    pub threads: usize,
    /// Runs allowed to wait for a slot.
    pub max_queued: usize,
    /// Largest run kept on the async worker.
    pub inline_max_rows: usize,
    /// Slots that bulk (streaming) runs may hold at once; the rest stay free for unary calls.
    pub bulk_threads: usize,
}

/// Shared admission state. Cloning is shallow.
#[derive(Clone)]
pub struct Runner {
    inner: Arc<Inner>,
}

struct Inner {
    admitted: Arc<Semaphore>,
    bulk: Arc<Semaphore>,
    slots: Arc<Semaphore>,
    inline_max_rows: usize,
    max_queued: usize,
    metrics: Metrics,
}

impl Runner {
    pub fn new(limits: RunnerLimits, metrics: Metrics) -> Runner {
        let threads = limits.threads.max(1);
        Runner {
            inner: Arc::new(Inner {
                admitted: Arc::new(Semaphore::new(threads + limits.max_queued)),
                bulk: Arc::new(Semaphore::new(limits.bulk_threads.clamp(1, threads))),
                slots: Arc::new(Semaphore::new(threads)),
                inline_max_rows: limits.inline_max_rows,
                max_queued: limits.max_queued,
                metrics,
            }),
        }
    }

    /// [`Runner::score`] for bulk work: waits for one of the bulk slots first, so streams never
    /// hold every inference thread, then runs on the calling thread whatever the size: bulk
    /// callers run on the bulk runtime, whose threads exist for exactly this work. The wait is
    /// bounded by the number of open streams (each has one chunk in the model at a time).
    pub async fn score_bulk<T, F>(
        &self,
        bundle: &Arc<Bundle>,
        input: Input,
        deadline: Option<Instant>,
        emit: F,
    ) -> Result<Vec<T>, RunError>
    where
        T: Send + 'static,
        F: FnMut(usize, Scored<'_>) -> T + Send + 'static,
    {
        let _bulk = until(deadline, self.inner.bulk.acquire()).await?.expect("the bulk semaphore is never closed");
        Ok(self.run(bundle, input, deadline, emit, true).await?.0)
    }

    /// Whether admitted runs are waiting for a slot (or, with no queue, every slot is busy):
    /// the moment optional work, such as shadow scoring, gives way.
    pub fn saturated(&self) -> bool {
        self.inner.admitted.available_permits() < self.inner.max_queued.max(1)
    }

    /// Optional work (a shadow version's run): refused with [`RunError::Overloaded`] whenever
    /// the runner is [saturated](Runner::saturated), never counted against the admission queue
    /// (so it cannot turn a caller away), and limited to the bulk slots. Runs on the calling
    /// thread, which is a bulk runtime worker.
    pub async fn score_optional<T, F>(
        &self,
        bundle: &Arc<Bundle>,
        input: Input,
        deadline: Option<Instant>,
        emit: F,
    ) -> Result<Vec<T>, RunError>
    where
        F: FnMut(usize, Scored<'_>) -> T,
    {
        let inner = &self.inner;
        if self.saturated() {
            return Err(RunError::Overloaded);
        }
        let _bulk = until(deadline, inner.bulk.acquire()).await?.expect("the bulk semaphore is never closed");
        let _slot = until(deadline, inner.slots.acquire()).await?.expect("the slot semaphore is never closed");
        if self.saturated() {
            return Err(RunError::Overloaded);
        }
        Ok(bundle.score(&input, emit)?)
    }

    /// Scores `input` with `bundle`, calling `emit` for every row; see [`Bundle::score`]. A run
    /// still waiting for a slot when `deadline` passes is given up with [`RunError::Deadline`].
    /// Also returns when the run got its slot: what a trace splits into waiting and running.
    pub async fn score<T, F>(
        &self,
        bundle: &Arc<Bundle>,
        input: Input,
        deadline: Option<Instant>,
        emit: F,
    ) -> Result<(Vec<T>, Instant), RunError>
    where
        T: Send + 'static,
        F: FnMut(usize, Scored<'_>) -> T + Send + 'static,
    {
        self.run(bundle, input, deadline, emit, false).await
    }

    async fn run<T, F>(
        &self,
        bundle: &Arc<Bundle>,
        input: Input,
        deadline: Option<Instant>,
        emit: F,
        on_caller: bool,
    ) -> Result<(Vec<T>, Instant), RunError>
    where
        T: Send + 'static,
        F: FnMut(usize, Scored<'_>) -> T + Send + 'static,
    {
        let inner = &self.inner;
        let admitted = inner.admitted.clone().try_acquire_owned().map_err(|_| RunError::Overloaded)?;
        let queued = GaugeGuard::enter(&inner.metrics.queued_runs);
        let slot =
            until(deadline, inner.slots.clone().acquire_owned()).await?.expect("the slot semaphore is never closed");
        let slot_at = Instant::now();
        if on_caller || input.rows <= inner.inline_max_rows {
            let out = bundle.score(&input, emit);
            drop((slot, admitted, queued));
            return Ok((out?, slot_at));
        }
        let bundle = bundle.clone();
        let out = tokio::task::spawn_blocking(move || {
            let _held = (slot, admitted, queued);
            bundle.score(&input, emit)
        })
        .await?;
        Ok((out?, slot_at))
    }
}

#[cfg(test)]
impl Runner {
    /// Takes `n` admissions as runs in the model or waiting for it would.
    pub(crate) fn occupy(&self, n: u32) -> tokio::sync::OwnedSemaphorePermit {
        self.inner.admitted.clone().try_acquire_many_owned(n).expect("free admissions")
    }

    /// Admissions still free: a caller is turned away only at 0.
    pub(crate) fn free_admissions(&self) -> usize {
        self.inner.admitted.available_permits()
    }
}

/// Awaits `wait`, or gives up with [`RunError::Deadline`] once `deadline` passes. A wait that is
/// ready at once (a free slot: the usual case) never arms a timer.
async fn until<T>(deadline: Option<Instant>, wait: impl Future<Output = T>) -> Result<T, RunError> {
    match deadline {
        None => Ok(wait.await),
        Some(at) => {
            tokio::time::timeout_at(tokio::time::Instant::from_std(at), wait).await.map_err(|_| RunError::Deadline)
        }
    }
}

/// The runtime BatchPredict streams work on, apart from the one serving unary calls. Tokio
/// does not preempt: a worker decoding and scoring a 1,000-row chunk would delay every unary
/// call queued behind it, while separate threads let the OS share the CPU between the two.
pub struct BulkRuntime(Option<tokio::runtime::Runtime>);

impl BulkRuntime {
    /// Starts `threads` (at least one) lowest-priority worker threads.
    pub fn start(threads: usize) -> std::io::Result<BulkRuntime> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("modeld-bulk")
            // Lowest priority: unary calls take the CPU whenever they need it; bulk work gets
            // the rest, which on an idle pod is all of it.
            .on_thread_start(|| {
                let _ = thread_priority::set_current_thread_priority(thread_priority::ThreadPriority::Min);
            })
            .enable_all()
            .build()?;
        Ok(BulkRuntime(Some(runtime)))
    }

    /// Where bulk work is spawned.
    pub fn handle(&self) -> tokio::runtime::Handle {
        self.0.as_ref().expect("present until drop").handle().clone()
    }
}

impl Drop for BulkRuntime {
    fn drop(&mut self) {
        // Dropped inside the serving runtime, where a blocking shutdown is not allowed; streams
        // were drained by then.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}
