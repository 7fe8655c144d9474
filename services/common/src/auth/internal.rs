//! Internal tokens (`amls.<claims>.<mac>`): claims (tenant, name, scope, expiry) as base64url
//! JSON, signed with HMAC-SHA256 under the shared `[auth] internal_secret`. The services mint
//! them for calls on a tenant's behalf and for each training job.

use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use super::Scope;

/// What an internal token says, signed.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Claims {
    pub(super) tenant: String,
    pub(super) name: String,
    pub(super) scope: Scope,
    /// Unix seconds after which the token is refused.
    #[serde(default)]
    pub(super) expires: u64,
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

/// An internal token for `tenant` with `scope`, good for `ttl`, signed with `secret`.
pub(super) fn mint(
    secret: &[u8],
    tenant: &str,
    name: &str,
    scope: Scope,
    ttl: std::time::Duration,
) -> String {
    let claims = Claims {
        tenant: tenant.to_string(),
        name: name.to_string(),
        scope,
        expires: unix_now().saturating_add(ttl.as_secs()),
    };
    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap_or_default());
    let mac = hex::encode(hmac_sha256(secret, body.as_bytes()).as_ref());
    format!("amls.{body}.{mac}")
}

/// The claims of an internal token (without its `amls.` prefix) signed with `secret` and not
/// expired; `None` otherwise.
pub(super) fn verify(secret: &[u8], token: &str) -> Option<Claims> {
    let (body, mac) = token.rsplit_once('.')?;
    let given = hex::decode(mac).ok()?;
    if !hmac_verifies(secret, body.as_bytes(), &given) {
        return None;
    }
    let claims: Claims = URL_SAFE_NO_PAD
        .decode(body)
        .ok()
        .and_then(|json| serde_json::from_slice(&json).ok())?;
    (claims.expires > unix_now()).then_some(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

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
