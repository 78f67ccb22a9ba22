//! A bundle that needs no training (until the trainer's bundle exists): no
//! experts, item text states from the base backbone, projections from a
//! whitened PCA of those states, fusion weight 0.5.

use std::path::{Path, PathBuf};

use crate::dataset::{Catalog, DataConfig, Dataset, Prompts};
use crate::random::SplitMix;
use l2rec::backbone::Backbone;
use l2rec::bundle::{
    BackboneRef, BundleWriter, Dims, Heads, HistorySpec, Items, ItemsSpec, Linear, Manifest,
    ViewSpec, Views, FORMAT,
};
use l2rec::lora::LoraSpec;
use l2rec::model::{item_text_states, ModelError};
use l2rec::progress::Progress;
use l2rec::prompt::Template;

pub const D_R: usize = 64;
pub const D_PHI: usize = 16;
pub const MAX_ITEMS: usize = 50;

/// Bumped whenever the way the zero-shot bundle is computed changes, so that a
/// bundle cached by an older build is rebuilt rather than served.
const BUILD: u32 = 4;

/// Where the zero-shot bundle of a dataset for a backbone is cached.
pub fn cache_dir(backbone_sha256: &str, data: &Dataset) -> PathBuf {
    let dataset: String = data
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    crate::assets::bundles_dir().join(format!(
        "zero-shot-{dataset}-v{BUILD}-{}-{:016x}",
        &backbone_sha256[..12],
        dataset_digest(&data.catalog, &data.prompts)
    ))
}

/// FNV-1a over the catalog's ids and texts and the prompts: another catalog or
/// wording under the same dataset name gets its own cached bundle.
fn dataset_digest(catalog: &Catalog, prompts: &Prompts) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    let prompts = [&prompts.behavioral, &prompts.semantic];
    for part in catalog.ids.iter().chain(&catalog.texts).chain(prompts) {
        for &b in part.as_bytes().iter().chain(&[0]) {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// The (behavioral, semantic) templates of a dataset's prompts: its own first
/// lines, one item per line after them.
pub fn templates(prompts: &Prompts) -> (Template, Template) {
    let template = |prefix: &str| Template {
        prefix: prefix.into(),
        sep: "\n".into(),
    };
    (template(&prompts.behavioral), template(&prompts.semantic))
}

/// The templates of ml-100k (`datasets/ml-100k/dataset.json`), which the
/// project's tests and benches use.
pub fn default_templates() -> (Template, Template) {
    let ml100k = DataConfig::load(None).expect("the built-in ml-100k config parses");
    templates(&ml100k.prompts)
}

/// Builds the zero-shot bundle for a dataset's catalog, in its prompts' words,
/// into `dir` (atomically).
pub fn build(
    backbone: &Backbone,
    data: &Dataset,
    dir: &Path,
    progress: &mut Progress,
) -> Result<PathBuf, ModelError> {
    let (dataset, catalog) = (&data.name, &data.catalog);
    let info = backbone.info();
    let d = info.n_embd;
    let (behavioral, semantic) = templates(&data.prompts);
    let states = item_text_states(backbone, &semantic, &catalog.texts, progress)?;
    let pca = whitened_pca(&states, d, D_R);
    // Identical states (a broken backbone path) would give an all-zero
    // projection and a bundle that scores every item 0: refuse it.
    if pca.weight.iter().all(|w| *w == 0.0) {
        return Err(ModelError::Degenerate(
            "the item text states do not vary".into(),
        ));
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        version: 1,
        name: format!("zero-shot-{dataset}"),
        backbone: BackboneRef {
            file: info
                .path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
            sha256: info.sha256.clone(),
            arch: info.arch.clone(),
            n_embd: d,
            n_layer: info.n_layer,
        },
        views: Views {
            behavioral: ViewSpec {
                experts: 0,
                k: 0,
                template: behavioral,
                render: Default::default(),
            },
            semantic: ViewSpec {
                experts: 0,
                k: 0,
                template: semantic,
                render: Default::default(),
            },
        },
        lora: LoraSpec {
            rank: 8,
            alpha: 16.0,
            layers: vec![],
            modules: vec![],
        },
        dims: Dims {
            d,
            d_r: D_R,
            d_phi: D_PHI,
        },
        history: HistorySpec {
            max_items: MAX_ITEMS,
            view_items: 0,
        },
        items: ItemsSpec {
            count: catalog.len(),
        },
        encoder: Default::default(),
        max_text_chars: 0,
        files: Default::default(),
    };
    let heads = Heads {
        gate_behavioral: Linear::zeros(0, D_PHI),
        gate_semantic: Linear::zeros(0, D_PHI),
        gate_read: Default::default(),
        encoder: None,
        phi_mean: vec![0.0; D_PHI],
        proj_behavioral: pca.clone(),
        proj_semantic: pca.clone(),
        fusion: Linear::zeros(D_R, 3 * D_R),
        text_proj: pca,
    };
    let items = Items {
        ids: catalog.ids.clone(),
        texts: catalog.texts.clone(),
        id_embedding: vec![0.0; catalog.len() * D_R],
        bias: vec![0.0; catalog.len()],
        text_state: Some(states),
        codes: None,
    };
    let writer = BundleWriter::new(dir, manifest)?;
    writer.write_heads(&heads)?;
    writer.write_items(&items)?;
    Ok(writer.finish()?)
}

/// `x -> Λ^{-1/2} V^T (x - μ)` for the top `k` principal directions of the
/// rows of `x` (`[n, d]`), as a linear layer `[k, d]`. Whitening keeps the
/// dominant direction of the states from drowning the rest in dot products.
pub fn whitened_pca(x: &[f32], d: usize, k: usize) -> Linear {
    let n = x.len() / d;
    let mean: Vec<f64> = (0..d)
        .map(|j| x.iter().skip(j).step_by(d).map(|&v| v as f64).sum::<f64>() / n as f64)
        .collect();
    let cov = covariance(x, &mean, d);
    let (vectors, values) = top_eigenvectors(&cov, d, k);
    let mut weight = vec![0f32; k * d];
    let mut bias = vec![0f32; k];
    for c in 0..k {
        let scale = 1.0 / values[c].max(1e-12).sqrt();
        let v = &vectors[c * d..(c + 1) * d];
        for j in 0..d {
            weight[c * d + j] = (v[j] * scale) as f32;
        }
        bias[c] = -(v.iter().zip(&mean).map(|(a, b)| a * b).sum::<f64>() * scale) as f32;
    }
    Linear {
        weight,
        bias,
        rows: k,
        cols: d,
    }
}

fn covariance(x: &[f32], mean: &[f64], d: usize) -> Vec<f64> {
    let n = x.len() / d;
    let mut cov = vec![0f64; d * d];
    let mut centered = vec![0f64; d];
    for row in x.chunks_exact(d) {
        for j in 0..d {
            centered[j] = row[j] as f64 - mean[j];
        }
        for a in 0..d {
            let ca = centered[a];
            let out = &mut cov[a * d..(a + 1) * d];
            for (o, cb) in out.iter_mut().zip(&centered) {
                *o += ca * cb;
            }
        }
    }
    cov.iter_mut().for_each(|c| *c /= n.max(2) as f64 - 1.0);
    cov
}

/// Subspace iteration: the `k` leading eigenvectors (rows, `[k, d]`) of a
/// symmetric PSD matrix and their eigenvalues, largest first, each vector's
/// largest component positive (a deterministic sign).
fn top_eigenvectors(m: &[f64], d: usize, k: usize) -> (Vec<f64>, Vec<f64>) {
    let mut rng = SplitMix(42);
    let mut v: Vec<f64> = (0..k * d).map(|_| rng.next_signed() as f64).collect();
    orthonormalize(&mut v, d);
    for _ in 0..200 {
        let mut w = vec![0f64; k * d];
        for c in 0..k {
            mat_vec(m, &v[c * d..(c + 1) * d], &mut w[c * d..(c + 1) * d]);
        }
        orthonormalize(&mut w, d);
        v = w;
    }
    let mut pairs: Vec<(f64, Vec<f64>)> = (0..k)
        .map(|c| {
            let vc = v[c * d..(c + 1) * d].to_vec();
            let mut mv = vec![0f64; d];
            mat_vec(m, &vc, &mut mv);
            let value = vc.iter().zip(&mv).map(|(a, b)| a * b).sum();
            (value, vc)
        })
        .collect();
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut vectors = Vec::with_capacity(k * d);
    let mut values = Vec::with_capacity(k);
    for (value, mut vc) in pairs {
        let peak = vc
            .iter()
            .copied()
            .fold(0f64, |a, b| if b.abs() > a.abs() { b } else { a });
        if peak < 0.0 {
            vc.iter_mut().for_each(|x| *x = -*x);
        }
        vectors.extend(vc);
        values.push(value);
    }
    (vectors, values)
}

fn mat_vec(m: &[f64], v: &[f64], out: &mut [f64]) {
    let d = v.len();
    for (i, o) in out.iter_mut().enumerate() {
        *o = m[i * d..(i + 1) * d]
            .iter()
            .zip(v)
            .map(|(a, b)| a * b)
            .sum();
    }
}

/// Modified Gram-Schmidt on the rows of `v` (`[k, d]`).
fn orthonormalize(v: &mut [f64], d: usize) {
    let k = v.len() / d;
    for c in 0..k {
        for p in 0..c {
            let (done, rest) = v.split_at_mut(c * d);
            let prev = &done[p * d..(p + 1) * d];
            let cur = &mut rest[..d];
            let dot: f64 = prev.iter().zip(cur.iter()).map(|(a, b)| a * b).sum();
            cur.iter_mut().zip(prev).for_each(|(x, p)| *x -= dot * p);
        }
        let row = &mut v[c * d..(c + 1) * d];
        let norm = row.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-300);
        row.iter_mut().for_each(|x| *x /= norm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pca_whitens_the_leading_directions() {
        // Points spread 10x more along (1,1,0)/sqrt2 than along (0,0,1).
        let mut rng = SplitMix(7);
        let mut x = Vec::new();
        for _ in 0..2000 {
            let (a, b) = (10.0 * rng.next_signed(), rng.next_signed());
            x.extend([a / 2f32.sqrt() + 3.0, a / 2f32.sqrt() - 1.0, b]);
        }
        let pca = whitened_pca(&x, 3, 2);
        let first = &pca.weight[..3];
        let cos =
            (first[0] + first[1]) / (2f32.sqrt() * first.iter().map(|v| v * v).sum::<f32>().sqrt());
        assert!(cos > 0.999, "first direction {first:?}");
        // Projected coordinates have unit variance.
        let proj: Vec<f32> = x
            .chunks(3)
            .map(|r| l2rec::kernels::project(&pca.weight, &pca.bias, r)[0])
            .collect();
        let var = proj.iter().map(|p| p * p).sum::<f32>() / proj.len() as f32;
        assert!((var - 1.0).abs() < 0.05, "variance {var}");
    }

    #[test]
    fn a_bundle_speaks_of_the_items_in_its_datasets_words() {
        let (behavioral, semantic) = default_templates();
        assert_eq!(behavioral.prefix, crate::dataset::GENERIC_PREFIX);
        assert_eq!(semantic.prefix, "Movies a user watched, oldest first:\n");
        let books = Prompts {
            semantic: "Books a reader finished, oldest first:\n".into(),
            ..Prompts::default()
        };
        assert_eq!(templates(&books).1.prefix, books.semantic);
        assert_eq!(templates(&books).1.sep, "\n");
        let catalog = Catalog::default();
        // Other words, another cached bundle.
        assert_ne!(
            dataset_digest(&catalog, &books),
            dataset_digest(&catalog, &Prompts::default())
        );
    }
}
