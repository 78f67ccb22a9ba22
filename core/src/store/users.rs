//! Per-user data: the user record, the event log, cached view states, and
//! forget / export.

use super::db::Trees;
use super::layout::{
    event_key, event_seq, view_state_key, UserEntry, UserTag, ViewStateEntry, EVENTS,
    PER_USER_TREES, USERS, USER_RECORDS, VIEW_STATES,
};
use super::maintenance::forget_intent_key;
use super::{
    Event, ExportedEvent, ExportedViewState, Protection, Store, StoreError, UserExport, UserKey,
    UserRecord, ViewStateKey,
};

impl Store {
    pub fn user(&self, user: &str) -> Result<Option<UserRecord>, StoreError> {
        let tag = self.tag(user)?;
        let trees = self.trees()?;
        let Some(key) = self.read_key(&tag)? else {
            return Ok(None);
        };
        self.refuse_if_lost(&tag, user)?;
        let value = trees
            .user_records
            .get(tag)
            .map_err(|e| StoreError::db(&self.root, "reading a user record", e))?;
        value
            .map(|v| self.unframe(&key, user, USER_RECORDS, &tag, &v))
            .transpose()
    }

    pub fn put_user(&self, user: &str, record: &UserRecord) -> Result<(), StoreError> {
        let tag = self.tag(user)?;
        let trees = self.trees()?;
        {
            let _lock = self.lock_user(&tag);
            let key = self.ensure_user(&trees, &tag, user)?;
            let value = self.frame(&key, USER_RECORDS, &tag, record);
            trees
                .user_records
                .insert(tag, value)
                .map_err(|e| StoreError::db(&self.root, "writing a user record", e))?;
            self.mark_record(&tag, user, record.version);
        }
        self.flush_if_immediate(&trees)
    }

    /// Appends an event to the user's log and returns its sequence number
    /// (0 for a user's first event, then +1 each). Beyond
    /// `max_events_per_user`, the oldest events are dropped in the same atomic
    /// batch. In `Immediate` mode, returns only once the event is on disk.
    pub fn append_event(&self, user: &str, event: &Event) -> Result<u64, StoreError> {
        let tag = self.tag(user)?;
        let trees = self.trees()?;
        let seq = {
            let _lock = self.lock_user(&tag);
            let key = self.ensure_user(&trees, &tag, user)?;
            let seq = self.append_locked(&trees, &tag, &key, event)?;
            self.mark_event(&tag, user, seq);
            seq
        };
        // Flushed outside the user lock: sled's flush covers every write made
        // before it, and concurrent appenders share one fsync.
        self.flush_if_immediate(&trees)?;
        Ok(seq)
    }

    fn append_locked(
        &self,
        trees: &Trees,
        tag: &UserTag,
        key: &UserKey,
        event: &Event,
    ) -> Result<u64, StoreError> {
        let (first, last) = self.seq_bounds(trees, tag)?;
        let seq = last.map_or(0, |last| last + 1);
        let record_key = event_key(tag, seq);
        let mut batch = sled::Batch::default();
        batch.insert(
            record_key.as_slice(),
            self.frame(key, EVENTS, &record_key, event),
        );
        // Retention: events are contiguous in seq (only the oldest are ever
        // dropped), so the count after this append is seq - first + 1.
        let keep_from = (seq + 1).saturating_sub(self.max_events_per_user as u64);
        let first = first.unwrap_or(seq);
        if keep_from > first {
            let range = event_key(tag, first)..event_key(tag, keep_from);
            for old in trees.events.range(range) {
                let (old_key, _) =
                    old.map_err(|e| StoreError::db(&self.root, "reading events", e))?;
                batch.remove(old_key);
            }
        }
        trees
            .events
            .apply_batch(batch)
            .map_err(|e| StoreError::db(&self.root, "appending an event", e))?;
        Ok(seq)
    }

    /// The first and last sequence numbers in the user's log.
    pub(crate) fn seq_bounds(
        &self,
        trees: &Trees,
        tag: &UserTag,
    ) -> Result<(Option<u64>, Option<u64>), StoreError> {
        let seq_at = |entry: Option<sled::Result<sled::IVec>>| -> Result<Option<u64>, StoreError> {
            let Some(entry) = entry else { return Ok(None) };
            let key = entry.map_err(|e| StoreError::db(&self.root, "reading events", e))?;
            event_seq(&key)
                .map(Some)
                .ok_or_else(|| StoreError::corrupt(&self.root, "an event key is malformed"))
        };
        let first = seq_at(trees.events.scan_prefix(tag).keys().next())?;
        let last = seq_at(trees.events.scan_prefix(tag).keys().next_back())?;
        Ok((first, last))
    }

    /// The user's retained events, oldest first.
    pub fn events(&self, user: &str) -> Result<Vec<Event>, StoreError> {
        Ok(self
            .events_with_seq(user)?
            .into_iter()
            .map(|(_, event)| event)
            .collect())
    }

    fn events_with_seq(&self, user: &str) -> Result<Vec<(u64, Event)>, StoreError> {
        let tag = self.tag(user)?;
        let trees = self.trees()?;
        let Some(key) = self.read_key(&tag)? else {
            return Ok(Vec::new());
        };
        self.refuse_if_lost(&tag, user)?;
        let mut events = Vec::new();
        for entry in trees.events.scan_prefix(tag) {
            let (record_key, value) =
                entry.map_err(|e| StoreError::db(&self.root, "reading events", e))?;
            let seq = event_seq(&record_key)
                .ok_or_else(|| StoreError::corrupt(&self.root, "an event key is malformed"))?;
            events.push((seq, self.unframe(&key, user, EVENTS, &record_key, &value)?));
        }
        Ok(events)
    }

    /// Caches a view state. A cache: not flushed individually in `Immediate` mode.
    pub fn put_view_state(
        &self,
        user: &str,
        key: &ViewStateKey,
        state: &[f32],
    ) -> Result<(), StoreError> {
        let tag = self.tag(user)?;
        let trees = self.trees()?;
        let _lock = self.lock_user(&tag);
        let user_key = self.ensure_user(&trees, &tag, user)?;
        let record_key = view_state_key(&tag, key);
        let entry = ViewStateEntry {
            key: key.clone(),
            state: state.to_vec(),
        };
        let value = self.frame(&user_key, VIEW_STATES, &record_key, &entry);
        trees
            .view_states
            .insert(record_key, value)
            .map_err(|e| StoreError::db(&self.root, "writing a view state", e))?;
        Ok(())
    }

    pub fn view_state(
        &self,
        user: &str,
        key: &ViewStateKey,
    ) -> Result<Option<Vec<f32>>, StoreError> {
        let tag = self.tag(user)?;
        let trees = self.trees()?;
        let Some(user_key) = self.read_key(&tag)? else {
            return Ok(None);
        };
        let record_key = view_state_key(&tag, key);
        let Some(value) = trees
            .view_states
            .get(&record_key)
            .map_err(|e| StoreError::db(&self.root, "reading a view state", e))?
        else {
            return Ok(None);
        };
        let entry = match self.open_frame::<ViewStateEntry>(
            &user_key,
            VIEW_STATES,
            &record_key,
            &value,
        ) {
            Ok(entry) => entry,
            Err(why) => {
                // A cache: a miss, recomputed and written over.
                tracing::warn!(path = %self.root.display(), "a cached view state {why}; recomputing it");
                self.note_cached_state_dropped();
                return Ok(None);
            }
        };
        // The key is hashed in the sled key; the stored copy rules out collisions.
        Ok((entry.key == *key).then_some(entry.state))
    }

    /// Forgets a user: drops them from the ledger, destroys their data key
    /// (encrypted stores), then deletes every record, then flushes. Forgetting an unknown user is not an
    /// error. In an encrypted store, what sled keeps of the deleted records is
    /// ciphertext whose key no longer exists anywhere in the store's files. In
    /// a plaintext store sled may keep the deleted bytes in its log until the
    /// segment is rewritten: call [`Store::compact`] afterwards to drop them.
    pub fn forget_user(&self, user: &str) -> Result<(), StoreError> {
        let tag = self.tag(user)?;
        let trees = self.trees()?;
        let _lock = self.lock_user(&tag);
        // The intent first, durably: a crash below leaves records that `open`
        // then knows to delete (records without an owner and without an intent
        // are damage, and open refuses them).
        let intent = forget_intent_key(&tag);
        trees
            .meta
            .insert(intent.as_slice(), &[][..])
            .map_err(|e| StoreError::db(&self.root, "recording a forget", e))?;
        trees.sync(&self.root, "recording a forget")?;
        // The ledger without the user before any record goes, so that a
        // forget is never counted as a loss at the next open.
        self.unmark_user(&tag);
        self.write_ledger(&trees)?;
        // Shred next: once the key is gone, nothing left can be read.
        if let Protection::Encrypted { keyring, .. } = &self.protection {
            keyring
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&[tag])?;
        }
        self.delete_user_records(&trees, &tag)?;
        trees
            .meta
            .remove(intent)
            .map_err(|e| StoreError::db(&self.root, "clearing a forget intent", e))?;
        trees.sync(&self.root, "flushing a forget")?;
        self.clear_damaged_user(&tag);
        Ok(())
    }

    /// Deletes all records keyed by `tag`, the `users` entry first so that a
    /// crash midway leaves orphans that `open` sweeps, not a half user.
    pub(crate) fn delete_user_records(
        &self,
        trees: &Trees,
        tag: &UserTag,
    ) -> Result<(), StoreError> {
        for name in PER_USER_TREES {
            let tree = trees.tree(name);
            let mut batch = sled::Batch::default();
            for key in tree.scan_prefix(tag).keys() {
                batch.remove(key.map_err(|e| StoreError::db(&self.root, "listing records", e))?);
            }
            tree.apply_batch(batch)
                .map_err(|e| StoreError::db(&self.root, "deleting records", e))?;
        }
        Ok(())
    }

    /// Everything stored about the user (no record and empty lists for an
    /// unknown user).
    pub fn export_user(&self, user: &str) -> Result<UserExport, StoreError> {
        let events = self
            .events_with_seq(user)?
            .into_iter()
            .map(|(seq, e)| ExportedEvent {
                seq,
                item_id: e.item_id,
                timestamp_ms: e.timestamp_ms,
                kind: e.kind,
            })
            .collect();
        let view_states = self
            .view_state_entries(user)?
            .into_iter()
            .map(|v| ExportedViewState {
                view: v.key.view,
                history_hash: v.key.history_hash,
                bundle_id: v.key.bundle_id,
                state: v.state,
            })
            .collect();
        Ok(UserExport {
            user: user.to_owned(),
            encrypted_at_rest: self.is_encrypted(),
            record: self.user(user)?,
            events,
            view_states,
        })
    }

    fn view_state_entries(&self, user: &str) -> Result<Vec<ViewStateEntry>, StoreError> {
        let tag = self.tag(user)?;
        let trees = self.trees()?;
        let Some(key) = self.read_key(&tag)? else {
            return Ok(Vec::new());
        };
        let mut entries = Vec::new();
        for entry in trees.view_states.scan_prefix(tag) {
            let (record_key, value) =
                entry.map_err(|e| StoreError::db(&self.root, "reading view states", e))?;
            // A damaged cache entry is not the user's data: left out.
            entries.extend(
                self.open_frame::<ViewStateEntry>(&key, VIEW_STATES, &record_key, &value)
                    .ok(),
            );
        }
        Ok(entries)
    }

    /// Every user with data in the store, sorted (but for users whose entry
    /// is damaged: see [`Store::integrity`]).
    pub fn users(&self) -> Result<Vec<String>, StoreError> {
        let trees = self.trees()?;
        let mut users = Vec::new();
        for entry in trees.users.iter() {
            let (tag_bytes, value) =
                entry.map_err(|e| StoreError::db(&self.root, "listing users", e))?;
            let tag: UserTag = tag_bytes
                .as_ref()
                .try_into()
                .map_err(|_| StoreError::corrupt(&self.root, "a `users` key is malformed"))?;
            // No key: forgotten concurrently, between the listing and here.
            let Some(key) = self.read_key(&tag)? else {
                continue;
            };
            // A damaged entry names no one: it is in the integrity report.
            if let Ok(entry) = self.open_frame::<UserEntry>(&key, USERS, &tag, &value) {
                users.push(entry.id);
            }
        }
        users.sort();
        Ok(users)
    }

    /// Makes sure the user exists (data key, `users` entry) before a write,
    /// and returns the key to write with. Call with the user's lock held.
    fn ensure_user(&self, trees: &Trees, tag: &UserTag, user: &str) -> Result<UserKey, StoreError> {
        // The key first: a crash after it and before the entry leaves an
        // unused key, which `open` drops.
        let key = self.write_key(tag)?;
        let known = trees
            .users
            .contains_key(tag)
            .map_err(|e| StoreError::db(&self.root, "reading users", e))?;
        if !known {
            let entry = UserEntry {
                id: user.to_owned(),
            };
            trees
                .users
                .insert(tag, self.frame(&key, USERS, tag, &entry))
                .map_err(|e| StoreError::db(&self.root, "adding a user", e))?;
        }
        Ok(key)
    }
}
