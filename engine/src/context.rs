//! Context assembly: the messages of one model call, within a token budget, with the reason
//! for every piece.
//!
//! Pieces are chosen in priority order, each up to its share of the budget: pinned state,
//! pending approvals, the system messages that open the session, relevant memories,
//! relevant older events of the identity, and the recent turns, newest first. The recent
//! turns are contiguous: they stop at the first turn that does not fit. A tool call and its
//! results travel together (with whatever happened between them) or not at all.
//!
//! Everything is read from one storage snapshot, except retrieval, which searches the
//! indexes and reads its hits back from storage (so nothing deleted or superseded is used).

use crate::db::Engram;
use crate::directory::load_session;
use crate::error::{Error, Result};
use crate::events::read_history;
use crate::search::MAX_SEARCH_TEXT_BYTES;
use crate::tenants::{load_tenant, tenant_metric};
use crate::tokens::{REPLY_PRIMING_TOKENS, TokenCounter};
use engram_core::context::{
    ChatMessage, ContextPiece, ContextRequest, ContextResponse, ContextSection, ContextSource, DroppedBecause,
    DroppedPiece, FunctionCall, IncludedBecause, ToolCall,
};
use engram_core::keys;
use engram_core::model::{Event, EventKind, HistoryQuery, HitItem, Order, Role, SearchOver, SearchQuery, StateDoc};
use engram_core::records::{SessionRecord, StateRecord, TenantRecord};
use engram_core::validate;
use engram_storage::{Direction, ReadView, Space};
use std::collections::{HashMap, HashSet};

/// State documents whose key starts with this are pinned when a request names none.
pub const PINNED_STATE_PREFIX: &str = "pinned.";
/// Most state keys a request may pin.
pub const MAX_PINNED_STATE_KEYS: usize = 64;
/// Smallest `max_tool_output_tokens`.
pub const MIN_TOOL_OUTPUT_TOKENS: u32 = 64;
/// A tool result is paired with its call only if the call is at most this many events older.
pub const MAX_TOOL_PAIR_DISTANCE: usize = 256;
/// The system piece looks at this many events from the start of the session.
const SYSTEM_SCAN: usize = 64;
/// Events read per page when walking back from the newest.
const PAGE: usize = 256;

impl Engram {
    /// Assembles the messages for a model call in `session`: never more than
    /// `request.budget_tokens` tokens (chat framing included), tool calls and results
    /// paired, large tool outputs cut to head and tail, with the source, the reason and the
    /// cost of every piece and what was left out. The same store state and request give the
    /// same answer.
    ///
    /// Retrieval (memories, older events) needs the indexes; with indexing disabled those
    /// pieces are empty. Give `min_seq` to retrieve what was just written.
    ///
    /// # Errors
    /// `InvalidArgument` naming the field, `NotFound` for the tenant or session, and the
    /// errors of [`Engram::search`].
    pub fn context(
        &self,
        tenant: &str,
        identity: &str,
        session: &str,
        request: &ContextRequest,
    ) -> Result<ContextResponse> {
        validate::id("identity", identity)?;
        validate::id("session", session)?;
        check_request(request)?;
        let snapshot = self.inner.store.snapshot();
        let view: &dyn ReadView = &*snapshot;
        let tenant_record = load_tenant(view, tenant)?;
        if let Some(v) = &request.query_vector {
            let dim = (tenant_record.vector_dim > 0).then_some(tenant_record.vector_dim);
            validate::vector("query_vector", v, dim, tenant_metric(&tenant_record))?;
        }
        let record = load_session(view, tenant, identity, session)?;
        let head_seq = record.head_seq;
        let counter = TokenCounter::new(request.tokenizer);
        let now_ms = self.inner.now_ms();
        let source = Source { view, tenant, tenant_record: &tenant_record, identity, record, now_ms };
        let mut asm = Assembly::new(request, counter);

        // 1. Pinned state.
        let pinned = pinned_lines(view, tenant, identity, session, request, &counter)?;
        asm.fill_block(ContextSection::Pinned, pinned, request.shares.pinned);

        // 2. Pending approvals, among the newest events.
        let mut newest = Newest::new(&source);
        let approvals = pending_approvals(&mut newest, request, &counter)?;
        asm.fill_block(ContextSection::Approvals, approvals, request.shares.approvals);

        // 3. The system messages that open the session.
        let opening = opening_system_messages(&source)?;
        let system_seqs: HashSet<u64> = opening.iter().map(|e| e.seq).collect();
        asm.fill_system(opening, request.shares.system);

        // 4 and 5. Retrieval with the query (or the last user turn).
        let query = match &request.query {
            Some(q) => Some(q.clone()),
            None => last_user_text(&mut newest, request.approvals_lookback.max(PAGE))?,
        };
        let retrieval = (query.is_some() || request.query_vector.is_some()) && self.inner.indexes.get().is_some();
        // A local tenant's query text is embedded once here, not once per search below.
        let query_vector = match (&request.query_vector, &query, self.inner.embedding.get()) {
            (Some(v), _, _) => Some(v.clone()),
            (None, Some(text), Some(e)) if retrieval && crate::embed::embeddable(&tenant_record, e.model().dim()) => e
                .model()
                .embed(&[text.as_str()])
                .ok()
                .and_then(|mut v| v.pop())
                .filter(|v| v.iter().all(|x| x.is_finite())),
            _ => None,
        };
        let mut indexed_seq = None;
        if retrieval && request.memories_k > 0 {
            let results = self.search(
                tenant,
                &SearchQuery {
                    over: SearchOver::Memories,
                    k: request.memories_k,
                    ..retrieval_query(identity, query.as_deref(), query_vector.as_ref(), request)
                },
            )?;
            indexed_seq = Some(results.indexed_seq);
            let lines = results.hits.into_iter().filter_map(|hit| memory_line(hit, &counter)).collect();
            asm.fill_block(ContextSection::Memories, lines, request.shares.memories);
        }
        let mut related = Vec::new();
        let kinds: Vec<EventKind> =
            EventKind::ALL.iter().copied().filter(|k| !request.exclude_kinds.contains(k)).collect();
        if retrieval && request.related_k > 0 && !kinds.is_empty() {
            let results = self.search(
                tenant,
                &SearchQuery {
                    over: SearchOver::Events,
                    kinds,
                    // Overfetch: the best hits are often among the recent turns already.
                    k: (request.related_k * 3).min(engram_core::limits::MAX_PAGE_LIMIT),
                    ..retrieval_query(identity, query.as_deref(), query_vector.as_ref(), request)
                },
            )?;
            indexed_seq = Some(indexed_seq.map_or(results.indexed_seq, |s: u64| s.min(results.indexed_seq)));
            related = results.hits;
        }

        // 6. The recent turns, sharing what is left with the related events.
        let mut walker = Walker::new(newest, system_seqs, request, counter);
        let related_cap = if related.is_empty() { 0 } else { asm.cap(request.shares.related).min(asm.left) };
        let recent_cap = asm.cap(request.shares.recent);
        let first = walker.extend(recent_cap.min(asm.left - related_cap))?;
        asm.left -= first;
        // Lines are cut and counted only for the hits that may go in.
        let mut fresh = Vec::new();
        for hit in related {
            let HitItem::Event { event, .. } = &hit.item else { continue };
            if event.session == session && event.seq > head_seq {
                // Written after the snapshot the rest was read from.
                continue;
            }
            let source = event_source(event);
            if walker.holds(&source) || asm.system_holds(&source) {
                let section = ContextSection::Related;
                let because = DroppedBecause::AlreadyIncluded;
                asm.dropped.push(DroppedPiece { section, source, because, score: Some(hit.score), tokens: 0 });
            } else if fresh.len() < request.related_k {
                fresh.extend(event_line(hit, request, &counter));
            }
        }
        asm.fill_block(ContextSection::Related, fresh, request.shares.related);
        loop {
            let more = recent_cap.saturating_sub(walker.used).min(asm.left);
            let added = walker.extend(more)?;
            if added == 0 {
                break;
            }
            asm.left -= added;
            asm.release_block_lines(ContextSection::Related, |l| walker.holds(&l.source));
        }
        let units = walker.finish(&mut asm.dropped);
        let mut response = asm.finish(units, head_seq);
        response.indexed_seq = indexed_seq;
        Ok(response)
    }
}

fn check_request(r: &ContextRequest) -> Result<()> {
    if r.budget_tokens == 0 || r.budget_tokens > ContextRequest::MAX_BUDGET_TOKENS {
        return Err(Error::invalid(
            "budget_tokens",
            format!("is {}; it must be between 1 and {}", r.budget_tokens, ContextRequest::MAX_BUDGET_TOKENS),
        ));
    }
    let s = &r.shares;
    for (name, v) in [
        ("pinned", s.pinned),
        ("approvals", s.approvals),
        ("system", s.system),
        ("memories", s.memories),
        ("related", s.related),
        ("recent", s.recent),
    ] {
        if !(0.0..=1.0).contains(&v) {
            return Err(Error::invalid(format!("shares.{name}"), format!("is {v}; it must be between 0 and 1")));
        }
    }
    for (name, k) in [("memories_k", r.memories_k), ("related_k", r.related_k)] {
        if k > ContextRequest::MAX_K {
            return Err(Error::invalid(name, format!("is {k}; the limit is {}", ContextRequest::MAX_K)));
        }
    }
    if r.max_tool_output_tokens < MIN_TOOL_OUTPUT_TOKENS {
        return Err(Error::invalid(
            "max_tool_output_tokens",
            format!("is {}; it must be at least {MIN_TOOL_OUTPUT_TOKENS}", r.max_tool_output_tokens),
        ));
    }
    if r.approvals_lookback > ContextRequest::MAX_APPROVALS_LOOKBACK {
        return Err(Error::invalid(
            "approvals_lookback",
            format!("is {}; the limit is {}", r.approvals_lookback, ContextRequest::MAX_APPROVALS_LOOKBACK),
        ));
    }
    if let Some(q) = &r.query {
        if q.trim().is_empty() {
            return Err(Error::invalid("query", "must not be blank"));
        }
        validate::len("query", q.len(), MAX_SEARCH_TEXT_BYTES)?;
    }
    if let Some(keys) = &r.pinned_state {
        if keys.len() > MAX_PINNED_STATE_KEYS {
            return Err(Error::invalid(
                "pinned_state",
                format!("names {} keys; the limit is {MAX_PINNED_STATE_KEYS}", keys.len()),
            ));
        }
        for (i, k) in keys.iter().enumerate() {
            validate::id(&format!("pinned_state[{i}]"), k)?;
        }
    }
    Ok(())
}

fn retrieval_query(
    identity: &str,
    text: Option<&str>,
    vector: Option<&Vec<f32>>,
    request: &ContextRequest,
) -> SearchQuery {
    SearchQuery {
        text: text.map(str::to_string),
        vector: vector.cloned(),
        identity: Some(identity.to_string()),
        min_seq: request.min_seq,
        consistent: request.consistent,
        ..SearchQuery::default()
    }
}

/// Where the session's events are read from.
struct Source<'a> {
    view: &'a dyn ReadView,
    tenant: &'a str,
    tenant_record: &'a TenantRecord,
    identity: &'a str,
    record: SessionRecord,
    now_ms: i64,
}

impl Source<'_> {
    fn page(&self, query: &HistoryQuery) -> Result<engram_core::model::HistoryPage> {
        read_history(self.view, self.tenant, self.tenant_record, self.identity, self.record.clone(), query, self.now_ms)
    }
}

/// The session's events, newest first, read a page at a time as they are needed.
struct Newest<'a> {
    source: &'a Source<'a>,
    events: Vec<Event>,
    before: Option<u64>,
    done: bool,
}

impl<'a> Newest<'a> {
    fn new(source: &'a Source<'a>) -> Self {
        Newest { source, events: Vec::new(), before: None, done: false }
    }

    /// The `i`th newest event, if the session has that many.
    fn get(&mut self, i: usize) -> Result<Option<&Event>> {
        while i >= self.events.len() && !self.done {
            let page = self.source.page(&HistoryQuery {
                before: self.before,
                limit: PAGE,
                order: Order::Desc,
                ..HistoryQuery::default()
            })?;
            self.done = page.next_cursor.is_none();
            self.before = page.next_cursor;
            self.events.extend(page.events);
        }
        Ok(self.events.get(i))
    }
}

/// One candidate line of a block section (pinned state, approvals, memories, related).
struct Line {
    source: ContextSource,
    because: IncludedBecause,
    score: Option<f32>,
    text: String,
    /// Tokens of `"\n" + text`.
    tokens: u32,
    truncated: bool,
}

fn line(
    counter: &TokenCounter,
    source: ContextSource,
    because: IncludedBecause,
    score: Option<f32>,
    text: String,
    truncated: bool,
) -> Line {
    let tokens = counter.text(&format!("\n{text}"));
    Line { source, because, score, text, tokens, truncated }
}

fn heading(section: ContextSection) -> &'static str {
    match section {
        ContextSection::Pinned => "Pinned state:",
        ContextSection::Approvals => "Pending approvals (requested, not yet decided):",
        ContextSection::Memories => "Relevant memories:",
        ContextSection::Related => "Relevant earlier conversation:",
        ContextSection::System | ContextSection::Recent => "",
    }
}

fn pinned_lines(
    view: &dyn ReadView,
    tenant: &str,
    identity: &str,
    session: &str,
    request: &ContextRequest,
    counter: &TokenCounter,
) -> Result<Vec<Line>> {
    let scopes = [
        (keys::identity_state_prefix(tenant, identity), None, "identity"),
        (keys::session_state_prefix(tenant, identity, session), Some(session.to_string()), "session"),
    ];
    let mut lines = Vec::new();
    for (prefix, session_name, scope_name) in scopes {
        let wanted = |key: &str| match &request.pinned_state {
            Some(keys) => keys.iter().any(|k| k == key),
            None => key.starts_with(PINNED_STATE_PREFIX),
        };
        for entry in crate::codec::scan_prefix::<StateRecord>(view, Space::Data, &prefix, Direction::Forward) {
            let (key, record) = entry?;
            let name = keys::trailing_str(&prefix, &key).map_err(|e| Error::corruption(&key, e))?;
            if !wanted(&name) {
                continue;
            }
            let doc: StateDoc = crate::state::to_doc(&key, &name, record)?;
            let text = format!("- {name} ({scope_name} state, version {}): {}", doc.version, doc.value);
            let source = ContextSource::State { session: session_name.clone(), key: name, version: doc.version };
            lines.push(line(counter, source, IncludedBecause::Pinned, None, text, false));
        }
    }
    Ok(lines)
}

/// The text of an event as a model reads it: its text, or its JSON data.
fn event_text(e: &Event) -> String {
    match (&e.text, &e.data) {
        (Some(t), _) => t.clone(),
        (None, Some(d)) => d.to_string(),
        (None, None) => String::new(),
    }
}

/// Cuts a tool output (or any retrieved text) to `max` tokens around a marker naming where
/// the whole text is.
fn cut(counter: &TokenCounter, e: &Event, text: &str, max: u32) -> (String, bool, u32) {
    counter.truncate(text, max, |omitted| {
        let whole = match &e.blob {
            Some(blob) => format!("blob sha256:{}", blob.sha256),
            None => format!("event {}#{}", e.session, e.seq),
        };
        format!("[... {omitted} tokens omitted; the whole text is in {whole} ...]")
    })
}

fn event_source(e: &Event) -> ContextSource {
    ContextSource::Event { session: e.session.clone(), seq: e.seq }
}

fn pending_approvals(newest: &mut Newest<'_>, request: &ContextRequest, counter: &TokenCounter) -> Result<Vec<Line>> {
    let mut decided = HashSet::new();
    let mut pending = Vec::new();
    for i in 0..request.approvals_lookback {
        let Some(e) = newest.get(i)? else { break };
        let Some(call_id) = &e.call_id else { continue };
        match e.kind {
            EventKind::ApprovalDecision => {
                decided.insert(call_id.clone());
            }
            EventKind::ApprovalRequest if !decided.contains(call_id) => pending.push(e.clone()),
            _ => {}
        }
    }
    pending.reverse();
    Ok(pending
        .into_iter()
        .map(|e| {
            let (text, truncated, _) = cut(counter, &e, &event_text(&e), request.max_tool_output_tokens);
            let call_id = e.call_id.as_deref().unwrap_or_default();
            let what = e.name.as_deref().map(|n| format!(" for {n}")).unwrap_or_default();
            let text = format!("- call {call_id}{what} (event #{}): {text}", e.seq);
            line(counter, event_source(&e), IncludedBecause::PendingApproval, None, text, truncated)
        })
        .collect())
}

fn is_system_message(e: &Event) -> bool {
    e.kind == EventKind::Message && matches!(e.role, Some(Role::System | Role::Developer))
}

/// The run of system and developer messages the session opens with.
fn opening_system_messages(source: &Source<'_>) -> Result<Vec<Event>> {
    let page = source.page(&HistoryQuery { limit: SYSTEM_SCAN, ..HistoryQuery::default() })?;
    Ok(page.events.into_iter().take_while(is_system_message).collect())
}

fn last_user_text(newest: &mut Newest<'_>, lookback: usize) -> Result<Option<String>> {
    for i in 0..lookback {
        let Some(e) = newest.get(i)? else { break };
        if e.kind == EventKind::Message
            && e.role == Some(Role::User)
            && let Some(text) = e.text.as_deref().filter(|t| !t.trim().is_empty())
        {
            let mut end = text.len().min(MAX_SEARCH_TEXT_BYTES);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            return Ok(Some(text[..end].to_string()));
        }
    }
    Ok(None)
}

fn memory_line(hit: engram_core::model::SearchHit, counter: &TokenCounter) -> Option<Line> {
    let HitItem::Memory { memory, .. } = hit.item else { return None };
    let source = ContextSource::Memory { id: memory.id.clone(), version: memory.version };
    let text = format!("- ({}) {}", memory.kind, memory.text);
    Some(line(counter, source, IncludedBecause::Relevant, Some(hit.score), text, false))
}

fn event_line(hit: engram_core::model::SearchHit, request: &ContextRequest, counter: &TokenCounter) -> Option<Line> {
    let HitItem::Event { event, .. } = hit.item else { return None };
    let (text, truncated, _) = cut(counter, &event, &event_text(&event), request.max_tool_output_tokens);
    let who = match (event.kind, event.role) {
        (EventKind::Message, Some(role)) => role.as_str(),
        (kind, _) => kind.as_str(),
    };
    let text = format!("- [{} #{}, {who}] {text}", event.session, event.seq);
    Some(line(counter, event_source(&event), IncludedBecause::Relevant, Some(hit.score), text, truncated))
}

/// A block section's chosen lines.
struct Block {
    section: ContextSection,
    lines: Vec<Line>,
}

/// A part of a rendered message, for the explanation.
struct Part {
    /// Index of the message within its unit (or the system piece).
    message: usize,
    source: ContextSource,
    because: IncludedBecause,
    tokens: u32,
    truncated: bool,
}

/// A recent turn, or a tool call with its results and what happened between them.
struct Unit {
    messages: Vec<ChatMessage>,
    parts: Vec<Part>,
    tokens: u32,
    events: Vec<ContextSource>,
}

impl Unit {
    /// Its events as dropped pieces, each with the tokens of its text.
    fn dropped(self, because: DroppedBecause) -> impl Iterator<Item = DroppedPiece> {
        self.parts.into_iter().map(move |p| DroppedPiece {
            section: ContextSection::Recent,
            source: p.source,
            because,
            score: None,
            tokens: p.tokens,
        })
    }
}

/// The budget, the chosen pieces and the dropped ones.
struct Assembly<'r> {
    request: &'r ContextRequest,
    counter: TokenCounter,
    /// Tokens still free.
    left: u32,
    blocks: Vec<Block>,
    /// The opening system messages with their parts and costs (framing included).
    system: Vec<(ChatMessage, Part, u32)>,
    dropped: Vec<DroppedPiece>,
}

impl<'r> Assembly<'r> {
    fn new(request: &'r ContextRequest, counter: TokenCounter) -> Self {
        let left = request.budget_tokens.saturating_sub(REPLY_PRIMING_TOKENS);
        Assembly { request, counter, left, blocks: Vec::new(), system: Vec::new(), dropped: Vec::new() }
    }

    fn cap(&self, share: f32) -> u32 {
        (f64::from(share) * f64::from(self.request.budget_tokens)).floor() as u32
    }

    /// The framing of a block's message: per-message overhead, role and heading.
    fn block_framing(&self, section: ContextSection) -> u32 {
        let m = ChatMessage {
            role: Role::System,
            content: Some(heading(section).into()),
            tool_calls: vec![],
            tool_call_id: None,
        };
        self.counter.message(&m)
    }

    fn drop_line(&mut self, section: ContextSection, l: Line, because: DroppedBecause) {
        self.dropped.push(DroppedPiece { section, source: l.source, because, score: l.score, tokens: l.tokens });
    }

    fn drop_all(&mut self, section: ContextSection, lines: Vec<Line>, because: DroppedBecause) {
        for l in lines {
            self.drop_line(section, l, because);
        }
    }

    /// Takes lines in order while they fit in the section's share and the budget.
    fn fill_block(&mut self, section: ContextSection, candidates: Vec<Line>, share: f32) {
        let mut room = self.cap(share).min(self.left);
        let framing = self.block_framing(section);
        let mut lines = Vec::new();
        for l in candidates {
            let cost = l.tokens + if lines.is_empty() { framing } else { 0 };
            if cost <= room {
                room -= cost;
                self.left -= cost;
                lines.push(l);
            } else {
                self.drop_line(section, l, DroppedBecause::Budget);
            }
        }
        if !lines.is_empty() {
            self.blocks.push(Block { section, lines });
        }
    }

    /// Gives back the lines of `section` that `now_included` says are in the context
    /// elsewhere.
    fn release_block_lines(&mut self, section: ContextSection, now_included: impl Fn(&Line) -> bool) {
        let framing = self.block_framing(section);
        let Some(at) = self.blocks.iter().position(|b| b.section == section) else { return };
        let lines = std::mem::take(&mut self.blocks[at].lines);
        let (gone, kept): (Vec<Line>, Vec<Line>) = lines.into_iter().partition(|l| now_included(l));
        self.left += gone.iter().map(|l| l.tokens).sum::<u32>();
        self.drop_all(section, gone, DroppedBecause::AlreadyIncluded);
        if kept.is_empty() {
            self.left += framing;
            self.blocks.remove(at);
        } else {
            self.blocks[at].lines = kept;
        }
    }

    fn fill_system(&mut self, events: Vec<Event>, share: f32) {
        let mut room = self.cap(share).min(self.left);
        for e in events {
            let m = ChatMessage {
                role: e.role.unwrap_or(Role::System),
                content: Some(event_text(&e)),
                tool_calls: vec![],
                tool_call_id: None,
            };
            let tokens = self.counter.message_texts(&m);
            let cost = self.counter.message_framing(&m) + tokens;
            let source = event_source(&e);
            if cost <= room {
                room -= cost;
                self.left -= cost;
                let part = Part { message: 0, source, because: IncludedBecause::System, tokens, truncated: false };
                self.system.push((m, part, cost));
            } else {
                let section = ContextSection::System;
                self.dropped.push(DroppedPiece {
                    section,
                    source,
                    because: DroppedBecause::Budget,
                    score: None,
                    tokens: cost,
                });
            }
        }
    }

    fn system_holds(&self, source: &ContextSource) -> bool {
        self.system.iter().any(|(_, p, _)| &p.source == source)
    }

    /// The messages in their order (system, blocks, recent turns oldest first), the
    /// explanation, and the exact count, dropping the least important pieces in the rare
    /// case the count of the joined texts is above the sum of their parts.
    fn finish(mut self, mut units: Vec<Unit>, head_seq: u64) -> ContextResponse {
        loop {
            // Each message is counted on its own, so the total is the sum of the known costs
            // of the system messages and recent turns and the exact counts of the blocks,
            // each line charged with the tokens it adds to its joined block.
            let line_tokens: Vec<Vec<u32>> = self
                .blocks
                .iter()
                .map(|b| {
                    let lines: Vec<String> = b.lines.iter().map(|l| format!("\n{}", l.text)).collect();
                    let mut segments = vec![heading(b.section)];
                    segments.extend(lines.iter().map(String::as_str));
                    self.counter.segments(&segments)
                })
                .collect();
            let (messages, pieces) = self.render(&units, &line_tokens);
            let blocks: u32 = messages[self.system.len()..self.system.len() + self.blocks.len()]
                .iter()
                .zip(&line_tokens)
                .map(|(m, counts)| self.counter.message_framing(m) + counts.iter().sum::<u32>())
                .sum();
            let known: u32 =
                self.system.iter().map(|(_, _, cost)| cost).sum::<u32>() + units.iter().map(|u| u.tokens).sum::<u32>();
            let total = if messages.is_empty() { 0 } else { known + blocks + REPLY_PRIMING_TOKENS };
            if total <= self.request.budget_tokens {
                let parts: u32 = pieces.iter().map(|p| p.tokens).sum();
                let recent_from_seq = units.last().and_then(|oldest| {
                    oldest
                        .events
                        .iter()
                        .filter_map(|s| match s {
                            ContextSource::Event { seq, .. } => Some(*seq),
                            _ => None,
                        })
                        .min()
                });
                return ContextResponse {
                    messages,
                    total_tokens: total,
                    budget_tokens: self.request.budget_tokens,
                    tokenizer: self.request.tokenizer,
                    framing_tokens: total.saturating_sub(parts),
                    pieces,
                    dropped: self.dropped,
                    recent_from_seq,
                    head_seq,
                    indexed_seq: None,
                };
            }
            // Least important first: the oldest recent turn, then block lines from the last
            // block, then system messages.
            if let Some(unit) = units.pop() {
                self.dropped.extend(unit.dropped(DroppedBecause::Budget));
            } else if let Some(block) = self.blocks.last_mut() {
                let section = block.section;
                if let Some(l) = block.lines.pop() {
                    self.drop_line(section, l, DroppedBecause::Budget);
                }
                if self.blocks.last().is_some_and(|b| b.lines.is_empty()) {
                    self.blocks.pop();
                }
            } else if let Some((_, part, _)) = self.system.pop() {
                let section = ContextSection::System;
                let source = part.source;
                self.dropped.push(DroppedPiece {
                    section,
                    source,
                    because: DroppedBecause::Budget,
                    score: None,
                    tokens: part.tokens,
                });
            } else {
                unreachable!("an empty context counts 0 tokens")
            }
        }
    }

    /// The messages and pieces; `line_tokens[b][0]` is block `b`'s heading, then its lines.
    fn render(&self, units: &[Unit], line_tokens: &[Vec<u32>]) -> (Vec<ChatMessage>, Vec<ContextPiece>) {
        let mut messages = Vec::new();
        let mut pieces = Vec::new();
        let piece = |section, p: &Part, message| ContextPiece {
            section,
            source: p.source.clone(),
            because: p.because,
            score: None,
            tokens: p.tokens,
            message,
            truncated: p.truncated,
        };
        for (m, p, _) in &self.system {
            pieces.push(piece(ContextSection::System, p, messages.len()));
            messages.push(m.clone());
        }
        for (block, counts) in self.blocks.iter().zip(line_tokens) {
            let mut content = heading(block.section).to_string();
            for (j, l) in block.lines.iter().enumerate() {
                content.push('\n');
                content.push_str(&l.text);
                pieces.push(ContextPiece {
                    section: block.section,
                    source: l.source.clone(),
                    because: l.because,
                    score: l.score,
                    tokens: counts.get(j + 1).copied().unwrap_or(l.tokens),
                    message: messages.len(),
                    truncated: l.truncated,
                });
            }
            messages.push(ChatMessage {
                role: Role::System,
                content: Some(content),
                tool_calls: vec![],
                tool_call_id: None,
            });
        }
        for unit in units.iter().rev() {
            let base = messages.len();
            for p in &unit.parts {
                pieces.push(piece(ContextSection::Recent, p, base + p.message));
            }
            messages.extend(unit.messages.iter().cloned());
        }
        (messages, pieces)
    }
}

/// Longest tool call id OpenAI's API accepts.
pub const MAX_WIRE_CALL_ID: usize = 40;

/// The ids the calls of one assistant message go out with: their own, unless it is longer
/// than OpenAI accepts or repeats within the message; then `call_e<seq>` (made unique).
fn wire_call_ids(calls: &[(usize, Event)]) -> HashMap<usize, String> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (_, e) in calls {
        *seen.entry(e.call_id.as_deref().unwrap_or_default()).or_default() += 1;
    }
    let mut taken: HashSet<String> = calls
        .iter()
        .filter_map(|(_, e)| e.call_id.clone())
        .filter(|id| id.len() <= MAX_WIRE_CALL_ID && seen.get(id.as_str()) == Some(&1))
        .collect();
    let mut out = HashMap::new();
    for (idx, e) in calls {
        let own = e.call_id.as_deref().unwrap_or_default();
        let id = if !own.is_empty() && own.len() <= MAX_WIRE_CALL_ID && seen.get(own) == Some(&1) {
            own.to_string()
        } else {
            let mut id = format!("call_e{}", e.seq);
            while !taken.insert(id.clone()) {
                id.push('_');
            }
            id
        };
        out.insert(*idx, id);
    }
    out
}

/// A tool name as OpenAI's API accepts it: `[A-Za-z0-9_-]`, 1 to 64 characters (others
/// become `_`).
fn tool_name(name: Option<&str>) -> String {
    let name: String = name
        .unwrap_or("tool")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' })
        .take(64)
        .collect();
    if name.is_empty() { "tool".to_string() } else { name }
}

/// Whether the recent turns consider `e`: not of an excluded kind, not an opening system
/// message.
fn wanted(exclude: &[EventKind], skip: &HashSet<u64>, e: &Event) -> bool {
    !exclude.contains(&e.kind) && !skip.contains(&e.seq)
}

fn is_tool_result(e: &Event) -> bool {
    e.kind == EventKind::ToolResult || (e.kind == EventKind::Message && e.role == Some(Role::Tool))
}

/// Walks back from the newest event, grouping tool calls with their results, and takes
/// whole units while they fit.
struct Walker<'a> {
    newest: Newest<'a>,
    /// Index (newest first) of the next event to look at.
    pos: usize,
    skip: HashSet<u64>,
    request: &'a ContextRequest,
    counter: TokenCounter,
    units: Vec<Unit>,
    used: u32,
    /// The unit that did not fit, kept for a later, larger extension.
    stopped: Option<Unit>,
    included: HashSet<ContextSource>,
    unpaired: Vec<DroppedPiece>,
}

impl<'a> Walker<'a> {
    fn new(newest: Newest<'a>, skip: HashSet<u64>, request: &'a ContextRequest, counter: TokenCounter) -> Self {
        Walker {
            newest,
            pos: 0,
            skip,
            request,
            counter,
            units: Vec::new(),
            used: 0,
            stopped: None,
            included: HashSet::new(),
            unpaired: Vec::new(),
        }
    }

    fn holds(&self, source: &ContextSource) -> bool {
        self.included.contains(source)
    }

    /// Adds units while they fit in `room` more tokens; returns the tokens added.
    fn extend(&mut self, room: u32) -> Result<u32> {
        let mut added = 0;
        loop {
            let unit = match self.stopped.take() {
                Some(u) => u,
                None => match self.next_unit()? {
                    Some(u) => u,
                    None => break,
                },
            };
            if unit.tokens > room - added {
                self.stopped = Some(unit);
                break;
            }
            added += unit.tokens;
            self.included.extend(unit.events.iter().cloned());
            self.units.push(unit);
        }
        self.used += added;
        Ok(added)
    }

    /// Records what was left out; returns the units, newest first.
    fn finish(self, dropped: &mut Vec<DroppedPiece>) -> Vec<Unit> {
        dropped.extend(self.unpaired);
        if let Some(unit) = self.stopped {
            dropped.extend(unit.dropped(DroppedBecause::Budget));
        }
        self.units
    }

    /// The next older unit, or `None` at the start of the session.
    fn next_unit(&mut self) -> Result<Option<Unit>> {
        loop {
            let start = self.pos;
            let Some(first) = self.newest.get(start)? else { return Ok(None) };
            if !wanted(&self.request.exclude_kinds, &self.skip, first) {
                self.pos += 1;
                continue;
            }
            // Extend the unit back to the call of every result in it.
            let mut end = start;
            let mut call_of: HashMap<usize, usize> = HashMap::new();
            // Call index -> the index of the result that answers it.
            let mut answered_by: HashMap<usize, usize> = HashMap::new();
            let mut i = start;
            while i <= end {
                let exclude = &self.request.exclude_kinds;
                let result_of = match self.newest.get(i)? {
                    Some(e) if wanted(exclude, &self.skip, e) && is_tool_result(e) => e.call_id.clone(),
                    _ => None,
                };
                if let Some(call_id) = result_of {
                    // The nearest earlier call with the id. The first result after a call
                    // answers it: a later one with the same id (seen first, walking back)
                    // is a duplicate and stays unpaired.
                    for j in i + 1..=i + MAX_TOOL_PAIR_DISTANCE {
                        let Some(c) = self.newest.get(j)? else { break };
                        if c.kind == EventKind::ToolCall
                            && c.call_id.as_ref() == Some(&call_id)
                            && wanted(exclude, &self.skip, c)
                        {
                            if let Some(later) = answered_by.insert(j, i) {
                                call_of.remove(&later);
                            }
                            call_of.insert(i, j);
                            end = end.max(j);
                            break;
                        }
                    }
                }
                i += 1;
            }
            self.pos = end + 1;
            let mut events = Vec::new();
            for idx in (start..=end).rev() {
                if let Some(e) = self.newest.get(idx)?
                    && wanted(&self.request.exclude_kinds, &self.skip, e)
                {
                    events.push((idx, e.clone()));
                }
            }
            let paired_calls: HashSet<usize> = answered_by.keys().copied().collect();
            if let Some(unit) = self.render(events, &call_of, &paired_calls) {
                return Ok(Some(unit));
            }
        }
    }

    /// A unit's messages, oldest first: the events between the calls and results, then one
    /// assistant message with the calls, then the results.
    fn render(
        &mut self,
        events: Vec<(usize, Event)>,
        call_of: &HashMap<usize, usize>,
        paired_calls: &HashSet<usize>,
    ) -> Option<Unit> {
        let counter = self.counter;
        let mut inner = Vec::new();
        let mut calls = Vec::new();
        let mut results = Vec::new();
        for (idx, e) in events {
            let unpaired = |because| DroppedPiece {
                section: ContextSection::Recent,
                source: event_source(&e),
                because,
                score: None,
                tokens: 0,
            };
            if e.kind == EventKind::ToolCall {
                if paired_calls.contains(&idx) {
                    calls.push((idx, e));
                } else {
                    self.unpaired.push(unpaired(DroppedBecause::UnpairedToolCall));
                }
            } else if is_tool_result(&e) {
                if let Some(call) = call_of.get(&idx) {
                    results.push((*call, e));
                } else {
                    self.unpaired.push(unpaired(DroppedBecause::UnpairedToolResult));
                }
            } else {
                inner.push(e);
            }
        }
        let mut unit = Unit { messages: Vec::new(), parts: Vec::new(), tokens: 0, events: Vec::new() };
        // `texts`: the tokens of the message's texts, counted once by the caller.
        let push = |unit: &mut Unit, m: ChatMessage, texts: u32, parts: Vec<(ContextSource, u32, bool)>| {
            unit.tokens += counter.message_framing(&m) + texts;
            for (source, tokens, truncated) in parts {
                unit.events.push(source.clone());
                unit.parts.push(Part {
                    message: unit.messages.len(),
                    source,
                    because: IncludedBecause::Recent,
                    tokens,
                    truncated,
                });
            }
            unit.messages.push(m);
        };
        for e in &inner {
            let content = match (e.kind, e.role) {
                (EventKind::Message, Some(_)) => event_text(e),
                (kind, _) => {
                    let mut tag = format!("[{kind}");
                    if let Some(call_id) = &e.call_id {
                        tag.push_str(&format!(" call {call_id}"));
                    }
                    if let Some(name) = &e.name {
                        tag.push_str(&format!(" {name}"));
                    }
                    format!("{tag}] {}", event_text(e))
                }
            };
            let role = match (e.kind, e.role) {
                (EventKind::Message, Some(role)) => role,
                _ => Role::System,
            };
            let m = ChatMessage { role, content: Some(content), tool_calls: vec![], tool_call_id: None };
            let tokens = counter.message_texts(&m);
            push(&mut unit, m, tokens, vec![(event_source(e), tokens, false)]);
        }
        if !calls.is_empty() {
            let ids = wire_call_ids(&calls);
            let mut tool_calls = Vec::new();
            let mut parts = Vec::new();
            for (idx, e) in &calls {
                let id = ids.get(idx).cloned().unwrap_or_default();
                let name = tool_name(e.name.as_deref());
                let arguments = match (&e.text, &e.data) {
                    (Some(t), _) => t.clone(),
                    (None, Some(d)) => d.to_string(),
                    (None, None) => "{}".to_string(),
                };
                parts.push((event_source(e), counter.tool_call(&id, &name, &arguments), false));
                tool_calls.push(ToolCall { id, kind: "function".into(), function: FunctionCall { name, arguments } });
            }
            let m = ChatMessage { role: Role::Assistant, content: None, tool_calls, tool_call_id: None };
            let tokens = parts.iter().map(|(_, t, _)| t).sum();
            push(&mut unit, m, tokens, parts);
            for (call, e) in &results {
                let (content, truncated, content_tokens) =
                    cut(&counter, e, &event_text(e), self.request.max_tool_output_tokens);
                let id = ids.get(call).cloned().unwrap_or_default();
                let tokens = content_tokens + counter.text(&id);
                let m = ChatMessage {
                    role: Role::Tool,
                    content: Some(content),
                    tool_calls: vec![],
                    tool_call_id: Some(id),
                };
                push(&mut unit, m, tokens, vec![(event_source(e), tokens, truncated)]);
            }
        }
        (!unit.messages.is_empty()).then_some(unit)
    }
}
