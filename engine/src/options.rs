use crate::index::IndexOptions;
use engram_storage::RocksOptions;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// When a write is acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// After the write-ahead log is synced to disk: survives power loss. Concurrent writers
    /// share one sync (group commit).
    #[default]
    Durable,
    /// After the write reaches the write-ahead log in the OS: survives a process crash
    /// (`kill -9`), not a power loss. [`crate::Engram::sync`] makes it durable.
    Buffered,
}

/// Where time comes from: the system clock, or a hand-driven one in tests.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        since.map(|d| d.as_millis() as i64).unwrap_or(0)
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ms: AtomicI64,
}

impl ManualClock {
    pub fn new(now_ms: i64) -> Arc<Self> {
        Arc::new(ManualClock { now_ms: AtomicI64::new(now_ms) })
    }

    pub fn advance_ms(&self, ms: i64) {
        self.now_ms.fetch_add(ms, Ordering::SeqCst);
    }

    pub fn set_ms(&self, ms: i64) {
        self.now_ms.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}

/// The tenant embedded use gets when it names none.
pub const DEFAULT_TENANT: &str = "default";

/// How to open a store.
#[derive(Clone, Debug)]
pub struct Options {
    pub durability: Durability,
    /// A tenant created on open if it does not exist ([`DEFAULT_TENANT`]; `None`: none).
    pub default_tenant: Option<String>,
    /// How often the background retention sweep runs; `None`: never (call
    /// [`crate::Engram::sweep_retention`] yourself). Expired events are hidden from reads
    /// whether or not the sweep has removed them yet.
    pub retention_sweep_interval_ms: Option<u64>,
    pub clock: Arc<dyn Clock>,
    pub rocksdb: RocksOptions,
    /// The derived full-text and vector indexes.
    pub index: IndexOptions,
    /// The local embedder: tenants with `embedder: local` get a vector derived for every
    /// text written without one, and text-only searches embed their query. `None`: vectors
    /// only come from callers.
    pub embedder: Option<Arc<dyn crate::embed::Embedder>>,
    /// Memory for the history tail cache: the newest events of recently read sessions,
    /// kept decoded and current with every write, so that reading the end of a
    /// conversation needs no storage read. An estimate; 0 turns it off.
    pub history_cache_bytes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            durability: Durability::Durable,
            default_tenant: Some(DEFAULT_TENANT.to_string()),
            retention_sweep_interval_ms: Some(60_000),
            clock: Arc::new(SystemClock),
            rocksdb: RocksOptions::default(),
            index: IndexOptions::default(),
            embedder: None,
            history_cache_bytes: 64 << 20,
        }
    }
}
