//! One version directory turned into a checked, warm, ready-to-serve [`Bundle`].
//!
//! Loading runs every step `modeld validate` reports, in order: verify the manifest, parse the
//! schema and config, open the model, check the schema's width against the model's, replay the
//! golden rows, warm every session. A bundle value only exists if all of them passed, so the
//! registry can never publish a half-checked version.

pub mod config;
pub mod golden;
pub mod manifest;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

pub use config::{BundleConfig, Kind};

use crate::{
    config::DriftConfig,
    engine::{Engine, EngineError, EngineOptions},
    preprocess::{self, Input, RowError, RowView},
    schema::{Bin, Schema, SchemaError},
    telemetry::{
        SeriesCache,
        drift::{Baseline, Drift, ScoreKind},
    },
};

/// Why a bundle cannot be served. Every variant names the file or step and the reason.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle directory {path}: {source}")]
    Directory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("MANIFEST.sha256: {0}")]
    Manifest(#[from] manifest::ManifestError),
    #[error("{file} is not UTF-8")]
    Encoding { file: &'static str },
    #[error("feature_schema.yaml: {0}")]
    Schema(#[from] SchemaError),
    #[error("config.yaml: {0}")]
    Config(#[from] config::ConfigError),
    #[error("evaluation.json: {0}")]
    Evaluation(#[source] serde_json::Error),
    #[error("evaluation.json: score_baseline: {0}")]
    Baseline(String),
    #[error("version.txt is empty")]
    EmptyVersion,
    #[error("model.onnx: {0}")]
    Engine(#[from] EngineError),
    #[error("config.yaml: a scorecard needs {0}")]
    Scorecard(&'static str),
    #[error("feature_schema.yaml declares {schema} columns but model.onnx takes {model}")]
    Width { schema: usize, model: usize },
    #[error("golden.jsonl: {0}")]
    GoldenParse(#[from] golden::GoldenParseError),
    #[error("golden.jsonl has no rows: a bundle must prove its outputs")]
    GoldenEmpty,
    #[error("golden.jsonl line {line}: preprocessing failed: {source}")]
    GoldenRow {
        line: usize,
        #[source]
        source: RowError,
    },
    #[error("golden.jsonl line {line} (row_id `{row_id}`): {reason}")]
    GoldenMismatch { line: usize, row_id: String, reason: String },
}

/// How bundles are loaded.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    pub engine: EngineOptions,
    /// Largest absolute difference allowed between served and golden probabilities.
    pub tolerance: f32,
    /// The score drift window of the bundle's [`Drift`].
    pub drift: DriftConfig,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { engine: EngineOptions::default(), tolerance: golden::TOLERANCE, drift: DriftConfig::default() }
    }
}

/// A loaded, verified model version. Immutable; shared as `Arc<Bundle>`.
#[derive(Debug)]
pub struct Bundle {
    /// From version.txt: what callers see.
    pub version: String,
    /// Canonical path of the version directory.
    pub path: PathBuf,
    /// sha256 of MANIFEST.sha256: with `path`, the bundle's identity.
    pub manifest_sha256: String,
    pub loaded_at: SystemTime,
    pub schema: Schema,
    pub config: BundleConfig,
    /// evaluation.json verbatim, and its numeric `metrics`.
    pub evaluation_json: String,
    pub evaluation: BTreeMap<String, f64>,
    /// Input-quality counters and the score distribution of the rows this version scores.
    pub drift: Arc<Drift>,
    /// This version's per-call metric series, resolved once.
    pub series: SeriesCache,
    engine: Engine,
}

/// One finished load step, for `modeld validate` and load logs.
#[derive(Debug, Clone)]
pub struct Step {
    pub name: &'static str,
    pub took: Duration,
    pub detail: String,
}

/// One row's served outputs.
#[derive(Debug, Clone, Copy)]
pub struct Scored<'a> {
    /// Classifiers: index of the served class in [`Bundle::class_labels`]; 0 for regressors.
    pub class: usize,
    /// Classifiers: the served class name; empty for regressors.
    pub label: &'a str,
    /// Classifiers: one probability per class; empty for regressors.
    pub probabilities: &'a [f32],
    /// Regressors: one value per target; empty for classifiers.
    pub values: &'a [f32],
    /// Scorecards: the row's score and bins.
    pub card: Option<Card<'a>>,
}

/// A scorecard row: its score, and what its reason codes are read from.
#[derive(Debug, Clone, Copy)]
pub struct Card<'a> {
    pub score: f64,
    /// The bin of each binned field, in the schema's `binned()` order.
    bins: &'a [Bin],
    schema: &'a Schema,
}

/// A field that cost the row points: what an adverse-action notice names.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ReasonCode {
    pub field: String,
    /// The label of the bin the row's value fell into.
    pub bin: String,
    pub points: f64,
    /// The most points a bin of this field gives.
    pub best_points: f64,
}

impl Card<'_> {
    /// Up to `n` reason codes: the fields ranked by points lost against the field's best bin,
    /// largest loss first, ties in schema order; fields that lost nothing are left out.
    pub fn reasons(&self, n: usize) -> Vec<ReasonCode> {
        if n == 0 {
            return Vec::new();
        }
        let mut lost: Vec<(f64, usize)> = Vec::with_capacity(self.bins.len());
        for (k, (&field, &b)) in self.schema.binned().iter().zip(self.bins).enumerate() {
            let table = self.schema.bins(field).expect("binned() lists binned fields");
            let loss = table.best_points() - table.points(b).unwrap_or(0.0);
            if loss > 0.0 {
                lost.push((loss, k));
            }
        }
        // Stable: equal losses keep schema order.
        lost.sort_by(|a, b| b.0.total_cmp(&a.0));
        lost.truncate(n);
        lost.into_iter()
            .map(|(_, k)| {
                let field = self.schema.binned()[k];
                let table = self.schema.bins(field).expect("binned() lists binned fields");
                let b = self.bins[k];
                ReasonCode {
                    field: self.schema.fields()[field].name.to_string(),
                    bin: table.label(b).to_owned(),
                    points: table.points(b).unwrap_or(0.0),
                    best_points: table.best_points(),
                }
            })
            .collect()
    }
}

/// One row's answer, owned: what the core returns and what a shadow version's run compares.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Classifiers: index of the served class in the bundle's `class_labels`.
    pub class: Option<usize>,
    /// Classifiers: one probability per class, in `class_labels` order.
    pub probabilities: Vec<f32>,
    /// Regressors: one value per target.
    pub values: Vec<f64>,
    /// Scorecards: the row's points.
    pub score: Option<f64>,
    /// Scorecards, when asked for: the fields that cost the most points, worst first.
    pub reasons: Vec<ReasonCode>,
}

impl Prediction {
    /// The owned form of a scored row, without reason codes; the row index is ignored (the
    /// shape [`Bundle::score`]'s `emit` takes).
    pub fn from_scored(_: usize, scored: Scored<'_>) -> Prediction {
        Prediction::with_reasons(scored, 0)
    }

    /// The owned form of a scored row with up to `reasons` reason codes (scorecards).
    pub fn with_reasons(scored: Scored<'_>, reasons: usize) -> Prediction {
        let (score, reasons) = match scored.card {
            Some(card) => (Some(card.score), card.reasons(reasons)),
            None => (None, Vec::new()),
        };
        if scored.values.is_empty() {
            Prediction {
                class: Some(scored.class),
                probabilities: scored.probabilities.to_vec(),
                values: Vec::new(),
                score,
                reasons,
            }
        } else {
            Prediction {
                class: None,
                probabilities: Vec::new(),
                values: scored.values.iter().map(|v| f64::from(*v)).collect(),
                score,
                reasons,
            }
        }
    }

    /// The one number a comparison of two versions looks at (not a scorecard's `score`):
    /// P(class 1) for a binary classifier, the served class's probability for a multiclass one,
    /// the first value for a regressor.
    pub fn compared_score(&self) -> f64 {
        match (self.class, self.probabilities.len()) {
            (Some(_), 2) => f64::from(self.probabilities[1]),
            (Some(c), _) => self.probabilities.get(c).copied().map_or(f64::NAN, f64::from),
            (None, _) => self.values.first().copied().unwrap_or(f64::NAN),
        }
    }

    /// The score drift is watched on: a scorecard's points, else [`Prediction::compared_score`]
    /// (what the export's `score_baseline` describes for each kind).
    pub fn drift_score(&self, kind: Kind) -> Option<f64> {
        let score = match (kind, self.score) {
            (Kind::Scorecard, Some(points)) => points,
            _ => self.compared_score(),
        };
        score.is_finite().then_some(score)
    }
}

impl Bundle {
    /// Loads and checks the version directory `dir`.
    pub fn load(dir: &Path, options: &LoadOptions) -> Result<Bundle, BundleError> {
        Bundle::load_reporting(dir, options, &mut |_| {})
    }

    /// [`Bundle::load`], calling `report` after each step that passed.
    pub fn load_reporting(
        dir: &Path,
        options: &LoadOptions,
        report: &mut dyn FnMut(Step),
    ) -> Result<Bundle, BundleError> {
        let mut timer = Instant::now();
        let mut done = |name, detail: String| {
            report(Step { name, took: timer.elapsed(), detail });
            timer = Instant::now();
        };

        let path = dir.canonicalize().map_err(|source| BundleError::Directory { path: dir.to_owned(), source })?;
        let verified = manifest::verify(&path)?;
        done(
            "manifest",
            format!("{} files verified, manifest sha256 {}", verified.files.len(), verified.manifest_sha256),
        );
        let file = |name: &'static str| -> Result<&str, BundleError> {
            std::str::from_utf8(&verified.files[name]).map_err(|_| BundleError::Encoding { file: name })
        };

        let schema = Schema::parse(file("feature_schema.yaml")?)?;
        done("schema", format!("{} fields -> {} columns", schema.fields().len(), schema.width()));
        let config = BundleConfig::parse(file("config.yaml")?)?;
        let evaluation_json = file("evaluation.json")?.to_owned();
        let evaluation = metrics_of(&evaluation_json)?;
        let version = file("version.txt")?.trim().to_owned();
        if version.is_empty() {
            return Err(BundleError::EmptyVersion);
        }
        let baseline = baseline_of(&evaluation_json, config.kind)?;
        match config.kind {
            Kind::Classifier => done("config", format!("version {version}, classes {:?}", config.class_labels)),
            Kind::Regressor => done("config", format!("version {version}, regressor")),
            Kind::Scorecard => {
                if schema.binned().is_empty() {
                    return Err(BundleError::Scorecard("binned fields in feature_schema.yaml"));
                }
                if schema.binned().iter().any(|&f| !schema.bins(f).is_some_and(|b| b.has_points())) {
                    return Err(BundleError::Scorecard("points on every binned field's bins"));
                }
                let fields = schema.binned().len();
                done("config", format!("version {version}, scorecard over {fields} binned fields"));
            }
        }

        let engine = Engine::load(
            &path.join("model.onnx"),
            &verified.files["model.onnx"],
            config.output_name(),
            schema.inputs(),
            options.engine,
        )?;
        if schema.inputs().is_empty() && engine.width() != schema.width() {
            return Err(BundleError::Width { schema: schema.width(), model: engine.width() });
        }
        let inputs = match schema.inputs().len() {
            0 => format!("{} input columns", engine.width()),
            n => format!("{n} raw inputs"),
        };
        done("model", format!("{inputs}, {} session(s)", engine.sessions()));
        done("evaluator", engine.evaluator().to_owned());

        let golden = golden::parse(file("golden.jsonl")?)?;
        let kind = if config.kind == Kind::Classifier { ScoreKind::Probability } else { ScoreKind::Value };
        let fields = schema.fields().iter().map(|f| &*f.name);
        let drift = Arc::new(Drift::new(&version, fields, kind, baseline, options.drift));
        let bundle = Bundle {
            drift,
            version,
            path,
            manifest_sha256: verified.manifest_sha256,
            loaded_at: SystemTime::now(),
            schema,
            config,
            evaluation_json,
            evaluation,
            series: SeriesCache::default(),
            engine,
        };
        let input = bundle.replay_golden(&golden, options.tolerance)?;
        done("golden", format!("{} rows match within {:e}", golden.len(), options.tolerance));
        bundle.engine.warm_up(input.rows, &input.data, &input.columns)?;
        let warmed = if bundle.engine.is_native() { "the native evaluator" } else { "every session" };
        done("warm-up", format!("{warmed} ran the golden batch"));
        Ok(bundle)
    }

    fn replay_golden(&self, golden: &[golden::GoldenRow], tolerance: f32) -> Result<Input, BundleError> {
        if golden.is_empty() {
            return Err(BundleError::GoldenEmpty);
        }
        let rows: Vec<_> = golden.iter().map(|g| g.row.clone()).collect();
        // Not traffic: the golden rows count in no drift signal.
        let input = preprocess::encode(&self.schema, &rows, None)
            .map_err(|e| BundleError::GoldenRow { line: golden[e.row_index].line, source: e })?;
        let mismatch = self.score(&input, |i, scored| {
            let g = &golden[i];
            let values: Vec<f64> = scored.values.iter().map(|v| f64::from(*v)).collect();
            let score = scored.card.map(|c| c.score);
            g.mismatch(scored.label, scored.probabilities, &values, score, tolerance)
                .map(|reason| (g.line, g.row.row_id.clone(), reason))
        })?;
        match mismatch.into_iter().flatten().next() {
            Some((line, row_id, reason)) => Err(BundleError::GoldenMismatch { line, row_id, reason }),
            None => Ok(input),
        }
    }

    /// What computes this version's scores: "native tree ensemble, ..." when its graph is one
    /// the native evaluators cover and they agree with ONNX Runtime, else "ONNX Runtime (why)".
    pub fn evaluator(&self) -> &str {
        self.engine.evaluator()
    }

    /// Encodes rows per the schema; the first bad row is the error. Defaults, unknown
    /// categories and the rejection count in the version's drift signals.
    pub fn prepare<R: RowView>(&self, rows: &[R]) -> Result<Input, RowError> {
        preprocess::encode(&self.schema, rows, Some(&self.drift))
    }

    /// [`Bundle::prepare`] row by row: one result per row (streams, shadow scoring).
    pub fn prepare_each<R: RowView>(&self, rows: &[R]) -> (Input, Vec<Result<usize, RowError>>) {
        preprocess::encode_each(&self.schema, rows, Some(&self.drift))
    }

    /// Counts answered rows' scores in the version's score histogram and PSI window.
    pub fn observe<'p>(&self, predictions: impl IntoIterator<Item = &'p Prediction>) {
        let kind = self.config.kind;
        self.drift.scores(predictions.into_iter().filter_map(|p| p.drift_score(kind)));
    }

    /// Runs the model on `input` and calls `emit(row index, outputs)` for each row, collecting
    /// what it returns. Outputs are borrowed from the run: nothing is copied on the way.
    pub fn score<T>(&self, input: &Input, mut emit: impl FnMut(usize, Scored<'_>) -> T) -> Result<Vec<T>, EngineError> {
        if input.rows == 0 {
            return Ok(Vec::new());
        }
        let classes = &self.config.class_labels;
        let threshold = self.config.decision_threshold;
        let kind = self.config.kind;
        self.engine.run(input.rows, &input.data, &input.columns, |out| {
            let output_error =
                |reason: String| EngineError::Output { name: self.config.output_name().to_owned(), reason };
            let mut results = Vec::with_capacity(input.rows);
            if kind == Kind::Regressor {
                for (i, values) in out.data.chunks_exact(out.width).enumerate() {
                    results.push(emit(i, Scored { class: 0, label: "", probabilities: &[], values, card: None }));
                }
                return Ok(results);
            }
            // A binary model may emit only P(class 1): widen it to both classes.
            let widened: Vec<f32>;
            let probabilities = match (out.width, classes.len()) {
                (w, c) if w == c => out.data,
                (1, 2) => {
                    widened = out.data.iter().flat_map(|p| [1.0 - p, *p]).collect();
                    &widened
                }
                (w, c) => return Err(output_error(format!("{w} columns, config.yaml names {c} classes"))),
            };
            for (i, probabilities) in probabilities.chunks_exact(classes.len()).enumerate() {
                let class = match threshold {
                    Some(t) => usize::from(probabilities[1] >= t),
                    None => argmax(probabilities),
                };
                let card = (kind == Kind::Scorecard).then(|| self.card(&input.bins, i));
                results.push(emit(i, Scored { class, label: &classes[class], probabilities, values: &[], card }));
            }
            Ok(results)
        })?
    }

    /// Row `i`'s scorecard: base points plus the points of its bins, summed in f64.
    fn card<'a>(&'a self, bins: &'a [Bin], i: usize) -> Card<'a> {
        let per_row = self.schema.binned().len();
        let bins = &bins[i * per_row..(i + 1) * per_row];
        let mut score = self.config.base_points;
        for (&field, &b) in self.schema.binned().iter().zip(bins) {
            score += self.schema.bins(field).and_then(|t| t.points(b)).unwrap_or(0.0);
        }
        Card { score, bins, schema: &self.schema }
    }

    /// True when this bundle was loaded from exactly the candidate `identity` describes.
    pub fn is(&self, identity: &manifest::Identity) -> bool {
        self.path == identity.path && identity.manifest_sha256.as_deref() == Some(self.manifest_sha256.as_str())
    }

    /// Class names in probability order.
    pub fn class_labels(&self) -> &[String] {
        &self.config.class_labels
    }
}

/// Index of the largest probability; the first one on a tie, as numpy's argmax.
fn argmax(p: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in p.iter().enumerate().skip(1) {
        if *x > p[best] {
            best = i;
        }
    }
    best
}

/// The numeric entries of evaluation.json's `metrics` object (absent: none).
/// The `score_baseline` of evaluation.json, checked against the score the daemon observes for
/// the bundle's kind; None when the export wrote none.
fn baseline_of(json: &str, kind: Kind) -> Result<Option<Baseline>, BundleError> {
    #[derive(serde::Deserialize)]
    struct File {
        score_baseline: Option<Spec>,
    }
    #[derive(serde::Deserialize)]
    struct Spec {
        score: String,
        edges: Vec<f64>,
        counts: Vec<u64>,
    }
    let Some(spec) = serde_json::from_str::<File>(json).map_err(BundleError::Evaluation)?.score_baseline else {
        return Ok(None);
    };
    let points = spec.score.starts_with("points");
    if points != (kind == Kind::Scorecard) {
        let wanted = if kind == Kind::Scorecard { "a scorecard's points" } else { "the model's output" };
        return Err(BundleError::Baseline(format!("describes `{}`, but modeld observes {wanted}", spec.score)));
    }
    Baseline::new(spec.edges, spec.counts).map(Some).map_err(BundleError::Baseline)
}

fn metrics_of(json: &str) -> Result<BTreeMap<String, f64>, BundleError> {
    let value: serde_json::Value = serde_json::from_str(json).map_err(BundleError::Evaluation)?;
    Ok(value
        .get("metrics")
        .and_then(|m| m.as_object())
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_f64()?))).collect())
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::argmax;

    #[test]
    fn argmax_takes_the_first_of_equal_probabilities() {
        assert_eq!(argmax(&[0.2, 0.5, 0.3]), 1);
        assert_eq!(argmax(&[0.5, 0.5]), 0);
        assert_eq!(argmax(&[0.25, 0.25, 0.5]), 2);
    }
}
