//! The console's connections to the four services. Every call carries the signed-in user's
//! token, so each service applies its own tenancy: the console never sees more than its user.

use automl_common::auth::Credentials;
use automl_common::tls::{TlsConfig, TlsError};
use automl_proto::data_management::data_management_service_client::DataManagementServiceClient;
use automl_proto::metadata_store::metadata_store_service_client::MetadataStoreServiceClient;
use automl_proto::prediction::prediction_service_client::PredictionServiceClient;
use automl_proto::training::training_service_client::TrainingServiceClient;
use tonic::codegen::InterceptedService;
use tonic::transport::Channel;

use crate::config::WebConfig;

/// One authenticated connection.
pub type Conn = InterceptedService<Channel, Credentials>;

/// Lazily connected channels to the services (reconnecting on their own).
#[derive(Clone, Debug)]
pub struct Backends {
    data: Channel,
    metadata: Channel,
    prediction: Channel,
    training: Channel,
}

impl Backends {
    /// Channels to the services `config` names, TLS verified per `tls`.
    pub fn new(config: &WebConfig, tls: &TlsConfig) -> Result<Self, TlsError> {
        let lazy = |url: &str| -> Result<Channel, TlsError> {
            Ok(tls
                .endpoint(url)?
                .connect_timeout(std::time::Duration::from_secs(5))
                .connect_lazy())
        };
        Ok(Self {
            data: lazy(&config.data_management)?,
            metadata: lazy(&config.metadata_store)?,
            prediction: lazy(&config.prediction_service)?,
            training: lazy(&config.training_service)?,
        })
    }

    /// data-management as `credentials`.
    pub fn data(&self, credentials: &Credentials) -> DataManagementServiceClient<Conn> {
        DataManagementServiceClient::with_interceptor(self.data.clone(), credentials.clone())
    }

    /// metadata-store as `credentials`.
    pub fn metadata(&self, credentials: &Credentials) -> MetadataStoreServiceClient<Conn> {
        MetadataStoreServiceClient::with_interceptor(self.metadata.clone(), credentials.clone())
    }

    /// prediction-service as `credentials`.
    pub fn prediction(&self, credentials: &Credentials) -> PredictionServiceClient<Conn> {
        PredictionServiceClient::with_interceptor(self.prediction.clone(), credentials.clone())
    }

    /// training-service as `credentials`.
    pub fn training(&self, credentials: &Credentials) -> TrainingServiceClient<Conn> {
        TrainingServiceClient::with_interceptor(self.training.clone(), credentials.clone())
    }
}
