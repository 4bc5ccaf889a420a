//! What a rollout policy costs on the unary hot path, measured from outside the process.
//!
//! `cargo bench --bench rollout` starts three release daemons, each on its own model root with
//! v1 and v2 and `current` -> v2: no policy, `shadow: [v1]` (every answered call is handed to
//! v1 on the bulk runtime and compared), and a 50/50 split sticky by `row_id` (each call hashes
//! its key and picks a version; the benchmark's one request always carries the same key, so it
//! measures the choice, not a mix of models). h2load drives Predict (one German Credit row of
//! named raw features per call) at 32 connections against each daemon in turn, for ROUNDS
//! rounds so drift on the machine is shared out. It prints req/s and latency percentiles per
//! daemon and round, the best round of each against the no-policy daemon, and for the shadow
//! daemon the rows compared and the jobs shed by reason.
//!
//! Bounded: ROLLOUT_BENCH_SECONDS per measurement (default 5).

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
    let seconds: u64 = std::env::var("ROLLOUT_BENCH_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    if Command::new("h2load").arg("--version").output().is_err() {
        eprintln!("h2load not found: apt-get install nghttp2-client");
        std::process::exit(2);
    }
    let work = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut daemons = Vec::new();
    for (name, policy) in [
        ("none", None),
        ("shadow", Some("shadow: [v1]\n")),
        ("split", Some("split:\n  v1: 0.5\n  v2: 0.5\nsticky_by: row_id\n")),
    ] {
        let root = common::model_root(Some("v2"));
        if let Some(policy) = policy {
            std::fs::write(root.path().join(common::TASK).join("rollout.yaml"), policy).unwrap();
        }
        let mut daemon = common::Daemon::serve(root.path(), &[("MODELD_INFERENCE_THREADS", "2")]);
        let log_lines = daemon.collect_log();
        let admin = daemon.admin;
        rt.block_on(common::eventually("ready", || async move { common::http_get(admin, "/readyz").await.0 == 200 }));
        if policy.is_some() {
            let path = format!("/rollout/{}", common::TASK);
            rt.block_on(common::eventually("policy live", || {
                let path = path.clone();
                async move { !common::http_get(admin, &path).await.1.contains("\"policy\":null") }
            }));
        }
        daemons.push((name, daemon, log_lines, root));
    }

    let mut row = common::to_pb(&common::golden("v2")[0].row);
    row.row_id = "applicant-1".into();
    std::fs::write(work.path().join("predict.bin"), grpc_frame(&common::predict_request(vec![row]).encode_to_vec()))
        .unwrap();

    println!("modeld rollout policy cost: Predict, one row of 20 named features, {CONNECTIONS} connections, h2load");
    println!("{:<7} {:>5}  {:>10}  {:>9}  {:>9}", "policy", "round", "req/s", "p50 ms", "p99 ms");
    let mut best: Vec<Option<Figures>> = daemons.iter().map(|_| None).collect();
    for round in 1..=ROUNDS {
        for (i, (name, daemon, _, _)) in daemons.iter().enumerate() {
            let url = format!("http://{}/modeld.v1.Inference/Predict", daemon.grpc);
            let (_, failed_before) = predict_counts(&rt, daemon.admin, "Predict");
            let f = h2load(&url, &work.path().join("predict.bin"), CONNECTIONS, seconds, work.path());
            let (_, failed_after) = predict_counts(&rt, daemon.admin, "Predict");
            assert_eq!(failed_after, failed_before, "Predict calls answered with an error status");
            println!("{name:<7} {round:>5}  {:>10.0}  {:>9.3}  {:>9.3}", f.rps, f.p50_ms, f.p99_ms);
            if best[i].as_ref().is_none_or(|b| f.rps > b.rps) {
                best[i] = Some(f);
            }
        }
    }
    println!();
    let none = best[0].as_ref().unwrap().rps;
    for ((name, daemon, _, _), f) in daemons.iter().zip(&best) {
        let f = f.as_ref().unwrap();
        println!(
            "{name:<7} best round {:>7.0} req/s = {:>5.1}% of no policy, p50 {:.3} ms, p99 {:.3} ms",
            f.rps,
            100.0 * f.rps / none,
            f.p50_ms,
            f.p99_ms
        );
        if *name == "shadow" {
            let metrics = rt.block_on(common::http_get(daemon.admin, "/metrics")).1;
            let (ok, _) = predict_counts(&rt, daemon.admin, "Predict");
            let compared = common::metric_value(&metrics, "modeld_shadow_rows_total", &[]).unwrap_or(0.0);
            let shed: Vec<String> = ["overload", "queue_full", "budget", "encode", "error"]
                .iter()
                .filter_map(|r| {
                    common::metric_value(&metrics, "modeld_shadow_dropped_total", &[("reason", r)])
                        .map(|n| format!("{r} {n:.0}"))
                })
                .collect();
            println!(
                "        shadow: {compared:.0} of {ok:.0} answered calls compared ({:.1}%); shed: {}",
                100.0 * compared / ok.max(1.0),
                if shed.is_empty() { "none".to_owned() } else { shed.join(", ") }
            );
        }
    }
}
