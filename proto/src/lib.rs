//! The automl gRPC contract, generated at build time from the `.proto` files beside this crate.
//!
//! One module per protobuf package, each with its messages, a `*_client` and a `*_server`
//! module; [`FILE_DESCRIPTOR_SET`] describes all of them for gRPC server reflection.

#![allow(clippy::all, missing_docs)]

/// Package `data_management`: datasets, commits and training snapshots.
pub mod data_management {
    tonic::include_proto!("data_management");
}

/// Package `metadata_store`: runs, epochs, artifacts.
pub mod metadata_store {
    tonic::include_proto!("metadata_store");
}

/// Package `training`: the training job queue.
pub mod training {
    tonic::include_proto!("training");
}

/// Package `prediction`: model serving and the external predictor interface.
pub mod prediction {
    tonic::include_proto!("prediction");
}

/// The encoded `FileDescriptorSet` of the whole contract, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/automl_descriptor.bin"));

/// The fully qualified gRPC service names, as health checks and reflection know them.
pub mod service_names {
    /// data-management's service.
    pub const DATA_MANAGEMENT: &str = "data_management.DataManagementService";
    /// metadata-store's service.
    pub const METADATA_STORE: &str = "metadata_store.MetadataStoreService";
    /// training-service's service.
    pub const TRAINING: &str = "training.TrainingService";
    /// prediction-service's service.
    pub const PREDICTION: &str = "prediction.PredictionService";
}
