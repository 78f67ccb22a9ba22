//! The golden vectors (`golden/heads.json`, written by `scripts/gen-golden`
//! from a float64 reference) against the CPU heads, the model's forward, the
//! CPU scorer, the WGSL heads and the GPU scorer. The PyTorch trainer reads
//! the same file (`train/tests/test_golden.py`), so the three twins are held
//! together by data.

use serde::Deserialize;

use super::tests::gpu;
use super::*;
use crate::bundle::{Heads, Linear};
use crate::model::HeadsForward;
use crate::per_view::PerView;
use crate::prompt::View;

const GOLDEN: &str = include_str!("../../../golden/heads.json");
const COLLAB: &str = include_str!("../../../golden/collab.json");

#[derive(Deserialize)]
struct CollabFile {
    tolerance: f32,
    cases: Vec<CollabCase>,
}

#[derive(Deserialize)]
struct GruLayer {
    weight_ih: Vec<f32>,
    weight_hh: Vec<f32>,
    bias_ih: Vec<f32>,
    bias_hh: Vec<f32>,
}

#[derive(Deserialize)]
struct CollabCase {
    name: String,
    d_r: usize,
    d_phi: usize,
    experts: usize,
    k_active: usize,
    gru: GruLayer,
    inputs: Vec<f32>,
    read: Vec<f32>,
    gate: Layer,
    phi: Vec<f32>,
    expected: CollabExpected,
}

#[derive(Deserialize)]
struct CollabExpected {
    states: Vec<f32>,
    logits: Vec<f32>,
    scales: Vec<f32>,
}

#[test]
fn collaborative_encoder_and_its_gate_match_the_golden_vectors() {
    let file: CollabFile = serde_json::from_str(COLLAB).expect("golden/collab.json parses");
    let tol = file.tolerance;
    for c in &file.cases {
        let name = &c.name;
        let gate = linear(&c.gate, c.experts, c.d_phi);
        let heads = Heads {
            gate_behavioral: gate.clone(),
            gate_semantic: gate,
            gate_read: PerView::new(c.read.clone(), c.read.clone()),
            encoder: Some(crate::bundle::Gru {
                weight_ih: c.gru.weight_ih.clone(),
                weight_hh: c.gru.weight_hh.clone(),
                bias_ih: c.gru.bias_ih.clone(),
                bias_hh: c.gru.bias_hh.clone(),
                d_r: c.d_r,
            }),
            phi_mean: vec![0.0; c.d_phi],
            proj_behavioral: Linear::zeros(c.d_r, 1),
            proj_semantic: Linear::zeros(c.d_r, 1),
            fusion: Linear::zeros(c.d_r, 3 * c.d_r),
            text_proj: Linear::zeros(c.d_r, 1),
        };
        let forward = HeadsForward::new(&heads, PerView::new(c.k_active, c.k_active));
        let inputs: Vec<&[f32]> = c.inputs.chunks_exact(c.d_r).collect();
        let each = forward.collab_each(inputs.iter().copied()).unwrap();
        close(
            tol,
            &each.concat(),
            &c.expected.states,
            &format!("{name}: states"),
        );
        let last = forward.collab(inputs.iter().copied()).unwrap();
        assert_eq!(&last, each.last().unwrap(), "{name}: last state");
        for view in View::BOTH {
            let g = forward.gate(view, &c.phi, Some(&last));
            close(
                tol,
                &g.logits,
                &c.expected.logits,
                &format!("{name}: logits"),
            );
            close(
                tol,
                &g.scales,
                &c.expected.scales,
                &format!("{name}: scales"),
            );
        }
        // u adds c to the fused views: zero projections fuse to 0, so u = c.
        let out = forward.user(&[0.0], &[0.0], Some(&last));
        assert_eq!(out.u, last, "{name}: u = c + fused");
    }
}

#[derive(Deserialize)]
struct File {
    tolerance: f32,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Layer {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    d: usize,
    d_r: usize,
    d_phi: usize,
    k_active: usize,
    phi: Vec<f32>,
    gate: Layer,
    h_b: Vec<f32>,
    h_s: Vec<f32>,
    proj_behavioral: Layer,
    proj_semantic: Layer,
    fusion: Layer,
    items: Vec<f32>,
    item_bias: Vec<f32>,
    exclude: Vec<u32>,
    k: usize,
    expected: Expected,
}

#[derive(Deserialize)]
struct Expected {
    scales: Vec<f32>,
    z_b: Vec<f32>,
    z_s: Vec<f32>,
    beta: Vec<f32>,
    u: Vec<f32>,
    scores: Vec<f32>,
    top_k: Vec<u32>,
}

fn golden() -> File {
    serde_json::from_str(GOLDEN).expect("golden/heads.json parses")
}

fn close(tol: f32, got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: got {g}, golden {w}"
        );
    }
}

fn linear(l: &Layer, rows: usize, cols: usize) -> Linear {
    Linear {
        weight: l.weight.clone(),
        bias: l.bias.clone(),
        rows,
        cols,
    }
}

impl Case {
    /// The case as a bundle's heads (both views share its gate).
    fn heads(&self) -> Heads {
        let experts = self.gate.bias.len();
        Heads {
            gate_behavioral: linear(&self.gate, experts, self.d_phi),
            gate_semantic: linear(&self.gate, experts, self.d_phi),
            gate_read: Default::default(),
            encoder: None,
            phi_mean: vec![0.0; self.d_phi],
            proj_behavioral: linear(&self.proj_behavioral, self.d_r, self.d),
            proj_semantic: linear(&self.proj_semantic, self.d_r, self.d),
            fusion: linear(&self.fusion, self.d_r, 3 * self.d_r),
            text_proj: Linear::zeros(self.d_r, self.d),
        }
    }

    fn catalog(&self) -> CatalogMatrix {
        CatalogMatrix::new(
            self.items.clone(),
            self.d_r,
            self.item_bias.clone(),
            Storage::F32,
        )
        .expect("a valid catalog")
    }

    /// Every row's score from a full ranking, by row.
    fn all_scores(&self, hits: &[Hit]) -> Vec<f32> {
        let mut scores = vec![f32::NAN; self.item_bias.len()];
        hits.iter().for_each(|h| scores[h.row as usize] = h.score);
        scores
    }

    fn check_ranking(&self, tol: f32, scorer: &Scorer, what: &str) {
        let e = &self.expected;
        let all = scorer.top_k(&e.u, &[], self.item_bias.len()).unwrap();
        close(
            tol,
            &self.all_scores(&all),
            &e.scores,
            &format!("{what} scores"),
        );
        let mut exclude = self.exclude.clone();
        exclude.sort_unstable();
        let rows: Vec<u32> = scorer
            .top_k(&e.u, &exclude, self.k)
            .unwrap()
            .iter()
            .map(|h| h.row)
            .collect();
        assert_eq!(rows, e.top_k, "{what} top-k ({})", self.name);
    }
}

#[test]
fn cpu_heads_and_model_forward_match_the_golden_vectors() {
    let file = golden();
    let tol = file.tolerance;
    for c in &file.cases {
        let e = &c.expected;
        let name = &c.name;
        let kernel_scales = gate(&c.gate.weight, &c.gate.bias, &c.phi, c.k_active);
        close(
            tol,
            &kernel_scales,
            &e.scales,
            &format!("{name}: kernel gate"),
        );
        let heads = c.heads();
        let forward = HeadsForward::new(&heads, PerView::new(c.k_active, c.k_active));
        for view in View::BOTH {
            let g = forward.gate(view, &c.phi, None);
            close(tol, &g.scales, &e.scales, &format!("{name}: model gate"));
            let chosen: Vec<bool> = e.scales.iter().map(|&s| s > 0.0).collect();
            assert_eq!(g.chosen, chosen, "{name}: chosen experts");
        }
        let out = forward.user(&c.h_b, &c.h_s, None);
        close(tol, &out.z_b, &e.z_b, &format!("{name}: z_b"));
        close(tol, &out.z_s, &e.z_s, &format!("{name}: z_s"));
        close(tol, &out.beta, &e.beta, &format!("{name}: beta"));
        close(tol, &out.u, &e.u, &format!("{name}: u"));
        for mode in [MulAdd::Fused, MulAdd::Separate] {
            let scorer = Scorer::new_cpu_with(c.catalog(), mode);
            c.check_ranking(tol, &scorer, &format!("{name}: cpu {mode:?}"));
        }
    }
}

#[test]
fn wgsl_heads_and_gpu_scorer_match_the_golden_vectors() {
    let Some(g) = gpu() else { return };
    let file = golden();
    let tol = file.tolerance;
    let heads = GpuHeads::with_gpu(g.clone());
    for c in &file.cases {
        let e = &c.expected;
        let name = &c.name;
        let scales = heads
            .gate(&c.gate.weight, &c.gate.bias, &c.phi, c.k_active)
            .unwrap();
        close(tol, &scales, &e.scales, &format!("{name}: wgsl gate"));
        let z_b = heads
            .project(&c.proj_behavioral.weight, &c.proj_behavioral.bias, &c.h_b)
            .unwrap();
        let z_s = heads
            .project(&c.proj_semantic.weight, &c.proj_semantic.bias, &c.h_s)
            .unwrap();
        close(tol, &z_b, &e.z_b, &format!("{name}: wgsl z_b"));
        close(tol, &z_s, &e.z_s, &format!("{name}: wgsl z_s"));
        let fused = heads
            .fuse(&c.fusion.weight, &c.fusion.bias, &e.z_b, &e.z_s)
            .unwrap();
        close(tol, &fused.beta, &e.beta, &format!("{name}: wgsl beta"));
        close(tol, &fused.u, &e.u, &format!("{name}: wgsl u"));
        let scorer = Scorer::new_gpu_from(&c.catalog()).unwrap();
        c.check_ranking(tol, &scorer, &format!("{name}: gpu"));
    }
}
