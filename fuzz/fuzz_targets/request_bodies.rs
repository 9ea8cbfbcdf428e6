//! Request bodies: arbitrary bytes parsed as each body the server accepts are a value or a
//! parse error; a body that parses, handed to the library as the server hands it, gets an
//! answer or a typed error, never a panic.

#![no_main]

use engram::api::{AppendRequest, CreateSessionRequest, CreateTenantRequest, ForkRequest, UpdateSessionRequest};
use engram::context_types::ContextRequest;
use engram::{
    AppendOptions, DEFAULT_TENANT as T, Engram, HistoryQuery, NewEvent, NewMemory, Options, Role, SearchQuery,
    SessionConfig, StatePrecondition, StateScope, TenantConfig,
};
use libfuzzer_sys::fuzz_target;

fn parse<B: serde::de::DeserializeOwned>(json: &[u8]) -> Option<B> {
    serde_json::from_slice(json).ok()
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, json)) = data.split_first() else { return };
    let db = Engram::open_in_memory(Options::default()).expect("open");
    db.append(T, "alice", "s", vec![NewEvent::message(Role::User, "hello")], AppendOptions::default()).expect("append");
    match which % 10 {
        0 => {
            if let Some(b) = parse::<AppendRequest>(json) {
                let opts = AppendOptions { expected_head: b.expected_head, idempotency_key: b.idempotency_key };
                let _ = db.append(T, "alice", "s", b.events, opts);
            }
        }
        1 => {
            if let Some(q) = parse::<SearchQuery>(json) {
                let _ = db.search(T, &q);
            }
        }
        2 => {
            if let Some(r) = parse::<ContextRequest>(json) {
                let _ = db.context(T, "alice", "s", &r);
            }
        }
        3 => {
            if let Some(m) = parse::<NewMemory>(json) {
                if let Ok(put) = db.put_memory(T, "alice", m.clone()) {
                    let _ = db.update_memory(T, "alice", &put.id, m);
                }
            }
        }
        4 => {
            if let Some(f) = parse::<ForkRequest>(json) {
                let config = SessionConfig { metadata: f.metadata, retention: f.retention };
                let _ = db.fork_session(T, "alice", "s", f.at, &f.id, config);
            }
        }
        5 => {
            if let Some(c) = parse::<CreateSessionRequest>(json) {
                let config = SessionConfig { metadata: c.metadata, retention: c.retention };
                let _ = db.create_session(T, "alice", &c.id, config);
            }
        }
        6 => {
            if let Some(u) = parse::<UpdateSessionRequest>(json) {
                if let Some(retention) = u.retention {
                    let _ = db.set_session_retention(T, "alice", "s", retention);
                }
                if let Some(metadata) = u.metadata {
                    let _ = db.set_session_metadata(T, "alice", "s", metadata);
                }
                let _ = db.sweep_retention();
            }
        }
        7 => {
            if let Some(c) = parse::<CreateTenantRequest>(json) {
                let config = TenantConfig {
                    vector_dim: c.vector_dim,
                    metric: c.metric,
                    retention: c.retention,
                    metadata: c.metadata,
                    embedder: c.embedder,
                };
                let _ = db.create_tenant(&c.name, config);
            }
        }
        8 => {
            if let Some(q) = parse::<HistoryQuery>(json) {
                let _ = db.history(T, "alice", "s", &q);
            }
        }
        _ => {
            if let Some(value) = parse::<serde_json::Value>(json) {
                let scope = StateScope::Session { identity: "alice", session: "s" };
                let _ = db.put_state(T, scope, "k", value, StatePrecondition::None);
            }
        }
    }
});
