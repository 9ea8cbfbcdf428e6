//! `/v1/openapi.json`: one entry per route in [`OPERATIONS`], schemas generated from the
//! very types the server parses and returns (schemars over the serde derives). A unit test
//! checks that the router and this table list the same routes.

use engram_core::api::{
    AppendRequest, AppendResponse, BackupRequest, BackupResponse, CreateIdentityRequest, CreateKeyRequest,
    CreateSessionRequest, CreateTenantRequest, ErrorEnvelope, ForkRequest, Health, ItemList,
};
use engram_core::model::{
    ApiKey, Change, HistoryPage, Identity, Memory, NewApiKey, NewMemory, Page, Receipt, RetentionReport, SearchQuery,
    SearchResults, Session, StateDoc, Tenant,
};
use schemars::generate::{SchemaGenerator, SchemaSettings};
use schemars::{JsonSchema, Schema};
use serde_json::{Value, json};

type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

fn s<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Public,
    Tenant,
    Admin,
}

#[derive(Clone, Copy)]
pub enum Payload {
    None,
    Json(SchemaFn),
    /// Any JSON value (a state document).
    AnyJson,
    Empty,
    Bytes,
    Text,
    /// JSON lines (a dump).
    NdJson,
    EventStream,
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Payload::None => "None",
            Payload::Json(_) => "Json",
            Payload::AnyJson => "AnyJson",
            Payload::Empty => "Empty",
            Payload::Bytes => "Bytes",
            Payload::Text => "Text",
            Payload::NdJson => "NdJson",
            Payload::EventStream => "EventStream",
        })
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Operation {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    pub access: Access,
    pub body: Payload,
    pub status: u16,
    pub response: Payload,
    /// (name, description)
    pub query: &'static [(&'static str, &'static str)],
    /// Request headers (name, description).
    pub headers: &'static [(&'static str, &'static str)],
    /// Other success statuses with the same response (the summary says when).
    pub also: &'static [u16],
    /// Response headers of a success (name, description).
    pub response_headers: &'static [(&'static str, &'static str)],
}

const LIST: &[(&str, &str)] = &[
    ("after", "Only items whose id sorts after this (the previous page's next_cursor)."),
    ("limit", "Page size, 1..=1000 (default 100)."),
    ("metadata", "A JSON object: items whose metadata has each of these key/value pairs."),
];

const HISTORY: &[(&str, &str)] = &[
    ("after", "Only events with seq > after."),
    ("before", "Only events with seq < before."),
    ("limit", "Page size, 1..=1000 (default 100)."),
    ("order", "asc (default) or desc."),
    ("as_of", "The session as it was when its head was this sequence."),
    ("kind", "Comma-separated event kinds."),
    ("role", "Comma-separated roles."),
];

const STATE_WRITE: &[(&str, &str)] = &[
    ("If-Match", "Compare and set: write only if the document's version (its ETag) is this one; 412 otherwise."),
    ("If-None-Match", "`*`: write only if the document does not exist; 412 otherwise."),
];

const ETAG: &[(&str, &str)] = &[("ETag", "The document's version, quoted: send it back in If-Match.")];

const CONVERSATION: &[(&str, &str)] =
    &[("Engram-Identity", "The identity whose sessions hold the conversations (`default` when absent).")];

macro_rules! op {
    ($method:literal $path:literal, $access:ident, $summary:literal, $body:expr => $status:literal $response:expr
     $(, query = $query:expr)? $(, headers = $headers:expr)? $(, also = $also:expr)?
     $(, response_headers = $rh:expr)?) => {
        Operation {
            method: $method,
            path: $path,
            summary: $summary,
            access: Access::$access,
            body: $body,
            status: $status,
            response: $response,
            query: { #[allow(unused_mut, unused_assignments)] let mut q: &[(&str, &str)] = &[]; $(q = $query;)? q },
            headers: { #[allow(unused_mut, unused_assignments)] let mut h: &[(&str, &str)] = &[]; $(h = $headers;)? h },
            also: { #[allow(unused_mut, unused_assignments)] let mut a: &[u16] = &[]; $(a = $also;)? a },
            response_headers: { #[allow(unused_mut, unused_assignments)] let mut r: &[(&str, &str)] = &[]; $(r = $rh;)? r },
        }
    };
}

use Payload::{AnyJson, Bytes, Empty, EventStream, Json, NdJson, Text};

/// Every route the server answers.
pub const OPERATIONS: &[Operation] = &[
    op!("get" "/livez", Public, "The process is up.", Payload::None => 200 Json(s::<Health>)),
    op!("get" "/readyz", Public, "The store accepts writes (503 when poisoned or shutting down).", Payload::None => 200 Json(s::<Health>)),
    op!("get" "/metrics", Public, "Prometheus metrics: per-route counts and latency, store figures.", Payload::None => 200 Text),
    op!("get" "/v1/openapi.json", Public, "This document.", Payload::None => 200 AnyJson),
    op!("post" "/v1/admin/tenants", Admin, "Create a tenant.", Json(s::<CreateTenantRequest>) => 201 Json(s::<Tenant>)),
    op!("get" "/v1/admin/tenants", Admin, "List tenants by name.", Payload::None => 200 Json(s::<Page<Tenant>>), query = LIST),
    op!("get" "/v1/admin/tenants/{tenant}", Admin, "Get a tenant.", Payload::None => 200 Json(s::<Tenant>)),
    op!("patch" "/v1/admin/tenants/{tenant}", Admin, "Replace a tenant's retention policy, its embedder (`local` needs a server started with an embedding model), or both.", Json(s::<engram_core::api::UpdateTenantRequest>) => 200 Json(s::<Tenant>)),
    op!("delete" "/v1/admin/tenants/{tenant}", Admin, "Delete a tenant, all its data and its keys.", Payload::None => 200 Json(s::<Receipt>)),
    op!("post" "/v1/admin/tenants/{tenant}/keys", Admin, "Create an API key for the tenant; the secret is shown only here.", Json(s::<CreateKeyRequest>) => 201 Json(s::<NewApiKey>)),
    op!("get" "/v1/admin/tenants/{tenant}/keys", Admin, "List the tenant's API keys (without secrets).", Payload::None => 200 Json(s::<ItemList<ApiKey>>)),
    op!("get" "/v1/admin/keys", Admin, "List every tenant's API keys (without secrets).", Payload::None => 200 Json(s::<ItemList<ApiKey>>)),
    op!("get" "/v1/admin/keys/{key_id}", Admin, "Get an API key (without its secret).", Payload::None => 200 Json(s::<ApiKey>)),
    op!("delete" "/v1/admin/keys/{key_id}", Admin, "Revoke an API key.", Payload::None => 200 Json(s::<ApiKey>)),
    op!("post" "/v1/admin/verify", Admin, "Check every stored value (checksum, decoding, references) and the indexes against storage; reads the whole store, so it takes as long as a full scan. The report lists each problem (none: the store is sound).", Payload::None => 200 Json(s::<engram::VerifyReport>)),
    op!("get" "/v1/admin/inspect", Admin, "Counts per tenant and identity (sessions, events by kind, memories, state, bytes), the changelog, the indexes' marks and lag, and RocksDB's own figures. Reads the whole store.", Payload::None => 200 Json(s::<engram::InspectReport>)),
    op!("get" "/v1/admin/index", Admin, "The derived indexes: applied, searchable and saved marks, rebuilds, failures, document and vector counts.", Payload::None => 200 Json(s::<engram::IndexStats>)),
    op!("post" "/v1/admin/retention/sweep", Admin, "Run a retention sweep now.", Payload::None => 200 Json(s::<RetentionReport>)),
    op!("post" "/v1/admin/backup", Admin, "Write a consistent online backup (a RocksDB checkpoint) into a new directory on the server's machine.", Json(s::<BackupRequest>) => 201 Json(s::<BackupResponse>)),
    op!("post" "/v1/admin/compact", Admin, "Compact the whole store.", Payload::None => 204 Empty),
    op!("post" "/v1/admin/reindex", Admin, "Rebuild the full-text and vector indexes from storage; answers once the new ones are searchable (searches use the old ones meanwhile).", Payload::None => 200 Json(s::<engram_core::api::ReindexResponse>)),
    op!("get" "/v1/admin/changes", Admin, "The changelog, oldest first: acknowledged entries only (synced, in durable mode). Entries stay until the indexes have persisted them (they are truncated below the lowest persisted index mark); a forget or delete redacts the entries naming what it removed (op `redacted`: sequence and time only).", Payload::None => 200 Json(s::<ItemList<Change>>),
        query = &[("after", "Only entries with seq > after."), ("limit", "At most this many (default 100, max 1000).")]),
    op!("get" "/v1/admin/dump", Admin, "The store, or the part the parameters select, as JSON lines (`engram dump`'s format: a header line, one record per line, a trailer line with the record count and CRC32), from one snapshot, streamed. A dump that fails midway breaks the transfer instead of ending cleanly.", Payload::None => 200 NdJson,
        query = &[("tenant", "Only this tenant."), ("identity", "Only this identity."), ("session", "Only this session (with its identity's directory entry)."), ("kind", "Comma-separated event kinds: only these events (other records are kept)."), ("from_ms", "Only events with timestamp_ms >= from_ms."), ("to_ms", "Only events with timestamp_ms < to_ms."), ("no_vectors", "true: leave embeddings out."), ("no_blobs", "true: leave blobs out (such a dump cannot be restored).")]),
    op!("post" "/v1/admin/restore", Admin, "Load a dump (the body: JSON lines, streamed; the body size limit and the request timeout do not apply). A record that exists already is a conflict (409); a dump cut short or damaged (its trailer missing or not matching) is a 422; the batches of 1000 records before either are written. The indexes are rebuilt before it answers.", NdJson => 200 Json(s::<engram::DumpStats>)),
    op!("post" "/v1/identities", Tenant, "Create an identity (writes naming an identity create it too).", Json(s::<CreateIdentityRequest>) => 201 Json(s::<Identity>)),
    op!("get" "/v1/identities", Tenant, "List identities.", Payload::None => 200 Json(s::<Page<Identity>>), query = LIST),
    op!("get" "/v1/identities/{identity}", Tenant, "Get an identity.", Payload::None => 200 Json(s::<Identity>)),
    op!("delete" "/v1/identities/{identity}", Tenant, "Forget an identity: everything it owns is removed; returns a receipt.", Payload::None => 200 Json(s::<Receipt>)),
    op!("post" "/v1/identities/{identity}/sessions", Tenant, "Create a session.", Json(s::<CreateSessionRequest>) => 201 Json(s::<Session>)),
    op!("get" "/v1/identities/{identity}/sessions", Tenant, "List the identity's sessions.", Payload::None => 200 Json(s::<Page<Session>>), query = LIST),
    op!("get" "/v1/identities/{identity}/sessions/{session}", Tenant, "Get a session.", Payload::None => 200 Json(s::<Session>)),
    op!("patch" "/v1/identities/{identity}/sessions/{session}", Tenant, "Replace a session's retention policy, its metadata, or both.", Json(s::<engram_core::api::UpdateSessionRequest>) => 200 Json(s::<Session>)),
    op!("delete" "/v1/identities/{identity}/sessions/{session}", Tenant, "Delete a session (409 while it has forks).", Payload::None => 200 Json(s::<Receipt>)),
    op!("post" "/v1/identities/{identity}/sessions/{session}/events", Tenant, "Append events atomically; creates the session if needed. 201, or 200 for an idempotent retry.", Json(s::<AppendRequest>) => 201 Json(s::<AppendResponse>),
        headers = &[("Idempotency-Key", "A retried request with the same key returns the first answer and writes nothing.")], also = &[200]),
    op!("get" "/v1/identities/{identity}/sessions/{session}/events", Tenant, "Read history, one page at a time: next_cursor is the next page's `after` in ascending order, its `before` in descending order.", Payload::None => 200 Json(s::<HistoryPage>), query = HISTORY),
    op!("delete" "/v1/identities/{identity}/sessions/{session}/events/{seq}", Tenant, "Delete one event of the session (not one a fork inherits: 409). Its sequence number is not reused. Returns the event as it was.", Payload::None => 200 Json(s::<engram_core::model::Event>)),
    op!("post" "/v1/identities/{identity}/sessions/{session}/fork", Tenant, "Fork the session at a sequence (copy-on-write).", Json(s::<ForkRequest>) => 201 Json(s::<Session>)),
    op!("get" "/v1/identities/{identity}/sessions/{session}/watch", Tenant, "Server-sent events: the session's events after Last-Event-ID, then each new one. Data: an Event; id: its seq.", Payload::None => 200 EventStream,
        query = &[("after", "Start after this sequence (Last-Event-ID wins when both are sent).")],
        headers = &[("Last-Event-ID", "Resume after this sequence.")]),
    op!("get" "/v1/identities/{identity}/sessions/{session}/state", Tenant, "List the session's state documents.", Payload::None => 200 Json(s::<ItemList<StateDoc>>)),
    op!("get" "/v1/identities/{identity}/sessions/{session}/state/{key}", Tenant, "Get a session state document (ETag: its version).", Payload::None => 200 Json(s::<StateDoc>), response_headers = ETAG),
    op!("put" "/v1/identities/{identity}/sessions/{session}/state/{key}", Tenant, "Write a session state document; the body is its JSON value. 201 when created.", AnyJson => 200 Json(s::<StateDoc>), headers = STATE_WRITE, also = &[201], response_headers = ETAG),
    op!("delete" "/v1/identities/{identity}/sessions/{session}/state/{key}", Tenant, "Delete a session state document.", Payload::None => 204 Empty, headers = STATE_WRITE),
    op!("get" "/v1/identities/{identity}/state", Tenant, "List the identity's state documents.", Payload::None => 200 Json(s::<ItemList<StateDoc>>)),
    op!("get" "/v1/identities/{identity}/state/{key}", Tenant, "Get an identity state document (ETag: its version).", Payload::None => 200 Json(s::<StateDoc>), response_headers = ETAG),
    op!("put" "/v1/identities/{identity}/state/{key}", Tenant, "Write an identity state document; the body is its JSON value. 201 when created.", AnyJson => 200 Json(s::<StateDoc>), headers = STATE_WRITE, also = &[201], response_headers = ETAG),
    op!("delete" "/v1/identities/{identity}/state/{key}", Tenant, "Delete an identity state document.", Payload::None => 204 Empty, headers = STATE_WRITE),
    op!("post" "/v1/identities/{identity}/memories", Tenant, "Store a memory.", Json(s::<NewMemory>) => 201 Json(s::<Memory>)),
    op!("get" "/v1/identities/{identity}/memories", Tenant, "List current memories.", Payload::None => 200 Json(s::<Page<Memory>>), query = LIST),
    op!("get" "/v1/identities/{identity}/memories/{memory}", Tenant, "Get a memory's current version.", Payload::None => 200 Json(s::<Memory>)),
    op!("put" "/v1/identities/{identity}/memories/{memory}", Tenant, "Update a memory: a new version supersedes the current one.", Json(s::<NewMemory>) => 200 Json(s::<Memory>)),
    op!("delete" "/v1/identities/{identity}/memories/{memory}", Tenant, "Delete a memory (its history keeps the closed versions).", Payload::None => 200 Json(s::<Memory>)),
    op!("get" "/v1/identities/{identity}/memories/{memory}/history", Tenant, "Every version of a memory, oldest first.", Payload::None => 200 Json(s::<ItemList<Memory>>)),
    op!("get" "/v1/blobs/{sha256}", Tenant, "A large text stored once per tenant, by sha256.", Payload::None => 200 Bytes),
    op!("post" "/v1/search", Tenant, "Full-text (BM25), vector or hybrid search over events and memories, with filters, fusion and a score breakdown per hit. `consistent` or `min_seq` read your writes.", Json(s::<SearchQuery>) => 200 Json(s::<SearchResults>)),
    op!("post" "/v1/conversations", Tenant, "OpenAI Conversations API: create a conversation (a session of the identity named by the Engram-Identity header, `default` without it) with up to 20 items and metadata. Errors on /v1/conversations use OpenAI's error envelope.", Json(s::<crate::openai::CreateConversation>) => 200 Json(s::<crate::openai::Conversation>), headers = CONVERSATION),
    op!("get" "/v1/conversations/{conversation}", Tenant, "OpenAI Conversations API: retrieve a conversation.", Payload::None => 200 Json(s::<crate::openai::Conversation>), headers = CONVERSATION),
    op!("post" "/v1/conversations/{conversation}", Tenant, "OpenAI Conversations API: replace a conversation's metadata.", Json(s::<crate::openai::UpdateConversation>) => 200 Json(s::<crate::openai::Conversation>), headers = CONVERSATION),
    op!("delete" "/v1/conversations/{conversation}", Tenant, "OpenAI Conversations API: delete a conversation (its session).", Payload::None => 200 Json(s::<crate::openai::ConversationDeleted>), headers = CONVERSATION),
    op!("post" "/v1/conversations/{conversation}/items", Tenant, "OpenAI Conversations API: add 1 to 20 items; they are normalized to the shapes OpenAI returns and stored as events.", Json(s::<crate::openai::AddItems>) => 200 Json(s::<crate::openai::ItemPage>), headers = CONVERSATION),
    op!("get" "/v1/conversations/{conversation}/items", Tenant, "OpenAI Conversations API: list items in OpenAI's list envelope.", Payload::None => 200 Json(s::<crate::openai::ItemPage>),
        query = &[("after", "An item id: list the items after it in the chosen order."), ("limit", "1..=100 (default 20)."), ("order", "desc (default) or asc.")], headers = CONVERSATION),
    op!("get" "/v1/conversations/{conversation}/items/{item}", Tenant, "OpenAI Conversations API: retrieve one item.", Payload::None => 200 Json(s::<serde_json::Value>), headers = CONVERSATION),
    op!("delete" "/v1/conversations/{conversation}/items/{item}", Tenant, "OpenAI Conversations API: delete one item; returns the conversation.", Payload::None => 200 Json(s::<crate::openai::Conversation>), headers = CONVERSATION),
    op!("post" "/v1/identities/{identity}/sessions/{session}/context", Tenant, "The messages for a model call in OpenAI chat form, never over `budget_tokens`: pinned state, pending approvals, the opening system messages, relevant memories and older events, and the recent turns, with the source, reason and tokens of every piece and what was dropped. Every field of the body is optional.", Json(s::<engram_core::context::ContextRequest>) => 200 Json(s::<engram_core::context::ContextResponse>)),
];

fn content(g: &mut SchemaGenerator, payload: Payload) -> Option<Value> {
    let (mime, schema) = match payload {
        Payload::None | Payload::Empty => return None,
        Json(f) => ("application/json", f(g).to_value()),
        AnyJson => ("application/json", json!({})),
        Bytes => ("application/octet-stream", json!({"type": "string", "format": "binary"})),
        Text => ("text/plain", json!({"type": "string"})),
        NdJson => ("application/x-ndjson", json!({"type": "string"})),
        EventStream => ("text/event-stream", json!({"type": "string"})),
    };
    Some(json!({ mime: { "schema": schema } }))
}

fn path_params(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect()
}

/// The OpenAPI 3.1 document.
pub fn document() -> Value {
    let mut g = SchemaSettings::draft2020_12()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
        })
        .into_generator();
    let error_ref = g.subschema_for::<ErrorEnvelope>().to_value();
    let mut paths = serde_json::Map::new();
    for op in OPERATIONS {
        let mut parameters = path_params(op.path);
        parameters.extend(
            op.query
                .iter()
                .map(|(name, d)| json!({"name": name, "in": "query", "description": d, "schema": {"type": "string"}})),
        );
        parameters.extend(
            op.headers
                .iter()
                .map(|(name, d)| json!({"name": name, "in": "header", "description": d, "schema": {"type": "string"}})),
        );
        let mut ok = json!({"description": "Success."});
        if let Some(c) = content(&mut g, op.response) {
            ok["content"] = c;
        }
        if !op.response_headers.is_empty() {
            let headers: serde_json::Map<String, Value> = op
                .response_headers
                .iter()
                .map(|(name, d)| (name.to_string(), json!({"description": d, "schema": {"type": "string"}})))
                .collect();
            ok["headers"] = Value::Object(headers);
        }
        let mut responses = serde_json::Map::new();
        for status in op.also {
            let mut other = ok.clone();
            other["description"] = json!("Success (see the summary for when).");
            responses.insert(status.to_string(), other);
        }
        responses.insert(op.status.to_string(), ok);
        responses.insert(
            "default".into(),
            json!({"description": "An error: {\"error\": {\"code\", \"message\", \"field\"?}}.",
                   "content": {"application/json": {"schema": error_ref}}}),
        );
        let mut operation = json!({
            "summary": op.summary,
            "operationId": format!("{} {}", op.method, op.path),
            "parameters": parameters,
            "responses": responses,
        });
        match op.access {
            Access::Public => operation["security"] = json!([]),
            Access::Admin => operation["tags"] = json!(["admin"]),
            Access::Tenant => operation["tags"] = json!(["tenant"]),
        }
        if let Some(c) = content(&mut g, op.body) {
            operation["requestBody"] = json!({"required": true, "content": c});
        }
        let entry = paths.entry(op.path.to_string()).or_insert_with(|| json!({}));
        entry[op.method] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Engram",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Session state and memory for AI agents. Every tenant route acts on the tenant of the API key (Authorization: Bearer egk_...); admin routes need the admin key. Errors: {\"error\": {\"code\", \"message\", \"field\"?}} with the status of the code."
        },
        "components": {
            "schemas": g.take_definitions(true),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}
        },
        "security": [{"bearer": []}],
        "paths": paths,
    })
}
