//! What a call is, to the core: its context, its request, and the owned results it gets back.

use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::Instant,
};

use opentelemetry::trace::{SpanContext, TraceId};

pub use crate::bundle::Prediction;
use crate::{access::Caller, bundle::Bundle};

/// Request limits enforced before any model work.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most rows in one request or stream chunk.
    pub max_rows: usize,
    /// Most rows per model run of a stream chunk.
    pub max_batch_rows: usize,
    /// Most streams open at once.
    pub max_streams: usize,
}

/// The operation a call performs, as metrics name it (`method` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// gRPC `Predict`.
    Predict,
    /// gRPC `BatchPredict`.
    BatchPredict,
    /// HTTP/JSON `POST /v1/tasks/{task}/predict`.
    JsonPredict,
    /// HTTP/JSON, KServe V1 style: `POST /v1/models/{task}:predict`.
    KserveV1Predict,
    /// Open Inference Protocol (KServe V2) over gRPC: `inference.GRPCInferenceService/ModelInfer`.
    ModelInfer,
    /// Open Inference Protocol (KServe V2) over REST: `POST /v2/models/{model}/infer`.
    V2Infer,
}

impl Method {
    pub(super) const ALL: [Method; 6] = [
        Method::Predict,
        Method::BatchPredict,
        Method::JsonPredict,
        Method::KserveV1Predict,
        Method::ModelInfer,
        Method::V2Infer,
    ];

    /// The call's span name, as the OpenTelemetry conventions name them: `{rpc.service}/{rpc.method}`
    /// for gRPC, `{method} {route}` for HTTP.
    pub const fn span_name(self) -> &'static str {
        match self {
            Method::Predict => "modeld.v1.Inference/Predict",
            Method::BatchPredict => "modeld.v1.Inference/BatchPredict",
            Method::ModelInfer => "inference.GRPCInferenceService/ModelInfer",
            other => other.name(),
        }
    }

    /// The RPC's service and method for gRPC calls; None for HTTP routes.
    pub const fn rpc(self) -> Option<(&'static str, &'static str)> {
        match self {
            Method::Predict => Some(("modeld.v1.Inference", "Predict")),
            Method::BatchPredict => Some(("modeld.v1.Inference", "BatchPredict")),
            Method::ModelInfer => Some(("inference.GRPCInferenceService", "ModelInfer")),
            _ => None,
        }
    }

    /// The `method` label value: the RPC's name, or the HTTP route.
    pub const fn name(self) -> &'static str {
        match self {
            Method::Predict => "Predict",
            Method::BatchPredict => "BatchPredict",
            Method::JsonPredict => "POST /v1/tasks/{task}/predict",
            Method::KserveV1Predict => "POST /v1/models/{task}:predict",
            Method::ModelInfer => "ModelInfer",
            Method::V2Infer => "POST /v2/models/{model}/infer",
        }
    }
}

/// What the core knows about a call besides its rows.
#[derive(Debug, Clone)]
pub struct CallContext {
    pub method: Method,
    /// When the face received the call: latency is measured from here.
    pub started: Instant,
    /// The caller's address, when the transport knows it.
    pub peer: Option<SocketAddr>,
    /// When the caller stops waiting. Work that has not reached the model by then is dropped
    /// with [`PredictError::Deadline`].
    pub deadline: Option<Instant>,
    /// The authenticated caller; None when callers are not checked (no callers file), or
    /// before [`Predictor::authenticate`](super::Predictor::authenticate).
    pub caller: Option<Arc<Caller>>,
    /// The caller's W3C trace context (`traceparent`), when it sent a valid one.
    pub parent: Option<SpanContext>,
    /// The trace the call's span belongs to, once the core started it (tracing on).
    pub(super) trace_id: OnceLock<TraceId>,
}

impl CallContext {
    /// A call of `method` received now.
    pub fn new(method: Method) -> CallContext {
        CallContext {
            method,
            started: Instant::now(),
            peer: None,
            deadline: None,
            caller: None,
            parent: None,
            trace_id: OnceLock::new(),
        }
    }

    /// Continues the caller's trace: `traceparent` as its header or metadata entry carries it.
    pub fn with_traceparent(mut self, traceparent: Option<&str>) -> CallContext {
        self.parent = crate::telemetry::trace::parent_from(traceparent);
        self
    }

    /// The call's trace: its span's when tracing is on, else the caller's (so logs and audit
    /// records join the caller's trace even when modeld exports none).
    pub fn trace_id(&self) -> Option<TraceId> {
        self.trace_id.get().copied().or_else(|| self.parent.as_ref().map(SpanContext::trace_id))
    }

    /// Sets the caller's address, as the transport reports it.
    pub fn with_peer(mut self, peer: Option<SocketAddr>) -> CallContext {
        self.peer = peer;
        self
    }

    pub(super) fn past_deadline(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

/// A unary prediction request, borrowed from the face's decoded message.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a, R> {
    pub task: &'a str,
    pub rows: &'a [R],
    /// The caller's id for the request, for logs; may be empty.
    pub request_id: &'a str,
    /// A version pin; None means the live version.
    pub version: Option<&'a str>,
    /// Further loaded versions to score the same rows with.
    pub compare_versions: &'a [String],
    /// Scorecards: how many reason codes each prediction carries (0: none).
    pub reason_codes: u32,
}

/// The same rows scored by another loaded version.
#[derive(Debug)]
pub struct Comparison {
    pub bundle: Arc<Bundle>,
    pub predictions: Vec<Prediction>,
}

/// A successful prediction: the version that answered, one prediction per row in request
/// order, and one comparison per requested compare version, in that order.
#[derive(Debug)]
pub struct Answer {
    pub bundle: Arc<Bundle>,
    pub predictions: Vec<Prediction>,
    pub comparisons: Vec<Comparison>,
}

/// Whose sticky key a split reads: a unary call's (every row must carry the same key) or a
/// stream's (its first row decides; a stream has no request id, so its first row id stands in).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyOf {
    Call,
    Stream,
}

/// What the caller's answer was, for a shadow job's record.
pub(super) struct Answered<'a, R> {
    pub ctx: &'a CallContext,
    pub request_id: &'a str,
    pub stream: Option<(u64, u64)>,
    pub rows: &'a [R],
    pub bundle: &'a Arc<Bundle>,
    /// Per row, the prediction given (None: the row got its own error).
    pub predictions: &'a [Option<&'a Prediction>],
    /// Whether the call's own audit record was written: its shadow records follow it.
    pub audited: bool,
}
