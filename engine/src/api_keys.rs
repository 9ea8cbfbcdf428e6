//! API keys: random bearer secrets bound to one tenant. The store keeps only the sha256 of
//! each secret (the secrets are 256 random bits, so a plain hash cannot be reversed) and
//! compares hashes in constant time.

use crate::codec;
use crate::db::Engram;
use crate::error::{Error, Result};
use crate::tenants::load_tenant;
use engram_core::keys;
use engram_core::model::{ApiKey, ChangeOp, NewApiKey};
use engram_core::records::ApiKeyRecord;
use engram_core::validate;
use engram_storage::{Direction, Space};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Every key starts with this, so that leaked keys are easy to find in logs and code.
pub const API_KEY_PREFIX: &str = "egk_";
const KEY_ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;
/// A key label's maximum length in bytes.
pub const MAX_API_KEY_LABEL_BYTES: usize = 256;

fn random_hex(n: usize) -> Result<String> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).map_err(|e| Error::Io(format!("no randomness for a key: {e}")))?;
    Ok(hex::encode(buf))
}

fn to_api_key(r: ApiKeyRecord) -> ApiKey {
    ApiKey { key_id: r.key_id, tenant: r.tenant, label: r.label, created_at_ms: r.created_at_ms }
}

/// Splits `egk_<key_id>_<secret>`; `None` when the text does not have that shape.
fn parse(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix(API_KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hexy = |s: &str, n: usize| s.len() == n * 2 && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hexy(id, KEY_ID_BYTES) && hexy(secret, SECRET_BYTES)).then_some((id, secret))
}

impl Engram {
    /// Creates an API key for `tenant`. The returned secret is the only copy.
    pub fn create_api_key(&self, tenant: &str, label: &str) -> Result<NewApiKey> {
        validate::id("tenant", tenant)?;
        if label.len() > MAX_API_KEY_LABEL_BYTES {
            return Err(Error::invalid("label", format!("is longer than {MAX_API_KEY_LABEL_BYTES} bytes")));
        }
        let secret = random_hex(SECRET_BYTES)?;
        let key_id = random_hex(KEY_ID_BYTES)?;
        let (record, _) = self.inner.commit(|tx| {
            load_tenant(tx.view(), tenant)?;
            let key = keys::meta::api_key(&key_id);
            if tx.view().get(Space::Meta, &key)?.is_some() {
                // 64 random bits colliding: refuse rather than overwrite.
                return Err(Error::Conflict("generated key id collides; retry".into()));
            }
            let record = ApiKeyRecord {
                key_id: key_id.clone(),
                tenant: tenant.to_string(),
                label: label.to_string(),
                secret_sha256: Sha256::digest(secret.as_bytes()).to_vec(),
                created_at_ms: tx.now_ms,
            };
            codec::put(&mut tx.batch, Space::Meta, key, &record);
            tx.record_change(ChangeOp::ApiKeyCreated, tenant, "", "").key = key_id.clone();
            Ok(record)
        })?;
        let secret = format!("{API_KEY_PREFIX}{key_id}_{secret}");
        Ok(NewApiKey { key: to_api_key(record), secret })
    }

    /// The API keys of `tenant` (all tenants when `None`), by key id.
    pub fn list_api_keys(&self, tenant: Option<&str>) -> Result<Vec<ApiKey>> {
        let view = &*self.inner.store;
        if let Some(t) = tenant {
            load_tenant(view, t)?;
        }
        let mut out = Vec::new();
        for entry in
            codec::scan_prefix::<ApiKeyRecord>(view, Space::Meta, &keys::meta::api_keys_prefix(), Direction::Forward)
        {
            let (_, record) = entry?;
            if tenant.is_none_or(|t| t == record.tenant) {
                out.push(to_api_key(record));
            }
        }
        Ok(out)
    }

    /// The key `key_id`, if it has not been revoked.
    pub fn get_api_key(&self, key_id: &str) -> Result<Option<ApiKey>> {
        validate::id("key_id", key_id)?;
        Ok(codec::get::<ApiKeyRecord>(&*self.inner.store, Space::Meta, &keys::meta::api_key(key_id))?.map(to_api_key))
    }

    /// True when at least one API key exists.
    pub fn has_api_keys(&self) -> Result<bool> {
        let view = &*self.inner.store;
        let prefix = keys::meta::api_keys_prefix();
        Ok(codec::scan_prefix::<ApiKeyRecord>(view, Space::Meta, &prefix, Direction::Forward)
            .next()
            .transpose()?
            .is_some())
    }

    /// Revokes an API key.
    pub fn delete_api_key(&self, key_id: &str) -> Result<ApiKey> {
        validate::id("key_id", key_id)?;
        let (record, _) = self.inner.commit(|tx| {
            let key = keys::meta::api_key(key_id);
            let record: ApiKeyRecord =
                codec::get(tx.view(), Space::Meta, &key)?.ok_or_else(|| Error::not_found("api key", key_id))?;
            tx.batch.delete(Space::Meta, key);
            tx.record_change(ChangeOp::ApiKeyDeleted, &record.tenant, "", "").key = key_id.to_string();
            Ok(record)
        })?;
        Ok(to_api_key(record))
    }

    /// The key a bearer secret belongs to, or `None` when it is not a live key of an
    /// existing tenant. The hash comparison takes the same time wherever it differs.
    pub fn authenticate_api_key(&self, secret: &str) -> Result<Option<ApiKey>> {
        let Some((key_id, secret_part)) = parse(secret) else { return Ok(None) };
        let view = &*self.inner.store;
        let Some(record) = codec::get::<ApiKeyRecord>(view, Space::Meta, &keys::meta::api_key(key_id))? else {
            return Ok(None);
        };
        let presented = Sha256::digest(secret_part.as_bytes());
        if !bool::from(presented.as_slice().ct_eq(&record.secret_sha256)) {
            return Ok(None);
        }
        if codec::get::<engram_core::records::TenantRecord>(view, Space::Meta, &keys::meta::tenant(&record.tenant))?
            .is_none()
        {
            return Ok(None);
        }
        Ok(Some(to_api_key(record)))
    }
}

/// Deletes the keys of `tenant` inside a transaction (tenant deletion).
pub(crate) fn delete_tenant_keys(tx: &mut crate::db::Tx<'_>, tenant: &str) -> Result<()> {
    let prefix = keys::meta::api_keys_prefix();
    let doomed: Vec<Vec<u8>> = codec::scan_prefix::<ApiKeyRecord>(tx.view(), Space::Meta, &prefix, Direction::Forward)
        .filter_map(|entry| match entry {
            Ok((key, record)) if record.tenant == tenant => Some(Ok(key)),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<_>>()?;
    for key in doomed {
        tx.batch.delete(Space::Meta, key);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_only_the_key_shape() {
        let good = format!("egk_{}_{}", "ab".repeat(KEY_ID_BYTES), "0f".repeat(SECRET_BYTES));
        assert!(parse(&good).is_some());
        assert!(parse(&good[1..]).is_none());
        assert!(parse(&format!("{good}0")).is_none());
        assert!(parse(&good.replace("ab", "zz")).is_none());
        assert!(parse("egk__").is_none());
        assert!(parse("").is_none());
    }
}
