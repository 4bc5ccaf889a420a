//! The Open Inference Protocol (KServe V2) faces beside gRPC Predict, measured from outside the
//! process in one run.
//!
//! `cargo bench --bench kserve` starts one release daemon on the example model (v2) and drives
//! one German Credit row per call (20 features) at 32 connections with h2load through:
//! gRPC Predict; V2 gRPC ModelInfer with raw contents (tritonclient's default) and with typed
//! contents (the kserve SDK's); V2 REST with Triton's binary tensors (tritonclient's HTTP
//! default) and with JSON tensors, both over HTTP/1.1 as those clients speak it. ROUNDS rounds
//! share out drift on the machine; it prints every round, then the best round of each face
//! against Predict.
//!
//! Bounded: KSERVE_BENCH_SECONDS per measurement (default 5).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/h2load.rs"]
mod h2load;

use std::process::Command;

use h2load::{Figures, grpc_frame, h2load, h2load_with, predict_counts};
use prost::Message;

const ROUNDS: usize = 3;
const CONNECTIONS: usize = 32;

fn main() {
    let seconds: u64 = std::env::var("KSERVE_BENCH_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    if Command::new("h2load").arg("--version").output().is_err() {
        eprintln!("h2load not found: apt-get install nghttp2-client");
        std::process::exit(2);
    }
    let work = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let root = common::model_root(Some("v2"));
    let daemon = common::Daemon::serve(root.path(), &[("MODELD_INFERENCE_THREADS", "2")]);
    let admin = daemon.admin;
    rt.block_on(common::eventually("ready", || async move { common::http_get(admin, "/readyz").await.0 == 200 }));
    let http = daemon.http.expect("the HTTP face is on");

    let rows = &common::golden("v2")[..1];
    let file = |name: &str, bytes: &[u8]| {
        let path = work.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let predict =
        file("predict.bin", &grpc_frame(&common::predict_request(vec![common::to_pb(&rows[0].row)]).encode_to_vec()));
    let raw = common::v2_request(common::TASK, rows, true);
    let typed = common::v2_request(common::TASK, rows, false);
    let infer_raw = file("infer-raw.bin", &grpc_frame(&raw.encode_to_vec()));
    let infer_typed = file("infer-typed.bin", &grpc_frame(&typed.encode_to_vec()));
    // REST, binary: the JSON header, then each input's bytes; outputs asked for in binary.
    let inputs: Vec<serde_json::Value> = raw
        .inputs
        .iter()
        .zip(&raw.raw_input_contents)
        .map(|(i, b)| {
            serde_json::json!({"name": i.name, "datatype": i.datatype, "shape": i.shape,
                "parameters": {"binary_data_size": b.len()}})
        })
        .collect();
    let header = serde_json::json!({"inputs": inputs, "parameters": {"binary_data_output": true}}).to_string();
    let mut binary = header.clone().into_bytes();
    raw.raw_input_contents.iter().for_each(|b| binary.extend_from_slice(b));
    let rest_binary = file("rest-binary.bin", &binary);
    let inputs = common::v2_json_inputs(&typed);
    let rest_json = file("rest-json.json", serde_json::json!({ "inputs": inputs }).to_string().as_bytes());

    let grpc = |path: &str| format!("http://{}/{path}", daemon.grpc);
    let rest_url = format!("http://{http}/v2/models/{}/infer", common::TASK);
    let binary_length = format!("inference-header-content-length: {}", header.len());
    type Run<'a> = Box<dyn Fn() -> Figures + 'a>;
    let faces: Vec<(&str, &str, Run)> = vec![
        (
            "gRPC Predict",
            "Predict",
            Box::new(|| h2load(&grpc("modeld.v1.Inference/Predict"), &predict, CONNECTIONS, seconds, work.path())),
        ),
        (
            "V2 gRPC, raw",
            "ModelInfer",
            Box::new(|| {
                h2load(
                    &grpc("inference.GRPCInferenceService/ModelInfer"),
                    &infer_raw,
                    CONNECTIONS,
                    seconds,
                    work.path(),
                )
            }),
        ),
        (
            "V2 gRPC, typed",
            "ModelInfer",
            Box::new(|| {
                let url = grpc("inference.GRPCInferenceService/ModelInfer");
                h2load(&url, &infer_typed, CONNECTIONS, seconds, work.path())
            }),
        ),
        (
            "V2 REST, binary",
            "POST /v2/models/{model}/infer",
            Box::new(|| {
                let protocol = ["--h1", "-H", "content-type: application/octet-stream", "-H", &binary_length];
                h2load_with(&rest_url, &rest_binary, CONNECTIONS, seconds, work.path(), &protocol)
            }),
        ),
        (
            "V2 REST, JSON",
            "POST /v2/models/{model}/infer",
            Box::new(|| {
                let protocol = ["--h1", "-H", "content-type: application/json"];
                h2load_with(&rest_url, &rest_json, CONNECTIONS, seconds, work.path(), &protocol)
            }),
        ),
    ];

    println!("modeld V2 faces: one German Credit row of 20 features per call, {CONNECTIONS} connections, h2load");
    println!("{:<16} {:>5}  {:>10}  {:>9}  {:>9}", "face", "round", "req/s", "p50 ms", "p99 ms");
    let mut best: Vec<Option<Figures>> = faces.iter().map(|_| None).collect();
    for round in 1..=ROUNDS {
        for (i, (name, method, run)) in faces.iter().enumerate() {
            let (_, failed_before) = predict_counts(&rt, admin, method);
            let f = run();
            let (_, failed_after) = predict_counts(&rt, admin, method);
            assert_eq!(failed_after, failed_before, "{name}: calls answered with an error status");
            println!("{name:<16} {round:>5}  {:>10.0}  {:>9.3}  {:>9.3}", f.rps, f.p50_ms, f.p99_ms);
            if best[i].as_ref().is_none_or(|b| f.rps > b.rps) {
                best[i] = Some(f);
            }
        }
    }
    println!();
    let base = best[0].as_ref().unwrap().rps;
    for ((name, _, _), f) in faces.iter().zip(&best) {
        let f = f.as_ref().unwrap();
        println!(
            "{name:<16} best round {:>7.0} req/s = {:>5.1}% of gRPC Predict, p50 {:.3} ms, p99 {:.3} ms",
            f.rps,
            100.0 * f.rps / base,
            f.p50_ms,
            f.p99_ms
        );
    }
}
