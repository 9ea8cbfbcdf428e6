//! `inspect`: what a store holds, counted from one snapshot (a full scan of the data).

use crate::db::Engram;
use crate::error::{Error, Result};
use engram_core::admin::{Counts, InspectReport, TenantReport};
use engram_core::keys::{self, KeyKind};
use engram_core::model::EventKind;
use engram_core::records::{EventRecord, FORMAT_VERSION, FormatRecord};
use engram_storage::{Direction, Space, frame};
use std::collections::BTreeMap;

impl Engram {
    /// Counts everything the store holds, per tenant, identity and event kind.
    pub fn inspect(&self) -> Result<InspectReport> {
        let snapshot = self.inner.store.snapshot();
        let mut report = InspectReport {
            last_change_seq: self.last_change_seq(),
            storage: self.storage_properties().into_iter().collect(),
            ..InspectReport::default()
        };
        for entry in snapshot.scan(Space::Meta, &[], None, Direction::Forward) {
            let (key, value) = entry.map_err(Error::from)?;
            match keys::classify_meta(&key) {
                Ok(KeyKind::Format) => {
                    let f: FormatRecord = frame::decode(&value).map_err(|e| Error::corruption(&key, e))?;
                    report.format_version = f.version;
                }
                Ok(KeyKind::Tenant) => {
                    let mut r = keys::KeyReader::new(&key);
                    r.tag().map_err(|e| Error::corruption(&key, e))?;
                    let name = r.str().map_err(|e| Error::corruption(&key, e))?;
                    report.tenants.push(TenantReport { name, ..TenantReport::default() });
                }
                Ok(KeyKind::ApiKey) => report.api_keys += 1,
                Ok(KeyKind::LastChangeSeq) if key == keys::meta::EMBEDDER_MARK => {
                    let r: engram_core::records::SeqRecord =
                        frame::decode(&value).map_err(|e| Error::corruption(&key, e))?;
                    report.embedder_mark = Some(r.seq);
                }
                _ => {}
            }
        }
        if report.format_version == 0 {
            report.format_version = FORMAT_VERSION;
        }
        report.changelog_entries = snapshot.scan(Space::Log, &[], None, Direction::Forward).count() as u64;
        let mut tenants: BTreeMap<String, TenantReport> =
            report.tenants.drain(..).map(|t| (t.name.clone(), t)).collect();
        for entry in snapshot.scan(Space::Data, &[], None, Direction::Forward) {
            let (key, value) = entry.map_err(Error::from)?;
            let Ok((kind, tenant)) = keys::classify_data(&key) else {
                report.unreadable += 1;
                continue;
            };
            let bytes = (key.len() + value.len()) as u64;
            let t =
                tenants.entry(tenant.clone()).or_insert_with(|| TenantReport { name: tenant, ..Default::default() });
            if kind == KeyKind::Blob {
                t.blobs += 1;
                t.blob_bytes += value.len() as u64;
                t.counts.bytes += bytes;
                continue;
            }
            let event_kind = if kind == KeyKind::Event {
                match frame::decode::<EventRecord>(&value) {
                    Ok(rec) => Some(EventKind::from_i32(rec.kind).map_or("?", EventKind::as_str)),
                    Err(_) => {
                        report.unreadable += 1;
                        Some("?")
                    }
                }
            } else {
                None
            };
            // Every other data key names its identity right after the tenant and tag.
            let mut r = keys::KeyReader::new(&key);
            r.str().map_err(|e| Error::corruption(&key, e))?;
            r.tag().map_err(|e| Error::corruption(&key, e))?;
            let identity = r.str().map_err(|e| Error::corruption(&key, e))?;
            if kind == KeyKind::IdentityDir {
                t.identities += 1;
            }
            count(&mut t.counts, kind, event_kind, bytes);
            count(t.by_identity.entry(identity).or_default(), kind, event_kind, bytes);
        }
        report.tenants = tenants.into_values().collect();
        report.index = self.inner.indexes.get().map(|i| i.stats());
        report.index_lag = report.index.as_ref().map_or(0, |i| report.last_change_seq.saturating_sub(i.marks.applied));
        Ok(report)
    }
}

/// Counts one stored record of `kind` (`event_kind`: an event's kind name) and its bytes.
fn count(counts: &mut Counts, kind: KeyKind, event_kind: Option<&str>, bytes: u64) {
    counts.bytes += bytes;
    match kind {
        KeyKind::SessionDir => counts.sessions += 1,
        KeyKind::Event => {
            counts.events += 1;
            *counts.events_by_kind.entry(event_kind.unwrap_or("?").to_string()).or_default() += 1;
        }
        KeyKind::Memory | KeyKind::MemoryHistory => counts.memory_versions += 1,
        KeyKind::SessionState | KeyKind::IdentityState => counts.state_docs += 1,
        _ => {}
    }
}
