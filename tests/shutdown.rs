//! SIGTERM while requests are in flight: every in-flight request completes, the process exits 0.

mod common;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Command, Stdio},
};

use common::*;
use modeld::service::pb::inference_client::InferenceClient;

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish() {
    let root = model_root(Some("v1"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_modeld"))
        .arg("serve")
        .env("MODELD_MODEL_ROOT", root.path())
        .env("MODELD_TASKS", TASK)
        .env("MODELD_GRPC_ADDR", "127.0.0.1:0")
        .env("MODELD_ADMIN_ADDR", "127.0.0.1:0")
        .env("MODELD_CONFIG", "/dev/null")
        .env("MODELD_INFERENCE_THREADS", "1")
        .env("MODELD_LOG_FORMAT", "json")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // The daemon logs the addresses it bound; read them instead of guessing ports.
    let mut log = BufReader::new(child.stderr.take().unwrap()).lines();
    let (grpc, admin) = loop {
        let line = log.next().expect("daemon exited before listening").unwrap();
        let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
        if entry["message"] == "listening" {
            let addr = |k: &str| entry[k].as_str().unwrap().parse::<SocketAddr>().unwrap();
            break (addr("grpc"), addr("admin"));
        }
    };
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

    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());

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
