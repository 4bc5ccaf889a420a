//! What the audit log costs on the unary hot path, measured from outside the process.
//!
//! `cargo bench --bench audit` starts three release daemons on the same bundle (model v2): audit
//! log off, on at `audit_sample` 0.01, and on at 1 (every call recorded, all features), each
//! writing to a file in a temporary directory. h2load then drives Predict (one German Credit row
//! of named raw features per call) at 32 connections of one stream each, against each daemon in
//! turn, for ROUNDS rounds so drift on the machine is shared out. It prints req/s and latency
//! percentiles per daemon and round, the best round's rate of each against the log-off daemon,
//! and the records written and dropped.
//!
//! Bounded: AUDIT_BENCH_SECONDS per measurement (default 5) after a 1 s warm-up.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/h2load.rs"]
mod h2load;

use std::process::Command;

use h2load::{Figures, grpc_frame, h2load, predict_counts};
use prost::Message;

const ROUNDS: usize = 3;
const CONNECTIONS: usize = 32;

fn main() {
    let seconds: u64 = std::env::var("AUDIT_BENCH_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    if Command::new("h2load").arg("--version").output().is_err() {
        eprintln!("h2load not found: apt-get install nghttp2-client");
        std::process::exit(2);
    }
    let root = common::model_root(Some("v2"));
    let work = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut daemons = Vec::new();
    for (name, sample) in [("off", None), ("1%", Some("0.01")), ("100%", Some("1"))] {
        let log = work.path().join(format!("audit-{}.log", daemons.len()));
        let mut env = vec![("MODELD_INFERENCE_THREADS", "2".to_owned())];
        if let Some(sample) = sample {
            env.push(("MODELD_AUDIT_PATH", log.display().to_string()));
            env.push(("MODELD_AUDIT_SAMPLE", sample.to_owned()));
        }
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut daemon = common::Daemon::serve(root.path(), &env);
        let log_lines = daemon.collect_log();
        let admin = daemon.admin;
        rt.block_on(common::eventually("ready", || async move { common::http_get(admin, "/readyz").await.0 == 200 }));
        daemons.push((name, daemon, log_lines));
    }

    let row = common::to_pb(&common::golden("v2")[0].row);
    std::fs::write(work.path().join("predict.bin"), grpc_frame(&common::predict_request(vec![row]).encode_to_vec()))
        .unwrap();

    println!("modeld audit log cost: Predict, one row of 20 named features, {CONNECTIONS} connections, h2load");
    println!("{:<6} {:>5}  {:>10}  {:>9}  {:>9}", "audit", "round", "req/s", "p50 ms", "p99 ms");
    let mut best: Vec<Option<Figures>> = daemons.iter().map(|_| None).collect();
    for round in 1..=ROUNDS {
        for (i, (name, daemon, _)) in daemons.iter().enumerate() {
            let url = format!("http://{}/modeld.v1.Inference/Predict", daemon.grpc);
            let (_, failed_before) = predict_counts(&rt, daemon.admin, "Predict");
            let f = h2load(&url, &work.path().join("predict.bin"), CONNECTIONS, seconds, work.path());
            let (_, failed_after) = predict_counts(&rt, daemon.admin, "Predict");
            assert_eq!(failed_after, failed_before, "Predict calls answered with an error status");
            println!("{name:<6} {round:>5}  {:>10.0}  {:>9.3}  {:>9.3}", f.rps, f.p50_ms, f.p99_ms);
            if best[i].as_ref().is_none_or(|b| f.rps > b.rps) {
                best[i] = Some(f);
            }
        }
    }
    println!();
    let off = best[0].as_ref().unwrap().rps;
    for ((name, daemon, _), f) in daemons.iter().zip(&best) {
        let f = f.as_ref().unwrap();
        let metrics = rt.block_on(common::http_get(daemon.admin, "/metrics")).1;
        let written = common::metric_value(&metrics, "modeld_audit_records_total", &[]).unwrap_or(0.0);
        let dropped =
            common::metric_value(&metrics, "modeld_audit_dropped_total", &[("task", common::TASK)]).unwrap_or(0.0);
        println!(
            "audit {name:<5} best round {:>7.0} req/s = {:>5.1}% of off, p99 {:.3} ms; records written {written:.0}, dropped {dropped:.0}",
            f.rps,
            100.0 * f.rps / off,
            f.p99_ms
        );
    }
}
