//! [`TestCluster`]: any set of services started in-process over one [`TestEnv`], each on its
//! own `127.0.0.1:0` listener, with typed clients to them.
//!
//! Common cannot depend on the service crates (they depend on it), so a test hands each
//! service's own `start` function to [`TestCluster::start`]:
//!
//! ```ignore
//! let cluster = TestCluster::new(Backend::Sqlite).await;
//! cluster
//!     .start(DATA_MANAGEMENT, |ctx| async move {
//!         automl_data_management::start(&ctx.common, &config, ctx.objects, ctx.shutdown).await
//!     })
//!     .await;
//! let mut client = cluster.data_client().await;
//! ```

use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use automl_proto::data_management::data_management_service_client::DataManagementServiceClient;
use automl_proto::metadata_store::metadata_store_service_client::MetadataStoreServiceClient;
use automl_proto::prediction::prediction_service_client::PredictionServiceClient;
use automl_proto::training::training_service_client::TrainingServiceClient;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::{TestEnv, TestServer};
use crate::config::CommonConfig;
use crate::db::{Backend, Database};
use crate::s3::ObjectStore;
use crate::server::ServiceRoutes;

/// The name [`TestCluster::data_client`] looks for.
pub const DATA_MANAGEMENT: &str = "data-management";
/// The name [`TestCluster::metadata_client`] looks for.
pub const METADATA_STORE: &str = "metadata-store";
/// The name [`TestCluster::prediction_client`] looks for.
pub const PREDICTION_SERVICE: &str = "prediction-service";
/// The name [`TestCluster::training_client`] looks for.
pub const TRAINING_SERVICE: &str = "training-service";

/// What a service's start function gets from the cluster.
pub struct StartContext {
    /// The environment's configuration (data dir, database, S3); a start function may change
    /// its copy, e.g. a replica's own data dir.
    pub common: CommonConfig,
    /// The embedded S3 endpoint, buckets created.
    pub objects: ObjectStore,
    /// Cancelled when the service stops; the token its streams watch.
    pub shutdown: CancellationToken,
}

/// What a service's `start` returns: the cluster serves the routes and closes the database
/// when the service stops; the test gets the handle.
pub trait Started {
    /// What the test keeps (the service object, or nothing).
    type Handle;
    /// The routes to serve, the database to close, and the handle.
    fn split(self) -> (ServiceRoutes, Option<Database>, Self::Handle);
}

impl Started for (ServiceRoutes, Database) {
    type Handle = ();
    fn split(self) -> (ServiceRoutes, Option<Database>, ()) {
        (self.0, Some(self.1), ())
    }
}

impl<T> Started for (ServiceRoutes, Arc<T>) {
    type Handle = Arc<T>;
    fn split(self) -> (ServiceRoutes, Option<Database>, Arc<T>) {
        (self.0, None, self.1)
    }
}

impl<T> Started for (ServiceRoutes, Arc<T>, Database) {
    type Handle = Arc<T>;
    fn split(self) -> (ServiceRoutes, Option<Database>, Arc<T>) {
        (self.0, Some(self.2), self.1)
    }
}

/// One started service.
struct Member {
    /// The name the test gave it, to find it again.
    name: String,
    /// Its gRPC server.
    server: TestServer,
    /// Its database, closed after the server stops.
    db: Option<Database>,
}

impl Member {
    async fn stop(self) {
        self.server.stop().await;
        if let Some(db) = self.db {
            db.close().await;
        }
    }
}

/// Services started in-process over one temp environment; they stop on [`TestCluster::stop`]
/// (or when dropped), before the environment goes. Starting and stopping take `&self`, so a
/// test may hold on to `cluster.env` meanwhile.
pub struct TestCluster {
    /// Declared first so that the servers stop before the environment is dropped.
    members: Mutex<Vec<Member>>,
    /// The temp dir, embedded S3 endpoint and database every service shares.
    pub env: TestEnv,
}

impl TestCluster {
    /// An empty cluster over a fresh environment on `backend`.
    pub async fn new(backend: Backend) -> Self {
        let env = TestEnv::new(backend).await.expect("test environment");
        Self::on(env)
    }

    /// An empty cluster over `env` (one a test has configured, e.g. with authentication on).
    pub fn on(env: TestEnv) -> Self {
        Self {
            members: Mutex::new(Vec::new()),
            env,
        }
    }

    /// Starts the service `name` with `start` (the service crate's start function, adapted)
    /// on a fresh `127.0.0.1:0` listener; returns the handle `start` gave.
    pub async fn start<F, Fut, S, E>(&self, name: &str, start: F) -> S::Handle
    where
        F: FnOnce(StartContext) -> Fut,
        Fut: Future<Output = Result<S, E>>,
        S: Started,
        E: Display,
    {
        let shutdown = CancellationToken::new();
        let context = StartContext {
            common: self.env.common.clone(),
            objects: self.env.objects.clone(),
            shutdown: shutdown.clone(),
        };
        let started = start(context)
            .await
            .unwrap_or_else(|err| panic!("{name} starts: {err}"));
        let (routes, db, handle) = started.split();
        let server = TestServer::start(routes, shutdown)
            .await
            .unwrap_or_else(|err| panic!("{name} serves: {err}"));
        self.lock().push(Member {
            name: name.to_string(),
            server,
            db,
        });
        handle
    }

    /// Where `name` listens; panics if no such service runs.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.with_member(name, |member| member.server.addr)
    }

    /// The token whose cancelling starts `name`'s graceful shutdown, for tests of what
    /// happens meanwhile.
    pub fn shutdown(&self, name: &str) -> CancellationToken {
        self.with_member(name, |member| member.server.shutdown.clone())
    }

    /// The database `name` opened, for tests that look at its rows.
    pub fn database(&self, name: &str) -> Database {
        self.with_member(name, |member| member.db.clone())
            .unwrap_or_else(|| panic!("{name} has no database"))
    }

    /// `http://127.0.0.1:port` of `name`, for configurations and tonic clients.
    pub fn endpoint(&self, name: &str) -> String {
        format!("http://{}", self.addr(name))
    }

    /// A connected channel to `name`.
    pub async fn channel(&self, name: &str) -> Channel {
        let endpoint = tonic::transport::Endpoint::from_shared(self.endpoint(name))
            .unwrap_or_else(|err| panic!("endpoint of {name}: {err}"));
        endpoint
            .connect()
            .await
            .unwrap_or_else(|err| panic!("channel to {name}: {err}"))
    }

    /// A client of the service started as [`DATA_MANAGEMENT`].
    pub async fn data_client(&self) -> DataManagementServiceClient<Channel> {
        DataManagementServiceClient::new(self.channel(DATA_MANAGEMENT).await)
    }

    /// A client of the service started as [`METADATA_STORE`].
    pub async fn metadata_client(&self) -> MetadataStoreServiceClient<Channel> {
        MetadataStoreServiceClient::new(self.channel(METADATA_STORE).await)
    }

    /// A client of the service started as [`PREDICTION_SERVICE`].
    pub async fn prediction_client(&self) -> PredictionServiceClient<Channel> {
        PredictionServiceClient::new(self.channel(PREDICTION_SERVICE).await)
    }

    /// A client of the service started as [`TRAINING_SERVICE`].
    pub async fn training_client(&self) -> TrainingServiceClient<Channel> {
        TrainingServiceClient::new(self.channel(TRAINING_SERVICE).await)
    }

    /// Stops `name` gracefully and closes its database, as before a restart; the name is free
    /// for [`TestCluster::start`] again.
    pub async fn stop_service(&self, name: &str) {
        let member = {
            let mut members = self.lock();
            let Some(at) = members.iter().position(|member| member.name == name) else {
                panic!("no service {name} in this cluster");
            };
            members.remove(at)
        };
        member.stop().await;
    }

    /// Stops every service, the last started first, then drops the environment.
    pub async fn stop(self) {
        let members = self
            .members
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        for member in members.into_iter().rev() {
            member.stop().await;
        }
    }

    fn with_member<R>(&self, name: &str, look: impl FnOnce(&Member) -> R) -> R {
        match self.lock().iter().find(|member| member.name == name) {
            Some(member) => look(member),
            None => panic!("no service {name} in this cluster"),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Member>> {
        self.members.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
