//! Champion/challenger through real servers: the sticky split's shares and stickiness (across
//! a restart and across two servers, against the documented bucket definition), sticky-key
//! errors, shadow scoring checked against a reference scored through version pins (metrics,
//! `GET /rollout/{task}` and the audit log), streams, and policy changes under traffic.

mod common;

use std::{collections::BTreeMap, path::Path, time::Duration};

use common::{
    TASK, TestServer, copy_version, curl, edit, eventually, golden, http_get, json_row, metric_value, model_root, post,
    predict_request, reseal, test_config, to_pb,
};
use modeld::{
    config::{AuditConfig, Config},
    pb,
    telemetry::audit::AuditTarget,
};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tonic::Code;

/// Writes `<task>/rollout.yaml` atomically, as a release pipeline does.
fn write_policy(root: &Path, text: &str) {
    let dir = root.join(TASK);
    let tmp = dir.join(".rollout.yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join("rollout.yaml")).unwrap();
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The bucket the README documents: first 8 bytes of SHA-256(task, 0x00, key), big-endian,
/// mod 10,000. Computed here independently of the server.
fn bucket(key: &str) -> u64 {
    let digest = Sha256::new().chain_update(TASK).chain_update([0u8]).chain_update(key).finalize();
    u64::from_be_bytes(digest[..8].try_into().unwrap()) % 10_000
}

async fn rollout(server: &TestServer) -> Value {
    let (status, body) = http_get(server.admin, &format!("/rollout/{TASK}")).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Waits until the server's live policy is the file with this text.
async fn wait_policy(server: &TestServer, text: &str) {
    let sha = sha256_hex(text);
    eventually("policy live", || {
        let sha = sha.clone();
        async move { rollout(server).await["policy"]["sha256"] == sha.as_str() }
    })
    .await;
}

/// A server on `root` with `policy` written first and live before it returns.
async fn serve_with_policy(root: &Path, config: Config, policy: &str) -> TestServer {
    write_policy(root, policy);
    let server = TestServer::start_ready(config).await;
    wait_policy(&server, policy).await;
    server
}

fn config(root: &Path) -> Config {
    let mut config = test_config(root);
    config.shadow_budget = Duration::from_secs(30);
    config
}

fn keyed_request(key: &str) -> pb::PredictRequest {
    static ROW: std::sync::OnceLock<pb::Row> = std::sync::OnceLock::new();
    let mut row = ROW.get_or_init(|| to_pb(&golden("v2")[0].row)).clone();
    row.row_id = key.to_owned();
    predict_request(vec![row])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_split_keeps_its_shares_and_its_keys_across_restarts_and_servers() {
    let root = model_root(Some("v2"));
    let policy = "split:\n  v1: 0.1\n  v2: 0.9\nsticky_by: row_id\n";
    let server = serve_with_policy(root.path(), config(root.path()), policy).await;

    // 10,000 distinct keys, 16 calls at a time.
    let client = server.client().await;
    let keys: Vec<String> = (0..10_000).map(|i| format!("applicant-{i}")).collect();
    let mut chosen: BTreeMap<String, String> = BTreeMap::new();
    for batch in keys.chunks(16) {
        let mut calls = tokio::task::JoinSet::new();
        for key in batch {
            let mut client = client.clone();
            let (key, request) = (key.clone(), keyed_request(key));
            calls.spawn(async move { (key, client.predict(request).await.expect("scored").into_inner().version) });
        }
        chosen.extend(calls.join_all().await);
    }
    let v1 = chosen.values().filter(|v| *v == "v1").count();
    assert!((900..=1100).contains(&v1), "v1 answered {v1} of 10000 keys at a 10% share");
    // Every key went where the documented bucket says.
    for (key, version) in &chosen {
        let expected = if bucket(key) < 1000 { "v1" } else { "v2" };
        assert_eq!(version, expected, "key {key}");
    }

    // A second server on the same files, and the first one restarted, agree key by key.
    let other = TestServer::start_ready(config(root.path())).await;
    wait_policy(&other, policy).await;
    server.stop().await.unwrap();
    let restarted = TestServer::start_ready(config(root.path())).await;
    wait_policy(&restarted, policy).await;
    for target in [&other, &restarted] {
        let mut client = target.client().await;
        for key in keys.iter().step_by(20) {
            let version = client.predict(keyed_request(key)).await.unwrap().into_inner().version;
            assert_eq!(version, chosen[key], "key {key}");
        }
    }
    // A pinned call ignores the split.
    let mut pinned = keyed_request(keys.iter().find(|k| chosen[*k] == "v1").unwrap());
    pinned.version = "v2".into();
    assert_eq!(restarted.client().await.predict(pinned).await.unwrap().into_inner().version, "v2");
}

#[tokio::test]
async fn a_split_by_feature_needs_one_key_per_call_and_reads_the_same_key_on_every_face() {
    let root = model_root(Some("v2"));
    let policy = "split:\n  v1: 0.5\n  v2: 0.5\nsticky_by: credit_amount\n";
    let server = serve_with_policy(root.path(), config(root.path()), policy).await;
    let mut client = server.client().await;
    let rows = golden("v2");

    // Rows with different amounts in one call: refused, naming the row and the field.
    let amount = |g: &modeld::bundle::golden::GoldenRow| {
        g.row.features.iter().find(|(k, _)| k == "credit_amount").map(|(_, v)| v.clone()).unwrap()
    };
    let other = rows.iter().position(|g| amount(g) != amount(&rows[0])).unwrap();
    let request = predict_request(vec![to_pb(&rows[0].row), to_pb(&rows[other].row)]);
    let status = client.predict(request).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("row 1: credit_amount:"), "{}", status.message());

    // A row without the feature: refused.
    let mut missing = to_pb(&rows[0].row);
    missing.features.remove("credit_amount");
    let status = client.predict(predict_request(vec![missing])).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("row 0: credit_amount:"), "{}", status.message());

    // Both faces describe the policy alike.
    let described = client.get_version(pb::GetVersionRequest { task: TASK.into() }).await.unwrap().into_inner();
    let rollout = described.rollout.expect("a live policy");
    assert_eq!((rollout.sha256.as_str(), rollout.sticky_by.as_str()), (sha256_hex(policy).as_str(), "credit_amount"));
    let (status, body, _) = curl(vec![format!("http://{}/v1/tasks/{TASK}", server.http)]).await;
    assert_eq!(status, 200, "{body}");
    let task: Value = serde_json::from_str(&body).unwrap();
    let expected = serde_json::json!({
        "sha256": rollout.sha256,
        "shadow_versions": [],
        "split": [{"version": "v1", "weight": 0.5}, {"version": "v2", "weight": 0.5}],
        "sticky_by": "credit_amount",
    });
    assert_eq!(task["rollout"], expected);

    // The same applicant through gRPC and HTTP/JSON lands on the same version, for every row.
    for g in rows.iter().take(24) {
        let grpc = client.predict(predict_request(vec![to_pb(&g.row)])).await.unwrap().into_inner().version;
        let body = serde_json::json!({ "rows": [json_row(&g.row)] });
        let (status, answer) = post(server.http, &format!("/v1/tasks/{TASK}/predict"), &body).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["version"], grpc.as_str(), "row {:?}", g.row.row_id);
    }
}

fn audited(root: &Path, log: &Path) -> Config {
    let mut config = config(root);
    config.audit = Some(AuditConfig {
        target: AuditTarget::File(log.to_owned()),
        sample: 1.0,
        features: None,
        redact: Vec::new(),
        hmac_key_file: None,
        max_bytes: 100 << 20,
        keep_files: 2,
        queue: 8192,
    });
    config
}

fn audit_records(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_scoring_matches_a_reference_scored_through_pins() {
    let root = model_root(Some("v2"));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let config = audited(root.path(), &log);
    let policy = "shadow: [v1]\n";
    let server = serve_with_policy(root.path(), config, policy).await;
    let mut client = server.client().await;

    // Each golden row in its own call, answered by v2 with v1 in the shadow.
    let rows = golden("v2");
    let mut disagreements = 0;
    let mut confusion: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (i, g) in rows.iter().enumerate() {
        let mut request = predict_request(vec![to_pb(&g.row)]);
        request.request_id = format!("r{i}");
        let answer = client.predict(request.clone()).await.unwrap().into_inner();
        assert_eq!(answer.version, "v2");
        // The reference: the same row through a pin on the shadow version.
        request.version = "v1".into();
        request.request_id.clear();
        let reference = client.predict(request).await.unwrap().into_inner();
        let (a, b) = (&answer.predictions[0].label, &reference.predictions[0].label);
        disagreements += u64::from(a != b);
        *confusion.entry((a.clone(), b.clone())).or_default() += 1;
    }
    let n = rows.len() as f64;
    let labels = [("task", TASK), ("champion", "v2"), ("challenger", "v1")];
    let admin = server.admin;
    eventually("every shadow row compared", || async move {
        let text = http_get(admin, "/metrics").await.1;
        metric_value(&text, "modeld_shadow_rows_total", &labels) == Some(n)
    })
    .await;
    let text = http_get(admin, "/metrics").await.1;
    assert_eq!(metric_value(&text, "modeld_shadow_label_disagreements_total", &labels), Some(disagreements as f64));
    assert!(disagreements > 0, "v1 and v2 disagree on some golden rows, so the comparison is not vacuous");
    for ((a, b), count) in &confusion {
        let labels = [("champion_label", a.as_str()), ("challenger_label", b.as_str()), ("challenger", "v1")];
        assert_eq!(metric_value(&text, "modeld_shadow_decisions_total", &labels), Some(*count as f64), "{a}->{b}");
    }
    let count = metric_value(&text, "modeld_shadow_score_difference_count", &labels);
    assert_eq!(count, Some(n));

    // The admin report says the same.
    let report = rollout(&server).await;
    let pair = &report["diff"][0];
    assert_eq!((pair["champion"].as_str(), pair["challenger"].as_str()), (Some("v2"), Some("v1")));
    assert_eq!(pair["rows"], rows.len());
    assert_eq!(pair["label_disagreements"], disagreements);
    assert!(pair["score_difference_max_abs"].as_f64().unwrap() > 0.0);
    assert_eq!(report["policy"]["shadow"][0]["version"], "v1");
    assert!(report["loaded_versions"].as_array().unwrap().iter().any(|v| v == "v1"), "{report}");

    // The audit log holds each call's record and, beside it, its shadow record.
    server.stop().await.unwrap();
    let records: Vec<Value> =
        std::fs::read_to_string(&log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for (i, g) in rows.iter().enumerate() {
        let id = format!("r{i}");
        let shadow: Vec<&Value> =
            records.iter().filter(|r| r["request_id"] == id.as_str() && r.get("shadow").is_some()).collect();
        assert_eq!(shadow.len(), 1, "{id}");
        let shadow = shadow[0];
        assert_eq!((shadow["version"].as_str(), shadow["shadow"]["version"].as_str()), (Some("v2"), Some("v1")));
        let outputs = &shadow["rows"][0]["outputs"];
        assert!(outputs["v1"]["label"].is_string() && outputs["v2"]["label"].is_string(), "{shadow}");
        assert_eq!(shadow["rows"][0]["row_id"], g.row.row_id.as_str());
    }
    // `modeld audit` finds a call's shadow record beside it, and shadow records by version.
    let audit = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_modeld")).arg("audit").arg(&log).args(args).output();
        String::from_utf8(out.unwrap().stdout).unwrap()
    };
    assert_eq!(audit(&["--request-id", "r0"]).lines().count(), 2);
    let table = audit(&["--version", "v1", "--format", "table"]);
    let shadow_lines = table.lines().filter(|l| l.split_whitespace().any(|w| w == "shadow")).count();
    assert_eq!(shadow_lines, rows.len(), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_the_shadow_jobs_of_answered_calls() {
    let root = model_root(Some("v2"));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let policy = "shadow: [v1]\n";
    let server = serve_with_policy(root.path(), audited(root.path(), &log), policy).await;
    let mut client = server.client().await;
    let rows = golden("v2");
    for (i, g) in rows.iter().enumerate() {
        let mut request = predict_request(vec![to_pb(&g.row)]);
        request.request_id = format!("r{i}");
        client.predict(request).await.unwrap();
    }
    // Stopped right after the last answer: every shadow job still runs and is recorded.
    server.stop().await.unwrap();
    let records = audit_records(&log);
    let shadowed = records.iter().filter(|r| r.get("shadow").is_some()).count();
    assert_eq!(shadowed, rows.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_split_once_by_its_first_row_and_shadowed() {
    let root = model_root(Some("v2"));
    let policy = "shadow: [v1]\nsplit:\n  v1: 0.5\n  v2: 0.5\nsticky_by: row_id\n";
    let server = serve_with_policy(root.path(), config(root.path()), policy).await;
    let mut client = server.client().await;
    let rows = golden("v2");
    // Two streams whose first rows fall on different sides of the split.
    let first_v1 = (0..).map(|i| format!("s{i}")).find(|k| bucket(k) < 5000).unwrap();
    let first_v2 = (0..).map(|i| format!("s{i}")).find(|k| bucket(k) >= 5000).unwrap();
    let mut shadowed = 0;
    for (first, expected) in [(first_v1, "v1"), (first_v2, "v2")] {
        let chunks: Vec<pb::BatchPredictRequest> = rows
            .chunks(16)
            .enumerate()
            .map(|(c, chunk)| {
                let rows = chunk
                    .iter()
                    .enumerate()
                    .map(|(i, g)| {
                        let mut row = to_pb(&g.row);
                        // Later rows carry other keys: the stream keeps its first choice.
                        row.row_id = if c == 0 && i == 0 { first.clone() } else { format!("other-{c}-{i}") };
                        row
                    })
                    .collect();
                pb::BatchPredictRequest { task: TASK.into(), rows, ..Default::default() }
            })
            .collect();
        let mut answers = client.batch_predict(tokio_stream::iter(chunks)).await.unwrap().into_inner();
        while let Some(answer) = answers.message().await.unwrap() {
            assert_eq!(answer.version, expected);
        }
        if expected == "v2" {
            shadowed = rows.len();
        }
    }
    // Only the stream v2 answered is shadowed by v1.
    let labels = [("task", TASK), ("champion", "v2"), ("challenger", "v1")];
    let admin = server.admin;
    eventually("the v2 stream's rows compared", || async move {
        let text = http_get(admin, "/metrics").await.1;
        metric_value(&text, "modeld_shadow_rows_total", &labels) == Some(shadowed as f64)
    })
    .await;
    let text = http_get(admin, "/metrics").await.1;
    assert_eq!(metric_value(&text, "modeld_shadow_rows_total", &[("champion", "v1")]), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_change_under_traffic_without_a_failed_call_and_a_bad_one_is_refused() {
    let root = model_root(Some("v2"));
    let server = TestServer::start_ready(config(root.path())).await;
    let addr = server.grpc;
    let stop = tokio_util::sync::CancellationToken::new();
    // Traffic: 4 callers, bounded in count, until told to stop.
    let callers: Vec<_> = (0..4)
        .map(|c| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let channel = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap();
                let mut client = pb::inference_client::InferenceClient::new(channel.connect().await.unwrap());
                let (mut ok, mut versions) = (0u64, BTreeMap::<String, u64>::new());
                for i in 0..200_000u64 {
                    if stop.is_cancelled() {
                        break;
                    }
                    let answer = client.predict(keyed_request(&format!("c{c}-{i}"))).await.expect("no call fails");
                    *versions.entry(answer.into_inner().version).or_default() += 1;
                    ok += 1;
                }
                (ok, versions)
            })
        })
        .collect();

    let steps = [
        "split:\n  v1: 0.0\n  v2: 1.0\nsticky_by: row_id\n",
        "shadow: [v1]\nsplit:\n  v1: 0.5\n  v2: 0.5\nsticky_by: row_id\n",
        "split:\n  v1: 1.0\n  v2: 0.0\nsticky_by: row_id\n",
    ];
    let admin = server.admin;
    for policy in steps {
        write_policy(root.path(), policy);
        wait_policy(&server, policy).await;
        // Let traffic run under this policy for a while: counted in calls, not in time.
        let before = requests_ok(admin).await;
        eventually("traffic under the policy", || async move { requests_ok(admin).await >= before + 200.0 }).await;
    }
    let good = steps[2];

    // Bad policies: refused with a reason; the live one stays and keeps answering.
    let loads = |text: &str, result| metric_value(text, "modeld_rollout_policy_loads_total", &[("result", result)]);
    // v3 is a version directory whose golden rows no longer match its model: it never loads.
    let v3 = root.path().join(TASK).join("v3");
    copy_version("v2", &v3);
    std::fs::write(v3.join("version.txt"), "v3\n").unwrap();
    edit(&v3, "golden.jsonl", |t| t.replacen("\"label\": \"", "\"label\": \"x", 1));
    reseal(&v3);
    for (bad, says) in [
        ("split:\n  v1: 0.5\n  v2: 0.3\nsticky_by: row_id\n", "sum to"),
        ("shadow: [v9]\n", "v9"),
        ("shadow: [v3]\n", "version `v3` named by rollout.yaml did not load"),
    ] {
        let before = loads(&http_get(admin, "/metrics").await.1, "failure").unwrap_or(0.0);
        write_policy(root.path(), bad);
        let server = &server;
        eventually("policy refused", || async move {
            rollout(server).await["policy_error"].as_str().is_some_and(|e| e.contains(says))
        })
        .await;
        let report = rollout(server).await;
        assert_eq!(report["policy"]["sha256"], sha256_hex(good).as_str(), "{report}");
        assert_eq!(loads(&http_get(admin, "/metrics").await.1, "failure"), Some(before + 1.0));
    }
    let before = requests_ok(admin).await;
    eventually("traffic after the refusals", || async move { requests_ok(admin).await >= before + 200.0 }).await;

    // The file removed: no policy, the live version answers.
    std::fs::remove_file(root.path().join(TASK).join("rollout.yaml")).unwrap();
    let server_ref = &server;
    eventually("policy removed", || async move { rollout(server_ref).await["policy"].is_null() }).await;
    stop.cancel();
    let mut versions = BTreeMap::<String, u64>::new();
    for caller in callers {
        let (ok, seen) = caller.await.expect("every call succeeded");
        assert!(ok > 0);
        for (v, n) in seen {
            *versions.entry(v).or_default() += n;
        }
    }
    assert!(versions.get("v1").is_some_and(|n| *n > 0) && versions.get("v2").is_some_and(|n| *n > 0), "{versions:?}");
    let text = http_get(admin, "/metrics").await.1;
    let failed = text
        .lines()
        .filter(|l| l.starts_with("modeld_requests_total{") && !l.contains("code=\"OK\""))
        .collect::<Vec<_>>();
    assert!(failed.is_empty(), "{failed:?}");
}

async fn requests_ok(admin: std::net::SocketAddr) -> f64 {
    let text = http_get(admin, "/metrics").await.1;
    text.lines()
        .filter(|l| l.starts_with("modeld_requests_total{") && l.contains("code=\"OK\""))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_refused_policy_file_that_is_removed_is_no_longer_reported() {
    let root = model_root(Some("v2"));
    write_policy(root.path(), "split:\n  v1: 0.7\n  v2: 0.7\nsticky_by: row_id\n");
    let server = TestServer::start_ready(config(root.path())).await;
    let server = &server;
    eventually("refused", || async move { rollout(server).await["policy_error"].is_string() }).await;
    let report = rollout(server).await;
    assert!(report["policy"].is_null(), "{report}");
    // Calls are answered by the live version meanwhile.
    let answer = server.client().await.predict(keyed_request("k")).await.unwrap().into_inner();
    assert_eq!(answer.version, "v2");
    std::fs::remove_file(root.path().join(TASK).join("rollout.yaml")).unwrap();
    eventually("error cleared", || async move { rollout(server).await["policy_error"].is_null() }).await;
}
