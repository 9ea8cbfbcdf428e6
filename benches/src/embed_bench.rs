//! The local embedder, next to baselines measured in the same run:
//! - embedding throughput (sentences/s) at batch 1 and batch 32 on LoCoMo turns, next to
//!   the same model in onnxruntime (`scripts/onnx_minilm_bench.py`, run by this binary);
//! - ingest throughput of text turns into a tenant with `embedder: local` (appended as fast
//!   as they go, timed until the embedder's backlog is drained), next to embedding alone.
//!
//! ```text
//! cargo run --release -p engram-benches --bin embed-bench -- --model <all-MiniLM-L6-v2 dir> [--python-path DIR]
//! ```

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use anyhow::{Context, Result};
use clap::Parser;
use engram::{AppendOptions, BertEmbedder, Embedder, EmbedderKind, Engram, NewEvent, Options, Role, TenantConfig};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
struct Args {
    /// The model directory (config.json, tokenizer.json, model.safetensors).
    #[arg(long)]
    model: std::path::PathBuf,
    #[arg(long, default_value = "../shared/data/locomo-dev.json")]
    locomo: std::path::PathBuf,
    /// Sentences for the batch-32 and ingest measurements.
    #[arg(long, default_value_t = 1024)]
    sentences: usize,
    /// PYTHONPATH holding onnxruntime, onnx, numpy, tokenizers, safetensors for the baseline.
    #[arg(long)]
    python_path: Option<String>,
}

fn sentences(path: &std::path::Path, n: usize) -> Result<Vec<String>> {
    let data: Vec<Value> = serde_json::from_slice(&std::fs::read(path).context("reading LoCoMo")?)?;
    let mut out = Vec::new();
    for conv in &data {
        let c = &conv["conversation"];
        for i in 1.. {
            let Some(session) = c[format!("session_{i}")].as_array() else { break };
            for turn in session {
                let text =
                    format!("{}: {}", turn["speaker"].as_str().unwrap_or(""), turn["text"].as_str().unwrap_or(""));
                out.push(text.replace('\n', " "));
            }
        }
    }
    out.truncate(n);
    Ok(out)
}

fn rate(model: &dyn Embedder, texts: &[String], batch: usize) -> Result<f64> {
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    model.embed(&refs[..batch.min(refs.len())])?;
    let started = Instant::now();
    for chunk in refs.chunks(batch) {
        model.embed(chunk)?;
    }
    Ok(texts.len() as f64 / started.elapsed().as_secs_f64())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let texts = sentences(&args.locomo, args.sentences)?;
    let model = Arc::new(BertEmbedder::load(&args.model)?);
    let batch1 = rate(&*model, &texts[..200.min(texts.len())], 1)?;
    let batch32 = rate(&*model, &texts, 32)?;
    println!("engram: batch 1 {batch1:.1} sentences/s, batch 32 {batch32:.1} sentences/s");

    let list = tempfile::NamedTempFile::new()?;
    std::fs::write(list.path(), texts.join("\n"))?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/onnx_minilm_bench.py");
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(script).arg("--model").arg(&args.model).arg("--sentences").arg(list.path());
    if let Some(p) = &args.python_path {
        cmd.env("PYTHONPATH", p);
    }
    let out = cmd.output().context("running the onnxruntime baseline")?;
    if out.status.success() {
        let v: Value = serde_json::from_slice(&out.stdout)?;
        let (b1, b32) = (v["batch1_per_sec"].as_f64().unwrap_or(0.0), v["batch32_per_sec"].as_f64().unwrap_or(0.0));
        println!(
            "onnxruntime {}: batch 1 {b1:.1} sentences/s, batch 32 {b32:.1} sentences/s",
            v["onnxruntime"].as_str().unwrap_or("?")
        );
        println!("ratio engram / onnxruntime: batch 1 {:.2}x, batch 32 {:.2}x", batch1 / b1, batch32 / b32);
    } else {
        println!("onnxruntime baseline failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    // Ingest: text turns appended 32 at a time into a tenant with the local embedder.
    let dir = tempfile::tempdir()?;
    let options = Options { retention_sweep_interval_ms: None, embedder: Some(model.clone()), ..Options::default() };
    let db = Engram::open(dir.path(), options)?;
    db.create_tenant("t", TenantConfig { embedder: EmbedderKind::Local, ..TenantConfig::default() })?;
    let started = Instant::now();
    for (i, chunk) in texts.chunks(32).enumerate() {
        let events = chunk.iter().map(|t| NewEvent::message(Role::User, t.clone())).collect();
        db.append("t", "alice", &format!("s{}", i % 8), events, AppendOptions::default())?;
    }
    let appended = started.elapsed();
    loop {
        let stats = db.embedder_stats().context("stats")?;
        if stats.backlog_changes == 0 && stats.embedded >= texts.len() as u64 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let total = started.elapsed();
    let ingest = texts.len() as f64 / total.as_secs_f64();
    println!(
        "ingest with embedding: {} turns appended in {:.2} s, all embedded after {:.2} s: {ingest:.1} turns/s ({:.2}x embedding alone at batch 32)",
        texts.len(),
        appended.as_secs_f64(),
        total.as_secs_f64(),
        ingest / batch32
    );
    Ok(())
}
