//! Run id → model artifact, resolved through metadata-store and cached for good: a run's
//! artifact never changes once recorded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use automl_common::auth::{Authenticator, Credentials};
use automl_proto::metadata_store::GetArtifactRequest;
use automl_proto::metadata_store::metadata_store_service_client::MetadataStoreServiceClient;
use tonic::Code;
use tonic::transport::Channel;

use crate::error::PredictError;

/// Where a run's model files are and what produced them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactRef {
    /// The tenant whose run it is.
    pub tenant: String,
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
    /// `bucket/path`, see [`ArtifactRef::cache_key`].
    location: String,
}

impl ArtifactRef {
    /// The artifact of `tenant`'s run `run_id` at `bucket/path`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        tenant: String,
        run_id: String,
        name: String,
        version: String,
        bucket: String,
        path: String,
        algorithm: String,
    ) -> Self {
        let location = format!("{bucket}/{path}");
        Self {
            tenant,
            run_id,
            name,
            version,
            bucket,
            path,
            algorithm,
            location,
        }
    }

    /// What identifies the model files: their location. Run ids repeat across tenants, the
    /// location (under the tenant's prefix) does not, and a recorded location never changes.
    pub fn cache_key(&self) -> &str {
        &self.location
    }

    /// The model's folder in the cache directory, named by a digest of [`Self::cache_key`].
    pub fn cache_dir_name(&self) -> String {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(self.cache_key().as_bytes());
        format!("model-{}", &hex::encode(digest)[..32])
    }
}

/// Resolves and remembers artifacts.
#[derive(Debug)]
pub struct Resolver {
    client: MetadataStoreServiceClient<Channel>,
    /// tenant → run id → artifact (two levels, so a lookup needs no owned key).
    known: Mutex<HashMap<String, HashMap<String, Arc<ArtifactRef>>>>,
    auth: Option<Arc<Authenticator>>,
}

impl Resolver {
    /// A resolver asking the metadata-store behind `channel`.
    pub fn new(channel: Channel, auth: Option<Arc<Authenticator>>) -> Self {
        Self {
            client: MetadataStoreServiceClient::new(channel),
            known: Mutex::new(HashMap::new()),
            auth,
        }
    }

    /// The artifact of `tenant`'s run `run_id`; asks metadata-store (on the tenant's behalf,
    /// so another tenant's run is not found) only the first time.
    pub async fn resolve(
        &self,
        tenant: &str,
        run_id: &str,
    ) -> Result<Arc<ArtifactRef>, PredictError> {
        if let Some(found) = self.cached(tenant, run_id) {
            return Ok(found);
        }
        // Boxed: the call's state stays out of every (cached) resolve's future.
        Box::pin(self.ask(tenant, run_id)).await
    }

    /// Asks metadata-store and remembers the answer.
    async fn ask(&self, tenant: &str, run_id: &str) -> Result<Arc<ArtifactRef>, PredictError> {
        let mut request = tonic::Request::new(GetArtifactRequest {
            run_id: run_id.to_string(),
        });
        Credentials::for_tenant(self.auth.as_deref(), tenant).apply(&mut request);
        automl_common::request_id::attach(&mut request);
        let response = self
            .client
            .clone()
            .get_artifact(request)
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
        let artifact = Arc::new(ArtifactRef::new(
            tenant.to_string(),
            run_id.to_string(),
            response.name,
            response.version,
            file.bucket,
            file.path,
            response.algorithm,
        ));
        if let Ok(mut known) = self.known.lock() {
            known
                .entry(tenant.to_string())
                .or_default()
                .insert(run_id.to_string(), Arc::clone(&artifact));
        }
        Ok(artifact)
    }

    fn cached(&self, tenant: &str, run_id: &str) -> Option<Arc<ArtifactRef>> {
        self.known.lock().ok()?.get(tenant)?.get(run_id).cloned()
    }
}
