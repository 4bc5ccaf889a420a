//! The unary hot path against the transport ceiling, measured from outside the process.
//!
//! `cargo bench --bench hot_path` starts the release daemon (model v2, one German Credit row of
//! named raw features per call) and drives it with h2load (`apt-get install nghttp2-client`),
//! a C load generator whose own cost is the same for every call: Predict, then grpc.health.v1
//! Check (the transport-only baseline: same server, same stack, no model work), each with 1, 8
//! and 32 connections of one stream each. It prints req/s, latency percentiles and the daemon's
//! CPU time per call for both, and Predict's share of Check's rate. The same row as JSON through
//! the HTTP face (`POST /v1/tasks/credit_risk/predict`, HTTP/1.1 keep-alive, `h2load --h1`) runs
//! beside them, with its share of Predict's rate.
//!
//! h2load counts any HTTP 200 as a success, so every Predict and JSON answer is also counted
//! through the daemon's own `modeld_requests_total{code="OK"}`: a run where they differ fails.
//!
//! Bounded: HOT_PATH_SECONDS per measurement (default 5) after a 1 s warm-up.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/h2load.rs"]
mod h2load;

use std::process::Command;

use h2load::{Figures, grpc_frame, h2load, h2load_with, predict_counts};

use prost::Message;

const CONNECTIONS: [usize; 3] = [1, 8, 32];

fn main() {
    let seconds: u64 = std::env::var("HOT_PATH_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    if Command::new("h2load").arg("--version").output().is_err() {
        eprintln!("h2load not found: apt-get install nghttp2-client");
        std::process::exit(2);
    }
    let root = common::model_root(Some("v2"));
    let mut daemon = common::Daemon::serve(root.path(), &[]);
    let _log = daemon.collect_log();
    let admin = daemon.admin;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(common::eventually("ready", || async move { common::http_get(admin, "/readyz").await.0 == 200 }));

    let work = tempfile::tempdir().unwrap();
    let row = common::to_pb(&common::golden("v2")[0].row);
    let predict = grpc_frame(&common::predict_request(vec![row]).encode_to_vec());
    let check = grpc_frame(&tonic_health::pb::HealthCheckRequest { service: String::new() }.encode_to_vec());
    std::fs::write(work.path().join("predict.bin"), predict).unwrap();
    std::fs::write(work.path().join("check.bin"), check).unwrap();
    let json = serde_json::json!({ "rows": [common::json_row(&common::golden("v2")[0].row)] });
    std::fs::write(work.path().join("predict.json"), json.to_string()).unwrap();
    let json_url = format!("http://{}/v1/tasks/{}/predict", daemon.http.expect("the HTTP face is on"), common::TASK);
    let base = format!("http://{}", daemon.grpc);
    let predict_url = format!("{base}/modeld.v1.Inference/Predict");
    let check_url = format!("{base}/grpc.health.v1.Health/Check");

    println!("modeld hot path: model v2, one row of 20 named features per call, h2load on this machine");
    println!(
        "{:<10} {:>5}  {:>10}  {:>9}  {:>9}  {:>13}",
        "call", "conns", "req/s", "p50 ms", "p99 ms", "daemon µs/call"
    );
    // The daemon's own CPU time per call (user + system): what the server spends, apart from
    // the load generator sharing the machine. The CPU time covers h2load's 1 s warm-up too,
    // whose calls h2load does not count: they are taken to run at the measured rate.
    let pid = daemon.child.id();
    let per_call = |run: &dyn Fn() -> Figures| {
        let before = cpu_seconds(pid);
        let f = run();
        let spent = cpu_seconds(pid) - before;
        let calls = f.done as f64 * (seconds + 1) as f64 / seconds as f64;
        (spent * 1e6 / calls.max(1.0), f)
    };
    let mut rows = Vec::new();
    for conns in CONNECTIONS {
        let counted = |method: &str, run: &dyn Fn() -> Figures| {
            let (ok_before, failed_before) = predict_counts(&rt, admin, method);
            let f = run();
            let (ok_after, failed_after) = predict_counts(&rt, admin, method);
            assert_eq!(failed_after, failed_before, "{method} calls answered with an error status");
            assert!(ok_after - ok_before >= f.done as f64, "h2load counted {} answers, the daemon fewer", f.done);
            f
        };
        let (p_cpu, p) = per_call(&|| {
            counted("Predict", &|| h2load(&predict_url, &work.path().join("predict.bin"), conns, seconds, work.path()))
        });
        let (j_cpu, j) = per_call(&|| {
            counted("POST /v1/tasks/{task}/predict", &|| {
                let protocol = ["--h1", "-H", "content-type: application/json"];
                h2load_with(&json_url, &work.path().join("predict.json"), conns, seconds, work.path(), &protocol)
            })
        });
        let (c_cpu, c) = per_call(&|| h2load(&check_url, &work.path().join("check.bin"), conns, seconds, work.path()));
        for (name, f, cpu) in [("Predict", &p, p_cpu), ("JSON", &j, j_cpu), ("Check", &c, c_cpu)] {
            println!("{name:<10} {conns:>5}  {:>10.0}  {:>9.3}  {:>9.3}  {cpu:>13.1}", f.rps, f.p50_ms, f.p99_ms);
        }
        rows.push((conns, p, j, c));
    }
    println!();
    for (conns, p, j, c) in &rows {
        println!(
            "{conns:>2} connections: Predict = {:.0}% of Check's req/s; p50 {:+.1} µs over Check; \
             JSON = {:.0}% of Predict's req/s",
            100.0 * p.rps / c.rps,
            (p.p50_ms - c.p50_ms) * 1e3,
            100.0 * j.rps / p.rps
        );
    }
}

/// CPU seconds the process has used (user + system), from /proc/PID/stat at the kernel's
/// 100 ticks a second.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the daemon's /proc entry");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')').expect("a stat line").1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}
