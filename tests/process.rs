//! The daemon as a process: SIGTERM drains in-flight requests and exits 0; SIGHUP reloads.

mod common;

use std::time::Duration;

use common::*;
use modeld::pb::{self, inference_client::InferenceClient};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
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

/// Rows per chunk of the stream that the client leaves unread while the daemon drains.
const STREAM_CHUNK_ROWS: usize = 2_000;
/// Chunks answered before the signal. Each answer is ~50 KiB (2,000 rows of id, label and two
/// probabilities); four are more than the client's 64 KiB receive window plus what the server
/// may buffer, so the stream cannot end until the client reads: the drain must wait for it.
const ANSWERED_BEFORE_SIGNAL: f64 = 4.0;

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
    assert_eq!(watch.message().await.unwrap().unwrap().status(), ServingStatus::Serving);
    let (not_serving_tx, not_serving_rx) = oneshot::channel();
    let watcher = tokio::spawn(async move {
        let mut not_serving_tx = Some(not_serving_tx);
        while let Ok(Some(update)) = watch.message().await {
            if update.status() == ServingStatus::NotServing {
                not_serving_tx.take().map(|tx| tx.send(()));
            }
        }
    });

    // A stream whose answers the client does not read yet, on a connection with small receive
    // windows: it is in flight, deterministically, until the client reads.
    let small_windows = Endpoint::from_shared(format!("http://{grpc}"))
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap();
    let chunk_rows: Vec<pb::Row> = golden_rows.iter().cycle().take(STREAM_CHUNK_ROWS).cloned().collect();
    let (chunks_tx, chunks_rx) = mpsc::channel(1);
    let producer = tokio::spawn(async move {
        for i in 0..8 {
            let task = if i == 0 { TASK.into() } else { String::new() };
            let chunk = pb::BatchPredictRequest { task, rows: chunk_rows.clone(), ..Default::default() };
            if chunks_tx.send(chunk).await.is_err() {
                break;
            }
        }
    });
    let mut stream = InferenceClient::new(small_windows)
        .max_decoding_message_size(64 << 20)
        .batch_predict(ReceiverStream::new(chunks_rx))
        .await
        .unwrap()
        .into_inner();
    eventually("stream answers pile up unread", || async move {
        let text = http_get(admin, "/metrics").await.1;
        metric_value(&text, "modeld_stream_chunks_total", &[("task", TASK)]).unwrap_or(0.0) >= ANSWERED_BEFORE_SIGNAL
    })
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
    // Readiness flips first, while the listener and the admin port still answer: the unread
    // stream keeps the drain open until the client reads it below.
    eventually("/readyz 503 while draining", || async move {
        let (status, body) = http_get(admin, "/readyz").await;
        status == 503 && body.contains("\"draining\":true")
    })
    .await;
    tokio::time::timeout(Duration::from_secs(20), not_serving_rx)
        .await
        .expect("the Watch opened before the signal reports NOT_SERVING")
        .expect("the watcher is still reading");

    for call in calls {
        let resp = call.await.unwrap().expect("an in-flight call completes during drain");
        assert_eq!(resp.get_ref().predictions.len(), rows.len());
        assert_eq!(resp.get_ref().version, "v1");
    }
    // Every chunk the stream answered arrives in order and whole; then it ends cleanly or with
    // the documented shutdown status for the chunks it did not take.
    let mut answered = 0u64;
    let end = loop {
        match stream.message().await {
            Ok(Some(resp)) => {
                assert_eq!(resp.chunk_index, answered);
                assert_eq!(resp.results.len(), STREAM_CHUNK_ROWS);
                assert_eq!(resp.version, "v1");
                answered += 1;
            }
            Ok(None) => break None,
            Err(status) => break Some(status),
        }
    };
    assert!(answered as f64 >= ANSWERED_BEFORE_SIGNAL, "{answered} chunks answered");
    if let Some(status) = end {
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(status.message().contains("shutting down"), "{status:?}");
    }
    producer.abort();

    let status = daemon.child.wait().unwrap();
    let lines = log_lines.join().unwrap();
    assert!(status.success(), "exit status {status:?}; log:\n{}", lines.join("\n"));
    assert!(lines.iter().any(|l| l.contains("drained: every in-flight call finished")), "{}", lines.join("\n"));
    watcher.await.unwrap();
}
