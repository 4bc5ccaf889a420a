//! The daemon as a process: SIGTERM drains in-flight requests and exits 0; SIGHUP reloads.

mod common;

use std::process::Command;

use common::*;
use modeld::service::pb::inference_client::InferenceClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

fn spawn_daemon(root: &std::path::Path, env: &[(&str, &str)]) -> Daemon {
    let mut command = Command::new(env!("CARGO_BIN_EXE_modeld"));
    command
        .arg("serve")
        .env("MODELD_MODEL_ROOT", root)
        .env("MODELD_TASKS", TASK)
        .env("MODELD_GRPC_ADDR", "127.0.0.1:0")
        .env("MODELD_ADMIN_ADDR", "127.0.0.1:0")
        .env("MODELD_CONFIG", "/dev/null")
        .env("MODELD_LOG_FORMAT", "json")
        .envs(env.iter().copied());
    Daemon::spawn(command)
}

#[tokio::test]
async fn sighup_reloads_when_polling_is_slow_and_events_are_off() {
    let root = model_root(Some("v2"));
    let mut daemon =
        spawn_daemon(root.path(), &[("MODELD_WATCH_EVENTS", "false"), ("MODELD_POLL_INTERVAL_MS", "3600000")]);
    let admin = daemon.admin;
    let version = || async move {
        let body = http_get(admin, "/model/version").await.1;
        serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["tasks"][0]["version"].as_str().map(str::to_owned))
    };
    eventually("v2 live", || async { version().await.as_deref() == Some("v2") }).await;
    point_current(root.path(), "v1");
    signal(&daemon.child, "HUP");
    eventually("v1 live after SIGHUP", || async { version().await.as_deref() == Some("v1") }).await;
    signal(&daemon.child, "TERM");
    assert!(daemon.child.wait().unwrap().success());
    drop(daemon.log);
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish() {
    let root = model_root(Some("v1"));
    let Daemon { mut child, grpc, admin, log } = spawn_daemon(root.path(), &[("MODELD_INFERENCE_THREADS", "1")]);
    let log_lines = std::thread::spawn(move || log.map_while(Result::ok).collect::<Vec<_>>());
    eventually("ready", || async move { http_get(admin, "/readyz").await.0 == 200 }).await;

    // Requests big enough to take a while, all in flight at once on one inference thread.
    const CALLS: usize = 6;
    let rows: Vec<_> = golden("v1").iter().map(|g| to_pb(&g.row)).cycle().take(4_000).collect();
    let channel = tonic::transport::Channel::from_shared(format!("http://{grpc}")).unwrap().connect().await.unwrap();
    let calls: Vec<_> = (0..CALLS)
        .map(|_| {
            let mut client = InferenceClient::new(channel.clone()).max_decoding_message_size(64 << 20);
            let req = predict_request(rows.clone());
            tokio::spawn(async move { client.predict(req).await })
        })
        .collect();
    // Every call has reached its handler, and at least one is still running.
    eventually("calls in flight", || async move {
        let text = http_get(admin, "/metrics").await.1;
        let running = metric_value(&text, "modeld_requests_in_flight", &[("method", "Predict")]).unwrap_or(0.0);
        let done = metric_value(&text, "modeld_requests_total", &[("method", "Predict")]).unwrap_or(0.0);
        running >= 1.0 && running + done >= CALLS as f64
    })
    .await;

    // Opened before the signal: a draining server takes no new connections, and after the
    // NOT_SERVING answer no new calls either.
    let health = HealthClient::new(channel.clone());
    signal(&child, "TERM");
    eventually("readiness NOT_SERVING once draining", || {
        let mut health = health.clone();
        async move { status_of(&mut health, "").await == Some(ServingStatus::NotServing) }
    })
    .await;

    for call in calls {
        let resp = call.await.unwrap().expect("an in-flight call completes during drain");
        assert_eq!(resp.get_ref().predictions.len(), rows.len());
        assert_eq!(resp.get_ref().version, "v1");
    }
    let status = child.wait().unwrap();
    let lines = log_lines.join().unwrap();
    assert!(status.success(), "exit status {status:?}; log:\n{}", lines.join("\n"));
    assert!(lines.iter().any(|l| l.contains("drained: every in-flight call finished")), "{}", lines.join("\n"));
}

async fn status_of(health: &mut HealthClient<tonic::transport::Channel>, service: &str) -> Option<ServingStatus> {
    let resp = health.check(HealthCheckRequest { service: service.into() }).await.ok()?;
    Some(resp.into_inner().status())
}
