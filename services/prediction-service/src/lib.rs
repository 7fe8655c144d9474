//! prediction-service: loads a trained model by its run id and answers predictions.
//!
//! - [`config`]: the service's configuration section.
//! - [`resolver`]: run id → artifact through metadata-store, cached for good.
//! - [`batcher`]: concurrent requests for one model share a batched forward pass.
//! - [`cache`]: download once, load once, keep an LRU of loaded models bounded by count and
//!   bytes.
//! - [`service`]: Predict: validation, admission control, built-in or external predictor.
//! - [`grpc`]: the tonic layer.
//! - [`error`]: the service's error enum and its gRPC codes.

pub mod batcher;
pub mod cache;
pub mod config;
pub mod error;
pub mod grpc;
pub mod resolver;
pub mod service;

use std::path::PathBuf;
use std::sync::Arc;

use automl_common::config::CommonConfig;
use automl_common::s3::ObjectStore;
use automl_common::server::ServiceRoutes;

pub use config::PredictionConfig;

use crate::error::PredictError;

/// Builds the service; the returned handle exposes the cache statistics.
pub fn start(
    common: &CommonConfig,
    config: &PredictionConfig,
    objects: ObjectStore,
) -> Result<(ServiceRoutes, Arc<service::Predictions>), PredictError> {
    let channel = common
        .tls
        .endpoint(&config.metadata_store)
        .map_err(|err| {
            PredictError::InvalidArgument(format!("prediction_service.metadata_store: {err}"))
        })?
        .connect_lazy();
    let dir = if config.model_cache_dir.is_empty() {
        common.data_dir.join("models")
    } else {
        PathBuf::from(&config.model_cache_dir)
    };
    let cache = cache::ModelCache::new(
        objects,
        dir,
        config.max_loaded_models,
        config.max_loaded_bytes,
        config.top_k,
    );
    let service = Arc::new(service::Predictions::new(
        resolver::Resolver::new(
            channel,
            automl_common::auth::Authenticator::from_config(&common.auth, &common.data_dir),
        ),
        cache,
        config.clone(),
    )?);
    let routes = grpc::routes(Arc::clone(&service));
    let routes = routes.secured(common);
    Ok((routes, service))
}
