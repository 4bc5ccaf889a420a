//! Overload, open loop: calls are sent on a schedule whatever the server answers, as a fleet of
//! independent callers does, so a slow server faces a growing backlog rather than a politely
//! waiting client.
//!
//! `cargo bench --bench overload` starts the release daemon with its default limits and sends
//! Predict calls of OVERLOAD_ROWS rows (default 64: enough work per call that the daemon, not
//! this client on the same cores, is what saturates) over 8 connections, each with a 5 s
//! deadline:
//! 1. a ramp of rising rates, 3 s each: the sustainable rate S is the highest whose every call
//!    is OK with p99 under 25 ms;
//! 2. 2S for 10 s: every call must be OK or RESOURCE_EXHAUSTED (from the admission limit or
//!    the model-run queue), none may time out or fail otherwise;
//! 3. S/2 for 5 s: how long after the drop until calls are all OK and fast again.
//!
//! It prints each phase's counts and latencies. Bounded: about 40 s of load in all.

#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use modeld::pb::{self, inference_client::InferenceClient};
use tokio::sync::mpsc;
use tonic::{Code, transport::Channel};

const CONNECTIONS: usize = 8;
const DEADLINE: Duration = Duration::from_secs(5);
/// p99 an admitted call may take at a sustainable rate.
const SUSTAINABLE_P99: Duration = Duration::from_millis(25);

/// One answered call: when it was sent (from the phase start), how long it took, its status.
struct Record {
    sent: Duration,
    latency: Duration,
    code: Code,
    message: String,
}

fn main() {
    let rows: usize = std::env::var("OVERLOAD_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    let root = common::model_root(Some("v2"));
    let mut daemon = common::Daemon::serve(root.path(), &[]);
    let _log = daemon.collect_log();
    let (grpc, admin) = (daemon.grpc, daemon.admin);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        common::eventually("ready", || async move { common::http_get(admin, "/readyz").await.0 == 200 }).await;
        let golden = common::golden("v2");
        let request = common::predict_request(golden.iter().cycle().take(rows).map(|g| common::to_pb(&g.row)).collect());
        let mut clients = Vec::new();
        for _ in 0..CONNECTIONS {
            let channel = Channel::from_shared(format!("http://{grpc}")).unwrap().connect().await.unwrap();
            clients.push(InferenceClient::new(channel));
        }
        println!("modeld overload: {rows} rows per Predict call, {CONNECTIONS} connections, open loop, default limits");

        // 1. The ramp.
        let mut sustainable = 0.0;
        let mut rate = 250.0;
        loop {
            let records = run(&clients, &request, &[(rate, Duration::from_secs(3))]).await;
            let summary = Summary::of(&records);
            summary.print(&format!("ramp {rate:.0}/s"));
            if summary.all_ok() && summary.p99 <= SUSTAINABLE_P99 {
                sustainable = rate;
                rate *= 1.25;
            } else {
                break;
            }
        }
        assert!(sustainable > 0.0, "not even the first rate was sustainable");
        println!("S = {sustainable:.0} calls/s ({:.0} rows/s)", sustainable * rows as f64);

        // 2 and 3. Twice the sustainable rate, then half of it.
        let (over, calm) = (Duration::from_secs(10), Duration::from_secs(5));
        let records = run(&clients, &request, &[(2.0 * sustainable, over), (sustainable / 2.0, calm)]).await;
        let (overload, after): (Vec<_>, Vec<_>) = records.into_iter().partition(|r| r.sent < over);
        let summary = Summary::of(&overload);
        summary.print(&format!("2S = {:.0}/s", 2.0 * sustainable));
        for (message, n) in &summary.messages {
            println!("    {n:>7} x {message}");
        }
        let unexpected: u64 =
            summary.codes.iter().filter(|(c, _)| !matches!(c, Code::Ok | Code::ResourceExhausted)).map(|(_, n)| n).sum();
        Summary::of(&after).print(&format!("S/2 = {:.0}/s", sustainable / 2.0));
        // Recovery: the last call sent after the drop that was refused or slow.
        let recovered = after
            .iter()
            .filter(|r| r.code != Code::Ok || r.latency > SUSTAINABLE_P99)
            .map(|r| r.sent - over + r.latency)
            .max()
            .unwrap_or_default();
        println!("recovered {:.0} ms after the load dropped to S/2", recovered.as_secs_f64() * 1e3);
        assert_eq!(unexpected, 0, "calls at 2S answered with neither OK nor RESOURCE_EXHAUSTED");
    });
}

/// Sends calls at each (rate, duration) in turn, open loop, and waits for every answer.
async fn run(clients: &[InferenceClient<Channel>], request: &pb::PredictRequest, phases: &[(f64, Duration)]) -> Vec<Record> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let start = Instant::now();
    let tick = Duration::from_millis(1);
    let (mut sent, mut phase_start) = (0u64, Duration::ZERO);
    for &(rate, length) in phases {
        let mut due = 0.0;
        let mut next = start + phase_start;
        while next < start + phase_start + length {
            tokio::time::sleep_until(next.into()).await;
            // Calls owed by now at this rate, sent in one burst per tick.
            due += rate * tick.as_secs_f64();
            while due >= 1.0 {
                due -= 1.0;
                let mut client = clients[sent as usize % clients.len()].clone();
                let mut call = tonic::Request::new(request.clone());
                call.set_timeout(DEADLINE);
                let tx = tx.clone();
                let at = start.elapsed();
                tokio::spawn(async move {
                    let began = Instant::now();
                    let result = tokio::time::timeout(DEADLINE + Duration::from_secs(1), client.predict(call)).await;
                    let (code, message) = match result {
                        Ok(Ok(_)) => (Code::Ok, String::new()),
                        Ok(Err(s)) => (s.code(), s.message().to_owned()),
                        Err(_) => (Code::DeadlineExceeded, "no answer: client-side timeout".to_owned()),
                    };
                    let _ = tx.send(Record { sent: at, latency: began.elapsed(), code, message });
                });
                sent += 1;
            }
            next += tick;
        }
        phase_start += length;
    }
    drop(tx);
    let mut records = Vec::with_capacity(sent as usize);
    while let Some(r) = rx.recv().await {
        records.push(r);
    }
    assert_eq!(records.len() as u64, sent, "every call answered");
    records
}

struct Summary {
    codes: BTreeMap<Code, u64>,
    messages: BTreeMap<String, u64>,
    calls: u64,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

impl Summary {
    /// Counts by status; latency percentiles of the OK calls.
    fn of(records: &[Record]) -> Summary {
        let mut codes = BTreeMap::new();
        let mut messages = BTreeMap::new();
        let mut ok: Vec<Duration> = Vec::new();
        for r in records {
            *codes.entry(r.code).or_default() += 1;
            if r.code == Code::Ok {
                ok.push(r.latency);
            } else {
                // The limit in a message is the same for every call: one line per kind.
                let kind: String = r.message.chars().take(60).collect();
                *messages.entry(format!("{:?}: {kind}", r.code)).or_default() += 1;
            }
        }
        ok.sort();
        let at = |q: f64| ok.get(((ok.len() as f64 * q) as usize).min(ok.len().saturating_sub(1))).copied();
        Summary {
            codes,
            messages,
            calls: records.len() as u64,
            p50: at(0.5).unwrap_or_default(),
            p99: at(0.99).unwrap_or_default(),
            max: ok.last().copied().unwrap_or_default(),
        }
    }

    fn all_ok(&self) -> bool {
        self.codes.keys().all(|c| *c == Code::Ok)
    }

    fn print(&self, name: &str) {
        let codes: Vec<String> = self.codes.iter().map(|(c, n)| format!("{c:?} {n}")).collect();
        println!(
            "{name:<16} {:>7} calls  [{}]  OK p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            self.calls,
            codes.join(", "),
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3,
            self.max.as_secs_f64() * 1e3
        );
    }
}
