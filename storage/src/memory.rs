use crate::budget::Budgeted;
use crate::{Batch, BatchOp, Direction, EntryIter, ReadView, Result, Space, Store};
use parking_lot::RwLock;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Clone, Debug, Default)]
struct Maps {
    spaces: [Map; 3],
}

impl Maps {
    fn space(&self, space: Space) -> &Map {
        &self.spaces[space as usize]
    }

    fn space_mut(&mut self, space: Space) -> &mut Map {
        &mut self.spaces[space as usize]
    }

    fn get(&self, space: Space, key: &[u8]) -> Option<Vec<u8>> {
        self.space(space).get(key).cloned()
    }

    fn scan(&self, space: Space, start: &[u8], end: Option<&[u8]>, direction: Direction) -> Vec<(Vec<u8>, Vec<u8>)> {
        let upper = match end {
            Some(end) if end <= start => return Vec::new(),
            Some(end) => Bound::Excluded(end),
            None => Bound::Unbounded,
        };
        let range = self.space(space).range::<[u8], _>((Bound::Included(start), upper));
        let entries = range.map(|(k, v)| (k.clone(), v.clone()));
        match direction {
            Direction::Forward => entries.collect(),
            Direction::Reverse => entries.rev().collect(),
        }
    }
}

/// An in-memory [`Store`] for tests: a `BTreeMap` per space. Snapshots share the maps
/// until the next write (copy on write). Nothing survives the process; `sync` does nothing.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    maps: Arc<RwLock<Arc<Maps>>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        MemoryStore::default()
    }

    /// Overwrites the raw bytes at `key`, bypassing framing: tests use it to damage a value.
    pub fn put_raw(&self, space: Space, key: &[u8], value: Vec<u8>) {
        let mut guard = self.maps.write();
        Arc::make_mut(&mut guard).space_mut(space).insert(key.to_vec(), value);
    }
}

impl ReadView for MemoryStore {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.maps.read().get(space, key))
    }

    fn scan<'a>(&'a self, space: Space, start: &[u8], end: Option<&[u8]>, direction: Direction) -> EntryIter<'a> {
        Box::new(self.maps.read().scan(space, start, end, direction).into_iter().map(Ok))
    }
}

impl Store for MemoryStore {
    fn write(&self, batch: Batch) -> Result<()> {
        let mut guard = self.maps.write();
        let maps = Arc::make_mut(&mut guard);
        for op in batch.into_ops() {
            match op {
                BatchOp::Put { space, key, value } => {
                    maps.space_mut(space).insert(key, value);
                }
                BatchOp::Delete { space, key } => {
                    maps.space_mut(space).remove(&key);
                }
                BatchOp::DeleteRange { space, start, end } => {
                    let map = maps.space_mut(space);
                    let doomed: Vec<Vec<u8>> = map
                        .range::<[u8], _>((Bound::Included(&start[..]), Bound::Excluded(&end[..])))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in doomed {
                        map.remove(&k);
                    }
                }
            }
        }
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }

    fn snapshot(&self) -> Box<dyn ReadView + '_> {
        Box::new(MemorySnapshot { maps: Arc::clone(&self.maps.read()) })
    }

    /// Everything is in memory, but a write holds the maps while it copies them: a cached
    /// snapshot does not wait for it (its reads fail as misses).
    fn cached_snapshot(&self, budget: usize) -> Box<dyn ReadView + '_> {
        match self.maps.try_read() {
            Some(maps) => Box::new(Budgeted::new(Box::new(MemorySnapshot { maps: Arc::clone(&maps) }), budget)),
            None => Box::new(Budgeted::spent(Box::new(MemorySnapshot { maps: Arc::default() }))),
        }
    }
}

struct MemorySnapshot {
    maps: Arc<Maps>,
}

impl ReadView for MemorySnapshot {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.maps.get(space, key))
    }

    fn scan<'a>(&'a self, space: Space, start: &[u8], end: Option<&[u8]>, direction: Direction) -> EntryIter<'a> {
        Box::new(self.maps.scan(space, start, end, direction).into_iter().map(Ok))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_snapshot_does_not_wait_for_a_writer() {
        let store = MemoryStore::new();
        let mut b = Batch::new();
        b.put(Space::Data, b"a".to_vec(), b"1".to_vec());
        store.write(b).expect("write");
        let held = store.maps.write();
        let view = store.cached_snapshot(1 << 20);
        assert!(view.get(Space::Data, b"a").is_err());
        assert!(view.missed_cache());
        let view = store.cached_snapshot(1 << 20);
        let visited = view.visit(Space::Data, b"", None, Direction::Forward, &mut |_, _| true);
        assert!(matches!(visited, Err(crate::StorageError::NotCached(_))), "never an empty answer");
        assert!(view.scan(Space::Data, b"", None, Direction::Forward).next().is_some_and(|e| e.is_err()));
        drop(held);
        let view = store.cached_snapshot(1 << 20);
        assert_eq!(view.get(Space::Data, b"a").expect("get"), Some(b"1".to_vec()));
        assert!(!view.missed_cache());
    }

    #[test]
    fn snapshot_is_isolated_from_later_writes() {
        let store = MemoryStore::new();
        let mut b = Batch::new();
        b.put(Space::Data, b"a".to_vec(), b"1".to_vec());
        store.write(b).expect("write");
        let snap = store.snapshot();
        let mut b = Batch::new();
        b.put(Space::Data, b"a".to_vec(), b"2".to_vec());
        b.put(Space::Data, b"b".to_vec(), b"3".to_vec());
        store.write(b).expect("write");
        assert_eq!(snap.get(Space::Data, b"a").expect("get"), Some(b"1".to_vec()));
        assert_eq!(snap.scan(Space::Data, b"", None, Direction::Forward).count(), 1);
        assert_eq!(store.get(Space::Data, b"a").expect("get"), Some(b"2".to_vec()));
    }
}
