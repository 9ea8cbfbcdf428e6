//! Model-based test: seeded random operation sequences run against Engram and against a
//! plain in-memory reference model (`support/model.rs`); every result and every read must
//! agree. The seed is printed; replay a failure with
//! `ENGRAM_TEST_SEED=<seed> cargo test --test model`.

#[path = "support/model.rs"]
mod model;

use engram::storage::MemoryStore;
use engram::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use std::sync::Arc;

/// Where the store under test lives; `open` is called again for every reopen.
enum Backend {
    Memory(Arc<MemoryStore>),
    Rocks(tempfile::TempDir),
}

impl Backend {
    fn open(&self, clock: &Arc<ManualClock>) -> Result<Engram> {
        match self {
            Backend::Memory(store) => Engram::with_store(store.clone(), model::options(clock)),
            Backend::Rocks(dir) => Engram::open(dir.path(), model::options(clock)),
        }
    }
}

fn run_seeded(name: &str, cases: u32, max_ops: usize, backend: impl Fn() -> Backend) {
    let seed: u64 = std::env::var("ENGRAM_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        nanos as u64
    });
    eprintln!("{name}: seed {seed} (replay with ENGRAM_TEST_SEED={seed})");
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config { cases, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes));
    if let Err(e) = runner.run(&prop::collection::vec(model::op(), 1..max_ops), |ops| {
        let backend = backend();
        model::run(&|clock| backend.open(clock), ops)
    }) {
        panic!("{name} failed with seed {seed} (replay with ENGRAM_TEST_SEED={seed}): {e}");
    }
}

#[test]
fn engram_agrees_with_the_reference_model_in_memory() {
    run_seeded("model test (memory)", 96, 80, || Backend::Memory(Arc::new(MemoryStore::new())));
}

#[test]
fn engram_agrees_with_the_reference_model_on_rocksdb() {
    run_seeded("model test (rocksdb)", 12, 40, || Backend::Rocks(tempfile::tempdir().expect("tempdir")));
}
