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
//!
//! The tokens file is in `tokens`, the internal token format in `internal`, the server's layer
//! and the client's interceptor in `layer`; their public items are re-exported here.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

mod internal;
mod layer;
mod tokens;

pub use internal::{JOB_TOKEN_TTL, SERVICE_TOKEN_TTL};
pub use layer::{AuthLayer, AuthService, Credentials};
pub use tokens::{StoredToken, TokenError, create_token, list_tokens, revoke_token};

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

/// Checks tokens: API tokens against the tokens file (re-read when it changes), internal ones
/// by their MAC.
#[derive(Debug)]
pub struct Authenticator {
    tokens_path: PathBuf,
    secret: Vec<u8>,
    cache: Mutex<tokens::Cached>,
}

impl Authenticator {
    /// The authenticator of a configuration; `None` when authentication is off.
    pub fn from_config(config: &AuthConfig, data_dir: &Path) -> Option<Arc<Self>> {
        config.enabled.then(|| {
            Arc::new(Self {
                tokens_path: config.tokens_path(data_dir),
                secret: config.internal_secret.as_bytes().to_vec(),
                cache: Mutex::new(tokens::Cached::default()),
            })
        })
    }

    /// An internal token for `tenant` with `scope`, good for `ttl`.
    pub fn mint(&self, tenant: &str, name: &str, scope: Scope, ttl: std::time::Duration) -> String {
        internal::mint(&self.secret, tenant, name, scope, ttl)
    }

    /// The caller a token stands for.
    pub fn authenticate(&self, token: &str) -> Result<Caller, tonic::Status> {
        let refused = || tonic::Status::unauthenticated("invalid or revoked token");
        if let Some(rest) = token.strip_prefix("amls.") {
            let claims = internal::verify(&self.secret, rest).ok_or_else(refused)?;
            return Ok(Caller {
                tenant: claims.tenant,
                name: claims.name,
                scope: claims.scope,
            });
        }
        let hash = tokens::sha256_hex(token.as_bytes());
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
        self.cache.lock().ok()?.lookup(&self.tokens_path, hash)
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::internal::Claims;
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
}
