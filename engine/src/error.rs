use engram_core::ValidationError;
use engram_storage::StorageError;
use thiserror::Error;

/// Errors of the `engram` library.
///
/// The caller's mistakes (`InvalidArgument`, `NotFound`, `AlreadyExists`, `HeadMismatch`,
/// `VersionMismatch`, `Conflict`) change nothing and can be corrected and retried. The
/// store's troubles (`Corruption`, `Io`, `Poisoned`, `Locked`, `UnsupportedFormat`) are
/// never the caller's fault.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Error {
    /// A field of the request is malformed or over a limit.
    #[error("invalid {field}: {message}")]
    InvalidArgument { field: String, message: String },
    #[error("{what} {id:?} not found")]
    NotFound { what: &'static str, id: String },
    #[error("{what} {id:?} already exists")]
    AlreadyExists { what: &'static str, id: String },
    /// An append's expected head is not the session's head.
    #[error("expected head {expected}, but the session head is {actual}")]
    HeadMismatch { expected: u64, actual: u64 },
    /// A state write's precondition failed (`None`: the document does not exist).
    #[error("state version mismatch: expected {expected:?}, found {actual:?}")]
    VersionMismatch { expected: Option<u64>, actual: Option<u64> },
    /// The request contradicts the stored state in another way (an idempotency key reused
    /// for a different request, deleting a session that has forks...).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A stored value or key failed its checksum or did not decode.
    #[error("corruption at key {key}: {reason}")]
    Corruption { key: String, reason: String },
    /// The storage backend failed.
    #[error("storage I/O error: {0}")]
    Io(String),
    /// A write or sync failed earlier: the handle refuses writes until reopened, so that
    /// nothing is acknowledged that may not be durable.
    #[error("store refuses writes after an earlier failure ({0}); reopen it")]
    Poisoned(String),
    /// Another process holds the data directory.
    #[error("data directory is in use: {0}")]
    Locked(String),
    #[error("data directory has format version {found}; this build reads version {supported}")]
    UnsupportedFormat { found: u32, supported: u32 },
    /// A read-your-writes search waited its limit for the indexes to reach `wanted`.
    #[error("the indexes have applied changes up to {indexed}, not yet {wanted}; retry")]
    IndexLag { wanted: u64, indexed: u64 },
    /// A derived index failed (it is rebuilt from storage on the next open).
    #[error("index error: {0}")]
    Index(String),
    /// Writing or syncing an index file failed: the indexes stopped applying changes until
    /// the store is reopened or reindexed. Writes are still acknowledged (storage holds
    /// them); searches answer from what the indexes held, but not read-your-writes ones.
    #[error("the indexes stopped after a file write failed ({0}); reopen or reindex")]
    IndexPoisoned(String),
}

impl Error {
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidArgument { field: field.into(), message: message.into() }
    }

    pub(crate) fn not_found(what: &'static str, id: impl Into<String>) -> Self {
        Error::NotFound { what, id: id.into() }
    }

    pub(crate) fn corruption(key: &[u8], reason: impl std::fmt::Display) -> Self {
        Error::Corruption { key: engram_core::keys::render(key), reason: reason.to_string() }
    }

    /// True for errors that are the caller's (bad input or a conflict with stored state).
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            Error::InvalidArgument { .. }
                | Error::NotFound { .. }
                | Error::AlreadyExists { .. }
                | Error::HeadMismatch { .. }
                | Error::VersionMismatch { .. }
                | Error::Conflict(_)
        )
    }
}

impl From<ValidationError> for Error {
    fn from(e: ValidationError) -> Self {
        Error::InvalidArgument { field: e.field, message: e.message }
    }
}

impl From<StorageError> for Error {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Corruption(reason) => Error::Corruption { key: "?".into(), reason },
            StorageError::Locked(m) => Error::Locked(m),
            other => Error::Io(other.to_string()),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for engram_core::api::ApiError {
    fn from(e: Error) -> Self {
        use engram_core::api::{ApiError, ErrorCode};
        let message = e.to_string();
        match e {
            Error::InvalidArgument { field, .. } => {
                ApiError::new(ErrorCode::InvalidArgument, message).with_field(field)
            }
            Error::NotFound { .. } => ApiError::new(ErrorCode::NotFound, message),
            Error::AlreadyExists { .. } => ApiError::new(ErrorCode::AlreadyExists, message),
            Error::HeadMismatch { .. } => ApiError::new(ErrorCode::HeadMismatch, message).with_field("expected_head"),
            Error::VersionMismatch { .. } => ApiError::new(ErrorCode::PreconditionFailed, message),
            Error::Conflict(_) => ApiError::new(ErrorCode::Conflict, message),
            Error::Corruption { .. } => ApiError::new(ErrorCode::Corruption, message),
            Error::Poisoned(_) | Error::Locked(_) | Error::IndexLag { .. } | Error::IndexPoisoned(_) => {
                ApiError::new(ErrorCode::Unavailable, message)
            }
            Error::Io(_) | Error::UnsupportedFormat { .. } | Error::Index(_) => {
                ApiError::new(ErrorCode::Internal, message)
            }
        }
    }
}
