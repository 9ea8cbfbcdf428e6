//! The in-process backend: the `engram` library's blocking calls, run on tokio's blocking
//! pool so that they never stall the async threads.

use crate::{ApiError, EngramApi, ErrorCode, EventStream, Result, UpdateSessionRequest};
use async_trait::async_trait;
use engram::Engram;
use engram_core::context::{ContextRequest, ContextResponse};
use engram_core::model::{
    AppendOptions, AppendResult, Event, HistoryPage, HistoryQuery, Identity, JsonMap, ListQuery, Memory, NewEvent,
    NewMemory, Page, Receipt, RetentionPolicy, SearchQuery, SearchResults, Session, SessionConfig, StateDoc,
    StatePrecondition, StateScope,
};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tokio::sync::watch;

/// How long a quiet watch waits before it checks that the store still accepts writes.
const HEALTH_CHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// History pages of up to this many events (the default page) are first tried from
/// memory on the calling thread ([`Engram::history_cached`], which also gives up past
/// [`engram::CACHED_READ_BUDGET_BYTES`] read); longer pages, and pages that need a file or
/// more reading, go to the blocking pool.
pub const INLINE_HISTORY_LIMIT: usize = 100;

/// Events read per history call while a watch catches up.
const WATCH_BATCH: usize = 256;

/// One tenant of an open [`Engram`] handle, as an [`EngramApi`].
#[derive(Clone, Debug)]
pub struct Embedded {
    db: Engram,
    tenant: String,
    watchers: Arc<WatchHub>,
}

type SessionKey = (String, String, String);

/// One channel per watched session (tenant, identity, session), told the changelog
/// sequence of each commit to it: a write wakes only the watchers of its session.
#[derive(Debug, Default)]
struct WatchHub {
    sessions: Mutex<HashMap<SessionKey, watch::Sender<u64>>>,
}

impl WatchHub {
    fn subscribe(&self, tenant: &str, identity: &str, session: &str) -> watch::Receiver<u64> {
        let mut sessions = self.sessions.lock();
        sessions.retain(|_, tx| tx.receiver_count() > 0);
        let key = (tenant.to_string(), identity.to_string(), session.to_string());
        sessions.entry(key).or_insert_with(|| watch::channel(0).0).subscribe()
    }

    fn notify(&self, c: &engram::Committed<'_>) {
        let sessions = self.sessions.lock();
        if sessions.is_empty() {
            return;
        }
        if !c.identity.is_empty() && !c.session.is_empty() {
            let key = (c.tenant.to_string(), c.identity.to_string(), c.session.to_string());
            if let Some(tx) = sessions.get(&key) {
                tx.send_replace(c.seq);
            }
            return;
        }
        // Identity- or tenant-wide (forget, tenant delete...): wake every watcher inside.
        for ((tenant, identity, _), tx) in sessions.iter() {
            if tenant == c.tenant && (c.identity.is_empty() || identity == c.identity) {
                tx.send_replace(c.seq);
            }
        }
    }
}

impl Embedded {
    /// Serves `tenant` of `db`. Create one per handle and derive the others with
    /// [`Embedded::for_tenant`]: each `new` registers a commit listener on `db`.
    pub fn new(db: Engram, tenant: impl Into<String>) -> Self {
        let watchers = Arc::new(WatchHub::default());
        let hub = Arc::downgrade(&watchers);
        db.on_commit(move |committed| {
            if let Some(hub) = hub.upgrade() {
                hub.notify(committed);
            }
        });
        Embedded { db, tenant: tenant.into(), watchers }
    }

    /// The same handle, serving another tenant.
    pub fn for_tenant(&self, tenant: impl Into<String>) -> Self {
        Embedded { db: self.db.clone(), tenant: tenant.into(), watchers: Arc::clone(&self.watchers) }
    }

    pub fn db(&self) -> &Engram {
        &self.db
    }

    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// [`EngramApi::history`] as the JSON of the page (the bytes `serde_json` writes for
    /// it), read as `history` reads. What the server sends.
    pub async fn history_json(&self, identity: &str, session: &str, query: &HistoryQuery) -> Result<Vec<u8>> {
        self.read_history(identity, session, query, Engram::history_cached_json, Engram::history_json).await
    }

    /// A history read: a short page all in memory right here with `in_memory` (it cannot
    /// block on I/O, and it saves the hand-off to the blocking pool and back, most of such
    /// a read's time), else `read` on the blocking pool.
    async fn read_history<T: Send + 'static>(
        &self,
        identity: &str,
        session: &str,
        query: &HistoryQuery,
        in_memory: fn(&Engram, &str, &str, &str, &HistoryQuery) -> engram::Result<Option<T>>,
        read: fn(&Engram, &str, &str, &str, &HistoryQuery) -> engram::Result<T>,
    ) -> Result<T> {
        if query.limit <= INLINE_HISTORY_LIMIT
            && let Some(page) = in_memory(&self.db, &self.tenant, identity, session, query)?
        {
            return Ok(page);
        }
        let (identity, session, query) = (identity.to_string(), session.to_string(), query.clone());
        self.run(move |db, t| read(db, t, &identity, &session, &query)).await
    }

    /// Runs a library call on the blocking pool.
    async fn run<T: Send + 'static>(
        &self,
        call: impl FnOnce(&Engram, &str) -> engram::Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.db.clone();
        let tenant = self.tenant.clone();
        match tokio::task::spawn_blocking(move || call(&db, &tenant)).await {
            Ok(result) => result.map_err(ApiError::from),
            Err(e) => Err(ApiError::new(ErrorCode::Internal, format!("library call failed: {e}"))),
        }
    }
}

/// An owned [`StateScope`], to move into a blocking call.
#[derive(Clone, Debug)]
struct Scope(String, Option<String>);

impl Scope {
    fn of(scope: StateScope<'_>) -> Self {
        match scope {
            StateScope::Identity { identity } => Scope(identity.to_string(), None),
            StateScope::Session { identity, session } => Scope(identity.to_string(), Some(session.to_string())),
        }
    }

    fn get(&self) -> StateScope<'_> {
        match &self.1 {
            None => StateScope::Identity { identity: &self.0 },
            Some(session) => StateScope::Session { identity: &self.0, session },
        }
    }
}

struct WatchState {
    api: Embedded,
    commits: watch::Receiver<u64>,
    identity: String,
    session: String,
    cursor: u64,
    buffered: VecDeque<Event>,
    done: bool,
}

#[async_trait]
impl EngramApi for Embedded {
    async fn create_identity(&self, identity: &str, metadata: JsonMap) -> Result<Identity> {
        let identity = identity.to_string();
        self.run(move |db, t| db.create_identity(t, &identity, metadata)).await
    }

    async fn get_identity(&self, identity: &str) -> Result<Identity> {
        let identity = identity.to_string();
        self.run(move |db, t| db.get_identity(t, &identity)).await
    }

    async fn list_identities(&self, query: &ListQuery) -> Result<Page<Identity>> {
        let query = query.clone();
        self.run(move |db, t| db.list_identities(t, &query)).await
    }

    async fn forget_identity(&self, identity: &str) -> Result<Receipt> {
        let identity = identity.to_string();
        self.run(move |db, t| db.forget_identity(t, &identity)).await
    }

    async fn create_session(&self, identity: &str, session: &str, config: SessionConfig) -> Result<Session> {
        let (identity, session) = (identity.to_string(), session.to_string());
        self.run(move |db, t| db.create_session(t, &identity, &session, config)).await
    }

    async fn get_session(&self, identity: &str, session: &str) -> Result<Session> {
        let (identity, session) = (identity.to_string(), session.to_string());
        self.run(move |db, t| db.get_session(t, &identity, &session)).await
    }

    async fn list_sessions(&self, identity: &str, query: &ListQuery) -> Result<Page<Session>> {
        let (identity, query) = (identity.to_string(), query.clone());
        self.run(move |db, t| db.list_sessions(t, &identity, &query)).await
    }

    async fn set_session_retention(
        &self,
        identity: &str,
        session: &str,
        retention: RetentionPolicy,
    ) -> Result<Session> {
        let (identity, session) = (identity.to_string(), session.to_string());
        self.run(move |db, t| db.set_session_retention(t, &identity, &session, retention)).await
    }

    async fn set_session_metadata(&self, identity: &str, session: &str, metadata: JsonMap) -> Result<Session> {
        let (identity, session) = (identity.to_string(), session.to_string());
        self.run(move |db, t| db.set_session_metadata(t, &identity, &session, metadata)).await
    }

    async fn update_session(&self, identity: &str, session: &str, update: UpdateSessionRequest) -> Result<Session> {
        let (identity, session) = (identity.to_string(), session.to_string());
        self.run(move |db, t| db.update_session(t, &identity, &session, update.retention, update.metadata)).await
    }

    async fn delete_event(&self, identity: &str, session: &str, seq: u64) -> Result<Event> {
        let (identity, session) = (identity.to_string(), session.to_string());
        self.run(move |db, t| db.delete_event(t, &identity, &session, seq)).await
    }

    async fn delete_session(&self, identity: &str, session: &str) -> Result<Receipt> {
        let (identity, session) = (identity.to_string(), session.to_string());
        self.run(move |db, t| db.delete_session(t, &identity, &session)).await
    }

    async fn fork_session(
        &self,
        identity: &str,
        source: &str,
        at: Option<u64>,
        fork: &str,
        config: SessionConfig,
    ) -> Result<Session> {
        let (identity, source, fork) = (identity.to_string(), source.to_string(), fork.to_string());
        self.run(move |db, t| db.fork_session(t, &identity, &source, at, &fork, config)).await
    }

    async fn append(
        &self,
        identity: &str,
        session: &str,
        events: Vec<NewEvent>,
        options: AppendOptions,
    ) -> Result<AppendResult> {
        let (identity, session) = (identity.to_string(), session.to_string());
        self.run(move |db, t| db.append(t, &identity, &session, events, options)).await
    }

    async fn history(&self, identity: &str, session: &str, query: &HistoryQuery) -> Result<HistoryPage> {
        self.read_history(identity, session, query, Engram::history_cached, Engram::history).await
    }

    async fn watch(&self, identity: &str, session: &str, after: u64) -> Result<EventStream> {
        // Fail now, not in the stream, when the session does not exist.
        self.get_session(identity, session).await?;
        let commits = self.watchers.subscribe(&self.tenant, identity, session);
        let state = WatchState {
            api: self.clone(),
            commits,
            identity: identity.to_string(),
            session: session.to_string(),
            cursor: after,
            buffered: VecDeque::new(),
            done: false,
        };
        let stream = futures::stream::unfold(state, |mut st| async move {
            loop {
                if st.done {
                    return None;
                }
                if let Some(event) = st.buffered.pop_front() {
                    st.cursor = event.seq;
                    return Some((Ok(event), st));
                }
                // Mark the current commit seen before reading, so that a commit landing
                // between the read and the wait still wakes us.
                st.commits.borrow_and_update();
                let query = HistoryQuery { after: Some(st.cursor), limit: WATCH_BATCH, ..HistoryQuery::default() };
                match st.api.history(&st.identity, &st.session, &query).await {
                    Ok(page) if !page.events.is_empty() => st.buffered.extend(page.events),
                    Ok(_) => match tokio::time::timeout(HEALTH_CHECK, st.commits.changed()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return None,
                        // Quiet for a while: a store that refuses writes will never wake
                        // us, so end the stream with its error instead of waiting forever.
                        Err(_) => {
                            if let Err(e) = st.api.db.check_health() {
                                st.done = true;
                                return Some((Err(ApiError::from(e)), st));
                            }
                        }
                    },
                    Err(e) => {
                        st.done = true;
                        return Some((Err(e), st));
                    }
                }
            }
        });
        Ok(Box::pin(stream))
    }

    async fn get_state(&self, scope: StateScope<'_>, key: &str) -> Result<Option<StateDoc>> {
        // In place when in memory, as `history`.
        match self.db.get_state_cached(&self.tenant, scope, key) {
            Ok(Some(doc)) => return Ok(doc),
            Ok(None) => {}
            Err(e) => return Err(e.into()),
        }
        let (scope, key) = (Scope::of(scope), key.to_string());
        self.run(move |db, t| db.get_state(t, scope.get(), &key)).await
    }

    async fn list_state(&self, scope: StateScope<'_>) -> Result<Vec<StateDoc>> {
        let scope = Scope::of(scope);
        self.run(move |db, t| db.list_state(t, scope.get())).await
    }

    async fn put_state(
        &self,
        scope: StateScope<'_>,
        key: &str,
        value: serde_json::Value,
        precondition: StatePrecondition,
    ) -> Result<StateDoc> {
        let (scope, key) = (Scope::of(scope), key.to_string());
        self.run(move |db, t| db.put_state(t, scope.get(), &key, value, precondition)).await
    }

    async fn delete_state(&self, scope: StateScope<'_>, key: &str, precondition: StatePrecondition) -> Result<bool> {
        let (scope, key) = (Scope::of(scope), key.to_string());
        self.run(move |db, t| db.delete_state(t, scope.get(), &key, precondition)).await
    }

    async fn put_memory(&self, identity: &str, memory: NewMemory) -> Result<Memory> {
        let identity = identity.to_string();
        self.run(move |db, t| db.put_memory(t, &identity, memory)).await
    }

    async fn update_memory(&self, identity: &str, id: &str, memory: NewMemory) -> Result<Memory> {
        let (identity, id) = (identity.to_string(), id.to_string());
        self.run(move |db, t| db.update_memory(t, &identity, &id, memory)).await
    }

    async fn delete_memory(&self, identity: &str, id: &str) -> Result<Memory> {
        let (identity, id) = (identity.to_string(), id.to_string());
        self.run(move |db, t| db.delete_memory(t, &identity, &id)).await
    }

    async fn get_memory(&self, identity: &str, id: &str) -> Result<Memory> {
        let (identity, id) = (identity.to_string(), id.to_string());
        self.run(move |db, t| db.get_memory(t, &identity, &id)).await
    }

    async fn list_memories(&self, identity: &str, query: &ListQuery) -> Result<Page<Memory>> {
        let (identity, query) = (identity.to_string(), query.clone());
        self.run(move |db, t| db.list_memories(t, &identity, &query)).await
    }

    async fn memory_history(&self, identity: &str, id: &str) -> Result<Vec<Memory>> {
        let (identity, id) = (identity.to_string(), id.to_string());
        self.run(move |db, t| db.memory_history(t, &identity, &id)).await
    }

    async fn get_blob(&self, sha256: &str) -> Result<Vec<u8>> {
        let sha256 = sha256.to_string();
        self.run(move |db, t| db.get_blob(t, &sha256)).await
    }

    async fn search(&self, query: &SearchQuery) -> Result<SearchResults> {
        let query = query.clone();
        self.run(move |db, t| db.search(t, &query)).await
    }

    async fn context(&self, identity: &str, session: &str, request: &ContextRequest) -> Result<ContextResponse> {
        let (identity, session, request) = (identity.to_string(), session.to_string(), request.clone());
        self.run(move |db, t| db.context(t, &identity, &session, &request)).await
    }
}
