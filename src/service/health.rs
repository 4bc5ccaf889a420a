//! Readiness: one rule behind grpc.health.v1, `/readyz` and the `Health` RPC.
//!
//! Ready = every configured task has a live bundle and shutdown has not begun. The gRPC health
//! statuses (for "" and for `modeld.v1.Inference`) follow registry changes through a small
//! owned task; shutdown flips them to NOT_SERVING at once.
//!
//! Liveness is a separate name, [`LIVENESS_SERVICE`], SERVING from start-up on: a process
//! waiting for its first good bundle is alive, and restarting it would not help.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{pb, registry::Registry};

/// Shared readiness state. Cloning is shallow.
#[derive(Clone)]
pub struct Readiness {
    registry: Registry,
    draining: Arc<AtomicBool>,
    drain: CancellationToken,
    reporter: HealthReporter,
}

/// The gRPC service name of the inference API, as health checks name it.
pub const INFERENCE_SERVICE: &str = pb::inference_server::SERVICE_NAME;

/// The grpc.health.v1 service name for liveness probes.
pub const LIVENESS_SERVICE: &str = "liveness";

impl Readiness {
    /// Readiness starts NOT_SERVING (unless every task is live already); liveness is SERVING
    /// before this returns.
    pub async fn new(registry: Registry, reporter: HealthReporter) -> Readiness {
        reporter.set_service_status(LIVENESS_SERVICE, ServingStatus::Serving).await;
        let readiness = Readiness {
            registry,
            draining: Arc::new(AtomicBool::new(false)),
            drain: CancellationToken::new(),
            reporter,
        };
        readiness.publish().await;
        readiness
    }

    /// True when every task serves and shutdown has not begun.
    pub fn is_ready(&self) -> bool {
        !self.is_draining() && self.registry.all_live()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Marks the daemon as shutting down and reports NOT_SERVING right away.
    pub async fn begin_drain(&self) {
        self.draining.store(true, Ordering::Release);
        self.drain.cancel();
        self.publish().await;
    }

    /// Resolves when shutdown begins: streams finish the chunk in hand and end.
    pub async fn drained(&self) {
        self.drain.cancelled().await
    }

    async fn publish(&self) {
        let status = if self.is_ready() { ServingStatus::Serving } else { ServingStatus::NotServing };
        for name in ["", INFERENCE_SERVICE] {
            self.reporter.set_service_status(name, status).await;
        }
    }

    /// Keeps the gRPC health statuses in step with the registry until `cancel` fires.
    pub fn spawn_sync(&self, cancel: CancellationToken) -> JoinHandle<()> {
        let readiness = self.clone();
        let mut changed_rx = self.registry.subscribe();
        tokio::spawn(async move {
            loop {
                readiness.publish().await;
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    changed = changed_rx.changed() => if changed.is_err() { break },
                }
            }
        })
    }
}
