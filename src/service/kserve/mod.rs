//! The Open Inference Protocol (KServe V2) faces: `inference.GRPCInferenceService` on the gRPC
//! port ([`grpc`]) and `/v2/...` on the HTTP port ([`rest`]). Conversion only: a V2 model is a
//! task, a model version a version pin; one input tensor per schema field, read in place
//! ([`tensor`]); the rows go to the same core as every other face.
//!
//! Tensors are checked against the schema of the version the call names (the live one, or the
//! pinned one) before the core chooses the answering version; the core checks every value again
//! against the schema of the version that answers.
//!
//! # Files
//! `tensor` (datatypes, inputs as rows, outputs) at the bottom, then this file (what both faces
//! share: the model lookup and the metadata), then `grpc` and `rest`.
//!
//! Errors are the core's ([`PredictError`]): a call refused here (tensors the model does not
//! take, an unknown model) is counted, logged and audited through [`Predictor::refuse`] like a
//! call the core refused.
//!
//! [`Predictor::refuse`]: crate::predict::Predictor::refuse

pub mod grpc;
pub mod rest;
pub mod tensor;

use std::sync::Arc;

use self::tensor::{DataType, Output, field_datatype};
use crate::{
    bundle::Bundle,
    predict::PredictError,
    registry::{Registry, RegistryError},
};

/// Server name in the server metadata.
pub const SERVER_NAME: &str = "modeld";
/// Protocol extensions served (Triton's binary tensor data over REST).
pub const EXTENSIONS: &[&str] = &["binary_tensor_data"];
/// The platform in model metadata.
pub const PLATFORM: &str = "onnxruntime_onnx";

/// The bundle a call names: version `version` of `task` (empty: the live one).
pub fn model(registry: &Registry, task: &str, version: &str) -> Result<Arc<Bundle>, PredictError> {
    let found = if version.is_empty() { registry.get(task) } else { registry.get_version(task, version) };
    Ok(found?)
}

/// Whether a model (or one version of it) takes calls: NOT_FOUND for a task not served, false
/// while it has no live version or the server drains.
pub fn model_ready(registry: &Registry, draining: bool, task: &str, version: &str) -> Result<bool, PredictError> {
    if registry.task_name(task).is_none() {
        return Err(RegistryError::UnknownTask(task.to_owned()).into());
    }
    Ok(!draining && model(registry, task, version).is_ok())
}

/// A tensor's name, datatype and shape, as metadata gives it.
pub struct TensorMetadata {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
}

/// A model's metadata: its loaded versions, one input per schema field, and its outputs.
pub struct Metadata {
    pub name: String,
    pub versions: Vec<String>,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

pub fn metadata(registry: &Registry, task: &str, bundle: &Bundle) -> Metadata {
    let inputs = bundle
        .schema
        .fields()
        .iter()
        .map(|f| TensorMetadata { name: f.name.to_string(), datatype: field_datatype(f.kind), shape: vec![-1] })
        .collect();
    let outputs = Output::all(bundle.config.kind)
        .iter()
        .map(|o| TensorMetadata { name: o.name().to_owned(), datatype: o.datatype(), shape: o.metadata_shape(bundle) })
        .collect();
    let versions = registry.report(task).map(|r| r.loaded_versions()).unwrap_or_else(|| vec![bundle.version.clone()]);
    Metadata { name: task.to_owned(), versions, inputs, outputs }
}
