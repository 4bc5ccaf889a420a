//! A task's rollout policy, followed like its `current` link: read on every reload, its
//! versions kept warm, and published in one store only once every version it names is loaded.
//! A policy that does not parse or names a version that is not loaded is logged and counted
//! once per file content, and the live policy stays.

use std::{collections::BTreeMap, sync::Arc, time::SystemTime};

use super::{
    Registry, Task,
    policy::{Candidate, LivePolicy},
};
use crate::{
    bundle::manifest::Identity,
    rollout::{Policy, policy::FILE},
};

impl Registry {
    /// The live rollout policy of `task`, if any.
    #[inline]
    pub fn policy(&self, task: &str) -> Option<Arc<LivePolicy>> {
        self.inner.tasks.get(task).and_then(|t| t.policy.load_full())
    }

    /// Publishes `candidate` if every version it names is loaded; otherwise records why not
    /// and keeps the live policy. Returns whether the live policy changed.
    pub(super) fn apply_policy(&self, task: &str, slot: &Task, candidate: Candidate) -> bool {
        let (policy, sha256) = match candidate {
            Candidate::Absent => {
                // A refused file that was then removed is no longer a reason to report.
                self.clear_policy_error(slot);
                let Some(old) = slot.policy.swap(None) else { return false };
                self.set_weights(task, Some(&old), None);
                tracing::info!(task, "rollout policy removed; the live version answers every call");
                return true;
            }
            Candidate::Bad { sha256, error } => {
                self.reject_policy(task, slot, sha256, error);
                return false;
            }
            Candidate::Parsed { policy, sha256 } => (policy, sha256),
        };
        let versions = match self.resolve(task, slot, &policy) {
            Ok(versions) => versions,
            Err(error) => {
                self.reject_policy(task, slot, sha256, error);
                return false;
            }
        };
        let old = slot.policy.load_full();
        if old.as_ref().is_some_and(|o| o.policy == policy && o.versions == versions) {
            self.clear_policy_error(slot);
            return false;
        }
        let live = Arc::new(LivePolicy { policy, sha256, versions, since: SystemTime::now() });
        slot.policy.store(Some(live.clone()));
        self.set_weights(task, old.as_deref(), Some(&live));
        self.clear_policy_error(slot);
        self.inner.metrics.rollout.policy_reloads.with_label_values(&[task, "success"]).inc();
        let split: Vec<String> = live.policy.split.iter().map(|s| format!("{}={}", s.version, s.weight)).collect();
        tracing::info!(
            task,
            shadow = ?live.policy.shadow,
            split = %split.join(","),
            sticky_by = live.policy.sticky_by.name(),
            sha256 = %live.sha256,
            result = "success",
            "rollout policy live"
        );
        self.changed();
        true
    }

    /// Each named directory's version string, from the bundle loaded for it (live or kept).
    fn resolve(&self, task: &str, slot: &Task, policy: &Policy) -> Result<BTreeMap<String, String>, String> {
        let dir = self.inner.root.join(task);
        let live = slot.live.load_full();
        let kept = slot.kept.load_full();
        let mut versions = BTreeMap::new();
        for name in policy.versions() {
            let identity = Identity::of(&dir.join(name))
                .map_err(|e| format!("version directory `{name}` named by {FILE} cannot be read: {e}"))?;
            let bundle =
                live.iter().chain(kept.iter()).find(|b| b.is(&identity)).ok_or_else(|| {
                    format!("version `{name}` named by {FILE} did not load (see the bundle load errors)")
                })?;
            if let Some((other, _)) = versions.iter().find(|(_, v)| **v == bundle.version) {
                return Err(format!("`{other}` and `{name}` both load as version `{}`", bundle.version));
            }
            versions.insert(name.to_owned(), bundle.version.clone());
        }
        Ok(versions)
    }

    fn clear_policy_error(&self, slot: &Task) {
        let mut status = self.lock(slot);
        status.policy_error = None;
        status.policy_failed = None;
    }

    fn reject_policy(&self, task: &str, slot: &Task, sha256: String, error: String) {
        let error = format!("{FILE}: {error}");
        let mut status = self.lock(slot);
        // One report per file content and reason, not one per poll.
        if status.policy_failed.as_ref() == Some(&(sha256.clone(), error.clone())) {
            return;
        }
        status.policy_failed = Some((sha256, error.clone()));
        status.policy_error = Some(error.clone());
        drop(status);
        self.inner.metrics.rollout.policy_reloads.with_label_values(&[task, "failure"]).inc();
        let live = slot.policy.load();
        tracing::warn!(
            task,
            error = %error,
            live = live.as_ref().map_or("none", |p| p.sha256.as_str()),
            result = "failure",
            "rollout policy rejected; live policy unchanged"
        );
        self.changed();
    }

    fn set_weights(&self, task: &str, old: Option<&LivePolicy>, new: Option<&LivePolicy>) {
        let gauge = &self.inner.metrics.rollout.split_weight;
        for share in old.iter().flat_map(|p| &p.policy.split) {
            let _ = gauge.remove_label_values(&[task, &share.version]);
        }
        for share in new.iter().flat_map(|p| &p.policy.split) {
            gauge.with_label_values(&[task, &share.version]).set(share.weight);
        }
    }
}
