//! Run id → model artifact, resolved through metadata-store and cached for good: a run's
//! artifact never changes once recorded.

use std::collections::HashMap;
use std::sync::Mutex;

use automl_proto::metadata_store::GetArtifactRequest;
use automl_proto::metadata_store::metadata_store_service_client::MetadataStoreServiceClient;
use tonic::Code;
use tonic::transport::Channel;

use crate::error::PredictError;

/// Where a run's model files are and what produced them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactRef {
    /// The run.
    pub run_id: String,
    /// Artifact name.
    pub name: String,
    /// Artifact version ("1", "2", …).
    pub version: String,
    /// Models bucket.
    pub bucket: String,
    /// Prefix (or key) of the files.
    pub path: String,
    /// The algorithm that produced it.
    pub algorithm: String,
}

/// Resolves and remembers artifacts.
#[derive(Debug)]
pub struct Resolver {
    client: MetadataStoreServiceClient<Channel>,
    known: Mutex<HashMap<String, ArtifactRef>>,
}

impl Resolver {
    /// A resolver asking the metadata-store behind `channel`.
    pub fn new(channel: Channel) -> Self {
        Self {
            client: MetadataStoreServiceClient::new(channel),
            known: Mutex::new(HashMap::new()),
        }
    }

    /// The artifact of `run_id`; asks metadata-store only the first time.
    pub async fn resolve(&self, run_id: &str) -> Result<ArtifactRef, PredictError> {
        if let Some(found) = self.cached(run_id) {
            return Ok(found);
        }
        let response = self
            .client
            .clone()
            .get_artifact(GetArtifactRequest {
                run_id: run_id.to_string(),
            })
            .await
            .map_err(|status| match status.code() {
                Code::NotFound => PredictError::ArtifactNotFound(run_id.to_string()),
                Code::InvalidArgument => {
                    PredictError::InvalidArgument(status.message().to_string())
                }
                _ => PredictError::Unavailable(format!("metadata-store ({})", status.code())),
            })?
            .into_inner();
        let file = response.artifact.unwrap_or_default();
        let artifact = ArtifactRef {
            run_id: run_id.to_string(),
            name: response.name,
            version: response.version,
            bucket: file.bucket,
            path: file.path,
            algorithm: response.algorithm,
        };
        if let Ok(mut known) = self.known.lock() {
            known.insert(run_id.to_string(), artifact.clone());
        }
        Ok(artifact)
    }

    fn cached(&self, run_id: &str) -> Option<ArtifactRef> {
        self.known.lock().ok()?.get(run_id).cloned()
    }
}
