//! Bounded top-k selection for the CPU scan, in the SPEC's order: score
//! descending, then catalog row ascending.

use std::cmp::Ordering;

/// One recommended catalog row and its score.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hit {
    pub row: u32,
    pub score: f32,
}

/// The ranking order: higher score first, lower row on equal scores. Never
/// sees NaN (the collector refuses it); `-0 == +0`, as on the GPU.
#[inline]
pub fn rank_order(a: &Hit, b: &Hit) -> Ordering {
    b.score
        .partial_cmp(&a.score)
        .unwrap_or(Ordering::Equal)
        .then(a.row.cmp(&b.row))
}

/// Keeps the best `k` hits offered to it. Candidates are buffered up to
/// `2k` and pruned with a linear-time selection, so most offers are a push;
/// the scan only offers scores at or above [`Collector::threshold`], which
/// rises quickly, so offers are rare.
pub(crate) struct Collector<'a> {
    k: usize,
    cap: usize,
    buf: Vec<Hit>,
    /// The k-th best kept hit, once `full`; until then `-inf` so that the
    /// scan's `>=` prefilter lets every non-NaN score through.
    worst: Hit,
    full: bool,
    /// Rows never to return, sorted ascending.
    excluded: &'a [u32],
    /// Rows at or past this index are block padding.
    n_rows: u32,
}

impl<'a> Collector<'a> {
    pub fn new(k: usize, excluded: &'a [u32], n_rows: usize) -> Self {
        let cap = (2 * k).max(k + 64);
        Self {
            k,
            cap,
            buf: Vec::with_capacity(cap.min(1 << 16)),
            worst: Hit {
                row: u32::MAX,
                score: f32::NEG_INFINITY,
            },
            full: false,
            excluded,
            n_rows: n_rows as u32,
        }
    }

    /// Scores below this can never enter; equal ones may (row tie-break).
    #[inline(always)]
    pub fn threshold(&self) -> f32 {
        self.worst.score
    }

    /// Considers one scored row; kept out of line since it is rare.
    #[inline(never)]
    pub fn offer(&mut self, score: f32, row: u32) {
        if row >= self.n_rows || score.is_nan() {
            return;
        }
        let hit = Hit { row, score };
        if self.full && rank_order(&hit, &self.worst) != Ordering::Less {
            return;
        }
        if self.excluded.binary_search(&row).is_ok() {
            return;
        }
        self.push(hit);
    }

    fn push(&mut self, hit: Hit) {
        self.buf.push(hit);
        if self.buf.len() >= self.cap {
            self.prune();
        }
    }

    /// Keeps exactly the best `k` and raises the threshold to the k-th.
    fn prune(&mut self) {
        if self.buf.len() < self.k || self.k == 0 {
            return;
        }
        self.buf.select_nth_unstable_by(self.k - 1, rank_order);
        self.buf.truncate(self.k);
        self.worst = self.buf[self.k - 1];
        self.full = true;
    }

    /// Folds another collector (over other rows) into this one.
    pub fn merge(mut self, other: Collector<'a>) -> Self {
        for hit in other.buf {
            if !self.full || rank_order(&hit, &self.worst) == Ordering::Less {
                self.push(hit);
            }
        }
        self
    }

    /// The best `k` hits, best first.
    pub fn finish(mut self) -> Vec<Hit> {
        self.buf.sort_unstable_by(rank_order);
        self.buf.truncate(self.k);
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute(scores: &[f32], k: usize, excluded: &[u32]) -> Vec<Hit> {
        let mut all: Vec<Hit> = scores
            .iter()
            .enumerate()
            .filter(|(i, s)| !s.is_nan() && !excluded.contains(&(*i as u32)))
            .map(|(i, &score)| Hit {
                row: i as u32,
                score,
            })
            .collect();
        all.sort_by(rank_order);
        all.truncate(k);
        all
    }

    #[test]
    fn collector_matches_a_full_sort_with_ties_and_exclusions() {
        // Few distinct values: ties everywhere, so row order decides.
        let scores: Vec<f32> = (0..5000).map(|i| ((i * 7919) % 13) as f32).collect();
        let excluded = [3u32, 16, 29, 4999];
        for k in [0, 1, 5, 64, 200, 5000, 6000] {
            let mut c = Collector::new(k, &excluded, scores.len());
            for (i, &s) in scores.iter().enumerate().rev() {
                if s >= c.threshold() {
                    c.offer(s, i as u32);
                }
            }
            assert_eq!(c.finish(), brute(&scores, k, &excluded), "k={k}");
        }
    }

    #[test]
    fn merge_of_halves_equals_whole() {
        let scores: Vec<f32> = (0..3000).map(|i| ((i * 31) % 97) as f32 - 40.0).collect();
        let k = 77;
        let mut a = Collector::new(k, &[], scores.len());
        let mut b = Collector::new(k, &[], scores.len());
        for (i, &s) in scores.iter().enumerate() {
            if i % 2 == 0 {
                a.offer(s, i as u32)
            } else {
                b.offer(s, i as u32)
            }
        }
        assert_eq!(b.merge(a).finish(), brute(&scores, k, &[]));
    }

    #[test]
    fn nan_and_padding_rows_are_never_returned() {
        let mut c = Collector::new(3, &[], 2);
        c.offer(f32::NAN, 0);
        c.offer(1.0, 1);
        c.offer(5.0, 2); // padding row
        assert_eq!(c.finish(), vec![Hit { row: 1, score: 1.0 }]);
    }
}
