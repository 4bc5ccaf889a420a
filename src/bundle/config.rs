//! `config.yaml`: what the model's outputs mean.

use serde::Deserialize;

/// Why `config.yaml` is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Parse(#[from] serde_yaml::Error),
    #[error("{0}")]
    Invalid(String),
}

/// What the model predicts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Class probabilities; the served label is derived from them.
    #[default]
    Classifier,
    /// One or more real values per row.
    Regressor,
    /// A binary classifier over binned fields whose bins carry points: served as a classifier,
    /// plus each row's score (`base_points` + the points of the row's bins) and, on request,
    /// its reason codes.
    Scorecard,
}

impl Kind {
    /// The name `config.yaml` uses.
    pub const fn name(self) -> &'static str {
        match self {
            Kind::Classifier => "classifier",
            Kind::Regressor => "regressor",
            Kind::Scorecard => "scorecard",
        }
    }
}

/// The bundle's output contract.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleConfig {
    /// The task this bundle was trained for; when set, it must match the task directory.
    pub task: Option<String>,
    #[serde(default)]
    pub kind: Kind,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub model_type: String,
    pub outputs: Outputs,
    /// Classifiers: class names in probability order. The served label is the class with the
    /// highest probability (the first on a tie), or per `decision_threshold`.
    #[serde(default)]
    pub class_labels: Vec<String>,
    /// Binary models only: serve `class_labels[1]` when its probability reaches this value,
    /// instead of the model's own label. Unset keeps the model's label.
    pub decision_threshold: Option<f32>,
    /// Scorecards: the points every row starts from (0 when the points of the bins include
    /// the intercept, as optbinning's do).
    #[serde(default)]
    pub base_points: f64,
}

/// Names of the ONNX outputs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outputs {
    /// The model's own label output. Accepted for older bundles and not read: labels come from
    /// the probabilities, so string-labelled models serve the same way as integer ones.
    pub label: Option<String>,
    /// Classifiers: float32 `[N, classes]`, or `[N, 1]` holding P(class 1) for a binary model.
    pub probabilities: Option<String>,
    /// Regressors: float32 `[N]` or `[N, targets]`.
    pub values: Option<String>,
}

impl BundleConfig {
    /// Parses and checks `config.yaml` text; the error says what is wrong.
    pub fn parse(yaml: &str) -> Result<BundleConfig, ConfigError> {
        let config: BundleConfig = serde_yaml::from_str(yaml)?;
        let invalid = |reason: String| Err(ConfigError::Invalid(reason));
        match (config.kind, &config.outputs.probabilities, &config.outputs.values) {
            (Kind::Classifier, Some(_), None) => {
                if config.class_labels.len() < 2 {
                    return invalid("a classifier needs at least two class_labels".into());
                }
            }
            (Kind::Classifier, _, _) => {
                return invalid("a classifier names outputs.probabilities and no outputs.values".into());
            }
            (Kind::Scorecard, Some(_), None) => {
                if config.class_labels.len() != 2 {
                    return invalid("a scorecard is a binary classifier: it needs exactly two class_labels".into());
                }
            }
            (Kind::Scorecard, _, _) => {
                return invalid("a scorecard names outputs.probabilities and no outputs.values".into());
            }
            (Kind::Regressor, None, Some(_)) => {
                if !config.class_labels.is_empty() || config.decision_threshold.is_some() || config.base_points != 0.0 {
                    return invalid("a regressor has no class_labels, decision_threshold or base_points".into());
                }
            }
            (Kind::Regressor, _, _) => {
                return invalid("a regressor names outputs.values and no outputs.probabilities".into());
            }
        }
        if !config.base_points.is_finite() || (config.kind == Kind::Classifier && config.base_points != 0.0) {
            return invalid("base_points applies to scorecards only and must be finite".into());
        }
        for (i, c) in config.class_labels.iter().enumerate() {
            if config.class_labels[..i].contains(c) {
                return invalid(format!("class label `{c}` is listed twice"));
            }
        }
        if let Some(t) = config.decision_threshold {
            if config.class_labels.len() != 2 {
                return invalid("decision_threshold needs exactly two class labels".into());
            }
            if !(t > 0.0 && t < 1.0) {
                return invalid(format!("decision_threshold {t} is not in (0, 1)"));
            }
        }
        Ok(config)
    }

    /// The one ONNX output modeld reads.
    pub fn output_name(&self) -> &str {
        match self.kind {
            Kind::Classifier | Kind::Scorecard => self.outputs.probabilities.as_deref(),
            Kind::Regressor => self.outputs.values.as_deref(),
        }
        .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_name_their_one_output() {
        let classifier = BundleConfig::parse("outputs: {probabilities: p}\nclass_labels: [no, yes]\n").unwrap();
        assert_eq!((classifier.kind, classifier.output_name()), (Kind::Classifier, "p"));
        let older = BundleConfig::parse("outputs: {label: l, probabilities: p}\nclass_labels: [a, b]\n").unwrap();
        assert_eq!(older.output_name(), "p", "an old label output is accepted and not read");
        let regressor = BundleConfig::parse("kind: regressor\noutputs: {values: variable}\n").unwrap();
        assert_eq!((regressor.kind, regressor.output_name()), (Kind::Regressor, "variable"));
    }

    #[test]
    fn refuses_mixed_contracts() {
        let err = |yaml: &str| BundleConfig::parse(yaml).unwrap_err().to_string();
        assert!(err("kind: regressor\noutputs: {values: v}\nclass_labels: [a, b]\n").contains("no class_labels"));
        assert!(err("kind: regressor\noutputs: {probabilities: p}\n").contains("names outputs.values"));
        assert!(err("outputs: {values: v}\nclass_labels: [a, b]\n").contains("names outputs.probabilities"));
        assert!(err("outputs: {probabilities: p}\nclass_labels: [a]\n").contains("at least two"));
        assert!(err("kind: ranker\noutputs: {values: v}\n").contains("unknown variant"));
        assert!(err("kind: scorecard\noutputs: {probabilities: p}\nclass_labels: [a, b, c]\n").contains("exactly two"));
        assert!(
            err("outputs: {probabilities: p}\nclass_labels: [a, b]\nbase_points: 600\n").contains("scorecards only")
        );
        let card = BundleConfig::parse(
            "kind: scorecard\noutputs: {probabilities: p}\nclass_labels: [good, bad]\nbase_points: 12.5\n",
        );
        assert_eq!(card.unwrap().base_points, 12.5);
    }
}
