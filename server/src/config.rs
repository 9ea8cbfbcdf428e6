//! Server configuration: defaults, then a TOML file, then environment variables, then flags
//! (each later source overrides the earlier). Unknown keys in the file are an error.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Every acknowledged write is synced to disk first.
    #[default]
    Durable,
    /// Writes are acknowledged before their sync; a crash may lose the last ones.
    Buffered,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Everything `engram serve` can be told. `Debug` never shows the admin key.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the data lives (created if missing).
    pub data_dir: PathBuf,
    /// Address to listen on. Anything but loopback needs API keys or an admin key.
    pub listen: SocketAddr,
    /// The admin key (any string of 32+ characters). Without it, and with no API keys in the
    /// store, the server serves the default tenant without keys, on loopback only.
    pub admin_key: Option<String>,
    pub durability: Durability,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// A request that takes longer gets a `timeout` error (a write may still complete).
    pub request_timeout_ms: u64,
    /// Requests served at once; more wait (within the request timeout) for a slot.
    pub max_concurrent_requests: usize,
    /// Open watch (server-sent events) streams at once; more are refused with 503.
    pub max_watch_streams: usize,
    /// On shutdown, how long requests in flight may take to finish before connections are
    /// closed (the store is synced first either way).
    pub shutdown_grace_ms: u64,
    /// Requests per second allowed per API key (unlimited when absent).
    pub rate_limit_per_sec: Option<f64>,
    /// Requests a key may make in a burst above the rate (the rate, at least 1, when absent).
    pub rate_limit_burst: Option<f64>,
    pub log_format: LogFormat,
    /// PEM certificate chain: with `tls_key_file`, the server speaks HTTPS only.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub tls_key_file: Option<PathBuf>,
    /// A sentence-transformers BERT model directory (`config.json`, `tokenizer.json`,
    /// `model.safetensors`; e.g. all-MiniLM-L6-v2): the local embedder. The default tenant
    /// uses it, and tenants created with `embedder: local`.
    pub embedding_model: Option<PathBuf>,
    /// Memory for the history tail cache (the newest events of recently read sessions);
    /// 0 turns it off.
    pub history_cache_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./engram-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 7700)),
            admin_key: None,
            durability: Durability::Durable,
            max_body_bytes: 64 * 1024 * 1024,
            request_timeout_ms: 30_000,
            max_concurrent_requests: 1024,
            max_watch_streams: 1024,
            shutdown_grace_ms: 30_000,
            rate_limit_per_sec: None,
            rate_limit_burst: None,
            log_format: LogFormat::Text,
            tls_cert_file: None,
            tls_key_file: None,
            embedding_model: None,
            history_cache_bytes: engram::Options::default().history_cache_bytes,
        }
    }
}

/// The most concurrent requests or watch streams one can configure.
pub const MAX_SLOTS: usize = 1 << 20;

/// The shortest admin key accepted.
pub const MIN_ADMIN_KEY_CHARS: usize = 32;

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("data_dir", &self.data_dir)
            .field("listen", &self.listen)
            .field("admin_key", &self.admin_key.as_ref().map(|_| "<redacted>"))
            .field("durability", &self.durability)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("max_concurrent_requests", &self.max_concurrent_requests)
            .field("max_watch_streams", &self.max_watch_streams)
            .field("shutdown_grace_ms", &self.shutdown_grace_ms)
            .field("rate_limit_per_sec", &self.rate_limit_per_sec)
            .field("rate_limit_burst", &self.rate_limit_burst)
            .field("log_format", &self.log_format)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .field("embedding_model", &self.embedding_model)
            .field("history_cache_bytes", &self.history_cache_bytes)
            .finish()
    }
}

/// `engram serve`'s flags; each also reads an `ENGRAM_*` environment variable. `Debug`
/// never shows the admin key.
#[derive(clap::Args, Clone, Default)]
pub struct ServeArgs {
    /// A TOML file with any of the settings below (snake_case names).
    #[arg(long, env = "ENGRAM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory [default: ./engram-data].
    #[arg(long, env = "ENGRAM_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Listen address [default: 127.0.0.1:7700].
    #[arg(long, env = "ENGRAM_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// The admin key (prefer the environment variable to the flag: flags show in `ps`).
    #[arg(long, env = "ENGRAM_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    #[arg(long, env = "ENGRAM_DURABILITY", value_enum)]
    pub durability: Option<Durability>,
    #[arg(long, env = "ENGRAM_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    #[arg(long, env = "ENGRAM_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    #[arg(long, env = "ENGRAM_MAX_CONCURRENT_REQUESTS")]
    pub max_concurrent_requests: Option<usize>,
    #[arg(long, env = "ENGRAM_MAX_WATCH_STREAMS")]
    pub max_watch_streams: Option<usize>,
    #[arg(long, env = "ENGRAM_SHUTDOWN_GRACE_MS")]
    pub shutdown_grace_ms: Option<u64>,
    #[arg(long, env = "ENGRAM_RATE_LIMIT_PER_SEC")]
    pub rate_limit_per_sec: Option<f64>,
    #[arg(long, env = "ENGRAM_RATE_LIMIT_BURST")]
    pub rate_limit_burst: Option<f64>,
    #[arg(long, env = "ENGRAM_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// PEM certificate chain for HTTPS (with --tls-key-file).
    #[arg(long, env = "ENGRAM_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key for HTTPS (with --tls-cert-file).
    #[arg(long, env = "ENGRAM_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// A BERT sentence model directory (e.g. all-MiniLM-L6-v2): derive vectors from text.
    #[arg(long, env = "ENGRAM_EMBEDDING_MODEL")]
    pub embedding_model: Option<PathBuf>,
    /// Memory for the history tail cache, in bytes (0: off).
    #[arg(long, env = "ENGRAM_HISTORY_CACHE_BYTES")]
    pub history_cache_bytes: Option<usize>,
}

impl Config {
    /// Parses a TOML file's text.
    pub fn from_toml(text: &str) -> anyhow::Result<Config> {
        Ok(toml::from_str(text)?)
    }

    fn from_file(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading config file {}: {e}", path.display()))?;
        Config::from_toml(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
    }

    /// Defaults < file < environment < flags (clap resolves flags over the environment).
    pub fn resolve(args: &ServeArgs) -> anyhow::Result<Config> {
        let mut c = match &args.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        macro_rules! overlay {
            ($($field:ident),*) => { $(if let Some(v) = args.$field.clone() { c.$field = v; })* };
        }
        overlay!(
            data_dir,
            listen,
            durability,
            max_body_bytes,
            request_timeout_ms,
            max_concurrent_requests,
            max_watch_streams,
            shutdown_grace_ms,
            log_format,
            history_cache_bytes
        );
        // Settings that are optional in the file too: a flag or variable replaces the file's.
        macro_rules! overlay_optional {
            ($($field:ident),*) => { $(if args.$field.is_some() { c.$field = args.$field.clone(); })* };
        }
        overlay_optional!(
            admin_key,
            rate_limit_per_sec,
            rate_limit_burst,
            tls_cert_file,
            tls_key_file,
            embedding_model
        );
        c.check()?;
        Ok(c)
    }

    /// Rejects settings that cannot work.
    pub fn check(&self) -> anyhow::Result<()> {
        if let Some(key) = &self.admin_key
            && key.chars().count() < MIN_ADMIN_KEY_CHARS
        {
            anyhow::bail!("admin_key must be at least {MIN_ADMIN_KEY_CHARS} characters");
        }
        anyhow::ensure!(self.max_body_bytes > 0, "max_body_bytes must be positive");
        anyhow::ensure!(self.request_timeout_ms > 0, "request_timeout_ms must be positive");
        anyhow::ensure!(
            (1..=MAX_SLOTS).contains(&self.max_concurrent_requests),
            "max_concurrent_requests must be between 1 and {MAX_SLOTS}"
        );
        anyhow::ensure!(
            (1..=MAX_SLOTS).contains(&self.max_watch_streams),
            "max_watch_streams must be between 1 and {MAX_SLOTS}"
        );
        if let Some(rate) = self.rate_limit_per_sec {
            anyhow::ensure!(rate.is_finite() && rate > 0.0, "rate_limit_per_sec must be a positive number");
        }
        anyhow::ensure!(
            self.tls_cert_file.is_some() == self.tls_key_file.is_some(),
            "tls_cert_file and tls_key_file go together"
        );
        if let Some(burst) = self.rate_limit_burst {
            anyhow::ensure!(burst.is_finite() && burst >= 1.0, "rate_limit_burst must be at least 1");
        }
        Ok(())
    }
}

impl std::fmt::Debug for ServeArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeArgs")
            .field("config", &self.config)
            .field("data_dir", &self.data_dir)
            .field("listen", &self.listen)
            .field("admin_key", &self.admin_key.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_keys_are_checked_and_layered_under_flags() {
        let c = Config::from_toml("listen = \"0.0.0.0:8000\"\nrequest_timeout_ms = 5\n").expect("valid file");
        assert_eq!(c.listen.port(), 8000);
        assert_eq!(c.request_timeout_ms, 5);
        assert_eq!(c.data_dir, PathBuf::from("./engram-data"));
        let err = Config::from_toml("listen_addr = \"0.0.0.0:8000\"\n").expect_err("unknown key");
        assert!(err.to_string().contains("unknown field"), "{err}");

        let dir = std::env::temp_dir().join(format!("engram-config-test-{}", std::process::id()));
        std::fs::write(&dir, "request_timeout_ms = 5\nmax_body_bytes = 10\n").expect("writes");
        let args = ServeArgs { config: Some(dir.clone()), max_body_bytes: Some(99), ..ServeArgs::default() };
        let c = Config::resolve(&args).expect("resolves");
        std::fs::remove_file(&dir).expect("removes");
        assert_eq!((c.request_timeout_ms, c.max_body_bytes), (5, 99));
        let c = Config::from_toml("history_cache_bytes = 0\n").expect("valid file");
        assert_eq!(c.history_cache_bytes, 0);
        assert_eq!(Config::default().history_cache_bytes, engram::Options::default().history_cache_bytes);
    }

    #[test]
    fn short_admin_keys_are_refused_and_keys_never_printed() {
        let c = Config { admin_key: Some("short".into()), ..Config::default() };
        assert!(c.check().is_err());
        let secret = "a-long-admin-key-that-must-not-leak-0123456789";
        let c = Config { admin_key: Some(secret.into()), ..Config::default() };
        assert!(!format!("{c:?}").contains(secret));
        let a = ServeArgs { admin_key: Some(secret.into()), ..ServeArgs::default() };
        assert!(!format!("{a:?}").contains(secret));
        assert!(Config { max_concurrent_requests: usize::MAX, ..Config::default() }.check().is_err());
    }
}
