//! `verify`: reads every stored value, checks its frame (format byte, CRC32) and that it
//! decodes as the record its key says it is, that every event belongs to a session
//! that exists and lies at or below its head, and that blob references add up: each
//! session's reference count of a blob is the number of its events that name the blob,
//! each blob's count is the sum over its tenant's sessions, and no blob is left without
//! references. Then it waits for the indexes to catch up and checks that they agree with
//! storage.

use crate::db::Engram;
use crate::error::Result;
use engram_core::admin::{Problem, VerifyReport};
use engram_core::keys::{self, KeyKind};
use engram_core::records::*;
use engram_storage::{Direction, Space, frame};
use std::collections::BTreeMap;

fn check<M: prost::Message + Default>(bytes: &[u8]) -> std::result::Result<M, String> {
    frame::decode::<M>(bytes).map_err(|e| e.to_string())
}

fn whole_floats(embedding: &[u8]) -> std::result::Result<(), String> {
    engram_core::records::embedding_problem(embedding).map_or(Ok(()), Err)
}

/// What a record says that the cross-checks need.
enum Facts {
    None,
    Head(u64),
    /// An event's seq and the hash of the blob it names, in hex.
    Event(u64, Option<String>),
    /// A session's references to a blob, or a blob's over all sessions.
    Refs(u64),
}

/// Decodes `bytes` as the record `kind` names; the error says why it does not.
fn check_kind(kind: KeyKind, bytes: &[u8]) -> std::result::Result<Facts, String> {
    match kind {
        KeyKind::Format => check::<FormatRecord>(bytes).map(drop),
        KeyKind::LastChangeSeq => check::<SeqRecord>(bytes).map(drop),
        KeyKind::Tenant => check::<TenantRecord>(bytes).map(drop),
        KeyKind::ApiKey => check::<ApiKeyRecord>(bytes).map(drop),
        KeyKind::IdentityDir => check::<IdentityRecord>(bytes).map(drop),
        KeyKind::SessionDir => return check::<SessionRecord>(bytes).map(|s| Facts::Head(s.head_seq)),
        KeyKind::Event => {
            let event = check::<EventRecord>(bytes)?;
            whole_floats(&event.embedding)?;
            return Ok(Facts::Event(event.seq, event.blob_sha256.as_deref().map(hex::encode)));
        }
        KeyKind::Idempotency => check::<IdempotencyRecord>(bytes).map(drop),
        KeyKind::BlobRef => return check::<BlobRefRecord>(bytes).map(|r| Facts::Refs(r.count)),
        KeyKind::SessionState | KeyKind::IdentityState => check::<StateRecord>(bytes).map(drop),
        KeyKind::Memory | KeyKind::MemoryHistory => {
            check::<MemoryRecord>(bytes).and_then(|m| whole_floats(&m.embedding))
        }
        KeyKind::Blob => return check::<BlobRecord>(bytes).map(|b| Facts::Refs(b.refcount)),
        KeyKind::Change => check::<ChangeRecord>(bytes).map(drop),
    }
    .map(|()| Facts::None)
}

/// (tenant, identity, session, blob hash in hex).
type SessionBlob = (String, String, String, String);

/// A session's references to one blob: its events that name it, and its stored count
/// (with the count's key).
#[derive(Default)]
struct SessionRefs {
    events: u64,
    stored: Option<(Vec<u8>, u64)>,
}

/// Blob references as stored and as counted, for [`Engram::verify`].
#[derive(Default)]
struct BlobBook {
    sessions: BTreeMap<SessionBlob, SessionRefs>,
    /// Per (tenant, hash): the blob's stored count (with its key).
    blobs: BTreeMap<(String, String), (Vec<u8>, u64)>,
}

impl BlobBook {
    fn problems(self, report: &mut VerifyReport) {
        let data = Space::Data.name();
        let mut problem = |key: &[u8], reason: String| {
            report.problems.push(Problem { space: data.into(), key: keys::render(key), reason });
        };
        let mut per_blob: BTreeMap<(String, String), u64> = BTreeMap::new();
        for ((tenant, identity, session, sha), SessionRefs { events, stored }) in self.sessions {
            let stored_count = stored.as_ref().map_or(0, |(_, n)| *n);
            if events != stored_count {
                let key =
                    stored.as_ref().map_or_else(|| keys::session_dir(&tenant, &identity, &session), |(k, _)| k.clone());
                problem(&key, format!("{events} event(s) name blob {sha}; the session counts {stored_count}"));
            }
            if let Some((key, _)) = &stored
                && !self.blobs.contains_key(&(tenant.clone(), sha.clone()))
            {
                problem(key, format!("reference to blob {sha}, which is missing"));
            }
            *per_blob.entry((tenant, sha)).or_default() += stored_count;
        }
        for ((tenant, sha), (key, refcount)) in self.blobs {
            let referenced = per_blob.get(&(tenant, sha)).copied().unwrap_or(0);
            if refcount != referenced || refcount == 0 {
                problem(&key, format!("blob counts {refcount} reference(s); its tenant's sessions hold {referenced}"));
            }
        }
    }
}

impl Engram {
    /// Checks every stored value (see the module documentation). Reads a snapshot, so it
    /// runs next to writers; a large store takes a full scan.
    pub fn verify(&self) -> Result<VerifyReport> {
        let snapshot = self.inner.store.snapshot();
        let mut report = VerifyReport::default();
        // Session heads by session key, to check events against.
        let mut heads: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        let mut events: Vec<(Vec<u8>, u64)> = Vec::new();
        let mut book = BlobBook::default();
        for space in Space::ALL {
            for entry in snapshot.scan(space, &[], None, Direction::Forward) {
                let (key, value) = match entry {
                    Ok(kv) => kv,
                    Err(e) => {
                        // The backend could not read on (a damaged block): report and stop
                        // this space.
                        report.problems.push(Problem {
                            space: space.name().into(),
                            key: "?".into(),
                            reason: format!("scan failed: {e}"),
                        });
                        break;
                    }
                };
                report.values_checked += 1;
                let (kind, parts) = match space {
                    Space::Meta => (keys::classify_meta(&key), None),
                    Space::Data => match keys::decode_data(&key) {
                        Ok((kind, parts)) => (Ok(kind), Some(parts)),
                        Err(e) => (Err(e), None),
                    },
                    Space::Log => (keys::decode_change(&key).map(|_| KeyKind::Change), None),
                };
                let problem = |reason: String| Problem { space: space.name().into(), key: keys::render(&key), reason };
                let kind = match kind {
                    Ok(kind) => kind,
                    Err(e) => {
                        report.problems.push(problem(e.to_string()));
                        continue;
                    }
                };
                *report.by_kind.entry(format!("{kind:?}")).or_default() += 1;
                let Some(p) = parts else {
                    if let Err(reason) = check_kind(kind, &value) {
                        report.problems.push(problem(reason));
                    }
                    continue;
                };
                let session = || (p.tenant.clone(), p.identity.clone(), p.session.clone());
                match check_kind(kind, &value) {
                    Err(reason) => report.problems.push(problem(reason)),
                    Ok(Facts::Head(head)) => {
                        heads.insert(key, head);
                    }
                    Ok(Facts::Event(seq, blob)) => {
                        if let Some(sha) = blob {
                            let (t, i, s) = session();
                            book.sessions.entry((t, i, s, sha)).or_default().events += 1;
                        }
                        events.push((key, seq));
                    }
                    Ok(Facts::Refs(count)) if kind == KeyKind::BlobRef => {
                        let (t, i, s) = session();
                        book.sessions.entry((t, i, s, p.sha256.clone())).or_default().stored = Some((key, count));
                    }
                    Ok(Facts::Refs(count)) => {
                        book.blobs.insert((p.tenant.clone(), p.sha256.clone()), (key, count));
                    }
                    Ok(Facts::None) => {}
                }
            }
        }
        for (key, record_seq) in events {
            let Some((dir, seq)) = session_dir_of_event(&key) else { continue };
            if seq != record_seq {
                report.problems.push(Problem {
                    space: Space::Data.name().into(),
                    key: keys::render(&key),
                    reason: format!("event stored under seq {seq} says it is seq {record_seq}"),
                });
            }
            match heads.get(&dir) {
                None => report.problems.push(Problem {
                    space: Space::Data.name().into(),
                    key: keys::render(&key),
                    reason: "event of a session that does not exist".into(),
                }),
                Some(head) if seq > *head => report.problems.push(Problem {
                    space: Space::Data.name().into(),
                    key: keys::render(&key),
                    reason: format!("event seq {seq} above its session's head {head}"),
                }),
                Some(_) => {}
            }
        }
        book.problems(&mut report);
        self.verify_indexes(&mut report)?;
        Ok(report)
    }

    /// Index agreement: once the indexes have caught up, every indexed item exists in
    /// storage, once, and every stored item is indexed.
    /// Skipped while storage itself has problems: the indexes derive from it.
    fn verify_indexes(&self, report: &mut VerifyReport) -> Result<()> {
        let Some(indexes) = self.inner.indexes.get() else { return Ok(()) };
        if !report.problems.is_empty() {
            return Ok(());
        }
        let (snapshot, seq) = self.inner.snapshot_with_seq();
        let found = indexes.wait_for(seq).and_then(|_| indexes.check(&*snapshot));
        match found {
            Ok(disagreements) => {
                for d in disagreements {
                    let space = format!("index:{}", d.index);
                    report.problems.push(Problem { space, key: d.item, reason: d.reason.into() });
                }
            }
            Err(e) => report.problems.push(Problem {
                space: "index".into(),
                key: "-".into(),
                reason: format!("the indexes could not be checked: {e}"),
            }),
        }
        report.index_checked = true;
        Ok(())
    }
}

/// The session directory key of an event key (`T 'I' I 'S' S 'E' seq` -> `T 'I' I 'L' S`)
/// and the key's sequence number.
fn session_dir_of_event(key: &[u8]) -> Option<(Vec<u8>, u64)> {
    let mut r = keys::KeyReader::new(key);
    let tenant = r.str().ok()?;
    r.expect_tag(keys::tag::IDENTITY).ok()?;
    let identity = r.str().ok()?;
    r.expect_tag(keys::tag::SESSION).ok()?;
    let session = r.str().ok()?;
    r.expect_tag(keys::tag::EVENT).ok()?;
    let seq = r.u64().ok()?;
    Some((keys::session_dir(&tenant, &identity, &session), seq))
}
