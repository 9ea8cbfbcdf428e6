//! What the benchmark binaries share.

/// Size of one synthetic conversation turn, in bytes.
pub const TURN_BYTES: usize = 300;

/// The text of turn `i`: `TURN_BYTES` of English-like text, distinct per turn.
pub fn turn(i: u64) -> String {
    let mut s = format!("turn {i}: ");
    while s.len() < TURN_BYTES {
        s.push_str("the quick brown fox jumps over the lazy dog ");
    }
    s.truncate(TURN_BYTES);
    s
}
