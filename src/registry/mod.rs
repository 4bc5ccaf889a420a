//! The live bundle of every task, swappable while requests run.
//!
//! # States and invariants
//! Each configured task is in one of two states: *not serving* (no bundle has loaded yet) or
//! *serving* (a bundle is live). A task moves to serving on its first successful load and stays
//! there: a failed reload leaves the live bundle in place and only records the error.
//!
//! - The live bundle sits in an `ArcSwapOption`; a request takes one `Arc<Bundle>` snapshot
//!   ([`Registry::get`]) and uses it to the end, so a swap can never mix versions within a call.
//!   The old bundle is freed when its last snapshot drops.
//! - Only [`Registry::reload`] stores, and only a bundle that passed every load check.
//! - A reload compares the candidate's identity (canonical path + manifest sha256) with the live
//!   one, never timestamps, so a rollback to an older directory is a change like any other.
//! - Loads run one at a time on a dedicated loader thread at the lowest CPU priority, so a
//!   candidate's checks and warm-up never stall the async workers and, on a small pod, yield
//!   the CPU to serving threads (a reload under full load takes longer; requests do not).
//! - Besides the live bundle a task may keep further versions warm (A/B): listed version
//!   directories and/or the N most recent ones. They answer version-pinned and comparison
//!   requests, and flipping `current` to a kept version promotes it without loading it again
//!   (it passed every check when it was loaded, from the bytes it still holds).
//!
//! # Files
//! One concern each, imports running one way (loader, policy <- this file <- kept, rollout <- reload <- watch):
//! - this file: the task table, lookups for requests, and the one swap that publishes a bundle;
//! - [`loader`]: the loader thread and the loading of one candidate;
//! - `kept`: which versions are kept warm besides the live one;
//! - `policy`: the task's rollout policy file, read, and the policy in force;
//! - `rollout`: publishing a policy once the versions it names are loaded;
//! - `reload`: what a reload does with a candidate (swap, keep, reject);
//! - [`watch`]: the single reload loop and its triggers (events, polls, signals).

mod kept;
pub mod loader;
mod policy;
mod reload;
mod rollout;
pub mod watch;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::watch as state;

use self::loader::Loader;
pub use self::{loader::ReloadError, policy::LivePolicy};
use crate::{
    bundle::{Bundle, LoadOptions, manifest::Identity},
    schema::Echo,
    telemetry::Metrics,
};

/// Name of the link that selects a task's live version.
pub const CURRENT: &str = "current";

/// Why a request cannot get a bundle.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("unknown task `{}`", Echo(.0))]
    UnknownTask(String),
    #[error("task `{task}` has no version `{}` loaded (loaded: {})", Echo(version), loaded.join(", "))]
    UnknownVersion { task: String, version: String, loaded: Vec<String> },
    /// The task has no live bundle: still loading (`last_error` None) or every candidate so far
    /// was rejected.
    #[error("task `{task}` has no live version yet: {}", last_error.as_ref().map_or_else(|| "still loading".to_owned(), |e| e.to_string()))]
    NotReady { task: String, last_error: Option<Arc<ReloadError>> },
}

/// What a reload did.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// `current` still resolves to the live bundle.
    Unchanged,
    /// This candidate already failed and has not changed since.
    KnownBad,
    /// A new bundle is live; `previous` was replaced (None on first load).
    Swapped { previous: Option<String>, version: String },
    /// The candidate failed; the live bundle (if any) keeps serving.
    Failed(Arc<ReloadError>),
}

/// How the registry loads and which versions it keeps.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    pub load: LoadOptions,
    /// Version directories to keep loaded besides the live one (A/B), by directory name.
    pub keep_versions: Vec<String>,
    /// Also keep the N most recent version directories (natural sort of their names) loaded.
    pub keep_recent: usize,
    /// Single-bundle mode (KServe's `/mnt/models`): the one task's bundle is this directory
    /// itself, read in place of `<root>/<task>/current`; there are no other versions and no
    /// rollout policy.
    pub bundle: Option<PathBuf>,
}

/// The registry's view of one task, for health and version reports.
#[derive(Debug, Clone)]
pub struct TaskReport {
    pub task: String,
    pub live: Option<Arc<Bundle>>,
    pub last_error: Option<Arc<ReloadError>>,
    /// Versions kept warm besides the live one.
    pub kept: Vec<Arc<Bundle>>,
    /// The live rollout policy, and why the policy file was last refused (while it still is).
    pub policy: Option<Arc<LivePolicy>>,
    pub policy_error: Option<String>,
}

impl TaskReport {
    /// The live version first, then versions kept warm.
    pub fn loaded_versions(&self) -> Vec<String> {
        self.live.iter().chain(&self.kept).map(|b| b.version.clone()).collect()
    }
}

struct Task {
    live: ArcSwapOption<Bundle>,
    /// Versions kept warm besides the live one.
    kept: ArcSwap<Vec<Arc<Bundle>>>,
    /// The rollout policy in force (`rollout.yaml`), if any.
    policy: ArcSwapOption<LivePolicy>,
    status: Mutex<Status>,
}

#[derive(Default)]
struct Status {
    last_error: Option<Arc<ReloadError>>,
    failed: Option<Identity>,
    /// Kept-version candidates that failed, so polls do not reload them again and again.
    failed_kept: Vec<Identity>,
    /// Why the policy file is refused, while it is.
    policy_error: Option<String>,
    /// The refused policy file's content hash and reason, so it is reported once.
    policy_failed: Option<(String, String)>,
}

/// Handle to the live bundles. Cloning is shallow: every clone sees the same tasks.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    loader: Loader,
    /// Replaced bundles waiting for their last request to end.
    retired: Mutex<Vec<Arc<Bundle>>>,
    tasks: BTreeMap<String, Task>,
    options: RegistryOptions,
    metrics: Metrics,
    /// Bumped after every reload attempt that changed something; readiness watchers follow it.
    changed_tx: state::Sender<u64>,
}

impl Registry {
    /// A registry for `tasks` under `root`, with nothing loaded yet.
    pub fn new(root: PathBuf, tasks: &[String], options: RegistryOptions, metrics: Metrics) -> Registry {
        let tasks = tasks
            .iter()
            .map(|t| {
                (
                    t.clone(),
                    Task {
                        live: ArcSwapOption::empty(),
                        kept: ArcSwap::default(),
                        policy: ArcSwapOption::empty(),
                        status: Mutex::default(),
                    },
                )
            })
            .collect();
        let (changed_tx, _) = state::channel(0);
        Registry {
            inner: Arc::new(Inner {
                root,
                loader: Loader::spawn(),
                retired: Mutex::default(),
                tasks,
                options,
                metrics,
                changed_tx,
            }),
        }
    }

    /// The live bundle of `task`: one snapshot for the whole request.
    #[inline]
    pub fn get(&self, task: &str) -> Result<Arc<Bundle>, RegistryError> {
        let slot = self.inner.tasks.get(task).ok_or_else(|| RegistryError::UnknownTask(task.to_owned()))?;
        slot.live.load_full().ok_or_else(|| RegistryError::NotReady {
            task: task.to_owned(),
            last_error: self.lock(slot).last_error.clone(),
        })
    }

    /// The bundle of `task` with version string `version`: the live one or a kept one.
    pub fn get_version(&self, task: &str, version: &str) -> Result<Arc<Bundle>, RegistryError> {
        let live = self.get(task)?;
        if live.version == version {
            return Ok(live);
        }
        let slot = &self.inner.tasks[task];
        let kept = slot.kept.load();
        kept.iter().find(|b| b.version == version).cloned().ok_or_else(|| RegistryError::UnknownVersion {
            task: task.to_owned(),
            version: version.to_owned(),
            loaded: std::iter::once(live.version.clone()).chain(kept.iter().map(|b| b.version.clone())).collect(),
        })
    }

    /// Configured task names, sorted.
    pub fn tasks(&self) -> impl Iterator<Item = &str> {
        self.inner.tasks.keys().map(String::as_str)
    }

    /// The registry's own copy of `task`'s name if it is configured, else None: metric labels
    /// use it, so callers' typos and probes never become label values.
    pub fn task_name(&self, task: &str) -> Option<&str> {
        self.inner.tasks.get_key_value(task).map(|(name, _)| name.as_str())
    }

    /// The model root the tasks live under.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// True when every task has a live bundle.
    pub fn all_live(&self) -> bool {
        self.inner.tasks.values().all(|t| t.live.load().is_some())
    }

    /// The report of one task.
    pub fn report(&self, task: &str) -> Option<TaskReport> {
        self.reports().into_iter().find(|r| r.task == task)
    }

    /// Reports for every task, sorted by name.
    pub fn reports(&self) -> Vec<TaskReport> {
        self.inner
            .tasks
            .iter()
            .map(|(name, t)| {
                let status = self.lock(t);
                TaskReport {
                    task: name.clone(),
                    live: t.live.load_full(),
                    last_error: status.last_error.clone(),
                    kept: t.kept.load().to_vec(),
                    policy: t.policy.load_full(),
                    policy_error: status.policy_error.clone(),
                }
            })
            .collect()
    }

    /// A receiver that sees a new value whenever a reload changed a task's state.
    pub fn subscribe(&self) -> state::Receiver<u64> {
        self.inner.changed_tx.subscribe()
    }

    /// Publishes `bundle` as the live version of `task` in one atomic store, clears the task's
    /// error, and logs and counts the swap. The only place a live bundle is stored.
    fn swap_live(&self, task: &str, slot: &Task, bundle: Arc<Bundle>, took: Duration) -> ReloadOutcome {
        let previous = slot.live.swap(Some(bundle.clone()));
        {
            let mut status = self.lock(slot);
            status.last_error = None;
            status.failed = None;
        }
        let metrics = &self.inner.metrics;
        metrics.reloads.with_label_values(&[task, "success"]).inc();
        if let Some(old) = &previous {
            let _ = metrics.live_version.remove_label_values(&[task, &old.version, &old.manifest_sha256]);
        }
        metrics.live_version.with_label_values(&[task, &bundle.version, &bundle.manifest_sha256]).set(1);
        let old_version = previous.as_ref().map(|b| b.version.clone());
        tracing::info!(
            task,
            from = old_version.as_deref().unwrap_or("-"),
            to = %bundle.version,
            path = %bundle.path.display(),
            took_ms = took.as_millis() as u64,
            result = "success",
            "bundle live"
        );
        self.changed();
        metrics.loaded_versions.with_label_values(&[task]).set(1 + slot.kept.load().len() as i64);
        if let Some(old) = previous {
            self.retire(old);
        }
        ReloadOutcome::Swapped { previous: old_version, version: bundle.version.clone() }
    }

    /// Parks a replaced bundle until no request holds it; [`Registry::free_retired`] then frees
    /// it on the loader thread. Freeing a model (its sessions and arenas) takes a while, and
    /// must not land on whichever request happened to hold the last reference.
    fn retire(&self, bundle: Arc<Bundle>) {
        self.inner.retired.lock().unwrap_or_else(|p| p.into_inner()).push(bundle);
    }

    /// A retired bundle loaded from `identity`, if one is still held by a request.
    fn retired(&self, identity: &Identity) -> Option<Arc<Bundle>> {
        let retired = self.inner.retired.lock().unwrap_or_else(|p| p.into_inner());
        retired.iter().find(|b| b.is(identity)).cloned()
    }

    /// Frees, off the request path, every retired bundle whose last request has ended.
    /// Called by the reload loop.
    pub fn free_retired(&self) {
        let unused: Vec<Arc<Bundle>> = {
            let mut retired = self.inner.retired.lock().unwrap_or_else(|p| p.into_inner());
            let (unused, in_use) = retired.drain(..).partition(|b| Arc::strong_count(b) == 1);
            *retired = in_use;
            unused
        };
        if !unused.is_empty() {
            self.inner.loader.free(unused);
        }
    }

    /// Tells readiness watchers that a task's state changed.
    fn changed(&self) {
        self.inner.changed_tx.send_modify(|n| *n += 1);
    }

    fn lock<'a>(&self, slot: &'a Task) -> std::sync::MutexGuard<'a, Status> {
        // Status is plain data; a panic while holding it cannot leave it inconsistent.
        slot.status.lock().unwrap_or_else(|p| p.into_inner())
    }
}
