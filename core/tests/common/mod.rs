//! Shared fixtures: the real backbone (and an F16 copy), small bundles.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use l2rec::backbone::{Backbone, BackboneConfig, ModelInfo};
use l2rec::bundle::*;
use l2rec::lora::LoraSpec;
use l2rec::progress::Progress;
use l2rec::prompt::View;
use l2rec_dev::assets;
use l2rec_dev::dataset::Dataset;
use l2rec_dev::f16::write_f16_copy;
use l2rec_dev::random::{write_random_expert, SplitMix};

pub fn config() -> BackboneConfig {
    // One thread per test: the test harness runs tests side by side.
    BackboneConfig {
        threads: Some(1),
        ..Default::default()
    }
}

pub fn model_info() -> ModelInfo {
    static INFO: OnceLock<ModelInfo> = OnceLock::new();
    INFO.get_or_init(|| {
        let path = assets::model_path().expect("the backbone; run scripts/fetch-assets");
        ModelInfo::read(&path, Some(assets::MODEL_SHA256)).expect("the verified backbone")
    })
    .clone()
}

pub fn backbone() -> Backbone {
    Backbone::open_verified(model_info(), config()).expect("open the backbone")
}

/// An F16 copy of the backbone, made once into the asset cache.
pub fn f16_backbone() -> Backbone {
    f16_backbone_with(config())
}

/// [`f16_backbone`] under `config`.
pub fn f16_backbone_with(config: BackboneConfig) -> Backbone {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    let path = PATH.get_or_init(|| {
        let info = model_info();
        let path = assets::cache_dir()
            .join("models")
            .join(format!("f16-{}.gguf", &info.sha256[..12]));
        if !path.exists() {
            write_f16_copy(&info.path, &path, &mut Progress::none()).expect("write the F16 copy");
        }
        path
    });
    Backbone::open(path, config).expect("open the F16 backbone")
}

pub fn dataset() -> Dataset {
    static DATA: OnceLock<Dataset> = OnceLock::new();
    DATA.get_or_init(|| Dataset::ml100k().expect("ml-100k (scripts/fetch-assets)"))
        .clone()
}

pub fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let num: f32 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f32>()
        .sqrt();
    let den: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    num / den
}

pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

pub fn small_lora() -> LoraSpec {
    LoraSpec {
        rank: 4,
        alpha: 8.0,
        layers: vec![17],
        modules: vec!["attn_q".into(), "ffn_up".into()],
    }
}

fn random_linear(rng: &mut SplitMix, rows: usize, cols: usize, amp: f32) -> Linear {
    Linear {
        weight: (0..rows * cols).map(|_| amp * rng.next_signed()).collect(),
        bias: (0..rows).map(|_| amp * rng.next_signed()).collect(),
        rows,
        cols,
    }
}

pub const SMALL_ITEMS: usize = 40;
pub const D_R: usize = 16;
pub const D_PHI: usize = 8;

/// A small but complete bundle: the first 40 ml-100k items, 2 random experts
/// per view (k = 1), random heads; item text states left for the device.
pub fn write_small_bundle(dir: &Path) -> PathBuf {
    write_small_bundle_with(dir, 1)
}

/// The small bundle with `k` of its 2 experts active per view.
pub fn write_small_bundle_with(dir: &Path, k: usize) -> PathBuf {
    let info = model_info();
    let data = dataset();
    let (behavioral, semantic) = l2rec_dev::zeroshot::default_templates();
    let manifest = Manifest {
        format: FORMAT.into(),
        version: 1,
        name: "test-small".into(),
        backbone: BackboneRef {
            file: assets::MODEL_FILE.into(),
            sha256: info.sha256.clone(),
            arch: info.arch.clone(),
            n_embd: info.n_embd,
            n_layer: info.n_layer,
        },
        views: Views {
            behavioral: ViewSpec {
                experts: 2,
                k,
                template: behavioral,
                render: Default::default(),
            },
            semantic: ViewSpec {
                experts: 2,
                k,
                template: semantic,
                render: Default::default(),
            },
        },
        lora: small_lora(),
        dims: Dims {
            d: info.n_embd,
            d_r: D_R,
            d_phi: D_PHI,
        },
        history: HistorySpec {
            max_items: 20,
            view_items: 0,
        },
        items: ItemsSpec { count: SMALL_ITEMS },
        encoder: Default::default(),
        max_text_chars: 0,
        files: Default::default(),
    };
    let mut rng = SplitMix(11);
    let d = info.n_embd;
    let heads = Heads {
        gate_behavioral: random_linear(&mut rng, 2, D_PHI, 1.0),
        gate_semantic: random_linear(&mut rng, 2, D_PHI, 1.0),
        gate_read: Default::default(),
        encoder: None,
        phi_mean: (0..D_PHI).map(|_| rng.next_signed()).collect(),
        proj_behavioral: random_linear(&mut rng, D_R, d, 0.05),
        proj_semantic: random_linear(&mut rng, D_R, d, 0.05),
        fusion: random_linear(&mut rng, D_R, 3 * D_R, 0.1),
        text_proj: random_linear(&mut rng, D_R, d, 0.05),
    };
    let items = Items {
        ids: data.catalog.ids[..SMALL_ITEMS].to_vec(),
        texts: data.catalog.texts[..SMALL_ITEMS].to_vec(),
        id_embedding: (0..SMALL_ITEMS * D_R)
            .map(|_| 0.1 * rng.next_signed())
            .collect(),
        bias: (0..SMALL_ITEMS).map(|_| 0.01 * rng.next_signed()).collect(),
        text_state: None,
        codes: None,
    };
    let writer = BundleWriter::new(dir, manifest).expect("staging directory");
    writer.write_heads(&heads).unwrap();
    writer.write_items(&items).unwrap();
    for view in View::BOTH {
        for k in 0..2 {
            let seed = 100 + k as u64 + 10 * (view == View::Semantic) as u64;
            write_random_expert(
                &writer.expert_path(view, k),
                &info,
                &small_lora(),
                seed,
                0.05,
            )
            .unwrap();
        }
    }
    writer.finish().expect("finish the bundle")
}
