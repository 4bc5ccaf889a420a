//! The process's signals: the first SIGTERM or SIGINT starts the shutdown; SIGHUP asks for a
//! reload.

use tokio::signal::unix::{Signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// A future that resolves on SIGTERM (what Kubernetes sends) or SIGINT (Ctrl-C). The handlers
/// are installed when this is called, not when the future is first polled: a signal that
/// arrives as soon as the daemon says it is listening must start a drain, not kill the process.
/// Call it inside the runtime.
pub fn signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::signal;
    let installed = "installing a signal handler at start-up cannot fail";
    let mut term = signal(SignalKind::terminate()).expect(installed);
    let mut interrupt = signal(SignalKind::interrupt()).expect(installed);
    async move {
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutdown requested"),
            _ = interrupt.recv() => tracing::info!(signal = "SIGINT", "shutdown requested"),
        }
    }
}

/// SIGHUP, caught from now on (its default action would end the process); None if the handler
/// cannot be installed. Call it inside the runtime, before the daemon says it is listening.
pub fn hangups() -> Option<Signal> {
    let hangup = tokio::signal::unix::signal(SignalKind::hangup());
    if hangup.is_err() {
        tracing::warn!("cannot listen for SIGHUP; reloads follow events and polling only");
    }
    hangup.ok()
}

/// Calls `reload` on every SIGHUP (a polled file system, an impatient operator) until `cancel`
/// fires.
pub async fn on_hangup(mut hangup: Signal, cancel: CancellationToken, reload: impl Fn()) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(()) = hangup.recv() => {
                tracing::info!(signal = "SIGHUP", "reload requested");
                reload();
            }
        }
    }
}
