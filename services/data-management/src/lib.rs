//! data-management: datasets with versioned commits and immutable, hash-addressed training
//! snapshots.
//!
//! - [`config`]: the service's configuration section.
//! - [`model`]: domain types, input checks, version hashes and object keys.
//! - [`ingest`]: raw objects → a commit's normalized files (TEXT_INTENT, GENERIC).
//! - [`snapshot`]: commits → a snapshot's files, streamed and deterministic.
//! - [`store`]: SQL persistence; pending reservations make commits all-or-nothing.
//! - [`service`]: the operations, the bounded snapshot builder pool and the reservation sweeper.
//! - [`grpc`]: the tonic layer, the only place that sees request and response types.
//! - [`error`]: the service's error enum and its gRPC codes.

pub mod config;
pub mod error;
pub mod grpc;
pub mod ingest;
pub mod model;
pub mod service;
pub mod snapshot;
pub mod store;

use automl_common::config::CommonConfig;
use automl_common::db::{Database, DbError, MigrationSource};
use automl_common::s3::ObjectStore;
use automl_common::server::ServiceRoutes;
use tokio_util::sync::CancellationToken;

pub use config::DataManagementConfig;

/// Short name: database file, migrations table, logs.
pub const SERVICE: &str = "data_management";

/// The service's migrations, per backend.
pub const MIGRATIONS: &[MigrationSource] = &[MigrationSource {
    version: 1,
    description: "datasets, commits, snapshots",
    sqlite: include_str!("../migrations/sqlite/0001_init.sql"),
    postgres: include_str!("../migrations/postgres/0001_init.sql"),
}];

/// Opens the database, resumes interrupted snapshot builds, starts the reservation sweeper,
/// and returns the routes to serve plus the database handle (closed by the caller).
pub async fn start(
    common: &CommonConfig,
    config: &DataManagementConfig,
    objects: ObjectStore,
    shutdown: CancellationToken,
) -> Result<(ServiceRoutes, Database), DbError> {
    let db = Database::open(&common.database, &common.data_dir, SERVICE, MIGRATIONS).await?;
    let service = service::DataManagement::new(
        store::DataStore::new(db.clone()),
        objects,
        config.clone(),
        shutdown.clone(),
    );
    service.start_background_work().await;
    let routes = grpc::routes(service);
    let routes = routes.secured(common);
    Ok((routes, db))
}
