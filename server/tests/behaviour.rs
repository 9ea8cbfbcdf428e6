//! One behaviour suite, run against both backends of `EngramApi`: the library in process
//! (`Embedded`) and the HTTP server through the client (`Remote`). Both must answer alike.

mod common;

use engram_client::{EngramApi, ErrorCode, Remote, UpdateSessionRequest};
use engram_core::context::{ContextRequest, ContextSection, ContextSource};
use engram_core::model::{
    AppendOptions, EventKind, HistoryQuery, HitItem, ListQuery, NewEvent, NewMemory, Order, Role, SearchQuery,
    SessionConfig, StatePrecondition, StateScope,
};
use futures::StreamExt;
use serde_json::json;
use std::time::Duration;

async fn suite(api: &dyn EngramApi) {
    // Appends: contiguous sequences from 1, expected head, idempotent retries.
    let first = api
        .append("alice", "chat", vec![NewEvent::message(Role::User, "hello")], AppendOptions::default())
        .await
        .expect("append");
    assert_eq!((first.first_seq, first.last_seq), (1, 1));
    let opts = AppendOptions { expected_head: Some(1), idempotency_key: Some("req-2".into()) };
    let turns = vec![
        NewEvent::message(Role::Assistant, "hi! how can I help?"),
        NewEvent {
            kind: Some(EventKind::ToolCall),
            name: Some("lookup".into()),
            call_id: Some("c1".into()),
            data: Some(json!({"q": "weather"})),
            ..NewEvent::default()
        },
    ];
    let second = api.append("alice", "chat", turns.clone(), opts.clone()).await.expect("append");
    assert_eq!((second.first_seq, second.last_seq, second.deduplicated), (2, 3, false));
    let retry = api.append("alice", "chat", turns, opts).await.expect("retry");
    assert_eq!((retry.first_seq, retry.last_seq, retry.deduplicated), (2, 3, true));
    let stale = AppendOptions { expected_head: Some(1), ..AppendOptions::default() };
    let err = api.append("alice", "chat", vec![NewEvent::message(Role::User, "x")], stale).await.expect_err("stale");
    assert_eq!(err.code, ErrorCode::HeadMismatch);
    let bad = api.append("alice", "chat", vec![NewEvent::default()], AppendOptions::default()).await;
    assert_eq!(bad.expect_err("empty event").code, ErrorCode::InvalidArgument);

    // History: pages both ways, filters.
    let page = api.history("alice", "chat", &HistoryQuery { limit: 2, ..HistoryQuery::default() }).await.expect("h");
    assert_eq!(page.events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(page.next_cursor, Some(2));
    let rest = api
        .history("alice", "chat", &HistoryQuery { after: page.next_cursor, ..HistoryQuery::default() })
        .await
        .expect("h");
    assert_eq!(rest.events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3]);
    let last = api.history("alice", "chat", &HistoryQuery::last(2)).await.expect("h");
    assert_eq!(last.events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 2]);
    assert_eq!(last.head_seq, 3);
    let calls = HistoryQuery { kinds: vec![EventKind::ToolCall], order: Order::Desc, ..HistoryQuery::default() };
    let calls = api.history("alice", "chat", &calls).await.expect("h");
    assert_eq!(calls.events.len(), 1);
    assert_eq!(calls.events[0].call_id.as_deref(), Some("c1"));
    let seqs = |page: &engram_core::model::HistoryPage| page.events.iter().map(|e| e.seq).collect::<Vec<_>>();
    assert_eq!(last.next_cursor, Some(2), "a newest-first page's cursor is the next `before`");
    let older = HistoryQuery { before: last.next_cursor, order: Order::Desc, ..HistoryQuery::default() };
    let older = api.history("alice", "chat", &older).await.expect("h");
    assert_eq!((seqs(&older), older.next_cursor), (vec![1], None));
    let below = HistoryQuery { before: Some(3), ..HistoryQuery::default() };
    assert_eq!(seqs(&api.history("alice", "chat", &below).await.expect("h")), vec![1, 2]);
    let then = api.history("alice", "chat", &HistoryQuery { as_of: Some(2), ..HistoryQuery::default() }).await;
    let then = then.expect("h");
    assert_eq!((seqs(&then), then.head_seq), (vec![1, 2], 2));
    let replies = HistoryQuery { roles: vec![Role::Assistant], ..HistoryQuery::default() };
    let replies = api.history("alice", "chat", &replies).await.expect("h");
    assert_eq!(replies.events.iter().map(|e| (e.seq, e.role)).collect::<Vec<_>>(), vec![(2, Some(Role::Assistant))]);

    // Identities and sessions.
    let ident = api.get_identity("alice").await.expect("identity");
    assert_eq!(ident.id, "alice");
    let mut meta = serde_json::Map::new();
    meta.insert("team".into(), json!("blue"));
    api.create_identity("bob", meta.clone()).await.expect("create identity");
    assert_eq!(api.create_identity("bob", meta.clone()).await.expect_err("dup").code, ErrorCode::AlreadyExists);
    let blue = api.list_identities(&ListQuery { metadata: meta, ..ListQuery::default() }).await.expect("list");
    assert_eq!(blue.items.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), vec!["bob"]);
    let all = api.list_identities(&ListQuery { limit: 1, ..ListQuery::default() }).await.expect("list");
    assert_eq!(all.items.len(), 1);
    assert_eq!(all.next_cursor.as_deref(), Some("alice"));
    let second = ListQuery { after: all.next_cursor, limit: 1, ..ListQuery::default() };
    let second = api.list_identities(&second).await.expect("list");
    assert_eq!(second.items.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), vec!["bob"]);
    api.create_session("alice", "other", SessionConfig::default()).await.expect("session");
    let sessions = api.list_sessions("alice", &ListQuery::default()).await.expect("sessions");
    assert_eq!(sessions.items.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), vec!["chat", "other"]);
    assert_eq!(api.get_session("alice", "nope").await.expect_err("missing").code, ErrorCode::NotFound);

    // Forks are copy-on-write.
    let fork = api.fork_session("alice", "chat", Some(2), "chat-b", SessionConfig::default()).await.expect("fork");
    assert_eq!(fork.head_seq, 2);
    api.append("alice", "chat-b", vec![NewEvent::message(Role::User, "branch")], AppendOptions::default())
        .await
        .expect("append to fork");
    let forked = api.history("alice", "chat-b", &HistoryQuery::default()).await.expect("h");
    assert_eq!(forked.events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(forked.events[2].text.as_deref(), Some("branch"));
    assert_eq!(api.delete_session("alice", "chat").await.expect_err("has forks").code, ErrorCode::Conflict);

    // State documents: create-only, compare-and-set, delete.
    let scope = StateScope::Session { identity: "alice", session: "chat" };
    let doc = api.put_state(scope, "task", json!({"step": 1}), StatePrecondition::Absent).await.expect("put");
    assert_eq!(doc.version, 1);
    let again = api.put_state(scope, "task", json!({}), StatePrecondition::Absent).await;
    assert_eq!(again.expect_err("exists").code, ErrorCode::PreconditionFailed);
    let doc = api.put_state(scope, "task", json!({"step": 2}), StatePrecondition::Version(1)).await.expect("cas");
    assert_eq!(doc.version, 2);
    let stale = api.put_state(scope, "task", json!({}), StatePrecondition::Version(1)).await;
    assert_eq!(stale.expect_err("stale").code, ErrorCode::PreconditionFailed);
    assert_eq!(api.get_state(scope, "task").await.expect("get").expect("exists").value, json!({"step": 2}));
    assert!(api.get_state(scope, "none").await.expect("get").is_none());
    let ident_scope = StateScope::Identity { identity: "alice" };
    api.put_state(ident_scope, "prefs", json!({"lang": "fr"}), StatePrecondition::None).await.expect("put");
    assert_eq!(api.list_state(ident_scope).await.expect("list").len(), 1);
    assert!(api.delete_state(scope, "task", StatePrecondition::Version(2)).await.expect("delete"));
    assert!(!api.delete_state(scope, "task", StatePrecondition::None).await.expect("delete again"));

    // Memories: put, supersede, history, delete.
    let m = api.put_memory("alice", NewMemory::fact("likes tea")).await.expect("memory");
    let m2 = api.update_memory("alice", &m.id, NewMemory::fact("likes green tea")).await.expect("update");
    assert_eq!(m2.version, 2);
    assert_eq!(api.get_memory("alice", &m.id).await.expect("get").text, "likes green tea");
    let history = api.memory_history("alice", &m.id).await.expect("history");
    assert_eq!(history.iter().map(|v| v.version).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(api.list_memories("alice", &ListQuery::default()).await.expect("list").items.len(), 1);
    api.delete_memory("alice", &m.id).await.expect("delete");
    assert_eq!(api.get_memory("alice", &m.id).await.expect_err("deleted").code, ErrorCode::NotFound);

    // Search: read-your-writes, hybrid scores, scoped to the identity; deletions reach it.
    let seen = api
        .append(
            "alice",
            "zoo",
            vec![NewEvent { embedding: Some(vec![1.0, 0.0]), ..NewEvent::message(Role::User, "the quokka smiles") }],
            AppendOptions::default(),
        )
        .await
        .expect("append");
    let query = SearchQuery {
        text: Some("quokka".into()),
        vector: Some(vec![1.0, 0.1]),
        identity: Some("alice".into()),
        min_seq: Some(seen.change_seq),
        ..SearchQuery::default()
    };
    let found = api.search(&query).await.expect("search");
    assert_eq!(found.hits.len(), 1, "{found:?}");
    let hit = &found.hits[0];
    assert_eq!((hit.scores.text_rank, hit.scores.vector_rank), (Some(1), Some(1)));
    match &hit.item {
        HitItem::Event { identity, event } => {
            assert_eq!((identity.as_str(), event.seq, event.session.as_str()), ("alice", seen.first_seq, "zoo"));
        }
        other => panic!("expected an event, got {other:?}"),
    }
    let elsewhere = SearchQuery { identity: Some("bob".into()), ..query.clone() };
    assert!(api.search(&elsewhere).await.expect("search").hits.is_empty());
    let bad = SearchQuery { k: 0, ..query.clone() };
    assert_eq!(api.search(&bad).await.expect_err("k = 0").code, ErrorCode::InvalidArgument);

    // Context: the turn, and the memory the query retrieves, within the budget.
    let fact = api.put_memory("alice", NewMemory::fact("Quokkas live on Rottnest Island.")).await.expect("memory");
    let request = ContextRequest {
        query: Some("where do quokkas live".into()),
        consistent: true,
        ..ContextRequest::with_budget(400)
    };
    let ctx = api.context("alice", "zoo", &request).await.expect("context");
    assert!(ctx.total_tokens <= 400 && ctx.total_tokens > 0, "{ctx:?}");
    assert_eq!(ctx.messages.last().and_then(|m| m.content.as_deref()), Some("the quokka smiles"));
    let memory = ctx.pieces.iter().find(|p| p.section == ContextSection::Memories).expect("the memory is retrieved");
    assert_eq!(memory.source, ContextSource::Memory { id: fact.id.clone(), version: 1 });
    let zero = ContextRequest::with_budget(0);
    assert_eq!(api.context("alice", "zoo", &zero).await.expect_err("budget 0").code, ErrorCode::InvalidArgument);
    let absent = api.context("alice", "nope", &request).await.expect_err("no session");
    assert_eq!(absent.code, ErrorCode::NotFound);

    // Session metadata, and deleting one event.
    let mut topic = engram_core::model::JsonMap::new();
    topic.insert("topic".into(), json!("animals"));
    let s = api.set_session_metadata("alice", "zoo", topic.clone()).await.expect("metadata");
    assert_eq!(s.metadata, topic);
    let gone = api.delete_event("alice", "zoo", seen.first_seq).await.expect("delete event");
    assert_eq!(gone.text.as_deref(), Some("the quokka smiles"));
    let left = api.history("alice", "zoo", &HistoryQuery::default()).await.expect("history");
    assert!(left.events.iter().all(|e| e.seq != seen.first_seq), "{left:?}");
    let again = api.delete_event("alice", "zoo", seen.first_seq).await.expect_err("already deleted");
    assert_eq!(again.code, ErrorCode::NotFound);

    // One update of retention and metadata together: refused whole, or applied whole.
    let three = ["koalas sleep", "wombats dig", "emus run"].map(|t| NewEvent::message(Role::User, t)).to_vec();
    api.append("alice", "zoo", three, AppendOptions::default()).await.expect("append");
    let left = api.history("alice", "zoo", &HistoryQuery::default()).await.expect("history");
    assert_eq!(left.events.len(), 3);
    let keep_one = engram_core::model::RetentionPolicy { keep_last: Some(1), ..Default::default() };
    let mut huge = engram_core::model::JsonMap::new();
    huge.insert("notes".into(), json!("n".repeat(engram_core::limits::MAX_METADATA_BYTES + 1)));
    let update = |retention, metadata| UpdateSessionRequest { retention, metadata };
    let refused = api
        .update_session("alice", "zoo", update(Some(keep_one.clone()), Some(huge)))
        .await
        .expect_err("metadata over its limit");
    assert_eq!((refused.code, refused.field.as_deref()), (ErrorCode::InvalidArgument, Some("metadata")));
    let unchanged = api.history("alice", "zoo", &HistoryQuery::default()).await.expect("history");
    assert_eq!(unchanged.events, left.events, "a refused update trims nothing");
    let s = api.get_session("alice", "zoo").await.expect("session");
    assert_eq!((s.retention.keep_last, &s.metadata), (None, &topic));
    let neither = api.update_session("alice", "zoo", update(None, None)).await.expect_err("nothing to update");
    assert_eq!(neither.code, ErrorCode::InvalidArgument);
    let mut renamed = engram_core::model::JsonMap::new();
    renamed.insert("topic".into(), json!("marsupials"));
    let s = api.update_session("alice", "zoo", update(Some(keep_one), Some(renamed.clone()))).await.expect("update");
    assert_eq!((s.retention.keep_last, &s.metadata), (Some(1), &renamed));
    let kept = api.history("alice", "zoo", &HistoryQuery::default()).await.expect("history");
    let newest = left.events.last().expect("events left").seq;
    assert_eq!(kept.events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![newest]);

    // Large texts become blobs, readable by hash.
    let big = "x".repeat(40_000);
    api.append("alice", "other", vec![NewEvent::message(Role::Tool, big.clone())], AppendOptions::default())
        .await
        .expect("big");
    let stored = api.history("alice", "other", &HistoryQuery::default()).await.expect("h");
    let blob = stored.events[0].blob.clone().expect("stored as a blob");
    assert_eq!(api.get_blob(&blob.sha256).await.expect("blob"), big.as_bytes());

    // Watch: the backlog after a sequence, then live appends.
    let mut stream = api.watch("alice", "chat", 1).await.expect("watch");
    assert_eq!(next(&mut stream).await.expect("item").expect("event").seq, 2);
    assert_eq!(next(&mut stream).await.expect("item").expect("event").seq, 3);
    api.append("alice", "chat", vec![NewEvent::message(Role::User, "live")], AppendOptions::default())
        .await
        .expect("append");
    let live = next(&mut stream).await.expect("item").expect("event");
    assert_eq!((live.seq, live.text.as_deref()), (4, Some("live")));
    drop(stream);
    assert_eq!(api.watch("alice", "nope", 0).await.err().map(|e| e.code), Some(ErrorCode::NotFound));

    // Session retention, then delete and forget with receipts.
    let retention = engram_core::model::RetentionPolicy { keep_last: Some(1), ..Default::default() };
    let s = api.set_session_retention("alice", "other", retention).await.expect("retention");
    assert_eq!(s.retention.keep_last, Some(1));
    let receipt = api.delete_session("alice", "chat-b").await.expect("delete fork");
    assert_eq!(receipt.session.as_deref(), Some("chat-b"));
    let mut doomed = api.watch("alice", "other", u64::MAX - 1).await.expect("watch");
    let receipt = api.forget_identity("alice").await.expect("forget");
    // An open watch of a forgotten session ends with an error rather than waiting forever.
    let ended = next(&mut doomed).await.expect("an item").expect_err("the session is gone");
    assert_eq!(ended.code, ErrorCode::NotFound);
    assert!(receipt.events >= 4, "{receipt:?}");
    assert_eq!(api.get_identity("alice").await.expect_err("forgotten").code, ErrorCode::NotFound);
    assert_eq!(api.get_blob(&blob.sha256).await.expect_err("blob gone").code, ErrorCode::NotFound);
    let after = SearchQuery { consistent: true, min_seq: None, ..query };
    assert!(api.search(&after).await.expect("search").hits.is_empty(), "forgotten words are not found");
    let gone = api.context("alice", "zoo", &ContextRequest::with_budget(400)).await.expect_err("forgotten");
    assert_eq!(gone.code, ErrorCode::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_backend() {
    let api = engram_client::connect(engram_client::Backend::InMemory).expect("in memory");
    suite(api.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_backend() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = common::open_server(dir.path()).await;
    let api = Remote::new(&server.url(), None).expect("client");
    suite(&api).await;
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_backend_with_a_tenant_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = common::keyed_server(dir.path()).await;
    let admin = Remote::new(&server.url(), Some(common::ADMIN_KEY)).expect("client");
    admin
        .create_tenant(&engram_core::api::CreateTenantRequest { name: "acme".into(), ..Default::default() })
        .await
        .expect("tenant");
    let key = admin.create_api_key("acme", "suite").await.expect("key");
    // Tenants list in pages and by metadata, over HTTP as in the library.
    let plan = json!({ "plan": "pro" }).as_object().cloned().expect("object");
    let pro =
        engram_core::api::CreateTenantRequest { name: "zeta".into(), metadata: plan.clone(), ..Default::default() };
    admin.create_tenant(&pro).await.expect("tenant");
    let first = admin.list_tenants(&ListQuery { limit: 2, ..ListQuery::default() }).await.expect("page");
    let names = |page: &engram_core::model::Page<engram_core::model::Tenant>| {
        page.items.iter().map(|t| t.name.clone()).collect::<Vec<_>>()
    };
    assert_eq!(
        (names(&first), first.next_cursor.as_deref()),
        (vec!["acme".to_string(), "default".into()], Some("default"))
    );
    let rest = admin.list_tenants(&ListQuery { after: first.next_cursor, ..ListQuery::default() }).await.expect("rest");
    assert_eq!((names(&rest), rest.next_cursor), (vec!["zeta".to_string()], None));
    let by_plan = admin.list_tenants(&ListQuery { metadata: plan, ..ListQuery::default() }).await.expect("filter");
    assert_eq!(names(&by_plan), vec!["zeta".to_string()]);
    let api = admin.with_key(Some(&key.secret));
    suite(&api).await;
    // The suite wrote into acme only.
    assert!(server.db().list_identities("default", &Default::default()).expect("list").items.is_empty());
    // Tenant updates: refused in part (no embedding model on this server), nothing changes.
    let ttl = |ms| engram_core::model::RetentionPolicy { ttl_ms: Some(ms), ..Default::default() };
    let local = Some(engram_core::model::EmbedderKind::Local);
    let refused = admin.update_tenant("acme", Some(ttl(60_000)), local).await.expect_err("no model loaded");
    assert_eq!((refused.code, refused.field.as_deref()), (ErrorCode::InvalidArgument, Some("embedder")));
    assert_eq!(admin.get_tenant("acme").await.expect("tenant").retention.ttl_ms, None);
    let updated = admin.update_tenant("acme", Some(ttl(60_000)), None).await.expect("update");
    assert_eq!(updated.retention.ttl_ms, Some(60_000));
    admin.compact().await.expect("compact");
    assert_eq!(api.compact().await.expect_err("a tenant key is no admin key").code, ErrorCode::Forbidden);
    // The admin reports and key lookups the library offers, over HTTP.
    let report = admin.verify().await.expect("verify");
    assert!(report.is_ok() && report.values_checked > 0 && report.index_checked, "{report:?}");
    let inspected = admin.inspect().await.expect("inspect");
    let acme = inspected.tenants.iter().find(|t| t.name == "acme").expect("acme is counted");
    // The suite ends by forgetting alice: bob is what acme holds.
    assert!(acme.identities == 1 && acme.by_identity.contains_key("bob"), "{inspected:?}");
    assert_eq!(inspected.api_keys, 1);
    server.db().wait_for_indexes().expect("indexes caught up");
    let stats = admin.index_stats().await.expect("index stats");
    assert_eq!(stats.marks.applied, server.db().last_change_seq(), "{stats:?}");
    assert!(stats.poisoned.is_none() && stats.failure.is_none(), "{stats:?}");
    let all_keys = admin.list_all_api_keys().await.expect("keys");
    assert_eq!(all_keys.iter().map(|k| k.key_id.as_str()).collect::<Vec<_>>(), vec![key.key.key_id.as_str()]);
    let found = admin.get_api_key(&key.key.key_id).await.expect("key");
    assert_eq!((found.tenant.as_str(), found.label.as_str()), ("acme", "suite"));
    assert_eq!(admin.get_api_key("nokey").await.expect_err("no such key").code, ErrorCode::NotFound);
    for refused in
        [api.verify().await.map(drop), api.inspect().await.map(drop), api.list_all_api_keys().await.map(drop)]
    {
        assert_eq!(refused.expect_err("admin only").code, ErrorCode::Forbidden);
    }
    // Dump over HTTP, restore into another server: the same records, the same dump.
    let turns = ["one", "two", "three"].map(|t| NewEvent::message(Role::User, t)).to_vec();
    api.append("bob", "log", turns, AppendOptions::default()).await.expect("append");
    let acme_only = engram::DumpFilter { tenant: Some("acme".into()), ..Default::default() };
    let mut dumped = Vec::new();
    let written = admin.dump(&acme_only, &mut dumped).await.expect("dump");
    assert_eq!(written as usize, dumped.len());
    let text = String::from_utf8(dumped.clone()).expect("JSON lines");
    assert!(text.starts_with("{\"engram_dump\":2"), "{text}");
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other = common::open_server(other_dir.path()).await;
    let other_admin = Remote::new(&other.url(), None).expect("client");
    let stats = other_admin.restore(dumped.clone()).await.expect("restore");
    assert_eq!(stats.records as usize, text.lines().count() - 2, "{stats:?}");
    let restored = other.db().history("acme", "bob", "log", &HistoryQuery::default()).expect("history");
    assert_eq!(restored.events.iter().filter_map(|e| e.text.as_deref()).collect::<Vec<_>>(), ["one", "two", "three"]);
    let mut again = Vec::new();
    other_admin.dump(&acme_only, &mut again).await.expect("dump again");
    assert_eq!(String::from_utf8(again).expect("JSON lines"), text, "dump -> restore -> dump is identical");
    let twice = other_admin.restore(dumped).await.expect_err("the records exist");
    assert_eq!(twice.code, ErrorCode::Conflict);
    let not_a_dump = other_admin.restore("hello\n").await.expect_err("not a dump");
    assert_eq!((not_a_dump.code, not_a_dump.field.as_deref()), (ErrorCode::InvalidArgument, Some("line 1")));
    assert_eq!(api.dump(&acme_only, &mut Vec::new()).await.expect_err("admin only").code, ErrorCode::Forbidden);
    assert_eq!(api.restore("x").await.expect_err("admin only").code, ErrorCode::Forbidden);
    let lone_session = engram::DumpFilter { session: Some("log".into()), ..Default::default() };
    let refused = admin.dump(&lone_session, &mut Vec::new()).await.expect_err("a session needs its identity");
    assert_eq!((refused.code, refused.field.as_deref()), (ErrorCode::InvalidArgument, Some("session")));
    let not_text = other_admin.restore(vec![0xff, 0xfe, b'\n']).await.expect_err("not UTF-8");
    assert_eq!((not_text.code, not_text.field.as_deref()), (ErrorCode::InvalidArgument, Some("line 1")));
    other.shutdown().await.expect("clean shutdown");
    server.shutdown().await.expect("clean shutdown");
}

async fn next(stream: &mut engram_client::EventStream) -> Option<engram_client::Result<engram_core::model::Event>> {
    tokio::time::timeout(Duration::from_secs(10), stream.next()).await.expect("an event in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_ends_when_the_store_refuses_writes() {
    use engram::storage::{FaultyStore, MemoryStore};
    let (store, faults) = FaultyStore::new(MemoryStore::new());
    let db = engram::Engram::with_store(std::sync::Arc::new(store), engram::Options::default()).expect("open");
    let api = engram_client::Embedded::new(db, engram::DEFAULT_TENANT);
    api.append("a", "s", vec![NewEvent::message(Role::User, "hi")], AppendOptions::default()).await.expect("append");
    let mut stream = api.watch("a", "s", 1).await.expect("watch");
    faults.fail_sync.store(true, std::sync::atomic::Ordering::SeqCst);
    let failed = api.append("a", "s", vec![NewEvent::message(Role::User, "lost?")], AppendOptions::default()).await;
    assert_eq!(failed.expect_err("sync fails").code, ErrorCode::Unavailable);
    // Whatever the stream showed before, it ends with the store's error, not silence.
    let mut last = None;
    while let Some(item) = next(&mut stream).await {
        last = Some(item);
    }
    assert_eq!(last.expect("an item").expect_err("ends with an error").code, ErrorCode::Unavailable);
}

/// `Embedded` reads short pages and state documents in place when they are in memory and
/// hands the rest to the blocking pool: from a cold store, a warm one, and past the
/// in-place page size, its answers are the library's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_reads_in_place_or_on_the_pool_answer_the_same() {
    use engram_core::model::HistoryQuery;
    let dir = tempfile::tempdir().expect("tempdir");
    let turns = || (0..500).map(|i| NewEvent::message(Role::User, format!("turn {i} {}", "x".repeat(200)))).collect();
    {
        let db = engram::Engram::open(dir.path(), engram::Options::default()).expect("open");
        for _ in 0..4 {
            db.append(engram::DEFAULT_TENANT, "a", "s", turns(), AppendOptions::default()).expect("append");
        }
    }
    let db = engram::Engram::open(dir.path(), engram::Options::default()).expect("reopen");
    let api = engram_client::Embedded::new(db.clone(), engram::DEFAULT_TENANT);
    let queries = [
        HistoryQuery::default(),
        HistoryQuery::last(50),
        HistoryQuery { limit: engram_client::INLINE_HISTORY_LIMIT + 1, ..HistoryQuery::default() },
        HistoryQuery { limit: 1000, after: Some(900), ..HistoryQuery::default() },
    ];
    for round in ["cold", "warm"] {
        for q in &queries {
            let got = api.history("a", "s", q).await.expect("history");
            let want = db.history(engram::DEFAULT_TENANT, "a", "s", q).expect("library");
            assert_eq!(got, want, "{round}: {q:?}");
        }
    }
    // State documents too.
    let scope = engram_core::model::StateScope::Session { identity: "a", session: "s" };
    let put = engram_core::model::StatePrecondition::Absent;
    db.put_state(engram::DEFAULT_TENANT, scope, "plan", serde_json::json!({"step": 1}), put).expect("put");
    drop((api, db));
    let db = engram::Engram::open(dir.path(), engram::Options::default()).expect("reopen");
    let api = engram_client::Embedded::new(db.clone(), engram::DEFAULT_TENANT);
    for round in ["cold", "warm"] {
        let want = db.get_state(engram::DEFAULT_TENANT, scope, "plan").expect("library");
        assert!(want.is_some());
        assert_eq!(api.get_state(scope, "plan").await.expect("get"), want, "{round}");
        assert_eq!(api.get_state(scope, "none").await.expect("get"), None, "{round}");
    }
}
