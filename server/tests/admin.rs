//! The admin subcommands of the `engram` binary, end to end on temporary data directories.

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
    {
        let store = RocksStore::open(dir.path(), &Default::default()).expect("raw open");
        let mut value = store.get(Space::Data, &key).expect("read").expect("event 2 exists");
        let last = value.len() - 1;
        value[last] ^= 0x01;
        let mut batch = Batch::new();
        batch.put(Space::Data, key.clone(), value);
        store.write(batch).expect("write");
        store.sync().expect("sync");
    }
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
