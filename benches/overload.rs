//! Overload, open loop: calls are sent on a schedule whatever the server answers, as a fleet of
//! independent callers does, so a slow server faces a growing backlog rather than a politely
//! waiting client.
//!
//! `cargo bench --bench overload` starts the release daemon with `max_inflight_calls` at
//! OVERLOAD_INFLIGHT (default 64: about 35 ms of work at S, see README "Limits") and sends
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

use bytes::Bytes;
use h2::client::SendRequest;
use prost::Message;
use tokio::sync::mpsc;
use tonic::Code;

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
    let inflight = std::env::var("OVERLOAD_INFLIGHT").unwrap_or_else(|_| "64".to_owned());
    let root = common::model_root(Some("v2"));
    let mut daemon = common::Daemon::serve(root.path(), &[("MODELD_MAX_INFLIGHT_CALLS", &inflight)]);
    let _log = daemon.collect_log();
    let (grpc, admin) = (daemon.grpc, daemon.admin);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        common::eventually("ready", || async move { common::http_get(admin, "/readyz").await.0 == 200 }).await;
        let golden = common::golden("v2");
        let request =
            common::predict_request(golden.iter().cycle().take(rows).map(|g| common::to_pb(&g.row)).collect());
        // Encoded once: the client's cost per call is then a few microseconds whatever the rows,
        // so the cores go to the daemon.
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(request.encoded_len() as u32).to_be_bytes());
        frame.extend_from_slice(&request.encode_to_vec());
        let request = Bytes::from(frame);
        let mut clients = Vec::new();
        for _ in 0..CONNECTIONS {
            let tcp = tokio::net::TcpStream::connect(grpc).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let (client, connection) = h2::client::Builder::new()
                .initial_window_size(1 << 20)
                .initial_connection_window_size(1 << 24)
                .handshake(tcp)
                .await
                .unwrap();
            tokio::spawn(connection);
            clients.push(client);
        }
        let uri: http::Uri = format!("http://{grpc}/modeld.v1.Inference/Predict").parse().unwrap();
        println!(
            "modeld overload: {rows} rows per Predict call, {CONNECTIONS} connections, open loop, \
             max_inflight_calls {inflight}"
        );

        // Warm-up, not counted: connections, threads and the model's first runs.
        run(&clients, &uri, &request, &[(250.0, Duration::from_secs(2))]).await;

        // 1. The ramp.
        let mut sustainable = 0.0;
        let mut rate = 250.0;
        loop {
            let records = run(&clients, &uri, &request, &[(rate, Duration::from_secs(3))]).await;
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
        let records = run(&clients, &uri, &request, &[(2.0 * sustainable, over), (sustainable / 2.0, calm)]).await;
        let (overload, after): (Vec<_>, Vec<_>) = records.into_iter().partition(|r| r.sent < over);
        let summary = Summary::of(&overload);
        summary.print(&format!("2S = {:.0}/s", 2.0 * sustainable));
        for (message, n) in &summary.messages {
            println!("    {n:>7} x {message}");
        }
        let unexpected: u64 = summary
            .codes
            .iter()
            .filter(|(c, _)| ![Code::Ok as i32, Code::ResourceExhausted as i32].contains(c))
            .map(|(_, n)| n)
            .sum();
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

/// One Predict call over raw HTTP/2: its status code and message.
async fn call(mut client: SendRequest<Bytes>, uri: http::Uri, request: Bytes) -> (Code, String) {
    let failed = |e: h2::Error| (Code::Unavailable, format!("transport: {e}"));
    let head = http::Request::post(uri)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", format!("{}m", DEADLINE.as_millis()))
        .body(())
        .unwrap();
    client = match client.ready().await {
        Ok(c) => c,
        Err(e) => return failed(e),
    };
    let (response, mut send) = match client.send_request(head, false) {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    if let Err(e) = send.send_data(request, true) {
        return failed(e);
    }
    let response = match response.await {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    let status = |map: &http::HeaderMap| {
        let code = map.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
        let message = map.get("grpc-message").and_then(|m| m.to_str().ok()).unwrap_or_default().to_owned();
        Some((Code::from_i32(code), message))
    };
    if let Some(s) = status(response.headers()) {
        return s;
    }
    let mut body = response.into_body();
    while let Some(data) = body.data().await {
        match data {
            Ok(d) => {
                let _ = body.flow_control().release_capacity(d.len());
            }
            Err(e) => return failed(e),
        }
    }
    match body.trailers().await {
        Ok(Some(t)) => status(&t).unwrap_or((Code::Unknown, "no grpc-status".into())),
        Ok(None) => (Code::Unknown, "no trailers".into()),
        Err(e) => failed(e),
    }
}

/// Sends calls at each (rate, duration) in turn, open loop, and waits for every answer.
async fn run(
    clients: &[SendRequest<Bytes>],
    uri: &http::Uri,
    request: &Bytes,
    phases: &[(f64, Duration)],
) -> Vec<Record> {
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
                let client = clients[sent as usize % clients.len()].clone();
                let (uri, request) = (uri.clone(), request.clone());
                let tx = tx.clone();
                let at = start.elapsed();
                tokio::spawn(async move {
                    let began = Instant::now();
                    // The daemon answers by the deadline it was sent; a second more is the
                    // client's own bound, counted as a time-out if the daemon missed it.
                    let result =
                        tokio::time::timeout(DEADLINE + Duration::from_secs(1), call(client, uri, request)).await;
                    let (code, message) = result
                        .unwrap_or_else(|_| (Code::DeadlineExceeded, "no answer: client-side timeout".to_owned()));
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
    /// Calls by gRPC code number.
    codes: BTreeMap<i32, u64>,
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
            *codes.entry(r.code as i32).or_default() += 1;
            if r.code == Code::Ok {
                ok.push(r.latency);
            } else {
                // The limit in a message is the same for every call: one line per kind.
                let kind: String = r.message.replace("%20", " ").chars().take(60).collect();
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
        self.codes.keys().all(|c| *c == Code::Ok as i32)
    }

    fn print(&self, name: &str) {
        let codes: Vec<String> = self.codes.iter().map(|(c, n)| format!("{:?} {n}", Code::from_i32(*c))).collect();
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
