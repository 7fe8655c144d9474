//! Authentication and tenants.
//!
//! Every RPC except health and reflection carries `authorization: Bearer <token>` when
//! `[auth] enabled`; [`AuthLayer`] turns the token into a [`Caller`] (tenant, name, scope) that
//! handlers read with [`caller`]. Without authentication every call is the [`DEFAULT_TENANT`]
//! with full access (the embedded single-user default).
//!
//! Two kinds of tokens:
//! - **API tokens** (`aml_<id>_<secret>`), made by `automl token create --tenant T`, stored
//!   hashed (SHA-256) in the tokens file with their tenant and name; revoked ones stay listed.
//! - **Internal tokens** (`amls.<claims>.<mac>`), minted by the services themselves with the
//!   shared `[auth] internal_secret`: one for a service calling another on a tenant's behalf,
//!   and one per training job, limited to its own run ([`Scope::Run`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tonic::codegen::http;
use tower_layer::Layer;
use tower_service::Service;

use crate::config::ConfigError;

/// The tenant of every resource when authentication is off.
pub const DEFAULT_TENANT: &str = "default";
/// The metadata key of the bearer token.
pub const HEADER: &str = "authorization";
/// The trainer environment variable carrying a job's token.
pub const TOKEN_ENV: &str = "AUTOML_TOKEN";

/// `[auth]`
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Require a token on every RPC (health and reflection stay open).
    pub enabled: bool,
    /// The API tokens (hashed); empty: `<data_dir>/tokens.json`.
    pub tokens_file: String,
    /// Key of the internal (service and job) tokens; every service of one deployment needs
    /// the same. Required when `enabled`.
    pub internal_secret: String,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("enabled", &self.enabled)
            .field("tokens_file", &self.tokens_file)
            .field("internal_secret", &redacted(&self.internal_secret))
            .finish()
    }
}

/// How a secret shows in Debug output: whether it is set, never its value.
fn redacted(secret: &str) -> &'static str {
    if secret.is_empty() { "" } else { "<redacted>" }
}

impl AuthConfig {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.enabled && self.internal_secret.len() < 16 {
            return Err(ConfigError::Validation(
                "auth.internal_secret must have at least 16 characters when auth.enabled".into(),
            ));
        }
        Ok(())
    }

    /// The tokens file.
    pub fn tokens_path(&self, data_dir: &Path) -> PathBuf {
        if self.tokens_file.is_empty() {
            data_dir.join("tokens.json")
        } else {
            PathBuf::from(&self.tokens_file)
        }
    }
}

/// What a caller may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Scope {
    /// Everything within its tenant.
    Tenant,
    /// A training job: its own run, its own snapshot, and the run it fine-tunes.
    Run {
        /// The job's run id.
        run_id: String,
        /// Its snapshot's dataset.
        dataset_id: String,
        /// Its snapshot's version.
        version_hash: String,
        /// The run it starts from, empty for none.
        base_run_id: String,
    },
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The tenant every resource it touches belongs to.
    pub tenant: String,
    /// For the audit log: the token's name, `service` or `job-<id>`.
    pub name: String,
    /// What it may do.
    pub scope: Scope,
}

impl Default for Caller {
    fn default() -> Self {
        Self {
            tenant: DEFAULT_TENANT.to_string(),
            name: "anonymous".to_string(),
            scope: Scope::Tenant,
        }
    }
}

impl Caller {
    /// Refuses a job token (anything but a full tenant caller).
    pub fn require_tenant(&self) -> Result<(), tonic::Status> {
        match self.scope {
            Scope::Tenant => Ok(()),
            Scope::Run { .. } => Err(tonic::Status::permission_denied(
                "a job token cannot make this call",
            )),
        }
    }

    /// Whether the caller may write to this run (its own run, or any with a tenant token).
    pub fn may_write_run(&self, run_id: &str) -> bool {
        match &self.scope {
            Scope::Tenant => true,
            Scope::Run { run_id: own, .. } => own == run_id,
        }
    }

    /// Whether the caller may read this run (its own and its base run for a job token).
    pub fn may_read_run(&self, run_id: &str) -> bool {
        match &self.scope {
            Scope::Tenant => true,
            Scope::Run {
                run_id: own,
                base_run_id,
                ..
            } => own == run_id || (!base_run_id.is_empty() && base_run_id == run_id),
        }
    }

    /// Whether the caller may read this snapshot.
    pub fn may_read_snapshot(&self, dataset_id: &str, version_hash: &str) -> bool {
        match &self.scope {
            Scope::Tenant => true,
            Scope::Run {
                dataset_id: own_dataset,
                version_hash: own_version,
                ..
            } => own_dataset == dataset_id && own_version == version_hash,
        }
    }

    /// The object-key prefix of the caller's tenant: empty for the default tenant (the
    /// single-user layout), else `<tenant>/`.
    pub fn key_prefix(&self) -> String {
        tenant_prefix(&self.tenant)
    }
}

/// The object-key prefix of a tenant: empty for [`DEFAULT_TENANT`], else `<tenant>/`.
pub fn tenant_prefix(tenant: &str) -> String {
    if tenant == DEFAULT_TENANT {
        String::new()
    } else {
        format!("{tenant}/")
    }
}

/// The caller of a request; the default tenant when authentication is off.
pub fn caller<T>(request: &tonic::Request<T>) -> Caller {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or_default()
}

/// Names no API token may carry: `default` is the tenant of running without authentication,
/// whose objects keep MiniAutoML's unprefixed layout and who may name any bucket and path; the
/// others are first segments of that layout (`dataset/…`, `upload/…`), which a tenant's own
/// prefix must never equal.
pub const RESERVED_TENANTS: &[&str] = &[DEFAULT_TENANT, "dataset", "upload"];

/// A tenant name for an API token: 1–63 of `[a-z0-9-]`, starting with a letter or digit, not
/// one of [`RESERVED_TENANTS`].
pub fn check_tenant(tenant: &str) -> Result<(), String> {
    if RESERVED_TENANTS.contains(&tenant) {
        return Err(format!(
            "tenant `{tenant}` is reserved; choose another name (e.g. team-a)"
        ));
    }
    let ok = !tenant.is_empty()
        && tenant.len() <= 63
        && tenant
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !tenant.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tenant `{tenant}` must be 1-63 characters of a-z, 0-9 and -, not starting with -"
        ))
    }
}

/// One API token as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredToken {
    /// Public id (the part between the underscores), for list and revoke.
    pub id: String,
    /// Tenant it acts for.
    pub tenant: String,
    /// Who holds it (for the audit log).
    pub name: String,
    /// Hex SHA-256 of the whole token.
    pub sha256: String,
    /// When it was made (RFC 3339).
    pub created_at: String,
    /// Revoked tokens are refused.
    pub revoked: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct TokensFile {
    tokens: Vec<StoredToken>,
}

/// Why a tokens file operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Reading or writing the file failed.
    #[error("tokens file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not what this program writes.
    #[error("tokens file {path}: {message}")]
    Format {
        /// The file.
        path: String,
        /// Cause.
        message: String,
    },
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn random_hex(bytes: usize) -> Result<String, TokenError> {
    use ring::rand::SecureRandom;
    let mut buffer = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut buffer)
        .map_err(|_| TokenError::Invalid("the system's random source failed".into()))?;
    Ok(hex::encode(buffer))
}

fn read_tokens(path: &Path) -> Result<TokensFile, TokenError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|err| TokenError::Format {
            path: path.display().to_string(),
            message: err.to_string(),
        }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(TokensFile::default()),
        Err(source) => Err(TokenError::Io {
            path: path.display().to_string(),
            source,
        }),
    }
}

fn write_tokens(path: &Path, file: &TokensFile) -> Result<(), TokenError> {
    let io = |source| TokenError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let bytes = serde_json::to_vec_pretty(file).map_err(|err| TokenError::Format {
        path: path.display().to_string(),
        message: err.to_string(),
    })?;
    // Replace atomically: a reader never sees half a file.
    let temporary = path.with_extension("json.tmp");
    std::fs::write(&temporary, bytes).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    std::fs::rename(&temporary, path).map_err(io)
}

/// Makes a token for `tenant`; returns it (shown once) and what is stored.
pub fn create_token(
    path: &Path,
    tenant: &str,
    name: &str,
) -> Result<(String, StoredToken), TokenError> {
    check_tenant(tenant).map_err(TokenError::Invalid)?;
    if tenant == DEFAULT_TENANT {
        return Err(TokenError::Invalid(format!(
            "`{DEFAULT_TENANT}` is the tenant of the unauthenticated single user; pick another"
        )));
    }
    let id = random_hex(6)?;
    let token = format!("aml_{id}_{}", random_hex(24)?);
    let stored = StoredToken {
        id,
        tenant: tenant.to_string(),
        name: name.to_string(),
        sha256: sha256_hex(token.as_bytes()),
        created_at: crate::time::now_iso(),
        revoked: false,
    };
    let mut file = read_tokens(path)?;
    file.tokens.push(stored.clone());
    write_tokens(path, &file)?;
    Ok((token, stored))
}

/// Every stored token, optionally of one tenant.
pub fn list_tokens(path: &Path, tenant: Option<&str>) -> Result<Vec<StoredToken>, TokenError> {
    Ok(read_tokens(path)?
        .tokens
        .into_iter()
        .filter(|t| tenant.is_none_or(|tenant| t.tenant == tenant))
        .collect())
}

/// Revokes the token with this id; false when there is none.
pub fn revoke_token(path: &Path, id: &str) -> Result<bool, TokenError> {
    let mut file = read_tokens(path)?;
    let mut found = false;
    for token in file.tokens.iter_mut().filter(|t| t.id == id) {
        token.revoked = true;
        found = true;
    }
    if found {
        write_tokens(path, &file)?;
    }
    Ok(found)
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    tenant: String,
    name: String,
    scope: Scope,
    /// Unix seconds after which the token is refused.
    #[serde(default)]
    expires: u64,
}

/// How long a service's token for one call on a tenant's behalf is good for.
pub const SERVICE_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(10 * 60);
/// How long a training job's token is good for: longer than any training run should take.
pub const JOB_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(14 * 24 * 3600);

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// HMAC-SHA256 of `message` under `key` (ring's).
fn hmac_sha256(key: &[u8], message: &[u8]) -> ring::hmac::Tag {
    ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), message)
}

/// Whether `mac` is the HMAC-SHA256 of `message` under `key`, compared in constant time.
fn hmac_verifies(key: &[u8], message: &[u8], mac: &[u8]) -> bool {
    ring::hmac::verify(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key),
        message,
        mac,
    )
    .is_ok()
}

#[derive(Debug)]
struct Cached {
    stamp: Option<(SystemTime, u64)>,
    by_hash: HashMap<String, StoredToken>,
}

/// Checks tokens: API tokens against the tokens file (re-read when it changes), internal ones
/// by their MAC.
#[derive(Debug)]
pub struct Authenticator {
    tokens_path: PathBuf,
    secret: Vec<u8>,
    cache: Mutex<Cached>,
}

impl Authenticator {
    /// The authenticator of a configuration; `None` when authentication is off.
    pub fn from_config(config: &AuthConfig, data_dir: &Path) -> Option<Arc<Self>> {
        config.enabled.then(|| {
            Arc::new(Self {
                tokens_path: config.tokens_path(data_dir),
                secret: config.internal_secret.as_bytes().to_vec(),
                cache: Mutex::new(Cached {
                    stamp: None,
                    by_hash: HashMap::new(),
                }),
            })
        })
    }

    /// An internal token for `tenant` with `scope`, good for `ttl`.
    pub fn mint(&self, tenant: &str, name: &str, scope: Scope, ttl: std::time::Duration) -> String {
        let claims = Claims {
            tenant: tenant.to_string(),
            name: name.to_string(),
            scope,
            expires: unix_now().saturating_add(ttl.as_secs()),
        };
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap_or_default());
        let mac = hex::encode(hmac_sha256(&self.secret, body.as_bytes()).as_ref());
        format!("amls.{body}.{mac}")
    }

    /// The caller a token stands for.
    pub fn authenticate(&self, token: &str) -> Result<Caller, tonic::Status> {
        let refused = || tonic::Status::unauthenticated("invalid or revoked token");
        if let Some(rest) = token.strip_prefix("amls.") {
            let (body, mac) = rest.rsplit_once('.').ok_or_else(refused)?;
            let given = hex::decode(mac).map_err(|_| refused())?;
            if !hmac_verifies(&self.secret, body.as_bytes(), &given) {
                return Err(refused());
            }
            let claims: Claims = URL_SAFE_NO_PAD
                .decode(body)
                .ok()
                .and_then(|json| serde_json::from_slice(&json).ok())
                .ok_or_else(refused)?;
            if claims.expires <= unix_now() {
                return Err(refused());
            }
            return Ok(Caller {
                tenant: claims.tenant,
                name: claims.name,
                scope: claims.scope,
            });
        }
        let hash = sha256_hex(token.as_bytes());
        let stored = self.lookup(&hash).ok_or_else(refused)?;
        if stored.revoked {
            return Err(refused());
        }
        Ok(Caller {
            tenant: stored.tenant,
            name: stored.name,
            scope: Scope::Tenant,
        })
    }

    fn lookup(&self, hash: &str) -> Option<StoredToken> {
        let stamp = std::fs::metadata(&self.tokens_path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())));
        let mut cache = self.cache.lock().ok()?;
        if cache.stamp != stamp || stamp.is_none() {
            match read_tokens(&self.tokens_path) {
                Ok(file) => {
                    cache.by_hash = file
                        .tokens
                        .into_iter()
                        .map(|t| (t.sha256.clone(), t))
                        .collect();
                    cache.stamp = stamp;
                }
                Err(err) => {
                    tracing::error!(error = %err, "cannot read the tokens file");
                    cache.by_hash.clear();
                    cache.stamp = None;
                }
            }
        }
        cache.by_hash.get(hash).cloned()
    }
}

/// Whether a path is open without a token (health and reflection).
fn is_open(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.") || path.starts_with("/grpc.reflection.")
}

/// Authenticates every call but health and reflection, and hands the [`Caller`] to the
/// handler; a pass-through without an authenticator.
#[derive(Debug, Clone, Default)]
pub struct AuthLayer {
    auth: Option<Arc<Authenticator>>,
}

impl AuthLayer {
    /// A layer checking tokens with `auth` (none: authentication off).
    pub fn new(auth: Option<Arc<Authenticator>>) -> Self {
        Self { auth }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

/// See [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Option<Arc<Authenticator>>,
}

fn refusal<B: Default>(status: &tonic::Status) -> http::Response<B> {
    let (parts, ()) = status.clone().into_http::<()>().into_parts();
    http::Response::from_parts(parts, B::default())
}

impl<S, B, R> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if let Some(auth) = &self.auth
            && !is_open(request.uri().path())
        {
            let token = request
                .headers()
                .get(HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                })
                .map(str::trim);
            let verdict = match token {
                None => Err(tonic::Status::unauthenticated(
                    "missing `authorization: Bearer <token>`",
                )),
                Some(token) => auth.authenticate(token),
            };
            match verdict {
                Ok(caller) => {
                    tracing::debug!(tenant = %caller.tenant, caller = %caller.name, path = request.uri().path(), "authenticated");
                    request.extensions_mut().insert(caller);
                }
                Err(status) => {
                    tracing::info!(
                        path = request.uri().path(),
                        reason = status.message(),
                        "call refused"
                    );
                    let response = refusal(&status);
                    return Box::pin(async move { Ok(response) });
                }
            }
        }
        let mut inner = self.inner.clone();
        std::mem::swap(&mut self.inner, &mut inner);
        let call = inner.call(request);
        Box::pin(async move {
            let mut response = call.await?;
            too_large_is_resource_exhausted(response.headers_mut());
            Ok(response)
        })
    }
}

/// tonic answers a request message over the size limit with OUT_OF_RANGE; gRPC's convention
/// (and what clients retry on, or not) is RESOURCE_EXHAUSTED. No automl handler answers
/// OUT_OF_RANGE itself, so every such status is that limit.
fn too_large_is_resource_exhausted(headers: &mut http::HeaderMap) {
    use crate::rpc::GRPC_STATUS;
    let out_of_range = headers
        .get(GRPC_STATUS)
        .is_some_and(|status| status.as_bytes() == b"11");
    if out_of_range {
        let code = i32::from(tonic::Code::ResourceExhausted).to_string();
        if let Ok(value) = http::HeaderValue::from_str(&code) {
            headers.insert(GRPC_STATUS, value);
        }
    }
}

/// A client interceptor adding `authorization: Bearer <token>` (no token: nothing).
#[derive(Clone, Default)]
pub struct Credentials {
    value: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("token", &self.value.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Credentials {
    /// Credentials sending `token`; empty: none.
    pub fn bearer(token: &str) -> Result<Self, tonic::Status> {
        if token.is_empty() {
            return Ok(Self::default());
        }
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| tonic::Status::invalid_argument("the token has invalid characters"))?;
        Ok(Self { value: Some(value) })
    }

    /// A service's credentials for calls on `tenant`'s behalf (none without authentication).
    pub fn for_tenant(auth: Option<&Authenticator>, tenant: &str) -> Self {
        auth.and_then(|auth| {
            Self::bearer(&auth.mint(tenant, "service", Scope::Tenant, SERVICE_TOKEN_TTL)).ok()
        })
        .unwrap_or_default()
    }

    /// Adds the credentials to a request.
    pub fn apply<T>(&self, request: &mut tonic::Request<T>) {
        if let Some(value) = &self.value {
            request.metadata_mut().insert(HEADER, value.clone());
        }
    }
}

impl tonic::service::Interceptor for Credentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        self.apply(&mut request);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authenticator(dir: &Path) -> Arc<Authenticator> {
        Authenticator::from_config(
            &AuthConfig {
                enabled: true,
                tokens_file: String::new(),
                internal_secret: "0123456789abcdef0123".into(),
            },
            dir,
        )
        .expect("enabled")
    }

    #[test]
    fn api_tokens_are_stored_hashed_and_can_be_revoked() {
        let dir = tempfile::tempdir().expect("dir");
        let auth = authenticator(dir.path());
        let path = dir.path().join("tokens.json");
        let (token, stored) = create_token(&path, "team-a", "alice").expect("create");
        let text = std::fs::read_to_string(&path).expect("file");
        assert!(!text.contains(&token));
        assert!(text.contains(&stored.sha256));
        let caller = auth.authenticate(&token).expect("valid");
        assert_eq!(caller.tenant, "team-a");
        assert_eq!(caller.name, "alice");
        assert!(auth.authenticate("aml_nope_nope").is_err());
        assert!(revoke_token(&path, &stored.id).expect("revoke"));
        assert!(auth.authenticate(&token).is_err());
        assert!(create_token(&path, "../x", "bad").is_err());
        assert_eq!(list_tokens(&path, Some("team-a")).expect("list").len(), 1);
    }

    #[test]
    fn internal_tokens_carry_their_scope_and_cannot_be_forged() {
        let dir = tempfile::tempdir().expect("dir");
        let auth = authenticator(dir.path());
        let scope = Scope::Run {
            run_id: "7".into(),
            dataset_id: "1".into(),
            version_hash: "hashAg==".into(),
            base_run_id: String::new(),
        };
        let token = auth.mint("team-a", "job-7", scope.clone(), JOB_TOKEN_TTL);
        let caller = auth.authenticate(&token).expect("valid");
        let expired = auth.mint("team-a", "job-7", scope.clone(), std::time::Duration::ZERO);
        assert!(
            auth.authenticate(&expired).is_err(),
            "expired tokens are refused"
        );
        assert_eq!(caller.scope, scope);
        assert!(caller.may_write_run("7") && !caller.may_write_run("8"));
        assert!(caller.require_tenant().is_err());
        // Another tenant in the claims with the old MAC is refused.
        let (_, mac) = token.rsplit_once('.').expect("mac");
        let forged_claims = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&Claims {
                tenant: "team-b".into(),
                name: "job-7".into(),
                scope: Scope::Tenant,
                expires: u64::MAX,
            })
            .expect("json"),
        );
        assert!(
            auth.authenticate(&format!("amls.{forged_claims}.{mac}"))
                .is_err()
        );
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        let mac = hmac_sha256(&[0x0b; 20], b"Hi There");
        assert_eq!(
            hex::encode(mac.as_ref()),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        assert!(hmac_verifies(&[0x0b; 20], b"Hi There", mac.as_ref()));
        assert!(!hmac_verifies(&[0x0b; 20], b"Hi there", mac.as_ref()));
    }
}
