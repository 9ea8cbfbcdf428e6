//! JSON for the hottest response, a history page, written by hand: byte for byte what
//! `serde_json` writes for a [`HistoryPage`] (the tests compare the two on random pages),
//! without serde's per-field dispatch, into one buffer sized up front, with strings
//! scanned for characters to escape eight bytes at a time.
//!
//! Every field is written here except the rarer, structured ones (`data`, `embedding`,
//! `metadata`, `blob`), which go through `serde_json`, so their format has one definition.

use crate::model::{Event, HistoryPage};

/// `page` as JSON, as `serde_json::to_vec(page)` writes it.
pub fn history_page(page: &HistoryPage) -> Vec<u8> {
    let HistoryPage { events, next_cursor, head_seq } = page;
    let mut out = Vec::with_capacity(page_size_hint(events));
    write_page(&mut out, events.iter(), write_event, *next_cursor, *head_seq);
    out
}

/// A history page as JSON from its events already written as JSON (by [`event`]): the
/// same bytes as [`history_page`] of the page they came from.
pub fn history_page_of_written<'a>(
    events: impl Iterator<Item = &'a [u8]> + Clone,
    next_cursor: Option<u64>,
    head_seq: u64,
) -> Vec<u8> {
    let size: usize = events.clone().map(|e| e.len() + 1).sum();
    let mut out = Vec::with_capacity(size + 64);
    write_page(&mut out, events, |out, json| out.extend_from_slice(json), next_cursor, head_seq);
    out
}

/// One event as JSON, as `serde_json` writes it.
pub fn event(event: &Event) -> Vec<u8> {
    let mut out = Vec::with_capacity(page_size_hint(std::slice::from_ref(event)));
    write_event(&mut out, event);
    out
}

/// The page's frame around `events`, each written by `write`.
fn write_page<T>(
    out: &mut Vec<u8>,
    events: impl Iterator<Item = T>,
    mut write: impl FnMut(&mut Vec<u8>, T),
    next_cursor: Option<u64>,
    head_seq: u64,
) {
    out.extend_from_slice(b"{\"events\":[");
    for (i, event) in events.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write(out, event);
    }
    out.extend_from_slice(b"],\"next_cursor\":");
    match next_cursor {
        Some(cursor) => write_int(out, cursor),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"head_seq\":");
    write_int(out, head_seq);
    out.push(b'}');
}

/// Enough for a page without escapes or the rarer fields, so that it is written with no
/// reallocation: each event's strings plus room for its field names and numbers.
fn page_size_hint(events: &[Event]) -> usize {
    const PER_EVENT: usize = 192;
    let strings: usize = events
        .iter()
        .map(|e| {
            e.session.len()
                + e.text.as_ref().map_or(0, String::len)
                + e.name.as_ref().map_or(0, String::len)
                + e.call_id.as_ref().map_or(0, String::len)
        })
        .sum();
    64 + strings + PER_EVENT * events.len()
}

/// One event, fields in `Event`'s declaration order (serde's), optional ones skipped when
/// absent as its `skip_serializing_if` attributes say.
fn write_event(out: &mut Vec<u8>, event: &Event) {
    // Destructured, so that a field added to `Event` fails to compile here until written.
    let Event {
        session,
        seq,
        kind,
        role,
        text,
        data,
        embedding,
        metadata,
        token_count,
        timestamp_ms,
        created_at_ms,
        name,
        call_id,
        blob,
    } = event;
    out.extend_from_slice(b"{\"session\":");
    write_str(out, session);
    out.extend_from_slice(b",\"seq\":");
    write_int(out, *seq);
    out.extend_from_slice(b",\"kind\":");
    write_str(out, kind.as_str());
    if let Some(role) = role {
        out.extend_from_slice(b",\"role\":");
        write_str(out, role.as_str());
    }
    if let Some(text) = text {
        out.extend_from_slice(b",\"text\":");
        write_str(out, text);
    }
    if let Some(data) = data {
        out.extend_from_slice(b",\"data\":");
        write_serde(out, data);
    }
    if let Some(embedding) = embedding {
        out.extend_from_slice(b",\"embedding\":");
        write_serde(out, embedding);
    }
    if !metadata.is_empty() {
        out.extend_from_slice(b",\"metadata\":");
        write_serde(out, metadata);
    }
    if let Some(count) = token_count {
        out.extend_from_slice(b",\"token_count\":");
        write_int(out, *count);
    }
    out.extend_from_slice(b",\"timestamp_ms\":");
    write_int(out, *timestamp_ms);
    out.extend_from_slice(b",\"created_at_ms\":");
    write_int(out, *created_at_ms);
    if let Some(name) = name {
        out.extend_from_slice(b",\"name\":");
        write_str(out, name);
    }
    if let Some(call_id) = call_id {
        out.extend_from_slice(b",\"call_id\":");
        write_str(out, call_id);
    }
    if let Some(blob) = blob {
        out.extend_from_slice(b",\"blob\":");
        write_serde(out, blob);
    }
    out.push(b'}');
}

fn write_serde<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // Writing into a Vec cannot fail, and these types (JSON values, maps with string keys,
    // finite floats, plain structs) always serialize.
    serde_json::to_writer(&mut *out, value).expect("a JSON value serializes");
}

fn write_int(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `s` as a JSON string, escaped as `serde_json` escapes (`\"`, `\\`, the short forms of
/// `\b \t \n \f \r`, `\u00xx` for other control characters; nothing else).
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut clean_from = 0;
    let mut i = 0;
    while i < bytes.len() {
        if let Some(word) = bytes.get(i..i + 8) {
            let word = u64::from_le_bytes(word.try_into().expect("eight bytes"));
            if !needs_escape(word) {
                i += 8;
                continue;
            }
        }
        // Somewhere in these (up to) eight bytes is a character to escape.
        let end = (i + 8).min(bytes.len());
        while i < end {
            let byte = bytes[i];
            if let Some(escape) = escape(byte) {
                out.extend_from_slice(&bytes[clean_from..i]);
                match escape {
                    Escape::Short(c) => out.extend_from_slice(&[b'\\', c]),
                    Escape::Unicode => {
                        const HEX: &[u8; 16] = b"0123456789abcdef";
                        let (hi, lo) = (HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 0xf)]);
                        out.extend_from_slice(&[b'\\', b'u', b'0', b'0', hi, lo]);
                    }
                }
                clean_from = i + 1;
            }
            i += 1;
        }
    }
    out.extend_from_slice(&bytes[clean_from..]);
    out.push(b'"');
}

enum Escape {
    /// `\` and this character.
    Short(u8),
    /// `\u00` and two hex digits.
    Unicode,
}

fn escape(byte: u8) -> Option<Escape> {
    Some(match byte {
        b'"' => Escape::Short(b'"'),
        b'\\' => Escape::Short(b'\\'),
        0x08 => Escape::Short(b'b'),
        b'\t' => Escape::Short(b't'),
        b'\n' => Escape::Short(b'n'),
        0x0c => Escape::Short(b'f'),
        b'\r' => Escape::Short(b'r'),
        0x00..=0x1f => Escape::Unicode,
        _ => return None,
    })
}

/// Whether any of the eight bytes of `word` is a control character, `"` or `\`. Exact
/// (no false answers either way): "has a byte less than n" is `(x - n·ONES) & !x & HIGH`
/// for n ≤ 128, and "has a zero byte" is that with n = 1.
fn needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let less_than = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH;
    let control = less_than(word, 0x20);
    let quote = less_than(word ^ (ONES * u64::from(b'"')), 1);
    let backslash = less_than(word ^ (ONES * u64::from(b'\\')), 1);
    control | quote | backslash != 0
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::model::{BlobRef, EventKind, Role};

    /// Strings dense in what needs escaping, and in multi-byte characters next to it.
    fn tricky_string() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                4 => prop::char::range('a', 'z'),
                2 => prop::char::range('\u{0}', '\u{20}'),
                1 => Just('"'),
                1 => Just('\\'),
                1 => Just('/'),
                1 => Just('\u{7f}'),
                1 => Just('é'),
                1 => Just('\u{2028}'),
                1 => Just('🦀'),
            ],
            0..40,
        )
        .prop_map(|chars| chars.into_iter().collect())
    }

    fn event() -> impl Strategy<Value = Event> {
        (
            (
                tricky_string(),
                any::<u64>(),
                prop::sample::select(EventKind::ALL),
                prop::option::of(prop::sample::select(Role::ALL)),
            ),
            (
                prop::option::of(tricky_string()),
                any::<bool>(),
                prop::option::of(prop::collection::vec(-1.0f32..1.0, 0..4)),
            ),
            (
                prop::option::of((tricky_string(), tricky_string())),
                prop::option::of(any::<u32>()),
                any::<i64>(),
                any::<i64>(),
            ),
            (
                prop::option::of(tricky_string()),
                prop::option::of(tricky_string()),
                prop::option::of((tricky_string(), any::<u64>())),
            ),
        )
            .prop_map(
                |(
                    (session, seq, kind, role),
                    (text, with_data, embedding),
                    (meta, token_count, ts, created),
                    (name, call_id, blob),
                )| {
                    let mut metadata = crate::model::JsonMap::new();
                    if let Some((k, v)) = meta {
                        metadata.insert(k, serde_json::Value::String(v));
                    }
                    Event {
                        session,
                        seq,
                        kind,
                        role,
                        data: with_data.then(|| serde_json::json!({"q": text.clone(), "n": [1, 2.5, null]})),
                        text,
                        embedding,
                        metadata,
                        token_count,
                        timestamp_ms: ts,
                        created_at_ms: created,
                        name,
                        call_id,
                        blob: blob.map(|(sha256, len_bytes)| BlobRef { sha256, len_bytes }),
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn strings_escape_as_serde_json_does(s in tricky_string()) {
            let mut out = Vec::new();
            write_str(&mut out, &s);
            prop_assert_eq!(String::from_utf8(out).expect("UTF-8"), serde_json::to_string(&s).expect("serializes"));
        }

        #[test]
        fn the_word_test_agrees_with_a_byte_at_a_time(word in any::<u64>()) {
            let bytewise = word.to_le_bytes().iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
            prop_assert_eq!(needs_escape(word), bytewise);
        }

        #[test]
        fn the_word_test_agrees_on_words_of_edge_bytes(
            bytes in prop::array::uniform8(prop::sample::select(vec![0x00u8, 0x1f, 0x20, 0x21, 0x22, 0x23, 0x5b, 0x5c, 0x5d, 0x7f, 0x80, 0xff]))
        ) {
            let bytewise = bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
            prop_assert_eq!(needs_escape(u64::from_le_bytes(bytes)), bytewise);
        }

        #[test]
        fn pages_are_written_as_serde_json_writes_them(
            events in prop::collection::vec(event(), 0..6),
            next_cursor in prop::option::of(any::<u64>()),
            head_seq in any::<u64>(),
        ) {
            let written: Vec<Vec<u8>> = events.iter().map(super::event).collect();
            let page = HistoryPage { events, next_cursor, head_seq };
            let ours = String::from_utf8(history_page(&page)).expect("UTF-8");
            prop_assert_eq!(&ours, &serde_json::to_string(&page).expect("serializes"));
            let of_written = history_page_of_written(written.iter().map(Vec::as_slice), next_cursor, head_seq);
            prop_assert_eq!(String::from_utf8(of_written).expect("UTF-8"), ours);
        }
    }

    #[test]
    fn every_byte_value_escapes_as_serde_json_does() {
        // Each ASCII byte alone, and at every position of a word, so both paths see it.
        for byte in 0u8..0x80 {
            let c = char::from(byte);
            for pad in 0..9 {
                let s = format!("{}{c}{}", "x".repeat(pad), "y".repeat(9 - pad));
                let mut out = Vec::new();
                write_str(&mut out, &s);
                assert_eq!(
                    String::from_utf8(out).expect("UTF-8"),
                    serde_json::to_string(&s).expect("serializes"),
                    "byte {byte:#x} at {pad}"
                );
            }
        }
    }

    #[test]
    fn the_word_test_finds_exactly_the_bytes_to_escape() {
        for byte in 0u8..=255 {
            for at in 0..8 {
                let mut word = [b'a'; 8];
                word[at] = byte;
                let expect = byte < 0x20 || byte == b'"' || byte == b'\\';
                assert_eq!(needs_escape(u64::from_le_bytes(word)), expect, "byte {byte:#x} at {at}");
            }
        }
    }
}
