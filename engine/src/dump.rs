//! `dump` and `restore_dump`: the store as JSON lines, and back.
//!
//! The first line is a header (`{"engram_dump": 2, "format_version", "schema", "filter"}`,
//! the schema naming each type's key and record fields);
//! each further line is one stored record: `{"type", "key": {...parts}, "record": {...}}`,
//! the record exactly as stored (its prost fields as JSON; JSON content as the strings it is
//! stored as; bytes as hex). Tenants come first, then the data space in key order, so a
//! dump of the same state is the same bytes, and `dump -> restore -> dump` is identical.
//! The last line is a trailer (`{"engram_dump_end": {"records", "crc32"}}`: the record lines
//! and the CRC32 of every byte before it), so a dump cut short or damaged is refused.
//! Not dumped: the changelog, API keys (secrets stay where they are) and the indexes (they
//! are rebuilt after a restore).

use crate::codec;
use crate::db::Engram;
use crate::error::{Error, Result};
use engram_core::admin::{DumpFilter, DumpStats};
use engram_core::keys::{self, KeyKind, KeyParts};
use engram_core::model::ChangeOp;
use engram_core::records::*;
use engram_storage::{Batch, Direction, ReadView, Space, frame};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Write};

/// The dump format this build writes. It reads this one and version 1 (the same without
/// the trailer, which it cannot check).
pub const DUMP_VERSION: u32 = 2;

/// The first dump version with a trailer.
const TRAILER_SINCE: u32 = 2;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Trailer {
    engram_dump_end: End,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct End {
    /// Record lines (all lines but the header and the trailer).
    records: u64,
    /// CRC32 of every byte before the trailer line (the header and the records, with their
    /// newlines).
    crc32: u32,
}

/// The trailer line starts so (and no record line does: those start with `{"type"`).
const TRAILER_START: &str = "{\"engram_dump_end\"";

/// A writer that keeps the CRC32 of what went through it.
struct Summed<'a> {
    out: &'a mut dyn Write,
    crc: crc32fast::Hasher,
}

impl Write for Summed<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}
/// Records written per transaction by a restore.
const RESTORE_BATCH: usize = 1000;

#[derive(Serialize, Deserialize)]
struct Header {
    engram_dump: u32,
    format_version: u32,
    /// Each type with the fields of its record and of its key.
    schema: BTreeMap<String, TypeSchema>,
    filter: DumpFilter,
}

#[derive(Serialize, Deserialize)]
struct TypeSchema {
    key: Vec<String>,
    record: Vec<String>,
}

/// The field names a record type serializes, in order.
fn fields<R: Serialize + Default>() -> Vec<String> {
    match serde_json::to_value(R::default()) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

fn schema() -> BTreeMap<String, TypeSchema> {
    let key = |parts: &[&str]| parts.iter().map(|p| p.to_string()).collect::<Vec<_>>();
    let entries: Vec<(&str, Vec<String>, Vec<String>)> = vec![
        ("tenant", key(&["tenant"]), fields::<TenantRecord>()),
        ("identity", key(&["tenant", "identity"]), fields::<IdentityRecord>()),
        ("session", key(&["tenant", "identity", "session"]), fields::<SessionRecord>()),
        ("event", key(&["tenant", "identity", "session", "seq"]), fields::<EventRecord>()),
        ("idempotency", key(&["tenant", "identity", "session", "name"]), fields::<IdempotencyRecord>()),
        ("blob_ref", key(&["tenant", "identity", "session", "sha256"]), fields::<BlobRefRecord>()),
        ("session_state", key(&["tenant", "identity", "session", "name"]), fields::<StateRecord>()),
        ("identity_state", key(&["tenant", "identity", "name"]), fields::<StateRecord>()),
        ("memory", key(&["tenant", "identity", "name"]), fields::<MemoryRecord>()),
        ("memory_version", key(&["tenant", "identity", "name", "seq"]), fields::<MemoryRecord>()),
        ("blob", key(&["tenant", "sha256"]), fields::<BlobRecord>()),
    ];
    entries.into_iter().map(|(name, key, record)| (name.to_string(), TypeSchema { key, record })).collect()
}

#[derive(Serialize, Deserialize)]
struct Line<R> {
    #[serde(rename = "type")]
    kind: String,
    key: KeyParts,
    record: R,
}

/// The dump type name of a kind of key (and its record type).
const TYPES: &[(KeyKind, &str)] = &[
    (KeyKind::Tenant, "tenant"),
    (KeyKind::IdentityDir, "identity"),
    (KeyKind::SessionDir, "session"),
    (KeyKind::Event, "event"),
    (KeyKind::Idempotency, "idempotency"),
    (KeyKind::BlobRef, "blob_ref"),
    (KeyKind::SessionState, "session_state"),
    (KeyKind::IdentityState, "identity_state"),
    (KeyKind::Memory, "memory"),
    (KeyKind::MemoryHistory, "memory_version"),
    (KeyKind::Blob, "blob"),
];

fn type_name(kind: KeyKind) -> Option<&'static str> {
    TYPES.iter().find(|(k, _)| *k == kind).map(|(_, n)| *n)
}

fn kind_of(name: &str) -> Option<KeyKind> {
    TYPES.iter().find(|(_, n)| *n == name).map(|(k, _)| *k)
}

fn io(e: impl std::fmt::Display) -> Error {
    Error::Io(e.to_string())
}

fn write_line<R: Serialize>(out: &mut dyn Write, kind: &str, key: KeyParts, record: &R) -> Result<()> {
    let line = Line { kind: kind.to_string(), key, record };
    serde_json::to_writer(&mut *out, &line).map_err(io)?;
    out.write_all(b"\n").map_err(io)
}

/// Decodes a stored value as `M` and writes it as a line.
fn dump_value<M: prost::Message + Default + Serialize>(
    out: &mut dyn Write,
    kind: &str,
    key: &[u8],
    parts: KeyParts,
    value: &[u8],
    edit: impl FnOnce(&mut M) -> Result<()>,
) -> Result<()> {
    let mut record: M = frame::decode(value).map_err(|e| Error::corruption(key, e))?;
    edit(&mut record)?;
    write_line(out, kind, parts, &record)
}

/// Whether a dump line is the trailer (the last line of a version 2 dump).
pub fn is_dump_trailer(line: &[u8]) -> bool {
    line.starts_with(TRAILER_START.as_bytes())
}

/// Checks a dump's trailer line against what came before it; the problem, if any.
fn check_trailer(line: &str, stats: &DumpStats, crc32: u32) -> std::result::Result<(), String> {
    let trailer: Trailer = serde_json::from_str(line).map_err(|e| format!("is not a dump trailer: {e}"))?;
    let End { records, crc32: expected } = trailer.engram_dump_end;
    if records != stats.records {
        return Err(format!("the trailer counts {records} records; the dump holds {}", stats.records));
    }
    if crc32 != expected {
        return Err(format!(
            "the dump does not match its trailer's CRC32 ({crc32:08x}, not {expected:08x}): it is damaged"
        ));
    }
    Ok(())
}

/// `message`, and when batches were written before it, that they were.
fn written_before(message: &str, wrote: bool) -> String {
    if wrote {
        format!("{message} (the batches of 1000 records before it were written: import into a fresh store again)")
    } else {
        format!("{message} (nothing was written)")
    }
}

/// A dump line that cannot be read (not UTF-8, or the input broke off): the input's fault.
fn unreadable(field: &str, e: std::io::Error) -> Error {
    Error::invalid(field, format!("cannot be read: {e}"))
}

impl Engram {
    /// Writes the store (or the part `filter` selects) to `out` as JSON lines, from one
    /// snapshot. Blobs are written last, those the dumped events reference.
    pub fn dump(&self, filter: &DumpFilter, out: &mut dyn Write) -> Result<DumpStats> {
        let mut summed = Summed { out, crc: crc32fast::Hasher::new() };
        let stats = self.dump_records(filter, &mut summed)?;
        let Summed { out, crc } = summed;
        let trailer = Trailer { engram_dump_end: End { records: stats.records, crc32: crc.finalize() } };
        serde_json::to_writer(&mut *out, &trailer).map_err(io)?;
        out.write_all(b"\n").map_err(io)?;
        out.flush().map_err(io)?;
        Ok(stats)
    }

    /// The header and the record lines of [`Engram::dump`].
    fn dump_records(&self, filter: &DumpFilter, out: &mut dyn Write) -> Result<DumpStats> {
        let snapshot = self.inner.store.snapshot();
        let view: &dyn ReadView = &*snapshot;
        let header = Header {
            engram_dump: DUMP_VERSION,
            format_version: FORMAT_VERSION,
            schema: schema(),
            filter: filter.clone(),
        };
        serde_json::to_writer(&mut *out, &header).map_err(io)?;
        out.write_all(b"\n").map_err(io)?;
        let mut stats = DumpStats::default();
        let tenants: Vec<TenantRecord> =
            codec::scan_prefix::<TenantRecord>(view, Space::Meta, &keys::meta::tenants_prefix(), Direction::Forward)
                .map(|e| e.map(|(_, t)| t))
                .collect::<Result<_>>()?;
        let tenants: Vec<TenantRecord> =
            tenants.into_iter().filter(|t| filter.tenant.as_ref().is_none_or(|n| *n == t.name)).collect();
        for t in &tenants {
            write_line(out, "tenant", KeyParts { tenant: t.name.clone(), ..KeyParts::default() }, t)?;
            stats.count("tenant");
        }
        let mut blobs: BTreeSet<Vec<u8>> = BTreeSet::new();
        // Blob references are counted from what is dumped, not copied: a filtered dump
        // holds some of a blob's references, and its import must count just those. Per
        // session reference key: the blob's key and the dumped events that name it (a
        // session's events come before its references in key order).
        let mut named: BTreeMap<Vec<u8>, (Vec<u8>, u64)> = BTreeMap::new();
        // Per blob key: the references dumped.
        let mut referenced: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        for t in &tenants {
            let prefix = keys::tenant_prefix(&t.name);
            let end = keys::prefix_end(&prefix);
            for entry in view.scan(Space::Data, &prefix, end.as_deref(), Direction::Forward) {
                let (key, value) = entry.map_err(Error::from)?;
                let (kind, parts) = keys::decode_data(&key).map_err(|e| Error::corruption(&key, e))?;
                let Some(name) = type_name(kind) else { continue };
                // A session filter keeps the identity's directory entry (the session needs it)
                // and leaves out its other identity-level records.
                let session_ok =
                    kind == KeyKind::IdentityDir || filter.session.as_ref().is_none_or(|s| *s == parts.session);
                if kind == KeyKind::Blob
                    || filter.identity.as_ref().is_some_and(|i| *i != parts.identity)
                    || !session_ok
                {
                    continue;
                }
                let no_vectors = filter.no_vectors;
                match kind {
                    KeyKind::IdentityDir => dump_value::<IdentityRecord>(out, name, &key, parts, &value, |_| Ok(()))?,
                    KeyKind::SessionDir => dump_value::<SessionRecord>(out, name, &key, parts, &value, |_| Ok(()))?,
                    KeyKind::Event => {
                        let mut record: EventRecord = frame::decode(&value).map_err(|e| Error::corruption(&key, e))?;
                        let kind_ok = filter.kinds.is_empty() || filter.kinds.iter().any(|k| *k as i32 == record.kind);
                        let time_ok = filter.from_ms.is_none_or(|f| record.timestamp_ms >= f)
                            && filter.to_ms.is_none_or(|t| record.timestamp_ms < t);
                        if !(kind_ok && time_ok) {
                            continue;
                        }
                        if let Some(sha) = &record.blob_sha256
                            && let Some(sha) = crate::blobs::sha_array(sha)
                        {
                            let blob = keys::blob(&t.name, &sha);
                            let reference = keys::blob_ref(&t.name, &parts.identity, &parts.session, &sha);
                            named.entry(reference).or_insert_with(|| (blob.clone(), 0)).1 += 1;
                            blobs.insert(blob);
                        }
                        if no_vectors {
                            record.embedding.clear();
                        }
                        codec::check_embedding(&key, &record.embedding)?;
                        write_line(out, name, parts, &record)?;
                    }
                    KeyKind::Idempotency => {
                        dump_value::<IdempotencyRecord>(out, name, &key, parts, &value, |_| Ok(()))?
                    }
                    KeyKind::BlobRef => {
                        let Some((blob, count)) = named.remove(&key) else { continue };
                        *referenced.entry(blob).or_default() += count;
                        dump_value::<BlobRefRecord>(out, name, &key, parts, &value, |r: &mut BlobRefRecord| {
                            r.count = count;
                            Ok(())
                        })?
                    }
                    KeyKind::SessionState | KeyKind::IdentityState => {
                        dump_value::<StateRecord>(out, name, &key, parts, &value, |_| Ok(()))?
                    }
                    KeyKind::Memory | KeyKind::MemoryHistory => {
                        dump_value::<MemoryRecord>(out, name, &key, parts, &value, |m: &mut MemoryRecord| {
                            if no_vectors {
                                m.embedding.clear();
                            }
                            codec::check_embedding(&key, &m.embedding)
                        })?
                    }
                    _ => continue,
                }
                stats.count(name);
            }
        }
        if filter.no_blobs {
            blobs.clear();
        }
        for key in blobs {
            let Some(value) = view.get(Space::Data, &key).map_err(|e| codec::with_key(&key, e))? else {
                return Err(Error::corruption(&key, "referenced blob is missing"));
            };
            let (_, parts) = keys::decode_data(&key).map_err(|e| Error::corruption(&key, e))?;
            let refcount = referenced.get(&key).copied().unwrap_or(0);
            dump_value::<BlobRecord>(out, "blob", &key, parts, &value, |b: &mut BlobRecord| {
                b.refcount = refcount;
                Ok(())
            })?;
            stats.count("blob");
        }
        Ok(stats)
    }

    /// Reads a dump written by [`Engram::dump`] into this store: every record is written as
    /// it was stored, in transactions of 1000. Tenant settings replace the store's; a data
    /// record whose key already exists is a `Conflict` (restore into a new store, or one
    /// without those items). The indexes are rebuilt at the end, also when the restore
    /// failed after writing some batches (those records stay: restore into a fresh store
    /// again rather than retrying into this one).
    ///
    /// A dump of version 2 must end with its trailer, and match it: one cut short or damaged
    /// is refused when its end is read (the batches of 1000 before that are written).
    ///
    /// # Errors
    /// `InvalidArgument` naming the line for a malformed dump, another dump version, a dump
    /// without its trailer or that does not match it;
    /// `Conflict` for a record that exists already (the batches of 1000 before the one
    /// holding it are written).
    pub fn restore_dump(&self, input: &mut dyn BufRead) -> Result<DumpStats> {
        let mut wrote = false;
        let result = self.restore_records(input, &mut wrote);
        if wrote && self.inner.indexes.get().is_some() {
            // What was written must be searchable, whether or not the rest of the dump was.
            let reindexed = self.reindex();
            if result.is_ok() {
                reindexed?;
            }
        }
        result
    }

    /// [`Engram::restore_dump`] without the rebuild; `wrote` is set once a batch is written.
    fn restore_records(&self, input: &mut dyn BufRead, wrote: &mut bool) -> Result<DumpStats> {
        let mut lines = input.lines().enumerate();
        let mut crc = crc32fast::Hasher::new();
        let header: Header = match lines.next() {
            Some((_, line)) => {
                let line = line.map_err(|e| unreadable("line 1", e))?;
                crc.update(line.as_bytes());
                crc.update(b"\n");
                serde_json::from_str(&line)
                    .map_err(|e| Error::invalid("line 1", format!("is not a dump header: {e}")))?
            }
            None => return Err(Error::invalid("line 1", "the dump is empty")),
        };
        if !(1..=DUMP_VERSION).contains(&header.engram_dump) {
            return Err(Error::invalid(
                "line 1",
                format!("dump version {}; this build reads 1 to {DUMP_VERSION}", header.engram_dump),
            ));
        }
        let with_trailer = header.engram_dump >= TRAILER_SINCE;
        let mut ended = false;
        let mut last_line = 1;
        if header.filter.no_blobs {
            return Err(Error::invalid(
                "line 1",
                "a dump without its blobs cannot be restored (large texts are missing)",
            ));
        }
        let mut stats = DumpStats::default();
        let mut pending: Vec<(Space, Vec<u8>, Vec<u8>)> = Vec::new();
        for (n, line) in lines {
            let field = format!("line {}", n + 1);
            let line = line.map_err(|e| unreadable(&field, e))?;
            last_line = n + 1;
            if ended && !line.is_empty() {
                return Err(Error::invalid(&field, "follows the dump's trailer"));
            }
            if with_trailer && line.starts_with(TRAILER_START) {
                check_trailer(&line, &stats, crc.clone().finalize())
                    .map_err(|message| Error::invalid(&field, written_before(&message, *wrote)))?;
                ended = true;
                continue;
            }
            crc.update(line.as_bytes());
            crc.update(b"\n");
            if line.is_empty() {
                continue;
            }
            let raw: Line<serde_json::Value> =
                serde_json::from_str(&line).map_err(|e| Error::invalid(&field, e.to_string()))?;
            let kind =
                kind_of(&raw.kind).ok_or_else(|| Error::invalid(&field, format!("unknown type {:?}", raw.kind)))?;
            let bad = |e: serde_json::Error| Error::invalid(&field, e.to_string());
            let (space, key, value) = match kind {
                KeyKind::Tenant => {
                    let r: TenantRecord = serde_json::from_value(raw.record).map_err(bad)?;
                    (Space::Meta, keys::meta::tenant(&r.name), frame::encode(&r))
                }
                _ => {
                    let key =
                        raw.key.encode(kind).ok_or_else(|| Error::invalid(&field, "key parts do not make a key"))?;
                    let value = match kind {
                        KeyKind::IdentityDir => {
                            frame::encode(&serde_json::from_value::<IdentityRecord>(raw.record).map_err(bad)?)
                        }
                        KeyKind::SessionDir => {
                            frame::encode(&serde_json::from_value::<SessionRecord>(raw.record).map_err(bad)?)
                        }
                        KeyKind::Event => {
                            frame::encode(&serde_json::from_value::<EventRecord>(raw.record).map_err(bad)?)
                        }
                        KeyKind::Idempotency => {
                            frame::encode(&serde_json::from_value::<IdempotencyRecord>(raw.record).map_err(bad)?)
                        }
                        KeyKind::BlobRef => {
                            frame::encode(&serde_json::from_value::<BlobRefRecord>(raw.record).map_err(bad)?)
                        }
                        KeyKind::SessionState | KeyKind::IdentityState => {
                            frame::encode(&serde_json::from_value::<StateRecord>(raw.record).map_err(bad)?)
                        }
                        KeyKind::Memory | KeyKind::MemoryHistory => {
                            frame::encode(&serde_json::from_value::<MemoryRecord>(raw.record).map_err(bad)?)
                        }
                        KeyKind::Blob => frame::encode(&serde_json::from_value::<BlobRecord>(raw.record).map_err(bad)?),
                        _ => return Err(Error::invalid(&field, format!("type {:?} is not restorable", raw.kind))),
                    };
                    (Space::Data, key, value)
                }
            };
            pending.push((space, key, value));
            stats.count(&raw.kind);
            if pending.len() >= RESTORE_BATCH {
                self.write_restored(std::mem::take(&mut pending))?;
                *wrote = true;
            }
        }
        if with_trailer && !ended {
            let message = "the dump ends before its trailer: it was cut short";
            return Err(Error::invalid(format!("line {}", last_line + 1), written_before(message, *wrote)));
        }
        if !pending.is_empty() {
            self.write_restored(pending)?;
            *wrote = true;
        }
        Ok(stats)
    }

    fn write_restored(&self, records: Vec<(Space, Vec<u8>, Vec<u8>)>) -> Result<()> {
        self.inner.commit(|tx| {
            let mut batch = Batch::new();
            for (space, key, value) in records {
                // Tenant settings replace the target's (a fresh store has its default
                // tenant already); data must not exist.
                if space == Space::Data && tx.view().get(space, &key)?.is_some() {
                    return Err(Error::Conflict(format!("{} exists already", keys::render(&key))));
                }
                batch.put(space, key, value);
            }
            tx.batch = batch;
            tx.record_change(ChangeOp::Imported, "", "", "");
            Ok(())
        })?;
        Ok(())
    }
}
