//! The process's signals: the first SIGTERM or SIGINT starts the shutdown; SIGHUP asks for a
//! reload.

use tokio_util::sync::CancellationToken;

/// Resolves on SIGTERM (what Kubernetes sends) or SIGINT (Ctrl-C).
pub async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler at start-up cannot fail");
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutdown requested"),
        _ = tokio::signal::ctrl_c() => tracing::info!(signal = "SIGINT", "shutdown requested"),
    }
}

/// Calls `reload` on every SIGHUP (a polled file system, an impatient operator) until `cancel`
/// fires.
pub async fn on_hangup(cancel: CancellationToken, reload: impl Fn()) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reloads follow events and polling only");
        return;
    };
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
