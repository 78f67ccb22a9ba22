//! `l2rec tool ...`: helpers for tests and development.

use std::path::PathBuf;

use clap::Subcommand;
use l2rec::backbone::ModelInfo;
use l2rec::lora::LoraSpec;
use l2rec::progress::Progress;
use l2rec_dev::f16::write_f16_copy;
use l2rec_dev::random::write_random_expert;

#[derive(Subcommand)]
pub enum Tool {
    /// Write a random LoRA expert for the default backbone.
    RandomExpert {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 8)]
        rank: u32,
        #[arg(long, default_value_t = 16.0)]
        alpha: f32,
        /// Layers, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "14,15,16,17")]
        layers: Vec<u32>,
        /// Modules, comma-separated (attn_q attn_k attn_v attn_output ffn_gate ffn_up ffn_down).
        #[arg(long, value_delimiter = ',', default_value = "attn_q,attn_v")]
        modules: Vec<String>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Factors are uniform in [-amplitude, amplitude).
        #[arg(long, default_value_t = 0.02)]
        amplitude: f32,
    },
    /// Write an F16 copy of the default backbone (no activation rounding).
    F16Model {
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(tool: &Tool) -> anyhow::Result<()> {
    let model = l2rec_dev::assets::model_path()?;
    match tool {
        Tool::RandomExpert {
            out,
            rank,
            alpha,
            layers,
            modules,
            seed,
            amplitude,
        } => {
            let info = ModelInfo::read(&model, Some(l2rec_dev::assets::MODEL_SHA256))?;
            let spec = LoraSpec {
                rank: *rank,
                alpha: *alpha,
                layers: layers.clone(),
                modules: modules.clone(),
            };
            write_random_expert(out, &info, &spec, *seed, *amplitude)?;
            println!("{}", out.display());
        }
        Tool::F16Model { out } => {
            ModelInfo::read(&model, Some(l2rec_dev::assets::MODEL_SHA256))?;
            write_f16_copy(&model, out, &mut Progress::none())?;
            println!("{}", out.display());
        }
    }
    Ok(())
}
