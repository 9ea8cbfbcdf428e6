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

/// splitmix64: seeded, reproducible benchmark data without a dependency.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    pub fn vector(&mut self, dim: usize) -> Vec<f32> {
        (0..dim).map(|_| self.unit()).collect()
    }
}
