//! I/O fault injection on the files the indexes write themselves (the full-text index
//! directory and the vector snapshot), for tests of what a failing disk does.
//!
//! Installed only through [`IndexOptions::io_faults`](super::IndexOptions::io_faults):
//! without it no wrapper is in the path. Every write-side operation (open for writing, a
//! write, the final flush and sync of a file, an atomic replace, a rename, a directory
//! sync) counts one; the planned one fails with an I/O error, and with `sticky` every
//! later one too, like a disk that died.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tantivy::directory::error::{DeleteError, LockError, OpenReadError, OpenWriteError};
use tantivy::directory::{
    AntiCallToken, Directory, DirectoryLock, FileHandle, Lock, TerminatingWrite, WatchCallback, WatchHandle, WritePtr,
};

/// A kind of write-side file operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IoOp {
    Open,
    Write,
    /// Flush and sync a written file.
    Sync,
    AtomicWrite,
    Rename,
    SyncDir,
}

/// A shared plan of which file operation fails.
#[derive(Debug, Default)]
pub struct IoFaults {
    plan: parking_lot::Mutex<Plan>,
}

#[derive(Debug, Default)]
struct Plan {
    ops: u64,
    /// Only operations of this kind count towards `remaining` (`None`: every kind).
    kind: Option<IoOp>,
    /// The operation that brings this to 0 fails; 0: nothing is armed.
    remaining: u64,
    sticky: bool,
    tripped: Option<IoOp>,
}

impl IoFaults {
    pub fn new() -> Arc<IoFaults> {
        Arc::new(IoFaults::default())
    }

    /// Operations counted so far.
    pub fn ops(&self) -> u64 {
        self.plan.lock().ops
    }

    /// The `nth` operation from now (of `kind`, or of any kind) fails; with `sticky`, every
    /// operation after it fails too.
    pub fn fail(&self, kind: Option<IoOp>, nth: u64, sticky: bool) {
        let mut plan = self.plan.lock();
        plan.kind = kind;
        plan.remaining = nth.max(1);
        plan.sticky = sticky;
        plan.tripped = None;
    }

    /// Nothing fails from now on.
    pub fn heal(&self) {
        let mut plan = self.plan.lock();
        plan.remaining = 0;
        plan.sticky = false;
    }

    /// The kind of the operation that failed as planned, if one did.
    pub fn tripped(&self) -> Option<IoOp> {
        self.plan.lock().tripped
    }

    /// Counts one operation and fails it when the plan says so.
    pub(crate) fn check(&self, op: IoOp, path: &Path) -> io::Result<()> {
        let mut plan = self.plan.lock();
        plan.ops += 1;
        let fails = if plan.tripped.is_some() {
            plan.sticky
        } else if plan.remaining > 0 && plan.kind.is_none_or(|k| k == op) {
            plan.remaining -= 1;
            plan.remaining == 0
        } else {
            false
        };
        if !fails {
            return Ok(());
        }
        plan.tripped.get_or_insert(op);
        Err(io::Error::other(format!("injected {op:?} failure on {}", path.display())))
    }
}

/// Checks `op` against `faults`, when there are any.
pub(crate) fn check(faults: Option<&IoFaults>, op: IoOp, path: &Path) -> io::Result<()> {
    faults.map_or(Ok(()), |f| f.check(op, path))
}

/// A tantivy directory whose write-side operations consult an [`IoFaults`] plan. Lock
/// files are left alone: they guard the writer, they hold no data.
#[derive(Clone, Debug)]
pub(crate) struct FaultyDirectory {
    inner: Box<dyn Directory>,
    faults: Arc<IoFaults>,
}

impl FaultyDirectory {
    pub(crate) fn new(inner: Box<dyn Directory>, faults: Arc<IoFaults>) -> Self {
        FaultyDirectory { inner, faults }
    }

    fn check(&self, op: IoOp, path: &Path) -> io::Result<()> {
        if path.extension().is_some_and(|e| e == "lock") {
            return Ok(());
        }
        self.faults.check(op, path)
    }
}

impl Directory for FaultyDirectory {
    fn get_file_handle(&self, path: &Path) -> Result<Arc<dyn FileHandle>, OpenReadError> {
        self.inner.get_file_handle(path)
    }

    fn delete(&self, path: &Path) -> Result<(), DeleteError> {
        self.inner.delete(path)
    }

    fn exists(&self, path: &Path) -> Result<bool, OpenReadError> {
        self.inner.exists(path)
    }

    fn open_write(&self, path: &Path) -> Result<WritePtr, OpenWriteError> {
        self.check(IoOp::Open, path).map_err(|e| OpenWriteError::wrap_io_error(e, path.to_path_buf()))?;
        let inner = self.inner.open_write(path)?;
        let lock = path.extension().is_some_and(|e| e == "lock");
        let faults = (!lock).then(|| self.faults.clone());
        Ok(io::BufWriter::new(Box::new(FaultyWrite { inner, faults, path: path.to_path_buf() })))
    }

    fn atomic_read(&self, path: &Path) -> Result<Vec<u8>, OpenReadError> {
        self.inner.atomic_read(path)
    }

    fn atomic_write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.check(IoOp::AtomicWrite, path)?;
        self.inner.atomic_write(path, data)
    }

    fn sync_directory(&self) -> io::Result<()> {
        self.check(IoOp::SyncDir, Path::new("."))?;
        self.inner.sync_directory()
    }

    fn watch(&self, callback: WatchCallback) -> tantivy::Result<WatchHandle> {
        self.inner.watch(callback)
    }

    /// The wrapped directory's own locks (the memory-mapped one uses OS file locks, which a
    /// crashed process does not leave behind).
    fn acquire_lock(&self, lock: &Lock) -> Result<DirectoryLock, LockError> {
        self.inner.acquire_lock(lock)
    }
}

struct FaultyWrite {
    inner: WritePtr,
    faults: Option<Arc<IoFaults>>,
    path: PathBuf,
}

impl Write for FaultyWrite {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        check(self.faults.as_deref(), IoOp::Write, &self.path)?;
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl TerminatingWrite for FaultyWrite {
    fn terminate_ref(&mut self, token: AntiCallToken) -> io::Result<()> {
        check(self.faults.as_deref(), IoOp::Sync, &self.path)?;
        self.inner.terminate_ref(token)
    }
}
