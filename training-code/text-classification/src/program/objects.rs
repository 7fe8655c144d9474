//! The trainer's object access: get and put by (bucket, key), through the presigned URLs
//! training-service granted (`AUTOML_OBJECT_GRANTS`), or with the object store's keys
//! (`MINIO_SERVER_ACCESS_KEY`/`MINIO_SERVER_SECRET_KEY`) when no grants are given. An object
//! without a grant fails with an error naming it; transfers through grants are retried with
//! exponential backoff on connection errors, timeouts and 5xx answers.

use std::path::Path;
use std::time::Duration;

use automl_common::config::S3Config;
use automl_common::s3::grants::{Method, ObjectGrant, ObjectGrants};
use automl_common::s3::{ObjectStore, S3Error};
use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::AsyncWriteExt;

use super::trainer_env::{TrainerEnv, url};

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// Attempts of one transfer through a grant.
const ATTEMPTS: u32 = 6;
/// The first retry's delay; each further one doubles it.
const FIRST_DELAY: Duration = Duration::from_millis(500);
/// Longest wait for an answer's headers, or between two pieces of a body.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// How the trainer reaches its objects.
pub enum Objects {
    /// With the object store's keys (no grants given).
    Keys(ObjectStore),
    /// Through presigned URLs only.
    Granted(Box<Granted>),
}

/// The grants and an HTTP client for them.
pub struct Granted {
    grants: ObjectGrants,
    plain: Client<HttpConnector, Body>,
    tls: Option<Client<HttpsConnector<HttpConnector>, Body>>,
}

impl Objects {
    /// The grants of the environment when there are some, else the keys.
    pub fn from_env(env: &TrainerEnv) -> anyhow::Result<Self> {
        match &env.object_grants {
            Some(grants) => Ok(Self::Granted(Box::new(Granted::new(grants.clone())?))),
            None => {
                let config = S3Config {
                    access_key: env.access_key.clone(),
                    secret_key: env.secret_key.clone(),
                    ..S3Config::default()
                };
                Ok(Self::Keys(ObjectStore::new(
                    &config,
                    &url(&env.minio_server),
                )))
            }
        }
    }

    /// Whether `method` on `bucket/key` may be tried (always, with keys).
    pub fn allows(&self, method: Method, bucket: &str, key: &str) -> bool {
        match self {
            Self::Keys(_) => true,
            Self::Granted(granted) => granted.grants.find(method, bucket, key).is_some(),
        }
    }

    /// The whole object.
    pub async fn get(&self, bucket: &str, key: &str) -> Result<Vec<u8>, S3Error> {
        match self {
            Self::Keys(store) => store.get_bytes(bucket, key).await,
            Self::Granted(granted) => {
                let grant = granted.grant(Method::Get, bucket, key)?;
                granted
                    .transfer(grant, Source::Empty, |body| async move {
                        let bytes = collect(body).await?;
                        Ok(bytes.to_vec())
                    })
                    .await
            }
        }
    }

    /// Writes the object into `path` (created or truncated); returns its size.
    pub async fn get_to_file(&self, bucket: &str, key: &str, path: &Path) -> Result<u64, S3Error> {
        match self {
            Self::Keys(store) => {
                let mut reader = store.reader(bucket, key).await?;
                let mut file = create(path).await?;
                let size = tokio::io::copy_buf(&mut reader, &mut file)
                    .await
                    .map_err(|err| io_error(path, &err))?;
                finish_file(file, path).await?;
                Ok(size)
            }
            Self::Granted(granted) => {
                let grant = granted.grant(Method::Get, bucket, key)?;
                granted
                    .transfer(grant, Source::Empty, |mut body| async move {
                        let mut file = create(path).await?;
                        let mut size = 0u64;
                        while let Some(frame) = next_frame(&mut body).await? {
                            if let Ok(data) = frame.into_data() {
                                file.write_all(&data)
                                    .await
                                    .map_err(|err| io_error(path, &err))?;
                                size += data.len() as u64;
                            }
                        }
                        finish_file(file, path).await?;
                        Ok(size)
                    })
                    .await
            }
        }
    }

    /// Writes `bytes` as the object.
    pub async fn put(&self, bucket: &str, key: &str, bytes: Vec<u8>) -> Result<(), S3Error> {
        match self {
            Self::Keys(store) => store.put_bytes(bucket, key, bytes).await,
            Self::Granted(granted) => {
                let grant = granted.grant(Method::Put, bucket, key)?;
                let bytes = Bytes::from(bytes);
                granted
                    .transfer(grant, Source::Bytes(&bytes), |body| async move {
                        collect(body).await.map(|_| ())
                    })
                    .await
            }
        }
    }

    /// Streams the file at `path` to the object (one request through a grant, multipart with
    /// keys); returns its size.
    pub async fn put_file(&self, bucket: &str, key: &str, path: &Path) -> Result<u64, S3Error> {
        let size = tokio::fs::metadata(path)
            .await
            .map_err(|err| io_error(path, &err))?
            .len();
        match self {
            Self::Keys(store) => {
                use tokio::io::AsyncReadExt;
                let mut source = tokio::fs::File::open(path)
                    .await
                    .map_err(|err| io_error(path, &err))?;
                let mut writer = store.writer(bucket, key);
                let mut buffer = vec![0u8; 1 << 20];
                loop {
                    let read = source
                        .read(&mut buffer)
                        .await
                        .map_err(|err| io_error(path, &err))?;
                    if read == 0 {
                        break;
                    }
                    if let Err(err) = writer.write(&buffer[..read]).await {
                        writer.abort().await;
                        return Err(err);
                    }
                }
                writer.finish().await
            }
            Self::Granted(granted) => {
                let grant = granted.grant(Method::Put, bucket, key)?;
                granted
                    .transfer(grant, Source::File(path, size), |body| async move {
                        collect(body).await.map(|_| ())
                    })
                    .await?;
                Ok(size)
            }
        }
    }
}

/// What a request sends.
#[derive(Clone, Copy)]
enum Source<'a> {
    Empty,
    Bytes(&'a Bytes),
    File(&'a Path, u64),
}

impl Granted {
    fn new(grants: ObjectGrants) -> anyhow::Result<Self> {
        let builder = || Client::builder(TokioExecutor::new());
        let tls = if grants.grants.iter().any(|g| g.url.starts_with("https://")) {
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_native_roots()
                .map_err(|err| {
                    anyhow::anyhow!("no trusted root certificates for https object URLs: {err}")
                })?
                .https_or_http()
                .enable_http1()
                .build();
            Some(builder().build(connector))
        } else {
            None
        };
        Ok(Self {
            grants,
            plain: builder().build_http(),
            tls,
        })
    }

    fn grant(&self, method: Method, bucket: &str, key: &str) -> Result<&ObjectGrant, S3Error> {
        self.grants.find(method, bucket, key).ok_or_else(|| {
            S3Error::AccessDenied(format!(
                "no grant to {method} {bucket}/{key}: training-service did not grant this object to the job"
            ))
        })
    }

    fn request(
        &self,
        grant: &ObjectGrant,
        source: Source<'_>,
    ) -> Result<http::Request<Body>, S3Error> {
        let method = match grant.method {
            Method::Get => http::Method::GET,
            Method::Put => http::Method::PUT,
        };
        let mut builder = http::Request::builder().method(method).uri(&grant.url);
        for (name, value) in &grant.headers {
            builder = builder.header(name, value);
        }
        let body: Body = match source {
            Source::Empty => Full::new(Bytes::new())
                .map_err(|never| match never {})
                .boxed_unsync(),
            Source::Bytes(bytes) => {
                builder = builder.header(http::header::CONTENT_LENGTH, bytes.len());
                Full::new(bytes.clone())
                    .map_err(|never| match never {})
                    .boxed_unsync()
            }
            Source::File(..) => unreachable!("files are opened per attempt"),
        };
        builder.body(body).map_err(|err| {
            S3Error::Other(format!(
                "{} {}/{}: {err}",
                grant.method, grant.bucket, grant.key
            ))
        })
    }

    async fn file_request(
        &self,
        grant: &ObjectGrant,
        path: &Path,
        size: u64,
    ) -> Result<http::Request<Body>, S3Error> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|err| io_error(path, &err))?;
        let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20)
            .map(|chunk| chunk.map(hyper::body::Frame::data));
        let mut builder = http::Request::builder()
            .method(http::Method::PUT)
            .uri(&grant.url)
            .header(http::header::CONTENT_LENGTH, size);
        for (name, value) in &grant.headers {
            builder = builder.header(name, value);
        }
        builder
            .body(StreamBody::new(stream).boxed_unsync())
            .map_err(|err| S3Error::Other(format!("PUT {}/{}: {err}", grant.bucket, grant.key)))
    }

    /// Sends `source` through `grant` and hands a successful answer's body to `read`, retrying
    /// what may pass on a second try.
    async fn transfer<T, F, Fut>(
        &self,
        grant: &ObjectGrant,
        source: Source<'_>,
        read: F,
    ) -> Result<T, S3Error>
    where
        F: Fn(hyper::body::Incoming) -> Fut,
        Fut: Future<Output = Result<T, Attempt>>,
    {
        let what = format!("{} {}/{}", grant.method, grant.bucket, grant.key);
        let backoff = ExponentialBuilder::default()
            .with_min_delay(FIRST_DELAY)
            .with_factor(2.0)
            .with_max_delay(FIRST_DELAY * 2u32.pow(ATTEMPTS))
            .with_max_times(ATTEMPTS as usize - 1);
        let try_once = || async {
            match self.attempt(grant, source).await {
                Ok(body) => read(body).await,
                Err(err) => Err(err),
            }
        };
        let mut failed = 0;
        try_once
            .retry(backoff)
            .when(|outcome| matches!(outcome, Attempt::Retry(_)))
            .notify(|outcome, delay| {
                failed += 1;
                if let Attempt::Retry(reason) = outcome {
                    println!(
                        "retrying {what} in {:.1}s (attempt {failed}/{ATTEMPTS} failed: {reason})",
                        delay.as_secs_f64()
                    );
                }
            })
            .await
            .map_err(|outcome| match outcome {
                Attempt::Final(err) => err,
                Attempt::Retry(reason) => {
                    S3Error::Unavailable(format!("{what}: {reason} (after {ATTEMPTS} attempts)"))
                }
            })
    }

    /// One request; the body of a 2xx answer.
    async fn attempt(
        &self,
        grant: &ObjectGrant,
        source: Source<'_>,
    ) -> Result<hyper::body::Incoming, Attempt> {
        let what = || format!("{} {}/{}", grant.method, grant.bucket, grant.key);
        let request = match source {
            Source::File(path, size) => self.file_request(grant, path, size).await,
            other => self.request(grant, other),
        }
        .map_err(Attempt::Final)?;
        let sent = match &self.tls {
            Some(tls) if grant.url.starts_with("https://") => tls.request(request),
            _ => self.plain.request(request),
        };
        let response = match tokio::time::timeout(IDLE_TIMEOUT, sent).await {
            Err(_) => return Err(Attempt::Retry("no answer in time".into())),
            Ok(Err(err)) => {
                return Err(Attempt::Retry(automl_common::error::error_chain(&err)));
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if status.is_success() {
            return Ok(response.into_body());
        }
        // The S3 error document names the reason (AccessDenied, NoSuchKey, …).
        let detail = collect(response.into_body())
            .await
            .map(|body| error_code(&body))
            .unwrap_or_default();
        let message = format!("{}: HTTP {}{detail}", what(), status.as_u16());
        Err(match status.as_u16() {
            500..=599 => Attempt::Retry(format!("HTTP {}{detail}", status.as_u16())),
            404 => Attempt::Final(S3Error::NotFound(message)),
            401 | 403 => Attempt::Final(S3Error::AccessDenied(message)),
            _ => Attempt::Final(S3Error::Other(message)),
        })
    }
}

/// How one attempt failed.
enum Attempt {
    /// Worth another try (connection, timeout, 5xx).
    Retry(String),
    /// Not.
    Final(S3Error),
}

impl From<S3Error> for Attempt {
    fn from(err: S3Error) -> Self {
        Self::Final(err)
    }
}

/// ` (Code)` of an S3 error document, empty when there is none.
fn error_code(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    text.split_once("<Code>")
        .and_then(|(_, rest)| rest.split_once("</Code>"))
        .map(|(code, _)| format!(" ({code})"))
        .unwrap_or_default()
}

async fn next_frame(
    body: &mut hyper::body::Incoming,
) -> Result<Option<hyper::body::Frame<Bytes>>, Attempt> {
    match tokio::time::timeout(IDLE_TIMEOUT, body.frame()).await {
        Err(_) => Err(Attempt::Retry("the transfer stalled".into())),
        Ok(None) => Ok(None),
        Ok(Some(Ok(frame))) => Ok(Some(frame)),
        Ok(Some(Err(err))) => Err(Attempt::Retry(format!("transfer broken off: {err}"))),
    }
}

async fn collect(mut body: hyper::body::Incoming) -> Result<Bytes, Attempt> {
    let mut bytes = Vec::new();
    while let Some(frame) = next_frame(&mut body).await? {
        if let Ok(data) = frame.into_data() {
            bytes.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(bytes))
}

async fn create(path: &Path) -> Result<tokio::fs::File, S3Error> {
    tokio::fs::File::create(path)
        .await
        .map_err(|err| io_error(path, &err))
}

async fn finish_file(mut file: tokio::fs::File, path: &Path) -> Result<(), S3Error> {
    file.flush().await.map_err(|err| io_error(path, &err))?;
    file.sync_all().await.map_err(|err| io_error(path, &err))
}

fn io_error(path: &Path, err: &std::io::Error) -> S3Error {
    S3Error::Other(format!("{}: {err}", path.display()))
}

impl crate::pretrained::Source for Objects {
    async fn get_bytes(&self, bucket: &str, key: &str) -> Result<Vec<u8>, S3Error> {
        self.get(bucket, key).await
    }

    async fn get_to_file(&self, bucket: &str, key: &str, path: &Path) -> Result<u64, S3Error> {
        Objects::get_to_file(self, bucket, key, path).await
    }
}
