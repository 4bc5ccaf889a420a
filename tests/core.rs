//! The prediction core on its own, with no wire format in sight: rows as owned name/value
//! pairs, errors as kinds, metrics recorded by the core itself. Every face relies on this.

mod common;

use std::time::{Duration, Instant};

use common::*;
use modeld::{
    bundle::LoadOptions,
    config,
    engine::{self, EngineOptions},
    predict::{CallContext, ErrorKind, Limits, Method, PredictError, Predictor, Request},
    preprocess::OwnedRow,
    registry::{Registry, RegistryError, RegistryOptions},
    runner::{Runner, RunnerLimits},
    schema::OwnedValue,
    telemetry::Metrics,
};

const LIMITS: Limits = Limits { max_rows: 100, max_batch_rows: 16, max_streams: 1 };

/// A core over `root` with the live bundle of every task loaded (where one loads).
async fn core(root: &std::path::Path, tasks: &[&str]) -> (Predictor, Metrics, Registry) {
    engine::init(&config::default_ort_library()).expect("ONNX Runtime library");
    let metrics = Metrics::new();
    let options = RegistryOptions {
        load: LoadOptions {
            engine: EngineOptions { sessions: 2, ..EngineOptions::default() },
            ..LoadOptions::default()
        },
        ..RegistryOptions::default()
    };
    let tasks: Vec<String> = tasks.iter().map(|t| t.to_string()).collect();
    let registry = Registry::new(root.to_owned(), &tasks, options, metrics.clone());
    for task in &tasks {
        registry.reload(task, true).await;
    }
    let limits = RunnerLimits { threads: 2, max_queued: 16, inline_max_rows: 16, bulk_threads: 1 };
    let runner = Runner::new(limits, metrics.clone());
    (Predictor::new(registry.clone(), runner, metrics.clone(), LIMITS), metrics, registry)
}

fn request<'a>(task: &'a str, rows: &'a [OwnedRow]) -> Request<'a, OwnedRow> {
    Request { task, rows, request_id: "", version: None, compare_versions: &[], reason_codes: 0 }
}

fn count(metrics: &Metrics, labels: &[(&str, &str)]) -> f64 {
    metric_value(&metrics.render(), "modeld_requests_total", labels).unwrap_or(0.0)
}

#[tokio::test]
async fn owned_rows_score_like_training_and_the_call_is_counted_once() {
    let root = model_root(Some("v2"));
    let (core, metrics, _) = core(root.path(), &[TASK]).await;
    let golden = golden("v2");
    let rows: Vec<OwnedRow> = golden.iter().take(LIMITS.max_rows).map(|g| g.row.clone()).collect();
    let answer = core.predict(&CallContext::new(Method::Predict), request(TASK, &rows)).await.unwrap();
    assert_eq!(answer.bundle.version, "v2");
    assert_eq!(answer.predictions.len(), rows.len());
    for (p, g) in answer.predictions.iter().zip(&golden) {
        assert_eq!(answer.bundle.class_labels()[p.class.expect("a classifier")], g.label, "line {}", g.line);
        assert_close(&p.probabilities, &g.probabilities, &format!("line {}", g.line));
    }
    let ok = [("task", TASK), ("version", "v2"), ("method", "Predict"), ("code", "OK")];
    assert_eq!(count(&metrics, &ok), 1.0);
    let text = metrics.render();
    assert_eq!(metric_value(&text, "modeld_rows_total", &[("task", TASK)]), Some(rows.len() as f64));
    assert_eq!(metric_value(&text, "modeld_requests_in_flight", &[("method", "Predict")]), Some(0.0));
}

#[tokio::test]
async fn every_failure_has_a_kind_and_is_counted_under_its_code() {
    let root = model_root(Some("v2"));
    std::fs::create_dir(root.path().join("fraud")).unwrap(); // a task with no `current` yet
    let (core, metrics, _) = core(root.path(), &[TASK, "fraud"]).await;
    let good = vec![golden("v2")[0].row.clone()];
    let predict = |task: &'static str, rows: Vec<OwnedRow>, ctx: CallContext| {
        let core = core.clone();
        async move { core.predict(&ctx, request(task, &rows)).await.unwrap_err() }
    };
    let now = || CallContext::new(Method::Predict);

    let e = predict("", good.clone(), now()).await;
    assert!(matches!(e, PredictError::MissingTask) && e.kind() == ErrorKind::InvalidArgument, "{e}");
    let e = predict(TASK, Vec::new(), now()).await;
    assert!(matches!(e, PredictError::NoRows), "{e}");
    let e = predict(TASK, vec![good[0].clone(); LIMITS.max_rows + 1], now()).await;
    assert!(matches!(e, PredictError::TooManyRows { rows: 101, limit: 100, .. }), "{e}");
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);

    let mut bad = good[0].clone();
    bad.row_id = "applicant-7".into();
    bad.features.retain(|(name, _)| name != "age_in_years");
    let e = predict(TASK, vec![good[0].clone(), bad], now()).await;
    match &e {
        PredictError::BadRow(row) => assert_eq!((row.row_index, row.field.as_str()), (1, "age_in_years")),
        other => panic!("expected a bad row, got {other}"),
    }

    let e = predict("nope", good.clone(), now()).await;
    assert!(matches!(e, PredictError::Registry(RegistryError::UnknownTask(_))), "{e}");
    assert_eq!(e.kind(), ErrorKind::NotFound);
    let e = predict("fraud", good.clone(), now()).await;
    match &e {
        PredictError::Registry(RegistryError::NotReady { task, last_error }) => {
            assert_eq!(task, "fraud");
            assert!(last_error.is_some(), "the missing link is the reason");
        }
        other => panic!("expected not ready, got {other}"),
    }
    assert_eq!(e.kind(), ErrorKind::Unavailable);

    // A deadline that passed before the model ran: the call is dropped, not scored.
    let mut late = now();
    late.deadline = Some(Instant::now() - Duration::from_millis(1));
    let e = predict(TASK, good.clone(), late).await;
    assert!(matches!(e, PredictError::Deadline) && e.kind() == ErrorKind::DeadlineExceeded, "{e}");

    let code = |task: &str, code: &str| count(&metrics, &[("task", task), ("method", "Predict"), ("code", code)]);
    assert_eq!(code(TASK, "INVALID_ARGUMENT"), 3.0, "no rows, too many rows, bad row");
    assert_eq!(code("-", "INVALID_ARGUMENT"), 1.0, "no task: callers' names never become labels");
    assert_eq!(code("-", "NOT_FOUND"), 1.0);
    assert_eq!(code("fraud", "UNAVAILABLE"), 1.0);
    assert_eq!(code(TASK, "DEADLINE_EXCEEDED"), 1.0);
    assert_eq!(metric_value(&metrics.render(), "modeld_rows_total", &[("task", TASK)]), None, "nothing was scored");
}

#[tokio::test]
async fn a_stream_keeps_its_snapshot_scores_good_rows_and_holds_a_slot() {
    let root = model_root(Some("v2"));
    let (core, metrics, registry) = core(root.path(), &[TASK]).await;
    let mut session = core.open_stream(CallContext::new(Method::BatchPredict)).unwrap();
    let e = core.open_stream(CallContext::new(Method::BatchPredict)).err().expect("one stream at a time");
    assert!(matches!(e, PredictError::TooManyStreams { limit: 1 }) && e.kind() == ErrorKind::ResourceExhausted);

    assert!(matches!(session.bind("", "", 0), Err(PredictError::MissingStreamTask)));
    session.bind(TASK, "", 0).unwrap();
    // More rows than one model run takes, with one bad row in the second run.
    let mut rows: Vec<OwnedRow> = golden("v2").iter().take(40).map(|g| g.row.clone()).collect();
    rows[20].features.push(("age_in_years".into(), OwnedValue::Text("old".into())));
    let answer = session.score_chunk(&rows).await.unwrap();
    assert_eq!((answer.bundle.version.as_str(), answer.outcomes.len()), ("v2", 40));
    let bad = answer.outcomes[20].as_ref().unwrap_err();
    assert_eq!((bad.row_index, bad.field.as_str()), (20, "age_in_years"));
    assert_eq!(answer.outcomes.iter().filter(|o| o.is_ok()).count(), 39);

    // A swap does not move an open stream.
    point_current(root.path(), "v1");
    registry.reload(TASK, false).await;
    assert_eq!(registry.get(TASK).unwrap().version, "v1");
    assert!(matches!(session.bind("other", "", 0), Err(PredictError::TaskChanged { .. })));
    session.bind("", "", 0).unwrap();
    assert_eq!(session.score_chunk(&rows[..1]).await.unwrap().bundle.version, "v2");
    session.finish(Ok(()));

    core.open_stream(CallContext::new(Method::BatchPredict)).expect("the slot is free again").finish(Ok(()));
    let text = metrics.render();
    let ok = [("task", TASK), ("method", "BatchPredict"), ("code", "OK")];
    assert_eq!(metric_value(&text, "modeld_requests_total", &ok), Some(1.0));
    let refused = [("task", "-"), ("method", "BatchPredict"), ("code", "RESOURCE_EXHAUSTED")];
    assert_eq!(metric_value(&text, "modeld_requests_total", &refused), Some(1.0));
    assert_eq!(metric_value(&text, "modeld_stream_row_errors_total", &[("task", TASK)]), Some(1.0));
    assert_eq!(
        metric_value(&text, "modeld_rows_total", &[("task", TASK)]),
        Some(40.0),
        "39 rows, then 1 after the swap"
    );
    assert_eq!(metric_value(&text, "modeld_streams_open", &[]), Some(0.0));
}

/// One-row runs reuse an input and an output tensor per session (or the native evaluator's
/// stack buffer): for every shipped model, a row scored alone gets what it gets inside a batch
/// (to the last bits, where the runtime picks a different kernel for one row), whatever row ran
/// before it; with native evaluation on and off.
#[test]
fn a_row_alone_scores_as_in_a_batch() {
    engine::init(&config::default_ort_library()).expect("ONNX Runtime library");
    let shipped = [("credit_risk", "v1"), ("credit_risk", "v2"), ("credit_scorecard", "v1")];
    for ((task, version), native) in shipped.into_iter().flat_map(|m| [(m, true), (m, false)]) {
        let dir = repo_models().join(task).join(version);
        let mut options = LoadOptions::default();
        options.engine.native = native;
        let bundle = modeld::bundle::Bundle::load(&dir, &options).unwrap();
        let text = std::fs::read_to_string(dir.join("golden.jsonl")).unwrap();
        let rows: Vec<OwnedRow> =
            modeld::bundle::golden::parse(&text).unwrap().into_iter().map(|g| g.row).take(40).collect();
        let scores = |rows: &[OwnedRow]| {
            let input = bundle.prepare(rows).unwrap();
            bundle.score(&input, |_, s| (s.probabilities.to_vec(), s.values.to_vec())).unwrap()
        };
        let together = scores(&rows);
        // Forwards, then backwards: each row follows a different one each time.
        for i in (0..rows.len()).chain((0..rows.len()).rev()) {
            let alone = scores(std::slice::from_ref(&rows[i]));
            assert_eq!(alone.len(), 1, "{task} {version}, row {i}");
            let (a, t) = (&alone[0], &together[i]);
            assert!(a.0.len() == t.0.len() && a.1.len() == t.1.len(), "{task} {version}, row {i}");
            let pairs = a.0.iter().zip(&t.0).chain(a.1.iter().zip(&t.1));
            for (x, y) in pairs {
                assert!((x - y).abs() <= 1e-6, "{task} {version}, row {i}: alone {a:?}, in a batch {t:?}");
            }
        }
    }
}

/// The shipped models (a tree ensemble, a logistic regression, a scorecard) are evaluated
/// natively, and every golden row gets the same label and, within 1e-5, the same scores as from
/// ONNX Runtime itself; `native: false` leaves them to the runtime.
#[test]
fn native_evaluation_answers_as_onnx_runtime_does() {
    engine::init(&config::default_ort_library()).expect("ONNX Runtime library");
    for (task, version) in [("credit_risk", "v1"), ("credit_risk", "v2"), ("credit_scorecard", "v1")] {
        let dir = repo_models().join(task).join(version);
        let load = |native: bool| {
            let mut options = LoadOptions::default();
            options.engine.native = native;
            modeld::bundle::Bundle::load(&dir, &options).unwrap()
        };
        let (native, runtime) = (load(true), load(false));
        let evaluator = native.evaluator();
        assert!(evaluator.starts_with("native ") && evaluator.contains("agrees with ONNX Runtime"), "{evaluator}");
        assert!(runtime.evaluator().starts_with("ONNX Runtime"), "{}", runtime.evaluator());
        let text = std::fs::read_to_string(dir.join("golden.jsonl")).unwrap();
        let rows: Vec<OwnedRow> = modeld::bundle::golden::parse(&text).unwrap().into_iter().map(|g| g.row).collect();
        let scores = |bundle: &modeld::bundle::Bundle| {
            let input = bundle.prepare(&rows).unwrap();
            bundle.score(&input, |_, s| (s.label.to_owned(), s.probabilities.to_vec())).unwrap()
        };
        let (ours, theirs) = (scores(&native), scores(&runtime));
        assert_eq!(ours.len(), rows.len());
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert_eq!(a.0, b.0, "{task} {version}, row {i}");
            assert!(a.1.len() == 2 && b.1.len() == 2, "{task} {version}, row {i}");
            for (x, y) in a.1.iter().zip(&b.1) {
                assert!((x - y).abs() <= 1e-5, "{task} {version}, row {i}: native {a:?}, runtime {b:?}");
            }
        }
    }
}
