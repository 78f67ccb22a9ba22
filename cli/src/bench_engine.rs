//! `l2rec bench engine`: the engine on the real model and a dataset's catalog
//! (ml-100k unless `--data` names another).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use l2rec::backbone::{Backbone, BackboneConfig, ModelInfo};
use l2rec::bundle::{Bundle, BundleWriter, Linear};
use l2rec::engine::*;
use l2rec::lora::LoraSpec;
use l2rec::prompt::View;
use l2rec::store::Durability;
use l2rec_dev::dataset::Dataset;
use l2rec_dev::memory::MemorySampler;
use l2rec_dev::random::{write_random_expert, SplitMix};
use serde_json::json;

#[derive(clap::Args)]
pub struct EngineArgs {
    /// Print one JSON object on one line.
    #[arg(long)]
    pub json: bool,
    /// Warm recommendations to time.
    #[arg(long, default_value_t = 200)]
    pub warm: usize,
    /// Events to time per durability mode.
    #[arg(long, default_value_t = 200)]
    pub events: usize,
    #[arg(long)]
    pub threads: Option<u32>,
    /// Bench this bundle (e.g. bundles/ml-100k). Without it, a zero-shot
    /// bundle with random experts is built first and benched in a fresh
    /// process, so the builder's memory is not counted as the engine's.
    #[arg(long)]
    pub bundle: Option<PathBuf>,
    /// The dataset (docs/DATA.md) whose catalog and users the bench serves: a
    /// dataset.json or its directory (default: MovieLens-100K). A `--bundle`
    /// must have been trained on it.
    #[arg(long)]
    pub data: Option<PathBuf>,
}

/// Items the bench user observes before its cold recommendation (fewer when
/// the dataset's longest history is shorter).
const BENCH_ITEMS: usize = 20;

fn percentile(times: &mut [Duration], p: f64) -> f64 {
    times.sort();
    let i = ((times.len() as f64 - 1.0) * p).round() as usize;
    times[i].as_secs_f64() * 1e3
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

/// The dataset's zero-shot bundle with 4 random rank-8 experts per view (k = 2)
/// on attn_q/attn_v of the top 4 layers and random gates: the shape of a
/// trained bundle, so personalization has work to do.
fn bench_bundle(backbone: &Backbone, data: &Dataset, dir: &Path) -> anyhow::Result<PathBuf> {
    let zero = l2rec_dev::zeroshot::cache_dir(&backbone.info().sha256, data);
    if Bundle::open(&zero, backbone.info()).is_err() {
        eprintln!(
            "building the zero-shot bundle first (cached at {})",
            zero.display()
        );
        l2rec_dev::zeroshot::build(backbone, data, &zero, &mut Progress::none())?;
    }
    let base = Bundle::open(&zero, backbone.info())?;
    let info = backbone.info();
    let n = info.n_layer as u32;
    let mut manifest = base.manifest.clone();
    manifest.name = "bench-random-experts".into();
    manifest.lora = LoraSpec {
        rank: 8,
        alpha: 16.0,
        layers: (n - 4..n).collect(),
        modules: vec!["attn_q".into(), "attn_v".into()],
    };
    manifest.views.behavioral.experts = 4;
    manifest.views.behavioral.k = 2;
    manifest.views.semantic.experts = 4;
    manifest.views.semantic.k = 2;
    let mut rng = SplitMix(9);
    let d_phi = manifest.dims.d_phi;
    let mut gate = || Linear {
        weight: (0..4 * d_phi).map(|_| rng.next_signed()).collect(),
        bias: vec![0.0; 4],
        rows: 4,
        cols: d_phi,
    };
    let mut heads = base.heads.clone();
    heads.gate_behavioral = gate();
    heads.gate_semantic = gate();
    heads.phi_mean = vec![0.1; d_phi];
    let writer = BundleWriter::new(dir, manifest.clone())?;
    writer.write_heads(&heads)?;
    writer.write_items(&base.items)?;
    for view in View::BOTH {
        for k in 0..4 {
            write_random_expert(
                &writer.expert_path(view, k),
                info,
                &manifest.lora,
                1000 + k as u64 + 10 * view as u64,
                0.05,
            )?;
        }
    }
    Ok(writer.finish()?)
}

fn open_engine(
    model: &Path,
    bundle: &Path,
    store: &Path,
    durability: Durability,
    threads: Option<u32>,
) -> anyhow::Result<Engine> {
    let mut config = EngineConfig::new(model.to_owned(), bundle.to_owned(), store.to_owned());
    config.durability = durability;
    config.threads = threads;
    config.master_key = Some([42u8; 32]);
    Ok(Engine::open(config, &mut Progress::none())?)
}

fn event(item: &str, t: i64) -> EventInput {
    EventInput {
        item_id: item.to_owned(),
        timestamp_ms: t,
        kind: "view".into(),
        item_text: None,
    }
}

fn observe_p50(engine: &Engine, user: &str, data: &Dataset, n: usize) -> anyhow::Result<f64> {
    let mut times = Vec::with_capacity(n);
    for t in 0..n {
        let item = &data.catalog.ids[t % data.catalog.len()];
        let started = Instant::now();
        engine.observe(user, &event(item, t as i64))?;
        times.push(started.elapsed());
    }
    Ok(percentile(&mut times, 0.5))
}

/// The bench user's history: the first with twice BENCH_ITEMS items, else
/// the longest (at least 2 items, or there is nothing to append).
fn bench_history(data: &Dataset) -> anyhow::Result<&[u32]> {
    let rows = data
        .histories
        .iter()
        .find(|h| h.rows.len() >= 2 * BENCH_ITEMS)
        .or_else(|| data.histories.iter().max_by_key(|h| h.rows.len()))
        .map(|h| h.rows.as_slice())
        .context("the dataset has no user")?;
    anyhow::ensure!(rows.len() >= 2, "{}: no user has 2 items", data.name);
    Ok(rows)
}

pub fn run(args: &EngineArgs) -> anyhow::Result<()> {
    match &args.bundle {
        Some(bundle) => measure(args, bundle),
        None => build_then_measure(args),
    }
}

/// Builds the random-expert bundle, then benches it in a child process: the
/// builder's second backbone and allocations would otherwise stay in this
/// process's dirty memory (the allocator keeps freed pages) and be counted.
fn build_then_measure(args: &EngineArgs) -> anyhow::Result<()> {
    let model = l2rec_dev::assets::model_path()?;
    let info = ModelInfo::read(&model, Some(l2rec_dev::assets::MODEL_SHA256))?;
    let data = Dataset::load(args.data.as_deref())?;
    let tmp = tempfile::tempdir()?;
    let bundle = {
        let backbone = Backbone::open_verified(
            info,
            BackboneConfig {
                threads: args.threads,
                ..Default::default()
            },
        )?;
        bench_bundle(&backbone, &data, &tmp.path().join("bundle"))?
    };
    let mut child = std::process::Command::new(std::env::current_exe()?);
    child.args(["bench", "engine", "--warm", &args.warm.to_string()]);
    child.args(["--events", &args.events.to_string()]);
    child.arg("--bundle").arg(&bundle);
    if let Some(data) = &args.data {
        child.arg("--data").arg(data);
    }
    if args.json {
        child.arg("--json");
    }
    if let Some(threads) = args.threads {
        child.args(["--threads", &threads.to_string()]);
    }
    let status = child
        .status()
        .context("running the bench in a fresh process")?;
    anyhow::ensure!(status.success(), "the bench process failed: {status}");
    Ok(())
}

/// The bench proper, on `bundle`, in this process.
fn measure(args: &EngineArgs, bundle: &Path) -> anyhow::Result<()> {
    let model = l2rec_dev::assets::model_path()?;
    let memory = MemorySampler::start(&model, Duration::from_millis(10));
    let info = ModelInfo::read(&model, Some(l2rec_dev::assets::MODEL_SHA256))?;
    memory.phase("dataset");
    let data = Dataset::load(args.data.as_deref())?;
    let tmp = tempfile::tempdir()?;
    let bundle = bundle.to_owned();
    memory.phase("open");
    let engine = open_engine(
        &model,
        &bundle,
        &tmp.path().join("store"),
        Durability::Immediate,
        args.threads,
    )?;

    // A user with BENCH_ITEMS items and one more to append (ml-100k: the
    // first with 40 or more; elsewhere the longest if none has that many).
    let history = bench_history(&data)?;
    let cold_items = BENCH_ITEMS.min(history.len() - 1);
    for (t, &r) in history[..cold_items].iter().enumerate() {
        engine.observe("bench", &event(&data.catalog.ids[r as usize], t as i64))?;
    }
    memory.phase("recommend");
    let started = Instant::now();
    engine.recommend("bench", 10, RecommendOptions::default())?;
    let cold = started.elapsed().as_secs_f64() * 1e3;
    let mut warm = Vec::with_capacity(args.warm);
    for _ in 0..args.warm {
        let started = Instant::now();
        engine.recommend("bench", 10, RecommendOptions::default())?;
        warm.push(started.elapsed());
    }
    // One appended item: the KV cache takes only its tokens.
    let next = data.catalog.ids[history[cold_items] as usize].as_str();
    engine.observe("bench", &event(next, cold_items as i64))?;
    let started = Instant::now();
    engine.recommend("bench", 10, RecommendOptions::default())?;
    let appended = started.elapsed().as_secs_f64() * 1e3;

    memory.phase("personalize");
    let started = Instant::now();
    let report = engine.personalize(
        "bench",
        PersonalizeOptions::default(),
        &mut Progress::none(),
    )?;
    let personalize = started.elapsed().as_secs_f64() * 1e3;

    // The longest prompts the bundle allows: `history.max_items` items of the
    // user with the most, served cold (the sessions grow to fit them).
    memory.phase("full history");
    let longest = data
        .histories
        .iter()
        .max_by_key(|h| h.rows.len())
        .context("a user")?;
    let max_items = Bundle::read_manifest(&bundle)?.history.max_items;
    let full = &longest.rows[longest.rows.len().saturating_sub(max_items)..];
    for (t, &r) in full.iter().enumerate() {
        engine.observe("full", &event(&data.catalog.ids[r as usize], t as i64))?;
    }
    let started = Instant::now();
    engine.recommend("full", 10, RecommendOptions::default())?;
    let full_cold = started.elapsed().as_secs_f64() * 1e3;

    memory.phase("observe");
    let observe_immediate = observe_p50(&engine, "observer", &data, args.events)?;
    engine.flush()?;
    let stats = engine.stats()?;
    drop(engine);
    let batched = open_engine(
        &model,
        &bundle,
        &tmp.path().join("store-batched"),
        Durability::Batched {
            flush_every_ms: 200,
        },
        args.threads,
    )?;
    let observe_batched = observe_p50(&batched, "observer", &data, args.events)?;
    drop(batched);

    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let peaks = memory.finish().unwrap_or_default();
    let catalog_bytes = data.catalog.len() * (64 * 4 + 4)
        + std::fs::metadata(bundle.join("items.safetensors"))?.len() as usize;
    let out = json!({
        "recommend_warm_p50_ms": percentile(&mut warm, 0.5),
        "recommend_warm_p95_ms": percentile(&mut warm, 0.95),
        "recommend_cold_ms": cold,
        "cold_history_items": cold_items,
        "recommend_after_one_event_ms": appended,
        "recommend_full_history_cold_ms": full_cold,
        "full_history_items": full.len(),
        "observe_p50_ms": {"immediate": observe_immediate, "batched": observe_batched},
        "personalize_ms": personalize,
        "personalize": report,
        "peak_rss_mb": peak_rss_mb(),
        // What a phone counts (l2rec_dev::memory): the dirty peak, and the
        // clean file-backed pages at the resident peak, model and the rest.
        "dirty_peak_mb": mib(peaks.dirty),
        "file_model_mb": mib(peaks.at_rss_peak.file_model),
        "file_other_mb": mib(peaks.at_rss_peak.file_other),
        "memory_samples": peaks.samples,
        // Which step holds it: the dirty peak of each phase, in order.
        "dirty_peak_by_phase_mb": peaks
            .dirty_by_phase
            .iter()
            .map(|(phase, dirty)| (phase.to_string(), json!(mib(*dirty))))
            .collect::<serde_json::Map<_, _>>(),
        "model_bytes": info.file_bytes,
        "catalog_bytes": catalog_bytes,
        "rss_budget_mb": 1.3 * (info.file_bytes as f64 + catalog_bytes as f64) / (1024.0 * 1024.0),
        "store_bytes_on_disk": stats.store_bytes_on_disk,
        "store_live_bytes": stats.store_live_bytes,
        "scorer": stats.scorer,
        "threads": args.threads.unwrap_or_else(l2rec::backbone::default_threads),
        "repack_weights": l2rec::backbone::default_repack(),
        "kv_cache": format!("{:?}", l2rec::backbone::default_kv_cache()),
        "bundle": bundle.display().to_string(),
        "dataset": data.name,
        "catalog_items": data.catalog.len(),
        // glibc's mmap threshold pinned (l2rec_dev::allocator), as a phone's
        // allocator behaves; L2REC_GLIBC_MALLOC=default measures without.
        "malloc_mmap_threshold_pinned": l2rec_dev::allocator::pin_mmap_threshold(),
        "load_avg": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
    });
    if args.json {
        println!("{out}");
    } else {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}
