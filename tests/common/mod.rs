//! The one helper module of the integration tests and the benchmarks (benches include it by
//! path): a real server on 127.0.0.1:0 with real bundles, in process or as a `modeld serve`
//! child, stopped on drop; model roots, bundles, clients and metric readers.
#![allow(dead_code)] // each test and bench binary uses its own subset

use std::{
    future::Future,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use modeld::{
    app::{self, AppError, Listeners},
    bundle::golden::{self, GoldenRow},
    config::Config,
    pb::{self, inference_client::InferenceClient},
    preprocess::OwnedRow,
    schema::OwnedValue,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::oneshot,
    task::JoinHandle,
};
use tonic::transport::Channel;

pub const TASK: &str = "credit_risk";

/// The repository's root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The repository's shipped bundles.
pub fn repo_models() -> PathBuf {
    repo().join("models")
}

/// A model root in a temp dir with `credit_risk/{v1,v2}` linked to the shipped bundles and
/// `current` pointing at `current` (no link when None).
pub fn model_root(current: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let task = dir.path().join(TASK);
    std::fs::create_dir(&task).unwrap();
    for v in ["v1", "v2"] {
        std::os::unix::fs::symlink(repo_models().join(TASK).join(v), task.join(v)).unwrap();
    }
    if let Some(target) = current {
        point_current(dir.path(), target);
    }
    dir
}

/// Flips `current` atomically, as a release pipeline does.
pub fn point_current(root: &Path, target: &str) {
    let task = root.join(TASK);
    let tmp = task.join("current.tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, task.join("current")).unwrap();
}

/// An audit log of every call (no sampling) to the file `path`.
pub fn audit_to(path: &Path) -> modeld::config::AuditConfig {
    modeld::config::AuditConfig {
        target: modeld::config::AuditTarget::File(path.to_owned()),
        sample: 1.0,
        features: None,
        redact: Vec::new(),
        hmac_key_file: None,
        max_bytes: 100 << 20,
        keep_files: 5,
        queue: 8192,
    }
}

/// Settings for tests: the given root, quick polling, small grace period.
pub fn test_config(root: &Path) -> Config {
    let mut config = Config::for_model_root(root).expect("test config");
    config.tasks = vec![TASK.to_owned()];
    config.poll_interval = Duration::from_millis(50);
    config.reload_debounce = Duration::from_millis(20);
    config.shutdown_grace = Duration::from_secs(10);
    config.inference_threads = 2;
    config
}

/// A running server. Dropping it stops it.
pub struct TestServer {
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    /// The HTTP/JSON face.
    pub http: SocketAddr,
    stop_tx: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), AppError>>>,
}

impl TestServer {
    pub async fn start(config: Config) -> TestServer {
        let listeners = Listeners {
            grpc: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            admin: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            http: Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
        };
        let (grpc, admin) = listeners.local_addrs().unwrap();
        let http = listeners.http_addr().unwrap().unwrap();
        let (stop_tx, stop_rx) = oneshot::channel();
        let handle = tokio::spawn(async move {
            app::serve(&config, listeners, async {
                let _ = stop_rx.await;
            })
            .await
        });
        TestServer { grpc, admin, http, stop_tx: Some(stop_tx), handle: Some(handle) }
    }

    /// Starts a server and waits until it reports ready.
    pub async fn start_ready(config: Config) -> TestServer {
        let server = TestServer::start(config).await;
        let admin = server.admin;
        eventually("server ready", || async move { http_get(admin, "/readyz").await.0 == 200 }).await;
        server
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc)).unwrap().connect().await.expect("connect to test server")
    }

    pub async fn client(&self) -> InferenceClient<Channel> {
        InferenceClient::new(self.channel().await).max_decoding_message_size(64 << 20)
    }

    /// Stops the server and returns how `app::serve` ended.
    pub async fn stop(mut self) -> Result<(), AppError> {
        let _ = self.stop_tx.take().unwrap().send(());
        self.handle.take().unwrap().await.unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
    }
}

/// A running `modeld serve` child process, its bound addresses and its log. Dropping it sends
/// SIGTERM and waits for the process.
pub struct Daemon {
    pub child: std::process::Child,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    /// The HTTP/JSON face, unless it is turned off.
    pub http: Option<SocketAddr>,
    /// The log lines after "listening", until taken.
    pub log: Option<std::io::Lines<BufReader<std::process::ChildStderr>>>,
}

impl Daemon {
    /// Serves `credit_risk` from `root` with the binary under test on loopback ports it picks,
    /// JSON logs and no config file; `env` adds or overrides settings.
    pub fn serve(root: &Path, env: &[(&str, &str)]) -> Daemon {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_modeld"));
        command
            .arg("serve")
            .env("MODELD_MODEL_ROOT", root)
            .env("MODELD_TASKS", TASK)
            .env("MODELD_GRPC_ADDR", "127.0.0.1:0")
            .env("MODELD_ADMIN_ADDR", "127.0.0.1:0")
            .env("MODELD_HTTP_ADDR", "127.0.0.1:0")
            .env("MODELD_CONFIG", "/dev/null")
            .env("MODELD_LOG_FORMAT", "json")
            .envs(env.iter().copied());
        Daemon::spawn(command)
    }

    /// Starts `command` (a `serve` with JSON logs) and waits for its "listening" line: the
    /// daemon logs the addresses it bound, so tests read them instead of guessing ports.
    pub fn spawn(mut command: std::process::Command) -> Daemon {
        let mut child = command.stderr(std::process::Stdio::piped()).spawn().expect("start modeld");
        let mut log = BufReader::new(child.stderr.take().unwrap()).lines();
        let (grpc, admin, http) = loop {
            let line = log.next().expect("daemon exited before listening").unwrap();
            let entry: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
            if entry["message"] == "listening" {
                let addr = |k: &str| entry[k].as_str().unwrap().parse::<SocketAddr>().ok();
                break (addr("grpc").unwrap(), addr("admin").unwrap(), addr("http"));
            }
        };
        Daemon { child, grpc, admin, http, log: Some(log) }
    }

    /// Reads the rest of the log on a thread, so the daemon never blocks on a full pipe; the
    /// handle returns every line once the daemon exits.
    pub fn collect_log(&mut self) -> std::thread::JoinHandle<Vec<String>> {
        let log = self.log.take().expect("the log is taken once");
        std::thread::spawn(move || log.map_while(Result::ok).collect())
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
        if let Ok(None) = self.child.try_wait() {
            signal(&self.child, "TERM");
            let _ = self.child.wait();
        }
    }
}

/// Sends a signal (HUP, TERM, ...) to a child process.
pub fn signal(child: &std::process::Child, name: &str) {
    let status =
        std::process::Command::new("kill").args([&format!("-{name}"), &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

/// Awaits `check` until it holds, failing the test after 20 s. No fixed sleeps in tests:
/// things that settle over time are polled against a deadline.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A minimal HTTP/1.1 GET: status code and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return (0, String::new());
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_owned() };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

/// The golden rows of a shipped version.
/// The first 64 of the example bundle's golden rows that carry every field the first one does,
/// so they share one column list and fit in one request (the rest are left to bundle loading).
pub fn golden(version: &str) -> Vec<GoldenRow> {
    let rows = all_golden(version);
    let names = |g: &GoldenRow| g.row.features.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    let full = names(&rows[0]);
    rows.into_iter().filter(|g| names(g) == full).take(64).collect()
}

/// Every golden row of a shipped version, as bundle loading replays them.
pub fn all_golden(version: &str) -> Vec<GoldenRow> {
    let text = std::fs::read_to_string(repo_models().join(TASK).join(version).join("golden.jsonl")).unwrap();
    golden::parse(&text).unwrap()
}

/// A golden (or any owned) row in wire form.
pub fn to_pb(row: &OwnedRow) -> pb::Row {
    row.into()
}

/// A golden (or any owned) row as the HTTP/JSON face takes it: feature name to plain value.
pub fn json_row(row: &OwnedRow) -> serde_json::Value {
    let features = row.features.iter().map(|(name, value)| {
        let value = match value {
            OwnedValue::Bool(b) => serde_json::json!(b),
            OwnedValue::Integer(i) => serde_json::json!(i),
            OwnedValue::Number(x) => serde_json::json!(x),
            OwnedValue::Text(s) => serde_json::json!(s),
        };
        (name.clone(), value)
    });
    serde_json::Value::Object(features.collect())
}

pub fn predict_request(rows: Vec<pb::Row>) -> pb::PredictRequest {
    pb::PredictRequest { task: TASK.into(), rows, ..Default::default() }
}

/// Asserts served probabilities equal the golden ones within 1e-5.
pub fn assert_close(served: &[f32], golden: &[f32], context: &str) {
    assert_eq!(served.len(), golden.len(), "{context}: class count");
    for (s, g) in served.iter().zip(golden) {
        assert!((s - g).abs() <= 1e-5, "{context}: served {served:?}, golden {golden:?}");
    }
}

/// Value of the sample `name{labels}` in Prometheus text, labels given in any order.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
        if metric != name {
            return None;
        }
        let body = rest.strip_suffix('}')?;
        let all = labels.iter().all(|(k, v)| body.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
        all.then(|| value.parse().ok()).flatten()
    })
}

/// A writable copy of a shipped version directory at `dest`.
pub fn copy_version(version: &str, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    for entry in std::fs::read_dir(repo_models().join(TASK).join(version)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dest.join(entry.file_name())).unwrap();
    }
}

/// Rewrites MANIFEST.sha256 so that only an intended defect remains.
pub fn reseal(dir: &Path) {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "MANIFEST.sha256")
        .collect();
    names.sort();
    let manifest: String = names
        .iter()
        .map(|n| format!("{}  {n}\n", modeld::bundle::manifest::sha256_hex(&std::fs::read(dir.join(n)).unwrap())))
        .collect();
    std::fs::write(dir.join("MANIFEST.sha256"), manifest).unwrap();
}

/// Replaces text in one file of a bundle directory.
pub fn edit(dir: &Path, file: &str, f: impl FnOnce(String) -> String) {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, f(text)).unwrap();
}

/// Makes a copy of v2 one column short of its model: drops the last numeric field (ordinal
/// encoding, so one field is one column) and its column, then reseals the manifest.
pub fn drop_one_column(dir: &Path) {
    let field = "number_of_people_being_liable_to_provide_maintenance_for";
    edit(dir, "feature_schema.yaml", |t| {
        let start = t.find(&format!("  - name: \"{field}\"")).unwrap();
        let next = t[start + 1..].find("  - name: ").or_else(|| t[start + 1..].find("\ncolumns:").map(|i| i + 1));
        let end = start + 1 + next.unwrap();
        format!("{}{}", &t[..start], &t[end..]).replace(&format!("  - \"{field}\"\n"), "")
    });
    reseal(dir);
}

/// A Predict call whose request is only half sent, over a raw HTTP/2 connection: the server has
/// accepted it (it counts as in flight) and cannot answer until the rest arrives. It holds the
/// drain open for exactly as long as the test wants, with no timing involved.
pub struct HalfSentCall {
    send: h2::SendStream<bytes::Bytes>,
    response: h2::client::ResponseFuture,
    rest: bytes::Bytes,
    /// The connection's client, for more calls on it.
    pub client: h2::client::SendRequest<bytes::Bytes>,
    /// The connection's task: finished once the connection has closed.
    pub connection: tokio::task::JoinHandle<Result<(), h2::Error>>,
}

impl HalfSentCall {
    /// Opens the call with `headers` besides gRPC's own, and sends the first half of `request`.
    pub async fn start(addr: SocketAddr, request: &pb::PredictRequest, headers: &[(&str, &str)]) -> HalfSentCall {
        HalfSentCall::start_raw(addr, &prost::Message::encode_to_vec(request), headers).await
    }

    /// [`HalfSentCall::start`] with any bytes as the message, valid protobuf or not.
    pub async fn start_raw(addr: SocketAddr, message: &[u8], headers: &[(&str, &str)]) -> HalfSentCall {
        HalfSentCall::start_at(addr, "/modeld.v1.Inference/Predict", message, headers).await
    }

    /// [`HalfSentCall::start_raw`] on any method `path`.
    pub async fn start_at(addr: SocketAddr, path: &str, message: &[u8], headers: &[(&str, &str)]) -> HalfSentCall {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        let connection = tokio::spawn(connection);
        let mut client = client.ready().await.unwrap();
        let mut head = http::Request::post(format!("http://{addr}{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        for (name, value) in headers {
            head = head.header(*name, *value);
        }
        let head = head.body(()).unwrap();
        let (response, mut send) = client.send_request(head, false).unwrap();
        // A gRPC message frame: no compression, big-endian length, the message.
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
        frame.extend_from_slice(message);
        let mut frame = bytes::Bytes::from(frame);
        let rest = frame.split_off(frame.len() / 2);
        send.send_data(frame, false).unwrap();
        HalfSentCall { send, response, rest, client, connection }
    }

    /// Sends the rest of the request and returns the decoded answer and its grpc-status.
    pub async fn finish(mut self) -> (pb::PredictResponse, String) {
        let rest = std::mem::take(&mut self.rest);
        self.send.send_data(rest, true).unwrap();
        self.answer().await
    }

    /// Waits for the answer without sending the rest: the decoded answer (empty when there is
    /// none) and the grpc-status, from the trailers or a trailers-only response's headers.
    pub async fn answer(self) -> (pb::PredictResponse, String) {
        let response = self.response.await.unwrap();
        if let Some(status) = response.headers().get("grpc-status") {
            return (pb::PredictResponse::default(), status.to_str().unwrap().to_owned());
        }
        let mut body = response.into_body();
        let mut bytes = Vec::new();
        while let Some(data) = body.data().await {
            let data = data.unwrap();
            body.flow_control().release_capacity(data.len()).unwrap();
            bytes.extend_from_slice(&data);
        }
        let trailers = body.trailers().await.unwrap().expect("gRPC trailers");
        let status = trailers["grpc-status"].to_str().unwrap().to_owned();
        let response = <pb::PredictResponse as prost::Message>::decode(bytes.get(5..).unwrap_or_default()).unwrap();
        (response, status)
    }
}

/// Runs curl with `args` and returns the HTTP status, the body and curl's stderr.
pub async fn curl(args: Vec<String>) -> (u16, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "30", "-w", "\n%{http_code}"])
            .args(&args)
            .output()
            .expect("curl is installed");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
        (code.trim().parse().unwrap_or(0), body.to_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    })
    .await
    .unwrap()
}

/// POSTs a JSON body; returns the status and the parsed answer.
pub async fn post(addr: SocketAddr, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let url = format!("http://{addr}{path}");
    let (status, text, stderr) =
        curl(vec!["-H".into(), "content-type: application/json".into(), "--data-binary".into(), body.to_string(), url])
            .await;
    let parsed = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text} {stderr}"));
    (status, parsed)
}

/// An Open Inference Protocol (V2) request for `rows` (which share one feature list): one
/// tensor per feature, with typed contents or raw little-endian bytes.
pub fn v2_request(task: &str, rows: &[GoldenRow], raw: bool) -> pb::v2::ModelInferRequest {
    let mut request = pb::v2::ModelInferRequest { model_name: task.into(), id: "req-7".into(), ..Default::default() };
    for (name, first) in &rows[0].row.features {
        let column = rows.iter().map(|g| g.row.features.iter().find(|(n, _)| n == name).unwrap().1.clone());
        let mut contents = pb::v2::InferTensorContents::default();
        let (datatype, bytes) = match first {
            OwnedValue::Text(_) => {
                let texts: Vec<Vec<u8>> = column
                    .map(|v| match v {
                        OwnedValue::Text(s) => s.into_bytes(),
                        other => panic!("{name}: {other:?}"),
                    })
                    .collect();
                let bytes =
                    texts.iter().flat_map(|t| (t.len() as u32).to_le_bytes().into_iter().chain(t.clone())).collect();
                contents.bytes_contents = texts;
                ("BYTES", bytes)
            }
            OwnedValue::Integer(_) => {
                contents.int64_contents = column
                    .map(|v| match v {
                        OwnedValue::Integer(i) => i,
                        other => panic!("{name}: {other:?}"),
                    })
                    .collect();
                ("INT64", contents.int64_contents.iter().flat_map(|i| i.to_le_bytes()).collect())
            }
            other => panic!("{name}: no tensor for {other:?} in this test"),
        };
        let mut input = pb::v2::model_infer_request::InferInputTensor {
            name: name.clone(),
            datatype: datatype.into(),
            shape: vec![rows.len() as i64],
            ..Default::default()
        };
        if raw {
            request.raw_input_contents.push(bytes);
        } else {
            input.contents = Some(contents);
        }
        request.inputs.push(input);
    }
    request
}

/// A V2 request's typed inputs as REST JSON tensors.
pub fn v2_json_inputs(request: &pb::v2::ModelInferRequest) -> Vec<serde_json::Value> {
    request
        .inputs
        .iter()
        .map(|i| {
            let c = i.contents.as_ref().expect("typed contents");
            let data = if i.datatype == "BYTES" {
                serde_json::json!(c.bytes_contents.iter().map(|b| String::from_utf8_lossy(b)).collect::<Vec<_>>())
            } else {
                serde_json::json!(c.int64_contents)
            };
            serde_json::json!({"name": i.name, "datatype": i.datatype, "shape": i.shape, "data": data})
        })
        .collect()
}
