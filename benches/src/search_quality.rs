//! Retrieval quality on the LoCoMo development conversations: each conversation is one
//! identity with one session of its turns; each question (categories 1-4) is a query scoped
//! to its conversation; the evidence turns are the ground truth. Compares BM25, vector,
//! reciprocal rank fusion and weighted fusion by recall@5, recall@10 and MRR.
//!
//! The vectors come from `scripts/minilm_embed.py` (all-MiniLM-L6-v2 in numpy):
//!
//! ```text
//! scripts/minilm_embed.py --model <dir> --locomo ../shared/data/locomo-dev.json --out locomo-minilm.jsonl
//! cargo run --release -p engram-benches --bin search-quality -- --vectors locomo-minilm.jsonl
//! ```

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use anyhow::{Context, Result, bail};
use clap::Parser;
use engram::{
    AppendOptions, DEFAULT_TENANT, Engram, Fusion, HitItem, NewEvent, Options, Role, SearchOver, SearchQuery,
};
use serde_json::Value;
use std::collections::HashMap;
use std::io::BufRead;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value = "../shared/data/locomo-dev.json")]
    locomo: std::path::PathBuf,
    /// JSON lines `{"id", "vector"}` from scripts/minilm_embed.py; without it, BM25 only.
    #[arg(long)]
    vectors: Option<std::path::PathBuf>,
    /// Or embed turns and questions with Engram's own encoder, from this model directory.
    #[arg(long)]
    model: Option<std::path::PathBuf>,
}

/// The text of a turn as stored (the same as the embedding script embeds).
fn turn_text(turn: &Value) -> String {
    let mut text = format!("{}: {}", turn["speaker"].as_str().unwrap_or(""), turn["text"].as_str().unwrap_or(""));
    if let Some(caption) = turn["blip_caption"].as_str() {
        text.push_str(&format!(" [image: {caption}]"));
    }
    text
}

#[derive(Default, Clone, Copy)]
struct Score {
    recall5: f64,
    recall10: f64,
    mrr: f64,
    n: usize,
}

impl Score {
    fn add(&mut self, ranked: &[String], evidence: &[String]) {
        let found = |k: usize| {
            evidence.iter().filter(|e| ranked.iter().take(k).any(|r| r == *e)).count() as f64 / evidence.len() as f64
        };
        self.recall5 += found(5);
        self.recall10 += found(10);
        self.mrr += ranked.iter().position(|r| evidence.contains(r)).map_or(0.0, |p| 1.0 / (p + 1) as f64);
        self.n += 1;
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let data: Vec<Value> = serde_json::from_slice(&std::fs::read(&args.locomo).context("reading LoCoMo")?)?;
    let mut vectors: HashMap<String, Vec<f32>> = HashMap::new();
    if let Some(path) = &args.vectors {
        for line in std::io::BufReader::new(std::fs::File::open(path)?).lines() {
            let v: Value = serde_json::from_str(&line?)?;
            let vector = v["vector"].as_array().context("vector")?.iter().map(|x| x.as_f64().unwrap() as f32);
            vectors.insert(v["id"].as_str().context("id")?.to_string(), vector.collect());
        }
    }
    if let Some(model_dir) = &args.model {
        let model = engram::BertEmbedder::load(model_dir)?;
        let mut items: Vec<(String, String)> = Vec::new();
        for conv in &data {
            let cid = conv["sample_id"].as_str().context("sample_id")?;
            let c = &conv["conversation"];
            for n in 1.. {
                let Some(session) = c[format!("session_{n}")].as_array() else { break };
                for turn in session {
                    items.push((format!("{cid}/{}", turn["dia_id"].as_str().context("dia_id")?), turn_text(turn)));
                }
            }
            for (i, qa) in conv["qa"].as_array().context("qa")?.iter().enumerate() {
                items.push((format!("{cid}/q/{i}"), qa["question"].as_str().unwrap_or_default().to_string()));
            }
        }
        for chunk in items.chunks(engram::EMBED_BATCH) {
            let texts: Vec<&str> = chunk.iter().map(|(_, t)| t.as_str()).collect();
            for ((key, _), v) in chunk.iter().zip(engram::Embedder::embed(&model, &texts)?) {
                vectors.insert(key.clone(), v);
            }
        }
        println!("embedded {} texts with {}", items.len(), model_dir.display());
    }
    let dir = tempfile::tempdir()?;
    let db = Engram::open(dir.path(), Options { retention_sweep_interval_ms: None, ..Options::default() })?;
    // (conversation, seq) -> dia_id
    let mut dia: HashMap<(String, u64), String> = HashMap::new();
    let mut turns = 0;
    for conv in &data {
        let cid = conv["sample_id"].as_str().context("sample_id")?.to_string();
        let c = &conv["conversation"];
        let mut events = Vec::new();
        let mut ids = Vec::new();
        for n in 1.. {
            let Some(session) = c[format!("session_{n}")].as_array() else { break };
            for turn in session {
                let id = turn["dia_id"].as_str().context("dia_id")?.to_string();
                let key = format!("{cid}/{id}");
                let embedding = if !vectors.is_empty() {
                    Some(vectors.get(&key).with_context(|| format!("no vector for {key}"))?.clone())
                } else {
                    None
                };
                events.push(NewEvent { embedding, ..NewEvent::message(Role::User, turn_text(turn)) });
                ids.push(id);
            }
        }
        for chunk in events.chunks(500) {
            db.append(DEFAULT_TENANT, &cid, "chat", chunk.to_vec(), AppendOptions::default())?;
        }
        for (i, id) in ids.into_iter().enumerate() {
            dia.insert((cid.clone(), i as u64 + 1), id);
            turns += 1;
        }
    }
    db.wait_for_indexes()?;
    let methods: Vec<(&str, Option<Fusion>, bool, bool)> = vec![
        ("bm25", None, true, false),
        ("vector", None, false, true),
        ("rrf k=60", Some(Fusion::Rrf { k: 60.0 }), true, true),
        ("rrf k=10", Some(Fusion::Rrf { k: 10.0 }), true, true),
        ("weighted a=0.2", Some(Fusion::Weighted { alpha: 0.2 }), true, true),
        ("weighted a=0.3", Some(Fusion::Weighted { alpha: 0.3 }), true, true),
        ("default (w 0.4)", Some(Fusion::default()), true, true),
        ("weighted a=0.5", Some(Fusion::Weighted { alpha: 0.5 }), true, true),
        ("weighted a=0.6", Some(Fusion::Weighted { alpha: 0.6 }), true, true),
    ];
    let mut scores = vec![Score::default(); methods.len()];
    for conv in &data {
        let cid = conv["sample_id"].as_str().unwrap().to_string();
        for (qi, qa) in conv["qa"].as_array().context("qa")?.iter().enumerate() {
            let category = qa["category"].as_u64().unwrap_or(0);
            let evidence: Vec<String> =
                qa["evidence"].as_array().into_iter().flatten().filter_map(|e| e.as_str().map(String::from)).collect();
            if !(1..=4).contains(&category) || evidence.is_empty() {
                continue;
            }
            let question = qa["question"].as_str().context("question")?;
            let qvec = vectors.get(&format!("{cid}/q/{qi}"));
            for (m, (_, fusion, text, vector)) in methods.iter().enumerate() {
                if *vector && qvec.is_none() {
                    continue;
                }
                let query = SearchQuery {
                    text: text.then(|| question.to_string()),
                    vector: if *vector { qvec.cloned() } else { None },
                    identity: Some(cid.clone()),
                    over: SearchOver::Events,
                    k: 10,
                    fusion: fusion.unwrap_or_default(),
                    ..SearchQuery::default()
                };
                let found = db.search(DEFAULT_TENANT, &query)?;
                let ranked: Vec<String> = found
                    .hits
                    .iter()
                    .filter_map(|h| match &h.item {
                        HitItem::Event { event, .. } => dia.get(&(cid.clone(), event.seq)).cloned(),
                        HitItem::Memory { .. } => None,
                    })
                    .collect();
                scores[m].add(&ranked, &evidence);
            }
        }
    }
    if scores[0].n == 0 {
        bail!("no questions scored");
    }
    println!("LoCoMo dev: {} conversations, {turns} turns, {} questions (categories 1-4)", data.len(), scores[0].n);
    for ((name, ..), s) in methods.iter().zip(&scores) {
        if s.n == 0 {
            continue;
        }
        let n = s.n as f64;
        println!("{name:>16}: recall@5 {:.3}  recall@10 {:.3}  MRR {:.3}", s.recall5 / n, s.recall10 / n, s.mrr / n);
    }
    Ok(())
}
