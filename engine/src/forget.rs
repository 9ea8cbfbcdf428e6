//! Removal of whole ranges: forget an identity, delete a session (or a tenant). Each is one
//! atomic write: a range delete of the owner's keys, its directory entry, the release of
//! the blobs it referenced, and one changelog entry; afterwards the range is compacted so
//! the bytes leave the disk too. The receipt counts what went.

use crate::blobs::BlobLedger;
use crate::codec;
use crate::db::{Engram, Tx};
use crate::error::{Error, Result};
use crate::tenants::load_tenant;
use engram_core::keys::{self, KeyReader, tag};
use engram_core::model::{ChangeOp, Receipt};
use engram_core::records::{BlobRefRecord, ChangeRecord, SessionRecord};
use engram_core::validate;
use engram_storage::{Direction, Space};

/// Counts and deletes every data key under `prefix` (a prefix inside tenant `tenant`).
/// Blob references found release their blobs through `ledger`; without a ledger (a whole
/// tenant goes) blobs are simply counted as deleted.
pub(crate) fn remove_range(
    tx: &mut Tx<'_>,
    tenant: &str,
    prefix: &[u8],
    receipt: &mut Receipt,
    mut ledger: Option<&mut BlobLedger>,
) -> Result<()> {
    let tenant_prefix = keys::tenant_prefix(tenant);
    let end = keys::prefix_end(prefix);
    // Streamed, not collected: an identity may hold millions of events.
    let view = tx.view();
    for entry in view.scan(Space::Data, prefix, end.as_deref(), Direction::Forward) {
        let (key, value) = entry?;
        let Some(rest) = key.strip_prefix(&tenant_prefix[..]) else {
            return Err(Error::corruption(&key, "key outside its tenant"));
        };
        match classify(rest).map_err(|e| Error::corruption(&key, e))? {
            KeyKind::IdentityDir | KeyKind::Other => {}
            KeyKind::SessionDir => receipt.sessions += 1,
            KeyKind::Event => receipt.events += 1,
            KeyKind::Idempotency => receipt.idempotency_keys += 1,
            KeyKind::State => receipt.state_docs += 1,
            KeyKind::Memory => receipt.memory_versions += 1,
            KeyKind::Blob => receipt.blobs_deleted += 1,
            KeyKind::BlobRef(sha) => {
                if let Some(ledger) = ledger.as_deref_mut() {
                    let count = codec::decode::<BlobRefRecord>(&key, &value)?.count;
                    ledger.release_blob(view, &sha, count)?;
                }
            }
        }
    }
    if let Some(end) = end {
        tx.batch.delete_range(Space::Data, prefix.to_vec(), end);
    }
    Ok(())
}

/// Redacts the retained changelog entries that `names` matches (those of a forgotten
/// identity, a deleted session or tenant: they hold its ids, state keys and memory ids);
/// returns how many. Each becomes a [`ChangeOp::Redacted`] entry holding only its
/// sequence and time, so readers of the changelog still see every sequence (an index
/// that found one missing would rebuild). The entry the caller records next names what
/// it removes: from it the indexes learn what to drop. Reads every retained entry (the
/// indexes truncate the changelog as they persist their marks; with them off it holds
/// what was not truncated).
pub(crate) fn redact_changelog(tx: &mut Tx<'_>, names: impl Fn(&ChangeRecord) -> bool) -> Result<Redaction> {
    let mut named = Vec::new();
    for entry in codec::scan::<ChangeRecord>(tx.view(), Space::Log, &[], None, Direction::Forward) {
        let (key, record) = entry?;
        if record.op != ChangeOp::Redacted as i32 && names(&record) {
            named.push((key, record.seq, record.at_ms));
        }
    }
    let span = match (named.first(), named.last()) {
        (Some((first, ..)), Some((last, ..))) => Some((first.clone(), last.iter().copied().chain([0]).collect())),
        _ => None,
    };
    let redaction = Redaction { entries: named.len() as u64, span };
    for (key, seq, at_ms) in named {
        let redacted = ChangeRecord { seq, op: ChangeOp::Redacted as i32, at_ms, ..ChangeRecord::default() };
        codec::put(&mut tx.batch, Space::Log, key, &redacted);
    }
    Ok(redaction)
}

/// What [`redact_changelog`] rewrote: how many entries, and the key range holding them
/// (to compact, so their old bytes leave the disk).
pub(crate) struct Redaction {
    pub(crate) entries: u64,
    span: Option<(Vec<u8>, Vec<u8>)>,
}

enum KeyKind {
    IdentityDir,
    SessionDir,
    Event,
    Idempotency,
    BlobRef([u8; 32]),
    State,
    Memory,
    Blob,
    Other,
}

/// What a tenant-relative data key is.
fn classify(rest: &[u8]) -> Result<KeyKind, keys::KeyError> {
    let mut r = KeyReader::new(rest);
    Ok(match r.tag()? {
        tag::IDENTITY_DIR => KeyKind::IdentityDir,
        tag::BLOB => KeyKind::Blob,
        tag::IDENTITY => {
            r.str()?;
            match r.tag()? {
                tag::SESSION_DIR => KeyKind::SessionDir,
                tag::MEMORY | tag::MEMORY_HISTORY => KeyKind::Memory,
                tag::STATE => KeyKind::State,
                tag::SESSION => {
                    r.str()?;
                    match r.tag()? {
                        tag::EVENT => KeyKind::Event,
                        tag::IDEMPOTENCY => KeyKind::Idempotency,
                        tag::STATE => KeyKind::State,
                        tag::BLOB_REF => {
                            let sha = r.bytes(32)?;
                            KeyKind::BlobRef(sha.try_into().map_err(|_| keys::KeyError { reason: "short hash" })?)
                        }
                        _ => KeyKind::Other,
                    }
                }
                _ => KeyKind::Other,
            }
        }
        _ => KeyKind::Other,
    })
}

impl Engram {
    /// Forgets an identity: every session, event, memory (all versions), state document,
    /// idempotency key and blob reference of it is removed in one atomic write, and blobs
    /// no one else references are deleted. Afterwards nothing of it can be read, listed or
    /// scanned, and the changelog tells the indexes to drop it.
    ///
    /// # Errors
    /// `NotFound` when the tenant or identity does not exist.
    pub fn forget_identity(&self, tenant: &str, identity: &str) -> Result<Receipt> {
        validate::id("identity", identity)?;
        let prefix = keys::identity_prefix(tenant, identity);
        self.commit_removal(&prefix, |tx| {
            load_tenant(tx.view(), tenant)?;
            let dir_key = keys::identity_dir(tenant, identity);
            if tx.view().get(Space::Data, &dir_key)?.is_none() {
                return Err(Error::not_found("identity", identity));
            }
            let mut receipt = Receipt { tenant: tenant.into(), identity: identity.into(), ..Receipt::default() };
            let mut ledger = BlobLedger::new(tenant);
            remove_range(tx, tenant, &prefix, &mut receipt, Some(&mut ledger))?;
            receipt.blobs_deleted += ledger.flush(&mut tx.batch);
            tx.batch.delete(Space::Data, dir_key);
            let redaction = redact_changelog(tx, |c| c.tenant == tenant && c.identity == identity)?;
            tx.record_change(ChangeOp::IdentityForgotten, tenant, identity, "");
            Ok((receipt, redaction))
        })
    }

    /// Deletes a session with everything it owns (events, state, idempotency keys, blob
    /// references).
    ///
    /// # Errors
    /// `NotFound`; `Conflict` when other sessions are forks of it (their history reads
    /// its events): delete those first.
    pub fn delete_session(&self, tenant: &str, identity: &str, session: &str) -> Result<Receipt> {
        validate::id("identity", identity)?;
        validate::id("session", session)?;
        let prefix = keys::session_prefix(tenant, identity, session);
        self.commit_removal(&prefix, |tx| {
            load_tenant(tx.view(), tenant)?;
            let dir_key = keys::session_dir(tenant, identity, session);
            let record: SessionRecord =
                codec::get(tx.view(), Space::Data, &dir_key)?.ok_or_else(|| Error::not_found("session", session))?;
            if record.fork_children > 0 {
                return Err(Error::Conflict(format!(
                    "session {session:?} has {} fork(s) that read its events; delete them first",
                    record.fork_children
                )));
            }
            let mut receipt = Receipt {
                tenant: tenant.into(),
                identity: identity.into(),
                session: Some(session.into()),
                sessions: 1,
                ..Receipt::default()
            };
            let mut ledger = BlobLedger::new(tenant);
            remove_range(tx, tenant, &prefix, &mut receipt, Some(&mut ledger))?;
            receipt.blobs_deleted += ledger.flush(&mut tx.batch);
            tx.batch.delete(Space::Data, dir_key);
            if let Some(parent) = &record.parent {
                let parent_key = keys::session_dir(tenant, identity, parent);
                let mut parent_record: SessionRecord = codec::get(tx.view(), Space::Data, &parent_key)?
                    .ok_or_else(|| Error::corruption(&parent_key, "parent of a fork is missing"))?;
                parent_record.fork_children = parent_record.fork_children.saturating_sub(1);
                codec::put(&mut tx.batch, Space::Data, parent_key, &parent_record);
            }
            let redaction =
                redact_changelog(tx, |c| c.tenant == tenant && c.identity == identity && c.session == session)?;
            tx.record_change(ChangeOp::SessionDeleted, tenant, identity, session);
            Ok((receipt, redaction))
        })
    }

    /// Compacts the whole store now (maintenance and benchmarks): deleted bytes leave the
    /// disk and reads touch fewer files. Blocks until done; can take long on a large store.
    pub fn compact_storage(&self) -> Result<()> {
        for space in Space::ALL {
            self.inner.store.compact_range(space, &[], None)?;
        }
        Ok(())
    }

    /// Commits a removal of what lies under `prefix`: `body` builds it and returns its
    /// receipt and what it redacted of the changelog. Then asks the backend to drop the
    /// bytes it deleted or rewrote (failure leaves them to normal compaction; the data is
    /// unreadable either way), and completes the receipt.
    pub(crate) fn commit_removal(
        &self,
        prefix: &[u8],
        body: impl FnOnce(&mut Tx<'_>) -> Result<(Receipt, Redaction)>,
    ) -> Result<Receipt> {
        let ((receipt, redaction), seq) = self.inner.commit(body)?;
        let end = keys::prefix_end(prefix);
        let _ = self.inner.store.compact_range(Space::Data, prefix, end.as_deref());
        if let Some((first, end)) = &redaction.span {
            let _ = self.inner.store.compact_range(Space::Log, first, Some(end));
        }
        Ok(Receipt { change_seq: seq, changelog_entries: redaction.entries, ..receipt })
    }
}
