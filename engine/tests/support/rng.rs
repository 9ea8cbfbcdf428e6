//! The tests' randomness: splitmix64, seeded from `ENGRAM_TEST_SEED` or the clock, the seed
//! printed so that a failure replays. Shared by the engine's and the server's tests.

/// splitmix64: seeded, reproducible test data without a dependency.
pub struct Rng(pub u64);

/// `ENGRAM_TEST_SEED`, or one from the clock; printed under `name`.
pub fn test_seed(name: &str) -> u64 {
    let seed = std::env::var("ENGRAM_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(7, |d| d.as_nanos() as u64)
    });
    eprintln!("{name}: seed {seed} (replay with ENGRAM_TEST_SEED={seed})");
    seed
}

impl Rng {
    /// Seeded by [`test_seed`].
    pub fn seeded(name: &str) -> Rng {
        Rng(test_seed(name))
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in [-1, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    pub fn vector(&mut self, dim: usize) -> Vec<f32> {
        (0..dim).map(|_| self.unit()).collect()
    }
}
