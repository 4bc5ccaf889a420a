//! The listener's limits: calls in flight, connections, and the time to say HTTP/2. Each is
//! answered at once and clearly, health checks pass through, and the server serves on as soon
//! as the pressure is gone.

mod common;

use std::{net::SocketAddr, time::Duration};

use common::*;
use modeld::pb;
use tokio::io::AsyncReadExt;
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

fn good_request() -> pb::PredictRequest {
    predict_request(vec![to_pb(&golden("v2")[0].row)])
}

async fn rejected(admin: SocketAddr, reason: &str) -> f64 {
    let text = http_get(admin, "/metrics").await.1;
    metric_value(&text, "modeld_rejected_total", &[("reason", reason)]).unwrap_or(0.0)
}

/// Whether the server closes a connection that has sent nothing (within the test's bound).
async fn closed_by_server(tcp: &mut tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(20), tcp.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn calls_over_max_inflight_calls_are_resource_exhausted_and_health_still_answers() {
    let root = model_root(Some("v2"));
    let mut config = test_config(root.path());
    config.max_inflight_calls = 2;
    let server = TestServer::start_ready(config).await;
    let request = good_request();

    // Two calls held half-sent fill the limit; they are admitted and waiting for their bytes.
    let held =
        [HalfSentCall::start(server.grpc, &request, &[]).await, HalfSentCall::start(server.grpc, &request, &[]).await];
    let admin = server.admin;
    eventually("both held calls admitted", || async move {
        let text = http_get(admin, "/metrics").await.1;
        metric_value(&text, "modeld_grpc_calls_open", &[]) == Some(2.0)
    })
    .await;

    let mut client = server.client().await;
    let err = client.predict(request.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("max_inflight_calls"), "{}", err.message());
    assert_eq!(rejected(server.admin, "calls_in_flight").await, 1.0);

    // The HTTP/JSON face shares the limit: refused at once with 429 and a JSON error.
    let http = server.http;
    let json_call = tokio::task::spawn_blocking(move || {
        let body = serde_json::json!({ "rows": [json_row(&golden("v2")[0].row)] }).to_string();
        let url = format!("http://{http}/v1/tasks/{TASK}/predict");
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "30", "-w", "\n%{http_code}", "--data-binary", &body, &url])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    })
    .await
    .unwrap();
    let (body, status) = json_call.rsplit_once('\n').unwrap();
    assert_eq!(status, "429", "{body}");
    assert!(body.contains("\"RESOURCE_EXHAUSTED\"") && body.contains("max_inflight_calls"), "{body}");
    assert_eq!(rejected(server.admin, "calls_in_flight").await, 2.0);

    // Probes are never turned away for load.
    let mut health = HealthClient::new(server.channel().await);
    let check = health.check(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    assert_eq!(check.status(), ServingStatus::Serving);

    // Once the held calls finish, calls are admitted again.
    for call in held {
        assert_eq!(call.finish().await.1, "0");
    }
    eventually("slots free again", || async move {
        let text = http_get(admin, "/metrics").await.1;
        metric_value(&text, "modeld_grpc_calls_open", &[]) == Some(0.0)
    })
    .await;
    let answer = client.predict(request).await.unwrap().into_inner();
    assert_eq!(answer.predictions.len(), 1);
}

#[tokio::test]
async fn connections_over_max_connections_are_closed_and_slots_come_back() {
    let root = model_root(Some("v2"));
    let mut config = test_config(root.path());
    config.max_connections = 2;
    let server = TestServer::start_ready(config).await;
    let admin = server.admin;

    // Two clients hold the two slots (each has made a call, so each is surely accepted).
    let mut first = server.client().await;
    let mut second = server.client().await;
    first.predict(good_request()).await.unwrap();
    second.predict(good_request()).await.unwrap();

    // A third connection is closed as soon as it is accepted.
    let mut third = tokio::net::TcpStream::connect(server.grpc).await.unwrap();
    assert!(closed_by_server(&mut third).await, "the connection over the limit is closed");
    assert_eq!(rejected(admin, "connections").await, 1.0);
    let text = http_get(admin, "/metrics").await.1;
    assert_eq!(metric_value(&text, "modeld_grpc_connections_open", &[]), Some(2.0));

    // The held connections serve on; once one closes, a new client gets its slot.
    first.predict(good_request()).await.unwrap();
    drop(second);
    eventually("a slot is free", || async move {
        let text = http_get(admin, "/metrics").await.1;
        metric_value(&text, "modeld_grpc_connections_open", &[]) == Some(1.0)
    })
    .await;
    let mut fresh = server.client().await;
    assert_eq!(fresh.predict(good_request()).await.unwrap().into_inner().predictions.len(), 1);
}

#[tokio::test]
async fn a_connection_silent_past_the_handshake_timeout_is_closed() {
    let root = model_root(Some("v2"));
    let mut config = test_config(root.path());
    config.handshake_timeout = Duration::from_millis(200);
    let server = TestServer::start_ready(config).await;

    let mut silent = tokio::net::TcpStream::connect(server.grpc).await.unwrap();
    assert!(closed_by_server(&mut silent).await, "a silent connection is closed");
    let mut partial = tokio::net::TcpStream::connect(server.grpc).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut partial, b"PRI * HTTP/2.0\r\n").await.unwrap();
    assert!(closed_by_server(&mut partial).await, "half a preface is not enough");
    assert_eq!(rejected(server.admin, "handshake_timeout").await, 2.0);

    // A connection that completes its preface in time is not affected by the timeout, however
    // long it then stays idle between calls.
    let mut client = server.client().await;
    client.predict(good_request()).await.unwrap();
    let admin = server.admin;
    let idle_since = rejected(admin, "handshake_timeout").await;
    // A silent connection opened after it times out: by then the client's own timer would
    // have fired too, had it still been armed, and the count shows it did not.
    let mut later = tokio::net::TcpStream::connect(server.grpc).await.unwrap();
    assert!(closed_by_server(&mut later).await);
    assert_eq!(rejected(admin, "handshake_timeout").await, idle_since + 1.0);
    assert_eq!(client.predict(good_request()).await.unwrap().into_inner().predictions.len(), 1);
}
