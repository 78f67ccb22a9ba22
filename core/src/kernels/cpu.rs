//! Catalog scoring and top-k on the CPU.
//!
//! One query is memory-bound: the scan streams the grouped catalog once,
//! a 64-row group at a time (one sequential stream; eight independent FMA
//! chains hide the FMA latency), split over all cores with rayon. A batch is
//! compute-bound: each group is loaded once into L1 and scored against every
//! query in 16-row x 4-query register tiles (8 accumulators, as in a GEMM
//! micro-kernel). Both compute the canonical chain of `simd::dot_with`.

// The crate denies unsafe code; the SIMD loads and the kernels' pointer
// arithmetic are the exception, each behind a bounds assertion.
#![allow(unsafe_code)]

use rayon::prelude::*;

use super::catalog::{Blocks, CatalogMatrix, GROUP};
use super::simd::{madd, Elem, MulAdd, LANES, V};
use super::topk::{Collector, Hit};

/// Groups per rayon task: 256 groups = 16K rows, 4 MiB at d=64 f32.
const TASK_GROUPS: usize = 256;
/// Vectors (of 8 rows) per group.
const VECS: usize = GROUP / LANES;
/// Register tile of the batch kernel: vectors x queries.
const TILE_VECS: usize = 2;
const TILE_QUERIES: usize = 4;

/// Top-k of one query. `excluded` must be sorted ascending.
pub(crate) fn top_k(
    cat: &CatalogMatrix,
    mode: MulAdd,
    u: &[f32],
    excluded: &[u32],
    k: usize,
) -> Vec<Hit> {
    match (&cat.blocks, mode) {
        (Blocks::F32(data), MulAdd::Fused) => top_k_in::<_, true>(data, cat, u, excluded, k),
        (Blocks::F16(data), MulAdd::Fused) => top_k_in::<_, true>(data, cat, u, excluded, k),
        (Blocks::F32(data), MulAdd::Separate) => top_k_in::<_, false>(data, cat, u, excluded, k),
        (Blocks::F16(data), MulAdd::Separate) => top_k_in::<_, false>(data, cat, u, excluded, k),
    }
}

/// Top-k of several queries in one pass over the catalog.
pub(crate) fn top_k_batch(
    cat: &CatalogMatrix,
    mode: MulAdd,
    queries: &[&[f32]],
    excluded: &[&[u32]],
    k: usize,
) -> Vec<Vec<Hit>> {
    let (q, e) = (queries, excluded);
    match (&cat.blocks, mode) {
        (Blocks::F32(data), MulAdd::Fused) => batch_in::<_, true>(data, cat, q, e, k),
        (Blocks::F16(data), MulAdd::Fused) => batch_in::<_, true>(data, cat, q, e, k),
        (Blocks::F32(data), MulAdd::Separate) => batch_in::<_, false>(data, cat, q, e, k),
        (Blocks::F16(data), MulAdd::Separate) => batch_in::<_, false>(data, cat, q, e, k),
    }
}

fn task_ranges(n_groups: usize) -> Vec<(usize, usize)> {
    (0..n_groups)
        .step_by(TASK_GROUPS)
        .map(|g0| (g0, (g0 + TASK_GROUPS).min(n_groups)))
        .collect()
}

fn top_k_in<E: Elem, const F: bool>(
    data: &[E],
    cat: &CatalogMatrix,
    u: &[f32],
    excluded: &[u32],
    k: usize,
) -> Vec<Hit> {
    if k == 0 || cat.is_empty() {
        return Vec::new();
    }
    let n = cat.len();
    task_ranges(cat.n_groups())
        .into_par_iter()
        .fold(
            || Collector::new(k, excluded, n),
            |mut col, (g0, g1)| {
                scan_range::<E, F>(data, &cat.bias, cat.dim(), u, g0, g1, &mut col);
                col
            },
        )
        .reduce(|| Collector::new(k, excluded, n), Collector::merge)
        .finish()
}

/// Scores groups `g0..g1` for one query and offers the promising rows.
fn scan_range<E: Elem, const F: bool>(
    data: &[E],
    bias: &[f32],
    d: usize,
    u: &[f32],
    g0: usize,
    g1: usize,
    col: &mut Collector,
) {
    assert!(g1 * d * GROUP <= data.len() && g1 * GROUP <= bias.len() && u.len() == d);
    for g in g0..g1 {
        // SAFETY: the assert above covers group g < g1.
        unsafe { scan_group::<E, F>(data, bias, d, u, g, col) };
    }
}

/// # Safety
/// Group `g` must lie inside `data` and `bias`.
#[inline(always)]
unsafe fn scan_group<E: Elem, const F: bool>(
    data: &[E],
    bias: &[f32],
    d: usize,
    u: &[f32],
    g: usize,
    col: &mut Collector,
) {
    // SAFETY: group g lies inside `data` (the caller's contract), so its
    // first element is in bounds.
    let base = unsafe { data.as_ptr().add(g * d * GROUP) };
    let mut acc = [V::zero(); VECS];
    for (dd, &x) in u.iter().enumerate() {
        let uu = V::splat(x);
        // SAFETY: dimension dd < d of group g: inside the group's d * GROUP
        // elements, as is each of its VECS runs of LANES elements below.
        let at = unsafe { base.add(dd * GROUP) };
        for (j, a) in acc.iter_mut().enumerate() {
            // SAFETY: see above; j * LANES + LANES <= GROUP.
            *a = madd::<F>(unsafe { E::load8(at.add(j * LANES)) }, uu, *a);
        }
    }
    for (j, a) in acc.iter().enumerate() {
        let row0 = g * GROUP + j * LANES;
        // SAFETY: rows row0..row0 + LANES belong to group g, inside `bias`.
        let s = a.add(unsafe { V::load(bias.as_ptr().add(row0)) });
        offer_lanes(s, row0, col);
    }
}

/// Offers the lanes of `s` that reach the collector's threshold.
#[inline(always)]
fn offer_lanes(s: V, row0: usize, col: &mut Collector) {
    let mut mask = s.ge_mask(V::splat(col.threshold()));
    if mask == 0 {
        return;
    }
    let lanes = s.to_array();
    while mask != 0 {
        let l = mask.trailing_zeros() as usize;
        col.offer(lanes[l], (row0 + l) as u32);
        mask &= mask - 1;
    }
}

fn batch_in<E: Elem, const F: bool>(
    data: &[E],
    cat: &CatalogMatrix,
    queries: &[&[f32]],
    excluded: &[&[u32]],
    k: usize,
) -> Vec<Vec<Hit>> {
    let nq = queries.len();
    if k == 0 || cat.is_empty() || nq == 0 {
        return vec![Vec::new(); nq];
    }
    let (n, d) = (cat.len(), cat.dim());
    // Queries contiguous, so the tile kernel broadcasts straight from L1.
    let packed: Vec<f32> = queries.iter().flat_map(|q| q.iter().copied()).collect();
    let fresh =
        || -> Vec<Collector> { (0..nq).map(|q| Collector::new(k, excluded[q], n)).collect() };
    task_ranges(cat.n_groups())
        .into_par_iter()
        .fold(fresh, |mut cols, (g0, g1)| {
            batch_range::<E, F>(data, &cat.bias, d, &packed, g0, g1, &mut cols);
            cols
        })
        .reduce(fresh, |a, b| {
            a.into_iter().zip(b).map(|(x, y)| x.merge(y)).collect()
        })
        .into_iter()
        .map(Collector::finish)
        .collect()
}

/// Scores groups `g0..g1` against every query, tile by tile: a group
/// (16 KiB at d=64 f32) stays in L1 while all its tiles are scored.
fn batch_range<E: Elem, const F: bool>(
    data: &[E],
    bias: &[f32],
    d: usize,
    packed: &[f32],
    g0: usize,
    g1: usize,
    cols: &mut [Collector],
) {
    let nq = cols.len();
    assert!(g1 * d * GROUP <= data.len() && g1 * GROUP <= bias.len() && packed.len() == nq * d);
    for g in g0..g1 {
        for v in (0..VECS).step_by(TILE_VECS) {
            let mut q = 0;
            while q < nq {
                let tq = (nq - q).min(TILE_QUERIES);
                let t = Tile {
                    data,
                    bias,
                    d,
                    packed,
                    g,
                    v,
                    q,
                };
                // SAFETY: the assert above covers group g and queries q..q+tq.
                unsafe {
                    match tq {
                        4 => t.run::<F, 4>(cols),
                        3 => t.run::<F, 3>(cols),
                        2 => t.run::<F, 2>(cols),
                        _ => t.run::<F, 1>(cols),
                    }
                }
                q += tq;
            }
        }
    }
}

/// One register tile: vectors `v..v+TILE_VECS` of group `g` against
/// queries `q..q+NQ`.
struct Tile<'a, E> {
    data: &'a [E],
    bias: &'a [f32],
    d: usize,
    packed: &'a [f32],
    g: usize,
    v: usize,
    q: usize,
}

impl<E: Elem> Tile<'_, E> {
    /// # Safety
    /// Group `g` and queries `q..q+NQ` must be in bounds.
    #[inline(always)]
    unsafe fn run<const F: bool, const NQ: usize>(&self, cols: &mut [Collector]) {
        let d = self.d;
        // SAFETY: group g and queries q..q+NQ are in bounds (the caller's
        // contract), so both starting points are inside their slices.
        let base = unsafe { self.data.as_ptr().add(self.g * d * GROUP + self.v * LANES) };
        // SAFETY: as above.
        let qbase = unsafe { self.packed.as_ptr().add(self.q * d) };
        let mut acc = [[V::zero(); NQ]; TILE_VECS];
        for dd in 0..d {
            let mut e = [V::zero(); TILE_VECS];
            for (j, ej) in e.iter_mut().enumerate() {
                // SAFETY: dd < d and v + j < VECS keep the eight elements
                // inside group g.
                *ej = unsafe { E::load8(base.add(dd * GROUP + j * LANES)) };
            }
            for i in 0..NQ {
                // SAFETY: query q + i < q + NQ is in bounds and dd < d.
                let uu = V::splat(unsafe { *qbase.add(i * d + dd) });
                for (row, &ej) in acc.iter_mut().zip(&e) {
                    row[i] = madd::<F>(ej, uu, row[i]);
                }
            }
        }
        for (j, row) in acc.iter().enumerate() {
            let row0 = self.g * GROUP + (self.v + j) * LANES;
            // SAFETY: rows row0..row0 + LANES belong to group g, inside `bias`.
            let bias = unsafe { V::load(self.bias.as_ptr().add(row0)) };
            for (i, a) in row.iter().enumerate() {
                offer_lanes(a.add(bias), row0, &mut cols[self.q + i]);
            }
        }
    }
}
