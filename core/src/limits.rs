//! Limits on every size Engram accepts. Each is checked before anything is written, and a
//! violation is a [`crate::ValidationError`] naming the field, the limit and the value seen.

/// Longest id (tenant, identity, session, memory, state key, idempotency key), in bytes.
pub const MAX_ID_BYTES: usize = 128;
/// Largest event or memory text, in bytes. Texts above [`BLOB_INLINE_MAX_BYTES`] are stored
/// once as a content-addressed blob and referenced by the event.
pub const MAX_TEXT_BYTES: usize = 8 * 1024 * 1024;
/// Texts longer than this (in bytes) are moved out of the event record into a blob.
pub const BLOB_INLINE_MAX_BYTES: usize = 16 * 1024;
/// Largest JSON content (`data`) of an event, or a state document, serialized, in bytes.
pub const MAX_JSON_BYTES: usize = 1024 * 1024;
/// Largest metadata object, serialized, in bytes.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
/// Largest number of top-level keys in a metadata object.
pub const MAX_METADATA_KEYS: usize = 64;
/// Largest embedding dimension.
pub const MAX_VECTOR_DIM: usize = 4096;
/// Most events in one append call.
pub const MAX_BATCH_EVENTS: usize = 1000;
/// Largest total size of one append call (texts, JSON, metadata and vectors), in bytes.
pub const MAX_BATCH_BYTES: usize = 32 * 1024 * 1024;
/// Largest page a list or history call returns.
pub const MAX_PAGE_LIMIT: usize = 1000;
/// Longest tool name or call id on an event, in bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// Deepest chain of forks (a fork of a fork of ...).
pub const MAX_FORK_DEPTH: usize = 64;
/// Largest number of metadata equality filters in one list call.
pub const MAX_FILTERS: usize = 16;
