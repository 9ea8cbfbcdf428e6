//! What the admin operations take and report: `dump` and `restore_dump`, `verify`,
//! `inspect` and the derived indexes' figures.
//! Shared by the library, the server and the client.

use crate::model::EventKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One damaged or inconsistent record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Problem {
    pub space: String,
    /// The key, rendered (strings as text, numbers in decimal, bytes in hex).
    pub key: String,
    pub reason: String,
}

/// What `Engram::verify` found (every stored value checked).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct VerifyReport {
    pub values_checked: u64,
    /// Records checked, by kind.
    pub by_kind: BTreeMap<String, u64>,
    pub problems: Vec<Problem>,
    /// Whether the indexes were checked against storage (they are unless indexing is off).
    #[serde(default)]
    pub index_checked: bool,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Counts of one tenant or one identity.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Counts {
    pub sessions: u64,
    pub events: u64,
    /// Events by kind name.
    pub events_by_kind: BTreeMap<String, u64>,
    pub memory_versions: u64,
    pub state_docs: u64,
    /// Stored bytes (keys and values, before compression).
    pub bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TenantReport {
    pub name: String,
    pub identities: u64,
    pub blobs: u64,
    pub blob_bytes: u64,
    #[serde(flatten)]
    pub counts: Counts,
    /// Per identity (by id).
    pub by_identity: BTreeMap<String, Counts>,
}

/// What `Engram::inspect` found (counted from one snapshot).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct InspectReport {
    pub format_version: u32,
    pub last_change_seq: u64,
    /// Changelog entries not yet truncated.
    pub changelog_entries: u64,
    pub api_keys: u64,
    /// Keys of no known shape, or values that do not decode (run `verify` for details).
    pub unreadable: u64,
    pub tenants: Vec<TenantReport>,
    /// The storage backend's own figures (RocksDB estimates and sizes).
    pub storage: BTreeMap<String, String>,
    /// The derived indexes (absent when indexing is off): marks, lag behind the changelog,
    /// sizes.
    pub index: Option<IndexStats>,
    /// Changes written but not yet applied to the indexes.
    pub index_lag: u64,
    /// The local embedder's persisted mark (absent if no model ever ran on this store).
    pub embedder_mark: Option<u64>,
}

/// Figures of the derived indexes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct IndexStats {
    pub marks: IndexMarks,
    /// Full rebuilds from storage since open.
    pub rebuilds: u64,
    /// The last error of the applier that it retries (reading storage), cleared when a
    /// step or rebuild gets through.
    pub failure: Option<String>,
    /// Set when writing or syncing an index file failed: the applier stopped until the
    /// store is reopened or reindexed (the library's `Error::IndexPoisoned`).
    pub poisoned: Option<String>,
    /// Documents in the committed full-text index.
    pub text_docs: u64,
    pub vectors: VectorStats,
}

/// The applied marks (changelog sequences).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct IndexMarks {
    /// Every change up to here is in both indexes (in memory).
    pub applied: u64,
    /// Every change up to here is searchable by text (committed).
    pub text_visible: u64,
    /// The mark in the vector snapshot on disk.
    pub vector_saved: u64,
    /// Changelog entries below this have been removed.
    pub truncated_below: u64,
}

/// Figures of the vector index.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct VectorStats {
    pub points: u64,
    pub tombstones: u64,
    pub graphs: u64,
    pub graph_points: u64,
}

/// What to dump. Empty fields select everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DumpFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Only this session's records (its identity's own records, like memories, are left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Only events of these kinds (other records are kept).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<EventKind>,
    /// Only events with `timestamp_ms` in `[from_ms, to_ms)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_ms: Option<i64>,
    /// Leave embeddings out (a restore then has no vectors).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_vectors: bool,
    /// Leave the blobs (texts over 16 KiB) out: events keep their blob reference. For
    /// looking at; such a dump cannot be restored.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_blobs: bool,
}

/// How many records of each type a dump wrote or a restore read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DumpStats {
    pub records: u64,
    pub by_type: BTreeMap<String, u64>,
}

impl DumpStats {
    /// Counts one record of type `kind`.
    pub fn count(&mut self, kind: &str) {
        self.records += 1;
        *self.by_type.entry(kind.to_string()).or_default() += 1;
    }
}
