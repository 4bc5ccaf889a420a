//! Drift and input-quality signals, per loaded version: what the population being scored looks
//! like against the one the model was trained on.
//!
//! Each bundle owns one [`Drift`]: plain atomics that preprocessing and scoring bump (no lock,
//! no label lookup, no allocation on the request path), and that [`DriftSet`] turns into metric
//! families when `/metrics` is scraped:
//!
//! - `modeld_input_defaults_total{task,version,field}`: a missing field filled in by the schema
//!   (its default, its missing value or its missing bin);
//! - `modeld_input_unknown_categories_total{task,version,field}`: a category outside the
//!   vocabulary that the schema's policy accepted (fallback, ignore, unknown value or bin);
//! - `modeld_input_rejections_total{task,version,field,reason}`: rows refused, by field and
//!   reason (`field="-"` for a name outside the schema, so callers cannot grow the series);
//! - `modeld_prediction_score{task,version}`: a histogram of each scored row's score (P(class 1),
//!   the top-class probability, the first target's value, or a scorecard's points), with the
//!   baseline's edges as buckets;
//! - `modeld_score_psi{task,version}`: the population stability index of the recent window's
//!   scores against the bundle's `score_baseline`, and `modeld_score_window_rows`, the rows it
//!   rests on.
//!
//! The window is time-based: `window` split into [`SLICES`] slices, each a count per baseline
//! bin stamped with its slice number; a slice is zeroed when time comes round to it again. So
//! the PSI always describes the last `window` (give or take one slice) of traffic, whatever the
//! rate, without storing a single score, and a quiet service's PSI is not read off hours-old
//! rows. Below `min_rows` scored rows in the window no PSI is exported: with 20 bins, a few
//! hundred rows of an unchanged population already read as 0.05-0.1 by chance alone.
//! A slice being zeroed may lose the handful of rows another thread counts into it at the same
//! instant: a statistical signal can afford that; a lock on the scoring path cannot.

use std::{
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use prometheus::{
    core::{Collector, Desc},
    proto::{Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType},
};

use crate::config::DriftConfig;

/// Slices per PSI window.
pub const SLICES: usize = 10;

/// Why a row was refused, as the `reason` label names it.
pub const REASONS: [&str; 7] =
    ["missing", "wrong_type", "not_finite", "not_integer", "out_of_range", "unknown_category", "unknown_field"];

/// Proportions below this are raised to it before the PSI's logarithm: an empty bin on one side
/// would otherwise make the index infinite.
const FLOOR: f64 = 1e-4;

/// What a scored row's score is, per model kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoreKind {
    /// A classifier's probability (P(class 1) or the top class's): buckets on [0, 1].
    Probability,
    /// A regressor's value or a scorecard's points: buckets only from a baseline.
    Value,
}

/// The training sample's score distribution: `counts[i]` scores fell in `[edges[i], edges[i+1])`
/// (the last bin closed).
#[derive(Debug, Clone, PartialEq)]
pub struct Baseline {
    pub edges: Vec<f64>,
    pub counts: Vec<u64>,
}

impl Baseline {
    /// Checks the shape: ascending finite edges, one count per bin, at least one score.
    pub fn new(edges: Vec<f64>, counts: Vec<u64>) -> Result<Baseline, String> {
        if edges.len() < 2 || counts.len() != edges.len() - 1 {
            return Err(format!(
                "{} edges need {} counts, got {}",
                edges.len(),
                edges.len().saturating_sub(1),
                counts.len()
            ));
        }
        if edges.iter().any(|e| !e.is_finite()) || edges.windows(2).any(|w| w[0] >= w[1]) {
            return Err("edges must be finite and strictly ascending".into());
        }
        if counts.iter().sum::<u64>() == 0 {
            return Err("counts must hold at least one score".into());
        }
        Ok(Baseline { edges, counts })
    }

    /// The bin a score falls in; scores outside the edges fall in the first or last bin.
    fn bin(&self, score: f64) -> usize {
        self.edges[1..self.edges.len() - 1].partition_point(|&e| e <= score)
    }
}

/// The population stability index of `actual` counts against `expected` counts, bin by bin.
pub fn psi(expected: &[u64], actual: &[u64]) -> f64 {
    let (e_total, a_total) = (expected.iter().sum::<u64>() as f64, actual.iter().sum::<u64>() as f64);
    expected
        .iter()
        .zip(actual)
        .map(|(&e, &a)| {
            let e = (e as f64 / e_total).max(FLOOR);
            let a = (a as f64 / a_total).max(FLOOR);
            (a - e) * (a / e).ln()
        })
        .sum()
}

/// One loaded version's signals. Shared by the bundle (which counts) and [`DriftSet`] (which
/// reads, through a weak reference: a version that is gone stops being exported).
#[derive(Debug)]
pub struct Drift {
    version: String,
    fields: Box<[Box<str>]>,
    defaults: Box<[AtomicU64]>,
    unknown: Box<[AtomicU64]>,
    /// `(fields + 1) * REASONS`: the last field slot is "-", a name outside the schema.
    rejected: Box<[AtomicU64]>,
    /// Histogram upper bounds (without +Inf).
    bounds: Box<[f64]>,
    /// Non-cumulative: one per bound, then the +Inf overflow.
    buckets: Box<[AtomicU64]>,
    /// Sum of scores, as f64 bits.
    sum: AtomicU64,
    window: Option<Window>,
}

#[derive(Debug)]
struct Window {
    baseline: Baseline,
    started: Instant,
    slice: Duration,
    min_rows: u64,
    slices: Box<[Slice]>,
}

#[derive(Debug)]
struct Slice {
    /// The slice number (time since `started` over the slice length, plus one) counted here;
    /// 0 before first use.
    stamp: AtomicU64,
    counts: Box<[AtomicU64]>,
}

fn zeros(n: usize) -> Box<[AtomicU64]> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

impl Drift {
    /// Signals for a version with these fields, scored as `kind`, against `baseline` if any.
    pub fn new(
        version: &str,
        fields: impl IntoIterator<Item = impl Into<Box<str>>>,
        kind: ScoreKind,
        baseline: Option<Baseline>,
        config: DriftConfig,
    ) -> Drift {
        let fields: Box<[Box<str>]> = fields.into_iter().map(Into::into).collect();
        let bounds: Box<[f64]> = match (&baseline, kind) {
            (Some(b), _) => b.edges[1..].into(),
            (None, ScoreKind::Probability) => (1..=20).map(|i| f64::from(i) / 20.0).collect(),
            (None, ScoreKind::Value) => Box::new([]),
        };
        let window = baseline.map(|baseline| Window {
            slices: (0..SLICES)
                .map(|_| Slice { stamp: AtomicU64::new(0), counts: zeros(baseline.counts.len()) })
                .collect(),
            baseline,
            started: Instant::now(),
            slice: (config.window / SLICES as u32).max(Duration::from_millis(1)),
            min_rows: config.min_rows,
        });
        Drift {
            version: version.to_owned(),
            defaults: zeros(fields.len()),
            unknown: zeros(fields.len()),
            rejected: zeros((fields.len() + 1) * REASONS.len()),
            buckets: zeros(bounds.len() + 1),
            bounds,
            fields,
            sum: AtomicU64::new(0f64.to_bits()),
            window,
        }
    }

    /// Field `field` (schema order) was missing and the schema filled it in.
    #[inline]
    pub fn defaulted(&self, field: usize) {
        self.defaults[field].fetch_add(1, Relaxed);
    }

    /// Field `field` carried a category outside its vocabulary that the schema accepted.
    #[inline]
    pub fn unknown_category(&self, field: usize) {
        self.unknown[field].fetch_add(1, Relaxed);
    }

    /// A row was refused on `field` (None: a name outside the schema) for `reason`, one of
    /// [`REASONS`].
    pub fn rejected(&self, field: Option<usize>, reason: &str) {
        let field = field.filter(|&f| f < self.fields.len()).unwrap_or(self.fields.len());
        let reason = REASONS.iter().position(|r| *r == reason).expect("every rejection reason is listed");
        self.rejected[field * REASONS.len() + reason].fetch_add(1, Relaxed);
    }

    /// Counts one call's scores: the histogram, and the current PSI slice.
    pub fn scores(&self, scores: impl Iterator<Item = f64>) {
        let slice = self.window.as_ref().map(|w| w.current(Instant::now()));
        let mut sum = 0.0;
        for score in scores {
            let b = self.bounds.partition_point(|&le| le < score);
            self.buckets[b].fetch_add(1, Relaxed);
            sum += score;
            if let (Some(w), Some(s)) = (&self.window, slice) {
                s.counts[w.baseline.bin(score)].fetch_add(1, Relaxed);
            }
        }
        if sum != 0.0 {
            let _ = self.sum.fetch_update(Relaxed, Relaxed, |bits| Some((f64::from_bits(bits) + sum).to_bits()));
        }
    }

    /// The window's rows and their PSI (None below `min_rows`); None without a baseline.
    pub fn psi(&self) -> Option<(u64, Option<f64>)> {
        let w = self.window.as_ref()?;
        let counts = w.counts(Instant::now());
        let rows = counts.iter().sum::<u64>();
        Some((rows, (rows >= w.min_rows && rows > 0).then(|| psi(&w.baseline.counts, &counts))))
    }
}

impl Window {
    fn tick(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.started).as_nanos() / self.slice.as_nanos()) as u64 + 1
    }

    /// The slice `now` counts into, zeroed first if it last counted an older slice.
    fn current(&self, now: Instant) -> &Slice {
        let tick = self.tick(now);
        let slice = &self.slices[tick as usize % SLICES];
        let stamp = slice.stamp.load(Relaxed);
        if stamp != tick && slice.stamp.compare_exchange(stamp, tick, Relaxed, Relaxed).is_ok() {
            slice.counts.iter().for_each(|c| c.store(0, Relaxed));
        }
        slice
    }

    /// Per baseline bin, the rows counted in the slices of the last window.
    fn counts(&self, now: Instant) -> Vec<u64> {
        let tick = self.tick(now);
        let mut counts = vec![0; self.baseline.counts.len()];
        for slice in self.slices.iter() {
            let stamp = slice.stamp.load(Relaxed);
            if stamp != 0 && stamp <= tick && tick - stamp < SLICES as u64 {
                counts.iter_mut().zip(slice.counts.iter()).for_each(|(c, s)| *c += s.load(Relaxed));
            }
        }
        counts
    }
}

/// A task name and one of its versions' signals.
type Watched = (Box<str>, Weak<Drift>);

/// Every loaded version's [`Drift`], exported as metric families at scrape time.
#[derive(Clone, Default)]
pub struct DriftSet {
    versions: Arc<Mutex<Vec<Watched>>>,
}

impl DriftSet {
    /// Exports `drift` as task `task`'s, for as long as its bundle lives.
    pub fn watch(&self, task: &str, drift: &Arc<Drift>) {
        let mut versions = self.versions.lock().expect("drift list lock");
        versions.retain(|(_, d)| d.strong_count() > 0);
        if !versions.iter().any(|(t, d)| &**t == task && d.as_ptr() == Arc::as_ptr(drift)) {
            versions.push((task.into(), Arc::downgrade(drift)));
        }
    }

    fn live(&self) -> Vec<(Box<str>, Arc<Drift>)> {
        let versions = self.versions.lock().expect("drift list lock");
        versions.iter().filter_map(|(t, d)| Some((t.clone(), d.upgrade()?))).collect()
    }
}

const DEFAULTS: &str = "modeld_input_defaults_total";
const UNKNOWN: &str = "modeld_input_unknown_categories_total";
const REJECTIONS: &str = "modeld_input_rejections_total";
const SCORE: &str = "modeld_prediction_score";
const PSI: &str = "modeld_score_psi";
const WINDOW_ROWS: &str = "modeld_score_window_rows";

const FAMILIES: [(&str, &str, MetricType, &[&str]); 6] = [
    (
        DEFAULTS,
        "Missing fields filled in by the schema (default, missing value or missing bin).",
        MetricType::COUNTER,
        &["task", "version", "field"],
    ),
    (
        UNKNOWN,
        "Categories outside the vocabulary accepted by the schema's unknown policy.",
        MetricType::COUNTER,
        &["task", "version", "field"],
    ),
    (
        REJECTIONS,
        "Rows refused, by field (- for a name outside the schema) and reason.",
        MetricType::COUNTER,
        &["task", "version", "field", "reason"],
    ),
    (
        SCORE,
        "Score of each scored row: P(class 1), the top-class probability, the first target, or a scorecard's points.",
        MetricType::HISTOGRAM,
        &["task", "version"],
    ),
    (
        PSI,
        "Population stability index of the recent window's scores against the bundle's score_baseline.",
        MetricType::GAUGE,
        &["task", "version"],
    ),
    (WINDOW_ROWS, "Scored rows in the PSI window.", MetricType::GAUGE, &["task", "version"]),
];

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(n, v)| {
            let mut l = LabelPair::default();
            l.set_name((*n).to_owned());
            l.set_value((*v).to_owned());
            l
        })
        .collect()
}

fn counter(pairs: &[(&str, &str)], value: u64) -> Metric {
    let mut c = Counter::default();
    c.set_value(value as f64);
    let mut m = Metric::from_label(labels(pairs));
    m.set_counter(c);
    m
}

fn gauge(pairs: &[(&str, &str)], value: f64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(value);
    let mut m = Metric::from_label(labels(pairs));
    m.set_gauge(g);
    m
}

impl Collector for DriftSet {
    fn desc(&self) -> Vec<&Desc> {
        // The families' label values are only known at scrape time: nothing to declare.
        Vec::new()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut metrics: [Vec<Metric>; 6] = Default::default();
        for (task, d) in self.live() {
            let (task, version) = (&*task, d.version.as_str());
            for (i, field) in d.fields.iter().enumerate() {
                let pairs = [("task", task), ("version", version), ("field", &**field)];
                metrics[0].push(counter(&pairs, d.defaults[i].load(Relaxed)));
                metrics[1].push(counter(&pairs, d.unknown[i].load(Relaxed)));
            }
            for (slot, n) in d.rejected.iter().enumerate() {
                let n = n.load(Relaxed);
                if n > 0 {
                    let field = d.fields.get(slot / REASONS.len()).map_or("-", |f| &**f);
                    let pairs = [
                        ("task", task),
                        ("version", version),
                        ("field", field),
                        ("reason", REASONS[slot % REASONS.len()]),
                    ];
                    metrics[2].push(counter(&pairs, n));
                }
            }
            let mut cumulative = 0;
            let mut buckets = Vec::with_capacity(d.bounds.len());
            for (le, n) in d.bounds.iter().zip(d.buckets.iter()) {
                cumulative += n.load(Relaxed);
                let mut b = Bucket::default();
                b.set_upper_bound(*le);
                b.set_cumulative_count(cumulative);
                buckets.push(b);
            }
            let mut h = Histogram::default();
            h.set_sample_count(cumulative + d.buckets[d.bounds.len()].load(Relaxed));
            h.set_sample_sum(f64::from_bits(d.sum.load(Relaxed)));
            h.set_bucket(buckets);
            let mut m = Metric::from_label(labels(&[("task", task), ("version", version)]));
            m.set_histogram(h);
            metrics[3].push(m);
            if let Some((rows, psi)) = d.psi() {
                let pairs = [("task", task), ("version", version)];
                if let Some(psi) = psi {
                    metrics[4].push(gauge(&pairs, psi));
                }
                metrics[5].push(gauge(&pairs, rows as f64));
            }
        }
        FAMILIES
            .iter()
            .zip(metrics)
            .filter(|(_, m)| !m.is_empty())
            .map(|((name, help, ty, _), m)| {
                let mut f = MetricFamily::default();
                f.set_name((*name).to_owned());
                f.set_help((*help).to_owned());
                f.set_field_type(*ty);
                f.set_metric(m);
                f
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(window_ms: u64) -> DriftConfig {
        DriftConfig { window: Duration::from_millis(window_ms), min_rows: 10 }
    }

    fn baseline() -> Baseline {
        Baseline::new(vec![0.0, 0.25, 0.5, 0.75, 1.0], vec![40, 30, 20, 10]).unwrap()
    }

    #[test]
    fn psi_is_zero_for_the_same_proportions_and_grows_with_the_shift() {
        assert!(psi(&[40, 30, 20, 10], &[4, 3, 2, 1]).abs() < 1e-12);
        let small = psi(&[40, 30, 20, 10], &[35, 30, 22, 13]);
        let large = psi(&[40, 30, 20, 10], &[10, 20, 30, 40]);
        assert!(small > 0.0 && small < 0.1, "{small}");
        assert!(large > 0.25 && large > small, "{large}");
        assert!(psi(&[10, 0], &[0, 10]).is_finite(), "empty bins are floored, not infinite");
    }

    #[test]
    fn baselines_are_checked() {
        assert!(Baseline::new(vec![0.0, 1.0], vec![1, 2]).is_err());
        assert!(Baseline::new(vec![0.0, 0.0, 1.0], vec![1, 2]).is_err());
        assert!(Baseline::new(vec![0.0, f64::NAN], vec![1]).is_err());
        assert!(Baseline::new(vec![0.0, 1.0], vec![0]).is_err());
        let b = baseline();
        assert_eq!([-1.0, 0.0, 0.25, 0.3, 0.99, 1.0, 7.0].map(|s| b.bin(s)), [0, 0, 1, 1, 3, 3, 3]);
    }

    #[test]
    fn the_window_reads_its_rows_and_needs_enough_of_them() {
        let d = Drift::new("v1", ["a"], ScoreKind::Probability, Some(baseline()), config(600_000));
        d.scores([0.1, 0.3].into_iter());
        assert_eq!(d.psi(), Some((2, None)), "below min_rows: no PSI");
        d.scores((0..100).map(|i| {
            [0.1, 0.3, 0.6, 0.9][if i < 40 {
                0
            } else if i < 70 {
                1
            } else if i < 90 {
                2
            } else {
                3
            }]
        }));
        let (rows, psi) = d.psi().unwrap();
        assert_eq!(rows, 102);
        assert!(psi.unwrap() < 0.01, "{psi:?}");
        let shifted = Drift::new("v1", ["a"], ScoreKind::Probability, Some(baseline()), config(600_000));
        shifted.scores(std::iter::repeat_n(0.9, 50));
        assert!(shifted.psi().unwrap().1.unwrap() > 0.25);
        assert_eq!(Drift::new("v1", ["a"], ScoreKind::Value, None, config(1000)).psi(), None);
    }

    #[test]
    fn old_slices_leave_the_window() {
        let d = Drift::new("v1", ["a"], ScoreKind::Probability, Some(baseline()), config(1000));
        let w = d.window.as_ref().unwrap();
        let t0 = w.started;
        w.current(t0).counts[0].fetch_add(5, Relaxed);
        w.current(t0 + w.slice * 3).counts[1].fetch_add(7, Relaxed);
        assert_eq!(w.counts(t0 + w.slice * 4), vec![5, 7, 0, 0]);
        assert_eq!(w.counts(t0 + w.slice * 10), vec![0, 7, 0, 0], "the first slice left the window");
        // Coming round to a slice's place again starts it from zero.
        w.current(t0 + w.slice * 10).counts[2].fetch_add(1, Relaxed);
        assert_eq!(w.counts(t0 + w.slice * 10), vec![0, 7, 1, 0]);
        assert_eq!(w.counts(t0 + w.slice * 30), vec![0, 0, 0, 0]);
    }

    #[test]
    fn the_histogram_and_counters_are_exported_per_task_and_version() {
        let set = DriftSet::default();
        let d = Arc::new(Drift::new("v7", ["age", "purpose"], ScoreKind::Probability, None, config(1000)));
        set.watch("credit", &d);
        set.watch("credit", &d);
        d.defaulted(1);
        d.unknown_category(1);
        d.rejected(None, "unknown_field");
        d.rejected(Some(0), "out_of_range");
        d.scores([0.05, 0.5, 1.0].into_iter());
        let families = set.collect();
        let names: Vec<&str> = families.iter().map(|f| f.name()).collect();
        assert_eq!(names, [DEFAULTS, UNKNOWN, REJECTIONS, SCORE], "no PSI without a baseline");
        assert_eq!(families[0].get_metric().len(), 2, "one series per field, watched once");
        assert_eq!(families[0].get_metric()[1].get_counter().get_value(), 1.0);
        let reasons: Vec<(String, String)> = families[2]
            .get_metric()
            .iter()
            .map(|m| (m.get_label()[2].value().to_owned(), m.get_label()[3].value().to_owned()))
            .collect();
        assert_eq!(reasons, [("age".into(), "out_of_range".into()), ("-".into(), "unknown_field".into())]);
        let h = families[3].get_metric()[0].get_histogram();
        assert_eq!(h.get_sample_count(), 3);
        assert!((h.get_sample_sum() - 1.55).abs() < 1e-12);
        assert_eq!(h.get_bucket()[0].cumulative_count(), 1, "0.05 is in le=0.05");
        assert_eq!(h.get_bucket()[9].cumulative_count(), 2, "0.5 is in le=0.5");
        drop(d);
        assert!(set.collect().is_empty(), "a version that is gone is no longer exported");
    }
}
