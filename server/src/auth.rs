//! Who is calling: an API key names a tenant; the admin key may administer. With no admin
//! key configured and no API keys stored, a loopback-only server serves the default tenant
//! (and administration) without keys.

use crate::AppState;
use crate::http::HttpError;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
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

pub struct Auth {
    admin_key_sha256: Option<[u8; 32]>,
    /// True while the server runs without keys (no admin key, no API keys stored).
    open: AtomicBool,
    limiter: Option<RateLimiter>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("admin_key", &self.admin_key_sha256.map(|_| "<redacted>"))
            .field("open", &self.is_open())
            .finish_non_exhaustive()
    }
}

/// True for a `Host` header naming this machine's loopback (any port): `localhost`,
/// `127.x.x.x`, `[::1]`. Keyless mode answers only those, so that a web page whose DNS
/// name was rebound to 127.0.0.1 cannot drive it from a browser.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host
            .rsplit_once(':')
            .map_or(host, |(name, port)| if port.bytes().all(|b| b.is_ascii_digit()) { name } else { host }),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
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
                // HTTP/2 carries the host in the URI's authority, HTTP/1.1 in `Host`.
                let host = match parts.uri.authority() {
                    Some(authority) => authority.as_str(),
                    None => parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or(""),
                };
                if !is_loopback_host(host) {
                    return Err(HttpError::new(
                        ErrorCode::Forbidden,
                        "without keys the server answers only requests addressed to localhost",
                    ));
                }
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
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let caller = state.auth.identify(state, parts).map_err(IntoResponse::into_response)?;
        if let Some(limiter) = &state.auth.limiter
            && let Err(wait_secs) = limiter.allow(&caller.principal)
        {
            let mut response =
                HttpError::new(ErrorCode::RateLimited, "too many requests for this key; retry later").into_response();
            if let Ok(v) = HeaderValue::from_str(&wait_secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return Err(response);
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

    /// `Ok` and a token taken, or `Err(seconds)` until the next token.
    fn allow(&self, principal: &str) -> Result<(), u64> {
        let mut buckets = self.buckets.lock();
        // Read the clock under the lock, so that refills are counted once.
        let now = Instant::now();
        let (tokens, at) = buckets.entry(principal.to_string()).or_insert((self.burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * self.per_sec).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / self.per_sec).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_the_burst_then_refuses() {
        let limiter = RateLimiter::new(0.01, 3.0);
        assert!((0..3).all(|_| limiter.allow("k").is_ok()));
        let wait = limiter.allow("k").expect_err("empty bucket");
        assert!((99..=100).contains(&wait), "one token takes ~100 s at 0.01/s, not {wait}");
        assert!(limiter.allow("other").is_ok(), "buckets are per principal");
    }

    #[test]
    fn loopback_hosts() {
        for host in ["localhost", "localhost:7700", "127.0.0.1:80", "127.9.9.9", "[::1]:7700", "[::1]", "LOCALHOST"] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in ["evil.example", "evil.example:7700", "10.0.0.1:7700", "", "localhost.evil.example", "[::2]"] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn admin_key_matches_only_itself() {
        let auth = Auth::new(Some("a-very-long-admin-key-of-32-chars!"), false, None);
        assert!(auth.is_admin_key("a-very-long-admin-key-of-32-chars!"));
        assert!(!auth.is_admin_key("a-very-long-admin-key-of-32-chars?"));
        assert!(!auth.is_open());
    }
}
