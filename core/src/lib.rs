//! `engram-core`: the vocabulary every other Engram crate shares.
//!
//! - [`keys`]: the order-preserving key codec and the key layout of the data space.
//! - [`records`]: the stored record types (prost messages), one per kind of value.
//! - [`model`]: the public domain types (events, memories, state, sessions...).
//! - [`limits`]: every size limit, checked before anything is written.
//! - [`validate`]: the checks that turn bad input into a [`ValidationError`] naming the field.
//! - [`context`]: context assembly's request and its explained answer.
//! - [`json`]: a history page written as JSON by hand, as `serde_json` would, faster.
//! - [`api`]: the HTTP API's request bodies, envelopes and error codes (server and client).
//!
//! This crate does no I/O and knows nothing of RocksDB.

pub mod admin;
pub mod api;
pub mod context;
pub mod json;
pub mod keys;
pub mod limits;
pub mod model;
pub mod records;
pub mod validate;

pub use validate::ValidationError;
