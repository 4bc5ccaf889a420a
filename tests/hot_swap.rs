//! The hot-swappable registry: flips under load, bad candidates, rollback, polling, pins and A/B.

mod common;

use std::{
    collections::HashMap,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use common::*;
use modeld::pb;
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

/// Golden outputs by version, then row id.
fn golden_by_version() -> HashMap<String, HashMap<String, (String, Vec<f32>)>> {
    ["v1", "v2"]
        .iter()
        .map(|v| {
            let rows = golden(v).into_iter().map(|g| (g.row.row_id.clone(), (g.label, g.probabilities))).collect();
            (v.to_string(), rows)
        })
        .collect()
}

async fn live_version(client: &mut pb::inference_client::InferenceClient<Channel>) -> String {
    client.get_version(pb::GetVersionRequest { task: TASK.into() }).await.unwrap().into_inner().version
}

async fn await_version(server: &TestServer, version: &str) {
    let channel = server.channel().await;
    eventually(&format!("live version {version}"), || {
        let mut client = pb::inference_client::InferenceClient::new(channel.clone());
        async move { live_version(&mut client).await == version }
    })
    .await;
}

async fn reload_error(server: &TestServer) -> String {
    let mut client = server.client().await;
    client.get_version(pb::GetVersionRequest { task: TASK.into() }).await.unwrap().into_inner().last_reload_error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flips_under_load_lose_no_request_and_never_mix_versions() {
    const FLIPS: usize = 50;
    const CLIENTS: usize = 4;
    let root = model_root(Some("v1"));
    let server = TestServer::start_ready(test_config(root.path())).await;
    let golden = Arc::new(golden_by_version());
    let rows: Arc<Vec<pb::Row>> = Arc::new(common::golden("v1").iter().map(|g| to_pb(&g.row)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));

    // Clients: Predict in a loop, bounded by the flip phase; every response must be the golden
    // output of exactly the version it names.
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (mut client, golden, rows, stop, answered) =
            (server.client().await, golden.clone(), rows.clone(), stop.clone(), answered.clone());
        clients.push(tokio::spawn(async move {
            let mut seen = HashMap::<String, usize>::new();
            let mut i = c;
            while !stop.load(Ordering::Relaxed) && i < 2_000_000 {
                let batch = vec![rows[i % rows.len()].clone(), rows[(i + 7) % rows.len()].clone()];
                let resp = client.predict(predict_request(batch.clone())).await.expect("no request fails during flips");
                let resp = resp.into_inner();
                let expected = &golden[&resp.version];
                for (p, row) in resp.predictions.iter().zip(&batch) {
                    let (label, probs) = &expected[&row.row_id];
                    assert_eq!(&p.label, label, "version {} row {}", resp.version, row.row_id);
                    assert_close(&p.probabilities, probs, &format!("version {} row {}", resp.version, row.row_id));
                }
                *seen.entry(resp.version).or_default() += 1;
                answered.fetch_add(1, Ordering::Relaxed);
                i += CLIENTS;
            }
            seen
        }));
    }
    // Health watcher: grpc.health.v1 must say SERVING at every look during the flips.
    let health = {
        let (mut health, stop) = (HealthClient::new(server.channel().await), stop.clone());
        tokio::spawn(async move {
            let mut checks = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let status = health.check(HealthCheckRequest { service: String::new() }).await.unwrap();
                assert_eq!(status.into_inner().status(), ServingStatus::Serving, "readiness flapped during a swap");
                checks += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            checks
        })
    };

    for flip in 0..FLIPS {
        let target = if flip % 2 == 0 { "v2" } else { "v1" };
        point_current(root.path(), target);
        await_version(&server, target).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut seen = HashMap::<String, usize>::new();
    for c in clients {
        for (v, n) in c.await.unwrap() {
            *seen.entry(v).or_default() += n;
        }
    }
    let checks = health.await.unwrap();
    assert!(seen.get("v1").is_some_and(|n| *n > 0) && seen.get("v2").is_some_and(|n| *n > 0), "{seen:?}");
    assert!(checks > 0);
    let text = http_get(server.admin, "/metrics").await.1;
    let loads = metric_value(&text, "modeld_bundle_loads_total", &[("task", TASK), ("result", "success")]);
    assert_eq!(loads, Some((FLIPS + 1) as f64), "one load per flip plus the first");
    let failures = metric_value(&text, "modeld_bundle_loads_total", &[("task", TASK), ("result", "failure")]);
    assert_eq!(failures, Some(0.0), "the series starts at zero and no load failed");
    println!(
        "{} calls answered across {FLIPS} flips: {seen:?}, {checks} health checks",
        answered.load(Ordering::Relaxed)
    );
}

/// A broken candidate of each kind: it is refused, reported and counted; the live version keeps
/// answering; a later good flip is picked up.
#[tokio::test]
async fn bad_candidates_never_replace_the_live_version() {
    let root = model_root(Some("v1"));
    let task = root.path().join(TASK);
    let make = |name: &str, defect: &dyn Fn(&Path)| {
        let dir = task.join(name);
        copy_version("v2", &dir);
        defect(&dir);
    };
    make("missing-file", &|d| std::fs::remove_file(d.join("golden.jsonl")).unwrap());
    make("corrupt-model", &|d| {
        std::fs::write(d.join("model.onnx"), b"not an onnx model").unwrap();
        reseal(d);
    });
    make("manifest-mismatch", &|d| edit(d, "config.yaml", |t| t + "\n"));
    make("golden-mismatch", &|d| {
        edit(d, "golden.jsonl", |t| t.replacen("\"label\": \"good\"", "\"label\": \"bad\"", 1));
        reseal(d);
    });
    make("width-mismatch", &drop_one_column);
    // What a full disk, an interrupted copy or a stray special file leave behind.
    let mkfifo = |path: &Path| {
        let _ = std::fs::remove_file(path);
        assert!(std::process::Command::new("mkfifo").arg(path).status().unwrap().success());
    };
    make("fifo-model", &|d| mkfifo(&d.join("model.onnx")));
    make("fifo-manifest", &|d| mkfifo(&d.join("MANIFEST.sha256")));
    make("directory-model", &|d| {
        std::fs::remove_file(d.join("model.onnx")).unwrap();
        std::fs::create_dir(d.join("model.onnx")).unwrap();
    });
    make("empty-model", &|d| {
        std::fs::write(d.join("model.onnx"), b"").unwrap();
        reseal(d);
    });
    make("truncated-model", &|d| {
        let bytes = std::fs::read(d.join("model.onnx")).unwrap();
        std::fs::write(d.join("model.onnx"), &bytes[..bytes.len() / 2]).unwrap();
    });
    make("half-copied", &|d| {
        for name in ["MANIFEST.sha256", "golden.jsonl", "evaluation.json"] {
            std::fs::remove_file(d.join(name)).unwrap();
        }
    });
    std::os::unix::fs::symlink("loop-b", task.join("loop-a")).unwrap();
    std::os::unix::fs::symlink("loop-a", task.join("loop-b")).unwrap();

    let server = TestServer::start_ready(test_config(root.path())).await;
    let mut client = server.client().await;
    let mut health = HealthClient::new(server.channel().await);
    let row = common::golden("v1")[0].clone();
    let cases = [
        ("missing-file", "cannot read golden.jsonl"),
        ("corrupt-model", "model.onnx: cannot open model"),
        ("manifest-mismatch", "MANIFEST.sha256: config.yaml: sha256 is"),
        ("golden-mismatch", "golden.jsonl line"),
        ("width-mismatch", "declares 19 columns but model.onnx takes 20"),
        ("no-such-version", "cannot resolve"),
        ("loop-a", "cannot resolve"),
        ("fifo-model", "cannot read model.onnx: not a regular file"),
        ("fifo-manifest", "cannot read MANIFEST.sha256: not a regular file"),
        ("directory-model", "cannot read model.onnx: not a regular file"),
        ("empty-model", "model.onnx: cannot open model"),
        ("truncated-model", "MANIFEST.sha256: model.onnx: sha256 is"),
        ("half-copied", "cannot read MANIFEST.sha256"),
    ];
    for (n, (target, cause)) in cases.iter().enumerate() {
        point_current(root.path(), target);
        eventually(&format!("{target} rejected"), || async { reload_error(&server).await.contains(cause) }).await;
        // Still v1, still correct, still SERVING.
        let resp = client.predict(predict_request(vec![to_pb(&row.row)])).await.unwrap().into_inner();
        assert_eq!(resp.version, "v1", "{target}");
        assert_close(&resp.predictions[0].probabilities, &row.probabilities, target);
        let status = health.check(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
        assert_eq!(status.status(), ServingStatus::Serving, "{target}");
        let detail = client.health(pb::HealthRequest {}).await.unwrap().into_inner();
        assert!(detail.tasks[0].last_error.contains(cause), "{target}: {:?}", detail.tasks[0]);
        let text = http_get(server.admin, "/metrics").await.1;
        let failures = metric_value(&text, "modeld_bundle_loads_total", &[("task", TASK), ("result", "failure")]);
        assert_eq!(failures, Some((n + 1) as f64), "{target}: each bad candidate counted once");

        // A good flip after the failure is picked up, and clears the error.
        let good = if n % 2 == 0 { "v2" } else { "v1" };
        point_current(root.path(), good);
        await_version(&server, good).await;
        eventually(&format!("error cleared after {target}"), || async { reload_error(&server).await.is_empty() }).await;
        if good == "v2" {
            point_current(root.path(), "v1");
            await_version(&server, "v1").await;
        }
    }

    // A bad directory repaired in place is picked up too.
    point_current(root.path(), "missing-file");
    eventually("missing-file rejected again", || async { reload_error(&server).await.contains("golden.jsonl") }).await;
    std::fs::copy(repo_models().join(TASK).join("v2/golden.jsonl"), task.join("missing-file/golden.jsonl")).unwrap();
    await_version(&server, "v2").await;
}

#[tokio::test]
async fn polling_alone_detects_a_flip_and_a_rollback() {
    let root = model_root(Some("v2"));
    let mut config = test_config(root.path());
    config.watch_events = false;
    let server = TestServer::start_ready(config).await;
    point_current(root.path(), "v1");
    await_version(&server, "v1").await; // a rollback to the older directory
    point_current(root.path(), "v2");
    await_version(&server, "v2").await;
}

#[tokio::test]
async fn pinned_and_compared_versions_answer_with_their_own_model() {
    let root = model_root(Some("v2"));
    let mut config = test_config(root.path());
    config.keep_versions = vec!["v1".into()];
    let server = TestServer::start_ready(config).await;
    let mut client = server.client().await;
    eventually("v1 kept warm", || {
        let mut client = client.clone();
        async move {
            let detail = client.health(pb::HealthRequest {}).await.unwrap().into_inner();
            detail.tasks[0].loaded_versions == ["v2", "v1"]
        }
    })
    .await;
    let (g1, g2) = (common::golden("v1"), common::golden("v2"));
    let rows: Vec<_> = g1.iter().take(5).map(|g| to_pb(&g.row)).collect();

    let mut pinned = predict_request(rows.clone());
    pinned.version = "v1".into();
    let resp = client.predict(pinned).await.unwrap().into_inner();
    assert_eq!(resp.version, "v1");
    for (p, g) in resp.predictions.iter().zip(&g1) {
        assert_close(&p.probabilities, &g.probabilities, "pinned v1");
    }

    let mut compare = predict_request(rows.clone());
    compare.compare_versions = vec!["v1".into(), "v2".into()];
    let resp = client.predict(compare).await.unwrap().into_inner();
    assert_eq!(resp.version, "v2");
    for (p, g) in resp.predictions.iter().zip(&g2) {
        assert_eq!(p.row_id, g.row.row_id);
        assert_close(&p.probabilities, &g.probabilities, "live v2");
    }
    let versions: Vec<_> = resp.comparisons.iter().map(|c| c.version.as_str()).collect();
    assert_eq!(versions, ["v1", "v2"]);
    for (c, golden) in resp.comparisons.iter().zip([&g1, &g2]) {
        for (p, g) in c.predictions.iter().zip(golden.iter()) {
            assert_eq!(p.row_id, g.row.row_id);
            assert_eq!(p.label, g.label);
            assert_close(&p.probabilities, &g.probabilities, &format!("comparison {}", c.version));
        }
    }

    let mut unknown = predict_request(rows);
    unknown.compare_versions = vec!["v7".into()];
    let err = client.predict(unknown).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().contains("no version `v7` loaded (loaded: v2, v1)"), "{}", err.message());

    // Flipping to a kept version promotes it without loading it again.
    point_current(root.path(), "v1");
    await_version(&server, "v1").await;
    let text = http_get(server.admin, "/metrics").await.1;
    let swaps = metric_value(&text, "modeld_bundle_loads_total", &[("task", TASK), ("result", "success")]);
    assert_eq!(swaps, Some(2.0), "v2 at start, then v1");
    let loads = metric_value(&text, "modeld_bundle_load_duration_seconds_count", &[("task", TASK)]);
    assert_eq!(loads, Some(2.0), "v2 and the kept v1 were each loaded once: the flip promoted v1 without a load");
}

#[tokio::test]
async fn start_up_can_be_made_to_fail_without_a_good_bundle() {
    let root = model_root(None);
    let mut config = test_config(root.path());
    config.require_bundles = true;
    let server = TestServer::start(config).await;
    let err = server.stop().await.expect_err("start-up must fail");
    assert!(err.to_string().contains("has no usable bundle at start-up"), "{err}");
}

/// `current` flapping 100 times a second for 10 s (between both versions and a dangling
/// target) under load: no request fails or mixes versions, and the registry settles on the
/// final target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_current_link_fails_no_request_and_settles_on_the_final_target() {
    const CLIENTS: usize = 2;
    let root = model_root(Some("v1"));
    let server = TestServer::start_ready(test_config(root.path())).await;
    let golden = Arc::new(golden_by_version());
    let rows: Arc<Vec<pb::Row>> = Arc::new(common::golden("v1").iter().map(|g| to_pb(&g.row)).collect());
    let stop = Arc::new(AtomicBool::new(false));

    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (mut client, golden, rows, stop) = (server.client().await, golden.clone(), rows.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let (mut answered, mut i) = (0usize, c);
            while !stop.load(Ordering::Relaxed) && i < 2_000_000 {
                let row = rows[i % rows.len()].clone();
                let resp =
                    client.predict(predict_request(vec![row.clone()])).await.expect("no request fails").into_inner();
                let (label, probs) = &golden[&resp.version][&row.row_id];
                assert_eq!(&resp.predictions[0].label, label, "version {}", resp.version);
                assert_close(&resp.predictions[0].probabilities, probs, &resp.version);
                answered += 1;
                i += CLIENTS;
            }
            answered
        }));
    }

    // The flapping: a release tool gone wrong. Paced at 10 ms a flip, bounded by count.
    let flapper = {
        let root = root.path().to_owned();
        tokio::task::spawn_blocking(move || {
            for flip in 0..1000 {
                point_current(&root, ["v2", "v1", "gone"][flip % 3]);
                std::thread::sleep(Duration::from_millis(10));
            }
            point_current(&root, "v2");
        })
    };
    flapper.await.unwrap();
    await_version(&server, "v2").await;
    eventually("the error of the dangling target cleared", || async { reload_error(&server).await.is_empty() }).await;
    stop.store(true, Ordering::Relaxed);
    let mut answered = 0;
    for c in clients {
        answered += c.await.unwrap();
    }
    assert!(answered > 0);
    // Settled: a further poll finds nothing new to load.
    let loads = || async {
        let text = http_get(server.admin, "/metrics").await.1;
        metric_value(&text, "modeld_bundle_loads_total", &[("task", TASK), ("result", "success")])
    };
    let before = loads().await;
    let polls = test_config(root.path()).poll_interval * 4;
    tokio::time::sleep(polls).await; // the time for polls to happen, not a timing assertion
    assert_eq!(loads().await, before, "no reload once current stays put");
    assert_eq!(live_version(&mut server.client().await).await, "v2");
    println!("{answered} calls answered while current flapped 1000 times");
}
