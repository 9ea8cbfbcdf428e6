//! Shared by the server's integration tests: a server on a temporary data directory and an
//! OS-assigned loopback port.
#![allow(dead_code)]

use engram_server::{Config, Server};

pub const ADMIN_KEY: &str = "test-admin-key-0123456789abcdef-0123456789";

/// A server with an admin key (keyed mode) over `dir`.
pub async fn keyed_server(dir: &std::path::Path) -> Server {
    start(Config { admin_key: Some(ADMIN_KEY.into()), ..config(dir) }).await
}

/// A server without keys (open mode, loopback) over `dir`.
pub async fn open_server(dir: &std::path::Path) -> Server {
    start(config(dir)).await
}

pub fn config(dir: &std::path::Path) -> Config {
    Config { data_dir: dir.to_path_buf(), listen: "127.0.0.1:0".parse().expect("an address"), ..Config::default() }
}

pub async fn start(config: Config) -> Server {
    engram_server::start(config).await.expect("server starts")
}

/// `python3` that can import `module`, with `packages` installed from PyPI into
/// `~/.cache/<cache>` the first time (these tests need python3 with pip, as the project's
/// machines have).
pub fn python_with(cache: &str, packages: &[&str], module: &str) -> std::process::Command {
    let dir =
        std::path::PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/tmp".into())).join(".cache").join(cache);
    let python = || {
        let mut c = std::process::Command::new("python3");
        c.env("PYTHONPATH", &dir);
        c
    };
    let ready = python().args(["-c", &format!("import {module}")]).output().is_ok_and(|o| o.status.success());
    if !ready {
        let install = std::process::Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--target"])
            .arg(&dir)
            .args(packages)
            .output()
            .expect("python3 runs");
        assert!(install.status.success(), "installing {packages:?}: {}", String::from_utf8_lossy(&install.stderr));
    }
    python()
}

#[path = "../../../engine/tests/support/minilm.rs"]
pub mod minilm;

#[path = "../../../engine/tests/support/rng.rs"]
pub mod rng;
