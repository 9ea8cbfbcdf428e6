//! The `engram` binary: `engram serve` (the HTTP server) and `engram demo` (opens a data
//! directory, writes a short conversation and reads it back).

#[cfg(feature = "columnar")]
mod columnar;
use anyhow::Context;
use clap::{Parser, Subcommand};
use engram::{AppendOptions, Engram, EventKind, HistoryQuery, NewEvent, Options, Role, StatePrecondition, StateScope};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "engram", version, about = "Session-state and memory database for AI agents")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once per process
enum Command {
    /// Serve the HTTP API (defaults: ./engram-data, 127.0.0.1:7700, no keys on loopback).
    Serve(engram_server::config::ServeArgs),
    /// Read every stored value and check its checksum, decoding and references; exits
    /// non-zero and names each bad record when anything is wrong.
    Verify {
        /// Data directory (must not be open in a running server).
        #[arg(long, default_value = "./engram-data")]
        data_dir: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// A consistent backup (RocksDB checkpoint) into a new directory: of a data directory no
    /// server holds, or online through a running server's admin API (`--server`).
    Backup {
        /// The new backup directory (on the server's machine with --server).
        #[arg(long)]
        to: PathBuf,
        /// Data directory, for an offline backup.
        #[arg(long, default_value = "./engram-data")]
        data_dir: PathBuf,
        /// A running server (`http://127.0.0.1:7700`); the admin key comes from
        /// ENGRAM_ADMIN_KEY (none needed for a keyless server on loopback).
        #[arg(long)]
        server: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Rebuild the full-text and vector indexes from storage: of a data directory no server
    /// holds, or online through a running server's admin API (`--server`).
    Reindex {
        #[arg(long, default_value = "./engram-data")]
        data_dir: PathBuf,
        /// A running server; the admin key comes from ENGRAM_ADMIN_KEY.
        #[arg(long)]
        server: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Restore a backup into a new data directory, or a dump into a new or existing one;
    /// then verify it.
    #[command(alias = "import")]
    Restore {
        /// A directory written by `engram backup` (into a new data directory).
        #[arg(long, required_unless_present = "from_dump", conflicts_with = "from_dump")]
        from_backup: Option<PathBuf>,
        /// A file written by `engram dump` (`-`: standard input), into a new or existing
        /// data directory whose data does not overlap it.
        #[arg(long)]
        from_dump: Option<PathBuf>,
        /// The data directory.
        #[arg(long, default_value = "./engram-data")]
        data_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Write the store (or a part) as JSON lines: a header, one stored record per line, and
    /// a trailer (record count, CRC32) that an import checks.
    Dump {
        #[arg(long, default_value = "./engram-data")]
        data_dir: PathBuf,
        /// The file to write (standard output when absent).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        identity: Option<String>,
        #[arg(long, requires = "identity")]
        session: Option<String>,
        /// Only events of these kinds (repeat the flag).
        #[arg(long = "kind")]
        kinds: Vec<String>,
        /// Only events at or after this time (ms since the epoch).
        #[arg(long)]
        from_ms: Option<i64>,
        /// Only events before this time.
        #[arg(long)]
        to_ms: Option<i64>,
        /// Leave embeddings out.
        #[arg(long)]
        no_vectors: bool,
        /// Leave blobs (texts over 16 KiB) out; such a dump cannot be imported.
        #[arg(long)]
        no_blobs: bool,
        /// `jsonl`, or `arrow` (Arrow IPC file) / `parquet` (builds with the `columnar`
        /// feature; need `--out`).
        #[arg(long, default_value = "jsonl")]
        format: String,
    },
    /// Counts per tenant, identity and event kind, sizes, the format version, the
    /// changelog and RocksDB's figures.
    Inspect {
        #[arg(long, default_value = "./engram-data")]
        data_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Forget an identity (everything it owns) and print the receipt.
    Forget {
        #[arg(long)]
        identity: String,
        /// Offline only: the tenant [default: default]. Online, the API key names it.
        #[arg(long, conflicts_with = "server")]
        tenant: Option<String>,
        #[arg(long, default_value = "./engram-data")]
        data_dir: PathBuf,
        /// A running server; the tenant's API key comes from ENGRAM_API_KEY.
        #[arg(long)]
        server: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Open a data directory, write a short agent conversation and read it back.
    Demo {
        /// Data directory (created if missing).
        #[arg(long, default_value = "./engram-data")]
        data_dir: PathBuf,
        /// Tenant to write into.
        #[arg(long, default_value = engram::DEFAULT_TENANT)]
        tenant: String,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve(args) => serve(&args),
        Command::Demo { data_dir, tenant } => demo(&data_dir, &tenant),
        Command::Verify { data_dir, json } => verify(&data_dir, json),
        Command::Backup { to, data_dir, server, json } => backup(&to, &data_dir, server.as_deref(), json),
        Command::Restore { from_backup: Some(from), data_dir, json, .. } => restore(&from, &data_dir, json),
        Command::Restore { from_dump, data_dir, json, .. } => {
            let from = from_dump.ok_or_else(|| anyhow::anyhow!("--from-backup or --from-dump is required"))?;
            restore_dump(&from, &data_dir, json)
        }
        Command::Dump {
            data_dir,
            out,
            tenant,
            identity,
            session,
            kinds,
            from_ms,
            to_ms,
            no_vectors,
            no_blobs,
            format,
        } => {
            let kinds = kinds
                .iter()
                .map(|k| engram::EventKind::parse(k).ok_or_else(|| anyhow::anyhow!("unknown event kind {k:?}")))
                .collect::<anyhow::Result<_>>()?;
            let filter = engram::DumpFilter { tenant, identity, session, kinds, from_ms, to_ms, no_vectors, no_blobs };
            match format.as_str() {
                "jsonl" => dump(&data_dir, out.as_deref(), &filter),
                "arrow" | "parquet" => dump_columnar(&data_dir, out.as_deref(), &filter, &format),
                other => anyhow::bail!("unknown dump format {other:?}: jsonl, arrow or parquet"),
            }
        }
        Command::Reindex { data_dir, server, json } => reindex(&data_dir, server.as_deref(), json),
        Command::Inspect { data_dir, json } => inspect(&data_dir, json),
        Command::Forget { identity, tenant, data_dir, server, json } => {
            let tenant = tenant.unwrap_or_else(|| engram::DEFAULT_TENANT.to_string());
            forget(&identity, &tenant, &data_dir, server.as_deref(), json)
        }
    }
}

/// Opens an existing data directory for the admin commands: never creates one, and says
/// so plainly when a server holds it.
fn open_existing(data_dir: &std::path::Path) -> anyhow::Result<Engram> {
    anyhow::ensure!(data_dir.join("CURRENT").exists(), "{} is not an Engram data directory", data_dir.display());
    let options = Options { default_tenant: None, retention_sweep_interval_ms: None, ..Options::default() };
    Engram::open(data_dir, options).map_err(|e| match e {
        engram::Error::Locked(_) => {
            anyhow::anyhow!("{} is in use (is `engram serve` running on it?); stop it first", data_dir.display())
        }
        other => anyhow::anyhow!("opening {}: {other}", data_dir.display()),
    })
}

#[cfg(feature = "columnar")]
fn dump_columnar(
    data_dir: &std::path::Path,
    out: Option<&std::path::Path>,
    filter: &engram::DumpFilter,
    format: &str,
) -> anyhow::Result<()> {
    let out = out.ok_or_else(|| anyhow::anyhow!("--format {format} needs --out"))?;
    let format = if format == "arrow" { columnar::Format::Arrow } else { columnar::Format::Parquet };
    let db = open_existing(data_dir)?;
    let file = std::fs::File::create(out)?;
    let mut sink = columnar::ColumnarSink::new(format, std::io::BufWriter::new(&file));
    let stats = with_spinner("dumping", || db.dump(filter, &mut sink))?;
    sink.finish()?;
    file.sync_all()?;
    eprintln!("dumped {} records {:?}", stats.records, stats.by_type);
    Ok(())
}

#[cfg(not(feature = "columnar"))]
fn dump_columnar(
    _: &std::path::Path,
    _: Option<&std::path::Path>,
    _: &engram::DumpFilter,
    format: &str,
) -> anyhow::Result<()> {
    anyhow::bail!("this engram was built without the `columnar` feature: --format {format} is not available")
}

/// A spinner on standard error while `work` runs. indicatif draws nothing when standard
/// error is not a terminal, so scripts and logs stay quiet.
fn with_spinner<T>(message: &'static str, work: impl FnOnce() -> T) -> T {
    let bar = indicatif::ProgressBar::new_spinner().with_message(message);
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    let out = work();
    bar.finish_and_clear();
    out
}

/// A byte-counting bar (of `total` bytes, or a spinner when unknown), terminals only.
fn progress_bar(total: Option<u64>, message: &'static str) -> indicatif::ProgressBar {
    let (bar, template) = match total {
        Some(n) => (indicatif::ProgressBar::new(n), "{msg} {wide_bar} {bytes}/{total_bytes} ({eta})"),
        None => (indicatif::ProgressBar::new_spinner(), "{spinner} {msg} {bytes}"),
    };
    let style =
        indicatif::ProgressStyle::with_template(template).unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.with_style(style).with_message(message)
}

fn dump(data_dir: &std::path::Path, out: Option<&std::path::Path>, filter: &engram::DumpFilter) -> anyhow::Result<()> {
    let db = open_existing(data_dir)?;
    let bar = progress_bar(None, "dumping");
    let stats = match out {
        Some(path) => {
            let file = std::fs::File::create(path)?;
            let mut writer = std::io::BufWriter::new(bar.wrap_write(&file));
            let stats = db.dump(filter, &mut writer)?;
            drop(writer);
            file.sync_all()?;
            stats
        }
        None => db.dump(filter, &mut std::io::BufWriter::new(bar.wrap_write(std::io::stdout().lock())))?,
    };
    bar.finish_and_clear();
    eprintln!("dumped {} records {:?}", stats.records, stats.by_type);
    Ok(())
}

#[allow(clippy::print_stdout)]
fn restore_dump(from: &std::path::Path, data_dir: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let options = Options { retention_sweep_interval_ms: None, ..Options::default() };
    let db = Engram::open(data_dir, options).map_err(|e| match e {
        engram::Error::Locked(_) => anyhow::anyhow!("{} is in use; stop the server first", data_dir.display()),
        other => anyhow::anyhow!("opening {}: {other}", data_dir.display()),
    })?;
    let stats = if from == std::path::Path::new("-") {
        let bar = progress_bar(None, "importing");
        let stats = db.restore_dump(&mut std::io::BufReader::new(bar.wrap_read(std::io::stdin().lock())))?;
        bar.finish_and_clear();
        stats
    } else {
        let file = std::fs::File::open(from)?;
        let bar = progress_bar(Some(file.metadata()?.len()), "importing");
        let stats = db.restore_dump(&mut std::io::BufReader::new(bar.wrap_read(file)))?;
        bar.finish_and_clear();
        stats
    };
    let report = with_spinner("verifying", || db.verify())?;
    if json {
        println!(
            "{}",
            serde_json::json!({"records": stats.records, "by_type": stats.by_type, "problems": report.problems})
        );
    } else {
        println!(
            "restored {} records into {} ({} values verified)",
            stats.records,
            data_dir.display(),
            report.values_checked
        );
        for p in &report.problems {
            println!("BAD {} {}: {}", p.space, p.key, p.reason);
        }
    }
    if !report.is_ok() {
        std::process::exit(2);
    }
    Ok(())
}

#[allow(clippy::print_stdout)]
fn reindex(data_dir: &std::path::Path, server: Option<&str>, json: bool) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let done = match server {
        Some(url) => {
            let key = std::env::var("ENGRAM_ADMIN_KEY").ok();
            let remote = engram_client::Remote::new(url, key.as_deref())?;
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(remote.reindex())?
        }
        None => {
            let db = open_existing(data_dir)?;
            let stats = with_spinner("rebuilding the indexes", || db.reindex())?;
            engram_core::api::ReindexResponse {
                change_seq: stats.marks.applied,
                text_docs: stats.text_docs,
                vectors: stats.vectors.points,
            }
        }
    };
    if json {
        println!("{}", serde_json::to_string(&done)?);
    } else {
        println!(
            "reindexed up to change {}: {} text documents, {} vectors ({:.1} s)",
            done.change_seq,
            done.text_docs,
            done.vectors,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

#[allow(clippy::print_stdout)]
fn backup(to: &std::path::Path, data_dir: &std::path::Path, server: Option<&str>, json: bool) -> anyhow::Result<()> {
    let (path, change_seq) = match server {
        Some(url) => {
            let key = std::env::var("ENGRAM_ADMIN_KEY").ok();
            let remote = engram_client::Remote::new(url, key.as_deref())?;
            let to = to.to_str().ok_or_else(|| anyhow::anyhow!("the backup path must be UTF-8"))?.to_string();
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let done = runtime.block_on(remote.backup(&to))?;
            (done.path, done.change_seq)
        }
        None => {
            let db = open_existing(data_dir)?;
            let seq = with_spinner("writing the backup", || db.backup(to))?;
            (to.display().to_string(), seq)
        }
    };
    if json {
        println!("{}", serde_json::json!({"path": path, "change_seq": change_seq}));
    } else {
        println!("backup written to {path} (changes up to {change_seq})");
    }
    Ok(())
}

#[allow(clippy::print_stdout)]
fn restore(from: &std::path::Path, data_dir: &std::path::Path, json: bool) -> anyhow::Result<()> {
    anyhow::ensure!(from.join("CURRENT").exists(), "{} is not an Engram backup", from.display());
    if data_dir.exists() {
        let empty = std::fs::read_dir(data_dir)?.next().is_none();
        anyhow::ensure!(empty, "{} exists and is not empty: restore into a new directory", data_dir.display());
        std::fs::remove_dir(data_dir)?;
    }
    // Copy into a sibling, make it durable, then rename it into place: a failed or
    // interrupted restore never leaves something that looks like a data directory.
    let name = data_dir.file_name().ok_or_else(|| anyhow::anyhow!("bad data directory {}", data_dir.display()))?;
    let staging = data_dir.with_file_name(format!(".{}.restoring", name.to_string_lossy()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir_all(&staging)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        anyhow::ensure!(entry.file_type()?.is_file(), "unexpected non-file {} in the backup", entry.path().display());
        let target = staging.join(entry.file_name());
        std::fs::copy(entry.path(), &target)?;
        std::fs::File::open(&target)?.sync_all()?;
    }
    std::fs::File::open(&staging)?.sync_all()?;
    std::fs::rename(&staging, data_dir)?;
    if let Some(parent) = data_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(parent)?.sync_all()?;
    }
    let db = open_existing(data_dir)?;
    let report = with_spinner("verifying the restored store", || db.verify())?;
    if json {
        println!(
            "{}",
            serde_json::json!({"data_dir": data_dir, "values": report.values_checked, "problems": report.problems})
        );
    } else if report.is_ok() {
        println!(
            "restored {} into {} ({} values, verified)",
            from.display(),
            data_dir.display(),
            report.values_checked
        );
    } else {
        for p in &report.problems {
            println!("BAD {} {}: {}", p.space, p.key, p.reason);
        }
        println!("restored {} into {}, but {} problems", from.display(), data_dir.display(), report.problems.len());
    }
    if !report.is_ok() {
        std::process::exit(2);
    }
    Ok(())
}

#[allow(clippy::print_stdout)]
fn inspect(data_dir: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let db = open_existing(data_dir)?;
    let report = with_spinner("counting", || db.inspect())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("data directory   {}", data_dir.display());
    println!("format version   {}", report.format_version);
    println!("last change seq  {} ({} changelog entries kept)", report.last_change_seq, report.changelog_entries);
    println!("API keys         {}", report.api_keys);
    match &report.index {
        Some(i) => {
            println!(
                "indexes          applied {} (lag {}), text searchable at {}, vector snapshot at {}, changelog kept from {}",
                i.marks.applied, report.index_lag, i.marks.text_visible, i.marks.vector_saved, i.marks.truncated_below
            );
            println!(
                "                 {} text documents, {} vectors ({} tombstones, {} graphs of {} points), {} rebuilds{}",
                i.text_docs,
                i.vectors.points,
                i.vectors.tombstones,
                i.vectors.graphs,
                i.vectors.graph_points,
                i.rebuilds,
                i.failure.as_deref().map(|f| format!(", FAILING: {f}")).unwrap_or_default()
                    + &i.poisoned.as_deref().map(|f| format!(", POISONED: {f}")).unwrap_or_default()
            );
        }
        None => println!("indexes          off"),
    }
    match report.embedder_mark {
        Some(mark) => println!(
            "embedder         handled changes up to {mark} (backlog {} changes)",
            report.last_change_seq.saturating_sub(mark)
        ),
        None => println!("embedder         never ran"),
    }
    if report.unreadable > 0 {
        println!("UNREADABLE       {} records (run engram verify)", report.unreadable);
    }
    for t in &report.tenants {
        let c = &t.counts;
        println!(
            "tenant {:<20} identities {:>6}  sessions {:>7}  events {:>9}  memory versions {:>7}  state {:>6}  blobs {:>5} ({} B)  {} B",
            t.name, t.identities, c.sessions, c.events, c.memory_versions, c.state_docs, t.blobs, t.blob_bytes, c.bytes
        );
        for (kind, n) in &c.events_by_kind {
            println!("    {kind:<18} {n:>9}");
        }
        for (id, c) in &t.by_identity {
            println!(
                "  identity {:<24} sessions {:>6}  events {:>9}  memory versions {:>6}  state {:>5}  {} B",
                id, c.sessions, c.events, c.memory_versions, c.state_docs, c.bytes
            );
        }
    }
    for (name, value) in &report.storage {
        println!("{name:<45} {value}");
    }
    Ok(())
}

#[allow(clippy::print_stdout)]
fn forget(
    identity: &str,
    tenant: &str,
    data_dir: &std::path::Path,
    server: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let receipt = match server {
        Some(url) => {
            use engram_client::EngramApi;
            let key = std::env::var("ENGRAM_API_KEY").ok();
            let remote = engram_client::Remote::new(url, key.as_deref())?;
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(remote.forget_identity(identity))?
        }
        None => open_existing(data_dir)?.forget_identity(tenant, identity)?,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&receipt)?);
    } else {
        println!(
            "forgot {}/{}: {} sessions, {} events, {} memory versions, {} state documents, {} blobs deleted (change {})",
            receipt.tenant,
            receipt.identity,
            receipt.sessions,
            receipt.events,
            receipt.memory_versions,
            receipt.state_docs,
            receipt.blobs_deleted,
            receipt.change_seq
        );
    }
    Ok(())
}

#[allow(clippy::print_stdout)]
fn verify(data_dir: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let db = open_existing(data_dir)?;
    let report = with_spinner("verifying", || db.verify())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("checked {} values in {}", report.values_checked, data_dir.display());
        for (kind, n) in &report.by_kind {
            println!("  {kind:<16} {n}");
        }
        if report.index_checked {
            println!("indexes checked against storage");
        }
        for p in &report.problems {
            println!("BAD {} {}: {}", p.space, p.key, p.reason);
        }
        println!("{}", if report.is_ok() { "ok".to_string() } else { format!("{} problems", report.problems.len()) });
    }
    if !report.is_ok() {
        std::process::exit(2);
    }
    Ok(())
}

fn init_logging(format: engram_server::config::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ENGRAM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        engram_server::config::LogFormat::Text => builder.init(),
        engram_server::config::LogFormat::Json => builder.json().init(),
    }
}

fn serve(args: &engram_server::config::ServeArgs) -> anyhow::Result<()> {
    let config = engram_server::Config::resolve(args)?;
    init_logging(config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let server = engram_server::start(config).await?;
        server.run_until(stop_signal()).await
    })
}

/// SIGINT or SIGTERM.
async fn stop_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

#[allow(clippy::print_stdout)]
fn demo(data_dir: &std::path::Path, tenant: &str) -> anyhow::Result<()> {
    let db = Engram::open(data_dir, Options::default())
        .with_context(|| format!("opening data directory {}", data_dir.display()))?;
    if tenant != engram::DEFAULT_TENANT && db.get_tenant(tenant).is_err() {
        db.create_tenant(tenant, Default::default())?;
    }
    let (identity, session) = ("demo-user", "demo-session");
    let turns = vec![
        NewEvent::message(Role::System, "You are a helpful travel assistant."),
        NewEvent::message(Role::User, "Find me a train from Lyon to Turin next Friday."),
        NewEvent {
            kind: Some(EventKind::ToolCall),
            name: Some("search_trains".into()),
            call_id: Some("call-1".into()),
            data: Some(serde_json::json!({"from": "Lyon", "to": "Turin", "day": "friday"})),
            ..NewEvent::default()
        },
        NewEvent {
            kind: Some(EventKind::ToolResult),
            role: Some(Role::Tool),
            call_id: Some("call-1".into()),
            text: Some("TGV 9241 dep 07:34 arr 11:41; FR 9247 dep 14:30 arr 18:38".into()),
            ..NewEvent::default()
        },
        NewEvent::message(Role::Assistant, "There is a TGV at 07:34 arriving 11:41, and one at 14:30."),
    ];
    let head = db.get_session(tenant, identity, session).map(|s| s.head_seq).unwrap_or(0);
    let result =
        db.append(tenant, identity, session, turns, AppendOptions { expected_head: Some(head), ..Default::default() })?;
    let scope = StateScope::Session { identity, session };
    let state = db.put_state(
        tenant,
        scope,
        "task",
        serde_json::json!({"step": "offer_trains", "pending_approval": false}),
        StatePrecondition::None,
    )?;
    println!("data directory: {}", data_dir.display());
    println!("appended seq {}..={} to {identity}/{session}", result.first_seq, result.last_seq);
    println!("state 'task' is at version {}", state.version);
    let page = db.history(tenant, identity, session, &HistoryQuery::last(5))?;
    println!("last {} events (newest first) of {} in the session:", page.events.len(), page.head_seq);
    for e in &page.events {
        let role = e.role.map(|r| r.to_string()).unwrap_or_else(|| "-".into());
        let body = e.text.clone().or_else(|| e.data.as_ref().map(|d| d.to_string())).unwrap_or_default();
        println!("  #{:<4} {:<12} {:<10} {}", e.seq, e.kind.as_str(), role, body);
    }
    Ok(())
}
