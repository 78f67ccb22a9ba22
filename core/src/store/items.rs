//! The catalog: items and their cached text states. Not personal data, so
//! stored in plaintext in every mode, each record with its checksum. A
//! damaged item reads as absent (and is reported) until upserted again; a
//! damaged text state reads as a cache miss.

use super::layout::{text_state_key, ITEMS, TEXT_STATES};
use super::{Store, StoreError, StoredItem};

impl Store {
    /// Inserts or replaces catalog items (keyed by id).
    pub fn upsert_items(&self, items: &[StoredItem]) -> Result<(), StoreError> {
        let trees = self.trees()?;
        let mut batch = sled::Batch::default();
        for item in items {
            if item.id.is_empty() {
                return Err(self.invalid("an item id is empty"));
            }
            let value = self.encode_catalog(ITEMS, item.id.as_bytes(), item);
            batch.insert(item.id.as_bytes(), value);
        }
        trees
            .items
            .apply_batch(batch)
            .map_err(|e| StoreError::db(&self.root, "writing items", e))?;
        self.mark_catalog_changed();
        self.clear_damaged_items(items.iter().map(|i| i.id.as_str()));
        self.flush_if_immediate(&trees)
    }

    pub fn item(&self, id: &str) -> Result<Option<StoredItem>, StoreError> {
        let trees = self.trees()?;
        let value = trees
            .items
            .get(id.as_bytes())
            .map_err(|e| StoreError::db(&self.root, "reading an item", e))?;
        Ok(value.and_then(|v| self.checked_item(id.as_bytes(), &v)))
    }

    /// Every catalog item that verifies, ordered by row (then id, should rows
    /// repeat); damaged ones are in [`Store::integrity`].
    pub fn items(&self) -> Result<Vec<StoredItem>, StoreError> {
        let trees = self.trees()?;
        let mut items = Vec::with_capacity(trees.items.len());
        for entry in trees.items.iter() {
            let (id, value) = entry.map_err(|e| StoreError::db(&self.root, "reading items", e))?;
            items.extend(self.checked_item(&id, &value));
        }
        items.sort_by(|a, b| a.row.cmp(&b.row).then_with(|| a.id.cmp(&b.id)));
        Ok(items)
    }

    /// Caches the base backbone's text state of an item, keyed by the
    /// backbone's sha256 so a new backbone never reads stale states.
    /// A cache: not flushed individually even in `Immediate` mode.
    pub fn put_text_state(
        &self,
        item_id: &str,
        backbone_sha256: &str,
        state: &[f32],
    ) -> Result<(), StoreError> {
        let trees = self.trees()?;
        let key = text_state_key(backbone_sha256, item_id);
        let value = self.encode_catalog(TEXT_STATES, &key, &state);
        trees
            .text_states
            .insert(key, value)
            .map_err(|e| StoreError::db(&self.root, "writing a text state", e))?;
        Ok(())
    }

    pub fn text_state(
        &self,
        item_id: &str,
        backbone_sha256: &str,
    ) -> Result<Option<Vec<f32>>, StoreError> {
        let trees = self.trees()?;
        let key = text_state_key(backbone_sha256, item_id);
        let Some(value) = trees
            .text_states
            .get(&key)
            .map_err(|e| StoreError::db(&self.root, "reading a text state", e))?
        else {
            return Ok(None);
        };
        match self.decode_catalog(TEXT_STATES, &key, &value) {
            Ok(state) => Ok(Some(state)),
            Err(why) => {
                // A cache: recomputed by the caller and written over.
                tracing::warn!(path = %self.root.display(), item = item_id, "a cached text state {why}; recomputing it");
                self.note_cached_state_dropped();
                Ok(None)
            }
        }
    }

    /// The item in a value, `None` (noted as damage) when it does not verify.
    fn checked_item(&self, id: &[u8], value: &[u8]) -> Option<StoredItem> {
        match self.decode_catalog::<StoredItem>(ITEMS, id, value) {
            Ok(item) => Some(item),
            Err(why) => {
                let id = String::from_utf8_lossy(id);
                tracing::warn!(path = %self.root.display(), item = %id, "a catalog item {why}; upsert it again");
                self.note_damaged_item(&id);
                None
            }
        }
    }

    pub(crate) fn invalid(&self, what: &str) -> StoreError {
        StoreError::InvalidInput {
            path: self.root.clone(),
            what: what.to_owned(),
        }
    }
}
