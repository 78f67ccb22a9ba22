//! Why an item was recommended: the history items closest to it in the
//! scoring space (the ones whose vectors pull its score up most).

use crate::kernels::Hit;

use super::ItemTable;

/// For each hit, its id and the ids of the (at most `per_hit`) history items
/// most similar to it by `e_h . e_hit`, strongest first, ties to the lower row.
pub fn reasons(
    items: &ItemTable,
    history: &[u32],
    hits: &[Hit],
    per_hit: usize,
) -> Vec<(String, Vec<String>)> {
    let mut unique = history.to_vec();
    unique.sort_unstable();
    unique.dedup();
    hits.iter()
        .map(|hit| {
            let target = items.vector(hit.row);
            let mut pulls: Vec<(f32, u32)> = unique
                .iter()
                .map(|&h| (dot(items.vector(h), target), h))
                .collect();
            pulls.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let because = pulls
                .iter()
                .take(per_hit)
                .map(|&(_, h)| items.id(h).to_owned())
                .collect();
            (items.id(hit.row).to_owned(), because)
        })
        .collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(a, b)| a * b).sum()
}
