//! Engram: an embeddable session-state and memory database for AI agents.
//!
//! Per tenant > identity > session, Engram keeps turn history (messages, tool calls and
//! results, approvals, custom events), versioned state documents, long-term memories and
//! blobs, durably, in RocksDB. Open a data directory with [`Engram::open`] and call it from
//! any thread; every call is blocking and every mutating call is atomic.
//!
//! # Guarantees
//! - In [`Durability::Durable`] mode (the default) a call returns only after its write is
//!   synced; after a crash the store holds a prefix of the acknowledged writes.
//! - Bad input is an [`Error::InvalidArgument`] naming the field, and changes nothing.
//! - Every key starts with the tenant; no call reads outside the tenant it names.
//! - Every stored value carries a CRC32; a damaged one reads as [`Error::Corruption`].
//! - A failed write or sync poisons the handle: later writes fail with [`Error::Poisoned`].
//!
//! # Limits
//! See [`limits`]: ids up to 128 bytes of `A-Z a-z 0-9 - _ . : @ + =` (not `.` or `..`); texts up to 8 MiB
//! (above 16 KiB they are stored once as a blob); JSON up to 1 MiB; metadata up to 16 KiB
//! and 64 keys; vectors up to 4096 dimensions; 1000 events or 32 MiB per append; pages of
//! up to 1000 items; forks nested up to 64 deep.
//!
//! # Examples
//! ```
//! use engram::{Engram, Options, NewEvent, Role, HistoryQuery, AppendOptions, DEFAULT_TENANT};
//! let db = Engram::open_in_memory(Options::default())?;
//! let first = db.append(DEFAULT_TENANT, "alice", "chat", vec![NewEvent::message(Role::User, "hi")],
//!     AppendOptions { idempotency_key: Some("req-1".into()), ..Default::default() })?;
//! // A retry of the same request writes nothing and returns the same sequence numbers.
//! let retry = db.append(DEFAULT_TENANT, "alice", "chat", vec![NewEvent::message(Role::User, "hi")],
//!     AppendOptions { idempotency_key: Some("req-1".into()), ..Default::default() })?;
//! assert_eq!(first.first_seq, retry.first_seq);
//! assert!(retry.deduplicated);
//! let last = db.history(DEFAULT_TENANT, "alice", "chat", &HistoryQuery::last(50))?;
//! assert_eq!(last.events.len(), 1);
//! # Ok::<(), engram::Error>(())
//! ```

mod api_keys;
mod blobs;
mod codec;
mod context;
mod db;
mod directory;
mod dump;
mod embed;
mod error;
mod events;
mod failpoint;
mod forget;
mod index;
mod inspect;
mod memories;
mod options;
mod retention;
mod search;
mod state;
mod tail;
mod tenants;
/// The tests' seeded generator, shared with the integration tests.
#[cfg(test)]
#[path = "../tests/support/rng.rs"]
#[allow(dead_code)]
mod test_rng;
mod tokens;
mod verify;

pub use api_keys::{API_KEY_PREFIX, MAX_API_KEY_LABEL_BYTES};
pub use context::{MAX_PINNED_STATE_KEYS, MAX_TOOL_PAIR_DISTANCE, MIN_TOOL_OUTPUT_TOKENS, PINNED_STATE_PREFIX};
pub use db::{Committed, Engram};
pub use dump::{DUMP_VERSION, is_dump_trailer};
#[cfg(feature = "local-embedder")]
pub use embed::bert::{BertEmbedder, MAX_TOKENS as BERT_MAX_TOKENS};
pub use embed::{EMBED_BATCH, Embedder, EmbedderStats, HashingEmbedder};
pub use engram_core::admin::{
    Counts, DumpFilter, DumpStats, IndexMarks, IndexStats, InspectReport, Problem, TenantReport, VectorStats,
    VerifyReport,
};
pub use engram_core::context::{
    ChatMessage, ContextPiece, ContextRequest, ContextResponse, ContextSection, ContextShares, ContextSource,
    DroppedBecause, DroppedPiece, IncludedBecause, TokenizerName,
};
pub use engram_core::model::{
    ApiKey, AppendOptions, AppendResult, BlobRef, Change, ChangeOp, EmbedderKind, Event, EventKind, EventRef, Fusion,
    HistoryPage, HistoryQuery, HitItem, Identity, JsonMap, ListQuery, Memory, MemoryKind, Metric, NewApiKey, NewEvent,
    NewMemory, Order, Page, Receipt, RetentionPolicy, RetentionReport, Role, ScoreBreakdown, SearchHit, SearchOver,
    SearchQuery, SearchResults, Session, SessionConfig, StateDoc, StatePrecondition, StateScope, Tenant, TenantConfig,
};
pub use engram_core::{api, context as context_types, limits};
pub use engram_storage::{MemoryStore, RocksOptions, Store};
pub use error::{Error, Result};
pub use events::CACHED_READ_BUDGET_BYTES;
pub use index::{IndexOptions, IoFaults, IoOp, VectorTuning};
pub use memories::{MAX_MEMORY_SOURCES, MAX_MEMORY_TEXT_BYTES};
pub use options::{Clock, DEFAULT_TENANT, Durability, ManualClock, Options, SystemClock};
pub use search::{MAX_HNSW_EF, MAX_SEARCH_SESSIONS, MAX_SEARCH_TEXT_BYTES};
pub use tail::HistoryCacheStats;
pub use tokens::{REPLY_PRIMING_TOKENS, TOKENS_PER_MESSAGE, TOKENS_PER_TOOL_CALL, TokenCounter, count_chat_tokens};

/// The vector arithmetic the index uses (benchmarks compare against it).
pub mod vector_math {
    pub use crate::index::vector::{dot, l2_squared};
}

/// The storage layer, for tests and tools that plug in their own backend or inject faults.
pub mod storage {
    pub use engram_storage::*;
}
