//! The reference model of Engram's operations: a random operation strategy, a plain
//! in-memory model, and `run`, which applies each operation to a store and to the model and
//! checks every result and every read against it. Shared by the model test
//! (`tests/model.rs`) and the operation-sequence fuzz target (`fuzz/fuzz_targets/ops.rs`).

use engram::*;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

const T: &str = DEFAULT_TENANT;
const IDENTITIES: [&str; 2] = ["ann", "bob"];
const SESSIONS: [&str; 3] = ["s0", "s1", "s2"];

#[derive(Clone, Debug)]
pub enum Op {
    Append {
        who: usize,
        session: usize,
        texts: Vec<u8>,
        head: Option<i8>,
        idem: Option<u8>,
    },
    Fork {
        who: usize,
        source: usize,
        back: u8,
        target: usize,
    },
    DeleteSession {
        who: usize,
        session: usize,
    },
    /// Deletes the event `back` below the session's head.
    DeleteEvent {
        who: usize,
        session: usize,
        back: u8,
    },
    SetRetention {
        who: usize,
        session: usize,
        ttl_s: Option<u8>,
        keep_last: Option<u8>,
    },
    Advance {
        seconds: u8,
    },
    Sweep,
    PutState {
        who: usize,
        session: Option<usize>,
        key: u8,
        value: u8,
        pre: Option<Option<u8>>,
    },
    PutMemory {
        who: usize,
        id: u8,
        text: u8,
    },
    UpdateMemory {
        who: usize,
        id: u8,
        text: u8,
    },
    DeleteMemory {
        who: usize,
        id: u8,
    },
    Forget {
        who: usize,
    },
    Reopen,
}

/// One random operation.
pub fn op() -> impl Strategy<Value = Op> {
    let who = 0..IDENTITIES.len();
    let session = 0..SESSIONS.len();
    prop_oneof![
        8 => (who.clone(), session.clone(), prop::collection::vec(any::<u8>(), 1..4), prop::option::of(-1i8..2), prop::option::of(0u8..4))
            .prop_map(|(who, session, texts, head, idem)| Op::Append { who, session, texts, head, idem }),
        2 => (who.clone(), session.clone(), 0u8..4, session.clone()).prop_map(|(who, source, back, target)| Op::Fork { who, source, back, target }),
        1 => (who.clone(), session.clone()).prop_map(|(who, session)| Op::DeleteSession { who, session }),
        1 => (who.clone(), session.clone(), 0u8..4).prop_map(|(who, session, back)| Op::DeleteEvent { who, session, back }),
        1 => (who.clone(), session.clone(), prop::option::of(1u8..5), prop::option::of(1u8..5))
            .prop_map(|(who, session, ttl_s, keep_last)| Op::SetRetention { who, session, ttl_s, keep_last }),
        1 => (1u8..4).prop_map(|seconds| Op::Advance { seconds }),
        1 => Just(Op::Sweep),
        3 => (who.clone(), prop::option::of(session.clone()), 0u8..2, any::<u8>(), prop::option::of(prop::option::of(0u8..4)))
            .prop_map(|(who, session, key, value, pre)| Op::PutState { who, session, key, value, pre }),
        2 => (who.clone(), 0u8..3, any::<u8>()).prop_map(|(who, id, text)| Op::PutMemory { who, id, text }),
        2 => (who.clone(), 0u8..3, any::<u8>()).prop_map(|(who, id, text)| Op::UpdateMemory { who, id, text }),
        1 => (who.clone(), 0u8..3).prop_map(|(who, id)| Op::DeleteMemory { who, id }),
        1 => who.prop_map(|who| Op::Forget { who }),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Clone, Debug, Default)]
struct MSession {
    head: u64,
    /// seq -> (text, received at)
    events: BTreeMap<u64, (String, i64)>,
    parent: Option<(String, u64)>,
    children: u64,
    keep_last: Option<u64>,
    ttl_ms: Option<i64>,
    idem: BTreeMap<String, (u64, u64, Vec<String>, Option<u64>)>,
    state: BTreeMap<String, (serde_json::Value, u64)>,
}

#[derive(Clone, Debug, Default)]
struct Model {
    now_ms: i64,
    identities: BTreeSet<String>,
    sessions: BTreeMap<(String, String), MSession>,
    /// (identity, id) -> versions (text, deleted); current = last if not deleted.
    memories: BTreeMap<(String, String), Vec<(String, bool)>>,
    identity_state: BTreeMap<(String, String), (serde_json::Value, u64)>,
}

impl Model {
    fn view(&self, who: &str, session: &str, cap: u64) -> Vec<(u64, String)> {
        let s = &self.sessions[&(who.to_string(), session.to_string())];
        let mut out = match &s.parent {
            Some((p, at)) => self.view(who, p, cap.min(*at)),
            None => Vec::new(),
        };
        let live = |at: i64| s.ttl_ms.is_none_or(|ttl| self.now_ms - at < ttl);
        out.extend(s.events.iter().filter(|(seq, (_, at))| **seq <= cap && live(*at)).map(|(k, v)| (*k, v.0.clone())));
        out
    }
}

fn kind(e: &Error) -> &'static str {
    match e {
        Error::InvalidArgument { .. } => "invalid",
        Error::NotFound { .. } => "not_found",
        Error::AlreadyExists { .. } => "exists",
        Error::HeadMismatch { .. } => "head",
        Error::VersionMismatch { .. } => "version",
        Error::Conflict(_) => "conflict",
        _ => "other",
    }
}

fn check<T: std::fmt::Debug>(
    op: &Op,
    got: &Result<T>,
    expected: Result<(), &'static str>,
) -> Result<(), TestCaseError> {
    let got_kind = got.as_ref().map(|_| ()).map_err(kind);
    prop_assert_eq!(got_kind, expected, "op {:?} returned {:?}", op, got);
    Ok(())
}

const START_MS: i64 = 1_000_000;

/// The options every run opens its store with.
pub fn options(clock: &Arc<ManualClock>) -> Options {
    Options { retention_sweep_interval_ms: None, clock: clock.clone(), ..Options::default() }
}

fn trim(ms: &mut MSession) {
    if let Some(n) = ms.keep_last {
        while ms.events.len() as u64 > n {
            let first = *ms.events.keys().next().expect("non-empty");
            ms.events.remove(&first);
        }
    }
}

/// Runs `ops` against the store `open` opens (again at every `Reopen`) and the model.
pub fn run(open: &dyn Fn(&Arc<ManualClock>) -> Result<Engram>, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let open = |clock: &Arc<ManualClock>| open(clock).map_err(|e| TestCaseError::fail(e.to_string()));
    let clock = ManualClock::new(START_MS);
    let mut db = Some(open(&clock)?);
    let mut m = Model { now_ms: START_MS, ..Model::default() };
    for op in &ops {
        let db_ref = db.as_ref().expect("open");
        step(db_ref, &mut m, op, &clock)?;
        if matches!(op, Op::Reopen) {
            drop(db.take());
            db = Some(open(&clock)?);
        }
        verify(db.as_ref().expect("open"), &m)?;
    }
    Ok(())
}

/// An event text: one byte in eight gives a text over the inline limit, stored as a blob
/// (the same text in other sessions and identities shares it).
fn text_of(b: u8) -> String {
    if b.is_multiple_of(8) {
        format!("t{b} ").repeat(engram::limits::BLOB_INLINE_MAX_BYTES / 3 + 1)
    } else {
        format!("t{b}")
    }
}

fn step(db: &Engram, m: &mut Model, op: &Op, clock: &ManualClock) -> Result<(), TestCaseError> {
    {
        match op.clone() {
            Op::Append { who, session, texts, head, idem } => {
                let (w, s) = (IDENTITIES[who].to_string(), SESSIONS[session].to_string());
                let texts: Vec<String> = texts.iter().map(|b| text_of(*b)).collect();
                let current = m.sessions.get(&(w.clone(), s.clone())).map_or(0, |x| x.head);
                let expected_head = head.map(|d| (current as i64 + d as i64).max(0) as u64);
                let idem_key = idem.map(|k| format!("k{k}"));
                let events = texts.iter().map(|t| NewEvent::message(Role::User, t.clone())).collect();
                let opts = AppendOptions { expected_head, idempotency_key: idem_key.clone() };
                let got = db.append(T, &w, &s, events, opts);
                let earlier = idem_key
                    .as_ref()
                    .and_then(|k| m.sessions.get(&(w.clone(), s.clone())).and_then(|x| x.idem.get(k)).cloned());
                if let Some((first, last, old_texts, old_head)) = earlier {
                    if old_texts == texts && old_head == expected_head {
                        check(op, &got, Ok(()))?;
                        let r = got.map_err(|e| TestCaseError::fail(e.to_string()))?;
                        prop_assert!(r.deduplicated);
                        prop_assert_eq!((r.first_seq, r.last_seq), (first, last));
                    } else {
                        check(op, &got, Err("conflict"))?;
                    }
                    return Ok(());
                }
                if expected_head.is_some_and(|h| h != current) {
                    check(op, &got, Err("head"))?;
                    return Ok(());
                }
                check(op, &got, Ok(()))?;
                let r = got.map_err(|e| TestCaseError::fail(e.to_string()))?;
                m.identities.insert(w.clone());
                let ms = m.sessions.entry((w.clone(), s.clone())).or_default();
                prop_assert_eq!(r.first_seq, ms.head + 1);
                for t in &texts {
                    ms.head += 1;
                    ms.events.insert(ms.head, (t.clone(), m.now_ms));
                }
                prop_assert_eq!(r.last_seq, ms.head);
                trim(ms);
                if let Some(k) = idem_key {
                    ms.idem.insert(k, (r.first_seq, r.last_seq, texts, expected_head));
                }
            }
            Op::Fork { who, source, back, target } => {
                let (w, src, dst) =
                    (IDENTITIES[who].to_string(), SESSIONS[source].to_string(), SESSIONS[target].to_string());
                let src_head = m.sessions.get(&(w.clone(), src.clone())).map(|x| x.head);
                let at = src_head.map(|h| h.saturating_sub(back as u64));
                let got = db.fork_session(T, &w, &src, at, &dst, SessionConfig::default());
                match src_head {
                    None => check(op, &got, Err("not_found"))?,
                    Some(_) if m.sessions.contains_key(&(w.clone(), dst.clone())) => check(op, &got, Err("exists"))?,
                    Some(_) => {
                        check(op, &got, Ok(()))?;
                        let at = at.unwrap_or(0);
                        m.sessions.get_mut(&(w.clone(), src.clone())).expect("source").children += 1;
                        m.sessions
                            .insert((w, dst), MSession { head: at, parent: Some((src, at)), ..MSession::default() });
                    }
                }
            }
            Op::DeleteSession { who, session } => {
                let key = (IDENTITIES[who].to_string(), SESSIONS[session].to_string());
                let got = db.delete_session(T, &key.0, &key.1);
                match m.sessions.get(&key).cloned() {
                    None => check(op, &got, Err("not_found"))?,
                    Some(s) if s.children > 0 => check(op, &got, Err("conflict"))?,
                    Some(s) => {
                        check(op, &got, Ok(()))?;
                        let receipt = got.map_err(|e| TestCaseError::fail(e.to_string()))?;
                        prop_assert_eq!(receipt.events, s.events.len() as u64);
                        if let Some((p, _)) = &s.parent {
                            m.sessions.get_mut(&(key.0.clone(), p.clone())).expect("parent").children -= 1;
                        }
                        m.sessions.remove(&key);
                    }
                }
            }
            Op::DeleteEvent { who, session, back } => {
                let key = (IDENTITIES[who].to_string(), SESSIONS[session].to_string());
                let head = m.sessions.get(&key).map_or(1, |s| s.head);
                let seq = head.saturating_sub(u64::from(back));
                let got = db.delete_event(T, &key.0, &key.1, seq);
                match m.sessions.get_mut(&key) {
                    None => check(op, &got, Err("not_found"))?,
                    Some(_) if seq == 0 => check(op, &got, Err("not_found"))?,
                    Some(s) if s.parent.as_ref().is_some_and(|(_, at)| seq <= *at) => check(op, &got, Err("conflict"))?,
                    Some(s) => match s.events.remove(&seq) {
                        None => check(op, &got, Err("not_found"))?,
                        Some((text, _)) => {
                            check(op, &got, Ok(()))?;
                            let event = got.map_err(|e| TestCaseError::fail(e.to_string()))?;
                            prop_assert_eq!((event.seq, event.text), (seq, Some(text)));
                        }
                    },
                }
            }
            Op::SetRetention { who, session, ttl_s, keep_last } => {
                let key = (IDENTITIES[who].to_string(), SESSIONS[session].to_string());
                let ttl_ms = ttl_s.map(|s| s as u64 * 1000);
                let policy = RetentionPolicy { ttl_ms, keep_last: keep_last.map(u64::from), ..Default::default() };
                let got = db.set_session_retention(T, &key.0, &key.1, policy);
                match m.sessions.get_mut(&key) {
                    None => check(op, &got, Err("not_found"))?,
                    Some(ms) => {
                        check(op, &got, Ok(()))?;
                        ms.keep_last = keep_last.map(u64::from);
                        ms.ttl_ms = ttl_ms.map(|t| t as i64);
                        trim(ms);
                    }
                }
            }
            Op::Advance { seconds } => {
                clock.advance_ms(seconds as i64 * 1000);
                m.now_ms += seconds as i64 * 1000;
            }
            Op::Sweep => {
                let got = db.sweep_retention();
                check(op, &got, Ok(()))?;
                let mut expected = 0;
                let now = m.now_ms;
                for ms in m.sessions.values_mut() {
                    if let Some(ttl) = ms.ttl_ms {
                        let before = ms.events.len();
                        ms.events.retain(|_, (_, at)| now - *at < ttl);
                        expected += (before - ms.events.len()) as u64;
                    }
                }
                prop_assert_eq!(got.map(|r| r.events_removed).ok(), Some(expected));
            }
            Op::PutState { who, session, key, value, pre } => {
                let w = IDENTITIES[who].to_string();
                let k = format!("key{key}");
                let precondition = match pre {
                    None => StatePrecondition::None,
                    Some(None) => StatePrecondition::Absent,
                    Some(Some(v)) => StatePrecondition::Version(v as u64),
                };
                let value = json!({ "v": value });
                let scope = match session {
                    Some(s) => StateScope::Session { identity: &w, session: SESSIONS[s] },
                    None => StateScope::Identity { identity: &w },
                };
                let got = db.put_state(T, scope, &k, value.clone(), precondition);
                let current = match session {
                    Some(s) => {
                        m.sessions.get(&(w.clone(), SESSIONS[s].to_string())).and_then(|x| x.state.get(&k)).map(|x| x.1)
                    }
                    None => m.identity_state.get(&(w.clone(), k.clone())).map(|x| x.1),
                };
                let ok = match precondition {
                    StatePrecondition::None => true,
                    StatePrecondition::Absent => current.is_none(),
                    StatePrecondition::Version(v) => current == Some(v),
                };
                if !ok {
                    check(op, &got, Err("version"))?;
                    return Ok(());
                }
                check(op, &got, Ok(()))?;
                let version = current.unwrap_or(0) + 1;
                prop_assert_eq!(got.map(|d| d.version).ok(), Some(version));
                m.identities.insert(w.clone());
                match session {
                    Some(s) => {
                        let ms = m.sessions.entry((w, SESSIONS[s].to_string())).or_default();
                        ms.state.insert(k, (value, version));
                    }
                    None => {
                        m.identity_state.insert((w, k), (value, version));
                    }
                }
            }
            Op::PutMemory { who, id, text } => {
                let (w, id) = (IDENTITIES[who].to_string(), format!("m{id}"));
                let got =
                    db.put_memory(T, &w, NewMemory { id: Some(id.clone()), ..NewMemory::fact(format!("f{text}")) });
                let versions = m.memories.entry((w.clone(), id)).or_default();
                if versions.last().is_some_and(|v| !v.1) {
                    check(op, &got, Err("exists"))?;
                } else {
                    check(op, &got, Ok(()))?;
                    prop_assert_eq!(got.map(|x| x.version).ok(), Some(versions.len() as u64 + 1));
                    versions.push((format!("f{text}"), false));
                    m.identities.insert(w);
                }
            }
            Op::UpdateMemory { who, id, text } => {
                let (w, id) = (IDENTITIES[who].to_string(), format!("m{id}"));
                let got = db.update_memory(T, &w, &id, NewMemory::fact(format!("u{text}")));
                match m.memories.get_mut(&(w, id)) {
                    Some(v) if v.last().is_some_and(|x| !x.1) => {
                        check(op, &got, Ok(()))?;
                        v.push((format!("u{text}"), false));
                    }
                    _ => check(op, &got, Err("not_found"))?,
                }
            }
            Op::DeleteMemory { who, id } => {
                let (w, id) = (IDENTITIES[who].to_string(), format!("m{id}"));
                let got = db.delete_memory(T, &w, &id);
                match m.memories.get_mut(&(w, id)) {
                    Some(v) if v.last().is_some_and(|x| !x.1) => {
                        check(op, &got, Ok(()))?;
                        if let Some(last) = v.last_mut() {
                            last.1 = true;
                        }
                    }
                    _ => check(op, &got, Err("not_found"))?,
                }
            }
            Op::Forget { who } => {
                let w = IDENTITIES[who].to_string();
                let got = db.forget_identity(T, &w);
                if m.identities.remove(&w) {
                    check(op, &got, Ok(()))?;
                    let receipt = got.map_err(|e| TestCaseError::fail(e.to_string()))?;
                    let events: usize = m.sessions.iter().filter(|(k, _)| k.0 == w).map(|(_, s)| s.events.len()).sum();
                    prop_assert_eq!(receipt.events, events as u64);
                    m.sessions.retain(|k, _| k.0 != w);
                    m.memories.retain(|k, _| k.0 != w);
                    m.identity_state.retain(|k, _| k.0 != w);
                } else {
                    check(op, &got, Err("not_found"))?;
                }
            }
            Op::Reopen => {}
        }
    }
    Ok(())
}

/// Every read agrees with the model.
fn verify(db: &Engram, m: &Model) -> Result<(), TestCaseError> {
    let fail = |e: Error| TestCaseError::fail(e.to_string());
    // The store's own check: frames, events under their sessions, blob references.
    let report = db.verify().map_err(fail)?;
    prop_assert!(report.problems.is_empty(), "verify: {:?}", report.problems);
    let identities: Vec<String> =
        db.list_identities(T, &ListQuery::default()).map_err(fail)?.items.into_iter().map(|i| i.id).collect();
    prop_assert_eq!(identities, m.identities.iter().cloned().collect::<Vec<_>>());
    for who in IDENTITIES {
        for session in SESSIONS {
            let key = (who.to_string(), session.to_string());
            let got = db.history(T, who, session, &HistoryQuery { limit: 1000, ..Default::default() });
            match m.sessions.get(&key) {
                None => prop_assert!(
                    matches!(got, Err(Error::NotFound { .. })),
                    "{}/{} should not exist: {:?}",
                    who,
                    session,
                    got
                ),
                Some(ms) => {
                    let page = got.map_err(fail)?;
                    let events: Vec<(u64, String)> =
                        page.events.into_iter().map(|e| (e.seq, e.text.unwrap_or_default())).collect();
                    prop_assert_eq!(&events, &m.view(who, session, ms.head), "history of {}/{}", who, session);
                    prop_assert_eq!(page.head_seq, ms.head);
                    let desc = db.history(T, who, session, &HistoryQuery::last(1000)).map_err(fail)?;
                    let mut reversed: Vec<u64> = desc.events.iter().map(|e| e.seq).collect();
                    reversed.reverse();
                    prop_assert_eq!(&reversed, &events.iter().map(|e| e.0).collect::<Vec<_>>());
                    // Small pages, both ways, walked by cursor, give the same sequences.
                    for order in [Order::Asc, Order::Desc] {
                        let mut walked = Vec::new();
                        let mut cursor = None;
                        loop {
                            let mut q = HistoryQuery { limit: 3, order, ..HistoryQuery::default() };
                            match order {
                                Order::Asc => q.after = cursor,
                                Order::Desc => q.before = cursor,
                            }
                            let page = db.history(T, who, session, &q).map_err(fail)?;
                            prop_assert!(page.events.len() <= 3);
                            walked.extend(page.events.iter().map(|e| e.seq));
                            cursor = page.next_cursor;
                            if cursor.is_none() {
                                break;
                            }
                        }
                        if order == Order::Desc {
                            walked.reverse();
                        }
                        prop_assert_eq!(&walked, &reversed, "{:?} pages of {}/{}", order, who, session);
                    }
                    let docs = db.list_state(T, StateScope::Session { identity: who, session }).map_err(fail)?;
                    let docs: Vec<(String, serde_json::Value, u64)> =
                        docs.into_iter().map(|d| (d.key, d.value, d.version)).collect();
                    let want: Vec<(String, serde_json::Value, u64)> =
                        ms.state.iter().map(|(k, (v, n))| (k.clone(), v.clone(), *n)).collect();
                    prop_assert_eq!(docs, want);
                }
            }
        }
        let memories = db.list_memories(T, who, &ListQuery::default()).map_err(fail)?;
        let got: Vec<(String, String, u64)> = memories.items.into_iter().map(|x| (x.id, x.text, x.version)).collect();
        let want: Vec<(String, String, u64)> = m
            .memories
            .iter()
            .filter(|((w, _), v)| w == who && v.last().is_some_and(|x| !x.1))
            .map(|((_, id), v)| (id.clone(), v.last().map(|x| x.0.clone()).unwrap_or_default(), v.len() as u64))
            .collect();
        prop_assert_eq!(got, want);
        for ((w, id), versions) in &m.memories {
            if w != who || versions.is_empty() {
                continue;
            }
            let history = db.memory_history(T, who, id).map_err(fail)?;
            let got: Vec<(String, bool)> = history.into_iter().map(|x| (x.text, x.deleted)).collect();
            prop_assert_eq!(&got, versions);
        }
        let docs = db.list_state(T, StateScope::Identity { identity: who }).map_err(fail)?;
        let got: Vec<(String, u64)> = docs.into_iter().map(|d| (d.key, d.version)).collect();
        let want: Vec<(String, u64)> =
            m.identity_state.iter().filter(|((w, _), _)| w == who).map(|((_, k), (_, n))| (k.clone(), *n)).collect();
        prop_assert_eq!(got, want);
    }
    Ok(())
}
