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

use crate::config::{ParameterConfig, ParameterKind};
use crate::error::TrainingError;
use crate::experiment::{
    Direction, EarlyStopping, ExperimentSpec, ExperimentStatus, ExperimentView, Objective,
    SearchAlgorithm, SearchParameter, SpaceKind, Trial,
};
use crate::model::{JobSpec, JobStatus, Priority, Resources};
use crate::service::{JobView, Training};

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
type ExperimentStream = Pin<Box<dyn Stream<Item = Result<pb::Experiment, Status>> + Send>>;

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

fn resources_of(resources: Option<pb::Resources>) -> Resources {
    let resources = resources.unwrap_or_default();
    Resources {
        cpu: resources.cpu,
        memory: resources.memory,
        gpus: resources.gpus,
        max_runtime_seconds: resources.max_runtime_seconds,
    }
}

fn resources_message(resources: Resources) -> pb::Resources {
    pb::Resources {
        cpu: resources.cpu,
        memory: resources.memory,
        gpus: resources.gpus,
        max_runtime_seconds: resources.max_runtime_seconds,
    }
}

fn spec_of(metadata: pb::TrainingJobMetadata) -> Result<JobSpec, Status> {
    let resources = resources_of(metadata.resources);
    let priority = Priority::from_contract(metadata.priority)
        .map_err(|err| Status::invalid_argument(err.to_string()))?;
    Ok(JobSpec {
        algorithm: metadata.algorithm,
        dataset_id: metadata.dataset_id,
        name: metadata.name,
        train_data_version_hash: metadata.train_data_version_hash,
        parameters: metadata.parameters.into_iter().collect(),
        output_model_name: metadata.output_model_name,
        resources,
        base_run_id: metadata.base_run_id,
        priority,
        request_id: automl_common::request_id::current().unwrap_or_default(),
        traceparent: automl_common::otlp::current_traceparent().unwrap_or_default(),
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
            resources: Some(resources_message(spec.resources)),
            base_run_id: spec.base_run_id,
            priority: spec.priority.contract(),
        }),
        position_in_queue: i32::try_from(view.position).unwrap_or(i32::MAX),
    }
}

/// A declared parameter as the contract describes it.
fn parameter_spec(declared: &ParameterConfig) -> pb::ParameterSpec {
    let (kind, min, max) = match declared.kind {
        ParameterKind::Int => (pb::ParameterType::ParameterInt, declared.min, declared.max),
        ParameterKind::Double => (
            pb::ParameterType::ParameterDouble,
            declared.min,
            declared.max,
        ),
        ParameterKind::Categorical => (
            pb::ParameterType::ParameterCategorical,
            Some(0.0),
            Some(0.0),
        ),
    };
    pb::ParameterSpec {
        name: declared.name.clone(),
        r#type: kind.into(),
        min: min.unwrap_or(f64::NEG_INFINITY),
        max: max.unwrap_or(f64::INFINITY),
        min_exclusive: declared.min_exclusive,
        max_exclusive: declared.max_exclusive,
        values: declared.values.clone(),
        default_value: declared.default.clone(),
        help: declared.help.clone(),
    }
}

/// An experiment as CreateExperiment received it.
fn experiment_spec_of(spec: pb::ExperimentSpec) -> Result<ExperimentSpec, Status> {
    let priority = Priority::from_contract(spec.priority)
        .map_err(|err| Status::invalid_argument(err.to_string().replace("metadata.", "spec.")))?;
    let objective = spec.objective.unwrap_or_default();
    let direction = match pb::ObjectiveType::try_from(objective.r#type) {
        Ok(pb::ObjectiveType::ObjectiveMaximize) => Direction::Maximize,
        Ok(pb::ObjectiveType::ObjectiveMinimize) => Direction::Minimize,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "spec.objective.type: {} is not an objective type",
                objective.r#type
            )));
        }
    };
    let search = match pb::SearchAlgorithm::try_from(spec.search_algorithm) {
        Ok(pb::SearchAlgorithm::SearchRandom) => SearchAlgorithm::Random,
        Ok(pb::SearchAlgorithm::SearchGrid) => SearchAlgorithm::Grid,
        Ok(pb::SearchAlgorithm::SearchTpe) => SearchAlgorithm::Tpe,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "spec.search_algorithm: {} is not a search algorithm (SEARCH_RANDOM, SEARCH_GRID, SEARCH_TPE)",
                spec.search_algorithm
            )));
        }
    };
    let mut search_space = Vec::with_capacity(spec.search_space.len());
    for parameter in spec.search_space {
        let kind = match pb::ParameterType::try_from(parameter.r#type) {
            Ok(pb::ParameterType::ParameterInt) => SpaceKind::Int,
            Ok(pb::ParameterType::ParameterDouble) => SpaceKind::Double,
            Ok(pb::ParameterType::ParameterCategorical) => SpaceKind::Categorical,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "spec.search_space[{}].type: {} is not a parameter type",
                    parameter.name, parameter.r#type
                )));
            }
        };
        let grid_points = u32::try_from(parameter.grid_points).map_err(|_| {
            Status::invalid_argument(format!(
                "spec.search_space[{}].grid_points must not be negative",
                parameter.name
            ))
        })?;
        search_space.push(SearchParameter {
            name: parameter.name,
            kind,
            min: parameter.min,
            max: parameter.max,
            log: parameter.log,
            values: parameter.values,
            grid_points,
        });
    }
    let count = |field: &str, value: i32| {
        u32::try_from(value)
            .map_err(|_| Status::invalid_argument(format!("spec.{field} must not be negative")))
    };
    let stopping = spec.early_stopping.unwrap_or_default();
    let median = match pb::EarlyStoppingRule::try_from(stopping.rule) {
        Ok(pb::EarlyStoppingRule::EarlyStoppingNone) => false,
        Ok(pb::EarlyStoppingRule::EarlyStoppingMedian) => true,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "spec.early_stopping.rule: {} is not a rule (EARLY_STOPPING_NONE, EARLY_STOPPING_MEDIAN)",
                stopping.rule
            )));
        }
    };
    Ok(ExperimentSpec {
        name: spec.name,
        dataset_id: spec.dataset_id,
        train_data_version_hash: spec.train_data_version_hash,
        algorithm: spec.algorithm,
        parameters: spec.parameters.into_iter().collect(),
        output_model_name: spec.output_model_name,
        resources: resources_of(spec.resources),
        priority,
        objective: Objective {
            metric: objective.metric,
            direction,
            goal: objective.goal,
        },
        search_space,
        search,
        // The seed's bits, whatever its sign.
        seed: spec.seed as u64,
        max_trials: count("max_trials", spec.max_trials)?,
        parallel_trials: count("parallel_trials", spec.parallel_trials)?,
        max_failed_trials: count("max_failed_trials", spec.max_failed_trials)?,
        early_stopping: EarlyStopping {
            median,
            min_trials_required: count(
                "early_stopping.min_trials_required",
                stopping.min_trials_required,
            )?,
            start_step: count("early_stopping.start_step", stopping.start_step)?,
        },
    })
}

fn clamp_i32<T: TryInto<i32>>(value: T) -> i32 {
    value.try_into().unwrap_or(i32::MAX)
}

fn experiment_spec_message(spec: ExperimentSpec) -> pb::ExperimentSpec {
    let objective_type = match spec.objective.direction {
        Direction::Maximize => pb::ObjectiveType::ObjectiveMaximize,
        Direction::Minimize => pb::ObjectiveType::ObjectiveMinimize,
    };
    let search = match spec.search {
        SearchAlgorithm::Random => pb::SearchAlgorithm::SearchRandom,
        SearchAlgorithm::Grid => pb::SearchAlgorithm::SearchGrid,
        SearchAlgorithm::Tpe => pb::SearchAlgorithm::SearchTpe,
    };
    let rule = if spec.early_stopping.median {
        pb::EarlyStoppingRule::EarlyStoppingMedian
    } else {
        pb::EarlyStoppingRule::EarlyStoppingNone
    };
    pb::ExperimentSpec {
        name: spec.name,
        dataset_id: spec.dataset_id,
        train_data_version_hash: spec.train_data_version_hash,
        algorithm: spec.algorithm,
        parameters: spec.parameters.into_iter().collect(),
        output_model_name: spec.output_model_name,
        resources: Some(resources_message(spec.resources)),
        priority: spec.priority.contract(),
        objective: Some(pb::Objective {
            metric: spec.objective.metric,
            r#type: objective_type.into(),
            goal: spec.objective.goal,
        }),
        search_space: spec
            .search_space
            .into_iter()
            .map(|parameter| pb::SearchParameter {
                name: parameter.name,
                r#type: match parameter.kind {
                    SpaceKind::Int => pb::ParameterType::ParameterInt,
                    SpaceKind::Double => pb::ParameterType::ParameterDouble,
                    SpaceKind::Categorical => pb::ParameterType::ParameterCategorical,
                }
                .into(),
                min: parameter.min,
                max: parameter.max,
                log: parameter.log,
                values: parameter.values,
                grid_points: clamp_i32(parameter.grid_points),
            })
            .collect(),
        search_algorithm: search.into(),
        seed: spec.seed as i64,
        max_trials: clamp_i32(spec.max_trials),
        parallel_trials: clamp_i32(spec.parallel_trials),
        max_failed_trials: clamp_i32(spec.max_failed_trials),
        early_stopping: Some(pb::EarlyStopping {
            rule: rule.into(),
            min_trials_required: clamp_i32(spec.early_stopping.min_trials_required),
            start_step: clamp_i32(spec.early_stopping.start_step),
        }),
    }
}

fn trial_message(trial: &Trial) -> pb::Trial {
    let message = if trial.status == JobStatus::Queuing && trial.message.is_empty() {
        "queued".to_string()
    } else {
        trial.message.clone()
    };
    pb::Trial {
        trial_number: clamp_i32(trial.number),
        job_id: clamp_i32(trial.job_id),
        run_id: trial.job_id.to_string(),
        parameters: trial.parameters.clone().into_iter().collect(),
        status: status_number(trial.status).into(),
        message,
        epochs: clamp_i32(trial.curve.len()),
        objective: trial.objective(),
        early_stopped_epoch: clamp_i32(trial.early_stopped_epoch),
    }
}

fn experiment_status_number(status: ExperimentStatus) -> pb::ExperimentStatus {
    match status {
        ExperimentStatus::Running => pb::ExperimentStatus::ExperimentRunning,
        ExperimentStatus::Succeeded => pb::ExperimentStatus::ExperimentSucceeded,
        ExperimentStatus::Failed => pb::ExperimentStatus::ExperimentFailed,
        ExperimentStatus::Stopped => pb::ExperimentStatus::ExperimentStopped,
    }
}

fn experiment_message(view: ExperimentView) -> pb::Experiment {
    let best_trial = view.best().map(trial_message);
    let experiment = view.experiment;
    pb::Experiment {
        experiment_id: clamp_i32(experiment.experiment_id),
        status: experiment_status_number(experiment.status).into(),
        message: experiment.message,
        trials: view.trials.iter().map(trial_message).collect(),
        best_trial,
        created_at: experiment.created_at,
        updated_at: experiment.updated_at,
        spec: Some(experiment_spec_message(experiment.spec)),
    }
}

fn experiment_status(number: i32) -> Result<ExperimentStatus, Status> {
    ExperimentStatus::from_number(i64::from(number)).map_err(|_| {
        Status::invalid_argument(format!("statuses: {number} is not an experiment status"))
    })
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
            .list(
                &tenant,
                &statuses,
                &request.job_ids,
                request.limit,
                request.index,
            )
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

    async fn create_experiment(
        &self,
        request: Request<pb::CreateExperimentRequest>,
    ) -> Result<Response<pb::Experiment>, Status> {
        let tenant = tenant_of(&request)?;
        let spec = request
            .into_inner()
            .spec
            .ok_or_else(|| Status::invalid_argument("spec is required"))?;
        let view = self
            .service
            .create_experiment(&tenant, experiment_spec_of(spec)?)
            .await
            .map_err(to_status)?;
        Ok(Response::new(experiment_message(view)))
    }

    async fn get_experiment(
        &self,
        request: Request<pb::GetExperimentRequest>,
    ) -> Result<Response<pb::Experiment>, Status> {
        let tenant = tenant_of(&request)?;
        let view = self
            .service
            .experiment_view(&tenant, i64::from(request.into_inner().experiment_id))
            .await
            .map_err(to_status)?;
        Ok(Response::new(experiment_message(view)))
    }

    async fn list_experiments(
        &self,
        request: Request<pb::ListExperimentsRequest>,
    ) -> Result<Response<pb::ListExperimentsResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let statuses = request
            .statuses
            .iter()
            .map(|number| experiment_status(*number))
            .collect::<Result<Vec<_>, _>>()?;
        let (views, total) = self
            .service
            .list_experiments(&tenant, &statuses, request.limit, request.index)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::ListExperimentsResponse {
            experiments: views.into_iter().map(experiment_message).collect(),
            total: clamp_i32(total),
        }))
    }

    type WatchExperimentStream = ExperimentStream;

    async fn watch_experiment(
        &self,
        request: Request<pb::GetExperimentRequest>,
    ) -> Result<Response<Self::WatchExperimentStream>, Status> {
        let tenant = tenant_of(&request)?;
        let receiver = self
            .service
            .watch_experiment(&tenant, i64::from(request.into_inner().experiment_id))
            .await
            .map_err(to_status)?;
        let stream = ReceiverStream::new(receiver).map(|view| {
            view.map(experiment_message)
                .map_err(|err: TrainingError| to_status(err))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn stop_experiment(
        &self,
        request: Request<pb::GetExperimentRequest>,
    ) -> Result<Response<pb::Experiment>, Status> {
        let tenant = tenant_of(&request)?;
        let view = self
            .service
            .stop_experiment(&tenant, i64::from(request.into_inner().experiment_id))
            .await
            .map_err(to_status)?;
        Ok(Response::new(experiment_message(view)))
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
