//! The HTTP API's wire vocabulary, shared by the server and the client: request bodies that
//! are not plain model types, list envelopes, and the error envelope with its codes.
//!
//! Request bodies reject unknown fields: a misspelt field is an error, never silently
//! ignored.

use crate::model::{Event, JsonMap, Metric, NewEvent, RetentionPolicy};
use serde::{Deserialize, Serialize};

/// Why a request failed, as a stable machine-readable code. Each has one HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// Malformed request: not JSON, wrong types, unknown fields, bad query parameters.
    BadRequest,
    /// A value is well-formed but not acceptable (a limit, a dimension, NaN, a bad id).
    InvalidArgument,
    /// No key, or a key that is not valid.
    Unauthorized,
    /// A valid key that may not do this (a tenant key on an admin route).
    Forbidden,
    NotFound,
    /// No such route.
    NoRoute,
    MethodNotAllowed,
    AlreadyExists,
    /// An append's expected head is not the session's head.
    HeadMismatch,
    /// The request contradicts stored state (a reused idempotency key, a session with forks).
    Conflict,
    /// An `If-Match` / `If-None-Match` precondition failed.
    PreconditionFailed,
    PayloadTooLarge,
    UnsupportedMediaType,
    RateLimited,
    /// The request took longer than the server's request timeout. A write may still have
    /// happened: retry it with its idempotency key.
    Timeout,
    /// The store refuses writes after a failed write or sync, or is otherwise unavailable.
    Unavailable,
    /// Stored data failed its checksum or did not decode.
    Corruption,
    Internal,
    /// The client could not reach the server or read its answer (client side only).
    Transport,
}

impl ErrorCode {
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::BadRequest,
        ErrorCode::InvalidArgument,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::NoRoute,
        ErrorCode::MethodNotAllowed,
        ErrorCode::AlreadyExists,
        ErrorCode::HeadMismatch,
        ErrorCode::Conflict,
        ErrorCode::PreconditionFailed,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::RateLimited,
        ErrorCode::Timeout,
        ErrorCode::Unavailable,
        ErrorCode::Corruption,
        ErrorCode::Internal,
        ErrorCode::Transport,
    ];

    pub fn status(self) -> u16 {
        use ErrorCode::*;
        match self {
            BadRequest => 400,
            Unauthorized => 401,
            Forbidden => 403,
            NotFound | NoRoute => 404,
            MethodNotAllowed => 405,
            AlreadyExists | HeadMismatch | Conflict => 409,
            PreconditionFailed => 412,
            PayloadTooLarge => 413,
            UnsupportedMediaType => 415,
            InvalidArgument => 422,
            RateLimited => 429,
            Timeout | Unavailable | Transport => 503,
            Corruption | Internal => 500,
        }
    }

    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            BadRequest => "bad_request",
            InvalidArgument => "invalid_argument",
            Unauthorized => "unauthorized",
            Forbidden => "forbidden",
            NotFound => "not_found",
            NoRoute => "no_route",
            MethodNotAllowed => "method_not_allowed",
            AlreadyExists => "already_exists",
            HeadMismatch => "head_mismatch",
            Conflict => "conflict",
            PreconditionFailed => "precondition_failed",
            PayloadTooLarge => "payload_too_large",
            UnsupportedMediaType => "unsupported_media_type",
            RateLimited => "rate_limited",
            Timeout => "timeout",
            Unavailable => "unavailable",
            Corruption => "corruption",
            Internal => "internal",
            Transport => "transport",
        }
    }
}

/// An error as the API reports it: `{"error": {"code", "message", "field"?}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// The request field at fault, when one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into(), field: None }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn status(&self) -> u16 {
        self.code.status()
    }
}

/// The JSON body of every error response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ErrorEnvelope {
    pub error: ApiError,
}

/// A list that is returned whole (no cursor).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ItemList<T> {
    pub items: Vec<T>,
}

/// `POST /v1/admin/tenants`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenantRequest {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector_dim: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<Metric>,
    #[serde(default)]
    pub retention: RetentionPolicy,
    #[serde(default)]
    pub metadata: JsonMap,
    /// `local`: the server's local model derives vectors for texts (it must be started with
    /// an embedding model).
    #[serde(default)]
    pub embedder: crate::model::EmbedderKind,
}

/// `PATCH` of a tenant or a session: replaces its retention policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRetentionRequest {
    pub retention: RetentionPolicy,
}

/// `PATCH /v1/admin/tenants/{tenant}`: replaces the retention policy, the embedder, or both
/// (one at least).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenantRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedder: Option<crate::model::EmbedderKind>,
}

/// `PATCH /v1/identities/{identity}/sessions/{session}`: replaces the retention policy,
/// the metadata, or both (one at least).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSessionRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<JsonMap>,
}

/// `POST /v1/admin/tenants/{tenant}/keys`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    #[serde(default)]
    pub label: String,
}

/// `POST /v1/identities`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateIdentityRequest {
    pub id: String,
    #[serde(default)]
    pub metadata: JsonMap,
}

/// `POST /v1/identities/{identity}/sessions`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSessionRequest {
    pub id: String,
    #[serde(default)]
    pub metadata: JsonMap,
    #[serde(default)]
    pub retention: RetentionPolicy,
}

/// `POST /v1/identities/{identity}/sessions/{session}/fork`: a new session `id` reading the
/// source's history up to `at` (its head when absent).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkRequest {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<u64>,
    #[serde(default)]
    pub metadata: JsonMap,
    #[serde(default)]
    pub retention: RetentionPolicy,
}

/// `POST /v1/identities/{identity}/sessions/{session}/events`. The `Idempotency-Key` header
/// may carry the key instead of the body; when both are given they must be equal.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppendRequest {
    pub events: Vec<NewEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_head: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// The answer to an append: the assigned sequence numbers (contiguous, from 1 per session).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AppendResponse {
    pub seqs: Vec<u64>,
    pub first_seq: u64,
    pub last_seq: u64,
    pub deduplicated: bool,
    pub change_seq: u64,
}

/// One server-sent event of a session watch: the SSE `id` is `event.seq`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct WatchEvent {
    pub identity: String,
    pub event: Event,
}

/// `POST /v1/admin/backup`: a consistent online backup into `path`, a directory on the
/// server's machine that must not exist yet.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupRequest {
    pub path: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct BackupResponse {
    pub path: String,
    /// The backup holds every write up to this changelog sequence (at least).
    pub change_seq: u64,
}

/// `POST /v1/admin/reindex`: what the rebuilt indexes hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ReindexResponse {
    /// The indexes hold every change up to this changelog sequence.
    pub change_seq: u64,
    /// Documents in the full-text index.
    pub text_docs: u64,
    /// Vectors in the vector index.
    pub vectors: u64,
}

/// `GET /livez`, `GET /readyz`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Health {
    pub status: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_round_trip_through_their_names() {
        for &code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).expect("serializes");
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).expect("parses"), code);
            assert!((400..600).contains(&code.status()));
        }
    }

    #[test]
    fn requests_reject_unknown_fields() {
        let err = serde_json::from_str::<AppendRequest>(r#"{"events":[],"expected_hed":3}"#);
        assert!(err.is_err());
        let ok = serde_json::from_str::<AppendRequest>(r#"{"events":[{"kind":"message","text":"hi"}]}"#);
        assert_eq!(ok.expect("parses").events.len(), 1);
    }
}
