//! `config.yaml`: what the model's outputs mean.

use serde::Deserialize;

use crate::engine::OutputNames;

/// Why `config.yaml` is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Parse(#[from] serde_yaml::Error),
    #[error("{0}")]
    Invalid(String),
}

/// The bundle's output contract.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleConfig {
    /// The task this bundle was trained for; when set, it must match the task directory.
    pub task: Option<String>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub model_type: String,
    pub outputs: Outputs,
    /// Class names; the model's label value `i` means `class_labels[i]`, and probabilities come
    /// in this order.
    pub class_labels: Vec<String>,
    /// Binary models only: serve `class_labels[1]` when its probability reaches this value,
    /// instead of the model's own label. Unset keeps the model's label.
    pub decision_threshold: Option<f32>,
}

/// Names of the ONNX outputs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outputs {
    pub label: String,
    pub probabilities: String,
}

impl BundleConfig {
    /// Parses and checks `config.yaml` text; the error says what is wrong.
    pub fn parse(yaml: &str) -> Result<BundleConfig, ConfigError> {
        let config: BundleConfig = serde_yaml::from_str(yaml)?;
        let invalid = |reason: String| Err(ConfigError::Invalid(reason));
        if config.class_labels.is_empty() {
            return invalid("class_labels is empty".into());
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

    pub(crate) fn output_names(&self) -> OutputNames {
        OutputNames { label: self.outputs.label.clone(), probabilities: self.outputs.probabilities.clone() }
    }
}
