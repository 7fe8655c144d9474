//! The tonic layer: converts requests, calls [`Predictions`], converts answers back.

use std::sync::Arc;

use automl_common::error::to_status;
use automl_common::server::ServiceRoutes;
use automl_proto::prediction as pb;
use automl_proto::prediction::prediction_service_server::{
    PredictionService, PredictionServiceServer,
};
use automl_proto::service_names;
use tonic::{Request, Response, Status};

use crate::service::Predictions;

/// The gRPC face of prediction-service.
#[derive(Debug, Clone)]
pub struct PredictionGrpc {
    service: Arc<Predictions>,
}

/// The routes to hand to the server bootstrap.
pub fn routes(service: Arc<Predictions>) -> ServiceRoutes {
    ServiceRoutes {
        names: vec![service_names::PREDICTION],
        routes: tonic::service::Routes::new(PredictionServiceServer::new(PredictionGrpc {
            service,
        })),
        auth: None,
        tls: Default::default(),
    }
}

/// The client's deadline, from the `grpc-timeout` header.
fn deadline<T>(request: &Request<T>) -> Option<std::time::Duration> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => std::time::Duration::from_secs(amount * 3600),
        "M" => std::time::Duration::from_secs(amount * 60),
        "S" => std::time::Duration::from_secs(amount),
        "m" => std::time::Duration::from_millis(amount),
        "u" => std::time::Duration::from_micros(amount),
        "n" => std::time::Duration::from_nanos(amount),
        _ => return None,
    })
}

#[tonic::async_trait]
impl PredictionService for PredictionGrpc {
    async fn predict(
        &self,
        request: Request<pb::PredictRequest>,
    ) -> Result<Response<pb::PredictResponse>, Status> {
        let deadline = deadline(&request);
        let caller = automl_common::auth::caller(&request);
        caller.require_tenant()?;
        let request = request.into_inner();
        let answer = self
            .service
            .predict(&caller.tenant, &request.run_id, request.document, deadline)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::PredictResponse {
            response: answer.response,
            label: answer.label,
            score: answer.score,
            top: answer
                .top
                .into_iter()
                .map(|s| pb::LabelScore {
                    label: s.label,
                    score: s.score,
                })
                .collect(),
            model_version: answer.model_version,
        }))
    }

    async fn list_loaded_models(
        &self,
        request: Request<pb::ListLoadedModelsRequest>,
    ) -> Result<Response<pb::ListLoadedModelsResponse>, Status> {
        let caller = automl_common::auth::caller(&request);
        caller.require_tenant()?;
        let models = self
            .service
            .loaded_models(&caller.tenant)
            .into_iter()
            .map(|model| pb::LoadedModelInfo {
                run_id: model.run_id,
                model_name: model.name,
                model_version: model.version,
                algorithm: model.algorithm,
                bytes: i64::try_from(model.disk_bytes).unwrap_or(i64::MAX),
                labels: i32::try_from(model.labels).unwrap_or(i32::MAX),
            })
            .collect();
        Ok(Response::new(pb::ListLoadedModelsResponse { models }))
    }
}
