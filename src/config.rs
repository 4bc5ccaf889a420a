//! The one typed configuration: `config/service.yaml`, overridden by `MODELD_*` environment
//! variables, overridden by command-line flags. Nothing else in modeld reads the environment.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::Args;
use serde::Deserialize;

/// Default location of the ONNX Runtime library, as `scripts/fetch-onnxruntime.sh` leaves it.
const DEFAULT_ORT_LIBRARY: &str = ".ort/libonnxruntime.so.1.31.1";
const DEFAULT_CONFIG: &str = "config/service.yaml";

/// Flags and environment for `validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The bundle's version directory (the one holding MANIFEST.sha256).
    pub bundle: PathBuf,
    /// ONNX Runtime shared library [default: $ORT_DYLIB_PATH, else .ort/libonnxruntime.so.1.31.1].
    #[arg(long, env = "MODELD_ORT_LIBRARY")]
    pub ort_library: Option<PathBuf>,
}

/// Flags and environment for `serve`; every field may also come from the YAML file.
#[derive(Debug, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeArgs {
    /// YAML configuration file; flags and MODELD_* variables override it [default: config/service.yaml if present].
    #[arg(long, env = "MODELD_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Validate the configuration, print it and exit.
    #[arg(long)]
    #[serde(skip)]
    pub check_config: bool,

    /// Directory holding one sub-directory per task [default: ./models].
    #[arg(long, env = "MODELD_MODEL_ROOT")]
    pub model_root: Option<PathBuf>,
    /// Serve the one bundle in this directory (its model.onnx, config.yaml, ... directly inside,
    /// as KServe's storage initializer leaves it at /mnt/models) as the only task, named by
    /// `tasks`; no `current` link, no other versions, no rollout policy [default: off].
    #[arg(long, env = "MODELD_BUNDLE_DIR")]
    pub bundle_dir: Option<PathBuf>,
    /// Tasks to serve, comma-separated [default: every task directory under the model root].
    #[arg(long, env = "MODELD_TASKS", value_delimiter = ',')]
    pub tasks: Option<Vec<String>>,
    /// gRPC listen address. Use 0.0.0.0 in containers [default: 127.0.0.1:50051].
    #[arg(long, env = "MODELD_GRPC_ADDR")]
    pub grpc_addr: Option<SocketAddr>,
    /// HTTP/JSON listen address (/v1/tasks/{task}/predict, /v1/models/{task}:predict) [default: 127.0.0.1:8080].
    #[arg(long, env = "MODELD_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// Serve the HTTP/JSON face on `http_addr` [default: true].
    #[arg(long, env = "MODELD_HTTP_ENABLED")]
    pub http_enabled: Option<bool>,
    /// Admin HTTP listen address (/healthz /readyz /metrics /model/version) [default: 127.0.0.1:9090].
    #[arg(long, env = "MODELD_ADMIN_ADDR")]
    pub admin_addr: Option<SocketAddr>,

    /// Model runs allowed at once (= ONNX sessions per bundle). More than the CPU count only adds
    /// contention [default: available CPUs].
    #[arg(long, env = "MODELD_INFERENCE_THREADS")]
    pub inference_threads: Option<usize>,
    /// Model runs allowed to wait for a free slot; beyond it calls get RESOURCE_EXHAUSTED at once
    /// instead of queueing without bound [default: 1024].
    #[arg(long, env = "MODELD_MAX_QUEUED_RUNS")]
    pub max_queued_runs: Option<usize>,
    /// Requests with at most this many rows run on the async worker that received them (a row
    /// costs microseconds, less than a thread hand-off); bigger ones go to blocking threads
    /// [default: 16].
    #[arg(long, env = "MODELD_INLINE_MAX_ROWS")]
    pub inline_max_rows: Option<usize>,
    /// Most rows accepted in one Predict request or stream chunk [default: 10000].
    #[arg(long, env = "MODELD_MAX_ROWS")]
    pub max_rows: Option<usize>,
    /// Most rows per model run in BatchPredict; bigger chunks run as several batches [default: 1024].
    #[arg(long, env = "MODELD_MAX_BATCH_ROWS")]
    pub max_batch_rows: Option<usize>,
    /// Most BatchPredict streams open at once; more get RESOURCE_EXHAUSTED [default: 64].
    #[arg(long, env = "MODELD_MAX_STREAMS")]
    pub max_streams: Option<usize>,
    /// Inference threads that bulk streams may use at once, so unary Predict always finds a
    /// free one [default: inference_threads - 1, at least 1].
    #[arg(long, env = "MODELD_BULK_THREADS")]
    pub bulk_threads: Option<usize>,
    /// Largest gRPC message accepted, in bytes [default: 16777216].
    #[arg(long, env = "MODELD_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    /// gRPC calls admitted at once (every RPC but grpc.health.v1); beyond it a call gets
    /// RESOURCE_EXHAUSTED at once instead of waiting. Size it as the calls per second the
    /// server sustains times the queueing delay callers accept [default: 1024].
    #[arg(long, env = "MODELD_MAX_INFLIGHT_CALLS")]
    pub max_inflight_calls: Option<usize>,
    /// gRPC connections open at once; beyond it a new connection is closed as soon as it is
    /// accepted [default: 4096].
    #[arg(long, env = "MODELD_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Concurrent HTTP/2 streams (calls) one connection may open, advertised to clients; a
    /// client past it has its extra streams refused [default: 1024].
    #[arg(long, env = "MODELD_MAX_STREAMS_PER_CONNECTION")]
    pub max_streams_per_connection: Option<u32>,
    /// Largest HTTP/2 header list (all of a call's metadata) accepted, in bytes [default: 16384].
    #[arg(long, env = "MODELD_MAX_HEADER_BYTES")]
    pub max_header_bytes: Option<u32>,
    /// Time a new gRPC connection has to send its HTTP/2 preface, in milliseconds; a
    /// connection silent past it is closed [default: 10000].
    #[arg(long, env = "MODELD_HANDSHAKE_TIMEOUT_MS")]
    pub handshake_timeout_ms: Option<u64>,
    /// Server-side limit for one unary call, in milliseconds; a client's shorter grpc-timeout
    /// wins; past it the call is answered DEADLINE_EXCEEDED. Streams are bound only by their
    /// caller's grpc-timeout [default: 10000].
    #[arg(long, env = "MODELD_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// How long in-flight calls may take to finish after SIGTERM, in milliseconds. Keep it below
    /// the orchestrator's termination grace period [default: 20000].
    #[arg(long, env = "MODELD_SHUTDOWN_GRACE_MS")]
    pub shutdown_grace_ms: Option<u64>,

    /// Interval between checks of every `current` link, in milliseconds [default: 2000].
    #[arg(long, env = "MODELD_POLL_INTERVAL_MS")]
    pub poll_interval_ms: Option<u64>,
    /// Quiet time after a reload signal before reloading, in milliseconds [default: 200].
    #[arg(long, env = "MODELD_RELOAD_DEBOUNCE_MS")]
    pub reload_debounce_ms: Option<u64>,

    /// Watch task directories for file events (inotify) besides polling. Turn off on file
    /// systems that send no events; polling alone then notices changes [default: true].
    #[arg(long, env = "MODELD_WATCH_EVENTS")]
    pub watch_events: Option<bool>,
    /// Version directories to keep loaded besides the live one, for version pins and A/B
    /// comparison, comma-separated (e.g. v1,v2). Each costs its model's memory [default: none].
    #[arg(long, env = "MODELD_KEEP_VERSIONS", value_delimiter = ',')]
    pub keep_versions: Option<Vec<String>>,
    /// Also keep the N most recent version directories loaded (natural name order) [default: 0].
    #[arg(long, env = "MODELD_KEEP_RECENT")]
    pub keep_recent: Option<usize>,
    /// Shadow jobs (a rollout policy's `shadow` versions scoring answered rows) pending at
    /// once; more are dropped and counted, never queued [default: 256].
    #[arg(long, env = "MODELD_SHADOW_QUEUE")]
    pub shadow_queue: Option<usize>,
    /// Time a shadow job may wait to start its model run before it is dropped and counted
    /// [default: 250].
    #[arg(long, env = "MODELD_SHADOW_BUDGET_MS")]
    pub shadow_budget_ms: Option<u64>,
    /// Exit at start-up if a task has no good bundle, instead of serving NOT_SERVING and
    /// waiting for one (for those who prefer a crash loop) [default: false].
    #[arg(long, env = "MODELD_REQUIRE_BUNDLES")]
    pub require_bundles: Option<bool>,

    /// TLS certificate chain (PEM) for the gRPC and HTTP faces; with `tls_key`, both speak TLS
    /// only. Replaced files are picked up without a restart [default: none, plaintext].
    #[arg(long, env = "MODELD_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for `tls_cert`.
    #[arg(long, env = "MODELD_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA bundle (PEM) for client certificates: set, every gRPC and HTTP caller must present a
    /// certificate from it (mutual TLS) [default: none].
    #[arg(long, env = "MODELD_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// TLS certificate chain (PEM) for the admin port [default: none, plaintext for probes and scrapes].
    #[arg(long, env = "MODELD_ADMIN_TLS_CERT")]
    pub admin_tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for `admin_tls_cert`.
    #[arg(long, env = "MODELD_ADMIN_TLS_KEY")]
    pub admin_tls_key: Option<PathBuf>,
    /// Callers file (YAML): who may call which tasks, by bearer token (its SHA-256) or
    /// client-certificate identity; reloaded on change [default: none, no caller check].
    #[arg(long, env = "MODELD_CALLERS_FILE")]
    pub callers_file: Option<PathBuf>,
    /// Serve gRPC server reflection (grpcurl without the .proto) [default: true].
    #[arg(long, env = "MODELD_REFLECTION")]
    pub reflection: Option<bool>,
    /// Evaluate tree-ensemble and linear models natively once they agree with ONNX Runtime on
    /// probe rows at load; false leaves every model to ONNX Runtime [default: true].
    #[arg(long, env = "MODELD_NATIVE_MODELS")]
    pub native_models: Option<bool>,
    /// Close each gRPC connection gracefully after this many milliseconds (GOAWAY, in-flight
    /// calls finish within `max_connection_age_grace_ms`), so callers behind a Service spread
    /// over new replicas; HTTP/1.1 connections are closed after a response past it, with up to
    /// 10% jitter [default: 0, no limit].
    #[arg(long, env = "MODELD_MAX_CONNECTION_AGE_MS")]
    pub max_connection_age_ms: Option<u64>,
    /// Time in-flight calls get on a connection closed for its age, in milliseconds [default: 30000].
    #[arg(long, env = "MODELD_MAX_CONNECTION_AGE_GRACE_MS")]
    pub max_connection_age_grace_ms: Option<u64>,

    /// Audit log: a file to append one JSON record per scored request (per chunk for
    /// BatchPredict) to, or `-` for stdout [default: none, no audit log].
    #[arg(long, env = "MODELD_AUDIT_PATH")]
    pub audit_path: Option<String>,
    /// Share of successful requests recorded, 0 to 1; failed ones are always recorded [default: 1].
    #[arg(long, env = "MODELD_AUDIT_SAMPLE")]
    pub audit_sample: Option<f64>,
    /// Input features recorded, comma-separated; `*` for all, an empty value for none [default: *].
    #[arg(long, env = "MODELD_AUDIT_FEATURES", value_delimiter = ',')]
    pub audit_features: Option<Vec<String>>,
    /// Features recorded only as HMAC-SHA256 digests under `audit_hmac_key_file`, comma-separated
    /// [default: none].
    #[arg(long, env = "MODELD_AUDIT_REDACT", value_delimiter = ',')]
    pub audit_redact: Option<Vec<String>>,
    /// File holding the HMAC key for `audit_redact` (e.g. a Secret mount); required with it.
    #[arg(long, env = "MODELD_AUDIT_HMAC_KEY_FILE")]
    pub audit_hmac_key_file: Option<PathBuf>,
    /// Rotate the audit file before it grows past this many bytes [default: 104857600].
    #[arg(long, env = "MODELD_AUDIT_MAX_BYTES")]
    pub audit_max_bytes: Option<u64>,
    /// Rotated audit files kept beside the current one (`<path>.1` newest) [default: 5].
    #[arg(long, env = "MODELD_AUDIT_KEEP_FILES")]
    pub audit_keep_files: Option<usize>,
    /// Records that may wait for the audit writer; past it records are dropped and counted in
    /// modeld_audit_dropped_total [default: 8192].
    #[arg(long, env = "MODELD_AUDIT_QUEUE")]
    pub audit_queue: Option<usize>,

    /// Length of the window that `modeld_score_psi` compares with the bundle's score baseline,
    /// in seconds [default: 900].
    #[arg(long, env = "MODELD_DRIFT_WINDOW_SECONDS")]
    pub drift_window_seconds: Option<u64>,
    /// Scored rows the window must hold before a PSI is exported [default: 500].
    #[arg(long, env = "MODELD_DRIFT_MIN_ROWS")]
    pub drift_min_rows: Option<u64>,

    /// ONNX Runtime shared library [default: $ORT_DYLIB_PATH, else .ort/libonnxruntime.so.1.31.1].
    #[arg(long, env = "MODELD_ORT_LIBRARY")]
    pub ort_library: Option<PathBuf>,
    /// Log filter in RUST_LOG syntax [default: info,ort=warn].
    #[arg(long, env = "MODELD_LOG")]
    pub log: Option<String>,
    /// Log format [default: text].
    #[arg(long, env = "MODELD_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// The resolved configuration of `modeld serve`.
#[derive(Debug, Clone)]
pub struct Config {
    pub model_root: PathBuf,
    /// Single-bundle mode: the one task's bundle directory (`bundle_dir`).
    pub bundle_dir: Option<PathBuf>,
    pub tasks: Vec<String>,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub http_enabled: bool,
    pub admin_addr: SocketAddr,
    pub inference_threads: usize,
    pub max_queued_runs: usize,
    pub inline_max_rows: usize,
    pub max_rows: usize,
    pub max_batch_rows: usize,
    pub max_streams: usize,
    pub bulk_threads: usize,
    pub max_message_bytes: usize,
    pub max_inflight_calls: usize,
    pub max_connections: usize,
    pub max_streams_per_connection: u32,
    pub max_header_bytes: u32,
    pub handshake_timeout: Duration,
    pub request_timeout: Duration,
    pub shutdown_grace: Duration,
    pub poll_interval: Duration,
    pub reload_debounce: Duration,
    pub watch_events: bool,
    pub keep_versions: Vec<String>,
    pub keep_recent: usize,
    pub shadow_queue: usize,
    pub shadow_budget: Duration,
    pub require_bundles: bool,
    pub ort_library: PathBuf,
    pub log: String,
    pub log_format: LogFormat,
    /// The audit log, when on.
    pub audit: Option<AuditConfig>,
    /// TLS for the gRPC and HTTP faces, when on.
    pub tls: Option<TlsFiles>,
    /// TLS for the admin port, when on.
    pub admin_tls: Option<TlsFiles>,
    pub callers_file: Option<PathBuf>,
    pub reflection: bool,
    /// Tree ensembles and linear models run natively (checked against ONNX Runtime at load).
    pub native_models: bool,
    /// None: connections live as long as their callers keep them.
    pub max_connection_age: Option<Duration>,
    pub max_connection_age_grace: Duration,
    pub drift: DriftConfig,
    /// OpenTelemetry trace export, when an OTLP endpoint is configured.
    pub traces: Option<TraceConfig>,
}

/// Trace export, from the standard `OTEL_*` variables: the one place modeld reads names outside
/// `MODELD_*`, so that the same settings that configure every other service configure it.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceConfig {
    /// OTLP/gRPC endpoint (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else `OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub endpoint: String,
    /// `OTEL_SERVICE_NAME`, else `service.name` in `OTEL_RESOURCE_ATTRIBUTES`, else `modeld`.
    pub service_name: String,
    /// `OTEL_RESOURCE_ATTRIBUTES` (`key=value,...`), besides `service.name`.
    pub resource: Vec<(String, String)>,
    pub sampler: TraceSampler,
    /// `OTEL_EXPORTER_OTLP_TRACES_HEADERS`, else `OTEL_EXPORTER_OTLP_HEADERS` (`key=value,...`,
    /// values URL-encoded).
    pub headers: Vec<(String, String)>,
    /// `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`, else `OTEL_EXPORTER_OTLP_TIMEOUT` (ms) [default: 10000].
    pub timeout: Duration,
}

/// `OTEL_TRACES_SAMPLER` with `OTEL_TRACES_SAMPLER_ARG` [default: parentbased_always_on].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TraceSampler {
    AlwaysOn,
    AlwaysOff,
    /// Sample this share of traces by trace id.
    Ratio(f64),
    /// Follow the caller's sampled flag; decide roots with the inner sampler.
    ParentBased(RootSampler),
}

/// How a [`TraceSampler::ParentBased`] sampler decides a trace that starts here.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RootSampler {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
}

/// Reads the `OTEL_*` trace settings through `var`; None when no OTLP endpoint is set or
/// `OTEL_SDK_DISABLED` is true.
pub fn trace_config(var: impl Fn(&str) -> Option<String>) -> Result<Option<TraceConfig>, ConfigError> {
    let invalid = |m: String| Err(ConfigError::Invalid(m));
    let var = |name: &str| var(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    let either = |signal: &str, general: &str| var(signal).or_else(|| var(general));
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    let Some(endpoint) = either("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT") else {
        return Ok(None);
    };
    if let Some(protocol) = either("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL") {
        if protocol != "grpc" {
            return invalid(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL `{protocol}`: modeld exports OTLP over gRPC only (grpc)"
            ));
        }
    }
    let pairs = |name: &str, text: Option<String>| -> Result<Vec<(String, String)>, ConfigError> {
        let Some(text) = text else { return Ok(Vec::new()) };
        text.split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), percent_decode(v.trim()))),
                _ => Err(ConfigError::Invalid(format!("{name}: `{p}` is not key=value"))),
            })
            .collect()
    };
    let mut resource = pairs("OTEL_RESOURCE_ATTRIBUTES", var("OTEL_RESOURCE_ATTRIBUTES"))?;
    let from_resource = resource.iter().position(|(k, _)| k == "service.name").map(|i| resource.remove(i).1);
    let service_name = var("OTEL_SERVICE_NAME").or(from_resource).unwrap_or_else(|| "modeld".to_owned());
    let headers =
        pairs("OTEL_EXPORTER_OTLP_HEADERS", either("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"))?;
    let timeout = match either("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT") {
        None => Duration::from_secs(10),
        Some(ms) => match ms.parse::<u64>() {
            Ok(ms) if ms > 0 => Duration::from_millis(ms),
            _ => return invalid(format!("OTEL_EXPORTER_OTLP_TIMEOUT `{ms}`: expected milliseconds above 0")),
        },
    };
    let ratio = || -> Result<f64, ConfigError> {
        match var("OTEL_TRACES_SAMPLER_ARG") {
            None => Ok(1.0),
            Some(arg) => match arg.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => {
                    Err(ConfigError::Invalid(format!("OTEL_TRACES_SAMPLER_ARG `{arg}`: expected a ratio from 0 to 1")))
                }
            },
        }
    };
    let sampler = match var("OTEL_TRACES_SAMPLER").as_deref().unwrap_or("parentbased_always_on") {
        "always_on" => TraceSampler::AlwaysOn,
        "always_off" => TraceSampler::AlwaysOff,
        "traceidratio" => TraceSampler::Ratio(ratio()?),
        "parentbased_always_on" => TraceSampler::ParentBased(RootSampler::AlwaysOn),
        "parentbased_always_off" => TraceSampler::ParentBased(RootSampler::AlwaysOff),
        "parentbased_traceidratio" => TraceSampler::ParentBased(RootSampler::Ratio(ratio()?)),
        other => {
            return invalid(format!(
                "OTEL_TRACES_SAMPLER `{other}`: expected always_on, always_off, traceidratio, parentbased_always_on, \
                 parentbased_always_off or parentbased_traceidratio"
            ));
        }
    };
    Ok(Some(TraceConfig { endpoint, service_name, resource, sampler, headers, timeout }))
}

/// `%XX` escapes decoded, as the OTel spec allows in header and resource values.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The score drift window (`modeld_score_psi`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriftConfig {
    pub window: Duration,
    pub min_rows: u64,
}

impl Default for DriftConfig {
    fn default() -> Self {
        DriftConfig { window: Duration::from_secs(900), min_rows: 500 }
    }
}

/// A certificate, its key, and optionally the CA that client certificates must come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// Where records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditTarget {
    /// Standard output (`audit_path: "-"`): logs go to stderr, so stdout carries only records.
    Stdout,
    /// A file, appended to and rotated by size.
    File(PathBuf),
}

/// The audit log's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditConfig {
    pub target: AuditTarget,
    pub sample: f64,
    /// None records every feature; otherwise only these (none when empty).
    pub features: Option<Vec<String>>,
    pub redact: Vec<String>,
    pub hmac_key_file: Option<PathBuf>,
    pub max_bytes: u64,
    pub keep_files: usize,
    pub queue: usize,
}

impl Config {
    /// Settings for serving `model_root` with defaults for everything else; tests and
    /// benchmarks start from here.
    pub fn for_model_root(model_root: impl Into<PathBuf>) -> Result<Config, ConfigError> {
        resolve(ServeArgs { model_root: Some(model_root.into()), ..ServeArgs::default() }, ServeArgs::default())
    }
}

/// Merges flags/environment over the YAML file over defaults, and checks the result.
pub fn load(args: ServeArgs) -> Result<Config, ConfigError> {
    let (path, explicit) = match &args.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG), false),
    };
    let file = match std::fs::read_to_string(&path) {
        Ok(text) => serde_yaml::from_str::<Option<ServeArgs>>(&text)
            .map_err(|source| ConfigError::Parse { path: path.clone(), source })?
            .unwrap_or_default(),
        Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => ServeArgs::default(),
        Err(source) => return Err(ConfigError::Read { path, source }),
    };
    let mut config = resolve(args, file)?;
    config.traces = trace_config(|name| std::env::var(name).ok())?;
    Ok(config)
}

fn resolve(cli: ServeArgs, file: ServeArgs) -> Result<Config, ConfigError> {
    let invalid = |m: String| Err(ConfigError::Invalid(m));
    let audit = audit_config(&cli, &file)?;
    let client_ca = cli.tls_client_ca.clone().or(file.tls_client_ca.clone());
    let model_root = cli.model_root.or(file.model_root).unwrap_or_else(|| PathBuf::from("models"));
    let bundle_dir = cli.bundle_dir.or(file.bundle_dir);
    let tasks: Vec<String> = match cli.tasks.or(file.tasks).filter(|t| !t.is_empty()) {
        Some(tasks) => tasks.into_iter().map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()).collect(),
        None if bundle_dir.is_some() => Vec::new(),
        None => discover_tasks(&model_root)?,
    };
    let keep_versions = cli.keep_versions.or(file.keep_versions).unwrap_or_default();
    let keep_recent = cli.keep_recent.or(file.keep_recent).unwrap_or(0);
    if let Some(dir) = &bundle_dir {
        if tasks.len() != 1 {
            return invalid(format!(
                "bundle_dir {} serves one model: give its name as the one task (tasks), got {}",
                dir.display(),
                tasks.len()
            ));
        }
        if !keep_versions.is_empty() || keep_recent > 0 {
            return invalid("bundle_dir serves one version: keep_versions and keep_recent do not apply".into());
        }
    }
    if tasks.is_empty() {
        return invalid(format!("no tasks: {} has no task directories and none were configured", model_root.display()));
    }
    for t in &tasks {
        if t.contains('/') || t == "." || t == ".." {
            return invalid(format!("task name `{t}` must be a plain directory name"));
        }
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let ms = |v: Option<u64>, default: u64| Duration::from_millis(v.unwrap_or(default));
    let inference_threads = cli.inference_threads.or(file.inference_threads).unwrap_or(cpus);
    let config = Config {
        tasks,
        grpc_addr: cli.grpc_addr.or(file.grpc_addr).unwrap_or_else(|| ([127, 0, 0, 1], 50051).into()),
        http_addr: cli.http_addr.or(file.http_addr).unwrap_or_else(|| ([127, 0, 0, 1], 8080).into()),
        http_enabled: cli.http_enabled.or(file.http_enabled).unwrap_or(true),
        admin_addr: cli.admin_addr.or(file.admin_addr).unwrap_or_else(|| ([127, 0, 0, 1], 9090).into()),
        inference_threads,
        max_queued_runs: cli.max_queued_runs.or(file.max_queued_runs).unwrap_or(1024),
        inline_max_rows: cli.inline_max_rows.or(file.inline_max_rows).unwrap_or(16),
        max_rows: cli.max_rows.or(file.max_rows).unwrap_or(10_000),
        max_batch_rows: cli.max_batch_rows.or(file.max_batch_rows).unwrap_or(1024),
        max_streams: cli.max_streams.or(file.max_streams).unwrap_or(64),
        bulk_threads: cli.bulk_threads.or(file.bulk_threads).unwrap_or(inference_threads.saturating_sub(1)).max(1),
        max_message_bytes: cli.max_message_bytes.or(file.max_message_bytes).unwrap_or(16 << 20),
        max_inflight_calls: cli.max_inflight_calls.or(file.max_inflight_calls).unwrap_or(1024),
        max_connections: cli.max_connections.or(file.max_connections).unwrap_or(4096),
        max_streams_per_connection: cli.max_streams_per_connection.or(file.max_streams_per_connection).unwrap_or(1024),
        max_header_bytes: cli.max_header_bytes.or(file.max_header_bytes).unwrap_or(16 << 10),
        handshake_timeout: ms(cli.handshake_timeout_ms.or(file.handshake_timeout_ms), 10_000),
        request_timeout: ms(cli.request_timeout_ms.or(file.request_timeout_ms), 10_000),
        shutdown_grace: ms(cli.shutdown_grace_ms.or(file.shutdown_grace_ms), 20_000),
        poll_interval: ms(cli.poll_interval_ms.or(file.poll_interval_ms), 2_000),
        reload_debounce: ms(cli.reload_debounce_ms.or(file.reload_debounce_ms), 200),
        watch_events: cli.watch_events.or(file.watch_events).unwrap_or(true),
        keep_versions,
        keep_recent,
        shadow_queue: cli.shadow_queue.or(file.shadow_queue).unwrap_or(256),
        shadow_budget: ms(cli.shadow_budget_ms.or(file.shadow_budget_ms), 250),
        require_bundles: cli.require_bundles.or(file.require_bundles).unwrap_or(false),
        ort_library: cli.ort_library.or(file.ort_library).unwrap_or_else(default_ort_library),
        log: cli.log.or(file.log).unwrap_or_else(|| "info,ort=warn".to_owned()),
        log_format: cli.log_format.or(file.log_format).unwrap_or(LogFormat::Text),
        audit,
        tls: tls_files("tls", cli.tls_cert.or(file.tls_cert), cli.tls_key.or(file.tls_key), client_ca.clone())?,
        admin_tls: tls_files(
            "admin_tls",
            cli.admin_tls_cert.or(file.admin_tls_cert),
            cli.admin_tls_key.or(file.admin_tls_key),
            None,
        )?,
        callers_file: cli.callers_file.or(file.callers_file),
        reflection: cli.reflection.or(file.reflection).unwrap_or(true),
        native_models: cli.native_models.or(file.native_models).unwrap_or(true),
        max_connection_age: cli
            .max_connection_age_ms
            .or(file.max_connection_age_ms)
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis),
        max_connection_age_grace: ms(cli.max_connection_age_grace_ms.or(file.max_connection_age_grace_ms), 30_000),
        drift: DriftConfig {
            window: Duration::from_secs(cli.drift_window_seconds.or(file.drift_window_seconds).unwrap_or(900)),
            min_rows: cli.drift_min_rows.or(file.drift_min_rows).unwrap_or(500),
        },
        traces: None,
        model_root,
        bundle_dir,
    };
    if client_ca.is_some() && config.tls.is_none() {
        return invalid(
            "tls_client_ca needs tls_cert and tls_key: client certificates are checked in the TLS handshake".into(),
        );
    }
    if config.drift.window.is_zero() {
        return invalid("drift_window_seconds must be at least 1".into());
    }
    if [config.inference_threads, config.max_rows, config.max_message_bytes, config.max_batch_rows, config.max_streams]
        .contains(&0)
    {
        return invalid(
            "inference_threads, max_rows, max_batch_rows, max_streams and max_message_bytes must be at least 1".into(),
        );
    }
    if config.max_inflight_calls == 0
        || config.max_connections == 0
        || config.max_streams_per_connection == 0
        || config.max_header_bytes == 0
        || config.handshake_timeout.is_zero()
    {
        return invalid(
            "max_inflight_calls, max_connections, max_streams_per_connection, max_header_bytes and \
             handshake_timeout_ms must be at least 1"
                .into(),
        );
    }
    if config.poll_interval.is_zero() {
        return invalid("poll_interval_ms must be at least 1".into());
    }
    Ok(config)
}

/// A certificate and key given together, or neither.
fn tls_files(
    prefix: &str,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
) -> Result<Option<TlsFiles>, ConfigError> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(TlsFiles { cert, key, client_ca })),
        (None, None) => Ok(None),
        _ => Err(ConfigError::Invalid(format!("{prefix}_cert and {prefix}_key go together: set both or neither"))),
    }
}

/// The audit settings, or None when `audit_path` is unset or empty.
fn audit_config(cli: &ServeArgs, file: &ServeArgs) -> Result<Option<AuditConfig>, ConfigError> {
    let invalid = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
    let target = match cli.audit_path.as_deref().or(file.audit_path.as_deref()).map(str::trim) {
        None | Some("") => return Ok(None),
        Some("-") => AuditTarget::Stdout,
        Some(path) => AuditTarget::File(PathBuf::from(path)),
    };
    let sample = cli.audit_sample.or(file.audit_sample).unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample) {
        return invalid("audit_sample must be between 0 and 1");
    }
    let names = |list: Option<&Vec<String>>| -> Option<Vec<String>> {
        list.map(|l| l.iter().map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()).collect())
    };
    let features = match names(cli.audit_features.as_ref().or(file.audit_features.as_ref())) {
        Some(list) if list.iter().any(|n| n == "*") => None,
        other => other,
    };
    let redact = names(cli.audit_redact.as_ref().or(file.audit_redact.as_ref())).unwrap_or_default();
    let hmac_key_file = cli.audit_hmac_key_file.clone().or(file.audit_hmac_key_file.clone());
    if !redact.is_empty() && hmac_key_file.is_none() {
        return invalid("audit_redact needs audit_hmac_key_file: redacted fields are recorded as keyed digests");
    }
    let config = AuditConfig {
        target,
        sample,
        features,
        redact,
        hmac_key_file,
        max_bytes: cli.audit_max_bytes.or(file.audit_max_bytes).unwrap_or(100 << 20),
        keep_files: cli.audit_keep_files.or(file.audit_keep_files).unwrap_or(5),
        queue: cli.audit_queue.or(file.audit_queue).unwrap_or(8192),
    };
    if config.max_bytes == 0 || config.queue == 0 {
        return invalid("audit_max_bytes and audit_queue must be at least 1");
    }
    Ok(Some(config))
}

/// The library path when none is configured: ort's own variable, then the fetch script's spot.
pub fn default_ort_library() -> PathBuf {
    std::env::var_os("ORT_DYLIB_PATH").map_or_else(|| PathBuf::from(DEFAULT_ORT_LIBRARY), PathBuf::from)
}

/// Every sub-directory of the model root, sorted: each is a task.
fn discover_tasks(root: &Path) -> Result<Vec<String>, ConfigError> {
    let entries = std::fs::read_dir(root).map_err(|source| ConfigError::Read { path: root.to_owned(), source })?;
    let mut tasks: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .collect();
    tasks.sort();
    Ok(tasks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_file_overrides_defaults() {
        let file: ServeArgs = serde_yaml::from_str("tasks: [a, b]\ninference_threads: 3\nmax_rows: 50\n").unwrap();
        let cli = ServeArgs { inference_threads: Some(1), ..ServeArgs::default() };
        let config = resolve(cli, file).unwrap();
        assert_eq!(config.tasks, ["a", "b"]);
        assert_eq!(config.inference_threads, 1);
        assert_eq!(config.max_rows, 50);
        assert_eq!(config.inline_max_rows, 16);
    }

    #[test]
    fn a_bundle_dir_serves_one_named_model_and_nothing_else() {
        let parse = |yaml: &str| resolve(ServeArgs::default(), serde_yaml::from_str(yaml).unwrap());
        let config = parse("bundle_dir: /mnt/models\ntasks: [fraud]\n").unwrap();
        assert_eq!(
            (config.bundle_dir.as_deref(), &config.tasks[..]),
            (Some(Path::new("/mnt/models")), &["fraud".to_owned()][..])
        );
        for (yaml, words) in [
            ("bundle_dir: /mnt/models\n", "give its name as the one task"),
            ("bundle_dir: /mnt/models\ntasks: [a, b]\n", "got 2"),
            ("bundle_dir: /mnt/models\ntasks: [a]\nkeep_recent: 2\n", "keep_recent do not apply"),
        ] {
            let e = parse(yaml).unwrap_err().to_string();
            assert!(e.contains(words), "{yaml}: {e}");
        }
    }

    #[test]
    fn audit_settings_resolve_and_are_checked() {
        let file: ServeArgs = serde_yaml::from_str("tasks: [a]\naudit_path: /var/log/modeld/audit.log\n").unwrap();
        let audit = resolve(ServeArgs::default(), file).unwrap().audit.unwrap();
        assert_eq!(audit.target, AuditTarget::File("/var/log/modeld/audit.log".into()));
        assert_eq!((audit.sample, audit.features, audit.queue), (1.0, None, 8192));

        let parse = |yaml: &str| resolve(ServeArgs::default(), serde_yaml::from_str(yaml).unwrap());
        let audit =
            parse("tasks: [a]\naudit_path: '-'\naudit_features: [age, ' ']\naudit_sample: 0.01\n").unwrap().audit;
        let audit = audit.unwrap();
        assert_eq!((audit.target, audit.features, audit.sample), (AuditTarget::Stdout, Some(vec!["age".into()]), 0.01));
        assert_eq!(
            parse("tasks: [a]\naudit_path: '-'\naudit_features: []\n").unwrap().audit.unwrap().features,
            Some(vec![])
        );
        assert_eq!(
            parse("tasks: [a]\naudit_path: '-'\naudit_features: ['*']\n").unwrap().audit.unwrap().features,
            None
        );
        assert!(parse("tasks: [a]\n").unwrap().audit.is_none());
        let err = parse("tasks: [a]\naudit_path: a.log\naudit_redact: [age]\n").unwrap_err().to_string();
        assert!(err.contains("audit_hmac_key_file"), "{err}");
        assert!(parse("tasks: [a]\naudit_path: a.log\naudit_sample: 1.5\n").is_err());
    }

    #[test]
    fn unknown_keys_in_the_file_are_errors() {
        assert!(serde_yaml::from_str::<ServeArgs>("inference_thread: 2\n").is_err());
    }

    #[test]
    fn traces_follow_the_standard_otel_variables() {
        fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
        }
        assert_eq!(trace_config(env(&[])).unwrap(), None, "off without an endpoint");
        let off = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"), ("OTEL_SDK_DISABLED", "true")];
        assert_eq!(trace_config(env(&off)).unwrap(), None);
        let t = trace_config(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://general:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317"),
            ("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-resource,deployment.environment=prod%20eu"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s%3Dcret"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(t.endpoint, "http://traces:4317", "the traces variable wins");
        assert_eq!(t.service_name, "from-resource");
        assert_eq!(t.resource, [("deployment.environment".to_owned(), "prod eu".to_owned())]);
        assert_eq!(t.sampler, TraceSampler::ParentBased(RootSampler::Ratio(0.01)));
        assert_eq!(t.headers, [("api-key".to_owned(), "s=cret".to_owned())]);
        assert_eq!(t.timeout, Duration::from_millis(2500));
        let named = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"), ("OTEL_SERVICE_NAME", "scoring")];
        let t = trace_config(env(&named)).unwrap().unwrap();
        assert_eq!((t.service_name.as_str(), t.sampler), ("scoring", TraceSampler::ParentBased(RootSampler::AlwaysOn)));
        for bad in [
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")][..],
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"), ("OTEL_TRACES_SAMPLER", "sometimes")],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "2"),
            ],
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"), ("OTEL_EXPORTER_OTLP_HEADERS", "novalue")],
        ] {
            assert!(trace_config(env(bad)).is_err(), "{bad:?}");
        }
    }
}
