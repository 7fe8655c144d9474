//! Object grants: presigned URLs for exactly the objects a trainer may read or write, so that
//! no trainer needs the object store's own keys. training-service decides which objects a job
//! needs and presigns them; the trainer receives the list as JSON in [`GRANTS_ENV`].
//!
//! ```json
//! {"expires_at":"2025-01-01T00:00:00Z",
//!  "grants":[{"method":"GET","bucket":"datasets","key":"versionedDatasets/1/h/examples.csv",
//!             "url":"http://minio:9000/datasets/versionedDatasets/1/h/examples.csv?X-Amz-..."}]}
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use aws_sdk_s3::presigning::{PresignedRequest, PresigningConfig};
use serde::{Deserialize, Serialize};

use super::{ObjectStore, S3Error};

/// The trainer variable holding the grants document.
pub const GRANTS_ENV: &str = "AUTOML_OBJECT_GRANTS";
/// The longest a SigV4 presigned URL may be valid.
pub const MAX_GRANT_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// What a grant allows on its object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    /// Read the object.
    Get,
    /// Write the object (one request, the whole body).
    Put,
}

impl Method {
    /// The HTTP method.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One presigned request: `method` on `bucket/key` through `url`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectGrant {
    /// What it allows.
    pub method: Method,
    /// The object's bucket.
    pub bucket: String,
    /// The object's key.
    pub key: String,
    /// The presigned URL (a credential: never logged).
    pub url: String,
    /// Headers the request must carry as signed (usually none).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

impl std::fmt::Debug for ObjectGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.method, self.bucket, self.key)
    }
}

/// Every grant of one job and when they expire.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectGrants {
    /// When the URLs stop working (RFC 3339, UTC).
    pub expires_at: String,
    /// The grants.
    pub grants: Vec<ObjectGrant>,
}

impl ObjectGrants {
    /// The grant of `method` on `bucket/key`, if any.
    pub fn find(&self, method: Method, bucket: &str, key: &str) -> Option<&ObjectGrant> {
        self.grants
            .iter()
            .find(|g| g.method == method && g.bucket == bucket && g.key == key)
    }

    /// The JSON document of [`GRANTS_ENV`].
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses the JSON document of [`GRANTS_ENV`].
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// `lifetime` clamped to what a presigned URL allows (at least one second).
pub fn grant_lifetime(lifetime: Duration) -> Duration {
    lifetime.clamp(Duration::from_secs(1), MAX_GRANT_LIFETIME)
}

/// When grants made now for `lifetime` expire, as RFC 3339.
pub fn expires_at(lifetime: Duration) -> String {
    let at = SystemTime::now() + grant_lifetime(lifetime);
    chrono::DateTime::<chrono::Utc>::from(at).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl ObjectStore {
    /// A presigned `method` request of `bucket/key`, valid for `lifetime` (at most seven days).
    /// The URL's host is this client's endpoint: sign with the endpoint the grantee reaches.
    pub async fn presign(
        &self,
        method: Method,
        bucket: &str,
        key: &str,
        lifetime: Duration,
    ) -> Result<ObjectGrant, S3Error> {
        let config = PresigningConfig::expires_in(grant_lifetime(lifetime))
            .map_err(|err| S3Error::Other(format!("presigning config: {err}")))?;
        let presigned: PresignedRequest = match method {
            Method::Get => self
                .client
                .get_object()
                .bucket(bucket)
                .key(key)
                .presigned(config)
                .await
                .map_err(|err| S3Error::from_sdk("presign get", err))?,
            Method::Put => self
                .client
                .put_object()
                .bucket(bucket)
                .key(key)
                .presigned(config)
                .await
                .map_err(|err| S3Error::from_sdk("presign put", err))?,
        };
        Ok(ObjectGrant {
            method,
            bucket: bucket.to_string(),
            key: key.to_string(),
            url: presigned.uri().to_string(),
            headers: presigned
                .headers()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_round_trips_and_hides_urls_from_debug() {
        let grants = ObjectGrants {
            expires_at: "2030-01-01T00:00:00Z".into(),
            grants: vec![ObjectGrant {
                method: Method::Put,
                bucket: "models".into(),
                key: "run_1/manifest.json".into(),
                url: "http://s3/models/run_1/manifest.json?X-Amz-Signature=abc".into(),
                headers: BTreeMap::new(),
            }],
        };
        let json = grants.to_json();
        assert!(json.contains(r#""method":"PUT""#), "{json}");
        let parsed = ObjectGrants::from_json(&json).expect("parses");
        assert_eq!(parsed, grants);
        assert!(
            parsed
                .find(Method::Put, "models", "run_1/manifest.json")
                .is_some()
        );
        assert!(
            parsed
                .find(Method::Get, "models", "run_1/manifest.json")
                .is_none()
        );
        assert!(!format!("{grants:?}").contains("X-Amz-Signature"));
        assert_eq!(
            grant_lifetime(Duration::from_secs(30 * 86_400)),
            MAX_GRANT_LIFETIME
        );
    }

    /// The embedded endpoint (s3s) honours presigned GET and PUT URLs and refuses a URL edited
    /// to another key, one signed with another secret, and unsigned requests.
    #[cfg(feature = "testing")]
    #[tokio::test]
    async fn the_embedded_endpoint_checks_presigned_urls() {
        use crate::config::S3Config;
        use crate::testing::http_request;
        let crate::embedded_s3::TestEndpoint {
            store,
            s3,
            dir: _dir,
        } = crate::embedded_s3::TestEndpoint::start().await;
        let config = S3Config::default();
        let bucket = store.models_bucket.clone();
        store
            .put_bytes(&bucket, "team-a/run_1/manifest.json", b"{}".to_vec())
            .await
            .expect("put");
        store
            .put_bytes(&bucket, "team-b/run_2/manifest.json", b"secret".to_vec())
            .await
            .expect("put");
        let hour = Duration::from_secs(3600);

        let get = store
            .presign(Method::Get, &bucket, "team-a/run_1/manifest.json", hour)
            .await
            .expect("presign");
        assert!(get.headers.is_empty(), "{:?}", get.headers);
        let (status, body) = http_request("GET", &get.url, b"").await.expect("get");
        assert_eq!((status, body.as_slice()), (200, b"{}".as_slice()));
        let tampered = get.url.replace("/team-a/run_1/", "/team-b/run_2/");
        assert_ne!(tampered, get.url);
        let (status, body) = http_request("GET", &tampered, b"").await.expect("get");
        assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));

        let put = store
            .presign(Method::Put, &bucket, "team-a/run_1/model.safetensors", hour)
            .await
            .expect("presign");
        let (status, body) = http_request("PUT", &put.url, b"weights")
            .await
            .expect("put");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert_eq!(
            store
                .get_bytes(&bucket, "team-a/run_1/model.safetensors")
                .await
                .expect("written"),
            b"weights"
        );
        let other_run = put.url.replace("/run_1/", "/run_9/");
        let (status, _) = http_request("PUT", &other_run, b"x").await.expect("put");
        assert_eq!(status, 403);
        // A presigned GET does not allow a PUT of the same key.
        let (status, _) = http_request("PUT", &get.url, b"x").await.expect("put");
        assert_eq!(status, 403);

        let forger = ObjectStore::new(
            &S3Config {
                secret_key: "not-the-secret".into(),
                ..config.clone()
            },
            &s3.endpoint(),
        );
        let forged = forger
            .presign(Method::Get, &bucket, "team-b/run_2/manifest.json", hour)
            .await
            .expect("presign");
        let (status, _) = http_request("GET", &forged.url, b"").await.expect("get");
        assert_eq!(status, 403);

        let unsigned = format!("{}/{bucket}/team-b/run_2/manifest.json", s3.endpoint());
        let (status, _) = http_request("GET", &unsigned, b"").await.expect("get");
        assert_eq!(status, 403);
        let (status, _) = http_request("PUT", &unsigned, b"x").await.expect("put");
        assert_eq!(status, 403);
    }
}
