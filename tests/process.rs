//! The daemon as a process: SIGTERM drains in-flight requests and exits 0; SIGHUP reloads.

mod common;

use std::time::Duration;

use common::*;
use modeld::pb::{self, inference_client::InferenceClient};
use tokio::sync::oneshot;
use tonic::transport::Endpoint;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

#[tokio::test]
async fn sighup_reloads_when_polling_is_slow_and_events_are_off() {
    let root = model_root(Some("v2"));
    let mut daemon =
        Daemon::serve(root.path(), &[("MODELD_WATCH_EVENTS", "false"), ("MODELD_POLL_INTERVAL_MS", "3600000")]);
    let log = daemon.collect_log();
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
    let status = daemon.child.wait().unwrap();
    assert!(status.success(), "exit {status:?}; log:\n{}", log.join().unwrap().join("\n"));
}

fn calls_open(metrics: &str) -> f64 {
    metric_value(metrics, "modeld_grpc_calls_open", &[]).unwrap_or(0.0)
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish() {
    let root = model_root(Some("v1"));
    // A long grace period: the test, not the clock, decides when in-flight work finishes.
    let mut daemon =
        Daemon::serve(root.path(), &[("MODELD_INFERENCE_THREADS", "1"), ("MODELD_SHUTDOWN_GRACE_MS", "60000")]);
    let log_lines = daemon.collect_log();
    let (grpc, admin) = (daemon.grpc, daemon.admin);
    eventually("ready", || async move { http_get(admin, "/readyz").await.0 == 200 }).await;
    let golden_rows: Vec<pb::Row> = golden("v1").iter().map(|g| to_pb(&g.row)).collect();

    // A health Watch opened before the signal, read as it arrives. It stays open to the end:
    // an open Watch must not hold up the drain.
    let channel = Endpoint::from_shared(format!("http://{grpc}")).unwrap().connect().await.unwrap();
    let mut watch = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    // gRPC health follows the registry a moment after /readyz does: wait for SERVING.
    let serving = async { while watch.message().await.unwrap().unwrap().status() != ServingStatus::Serving {} };
    tokio::time::timeout(Duration::from_secs(20), serving).await.expect("the Watch reports SERVING");
    let (not_serving_tx, not_serving_rx) = oneshot::channel();
    let watcher = tokio::spawn(async move {
        let mut not_serving_tx = Some(not_serving_tx);
        while let Ok(Some(update)) = watch.message().await {
            if update.status() == ServingStatus::NotServing {
                not_serving_tx.take().map(|tx| tx.send(()));
            }
        }
    });

    let held = HalfSentCall::start(grpc, &predict_request(golden_rows[..1].to_vec()), &[]).await;
    eventually(
        "the half-sent call is in flight",
        || async move { calls_open(&http_get(admin, "/metrics").await.1) >= 1.0 },
    )
    .await;

    // Unary requests big enough to take a while, all in flight at once on one inference thread.
    const CALLS: usize = 6;
    let rows: Vec<_> = golden_rows.iter().cycle().take(4_000).cloned().collect();
    let calls: Vec<_> = (0..CALLS)
        .map(|_| {
            let mut client = InferenceClient::new(channel.clone()).max_decoding_message_size(64 << 20);
            let req = predict_request(rows.clone());
            tokio::spawn(async move { client.predict(req).await })
        })
        .collect();
    eventually("calls in flight", || async move {
        let text = http_get(admin, "/metrics").await.1;
        let running = metric_value(&text, "modeld_requests_in_flight", &[("method", "Predict")]).unwrap_or(0.0);
        let done = metric_value(&text, "modeld_requests_total", &[("method", "Predict")]).unwrap_or(0.0);
        running + done >= CALLS as f64
    })
    .await;

    signal(&daemon.child, "TERM");
    // Readiness flips first, while the admin port still answers: the half-sent call keeps the
    // drain open until the test finishes it.
    eventually("/readyz 503 while draining", || async move {
        let (status, body) = http_get(admin, "/readyz").await;
        status == 503 && body.contains("\"draining\":true")
    })
    .await;
    tokio::time::timeout(Duration::from_secs(20), not_serving_rx)
        .await
        .expect("the Watch opened before the signal reports NOT_SERVING")
        .expect("the watcher is still reading");
    assert!(calls_open(&http_get(admin, "/metrics").await.1) >= 1.0, "the drain waits for the half-sent call");

    for call in calls {
        let resp = call.await.unwrap().expect("an in-flight call completes during drain");
        assert_eq!(resp.get_ref().predictions.len(), rows.len());
        assert_eq!(resp.get_ref().version, "v1");
    }
    let (answer, grpc_status) = held.finish().await;
    assert_eq!(grpc_status, "0", "the held call is answered OK");
    assert_eq!((answer.version.as_str(), answer.predictions.len()), ("v1", 1));

    let status = daemon.child.wait().unwrap();
    let lines = log_lines.join().unwrap().join("\n");
    assert!(status.success(), "exit status {status:?}; log:\n{lines}");
    assert!(lines.contains("drained: every in-flight call finished"), "{lines}");
    watcher.await.unwrap();
}

/// Signals that arrive the moment the daemon says it listens are handled (SIGHUP's default action
/// would end the process, SIGTERM's would skip the drain), and a text log written to a pipe is
/// plain text for a log shipper.
#[test]
fn signals_right_after_listening_are_handled_and_piped_text_logs_are_plain() {
    let root = model_root(Some("v2"));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_modeld"))
        .arg("serve")
        .env("MODELD_MODEL_ROOT", root.path())
        .env("MODELD_TASKS", TASK)
        .env("MODELD_GRPC_ADDR", "127.0.0.1:0")
        .env("MODELD_ADMIN_ADDR", "127.0.0.1:0")
        .env("MODELD_HTTP_ADDR", "127.0.0.1:0")
        .env("MODELD_CONFIG", "/dev/null")
        .env("MODELD_LOG_FORMAT", "text")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stderr.take().unwrap()));
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("listening")) {
        seen.push(lines.next().expect("the daemon logs until it listens").unwrap());
    }
    signal(&child, "HUP");
    signal(&child, "TERM");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(child.wait().unwrap().success());
    let all: Vec<&String> = seen.iter().chain(&rest).collect();
    assert!(all.iter().any(|l| l.contains("drained")), "{all:?}");
    assert!(all.iter().all(|l| !l.contains('\u{1b}')), "escape codes in a piped log: {all:?}");
}
