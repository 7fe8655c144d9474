//! The tonic layer: converts requests into domain values, calls [`Training`], converts back.

use std::pin::Pin;
use std::sync::Arc;

use automl_common::error::to_status;
use automl_common::server::ServiceRoutes;
use automl_proto::service_names;
use automl_proto::training as pb;
use automl_proto::training::training_service_server::{TrainingService, TrainingServiceServer};
use futures::Stream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::error::TrainingError;
use crate::model::{JobSpec, JobStatus, Priority, Resources};
use crate::service::{JobView, Training};
use automl_text_classification::declare::{Declared, Kind};

/// The gRPC face of training-service.
#[derive(Debug, Clone)]
pub struct TrainingGrpc {
    service: Arc<Training>,
}

/// The routes to hand to the server bootstrap.
pub fn routes(service: Arc<Training>) -> ServiceRoutes {
    ServiceRoutes {
        names: vec![service_names::TRAINING],
        routes: tonic::service::Routes::new(TrainingServiceServer::new(TrainingGrpc { service })),
        auth: None,
        tls: Default::default(),
    }
}

type StatusStream =
    Pin<Box<dyn Stream<Item = Result<pb::GetTrainingStatusResponse, Status>> + Send>>;
type LogStream = Pin<Box<dyn Stream<Item = Result<pb::LogLine, Status>> + Send>>;

fn status_number(status: JobStatus) -> pb::TrainingStatus {
    match status {
        JobStatus::Queuing => pb::TrainingStatus::Queuing,
        JobStatus::Launch => pb::TrainingStatus::Launch,
        JobStatus::Running => pb::TrainingStatus::Running,
        JobStatus::Succeed => pb::TrainingStatus::Succeed,
        JobStatus::Failure => pb::TrainingStatus::Failure,
        JobStatus::Canceled => pb::TrainingStatus::Canceled,
    }
}

fn spec_of(metadata: pb::TrainingJobMetadata) -> Result<JobSpec, Status> {
    let resources = metadata.resources.unwrap_or_default();
    let priority = Priority::from_contract(metadata.priority)
        .map_err(|err| Status::invalid_argument(err.to_string()))?;
    Ok(JobSpec {
        algorithm: metadata.algorithm,
        dataset_id: metadata.dataset_id,
        name: metadata.name,
        train_data_version_hash: metadata.train_data_version_hash,
        parameters: metadata.parameters.into_iter().collect(),
        output_model_name: metadata.output_model_name,
        resources: Resources {
            cpu: resources.cpu,
            memory: resources.memory,
            gpus: resources.gpus,
            max_runtime_seconds: resources.max_runtime_seconds,
        },
        base_run_id: metadata.base_run_id,
        priority,
        request_id: automl_common::request_id::current().unwrap_or_default(),
        // Given by the service when the job is queued.
        submission: String::new(),
    })
}

fn response(view: JobView) -> pb::GetTrainingStatusResponse {
    let spec = view.job.spec;
    // MiniAutoML's queue message, counting the caller's own jobs ahead, and why the job
    // waits when its tenant is at its quota.
    let message = match view.job.status {
        JobStatus::Queuing if view.job.message.is_empty() => format!(
            "Queueing, there are {} training jobs waiting before this.",
            view.position
        ),
        JobStatus::Queuing => format!(
            "Queueing, there are {} training jobs waiting before this; {}",
            view.position, view.job.message
        ),
        _ => view.job.message,
    };
    pb::GetTrainingStatusResponse {
        status: status_number(view.job.status).into(),
        job_id: i32::try_from(view.job.job_id).unwrap_or(i32::MAX),
        message,
        metadata: Some(pb::TrainingJobMetadata {
            algorithm: spec.algorithm,
            dataset_id: spec.dataset_id,
            name: spec.name,
            train_data_version_hash: spec.train_data_version_hash,
            parameters: spec.parameters.into_iter().collect(),
            output_model_name: spec.output_model_name,
            resources: Some(pb::Resources {
                cpu: spec.resources.cpu,
                memory: spec.resources.memory,
                gpus: spec.resources.gpus,
                max_runtime_seconds: spec.resources.max_runtime_seconds,
            }),
            base_run_id: spec.base_run_id,
            priority: spec.priority.contract(),
        }),
        position_in_queue: i32::try_from(view.position).unwrap_or(i32::MAX),
    }
}

/// A declared parameter as the contract describes it.
fn parameter_spec(declared: &Declared) -> pb::ParameterSpec {
    let kind = match declared.kind {
        Kind::Int => pb::ParameterType::ParameterInt,
        Kind::Double => pb::ParameterType::ParameterDouble,
        Kind::Categorical => pb::ParameterType::ParameterCategorical,
    };
    pb::ParameterSpec {
        name: declared.name.to_string(),
        r#type: kind.into(),
        min: declared.min,
        max: declared.max,
        min_exclusive: declared.min_exclusive,
        max_exclusive: declared.max_exclusive,
        values: declared.values.iter().map(|v| v.to_string()).collect(),
        default_value: declared.default.to_string(),
        help: declared.help.to_string(),
    }
}

fn job_status(number: i32) -> Result<JobStatus, Status> {
    JobStatus::from_number(i64::from(number)).map_err(|_| {
        Status::invalid_argument(format!("statuses: {number} is not a training status"))
    })
}

/// The caller's tenant; a job token may not use training-service.
fn tenant_of<T>(request: &Request<T>) -> Result<String, Status> {
    let caller = automl_common::auth::caller(request);
    caller.require_tenant()?;
    Ok(caller.tenant)
}

#[tonic::async_trait]
impl TrainingService for TrainingGrpc {
    async fn train(
        &self,
        request: Request<pb::TrainRequest>,
    ) -> Result<Response<pb::TrainResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let metadata = request
            .into_inner()
            .metadata
            .ok_or_else(|| Status::invalid_argument("metadata is required"))?;
        let job_id = self
            .service
            .submit(&tenant, spec_of(metadata)?)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::TrainResponse {
            job_id: i32::try_from(job_id).map_err(|_| Status::internal("job id overflow"))?,
        }))
    }

    async fn get_training_status(
        &self,
        request: Request<pb::GetTrainingStatusRequest>,
    ) -> Result<Response<pb::GetTrainingStatusResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let view = self
            .service
            .status(&tenant, i64::from(request.into_inner().job_id))
            .await
            .map_err(to_status)?;
        Ok(Response::new(response(view)))
    }

    type WatchTrainingStatusStream = StatusStream;

    async fn watch_training_status(
        &self,
        request: Request<pb::GetTrainingStatusRequest>,
    ) -> Result<Response<Self::WatchTrainingStatusStream>, Status> {
        let tenant = tenant_of(&request)?;
        let receiver = self
            .service
            .watch(&tenant, i64::from(request.into_inner().job_id))
            .await
            .map_err(to_status)?;
        let stream = ReceiverStream::new(receiver).map(|view| {
            view.map(response)
                .map_err(|err: TrainingError| to_status(err))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn cancel_training_job(
        &self,
        request: Request<pb::GetTrainingStatusRequest>,
    ) -> Result<Response<pb::GetTrainingStatusResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let view = self
            .service
            .cancel(&tenant, i64::from(request.into_inner().job_id))
            .await
            .map_err(to_status)?;
        Ok(Response::new(response(view)))
    }

    async fn list_training_jobs(
        &self,
        request: Request<pb::ListTrainingJobsRequest>,
    ) -> Result<Response<pb::ListTrainingJobsResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let statuses = request
            .statuses
            .iter()
            .map(|number| job_status(*number))
            .collect::<Result<Vec<_>, _>>()?;
        let (jobs, total) = self
            .service
            .list(&tenant, &statuses, request.limit, request.index)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::ListTrainingJobsResponse {
            jobs: jobs.into_iter().map(response).collect(),
            total: i32::try_from(total).unwrap_or(i32::MAX),
        }))
    }

    async fn list_algorithms(
        &self,
        request: Request<pb::ListAlgorithmsRequest>,
    ) -> Result<Response<pb::ListAlgorithmsResponse>, Status> {
        tenant_of(&request)?;
        let (algorithms, default_algorithm) = self.service.algorithms().await;
        Ok(Response::new(pb::ListAlgorithmsResponse {
            algorithms: algorithms
                .into_iter()
                .map(|algorithm| pb::Algorithm {
                    parameters: algorithm.parameters.iter().map(parameter_spec).collect(),
                    name: algorithm.name,
                    pretrained_model: algorithm.pretrained_model,
                    ready: algorithm.ready,
                    message: algorithm.message,
                })
                .collect(),
            default_algorithm,
        }))
    }

    type GetTrainingLogsStream = LogStream;

    async fn get_training_logs(
        &self,
        request: Request<pb::GetTrainingLogsRequest>,
    ) -> Result<Response<Self::GetTrainingLogsStream>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let receiver = self
            .service
            .logs(&tenant, i64::from(request.job_id), request.from_line)
            .await
            .map_err(to_status)?;
        let stream = ReceiverStream::new(receiver).map(|line| {
            line.map(|(line_number, text)| pb::LogLine { line_number, text })
                .map_err(|err: TrainingError| to_status(err))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
