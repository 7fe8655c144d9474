//! The `automl` binary as users run it: a real process, real sockets, the real grpcurl.
//! Storage scenarios run on SQLite and (with AUTOML_TEST_POSTGRES_URL) on Postgres.

#[path = "system/auth.rs"]
mod auth;
#[path = "system/browser.rs"]
mod browser;
#[path = "system/datasets.rs"]
mod datasets;
#[path = "system/deploy.rs"]
mod deploy;
#[path = "system/docs.rs"]
mod docs;
#[path = "system/encoder.rs"]
mod encoder;
#[path = "system/experiments.rs"]
mod experiments;
#[path = "system/lab.rs"]
mod lab;
#[path = "system/metadata.rs"]
mod metadata;
#[path = "system/observability.rs"]
mod observability;
#[path = "system/prediction.rs"]
mod prediction;
#[path = "system/pretrained.rs"]
mod pretrained;
#[path = "system/resilience.rs"]
mod resilience;
#[path = "system/support.rs"]
mod support;
#[path = "system/training.rs"]
mod training;
#[path = "system/web.rs"]
mod web;
