//! `l2rec eval`: HR@K and NDCG@K on ml-100k's leave-one-out targets, computed
//! by the path a phone runs (llama.cpp on the quantized backbone with each
//! user's expert mixture, the heads, the catalog scorer).
//!
//! The protocol is the trainer's (`train/README.md`): each user's last item is
//! the test target and the one before it the validation target; the prompt
//! holds the newest `history.max_items` items before the target; every item
//! the user saw before the target is excluded from the ranking; ties go to
//! the lower catalog row (the scorer's rule).

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use l2rec::backbone::{default_threads, Backbone, BackboneConfig, ModelInfo};
use l2rec::bundle::Bundle;
use l2rec::model::L2Rec;
use l2rec::progress::Progress;
use l2rec_dev::assets;
use l2rec_dev::dataset::{Dataset, History};
use serde::Serialize;

use crate::demo::{bundle_rows, progress_bar};

/// The largest cutoff reported: ranks at or past it are misses everywhere.
const MAX_K: usize = 20;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Phase {
    Valid,
    Test,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum PhiChoice {
    /// Each user's trained `phi` from the bundle (`phi_mean` for users it lacks).
    User,
    /// `phi_mean` for everyone: the gate without personalization.
    Mean,
}

#[derive(clap::Args)]
pub struct EvalArgs {
    /// The bundle to evaluate.
    #[arg(long)]
    pub bundle: PathBuf,
    /// The dataset (docs/DATA.md): a dataset.json or its directory
    /// (default: MovieLens-100K from the asset cache).
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "test")]
    pub phase: Phase,
    /// Evaluate only the first N users of the interactions file (0: all).
    #[arg(long, default_value_t = 0, conflicts_with = "user_ids")]
    pub users: usize,
    /// Evaluate only these user ids, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub user_ids: Vec<String>,
    #[arg(long, value_enum, default_value = "user")]
    pub phi: PhiChoice,
    /// Print only the JSON result (no progress bar).
    #[arg(long)]
    pub json: bool,
    /// Also write, one JSON object per line, each user's target rank,
    /// top-20 item ids and preference vector `u` (for parity checks).
    #[arg(long)]
    pub per_user: Option<PathBuf>,
    /// llama.cpp threads (default: half the cores, at most 4).
    #[arg(long)]
    pub threads: Option<u32>,
}

/// One user's outcome: the 0-based rank of the target, `None` past `MAX_K`.
#[derive(Serialize)]
struct UserRank {
    user: String,
    target: String,
    rank: Option<usize>,
    top: Vec<String>,
    u: Vec<f32>,
}

#[derive(Serialize)]
struct Report {
    #[serde(rename = "HR@10")]
    hr10: f64,
    #[serde(rename = "NDCG@10")]
    ndcg10: f64,
    #[serde(rename = "HR@20")]
    hr20: f64,
    #[serde(rename = "NDCG@20")]
    ndcg20: f64,
    phase: &'static str,
    users: usize,
    bundle: String,
    seconds: f64,
    threads: u32,
}

pub fn run(args: &EvalArgs) -> anyhow::Result<()> {
    let info = ModelInfo::read(&assets::model_path()?, Some(assets::MODEL_SHA256))?;
    let config = BackboneConfig {
        threads: args.threads,
        ..Default::default()
    };
    let backbone = Backbone::open_verified(info, config)?;
    let threads = backbone.config().threads.unwrap_or_else(default_threads);
    let data = Dataset::load(args.data.as_deref())?;
    let bundle = Bundle::open(&args.bundle, backbone.info())
        .with_context(|| format!("opening bundle {}", args.bundle.display()))?;
    let mut bar = progress_bar("item text states");
    let mut model = L2Rec::new(
        backbone,
        bundle,
        &mut Progress::reporting(&mut bar.callback()),
    )?;
    bar.finish();

    let users = selected_users(&data, args)?;
    let n = users.len();
    let started = Instant::now();
    let mut ranks = Vec::with_capacity(n);
    let mut bar = progress_bar("users");
    let mut tick = bar.callback();
    for (done, history) in users.into_iter().enumerate() {
        if !args.json {
            tick(done, n);
        }
        ranks.push(rank_target(&mut model, &data, history, args)?);
    }
    drop(tick);
    bar.finish();
    if let Some(path) = &args.per_user {
        write_per_user(path, &ranks)?;
    }
    let found: Vec<Option<usize>> = ranks.iter().map(|r| r.rank).collect();
    let report = Report {
        hr10: hit_rate(&found, 10),
        ndcg10: ndcg(&found, 10),
        hr20: hit_rate(&found, 20),
        ndcg20: ndcg(&found, 20),
        phase: match args.phase {
            Phase::Valid => "valid",
            Phase::Test => "test",
        },
        users: n,
        bundle: args.bundle.display().to_string(),
        seconds: started.elapsed().as_secs_f64(),
        threads,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

fn selected_users<'a>(data: &'a Dataset, args: &EvalArgs) -> anyhow::Result<Vec<&'a History>> {
    if !args.user_ids.is_empty() {
        return args
            .user_ids
            .iter()
            .map(|id| {
                data.history(id)
                    .with_context(|| format!("{} has no user {id}", data.name))
            })
            .collect();
    }
    let n = match args.users {
        0 => data.histories.len(),
        n => n.min(data.histories.len()),
    };
    Ok(data.histories[..n].iter().collect())
}

/// Where the held-out target lands among the top `MAX_K` for the history before it.
fn rank_target(
    model: &mut L2Rec,
    data: &Dataset,
    history: &History,
    args: &EvalArgs,
) -> anyhow::Result<UserRank> {
    let rows = bundle_rows(model, data, history);
    let held_out = match args.phase {
        Phase::Test => 1,
        Phase::Valid => 2,
    };
    anyhow::ensure!(
        rows.len() > held_out,
        "user {} has too few items in this bundle's catalog",
        history.user
    );
    let target = rows[rows.len() - held_out];
    let seen = &rows[..rows.len() - held_out];
    let phi = match args.phi {
        PhiChoice::User => model.user_phi(&history.user),
        PhiChoice::Mean => model.bundle().heads.phi_mean.clone(),
    };
    let mut pref = model.preference(&phi, seen)?;
    let hits = model.top_k(&mut pref, seen, MAX_K)?;
    Ok(UserRank {
        user: history.user.clone(),
        target: model.items().id(target).to_owned(),
        rank: hits.iter().position(|h| h.row == target),
        top: hits
            .iter()
            .map(|h| model.items().id(h.row).to_owned())
            .collect(),
        u: pref.u,
    })
}

fn hit_rate(ranks: &[Option<usize>], k: usize) -> f64 {
    let hits = ranks.iter().filter(|r| r.is_some_and(|r| r < k)).count();
    hits as f64 / ranks.len().max(1) as f64
}

fn ndcg(ranks: &[Option<usize>], k: usize) -> f64 {
    let gain: f64 = ranks
        .iter()
        .filter_map(|r| r.filter(|&r| r < k))
        .map(|r| 1.0 / ((r + 2) as f64).log2())
        .sum();
    gain / ranks.len().max(1) as f64
}

fn write_per_user(path: &std::path::Path, ranks: &[UserRank]) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    for r in ranks {
        writeln!(out, "{}", serde_json::to_string(r)?)?;
    }
    out.flush()
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_count_only_ranks_inside_the_cutoff() {
        let ranks = [Some(0), Some(9), Some(10), None];
        assert_eq!(hit_rate(&ranks, 10), 0.5);
        assert_eq!(hit_rate(&ranks, 20), 0.75);
        let expected = (1.0 + 1.0 / 11f64.log2()) / 4.0;
        assert!((ndcg(&ranks, 10) - expected).abs() < 1e-12);
    }
}
