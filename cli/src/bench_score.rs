//! `l2rec bench score`: catalog scoring and top-k, CPU against GPU, one
//! query and a batch, printed as JSON.
//!
//! The catalog is random (or read from raw little-endian f32 files, so that
//! `scripts/bench-vs-faiss` can hand FAISS and us the same bytes). Each
//! figure is the median of `--repeat` timed runs after one warm-up run.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use l2rec::kernels::{CatalogMatrix, Hit, KernelError, MulAdd, Scorer, Storage};
use serde_json::{json, Value};

#[derive(clap::Args, Debug)]
pub struct ScoreArgs {
    /// Catalog rows (ignored with --catalog).
    #[arg(long, default_value_t = 1_000_000)]
    pub items: usize,
    /// Row dimension (d_r).
    #[arg(long, default_value_t = 64)]
    pub dim: usize,
    /// Hits per query.
    #[arg(long, default_value_t = 100)]
    pub k: usize,
    /// Queries in the batched measurement (0 skips it).
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Store the catalog as f16 (scores are still computed in f32).
    #[arg(long)]
    pub f16: bool,
    /// Timed runs per figure (the median is reported, and the best).
    #[arg(long, default_value_t = 11)]
    pub repeat: usize,
    /// Seed of the random catalog and queries.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Skip the GPU (no adapter is looked for).
    #[arg(long)]
    pub cpu_only: bool,
    /// Skip the CPU.
    #[arg(long)]
    pub gpu_only: bool,
    /// Raw little-endian f32 catalog `[N, dim]` (bias 0, as FAISS has none).
    #[arg(long)]
    pub catalog: Option<PathBuf>,
    /// Raw little-endian f32 queries `[Q, dim]`: the first is the single
    /// query, the first `--batch` the batch.
    #[arg(long)]
    pub queries: Option<PathBuf>,
    /// Write the top-k rows (single query, then each batch query) to this
    /// file as JSON, for comparing with another engine.
    #[arg(long)]
    pub dump_topk: Option<PathBuf>,
    /// Also measure memory bandwidth with a multi-threaded copy loop.
    #[arg(long)]
    pub membw: bool,
    /// Print JSON only (the default output is JSON too, pretty-printed).
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &ScoreArgs) -> Result<()> {
    let (cat, queries) = load_or_generate(args)?;
    let storage = cat.storage();
    let bytes = cat.bytes_scanned();
    let batch: Vec<&[f32]> = queries
        .iter()
        .take(args.batch)
        .map(|q| q.as_slice())
        .collect();
    let single = [queries[0].as_slice()];

    let gpu = if args.cpu_only {
        None
    } else {
        gpu_scorer(&cat)
    };
    let mut cpu = (!args.gpu_only).then(|| Scorer::new_cpu(cat));

    let mut out = json!({
        "items": queries_len_items(&cpu, &gpu),
        "dim": args.dim,
        "k": args.k,
        "storage": storage.name(),
        "bytes_scanned": bytes,
        "cpu_threads": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "gpu_adapter": gpu.as_ref().map(|g| g.adapter_name()),
        "gpu_mul_add": gpu.as_ref().map(|g| format!("{:?}", g.mul_add())),
        "load_average": load_average(),
    });
    let mut dumps = Vec::new();
    for (name, qs) in [("single", &single[..]), ("batch", &batch[..])] {
        if qs.is_empty() {
            continue;
        }
        let (fig, hits) = measure(args, cpu.as_mut(), gpu.as_ref(), qs, bytes)?;
        out[name] = fig;
        dumps.extend(hits);
    }
    if args.membw {
        let (copy, read) = memory_bandwidth();
        out["membw_copy_gb_per_s"] = json!(copy);
        out["membw_read_gb_per_s"] = json!(read);
    }
    if let Some(path) = &args.dump_topk {
        let rows: Vec<Vec<u32>> = dumps
            .iter()
            .map(|h| h.iter().map(|x| x.row).collect())
            .collect();
        std::fs::write(path, serde_json::to_string(&rows)?)?;
    }
    println!(
        "{}",
        if args.json {
            out.to_string()
        } else {
            serde_json::to_string_pretty(&out)?
        }
    );
    Ok(())
}

fn queries_len_items(cpu: &Option<Scorer>, gpu: &Option<Scorer>) -> usize {
    cpu.as_ref().or(gpu.as_ref()).map_or(0, Scorer::len)
}

/// The GPU scorer, or None (with the reason on stderr) when there is none.
fn gpu_scorer(cat: &CatalogMatrix) -> Option<Scorer> {
    match Scorer::new_gpu_from(cat) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("bench score: no GPU figures: {e}");
            None
        }
    }
}

/// Times one query set on each backend; compares their top-k.
fn measure(
    args: &ScoreArgs,
    cpu: Option<&mut Scorer>,
    gpu: Option<&Scorer>,
    qs: &[&[f32]],
    bytes: u64,
) -> Result<(Value, Vec<Vec<Hit>>)> {
    let k = args.k;
    let run = |s: &Scorer| s.top_k_batch(qs, &[], k);
    let mut fig = json!({ "queries": qs.len(), "bytes_scanned": bytes });
    let mut cpu_hits = None;
    if let Some(c) = &cpu {
        let (ms, best, hits) = time(args.repeat, || run(c))?;
        fig["cpu_ms"] = json!(ms);
        fig["cpu_ms_best"] = json!(best);
        fig["cpu_gb_per_s"] = json!(bytes as f64 / ms / 1e6);
        fig["cpu_queries_per_s"] = json!(qs.len() as f64 / ms * 1e3);
        cpu_hits = Some(hits);
    }
    if let Some(g) = gpu {
        let (ms, best, hits) = time(args.repeat, || run(g))?;
        fig["gpu_ms"] = json!(ms);
        fig["gpu_ms_best"] = json!(best);
        fig["gpu_gb_per_s"] = json!(bytes as f64 / ms / 1e6);
        fig["gpu_adapter"] = json!(g.adapter_name());
        if let (Some(c), Some(want)) = (cpu, &cpu_hits) {
            fig["same_topk"] = json!(same_rows(&hits, want));
            fig["max_rel_score_diff"] = json!(max_rel_diff(&hits, want));
            // Where the fused CPU path and this GPU disagree, how close the
            // rows involved are to the other list's k-th score: rounding ties.
            let (differing, gap) = disagreement(&hits, want);
            fig["topk_rows_differing"] = json!(differing);
            fig["differing_rows_max_rel_gap"] = json!(gap);
            fig["topk_positions_differing"] = json!(positions_differing(&hits, want));
            // The CPU twin rounds as this GPU does: it must agree bit for bit.
            c.set_mul_add(g.mul_add());
            fig["same_topk_twin"] = json!(hits == run(c)?);
            c.set_mul_add(MulAdd::Fused);
        }
        cpu_hits.get_or_insert(hits);
    }
    Ok((fig, cpu_hits.unwrap_or_default()))
}

/// Median and best milliseconds of `repeat` runs after a warm-up; the last
/// result.
fn time<T>(repeat: usize, mut f: impl FnMut() -> Result<T, KernelError>) -> Result<(f64, f64, T)> {
    let mut last = f()?;
    let mut ms = Vec::new();
    for _ in 0..repeat.max(1) {
        let t = Instant::now();
        last = f()?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    Ok((ms[ms.len() / 2], ms[0], last))
}

fn same_rows(a: &[Vec<Hit>], b: &[Vec<Hit>]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.iter().map(|h| h.row).eq(y.iter().map(|h| h.row)))
}

/// Rows in one top-k list but not the other (over all queries), and the
/// largest relative distance of such a row's score from the k-th score of
/// the list it is missing from: how near a tie every disagreement is.
fn disagreement(a: &[Vec<Hit>], b: &[Vec<Hit>]) -> (usize, f64) {
    let (mut differing, mut gap) = (0, 0f64);
    for (x, y) in a.iter().zip(b) {
        for (have, lack) in [(x, y), (y, x)] {
            let Some(kth) = lack.last().map(|h| h.score) else {
                continue;
            };
            for h in have.iter().filter(|h| !lack.iter().any(|l| l.row == h.row)) {
                differing += 1;
                let rel = ((h.score - kth).abs() / kth.abs().max(1e-30)) as f64;
                gap = gap.max(rel);
            }
        }
    }
    (differing / 2, gap)
}

/// Positions (over all queries) whose rows differ: reorderings included.
fn positions_differing(a: &[Vec<Hit>], b: &[Vec<Hit>]) -> usize {
    a.iter()
        .zip(b)
        .map(|(x, y)| x.iter().zip(y).filter(|(p, q)| p.row != q.row).count())
        .sum()
}

fn max_rel_diff(a: &[Vec<Hit>], b: &[Vec<Hit>]) -> f64 {
    let pairs = a.iter().flatten().zip(b.iter().flatten());
    pairs
        .map(|(x, y)| ((x.score - y.score).abs() / x.score.abs().max(1e-30)) as f64)
        .filter(|d| d.is_finite())
        .fold(0.0, f64::max)
}

/// The catalog and at least `max(batch, 1)` queries.
fn load_or_generate(args: &ScoreArgs) -> Result<(CatalogMatrix, Vec<Vec<f32>>)> {
    let d = args.dim;
    if d == 0 {
        bail!("--dim must be positive");
    }
    let storage = if args.f16 { Storage::F16 } else { Storage::F32 };
    let nq = args.batch.max(1);
    let queries = match &args.queries {
        Some(p) => read_f32(p)?
            .chunks_exact(d)
            .take(nq)
            .map(<[f32]>::to_vec)
            .collect(),
        None => random_values(nq * d, args.seed ^ 0x5151)
            .chunks_exact(d)
            .map(<[f32]>::to_vec)
            .collect(),
    };
    let cat = match &args.catalog {
        Some(p) => CatalogMatrix::without_bias(read_f32(p)?, d, storage)?,
        None => {
            let rows = random_values(args.items * d, args.seed);
            let bias: Vec<f32> = random_values(args.items, args.seed ^ 0xb1a5)
                .iter()
                .map(|b| 0.1 * b)
                .collect();
            CatalogMatrix::new(rows, d, bias, storage)?
        }
    };
    Ok((cat, queries))
}

fn read_f32(path: &Path) -> Result<Vec<f32>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect())
}

/// Uniform values in [-1, 1), generated on every core (a 10M x 64 catalog
/// is 640M values).
fn random_values(n: usize, seed: u64) -> Vec<f32> {
    let mut out = vec![0.0f32; n];
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    let per = n.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        for (i, chunk) in out.chunks_mut(per).enumerate() {
            s.spawn(move || {
                let mut state = seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                for x in chunk {
                    *x = (splitmix(&mut state) >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
                }
            });
        }
    });
    out
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// (copy, read) bandwidth in GB/s over 512 MiB buffers on every core, best
/// of 5. Copy counts the bytes read plus the bytes written (as STREAM
/// does); read is a summing loop, the access pattern of a one-query scan.
fn memory_bandwidth() -> (f64, f64) {
    const N: usize = 128 << 20; // f32 values: 512 MiB
    let src = random_values(N, 1);
    let mut dst = vec![0.0f32; N];
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    let per = N.div_ceil(threads);
    let (mut copy, mut read) = (0.0f64, 0.0f64);
    for _ in 0..5 {
        let t = Instant::now();
        std::thread::scope(|s| {
            for (d, c) in dst.chunks_mut(per).zip(src.chunks(per)) {
                s.spawn(move || d.copy_from_slice(c));
            }
        });
        copy = copy.max(2.0 * (N * 4) as f64 / t.elapsed().as_secs_f64() / 1e9);
        let t = Instant::now();
        let sums: f32 = std::thread::scope(|s| {
            let hs: Vec<_> = src
                .chunks(per)
                .map(|c| s.spawn(move || sum_lanes(c)))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        read = read.max((N * 4) as f64 / t.elapsed().as_secs_f64() / 1e9);
        std::hint::black_box((sums, &dst));
    }
    (copy, read)
}

/// A sum with 16 independent accumulators, so that it is load-bound.
fn sum_lanes(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    for c in x.chunks_exact(16) {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum()
}

fn load_average() -> Option<String> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}
