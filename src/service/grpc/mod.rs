//! The `modeld.v1.Inference` gRPC face: wire types in, core calls, wire types out.
//!
//! Nothing here decides anything about a prediction: [`Predictor`] does, and its errors leave
//! through [`super::status`]. The BatchPredict transport loop lives in [`stream`], wire <->
//! domain conversions in `convert`.

pub mod convert;
pub mod stream;

use std::pin::Pin;

use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use self::convert::{call_context, credentials, to_pb};
use super::health::Readiness;
use crate::{
    pb,
    predict::{Method, PredictError, Predictor, Request as Call},
    registry::Registry,
};

/// Handler state. Cloning is shallow.
#[derive(Clone)]
pub struct InferenceService {
    predictor: Predictor,
    registry: Registry,
    readiness: Readiness,
    /// Where streams do their work (decode, preprocess, model, encode).
    bulk: tokio::runtime::Handle,
}

impl InferenceService {
    /// The face over `predictor`; streams run on `bulk` (see [`crate::runner::BulkRuntime`]).
    pub fn new(
        predictor: Predictor,
        registry: Registry,
        readiness: Readiness,
        bulk: tokio::runtime::Handle,
    ) -> InferenceService {
        InferenceService { predictor, registry, readiness, bulk }
    }
}

#[tonic::async_trait]
impl pb::inference_server::Inference for InferenceService {
    async fn predict(&self, request: Request<pb::PredictRequest>) -> Result<Response<pb::PredictResponse>, Status> {
        let mut ctx = call_context(Method::Predict, &request);
        let (authorization, identities) = credentials(&request);
        self.predictor.authenticate(&mut ctx, authorization, identities)?;
        let mut req = request.into_inner();
        let call = Call {
            task: &req.task,
            rows: &req.rows,
            request_id: &req.request_id,
            version: (!req.version.is_empty()).then_some(req.version.as_str()),
            compare_versions: &req.compare_versions,
            reason_codes: req.reason_codes,
        };
        let answer = self.predictor.predict(&ctx, call).await?;
        let comparisons = answer
            .comparisons
            .into_iter()
            .map(|c| pb::Comparison {
                predictions: c
                    .predictions
                    .into_iter()
                    .zip(&req.rows)
                    .map(|(p, row)| to_pb(p, row.row_id.clone(), c.bundle.class_labels()))
                    .collect(),
                version: c.bundle.version.clone(),
            })
            .collect();
        let classes = answer.bundle.class_labels();
        let predictions = answer
            .predictions
            .into_iter()
            .zip(req.rows.iter_mut())
            .map(|(p, row)| to_pb(p, std::mem::take(&mut row.row_id), classes))
            .collect();
        Ok(Response::new(pb::PredictResponse {
            task: req.task,
            version: answer.bundle.version.clone(),
            request_id: req.request_id,
            class_names: classes.to_vec(),
            predictions,
            comparisons,
        }))
    }

    type BatchPredictStream = Pin<Box<dyn Stream<Item = Result<pb::BatchPredictResponse, Status>> + Send + 'static>>;

    async fn batch_predict(
        &self,
        request: Request<Streaming<pb::BatchPredictRequest>>,
    ) -> Result<Response<Self::BatchPredictStream>, Status> {
        let mut ctx = call_context(Method::BatchPredict, &request);
        let (authorization, identities) = credentials(&request);
        self.predictor.authenticate(&mut ctx, authorization, identities)?;
        let session = self.predictor.open_stream(ctx)?;
        let outbound = stream::spawn(session, request.into_inner(), self.readiness.clone(), &self.bulk);
        Ok(Response::new(Box::pin(outbound)))
    }

    async fn get_version(
        &self,
        request: Request<pb::GetVersionRequest>,
    ) -> Result<Response<pb::GetVersionResponse>, Status> {
        let (authorization, identities) = credentials(&request);
        let task = &request.get_ref().task;
        if task.is_empty() {
            // The credentials still decide first: an unknown caller learns nothing.
            self.predictor.caller(authorization, identities)?;
            return Err(PredictError::MissingTask.into());
        }
        self.predictor.check_reader(authorization, identities, task)?;
        let task = request.into_inner().task;
        let bundle = self.registry.get(&task).map_err(PredictError::from)?;
        let report = self.registry.report(&task);
        let rollout = report.as_ref().and_then(|r| r.policy.as_deref()).map(convert::rollout_policy);
        let rollout_error = report.as_ref().and_then(|r| r.policy_error.clone()).unwrap_or_default();
        Ok(Response::new(pb::GetVersionResponse {
            rollout,
            rollout_error,
            last_reload_error: report
                .as_ref()
                .and_then(|r| r.last_error.as_ref())
                .map(|e| e.to_string())
                .unwrap_or_default(),
            loaded_versions: report.map(|r| r.loaded_versions()).unwrap_or_default(),
            task,
            version: bundle.version.clone(),
            bundle_path: bundle.path.display().to_string(),
            manifest_sha256: bundle.manifest_sha256.clone(),
            loaded_at: Some(bundle.loaded_at.into()),
            model_type: bundle.config.model_type.clone(),
            class_names: bundle.class_labels().to_vec(),
            evaluation: bundle.evaluation.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            evaluation_json: bundle.evaluation_json.clone(),
            fields: bundle.schema.fields().iter().map(convert::field_info).collect(),
            kind: bundle.config.kind.name().to_owned(),
        }))
    }

    async fn health(&self, request: Request<pb::HealthRequest>) -> Result<Response<pb::HealthResponse>, Status> {
        let (authorization, identities) = credentials(&request);
        self.predictor.caller(authorization, identities)?;
        let draining = self.readiness.is_draining();
        let tasks = self
            .registry
            .reports()
            .into_iter()
            .map(|r| pb::TaskHealth {
                loaded_versions: r.loaded_versions(),
                serving: r.live.is_some() && !draining,
                version: r.live.map(|b| b.version.clone()).unwrap_or_default(),
                last_error: r.last_error.map(|e| e.to_string()).unwrap_or_default(),
                task: r.task,
            })
            .collect();
        Ok(Response::new(pb::HealthResponse { serving: self.readiness.is_ready(), tasks }))
    }
}
