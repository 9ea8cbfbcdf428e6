//! Retention: time to live per tenant, session and event kind, and keep-last-N per session.
//!
//! Where a tenant and a session both set a limit, the stricter applies. Keep-last-N is
//! enforced in the same batch as the append that goes over it; time to live is enforced by
//! the sweep ([`Engram::sweep_retention`], run by a background thread every
//! `Options::retention_sweep_interval_ms`), and reads hide expired events before the sweep
//! gets to them. Ages count from an event's `created_at_ms` (when the store received it).

use crate::blobs::BlobLedger;
use crate::codec;
use crate::db::{Engram, Tx};
use crate::error::{Error, Result};
use engram_core::keys;
use engram_core::model::{ChangeOp, EventKind, RetentionPolicy, RetentionReport};
use engram_core::records::{EventRecord, IdentityRecord, RetentionRecord, SessionRecord, TenantRecord};
use engram_storage::{Direction, Space};

pub(crate) fn policy_to_record(field: &str, p: &RetentionPolicy) -> Result<Option<RetentionRecord>> {
    let max = i64::MAX as u64;
    if p.ttl_ms.is_some_and(|t| t == 0 || t > max) {
        return Err(Error::invalid(format!("{field}.ttl_ms"), format!("must be between 1 and {max}")));
    }
    if let Some((kind, _)) = p.kind_ttl_ms.iter().find(|(_, ttl)| **ttl > max) {
        return Err(Error::invalid(format!("{field}.kind_ttl_ms.{kind}"), format!("must be at most {max}")));
    }
    if p.keep_last == Some(0) {
        return Err(Error::invalid(format!("{field}.keep_last"), "must be at least 1"));
    }
    if let Some((kind, _)) = p.kind_ttl_ms.iter().find(|(_, ttl)| **ttl == 0) {
        return Err(Error::invalid(format!("{field}.kind_ttl_ms.{kind}"), "must be at least 1"));
    }
    if p.is_empty() {
        return Ok(None);
    }
    Ok(Some(RetentionRecord {
        ttl_ms: p.ttl_ms,
        kind_ttl_ms: p.kind_ttl_ms.iter().map(|(k, v)| (k.as_str().to_string(), *v)).collect(),
        keep_last: p.keep_last,
    }))
}

pub(crate) fn policy_from_record(r: Option<&RetentionRecord>) -> RetentionPolicy {
    let Some(r) = r else { return RetentionPolicy::default() };
    RetentionPolicy {
        ttl_ms: r.ttl_ms,
        kind_ttl_ms: r.kind_ttl_ms.iter().filter_map(|(k, v)| EventKind::parse(k).map(|k| (k, *v))).collect(),
        keep_last: r.keep_last,
    }
}

fn stricter(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The retention that applies to one session's own events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Effective {
    ttl_ms: Option<u64>,
    kind_ttl_ms: Vec<(EventKind, u64)>,
    pub(crate) keep_last: Option<u64>,
}

impl Effective {
    pub(crate) fn new(tenant: &TenantRecord, session: &SessionRecord) -> Self {
        let t = policy_from_record(tenant.retention.as_ref());
        let s = policy_from_record(session.retention.as_ref());
        let mut kind_ttl_ms = Vec::new();
        for kind in EventKind::ALL {
            if let Some(ttl) = stricter(t.kind_ttl_ms.get(kind).copied(), s.kind_ttl_ms.get(kind).copied()) {
                kind_ttl_ms.push((*kind, ttl));
            }
        }
        Effective { ttl_ms: stricter(t.ttl_ms, s.ttl_ms), kind_ttl_ms, keep_last: stricter(t.keep_last, s.keep_last) }
    }

    pub(crate) fn has_ttl(&self) -> bool {
        self.ttl_ms.is_some() || !self.kind_ttl_ms.is_empty()
    }

    pub(crate) fn is_expired(&self, event: &EventRecord, now_ms: i64) -> bool {
        self.is_expired_at(event.kind, event.created_at_ms, now_ms)
    }

    /// [`Effective::is_expired`] for an event of `kind` (its stored number) created at
    /// `created_at_ms`.
    pub(crate) fn is_expired_at(&self, kind: i32, created_at_ms: i64, now_ms: i64) -> bool {
        let kind_ttl = self.kind_ttl_ms.iter().find(|(k, _)| *k as i32 == kind).map(|(_, t)| *t);
        match stricter(self.ttl_ms, kind_ttl) {
            Some(ttl) => i128::from(now_ms) - i128::from(created_at_ms) >= i128::from(ttl),
            None => false,
        }
    }
}

/// Removes one stored event of a session inside `tx`: its key, and its blob reference.
pub(crate) fn remove_event(
    tx: &mut Tx<'_>,
    ledger: &mut BlobLedger,
    identity: &str,
    session: &mut SessionRecord,
    event: &EventRecord,
) -> Result<()> {
    let tenant = ledger.tenant().to_string();
    tx.batch.delete(Space::Data, keys::event(&tenant, identity, &session.id, event.seq));
    if let Some(sha) = &event.blob_sha256 {
        let sha = crate::blobs::sha_array(sha).ok_or_else(|| {
            Error::corruption(&keys::event(&tenant, identity, &session.id, event.seq), "blob hash is not 32 bytes")
        })?;
        ledger.release(tx.view(), identity, &session.id, &sha)?;
    }
    session.stored_events = session.stored_events.saturating_sub(1);
    Ok(())
}

/// Removes the oldest stored events of `session` beyond `keep_last`, counting `pending`
/// (events this transaction is adding, oldest first, already in the batch) as newest.
/// Returns the removed sequence numbers.
pub(crate) fn trim_keep_last(
    tx: &mut Tx<'_>,
    ledger: &mut BlobLedger,
    identity: &str,
    session: &mut SessionRecord,
    keep_last: u64,
    pending: &[EventRecord],
) -> Result<Vec<u64>> {
    let total = session.stored_events;
    if total <= keep_last {
        return Ok(Vec::new());
    }
    let mut excess = total - keep_last;
    let stored_before = total - pending.len() as u64;
    let mut victims = Vec::new();
    if stored_before > 0 {
        let prefix = keys::events_prefix(ledger.tenant(), identity, &session.id);
        for entry in codec::scan_prefix::<EventRecord>(tx.view(), Space::Data, &prefix, Direction::Forward) {
            if victims.len() as u64 >= excess.min(stored_before) {
                break;
            }
            victims.push(entry?.1);
        }
    }
    excess -= victims.len() as u64;
    victims.extend(pending.iter().take(excess as usize).cloned());
    let mut removed = Vec::with_capacity(victims.len());
    for event in &victims {
        remove_event(tx, ledger, identity, session, event)?;
        removed.push(event.seq);
    }
    Ok(removed)
}

impl Engram {
    /// Removes every event past its time to live, and every event beyond its session's
    /// keep-last-N, in all tenants. One session is one atomic write; writers are held up
    /// for one session at a time. The background worker calls this periodically.
    pub fn sweep_retention(&self) -> Result<RetentionReport> {
        let mut report = RetentionReport::default();
        for (_, tenant) in codec::scan_prefix::<TenantRecord>(
            &*self.inner.store,
            Space::Meta,
            &keys::meta::tenants_prefix(),
            Direction::Forward,
        )
        .collect::<Result<Vec<_>>>()?
        {
            let identities: Vec<(Vec<u8>, IdentityRecord)> = codec::scan_prefix(
                &*self.inner.store,
                Space::Data,
                &keys::identity_dir_prefix(&tenant.name),
                Direction::Forward,
            )
            .collect::<Result<_>>()?;
            for (_, identity) in identities {
                let sessions: Vec<(Vec<u8>, SessionRecord)> = codec::scan_prefix(
                    &*self.inner.store,
                    Space::Data,
                    &keys::session_dir_prefix(&tenant.name, &identity.id),
                    Direction::Forward,
                )
                .collect::<Result<_>>()?;
                for (_, session) in sessions {
                    report.sessions_scanned += 1;
                    let effective = Effective::new(&tenant, &session);
                    if !effective.has_ttl() && effective.keep_last.is_none_or(|n| session.stored_events <= n) {
                        continue;
                    }
                    crate::failpoint::hit("retention-sweep");
                    let ((removed, blobs), _) =
                        self.inner.commit(|tx| sweep_session(tx, &tenant.name, &identity.id, &session.id))?;
                    report.events_removed += removed;
                    report.blobs_deleted += blobs;
                }
            }
        }
        Ok(report)
    }
}

/// Applies retention to one session inside `tx`; returns (events removed, blobs deleted).
fn sweep_session(tx: &mut Tx<'_>, tenant_name: &str, identity: &str, session_id: &str) -> Result<(u64, u64)> {
    // Re-read under the commit lock: the session may have changed or gone since listed.
    let Some(tenant) = codec::get::<TenantRecord>(tx.view(), Space::Meta, &keys::meta::tenant(tenant_name))? else {
        return Ok((0, 0));
    };
    let dir_key = keys::session_dir(tenant_name, identity, session_id);
    let Some(mut session) = codec::get::<SessionRecord>(tx.view(), Space::Data, &dir_key)? else {
        return Ok((0, 0));
    };
    let effective = Effective::new(&tenant, &session);
    let mut ledger = BlobLedger::new(tenant_name);
    let mut removed = Vec::new();
    if effective.has_ttl() {
        let prefix = keys::events_prefix(tenant_name, identity, session_id);
        let expired: Vec<EventRecord> =
            codec::scan_prefix::<EventRecord>(tx.view(), Space::Data, &prefix, Direction::Forward)
                .filter(|e| e.as_ref().map_or(true, |(_, ev)| effective.is_expired(ev, tx.now_ms)))
                .map(|e| e.map(|(_, ev)| ev))
                .collect::<Result<_>>()?;
        for event in &expired {
            remove_event(tx, &mut ledger, identity, &mut session, event)?;
            removed.push(event.seq);
        }
    }
    if let Some(n) = effective.keep_last {
        // Events removed above are still in storage until this batch lands: skip them.
        if session.stored_events > n {
            let prefix = keys::events_prefix(tenant_name, identity, session_id);
            let expired: std::collections::HashSet<u64> = removed.iter().copied().collect();
            let excess = session.stored_events - n;
            let candidates: Vec<EventRecord> =
                codec::scan_prefix::<EventRecord>(tx.view(), Space::Data, &prefix, Direction::Forward)
                    .filter(|e| e.as_ref().map_or(true, |(_, ev)| !expired.contains(&ev.seq)))
                    .take(excess as usize)
                    .map(|e| e.map(|(_, ev)| ev))
                    .collect::<Result<_>>()?;
            for event in &candidates {
                remove_event(tx, &mut ledger, identity, &mut session, event)?;
                removed.push(event.seq);
            }
        }
    }
    if removed.is_empty() {
        return Ok((0, 0));
    }
    let blobs_deleted = ledger.flush(&mut tx.batch);
    session.updated_at_ms = tx.now_ms;
    codec::put(&mut tx.batch, Space::Data, dir_key, &session);
    let count = removed.len() as u64;
    tx.record_change(ChangeOp::EventsRemoved, tenant_name, identity, session_id).removed = removed;
    Ok((count, blobs_deleted))
}
