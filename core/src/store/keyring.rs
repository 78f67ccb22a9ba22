//! The keyring: every user's data key, wrapped by the master key, in one small
//! JSON file beside the sled database.
//!
//! Why not in sled: sled is log-structured, so a deleted value can stay in its
//! segment files until the segment is rewritten. A wrapped key that lingered
//! there would let anyone holding the master key decrypt a forgotten user's
//! lingering records. The keyring file is instead rewritten whole on every
//! change (temp file, fsync, rename, fsync of the directory), so after
//! `forget_user` the store's files hold no copy of that user's key. (Blocks the
//! file system freed may still hold old bytes on the raw device; reaching them
//! needs the raw device, not a copy of the store's files.)

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::crypto::{DataKey, MasterKeys, KEY_ID_LEN};
use super::layout::UserTag;
use super::StoreError;

pub(crate) const KEYRING_FILE: &str = "keyring.json";
const KEYRING_TMP: &str = "keyring.json.tmp";
const FORMAT: &str = "l2rec-store-keyring";
const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct KeyringFile {
    format: String,
    version: u32,
    /// hex(user tag) -> wrapped key.
    keys: BTreeMap<String, WrappedEntry>,
}

#[derive(Serialize, Deserialize, Clone)]
struct WrappedEntry {
    /// hex of the data key's public id.
    id: String,
    /// hex of `nonce || ciphertext` of the data key under the wrap key.
    wrapped: String,
}

struct Wrapped {
    id: [u8; KEY_ID_LEN],
    blob: Vec<u8>,
}

/// The in-memory keyring: wrapped entries (what the file holds) plus a cache of
/// unwrapped keys, so reads do not pay an unwrap each.
pub(crate) struct Keyring {
    root: PathBuf,
    entries: BTreeMap<UserTag, Wrapped>,
    unwrapped: HashMap<UserTag, Arc<DataKey>>,
}

impl Keyring {
    pub(crate) fn path(root: &Path) -> PathBuf {
        root.join(KEYRING_FILE)
    }

    /// A new, empty keyring, written to disk.
    pub(crate) fn create(root: &Path) -> Result<Self, StoreError> {
        let keyring = Keyring {
            root: root.to_path_buf(),
            entries: BTreeMap::new(),
            unwrapped: HashMap::new(),
        };
        keyring.persist()?;
        Ok(keyring)
    }

    /// Loads the keyring file; `Ok(None)` when it does not exist.
    pub(crate) fn load(root: &Path) -> Result<Option<Self>, StoreError> {
        let path = Self::path(root);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io(root, "reading the keyring file", e)),
        };
        Self::parse(root, &bytes).map(Some)
    }

    /// Parses the keyring file's bytes (of the store at `root`).
    pub(crate) fn parse(root: &Path, bytes: &[u8]) -> Result<Self, StoreError> {
        let path = Self::path(root);
        let file: KeyringFile = serde_json::from_slice(bytes)
            .map_err(|e| StoreError::corrupt(root, format!("keyring file {path:?}: {e}")))?;
        if file.format != FORMAT || file.version != VERSION {
            return Err(StoreError::corrupt(
                root,
                format!(
                    "keyring file {path:?} has format {:?} version {}, expected {FORMAT:?} {VERSION}",
                    file.format, file.version
                ),
            ));
        }
        let mut entries = BTreeMap::new();
        for (tag_hex, entry) in file.keys {
            let parsed = parse_entry(&tag_hex, &entry)
                .ok_or_else(|| StoreError::corrupt(root, format!("keyring entry {tag_hex:?}")))?;
            entries.insert(parsed.0, parsed.1);
        }
        Ok(Keyring {
            root: root.to_path_buf(),
            entries,
            unwrapped: HashMap::new(),
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn contains(&self, tag: &UserTag) -> bool {
        self.entries.contains_key(tag)
    }

    pub(crate) fn tags(&self) -> Vec<UserTag> {
        self.entries.keys().copied().collect()
    }

    /// The user's data key, `None` if the user has none (never written, or forgotten).
    pub(crate) fn get(
        &mut self,
        master: &MasterKeys,
        tag: &UserTag,
    ) -> Result<Option<Arc<DataKey>>, StoreError> {
        if let Some(key) = self.unwrapped.get(tag) {
            return Ok(Some(Arc::clone(key)));
        }
        let Some(entry) = self.entries.get(tag) else {
            return Ok(None);
        };
        // The master key was verified at open, so a failure here is damage.
        let key = master.unwrap(tag, entry.id, &entry.blob).ok_or_else(|| {
            StoreError::corrupt(
                &self.root,
                "a wrapped data key in the keyring file fails authentication",
            )
        })?;
        let key = Arc::new(key);
        self.unwrapped.insert(*tag, Arc::clone(&key));
        Ok(Some(key))
    }

    /// The user's data key, creating (and durably recording) one if needed.
    pub(crate) fn get_or_create(
        &mut self,
        master: &MasterKeys,
        tag: &UserTag,
    ) -> Result<Arc<DataKey>, StoreError> {
        if let Some(key) = self.get(master, tag)? {
            return Ok(key);
        }
        let key = DataKey::generate();
        let blob = master.wrap(tag, &key);
        self.entries.insert(*tag, Wrapped { id: key.id, blob });
        if let Err(e) = self.persist() {
            self.entries.remove(tag);
            return Err(e);
        }
        let key = Arc::new(key);
        self.unwrapped.insert(*tag, Arc::clone(&key));
        Ok(key)
    }

    /// Destroys the user's key: removed from memory and from the file, durably.
    /// Returns whether there was one.
    pub(crate) fn remove(&mut self, tags: &[UserTag]) -> Result<bool, StoreError> {
        let mut removed = Vec::new();
        for tag in tags {
            self.unwrapped.remove(tag);
            if let Some(entry) = self.entries.remove(tag) {
                removed.push((*tag, entry));
            }
        }
        if removed.is_empty() {
            return Ok(false);
        }
        if let Err(e) = self.persist() {
            // Keep memory and file in agreement; the caller reports the failure.
            self.entries.extend(removed);
            return Err(e);
        }
        Ok(true)
    }

    /// Writes the whole keyring atomically: a crash leaves the old or the new
    /// file, never a torn one, and the rename replaces the old file's inode so
    /// the old content is no longer part of the store's files.
    fn persist(&self) -> Result<(), StoreError> {
        let file = KeyringFile {
            format: FORMAT.to_owned(),
            version: VERSION,
            keys: self
                .entries
                .iter()
                .map(|(tag, w)| {
                    let entry = WrappedEntry {
                        id: hex::encode(w.id),
                        wrapped: hex::encode(&w.blob),
                    };
                    (hex::encode(tag), entry)
                })
                .collect(),
        };
        let bytes = serde_json::to_vec_pretty(&file).expect("the keyring serializes to JSON");
        write_atomically(&self.root, KEYRING_TMP, KEYRING_FILE, &bytes)
    }
}

fn parse_entry(tag_hex: &str, entry: &WrappedEntry) -> Option<(UserTag, Wrapped)> {
    let tag: UserTag = hex::decode(tag_hex).ok()?.try_into().ok()?;
    let id: [u8; KEY_ID_LEN] = hex::decode(&entry.id).ok()?.try_into().ok()?;
    let blob = hex::decode(&entry.wrapped).ok()?;
    Some((tag, Wrapped { id, blob }))
}

/// temp file + fsync + rename + fsync(dir): the standard POSIX atomic replace.
pub(crate) fn write_atomically(
    dir: &Path,
    tmp_name: &str,
    name: &str,
    bytes: &[u8],
) -> Result<(), StoreError> {
    let tmp = dir.join(tmp_name);
    let mut file = File::create(&tmp)
        .map_err(|e| StoreError::io(dir, "creating a temp file (keyring, ledger or marker)", e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| StoreError::io(dir, "writing a temp file (keyring, ledger or marker)", e))?;
    drop(file);
    fs::rename(&tmp, dir.join(name))
        .map_err(|e| StoreError::io(dir, "replacing the keyring, ledger or marker file", e))?;
    sync_dir(dir)
}

/// Makes a rename in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(dir, "syncing the store directory", e))
}
