//! The store layer's one error type. Every message names the store directory,
//! what failed, and what the caller (or the person holding the device) can do.

use std::path::PathBuf;

/// Everything that can go wrong in [`crate::store::Store`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The [`crate::store::StoreConfig`] itself is unusable.
    #[error("store at {path}: invalid configuration: {reason}")]
    InvalidConfig { path: PathBuf, reason: String },

    /// A caller passed a value the store cannot hold (an empty user id, ...).
    #[error("store at {path}: invalid input: {what}")]
    InvalidInput { path: PathBuf, what: String },

    /// A file-system operation outside sled failed (directory, keyring file).
    #[error(
        "store at {path}: {action} failed: {source}; check that the directory exists, \
         is writable and the disk is not full"
    )]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// sled reported an error (I/O inside the database, or its own corruption check).
    #[error(
        "store at {path}: the database failed while {action}: {source}; if this persists, \
         the database files may be damaged: restore a backup or delete the store directory"
    )]
    Db {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: sled::Error,
    },

    /// Another process (or another `Store` in this one) holds the database lock.
    #[error(
        "store at {path} is already open (its database file lock stayed taken for 2 s); close \
         the other handle, or share one Store through an Arc"
    )]
    Locked { path: PathBuf },

    /// The store was written by a newer build of l2rec.
    #[error(
        "store at {path} has schema version {found}, newer than version {supported} that this \
         build understands; update the app, or point it at a store written by this version"
    )]
    SchemaTooNew {
        path: PathBuf,
        found: u32,
        supported: u32,
    },

    /// The store is encrypted and no master key was given.
    #[error(
        "store at {path} was created encrypted; open it with the master key it was created \
         with (from the platform keystore)"
    )]
    KeyRequired { path: PathBuf },

    /// The master key does not match the key-check record written at creation.
    #[error(
        "store at {path}: the master key does not match the key this store was created with; \
         pass the original key from the platform keystore (without it the user data cannot be \
         read)"
    )]
    WrongKey { path: PathBuf },

    /// A master key was given for a store that was created in plaintext.
    #[error(
        "store at {path} was created without encryption but a master key was given; open it \
         without a key, or export its users into a new encrypted store"
    )]
    NotEncrypted { path: PathBuf },

    /// The encrypted store's keyring file (the wrapped per-user keys) is missing.
    #[error(
        "store at {path} is encrypted but its keyring file {keyring} is missing; without it no \
         user data can be read: restore the file from the same backup as the database, or \
         delete the store directory"
    )]
    KeyringMissing { path: PathBuf, keyring: PathBuf },

    /// A record failed authentication or decoding: tampering, or damaged files.
    #[error(
        "store at {path} is corrupt: {what}; the record cannot be trusted: forget the affected \
         user, or restore the store from a backup"
    )]
    Corrupt { path: PathBuf, what: String },

    /// One user's records failed their checksum or authentication, or do not
    /// decode: only this user's reads fail.
    #[error(
        "store at {path}: the records of user `{user}` are damaged: {what}; nothing was \
         deleted and other users are unaffected: forget this user (forget_user) to drop their \
         records and start them afresh, or restore the store from a backup"
    )]
    UserDamaged {
        path: PathBuf,
        user: String,
        what: String,
    },

    /// The store was left closed by a compaction that could not reopen it.
    #[error(
        "store at {path} is closed because an earlier compaction failed to reopen it; open a \
         new Store on the same path"
    )]
    Closed { path: PathBuf },
}

impl StoreError {
    /// Maps a sled error, recognising sled's "could not acquire lock" I/O error
    /// so callers can tell "open elsewhere" apart from a broken database.
    pub(crate) fn db(path: &std::path::Path, action: &'static str, source: sled::Error) -> Self {
        if let sled::Error::Io(io) = &source {
            if io.to_string().contains("could not acquire lock") {
                return StoreError::Locked {
                    path: path.to_path_buf(),
                };
            }
        }
        StoreError::Db {
            path: path.to_path_buf(),
            action,
            source,
        }
    }

    pub(crate) fn io(path: &std::path::Path, action: &'static str, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.to_path_buf(),
            action,
            source,
        }
    }

    pub(crate) fn corrupt(path: &std::path::Path, what: impl Into<String>) -> Self {
        StoreError::Corrupt {
            path: path.to_path_buf(),
            what: what.into(),
        }
    }
}
