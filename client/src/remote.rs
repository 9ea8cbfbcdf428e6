//! The HTTP backend: `engram serve`'s routes, one request per operation.

use crate::{ApiError, EngramApi, ErrorCode, EventStream, Result};
use async_trait::async_trait;
use engram_core::api::{
    AppendRequest, AppendResponse, CreateIdentityRequest, CreateKeyRequest, CreateSessionRequest, CreateTenantRequest,
    ErrorEnvelope, ForkRequest, ItemList, UpdateRetentionRequest, UpdateSessionRequest,
};
use engram_core::context::{ContextRequest, ContextResponse};
use engram_core::model::{
    ApiKey, AppendOptions, AppendResult, Change, Event, EventKind, HistoryPage, HistoryQuery, Identity, JsonMap,
    ListQuery, Memory, NewApiKey, NewEvent, NewMemory, Order, Page, Receipt, RetentionPolicy, RetentionReport, Role,
    SearchQuery, SearchResults, Session, SessionConfig, StateDoc, StatePrecondition, StateScope, Tenant,
};
use futures::StreamExt;
use reqwest::{Method, RequestBuilder, Response, Url};
use serde::de::DeserializeOwned;

/// A client of an Engram server, for the tenant its API key is bound to.
#[derive(Clone)]
pub struct Remote {
    http: reqwest::Client,
    base: Url,
    api_key: Option<String>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key itself.
        f.debug_struct("Remote").field("base", &self.base.as_str()).field("has_key", &self.api_key.is_some()).finish()
    }
}

fn transport(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Transport, e.to_string())
}

/// A reqwest error with its causes (reqwest's own message rarely says what went wrong).
fn transport_chain(e: reqwest::Error) -> ApiError {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    ApiError::new(ErrorCode::Transport, message)
}

fn list_params(q: &ListQuery) -> Vec<(&'static str, String)> {
    let mut p = vec![("limit", q.limit.to_string())];
    if let Some(after) = &q.after {
        p.push(("after", after.clone()));
    }
    if !q.metadata.is_empty() {
        p.push(("metadata", serde_json::Value::Object(q.metadata.clone()).to_string()));
    }
    p
}

fn history_params(q: &HistoryQuery) -> Vec<(&'static str, String)> {
    let mut p = vec![("limit", q.limit.to_string())];
    p.push(("order", if q.order == Order::Desc { "desc" } else { "asc" }.to_string()));
    let mut opt = |name, v: Option<u64>| {
        if let Some(v) = v {
            p.push((name, v.to_string()));
        }
    };
    opt("after", q.after);
    opt("before", q.before);
    opt("as_of", q.as_of);
    if !q.kinds.is_empty() {
        p.push(("kind", q.kinds.iter().map(|k| EventKind::as_str(*k)).collect::<Vec<_>>().join(",")));
    }
    if !q.roles.is_empty() {
        p.push(("role", q.roles.iter().map(|r| Role::as_str(*r)).collect::<Vec<_>>().join(",")));
    }
    p
}

fn state_path<'a>(scope: StateScope<'a>, key: &'a str) -> Vec<&'a str> {
    match scope {
        StateScope::Identity { identity } => vec!["v1", "identities", identity, "state", key],
        StateScope::Session { identity, session } => {
            vec!["v1", "identities", identity, "sessions", session, "state", key]
        }
    }
}

fn with_precondition(rb: RequestBuilder, precondition: StatePrecondition) -> RequestBuilder {
    match precondition {
        StatePrecondition::None => rb,
        StatePrecondition::Absent => rb.header("If-None-Match", "*"),
        StatePrecondition::Version(v) => rb.header("If-Match", format!("\"{v}\"")),
    }
}

impl Remote {
    /// A client of the server at `url` (`http://127.0.0.1:7700`). `api_key` is the tenant's
    /// key (or the admin key for the admin calls); `None` for a server without keys.
    pub fn new(url: &str, api_key: Option<&str>) -> Result<Self> {
        let base = Url::parse(url)
            .map_err(|e| ApiError::new(ErrorCode::InvalidArgument, format!("bad server url: {e}")).with_field("url"))?;
        if base.cannot_be_a_base() {
            return Err(ApiError::new(ErrorCode::InvalidArgument, "bad server url").with_field("url"));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(transport)?;
        Ok(Remote { http, base, api_key: api_key.map(str::to_string) })
    }

    /// A client that sends its requests through `http` (custom roots, proxies, timeouts).
    pub fn with_http_client(url: &str, api_key: Option<&str>, http: reqwest::Client) -> Result<Self> {
        Ok(Remote { http, ..Remote::new(url, api_key)? })
    }

    /// The same server with another key.
    pub fn with_key(&self, api_key: Option<&str>) -> Self {
        Remote { http: self.http.clone(), base: self.base.clone(), api_key: api_key.map(str::to_string) }
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    fn request(&self, method: Method, segments: &[&str]) -> RequestBuilder {
        let rb = self.http.request(method, self.url(segments));
        match &self.api_key {
            Some(key) => rb.bearer_auth(key),
            None => rb,
        }
    }

    /// Sends and turns a non-success status into the server's [`ApiError`].
    async fn send(rb: RequestBuilder) -> Result<Response> {
        let response = rb.send().await.map_err(transport_chain)?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body = response.bytes().await.map_err(transport)?;
        Err(match serde_json::from_slice::<ErrorEnvelope>(&body) {
            Ok(envelope) => envelope.error,
            Err(_) => ApiError::new(
                ErrorCode::Internal,
                format!("HTTP {status}: {}", String::from_utf8_lossy(&body).chars().take(200).collect::<String>()),
            ),
        })
    }

    async fn json<T: DeserializeOwned>(rb: RequestBuilder) -> Result<T> {
        let response = Self::send(rb).await?;
        let body = response.bytes().await.map_err(transport)?;
        serde_json::from_slice(&body).map_err(|e| transport(format!("unexpected response body: {e}")))
    }

    /// `GET /readyz`: `Ok` when the server accepts writes.
    pub async fn ready(&self) -> Result<()> {
        Self::send(self.request(Method::GET, &["readyz"])).await.map(drop)
    }

    // Administration (admin key).

    pub async fn create_tenant(&self, request: &CreateTenantRequest) -> Result<Tenant> {
        Self::json(self.request(Method::POST, &["v1", "admin", "tenants"]).json(request)).await
    }

    pub async fn list_tenants(&self, query: &ListQuery) -> Result<Page<Tenant>> {
        Self::json(self.request(Method::GET, &["v1", "admin", "tenants"]).query(&list_params(query))).await
    }

    pub async fn get_tenant(&self, tenant: &str) -> Result<Tenant> {
        Self::json(self.request(Method::GET, &["v1", "admin", "tenants", tenant])).await
    }

    pub async fn set_tenant_retention(&self, tenant: &str, retention: RetentionPolicy) -> Result<Tenant> {
        let body = UpdateRetentionRequest { retention };
        Self::json(self.request(Method::PATCH, &["v1", "admin", "tenants", tenant]).json(&body)).await
    }

    /// Where the tenant's vectors come from (`Local` needs a server with an embedding model).
    pub async fn set_tenant_embedder(
        &self,
        tenant: &str,
        embedder: engram_core::model::EmbedderKind,
    ) -> Result<Tenant> {
        let body = engram_core::api::UpdateTenantRequest { retention: None, embedder: Some(embedder) };
        Self::json(self.request(Method::PATCH, &["v1", "admin", "tenants", tenant]).json(&body)).await
    }

    /// Replaces the tenant's retention, embedder or both in one write: when either is
    /// refused, neither changes.
    pub async fn update_tenant(
        &self,
        tenant: &str,
        retention: Option<RetentionPolicy>,
        embedder: Option<engram_core::model::EmbedderKind>,
    ) -> Result<Tenant> {
        let body = engram_core::api::UpdateTenantRequest { retention, embedder };
        Self::json(self.request(Method::PATCH, &["v1", "admin", "tenants", tenant]).json(&body)).await
    }

    pub async fn delete_tenant(&self, tenant: &str) -> Result<Receipt> {
        Self::json(self.request(Method::DELETE, &["v1", "admin", "tenants", tenant])).await
    }

    pub async fn create_api_key(&self, tenant: &str, label: &str) -> Result<NewApiKey> {
        let body = CreateKeyRequest { label: label.to_string() };
        Self::json(self.request(Method::POST, &["v1", "admin", "tenants", tenant, "keys"]).json(&body)).await
    }

    pub async fn list_api_keys(&self, tenant: &str) -> Result<Vec<ApiKey>> {
        let list: ItemList<ApiKey> =
            Self::json(self.request(Method::GET, &["v1", "admin", "tenants", tenant, "keys"])).await?;
        Ok(list.items)
    }

    /// Every tenant's API keys (without secrets).
    pub async fn list_all_api_keys(&self) -> Result<Vec<ApiKey>> {
        let list: ItemList<ApiKey> = Self::json(self.request(Method::GET, &["v1", "admin", "keys"])).await?;
        Ok(list.items)
    }

    pub async fn get_api_key(&self, key_id: &str) -> Result<ApiKey> {
        Self::json(self.request(Method::GET, &["v1", "admin", "keys", key_id])).await
    }

    /// Checks every stored value and the indexes against storage (a full scan).
    pub async fn verify(&self) -> Result<engram_core::admin::VerifyReport> {
        Self::json(self.request(Method::POST, &["v1", "admin", "verify"])).await
    }

    /// Counts per tenant and identity, changelog and index figures (a full scan).
    pub async fn inspect(&self) -> Result<engram_core::admin::InspectReport> {
        Self::json(self.request(Method::GET, &["v1", "admin", "inspect"])).await
    }

    /// The derived indexes' marks and sizes.
    pub async fn index_stats(&self) -> Result<engram_core::admin::IndexStats> {
        Self::json(self.request(Method::GET, &["v1", "admin", "index"])).await
    }

    pub async fn delete_api_key(&self, key_id: &str) -> Result<ApiKey> {
        Self::json(self.request(Method::DELETE, &["v1", "admin", "keys", key_id])).await
    }

    /// A consistent online backup into `path` on the server's machine (a new directory).
    pub async fn backup(&self, path: &str) -> Result<engram_core::api::BackupResponse> {
        let body = engram_core::api::BackupRequest { path: path.to_string() };
        Self::json(self.request(Method::POST, &["v1", "admin", "backup"]).json(&body)).await
    }

    /// Rebuilds the server's indexes from storage (`POST /v1/admin/reindex`).
    pub async fn reindex(&self) -> Result<engram_core::api::ReindexResponse> {
        Self::json(self.request(Method::POST, &["v1", "admin", "reindex"])).await
    }

    /// Compacts the server's storage now (`POST /v1/admin/compact`), so deleted and
    /// forgotten data leaves the files at once rather than at RocksDB's next compaction.
    pub async fn compact(&self) -> Result<()> {
        Self::send(self.request(Method::POST, &["v1", "admin", "compact"])).await.map(drop)
    }

    /// Streams a dump of the server's store (or the part `filter` selects: `engram dump`'s
    /// JSON lines) into `out`; returns the bytes written. A dump that failed on the server
    /// midway is an error here, never a short dump.
    pub async fn dump(
        &self,
        filter: &engram_core::admin::DumpFilter,
        out: &mut (impl tokio::io::AsyncWrite + Unpin),
    ) -> Result<u64> {
        use tokio::io::AsyncWriteExt;
        let mut query: Vec<(&str, String)> = Vec::new();
        for (name, value) in [("tenant", &filter.tenant), ("identity", &filter.identity), ("session", &filter.session)]
        {
            if let Some(v) = value {
                query.push((name, v.clone()));
            }
        }
        if !filter.kinds.is_empty() {
            query.push(("kind", filter.kinds.iter().map(|k| EventKind::as_str(*k)).collect::<Vec<_>>().join(",")));
        }
        for (name, value) in [("from_ms", filter.from_ms), ("to_ms", filter.to_ms)] {
            if let Some(v) = value {
                query.push((name, v.to_string()));
            }
        }
        for (name, on) in [("no_vectors", filter.no_vectors), ("no_blobs", filter.no_blobs)] {
            if on {
                query.push((name, "true".into()));
            }
        }
        let mut response = Self::send(self.request(Method::GET, &["v1", "admin", "dump"]).query(&query)).await?;
        let mut written = 0u64;
        while let Some(chunk) = response.chunk().await.map_err(transport_chain)? {
            out.write_all(&chunk).await.map_err(transport)?;
            written += chunk.len() as u64;
        }
        out.flush().await.map_err(transport)?;
        Ok(written)
    }

    /// Loads a dump into the server's store (`body`: the JSON lines, e.g. bytes read from
    /// an `engram dump` file, or a stream); the indexes are rebuilt before it answers.
    pub async fn restore(&self, body: impl Into<reqwest::Body>) -> Result<engram_core::admin::DumpStats> {
        let rb = self.request(Method::POST, &["v1", "admin", "restore"]).header("content-type", "application/x-ndjson");
        Self::json(rb.body(body)).await
    }

    pub async fn sweep_retention(&self) -> Result<RetentionReport> {
        Self::json(self.request(Method::POST, &["v1", "admin", "retention", "sweep"])).await
    }

    pub async fn changes(&self, after: u64, limit: usize) -> Result<Vec<Change>> {
        let rb = self
            .request(Method::GET, &["v1", "admin", "changes"])
            .query(&[("after", after.to_string()), ("limit", limit.to_string())]);
        let list: ItemList<Change> = Self::json(rb).await?;
        Ok(list.items)
    }
}

struct SseState {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: Vec<u8>,
    done: bool,
}

/// The next complete SSE frame in `buf` (up to a blank line), removed from it.
fn take_frame(buf: &mut Vec<u8>) -> Option<String> {
    let normalized_end = buf.windows(2).position(|w| w == b"\n\n")?;
    let frame: Vec<u8> = buf.drain(..normalized_end + 2).collect();
    Some(String::from_utf8_lossy(&frame).into_owned())
}

/// Parses one frame: `Ok(None)` for comments and keep-alives.
fn parse_frame(frame: &str) -> Result<Option<Event>> {
    let (mut kind, mut data) = ("message", String::new());
    for line in frame.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            kind = if v.trim() == "error" { "error" } else { "message" };
        } else if let Some(v) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    if data.is_empty() {
        return Ok(None);
    }
    if kind == "error" {
        let envelope: ErrorEnvelope = serde_json::from_str(&data).map_err(transport)?;
        return Err(envelope.error);
    }
    serde_json::from_str(&data).map(Some).map_err(|e| transport(format!("bad watch event: {e}")))
}

#[async_trait]
impl EngramApi for Remote {
    async fn create_identity(&self, identity: &str, metadata: JsonMap) -> Result<Identity> {
        let body = CreateIdentityRequest { id: identity.to_string(), metadata };
        Self::json(self.request(Method::POST, &["v1", "identities"]).json(&body)).await
    }

    async fn get_identity(&self, identity: &str) -> Result<Identity> {
        Self::json(self.request(Method::GET, &["v1", "identities", identity])).await
    }

    async fn list_identities(&self, query: &ListQuery) -> Result<Page<Identity>> {
        Self::json(self.request(Method::GET, &["v1", "identities"]).query(&list_params(query))).await
    }

    async fn forget_identity(&self, identity: &str) -> Result<Receipt> {
        Self::json(self.request(Method::DELETE, &["v1", "identities", identity])).await
    }

    async fn create_session(&self, identity: &str, session: &str, config: SessionConfig) -> Result<Session> {
        let body =
            CreateSessionRequest { id: session.to_string(), metadata: config.metadata, retention: config.retention };
        Self::json(self.request(Method::POST, &["v1", "identities", identity, "sessions"]).json(&body)).await
    }

    async fn get_session(&self, identity: &str, session: &str) -> Result<Session> {
        Self::json(self.request(Method::GET, &["v1", "identities", identity, "sessions", session])).await
    }

    async fn list_sessions(&self, identity: &str, query: &ListQuery) -> Result<Page<Session>> {
        let rb = self.request(Method::GET, &["v1", "identities", identity, "sessions"]).query(&list_params(query));
        Self::json(rb).await
    }

    async fn set_session_retention(
        &self,
        identity: &str,
        session: &str,
        retention: RetentionPolicy,
    ) -> Result<Session> {
        self.update_session(identity, session, UpdateSessionRequest { retention: Some(retention), metadata: None })
            .await
    }

    async fn set_session_metadata(&self, identity: &str, session: &str, metadata: JsonMap) -> Result<Session> {
        self.update_session(identity, session, UpdateSessionRequest { retention: None, metadata: Some(metadata) }).await
    }

    async fn update_session(&self, identity: &str, session: &str, update: UpdateSessionRequest) -> Result<Session> {
        let rb = self.request(Method::PATCH, &["v1", "identities", identity, "sessions", session]).json(&update);
        Self::json(rb).await
    }

    async fn delete_event(&self, identity: &str, session: &str, seq: u64) -> Result<Event> {
        let seq = seq.to_string();
        Self::json(self.request(Method::DELETE, &["v1", "identities", identity, "sessions", session, "events", &seq]))
            .await
    }

    async fn delete_session(&self, identity: &str, session: &str) -> Result<Receipt> {
        Self::json(self.request(Method::DELETE, &["v1", "identities", identity, "sessions", session])).await
    }

    async fn fork_session(
        &self,
        identity: &str,
        source: &str,
        at: Option<u64>,
        fork: &str,
        config: SessionConfig,
    ) -> Result<Session> {
        let body = ForkRequest { id: fork.to_string(), at, metadata: config.metadata, retention: config.retention };
        let rb = self.request(Method::POST, &["v1", "identities", identity, "sessions", source, "fork"]).json(&body);
        Self::json(rb).await
    }

    async fn append(
        &self,
        identity: &str,
        session: &str,
        events: Vec<NewEvent>,
        options: AppendOptions,
    ) -> Result<AppendResult> {
        let body =
            AppendRequest { events, expected_head: options.expected_head, idempotency_key: options.idempotency_key };
        let rb = self.request(Method::POST, &["v1", "identities", identity, "sessions", session, "events"]).json(&body);
        let r: AppendResponse = Self::json(rb).await?;
        Ok(AppendResult {
            first_seq: r.first_seq,
            last_seq: r.last_seq,
            deduplicated: r.deduplicated,
            change_seq: r.change_seq,
        })
    }

    async fn history(&self, identity: &str, session: &str, query: &HistoryQuery) -> Result<HistoryPage> {
        let rb = self
            .request(Method::GET, &["v1", "identities", identity, "sessions", session, "events"])
            .query(&history_params(query));
        Self::json(rb).await
    }

    async fn watch(&self, identity: &str, session: &str, after: u64) -> Result<EventStream> {
        let rb = self
            .request(Method::GET, &["v1", "identities", identity, "sessions", session, "watch"])
            .header("Accept", "text/event-stream")
            .header("Last-Event-ID", after.to_string());
        let response = Self::send(rb).await?;
        let state = SseState { body: response.bytes_stream().boxed(), buf: Vec::new(), done: false };
        let stream = futures::stream::unfold(state, |mut st| async move {
            loop {
                if st.done {
                    return None;
                }
                while let Some(frame) = take_frame(&mut st.buf) {
                    match parse_frame(&frame) {
                        Ok(None) => {}
                        Ok(Some(event)) => return Some((Ok(event), st)),
                        Err(e) => {
                            st.done = true;
                            return Some((Err(e), st));
                        }
                    }
                }
                match st.body.next().await {
                    Some(Ok(chunk)) => st.buf.extend(chunk.iter().copied().filter(|b| *b != b'\r')),
                    Some(Err(e)) => {
                        st.done = true;
                        return Some((Err(transport(e)), st));
                    }
                    None => {
                        // The server ended the stream (shutdown, revoked key, network).
                        st.done = true;
                        return Some((
                            Err(transport("the watch stream was closed; watch again after the last seq")),
                            st,
                        ));
                    }
                }
            }
        });
        Ok(Box::pin(stream))
    }

    async fn get_state(&self, scope: StateScope<'_>, key: &str) -> Result<Option<StateDoc>> {
        match Self::json(self.request(Method::GET, &state_path(scope, key))).await {
            Ok(doc) => Ok(Some(doc)),
            Err(e) if e.code == ErrorCode::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn list_state(&self, scope: StateScope<'_>) -> Result<Vec<StateDoc>> {
        let mut path = state_path(scope, "");
        path.pop();
        let list: ItemList<StateDoc> = Self::json(self.request(Method::GET, &path)).await?;
        Ok(list.items)
    }

    async fn put_state(
        &self,
        scope: StateScope<'_>,
        key: &str,
        value: serde_json::Value,
        precondition: StatePrecondition,
    ) -> Result<StateDoc> {
        let rb = with_precondition(self.request(Method::PUT, &state_path(scope, key)), precondition).json(&value);
        Self::json(rb).await
    }

    async fn delete_state(&self, scope: StateScope<'_>, key: &str, precondition: StatePrecondition) -> Result<bool> {
        let rb = with_precondition(self.request(Method::DELETE, &state_path(scope, key)), precondition);
        match Self::send(rb).await {
            Ok(_) => Ok(true),
            Err(e) if e.code == ErrorCode::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn put_memory(&self, identity: &str, memory: NewMemory) -> Result<Memory> {
        Self::json(self.request(Method::POST, &["v1", "identities", identity, "memories"]).json(&memory)).await
    }

    async fn update_memory(&self, identity: &str, id: &str, memory: NewMemory) -> Result<Memory> {
        Self::json(self.request(Method::PUT, &["v1", "identities", identity, "memories", id]).json(&memory)).await
    }

    async fn delete_memory(&self, identity: &str, id: &str) -> Result<Memory> {
        Self::json(self.request(Method::DELETE, &["v1", "identities", identity, "memories", id])).await
    }

    async fn get_memory(&self, identity: &str, id: &str) -> Result<Memory> {
        Self::json(self.request(Method::GET, &["v1", "identities", identity, "memories", id])).await
    }

    async fn list_memories(&self, identity: &str, query: &ListQuery) -> Result<Page<Memory>> {
        let rb = self.request(Method::GET, &["v1", "identities", identity, "memories"]).query(&list_params(query));
        Self::json(rb).await
    }

    async fn memory_history(&self, identity: &str, id: &str) -> Result<Vec<Memory>> {
        let rb = self.request(Method::GET, &["v1", "identities", identity, "memories", id, "history"]);
        let list: ItemList<Memory> = Self::json(rb).await?;
        Ok(list.items)
    }

    async fn get_blob(&self, sha256: &str) -> Result<Vec<u8>> {
        let response = Self::send(self.request(Method::GET, &["v1", "blobs", sha256])).await?;
        Ok(response.bytes().await.map_err(transport)?.to_vec())
    }

    async fn search(&self, query: &SearchQuery) -> Result<SearchResults> {
        Self::json(self.request(Method::POST, &["v1", "search"]).json(query)).await
    }

    async fn context(&self, identity: &str, session: &str, request: &ContextRequest) -> Result<ContextResponse> {
        let path = ["v1", "identities", identity, "sessions", session, "context"];
        Self::json(self.request(Method::POST, &path).json(request)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_frames_parse_across_chunks() {
        let mut buf = b": keep-alive\n\nid: 3\nevent: message\ndata: {\"x\"".to_vec();
        assert_eq!(take_frame(&mut buf).as_deref(), Some(": keep-alive\n\n"));
        assert!(take_frame(&mut buf).is_none());
        buf.extend_from_slice(b":1}\n\n");
        let frame = take_frame(&mut buf).expect("a whole frame");
        assert!(frame.contains("data: {\"x\":1}"));
        assert!(buf.is_empty());
        let err = "event: error\ndata: {\"error\":{\"code\":\"not_found\",\"message\":\"gone\"}}\n\n";
        assert_eq!(parse_frame(err).expect_err("an error frame").code, ErrorCode::NotFound);
        assert!(parse_frame(": comment\n\n").expect("comment").is_none());
    }

    #[test]
    fn debug_never_shows_the_key() {
        let remote = Remote::new("http://127.0.0.1:7700", Some("egk_secret")).expect("valid url");
        assert!(!format!("{remote:?}").contains("secret"));
    }

    #[test]
    fn path_segments_are_escaped() {
        let remote = Remote::new("http://127.0.0.1:7700/base/", None).expect("valid url");
        assert_eq!(remote.url(&["v1", "a/b", "c d"]).as_str(), "http://127.0.0.1:7700/base/v1/a%2Fb/c%20d");
    }
}
