//! The object-store client: aws-sdk-s3 with an explicit endpoint, region, static credentials
//! and path-style addressing, the same code path against the embedded endpoint, MinIO and S3.

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};

use crate::config::S3Config;

pub mod grants;
mod writer;

pub use writer::{ObjectWriter, PART_SIZE};

/// Why an object-store call failed.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// The endpoint could not be reached or timed out.
    #[error("object store unreachable: {0}")]
    Unavailable(String),
    /// The bucket or key does not exist.
    #[error("object not found: {0}")]
    NotFound(String),
    /// Access was refused (credentials, policy).
    #[error("object store refused access: {0}")]
    AccessDenied(String),
    /// Any other failure.
    #[error("object store error: {0}")]
    Other(String),
}

impl S3Error {
    /// Classifies an SDK error.
    pub fn from_sdk<E, R>(context: &str, error: SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        match &error {
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
                Self::Unavailable(format!("{context}: {}", crate::error::error_chain(&error)))
            }
            SdkError::ServiceError(service) => {
                let code = service.err().code().unwrap_or("unknown");
                let message = format!("{context}: {code}");
                match code {
                    "NoSuchKey" | "NoSuchBucket" | "NotFound" => Self::NotFound(message),
                    "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch" => {
                        Self::AccessDenied(message)
                    }
                    _ => Self::Other(message),
                }
            }
            _ => Self::Other(format!("{context}: {}", crate::error::error_chain(&error))),
        }
    }
}

/// An object in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectEntry {
    /// Its key.
    pub key: String,
    /// Its size in bytes.
    pub size: i64,
}

/// Whether what is sent to `endpoint` cannot be changed on the way: TLS protects it, or it
/// never leaves the machine (the embedded endpoint, a local MinIO).
fn payloads_protected_in_transit(endpoint: &str) -> bool {
    let Ok(uri) = endpoint.parse::<http::Uri>() else {
        return false;
    };
    let loopback = match uri.host() {
        Some("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    };
    uri.scheme_str() == Some("https") || loopback
}

/// The S3 client with the configured buckets.
#[derive(Clone, Debug)]
pub struct ObjectStore {
    client: Client,
    /// `http://host:port` the client talks to.
    pub endpoint: String,
    /// Bucket for uploads, commits and snapshots.
    pub datasets_bucket: String,
    /// Bucket for model files.
    pub models_bucket: String,
}

impl ObjectStore {
    /// A client for `endpoint` with the credentials and buckets of `config` (whose own
    /// `endpoint` may be empty when the embedded endpoint is used).
    pub fn new(config: &S3Config, endpoint: &str) -> Self {
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let s3_config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .endpoint_url(endpoint)
            .credentials_provider(Credentials::new(
                config.access_key.clone(),
                config.secret_key.clone(),
                None,
                None,
                "automl-config",
            ))
            .force_path_style(config.force_path_style)
            .http_client(http_client)
            .build();
        Self {
            client: Client::from_conf(s3_config),
            endpoint: endpoint.to_string(),
            datasets_bucket: config.datasets_bucket.clone(),
            models_bucket: config.models_bucket.clone(),
        }
    }

    /// The underlying SDK client, for streaming and multipart calls.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Creates the datasets and models buckets when they are missing.
    pub async fn ensure_buckets(&self) -> Result<(), S3Error> {
        for bucket in [&self.datasets_bucket, &self.models_bucket] {
            self.ensure_bucket(bucket).await?;
        }
        Ok(())
    }

    async fn ensure_bucket(&self, bucket: &str) -> Result<(), S3Error> {
        match self.client.head_bucket().bucket(bucket).send().await {
            Ok(_) => return Ok(()),
            Err(SdkError::ServiceError(err)) if err.raw().status().as_u16() == 404 => {}
            Err(err) => return Err(S3Error::from_sdk("head bucket", err)),
        }
        match self.client.create_bucket().bucket(bucket).send().await {
            Ok(_) => {
                tracing::info!(bucket, "bucket created");
                Ok(())
            }
            Err(SdkError::ServiceError(err))
                if matches!(
                    err.err().code(),
                    Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")
                ) =>
            {
                Ok(())
            }
            Err(err) => Err(S3Error::from_sdk("create bucket", err)),
        }
    }

    /// Whether an object exists at `bucket/key`.
    pub async fn object_exists(&self, bucket: &str, key: &str) -> Result<bool, S3Error> {
        let timer = crate::metrics::S3Timer::start("head_object");
        match self
            .client
            .head_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            // A missing object is an answer, not a failed call.
            Err(SdkError::ServiceError(err)) if err.raw().status().as_u16() == 404 => Ok(false),
            Err(err) => timer
                .finish(Err(err))
                .map_err(|err| S3Error::from_sdk("head object", err)),
        }
    }

    /// Every object whose key starts with `prefix`, in key order.
    pub async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ObjectEntry>, S3Error> {
        let mut entries = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        loop {
            let timer = crate::metrics::S3Timer::start("list_objects");
            let Some(page) = pages.next().await else {
                timer.discard();
                break;
            };
            let page = timer
                .finish(page)
                .map_err(|err| S3Error::from_sdk("list objects", err))?;
            for object in page.contents() {
                if let Some(key) = object.key() {
                    entries.push(ObjectEntry {
                        key: key.to_string(),
                        size: object.size().unwrap_or(0),
                    });
                }
            }
        }
        Ok(entries)
    }

    /// The objects a location names: every object under `key/` (a folder), else the object
    /// `key` itself. Empty when neither exists. (Folders are listed first: some S3 servers
    /// answer HEAD of a folder-like key with an error rather than 404.)
    pub async fn resolve_location(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Vec<ObjectEntry>, S3Error> {
        let trimmed = key.trim_end_matches('/');
        let under = self.list(bucket, &format!("{trimmed}/")).await?;
        if !under.is_empty() || key.ends_with('/') {
            return Ok(under);
        }
        if self.object_exists(bucket, trimmed).await? {
            return Ok(vec![ObjectEntry {
                key: trimmed.to_string(),
                size: 0,
            }]);
        }
        Ok(Vec::new())
    }

    /// A streaming writer of `bucket/key` (multipart for large objects).
    pub fn writer(&self, bucket: &str, key: &str) -> ObjectWriter {
        ObjectWriter::new(self.client.clone(), bucket, key)
            .sign_payloads(!payloads_protected_in_transit(&self.endpoint))
    }

    /// A buffered reader of `bucket/key`, streamed from the store (never whole in memory).
    pub async fn reader(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<impl tokio::io::AsyncBufRead + Send + Unpin + use<>, S3Error> {
        let object = crate::metrics::timed_s3(
            "get_object",
            self.client.get_object().bucket(bucket).key(key).send(),
        )
        .await
        .map_err(|err| match &err {
            SdkError::ServiceError(service) if service.raw().status().as_u16() == 404 => {
                S3Error::NotFound(format!("{bucket}/{key}"))
            }
            _ => S3Error::from_sdk("get object", err),
        })?;
        Ok(object.body.into_async_read())
    }

    /// Reads a small object whole.
    pub async fn get_bytes(&self, bucket: &str, key: &str) -> Result<Vec<u8>, S3Error> {
        use tokio::io::AsyncReadExt;
        let mut reader = self.reader(bucket, key).await?;
        let mut bytes = Vec::new();
        reader
            .read_to_end(&mut bytes)
            .await
            .map_err(|err| S3Error::Other(format!("read {bucket}/{key}: {err}")))?;
        Ok(bytes)
    }

    /// Deletes every object under `prefix`; returns how many.
    pub async fn delete_prefix(&self, bucket: &str, prefix: &str) -> Result<usize, S3Error> {
        use aws_sdk_s3::types::{Delete, ObjectIdentifier};
        let entries = self.list(bucket, prefix).await?;
        for chunk in entries.chunks(1000) {
            let objects = chunk
                .iter()
                .map(|entry| ObjectIdentifier::builder().key(&entry.key).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|err| S3Error::Other(err.to_string()))?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|err| S3Error::Other(err.to_string()))?;
            crate::metrics::timed_s3(
                "delete_objects",
                self.client
                    .delete_objects()
                    .bucket(bucket)
                    .delete(delete)
                    .send(),
            )
            .await
            .map_err(|err| S3Error::from_sdk("delete objects", err))?;
        }
        Ok(entries.len())
    }

    /// Writes a small object in one request.
    pub async fn put_bytes(&self, bucket: &str, key: &str, body: Vec<u8>) -> Result<(), S3Error> {
        crate::metrics::timed_s3(
            "put_object",
            self.client
                .put_object()
                .bucket(bucket)
                .key(key)
                .body(body.into())
                .send(),
        )
        .await
        .map_err(|err| S3Error::from_sdk("put object", err))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::payloads_protected_in_transit as protected;

    #[test]
    fn only_tls_and_loopback_endpoints_skip_payload_signing() {
        for endpoint in [
            "https://s3.amazonaws.com",
            "https://minio.example:9000",
            "http://127.0.0.1:9000",
            "http://127.8.0.1:9000",
            "http://localhost:9000",
            "http://[::1]:9000",
        ] {
            assert!(protected(endpoint), "{endpoint}");
        }
        for endpoint in [
            "http://minio:9000",
            "http://10.0.0.5:9000",
            "http://localhost.example:9000",
            "not a url",
            "",
        ] {
            assert!(!protected(endpoint), "{endpoint}");
        }
    }
}
