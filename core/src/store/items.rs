//! The catalog: items and their cached text states. Not personal data, so
//! stored in plaintext in every mode.

use super::layout::{text_state_key, ITEMS, TEXT_STATES};
use super::{decode_plain, Store, StoreError, StoredItem};

impl Store {
    /// Inserts or replaces catalog items (keyed by id).
    pub fn upsert_items(&self, items: &[StoredItem]) -> Result<(), StoreError> {
        let trees = self.trees()?;
        let mut batch = sled::Batch::default();
        for item in items {
            if item.id.is_empty() {
                return Err(self.invalid("an item id is empty"));
            }
            let value = postcard::to_stdvec(item).expect("items encode with postcard");
            batch.insert(item.id.as_bytes(), value);
        }
        trees
            .items
            .apply_batch(batch)
            .map_err(|e| StoreError::db(&self.root, "writing items", e))?;
        self.flush_if_immediate(&trees)
    }

    pub fn item(&self, id: &str) -> Result<Option<StoredItem>, StoreError> {
        let trees = self.trees()?;
        let value = trees
            .items
            .get(id.as_bytes())
            .map_err(|e| StoreError::db(&self.root, "reading an item", e))?;
        value
            .map(|v| decode_plain(&self.root, ITEMS, &v))
            .transpose()
    }

    /// Every catalog item, ordered by row (then id, should rows repeat).
    pub fn items(&self) -> Result<Vec<StoredItem>, StoreError> {
        let trees = self.trees()?;
        let mut items = Vec::with_capacity(trees.items.len());
        for entry in trees.items.iter() {
            let (_, value) = entry.map_err(|e| StoreError::db(&self.root, "reading items", e))?;
            items.push(decode_plain::<StoredItem>(&self.root, ITEMS, &value)?);
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
        let value = postcard::to_stdvec(state).expect("f32 slices encode with postcard");
        trees
            .text_states
            .insert(text_state_key(backbone_sha256, item_id), value)
            .map_err(|e| StoreError::db(&self.root, "writing a text state", e))?;
        Ok(())
    }

    pub fn text_state(
        &self,
        item_id: &str,
        backbone_sha256: &str,
    ) -> Result<Option<Vec<f32>>, StoreError> {
        let trees = self.trees()?;
        let value = trees
            .text_states
            .get(text_state_key(backbone_sha256, item_id))
            .map_err(|e| StoreError::db(&self.root, "reading a text state", e))?;
        value
            .map(|v| decode_plain(&self.root, TEXT_STATES, &v))
            .transpose()
    }

    pub(crate) fn invalid(&self, what: &str) -> StoreError {
        StoreError::InvalidInput {
            path: self.root.clone(),
            what: what.to_owned(),
        }
    }
}
