//! grpc.health.v1, reflection, the detailed Health and GetVersion RPCs, and the admin port.

mod common;

use common::*;
use modeld::{pb, schema::OwnedValue};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

async fn grpc_status(client: &mut HealthClient<tonic::transport::Channel>, service: &str) -> ServingStatus {
    let resp = client.check(HealthCheckRequest { service: service.into() }).await.unwrap();
    resp.into_inner().status()
}

#[tokio::test]
async fn not_serving_until_a_bundle_is_live_then_serving() {
    // No `current` link yet, as when a sync sidecar has not delivered the first bundle.
    let root = model_root(None);
    let server = TestServer::start(test_config(root.path())).await;
    let mut health = HealthClient::new(server.channel().await);
    for service in ["", "modeld.v1.Inference"] {
        assert_eq!(grpc_status(&mut health, service).await, ServingStatus::NotServing, "service `{service}`");
    }
    assert_eq!(http_get(server.admin, "/healthz").await.0, 200, "alive while not ready");
    assert_eq!(grpc_status(&mut health, "liveness").await, ServingStatus::Serving, "alive while not ready");
    let (code, body) = http_get(server.admin, "/readyz").await;
    assert_eq!(code, 503);
    assert!(body.contains("\"ready\":false"), "{body}");
    let mut client = server.client().await;
    let err = client.predict(predict_request(vec![to_pb(&golden("v2")[0].row)])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    let detail = client.health(pb::HealthRequest {}).await.unwrap().into_inner();
    assert!(!detail.serving);
    assert!(detail.tasks[0].last_error.contains("current"), "{:?}", detail.tasks[0]);

    point_current(root.path(), "v2");
    let mut h = health.clone();
    eventually("grpc health SERVING", || {
        let mut h = h.clone();
        async move { grpc_status(&mut h, "").await == ServingStatus::Serving }
    })
    .await;
    assert_eq!(grpc_status(&mut h, "modeld.v1.Inference").await, ServingStatus::Serving);
    assert_eq!(http_get(server.admin, "/readyz").await.0, 200);
    let detail = client.health(pb::HealthRequest {}).await.unwrap().into_inner();
    assert!(detail.serving);
    assert_eq!((detail.tasks[0].task.as_str(), detail.tasks[0].version.as_str()), (TASK, "v2"));
    assert!(detail.tasks[0].serving);
    drop(health);
}

#[tokio::test]
async fn reflection_lists_the_inference_service() {
    let root = model_root(Some("v2"));
    let server = TestServer::start_ready(test_config(root.path())).await;
    let mut reflection = ServerReflectionClient::new(server.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = stream.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"modeld.v1.Inference"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
}

#[tokio::test]
async fn reflection_switched_off_is_unimplemented() {
    let root = model_root(Some("v2"));
    let mut config = test_config(root.path());
    config.reflection = false;
    let server = TestServer::start_ready(config).await;
    let mut reflection = ServerReflectionClient::new(server.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let status = match reflection.server_reflection_info(tokio_stream::iter([request])).await {
        Ok(response) => response.into_inner().message().await.unwrap_err(),
        Err(status) => status,
    };
    assert_eq!(status.code(), tonic::Code::Unimplemented);
}

#[tokio::test]
async fn get_version_and_admin_version_describe_the_live_bundle() {
    let root = model_root(Some("v1"));
    let server = TestServer::start_ready(test_config(root.path())).await;
    let v = server.client().await.get_version(pb::GetVersionRequest { task: TASK.into() }).await.unwrap().into_inner();
    assert_eq!(v.version, "v1");
    assert_eq!(v.model_type, "LogisticRegression");
    assert_eq!(v.kind, "classifier");
    // The live schema, as a caller needs it to build rows.
    assert_eq!(v.fields.len(), 20);
    let field = |name: &str| v.fields.iter().find(|f| f.name == name).unwrap_or_else(|| panic!("no field {name}"));
    let duration = field("duration_in_month");
    assert_eq!(
        (duration.r#type.as_str(), duration.required, duration.min, duration.max),
        ("integer", true, Some(1.0), Some(120.0))
    );
    let purpose = field("purpose");
    assert_eq!((purpose.r#type.as_str(), purpose.unknown.as_str()), ("categorical", "fallback:others"));
    assert!(purpose.categories.iter().any(|c| c == "car (new)"), "{:?}", purpose.categories);
    let telephone = field("telephone");
    assert!(!telephone.required);
    assert_eq!(telephone.default, Some(pb::Value { kind: Some(pb::value::Kind::Text("none".into())) }));
    assert!(v.bundle_path.ends_with("models/credit_risk/v1"), "{}", v.bundle_path);
    let manifest = std::fs::read(repo_models().join("credit_risk/v1/MANIFEST.sha256")).unwrap();
    assert_eq!(v.manifest_sha256, modeld::bundle::manifest::sha256_hex(&manifest));
    assert!(v.loaded_at.is_some());
    let evaluation: serde_json::Value = serde_json::from_str(&v.evaluation_json).unwrap();
    assert_eq!(v.evaluation["auc"], evaluation["metrics"]["auc"].as_f64().unwrap());

    let (code, body) = http_get(server.admin, "/model/version").await;
    assert_eq!(code, 200);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["tasks"][0]["version"], "v1");
    assert_eq!(json["tasks"][0]["manifest_sha256"], v.manifest_sha256.as_str());
    let evaluator = json["tasks"][0]["evaluator"].as_str().unwrap();
    assert!(evaluator.starts_with("native linear") && evaluator.contains("agrees with ONNX Runtime"), "{evaluator}");
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_count_requests() {
    let root = model_root(Some("v2"));
    let server = TestServer::start_ready(test_config(root.path())).await;
    let mut client = server.client().await;
    let row = to_pb(&golden("v2")[0].row);
    for _ in 0..7 {
        client.predict(predict_request(vec![row.clone(), row.clone()])).await.unwrap();
    }
    for _ in 0..3 {
        client.predict(predict_request(vec![])).await.unwrap_err();
    }
    let (code, text) = http_get(server.admin, "/metrics").await;
    assert_eq!(code, 200);
    check_exposition_format(&text);
    let ok = [("task", TASK), ("version", "v2"), ("method", "Predict"), ("code", "OK")];
    assert_eq!(metric_value(&text, "modeld_requests_total", &ok), Some(7.0));
    let bad = [("task", TASK), ("method", "Predict"), ("code", "INVALID_ARGUMENT")];
    assert_eq!(metric_value(&text, "modeld_requests_total", &bad), Some(3.0));
    assert_eq!(metric_value(&text, "modeld_rows_total", &[("task", TASK), ("version", "v2")]), Some(14.0));
    let count = [("task", TASK), ("method", "Predict")];
    assert_eq!(metric_value(&text, "modeld_request_duration_seconds_count", &count), Some(10.0));
    assert_eq!(metric_value(&text, "modeld_bundle_loads_total", &[("task", TASK), ("result", "success")]), Some(1.0));
    assert_eq!(metric_value(&text, "modeld_live_version_info", &[("task", TASK), ("version", "v2")]), Some(1.0));
}

#[tokio::test]
async fn metrics_say_what_the_process_is_and_what_it_uses() {
    let root = model_root(Some("v2"));
    let server = TestServer::start_ready(test_config(root.path())).await;
    let (_, text) = http_get(server.admin, "/metrics").await;
    check_exposition_format(&text);
    // The tests load the pinned ONNX Runtime; the commit is the checkout's when there is one.
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(repo())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(|| "unknown".to_owned(), |o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let build = [("version", env!("CARGO_PKG_VERSION")), ("git_commit", commit.as_str()), ("onnxruntime", "1.31.1")];
    assert_eq!(metric_value(&text, "modeld_build_info", &build), Some(1.0), "{text}");
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let start = metric_value(&text, "process_start_time_seconds", &[]).unwrap();
    assert!(start > 0.0 && start <= started + 1.0, "start time {start}, now {started}");
    assert!(metric_value(&text, "process_resident_memory_bytes", &[]).unwrap() > 1e6);
    assert!(metric_value(&text, "process_open_fds", &[]).unwrap() >= 3.0, "the listeners are open files");
    assert!(metric_value(&text, "process_cpu_seconds_total", &[]).is_some());
}

#[tokio::test]
async fn drift_signals_count_per_field_and_score_every_answered_row() {
    let root = model_root(Some("v2"));
    let mut config = test_config(root.path());
    config.drift.min_rows = 1;
    let server = TestServer::start_ready(config).await;
    let mut client = server.client().await;
    let rows = golden("v2");
    let with = |row: &modeld::preprocess::OwnedRow, name: &str, value: Option<OwnedValue>| {
        let mut row = row.clone();
        row.features.retain(|(k, _)| k != name);
        if let Some(v) = value {
            row.features.push((name.to_owned(), v));
        }
        to_pb(&row)
    };
    let sent = vec![
        to_pb(&rows[0].row),
        with(&rows[1].row, "telephone", None),
        with(&rows[2].row, "purpose", Some(OwnedValue::Text("space travel".into()))),
    ];
    client.predict(predict_request(sent)).await.expect("defaults and fallbacks are accepted");
    let status = client
        .predict(predict_request(vec![with(&rows[0].row, "age_in_years", Some(OwnedValue::Integer(7)))]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    let (_, text) = http_get(server.admin, "/metrics").await;
    check_exposition_format(&text);
    fn series(field: &str) -> [(&str, &str); 3] {
        [("task", TASK), ("version", "v2"), ("field", field)]
    }
    let value = |name: &str, labels: &[(&str, &str)]| metric_value(&text, name, labels);
    assert_eq!(value("modeld_input_defaults_total", &series("telephone")), Some(1.0), "{text}");
    assert_eq!(value("modeld_input_defaults_total", &series("purpose")), Some(0.0));
    assert_eq!(value("modeld_input_unknown_categories_total", &series("purpose")), Some(1.0));
    let rejected = [("task", TASK), ("version", "v2"), ("field", "age_in_years"), ("reason", "out_of_range")];
    assert_eq!(value("modeld_input_rejections_total", &rejected), Some(1.0));
    let version = [("task", TASK), ("version", "v2")];
    assert_eq!(value("modeld_prediction_score_count", &version), Some(3.0), "the three answered rows");
    assert_eq!(value("modeld_score_window_rows", &version), Some(3.0));
    assert!(value("modeld_score_psi", &version).is_some_and(|psi| psi > 0.0), "v2 has a score baseline");
}

/// The text format's rules that scrapers rely on: every sample belongs to a family declared by
/// `# HELP` and `# TYPE` lines, names and labels are well formed, values are numbers.
fn check_exposition_format(text: &str) {
    let mut declared = std::collections::HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line has a name and a type");
            assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind), "{line}");
            declared.insert(name.to_owned(), kind.to_owned());
        } else if line.starts_with("# HELP ") || line.is_empty() {
        } else {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("sample without value: {line}"));
            value.parse::<f64>().unwrap_or_else(|_| panic!("bad value: {line}"));
            let name = series.split('{').next().unwrap();
            assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'), "bad name: {line}");
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|f| declared.get(*f).is_some_and(|k| k == "histogram"))
                .unwrap_or(name);
            assert!(declared.contains_key(family), "sample before its TYPE line: {line}");
            if let Some(labels) = series.strip_prefix(name) {
                if !labels.is_empty() {
                    assert!(labels.starts_with('{') && labels.ends_with('}'), "bad labels: {line}");
                }
            }
        }
    }
    assert!(declared.len() >= 5, "expected the modeld families, got {declared:?}");
}
