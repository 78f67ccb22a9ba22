//! The filter's k-core (docs/DATA.md): events of items below the item minimum
//! and of users below the user minimum are dropped, repeated until both hold;
//! counted by reason under the trainer's names (`dataset.core_filter`).

use std::collections::BTreeMap;

use super::config::Filter;

/// A keep-mask over the events.
pub fn core(
    users: &[u32],
    n_users: usize,
    rows: &[u32],
    n_items: usize,
    filter: &Filter,
    dropped: &mut BTreeMap<String, usize>,
) -> Vec<bool> {
    let uid = |i: usize| users[i] as usize;
    let mut keep = vec![true; rows.len()];
    let mut count = |reason: &str, n: usize| *dropped.entry(reason.to_owned()).or_default() += n;
    loop {
        let mut item_counts = vec![0usize; n_items];
        for i in (0..rows.len()).filter(|&i| keep[i]) {
            item_counts[rows[i] as usize] += 1;
        }
        let weak_items: Vec<usize> = (0..rows.len())
            .filter(|&i| keep[i] && item_counts[rows[i] as usize] < filter.min_item_interactions)
            .collect();
        count(
            "interactions of items below min_item_interactions",
            weak_items.len(),
        );
        for &i in &weak_items {
            keep[i] = false;
        }
        let mut user_counts = vec![0usize; n_users];
        for i in (0..rows.len()).filter(|&i| keep[i]) {
            user_counts[uid(i)] += 1;
        }
        let weak_users: Vec<usize> = (0..rows.len())
            .filter(|&i| keep[i] && user_counts[uid(i)] < filter.min_user_interactions)
            .collect();
        let mut gone: Vec<usize> = weak_users.iter().map(|&i| uid(i)).collect();
        gone.sort_unstable();
        gone.dedup();
        count("users below min_user_interactions", gone.len());
        count("interactions of dropped users", weak_users.len());
        for &i in &weak_users {
            keep[i] = false;
        }
        if weak_items.is_empty() && weak_users.is_empty() {
            return keep;
        }
    }
}
