//! Housekeeping: sweeping records orphaned by a crash, compaction, and sizes.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use super::db::{Trees, ALL_TREES};
use super::keyring::{sync_dir, Keyring};
use super::layout::{next_tag, tag_of, UserTag, PER_USER_TREES};
use super::{Protection, Store, StoreError, DATABASE_DIR};

/// Where compaction builds the new database before swapping it in.
const COMPACT_DIR: &str = "sled.compact";
/// Where compaction parks the old database during the swap.
const OLD_DIR: &str = "sled.old";

/// What [`Store::compact`] achieved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompactReport {
    pub bytes_before: u64,
    pub bytes_after: u64,
}

impl Store {
    /// Bytes the store's files take (sled's files plus the keyring).
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        let _trees = self.trees()?;
        dir_size(&self.root).map_err(|e| StoreError::io(&self.root, "measuring the store", e))
    }

    /// Bytes of live data: every key and value in every tree, plus the keyring.
    pub fn live_bytes(&self) -> Result<u64, StoreError> {
        let trees = self.trees()?;
        let mut total = keyring_len(&self.root)?;
        for name in ALL_TREES {
            for entry in trees.tree(name).iter() {
                let (key, value) =
                    entry.map_err(|e| StoreError::db(&self.root, "measuring live data", e))?;
                total += (key.len() + value.len()) as u64;
            }
        }
        Ok(total)
    }

    /// Rewrites the database into fresh files holding only live data, then
    /// swaps them in. sled is log-structured: it grows with rewrites, and
    /// deleted values linger in old segments until then; compaction returns the
    /// space and (for plaintext stores) drops the bytes of forgotten users.
    /// Blocks every other store operation while it runs. Crash-safe: `open`
    /// finishes or rolls back an interrupted swap.
    pub fn compact(&self) -> Result<CompactReport, StoreError> {
        let mut slot = self.trees.write().unwrap_or_else(|p| p.into_inner());
        let Some(old) = slot.take() else {
            return Err(StoreError::Closed {
                path: self.root.clone(),
            });
        };
        let bytes_before = dir_size(&self.root)
            .map_err(|e| StoreError::io(&self.root, "measuring the store", e))?;
        let fresh_dir = self.root.join(COMPACT_DIR);
        match self.copy_into_fresh(&old, &fresh_dir) {
            Ok(()) => drop(old),
            Err(e) => {
                *slot = Some(old);
                let _ = fs::remove_dir_all(&fresh_dir);
                return Err(e);
            }
        }
        // Both databases are closed (flushed on drop); swap the directories.
        swap_in(&self.root)?;
        *slot = Some(Trees::open(
            &self.root,
            &self.root.join(DATABASE_DIR),
            &self.durability,
        )?);
        let bytes_after = dir_size(&self.root)
            .map_err(|e| StoreError::io(&self.root, "measuring the store", e))?;
        Ok(CompactReport {
            bytes_before,
            bytes_after,
        })
    }

    /// Copies every tree of `old` into a new database at `dir` and closes it.
    fn copy_into_fresh(&self, old: &Trees, dir: &Path) -> Result<(), StoreError> {
        if dir.exists() {
            fs::remove_dir_all(dir)
                .map_err(|e| StoreError::io(&self.root, "removing a stale compaction", e))?;
        }
        let fresh = Trees::open(&self.root, dir, &self.durability)?;
        for name in ALL_TREES {
            let mut batch = sled::Batch::default();
            for entry in old.tree(name).iter() {
                let (key, value) =
                    entry.map_err(|e| StoreError::db(&self.root, "reading for compaction", e))?;
                batch.insert(key, value);
            }
            fresh
                .tree(name)
                .apply_batch(batch)
                .map_err(|e| StoreError::db(&self.root, "writing the compacted copy", e))?;
        }
        fresh.sync(&self.root, "flushing the compacted copy")?;
        Ok(())
    }

    /// Finishes what a crash can leave behind, and refuses what only damage
    /// explains. Runs at open, before any other use.
    ///
    /// - A user with a forget intent (`forget_user` writes one before it
    ///   shreds and removes it when done) is forgotten completely.
    /// - A key without any record of its user (created just before a crash)
    ///   is dropped.
    /// - Records whose owner is not live (no `users` entry, or in an
    ///   encrypted store no key) and no forget intent: the keyring or the
    ///   database was damaged or replaced. Nothing is deleted; open fails with
    ///   `Corrupt`, saying how many users and what to do.
    ///
    /// Returns the users it finished forgetting.
    pub(crate) fn sweep_orphans(&self) -> Result<BTreeSet<UserTag>, StoreError> {
        let trees = self.trees()?;
        let listed = distinct_tags(&self.root, &trees.users)?;
        let mut owners = listed.clone();
        for name in PER_USER_TREES {
            owners.extend(distinct_tags(&self.root, trees.tree(name))?);
        }
        let intents = forget_intents(&self.root, &trees)?;
        let live: BTreeSet<UserTag> = match &self.protection {
            Protection::Plaintext => listed,
            Protection::Encrypted { keyring, .. } => {
                let mut keyring = keyring.lock().unwrap_or_else(|p| p.into_inner());
                let unused: Vec<UserTag> = keyring
                    .tags()
                    .into_iter()
                    .filter(|t| !owners.contains(t) || intents.contains(t))
                    .collect();
                keyring.remove(&unused)?;
                listed.into_iter().filter(|t| keyring.contains(t)).collect()
            }
        };
        let damaged = owners
            .iter()
            .filter(|t| !live.contains(*t) && !intents.contains(*t))
            .count();
        if damaged > 0 {
            let lost = match &self.protection {
                Protection::Plaintext => "a `users` entry",
                Protection::Encrypted { .. } => "a `users` entry or a key in the keyring",
            };
            return Err(StoreError::corrupt(
                &self.root,
                format!(
                    "{damaged} user(s) have records but lack {lost} (the keyring or the database \
                     was replaced, edited or damaged; nothing was deleted): restore the keyring \
                     and database that belong together, or delete the store"
                ),
            ));
        }
        for tag in &intents {
            self.delete_user_records(&trees, tag)?;
            trees
                .meta
                .remove(forget_intent_key(tag))
                .map_err(|e| StoreError::db(&self.root, "clearing a forget intent", e))?;
        }
        if !intents.is_empty() {
            tracing::info!(path = %self.root.display(), users = intents.len(), "finished forgetting users");
            trees.sync(&self.root, "flushing the sweep")?;
        }
        Ok(intents)
    }
}

/// The `meta` key that records a forget in progress for `tag`.
pub(crate) fn forget_intent_key(tag: &UserTag) -> Vec<u8> {
    [FORGET_INTENT_PREFIX, tag.as_slice()].concat()
}

const FORGET_INTENT_PREFIX: &[u8] = b"forgetting/";

/// Users with a forget intent.
fn forget_intents(root: &Path, trees: &Trees) -> Result<BTreeSet<UserTag>, StoreError> {
    let mut tags = BTreeSet::new();
    for entry in trees.meta.scan_prefix(FORGET_INTENT_PREFIX) {
        let (key, _) = entry.map_err(|e| StoreError::db(root, "listing forget intents", e))?;
        let tag = key[FORGET_INTENT_PREFIX.len()..]
            .try_into()
            .map_err(|_| StoreError::corrupt(root, "a forget intent has a malformed user tag"))?;
        tags.insert(tag);
    }
    Ok(tags)
}

/// The user tags present in a per-user tree: one seek per user, not one step
/// per record.
fn distinct_tags(root: &Path, tree: &sled::Tree) -> Result<BTreeSet<UserTag>, StoreError> {
    let mut tags = BTreeSet::new();
    let mut from: Vec<u8> = Vec::new();
    loop {
        let Some(entry) = tree.range(from.as_slice()..).next() else {
            return Ok(tags);
        };
        let (key, _) = entry.map_err(|e| StoreError::db(root, "listing users", e))?;
        let tag =
            tag_of(&key).ok_or_else(|| StoreError::corrupt(root, "a per-user key is too short"))?;
        tags.insert(tag);
        match next_tag(&tag) {
            Some(next) => from = next.to_vec(),
            None => return Ok(tags),
        }
    }
}

/// Finishes or rolls back a compaction swap that a crash interrupted.
pub(crate) fn recover_interrupted_compaction(root: &Path) -> Result<(), StoreError> {
    let (live, old, fresh) = (
        root.join(DATABASE_DIR),
        root.join(OLD_DIR),
        root.join(COMPACT_DIR),
    );
    let io = |action, e| StoreError::io(root, action, e);
    if old.exists() {
        if live.exists() {
            // The swap completed; only the old copy's removal was cut short.
            fs::remove_dir_all(&old).map_err(|e| io("removing the pre-compaction database", e))?;
        } else {
            // Cut short between the two renames: keep the old database.
            fs::rename(&old, &live).map_err(|e| io("restoring the pre-compaction database", e))?;
            sync_dir(root)?;
        }
    }
    if fresh.exists() {
        fs::remove_dir_all(&fresh).map_err(|e| io("removing an unfinished compaction", e))?;
    }
    Ok(())
}

/// live -> old, fresh -> live, each rename made durable, then old removed.
fn swap_in(root: &Path) -> Result<(), StoreError> {
    let (live, old, fresh) = (
        root.join(DATABASE_DIR),
        root.join(OLD_DIR),
        root.join(COMPACT_DIR),
    );
    let io = |action, e| StoreError::io(root, action, e);
    fs::rename(&live, &old).map_err(|e| io("moving the old database aside", e))?;
    sync_dir(root)?;
    fs::rename(&fresh, &live).map_err(|e| io("moving the compacted database in", e))?;
    sync_dir(root)?;
    fs::remove_dir_all(&old).map_err(|e| io("removing the old database", e))
}

fn keyring_len(root: &Path) -> Result<u64, StoreError> {
    match fs::metadata(Keyring::path(root)) {
        Ok(meta) => Ok(meta.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(StoreError::io(root, "measuring the keyring", e)),
    }
}

fn dir_size(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}
