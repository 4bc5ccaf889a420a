//! The wired application: [`App::build`] makes every part (runtime library, metrics, registry,
//! runner, the prediction core, the faces); [`App::run`] serves them on listeners it is given
//! until a shutdown future resolves, then drains in three steps under a deadline.
//!
//! Listeners and the shutdown future are arguments: production binds the configured addresses
//! and passes the signal future; tests bind `127.0.0.1:0` and pass a oneshot.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic_health::{
    pb::health_server::HealthServer,
    server::{HealthReporter, HealthService},
};

use crate::{
    access::Access,
    bundle::LoadOptions,
    config::AuditConfig,
    config::Config,
    engine::{self, EngineOptions},
    pb,
    predict::{Auditor, FeatureSelection, Limits, Predictor},
    registry::{
        Registry, RegistryOptions, ReloadError, ReloadOutcome,
        watch::{self, Reload, ReloadTiming},
    },
    rollout::{Diffs, ShadowQueue},
    runner::{BulkRuntime, Runner, RunnerLimits},
    service::{
        admin, conn,
        grpc::InferenceService,
        health::Readiness,
        http,
        kserve::{self, grpc::V2Service},
        layers::{self, CallTracker},
        tls::{self, HttpListener, TlsSource},
    },
    shutdown,
    telemetry::{
        Metrics,
        audit::{AuditWriter, WriterOptions},
        trace::Tracer,
    },
};

/// How long connections get after the last call is answered to flush and close.
const CONNECTION_LINGER: Duration = Duration::from_millis(500);

/// Why the application could not start or failed while running.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Engine(#[from] engine::EngineError),
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("task `{task}` has no usable bundle at start-up: {error}")]
    NoBundle {
        task: String,
        #[source]
        error: Arc<ReloadError>,
    },
    #[error("cannot start the bulk runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("audit log: {0}")]
    Audit(String),
    #[error("traces: {0}")]
    Traces(#[from] crate::telemetry::trace::TraceError),
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Callers(#[from] crate::access::CallersError),
    #[error("server task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// The bound listeners: gRPC, admin, and HTTP/JSON unless it is turned off.
pub struct Listeners {
    pub grpc: TcpListener,
    pub admin: TcpListener,
    pub http: Option<TcpListener>,
}

impl Listeners {
    /// Binds the configured addresses.
    pub async fn bind(config: &Config) -> Result<Listeners, AppError> {
        let bind =
            |addr| async move { TcpListener::bind(addr).await.map_err(|source| AppError::Bind { addr, source }) };
        let http = if config.http_enabled { Some(bind(config.http_addr).await?) } else { None };
        Ok(Listeners { grpc: bind(config.grpc_addr).await?, admin: bind(config.admin_addr).await?, http })
    }

    /// The addresses actually bound (port 0 resolved).
    pub fn local_addrs(&self) -> std::io::Result<(SocketAddr, SocketAddr)> {
        Ok((self.grpc.local_addr()?, self.admin.local_addr()?))
    }

    /// The HTTP/JSON face's address, if it is on.
    pub fn http_addr(&self) -> std::io::Result<Option<SocketAddr>> {
        self.http.as_ref().map(TcpListener::local_addr).transpose()
    }
}

/// Every part of a serving daemon, built and not yet running.
pub struct App {
    config: Config,
    metrics: Metrics,
    registry: Registry,
    readiness: Readiness,
    health_service: HealthServer<HealthService>,
    inference: InferenceService,
    v2: V2Service,
    predictor: Predictor,
    bulk: BulkRuntime,
    hangups: Option<tokio::signal::unix::Signal>,
    audit: Option<Arc<AuditWriter>>,
    tls: ListenerTls,
    access: Access,
    shadow: ShadowQueue,
    tracer: Option<Tracer>,
}

/// TLS per listener, when on.
#[derive(Default, Clone)]
struct ListenerTls {
    grpc: Option<Arc<TlsSource>>,
    http: Option<Arc<TlsSource>>,
    admin: Option<Arc<TlsSource>>,
}

impl ListenerTls {
    fn is_on(&self) -> bool {
        self.grpc.is_some() || self.http.is_some() || self.admin.is_some()
    }

    fn reload(&self) {
        for source in [&self.grpc, &self.http, &self.admin].into_iter().flatten() {
            source.reload();
        }
    }
}

impl App {
    /// Builds the application. Bundles load in the background once it runs (health reports
    /// NOT_SERVING until every task has a live bundle), except with `require_bundles`, where a
    /// task without a usable bundle fails the build.
    pub async fn build(config: &Config) -> Result<App, AppError> {
        engine::init(&config.ort_library)?;
        let metrics = Metrics::new();
        metrics.set_build_info(&engine::runtime_version(&config.ort_library));
        metrics.init_tasks(&config.tasks, config.audit.is_some());
        let options = RegistryOptions {
            load: LoadOptions {
                engine: EngineOptions {
                    sessions: config.inference_threads,
                    intra_threads: 1,
                    native: config.native_models,
                },
                drift: config.drift,
                ..LoadOptions::default()
            },
            keep_versions: config.keep_versions.clone(),
            keep_recent: config.keep_recent,
            bundle: config.bundle_dir.clone(),
        };
        let registry = Registry::new(config.model_root.clone(), &config.tasks, options, metrics.clone());
        if config.require_bundles {
            for task in &config.tasks {
                if let ReloadOutcome::Failed(error) = registry.reload(task, true).await {
                    return Err(AppError::NoBundle { task: task.clone(), error });
                }
            }
        }
        let runner = Runner::new(
            RunnerLimits {
                threads: config.inference_threads,
                max_queued: config.max_queued_runs,
                inline_max_rows: config.inline_max_rows,
                bulk_threads: config.bulk_threads,
            },
            metrics.clone(),
        );
        let limits = Limits {
            max_rows: config.max_rows,
            max_batch_rows: config.max_batch_rows,
            max_streams: config.max_streams,
        };
        let bulk = BulkRuntime::start(config.bulk_threads).map_err(AppError::Runtime)?;
        let diffs = Arc::new(Diffs::new(metrics.rollout.clone()));
        let shadow = ShadowQueue::new(runner.clone(), bulk.handle(), config.shadow_queue, config.shadow_budget, diffs);
        let mut predictor =
            Predictor::new(registry.clone(), runner, metrics.clone(), limits).with_shadow(shadow.clone());
        let access = match &config.callers_file {
            Some(path) => Access::from_file(path, metrics.access_reloads.clone())?,
            None => Access::open(),
        };
        predictor = predictor.with_access(access.clone());
        let mut tls = ListenerTls::default();
        if let Some(files) = &config.tls {
            tls.grpc = Some(TlsSource::load("grpc", files, tls::ALPN_GRPC, &metrics)?);
            tls.http = Some(TlsSource::load("http", files, tls::ALPN_HTTP, &metrics)?);
        }
        if let Some(files) = &config.admin_tls {
            tls.admin = Some(TlsSource::load("admin", files, tls::ALPN_HTTP, &metrics)?);
        }
        let audit = match &config.audit {
            Some(audit) => {
                let (writer, auditor) = start_audit(audit, &metrics)?;
                predictor = predictor.audited(auditor);
                Some(writer)
            }
            None => None,
        };
        let tracer = match &config.traces {
            Some(traces) => {
                let tracer = Tracer::start(traces)?;
                tracing::info!(endpoint = %traces.endpoint, service = %traces.service_name, "exporting traces over OTLP");
                predictor = predictor.traced(tracer.clone());
                Some(tracer)
            }
            None => None,
        };
        pb::limit_rows(config.max_rows);

        let reporter = HealthReporter::new();
        let health_service = HealthServer::new(HealthService::from_health_reporter(reporter.clone()));
        let readiness = Readiness::new(registry.clone(), reporter).await;
        let inference = InferenceService::new(predictor.clone(), registry.clone(), readiness.clone(), bulk.handle());
        let v2 = V2Service::new(predictor.clone(), registry.clone(), readiness.clone());
        let hangups = shutdown::hangups();
        Ok(App {
            config: config.clone(),
            metrics,
            registry,
            readiness,
            health_service,
            inference,
            v2,
            predictor,
            bulk,
            hangups,
            audit,
            tls,
            access,
            shadow,
            tracer,
        })
    }

    /// Serves until `shutdown` resolves, then drains within `shutdown_grace`.
    pub async fn run(self, listeners: Listeners, shutdown: impl Future<Output = ()>) -> Result<(), AppError> {
        let App {
            config,
            metrics,
            registry,
            readiness,
            health_service,
            inference,
            v2,
            predictor,
            bulk,
            hangups,
            audit,
            tls,
            access,
            shadow,
            tracer,
        } = self;
        let background = CancellationToken::new();
        let health_sync = readiness.spawn_sync(background.clone());
        let timing =
            ReloadTiming { poll: config.poll_interval, debounce: config.reload_debounce, events: config.watch_events };
        let (reload_tx, reload_loop) = watch::spawn(registry.clone(), timing, background.clone());
        let hangup = hangups.map(|signals| {
            tokio::spawn(shutdown::on_hangup(signals, background.clone(), move || {
                let _ = reload_tx.try_send(Reload);
            }))
        });

        // Reflection in both versions: v1 for current tools, v1alpha for the grpcurl releases
        // still packaged by distributions and PyPI.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(pb::v2::FILE_DESCRIPTOR_SET)
        };
        let (reflection_v1, reflection_v1alpha) = (reflection().build_v1()?, reflection().build_v1alpha()?);
        let inference = pb::inference_server::InferenceServer::new(inference)
            .max_decoding_message_size(config.max_message_bytes)
            .max_encoding_message_size(config.max_message_bytes);
        let v2 = pb::v2::grpc_inference_service_server::GrpcInferenceServiceServer::new(v2)
            .max_decoding_message_size(config.max_message_bytes)
            .max_encoding_message_size(config.max_message_bytes);

        let drain = CancellationToken::new();
        let tracker = CallTracker::default();
        let incoming = conn::Incoming::new(
            listeners.grpc,
            config.max_connections,
            config.handshake_timeout,
            &metrics,
            tls.grpc.clone(),
            config.max_connection_age.map(|age| age + config.max_connection_age_grace),
        );
        let reflection = config.reflection.then_some((reflection_v1, reflection_v1alpha));
        let (reflection_v1, reflection_v1alpha) = reflection.unzip();
        let mut grpc = tokio::spawn(
            layers::grpc_server(&config, &tracker, &metrics)
                .add_service(health_service)
                .add_optional_service(reflection_v1)
                .add_optional_service(reflection_v1alpha)
                .add_service(inference)
                .add_service(v2)
                .serve_with_incoming_shutdown(incoming, drain.clone().cancelled_owned()),
        );
        // Certificates and the callers file are reread on the bundle poll's interval.
        let credentials = (tls.is_on() || access.is_on()).then(|| {
            let (tls, access, stop) = (tls.clone(), access.clone(), background.clone());
            let every = config.poll_interval;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    let (tls, access) = (tls.clone(), access.clone());
                    let _ = tokio::task::spawn_blocking(move || {
                        tls.reload();
                        access.reload();
                    })
                    .await;
                }
            })
        });
        // The HTTP/JSON face stops taking connections with gRPC (step 2 below); its calls are
        // in the same tracker, so the drain waits for them too.
        let http = listeners.http.map(|listener| {
            let limits = http::HttpLimits {
                max_body_bytes: config.max_message_bytes,
                max_inflight_calls: config.max_inflight_calls,
                request_timeout: config.request_timeout,
                max_connection_age: config.max_connection_age,
            };
            let listener = HttpListener::new(listener, tls.http.clone());
            let face =
                http::Face::new(predictor, registry.clone(), readiness.clone(), tracker.clone(), &metrics, limits);
            let router = http::router(face.clone(), kserve::rest::router(face));
            tokio::spawn(
                axum::serve(listener, router.into_make_service_with_connect_info::<tls::ConnInfo>())
                    .with_graceful_shutdown(drain.clone().cancelled_owned())
                    .into_future(),
            )
        });
        let admin_stop = CancellationToken::new();
        let admin = tokio::spawn(
            axum::serve(
                HttpListener::new(listeners.admin, tls.admin.clone()),
                admin::router(registry, readiness.clone(), metrics, tracker.clone(), shadow.diffs().clone()),
            )
            .with_graceful_shutdown(admin_stop.clone().cancelled_owned())
            .into_future(),
        );
        tracing::info!(tasks = ?config.tasks, root = %config.model_root.display(), "serving; loading bundles");

        tokio::select! {
            _ = shutdown => {}
            // The gRPC server only ends on its own if it failed.
            result = &mut grpc => {
                background.cancel();
                admin_stop.cancel();
                drain.cancel();
                if let Some(writer) = audit {
                    let grace = config.shutdown_grace;
                    let _ = tokio::task::spawn_blocking(move || writer.close(grace)).await;
                }
                result??;
                return Ok(());
            }
        }

        // 1. Not serving: probes and load balancers stop sending new work.
        readiness.begin_drain().await;
        tracing::info!(grace_ms = config.shutdown_grace.as_millis() as u64, "draining in-flight calls");
        // 2. Stop accepting (GOAWAY); in-flight calls and streams finish within the grace period.
        //    Done when every call is answered: idle client connections may stay open after GOAWAY,
        //    so waiting for connections to close could use up the whole grace period for nothing.
        drain.cancel();
        let deadline = tokio::time::Instant::now() + config.shutdown_grace;
        let mut ended = None;
        let answered = tokio::time::timeout_at(deadline, async {
            tokio::select! {
                result = &mut grpc => ended = Some(result),
                _ = tracker.idle() => {}
            }
        })
        .await;
        match answered {
            Ok(()) => tracing::info!("drained: every in-flight call finished"),
            Err(_) => tracing::warn!(open_calls = tracker.open(), "grace period over: calls still running were cut"),
        }
        // Let connections flush their last frames and close, briefly; then cut what is left.
        if ended.is_none() {
            let linger = deadline.min(tokio::time::Instant::now() + CONNECTION_LINGER);
            ended = tokio::time::timeout_at(linger, &mut grpc).await.ok();
        }
        // 3. Stop the admin face and background tasks, bounded as well.
        admin_stop.cancel();
        background.cancel();
        let rest = async {
            let _ = admin.await;
            if let Some(http) = http {
                let _ = http.await;
            }
            let _ = reload_loop.await;
            if let Some(credentials) = credentials {
                let _ = credentials.await;
            }
            let _ = health_sync.await;
            if let Some(hangup) = hangup {
                let _ = hangup.await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), rest).await;
        // Shadow jobs of answered calls run (or are dropped and counted) before the bulk
        // runtime goes; a job not started within its budget is dropped anyway.
        if !shadow.drain(config.shadow_budget + Duration::from_secs(1)).await {
            tracing::warn!("shadow jobs still running at shutdown; their comparisons are lost");
        }
        drop(bulk);
        // 4. Every call is answered: write out every audit record accepted, bounded in case the
        //    writer is stuck on a pipe nobody reads.
        if let Some(writer) = audit {
            let grace = config.shutdown_grace;
            let closed = tokio::task::spawn_blocking(move || writer.close(grace)).await.unwrap_or(false);
            if !closed {
                tracing::error!(
                    grace_ms = grace.as_millis() as u64,
                    "audit writer still blocked; queued records not written"
                );
            }
        }
        // 5. Spans of the last calls go out, bounded: a collector that is down costs the
        //    export timeout at most.
        if let Some(tracer) = tracer {
            let _ = tokio::task::spawn_blocking(move || tracer.shutdown(Duration::from_secs(5))).await;
        }
        match ended {
            Some(result) => Ok(result??),
            None => {
                grpc.abort();
                Ok(())
            }
        }
    }
}

/// The audit writer and the core's recorder, from the audit settings.
fn start_audit(audit: &AuditConfig, metrics: &Metrics) -> Result<(Arc<AuditWriter>, Auditor), AppError> {
    let key = match &audit.hmac_key_file {
        Some(path) => {
            let key = std::fs::read(path)
                .map_err(|e| AppError::Audit(format!("cannot read the HMAC key file {}: {e}", path.display())))?;
            // A Secret written by hand often ends in a newline that is not part of the key.
            let key = key.trim_ascii_end().to_vec();
            if key.is_empty() {
                return Err(AppError::Audit(format!("the HMAC key file {} is empty", path.display())));
            }
            Some(key)
        }
        None => None,
    };
    let options = WriterOptions {
        target: audit.target.clone(),
        max_bytes: audit.max_bytes,
        keep_files: audit.keep_files,
        queue: audit.queue,
    };
    let writer = Arc::new(
        AuditWriter::start(options, metrics)
            .map_err(|e| AppError::Audit(format!("cannot start the writer thread: {e}")))?,
    );
    let features = match &audit.features {
        None => FeatureSelection::All,
        Some(names) => FeatureSelection::Only(names.iter().map(|n| n.as_str().into()).collect()),
    };
    let redact = audit.redact.iter().map(|n| n.as_str().into()).collect();
    let auditor = Auditor::new(writer.clone(), audit.sample, features, redact, key.as_deref());
    Ok((writer, auditor))
}

/// Builds the application and serves it on `listeners` until `shutdown` resolves.
pub async fn serve(config: &Config, listeners: Listeners, shutdown: impl Future<Output = ()>) -> Result<(), AppError> {
    App::build(config).await?.run(listeners, shutdown).await
}
