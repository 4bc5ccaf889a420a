//! modeld: a gRPC model-serving daemon for tabular ONNX models with hot-swappable bundles.
//!
//! # Layout
//! Floors from the top; a module imports only modules listed below it (`tests/layers.rs`
//! checks this, and that no two files import each other).
//! - [`clients`]: `modeld label` and `modeld verify`, clients of the public gRPC API.
//! - [`app`]: the wired application: build every part, serve on given listeners, drain on shutdown.
//! - [`service`]: the faces (gRPC inference, HTTP/JSON, the Open Inference Protocol over gRPC and REST, health, reflection, admin HTTP): wire <-> core, one status table per protocol.
//! - [`pb`]: the generated `modeld.v1` and V2 `inference` protobuf code, for the faces and the clients only.
//! - [`predict`]: the protocol-neutral core: request -> snapshot -> preprocess -> run -> results; errors, metrics, spans, audit.
//! - [`registry`]: the live bundle of each task, swapped atomically; the reload loop.
//! - [`rollout`]: champion/challenger: the rollout policy file, sticky split buckets, shadow scoring, the decision diff.
//! - [`runner`]: admission and placement of model runs (bounded queue, inline or blocking thread), bulk runtime.
//! - [`validate`]: `modeld validate`, the load checks as a report.
//! - [`bundle`]: one version directory loaded and checked (manifest and identity, schema, model, golden rows).
//! - [`preprocess`]: rows of named raw features -> the model's float32 input, per the schema.
//! - [`schema`]: the feature schema of a bundle, parsed, checked and compiled for preprocessing.
//! - [`engine`]: ONNX Runtime sessions of one model, the inputs it takes and the reading of its outputs.
//! - [`telemetry`]: log set-up, the Prometheus metrics (in a registry passed down), drift signals, OpenTelemetry traces, the audit writer.
//! - [`config`]: the typed configuration (YAML, `MODELD_*` environment, flags); the only reader of the environment.
//! - [`shutdown`]: the process's signals (SIGTERM/SIGINT to stop, SIGHUP to reload).

#![forbid(unsafe_code)]

pub mod access;
pub mod app;
pub mod bundle;
pub mod clients;
pub mod config;
pub mod engine;
pub mod pb;
pub mod predict;
pub mod preprocess;
pub mod registry;
pub mod rollout;
pub mod runner;
pub mod schema;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod validate;
