//! Shadow scoring: a challenger version scores the rows a call was answered for, after the
//! answer, on the bulk runtime, and its answers are compared with the answer given.
//!
//! The request path only encodes the rows for the challenger and hands the job over without
//! waiting. Shadow work gives way first: a job is dropped and counted (never queued without
//! bound, never delaying a caller) when `shadow_queue` jobs are pending (`queue_full`), when
//! model runs are queueing for a slot (`overload`, checked at hand-over and again before the
//! run), when it cannot start within `shadow_budget_ms` of hand-over (`budget`), or when the
//! challenger cannot encode the rows (`encode`) or its run fails (`error`).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::Semaphore;

use super::diff::Diffs;
use crate::{
    bundle::{Bundle, Prediction},
    preprocess::Input,
    runner::{RunError, Runner},
};

/// Called with the challenger's answers once a job ran: the audit record's hook.
pub type Report = Box<dyn FnOnce(&Bundle, &[Prediction], Duration) + Send>;

/// One challenger's run over one call's rows.
pub struct ShadowJob {
    /// The registry's name of the task (a bounded label).
    pub task: Arc<str>,
    /// The version that answered.
    pub champion: Arc<Bundle>,
    pub challenger: Arc<Bundle>,
    /// The rows, encoded for the challenger.
    pub input: Input,
    /// Per input row, the answer given (None: that row was not answered).
    pub answered: Arc<[Option<Prediction>]>,
    pub report: Option<Report>,
}

/// The bounded hand-over to the bulk runtime.
#[derive(Clone)]
pub struct ShadowQueue {
    inner: Arc<Inner>,
}

struct Inner {
    runner: Runner,
    bulk: tokio::runtime::Handle,
    pending: Arc<Semaphore>,
    capacity: usize,
    budget: Duration,
    diffs: Arc<Diffs>,
}

impl ShadowQueue {
    /// Jobs run on `bulk` through `runner`; at most `queue` are pending at once, and each must
    /// start within `budget`.
    pub fn new(
        runner: Runner,
        bulk: tokio::runtime::Handle,
        queue: usize,
        budget: Duration,
        diffs: Arc<Diffs>,
    ) -> Self {
        let pending = Arc::new(Semaphore::new(queue));
        ShadowQueue { inner: Arc::new(Inner { runner, bulk, pending, capacity: queue, budget, diffs }) }
    }

    /// The diff the jobs feed.
    pub fn diffs(&self) -> &Arc<Diffs> {
        &self.inner.diffs
    }

    /// Waits, at most `timeout`, until every job handed over has run or been dropped: shutdown
    /// calls it before stopping the bulk runtime, so shadow records of answered calls are not
    /// lost. Returns whether the queue drained.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let all = u32::try_from(self.inner.capacity).unwrap_or(u32::MAX);
        matches!(tokio::time::timeout(timeout, self.inner.pending.acquire_many(all)).await, Ok(Ok(_)))
    }

    /// Whether a job would be dropped now: checked before encoding rows for it.
    pub fn shedding(&self, task: &str) -> bool {
        let inner = &self.inner;
        let reason = if inner.runner.saturated() {
            "overload"
        } else if inner.pending.available_permits() == 0 {
            "queue_full"
        } else {
            return false;
        };
        inner.diffs.dropped(task, reason);
        true
    }

    /// Counts a job that could not be made (the challenger refused the rows).
    pub fn encode_failed(&self, task: &str) {
        self.inner.diffs.dropped(task, "encode");
    }

    /// Hands `job` to the bulk runtime, or drops and counts it. Never waits.
    pub fn submit(&self, job: ShadowJob) {
        let inner = &self.inner;
        let Ok(pending) = inner.pending.clone().try_acquire_owned() else {
            inner.diffs.dropped(&job.task, "queue_full");
            return;
        };
        let start_by = Instant::now() + inner.budget;
        let this = self.clone();
        inner.bulk.spawn(async move {
            let _pending = pending;
            this.run(job, start_by).await;
        });
    }

    async fn run(&self, job: ShadowJob, start_by: Instant) {
        let inner = &self.inner;
        let ShadowJob { task, champion, challenger, input, answered, report } = job;
        if Instant::now() >= start_by {
            inner.diffs.dropped(&task, "budget");
            return;
        }
        let started = Instant::now();
        let result = inner.runner.score_optional(&challenger, input, Some(start_by), Prediction::from_scored).await;
        let took = started.elapsed();
        match result {
            Ok(predictions) => {
                challenger.observe(&predictions);
                inner.diffs.observe(&task, &champion, &challenger, &answered, &predictions, took);
                if let Some(report) = report {
                    report(&challenger, &predictions, took);
                }
            }
            Err(RunError::Overloaded) => inner.diffs.dropped(&task, "overload"),
            Err(RunError::Deadline) => inner.diffs.dropped(&task, "budget"),
            Err(error) => {
                tracing::warn!(task = %task, version = %challenger.version, %error, "shadow run failed");
                inner.diffs.dropped(&task, "error");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{runner::RunnerLimits, telemetry::Metrics};

    #[test]
    fn shadow_work_gives_way_while_callers_are_still_admitted() {
        let metrics = Metrics::new();
        let limits = RunnerLimits { threads: 1, max_queued: 4, inline_max_rows: 8, bulk_threads: 1 };
        let runner = Runner::new(limits, metrics.clone());
        // A runtime that is never driven: nothing handed to it runs.
        let bulk = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let diffs = Arc::new(Diffs::new(metrics.rollout.clone()));
        let queue = ShadowQueue::new(runner.clone(), bulk.handle().clone(), 8, Duration::from_secs(1), diffs);
        assert!(!queue.shedding("t"), "an idle runner takes shadow work");

        // One run in the model and one waiting for it: callers are still admitted (3 places
        // left), shadow work is not.
        let held = runner.occupy(2);
        assert!(queue.shedding("t"));
        assert_eq!(runner.free_admissions(), 3);
        drop(held);
        assert!(!queue.shedding("t"));

        let text = metrics.render();
        assert!(text.contains(r#"modeld_shadow_dropped_total{reason="overload",task="t"} 1"#), "{text}");
        let (_, dropped) = queue.diffs().report("t");
        assert_eq!(dropped.get("overload"), Some(&1));
    }
}
