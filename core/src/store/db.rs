//! The open sled database and its trees.

use std::fs::File;
use std::ops::Deref;
use std::path::Path;
use std::sync::RwLockReadGuard;
use std::time::{Duration, Instant};

use super::layout::{EVENTS, ITEMS, META, TEXT_STATES, USERS, USER_RECORDS, VIEW_STATES};
use super::{Durability, StoreError};

/// Every tree the store uses, in a fixed order (compaction copies these).
pub(crate) const ALL_TREES: [&str; 7] = [
    META,
    ITEMS,
    TEXT_STATES,
    USERS,
    USER_RECORDS,
    EVENTS,
    VIEW_STATES,
];

/// sled's page cache bound. Its default (1 GiB) would count against the app's
/// memory budget; the store's hot data (a user's events and view states, the
/// catalog's text states) is a few MiB.
const CACHE_BYTES: u64 = 32 << 20;

/// sled's background flush interval in `Immediate` mode, where every
/// acknowledged event is flushed explicitly; this only bounds how long
/// non-event writes (cached states) stay in memory.
const IMMEDIATE_BACKGROUND_FLUSH_MS: u64 = 500;

/// How long `open` waits for the database's file lock. sled runs some writes
/// on background threads that keep the database file (and so its lock) open
/// for a moment after the last handle is dropped: a store reopened right after
/// it was closed, in this process or a child, would otherwise fail spuriously.
const LOCK_WAIT: Duration = Duration::from_secs(2);

fn open_waiting_for_lock(root: &Path, config: &sled::Config) -> Result<sled::Db, StoreError> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match config.open() {
            Ok(db) => return Ok(db),
            Err(e) => match StoreError::db(root, "opening the database", e) {
                StoreError::Locked { .. } if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => return Err(other),
            },
        }
    }
}

pub(crate) struct Trees {
    pub(crate) db: sled::Db,
    /// sled's log file, for [`Trees::sync`].
    log_file: File,
    pub(crate) meta: sled::Tree,
    pub(crate) items: sled::Tree,
    pub(crate) text_states: sled::Tree,
    pub(crate) users: sled::Tree,
    pub(crate) user_records: sled::Tree,
    pub(crate) events: sled::Tree,
    pub(crate) view_states: sled::Tree,
}

impl Trees {
    /// Opens (or creates) the sled database in `dir`; `root` names the store in errors.
    pub(crate) fn open(
        root: &Path,
        dir: &Path,
        durability: &Durability,
    ) -> Result<Self, StoreError> {
        let flush_ms = match durability {
            Durability::Immediate => IMMEDIATE_BACKGROUND_FLUSH_MS,
            Durability::Batched { flush_every_ms } => (*flush_every_ms).max(1),
        };
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_BYTES)
            .flush_every_ms(Some(flush_ms));
        let db = open_waiting_for_lock(root, &config)?;
        // sled names its log `db` inside its directory.
        let log_file = File::open(dir.join("db"))
            .map_err(|e| StoreError::io(root, "opening the database log for fsync", e))?;
        let open = |name: &str| {
            db.open_tree(name)
                .map_err(|e| StoreError::db(root, "opening a tree", e))
        };
        Ok(Trees {
            meta: open(META)?,
            items: open(ITEMS)?,
            text_states: open(TEXT_STATES)?,
            users: open(USERS)?,
            user_records: open(USER_RECORDS)?,
            events: open(EVENTS)?,
            view_states: open(VIEW_STATES)?,
            db,
            log_file,
        })
    }

    /// Makes every write so far durable, against power loss too. sled's own
    /// `flush` writes its buffers and, on Linux, waits with `sync_file_range`,
    /// which neither flushes the drive's write cache nor the file's metadata
    /// (sled leaves the real fsync to its background thread); so fsync the log
    /// ourselves (`F_FULLFSYNC` on Apple platforms, through std).
    pub(crate) fn sync(&self, root: &Path, action: &'static str) -> Result<(), StoreError> {
        self.db
            .flush()
            .map_err(|e| StoreError::db(root, action, e))?;
        self.log_file
            .sync_data()
            .map_err(|e| StoreError::io(root, "fsyncing the database log", e))
    }

    pub(crate) fn tree(&self, name: &str) -> &sled::Tree {
        match name {
            META => &self.meta,
            ITEMS => &self.items,
            TEXT_STATES => &self.text_states,
            USERS => &self.users,
            USER_RECORDS => &self.user_records,
            EVENTS => &self.events,
            VIEW_STATES => &self.view_states,
            other => unreachable!("unknown store tree {other}"),
        }
    }
}

/// A read guard on the open database. Operations hold it for their whole
/// duration, so `compact` (which takes the write side) never swaps the
/// database under a half-done operation.
pub(crate) struct TreesGuard<'a>(pub(crate) RwLockReadGuard<'a, Option<Trees>>);

impl Deref for TreesGuard<'_> {
    type Target = Trees;

    fn deref(&self) -> &Trees {
        // Constructed only after checking that the database is open.
        self.0.as_ref().expect("TreesGuard holds an open database")
    }
}
