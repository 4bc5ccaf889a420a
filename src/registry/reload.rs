//! Reload decisions: what one reload of a task does with the candidate `current` resolves to.
//!
//! Unchanged (same identity as the live bundle), known bad (failed before and unchanged since),
//! promoted (a version already kept warm), or loaded and checked, then swapped in. A failure is
//! logged, counted and recorded for health; the live bundle keeps serving.

use std::{sync::Arc, time::Instant};

use super::{CURRENT, LivePolicy, Registry, ReloadError, ReloadOutcome, Task, policy};
use crate::bundle::manifest::Identity;

impl Registry {
    /// Brings `task` in line with its `current` link: loads and checks the candidate off the
    /// async workers and swaps it in, unless it is already live or is a known bad candidate.
    /// `retry_bad` loads a candidate again even if it failed before unchanged (a file inside it
    /// may have been repaired in place).
    pub async fn reload(&self, task: &str, retry_bad: bool) -> ReloadOutcome {
        let Some(slot) = self.inner.tasks.get(task) else {
            return ReloadOutcome::Unchanged;
        };
        // The policy first, then the link: a release that clears a split and flips `current`
        // in one pass never shows the new live version under the old split. The policy's
        // versions are loaded before it is published, and the live policy's stay warm
        // meanwhile, so a refused candidate takes nothing away.
        let candidate = match self.inner.options.bundle {
            Some(_) => policy::Candidate::Absent,
            None => policy::read(&self.inner.root.join(task)),
        };
        let named =
            |p: Option<Arc<LivePolicy>>| -> Vec<String> { p.iter().flat_map(|p| p.versions.keys().cloned()).collect() };
        let mut extra = named(slot.policy.load_full());
        extra.extend(candidate.versions());
        let keeps = self.inner.options.keep_recent > 0 || !self.inner.options.keep_versions.is_empty();
        if keeps || !extra.is_empty() || !slot.kept.load().is_empty() {
            self.sync_kept(task, slot, retry_bad, &extra).await;
        }
        let policy_changed = self.apply_policy(task, slot, candidate);
        let outcome = self.reload_live(task, slot, retry_bad).await;
        // A promoted version leaves the kept list, and versions only the old policy named are
        // let go, now rather than on the next poll.
        if policy_changed || (matches!(outcome, ReloadOutcome::Swapped { .. }) && !slot.kept.load().is_empty()) {
            self.sync_kept(task, slot, false, &named(slot.policy.load_full())).await;
        }
        outcome
    }

    async fn reload_live(&self, task: &str, slot: &Task, retry_bad: bool) -> ReloadOutcome {
        let (options, single) = (&self.inner.options, &self.inner.options.bundle);
        let link = match single {
            Some(dir) => dir.clone(),
            None => self.inner.root.join(task).join(CURRENT),
        };
        let identity = match Identity::of(&link) {
            Ok(identity) => identity,
            Err(source) => return self.fail(task, slot, None, ReloadError::Link { link, source }),
        };
        let live = slot.live.load_full();
        if live.as_ref().is_some_and(|b| b.is(&identity)) {
            // Back on the live bundle (say, after a bad flip was undone): the error is history.
            self.clear_error(slot);
            return ReloadOutcome::Unchanged;
        }
        if !retry_bad && self.lock(slot).failed.as_ref() == Some(&identity) {
            return ReloadOutcome::KnownBad;
        }

        let started = Instant::now();
        let kept = slot.kept.load().iter().find(|b| b.is(&identity)).cloned();
        let bundle = match kept {
            Some(bundle) => bundle,
            None => {
                match self.inner.loader.load(task, &identity, options.load, &self.inner.metrics, single.is_none()).await
                {
                    Ok(bundle) => bundle,
                    Err(error) => return self.fail(task, slot, Some(identity), error),
                }
            }
        };
        self.swap_live(task, slot, bundle, started.elapsed())
    }

    fn fail(&self, task: &str, slot: &Task, identity: Option<Identity>, error: ReloadError) -> ReloadOutcome {
        let error = Arc::new(error);
        {
            let mut status = self.lock(slot);
            // The same candidate failing the same way again (a missing link looked at once more,
            // or a known-bad candidate retried in case it was repaired in place) is one failure:
            // it is logged and counted once, not once per poll.
            let repeated = status.failed == identity
                && status.last_error.as_ref().is_some_and(|e| e.to_string() == error.to_string());
            status.last_error = Some(error.clone());
            status.failed = identity;
            if repeated {
                return ReloadOutcome::KnownBad;
            }
        }
        self.inner.metrics.reloads.with_label_values(&[task, "failure"]).inc();
        let live = slot.live.load();
        tracing::warn!(
            task,
            live = live.as_ref().map_or("-", |b| b.version.as_str()),
            error = %error,
            result = "failure",
            "bundle rejected; live version unchanged"
        );
        self.changed();
        ReloadOutcome::Failed(error)
    }

    fn clear_error(&self, slot: &Task) {
        let mut status = self.lock(slot);
        if status.last_error.take().is_some() {
            status.failed = None;
            drop(status);
            self.changed();
        }
    }
}
