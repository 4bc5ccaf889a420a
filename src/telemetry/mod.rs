//! Logs, metrics, drift signals ([`drift`]), traces ([`trace`]) and the audit log's writer ([`audit`]).
//!
//! [`Metrics`] owns its own `prometheus::Registry`, created at start-up and passed down: no
//! global default registry, so several servers in one process (tests) never share counters.

pub mod audit;
pub mod drift;
pub mod trace;

use crate::config::LogFormat;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Installs the tracing subscriber. `filter` uses `RUST_LOG` syntax. Text lines carry colour
/// codes only when stderr is a terminal: a log shipper reading a pipe or file gets plain text.
pub fn init_logs(filter: &str, format: LogFormat) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_new(filter)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    }
}

/// Every metric modeld exports. Cloning is shallow: all clones feed the same registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// 1, labelled with what this process is: modeld's version and commit, ONNX Runtime's version.
    build_info: IntGaugeVec,
    /// Finished calls by task, version, method and gRPC status code.
    pub requests: IntCounterVec,
    /// Call latency by task and method, from decoded request to encoded response.
    pub latency: HistogramVec,
    /// Rows scored, by task and version.
    pub rows: IntCounterVec,
    /// Calls being handled now, by method.
    pub in_flight: IntGaugeVec,
    /// Bundle loads by task and result (success|failure).
    pub reloads: IntCounterVec,
    /// Time to load and verify a bundle, by task.
    pub load_seconds: HistogramVec,
    /// 1 for the live bundle of each task: labels task, version, manifest sha256.
    pub live_version: IntGaugeVec,
    /// Model runs waiting for or holding an inference slot.
    pub queued_runs: IntGauge,
    /// Bundles loaded per task: the live one plus versions kept warm.
    pub loaded_versions: IntGaugeVec,
    /// BatchPredict streams open now.
    pub streams_open: IntGauge,
    /// Stream chunks answered, by task and version.
    pub stream_chunks: IntCounterVec,
    /// Stream rows answered with a per-row error, by task and version.
    pub stream_row_errors: IntCounterVec,
    /// Stream chunks received and not yet handed to the transport: the server's buffered work.
    pub stream_chunks_in_flight: IntGauge,
    /// Duration of whole streams, by task.
    pub stream_seconds: HistogramVec,
    /// gRPC calls accepted and not yet fully answered: what shutdown waits for. Set from the
    /// call tracker when metrics are scraped, so calls pay nothing for it.
    pub calls_open: IntGauge,
    /// gRPC connections open now.
    pub connections_open: IntGauge,
    /// Work turned away at the door, by reason: `calls_in_flight` (over `max_inflight_calls`,
    /// either face), `connections` (gRPC, over `max_connections`), `handshake_timeout` (gRPC, no
    /// HTTP/2 preface within `handshake_timeout_ms`).
    pub rejected: IntCounterVec,
    /// Audit records written.
    pub audit_records: IntCounter,
    /// Audit records dropped because the writer's queue was full, by task.
    pub audit_dropped: IntCounterVec,
    /// Failed audit log writes (or opens, or flushes).
    pub audit_write_errors: IntCounter,
    /// Finished calls by authenticated caller, task and code (callers file on).
    pub caller_requests: IntCounterVec,
    /// Callers file loads by result.
    pub access_reloads: IntCounterVec,
    /// Certificate loads by listener (`service`, `admin`) and result.
    pub tls_reloads: IntCounterVec,
    /// When the serving certificate expires (Unix seconds), by listener.
    pub tls_expiry: prometheus::GaugeVec,
    /// Champion/challenger: policy reloads, shadow scoring and the decision diff.
    pub rollout: RolloutMetrics,
    /// Drift and input-quality signals of every loaded version, read at scrape time.
    pub drift: drift::DriftSet,
}

/// The rollout's metrics. Version labels only ever name loaded versions, so they stay bounded.
#[derive(Clone)]
pub struct RolloutMetrics {
    /// Rollout policy file loads by task and result (success|failure).
    pub policy_reloads: IntCounterVec,
    /// The live policy's split weight per task and version (version directory).
    pub split_weight: prometheus::GaugeVec,
    /// Rows scored by a shadow version and compared, by task, champion and challenger version.
    pub rows: IntCounterVec,
    /// Compared rows whose labels differ (classifiers, at the decision threshold).
    pub disagreements: IntCounterVec,
    /// Compared rows by champion label and challenger label: the confusion between the two.
    pub decisions: IntCounterVec,
    /// |challenger score - champion score| per compared row: P(class 1) for binary models, the
    /// champion's class probability for multiclass, the first value for regressors.
    pub score_difference: HistogramVec,
    /// A shadow version's model-run time per job, by task and challenger.
    pub latency: HistogramVec,
    /// Shadow jobs not scored, by task and reason (queue_full, overload, budget, encode, error).
    pub dropped: IntCounterVec,
}

impl RolloutMetrics {
    fn new(registry: &Registry) -> RolloutMetrics {
        let pair = ["task", "champion", "challenger"];
        let m = RolloutMetrics {
            policy_reloads: IntCounterVec::new(
                Opts::new("modeld_rollout_policy_loads_total", "Rollout policy loads by task and result."),
                &["task", "result"],
            )
            .expect("static metric definition is valid"),
            split_weight: prometheus::GaugeVec::new(
                Opts::new("modeld_rollout_split_weight", "Share of decisions per task and version in the live policy."),
                &["task", "version"],
            )
            .expect("static metric definition is valid"),
            rows: IntCounterVec::new(
                Opts::new("modeld_shadow_rows_total", "Rows scored by a shadow version and compared with the answer."),
                &pair,
            )
            .expect("static metric definition is valid"),
            disagreements: IntCounterVec::new(
                Opts::new("modeld_shadow_label_disagreements_total", "Compared rows whose labels differ."),
                &pair,
            )
            .expect("static metric definition is valid"),
            decisions: IntCounterVec::new(
                Opts::new(
                    "modeld_shadow_decisions_total",
                    "Compared rows by champion and challenger label (the confusion between them).",
                ),
                &["task", "champion", "challenger", "champion_label", "challenger_label"],
            )
            .expect("static metric definition is valid"),
            score_difference: HistogramVec::new(
                HistogramOpts::new(
                    "modeld_shadow_score_difference",
                    "Absolute difference between challenger and champion scores per compared row.",
                )
                .buckets(vec![0.000_1, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]),
                &pair,
            )
            .expect("static metric definition is valid"),
            latency: HistogramVec::new(
                HistogramOpts::new("modeld_shadow_duration_seconds", "Shadow model-run time per job.").buckets(vec![
                    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25,
                ]),
                &["task", "challenger"],
            )
            .expect("static metric definition is valid"),
            dropped: IntCounterVec::new(
                Opts::new("modeld_shadow_dropped_total", "Shadow jobs not scored, by task and reason."),
                &["task", "reason"],
            )
            .expect("static metric definition is valid"),
        };
        for c in [
            Box::new(m.policy_reloads.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.split_weight.clone()),
            Box::new(m.rows.clone()),
            Box::new(m.disagreements.clone()),
            Box::new(m.decisions.clone()),
            Box::new(m.score_difference.clone()),
            Box::new(m.latency.clone()),
            Box::new(m.dropped.clone()),
        ] {
            registry.register(c).expect("each metric is registered once");
        }
        m
    }
}

impl Metrics {
    /// Creates the metrics in a fresh registry.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("modeld_requests_total", "Finished gRPC calls by task, version, method and status code."),
            &["task", "version", "method", "code"],
        )
        .expect("static metric definition is valid");
        let latency = HistogramVec::new(
            HistogramOpts::new("modeld_request_duration_seconds", "gRPC call latency inside the handler.").buckets(
                vec![
                    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25, 0.5, 1.0, 2.5,
                ],
            ),
            &["task", "method"],
        )
        .expect("static metric definition is valid");
        let rows = IntCounterVec::new(
            Opts::new("modeld_rows_total", "Rows scored by task and version."),
            &["task", "version"],
        )
        .expect("static metric definition is valid");
        let in_flight = IntGaugeVec::new(
            Opts::new("modeld_requests_in_flight", "gRPC calls being handled now, by method."),
            &["method"],
        )
        .expect("static metric definition is valid");
        let reloads = IntCounterVec::new(
            Opts::new("modeld_bundle_loads_total", "Bundle loads by task and result."),
            &["task", "result"],
        )
        .expect("static metric definition is valid");
        let load_seconds = HistogramVec::new(
            HistogramOpts::new("modeld_bundle_load_duration_seconds", "Time to load, verify and warm a bundle.")
                .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &["task"],
        )
        .expect("static metric definition is valid");
        let live_version = IntGaugeVec::new(
            Opts::new("modeld_live_version_info", "The live bundle of each task (value 1)."),
            &["task", "version", "manifest_sha256"],
        )
        .expect("static metric definition is valid");
        let queued_runs = IntGauge::new("modeld_inference_queue_depth", "Model runs admitted and not yet finished.")
            .expect("static metric definition is valid");
        let loaded_versions = IntGaugeVec::new(
            Opts::new("modeld_loaded_versions", "Bundles loaded per task (live plus kept warm)."),
            &["task"],
        )
        .expect("static metric definition is valid");
        let streams_open = IntGauge::new("modeld_streams_open", "BatchPredict streams open now.")
            .expect("static metric definition is valid");
        let stream_chunks = IntCounterVec::new(
            Opts::new("modeld_stream_chunks_total", "BatchPredict chunks answered, by task and version."),
            &["task", "version"],
        )
        .expect("static metric definition is valid");
        let stream_row_errors = IntCounterVec::new(
            Opts::new("modeld_stream_row_errors_total", "BatchPredict rows answered with an error."),
            &["task", "version"],
        )
        .expect("static metric definition is valid");
        let stream_chunks_in_flight = IntGauge::new(
            "modeld_stream_chunks_in_flight",
            "BatchPredict chunks received and not yet handed to the transport.",
        )
        .expect("static metric definition is valid");
        let stream_seconds = HistogramVec::new(
            HistogramOpts::new("modeld_stream_duration_seconds", "Duration of BatchPredict streams.")
                .buckets(vec![0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 7200.0]),
            &["task"],
        )
        .expect("static metric definition is valid");
        let calls_open = IntGauge::new(
            "modeld_grpc_calls_open",
            "gRPC calls accepted and not yet fully answered (what shutdown drains).",
        )
        .expect("static metric definition is valid");
        let connections_open = IntGauge::new("modeld_grpc_connections_open", "gRPC connections open now.")
            .expect("static metric definition is valid");
        let rejected = IntCounterVec::new(
            Opts::new(
                "modeld_rejected_total",
                "Calls (either face) and gRPC connections turned away at the door, by reason.",
            ),
            &["reason"],
        )
        .expect("static metric definition is valid");
        for reason in ["calls_in_flight", "connections", "handshake_timeout"] {
            rejected.with_label_values(&[reason]);
        }
        let audit_records = IntCounter::new("modeld_audit_records_total", "Audit records written.")
            .expect("static metric definition is valid");
        let audit_dropped = IntCounterVec::new(
            Opts::new("modeld_audit_dropped_total", "Audit records dropped because the writer's queue was full."),
            &["task"],
        )
        .expect("static metric definition is valid");
        let audit_write_errors =
            IntCounter::new("modeld_audit_write_errors_total", "Failed audit log writes, opens and flushes.")
                .expect("static metric definition is valid");
        let caller_requests = IntCounterVec::new(
            Opts::new("modeld_caller_requests_total", "Finished calls by authenticated caller, task and status code."),
            &["caller", "task", "code"],
        )
        .expect("static metric definition is valid");
        let access_reloads = IntCounterVec::new(
            Opts::new("modeld_callers_file_loads_total", "Callers file loads by result."),
            &["result"],
        )
        .expect("static metric definition is valid");
        let tls_reloads = IntCounterVec::new(
            Opts::new("modeld_tls_certificate_loads_total", "TLS certificate loads by listener and result."),
            &["listener", "result"],
        )
        .expect("static metric definition is valid");
        let tls_expiry = prometheus::GaugeVec::new(
            Opts::new(
                "modeld_tls_certificate_expiry_seconds",
                "When the serving certificate expires, in Unix seconds.",
            ),
            &["listener"],
        )
        .expect("static metric definition is valid");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(rows.clone()),
            Box::new(in_flight.clone()),
            Box::new(reloads.clone()),
            Box::new(load_seconds.clone()),
            Box::new(live_version.clone()),
            Box::new(queued_runs.clone()),
            Box::new(loaded_versions.clone()),
            Box::new(streams_open.clone()),
            Box::new(stream_chunks.clone()),
            Box::new(stream_row_errors.clone()),
            Box::new(stream_chunks_in_flight.clone()),
            Box::new(stream_seconds.clone()),
            Box::new(calls_open.clone()),
            Box::new(connections_open.clone()),
            Box::new(rejected.clone()),
            Box::new(audit_records.clone()),
            Box::new(audit_dropped.clone()),
            Box::new(audit_write_errors.clone()),
            Box::new(caller_requests.clone()),
            Box::new(access_reloads.clone()),
            Box::new(tls_reloads.clone()),
            Box::new(tls_expiry.clone()),
        ] {
            registry.register(c).expect("each metric is registered once");
        }
        let rollout = RolloutMetrics::new(&registry);
        let build_info = IntGaugeVec::new(
            Opts::new("modeld_build_info", "Always 1: modeld's version and git commit, and ONNX Runtime's version."),
            &["version", "git_commit", "onnxruntime"],
        )
        .expect("static metric definition is valid");
        registry.register(Box::new(build_info.clone())).expect("each metric is registered once");
        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds,
        // process_max_fds, process_start_time_seconds, process_threads, process_virtual_memory_*.
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("each metric is registered once");
        let drift = drift::DriftSet::default();
        registry.register(Box::new(drift.clone())).expect("each metric is registered once");
        Metrics {
            rollout,
            drift,
            registry,
            build_info,
            requests,
            latency,
            rows,
            in_flight,
            reloads,
            load_seconds,
            live_version,
            queued_runs,
            loaded_versions,
            streams_open,
            stream_chunks,
            stream_row_errors,
            stream_chunks_in_flight,
            stream_seconds,
            calls_open,
            connections_open,
            rejected,
            audit_records,
            audit_dropped,
            audit_write_errors,
            caller_requests,
            access_reloads,
            tls_reloads,
            tls_expiry,
        }
    }

    /// Starts every configured task's series at zero, so that dashboards and alerts see a task
    /// that has loaded nothing (no live version, only failed loads) rather than no series.
    pub fn init_tasks(&self, tasks: &[String], audit: bool) {
        for task in tasks {
            self.loaded_versions.with_label_values(&[task]).set(0);
            for result in ["success", "failure"] {
                self.reloads.with_label_values(&[task, result]);
            }
            if audit {
                self.audit_dropped.with_label_values(&[task]);
            }
        }
    }

    /// Sets `modeld_build_info` for this build and the ONNX Runtime version it loaded.
    pub fn set_build_info(&self, onnxruntime: &str) {
        let labels = [env!("CARGO_PKG_VERSION"), env!("MODELD_GIT_COMMIT"), onnxruntime];
        self.build_info.with_label_values(&labels).set(1);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::with_capacity(8 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("writing to a Vec cannot fail");
        String::from_utf8(out).expect("the text encoder writes UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// A version's series for answered calls of one method (`modeld_requests_total` with code OK,
/// `modeld_request_duration_seconds`, `modeld_rows_total`), resolved once: looking labels up
/// per call hashes them and takes the metric family's lock.
pub struct CallSeries {
    pub ok: IntCounter,
    pub latency: prometheus::Histogram,
    pub rows: IntCounter,
}

/// [`CallSeries`] per method, each resolved on the method's first answered call. Lives in
/// the bundle whose version labels them: each load of a version resolves its own handles.
#[derive(Default)]
pub struct SeriesCache([std::sync::OnceLock<CallSeries>; SeriesCache::METHODS]);

impl std::fmt::Debug for SeriesCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let resolved = self.0.iter().filter(|s| s.get().is_some()).count();
        f.debug_struct("SeriesCache").field("resolved", &resolved).finish()
    }
}

impl SeriesCache {
    /// Methods a cache has room for.
    pub const METHODS: usize = 8;

    /// The series of method number `method` (below [`SeriesCache::METHODS`]), resolved with `labels` the first time:
    /// task, version, method name.
    pub fn get(&self, metrics: &Metrics, method: usize, labels: impl FnOnce() -> [String; 3]) -> &CallSeries {
        self.0[method].get_or_init(|| {
            let [task, version, method] = labels();
            CallSeries {
                ok: metrics.requests.with_label_values(&[&*task, &*version, &*method, "OK"]),
                latency: metrics.latency.with_label_values(&[&*task, &*method]),
                rows: metrics.rows.with_label_values(&[&*task, &*version]),
            }
        })
    }
}

/// Holds a gauge one higher for as long as it lives: in-flight calls, queued runs, open
/// streams. Whatever path the work ends on (success, error, a dropped future), the gauge
/// comes back down.
pub struct GaugeGuard(IntGauge);

impl GaugeGuard {
    pub fn enter(gauge: &IntGauge) -> GaugeGuard {
        gauge.inc();
        GaugeGuard(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
