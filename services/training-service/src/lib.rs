//! training-service: a durable queue of training jobs, launched as local processes or as
//! Kubernetes Jobs.
//!
//! - [`config`]: the service's configuration section and the algorithm registry.
//! - [`model`]: job states and specs, and the submission checks.
//! - [`experiment`]: hyperparameter search: experiments, search space checks, grid, random
//!   and TPE search, the median stopping rule.
//! - [`policy`]: per-job ceilings, tenant quotas, and the fair order of tenants.
//! - [`store`]: SQL persistence; claims are one transaction under the concurrency limit and
//!   the tenant's quota.
//! - [`grants`]: the presigned URLs of exactly the objects a trainer's job needs.
//! - [`backend`]: the [`backend::Backend`] trait: what the service asks of where trainers run.
//! - [`local`]: the local backend (child processes, per-job logs, cancel by kill).
//! - [`kubernetes`]: the Kubernetes backend (batch/v1 Jobs, watches, pod logs, re-attach).
//! - [`service`]: submission and status, scheduler, launch, streams (watch and logs), and
//!   reconciliation, one module each.
//! - [`grpc`]: the tonic layer.
//! - [`error`]: the service's error enum and its gRPC codes.

pub mod backend;
pub mod config;
pub mod error;
pub mod experiment;
pub mod grants;
pub mod grpc;
pub mod kubernetes;
pub mod local;
pub mod model;
pub mod policy;
pub mod service;
pub mod store;

use std::sync::Arc;

use automl_common::config::CommonConfig;
use automl_common::db::{Database, MigrationSource};
use automl_common::server::ServiceRoutes;
use tokio_util::sync::CancellationToken;

pub use config::TrainingConfig;

use crate::error::TrainingError;

/// Short name: database file, migrations table, logs.
pub const SERVICE: &str = "training_service";

/// The service's migrations, per backend.
pub const MIGRATIONS: &[MigrationSource] = &[
    MigrationSource {
        version: 1,
        description: "jobs",
        sqlite: include_str!("../migrations/sqlite/0001_init.sql"),
        postgres: include_str!("../migrations/postgres/0001_init.sql"),
    },
    MigrationSource {
        version: 2,
        description: "scheduling",
        sqlite: include_str!("../migrations/sqlite/0002_scheduling.sql"),
        postgres: include_str!("../migrations/postgres/0002_scheduling.sql"),
    },
    MigrationSource {
        version: 3,
        description: "experiments",
        sqlite: include_str!("../migrations/sqlite/0003_experiments.sql"),
        postgres: include_str!("../migrations/postgres/0003_experiments.sql"),
    },
];

/// Opens the database, reconciles jobs left running by a previous process, starts the
/// scheduler, and returns the routes, the service handle and the database to close.
pub async fn start(
    common: &CommonConfig,
    config: &TrainingConfig,
    s3_endpoint: &str,
    shutdown: CancellationToken,
) -> Result<(ServiceRoutes, Arc<service::Training>, Database), TrainingError> {
    let db = Database::open(&common.database, &common.data_dir, SERVICE, MIGRATIONS)
        .await
        .map_err(|err| TrainingError::Corrupt(format!("database: {err}")))?;
    let service = service::Training::start(
        store::JobStore::new(db.clone()),
        config.clone(),
        common.s3.clone(),
        s3_endpoint,
        common.data_dir.join("training-logs"),
        service::Security {
            auth: automl_common::auth::Authenticator::from_config(&common.auth, &common.data_dir),
            tls: common.tls.clone(),
        },
        shutdown,
    )
    .await?;
    let routes = grpc::routes(Arc::clone(&service));
    let routes = routes.secured(common);
    Ok((routes, service, db))
}
