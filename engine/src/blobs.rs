//! Content-addressed blobs: texts larger than `BLOB_INLINE_MAX_BYTES` are stored once per
//! tenant under their sha256 and referenced by events. A blob counts its references (over
//! all sessions of the tenant) and each session counts its own, so that deleting a session
//! or forgetting an identity releases exactly what it held; a blob goes with its last
//! reference.

use crate::codec;
use crate::db::Engram;
use crate::error::{Error, Result};
use engram_core::keys;
use engram_core::records::{BlobRecord, BlobRefRecord};
use engram_storage::{Batch, ReadView, Space};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

pub(crate) fn sha_array(bytes: &[u8]) -> Option<[u8; 32]> {
    <[u8; 32]>::try_from(bytes).ok()
}

/// Pending blob reference changes of one transaction, applied to the batch by `flush`.
#[derive(Debug)]
pub(crate) struct BlobLedger {
    tenant: String,
    /// The blob as it will be after this transaction (`None`: deleted or absent).
    blobs: BTreeMap<[u8; 32], Option<BlobRecord>>,
    /// Per (identity, session, blob): the session's reference count after this transaction.
    session_refs: BTreeMap<(String, String, [u8; 32]), u64>,
}

impl BlobLedger {
    pub(crate) fn new(tenant: &str) -> Self {
        BlobLedger { tenant: tenant.to_string(), blobs: BTreeMap::new(), session_refs: BTreeMap::new() }
    }

    pub(crate) fn tenant(&self) -> &str {
        &self.tenant
    }

    fn blob(&mut self, view: &dyn ReadView, sha: &[u8; 32]) -> Result<&mut Option<BlobRecord>> {
        if !self.blobs.contains_key(sha) {
            let record = codec::get::<BlobRecord>(view, Space::Data, &keys::blob(&self.tenant, sha))?;
            self.blobs.insert(*sha, record);
        }
        Ok(self.blobs.entry(*sha).or_default())
    }

    fn session_ref(&mut self, view: &dyn ReadView, identity: &str, session: &str, sha: &[u8; 32]) -> Result<&mut u64> {
        let k = (identity.to_string(), session.to_string(), *sha);
        if !self.session_refs.contains_key(&k) {
            let key = keys::blob_ref(&self.tenant, identity, session, sha);
            let count = codec::get::<BlobRefRecord>(view, Space::Data, &key)?.map_or(0, |r| r.count);
            self.session_refs.insert(k.clone(), count);
        }
        Ok(self.session_refs.entry(k).or_default())
    }

    /// One more event of `session` references `data` (hashing to `sha`).
    pub(crate) fn add(
        &mut self,
        view: &dyn ReadView,
        identity: &str,
        session: &str,
        sha: &[u8; 32],
        data: &[u8],
        now_ms: i64,
    ) -> Result<()> {
        let blob = self.blob(view, sha)?;
        match blob {
            Some(record) => record.refcount += 1,
            None => *blob = Some(BlobRecord { data: data.to_vec(), refcount: 1, created_at_ms: now_ms }),
        }
        *self.session_ref(view, identity, session, sha)? += 1;
        Ok(())
    }

    /// One event of `session` that referenced `sha` is gone.
    pub(crate) fn release(&mut self, view: &dyn ReadView, identity: &str, session: &str, sha: &[u8; 32]) -> Result<()> {
        let count = self.session_ref(view, identity, session, sha)?;
        *count = count.saturating_sub(1);
        self.release_blob(view, sha, 1)
    }

    /// `count` references to `sha` are gone with a range delete that also removes their
    /// session reference keys.
    pub(crate) fn release_blob(&mut self, view: &dyn ReadView, sha: &[u8; 32], count: u64) -> Result<()> {
        let tenant = self.tenant.clone();
        let blob = self.blob(view, sha)?;
        let Some(record) = blob else {
            return Err(Error::corruption(&keys::blob(&tenant, sha), "referenced blob is missing"));
        };
        record.refcount = record.refcount.saturating_sub(count);
        if record.refcount == 0 {
            *blob = None;
        }
        Ok(())
    }

    /// Writes the ledger into `batch`; returns the number of blobs deleted.
    pub(crate) fn flush(self, batch: &mut Batch) -> u64 {
        let mut deleted = 0;
        for (sha, blob) in self.blobs {
            let key = keys::blob(&self.tenant, &sha);
            match blob {
                Some(record) => codec::put(batch, Space::Data, key, &record),
                None => {
                    batch.delete(Space::Data, key);
                    deleted += 1;
                }
            }
        }
        for ((identity, session, sha), count) in self.session_refs {
            let key = keys::blob_ref(&self.tenant, &identity, &session, &sha);
            if count == 0 {
                batch.delete(Space::Data, key);
            } else {
                codec::put(batch, Space::Data, key, &BlobRefRecord { count });
            }
        }
        deleted
    }
}

impl Engram {
    /// The content of a blob of `tenant`, by its lowercase hex sha256.
    ///
    /// # Errors
    /// `InvalidArgument` for a malformed hash, `NotFound` when the tenant has no such blob.
    pub fn get_blob(&self, tenant: &str, sha256_hex: &str) -> Result<Vec<u8>> {
        engram_core::validate::id("tenant", tenant)?;
        let sha = hex::decode(sha256_hex)
            .ok()
            .and_then(|b| sha_array(&b))
            .ok_or_else(|| Error::invalid("sha256", "must be 64 hex digits"))?;
        let key = keys::blob(tenant, &sha);
        match codec::get::<BlobRecord>(&*self.inner.store, Space::Data, &key)? {
            Some(record) => Ok(record.data),
            None => Err(Error::not_found("blob", sha256_hex)),
        }
    }
}
