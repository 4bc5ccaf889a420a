//! The admin HTTP face: `/healthz`, `/readyz`, `/metrics`, `/model/version`.
//!
//! On its own port so that scraping and probing never queue behind inference traffic.

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use serde::Serialize;

use super::{health::Readiness, layers::CallTracker};
use crate::{registry::Registry, telemetry::Metrics};

#[derive(Clone)]
struct Admin {
    registry: Registry,
    readiness: Readiness,
    metrics: Metrics,
    calls: CallTracker,
}

/// The admin router. `calls` is the gRPC server's call tracker, read at scrape time.
pub fn router(registry: Registry, readiness: Readiness, metrics: Metrics, calls: CallTracker) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/model/version", get(model_version))
        .with_state(Admin { registry, readiness, metrics, calls })
}

#[derive(Serialize)]
struct TaskVersion {
    task: String,
    serving: bool,
    version: Option<String>,
    bundle_path: Option<String>,
    manifest_sha256: Option<String>,
    loaded_at_unix_ms: Option<u128>,
    model_type: Option<String>,
    class_names: Option<Vec<String>>,
    evaluation: Option<serde_json::Value>,
    last_error: Option<String>,
}

fn task_versions(admin: &Admin) -> Vec<TaskVersion> {
    let draining = admin.readiness.is_draining();
    admin
        .registry
        .reports()
        .into_iter()
        .map(|r| {
            let b = r.live.as_deref();
            TaskVersion {
                serving: b.is_some() && !draining,
                version: b.map(|b| b.version.clone()),
                bundle_path: b.map(|b| b.path.display().to_string()),
                manifest_sha256: b.map(|b| b.manifest_sha256.clone()),
                loaded_at_unix_ms: b
                    .and_then(|b| b.loaded_at.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_millis()),
                model_type: b.map(|b| b.config.model_type.clone()),
                class_names: b.map(|b| b.class_labels().to_vec()),
                evaluation: b.and_then(|b| serde_json::from_str(&b.evaluation_json).ok()),
                last_error: r.last_error.map(|e| e.to_string()),
                task: r.task,
            }
        })
        .collect()
}

async fn readyz(State(admin): State<Admin>) -> impl IntoResponse {
    let ready = admin.readiness.is_ready();
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = serde_json::json!({
        "ready": ready,
        "draining": admin.readiness.is_draining(),
        "tasks": task_versions(&admin)
            .into_iter()
            .map(|t| serde_json::json!({"task": t.task, "serving": t.serving, "version": t.version, "last_error": t.last_error}))
            .collect::<Vec<_>>(),
    });
    (code, Json(body))
}

async fn metrics_text(State(admin): State<Admin>) -> impl IntoResponse {
    admin.metrics.calls_open.set(admin.calls.open() as i64);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], admin.metrics.render())
}

async fn model_version(State(admin): State<Admin>) -> impl IntoResponse {
    Json(serde_json::json!({ "tasks": task_versions(&admin) }))
}
