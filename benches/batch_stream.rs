//! BatchPredict throughput: rows/s through the release daemon over loopback, beside the
//! in-process engine's rows/s for the same model and batch size, the daemon's RSS over the
//! run, and unary Predict latency while the stream runs (bulk work must not starve it).
//!
//! `cargo bench --bench batch_stream`. Bounded: BATCH_ROWS rows (default 2,000,000) in chunks
//! of BATCH_CHUNK (default 256); BATCH_VERSION v1|v2 (default v2).

#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use modeld::{
    bundle::{Bundle, LoadOptions, golden},
    config, engine,
    pb::{self, inference_client::InferenceClient, row_result::Outcome},
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let total = env_or("BATCH_ROWS", 2_000_000);
    let chunk = env_or("BATCH_CHUNK", 256);
    let version = std::env::var("BATCH_VERSION").unwrap_or_else(|_| "v2".into());
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/credit_risk");
    let text = std::fs::read_to_string(shipped.join(&version).join("golden.jsonl")).unwrap();
    let golden_rows: Vec<_> = golden::parse(&text).unwrap().into_iter().map(|g| g.row).collect();

    // In-process reference: preprocess + run of `chunk`-row batches on one thread.
    engine::init(&config::default_ort_library()).expect("ONNX Runtime library");
    let bundle = Bundle::load(&shipped.join(&version), &LoadOptions::default()).unwrap();
    let batch: Vec<_> = golden_rows.iter().cycle().take(chunk).cloned().collect();
    let started = Instant::now();
    let mut done = 0usize;
    while started.elapsed() < Duration::from_secs(3) {
        let input = bundle.prepare(&batch).unwrap();
        done += bundle.score(&input, |_, s| s.probabilities[0]).unwrap().len();
    }
    let in_process = done as f64 / started.elapsed().as_secs_f64();

    let root = common::model_root(Some(&version));
    let mut daemon = common::Daemon::serve(root.path(), &[]);
    let _log = daemon.collect_log();
    let grpc = daemon.grpc;

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let channel = Channel::from_shared(format!("http://{grpc}")).unwrap().connect().await.unwrap();
        let wire: Vec<pb::Row> = golden_rows.iter().map(pb::Row::from).collect();
        // Bulk form for the stream: positional values, names sent once.
        let columns: Vec<String> = golden_rows[0].features.iter().map(|(k, _)| k.clone()).collect();
        let positional: Vec<pb::Row> = wire
            .iter()
            .map(|r| pb::Row {
                row_id: r.row_id.clone(),
                // A feature the row leaves out is sent as an unset value: missing.
                values: columns.iter().map(|c| r.features.get(c).cloned().unwrap_or_default()).collect(),
                ..Default::default()
            })
            .collect();
        let mut unary = InferenceClient::new(channel.clone());
        let one = pb::PredictRequest { task: "credit_risk".into(), rows: vec![wire[0].clone()], ..Default::default() };
        let deadline = Instant::now() + Duration::from_secs(30);
        while unary.predict(one.clone()).await.is_err() {
            assert!(Instant::now() < deadline, "daemon not ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let idle_latency = probe(&mut unary, &one, 2_000).await;
        // Warm the stream path, then measure from a steady RSS.
        stream(&channel, &columns, &positional, chunk, 50_000).await;
        let rss_before = daemon.rss_mib();

        let prober = {
            let (mut unary, one) = (unary.clone(), one.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                probe(&mut unary, &one, 2_000).await
            })
        };
        let started = Instant::now();
        let rows = stream(&channel, &columns, &positional, chunk, total).await;
        let took = started.elapsed();
        let busy_latency = prober.await.unwrap();
        let rss_after = daemon.rss_mib();

        let rate = rows as f64 / took.as_secs_f64();
        println!("modeld BatchPredict bench: model {version}, {rows} rows in chunks of {chunk}, client and daemon on this machine");
        println!("BatchPredict over loopback: {rate:>10.0} rows/s ({:.1} s)", took.as_secs_f64());
        println!("in-process engine (1 thread): {in_process:>8.0} rows/s  -> BatchPredict = {:.0}% of in-process", 100.0 * rate / in_process);
        println!("daemon RSS: {rss_before:.1} MiB before, {rss_after:.1} MiB after {rows} rows ({:+.1} MiB)", rss_after - rss_before);
        println!("unary Predict while idle:          p50 {:.3} ms  p99 {:.3} ms", idle_latency.0, idle_latency.1);
        println!("unary Predict during the stream:   p50 {:.3} ms  p99 {:.3} ms", busy_latency.0, busy_latency.1);
    });
}

/// Streams `total` rows and checks that every one came back; returns the rows answered.
async fn stream(channel: &Channel, columns: &[String], wire: &[pb::Row], chunk: usize, total: usize) -> usize {
    let (tx, rx) = mpsc::channel(8);
    let (columns, wire) = (columns.to_vec(), wire.to_vec());
    let producer = tokio::spawn(async move {
        let mut sent = 0;
        let mut first = true;
        while sent < total {
            let n = chunk.min(total - sent);
            let rows = wire.iter().cycle().skip(sent % wire.len()).take(n).cloned().collect();
            let task = if first { "credit_risk".into() } else { String::new() };
            let columns = if first { columns.clone() } else { Vec::new() };
            first = false;
            if tx.send(pb::BatchPredictRequest { task, rows, columns, ..Default::default() }).await.is_err() {
                break;
            }
            sent += n;
        }
    });
    let mut client = InferenceClient::new(channel.clone()).max_decoding_message_size(64 << 20);
    let mut responses = client.batch_predict(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let mut answered = 0;
    while let Some(resp) = responses.message().await.unwrap() {
        answered += resp.results.iter().filter(|r| matches!(r.outcome, Some(Outcome::Prediction(_)))).count();
    }
    producer.await.unwrap();
    assert_eq!(answered, total, "every row answered");
    answered
}

/// Sequential single-row Predict latency: (p50, p99) in ms.
async fn probe(client: &mut InferenceClient<Channel>, req: &pb::PredictRequest, calls: usize) -> (f64, f64) {
    let mut lat = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        client.predict(req.clone()).await.unwrap();
        lat.push(t.elapsed());
    }
    lat.sort();
    let ms = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)].as_secs_f64() * 1e3;
    (ms(0.5), ms(0.99))
}
