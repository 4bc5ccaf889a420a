//! h2load runs and the daemon's own answer counts, shared by the benchmarks that drive a
//! daemon from outside the process. A bench that uses it also includes `tests/common` as `common`.
#![allow(dead_code)] // each bench uses its own subset

use std::{path::Path, process::Command};

/// One h2load measurement.
pub struct Figures {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Calls answered with HTTP 200.
    pub done: u64,
}

/// One gRPC message frame: not compressed, big-endian length, the message.
pub fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    frame
}

/// Calls of `method` the daemon answered so far: OK, and with any other status.
pub fn predict_counts(rt: &tokio::runtime::Runtime, admin: std::net::SocketAddr, method: &str) -> (f64, f64) {
    let text = rt.block_on(crate::common::http_get(admin, "/metrics")).1;
    let (mut ok, mut failed) = (0.0, 0.0);
    let label = format!("method=\"{method}\"");
    for line in text.lines().filter(|l| l.starts_with("modeld_requests_total{") && l.contains(&label)) {
        let value: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        if line.contains("code=\"OK\"") {
            ok += value;
        } else {
            failed += value;
        }
    }
    (ok, failed)
}

/// Runs h2load for 1 s of warm-up plus `seconds`, one stream per connection, and reads its
/// per-request log for the percentiles.
pub fn h2load(url: &str, body: &Path, conns: usize, seconds: u64, work: &Path) -> Figures {
    h2load_with(url, body, conns, seconds, work, &["-H", "content-type: application/grpc", "-H", "te: trailers"])
}

/// [`h2load`] with other protocol arguments (headers, `--h1`).
pub fn h2load_with(url: &str, body: &Path, conns: usize, seconds: u64, work: &Path, protocol: &[&str]) -> Figures {
    let log = work.join("requests.tsv");
    let _ = std::fs::remove_file(&log);
    let out = Command::new("h2load")
        .args(["-t", "1", "-m", "1", "-c", &conns.to_string()])
        .args(["--warm-up-time", "1", "-D", &seconds.to_string()])
        .arg(format!("--data={}", body.display()))
        .args(protocol)
        .arg(format!("--log-file={}", log.display()))
        .arg(url)
        .output()
        .expect("h2load runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "h2load failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    // "requests: 100 total, 100 started, 100 done, 100 succeeded, 0 failed, 0 errored, 0 timeout"
    let field = |line: &str, name: &str| -> u64 {
        line.split(", ").find(|p| p.ends_with(name)).and_then(|p| p.split_whitespace().next()?.parse().ok()).unwrap()
    };
    let requests = text.lines().find(|l| l.starts_with("requests:")).expect("a requests line");
    let (done, failed) = (field(requests, "succeeded"), field(requests, "failed"));
    assert_eq!(failed, 0, "{text}");
    let mut micros: Vec<u64> =
        std::fs::read_to_string(&log).unwrap().lines().filter_map(|l| l.split('\t').nth(2)?.parse().ok()).collect();
    micros.sort_unstable();
    let pct = |q: f64| micros[((micros.len() as f64 * q) as usize).min(micros.len() - 1)] as f64 / 1e3;
    // "finished in 5.00s, 31234.40 req/s, 2.01MB/s"
    let finished = text.lines().find(|l| l.starts_with("finished in")).expect("a finished line");
    let rps = finished.split(", ").nth(1).and_then(|p| p.split_whitespace().next()?.parse().ok()).unwrap();
    Figures { rps, p50_ms: pct(0.50), p99_ms: pct(0.99), done }
}
