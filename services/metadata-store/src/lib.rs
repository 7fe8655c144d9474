//! metadata-store: runs, per-epoch metrics, model artifacts, and each run's lineage to its
//! dataset version and code version.
//!
//! - [`config`]: the service's own configuration section.
//! - [`model`]: the domain types and the validation of what clients send.
//! - [`store`]: SQL persistence (SQLite or Postgres); every observable write is one transaction.
//! - [`events`]: in-process notifications that wake `WatchRun` streams.
//! - [`service`]: the operations, tying the store, the object store and the events together.
//! - [`grpc`]: the tonic layer, the only place that sees request and response types.
//! - [`error`]: the service's error enum and its gRPC codes.

pub mod config;
pub mod error;
pub mod events;
pub mod grpc;
pub mod model;
pub mod service;
pub mod store;

use automl_common::db::{Database, DbError, MigrationSource};
use automl_common::s3::ObjectStore;
use automl_common::server::ServiceRoutes;
use tokio_util::sync::CancellationToken;

pub use config::MetadataStoreConfig;

/// Short name: database file, migrations table, logs.
pub const SERVICE: &str = "metadata_store";

/// The service's migrations, per backend.
pub const MIGRATIONS: &[MigrationSource] = &[
    MigrationSource {
        version: 1,
        description: "runs, epochs, artifacts",
        sqlite: include_str!("../migrations/sqlite/0001_init.sql"),
        postgres: include_str!("../migrations/postgres/0001_init.sql"),
    },
    MigrationSource {
        version: 2,
        description: "runs.pretrained_model",
        sqlite: include_str!("../migrations/sqlite/0002_pretrained_model.sql"),
        postgres: include_str!("../migrations/postgres/0002_pretrained_model.sql"),
    },
    MigrationSource {
        version: 3,
        description: "run_metrics, runs.duration_ms, artifacts by date",
        sqlite: include_str!("../migrations/sqlite/0003_run_metrics.sql"),
        postgres: include_str!("../migrations/postgres/0003_run_metrics.sql"),
    },
];

/// Opens the database, runs the backfills a migration left (see
/// [`store::RunStore::backfill`]), and returns the routes to serve plus the database handle
/// (closed by the caller after the server stops).
pub async fn start(
    common: &automl_common::config::CommonConfig,
    config: &MetadataStoreConfig,
    objects: ObjectStore,
    shutdown: CancellationToken,
) -> Result<(ServiceRoutes, Database), DbError> {
    let db = Database::open(&common.database, &common.data_dir, SERVICE, MIGRATIONS).await?;
    let store = store::RunStore::new(db.clone());
    store.backfill().await?;
    let service = service::MetadataStore::new(store, objects, config.watch_poll_interval());
    let routes = grpc::routes(service, shutdown);
    let routes = routes.secured(common);
    Ok((routes, db))
}
