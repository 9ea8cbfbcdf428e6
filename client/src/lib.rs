//! One async API over Engram, whether it runs inside the app or behind the HTTP server.
//!
//! [`EngramApi`] holds every operation on one tenant's data. Two backends implement it:
//! - [`Embedded`] (feature `embedded`, on by default) calls the `engram` library in
//!   process, off the async threads;
//! - [`Remote`] calls `engram serve` over HTTP with an API key.
//!
//! An app picks one by configuration and keeps a `Box<dyn EngramApi>` (see [`connect`]);
//! the same behaviour tests run against both. Administration (tenants, API keys) is on
//! [`Remote`] for a server, and on the library's `Engram` handle in process.
//!
//! # Examples
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), engram_client::ApiError> {
//! use engram_client::{connect, Backend, EngramApi};
//! use engram_core::model::{NewEvent, Role, HistoryQuery};
//! let api = connect(Backend::InMemory)?;
//! api.append("alice", "chat", vec![NewEvent::message(Role::User, "hi")], Default::default()).await?;
//! let page = api.history("alice", "chat", &HistoryQuery::last(10)).await?;
//! assert_eq!(page.events.len(), 1);
//! # Ok(()) }
//! ```

#[cfg(feature = "embedded")]
mod embedded;
mod remote;

#[cfg(feature = "embedded")]
pub use embedded::{Embedded, INLINE_HISTORY_LIMIT};
pub use engram_core::api::{ApiError, ErrorCode, UpdateSessionRequest};
pub use remote::Remote;

use async_trait::async_trait;
use engram_core::context::{ContextRequest, ContextResponse};
use engram_core::model::{
    AppendOptions, AppendResult, Event, HistoryPage, HistoryQuery, Identity, JsonMap, ListQuery, Memory, NewEvent,
    NewMemory, Page, Receipt, RetentionPolicy, SearchQuery, SearchResults, Session, SessionConfig, StateDoc,
    StatePrecondition, StateScope,
};
use futures::Stream;
use std::pin::Pin;

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

/// A session's events as they are appended; ends on the first error.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<Event>> + Send>>;

/// Every operation on one tenant's data. The tenant is the backend's: an [`Embedded`]
/// handle names it, a [`Remote`]'s API key is bound to it.
#[async_trait]
pub trait EngramApi: Send + Sync + std::fmt::Debug {
    async fn create_identity(&self, identity: &str, metadata: JsonMap) -> Result<Identity>;
    async fn get_identity(&self, identity: &str) -> Result<Identity>;
    async fn list_identities(&self, query: &ListQuery) -> Result<Page<Identity>>;
    /// Removes the identity and everything it owns; the receipt says what went.
    async fn forget_identity(&self, identity: &str) -> Result<Receipt>;

    async fn create_session(&self, identity: &str, session: &str, config: SessionConfig) -> Result<Session>;
    async fn get_session(&self, identity: &str, session: &str) -> Result<Session>;
    async fn list_sessions(&self, identity: &str, query: &ListQuery) -> Result<Page<Session>>;
    async fn set_session_retention(&self, identity: &str, session: &str, retention: RetentionPolicy)
    -> Result<Session>;
    /// Replaces the session's metadata.
    async fn set_session_metadata(&self, identity: &str, session: &str, metadata: JsonMap) -> Result<Session>;
    /// Replaces the session's retention, metadata or both in one write (`PATCH` on the
    /// session): when either is refused, neither changes.
    async fn update_session(&self, identity: &str, session: &str, update: UpdateSessionRequest) -> Result<Session>;
    async fn delete_session(&self, identity: &str, session: &str) -> Result<Receipt>;
    async fn fork_session(
        &self,
        identity: &str,
        source: &str,
        at: Option<u64>,
        fork: &str,
        config: SessionConfig,
    ) -> Result<Session>;

    /// Appends events atomically (creating the session if needed).
    async fn append(
        &self,
        identity: &str,
        session: &str,
        events: Vec<NewEvent>,
        options: AppendOptions,
    ) -> Result<AppendResult>;
    async fn history(&self, identity: &str, session: &str, query: &HistoryQuery) -> Result<HistoryPage>;
    /// Deletes one event (its sequence number stays unused); returns it as it was.
    async fn delete_event(&self, identity: &str, session: &str, seq: u64) -> Result<Event>;
    /// Events of the session with `seq > after`, then each new one as it is appended.
    async fn watch(&self, identity: &str, session: &str, after: u64) -> Result<EventStream>;

    async fn get_state(&self, scope: StateScope<'_>, key: &str) -> Result<Option<StateDoc>>;
    async fn list_state(&self, scope: StateScope<'_>) -> Result<Vec<StateDoc>>;
    async fn put_state(
        &self,
        scope: StateScope<'_>,
        key: &str,
        value: serde_json::Value,
        precondition: StatePrecondition,
    ) -> Result<StateDoc>;
    /// Returns whether the document existed.
    async fn delete_state(&self, scope: StateScope<'_>, key: &str, precondition: StatePrecondition) -> Result<bool>;

    async fn put_memory(&self, identity: &str, memory: NewMemory) -> Result<Memory>;
    async fn update_memory(&self, identity: &str, id: &str, memory: NewMemory) -> Result<Memory>;
    async fn delete_memory(&self, identity: &str, id: &str) -> Result<Memory>;
    async fn get_memory(&self, identity: &str, id: &str) -> Result<Memory>;
    async fn list_memories(&self, identity: &str, query: &ListQuery) -> Result<Page<Memory>>;
    async fn memory_history(&self, identity: &str, id: &str) -> Result<Vec<Memory>>;

    /// A large text stored once per tenant, by its lowercase hex sha256.
    async fn get_blob(&self, sha256: &str) -> Result<Vec<u8>>;

    /// Full-text, vector or hybrid search over the tenant's events and memories.
    async fn search(&self, query: &SearchQuery) -> Result<SearchResults>;

    /// The messages for a model call in `session`, within `request.budget_tokens`, with
    /// the reason and cost of every piece.
    async fn context(&self, identity: &str, session: &str, request: &ContextRequest) -> Result<ContextResponse>;
}

/// Where [`connect`] finds Engram.
#[derive(Clone, Debug)]
pub enum Backend {
    /// A data directory opened in this process, as `tenant` (the default tenant if `None`).
    #[cfg(feature = "embedded")]
    Embedded { path: std::path::PathBuf, tenant: Option<String> },
    /// A scratch store in memory, default tenant.
    #[cfg(feature = "embedded")]
    InMemory,
    /// A server at `url` (`http://127.0.0.1:7700`), with the tenant's API key (none for a
    /// server running without keys on loopback).
    Remote { url: String, api_key: Option<String> },
}

/// Opens the configured backend.
pub fn connect(backend: Backend) -> Result<Box<dyn EngramApi>> {
    match backend {
        #[cfg(feature = "embedded")]
        Backend::Embedded { path, tenant } => {
            let db = engram::Engram::open(&path, engram::Options::default()).map_err(ApiError::from)?;
            let tenant = tenant.unwrap_or_else(|| engram::DEFAULT_TENANT.to_string());
            Ok(Box::new(Embedded::new(db, tenant)))
        }
        #[cfg(feature = "embedded")]
        Backend::InMemory => {
            let db = engram::Engram::open_in_memory(engram::Options::default()).map_err(ApiError::from)?;
            Ok(Box::new(Embedded::new(db, engram::DEFAULT_TENANT)))
        }
        Backend::Remote { url, api_key } => Ok(Box::new(Remote::new(&url, api_key.as_deref())?)),
    }
}
