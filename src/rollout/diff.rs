//! The decision diff: how a shadow version's answers differ from the answering version's on
//! the same rows, per task and version pair. Kept twice: as Prometheus metrics for dashboards
//! and alerts, and as running totals for `GET /rollout/{task}`. Updated only by shadow jobs,
//! off the request path.

use std::{collections::BTreeMap, sync::Mutex, time::Duration};

use serde::Serialize;

use crate::{
    bundle::{Bundle, Prediction},
    telemetry::RolloutMetrics,
};

/// A version pair's totals so far.
#[derive(Debug, Default, Clone, Serialize)]
pub struct PairReport {
    pub champion: String,
    pub challenger: String,
    /// Rows scored by both and compared.
    pub rows: u64,
    /// Compared rows whose labels differ (classifiers).
    pub label_disagreements: u64,
    pub disagreement_rate: f64,
    /// `{champion label: {challenger label: rows}}`.
    pub confusion: BTreeMap<String, BTreeMap<String, u64>>,
    /// Challenger score minus champion score: mean, mean of its absolute value, largest
    /// absolute value.
    pub score_difference_mean: f64,
    pub score_difference_mean_abs: f64,
    pub score_difference_max_abs: f64,
    /// Shadow jobs run and their mean model-run time.
    pub jobs: u64,
    pub latency_mean_ms: f64,
    #[serde(skip)]
    sum_signed: f64,
    #[serde(skip)]
    sum_abs: f64,
    #[serde(skip)]
    latency_sum: f64,
}

/// Every pair's diff, and shadow jobs dropped, per task.
pub struct Diffs {
    metrics: RolloutMetrics,
    pairs: Mutex<BTreeMap<(String, String, String), PairReport>>,
    dropped: Mutex<BTreeMap<(String, &'static str), u64>>,
}

impl Diffs {
    pub fn new(metrics: RolloutMetrics) -> Diffs {
        Diffs { metrics, pairs: Mutex::default(), dropped: Mutex::default() }
    }

    /// Compares one job's rows: `champion[i]` is the answering version's prediction of the row
    /// the challenger answered with `challenger[i]` (None when that row was not answered).
    pub fn observe(
        &self,
        task: &str,
        champion: &Bundle,
        challenger: &Bundle,
        answered: &[Option<Prediction>],
        shadow: &[Prediction],
        latency: Duration,
    ) {
        let m = &self.metrics;
        let labels = [task, champion.version.as_str(), challenger.version.as_str()];
        let (champion_labels, challenger_labels) = (champion.class_labels(), challenger.class_labels());
        let difference = m.score_difference.with_label_values(&labels);
        let mut report = PairDelta::default();
        for (a, b) in answered.iter().zip(shadow) {
            let Some(a) = a else { continue };
            report.rows += 1;
            if let (Some(ca), Some(cb)) = (a.class, b.class) {
                let (la, lb) = (label(champion_labels, ca), label(challenger_labels, cb));
                if la != lb {
                    report.disagreements += 1;
                }
                *report.confusion.entry((la, lb)).or_default() += 1;
            }
            let d = score_of(b, a) - score_of(a, a);
            if d.is_finite() {
                difference.observe(d.abs());
                report.sum_signed += d;
                report.sum_abs += d.abs();
                report.max_abs = report.max_abs.max(d.abs());
            }
        }
        m.rows.with_label_values(&labels).inc_by(report.rows);
        m.disagreements.with_label_values(&labels).inc_by(report.disagreements);
        for ((la, lb), n) in &report.confusion {
            m.decisions.with_label_values(&[task, labels[1], labels[2], la, lb]).inc_by(*n);
        }
        m.latency.with_label_values(&[task, labels[2]]).observe(latency.as_secs_f64());

        let mut pairs = self.pairs.lock().unwrap_or_else(|p| p.into_inner());
        let key = (task.to_owned(), labels[1].to_owned(), labels[2].to_owned());
        let pair = pairs.entry(key).or_insert_with(|| PairReport {
            champion: labels[1].to_owned(),
            challenger: labels[2].to_owned(),
            ..PairReport::default()
        });
        pair.rows += report.rows;
        pair.label_disagreements += report.disagreements;
        for ((la, lb), n) in report.confusion {
            *pair.confusion.entry(la.to_owned()).or_default().entry(lb.to_owned()).or_default() += n;
        }
        pair.sum_signed += report.sum_signed;
        pair.sum_abs += report.sum_abs;
        pair.score_difference_max_abs = pair.score_difference_max_abs.max(report.max_abs);
        pair.jobs += 1;
        pair.latency_sum += latency.as_secs_f64();
    }

    /// Counts a shadow job that was not scored.
    pub fn dropped(&self, task: &str, reason: &'static str) {
        self.metrics.dropped.with_label_values(&[task, reason]).inc();
        *self.dropped.lock().unwrap_or_else(|p| p.into_inner()).entry((task.to_owned(), reason)).or_default() += 1;
    }

    /// `task`'s pairs so far, and its dropped jobs by reason.
    pub fn report(&self, task: &str) -> (Vec<PairReport>, BTreeMap<&'static str, u64>) {
        let pairs = self.pairs.lock().unwrap_or_else(|p| p.into_inner());
        let pairs = pairs
            .iter()
            .filter(|((t, _, _), _)| t == task)
            .map(|(_, p)| {
                let mut p = p.clone();
                let rows = p.rows.max(1) as f64;
                p.disagreement_rate = p.label_disagreements as f64 / rows;
                p.score_difference_mean = p.sum_signed / rows;
                p.score_difference_mean_abs = p.sum_abs / rows;
                p.latency_mean_ms = p.latency_sum * 1e3 / p.jobs.max(1) as f64;
                p
            })
            .collect();
        let dropped = self.dropped.lock().unwrap_or_else(|p| p.into_inner());
        let dropped = dropped.iter().filter(|((t, _), _)| t == task).map(|((_, r), n)| (*r, *n)).collect();
        (pairs, dropped)
    }
}

impl std::fmt::Debug for Diffs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Diffs").finish_non_exhaustive()
    }
}

/// One job's counts, before they are added to the totals.
#[derive(Default)]
struct PairDelta<'a> {
    rows: u64,
    disagreements: u64,
    confusion: BTreeMap<(&'a str, &'a str), u64>,
    sum_signed: f64,
    sum_abs: f64,
    max_abs: f64,
}

fn label(labels: &[String], class: usize) -> &str {
    labels.get(class).map_or("?", String::as_str)
}

/// The score `p` gives where `champion` stands: P(class 1) for binary models, the champion's
/// class probability for multiclass ones (so both sides speak of the same class), the first
/// value for regressors.
fn score_of(p: &Prediction, champion: &Prediction) -> f64 {
    match (champion.class, p.probabilities.len()) {
        (Some(c), n) if n > 2 => p.probabilities.get(c).copied().map_or(f64::NAN, f64::from),
        _ => p.compared_score(),
    }
}
