//! The embedded S3 endpoint: a real S3-protocol HTTP server (s3s over a directory) started
//! in-process when no endpoint is configured, so a laptop runs the same client code as
//! production against MinIO or S3. Objects live under `<data_dir>/objects/<bucket>/<key>`.

use std::net::SocketAddr;
use std::path::Path;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

mod backend;

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedS3Error {
    /// The storage directory or the listener failed.
    #[error("embedded s3: {0}")]
    Io(#[from] std::io::Error),
    /// The file-system backend refused the directory.
    #[error("embedded s3 storage: {0}")]
    Storage(String),
}

/// A running embedded endpoint; it stops when its token is cancelled.
#[derive(Debug)]
pub struct EmbeddedS3 {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: CancellationToken,
    /// What the backend's fast paths did.
    counters: std::sync::Arc<backend::Counters>,
}

impl EmbeddedS3 {
    /// Serves the objects under `root` on `listener`, accepting only `access_key`/`secret_key`.
    pub async fn start(
        root: &Path,
        listener: TcpListener,
        access_key: &str,
        secret_key: &str,
    ) -> Result<Self, EmbeddedS3Error> {
        std::fs::create_dir_all(root)?;
        let fs =
            backend::Backend::new(root).map_err(|err| EmbeddedS3Error::Storage(err.to_string()))?;
        let counters = fs.counters();
        let mut builder = S3ServiceBuilder::new(fs);
        builder.set_auth(SimpleAuth::from_single(access_key, secret_key));
        let service = builder.build();
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            let http = ConnBuilder::new(TokioExecutor::new());
            let graceful = hyper_util::server::graceful::GracefulShutdown::new();
            loop {
                let socket = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((socket, _)) => socket,
                        Err(err) => {
                            tracing::warn!(error = %err, "embedded s3 accept failed");
                            continue;
                        }
                    },
                    () = token.cancelled() => break,
                };
                let _ = socket.set_nodelay(true);
                let conn = http.serve_connection(TokioIo::new(socket), service.clone());
                let conn = graceful.watch(conn.into_owned());
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            tokio::select! {
                () = graceful.shutdown() => {}
                () = tokio::time::sleep(std::time::Duration::from_secs(10)) => {}
            }
        });
        tracing::info!(%addr, root = %root.display(), "embedded s3 endpoint serving");
        Ok(Self {
            addr,
            stop,
            counters,
        })
    }

    /// `http://host:port`, for clients.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many multipart uploads were completed by joining part files in the kernel.
    pub fn fast_joins(&self) -> u64 {
        self.counters
            .joins
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many multipart uploads were completed by renaming the file their parts were
    /// written into in place (the rest went through a join or s3s-fs's own completion).
    pub fn in_place_completions(&self) -> u64 {
        self.counters
            .renames
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many parts were written in place, into their upload's assembly file.
    pub fn parts_in_place(&self) -> u64 {
        self.counters
            .parts_in_place
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `host:port`, for the trainer environment (`MINIO_SERVER`).
    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for EmbeddedS3 {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// An endpoint over a temporary directory with the default credentials, and a client for it
/// with the buckets created; the endpoint stops when dropped.
#[cfg(test)]
pub(crate) struct TestEndpoint {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) store: crate::s3::ObjectStore,
    pub(crate) s3: EmbeddedS3,
}

#[cfg(test)]
impl TestEndpoint {
    pub(crate) async fn start() -> Self {
        let dir = tempfile::tempdir().expect("dir");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("listener");
        let config = crate::config::S3Config::default();
        let s3 = EmbeddedS3::start(dir.path(), listener, &config.access_key, &config.secret_key)
            .await
            .expect("embedded s3");
        let store = crate::s3::ObjectStore::new(&config, &s3.endpoint());
        store.ensure_buckets().await.expect("buckets");
        Self { dir, store, s3 }
    }
}
