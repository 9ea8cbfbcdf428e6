//! The order-preserving key codec: any bytes taken apart as a key never panic, and a key
//! that decodes is the canonical encoding of its parts; parts encoded and read back are the
//! same parts, and encodings sort as the parts do.

#![no_main]

use engram_core::keys::{self, KeyReader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (Vec<u8>, Vec<(String, u64)>)| {
    let (raw, parts) = input;
    // Arbitrary bytes as a stored key.
    if let Ok((kind, decoded)) = keys::decode_data(&raw) {
        assert_eq!(decoded.encode(kind).as_deref(), Some(&raw[..]), "{kind:?} {decoded:?} is not canonical");
    }
    let _ = keys::classify_data(&raw);
    let _ = keys::classify_meta(&raw);
    let _ = keys::render(&raw);
    if let Some(end) = keys::prefix_end(&raw) {
        assert!(end.as_slice() > raw.as_slice());
    }
    // Parts encoded, read back and compared.
    let mut encoded = Vec::new();
    for (s, n) in &parts {
        let mut one = Vec::new();
        keys::put_str(&mut one, s);
        keys::put_u64(&mut one, *n);
        encoded.push(one);
    }
    for (one, (s, n)) in encoded.iter().zip(&parts) {
        let mut r = KeyReader::new(one);
        assert_eq!(r.str().as_deref(), Ok(s.as_str()));
        assert_eq!(r.u64(), Ok(*n));
        assert_eq!(r.finish(), Ok(()));
    }
    for (a, pa) in encoded.iter().zip(&parts) {
        for (b, pb) in encoded.iter().zip(&parts) {
            let logical = pa.0.as_bytes().cmp(pb.0.as_bytes()).then(pa.1.cmp(&pb.1));
            assert_eq!(a.cmp(b), logical, "{pa:?} vs {pb:?}");
        }
    }
});
