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

pub mod watch;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Instant,
};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::watch as state;

use crate::{
    bundle::{Bundle, BundleError, LoadOptions, manifest::sha256_hex},
    telemetry::Metrics,
};

/// Name of the link that selects a task's live version.
pub const CURRENT: &str = "current";

/// Why a request cannot get a bundle.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("unknown task `{0}`")]
    UnknownTask(String),
    #[error("task `{task}` has no version `{version}` loaded (loaded: {})", loaded.join(", "))]
    UnknownVersion { task: String, version: String, loaded: Vec<String> },
    #[error("task `{task}` has no live version yet: {reason}")]
    NotReady { task: String, reason: String },
}

/// Why a reload did not produce a live bundle.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("cannot resolve {link}: {source}")]
    Link {
        link: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Bundle {
        path: PathBuf,
        #[source]
        source: BundleError,
    },
    #[error("{path}: config.yaml is for task `{found}`, not `{task}`")]
    WrongTask { path: PathBuf, task: String, found: String },
    #[error("the loader thread stopped")]
    LoaderGone,
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
}

/// What a candidate is: where `current` points and what its manifest says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity {
    path: PathBuf,
    manifest_sha256: Option<String>,
}

/// The registry's view of one task, for health and version reports.
#[derive(Debug, Clone)]
pub struct TaskReport {
    pub task: String,
    pub live: Option<Arc<Bundle>>,
    pub last_error: Option<Arc<ReloadError>>,
    /// Versions kept warm besides the live one.
    pub kept: Vec<Arc<Bundle>>,
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
    status: Mutex<Status>,
}

#[derive(Default)]
struct Status {
    last_error: Option<Arc<ReloadError>>,
    failed: Option<Identity>,
    /// Kept-version candidates that failed, so polls do not reload them again and again.
    failed_kept: Vec<Identity>,
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
                (t.clone(), Task { live: ArcSwapOption::empty(), kept: ArcSwap::default(), status: Mutex::default() })
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
            reason: self.lock(slot).last_error.as_ref().map_or_else(|| "still loading".to_owned(), |e| e.to_string()),
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
                }
            })
            .collect()
    }

    /// A receiver that sees a new value whenever a reload changed a task's state.
    pub fn subscribe(&self) -> state::Receiver<u64> {
        self.inner.changed_tx.subscribe()
    }

    /// Brings `task` in line with its `current` link: loads and checks the candidate off the
    /// async workers and swaps it in, unless it is already live or is a known bad candidate.
    /// `retry_bad` loads a candidate again even if it failed before unchanged (a file inside it
    /// may have been repaired in place).
    pub async fn reload(&self, task: &str, retry_bad: bool) -> ReloadOutcome {
        let Some(slot) = self.inner.tasks.get(task) else {
            return ReloadOutcome::Unchanged;
        };
        let outcome = self.reload_live(task, slot, retry_bad).await;
        if self.inner.options.keep_recent > 0 || !self.inner.options.keep_versions.is_empty() {
            self.sync_kept(task, slot, retry_bad).await;
        }
        outcome
    }

    async fn reload_live(&self, task: &str, slot: &Task, retry_bad: bool) -> ReloadOutcome {
        let link = self.inner.root.join(task).join(CURRENT);
        let identity = match identify(&link) {
            Ok(identity) => identity,
            Err(source) => return self.fail(task, slot, None, ReloadError::Link { link, source }),
        };
        let live = slot.live.load_full();
        if live.as_ref().is_some_and(|b| identity.matches(b)) {
            // Back on the live bundle (say, after a bad flip was undone): the error is history.
            self.clear_error(slot);
            return ReloadOutcome::Unchanged;
        }
        if !retry_bad && self.lock(slot).failed.as_ref() == Some(&identity) {
            return ReloadOutcome::KnownBad;
        }

        let started = Instant::now();
        let kept = slot.kept.load().iter().find(|b| identity.matches(b)).cloned();
        let bundle = match kept {
            Some(bundle) => bundle,
            None => match self.load(task, &identity).await {
                Ok(bundle) => bundle,
                Err(error) => return self.fail(task, slot, Some(identity), error),
            },
        };
        let took = started.elapsed();
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
        self.inner.changed_tx.send_modify(|n| *n += 1);
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
            // Fire and forget: the loader drops them between loads.
            let _ = self.inner.loader.jobs_tx.send(Box::new(move || drop(unused)));
        }
    }

    /// Loads and checks one candidate on a blocking thread; counts its load time.
    async fn load(&self, task: &str, identity: &Identity) -> Result<Arc<Bundle>, ReloadError> {
        let started = Instant::now();
        let dir = identity.path.clone();
        let options = self.inner.options.load;
        let loaded = self.inner.loader.run(move || Bundle::load(&dir, &options)).await?;
        self.inner.metrics.load_seconds.with_label_values(&[task]).observe(started.elapsed().as_secs_f64());
        let bundle = loaded.map_err(|source| ReloadError::Bundle { path: identity.path.clone(), source })?;
        if let Some(found) = bundle.config.task.as_deref().filter(|t| *t != task) {
            return Err(ReloadError::WrongTask {
                path: identity.path.clone(),
                task: task.to_owned(),
                found: found.to_owned(),
            });
        }
        Ok(Arc::new(bundle))
    }

    /// Brings the kept versions of `task` in line with the configuration and the directories
    /// present. A kept version that fails to load is logged and counted; it never affects the
    /// live version or readiness.
    async fn sync_kept(&self, task: &str, slot: &Task, retry_bad: bool) {
        let wanted = self.wanted_versions(task);
        let live = slot.live.load_full();
        let current = slot.kept.load_full();
        let mut next: Vec<Arc<Bundle>> = Vec::with_capacity(wanted.len());
        for identity in wanted {
            if live.as_ref().is_some_and(|b| identity.matches(b)) {
                continue; // the live bundle answers for this version already
            }
            let reusable = current.iter().find(|b| identity.matches(b)).cloned().or_else(|| {
                let retired = self.inner.retired.lock().unwrap_or_else(|p| p.into_inner());
                retired.iter().find(|b| identity.matches(b)).cloned()
            });
            if let Some(b) = reusable {
                next.push(b);
                continue;
            }
            if !retry_bad && self.lock(slot).failed_kept.contains(&identity) {
                continue;
            }
            match self.load(task, &identity).await {
                Ok(bundle) => {
                    tracing::info!(task, version = %bundle.version, path = %bundle.path.display(), "version kept warm");
                    self.lock(slot).failed_kept.retain(|i| i != &identity);
                    next.push(bundle);
                }
                Err(error) => {
                    self.inner.metrics.reloads.with_label_values(&[task, "failure"]).inc();
                    tracing::warn!(task, error = %error, result = "failure", "version to keep warm rejected");
                    let mut status = self.lock(slot);
                    if !status.failed_kept.contains(&identity) {
                        status.failed_kept.push(identity);
                    }
                }
            }
        }
        let same = next.len() == current.len() && next.iter().zip(current.iter()).all(|(a, b)| Arc::ptr_eq(a, b));
        if !same {
            let replaced = slot.kept.swap(Arc::new(next));
            for old in replaced.iter().filter(|b| !slot.kept.load().iter().any(|n| Arc::ptr_eq(n, b))) {
                self.retire(old.clone());
            }
            self.inner.changed_tx.send_modify(|n| *n += 1);
        }
        let loaded = i64::from(slot.live.load().is_some()) + slot.kept.load().len() as i64;
        self.inner.metrics.loaded_versions.with_label_values(&[task]).set(loaded);
    }

    /// Identities of the version directories the configuration asks to keep, in name order.
    fn wanted_versions(&self, task: &str) -> Vec<Identity> {
        let options = &self.inner.options;
        let dir = self.inner.root.join(task);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n != CURRENT && !n.starts_with('.') && !n.ends_with(".tmp"))
            .filter(|n| dir.join(n).is_dir())
            .collect();
        names.sort_by(|a, b| natural_cmp(a, b));
        let recent_from = names.len().saturating_sub(options.keep_recent);
        names
            .iter()
            .enumerate()
            .filter(|(i, n)| *i >= recent_from || options.keep_versions.contains(n))
            .filter_map(|(_, n)| identify(&dir.join(n)).ok())
            .collect()
    }

    fn fail(&self, task: &str, slot: &Task, identity: Option<Identity>, error: ReloadError) -> ReloadOutcome {
        let error = Arc::new(error);
        {
            let mut status = self.lock(slot);
            // A missing link is not a candidate: keep looking without counting it again and again.
            let repeated = identity.is_none()
                && status.failed.is_none()
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
        self.inner.changed_tx.send_modify(|n| *n += 1);
        ReloadOutcome::Failed(error)
    }

    fn clear_error(&self, slot: &Task) {
        let mut status = self.lock(slot);
        if status.last_error.take().is_some() {
            status.failed = None;
            drop(status);
            self.inner.changed_tx.send_modify(|n| *n += 1);
        }
    }

    fn lock<'a>(&self, slot: &'a Task) -> std::sync::MutexGuard<'a, Status> {
        // Status is plain data; a panic while holding it cannot leave it inconsistent.
        slot.status.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The loader thread: runs load jobs one at a time at the lowest CPU priority. It ends when
/// the registry (its only sender) is dropped.
struct Loader {
    jobs_tx: std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>,
}

impl Loader {
    fn spawn() -> Loader {
        let (jobs_tx, jobs_rx) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
        std::thread::Builder::new()
            .name("modeld-loader".into())
            .spawn(move || {
                // Nice 19, per thread on Linux: requests win the CPU whenever they want it, yet a
                // load still progresses on a saturated pod (SCHED_IDLE could starve it for good).
                use thread_priority::{ThreadPriority, set_current_thread_priority};
                if let Err(error) = set_current_thread_priority(ThreadPriority::Min) {
                    tracing::warn!(?error, "cannot lower the loader thread's priority; loads compete with requests");
                }
                for job in jobs_rx {
                    job();
                }
            })
            .expect("spawning the loader thread at start-up cannot fail");
        Loader { jobs_tx }
    }

    async fn run<T: Send + 'static>(&self, job: impl FnOnce() -> T + Send + 'static) -> Result<T, ReloadError> {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let job = Box::new(move || {
            let _ = done_tx.send(job());
        });
        self.jobs_tx.send(job).map_err(|_| ReloadError::LoaderGone)?;
        done_rx.await.map_err(|_| ReloadError::LoaderGone)
    }
}

impl Identity {
    fn matches(&self, bundle: &Bundle) -> bool {
        bundle.path == self.path && self.manifest_sha256.as_deref() == Some(bundle.manifest_sha256.as_str())
    }
}

/// Orders version names so that `v2` < `v10`: digit runs compare by value.
fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let (mut a, mut b) = (a, b);
    loop {
        match (a.chars().next(), b.chars().next()) {
            (None, None) => return std::cmp::Ordering::Equal,
            (None, Some(_)) => return std::cmp::Ordering::Less,
            (Some(_), None) => return std::cmp::Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let da = a.len() - a.trim_start_matches(|c: char| c.is_ascii_digit()).len();
                let db = b.len() - b.trim_start_matches(|c: char| c.is_ascii_digit()).len();
                let (na, nb) = (a[..da].trim_start_matches('0'), b[..db].trim_start_matches('0'));
                let order = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
                if order != std::cmp::Ordering::Equal {
                    return order;
                }
                (a, b) = (&a[da..], &b[db..]);
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(&y);
                }
                (a, b) = (&a[x.len_utf8()..], &b[y.len_utf8()..]);
            }
        }
    }
}

/// Resolves the link and hashes the candidate's manifest (small: one line per file).
/// A missing manifest is left to the full load to report.
fn identify(link: &Path) -> std::io::Result<Identity> {
    let path = link.canonicalize()?;
    if !path.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            format!("{} is not a directory", path.display()),
        ));
    }
    let manifest_sha256 =
        std::fs::read(path.join(crate::bundle::manifest::MANIFEST)).ok().map(|bytes| sha256_hex(&bytes));
    Ok(Identity { path, manifest_sha256 })
}

#[cfg(test)]
mod tests {
    use super::natural_cmp;

    #[test]
    fn versions_sort_naturally() {
        let mut v = vec!["v10", "v2", "v1", "v2b", "v02"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(v, ["v1", "v2", "v02", "v2b", "v10"]);
    }
}
