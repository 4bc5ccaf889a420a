//! `golden.jsonl`: rows with the outputs training produced for them.
//!
//! Replaying them through this daemon's own preprocessing and engine proves that serving
//! encodes features exactly as training did; a bundle that disagrees never goes live.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::{preprocess::OwnedRow, schema::OwnedValue};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GoldenLine {
    #[serde(default)]
    row_id: String,
    features: BTreeMap<String, OwnedValue>,
    /// Classifiers.
    #[serde(default)]
    label: String,
    #[serde(default)]
    probabilities: Vec<f32>,
    /// Regressors.
    #[serde(default)]
    values: Vec<f64>,
    /// Scorecards.
    score: Option<f64>,
}

/// Largest absolute difference from a golden probability that still counts as equal, for
/// bundle loading and for `modeld verify`. Regression values get the same figure as a relative
/// tolerance: `|served - golden| <= TOLERANCE * max(1, |golden|)`.
pub const TOLERANCE: f32 = 1e-5;

/// Largest absolute difference from a golden scorecard score. Scores are sums of the bundle's
/// own points in f64: only the order of the additions may differ from training's.
pub const SCORE_TOLERANCE: f64 = 1e-6;

/// One golden row and its expected outputs.
#[derive(Debug, Clone)]
pub struct GoldenRow {
    /// 1-based line number in golden.jsonl.
    pub line: usize,
    pub row: OwnedRow,
    /// Classifiers: the class name and probabilities; empty for regressors.
    pub label: String,
    pub probabilities: Vec<f32>,
    /// Regressors: the values; empty for classifiers.
    pub values: Vec<f64>,
    /// Scorecards: the score.
    pub score: Option<f64>,
}

impl GoldenRow {
    /// Why a served output differs from this row's golden output, or None when it matches.
    pub fn mismatch(
        &self,
        label: &str,
        probabilities: &[f32],
        values: &[f64],
        score: Option<f64>,
        tolerance: f32,
    ) -> Option<String> {
        match (score, self.score) {
            (None, None) => {}
            (Some(s), Some(g)) if (s - g).abs() <= SCORE_TOLERANCE => {}
            (Some(s), Some(g)) => {
                return Some(format!("score {s} differs from golden {g} (tolerance {SCORE_TOLERANCE:e})"));
            }
            (Some(s), None) => return Some(format!("score {s}, golden has no score")),
            (None, Some(g)) => return Some(format!("no score, golden score {g}")),
        }
        if !self.values.is_empty() || !values.is_empty() {
            return self.values_mismatch(values, f64::from(tolerance));
        }
        if label != self.label {
            return Some(format!("label `{label}`, golden `{}`", self.label));
        }
        if probabilities.len() != self.probabilities.len() {
            return Some(format!("{} probabilities, golden has {}", probabilities.len(), self.probabilities.len()));
        }
        let worst = probabilities.iter().zip(&self.probabilities).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        // NaN compares as neither, so it fails too.
        if worst.is_nan() || worst > tolerance {
            return Some(format!(
                "probabilities {probabilities:?} differ from golden {:?} by {worst:e} (tolerance {tolerance:e})",
                self.probabilities
            ));
        }
        None
    }

    fn values_mismatch(&self, values: &[f64], tolerance: f64) -> Option<String> {
        if values.len() != self.values.len() {
            return Some(format!("{} values, golden has {}", values.len(), self.values.len()));
        }
        let off = values.iter().zip(&self.values).any(|(a, b)| {
            let within = (a - b).abs() <= tolerance * b.abs().max(1.0);
            !within // NaN is never within
        });
        off.then(|| {
            format!("values {values:?} differ from golden {:?} (relative tolerance {tolerance:e})", self.values)
        })
    }
}

/// A golden line that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {source}")]
pub struct GoldenParseError {
    pub line: usize,
    #[source]
    pub source: serde_json::Error,
}

/// Parses every non-empty line.
pub fn parse(text: &str) -> Result<Vec<GoldenRow>, GoldenParseError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let g: GoldenLine = serde_json::from_str(l).map_err(|source| GoldenParseError { line: i + 1, source })?;
            Ok(GoldenRow {
                line: i + 1,
                row: OwnedRow { row_id: g.row_id, features: g.features.into_iter().collect() },
                label: g.label,
                probabilities: g.probabilities,
                values: g.values,
                score: g.score,
            })
        })
        .collect()
}
