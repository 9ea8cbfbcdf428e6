//! Long-term memories of an identity, bi-temporal: an update supersedes the current version
//! (which moves to the history with its `valid_to_ms` set) without erasing it; a delete
//! closes the last version and marks it deleted.

use crate::codec;
use crate::db::{Engram, Tx};
use crate::directory::{check_list, ensure_identity, list_dir};
use crate::error::{Error, Result};
use crate::tenants::{load_tenant, tenant_metric};
use engram_core::keys;
use engram_core::model::{ChangeOp, EventRef, ListQuery, Memory, MemoryKind, NewMemory, Page};
use engram_core::records::{EventRefRecord, MemoryRecord, TenantRecord, float_bytes};
use engram_core::validate;
use engram_storage::{Direction, ReadView, Space};

/// Largest memory text, in bytes.
pub const MAX_MEMORY_TEXT_BYTES: usize = 64 * 1024;
/// Most event references on one memory.
pub const MAX_MEMORY_SOURCES: usize = 256;

pub(crate) fn to_memory(key: &[u8], r: MemoryRecord) -> Result<Memory> {
    let kind = MemoryKind::from_i32(r.kind)
        .ok_or_else(|| Error::corruption(key, format!("unknown memory kind {}", r.kind)))?;
    Ok(Memory {
        metadata: codec::json_map(key, &r.metadata_json)?,
        id: r.id,
        version: r.version,
        kind,
        text: r.text,
        embedding: codec::embedding(key, &r.embedding)?,
        importance: r.importance,
        valid_from_ms: r.valid_from_ms,
        valid_to_ms: r.valid_to_ms,
        recorded_at_ms: r.recorded_at_ms,
        sources: r.sources.into_iter().map(|s| EventRef { session: s.session, seq: s.seq }).collect(),
        deleted: r.deleted,
    })
}

/// The fields of a new version, checked; `previous` supplies what `m` leaves out.
fn build(
    m: NewMemory,
    previous: Option<&MemoryRecord>,
    tenant: &mut TenantRecord,
    now_ms: i64,
) -> Result<(MemoryRecord, bool)> {
    if m.text.is_empty() {
        return Err(Error::invalid("text", "must not be empty"));
    }
    validate::len("text", m.text.len(), MAX_MEMORY_TEXT_BYTES)?;
    let importance = m.importance.or(previous.map(|p| p.importance)).unwrap_or(0.5);
    if !(0.0..=1.0).contains(&importance) {
        return Err(Error::invalid("importance", format!("is {importance}; it must be in [0, 1]")));
    }
    let metadata_json = match (&m.metadata, previous) {
        (Some(map), _) => validate::metadata("metadata", map)?,
        (None, Some(p)) => p.metadata_json.clone(),
        (None, None) => String::new(),
    };
    let valid_from_ms = m.valid_from_ms.unwrap_or(now_ms);
    if m.valid_to_ms.is_some_and(|to| to <= valid_from_ms) {
        return Err(Error::invalid("valid_to_ms", "must be after valid_from_ms"));
    }
    if m.sources.len() > MAX_MEMORY_SOURCES {
        return Err(Error::invalid("sources", format!("holds {}; the limit is {MAX_MEMORY_SOURCES}", m.sources.len())));
    }
    for (i, s) in m.sources.iter().enumerate() {
        validate::id(&format!("sources[{i}].session"), &s.session)?;
    }
    let mut fixed_dim = false;
    if let Some(v) = &m.embedding {
        let dim = (tenant.vector_dim > 0).then_some(tenant.vector_dim);
        validate::vector("embedding", v, dim, tenant_metric(tenant))?;
        if dim.is_none() {
            tenant.vector_dim = v.len() as u32;
            fixed_dim = true;
        }
    }
    let kind = m.kind.map(|k| k as i32).or(previous.map(|p| p.kind)).unwrap_or(MemoryKind::Fact as i32);
    let sources = if m.sources.is_empty() {
        previous.map(|p| p.sources.clone()).unwrap_or_default()
    } else {
        m.sources.into_iter().map(|s| EventRefRecord { session: s.session, seq: s.seq }).collect()
    };
    let record = MemoryRecord {
        id: String::new(),
        version: 0,
        kind,
        text: m.text,
        embedding: m.embedding.as_deref().map(float_bytes).unwrap_or_default(),
        metadata_json,
        importance,
        valid_from_ms,
        valid_to_ms: m.valid_to_ms,
        recorded_at_ms: now_ms,
        sources,
        deleted: false,
        change_seq: 0,
        embedding_derived: false,
    };
    Ok((record, fixed_dim))
}

/// The highest version in a memory's history (0 when it has none).
fn last_history_version(view: &dyn ReadView, tenant: &str, identity: &str, id: &str) -> Result<u64> {
    let prefix = keys::memory_history_prefix(tenant, identity, id);
    match codec::scan_prefix::<MemoryRecord>(view, Space::Data, &prefix, Direction::Reverse).next() {
        Some(entry) => Ok(entry?.1.version),
        None => Ok(0),
    }
}

/// Moves the current version to the history, closing its validity.
fn retire(tx: &mut Tx<'_>, tenant: &str, identity: &str, mut current: MemoryRecord, deleted: bool) -> MemoryRecord {
    current.valid_to_ms = Some(current.valid_to_ms.map_or(tx.now_ms, |t| t.min(tx.now_ms)));
    current.deleted = deleted;
    let key = keys::memory_history(tenant, identity, &current.id, current.version);
    codec::put(&mut tx.batch, Space::Data, key, &current);
    current
}

impl Engram {
    /// Stores a new memory of an identity (created if needed). Without an id, one is
    /// assigned. Memories need no vector; when one is given it is checked against the
    /// tenant's dimension (the first vector fixes it).
    ///
    /// # Errors
    /// `AlreadyExists` when the id is in use (use [`Engram::update_memory`]),
    /// `InvalidArgument` naming the field.
    pub fn put_memory(&self, tenant: &str, identity: &str, memory: NewMemory) -> Result<Memory> {
        validate::id("identity", identity)?;
        if let Some(id) = &memory.id {
            validate::id("id", id)?;
        }
        let (record, _) = self.inner.commit(|tx| {
            let mut tenant_record = load_tenant(tx.view(), tenant)?;
            let id = memory.id.clone().unwrap_or_else(|| format!("mem_{:016x}", tx.change_seq));
            let key = keys::memory(tenant, identity, &id);
            if tx.view().get(Space::Data, &key)?.is_some() {
                return Err(Error::AlreadyExists { what: "memory", id });
            }
            let (mut record, fixed_dim) = build(memory, None, &mut tenant_record, tx.now_ms)?;
            if fixed_dim {
                codec::put(&mut tx.batch, Space::Meta, keys::meta::tenant(tenant), &tenant_record);
            }
            ensure_identity(tx, tenant, identity)?;
            record.version = last_history_version(tx.view(), tenant, identity, &id)? + 1;
            record.id = id.clone();
            record.change_seq = tx.change_seq;
            codec::put(&mut tx.batch, Space::Data, key, &record);
            let change = tx.record_change(ChangeOp::MemoryPut, tenant, identity, "");
            change.key = id;
            change.seqs = vec![record.version];
            Ok(record)
        })?;
        to_memory(&[], record)
    }

    /// Supersedes memory `id` with a new version. The old version stays readable in
    /// [`Engram::memory_history`] with `valid_to_ms` set. Fields `memory` leaves out (kind,
    /// metadata, importance, sources) carry over; the embedding does not (the text changed).
    pub fn update_memory(&self, tenant: &str, identity: &str, id: &str, memory: NewMemory) -> Result<Memory> {
        validate::id("identity", identity)?;
        validate::id("id", id)?;
        if memory.id.as_deref().is_some_and(|given| given != id) {
            return Err(Error::invalid("id", "differs from the memory being updated"));
        }
        let (record, _) = self.inner.commit(|tx| {
            let mut tenant_record = load_tenant(tx.view(), tenant)?;
            let key = keys::memory(tenant, identity, id);
            let current: MemoryRecord =
                codec::get(tx.view(), Space::Data, &key)?.ok_or_else(|| Error::not_found("memory", id))?;
            let (mut record, fixed_dim) = build(memory, Some(&current), &mut tenant_record, tx.now_ms)?;
            if fixed_dim {
                codec::put(&mut tx.batch, Space::Meta, keys::meta::tenant(tenant), &tenant_record);
            }
            record.id = id.to_string();
            record.version = current.version + 1;
            record.change_seq = tx.change_seq;
            retire(tx, tenant, identity, current, false);
            codec::put(&mut tx.batch, Space::Data, key, &record);
            let change = tx.record_change(ChangeOp::MemoryPut, tenant, identity, "");
            change.key = id.to_string();
            change.seqs = vec![record.version];
            Ok(record)
        })?;
        to_memory(&[], record)
    }

    /// Deletes memory `id`: it is no longer current; its history keeps the closed last
    /// version marked deleted (forget the identity to erase everything). Returns that version.
    pub fn delete_memory(&self, tenant: &str, identity: &str, id: &str) -> Result<Memory> {
        validate::id("identity", identity)?;
        validate::id("id", id)?;
        let (record, _) = self.inner.commit(|tx| {
            load_tenant(tx.view(), tenant)?;
            let key = keys::memory(tenant, identity, id);
            let current: MemoryRecord =
                codec::get(tx.view(), Space::Data, &key)?.ok_or_else(|| Error::not_found("memory", id))?;
            tx.batch.delete(Space::Data, key);
            let closed = retire(tx, tenant, identity, current, true);
            let change = tx.record_change(ChangeOp::MemoryDeleted, tenant, identity, "");
            change.key = id.to_string();
            change.seqs = vec![closed.version];
            Ok(closed)
        })?;
        to_memory(&[], record)
    }

    /// The current version of memory `id`.
    pub fn get_memory(&self, tenant: &str, identity: &str, id: &str) -> Result<Memory> {
        validate::id("identity", identity)?;
        validate::id("id", id)?;
        load_tenant(&*self.inner.store, tenant)?;
        let key = keys::memory(tenant, identity, id);
        let record =
            codec::get(&*self.inner.store, Space::Data, &key)?.ok_or_else(|| Error::not_found("memory", id))?;
        to_memory(&key, record)
    }

    /// Current memories of an identity in id order, a page at a time.
    pub fn list_memories(&self, tenant: &str, identity: &str, query: &ListQuery) -> Result<Page<Memory>> {
        validate::id("identity", identity)?;
        check_list(query)?;
        let view = &*self.inner.store;
        load_tenant(view, tenant)?;
        list_dir(view, Space::Data, &keys::memories_prefix(tenant, identity), query, to_memory)
    }

    /// Every version of memory `id`, oldest first (the current one last, if any).
    ///
    /// # Errors
    /// `NotFound` when the memory never existed (or its identity was forgotten).
    pub fn memory_history(&self, tenant: &str, identity: &str, id: &str) -> Result<Vec<Memory>> {
        validate::id("identity", identity)?;
        validate::id("id", id)?;
        let snapshot = self.inner.store.snapshot();
        let view: &dyn ReadView = &*snapshot;
        load_tenant(view, tenant)?;
        let prefix = keys::memory_history_prefix(tenant, identity, id);
        let mut versions = codec::scan_prefix::<MemoryRecord>(view, Space::Data, &prefix, Direction::Forward)
            .map(|e| e.and_then(|(k, r)| to_memory(&k, r)))
            .collect::<Result<Vec<_>>>()?;
        let key = keys::memory(tenant, identity, id);
        if let Some(current) = codec::get::<MemoryRecord>(view, Space::Data, &key)? {
            versions.push(to_memory(&key, current)?);
        }
        if versions.is_empty() {
            return Err(Error::not_found("memory", id));
        }
        Ok(versions)
    }
}
