//! Stored records: the prost messages written as values. Each value on disk is one of these,
//! framed with a format version and a CRC32 by `engram-storage`'s `frame` module.
//!
//! Field numbers are part of the on-disk format: never reuse or renumber one; add new fields
//! with new numbers (prost skips unknown fields, and missing fields read as defaults).
//! JSON content is kept as JSON text; integers that name an enum hold its `as i32` value.

use std::collections::BTreeMap;

/// Bytes as lowercase hex in JSON (dumps).
mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(super) use crate::keys::to_hex;

    pub(super) fn from_hex<E: Error>(s: &str) -> Result<Vec<u8>, E> {
        if !s.len().is_multiple_of(2) {
            return Err(E::custom("odd-length hex"));
        }
        (0..s.len())
            .step_by(2)
            .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or_else(|| E::custom("bad hex")))
            .collect()
    }

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&to_hex(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        from_hex(&String::deserialize(d)?)
    }
}

mod hex_bytes_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(b) => s.serialize_some(&super::hex_bytes::to_hex(b)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?.map(|h| super::hex_bytes::from_hex(&h)).transpose()
    }
}

/// An embedding as stored: each `f32` little-endian, back to back. These are the wire
/// bytes of a packed `repeated float` (how the field was first declared; old and new
/// records read the same), decoded as bulk copies instead of a push per value (for a
/// 384-d vector that was most of the decoding time of its record). Any length decodes:
/// readers check it ([`embedding_problem`]).
pub fn float_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The `f32`s of stored embedding bytes; `None` unless they are a whole number of `f32`s.
pub fn floats(bytes: &[u8]) -> Option<Vec<f32>> {
    if embedding_problem(bytes).is_some() {
        return None;
    }
    Some(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// Why stored embedding bytes are not an embedding (`None`: they are).
pub fn embedding_problem(bytes: &[u8]) -> Option<String> {
    (!bytes.len().is_multiple_of(4)).then(|| format!("embedding of {} bytes is not whole f32s", bytes.len()))
}

/// Embedding bytes as a list of numbers in JSON (dumps), as when the field held `f32`s.
mod float_list {
    use serde::{Deserialize, Deserializer, Serialize, Serializer, ser::Error};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        super::floats(bytes).ok_or_else(|| S::Error::custom("embedding bytes are not whole f32s"))?.serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Ok(super::float_bytes(&Vec::<f32>::deserialize(d)?))
    }
}

/// The on-disk format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Clone, PartialEq, ::prost::Message, serde::Serialize, serde::Deserialize)]
pub struct FormatRecord {
    #[prost(uint32, tag = "1")]
    pub version: u32,
    #[prost(int64, tag = "2")]
    pub created_at_ms: i64,
}

#[derive(Clone, PartialEq, ::prost::Message, serde::Serialize, serde::Deserialize)]
pub struct SeqRecord {
    #[prost(uint64, tag = "1")]
    pub seq: u64,
}

#[derive(Clone, PartialEq, ::prost::Message, serde::Serialize, serde::Deserialize)]
pub struct RetentionRecord {
    #[prost(uint64, optional, tag = "1")]
    pub ttl_ms: Option<u64>,
    /// Event kind name (`"tool_result"`...) to time to live.
    #[prost(btree_map = "string, uint64", tag = "2")]
    pub kind_ttl_ms: BTreeMap<String, u64>,
    #[prost(uint64, optional, tag = "3")]
    pub keep_last: Option<u64>,
}

#[derive(Clone, PartialEq, ::prost::Message, serde::Serialize, serde::Deserialize)]
pub struct TenantRecord {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(int64, tag = "2")]
    pub created_at_ms: i64,
    /// 0 until declared or fixed by the first vector written.
    #[prost(uint32, tag = "3")]
    pub vector_dim: u32,
    #[prost(int32, tag = "4")]
    pub metric: i32,
    #[prost(message, optional, tag = "5")]
    pub retention: Option<RetentionRecord>,
    #[prost(string, tag = "6")]
    pub metadata_json: String,
    /// Which embedder derives vectors for texts written without one: 0 none, 1 the
    /// store's local model.
    #[prost(int32, tag = "7")]
    #[serde(default)]
    pub embedder: i32,
}

#[derive(Clone, PartialEq, ::prost::Message, serde::Serialize, serde::Deserialize)]
pub struct IdentityRecord {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(int64, tag = "2")]
    pub created_at_ms: i64,
    #[prost(string, tag = "3")]
    pub metadata_json: String,
}

#[derive(Clone, PartialEq, ::prost::Message, serde::Serialize, serde::Deserialize)]
pub struct SessionRecord {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(int64, tag = "2")]
    pub created_at_ms: i64,
    #[prost(string, tag = "3")]
    pub metadata_json: String,
    /// The last sequence number assigned (inherited ones included for a fork).
    #[prost(uint64, tag = "4")]
    pub head_seq: u64,
    #[prost(string, optional, tag = "5")]
    pub parent: Option<String>,
    /// For a fork: the parent's sequence number it was forked at. 0 otherwise.
    #[prost(uint64, tag = "6")]
    pub fork_seq: u64,
    /// How many sessions are forks of this one.
    #[prost(uint64, tag = "7")]
    pub fork_children: u64,
    #[prost(message, optional, tag = "8")]
    pub retention: Option<RetentionRecord>,
    /// Events of this session (not inherited ones) currently stored.
    #[prost(uint64, tag = "9")]
    pub stored_events: u64,
    #[prost(int64, tag = "10")]
    pub updated_at_ms: i64,
}

#[derive(Clone, PartialEq, ::prost::Message, serde::Serialize, serde::Deserialize)]
pub struct EventRecord {
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    #[prost(int32, tag = "2")]
    pub kind: i32,
    /// 0 when the event has no role.
    #[prost(int32, tag = "3")]
    pub role: i32,
    /// The text, unless it was moved to a blob (then `blob_sha256` is set).
    #[prost(string, optional, tag = "4")]
    pub text: Option<String>,
    #[prost(string, optional, tag = "5")]
    pub data_json: Option<String>,
    /// See [`float_bytes`].
    #[prost(bytes = "vec", tag = "6")]
    #[serde(with = "float_list")]
    pub embedding: Vec<u8>,
    #[prost(string, tag = "7")]
    pub metadata_json: String,
    #[prost(uint32, optional, tag = "8")]
    pub token_count: Option<u32>,
    #[prost(int64, tag = "9")]
    pub timestamp_ms: i64,
    #[prost(int64, tag = "10")]
    pub created_at_ms: i64,
    #[prost(bytes = "vec", optional, tag = "11")]
    #[serde(with = "hex_bytes_opt")]
    pub blob_sha256: Option<Vec<u8>>,
    #[prost(uint64, tag = "12")]
    pub blob_len: u64,
    #[prost(string, optional, tag = "13")]
    pub name: Option<String>,
    #[prost(string, optional, tag = "14")]
    pub call_id: Option<String>,
    /// The changelog sequence of the append that wrote it (0 in stores older than it).
    #[prost(uint64, tag = "15")]
    pub change_seq: u64,
    /// True when `embedding` was derived from the text by the local embedder.
    #[prost(bool, tag = "16")]
    #[serde(default)]
    pub embedding_derived: bool,
}

#[derive(Clone, PartialEq, ::prost::Message, serde::Serialize, serde::Deserialize)]
pub struct IdempotencyRecord {
    #[prost(uint64, tag = "1")]
    pub first_seq: u64,
    #[prost(uint64, tag = "2")]
    pub last_seq: u64,
    /// sha256 of the request it answered: a reuse with another request is refused.
    #[prost(bytes = "vec", tag = "3")]
    #[serde(with = "hex_bytes")]
    pub request_sha256: Vec<u8>,
    #[prost(int64, tag = "4")]
    pub created_at_ms: i64,
}

#[derive(Clone, PartialEq, ::prost::Message, serde::Serialize, serde::Deserialize)]
pub struct BlobRecord {
    #[prost(bytes = "vec", tag = "1")]
    #[serde(with = "hex_bytes")]
    pub data: Vec<u8>,
    /// Number of events (in any session of the tenant) that reference it.
    #[prost(uint64, tag = "2")]
    pub refcount: u64,
    #[prost(int64, tag = "3")]
    pub created_at_ms: i64,
}

#[derive(Clone, PartialEq, ::prost::Message, serde::Serialize, serde::Deserialize)]
pub struct BlobRefRecord {
    /// Number of events of this session that reference the blob.
    #[prost(uint64, tag = "1")]
    pub count: u64,
}

#[derive(Clone, PartialEq, ::prost::Message, serde::Serialize, serde::Deserialize)]
pub struct StateRecord {
    #[prost(string, tag = "1")]
    pub value_json: String,
    #[prost(uint64, tag = "2")]
    pub version: u64,
    #[prost(int64, tag = "3")]
    pub updated_at_ms: i64,
}

#[derive(Clone, PartialEq, ::prost::Message, serde::Serialize, serde::Deserialize)]
pub struct EventRefRecord {
    #[prost(string, tag = "1")]
    pub session: String,
    #[prost(uint64, tag = "2")]
    pub seq: u64,
}

#[derive(Clone, PartialEq, ::prost::Message, serde::Serialize, serde::Deserialize)]
pub struct MemoryRecord {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(uint64, tag = "2")]
    pub version: u64,
    #[prost(int32, tag = "3")]
    pub kind: i32,
    #[prost(string, tag = "4")]
    pub text: String,
    /// See [`float_bytes`].
    #[prost(bytes = "vec", tag = "5")]
    #[serde(with = "float_list")]
    pub embedding: Vec<u8>,
    #[prost(string, tag = "6")]
    pub metadata_json: String,
    #[prost(float, tag = "7")]
    pub importance: f32,
    #[prost(int64, tag = "8")]
    pub valid_from_ms: i64,
    #[prost(int64, optional, tag = "9")]
    pub valid_to_ms: Option<i64>,
    #[prost(int64, tag = "10")]
    pub recorded_at_ms: i64,
    #[prost(message, repeated, tag = "11")]
    pub sources: Vec<EventRefRecord>,
    /// Set on the last version of a deleted memory.
    #[prost(bool, tag = "12")]
    pub deleted: bool,
    /// The changelog sequence of the write that made this version.
    #[prost(uint64, tag = "13")]
    pub change_seq: u64,
    /// True when `embedding` was derived from the text by the local embedder.
    #[prost(bool, tag = "14")]
    #[serde(default)]
    pub embedding_derived: bool,
}

#[derive(Clone, PartialEq, ::prost::Message, serde::Serialize, serde::Deserialize)]
pub struct ChangeRecord {
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    #[prost(int32, tag = "2")]
    pub op: i32,
    #[prost(string, tag = "3")]
    pub tenant: String,
    #[prost(string, tag = "4")]
    pub identity: String,
    #[prost(string, tag = "5")]
    pub session: String,
    /// Event sequence numbers touched (appended or removed), or a memory version.
    #[prost(uint64, repeated, tag = "6")]
    pub seqs: Vec<u64>,
    /// Memory id or state key.
    #[prost(string, tag = "7")]
    pub key: String,
    #[prost(int64, tag = "8")]
    pub at_ms: i64,
    /// Event sequence numbers removed by the same call (retention, keep-last-N).
    #[prost(uint64, repeated, tag = "9")]
    pub removed: Vec<u64>,
}

/// An API key bound to a tenant. Only a hash of its secret is stored.
#[derive(Clone, PartialEq, ::prost::Message, serde::Serialize, serde::Deserialize)]
pub struct ApiKeyRecord {
    #[prost(string, tag = "1")]
    pub key_id: String,
    #[prost(string, tag = "2")]
    pub tenant: String,
    #[prost(string, tag = "3")]
    pub label: String,
    /// sha256 of the secret part of the key.
    #[prost(bytes = "vec", tag = "4")]
    #[serde(with = "hex_bytes")]
    pub secret_sha256: Vec<u8>,
    #[prost(int64, tag = "5")]
    pub created_at_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// The embedding fields as first declared, before they held the raw bytes.
    #[derive(Clone, PartialEq, ::prost::Message)]
    struct PackedFloats {
        #[prost(uint64, tag = "1")]
        seq: u64,
        #[prost(float, repeated, tag = "6")]
        embedding: Vec<f32>,
    }

    /// `MemoryRecord`'s embedding as first declared.
    #[derive(Clone, PartialEq, ::prost::Message)]
    struct PackedMemoryFloats {
        #[prost(string, tag = "1")]
        id: String,
        #[prost(float, repeated, tag = "5")]
        embedding: Vec<f32>,
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn embedding_bytes_are_a_packed_repeated_float_on_the_wire() {
        let vector = vec![0.25, -1.5, f32::MIN_POSITIVE, 3.0e38, -0.0, f32::from_bits(1)];
        let old = PackedFloats { seq: 7, embedding: vector.clone() };
        let new = EventRecord { seq: 7, embedding: float_bytes(&vector), ..EventRecord::default() };
        assert_eq!(new.encode_to_vec(), old.encode_to_vec());
        let read = EventRecord::decode(old.encode_to_vec().as_slice()).expect("an old record decodes");
        assert_eq!(read.seq, 7);
        assert_eq!(floats(&read.embedding).map(|v| bits(&v)), Some(bits(&vector)));
        let back = PackedFloats::decode(new.encode_to_vec().as_slice()).expect("a new record decodes as floats");
        assert_eq!(bits(&back.embedding), bits(&vector));

        let old = PackedMemoryFloats { id: "m".into(), embedding: vector.clone() };
        let new = MemoryRecord { id: "m".into(), embedding: float_bytes(&vector), ..MemoryRecord::default() };
        assert_eq!(new.encode_to_vec(), old.encode_to_vec());
        let read = MemoryRecord::decode(old.encode_to_vec().as_slice()).expect("an old memory decodes");
        assert_eq!(floats(&read.embedding).map(|v| bits(&v)), Some(bits(&vector)));
    }

    #[test]
    fn embedding_bytes_read_back_only_whole_floats() {
        assert_eq!(floats(&[]), Some(vec![]));
        assert_eq!(floats(&[0, 0, 128]), None);
        assert_eq!(floats(&float_bytes(&[1.0, 2.0])), Some(vec![1.0, 2.0]));
    }

    #[test]
    fn dumps_show_embeddings_as_numbers() {
        let record = MemoryRecord { embedding: float_bytes(&[0.5, -2.0]), ..MemoryRecord::default() };
        let json = serde_json::to_value(&record).expect("serializes");
        assert_eq!(json["embedding"], serde_json::json!([0.5, -2.0]));
        let back: MemoryRecord = serde_json::from_value(json).expect("deserializes");
        assert_eq!(back, record);
        let empty = serde_json::to_value(MemoryRecord::default()).expect("serializes");
        assert_eq!(empty["embedding"], serde_json::json!([]));
        let partial = MemoryRecord { embedding: vec![0, 0, 128], ..MemoryRecord::default() };
        assert!(serde_json::to_value(&partial).is_err());
    }
}
