//! The order-preserving key codec and the key layout.
//!
//! Keys are byte strings whose lexicographic order is the logical order of their parts:
//! - a string part is its bytes with `0x00` escaped as `0x00 0xFF`, closed by `0x00 0x01`;
//!   so `"a" < "ab"` holds for the encodings too, and no encoding is a prefix of another;
//! - an integer part is 8 bytes big-endian;
//! - a tag is one ASCII byte naming what follows.
//!
//! Every key of the data space starts with the tenant, so one tenant is one contiguous
//! range, one identity inside it is one contiguous range, one session inside that too.
//! `docs/keys.md` draws the layout byte by byte.
//!
//! ```text
//! data space
//!   T 'D' I                      identity directory entry   -> IdentityRecord
//!   T 'I' I 'L' S                session directory entry    -> SessionRecord
//!   T 'I' I 'S' S 'E' seq        event                      -> EventRecord
//!   T 'I' I 'S' S 'K' key        idempotency key            -> IdempotencyRecord
//!   T 'I' I 'S' S 'R' sha256     blob references of session -> BlobRefRecord
//!   T 'I' I 'S' S 'T' key        session state document     -> StateRecord
//!   T 'I' I 'M' M                current memory version     -> MemoryRecord
//!   T 'I' I 'N' M version        superseded memory version  -> MemoryRecord
//!   T 'I' I 'T' key              identity state document    -> StateRecord
//!   T 'B' sha256                 blob                       -> BlobRecord
//! meta space
//!   'F'                          format version             -> FormatRecord
//!   'Q'                          last changelog sequence    -> SeqRecord (kept on truncation)
//!   'T' T                        tenant                     -> TenantRecord
//! log space
//!   seq                          changelog entry            -> ChangeRecord
//! ```

use thiserror::Error;

/// A key that does not decode: a corruption, never the user's fault.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("malformed key: {reason}")]
pub struct KeyError {
    pub reason: &'static str,
}

const ESCAPE: u8 = 0x00;
const ESCAPED_ZERO: u8 = 0xFF;
const TERMINATOR: u8 = 0x01;

/// Appends the order-preserving encoding of `s` to `out`.
pub fn put_str(out: &mut Vec<u8>, s: &str) {
    for &b in s.as_bytes() {
        out.push(b);
        if b == ESCAPE {
            out.push(ESCAPED_ZERO);
        }
    }
    out.push(ESCAPE);
    out.push(TERMINATOR);
}

/// Appends `n` as 8 big-endian bytes.
pub fn put_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(&n.to_be_bytes());
}

/// Reads keys part by part.
#[derive(Debug)]
pub struct KeyReader<'a> {
    rest: &'a [u8],
}

impl<'a> KeyReader<'a> {
    pub fn new(key: &'a [u8]) -> Self {
        KeyReader { rest: key }
    }

    pub fn str(&mut self) -> Result<String, KeyError> {
        let mut bytes = Vec::new();
        let mut i = 0;
        loop {
            let Some(&b) = self.rest.get(i) else {
                return Err(KeyError { reason: "unterminated string" });
            };
            if b == ESCAPE {
                match self.rest.get(i + 1) {
                    Some(&ESCAPED_ZERO) => bytes.push(0),
                    Some(&TERMINATOR) => {
                        self.rest = &self.rest[i + 2..];
                        return String::from_utf8(bytes).map_err(|_| KeyError { reason: "string is not UTF-8" });
                    }
                    _ => return Err(KeyError { reason: "bad escape" }),
                }
                i += 2;
            } else {
                bytes.push(b);
                i += 1;
            }
        }
    }

    pub fn u64(&mut self) -> Result<u64, KeyError> {
        let Some((head, rest)) = self.rest.split_first_chunk::<8>() else {
            return Err(KeyError { reason: "short integer" });
        };
        self.rest = rest;
        Ok(u64::from_be_bytes(*head))
    }

    pub fn tag(&mut self) -> Result<u8, KeyError> {
        let Some((&t, rest)) = self.rest.split_first() else {
            return Err(KeyError { reason: "missing tag" });
        };
        self.rest = rest;
        Ok(t)
    }

    pub fn expect_tag(&mut self, tag: u8) -> Result<(), KeyError> {
        if self.tag()? == tag { Ok(()) } else { Err(KeyError { reason: "unexpected tag" }) }
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], KeyError> {
        if self.rest.len() < n {
            return Err(KeyError { reason: "short key" });
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    pub fn finish(self) -> Result<(), KeyError> {
        if self.rest.is_empty() { Ok(()) } else { Err(KeyError { reason: "trailing bytes" }) }
    }
}

/// The smallest key greater than every key that starts with `prefix`; `None` when there is
/// none (the prefix is all `0xFF`).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Tags of the data space.
pub mod tag {
    pub const IDENTITY_DIR: u8 = b'D';
    pub const IDENTITY: u8 = b'I';
    pub const BLOB: u8 = b'B';
    pub const SESSION_DIR: u8 = b'L';
    pub const SESSION: u8 = b'S';
    pub const EVENT: u8 = b'E';
    pub const IDEMPOTENCY: u8 = b'K';
    pub const BLOB_REF: u8 = b'R';
    pub const STATE: u8 = b'T';
    pub const MEMORY: u8 = b'M';
    pub const MEMORY_HISTORY: u8 = b'N';
}

/// Keys of the meta space.
pub mod meta {
    pub const FORMAT: &[u8] = b"F";
    pub const LAST_CHANGE_SEQ: &[u8] = b"Q";
    /// The local embedder's mark: every change up to it has been handled.
    pub const EMBEDDER_MARK: &[u8] = b"V";
    pub const TENANT: u8 = b'T';

    pub fn tenant(tenant: &str) -> Vec<u8> {
        let mut k = vec![TENANT];
        super::put_str(&mut k, tenant);
        k
    }

    pub fn tenants_prefix() -> Vec<u8> {
        vec![TENANT]
    }

    pub const API_KEY: u8 = b'A';

    /// An API key's record, by its public id.
    pub fn api_key(key_id: &str) -> Vec<u8> {
        let mut k = vec![API_KEY];
        super::put_str(&mut k, key_id);
        k
    }

    pub fn api_keys_prefix() -> Vec<u8> {
        vec![API_KEY]
    }
}

/// The changelog key of change `seq`.
pub fn change(seq: u64) -> Vec<u8> {
    seq.to_be_bytes().to_vec()
}

/// Decodes a changelog key.
pub fn decode_change(key: &[u8]) -> Result<u64, KeyError> {
    let mut r = KeyReader::new(key);
    let seq = r.u64()?;
    r.finish()?;
    Ok(seq)
}

pub fn tenant_prefix(tenant: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + 2);
    put_str(&mut k, tenant);
    k
}

fn with_tag(mut prefix: Vec<u8>, tag: u8) -> Vec<u8> {
    prefix.push(tag);
    prefix
}

fn with_str(mut prefix: Vec<u8>, tag: u8, s: &str) -> Vec<u8> {
    prefix.push(tag);
    put_str(&mut prefix, s);
    prefix
}

pub fn identity_dir_prefix(tenant: &str) -> Vec<u8> {
    with_tag(tenant_prefix(tenant), tag::IDENTITY_DIR)
}

pub fn identity_dir(tenant: &str, identity: &str) -> Vec<u8> {
    with_str(tenant_prefix(tenant), tag::IDENTITY_DIR, identity)
}

/// Everything an identity owns (but its directory entry) lies under this prefix.
pub fn identity_prefix(tenant: &str, identity: &str) -> Vec<u8> {
    with_str(tenant_prefix(tenant), tag::IDENTITY, identity)
}

pub fn session_dir_prefix(tenant: &str, identity: &str) -> Vec<u8> {
    with_tag(identity_prefix(tenant, identity), tag::SESSION_DIR)
}

pub fn session_dir(tenant: &str, identity: &str, session: &str) -> Vec<u8> {
    with_str(identity_prefix(tenant, identity), tag::SESSION_DIR, session)
}

/// Everything a session owns (but its directory entry) lies under this prefix.
pub fn session_prefix(tenant: &str, identity: &str, session: &str) -> Vec<u8> {
    with_str(identity_prefix(tenant, identity), tag::SESSION, session)
}

pub fn events_prefix(tenant: &str, identity: &str, session: &str) -> Vec<u8> {
    with_tag(session_prefix(tenant, identity, session), tag::EVENT)
}

pub fn event(tenant: &str, identity: &str, session: &str, seq: u64) -> Vec<u8> {
    let mut k = events_prefix(tenant, identity, session);
    put_u64(&mut k, seq);
    k
}

/// What a data key says about one session's history: for the session's directory entry,
/// that key and `None`; for one of its events, the session's directory key and the event's
/// sequence. `None` for every other key (and for a malformed one). Reads the key in place.
pub fn history_key(key: &[u8]) -> Option<(Vec<u8>, Option<u64>)> {
    let tag_at = identity_end(key)?;
    let session_end = str_end(key, tag_at + 1)?;
    match key[tag_at] {
        tag::SESSION_DIR if session_end == key.len() => Some((key.to_vec(), None)),
        tag::SESSION if key.get(session_end) == Some(&tag::EVENT) && key.len() == session_end + 9 => {
            let seq = u64::from_be_bytes(key[session_end + 1..].try_into().ok()?);
            let mut dir = key[..session_end].to_vec();
            dir[tag_at] = tag::SESSION_DIR;
            Some((dir, Some(seq)))
        }
        _ => None,
    }
}

/// When every key in `[start, end)` lies under one identity (the range of a session's or
/// an identity's records), that identity's prefix: the encoded tenant, the identity tag
/// and the encoded identity, which its session directory keys start with too.
pub fn identity_range<'a>(start: &'a [u8], end: &[u8]) -> Option<&'a [u8]> {
    let scope = &start[..identity_end(start)?];
    let inside = end.starts_with(scope) || prefix_end(scope).is_some_and(|e| e == end);
    inside.then_some(scope)
}

/// For a key under an identity (`T 'I' I ...`), where its encoded identity ends.
fn identity_end(key: &[u8]) -> Option<usize> {
    let tenant_end = str_end(key, 0)?;
    if *key.get(tenant_end)? != tag::IDENTITY {
        return None;
    }
    str_end(key, tenant_end + 1)
}

/// Where the string part that starts at `from` ends (just past its terminator).
fn str_end(key: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    loop {
        if *key.get(i)? == ESCAPE {
            match *key.get(i + 1)? {
                TERMINATOR => return Some(i + 2),
                ESCAPED_ZERO => i += 2,
                _ => return None,
            }
        } else {
            i += 1;
        }
    }
}

/// The event sequence number at the end of an event key that starts with `events_prefix`.
pub fn event_seq(events_prefix: &[u8], key: &[u8]) -> Result<u64, KeyError> {
    let Some(rest) = key.strip_prefix(events_prefix) else {
        return Err(KeyError { reason: "event key outside its session" });
    };
    let mut r = KeyReader::new(rest);
    let seq = r.u64()?;
    r.finish()?;
    Ok(seq)
}

pub fn idempotency(tenant: &str, identity: &str, session: &str, key: &str) -> Vec<u8> {
    with_str(session_prefix(tenant, identity, session), tag::IDEMPOTENCY, key)
}

pub fn blob_ref(tenant: &str, identity: &str, session: &str, sha256: &[u8; 32]) -> Vec<u8> {
    let mut k = with_tag(session_prefix(tenant, identity, session), tag::BLOB_REF);
    k.extend_from_slice(sha256);
    k
}

pub fn session_state_prefix(tenant: &str, identity: &str, session: &str) -> Vec<u8> {
    with_tag(session_prefix(tenant, identity, session), tag::STATE)
}

pub fn identity_state_prefix(tenant: &str, identity: &str) -> Vec<u8> {
    with_tag(identity_prefix(tenant, identity), tag::STATE)
}

/// A state document key: `scope_prefix` is a session or identity state prefix.
pub fn state(scope_prefix: &[u8], key: &str) -> Vec<u8> {
    let mut k = scope_prefix.to_vec();
    put_str(&mut k, key);
    k
}

pub fn memories_prefix(tenant: &str, identity: &str) -> Vec<u8> {
    with_tag(identity_prefix(tenant, identity), tag::MEMORY)
}

pub fn memory(tenant: &str, identity: &str, memory: &str) -> Vec<u8> {
    with_str(identity_prefix(tenant, identity), tag::MEMORY, memory)
}

pub fn memory_history_prefix(tenant: &str, identity: &str, memory: &str) -> Vec<u8> {
    with_str(identity_prefix(tenant, identity), tag::MEMORY_HISTORY, memory)
}

pub fn memory_history(tenant: &str, identity: &str, memory: &str, version: u64) -> Vec<u8> {
    let mut k = memory_history_prefix(tenant, identity, memory);
    put_u64(&mut k, version);
    k
}

pub fn blob(tenant: &str, sha256: &[u8; 32]) -> Vec<u8> {
    let mut k = with_tag(tenant_prefix(tenant), tag::BLOB);
    k.extend_from_slice(sha256);
    k
}

/// Decodes the last string part of a key that is `prefix` followed by one string.
pub fn trailing_str(prefix: &[u8], key: &[u8]) -> Result<String, KeyError> {
    let Some(rest) = key.strip_prefix(prefix) else {
        return Err(KeyError { reason: "key outside its range" });
    };
    let mut r = KeyReader::new(rest);
    let s = r.str()?;
    r.finish()?;
    Ok(s)
}

/// Decodes the trailing 32-byte hash of a blob or blob-reference key under `prefix`.
pub fn trailing_sha256(prefix: &[u8], key: &[u8]) -> Result<[u8; 32], KeyError> {
    let Some(rest) = key.strip_prefix(prefix) else {
        return Err(KeyError { reason: "key outside its range" });
    };
    <[u8; 32]>::try_from(rest).map_err(|_| KeyError { reason: "hash is not 32 bytes" })
}

/// A human-readable rendering of any key, for error messages and the admin tool:
/// printable ASCII as is, other bytes as `\xNN`.
pub fn render(key: &[u8]) -> String {
    let mut s = String::with_capacity(key.len());
    for &b in key {
        if b.is_ascii_graphic() || b == b' ' {
            s.push(b as char);
        } else {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s
}

/// What a stored key is, by its shape: the record type its value must decode as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyKind {
    Format,
    LastChangeSeq,
    Tenant,
    ApiKey,
    IdentityDir,
    SessionDir,
    Event,
    Idempotency,
    BlobRef,
    SessionState,
    Memory,
    MemoryHistory,
    IdentityState,
    Blob,
    Change,
}

/// Classifies a key of the meta space.
pub fn classify_meta(key: &[u8]) -> Result<KeyKind, KeyError> {
    if key == meta::FORMAT {
        return Ok(KeyKind::Format);
    }
    if key == meta::LAST_CHANGE_SEQ || key == meta::EMBEDDER_MARK {
        return Ok(KeyKind::LastChangeSeq);
    }
    let mut r = KeyReader::new(key);
    let kind = match r.tag()? {
        meta::TENANT => KeyKind::Tenant,
        meta::API_KEY => KeyKind::ApiKey,
        _ => return Err(KeyError { reason: "unknown meta key" }),
    };
    r.str()?;
    r.finish()?;
    Ok(kind)
}

/// A data key taken apart: its kind and the names and numbers it holds (empty or zero
/// where the kind has none).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyParts {
    pub tenant: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub identity: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub session: String,
    /// Idempotency key, state key or memory id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Event sequence or memory version.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub seq: u64,
    /// Blob hash, lowercase hex.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Bytes as lowercase hex.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha_part(r: &mut KeyReader<'_>) -> Result<String, KeyError> {
    Ok(to_hex(r.bytes(32)?))
}

fn sha_bytes(hex: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if hex.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl KeyParts {
    /// The key these parts name; `None` for a kind outside the data space or a bad hash.
    pub fn encode(&self, kind: KeyKind) -> Option<Vec<u8>> {
        let (t, i, s, n) = (&*self.tenant, &*self.identity, &*self.session, &*self.name);
        Some(match kind {
            KeyKind::IdentityDir => identity_dir(t, i),
            KeyKind::Blob => blob(t, &sha_bytes(&self.sha256)?),
            KeyKind::SessionDir => session_dir(t, i, s),
            KeyKind::Event => event(t, i, s, self.seq),
            KeyKind::Idempotency => idempotency(t, i, s, n),
            KeyKind::BlobRef => blob_ref(t, i, s, &sha_bytes(&self.sha256)?),
            KeyKind::SessionState => state(&session_state_prefix(t, i, s), n),
            KeyKind::Memory => memory(t, i, n),
            KeyKind::MemoryHistory => memory_history(t, i, n, self.seq),
            KeyKind::IdentityState => state(&identity_state_prefix(t, i), n),
            _ => return None,
        })
    }
}

/// Takes a key of the data space apart.
pub fn decode_data(key: &[u8]) -> Result<(KeyKind, KeyParts), KeyError> {
    let mut r = KeyReader::new(key);
    let mut p = KeyParts { tenant: r.str()?, ..KeyParts::default() };
    let kind = match r.tag()? {
        tag::IDENTITY_DIR => {
            p.identity = r.str()?;
            KeyKind::IdentityDir
        }
        tag::BLOB => {
            p.sha256 = sha_part(&mut r)?;
            KeyKind::Blob
        }
        tag::IDENTITY => {
            p.identity = r.str()?;
            match r.tag()? {
                tag::SESSION_DIR => {
                    p.session = r.str()?;
                    KeyKind::SessionDir
                }
                tag::SESSION => {
                    p.session = r.str()?;
                    match r.tag()? {
                        tag::EVENT => {
                            p.seq = r.u64()?;
                            KeyKind::Event
                        }
                        tag::IDEMPOTENCY => {
                            p.name = r.str()?;
                            KeyKind::Idempotency
                        }
                        tag::BLOB_REF => {
                            p.sha256 = sha_part(&mut r)?;
                            KeyKind::BlobRef
                        }
                        tag::STATE => {
                            p.name = r.str()?;
                            KeyKind::SessionState
                        }
                        _ => return Err(KeyError { reason: "unknown session key tag" }),
                    }
                }
                tag::MEMORY => {
                    p.name = r.str()?;
                    KeyKind::Memory
                }
                tag::MEMORY_HISTORY => {
                    p.name = r.str()?;
                    p.seq = r.u64()?;
                    KeyKind::MemoryHistory
                }
                tag::STATE => {
                    p.name = r.str()?;
                    KeyKind::IdentityState
                }
                _ => return Err(KeyError { reason: "unknown identity key tag" }),
            }
        }
        _ => return Err(KeyError { reason: "unknown data key tag" }),
    };
    r.finish()?;
    Ok((kind, p))
}

/// Classifies a key of the data space; returns its tenant too.
pub fn classify_data(key: &[u8]) -> Result<(KeyKind, String), KeyError> {
    decode_data(key).map(|(kind, parts)| (kind, parts.tenant))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc(s: &str) -> Vec<u8> {
        let mut v = Vec::new();
        put_str(&mut v, s);
        v
    }

    #[test]
    fn data_keys_come_apart_and_back() {
        let sha = [7u8; 32];
        for (kind, key) in [
            (KeyKind::IdentityDir, identity_dir("t", "i")),
            (KeyKind::Blob, blob("t", &sha)),
            (KeyKind::SessionDir, session_dir("t", "i", "s")),
            (KeyKind::Event, event("t", "i", "s", 42)),
            (KeyKind::Idempotency, idempotency("t", "i", "s", "k")),
            (KeyKind::BlobRef, blob_ref("t", "i", "s", &sha)),
            (KeyKind::SessionState, state(&session_state_prefix("t", "i", "s"), "k")),
            (KeyKind::Memory, memory("t", "i", "m")),
            (KeyKind::MemoryHistory, memory_history("t", "i", "m", 3)),
            (KeyKind::IdentityState, state(&identity_state_prefix("t", "i"), "k")),
        ] {
            let (found, parts) = decode_data(&key).expect("decodes");
            assert_eq!(found, kind);
            assert_eq!(parts.encode(kind), Some(key), "{kind:?}");
        }
    }

    #[test]
    fn history_keys_name_their_session() {
        for (t, i, s) in [("t", "i", "s"), ("a\0b", "\0", "s\0\0"), ("", "", "")] {
            let dir = session_dir(t, i, s);
            assert_eq!(history_key(&dir), Some((dir.clone(), None)));
            assert_eq!(history_key(&event(t, i, s, 7)), Some((dir.clone(), Some(7))));
            assert_eq!(history_key(&event(t, i, s, u64::MAX)), Some((dir, Some(u64::MAX))));
            for other in [
                identity_dir(t, i),
                blob(t, &[1; 32]),
                idempotency(t, i, s, "k"),
                blob_ref(t, i, s, &[2; 32]),
                state(&session_state_prefix(t, i, s), "k"),
                memory(t, i, "m"),
                memory_history(t, i, "m", 3),
                state(&identity_state_prefix(t, i), "k"),
                events_prefix(t, i, s),
            ] {
                assert_eq!(history_key(&other), None, "{}", render(&other));
            }
        }
        let (identity, session) = (identity_prefix("t", "i"), session_prefix("t", "i", "s"));
        let identity_end = prefix_end(&identity).expect("an end");
        assert_eq!(identity_range(&identity, &identity_end), Some(identity.as_slice()));
        let session_end = prefix_end(&session).expect("an end");
        assert_eq!(identity_range(&session, &session_end), Some(identity.as_slice()));
        assert!(session_dir("t", "i", "s").starts_with(&identity), "the directory key is inside");
        let other = identity_prefix("t", "j");
        assert_eq!(identity_range(&identity, &other), None, "a range past the identity");
        assert_eq!(identity_range(&tenant_prefix("t"), &identity_end), None, "a tenant's range");
        let mut cut = event("t", "i", "s", 7);
        cut.pop();
        assert_eq!(history_key(&cut), None, "a short sequence");
        assert_eq!(history_key(b"t\0"), None, "an unterminated string");
    }

    #[test]
    fn strings_round_trip_with_zero_bytes() {
        for s in ["", "a", "a\0b", "\0", "\0\0\u{ff}", "ümlaut"] {
            let e = enc(s);
            let mut r = KeyReader::new(&e);
            assert_eq!(r.str().as_deref(), Ok(s));
            assert!(r.finish().is_ok());
        }
    }

    #[test]
    fn prefix_end_carries_over_ff() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xFF, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xFF]), None);
    }

    #[test]
    fn tenants_do_not_nest() {
        let a = event("a", "u", "s", 1);
        let ab = tenant_prefix("ab");
        assert!(!a.starts_with(&ab));
        assert!(!ab.starts_with(&tenant_prefix("a")));
    }

    #[test]
    fn truncated_keys_are_errors() {
        let e = enc("abc");
        let mut r = KeyReader::new(&e[..e.len() - 1]);
        assert!(r.str().is_err());
        let mut r = KeyReader::new(&[1, 2, 3]);
        assert!(r.u64().is_err());
    }

    proptest! {
        #[test]
        fn string_order_is_preserved(a in ".{0,12}", b in ".{0,12}") {
            prop_assert_eq!(a.as_bytes().cmp(b.as_bytes()), enc(&a).cmp(&enc(&b)));
        }

        #[test]
        fn composite_order_is_preserved(a in ".{0,6}", x in any::<u64>(), b in ".{0,6}", y in any::<u64>()) {
            let ka = event("t", &a, "s", x);
            let kb = event("t", &b, "s", y);
            let logical = a.as_bytes().cmp(b.as_bytes()).then(x.cmp(&y));
            prop_assert_eq!(logical, ka.cmp(&kb));
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let mut r = KeyReader::new(&bytes);
            let _ = r.str();
            let _ = r.u64();
            let _ = r.tag();
        }

        #[test]
        fn event_keys_round_trip(t in "[a-z]{1,5}", i in ".{0,8}", s in ".{0,8}", seq in any::<u64>()) {
            let prefix = events_prefix(&t, &i, &s);
            let key = event(&t, &i, &s, seq);
            prop_assert_eq!(event_seq(&prefix, &key), Ok(seq));
        }
    }

    #[test]
    fn every_key_builder_classifies_as_its_kind() {
        let sha = [7u8; 32];
        let cases = [
            (identity_dir("t", "i"), KeyKind::IdentityDir),
            (session_dir("t", "i", "s"), KeyKind::SessionDir),
            (event("t", "i", "s", 9), KeyKind::Event),
            (idempotency("t", "i", "s", "k"), KeyKind::Idempotency),
            (blob_ref("t", "i", "s", &sha), KeyKind::BlobRef),
            (state(&session_state_prefix("t", "i", "s"), "k"), KeyKind::SessionState),
            (memory("t", "i", "m"), KeyKind::Memory),
            (memory_history("t", "i", "m", 2), KeyKind::MemoryHistory),
            (state(&identity_state_prefix("t", "i"), "k"), KeyKind::IdentityState),
            (blob("t", &sha), KeyKind::Blob),
        ];
        for (key, kind) in cases {
            assert_eq!(classify_data(&key), Ok((kind, "t".to_string())), "{}", render(&key));
            let mut longer = key.clone();
            longer.push(1);
            assert!(classify_data(&longer).is_err(), "trailing bytes accepted: {}", render(&longer));
        }
        assert_eq!(classify_meta(&meta::tenant("t")), Ok(KeyKind::Tenant));
        assert_eq!(classify_meta(&meta::api_key("k")), Ok(KeyKind::ApiKey));
        assert_eq!(classify_meta(meta::FORMAT), Ok(KeyKind::Format));
        assert!(classify_meta(b"Z").is_err());
    }
}
