//! OpenAI's Conversations API (`/v1/conversations`) over Engram sessions, so that apps
//! built on OpenAI's SDKs keep their conversations here by changing the base URL and key.
//!
//! A conversation is a session of one identity: the one the `Engram-Identity` header names,
//! or [`DEFAULT_IDENTITY`]. Its metadata is the session's metadata. Each item is one event:
//! a message item a message event (role and text), a `function_call` a tool call, a
//! `function_call_output` a tool result, anything else a custom event. The item, normalized
//! to the shape OpenAI returns, is kept in the event's `data` and its id in the event's
//! metadata (`openai_item_id`), so it reads back as it was written, while search, context
//! assembly, forks and forget see an ordinary turn. Events written through the native API
//! read as items too (ids `evt_<seq>`).
//!
//! Errors on these routes use OpenAI's envelope (`{"error": {"message", "type", "param",
//! "code"}}`) so the SDKs raise their usual exceptions.

use crate::AppState;
use crate::auth::Caller;
use crate::http::{HttpError, HttpResult, Json, Path, Query};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use engram_client::{ApiError, EngramApi, ErrorCode};
use engram_core::api::ErrorEnvelope;
use engram_core::model::{
    AppendOptions, Event, EventKind, HistoryQuery, JsonMap, NewEvent, Order, Role, Session, SessionConfig,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::Arc;

/// The header that names the identity whose sessions hold the conversations.
pub const IDENTITY_HEADER: &str = "engram-identity";
/// The identity of conversations when the header is absent.
pub const DEFAULT_IDENTITY: &str = "default";
/// Most items one `POST .../items` (or create) may add, as OpenAI allows.
pub const MAX_ITEMS_PER_REQUEST: usize = 20;
/// Largest page of `GET .../items`.
pub const MAX_LIST_LIMIT: usize = 100;
/// Event metadata key holding the item id.
pub const ITEM_ID_KEY: &str = "openai_item_id";

type St = State<Arc<AppState>>;

/// `POST /v1/conversations`.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
pub struct CreateConversation {
    /// Initial items (at most 20).
    #[serde(default)]
    pub items: Option<Vec<Value>>,
    /// Up to 16 string values.
    #[serde(default)]
    pub metadata: Option<Value>,
}

/// `POST /v1/conversations/{id}`.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
pub struct UpdateConversation {
    pub metadata: Option<Value>,
}

/// `POST /v1/conversations/{id}/items`.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
pub struct AddItems {
    pub items: Vec<Value>,
}

/// `GET /v1/conversations/{id}/items` query parameters.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ListItems {
    pub after: Option<String>,
    pub limit: Option<usize>,
    pub order: Option<String>,
}

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Conversation {
    pub id: String,
    /// Always `"conversation"`.
    pub object: &'static str,
    /// Seconds since the Unix epoch.
    pub created_at: i64,
    pub metadata: JsonMap,
}

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct ConversationDeleted {
    pub id: String,
    /// Always `"conversation.deleted"`.
    pub object: &'static str,
    pub deleted: bool,
}

/// A page of items, in OpenAI's list envelope.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct ItemPage {
    /// Always `"list"`.
    pub object: &'static str,
    pub data: Vec<Value>,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
    pub has_more: bool,
}

impl ItemPage {
    fn new(data: Vec<Value>, has_more: bool) -> Self {
        let id = |v: Option<&Value>| v.and_then(|v| v["id"].as_str()).map(str::to_string);
        ItemPage { object: "list", first_id: id(data.first()), last_id: id(data.last()), data, has_more }
    }
}

fn invalid(message: impl Into<String>, param: &str) -> HttpError {
    HttpError(ApiError::new(ErrorCode::InvalidArgument, message).with_field(param))
}

fn not_found(what: &str, id: &str) -> HttpError {
    HttpError::new(ErrorCode::NotFound, format!("no {what} with id {id:?}"))
}

/// The identity the request's conversations belong to.
fn identity(headers: &HeaderMap) -> HttpResult<String> {
    match headers.get(IDENTITY_HEADER) {
        None => Ok(DEFAULT_IDENTITY.to_string()),
        Some(v) => {
            let id = v.to_str().map_err(|_| invalid("the Engram-Identity header is not text", IDENTITY_HEADER))?;
            engram_core::validate::id(IDENTITY_HEADER, id).map_err(|e| invalid(e.message, IDENTITY_HEADER))?;
            Ok(id.to_string())
        }
    }
}

fn random_id(prefix: &str) -> HttpResult<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| HttpError::new(ErrorCode::Internal, format!("no randomness: {e}")))?;
    Ok(format!("{prefix}_{}", hex::encode(bytes)))
}

/// OpenAI metadata: an object of at most 16 string values (keys up to 64 characters,
/// values up to 512).
fn metadata(value: Option<Value>) -> HttpResult<JsonMap> {
    let map = match value {
        None | Some(Value::Null) => return Ok(JsonMap::new()),
        Some(Value::Object(map)) => map,
        Some(_) => return Err(invalid("metadata must be an object", "metadata")),
    };
    if map.len() > 16 {
        return Err(invalid(format!("metadata has {} keys; the limit is 16", map.len()), "metadata"));
    }
    for (k, v) in &map {
        if k.chars().count() > 64 {
            return Err(invalid(format!("metadata key {k:?} is over 64 characters"), "metadata"));
        }
        match v {
            Value::String(s) if s.chars().count() <= 512 => {}
            Value::String(_) => {
                return Err(invalid(format!("metadata value of {k:?} is over 512 characters"), "metadata"));
            }
            _ => return Err(invalid(format!("metadata value of {k:?} must be a string"), "metadata")),
        }
    }
    Ok(map)
}

fn conversation(s: Session) -> Conversation {
    Conversation {
        id: s.id,
        object: "conversation",
        created_at: s.created_at_ms.div_euclid(1000),
        metadata: s.metadata,
    }
}

fn role_of(name: &str) -> Option<Role> {
    match name {
        "user" => Some(Role::User),
        "assistant" => Some(Role::Assistant),
        "system" => Some(Role::System),
        "developer" => Some(Role::Developer),
        _ => None,
    }
}

/// The texts of a content-parts array (or a plain string), joined by newlines.
fn parts_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").or_else(|| p.get("refusal")).and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// An item's new id: random, or derived from the request's idempotency key and the item's
/// place, so that a retried request is the same request.
fn new_item_id(prefix: &str, index: usize, idempotency_key: Option<&str>) -> HttpResult<String> {
    use sha2::{Digest, Sha256};
    match idempotency_key {
        Some(key) => {
            let digest = Sha256::digest(format!("{key}\n{index}").as_bytes());
            Ok(format!("{prefix}_{}", hex::encode(&digest[..16])))
        }
        None => random_id(prefix),
    }
}

/// An item as OpenAI returns it, and the event that stores it.
fn normalize(index: usize, item: Value, idempotency_key: Option<&str>) -> HttpResult<(String, NewEvent)> {
    let param = |name: &str| format!("items[{index}].{name}");
    let Value::Object(mut item) = item else {
        return Err(invalid("an item must be an object", &format!("items[{index}]")));
    };
    let kind = item.get("type").and_then(Value::as_str).unwrap_or("message").to_string();
    let text_field = |item: &serde_json::Map<String, Value>, name: &str| -> HttpResult<String> {
        item.get(name)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| invalid(format!("{name} must be a string"), &param(name)))
    };
    let (prefix, event) = match kind.as_str() {
        "message" => {
            let role_name = text_field(&item, "role")?;
            let role = role_of(&role_name).ok_or_else(|| {
                invalid(format!("role {role_name:?} is not user, assistant, system or developer"), &param("role"))
            })?;
            let part_type = if role == Role::Assistant { "output_text" } else { "input_text" };
            let content = match item.remove("content") {
                Some(Value::String(text)) => {
                    let mut part = json!({"type": part_type, "text": text});
                    if role == Role::Assistant {
                        part["annotations"] = json!([]);
                    }
                    json!([part])
                }
                Some(parts @ Value::Array(_)) => parts,
                _ => return Err(invalid("content must be a string or an array of parts", &param("content"))),
            };
            let text = parts_text(&content);
            item.insert("type".into(), json!("message"));
            item.insert("content".into(), content);
            let event = NewEvent { text: (!text.is_empty()).then_some(text), ..NewEvent::message(role, "") };
            ("msg", event)
        }
        "function_call" => {
            let call_id = text_field(&item, "call_id")?;
            let name = text_field(&item, "name")?;
            let arguments = text_field(&item, "arguments")?;
            let event = NewEvent {
                kind: Some(EventKind::ToolCall),
                call_id: Some(call_id),
                name: Some(name),
                text: Some(arguments),
                ..NewEvent::default()
            };
            ("fc", event)
        }
        "function_call_output" => {
            let call_id = text_field(&item, "call_id")?;
            let output =
                item.get("output").map(parts_text).ok_or_else(|| invalid("output is required", &param("output")))?;
            let event = NewEvent {
                kind: Some(EventKind::ToolResult),
                call_id: Some(call_id),
                text: Some(output),
                ..NewEvent::default()
            };
            ("fco", event)
        }
        _ => ("item", NewEvent { kind: Some(EventKind::Custom), ..NewEvent::default() }),
    };
    let id = match item.get("id").and_then(Value::as_str) {
        Some(id) if !id.is_empty() => id.to_string(),
        _ => new_item_id(prefix, index, idempotency_key)?,
    };
    item.insert("id".into(), json!(id));
    // Unknown types are kept as they came (with an id); known ones carry a status.
    if matches!(kind.as_str(), "message" | "function_call" | "function_call_output") {
        item.entry("status").or_insert(json!("completed"));
    }
    let mut meta = JsonMap::new();
    meta.insert(ITEM_ID_KEY.into(), json!(id));
    let event = NewEvent { data: Some(Value::Object(item)), metadata: Some(meta), ..event };
    Ok((id, event))
}

/// The item id of an event.
fn item_id(e: &Event) -> String {
    match e.metadata.get(ITEM_ID_KEY).and_then(Value::as_str) {
        Some(id) => id.to_string(),
        None => format!("evt_{}", e.seq),
    }
}

/// An event as an item: the stored item, or one made from a native event.
fn item_of(e: &Event) -> Value {
    if e.metadata.contains_key(ITEM_ID_KEY)
        && let Some(item @ Value::Object(_)) = &e.data
    {
        return item.clone();
    }
    let id = item_id(e);
    let text = || match (&e.text, &e.data) {
        (Some(t), _) => t.clone(),
        (None, Some(d)) => d.to_string(),
        (None, None) => String::new(),
    };
    match (e.kind, e.role) {
        (EventKind::Message, Some(role @ (Role::User | Role::System | Role::Developer | Role::Assistant))) => {
            let part = if role == Role::Assistant {
                json!({"type": "output_text", "text": text(), "annotations": []})
            } else {
                json!({"type": "input_text", "text": text()})
            };
            json!({"type": "message", "id": id, "status": "completed", "role": role.as_str(), "content": [part]})
        }
        (EventKind::ToolCall, _) => json!({
            "type": "function_call", "id": id, "status": "completed",
            "call_id": e.call_id.clone().unwrap_or_default(), "name": e.name.clone().unwrap_or_default(), "arguments": text(),
        }),
        (EventKind::ToolResult, _) | (EventKind::Message, _) => json!({
            "type": "function_call_output", "id": id, "status": "completed",
            "call_id": e.call_id.clone().unwrap_or_default(), "output": text(),
        }),
        (kind, _) => {
            // Approvals and custom events read as system notes, which every client can parse.
            let mut tag = format!("[{kind}");
            if let Some(call_id) = &e.call_id {
                tag.push_str(&format!(" call {call_id}"));
            }
            if let Some(name) = &e.name {
                tag.push_str(&format!(" {name}"));
            }
            let part = json!({"type": "input_text", "text": format!("{tag}] {}", text())});
            json!({"type": "message", "id": id, "status": "completed", "role": "system", "content": [part]})
        }
    }
}

/// The sequence number of the event holding `id`, if the conversation has it.
async fn find_item(api: &dyn EngramApi, identity: &str, conversation: &str, id: &str) -> HttpResult<Option<Event>> {
    if let Some(seq) = id.strip_prefix("evt_").and_then(|s| s.parse::<u64>().ok()) {
        let query = HistoryQuery { after: Some(seq.saturating_sub(1)), limit: 1, ..HistoryQuery::default() };
        let page = api.history(identity, conversation, &query).await?;
        return Ok(page.events.into_iter().find(|e| e.seq == seq && item_id(e) == id));
    }
    let mut after = None;
    loop {
        let query = HistoryQuery { after, limit: engram_core::limits::MAX_PAGE_LIMIT, ..HistoryQuery::default() };
        let page = api.history(identity, conversation, &query).await?;
        if let Some(found) = page.events.iter().find(|e| item_id(e) == id) {
            return Ok(Some(found.clone()));
        }
        match page.next_cursor {
            Some(next) => after = Some(next),
            None => return Ok(None),
        }
    }
}

/// The conversation's session, or OpenAI's 404.
async fn session(api: &dyn EngramApi, identity: &str, id: &str) -> HttpResult<Session> {
    api.get_session(identity, id).await.map_err(|e| match e.code {
        ErrorCode::NotFound => not_found("conversation", id),
        _ => HttpError(e),
    })
}

fn check_count(items: &[Value]) -> HttpResult<()> {
    if items.len() > MAX_ITEMS_PER_REQUEST {
        return Err(invalid(
            format!("{} items; at most {MAX_ITEMS_PER_REQUEST} may be added per request", items.len()),
            "items",
        ));
    }
    Ok(())
}

fn normalize_all(items: Vec<Value>, idempotency_key: Option<&str>) -> HttpResult<(Vec<Value>, Vec<NewEvent>)> {
    let mut out = Vec::with_capacity(items.len());
    let mut events = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let (_, event) = normalize(i, item, idempotency_key)?;
        out.push(event.data.clone().unwrap_or(Value::Null));
        events.push(event);
    }
    Ok((out, events))
}

pub async fn create(
    State(st): St,
    caller: Caller,
    headers: HeaderMap,
    Json(req): Json<CreateConversation>,
) -> HttpResult<Response> {
    let identity = identity(&headers)?;
    let items = req.items.unwrap_or_default();
    check_count(&items)?;
    let metadata = metadata(req.metadata)?;
    let (_, events) = normalize_all(items, None)?;
    let api = st.api(&caller)?;
    let id = random_id("conv")?;
    let s = api.create_session(&identity, &id, SessionConfig { metadata, ..SessionConfig::default() }).await?;
    if !events.is_empty()
        && let Err(e) = api.append(&identity, &id, events, AppendOptions::default()).await
    {
        // Nothing half-made stays behind.
        let _ = api.delete_session(&identity, &id).await;
        return Err(HttpError(e));
    }
    Ok(axum::Json(conversation(s)).into_response())
}

pub async fn retrieve(
    State(st): St,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> HttpResult<Response> {
    let identity = identity(&headers)?;
    let api = st.api(&caller)?;
    Ok(axum::Json(conversation(session(&api, &identity, &id).await?)).into_response())
}

pub async fn update(
    State(st): St,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(req): Json<UpdateConversation>,
) -> HttpResult<Response> {
    let identity = identity(&headers)?;
    let metadata = metadata(req.metadata)?;
    let api = st.api(&caller)?;
    session(&api, &identity, &id).await?;
    Ok(axum::Json(conversation(api.set_session_metadata(&identity, &id, metadata).await?)).into_response())
}

pub async fn delete(State(st): St, caller: Caller, headers: HeaderMap, Path(id): Path<String>) -> HttpResult<Response> {
    let identity = identity(&headers)?;
    let api = st.api(&caller)?;
    session(&api, &identity, &id).await?;
    api.delete_session(&identity, &id).await?;
    Ok(axum::Json(ConversationDeleted { id, object: "conversation.deleted", deleted: true }).into_response())
}

pub async fn add_items(
    State(st): St,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(req): Json<AddItems>,
) -> HttpResult<Response> {
    let identity = identity(&headers)?;
    if req.items.is_empty() {
        return Err(invalid("items must hold at least one item", "items"));
    }
    check_count(&req.items)?;
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_string);
    let (items, events) = normalize_all(req.items, key.as_deref())?;
    let api = st.api(&caller)?;
    session(&api, &identity, &id).await?;
    api.append(&identity, &id, events, AppendOptions { idempotency_key: key, ..AppendOptions::default() }).await?;
    Ok(axum::Json(ItemPage::new(items, false)).into_response())
}

pub async fn list_items(
    State(st): St,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(params): Query<ListItems>,
) -> HttpResult<Response> {
    let identity = identity(&headers)?;
    let limit = params.limit.unwrap_or(20);
    if limit == 0 || limit > MAX_LIST_LIMIT {
        return Err(invalid(format!("limit is {limit}; it must be between 1 and {MAX_LIST_LIMIT}"), "limit"));
    }
    let order = match params.order.as_deref() {
        None | Some("desc") => Order::Desc,
        Some("asc") => Order::Asc,
        Some(other) => return Err(invalid(format!("order {other:?} is not asc or desc"), "order")),
    };
    let api = st.api(&caller)?;
    session(&api, &identity, &id).await?;
    let cursor = match &params.after {
        None => None,
        Some(after) => Some(find_item(&api, &identity, &id, after).await?.ok_or_else(|| not_found("item", after))?.seq),
    };
    let query = match order {
        Order::Asc => HistoryQuery { after: cursor, limit, order, ..HistoryQuery::default() },
        Order::Desc => HistoryQuery { before: cursor, limit, order, ..HistoryQuery::default() },
    };
    let page = api.history(&identity, &id, &query).await?;
    let items = page.events.iter().map(item_of).collect();
    Ok(axum::Json(ItemPage::new(items, page.next_cursor.is_some())).into_response())
}

pub async fn get_item(
    State(st): St,
    caller: Caller,
    headers: HeaderMap,
    Path((id, item)): Path<(String, String)>,
) -> HttpResult<Response> {
    let identity = identity(&headers)?;
    let api = st.api(&caller)?;
    session(&api, &identity, &id).await?;
    let event = find_item(&api, &identity, &id, &item).await?.ok_or_else(|| not_found("item", &item))?;
    Ok(axum::Json(item_of(&event)).into_response())
}

pub async fn delete_item(
    State(st): St,
    caller: Caller,
    headers: HeaderMap,
    Path((id, item)): Path<(String, String)>,
) -> HttpResult<Response> {
    let identity = identity(&headers)?;
    let api = st.api(&caller)?;
    let s = session(&api, &identity, &id).await?;
    let event = find_item(&api, &identity, &id, &item).await?.ok_or_else(|| not_found("item", &item))?;
    api.delete_event(&identity, &id, event.seq).await?;
    Ok(axum::Json(conversation(s)).into_response())
}

/// OpenAI's error envelope in place of Engram's, on the conversation routes.
pub async fn openai_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
        return Response::from_parts(parts, Body::empty());
    };
    let Ok(ErrorEnvelope { error }) = serde_json::from_slice::<ErrorEnvelope>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    let kind = match status {
        StatusCode::UNAUTHORIZED => "invalid_request_error",
        StatusCode::FORBIDDEN => "permission_error",
        StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
        s if s.is_server_error() => "server_error",
        _ => "invalid_request_error",
    };
    let code = match error.code {
        ErrorCode::Unauthorized => "invalid_api_key".to_string(),
        other => other.as_str().to_string(),
    };
    let body = json!({"error": {"message": error.message, "type": kind, "param": error.field, "code": code}});
    parts.headers.remove(header::CONTENT_LENGTH);
    // OpenAI answers invalid values with 400 (Engram with 422): the SDKs raise
    // BadRequestError for it.
    if status == StatusCode::UNPROCESSABLE_ENTITY {
        parts.status = StatusCode::BAD_REQUEST;
    }
    (parts, axum::Json(body)).into_response()
}
