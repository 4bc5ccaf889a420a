//! The HTTP/JSON face, on its own port: conversion only. Rows come in as JSON objects, go to the
//! same core as gRPC Predict, and leave as JSON; the core's errors leave through [`status`],
//! this protocol's table.
//!
//! - `POST /v1/tasks/{task}/predict`: `{"rows": [{feature: value}], "row_ids", "request_id",
//!   "version", "compare_versions"}`, answered like gRPC Predict.
//! - `POST /v1/models/{task}:predict`: KServe V1 / TF-Serving style, `{"instances": [...]}` in,
//!   `{"predictions": [...]}` out.
//! - `GET /v1/tasks`, `GET /v1/tasks/{task}`: what is served, and a task's schema.
//! - `GET /openapi.json`: the OpenAPI 3.1 document of all of the above, and of the V2 REST routes
//!   (`service::kserve::rest`), which are merged into this router.

use std::{fmt, time::Duration};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{ConnectInfo, DefaultBodyLimit, Path, State, rejection::BytesRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{
    Deserialize, Deserializer, Serialize,
    de::{DeserializeOwned, IgnoredAny, MapAccess, SeqAccess, Visitor},
};
use tower_http::{compression::CompressionLayer, decompression::RequestDecompressionLayer};

use super::{
    grpc::convert::{field_info, rollout_policy},
    health::Readiness,
    layers::{CallGuard, CallTracker},
    tls::ConnInfo,
};
use crate::{
    pb,
    predict::{CallContext, ErrorKind, Method, PredictError, Prediction, Predictor, Request as Call},
    preprocess::RowView,
    registry::Registry,
    schema::{Echo, Value},
    telemetry::Metrics,
};

/// The OpenAPI document served at `/openapi.json`.
const OPENAPI: &str = include_str!("openapi.json");

/// Limits of the HTTP face, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Largest request body, after decompression (`max_message_bytes`): past it, 413.
    pub max_body_bytes: usize,
    /// Calls admitted at once across both faces (`max_inflight_calls`): past it, 429.
    pub max_inflight_calls: usize,
    /// Time a call has until it is answered (`request_timeout_ms`): past it, 504.
    pub request_timeout: Duration,
    /// HTTP/1.1 connections older than this (less up to 10% jitter) are closed after their
    /// next response (`max_connection_age_ms`).
    pub max_connection_age: Option<Duration>,
}

/// What the faces on the HTTP port (this one and the V2 REST face) share. Cloning is shallow.
#[derive(Clone)]
pub struct Face {
    pub predictor: Predictor,
    pub registry: Registry,
    pub readiness: Readiness,
    /// Shared with the gRPC face: one admission limit for all, and the drain waits for calls
    /// from any.
    calls: CallTracker,
    pub limits: HttpLimits,
    rejected: prometheus::IntCounter,
}

impl Face {
    pub fn new(
        predictor: Predictor,
        registry: Registry,
        readiness: Readiness,
        calls: CallTracker,
        metrics: &Metrics,
        limits: HttpLimits,
    ) -> Face {
        let rejected = metrics.rejected.with_label_values(&["calls_in_flight"]);
        Face { predictor, registry, readiness, calls, limits, rejected }
    }

    /// Admits a call within `max_inflight_calls` (held until the guard drops), or counts the
    /// refusal and says why.
    pub fn admit(&self) -> Result<CallGuard, String> {
        self.calls.admit(self.limits.max_inflight_calls).ok_or_else(|| {
            self.rejected.inc();
            format!(
                "the server is at its limit of {} calls in flight (max_inflight_calls); retry with backoff",
                self.limits.max_inflight_calls
            )
        })
    }
}

/// The HTTP/JSON router, with `extra` routes (the V2 REST face) behind the same layers.
pub fn router(face: Face, extra: Router) -> Router {
    let limits = face.limits;
    let router = Router::new()
        .route("/v1/tasks", get(list_tasks))
        .route("/v1/tasks/{task}", get(describe_task))
        .route("/v1/tasks/{task}/predict", post(predict))
        // axum cannot match a parameter followed by `:predict`: the whole segment is taken and
        // split in the handler.
        .route("/v1/models/{model}", post(kserve_predict))
        .route("/openapi.json", get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }))
        .with_state(face)
        .merge(extra)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such route (see /openapi.json)".into()) })
        .method_not_allowed_fallback(|| async {
            let message = "the route takes another method (see /openapi.json)".to_owned();
            error(StatusCode::METHOD_NOT_ALLOWED, "UNIMPLEMENTED", message)
        })
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(RequestDecompressionLayer::new())
        .layer(CompressionLayer::new());
    // Only with an age set: the check is one more layer on every call.
    match limits.max_connection_age {
        Some(age) => router.layer(axum::middleware::from_fn_with_state(age, age_limit)),
        None => router,
    }
}

/// Closes an HTTP/1.1 connection past its age after this response (`Connection: close`), so
/// keep-alive callers behind a Service reconnect and reach new replicas. The jitter (up to 10%,
/// from the peer's port) keeps connections opened together from closing together. HTTP/2
/// connections on this port are not aged.
async fn age_limit(
    State(age): State<Duration>,
    ConnectInfo(conn): ConnectInfo<ConnInfo>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let http1 = request.version() == axum::http::Version::HTTP_11;
    let mut response = next.run(request).await;
    let jitter = conn.remote_addr.map_or(0, |a| u32::from(a.port()) % 100);
    if http1 && conn.accepted.elapsed() >= age.mul_f64(1.0 - f64::from(jitter) / 1000.0) {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The `authorization` header's value, if any.
pub fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
}

/// The HTTP status of a kind of failure: this protocol's row of the one error table.
pub fn status(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::InvalidArgument => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
        ErrorKind::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        // The caller went away; nobody reads this answer.
        ErrorKind::Cancelled => StatusCode::REQUEST_TIMEOUT,
        ErrorKind::Internal | ErrorKind::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The JSON body of every error: the gRPC code name, the message, and for a bad row its index
/// and field.
#[derive(Serialize)]
struct ErrorBody {
    code: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    row: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
}

fn error(status: StatusCode, code: &'static str, message: String) -> Response {
    (status, Json(ErrorBody { code, message, row: None, field: None })).into_response()
}

fn core_error(e: PredictError) -> Response {
    let (row, field) = match &e {
        PredictError::BadRow(r) => (Some(r.row_index), Some(r.field.clone())),
        PredictError::StickyKey { row, field, .. } => (Some(*row), Some(field.clone())),
        _ => (None, None),
    };
    let kind = e.kind();
    let mut response =
        (status(kind), Json(ErrorBody { code: kind.name(), message: e.to_string(), row, field })).into_response();
    if kind == ErrorKind::Unauthenticated {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// The request body as `T`, or the answer to a body that cannot be read (over the size limit:
/// 413; not valid gzip: 400) or is not a valid request (400 naming the problem).
// The error is the finished answer, built only when a call fails: its size costs nothing.
#[allow(clippy::result_large_err)]
fn parse<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<T, Response> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            let message = format!("body: over the limit of {limit} bytes (max_message_bytes)");
            return error(StatusCode::PAYLOAD_TOO_LARGE, "RESOURCE_EXHAUSTED", message);
        }
        error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", format!("body: {}", rejection.body_text()))
    })?;
    serde_json::from_slice(&body).map_err(|e| error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", format!("body: {e}")))
}

/// `POST /v1/tasks/{task}/predict`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PredictBody {
    rows: Vec<JsonRow>,
    /// One id per row, echoed in its prediction and named in errors.
    #[serde(default)]
    row_ids: Vec<String>,
    #[serde(default)]
    request_id: String,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    compare_versions: Vec<String>,
    /// Scorecards: reason codes per prediction.
    #[serde(default)]
    reason_codes: u32,
}

/// `POST /v1/models/{task}:predict`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KserveBody {
    instances: Vec<JsonRow>,
}

#[derive(Serialize)]
struct PredictAnswer<'a> {
    task: &'a str,
    version: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    request_id: &'a str,
    class_names: &'a [String],
    predictions: Vec<JsonPrediction<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    comparisons: Vec<JsonComparison<'a>>,
}

#[derive(Serialize)]
struct JsonComparison<'a> {
    version: &'a str,
    predictions: Vec<JsonPrediction<'a>>,
}

#[derive(Serialize)]
struct KserveAnswer<'a> {
    predictions: Vec<JsonPrediction<'a>>,
}

/// One row's answer: label and probabilities for a classifier, values for a regressor.
#[derive(Serialize)]
struct JsonPrediction<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    row_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    probabilities: Vec<f32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    values: Vec<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    score: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    reasons: Vec<JsonReason>,
}

#[derive(Serialize)]
struct JsonReason {
    field: String,
    bin: String,
    points: f64,
    best_points: f64,
}

fn to_json<'a>(p: Prediction, row: &'a JsonRow, classes: &'a [String]) -> JsonPrediction<'a> {
    JsonPrediction {
        row_id: &row.row_id,
        label: p.class.map(|c| classes[c].as_str()),
        probabilities: p.probabilities,
        values: p.values,
        score: p.score,
        reasons: p
            .reasons
            .into_iter()
            .map(|r| JsonReason { field: r.field, bin: r.bin, points: r.points, best_points: r.best_points })
            .collect(),
    }
}

async fn predict(
    State(face): State<Face>,
    ConnectInfo(conn): ConnectInfo<ConnInfo>,
    headers: HeaderMap,
    Path(task): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut request: PredictBody = match parse(body, face.limits.max_body_bytes) {
        Ok(r) => r,
        Err(response) => return response,
    };
    if !request.row_ids.is_empty() {
        if request.row_ids.len() != request.rows.len() {
            let message = format!(
                "row_ids: {} ids for {} rows (give one per row, or none)",
                request.row_ids.len(),
                request.rows.len()
            );
            return error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", message);
        }
        for (row, id) in request.rows.iter_mut().zip(std::mem::take(&mut request.row_ids)) {
            row.row_id = id;
        }
    }
    let call = Call {
        task: &task,
        rows: &request.rows,
        request_id: &request.request_id,
        version: request.version.as_deref(),
        compare_versions: &request.compare_versions,
        reason_codes: request.reason_codes,
    };
    let answer = match face.score(Method::JsonPredict, &conn, &headers, call).await {
        Ok(a) => a,
        Err(response) => return response,
    };
    let classes = answer.bundle.class_labels();
    let comparisons = answer
        .comparisons
        .iter()
        .map(|c| JsonComparison {
            version: &c.bundle.version,
            predictions: c
                .predictions
                .iter()
                .zip(&request.rows)
                .map(|(p, row)| to_json(p.clone(), row, c.bundle.class_labels()))
                .collect(),
        })
        .collect();
    let predictions =
        answer.predictions.into_iter().zip(&request.rows).map(|(p, row)| to_json(p, row, classes)).collect();
    Json(PredictAnswer {
        task: &task,
        version: &answer.bundle.version,
        request_id: &request.request_id,
        class_names: classes,
        predictions,
        comparisons,
    })
    .into_response()
}

async fn kserve_predict(
    State(face): State<Face>,
    ConnectInfo(conn): ConnectInfo<ConnInfo>,
    headers: HeaderMap,
    Path(model): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(task) = model.strip_suffix(":predict") else {
        let message = format!("no such route: /v1/models/{} (the verb is `:predict`)", Echo(&model));
        return error(StatusCode::NOT_FOUND, "NOT_FOUND", message);
    };
    let request: KserveBody = match parse(body, face.limits.max_body_bytes) {
        Ok(r) => r,
        Err(response) => return response,
    };
    let call =
        Call { task, rows: &request.instances, request_id: "", version: None, compare_versions: &[], reason_codes: 0 };
    let answer = match face.score(Method::KserveV1Predict, &conn, &headers, call).await {
        Ok(a) => a,
        Err(response) => return response,
    };
    let classes = answer.bundle.class_labels();
    let predictions =
        answer.predictions.into_iter().zip(&request.instances).map(|(p, row)| to_json(p, row, classes)).collect();
    Json(KserveAnswer { predictions }).into_response()
}

impl Face {
    /// Admits the call, scores it in the core, and maps a failure to its response.
    async fn score(
        &self,
        method: Method,
        conn: &ConnInfo,
        headers: &HeaderMap,
        call: Call<'_, JsonRow>,
    ) -> Result<crate::predict::Answer, Response> {
        let _admitted =
            self.admit().map_err(|message| error(StatusCode::TOO_MANY_REQUESTS, "RESOURCE_EXHAUSTED", message))?;
        let traceparent = headers.get("traceparent").and_then(|v| v.to_str().ok());
        let mut ctx = CallContext::new(method).with_peer(conn.remote_addr).with_traceparent(traceparent);
        ctx.deadline = Some(ctx.started + self.limits.request_timeout);
        self.predictor.authenticate(&mut ctx, authorization(headers), conn.identities()).map_err(core_error)?;
        self.predictor.predict(&ctx, call).await.map_err(core_error)
    }
}

#[derive(Serialize)]
struct TaskSummary {
    task: String,
    serving: bool,
    version: Option<String>,
    loaded_versions: Vec<String>,
    last_error: Option<String>,
}

/// `GET /v1/tasks`.
async fn list_tasks(
    State(face): State<Face>,
    ConnectInfo(conn): ConnectInfo<ConnInfo>,
    headers: HeaderMap,
) -> Response {
    let caller = match face.predictor.caller(authorization(&headers), conn.identities()) {
        Ok(caller) => caller,
        Err(e) => return core_error(e),
    };
    let draining = face.readiness.is_draining();
    let tasks: Vec<TaskSummary> = face
        .registry
        .reports()
        .into_iter()
        .filter(|r| caller.as_ref().is_none_or(|c| c.may_call(&r.task)))
        .map(|r| TaskSummary {
            serving: r.live.is_some() && !draining,
            version: r.live.as_ref().map(|b| b.version.clone()),
            loaded_versions: r.loaded_versions(),
            last_error: r.last_error.as_ref().map(|e| e.to_string()),
            task: r.task,
        })
        .collect();
    Json(serde_json::json!({ "tasks": tasks })).into_response()
}

/// `GET /v1/tasks/{task}`: the live version and its schema, as GetVersion gives them.
async fn describe_task(
    State(face): State<Face>,
    ConnectInfo(conn): ConnectInfo<ConnInfo>,
    headers: HeaderMap,
    Path(task): Path<String>,
) -> Response {
    if let Err(e) = face.predictor.check_reader(authorization(&headers), conn.identities(), &task) {
        return core_error(e);
    }
    let bundle = match face.registry.get(&task) {
        Ok(b) => b,
        Err(e) => return core_error(PredictError::from(e)),
    };
    let report = face.registry.report(&task);
    let fields: Vec<serde_json::Value> = bundle.schema.fields().iter().map(|f| field_json(field_info(f))).collect();
    let rollout = report.as_ref().and_then(|r| r.policy.as_deref()).map(|p| {
        let p = rollout_policy(p);
        let split: Vec<_> =
            p.split.iter().map(|s| serde_json::json!({ "version": s.version, "weight": s.weight })).collect();
        serde_json::json!({
            "sha256": p.sha256,
            "shadow_versions": p.shadow_versions,
            "split": split,
            "sticky_by": (!p.sticky_by.is_empty()).then_some(p.sticky_by),
        })
    });
    Json(serde_json::json!({
        "task": task,
        "version": bundle.version,
        "kind": bundle.config.kind.name(),
        "model_type": bundle.config.model_type,
        "class_names": bundle.class_labels(),
        "manifest_sha256": bundle.manifest_sha256,
        "loaded_versions": report.as_ref().map(|r| r.loaded_versions()).unwrap_or_default(),
        "fields": fields,
        "rollout": rollout,
    }))
    .into_response()
}

/// A schema field as JSON, from the one description both faces give.
fn field_json(f: pb::FieldInfo) -> serde_json::Value {
    let default = f.default.and_then(|v| v.kind).map(|k| match k {
        pb::value::Kind::Number(x) => serde_json::json!(x),
        pb::value::Kind::Integer(i) => serde_json::json!(i),
        pb::value::Kind::Text(s) => serde_json::json!(s),
        pb::value::Kind::Flag(b) => serde_json::json!(b),
    });
    let mut out = serde_json::json!({ "name": f.name, "type": f.r#type, "required": f.required });
    let map = out.as_object_mut().expect("built as an object");
    if let Some(d) = default {
        map.insert("default".into(), d);
    }
    if let Some(min) = f.min {
        map.insert("min".into(), serde_json::json!(min));
    }
    if let Some(max) = f.max {
        map.insert("max".into(), serde_json::json!(max));
    }
    if !f.categories.is_empty() {
        map.insert("categories".into(), serde_json::json!(f.categories));
        map.insert("unknown".into(), serde_json::json!(f.unknown));
    }
    out
}

/// One row of named features as JSON gives it, kept in the order sent.
#[derive(Debug, Default)]
struct JsonRow {
    row_id: String,
    features: Vec<(String, JsonValue)>,
}

/// A JSON feature value: scalars as they are; arrays and objects only to be refused by name.
#[derive(Debug)]
enum JsonValue {
    Null,
    Bool(bool),
    Integer(i64),
    Number(f64),
    Text(String),
    Other(&'static str),
}

impl RowView for JsonRow {
    fn row_id(&self) -> &str {
        &self.row_id
    }

    fn features(&self) -> impl Iterator<Item = (&str, Option<Value<'_>>)> {
        self.features.iter().map(|(name, value)| {
            let value = match value {
                JsonValue::Null => None,
                JsonValue::Bool(b) => Some(Value::Bool(*b)),
                JsonValue::Integer(i) => Some(Value::Integer(*i)),
                JsonValue::Number(x) => Some(Value::Number(*x)),
                JsonValue::Text(s) => Some(Value::Text(s)),
                JsonValue::Other(kind) => Some(Value::Other(kind)),
            };
            (name.as_str(), value)
        })
    }
}

impl<'de> Deserialize<'de> for JsonRow {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<JsonRow, D::Error> {
        struct RowVisitor;
        impl<'de> Visitor<'de> for RowVisitor {
            type Value = JsonRow;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a row: an object of feature names to values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonRow, A::Error> {
                let mut features = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some(entry) = map.next_entry::<String, JsonValue>()? {
                    features.push(entry);
                }
                Ok(JsonRow { row_id: String::new(), features })
            }
        }
        deserializer.deserialize_map(RowVisitor)
    }
}

impl<'de> Deserialize<'de> for JsonValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<JsonValue, D::Error> {
        struct ValueVisitor;
        impl<'de> Visitor<'de> for ValueVisitor {
            type Value = JsonValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a feature value")
            }
            fn visit_unit<E>(self) -> Result<JsonValue, E> {
                Ok(JsonValue::Null)
            }
            fn visit_none<E>(self) -> Result<JsonValue, E> {
                Ok(JsonValue::Null)
            }
            fn visit_bool<E>(self, b: bool) -> Result<JsonValue, E> {
                Ok(JsonValue::Bool(b))
            }
            fn visit_i64<E>(self, i: i64) -> Result<JsonValue, E> {
                Ok(JsonValue::Integer(i))
            }
            fn visit_u64<E>(self, u: u64) -> Result<JsonValue, E> {
                // Past i64, an integer is kept as the number it is; a range check names it.
                Ok(i64::try_from(u).map_or(JsonValue::Number(u as f64), JsonValue::Integer))
            }
            fn visit_f64<E>(self, x: f64) -> Result<JsonValue, E> {
                Ok(JsonValue::Number(x))
            }
            fn visit_str<E>(self, s: &str) -> Result<JsonValue, E> {
                Ok(JsonValue::Text(s.to_owned()))
            }
            fn visit_string<E>(self, s: String) -> Result<JsonValue, E> {
                Ok(JsonValue::Text(s))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<JsonValue, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(JsonValue::Other("array"))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonValue, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(JsonValue::Other("object"))
            }
        }
        deserializer.deserialize_any(ValueVisitor)
    }
}
