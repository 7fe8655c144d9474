//! `automl serve <service|all>` and `automl migrate`: start the object store connection (or the
//! embedded endpoint), then each selected service on its own port, until SIGINT/SIGTERM.

use std::time::Duration;

use anyhow::Context;
use automl_common::config::{CommonConfig, ServerConfig};
use automl_common::db::{Database, MigrationSource};
use automl_common::embedded_s3::EmbeddedS3;
use automl_common::s3::{ObjectStore, S3Error};
use automl_common::server::{ServiceRoutes, serve, shutdown_on_signals};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::AutomlConfig;

/// What `automl serve` and `automl migrate` accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServiceArg {
    /// Datasets, commits, training snapshots (port 6000).
    DataManagement,
    /// Runs, epochs, artifacts (port 6002).
    MetadataStore,
    /// Serves trained models by run id (port 6001).
    PredictionService,
    /// The training job queue (port 6003).
    TrainingService,
    /// The web console (port 8080), a client of the four services.
    Web,
    /// Every service and the web console in one process, each on its own port.
    All,
}

/// One concrete service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// data-management.
    DataManagement,
    /// metadata-store.
    MetadataStore,
    /// prediction-service.
    Prediction,
    /// training-service.
    Training,
}

impl ServiceArg {
    /// The concrete services this argument stands for.
    pub fn expand(self) -> Vec<Service> {
        match self {
            ServiceArg::DataManagement => vec![Service::DataManagement],
            ServiceArg::MetadataStore => vec![Service::MetadataStore],
            ServiceArg::PredictionService => vec![Service::Prediction],
            ServiceArg::TrainingService => vec![Service::Training],
            ServiceArg::Web => Vec::new(),
            ServiceArg::All => vec![
                Service::DataManagement,
                Service::MetadataStore,
                Service::Prediction,
                Service::Training,
            ],
        }
    }
}

impl ServiceArg {
    /// Whether the web console is among what this argument starts.
    pub fn includes_web(self) -> bool {
        matches!(self, ServiceArg::Web | ServiceArg::All)
    }

    /// The config sections holding the host and port of what this argument starts.
    pub fn sections(self) -> Vec<&'static str> {
        let mut sections: Vec<&'static str> =
            self.expand().into_iter().map(Service::section).collect();
        if self.includes_web() {
            sections.push("web");
        }
        sections
    }
}

impl Service {
    /// The name as users type it.
    pub fn as_str(self) -> &'static str {
        match self {
            Service::DataManagement => "data-management",
            Service::MetadataStore => "metadata-store",
            Service::Prediction => "prediction-service",
            Service::Training => "training-service",
        }
    }

    /// The config section holding its host and port.
    pub fn section(self) -> &'static str {
        match self {
            Service::DataManagement => "data_management",
            Service::MetadataStore => "metadata_store",
            Service::Prediction => "prediction_service",
            Service::Training => "training_service",
        }
    }
}

/// Runs the selected services until a shutdown signal.
pub async fn run(mut config: AutomlConfig, service: ServiceArg) -> anyhow::Result<()> {
    let common = config.common();
    let shutdown = shutdown_on_signals();
    // The console alone keeps no data and reads no objects: only the services need both.
    let (objects, _embedded) = if service.expand().is_empty() {
        (None, None)
    } else {
        std::fs::create_dir_all(&common.data_dir)
            .with_context(|| format!("creating data directory {}", common.data_dir.display()))?;
        let (objects, embedded) = connect_object_store(&common).await?;
        (Some(objects), embedded)
    };

    // Bind every listener first, so services started together can find each other.
    let services = service.expand();
    let mut listeners = Vec::new();
    for name in &services {
        let bind = bind_address(&config, *name);
        let listener = TcpListener::bind(&bind)
            .await
            .with_context(|| format!("binding {} to {bind}", name.as_str()))?;
        // With TLS, the server certificate must name 127.0.0.1 (an IP SAN).
        let local = format!(
            "{}://127.0.0.1:{}",
            common.tls.scheme(),
            listener.local_addr()?.port()
        );
        match name {
            Service::MetadataStore => {
                config.prediction_service.metadata_store = local.clone();
                config.training_service.metadata_store = local;
            }
            Service::DataManagement => config.training_service.data_management = local,
            Service::Prediction | Service::Training => {}
        }
        listeners.push((*name, listener));
    }

    let web_listener = if service.includes_web() {
        let bind = config.web.server().bind_address();
        let listener = TcpListener::bind(&bind)
            .await
            .with_context(|| format!("binding web to {bind}"))?;
        Some(listener)
    } else {
        None
    };
    if service == ServiceArg::All {
        // The console talks to the services of this process.
        let scheme = common.tls.scheme();
        for (name, listener) in &listeners {
            let local = format!("{scheme}://127.0.0.1:{}", listener.local_addr()?.port());
            match name {
                Service::DataManagement => config.web.data_management = local,
                Service::MetadataStore => config.web.metadata_store = local,
                Service::Prediction => config.web.prediction_service = local,
                Service::Training => config.web.training_service = local,
            }
        }
    }

    let mut servers = tokio::task::JoinSet::new();
    if config.telemetry.metrics_enabled {
        start_metrics(&config, &shutdown, &mut servers).await?;
    }
    if let Some(listener) = web_listener {
        let router = automl_web::router(&common, &config.web).context("starting web")?;
        let tls = automl_web::server::acceptor(&common.tls).context("starting web")?;
        println!("automl: web listening on {}", listener.local_addr()?);
        let token = shutdown.clone();
        servers.spawn(async move {
            automl_web::server::serve(listener, router, tls, token)
                .await
                .context("web server")
        });
    }
    let mut databases: Vec<Database> = Vec::new();
    for (name, listener) in listeners {
        let objects = objects
            .as_ref()
            .context("the object store is connected for every service")?;
        let (routes, db) = start_service(&config, &common, name, objects, &shutdown).await?;
        databases.extend(db);
        let addr = listener.local_addr()?;
        // A line on stdout that scripts and tests can wait for.
        println!("automl: {} listening on {addr}", name.as_str());
        let token = shutdown.clone();
        servers.spawn(async move {
            serve(listener, routes, token)
                .await
                .with_context(|| format!("{} server", name.as_str()))
        });
    }
    let mut failed = None;
    while let Some(result) = servers.join_next().await {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(err)) => failed = Some(err),
            Err(join) => failed = Some(anyhow::anyhow!("server task failed: {join}")),
        }
        // One server stopping (or failing) stops the others.
        shutdown.cancel();
    }
    for db in databases {
        db.close().await;
    }
    tracing::info!("stopped");
    failed.map_or(Ok(()), Err)
}

/// `host:port` a client on this machine reaches `service` at: its bind address, with a
/// wildcard host replaced by the loopback address.
pub fn local_address(config: &AutomlConfig, service: Service) -> String {
    let server = match service {
        Service::DataManagement => config.data_management.server(),
        Service::MetadataStore => config.metadata_store.server(),
        Service::Prediction => config.prediction_service.server(),
        Service::Training => config.training_service.server(),
    };
    reachable(&server)
}

/// `host:port` a client on this machine reaches the web console at.
pub fn local_web_address(config: &AutomlConfig) -> String {
    reachable(&config.web.server())
}

fn reachable(server: &ServerConfig) -> String {
    format!("{}:{}", loopback(&server.host), server.port)
}

/// A bind host as a client on this machine reaches it: a wildcard becomes the loopback address.
pub fn loopback(host: &str) -> &str {
    match host {
        "" | "0.0.0.0" => "127.0.0.1",
        "::" | "[::]" => "[::1]",
        other => other,
    }
}

fn bind_address(config: &AutomlConfig, service: Service) -> String {
    match service {
        Service::DataManagement => config.data_management.server().bind_address(),
        Service::MetadataStore => config.metadata_store.server().bind_address(),
        Service::Prediction => config.prediction_service.server().bind_address(),
        Service::Training => config.training_service.server().bind_address(),
    }
}

/// Starts one service; returns its routes and the database to close on the way out.
async fn start_service(
    config: &AutomlConfig,
    common: &CommonConfig,
    service: Service,
    objects: &ObjectStore,
    shutdown: &CancellationToken,
) -> anyhow::Result<(ServiceRoutes, Option<Database>)> {
    Ok(match service {
        Service::DataManagement => {
            let (routes, db) = automl_data_management::start(
                common,
                &config.data_management,
                objects.clone(),
                shutdown.clone(),
            )
            .await
            .context("starting data-management")?;
            (routes, Some(db))
        }
        Service::MetadataStore => {
            let (routes, db) = automl_metadata_store::start(
                common,
                &config.metadata_store,
                objects.clone(),
                shutdown.clone(),
            )
            .await
            .context("starting metadata-store")?;
            (routes, Some(db))
        }
        Service::Prediction => {
            let (routes, _) = automl_prediction_service::start(
                common,
                &config.prediction_service,
                objects.clone(),
            )
            .context("starting prediction-service")?;
            (routes, None)
        }
        Service::Training => {
            let (routes, _, db) = automl_training_service::start(
                common,
                &config.training_service,
                &objects.endpoint,
                shutdown.clone(),
            )
            .await
            .context("starting training-service")?;
            (routes, Some(db))
        }
    })
}

/// Connects to the configured endpoint, or starts the embedded one when none is configured,
/// and makes sure both buckets exist. The returned endpoint handle keeps it running.
pub async fn connect_object_store(
    common: &CommonConfig,
) -> anyhow::Result<(ObjectStore, Option<EmbeddedS3>)> {
    let (endpoint, embedded) = if common.s3.endpoint.is_empty() {
        let listener = TcpListener::bind(&common.s3.embedded_bind)
            .await
            .with_context(|| {
                format!(
                    "binding the embedded s3 endpoint to {}",
                    common.s3.embedded_bind
                )
            })?;
        let embedded = EmbeddedS3::start(
            &common.data_dir.join("objects"),
            listener,
            &common.s3.access_key,
            &common.s3.secret_key,
        )
        .await?;
        println!("automl: embedded s3 listening on {}", embedded.addr);
        (embedded.endpoint(), Some(embedded))
    } else {
        (common.s3.endpoint.clone(), None)
    };
    let objects = ObjectStore::new(&common.s3, &endpoint);
    ensure_buckets_with_retry(&objects).await?;
    Ok((objects, embedded))
}

/// MinIO may still be starting (compose, Kubernetes): retry while it is unreachable.
async fn ensure_buckets_with_retry(objects: &ObjectStore) -> anyhow::Result<()> {
    let mut delay = Duration::from_millis(200);
    let mut attempts = 0;
    loop {
        match objects.ensure_buckets().await {
            Ok(()) => return Ok(()),
            Err(S3Error::Unavailable(reason)) if attempts < 30 => {
                attempts += 1;
                tracing::warn!(endpoint = %objects.endpoint, %reason, "object store not reachable yet, retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(err) => {
                return Err(err).with_context(|| format!("object store at {}", objects.endpoint));
            }
        }
    }
}

/// `automl migrate`: applies every selected service's migrations and exits.
pub async fn migrate(config: AutomlConfig, service: ServiceArg) -> anyhow::Result<()> {
    let common = config.common();
    for name in service.expand() {
        let (short, migrations): (&'static str, &[MigrationSource]) = match name {
            Service::DataManagement => (
                automl_data_management::SERVICE,
                automl_data_management::MIGRATIONS,
            ),
            Service::MetadataStore => (
                automl_metadata_store::SERVICE,
                automl_metadata_store::MIGRATIONS,
            ),
            Service::Training => (
                automl_training_service::SERVICE,
                automl_training_service::MIGRATIONS,
            ),
            // Keeps no database: nothing to migrate.
            Service::Prediction => continue,
        };
        let db = Database::open(&common.database, &common.data_dir, short, migrations)
            .await
            .with_context(|| format!("migrating {}", name.as_str()))?;
        db.close().await;
        println!("automl: {} schema is up to date", name.as_str());
    }
    Ok(())
}

/// Binds and serves the process's one `/metrics` endpoint (shared by every service it runs).
async fn start_metrics(
    config: &AutomlConfig,
    shutdown: &CancellationToken,
    servers: &mut tokio::task::JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let bind = config.telemetry.metrics_address();
    let listener = TcpListener::bind(&bind)
        .await
        .with_context(|| format!("binding the metrics endpoint to {bind}"))?;
    println!("automl: metrics listening on {}", listener.local_addr()?);
    let token = shutdown.clone();
    servers.spawn(async move {
        automl_common::metrics_server::serve(listener, token).await;
        Ok(())
    });
    Ok(())
}
