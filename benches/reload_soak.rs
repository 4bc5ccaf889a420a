//! Reload soak: the release daemon under steady Predict load while `current` flips between v1
//! and v2 again and again.
//!
//! `cargo bench --bench reload_soak` prints failed requests, latency percentiles during the
//! steady phase and during reloads, and the daemon's RSS before and after the reloads.
//! Bounded: SOAK_RELOADS flips (default 200), SOAK_STEADY_SECONDS of steady load (default 5),
//! SOAK_CLIENTS concurrent callers (default 4), SOAK_INTERVAL_MS pause after each flip goes live
//! (default 0: back to back); every wait has a deadline. SOAK_SAME=1 re-points `current` at the
//! live version instead (events and reload passes without loads), as a control run.

#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use modeld::{
    bundle::golden,
    pb::{self, inference_client::InferenceClient},
};
use tonic::transport::Channel;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[derive(Default)]
struct Samples {
    steady: Vec<Duration>,
    reloading: Vec<Duration>,
}

fn main() {
    let reloads = env_or("SOAK_RELOADS", 200);
    let steady_secs = env_or("SOAK_STEADY_SECONDS", 5) as u64;
    let clients = env_or("SOAK_CLIENTS", 4);
    let same_target = env_or("SOAK_SAME", 0) == 1;
    // Pause between a flip going live and the next flip; 0 flips back to back.
    let interval = Duration::from_millis(env_or("SOAK_INTERVAL_MS", 0) as u64);

    let root = common::model_root(Some("v2"));
    let shipped = common::repo_models().join(common::TASK);

    // Log at info so the daemon's "listening" line is there to read.
    let mut daemon =
        common::Daemon::serve(root.path(), &[("MODELD_LOG", "info,ort=warn"), ("MODELD_RELOAD_DEBOUNCE_MS", "5")]);
    let _log = daemon.collect_log();
    let grpc = daemon.grpc;

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let report = rt.block_on(async {
        let channel = Channel::from_shared(format!("http://{grpc}")).unwrap().connect().await.unwrap();
        let mut control = InferenceClient::new(channel.clone());
        let live = |mut c: InferenceClient<Channel>| async move {
            c.get_version(pb::GetVersionRequest { task: "credit_risk".into() })
                .await
                .ok()
                .map(|r| r.into_inner().version)
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while live(control.clone()).await.as_deref() != Some("v2") {
            assert!(Instant::now() < deadline, "daemon not ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let text = std::fs::read_to_string(shipped.join("v2/golden.jsonl")).unwrap();
        let rows: Arc<Vec<pb::Row>> = Arc::new(golden::parse(&text).unwrap().iter().map(|g| to_pb(&g.row)).collect());

        let stop = Arc::new(AtomicBool::new(false));
        let reloading = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicUsize::new(0));
        let samples = Arc::new(Mutex::new(Samples::default()));
        let load: Vec<_> = (0..clients)
            .map(|c| {
                let (mut client, rows, stop, reloading, failed, samples) = (
                    InferenceClient::new(channel.clone()),
                    rows.clone(),
                    stop.clone(),
                    reloading.clone(),
                    failed.clone(),
                    samples.clone(),
                );
                tokio::spawn(async move {
                    let mut i = c;
                    let (mut steady, mut during) = (Vec::new(), Vec::new());
                    while !stop.load(Ordering::Relaxed) && i < 50_000_000 {
                        let req = pb::PredictRequest {
                            task: "credit_risk".into(),
                            rows: vec![rows[i % rows.len()].clone()],
                            ..Default::default()
                        };
                        let phase = reloading.load(Ordering::Relaxed);
                        let t = Instant::now();
                        if client.predict(req).await.is_err() {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        if phase {
                            during.push(t.elapsed())
                        } else {
                            steady.push(t.elapsed())
                        };
                        i += clients;
                    }
                    let mut s = samples.lock().unwrap();
                    s.steady.extend(steady);
                    s.reloading.extend(during);
                })
            })
            .collect();

        tokio::time::sleep(Duration::from_secs(steady_secs)).await;
        let rss_before = daemon.rss_mib();
        reloading.store(true, Ordering::Relaxed);
        let started = Instant::now();
        for n in 0..reloads {
            // SOAK_SAME=1 re-points `current` at the live version: the same events, polls and
            // reload-loop passes, but no load or swap, to separate their cost from the rest.
            let target = if n % 2 == 0 && !same_target { "v1" } else { "v2" };
            common::point_current(root.path(), target);
            let deadline = Instant::now() + Duration::from_secs(30);
            while live(control.clone()).await.as_deref() != Some(target) {
                assert!(Instant::now() < deadline, "flip {n} to {target} not picked up");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            if same_target {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tokio::time::sleep(interval).await;
        }
        let reload_wall = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        for t in load {
            t.await.unwrap();
        }
        let rss_after = daemon.rss_mib();
        control.health(pb::HealthRequest {}).await.unwrap();
        let s = Arc::try_unwrap(samples).ok().unwrap().into_inner().unwrap();
        (s, failed.load(Ordering::Relaxed), rss_before, rss_after, reload_wall)
    });
    drop(daemon);

    let (samples, failed, rss_before, rss_after, wall) = report;
    println!(
        "modeld reload soak: {reloads} reloads (v1 <-> v2) in {:.1} s under {clients} concurrent Predict callers",
        wall.as_secs_f64()
    );
    println!("failed requests: {failed}");
    print_latency("steady", samples.steady);
    print_latency("during reloads", samples.reloading);
    println!(
        "daemon RSS: before reloads {:.1} MiB, after {:.1} MiB, growth {:+.1} MiB",
        rss_before,
        rss_after,
        rss_after - rss_before
    );
}

fn print_latency(name: &str, mut v: Vec<Duration>) {
    v.sort();
    if v.is_empty() {
        println!("{name:<15} no samples");
        return;
    }
    let pct = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)].as_secs_f64() * 1e3;
    println!(
        "{name:<15} calls {:>8}  p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
        v.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
}

fn to_pb(row: &modeld::preprocess::OwnedRow) -> pb::Row {
    row.into()
}
