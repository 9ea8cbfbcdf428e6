//! Typed access to framed records: every read checks the frame and names the key when it
//! does not hold; every write frames.

use crate::error::{Error, Result};
use engram_core::model::JsonMap;
use engram_storage::{Batch, Direction, ReadView, Space, frame};

pub(crate) fn get<M: prost::Message + Default>(view: &dyn ReadView, space: Space, key: &[u8]) -> Result<Option<M>> {
    match view.get(space, key).map_err(|e| with_key(key, e))? {
        None => Ok(None),
        Some(bytes) => decode(key, &bytes).map(Some),
    }
}

/// A storage error, with the key named when it is a corruption.
pub(crate) fn with_key(key: &[u8], e: engram_storage::StorageError) -> Error {
    match e {
        engram_storage::StorageError::Corruption(reason) => Error::corruption(key, reason),
        other => Error::from(other),
    }
}

pub(crate) fn decode<M: prost::Message + Default>(key: &[u8], bytes: &[u8]) -> Result<M> {
    frame::decode(bytes).map_err(|e| Error::corruption(key, e))
}

/// [`decode`] into a record the caller reuses (see [`frame::decode_into`]).
pub(crate) fn decode_into<M: prost::Message>(key: &[u8], bytes: &[u8], record: &mut M) -> Result<()> {
    frame::decode_into(bytes, record).map_err(|e| Error::corruption(key, e))
}

pub(crate) fn put<M: prost::Message>(batch: &mut Batch, space: Space, key: Vec<u8>, record: &M) {
    batch.put(space, key, frame::encode(record));
}

/// Entries in `[start, end)` decoded as `M`, in the given direction.
pub(crate) fn scan<'a, M: prost::Message + Default + 'a>(
    view: &'a dyn ReadView,
    space: Space,
    start: &[u8],
    end: Option<&[u8]>,
    direction: Direction,
) -> impl Iterator<Item = Result<(Vec<u8>, M)>> + use<'a, M> {
    view.scan(space, start, end, direction).map(|entry| {
        let (key, bytes) = entry?;
        let record = decode(&key, &bytes)?;
        Ok((key, record))
    })
}

/// Hands the entries in `[start, end)` to `f` in the given direction until it returns
/// `Ok(false)` or an error; the store lends its buffers, so no entry is copied out (decode
/// each with [`decode_into`] into one reused record).
pub(crate) fn visit_bytes(
    view: &dyn ReadView,
    space: Space,
    start: &[u8],
    end: Option<&[u8]>,
    direction: Direction,
    mut f: impl FnMut(&[u8], &[u8]) -> Result<bool>,
) -> Result<()> {
    let mut failed = None;
    view.visit(space, start, end, direction, &mut |key, bytes| match f(key, bytes) {
        Ok(go_on) => go_on,
        Err(e) => {
            failed = Some(e);
            false
        }
    })?;
    failed.map_or(Ok(()), Err)
}

/// Entries whose key starts with `prefix`.
pub(crate) fn scan_prefix<'a, M: prost::Message + Default + 'a>(
    view: &'a dyn ReadView,
    space: Space,
    prefix: &[u8],
    direction: Direction,
) -> impl Iterator<Item = Result<(Vec<u8>, M)>> + use<'a, M> {
    let end = engram_core::keys::prefix_end(prefix);
    scan(view, space, prefix, end.as_deref(), direction)
}

/// Stored JSON text back to an object; "" is the empty object.
pub(crate) fn json_map(key: &[u8], text: &str) -> Result<JsonMap> {
    if text.is_empty() {
        return Ok(JsonMap::new());
    }
    serde_json::from_str(text).map_err(|e| Error::corruption(key, format!("metadata is not a JSON object: {e}")))
}

/// A stored embedding (see `records::float_bytes`): `None` when there is none.
pub(crate) fn embedding(key: &[u8], bytes: &[u8]) -> Result<Option<Vec<f32>>> {
    check_embedding(key, bytes)?;
    Ok(engram_core::records::floats(bytes).filter(|v| !v.is_empty()))
}

/// Stored embedding bytes hold whole `f32`s (prost decodes any length into the field).
pub(crate) fn check_embedding(key: &[u8], bytes: &[u8]) -> Result<()> {
    match engram_core::records::embedding_problem(bytes) {
        Some(reason) => Err(Error::corruption(key, reason)),
        None => Ok(()),
    }
}

pub(crate) fn json_value(key: &[u8], text: &str) -> Result<serde_json::Value> {
    serde_json::from_str(text).map_err(|e| Error::corruption(key, format!("stored JSON does not parse: {e}")))
}

/// True when every (key, value) of `filter` is in `metadata`.
pub(crate) fn metadata_matches(metadata: &JsonMap, filter: &JsonMap) -> bool {
    filter.iter().all(|(k, v)| metadata.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_embedding_of_partial_floats_is_corruption() {
        assert!(matches!(embedding(b"k", &[0, 0, 128, 63, 1]), Err(Error::Corruption { .. })));
        assert_eq!(embedding(b"k", &[]).ok(), Some(None));
        assert_eq!(embedding(b"k", &[0, 0, 128, 63]).ok(), Some(Some(vec![1.0])));
    }
}
