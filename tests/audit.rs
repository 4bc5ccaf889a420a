//! The audit log, through a real server: every field of the records of Predict (with compared
//! versions), BatchPredict chunks, the HTTP face and rejected calls; redaction, feature
//! selection and sampling; rotation and `modeld audit`'s filters; a writer that cannot keep up;
//! and SIGTERM under load, with every answered call found in the log.

mod common;

use std::{
    collections::HashSet,
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
};

use common::{
    TASK, TestServer, audit_to, golden, http_get, json_row, metric_value, model_root, predict_request, test_config,
    to_pb,
};
use hmac::{Hmac, Mac};
use modeld::{
    config::{AuditConfig, Config},
    pb::{self, row_result::Outcome, value::Kind},
    telemetry::audit::parse_time,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

fn config_with(root: &Path, audit: AuditConfig) -> Config {
    let mut config = test_config(root);
    config.audit = Some(audit);
    config
}

/// Every record of the log at `path`, rotated files first.
fn records(path: &Path) -> Vec<Value> {
    modeld::telemetry::audit::log_files(path)
        .iter()
        .flat_map(|f| std::fs::read_to_string(f).unwrap().lines().map(String::from).collect::<Vec<_>>())
        .map(|line| serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect()
}

fn by_request<'a>(records: &'a [Value], id: &str) -> &'a Value {
    let mut found = records.iter().filter(|r| r["request_id"] == id);
    let record = found.next().unwrap_or_else(|| panic!("no record for {id}"));
    assert!(found.next().is_none(), "more than one record for {id}");
    record
}

/// Starts a server keeping v1 warm beside the live v2 and waits until v1 is loaded.
async fn start_with_v1(mut config: Config) -> TestServer {
    config.keep_versions = vec!["v1".into()];
    let server = TestServer::start_ready(config).await;
    let client = server.client().await;
    common::eventually("v1 kept warm", || {
        let mut client = client.clone();
        async move {
            let request = pb::GetVersionRequest { task: TASK.into() };
            client.get_version(request).await.is_ok_and(|r| r.into_inner().loaded_versions.contains(&"v1".to_owned()))
        }
    })
    .await;
    server
}

fn manifest_sha256(version: &str) -> String {
    let manifest = std::fs::read(common::repo_models().join(TASK).join(version).join("MANIFEST.sha256")).unwrap();
    Sha256::digest(manifest).iter().map(|b| format!("{b:02x}")).collect()
}

fn row(features: &[(&str, Kind)], id: &str) -> pb::Row {
    let mut row = to_pb(&golden("v2")[0].row);
    row.row_id = id.into();
    for (name, kind) in features {
        row.features.insert((*name).into(), pb::Value { kind: Some(kind.clone()) });
    }
    row
}

fn assert_outputs(outputs: &Value, prediction: &pb::Prediction) {
    assert_eq!(outputs["label"], prediction.label.as_str());
    let recorded: Vec<f32> =
        outputs["probabilities"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap() as f32).collect();
    assert_eq!(recorded, prediction.probabilities);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predict_compare_http_and_rejected_calls_are_recorded_with_every_field() {
    let root = model_root(Some("v2"));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let server = start_with_v1(config_with(root.path(), audit_to(&log))).await;
    let mut client = server.client().await;
    let before = now_micros();

    let golden = golden("v2");
    let mut compare = predict_request(golden[..3].iter().map(|g| to_pb(&g.row)).collect());
    compare.request_id = "r-compare".into();
    compare.compare_versions = vec!["v1".into()];
    let answer = client.predict(compare).await.unwrap().into_inner();

    let mut bad =
        predict_request(vec![to_pb(&golden[0].row), row(&[("duration_in_month", Kind::Text("long".into()))], "b-1")]);
    bad.request_id = "r-bad".into();
    let err = client.predict(bad).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    let body = json!({ "rows": [json_row(&golden[1].row)], "request_id": "r-http" });
    let status = curl_post(server.http, &format!("/v1/tasks/{TASK}/predict"), &body);
    assert_eq!(status, 200);

    server.stop().await.unwrap();
    let after = now_micros();
    let records = records(&log);
    assert_eq!(records.len(), 3, "one record per call: {records:#?}");

    let r = by_request(&records, "r-compare");
    let at = parse_time(r["time"].as_str().unwrap()).expect("an RFC 3339 time");
    assert!((before..=after).contains(&at), "record time {} outside the test", r["time"]);
    assert!(r["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{}", r["peer"]);
    assert_eq!(
        (r["task"].as_str(), r["method"].as_str(), r["version"].as_str()),
        (Some(TASK), Some("Predict"), Some("v2"))
    );
    assert_eq!(r["manifest_sha256"], manifest_sha256("v2"));
    assert_eq!(r["compare"], json!([{ "version": "v1", "manifest_sha256": manifest_sha256("v1") }]));
    assert_eq!(r["outcome"], json!({ "code": "OK", "message": "" }));
    assert!(r["latency_ms"].as_f64().unwrap() > 0.0);
    let rows = r["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    for (i, (recorded, g)) in rows.iter().zip(&golden).enumerate() {
        assert_eq!(recorded["row_id"], g.row.row_id.as_str());
        assert_eq!(recorded["features"], json_row(&g.row), "row {i}: the features as sent");
        assert_outputs(&recorded["outputs"]["v2"], &answer.predictions[i]);
        assert_outputs(&recorded["outputs"]["v1"], &answer.comparisons[0].predictions[i]);
        let versions: Vec<&String> = recorded["outputs"].as_object().unwrap().keys().collect();
        assert_eq!(versions.len(), 2, "{versions:?}");
    }

    let r = by_request(&records, "r-bad");
    assert_eq!(r["outcome"]["code"], "INVALID_ARGUMENT");
    assert_eq!(r["outcome"]["message"], err.message());
    assert_eq!((r["outcome"]["row"].as_u64(), r["outcome"]["field"].as_str()), (Some(1), Some("duration_in_month")));
    assert_eq!(r["version"], "v2", "a failed call names the live version");
    assert_eq!(r["rows"][1]["features"]["duration_in_month"], "long", "the bad value as received");
    assert!(r["rows"][0].get("outputs").is_none(), "a failed call has no outputs");

    let r = by_request(&records, "r-http");
    assert_eq!(r["method"], "POST /v1/tasks/{task}/predict");
    assert_eq!(r["rows"][0]["features"], json_row(&golden[1].row));
    assert_eq!(r["rows"][0]["outputs"]["v2"]["label"], golden[1].label.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_stream_chunk_is_a_record_with_its_row_errors_and_refused_chunks_too() {
    let root = model_root(Some("v2"));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let server = TestServer::start_ready(config_with(root.path(), audit_to(&log))).await;
    let mut client = server.client().await;
    let golden = golden("v2");

    let good = golden[..3].iter().map(|g| to_pb(&g.row)).collect();
    let mixed = vec![to_pb(&golden[3].row), row(&[("age_in_years", Kind::Text("old".into()))], "bad-age")];
    let chunks = vec![
        pb::BatchPredictRequest { task: TASK.into(), rows: good, ..Default::default() },
        pb::BatchPredictRequest { rows: mixed, ..Default::default() },
    ];
    let mut answers = client.batch_predict(tokio_stream::iter(chunks)).await.unwrap().into_inner();
    let mut responses = Vec::new();
    while let Some(r) = answers.message().await.unwrap() {
        responses.push(r);
    }
    let refused =
        vec![pb::BatchPredictRequest { task: "nope".into(), rows: vec![to_pb(&golden[0].row)], ..Default::default() }];
    let mut answers = client.batch_predict(tokio_stream::iter(refused)).await.unwrap().into_inner();
    assert_eq!(answers.message().await.unwrap_err().code(), tonic::Code::NotFound);

    server.stop().await.unwrap();
    let records = records(&log);
    assert_eq!(records.len(), 3, "{records:#?}");
    let (first, second, refused) = (&records[0], &records[1], &records[2]);
    assert_eq!(first["method"], "BatchPredict");
    assert_eq!(first["stream"], second["stream"], "chunks of one stream share its number");
    assert_ne!(first["stream"], refused["stream"]);
    assert_eq!((first["chunk"].as_u64(), second["chunk"].as_u64()), (Some(0), Some(1)));
    assert_eq!(first["rows"].as_array().unwrap().len(), 3);
    let Some(Outcome::Prediction(p)) = &responses[0].results[2].outcome else { panic!("row 2 scored") };
    assert_outputs(&first["rows"][2]["outputs"]["v2"], p);
    assert_eq!(second["outcome"]["code"], "OK", "a chunk with a bad row is still answered");
    assert_eq!(second["rows"][1]["row_id"], "bad-age");
    assert_eq!(second["rows"][1]["error"]["field"], "age_in_years");
    assert!(second["rows"][1].get("outputs").is_none());
    assert_eq!(second["rows"][0]["outputs"]["v2"]["label"], golden[3].label.as_str());
    assert_eq!((refused["task"].as_str(), refused["outcome"]["code"].as_str()), (Some("nope"), Some("NOT_FOUND")));
}

fn hmac_hex(key: &[u8], value: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(value.as_bytes());
    let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("hmac-sha256:{hex}")
}

/// Scores three rows, two with a credit amount of 5000 (once as an integer, once as a
/// number) and one of 7000, through a server redacting it under `key`, and returns the records.
async fn redacted_amounts(key: &[u8]) -> Vec<Value> {
    let root = model_root(Some("v2"));
    let dir = tempfile::tempdir().unwrap();
    let (log, key_file) = (dir.path().join("audit.log"), dir.path().join("key"));
    std::fs::write(&key_file, [key, b"\n"].concat()).unwrap();
    let mut audit = audit_to(&log);
    audit.redact = vec!["credit_amount".into()];
    audit.hmac_key_file = Some(key_file);
    audit.features = Some(vec!["credit_amount".into(), "age_in_years".into()]);
    let server = TestServer::start_ready(config_with(root.path(), audit)).await;
    let rows = vec![
        row(&[("credit_amount", Kind::Integer(5000))], "a"),
        row(&[("credit_amount", Kind::Number(5000.0))], "b"),
        row(&[("credit_amount", Kind::Integer(7000))], "c"),
    ];
    server.client().await.predict(predict_request(rows)).await.unwrap();
    server.stop().await.unwrap();
    records(&log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redacted_fields_are_keyed_digests_equal_for_equal_values_under_one_key() {
    let one = redacted_amounts(b"key-one").await;
    let other = redacted_amounts(b"key-two").await;
    let amounts = |records: &[Value]| -> Vec<String> {
        records[0]["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["features"]["credit_amount"].as_str().unwrap().to_owned())
            .collect()
    };
    let (a, b) = (amounts(&one), amounts(&other));
    assert_eq!(a[0], hmac_hex(b"key-one", "5000"), "the key file's trailing newline is not part of the key");
    assert_eq!(a[0], a[1], "5000 and 5000.0 are one value");
    assert_ne!(a[0], a[2]);
    assert_ne!(a[0], b[0], "another key, another digest");
    assert_eq!(b[0], hmac_hex(b"key-two", "5000"));
    let features = one[0]["rows"][0]["features"].as_object().unwrap();
    let names: HashSet<&str> = features.keys().map(String::as_str).collect();
    assert_eq!(names, HashSet::from(["credit_amount", "age_in_years"]), "only the selected features");
    assert_eq!(
        features["age_in_years"],
        golden("v2")[0].row.features.iter().find(|(k, _)| k == "age_in_years").map(|(_, v)| json_row_value(v)).unwrap()
    );
}

fn json_row_value(v: &modeld::schema::OwnedValue) -> Value {
    use modeld::schema::OwnedValue;
    match v {
        OwnedValue::Bool(b) => json!(b),
        OwnedValue::Integer(i) => json!(i),
        OwnedValue::Number(x) => json!(x),
        OwnedValue::Text(s) => json!(s),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_keeps_a_share_of_successes_and_every_error() {
    for (sample, calls) in [(0.0, 40), (0.5, 400)] {
        let root = model_root(Some("v2"));
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.log");
        let mut audit = audit_to(&log);
        audit.sample = sample;
        let server = TestServer::start_ready(config_with(root.path(), audit)).await;
        let mut client = server.client().await;
        let good = to_pb(&golden("v2")[0].row);
        for i in 0..calls {
            let mut request = predict_request(vec![good.clone()]);
            request.request_id = format!("ok-{i}");
            client.predict(request).await.unwrap();
        }
        for i in 0..5 {
            let mut request = predict_request(vec![row(&[("age_in_years", Kind::Flag(true))], "x")]);
            request.request_id = format!("bad-{i}");
            client.predict(request).await.unwrap_err();
        }
        server.stop().await.unwrap();
        let records = records(&log);
        let errors = records.iter().filter(|r| r["outcome"]["code"] != "OK").count();
        let successes = records.len() - errors;
        assert_eq!(errors, 5, "every error is recorded at sample {sample}");
        if sample == 0.0 {
            assert_eq!(successes, 0);
        } else {
            // 400 draws at 0.5: 200 ± 10 standard deviations.
            assert!((100..=300).contains(&successes), "{successes} of {calls} successes recorded at 0.5");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_files_are_read_in_order_and_modeld_audit_filters_them() {
    let root = model_root(Some("v2"));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let mut audit = audit_to(&log);
    audit.max_bytes = 4096;
    audit.keep_files = 50;
    let server = start_with_v1(config_with(root.path(), audit)).await;
    let mut client = server.client().await;
    let good = to_pb(&golden("v2")[0].row);
    for i in 0..20 {
        let mut request = predict_request(vec![good.clone()]);
        request.request_id = format!("r-{i}");
        match i {
            7 => request.compare_versions = vec!["v1".into()],
            12 => request.rows[0].features.remove("age_in_years").map(|_| ()).unwrap(),
            15 => request.version = "v9".into(),
            _ => {}
        }
        let _ = client.predict(request).await;
    }
    server.stop().await.unwrap();
    assert!(modeld::telemetry::audit::log_files(&log).len() >= 5, "the log rotated");
    let all = records(&log);
    let ids: Vec<&str> = all.iter().map(|r| r["request_id"].as_str().unwrap()).collect();
    assert_eq!(ids, (0..20).map(|i| format!("r-{i}")).collect::<Vec<_>>(), "every record, oldest first");

    let ids_of = |args: &[&str]| -> Vec<String> {
        let out = modeld_audit(&log, args);
        out.lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["request_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids_of(&[]).len(), 20);
    assert_eq!(ids_of(&["--request-id", "r-3"]), ["r-3"]);
    assert_eq!(ids_of(&["--outcome", "error"]), ["r-12", "r-15"]);
    assert_eq!(ids_of(&["--outcome", "not_found"]), ["r-15"]);
    assert_eq!(ids_of(&["--version", "v1"]), ["r-7"]);
    assert_eq!(ids_of(&["--task", "other"]), Vec::<String>::new());
    assert_eq!(ids_of(&["--task", TASK]).len(), 20);
    let (from, to) = (all[5]["time"].as_str().unwrap(), all[9]["time"].as_str().unwrap());
    assert_eq!(ids_of(&["--since", from, "--until", to]), ["r-5", "r-6", "r-7", "r-8"]);

    let table = modeld_audit(&log, &["--format", "table", "--outcome", "INVALID_ARGUMENT"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "a header and one record:\n{table}");
    assert!(
        lines[0].starts_with("time") && lines[1].contains("r-12") && lines[1].contains("INVALID_ARGUMENT"),
        "{table}"
    );

    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_modeld"))
        .args(["audit", log.to_str().unwrap(), "--since", "last tuesday"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--since: `last tuesday` is not a time"));
}

fn modeld_audit(log: &Path, args: &[&str]) -> String {
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_modeld")).arg("audit").arg(log).args(args).output().unwrap();
    assert!(out.status.success(), "modeld audit {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_stuck_on_a_full_pipe_drops_and_counts_records_and_calls_still_succeed() {
    use std::os::unix::fs::OpenOptionsExt;
    let root = model_root(Some("v2"));
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("audit.pipe");
    let status = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success());
    // A reader that never reads: the writer fills the pipe, then blocks on it.
    let stalled = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&fifo).unwrap();
    let mut audit = audit_to(&fifo);
    audit.queue = 16;
    let server = TestServer::start_ready(config_with(root.path(), audit)).await;
    let mut client = server.client().await;
    let good = to_pb(&golden("v2")[0].row);
    const CALLS: usize = 400;
    for i in 0..CALLS {
        let mut request = predict_request(vec![good.clone()]);
        request.request_id = format!("r-{i}");
        client.predict(request).await.expect("calls succeed while the audit writer is stuck");
    }
    let metrics = http_get(server.admin, "/metrics").await.1;
    let dropped = metric_value(&metrics, "modeld_audit_dropped_total", &[("task", TASK)]).unwrap_or(0.0);
    let written = metric_value(&metrics, "modeld_audit_records_total", &[]).unwrap_or(0.0);
    assert!(dropped > 0.0, "a stuck writer drops records: {dropped}");
    assert!(written + dropped <= CALLS as f64);

    // Drain the pipe: shutdown then writes out what the queue still held.
    let reader = std::fs::File::open(&fifo).unwrap();
    drop(stalled);
    let lines = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(reader).lines().map_while(Result::ok).count()
    });
    server.stop().await.unwrap();
    let lines = lines.join().unwrap();
    assert_eq!(lines as f64 + dropped, CALLS as f64, "every record is either written or counted as dropped");
}

#[test]
fn sigterm_under_load_loses_no_record_of_an_answered_call() {
    let root = model_root(Some("v2"));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let mut daemon = common::Daemon::serve(root.path(), &[("MODELD_AUDIT_PATH", log.to_str().unwrap())]);
    let _log = daemon.collect_log();
    let (grpc, admin) = (daemon.grpc, daemon.admin);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let answered = Arc::new(Mutex::new(Vec::<String>::new()));
    rt.block_on(common::eventually("ready", || async move { http_get(admin, "/readyz").await.0 == 200 }));
    let callers: Vec<_> = (0..8)
        .map(|c| {
            let answered = answered.clone();
            rt.spawn(async move {
                let Ok(channel) =
                    tonic::transport::Channel::from_shared(format!("http://{grpc}")).unwrap().connect().await
                else {
                    return;
                };
                let mut client = pb::inference_client::InferenceClient::new(channel);
                let good = to_pb(&golden("v2")[0].row);
                // Bounded: at most 20000 calls per caller; the daemon stops long before.
                for i in 0..20_000 {
                    let mut request = predict_request(vec![good.clone()]);
                    request.request_id = format!("c{c}-{i}");
                    match client.predict(request).await {
                        Ok(_) => answered.lock().unwrap().push(format!("c{c}-{i}")),
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    let count = answered.clone();
    rt.block_on(common::eventually("calls answered under load", || {
        let n = count.lock().unwrap().len();
        async move { n >= 2000 }
    }));
    common::signal(&daemon.child, "TERM");
    let status = daemon.child.wait().unwrap();
    assert!(status.success(), "modeld exited with {status}");
    for caller in callers {
        rt.block_on(caller).unwrap();
    }
    let recorded: HashSet<String> =
        records(&log).iter().map(|r| r["request_id"].as_str().unwrap().to_owned()).collect();
    let answered = answered.lock().unwrap();
    let missing: Vec<&String> = answered.iter().filter(|id| !recorded.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} answered calls have no record, e.g. {:?}",
        missing.len(),
        answered.len(),
        &missing[..missing.len().min(5)]
    );
}

#[test]
fn log_lines_for_a_shipper_plain_text_off_a_terminal_and_json_with_the_request_id() {
    let root = model_root(Some("v2"));
    let mut daemon = common::Daemon::serve(root.path(), &[("MODELD_LOG", "info,modeld=debug")]);
    let log = daemon.collect_log();
    let (grpc, admin) = (daemon.grpc, daemon.admin);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        common::eventually("ready", || async move { http_get(admin, "/readyz").await.0 == 200 }).await;
        let channel =
            tonic::transport::Channel::from_shared(format!("http://{grpc}")).unwrap().connect().await.unwrap();
        let mut client = pb::inference_client::InferenceClient::new(channel);
        let mut request = predict_request(vec![row(&[("age_in_years", Kind::Text("old".into()))], "x")]);
        request.request_id = "find-me-42".into();
        client.predict(request).await.unwrap_err();
    });
    common::signal(&daemon.child, "TERM");
    daemon.child.wait().unwrap();
    let lines = log.join().unwrap();
    let rejected = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["message"] == "prediction rejected")
        .unwrap_or_else(|| panic!("no rejection line in {lines:#?}"));
    assert_eq!(rejected["request_id"], "find-me-42");

    // Text format to a pipe: no colour codes.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_modeld"))
        .args(["serve", "--config", "/dev/null", "--tasks", TASK, "--log-format", "text"])
        .args(["--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .arg("--model-root")
        .arg(root.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    for line in std::io::BufRead::lines(stderr).map_while(Result::ok) {
        let listening = line.contains("listening");
        seen.push(line);
        if listening {
            break;
        }
    }
    common::signal(&child, "TERM");
    child.wait().unwrap();
    assert!(seen.iter().any(|l| l.contains("listening")), "{seen:#?}");
    assert!(seen.iter().all(|l| !l.contains('\u{1b}')), "colour codes in piped text logs: {seen:#?}");
}

fn curl_post(addr: SocketAddr, path: &str, body: &Value) -> u16 {
    let out = std::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H", "content-type: application/json", "--data-binary"])
        .arg(body.to_string())
        .arg(format!("http://{addr}{path}"))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

fn now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64
}
