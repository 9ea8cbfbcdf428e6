//! The routes: each handler checks the caller, turns the request into one library call
//! (through [`EngramApi`], on the blocking pool) and the answer into JSON.

use crate::AppState;
use crate::auth::Caller;
use crate::http::{HttpError, HttpResult, Json, Path, Query};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use engram_client::{ApiError, EngramApi, ErrorCode};
use engram_core::api::{
    AppendRequest, AppendResponse, BackupRequest, BackupResponse, CreateIdentityRequest, CreateKeyRequest,
    CreateSessionRequest, CreateTenantRequest, ErrorEnvelope, ForkRequest, Health, ItemList, UpdateSessionRequest,
    UpdateTenantRequest,
};
use engram_core::context::ContextRequest;
use engram_core::model::{
    AppendOptions, EventKind, HistoryQuery, JsonMap, ListQuery, NewMemory, Order, Role, SearchQuery, SessionConfig,
    StateDoc, StatePrecondition, StateScope, TenantConfig,
};
use futures::StreamExt;
use serde::Deserialize;
use std::convert::Infallible;
use std::sync::Arc;

type St = State<Arc<AppState>>;

/// How often an open watch stream checks that its API key still exists.
const KEY_RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs a blocking library call that is not tenant-scoped (administration).
pub(crate) async fn blocking<T: Send + 'static>(
    st: &AppState,
    call: impl FnOnce(&engram::Engram) -> engram::Result<T> + Send + 'static,
) -> HttpResult<T> {
    let db = st.db.clone();
    match tokio::task::spawn_blocking(move || call(&db)).await {
        Ok(result) => Ok(result?),
        Err(e) => Err(HttpError::new(ErrorCode::Internal, format!("call failed: {e}"))),
    }
}

fn created<T: serde::Serialize>(value: T) -> Response {
    (StatusCode::CREATED, axum::Json(value)).into_response()
}

// Health, metrics, description.

pub async fn livez() -> axum::Json<Health> {
    axum::Json(Health { status: "ok".into() })
}

pub async fn readyz(State(st): St) -> HttpResult<axum::Json<Health>> {
    if *st.shutdown.borrow() {
        return Err(HttpError::new(ErrorCode::Unavailable, "shutting down"));
    }
    st.db.check_health()?;
    Ok(axum::Json(Health { status: "ready".into() }))
}

pub async fn metrics(State(st): St) -> Response {
    let mut figures: Vec<(String, f64)> = st
        .db
        .storage_properties()
        .into_iter()
        .filter_map(|(name, value)| value.parse::<f64>().ok().map(|v| (crate::metrics::metric_name(&name), v)))
        .collect();
    let last = st.db.last_change_seq();
    figures.push(("engram_last_change_seq".into(), last as f64));
    figures.push(("engram_poisoned".into(), if st.db.check_health().is_ok() { 0.0 } else { 1.0 }));
    if let Ok(stats) = st.db.index_stats() {
        figures.push(("engram_index_poisoned".into(), if stats.poisoned.is_some() { 1.0 } else { 0.0 }));
        // Changes acknowledged but not yet in the indexes (searches with `consistent` wait for them).
        figures.push(("engram_index_lag_changes".into(), last.saturating_sub(stats.marks.applied) as f64));
        figures.push(("engram_index_applied_seq".into(), stats.marks.applied as f64));
        figures.push(("engram_index_text_visible_seq".into(), stats.marks.text_visible as f64));
    }
    if let Some(e) = st.db.embedder_stats() {
        figures.push(("engram_embedder_backlog_changes".into(), e.backlog_changes as f64));
        figures.push(("engram_embedder_embedded_texts".into(), e.embedded as f64));
        figures.push(("engram_embedder_texts_per_second".into(), e.per_sec));
    }
    let cache = st.db.history_cache_stats();
    figures.push(("engram_history_cache_bytes".into(), cache.bytes as f64));
    figures.push(("engram_history_cache_sessions".into(), cache.sessions as f64));
    figures.push(("engram_history_cache_hits".into(), cache.hits as f64));
    figures.push(("engram_history_cache_misses".into(), cache.misses as f64));
    let body = st.metrics.render(&figures);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

pub async fn openapi(State(st): St) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], st.openapi.clone()).into_response()
}

// Administration.

pub async fn create_tenant(
    State(st): St,
    caller: Caller,
    Json(req): Json<CreateTenantRequest>,
) -> HttpResult<Response> {
    caller.require_admin()?;
    let config = TenantConfig {
        vector_dim: req.vector_dim,
        metric: req.metric,
        retention: req.retention,
        metadata: req.metadata,
        embedder: req.embedder,
    };
    let tenant = blocking(&st, move |db| db.create_tenant(&req.name, config)).await?;
    Ok(created(tenant))
}

pub async fn list_tenants(State(st): St, caller: Caller, Query(p): Query<ListParams>) -> HttpResult<Response> {
    caller.require_admin()?;
    let query = p.query()?;
    Ok(axum::Json(blocking(&st, move |db| db.list_tenants(&query)).await?).into_response())
}

pub async fn get_tenant(State(st): St, caller: Caller, Path(tenant): Path<String>) -> HttpResult<Response> {
    caller.require_admin()?;
    Ok(axum::Json(blocking(&st, move |db| db.get_tenant(&tenant)).await?).into_response())
}

pub async fn update_tenant(
    State(st): St,
    caller: Caller,
    Path(tenant): Path<String>,
    Json(req): Json<UpdateTenantRequest>,
) -> HttpResult<Response> {
    caller.require_admin()?;
    let tenant = blocking(&st, move |db| db.update_tenant(&tenant, req.retention, req.embedder)).await?;
    Ok(axum::Json(tenant).into_response())
}

pub async fn delete_tenant(State(st): St, caller: Caller, Path(tenant): Path<String>) -> HttpResult<Response> {
    caller.require_admin()?;
    Ok(axum::Json(blocking(&st, move |db| db.delete_tenant(&tenant)).await?).into_response())
}

pub async fn create_key(
    State(st): St,
    caller: Caller,
    Path(tenant): Path<String>,
    Json(req): Json<CreateKeyRequest>,
) -> HttpResult<Response> {
    caller.require_admin()?;
    let key = blocking(&st, move |db| db.create_api_key(&tenant, &req.label)).await?;
    st.auth.close();
    Ok(created(key))
}

pub async fn list_keys(State(st): St, caller: Caller, Path(tenant): Path<String>) -> HttpResult<Response> {
    caller.require_admin()?;
    let items = blocking(&st, move |db| db.list_api_keys(Some(&tenant))).await?;
    Ok(axum::Json(ItemList { items }).into_response())
}

pub async fn delete_key(State(st): St, caller: Caller, Path(key_id): Path<String>) -> HttpResult<Response> {
    caller.require_admin()?;
    Ok(axum::Json(blocking(&st, move |db| db.delete_api_key(&key_id)).await?).into_response())
}

/// Every tenant's API keys (without secrets).
pub async fn list_all_keys(State(st): St, caller: Caller) -> HttpResult<Response> {
    caller.require_admin()?;
    let items = blocking(&st, |db| db.list_api_keys(None)).await?;
    Ok(axum::Json(ItemList { items }).into_response())
}

pub async fn get_key(State(st): St, caller: Caller, Path(key_id): Path<String>) -> HttpResult<Response> {
    caller.require_admin()?;
    let key = blocking(&st, move |db| {
        db.get_api_key(&key_id)?.ok_or(engram::Error::NotFound { what: "api key", id: key_id })
    })
    .await?;
    Ok(axum::Json(key).into_response())
}

pub async fn verify(State(st): St, caller: Caller) -> HttpResult<Response> {
    caller.require_admin()?;
    Ok(axum::Json(blocking(&st, |db| db.verify()).await?).into_response())
}

pub async fn inspect(State(st): St, caller: Caller) -> HttpResult<Response> {
    caller.require_admin()?;
    Ok(axum::Json(blocking(&st, |db| db.inspect()).await?).into_response())
}

pub async fn index_stats(State(st): St, caller: Caller) -> HttpResult<Response> {
    caller.require_admin()?;
    Ok(axum::Json(blocking(&st, |db| db.index_stats()).await?).into_response())
}

pub async fn sweep_retention(State(st): St, caller: Caller) -> HttpResult<Response> {
    caller.require_admin()?;
    Ok(axum::Json(blocking(&st, |db| db.sweep_retention()).await?).into_response())
}

pub async fn compact(State(st): St, caller: Caller) -> HttpResult<Response> {
    caller.require_admin()?;
    blocking(&st, |db| db.compact_storage()).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn reindex(State(st): St, caller: Caller) -> HttpResult<Response> {
    caller.require_admin()?;
    let stats = blocking(&st, |db| db.reindex()).await?;
    Ok(axum::Json(engram_core::api::ReindexResponse {
        change_seq: stats.marks.applied,
        text_docs: stats.text_docs,
        vectors: stats.vectors.points,
    })
    .into_response())
}

pub async fn backup(State(st): St, caller: Caller, Json(req): Json<BackupRequest>) -> HttpResult<Response> {
    caller.require_admin()?;
    if !std::path::Path::new(&req.path).is_absolute() {
        return Err(HttpError(
            ApiError::new(ErrorCode::InvalidArgument, "the backup path must be absolute").with_field("path"),
        ));
    }
    let path = req.path.clone();
    let change_seq = blocking(&st, move |db| db.backup(&path)).await?;
    Ok(created(BackupResponse { path: req.path, change_seq }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangesParams {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
}

pub async fn changes(State(st): St, caller: Caller, Query(p): Query<ChangesParams>) -> HttpResult<Response> {
    caller.require_admin()?;
    let limit = p.limit.unwrap_or(100).min(engram::limits::MAX_PAGE_LIMIT);
    let items = blocking(&st, move |db| db.changes(p.after, limit)).await?;
    Ok(axum::Json(ItemList { items }).into_response())
}

// Identities and sessions.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    after: Option<String>,
    limit: Option<usize>,
    /// A JSON object: each key must be present in the item's metadata with that value.
    metadata: Option<String>,
}

impl ListParams {
    fn query(self) -> HttpResult<ListQuery> {
        let metadata = match self.metadata {
            None => JsonMap::new(),
            Some(text) => match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(serde_json::Value::Object(map)) => map,
                _ => {
                    return Err(HttpError(
                        ApiError::new(ErrorCode::BadRequest, "metadata must be a JSON object").with_field("metadata"),
                    ));
                }
            },
        };
        Ok(ListQuery { after: self.after, limit: self.limit.unwrap_or(ListQuery::default().limit), metadata })
    }
}

pub async fn create_identity(
    State(st): St,
    caller: Caller,
    Json(req): Json<CreateIdentityRequest>,
) -> HttpResult<Response> {
    Ok(created(st.api(&caller)?.create_identity(&req.id, req.metadata).await?))
}

pub async fn list_identities(State(st): St, caller: Caller, Query(p): Query<ListParams>) -> HttpResult<Response> {
    Ok(axum::Json(st.api(&caller)?.list_identities(&p.query()?).await?).into_response())
}

pub async fn get_identity(State(st): St, caller: Caller, Path(identity): Path<String>) -> HttpResult<Response> {
    Ok(axum::Json(st.api(&caller)?.get_identity(&identity).await?).into_response())
}

pub async fn forget_identity(State(st): St, caller: Caller, Path(identity): Path<String>) -> HttpResult<Response> {
    Ok(axum::Json(st.api(&caller)?.forget_identity(&identity).await?).into_response())
}

pub async fn create_session(
    State(st): St,
    caller: Caller,
    Path(identity): Path<String>,
    Json(req): Json<CreateSessionRequest>,
) -> HttpResult<Response> {
    let config = SessionConfig { metadata: req.metadata, retention: req.retention };
    Ok(created(st.api(&caller)?.create_session(&identity, &req.id, config).await?))
}

pub async fn list_sessions(
    State(st): St,
    caller: Caller,
    Path(identity): Path<String>,
    Query(p): Query<ListParams>,
) -> HttpResult<Response> {
    Ok(axum::Json(st.api(&caller)?.list_sessions(&identity, &p.query()?).await?).into_response())
}

pub async fn get_session(
    State(st): St,
    caller: Caller,
    Path((identity, session)): Path<(String, String)>,
) -> HttpResult<Response> {
    Ok(axum::Json(st.api(&caller)?.get_session(&identity, &session).await?).into_response())
}

pub async fn update_session(
    State(st): St,
    caller: Caller,
    Path((identity, session)): Path<(String, String)>,
    Json(req): Json<UpdateSessionRequest>,
) -> HttpResult<Response> {
    let session = st.api(&caller)?.update_session(&identity, &session, req).await?;
    Ok(axum::Json(session).into_response())
}

pub async fn delete_event(
    State(st): St,
    caller: Caller,
    Path((identity, session, seq)): Path<(String, String, u64)>,
) -> HttpResult<Response> {
    Ok(axum::Json(st.api(&caller)?.delete_event(&identity, &session, seq).await?).into_response())
}

pub async fn delete_session(
    State(st): St,
    caller: Caller,
    Path((identity, session)): Path<(String, String)>,
) -> HttpResult<Response> {
    Ok(axum::Json(st.api(&caller)?.delete_session(&identity, &session).await?).into_response())
}

pub async fn fork_session(
    State(st): St,
    caller: Caller,
    Path((identity, session)): Path<(String, String)>,
    Json(req): Json<ForkRequest>,
) -> HttpResult<Response> {
    let config = SessionConfig { metadata: req.metadata, retention: req.retention };
    Ok(created(st.api(&caller)?.fork_session(&identity, &session, req.at, &req.id, config).await?))
}

// Events.

pub async fn append(
    State(st): St,
    caller: Caller,
    Path((identity, session)): Path<(String, String)>,
    headers: HeaderMap,
    Json(req): Json<AppendRequest>,
) -> HttpResult<Response> {
    let header_key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| {
                    HttpError(
                        ApiError::new(ErrorCode::BadRequest, "Idempotency-Key must be visible ASCII")
                            .with_field("Idempotency-Key"),
                    )
                })?
                .to_string(),
        ),
    };
    let idempotency_key = match (header_key, req.idempotency_key) {
        (Some(h), Some(b)) if h != b => {
            return Err(HttpError(
                ApiError::new(
                    ErrorCode::InvalidArgument,
                    "the Idempotency-Key header and the body's idempotency_key differ",
                )
                .with_field("idempotency_key"),
            ));
        }
        (h, b) => h.or(b),
    };
    let options = AppendOptions { expected_head: req.expected_head, idempotency_key };
    let result = st.api(&caller)?.append(&identity, &session, req.events, options).await?;
    let response = AppendResponse {
        seqs: result.seqs().collect(),
        first_seq: result.first_seq,
        last_seq: result.last_seq,
        deduplicated: result.deduplicated,
        change_seq: result.change_seq,
    };
    let status = if result.deduplicated { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, axum::Json(response)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryParams {
    after: Option<u64>,
    before: Option<u64>,
    limit: Option<usize>,
    order: Option<Order>,
    as_of: Option<u64>,
    /// Comma-separated event kinds.
    kind: Option<String>,
    /// Comma-separated roles.
    role: Option<String>,
}

pub(crate) fn parse_list<T>(
    field: &str,
    text: Option<String>,
    parse: impl Fn(&str) -> Option<T>,
) -> HttpResult<Vec<T>> {
    let Some(text) = text else { return Ok(Vec::new()) };
    text.split(',')
        .map(|part| {
            parse(part.trim()).ok_or_else(|| {
                HttpError(ApiError::new(ErrorCode::BadRequest, format!("unknown {field} {part:?}")).with_field(field))
            })
        })
        .collect()
}

pub async fn history(
    State(st): St,
    caller: Caller,
    Path((identity, session)): Path<(String, String)>,
    Query(p): Query<HistoryParams>,
) -> HttpResult<Response> {
    let query = HistoryQuery {
        after: p.after,
        before: p.before,
        limit: p.limit.unwrap_or(HistoryQuery::default().limit),
        order: p.order.unwrap_or_default(),
        as_of: p.as_of,
        kinds: parse_list("kind", p.kind, EventKind::parse)?,
        roles: parse_list("role", p.role, Role::parse)?,
    };
    // The busiest read: JSON written by hand, as `serde_json` would write it, and from the
    // history tail cache each event's JSON is written once.
    let json = st.api(&caller)?.history_json(&identity, &session, &query).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchParams {
    after: Option<u64>,
}

/// Server-sent events: every event of the session after `Last-Event-ID` (or `?after=`,
/// or from the start), then each new one as it is appended. The SSE id is the sequence.
pub async fn watch(
    State(st): St,
    caller: Caller,
    Path((identity, session)): Path<(String, String)>,
    headers: HeaderMap,
    Query(p): Query<WatchParams>,
) -> HttpResult<Response> {
    let last_event_id = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()).ok_or_else(|| {
            HttpError(
                ApiError::new(ErrorCode::BadRequest, "Last-Event-ID must be a sequence number")
                    .with_field("Last-Event-ID"),
            )
        })?),
    };
    let after = last_event_id.or(p.after).unwrap_or(0);
    let Ok(permit) = Arc::clone(&st.watchers).try_acquire_owned() else {
        return Err(HttpError::new(ErrorCode::Unavailable, "too many open watch streams; retry later"));
    };
    let events = st.api(&caller)?.watch(&identity, &session, after).await?;
    let mut shutdown = st.shutdown.subscribe();
    // A stream ends when the server stops, or when the key it was opened with is revoked.
    let key_id = (caller.tenant.is_some() && !caller.admin).then(|| caller.principal.clone());
    let db = st.db.clone();
    let stopped = async move {
        let revoked = async {
            let Some(key_id) = key_id else { return std::future::pending().await };
            loop {
                tokio::time::sleep(KEY_RECHECK).await;
                let (db, id) = (db.clone(), key_id.clone());
                if let Ok(Ok(None)) = tokio::task::spawn_blocking(move || db.get_api_key(&id)).await {
                    return;
                }
            }
        };
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => {},
            () = revoked => {},
        }
        drop(permit);
    };
    let stream = events
        .map(|item| {
            Ok::<_, Infallible>(match item {
                Ok(event) => SseEvent::default()
                    .id(event.seq.to_string())
                    .json_data(&event)
                    .unwrap_or_else(|_| SseEvent::default().comment("unserializable event")),
                Err(error) => SseEvent::default()
                    .event("error")
                    .json_data(ErrorEnvelope { error })
                    .unwrap_or_else(|_| SseEvent::default().event("error")),
            })
        })
        .take_until(stopped);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

// State documents.

/// `If-None-Match: *` (create only) or `If-Match: "<version>"` (compare and set).
fn precondition(headers: &HeaderMap) -> HttpResult<StatePrecondition> {
    let bad = |field: &str, message: &str| HttpError(ApiError::new(ErrorCode::BadRequest, message).with_field(field));
    let if_match = headers.get(header::IF_MATCH);
    let if_none_match = headers.get(header::IF_NONE_MATCH);
    match (if_match, if_none_match) {
        (Some(_), Some(_)) => Err(bad("If-Match", "send either If-Match or If-None-Match, not both")),
        (None, Some(v)) if v.as_bytes() == b"*" => Ok(StatePrecondition::Absent),
        (None, Some(_)) => Err(bad("If-None-Match", "only If-None-Match: * is supported")),
        (Some(v), None) => {
            let text = v.to_str().unwrap_or_default().trim();
            let text = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
            text.parse::<u64>()
                .map(StatePrecondition::Version)
                .map_err(|_| bad("If-Match", "If-Match must be a version (the ETag of the document)"))
        }
        (None, None) => Ok(StatePrecondition::None),
    }
}

fn with_etag(status: StatusCode, doc: StateDoc) -> Response {
    let mut response = (status, axum::Json(&doc)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", doc.version)) {
        response.headers_mut().insert(header::ETAG, v);
    }
    response
}

async fn get_state_in(st: &AppState, caller: &Caller, scope: StateScope<'_>, key: &str) -> HttpResult<Response> {
    match st.api(caller)?.get_state(scope, key).await? {
        Some(doc) => Ok(with_etag(StatusCode::OK, doc)),
        None => Err(HttpError::new(ErrorCode::NotFound, format!("state document {key:?} not found"))),
    }
}

async fn put_state_in(
    st: &AppState,
    caller: &Caller,
    scope: StateScope<'_>,
    key: &str,
    headers: &HeaderMap,
    value: serde_json::Value,
) -> HttpResult<Response> {
    let precondition = precondition(headers)?;
    let doc = st.api(caller)?.put_state(scope, key, value, precondition).await?;
    let status = if doc.version == 1 { StatusCode::CREATED } else { StatusCode::OK };
    Ok(with_etag(status, doc))
}

async fn delete_state_in(
    st: &AppState,
    caller: &Caller,
    scope: StateScope<'_>,
    key: &str,
    headers: &HeaderMap,
) -> HttpResult<Response> {
    let precondition = precondition(headers)?;
    if st.api(caller)?.delete_state(scope, key, precondition).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(HttpError::new(ErrorCode::NotFound, format!("state document {key:?} not found")))
    }
}

async fn list_state_in(st: &AppState, caller: &Caller, scope: StateScope<'_>) -> HttpResult<Response> {
    let items = st.api(caller)?.list_state(scope).await?;
    Ok(axum::Json(ItemList { items }).into_response())
}

pub async fn list_session_state(
    State(st): St,
    caller: Caller,
    Path((identity, session)): Path<(String, String)>,
) -> HttpResult<Response> {
    list_state_in(&st, &caller, StateScope::Session { identity: &identity, session: &session }).await
}

pub async fn get_session_state(
    State(st): St,
    caller: Caller,
    Path((identity, session, key)): Path<(String, String, String)>,
) -> HttpResult<Response> {
    get_state_in(&st, &caller, StateScope::Session { identity: &identity, session: &session }, &key).await
}

pub async fn put_session_state(
    State(st): St,
    caller: Caller,
    Path((identity, session, key)): Path<(String, String, String)>,
    headers: HeaderMap,
    Json(value): Json<serde_json::Value>,
) -> HttpResult<Response> {
    let scope = StateScope::Session { identity: &identity, session: &session };
    put_state_in(&st, &caller, scope, &key, &headers, value).await
}

pub async fn delete_session_state(
    State(st): St,
    caller: Caller,
    Path((identity, session, key)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> HttpResult<Response> {
    let scope = StateScope::Session { identity: &identity, session: &session };
    delete_state_in(&st, &caller, scope, &key, &headers).await
}

pub async fn list_identity_state(State(st): St, caller: Caller, Path(identity): Path<String>) -> HttpResult<Response> {
    list_state_in(&st, &caller, StateScope::Identity { identity: &identity }).await
}

pub async fn get_identity_state(
    State(st): St,
    caller: Caller,
    Path((identity, key)): Path<(String, String)>,
) -> HttpResult<Response> {
    get_state_in(&st, &caller, StateScope::Identity { identity: &identity }, &key).await
}

pub async fn put_identity_state(
    State(st): St,
    caller: Caller,
    Path((identity, key)): Path<(String, String)>,
    headers: HeaderMap,
    Json(value): Json<serde_json::Value>,
) -> HttpResult<Response> {
    put_state_in(&st, &caller, StateScope::Identity { identity: &identity }, &key, &headers, value).await
}

pub async fn delete_identity_state(
    State(st): St,
    caller: Caller,
    Path((identity, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> HttpResult<Response> {
    delete_state_in(&st, &caller, StateScope::Identity { identity: &identity }, &key, &headers).await
}

// Memories and blobs.

pub async fn put_memory(
    State(st): St,
    caller: Caller,
    Path(identity): Path<String>,
    Json(memory): Json<NewMemory>,
) -> HttpResult<Response> {
    Ok(created(st.api(&caller)?.put_memory(&identity, memory).await?))
}

pub async fn list_memories(
    State(st): St,
    caller: Caller,
    Path(identity): Path<String>,
    Query(p): Query<ListParams>,
) -> HttpResult<Response> {
    Ok(axum::Json(st.api(&caller)?.list_memories(&identity, &p.query()?).await?).into_response())
}

pub async fn get_memory(
    State(st): St,
    caller: Caller,
    Path((identity, id)): Path<(String, String)>,
) -> HttpResult<Response> {
    Ok(axum::Json(st.api(&caller)?.get_memory(&identity, &id).await?).into_response())
}

pub async fn update_memory(
    State(st): St,
    caller: Caller,
    Path((identity, id)): Path<(String, String)>,
    Json(memory): Json<NewMemory>,
) -> HttpResult<Response> {
    Ok(axum::Json(st.api(&caller)?.update_memory(&identity, &id, memory).await?).into_response())
}

pub async fn delete_memory(
    State(st): St,
    caller: Caller,
    Path((identity, id)): Path<(String, String)>,
) -> HttpResult<Response> {
    Ok(axum::Json(st.api(&caller)?.delete_memory(&identity, &id).await?).into_response())
}

pub async fn memory_history(
    State(st): St,
    caller: Caller,
    Path((identity, id)): Path<(String, String)>,
) -> HttpResult<Response> {
    let items = st.api(&caller)?.memory_history(&identity, &id).await?;
    Ok(axum::Json(ItemList { items }).into_response())
}

pub async fn get_blob(State(st): St, caller: Caller, Path(sha256): Path<String>) -> HttpResult<Response> {
    let bytes = st.api(&caller)?.get_blob(&sha256).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

pub async fn search(State(st): St, caller: Caller, Json(query): Json<SearchQuery>) -> HttpResult<Response> {
    Ok(axum::Json(st.api(&caller)?.search(&query).await?).into_response())
}

pub async fn context(
    State(st): St,
    caller: Caller,
    Path((identity, session)): Path<(String, String)>,
    Json(request): Json<ContextRequest>,
) -> HttpResult<Response> {
    Ok(axum::Json(st.api(&caller)?.context(&identity, &session, &request).await?).into_response())
}

// Fallbacks.

pub async fn no_route() -> HttpError {
    HttpError::new(ErrorCode::NoRoute, "no such route")
}

pub async fn method_not_allowed() -> HttpError {
    HttpError::new(ErrorCode::MethodNotAllowed, "method not allowed on this route")
}
