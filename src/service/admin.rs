//! The admin HTTP face: `/healthz`, `/readyz`, `/metrics`, `/model/version`, `/rollout/{task}`.
//!
//! On its own port so that scraping and probing never queue behind inference traffic.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use serde::Serialize;

use super::{health::Readiness, layers::CallTracker};
use crate::{registry::Registry, rollout::Diffs, telemetry::Metrics};

#[derive(Clone)]
struct Admin {
    registry: Registry,
    readiness: Readiness,
    metrics: Metrics,
    calls: CallTracker,
    diffs: Arc<Diffs>,
}

/// The admin router. `calls` is the gRPC server's call tracker, read at scrape time; `diffs`
/// the shadow comparisons so far.
pub fn router(
    registry: Registry,
    readiness: Readiness,
    metrics: Metrics,
    calls: CallTracker,
    diffs: Arc<Diffs>,
) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/model/version", get(model_version))
        .route("/rollout/{task}", get(rollout))
        .with_state(Admin { registry, readiness, metrics, calls, diffs })
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
    /// What computes the live version's scores: "native tree ensemble, ..." or "ONNX Runtime (why)".
    evaluator: Option<String>,
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
                evaluator: b.map(|b| b.evaluator().to_owned()),
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

/// `GET /rollout/{task}`: the live rollout policy (versions by directory and version string,
/// split buckets), why the policy file is refused if it is, and the decision diff so far.
async fn rollout(State(admin): State<Admin>, Path(task): Path<String>) -> axum::response::Response {
    let Some(report) = admin.registry.report(&task) else {
        let body = serde_json::json!({ "error": format!("unknown task `{}`", crate::schema::Echo(&task)) });
        return (StatusCode::NOT_FOUND, Json(body)).into_response();
    };
    let policy = report.policy.as_deref().map(|p| {
        let since = p.since.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        serde_json::json!({
            "sha256": p.sha256,
            "since_unix_ms": since,
            "sticky_by": (!p.policy.split.is_empty()).then(|| p.policy.sticky_by.name()),
            "shadow": p.policy.shadow.iter()
                .map(|d| serde_json::json!({ "directory": d, "version": p.version_of(d) }))
                .collect::<Vec<_>>(),
            "split": p.policy.split.iter()
                .map(|s| serde_json::json!({
                    "directory": s.version,
                    "version": p.version_of(&s.version),
                    "weight": s.weight,
                    "buckets": [s.buckets.start, s.buckets.end],
                }))
                .collect::<Vec<_>>(),
        })
    });
    let (pairs, dropped) = admin.diffs.report(&task);
    let body = serde_json::json!({
        "task": report.task,
        "live_version": report.live.as_ref().map(|b| b.version.clone()),
        "loaded_versions": report.loaded_versions(),
        "policy": policy,
        "policy_error": report.policy_error,
        "diff": pairs,
        "shadow_dropped": dropped,
    });
    Json(body).into_response()
}
