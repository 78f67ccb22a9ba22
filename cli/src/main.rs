//! `l2rec`: the command line of the on-device L2Rec runtime.

mod bench_backbone;
mod bench_engine;
mod bench_score;
mod demo;
mod eval;
mod inspect;
mod tools;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "l2rec",
    version,
    about = "On-device LLM recommender (L2Rec) runtime"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Recommend for a few MovieLens-100K users with the default model.
    Demo(demo::DemoArgs),
    /// HR@10/20 and NDCG@10/20 of a bundle on ml-100k, by the runtime path (JSON).
    Eval(eval::EvalArgs),
    /// Check a bundle and print a summary (exit 2 if it is invalid).
    Inspect(inspect::InspectArgs),
    /// Benchmarks printing JSON.
    #[command(subcommand)]
    Bench(Bench),
    /// Tools for tests and development.
    #[command(subcommand)]
    Tool(tools::Tool),
}

#[derive(Subcommand)]
enum Bench {
    /// The backbone: raw llama.cpp against our API, DPMoE, incremental reuse.
    Backbone(bench_backbone::BackboneArgs),
    /// Catalog scoring, CPU against GPU.
    Score(bench_score::ScoreArgs),
    /// The engine: recommend, observe, personalize, memory, store size.
    Engine(bench_engine::EngineArgs),
}

fn init_tracing() {
    // llama.cpp is silent unless RUST_LOG asks (e.g. RUST_LOG=llama_cpp=info): our own errors say what failed.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,llama_cpp=off"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    // Before anything allocates: see l2rec_dev::allocator.
    l2rec_dev::allocator::pin_mmap_threshold();
    init_tracing();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Inspect(args) => return inspect::run(args),
        Command::Bench(Bench::Backbone(args)) => bench_backbone::run(args),
        Command::Bench(Bench::Score(args)) => bench_score::run(args),
        Command::Bench(Bench::Engine(args)) => bench_engine::run(args),
        Command::Tool(tool) => tools::run(tool),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
