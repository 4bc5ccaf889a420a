//! modeld: a gRPC model-serving daemon for tabular ONNX models with hot-swappable bundles.
//!
//! # Layout
//! - [`config`]: the typed configuration (YAML, `MODELD_*` environment, flags); the only reader of the environment.
//! - [`telemetry`]: log set-up and the Prometheus metrics, in a registry passed down.
//! - [`schema`]: the feature schema of a bundle, parsed, checked and compiled for preprocessing.
//! - [`preprocess`]: rows of named raw features -> the model's float32 input, per the schema.
//! - [`engine`]: ONNX Runtime sessions of one model and the reading of their outputs.
//! - [`bundle`]: one version directory loaded and checked (manifest, schema, model, golden rows, warm-up).
//! - [`registry`]: the live bundle of each task, swapped atomically; the reload loop.
//! - [`runner`]: admission and placement of model runs (bounded queue, inline or blocking thread).
//! - [`service`]: gRPC inference, health and reflection, admin HTTP; the wire <-> domain edge.
//! - [`server`]: wiring of all the above on given listeners, with graceful shutdown.
//! - [`shutdown`]: the process's SIGTERM/SIGINT future.
//! - [`validate`]: `modeld validate`, the load checks as a report.
//! - [`label`]: `modeld label`, a batch-labelling client of BatchPredict.
//! - [`verify`]: `modeld verify`, the release gate: a running server serves a bundle and matches its golden rows.

#![forbid(unsafe_code)]

pub mod bundle;
pub mod config;
pub mod engine;
pub mod label;
pub mod preprocess;
pub mod registry;
pub mod runner;
pub mod schema;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod validate;
pub mod verify;
