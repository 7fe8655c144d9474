//! Test harness: a temp data directory, the embedded S3 endpoint, a database (SQLite, or a
//! fresh Postgres database when `AUTOML_TEST_POSTGRES_URL` is set), and servers on
//! `127.0.0.1:0` that stop when dropped; [`TestCluster`] starts any set of services over it,
//! and [`Poll`] is the one polling loop tests wait with.

mod cluster;
mod wait;

pub use cluster::{
    DATA_MANAGEMENT, METADATA_STORE, PREDICTION_SERVICE, StartContext, Started, TRAINING_SERVICE,
    TestCluster,
};
pub use wait::{POLL_INTERVAL, Poll, wait_for};

use std::net::SocketAddr;

use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::CommonConfig;
use crate::db::Backend;
use crate::embedded_s3::EmbeddedS3;
use crate::s3::ObjectStore;
use crate::server::{ServiceRoutes, serve};

/// The environment variable naming the Postgres server storage tests also run against,
/// e.g. `postgres://postgres@127.0.0.1:5432/postgres`.
pub const POSTGRES_URL_VAR: &str = "AUTOML_TEST_POSTGRES_URL";

/// The backends storage tests run on: SQLite always, Postgres when configured.
pub fn backends() -> Vec<Backend> {
    let mut backends = vec![Backend::Sqlite];
    if std::env::var(POSTGRES_URL_VAR).is_ok_and(|url| !url.is_empty()) {
        backends.push(Backend::Postgres);
    } else {
        eprintln!("{POSTGRES_URL_VAR} is not set: storage tests run on SQLite only");
    }
    backends
}

/// A temp data directory with an embedded S3 endpoint and a database of the chosen backend.
pub struct TestEnv {
    /// Configuration pointing at all of it (data dir, database URL, S3 endpoint).
    pub common: CommonConfig,
    /// A client for the embedded endpoint, buckets created.
    pub objects: ObjectStore,
    /// The backend of `common.database`.
    pub backend: Backend,
    s3: Option<EmbeddedS3>,
    postgres: Option<PostgresDb>,
    dir: TempDir,
}

impl TestEnv {
    /// A fresh environment on `backend`.
    pub async fn new(backend: Backend) -> anyhow::Result<Self> {
        init_tracing();
        let dir = tempfile::Builder::new().prefix("automl-test-").tempdir()?;
        let mut common = CommonConfig {
            data_dir: dir.path().join("data"),
            ..CommonConfig::default()
        };
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let s3 = EmbeddedS3::start(
            &common.data_dir.join("objects"),
            listener,
            &common.s3.access_key,
            &common.s3.secret_key,
        )
        .await?;
        common.s3.endpoint = s3.endpoint();
        let objects = ObjectStore::new(&common.s3, &s3.endpoint());
        objects.ensure_buckets().await?;
        let postgres = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => {
                let db = PostgresDb::create().await?;
                common.database.url = db.url.clone();
                Some(db)
            }
        };
        Ok(Self {
            common,
            objects,
            backend,
            s3: Some(s3),
            postgres,
            dir,
        })
    }

    /// The temp directory everything lives in.
    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// `host:port` of the embedded S3 endpoint.
    pub fn s3_host_port(&self) -> String {
        self.s3
            .as_ref()
            .map(EmbeddedS3::host_port)
            .unwrap_or_default()
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.s3.take();
        if let Some(db) = self.postgres.take() {
            db.drop_blocking();
        }
    }
}

/// A throwaway Postgres database, dropped with the environment.
struct PostgresDb {
    admin_url: String,
    name: String,
    url: String,
}

impl PostgresDb {
    async fn create() -> anyhow::Result<Self> {
        use sqlx::{Connection, Executor};
        let admin_url = std::env::var(POSTGRES_URL_VAR)?;
        let name = format!(
            "automl_test_{}",
            uuid_like()
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .collect::<String>()
        );
        let mut conn = sqlx::PgConnection::connect(&admin_url).await?;
        conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await?;
        conn.close().await?;
        let url = replace_database(&admin_url, &name);
        Ok(Self {
            admin_url,
            name,
            url,
        })
    }

    fn drop_blocking(self) {
        let handle = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                use sqlx::{Connection, Executor};
                if let Ok(mut conn) = sqlx::PgConnection::connect(&self.admin_url).await {
                    let _ = conn
                        .execute(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                            self.name
                        )))
                        .await;
                    let _ = conn.close().await;
                }
            });
        });
        let _ = handle.join();
    }
}

/// `postgres://user@host:port/db?x` with the database replaced by `name`.
fn replace_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut replaced = format!("{}/{name}", &base[..path_start]);
    if let Some(query) = query {
        replaced.push('?');
        replaced.push_str(query);
    }
    replaced
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}_{}_{nanos}", std::process::id(), count)
}

/// A gRPC server started by a test; it shuts down gracefully on [`TestServer::stop`] or drop.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Cancelling it starts the graceful shutdown.
    pub shutdown: CancellationToken,
    handle: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Serves `routes` on a fresh `127.0.0.1:0` listener; `shutdown` is the token the service's
    /// streams watch.
    pub async fn start(routes: ServiceRoutes, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let token = shutdown.clone();
        let handle = tokio::spawn(async move {
            if let Err(err) = serve(listener, routes, token).await {
                eprintln!("test server failed: {err}");
            }
        });
        Ok(Self {
            addr,
            shutdown,
            handle: Some(handle),
        })
    }

    /// `http://127.0.0.1:port`, for tonic clients.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A channel to the server.
    pub async fn channel(&self) -> anyhow::Result<tonic::transport::Channel> {
        Ok(tonic::transport::Endpoint::from_shared(self.endpoint())?
            .connect()
            .await?)
    }

    /// Shuts down gracefully and waits until the server has stopped.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            let _ = handle.await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Logs through the test harness's capture (shown only for failing tests); `RUST_LOG` filters.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// The grpcurl binary: `$GRPCURL`, else `grpcurl` on the PATH (scripts/test.sh installs it).
pub fn grpcurl() -> std::path::PathBuf {
    if let Ok(path) = std::env::var("GRPCURL") {
        return std::path::PathBuf::from(path);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("grpcurl"))
            .find(|candidate| candidate.is_file())
    });
    match found {
        Some(path) => path,
        None => panic!("grpcurl is needed: run scripts/test.sh, which installs it, or set GRPCURL"),
    }
}

/// Asserts that `result` failed with `code` and a message mentioning `needle`.
pub fn assert_status<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    needle: &str,
) {
    let status = match result {
        Ok(value) => panic!("call should fail with {code:?}, got {value:?}"),
        Err(status) => status,
    };
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(needle),
        "message `{}` should mention `{needle}`",
        status.message()
    );
}

/// One plain HTTP/1.1 request to an `http://` URL exactly as given (no signing, no
/// re-encoding); the status code and the raw body.
pub async fn http_request(method: &str, url: &str, body: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("{url} is not an http:// URL"))?;
    let (authority, target) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let target = if target.is_empty() { "/" } else { target };
    let mut stream = tokio::net::TcpStream::connect(authority).await?;
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no HTTP status in {text}"))?;
    let start = text.find("\r\n\r\n").map_or(response.len(), |at| at + 4);
    Ok((status, response[start..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::replace_database;

    #[test]
    fn database_in_url_is_replaced() {
        assert_eq!(
            replace_database("postgres://postgres@127.0.0.1:5432/postgres", "t1"),
            "postgres://postgres@127.0.0.1:5432/t1"
        );
        assert_eq!(
            replace_database("postgres://u:p@h/db?sslmode=disable", "t2"),
            "postgres://u:p@h/t2?sslmode=disable"
        );
        assert_eq!(
            replace_database("postgres://h:5432", "t3"),
            "postgres://h:5432/t3"
        );
    }
}
