//! Shared building blocks of the automl services.
//!
//! - [`config`]: the shared configuration sections and the layered loader (defaults < TOML file <
//!   `AUTOML__SECTION__KEY` environment < command-line overrides).
//! - [`telemetry`]: tracing setup (text or JSON logs, the SQL latency layer).
//! - [`metrics`]: the process-wide Prometheus registry; [`metrics_server`]: `GET /metrics`.
//! - [`otlp`]: optional trace export to an OpenTelemetry collector (OTLP/HTTP JSON).
//! - [`rpc`]: the tower layer giving every call a span, a request id and metrics;
//!   [`request_id`]: the id's propagation to outgoing calls and the trainer.
//! - [`auth`]: API tokens, tenants, the authenticating layer and client credentials.
//! - [`error`]: the error → `tonic::Status` convention every service follows.
//! - [`server`]: the one gRPC bootstrap (health, reflection, graceful shutdown).
//! - [`db`]: the SQL pool (SQLite file or Postgres) and per-service migrations.
//! - [`s3`]: the object-store client; [`embedded_s3`]: the in-process S3 endpoint.
//! - [`tls`]: rustls for servers and clients.
//! - [`csv`]: the CSV record reader of ingest, snapshots and the trainer, and the quoting of
//!   normalized rows.
//! - [`time`]: timestamps as ISO-8601 UTC strings.
//! - `testing` (feature `testing`): start services on `127.0.0.1:0` with a temp data directory.

pub mod auth;
pub mod config;
pub mod csv;
pub mod db;
pub mod embedded_s3;
pub mod error;
pub mod metrics;
pub mod metrics_server;
pub mod otlp;
pub mod request_id;
pub mod rpc;
pub mod s3;
pub mod server;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod time;
pub mod tls;
