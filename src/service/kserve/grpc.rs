//! `inference.GRPCInferenceService` on the gRPC port: the V2 protocol's health, metadata and
//! `ModelInfer`, beside `modeld.v1` and behind the same transport layers (admission, deadline,
//! connection limits, TLS).
//!
//! Inputs come as typed contents or as `raw_input_contents` (tritonclient's default); the
//! answer takes the form the request used, so a client reading raw outputs gets raw outputs.

use tonic::{Request, Response, Status};

use super::{
    EXTENSIONS, PLATFORM, SERVER_NAME, metadata, model, model_ready,
    tensor::{self, Columns, DataType, Output, OutputData, Values},
};
use crate::{
    bundle::Bundle,
    pb::v2::{self as pb, model_infer_request::InferInputTensor},
    predict::{CallContext, Method, PredictError, Predictor, Request as Call},
    registry::Registry,
    schema::Echo,
    service::{
        grpc::convert::{call_context, credentials},
        health::Readiness,
    },
};

/// Handler state. Cloning is shallow.
#[derive(Clone)]
pub struct V2Service {
    predictor: Predictor,
    registry: Registry,
    readiness: Readiness,
}

impl V2Service {
    pub fn new(predictor: Predictor, registry: Registry, readiness: Readiness) -> V2Service {
        V2Service { predictor, registry, readiness }
    }

    /// The outputs a call asks for and its input tensors, checked against the model it names.
    fn read<'r>(
        &self,
        ctx: &CallContext,
        request: &'r pb::ModelInferRequest,
    ) -> Result<(Vec<Output>, Columns<'r>), PredictError> {
        let task = request.model_name.as_str();
        self.predictor.check_task(ctx, task)?;
        let bundle = model(&self.registry, task, &request.model_version)?;
        Ok((requested(task, &bundle, request)?, columns(task, &bundle, request)?))
    }

    /// The caller may read about `task` (its credentials, and its task list).
    fn reader<T>(&self, request: &Request<T>, task: &str) -> Result<(), Status> {
        let (authorization, identities) = credentials(request);
        Ok(self.predictor.check_reader(authorization, identities, task)?)
    }
}

/// The request's input tensors, checked against `bundle`'s schema and the shapes they declare.
fn columns<'r>(task: &str, bundle: &Bundle, request: &'r pb::ModelInferRequest) -> Result<Columns<'r>, PredictError> {
    if request.inputs.is_empty() {
        return Err(PredictError::Tensors("inputs: at least one input tensor is required".into()));
    }
    let raw = &request.raw_input_contents;
    if !raw.is_empty() && raw.len() != request.inputs.len() {
        return Err(PredictError::Tensors(format!(
            "raw_input_contents: {} entries for {} inputs (give one per input, or none)",
            raw.len(),
            request.inputs.len()
        )));
    }
    let mut columns = Columns::with_capacity(request.inputs.len());
    for (i, input) in request.inputs.iter().enumerate() {
        let name = input.name.as_str();
        let t = tensor::check_input(task, bundle, name, &input.datatype)?;
        let values = match raw.get(i) {
            Some(data) => {
                if input.contents.is_some() {
                    return Err(PredictError::Tensors(format!(
                        "input `{}`: has contents while the request uses raw_input_contents (use one form for \
                         every input)",
                        Echo(name)
                    )));
                }
                raw_values(name, t, data)?
            }
            None => typed_values(name, t, input)?,
        };
        columns.push(name, &input.shape, values)?;
    }
    Ok(columns)
}

fn raw_values<'r>(name: &str, t: DataType, data: &'r [u8]) -> Result<Values<'r>, PredictError> {
    match t.width() {
        Some(w) if data.len() % w != 0 => Err(PredictError::Tensors(format!(
            "input `{}`: {} raw bytes are not a whole number of {} elements ({w} bytes each)",
            Echo(name),
            data.len(),
            t.name()
        ))),
        Some(_) => Ok(Values::Raw(t, data)),
        None => Ok(Values::Text(tensor::split_bytes(name, data)?)),
    }
}

/// The contents field the datatype names; data in any other field is refused by name.
fn typed_values<'r>(name: &str, t: DataType, input: &'r InferInputTensor) -> Result<Values<'r>, PredictError> {
    static EMPTY: pb::InferTensorContents = pb::InferTensorContents {
        bool_contents: Vec::new(),
        int_contents: Vec::new(),
        int64_contents: Vec::new(),
        uint_contents: Vec::new(),
        uint64_contents: Vec::new(),
        fp32_contents: Vec::new(),
        fp64_contents: Vec::new(),
        bytes_contents: Vec::new(),
    };
    let c = input.contents.as_ref().unwrap_or(&EMPTY);
    let (values, field) = match t {
        DataType::Bool => (Values::Bool(&c.bool_contents), "bool_contents"),
        DataType::I8 | DataType::I16 | DataType::I32 => (Values::I32(&c.int_contents), "int_contents"),
        DataType::I64 => (Values::I64(&c.int64_contents), "int64_contents"),
        DataType::U8 | DataType::U16 | DataType::U32 => (Values::U32(&c.uint_contents), "uint_contents"),
        DataType::U64 => (Values::U64(&c.uint64_contents), "uint64_contents"),
        DataType::F32 => (Values::F32(&c.fp32_contents), "fp32_contents"),
        DataType::F64 => (Values::F64(&c.fp64_contents), "fp64_contents"),
        DataType::Bytes => {
            let texts = c.bytes_contents.iter().enumerate().map(|(i, b)| tensor::utf8(name, i, b));
            (Values::Text(texts.collect::<Result<_, _>>()?), "bytes_contents")
        }
    };
    let all = c.bool_contents.len()
        + c.int_contents.len()
        + c.int64_contents.len()
        + c.uint_contents.len()
        + c.uint64_contents.len()
        + c.fp32_contents.len()
        + c.fp64_contents.len()
        + c.bytes_contents.len();
    if all != values.len() {
        return Err(PredictError::Tensors(format!(
            "input `{}`: datatype {} carries its data in {field}; other contents fields are set",
            Echo(name),
            t.name()
        )));
    }
    Ok(values)
}

/// The outputs the request asks for (all the model's when none are named), checked by name.
fn requested(task: &str, bundle: &Bundle, request: &pb::ModelInferRequest) -> Result<Vec<Output>, PredictError> {
    if request.outputs.is_empty() {
        return Ok(Output::all(bundle.config.kind).to_vec());
    }
    request.outputs.iter().map(|o| Output::parse(task, bundle, &o.name)).collect()
}

fn tensor_metadata(t: super::TensorMetadata) -> pb::model_metadata_response::TensorMetadata {
    pb::model_metadata_response::TensorMetadata { name: t.name, datatype: t.datatype.name().to_owned(), shape: t.shape }
}

#[tonic::async_trait]
impl pb::grpc_inference_service_server::GrpcInferenceService for V2Service {
    async fn server_live(&self, _: Request<pb::ServerLiveRequest>) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse { ready: self.readiness.is_ready() }))
    }

    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        self.reader(&request, &request.get_ref().name)?;
        let r = request.get_ref();
        let ready = model_ready(&self.registry, self.readiness.is_draining(), &r.name, &r.version)?;
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: SERVER_NAME.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            extensions: EXTENSIONS.iter().map(|e| (*e).to_owned()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        self.reader(&request, &request.get_ref().name)?;
        let r = request.get_ref();
        let bundle = model(&self.registry, &r.name, &r.version)?;
        let m = metadata(&self.registry, &r.name, &bundle);
        Ok(Response::new(pb::ModelMetadataResponse {
            name: m.name,
            versions: m.versions,
            platform: PLATFORM.to_owned(),
            inputs: m.inputs.into_iter().map(tensor_metadata).collect(),
            outputs: m.outputs.into_iter().map(tensor_metadata).collect(),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let mut ctx = call_context(Method::ModelInfer, &request);
        let (authorization, identities) = credentials(&request);
        self.predictor.authenticate(&mut ctx, authorization, identities)?;
        let request = request.into_inner();
        let task = request.model_name.as_str();
        let (outputs, columns) = match self.read(&ctx, &request) {
            Ok(read) => read,
            Err(e) => return Err(self.predictor.refuse(&ctx, task, &request.id, e).into()),
        };
        let rows = columns.rows();
        let call = Call {
            task,
            rows: &rows,
            request_id: &request.id,
            version: (!request.model_version.is_empty()).then_some(request.model_version.as_str()),
            compare_versions: &[],
            reason_codes: 0,
        };
        let answer = self.predictor.predict(&ctx, call).await?;
        // The answer takes the form the request used: raw in, raw out.
        let raw = !request.raw_input_contents.is_empty();
        let mut raw_output_contents = Vec::new();
        let mut tensors = Vec::with_capacity(outputs.len());
        for output in outputs {
            let (shape, data) = tensor::output_data(output, &answer.bundle, &answer.predictions);
            let contents = if raw {
                raw_output_contents.push(data.to_raw());
                None
            } else {
                Some(contents(data))
            };
            tensors.push(pb::model_infer_response::InferOutputTensor {
                name: output.name().to_owned(),
                datatype: output.datatype().name().to_owned(),
                shape,
                parameters: Default::default(),
                contents,
            });
        }
        Ok(Response::new(pb::ModelInferResponse {
            model_version: answer.bundle.version.clone(),
            model_name: request.model_name,
            id: request.id,
            parameters: Default::default(),
            outputs: tensors,
            raw_output_contents,
        }))
    }
}

fn contents(data: OutputData<'_>) -> pb::InferTensorContents {
    let mut c = pb::InferTensorContents::default();
    match data {
        OutputData::Text(v) => c.bytes_contents = v.into_iter().map(|s| s.as_bytes().to_vec()).collect(),
        OutputData::F32(v) => c.fp32_contents = v,
        OutputData::F64(v) => c.fp64_contents = v,
    }
    c
}
