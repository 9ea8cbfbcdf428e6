//! The admin subcommands of the `engram` binary, end to end on temporary data directories.

mod common;

use engram::storage::{Batch, ReadView, RocksStore, Space, Store};
use engram::{Engram, NewEvent, Options, Role};
use std::process::Command;

fn engram() -> Command {
    Command::new(env!("CARGO_BIN_EXE_engram"))
}

fn write_some(dir: &std::path::Path) {
    let db = Engram::open(dir, Options::default()).expect("open");
    let turns = vec![NewEvent::message(Role::User, "hello"), NewEvent::message(Role::Assistant, "hi")];
    db.append("default", "alice", "chat", turns, Default::default()).expect("append");
    db.put_memory("default", "alice", engram::NewMemory::fact("likes tea")).expect("memory");
}

/// Flips the last byte of the stored value under `key` (data space) of a closed store.
fn flip_last_byte(dir: &std::path::Path, key: &[u8]) {
    let store = RocksStore::open(dir, &Default::default()).expect("raw open");
    let mut value = store.get(Space::Data, key).expect("read").expect("the value exists");
    let last = value.len() - 1;
    value[last] ^= 0x01;
    let mut batch = Batch::new();
    batch.put(Space::Data, key.to_vec(), value);
    store.write(batch).expect("write");
    store.sync().expect("sync");
}

#[test]
fn verify_passes_a_healthy_store_and_names_a_flipped_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_some(dir.path());
    let ok = engram().args(["verify", "--data-dir"]).arg(dir.path()).output().expect("runs");
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{out}{}", String::from_utf8_lossy(&ok.stderr));
    assert!(out.contains("Event") && out.trim_end().ends_with("ok"), "{out}");

    // Flip one byte of the stored value of event 2.
    let key = engram_core::keys::event("default", "alice", "chat", 2);
    flip_last_byte(dir.path(), &key);
    let bad = engram().args(["verify", "--json", "--data-dir"]).arg(dir.path()).output().expect("runs");
    assert_eq!(bad.status.code(), Some(2), "{}", String::from_utf8_lossy(&bad.stderr));
    let report: serde_json::Value = serde_json::from_slice(&bad.stdout).expect("json report");
    let problems = report["problems"].as_array().expect("problems");
    assert_eq!(problems.len(), 1, "{report}");
    assert_eq!(problems[0]["key"], engram_core::keys::render(&key));
    assert!(problems[0]["reason"].as_str().expect("reason").contains("checksum"), "{report}");
}

#[test]
fn admin_commands_refuse_a_directory_in_use_or_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_some(dir.path());
    let held = Engram::open(dir.path(), Options::default()).expect("open");
    let out = engram().args(["verify", "--data-dir"]).arg(dir.path()).output().expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"), "{}", String::from_utf8_lossy(&out.stderr));
    drop(held);
    let missing = dir.path().join("nothing-here");
    let out = engram().args(["verify", "--data-dir"]).arg(&missing).output().expect("runs");
    assert!(!out.status.success());
    assert!(!missing.exists(), "verify must not create a data directory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_backup_restores_to_an_identical_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = engram_server::Config {
        data_dir: dir.path().join("live"),
        listen: "127.0.0.1:0".parse().expect("addr"),
        ..engram_server::Config::default()
    };
    let server = engram_server::start(config).await.expect("server");
    let db = server.db().clone();
    let turns: Vec<NewEvent> = (0..200).map(|i| NewEvent::message(Role::User, format!("turn {i}"))).collect();
    db.append("default", "alice", "chat", turns, Default::default()).expect("append");
    let backup = dir.path().join("backup");
    let restored = dir.path().join("restored");
    let (url, b, r) = (server.url(), backup.clone(), restored.clone());
    let outputs = tokio::task::spawn_blocking(move || {
        let online = engram().args(["backup", "--server", &url, "--to"]).arg(&b).output().expect("runs");
        let again = engram().args(["backup", "--server", &url, "--to"]).arg(&b).output().expect("runs");
        let restore =
            engram().args(["restore", "--from-backup"]).arg(&b).arg("--data-dir").arg(&r).output().expect("runs");
        (online, again, restore)
    })
    .await
    .expect("cli");
    let (online, again, restore) = outputs;
    assert!(online.status.success(), "{}", String::from_utf8_lossy(&online.stderr));
    assert!(!again.status.success(), "a backup never overwrites a directory");
    assert!(restore.status.success(), "{}", String::from_utf8_lossy(&restore.stderr));
    // Written after the backup: not in it.
    db.append("default", "alice", "chat", vec![NewEvent::message(Role::User, "later")], Default::default())
        .expect("append");
    let live = db.history("default", "alice", "chat", &engram::HistoryQuery { limit: 1000, ..Default::default() });
    drop(db);
    server.shutdown().await.expect("shutdown");
    let copy = Engram::open(&restored, Options::default()).expect("open the restored store");
    let got = copy.history("default", "alice", "chat", &engram::HistoryQuery { limit: 1000, ..Default::default() });
    let live = live.expect("live history").events;
    let got = got.expect("restored history").events;
    assert_eq!(got.len(), 200);
    assert_eq!(got[..], live[..200]);
    assert!(copy.verify().expect("verify").is_ok());
}

#[test]
fn inspect_counts_and_forget_leaves_nothing_of_the_identity() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_some(dir.path());
    {
        let db = Engram::open(dir.path(), Options::default()).expect("open");
        db.append("default", "bob", "s", vec![NewEvent::message(Role::User, "x".repeat(20_000))], Default::default())
            .expect("append");
    }
    let out = engram().args(["inspect", "--json", "--data-dir"]).arg(dir.path()).output().expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let tenant = &report["tenants"][0];
    assert_eq!(tenant["name"], "default");
    assert_eq!((tenant["identities"].as_u64(), tenant["events"].as_u64()), (Some(2), Some(3)));
    assert_eq!(tenant["events_by_kind"]["message"], 3);
    assert_eq!(tenant["by_identity"]["alice"]["events"], 2);
    assert_eq!(tenant["by_identity"]["alice"]["memory_versions"], 1);
    assert_eq!(tenant["blobs"], 1);
    assert_eq!(report["format_version"], 1);
    assert!(report["index"]["marks"]["applied"].is_u64(), "{report}");

    // Reindex rebuilds from storage: 3 events and 1 memory, all with text.
    let out = engram().args(["reindex", "--json", "--data-dir"]).arg(dir.path()).output().expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let done: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(done["text_docs"], 4, "{done}");
    let out = engram().args(["verify", "--json", "--data-dir"]).arg(dir.path()).output().expect("runs");
    let checked: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        (checked["index_checked"].as_bool(), checked["problems"].as_array().map(Vec::len)),
        (Some(true), Some(0))
    );

    let out = engram()
        .args(["forget", "--identity", "alice", "--json", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let receipt: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!((receipt["events"].as_u64(), receipt["memory_versions"].as_u64()), (Some(2), Some(1)));
    let out = engram().args(["inspect", "--json", "--data-dir"]).arg(dir.path()).output().expect("runs");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(report["tenants"][0]["by_identity"].get("alice").is_none(), "{report}");
    assert_eq!(report["tenants"][0]["events"], 1);
    let again = engram().args(["forget", "--identity", "alice", "--data-dir"]).arg(dir.path()).output().expect("runs");
    assert!(!again.status.success(), "forgetting an unknown identity is an error");
    let both =
        engram().args(["forget", "--identity", "bob", "--tenant", "acme", "--server", "http://127.0.0.1:1"]).output();
    let both = both.expect("runs");
    assert!(!both.status.success(), "online, the key names the tenant: --tenant is refused");
    assert!(
        String::from_utf8_lossy(&both.stderr).contains("cannot be used with"),
        "{}",
        String::from_utf8_lossy(&both.stderr)
    );
}

#[test]
fn dump_and_import_round_trip_through_the_binary() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_some(dir.path());
    let first = dir.path().join("first.jsonl");
    let out = engram().args(["dump", "--data-dir"]).arg(dir.path()).arg("--out").arg(&first).output().expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Not a terminal: no progress drawing, only the closing count.
    assert!(!stderr.contains('\u{1b}') && stderr.starts_with("dumped "), "{stderr}");
    let copy = dir.path().join("copy");
    let out = engram()
        .args(["import", "--json", "--from-dump"])
        .arg(&first)
        .arg("--data-dir")
        .arg(&copy)
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let done: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(done["problems"].as_array().map(Vec::len), Some(0), "{done}");
    let second = engram().args(["dump", "--data-dir"]).arg(&copy).output().expect("runs");
    assert!(second.status.success());
    assert_eq!(std::fs::read(&first).expect("read"), second.stdout, "dump -> import -> dump differs");
    // Filters, on standard output.
    let out = engram().args(["dump", "--kind", "tool_call", "--data-dir"]).arg(dir.path()).output().expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && !text.contains("\"type\":\"event\""), "{text}");
    let out = engram().args(["dump", "--kind", "shout", "--data-dir"]).arg(dir.path()).output().expect("runs");
    assert!(!out.status.success());
}

/// `python3` that can import pyarrow.
#[cfg(feature = "columnar")]
fn python_with_pyarrow() -> std::process::Command {
    common::python_with("engram-pyarrow", &["pyarrow"], "pyarrow")
}

#[cfg(feature = "columnar")]
#[test]
fn parquet_and_arrow_dumps_read_back_with_pyarrow() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_some(dir.path());
    let jsonl = engram().args(["dump", "--data-dir"]).arg(dir.path()).output().expect("runs");
    let jsonl = String::from_utf8(jsonl.stdout).expect("utf-8");
    let header = jsonl.lines().next().expect("header").to_string();
    let rows = jsonl.lines().count() - 2; // all but the header and the trailer
    let columns = [
        "type",
        "tenant",
        "identity",
        "session",
        "name",
        "seq",
        "sha256",
        "text",
        "timestamp_ms",
        "embedding",
        "record",
    ];
    for (format, read) in
        [("parquet", "pyarrow.parquet.read_table(p)"), ("arrow", "pyarrow.ipc.open_file(p).read_all()")]
    {
        let path = dir.path().join(format!("dump.{format}"));
        let out = engram()
            .args(["dump", "--format", format, "--out"])
            .arg(&path)
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .expect("runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let script = format!(
            "import json, sys, pyarrow, pyarrow.parquet, pyarrow.ipc\n\
             p = sys.argv[1]\n\
             t = {read}\n\
             print(json.dumps({{'rows': t.num_rows, 'columns': t.column_names,\n\
                 'header': t.schema.metadata[b'engram_dump_header'].decode(),\n\
                 'texts': [x for x in t.column('text').to_pylist() if x]}}))"
        );
        let read_back = python_with_pyarrow().args(["-c", &script]).arg(&path).output().expect("python3 runs");
        assert!(read_back.status.success(), "{}", String::from_utf8_lossy(&read_back.stderr));
        let got: serde_json::Value = serde_json::from_slice(&read_back.stdout).expect("json");
        assert_eq!(got["rows"].as_u64(), Some(rows as u64), "{format}: {got}");
        assert_eq!(got["columns"], serde_json::json!(columns), "{format}");
        assert_eq!(got["header"].as_str(), Some(header.as_str()), "{format}");
        assert!(got["texts"].as_array().is_some_and(|t| !t.is_empty()), "{format}: {got}");
    }
}

#[test]
fn a_backup_under_concurrent_writes_restores_to_a_consistent_state() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Engram::open(dir.path().join("live"), Options::default()).expect("open");
    let stop = Arc::new(AtomicBool::new(false));
    let heads: Arc<Vec<AtomicU64>> = Arc::new((0..2).map(|_| AtomicU64::new(0)).collect());
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let (db, stop, heads) = (db.clone(), Arc::clone(&stop), Arc::clone(&heads));
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let first = heads[w].load(Ordering::SeqCst) + 1;
                    let events =
                        (first..first + 3).map(|s| NewEvent::message(Role::User, format!("w{w}:{s}"))).collect();
                    let r =
                        db.append("default", "alice", &format!("w{w}"), events, Default::default()).expect("append");
                    heads[w].store(r.last_seq, Ordering::SeqCst);
                }
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(100));
    let acked: Vec<u64> = heads.iter().map(|h| h.load(Ordering::SeqCst)).collect();
    let backup = dir.path().join("backup");
    db.backup(&backup).expect("backup");
    std::thread::sleep(std::time::Duration::from_millis(50));
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().expect("writer");
    }
    let restored = dir.path().join("restored");
    let out = engram()
        .args(["restore", "--from-backup"])
        .arg(&backup)
        .arg("--data-dir")
        .arg(&restored)
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let copy = Engram::open(&restored, Options::default()).expect("open the restored store");
    for (w, acked) in acked.iter().enumerate() {
        let session = copy.get_session("default", "alice", &format!("w{w}")).expect("session");
        assert!(
            session.head_seq >= *acked,
            "w{w}: head {} below {acked} acknowledged before the backup",
            session.head_seq
        );
        let page = copy
            .history("default", "alice", &format!("w{w}"), &engram::HistoryQuery { limit: 1000, ..Default::default() })
            .expect("history");
        let seqs: Vec<u64> = page.events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=session.head_seq.min(1000)).collect::<Vec<_>>(), "w{w}: not a contiguous prefix");
        assert!(page.events.iter().all(|e| e.text.as_deref() == Some(&*format!("w{w}:{}", e.seq))));
    }
    assert!(copy.verify().expect("verify").is_ok());
}

/// A dump over HTTP that meets a damaged record after the first chunks went out ends the
/// transfer with an error: the client never mistakes it for a complete, shorter dump.
#[test]
fn a_dump_over_http_that_fails_midway_is_an_error_not_a_short_dump() {
    let dir = tempfile::tempdir().expect("tempdir");
    let turns: Vec<NewEvent> =
        (0..400).map(|i| NewEvent::message(Role::User, format!("turn {i} {}", "x".repeat(300)))).collect();
    {
        let db = Engram::open(dir.path(), Options::default()).expect("open");
        db.append("default", "alice", "chat", turns, Default::default()).expect("append");
    }
    // Damage the last event: it is dumped after ~130 KB of others.
    flip_last_byte(dir.path(), &engram_core::keys::event("default", "alice", "chat", 400));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let server = common::open_server(dir.path()).await;
        let client = engram_client::Remote::new(&server.url(), None).expect("client");
        let mut out = Vec::new();
        let failed = client.dump(&engram::DumpFilter::default(), &mut out).await.expect_err("a damaged record");
        // Whether the chunks before the damage arrived first is up to the connection; that
        // the transfer is an error, never a clean end, is not.
        assert_eq!(failed.code, engram_client::ErrorCode::Transport, "{failed:?} after {} bytes", out.len());
        server.shutdown().await.expect("shutdown");
    });
}
