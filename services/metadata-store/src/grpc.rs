//! The tonic layer: converts requests into domain values, calls [`MetadataStore`], converts
//! the results back. Nothing below this module sees a tonic type.

use std::collections::HashMap;
use std::pin::Pin;

use automl_common::auth::{Caller, Scope, caller};
use automl_common::error::to_status;
use automl_common::server::ServiceRoutes;
use automl_proto::data_management::FileInfo;
use automl_proto::metadata_store as pb;
use automl_proto::metadata_store::metadata_store_service_server::{
    MetadataStoreService, MetadataStoreServiceServer,
};
use automl_proto::service_names;
use futures::Stream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::error::MetadataError;
use crate::model::{
    Artifact, ArtifactFilter, Epoch, Lineage, MetricSummary, NewArtifact, NewRun, Run, RunEnd,
    RunFilter, RunOrder,
};
use crate::service::{MetadataStore, WatchEvent};

/// The gRPC face of metadata-store.
#[derive(Debug, Clone)]
pub struct MetadataStoreGrpc {
    service: MetadataStore,
    /// Ends watch streams when the server shuts down.
    shutdown: CancellationToken,
}

/// The routes to hand to the server bootstrap.
pub fn routes(service: MetadataStore, shutdown: CancellationToken) -> ServiceRoutes {
    let server = MetadataStoreServiceServer::new(MetadataStoreGrpc { service, shutdown });
    ServiceRoutes {
        names: vec![service_names::METADATA_STORE],
        routes: tonic::service::Routes::new(server),
        auth: None,
        tls: Default::default(),
    }
}

/// A job token writes only its own run.
fn may_write(caller: &Caller, run_id: &str) -> Result<(), Status> {
    if caller.may_write_run(run_id) {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "this token may only write run {}",
            match &caller.scope {
                Scope::Run { run_id, .. } => run_id.as_str(),
                Scope::Tenant => "",
            }
        )))
    }
}

/// A job token reads only its own run and the run it fine-tunes; others look absent.
fn may_read(caller: &Caller, run_id: &str) -> Result<(), Status> {
    if caller.may_read_run(run_id) {
        Ok(())
    } else {
        Err(Status::not_found(format!("run {run_id} not found")))
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::RunEvent, Status>> + Send>>;

#[tonic::async_trait]
impl MetadataStoreService for MetadataStoreGrpc {
    async fn log_run_start(
        &self,
        request: Request<pb::LogRunStartRequest>,
    ) -> Result<Response<pb::LogRunStartResponse>, Status> {
        let caller = caller(&request);
        let request = request.into_inner();
        may_write(&caller, &request.run_id)?;
        let tracing_info = request.tracing.unwrap_or_default();
        let run = NewRun {
            run_id: request.run_id,
            run_name: request.run_name,
            start_time: or_now(request.start_time),
            lineage: Lineage {
                dataset_id: tracing_info.dataset_id,
                version_hash: tracing_info.version_hash,
                code_version: tracing_info.code_version,
                base_run_id: tracing_info.base_run_id,
                pretrained_model: tracing_info.pretrained_model,
            },
        };
        let (run, location) = self
            .service
            .start_run(&caller.tenant, run)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::LogRunStartResponse {
            run_info: Some(run_info(run)),
            bucket: location.bucket,
            path: location.path,
        }))
    }

    async fn log_epoch(
        &self,
        request: Request<pb::LogEpochRequest>,
    ) -> Result<Response<pb::LogEpochResponse>, Status> {
        let caller = caller(&request);
        let info = request
            .into_inner()
            .epoch_info
            .ok_or_else(|| Status::invalid_argument("epoch_info is required"))?;
        may_write(&caller, &info.run_id)?;
        let epoch = Epoch {
            run_id: info.run_id,
            epoch_id: info.epoch_id,
            start_time: info.start_time,
            end_time: info.end_time,
            metrics: info.metrics.into_iter().collect(),
        };
        let epoch = self
            .service
            .log_epoch(&caller.tenant, epoch)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::LogEpochResponse {
            epoch_info: Some(epoch_info(epoch)),
        }))
    }

    async fn log_run_end(
        &self,
        request: Request<pb::LogRunEndRequest>,
    ) -> Result<Response<pb::LogRunEndResponse>, Status> {
        let caller = caller(&request);
        let request = request.into_inner();
        may_write(&caller, &request.run_id)?;
        let end = RunEnd {
            run_id: request.run_id,
            end_time: or_now(request.end_time),
            success: request.success,
            message: request.message,
        };
        let run = self
            .service
            .end_run(&caller.tenant, end)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::LogRunEndResponse {
            run_info: Some(run_info(run)),
        }))
    }

    async fn get_run_status(
        &self,
        request: Request<pb::GetRunStatusRequest>,
    ) -> Result<Response<pb::GetRunStatusResponse>, Status> {
        let caller = caller(&request);
        let run_id = request.into_inner().run_id;
        may_read(&caller, &run_id)?;
        let run = self
            .service
            .get_run(&caller.tenant, &run_id)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::GetRunStatusResponse {
            run_info: Some(run_info(run)),
        }))
    }

    async fn create_artifact(
        &self,
        request: Request<pb::CreateArtifactRequest>,
    ) -> Result<Response<pb::CreateArtifactResponse>, Status> {
        let caller = caller(&request);
        let request = request.into_inner();
        may_write(&caller, &request.run_id)?;
        let file = request
            .artifact
            .ok_or_else(|| Status::invalid_argument("artifact is required"))?;
        let artifact = NewArtifact {
            run_id: request.run_id,
            name: file.name,
            bucket: file.bucket,
            path: file.path,
            algorithm: request.algorithm,
        };
        let artifact = self
            .service
            .create_artifact(&caller.tenant, artifact)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::CreateArtifactResponse {
            version: artifact.version.to_string(),
            artifact: Some(file_info(&artifact)),
            run_id: artifact.run_id,
            name: artifact.name,
            algorithm: artifact.algorithm,
        }))
    }

    async fn get_artifact(
        &self,
        request: Request<pb::GetArtifactRequest>,
    ) -> Result<Response<pb::GetArtifactResponse>, Status> {
        let caller = caller(&request);
        let run_id = request.into_inner().run_id;
        may_read(&caller, &run_id)?;
        let artifact = self
            .service
            .get_artifact(&caller.tenant, &run_id)
            .await
            .map_err(to_status)?;
        Ok(Response::new(artifact_response(artifact)))
    }

    async fn list_runs(
        &self,
        request: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        let caller = caller(&request);
        caller.require_tenant()?;
        let request = request.into_inner();
        let filter = RunFilter {
            dataset_id: request.dataset_id,
            run_name: request.run_name,
            limit: i64::from(request.limit),
            offset: i64::from(request.index),
            order: RunOrder::parse(&request.order_by).map_err(to_status)?,
            descending: request.descending,
            without_epochs: request.without_epochs,
        };
        let (runs, total) = self
            .service
            .list_runs(&caller.tenant, filter)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::ListRunsResponse {
            runs: runs.into_iter().map(run_info).collect(),
            total: i32::try_from(total).unwrap_or(i32::MAX),
        }))
    }

    async fn list_artifacts(
        &self,
        request: Request<pb::ListArtifactsRequest>,
    ) -> Result<Response<pb::ListArtifactsResponse>, Status> {
        let caller = caller(&request);
        caller.require_tenant()?;
        let request = request.into_inner();
        let filter = ArtifactFilter {
            name: request.name,
            limit: i64::from(request.limit),
            offset: i64::from(request.index),
        };
        let (artifacts, total) = self
            .service
            .list_artifacts(&caller.tenant, filter)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::ListArtifactsResponse {
            artifacts: artifacts.into_iter().map(artifact_response).collect(),
            total: i32::try_from(total).unwrap_or(i32::MAX),
        }))
    }

    type WatchRunStream = WatchStream;

    async fn watch_run(
        &self,
        request: Request<pb::GetRunStatusRequest>,
    ) -> Result<Response<Self::WatchRunStream>, Status> {
        let caller = caller(&request);
        let run_id = request.into_inner().run_id;
        may_read(&caller, &run_id)?;
        let receiver = self
            .service
            .watch_run(&caller.tenant, &run_id, self.shutdown.clone())
            .await
            .map_err(to_status)?;
        let stream = ReceiverStream::new(receiver).map(|event| {
            event
                .map(run_event)
                .map_err(|err: MetadataError| to_status(err))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

fn or_now(time: String) -> String {
    if time.is_empty() {
        automl_common::time::now_iso()
    } else {
        time
    }
}

fn run_event(event: WatchEvent) -> pb::RunEvent {
    match event {
        WatchEvent::Snapshot(run) => pb::RunEvent {
            kind: pb::RunEventKind::Snapshot.into(),
            run_info: Some(run_info(run)),
            epoch: None,
        },
        WatchEvent::Epoch(epoch) => pb::RunEvent {
            kind: pb::RunEventKind::Epoch.into(),
            run_info: None,
            epoch: Some(epoch_info(epoch)),
        },
        WatchEvent::End(run) => pb::RunEvent {
            kind: pb::RunEventKind::End.into(),
            run_info: Some(run_info(run)),
            epoch: None,
        },
    }
}

fn run_info(run: Run) -> pb::RunInfo {
    let epochs: HashMap<String, pb::EpochInfo> = run
        .epochs
        .into_iter()
        .map(|epoch| (epoch.epoch_id.clone(), epoch_info(epoch)))
        .collect();
    pb::RunInfo {
        start_time: run.start_time,
        end_time: run.end_time,
        success: run.success,
        message: run.message,
        run_id: run.run_id,
        run_name: run.run_name,
        tracing: Some(pb::TracingInformation {
            dataset_id: run.lineage.dataset_id,
            version_hash: run.lineage.version_hash,
            code_version: run.lineage.code_version,
            base_run_id: run.lineage.base_run_id,
            pretrained_model: run.lineage.pretrained_model,
        }),
        epochs,
        metric_summaries: run
            .metric_summaries
            .into_iter()
            .map(|(name, summary)| (name, metric_summary(summary)))
            .collect(),
        epoch_count: i32::try_from(run.epoch_count).unwrap_or(i32::MAX),
    }
}

fn metric_summary(summary: MetricSummary) -> pb::MetricSummary {
    pb::MetricSummary {
        last: summary.last,
        last_epoch: summary.last_epoch,
        best: summary.best,
        best_epoch: summary.best_epoch,
        lower_is_better: summary.lower_is_better,
    }
}

fn artifact_response(artifact: Artifact) -> pb::GetArtifactResponse {
    pb::GetArtifactResponse {
        name: artifact.name.clone(),
        version: artifact.version.to_string(),
        artifact: Some(file_info(&artifact)),
        run_id: artifact.run_id,
        algorithm: artifact.algorithm,
        created_at: artifact.created_at,
    }
}

fn epoch_info(epoch: Epoch) -> pb::EpochInfo {
    pb::EpochInfo {
        start_time: epoch.start_time,
        end_time: epoch.end_time,
        run_id: epoch.run_id,
        epoch_id: epoch.epoch_id,
        metrics: epoch.metrics.into_iter().collect(),
    }
}

fn file_info(artifact: &Artifact) -> FileInfo {
    FileInfo {
        name: artifact.name.clone(),
        bucket: artifact.bucket.clone(),
        path: artifact.path.clone(),
    }
}
