//! The item table: the bundle's items (rows `0..N`, learned embeddings)
//! followed by cold items (text alone), with their vectors `e_i` and biases
//! (SPEC step 7). Row numbers are what the scorer returns.

use std::collections::HashMap;

use crate::kernels::{CatalogMatrix, KernelError, Storage};
use crate::prompt::{ItemRef, Label};

use super::ModelError;

/// An item the bundle never saw: served by its text alone (SPEC step 7, `E[i] = 0`).
#[derive(Debug, Clone)]
pub struct ColdItem {
    pub id: String,
    pub text: String,
    /// The base backbone's state of its one-item semantic history.
    pub text_state: Vec<f32>,
}

/// Ids, texts, vectors and biases by catalog row.
#[derive(Debug, Clone)]
pub struct ItemTable {
    ids: Vec<String>,
    texts: Vec<String>,
    rows: HashMap<String, u32>,
    /// `e_i`, `[rows, d_r]`.
    vectors: Vec<f32>,
    bias: Vec<f32>,
    d_r: usize,
    bundle_len: usize,
    /// Version 2 `render: codes`: the bundle items' semantic IDs (cold items
    /// have none); `None`: every item renders as `#<id>`.
    codes: Option<Vec<String>>,
}

impl ItemTable {
    /// The bundle's items; `vectors` is `[N, d_r]`.
    pub fn new(
        ids: Vec<String>,
        texts: Vec<String>,
        vectors: Vec<f32>,
        bias: Vec<f32>,
        d_r: usize,
    ) -> Self {
        let rows = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i as u32))
            .collect();
        Self {
            bundle_len: ids.len(),
            ids,
            texts,
            rows,
            vectors,
            bias,
            d_r,
            codes: None,
        }
    }

    /// The bundle items' semantic IDs (MODEL.md step 3, `render: codes`).
    pub fn with_codes(mut self, codes: Option<Vec<String>>) -> Self {
        self.codes = codes;
        self
    }

    /// Replaces the cold items: `(item, e_i)` for each, bias 0. Ids the table
    /// already has keep their row.
    pub fn set_cold<'c>(&mut self, cold: impl IntoIterator<Item = (&'c ColdItem, Vec<f32>)>) {
        let n = self.bundle_len;
        self.ids.truncate(n);
        self.texts.truncate(n);
        self.vectors.truncate(n * self.d_r);
        self.bias.truncate(n);
        self.rows.retain(|_, r| (*r as usize) < n);
        for (item, vector) in cold {
            if self.rows.contains_key(&item.id) {
                continue;
            }
            self.rows.insert(item.id.clone(), self.ids.len() as u32);
            self.ids.push(item.id.clone());
            self.texts.push(item.text.clone());
            self.vectors.extend(vector);
            self.bias.push(0.0);
        }
    }

    /// The table as the scorer's matrix.
    pub fn catalog_matrix(&self) -> Result<CatalogMatrix, KernelError> {
        CatalogMatrix::new(
            self.vectors.clone(),
            self.d_r,
            self.bias.clone(),
            Storage::F32,
        )
    }

    /// The catalog row of an item id (bundle items and cold items).
    pub fn row(&self, id: &str) -> Option<u32> {
        self.rows.get(id).copied()
    }

    /// The row of an item the bundle trained on (not a cold item).
    pub fn bundle_row(&self, id: &str) -> Option<u32> {
        self.row(id).filter(|&r| (r as usize) < self.bundle_len)
    }

    pub fn id(&self, row: u32) -> &str {
        &self.ids[row as usize]
    }

    pub fn text(&self, row: u32) -> &str {
        &self.texts[row as usize]
    }

    /// How a prompt shows the item of `row`.
    pub fn item_ref(&self, row: u32) -> ItemRef<'_> {
        let label = match &self.codes {
            None => Label::Id,
            Some(codes) => codes
                .get(row as usize)
                .map_or(Label::Missing, |c| Label::Code(c)),
        };
        ItemRef {
            id: self.id(row),
            text: self.text(row),
            label,
        }
    }

    /// Rows in the table (bundle and cold items).
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Rows that came with the bundle.
    pub fn bundle_len(&self) -> usize {
        self.bundle_len
    }

    /// `e_i` of every row, `[rows, d_r]`.
    pub fn vectors(&self) -> &[f32] {
        &self.vectors
    }

    /// `e_i` of one row.
    pub fn vector(&self, row: u32) -> &[f32] {
        let r = row as usize;
        &self.vectors[r * self.d_r..(r + 1) * self.d_r]
    }

    /// The learned bias of every row (0 for cold items).
    pub fn bias(&self) -> &[f32] {
        &self.bias
    }

    /// Fails on the first row the table does not have.
    pub fn check_rows(&self, rows: &[u32]) -> Result<(), ModelError> {
        match rows.iter().find(|&&r| r as usize >= self.len()) {
            Some(&row) => Err(ModelError::UnknownRow {
                row,
                len: self.len(),
            }),
            None => Ok(()),
        }
    }

    /// The `k` rows with the most `counts`; ties by the learned bias (the
    /// bundle's popularity prior), then the lower row.
    pub fn most_popular(&self, counts: &HashMap<u32, u32>, k: usize) -> Vec<u32> {
        let count = |r: &u32| counts.get(r).copied().unwrap_or(0);
        let mut rows: Vec<u32> = (0..self.len() as u32).collect();
        rows.sort_by(|a, b| {
            count(b)
                .cmp(&count(a))
                .then(self.bias[*b as usize].total_cmp(&self.bias[*a as usize]))
                .then(a.cmp(b))
        });
        rows.truncate(k);
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> ItemTable {
        ItemTable::new(
            vec!["a".into(), "b".into()],
            vec!["A".into(), "B".into()],
            vec![1.0, 0.0, 0.0, 1.0],
            vec![0.1, 0.2],
            2,
        )
    }

    #[test]
    fn cold_items_follow_the_bundle_and_are_replaced_as_a_whole() {
        let mut t = table();
        let cold = |id: &str| ColdItem {
            id: id.into(),
            text: id.to_uppercase(),
            text_state: Vec::new(),
        };
        let (c, d, a) = (cold("c"), cold("d"), cold("a"));
        t.set_cold([(&c, vec![2.0, 2.0]), (&a, vec![9.0, 9.0])]);
        assert_eq!((t.len(), t.row("c"), t.row("a")), (3, Some(2), Some(0)));
        assert_eq!(t.vector(2), [2.0, 2.0]);
        assert_eq!(t.bundle_row("c"), None);
        t.set_cold([(&d, vec![3.0, 3.0])]);
        assert_eq!((t.len(), t.row("c"), t.row("d")), (3, None, Some(2)));
        assert_eq!(t.bias(), [0.1, 0.2, 0.0]);
        assert!(t.check_rows(&[0, 2]).is_ok());
        assert!(t.check_rows(&[3]).is_err());
        assert_eq!(t.item_ref(2).label, Label::Id);
        // With codes, bundle items render them and cold items have none.
        let t = t.with_codes(Some(vec!["A b".into(), "C d".into()]));
        assert_eq!(t.item_ref(1).label, Label::Code("C d"));
        assert_eq!(t.item_ref(2).label, Label::Missing);
    }

    #[test]
    fn popularity_breaks_ties_by_bias_then_row() {
        let t = table();
        assert_eq!(t.most_popular(&HashMap::new(), 2), [1, 0]);
        assert_eq!(t.most_popular(&HashMap::from([(0, 1)]), 1), [0]);
    }
}
