use thiserror::Error;

/// Errors of the storage layer. Corruption is never the caller's fault; I/O errors are
/// reported as they came from the backend.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum StorageError {
    /// Bytes that were written are not the bytes read back (checksum, framing, decoding).
    #[error("corruption: {0}")]
    Corruption(String),
    /// The backend failed to read, write or sync.
    #[error("storage I/O error: {0}")]
    Io(String),
    /// The data directory is held by another process.
    #[error("data directory is in use by another process: {0}")]
    Locked(String),
    /// A read through [`crate::Store::cached_snapshot`] needed a file.
    #[error("not in memory: {0}")]
    NotCached(String),
}

#[cfg(feature = "rocksdb")]
impl From<rocksdb::Error> for StorageError {
    fn from(e: rocksdb::Error) -> Self {
        let message = e.to_string();
        match e.kind() {
            rocksdb::ErrorKind::Corruption => StorageError::Corruption(message),
            rocksdb::ErrorKind::IOError if message.contains("lock") => StorageError::Locked(message),
            rocksdb::ErrorKind::Incomplete => StorageError::NotCached(message),
            _ => StorageError::Io(message),
        }
    }
}
