//! Kernel tests: the CPU kernels against a brute-force reference, and the
//! GPU (real wgpu; lavapipe in CI) against the CPU.
//!
//! GPU tests fail when `CI` is set and no adapter exists; elsewhere they
//! skip with a loud message.

use std::sync::Arc;

use proptest::prelude::*;

use super::gpu::GpuScorer;
use super::*;

/// splitmix64: test data from a seed without storing it in proptest's trees.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// Values from a small set when `coarse`: forces many exact score ties.
    fn value(&mut self, coarse: bool) -> f32 {
        if coarse {
            (self.next() % 3) as f32 - 1.0
        } else {
            self.unit()
        }
    }

    fn vec(&mut self, n: usize, coarse: bool) -> Vec<f32> {
        (0..n).map(|_| self.value(coarse)).collect()
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

struct Case {
    cat: CatalogMatrix,
    queries: Vec<Vec<f32>>,
    excludes: Vec<Vec<u32>>,
}

fn case(seed: u64, rows: usize, dim: usize, nq: usize, storage: Storage, coarse: bool) -> Case {
    let mut r = Rng(seed);
    let cat =
        CatalogMatrix::new(r.vec(rows * dim, coarse), dim, r.vec(rows, coarse), storage).unwrap();
    let queries = (0..nq).map(|_| r.vec(dim, coarse)).collect();
    let excludes = (0..nq)
        .map(|_| {
            let n = r.below(20);
            let mut e: Vec<u32> = (0..n).map(|_| r.below(rows + 3) as u32).collect();
            e.sort_unstable();
            e
        })
        .collect();
    Case {
        cat,
        queries,
        excludes,
    }
}

/// Brute force: score every row with the canonical chain, sort everything.
fn reference(cat: &CatalogMatrix, mode: MulAdd, u: &[f32], excluded: &[u32], k: usize) -> Vec<Hit> {
    let mut all: Vec<Hit> = (0..cat.len())
        .filter(|i| !excluded.contains(&(*i as u32)))
        .map(|i| Hit {
            row: i as u32,
            score: dot_with(&cat.row(i), u, mode) + cat.bias()[i],
        })
        .filter(|h| !h.score.is_nan())
        .collect();
    all.sort_by(rank_order);
    all.truncate(k);
    all
}

fn refs<T>(v: &[Vec<T>]) -> Vec<&[T]> {
    v.iter().map(|x| x.as_slice()).collect()
}

/// The process-wide GPU, or None outside CI when there is none. `scripts/test`
/// installs lavapipe and sets L2REC_REQUIRE_GPU, so there a missing adapter fails.
pub(super) fn gpu() -> Option<Arc<Gpu>> {
    match Gpu::shared() {
        Ok(g) => Some(g),
        Err(e)
            if std::env::var_os("CI").is_some()
                || std::env::var_os("L2REC_REQUIRE_GPU").is_some() =>
        {
            panic!("CI (or L2REC_REQUIRE_GPU) is set but there is no GPU adapter ({e}); install mesa-vulkan-drivers")
        }
        Err(e) => {
            eprintln!("\n!!!!!!!! SKIPPING GPU TEST: no GPU adapter ({e}) !!!!!!!!\n");
            None
        }
    }
}

/// Same rows and bit-identical scores (the kernels share one FMA chain);
/// the score check is the 1e-4 relative, for the message.
fn assert_same(a: &[Hit], b: &[Hit], what: &str) {
    let rows = |h: &[Hit]| h.iter().map(|x| x.row).collect::<Vec<_>>();
    assert_eq!(rows(a), rows(b), "{what}: top-k rows differ");
    for (x, y) in a.iter().zip(b) {
        let tol = 1e-4 * x.score.abs().max(1.0);
        assert!(
            x.score == y.score || (x.score - y.score).abs() <= tol,
            "{what}: row {} scores {} vs {}",
            x.row,
            x.score,
            y.score
        );
        assert!(
            x.score == y.score,
            "{what}: row {} scores {} vs {} not bit-equal",
            x.row,
            x.score,
            y.score
        );
    }
}

fn storage_of(f16: bool) -> Storage {
    if f16 {
        Storage::F16
    } else {
        Storage::F32
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn cpu_matches_brute_force(
        seed in any::<u64>(),
        rows in 1usize..3000,
        dim in 1usize..80,
        nq in 1usize..10,
        k in 0usize..300,
        f16 in any::<bool>(),
        coarse in any::<bool>(),
        fused in any::<bool>(),
    ) {
        let c = case(seed, rows, dim, nq, storage_of(f16), coarse);
        let mode = if fused { MulAdd::Fused } else { MulAdd::Separate };
        let scorer = Scorer::new_cpu_with(c.cat.clone(), mode);
        let batch = scorer.top_k_batch(&refs(&c.queries), &refs(&c.excludes), k).unwrap();
        for (q, u) in c.queries.iter().enumerate() {
            let want = reference(&c.cat, mode, u, &c.excludes[q], k);
            let one = scorer.top_k(u, &c.excludes[q], k).unwrap();
            assert_same(&one, &want, "single vs reference");
            assert_same(&batch[q], &want, "batch vs reference");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Small segments force many segments, chunks and carried top-k merges.
    #[test]
    fn gpu_matches_cpu(
        seed in any::<u64>(),
        rows in 1usize..6000,
        dim in 1usize..70,
        nq in 1usize..12,
        k in 0usize..=1000,
        f16 in any::<bool>(),
        coarse in any::<bool>(),
        small_segments in any::<bool>(),
    ) {
        let Some(g) = gpu() else { return Ok(()) };
        let c = case(seed, rows, dim, nq, storage_of(f16), coarse);
        let cpu = Scorer::new_cpu_with(c.cat.clone(), g.mul_add());
        let gs = if small_segments {
            GpuScorer::with_segment_rows(g, &c.cat, 256).unwrap()
        } else {
            GpuScorer::new(g, &c.cat).unwrap()
        };
        let want = cpu.top_k_batch(&refs(&c.queries), &refs(&c.excludes), k).unwrap();
        let got = gs.top_k_batch(&refs(&c.queries), &refs(&c.excludes), k).unwrap();
        for q in 0..nq {
            assert_same(&got[q], &want[q], "gpu vs cpu");
        }
    }

    #[test]
    fn gpu_heads_match_cpu(
        seed in any::<u64>(),
        experts in 0usize..40,
        k in 1usize..8,
        d_phi in 1usize..24,
        d in 1usize..700,
        dr in 1usize..80,
    ) {
        let Some(g) = gpu() else { return Ok(()) };
        let heads = GpuHeads::with_gpu(g);
        let mut r = Rng(seed);
        let close = |a: &[f32], b: &[f32], what: &str| {
            assert_eq!(a.len(), b.len(), "{what}");
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() <= 1e-5, "{what}: {x} vs {y}");
            }
        };
        let (w, b, phi) = (r.vec(experts * d_phi, false), r.vec(experts, false), r.vec(d_phi, false));
        close(&heads.gate(&w, &b, &phi, k).unwrap(), &gate(&w, &b, &phi, k), "gate");
        let (w, b, h) = (r.vec(dr * d, false), r.vec(dr, false), r.vec(d, false));
        close(&heads.project(&w, &b, &h).unwrap(), &project(&w, &b, &h), "project");
        let (w, b, zb, zs) = (r.vec(3 * dr * dr, false), r.vec(dr, false), r.vec(dr, false), r.vec(dr, false));
        let (gf, cf) = (heads.fuse(&w, &b, &zb, &zs).unwrap(), fuse(&w, &b, &zb, &zs));
        close(&gf.u, &cf.u, "fuse u");
        close(&gf.beta, &cf.beta, "fuse beta");
    }
}

/// Above the 128 MiB binding limit of lavapipe (and most mobile GPUs):
/// several segments and, for the batch, several chunks; k = 1000 and long
/// loops would expose lavapipe's silent 65,535-iteration cut.
fn large(storage: Storage, rows: usize, dim: usize) {
    let Some(g) = gpu() else { return };
    let c = case(0x5eed + dim as u64, rows, dim, 6, storage, false);
    assert!(c.cat.bytes_scanned() > 128 << 20);
    let cpu = Scorer::new_cpu_with(c.cat.clone(), g.mul_add());
    let gs = GpuScorer::new(g, &c.cat).unwrap();
    assert!(gs.segments() > 1, "the catalog must span several bindings");
    for k in [1000, 7] {
        let want = cpu
            .top_k_batch(&refs(&c.queries), &refs(&c.excludes), k)
            .unwrap();
        let got = gs
            .top_k_batch(&refs(&c.queries), &refs(&c.excludes), k)
            .unwrap();
        for q in 0..c.queries.len() {
            assert_eq!(want[q].len(), k);
            assert_same(&got[q], &want[q], "large gpu vs cpu");
        }
    }
}

#[test]
fn gpu_matches_cpu_above_the_binding_limit_f32() {
    large(Storage::F32, 1_100_000, 32);
}

#[test]
fn gpu_matches_cpu_above_the_binding_limit_f16() {
    large(Storage::F16, 1_100_000, 64);
}

/// More queries than one GPU pass, exclusions covering the best rows, a
/// NaN row and infinite scores.
#[test]
fn gpu_edge_cases() {
    let Some(g) = gpu() else { return };
    let (rows, dim) = (3000, 16);
    let mut r = Rng(7);
    let mut data = r.vec(rows * dim, false);
    data[5 * dim] = f32::NAN;
    let mut bias = r.vec(rows, false);
    bias[9] = f32::INFINITY;
    bias[10] = f32::NEG_INFINITY;
    bias[11] = f32::INFINITY;
    let cat = CatalogMatrix::new(data, dim, bias, Storage::F32).unwrap();
    let queries: Vec<Vec<f32>> = (0..130).map(|_| r.vec(dim, false)).collect();
    let cpu = Scorer::new_cpu_with(cat.clone(), g.mul_add());
    let gs = GpuScorer::with_segment_rows(g, &cat, 512).unwrap();
    // Exclude each query's 40 best rows but row 9, and row 11 (infinite).
    let excludes: Vec<Vec<u32>> = queries
        .iter()
        .map(|u| {
            let mut e: Vec<u32> = cpu
                .top_k(u, &[], 40)
                .unwrap()
                .iter()
                .map(|h| h.row)
                .collect();
            e.retain(|&r| r != 9);
            e.push(11);
            e.sort_unstable();
            e.dedup();
            e
        })
        .collect();
    for k in [1, 50, 1000] {
        let want = cpu
            .top_k_batch(&refs(&queries), &refs(&excludes), k)
            .unwrap();
        let got = gs
            .top_k_batch(&refs(&queries), &refs(&excludes), k)
            .unwrap();
        for q in 0..queries.len() {
            assert!(!want[q]
                .iter()
                .any(|h| h.row == 5 || excludes[q].contains(&h.row)));
            assert_eq!(want[q][0].row, 9, "the infinite score wins");
            assert_same(&got[q], &want[q], "edge gpu vs cpu");
        }
    }
    let tiny = CatalogMatrix::new(
        vec![1.0, 2.0, f32::NAN],
        1,
        vec![0.0, f32::NEG_INFINITY, 0.0],
        Storage::F32,
    )
    .unwrap();
    let gs = GpuScorer::new(gpu().unwrap(), &tiny).unwrap();
    let got = gs.top_k_batch(&[&[1.0]], &[&[]], 10).unwrap().remove(0);
    assert_eq!(got, Scorer::new_cpu(tiny).top_k(&[1.0], &[], 10).unwrap());
    assert_eq!(got.iter().map(|h| h.row).collect::<Vec<_>>(), vec![0, 1]);
    assert!(matches!(
        gs.top_k_batch(&[&[1.0]], &[&[]], 1025),
        Err(KernelError::KTooLarge { .. })
    ));
}

#[test]
fn scorer_api_checks_shapes_and_sorts_exclusions() {
    let cat = CatalogMatrix::new(
        (0..40).map(|i| i as f32).collect(),
        4,
        vec![0.0; 10],
        Storage::F32,
    )
    .unwrap();
    let s = Scorer::new_cpu(cat);
    assert_eq!(s.backend(), Backend::Cpu);
    assert!(matches!(
        s.top_k(&[1.0; 3], &[], 3),
        Err(KernelError::Shape(_))
    ));
    let hits = s.top_k(&[1.0; 4], &[9, 7], 2).unwrap();
    assert_eq!(hits.iter().map(|h| h.row).collect::<Vec<_>>(), vec![8, 6]);
    assert!(s.top_k_batch(&[&[1.0; 4]], &[], 2).unwrap()[0].len() == 2);
    assert!(CatalogMatrix::new(vec![1.0; 7], 4, vec![0.0; 2], Storage::F32).is_err());
}

/// Wide rows: fewer queries fit one pass (the query uniform holds 16384
/// values), so 30 queries take two passes.
#[test]
fn gpu_matches_cpu_for_wide_rows() {
    let Some(g) = gpu() else { return };
    let c = case(3, 700, 600, 30, Storage::F16, false);
    let cpu = Scorer::new_cpu_with(c.cat.clone(), g.mul_add());
    let gs = GpuScorer::new(g, &c.cat).unwrap();
    let want = cpu
        .top_k_batch(&refs(&c.queries), &refs(&c.excludes), 50)
        .unwrap();
    let got = gs
        .top_k_batch(&refs(&c.queries), &refs(&c.excludes), 50)
        .unwrap();
    for q in 0..30 {
        assert_same(&got[q], &want[q], "wide gpu vs cpu");
    }
}

/// The probe must agree with what the scorer actually computes.
#[test]
fn gpu_fma_probe_matches_the_scores() {
    let Some(g) = gpu() else { return };
    eprintln!("adapter {}: fma {:?}", g.adapter_name(), g.mul_add());
    let c = case(11, 2000, 37, 1, Storage::F32, false);
    let gs = GpuScorer::new(g.clone(), &c.cat).unwrap();
    let got = gs
        .top_k_batch(&refs(&c.queries), &[&[]], 1000)
        .unwrap()
        .remove(0);
    let want = reference(&c.cat, g.mul_add(), &c.queries[0], &[], 1000);
    assert_same(&got, &want, "gpu vs brute force");
}
