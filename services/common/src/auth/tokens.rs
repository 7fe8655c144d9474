//! API tokens (`aml_<id>_<secret>`): the tokens file that stores them hashed (SHA-256) with
//! their tenant and name, written atomically, and the cache the servers look them up in.

use std::collections::HashMap;
use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{DEFAULT_TENANT, check_tenant};

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

pub(super) fn sha256_hex(data: &[u8]) -> String {
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

/// The tokens file as last read, re-read when its modification time or size changes.
#[derive(Debug, Default)]
pub(super) struct Cached {
    stamp: Option<(SystemTime, u64)>,
    by_hash: HashMap<String, StoredToken>,
}

impl Cached {
    /// The stored token whose SHA-256 is `hash`, reading `path` again when it changed.
    pub(super) fn lookup(&mut self, path: &Path, hash: &str) -> Option<StoredToken> {
        let stamp = std::fs::metadata(path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())));
        if self.stamp != stamp || stamp.is_none() {
            match read_tokens(path) {
                Ok(file) => {
                    self.by_hash = file
                        .tokens
                        .into_iter()
                        .map(|t| (t.sha256.clone(), t))
                        .collect();
                    self.stamp = stamp;
                }
                Err(err) => {
                    tracing::error!(error = %err, "cannot read the tokens file");
                    self.by_hash.clear();
                    self.stamp = None;
                }
            }
        }
        self.by_hash.get(hash).cloned()
    }
}
