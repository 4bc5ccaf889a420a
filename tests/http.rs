//! The HTTP/JSON face through a real client (curl): the same answers as gRPC Predict for every
//! golden row on both routes, the documented status and JSON error for each kind of bad call,
//! gzip both ways, keep-alive and h2c, and metrics named by route.

mod common;

use std::io::Write;

use common::*;
use modeld::pb;
use serde_json::{Value, json};

fn probabilities(prediction: &Value) -> Vec<f32> {
    prediction["probabilities"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap() as f32).collect()
}

#[tokio::test]
async fn every_golden_row_gets_grpc_predicts_answer_on_both_routes() {
    let root = model_root(Some("v2"));
    let server = TestServer::start_ready(test_config(root.path())).await;
    let golden = all_golden("v2");
    let rows: Vec<Value> = golden.iter().map(|g| json_row(&g.row)).collect();
    let ids: Vec<String> = golden.iter().map(|g| format!("line-{}", g.line)).collect();

    let grpc = server
        .client()
        .await
        .predict(predict_request(golden.iter().map(|g| to_pb(&g.row)).collect()))
        .await
        .unwrap()
        .into_inner();

    let (status, answer) = post(
        server.http,
        &format!("/v1/tasks/{TASK}/predict"),
        &json!({"rows": rows, "row_ids": ids, "request_id": "req-1"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["task"], TASK);
    assert_eq!(answer["version"], "v2");
    assert_eq!(answer["request_id"], "req-1");
    assert_eq!(answer["class_names"], json!(grpc.class_names));
    let predictions = answer["predictions"].as_array().unwrap();
    assert_eq!(predictions.len(), golden.len());
    for ((p, g), expected) in predictions.iter().zip(&golden).zip(&grpc.predictions) {
        assert_eq!(p["row_id"], format!("line-{}", g.line));
        assert_eq!(p["label"], expected.label);
        assert_close(&probabilities(p), &expected.probabilities, &format!("JSON route, golden line {}", g.line));
        assert_close(&probabilities(p), &g.probabilities, &format!("JSON route vs training, line {}", g.line));
    }

    let (status, answer) = post(server.http, &format!("/v1/models/{TASK}:predict"), &json!({"instances": rows})).await;
    assert_eq!(status, 200, "{answer}");
    let predictions = answer["predictions"].as_array().unwrap();
    assert_eq!(predictions.len(), golden.len());
    for (p, expected) in predictions.iter().zip(&grpc.predictions) {
        assert_eq!(p["label"], expected.label);
        assert_close(&probabilities(p), &expected.probabilities, "KServe V1 route");
    }

    // The task listing and description agree with GetVersion.
    let (status, body, _) = curl(vec![format!("http://{}/v1/tasks", server.http)]).await;
    assert_eq!(status, 200);
    let tasks: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(tasks["tasks"][0]["task"], TASK);
    assert_eq!(tasks["tasks"][0]["serving"], true);
    let (status, body, _) = curl(vec![format!("http://{}/v1/tasks/{TASK}", server.http)]).await;
    assert_eq!(status, 200);
    let task: Value = serde_json::from_str(&body).unwrap();
    let version =
        server.client().await.get_version(pb::GetVersionRequest { task: TASK.into() }).await.unwrap().into_inner();
    assert_eq!(task["version"], version.version);
    assert_eq!(task["manifest_sha256"], version.manifest_sha256);
    assert!(task["rollout"].is_null() && version.rollout.is_none(), "no rollout policy: {task}");
    let names: Vec<&str> = task["fields"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(names, version.fields.iter().map(|f| f.name.as_str()).collect::<Vec<_>>());
}

#[tokio::test]
async fn bad_calls_get_their_status_and_a_json_error_naming_the_problem() {
    let root = model_root(Some("v2"));
    let mut config = test_config(root.path());
    config.max_rows = 5;
    config.max_message_bytes = 64 << 10;
    let server = TestServer::start_ready(config).await;
    let good = json_row(&golden("v2")[0].row);
    let predict = format!("/v1/tasks/{TASK}/predict");
    let with = |field: &str, value: Value| {
        let mut row = good.clone();
        row[field] = value;
        json!({ "rows": [good.clone(), row] })
    };

    let cases: Vec<(&str, String, Value, u16, &str, &str)> = vec![
        (
            "wrong type",
            predict.clone(),
            with("age_in_years", json!("old")),
            400,
            "INVALID_ARGUMENT",
            "expected integer, got text",
        ),
        ("an array value", predict.clone(), with("purpose", json!(["car"])), 400, "INVALID_ARGUMENT", "got array"),
        ("out of range", predict.clone(), with("age_in_years", json!(7)), 400, "INVALID_ARGUMENT", "out of range"),
        ("unknown feature", predict.clone(), with("shoe_size", json!(44)), 400, "INVALID_ARGUMENT", "unknown field"),
        (
            "unknown body field",
            predict.clone(),
            json!({"rows": [good.clone()], "row": 1}),
            400,
            "INVALID_ARGUMENT",
            "unknown field `row`",
        ),
        ("rows not an array", predict.clone(), json!({"rows": {"a": 1}}), 400, "INVALID_ARGUMENT", "body:"),
        ("no rows", predict.clone(), json!({"rows": []}), 400, "INVALID_ARGUMENT", "at least one row"),
        (
            "too many rows",
            predict.clone(),
            json!({"rows": vec![good.clone(); 6]}),
            400,
            "INVALID_ARGUMENT",
            "exceed the limit of 5",
        ),
        (
            "row ids miscounted",
            predict.clone(),
            json!({"rows": [good.clone()], "row_ids": ["a", "b"]}),
            400,
            "INVALID_ARGUMENT",
            "row_ids",
        ),
        (
            "unknown task",
            "/v1/tasks/nope/predict".into(),
            json!({"rows": [good.clone()]}),
            404,
            "NOT_FOUND",
            "unknown task `nope`",
        ),
        (
            "unknown version",
            predict.clone(),
            json!({"rows": [good.clone()], "version": "v9"}),
            404,
            "NOT_FOUND",
            "no version `v9`",
        ),
        (
            "KServe without the verb",
            format!("/v1/models/{TASK}"),
            json!({"instances": [good.clone()]}),
            404,
            "NOT_FOUND",
            ":predict",
        ),
        (
            "KServe unknown task",
            "/v1/models/nope:predict".into(),
            json!({"instances": [good.clone()]}),
            404,
            "NOT_FOUND",
            "unknown task",
        ),
        ("unknown route", "/v2/anything".into(), json!({}), 404, "NOT_FOUND", "no such route"),
        ("wrong method", "/v1/tasks".into(), json!({}), 405, "UNIMPLEMENTED", "another method"),
        (
            "oversize body",
            predict.clone(),
            json!({"rows": [good.clone()], "request_id": "x".repeat(70 << 10)}),
            413,
            "RESOURCE_EXHAUSTED",
            "max_message_bytes",
        ),
    ];
    for (name, path, body, status, code, says) in cases {
        let (got, answer) = post(server.http, &path, &body).await;
        assert_eq!(got, status, "{name}: {answer}");
        assert_eq!(answer["code"], code, "{name}: {answer}");
        let message = answer["message"].as_str().unwrap();
        assert!(message.contains(says), "{name}: `{message}` does not say `{says}`");
    }
    // A bad row names its index and field, as the gRPC message does.
    let (_, answer) = post(server.http, &predict, &with("age_in_years", json!("old"))).await;
    assert_eq!(answer["row"], 1);
    assert_eq!(answer["field"], "age_in_years");

    let (status, body, _) = curl(vec![
        "-H".into(),
        "content-type: application/json".into(),
        "--data-binary".into(),
        "{\"rows\": [".into(),
        format!("http://{}{predict}", server.http),
    ])
    .await;
    assert_eq!(status, 400, "malformed JSON: {body}");
    assert!(body.contains("\"INVALID_ARGUMENT\"") && body.contains("EOF"), "{body}");

    // Refusals are counted under the route, like every call of the core.
    let text = http_get(server.admin, "/metrics").await.1;
    let route = [("method", "POST /v1/tasks/{task}/predict"), ("code", "INVALID_ARGUMENT")];
    assert!(metric_value(&text, "modeld_requests_total", &route).unwrap_or(0.0) >= 5.0, "{text}");
    let kserve = [("method", "POST /v1/models/{task}:predict"), ("code", "NOT_FOUND")];
    assert_eq!(metric_value(&text, "modeld_requests_total", &kserve), Some(1.0));
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

#[tokio::test]
async fn gzip_both_ways_keep_alive_and_h2c() {
    let root = model_root(Some("v2"));
    let mut config = test_config(root.path());
    config.max_message_bytes = 64 << 10;
    let server = TestServer::start_ready(config).await;
    let url = format!("http://{}/v1/tasks/{TASK}/predict", server.http);
    let body = json!({"rows": vec![json_row(&golden("v2")[0].row); 5]}).to_string();
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str| dir.path().join(name).display().to_string();
    std::fs::write(file("body.gz"), gzip(body.as_bytes())).unwrap();

    // A gzip request body, a gzip response body (curl decodes it with --compressed).
    let (status, plain, stderr) = curl(vec![
        "--compressed".into(),
        "-v".into(),
        "-H".into(),
        "content-type: application/json".into(),
        "-H".into(),
        "content-encoding: gzip".into(),
        "--data-binary".into(),
        format!("@{}", file("body.gz")),
        url.clone(),
    ])
    .await;
    assert_eq!(status, 200, "{plain} {stderr}");
    assert!(stderr.to_lowercase().contains("< content-encoding: gzip"), "the answer is compressed: {stderr}");
    let answer: Value = serde_json::from_str(&plain).unwrap();
    assert_eq!(answer["predictions"].as_array().unwrap().len(), 5);

    // The body limit holds after decompression: a small gzip of a large body is refused.
    let bomb = json!({"rows": [json_row(&golden("v2")[0].row)], "request_id": "z".repeat(1 << 20)}).to_string();
    std::fs::write(file("bomb.gz"), gzip(bomb.as_bytes())).unwrap();
    assert!(std::fs::metadata(file("bomb.gz")).unwrap().len() < 64 << 10);
    let (status, text, _) = curl(vec![
        "-H".into(),
        "content-encoding: gzip".into(),
        "--data-binary".into(),
        format!("@{}", file("bomb.gz")),
        url.clone(),
    ])
    .await;
    assert_eq!(status, 413, "{text}");

    // Keep-alive: two calls on one connection.
    let (status, _, stderr) = curl(vec![
        "-v".into(),
        "-H".into(),
        "content-type: application/json".into(),
        "--data-binary".into(),
        body.clone(),
        url.clone(),
        url.clone(),
    ])
    .await;
    assert_eq!(status, 200);
    assert!(stderr.contains("Re-using existing connection") || stderr.contains("Reusing existing"), "{stderr}");

    // HTTP/2 without TLS (h2c), as service meshes speak it.
    let (status, text, stderr) =
        curl(vec!["-v".into(), "--http2-prior-knowledge".into(), "--data-binary".into(), body, url]).await;
    assert_eq!(status, 200, "{text}");
    assert!(stderr.contains("HTTP/2 200"), "{stderr}");
}
