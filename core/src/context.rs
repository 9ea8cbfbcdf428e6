//! Context assembly: the request for the messages of one model call, and the answer with
//! its explanation. The engine builds it (`Engram::context`); the server exposes it at
//! `POST /v1/identities/{identity}/sessions/{session}/context`.

use crate::model::{EventKind, Role};
use serde::{Deserialize, Serialize};

/// Which tokenizer counts tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TokenizerName {
    /// GPT-4o, GPT-4.1, o-series, GPT-5.
    #[default]
    O200kBase,
    /// GPT-4, GPT-3.5.
    Cl100kBase,
}

/// The most each piece may take, as a fraction of the budget. Pieces are filled in this
/// order; what one leaves unused stays available to the pieces after it. The recent turns
/// come last and take what is left (up to their share).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ContextShares {
    pub pinned: f32,
    pub approvals: f32,
    pub system: f32,
    pub memories: f32,
    pub related: f32,
    pub recent: f32,
}

impl Default for ContextShares {
    fn default() -> Self {
        ContextShares { pinned: 0.15, approvals: 0.1, system: 0.2, memories: 0.15, related: 0.15, recent: 1.0 }
    }
}

/// What to put in the context of one model call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ContextRequest {
    /// The whole context stays at or under this many tokens (chat framing included).
    pub budget_tokens: u32,
    /// What to retrieve memories and older events for; the session's last user turn when
    /// absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// A query vector for hybrid retrieval (the tenant's dimension); text only when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_vector: Option<Vec<f32>>,
    pub tokenizer: TokenizerName,
    pub shares: ContextShares,
    /// State keys to pin (looked up in the session's and the identity's documents). When
    /// absent, every document whose key starts with `pinned.`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pinned_state: Option<Vec<String>>,
    /// How many memories to retrieve (0 turns the piece off).
    pub memories_k: usize,
    /// How many older events of the identity to retrieve (0 turns the piece off).
    pub related_k: usize,
    /// A tool output longer than this many tokens is cut to its head and tail around a
    /// marker that names the event and its blob.
    pub max_tool_output_tokens: u32,
    /// Pending approval requests are looked for among this many newest events.
    pub approvals_lookback: usize,
    /// Event kinds left out of the recent turns and retrieval.
    pub exclude_kinds: Vec<EventKind>,
    /// Read-your-writes for retrieval: wait (bounded) until the indexes hold every write
    /// up to this changelog sequence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_seq: Option<u64>,
    /// Read-your-writes for retrieval: everything acknowledged before the call.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub consistent: bool,
}

impl ContextRequest {
    pub const DEFAULT_MEMORIES_K: usize = 8;
    pub const DEFAULT_RELATED_K: usize = 8;
    pub const DEFAULT_MAX_TOOL_OUTPUT_TOKENS: u32 = 1000;
    pub const DEFAULT_APPROVALS_LOOKBACK: usize = 1000;
    /// Largest `budget_tokens`.
    pub const MAX_BUDGET_TOKENS: u32 = 2_000_000;
    /// Largest `memories_k` / `related_k`.
    pub const MAX_K: usize = 100;
    /// Largest `approvals_lookback`.
    pub const MAX_APPROVALS_LOOKBACK: usize = 100_000;

    /// A request with the defaults and this budget.
    pub fn with_budget(budget_tokens: u32) -> Self {
        ContextRequest { budget_tokens, ..ContextRequest::default() }
    }
}

impl Default for ContextRequest {
    fn default() -> Self {
        ContextRequest {
            budget_tokens: 8192,
            query: None,
            query_vector: None,
            tokenizer: TokenizerName::default(),
            shares: ContextShares::default(),
            pinned_state: None,
            memories_k: Self::DEFAULT_MEMORIES_K,
            related_k: Self::DEFAULT_RELATED_K,
            max_tool_output_tokens: Self::DEFAULT_MAX_TOOL_OUTPUT_TOKENS,
            approvals_lookback: Self::DEFAULT_APPROVALS_LOOKBACK,
            exclude_kinds: vec![EventKind::Custom],
            min_seq: None,
            consistent: false,
        }
    }
}

/// A function call of an assistant message, in OpenAI's chat format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ToolCall {
    pub id: String,
    /// Always `"function"`.
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionCall,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FunctionCall {
    pub name: String,
    /// The arguments as a JSON text.
    pub arguments: String,
}

/// One message of OpenAI's chat format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ChatMessage {
    pub role: Role,
    /// Absent only on an assistant message that holds tool calls alone.
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

/// The part of the context a piece belongs to, in priority order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ContextSection {
    Pinned,
    Approvals,
    System,
    Memories,
    Related,
    Recent,
}

/// Where a piece comes from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContextSource {
    /// An event (`session` is the session that holds it: an ancestor for a fork's prefix).
    Event {
        session: String,
        seq: u64,
    },
    Memory {
        id: String,
        version: u64,
    },
    /// A state document; `session` is absent for an identity document.
    State {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<String>,
        key: String,
        version: u64,
    },
}

/// Why a piece is in the context.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum IncludedBecause {
    /// A pinned state document.
    Pinned,
    /// An approval request without a decision.
    PendingApproval,
    /// A system or developer message opening the session.
    System,
    /// Retrieved by the query; `score` says how well it matched.
    Relevant,
    /// Among the newest turns.
    Recent,
}

/// Why a candidate is not in the context.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DroppedBecause {
    /// It did not fit in its share or in what was left of the budget.
    Budget,
    /// A tool call whose result is not in the session (a tool result is never sent
    /// without its call, nor a call without its result).
    UnpairedToolCall,
    /// A tool result whose call is not in the recent turns.
    UnpairedToolResult,
    /// Retrieved, but already in the context (a recent turn or an opening system message).
    AlreadyIncluded,
}

/// One piece of the context and what it cost.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ContextPiece {
    pub section: ContextSection,
    pub source: ContextSource,
    pub because: IncludedBecause,
    /// The search score, for retrieved pieces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f32>,
    /// Tokens its text adds to its message (the message's framing is counted once, in
    /// `ContextResponse::framing_tokens`).
    pub tokens: u32,
    /// Index of the message in `messages` that holds it.
    pub message: usize,
    /// True when its text was cut to head and tail.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// A candidate that was left out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DroppedPiece {
    pub section: ContextSection,
    pub source: ContextSource,
    pub because: DroppedBecause,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f32>,
    /// Tokens it would have taken (0 when not counted).
    pub tokens: u32,
}

/// The messages for a model call, with the explanation of each piece.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ContextResponse {
    pub messages: Vec<ChatMessage>,
    /// Tokens of `messages` as the chat format counts them (per-message framing and the
    /// reply priming included); never more than `budget_tokens`.
    pub total_tokens: u32,
    pub budget_tokens: u32,
    pub tokenizer: TokenizerName,
    /// Tokens of framing: per-message overhead, roles, section headings, reply priming.
    pub framing_tokens: u32,
    pub pieces: Vec<ContextPiece>,
    pub dropped: Vec<DroppedPiece>,
    /// The oldest sequence number among the recent turns: the recent turns are contiguous
    /// and stop at the first turn (or tool call with its results) that does not fit, so
    /// older events are not considered for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recent_from_seq: Option<u64>,
    /// The session head the context was read at.
    pub head_seq: u64,
    /// The changelog sequence the indexes had applied when retrieval searched them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub indexed_seq: Option<u64>,
}
