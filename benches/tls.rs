//! What TLS costs on the unary hot path: three release daemons on the same bundle (model v2),
//! plaintext, TLS, and mutual TLS with a callers file and a bearer token, driven in turn by the
//! same load: 32 tonic callers, each on its own connection kept for the whole run (as real
//! callers keep theirs), one German Credit row per Predict. ROUNDS rounds so drift on the
//! machine is shared out; it prints req/s and latency percentiles per daemon and round, and the
//! best round of each against plaintext.
//!
//! Certificates are made here (rcgen). Bounded: TLS_BENCH_SECONDS per measurement (default 5)
//! after a 1 s warm-up.

#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use modeld::pb::{self, inference_client::InferenceClient};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use sha2::{Digest, Sha256};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const ROUNDS: usize = 3;
const CALLERS: usize = 32;

struct Mode {
    name: &'static str,
    tls: Option<ClientTlsConfig>,
    token: Option<&'static str>,
}

fn main() {
    let seconds: u64 = std::env::var("TLS_BENCH_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let root = common::model_root(Some("v2"));
    let pki = tempfile::tempdir().unwrap();
    let path = |name: &str| pki.path().join(name).display().to_string();

    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "modeld bench CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |sans: Vec<String>, cn: &str, usage: ExtendedKeyUsagePurpose, file: &str| {
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        std::fs::write(path(&format!("{file}.crt")), cert.pem()).unwrap();
        std::fs::write(path(&format!("{file}.key")), key.serialize_pem()).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    std::fs::write(path("ca.pem"), ca.pem()).unwrap();
    leaf(vec!["localhost".into()], "localhost", ExtendedKeyUsagePurpose::ServerAuth, "server");
    let (client_cert, client_key) = leaf(Vec::new(), "bench", ExtendedKeyUsagePurpose::ClientAuth, "client");
    let digest: String = Sha256::digest(b"bench-token").iter().map(|b| format!("{b:02x}")).collect();
    let callers = format!("callers:\n  - {{name: bench, token_sha256: {digest}, tasks: [{}]}}\n", common::TASK);
    std::fs::write(path("callers.yaml"), callers).unwrap();

    let (cert, key, ca_pem, callers) = (path("server.crt"), path("server.key"), path("ca.pem"), path("callers.yaml"));
    let settings: [Vec<(&str, &str)>; 3] = [
        vec![],
        vec![("MODELD_TLS_CERT", &cert), ("MODELD_TLS_KEY", &key)],
        vec![
            ("MODELD_TLS_CERT", &cert),
            ("MODELD_TLS_KEY", &key),
            ("MODELD_TLS_CLIENT_CA", &ca_pem),
            ("MODELD_CALLERS_FILE", &callers),
        ],
    ];
    let server_tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca.pem())).domain_name("localhost");
    let modes = [
        Mode { name: "plaintext", tls: None, token: None },
        Mode { name: "TLS", tls: Some(server_tls.clone()), token: None },
        Mode {
            name: "mTLS+token",
            tls: Some(server_tls.identity(Identity::from_pem(client_cert, client_key))),
            token: Some("Bearer bench-token"),
        },
    ];

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut daemons = Vec::new();
    for env in &settings {
        let mut env = env.clone();
        env.push(("MODELD_INFERENCE_THREADS", "2"));
        let mut daemon = common::Daemon::serve(root.path(), &env);
        let log = daemon.collect_log();
        let admin = daemon.admin;
        rt.block_on(common::eventually("ready", || async move { common::http_get(admin, "/readyz").await.0 == 200 }));
        daemons.push((daemon, log));
    }

    println!("modeld TLS cost: Predict, one row, {CALLERS} tonic callers on kept connections");
    println!("{:<11} {:>5}  {:>10}  {:>9}  {:>9}", "mode", "round", "req/s", "p50 ms", "p99 ms");
    let mut best = [0.0f64; 3];
    let mut best_p99 = [0.0f64; 3];
    for round in 1..=ROUNDS {
        for (i, (mode, (daemon, _))) in modes.iter().zip(&daemons).enumerate() {
            let (rps, p50, p99) = rt.block_on(measure(daemon.grpc, mode, seconds));
            println!("{:<11} {round:>5}  {rps:>10.0}  {p50:>9.3}  {p99:>9.3}", mode.name);
            if rps > best[i] {
                best[i] = rps;
                best_p99[i] = p99;
            }
        }
    }
    println!();
    for (i, mode) in modes.iter().enumerate() {
        println!(
            "{:<11} best round {:>7.0} req/s = {:>5.1}% of plaintext, p99 {:.3} ms",
            mode.name,
            best[i],
            100.0 * best[i] / best[0],
            best_p99[i]
        );
    }
}

/// Runs the callers against `addr` for a warm-up second plus `seconds`: req/s, p50, p99 (ms).
async fn measure(addr: std::net::SocketAddr, mode: &Mode, seconds: u64) -> (f64, f64, f64) {
    let row = common::to_pb(&common::golden("v2")[0].row);
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let mut callers = Vec::new();
    for _ in 0..CALLERS {
        let scheme = if mode.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Channel::from_shared(format!("{scheme}://localhost:{}", addr.port())).unwrap();
        if let Some(tls) = &mode.tls {
            endpoint = endpoint.tls_config(tls.clone()).unwrap();
        }
        let channel = endpoint.connect().await.expect("connect");
        let (stop, measuring, row, token) = (stop.clone(), measuring.clone(), row.clone(), mode.token);
        callers.push(tokio::spawn(async move {
            let mut client = InferenceClient::new(channel);
            let mut latencies = Vec::new();
            // Bounded by the stop flag and by count.
            for _ in 0..10_000_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let mut request = tonic::Request::new(common::predict_request(vec![row.clone()]));
                if let Some(token) = token {
                    request.metadata_mut().insert("authorization", token.parse().unwrap());
                }
                let started = Instant::now();
                let answer: pb::PredictResponse = client.predict(request).await.expect("Predict").into_inner();
                assert_eq!(answer.predictions.len(), 1);
                if measuring.load(Ordering::Relaxed) {
                    latencies.push(started.elapsed());
                }
            }
            latencies
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for caller in callers {
        all.extend(caller.await.unwrap());
    }
    all.sort_unstable();
    let pct = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)].as_secs_f64() * 1e3;
    (all.len() as f64 / elapsed, pct(0.5), pct(0.99))
}
