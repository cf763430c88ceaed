//! The crate's error type and its mapping to openraft's `StorageError`.

use openraft::{ErrorSubject, ErrorVerb, StorageError, StorageIOError};

use crate::NodeId;

/// An error opening or operating the store.
///
/// The openraft trait methods report these as [`StorageError`] with a subject and verb; openraft
/// then stops the Raft node, since it cannot continue safely.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed.
    #[error("sled: {context}: {source}")]
    Sled {
        /// What was being done.
        context: &'static str,
        /// The sled error.
        #[source]
        source: sled::Error,
    },
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Persisted data is invalid: unknown format version, truncated or malformed record.
    #[error("invalid persisted data: {0}")]
    Corrupt(String),
    /// A value could not be encoded.
    #[error("cannot encode {what}: {reason}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// The in-memory store lock was poisoned by a panic in another thread.
    #[error("in-memory group store lock poisoned")]
    Poisoned,
    /// A file of the storage directory is damaged, missing, older than what the directory
    /// made durable, or unreadable: the node must not start on it (found by [`crate::open`]).
    #[error(
        "storage damaged: {}: {what}. pgw refuses to start on it, so that it never serves, votes \
         or acknowledges with less than it had. Runbook (docs/operations.md, \"Damaged \
         storage\"): on a member of a cluster, move the directory away, start the node with an \
         empty --storage.path and re-add it (`pgwctl member remove <id>`, then `pgwctl member \
         add <id> <host:port> --wait`); on a single node, start it on an empty --storage.path \
         and restore the latest backup (`pgwctl restore <file>`)",
        file.display()
    )]
    Damaged {
        /// The damaged file.
        file: std::path::PathBuf,
        /// What was found.
        what: String,
    },
    /// Another process holds the storage directory.
    #[error(
        "--storage.path {} is in use by another pgw process; stop it, or give this node its \
         own --storage.path",
        .0.display()
    )]
    InUse(std::path::PathBuf),
}

impl StoreError {
    pub(crate) fn sled(context: &'static str) -> impl FnOnce(sled::Error) -> StoreError {
        move |source| StoreError::Sled { context, source }
    }

    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
        let context = context.into();
        move |source| StoreError::Io { context, source }
    }

    /// Converts to openraft's error with the given subject and verb.
    pub(crate) fn storage(
        &self,
        subject: ErrorSubject<NodeId>,
        verb: ErrorVerb,
    ) -> StorageError<NodeId> {
        StorageIOError::new(subject, verb, self).into()
    }
}

/// Shorthands for mapping [`StoreError`] into [`StorageError`] at the trait boundary.
pub(crate) trait ResultExt<T> {
    fn sto(self, subject: ErrorSubject<NodeId>, verb: ErrorVerb)
    -> Result<T, StorageError<NodeId>>;
}

impl<T> ResultExt<T> for Result<T, StoreError> {
    fn sto(
        self,
        subject: ErrorSubject<NodeId>,
        verb: ErrorVerb,
    ) -> Result<T, StorageError<NodeId>> {
        self.map_err(|e| e.storage(subject, verb))
    }
}
