//! The public domain types: what a caller gives and gets back. They are plain data with
//! serde derives (the wire format itself, names and envelopes, belongs to the server).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A JSON object (metadata, filters).
pub type JsonMap = serde_json::Map<String, serde_json::Value>;

macro_rules! named_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $value:literal => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
        #[serde(rename_all = "snake_case")]
        #[non_exhaustive]
        pub enum $name { $($variant = $value),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some($name::$variant),)+ _ => None }
            }

            pub fn from_i32(v: i32) -> Option<Self> {
                match v { $($value => Some($name::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

named_enum!(
    /// What an event is.
    EventKind {
        Message = 1 => "message",
        ToolCall = 2 => "tool_call",
        ToolResult = 3 => "tool_result",
        ApprovalRequest = 4 => "approval_request",
        ApprovalDecision = 5 => "approval_decision",
        Custom = 6 => "custom",
    }
);

named_enum!(
    /// Who speaks in a message event.
    Role {
        System = 1 => "system",
        Developer = 2 => "developer",
        User = 3 => "user",
        Assistant = 4 => "assistant",
        Tool = 5 => "tool",
    }
);

named_enum!(
    /// What a long-term memory records.
    MemoryKind {
        Fact = 1 => "fact",
        Preference = 2 => "preference",
        Summary = 3 => "summary",
        Episode = 4 => "episode",
        Custom = 5 => "custom",
    }
);

named_enum!(
    /// How vectors of a tenant are compared.
    Metric {
        Cosine = 1 => "cosine",
        Dot = 2 => "dot",
        L2 = 3 => "l2",
    }
);

/// An event to append. `text` or `data` (or both) must be present.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEvent {
    pub kind: Option<EventKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<Vec<f32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<JsonMap>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_count: Option<u32>,
    /// When it happened, in ms since the Unix epoch; the store's clock when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_ms: Option<i64>,
    /// Tool name, for tool calls and results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Pairs a tool call with its result, an approval request with its decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
}

impl NewEvent {
    /// A message turn.
    pub fn message(role: Role, text: impl Into<String>) -> Self {
        NewEvent { kind: Some(EventKind::Message), role: Some(role), text: Some(text.into()), ..NewEvent::default() }
    }

    /// An event of `kind` carrying JSON `data`.
    pub fn with_data(kind: EventKind, data: serde_json::Value) -> Self {
        NewEvent { kind: Some(kind), data: Some(data), ..NewEvent::default() }
    }
}

/// A reference to a content-addressed blob holding a large text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct BlobRef {
    /// Lowercase hex sha256 of the content.
    pub sha256: String,
    pub len_bytes: u64,
}

/// A stored event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Event {
    /// The session that physically holds it (an ancestor, for a fork's inherited prefix).
    pub session: String,
    pub seq: u64,
    pub kind: EventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<Vec<f32>>,
    #[serde(default, skip_serializing_if = "JsonMap::is_empty")]
    pub metadata: JsonMap,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_count: Option<u32>,
    pub timestamp_ms: i64,
    pub created_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    /// Set when the text is stored as a blob (the text itself is still returned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<BlobRef>,
}

/// Options of one append call.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AppendOptions {
    /// The head sequence the caller expects the session to have (0: empty or new). A
    /// mismatch is a conflict that writes nothing.
    pub expected_head: Option<u64>,
    /// A retried call with the same key returns the first call's sequence numbers and
    /// writes nothing.
    pub idempotency_key: Option<String>,
}

/// What an append assigned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AppendResult {
    pub first_seq: u64,
    pub last_seq: u64,
    /// True when an earlier call with the same idempotency key had already written them.
    pub deduplicated: bool,
    /// The changelog sequence of the write (for read-your-writes).
    pub change_seq: u64,
}

impl AppendResult {
    pub fn seqs(&self) -> std::ops::RangeInclusive<u64> {
        self.first_seq..=self.last_seq
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    #[default]
    Asc,
    Desc,
}

/// A history read: a range of a session's events, in either order, one page at a time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HistoryQuery {
    /// Only events with `seq > after`.
    pub after: Option<u64>,
    /// Only events with `seq < before`.
    pub before: Option<u64>,
    pub limit: usize,
    pub order: Order,
    /// Time travel: the session as it was when its head was `as_of`.
    pub as_of: Option<u64>,
    /// Only these kinds (all when empty).
    pub kinds: Vec<EventKind>,
    /// Only these roles (all when empty).
    pub roles: Vec<Role>,
}

impl Default for HistoryQuery {
    fn default() -> Self {
        HistoryQuery {
            after: None,
            before: None,
            limit: 100,
            order: Order::Asc,
            as_of: None,
            kinds: Vec::new(),
            roles: Vec::new(),
        }
    }
}

impl HistoryQuery {
    /// The newest `n` events, newest first.
    pub fn last(n: usize) -> Self {
        HistoryQuery { limit: n, order: Order::Desc, ..HistoryQuery::default() }
    }
}

/// One page of history. `next_cursor` is the `after` (ascending) or `before` (descending)
/// of the next page, or `None` when this page is the last.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HistoryPage {
    pub events: Vec<Event>,
    pub next_cursor: Option<u64>,
    /// The session head the page was read at.
    pub head_seq: u64,
}

/// Retention of events: a time to live (overall and per kind) and a cap on the number kept.
/// Where a tenant and a session both set one, the stricter applies.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RetentionPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub kind_ttl_ms: BTreeMap<EventKind, u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u64>,
}

impl RetentionPolicy {
    pub fn is_empty(&self) -> bool {
        self.ttl_ms.is_none() && self.kind_ttl_ms.is_empty() && self.keep_last.is_none()
    }
}

/// Where a tenant's vectors come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EmbedderKind {
    /// The caller brings its own vectors.
    #[default]
    None,
    /// The store's local model derives a vector for every text written without one, off the
    /// write path, and embeds text-only search queries.
    Local,
}

/// A tenant's settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TenantConfig {
    /// Embedding dimension; when absent, the first vector written fixes it.
    pub vector_dim: Option<u32>,
    /// Cosine when absent.
    pub metric: Option<Metric>,
    #[serde(default)]
    pub retention: RetentionPolicy,
    #[serde(default)]
    pub metadata: JsonMap,
    /// `local` needs a store opened with a local embedder (it fixes the dimension to the
    /// model's).
    #[serde(default)]
    pub embedder: EmbedderKind,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Tenant {
    pub name: String,
    pub created_at_ms: i64,
    pub vector_dim: Option<u32>,
    pub metric: Metric,
    pub retention: RetentionPolicy,
    pub metadata: JsonMap,
    #[serde(default)]
    pub embedder: EmbedderKind,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Identity {
    pub id: String,
    pub created_at_ms: i64,
    pub metadata: JsonMap,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Session {
    pub identity: String,
    pub id: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub metadata: JsonMap,
    /// The last sequence number assigned (0 for an empty session).
    pub head_seq: u64,
    /// For a fork: the session and sequence number it was forked from.
    pub forked_from: Option<(String, u64)>,
    pub retention: RetentionPolicy,
}

/// Settings of a new session.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SessionConfig {
    #[serde(default)]
    pub metadata: JsonMap,
    #[serde(default)]
    pub retention: RetentionPolicy,
}

/// A list call: cursor pagination and metadata equality filters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ListQuery {
    /// Only items whose id sorts after this one (the previous page's `next_cursor`).
    pub after: Option<String>,
    pub limit: usize,
    /// Each key must be present in the item's metadata with exactly this value.
    pub metadata: JsonMap,
}

impl Default for ListQuery {
    fn default() -> Self {
        ListQuery { after: None, limit: 100, metadata: JsonMap::new() }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// A versioned JSON document (task state, checkpoint, pending approvals...).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StateDoc {
    pub key: String,
    pub value: serde_json::Value,
    /// Starts at 1 and grows by one with every write.
    pub version: u64,
    pub updated_at_ms: i64,
}

/// Where a state document lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateScope<'a> {
    Identity { identity: &'a str },
    Session { identity: &'a str, session: &'a str },
}

/// A precondition on a state write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum StatePrecondition {
    /// Write whatever is there.
    #[default]
    None,
    /// Write only if the document does not exist.
    Absent,
    /// Write only if the document's current version is this one.
    Version(u64),
}

/// A reference from a memory to the event it came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EventRef {
    pub session: String,
    pub seq: u64,
}

/// A memory to store.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMemory {
    /// The id; a new one is assigned when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub kind: Option<MemoryKind>,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<Vec<f32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<JsonMap>,
    /// In [0, 1]; 0.5 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub importance: Option<f32>,
    /// When the fact became true, ms since the epoch; now when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_from_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_to_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<EventRef>,
}

impl NewMemory {
    pub fn fact(text: impl Into<String>) -> Self {
        NewMemory { kind: Some(MemoryKind::Fact), text: text.into(), ..NewMemory::default() }
    }
}

/// One version of a memory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Memory {
    pub id: String,
    pub version: u64,
    pub kind: MemoryKind,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<Vec<f32>>,
    #[serde(default, skip_serializing_if = "JsonMap::is_empty")]
    pub metadata: JsonMap,
    pub importance: f32,
    pub valid_from_ms: i64,
    /// Set when the version was superseded or deleted, or given by the writer.
    pub valid_to_ms: Option<i64>,
    pub recorded_at_ms: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<EventRef>,
    /// True on the last version of a deleted memory (seen only in its history).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

/// What a forget or delete removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Receipt {
    pub tenant: String,
    pub identity: String,
    /// The session, for a session delete.
    pub session: Option<String>,
    pub sessions: u64,
    pub events: u64,
    pub memory_versions: u64,
    pub state_docs: u64,
    pub idempotency_keys: u64,
    /// Blobs deleted because their last reference went.
    pub blobs_deleted: u64,
    /// Earlier changelog entries that named what was removed (its ids, state keys,
    /// memory ids), redacted with it (see [`ChangeOp::Redacted`]). The removal's own entry
    /// names it.
    #[serde(default)]
    pub changelog_entries: u64,
    /// The changelog sequence of the removal.
    pub change_seq: u64,
}

/// What one retention sweep removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RetentionReport {
    pub sessions_scanned: u64,
    pub events_removed: u64,
    pub blobs_deleted: u64,
}

/// Kinds of changelog entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ChangeOp {
    TenantCreated = 1,
    TenantUpdated = 2,
    IdentityCreated = 3,
    IdentityForgotten = 4,
    SessionCreated = 5,
    SessionDeleted = 6,
    EventsAppended = 7,
    EventsRemoved = 8,
    MemoryPut = 9,
    MemoryDeleted = 10,
    StatePut = 11,
    StateDeleted = 12,
    TenantDeleted = 13,
    SessionUpdated = 14,
    ApiKeyCreated = 15,
    ApiKeyDeleted = 16,
    /// Records written by a restore from a dump (the indexes are rebuilt after it).
    Imported = 17,
    /// Vectors derived by the local embedder: for events `seqs` of the session, or for the
    /// memory `key`.
    Embedded = 18,
    /// An entry whose subject a later forget or delete removed: its names and contents are
    /// gone (every field but `seq` and `at_ms` is empty), its sequence stays.
    Redacted = 19,
}

impl ChangeOp {
    pub fn from_i32(v: i32) -> Option<Self> {
        use ChangeOp::*;
        [
            TenantCreated,
            TenantUpdated,
            IdentityCreated,
            IdentityForgotten,
            SessionCreated,
            SessionDeleted,
            EventsAppended,
            EventsRemoved,
            MemoryPut,
            MemoryDeleted,
            StatePut,
            StateDeleted,
            TenantDeleted,
            SessionUpdated,
            ApiKeyCreated,
            ApiKeyDeleted,
            Imported,
            Embedded,
            Redacted,
        ]
        .into_iter()
        .find(|op| *op as i32 == v)
    }
}

/// One changelog entry: what changed, where. The indexes consume these.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Change {
    pub seq: u64,
    pub op: ChangeOp,
    pub tenant: String,
    pub identity: String,
    pub session: String,
    /// Event sequence numbers appended or removed; the version for `MemoryPut`.
    pub seqs: Vec<u64>,
    /// Event sequence numbers removed by the same call (retention, keep-last-N).
    pub removed: Vec<u64>,
    /// Memory id or state key.
    pub key: String,
    pub at_ms: i64,
}

/// An API key, as listed (the secret is shown once, at creation).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ApiKey {
    pub key_id: String,
    pub tenant: String,
    #[serde(default)]
    pub label: String,
    pub created_at_ms: i64,
}

/// A newly created API key with its secret: `egk_<key_id>_<secret>`. The store keeps only a
/// hash of it; it cannot be shown again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NewApiKey {
    #[serde(flatten)]
    pub key: ApiKey,
    pub secret: String,
}

/// What a search looks through.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SearchOver {
    Events,
    Memories,
    #[default]
    Both,
}

/// How the text and vector rankings of a hybrid search are combined.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fusion {
    /// Reciprocal rank fusion: each ranking adds `1 / (k + rank)` (rank from 1).
    Rrf {
        /// The constant `k`; 60 when absent.
        #[serde(default = "Fusion::default_rrf_k")]
        k: f32,
    },
    /// Scores normalized to [0, 1] per ranking (min-max), then
    /// `alpha * vector + (1 - alpha) * text`. The default, with alpha 0.4 (see
    /// `docs/benchmarks.md`: on LoCoMo it beats either retriever alone; reciprocal rank
    /// fusion does not).
    Weighted {
        /// Weight of the vector score, in [0, 1]; 0.4 when absent.
        #[serde(default = "Fusion::default_alpha")]
        alpha: f32,
    },
}

impl Fusion {
    pub const DEFAULT_RRF_K: f32 = 60.0;

    fn default_rrf_k() -> f32 {
        Self::DEFAULT_RRF_K
    }

    pub const DEFAULT_ALPHA: f32 = 0.4;

    fn default_alpha() -> f32 {
        Self::DEFAULT_ALPHA
    }
}

impl Default for Fusion {
    fn default() -> Self {
        Fusion::Weighted { alpha: Self::DEFAULT_ALPHA }
    }
}

/// A search: by text (BM25), by vector, or both (hybrid), always inside one tenant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    /// Words to look for (full-text, BM25).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// A query vector of the tenant's dimension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector: Option<Vec<f32>>,
    #[serde(default)]
    pub over: SearchOver,
    /// Only this identity (all identities of the tenant when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Only events of these sessions of `identity` (a fork includes what it inherits).
    /// Memories, which belong to the identity, are not narrowed by it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sessions: Vec<String>,
    /// Only events of these kinds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<EventKind>,
    /// Only events with these roles.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<Role>,
    /// Only memories of these kinds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub memory_kinds: Vec<MemoryKind>,
    /// Only items whose time (event timestamp, memory recorded time) is at or after this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_ms: Option<i64>,
    /// Only items whose time is before this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_ms: Option<i64>,
    /// Only items whose metadata has each of these keys with exactly this value.
    #[serde(default, skip_serializing_if = "JsonMap::is_empty")]
    pub metadata: JsonMap,
    /// Only items written at or before this changelog sequence (later deletions still
    /// apply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_of: Option<u64>,
    /// Multiplies each score by `0.5 ^ (age / half_life)`, age measured from now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recency_half_life_ms: Option<u64>,
    /// How many hits; 10 when absent, at most 1000.
    #[serde(default = "SearchQuery::default_k")]
    pub k: usize,
    #[serde(default)]
    pub fusion: Fusion,
    /// Candidates the HNSW walk keeps (more is slower and nearer exact; at least `k`, at
    /// most 10,000); the index's `hnsw_ef_search` (128) when absent. Exact scans ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hnsw_ef: Option<usize>,
    /// Read-your-writes: wait (bounded) until the indexes hold every write up to this
    /// changelog sequence (an append returns it as `change_seq`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_seq: Option<u64>,
    /// Read-your-writes for everything acknowledged before the call.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub consistent: bool,
}

impl SearchQuery {
    pub const DEFAULT_K: usize = 10;

    fn default_k() -> usize {
        Self::DEFAULT_K
    }

    /// A full-text search.
    pub fn text(text: impl Into<String>) -> Self {
        SearchQuery { text: Some(text.into()), ..SearchQuery::default() }
    }

    /// A vector search.
    pub fn vector(vector: Vec<f32>) -> Self {
        SearchQuery { vector: Some(vector), ..SearchQuery::default() }
    }
}

impl Default for SearchQuery {
    fn default() -> Self {
        SearchQuery {
            text: None,
            vector: None,
            over: SearchOver::Both,
            identity: None,
            sessions: Vec::new(),
            kinds: Vec::new(),
            roles: Vec::new(),
            memory_kinds: Vec::new(),
            from_ms: None,
            to_ms: None,
            metadata: JsonMap::new(),
            as_of: None,
            recency_half_life_ms: None,
            k: Self::DEFAULT_K,
            fusion: Fusion::default(),
            hnsw_ef: None,
            min_seq: None,
            consistent: false,
        }
    }
}

/// How one hit scored. `text` and `vector` are the retrievers' own scores (BM25; the
/// metric's similarity: cosine, dot product, or `1 / (1 + distance)` for L2), absent when
/// that retriever did not return the item; `fused` combines them; `recency` is the decay
/// factor when asked for; `score` is `fused * recency`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ScoreBreakdown {
    pub text: Option<f32>,
    pub vector: Option<f32>,
    /// 1-based rank in the text ranking.
    pub text_rank: Option<u32>,
    /// 1-based rank in the vector ranking.
    pub vector_rank: Option<u32>,
    pub fused: f32,
    pub recency: Option<f32>,
}

/// One search result with the record it points at.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HitItem {
    Event { identity: String, event: Event },
    Memory { identity: String, memory: Memory },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SearchHit {
    pub score: f32,
    pub scores: ScoreBreakdown,
    pub item: HitItem,
}

/// Hits, best first, and the changelog sequence the indexes had applied when searched.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SearchResults {
    pub hits: Vec<SearchHit>,
    pub indexed_seq: u64,
}
