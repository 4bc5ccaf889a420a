//! The single reload loop: the one place that calls [`Registry::reload`].
//!
//! Triggers only *signal* this loop; it decides what to load. A poll tick re-resolves every
//! task's `current` link, which also covers file systems that send no change events. An
//! explicit [`Reload`] signal (file events, SIGHUP, an operator) is debounced, then reloads every
//! task and retries candidates that failed before, in case they were repaired in place.

use std::time::Duration;

use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use super::Registry;

/// A request to look at the `current` links now.
#[derive(Debug, Clone, Copy)]
pub struct Reload;

/// Timing of the reload loop.
#[derive(Debug, Clone, Copy)]
pub struct ReloadTiming {
    /// Interval between polls of the `current` links.
    pub poll: Duration,
    /// Quiet time after a signal before reloading, so a burst of events causes one reload.
    pub debounce: Duration,
}

/// Starts the reload loop. It loads every task at once, then follows polls and signals until
/// `cancel` fires. Dropping every sender leaves polling on.
pub fn spawn(
    registry: Registry,
    timing: ReloadTiming,
    cancel: CancellationToken,
) -> (mpsc::Sender<Reload>, JoinHandle<()>) {
    // One pending signal is enough: a reload looks at every task anyway.
    let (reload_tx, reload_rx) = mpsc::channel(1);
    let handle = tokio::spawn(run(registry, timing, reload_rx, cancel));
    (reload_tx, handle)
}

async fn run(
    registry: Registry,
    timing: ReloadTiming,
    mut reload_rx: mpsc::Receiver<Reload>,
    cancel: CancellationToken,
) {
    reload_all(&registry, true).await;
    let mut poll = tokio::time::interval(timing.poll);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    poll.reset();
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            _ = poll.tick() => reload_all(&registry, false).await,
            Some(Reload) = reload_rx.recv() => {
                // Debounce: keep absorbing signals until none arrives for `debounce`.
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(timing.debounce) => break,
                        Some(Reload) = reload_rx.recv() => {}
                    }
                }
                reload_all(&registry, true).await;
            }
        }
    }
}

async fn reload_all(registry: &Registry, retry_bad: bool) {
    let tasks: Vec<String> = registry.tasks().map(str::to_owned).collect();
    for task in tasks {
        // Failures are logged and counted by the registry; the other tasks go on regardless.
        registry.reload(&task, retry_bad).await;
    }
}
