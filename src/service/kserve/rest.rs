//! `/v2/...` on the HTTP port: the V2 protocol's REST binding, with JSON tensors and Triton's
//! binary tensor data extension (`Inference-Header-Content-Length`: the JSON header, then each
//! binary input's bytes in input order; outputs the same way when asked for), which is
//! tritonclient's HTTP default.
//!
//! Errors are the protocol's shape, `{"error": "..."}`, with the HTTP status of the one error
//! table ([`http::status`]).

use axum::{
    Json, Router,
    body::Bytes,
    extract::{ConnectInfo, Path, State, rejection::BytesRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{
    Deserialize, Deserializer, Serialize,
    de::{SeqAccess, Visitor},
};
use serde_json::{Map, Value as JsonValue};

use super::{
    EXTENSIONS, PLATFORM, SERVER_NAME, metadata, model, model_ready,
    tensor::{self, Columns, DataType, Output, OutputData, Scalar, Values},
};
use crate::{
    bundle::Bundle,
    predict::{CallContext, ErrorKind, Method, PredictError, Request as Call},
    schema::Echo,
    service::{
        http::{self, Face},
        tls::ConnInfo,
    },
};

/// The header that splits a binary request or response: the length of its JSON part.
const HEADER_LENGTH: &str = "inference-header-content-length";

/// The `/v2` routes, over what the HTTP port's faces share (the admission limit among it).
pub fn router(face: Face) -> Router {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(|| async { Json(serde_json::json!({ "live": true })) }))
        .route("/v2/health/ready", get(server_ready))
        .route("/v2/models/{model}", get(model_metadata))
        .route("/v2/models/{model}/versions/{version}", get(model_metadata))
        .route("/v2/models/{model}/ready", get(ready))
        .route("/v2/models/{model}/versions/{version}/ready", get(ready))
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer))
        .with_state(face)
}

/// The protocol's error answer: `{"error": message}`.
fn reply(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// A core error as the protocol's answer, with the status of the one error table.
fn error(e: PredictError) -> Response {
    let kind = e.kind();
    let mut response = reply(http::status(kind), e.to_string());
    if kind == ErrorKind::Unauthenticated {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// `{model}` and, on the versioned routes, `{version}`.
#[derive(Deserialize)]
struct ModelPath {
    model: String,
    #[serde(default)]
    version: String,
}

async fn server_metadata() -> Response {
    Json(serde_json::json!({
        "name": SERVER_NAME,
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": EXTENSIONS,
    }))
    .into_response()
}

async fn server_ready(State(face): State<Face>) -> Response {
    let ready = face.readiness.is_ready();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(serde_json::json!({ "ready": ready }))).into_response()
}

/// The caller may read about `task` (its credentials, and its task list).
fn reader(face: &Face, conn: &ConnInfo, headers: &HeaderMap, task: &str) -> Result<(), PredictError> {
    face.predictor.check_reader(http::authorization(headers), conn.identities(), task)
}

async fn ready(
    State(face): State<Face>,
    ConnectInfo(conn): ConnectInfo<ConnInfo>,
    headers: HeaderMap,
    Path(path): Path<ModelPath>,
) -> Response {
    let ready = reader(&face, &conn, &headers, &path.model)
        .and_then(|()| model_ready(&face.registry, face.readiness.is_draining(), &path.model, &path.version));
    match ready {
        Ok(ready) => {
            let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            (status, Json(serde_json::json!({ "name": path.model, "ready": ready }))).into_response()
        }
        Err(e) => error(e),
    }
}

async fn model_metadata(
    State(face): State<Face>,
    ConnectInfo(conn): ConnectInfo<ConnInfo>,
    headers: HeaderMap,
    Path(path): Path<ModelPath>,
) -> Response {
    let bundle = match reader(&face, &conn, &headers, &path.model)
        .and_then(|()| model(&face.registry, &path.model, &path.version))
    {
        Ok(b) => b,
        Err(e) => return error(e),
    };
    let m = metadata(&face.registry, &path.model, &bundle);
    let tensors = |ts: Vec<super::TensorMetadata>| -> Vec<JsonValue> {
        ts.into_iter()
            .map(|t| serde_json::json!({ "name": t.name, "datatype": t.datatype.name(), "shape": t.shape }))
            .collect()
    };
    Json(serde_json::json!({
        "name": m.name,
        "versions": m.versions,
        "platform": PLATFORM,
        "inputs": tensors(m.inputs),
        "outputs": tensors(m.outputs),
    }))
    .into_response()
}

/// An inference request's JSON part. Fields the protocol may add are ignored.
#[derive(Deserialize)]
struct InferBody {
    #[serde(default)]
    id: String,
    #[serde(default)]
    parameters: Map<String, JsonValue>,
    inputs: Vec<InputTensor>,
    #[serde(default)]
    outputs: Vec<RequestedOutput>,
}

#[derive(Deserialize)]
struct InputTensor {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, JsonValue>,
    #[serde(default)]
    data: Option<Flat>,
}

#[derive(Deserialize)]
struct RequestedOutput {
    name: String,
    #[serde(default)]
    parameters: Map<String, JsonValue>,
}

/// Tensor data in JSON, flat or nested row-major: read flat.
struct Flat(Vec<Scalar>);

impl<'de> Deserialize<'de> for Flat {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Flat, D::Error> {
        struct Into<'v>(&'v mut Vec<Scalar>);
        impl<'de> serde::de::DeserializeSeed<'de> for Into<'_> {
            type Value = ();
            fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
                d.deserialize_any(self)
            }
        }
        impl<'de> Visitor<'de> for Into<'_> {
            type Value = ();
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("tensor data: an array of numbers, booleans, strings or nulls (nested or flat)")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
                while seq.next_element_seed(Into(self.0))?.is_some() {}
                Ok(())
            }
            fn visit_unit<E>(self) -> Result<(), E> {
                self.0.push(Scalar::Null);
                Ok(())
            }
            fn visit_bool<E>(self, b: bool) -> Result<(), E> {
                self.0.push(Scalar::Bool(b));
                Ok(())
            }
            fn visit_i64<E>(self, i: i64) -> Result<(), E> {
                self.0.push(Scalar::Integer(i));
                Ok(())
            }
            fn visit_u64<E>(self, u: u64) -> Result<(), E> {
                self.0.push(i64::try_from(u).map_or(Scalar::Number(u as f64), Scalar::Integer));
                Ok(())
            }
            fn visit_f64<E>(self, x: f64) -> Result<(), E> {
                self.0.push(Scalar::Number(x));
                Ok(())
            }
            fn visit_str<E>(self, s: &str) -> Result<(), E> {
                self.0.push(Scalar::Text(s.to_owned()));
                Ok(())
            }
        }
        let mut out = Vec::new();
        serde::de::DeserializeSeed::deserialize(Into(&mut out), deserializer)?;
        Ok(Flat(out))
    }
}

/// A JSON element's fit for `t`: the kind of element each datatype takes (null: missing).
fn json_fits(t: DataType, s: &Scalar) -> bool {
    match (t, s) {
        (_, Scalar::Null) => true,
        (DataType::Bool, Scalar::Bool(_)) => true,
        (DataType::F32 | DataType::F64, Scalar::Integer(_) | Scalar::Number(_)) => true,
        (DataType::Bytes, Scalar::Text(_)) => true,
        (DataType::Bool | DataType::F32 | DataType::F64 | DataType::Bytes, _) => false,
        (_, Scalar::Integer(_)) => true,
        _ => false,
    }
}

fn scalar_name(s: &Scalar) -> &'static str {
    match s {
        Scalar::Null => "null",
        Scalar::Bool(_) => "a boolean",
        Scalar::Integer(_) => "an integer",
        Scalar::Number(_) => "a number",
        Scalar::Text(_) => "a string",
    }
}

fn flag(parameters: &Map<String, JsonValue>, name: &str) -> bool {
    parameters.get(name).and_then(JsonValue::as_bool).unwrap_or(false)
}

/// The body split in its JSON part and binary part.
fn split_body<'b>(headers: &HeaderMap, body: &'b [u8]) -> Result<(&'b [u8], &'b [u8]), PredictError> {
    let Some(value) = headers.get(HEADER_LENGTH) else { return Ok((body, &[])) };
    let length = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .ok_or_else(|| PredictError::Tensors("Inference-Header-Content-Length: not a byte count".into()))?;
    if length > body.len() {
        return Err(PredictError::Tensors(format!(
            "Inference-Header-Content-Length: {length} exceeds the body's {} bytes",
            body.len()
        )));
    }
    Ok(body.split_at(length))
}

fn columns<'r>(
    task: &str,
    bundle: &Bundle,
    body: &'r InferBody,
    mut binary: &'r [u8],
) -> Result<Columns<'r>, PredictError> {
    if body.inputs.is_empty() {
        return Err(PredictError::Tensors("inputs: at least one input tensor is required".into()));
    }
    let mut columns = Columns::with_capacity(body.inputs.len());
    for input in &body.inputs {
        let name = input.name.as_str();
        let t = tensor::check_input(task, bundle, name, &input.datatype)?;
        let size = input.parameters.get("binary_data_size");
        let values = match (&input.data, size) {
            (Some(_), Some(_)) => {
                return Err(PredictError::Tensors(format!(
                    "input `{}`: has both data and binary_data_size (give one)",
                    Echo(name)
                )));
            }
            (None, None) => return Err(PredictError::Tensors(format!("input `{}`: no data", Echo(name)))),
            (Some(Flat(data)), None) => {
                if let Some((i, s)) = data.iter().enumerate().find(|(_, s)| !json_fits(t, s)) {
                    return Err(PredictError::Tensors(format!(
                        "input `{}`: element {i} is {}, which a {} tensor cannot hold",
                        Echo(name),
                        scalar_name(s),
                        t.name()
                    )));
                }
                Values::Json(data)
            }
            (None, Some(size)) => {
                let size = size.as_u64().and_then(|s| usize::try_from(s).ok()).ok_or_else(|| {
                    PredictError::Tensors(format!("input `{}`: binary_data_size is not a byte count", Echo(name)))
                })?;
                if size > binary.len() {
                    return Err(PredictError::Tensors(format!(
                        "input `{}`: binary_data_size {size} exceeds the {} binary bytes left",
                        Echo(name),
                        binary.len()
                    )));
                }
                let (data, rest) = binary.split_at(size);
                binary = rest;
                match t.width() {
                    Some(w) if data.len() % w != 0 => {
                        return Err(PredictError::Tensors(format!(
                            "input `{}`: {} binary bytes are not a whole number of {} elements ({w} bytes each)",
                            Echo(name),
                            data.len(),
                            t.name()
                        )));
                    }
                    Some(_) => Values::Raw(t, data),
                    None => Values::Text(tensor::split_bytes(name, data)?),
                }
            }
        };
        columns.push(name, &input.shape, values)?;
    }
    if !binary.is_empty() {
        return Err(PredictError::Tensors(format!(
            "body: {} binary bytes follow the last input that takes any",
            binary.len()
        )));
    }
    Ok(columns)
}

#[derive(Serialize)]
struct OutputTensor<'a> {
    name: &'static str,
    datatype: &'static str,
    shape: Vec<i64>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    parameters: Map<String, JsonValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<JsonData<'a>>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum JsonData<'a> {
    Text(Vec<&'a str>),
    F32(Vec<f32>),
    F64(Vec<f64>),
}

#[derive(Serialize)]
struct InferAnswer<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    id: &'a str,
    outputs: Vec<OutputTensor<'a>>,
}

async fn infer(
    State(face): State<Face>,
    ConnectInfo(conn): ConnectInfo<ConnInfo>,
    headers: HeaderMap,
    Path(path): Path<ModelPath>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let _admitted = match face.admit() {
        Ok(guard) => guard,
        Err(message) => return reply(StatusCode::TOO_MANY_REQUESTS, message),
    };
    let body = match body {
        Ok(b) => b,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            let message = format!("body: over the limit of {} bytes (max_message_bytes)", face.limits.max_body_bytes);
            return reply(StatusCode::PAYLOAD_TOO_LARGE, message);
        }
        Err(rejection) => return reply(StatusCode::BAD_REQUEST, format!("body: {}", rejection.body_text())),
    };
    match score(&face, &conn, &headers, &path, &body).await {
        Ok(response) => response,
        Err(e) => error(e),
    }
}

/// The request's JSON part, parsed, and its binary part.
fn read_body<'b>(headers: &HeaderMap, body: &'b [u8]) -> Result<(InferBody, &'b [u8]), PredictError> {
    let (json, binary) = split_body(headers, body)?;
    let request = serde_json::from_slice(json).map_err(|e| PredictError::Tensors(format!("body: {e}")))?;
    Ok((request, binary))
}

/// The outputs a call asks for (each with whether it is sent binary) and its input tensors,
/// checked against the model it names.
fn read<'r>(
    face: &Face,
    ctx: &CallContext,
    path: &ModelPath,
    request: &'r InferBody,
    binary: &'r [u8],
) -> Result<(Vec<(Output, bool)>, Columns<'r>), PredictError> {
    let task = path.model.as_str();
    face.predictor.check_task(ctx, task)?;
    let bundle = model(&face.registry, task, &path.version)?;
    let all_binary = flag(&request.parameters, "binary_data_output");
    let outputs = if request.outputs.is_empty() {
        Output::all(bundle.config.kind).iter().map(|o| (*o, all_binary)).collect()
    } else {
        let requested = |o: &RequestedOutput| -> Result<(Output, bool), PredictError> {
            Ok((Output::parse(task, &bundle, &o.name)?, all_binary || flag(&o.parameters, "binary_data")))
        };
        request.outputs.iter().map(requested).collect::<Result<_, _>>()?
    };
    Ok((outputs, columns(task, &bundle, request, binary)?))
}

async fn score(
    face: &Face,
    conn: &ConnInfo,
    headers: &HeaderMap,
    path: &ModelPath,
    body: &[u8],
) -> Result<Response, PredictError> {
    let traceparent = headers.get("traceparent").and_then(|v| v.to_str().ok());
    let mut ctx = CallContext::new(Method::V2Infer).with_peer(conn.remote_addr).with_traceparent(traceparent);
    ctx.deadline = Some(ctx.started + face.limits.request_timeout);
    face.predictor.authenticate(&mut ctx, http::authorization(headers), conn.identities())?;
    let task = path.model.as_str();
    let refuse = |id: &str, e: PredictError| face.predictor.refuse(&ctx, task, id, e);
    let (request, binary) = read_body(headers, body).map_err(|e| refuse("", e))?;
    let (outputs, columns) = read(face, &ctx, path, &request, binary).map_err(|e| refuse(&request.id, e))?;
    let rows = columns.rows();
    let call = Call {
        task,
        rows: &rows,
        request_id: &request.id,
        version: (!path.version.is_empty()).then_some(path.version.as_str()),
        compare_versions: &[],
        reason_codes: 0,
    };
    let answer = face.predictor.predict(&ctx, call).await?;
    let mut tail: Vec<u8> = Vec::new();
    let mut tensors = Vec::with_capacity(outputs.len());
    for (output, binary) in outputs {
        let (shape, data) = tensor::output_data(output, &answer.bundle, &answer.predictions);
        let mut parameters = Map::new();
        let data = if binary {
            let bytes = data.to_raw();
            parameters.insert("binary_data_size".into(), bytes.len().into());
            tail.extend_from_slice(&bytes);
            None
        } else {
            Some(match data {
                OutputData::Text(v) => JsonData::Text(v),
                OutputData::F32(v) => JsonData::F32(v),
                OutputData::F64(v) => JsonData::F64(v),
            })
        };
        tensors.push(OutputTensor { name: output.name(), datatype: output.datatype().name(), shape, parameters, data });
    }
    let answer =
        InferAnswer { model_name: task, model_version: &answer.bundle.version, id: &request.id, outputs: tensors };
    // Plain structs of strings and numbers: serializing them cannot fail.
    let mut out = serde_json::to_vec(&answer).expect("the answer serializes");
    if tail.is_empty() {
        return Ok(([(header::CONTENT_TYPE, "application/json")], out).into_response());
    }
    let length = out.len();
    out.extend_from_slice(&tail);
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream")),
            (header::HeaderName::from_static(HEADER_LENGTH), HeaderValue::from(length)),
        ],
        out,
    )
        .into_response())
}
