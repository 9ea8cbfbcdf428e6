//! Value framing: `[format: u8][crc32 of format byte and payload: u32 LE][payload]`, where the
//! payload is a prost message. Every value Engram stores goes through [`encode`], every value
//! it reads through [`decode`], so a flipped bit anywhere is a corruption error.

use crate::StorageError;

/// The frame format this build writes.
pub const FRAME_FORMAT: u8 = 1;
/// Bytes a frame adds to its payload.
pub const FRAME_OVERHEAD: usize = 5;

/// Frames `message`.
pub fn encode<M: prost::Message>(message: &M) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_OVERHEAD + message.encoded_len());
    out.push(FRAME_FORMAT);
    out.extend_from_slice(&[0; 4]);
    // Encoding into a Vec only fails for lack of capacity, and a Vec grows.
    message.encode_raw(&mut out);
    let crc = checksum(FRAME_FORMAT, &out[FRAME_OVERHEAD..]);
    out[1..FRAME_OVERHEAD].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Checks and decodes a framed value.
///
/// # Errors
/// [`StorageError::Corruption`] when the frame is short, of an unknown format, fails its
/// checksum, or does not decode as `M`.
pub fn decode<M: prost::Message + Default>(bytes: &[u8]) -> Result<M, StorageError> {
    let payload = check(bytes)?;
    M::decode(payload).map_err(undecodable)
}

/// [`decode`] into `record`, which is cleared first: for loops over many large records,
/// where moving each decoded value out (and through every `Result`) costs a copy of it.
///
/// # Errors
/// As [`decode`]; `record` then holds an unspecified (but valid) value.
pub fn decode_into<M: prost::Message>(bytes: &[u8], record: &mut M) -> Result<(), StorageError> {
    let payload = check(bytes)?;
    record.clear();
    record.merge(payload).map_err(undecodable)
}

fn undecodable(e: prost::DecodeError) -> StorageError {
    StorageError::Corruption(format!("undecodable value: {e}"))
}

/// Checks a frame and returns its payload.
pub fn check(bytes: &[u8]) -> Result<&[u8], StorageError> {
    if bytes.len() < FRAME_OVERHEAD {
        return Err(StorageError::Corruption(format!("value of {} bytes is shorter than its frame", bytes.len())));
    }
    let format = bytes[0];
    if format != FRAME_FORMAT {
        return Err(StorageError::Corruption(format!("unknown value frame format {format}")));
    }
    let stored = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    let payload = &bytes[FRAME_OVERHEAD..];
    let actual = checksum(format, payload);
    if stored != actual {
        return Err(StorageError::Corruption(format!("checksum mismatch: stored {stored:08x}, computed {actual:08x}")));
    }
    Ok(payload)
}

fn checksum(format: u8, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&[format]);
    h.update(payload);
    h.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, PartialEq, ::prost::Message)]
    struct Sample {
        #[prost(string, tag = "1")]
        text: String,
        #[prost(uint64, tag = "2")]
        n: u64,
    }

    #[test]
    fn round_trip() {
        let s = Sample { text: "hello".into(), n: 7 };
        assert_eq!(decode::<Sample>(&encode(&s)), Ok(s));
    }

    #[test]
    fn every_single_bit_flip_is_caught() {
        let bytes = encode(&Sample { text: "a turn of some length".into(), n: 123_456 });
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[i] ^= 1 << bit;
                assert!(
                    matches!(decode::<Sample>(&damaged), Err(StorageError::Corruption(_))),
                    "flip of bit {bit} in byte {i} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn decoding_into_a_used_record_gives_what_decode_gives() {
        // Fields absent from the new value must not keep the old record's values.
        let mut reused = Sample { text: "left over".into(), n: 99 };
        for s in [Sample { text: "first".into(), n: 1 }, Sample { text: String::new(), n: 0 }, Sample::default()] {
            decode_into(&encode(&s), &mut reused).expect("decodes");
            assert_eq!(reused, s);
        }
        let mut damaged = encode(&Sample { text: "x".into(), n: 2 });
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert!(matches!(decode_into(&damaged, &mut reused), Err(StorageError::Corruption(_))));
    }

    #[test]
    fn short_values_are_corruption() {
        for len in 0..FRAME_OVERHEAD {
            assert!(matches!(decode::<Sample>(&vec![FRAME_FORMAT; len]), Err(StorageError::Corruption(_))));
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode::<Sample>(&bytes);
        }
    }
}
