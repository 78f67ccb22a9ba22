//! Criterion benches of the kernels: catalog top-k on the CPU (one query
//! and a batch, f32 and f16), the same on the GPU when an adapter exists
//! (lavapipe is slow: proof of correctness, not speed), and the small heads.
//! `cargo bench -p l2rec --bench kernels`; a plain read of the same bytes
//! is the yardstick for the memory-bound one-query scan.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use l2rec::kernels::{fuse, gate, project, CatalogMatrix, Scorer, Storage};

const ROWS: usize = 1_000_000;
const DIM: usize = 64;
const K: usize = 100;
const BATCH: usize = 64;

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn catalog(storage: Storage) -> CatalogMatrix {
    CatalogMatrix::new(values(ROWS * DIM, 1), DIM, values(ROWS, 2), storage).unwrap()
}

fn top_k(c: &mut Criterion) {
    let queries: Vec<Vec<f32>> = (0..BATCH).map(|i| values(DIM, 100 + i as u64)).collect();
    let qs: Vec<&[f32]> = queries.iter().map(|q| q.as_slice()).collect();
    for storage in [Storage::F32, Storage::F16] {
        let cat = catalog(storage);
        let bytes = cat.bytes_scanned();
        let gpu = if storage == Storage::F32 {
            Scorer::new_gpu(cat.clone()).ok()
        } else {
            None
        };
        let cpu = Scorer::new_cpu(cat);
        let mut g = c.benchmark_group(format!("top{K}_{ROWS}x{DIM}_{}", storage.name()));
        g.throughput(Throughput::Bytes(bytes));
        g.bench_function("cpu_1", |b| {
            b.iter(|| cpu.top_k(black_box(qs[0]), &[], K).unwrap())
        });
        g.bench_function("cpu_64", |b| {
            b.iter(|| cpu.top_k_batch(black_box(&qs), &[], K).unwrap())
        });
        if let Some(gpu) = &gpu {
            g.sample_size(10).measurement_time(Duration::from_secs(20));
            g.bench_function("gpu_1", |b| {
                b.iter(|| gpu.top_k(black_box(qs[0]), &[], K).unwrap())
            });
        }
        g.finish();
    }
}

/// Summing the bytes a one-query scan reads: the scan's speed limit.
fn read_baseline(c: &mut Criterion) {
    let data = values(ROWS * DIM, 3);
    let mut g = c.benchmark_group("read_baseline");
    g.throughput(Throughput::Bytes((data.len() * 4) as u64));
    g.bench_function("sum_1M_x64_f32_one_thread", |b| {
        b.iter(|| {
            let mut acc = [0.0f32; 16];
            for ch in data.chunks_exact(16) {
                for (a, v) in acc.iter_mut().zip(ch) {
                    *a += v;
                }
            }
            black_box(acc)
        })
    });
    g.finish();
}

fn heads(c: &mut Criterion) {
    let (d, dr, dphi, experts) = (640, 64, 16, 8);
    let (pw, pb, h) = (values(dr * d, 4), values(dr, 5), values(d, 6));
    let (fw, fb, zb, zs) = (
        values(3 * dr * dr, 7),
        values(dr, 8),
        values(dr, 9),
        values(dr, 10),
    );
    let (gw, gb, phi) = (
        values(experts * dphi, 11),
        values(experts, 12),
        values(dphi, 13),
    );
    let mut g = c.benchmark_group("heads_cpu");
    g.bench_function("project_640_to_64", |b| {
        b.iter(|| project(black_box(&pw), &pb, &h))
    });
    g.bench_function("fuse_64", |b| {
        b.iter(|| fuse(black_box(&fw), &fb, &zb, &zs))
    });
    g.bench_function("gate_8_experts", |b| {
        b.iter(|| gate(black_box(&gw), &gb, &phi, 2))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(5));
    targets = top_k, read_baseline, heads
}
criterion_main!(benches);
