//! Who is calling: an API key names a tenant; the admin key may administer. With no admin
//! key configured and no API keys stored, a loopback-only server serves the default tenant
//! (and administration) without keys.

use crate::AppState;
use crate::http::HttpError;
use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use engram_core::api::ErrorCode;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use subtle::ConstantTimeEq;

/// A request's verified caller.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The tenant whose data the caller may touch (`None` for the admin key).
    pub tenant: Option<String>,
    pub admin: bool,
    /// What rate limits and logs know the caller by (a key id, `admin` or `anonymous`).
    pub principal: String,
}

impl Caller {
    /// The caller's tenant, or 403 for a caller without one (the admin key).
    pub fn tenant(&self) -> Result<&str, HttpError> {
        self.tenant.as_deref().ok_or_else(|| {
            HttpError::new(ErrorCode::Forbidden, "the admin key has no tenant: use an API key of the tenant")
        })
    }

    /// 403 unless the caller may administer.
    pub fn require_admin(&self) -> Result<(), HttpError> {
        if self.admin {
            return Ok(());
        }
        Err(HttpError::new(ErrorCode::Forbidden, "this route needs the admin key"))
    }
}

#[derive(Debug)]
pub struct Auth {
    admin_key_sha256: Option<[u8; 32]>,
    /// True while the server runs without keys (no admin key, no API keys stored).
    open: AtomicBool,
    limiter: Option<RateLimiter>,
}

impl Auth {
    pub fn new(admin_key: Option<&str>, has_api_keys: bool, rate: Option<(f64, f64)>) -> Self {
        Auth {
            admin_key_sha256: admin_key.map(|k| Sha256::digest(k.as_bytes()).into()),
            open: AtomicBool::new(admin_key.is_none() && !has_api_keys),
            limiter: rate.map(|(per_sec, burst)| RateLimiter::new(per_sec, burst)),
        }
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// Called once API keys exist: from then on every request needs a key.
    pub fn close(&self) {
        if self.open.swap(false, Ordering::AcqRel) {
            tracing::warn!("an API key now exists: requests without a key are refused from now on");
        }
    }

    fn is_admin_key(&self, presented: &str) -> bool {
        let Some(expected) = &self.admin_key_sha256 else { return false };
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        bool::from(presented.ct_eq(expected))
    }

    fn identify(&self, state: &AppState, parts: &Parts) -> Result<Caller, HttpError> {
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            if self.is_open() {
                return Ok(Caller {
                    tenant: Some(engram::DEFAULT_TENANT.to_string()),
                    admin: true,
                    principal: "anonymous".into(),
                });
            }
            return Err(HttpError::new(ErrorCode::Unauthorized, "missing API key: send Authorization: Bearer <key>"));
        };
        let bad = || HttpError::new(ErrorCode::Unauthorized, "invalid API key");
        let text = value.to_str().map_err(|_| bad())?;
        let token = text.strip_prefix("Bearer ").or_else(|| text.strip_prefix("bearer ")).ok_or_else(bad)?.trim();
        if self.is_admin_key(token) {
            return Ok(Caller { tenant: None, admin: true, principal: "admin".into() });
        }
        // A point read of the key's record (and of its tenant's); no scan.
        match state.db.authenticate_api_key(token)? {
            Some(key) => Ok(Caller { tenant: Some(key.tenant), admin: false, principal: key.key_id }),
            None => Err(bad()),
        }
    }
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let caller = state.auth.identify(state, parts)?;
        if let Some(limiter) = &state.auth.limiter
            && !limiter.allow(&caller.principal)
        {
            return Err(HttpError::new(ErrorCode::RateLimited, "too many requests for this key; retry shortly"));
        }
        Ok(caller)
    }
}

/// A token bucket per principal.
#[derive(Debug)]
struct RateLimiter {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    fn new(per_sec: f64, burst: f64) -> Self {
        RateLimiter { per_sec, burst, buckets: Mutex::new(HashMap::new()) }
    }

    fn allow(&self, principal: &str) -> bool {
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        let (tokens, at) = buckets.entry(principal.to_string()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.per_sec).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_the_burst_then_refuses() {
        let limiter = RateLimiter::new(0.001, 3.0);
        assert!((0..3).all(|_| limiter.allow("k")));
        assert!(!limiter.allow("k"));
        assert!(limiter.allow("other"), "buckets are per principal");
    }

    #[test]
    fn admin_key_matches_only_itself() {
        let auth = Auth::new(Some("a-very-long-admin-key-of-32-chars!"), false, None);
        assert!(auth.is_admin_key("a-very-long-admin-key-of-32-chars!"));
        assert!(!auth.is_admin_key("a-very-long-admin-key-of-32-chars?"));
        assert!(!auth.is_open());
    }
}
