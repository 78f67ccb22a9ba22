//! Damage: what `open` finds when it verifies every record, and what reads
//! find later. Nothing damaged is deleted but cached states (they are
//! recomputed); a damaged user's reads fail with `UserDamaged`, naming them,
//! while every other user is served.

use std::collections::{BTreeMap, BTreeSet};

use serde::de::DeserializeOwned;

use super::db::Trees;
use super::layout::{
    tag_of, UserEntry, UserTag, ViewStateEntry, EVENTS, ITEMS, TEXT_STATES, USERS, USER_RECORDS,
    VIEW_STATES,
};
use super::{Event, Store, StoreError, StoredItem, UserRecord};

/// What the store found damaged since it was opened. Nothing in it was
/// deleted: the remedies are `forget_user` for a user, `upsert_items` for an
/// item (the catalog sync does it), or a backup.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IntegrityReport {
    /// Records `open` verified (checksum or authentication, then decoding).
    pub records_checked: u64,
    pub damaged_users: Vec<DamagedUser>,
    /// Ids of catalog items whose record is damaged; they read as absent
    /// until upserted again.
    pub damaged_items: Vec<String>,
    /// Damaged cached states (item text states, users' view states),
    /// dropped: they are recomputed on use.
    pub cached_states_dropped: u64,
}

/// A user with at least one damaged record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DamagedUser {
    /// The user id; `None` when the record naming the user is itself damaged.
    pub user: Option<String>,
    /// The first 8 bytes of the user's tag, hex (how the files key them).
    pub tag: String,
    pub damaged_records: u64,
}

impl IntegrityReport {
    pub fn is_clean(&self) -> bool {
        self.damaged_users.is_empty() && self.damaged_items.is_empty()
    }

    /// One line for a log: counts, and up to five names.
    pub fn summary(&self) -> String {
        let users: Vec<String> = self
            .damaged_users
            .iter()
            .take(5)
            .map(|u| match &u.user {
                Some(id) => format!("`{id}`"),
                None => format!("an unnamed user (tag {})", u.tag),
            })
            .collect();
        format!(
            "{} of {} records damaged: {} user(s) [{}], {} item(s), {} cached state(s) \
             dropped",
            self.damaged_users
                .iter()
                .map(|u| u.damaged_records)
                .sum::<u64>()
                + self.damaged_items.len() as u64,
            self.records_checked,
            self.damaged_users.len(),
            users.join(", "),
            self.damaged_items.len(),
            self.cached_states_dropped,
        )
    }
}

/// The store's running account of damage.
#[derive(Default)]
pub(crate) struct Damage {
    records_checked: u64,
    users: BTreeMap<UserTag, (Option<String>, u64)>,
    items: BTreeSet<String>,
    cached_states_dropped: u64,
}

impl Damage {
    fn user_record(&mut self, tag: UserTag) {
        self.users.entry(tag).or_insert((None, 0)).1 += 1;
    }

    fn report(&self) -> IntegrityReport {
        IntegrityReport {
            records_checked: self.records_checked,
            damaged_users: self
                .users
                .iter()
                .map(|(tag, (user, count))| DamagedUser {
                    user: user.clone(),
                    tag: hex::encode(&tag[..8]),
                    damaged_records: *count,
                })
                .collect(),
            damaged_items: self.items.iter().cloned().collect(),
            cached_states_dropped: self.cached_states_dropped,
        }
    }
}

impl Store {
    /// What was found damaged since open (see [`IntegrityReport`]).
    pub fn integrity(&self) -> IntegrityReport {
        self.damage_lock().report()
    }

    fn damage_lock(&self) -> std::sync::MutexGuard<'_, Damage> {
        // The account is only ever appended to; a panic mid-update loses a count.
        self.damage.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Verifies every record; runs at open, after the orphan sweep.
    pub(crate) fn check_integrity(&self) -> Result<(), StoreError> {
        let trees = self.trees()?;
        let mut damage = Damage::default();
        let names = self.check_user_entries(&trees, &mut damage)?;
        self.check_user_tree::<UserRecord>(&trees, USER_RECORDS, &mut damage)?;
        self.check_user_tree::<Event>(&trees, EVENTS, &mut damage)?;
        self.drop_damaged_view_states(&trees, &mut damage)?;
        for (tag, (user, _)) in damage.users.iter_mut() {
            *user = names.get(tag).cloned();
        }
        self.check_catalog(&trees, &mut damage)?;
        let report = damage.report();
        if !report.is_clean() {
            tracing::warn!(path = %self.root.display(), "store damage found at open: {}", report.summary());
        }
        *self.damage_lock() = damage;
        Ok(())
    }

    /// The ids of users whose `users` entry verifies; counts the others.
    fn check_user_entries(
        &self,
        trees: &Trees,
        damage: &mut Damage,
    ) -> Result<BTreeMap<UserTag, String>, StoreError> {
        let mut names = BTreeMap::new();
        for entry in trees.users.iter() {
            let (record_key, value) =
                entry.map_err(|e| StoreError::db(&self.root, "verifying users", e))?;
            let Some(tag) = tag_of(&record_key) else {
                return Err(StoreError::corrupt(
                    &self.root,
                    "a `users` key is malformed",
                ));
            };
            // The orphan sweep before this made every listed user live.
            let Some(key) = self.read_key(&tag)? else {
                continue;
            };
            damage.records_checked += 1;
            match self.open_frame::<UserEntry>(&key, USERS, &record_key, &value) {
                Ok(entry) => {
                    names.insert(tag, entry.id);
                }
                Err(_) => damage.user_record(tag),
            }
        }
        Ok(names)
    }

    /// Counts the damaged records of a per-user data tree against their user.
    fn check_user_tree<T: DeserializeOwned>(
        &self,
        trees: &Trees,
        tree: &str,
        damage: &mut Damage,
    ) -> Result<(), StoreError> {
        for record_key in self.damaged_in_user_tree::<T>(trees, tree, damage)? {
            // `damaged_in_user_tree` only returns keys that start with a tag.
            if let Some(tag) = tag_of(&record_key) {
                damage.user_record(tag);
            }
        }
        Ok(())
    }

    /// View states are caches: damaged ones are dropped, not reported.
    fn drop_damaged_view_states(
        &self,
        trees: &Trees,
        damage: &mut Damage,
    ) -> Result<(), StoreError> {
        let damaged = self.damaged_in_user_tree::<ViewStateEntry>(trees, VIEW_STATES, damage)?;
        // No write at all on a clean open: an open should not touch the log.
        if damaged.is_empty() {
            return Ok(());
        }
        damage.cached_states_dropped += damaged.len() as u64;
        let mut dropped = sled::Batch::default();
        for record_key in damaged {
            dropped.remove(record_key);
        }
        trees
            .view_states
            .apply_batch(dropped)
            .map_err(|e| StoreError::db(&self.root, "dropping damaged view states", e))
    }

    /// The keys of a per-user tree's records that fail to open as `T`;
    /// counts every record checked.
    fn damaged_in_user_tree<T: DeserializeOwned>(
        &self,
        trees: &Trees,
        tree: &str,
        damage: &mut Damage,
    ) -> Result<Vec<sled::IVec>, StoreError> {
        let mut damaged = Vec::new();
        for entry in trees.tree(tree).iter() {
            let (record_key, value) =
                entry.map_err(|e| StoreError::db(&self.root, "verifying records", e))?;
            let Some(tag) = tag_of(&record_key) else {
                return Err(StoreError::corrupt(
                    &self.root,
                    format!("a key in tree `{tree}` is too short"),
                ));
            };
            let Some(key) = self.read_key(&tag)? else {
                continue;
            };
            damage.records_checked += 1;
            if self
                .open_frame::<T>(&key, tree, &record_key, &value)
                .is_err()
            {
                damaged.push(record_key);
            }
        }
        Ok(damaged)
    }

    /// Items are reported; damaged text states are dropped (caches).
    fn check_catalog(&self, trees: &Trees, damage: &mut Damage) -> Result<(), StoreError> {
        for entry in trees.items.iter() {
            let (id, value) =
                entry.map_err(|e| StoreError::db(&self.root, "verifying items", e))?;
            damage.records_checked += 1;
            if self
                .decode_catalog::<StoredItem>(ITEMS, &id, &value)
                .is_err()
            {
                damage
                    .items
                    .insert(String::from_utf8_lossy(&id).into_owned());
            }
        }
        let mut dropped = sled::Batch::default();
        let dropped_before = damage.cached_states_dropped;
        for entry in trees.text_states.iter() {
            let (key, value) =
                entry.map_err(|e| StoreError::db(&self.root, "verifying text states", e))?;
            damage.records_checked += 1;
            if self
                .decode_catalog::<Vec<f32>>(TEXT_STATES, &key, &value)
                .is_err()
            {
                damage.cached_states_dropped += 1;
                dropped.remove(key);
            }
        }
        if damage.cached_states_dropped == dropped_before {
            return Ok(());
        }
        trees
            .text_states
            .apply_batch(dropped)
            .map_err(|e| StoreError::db(&self.root, "dropping damaged text states", e))
    }

    /// A read found one of `user`'s records damaged.
    pub(crate) fn note_damaged_user(&self, user: &str, record_key: &[u8]) {
        if let Some(tag) = tag_of(record_key) {
            let mut damage = self.damage_lock();
            let entry = damage.users.entry(tag).or_insert((None, 1));
            entry.0 = Some(user.to_owned());
        }
    }

    /// A read found a catalog record damaged.
    pub(crate) fn note_damaged_item(&self, id: &str) {
        self.damage_lock().items.insert(id.to_owned());
    }

    pub(crate) fn note_cached_state_dropped(&self) {
        self.damage_lock().cached_states_dropped += 1;
    }

    /// The user was forgotten: their damage went with them.
    pub(crate) fn clear_damaged_user(&self, tag: &UserTag) {
        self.damage_lock().users.remove(tag);
    }

    /// Items were written again: their damage is repaired.
    pub(crate) fn clear_damaged_items<'a>(&self, ids: impl Iterator<Item = &'a str>) {
        let mut damage = self.damage_lock();
        for id in ids {
            damage.items.remove(id);
        }
    }
}
