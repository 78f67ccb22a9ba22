//! The ledger: high-water marks of what the store wrote, kept outside sled.
//!
//! sled checks each message of its log with a CRC, but when recovery meets a
//! damaged or cut-short message it drops that message and every one after
//! it, without a word: the records written last vanish, and no checksum
//! inside sled can see a record that is no longer there. The ledger is a
//! small file beside the database (`ledger.bin`) that records, for every
//! user, their id, the last event sequence number and the version of their
//! personal record, and the size of the catalog. `open` compares the database
//! with it: a user whose records fell below their marks is damaged (named,
//! with a count, their reads failing with `UserDamaged` until forgotten), and
//! missing catalog items are counted.
//!
//! The ledger never claims more than is on disk: it is a snapshot of the
//! marks taken *before* the database is synced, written after the sync. It
//! is written at every [`Store::flush`], by `forget_user` (without the user,
//! before any record is deleted, so a forget is never mistaken for a loss),
//! when the store is dropped, at open when it changed, and in `Immediate`
//! mode at most once a second after a write. A loss of records written after
//! the last ledger write goes unseen (in `Batched` mode those are the writes
//! a crash may lose anyway). Marks only rise: a user reported lost stays
//! reported at every open until forgotten.
//!
//! File: a format byte, then a frame as in `layout`: checked under the
//! store's checksum key in a plaintext store, sealed under a key derived from
//! the master key in an encrypted one (it names users).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::checksum::{checked_frame, RecordCheck};
use super::crypto::MasterKeys;
use super::db::Trees;
use super::integrity::Damage;
use super::keyring::write_atomically;
use super::layout::{UserEntry, UserTag, CHECKED, SEALED, USERS, USER_RECORDS};
use super::{Protection, Store, StoreError, UserRecord};

/// The ledger's file name inside the store directory.
pub(crate) const LEDGER_FILE: &str = "ledger.bin";
const LEDGER_TMP: &str = "ledger.bin.tmp";
/// The first byte of the file.
const FORMAT: u8 = 1;
/// What a plaintext ledger's checksum is bound to.
const CHECK_TREE: &str = "ledger";
const CHECK_KEY: &[u8] = b"ledger";
/// How often an `Immediate` store rewrites the ledger after writes, at most.
const WRITE_EVERY: Duration = Duration::from_secs(1);

/// The marks: what the store has written, per user and for the catalog.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Marks {
    pub(crate) users: BTreeMap<UserTag, UserMark>,
    pub(crate) catalog_items: u64,
}

/// One user's marks.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub(crate) struct UserMark {
    pub(crate) id: String,
    pub(crate) last_seq: Option<u64>,
    pub(crate) record_version: Option<u64>,
}

impl UserMark {
    fn new(id: &str) -> Self {
        UserMark {
            id: id.to_owned(),
            last_seq: None,
            record_version: None,
        }
    }

    /// Raises these marks to `other`'s where it is higher.
    fn raise(&mut self, other: &UserMark) {
        self.last_seq = self.last_seq.max(other.last_seq);
        self.record_version = self.record_version.max(other.record_version);
    }
}

/// What a user's records lack against their marks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Shortfall {
    pub(crate) events: u64,
    pub(crate) record: bool,
}

impl Shortfall {
    /// `now`: the user's marks as the database holds them (`None`: no trace).
    /// `check_record`: false when the record is damaged (reported already).
    pub(crate) fn between(
        mark: &UserMark,
        now: Option<&UserMark>,
        max_events: u64,
        check_record: bool,
    ) -> Shortfall {
        let now_seq = now.and_then(|n| n.last_seq);
        let events = match (mark.last_seq, now_seq) {
            // Retention keeps at most `max_events`, so no more can be lost.
            (Some(marked), None) => (marked + 1).min(max_events),
            (Some(marked), Some(held)) => marked.saturating_sub(held),
            (None, _) => 0,
        };
        let now_version = now.and_then(|n| n.record_version);
        Shortfall {
            events,
            record: check_record && mark.record_version > now_version,
        }
    }

    pub(crate) fn records(&self) -> u64 {
        self.events + u64::from(self.record)
    }

    pub(crate) fn describe(&self, mark: &UserMark) -> String {
        let mut lost = Vec::new();
        if self.events > 0 {
            let last = mark.last_seq.unwrap_or_default();
            lost.push(format!("{} event(s) up to seq {last}", self.events));
        }
        if self.record {
            let version = mark.record_version.unwrap_or_default();
            lost.push(format!("their personal record (version {version})"));
        }
        format!(
            "the database lost {} that the store's ledger shows were written (its log was \
             damaged or cut short, and sled dropped everything after the damage)",
            lost.join(" and ")
        )
    }
}

/// The marks in memory, and the writing of the file.
pub(crate) struct Ledger {
    marks: Mutex<Marks>,
    /// Held across snapshot, sync and write, so files land in snapshot order.
    written_at: Mutex<Instant>,
    /// Marks changed since the last snapshot.
    dirty: AtomicBool,
    /// The catalog changed since the last snapshot (counted at the next one).
    catalog_changed: AtomicBool,
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger {
            marks: Mutex::new(Marks::default()),
            written_at: Mutex::new(Instant::now()),
            dirty: AtomicBool::new(false),
            catalog_changed: AtomicBool::new(false),
        }
    }
}

impl Ledger {
    fn marks(&self) -> MutexGuard<'_, Marks> {
        // Marks are plain counters; a panic mid-update leaves them usable.
        self.marks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mark_user(&self, tag: &UserTag, user: &str, raise: impl FnOnce(&mut UserMark)) {
        let mut marks = self.marks();
        raise(
            marks
                .users
                .entry(*tag)
                .or_insert_with(|| UserMark::new(user)),
        );
        self.dirty.store(true, Ordering::Release);
    }
}

impl Store {
    /// Call after the event `seq` of `user` was written.
    pub(crate) fn mark_event(&self, tag: &UserTag, user: &str, seq: u64) {
        self.ledger.mark_user(tag, user, |m| {
            m.last_seq = m.last_seq.max(Some(seq));
        });
    }

    /// Call after `user`'s record of `version` was written.
    pub(crate) fn mark_record(&self, tag: &UserTag, user: &str, version: u64) {
        self.ledger.mark_user(tag, user, |m| {
            m.record_version = m.record_version.max(Some(version));
        });
    }

    /// Call after catalog items were written.
    pub(crate) fn mark_catalog_changed(&self) {
        self.ledger.catalog_changed.store(true, Ordering::Release);
        self.ledger.dirty.store(true, Ordering::Release);
    }

    /// Drops a user's marks (they are being forgotten).
    pub(crate) fn unmark_user(&self, tag: &UserTag) {
        self.ledger.marks().users.remove(tag);
        self.ledger.dirty.store(true, Ordering::Release);
    }

    /// Syncs the database, then writes the marks taken before the sync.
    pub(crate) fn write_ledger(&self, trees: &Trees) -> Result<(), StoreError> {
        let mut written_at = self
            .ledger
            .written_at
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        self.ledger.dirty.store(false, Ordering::Release);
        let snapshot = self.snapshot_marks(trees);
        let written = trees
            .sync(&self.root, "flushing before the ledger")
            .and_then(|()| {
                let bytes = encode(&snapshot, sealer(&self.protection), &self.check);
                write_atomically(&self.root, LEDGER_TMP, LEDGER_FILE, &bytes)
            });
        if written.is_err() {
            self.ledger.dirty.store(true, Ordering::Release);
        }
        *written_at = Instant::now();
        written
    }

    /// [`Store::write_ledger`] if any mark changed since the last write.
    pub(crate) fn write_ledger_if_dirty(&self, trees: &Trees) -> Result<(), StoreError> {
        if self.ledger.dirty.load(Ordering::Acquire) {
            self.write_ledger(trees)?;
        }
        Ok(())
    }

    /// After an `Immediate` write: rewrites the ledger once a second at most.
    pub(crate) fn write_ledger_if_due(&self, trees: &Trees) -> Result<(), StoreError> {
        let due = self
            .ledger
            .written_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
            >= WRITE_EVERY;
        if due {
            self.write_ledger_if_dirty(trees)?;
        }
        Ok(())
    }

    fn snapshot_marks(&self, trees: &Trees) -> Marks {
        let mut marks = self.ledger.marks();
        if self.ledger.catalog_changed.swap(false, Ordering::AcqRel) {
            // Items are never deleted, so the count only grows; after a loss
            // it stays at the old mark until the catalog is written again.
            marks.catalog_items = marks.catalog_items.max(trees.items.len() as u64);
        }
        marks.clone()
    }

    /// At open, after the record checks: compares the database with the
    /// ledger file, notes what was lost, and takes the higher of both marks.
    /// `forgotten`: users the orphan sweep just finished forgetting.
    /// `expected`: the store's schema keeps a ledger, so a missing file is news.
    pub(crate) fn check_ledger(
        &self,
        trees: &Trees,
        damage: &mut Damage,
        forgotten: &BTreeSet<UserTag>,
        expected: bool,
    ) -> Result<(), StoreError> {
        let held = self.marks_held(trees)?;
        let file = match read(&self.root, sealer(&self.protection), &self.check) {
            Ok(Some(marks)) => Some(marks),
            Ok(None) => {
                if expected {
                    damage.ledger_problem = Some(format!(
                        "{LEDGER_FILE} is missing, so records sled dropped before this open \
                         cannot be counted"
                    ));
                }
                None
            }
            Err(why) => {
                damage.ledger_problem = Some(format!("{LEDGER_FILE} {why}"));
                None
            }
        };
        let mut merged = held.clone();
        if let Some(file) = &file {
            for (tag, mark) in file.users.iter().filter(|(t, _)| !forgotten.contains(*t)) {
                let check_record = !damage.has_damaged_records(tag);
                let shortfall = Shortfall::between(
                    mark,
                    held.users.get(tag),
                    self.max_events_per_user as u64,
                    check_record,
                );
                if shortfall.records() > 0 {
                    damage.user_lost(
                        *tag,
                        &mark.id,
                        shortfall.records(),
                        shortfall.describe(mark),
                    );
                }
                merged
                    .users
                    .entry(*tag)
                    .or_insert_with(|| UserMark::new(&mark.id))
                    .raise(mark);
            }
            damage.items_lost = file.catalog_items.saturating_sub(held.catalog_items);
            merged.catalog_items = merged.catalog_items.max(file.catalog_items);
        }
        let changed = file.as_ref() != Some(&merged);
        *self.ledger.marks() = merged;
        if changed {
            self.ledger.dirty.store(true, Ordering::Release);
            self.write_ledger(trees)?;
        }
        Ok(())
    }

    /// The marks as the database holds them now.
    fn marks_held(&self, trees: &Trees) -> Result<Marks, StoreError> {
        let mut marks = Marks {
            users: BTreeMap::new(),
            catalog_items: trees.items.len() as u64,
        };
        for entry in trees.users.iter() {
            let (record_key, value) =
                entry.map_err(|e| StoreError::db(&self.root, "reading users", e))?;
            let Some(tag) = super::layout::tag_of(&record_key) else {
                continue;
            };
            let Some(key) = self.read_key(&tag)? else {
                continue;
            };
            // A damaged entry is in the report already; the ledger names them.
            let Ok(user) = self.open_frame::<UserEntry>(&key, USERS, &record_key, &value) else {
                continue;
            };
            let record = trees
                .user_records
                .get(tag)
                .map_err(|e| StoreError::db(&self.root, "reading a user record", e))?;
            let record_version = record
                .and_then(|v| {
                    self.open_frame::<UserRecord>(&key, USER_RECORDS, &tag, &v)
                        .ok()
                })
                .map(|r| r.version);
            let (_, last_seq) = self.seq_bounds(trees, &tag)?;
            marks.users.insert(
                tag,
                UserMark {
                    id: user.id,
                    last_seq,
                    record_version,
                },
            );
        }
        Ok(marks)
    }
}

/// The key that seals an encrypted store's ledger; `None` in plaintext.
fn sealer(protection: &Protection) -> Option<&MasterKeys> {
    match protection {
        Protection::Plaintext => None,
        Protection::Encrypted { master, .. } => Some(master),
    }
}

fn encode(marks: &Marks, master: Option<&MasterKeys>, check: &RecordCheck) -> Vec<u8> {
    let body = postcard::to_stdvec(marks).expect("the ledger encodes with postcard");
    let frame = match master {
        None => checked_frame(check, CHECK_TREE, CHECK_KEY, &body),
        Some(master) => [&[SEALED][..], &master.seal_ledger(&body)].concat(),
    };
    [&[FORMAT][..], &frame].concat()
}

/// The ledger file's marks; `Ok(None)` when there is no file, `Err` says
/// why the file cannot be trusted.
fn read(
    root: &Path,
    master: Option<&MasterKeys>,
    check: &RecordCheck,
) -> Result<Option<Marks>, String> {
    let bytes = match std::fs::read(root.join(LEDGER_FILE)) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot be read: {e}")),
    };
    decode(&bytes, master, check).map(Some)
}

pub(crate) fn decode(
    bytes: &[u8],
    master: Option<&MasterKeys>,
    check: &RecordCheck,
) -> Result<Marks, String> {
    let (&format, framed) = bytes.split_first().ok_or("is empty")?;
    if format != FORMAT {
        return Err(format!(
            "has an unknown format ({format}); a newer build wrote it?"
        ));
    }
    let (&frame, body) = framed.split_first().ok_or("is cut short")?;
    let plain = match (master, frame) {
        (None, CHECKED) => check
            .verify(CHECK_TREE, CHECK_KEY, body)
            .ok_or("fails its checksum (damaged, or from another store)")?
            .to_vec(),
        (Some(master), SEALED) => master
            .open_ledger(body)
            .ok_or("fails authentication (damaged, or from another store)")?,
        _ => return Err("has the wrong frame for this store's encryption mode".into()),
    };
    postcard::from_bytes(&plain).map_err(|e| format!("does not decode: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(last_seq: Option<u64>, record_version: Option<u64>) -> UserMark {
        UserMark {
            id: "ann".into(),
            last_seq,
            record_version,
        }
    }

    #[test]
    fn a_shortfall_counts_what_fell_below_the_marks() {
        let marked = mark(Some(9), Some(2));
        let held = mark(Some(6), Some(1));
        let s = Shortfall::between(&marked, Some(&held), 1000, true);
        assert_eq!((s.events, s.record, s.records()), (3, true, 4));
        assert!(s.describe(&marked).contains("3 event(s) up to seq 9"));
        // Nothing left of the user: every retained event is lost.
        let gone = Shortfall::between(&marked, None, 1000, true);
        assert_eq!(gone.events, 10);
        assert_eq!(
            Shortfall::between(&mark(Some(5000), None), None, 1000, true).events,
            1000
        );
        // Equal or higher holdings lose nothing; a damaged record is not re-counted.
        assert_eq!(
            Shortfall::between(&marked, Some(&marked), 1000, true).records(),
            0
        );
        assert_eq!(
            Shortfall::between(&marked, Some(&mark(Some(9), None)), 1000, false).records(),
            0
        );
    }

    #[test]
    fn the_file_round_trips_and_refuses_damage() {
        let check = RecordCheck::generate();
        let plain = None;
        let mut marks = Marks::default();
        marks.users.insert([7; 32], mark(Some(3), None));
        marks.catalog_items = 12;
        let bytes = encode(&marks, plain, &check);
        assert_eq!(decode(&bytes, plain, &check), Ok(marks.clone()));
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x20;
            assert!(decode(&damaged, plain, &check).is_err(), "byte {i}");
        }
        assert!(decode(&bytes[..bytes.len() - 1], plain, &check).is_err());
        assert!(decode(&bytes, plain, &RecordCheck::generate()).is_err());
    }

    #[test]
    fn an_encrypted_ledger_names_no_one_in_the_clear() {
        let check = RecordCheck::generate();
        let master = MasterKeys::derive(&[5; 32]);
        let sealed = Some(&master);
        let mut marks = Marks::default();
        marks.users.insert([7; 32], mark(Some(3), Some(1)));
        let bytes = encode(&marks, sealed, &check);
        assert!(!bytes.windows(3).any(|w| w == b"ann"));
        assert!(!bytes.windows(32).any(|w| w == [7; 32]));
        assert_eq!(decode(&bytes, sealed, &check), Ok(marks));
        let other = MasterKeys::derive(&[6; 32]);
        assert!(decode(&bytes, Some(&other), &check).is_err());
        assert!(decode(&bytes, None, &check).is_err());
    }
}
