//! The loader thread, and loading one candidate bundle on it.
//!
//! Loads run one at a time on a dedicated thread at the lowest CPU priority, so a candidate's
//! checks and warm-up never stall the async workers and, on a small pod, yield the CPU to
//! serving threads (a reload under full load takes longer; requests do not). Retired bundles
//! are freed on the same thread, between loads.

use std::{path::PathBuf, sync::Arc, time::Instant};

use crate::{
    bundle::{Bundle, BundleError, LoadOptions, manifest::Identity},
    telemetry::Metrics,
};

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

type Job = Box<dyn FnOnce() + Send>;

/// Handle to the loader thread. The thread ends when its handle (the registry's only sender)
/// is dropped.
pub struct Loader {
    jobs_tx: std::sync::mpsc::Sender<Job>,
}

impl Loader {
    /// Starts the loader thread.
    pub fn spawn() -> Loader {
        let (jobs_tx, jobs_rx) = std::sync::mpsc::channel::<Job>();
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

    /// Loads and checks the candidate `identity` for `task` on the loader thread; counts its
    /// load time. `named_task`: the bundle's config must name `task` if it names one (off in
    /// single-bundle mode, where the served name is the deployment's, not the bundle's).
    pub async fn load(
        &self,
        task: &str,
        identity: &Identity,
        options: LoadOptions,
        metrics: &Metrics,
        named_task: bool,
    ) -> Result<Arc<Bundle>, ReloadError> {
        let started = Instant::now();
        let dir = identity.path.clone();
        let loaded = self.run(move || Bundle::load(&dir, &options)).await?;
        metrics.load_seconds.with_label_values(&[task]).observe(started.elapsed().as_secs_f64());
        let bundle = loaded.map_err(|source| ReloadError::Bundle { path: identity.path.clone(), source })?;
        if let Some(found) = bundle.config.task.as_deref().filter(|t| named_task && *t != task) {
            return Err(ReloadError::WrongTask {
                path: identity.path.clone(),
                task: task.to_owned(),
                found: found.to_owned(),
            });
        }
        metrics.drift.watch(task, &bundle.drift);
        Ok(Arc::new(bundle))
    }

    /// Drops `garbage` on the loader thread: freeing a model (its sessions and arenas) takes a
    /// while, and must not land on a request or the reload loop. Fire and forget.
    pub fn free<T: Send + 'static>(&self, garbage: T) {
        let _ = self.jobs_tx.send(Box::new(move || drop(garbage)));
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
