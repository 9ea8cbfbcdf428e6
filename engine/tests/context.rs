//! Context assembly: the budget is never exceeded, tool calls travel with their results,
//! large outputs are cut with a marker, old facts are retrieved, pinned state and pending
//! approvals are included, forgotten or superseded data never appears, and the same state
//! gives the same answer.

use engram::*;
use proptest::prelude::*;
use serde_json::json;
use std::collections::HashSet;

const T: &str = DEFAULT_TENANT;

fn mem() -> Engram {
    Engram::open_in_memory(Options { retention_sweep_interval_ms: None, ..Options::default() }).expect("open")
}

fn append(db: &Engram, session: &str, events: Vec<NewEvent>) -> AppendResult {
    db.append(T, "alice", session, events, AppendOptions::default()).expect("append")
}

fn msg(role: Role, text: &str) -> NewEvent {
    NewEvent::message(role, text)
}

fn call(id: &str, name: &str, args: serde_json::Value) -> NewEvent {
    NewEvent { call_id: Some(id.into()), name: Some(name.into()), ..NewEvent::with_data(EventKind::ToolCall, args) }
}

fn result(id: &str, text: &str) -> NewEvent {
    NewEvent {
        kind: Some(EventKind::ToolResult),
        call_id: Some(id.into()),
        text: Some(text.into()),
        ..NewEvent::default()
    }
}

fn context(db: &Engram, session: &str, request: &ContextRequest) -> ContextResponse {
    db.context(T, "alice", session, request).expect("context")
}

fn contents(r: &ContextResponse) -> Vec<String> {
    r.messages.iter().map(|m| m.content.clone().unwrap_or_default()).collect()
}

/// The invariants every answer keeps, whatever the request.
fn check_invariants(r: &ContextResponse) {
    assert!(r.total_tokens <= r.budget_tokens, "{} tokens over a budget of {}", r.total_tokens, r.budget_tokens);
    assert_eq!(r.total_tokens, count_chat_tokens(r.tokenizer, &r.messages), "the reported count is the real count");
    // Every tool message answers a call of the assistant message before its run of tool
    // messages, and every call is answered.
    let mut open: Vec<String> = Vec::new();
    for (i, m) in r.messages.iter().enumerate() {
        match m.role {
            Role::Tool => {
                let id = m.tool_call_id.clone().expect("a tool message has its call id");
                let at = open
                    .iter()
                    .position(|c| *c == id)
                    .unwrap_or_else(|| panic!("message {i}: result {id} without its call"));
                open.remove(at);
            }
            _ => {
                assert!(open.is_empty(), "message {i}: calls {open:?} without results");
                open = m.tool_calls.iter().map(|c| c.id.clone()).collect();
                let unique: HashSet<&String> = open.iter().collect();
                assert_eq!(unique.len(), open.len(), "message {i}: repeated call ids {open:?}");
                for c in &m.tool_calls {
                    assert!(c.id.len() <= 40, "call id {} is longer than OpenAI accepts", c.id);
                    let name = &c.function.name;
                    assert!(
                        !name.is_empty()
                            && name.len() <= 64
                            && name.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-'),
                        "tool name {name:?}"
                    );
                }
            }
        }
    }
    assert!(open.is_empty(), "calls {open:?} without results at the end");
    let parts: u32 = r.pieces.iter().map(|p| p.tokens).sum();
    assert_eq!(parts + r.framing_tokens, r.total_tokens);
    for p in &r.pieces {
        assert!(p.message < r.messages.len());
    }
}

#[test]
fn a_conversation_in_chat_form_with_every_piece_explained() {
    let db = mem();
    append(
        &db,
        "chat",
        vec![
            msg(Role::System, "You are a travel assistant."),
            msg(Role::User, "I want to fly to Lisbon in May."),
            msg(Role::Assistant, "Let me look for flights."),
            call("c1", "search_flights", json!({"to": "LIS", "month": 5})),
            result("c1", "3 flights found: TP123, FR456, U2789"),
            msg(Role::Assistant, "I found three flights."),
            msg(Role::User, "Book the cheapest one."),
        ],
    );
    db.put_state(
        T,
        StateScope::Identity { identity: "alice" },
        "pinned.profile",
        json!({"seat": "aisle"}),
        StatePrecondition::None,
    )
    .expect("state");
    db.put_state(
        T,
        StateScope::Session { identity: "alice", session: "chat" },
        "scratch",
        json!({"x": 1}),
        StatePrecondition::None,
    )
    .expect("state");
    db.put_memory(T, "alice", NewMemory::fact("Alice prefers the cheapest flights, even with a layover."))
        .expect("memory");
    db.wait_for_indexes().expect("indexed");

    let r = context(&db, "chat", &ContextRequest::with_budget(4000));
    check_invariants(&r);
    let texts = contents(&r);
    assert_eq!(r.messages[0].role, Role::System);
    assert_eq!(texts[0], "You are a travel assistant.");
    let pinned = texts.iter().find(|t| t.starts_with("Pinned state:")).expect("pinned block");
    assert!(pinned.contains("pinned.profile") && pinned.contains("aisle"), "{pinned}");
    assert!(!texts.iter().any(|t| t.contains("scratch")), "an unpinned document stays out");
    let memories = texts.iter().find(|t| t.starts_with("Relevant memories:")).expect("memories block");
    assert!(memories.contains("cheapest flights"), "{memories}");
    // The recent turns end the list, oldest first, in chat form.
    let n = r.messages.len();
    assert_eq!(texts[n - 1], "Book the cheapest one.");
    assert_eq!(texts[n - 2], "I found three flights.");
    assert_eq!(r.messages[n - 3].role, Role::Tool);
    assert_eq!(r.messages[n - 3].tool_call_id.as_deref(), Some("c1"));
    assert_eq!(r.messages[n - 4].tool_calls[0].function.name, "search_flights");
    assert_eq!(r.messages[n - 4].tool_calls[0].function.arguments, r#"{"month":5,"to":"LIS"}"#);
    assert_eq!(r.recent_from_seq, Some(2), "everything after the system message fits");
    // The explanation names each source and why it is there.
    let because = |source: &ContextSource| r.pieces.iter().find(|p| &p.source == source).map(|p| p.because);
    assert_eq!(because(&ContextSource::Event { session: "chat".into(), seq: 1 }), Some(IncludedBecause::System));
    assert_eq!(because(&ContextSource::Event { session: "chat".into(), seq: 7 }), Some(IncludedBecause::Recent));
    let pinned_piece = r.pieces.iter().find(|p| p.section == ContextSection::Pinned).expect("pinned piece");
    assert_eq!(pinned_piece.source, ContextSource::State { session: None, key: "pinned.profile".into(), version: 1 });
    let memory_piece = r.pieces.iter().find(|p| p.section == ContextSection::Memories).expect("memory piece");
    assert!(memory_piece.score.is_some_and(|s| s > 0.0));
    // The same state and request give the same answer.
    assert_eq!(context(&db, "chat", &ContextRequest::with_budget(4000)), r);
    // Naming the pinned keys replaces the prefix rule.
    let named = ContextRequest { pinned_state: Some(vec!["scratch".into()]), ..ContextRequest::with_budget(4000) };
    let r2 = context(&db, "chat", &named);
    let pinned = contents(&r2).into_iter().find(|t| t.starts_with("Pinned state:")).expect("pinned block");
    assert!(pinned.contains("scratch") && !pinned.contains("aisle"), "{pinned}");
}

#[test]
fn the_recent_turns_are_newest_first_and_contiguous_within_the_budget() {
    let db = mem();
    let turns: Vec<NewEvent> = (1..=200)
        .map(|i| msg(if i % 2 == 1 { Role::User } else { Role::Assistant }, &format!("turn number {i} says something")))
        .collect();
    append(&db, "long", turns);
    let request = ContextRequest { memories_k: 0, related_k: 0, ..ContextRequest::with_budget(300) };
    let r = context(&db, "long", &request);
    check_invariants(&r);
    let texts = contents(&r);
    assert_eq!(texts.last().map(String::as_str), Some("turn number 200 says something"));
    let from = r.recent_from_seq.expect("some turns fit");
    assert!(from > 150, "300 tokens hold a few turns, not {from}");
    let expected: Vec<String> = (from..=200).map(|i| format!("turn number {i} says something")).collect();
    assert_eq!(texts, expected, "contiguous, oldest first");
    let dropped =
        r.dropped.iter().find(|d| d.section == ContextSection::Recent).expect("the first turn that did not fit");
    assert_eq!(dropped.source, ContextSource::Event { session: "long".into(), seq: from - 1 });
    assert_eq!(dropped.because, DroppedBecause::Budget);
    // A budget too small for anything gives nothing, not an error.
    let tiny = context(&db, "long", &ContextRequest { memories_k: 0, related_k: 0, ..ContextRequest::with_budget(5) });
    assert!(tiny.messages.is_empty());
    assert_eq!(tiny.total_tokens, 0);
}

#[test]
fn tool_calls_travel_with_their_results_and_large_outputs_are_cut() {
    let db = mem();
    let big: String = (0..30_000).map(|i| format!("row {i}; ")).collect();
    append(
        &db,
        "tools",
        vec![
            msg(Role::User, "List the rows."),
            // Parallel calls: both results follow, with a note between them.
            call("a", "list_rows", json!({"table": "t1"})),
            call("b", "list_rows", json!({"table": "t2"})),
            msg(Role::User, "(the user waits)"),
            result("b", "t2 is empty"),
            result("a", &big),
            // A call that never got its result, and a result whose call is unknown.
            call("pending", "slow_tool", json!({})),
            result("ghost", "no call for me"),
            msg(Role::Assistant, "Done."),
        ],
    );
    let r = context(&db, "tools", &ContextRequest { memories_k: 0, related_k: 0, ..ContextRequest::with_budget(3000) });
    check_invariants(&r);
    let calls: Vec<&str> = r.messages.iter().flat_map(|m| m.tool_calls.iter().map(|c| c.id.as_str())).collect();
    assert_eq!(calls, ["a", "b"]);
    let big_msg = r.messages.iter().find(|m| m.tool_call_id.as_deref() == Some("a")).expect("result a");
    let text = big_msg.content.as_deref().expect("content");
    assert!(text.starts_with("row 0; row 1;"), "the head is kept");
    assert!(text.trim_end().ends_with("row 29999;"), "the tail is kept");
    let blob = db.history(T, "alice", "tools", &HistoryQuery::default()).expect("history").events[5].blob.clone();
    let sha = blob.expect("a 200 KB output is a blob").sha256;
    assert!(text.contains(&format!("tokens omitted; the whole text is in blob sha256:{sha}")), "marker with the blob");
    let piece =
        r.pieces.iter().find(|p| p.source == ContextSource::Event { session: "tools".into(), seq: 6 }).expect("piece");
    assert!(piece.truncated);
    assert!(piece.tokens <= ContextRequest::DEFAULT_MAX_TOOL_OUTPUT_TOKENS + 8, "{}", piece.tokens);
    let dropped: HashSet<(u64, DroppedBecause)> = r
        .dropped
        .iter()
        .filter_map(|d| match &d.source {
            ContextSource::Event { seq, .. } => Some((*seq, d.because)),
            _ => None,
        })
        .collect();
    assert!(dropped.contains(&(7, DroppedBecause::UnpairedToolCall)), "{dropped:?}");
    assert!(dropped.contains(&(8, DroppedBecause::UnpairedToolResult)), "{dropped:?}");
    assert!(!contents(&r).iter().any(|t| t.contains("no call for me")));
    // A budget that cannot hold the call with its results holds neither.
    let small =
        context(&db, "tools", &ContextRequest { memories_k: 0, related_k: 0, ..ContextRequest::with_budget(200) });
    check_invariants(&small);
    assert_eq!(contents(&small), ["Done."]);
}

#[test]
fn reused_and_overlong_call_ids_and_odd_tool_names_still_make_a_valid_list() {
    let db = mem();
    let long = format!("call_{}", "x".repeat(60));
    append(
        &db,
        "ids",
        vec![
            // A framework that reuses ids: two exchanges with the id "c".
            call("c", "first", json!({})),
            result("c", "first result"),
            call("c", "second", json!({})),
            result("c", "second result"),
            result("c", "a duplicate answer"),
            // Overlapping calls that reuse an id inside one unit.
            call("c", "alpha", json!({})),
            call("x", "beta", json!({})),
            result("c", "alpha done"),
            call("c", "gamma", json!({})),
            result("c", "gamma done"),
            result("x", "beta done"),
            call(&long, "ns.search flights", json!({})),
            result(&long, "long id done"),
        ],
    );
    let r = context(&db, "ids", &ContextRequest { memories_k: 0, related_k: 0, ..ContextRequest::with_budget(4000) });
    check_invariants(&r);
    let tool_texts: Vec<String> =
        r.messages.iter().filter(|m| m.role == Role::Tool).map(|m| m.content.clone().unwrap_or_default()).collect();
    assert_eq!(
        tool_texts,
        ["first result", "second result", "alpha done", "gamma done", "beta done", "long id done"],
        "each result with its own call; the duplicate answer is left out"
    );
    let dup = r.dropped.iter().find(|d| d.source == ContextSource::Event { session: "ids".into(), seq: 5 });
    assert_eq!(dup.map(|d| d.because), Some(DroppedBecause::UnpairedToolResult));
    let names: Vec<&str> =
        r.messages.iter().flat_map(|m| m.tool_calls.iter().map(|c| c.function.name.as_str())).collect();
    assert_eq!(names, ["first", "second", "alpha", "beta", "gamma", "ns_search_flights"]);
}

#[test]
fn many_retrieved_lines_are_charged_what_they_add_to_their_block() {
    let db = mem();
    append(&db, "chat", vec![msg(Role::System, "Be brief."), msg(Role::User, "Which facts are true?")]);
    for i in 0..40 {
        db.put_memory(T, "alice", NewMemory::fact(format!("Fact number {i} is true."))).expect("memory");
    }
    db.wait_for_indexes().expect("indexed");
    let request = ContextRequest {
        memories_k: 40,
        shares: ContextShares { memories: 0.9, ..ContextShares::default() },
        ..ContextRequest::with_budget(4000)
    };
    let r = context(&db, "chat", &request);
    check_invariants(&r);
    assert_eq!(r.pieces.iter().filter(|p| p.section == ContextSection::Memories).count(), 40);
    assert!(r.framing_tokens >= 3 * r.messages.len() as u32, "{}", r.framing_tokens);
    // Excluding every kind leaves no recent turns and retrieves no events.
    let none =
        ContextRequest { exclude_kinds: EventKind::ALL.to_vec(), memories_k: 0, ..ContextRequest::with_budget(4000) };
    let r = context(&db, "chat", &none);
    check_invariants(&r);
    assert!(r.pieces.iter().all(|p| p.section == ContextSection::System), "{:?}", r.pieces);
}

#[test]
fn a_planted_fact_from_far_back_is_retrieved() {
    let db = mem();
    let mut events = vec![
        msg(Role::User, "Hi! Quick thing before we start: my sister Zelda lives in Reykjavik."),
        msg(Role::Assistant, "Noted!"),
    ];
    let topics = ["the weather", "a recipe for soup", "football scores", "a movie", "gardening tips", "the news"];
    for i in 0..600 {
        let topic = topics[i % topics.len()];
        let role = if i % 2 == 0 { Role::User } else { Role::Assistant };
        events.push(msg(role, &format!("Message {i} is small talk about {topic}.")));
    }
    for chunk in events.chunks(500) {
        append(&db, "long", chunk.to_vec());
    }
    db.wait_for_indexes().expect("indexed");
    let request =
        ContextRequest { query: Some("Where does my sister Zelda live?".into()), ..ContextRequest::with_budget(1500) };
    let r = context(&db, "long", &request);
    check_invariants(&r);
    assert!(r.recent_from_seq.expect("recent turns") > 100, "the fact is far outside the recent turns");
    let related = contents(&r).into_iter().find(|t| t.starts_with("Relevant earlier conversation:")).expect("related");
    assert!(related.contains("Reykjavik"), "{related}");
    let piece = r
        .pieces
        .iter()
        .find(|p| p.source == ContextSource::Event { session: "long".into(), seq: 1 })
        .expect("the planted turn is a piece");
    assert_eq!((piece.section, piece.because), (ContextSection::Related, IncludedBecause::Relevant));
    assert!(r.indexed_seq.is_some());
    // Without a query, the last user turn is the query.
    append(&db, "long", vec![msg(Role::User, "Remind me, which city is Zelda in?")]);
    db.wait_for_indexes().expect("indexed");
    let r = context(&db, "long", &ContextRequest::with_budget(1500));
    check_invariants(&r);
    assert!(contents(&r).iter().any(|t| t.starts_with("Relevant earlier conversation:") && t.contains("Reykjavik")));
}

#[test]
fn pending_approvals_are_the_requests_without_a_decision() {
    let db = mem();
    let approval = |kind, id: &str, text: &str| NewEvent {
        kind: Some(kind),
        call_id: Some(id.into()),
        name: Some("delete_repo".into()),
        text: Some(text.into()),
        ..NewEvent::default()
    };
    append(&db, "ops", vec![approval(EventKind::ApprovalRequest, "r1", "Delete repository old-site?")]);
    append(&db, "ops", vec![approval(EventKind::ApprovalRequest, "r2", "Delete repository tmp?")]);
    append(&db, "ops", vec![approval(EventKind::ApprovalDecision, "r2", "approved")]);
    let filler: Vec<NewEvent> = (0..200).map(|i| msg(Role::User, &format!("status update {i}"))).collect();
    append(&db, "ops", filler);
    let request = ContextRequest { memories_k: 0, related_k: 0, ..ContextRequest::with_budget(600) };
    let r = context(&db, "ops", &request);
    check_invariants(&r);
    let block = contents(&r).into_iter().find(|t| t.starts_with("Pending approvals")).expect("approvals");
    assert!(block.contains("call r1 for delete_repo") && block.contains("old-site"), "{block}");
    assert!(!block.contains("r2"), "{block}");
    assert!(r.pieces.iter().any(|p| p.because == IncludedBecause::PendingApproval
        && p.source == ContextSource::Event { session: "ops".into(), seq: 1 }));
    // Out of the lookback, out of the piece.
    assert!(r.recent_from_seq.expect("recent turns") > 3, "the requests are not among the recent turns");
    let short = ContextRequest { approvals_lookback: 10, ..request };
    assert!(!contents(&context(&db, "ops", &short)).iter().any(|t| t.starts_with("Pending approvals")));
}

#[test]
fn superseded_and_forgotten_data_never_appears() {
    let db = mem();
    append(&db, "chat", vec![msg(Role::User, "What is my favourite colour?")]);
    let m = db.put_memory(T, "alice", NewMemory::fact("Alice's favourite colour is green.")).expect("memory");
    db.update_memory(T, "alice", &m.id, NewMemory::fact("Alice's favourite colour is purple.")).expect("update");
    let gone = db.put_memory(T, "alice", NewMemory::fact("Alice's favourite colour used to be red.")).expect("memory");
    db.delete_memory(T, "alice", &gone.id).expect("delete");
    db.wait_for_indexes().expect("indexed");
    let r = context(&db, "chat", &ContextRequest::with_budget(2000));
    check_invariants(&r);
    let all = contents(&r).join("\n");
    assert!(all.contains("purple"), "{all}");
    assert!(!all.contains("green") && !all.contains("red."), "{all}");
    let receipt = db.forget_identity(T, "alice").expect("forget");
    assert!(receipt.events > 0);
    match db.context(T, "alice", "chat", &ContextRequest::with_budget(2000)) {
        Err(Error::NotFound { .. }) => {}
        other => panic!("expected not found, got {other:?}"),
    }
    // A new session of the same identity finds nothing of the old one.
    append(&db, "again", vec![msg(Role::User, "What is my favourite colour?")]);
    db.wait_for_indexes().expect("indexed");
    let r = context(&db, "again", &ContextRequest::with_budget(2000));
    assert_eq!(contents(&r), ["What is my favourite colour?"]);
}

#[test]
fn a_fork_sees_the_prefix_it_inherits() {
    let db = mem();
    append(&db, "main", vec![msg(Role::System, "Be brief."), msg(Role::User, "one"), msg(Role::User, "two")]);
    db.fork_session(T, "alice", "main", Some(2), "alt", SessionConfig::default()).expect("fork");
    append(&db, "alt", vec![msg(Role::User, "three (alt)")]);
    let r = context(&db, "alt", &ContextRequest { memories_k: 0, related_k: 0, ..ContextRequest::with_budget(500) });
    check_invariants(&r);
    assert_eq!(contents(&r), ["Be brief.", "one", "three (alt)"]);
    assert_eq!(r.pieces[1].source, ContextSource::Event { session: "main".into(), seq: 2 });
}

#[test]
fn bad_requests_name_their_field() {
    let db = mem();
    append(&db, "chat", vec![msg(Role::User, "hi")]);
    let field = |request: ContextRequest| match db.context(T, "alice", "chat", &request) {
        Err(Error::InvalidArgument { field, .. }) => field,
        other => panic!("expected invalid argument, got {other:?}"),
    };
    let base = ContextRequest::with_budget(1000);
    assert_eq!(field(ContextRequest { budget_tokens: 0, ..base.clone() }), "budget_tokens");
    assert_eq!(field(ContextRequest { budget_tokens: u32::MAX, ..base.clone() }), "budget_tokens");
    let shares = ContextShares { memories: 1.5, ..ContextShares::default() };
    assert_eq!(field(ContextRequest { shares, ..base.clone() }), "shares.memories");
    let shares = ContextShares { recent: f32::NAN, ..ContextShares::default() };
    assert_eq!(field(ContextRequest { shares, ..base.clone() }), "shares.recent");
    assert_eq!(field(ContextRequest { memories_k: 1000, ..base.clone() }), "memories_k");
    assert_eq!(field(ContextRequest { max_tool_output_tokens: 10, ..base.clone() }), "max_tool_output_tokens");
    assert_eq!(field(ContextRequest { query: Some("  ".into()), ..base.clone() }), "query");
    assert_eq!(
        field(ContextRequest { pinned_state: Some(vec!["no/slash".into()]), ..base.clone() }),
        "pinned_state[0]"
    );
    assert_eq!(field(ContextRequest { query_vector: Some(vec![f32::NAN]), ..base.clone() }), "query_vector[0]");
    assert!(matches!(db.context(T, "alice", "nope", &base), Err(Error::NotFound { .. })));
    assert!(matches!(db.context(T, "al/ice", "chat", &base), Err(Error::InvalidArgument { .. })));
}

/// One random event of a session: messages of every role, tool calls with or without
/// results, approvals, custom events, now and then a large output.
fn arb_event() -> impl Strategy<Value = (u8, u8, usize)> {
    (0u8..10, 0u8..6, 0usize..200)
}

fn build(db: &Engram, session: &str, spec: &[(u8, u8, usize)]) {
    let mut events = Vec::new();
    for (i, &(kind, call_no, size)) in spec.iter().enumerate() {
        let words = |n: usize| (0..n).map(|w| format!("w{}", (i * 31 + w) % 97)).collect::<Vec<_>>().join(" ");
        let id = format!("c{call_no}");
        events.push(match kind {
            0 => msg(Role::System, &words(size % 20 + 1)),
            1 | 2 => msg(Role::User, &words(size % 40 + 1)),
            3 | 4 => msg(Role::Assistant, &words(size % 40 + 1)),
            5 => call(&id, "tool", json!({"n": size})),
            6 => result(&id, &words(if size > 190 { 4000 } else { size + 1 })),
            7 => {
                NewEvent { call_id: Some(id), ..NewEvent::with_data(EventKind::ApprovalRequest, json!({"ask": size})) }
            }
            8 => {
                NewEvent { call_id: Some(id), ..NewEvent::with_data(EventKind::ApprovalDecision, json!({"ok": true})) }
            }
            _ => NewEvent::with_data(EventKind::Custom, json!({"custom": size})),
        });
    }
    for chunk in events.chunks(500) {
        append(db, session, chunk.to_vec());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn never_over_budget_pairs_intact_newest_kept_and_deterministic(
        spec in prop::collection::vec(arb_event(), 1..120),
        budget in 1u32..3000,
        tokenizer in prop_oneof![Just(TokenizerName::O200kBase), Just(TokenizerName::Cl100kBase)],
        shares in (0.0f32..=1.0, 0.0f32..=1.0, 0.0f32..=1.0),
    ) {
        let db = mem();
        build(&db, "s", &spec);
        // Retrieval reads the indexes: let them settle so that both calls see the same.
        db.wait_for_indexes().expect("indexed");
        let request = ContextRequest {
            tokenizer,
            shares: ContextShares { pinned: shares.0, approvals: shares.1, system: shares.2, ..ContextShares::default() },
            max_tool_output_tokens: 64,
            ..ContextRequest::with_budget(budget)
        };
        let r = context(&db, "s", &request);
        check_invariants(&r);
        // The newest turn the recent turns can hold is there when any recent turn is.
        let history = db.history(T, "alice", "s", &HistoryQuery { limit: 1000, ..HistoryQuery::default() }).expect("history");
        let newest_plain = history.events.iter().rev().find(|e| e.kind == EventKind::Message && e.role != Some(Role::Tool));
        if let (Some(from), Some(newest)) = (r.recent_from_seq, newest_plain) {
            let system_prefix = history.events.iter().take_while(|e| e.kind == EventKind::Message
                && matches!(e.role, Some(Role::System | Role::Developer))).count() as u64;
            if newest.seq > system_prefix && newest.seq >= from {
                prop_assert!(r.pieces.iter().any(|p| p.source == ContextSource::Event { session: "s".into(), seq: newest.seq }),
                    "newest plain turn {} missing though recent turns from {from} are in", newest.seq);
            }
        }
        prop_assert_eq!(context(&db, "s", &request), r);
    }
}
