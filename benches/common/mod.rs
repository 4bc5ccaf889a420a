//! Bench helpers: the release daemon as a child process on loopback, and its RSS.
#![allow(dead_code)] // each bench uses its own subset

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
};

/// A running `modeld serve`; SIGTERM and wait on drop.
pub struct Daemon {
    child: Child,
    pub grpc: SocketAddr,
}

impl Daemon {
    /// Serves `credit_risk` from `root` on loopback ports it picks; `env` adds settings.
    pub fn spawn(root: &Path, env: &[(&str, &str)]) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_modeld"))
            .arg("serve")
            .env("MODELD_MODEL_ROOT", root)
            .env("MODELD_TASKS", "credit_risk")
            .env("MODELD_GRPC_ADDR", "127.0.0.1:0")
            .env("MODELD_ADMIN_ADDR", "127.0.0.1:0")
            .env("MODELD_CONFIG", "/dev/null")
            .env("MODELD_LOG_FORMAT", "json")
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .spawn()
            .expect("release daemon starts");
        // The daemon logs the addresses it bound; the rest of its log is drained and dropped.
        let mut log = BufReader::new(child.stderr.take().expect("stderr is piped")).lines();
        let grpc = loop {
            let line = log.next().expect("daemon exited before listening").expect("readable log");
            let entry: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
            if entry["message"] == "listening" {
                break entry["grpc"].as_str().expect("grpc address").parse().expect("socket address");
            }
        };
        std::thread::spawn(move || log.for_each(drop));
        Daemon { child, grpc }
    }

    /// Resident set size of the daemon, in MiB.
    pub fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        kib / 1024.0
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}
