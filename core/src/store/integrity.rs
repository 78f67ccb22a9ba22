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
    /// Catalog items the ledger counted that the database no longer holds
    /// (their ids are unknown: upsert the whole catalog again).
    pub items_lost: u64,
    /// Why the ledger itself could not be used (missing or damaged): losses
    /// before this open are then not counted. `None` when it was checked.
    pub ledger_problem: Option<String>,
}

/// A user with at least one damaged record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DamagedUser {
    /// The user id; `None` when the record naming the user is itself damaged.
    pub user: Option<String>,
    /// The first 8 bytes of the user's tag, hex (how the files key them).
    pub tag: String,
    pub damaged_records: u64,
    /// Records the ledger shows were written that the database lost (sled
    /// dropped the tail of its log): events, and the personal record.
    pub lost_records: u64,
}

impl IntegrityReport {
    pub fn is_clean(&self) -> bool {
        self.damaged_users.is_empty() && self.damaged_items.is_empty() && self.items_lost == 0
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
        let lost: u64 = self.damaged_users.iter().map(|u| u.lost_records).sum();
        let ledger = match &self.ledger_problem {
            Some(problem) => format!("; unchecked against the ledger: {problem}"),
            None => String::new(),
        };
        format!(
            "{} of {} records damaged, {} lost: {} user(s) [{}], {} item(s) damaged, {} \
             item(s) lost, {} cached state(s) dropped{ledger}",
            self.damaged_users
                .iter()
                .map(|u| u.damaged_records)
                .sum::<u64>()
                + self.damaged_items.len() as u64,
            self.records_checked,
            lost + self.items_lost,
            self.damaged_users.len(),
            users.join(", "),
            self.damaged_items.len(),
            self.items_lost,
            self.cached_states_dropped,
        )
    }
}

/// The store's running account of damage.
#[derive(Default)]
pub(crate) struct Damage {
    records_checked: u64,
    users: BTreeMap<UserTag, (Option<String>, u64)>,
    /// Users who lost records (per the ledger): id, count, what was lost.
    lost: BTreeMap<UserTag, (String, u64, String)>,
    items: BTreeSet<String>,
    cached_states_dropped: u64,
    pub(crate) items_lost: u64,
    pub(crate) ledger_problem: Option<String>,
}

impl Damage {
    fn user_record(&mut self, tag: UserTag) {
        self.users.entry(tag).or_insert((None, 0)).1 += 1;
    }

    pub(crate) fn has_damaged_records(&self, tag: &UserTag) -> bool {
        self.users.contains_key(tag)
    }

    pub(crate) fn user_lost(&mut self, tag: UserTag, user: &str, records: u64, what: String) {
        self.lost.insert(tag, (user.to_owned(), records, what));
    }

    fn report(&self) -> IntegrityReport {
        let tags: BTreeSet<&UserTag> = self.users.keys().chain(self.lost.keys()).collect();
        let damaged_users = tags
            .into_iter()
            .map(|tag| {
                let (named, damaged_records) = self.users.get(tag).cloned().unwrap_or((None, 0));
                let lost = self.lost.get(tag);
                DamagedUser {
                    user: named.or_else(|| lost.map(|(id, _, _)| id.clone())),
                    tag: hex::encode(&tag[..8]),
                    damaged_records,
                    lost_records: lost.map_or(0, |(_, n, _)| *n),
                }
            })
            .collect();
        IntegrityReport {
            records_checked: self.records_checked,
            damaged_users,
            damaged_items: self.items.iter().cloned().collect(),
            cached_states_dropped: self.cached_states_dropped,
            items_lost: self.items_lost,
            ledger_problem: self.ledger_problem.clone(),
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

    /// Verifies every record, then the database against the ledger; runs at
    /// open, after the orphan sweep (`forgotten`: the users it finished).
    pub(crate) fn check_integrity(
        &self,
        forgotten: &BTreeSet<UserTag>,
        ledger_expected: bool,
    ) -> Result<(), StoreError> {
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
        self.check_ledger(&trees, &mut damage, forgotten, ledger_expected)?;
        let report = damage.report();
        if !report.is_clean() || report.ledger_problem.is_some() {
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
        let mut damage = self.damage_lock();
        damage.users.remove(tag);
        damage.lost.remove(tag);
    }

    /// A user who lost records (per the ledger) is not served a truncated
    /// history as if it were whole: their reads fail until they are forgotten.
    pub(crate) fn refuse_if_lost(&self, tag: &UserTag, user: &str) -> Result<(), StoreError> {
        match self.damage_lock().lost.get(tag) {
            Some((_, _, what)) => Err(StoreError::UserDamaged {
                path: self.root.clone(),
                user: user.to_owned(),
                what: what.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Items were written again: their damage is repaired.
    pub(crate) fn clear_damaged_items<'a>(&self, ids: impl Iterator<Item = &'a str>) {
        let mut damage = self.damage_lock();
        for id in ids {
            damage.items.remove(id);
        }
    }
}
