//! Shared building blocks of the automl services.
//!
//! - [`config`]: the shared configuration sections and the layered loader (defaults < TOML file <
//!   `AUTOML__SECTION__KEY` environment < command-line overrides).
//! - [`telemetry`]: tracing setup.
//! - [`error`]: the error → `tonic::Status` convention every service follows.
//! - [`server`]: the one gRPC bootstrap (health, reflection, graceful shutdown).
//! - [`db`]: the SQL pool (SQLite file or Postgres) and per-service migrations.
//! - [`s3`]: the object-store client; [`embedded_s3`]: the in-process S3 endpoint.
//! - [`time`]: timestamps as ISO-8601 UTC strings.
//! - `testing` (feature `testing`): start services on `127.0.0.1:0` with a temp data directory.

pub mod config;
pub mod db;
pub mod embedded_s3;
pub mod error;
pub mod s3;
pub mod server;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod time;
