//! The web console: server-rendered pages over the four services' gRPC APIs, with live
//! updates through server-sent events bridged from the services' watch streams.
//!
//! - [`config`]: the `web` section of the configuration.
//! - [`clients`]: the connections to the services, carrying the signed-in user's token.
//! - [`session`]: sign-in, the session cookie and the cross-site request check.
//! - [`pages`]: one module per page family.
//! - [`live`]: the event streams.
//! - [`assets`]: the embedded scripts, styles and chart library.
//!
//! The console keeps no state of its own: any number of replicas serve the same users.

pub mod assets;
pub mod clients;
pub mod config;
pub mod error;
pub mod live;
pub mod pages;
pub mod server;
pub mod session;

use std::sync::Arc;

use automl_common::config::CommonConfig;
use axum::Router;
use axum::routing::{get, post};

pub use config::WebConfig;

/// What every handler shares.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The services.
    pub backends: clients::Backends,
    /// Whether a sign-in is required (the services require tokens).
    pub auth_enabled: bool,
    /// Whether cookies are marked `Secure` (the console serves HTTPS).
    pub secure_cookies: bool,
    /// Rows per table page.
    pub page_size: u32,
}

/// The console's routes over the services `config` names.
pub fn router(common: &CommonConfig, config: &WebConfig) -> Result<Router, error::StartError> {
    let state = Arc::new(AppState {
        backends: clients::Backends::new(config, &common.tls)?,
        auth_enabled: common.auth.enabled,
        secure_cookies: common.tls.serves_tls(),
        page_size: config.page_size,
    });
    let pages = Router::new()
        .route("/", get(pages::home))
        .route("/datasets", get(pages::datasets::list))
        .route("/datasets/{id}", get(pages::datasets::show))
        .route("/datasets/{id}/prepare", post(pages::datasets::prepare))
        .route("/jobs", get(pages::jobs::list))
        .route("/jobs/{id}", get(pages::jobs::show))
        .route("/jobs/{id}/cancel", post(pages::jobs::cancel))
        .route("/jobs/{id}/events", get(live::job_events))
        .route("/runs", get(pages::runs::list))
        .route("/runs/{id}", get(pages::runs::show))
        .route("/runs/{id}/events", get(live::run_events))
        .route("/compare", get(pages::runs::compare))
        .route("/models", get(pages::models::list))
        .route("/predict", post(pages::models::predict))
        .route("/experiments", get(pages::experiments::list))
        .route("/experiments/{id}", get(pages::experiments::show))
        .route("/signout", post(session::sign_out))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            session::require_session,
        ));
    Ok(Router::new()
        .merge(pages)
        .route("/signin", get(session::sign_in_page).post(session::sign_in))
        .route("/assets/{name}", get(assets::serve))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(error::not_found)
        .with_state(state))
}
