//! Schema version, store creation, migration, and the master-key check.
//!
//! Versions:
//! - 0: pre-release layout: no `mode` record in `meta`, plaintext only.
//! - 1: `meta` records the mode (`plaintext` / `encrypted`) and, when
//!   encrypted, a key-check record; per-user keys live in `keyring.json`.
//! - 2: every record that is not sealed carries a keyed checksum (the
//!   catalog in both modes, per-user records in plaintext stores), under the
//!   random `check_key` in `meta`; the store directory holds a marker file,
//!   so a lost database is told apart from a new store.
//! - 3: the store keeps a ledger file beside the database (see `ledger`);
//!   the database itself is unchanged, so the step only stamps the version.
//!   From version 3 on, a missing ledger is reported.
//!
//! A store newer than [`SCHEMA_VERSION`] is refused (an older build must not
//! write a layout it does not understand). An older one is migrated one step
//! at a time; each step stamps its version and flushes, so a migration cut
//! short resumes where it stopped.

use std::path::Path;
use std::sync::Mutex;

use super::checksum::{checked_frame, RecordCheck};
use super::crypto::MasterKeys;
use super::db::{Trees, ALL_TREES};
use super::keyring::{write_atomically, Keyring};
use super::layout::{
    CHECKED, ITEMS, META, META_CHECK_KEY, META_KEY_CHECK, META_MODE, META_SCHEMA_VERSION,
    MODE_ENCRYPTED, MODE_PLAINTEXT, PER_USER_TREES, PLAIN, STORE_MARKER,
};
use super::{Protection, StoreError};

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = 3;

/// One migration step, applied to an open database.
type Migration = fn(&Path, &Trees) -> Result<(), StoreError>;

/// Migration steps: `MIGRATIONS[v]` turns a version-`v` store into `v + 1`.
const MIGRATIONS: [Migration; SCHEMA_VERSION as usize] = [v0_to_v1, v1_to_v2, v2_to_v3];

/// Version 3: the ledger is written by the open that follows.
fn v2_to_v3(_root: &Path, _trees: &Trees) -> Result<(), StoreError> {
    Ok(())
}

/// Version 0 stores were plaintext and had no mode record.
fn v0_to_v1(root: &Path, trees: &Trees) -> Result<(), StoreError> {
    let meta = &trees.meta;
    let has_mode = meta
        .contains_key(META_MODE)
        .map_err(|e| StoreError::db(root, "reading the store mode", e))?;
    if !has_mode {
        meta.insert(META_MODE, MODE_PLAINTEXT)
            .map_err(|e| StoreError::db(root, "migrating to schema 1", e))?;
    }
    Ok(())
}

/// Version 2: checksums on every record that is not sealed. Idempotent (a
/// migration cut short runs again): values that already verify are kept.
fn v1_to_v2(root: &Path, trees: &Trees) -> Result<(), StoreError> {
    let check = match read_check_key(root, trees)? {
        Some(check) => check,
        None => {
            let check = RecordCheck::generate();
            trees
                .meta
                .insert(META_CHECK_KEY, check.as_bytes())
                .map_err(|e| StoreError::db(root, "migrating to schema 2", e))?;
            check
        }
    };
    let mode = trees
        .meta
        .get(META_MODE)
        .map_err(|e| StoreError::db(root, "reading the store mode", e))?;
    if mode.as_deref() == Some(MODE_PLAINTEXT) {
        for tree in PER_USER_TREES {
            add_checksums(root, trees, &check, tree, |value| {
                value
                    .split_first()
                    .filter(|(f, _)| **f == PLAIN)
                    .map(|(_, b)| b)
            })?;
        }
    }
    // Schema 1 wrote catalog values as bare postcard.
    add_checksums(root, trees, &check, ITEMS, whole)?;
    // Cached states: cheaper recomputed than rewritten.
    trees
        .text_states
        .clear()
        .map_err(|e| StoreError::db(root, "migrating to schema 2", e))
}

/// Rewrites the values of `tree` that do not verify yet: `body_of` gives the
/// schema-1 body of a value, `None` to leave it (to the integrity check).
fn add_checksums(
    root: &Path,
    trees: &Trees,
    check: &RecordCheck,
    tree: &str,
    body_of: impl Fn(&[u8]) -> Option<&[u8]>,
) -> Result<(), StoreError> {
    let mut batch = sled::Batch::default();
    for entry in trees.tree(tree).iter() {
        let (key, value) = entry.map_err(|e| StoreError::db(root, "migrating to schema 2", e))?;
        let verified = value
            .split_first()
            .filter(|(frame, _)| **frame == CHECKED)
            .and_then(|(_, rest)| check.verify(tree, &key, rest));
        if verified.is_some() {
            continue;
        }
        if let Some(body) = body_of(&value) {
            batch.insert(key.clone(), checked_frame(check, tree, &key, body));
        }
    }
    // One atomic batch per tree.
    trees
        .tree(tree)
        .apply_batch(batch)
        .map_err(|e| StoreError::db(root, "migrating to schema 2", e))
}

/// A schema-1 catalog value is its body.
fn whole(value: &[u8]) -> Option<&[u8]> {
    Some(value)
}

fn read_check_key(root: &Path, trees: &Trees) -> Result<Option<RecordCheck>, StoreError> {
    let value = trees
        .meta
        .get(META_CHECK_KEY)
        .map_err(|e| StoreError::db(root, "reading the checksum key", e))?;
    value
        .map(|v| {
            RecordCheck::from_bytes(&v)
                .ok_or_else(|| StoreError::corrupt(root, "the checksum key record is malformed"))
        })
        .transpose()
}

/// What an open store is made of, once its schema is current.
pub(crate) struct Prepared {
    /// How per-user data is protected.
    pub(crate) protection: Protection,
    /// The store's checksum key.
    pub(crate) check: RecordCheck,
    /// The store was at schema 3 or later before this open, so it should
    /// have a ledger file.
    pub(crate) ledger_expected: bool,
}

/// Brings the store to the current schema (creating it if empty) and checks
/// the master key.
pub(crate) fn prepare(
    root: &Path,
    trees: &Trees,
    master: Option<MasterKeys>,
) -> Result<Prepared, StoreError> {
    let prepared = prepare_database(root, trees, master)?;
    write_marker(root)?;
    Ok(prepared)
}

/// The first schema version that keeps a ledger.
const LEDGER_SINCE: u32 = 3;

fn prepare_database(
    root: &Path,
    trees: &Trees,
    master: Option<MasterKeys>,
) -> Result<Prepared, StoreError> {
    let found = read_version(root, trees)?;
    let ledger_expected = found.is_some_and(|v| v >= LEDGER_SINCE);
    match found {
        None => {
            if !is_empty(root, trees)? {
                return Err(StoreError::corrupt(
                    root,
                    "the database holds data but no schema version record",
                ));
            }
            if root.join(STORE_MARKER).exists() {
                return Err(StoreError::corrupt(
                    root,
                    format!(
                        "its database ({}) is missing or empty, yet {STORE_MARKER} says a store \
                         was created here (nothing was written): restore the store directory \
                         from a backup, or delete it to start with an empty store",
                        root.join(super::DATABASE_DIR).display()
                    ),
                ));
            }
            let (protection, check) = create(root, trees, master)?;
            return Ok(Prepared {
                protection,
                check,
                ledger_expected,
            });
        }
        Some(found) if found > SCHEMA_VERSION => {
            return Err(StoreError::SchemaTooNew {
                path: root.to_path_buf(),
                found,
                supported: SCHEMA_VERSION,
            })
        }
        Some(found) if found < SCHEMA_VERSION => migrate(root, trees, found)?,
        Some(_) => {}
    }
    let check = read_check_key(root, trees)?
        .ok_or_else(|| StoreError::corrupt(root, "the checksum key record is missing"))?;
    Ok(Prepared {
        protection: protection(root, trees, master)?,
        check,
        ledger_expected,
    })
}

/// Marks the directory as holding a store (once its database exists).
fn write_marker(root: &Path) -> Result<(), StoreError> {
    if root.join(STORE_MARKER).exists() {
        return Ok(());
    }
    let marker = br#"{"format": "l2rec-store", "database": "sled"}"#;
    write_atomically(root, "l2rec-store.json.tmp", STORE_MARKER, marker)
}

/// The schema version, `None` for a database that was never initialized.
pub(crate) fn read_version(root: &Path, trees: &Trees) -> Result<Option<u32>, StoreError> {
    let value = trees
        .meta
        .get(META_SCHEMA_VERSION)
        .map_err(|e| StoreError::db(root, "reading the schema version", e))?;
    let Some(value) = value else { return Ok(None) };
    let bytes: [u8; 4] = value
        .as_ref()
        .try_into()
        .map_err(|_| StoreError::corrupt(root, "the schema version record is malformed"))?;
    Ok(Some(u32::from_be_bytes(bytes)))
}

fn is_empty(root: &Path, trees: &Trees) -> Result<bool, StoreError> {
    for name in ALL_TREES {
        // Meta records without a version can only come from a creation cut
        // short (they are written in one batch with it): only the other
        // trees tell a real store that lost its version record.
        if name == META {
            continue;
        }
        let first = trees
            .tree(name)
            .first()
            .map_err(|e| StoreError::db(root, "inspecting the database", e))?;
        if first.is_some() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Initializes a new store. The keyring file is written before the meta
/// records, and the meta records in one batch, so a kill at any point leaves
/// either a store that opens, or an uninitialized one that is created again.
fn create(
    root: &Path,
    trees: &Trees,
    master: Option<MasterKeys>,
) -> Result<(Protection, RecordCheck), StoreError> {
    let check = RecordCheck::generate();
    let mut batch = sled::Batch::default();
    batch.insert(META_SCHEMA_VERSION, &SCHEMA_VERSION.to_be_bytes());
    batch.insert(META_CHECK_KEY, check.as_bytes());
    let protection = match master {
        None => {
            batch.insert(META_MODE, MODE_PLAINTEXT);
            Protection::Plaintext
        }
        Some(master) => {
            let keyring = fresh_keyring(root)?;
            batch.insert(META_MODE, MODE_ENCRYPTED);
            batch.insert(META_KEY_CHECK, master.key_check());
            Protection::Encrypted {
                master,
                keyring: Mutex::new(keyring),
            }
        }
    };
    trees
        .meta
        .apply_batch(batch)
        .map_err(|e| StoreError::db(root, "initializing the store", e))?;
    trees.sync(root, "initializing the store")?;
    Ok((protection, check))
}

/// An empty keyring for a new encrypted store. A leftover keyring that holds
/// keys is never overwritten: it would mean a real store lost its database.
fn fresh_keyring(root: &Path) -> Result<Keyring, StoreError> {
    if let Some(existing) = Keyring::load(root)? {
        if !existing.is_empty() {
            return Err(StoreError::corrupt(
                root,
                "the database is empty but the keyring file holds user keys",
            ));
        }
    }
    Keyring::create(root)
}

fn migrate(root: &Path, trees: &Trees, from: u32) -> Result<(), StoreError> {
    for version in from..SCHEMA_VERSION {
        tracing::info!(path = %root.display(), from = version, to = version + 1, "migrating the store schema");
        MIGRATIONS[version as usize](root, trees)?;
        trees
            .meta
            .insert(META_SCHEMA_VERSION, &(version + 1).to_be_bytes())
            .map_err(|e| StoreError::db(root, "stamping the schema version", e))?;
        trees.sync(root, "stamping the schema version")?;
    }
    Ok(())
}

/// Matches the store's mode with the key given, verifying the key.
fn protection(
    root: &Path,
    trees: &Trees,
    master: Option<MasterKeys>,
) -> Result<Protection, StoreError> {
    let path = || root.to_path_buf();
    let meta = |key: &[u8]| {
        trees
            .meta
            .get(key)
            .map_err(|e| StoreError::db(root, "reading the store metadata", e))
    };
    let mode = meta(META_MODE)?
        .ok_or_else(|| StoreError::corrupt(root, "the store mode record is missing"))?;
    match (mode.as_ref(), master) {
        (MODE_PLAINTEXT, None) => Ok(Protection::Plaintext),
        (MODE_PLAINTEXT, Some(_)) => Err(StoreError::NotEncrypted { path: path() }),
        (MODE_ENCRYPTED, None) => Err(StoreError::KeyRequired { path: path() }),
        (MODE_ENCRYPTED, Some(master)) => {
            let check = meta(META_KEY_CHECK)?
                .ok_or_else(|| StoreError::corrupt(root, "the key-check record is missing"))?;
            if !master.verify_key_check(&check) {
                return Err(StoreError::WrongKey { path: path() });
            }
            let keyring = Keyring::load(root)?.ok_or_else(|| StoreError::KeyringMissing {
                path: path(),
                keyring: Keyring::path(root),
            })?;
            Ok(Protection::Encrypted {
                master,
                keyring: Mutex::new(keyring),
            })
        }
        (other, _) => Err(StoreError::corrupt(
            root,
            format!("unknown store mode {:?}", String::from_utf8_lossy(other)),
        )),
    }
}
