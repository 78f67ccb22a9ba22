//! `l2rec bench backbone`: our backbone API against a bare llama.cpp loop,
//! the cost of the expert mixture, and of incremental history updates.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use l2rec::backbone::{
    default_threads, Backbone, BackboneConfig, Expert, ModelInfo, Session, Token,
};
use l2rec::ffi::llama::ContextParams;
use l2rec::lora::{LoraSpec, MODULES};
use l2rec::prompt::{ItemRef, View};
use l2rec_dev::bench_raw_decode;
use l2rec_dev::dataset::Dataset;
use l2rec_dev::random::write_random_expert;
use serde_json::json;

#[derive(clap::Args)]
pub struct BackboneArgs {
    /// Print one JSON object (the default prints it too, pretty).
    #[arg(long)]
    pub json: bool,
    /// Repetitions per measurement (the median is reported).
    #[arg(long, default_value_t = 7)]
    pub reps: usize,
    /// llama.cpp threads (default: half the cores, at most 4).
    #[arg(long)]
    pub threads: Option<u32>,
    /// History length of the semantic pass.
    #[arg(long, default_value_t = 20)]
    pub items: usize,
    /// The dataset (docs/DATA.md) whose item texts and prompt words the pass
    /// reads: a dataset.json or its directory (default: MovieLens-100K).
    #[arg(long)]
    pub data: Option<PathBuf>,
}

fn median(mut times: Vec<Duration>) -> f64 {
    times.sort();
    times[times.len() / 2].as_secs_f64()
}

fn time(reps: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    f()?; // warm-up: the first decode after a change re-reserves buffers
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let started = Instant::now();
        f()?;
        times.push(started.elapsed());
    }
    Ok(median(times))
}

fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The CPU this runs on (`model name` in /proc/cpuinfo), for the report.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_default()
}

/// The x86-64 extensions this binary was compiled to use (portable or native
/// build, README "Portable builds").
fn built_for() -> Vec<&'static str> {
    let mut features = Vec::new();
    macro_rules! probe {
        ($($f:tt),*) => { $(if cfg!(target_feature = $f) { features.push($f); })* };
    }
    probe!(
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512bw",
        "avx512vnni",
        "avxvnni"
    );
    features
}

/// The semantic prompts of a history's first `items - 1` and `items` items,
/// from the first user with that many.
fn semantic_prompt(data: &Dataset, items: usize) -> anyhow::Result<(String, String)> {
    let (_, template) = l2rec_dev::zeroshot::templates(&data.prompts);
    let rows = &data
        .histories
        .iter()
        .find(|h| h.rows.len() >= items)
        .with_context(|| format!("{}: no user has {items} items (lower --items)", data.name))?
        .rows;
    let render = |n: usize| {
        let refs = rows[..n]
            .iter()
            .map(|&r| ItemRef::text_only(&data.catalog.texts[r as usize]));
        template.render(View::Semantic, refs)
    };
    Ok((render(items - 1), render(items)))
}

/// `count` random experts of rank `rank` on the q and v projections of `layers`.
fn random_experts(
    info: &ModelInfo,
    layers: Vec<u32>,
    (count, rank): (u64, u32),
    dir: &std::path::Path,
    bb: &Backbone,
) -> anyhow::Result<Vec<Expert>> {
    let spec = LoraSpec {
        rank,
        alpha: 2.0 * rank as f32,
        layers,
        modules: MODULES.iter().map(|m| m.to_string()).collect(),
    };
    (0..count)
        .map(|seed| {
            let path = dir.join(format!("bench-{}-r{rank}-{seed}.gguf", spec.layers.len()));
            write_random_expert(&path, info, &spec, seed, 0.02)?;
            Ok(bb.load_expert(&path)?)
        })
        .collect()
}

/// The passes' time under each mixture relative to the first (the base),
/// one session per mixture and the mixtures interleaved within every
/// repetition, so that the machine's drift (this VM's speed moves by tens of
/// percent within minutes) falls on all of them alike: the median over
/// repetitions of each mixture's time over the base's in the same repetition.
fn mixture_ratios(
    sessions: &mut [Session],
    tokens: &[Token],
    reps: usize,
) -> anyhow::Result<(f64, Vec<f64>)> {
    for session in sessions.iter_mut() {
        session.state_fresh(tokens)?; // warm-up: the first decode reserves buffers
    }
    let mut times = vec![Vec::with_capacity(reps); sessions.len()];
    for _ in 0..reps {
        for (session, t) in sessions.iter_mut().zip(&mut times) {
            let started = Instant::now();
            session.state_fresh(tokens)?;
            t.push(started.elapsed().as_secs_f64());
        }
    }
    let middle = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let ratios = times[1..]
        .iter()
        .map(|t| middle(t.iter().zip(&times[0]).map(|(t, b)| t / b).collect()))
        .collect();
    Ok((middle(times[0].clone()), ratios))
}

/// A session whose mixture is `experts` at equal scales, merged or not.
fn session_with(bb: &Backbone, experts: &[Expert], merge: bool) -> anyhow::Result<Session> {
    let mut session = bb.session()?;
    session.set_merge_mixtures(merge);
    let scale = 1.0 / experts.len().max(1) as f32;
    let mixture: Vec<(&Expert, f32)> = experts.iter().map(|e| (e, scale)).collect();
    session.set_mixture(&mixture)?;
    Ok(session)
}

/// What setting a new mixture of `experts` costs before any token: merging
/// them into one adapter and loading it (the scales alternate, so every call
/// is a different mixture).
fn merge_time(session: &mut Session, experts: &[Expert], reps: usize) -> anyhow::Result<f64> {
    let mut flip = false;
    time(reps, || {
        flip = !flip;
        let first = if flip { 0.6 } else { 0.4 };
        session.set_mixture(&[(&experts[0], first), (&experts[1], 1.0 - first)])?;
        Ok(())
    })
}

pub fn run(args: &BackboneArgs) -> anyhow::Result<()> {
    let threads = args.threads.unwrap_or_else(default_threads);
    let info = ModelInfo::read(
        &l2rec_dev::assets::model_path()?,
        Some(l2rec_dev::assets::MODEL_SHA256),
    )?;
    let config = BackboneConfig {
        threads: Some(threads),
        ..Default::default()
    };
    let bb = Backbone::open_verified(info.clone(), config.clone())?;
    anyhow::ensure!(args.items >= 2, "--items must be 2 or more");
    let data = Dataset::load(args.data.as_deref())?;
    let (shorter, prompt) = semantic_prompt(&data, args.items)?;
    let tokens = bb.tokenize(&prompt)?;
    let shorter = bb.tokenize(&shorter)?;
    let mut session = bb.session()?;

    let params = ContextParams {
        n_ctx: config.n_ctx,
        n_batch: config.n_batch,
        threads,
        kv_cache: config
            .kv_cache
            .unwrap_or_else(l2rec::backbone::default_kv_cache),
    };
    let raw = median(bench_raw_decode(bb.model(), params, &tokens, args.reps + 1)?[1..].to_vec());
    let engine = time(args.reps, || Ok(session.state_fresh(&tokens).map(drop)?))?;

    let dir = tempfile::tempdir()?;
    let top4: Vec<u32> = (info.n_layer as u32 - 4..info.n_layer as u32).collect();
    let all: Vec<u32> = (0..info.n_layer as u32).collect();
    let experts_top4 = random_experts(&info, top4, (2, 8), dir.path(), &bb)?;
    let experts_all = random_experts(&info, all, (2, 8), dir.path(), &bb)?;
    let mut sessions = vec![
        session_with(&bb, &[], true)?,
        session_with(&bb, &experts_top4, true)?,
        session_with(&bb, &experts_all, true)?,
        session_with(&bb, &experts_all, false)?,
    ];
    let (base, ratios) = mixture_ratios(&mut sessions, &tokens, args.reps)?;
    let [dpmoe_top4, dpmoe_all, unmerged_all] = ratios[..] else {
        unreachable!("three mixtures besides the base")
    };
    drop(sessions);
    let merge_all = merge_time(&mut session, &experts_all, args.reps)?;
    session.set_mixture(&[])?;

    let full = time(args.reps, || Ok(session.state_fresh(&tokens).map(drop)?))?;
    let mut incremental_times = Vec::new();
    for _ in 0..=args.reps {
        session.state_fresh(&shorter)?;
        let started = Instant::now();
        session.state(&tokens)?;
        incremental_times.push(started.elapsed());
    }
    let appended = session.tokens_evaluated_last();
    let incremental = median(incremental_times[1..].to_vec());

    let report = json!({
        "tokens": tokens.len(),
        "dataset": data.name,
        "threads": threads,
        "reps": args.reps,
        "raw_tokens_per_s": tokens.len() as f64 / raw,
        "engine_tokens_per_s": tokens.len() as f64 / engine,
        "engine_vs_raw": raw / engine,
        "base_ms": base * 1e3,
        "dpmoe_top4_ms": dpmoe_top4 * base * 1e3,
        "dpmoe_vs_base": dpmoe_top4,
        "dpmoe_all_layers_vs_base": dpmoe_all,
        "dpmoe_all_layers_unmerged_vs_base": unmerged_all,
        "merge_all_layers_ms": merge_all * 1e3,
        "full_reencode_ms": full * 1e3,
        "incremental_ms": incremental * 1e3,
        "incremental_tokens": appended,
        "incremental_vs_full": incremental / full,
        "load_avg": load_avg(),
        "cpu": cpu_model(),
        "built_for": built_for(),
        "cpu_threads_available": std::thread::available_parallelism().map_or(1, |n| n.get()),
    });
    if args.json {
        println!("{report}");
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}
