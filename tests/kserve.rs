//! The Open Inference Protocol (KServe V2) faces against a real server: typed and raw gRPC
//! tensors and JSON and binary REST tensors get gRPC Predict's answers; every kind of bad call
//! gets its status and a message naming the problem; readiness follows the registry; the
//! single-bundle mode KServe's storage initializer needs.

mod common;

use common::*;
use modeld::{
    bundle::golden::GoldenRow,
    pb::v2::{
        self, ModelInferRequest, grpc_inference_service_client::GrpcInferenceServiceClient,
        model_infer_request::InferRequestedOutputTensor,
    },
};
use serde_json::{Value, json};
use tonic::{Code, transport::Channel};

async fn v2_client(server: &TestServer) -> GrpcInferenceServiceClient<Channel> {
    GrpcInferenceServiceClient::new(server.channel().await)
}

/// gRPC Predict's labels and probabilities for the same rows.
async fn predict(server: &TestServer, rows: &[GoldenRow]) -> (Vec<String>, Vec<Vec<f32>>) {
    let answer = server
        .client()
        .await
        .predict(predict_request(rows.iter().map(|g| to_pb(&g.row)).collect()))
        .await
        .unwrap()
        .into_inner();
    answer.predictions.into_iter().map(|p| (p.label, p.probabilities)).unzip()
}

fn raw_labels(mut data: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let n = u32::from_le_bytes(data[..4].try_into().unwrap()) as usize;
        out.push(String::from_utf8(data[4..4 + n].to_vec()).unwrap());
        data = &data[4 + n..];
    }
    out
}

#[tokio::test]
async fn typed_and_raw_grpc_tensors_get_predicts_answers() {
    let root = model_root(Some("v2"));
    let server = TestServer::start_ready(test_config(root.path())).await;
    let rows = golden("v2");
    let (labels, probabilities) = predict(&server, &rows).await;
    let mut client = v2_client(&server).await;

    let typed = client.model_infer(v2_request(TASK, &rows, false)).await.unwrap().into_inner();
    assert_eq!((typed.model_name.as_str(), typed.model_version.as_str(), typed.id.as_str()), (TASK, "v2", "req-7"));
    assert!(typed.raw_output_contents.is_empty(), "typed in, typed out");
    let names: Vec<&str> = typed.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["label", "probabilities"]);
    let (label, probs) = (&typed.outputs[0], &typed.outputs[1]);
    assert_eq!((label.datatype.as_str(), &label.shape[..]), ("BYTES", &[rows.len() as i64][..]));
    assert_eq!((probs.datatype.as_str(), &probs.shape[..]), ("FP32", &[rows.len() as i64, 2][..]));
    let got: Vec<String> =
        label.contents.as_ref().unwrap().bytes_contents.iter().map(|b| String::from_utf8(b.clone()).unwrap()).collect();
    assert_eq!(got, labels);
    assert_eq!(probs.contents.as_ref().unwrap().fp32_contents, probabilities.concat());

    let raw = client.model_infer(v2_request(TASK, &rows, true)).await.unwrap().into_inner();
    assert!(raw.outputs.iter().all(|o| o.contents.is_none()), "raw in, raw out");
    assert_eq!(raw_labels(&raw.raw_output_contents[0]), labels);
    let floats: Vec<f32> =
        raw.raw_output_contents[1].chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(floats, probabilities.concat());

    // One requested output, and a version pin.
    let mut request = v2_request(TASK, &rows, false);
    request.outputs = vec![InferRequestedOutputTensor { name: "probabilities".into(), ..Default::default() }];
    request.model_version = "v2".into();
    let one = client.model_infer(request).await.unwrap().into_inner();
    assert_eq!(one.outputs.len(), 1);
    assert_eq!(one.outputs[0].name, "probabilities");

    let metrics = http_get(server.admin, "/metrics").await.1;
    let count = metric_value(&metrics, "modeld_requests_total", &[("method", "ModelInfer"), ("code", "OK")]);
    assert_eq!(count, Some(3.0), "ModelInfer calls are counted by the core");
}

/// Each bad call's status and the words its message must hold.
#[tokio::test]
async fn bad_grpc_calls_get_their_status_and_name_the_problem() {
    let root = model_root(Some("v2"));
    let mut config = test_config(root.path());
    let log = root.path().join("audit.log");
    config.audit = Some(audit_to(&log));
    let server = TestServer::start_ready(config).await;
    let rows = golden("v2");
    let mut client = v2_client(&server).await;
    let duration = |r: &mut ModelInferRequest| r.inputs.iter().position(|i| i.name == "duration_in_month").unwrap();
    type Edit = Box<dyn Fn(&mut ModelInferRequest)>;
    let cases: Vec<(&str, Edit, Code, &str)> = vec![
        (
            "wrong datatype",
            Box::new(move |r| {
                let i = duration(r);
                r.inputs[i].datatype = "BYTES".into();
            }),
            Code::InvalidArgument,
            "input `duration_in_month`: datatype BYTES does not fit a integer field",
        ),
        (
            "unsupported datatype",
            Box::new(move |r| {
                let i = duration(r);
                r.inputs[i].datatype = "FP16".into();
            }),
            Code::InvalidArgument,
            "datatype `FP16` is not supported",
        ),
        (
            "data in another field than the datatype's",
            Box::new(move |r| {
                let i = duration(r);
                r.inputs[i].datatype = "FP64".into();
            }),
            Code::InvalidArgument,
            "FP64 carries its data in fp64_contents",
        ),
        (
            "shape holds fewer elements",
            Box::new(move |r| {
                let i = duration(r);
                r.inputs[i].shape = vec![3];
            }),
            Code::InvalidArgument,
            "input `duration_in_month`: 64 elements for shape [3]",
        ),
        (
            "shape of two columns",
            Box::new(move |r| {
                let i = duration(r);
                r.inputs[i].shape = vec![32, 2];
            }),
            Code::InvalidArgument,
            "shape [32, 2] is not [N] or [N, 1]",
        ),
        (
            "inputs of different lengths",
            Box::new(move |r| {
                let i = duration(r);
                r.inputs[i].shape = vec![63];
                r.inputs[i].contents.as_mut().unwrap().int64_contents.pop();
            }),
            Code::InvalidArgument,
            "has 63 rows but",
        ),
        (
            "unknown input",
            Box::new(|r| r.inputs[0].name = "shoe_size".into()),
            Code::InvalidArgument,
            "unknown input `shoe_size`",
        ),
        (
            "unknown output",
            Box::new(|r| r.outputs = vec![InferRequestedOutputTensor { name: "score".into(), ..Default::default() }]),
            Code::InvalidArgument,
            "unknown output `score`: model `credit_risk` gives label, probabilities",
        ),
        ("unknown model", Box::new(|r| r.model_name = "fraud".into()), Code::NotFound, "fraud"),
        ("unknown version", Box::new(|r| r.model_version = "9.9.9".into()), Code::NotFound, "9.9.9"),
        (
            "a value the field refuses",
            Box::new(move |r| {
                let i = duration(r);
                r.inputs[i].contents.as_mut().unwrap().int64_contents[5] = -4;
            }),
            Code::InvalidArgument,
            "row 5: field `duration_in_month`",
        ),
        (
            "raw contents for some inputs",
            Box::new(|r| r.raw_input_contents = vec![vec![0; 8]]),
            Code::InvalidArgument,
            "raw_input_contents: 1 entries for 20 inputs",
        ),
    ];
    let mut messages = Vec::new();
    for (i, (what, edit, code, words)) in cases.into_iter().enumerate() {
        let mut request = v2_request(TASK, &rows, false);
        request.id = format!("bad-{i}");
        edit(&mut request);
        let status = client.model_infer(request).await.expect_err(what);
        assert_eq!(status.code(), code, "{what}: {}", status.message());
        assert!(status.message().contains(words), "{what}: {}", status.message());
        messages.push(status.message().to_owned());
    }
    // The server kept serving throughout.
    assert!(client.model_infer(v2_request(TASK, &rows, false)).await.is_ok());

    // Calls refused at the face are counted and audited as the core's own refusals are.
    let metrics = http_get(server.admin, "/metrics").await.1;
    let refused = |task: &str, code: &str| {
        let labels = [("task", task), ("method", "ModelInfer"), ("code", code)];
        metric_value(&metrics, "modeld_requests_total", &labels)
    };
    assert_eq!(refused(TASK, "INVALID_ARGUMENT"), Some(10.0));
    assert_eq!(refused(TASK, "NOT_FOUND"), Some(1.0), "the unknown version");
    assert_eq!(refused("-", "NOT_FOUND"), Some(1.0), "the unknown model");
    server.stop().await.unwrap();
    let records: Vec<Value> =
        std::fs::read_to_string(&log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for (i, message) in messages.iter().enumerate() {
        let id = format!("bad-{i}");
        let record = records.iter().find(|r| r["request_id"] == id).unwrap_or_else(|| panic!("no record of {id}"));
        assert_eq!(record["method"], "ModelInfer");
        assert_eq!(record["outcome"]["message"], message.as_str(), "{id}");
    }
}

#[tokio::test]
async fn json_and_binary_rest_tensors_get_predicts_answers() {
    let root = model_root(Some("v2"));
    let server = TestServer::start_ready(test_config(root.path())).await;
    let rows = golden("v2");
    let (labels, probabilities) = predict(&server, &rows).await;
    let typed = v2_request(TASK, &rows, false);

    // JSON tensors, nested [N, 1] for one input to show the shape is read row-major.
    let mut inputs = v2_json_inputs(&typed);
    let age = inputs.iter_mut().find(|i| i["name"] == "age_in_years").unwrap();
    let nested: Vec<Value> = age["data"].as_array().unwrap().iter().map(|x| json!([x])).collect();
    *age = json!({"name": "age_in_years", "datatype": "INT64", "shape": [rows.len(), 1], "data": nested});
    let (status, answer) =
        post(server.http, &format!("/v2/models/{TASK}/infer"), &json!({"id": "r1", "inputs": inputs})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!((answer["model_name"].as_str(), answer["id"].as_str()), (Some(TASK), Some("r1")));
    let got: Vec<String> =
        answer["outputs"][0]["data"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
    assert_eq!(got, labels);
    let got: Vec<f32> =
        answer["outputs"][1]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    assert_eq!(got, probabilities.concat());

    // Binary inputs (Triton's extension): the JSON header, then each input's bytes in order.
    let raw = v2_request(TASK, &rows, true);
    let inputs: Vec<Value> = raw
        .inputs
        .iter()
        .zip(&raw.raw_input_contents)
        .map(|(i, b)| json!({"name": i.name, "datatype": i.datatype, "shape": i.shape, "parameters": {"binary_data_size": b.len()}}))
        .collect();
    let header = json!({"inputs": inputs, "outputs": [{"name": "probabilities"}]}).to_string();
    let mut body = header.clone().into_bytes();
    raw.raw_input_contents.iter().for_each(|b| body.extend_from_slice(b));
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &body).unwrap();
    let (status, text, _) = curl(vec![
        "-H".into(),
        format!("Inference-Header-Content-Length: {}", header.len()),
        "-H".into(),
        "content-type: application/octet-stream".into(),
        "--data-binary".into(),
        format!("@{}", file.path().display()),
        format!("http://{}/v2/models/{TASK}/versions/v2/infer", server.http),
    ])
    .await;
    assert_eq!(status, 200, "{text}");
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["outputs"].as_array().unwrap().len(), 1, "{answer}");
    let got: Vec<f32> =
        answer["outputs"][0]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    assert_eq!(got, probabilities.concat());

    // Errors are the protocol's shape, with the status of the one error table.
    for (path, body, want, words) in [
        ("/v2/models/fraud/infer".to_owned(), json!({"inputs": []}), 404, "fraud"),
        (
            format!("/v2/models/{TASK}/infer"),
            json!({"inputs": [{"name": "shoe_size", "datatype": "FP64", "shape": [1], "data": [42.0]}]}),
            400,
            "unknown input `shoe_size`",
        ),
        (
            format!("/v2/models/{TASK}/infer"),
            json!({"inputs": [{"name": "age_in_years", "datatype": "INT64", "shape": [2], "data": [30, "x"]}]}),
            400,
            "input `age_in_years`: element 1 is a string",
        ),
        (format!("/v2/models/{TASK}/versions/0.1/infer"), json!({"inputs": []}), 404, "0.1"),
    ] {
        let (status, answer) = post(server.http, &path, &body).await;
        assert_eq!(status, want, "{path}: {answer}");
        let message = answer["error"].as_str().unwrap_or_else(|| panic!("{path}: no error field: {answer}"));
        assert!(message.contains(words), "{path}: {message}");
    }
    let metrics = http_get(server.admin, "/metrics").await.1;
    let labels = [("task", TASK), ("method", "POST /v2/models/{model}/infer"), ("code", "INVALID_ARGUMENT")];
    assert_eq!(metric_value(&metrics, "modeld_requests_total", &labels), Some(2.0), "refusals are counted");
}

#[tokio::test]
async fn readiness_and_metadata_follow_the_registry() {
    let root = model_root(None);
    let server = TestServer::start(test_config(root.path())).await;
    let mut client = v2_client(&server).await;
    assert!(client.server_live(v2::ServerLiveRequest {}).await.unwrap().into_inner().live);
    assert!(!client.server_ready(v2::ServerReadyRequest {}).await.unwrap().into_inner().ready);
    let ready = v2::ModelReadyRequest { name: TASK.into(), version: String::new() };
    assert!(!client.model_ready(ready.clone()).await.unwrap().into_inner().ready);
    assert_eq!(http_get(server.http, "/v2/health/ready").await.0, 503);
    assert_eq!(http_get(server.http, &format!("/v2/models/{TASK}/ready")).await.0, 503);
    let unknown = client.model_ready(v2::ModelReadyRequest { name: "fraud".into(), version: String::new() }).await;
    assert_eq!(unknown.unwrap_err().code(), Code::NotFound);

    point_current(root.path(), "v2");
    eventually("model ready", || {
        let (mut client, ready) = (client.clone(), ready.clone());
        async move { client.model_ready(ready).await.unwrap().into_inner().ready }
    })
    .await;
    assert!(client.server_ready(v2::ServerReadyRequest {}).await.unwrap().into_inner().ready);
    assert_eq!(http_get(server.http, "/v2/health/ready").await.0, 200);
    assert_eq!(http_get(server.http, "/v2/health/live").await.0, 200);

    let meta = client
        .model_metadata(v2::ModelMetadataRequest { name: TASK.into(), version: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((meta.name.as_str(), &meta.versions[..]), (TASK, &["v2".to_owned()][..]));
    assert_eq!(meta.inputs.len(), 20);
    let duration = meta.inputs.iter().find(|i| i.name == "duration_in_month").unwrap();
    assert_eq!((duration.datatype.as_str(), &duration.shape[..]), ("INT64", &[-1][..]));
    let purpose = meta.inputs.iter().find(|i| i.name == "purpose").unwrap();
    assert_eq!(purpose.datatype, "BYTES");
    let outputs: Vec<(&str, &str, &[i64])> =
        meta.outputs.iter().map(|o| (o.name.as_str(), o.datatype.as_str(), &o.shape[..])).collect();
    assert_eq!(outputs, [("label", "BYTES", &[-1][..]), ("probabilities", "FP32", &[-1, 2][..])]);
    let (status, rest) = http_get(server.http, &format!("/v2/models/{TASK}")).await;
    assert_eq!(status, 200);
    let rest: Value = serde_json::from_str(&rest).unwrap();
    assert_eq!(rest["inputs"].as_array().unwrap().len(), 20);
    assert_eq!(rest["platform"], "onnxruntime_onnx");
    let (status, server_meta) = http_get(server.http, "/v2").await;
    assert_eq!(status, 200);
    assert!(server_meta.contains("binary_tensor_data"), "{server_meta}");
}

/// KServe's storage initializer leaves the bundle's files at /mnt/models, with no task
/// directory and no `current` link; the model is named after the InferenceService.
#[tokio::test]
async fn single_bundle_mode_serves_a_bundle_directory_under_the_models_name() {
    let mnt = tempfile::tempdir().unwrap();
    let models = mnt.path().join("models");
    copy_version("v2", &models);
    let mut config = test_config(mnt.path());
    config.bundle_dir = Some(models);
    config.tasks = vec!["german-credit".into()];
    let server = TestServer::start_ready(config).await;
    let mut client = v2_client(&server).await;
    let ready = v2::ModelReadyRequest { name: "german-credit".into(), version: String::new() };
    assert!(client.model_ready(ready).await.unwrap().into_inner().ready);
    let rows = golden("v2");
    let answer = client.model_infer(v2_request("german-credit", &rows, true)).await.unwrap().into_inner();
    assert_eq!((answer.model_name.as_str(), answer.model_version.as_str()), ("german-credit", "v2"));
    let floats: Vec<f32> =
        answer.raw_output_contents[1].chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    for (g, p) in rows.iter().zip(floats.chunks(2)) {
        assert_close(p, &g.probabilities, &format!("golden line {}", g.line));
    }
    // modeld.v1 serves it under the same name.
    let mut request = predict_request(rows.iter().take(1).map(|g| to_pb(&g.row)).collect());
    request.task = "german-credit".into();
    let predicted = server.client().await.predict(request).await.unwrap().into_inner();
    assert_eq!(predicted.version, "v2");
    assert_close(&predicted.predictions[0].probabilities, &rows[0].probabilities, "Predict");
}

/// Callers are checked on the V2 faces as on the others: no token, no answer; a token for
/// another task, no answer; health stays open for probes.
#[tokio::test]
async fn callers_file_guards_the_v2_faces() {
    let root = model_root(Some("v2"));
    let callers = root.path().join("callers.yaml");
    let hash = |t: &str| modeld::bundle::manifest::sha256_hex(t.as_bytes());
    std::fs::write(
        &callers,
        format!(
            "callers:\n  - {{name: engine, token_sha256: {}, tasks: [{TASK}]}}\n  - {{name: other, token_sha256: {}, tasks: [fraud]}}\n",
            hash("tok-engine"),
            hash("tok-other")
        ),
    )
    .unwrap();
    let mut config = test_config(root.path());
    config.callers_file = Some(callers);
    let server = TestServer::start_ready(config).await;
    let mut client = v2_client(&server).await;
    let rows = &golden("v2")[..2];
    let with_token = |token: Option<&str>| {
        let mut request = tonic::Request::new(v2_request(TASK, rows, true));
        if let Some(t) = token {
            request.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        request
    };
    let code = |r: Result<tonic::Response<v2::ModelInferResponse>, tonic::Status>| r.err().map(|s| s.code());
    assert_eq!(code(client.model_infer(with_token(None)).await), Some(Code::Unauthenticated));
    assert_eq!(code(client.model_infer(with_token(Some("tok-other"))).await), Some(Code::PermissionDenied));
    assert_eq!(code(client.model_infer(with_token(Some("tok-engine"))).await), None);
    let metadata = client.model_metadata(v2::ModelMetadataRequest { name: TASK.into(), version: String::new() }).await;
    assert_eq!(metadata.unwrap_err().code(), Code::Unauthenticated);
    assert!(client.server_ready(v2::ServerReadyRequest {}).await.unwrap().into_inner().ready, "probes need no token");

    let url = format!("http://{}/v2/models/{TASK}", server.http);
    let (status, body, _) = curl(vec![url.clone()]).await;
    assert_eq!(status, 401, "{body}");
    assert!(serde_json::from_str::<Value>(&body).unwrap()["error"].is_string(), "{body}");
    let (status, body, _) = curl(vec!["-H".into(), "authorization: Bearer tok-engine".into(), url]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(http_get(server.http, "/v2/health/ready").await.0, 200);
}

/// The `modeld` ServingRuntime's own command line and environment, as KServe would run them
/// (the model directory and the InferenceService's name filled in; listen addresses moved to
/// free loopback ports): the daemon serves the bundle, its readiness probe turns 200 and the
/// model answers under the InferenceService's name.
#[tokio::test]
async fn the_serving_runtimes_command_line_serves_the_mounted_bundle() {
    let manifest = std::fs::read_to_string(repo().join("deploy/kserve/servingruntime.yaml")).unwrap();
    let runtime: serde_yaml::Value = serde_yaml::from_str(&manifest).unwrap();
    let container = &runtime["spec"]["containers"][0];
    let mnt = tempfile::tempdir().unwrap();
    let models = mnt.path().join("models");
    copy_version("v2", &models);
    let fill = |s: &str| s.replace("/mnt/models", models.to_str().unwrap()).replace("{{.Name}}", "german-credit");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_modeld"));
    for arg in container["args"].as_sequence().unwrap() {
        command.arg(fill(arg.as_str().unwrap()));
    }
    for var in container["env"].as_sequence().unwrap() {
        command.env(var["name"].as_str().unwrap(), fill(var["value"].as_str().unwrap()));
    }
    for addr in ["MODELD_GRPC_ADDR", "MODELD_HTTP_ADDR", "MODELD_ADMIN_ADDR"] {
        command.env(addr, "127.0.0.1:0");
    }
    command.env("MODELD_CONFIG", "/dev/null").env("MODELD_MODEL_ROOT", mnt.path());
    let mut daemon = Daemon::spawn(command);
    let _log = daemon.collect_log();
    let http = daemon.http.expect("the REST runtime serves HTTP");
    let probe = container["readinessProbe"]["httpGet"]["path"].as_str().unwrap().to_owned();
    eventually("readiness probe passes", || {
        let probe = probe.clone();
        async move { http_get(http, &probe).await.0 == 200 }
    })
    .await;
    let rows = &golden("v2")[..3];
    let inputs = v2_json_inputs(&v2_request("german-credit", rows, false));
    let (status, answer) = post(http, "/v2/models/german-credit/infer", &json!({ "inputs": inputs })).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["model_name"], "german-credit");
    let probabilities: Vec<f32> =
        answer["outputs"][1]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    for (g, p) in rows.iter().zip(probabilities.chunks(2)) {
        assert_close(p, &g.probabilities, &format!("golden line {}", g.line));
    }
}
