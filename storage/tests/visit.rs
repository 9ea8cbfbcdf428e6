//! `ReadView::visit` lends the entries `ReadView::scan` gives, in the same order, on every
//! backend, on the live store and on snapshots, and stops when told to; `get_many` answers
//! what `get` does, key by key.

#[path = "../../engine/tests/support/rng.rs"]
#[allow(dead_code)]
mod rng;

use engram_storage::{Batch, Direction, MemoryStore, ReadView, RocksStore, Space, Store};

fn random_key(rng: &mut rng::Rng) -> Vec<u8> {
    // A small alphabet and short keys: many shared prefixes and bounds that hit keys.
    (0..1 + rng.below(4)).map(|_| b'a' + rng.below(4) as u8).collect()
}

fn fill(store: &dyn Store, rng: &mut rng::Rng) {
    let mut batch = Batch::new();
    for i in 0..200u32 {
        let space = Space::ALL[rng.below(3) as usize];
        batch.put(space, random_key(rng), i.to_be_bytes().to_vec());
    }
    store.write(batch).expect("write");
}

/// Compares `visit` with `scan` over random ranges, directions and stopping points.
fn check(view: &dyn ReadView, rng: &mut rng::Rng) {
    for _ in 0..300 {
        let space = Space::ALL[rng.below(3) as usize];
        let start = if rng.below(4) == 0 { Vec::new() } else { random_key(rng) };
        let end = (rng.below(3) != 0).then(|| random_key(rng));
        let direction = if rng.below(2) == 0 { Direction::Forward } else { Direction::Reverse };
        let stop_after = rng.below(12) as usize;
        let expected: Vec<_> = view
            .scan(space, &start, end.as_deref(), direction)
            .take(stop_after)
            .collect::<Result<_, _>>()
            .expect("scan");
        let mut seen = Vec::new();
        view.visit(space, &start, end.as_deref(), direction, &mut |k, v| {
            seen.push((k.to_vec(), v.to_vec()));
            seen.len() < stop_after
        })
        .expect("visit");
        if stop_after == 0 {
            // The first entry is still lent before `visit` can say stop.
            assert!(seen.len() <= 1, "{space:?} {start:?}..{end:?} {direction:?}");
            continue;
        }
        assert_eq!(seen, expected, "{space:?} {start:?}..{end:?} {direction:?} stop after {stop_after}");
    }
}

/// Compares `get_many` with `get` on random key lists (repeats and missing keys included).
fn check_get_many(view: &dyn ReadView, rng: &mut rng::Rng) {
    for _ in 0..100 {
        let space = Space::ALL[rng.below(3) as usize];
        let keys: Vec<Vec<u8>> = (0..rng.below(20)).map(|_| random_key(rng)).collect();
        let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let expected: Vec<_> = refs.iter().map(|k| view.get(space, k).expect("get")).collect();
        assert_eq!(view.get_many(space, &refs).expect("get_many"), expected, "{space:?} {keys:?}");
    }
}

#[test]
fn visit_lends_what_scan_gives_on_every_backend() {
    let mut rng = rng::Rng::seeded("visit_lends_what_scan_gives_on_every_backend");
    let dir = tempfile::tempdir().expect("tempdir");
    let rocks = RocksStore::open(dir.path(), &Default::default()).expect("open");
    let memory = MemoryStore::new();
    let stores: [&dyn Store; 2] = [&rocks, &memory];
    for store in stores {
        let seed = rng.next();
        fill(store, &mut rng::Rng(seed));
        check(store, &mut rng);
        check_get_many(store, &mut rng);
        let snapshot = store.snapshot();
        // More writes: the snapshot's visit and scan still agree (on its older state).
        fill(store, &mut rng);
        check(&*snapshot, &mut rng);
        check_get_many(&*snapshot, &mut rng);
        check(store, &mut rng);
        check_get_many(store, &mut rng);
    }
}
