//! The on-device store: catalog, users, events and cached states on sled, with
//! optional encryption at rest and crypto-shredding (issue 4, items 1, 2, 4).
//!
//! # Layout on disk
//! A store is a directory holding `sled/` (the database, see `layout` for its
//! trees), `l2rec-store.json` (the marker: a store was created here),
//! `ledger.bin` (high-water marks of what was written, so that records sled
//! drops from a damaged log are counted: see `ledger`) and, for an encrypted
//! store, `keyring.json` (the wrapped per-user data keys, kept out of sled on
//! purpose: see `keyring`).
//!
//! # Encryption
//! With a master key, every per-user record (user record, events, view states,
//! and the user id itself) is sealed with XChaCha20-Poly1305 under that user's
//! own random data key; sled keys carry only an HMAC tag of the user id. The
//! catalog (items, text states) is not personal and stays plaintext.
//! `forget_user` deletes the user's wrapped key from the keyring file first
//! (atomic rewrite), then the records: sled may keep the deleted ciphertext in
//! its log segments for a while, but no copy of the key to open it exists in the
//! store's files any more. Without a master key the store is plaintext, logs a
//! warning at open, and `forget_user` deletes records whose bytes sled may keep
//! until it rewrites the segment; [`Store::compact`] rewrites the whole
//! database and drops them.
//!
//! # Durability
//! [`Durability::Immediate`]: writes of user data (`append_event`, `put_user`,
//! `upsert_items`, `forget_user`) return only once on disk: sled's flush, then
//! an fsync of its log (sled's own flush only waits with `sync_file_range`,
//! which survives a process kill but not a power cut). Cached states
//! (`put_text_state`, `put_view_state`) are not flushed individually: they are
//! recomputable, and the background flush writes them within 500 ms.
//! Measured on the 2-core dev VM: `append_event` p50 0.4 ms; 100 SIGKILLs at
//! random points lost no acknowledged event (`tests/store_durability.rs`).
//!
//! [`Durability::Batched`]: writes return once in sled's memory and sled's
//! background thread flushes (and fsyncs) every `flush_every_ms`. A crash or
//! kill loses the writes since the last completed background flush: events,
//! user records and states alike, always the newest ones (what survives is a
//! gap-free prefix of each user's log) and the store still opens cleanly. At
//! an app's event rate that is at most about `flush_every_ms`; under a
//! sustained burst (tens of thousands of writes a second) the flush falls
//! behind its interval and the window stretches (measured: events up to
//! ~0.45 s old lost with a 50 ms interval at ~20k events/s). Call
//! [`Store::flush`] where a write must be durable. `append_event` p50 15 us.
//! `forget_user` is always on disk before it returns, in both modes.
//!
//! # Space
//! sled is log-structured: rewrites leave old versions in its segments until
//! its cleaner or [`Store::compact`] reclaims them. Measured: the ml-100k
//! text-state cache (4.3 MB live) takes ~11 MB freshly written; 3000 view-state
//! rewrites on top grow it to 17-23 MB, and `compact` brings it back to 11 MB.

mod checksum;
mod crypto;
mod db;
mod error;
#[cfg(any(fuzzing, test))]
pub mod fuzzing;
mod integrity;
mod items;
mod keyring;
mod layout;
mod ledger;
mod maintenance;
mod schema;
mod users;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use checksum::{checked_frame, RecordCheck};
use crypto::{DataKey, MasterKeys};
use db::{Trees, TreesGuard};
use integrity::Damage;
use keyring::Keyring;
use layout::{UserTag, CHECKED, SEALED};
use ledger::Ledger;

pub use error::StoreError;
pub use integrity::{DamagedUser, IntegrityReport};
pub use maintenance::CompactReport;
pub use schema::SCHEMA_VERSION;

/// The sled database's directory inside a store directory.
pub const DATABASE_DIR: &str = "sled";
/// The keyring file's name inside an encrypted store's directory.
pub const KEYRING_FILE: &str = keyring::KEYRING_FILE;
/// The ledger file's name inside a store directory (see `ledger`).
pub const LEDGER_FILE: &str = ledger::LEDGER_FILE;

/// The bounded-retention default for [`StoreConfig::max_events_per_user`].
pub const DEFAULT_MAX_EVENTS_PER_USER: usize = 1000;

/// When writes reach the disk. See the module docs for what each mode can lose.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// User-data writes return only once flushed (fsync) to disk.
    #[default]
    Immediate,
    /// Writes return at once; a background thread flushes every `flush_every_ms`.
    /// A crash loses the writes since the last completed flush: about one
    /// interval at app rates, more under a sustained burst (module docs).
    Batched { flush_every_ms: u64 },
}

/// How to open a store.
#[derive(Clone)]
pub struct StoreConfig {
    /// The store directory (created if missing).
    pub path: PathBuf,
    /// The host's 32-byte master key (platform keystore). `None`: plaintext store.
    pub master_key: Option<[u8; 32]>,
    pub durability: Durability,
    /// Events kept per user; older ones are dropped on append. Must be > 0.
    pub max_events_per_user: usize,
}

impl StoreConfig {
    /// A plaintext, `Immediate`, default-retention store at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StoreConfig {
            path: path.into(),
            master_key: None,
            durability: Durability::Immediate,
            max_events_per_user: DEFAULT_MAX_EVENTS_PER_USER,
        }
    }
}

impl fmt::Debug for StoreConfig {
    // Never print the master key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreConfig")
            .field("path", &self.path)
            .field("master_key", &self.master_key.map(|_| "<redacted>"))
            .field("durability", &self.durability)
            .field("max_events_per_user", &self.max_events_per_user)
            .finish()
    }
}

/// One catalog item.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct StoredItem {
    pub id: String,
    pub text: String,
    /// The item's row in the catalog (and in the bundle's item tables).
    pub row: u32,
}

/// One user interaction.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Event {
    pub item_id: String,
    pub timestamp_ms: i64,
    /// "view", "click", ... free text.
    pub kind: String,
}

/// A user's personal parameters.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct UserRecord {
    pub phi: Vec<f32>,
    pub version: u64,
}

/// Everything stored about one user, for a data access request. Serializes
/// as the export JSON of docs/INTEGRATION-*.md.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct UserExport {
    pub user: String,
    pub encrypted_at_rest: bool,
    /// `None` until personalization saved a `phi`.
    pub record: Option<UserRecord>,
    pub events: Vec<ExportedEvent>,
    pub view_states: Vec<ExportedViewState>,
}

/// An event with its sequence number.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ExportedEvent {
    pub seq: u64,
    pub item_id: String,
    pub timestamp_ms: i64,
    pub kind: String,
}

/// A cached view state with its key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ExportedViewState {
    pub view: String,
    pub history_hash: String,
    pub bundle_id: String,
    pub state: Vec<f32>,
}

/// What a cached view state depends on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
pub struct ViewStateKey {
    pub view: String,
    pub history_hash: String,
    pub bundle_id: String,
}

/// How per-user records are protected.
enum Protection {
    Plaintext,
    Encrypted {
        master: MasterKeys,
        keyring: Mutex<Keyring>,
    },
}

/// How to frame one user's records: in the clear, or sealed under their key.
enum UserKey {
    Plain,
    Sealed(Arc<DataKey>),
}

/// Per-user write locks, striped: serializes sequence numbers and
/// create/forget of one user without a lock per user.
const USER_LOCK_STRIPES: usize = 64;

/// The store. `Send + Sync`: share one through an `Arc`.
pub struct Store {
    root: PathBuf,
    durability: Durability,
    max_events_per_user: usize,
    /// `None` only after a compaction that could not reopen the database.
    trees: RwLock<Option<Trees>>,
    protection: Protection,
    /// Checksums of every record that is not sealed.
    check: RecordCheck,
    /// What `open` found damaged, and what reads found since.
    damage: Mutex<Damage>,
    /// High-water marks of what was written, kept outside sled.
    ledger: Ledger,
    user_locks: Vec<Mutex<()>>,
}

impl Store {
    /// Opens the store at `config.path`, creating it if the directory holds none.
    ///
    /// Checks the schema version (migrating older stores, refusing newer ones),
    /// and the master key against the store's key-check record; sweeps what a
    /// crash left of forgotten users; then verifies every record (see
    /// [`Store::integrity`]: damage is reported, not deleted, and only the
    /// damaged user's reads fail). Waits up to 2 s for the database lock (a
    /// store dropped a moment ago may still hold it) before `Locked`.
    pub fn open(mut config: StoreConfig) -> Result<Store, StoreError> {
        let root = config.path.clone();
        let master = config.master_key.as_ref().map(MasterKeys::derive);
        if let Some(key) = config.master_key.as_mut() {
            key.zeroize();
        }
        validate(&config)?;
        std::fs::create_dir_all(&root)
            .map_err(|e| StoreError::io(&root, "creating the store directory", e))?;
        maintenance::recover_interrupted_compaction(&root)?;
        let trees = Trees::open(&root, &root.join(DATABASE_DIR), &config.durability)?;
        let prepared = schema::prepare(&root, &trees, master)?;
        let store = Store {
            root,
            durability: config.durability,
            max_events_per_user: config.max_events_per_user,
            trees: RwLock::new(Some(trees)),
            protection: prepared.protection,
            check: prepared.check,
            damage: Mutex::new(Damage::default()),
            ledger: Ledger::default(),
            user_locks: (0..USER_LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
        };
        let forgotten = store.sweep_orphans()?;
        store.check_integrity(&forgotten, prepared.ledger_expected)?;
        if !store.is_encrypted() {
            tracing::warn!(
                path = %store.root.display(),
                "store opened without a master key: user data is stored in plaintext"
            );
        }
        Ok(store)
    }

    /// Whether per-user data is sealed under per-user keys.
    pub fn is_encrypted(&self) -> bool {
        matches!(self.protection, Protection::Encrypted { .. })
    }

    /// The store directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Flushes everything written so far to disk, and the ledger.
    pub fn flush(&self) -> Result<(), StoreError> {
        let trees = self.trees()?;
        trees.sync(&self.root, "flushing to disk")?;
        self.write_ledger_if_dirty(&trees)
    }

    fn trees(&self) -> Result<TreesGuard<'_>, StoreError> {
        let guard = self.trees.read().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            return Err(StoreError::Closed {
                path: self.root.clone(),
            });
        }
        Ok(TreesGuard(guard))
    }

    /// Flushes if the durability mode promises that the write is on disk
    /// (and then the ledger, once a second at most).
    fn flush_if_immediate(&self, trees: &Trees) -> Result<(), StoreError> {
        if self.durability == Durability::Immediate {
            trees.sync(&self.root, "flushing to disk")?;
            self.write_ledger_if_due(trees)?;
        }
        Ok(())
    }

    fn tag(&self, user: &str) -> Result<UserTag, StoreError> {
        if user.is_empty() {
            return Err(self.invalid("the user id is empty"));
        }
        Ok(match &self.protection {
            Protection::Plaintext => crypto::plain_user_tag(user),
            Protection::Encrypted { master, .. } => master.user_tag(user),
        })
    }

    fn lock_user(&self, tag: &UserTag) -> MutexGuard<'_, ()> {
        let stripe = usize::from(tag[0]) % self.user_locks.len();
        // The guarded value is (), so a poisoned lock has nothing to repair.
        self.user_locks[stripe]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The key to read a user's records with; `None` when an encrypted store
    /// has no key for this user (never written, or forgotten).
    fn read_key(&self, tag: &UserTag) -> Result<Option<UserKey>, StoreError> {
        match &self.protection {
            Protection::Plaintext => Ok(Some(UserKey::Plain)),
            Protection::Encrypted { master, keyring } => {
                let mut keyring = keyring.lock().unwrap_or_else(|p| p.into_inner());
                Ok(keyring.get(master, tag)?.map(UserKey::Sealed))
            }
        }
    }

    /// The key to write a user's records with, creating it if needed.
    fn write_key(&self, tag: &UserTag) -> Result<UserKey, StoreError> {
        match &self.protection {
            Protection::Plaintext => Ok(UserKey::Plain),
            Protection::Encrypted { master, keyring } => {
                let mut keyring = keyring.lock().unwrap_or_else(|p| p.into_inner());
                Ok(UserKey::Sealed(keyring.get_or_create(master, tag)?))
            }
        }
    }

    /// Encodes a per-user value: a frame byte, then postcard, sealed under the
    /// user's key or followed by its checksum.
    fn frame<T: Serialize>(
        &self,
        key: &UserKey,
        tree: &str,
        record_key: &[u8],
        value: &T,
    ) -> Vec<u8> {
        let encoded = postcard::to_stdvec(value).expect("store values encode with postcard");
        match key {
            UserKey::Plain => self.checked(tree, record_key, &encoded),
            UserKey::Sealed(data_key) => sealed_frame(data_key, tree, record_key, &encoded),
        }
    }

    /// `CHECKED`, the bytes, and their checksum bound to (tree, key).
    fn checked(&self, tree: &str, record_key: &[u8], body: &[u8]) -> Vec<u8> {
        checked_frame(&self.check, tree, record_key, body)
    }

    /// Decodes a value made by [`Store::frame`]; `Err` says why it cannot be
    /// trusted (damaged, moved from another user or slot, wrong mode).
    fn open_frame<T: DeserializeOwned>(
        &self,
        key: &UserKey,
        tree: &str,
        record_key: &[u8],
        bytes: &[u8],
    ) -> Result<T, String> {
        decode_frame(&self.check, key, tree, record_key, bytes)
    }

    /// [`Store::open_frame`] for a record of `user`: damage is noted in the
    /// integrity report and named in the error, with the remedy.
    fn unframe<T: DeserializeOwned>(
        &self,
        key: &UserKey,
        user: &str,
        tree: &str,
        record_key: &[u8],
        bytes: &[u8],
    ) -> Result<T, StoreError> {
        self.open_frame(key, tree, record_key, bytes)
            .map_err(|why| {
                self.note_damaged_user(user, record_key);
                StoreError::UserDamaged {
                    path: self.root.clone(),
                    user: user.to_owned(),
                    what: format!("a record in tree `{tree}` {why}"),
                }
            })
    }

    /// Encodes a catalog value (checked, never sealed: not personal data).
    fn encode_catalog<T: Serialize>(&self, tree: &str, record_key: &[u8], value: &T) -> Vec<u8> {
        let encoded = postcard::to_stdvec(value).expect("store values encode with postcard");
        self.checked(tree, record_key, &encoded)
    }

    /// Decodes a value made by [`Store::encode_catalog`]; `Err` says why not.
    fn decode_catalog<T: DeserializeOwned>(
        &self,
        tree: &str,
        record_key: &[u8],
        bytes: &[u8],
    ) -> Result<T, String> {
        self.open_frame(&UserKey::Plain, tree, record_key, bytes)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // The ledger's last word for this session: what was written, synced.
        let Ok(trees) = self.trees() else { return };
        if let Err(e) = self.write_ledger_if_dirty(&trees) {
            tracing::warn!(path = %self.root.display(), "writing the ledger at close: {e}");
        }
    }
}

/// A framed value: [`SEALED`], then the bytes sealed under the user's key.
fn sealed_frame(data_key: &DataKey, tree: &str, record_key: &[u8], body: &[u8]) -> Vec<u8> {
    [&[SEALED][..], &data_key.seal(tree, record_key, body)].concat()
}

/// The one decoder of framed values (see `layout`).
fn decode_frame<T: DeserializeOwned>(
    check: &RecordCheck,
    key: &UserKey,
    tree: &str,
    record_key: &[u8],
    bytes: &[u8],
) -> Result<T, String> {
    let (&frame, body) = bytes.split_first().ok_or("is empty")?;
    let plain = match (key, frame) {
        (UserKey::Plain, CHECKED) => check
            .verify(tree, record_key, body)
            .ok_or("fails its checksum (damaged, or moved from another user or slot)")?
            .to_vec(),
        (UserKey::Sealed(data_key), SEALED) => data_key
            .open(tree, record_key, body)
            .ok_or("fails authentication (tampered, or moved from another user)")?,
        _ => return Err("has the wrong frame for this store's encryption mode".into()),
    };
    postcard::from_bytes(&plain).map_err(|e| format!("does not decode: {e}"))
}

fn validate(config: &StoreConfig) -> Result<(), StoreError> {
    let invalid = |reason: &str| StoreError::InvalidConfig {
        path: config.path.clone(),
        reason: reason.to_owned(),
    };
    if config.max_events_per_user == 0 {
        return Err(invalid("max_events_per_user must be at least 1"));
    }
    if config.path.as_os_str().is_empty() {
        return Err(invalid("the store path is empty"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn store_is_send_and_sync() {
        assert_send_sync::<Store>();
    }

    #[test]
    fn config_debug_hides_the_key() {
        let mut config = StoreConfig::new("/tmp/x");
        config.master_key = Some([0x42; 32]);
        let printed = format!("{config:?}");
        assert!(printed.contains("redacted"));
        assert!(!printed.contains("66"));
    }
}
