//! The single reload loop, the one place that calls [`Registry::reload`], and what triggers it.
//!
//! Triggers only *signal* the loop; it decides what to load:
//! - file events (notify/inotify) on every task directory and on the directory `current`
//!   resolves to; the watches are re-armed after every reload, so they follow link flips and
//!   renames;
//! - a poll tick, which re-resolves every `current` link: the fallback for file systems that
//!   send no events (NFS, some volume drivers), and a safety net for missed events;
//! - explicit [`Reload`] signals (SIGHUP, operators).
//!
//! Signals are debounced, then reload every task and retry candidates that failed before, in
//! case they were repaired in place. A poll tick does not retry an unchanged bad candidate, so a
//! broken release is reported once instead of on every tick.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::Duration,
};

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use super::{CURRENT, Registry};

/// Every this many poll ticks, candidates that failed before are loaded again.
const BAD_RETRY_TICKS: u64 = 15;

/// A request to look at the `current` links now.
#[derive(Debug, Clone, Copy)]
pub struct Reload;

/// Timing and triggers of the reload loop.
#[derive(Debug, Clone, Copy)]
pub struct ReloadTiming {
    /// Interval between polls of the `current` links.
    pub poll: Duration,
    /// Quiet time after a signal before reloading, so a burst of events causes one reload.
    pub debounce: Duration,
    /// Whether to watch for file events besides polling.
    pub events: bool,
}

/// Starts the reload loop. It loads every task at once, then follows events, polls and signals
/// until `cancel` fires.
pub fn spawn(
    registry: Registry,
    timing: ReloadTiming,
    cancel: CancellationToken,
) -> (mpsc::Sender<Reload>, JoinHandle<()>) {
    // One pending signal is enough: a reload looks at every task anyway.
    let (reload_tx, reload_rx) = mpsc::channel(1);
    let events = timing.events.then(|| EventWatch::new(reload_tx.clone())).flatten();
    let handle = tokio::spawn(run(registry, timing, events, reload_rx, cancel));
    (reload_tx, handle)
}

async fn run(
    registry: Registry,
    timing: ReloadTiming,
    mut events: Option<EventWatch>,
    mut reload_rx: mpsc::Receiver<Reload>,
    cancel: CancellationToken,
) {
    reload_all(&registry, true, events.as_mut()).await;
    let mut poll = tokio::time::interval(timing.poll);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    poll.reset();
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            Some(Reload) = reload_rx.recv() => {
                // Debounce: keep absorbing signals until none arrives for `debounce`.
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(timing.debounce) => break,
                        Some(Reload) = reload_rx.recv() => {}
                    }
                }
                reload_all(&registry, true, events.as_mut()).await;
            }
            _ = poll.tick() => {
                ticks += 1;
                // Now and then a tick retries known-bad candidates: without file events, a bundle
                // repaired in place (same manifest, fixed file) is only noticed this way.
                reload_all(&registry, ticks % BAD_RETRY_TICKS == 0, events.as_mut()).await;
            }
        }
    }
}

async fn reload_all(registry: &Registry, retry_bad: bool, events: Option<&mut EventWatch>) {
    let tasks: Vec<String> = registry.tasks().map(str::to_owned).collect();
    for task in &tasks {
        // Failures are logged and counted by the registry; the other tasks go on regardless.
        registry.reload(task, retry_bad).await;
    }
    registry.free_retired();
    if let Some(events) = events {
        events.arm(registry.root(), &tasks);
    }
}

/// File-event watches that send [`Reload`] on any change.
struct EventWatch {
    watcher: RecommendedWatcher,
    watched: BTreeSet<PathBuf>,
}

impl EventWatch {
    /// `None` (polling only) if the platform refuses a watcher, e.g. when out of inotify instances.
    fn new(reload_tx: mpsc::Sender<Reload>) -> Option<EventWatch> {
        let handler = move |event: notify::Result<notify::Event>| {
            if event.is_ok_and(|e| !matches!(e.kind, EventKind::Access(_))) {
                // A full channel already holds a pending reload: nothing is lost.
                let _ = reload_tx.try_send(Reload);
            }
        };
        match notify::recommended_watcher(handler) {
            Ok(watcher) => Some(EventWatch { watcher, watched: BTreeSet::new() }),
            Err(error) => {
                tracing::warn!(%error, "file events unavailable; relying on polling");
                None
            }
        }
    }

    /// Watches each task directory (where `current` is flipped) and the directory it resolves
    /// to (where a bundle may be repaired in place); drops watches that are no longer wanted.
    fn arm(&mut self, root: &Path, tasks: &[String]) {
        let mut wanted = BTreeSet::new();
        for task in tasks {
            let dir = root.join(task);
            if dir.is_dir() {
                if let Ok(target) = dir.join(CURRENT).canonicalize() {
                    wanted.insert(target);
                }
                wanted.insert(dir);
            } else {
                // The task directory may appear later: watch its parent until then.
                wanted.insert(root.to_owned());
            }
        }
        // Only changes are applied: re-adding a live watch would be churn for nothing. A directory
        // replaced under the same name loses its watch until the set changes; polling covers it.
        for gone in self.watched.difference(&wanted) {
            let _ = self.watcher.unwatch(gone);
        }
        self.watched.retain(|p| wanted.contains(p));
        for path in wanted {
            if self.watched.contains(&path) {
                continue;
            }
            match self.watcher.watch(&path, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.watched.insert(path);
                }
                Err(error) => tracing::debug!(path = %path.display(), %error, "cannot watch; polling covers it"),
            }
        }
    }
}
