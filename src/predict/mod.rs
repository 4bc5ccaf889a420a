//! The prediction core: every face (gRPC today; HTTP/JSON and the Open Inference Protocol
//! later) converts its wire request into a [`Request`] and calls [`Predictor::predict`], or
//! opens a [`StreamSession`] for chunked bulk scoring. Version choice, limits, preprocessing,
//! the model run, errors ([`PredictError`]) and metrics happen here, once.
//!
//! Rows stay in the face's own decoded form: the core reads them through
//! [`RowView`](crate::preprocess::RowView), so a face hands over its wire rows without copying
//! them into a neutral structure first. Results are owned and protocol-neutral: per row the
//! served class index and the probabilities, for the face to put in its own shape.
//!
//! A call takes its bundle snapshot(s) at entry and uses only those to the end; a stream takes
//! one snapshot on its first chunk for its whole life. A swap mid-call changes nothing.
//!
//! # Files
//! One-way imports: `error` and `call` at the bottom, then `audit`, then `predictor` (the
//! [`Predictor`] and the unary path), then `rollout` (version choice by the rollout policy and
//! shadow hand-over), then `stream`; this file only re-exports.

pub mod audit;
mod call;
mod error;
mod predictor;
mod rollout;
mod stream;

pub use self::{
    audit::{Auditor, FeatureSelection},
    call::{Answer, CallContext, Comparison, Limits, Method, Prediction, Request},
    error::{ErrorKind, PredictError},
    predictor::Predictor,
    stream::{ChunkAnswer, StreamSession},
};
