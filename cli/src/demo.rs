//! `l2rec demo`: top-10 recommendations for a few MovieLens-100K users, with
//! the latency of every step.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use l2rec::backbone::{Backbone, BackboneConfig, ModelInfo};
use l2rec::bundle::Bundle;
use l2rec::model::L2Rec;
use l2rec::progress::Progress;
use l2rec::prompt::View;
use l2rec_dev::assets;
use l2rec_dev::dataset::{Dataset, History};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// The bundle to serve (default: this repository's trained `bundles/ml-100k`
    /// for ml-100k; for another dataset, or without it, the dataset's zero-shot
    /// bundle, built on first use and cached).
    #[arg(long)]
    pub bundle: Option<PathBuf>,
    /// The dataset (docs/DATA.md): a dataset.json or its directory
    /// (default: MovieLens-100K from the asset cache).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// User ids, comma-separated (default: ml-100k's 1, 2 and 3; another
    /// dataset's first three users).
    #[arg(long, value_delimiter = ',')]
    pub users: Vec<String>,
    /// Recommendations per user.
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// llama.cpp threads (default: half the cores, at most 4).
    #[arg(long)]
    pub threads: Option<u32>,
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let model_path = assets::model_path()?;
    let started = Instant::now();
    let info = ModelInfo::read(&model_path, Some(assets::MODEL_SHA256))?;
    let verified = started.elapsed();
    let started = Instant::now();
    let config = BackboneConfig {
        threads: args.threads,
        ..Default::default()
    };
    let backbone = Backbone::open_verified(info, config)?;
    println!(
        "backbone: {} ({:.0} MB): sha256 verified in {}, loaded in {}",
        model_path.display(),
        backbone.info().file_bytes as f64 / 1e6,
        ms(verified),
        ms(started.elapsed())
    );

    let started = Instant::now();
    let data = Dataset::load(args.data.as_deref())?;
    println!(
        "catalog: {}, {} items, {} users, loaded in {}",
        data.name,
        data.catalog.len(),
        data.histories.len(),
        ms(started.elapsed())
    );

    let trained = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bundles/ml-100k");
    let bundle_dir = match &args.bundle {
        Some(dir) => dir.clone(),
        None if args.data.is_none() && trained.join("manifest.json").exists() => trained,
        None => zero_shot_bundle(&backbone, &data)?,
    };
    let started = Instant::now();
    let bundle = Bundle::open(&bundle_dir, backbone.info())
        .with_context(|| format!("opening bundle {}", bundle_dir.display()))?;
    let opened = started.elapsed();
    println!("bundle: {}", bundle_dir.display());
    let started = Instant::now();
    let mut bar = progress_bar("item text states");
    let mut model = L2Rec::new(
        backbone,
        bundle,
        &mut Progress::reporting(&mut bar.callback()),
    )?;
    bar.finish();
    println!(
        "bundle {:?}: {}+{} experts, verified in {}, served in {} on the {:?} scorer ({})",
        model.bundle().manifest.name,
        model.bundle().manifest.views.behavioral.experts,
        model.bundle().manifest.views.semantic.experts,
        ms(opened),
        ms(started.elapsed()),
        model.scorer().backend(),
        model.scorer().adapter_name()
    );
    for user in &demo_users(args, &data) {
        recommend_for(&mut model, &data, user, args.k)?;
    }
    Ok(())
}

fn recommend_for(model: &mut L2Rec, data: &Dataset, user: &str, k: usize) -> anyhow::Result<()> {
    let history = data
        .history(user)
        .with_context(|| format!("ml-100k has no user {user}"))?;
    let bundle_rows = bundle_rows(model, data, history);
    // Hold the last interaction back, as the evaluation protocol does, and show
    // whether it comes up.
    let (held_out, seen) = bundle_rows
        .split_last()
        .context("user without interactions in this bundle")?;
    let texts = model.bundle().items.texts.clone();
    let text = |row: u32| texts[row as usize].as_str();
    let phi = model.user_phi(user);
    let mut pref = model.preference(&phi, seen)?;
    let hits = model.top_k(&mut pref, seen, k)?;
    let latest: Vec<&str> = seen.iter().rev().take(3).map(|&r| text(r)).collect();
    println!(
        "\nuser {user}: {} interactions; latest: {}",
        seen.len(),
        latest.join("; ")
    );
    let t = &pref.timings;
    println!(
        "  latency: gate {}, behavioral view {}, semantic view {} ({} tokens evaluated), heads {}, scoring {}",
        ms(t.gate),
        ms(t.behavioral),
        ms(t.semantic),
        t.tokens_evaluated,
        ms(t.heads),
        ms(t.score)
    );
    for view in View::BOTH {
        let g = &pref.scales[view];
        if !g.is_empty() {
            println!("  {view} expert scales: {g:.3?}");
        }
    }
    for (rank, hit) in hits.iter().enumerate() {
        let mark = if hit.row == *held_out {
            "  <- the held-out next item"
        } else {
            ""
        };
        println!(
            "  {:>2}. {:<60} {:>9.4}{mark}",
            rank + 1,
            text(hit.row),
            hit.score
        );
    }
    println!("  held-out next item: {}", text(*held_out));
    Ok(())
}

/// A user's history as the bundle's catalog rows (the bundle has its own
/// catalog order: translate through item ids; items it lacks are dropped).
pub fn bundle_rows(model: &L2Rec, data: &Dataset, history: &History) -> Vec<u32> {
    history
        .rows
        .iter()
        .filter_map(|&r| model.items().row(&data.catalog.ids[r as usize]))
        .collect()
}

fn demo_users(args: &DemoArgs, data: &Dataset) -> Vec<String> {
    match (&args.users[..], &args.data) {
        ([], None) => ["1", "2", "3"].map(String::from).to_vec(),
        ([], Some(_)) => data
            .histories
            .iter()
            .take(3)
            .map(|h| h.user.clone())
            .collect(),
        (users, _) => users.to_vec(),
    }
}

/// The cached zero-shot bundle for this backbone, built on first use.
fn zero_shot_bundle(backbone: &Backbone, data: &Dataset) -> anyhow::Result<PathBuf> {
    let dir = l2rec_dev::zeroshot::cache_dir(&backbone.info().sha256, data);
    if Bundle::open(&dir, backbone.info()).is_ok() {
        return Ok(dir);
    }
    println!(
        "building the zero-shot bundle (once; cached at {})",
        dir.display()
    );
    std::fs::create_dir_all(dir.parent().unwrap_or(Path::new(".")))?;
    let mut bar = progress_bar("zero-shot bundle: item text states");
    l2rec_dev::zeroshot::build(
        backbone,
        data,
        &dir,
        &mut Progress::reporting(&mut bar.callback()),
    )?;
    bar.finish();
    Ok(dir)
}

/// An indicatif bar that appears only once there is work to show.
pub struct Bar {
    bar: Option<ProgressBar>,
    label: &'static str,
}

pub fn progress_bar(label: &'static str) -> Bar {
    Bar { bar: None, label }
}

impl Bar {
    pub fn callback(&mut self) -> impl FnMut(usize, usize) + '_ {
        move |done, total| {
            let label = self.label;
            let bar = self.bar.get_or_insert_with(|| {
                let bar = ProgressBar::new(total as u64);
                let style = ProgressStyle::with_template(
                    "{msg} {wide_bar} {pos}/{len} [{elapsed_precise}<{eta_precise}]",
                )
                .expect("a valid template");
                bar.set_style(style);
                bar.set_message(label);
                bar
            });
            bar.set_position(done as u64);
        }
    }

    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
