//! `verify`: reads every stored value, checks its frame (format byte, CRC32) and that it
//! decodes as the record its key says it is, and that every event belongs to a session
//! that exists and lies at or below its head. Then it waits for the indexes to catch up and
//! checks that they agree with storage.

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

/// Decodes `bytes` as the record `kind` names; the error says why it does not.
/// Returns the session head or event seq, for the cross-checks.
fn check_kind(kind: KeyKind, bytes: &[u8]) -> std::result::Result<Option<u64>, String> {
    match kind {
        KeyKind::Format => check::<FormatRecord>(bytes).map(drop),
        KeyKind::LastChangeSeq => check::<SeqRecord>(bytes).map(drop),
        KeyKind::Tenant => check::<TenantRecord>(bytes).map(drop),
        KeyKind::ApiKey => check::<ApiKeyRecord>(bytes).map(drop),
        KeyKind::IdentityDir => check::<IdentityRecord>(bytes).map(drop),
        KeyKind::SessionDir => return check::<SessionRecord>(bytes).map(|s| Some(s.head_seq)),
        KeyKind::Event => {
            return check::<EventRecord>(bytes).and_then(|e| whole_floats(&e.embedding).map(|()| Some(e.seq)));
        }
        KeyKind::Idempotency => check::<IdempotencyRecord>(bytes).map(drop),
        KeyKind::BlobRef => check::<BlobRefRecord>(bytes).map(drop),
        KeyKind::SessionState | KeyKind::IdentityState => check::<StateRecord>(bytes).map(drop),
        KeyKind::Memory | KeyKind::MemoryHistory => {
            check::<MemoryRecord>(bytes).and_then(|m| whole_floats(&m.embedding))
        }
        KeyKind::Blob => check::<BlobRecord>(bytes).map(drop),
        KeyKind::Change => check::<ChangeRecord>(bytes).map(drop),
    }
    .map(|()| None)
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
                let kind = match space {
                    Space::Meta => keys::classify_meta(&key),
                    Space::Data => keys::classify_data(&key).map(|(kind, _)| kind),
                    Space::Log => keys::decode_change(&key).map(|_| KeyKind::Change),
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
                match check_kind(kind, &value) {
                    Err(reason) => report.problems.push(problem(reason)),
                    Ok(Some(n)) if kind == KeyKind::SessionDir => {
                        heads.insert(key, n);
                    }
                    Ok(Some(seq)) => events.push((key, seq)),
                    Ok(None) => {}
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
