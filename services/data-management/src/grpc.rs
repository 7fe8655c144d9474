//! The tonic layer: converts requests into domain values, calls [`DataManagement`], converts
//! the results back. Nothing below this module sees a tonic type.

use std::pin::Pin;

use automl_common::auth::{Caller, caller};
use automl_common::error::to_status;
use automl_common::server::ServiceRoutes;
use automl_proto::data_management as pb;
use automl_proto::data_management::data_management_service_server::{
    DataManagementService, DataManagementServiceServer,
};
use automl_proto::service_names;
use futures::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::model::{Commit, Dataset, Snapshot, SnapshotState, Tag, snapshot_prefix};
use crate::service::{DataManagement, NewDataset, Prepared, Source};

/// The gRPC face of data-management.
#[derive(Debug, Clone)]
pub struct DataManagementGrpc {
    service: DataManagement,
}

/// The routes to hand to the server bootstrap.
pub fn routes(service: DataManagement) -> ServiceRoutes {
    // Uploads arrive in chunks of up to the default 4 MiB message limit.
    let server = DataManagementServiceServer::new(DataManagementGrpc { service });
    ServiceRoutes {
        names: vec![service_names::DATA_MANAGEMENT],
        routes: tonic::service::Routes::new(server),
        auth: None,
        tls: Default::default(),
    }
}

/// The caller of a call that a job token may not make.
fn tenant_caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    let caller = caller(request);
    caller.require_tenant()?;
    Ok(caller)
}

type DatasetStream = Pin<Box<dyn Stream<Item = Result<pb::DatasetPointer, Status>> + Send>>;

#[tonic::async_trait]
impl DataManagementService for DataManagementGrpc {
    async fn get_dataset_summary(
        &self,
        request: Request<pb::DatasetPointer>,
    ) -> Result<Response<pb::DatasetSummary>, Status> {
        let caller = tenant_caller(&request)?;
        let dataset = self
            .service
            .get_dataset(&caller.tenant, &request.into_inner().dataset_id)
            .await
            .map_err(to_status)?;
        Ok(Response::new(summary(dataset)))
    }

    type ListDatasetsStream = DatasetStream;

    async fn list_datasets(
        &self,
        request: Request<pb::ListQueryOptions>,
    ) -> Result<Response<Self::ListDatasetsStream>, Status> {
        let caller = tenant_caller(&request)?;
        let options = request.into_inner();
        let ids = self
            .service
            .list_datasets(&caller.tenant, options.limit, options.index)
            .await
            .map_err(to_status)?;
        let stream = futures::stream::iter(ids.into_iter().map(|id| {
            Ok(pb::DatasetPointer {
                dataset_id: id.to_string(),
            })
        }));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn create_dataset(
        &self,
        request: Request<pb::CreateDatasetRequest>,
    ) -> Result<Response<pb::DatasetSummary>, Status> {
        let caller = tenant_caller(&request)?;
        let request = request.into_inner();
        let new = NewDataset {
            name: request.name,
            description: request.description,
            dataset_type: request.dataset_type,
            source: Source {
                bucket: request.bucket,
                path: request.path,
            },
            tags: tags(request.tags),
        };
        let dataset = self
            .service
            .create_dataset(&caller.tenant, new)
            .await
            .map_err(to_status)?;
        Ok(Response::new(summary(dataset)))
    }

    async fn update_dataset(
        &self,
        request: Request<pb::CreateCommitRequest>,
    ) -> Result<Response<pb::DatasetSummary>, Status> {
        let caller = tenant_caller(&request)?;
        let request = request.into_inner();
        let dataset = self
            .service
            .update_dataset(
                &caller.tenant,
                &request.dataset_id,
                request.commit_message,
                Source {
                    bucket: request.bucket,
                    path: request.path,
                },
                tags(request.tags),
            )
            .await
            .map_err(to_status)?;
        Ok(Response::new(summary(dataset)))
    }

    async fn prepare_training_dataset(
        &self,
        request: Request<pb::DatasetQuery>,
    ) -> Result<Response<pb::SnapshotVersion>, Status> {
        let caller = tenant_caller(&request)?;
        let request = request.into_inner();
        let prepared = self
            .service
            .prepare(
                &caller.tenant,
                &request.dataset_id,
                &request.commit_id,
                &tags(request.tags),
            )
            .await
            .map_err(to_status)?;
        Ok(Response::new(snapshot_version(prepared)))
    }

    async fn fetch_training_dataset(
        &self,
        request: Request<pb::VersionQuery>,
    ) -> Result<Response<pb::VersionedSnapshot>, Status> {
        let caller = caller(&request);
        let request = request.into_inner();
        if !caller.may_read_snapshot(&request.dataset_id, &request.version_hash) {
            // A job token reads its own snapshot only; others look like they do not exist.
            return Err(Status::not_found(format!(
                "version {} of dataset {} not found",
                request.version_hash, request.dataset_id
            )));
        }
        let snapshot = self
            .service
            .fetch(&caller.tenant, &request.dataset_id, &request.version_hash)
            .await
            .map_err(to_status)?;
        let bucket = self.service.objects().datasets_bucket.clone();
        Ok(Response::new(versioned_snapshot(
            snapshot,
            &bucket,
            &caller.tenant,
        )))
    }

    async fn list_training_snapshots(
        &self,
        request: Request<pb::DatasetPointer>,
    ) -> Result<Response<pb::ListTrainingSnapshotsResponse>, Status> {
        let caller = tenant_caller(&request)?;
        let snapshots = self
            .service
            .list_snapshots(&caller.tenant, &request.into_inner().dataset_id)
            .await
            .map_err(to_status)?;
        let bucket = self.service.objects().datasets_bucket.clone();
        Ok(Response::new(pb::ListTrainingSnapshotsResponse {
            snapshots: snapshots
                .into_iter()
                .map(|snapshot| versioned_snapshot(snapshot, &bucket, &caller.tenant))
                .collect(),
        }))
    }

    async fn delete_dataset(
        &self,
        request: Request<pb::DatasetPointer>,
    ) -> Result<Response<()>, Status> {
        let caller = tenant_caller(&request)?;
        self.service
            .delete_dataset(&caller.tenant, &request.into_inner().dataset_id)
            .await
            .map_err(to_status)?;
        Ok(Response::new(()))
    }

    async fn upload_data(
        &self,
        request: Request<Streaming<pb::UploadDataRequest>>,
    ) -> Result<Response<pb::FileInfo>, Status> {
        let caller = tenant_caller(&request)?;
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("the upload stream is empty"))?;
        let mut upload = self
            .service
            .begin_upload(&caller.tenant, &first.bucket, &first.path)
            .map_err(to_status)?;
        let mut chunk = first.chunk;
        loop {
            if let Err(err) = upload.write(&chunk).await {
                upload.abort().await;
                return Err(to_status(err));
            }
            match stream.message().await {
                Ok(Some(message)) => chunk = message.chunk,
                Ok(None) => break,
                Err(status) => {
                    upload.abort().await;
                    return Err(status);
                }
            }
        }
        let (bucket, key) = (upload.bucket.clone(), upload.key.clone());
        let size = upload.finish().await.map_err(to_status)?;
        tracing::info!(%key, size, "upload stored");
        Ok(Response::new(pb::FileInfo {
            name: key.rsplit('/').next().unwrap_or(&key).to_string(),
            bucket,
            path: key,
        }))
    }
}

fn tags(tags: Vec<pb::Tag>) -> Vec<Tag> {
    tags.into_iter()
        .map(|tag| Tag {
            key: tag.tag_key,
            value: tag.tag_value,
        })
        .collect()
}

fn commit_info(commit: Commit) -> pb::CommitInfo {
    pb::CommitInfo {
        dataset_id: commit.dataset_id.to_string(),
        commit_id: commit.commit_id.to_string(),
        created_at: commit.created_at,
        commit_message: commit.message,
        tags: commit
            .tags
            .into_iter()
            .map(|tag| pb::Tag {
                tag_key: tag.key,
                tag_value: tag.value,
            })
            .collect(),
        path: commit.path,
        statistics: commit.statistics.into_iter().collect(),
        content_digest: commit.content_digest,
    }
}

fn summary(dataset: Dataset) -> pb::DatasetSummary {
    pb::DatasetSummary {
        dataset_id: dataset.dataset_id.to_string(),
        name: dataset.name,
        description: dataset.description,
        dataset_type: dataset.dataset_type.number(),
        last_updated_at: dataset.last_updated_at,
        commits: dataset.commits.into_iter().map(commit_info).collect(),
    }
}

fn snapshot_version(prepared: Prepared) -> pb::SnapshotVersion {
    let dataset = prepared.dataset;
    pb::SnapshotVersion {
        dataset_id: dataset.dataset_id.to_string(),
        name: dataset.name,
        description: dataset.description,
        dataset_type: dataset.dataset_type.number(),
        last_updated_at: dataset.last_updated_at,
        version_hash: prepared.version_hash,
        commits: prepared.selected.into_iter().map(commit_info).collect(),
    }
}

fn versioned_snapshot(snapshot: Snapshot, bucket: &str, tenant: &str) -> pb::VersionedSnapshot {
    let state = match snapshot.state {
        SnapshotState::Running => pb::SnapshotState::Running,
        SnapshotState::Ready => pb::SnapshotState::Ready,
        SnapshotState::Failed => pb::SnapshotState::Failed,
    };
    let ready = snapshot.state == SnapshotState::Ready;
    pb::VersionedSnapshot {
        dataset_id: snapshot.dataset_id.to_string(),
        // MiniAutoML names the snapshot's folder "root".
        root: ready.then(|| pb::FileInfo {
            name: "root".into(),
            bucket: bucket.to_string(),
            path: snapshot_prefix(tenant, snapshot.dataset_id, &snapshot.version_hash),
        }),
        version_hash: snapshot.version_hash,
        state: state.into(),
        parts: snapshot
            .parts
            .into_iter()
            .map(|part| pb::FileInfo {
                name: part.name,
                bucket: bucket.to_string(),
                path: part.path,
            })
            .collect(),
        statistics: snapshot.statistics.into_iter().collect(),
        message: snapshot.message,
        content_digest: snapshot.content_digest,
    }
}
