//! End-to-end Predict over loopback gRPC: the real server on 127.0.0.1:0, real bundles.
//!
//! `cargo bench --bench loopback` prints latency percentiles for sequential single-row calls and
//! throughput under concurrency, beside grpc.health.v1 Check on the same server as the
//! transport-only baseline (a call that does no model work).
//!
//! Bounded by count and time; knobs (environment): LOOPBACK_CALLS (default 20000),
//! LOOPBACK_CONCURRENCY (default 32), LOOPBACK_CONNECTIONS (default 4), LOOPBACK_SECONDS (default 10),
//! LOOPBACK_VERSION (v1|v2, default v2).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use modeld::pb::{self, inference_client::InferenceClient};
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

// The daemon's allocator, so the in-process server behaves like `modeld serve`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; other harness flags are ignored here.
    let calls = env_or("LOOPBACK_CALLS", 20_000);
    let concurrency = env_or("LOOPBACK_CONCURRENCY", 32);
    let connections = env_or("LOOPBACK_CONNECTIONS", 4).max(1);
    let seconds = env_or("LOOPBACK_SECONDS", 10) as u64;
    let version = std::env::var("LOOPBACK_VERSION").unwrap_or_else(|_| "v2".into());

    // The server gets its own runtime with two workers, like the daemon on a 2-core pod.
    let root = common::model_root(Some(&version));
    // Production defaults, as `modeld serve` would run with no configuration file.
    let mut config = modeld::config::Config::for_model_root(root.path()).unwrap();
    config.tasks = vec![common::TASK.into()];
    let server_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let server = server_rt.block_on(common::TestServer::start(config));
    let addr = server.grpc;

    let client_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    client_rt.block_on(async move {
        let channels = connect(addr, connections).await;
        let row = common::to_pb(&common::golden(&version)[0].row);
        let request = pb::PredictRequest { task: "credit_risk".into(), rows: vec![row], ..Default::default() };
        wait_ready(&channels[0]).await;

        println!(
            "modeld loopback bench: model {version}, 1 row per call, client and server in one process on this machine"
        );
        for (name, call) in
            [("Predict", Call::Predict(request.clone())), ("Health/Check (transport baseline)", Call::Health)]
        {
            // Warm-up: connections, allocator, branch predictors.
            run_sequential(&channels[0], &call, 2_000.min(calls), seconds).await;
            let seq = run_sequential(&channels[0], &call, calls, seconds).await;
            report(&format!("{name}, sequential"), &seq.0, seq.1);
            let conc = run_concurrent(&channels, &call, concurrency, calls * 5, seconds).await;
            report(&format!("{name}, {concurrency} concurrent over {connections} connections"), &conc.0, conc.1);
        }
    });
    drop(server);
    drop(server_rt);
}

#[derive(Clone)]
enum Call {
    Predict(pb::PredictRequest),
    Health,
}

impl Call {
    async fn once(&self, channel: &Channel) {
        match self {
            Call::Predict(req) => {
                let resp = InferenceClient::new(channel.clone()).predict(req.clone()).await.expect("Predict succeeds");
                assert_eq!(resp.get_ref().predictions.len(), 1);
            }
            Call::Health => {
                HealthClient::new(channel.clone())
                    .check(HealthCheckRequest { service: String::new() })
                    .await
                    .expect("Check succeeds");
            }
        }
    }
}

async fn connect(addr: std::net::SocketAddr, n: usize) -> Vec<Channel> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(Channel::from_shared(format!("http://{addr}")).unwrap().tcp_nodelay(true).connect().await.unwrap());
    }
    out
}

async fn wait_ready(channel: &Channel) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut health = HealthClient::new(channel.clone());
    loop {
        let status = health.check(HealthCheckRequest { service: String::new() }).await.map(|r| r.into_inner().status);
        if status.ok() == Some(1) {
            return;
        }
        assert!(Instant::now() < deadline, "server not ready in 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn run_sequential(channel: &Channel, call: &Call, calls: usize, seconds: u64) -> (Vec<Duration>, Duration) {
    let stop = Instant::now() + Duration::from_secs(seconds);
    let mut lat = Vec::with_capacity(calls);
    let started = Instant::now();
    while lat.len() < calls && Instant::now() < stop {
        let t = Instant::now();
        call.once(channel).await;
        lat.push(t.elapsed());
    }
    (lat, started.elapsed())
}

async fn run_concurrent(
    channels: &[Channel],
    call: &Call,
    workers: usize,
    calls: usize,
    seconds: u64,
) -> (Vec<Duration>, Duration) {
    let stop = Instant::now() + Duration::from_secs(seconds);
    let per_worker = calls.div_ceil(workers);
    let started = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let channel = channels[w % channels.len()].clone();
            let call = call.clone();
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per_worker);
                while lat.len() < per_worker && Instant::now() < stop {
                    let t = Instant::now();
                    call.once(&channel).await;
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::with_capacity(calls);
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    (all, started.elapsed())
}

fn report(name: &str, lat: &[Duration], wall: Duration) {
    let mut v: Vec<_> = lat.to_vec();
    v.sort();
    let pct = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)].as_secs_f64() * 1e3;
    println!(
        "{name:<62} calls {:>7}  p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms  {:>8.0} req/s",
        v.len(),
        pct(0.50),
        pct(0.90),
        pct(0.99),
        v.last().unwrap().as_secs_f64() * 1e3,
        v.len() as f64 / wall.as_secs_f64()
    );
}
